//! The hard "not completed" triggers (rule 5, `hard_trigger`; 366-QĐ/TW
//! Art. 11 §4): facts that force `not_completed` whatever the score, unless
//! the authority writes an override reason (mitigation: force majeure,
//! self-detected and remedied).

use gradeflow_proto::{DisciplineLevel, SubjectKind};
use serde::{Deserialize, Serialize};

use crate::draft::DraftDossier;

/// A hard trigger, named after the fact that raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Everyone: disciplined at reprimand or above, duty-related, not from a
    /// previous unit.
    Discipline,
    /// Everyone: concluded to show ideological degradation.
    Degradation,
    /// Individuals: more than half of the year's tasks not done.
    NotDone,
    /// Leaders and collectives: the unit completed too few of its tasks.
    UnitTaskCompletion,
    /// Leaders: more than half of the units they answer for not completed.
    SubordinatesNotCompletedRatio,
    /// Leaders: more than half low-confidence votes.
    LowConfidenceRatio,
    /// Collectives: a leadership member disciplined for a duty-related
    /// violation (not one from a previous unit).
    MemberDisciplined,
    /// Collectives: wrongdoing concluded (cadre work, disunity, buying posts).
    WrongdoingConcluded,
}

impl Trigger {
    /// Every trigger, in the order they are reported.
    pub const ALL: [Trigger; 8] = [
        Trigger::Discipline,
        Trigger::Degradation,
        Trigger::NotDone,
        Trigger::UnitTaskCompletion,
        Trigger::SubordinatesNotCompletedRatio,
        Trigger::LowConfidenceRatio,
        Trigger::MemberDisciplined,
        Trigger::WrongdoingConcluded,
    ];

    /// The wire name, which is the name of the fact that raises it.
    pub fn code(self) -> &'static str {
        match self {
            Trigger::Discipline => "discipline",
            Trigger::Degradation => "degradation",
            Trigger::NotDone => "not_done",
            Trigger::UnitTaskCompletion => "unit_task_completion",
            Trigger::SubordinatesNotCompletedRatio => "subordinates_not_completed_ratio",
            Trigger::LowConfidenceRatio => "low_confidence_ratio",
            Trigger::MemberDisciplined => "member_disciplined",
            Trigger::WrongdoingConcluded => "wrongdoing_concluded",
        }
    }

    /// What it means, in English.
    pub fn label_en(self) -> &'static str {
        match self {
            Trigger::Discipline => "disciplined at reprimand or above for a duty-related violation",
            Trigger::Degradation => "concluded to show ideological degradation",
            Trigger::NotDone => "more than half of the year's tasks not done",
            Trigger::UnitTaskCompletion => "the unit completed too few of its planned tasks",
            Trigger::SubordinatesNotCompletedRatio => {
                "more than half of the units answered for graded not completed"
            }
            Trigger::LowConfidenceRatio => "more than half low-confidence votes",
            Trigger::MemberDisciplined => {
                "a leadership member disciplined for a duty-related violation"
            }
            Trigger::WrongdoingConcluded => "wrongdoing concluded by the competent authority",
        }
    }

    /// What it means, in Vietnamese.
    pub fn label_vi(self) -> &'static str {
        match self {
            Trigger::Discipline => {
                "bị kỷ luật từ khiển trách trở lên do vi phạm liên quan đến chức trách, nhiệm vụ"
            }
            Trigger::Degradation => "bị kết luận có biểu hiện suy thoái",
            Trigger::NotDone => "trên 50% nhiệm vụ trong năm không hoàn thành",
            Trigger::UnitTaskCompletion => {
                "địa phương, đơn vị hoàn thành dưới mức chỉ tiêu, nhiệm vụ tối thiểu"
            }
            Trigger::SubordinatesNotCompletedRatio => {
                "trên 50% đơn vị thuộc phạm vi phụ trách xếp loại không hoàn thành nhiệm vụ"
            }
            Trigger::LowConfidenceRatio => "trên 50% phiếu tín nhiệm thấp",
            Trigger::MemberDisciplined => {
                "có thành viên bị kỷ luật do vi phạm liên quan đến chức trách, nhiệm vụ"
            }
            Trigger::WrongdoingConcluded => "bị cấp có thẩm quyền kết luận có vi phạm",
        }
    }
}

/// The thresholds of the triggers. [`TriggerPolicy::QD366`] holds the
/// values of 366; the older rulebooks use them too until the customer
/// confirms otherwise (see `docs/domain.md`, "What is configurable").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerPolicy {
    /// Leaders and collectives: `unit_task_completion` below this triggers (0.7).
    pub unit_task_completion_min: f64,
    /// Leaders: `subordinates_not_completed_ratio` above this triggers (0.5).
    pub subordinates_not_completed_max: f64,
    /// Leaders: `low_confidence_ratio` above this triggers (0.5).
    pub low_confidence_max: f64,
    /// Individuals: `not_done` above this percentage of tasks triggers (50).
    pub not_done_max_percent: u64,
    /// The mildest discipline that triggers (reprimand).
    pub discipline_min: DisciplineLevel,
}

impl TriggerPolicy {
    /// Regulation 366-QĐ/TW Art. 11 §4.
    pub const QD366: TriggerPolicy = TriggerPolicy {
        unit_task_completion_min: 0.7,
        subordinates_not_completed_max: 0.5,
        low_confidence_max: 0.5,
        not_done_max_percent: 50,
        discipline_min: DisciplineLevel::Reprimand,
    };

    /// The triggers the dossier's facts raise, in [`Trigger::ALL`] order.
    /// Which apply depends on the subject: everyone gets `discipline` and
    /// `degradation`; individuals `not_done`; individuals with the leader
    /// flag the three leader triggers; collectives `member_disciplined`,
    /// `wrongdoing_concluded` and `unit_task_completion`.
    pub fn triggers(&self, dossier: &DraftDossier) -> Vec<Trigger> {
        let facts = &dossier.facts;
        let individual = dossier.kind == SubjectKind::Individual;
        let collective = dossier.kind == SubjectKind::Collective;
        let leader = individual && dossier.leader;

        let discipline = facts
            .discipline
            .is_some_and(|d| d.level >= self.discipline_min && d.duty_related && !d.previous_unit);
        let not_done = individual
            && dossier.tasks.is_some_and(|t| {
                u64::from(t.not_done) * 100 > self.not_done_max_percent * u64::from(t.total)
            });
        let unit_low = (leader || collective)
            && facts
                .unit_task_completion
                .is_some_and(|r| r < self.unit_task_completion_min);
        let subordinates = leader
            && facts
                .subordinates_not_completed_ratio
                .is_some_and(|r| r > self.subordinates_not_completed_max);
        let low_confidence = leader
            && facts
                .low_confidence_ratio
                .is_some_and(|r| r > self.low_confidence_max);

        let raised = [
            (Trigger::Discipline, discipline),
            (Trigger::Degradation, facts.degradation),
            (Trigger::NotDone, not_done),
            (Trigger::UnitTaskCompletion, unit_low),
            (Trigger::SubordinatesNotCompletedRatio, subordinates),
            (Trigger::LowConfidenceRatio, low_confidence),
            (
                Trigger::MemberDisciplined,
                collective && facts.member_disciplined,
            ),
            (
                Trigger::WrongdoingConcluded,
                collective && facts.wrongdoing_concluded,
            ),
        ];
        raised
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(t, _)| t)
            .collect()
    }
}
