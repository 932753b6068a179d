//! The service runtime every workflow service (submission, appraisal,
//! approval) runs on.
//!
//! A service keeps its working state — the *model* — in memory, and the model
//! is only ever a fold of the service's own event store: its own events and
//! the events of other services it has *observed* (copied into its store by
//! its consumers, so the store alone is enough to rebuild the model and the
//! hash chain covers the facts the service acted on). The [`Engine`] keeps the
//! model in step with the store:
//!
//! * on start it replays the whole store;
//! * before every decision it catches up with whatever was committed since
//!   (by this process or, on a shared PostgreSQL store, by a replica);
//! * a decision is appended with optimistic concurrency on every stream it
//!   writes or reads, so two replicas deciding from the same state cannot both
//!   win: the loser catches up and decides again;
//! * a decision is applied to the model when its append is queued, before it
//!   commits, so decisions pipeline through the store's group commit; the
//!   store commits it only where the model predicted, and otherwise the model
//!   is rebuilt (see [`Engine`]).
//!
//! Commands are idempotent by their command id: the reply is committed in the
//! store's inbox in the same transaction as the events, and a retry gets the
//! stored reply without deciding again.

pub mod client;
pub mod runtime;
pub mod spill;
pub mod trace;
pub mod tree;
mod versions;
pub mod workflow;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gradeflow_eventstore::canonical::truncate_timestamp;
use gradeflow_eventstore::{
    AppendError, AppendOutcome, AppendRequest, ExpectedVersion, InboxEntry, NewEvent, Pending,
    Predicted, Store, StoreError, StoredEvent,
};
use gradeflow_proto::events::Event;
use gradeflow_proto::{Actor, CorrelationId, Envelope, EventId, Metadata, Rejection};
use serde_json::Value;
use tokio::sync::Mutex;

pub use gradeflow_bus::Reply;
pub use tree::{OrgNode, OrgTree};
use uuid::Uuid;
pub use workflow::{answer, payload, reply, Workflow};

/// A service's in-memory working state, folded from its store.
pub trait Model: Default + Send + Sync + 'static {
    /// Applies one stored event (own or observed), in store order.
    fn apply(&mut self, event: &StoredEvent);
}

/// Who asked, and within which request and trace: stamped on every event a
/// decision appends.
#[derive(Debug, Clone)]
pub struct Context {
    /// The caller.
    pub actor: Actor,
    /// The request the events belong to.
    pub correlation_id: CorrelationId,
    /// The command or event that caused them.
    pub causation_id: Option<Uuid>,
    /// W3C trace context to carry on.
    pub traceparent: Option<String>,
}

impl Context {
    /// The context of a command: its actor, its command id as the
    /// correlation id (a retry carries the same one) and as the cause, and
    /// the caller's trace.
    pub fn of_command(command: &gradeflow_proto::CommandEnvelope) -> Self {
        Self {
            actor: command.actor.clone(),
            correlation_id: CorrelationId(command.command_id.as_uuid()),
            causation_id: Some(command.command_id.as_uuid()),
            traceparent: command.traceparent.clone(),
        }
    }
}

/// One event a decision wants appended. The engine adds the id and metadata.
#[derive(Debug, Clone)]
pub struct Emit {
    /// The aggregate stream.
    pub stream: String,
    /// The versioned kind.
    pub kind: String,
    /// The payload.
    pub payload: Value,
    /// Province code for the subject's routing token.
    pub province: Option<String>,
    /// The event's own `traceparent`, overriding the context's (`None`: the
    /// trace of the command or event that caused it). Set through
    /// [`Emit::in_trace`] for an event about a dossier.
    pub traceparent: Option<String>,
}

impl Emit {
    /// An event of a typed kind on `stream`.
    pub fn new<E: Event>(stream: impl Into<String>, event: &E, province: Option<String>) -> Self {
        Self {
            stream: stream.into(),
            kind: E::KIND.to_owned(),
            // Serialising plain data structs cannot fail.
            payload: serde_json::to_value(event).unwrap_or(Value::Null),
            province,
            traceparent: None,
        }
    }

