//! The nouns of the domain shared by every service: organisations, cycles,
//! subjects, dossiers and the facts a grade is decided on.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::grade::Grade;
use crate::ids::OrgId;
use crate::tier::{Tier, Tiers};

/// The regulation a cycle is graded under. A cycle pins its rulebook; an
/// auditor re-checks a decision against the rulebook of its own cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RulebookId {
    /// Regulation 366-QĐ/TW (2025): 100-point score sheet.
    #[serde(rename = "qd366-2025")]
    Qd366_2025,
    /// Regulation 124-QĐ/TW (2023): criteria-based, no points.
    #[serde(rename = "qd124-2023")]
    Qd124_2023,
    /// Regulation 132-QĐ/TW (2018): criteria-based, no points.
    #[serde(rename = "qd132-2018")]
    Qd132_2018,
}

impl RulebookId {
    /// Every rulebook, newest first.
    pub const ALL: [RulebookId; 3] = [
        RulebookId::Qd366_2025,
        RulebookId::Qd124_2023,
        RulebookId::Qd132_2018,
    ];

    /// The wire id, e.g. `qd366-2025`.
    pub fn code(self) -> &'static str {
        match self {
            RulebookId::Qd366_2025 => "qd366-2025",
            RulebookId::Qd124_2023 => "qd124-2023",
            RulebookId::Qd132_2018 => "qd132-2018",
        }
    }

    /// Parses a wire id.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The kind of a review cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CycleKind {
    /// The annual review (the main one).
    Annual,
    /// Quarterly review of leaders (Conclusion 198-KL/TW).
    Quarterly,
    /// End of a term.
    Term,
    /// An ad hoc review.
    AdHoc,
}

/// How `ratio × good` is turned into a whole number of allowed excellents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round down (the regulation's reading, and the default).
    #[default]
    Floor,
    /// Round half up.
    Round,
    /// Round up.
    Ceil,
}

/// The quota settings of a cycle: `excellent ≤ rounding(ratio × good)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// The base ratio, 0.20 by the regulation.
    #[serde(default = "QuotaSettings::default_ratio")]
    pub ratio: f64,
    /// How the product is rounded.
    #[serde(default)]
    pub rounding: Rounding,
}

impl QuotaSettings {
    fn default_ratio() -> f64 {
        0.2
    }
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            ratio: Self::default_ratio(),
            rounding: Rounding::Floor,
        }
    }
}

/// The authority's exception for units with outstanding results: a higher
/// ratio (at most 0.25) with a recorded reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaException {
    /// The raised ratio (≤ 0.25).
    pub ratio: f64,
    /// Why the authority raised it; required.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Whether a subject is an individual or a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A party member.
    Individual,
    /// A collective: a committee, a cell, a leadership collective.
    Collective,
}

/// The form / annex of a subject's self-review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Category {
    /// Form 01: a collective.
    #[serde(rename = "01")]
    Collective01,
    /// Form 2A: a leader or manager.
    #[serde(rename = "2A")]
    Leader2A,
    /// Form 2B: a member who is not a leader.
    #[serde(rename = "2B")]
    Member2B,
    /// Form 2C: a member working outside the political system.
    #[serde(rename = "2C")]
    Outside2C,
}

impl Category {
    /// The form code (`01`, `2A`, `2B`, `2C`).
    pub fn code(self) -> &'static str {
        match self {
            Category::Collective01 => "01",
            Category::Leader2A => "2A",
            Category::Member2B => "2B",
            Category::Outside2C => "2C",
        }
    }
}

/// Whether a subject is reviewed this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStatus {
    /// Reviewed and graded.
    #[default]
    Active,
    /// Admitted less than six months before the review: not reviewed.
    NewMember,
    /// Exempted from party work: not reviewed.
    Exempt,
    /// Suspended from party activities: not reviewed.
    Suspended,
}

impl SubjectStatus {
    /// Whether a subject with this status is reviewed and graded at all.
    pub fn is_reviewed(self) -> bool {
        matches!(self, SubjectStatus::Active)
    }
}

/// The states of a dossier. See the state machine in the submission domain.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DossierState {
    /// Registered, nothing filed yet.
    Open,
    /// Self-review filed.
    Submitted,
    /// Review meeting held.
    Reviewed,
    /// Appraised by the organisation board.
    Appraised,
    /// Graded by the competent authority.
    Decided,
    /// Sent back by the appraiser for rework.
    Returned,
    /// Not reviewed this cycle (new member, exempt, suspended).
    NotReviewed,
    /// Graded again after a complaint (form 03).
    Regraded,
}

