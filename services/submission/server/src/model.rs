//! [`SubmissionModel`]: the submission service's working state, folded from
//! its own event store — its own events (registry, cycles, subjects,
//! self-reviews, meetings, opened collectives) and the copies of the
//! appraisal and approval events it observes (appraisals, returns, grades,
//! completed units and cycles). Every command is decided on this model, and
//! every query answers from it, so a process restarted on the same store
//! answers exactly as before.
//!
//! `apply` trusts what it folds: the facts were checked by whoever recorded
//! them (this service's own decide functions, or the service that emitted an
//! observed event). A payload that does not parse is skipped with a warning
//! rather than stopping the service — the store's hash chain still holds it
//! for an auditor.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleCompleted, CycleOpened, DossierAppraised, DossierReturned, Event,
    GradeDecided, GradeRevised, MeetingRecorded, SelfReviewSubmitted, SubjectRegistered,
    UnitCompleted,
};
use gradeflow_proto::{Actor, CycleId, DossierId, DossierState, EventId, OrgId};
use gradeflow_service::{trace, Model, OrgTree};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// A cycle as opened, with when it was opened and (once approval says so)
/// completed.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleRecord {
    /// The event that opened it.
    pub opened: CycleOpened,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When Central's own collective was decided, if it was.
    pub completed_at: Option<DateTime<Utc>>,
}

/// One step in a dossier's life, as `GET /dossiers/{id}` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The versioned event kind, e.g. `self_review_submitted.v1`.
    pub kind: String,
    /// When this store recorded it.
    pub at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// The event (for an observed event: this store's copy).
    pub event_id: EventId,
    /// The service that emitted it.
    pub service: String,
    /// The dossier's state after it.
    pub state: DossierState,
    /// What matters about the step (a reason, a grade…).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// The decision on a dossier, as approval reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// The (latest) decision document.
    pub decision: gradeflow_proto::DecisionId,
    /// The grade in force.
    pub grade: gradeflow_proto::Grade,
    /// The deciding org.
    pub authority: OrgId,
    /// The decision-log record in force.
    pub seq: u64,
    /// Mitigation reason recorded for an overridden trigger.
    pub override_reason: Option<String>,
    /// When this store learned of it.
    pub at: DateTime<Utc>,
    /// Re-gradings, oldest first: `{previous_grade, grade, supersedes, reason, seq, at}`.
    pub revisions: Vec<Value>,
}

/// Everything submission knows about one dossier.
#[derive(Debug, Clone, PartialEq)]
pub struct DossierRecord {
    /// The registration (subject, org, deciding org, category…).
    pub registered: SubjectRegistered,
    /// Its current state.
    pub state: DossierState,
    /// The latest self-review and when it was filed.
    pub self_review: Option<(SelfReviewSubmitted, DateTime<Utc>)>,
    /// The meeting and when it was recorded.
    pub meeting: Option<(MeetingRecorded, DateTime<Utc>)>,
    /// The latest appraisal and when this store learned of it.
    pub appraisal: Option<(DossierAppraised, DateTime<Utc>)>,
    /// Every return, oldest first, with when this store learned of it.
    pub returns: Vec<(DossierReturned, DateTime<Utc>)>,
    /// The decision, once graded.
    pub decision: Option<DecisionRecord>,
    /// Set once the upward flow opened this collective for decision.
    pub opened_for_decision: Option<DateTime<Utc>>,
    /// Every step, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The dossier's trace: the `traceparent` of its first self-review
    /// (`gradeflow_service::trace`); every later event about it continues it.
    pub trace: Option<String>,
}

