//! Typed service configuration, layered: defaults ← environment ← explicit
//! overrides (command-line flags handed in by the binary).
//!
//! The defaults make `cargo run` work on the embedded default: SQLite files
//! under `./data`, NATS on `127.0.0.1:4222`, HTTP on `127.0.0.1:8080`, prefix
//! `gradeflow` (`API.md` § Running it).
//!
//! Libraries never read the environment (`STYLE.md` § Config and telemetry):
//! [`Config::from_env_map`] is a pure function over name/value pairs so it can
//! be tested without touching the process, and only binaries call
//! [`Config::from_process_env`]. Everything is validated once, here, so a typo
//! fails at start-up with a message naming the variable or flag rather than as a
//! connection error minutes later.
//!
//! Recognised variables (an empty value counts as unset, as the OpenTelemetry
//! specification asks for its own variables):
//!
//! | variable | field | default |
//! | --- | --- | --- |
//! | `GRADEFLOW_PREFIX` | [`Config::names`] | `gradeflow` |
//! | `GRADEFLOW_NATS_URL` | [`Config::nats_url`] | `nats://127.0.0.1:4222` |
//! | `GRADEFLOW_DATA_DIR` | [`Config::data_dir`] | `./data` |
//! | `GRADEFLOW_DATABASE_URL` | [`Config::database_url`] | none (SQLite) |
//! | `GRADEFLOW_HTTP_ADDR` | [`Config::http_addr`] | `127.0.0.1:8080` |
//! | `GRADEFLOW_LOG_FORMAT` | [`Config::log_format`] | `text` |
//! | `GRADEFLOW_SHUTDOWN_GRACE` | [`Config::shutdown_grace`] | `20s` |
//! | `GRADEFLOW_STREAM_REPLICAS` | [`Config::stream_replicas`] | `1` |
//! | `GRADEFLOW_STREAM_CLUSTER` | [`Config::stream_cluster`] | none (any cluster) |
//! | `GRADEFLOW_STREAM_TAGS` | [`Config::stream_tags`] (comma-separated) | none (any server) |
//! | `GRADEFLOW_MODEL_CACHE` | [`Config::model_cache`] | `4096` |
//! | `GRADEFLOW_DB_POOL` | [`Config::db_pool`] | `8` |
//! | `RUST_LOG` | [`Config::log_filter`] | `info` |
//! | `OTEL_SERVICE_NAME` | [`Config::service_name`] | `gradeflow` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | [`Config::otlp_endpoint`] | none (no export) |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL` | [`Config::otlp_protocol`]: `grpc` or `http/protobuf` | `grpc` |
//! | `OTEL_SDK_DISABLED` | `true` switches export off | |

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use gradeflow_proto::names::{BadPrefix, Names};

use crate::telemetry::{OtlpProtocol, TelemetryConfig};

