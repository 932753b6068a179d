//! JSON Schemas of every message, generated from the types. The generated
//! files are checked in under `proto/schemas/`; the contract test fails when
//! the code and the files drift, and `cargo run -p gradeflow-proto --example
//! write-schemas` (or `UPDATE_SCHEMAS=1` on the test) writes them anew.

use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::commands::{self as c, Command};
use crate::envelope::{CommandEnvelope, CommandReply, Envelope};
use crate::events::{self as e, DecisionLogRecord, Event};

/// One generated schema: its file name (relative to `proto/schemas/`) and body.
#[derive(Debug, Clone)]
pub struct NamedSchema {
    /// File name, e.g. `grade_decided.v1.json` or `commands/decide_batch.v1.json`.
    pub file: String,
    /// The message kind it describes.
    pub kind: String,
    /// The JSON Schema.
    pub schema: Value,
}

fn with_kind(mut schema: Value, kind: &str) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(kind));
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "kind".into(),
                json!({"type": "string", "const": kind, "description": "The versioned kind."}),
            );
        }
    }
    schema
}

fn event_schema<P: Event + JsonSchema>() -> NamedSchema {
    let schema = serde_json::to_value(schemars::schema_for!(Envelope<P>)).unwrap_or(Value::Null);
    NamedSchema {
        file: format!("{}.json", P::KIND),
        kind: P::KIND.into(),
        schema: with_kind(schema, P::KIND),
    }
}

fn command_schema<P: Command + JsonSchema>() -> NamedSchema {
    let schema =
        serde_json::to_value(schemars::schema_for!(CommandEnvelope<P>)).unwrap_or(Value::Null);
    NamedSchema {
        file: format!("commands/{}.json", P::KIND),
        kind: P::KIND.into(),
        schema: with_kind(schema, P::KIND),
    }
}

fn plain_schema<T: JsonSchema>(kind: &str) -> NamedSchema {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(kind));
    }
    NamedSchema {
        file: format!("{kind}.json"),
        kind: kind.into(),
        schema,
    }
}

/// Every schema gradeflow publishes, in a stable order.
pub fn all() -> Vec<NamedSchema> {
    vec![
        event_schema::<e::OrgRegistered>(),
        event_schema::<e::OrgRenamed>(),
        event_schema::<e::OrgMoved>(),
        event_schema::<e::OrgsMerged>(),
        event_schema::<e::CycleOpened>(),
        event_schema::<e::SubjectRegistered>(),
        event_schema::<e::SelfReviewSubmitted>(),
        event_schema::<e::MeetingRecorded>(),
        event_schema::<e::DossierAppraised>(),
        event_schema::<e::DossierReturned>(),
        event_schema::<e::DecisionRecorded>(),
        event_schema::<e::GradeDecided>(),
        event_schema::<e::GradeRevised>(),
        event_schema::<e::UnitCompleted>(),
        event_schema::<e::CollectiveDossierOpened>(),
        event_schema::<e::CycleCompleted>(),
        command_schema::<c::RegisterOrg>(),
        command_schema::<c::RenameOrg>(),
        command_schema::<c::MoveOrg>(),
        command_schema::<c::MergeOrgs>(),
        command_schema::<c::OpenCycle>(),
        command_schema::<c::RegisterSubject>(),
        command_schema::<c::SubmitSelfReview>(),
        command_schema::<c::RecordMeeting>(),
        command_schema::<c::AppraiseDossier>(),
        command_schema::<c::ReturnDossier>(),
        command_schema::<c::DecideBatch>(),
        plain_schema::<DecisionLogRecord>(DecisionLogRecord::KIND),
        plain_schema::<CommandReply>("command_reply.v1"),
    ]
}

/// Renders a schema as the bytes checked in: pretty JSON and a final newline.
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
