//! [`Store`]: the handle services hold. Appends go to the writer task;
//! reads, the outbox positions, inbox lookups and dead letters go straight to
//! the pool.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use gradeflow_proto::{EventId, Metadata};

use crate::canonical::{
    chain_digest, format_timestamp, parse_timestamp, HashedFields, GENESIS_HASH,
};
use crate::db::{
    self, on_pool, EventTuple, OutboxTuple, Pool, RawEvent, EVENT_COLUMNS, OUTBOX_COLUMNS,
};
use crate::error::{AppendError, StoreError};
use crate::model::{
    AppendOutcome, AppendRequest, Backend, DeadLetter, StoreOptions, StoredEvent, VerifyReport,
    WriterStats,
};
use crate::writer::{Job, PreparedAppend, Stats, Writer};

/// A queued append (see [`Store::submit`]).
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<AppendOutcome, AppendError>>);

impl Pending {
    /// Waits for the request's outcome: committed, or why not.
    pub async fn outcome(self) -> Result<AppendOutcome, AppendError> {
        self.0.await.map_err(|_| AppendError::Closed)?
    }
}

/// An event as the outbox relay reads it ([`Store::read_outbox_from`]): what
/// its message needs, with the payload left as the stored text (canonical
/// JSON) instead of parsed, and without the hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Global position, contiguous from 1.
    pub position: i64,
    /// The aggregate stream.
    pub stream: String,
    /// Version within the stream, contiguous from 1.
    pub version: u64,
    /// Unique id.
    pub event_id: EventId,
    /// The versioned kind.
    pub kind: String,
    /// The exact stored payload bytes: canonical JSON, as in
    /// [`StoredEvent::payload_text`].
    pub payload_text: String,
    /// The metadata.
    pub metadata: Metadata,
    /// When the writer recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl OutboxEvent {
    fn decode(row: OutboxTuple) -> Result<Self, StoreError> {
        let (position, stream, version, event_id, kind, payload_text, metadata, recorded_at) = row;
        let corrupt = |problem: String| StoreError::Corrupt { position, problem };
        let version =
            u64::try_from(version).map_err(|_| corrupt(format!("negative version {version}")))?;
        let event_id = event_id
            .parse()
            .map_err(|e| corrupt(format!("event_id: {e}")))?;
        let metadata =
            serde_json::from_str(&metadata).map_err(|e| corrupt(format!("metadata: {e}")))?;
        let recorded_at =
            parse_timestamp(&recorded_at).map_err(|e| corrupt(format!("recorded_at: {e}")))?;
        Ok(Self {
            position,
            stream,
            version,
            event_id,
            kind,
            payload_text,
            metadata,
            recorded_at,
        })
    }
}

/// Rows per page when `verify` walks the log, by backend (measured over
/// the four stores of a 10k cycle, 194k events, on a loaded 2-core VM).
///
/// * SQLite: small pages. Verifying the four stores at once took ~1.2 s
///   with pages of 250–500 rows and 1.6–2.0 s with 2,000–5,000: the driver
///   copies every column of a row into an allocation of its own, and with
///   small pages those stay in cache between being read and being hashed
///   and the allocator reuses the same memory instead of faulting in fresh
///   pages.
/// * PostgreSQL: pages of 2,000 read ~15 % faster than pages of 500 (one
///   round trip per page; the rows arrive in one buffer).
///
/// The read-ahead hides the round trips either way.
pub(crate) fn verify_page_rows(pool: &Pool) -> i64 {
    match pool {
        Pool::Sqlite(_) => 500,
        Pool::Postgres(_) => 2_000,
    }
}

