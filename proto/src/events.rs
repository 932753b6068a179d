//! Every event of the flow, past tense, each with an explicit versioned kind
//! (`grade_decided.v1`). A published shape is never edited: a new shape gets a
//! new version and an upcaster.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commands::DecisionKind;
use crate::grade::Grade;
use crate::ids::{CycleId, DecisionId, DossierId, OrgId, SubjectId};
use crate::model::{
    Category, CycleKind, DossierState, Facts, QuotaException, QuotaSettings, RulebookId, Score,
    SubjectKind, SubjectStatus, TaskCounts,
};
use crate::tier::{Tier, Tiers};

/// An event type: its versioned kind and the service that emits it.
pub trait Event: Serialize + for<'de> Deserialize<'de> + JsonSchema {
    /// The versioned kind.
    const KIND: &'static str;
    /// The emitting service.
    const SERVICE: &'static str;
}

macro_rules! event {
    ($ty:ident, $kind:literal, $service:literal) => {
        impl Event for $ty {
            const KIND: &'static str = $kind;
            const SERVICE: &'static str = $service;
        }
    };
}

/// An organisation joined the hierarchy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrgRegistered {
    /// Its id.
    pub org: OrgId,
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Parent, `None` for the root.
    pub parent: Option<OrgId>,
    /// Code of the province it lies in (routing key), `None` above provinces.
    #[serde(default)]
    pub province: Option<String>,
}
event!(OrgRegistered, "org_registered.v1", "submission");

/// An organisation was renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrgRenamed {
    /// The org.
    pub org: OrgId,
    /// The name it had.
    pub old_name: String,
    /// The name it has now.
    pub name: String,
}
event!(OrgRenamed, "org_renamed.v1", "submission");

/// An organisation moved under another parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrgMoved {
    /// The org.
    pub org: OrgId,
    /// Its former parent.
    pub from_parent: OrgId,
    /// Its new parent.
    pub to_parent: OrgId,
}
event!(OrgMoved, "org_moved.v1", "submission");

/// Organisations were merged into another; their children now sit under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrgsMerged {
    /// The orgs that ceased to exist.
    pub from: Vec<OrgId>,
    /// The surviving org.
    pub into: OrgId,
    /// The children moved under `into`.
    #[serde(default)]
    pub children_moved: Vec<OrgId>,
}
event!(OrgsMerged, "orgs_merged.v1", "submission");

/// A review cycle was opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CycleOpened {
    /// Its id.
    pub cycle: CycleId,
    /// The year reviewed.
    pub year: i32,
    /// Its kind.
    pub kind: CycleKind,
    /// The rulebook pinned for the whole cycle.
    pub rulebook: RulebookId,
    /// Tiers, lowest first.
    pub tiers: Tiers,
    /// Deadline per tier.
    pub deadlines: BTreeMap<Tier, NaiveDate>,
    /// Quota settings.
    pub quota: QuotaSettings,
    /// The root organisation the cycle covers.
    pub root: OrgId,
}
event!(CycleOpened, "cycle_opened.v1", "submission");

/// A subject was registered for a cycle and its dossier opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubjectRegistered {
    /// The subject.
    pub subject: SubjectId,
    /// Its dossier in this cycle.
    pub dossier: DossierId,
    /// The cycle.
    pub cycle: CycleId,
    /// The org (for a collective, the collective itself).
    pub org: OrgId,
    /// The org whose authority decides this dossier.
    pub deciding_org: OrgId,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// Full name.
    pub name: String,
    /// Form.
    pub category: Category,
    /// Leader flag.
    pub leader: bool,
    /// Reviewed or not.
    pub status: SubjectStatus,
    /// Quota group (defaults: `collectives`, `individuals`).
    pub quota_group: String,
    /// The dossier's first state: `open` or `not_reviewed`.
    pub state: DossierState,
}
event!(SubjectRegistered, "subject_registered.v1", "submission");

