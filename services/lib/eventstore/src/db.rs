//! The two sqlx backends behind one type: opening a pool (SQLite pragmas,
//! PostgreSQL schema and search_path), migrations, the raw row form of an
//! event, and the statements of the writer's transaction.
//!
//! The SQL is written once: both drivers accept `$n` placeholders, every
//! column is TEXT or a 64-bit integer, and the [`on_pool!`]/[`on_tx!`] macros
//! expand one body for each driver. Where the dialects differ (the head lock,
//! `GREATEST` vs `MAX`) the code branches explicitly.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{
    ConnectOptions, Connection, Executor, PgConnection, Postgres, QueryBuilder, Row, Sqlite,
};

use crate::canonical::{parse_timestamp, GENESIS_HASH};
use crate::error::StoreError;
use crate::model::{Backend, StoredEvent};

/// Rows a SQLite connection's worker thread may hand over before the
/// reader takes them (sqlx's `row_buffer_size`).
const SQLITE_ROW_BUFFER: usize = 512;

/// The event columns, in the order of [`EventTuple`].
pub(crate) const EVENT_COLUMNS: &str =
    "position, stream, version, event_id, kind, payload, metadata, recorded_at, prev_hash, hash";

/// One `events` row as sqlx decodes it (see [`EVENT_COLUMNS`]).
pub(crate) type EventTuple = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// The columns the outbox relay reads (see [`crate::OutboxEvent`]), in the
/// order of [`OutboxTuple`]: the event columns without the hashes.
pub(crate) const OUTBOX_COLUMNS: &str =
    "position, stream, version, event_id, kind, payload, metadata, recorded_at";

/// One `events` row as the outbox relay reads it (see [`OUTBOX_COLUMNS`]).
pub(crate) type OutboxTuple = (i64, String, i64, String, String, String, String, String);

/// Rows (or `IN` ids) per SQLite writer statement. Each size class of each
/// statement stays prepared on the writer's connection, and a prepared
/// multi-row statement holds, by estimate, about 1 KB per row (its program
/// and its bound values): with classes up to SQLite's bind limit (3,276
/// rows of 10 columns) the cached statements of the four stores held 60 MB
/// in a 150k cycle's heap profile. Up to 256 rows, every class of every
/// statement together takes about 1 MB by the same estimate, and
/// a bigger batch is one statement per 256 rows in the same transaction.
/// (PostgreSQL's statements take arrays, one parameter per column whatever
/// the number of rows.)
const SQLITE_ROWS: usize = 256;

// A full statement of 10-column rows stays within SQLite's 32,766 binds.
const _: () = assert!(SQLITE_ROWS * 10 <= 32_766);

/// `items` followed by copies of its last item up to its [`size_class`]:
/// for `IN (…)` lists, where a repeated value changes nothing.
fn padded<'a, T>(items: &'a [T]) -> impl Iterator<Item = &'a T> + 'a {
    let extra = size_class(items.len()) - items.len();
    items
        .iter()
        .chain(items.last().into_iter().cycle().take(extra))
}

/// The page cache of each pooled (reading) SQLite connection, in KiB
/// (negative: SQLite's unit for a size in KiB). SQLite's default is 2 MiB
/// per connection, and a store has up to `GRADEFLOW_DB_POOL` readers: 64
/// MiB of caches for the four stores of `gradeflow up` at the default pool,
/// full once the files outgrow them. The readers mostly scan recent
/// positions and look up single streams, pages the operating system caches
/// anyway, so a quarter of the default is enough.
const SQLITE_READER_CACHE: &str = "-512";

/// The writer's page cache: SQLite's default (2 MiB). Its inserts walk the
/// same few index pages over and over.
const SQLITE_WRITER_CACHE: &str = "-2000";

/// Ids per `IN (…)` lookup on PostgreSQL (one array parameter).
const PG_IN_CHUNK: usize = 1_000;

/// Statements the writer's connection keeps prepared (sqlx's default is
/// 100): every size class of every statement the writer runs fits.
const WRITER_STATEMENT_CACHE: usize = 256;

