//! Every command of the flow. Commands are imperative and carry a versioned
//! kind; they travel inside a [`crate::CommandEnvelope`] on
//! `<prefix>.cmd.<service>.<command>`. Input types refuse unknown fields, so a
//! misspelt field is an error rather than silently ignored.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::grade::Grade;
use crate::ids::{CycleId, DossierId, OrgId};
use crate::model::{
    Category, CycleKind, Facts, QuotaException, QuotaSettings, RulebookId, Score, SubjectKind,
    SubjectStatus, TaskCounts,
};
use crate::tier::{Tier, Tiers};

/// A command type: its versioned kind and the service that handles it.
pub trait Command: Serialize + for<'de> Deserialize<'de> + JsonSchema {
    /// The versioned kind, e.g. `submit_self_review.v1`.
    const KIND: &'static str;
    /// The service that owns it.
    const SERVICE: &'static str;
    /// The subject token (kind without the version).
    fn name() -> &'static str {
        Self::KIND.split('.').next().unwrap_or(Self::KIND)
    }
}

macro_rules! command {
    ($ty:ident, $kind:literal, $service:literal) => {
        impl Command for $ty {
            const KIND: &'static str = $kind;
            const SERVICE: &'static str = $service;
        }
    };
}

/// Registers an organisation under a parent (or the root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterOrg {
    /// The id to give it (chosen by the caller, so a retry is idempotent).
    #[serde(default)]
    pub id: Option<OrgId>,
    /// Unique code, e.g. `P01`.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Its tier; must be the one below the parent's.
    pub tier: Tier,
    /// Its parent; `None` only for the root.
    pub parent: Option<OrgId>,
}
command!(RegisterOrg, "register_org.v1", "submission");

/// Renames an organisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOrg {
    /// The org.
    pub org: OrgId,
    /// Its new name.
    pub name: String,
}
command!(RenameOrg, "rename_org.v1", "submission");

/// Moves an organisation under another parent of the same tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveOrg {
    /// The org.
    pub org: OrgId,
    /// Its new parent.
    pub parent: OrgId,
}
command!(MoveOrg, "move_org.v1", "submission");

/// Merges organisations into another of the same tier; their children move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeOrgs {
    /// The orgs that cease to exist.
    pub from: Vec<OrgId>,
    /// The org they are merged into.
    pub into: OrgId,
}
command!(MergeOrgs, "merge_orgs.v1", "submission");

/// Opens a review cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenCycle {
    /// The id to give it.
    #[serde(default)]
    pub id: Option<CycleId>,
    /// The year reviewed.
    pub year: i32,
    /// Annual, quarterly, term, ad hoc.
    pub kind: CycleKind,
    /// The rulebook the cycle is graded under.
    pub rulebook: RulebookId,
    /// The tiers, lowest first.
    pub tiers: Tiers,
    /// Deadline per tier.
    #[serde(default)]
    pub deadlines: BTreeMap<Tier, NaiveDate>,
    /// Quota settings.
    #[serde(default)]
    pub quota: QuotaSettings,
}
command!(OpenCycle, "open_cycle.v1", "submission");

/// Registers a subject of review in a cycle and opens its dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSubject {
    /// The cycle.
    pub cycle: CycleId,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The org an individual belongs to, or the collective itself.
    pub org: OrgId,
    /// Full name.
    pub name: String,
    /// The form: `01` for a collective, `2A`/`2B`/`2C` for individuals.
    pub category: Category,
    /// Leader or manager.
    #[serde(default)]
    pub leader: bool,
    /// Whether reviewed this cycle.
    #[serde(default)]
    pub status: SubjectStatus,
    /// A finer quota group chosen by the authority.
    #[serde(default)]
    pub quota_group: Option<String>,
}
command!(RegisterSubject, "register_subject.v1", "submission");

/// Files (or re-files, after a return) a self-review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitSelfReview {
    /// The dossier.
    pub dossier: DossierId,
    /// The self-score (366 only; absent under the older rulebooks).
    #[serde(default)]
    pub score: Option<Score>,
    /// The grade proposed by the subject.
    pub proposed_grade: Grade,
    /// Task counts of the year.
    pub tasks: TaskCounts,
    /// Whether last review's shortcomings were all fixed.
    #[serde(default)]
    pub shortcomings_fixed: bool,
    /// The self-review text.
    #[serde(default)]
    pub report: String,
}
command!(SubmitSelfReview, "submit_self_review.v1", "submission");

/// Records the review meeting's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordMeeting {
    /// The dossier.
    pub dossier: DossierId,
    /// The meeting's proposed grade.
    pub proposed_grade: Grade,
    /// Optional vote tally per grade.
    #[serde(default)]
    pub votes: BTreeMap<Grade, u32>,
    /// Minutes of the meeting.
    #[serde(default)]
    pub minutes: String,
}
command!(RecordMeeting, "record_meeting.v1", "submission");

/// Appraises a dossier: a recommended grade with the consolidated facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppraiseDossier {
    /// The dossier.
    pub dossier: DossierId,
    /// The board's recommendation.
    pub recommended_grade: Grade,
    /// Consolidated facts.
    #[serde(default)]
    pub facts: Facts,
    /// Notes.
    #[serde(default)]
    pub notes: String,
}
command!(AppraiseDossier, "appraise_dossier.v1", "appraisal");

/// Returns a dossier to its board for rework.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnDossier {
    /// The dossier.
    pub dossier: DossierId,
    /// Why; required.
    pub reason: String,
}
command!(ReturnDossier, "return_dossier.v1", "appraisal");

/// Whether a batch decides first grades or re-grades (form 03).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// First grades of the cycle.
    #[default]
    Decide,
    /// Re-grading after a complaint; each grade supersedes a record.
    Regrade,
}

/// One grade of a decision batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGrade {
    /// The dossier.
    pub dossier: DossierId,
    /// The grade decided.
    pub grade: Grade,
    /// Mitigation reason that lets a grade stand despite a hard trigger.
    #[serde(default)]
    pub override_reason: Option<String>,
    /// Re-grade: the decision-log record superseded.
    #[serde(default)]
    pub supersedes: Option<u64>,
    /// Re-grade: why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One authority's decision document: many grades, checked whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideBatch {
    /// The cycle.
    pub cycle: CycleId,
    /// The deciding org (its standing committee).
    pub authority: OrgId,
    /// The document number, e.g. `12-QĐ/HU`.
    pub number: String,
    /// Decide or regrade.
    #[serde(default)]
    pub kind: DecisionKind,
    /// The grades.
    pub grades: Vec<BatchGrade>,
    /// The authority's quota exception.
    #[serde(default)]
    pub quota_exception: Option<QuotaException>,
}
command!(DecideBatch, "decide_batch.v1", "approval");
