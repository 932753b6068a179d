//! The input of a decision check: a draft batch of grades, exactly the JSON
//! of `gradeflow rules check` in `API.md`. The approval service builds one
//! from its store (typed ids mapped to strings, `earlier` from the decision
//! log); the CLI parses one from stdin. Unknown fields are refused, so a
//! misspelt field is an error (`rules check` exits 2) rather than silently
//! ignored.

use std::collections::{BTreeMap, BTreeSet};

use gradeflow_proto::{
    Category, Facts, Grade, QuotaException, QuotaSettings, RulebookId, Score, SubjectKind,
    SubjectStatus, TaskCounts,
};
use serde::{Deserialize, Serialize};

/// The default quota group of collectives.
pub const COLLECTIVES_GROUP: &str = "collectives";
/// The default quota group of individuals.
pub const INDIVIDUALS_GROUP: &str = "individuals";

/// One authority's draft decision: the grades it means to give, with the
/// facts each is decided on and the quota context of the cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftBatch {
    /// The rulebook of the cycle. Defaults to the one in force, `qd366-2025`.
    #[serde(default = "DraftBatch::default_rulebook")]
    pub rulebook: RulebookId,
    /// The cycle's quota settings (ratio 0.20, floor when absent).
    #[serde(default)]
    pub quota: QuotaSettings,
    /// The authority's raised ratio for this decision, with its reason.
    #[serde(default)]
    pub quota_exception: Option<QuotaException>,
    /// Excellent and good counts already decided in the cycle, per quota group.
    #[serde(default)]
    pub earlier: BTreeMap<String, GroupCounts>,
    /// The dossiers of the batch, in the order of the decision document.
    #[serde(default)]
    pub dossiers: Vec<DraftDossier>,
}

impl DraftBatch {
    fn default_rulebook() -> RulebookId {
        RulebookId::Qd366_2025
    }

    /// Parses a batch from JSON and validates it ([`DraftBatch::validate`]).
    pub fn from_json(json: &str) -> Result<DraftBatch, DraftError> {
        let batch: DraftBatch =
            serde_json::from_str(json).map_err(|e| DraftError::Json(e.to_string()))?;
        batch.validate()?;
        Ok(batch)
    }

    /// Refuses input no rule can judge: a duplicate dossier id, a score or a
    /// fact ratio outside its range, a quota ratio outside 0..1. Anything the
    /// regulation forbids (a ratio above 0.25, a grade above its band) is not
    /// an input error but a [`crate::Violation`].
    ///
    /// Task counts that do not add up are *not* refused here: the conditions
    /// read them conservatively (see [`crate::ScorePolicy::max_grade`]).
    pub fn validate(&self) -> Result<(), DraftError> {
        if !ratio_in_unit_range(self.quota.ratio) {
            return Err(DraftError::QuotaRatio(self.quota.ratio));
        }
        if let Some(exception) = &self.quota_exception {
            if !ratio_in_unit_range(exception.ratio) {
                return Err(DraftError::QuotaRatio(exception.ratio));
            }
        }
        let mut seen = BTreeSet::new();
        for dossier in &self.dossiers {
            if !seen.insert(dossier.id.as_str()) {
                return Err(DraftError::DuplicateDossier(dossier.id.clone()));
            }
            if let Some(score) = &dossier.score {
                if !score.in_range() {
                    return Err(DraftError::ScoreOutOfRange(dossier.id.clone()));
                }
            }
            if let Some(field) = dossier.facts.out_of_range_ratio() {
                return Err(DraftError::FactOutOfRange {
                    dossier: dossier.id.clone(),
                    field,
                });
            }
        }
        Ok(())
    }
}

fn ratio_in_unit_range(ratio: f64) -> bool {
    (0.0..=1.0).contains(&ratio)
}

/// Excellent and good counts of one quota group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCounts {
    /// Graded excellent.
    #[serde(default)]
    pub excellent: u64,
    /// Graded good.
    #[serde(default)]
    pub good: u64,
}

