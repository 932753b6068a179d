//! The writer task: the only code that appends. One per [`crate::Store`].
//!
//! Callers send [`Job`]s over a channel, each with a oneshot for its answer.
//! The task takes everything queued (up to `max_batch`) and commits it in ONE
//! transaction (group commit: one fsync for many requests), with multi-row
//! INSERTs. It keeps the chain head and a cache of stream versions in memory,
//! so hashing and version checks cost no extra reads in the common case.
//!
//! Per request, in queue order, against the database *and* the requests
//! before it in the same batch:
//! 1. inbox entry already present → `Duplicate { reply }`, nothing written;
//! 2. events whose id is already stored are not written again; they are
//!    answered as stored (idempotent retry). If every event of the request is
//!    already stored, the checks are skipped: it is a retry of a request that
//!    committed, and its checks held then;
//! 3. a failing version check → `Conflict` for that request only;
//! 4. otherwise versions (current + 1…) and positions (head + 1…) are
//!    assigned, hashes chained, and the inbox entry recorded.
//!
//! Step 2 needs the stored ids, but ids are fresh UUIDs and a stored one
//! only comes with a retry, so a batch first runs without looking them up:
//! its INSERT skips stored ids (`ON CONFLICT (event_id) DO NOTHING`), and if
//! it skipped any, or any request failed its version check (a retried
//! request whose events are stored would), the transaction is rolled back
//! and the batch runs again with the lookup. The answers are the same either
//! way; the common batch saves a query.
//!
//! A request is all-or-nothing. If the batch transaction fails as a whole,
//! it is rolled back, what the writer believed (head, versions) is dropped,
//! and the requests are retried one per transaction, so one bad request
//! cannot fail its neighbours. Answers are sent only after the commit.
//!
//! Answering is a task of its own: after a commit the writer hands the batch
//! and its plans (what each request's answer is made of) to the answerer
//! and goes on to the next batch. The answerer builds each answer by moving
//! the request's own texts and values into it (no copy of any payload), sends
//! the answers in queue order and frees the requests, while the writer is
//! already waiting on its next round trip.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gradeflow_proto::{EventId, Metadata};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::canonical::{
    canonical_json, chain_hash, format_timestamp, parse_timestamp, truncate_timestamp, HashedFields,
};
use crate::db::{Head, InboxRow, NewRow, Pool, WriteConn, WriteTx};
use crate::error::{AppendError, StoreError};
use crate::model::{AppendOutcome, AppendRequest, ExpectedVersion, StoredEvent, WriterStats};

/// Beyond this many cached stream versions the cache is emptied (it refills
/// from the database on demand); bounds the writer's memory. By estimate an
/// entry costs about 90 bytes (the stream's name, its version, the table's
/// slot), so 16,384 hold about 1.5 MiB per store where 100,000 held about
/// 9 MiB in each of a deployment's five stores once the country passed
/// 100k dossiers; and the streams written at once are far fewer (the cycle
/// benchmark's 64 boards work on a few thousand dossiers at a time).
const VERSION_CACHE_LIMIT: usize = 16_384;

/// Committed batches waiting for the answerer at most.
const ANSWER_QUEUE: usize = 64;

/// An event encoded on the caller's task, so JSON work happens outside the
/// single writer.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    event_id: EventId,
    id_text: String,
    stream: String,
    kind: String,
    /// Exactly what parsing `payload_text` back gives, so a fresh event
    /// reads like the same event loaded later: the caller's value when that
    /// is provably the same ([`reads_back_unchanged`]), parsed back
    /// otherwise.
    payload: Value,
    payload_text: String,
    metadata: Metadata,
    metadata_text: String,
}

#[derive(Debug)]
pub(crate) struct PreparedInbox {
    consumer: String,
    message_id: String,
    reply: Option<Value>,
    reply_text: Option<String>,
}

/// A [`crate::Predicted`] with its time in stored form.
#[derive(Debug)]
pub(crate) struct PreparedPrediction {
    head: i64,
    recorded_at: DateTime<Utc>,
    recorded_at_text: String,
}