/// `GRADEFLOW_PREFIX`: prefix of every NATS subject, stream and consumer.
pub const ENV_PREFIX: &str = "GRADEFLOW_PREFIX";
/// `GRADEFLOW_NATS_URL`: NATS server URL(s), comma-separated.
pub const ENV_NATS_URL: &str = "GRADEFLOW_NATS_URL";
/// `GRADEFLOW_DATA_DIR`: directory of the SQLite files (and an embedded NATS).
pub const ENV_DATA_DIR: &str = "GRADEFLOW_DATA_DIR";
/// `GRADEFLOW_DATABASE_URL`: PostgreSQL URL; when set, SQLite is not used.
pub const ENV_DATABASE_URL: &str = "GRADEFLOW_DATABASE_URL";
/// `GRADEFLOW_HTTP_ADDR`: socket address the HTTP server listens on.
pub const ENV_HTTP_ADDR: &str = "GRADEFLOW_HTTP_ADDR";
/// `GRADEFLOW_LOG_FORMAT`: `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "GRADEFLOW_LOG_FORMAT";
/// `GRADEFLOW_SHUTDOWN_GRACE`: drain budget on shutdown (`30`, `30s`, `500ms`, `2m`).
pub const ENV_SHUTDOWN_GRACE: &str = "GRADEFLOW_SHUTDOWN_GRACE";
/// `GRADEFLOW_STREAM_REPLICAS`: replicas of each JetStream stream (1 on a
/// single server, 3 on a 3-node cluster).
pub const ENV_STREAM_REPLICAS: &str = "GRADEFLOW_STREAM_REPLICAS";
/// `GRADEFLOW_STREAM_CLUSTER`: the NATS cluster the streams are placed in.
pub const ENV_STREAM_CLUSTER: &str = "GRADEFLOW_STREAM_CLUSTER";
/// `GRADEFLOW_STREAM_TAGS`: comma-separated server tags the streams' replicas
/// are placed on.
pub const ENV_STREAM_TAGS: &str = "GRADEFLOW_STREAM_TAGS";
/// `GRADEFLOW_MODEL_CACHE`: how many values each of a model's spilling maps
/// keeps in memory (`gradeflow_service::spill`), 8 to 100,000,000.
pub const ENV_MODEL_CACHE: &str = "GRADEFLOW_MODEL_CACHE";
/// The default of [`Config::model_cache`].
pub const DEFAULT_MODEL_CACHE: usize = 4_096;
/// `GRADEFLOW_DB_POOL`: database connections per service store, 1 to 64
/// (the store's writer and its readers share them).
pub const ENV_DB_POOL: &str = "GRADEFLOW_DB_POOL";
/// The default of [`Config::db_pool`].
pub const DEFAULT_DB_POOL: u32 = 8;
/// `RUST_LOG`: `tracing_subscriber::EnvFilter` directives.
pub const ENV_RUST_LOG: &str = "RUST_LOG";
/// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
pub const ENV_OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP collector; switches trace export on.
pub const ENV_OTEL_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: traces-only endpoint, wins over the general one.
pub const ENV_OTEL_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: only `grpc` is built in.
pub const ENV_OTEL_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: traces-only protocol, wins over the general one.
pub const ENV_OTEL_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_SDK_DISABLED`: `true` switches export off whatever the endpoint.
pub const ENV_OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Default NATS URL: a local server, as `gradeflow up` expects.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default HTTP listen address: loopback only, so a development run is not
/// reachable from the network by accident.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// Default `service.name` of a process that runs every service.
pub const DEFAULT_SERVICE_NAME: &str = "gradeflow";
/// Default log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// Default drain budget. Kubernetes sends SIGKILL 30 s after SIGTERM by
/// default; finishing in 20 s leaves room for the process to exit cleanly
/// (flush telemetry, close files) before that.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "pretty" | "plain" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// A configuration value that cannot be used. `origin` names where it came
/// from (an environment variable or `override <field>`), so the operator knows
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The subject prefix is not one legal subject token.
    #[error("invalid subject prefix in {origin}")]
    Prefix {
        /// Where the value came from.
        origin: String,
        /// Why it is refused.
        #[source]
        source: BadPrefix,
    },
    /// The NATS URL list is malformed.
    #[error("invalid NATS URL `{value}` in {origin}: {reason}")]
    NatsUrl {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The data directory cannot be used in a SQLite URL.
    #[error("invalid data directory in {origin}: {reason}")]
    DataDir {
        /// Where the value came from.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database URL is not a PostgreSQL URL. The value is not repeated:
    /// it may hold a password.
    #[error("invalid database URL in {origin}: {reason}")]
    DatabaseUrl {
        /// Where the value came from.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP address is not `IP:port`.
    #[error("invalid HTTP address `{value}` in {origin} (expected IP:port, e.g. 127.0.0.1:8080)")]
    HttpAddr {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The service name is empty or holds control characters.
    #[error("invalid service name `{value}` in {origin}: {reason}")]
    ServiceName {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The OTLP endpoint is not a usable URL.
    #[error("invalid OTLP endpoint `{value}` in {origin}: {reason}")]
    OtlpEndpoint {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An OTLP protocol other than gRPC or HTTP/protobuf was asked for.
    #[error(
        "unsupported OTLP protocol `{value}` in {origin}: `grpc` or `http/protobuf` are built in"
    )]
    OtlpProtocol {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// The log format is neither `text` nor `json`.
    #[error("invalid log format `{value}` in {origin} (expected `text` or `json`)")]
    LogFormat {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// The grace period does not parse as a duration.
    #[error(
        "invalid shutdown grace `{value}` in {origin} (expected e.g. `20`, `20s`, `500ms`, `2m`)"
    )]
    ShutdownGrace {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// The stream replica count is not 1 to 5.
    #[error(
        "invalid stream replicas `{value}` in {origin} (expected 1 to 5; 3 on a 3-node cluster)"
    )]
    StreamReplicas {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// `GRADEFLOW_MODEL_CACHE` is not a whole number from 8 to 100,000,000.
    #[error("invalid model cache `{value}` in {origin} (expected values per map, 8 to 100000000)")]
    ModelCache {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// `GRADEFLOW_DB_POOL` is not a whole number from 1 to 64.
    #[error(
        "invalid database pool `{value}` in {origin} (expected connections per store, 1 to 64)"
    )]
    DbPool {
        /// Where the value came from.
        origin: String,
        /// The value as given.
        value: String,
    },
    /// A variable this crate reads holds bytes that are not UTF-8.
    #[error("environment variable {name} is not valid UTF-8")]
    NotUnicode {
        /// The variable's name.
        name: String,
    },
}

/// Explicit overrides, typically command-line flags, applied last. `None` (or
/// an empty string) leaves the value from the lower layers; values are
/// validated exactly like environment values.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--prefix`.
    pub prefix: Option<String>,
    /// `--nats-url`.
    pub nats_url: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--database-url` (PostgreSQL).
    pub database_url: Option<String>,
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// The service name, usually fixed by the binary (`gradeflow approval`).
    pub service_name: Option<String>,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--log` filter directives.
    pub log_filter: Option<String>,
    /// `--shutdown-grace`.
    pub shutdown_grace: Option<String>,
}