/// An event store: one SQL database (or PostgreSQL schema) with its single
/// writer task. Cheap to clone; all clones share the pool and the writer.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    jobs: mpsc::Sender<Job>,
    committed: Arc<watch::Sender<i64>>,
    stats: Arc<Stats>,
    shutdown: Arc<Notify>,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens the store at `url` (`sqlite://path?mode=rwc` or
    /// `postgres://…`), runs the migrations and starts the writer task.
    /// Must be called inside a Tokio runtime.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let pool = db::open(url, opts.schema.as_deref(), opts.pool_size).await?;
        let head = db::events_head(&pool).await?;
        let committed = Arc::new(watch::channel(head.position).0);
        let stats = Arc::new(Stats::default());
        let shutdown = Arc::new(Notify::new());
        let max_batch = opts.max_batch.max(1);
        // Bounded: when the writer falls behind, callers wait (backpressure)
        // instead of queueing without limit.
        let (jobs, rx) = mpsc::channel(max_batch.saturating_mul(4).max(1024));
        let writer = Writer::new(pool.clone(), max_batch, committed.clone(), stats.clone());
        let handle = tokio::spawn(writer.run(rx, shutdown.clone()));
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                jobs,
                committed,
                stats,
                shutdown,
                writer: tokio::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// The pool, for the benchmark baselines in [`crate::raw`].
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.inner.pool.backend()
    }

    /// Appends atomically through the writer task (see the crate docs for
    /// the per-request rules). Returns once the request has committed, or
    /// with why it did not.
    #[tracing::instrument(name = "eventstore.append", skip_all, fields(events = req.events.len()))]
    pub async fn append(&self, req: AppendRequest) -> Result<AppendOutcome, AppendError> {
        self.submit(req).await?.outcome().await
    }

    /// Queues a request for the writer and returns once it is queued, before
    /// it commits: requests are applied in the order they were queued, so a
    /// caller can queue several (each predicting the head the one before it
    /// leaves, see [`crate::Predicted`]) and await their outcomes later.
    /// Waits only while the writer's queue is full.
    pub async fn submit(&self, req: AppendRequest) -> Result<Pending, AppendError> {
        // JSON encoding happens here, on the caller's task, not in the writer.
        let req = PreparedAppend::new(req)?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(Job { req, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(Pending(answer))
    }

    /// Every event of `stream`, by version.
    pub async fn load_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 ORDER BY version");
        let rows = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, EventTuple>(&sql).bind(stream).fetch_all(p).await?
        });
        decode_all(rows)
    }

    /// Up to `limit` events of `stream` with a version above
    /// `after_version`, by version: a stream read a page at a time (a long
    /// stream, such as a decision log, need not be held in memory to be
    /// read).
    pub async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND version > $2 \
             ORDER BY version LIMIT $3"
        );
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let rows = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, EventTuple>(&sql)
                .bind(stream)
                .bind(after)
                .bind(limit_i64(limit))
                .fetch_all(p)
                .await?
        });
        decode_all(rows)
    }

    /// The events at `positions` that exist, in position order (duplicates
    /// read once; a position past the head or below 1 is simply absent). A
    /// model may keep only where an event is and read the event when asked
    /// for it.
    pub async fn read_positions(&self, positions: &[i64]) -> Result<Vec<StoredEvent>, StoreError> {
        let mut wanted: Vec<i64> = positions.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        // Bounded IN lists: SQLite allows 32,766 parameters, PostgreSQL
        // 65,535; a page of 500 stays far below both.
        for chunk in wanted.chunks(500) {
            let marks = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE position IN ({marks}) ORDER BY position"
            );
            let rows = on_pool!(&self.inner.pool, p, Db => {
                let mut q = sqlx::query_as::<Db, EventTuple>(&sql);
                for position in chunk {
                    q = q.bind(*position);
                }
                q.fetch_all(p).await?
            });
            out.extend(decode_all(rows)?);
        }
        Ok(out)
    }

    /// The stream's current version (0 if it has no events).
    pub async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let v: i64 = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_scalar::<Db, i64>(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = $1",
            )
            .bind(stream)
            .fetch_one(p)
            .await?
        });
        u64::try_from(v).map_err(|_| StoreError::Corrupt {
            position: 0,
            problem: format!("stream `{stream}` has negative version {v}"),
        })
    }

    /// Up to `limit` events after `after_position`, in global order. Commits
    /// become visible in position order (one writer; on PostgreSQL the head
    /// lock serialises writers of several processes), so paging with the
    /// last position seen never skips an event.
    pub async fn read_from(
        &self,
        after_position: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_raw(after_position, limit_i64(limit))
            .await?
            .into_iter()
            .map(RawEvent::decode)
            .collect()
    }

    /// Like [`Store::read_from`], for the outbox relay: the same events in
    /// the same order, but each payload left as its stored text (not parsed
    /// into a `Value`) and without the hashes.
    pub async fn read_outbox_from(
        &self,
        after_position: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        let rows = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, OutboxTuple>(&sql)
                .bind(after_position)
                .bind(limit_i64(limit))
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(OutboxEvent::decode).collect()
    }

    /// Like [`Store::read_from`], but only events recorded at or before `at`
    /// (for replay `--as-of`). `recorded_at` never decreases along positions,
    /// so the result is a prefix of the log: an empty page means the end.
    pub async fn read_until(
        &self,
        at: DateTime<Utc>,
        after_position: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND recorded_at <= $2 \
             ORDER BY position LIMIT $3"
        );
        let at = format_timestamp(at);
        let rows = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, EventTuple>(&sql)
                .bind(after_position)
                .bind(at.as_str())
                .bind(limit_i64(limit))
                .fetch_all(p)
                .await?
        });
        decode_all(rows)
    }

    async fn read_raw(&self, after_position: i64, limit: i64) -> Result<Vec<RawEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        let rows = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, EventTuple>(&sql)
                .bind(after_position)
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        Ok(rows.into_iter().map(RawEvent::from).collect())
    }

    /// The last position and its hash, or `None` for an empty store.
    pub async fn head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, (i64, String)>(
                "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1",
            )
            .fetch_optional(p)
            .await?
        });
        Ok(row)
    }

    /// The latest position committed by this store's writer. The writer
    /// sends on every commit that moves the head, so the outbox relay wakes
    /// at once instead of polling. (Appends by other processes sharing the
    /// database are not signalled here.)
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.inner.committed.subscribe()
    }

    /// Counters of the writer task.
    pub fn stats(&self) -> WriterStats {
        self.inner.stats.snapshot()
    }

    /// Walks the whole log in pages and checks it: positions contiguous from
    /// 1, each `prev_hash` equal to the previous event's `hash`, each `hash`
    /// recomputed from the stored bytes, and the last event agreeing with the
    /// `chain_head` row (which catches a truncated tail). Reports the first
    /// broken position and what is wrong there.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.walk_chain(
            verify_page_rows(&self.inner.pool),
            None::<(&[&str], fn(Result<StoredEvent, StoreError>))>,
        )
        .await
    }

    /// [`Store::verify`], and every row of a kind among `kinds` it reads
    /// also handed to `each`, in position order, as [`Store::read_from`]
    /// would return it: the event, or the [`StoreError::Corrupt`] saying why
    /// that row does not read back (the walk goes on past it). Rows of other
    /// kinds are only hashed, as by `verify`, not decoded. One pass over the
    /// log for a caller that needs both the chain's verdict and some of the
    /// events (the auditor's decision log), instead of reading the store
    /// twice.
    pub async fn verify_with_events<F>(
        &self,
        kinds: &[&str],
        each: F,
    ) -> Result<VerifyReport, StoreError>
    where
        F: FnMut(Result<StoredEvent, StoreError>),
    {
        self.walk_chain(verify_page_rows(&self.inner.pool), Some((kinds, each)))
            .await
    }

    /// The walk behind [`Store::verify`], in pages of `page_rows`.
    async fn walk_chain<F>(
        &self,
        page_rows: i64,
        mut each: Option<(&[&str], F)>,
    ) -> Result<VerifyReport, StoreError>
    where
        F: FnMut(Result<StoredEvent, StoreError>),
    {
        let mut walk = ChainWalk::new();
        let mut page = read_verify_page(self.inner.pool.clone(), 0, page_rows).await?;
        while let Some(after) = page.last_position()? {
            // The next page is read on a task of its own while this one is
            // hashed, so the driver keeps streaming rows meanwhile (SQLite's
            // worker thread hands rows over a short channel: a read polled
            // only between pages would stall after a few dozen rows).
            let next = tokio::spawn(read_verify_page(self.inner.pool.clone(), after, page_rows));
            walk.check(&page, each.as_mut())?;
            page = match next.await {
                Ok(next) => next?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(sqlx::Error::Io(std::io::Error::other(e)).into()),
            };
        }
        let ChainWalk {
            mut report,
            expected,
            prev_hash,
        } = walk;
        if report.events > 0 {
            report.head = Some(prev_hash.clone());
        }
        if report.first_broken.is_none() {
            let (position, hash): (i64, String) = on_pool!(&self.inner.pool, p, Db => {
                sqlx::query_as::<Db, (i64, String)>(
                    "SELECT position, hash FROM chain_head WHERE id = 1",
                )
                .fetch_one(p)
                .await?
            });
            let last = expected - 1;
            if position > last {
                report.first_broken = Some((
                    last + 1,
                    format!(
                        "missing events: the chain head is at position {position} but the last stored event is at {last}"
                    ),
                ));
            } else if position == last && hash != prev_hash {
                report.first_broken =
                    Some((last, format!("hash differs from the chain head's ({hash})")));
            }
        }
        Ok(report)
    }

    /// The last position JetStream acknowledged for `publisher` (0 if none).
    pub async fn outbox_position(&self, publisher: &str) -> Result<i64, StoreError> {
        let row = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_scalar::<Db, i64>(
                "SELECT position FROM outbox_positions WHERE publisher = $1",
            )
            .bind(publisher)
            .fetch_optional(p)
            .await?
        });
        Ok(row.unwrap_or(0))
    }

    /// Records that JetStream acknowledged everything up to `position` for
    /// `publisher`. Monotonic: a lower position (a late or replayed ack) never
    /// moves it back.
    pub async fn set_outbox_position(
        &self,
        publisher: &str,
        position: i64,
    ) -> Result<(), StoreError> {
        // The max is taken in the statement itself, so concurrent relays
        // cannot interleave a read and a write.
        match &self.inner.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO outbox_positions (publisher, position) VALUES ($1, $2) \
                     ON CONFLICT (publisher) DO UPDATE \
                     SET position = MAX(outbox_positions.position, excluded.position)",
                )
                .bind(publisher)
                .bind(position)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                sqlx::query(
                    "INSERT INTO outbox_positions (publisher, position) VALUES ($1, $2) \
                     ON CONFLICT (publisher) DO UPDATE \
                     SET position = GREATEST(outbox_positions.position, EXCLUDED.position)",
                )
                .bind(publisher)
                .bind(position)
                .execute(p)
                .await?;
            }
        }
        Ok(())
    }

    /// Whether `consumer` already handled `message_id`: `None` if not,
    /// `Some(reply)` if it did (the reply may itself be `None`).
    pub async fn inbox_lookup(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<Option<Option<serde_json::Value>>, StoreError> {
        let row: Option<Option<String>> = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_scalar::<Db, Option<String>>(
                "SELECT reply FROM inbox WHERE consumer = $1 AND message_id = $2",
            )
            .bind(consumer)
            .bind(message_id)
            .fetch_optional(p)
            .await?
        });
        row.map(|reply| {
            reply
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| StoreError::Corrupt {
                    position: 0,
                    problem: format!("inbox reply of {consumer}/{message_id}: {e}"),
                })
        })
        .transpose()
    }

    /// Whether an event with this id is stored.
    pub async fn contains_event(&self, event_id: EventId) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        let found: Option<i64> = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT position FROM events WHERE event_id = $1")
                .bind(id.as_str())
                .fetch_optional(p)
                .await?
        });
        Ok(found.is_some())
    }

    /// Records a message `dl.consumer` gave up on. Recording the same
    /// (consumer, message id) again replaces the earlier record.
    pub async fn record_dead_letter(&self, dl: DeadLetter) -> Result<(), StoreError> {
        let deliveries = i64::try_from(dl.deliveries).unwrap_or(i64::MAX);
        let now = format_timestamp(Utc::now());
        on_pool!(&self.inner.pool, p, Db => {
            sqlx::query::<Db>(
                "INSERT INTO dead_letters \
                 (consumer, message_id, subject, deliveries, reason, payload, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (consumer, message_id) DO UPDATE SET \
                 subject = excluded.subject, deliveries = excluded.deliveries, \
                 reason = excluded.reason, payload = excluded.payload, \
                 recorded_at = excluded.recorded_at",
            )
            .bind(dl.consumer.as_str())
            .bind(dl.message_id.as_str())
            .bind(dl.subject.as_str())
            .bind(deliveries)
            .bind(dl.reason.as_str())
            .bind(dl.payload.as_str())
            .bind(now.as_str())
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Dead letters, oldest first; of one consumer, or of all.
    pub async fn dead_letters(
        &self,
        consumer: Option<&str>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        type Row = (String, String, String, i64, String, String);
        let rows: Vec<Row> = on_pool!(&self.inner.pool, p, Db => {
            sqlx::query_as::<Db, Row>(
                "SELECT consumer, message_id, subject, deliveries, reason, payload \
                 FROM dead_letters WHERE ($1 IS NULL OR consumer = $1) \
                 ORDER BY recorded_at, consumer, message_id",
            )
            .bind(consumer)
            .fetch_all(p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(consumer, message_id, subject, deliveries, reason, payload)| DeadLetter {
                    consumer,
                    message_id,
                    subject,
                    deliveries: u64::try_from(deliveries).unwrap_or(0),
                    reason,
                    payload,
                },
            )
            .collect())
    }

    /// Writes a consistent copy of a SQLite store to the new file `path`
    /// while the store stays online (`VACUUM INTO`: one read transaction, so
    /// the copy holds every event committed before it began and nothing
    /// half-written; appends wait only for the copy's duration). The copy is
    /// a plain SQLite database, ready to be opened where the original was.
    /// `path` must not exist yet. A PostgreSQL store is backed up with
    /// `pg_dump --schema <service>` instead (`docs/operations.md`).
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        let target = path.to_str().ok_or(StoreError::Unsupported(
            "a backup path that is not valid UTF-8",
        ))?;
        match &self.inner.pool {
            db::Pool::Sqlite(p) => {
                sqlx::query("VACUUM INTO ?").bind(target).execute(p).await?;
                Ok(())
            }
            db::Pool::Postgres(_) => Err(StoreError::Unsupported(
                "online backup of a PostgreSQL store (use pg_dump --schema <service>)",
            )),
        }
    }

    /// Stops accepting appends, lets the writer commit and answer every
    /// request already queued, then closes the pool. Idempotent; any clone
    /// may call it. Appends after it fail with [`AppendError::Closed`].
    pub async fn close(&self) {
        self.inner.shutdown.notify_one();
        // Holding the lock while awaiting the writer makes a second,
        // concurrent close() wait for the drain too.
        let mut writer = self.inner.writer.lock().await;
        if let Some(handle) = writer.take() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "eventstore writer task failed");
            }
        }
        drop(writer);
        self.inner.pool.close().await;
    }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn decode_all(rows: Vec<EventTuple>) -> Result<Vec<StoredEvent>, StoreError> {
    rows.into_iter()
        .map(|row| RawEvent::from(row).decode())
        .collect()
}