/// The submission service's model.
#[derive(Debug, Default)]
pub struct SubmissionModel {
    /// The organisation tree.
    pub orgs: OrgTree,
    /// Cycles by id.
    pub cycles: BTreeMap<CycleId, CycleRecord>,
    /// Dossiers by id.
    pub dossiers: HashMap<DossierId, DossierRecord>,
    /// Dossiers by the org they belong to (worklists walk the tree, then
    /// this index, instead of every dossier).
    pub by_org: HashMap<OrgId, Vec<DossierId>>,
    /// The collective dossier of each (cycle, org).
    pub collectives: HashMap<(CycleId, OrgId), DossierId>,
    /// Per cycle, every org with a dossier in its subtree: the units that
    /// take part in the cycle, whose completion a parent waits for.
    pub participating: HashMap<CycleId, HashSet<OrgId>>,
    /// Per cycle, the units approval reported complete.
    pub completed_units: HashMap<CycleId, BTreeSet<OrgId>>,
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

impl Model for SubmissionModel {
    fn apply(&mut self, event: &StoredEvent) {
        if self.orgs.apply(&event.kind, &event.payload) {
            return;
        }
        let kind = event.kind.as_str();
        if kind == CycleOpened::KIND {
            if let Some(e) = parse::<CycleOpened>(event) {
                self.cycles.insert(
                    e.cycle,
                    CycleRecord {
                        opened: e,
                        opened_at: event.recorded_at,
                        completed_at: None,
                    },
                );
            }
        } else if kind == CycleCompleted::KIND {
            if let Some(e) = parse::<CycleCompleted>(event) {
                if let Some(c) = self.cycles.get_mut(&e.cycle) {
                    c.completed_at = Some(e.completed_at);
                }
            }
        } else if kind == SubjectRegistered::KIND {
            if let Some(e) = parse::<SubjectRegistered>(event) {
                self.register(e, event);
            }
        } else if kind == UnitCompleted::KIND {
            if let Some(e) = parse::<UnitCompleted>(event) {
                self.completed_units
                    .entry(e.cycle)
                    .or_default()
                    .insert(e.org);
            }
        } else {
            self.apply_dossier_event(event);
        }
    }
}

impl SubmissionModel {
    fn register(&mut self, e: SubjectRegistered, event: &StoredEvent) {
        let id = e.dossier;
        self.by_org.entry(e.org).or_default().push(id);
        if e.kind == gradeflow_proto::SubjectKind::Collective {
            self.collectives.insert((e.cycle, e.org), id);
        }
        self.mark_participating(e.cycle, e.org);
        let mut record = DossierRecord {
            state: e.state,
            registered: e,
            self_review: None,
            meeting: None,
            appraisal: None,
            returns: Vec::new(),
            decision: None,
            opened_for_decision: None,
            history: Vec::new(),
            trace: None,
        };
        let details = details(&[
            ("subject", json!(record.registered.subject)),
            ("status", json!(record.registered.status)),
        ]);
        push_history(&mut record, event, details);
        self.dossiers.insert(id, record);
    }

    /// Marks `org` and its ancestors as taking part in `cycle`. Stops at the
    /// first ancestor already marked: its own ancestors are marked too.
    fn mark_participating(&mut self, cycle: CycleId, org: OrgId) {
        let set = self.participating.entry(cycle).or_default();
        let mut cur = Some(org);
        // Bounded by the tree's size, so a corrupt parent cycle cannot hang.
        for _ in 0..=self.orgs.len() {
            let Some(c) = cur else { break };
            if !set.insert(c) {
                break;
            }
            cur = self.orgs.get(c).and_then(|o| o.parent);
        }
    }

