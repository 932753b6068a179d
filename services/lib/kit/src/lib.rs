//! Service kit: what every gradeflow service process needs around its handlers
//! (`ARCHITECTURE.md` § Observability, `STYLE.md` § Config and telemetry).
//!
//! A service's `main.rs` wires, in this order:
//!
//! 1. [`config`]: one typed [`Config`], defaults ← `GRADEFLOW_*` / `OTEL_*`
//!    environment ← command-line overrides. Only binaries read the environment.
//! 2. [`telemetry`]: `tracing` subscriber (text or JSON logs, `RUST_LOG` filter)
//!    and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP trace export.
//! 3. [`trace`]: the W3C `traceparent` carried in NATS headers and in event
//!    metadata, so one dossier's journey is one trace across services.
//! 4. [`health`] and [`metrics`]: `/healthz`, `/readyz` and Prometheus-style
//!    `/metrics` on one axum router.
//! 5. [`shutdown`]: SIGINT/SIGTERM to a cancellation token, and staged draining
//!    (stop intake, finish in-flight work, flush the relay, close stores)
//!    bounded by a grace period.

pub mod config;
pub mod health;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use config::{Config, ConfigError, LogFormat, Overrides};
pub use health::{router, Health};
pub use metrics::{Counter, Gauge, Metrics};
pub use shutdown::{shutdown_signal, DrainReport, Shutdown, Stage};
pub use telemetry::{TelemetryConfig, TelemetryError, TelemetryGuard};
pub use trace::{TraceParent, TraceParentError};
