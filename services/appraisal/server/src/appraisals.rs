//! The organisation board's decisions: appraise a dossier (recommend a grade
//! on consolidated facts, with the rulebook's warnings) or return it for
//! rework with a reason. Both go on the dossier's stream `dossier-<id>`; the
//! submission domain's state machine says when each is legal.
//!
//! Who may act (`API.md` § Subjects and dossiers): the appraiser of the
//! dossier's **deciding org** — the parent of the individual's org, or of
//! the collective's own org; the root's collective at the root — or anyone
//! whose role covers it higher up.

use std::sync::Arc;

use gradeflow_approval_domain::{appraisal_warnings, DraftDossier};
use gradeflow_proto::commands::{AppraiseDossier, ReturnDossier};
use gradeflow_proto::events::{DossierAppraised, DossierReturned, RuleWarning};
use gradeflow_proto::{Actor, DossierId, DossierState, Facts, Grade, Rejection, Role};
use gradeflow_service::{Decision, Emit};
use gradeflow_submission_domain::{transition, Action};
use serde_json::json;

use crate::model::{AppraisalDossier, AppraisalModel};
use crate::refusals::{invalid_input, unknown_cycle, unknown_dossier, wrong_state};

/// The state after `action` on dossier `id` (record `d`), or the state
/// machine's refusal as `wrong_state` (409).
pub fn step(
    id: DossierId,
    d: &AppraisalDossier,
    action: Action,
) -> Result<DossierState, Rejection> {
    transition(d.state, action).map_err(|why| wrong_state(id, d.state, action, why))
}

fn dossier(model: &AppraisalModel, id: DossierId) -> Result<Arc<AppraisalDossier>, Rejection> {
    model.dossiers.get(&id).ok_or_else(|| unknown_dossier(id))
}

/// Dossier `id` (record `d`) as the rulebook reads it, graded `grade` on
/// `facts`.
pub fn draft(
    id: DossierId,
    d: &AppraisalDossier,
    grade: Option<Grade>,
    facts: &Facts,
) -> DraftDossier {
    let review = d.self_review.as_ref();
    DraftDossier {
        category: Some(d.category),
        leader: d.leader,
        status: d.status,
        quota_group: Some(d.quota_group.to_string()),
        score: review.and_then(|s| s.score),
        tasks: review.map(|s| s.tasks),
        shortcomings_fixed: review.is_none_or(|s| s.shortcomings_fixed),
        facts: facts.clone(),
        grade,
        ..DraftDossier::new(id.to_string(), d.kind)
    }
}

/// The warnings for recommending `grade` on `facts` for dossier `id`
/// (record `d`): the rules of the cycle's rulebook as warnings, and quota
/// pressure in `d`'s group of its deciding org and cycle, counting the
/// grades decided or recommended so far (without `d`'s own).
pub fn warnings_for(
    model: &AppraisalModel,
    id: DossierId,
    d: &AppraisalDossier,
    grade: Grade,
    facts: &Facts,
) -> Result<Vec<RuleWarning>, Rejection> {
    let cycle = model
        .cycles
        .get(&d.cycle)
        .ok_or_else(|| unknown_cycle(d.cycle))?;
    Ok(appraisal_warnings(
        cycle.rulebook,
        &cycle.quota,
        &draft(id, d, Some(grade), facts),
        model.group_without(d),
    ))
}

/// Appraises a reviewed dossier: the board's recommended grade, the facts it
/// consolidated and the rulebook's warnings, which inform but never refuse
/// (the rules bind at the decision).
pub fn appraise(
    model: &AppraisalModel,
    actor: &Actor,
    input: &AppraiseDossier,
) -> Result<Decision, Rejection> {
    let d = dossier(model, input.dossier)?;
    model
        .orgs
        .authorize(actor, Role::Appraiser, d.deciding_org)?;
    if let Some(field) = input.facts.out_of_range_ratio() {
        return Err(invalid_input(
            &format!("facts.{field}"),
            format!("`{field}` is a share and must be between 0 and 1"),
            "Tỷ lệ phải nằm trong khoảng từ 0 đến 1",
        ));
    }
    let state = step(input.dossier, &d, Action::Appraise)?;
    let warnings = warnings_for(
        model,
        input.dossier,
        &d,
        input.recommended_grade,
        &input.facts,
    )?;
    let event = DossierAppraised {
        dossier: input.dossier,
        recommended_grade: input.recommended_grade,
        facts: input.facts.clone(),
        notes: input.notes.clone(),
        warnings: warnings.clone(),
    };
    Ok(Decision {
        events: vec![Emit::new(
            input.dossier.stream(),
            &event,
            model.orgs.province_of(d.org),
        )
        .in_trace(d.trace.map(|t| t.traceparent()).as_deref())],
        reads: Vec::new(),
        result: json!({ "state": state, "warnings": warnings }),
    })
}

/// Returns a dossier to its unit for rework; the reason is required, since
/// the unit has to know what to fix.
pub fn return_dossier(
    model: &AppraisalModel,
    actor: &Actor,
    input: &ReturnDossier,
) -> Result<Decision, Rejection> {
    let d = dossier(model, input.dossier)?;
    model
        .orgs
        .authorize(actor, Role::Appraiser, d.deciding_org)?;
    let reason = input.reason.trim();
    if reason.is_empty() {
        return Err(invalid_input(
            "reason",
            "a returned dossier needs a reason",
            "Trả lại hồ sơ phải nêu rõ lý do",
        ));
    }
    let state = step(input.dossier, &d, Action::Return)?;
    let event = DossierReturned {
        dossier: input.dossier,
        reason: reason.to_owned(),
    };
    Ok(Decision {
        events: vec![Emit::new(
            input.dossier.stream(),
            &event,
            model.orgs.province_of(d.org),
        )
        .in_trace(d.trace.map(|t| t.traceparent()).as_deref())],
        reads: Vec::new(),
        result: json!({ "state": state }),
    })
}