/// An [`AppendRequest`] with its JSON encoded.
#[derive(Debug)]
pub(crate) struct PreparedAppend {
    checks: Vec<(String, ExpectedVersion)>,
    events: Vec<PreparedEvent>,
    inbox: Option<PreparedInbox>,
    predicted: Option<PreparedPrediction>,
}

fn encode_err(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Encode {
        what,
        source: Arc::new(e),
    }
}

impl PreparedAppend {
    pub(crate) fn new(req: AppendRequest) -> Result<Self, StoreError> {
        let mut events = Vec::with_capacity(req.events.len());
        for e in req.events {
            let payload_text = canonical_json(&e.payload);
            let payload = if reads_back_unchanged(&e.payload) {
                e.payload
            } else {
                serde_json::from_str(&payload_text).map_err(encode_err("payload"))?
            };
            let metadata_value =
                serde_json::to_value(&e.metadata).map_err(encode_err("metadata"))?;
            events.push(PreparedEvent {
                event_id: e.event_id,
                id_text: e.event_id.to_string(),
                stream: e.stream,
                kind: e.kind,
                payload,
                payload_text,
                metadata: e.metadata,
                metadata_text: canonical_json(&metadata_value),
            });
        }
        let inbox = req.inbox.map(|i| PreparedInbox {
            reply_text: i.reply.as_ref().map(canonical_json),
            consumer: i.consumer,
            message_id: i.message_id,
            reply: i.reply,
        });
        let predicted = req.predicted.map(|p| PreparedPrediction {
            head: p.head,
            recorded_at: truncate_timestamp(p.recorded_at),
            recorded_at_text: format_timestamp(p.recorded_at),
        });
        Ok(Self {
            checks: req.checks,
            events,
            inbox,
            predicted,
        })
    }
}

/// Whether parsing the canonical text of `value` back gives `value` itself,
/// key order included: every object's keys already in canonical order
/// (`serde_json` is built with `preserve_order`, so a parsed object keeps
/// the text's order, and `Map` equality ignores order), and no float
/// (`serde_json` parses floats without guaranteed round-tripping unless its
/// `float_roundtrip` feature is on). Strings, integers, booleans and null
/// print and parse back losslessly.
fn reads_back_unchanged(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut keys = map.keys();
            let mut prev = keys.next();
            for key in keys {
                if prev.is_some_and(|p| p.as_str() >= key.as_str()) {
                    return false;
                }
                prev = Some(key);
            }
            map.values().all(reads_back_unchanged)
        }
        Value::Array(items) => items.iter().all(reads_back_unchanged),
        Value::Number(n) => !n.is_f64(),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

/// One request for the writer and where to send its answer.
#[derive(Debug)]
pub(crate) struct Job {
    pub req: PreparedAppend,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// Counters shared with the [`crate::Store`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Writer {
    pool: Pool,
    /// Where committed (or failed) batches go to be answered.
    answers: mpsc::Sender<Answering>,
    /// The answerer task; awaited when the writer stops.
    answerer: JoinHandle<()>,
    /// The connection every batch runs on; `None` before the first batch
    /// and after a failed one.
    conn: Option<WriteConn>,
    max_batch: usize,
    /// The head as of our last commit; `None` when unknown (start-up, after
    /// a failed transaction), which makes the next batch read it from the
    /// `events` table.
    head: Option<Head>,
    /// Stream versions as of `head`. Valid only while nobody else wrote,
    /// which the head comparison at the start of each batch establishes.
    versions: HashMap<String, u64>,
    committed: Arc<watch::Sender<i64>>,
    stats: Arc<Stats>,
}

/// What one request's answer is made of, decided in its transaction and
/// built after the commit by [`answer`], from the request itself.
type Planned = Result<Plan, AppendError>;

#[derive(Debug)]
enum Plan {
    /// Appended (or found stored): one slot per event of the request.
    Appended(Vec<Slot>),
    /// A handled message's stored reply.
    Duplicate { reply: Option<Value> },
}

/// One event of an [`Plan::Appended`] answer.
#[derive(Debug)]
enum Slot {
    /// Stored before this batch, read back from the database.
    Loaded(Box<StoredEvent>),
    /// Written by this batch from the request's own event at this index.
    Fresh(Fresh),
    /// The event written for (request, event index) earlier in the batch
    /// (the same id again).
    Same(usize, usize),
}

