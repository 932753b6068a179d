//! Where an auditor reads from: the services' stores (SQLite files under the
//! data dir, or the schemas `submission`, `appraisal`, `approval`,
//! `progress` of one PostgreSQL database — the layout `gradeflow up` and
//! `gradeflow <service>` create, see `Config::store_url`), the public key
//! registry (`<data_dir>/keys/registry.json` unless told otherwise), and the
//! audit stream on NATS.
//!
//! Opening never creates anything: a SQLite file or a PostgreSQL schema that
//! does not hold an event store is reported as missing, rather than created
//! empty by the store's migrations (which would then "verify" perfectly).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradeflow_approval_server::keys::{parse_registry, RegistryEntry, REGISTRY_FILE};
use gradeflow_approval_server::record::TrustedKey;
use gradeflow_approval_server::KeyError;
use gradeflow_eventstore::{Store, StoreError, StoreOptions};
use gradeflow_kit::Config;
use gradeflow_proto::{CycleId, DossierId};
use sqlx::{Connection, PgConnection};

/// The workflow services, whose stores are the system of record, in the
/// order ties are broken when their events are merged by time.
pub const WORKFLOW_SERVICES: [&str; 3] = ["submission", "appraisal", "approval"];

/// The progress service: a read model of copies, disposable.
pub const PROGRESS: &str = "progress";

/// The approval service: its store holds the decision log.
pub const APPROVAL: &str = "approval";

/// Every store `verify` checks (progress only when it exists).
pub const ALL_SERVICES: [&str; 4] = ["submission", "appraisal", "approval", "progress"];

