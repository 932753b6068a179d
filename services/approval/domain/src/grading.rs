//! What a score and the task facts allow under `qd366-2025` (Art. 11): the
//! score band (rule 3, `score_band`) and the extra conditions of each grade
//! (rule 4, `conditions`). Pure helpers the portal also shows live while a
//! self-review is typed.
//!
//! Arithmetic is exact: scores are compared and printed in millionths of a
//! point (so `20.1 + 49.7` is 69.8, not 69.80000000000001, and no sum of
//! decimal parts lands a hair below a band edge), and percentages of tasks
//! as integers (`exceeded × 100 ≥ 30 × total`).

use gradeflow_proto::{Facts, Grade, SubjectKind, TaskCounts};
use serde::{Deserialize, Serialize};

/// Millionths of a point: scores are compared in this unit so that float
/// noise in `general + tasks` cannot move a dossier across a band edge.
const MICRO: f64 = 1_000_000.0;

pub(crate) fn micro_points(points: f64) -> i64 {
    // Scores are validated to 0..=100, so the product fits an i64 easily.
    (points * MICRO).round() as i64
}

/// A total rounded to a millionth of a point, as violations print it.
pub(crate) fn clean_total(points: f64) -> f64 {
    micro_points(points) as f64 / MICRO
}

/// One extra condition of a grade (Art. 11 §1–3), by its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No task counts were given, so no condition can be shown to hold.
    TasksMissing,
    /// Every task done on time, with quality (excellent, good).
    AllOnTime,
    /// At least 30 % of the tasks exceeded (excellent).
    ExceededShare,
    /// Every shortcoming of the last review fixed (excellent).
    ShortcomingsFixed,
    /// Collectives: no subordinate unit or member disciplined (excellent).
    NoSubordinateDisciplined,
    /// Every task done (completed).
    AllDone,
    /// At most 20 % of the tasks late (completed).
    LateShare,
}

impl Condition {
    /// The wire name, e.g. `exceeded_share`.
    pub fn code(self) -> &'static str {
        match self {
            Condition::TasksMissing => "tasks_missing",
            Condition::AllOnTime => "all_on_time",
            Condition::ExceededShare => "exceeded_share",
            Condition::ShortcomingsFixed => "shortcomings_fixed",
            Condition::NoSubordinateDisciplined => "no_subordinate_disciplined",
            Condition::AllDone => "all_done",
            Condition::LateShare => "late_share",
        }
    }

    /// What the condition asks, in English.
    pub fn label_en(self) -> &'static str {
        match self {
            Condition::TasksMissing => "task counts are required",
            Condition::AllOnTime => "every task done on time",
            Condition::ExceededShare => "at least 30 % of tasks exceeded",
            Condition::ShortcomingsFixed => "every shortcoming of the last review fixed",
            Condition::NoSubordinateDisciplined => "no subordinate unit or member disciplined",
            Condition::AllDone => "every task done",
            Condition::LateShare => "at most 20 % of tasks late",
        }
    }

    /// What the condition asks, in Vietnamese.
    pub fn label_vi(self) -> &'static str {
        match self {
            Condition::TasksMissing => "chưa có số liệu nhiệm vụ",
            Condition::AllOnTime => "100% nhiệm vụ hoàn thành đúng tiến độ, bảo đảm chất lượng",
            Condition::ExceededShare => "ít nhất 30% nhiệm vụ vượt yêu cầu",
            Condition::ShortcomingsFixed => "khắc phục 100% hạn chế, khuyết điểm đã chỉ ra",
            Condition::NoSubordinateDisciplined => {
                "không có tổ chức trực thuộc, thành viên bị kỷ luật"
            }
            Condition::AllDone => "hoàn thành 100% nhiệm vụ",
            Condition::LateShare => "không quá 20% nhiệm vụ chưa bảo đảm tiến độ",
        }
    }
}

/// The thresholds of a scored rulebook: band floors and the percentages of
/// the conditions. [`ScorePolicy::QD366`] holds the regulation's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScorePolicy {
    /// Lowest total graded excellent (90).
    pub excellent_min: f64,
    /// Lowest total graded good (70).
    pub good_min: f64,
    /// Lowest total graded completed (50).
    pub completed_min: f64,
    /// Excellent: least share of tasks exceeded, in percent (30).
    pub exceeded_min_percent: u64,
    /// Completed: largest share of tasks late, in percent (20).
    pub late_max_percent: u64,
}