/// A self-review was filed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SelfReviewSubmitted {
    /// The dossier.
    pub dossier: DossierId,
    /// The self-score (366).
    pub score: Option<Score>,
    /// Proposed grade.
    pub proposed_grade: Grade,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Past shortcomings fixed.
    pub shortcomings_fixed: bool,
    /// The text.
    pub report: String,
    /// Whether this answers a return.
    #[serde(default)]
    pub resubmission: bool,
}
event!(
    SelfReviewSubmitted,
    "self_review_submitted.v1",
    "submission"
);

/// The review meeting was held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MeetingRecorded {
    /// The dossier.
    pub dossier: DossierId,
    /// The meeting's proposed grade.
    pub proposed_grade: Grade,
    /// Vote tally per grade.
    pub votes: BTreeMap<Grade, u32>,
    /// Minutes.
    pub minutes: String,
}
event!(MeetingRecorded, "meeting_recorded.v1", "submission");

/// A rulebook warning attached to an appraisal (quota pressure, a trigger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RuleWarning {
    /// The rule id (`quota`, `hard_trigger`, `score_band`, …).
    pub rule: String,
    /// English text.
    pub message: String,
    /// Vietnamese text.
    pub message_vi: String,
}

/// The organisation board appraised a dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DossierAppraised {
    /// The dossier.
    pub dossier: DossierId,
    /// The recommended grade.
    pub recommended_grade: Grade,
    /// Consolidated facts.
    pub facts: Facts,
    /// Notes.
    pub notes: String,
    /// Warnings from the rulebook.
    pub warnings: Vec<RuleWarning>,
}
event!(DossierAppraised, "dossier_appraised.v1", "appraisal");

/// The organisation board returned a dossier for rework.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DossierReturned {
    /// The dossier.
    pub dossier: DossierId,
    /// Why.
    pub reason: String,
}
event!(DossierReturned, "dossier_returned.v1", "appraisal");

/// Where a grade sits in the decision log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordRef {
    /// Position in the decision log, from 1.
    pub seq: u64,
    /// SHA-256 of the record, hex.
    pub hash: String,
    /// Ed25519 signature of the hash, base64.
    pub signature: String,
    /// The signing key.
    pub key_id: String,
    /// Hash of the previous record (64 zeros for the first). Optional on the
    /// wire so that older events still read; approval always writes it, and
    /// the audit mirror needs it to rebuild the hashed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// The decision time the record was hashed with (microsecond precision).
    /// Optional on the wire for the same reason as `prev_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// An authority's decision document was accepted as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionRecorded {
    /// Its id.
    pub decision: DecisionId,
    /// The cycle.
    pub cycle: CycleId,
    /// The deciding org.
    pub authority: OrgId,
    /// Document number.
    pub number: String,
    /// Decide or regrade.
    pub kind: DecisionKind,
    /// The dossiers it grades.
    pub dossiers: Vec<DossierId>,
    /// The quota exception, if any.
    pub quota_exception: Option<QuotaException>,
}
event!(DecisionRecorded, "decision_recorded.v1", "approval");

/// A dossier was graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GradeDecided {
    /// The decision document.
    pub decision: DecisionId,
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// The cycle.
    pub cycle: CycleId,
    /// The deciding org.
    pub authority: OrgId,
    /// The org the dossier belongs to.
    pub org: OrgId,
    /// The grade.
    pub grade: Grade,
    /// Quota group counted in.
    pub quota_group: String,
    /// Mitigation reason for an overridden trigger.
    pub override_reason: Option<String>,
    /// The decision-log record.
    pub record: RecordRef,
    /// The decision document's number (part of the hashed record). Optional
    /// on the wire so that older events still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
}
event!(GradeDecided, "grade_decided.v1", "approval");

/// A grade was superseded by a re-grading decision (form 03).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GradeRevised {
    /// The re-grading decision.
    pub decision: DecisionId,
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// The cycle.
    pub cycle: CycleId,
    /// The deciding org.
    pub authority: OrgId,
    /// The grade it had.
    pub previous_grade: Grade,
    /// The grade it has now.
    pub grade: Grade,
    /// The record superseded.
    pub supersedes: u64,
    /// Why.
    pub reason: String,
    /// The new decision-log record.
    pub record: RecordRef,
    /// The decision document's number (part of the hashed record). Optional
    /// on the wire so that older events still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Mitigation reason for an overridden trigger on the new grade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}
