//! Raw baselines for benchmarks: what the database itself does with the same
//! rows when nothing of the store's machinery (writer task, version checks,
//! hash chain, inbox) is in the way. `gradeflow bench store` prints the
//! store's figures beside these, measured in the same run on the same server,
//! so a figure is read as a ratio of the hardware's limit and not in a void.
//!
//! Two kinds of INSERT baseline write the same event-shaped rows:
//!
//! * [`Store::raw_insert_baseline`]: one connection, `batch` rows per
//!   transaction, one transaction after another — with 1 row the limit of a
//!   lone caller that waits for each commit, with 1000 the ceiling of any
//!   grouping.
//! * [`Store::raw_concurrent_insert_baseline`]: `callers` independent tasks,
//!   each inserting one row per transaction and waiting for its commit before
//!   the next, on as many connections as the store's pool allows
//!   ([`Store::raw_pool_size`]) — what the database itself gives N writers
//!   that each need a durable commit, with whatever group commit the server
//!   does on its own.
//!
//! It also has the two chores of that benchmark that need SQL: naming the
//! database server, and dropping the scratch PostgreSQL schema afterwards.
//!
//! Nothing here is used by the product's own path.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::db::{on_pool, Pool};
use crate::error::StoreError;
use crate::store::{read_verify_page, verify_page_rows, Store, VerifyPage};

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

/// The rows a raw INSERT baseline writes: the event columns, shaped like the
/// events of the figure they are compared with, so that the database does
/// the same page work for both (row size, and how many different streams,
/// hence `(stream, version)` index leaves, a transaction touches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRows {
    /// Bytes of each row's payload (at least the 8 of `{"p":""}`).
    pub payload_bytes: usize,
    /// Bytes of each row's metadata (at least the 8 of `{"m":""}`).
    pub metadata_bytes: usize,
    /// How many streams the rows go round: row `n` (from 1) is version
    /// `(n - 1) / streams + 1` of stream `(n - 1) % streams`, so consecutive
    /// rows hit different streams, as the appends of that many callers do.
    pub streams: usize,
}

impl RawRows {
    fn payload(&self) -> String {
        json_of("p", self.payload_bytes)
    }

    fn metadata(&self) -> String {
        json_of("m", self.metadata_bytes)
    }

    /// The stream and version of row `position` (from 1).
    fn stream_version(&self, position: i64) -> (String, i64) {
        let streams = i64::try_from(self.streams.max(1)).unwrap_or(i64::MAX);
        let n = position - 1;
        // As long as a dossier stream name (`dossier-<uuid>`), so index
        // entries are as large as the real ones.
        let stream = format!(
            "dossier-{}",
            uuid::Uuid::from_u128(u128::try_from(n % streams).unwrap_or(0))
        );
        (stream, n / streams + 1)
    }
}

/// `{"<key>":"xxx…"}`, `bytes` long (at least the 8 bytes of `{"k":""}`).
fn json_of(key: &str, bytes: usize) -> String {
    format!("{{\"{key}\":\"{}\"}}", "x".repeat(bytes.saturating_sub(8)))
}

/// Creates the scratch table `bench_raw` (dropping any left over) from the
/// `events` table itself, so it cannot drift from it: the same columns and
/// types, the primary key, `event_id UNIQUE`, the `(stream, version)` unique
/// constraint and the version check. Only the immutability triggers are
/// left out (they fire on UPDATE and DELETE, never on INSERT).
async fn create_raw_table(pool: &Pool) -> Result<(), StoreError> {
    on_pool!(pool, p, Db => {
        sqlx::query("DROP TABLE IF EXISTS bench_raw").execute(p).await.map_err(db_err)?;
    });
    match pool {
        Pool::Sqlite(p) => {
            // SQLite has no `LIKE`: its own CREATE statement, renamed.
            let events: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
            )
            .fetch_one(p)
            .await
            .map_err(db_err)?;
            let create = events
                .strip_prefix("CREATE TABLE events ")
                .map(|rest| format!("CREATE TABLE bench_raw {rest}"))
                .ok_or_else(|| StoreError::Corrupt {
                    position: 0,
                    problem: format!("unexpected definition of `events`: {events}"),
                })?;
            sqlx::query(&create).execute(p).await.map_err(db_err)?;
        }
        Pool::Postgres(p) => {
            sqlx::query("CREATE TABLE bench_raw (LIKE events INCLUDING ALL)")
                .execute(p)
                .await
                .map_err(db_err)?;
        }
    }
    Ok(())
}