/// One dossier of a draft batch: who the subject is, what the file says, and
/// the grade the authority means to give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftDossier {
    /// The dossier's id (a free string here; services pass their UUIDs).
    pub id: String,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The self-review form (`01`, `2A`, `2B`, `2C`); informational, the
    /// rules read `kind` and `leader`.
    #[serde(default)]
    pub category: Option<Category>,
    /// Leader or manager: the leader triggers apply.
    #[serde(default)]
    pub leader: bool,
    /// Whether the subject is reviewed this cycle.
    #[serde(default)]
    pub status: SubjectStatus,
    /// The quota group; `None` (or blank) means `collectives`/`individuals`
    /// by kind.
    #[serde(default)]
    pub quota_group: Option<String>,
    /// The 366 score sheet.
    #[serde(default)]
    pub score: Option<Score>,
    /// Task counts of the year.
    #[serde(default)]
    pub tasks: Option<TaskCounts>,
    /// Whether the shortcomings named at the last review are all fixed.
    /// Absent means none are outstanding (`true`), like every other fact:
    /// what blocks a grade has to be stated.
    #[serde(default = "DraftDossier::default_shortcomings_fixed")]
    pub shortcomings_fixed: bool,
    /// The facts consolidated at appraisal.
    #[serde(default)]
    pub facts: Facts,
    /// Children and members still undecided (non-empty → `not_ready`).
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// The grade the authority means to give; `None` when the batch does not
    /// grade this dossier (a not-reviewed subject listed for the record).
    #[serde(default)]
    pub grade: Option<Grade>,
    /// The authority's written reason for keeping a grade above
    /// `not_completed` despite a hard trigger.
    #[serde(default)]
    pub override_reason: Option<String>,
}

impl DraftDossier {
    fn default_shortcomings_fixed() -> bool {
        true
    }

    /// A reviewed, ungraded dossier of the given kind with no facts; the
    /// starting point for tests and for services that fill in the rest.
    pub fn new(id: impl Into<String>, kind: SubjectKind) -> Self {
        Self {
            id: id.into(),
            kind,
            category: None,
            leader: false,
            status: SubjectStatus::Active,
            quota_group: None,
            score: None,
            tasks: None,
            shortcomings_fixed: true,
            facts: Facts::default(),
            waiting_for: Vec::new(),
            grade: None,
            override_reason: None,
        }
    }

    /// The quota group the dossier counts in: its `quota_group` when set and
    /// not blank, else `collectives` or `individuals` by kind.
    pub fn group(&self) -> &str {
        match self.quota_group.as_deref().map(str::trim) {
            Some(group) if !group.is_empty() => group,
            _ => match self.kind {
                SubjectKind::Collective => COLLECTIVES_GROUP,
                SubjectKind::Individual => INDIVIDUALS_GROUP,
            },
        }
    }

    /// The override reason when it is usable: present and not blank.
    pub fn written_override_reason(&self) -> Option<&str> {
        non_blank(self.override_reason.as_deref())
    }
}

/// `Some(text)` when the text is present and not only whitespace.
pub(crate) fn non_blank(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

/// Why a draft batch cannot be judged at all (`rules check` exit 2, HTTP 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DraftError {
    /// Not JSON, a missing or unknown field, a wrong type.
    #[error("reading the batch: {0}")]
    Json(String),
    /// The same dossier twice in one batch.
    #[error("dossier {0} appears twice in the batch")]
    DuplicateDossier(String),
    /// A score part outside 0–30 / 0–70.
    #[error("dossier {0}: score out of range (general 0–30, tasks 0–70)")]
    ScoreOutOfRange(String),
    /// A fact ratio outside 0..1.
    #[error("dossier {dossier}: {field} must be between 0 and 1")]
    FactOutOfRange {
        /// The dossier.
        dossier: String,
        /// The field.
        field: &'static str,
    },
    /// A quota ratio outside 0..1 (a ratio above 0.25 is a violation, not this).
    #[error("quota ratio {0} must be between 0 and 1")]
    QuotaRatio(f64),
}

impl DraftError {
    /// The stable error code (`malformed_input` for every variant).
    pub fn code(&self) -> &'static str {
        "malformed_input"
    }

    /// The English message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The Vietnamese message.
    pub fn message_vi(&self) -> String {
        match self {
            DraftError::Json(detail) => format!("Dữ liệu đầu vào không hợp lệ: {detail}"),
            DraftError::DuplicateDossier(id) => {
                format!("Hồ sơ {id} xuất hiện hai lần trong cùng một quyết định")
            }
            DraftError::ScoreOutOfRange(id) => format!(
                "Hồ sơ {id}: điểm ngoài phạm vi cho phép (tiêu chí chung 0–30, kết quả thực hiện nhiệm vụ 0–70)"
            ),
            DraftError::FactOutOfRange { dossier, field } => {
                format!("Hồ sơ {dossier}: {field} phải nằm trong khoảng 0 đến 1")
            }
            DraftError::QuotaRatio(ratio) => {
                format!("Tỷ lệ {ratio} phải nằm trong khoảng 0 đến 1")
            }
        }
    }
}