impl ScorePolicy {
    /// Regulation 366-QĐ/TW Art. 11 with guidance 43-HD/BTCTW.
    pub const QD366: ScorePolicy = ScorePolicy {
        excellent_min: 90.0,
        good_min: 70.0,
        completed_min: 50.0,
        exceeded_min_percent: 30,
        late_max_percent: 20,
    };

    /// The highest grade a total allows (rule 3). Below the completed floor
    /// (and for a total that is not a number) it is `not_completed`.
    pub fn band_grade(&self, total: f64) -> Grade {
        if !total.is_finite() {
            return Grade::NotCompleted;
        }
        let total = micro_points(total);
        if total >= micro_points(self.excellent_min) {
            Grade::Excellent
        } else if total >= micro_points(self.good_min) {
            Grade::Good
        } else if total >= micro_points(self.completed_min) {
            Grade::Completed
        } else {
            Grade::NotCompleted
        }
    }

    /// The conditions of `grade` that fail for these facts (rule 4); empty
    /// when the grade is allowed. `not_completed` has no conditions.
    ///
    /// Task counts are read conservatively, so counts that do not add up can
    /// never unlock a grade: "every task on time" needs `on_time ≥ total` and
    /// nothing late or not done; "every task done" needs nothing not done and
    /// `on_time + late ≥ total`. With no tasks assigned (`total` 0) the
    /// percentage conditions hold vacuously.
    pub fn failed_conditions(
        &self,
        grade: Grade,
        kind: SubjectKind,
        tasks: Option<&TaskCounts>,
        shortcomings_fixed: bool,
        facts: &Facts,
    ) -> Vec<Condition> {
        if grade == Grade::NotCompleted {
            return Vec::new();
        }
        let Some(tasks) = tasks else {
            return vec![Condition::TasksMissing];
        };
        let total = u64::from(tasks.total);
        let on_time = u64::from(tasks.on_time);
        let late = u64::from(tasks.late);
        let not_done = u64::from(tasks.not_done);
        let exceeded = u64::from(tasks.exceeded);
        let all_on_time = on_time >= total && late == 0 && not_done == 0;
        let all_done = not_done == 0 && on_time + late >= total;

        let mut failed = Vec::new();
        match grade {
            Grade::Excellent => {
                if !all_on_time {
                    failed.push(Condition::AllOnTime);
                }
                if exceeded * 100 < self.exceeded_min_percent * total {
                    failed.push(Condition::ExceededShare);
                }
                if !shortcomings_fixed {
                    failed.push(Condition::ShortcomingsFixed);
                }
                if kind == SubjectKind::Collective && facts.subordinate_disciplined {
                    failed.push(Condition::NoSubordinateDisciplined);
                }
            }
            Grade::Good => {
                if !all_on_time {
                    failed.push(Condition::AllOnTime);
                }
            }
            Grade::Completed => {
                if !all_done {
                    failed.push(Condition::AllDone);
                }
                if late * 100 > self.late_max_percent * total {
                    failed.push(Condition::LateShare);
                }
            }
            Grade::NotCompleted => {}
        }
        failed
    }

    /// The highest grade whose conditions all hold (rule 4).
    pub fn max_grade(
        &self,
        kind: SubjectKind,
        tasks: Option<&TaskCounts>,
        shortcomings_fixed: bool,
        facts: &Facts,
    ) -> Grade {
        Grade::ALL
            .into_iter()
            .rev()
            .find(|&g| {
                self.failed_conditions(g, kind, tasks, shortcomings_fixed, facts)
                    .is_empty()
            })
            .unwrap_or(Grade::NotCompleted)
    }
}

/// The grade a 366 total implies: ≥ 90 excellent, ≥ 70 good, ≥ 50
/// completed, else not completed.
pub fn band_grade(total: f64) -> Grade {
    ScorePolicy::QD366.band_grade(total)
}

/// The highest grade the task facts allow under 366 (Art. 11 conditions).
pub fn max_grade_by_conditions(
    kind: SubjectKind,
    tasks: Option<&TaskCounts>,
    shortcomings_fixed: bool,
    facts: &Facts,
) -> Grade {
    ScorePolicy::QD366.max_grade(kind, tasks, shortcomings_fixed, facts)
}