event!(GradeRevised, "grade_revised.v1", "approval");

/// Every dossier of a unit (its members and child units) is settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnitCompleted {
    /// The cycle.
    pub cycle: CycleId,
    /// The unit.
    pub org: OrgId,
    /// Its tier.
    pub tier: Tier,
    /// Dossiers settled in it.
    pub dossiers: u64,
}
event!(UnitCompleted, "unit_completed.v1", "approval");

/// A unit's collective dossier may now be decided: all it waited for is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CollectiveDossierOpened {
    /// The cycle.
    pub cycle: CycleId,
    /// The collective's dossier.
    pub dossier: DossierId,
    /// The unit.
    pub org: OrgId,
}
event!(
    CollectiveDossierOpened,
    "collective_dossier_opened.v1",
    "submission"
);

/// Central's own decision was made: the cycle is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CycleCompleted {
    /// The cycle.
    pub cycle: CycleId,
    /// Dossiers graded in the cycle.
    pub decided: u64,
    /// When.
    pub completed_at: DateTime<Utc>,
}
event!(CycleCompleted, "cycle_completed.v1", "approval");

/// One record of the signed decision log, as mirrored to `<prefix>_AUDIT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionLogRecord {
    /// Position in the log, from 1, no gaps.
    pub seq: u64,
    /// The decision document.
    pub decision: DecisionId,
    /// Its number.
    pub number: String,
    /// The cycle.
    pub cycle: CycleId,
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// The grade.
    pub grade: Grade,
    /// The deciding org.
    pub authority: OrgId,
    /// Who submitted the decision (token subject).
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The record this one supersedes (re-grading).
    pub supersedes: Option<u64>,
    /// The re-grading reason.
    pub reason: Option<String>,
    /// Mitigation reason for an overridden trigger.
    pub override_reason: Option<String>,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over the canonical encoding of this record without hash and
    /// signature, hex.
    pub hash: String,
    /// Ed25519 signature of `hash`, base64.
    pub signature: String,
    /// The signing key's id in the key registry.
    pub key_id: String,
}

impl DecisionLogRecord {
    /// The versioned kind of the audit-stream message.
    pub const KIND: &'static str = "decision_log_record.v1";
}

/// The service that emits events of `kind`, if it is a known kind.
pub fn service_of(kind: &str) -> Option<&'static str> {
    macro_rules! lookup {
        ($($ty:ty),* $(,)?) => {
            $(if kind == <$ty as Event>::KIND { return Some(<$ty as Event>::SERVICE); })*
        };
    }
    lookup!(
        OrgRegistered,
        OrgRenamed,
        OrgMoved,
        OrgsMerged,
        CycleOpened,
        SubjectRegistered,
        SelfReviewSubmitted,
        MeetingRecorded,
        DossierAppraised,
        DossierReturned,
        DecisionRecorded,
        GradeDecided,
        GradeRevised,
        UnitCompleted,
        CollectiveDossierOpened,
        CycleCompleted,
    );
    None
}

/// The versioned kinds of every event, for routing and schema checks.
pub const EVENT_KINDS: &[&str] = &[
    OrgRegistered::KIND,
    OrgRenamed::KIND,
    OrgMoved::KIND,
    OrgsMerged::KIND,
    CycleOpened::KIND,
    SubjectRegistered::KIND,
    SelfReviewSubmitted::KIND,
    MeetingRecorded::KIND,
    DossierAppraised::KIND,
    DossierReturned::KIND,
    DecisionRecorded::KIND,
    GradeDecided::KIND,
    GradeRevised::KIND,
    UnitCompleted::KIND,
    CollectiveDossierOpened::KIND,
    CycleCompleted::KIND,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_names_its_emitting_service() {
        for k in EVENT_KINDS {
            assert!(service_of(k).is_some(), "{k}");
        }
        assert_eq!(service_of(GradeDecided::KIND), Some("approval"));
        assert_eq!(service_of(DossierReturned::KIND), Some("appraisal"));
        assert_eq!(service_of("grade_decided.v9"), None);
    }
}