/// Everything a service process needs to start. Build it with
/// [`Config::from_process_env`] (binaries) or [`Config::from_env_map`]
/// (tests), then [`Config::with_overrides`].
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Subject, stream and consumer names under the validated prefix
    /// (`GRADEFLOW_PREFIX`); [`Config::prefix`] gives the bare string.
    pub names: Names,
    /// NATS server URL, or several separated by commas.
    pub nats_url: String,
    /// Directory of the SQLite files.
    pub data_dir: PathBuf,
    /// PostgreSQL URL; `None` means SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Where the HTTP server listens (port 0 picks a free port, for tests).
    pub http_addr: SocketAddr,
    /// `service.name` in traces.
    pub service_name: String,
    /// OTLP collector endpoint; `None` means traces are not exported
    /// (trace ids still flow, see [`crate::trace`]). For HTTP/protobuf it is
    /// the full traces URL: `OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/traces`
    /// appended, as the specification says; the traces variable is taken
    /// as is.
    pub otlp_endpoint: Option<String>,
    /// How spans are exported: OTLP over gRPC (the default) or over HTTP
    /// with protobuf bodies.
    pub otlp_protocol: OtlpProtocol,
    /// Log line format.
    pub log_format: LogFormat,
    /// `EnvFilter` directives, `info` by default.
    pub log_filter: String,
    /// How long shutdown may take before remaining tasks are abandoned.
    pub shutdown_grace: Duration,
    /// Replicas of each JetStream stream (`GRADEFLOW_STREAM_REPLICAS`): 1 on
    /// a single server, 3 on a 3-node cluster (NATS allows 1 to 5).
    pub stream_replicas: usize,
    /// The cluster the streams are placed in (`GRADEFLOW_STREAM_CLUSTER`).
    pub stream_cluster: Option<String>,
    /// Server tags the streams are placed on (`GRADEFLOW_STREAM_TAGS`).
    pub stream_tags: Vec<String>,
    /// How many values each of a model's spilling maps keeps in memory, the
    /// rest going to its scratch file (`GRADEFLOW_MODEL_CACHE`).
    pub model_cache: usize,
    /// Database connections in each service store's pool, shared by its
    /// writer and its readers (`GRADEFLOW_DB_POOL`). On SQLite each one is
    /// a thread with its own page cache and prepared statements.
    pub db_pool: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            names: Names::default(),
            nats_url: DEFAULT_NATS_URL.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            http_addr: DEFAULT_HTTP_ADDR,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            log_format: LogFormat::Text,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            stream_replicas: 1,
            stream_cluster: None,
            stream_tags: Vec::new(),
            model_cache: DEFAULT_MODEL_CACHE,
            db_pool: DEFAULT_DB_POOL,
        }
    }
}

// Written by hand so that logging the configuration at start-up never prints
// a database password.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("prefix", &self.prefix())
            .field("nats_url", &self.nats_url_redacted())
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("http_addr", &self.http_addr)
            .field("service_name", &self.service_name)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("otlp_protocol", &self.otlp_protocol)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("stream_replicas", &self.stream_replicas)
            .field("stream_cluster", &self.stream_cluster)
            .field("stream_tags", &self.stream_tags)
            .field("model_cache", &self.model_cache)
            .field("db_pool", &self.db_pool)
            .finish()
    }
}

impl Config {
    /// Defaults overlaid with the recognised variables among `vars` (see the
    /// module docs). Pure: pass `[("GRADEFLOW_PREFIX".into(), "t1".into())]`
    /// in a test, the process environment in a binary.
    pub fn from_env_map<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Empty means unset: `FOO= cmd` is the usual way to switch something
        // off in a shell or a compose file.
        let env: HashMap<String, String> = vars
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |name: &'static str| env.get(name).map(|v| (name, v.as_str()));

