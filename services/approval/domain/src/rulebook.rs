//! The rulebooks and the whole-batch decision check. A [`Rulebook`] is data:
//! which rules it runs and with which thresholds. `qd366-2025` runs all six
//! rules of `DOMAIN.md` § "Decision checks, precisely"; `qd124-2023` and
//! `qd132-2018` keep rules 1, 2, 5 and 6 and leave the score band and the
//! conditions to the authority's judgement (they had no points).
//!
//! Everything here is pure: the approval service calls [`check_batch`]
//! before it writes anything, the CLI calls it on stdin, and an auditor's
//! `recheck` calls it on a stored decision.

use std::collections::BTreeMap;

use gradeflow_proto::{Grade, RulebookId};
use serde::{Deserialize, Serialize};

use crate::draft::{non_blank, DraftBatch, DraftDossier, GroupCounts};
use crate::grading::{clean_total, ScorePolicy};
use crate::quota::{self, ratio_bp, BASIS, MAX_EXCEPTION_BP};
use crate::trigger::TriggerPolicy;
use crate::violation::{Points, Violation};

/// The verdict on a batch: `ok` exactly when there is no violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Whether the batch may be written.
    pub ok: bool,
    /// Every violation of the batch, all reported together.
    pub violations: Vec<Violation>,
}

impl CheckOutcome {
    fn from_violations(violations: Vec<Violation>) -> Self {
        Self {
            ok: violations.is_empty(),
            violations,
        }
    }
}

/// A rulebook: the rules a cycle is graded under and their thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rulebook {
    /// Which regulation this is.
    pub id: RulebookId,
    /// Score bands and conditions (rules 3 and 4); `None` when the rulebook
    /// has no points and leaves them to the authority.
    pub scoring: Option<ScorePolicy>,
    /// Hard-trigger thresholds (rule 5).
    pub triggers: TriggerPolicy,
    /// The highest ratio a quota exception may set, in basis points (2500).
    pub max_exception_bp: u64,
}

impl Rulebook {
    /// The rulebook of a cycle, with the regulation's thresholds.
    pub fn for_id(id: RulebookId) -> Rulebook {
        let scoring = match id {
            RulebookId::Qd366_2025 => Some(ScorePolicy::QD366),
            // Criteria-based, no points: band and conditions are judgement.
            RulebookId::Qd124_2023 | RulebookId::Qd132_2018 => None,
        };
        Rulebook {
            id,
            scoring,
            // The older regulations' trigger thresholds are not confirmed in
            // the research; they keep 366's until the customer says otherwise.
            triggers: TriggerPolicy::QD366,
            max_exception_bp: MAX_EXCEPTION_BP,
        }
    }

    /// Checks a whole batch and reports every violation together. The
    /// batch's own `rulebook` field is not consulted: `self` decides.
    pub fn check(&self, batch: &DraftBatch) -> CheckOutcome {
        let mut violations = Vec::new();
        for dossier in &batch.dossiers {
            violations.extend(self.check_dossier(dossier));
        }
        violations.extend(self.check_quota(batch));
        CheckOutcome::from_violations(violations)
    }

    /// Rules 1–5 on one dossier, in order. A dossier without a grade is not
    /// judged (nothing is being decided for it). A not-reviewed subject with
    /// a grade gets only `not_reviewed`: the other rules presume a review.
    pub fn check_dossier(&self, dossier: &DraftDossier) -> Vec<Violation> {
        let Some(grade) = dossier.grade else {
            return Vec::new();
        };
        let id = || dossier.id.clone();
        if !dossier.status.is_reviewed() {
            return vec![Violation::NotReviewed {
                dossier: id(),
                status: dossier.status,
                grade,
            }];
        }

        let mut violations = Vec::new();
        if !dossier.waiting_for.is_empty() {
            violations.push(Violation::NotReady {
                dossier: id(),
                waiting_for: dossier.waiting_for.clone(),
            });
        }

        if let Some(scoring) = &self.scoring {
            // Rule 3. A missing score allows nothing above not_completed.
            let total = dossier.score.map(|s| clean_total(s.total()));
            let max_grade = total.map_or(Grade::NotCompleted, |t| scoring.band_grade(t));
            if grade > max_grade {
                violations.push(Violation::ScoreBand {
                    dossier: id(),
                    score: total.map(Points),
                    grade,
                    max_grade,
                });
            }
            // Rule 4.
            let tasks = dossier.tasks.as_ref();
            let failed = scoring.failed_conditions(
                grade,
                dossier.kind,
                tasks,
                dossier.shortcomings_fixed,
                &dossier.facts,
            );
            if !failed.is_empty() {
                violations.push(Violation::Conditions {
                    dossier: id(),
                    grade,
                    max_grade: scoring.max_grade(
                        dossier.kind,
                        tasks,
                        dossier.shortcomings_fixed,
                        &dossier.facts,
                    ),
                    failed,
                });
            }
        }

        // Rule 5. Only a written reason overrides; a blank one is answered
        // with both the triggers and `override_reason_required`.
        if grade > Grade::NotCompleted && dossier.written_override_reason().is_none() {
            let triggers = self.triggers.triggers(dossier);
            violations.extend(triggers.iter().map(|&trigger| Violation::HardTrigger {
                dossier: id(),
                trigger,
                grade,
            }));
            if !triggers.is_empty() && dossier.override_reason.is_some() {
                violations.push(Violation::OverrideReasonRequired {
                    dossier: id(),
                    grade,
                    triggers,
                });
            }
        }
        violations
    }

