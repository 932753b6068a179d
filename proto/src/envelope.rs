//! The envelopes that carry every event and every command on the wire
//! (`API.md` § "Events on the wire"), and the actor recorded with each.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, CorrelationId, EventId, OrgId};

/// A role, valid for an org and its whole subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A unit's board: files self-reviews and meeting outcomes.
    Submitter,
    /// An organisation board: appraises dossiers.
    Appraiser,
    /// A standing committee: decides grades.
    Authority,
    /// Central staff: everything the above may, plus orgs and cycles.
    Central,
    /// Reads only.
    Auditor,
    /// gradeflow itself (events caused by other events).
    System,
}

impl Role {
    /// Whether a holder of `self` may act as `needed`.
    pub fn covers(self, needed: Role) -> bool {
        self == needed
            || (self == Role::Central
                && matches!(needed, Role::Submitter | Role::Appraiser | Role::Authority))
            || self == Role::System
    }
}

/// Who did something: recorded with every command and every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    /// The subject of the caller's token (a user name or id).
    pub sub: String,
    /// The role the caller acted in.
    pub role: Role,
    /// The org the role was granted at.
    pub org: OrgId,
}

/// An event as published on `<prefix>.evt.<service>.<province|_>.<kind>`.
/// `P` is the payload: a typed event struct, or `serde_json::Value` for code
/// that only routes events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<P = serde_json::Value> {
    /// Unique id; also the `Nats-Msg-Id` header.
    pub event_id: EventId,
    /// The versioned kind, e.g. `grade_decided.v1`.
    pub kind: String,
    /// The aggregate stream, e.g. `dossier-<uuid>`.
    pub stream: String,
    /// Version of the event within its stream, from 1.
    pub version: u64,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// The request the event belongs to.
    pub correlation_id: CorrelationId,
    /// The event (or command) that caused this one.
    pub causation_id: Option<uuid::Uuid>,
    /// W3C trace context, `00-<trace>-<span>-<flags>`.
    pub traceparent: Option<String>,
    /// The event's own fields.
    pub payload: P,
}

/// What the event store keeps beside each event's payload: everything of the
/// wire envelope that is not the payload or the store's own bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Metadata {
    /// Who caused the event.
    pub actor: Actor,
    /// The request the event belongs to.
    pub correlation_id: CorrelationId,
    /// The event or command that caused this one.
    #[serde(default)]
    pub causation_id: Option<uuid::Uuid>,
    /// W3C trace context, `00-<trace>-<span>-<flags>`.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The service that recorded the event (the `<service>` subject token).
    pub service: String,
    /// Province code, the routing key of the event's subject (`_` when none).
    #[serde(default)]
    pub province: Option<String>,
}

/// A command sent over request/reply on `<prefix>.cmd.<service>.<command>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandEnvelope<P = serde_json::Value> {
    /// Unique per request; a retry with the same id is answered with the first
    /// outcome and changes nothing.
    pub command_id: CommandId,
    /// The versioned command kind, e.g. `submit_self_review.v1`.
    pub kind: String,
    /// Who sends it; recorded in the metadata of every event it causes.
    pub actor: Actor,
    /// W3C trace context of the caller.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The command's own fields.
    pub payload: P,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandReply {
    /// The command was applied (or had been, for a retry).
    Accepted {
        /// Ids of the events it appended.
        event_ids: Vec<EventId>,
        /// The command's answer (e.g. the new dossier id).
        #[serde(default)]
        result: serde_json::Value,
    },
    /// The command was refused; nothing changed.
    Rejected(Rejection),
}

/// A refusal with a stable code, in English and Vietnamese.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    /// Stable snake_case code, e.g. `wrong_state`.
    pub code: String,
    /// English message.
    pub message: String,
    /// Vietnamese message.
    pub message_vi: String,
    /// Structured details (e.g. rule violations).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Rejection {
    /// A rejection without details.
    pub fn new(code: &str, message: impl Into<String>, message_vi: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            message_vi: message_vi.into(),
            details: serde_json::Value::Null,
        }
    }

    /// The same rejection with details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}