/// What the writer assigned to a fresh event.
#[derive(Debug)]
struct Fresh {
    position: i64,
    version: u64,
    recorded_at: DateTime<Utc>,
    prev_hash: String,
    hash: String,
}

/// A batch to answer: its jobs and, in the same order, their plans.
struct Answering {
    jobs: Vec<Job>,
    plans: Vec<Planned>,
}

/// Answers every batch handed over, in order, until the writer is gone.
async fn answerer(mut rx: mpsc::Receiver<Answering>) {
    while let Some(Answering { jobs, plans }) = rx.recv().await {
        answer(jobs, plans);
    }
}

/// Builds each job's answer from its plan, moving the request's texts and
/// values into it, and sends it (the caller may have given up waiting; what
/// committed stays committed).
fn answer(jobs: Vec<Job>, plans: Vec<Planned>) {
    // The fresh events another slot of the batch repeats (rare: an id
    // twice in one batch); a copy of each is kept while answering.
    let repeated: HashSet<(usize, usize)> = plans
        .iter()
        .filter_map(|p| match p {
            Ok(Plan::Appended(slots)) => Some(slots),
            _ => None,
        })
        .flatten()
        .filter_map(|slot| match slot {
            Slot::Same(i, j) => Some((*i, *j)),
            _ => None,
        })
        .collect();
    let mut kept: HashMap<(usize, usize), StoredEvent> = HashMap::new();
    for (i, (job, plan)) in jobs.into_iter().zip(plans).enumerate() {
        let Job { req, reply } = job;
        let answer = match plan {
            Err(e) => Err(e),
            Ok(Plan::Duplicate { reply }) => Ok(AppendOutcome::Duplicate { reply }),
            Ok(Plan::Appended(slots)) => {
                appended(i, slots, req.events, &repeated, &mut kept).map(AppendOutcome::Appended)
            }
        };
        let _ = reply.send(answer);
    }
}

/// The stored events answering request `i` of a batch, one per slot.
fn appended(
    i: usize,
    slots: Vec<Slot>,
    events: Vec<PreparedEvent>,
    repeated: &HashSet<(usize, usize)>,
    kept: &mut HashMap<(usize, usize), StoredEvent>,
) -> Result<Vec<StoredEvent>, AppendError> {
    let mut out = Vec::with_capacity(slots.len());
    for (j, (slot, e)) in slots.into_iter().zip(events).enumerate() {
        let event = match slot {
            Slot::Loaded(event) => *event,
            Slot::Fresh(f) => StoredEvent {
                position: f.position,
                stream: e.stream,
                version: f.version,
                event_id: e.event_id,
                kind: e.kind,
                payload: e.payload,
                payload_text: e.payload_text,
                metadata: e.metadata,
                recorded_at: f.recorded_at,
                prev_hash: f.prev_hash,
                hash: f.hash,
            },
            // A repeat points at a fresh event earlier in the batch, which
            // was kept when it was built.
            Slot::Same(i2, j2) => kept.get(&(i2, j2)).cloned().ok_or_else(|| {
                AppendError::Store(StoreError::Corrupt {
                    position: 0,
                    problem: "an event repeated in a batch lost its first answer".into(),
                })
            })?,
        };
        if repeated.contains(&(i, j)) {
            kept.insert((i, j), event.clone());
        }
        out.push(event);
    }
    Ok(out)
}

impl Writer {
    pub(crate) fn new(
        pool: Pool,
        max_batch: usize,
        committed: Arc<watch::Sender<i64>>,
        stats: Arc<Stats>,
    ) -> Self {
        // A few batches may wait to be answered; beyond that the writer
        // waits for the answerer (which only sends and frees).
        let (answers, answering) = mpsc::channel(ANSWER_QUEUE);
        Self {
            pool,
            answers,
            answerer: tokio::spawn(answerer(answering)),
            conn: None,
            max_batch: max_batch.max(1),
            head: None,
            versions: HashMap::new(),
            committed,
            stats,
        }
    }