    /// The event, stamped in the dossier's trace `trace` (a `traceparent`)
    /// with a fresh span id ([`trace::child_of`]); with `None` (the dossier
    /// has no trace yet) it keeps the trace of its cause.
    pub fn in_trace(mut self, trace: Option<&str>) -> Self {
        if let Some(trace) = trace {
            self.traceparent = Some(trace::child_of(trace));
        }
        self
    }
}

/// What a decision produced: events to append, the streams it read (whose
/// versions must still be the ones it saw), and the command's answer.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Events to append, in order.
    pub events: Vec<Emit>,
    /// Streams read but not written whose version must not have moved.
    pub reads: Vec<String>,
    /// The answer returned to the caller (and stored for retries).
    pub result: Value,
}

/// The outcome of a command.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The decision was committed.
    Applied {
        /// The events appended.
        events: Vec<StoredEvent>,
        /// The answer.
        result: Value,
    },
    /// The same command id was executed before: its stored reply.
    Duplicate {
        /// The reply stored with the first execution.
        reply: Option<Value>,
    },
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The domain refused it; nothing changed.
    #[error("refused: {}", .0.code)]
    Rejected(Rejection),
    /// Other writers kept winning the race.
    #[error("the state kept changing under the decision after {0} attempts")]
    Contended(u32),
    /// The store failed.
    #[error("event store unavailable")]
    Store(#[from] StoreError),
    /// The store is shutting down.
    #[error("event store is closed")]
    Closed,
}

struct Tracked<M> {
    model: M,
    position: i64,
    /// The last position of this engine's own appends applied before their
    /// commit (0 after a rebuild: everything folded since was read from the
    /// store). Whatever the model holds past it was read, so committed.
    queued_through: i64,
    versions: versions::StreamVersions,
    /// `recorded_at` of the last event folded: the earliest time the next
    /// predicted append may carry.
    recorded_at: Option<DateTime<Utc>>,
}

/// What the answers to queued appends tell the engine. Behind a plain mutex,
/// held only for a moment and never across an await: settling an answer must
/// not wait for the model's lock (a consumer loop polls its queued commits
/// only between its own decisions, so waiting there could deadlock).
#[derive(Default)]
struct Flags {
    /// An append applied before its commit did not commit as applied: the
    /// model holds facts the store does not, and is rebuilt from the store
    /// before it is used again.
    stale: bool,
    /// Inbox keys of appends queued and not yet answered. A second request
    /// with the same key waits for the first instead of deciding on a model
    /// that already holds the first one's (uncommitted) effects.
    in_flight: HashSet<(String, String)>,
    /// Appends queued and not yet answered, keyed or not.
    queued: usize,
    /// Counts rebuilds. An answer to an append queued before the last
    /// rebuild does not make the model stale again: the rebuilt model holds
    /// whatever of it committed and nothing of what did not.
    epoch: u64,
    /// Observed events still to check against the store before their copy is
    /// applied: set when an append did not commit as applied, which is most
    /// often a stream replayed onto a store that already holds its copies (a
    /// restored backup, a new prefix), whose neighbours are then stored too.
    careful: u32,
}

/// How many observed events are checked first after an append did not
/// commit as applied.
const CAREFUL_SPAN: u32 = 1024;

impl<M: Model> Tracked<M> {
    fn new() -> Self {
        Self {
            model: M::default(),
            position: 0,
            queued_through: 0,
            versions: versions::StreamVersions::default(),
            recorded_at: None,
        }
    }

    fn apply(&mut self, event: &StoredEvent) {
        // The store hands events out in position order; anything at or before
        // the position already applied was seen (a concurrent catch-up, or
        // our own append folded before it committed).
        if event.position <= self.position {
            return;
        }
        self.model.apply(event);
        self.versions.insert(&event.stream, event.version);
        self.recorded_at = Some(event.recorded_at);
        self.position = event.position;
    }
}

struct Inner<M> {
    store: Store,
    service: String,
    tracked: Mutex<Tracked<M>>,
    flags: Arc<std::sync::Mutex<Flags>>,
    rebuilds: AtomicU64,
}

