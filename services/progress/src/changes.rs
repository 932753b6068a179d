//! Live updates: which parts of the progress tree an event changes.
//!
//! `GET /api/v1/cycles/{cycle}/progress/stream` (portal) pushes a node each
//! time it changes. The progress service commits observed events through
//! the generic consumer loop of `gradeflow-service` (`runtime.rs`), which
//! has no hook after the commit, and a notification sent before the commit
//! could announce a change a crash then loses. So the design is
//! **pull, not push**:
//!
//! * the portal polls `progress_version.v1 {cycle}` (every ~250 ms, one
//!   poller per cycle shared by all its streams): `position` moves with
//!   every committed event, `cycle_position` only with events that change
//!   that cycle's answers (its own events and the registry's);
//! * when it moved, the portal re-queries `progress.v1` for each open
//!   stream and pushes the node only when it differs from the last one
//!   sent.
//!
//! This sees exactly what is committed (a query catches the model up with
//! the store first), needs no extra subject or state in NATS, and survives
//! a restart of either side. [`touched`] is the pure function a push-based
//! notifier would use (the orgs whose nodes an event changes), should the
//! runtime grow a post-commit hook later.

use gradeflow_proto::events::{
    CycleCompleted, CycleOpened, DecisionRecorded, Event, GradeDecided, SubjectRegistered,
    UnitCompleted,
};
use gradeflow_proto::{CycleId, DossierId, Envelope, OrgId};
use serde::Deserialize;

use crate::model::ProgressModel;

/// The (cycle, org) nodes whose progress answer `envelope` changes: the
/// ancestor path (nearest first) of the org of the dossier or unit it is
/// about; for the cycle's own events, the cycle's root; for registry events
/// (renames, moves, merges), the org's path in every cycle. Works on the
/// model before or after the event is folded.
pub fn touched(model: &ProgressModel, envelope: &Envelope) -> Vec<(CycleId, OrgId)> {
    #[derive(Deserialize)]
    struct Refs {
        #[serde(default)]
        dossier: Option<DossierId>,
        #[serde(default)]
        cycle: Option<CycleId>,
        #[serde(default)]
        org: Option<OrgId>,
        #[serde(default)]
        root: Option<OrgId>,
        #[serde(default)]
        into: Option<OrgId>,
        #[serde(default)]
        to_parent: Option<OrgId>,
        #[serde(default)]
        from: Option<serde_json::Value>,
    }
    let Ok(refs) = serde_json::from_value::<Refs>(envelope.payload.clone()) else {
        return Vec::new();
    };
    let kind = envelope.kind.as_str();
    let along = |cycle: CycleId, org: OrgId| -> Vec<(CycleId, OrgId)> {
        model.path(org).into_iter().map(|o| (cycle, o)).collect()
    };

    // The dossier's own cycle and org, from the model, or from the payload
    // of a registration or a grade (they carry both).
    if let Some(dossier) = refs.dossier {
        if let Some(d) = model.dossiers.get(&dossier) {
            return along(d.registered.cycle, d.registered.org);
        }
        if kind == SubjectRegistered::KIND || kind == GradeDecided::KIND {
            if let (Some(cycle), Some(org)) = (refs.cycle, refs.org) {
                return along(cycle, org);
            }
        }
        return Vec::new();
    }
    if kind == UnitCompleted::KIND {
        if let (Some(cycle), Some(org)) = (refs.cycle, refs.org) {
            return along(cycle, org);
        }
    }
    if kind == CycleOpened::KIND || kind == CycleCompleted::KIND || kind == DecisionRecorded::KIND {
        let Some(cycle) = refs.cycle else {
            return Vec::new();
        };
        return match model.cycles.get(&cycle) {
            Some(c) => vec![(cycle, c.opened.root)],
            None => refs.root.map(|root| (cycle, root)).into_iter().collect(),
        };
    }
    // Registry events: every org they name, in every cycle, along the
    // paths before (from the model) and after (the new parent's path).
    let mut orgs: Vec<OrgId> = Vec::new();
    orgs.extend(refs.org);
    orgs.extend(refs.into);
    orgs.extend(refs.to_parent);
    if let Some(from) = refs
        .from
        .and_then(|f| serde_json::from_value::<Vec<OrgId>>(f).ok())
    {
        orgs.extend(from);
    }
    let mut out = Vec::new();
    let mut cycles: Vec<CycleId> = model.cycles.keys().copied().collect();
    cycles.sort();
    for cycle in cycles {
        for org in &orgs {
            for node in along(cycle, *org) {
                if !out.contains(&node) {
                    out.push(node);
                }
            }
        }
    }
    out
}