impl DossierState {
    /// Every state.
    pub const ALL: [DossierState; 8] = [
        DossierState::Open,
        DossierState::Submitted,
        DossierState::Reviewed,
        DossierState::Appraised,
        DossierState::Decided,
        DossierState::Returned,
        DossierState::NotReviewed,
        DossierState::Regraded,
    ];

    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            DossierState::Open => "open",
            DossierState::Submitted => "submitted",
            DossierState::Reviewed => "reviewed",
            DossierState::Appraised => "appraised",
            DossierState::Decided => "decided",
            DossierState::Returned => "returned",
            DossierState::NotReviewed => "not_reviewed",
            DossierState::Regraded => "regraded",
        }
    }

    /// The Vietnamese label users read on screen.
    pub fn label_vi(self) -> &'static str {
        match self {
            DossierState::Open => "Chưa nộp",
            DossierState::Submitted => "Đã nộp bản tự kiểm điểm",
            DossierState::Reviewed => "Đã kiểm điểm tại hội nghị",
            DossierState::Appraised => "Đã thẩm định",
            DossierState::Decided => "Đã quyết định xếp loại",
            DossierState::Returned => "Bị trả lại",
            DossierState::NotReviewed => "Không kiểm điểm",
            DossierState::Regraded => "Đã xếp loại lại",
        }
    }

    /// The English label.
    pub fn label_en(self) -> &'static str {
        match self {
            DossierState::Open => "Not submitted",
            DossierState::Submitted => "Self-review submitted",
            DossierState::Reviewed => "Reviewed at meeting",
            DossierState::Appraised => "Appraised",
            DossierState::Decided => "Graded",
            DossierState::Returned => "Returned",
            DossierState::NotReviewed => "Not reviewed",
            DossierState::Regraded => "Re-graded",
        }
    }

    /// Whether the dossier holds a final grade (counts as decided for ordering
    /// and for unit completion). A not-reviewed dossier is settled too.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            DossierState::Decided | DossierState::Regraded | DossierState::NotReviewed
        )
    }
}

/// The 366 score sheet: general criteria (0–30) and task results (0–70).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// General criteria, 0 to 30 points.
    pub general: f64,
    /// Task results, 0 to 70 points.
    pub tasks: f64,
}

impl Score {
    /// The total out of 100.
    pub fn total(&self) -> f64 {
        self.general + self.tasks
    }

    /// Whether both parts are within their ranges (and are numbers).
    pub fn in_range(&self) -> bool {
        (0.0..=30.0).contains(&self.general) && (0.0..=70.0).contains(&self.tasks)
    }
}

/// Task counts of the year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCounts {
    /// Tasks assigned.
    pub total: u32,
    /// Done on time with quality.
    #[serde(default)]
    pub on_time: u32,
    /// Exceeded (a subset of the done ones).
    #[serde(default)]
    pub exceeded: u32,
    /// Done, but late.
    #[serde(default)]
    pub late: u32,
    /// Not done.
    #[serde(default)]
    pub not_done: u32,
}

impl TaskCounts {
    /// Whether the counts are consistent: on time + late + not done = total,
    /// and no more exceeded than done.
    pub fn is_consistent(&self) -> bool {
        let done = u64::from(self.on_time) + u64::from(self.late);
        done + u64::from(self.not_done) == u64::from(self.total) && u64::from(self.exceeded) <= done
    }
}

/// The level of a disciplinary measure, mildest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DisciplineLevel {
    /// Khiển trách.
    Reprimand,
    /// Cảnh cáo.
    Warning,
    /// Cách chức.
    Removal,
    /// Khai trừ.
    Expulsion,
}

/// A disciplinary measure taken in the year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discipline {
    /// The measure.
    pub level: DisciplineLevel,
    /// Whether the violation was related to the subject's duties.
    #[serde(default)]
    pub duty_related: bool,
    /// Whether it stems from a previous unit (then it does not count).
    #[serde(default)]
    pub previous_unit: bool,
}

/// The facts the appraiser consolidates and the authority decides on. Every
/// field is optional; absent means "no such fact".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// A disciplinary measure in the year.
    #[serde(default)]
    pub discipline: Option<Discipline>,
    /// A conclusion of ideological degradation.
    #[serde(default)]
    pub degradation: bool,
    /// Leaders: share of low-confidence votes (0..1).
    #[serde(default)]
    pub low_confidence_ratio: Option<f64>,
    /// Leaders and collectives: share of the unit's tasks completed (0..1).
    #[serde(default)]
    pub unit_task_completion: Option<f64>,
    /// Leaders: share of the units they answer for graded `not_completed` (0..1).
    #[serde(default)]
    pub subordinates_not_completed_ratio: Option<f64>,
    /// Collectives: a leadership member disciplined, duty-related.
    #[serde(default)]
    pub member_disciplined: bool,
    /// Collectives: a subordinate unit or member disciplined (blocks excellent).
    #[serde(default)]
    pub subordinate_disciplined: bool,
    /// Collectives: a conclusion of wrongdoing.
    #[serde(default)]
    pub wrongdoing_concluded: bool,
}

impl Facts {
    /// Names the first ratio outside 0..1, if any.
    pub fn out_of_range_ratio(&self) -> Option<&'static str> {
        let ratios = [
            ("low_confidence_ratio", self.low_confidence_ratio),
            ("unit_task_completion", self.unit_task_completion),
            (
                "subordinates_not_completed_ratio",
                self.subordinates_not_completed_ratio,
            ),
        ];
        ratios
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| !(0.0..=1.0).contains(&v)))
            .map(|(n, _)| n)
    }
}

/// Per-tier deadlines of a cycle.
pub type Deadlines = BTreeMap<Tier, NaiveDate>;

/// An organisation as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Org {
    /// Its id.
    pub id: OrgId,
    /// Its unique code (e.g. `P01`).
    pub code: String,
    /// Its display name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its parent, `None` for the root.
    pub parent: Option<OrgId>,
}

/// A grade count per grade, as reports and progress carry it.
pub type GradeCounts = BTreeMap<Grade, u64>;

/// Helper to name a whole tier list in docs and events.
pub type TierList = Tiers;
