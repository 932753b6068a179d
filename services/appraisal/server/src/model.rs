//! [`AppraisalModel`]: the appraisal service's working state, folded from its
//! own store — its own appraisals and returns, and the copies of the events
//! it observes: the registry and cycles, subjects, self-reviews and meetings
//! (from submission) and grades (from approval).
//!
//! Beside each dossier the model keeps, per quota group of a deciding org in
//! a cycle, how many dossiers stand at excellent and at good — decided, or
//! else recommended by a standing appraisal — which is the pressure the
//! quota warning reports at appraisal time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gradeflow_approval_domain::GroupCounts;
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CycleOpened, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    MeetingRecorded, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{Actor, CycleId, DossierId, DossierState, Grade, OrgId};
use gradeflow_service::{trace, Model, OrgTree};
use serde::de::DeserializeOwned;

/// A quota group: (deciding org, cycle, group name).
pub type QuotaKey = (OrgId, CycleId, String);

/// Something that happened to a dossier here, with when and who.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped<E> {
    /// The event.
    pub event: E,
    /// When this store recorded it.
    pub at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
}

/// Everything appraisal knows about one dossier.
#[derive(Debug, Clone, PartialEq)]
pub struct AppraisalDossier {
    /// The registration.
    pub registered: SubjectRegistered,
    /// Its current state.
    pub state: DossierState,
    /// The latest self-review.
    pub self_review: Option<SelfReviewSubmitted>,
    /// The latest meeting.
    pub meeting: Option<MeetingRecorded>,
    /// The latest appraisal.
    pub appraisal: Option<Stamped<DossierAppraised>>,
    /// Every return, oldest first.
    pub returns: Vec<Stamped<DossierReturned>>,
    /// The grade in force, once decided.
    pub decided: Option<Grade>,
    /// The dossier's trace: the `traceparent` of its first self-review
    /// (`gradeflow_service::trace`), which this service's events about it
    /// continue.
    pub trace: Option<String>,
}

impl AppraisalDossier {
    /// The grade this dossier counts with in its quota group: the decided
    /// grade, else the recommendation of a standing appraisal (a returned
    /// dossier's old recommendation no longer counts).
    pub fn counted_grade(&self) -> Option<Grade> {
        self.decided.or_else(|| {
            (self.state == DossierState::Appraised)
                .then(|| self.appraisal.as_ref().map(|a| a.event.recommended_grade))
                .flatten()
        })
    }

    /// Its quota group.
    pub fn quota_key(&self) -> QuotaKey {
        let r = &self.registered;
        (r.deciding_org, r.cycle, r.quota_group.clone())
    }

    /// The tentative grade before an appraisal: the meeting's proposal, else
    /// the self-review's.
    pub fn proposed_grade(&self) -> Option<Grade> {
        self.meeting
            .as_ref()
            .map(|m| m.proposed_grade)
            .or_else(|| self.self_review.as_ref().map(|s| s.proposed_grade))
    }
}

/// The appraisal service's model.
#[derive(Debug, Default)]
pub struct AppraisalModel {
    /// The organisation tree.
    pub orgs: OrgTree,
    /// Cycles by id.
    pub cycles: HashMap<CycleId, CycleOpened>,
    /// Dossiers by id.
    pub dossiers: HashMap<DossierId, AppraisalDossier>,
    /// Dossiers by their deciding org (the worklist walks the tree, then
    /// this index).
    pub by_deciding: HashMap<OrgId, Vec<DossierId>>,
    /// Excellent and good counts per quota group.
    pub tallies: HashMap<QuotaKey, GroupCounts>,
}

fn parse<E: Event + DeserializeOwned>(event: &StoredEvent) -> Option<E> {
    match serde_json::from_value::<E>(event.payload.clone()) {
        Ok(e) => Some(e),
        Err(error) => {
            tracing::warn!(
                kind = %event.kind,
                position = event.position,
                %error,
                "skipping an event whose payload does not parse"
            );
            None
        }
    }
}

fn stamp<E>(event: E, stored: &StoredEvent) -> Stamped<E> {
    Stamped {
        event,
        at: stored.recorded_at,
        actor: stored.metadata.actor.clone(),
    }
}