/// A page of `events` rows as the driver returned them. [`Store::verify`]
/// borrows each column's text from the row instead of copying it into a
/// `String` of its own (and so does the raw read + hash baseline, which
/// reads the same pages).
pub(crate) enum VerifyPage {
    Sqlite(Vec<sqlx::sqlite::SqliteRow>),
    Postgres(Vec<sqlx::postgres::PgRow>),
}

impl VerifyPage {
    /// The position of the last row, or `None` for an empty page (the end).
    pub(crate) fn last_position(&self) -> Result<Option<i64>, StoreError> {
        use sqlx::Row as _;
        Ok(match self {
            VerifyPage::Sqlite(rows) => rows.last().map(|r| r.try_get(0)).transpose()?,
            VerifyPage::Postgres(rows) => rows.last().map(|r| r.try_get(0)).transpose()?,
        })
    }
}

/// Up to `limit` rows after `after_position`, every column the hash covers
/// (a task of its own reads it; hence the owned pool).
pub(crate) async fn read_verify_page(
    pool: Pool,
    after_position: i64,
    limit: i64,
) -> Result<VerifyPage, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    );
    Ok(match &pool {
        Pool::Sqlite(p) => VerifyPage::Sqlite(
            sqlx::query(&sql)
                .bind(after_position)
                .bind(limit)
                .fetch_all(p)
                .await?,
        ),
        Pool::Postgres(p) => VerifyPage::Postgres(
            sqlx::query(&sql)
                .bind(after_position)
                .bind(limit)
                .fetch_all(p)
                .await?,
        ),
    })
}