    /// Folds an event about one dossier (own or observed).
    fn apply_dossier_event(&mut self, event: &StoredEvent) {
        let kind = event.kind.as_str();
        if kind == SelfReviewSubmitted::KIND {
            let Some(e) = parse::<SelfReviewSubmitted>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Submitted;
            if d.trace.is_none() {
                d.trace = trace::valid(event.metadata.traceparent.as_deref()).map(str::to_owned);
            }
            let details = details(&[
                ("proposed_grade", json!(e.proposed_grade)),
                ("resubmission", json!(e.resubmission)),
            ]);
            d.self_review = Some((e, event.recorded_at));
            push_history(d, event, details);
        } else if kind == MeetingRecorded::KIND {
            let Some(e) = parse::<MeetingRecorded>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Reviewed;
            let details = details(&[("proposed_grade", json!(e.proposed_grade))]);
            d.meeting = Some((e, event.recorded_at));
            push_history(d, event, details);
        } else if kind == DossierAppraised::KIND {
            let Some(e) = parse::<DossierAppraised>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Appraised;
            let details = details(&[
                ("recommended_grade", json!(e.recommended_grade)),
                ("warnings", json!(e.warnings.len())),
            ]);
            d.appraisal = Some((e, event.recorded_at));
            push_history(d, event, details);
        } else if kind == DossierReturned::KIND {
            let Some(e) = parse::<DossierReturned>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Returned;
            let details = details(&[("reason", json!(e.reason))]);
            d.returns.push((e, event.recorded_at));
            push_history(d, event, details);
        } else if kind == GradeDecided::KIND {
            let Some(e) = parse::<GradeDecided>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Decided;
            let details = details(&[
                ("grade", json!(e.grade)),
                ("decision", json!(e.decision)),
                ("seq", json!(e.record.seq)),
            ]);
            d.decision = Some(DecisionRecord {
                decision: e.decision,
                grade: e.grade,
                authority: e.authority,
                seq: e.record.seq,
                override_reason: e.override_reason,
                at: event.recorded_at,
                revisions: Vec::new(),
            });
            push_history(d, event, details);
        } else if kind == GradeRevised::KIND {
            let Some(e) = parse::<GradeRevised>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.state = DossierState::Regraded;
            let revision = json!({
                "decision": e.decision,
                "previous_grade": e.previous_grade,
                "grade": e.grade,
                "supersedes": e.supersedes,
                "reason": e.reason,
                "seq": e.record.seq,
                "at": event.recorded_at,
            });
            let details = details(&[
                ("grade", json!(e.grade)),
                ("previous_grade", json!(e.previous_grade)),
                ("reason", json!(e.reason)),
            ]);
            match &mut d.decision {
                Some(dec) => {
                    dec.decision = e.decision;
                    dec.grade = e.grade;
                    dec.seq = e.record.seq;
                    dec.revisions.push(revision);
                }
                // A revision without a first grade seen here (should not
                // happen; the consumer delivers in order): keep what it says.
                None => {
                    d.decision = Some(DecisionRecord {
                        decision: e.decision,
                        grade: e.grade,
                        authority: e.authority,
                        seq: e.record.seq,
                        override_reason: None,
                        at: event.recorded_at,
                        revisions: vec![revision],
                    })
                }
            }
            push_history(d, event, details);
        } else if kind == CollectiveDossierOpened::KIND {
            let Some(e) = parse::<CollectiveDossierOpened>(event) else {
                return;
            };
            let Some(d) = self.dossiers.get_mut(&e.dossier) else {
                return;
            };
            d.opened_for_decision = Some(event.recorded_at);
            push_history(d, event, Map::new());
        }
        // Any other kind is not this model's business (the consumer only
        // delivers what `observes` accepts, so this is a newer own kind).
    }

    /// The org's current node, unless it is unknown or merged away.
    pub fn live_org(
        &self,
        org: OrgId,
    ) -> Result<&gradeflow_service::OrgNode, gradeflow_proto::Rejection> {
        let node = self
            .orgs
            .get(org)
            .ok_or_else(|| crate::refusals::unknown_org(org))?;
        match node.merged_into {
            Some(into) => Err(crate::refusals::merged_org(org, into)),
            None => Ok(node),
        }
    }

    /// Every org of the subtree under `top` (itself first), breadth first.
    pub fn subtree(&self, top: OrgId) -> Vec<OrgId> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([top]);
        let mut seen = HashSet::new();
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

fn details(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn push_history(d: &mut DossierRecord, event: &StoredEvent, details: Map<String, Value>) {
    d.history.push(HistoryEntry {
        kind: event.kind.clone(),
        at: event.recorded_at,
        actor: event.metadata.actor.clone(),
        event_id: event.event_id,
        service: event.metadata.service.clone(),
        state: d.state,
        details,
    });
}
