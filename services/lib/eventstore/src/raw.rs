//! Raw baselines for benchmarks: what the database itself does with the same
//! rows when nothing of the store's machinery (writer task, version checks,
//! hash chain, inbox) is in the way. `gradeflow bench store` prints the
//! store's figures beside these, measured in the same run on the same server,
//! so a figure is read as a ratio of the hardware's limit and not in a void.
//!
//! It also has the two chores of that benchmark that need SQL: naming the
//! database server, and dropping the scratch PostgreSQL schema afterwards.
//!
//! Nothing here is used by the product's own path.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::db::{on_pool, Pool};
use crate::error::StoreError;
use crate::store::Store;

/// The outcome of one baseline run.
#[derive(Debug, Clone, Copy)]
pub struct RawRate {
    /// Rows handled.
    pub rows: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl RawRate {
    /// Rows per second.
    pub fn per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Database(std::sync::Arc::new(e))
}

/// The prefix of the scratch schemas [`Store::drop_bench_schema`] may drop.
pub const BENCH_SCHEMA_PREFIX: &str = "bench_";

/// Whether `schema` is a benchmark scratch schema: [`BENCH_SCHEMA_PREFIX`]
/// followed by at least one character.
fn is_bench_schema(schema: &str) -> bool {
    schema.len() > BENCH_SCHEMA_PREFIX.len() && schema.starts_with(BENCH_SCHEMA_PREFIX)
}

impl Store {
    /// Inserts `rows` rows shaped like events (the same columns, with
    /// `payload_bytes` of payload) into a scratch table, `batch` rows per
    /// multi-row INSERT and one transaction per batch — the best the
    /// database does for this data — then drops the table.
    pub async fn raw_insert_baseline(
        &self,
        rows: usize,
        batch: usize,
        payload_bytes: usize,
    ) -> Result<RawRate, StoreError> {
        let pool: &Pool = self.pool();
        let batch = batch.clamp(1, 3_000);
        let payload = format!(
            "{{\"p\":\"{}\"}}",
            "x".repeat(payload_bytes.saturating_sub(8))
        );
        let create = "CREATE TABLE IF NOT EXISTS bench_raw (position BIGINT PRIMARY KEY, \
                      stream TEXT NOT NULL, version BIGINT NOT NULL, event_id TEXT NOT NULL UNIQUE, \
                      kind TEXT NOT NULL, payload TEXT NOT NULL, metadata TEXT NOT NULL, \
                      recorded_at TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)";
        on_pool!(pool, p, Db => {
            sqlx::query("DROP TABLE IF EXISTS bench_raw").execute(p).await.map_err(db_err)?;
            sqlx::query(create).execute(p).await.map_err(db_err)?;
        });
        let started = Instant::now();
        let mut position: i64 = 0;
        while (position as usize) < rows {
            let n = batch.min(rows - position as usize);
            on_pool!(pool, p, Db => {
                let mut tx = p.begin().await.map_err(db_err)?;
                let mut qb = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO bench_raw (position, stream, version, event_id, kind, payload, \
                     metadata, recorded_at, prev_hash, hash) ",
                );
                qb.push_values(0..n, |mut b, i| {
                    let pos = position + i as i64 + 1;
                    b.push_bind(pos)
                        .push_bind(format!("dossier-{}", pos % 1000))
                        .push_bind(pos / 1000 + 1)
                        .push_bind(uuid::Uuid::now_v7().to_string())
                        .push_bind("self_review_submitted.v1")
                        .push_bind(payload.clone())
                        .push_bind("{}")
                        .push_bind("2026-11-26T00:00:00.000000Z")
                        .push_bind("0".repeat(64))
                        .push_bind("f".repeat(64));
                });
                qb.build().execute(&mut *tx).await.map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
            });
            position += n as i64;
        }
        let elapsed = started.elapsed();
        on_pool!(pool, p, Db => {
            sqlx::query("DROP TABLE IF EXISTS bench_raw").execute(p).await.map_err(db_err)?;
        });
        Ok(RawRate {
            rows: rows as u64,
            elapsed,
        })
    }

    /// Reads every event row in pages and computes SHA-256 over its stored
    /// payload and metadata: the floor under any chain verification.
    pub async fn raw_read_hash_baseline(&self) -> Result<RawRate, StoreError> {
        let pool: &Pool = self.pool();
        let started = Instant::now();
        let mut after: i64 = 0;
        let mut rows: u64 = 0;
        loop {
            let page: Vec<(i64, String, String)> = on_pool!(pool, p, Db => {
                sqlx::query_as(
                    "SELECT position, payload, metadata FROM events WHERE position > $1 \
                     ORDER BY position LIMIT 5000",
                )
                .bind(after)
                .fetch_all(p)
                .await
                .map_err(db_err)?
            });
            let Some(last) = page.last() else { break };
            after = last.0;
            for (_, payload, metadata) in &page {
                let mut h = Sha256::new();
                h.update(payload.as_bytes());
                h.update(metadata.as_bytes());
                std::hint::black_box(h.finalize());
            }
            rows += page.len() as u64;
        }
        Ok(RawRate {
            rows,
            elapsed: started.elapsed(),
        })
    }

    /// The database server and its version, for benchmark reports:
    /// `SQLite 3.x.y` or `PostgreSQL <server_version>`.
    pub async fn raw_server_version(&self) -> Result<String, StoreError> {
        match self.pool() {
            Pool::Sqlite(p) => {
                let v: String = sqlx::query_scalar("SELECT sqlite_version()")
                    .fetch_one(p)
                    .await
                    .map_err(db_err)?;
                Ok(format!("SQLite {v}"))
            }
            Pool::Postgres(p) => {
                let v: String = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(p)
                    .await
                    .map_err(db_err)?;
                Ok(format!("PostgreSQL {v}"))
            }
        }
    }

    /// How many messages `consumer` has recorded in the inbox: how far a
    /// benchmark's consumers got, counting only what committed.
    pub async fn raw_inbox_count(&self, consumer: &str) -> Result<u64, StoreError> {
        let n: i64 = on_pool!(self.pool(), p, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT COUNT(*) FROM inbox WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(p)
                .await
                .map_err(db_err)?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// PostgreSQL: drops this store's schema with everything in it, but only
    /// a benchmark scratch schema (named `bench_…`); any other schema is left
    /// alone. Returns whether a schema was dropped. SQLite: nothing to drop
    /// (the benchmark deletes its scratch file); returns `false`.
    ///
    /// The store is useless afterwards: call [`Store::close`] next.
    pub async fn drop_bench_schema(&self) -> Result<bool, StoreError> {
        let Pool::Postgres(p) = self.pool() else {
            return Ok(false);
        };
        // The schema the pool's search_path points at (set at connect from
        // `StoreOptions::schema`); `public` when none was given.
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(p)
            .await
            .map_err(db_err)?;
        let Some(schema) = schema.filter(|s| is_bench_schema(s)) else {
            return Ok(false);
        };
        // The name came through the store's schema validation (plain
        // lowercase identifier), so quoting it is enough. DROP SCHEMA does
        // not fire the events table's UPDATE/DELETE/TRUNCATE triggers.
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(p)
            .await
            .map_err(db_err)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_schemas_named_bench_something_count_as_scratch() {
        for yes in ["bench_1a2b", "bench_x"] {
            assert!(is_bench_schema(yes), "{yes}");
        }
        for no in [
            "public",
            "bench_",
            "bench",
            "approval",
            "submission_bench_1",
            "xbench_1",
        ] {
            assert!(!is_bench_schema(no), "{no}");
        }
    }
}
