//! Process-wide telemetry: one `tracing` subscriber with
//!
//! * a log layer, text for a terminal or JSON lines for a collector, written to
//!   **stderr** (stdout belongs to the program's output: `gradeflow rules check`
//!   prints JSON there, `gradeflow up` the portal URL and a token), filtered by
//!   an `EnvFilter` (`RUST_LOG` directives via [`crate::Config::log_filter`],
//!   `info` by default);
//! * the OpenTelemetry layer (`tracing-opentelemetry`), always installed and
//!   filtered separately (INFO spans and above, whatever `RUST_LOG` says), so
//!   every handler span has a real W3C trace id that [`crate::trace`] can
//!   propagate even when logs are quiet;
//!   spans are **exported** over OTLP only when an endpoint is configured
//!   (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), over gRPC or, with
//!   `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, over plain HTTP, through
//!   the SDK's batch processor so a slow collector never blocks a handler.
//!
//! The W3C TraceContext propagator is also set as the global propagator, for
//! any library that propagates through `opentelemetry::global`.
//!
//! Called once, early in `main`, inside the Tokio runtime; the returned
//! [`TelemetryGuard`] lives until the end of `main` and flushes spans still
//! queued when it is dropped.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

use crate::config::{LogFormat, DEFAULT_LOG_FILTER, DEFAULT_SERVICE_NAME};

/// How long dropping the guard may wait for queued spans to reach the
/// collector. Bounded so an unreachable collector cannot hold up exit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Instrumentation scope of the spans this process creates.
const SCOPE: &str = "gradeflow";

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`), usually port 4317.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), usually port 4318:
    /// `POST <endpoint>` where the endpoint is the full traces URL.
    HttpProtobuf,
}

/// What [`init`] needs; usually [`crate::Config::telemetry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// OTLP collector: `http://host:4317` for gRPC, the traces URL
    /// (`http://host:4318/v1/traces`) for HTTP; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// gRPC or HTTP/protobuf.
    pub otlp_protocol: OtlpProtocol,
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// `EnvFilter` directives (`info`, `gradeflow=debug,sqlx=warn`, …).
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            log_format: LogFormat::Text,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
        }
    }
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter directives do not parse.
    #[error("invalid log filter `{filter}`")]
    Filter {
        /// The directives as given.
        filter: String,
        /// What the parser refused.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// OTLP export was asked for outside a Tokio runtime: the gRPC channel
    /// needs one to run its connection task.
    #[error("OTLP export needs a Tokio runtime: call telemetry::init inside one")]
    NoRuntime,
    /// The OTLP exporter could not be built for the endpoint.
    #[error("building the OTLP exporter for {endpoint}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why the exporter refused it.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps telemetry running; dropping it flushes queued spans (bounded by
/// [`FLUSH_TIMEOUT`]) and shuts the exporter down.
///
/// Drop it at the end of `main` while the Tokio runtime still runs on other
/// threads (the default multi-thread runtime): the exporter's gRPC channel is
/// driven by that runtime, and a single-threaded runtime blocked in the drop
/// could not drive it, so the flush would wait out the timeout.
#[derive(Debug)]
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    installed: bool,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether this call installed the global subscriber. `false` when one
    /// was already installed (a second `init`, or another test in the same
    /// process): that one stays in charge.
    pub fn is_installed(&self) -> bool {
        self.installed
    }

    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and shuts down now rather than at drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Errors here mean the collector was unreachable or shut down
            // already; logging is about to stop, so there is nowhere useful
            // to report them but stderr, which the SDK already does.
            let _ = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global `tracing` subscriber described in the module docs.
///
/// A second call (tests often initialise per test) does not panic: it
/// returns a guard whose [`TelemetryGuard::is_installed`] is `false` and
/// leaves the first subscriber in place.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = build_filter(&config.log_filter)?;
    let provider = build_provider(config)?;
    let exporting = config.otlp_endpoint.is_some();

    // Two optional layers rather than a boxed one: `Option<Layer>` is a layer
    // that does nothing when `None`, and keeps the types static. The log
    // filter is attached to the log layer only (a per-layer filter): with a
    // global filter, `RUST_LOG=warn` would disable INFO spans altogether and
    // with them the trace ids that commands and events must carry.
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = match config.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_filter(filter),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            ),
        ),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_filter(trace_filter());

    let installed = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();

    if !installed {
        // Another subscriber is in charge; ours would never see a span, so
        // shut its provider down now instead of keeping an idle exporter.
        let _ = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
        tracing::debug!("telemetry already initialised; keeping the first subscriber");
        return Ok(TelemetryGuard {
            provider: None,
            installed: false,
            exporting: false,
        });
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::debug!(
        service = %config.service_name,
        otlp_endpoint = config.otlp_endpoint.as_deref().unwrap_or("none"),
        "telemetry initialised"
    );
    Ok(TelemetryGuard {
        provider: Some(provider),
        installed: true,
        exporting,
    })
}

/// Which spans become OpenTelemetry spans, independent of `RUST_LOG`: INFO
/// and above (handlers and use cases are `#[instrument]`ed at INFO), minus the
/// crates the exporter itself runs on, so that exporting a batch never
/// produces spans that need exporting.
fn trace_filter() -> Targets {
    Targets::new()
        .with_default(Level::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
}

fn build_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    let directives = match directives.trim() {
        "" => DEFAULT_LOG_FILTER,
        d => d,
    };
    // `try_new`, not `from_default_env`: the directives come from `Config`,
    // so this library never reads the environment itself.
    EnvFilter::try_new(directives).map_err(|source| TelemetryError::Filter {
        filter: directives.to_owned(),
        source,
    })
}

/// The tracer provider: with a batch OTLP exporter when an endpoint is set,
/// else with no processor at all, which still hands out valid trace and
/// span ids (and samples everything, so that a service that does export
/// later in the trace records its part: its parent-based sampler follows
/// our flag).
fn build_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    // `builder_empty`: the default builder would read `OTEL_*` resource
    // variables from the environment behind our back.
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(builder.build());
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        // A blocking HTTP client: the batch processor exports from its own
        // thread, outside the Tokio runtime.
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build(),
    }
    .map_err(|source| TelemetryError::Exporter {
        endpoint: endpoint.clone(),
        source,
    })?;
    // The batch processor queues finished spans and exports them from its
    // own thread, so handlers never wait on the collector; a full queue
    // drops spans rather than applying back-pressure to the service.
    Ok(builder.with_batch_exporter(exporter).build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_bad_filter_is_refused_before_anything_is_installed() {
        let config = TelemetryConfig {
            log_filter: "info,[[bad".into(),
            ..TelemetryConfig::default()
        };
        let err = init(&config).unwrap_err();
        assert!(matches!(err, TelemetryError::Filter { .. }), "{err:?}");
    }

    #[test]
    fn export_outside_a_runtime_is_refused() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..TelemetryConfig::default()
        };
        let err = init(&config).unwrap_err();
        assert!(matches!(err, TelemetryError::NoRuntime), "{err:?}");
    }

    #[test]
    fn an_empty_filter_means_the_default() {
        assert!(build_filter("  ").is_ok());
        assert!(build_filter("gradeflow=debug,sqlx=warn").is_ok());
    }
}