/// The engine of one service: its store and the model folded from it.
///
/// **Pipelined decisions.** A decision is applied to the model as soon as
/// its append is queued, before it commits, and the lock is released while
/// the commit is awaited: the next decision — of another command or of the
/// consumer's next message — is made on a model that includes it, and many
/// decisions share one group commit. Each append carries a
/// [`Predicted`] head and time, so the store commits it only where the
/// model put it; if one does not commit as predicted (a conflict with
/// another writer, a store failure), the store refuses every later append
/// queued on top of it, the model is marked stale and rebuilt from the store
/// before the next decision, and the refused decisions are made again. The
/// committed log is therefore always a prefix of the decisions, in order,
/// each made on exactly the state the log held before it. Replies and acks
/// wait for the commit. Reads ([`Engine::read`]) may see a decision whose
/// commit is still in flight.
pub struct Engine<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Engine<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What a read of the model may reflect of this engine's own appends
/// ([`Engine::read_marked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    through: i64,
    epoch: u64,
}

/// How long [`Engine::settled`] waits for the store to answer the appends
/// a read reflects.
const SETTLE_WAIT: Duration = Duration::from_secs(5);
/// How often [`Engine::settled`] looks whether an append failed meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// How many events a catch-up reads per query.
const PAGE: usize = 2_000;
/// How many times a decision is retried when another writer wins the race.
const ATTEMPTS: u32 = 8;
/// How long a request waits before looking again for the outcome of an
/// in-flight request with the same inbox key.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(2);

/// A decision's append, queued and applied to the model, whose commit is
/// awaited with [`Committing::outcome`].
pub struct Committing {
    settle: Pin<Box<dyn Future<Output = Result<AppendOutcome, AppendError>> + Send>>,
}

impl std::fmt::Debug for Committing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committing")
    }
}

impl Committing {
    /// An append that failed before it was queued.
    pub fn failed(error: AppendError) -> Self {
        Self {
            settle: Box::pin(async move { Err(error) }),
        }
    }

    /// Wraps any future yielding an append's outcome.
    pub fn from_future(
        fut: impl Future<Output = Result<AppendOutcome, AppendError>> + Send + 'static,
    ) -> Self {
        Self {
            settle: Box::pin(fut),
        }
    }

    /// Waits for the commit: the events as stored, the duplicate's reply, or
    /// why it did not commit (`Conflict` or `Moved`: decide again).
    pub async fn outcome(self) -> Result<AppendOutcome, AppendError> {
        self.settle.await
    }
}

impl Future for Committing {
    type Output = Result<AppendOutcome, AppendError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.settle.as_mut().poll(cx)
    }
}

/// What [`Engine::submit_locked`] queued: the events as the model applied
/// them, and the inbox key it holds until it is settled with the answer —
/// or, if whoever waited for the answer gave up (a dropped future), settled
/// as unknown when dropped, which makes the model be rebuilt from the store.
struct Queued {
    flags: Arc<std::sync::Mutex<Flags>>,
    predicted: Vec<(i64, EventId)>,
    key: Option<(String, String)>,
    epoch: u64,
    settled: bool,
}

impl Queued {
    /// Releases the inbox key, and marks the model stale unless the append
    /// committed exactly as it was applied.
    fn settle(mut self, outcome: &Result<AppendOutcome, AppendError>) {
        self.finish(Some(outcome));
    }

    fn finish(&mut self, outcome: Option<&Result<AppendOutcome, AppendError>>) {
        self.settled = true;
        let as_predicted = match outcome {
            Some(Ok(AppendOutcome::Appended(events))) => {
                events.len() == self.predicted.len()
                    && events
                        .iter()
                        .zip(&self.predicted)
                        .all(|(e, (position, id))| e.position == *position && e.event_id == *id)
            }
            _ => self.predicted.is_empty(),
        };
        let mut flags = lock_flags(&self.flags);
        flags.queued = flags.queued.saturating_sub(1);
        if let Some(key) = &self.key {
            flags.in_flight.remove(key);
        }
        if !as_predicted && self.epoch == flags.epoch {
            flags.stale = true;
        }
        if !as_predicted {
            flags.careful = CAREFUL_SPAN;
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(None);
        }
    }
}