        let mut config = Self::default();
        if let Some((origin, v)) = get(ENV_PREFIX) {
            config.names = parse_prefix(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_NATS_URL) {
            config.nats_url = parse_nats_url(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_DATA_DIR) {
            config.data_dir = parse_data_dir(origin, Path::new(v))?;
        }
        if let Some((origin, v)) = get(ENV_DATABASE_URL) {
            config.database_url = Some(parse_database_url(origin, v)?);
        }
        if let Some((origin, v)) = get(ENV_HTTP_ADDR) {
            config.http_addr = parse_http_addr(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_OTEL_SERVICE_NAME) {
            config.service_name = parse_service_name(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_LOG_FORMAT) {
            config.log_format = parse_log_format(origin, v)?;
        }
        if let Some((_, v)) = get(ENV_RUST_LOG) {
            // Directives are checked when telemetry starts: EnvFilter is the
            // only parser that knows them, and it reports the bad directive.
            config.log_filter = v.trim().to_owned();
        }
        if let Some((origin, v)) = get(ENV_SHUTDOWN_GRACE) {
            config.shutdown_grace = parse_duration(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_STREAM_REPLICAS) {
            config.stream_replicas = parse_replicas(origin, v)?;
        }
        if let Some((_, v)) = get(ENV_STREAM_CLUSTER) {
            config.stream_cluster = Some(v.trim().to_owned()).filter(|c| !c.is_empty());
        }
        if let Some((origin, v)) = get(ENV_MODEL_CACHE) {
            config.model_cache = parse_model_cache(origin, v)?;
        }
        if let Some((origin, v)) = get(ENV_DB_POOL) {
            config.db_pool = parse_db_pool(origin, v)?;
        }
        if let Some((_, v)) = get(ENV_STREAM_TAGS) {
            config.stream_tags = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }

        let disabled =
            get(ENV_OTEL_SDK_DISABLED).is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true"));
        // The signal-specific variable wins over the general one, as the
        // OpenTelemetry specification says.
        let endpoint = get(ENV_OTEL_TRACES_ENDPOINT).or_else(|| get(ENV_OTEL_ENDPOINT));
        if let (false, Some((origin, v))) = (disabled, endpoint) {
            let mut url = parse_otlp_endpoint(origin, v)?;
            // Only checked when export is on: a stray protocol variable must
            // not stop a service that exports nothing.
            if let Some((origin, v)) =
                get(ENV_OTEL_TRACES_PROTOCOL).or_else(|| get(ENV_OTEL_PROTOCOL))
            {
                config.otlp_protocol = match v.trim().to_ascii_lowercase().as_str() {
                    "grpc" => OtlpProtocol::Grpc,
                    "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    _ => {
                        return Err(ConfigError::OtlpProtocol {
                            origin: origin.to_owned(),
                            value: v.to_owned(),
                        })
                    }
                };
            }
            // Over HTTP the general endpoint is a base URL; each signal
            // appends its path (OTLP exporter specification).
            if config.otlp_protocol == OtlpProtocol::HttpProtobuf && origin == ENV_OTEL_ENDPOINT {
                url = format!("{}/v1/traces", url.trim_end_matches('/'));
            }
            config.otlp_endpoint = Some(url);
        }
        Ok(config)
    }

    /// [`Config::from_env_map`] over the process environment. For binaries
    /// only: libraries take a `Config` (or the parts they need) as arguments.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        // `std::env::vars()` panics on a non-UTF-8 entry; skip unrelated ones
        // and refuse only a variable that we would have read.
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) if is_recognised(name) => {
                    return Err(ConfigError::NotUnicode {
                        name: name.to_owned(),
                    })
                }
                Err(_) => {}
            }
        }
        Self::from_env_map(vars)
    }

    /// This configuration with `overrides` applied on top, each validated as
    /// its environment counterpart is.
    pub fn with_overrides(mut self, overrides: &Overrides) -> Result<Self, ConfigError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|v| !v.trim().is_empty())
        }
        if let Some(v) = given(&overrides.prefix) {
            self.names = parse_prefix("override prefix", v)?;
        }
        if let Some(v) = given(&overrides.nats_url) {
            self.nats_url = parse_nats_url("override nats_url", v)?;
        }
        if let Some(v) = overrides.data_dir.as_deref() {
            if !v.as_os_str().is_empty() {
                self.data_dir = parse_data_dir("override data_dir", v)?;
            }
        }
        if let Some(v) = given(&overrides.database_url) {
            self.database_url = Some(parse_database_url("override database_url", v)?);
        }
        if let Some(v) = given(&overrides.http_addr) {
            self.http_addr = parse_http_addr("override http_addr", v)?;
        }
        if let Some(v) = given(&overrides.service_name) {
            self.service_name = parse_service_name("override service_name", v)?;
        }
        if let Some(v) = given(&overrides.otlp_endpoint) {
            self.otlp_endpoint = Some(parse_otlp_endpoint("override otlp_endpoint", v)?);
        }
        if let Some(v) = given(&overrides.log_format) {
            self.log_format = parse_log_format("override log_format", v)?;
        }
        if let Some(v) = given(&overrides.log_filter) {
            self.log_filter = v.trim().to_owned();
        }
        if let Some(v) = given(&overrides.shutdown_grace) {
            self.shutdown_grace = parse_duration("override shutdown_grace", v)?;
        }
        Ok(self)
    }

    /// The bare subject prefix.
    pub fn prefix(&self) -> &str {
        self.names.prefix()
    }

    /// Where `service` keeps its event store: the PostgreSQL URL when one is
    /// configured (the caller then uses one schema per service, named
    /// `service`), else `sqlite://<data_dir>/<service>.db?mode=rwc`
    /// (`mode=rwc` creates the file on first start).
    pub fn store_url(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let file = self.data_dir.join(format!("{service}.db"));
                // sqlx percent-decodes the path, so `%`, `?` and `#` in a
                // directory name must be encoded or they would cut the path.
                let path = encode_sqlite_path(&file.to_string_lossy());
                format!("sqlite://{path}?mode=rwc")
            }
        }
    }

    /// The NATS servers of [`Config::nats_url`], one entry per server:
    /// async-nats takes a list, not a comma-separated string
    /// (`async_nats::connect(config.nats_servers())`).
    pub fn nats_servers(&self) -> Vec<String> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The user and password of the NATS servers when the URL carries them
    /// (`nats://user:password@host:4222`, on the first server of the list):
    /// async-nats ignores credentials in a URL, so the binary hands these to
    /// `ConnectOptions::user_and_password`. The password is taken as written
    /// (no percent-decoding), up to the last `@`.
    pub fn nats_user_password(&self) -> Option<(String, String)> {
        let first = self.nats_servers().into_iter().next()?;
        let rest = first.split_once("://").map_or(first.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?']).next()?;
        let (userinfo, _host) = authority.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    }

    /// One connection to the servers of [`Config::nats_url`] (a comma-separated
    /// list is a cluster), with the user and password the first URL carries
    /// (async-nats ignores credentials written in a URL), reconnecting to any
    /// of them for as long as the process runs.
    pub async fn connect_nats(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = self.nats_user_password() {
            options = options.user_and_password(user, password);
        }
        options.connect(self.nats_servers()).await
    }

    /// [`Config::nats_url`] with every password replaced by `***`, for logs.
    pub fn nats_url_redacted(&self) -> String {
        self.nats_servers()
            .iter()
            .map(|s| redact_url(s))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether stores live in PostgreSQL (one schema per service) rather than
    /// in SQLite files.
    pub fn uses_postgres(&self) -> bool {
        self.database_url.is_some()
    }

    /// The part of the configuration that [`crate::telemetry::init`] needs.
    pub fn telemetry(&self) -> TelemetryConfig {
        TelemetryConfig {
            service_name: self.service_name.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol,
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
        }
    }
}

/// Every variable [`Config::from_env_map`] reads (deploy/ manifests are
/// checked against this list).
pub const VARIABLES: [&str; 19] = [
    ENV_PREFIX,
    ENV_NATS_URL,
    ENV_DATA_DIR,
    ENV_DATABASE_URL,
    ENV_HTTP_ADDR,
    ENV_LOG_FORMAT,
    ENV_SHUTDOWN_GRACE,
    ENV_STREAM_REPLICAS,
    ENV_STREAM_CLUSTER,
    ENV_STREAM_TAGS,
    ENV_MODEL_CACHE,
    ENV_DB_POOL,
    ENV_RUST_LOG,
    ENV_OTEL_SERVICE_NAME,
    ENV_OTEL_ENDPOINT,
    ENV_OTEL_TRACES_ENDPOINT,
    ENV_OTEL_PROTOCOL,
    ENV_OTEL_TRACES_PROTOCOL,
    ENV_OTEL_SDK_DISABLED,
];

/// Whether this crate reads `name`.
fn is_recognised(name: &str) -> bool {
    VARIABLES.contains(&name)
}

/// A whole number within `range`, else the error `invalid` makes of the
/// origin and the value as given.
fn parse_count<T>(
    origin: &str,
    v: &str,
    range: std::ops::RangeInclusive<T>,
    invalid: fn(String, String) -> ConfigError,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd,
{
    match v.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(origin.to_owned(), v.to_owned())),
    }
}

