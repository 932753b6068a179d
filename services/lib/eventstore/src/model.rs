//! The values the store takes and gives back: events to append and as
//! stored, append requests and outcomes, inbox entries, dead letters, the
//! verification report and the connection options.

use chrono::{DateTime, Utc};
use gradeflow_proto::{Envelope, EventId, Metadata};

/// Which database a [`crate::Store`] runs on, chosen from its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite (`sqlite://…`), the embedded default.
    Sqlite,
    /// PostgreSQL (`postgres://…`), for production.
    Postgres,
}

/// How to open a [`crate::Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// PostgreSQL only: the schema holding this store's tables ("one schema
    /// per service" in a shared database). Created if missing and set as the
    /// `search_path` of every pooled connection. Ignored for SQLite.
    pub schema: Option<String>,
    /// Most append requests the writer commits in one transaction.
    pub max_batch: usize,
    /// Connections in the pool (readers and the writer share it).
    pub pool_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            schema: None,
            max_batch: 1000,
            pool_size: 8,
        }
    }
}

/// What a stream's version must be for a request to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Any version, including no stream at all.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be exactly at this version (0 means no stream).
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies the expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exactly(v) => actual == v,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exactly(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append. Its version and position are assigned by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id, chosen by the caller so that a retry is idempotent.
    pub event_id: EventId,
    /// The aggregate stream, e.g. `dossier-<uuid>`.
    pub stream: String,
    /// The versioned kind, e.g. `grade_decided.v1`.
    pub kind: String,
    /// The event's own fields. Stored as canonical JSON (keys sorted).
    pub payload: serde_json::Value,
    /// Actor, correlation, causation, trace context, service, province.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event with a fresh id.
    pub fn new(
        stream: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
        metadata: Metadata,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            stream: stream.into(),
            kind: kind.into(),
            payload,
            metadata,
        }
    }
}

/// A consumed message to record in the inbox together with the events its
/// handler appends, so a redelivery is recognised.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    /// The consumer (durable name) that handled the message.
    pub consumer: String,
    /// The message's id (e.g. the event id or `Nats-Msg-Id`).
    pub message_id: String,
    /// What to answer a redelivery with.
    pub reply: Option<serde_json::Value>,
}

/// One atomic append: all of it is written, or none of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppendRequest {
    /// Version expectations, checked before anything is written.
    pub checks: Vec<(String, ExpectedVersion)>,
    /// The events, appended in this order.
    pub events: Vec<NewEvent>,
    /// The consumed message this append handles, if any.
    pub inbox: Option<InboxEntry>,
    /// Where the caller expects its events to land, when it has already
    /// applied them to its own state before the commit (see [`Predicted`]).
    pub predicted: Option<Predicted>,
}

/// What a caller that applies its events before they commit (a service
/// engine pipelining its decisions) predicts about the store, so that the
/// store refuses the request rather than commit something the caller's
/// state does not match.
///
/// The request is refused with [`crate::AppendError::Moved`], writing
/// nothing, unless the store's last position is exactly `head`. The events
/// are then recorded at positions `head + 1 …` with `recorded_at` as their
/// time. Because each request of such a caller predicts the head its
/// predecessor leaves, a refused (or deduplicated) request makes every later
/// one of the same chain be refused too: the committed log is always a
/// prefix of what the caller decided, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predicted {
    /// The position of the store's last event before this request.
    pub head: i64,
    /// The time recorded for the events (microsecond precision; see
    /// [`crate::canonical::truncate_timestamp`]). Refused as
    /// [`crate::AppendError::Moved`] if earlier than the last event's.
    pub recorded_at: DateTime<Utc>,
}

impl AppendRequest {
    /// A request appending `events` with no checks and no inbox entry.
    pub fn new(events: Vec<NewEvent>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }

    /// Adds a version expectation on `stream`.
    pub fn expect(mut self, stream: impl Into<String>, expected: ExpectedVersion) -> Self {
        self.checks.push((stream.into(), expected));
        self
    }

    /// Records `entry` in the inbox with the events.
    pub fn with_inbox(mut self, entry: InboxEntry) -> Self {
        self.inbox = Some(entry);
        self
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
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
    /// The payload, parsed from [`StoredEvent::payload_text`].
    pub payload: serde_json::Value,
    /// The exact stored (and hashed) payload bytes: canonical JSON.
    pub payload_text: String,
    /// The metadata.
    pub metadata: Metadata,
    /// When the writer recorded it (microsecond precision; never earlier
    /// than the event before it).
    pub recorded_at: DateTime<Utc>,
    /// Hash of the previous event (64 zeros for the first).
    pub prev_hash: String,
    /// `sha256_hex(prev_hash || canonical record)`.
    pub hash: String,
}

impl StoredEvent {
    /// The wire envelope of `API.md` § "Events on the wire"; `occurred_at` is
    /// the time the store recorded the event.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            event_id: self.event_id,
            kind: self.kind.clone(),
            stream: self.stream.clone(),
            version: self.version,
            occurred_at: self.recorded_at,
            actor: self.metadata.actor.clone(),
            correlation_id: self.metadata.correlation_id,
            causation_id: self.metadata.causation_id,
            traceparent: self.metadata.traceparent.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// The result of an append that did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum AppendOutcome {
    /// The events as stored, in request order. Events whose id was already
    /// stored are returned as they were stored then, not written again.
    Appended(Vec<StoredEvent>),
    /// The inbox entry was already present: the message had been handled.
    /// Nothing was written.
    Duplicate {
        /// The reply recorded when it was first handled.
        reply: Option<serde_json::Value>,
    },
}

/// A message a consumer gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The consumer (durable name).
    pub consumer: String,
    /// The message's id.
    pub message_id: String,
    /// The subject it arrived on.
    pub subject: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// Why it was given up on.
    pub reason: String,
    /// The message body as received.
    pub payload: String,
}

/// What [`crate::Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events read.
    pub events: u64,
    /// Hash of the last event, if any.
    pub head: Option<String>,
    /// The first position where the chain is broken, and the problem.
    pub first_broken: Option<(i64, String)>,
}

impl VerifyReport {
    /// Whether the whole chain verified.
    pub fn is_ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Counters of the writer task (for metrics: batch sizes, events appended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests answered by those transactions.
    pub requests: u64,
    /// Events written.
    pub events: u64,
}