/// One `events` row as [`Store::verify`] checks it: the columns of
/// [`EVENT_COLUMNS`], texts borrowed from the driver's row.
struct VerifyRow<'r> {
    position: i64,
    stream: &'r str,
    version: i64,
    event_id: &'r str,
    kind: &'r str,
    payload: &'r str,
    metadata: &'r str,
    recorded_at: &'r str,
    prev_hash: &'r str,
    hash: &'r str,
}

impl<'r> VerifyRow<'r> {
    /// Decodes the columns by index, in [`EVENT_COLUMNS`] order; a column of
    /// the wrong type fails as the same query through `query_as` would.
    fn read<R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            position: row.try_get(0)?,
            stream: row.try_get(1)?,
            version: row.try_get(2)?,
            event_id: row.try_get(3)?,
            kind: row.try_get(4)?,
            payload: row.try_get(5)?,
            metadata: row.try_get(6)?,
            recorded_at: row.try_get(7)?,
            prev_hash: row.try_get(8)?,
            hash: row.try_get(9)?,
        })
    }

    /// The row as [`Store::read_from`] reads it, to decode the same way.
    fn to_raw(&self) -> RawEvent {
        RawEvent {
            position: self.position,
            stream: self.stream.to_owned(),
            version: self.version,
            event_id: self.event_id.to_owned(),
            kind: self.kind.to_owned(),
            payload: self.payload.to_owned(),
            metadata: self.metadata.to_owned(),
            recorded_at: self.recorded_at.to_owned(),
            prev_hash: self.prev_hash.to_owned(),
            hash: self.hash.to_owned(),
        }
    }
}