    /// The ratio the quota applies to this batch, in basis points: the
    /// exception's ratio clamped to `[base, max]`, else the base. Clamping
    /// keeps each violation independent: a missing reason is reported as
    /// such, not as a quota overrun that writing the reason would cure.
    pub fn effective_ratio_bp(&self, batch: &DraftBatch) -> u64 {
        let base = ratio_bp(batch.quota.ratio);
        match &batch.quota_exception {
            Some(exception) => ratio_bp(exception.ratio)
                .min(self.max_exception_bp)
                .max(base),
            None => base,
        }
    }

    /// Rule 6: the exception's own checks, then the quota of every group
    /// the batch grades into (groups sorted by name). E and G count this
    /// batch's reviewed dossiers plus `earlier`; not-reviewed subjects count
    /// in neither. A group only in `earlier` is not this batch's to judge.
    pub fn check_quota(&self, batch: &DraftBatch) -> Vec<Violation> {
        let mut violations = Vec::new();
        let base = ratio_bp(batch.quota.ratio);
        if let Some(exception) = &batch.quota_exception {
            let asked = ratio_bp(exception.ratio);
            if asked > self.max_exception_bp || asked < base {
                violations.push(Violation::ExceptionRatio {
                    ratio: exception.ratio,
                    base_ratio: batch.quota.ratio,
                    max_ratio: bp_to_ratio(self.max_exception_bp),
                });
            }
            if non_blank(exception.reason.as_deref()).is_none() {
                violations.push(Violation::ExceptionReasonRequired {
                    ratio: exception.ratio,
                });
            }
        }

        let ratio = self.effective_ratio_bp(batch);
        for (group, counts) in group_totals(batch) {
            let max_excellent = quota::max_excellent(ratio, counts.good, batch.quota.rounding);
            if counts.excellent > max_excellent {
                violations.push(Violation::Quota {
                    group,
                    excellent: counts.excellent,
                    good: counts.good,
                    max_excellent,
                    ratio: bp_to_ratio(ratio),
                });
            }
        }
        violations
    }
}

/// The excellent and good counts of every quota group the batch grades
/// into: this batch's reviewed, graded dossiers plus the group's `earlier`.
pub fn group_totals(batch: &DraftBatch) -> BTreeMap<String, GroupCounts> {
    let mut totals: BTreeMap<String, GroupCounts> = BTreeMap::new();
    for dossier in &batch.dossiers {
        if !dossier.status.is_reviewed() {
            continue;
        }
        let Some(grade) = dossier.grade else {
            continue;
        };
        let group = dossier.group();
        let counts = totals
            .entry(group.to_owned())
            .or_insert_with(|| batch.earlier.get(group).copied().unwrap_or_default());
        match grade {
            Grade::Excellent => counts.excellent = counts.excellent.saturating_add(1),
            Grade::Good => counts.good = counts.good.saturating_add(1),
            Grade::Completed | Grade::NotCompleted => {}
        }
    }
    totals
}

fn bp_to_ratio(bp: u64) -> f64 {
    bp as f64 / BASIS as f64
}

/// Checks a batch under its own rulebook: all violations, reported together.
pub fn check_batch(batch: &DraftBatch) -> CheckOutcome {
    Rulebook::for_id(batch.rulebook).check(batch)
}
