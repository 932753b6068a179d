//! [`Store`]: the handle services hold. Appends go to the writer task;
//! reads, the outbox positions, inbox lookups and dead letters go straight to
//! the pool.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use gradeflow_proto::{EventId, Metadata};

use crate::canonical::{chain_hash, format_timestamp, parse_timestamp, HashedFields, GENESIS_HASH};
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

/// Rows per page when `verify` walks the log.
const VERIFY_PAGE: i64 = 2_000;

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
        let mut report = VerifyReport {
            events: 0,
            head: None,
            first_broken: None,
        };
        let mut expected = 1_i64;
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut after = 0_i64;
        let mut page = self.read_raw(after, VERIFY_PAGE).await?;
        while let Some(last) = page.last() {
            after = last.position;
            // The next page is asked for first and read while this one is
            // hashed (the query runs on the database's side meanwhile: the
            // SQLite worker thread, or the PostgreSQL server).
            let check = async {
                for row in &page {
                    report.events += 1;
                    if report.first_broken.is_none() {
                        report.first_broken = check_row(row, expected, &prev_hash);
                    }
                    // Continue from what is stored, so the count and the head
                    // stay meaningful past a break.
                    expected = row.position + 1;
                    prev_hash.clone_from(&row.hash);
                }
            };
            let (next, ()) = tokio::join!(self.read_raw(after, VERIFY_PAGE), check);
            page = next?;
        }
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

/// The problem with one row, if any, given the position and `prev_hash` it
/// must have.
fn check_row(row: &RawEvent, expected: i64, prev_hash: &str) -> Option<(i64, String)> {
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
    let recomputed = chain_hash(
        &row.prev_hash,
        &HashedFields {
            position: row.position,
            stream: &row.stream,
            version: row.version,
            event_id: &row.event_id,
            kind: &row.kind,
            payload: &row.payload,
            metadata: &row.metadata,
            recorded_at: &row.recorded_at,
        },
    );
    if recomputed != row.hash {
        return Some((
            row.position,
            format!(
                "hash mismatch: stored {}, recomputed from the stored bytes {recomputed}",
                row.hash
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gradeflow_proto::{Actor, CorrelationId, Metadata, OrgId, Role};

    use super::*;
    use crate::model::{ExpectedVersion, NewEvent};

    fn event(n: u64) -> NewEvent {
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