/// How far [`Store::verify`] got: the report so far, the position the next
/// row must have, and the hash of the last row checked (its `prev_hash`).
struct ChainWalk {
    report: VerifyReport,
    expected: i64,
    prev_hash: String,
}

impl ChainWalk {
    fn new() -> Self {
        Self {
            report: VerifyReport {
                events: 0,
                head: None,
                first_broken: None,
            },
            expected: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }

    fn check<F>(
        &mut self,
        page: &VerifyPage,
        each: Option<&mut (&[&str], F)>,
    ) -> Result<(), StoreError>
    where
        F: FnMut(Result<StoredEvent, StoreError>),
    {
        match page {
            VerifyPage::Sqlite(rows) => self.check_rows(rows, each),
            VerifyPage::Postgres(rows) => self.check_rows(rows, each),
        }
    }

    /// Checks one page in order. Within the page each row's link is
    /// compared with the previous row's hash in place; only the page's last
    /// hash is copied, to link the next page. With `each`, every row of
    /// one of its kinds is also decoded and handed over.
    fn check_rows<R, F>(
        &mut self,
        rows: &[R],
        mut each: Option<&mut (&[&str], F)>,
    ) -> Result<(), StoreError>
    where
        F: FnMut(Result<StoredEvent, StoreError>),
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let mut last_hash: Option<&str> = None;
        for row in rows {
            let row = VerifyRow::read(row)?;
            self.report.events += 1;
            if self.report.first_broken.is_none() {
                let prev_hash = last_hash.unwrap_or(&self.prev_hash);
                self.report.first_broken = check_row(&row, self.expected, prev_hash);
            }
            // Continue from what is stored, so the count and the head stay
            // meaningful past a break.
            self.expected = row.position + 1;
            last_hash = Some(row.hash);
            if let Some((kinds, each)) = each.as_mut() {
                if kinds.contains(&row.kind) {
                    each(row.to_raw().decode());
                }
            }
        }
        if let Some(hash) = last_hash {
            self.prev_hash.clear();
            self.prev_hash.push_str(hash);
        }
        Ok(())
    }
}