async fn drop_raw_table(pool: &Pool) -> Result<(), StoreError> {
    on_pool!(pool, p, Db => {
        sqlx::query("DROP TABLE IF EXISTS bench_raw").execute(p).await.map_err(db_err)?;
    });
    Ok(())
}

/// One transaction inserting the rows at `positions` into `bench_raw`, on a
/// connection of `pool`; returns after the commit. One statement, in the
/// fastest form each database has for many rows, the form the store's
/// writer uses too: a multi-row `VALUES` on SQLite, one array per column
/// `UNNEST`ed on PostgreSQL.
async fn insert_raw_rows(
    pool: &Pool,
    positions: std::ops::Range<i64>,
    shape: &RawRows,
    payload: &str,
    metadata: &str,
) -> Result<(), StoreError> {
    const COLUMNS: &str = "position, stream, version, event_id, kind, payload, metadata, \
                           recorded_at, prev_hash, hash";
    let kind = "self_review_submitted.v1";
    let recorded_at = "2026-11-26T00:00:00.000000Z";
    let (prev_hash, hash) = ("0".repeat(64), "f".repeat(64));
    match pool {
        Pool::Sqlite(p) => {
            let mut tx = p.begin().await.map_err(db_err)?;
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO bench_raw ({COLUMNS}) "
            ));
            qb.push_values(positions, |mut b, pos| {
                let (stream, version) = shape.stream_version(pos);
                b.push_bind(pos)
                    .push_bind(stream)
                    .push_bind(version)
                    .push_bind(uuid::Uuid::now_v7().to_string())
                    .push_bind(kind)
                    .push_bind(payload.to_owned())
                    .push_bind(metadata.to_owned())
                    .push_bind(recorded_at)
                    .push_bind(prev_hash.clone())
                    .push_bind(hash.clone());
            });
            qb.build().execute(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
        Pool::Postgres(p) => {
            let n = usize::try_from(positions.end - positions.start).unwrap_or(0);
            let (streams, versions): (Vec<String>, Vec<i64>) = positions
                .clone()
                .map(|pos| shape.stream_version(pos))
                .unzip();
            let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
            let mut tx = p.begin().await.map_err(db_err)?;
            sqlx::query::<sqlx::Postgres>(&format!(
                "INSERT INTO bench_raw ({COLUMNS}) SELECT * FROM UNNEST(\
                 $1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], \
                 $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[])"
            ))
            .bind(positions.collect::<Vec<i64>>())
            .bind(streams)
            .bind(versions)
            .bind(ids)
            .bind(vec![kind; n])
            .bind(vec![payload; n])
            .bind(vec![metadata; n])
            .bind(vec![recorded_at; n])
            .bind(vec![prev_hash.as_str(); n])
            .bind(vec![hash.as_str(); n])
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
    }
    Ok(())
}

/// The positions the `caller`-th of `callers` writes out of `1..=rows`:
/// `caller + 1`, then every `callers`-th after it.
fn caller_positions(caller: usize, callers: usize, rows: usize) -> impl Iterator<Item = i64> {
    (caller as i64 + 1..=rows as i64).step_by(callers.max(1))
}

impl Store {
    /// Inserts `rows` rows shaped like events (see [`RawRows`]) into a
    /// scratch table built like `events`, `batch` rows per
    /// INSERT (see `insert_raw_rows`) and one transaction per batch, one after another on
    /// one connection — the best the database does for this data — then
    /// drops the table.
    pub async fn raw_insert_baseline(
        &self,
        rows: usize,
        batch: usize,
        shape: RawRows,
    ) -> Result<RawRate, StoreError> {
        let pool: &Pool = self.pool();
        let batch = batch.clamp(1, 3_000);
        let (payload, metadata) = (shape.payload(), shape.metadata());
        create_raw_table(pool).await?;
        let started = Instant::now();
        let mut position: i64 = 0;
        while (position as usize) < rows {
            let n = batch.min(rows - position as usize) as i64;
            insert_raw_rows(
                pool,
                position + 1..position + n + 1,
                &shape,
                &payload,
                &metadata,
            )
            .await?;
            position += n;
        }
        let elapsed = started.elapsed();
        drop_raw_table(pool).await?;
        Ok(RawRate {
            rows: rows as u64,
            elapsed,
        })
    }

    /// The same rows as [`Store::raw_insert_baseline`] with one row per
    /// transaction, but written by `callers` concurrent tasks: each inserts
    /// its share of the `rows` one row per transaction and waits for that
    /// commit before its next row, as independent writers that each need a
    /// durable commit would. They share the store's pool, so at most
    /// [`Store::raw_pool_size`] transactions run at once; the others wait
    /// for a connection. Whatever the server groups on its own (PostgreSQL
    /// flushes the WAL of concurrent commits together; SQLite takes one
    /// writer at a time) is in the figure. Drops the table afterwards.
    pub async fn raw_concurrent_insert_baseline(
        &self,
        rows: usize,
        callers: usize,
        shape: RawRows,
    ) -> Result<RawRate, StoreError> {
        let pool: &Pool = self.pool();
        let callers = callers.max(1);
        let texts = std::sync::Arc::new((shape.payload(), shape.metadata()));
        create_raw_table(pool).await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..callers {
            let pool = pool.clone();
            let texts = texts.clone();
            let positions = caller_positions(caller, callers, rows);
            tasks.spawn(async move {
                for pos in positions {
                    insert_raw_rows(&pool, pos..pos + 1, &shape, &texts.0, &texts.1).await?;
                }
                Ok::<(), StoreError>(())
            });
        }
        let mut outcome = Ok(());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        let elapsed = started.elapsed();
        outcome?;
        drop_raw_table(pool).await?;
        Ok(RawRate {
            rows: rows as u64,
            elapsed,
        })
    }

    /// Connections the store's pool opens at most: how many of
    /// [`Store::raw_concurrent_insert_baseline`]'s callers write at once.
    pub fn raw_pool_size(&self) -> u32 {
        match self.pool() {
            Pool::Sqlite(p) => p.options().get_max_connections(),
            Pool::Postgres(p) => p.options().get_max_connections(),
        }
    }

    /// Reads every event row and computes one SHA-256 per row over every
    /// column the chain hash covers (`EVENT_COLUMNS`: position,
    /// stream, version, event id, kind, payload, metadata, recorded_at,
    /// prev_hash, hash), nothing else: the floor under any chain
    /// verification, which must read and hash the same bytes. It reads with
    /// [`Store::verify`]'s own page reader, so only the checking differs:
    /// the same query and page size, texts borrowed from the driver's rows
    /// (not copied), the next page read on a task of its own while the
    /// current one is hashed.
    pub async fn raw_read_hash_baseline(&self) -> Result<RawRate, StoreError> {
        /// Hashes each row's ten columns; returns how many rows.
        fn hash_rows<R>(rows: &[R]) -> Result<u64, sqlx::Error>
        where
            R: sqlx::Row,
            usize: sqlx::ColumnIndex<R>,
            for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            for row in rows {
                let position: i64 = row.try_get(0)?;
                let version: i64 = row.try_get(2)?;
                let mut h = Sha256::new();
                h.update(position.to_le_bytes());
                h.update(version.to_le_bytes());
                // The eight text columns.
                for column in [1, 3, 4, 5, 6, 7, 8, 9] {
                    let text: &str = row.try_get(column)?;
                    h.update(text.as_bytes());
                }
                std::hint::black_box(h.finalize());
            }
            Ok(rows.len() as u64)
        }

        let pool = self.pool().clone();
        let page_rows = verify_page_rows(&pool);
        let started = Instant::now();
        let mut rows: u64 = 0;
        let mut page = read_verify_page(pool.clone(), 0, page_rows).await?;
        while let Some(after) = page.last_position()? {
            let next = tokio::spawn(read_verify_page(pool.clone(), after, page_rows));
            rows += match &page {
                VerifyPage::Sqlite(p) => hash_rows(p),
                VerifyPage::Postgres(p) => hash_rows(p),
            }
            .map_err(db_err)?;
            page = match next.await {
                Ok(next) => next?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(db_err(sqlx::Error::Io(std::io::Error::other(e)))),
            };
        }
        Ok(RawRate {
            rows,
            elapsed: started.elapsed(),
        })
    }

    /// A PostgreSQL run-time setting as the store's own connections have it
    /// (`current_setting`), e.g. `plan_cache_mode`; `None` on SQLite, or for
    /// a setting PostgreSQL does not know.
    pub async fn raw_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.pool() {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(p) => sqlx::query_scalar("SELECT current_setting($1, true)")
                .bind(name)
                .fetch_one(p)
                .await
                .map_err(db_err),
        }
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

    #[test]
    fn concurrent_callers_write_every_position_once() {
        for (callers, rows) in [(16, 20_000), (256, 300), (3, 2), (1, 5)] {
            let mut all: Vec<i64> = (0..callers)
                .flat_map(|c| caller_positions(c, callers, rows))
                .collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (1..=rows as i64).collect::<Vec<_>>(),
                "{callers} callers"
            );
        }
    }

    #[tokio::test]
    async fn the_concurrent_baseline_inserts_every_row_and_leaves_the_log_alone() {
        let f = gradeflow_testkit::fresh_sqlite().expect("a scratch SQLite file");
        let store = Store::connect(&f.url, crate::StoreOptions::default())
            .await
            .expect("opens");
        assert_eq!(store.raw_pool_size(), 8);
        let rate = store
            .raw_concurrent_insert_baseline(500, 16, SHAPE)
            .await
            .expect("inserts");
        assert_eq!(rate.rows, 500);
        assert!(rate.per_second() > 0.0);
        // The scratch table is gone afterwards, so it can run again.
        let again = store
            .raw_concurrent_insert_baseline(40, 3, SHAPE)
            .await
            .expect("inserts again");
        assert_eq!(again.rows, 40);
        assert_eq!(store.head().await.expect("reads the head"), None);
        store.close().await;
    }

    const SHAPE: RawRows = RawRows {
        payload_bytes: 600,
        metadata_bytes: 300,
        streams: 7,
    };

    #[test]
    fn raw_rows_have_the_requested_sizes() {
        assert_eq!(SHAPE.payload().len(), 600);
        assert_eq!(SHAPE.metadata().len(), 300);
        assert_eq!(json_of("p", 3), r#"{"p":""}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&SHAPE.metadata()).is_ok());
    }

    #[tokio::test]
    async fn the_scratch_table_refuses_what_events_refuses() {
        let f = gradeflow_testkit::fresh_sqlite().expect("a scratch SQLite file");
        let store = Store::connect(&f.url, crate::StoreOptions::default())
            .await
            .expect("opens");
        let pool = store.pool();
        create_raw_table(pool).await.expect("creates");
        let (payload, metadata) = (SHAPE.payload(), SHAPE.metadata());
        insert_raw_rows(pool, 1..8, &SHAPE, &payload, &metadata)
            .await
            .expect("seven rows on seven streams");
        // Another position and event id, but row 1's stream and version.
        let (stream, version) = SHAPE.stream_version(1);
        let Pool::Sqlite(p) = pool else {
            panic!("a SQLite pool")
        };
        let err = sqlx::query(
            "INSERT INTO bench_raw (position, stream, version, event_id, kind, payload, \
             metadata, recorded_at, prev_hash, hash) \
             VALUES (100, $1, $2, 'other', 'k', '{}', '{}', 't', 'p', 'h')",
        )
        .bind(&stream)
        .bind(version)
        .execute(p)
        .await
        .expect_err("a second (stream, version) row is refused");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        // Version 0 is refused too, like in `events`.
        let err = sqlx::query(
            "INSERT INTO bench_raw (position, stream, version, event_id, kind, payload, \
             metadata, recorded_at, prev_hash, hash) \
             VALUES (101, 's', 0, 'other2', 'k', '{}', '{}', 't', 'p', 'h')",
        )
        .execute(p)
        .await
        .expect_err("version 0 is refused");
        assert!(err.to_string().contains("CHECK"), "{err}");
        drop_raw_table(pool).await.expect("drops");
        store.close().await;
    }

    #[test]
    fn raw_rows_go_round_the_streams_with_unique_versions() {
        let shape = RawRows {
            streams: 3,
            ..SHAPE
        };
        let rows: Vec<(String, i64)> = (1..=7).map(|p| shape.stream_version(p)).collect();
        let names: std::collections::HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(rows[0].0, rows[3].0);
        assert_eq!(rows[0].0, rows[6].0);
        assert_ne!(rows[0].0, rows[1].0);
        assert_eq!(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![1, 1, 1, 2, 2, 2, 3]
        );
        // As long as `dossier-<uuid>`.
        assert_eq!(rows[0].0.len(), "dossier-".len() + 36);
        assert_eq!(
            RawRows {
                streams: 0,
                ..SHAPE
            }
            .stream_version(5)
            .1,
            5
        );
    }
}