fn parse_replicas(origin: &str, v: &str) -> Result<usize, ConfigError> {
    parse_count(origin, v, 1..=5, |origin, value| {
        ConfigError::StreamReplicas { origin, value }
    })
}

fn parse_model_cache(origin: &str, v: &str) -> Result<usize, ConfigError> {
    parse_count(origin, v, 8..=100_000_000, |origin, value| {
        ConfigError::ModelCache { origin, value }
    })
}

fn parse_db_pool(origin: &str, v: &str) -> Result<u32, ConfigError> {
    parse_count(origin, v, 1..=64, |origin, value| ConfigError::DbPool {
        origin,
        value,
    })
}

fn parse_prefix(origin: &str, v: &str) -> Result<Names, ConfigError> {
    Names::new(v.trim()).map_err(|source| ConfigError::Prefix {
        origin: origin.to_owned(),
        source,
    })
}

fn parse_nats_url(origin: &str, v: &str) -> Result<String, ConfigError> {
    let err = |reason| ConfigError::NatsUrl {
        origin: origin.to_owned(),
        value: v.to_owned(),
        reason,
    };
    // A comma-separated list of servers (`Config::nats_servers` splits it
    // for async-nats), each with or without a scheme (`localhost:4222`);
    // check each entry's shape, not reachability.
    for server in v.split(',').map(str::trim) {
        if server.is_empty() {
            return Err(err("empty server entry"));
        }
        if server.chars().any(char::is_whitespace) {
            return Err(err("whitespace inside a server URL"));
        }
        if let Some((scheme, rest)) = server.split_once("://") {
            if !["nats", "tls", "ws", "wss"].contains(&scheme) {
                return Err(err("scheme must be nats, tls, ws or wss"));
            }
            if rest.is_empty() {
                return Err(err("missing host"));
            }
        }
    }
    Ok(v.trim().to_owned())
}

