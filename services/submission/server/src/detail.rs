//! [`DossierDetail`]: everything submission knows about one dossier — its
//! registration, the latest self-review and meeting, the appraisal, every
//! return, the decision and its re-gradings, and every step — folded from
//! the dossier's events when `GET /dossiers/{id}` asks for it. The model
//! keeps only where those events are ([`crate::model::DossierRecord::events`]);
//! the service reads them from the store by position and folds them here,
//! with the same parsing and the same state changes as the model
//! ([`crate::model::Step`]), so the view says what it said when the model
//! held all of this.

use chrono::{DateTime, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    DossierAppraised, DossierReturned, MeetingRecorded, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{Actor, DossierId, DossierState, EventId, OrgId};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::model::Step;

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

/// Everything submission knows about one dossier, folded from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct DossierDetail {
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
    /// When the upward flow opened this collective for decision, if it did.
    pub opened_for_decision: Option<DateTime<Utc>>,
    /// Every step, oldest first.
    pub history: Vec<HistoryEntry>,
}

impl DossierDetail {
    /// Folds the events of dossier `id`, in store order. Events about
    /// another dossier, or of a kind that is not about dossiers, are
    /// skipped. `None` when the registration is not among them (the dossier
    /// is not in the store, or not yet: its registration is still being
    /// committed).
    pub fn fold<'a>(
        id: DossierId,
        events: impl IntoIterator<Item = &'a StoredEvent>,
    ) -> Option<DossierDetail> {
        let mut detail: Option<DossierDetail> = None;
        for event in events {
            let Some(step) = Step::parse(event) else {
                continue;
            };
            if step.dossier() != id {
                continue;
            }
            match (step, &mut detail) {
                // A registration starts the dossier over, as in the model.
                (Step::Registered(e), _) => detail = Some(DossierDetail::registered(e, event)),
                (step, Some(d)) => d.apply(step, event),
                // Nothing about a dossier counts before its registration.
                (_, None) => {}
            }
        }
        detail
    }

    fn registered(e: SubjectRegistered, event: &StoredEvent) -> DossierDetail {
        let details = details(&[("subject", json!(e.subject)), ("status", json!(e.status))]);
        let mut d = DossierDetail {
            state: e.state,
            registered: e,
            self_review: None,
            meeting: None,
            appraisal: None,
            returns: Vec::new(),
            decision: None,
            opened_for_decision: None,
            history: Vec::new(),
        };
        d.push_history(event, details);
        d
    }

    fn apply(&mut self, step: Step, event: &StoredEvent) {
        self.state = step.state_after(self.state);
        let at = event.recorded_at;
        let details = match step {
            // Handled by `fold`.
            Step::Registered(_) => return,
            Step::SelfReview(e) => {
                let details = details(&[
                    ("proposed_grade", json!(e.proposed_grade)),
                    ("resubmission", json!(e.resubmission)),
                ]);
                self.self_review = Some((e, at));
                details
            }
            Step::Meeting(e) => {
                let details = details(&[("proposed_grade", json!(e.proposed_grade))]);
                self.meeting = Some((e, at));
                details
            }
            Step::Appraised(e) => {
                let details = details(&[
                    ("recommended_grade", json!(e.recommended_grade)),
                    ("warnings", json!(e.warnings.len())),
                ]);
                self.appraisal = Some((e, at));
                details
            }
            Step::Returned(e) => {
                let details = details(&[("reason", json!(e.reason))]);
                self.returns.push((e, at));
                details
            }
            Step::Decided(e) => {
                let details = details(&[
                    ("grade", json!(e.grade)),
                    ("decision", json!(e.decision)),
                    ("seq", json!(e.record.seq)),
                ]);
                self.decision = Some(DecisionRecord {
                    decision: e.decision,
                    grade: e.grade,
                    authority: e.authority,
                    seq: e.record.seq,
                    override_reason: e.override_reason,
                    at,
                    revisions: Vec::new(),
                });
                details
            }
            Step::Revised(e) => {
                let revision = json!({
                    "decision": e.decision,
                    "previous_grade": e.previous_grade,
                    "grade": e.grade,
                    "supersedes": e.supersedes,
                    "reason": e.reason,
                    "seq": e.record.seq,
                    "at": at,
                });
                let details = details(&[
                    ("grade", json!(e.grade)),
                    ("previous_grade", json!(e.previous_grade)),
                    ("reason", json!(e.reason)),
                ]);
                match &mut self.decision {
                    Some(dec) => {
                        dec.decision = e.decision;
                        dec.grade = e.grade;
                        dec.seq = e.record.seq;
                        dec.revisions.push(revision);
                    }
                    // A revision without a first grade seen here (should not
                    // happen; the consumer delivers in order): keep what it
                    // says.
                    None => {
                        self.decision = Some(DecisionRecord {
                            decision: e.decision,
                            grade: e.grade,
                            authority: e.authority,
                            seq: e.record.seq,
                            override_reason: None,
                            at,
                            revisions: vec![revision],
                        })
                    }
                }
                details
            }
            Step::Opened(_) => {
                self.opened_for_decision = Some(at);
                Map::new()
            }
        };
        self.push_history(event, details);
    }

    fn push_history(&mut self, event: &StoredEvent, details: Map<String, Value>) {
        self.history.push(HistoryEntry {
            kind: event.kind.clone(),
            at: event.recorded_at,
            actor: event.metadata.actor.clone(),
            event_id: event.event_id,
            service: event.metadata.service.clone(),
            state: self.state,
            details,
        });
    }
}