/// The flags, even if a panic poisoned their mutex (they are updated in
/// single statements, never left half-changed).
fn lock_flags(flags: &std::sync::Mutex<Flags>) -> std::sync::MutexGuard<'_, Flags> {
    flags
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<M: Model> Engine<M> {
    /// Opens the engine of `service` over `store`, replaying the whole store.
    pub async fn open(store: Store, service: &str) -> Result<Self, StoreError> {
        let engine = Self {
            inner: Arc::new(Inner {
                store,
                service: service.to_owned(),
                tracked: Mutex::new(Tracked::new()),
                flags: Arc::new(std::sync::Mutex::new(Flags::default())),
                rebuilds: AtomicU64::new(0),
            }),
        };
        {
            let mut tracked = engine.inner.tracked.lock().await;
            engine.catch_up_locked(&mut tracked).await?;
        }
        Ok(engine)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The service name recorded in event metadata.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        lock_flags(&self.inner.flags)
    }

    /// How many times the model was rebuilt from the store because an append
    /// did not commit as predicted.
    pub fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    async fn catch_up_locked(&self, tracked: &mut Tracked<M>) -> Result<(), StoreError> {
        let rebuild = {
            let mut flags = self.flags();
            let stale = std::mem::take(&mut flags.stale);
            if stale {
                flags.epoch += 1;
            }
            stale
        };
        if rebuild {
            // Start over: the model held appends that did not commit. Appends
            // still in flight that were queued on top of them are refused by
            // the store (their predicted head is gone), and those queued
            // before them committed before the failure was answered, so the
            // store alone is the truth here.
            *tracked = Tracked::new();
            self.inner.rebuilds.fetch_add(1, Ordering::Relaxed);
            tracing::info!(service = %self.inner.service, "service.model.rebuild");
        } else if self.flags().queued > 0 {
            // Appends of ours are in flight: the model is ahead of the
            // store's committed head, and what the store holds beyond the
            // model's position can only be another writer's — whose appends
            // make ours be refused as `Moved`, and the model rebuilt. The
            // read can wait until nothing is in flight.
            return Ok(());
        }
        loop {
            let page = self.inner.store.read_from(tracked.position, PAGE).await?;
            let done = page.len() < PAGE;
            for event in &page {
                tracked.apply(event);
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Reads the model after catching up with the store. The model may
    /// include decisions whose commit is in flight (see [`Engine`]).
    pub async fn read<R>(&self, f: impl FnOnce(&M) -> R) -> Result<R, StoreError> {
        let mut tracked = self.inner.tracked.lock().await;
        self.catch_up_locked(&mut tracked).await?;
        Ok(f(&tracked.model))
    }

    /// Reads the model like [`Engine::read`], and marks what the answer may
    /// reflect: every append of this engine applied to the model so far,
    /// committed or not. [`Engine::settled`] waits for those to commit.
    pub async fn read_marked<R>(&self, f: impl FnOnce(&M) -> R) -> Result<(R, Mark), StoreError> {
        let mut tracked = self.inner.tracked.lock().await;
        self.catch_up_locked(&mut tracked).await?;
        let answer = f(&tracked.model);
        let mark = Mark {
            through: tracked.queued_through,
            epoch: self.flags().epoch,
        };
        Ok((answer, mark))
    }

    /// Waits until every append `mark` covers has been answered by the
    /// store: `true` when each committed where the model put it, so every
    /// event the marked answer reflects is in the store, at the position
    /// the model holds; `false` when one did not (the model is rebuilt on
    /// its next read, and the answer must be read again). A store that has
    /// answered none of them within [`SETTLE_WAIT`] is
    /// [`StoreError::Stalled`].
    ///
    /// Why the commit of the position suffices: an append that does not
    /// commit as applied makes the store refuse every append queued on top
    /// of it, so this engine's writer commits nothing past it until the
    /// model has been rebuilt (a new epoch).
    pub async fn settled(&self, mark: Mark) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let mut committed = self.inner.store.committed();
        loop {
            let reached = *committed.borrow_and_update() >= mark.through;
            {
                let flags = self.flags();
                if flags.stale || flags.epoch != mark.epoch {
                    return Ok(false);
                }
            }
            if reached {
                return Ok(true);
            }
            // A failed append moves no commit: look at the flags again
            // every little while rather than only on the next commit.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Stalled {
                    position: mark.through,
                    waited_ms: u64::try_from(SETTLE_WAIT.as_millis()).unwrap_or(u64::MAX),
                });
            }
            let slice = (deadline - now).min(SETTLE_POLL);
            let _ = tokio::time::timeout(slice, committed.changed()).await;
        }
    }

    /// Reads the model ([`Engine::read_marked`]) once every append the
    /// answer may reflect has committed ([`Engine::settled`]), reading
    /// again when one did not: the answer is of committed state, so what
    /// it names by position can be read from the store. For answers
    /// completed from the store outside the model's lock.
    pub async fn read_committed<R>(&self, f: impl Fn(&M) -> R) -> Result<R, StoreError> {
        loop {
            let (answer, mark) = self.read_marked(&f).await?;
            if self.settled(mark).await? {
                return Ok(answer);
            }
        }
    }

    /// The position of the last event folded into the model (including
    /// appends in flight).
    pub async fn position(&self) -> i64 {
        self.inner.tracked.lock().await.position
    }

    fn metadata(&self, ctx: &Context, emit: &Emit) -> Metadata {
        Metadata {
            actor: ctx.actor.clone(),
            correlation_id: ctx.correlation_id,
            causation_id: ctx.causation_id,
            traceparent: emit.traceparent.clone().or_else(|| ctx.traceparent.clone()),
            service: self.inner.service.clone(),
            province: emit.province.clone(),
        }
    }

    /// Turns a decision into an append request with optimistic-concurrency
    /// checks on every stream it writes or reads, at the versions the model
    /// saw.
    fn request(
        &self,
        tracked: &Tracked<M>,
        ctx: &Context,
        decision: &Decision,
        inbox: Option<InboxEntry>,
    ) -> AppendRequest {
        let mut checks: Vec<(String, ExpectedVersion)> = Vec::new();
        let streams = decision
            .events
            .iter()
            .map(|e| &e.stream)
            .chain(decision.reads.iter());
        for stream in streams {
            if checks.iter().any(|(s, _)| s == stream) {
                continue;
            }
            checks.push((stream.clone(), expected_version(tracked, stream)));
        }
        let events = decision
            .events
            .iter()
            .map(|e| NewEvent {
                event_id: EventId::new(),
                stream: e.stream.clone(),
                kind: e.kind.clone(),
                payload: e.payload.clone(),
                metadata: self.metadata(ctx, e),
            })
            .collect();
        AppendRequest {
            checks,
            events,
            inbox,
            predicted: None,
        }
    }

    /// Queues `request` with the head and time the model predicts, and
    /// applies its events to the model at once (see [`Engine`]). Holds the
    /// inbox key until [`Engine::settle`].
    async fn submit_locked(
        &self,
        tracked: &mut Tracked<M>,
        mut request: AppendRequest,
    ) -> Result<(Pending, Queued), AppendError> {
        let now = truncate_timestamp(Utc::now());
        let at = match tracked.recorded_at {
            Some(last) if last > now => last,
            _ => now,
        };
        let head = tracked.position;
        request.predicted = Some(Predicted {
            head,
            recorded_at: at,
        });
        // The events as the store will record them, if it does as predicted.
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut seen: HashSet<EventId> = HashSet::new();
        let mut stored = Vec::with_capacity(request.events.len());
        for e in &request.events {
            if !seen.insert(e.event_id) {
                // The same id twice in one request is one event.
                continue;
            }
            let version = versions
                .entry(e.stream.as_str())
                .or_insert_with(|| tracked.versions.get(&e.stream).unwrap_or(0));
            *version += 1;
            stored.push(StoredEvent {
                position: head + 1 + stored.len() as i64,
                stream: e.stream.clone(),
                version: *version,
                event_id: e.event_id,
                kind: e.kind.clone(),
                payload: e.payload.clone(),
                // Not kept for the model: only the store's copy is hashed.
                payload_text: String::new(),
                metadata: e.metadata.clone(),
                recorded_at: at,
                prev_hash: String::new(),
                hash: String::new(),
            });
        }
        let key = request
            .inbox
            .as_ref()
            .map(|i| (i.consumer.clone(), i.message_id.clone()));
        let pending = self.inner.store.submit(request).await?;
        for event in &stored {
            tracked.apply(event);
        }
        tracked.queued_through = tracked.position;
        let epoch = {
            let mut flags = self.flags();
            flags.queued += 1;
            if let Some(key) = &key {
                flags.in_flight.insert(key.clone());
            }
            flags.epoch
        };
        Ok((
            pending,
            Queued {
                flags: Arc::clone(&self.inner.flags),
                predicted: stored.iter().map(|e| (e.position, e.event_id)).collect(),
                key,
                epoch,
                settled: false,
            },
        ))
    }

    /// Whether an append with inbox key `key` is in flight; if so, the caller
    /// waits and asks the inbox again.
    fn busy(&self, key: &(String, String)) -> bool {
        self.flags().in_flight.contains(key)
    }

    /// Decides and commits a command. `decide` runs on the caught-up model;
    /// when another writer changes a stream it depends on first, the engine
    /// catches up and runs `decide` again. With a `command_id`, the reply is
    /// stored with the events, and a retry of the same id returns it.
    pub async fn execute<F>(
        &self,
        ctx: &Context,
        command_id: Option<&str>,
        decide: F,
    ) -> Result<Outcome, ExecuteError>
    where
        F: Fn(&M) -> Result<Decision, Rejection>,
    {
        let consumer = format!("cmd:{}", self.inner.service);
        let key = command_id.map(|id| (consumer.clone(), id.to_owned()));
        let mut attempt = 0;
        loop {
            if let Some((consumer, id)) = &key {
                if let Some(reply) = self.inner.store.inbox_lookup(consumer, id).await? {
                    return Ok(Outcome::Duplicate { reply });
                }
            }
            if key.as_ref().is_some_and(|k| self.busy(k)) {
                // The same command is being committed: its stored reply is
                // the answer, once it is there.
                tokio::time::sleep(IN_FLIGHT_POLL).await;
                continue;
            }
            let mut tracked = self.inner.tracked.lock().await;
            self.catch_up_locked(&mut tracked).await?;
            let decision = decide(&tracked.model).map_err(ExecuteError::Rejected)?;
            let inbox = key.as_ref().map(|(consumer, id)| InboxEntry {
                consumer: consumer.clone(),
                message_id: id.clone(),
                reply: Some(decision.result.clone()),
            });
            let request = self.request(&tracked, ctx, &decision, inbox);
            let (pending, queued) = match self.submit_locked(&mut tracked, request).await {
                Ok(queued) => queued,
                // Queuing fails only when the store is closed or the request
                // cannot be encoded; nothing was queued.
                Err(AppendError::Store(e)) => return Err(ExecuteError::Store(e)),
                Err(_) => return Err(ExecuteError::Closed),
            };
            // First attempt: the lock is released while the append waits for
            // its group commit, so other decisions are made meanwhile and
            // share the batch. After a failed attempt the engine holds the
            // lock through the commit, so no other decision of this process
            // can overtake this one again: a hot stream (the decision log)
            // makes progress instead of spinning.
            let held = if attempt == 0 {
                drop(tracked);
                None
            } else {
                Some(tracked)
            };
            let outcome = pending.outcome().await;
            queued.settle(&outcome);
            drop(held);
            match outcome {
                Ok(AppendOutcome::Appended(events)) => {
                    return Ok(Outcome::Applied {
                        events,
                        result: decision.result,
                    });
                }
                Ok(AppendOutcome::Duplicate { reply }) => return Ok(Outcome::Duplicate { reply }),
                Err(AppendError::Conflict { .. } | AppendError::Moved { .. }) => {
                    attempt += 1;
                    if attempt >= ATTEMPTS {
                        return Err(ExecuteError::Contended(ATTEMPTS));
                    }
                }
                Err(AppendError::Store(e)) => return Err(ExecuteError::Store(e)),
                Err(AppendError::Closed) => return Err(ExecuteError::Closed),
            }
        }
    }

    /// Records an event of another service: queues the append of its copy
    /// (a deterministic id, so a redelivered message cannot be copied twice)
    /// with this service's reactions to it and the consumer's inbox entry,
    /// applies it to the model, and returns the commit to await. The caller
    /// (the consumer loop) acks the message once it committed; on `Conflict`
    /// or `Moved` it calls this again.
    pub async fn observe<F>(
        &self,
        envelope: &Envelope,
        inbox: InboxEntry,
        react: F,
    ) -> Result<Committing, ExecuteError>
    where
        F: FnOnce(&M, &Envelope) -> Result<Decision, Rejection>,
    {
        let key = (inbox.consumer.clone(), inbox.message_id.clone());
        while self.busy(&key) {
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
        let copy_id = observed_id(envelope.event_id, &self.inner.service);
        let careful = {
            let mut flags = self.flags();
            let careful = flags.careful > 0;
            flags.careful = flags.careful.saturating_sub(1);
            careful
        };
        let mut tracked = self.inner.tracked.lock().await;
        self.catch_up_locked(&mut tracked).await?;
        if careful && self.inner.store.contains_event(copy_id).await? {
            // Recorded before (under another consumer name, or the inbox
            // entry is what is missing): its copy and reactions are in the
            // store and the model. Only the inbox entry is appended, so the
            // message is known as handled; nothing is applied.
            self.flags().careful = CAREFUL_SPAN;
            let request = AppendRequest {
                inbox: Some(inbox),
                ..AppendRequest::default()
            };
            return Ok(self.committing(tracked, request).await);
        }
        let origin = gradeflow_proto::events::service_of(&envelope.kind)
            .unwrap_or("unknown")
            .to_owned();
        let copy = NewEvent {
            event_id: copy_id,
            stream: envelope.stream.clone(),
            kind: envelope.kind.clone(),
            payload: envelope.payload.clone(),
            metadata: Metadata {
                actor: envelope.actor.clone(),
                correlation_id: envelope.correlation_id,
                causation_id: Some(envelope.event_id.as_uuid()),
                traceparent: envelope.traceparent.clone(),
                service: origin,
                province: None,
            },
        };
        // The reaction sees the model as it was before the observed fact (the
        // model only changes when the copy is appended) and the fact itself,
        // and must combine the two.
        let decision = react(&tracked.model, envelope).map_err(ExecuteError::Rejected)?;
        let ctx = Context {
            actor: envelope.actor.clone(),
            correlation_id: envelope.correlation_id,
            causation_id: Some(envelope.event_id.as_uuid()),
            traceparent: envelope.traceparent.clone(),
        };
        let mut request = self.request(&tracked, &ctx, &decision, Some(inbox));
        // The copy's stream is checked too: the model predicts its version.
        if !request.checks.iter().any(|(s, _)| *s == copy.stream) {
            let expected = expected_version(&tracked, &copy.stream);
            request.checks.push((copy.stream.clone(), expected));
        }
        request.events.insert(0, copy);
        Ok(self.committing(tracked, request).await)
    }

    /// Queues `request` (applying it to the model), releases the model's
    /// lock, and returns the commit to await, which settles the append.
    async fn committing(
        &self,
        mut tracked: tokio::sync::MutexGuard<'_, Tracked<M>>,
        request: AppendRequest,
    ) -> Committing {
        let (pending, queued) = match self.submit_locked(&mut tracked, request).await {
            Ok(queued) => queued,
            Err(e) => return Committing::failed(e),
        };
        drop(tracked);
        Committing::from_future(async move {
            let outcome = pending.outcome().await;
            queued.settle(&outcome);
            outcome
        })
    }
}

/// What a stream's version must still be for a decision the model made.
fn expected_version<M>(tracked: &Tracked<M>, stream: &str) -> ExpectedVersion {
    match tracked.versions.get(stream) {
        Some(v) => ExpectedVersion::Exactly(v),
        None => ExpectedVersion::NoStream,
    }
}

/// The id of this service's copy of an observed event: a name-based UUID of
/// the original id and the observing service, the same on every redelivery.
pub fn observed_id(original: EventId, service: &str) -> EventId {
    EventId(Uuid::new_v5(&original.as_uuid(), service.as_bytes()))
}
