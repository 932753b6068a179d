//! Test support (dev-only): reach the NATS and PostgreSQL servers the machine
//! runs, and give each test its own subject prefix, its own PostgreSQL
//! database and its own SQLite file, so tests run in parallel against shared
//! servers without seeing each other.
//!
//! The servers are the real ones (`scripts/services.sh` installs and starts
//! them on a fresh machine); nothing here stands in for them.
//!
//! [`late`] rewrites a log of stored events as though some registrations had
//! been recorded late ([`registered_late`]), for the services' tests of
//! events that come before their dossier's registration.

pub mod late;

pub use late::{about, registered_late, Late};

use std::path::PathBuf;
use std::time::Duration;

use gradeflow_proto::Names;
use sqlx::{Connection, Executor, PgConnection};

/// NATS URL for tests: `GRADEFLOW_TEST_NATS_URL`, else the local server.
pub fn nats_url() -> String {
    std::env::var("GRADEFLOW_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// URL of the PostgreSQL server's maintenance database for tests:
/// `GRADEFLOW_TEST_PG_URL`, else `postgres://postgres@127.0.0.1:5432/test`.
pub fn pg_admin_url() -> String {
    std::env::var("GRADEFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A prefix no other test uses: `t<12 hex>`.
pub fn fresh_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// [`Names`] under a fresh prefix.
pub fn fresh_names() -> Names {
    // A fresh prefix is always legal.
    Names::new(fresh_prefix()).unwrap_or_default()
}

/// Connects to the test NATS server, retrying briefly while it starts.
pub async fn nats() -> anyhow::Result<async_nats::Client> {
    let url = nats_url();
    let mut last = None;
    for _ in 0..50 {
        match async_nats::connect(&url).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("cannot reach NATS at {url}: {last:?}"))
}

/// A PostgreSQL database created for one test; dropped (best effort) by
/// [`PgDatabase::drop_db`]. Leftovers are harmless: names are unique.
#[derive(Debug, Clone)]
pub struct PgDatabase {
    /// The database name.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
}

impl PgDatabase {
    /// Drops the database (forcing out connections).
    pub async fn drop_db(&self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&pg_admin_url()).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

/// Creates a fresh, empty PostgreSQL database for one test.
pub async fn fresh_pg() -> anyhow::Result<PgDatabase> {
    let admin_url = pg_admin_url();
    let mut admin = PgConnection::connect(&admin_url).await?;
    let name = format!("gf_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin_url.clone());
    Ok(PgDatabase {
        url: format!("{base}/{name}"),
        name,
    })
}

/// A fresh SQLite database file in its own temporary directory, kept alive
/// as long as the returned guard.
pub struct SqliteFile {
    /// The directory (deleted on drop).
    pub dir: tempfile::TempDir,
    /// The file's path.
    pub path: PathBuf,
    /// A URL that creates and opens it.
    pub url: String,
}

/// Creates a fresh SQLite database location.
pub fn fresh_sqlite() -> anyhow::Result<SqliteFile> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    Ok(SqliteFile { dir, path, url })
}
