//! A rule violation of a draft batch, serialised exactly as `API.md` shows
//! them in `POST /api/v1/decisions` refusals and `gradeflow rules check`:
//! an object tagged by `rule`, e.g.
//! `{"rule": "quota", "group": "members", "excellent": 3, "good": 10, "max_excellent": 2, "ratio": 0.2}`.
//! Each violation also reads as a sentence in English and Vietnamese.

use std::fmt;

use gradeflow_proto::{Grade, SubjectStatus};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::grading::Condition;
use crate::trigger::Trigger;

/// A score total as violations print it: a whole number prints without
/// `.0` (`78`, not `78.0`), a fraction as a decimal (`88.5`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Points(pub f64);

/// 2^53: every integer below it is exact in an f64.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

impl Serialize for Points {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() && v.fract() == 0.0 && v.abs() < EXACT_INTEGER_LIMIT {
            // Exact by the check above.
            serializer.serialize_i64(v as i64)
        } else {
            serializer.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for Points {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        f64::deserialize(deserializer).map(Points)
    }
}

impl fmt::Display for Points {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Same rule as the JSON: `78`, `88.5`.
        write!(f, "{}", self.0)
    }
}

/// One reason a batch is refused. The variant is the rule id (`rule` on the
/// wire). Per-dossier rules come first, in the batch's order and the rule
/// order of `DOMAIN.md`; then the batch-level ones (exception, quota).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Violation {
    /// Rule 1: a subject that is not reviewed (new member, exempt,
    /// suspended) was given a grade.
    NotReviewed {
        /// The dossier.
        dossier: String,
        /// Why it is not reviewed.
        status: SubjectStatus,
        /// The grade it was given.
        grade: Grade,
    },
    /// Rule 2: a child unit or member is still undecided (Art. 12.2).
    NotReady {
        /// The dossier.
        dossier: String,
        /// What it waits for.
        waiting_for: Vec<String>,
    },
    /// Rule 3 (366 only): the grade is above the score band, or the dossier
    /// has no score (`score: null`) and a grade above `not_completed`.
    ScoreBand {
        /// The dossier.
        dossier: String,
        /// The total (general + tasks), `null` when no score was given.
        score: Option<Points>,
        /// The grade given.
        grade: Grade,
        /// The highest grade the score allows.
        max_grade: Grade,
    },
    /// Rule 4 (366 only): the grade is above what the task facts allow.
    Conditions {
        /// The dossier.
        dossier: String,
        /// The grade given.
        grade: Grade,
        /// The highest grade the facts allow.
        max_grade: Grade,
        /// The conditions of `grade` that fail.
        failed: Vec<Condition>,
    },
    /// Rule 5: a hard trigger without a written override reason, on a grade
    /// above `not_completed`. One violation per trigger.
    HardTrigger {
        /// The dossier.
        dossier: String,
        /// The trigger.
        trigger: Trigger,
        /// The grade given.
        grade: Grade,
    },
    /// Rule 5: the authority gave an override reason but it is blank. Comes
    /// in addition to the `hard_trigger` violations (a blank reason overrides
    /// nothing), and tells the authority that the fix is to write the reason.
    OverrideReasonRequired {
        /// The dossier.
        dossier: String,
        /// The grade given.
        grade: Grade,
        /// The triggers the override would have to answer.
        triggers: Vec<Trigger>,
    },
    /// Rule 6: a quota exception without a written reason.
    ExceptionReasonRequired {
        /// The exception's ratio.
        ratio: f64,
    },
    /// Rule 6: a quota exception ratio above the regulation's 0.25, or below
    /// the base ratio it is meant to raise.
    ExceptionRatio {
        /// The exception's ratio.
        ratio: f64,
        /// The cycle's base ratio.
        base_ratio: f64,
        /// The highest ratio allowed.
        max_ratio: f64,
    },
    /// Rule 6: too many excellent grades in a quota group.
    Quota {
        /// The quota group.
        group: String,
        /// Excellent grades: this batch plus earlier decisions.
        excellent: u64,
        /// Good grades: this batch plus earlier decisions.
        good: u64,
        /// The most excellent grades allowed.
        max_excellent: u64,
        /// The ratio applied (the exception's, when one is given).
        ratio: f64,
    },
}

