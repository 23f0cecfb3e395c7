//! Integration tests of taskq-store against a real MongoDB wire-protocol server
//! (mongo-java-server, FerretDB or MongoDB 7), reached through `TASKQ_TEST_MONGODB_URI`.
//! Every test uses its own database. One test binary, so linking happens once.

mod common;
mod store;
mod writer;