fn details(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::tests::stored;
    use crate::model::SubmissionModel;
    use gradeflow_proto::events::{CollectiveDossierOpened, Event, GradeDecided, GradeRevised};
    use gradeflow_proto::{CycleId, SubjectId};
    use gradeflow_service::Model;

    fn registration(position: i64, dossier: DossierId, name: &str) -> StoredEvent {
        stored(
            position,
            &dossier.stream(),
            SubjectRegistered::KIND,
            json!({"subject": SubjectId::new(), "dossier": dossier, "cycle": CycleId::new(),
                "org": OrgId::new(), "deciding_org": OrgId::new(), "kind": "collective",
                "name": name, "category": "01", "leader": false, "status": "active",
                "quota_group": "collectives", "state": "open"}),
        )
    }

    fn record(seq: u64) -> Value {
        json!({"seq": seq, "hash": "ab".repeat(32), "signature": "c2ln", "key_id": "k1"})
    }

    #[test]
    fn the_fold_keeps_only_the_dossiers_own_events_and_needs_its_registration() {
        let (d, other) = (DossierId::new(), DossierId::new());
        let events = [
            // Before the registration: not counted.
            stored(
                1,
                &d.stream(),
                DossierReturned::KIND,
                json!({"dossier": d, "reason": "early"}),
            ),
            registration(2, d, "Chi bộ 1"),
            // Another dossier's events (a position that no longer holds what
            // the model predicted): skipped.
            registration(3, other, "Chi bộ 2"),
            stored(
                4,
                &other.stream(),
                DossierReturned::KIND,
                json!({"dossier": other, "reason": "no"}),
            ),
            stored(
                5,
                &d.stream(),
                DossierReturned::KIND,
                json!({"dossier": d, "reason": "Thiếu"}),
            ),
            // A kind that is not about dossiers, and a payload that does not parse.
            stored(6, "cycle-x", "unit_completed.v1", json!({})),
            stored(7, &d.stream(), DossierReturned::KIND, json!({"dossier": d})),
        ];
        let detail = DossierDetail::fold(d, &events).unwrap();
        assert_eq!(detail.registered.name, "Chi bộ 1");
        assert_eq!(detail.state, DossierState::Returned);
        assert_eq!(detail.returns.len(), 1);
        assert_eq!(detail.returns[0].0.reason, "Thiếu");
        let kinds: Vec<&str> = detail.history.iter().map(|h| h.kind.as_str()).collect();
        assert_eq!(kinds, [SubjectRegistered::KIND, DossierReturned::KIND]);

        assert_eq!(
            DossierDetail::fold(d, &events[2..]),
            None,
            "no registration"
        );
        assert_eq!(DossierDetail::fold(DossierId::new(), &events), None);
    }

    #[test]
    fn the_fold_ends_in_the_state_the_model_keeps() {
        let d = DossierId::new();
        let (cycle, org) = (CycleId::new(), OrgId::new());
        let decided = json!({"decision": gradeflow_proto::DecisionId::new(), "dossier": d,
            "subject": SubjectId::new(), "cycle": cycle, "authority": org, "org": org,
            "grade": "good", "quota_group": "collectives", "record": record(1)});
        let revised = json!({"decision": gradeflow_proto::DecisionId::new(), "dossier": d,
            "subject": SubjectId::new(), "cycle": cycle, "authority": org,
            "previous_grade": "good", "grade": "excellent", "supersedes": 1, "reason": "why",
            "record": record(2)});
        let opened = json!({"cycle": cycle, "dossier": d, "org": org});
        let events = [
            registration(1, d, "Đảng bộ"),
            stored(2, "decision-log", GradeDecided::KIND, decided),
            stored(3, "decision-log", GradeRevised::KIND, revised),
            stored(4, &d.stream(), CollectiveDossierOpened::KIND, opened),
        ];
        let mut model = SubmissionModel::default();
        for (n, e) in events.iter().enumerate() {
            model.apply(e);
            let detail = DossierDetail::fold(d, &events[..=n]).unwrap();
            let kept = model.dossiers.get(&d).unwrap();
            assert_eq!(detail.state, kept.state, "after {}", e.kind);
            assert_eq!(
                detail.opened_for_decision.is_some(),
                kept.opened_for_decision
            );
            assert_eq!(kept.events.to_vec(), (1..=n as i64 + 1).collect::<Vec<_>>());
        }
        let detail = DossierDetail::fold(d, &events).unwrap();
        let decision = detail.decision.unwrap();
        assert_eq!(decision.grade, gradeflow_proto::Grade::Excellent);
        assert_eq!(decision.revisions.len(), 1);
        assert_eq!(detail.state, DossierState::Regraded);
    }
}