fn parse_data_dir(origin: &str, v: &Path) -> Result<PathBuf, ConfigError> {
    let err = |reason| ConfigError::DataDir {
        origin: origin.to_owned(),
        reason,
    };
    // The directory ends up inside a `sqlite://` URL, which is text.
    let Some(s) = v.to_str() else {
        return Err(err("path is not valid UTF-8"));
    };
    if s.trim().is_empty() {
        return Err(err("path is empty"));
    }
    Ok(v.to_path_buf())
}

fn parse_database_url(origin: &str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim();
    let rest = v
        .strip_prefix("postgres://")
        .or_else(|| v.strip_prefix("postgresql://"));
    match rest {
        // SQLite needs no URL: it is the default, one file per service under
        // the data directory, which one shared URL could not express.
        None => Err(ConfigError::DatabaseUrl {
            origin: origin.to_owned(),
            reason: "must start with postgres:// or postgresql://",
        }),
        Some("") => Err(ConfigError::DatabaseUrl {
            origin: origin.to_owned(),
            reason: "missing host",
        }),
        Some(_) => Ok(v.to_owned()),
    }
}

fn parse_http_addr(origin: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|source| ConfigError::HttpAddr {
        origin: origin.to_owned(),
        value: v.to_owned(),
        source,
    })
}

fn parse_service_name(origin: &str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim();
    if v.chars().any(char::is_control) {
        return Err(ConfigError::ServiceName {
            origin: origin.to_owned(),
            value: v.to_owned(),
            reason: "control characters",
        });
    }
    if v.len() > 255 {
        return Err(ConfigError::ServiceName {
            origin: origin.to_owned(),
            value: v.to_owned(),
            reason: "longer than 255 bytes",
        });
    }
    Ok(v.to_owned())
}

fn parse_otlp_endpoint(origin: &str, v: &str) -> Result<String, ConfigError> {
    let v = v.trim();
    let err = |reason| ConfigError::OtlpEndpoint {
        origin: origin.to_owned(),
        value: v.to_owned(),
        reason,
    };
    if v.starts_with("https://") {
        // The exporter is built without TLS (no second TLS stack to compile);
        // a collector or agent next to the service takes plain gRPC.
        return Err(err(
            "https is not built in; point it at a local collector over http://",
        ));
    }
    match v.strip_prefix("http://") {
        None => Err(err("must start with http://")),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => Err(err("missing host")),
        Some(rest) if rest.chars().any(char::is_whitespace) => Err(err("contains whitespace")),
        Some(_) => Ok(v.to_owned()),
    }
}

fn parse_log_format(origin: &str, v: &str) -> Result<LogFormat, ConfigError> {
    v.parse().map_err(|()| ConfigError::LogFormat {
        origin: origin.to_owned(),
        value: v.to_owned(),
    })
}

/// `20` (seconds), `20s`, `500ms` or `2m`.
fn parse_duration(origin: &str, v: &str) -> Result<Duration, ConfigError> {
    let err = || ConfigError::ShutdownGrace {
        origin: origin.to_owned(),
        value: v.to_owned(),
    };
    let s = v.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| err())?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(err),
        _ => Err(err()),
    }
}