/// The number of rows (or ids) a SQLite writer statement is built for when
/// it carries `n`: `n` rounded up to a power of two up to 64, then to a
/// multiple of 64; callers cap `n` at [`SQLITE_ROWS`]. The statements of a
/// batch then come in ten shapes, each prepared once per connection and
/// reused from sqlx's statement cache, instead of a new shape (a new parse)
/// for nearly every batch size; the unused rows cost a NULL bind each and
/// are filtered out (an `IN` list repeats its last id). At most `n + 63`
/// and never more than twice `n`. (PostgreSQL's writer statements take one array per
/// column, so they have one shape whatever `n`.)
pub(crate) fn size_class(n: usize) -> usize {
    if n <= 64 {
        n.max(1).next_power_of_two()
    } else {
        n.div_ceil(64) * 64
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// A pool of either backend.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool and `$db` naming its
/// sqlx database type.
macro_rules! on_pool {
    ($pool:expr, $p:ident, $db:ident => $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::db::Pool::Postgres($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Runs `$body` with `$t` bound to the concrete transaction and `$db` naming
/// its sqlx database type.
macro_rules! on_tx {
    ($tx:expr, $t:ident, $db:ident => $body:expr) => {
        match $tx {
            WriteTx::Sqlite($t) => {
                #[allow(dead_code)]
                type $db = Sqlite;
                $body
            }
            WriteTx::Postgres($t) => {
                #[allow(dead_code)]
                type $db = Postgres;
                $body
            }
        }
    };
}

impl Pool {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) async fn close(&self) {
        on_pool!(self, p, Db => p.close().await)
    }
}

/// Opens the pool the URL names and runs the migrations.
pub(crate) async fn open(
    url: &str,
    schema: Option<&str>,
    pool_size: u32,
) -> Result<Pool, StoreError> {
    let connect = |e: sqlx::Error| StoreError::Connect(Arc::new(e));
    let migrate = |e: sqlx::migrate::MigrateError| StoreError::Migrate(Arc::new(e));
    let pool_size = pool_size.max(1);
    if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(connect)?
            .create_if_missing(true)
            // WAL: readers never block the writer and the writer never blocks
            // readers; one fsync per commit.
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not WAL's usual NORMAL: with NORMAL a commit survives a
            // crash of the process but the last transactions can be lost on
            // power failure. The store is the system of record and an append
            // is acknowledged to its caller — and may already be published to
            // JetStream by the outbox relay — as soon as it commits, so losing
            // it would let the log re-use positions for different events and
            // leave JetStream ahead of the store. FULL syncs the WAL on every
            // commit; group commit keeps that to one fsync per batch.
            .synchronous(SqliteSynchronous::Full)
            // Other connections (readers checkpointing, another process's
            // writer) may hold the lock briefly: wait instead of failing.
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // sqlx runs each connection on a thread of its own and hands rows
            // over a channel of this many; its default (50) makes a reader of
            // whole pages (catch-up, verify: 500–2,000 rows) wake that thread
            // every few dozen rows. A page's worth cuts the hand-offs: an
            // audit verify at 100k spent about a sixth less time in the
            // kernel. At most this many rows wait per reading connection.
            .row_buffer_size(SQLITE_ROW_BUFFER)
            .pragma("cache_size", SQLITE_READER_CACHE);
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size)
            // No liveness ping on every checkout: a SQLite connection is a
            // file handle in this process and does not go away on its own,
            // and each ping is one more round trip to the connection's
            // worker thread (two thread switches) in front of every read.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(connect)?;
        SQLITE_MIGRATOR.run(&pool).await.map_err(migrate)?;
        Ok(Pool::Sqlite(pool))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        // Plan every execution for the table as it is now. A pooled
        // connection caches its prepared statements, and after a few
        // executions PostgreSQL may settle on one generic plan for each; a
        // generic plan made while the tables were small (a sequential scan
        // with the IN list evaluated per row) is only replaced when the
        // tables' statistics change. Where autovacuum is off or behind,
        // that never happens: the 100k-dossier benchmark's progress
        // consumer fell to ~400 messages/s on its inbox lookup, and ran at
        // ~11,000/s again after a manual ANALYZE. Custom plans cost a
        // planning pass per execution (0.15–0.74 ms measured for the id and
        // inbox lookups) and always see the index.
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(connect)?
            .options([("plan_cache_mode", "force_custom_plan")]);
        if let Some(schema) = schema {
            validate_schema(schema)?;
            create_schema(&opts, schema).await?;
            // A startup parameter, so every pooled connection (and every
            // reconnect) has it before its first statement, at no extra round
            // trip. Only our schema: tables of other services are not visible.
            opts = opts.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(connect)?;
        PG_MIGRATOR.run(&pool).await.map_err(migrate)?;
        Ok(Pool::Postgres(pool))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Accepts plain lowercase identifiers only, so the name needs no quoting in
/// `search_path` and cannot inject SQL.
fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidSchema(schema.to_owned()))
    }
}

async fn create_schema(opts: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    let connect = |e: sqlx::Error| StoreError::Connect(Arc::new(e));
    let mut conn = PgConnection::connect_with(opts).await.map_err(connect)?;
    let created = conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await;
    if let Err(e) = created {
        // Two services starting at once can race on IF NOT EXISTS (a unique
        // violation in pg_namespace); what matters is that it exists now.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await
                .map_err(connect)?;
        if !exists {
            return Err(connect(e));
        }
    }
    conn.close().await.map_err(connect)?;
    Ok(())
}

/// An `events` row as stored, before its JSON is parsed. `verify` works on
/// this form, so that a row whose JSON no longer parses is still reported as
/// a broken link rather than failing the whole verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub event_id: String,
    pub kind: String,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<EventTuple> for RawEvent {
    fn from(t: EventTuple) -> Self {
        let (
            position,
            stream,
            version,
            event_id,
            kind,
            payload,
            metadata,
            recorded_at,
            prev_hash,
            hash,
        ) = t;
        Self {
            position,
            stream,
            version,
            event_id,
            kind,
            payload,
            metadata,
            recorded_at,
            prev_hash,
            hash,
        }
    }
}

impl RawEvent {
    /// Parses the row into a [`StoredEvent`].
    pub(crate) fn decode(self) -> Result<StoredEvent, StoreError> {
        let position = self.position;
        let corrupt = |problem: String| StoreError::Corrupt { position, problem };
        let version = u64::try_from(self.version)
            .map_err(|_| corrupt(format!("negative version {}", self.version)))?;
        let event_id = self
            .event_id
            .parse()
            .map_err(|e| corrupt(format!("event_id: {e}")))?;
        let payload =
            serde_json::from_str(&self.payload).map_err(|e| corrupt(format!("payload: {e}")))?;
        let metadata =
            serde_json::from_str(&self.metadata).map_err(|e| corrupt(format!("metadata: {e}")))?;
        let recorded_at =
            parse_timestamp(&self.recorded_at).map_err(|e| corrupt(format!("recorded_at: {e}")))?;
        Ok(StoredEvent {
            position,
            stream: self.stream,
            version,
            event_id,
            kind: self.kind,
            payload,
            payload_text: self.payload,
            metadata,
            recorded_at,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// An `events` row to insert: the writer's texts borrowed from the requests
/// it commits (no copy of a payload per row), the hashes owned.
#[derive(Debug, Clone)]
pub(crate) struct NewRow<'a> {
    pub position: i64,
    pub stream: &'a str,
    pub version: i64,
    pub event_id: &'a str,
    pub kind: &'a str,
    pub payload: &'a str,
    pub metadata: &'a str,
    pub recorded_at: std::borrow::Cow<'a, str>,
    pub prev_hash: String,
    pub hash: String,
}

/// The end of the chain: last position, its hash and its `recorded_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub position: i64,
    pub hash: String,
    /// Empty before the first event.
    pub recorded_at: String,
}

impl Head {
    pub(crate) fn genesis() -> Self {
        Self {
            position: 0,
            hash: GENESIS_HASH.to_owned(),
            recorded_at: String::new(),
        }
    }

    fn from_tuple((position, hash, recorded_at): (i64, String, String)) -> Self {
        Self {
            position,
            hash,
            recorded_at,
        }
    }
}

/// An inbox row to insert.
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    pub consumer: String,
    pub message_id: String,
    pub reply: Option<String>,
    pub recorded_at: String,
}

/// The last event in the table, or the genesis head.
pub(crate) async fn events_head(pool: &Pool) -> Result<Head, StoreError> {
    let row = on_pool!(pool, p, Db => {
        sqlx::query_as::<Db, (i64, String, String)>(HEAD_FROM_EVENTS)
            .fetch_optional(p)
            .await?
    });
    Ok(row.map(Head::from_tuple).unwrap_or_else(Head::genesis))
}

const HEAD_FROM_EVENTS: &str =
    "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1";

/// Longest the writer waits to open its connection.
const WRITER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer's own connection, opened with the pool's options but kept
/// outside the pool: a batch then costs no pool checkout (and no liveness
/// ping, which `test_before_acquire` would spend on every checkout), and the
/// readers keep every pooled connection. Dropped after any failed batch, so
/// the next batch starts on a fresh one.
pub(crate) enum WriteConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriteConn {
    pub(crate) async fn open(pool: &Pool) -> Result<Self, StoreError> {
        let connect = async {
            Ok::<_, sqlx::Error>(match pool {
                Pool::Sqlite(p) => WriteConn::Sqlite(
                    (*p.connect_options())
                        .clone()
                        .pragma("cache_size", SQLITE_WRITER_CACHE)
                        .statement_cache_capacity(WRITER_STATEMENT_CACHE)
                        .connect()
                        .await?,
                ),
                Pool::Postgres(p) => WriteConn::Postgres(
                    (*p.connect_options())
                        .clone()
                        .statement_cache_capacity(WRITER_STATEMENT_CACHE)
                        .connect()
                        .await?,
                ),
            })
        };
        match tokio::time::timeout(WRITER_CONNECT_TIMEOUT, connect).await {
            Ok(conn) => conn.map_err(|e| StoreError::Connect(Arc::new(e))),
            // Reported like a pool checkout that timed out: unavailable.
            Err(_) => Err(StoreError::Connect(Arc::new(sqlx::Error::PoolTimedOut))),
        }
    }

    /// Closes the connection, telling the server; errors are moot here.
    pub(crate) async fn close(self) {
        let _ = match self {
            WriteConn::Sqlite(c) => c.close().await,
            WriteConn::Postgres(c) => c.close().await,
        };
    }
}

/// One append transaction of the writer, on its [`WriteConn`].
///
/// Both are opened by hand together with the head read (see
/// [`WriteTx::begin_locked`]) and ended by [`WriteTx::commit`] or
/// [`WriteTx::rollback`]. One dropped without either leaves the connection
/// inside the transaction: the writer then closes the connection (it keeps
/// one only after a commit or a rollback).
pub(crate) enum WriteTx<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// The current version of each stream named in `$1` that exists, on
/// PostgreSQL: one backward step of the `(stream, version)` index per
/// stream, whatever the planner knows of the table. The plain `WHERE stream
/// = ANY($1) GROUP BY stream` is planned from a guessed share of rows per
/// stream: without statistics (autovacuum off, or a table grown since its
/// last ANALYZE) a few dozen streams look like a large part of the table,
/// and it was planned as a parallel scan of the whole table, once for every
/// batch with a stream the writer had not cached (a new dossier's, or one
/// its cache of 100,000 let go).
pub(crate) const PG_STREAM_VERSIONS: &str = "SELECT s.stream, v.version \
     FROM UNNEST($1::text[]) AS s(stream) \
     CROSS JOIN LATERAL (SELECT e.version FROM events e \
       WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1) v";

/// BEGIN and the head lock in one simple-protocol round trip.
const PG_BEGIN_LOCKED: &str =
    "BEGIN; SELECT position, hash, recorded_at FROM chain_head WHERE id = 1 FOR UPDATE";

/// BEGIN IMMEDIATE and the head read in one call to SQLite's worker thread.
const SQLITE_BEGIN_LOCKED: &str =
    "BEGIN IMMEDIATE; SELECT position, hash, recorded_at FROM chain_head WHERE id = 1";

/// The head row of a [`PG_BEGIN_LOCKED`] or [`SQLITE_BEGIN_LOCKED`] answer.
fn head_row<R: Row>(rows: &[R]) -> Result<Head, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let [row] = rows else {
        return Err(StoreError::Corrupt {
            position: 0,
            problem: format!("the chain_head table has {} rows, not 1", rows.len()),
        });
    };
    Ok(Head::from_tuple((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
    )))
}

impl<'c> WriteTx<'c> {
    /// Opens the transaction and reads the `chain_head` row, locked.
    ///
    /// PostgreSQL: `FOR UPDATE` makes every append transaction — of this
    /// process or any other sharing the schema — queue here, so batches
    /// commit one after another and in position order (a reader can never
    /// see position n+1 committed before n). Under READ COMMITTED, after
    /// waiting for the lock the row read is the one the previous holder
    /// committed, and every later statement of this transaction takes a new
    /// snapshot, so it sees that holder's events and inbox rows too. BEGIN
    /// and the SELECT travel in one simple-protocol message: one round trip
    /// instead of two.
    ///
    /// SQLite: BEGIN IMMEDIATE takes the database's write lock now. A
    /// deferred transaction that reads first and writes later can fail with
    /// SQLITE_BUSY when it upgrades (busy_timeout cannot wait that out), and
    /// this lock is also what serialises the writers of several processes
    /// sharing one file. Both statements go to SQLite's worker thread as one
    /// call.
    ///
    /// On an error the connection may be inside the transaction still; the
    /// caller closes it.
    pub(crate) async fn begin_locked(conn: &'c mut WriteConn) -> Result<(Self, Head), StoreError> {
        match conn {
            WriteConn::Sqlite(c) => {
                let rows = (&mut *c).fetch_all(SQLITE_BEGIN_LOCKED).await?;
                Ok((WriteTx::Sqlite(c), head_row(&rows)?))
            }
            WriteConn::Postgres(c) => {
                // A query without arguments goes by the simple protocol, which
                // takes several statements in one message.
                let rows = (&mut *c).fetch_all(PG_BEGIN_LOCKED).await?;
                Ok((WriteTx::Postgres(c), head_row(&rows)?))
            }
        }
    }

    /// The last event in the table: the truth when the in-memory head is
    /// unknown (start-up, after a failure, after another process wrote).
    pub(crate) async fn events_head(&mut self) -> Result<Head, StoreError> {
        let row = on_tx!(self, t, Db => {
            sqlx::query_as::<Db, (i64, String, String)>(HEAD_FROM_EVENTS)
                .fetch_optional(&mut **t)
                .await?
        });
        Ok(row.map(Head::from_tuple).unwrap_or_else(Head::genesis))
    }

    /// Which of these (consumer, message id) pairs are already in the inbox,
    /// with their stored reply text.
    pub(crate) async fn existing_inbox(
        &mut self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), Option<String>>, StoreError> {
        // One query per consumer (a batch rarely spans more than a few), with
        // the message ids in an IN list that uses the primary key.
        let mut by_consumer: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (c, m) in keys {
            by_consumer.entry(c).or_default().push(m);
        }
        let mut found = HashMap::new();
        for (consumer, ids) in by_consumer {
            for chunk in ids.chunks(self.in_chunk()) {
                let rows = match self {
                    WriteTx::Sqlite(t) => {
                        let mut qb = QueryBuilder::<Sqlite>::new(
                            "SELECT consumer, message_id, reply FROM inbox WHERE consumer = ",
                        );
                        qb.push_bind(consumer).push(" AND message_id IN (");
                        let mut list = qb.separated(", ");
                        for id in padded(chunk) {
                            list.push_bind(*id);
                        }
                        qb.push(")");
                        qb.build_query_as::<(String, String, Option<String>)>()
                            .fetch_all(&mut **t)
                            .await?
                    }
                    WriteTx::Postgres(t) => {
                        sqlx::query_as::<Postgres, (String, String, Option<String>)>(
                            "SELECT consumer, message_id, reply FROM inbox \
                             WHERE consumer = $1 AND message_id = ANY($2)",
                        )
                        .bind(consumer)
                        .bind(chunk)
                        .fetch_all(&mut **t)
                        .await?
                    }
                };
                for (c, m, reply) in rows {
                    found.insert((c, m), reply);
                }
            }
        }
        Ok(found)
    }

    /// The stored rows of those event ids that already exist.
    pub(crate) async fn existing_events(
        &mut self,
        ids: &[&str],
    ) -> Result<HashMap<String, RawEvent>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(self.in_chunk()) {
            let rows = match self {
                WriteTx::Sqlite(t) => {
                    let mut qb = QueryBuilder::<Sqlite>::new(format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ("
                    ));
                    let mut list = qb.separated(", ");
                    for id in padded(chunk) {
                        list.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build_query_as::<EventTuple>()
                        .fetch_all(&mut **t)
                        .await?
                }
                WriteTx::Postgres(t) => {
                    sqlx::query_as::<Postgres, EventTuple>(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1)"
                    ))
                    .bind(chunk)
                    .fetch_all(&mut **t)
                    .await?
                }
            };
            for row in rows {
                let raw = RawEvent::from(row);
                found.insert(raw.event_id.clone(), raw);
            }
        }
        Ok(found)
    }

    /// Current versions of those streams that exist.
    pub(crate) async fn stream_versions(
        &mut self,
        streams: &[&str],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut found = HashMap::new();
        for chunk in streams.chunks(self.in_chunk()) {
            let rows = match self {
                WriteTx::Sqlite(t) => {
                    let mut qb = QueryBuilder::<Sqlite>::new(
                        "SELECT stream, MAX(version) FROM events WHERE stream IN (",
                    );
                    let mut list = qb.separated(", ");
                    for s in padded(chunk) {
                        list.push_bind(*s);
                    }
                    qb.push(") GROUP BY stream");
                    qb.build_query_as::<(String, i64)>()
                        .fetch_all(&mut **t)
                        .await?
                }
                WriteTx::Postgres(t) => {
                    sqlx::query_as::<Postgres, (String, i64)>(PG_STREAM_VERSIONS)
                        .bind(chunk)
                        .fetch_all(&mut **t)
                        .await?
                }
            };
            for (stream, version) in rows {
                let version = u64::try_from(version).map_err(|_| StoreError::Corrupt {
                    position: 0,
                    problem: format!("stream `{stream}` has negative version {version}"),
                })?;
                found.insert(stream, version);
            }
        }
        Ok(found)
    }

    /// Inserts events and returns how many rows were stored: on PostgreSQL
    /// in one statement whatever their number (one array per column,
    /// `UNNEST`ed), on SQLite with multi-row INSERTs chunked under the bind
    /// limit. With `skip_stored_ids`, a row whose `event_id` is already
    /// stored is skipped (`ON CONFLICT (event_id) DO NOTHING`), so the
    /// count tells whether any was; without it, such a row fails the
    /// statement. With `head`, the `chain_head` row is moved to it in the
    /// same transaction; on PostgreSQL in the same statement.
    pub(crate) async fn insert_events(
        &mut self,
        rows: &[NewRow<'_>],
        skip_stored_ids: bool,
        head: Option<&Head>,
    ) -> Result<u64, StoreError> {
        let on_conflict = if skip_stored_ids {
            " ON CONFLICT (event_id) DO NOTHING"
        } else {
            ""
        };
        let t = match &mut *self {
            WriteTx::Sqlite(t) => t,
            WriteTx::Postgres(t) => {
                // A data-modifying CTE runs exactly once, whether or not the
                // INSERT reads it: one round trip for both.
                let move_head = if head.is_some() {
                    "WITH moved AS (UPDATE chain_head SET position = $11, hash = $12, \
                     recorded_at = $13 WHERE id = 1) "
                } else {
                    ""
                };
                let sql = format!(
                    "{move_head}INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM UNNEST(\
                     $1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], \
                     $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[]){on_conflict}"
                );
                let mut query = sqlx::query::<Postgres>(&sql)
                    .bind(rows.iter().map(|e| e.position).collect::<Vec<i64>>())
                    .bind(rows.iter().map(|e| e.stream).collect::<Vec<&str>>())
                    .bind(rows.iter().map(|e| e.version).collect::<Vec<i64>>())
                    .bind(rows.iter().map(|e| e.event_id).collect::<Vec<&str>>())
                    .bind(rows.iter().map(|e| e.kind).collect::<Vec<&str>>())
                    .bind(rows.iter().map(|e| e.payload).collect::<Vec<&str>>())
                    .bind(rows.iter().map(|e| e.metadata).collect::<Vec<&str>>())
                    .bind(
                        rows.iter()
                            .map(|e| e.recorded_at.as_ref())
                            .collect::<Vec<&str>>(),
                    )
                    .bind(
                        rows.iter()
                            .map(|e| e.prev_hash.as_str())
                            .collect::<Vec<&str>>(),
                    )
                    .bind(rows.iter().map(|e| e.hash.as_str()).collect::<Vec<&str>>());
                if let Some(head) = head {
                    query = query
                        .bind(head.position)
                        .bind(head.hash.as_str())
                        .bind(head.recorded_at.as_str());
                }
                return Ok(query.execute(&mut **t).await?.rows_affected());
            }
        };
        let per_statement = SQLITE_ROWS;
        let mut stored = 0;
        let chunks = rows.len().div_ceil(per_statement);
        for (n, chunk) in rows.chunks(per_statement).enumerate() {
            // Built for the chunk's size class: the rows past the chunk are
            // all NULL, and the WHERE drops them (a real row's position is
            // never NULL). The WHERE also keeps SQLite from reading the
            // upsert clause as part of the SELECT.
            let shape = size_class(chunk.len());
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM ("
            ));
            qb.push_values(0..shape, |mut b, i| match chunk.get(i) {
                Some(e) => {
                    b.push_bind(Some(e.position))
                        .push_bind(Some(e.stream))
                        .push_bind(Some(e.version))
                        .push_bind(Some(e.event_id))
                        .push_bind(Some(e.kind))
                        .push_bind(Some(e.payload))
                        .push_bind(Some(e.metadata))
                        .push_bind(Some(e.recorded_at.as_ref()))
                        .push_bind(Some(e.prev_hash.as_str()))
                        .push_bind(Some(e.hash.as_str()));
                }
                None => {
                    b.push_bind(None::<i64>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<i64>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>);
                }
            });
            qb.push(") AS v WHERE v.column1 IS NOT NULL")
                .push(on_conflict);
            // The last chunk carries the `chain_head` update as a second
            // statement of the same call (its parameters follow the rows');
            // its one changed row is not counted as stored.
            let move_head = head.filter(|_| n + 1 == chunks);
            if let Some(head) = move_head {
                qb.push("; UPDATE chain_head SET position = ")
                    .push_bind(head.position)
                    .push(", hash = ")
                    .push_bind(head.hash.as_str())
                    .push(", recorded_at = ")
                    .push_bind(head.recorded_at.as_str())
                    .push(" WHERE id = 1");
            }
            let changed = qb.build().execute(&mut **t).await?.rows_affected();
            stored += changed.saturating_sub(u64::from(move_head.is_some()));
        }
        Ok(stored)
    }

    /// Inserts inbox rows (multi-row, chunked; on SQLite built for the
    /// chunk's size class like the events' insert, the padding rows NULL and
    /// filtered out).
    pub(crate) async fn insert_inbox(&mut self, rows: &[InboxRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(self.in_chunk()) {
            match self {
                WriteTx::Sqlite(t) => {
                    let mut qb = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO inbox (consumer, message_id, reply, recorded_at) \
                         SELECT * FROM (",
                    );
                    qb.push_values(0..size_class(chunk.len()), |mut b, i| match chunk.get(i) {
                        Some(r) => {
                            b.push_bind(Some(r.consumer.as_str()))
                                .push_bind(Some(r.message_id.as_str()))
                                .push_bind(r.reply.as_deref())
                                .push_bind(Some(r.recorded_at.as_str()));
                        }
                        None => {
                            b.push_bind(None::<&str>)
                                .push_bind(None::<&str>)
                                .push_bind(None::<&str>)
                                .push_bind(None::<&str>);
                        }
                    });
                    qb.push(") AS v WHERE v.column1 IS NOT NULL");
                    qb.build().execute(&mut **t).await?;
                }
                WriteTx::Postgres(t) => {
                    let mut qb = QueryBuilder::<Postgres>::new(
                        "INSERT INTO inbox (consumer, message_id, reply, recorded_at) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.consumer.as_str())
                            .push_bind(r.message_id.as_str())
                            .push_bind(r.reply.as_deref())
                            .push_bind(r.recorded_at.as_str());
                    });
                    qb.build().execute(&mut **t).await?;
                }
            }
        }
        Ok(())
    }

    /// Ids per `IN (…)` lookup, and rows per inbox insert: SQLite's
    /// statements are prepared per size class, so they stay small.
    fn in_chunk(&self) -> usize {
        match self {
            WriteTx::Sqlite(_) => SQLITE_ROWS,
            WriteTx::Postgres(_) => PG_IN_CHUNK,
        }
    }

    /// Moves the `chain_head` row to `head`.
    pub(crate) async fn set_head(&mut self, head: &Head) -> Result<(), StoreError> {
        on_tx!(self, t, Db => {
            sqlx::query::<Db>(
                "UPDATE chain_head SET position = $1, hash = $2, recorded_at = $3 WHERE id = 1",
            )
            .bind(head.position)
            .bind(head.hash.as_str())
            .bind(head.recorded_at.as_str())
            .execute(&mut **t)
            .await?;
        });
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.end("COMMIT").await
    }

    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        self.end("ROLLBACK").await
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    async fn end(self, statement: &'static str) -> Result<(), StoreError> {
        on_tx!(self, c, Db => {
            (&mut *c).execute(statement).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_few_and_never_waste_more_than_they_carry() {
        let classes: std::collections::BTreeSet<usize> =
            (1..=SQLITE_ROWS).map(size_class).collect();
        assert_eq!(classes.len(), 10);
        for n in 1..=5_000 {
            let c = size_class(n);
            assert!(c >= n && c < n + 64 && c <= 2 * n, "{n} -> {c}");
        }
        assert_eq!(size_class(0), 1);
        assert_eq!(size_class(5), 8);
        assert_eq!(size_class(64), 64);
        assert_eq!(size_class(65), 128);
        assert_eq!(size_class(129), 192);
    }

    #[test]
    fn padding_repeats_the_last_item() {
        let ids = ["a", "b", "c", "d", "e"];
        let got: Vec<&&str> = padded(&ids).collect();
        assert_eq!(got, [&"a", &"b", &"c", &"d", &"e", &"e", &"e", &"e"]);
        let none: [&str; 0] = [];
        assert_eq!(padded(&none).count(), 0);
    }

    #[test]
    fn schema_names_are_plain_lowercase_identifiers() {
        for ok in ["submission", "svc_2", "_x"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Svc", "a-b", "a\"b", "1abc", "a b", &"x".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }

    /// Appends 50 events to each of 60 streams `s-0` … `s-59` and asks the
    /// writer's version lookup for them, an absent stream and a repeated one.
    async fn sixty_streams_versions(url: &str) -> (crate::Store, HashMap<String, u64>) {
        use crate::model::AppendRequest;

        let store = crate::Store::connect(url, crate::StoreOptions::default())
            .await
            .unwrap();
        for pair in 0..30 {
            let events = (0..100)
                .map(|n| {
                    let mut e = crate::store::tests::event(n);
                    e.stream = format!("s-{}", pair * 2 + n % 2);
                    e
                })
                .collect();
            store.append(AppendRequest::new(events)).await.unwrap();
        }
        let mut names: Vec<String> = (0..60).map(|i| format!("s-{i}")).collect();
        names.push("absent".to_owned());
        names.push("s-7".to_owned());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut conn = WriteConn::open(store.pool()).await.unwrap();
        let (mut tx, head) = WriteTx::begin_locked(&mut conn).await.unwrap();
        assert_eq!(head.position, 3_000);
        let found = tx.stream_versions(&names).await.unwrap();
        tx.rollback().await.unwrap();
        conn.close().await;
        (store, found)
    }

    fn assert_sixty_at_fifty(found: &HashMap<String, u64>) {
        assert_eq!(found.len(), 60, "{found:?}");
        for i in 0..60 {
            assert_eq!(found.get(&format!("s-{i}")), Some(&50), "s-{i}");
        }
        assert!(!found.contains_key("absent"));
    }

    #[tokio::test]
    async fn stream_versions_give_each_existing_streams_last_version_on_sqlite() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let (store, found) = sixty_streams_versions(&db.url).await;
        assert_sixty_at_fifty(&found);
        store.close().await;
    }

    /// On PostgreSQL the lookup must not depend on the table's statistics:
    /// this table was never analysed, as with autovacuum off, and the plan
    /// must still step through the `(stream, version)` index per stream
    /// rather than scan the table (what `stream = ANY($1) GROUP BY stream`
    /// was planned as for a few dozen streams).
    #[tokio::test]
    async fn stream_versions_use_the_index_per_stream_on_postgres_without_statistics() {
        let pg = gradeflow_testkit::fresh_pg().await.unwrap();
        let (store, found) = sixty_streams_versions(&pg.url).await;
        assert_sixty_at_fifty(&found);
        let Pool::Postgres(p) = store.pool() else {
            unreachable!("the store is on PostgreSQL")
        };
        let names: Vec<String> = (0..60).map(|i| format!("s-{i}")).collect();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {PG_STREAM_VERSIONS}"))
            .bind(&names)
            .fetch_all(p)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Only Scan Backward"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        store.close().await;
        pg.drop_db().await.unwrap();
    }

    /// The readers of a SQLite store keep a small page cache each, the
    /// writer SQLite's default: what bounds the caches of a whole process.
    #[tokio::test]
    async fn sqlite_readers_keep_a_small_page_cache_and_the_writer_the_default() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let pool = open(&db.url, None, 2).await.unwrap();
        let Pool::Sqlite(readers) = &pool else {
            unreachable!("the store is on SQLite")
        };
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(readers)
            .await
            .unwrap();
        assert_eq!(cache.to_string(), SQLITE_READER_CACHE);
        let WriteConn::Sqlite(mut writer) = WriteConn::open(&pool).await.unwrap() else {
            unreachable!("the store is on SQLite")
        };
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&mut writer)
            .await
            .unwrap();
        assert_eq!(cache.to_string(), SQLITE_WRITER_CACHE);
        writer.close().await.unwrap();
        readers.close().await;
    }
}
