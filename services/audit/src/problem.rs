//! [`Problem`]: one thing an auditor's check found wrong, named by where it
//! is — the store and position of an event, the seq of a decision-log
//! record, the sequence of an audit-stream message — so that a person can go
//! and look at exactly that row or message.

use serde::{Deserialize, Serialize};

/// Which check found a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A store's hash chain (`Store::verify`), or an exported store's
    /// events.
    Store,
    /// The decision log: record chain, hashes, signatures, keys.
    DecisionLog,
    /// The decision log against `<prefix>_AUDIT`.
    AuditStream,
    /// An export file's own integrity and completeness.
    Export,
}

impl Check {
    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Check::Store => "store",
            Check::DecisionLog => "decision log",
            Check::AuditStream => "audit stream",
            Check::Export => "export file",
        }
    }
}

/// One problem, with every coordinate that locates it (the others `null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The check that found it.
    pub check: Check,
    /// The store (service name) it is in.
    pub store: Option<String>,
    /// The event's position in that store.
    pub position: Option<i64>,
    /// The decision-log record's seq.
    pub seq: Option<u64>,
    /// The audit-stream message's sequence.
    pub stream_seq: Option<u64>,
    /// What is wrong, in English.
    pub problem: String,
}

impl Problem {
    /// A problem of `check` with no coordinates yet.
    pub fn new(check: Check, problem: impl Into<String>) -> Self {
        Self {
            check,
            store: None,
            position: None,
            seq: None,
            stream_seq: None,
            problem: problem.into(),
        }
    }

    /// The same problem in `store`.
    pub fn in_store(mut self, store: impl Into<String>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// The same problem at `position` (of its store).
    pub fn at(mut self, position: i64) -> Self {
        self.position = Some(position);
        self
    }

    /// The same problem about record `seq`.
    pub fn record(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// The same problem about audit-stream message `stream_seq`.
    pub fn message(mut self, stream_seq: u64) -> Self {
        self.stream_seq = Some(stream_seq);
        self
    }
}
