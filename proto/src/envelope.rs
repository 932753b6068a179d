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

impl CommandReply {
    /// The bytes of `CommandReply::Accepted { event_ids, result }` encoded
    /// straight from a typed `result`, without building a
    /// `serde_json::Value` of it first: the same bytes `serde_json::to_vec`
    /// gives for the reply holding `result` as a value. For large answers
    /// (the progress tree), where the value would cost more than the
    /// encoding itself.
    pub fn encode_accepted<R: Serialize + ?Sized>(
        event_ids: &[EventId],
        result: &R,
    ) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Accepted<'a, R: ?Sized> {
            outcome: &'static str,
            event_ids: &'a [EventId],
            result: &'a R,
        }
        serde_json::to_vec(&Accepted {
            outcome: "accepted",
            event_ids,
            result,
        })
    }
}

/// A [`CommandReply`] whose result is read straight into a type of the
/// caller's (a large answer parsed once, not into a `serde_json::Value`
/// first). It reads the same bytes as [`CommandReply`].
#[derive(Debug, Clone, PartialEq)]
pub enum TypedReply<R> {
    /// The command was applied (or had been, for a retry).
    Accepted {
        /// Ids of the events it appended.
        event_ids: Vec<EventId>,
        /// The command's answer.
        result: R,
    },
    /// The command was refused; nothing changed.
    Rejected(Rejection),
}

impl<R: serde::de::DeserializeOwned> TypedReply<R> {
    /// Reads a reply as [`CommandReply`] encodes it. (Not through serde's
    /// tagged enums, which buffer the whole body before reading it.)
    pub fn from_slice(body: &[u8]) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Outcome {
            Accepted,
            Rejected,
        }
        #[derive(Deserialize)]
        struct Flat<R> {
            outcome: Outcome,
            #[serde(default)]
            event_ids: Vec<EventId>,
            result: Option<R>,
            code: Option<String>,
            message: Option<String>,
            message_vi: Option<String>,
            #[serde(default)]
            details: serde_json::Value,
        }
        use serde::de::Error as _;
        let flat: Flat<R> = serde_json::from_slice(body)?;
        match flat.outcome {
            Outcome::Accepted => Ok(TypedReply::Accepted {
                event_ids: flat.event_ids,
                result: match flat.result {
                    Some(result) => result,
                    // An absent result reads as `null`, as in
                    // `CommandReply`.
                    None => R::deserialize(serde_json::Value::Null)?,
                },
            }),
            Outcome::Rejected => Ok(TypedReply::Rejected(Rejection {
                code: flat
                    .code
                    .ok_or_else(|| serde_json::Error::missing_field("code"))?,
                message: flat
                    .message
                    .ok_or_else(|| serde_json::Error::missing_field("message"))?,
                message_vi: flat
                    .message_vi
                    .ok_or_else(|| serde_json::Error::missing_field("message_vi"))?,
                details: flat.details,
            })),
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{json, Value};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Node {
        code: String,
        counts: std::collections::BTreeMap<String, u64>,
        percent: f64,
        children: Vec<Node>,
    }

    fn sample() -> Node {
        let leaf = |code: &str| Node {
            code: code.to_owned(),
            counts: [("b".to_owned(), 2), ("a".to_owned(), 1)].into(),
            percent: 12.5,
            children: Vec::new(),
        };
        Node {
            children: vec![leaf("VN.01"), leaf("VN.02")],
            ..leaf("VN")
        }
    }

    #[test]
    fn an_answer_encoded_straight_from_its_type_is_the_bytes_of_the_reply_holding_its_value() {
        let ids = [EventId::new(), EventId::new()];
        for event_ids in [&ids[..], &[]] {
            let typed = CommandReply::encode_accepted(event_ids, &sample()).unwrap();
            let through_value = serde_json::to_vec(&CommandReply::Accepted {
                event_ids: event_ids.to_vec(),
                result: serde_json::to_value(sample()).unwrap(),
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(typed).unwrap(),
                String::from_utf8(through_value).unwrap()
            );
        }
    }

    #[test]
    fn a_typed_reply_reads_what_a_command_reply_encodes() {
        let id = EventId::new();
        let accepted = CommandReply::Accepted {
            event_ids: vec![id],
            result: serde_json::to_value(sample()).unwrap(),
        };
        let body = serde_json::to_vec(&accepted).unwrap();
        assert_eq!(
            TypedReply::<Node>::from_slice(&body).unwrap(),
            TypedReply::Accepted {
                event_ids: vec![id],
                result: sample()
            }
        );
        let rejection = Rejection {
            code: "wrong_state".to_owned(),
            message: "no".to_owned(),
            message_vi: "không".to_owned(),
            details: json!({"state": "open"}),
        };
        let body = serde_json::to_vec(&CommandReply::Rejected(rejection.clone())).unwrap();
        assert_eq!(
            TypedReply::<Node>::from_slice(&body).unwrap(),
            TypedReply::Rejected(rejection)
        );
        // No result reads as null, as in `CommandReply`.
        let body = br#"{"outcome":"accepted","event_ids":[]}"#;
        assert_eq!(
            TypedReply::<Value>::from_slice(body).unwrap(),
            TypedReply::Accepted {
                event_ids: vec![],
                result: Value::Null
            }
        );
    }

    #[test]
    fn a_reply_that_is_not_one_is_an_error() {
        for body in [
            &br#"{"outcome":"maybe","result":1}"#[..],
            br#"{"outcome":"rejected","message":"m","message_vi":"m"}"#,
            br#"{"outcome":"accepted","result":{"code":1}}"#,
            br#"[]"#,
        ] {
            assert!(
                TypedReply::<Node>::from_slice(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
