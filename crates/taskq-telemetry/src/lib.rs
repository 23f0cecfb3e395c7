//! Process set-up shared by every taskq binary: logging (an `RUST_LOG` filter, default
//! `info`, and with `TASKQ_LOG_FORMAT=json` one JSON object per line), OTLP tracing, the
//! Prometheus [`metrics`], shutdown on SIGTERM or SIGINT ([`cancel_on_signals`]), and
//! the W3C trace context carried by requests and tasks ([`trace_context`]).

pub mod metrics;
pub mod trace_context;

pub use trace_context::TraceParent;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The flags of a background process (the worker, the controller): where its health
/// and metrics server listens, and how it logs. Every flag is also a `TASKQ_…` variable.
#[derive(Clone, Debug, clap::Args)]
pub struct ProcessArgs {
    /// Address of the health and metrics server (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "TASKQ_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TASKQ_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected text or json)"
            )),
        }
    }
}

/// Flushes telemetry when dropped; keep it alive until the process exits.
#[must_use = "telemetry is flushed when the guard drops"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Guard {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Whether the standard variables ask for an OTLP exporter.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
        && std::env::var("OTEL_SDK_DISABLED").map_or(true, |v| v != "true")
}

/// Installs the global subscriber and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, an OTLP span exporter configured only by
/// the standard `OTEL_*` variables (protocol, headers, timeout, sampler, service name;
/// `service` is the default name). Without an endpoint there is no exporter and no cost.
/// Call once, at the start of `main`, inside the tokio runtime.
pub fn init(service: &str, format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut provider = None;
    let otel = if otlp_configured() {
        match SpanExporter::builder().build() {
            Ok(exporter) => {
                let mut resource = Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service.to_owned());
                }
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                let tracer = p.tracer("taskq");
                opentelemetry::global::set_tracer_provider(p.clone());
                provider = Some(p);
                // Traces do not depend on `RUST_LOG`: quieting the logs must not drop
                // spans. taskq's own spans and events at `info` and above are exported.
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter_fn(is_traced)),
                )
            }
            Err(e) => {
                eprintln!("OTLP exporter not started: {e}");
                None
            }
        }
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let registry = tracing_subscriber::registry().with(otel);
    let result = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
    Guard { provider }
}

/// Cancels `token` on the first SIGTERM or SIGINT, from a task of its own; logs which
/// signal came. A signal that cannot be listened for is logged and never fires.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let sigint = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let sigterm = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let sigterm = std::future::pending::<()>();
        tokio::select! {
            () = sigterm => tracing::info!("SIGTERM: shutting down"),
            () = sigint => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

/// Whether a span or event goes to the OTLP exporter: taskq's own, at `info` or above.
fn is_traced(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("taskq") && *meta.level() <= tracing::Level::INFO
}

/// Makes `span` a child of the W3C `traceparent` (when valid).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span`, when it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id of `span`, for log lines, when it is being traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
