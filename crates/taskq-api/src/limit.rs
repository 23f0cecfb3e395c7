//! The request timeout and the concurrency limit, in one middleware.
//!
//! It sits inside the body reader ([`crate::body`]), so a slow body holds no slot. A
//! request waits for one of `TASKQ_MAX_CONCURRENT_REQUESTS` slots and is then served,
//! both within `TASKQ_REQUEST_TIMEOUT_MS`, lengthened for a `GET` by its `wait` (see
//! [`crate::wait`]): a wait longer than the timeout is answered at its deadline, not with
//! `503 timeout`. The slot is taken here rather than by tower's `ConcurrencyLimit`, whose
//! readiness would be polled through the middlewares above before the body is read, and
//! it travels with the request as a [`Slot`], so a read that waits for its task gives the
//! slot back while it waits and takes one again to read.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ErrorCode};
use crate::wait::GetQuery;

/// What [`limit`] enforces.
#[derive(Clone, Debug)]
pub(crate) struct RequestLimits {
    pub timeout: Duration,
    pub slots: Arc<Semaphore>,
}

impl RequestLimits {
    pub(crate) fn new(timeout: Duration, max_concurrent_requests: usize) -> Self {
        Self {
            timeout,
            slots: Arc::new(Semaphore::new(max_concurrent_requests.max(1))),
        }
    }
}

/// The request slot a request holds, in its extensions. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    slots: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl Slot {
    /// Gives the slot back (while the request waits for something else).
    pub(crate) fn release(&self) {
        drop(self.lock().take());
    }

    /// Takes a slot again if it was given back, waiting for one.
    pub(crate) async fn reacquire(&self) {
        if self.lock().is_some() {
            return;
        }
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.ok();
        *self.lock() = permit;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Middleware: a slot, then the request, within the (lengthened) request timeout.
pub(crate) async fn limit(
    State(limits): State<RequestLimits>,
    mut req: Request,
    next: Next,
) -> Response {
    let wait = if req.method() == Method::GET {
        axum::extract::Query::<GetQuery>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.wait().ok().flatten())
            .unwrap_or_default()
    } else {
        // A malformed `wait` adds nothing: the route refuses it.
        Duration::ZERO
    };
    let served = async {
        // The semaphore is never closed.
        let permit = limits.slots.clone().acquire_owned().await.ok();
        let slot = Slot {
            slots: limits.slots.clone(),
            held: Arc::new(Mutex::new(permit)),
        };
        req.extensions_mut().insert(slot.clone());
        let resp = next.run(req).await;
        slot.release();
        resp
    };
    match tokio::time::timeout(limits.timeout + wait, served).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout,
            "the request took too long",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// A router whose one route takes 600 ms, under a 200 ms timeout and one slot.
    fn app() -> Router {
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                RequestLimits::new(Duration::from_millis(200), 1),
                limit,
            ))
    }

    async fn status(app: Router, uri: &str) -> StatusCode {
        let req = Request::get(uri).body(Body::empty()).expect("request");
        match app.oneshot(req).await {
            Ok(resp) => resp.status(),
            Err(e) => match e {},
        }
    }

    #[tokio::test]
    async fn a_read_s_wait_lengthens_its_timeout_and_slots_are_waited_for_within_it() {
        assert_eq!(
            status(app(), "/slow").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(app(), "/slow?wait=5s").await, StatusCode::OK);
        // A malformed wait lengthens nothing.
        assert_eq!(
            status(app(), "/slow?wait=5parsecs").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The one slot is taken for 600 ms: the second request times out waiting for it.
        let app = app();
        let (first, second) = tokio::join!(status(app.clone(), "/slow?wait=5s"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            status(app.clone(), "/slow").await
        });
        assert_eq!(
            (first, second),
            (StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
