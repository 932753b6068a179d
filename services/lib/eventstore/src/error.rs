//! Errors of the event store. A message says what the store was doing; the
//! cause is kept as the error's source, never repeated in the message.

use std::sync::Arc;

use crate::model::ExpectedVersion;

/// A failure of the store itself (database, schema, corrupt rows). Cheap to
/// clone, so one failed batch can report the same error to every caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported event store URL `{0}` (expected sqlite://… or postgres://…)")]
    UnsupportedUrl(String),
    /// The PostgreSQL schema name is not a plain lowercase identifier.
    #[error("invalid schema name `{0}` (use 1–63 characters of a–z, 0–9 and _, not starting with a digit)")]
    InvalidSchema(String),
    /// Opening the database (or creating the schema) failed.
    #[error("cannot open the event store database")]
    Connect(#[source] Arc<sqlx::Error>),
    /// Running the migrations failed.
    #[error("cannot migrate the event store schema")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    /// A query or transaction failed.
    #[error("event store query failed")]
    Database(#[source] Arc<sqlx::Error>),
    /// An event, reply or metadata could not be encoded as JSON.
    #[error("cannot encode {what} as JSON")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The operation does not exist on this backend.
    #[error("not supported on this backend: {0}")]
    Unsupported(&'static str),
    /// A stored row cannot be read back into its type.
    #[error("stored row at position {position} is unreadable: {problem}")]
    Corrupt {
        /// Its position (or 0 for rows of other tables).
        position: i64,
        /// What is wrong with it.
        problem: String,
    },
    /// Appends queued in this process did not commit (or fail) in time:
    /// the writer is stuck, most often on a database that does not answer.
    #[error("the store has not committed up to position {position} after {waited_ms} ms")]
    Stalled {
        /// The position waited for.
        position: i64,
        /// How long it was waited for.
        waited_ms: u64,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

impl StoreError {
    /// Whether the database could not be reached at all (as opposed to one
    /// statement failing): retrying other requests right now is pointless.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) | StoreError::Connect(e) => matches!(
                **e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

/// Why an append did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// Optimistic concurrency: a stream was not at the expected version.
    /// Nothing of the request was written.
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream whose check failed (the first failing one).
        stream: String,
        /// What the request expected.
        expected: ExpectedVersion,
        /// The version the stream is actually at (0 for no stream).
        actual: u64,
    },
    /// The request's [`crate::Predicted`] head or time did not hold: the log
    /// is not where the caller believed. Nothing of the request was written.
    #[error("the store's last position is {actual}, the request expected {expected}")]
    Moved {
        /// The head position the request expected.
        expected: i64,
        /// The actual head position.
        actual: i64,
    },
    /// The store failed; the request was not written.
    #[error("event store failed while appending")]
    Store(#[from] StoreError),
    /// The store was closed before the request reached its writer.
    #[error("the event store is closed")]
    Closed,
}