impl Violation {
    /// Every rule id a violation can carry.
    pub const RULES: [&'static str; 9] = [
        "not_reviewed",
        "not_ready",
        "score_band",
        "conditions",
        "hard_trigger",
        "override_reason_required",
        "exception_reason_required",
        "exception_ratio",
        "quota",
    ];

    /// The rule id, as `rule` on the wire.
    pub fn rule(&self) -> &'static str {
        match self {
            Violation::NotReviewed { .. } => "not_reviewed",
            Violation::NotReady { .. } => "not_ready",
            Violation::ScoreBand { .. } => "score_band",
            Violation::Conditions { .. } => "conditions",
            Violation::HardTrigger { .. } => "hard_trigger",
            Violation::OverrideReasonRequired { .. } => "override_reason_required",
            Violation::ExceptionReasonRequired { .. } => "exception_reason_required",
            Violation::ExceptionRatio { .. } => "exception_ratio",
            Violation::Quota { .. } => "quota",
        }
    }

    /// The dossier the violation is about, `None` for batch-level rules.
    pub fn dossier(&self) -> Option<&str> {
        match self {
            Violation::NotReviewed { dossier, .. }
            | Violation::NotReady { dossier, .. }
            | Violation::ScoreBand { dossier, .. }
            | Violation::Conditions { dossier, .. }
            | Violation::HardTrigger { dossier, .. }
            | Violation::OverrideReasonRequired { dossier, .. } => Some(dossier),
            Violation::ExceptionReasonRequired { .. }
            | Violation::ExceptionRatio { .. }
            | Violation::Quota { .. } => None,
        }
    }

    /// The violation as an English sentence.
    pub fn message(&self) -> String {
        match self {
            Violation::NotReviewed {
                dossier,
                status,
                grade,
            } => format!(
                "Dossier {dossier} is not reviewed this cycle ({}) and gets no grade, but was graded {}.",
                status_en(*status),
                grade.label_en()
            ),
            Violation::NotReady {
                dossier,
                waiting_for,
            } => format!(
                "Dossier {dossier} cannot be decided yet: waiting for {}.",
                waiting_for.join(", ")
            ),
            Violation::ScoreBand {
                dossier,
                score: Some(score),
                grade,
                max_grade,
            } => format!(
                "Dossier {dossier}: a score of {score} allows at most {}; {} is above it.",
                max_grade.label_en(),
                grade.label_en()
            ),
            Violation::ScoreBand {
                dossier,
                score: None,
                grade,
                ..
            } => format!(
                "Dossier {dossier} has no score; {} needs one.",
                grade.label_en()
            ),
            Violation::Conditions {
                dossier,
                grade,
                max_grade,
                failed,
            } => format!(
                "Dossier {dossier}: the task results allow at most {}; {} needs {}.",
                max_grade.label_en(),
                grade.label_en(),
                join_labels(failed.iter().map(|c| c.label_en()), ", ")
            ),
            Violation::HardTrigger {
                dossier,
                trigger,
                grade,
            } => format!(
                "Dossier {dossier}: {} forces Not completed; {} needs the authority's written override reason.",
                trigger.label_en(),
                grade.label_en()
            ),
            Violation::OverrideReasonRequired {
                dossier,
                grade,
                triggers,
            } => format!(
                "Dossier {dossier}: the override reason is blank; keeping {} despite {} needs a written reason.",
                grade.label_en(),
                join_labels(triggers.iter().map(|t| t.label_en()), "; ")
            ),
            Violation::ExceptionReasonRequired { ratio } => {
                format!("The quota exception (ratio {ratio}) needs a written reason.")
            }
            Violation::ExceptionRatio {
                ratio,
                base_ratio,
                max_ratio,
            } => format!(
                "The quota exception ratio {ratio} is outside the allowed range {base_ratio} to {max_ratio}."
            ),
            Violation::Quota {
                group,
                excellent,
                good,
                max_excellent,
                ratio,
            } => format!(
                "Quota exceeded in group \u{201c}{group}\u{201d}: {excellent} excellent for {good} good; ratio {ratio} allows at most {max_excellent}."
            ),
        }
    }

    /// The violation as a Vietnamese sentence.
    pub fn message_vi(&self) -> String {
        match self {
            Violation::NotReviewed {
                dossier,
                status,
                grade,
            } => format!(
                "Hồ sơ {dossier} không kiểm điểm trong kỳ này ({}) nên không xếp loại, nhưng đã được xếp loại {}.",
                status_vi(*status),
                grade.abbrev_vi()
            ),
            Violation::NotReady {
                dossier,
                waiting_for,
            } => format!(
                "Hồ sơ {dossier} chưa thể quyết định: còn chờ {}.",
                waiting_for.join(", ")
            ),
            Violation::ScoreBand {
                dossier,
                score: Some(score),
                grade,
                max_grade,
            } => format!(
                "Hồ sơ {dossier}: tổng điểm {score} chỉ cho phép tối đa mức {}; mức {} vượt quá.",
                max_grade.abbrev_vi(),
                grade.abbrev_vi()
            ),
            Violation::ScoreBand {
                dossier,
                score: None,
                grade,
                ..
            } => format!(
                "Hồ sơ {dossier} chưa có điểm; xếp loại {} phải có điểm đánh giá.",
                grade.abbrev_vi()
            ),
            Violation::Conditions {
                dossier,
                grade,
                max_grade,
                failed,
            } => format!(
                "Hồ sơ {dossier}: kết quả thực hiện nhiệm vụ chỉ cho phép tối đa mức {}; mức {} cần {}.",
                max_grade.abbrev_vi(),
                grade.abbrev_vi(),
                join_labels(failed.iter().map(|c| c.label_vi()), ", ")
            ),
            Violation::HardTrigger {
                dossier,
                trigger,
                grade,
            } => format!(
                "Hồ sơ {dossier}: {} nên phải xếp loại KHTNV; giữ mức {} cần lý do bằng văn bản của cấp có thẩm quyền.",
                trigger.label_vi(),
                grade.abbrev_vi()
            ),
            Violation::OverrideReasonRequired {
                dossier,
                grade,
                triggers,
            } => format!(
                "Hồ sơ {dossier}: lý do xem xét đang để trống; giữ mức {} dù {} cần ghi rõ lý do.",
                grade.abbrev_vi(),
                join_labels(triggers.iter().map(|t| t.label_vi()), "; ")
            ),
            Violation::ExceptionReasonRequired { ratio } => {
                format!("Nâng tỷ lệ HTXSNV lên {ratio} phải ghi rõ lý do.")
            }
            Violation::ExceptionRatio {
                ratio,
                base_ratio,
                max_ratio,
            } => format!(
                "Tỷ lệ HTXSNV {ratio} nằm ngoài khoảng cho phép từ {base_ratio} đến {max_ratio}."
            ),
            Violation::Quota {
                group,
                excellent,
                good,
                max_excellent,
                ratio,
            } => format!(
                "Vượt tỷ lệ trong nhóm \u{201c}{group}\u{201d}: {excellent} HTXSNV trên {good} HTTNV; tỷ lệ {ratio} chỉ cho phép tối đa {max_excellent}."
            ),
        }
    }
}

fn join_labels<'a>(labels: impl Iterator<Item = &'a str>, sep: &str) -> String {
    labels.collect::<Vec<_>>().join(sep)
}

fn status_en(status: SubjectStatus) -> &'static str {
    match status {
        SubjectStatus::Active => "reviewed",
        SubjectStatus::NewMember => "admitted less than six months ago",
        SubjectStatus::Exempt => "exempted from party work",
        SubjectStatus::Suspended => "suspended from party activities",
    }
}

fn status_vi(status: SubjectStatus) -> &'static str {
    match status {
        SubjectStatus::Active => "thuộc diện kiểm điểm",
        SubjectStatus::NewMember => "mới kết nạp chưa đủ 6 tháng",
        SubjectStatus::Exempt => "được miễn công tác và sinh hoạt đảng",
        SubjectStatus::Suspended => "đang bị đình chỉ sinh hoạt đảng",
    }
}
