//! The upward flow (Art. 12.2: lower tier before upper tier). Approval
//! reports `unit_completed` when every dossier of a unit is settled; when
//! that completes the last outstanding child unit of a parent, submission
//! opens the parent's collective dossier for decision with
//! `collective_dossier_opened` on that dossier's stream.
//!
//! What "every child unit" means here: the children of the parent that take
//! part in the cycle — those with at least one dossier registered in their
//! subtree. A child with no subject at all is never completed by approval,
//! and waiting for it would stall the parent forever.
//!
//! Completions are remembered per cycle (the model folds the observed
//! `unit_completed` copies), so a parent collective registered *after* its
//! children completed is opened in the same decision that registers it.
//! A unit without participating children (a cell) is never "opened" by this
//! flow: its collective waits only for its own members, which approval
//! checks at the decision.
//!
//! Idempotency: the reaction reads the model as it was before the observed
//! fact and adds the fact itself. A redelivered `unit_completed` finds the
//! unit completed and the collective opened, so it reacts with nothing, and
//! its copy (a name-based id) is already stored: nothing is appended.

use gradeflow_proto::events::{CollectiveDossierOpened, Event, UnitCompleted};
use gradeflow_proto::{CycleId, DossierId, DossierState, Envelope, OrgId, Rejection};
use gradeflow_service::{Decision, Emit};

use crate::model::SubmissionModel;

/// The reaction to an observed event: `collective_dossier_opened` for the
/// completed unit's parent when it was the last child it waited for;
/// nothing for any other event.
pub fn react(model: &SubmissionModel, envelope: &Envelope) -> Result<Decision, Rejection> {
    if envelope.kind != UnitCompleted::KIND {
        return Ok(Decision::default());
    }
    let done = match serde_json::from_value::<UnitCompleted>(envelope.payload.clone()) {
        Ok(done) => done,
        Err(error) => {
            // The copy is still recorded (the store keeps what was seen);
            // there is just nothing to react to.
            tracing::warn!(event_id = %envelope.event_id, %error, "unit_completed does not parse");
            return Ok(Decision::default());
        }
    };
    // The root completing means the cycle is done: nothing sits above it.
    let Some(parent) = model.orgs.get(done.org).and_then(|o| o.parent) else {
        return Ok(Decision::default());
    };
    let Some(&dossier) = model.collectives.get(&(done.cycle, parent)) else {
        // No collective registered yet: the completion is remembered and the
        // registration opens it (see `open_at_registration`).
        return Ok(Decision::default());
    };
    let opened = opening(model, done.cycle, parent, dossier, Some(done.org));
    Ok(Decision {
        events: opened.into_iter().collect(),
        ..Decision::default()
    })
}

/// The opening of a collective being registered now, when every
/// participating child unit of its org is complete already.
pub fn open_at_registration(
    model: &SubmissionModel,
    cycle: CycleId,
    org: OrgId,
    dossier: DossierId,
) -> Option<Emit> {
    children_complete(model, cycle, org, None).then(|| opened(model, cycle, org, dossier))
}

/// The opening of a registered collective, unless it is opened already, not
/// reviewed at all, or still waiting for a child unit.
fn opening(
    model: &SubmissionModel,
    cycle: CycleId,
    org: OrgId,
    dossier: DossierId,
    just_completed: Option<OrgId>,
) -> Option<Emit> {
    let record = model.dossiers.get(&dossier)?;
    if record.opened_for_decision || record.state == DossierState::NotReviewed {
        return None;
    }
    children_complete(model, cycle, org, just_completed).then(|| opened(model, cycle, org, dossier))
}

/// Whether `org` has at least one child unit taking part in `cycle` and all
/// of them are complete (counting `just_completed`, which the model has not
/// folded yet).
fn children_complete(
    model: &SubmissionModel,
    cycle: CycleId,
    org: OrgId,
    just_completed: Option<OrgId>,
) -> bool {
    let Some(node) = model.orgs.get(org) else {
        return false;
    };
    let participating = model.participating.get(&cycle);
    let completed = model.completed_units.get(&cycle);
    let mut waited_for = 0usize;
    for child in &node.children {
        if !participating.is_some_and(|p| p.contains(child)) {
            continue;
        }
        waited_for += 1;
        let done = Some(*child) == just_completed || completed.is_some_and(|c| c.contains(child));
        if !done {
            return false;
        }
    }
    waited_for > 0
}

fn opened(model: &SubmissionModel, cycle: CycleId, org: OrgId, dossier: DossierId) -> Emit {
    Emit::new(
        dossier.stream(),
        &CollectiveDossierOpened {
            cycle,
            dossier,
            org,
        },
        model.orgs.province_of(org),
    )
    .in_trace(
        model
            .dossiers
            .get(&dossier)
            .and_then(|d| d.trace)
            .map(|t| t.traceparent())
            .as_deref(),
    )
}