impl Model for AppraisalModel {
    fn apply(&mut self, event: &StoredEvent) {
        if self.orgs.apply(&event.kind, &event.payload) {
            return;
        }
        let kind = event.kind.as_str();
        if kind == CycleOpened::KIND {
            if let Some(e) = parse::<CycleOpened>(event) {
                self.cycles.insert(e.cycle, e);
            }
        } else if kind == SubjectRegistered::KIND {
            if let Some(e) = parse::<SubjectRegistered>(event) {
                self.by_deciding
                    .entry(e.deciding_org)
                    .or_default()
                    .push(e.dossier);
                self.dossiers.insert(
                    e.dossier,
                    AppraisalDossier {
                        state: e.state,
                        registered: e,
                        self_review: None,
                        meeting: None,
                        appraisal: None,
                        returns: Vec::new(),
                        decided: None,
                        trace: None,
                    },
                );
            }
        } else if kind == SelfReviewSubmitted::KIND {
            if let Some(e) = parse::<SelfReviewSubmitted>(event) {
                let traceparent = event.metadata.traceparent.as_deref();
                self.update(e.dossier, |d| {
                    d.state = DossierState::Submitted;
                    d.self_review = Some(e);
                    if d.trace.is_none() {
                        d.trace = trace::valid(traceparent).map(str::to_owned);
                    }
                });
            }
        } else if kind == MeetingRecorded::KIND {
            if let Some(e) = parse::<MeetingRecorded>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Reviewed;
                    d.meeting = Some(e);
                });
            }
        } else if kind == DossierAppraised::KIND {
            if let Some(e) = parse::<DossierAppraised>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Appraised;
                    d.appraisal = Some(stamp(e, event));
                });
            }
        } else if kind == DossierReturned::KIND {
            if let Some(e) = parse::<DossierReturned>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Returned;
                    d.returns.push(stamp(e, event));
                });
            }
        } else if kind == GradeDecided::KIND {
            if let Some(e) = parse::<GradeDecided>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Decided;
                    d.decided = Some(e.grade);
                });
            }
        } else if kind == GradeRevised::KIND {
            if let Some(e) = parse::<GradeRevised>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Regraded;
                    d.decided = Some(e.grade);
                });
            }
        }
    }
}

impl AppraisalModel {
    /// Changes one dossier and keeps its quota group's tally in step with
    /// the grade it counts with before and after.
    fn update(&mut self, dossier: DossierId, change: impl FnOnce(&mut AppraisalDossier)) {
        let Some(d) = self.dossiers.get_mut(&dossier) else {
            return;
        };
        let before = d.counted_grade();
        change(d);
        let after = d.counted_grade();
        if before != after {
            let tally = self.tallies.entry(d.quota_key()).or_default();
            count(tally, before, false);
            count(tally, after, true);
        }
    }

    /// The excellent and good counts of `d`'s quota group without `d`
    /// itself, as the warning for a new recommendation on `d` needs them.
    pub fn group_without(&self, d: &AppraisalDossier) -> GroupCounts {
        let mut counts = self
            .tallies
            .get(&d.quota_key())
            .copied()
            .unwrap_or_default();
        count(&mut counts, d.counted_grade(), false);
        counts
    }

    /// Every org of the subtree under `top` (itself first), breadth first.
    pub fn subtree(&self, top: OrgId) -> Vec<OrgId> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([top]);
        let mut seen = std::collections::HashSet::new();
        while let Some(org) = queue.pop_front() {
            // `seen` guards against a corrupt tree with a loop.
            if !seen.insert(org) {
                continue;
            }
            out.push(org);
            if let Some(node) = self.orgs.get(org) {
                queue.extend(node.children.iter().copied());
            }
        }
        out
    }
}

fn count(tally: &mut GroupCounts, grade: Option<Grade>, add: bool) {
    let slot = match grade {
        Some(Grade::Excellent) => &mut tally.excellent,
        Some(Grade::Good) => &mut tally.good,
        _ => return,
    };
    *slot = if add {
        slot.saturating_add(1)
    } else {
        slot.saturating_sub(1)
    };
}
