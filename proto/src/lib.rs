//! `gradeflow-proto`: the wire contracts every gradeflow service and tool
//! shares — typed ids, tiers, grades, the nouns of the domain, every command
//! and event with its versioned kind, the envelopes of `API.md`, and the NATS
//! names built from a prefix. Pure data: no I/O lives here.

pub mod codes;
pub mod commands;
pub mod envelope;
pub mod events;
pub mod grade;
pub mod ids;
pub mod model;
pub mod names;
pub mod schema;
pub mod tier;

pub use codes::ErrorCode;
pub use envelope::{
    Actor, CommandEnvelope, CommandReply, Envelope, Metadata, Rejection, Role, TypedReply,
};
pub use grade::Grade;
pub use ids::{
    CommandId, CorrelationId, CycleId, DecisionId, DossierId, EventId, OrgId, SubjectId,
};
pub use model::*;
pub use names::Names;
pub use tier::{Tier, Tiers};