/// Why an audit could not be run at all (as opposed to the problems it
/// finds, which are part of its report).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A store the command needs is not where the configuration says.
    #[error("no {service} event store at {location}")]
    MissingStore {
        /// The service.
        service: String,
        /// The file or schema looked for.
        location: String,
    },
    /// Checking whether a PostgreSQL schema holds a store failed.
    #[error("cannot look for the {service} schema in PostgreSQL")]
    Probe {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// Opening a store failed.
    #[error("cannot open the {service} event store")]
    Open {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Reading a store failed.
    #[error("cannot read the {service} event store")]
    Read {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The key registry file could not be read.
    #[error("cannot read the key registry {path}")]
    Registry {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key registry is not a registry.
    #[error("the key registry {path} is not valid")]
    BadRegistry {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// NATS could not be reached.
    #[error("cannot reach NATS at {url}")]
    Nats {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The audit stream could not be read.
    #[error("cannot read the audit stream {stream}: {detail}")]
    Stream {
        /// The stream.
        stream: String,
        /// What went wrong.
        detail: String,
    },
    /// A check running on a task of its own was cancelled before it
    /// finished (the runtime is shutting down).
    #[error("the {what} check was cancelled before it finished")]
    Interrupted {
        /// The store or check.
        what: String,
    },
    /// The cycle asked for is not in the stores (at the time asked).
    #[error("no review cycle {0} in the stores")]
    UnknownCycle(CycleId),
    /// The organisation asked for (an id or a code) is not in the registry.
    #[error("no organisation `{0}` in the registry")]
    UnknownOrg(String),
    /// The dossier asked for has no event in any store.
    #[error("no event of dossier {0} in any store")]
    UnknownDossier(DossierId),
    /// An export file could not be read or written.
    #[error("cannot {action} the export file {path}")]
    ExportFile {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a report or an export failed.
    #[error("cannot encode {what} as JSON")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl AuditError {
    /// A read failure of `service`'s store.
    pub fn read(service: &str) -> impl FnOnce(StoreError) -> AuditError + '_ {
        move |source| AuditError::Read {
            service: service.to_owned(),
            source,
        }
    }
}

/// Where one service's store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    /// The service.
    pub service: String,
    /// The store URL (`sqlite://…` or `postgres://…`).
    pub url: String,
    /// The PostgreSQL schema, for PostgreSQL.
    pub schema: Option<String>,
    /// The SQLite file, for SQLite (checked to exist before opening).
    pub file: Option<PathBuf>,
}

impl StoreLocation {
    /// Where `config` puts `service`'s store: `<data_dir>/<service>.db`, or
    /// the schema `<service>` of `config.database_url`.
    pub fn of(config: &Config, service: &str) -> Self {
        match &config.database_url {
            Some(url) => StoreLocation {
                service: service.to_owned(),
                url: url.clone(),
                schema: Some(service.to_owned()),
                file: None,
            },
            None => StoreLocation {
                service: service.to_owned(),
                url: config.store_url(service),
                schema: None,
                file: Some(config.data_dir.join(format!("{service}.db"))),
            },
        }
    }

    /// A readable description (never a password).
    pub fn describe(&self) -> String {
        match (&self.file, &self.schema) {
            (Some(file), _) => file.display().to_string(),
            (None, Some(schema)) => format!(
                "schema `{schema}` of {}",
                gradeflow_kit::config::redact_url(&self.url)
            ),
            (None, None) => gradeflow_kit::config::redact_url(&self.url),
        }
    }

    /// Whether an event store is there, without creating anything.
    async fn exists(&self) -> Result<bool, AuditError> {
        if let Some(file) = &self.file {
            return Ok(file.is_file());
        }
        let Some(schema) = &self.schema else {
            return Ok(true);
        };
        let probe = |source| AuditError::Probe {
            service: self.service.clone(),
            source,
        };
        let mut conn = PgConnection::connect(&self.url).await.map_err(probe)?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'events')",
        )
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .map_err(probe)?;
        // Closing is a courtesy to the server; the answer is in hand.
        let _ = conn.close().await;
        Ok(exists)
    }
}

/// A deployment as an auditor sees it: its configuration (data dir,
/// database URL, NATS URL, prefix) and the key registry to trust.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The deployment's configuration.
    pub config: Config,
    /// The key registry file.
    pub registry: PathBuf,
}

impl Sources {
    /// The deployment `config` describes, trusting its own registry
    /// (`<data_dir>/keys/registry.json`).
    pub fn new(config: Config) -> Self {
        let registry = config.data_dir.join("keys").join(REGISTRY_FILE);
        Self { config, registry }
    }

    /// The same deployment, trusting the registry in `path` instead (e.g. a
    /// copy the auditor obtained separately).
    pub fn with_registry(mut self, path: impl Into<PathBuf>) -> Self {
        self.registry = path.into();
        self
    }

    /// Where `service`'s store is.
    pub fn location(&self, service: &str) -> StoreLocation {
        StoreLocation::of(&self.config, service)
    }

    /// Opens the stores of `required` (an error when one is missing) and of
    /// `optional` (skipped when missing).
    pub async fn open(&self, required: &[&str], optional: &[&str]) -> Result<Stores, AuditError> {
        let mut stores = Stores { open: Vec::new() };
        for (service, needed) in required
            .iter()
            .map(|s| (*s, true))
            .chain(optional.iter().map(|s| (*s, false)))
        {
            match self.open_one(service, needed).await {
                Ok(Some(store)) => stores.open.push((service.to_owned(), store)),
                Ok(None) => {}
                Err(e) => {
                    stores.close().await;
                    return Err(e);
                }
            }
        }
        Ok(stores)
    }

    async fn open_one(&self, service: &str, needed: bool) -> Result<Option<Store>, AuditError> {
        let location = self.location(service);
        if !location.exists().await? {
            return if needed {
                Err(AuditError::MissingStore {
                    service: service.to_owned(),
                    location: location.describe(),
                })
            } else {
                Ok(None)
            };
        }
        let opts = StoreOptions {
            schema: location.schema.clone(),
            pool_size: 2,
            ..StoreOptions::default()
        };
        Store::connect(&location.url, opts)
            .await
            .map(Some)
            .map_err(|source| AuditError::Open {
                service: service.to_owned(),
                source,
            })
    }

    /// The trusted keys of the registry file (none when it does not exist:
    /// every record then names its unknown key).
    pub fn keys(&self) -> Result<Keys, AuditError> {
        Keys::load(&self.registry)
    }
}

/// The stores an audit opened, by service. Close them when done.
#[derive(Debug)]
pub struct Stores {
    open: Vec<(String, Store)>,
}

impl Stores {
    /// Stores already open (for tests and embedding), by service.
    pub fn from_open(open: Vec<(String, Store)>) -> Self {
        Self { open }
    }

    /// `service`'s store, when it was opened.
    pub fn get(&self, service: &str) -> Option<&Store> {
        self.open
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, store)| store)
    }

    /// The open stores, in the order they were opened.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Store)> {
        self.open.iter().map(|(s, store)| (s.as_str(), store))
    }

    /// `service`'s store, or the error that it is missing.
    pub fn require(&self, service: &str) -> Result<&Store, AuditError> {
        self.get(service).ok_or_else(|| AuditError::MissingStore {
            service: service.to_owned(),
            location: "(not opened)".to_owned(),
        })
    }

    /// Closes every store (their writer tasks had nothing to write).
    pub async fn close(self) {
        for (_, store) in self.open {
            store.close().await;
        }
    }
}

/// The public keys an auditor trusts: the registry's entries as written,
/// and the same decoded for signature checks.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Where they were read from.
    pub path: PathBuf,
    /// Whether the file was absent (then there are no keys).
    pub missing: bool,
    /// The registry's entries, by key id.
    pub entries: BTreeMap<String, RegistryEntry>,
    /// The decoded keys with their orgs, by key id.
    pub trusted: BTreeMap<String, TrustedKey>,
}

impl Keys {
    /// Reads a `registry.json`.
    pub fn load(path: &Path) -> Result<Keys, AuditError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keys {
                    path: path.to_owned(),
                    missing: true,
                    ..Keys::default()
                })
            }
            Err(source) => {
                return Err(AuditError::Registry {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Keys::parse(path, &text)
    }

    /// Reads the text of a `registry.json` (or an export's `keys`).
    pub fn parse(path: &Path, text: &str) -> Result<Keys, AuditError> {
        let bad = |source| AuditError::BadRegistry {
            path: path.to_owned(),
            source,
        };
        let trusted = parse_registry(text).map_err(bad)?;
        // parse_registry has just read the same text into these entries.
        let entries: BTreeMap<String, RegistryEntry> =
            serde_json::from_str(text).map_err(|source| {
                bad(KeyError::BadRegistry {
                    path: path.to_owned(),
                    source,
                })
            })?;
        Ok(Keys {
            path: path.to_owned(),
            missing: false,
            entries,
            trusted,
        })
    }
}
