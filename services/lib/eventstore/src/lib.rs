//! `gradeflow-eventstore`: the SQL event store every gradeflow service keeps
//! as its system of record (`ARCHITECTURE.md` § Storage), on sqlx with
//! runtime queries, for SQLite (the embedded default) and PostgreSQL (one
//! schema per service), chosen at runtime from the URL.
//!
//! # Tables
//! * `events` — the log: `position` (global, contiguous from 1, assigned by
//!   the writer), `stream`, `version` (UNIQUE with `stream`), `event_id`
//!   (UNIQUE), `kind`, `payload` and `metadata` (TEXT: the exact canonical
//!   JSON bytes that were hashed — never jsonb), `recorded_at` (TEXT, fixed
//!   RFC 3339 form `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so it reads back
//!   identically), `prev_hash`, `hash`.
//! * `chain_head` — one row (`id = 1`): last position, hash, recorded_at.
//! * `inbox` — `(consumer, message_id)` PK, `reply`, `recorded_at`.
//! * `outbox_positions` — `publisher` PK, `position`.
//! * `dead_letters` — `(consumer, message_id)` PK, `subject`, `deliveries`,
//!   `reason`, `payload`, `recorded_at`.
//!
//! # Immutability triggers
//! UPDATE and DELETE on `events` are refused by triggers named
//! `events_no_update` and `events_no_delete` in both databases (error text
//! `events are immutable`). PostgreSQL also has `events_no_truncate`; its
//! triggers call the function `events_immutable()`. Tampering below SQL (or
//! after dropping a trigger) is found by [`Store::verify`].
//!
//! # Hash chain
//! `hash = sha256_hex(prev_hash_hex || canonical_record)`; the first
//! `prev_hash` is 64 zeros. The canonical record is the JSON object
//! `{event_id, kind, metadata, payload, position, recorded_at, stream,
//! version}` with keys sorted recursively and no whitespace; see
//! [`canonical`].
//!
//! # Writes
//! Every append goes through the store's one writer task (group commit); see
//! the `writer` module docs for the rules per request. On PostgreSQL each
//! batch transaction first locks the `chain_head` row (`SELECT … FOR
//! UPDATE`) and compares it with the writer's in-memory head, so several
//! processes or replicas may share one store: their batches serialise on the
//! row, and a writer that finds the head moved reloads it (and forgets its
//! cached stream versions). On SQLite `BEGIN IMMEDIATE` plays the same part.

pub mod canonical;
mod db;
mod error;
mod model;
pub mod raw;
mod store;
mod writer;

pub use error::{AppendError, StoreError};
pub use model::{
    AppendOutcome, AppendRequest, Backend, DeadLetter, ExpectedVersion, InboxEntry, NewEvent,
    Predicted, StoreOptions, StoredEvent, VerifyReport, WriterStats,
};
pub use store::{OutboxEvent, Pending, Store};

/// Names of the immutability triggers on `events`, for tools and tests.
pub mod triggers {
    /// Refuses UPDATE (both databases).
    pub const NO_UPDATE: &str = "events_no_update";
    /// Refuses DELETE (both databases).
    pub const NO_DELETE: &str = "events_no_delete";
    /// Refuses TRUNCATE (PostgreSQL only; SQLite has no TRUNCATE).
    pub const NO_TRUNCATE: &str = "events_no_truncate";
    /// The error text the triggers raise.
    pub const MESSAGE: &str = "events are immutable";
}
