//! An OTLP/gRPC trace receiver run inside a test or the bench: it accepts every export and
//! keeps the spans, so a test can assert trace ids, parent links and attributes of what
//! real processes exported.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// One received span, with the `service.name` of the process that sent it. Ids are
/// lower-case hex; `parent` is empty for a root span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub attrs: HashMap<String, String>,
}

/// The spans received so far. Cheap to clone; clones share the spans.
#[derive(Clone, Debug, Default)]
pub struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    received.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs: attrs(&s.attributes),
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves a new receiver on a free loopback port until the process exits; returns it
    /// and its address once it accepts connections.
    ///
    /// # Panics
    /// When no loopback port can be bound or the server does not come up within 10 s.
    pub async fn start() -> (Self, SocketAddr) {
        let recv = Self::default();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("binding the OTLP receiver on 127.0.0.1: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the OTLP receiver's address: {e}"));
        let incoming = futures_incoming(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(recv.clone()))
                .serve_with_incoming(incoming),
        );
        let up = crate::wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        assert!(up, "the OTLP receiver did not accept connections on {addr}");
        (recv, addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many spans each service sent so far.
    pub fn by_service(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for s in self
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            *counts.entry(s.service.clone()).or_default() += 1;
        }
        counts
    }

    /// How many spans arrived so far.
    pub fn total(&self) -> u64 {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }
}

/// The accepted connections of `listener`, as the stream tonic serves.
fn futures_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}