    /// Runs until every sender is gone, or until `shutdown` fires and the
    /// queue is drained: after `close()` no new request is accepted, but
    /// every request already queued is still committed and answered.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Job>, shutdown: Arc<Notify>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        loop {
            let n = if closing {
                rx.recv_many(&mut jobs, self.max_batch).await
            } else {
                tokio::select! {
                    // recv_many is cancel-safe: nothing is lost if shutdown wins.
                    n = rx.recv_many(&mut jobs, self.max_batch) => n,
                    () = shutdown.notified() => {
                        // Refuse new sends; what is buffered is drained below.
                        rx.close();
                        closing = true;
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            self.process(std::mem::take(&mut jobs)).await;
        }
        let Writer {
            conn,
            answers,
            answerer,
            ..
        } = self;
        if let Some(conn) = conn {
            conn.close().await;
        }
        // Every batch handed over is answered before the writer counts as
        // stopped.
        drop(answers);
        if let Err(e) = answerer.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        tracing::debug!("eventstore writer stopped");
    }

    async fn process(&mut self, jobs: Vec<Job>) {
        let reqs: Vec<&PreparedAppend> = jobs.iter().map(|j| &j.req).collect();
        let result = self.commit(&reqs).await;
        drop(reqs);
        match result {
            Ok(plans) => self.hand_over(jobs, plans).await,
            Err(err) => {
                self.forget();
                if err.is_unavailable() {
                    tracing::warn!(error = %err, requests = jobs.len(), "eventstore batch failed");
                    let plans = jobs
                        .iter()
                        .map(|_| Err(AppendError::Store(err.clone())))
                        .collect();
                    self.hand_over(jobs, plans).await;
                    return;
                }
                // Something in the batch was refused by the database: one bad
                // request, or a stale head (e.g. a constraint because another
                // writer bypassed the head lock). The head is reloaded by the
                // next transaction; retrying each request on its own isolates
                // a bad one, so it cannot fail its neighbours. (A batch of one
                // is retried once too: a stale head is not the caller's fault.)
                tracing::warn!(error = %err, requests = jobs.len(), "eventstore batch failed, retrying one by one");
                let mut unavailable: Option<StoreError> = None;
                for job in jobs {
                    let plan = match &unavailable {
                        Some(e) => Err(AppendError::Store(e.clone())),
                        None => match self.commit(&[&job.req]).await {
                            Ok(mut plans) => plans.pop().unwrap_or(Err(AppendError::Closed)),
                            Err(e) => {
                                self.forget();
                                if e.is_unavailable() {
                                    unavailable = Some(e.clone());
                                }
                                Err(AppendError::Store(e))
                            }
                        },
                    };
                    self.hand_over(vec![job], vec![plan]).await;
                }
            }
        }
    }

    /// Hands a batch to the answerer, or answers it here if the answerer
    /// is gone (it panicked).
    async fn hand_over(&self, jobs: Vec<Job>, plans: Vec<Planned>) {
        if let Err(mpsc::error::SendError(batch)) =
            self.answers.send(Answering { jobs, plans }).await
        {
            answer(batch.jobs, batch.plans);
        }
    }

    /// Drops what we believed about the database; the next batch re-reads it.
    fn forget(&mut self) {
        self.head = None;
        self.versions.clear();
    }

    /// Applies `reqs` in one transaction. On `Ok`, it committed and the
    /// plans of the answers are in request order; on `Err`, nothing was
    /// written.
    ///
    /// Event ids are assumed new at first (ids are fresh UUIDs; a stored one
    /// means a caller retried): the rows are inserted skipping stored ids,
    /// with no lookup beforehand. If any row was skipped, or any request
    /// failed its version check (as the retry of a committed request does),
    /// that transaction is rolled back and the batch runs again with the ids
    /// looked up, so stored events are answered as stored and real
    /// conflicts as conflicts.
    ///
    /// A connection kept from an earlier batch may have died since (the
    /// database restarted): if BEGIN fails on it, the batch is tried once
    /// more on a fresh connection before it counts as failed.
    async fn commit(&mut self, reqs: &[&PreparedAppend]) -> Result<Vec<Planned>, StoreError> {
        let reused = self.conn.is_some();
        let mut result = self.commit_on_conn(reqs, Ids::AssumeNew).await;
        if let Err(Failed::Begin(e)) = &result {
            if reused {
                tracing::debug!(error = %e, "eventstore writer connection lost, reconnecting");
                result = self.commit_on_conn(reqs, Ids::AssumeNew).await;
            }
        }
        if let Err(Failed::LookUpIds) = result {
            result = self.commit_on_conn(reqs, Ids::LookUp).await;
        }
        result.map_err(Failed::into_inner)
    }

    /// [`Self::commit`] on the kept connection, or a new one; keeps the
    /// connection unless the batch failed in the database.
    async fn commit_on_conn(
        &mut self,
        reqs: &[&PreparedAppend],
        ids: Ids,
    ) -> Result<Vec<Planned>, Failed> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => WriteConn::open(&self.pool).await.map_err(Failed::Begin)?,
        };
        let result = match WriteTx::begin_locked(&mut conn).await {
            Ok((tx, locked)) => self.apply(tx, locked, reqs, ids).await,
            Err(e) => Err(Failed::Begin(e)),
        };
        match result {
            Ok(answers) => {
                self.conn = Some(conn);
                Ok(answers)
            }
            // Rolled back cleanly: the connection is fine.
            Err(Failed::LookUpIds) => {
                self.conn = Some(conn);
                Err(Failed::LookUpIds)
            }
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    /// The body of [`Self::commit`], in the transaction `tx`, which found
    /// the chain head at `locked`.
    async fn apply(
        &mut self,
        mut tx: WriteTx<'_>,
        locked: Head,
        reqs: &[&PreparedAppend],
        ids: Ids,
    ) -> Result<Vec<Planned>, Failed> {
        // `locked` was read under the head lock (PostgreSQL) / the write
        // lock (SQLite): everything read below is stable until we commit.
        let start = match &self.head {
            Some(h) if *h == locked => h.clone(),
            _ => {
                // Unknown, or another process appended since our last commit:
                // the version cache may be stale, and the events table is the
                // truth for the head.
                self.versions.clear();
                tx.events_head().await?
            }
        };

        // What the database already has, in three set-based lookups.
        let inbox_keys: Vec<(&str, &str)> = reqs
            .iter()
            .filter_map(|r| r.inbox.as_ref())
            .map(|i| (i.consumer.as_str(), i.message_id.as_str()))
            .collect();
        let db_inbox = if inbox_keys.is_empty() {
            HashMap::new()
        } else {
            tx.existing_inbox(&inbox_keys).await?
        };
        let event_ids: Vec<&str> = {
            let mut seen = HashSet::new();
            reqs.iter()
                .flat_map(|r| r.events.iter())
                .map(|e| e.id_text.as_str())
                .filter(|id| seen.insert(*id))
                .collect()
        };
        let db_events = if event_ids.is_empty() || ids == Ids::AssumeNew {
            HashMap::new()
        } else {
            tx.existing_events(&event_ids).await?
        };
        let mut versions: HashMap<String, u64> = HashMap::new();
        {
            let mut missing = Vec::new();
            let touched = reqs.iter().flat_map(|r| {
                r.checks
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .chain(r.events.iter().map(|e| e.stream.as_str()))
            });
            for stream in touched {
                if versions.contains_key(stream) {
                    continue;
                }
                match self.versions.get(stream) {
                    Some(v) => {
                        versions.insert(stream.to_owned(), *v);
                    }
                    None => {
                        versions.insert(stream.to_owned(), 0);
                        missing.push(stream);
                    }
                }
            }
            if !missing.is_empty() {
                versions.extend(tx.stream_versions(&missing).await?);
            }
        }

        // One timestamp per batch (unless a request brings its own predicted
        // one), never earlier than the last event's, so recorded_at is
        // non-decreasing along positions (replay --as-of can stop at the
        // first later event) even if the clock steps back.
        let now = Utc::now();
        let now_text = format_timestamp(now);
        let now = truncate_timestamp(now);
        let mut head = start;
        let mut plans: Vec<Planned> = Vec::with_capacity(reqs.len());
        let mut batch_inbox: HashMap<(&str, &str), Option<Value>> = HashMap::new();
        // Where each event written by this batch is answered: (request,
        // index of the event in it); the request being applied is
        // `plans.len()`, its slots `out`.
        let mut batch_events: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut new_rows: Vec<NewRow<'_>> = Vec::new();
        let mut inbox_rows: Vec<InboxRow> = Vec::new();

        for req in reqs {
            // 0. A caller that applied its events already must find the log
            //    exactly where it believed; otherwise nothing is evaluated.
            if let Some(p) = &req.predicted {
                if p.head != head.position || p.recorded_at_text < head.recorded_at {
                    plans.push(Err(AppendError::Moved {
                        expected: p.head,
                        actual: head.position,
                    }));
                    continue;
                }
            }
            let (recorded_at_text, recorded_at): (Cow<'_, str>, _) = match &req.predicted {
                Some(p) => (Cow::Borrowed(&p.recorded_at_text), p.recorded_at),
                None if now_text > head.recorded_at => (Cow::Borrowed(&now_text), now),
                None => {
                    let at =
                        parse_timestamp(&head.recorded_at).map_err(|e| StoreError::Corrupt {
                            position: head.position,
                            problem: format!("recorded_at of the chain head: {e}"),
                        })?;
                    (Cow::Owned(head.recorded_at.clone()), at)
                }
            };

            // 1. A message handled before (in the database or earlier in
            //    this batch): answer with its reply, write nothing.
            if let Some(ib) = &req.inbox {
                let key = (ib.consumer.as_str(), ib.message_id.as_str());
                if let Some(reply) = batch_inbox.get(&key) {
                    plans.push(Ok(Plan::Duplicate {
                        reply: reply.clone(),
                    }));
                    continue;
                }
                if let Some(text) = db_inbox.get(&(key.0.to_owned(), key.1.to_owned())) {
                    plans.push(parse_reply(text.as_deref()).map(|reply| Plan::Duplicate { reply }));
                    continue;
                }
            }

            // 2. Events already stored are answered as stored.
            let mut stored: Vec<Option<Slot>> = Vec::with_capacity(req.events.len());
            let mut broken = None;
            for e in &req.events {
                if let Some(&(i, j)) = batch_events.get(e.id_text.as_str()) {
                    stored.push(Some(Slot::Same(i, j)));
                } else if let Some(raw) = db_events.get(&e.id_text) {
                    match raw.clone().decode() {
                        Ok(s) => stored.push(Some(Slot::Loaded(Box::new(s)))),
                        Err(err) => {
                            broken = Some(err);
                            break;
                        }
                    }
                } else {
                    stored.push(None);
                }
            }
            if let Some(err) = broken {
                plans.push(Err(AppendError::Store(err)));
                continue;
            }
            let any_new = stored.iter().any(Option::is_none);

            // 3. Version checks, against the database plus the requests
            //    before this one in the batch.
            if any_new || req.events.is_empty() {
                let failed = req.checks.iter().find_map(|(stream, expected)| {
                    let actual = versions.get(stream).copied().unwrap_or(0);
                    (!expected.matches(actual)).then(|| AppendError::Conflict {
                        stream: stream.clone(),
                        expected: *expected,
                        actual,
                    })
                });
                if let Some(conflict) = failed {
                    if ids == Ids::AssumeNew {
                        // Perhaps a retry of a request that committed, whose
                        // events are stored: only the lookup can tell.
                        tx.rollback().await?;
                        return Err(Failed::LookUpIds);
                    }
                    plans.push(Err(conflict));
                    continue;
                }
            }

            // 4. Assign versions and positions, chain the hashes.
            let mut out = Vec::with_capacity(req.events.len());
            let mut wrote = false;
            for (e, already) in req.events.iter().zip(stored) {
                if let Some(s) = already {
                    out.push(s);
                    continue;
                }
                // The same id twice in one request: one event.
                if let Some(&(i, j)) = batch_events.get(e.id_text.as_str()) {
                    out.push(Slot::Same(i, j));
                    continue;
                }
                // Every touched stream is in `versions` already (see above);
                // the fallback only keeps this from relying on it.
                let version = match versions.get_mut(e.stream.as_str()) {
                    Some(v) => {
                        *v += 1;
                        *v
                    }
                    None => {
                        versions.insert(e.stream.clone(), 1);
                        1
                    }
                };
                let position = head.position + 1;
                let version_i64 = i64::try_from(version).unwrap_or(i64::MAX);
                let hash = chain_hash(
                    &head.hash,
                    &HashedFields {
                        position,
                        stream: &e.stream,
                        version: version_i64,
                        event_id: &e.id_text,
                        kind: &e.kind,
                        payload: &e.payload_text,
                        metadata: &e.metadata_text,
                        recorded_at: &recorded_at_text,
                    },
                );
                let prev_hash = std::mem::replace(&mut head.hash, hash.clone());
                head.position = position;
                wrote = true;
                new_rows.push(NewRow {
                    position,
                    stream: &e.stream,
                    version: version_i64,
                    event_id: &e.id_text,
                    kind: &e.kind,
                    payload: &e.payload_text,
                    metadata: &e.metadata_text,
                    recorded_at: recorded_at_text.clone(),
                    prev_hash: prev_hash.clone(),
                    hash: hash.clone(),
                });
                batch_events.insert(e.id_text.as_str(), (plans.len(), out.len()));
                // The answer takes the request's own texts and values once
                // the batch is committed (see `answer`).
                out.push(Slot::Fresh(Fresh {
                    position,
                    version,
                    recorded_at,
                    prev_hash,
                    hash,
                }));
            }
            if wrote {
                head.recorded_at = recorded_at_text.clone().into_owned();
            }
            if let Some(ib) = &req.inbox {
                batch_inbox.insert(
                    (ib.consumer.as_str(), ib.message_id.as_str()),
                    ib.reply.clone(),
                );
                inbox_rows.push(InboxRow {
                    consumer: ib.consumer.clone(),
                    message_id: ib.message_id.clone(),
                    reply: ib.reply_text.clone(),
                    recorded_at: recorded_at_text.clone().into_owned(),
                });
            }
            plans.push(Ok(Plan::Appended(out)));
        }

        let moved = (head != locked).then_some(&head);
        if new_rows.is_empty() {
            if let Some(head) = moved {
                tx.set_head(head).await?;
            }
        } else {
            let skip_stored_ids = ids == Ids::AssumeNew;
            let stored = tx.insert_events(&new_rows, skip_stored_ids, moved).await?;
            if stored != new_rows.len() as u64 {
                if skip_stored_ids {
                    // Some id was stored before: run the batch again with the
                    // ids looked up (see `commit`).
                    tx.rollback().await?;
                    return Err(Failed::LookUpIds);
                }
                return Err(Failed::Later(StoreError::Corrupt {
                    position: new_rows.first().map_or(0, |e| e.position),
                    problem: format!("an INSERT of {} events stored {stored}", new_rows.len()),
                }));
            }
        }
        if !inbox_rows.is_empty() {
            tx.insert_inbox(&inbox_rows).await?;
        }
        tx.commit().await?;

        // Committed: now (and only now) believe it.
        if self.versions.len() + versions.len() > VERSION_CACHE_LIMIT {
            self.versions.clear();
        }
        self.versions.extend(versions);
        let position = head.position;
        self.head = Some(head);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .requests
            .fetch_add(reqs.len() as u64, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(new_rows.len() as u64, Ordering::Relaxed);
        // Wake the outbox relay (and anyone else watching) at once.
        self.committed.send_if_modified(|p| {
            let moved = *p != position;
            *p = position;
            moved
        });
        Ok(plans)
    }
}

/// How a batch learns which of its event ids are stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// Not at all: the INSERT skips stored ids, and a skipped row or a
    /// failed version check (which a retried request meets) sends the batch
    /// back to be run with [`Ids::LookUp`] ([`Failed::LookUpIds`]).
    AssumeNew,
    /// By looking them up before anything is decided.
    LookUp,
}

/// Why [`Writer::commit_on_conn`] failed: at BEGIN (or opening the
/// connection), before anything was sent; because the batch must be run
/// with its ids looked up (rolled back, nothing written); or later in the
/// transaction.
enum Failed {
    Begin(StoreError),
    LookUpIds,
    Later(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Later(e)
    }
}

impl Failed {
    fn into_inner(self) -> StoreError {
        match self {
            Failed::Begin(e) | Failed::Later(e) => e,
            // `commit` runs a batch that reported this again with lookups,
            // which never report it.
            Failed::LookUpIds => StoreError::Corrupt {
                position: 0,
                problem: "a batch kept finding stored event ids".into(),
            },
        }
    }
}

fn parse_reply(text: Option<&str>) -> Result<Option<Value>, AppendError> {
    text.map(serde_json::from_str).transpose().map_err(|e| {
        AppendError::Store(StoreError::Corrupt {
            position: 0,
            problem: format!("stored inbox reply: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn job(
        events: Vec<crate::NewEvent>,
    ) -> (Job, oneshot::Receiver<Result<AppendOutcome, AppendError>>) {
        let (reply, rx) = oneshot::channel();
        let req = PreparedAppend::new(AppendRequest::new(events)).unwrap();
        (Job { req, reply }, rx)
    }

    fn fresh(position: i64, hash: &str) -> Slot {
        Slot::Fresh(Fresh {
            position,
            version: 1,
            recorded_at: Utc::now(),
            prev_hash: "0".repeat(64),
            hash: hash.into(),
        })
    }

    #[test]
    fn answers_take_the_requests_own_events_and_repeats_copy_the_first() {
        let metadata = gradeflow_proto::Metadata {
            actor: gradeflow_proto::Actor {
                sub: "t".into(),
                role: gradeflow_proto::Role::System,
                org: gradeflow_proto::OrgId::new(),
            },
            correlation_id: gradeflow_proto::CorrelationId::new(),
            causation_id: None,
            traceparent: None,
            service: "t".into(),
            province: None,
        };
        let x = crate::NewEvent::new("s", "k.v1", json!({"n": 1}), metadata.clone());
        let y = crate::NewEvent::new("s", "k.v1", json!({"n": 2}), metadata);
        // Request 0 writes x then y; request 1 repeats y; request 2 failed.
        let (j0, r0) = job(vec![x.clone(), y.clone()]);
        let (j1, r1) = job(vec![y.clone()]);
        let (j2, r2) = job(vec![x.clone()]);
        let plans = vec![
            Ok(Plan::Appended(vec![fresh(1, "h1"), fresh(2, "h2")])),
            Ok(Plan::Appended(vec![Slot::Same(0, 1)])),
            Err(AppendError::Closed),
        ];
        answer(vec![j0, j1, j2], plans);
        let got = |r: oneshot::Receiver<Result<AppendOutcome, AppendError>>| match r
            .blocking_recv()
            .unwrap()
        {
            Ok(AppendOutcome::Appended(events)) => events,
            other => panic!("{other:?}"),
        };
        let first = got(r0);
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].event_id, first[0].position), (x.event_id, 1));
        assert_eq!(first[0].payload, json!({"n": 1}));
        assert_eq!(first[0].payload_text, r#"{"n":1}"#);
        assert_eq!(
            (first[1].event_id, first[1].hash.as_str()),
            (y.event_id, "h2")
        );
        assert_eq!(got(r1), vec![first[1].clone()]);
        assert!(matches!(
            r2.blocking_recv().unwrap(),
            Err(AppendError::Closed)
        ));
    }

    #[test]
    fn a_payload_is_kept_only_when_it_reads_back_as_itself() {
        let values = [
            (json!({}), true),
            (json!(null), true),
            (
                json!({"a": 1, "b": [true, null, "x\"\n\u{1F600}"], "c": {"d": -7}}),
                true,
            ),
            (json!({"big": u64::MAX, "neg": i64::MIN}), true),
            (json!({"p": "x".repeat(592)}), true),
            (json!("bare"), true),
            (json!({"b": 1, "a": 2}), false),
            (json!({"a": {"z": 1, "y": 2}}), false),
            (json!([{"b": 1, "a": 2}]), false),
            (json!({"f": 0.1}), false),
            (json!([1.0]), false),
        ];
        for (value, kept) in values {
            assert_eq!(reads_back_unchanged(&value), kept, "{value}");
            let parsed: Value = serde_json::from_str(&canonical_json(&value)).unwrap();
            if kept {
                // Same value, same key order, same printed form.
                assert_eq!(parsed, value);
                assert_eq!(parsed.to_string(), value.to_string());
            }
        }
    }
}
