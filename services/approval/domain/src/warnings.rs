//! What the appraisal step shows the organisation board: the same rules as
//! the decision check, as warnings instead of refusals (the quota binds at
//! the decision; at appraisal it is only pressure — research § 4,
//! "Enforcement point"). The appraisal service attaches these to
//! `DossierAppraised` as [`RuleWarning`]s.

use gradeflow_proto::events::RuleWarning;
use gradeflow_proto::{Grade, QuotaSettings, RulebookId};

use crate::draft::{DraftDossier, GroupCounts};
use crate::quota::{max_excellent, ratio_bp};
use crate::rulebook::Rulebook;
use crate::violation::Violation;

/// Warnings for one appraised dossier whose `grade` is the recommended
/// grade. `group` holds the excellent and good counts already decided or
/// recommended in the dossier's quota group, *without* this dossier.
///
/// * per-dossier rules (`not_reviewed`, `score_band`, `conditions`,
///   `hard_trigger`) as at the decision, except `not_ready`: children are
///   often still open while their unit is appraised, and ordering binds
///   only the decision;
/// * `quota` when this recommendation would take the group over the base
///   ratio of the cycle.
pub fn appraisal_warnings(
    rulebook: RulebookId,
    quota: &QuotaSettings,
    dossier: &DraftDossier,
    group: GroupCounts,
) -> Vec<RuleWarning> {
    let rules = Rulebook::for_id(rulebook);
    let mut warnings: Vec<RuleWarning> = rules
        .check_dossier(dossier)
        .iter()
        .filter(|v| !matches!(v, Violation::NotReady { .. }))
        .map(warning)
        .collect();

    if let (true, Some(grade)) = (dossier.status.is_reviewed(), dossier.grade) {
        let mut counts = group;
        match grade {
            Grade::Excellent => counts.excellent = counts.excellent.saturating_add(1),
            Grade::Good => counts.good = counts.good.saturating_add(1),
            Grade::Completed | Grade::NotCompleted => {}
        }
        let bp = ratio_bp(quota.ratio);
        let max = max_excellent(bp, counts.good, quota.rounding);
        // Only the recommendation that tips (or keeps) the group over the
        // quota is flagged; a good grade only ever relieves it.
        if grade == Grade::Excellent && counts.excellent > max {
            warnings.push(warning(&Violation::Quota {
                group: dossier.group().to_owned(),
                excellent: counts.excellent,
                good: counts.good,
                max_excellent: max,
                ratio: quota.ratio,
            }));
        }
    }
    warnings
}

/// A violation as an appraisal warning: same rule id and sentences.
pub fn warning(violation: &Violation) -> RuleWarning {
    RuleWarning {
        rule: violation.rule().to_owned(),
        message: violation.message(),
        message_vi: violation.message_vi(),
    }
}
