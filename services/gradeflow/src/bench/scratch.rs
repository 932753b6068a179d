//! The scratch places one benchmark run writes to, made fresh and removed at
//! the end (best effort): a SQLite file in a directory of the user's choice,
//! a `bench_<id>` schema in PostgreSQL, and a NATS prefix of its own (its
//! streams are deleted with their consumers).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream;
use gradeflow_eventstore::raw::BENCH_SCHEMA_PREFIX;
use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_proto::Names;

use super::transport::raw_stream_name;

/// A fresh database for one run.
#[derive(Debug)]
pub enum ScratchDb {
    /// A new SQLite file (and its `-wal`/`-shm` companions).
    Sqlite(PathBuf),
    /// A new schema in a PostgreSQL database.
    Postgres(String),
}

impl ScratchDb {
    /// A SQLite file `gradeflow-bench-<id>.db` in `dir`.
    pub fn sqlite(dir: &Path, id: &str) -> Self {
        ScratchDb::Sqlite(dir.join(format!("gradeflow-bench-{id}.db")))
    }

    /// A schema `bench_<id>`.
    pub fn postgres(id: &str) -> Self {
        ScratchDb::Postgres(format!("{BENCH_SCHEMA_PREFIX}{id}"))
    }

    /// Opens the store there with the default options (those of a service);
    /// `database_url` is the PostgreSQL database holding the schema.
    pub async fn open(&self, database_url: &str) -> anyhow::Result<Store> {
        let (url, opts) = match self {
            ScratchDb::Sqlite(path) => (
                format!("sqlite://{}?mode=rwc", path.display()),
                StoreOptions::default(),
            ),
            ScratchDb::Postgres(schema) => (
                database_url.to_owned(),
                StoreOptions {
                    schema: Some(schema.clone()),
                    ..StoreOptions::default()
                },
            ),
        };
        Store::connect(&url, opts)
            .await
            .with_context(|| format!("opening the scratch event store in {self}"))
    }

    /// Closes `store` and removes the scratch database; failures are only
    /// reported on stderr.
    pub async fn remove(&self, store: &Store) {
        if let ScratchDb::Postgres(schema) = self {
            if let Err(e) = store.drop_bench_schema().await {
                eprintln!("gradeflow bench: could not drop the schema {schema}: {e}");
            }
        }
        store.close().await;
        if let ScratchDb::Sqlite(path) = self {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let file = PathBuf::from(file);
                if let Err(e) = std::fs::remove_file(&file) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("gradeflow bench: could not remove {}: {e}", file.display());
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for ScratchDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScratchDb::Sqlite(path) => write!(f, "{}", path.display()),
            ScratchDb::Postgres(schema) => write!(f, "schema {schema}"),
        }
    }
}

/// Deletes the prefix's streams (events, audit, dead letters and the raw
/// baseline's) and with them their consumers; best effort (one that is not
/// there is skipped).
pub async fn remove_streams(js: &jetstream::Context, names: &Names) {
    for stream in [
        names.events_stream(),
        names.audit_stream(),
        names.dead_letter_stream(),
        raw_stream_name(names),
    ] {
        if js.get_stream(&stream).await.is_err() {
            continue;
        }
        if let Err(e) = js.delete_stream(&stream).await {
            eprintln!("gradeflow bench: could not delete the stream {stream}: {e}");
        }
    }
}
