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
//!   win: the loser catches up and decides again.
//!
//! Commands are idempotent by their command id: the reply is committed in the
//! store's inbox in the same transaction as the events, and a retry gets the
//! stored reply without deciding again.

pub mod client;
pub mod runtime;
pub mod trace;
pub mod tree;
pub mod workflow;

use std::collections::HashMap;
use std::sync::Arc;

use gradeflow_eventstore::{
    AppendError, AppendOutcome, AppendRequest, ExpectedVersion, InboxEntry, NewEvent, Store,
    StoreError, StoredEvent,
};
use gradeflow_proto::events::Event;
use gradeflow_proto::{Actor, CorrelationId, Envelope, EventId, Metadata, Rejection};
use serde_json::Value;
use tokio::sync::Mutex;

pub use tree::{OrgNode, OrgTree};
use uuid::Uuid;
pub use workflow::{answer, payload, reply, Observed, Workflow};

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
    versions: HashMap<String, u64>,
}

impl<M: Model> Tracked<M> {
    fn apply(&mut self, event: &StoredEvent) {
        // The store hands events out in position order; anything at or before
        // the position already applied was seen (a concurrent catch-up).
        if event.position <= self.position {
            return;
        }
        self.model.apply(event);
        self.versions.insert(event.stream.clone(), event.version);
        self.position = event.position;
    }
}

struct Inner<M> {
    store: Store,
    service: String,
    tracked: Mutex<Tracked<M>>,
}

/// The engine of one service: its store and the model folded from it.
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

/// How many events a catch-up reads per query.
const PAGE: usize = 2_000;
/// How many times a decision is retried when another writer wins the race.
const ATTEMPTS: u32 = 8;

impl<M: Model> Engine<M> {
    /// Opens the engine of `service` over `store`, replaying the whole store.
    pub async fn open(store: Store, service: &str) -> Result<Self, StoreError> {
        let engine = Self {
            inner: Arc::new(Inner {
                store,
                service: service.to_owned(),
                tracked: Mutex::new(Tracked {
                    model: M::default(),
                    position: 0,
                    versions: HashMap::new(),
                }),
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

    async fn catch_up_locked(&self, tracked: &mut Tracked<M>) -> Result<(), StoreError> {
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

    /// Reads the model after catching up with the store.
    pub async fn read<R>(&self, f: impl FnOnce(&M) -> R) -> Result<R, StoreError> {
        let mut tracked = self.inner.tracked.lock().await;
        self.catch_up_locked(&mut tracked).await?;
        Ok(f(&tracked.model))
    }

    /// The position of the last event folded into the model.
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
            let expected = match tracked.versions.get(stream) {
                Some(v) => ExpectedVersion::Exactly(*v),
                None => ExpectedVersion::NoStream,
            };
            checks.push((stream.clone(), expected));
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
        }
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
        if let Some(id) = command_id {
            if let Some(reply) = self.inner.store.inbox_lookup(&consumer, id).await? {
                return Ok(Outcome::Duplicate { reply });
            }
        }
        for attempt in 0..ATTEMPTS {
            let mut tracked = self.inner.tracked.lock().await;
            self.catch_up_locked(&mut tracked).await?;
            let decision = decide(&tracked.model).map_err(ExecuteError::Rejected)?;
            let inbox = command_id.map(|id| InboxEntry {
                consumer: consumer.clone(),
                message_id: id.to_owned(),
                reply: Some(decision.result.clone()),
            });
            let request = self.request(&tracked, ctx, &decision, inbox);
            // First attempt: optimistic. The lock is released while the append
            // waits for its group commit, so other commands decide meanwhile
            // and share the batch; the version checks keep that safe. After a
            // conflict the engine holds the lock through the append, so no
            // other decision of this process can overtake this one again: a
            // hot stream (the decision log) makes progress instead of
            // spinning.
            let held = if attempt == 0 {
                drop(tracked);
                None
            } else {
                Some(tracked)
            };
            match self.inner.store.append(request).await {
                Ok(AppendOutcome::Appended(events)) => {
                    let mut tracked = match held {
                        Some(t) => t,
                        None => self.inner.tracked.lock().await,
                    };
                    self.catch_up_locked(&mut tracked).await?;
                    return Ok(Outcome::Applied {
                        events,
                        result: decision.result,
                    });
                }
                Ok(AppendOutcome::Duplicate { reply }) => return Ok(Outcome::Duplicate { reply }),
                Err(AppendError::Conflict { .. }) => continue,
                Err(AppendError::Store(e)) => return Err(ExecuteError::Store(e)),
                Err(AppendError::Closed) => return Err(ExecuteError::Closed),
            }
        }
        Err(ExecuteError::Contended(ATTEMPTS))
    }

    /// Builds the append request that records an event of another service
    /// (copied into this store, with a deterministic id so a redelivered
    /// message cannot be copied twice) together with this service's
    /// reactions to it. The caller (the consumer loop) appends it with its
    /// inbox entry; on a version conflict it calls this again.
    pub async fn observe<F>(&self, envelope: &Envelope, react: F) -> Result<Observed, ExecuteError>
    where
        F: FnOnce(&M, &Envelope) -> Result<Decision, Rejection>,
    {
        let mut tracked = self.inner.tracked.lock().await;
        self.catch_up_locked(&mut tracked).await?;
        let origin = gradeflow_proto::events::service_of(&envelope.kind)
            .unwrap_or("unknown")
            .to_owned();
        let copy = NewEvent {
            event_id: observed_id(envelope.event_id, &self.inner.service),
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
        // model only changes when the store commits the copy) and the fact
        // itself, and must combine the two.
        let decision = react(&tracked.model, envelope).map_err(ExecuteError::Rejected)?;
        let ctx = Context {
            actor: envelope.actor.clone(),
            correlation_id: envelope.correlation_id,
            causation_id: Some(envelope.event_id.as_uuid()),
            traceparent: envelope.traceparent.clone(),
        };
        let reaction = self.request(&tracked, &ctx, &decision, None);
        let mut events = vec![copy];
        events.extend(reaction.events);
        Ok((reaction.checks, events))
    }
}

/// The id of this service's copy of an observed event: a name-based UUID of
/// the original id and the observing service, the same on every redelivery.
pub fn observed_id(original: EventId, service: &str) -> EventId {
    EventId(Uuid::new_v5(&original.as_uuid(), service.as_bytes()))
}
