//! An OTLP/gRPC trace receiver inside the bench process: it accepts every export and only
//! counts the spans, per `service.name`, so `--compare-tracing` can point the api and the
//! worker at it and check that spans really left them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

/// Spans received so far, by `service.name` of their resource.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    spans: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Receiver {
    /// Spans received so far, by service.
    pub fn by_service(&self) -> BTreeMap<String, u64> {
        self.spans.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// All spans received so far.
    pub fn total(&self) -> u64 {
        self.by_service().values().sum()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "(unnamed)".to_owned());
            let n: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
            *counts.entry(service).or_default() += n as u64;
        }
        let mut all = self
            .spans
            .lock()
            .map_err(|_| tonic::Status::internal("receiver lock poisoned"))?;
        for (k, v) in counts {
            *all.entry(k).or_default() += v;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts `recv` on a free loopback port; returns its address once it accepts connections.
/// The server runs until the process exits.
pub async fn start_receiver(recv: Receiver) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the OTLP receiver on 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("reading the OTLP receiver's address")?;
    let incoming = tokio_stream_incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(recv))
            .serve_with_incoming(incoming),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the OTLP receiver did not accept connections on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(addr)
}

/// The accepted connections of `listener` as the stream tonic serves.
fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
