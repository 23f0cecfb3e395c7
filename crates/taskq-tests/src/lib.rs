//! This package only holds taskq's end-to-end tests (`tests/it`). They start real
//! Redis servers, use the MongoDB server named by `TASKQ_TEST_MONGODB_URI`, and drive
//! the real api and worker, in-process or as spawned binaries.