/// The problem with one row, if any, given the position and `prev_hash` it
/// must have.
fn check_row(row: &VerifyRow<'_>, expected: i64, prev_hash: &str) -> Option<(i64, String)> {
    if row.position != expected {
        return Some((
            expected,
            format!(
                "gap in positions: {expected} is missing (the next stored event is at {})",
                row.position
            ),
        ));
    }
    if row.prev_hash != prev_hash {
        return Some((
            row.position,
            format!(
                "prev_hash link broken: the row has {}, the previous event's hash is {prev_hash}",
                row.prev_hash
            ),
        ));
    }
    let digest = chain_digest(
        row.prev_hash,
        &HashedFields {
            position: row.position,
            stream: row.stream,
            version: row.version,
            event_id: row.event_id,
            kind: row.kind,
            payload: row.payload,
            metadata: row.metadata,
            recorded_at: row.recorded_at,
        },
    );
    // The stored hash is compared as text with the digest's lowercase hex,
    // written into a buffer on the stack: the same comparison as against
    // `chain_hash`'s String, without building one per row.
    let mut recomputed = [0u8; 64];
    if hex::encode_to_slice(digest, &mut recomputed).is_ok()
        && recomputed.as_slice() == row.hash.as_bytes()
    {
        return None;
    }
    Some((
        row.position,
        format!(
            "hash mismatch: stored {}, recomputed from the stored bytes {}",
            row.hash,
            hex::encode(digest)
        ),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use gradeflow_proto::{Actor, CorrelationId, Metadata, OrgId, Role};

    use super::*;
    use crate::model::{ExpectedVersion, NewEvent};

    /// Event `n` of the tests: `thing_happened.v1` on stream `s`.
    pub(crate) fn event(n: u64) -> NewEvent {
        let meta = Metadata {
            actor: Actor {
                sub: "tester".into(),
                role: Role::System,
                org: OrgId::new(),
            },
            correlation_id: CorrelationId::new(),
            causation_id: None,
            traceparent: None,
            service: "test".into(),
            province: None,
        };
        NewEvent::new(
            "s",
            "thing_happened.v1",
            serde_json::json!({ "n": n }),
            meta,
        )
    }

    #[tokio::test]
    async fn an_online_backup_opens_as_a_store_with_the_same_verified_chain() {
        let src = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&src.url, StoreOptions::default())
            .await
            .unwrap();
        for n in 0..5 {
            store
                .append(AppendRequest::new(vec![event(n)]).expect("s", ExpectedVersion::Exactly(n)))
                .await
                .unwrap();
        }
        let copy = src.dir.path().join("backup.db");
        store.backup_to(&copy).await.unwrap();
        // The original keeps going after the backup; the copy is a snapshot.
        store
            .append(AppendRequest::new(vec![event(5)]))
            .await
            .unwrap();
        // A second backup to an existing file is refused, never overwrites.
        assert!(store.backup_to(&copy).await.is_err());
        let original_head = store.head().await.unwrap();
        store.close().await;

        let url = format!("sqlite://{}?mode=rw", copy.display());
        let restored = Store::connect(&url, StoreOptions::default()).await.unwrap();
        let report = restored.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.first_broken);
        assert_eq!(report.events, 5);
        assert_ne!(restored.head().await.unwrap(), original_head);
        // The restored store continues the chain.
        restored
            .append(AppendRequest::new(vec![event(9)]).expect("s", ExpectedVersion::Exactly(5)))
            .await
            .unwrap();
        assert!(restored.verify().await.unwrap().is_ok());
        restored.close().await;
    }

    /// Runs raw SQL on the store's SQLite file (to tamper with it).
    async fn tamper(store: &Store, sql: &str) {
        let Pool::Sqlite(p) = store.pool() else {
            unreachable!("the test store is SQLite")
        };
        sqlx::query(sql).execute(p).await.unwrap();
    }

    #[tokio::test]
    async fn verify_links_every_page_to_the_one_before() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        for n in 0..10 {
            store
                .append(AppendRequest::new(vec![event(n)]))
                .await
                .unwrap();
        }
        let none = None::<(&[&str], fn(Result<StoredEvent, StoreError>))>;
        // Pages of 3: rows 3/4, 6/7 and 9/10 link across a page boundary.
        let report = store.walk_chain(3, none).await.unwrap();
        assert!(report.is_ok(), "{:?}", report.first_broken);
        assert_eq!(report.events, 10);
        assert_eq!(report.head, store.head().await.unwrap().map(|(_, h)| h));
        assert_eq!(report, store.verify().await.unwrap());

        // The first row of the second page no longer links to the last row
        // of the first.
        tamper(&store, "DROP TRIGGER events_no_update").await;
        tamper(
            &store,
            &format!(
                "UPDATE events SET prev_hash = '{}' WHERE position = 4",
                "1".repeat(64)
            ),
        )
        .await;
        let (position, problem) = store
            .walk_chain(3, none)
            .await
            .unwrap()
            .first_broken
            .unwrap();
        assert_eq!(position, 4, "{problem}");
        assert!(problem.contains("prev_hash link broken"), "{problem}");
        store.close().await;
    }

    #[tokio::test]
    async fn verify_with_events_hands_over_the_rows_of_its_kinds_as_read_from_reads_them() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        // Odd positions are `thing_happened.v1`, even ones `other_thing.v1`.
        for n in 0..6 {
            let mut e = event(n);
            if n % 2 == 1 {
                e.kind = "other_thing.v1".to_owned();
            }
            store.append(AppendRequest::new(vec![e])).await.unwrap();
        }
        let all = store.read_from(0, 100).await.unwrap();
        let mut seen = Vec::new();
        let report = store
            .verify_with_events(&["thing_happened.v1", "other_thing.v1"], |read| {
                seen.push(read.unwrap())
            })
            .await
            .unwrap();
        assert!(report.is_ok());
        assert_eq!(seen, all);
        let mut seen = Vec::new();
        let report = store
            .verify_with_events(&["thing_happened.v1"], |read| seen.push(read.unwrap()))
            .await
            .unwrap();
        assert!(report.is_ok());
        assert_eq!(report.events, 6);
        let odd: Vec<StoredEvent> = all
            .iter()
            .filter(|e| e.position % 2 == 1)
            .cloned()
            .collect();
        assert_eq!(seen, odd);

        // A row of a kind handed over that no longer reads back is named,
        // and the walk goes on; one of another kind is not decoded, but the
        // chain still names it.
        tamper(&store, "DROP TRIGGER events_no_update").await;
        tamper(
            &store,
            "UPDATE events SET payload = 'garbage' WHERE position IN (3, 4)",
        )
        .await;
        let mut seen = Vec::new();
        let report = store
            .verify_with_events(&["thing_happened.v1"], |read| {
                seen.push(match read {
                    Ok(event) => Ok(event.position),
                    Err(StoreError::Corrupt { position, problem }) => Err((position, problem)),
                    Err(e) => panic!("{e}"),
                })
            })
            .await
            .unwrap();
        assert_eq!(report.first_broken.map(|b| b.0), Some(3));
        assert_eq!(report.events, 6);
        let positions: Vec<i64> = seen
            .iter()
            .map(|r| match r {
                Ok(p) | Err((p, _)) => *p,
            })
            .collect();
        assert_eq!(positions, vec![1, 3, 5]);
        let Err((_, problem)) = &seen[1] else {
            panic!("row 3 read back: {seen:?}")
        };
        assert!(problem.starts_with("payload:"), "{problem}");
        let report = store
            .verify_with_events(&["other_thing.v1"], |_| {})
            .await
            .unwrap();
        assert_eq!(report.first_broken.map(|b| b.0), Some(3));
        store.close().await;
    }

    #[tokio::test]
    async fn outbox_rows_are_the_read_events_with_the_payload_left_as_text() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        for n in 0..7 {
            store
                .append(AppendRequest::new(vec![event(n)]))
                .await
                .unwrap();
        }
        let events = store.read_from(2, 4).await.unwrap();
        let rows = store.read_outbox_from(2, 4).await.unwrap();
        assert_eq!(rows.len(), 4);
        for (row, event) in rows.iter().zip(&events) {
            let expected = OutboxEvent {
                position: event.position,
                stream: event.stream.clone(),
                version: event.version,
                event_id: event.event_id,
                kind: event.kind.clone(),
                payload_text: event.payload_text.clone(),
                metadata: event.metadata.clone(),
                recorded_at: event.recorded_at,
            };
            assert_eq!(*row, expected);
        }
        assert!(store.read_outbox_from(7, 10).await.unwrap().is_empty());
        store.close().await;
    }
}