fn encode_sqlite_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// `url` with the password of its user-info replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last `@` ends the user-info: a password may itself contain `@`.
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_work_on_the_embedded_default() {
        let c = Config::from_env_map(Vec::new()).unwrap();
        assert_eq!(c.prefix(), "gradeflow");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, None);
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.service_name, "gradeflow");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn nats_credentials_come_from_the_url_and_stay_out_of_logs() {
        let c = Config::from_env_map(env(&[(
            "GRADEFLOW_NATS_URL",
            "nats://approval:s3cr@t@n1:4222,nats://approval:s3cr@t@n2:4222",
        )]))
        .unwrap();
        assert_eq!(
            c.nats_user_password(),
            Some(("approval".to_owned(), "s3cr@t".to_owned()))
        );
        assert_eq!(
            c.nats_url_redacted(),
            "nats://approval:***@n1:4222,nats://approval:***@n2:4222"
        );
        assert!(!format!("{c:?}").contains("s3cr"));
        assert_eq!(Config::default().nats_user_password(), None);
    }

    #[test]
    fn a_server_list_is_split_for_the_client() {
        let c = Config::from_env_map(env(&[(
            "GRADEFLOW_NATS_URL",
            "nats://a:4222, nats://u:p@b:4222,c:4222",
        )]))
        .unwrap();
        assert_eq!(
            c.nats_servers(),
            ["nats://a:4222", "nats://u:p@b:4222", "c:4222"]
        );
    }

    #[test]
    fn stream_replicas_come_from_the_environment() {
        assert_eq!(Config::default().stream_replicas, 1);
        let c = Config::from_env_map(env(&[("GRADEFLOW_STREAM_REPLICAS", " 3 ")])).unwrap();
        assert_eq!(c.stream_replicas, 3);
    }

    #[test]
    fn stream_placement_comes_from_the_environment() {
        assert_eq!(Config::default().stream_cluster, None);
        assert!(Config::default().stream_tags.is_empty());
        let c = Config::from_env_map(env(&[
            ("GRADEFLOW_STREAM_CLUSTER", " trung-uong "),
            ("GRADEFLOW_STREAM_TAGS", "p01, ssd,,"),
        ]))
        .unwrap();
        assert_eq!(c.stream_cluster.as_deref(), Some("trung-uong"));
        assert_eq!(c.stream_tags, vec!["p01".to_owned(), "ssd".to_owned()]);
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = Config::from_env_map(env(&[
            ("GRADEFLOW_PREFIX", "t_42"),
            ("GRADEFLOW_NATS_URL", "nats://a:4222, nats://b:4222"),
            ("GRADEFLOW_DATA_DIR", "/var/lib/gradeflow"),
            ("GRADEFLOW_DATABASE_URL", "postgres://u:p@db/gradeflow"),
            ("GRADEFLOW_HTTP_ADDR", "0.0.0.0:9000"),
            ("GRADEFLOW_LOG_FORMAT", "JSON"),
            ("GRADEFLOW_SHUTDOWN_GRACE", "500ms"),
            ("GRADEFLOW_MODEL_CACHE", " 4096 "),
            ("GRADEFLOW_DB_POOL", "3"),
            ("RUST_LOG", "debug,sqlx=warn"),
            ("OTEL_SERVICE_NAME", "gradeflow-approval"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("UNRELATED", "ignored"),
        ]))
        .unwrap();
        assert_eq!(c.prefix(), "t_42");
        assert_eq!(c.nats_url, "nats://a:4222, nats://b:4222");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/gradeflow"));
        assert_eq!(
            c.database_url.as_deref(),
            Some("postgres://u:p@db/gradeflow")
        );
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_grace, Duration::from_millis(500));
        assert_eq!(c.model_cache, 4096);
        assert_eq!(c.db_pool, 3);
        assert_eq!(c.log_filter, "debug,sqlx=warn");
        assert_eq!(c.service_name, "gradeflow-approval");
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn overrides_win_over_environment() {
        let c = Config::from_env_map(env(&[
            ("GRADEFLOW_PREFIX", "from_env"),
            ("GRADEFLOW_HTTP_ADDR", "0.0.0.0:9000"),
        ]))
        .unwrap()
        .with_overrides(&Overrides {
            prefix: Some("from_flag".into()),
            database_url: Some("postgresql://db/x".into()),
            // Empty means "not given": the environment's value stays.
            http_addr: Some(String::new()),
            data_dir: Some(PathBuf::from("/tmp/gf")),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.prefix(), "from_flag");
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.database_url.as_deref(), Some("postgresql://db/x"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/gf"));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let c = Config::from_env_map(env(&[
            ("GRADEFLOW_PREFIX", ""),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
        ]))
        .unwrap();
        assert_eq!(c.prefix(), "gradeflow");
        assert_eq!(c.otlp_endpoint, None);
    }

    #[test]
    fn traces_endpoint_wins_and_sdk_disabled_switches_export_off() {
        let both = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]);
        let c = Config::from_env_map(both.clone()).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://traces:4317"));

        let mut disabled = both;
        disabled.push(("OTEL_SDK_DISABLED".into(), "TRUE".into()));
        assert_eq!(Config::from_env_map(disabled).unwrap().otlp_endpoint, None);
    }

    #[test]
    fn a_bad_prefix_is_refused_naming_the_variable() {
        let e = Config::from_env_map(env(&[("GRADEFLOW_PREFIX", "a.b")])).unwrap_err();
        assert!(matches!(&e, ConfigError::Prefix { origin, .. } if origin == "GRADEFLOW_PREFIX"));
        assert!(e.to_string().contains("GRADEFLOW_PREFIX"));
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("GRADEFLOW_HTTP_ADDR", "localhost:8080"),
            ("GRADEFLOW_HTTP_ADDR", "127.0.0.1"),
            ("GRADEFLOW_NATS_URL", "http://a:4222"),
            ("GRADEFLOW_NATS_URL", "nats://a:4222,,nats://b"),
            ("GRADEFLOW_DATABASE_URL", "sqlite://x.db"),
            ("GRADEFLOW_DATABASE_URL", "postgres://"),
            ("GRADEFLOW_LOG_FORMAT", "yaml"),
            ("GRADEFLOW_SHUTDOWN_GRACE", "soon"),
            ("GRADEFLOW_SHUTDOWN_GRACE", "10h"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_SERVICE_NAME", "a\nb"),
            ("GRADEFLOW_STREAM_REPLICAS", "0"),
            ("GRADEFLOW_STREAM_REPLICAS", "6"),
            ("GRADEFLOW_STREAM_REPLICAS", "three"),
            ("GRADEFLOW_MODEL_CACHE", "7"),
            ("GRADEFLOW_MODEL_CACHE", "lots"),
            ("GRADEFLOW_MODEL_CACHE", "-1"),
            ("GRADEFLOW_DB_POOL", "0"),
            ("GRADEFLOW_DB_POOL", "65"),
            ("GRADEFLOW_DB_POOL", "few"),
        ];
        for (name, value) in cases {
            let result = Config::from_env_map(env(&[(name, value)]));
            assert!(result.is_err(), "{name}={value:?} was accepted");
        }
    }

    #[test]
    fn grpc_and_http_protobuf_are_accepted_when_export_is_on() {
        let e = Config::from_env_map(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .unwrap_err();
        assert!(matches!(e, ConfigError::OtlpProtocol { .. }));
        // Without an endpoint the protocol does not matter.
        Config::from_env_map(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap();
        let c = Config::from_env_map(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap();
        assert_eq!(c.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        let c = Config::from_env_map(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4318/custom"));
        let c = Config::from_env_map(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap();
        assert_eq!(c.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4317"));
    }

    #[test]
    fn durations_parse_in_several_units() {
        assert_eq!(parse_duration("t", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("t", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("t", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration("t", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_duration("t", "-1s").is_err());
        assert!(parse_duration("t", "s").is_err());
    }

    #[test]
    fn store_url_is_one_sqlite_file_per_service_by_default() {
        let c = Config {
            data_dir: PathBuf::from("/srv/data"),
            ..Config::default()
        };
        assert_eq!(
            c.store_url("approval"),
            "sqlite:///srv/data/approval.db?mode=rwc"
        );
        assert!(!c.uses_postgres());

        let odd = Config {
            data_dir: PathBuf::from("/tmp/a?b#c%d"),
            ..Config::default()
        };
        assert_eq!(
            odd.store_url("submission"),
            "sqlite:///tmp/a%3Fb%23c%25d/submission.db?mode=rwc"
        );
    }

    #[test]
    fn store_url_is_the_database_url_on_postgres() {
        let c = Config {
            database_url: Some("postgres://u:p@db:5432/gradeflow".into()),
            ..Config::default()
        };
        assert_eq!(c.store_url("approval"), "postgres://u:p@db:5432/gradeflow");
        assert!(c.uses_postgres());
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let c = Config {
            database_url: Some("postgres://user:s3cr@t@db:5432/gf?sslmode=disable".into()),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("postgres://user:***@db:5432/gf?sslmode=disable"),
            "{shown}"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("postgres://user@db/x"), "postgres://user@db/x");
    }

    #[test]
    fn telemetry_config_follows_the_config() {
        let c = Config {
            service_name: "svc".into(),
            otlp_endpoint: Some("http://c:4317".into()),
            log_format: LogFormat::Json,
            log_filter: "warn".into(),
            ..Config::default()
        };
        let t = c.telemetry();
        assert_eq!(t.service_name, "svc");
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://c:4317"));
        assert_eq!(t.log_format, LogFormat::Json);
        assert_eq!(t.log_filter, "warn");
    }
}
