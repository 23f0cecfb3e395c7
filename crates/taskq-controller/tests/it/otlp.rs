//! An OTLP/gRPC trace receiver run by the test: collects every span the controller
//! processes export.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use taskq_testkit::{free_port, wait_until};

/// One received span.
#[derive(Clone, Debug)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub parent: Vec<u8>,
    pub attrs: HashMap<String, String>,
}

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

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self
            .spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: s.name.clone(),
                        parent: s.parent_span_id.clone(),
                        attrs: attrs(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Starts serving on a free loopback port; returns the receiver and its address.
    pub async fn start() -> (Self, SocketAddr) {
        let recv = Self::default();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(recv.clone()))
                .serve(addr),
        );
        let up = wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        assert!(up, "the OTLP receiver did not start");
        (recv, addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
