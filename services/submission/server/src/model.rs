//! [`SubmissionModel`]: the submission service's working state, folded from
//! its own event store — its own events (registry, cycles, subjects,
//! self-reviews, meetings, opened collectives) and the copies of the
//! appraisal and approval events it observes (appraisals, returns, grades,
//! completed units and cycles). Every command is decided on this model, and
//! every query but one answers from it, so a process restarted on the same
//! store answers exactly as before.
//!
//! Of each dossier the model holds its state and what the commands, the
//! submitter's worklist and the upward flow need ([`DossierRecord`]), and
//! where the dossier's events are in the store. The details — the
//! self-review, the meeting, appraisals, returns, grades, the history —
//! are not held: `GET /dossiers/{id}` reads the dossier's events back from
//! the store and folds them ([`crate::detail`]).
//!
//! **Bounded memory** (`docs/adr/0002-bounded-model-memory.md`). What grows
//! with the number of dossiers lives in [`SpillMap`]s, which keep a fixed
//! number of values in memory and the rest in a scratch file: the records
//! ([`SubmissionModel::dossiers`]) and each org's list of dossiers
//! ([`SubmissionModel::by_org`]). Everything else in the model is per unit
//! or per cycle: the org tree, the cycles, the collective of each unit, the
//! units taking part in and completed in each cycle, and how many of each
//! unit's dossiers await their submitter, which lets the worklist skip the
//! units with nothing to do instead of reading every record of the subtree.
//! No query or decision reads every dossier: a record is read by its id, or
//! through the list of its org, reached by walking the org tree.
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
use gradeflow_proto::{Category, CycleId, DossierId, DossierState, OrgId, SubjectId, SubjectKind};
use gradeflow_service::spill::SpillMap;
use gradeflow_service::trace::{self, PackedTrace};
use gradeflow_service::{Model, OrgTree};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// What submission keeps about one dossier: what its commands, the
/// submitter's worklist and the upward flow decide on, and where its events
/// are. The payloads themselves (the self-review's text, the meeting's
/// votes, appraisals, returns, grades) stay in the store; `GET /dossiers/{id}`
/// reads them back by position and folds them again (see [`crate::detail`]).
///
/// The model keeps it in a [`SpillMap`], so it serialises (as JSON, into
/// the map's scratch file) and comes back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DossierRecord {
    /// The subject.
    pub subject: SubjectId,
    /// The cycle.
    pub cycle: CycleId,
    /// The org it belongs to (a collective: the collective itself).
    pub org: OrgId,
    /// The subject's name, for the worklist.
    pub name: Box<str>,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The form.
    pub category: Category,
    /// Its current state.
    pub state: DossierState,
    /// Set once the upward flow opened this collective for decision.
    pub opened_for_decision: bool,
    /// The dossier's trace: the `traceparent` of its first self-review
    /// (`gradeflow_service::trace`); every later event about it continues it.
    pub trace: Option<PackedTrace>,
    /// The store positions of the events about it (own and observed
    /// copies), oldest first.
    pub events: Positions,
}

/// Ascending store positions, kept as the LEB128 varints of the gaps between
/// them (the first one's from 0): a dossier's handful of events, a few
/// bytes each rather than eight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions(Box<[u8]>);

impl Positions {
    /// Adds `position`, which must come after every position held (the
    /// model folds in store order); one that does not is ignored.
    pub fn push(&mut self, position: i64) {
        let last = self.iter().last().unwrap_or(0);
        let Some(gap) = position.checked_sub(last).filter(|g| *g > 0) else {
            return;
        };
        let mut gap = gap.unsigned_abs();
        let mut bytes = Vec::with_capacity(self.0.len() + 10);
        bytes.extend_from_slice(&self.0);
        loop {
            let low = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        self.0 = bytes.into_boxed_slice();
    }

    /// The positions, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        let mut bytes = self.0.iter();
        let mut at: i64 = 0;
        std::iter::from_fn(move || {
            let mut gap: u64 = 0;
            let mut shift = 0;
            loop {
                let b = *bytes.next()?;
                gap |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            at = at.saturating_add_unsigned(gap);
            Some(at)
        })
    }

    /// The positions, ascending.
    pub fn to_vec(&self) -> Vec<i64> {
        self.iter().collect()
    }
}

/// The submission service's model. Only its two [`SpillMap`]s grow with
/// the number of dossiers; the rest grows with the number of units and
/// cycles (see the module's documentation).
#[derive(Debug, Default)]
pub struct SubmissionModel {
    /// The organisation tree.
    pub orgs: OrgTree,
    /// Cycles by id.
    pub cycles: BTreeMap<CycleId, CycleRecord>,
    /// Dossiers by id (in memory up to the map's capacity, the rest in its
    /// scratch file).
    pub dossiers: SpillMap<DossierId, DossierRecord>,
    /// Dossiers by the org they were registered under, in registration
    /// order (worklists walk the tree, then this index, instead of every
    /// dossier). A dossier registered again (which the fold allows, see
    /// [`SubmissionModel::apply`]) is listed again.
    pub by_org: SpillMap<OrgId, Vec<DossierId>>,
    /// The collective dossier of each (cycle, org).
    pub collectives: HashMap<(CycleId, OrgId), DossierId>,
    /// Per cycle, every org with a dossier in its subtree: the units that
    /// take part in the cycle, whose completion a parent waits for.
    pub participating: HashMap<CycleId, HashSet<OrgId>>,
    /// Per cycle, the units approval reported complete.
    pub completed_units: HashMap<CycleId, BTreeSet<OrgId>>,
    /// Per org, per cycle, how many of the dossiers registered under the org
    /// await their submitter ([`awaited`]); an org or a cycle with none has
    /// no entry. Never fewer than there are (a dossier registered again
    /// leaves its first record's count behind), so a count of none is sure.
    awaiting: HashMap<OrgId, BTreeMap<CycleId, u32>>,
    /// Orgs whose list holds a dossier that was registered again under
    /// another org, so the list names a record that is not counted in the
    /// org's [`SubmissionModel::awaiting`]. Only a store folding the same
    /// dossier's registration twice, under two orgs, has any.
    relisted: HashSet<OrgId>,
}

/// What the submitter is awaited for in `state`, if anything: `self_review`
/// or `meeting`.
pub fn awaited(state: DossierState) -> Option<&'static str> {
    match state {
        DossierState::Open | DossierState::Returned => Some("self_review"),
        DossierState::Submitted => Some("meeting"),
        _ => None,
    }
}

pub(crate) fn parse<E: Event + DeserializeOwned>(event: &StoredEvent) -> Option<E> {
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

/// An event about one dossier (own or observed), parsed: what both the
/// model's fold and the dossier view's fold ([`crate::detail`]) read, so
/// the two agree on which events count and on the state each one leaves.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Registered(SubjectRegistered),
    SelfReview(SelfReviewSubmitted),
    Meeting(MeetingRecorded),
    Appraised(DossierAppraised),
    Returned(DossierReturned),
    Decided(GradeDecided),
    Revised(GradeRevised),
    Opened(CollectiveDossierOpened),
}

impl Step {
    /// The step `event` is, if it is about a dossier and its payload
    /// parses.
    pub(crate) fn parse(event: &StoredEvent) -> Option<Step> {
        let kind = event.kind.as_str();
        if kind == SubjectRegistered::KIND {
            parse(event).map(Step::Registered)
        } else if kind == SelfReviewSubmitted::KIND {
            parse(event).map(Step::SelfReview)
        } else if kind == MeetingRecorded::KIND {
            parse(event).map(Step::Meeting)
        } else if kind == DossierAppraised::KIND {
            parse(event).map(Step::Appraised)
        } else if kind == DossierReturned::KIND {
            parse(event).map(Step::Returned)
        } else if kind == GradeDecided::KIND {
            parse(event).map(Step::Decided)
        } else if kind == GradeRevised::KIND {
            parse(event).map(Step::Revised)
        } else if kind == CollectiveDossierOpened::KIND {
            parse(event).map(Step::Opened)
        } else {
            // Not this model's business (the consumer only delivers what
            // `observes` accepts, so this is a newer own kind).
            None
        }
    }

    /// The dossier it is about.
    pub(crate) fn dossier(&self) -> DossierId {
        match self {
            Step::Registered(e) => e.dossier,
            Step::SelfReview(e) => e.dossier,
            Step::Meeting(e) => e.dossier,
            Step::Appraised(e) => e.dossier,
            Step::Returned(e) => e.dossier,
            Step::Decided(e) => e.dossier,
            Step::Revised(e) => e.dossier,
            Step::Opened(e) => e.dossier,
        }
    }

    /// The dossier's state after this step, from `before`.
    pub(crate) fn state_after(&self, before: DossierState) -> DossierState {
        match self {
            Step::Registered(e) => e.state,
            Step::SelfReview(_) => DossierState::Submitted,
            Step::Meeting(_) => DossierState::Reviewed,
            Step::Appraised(_) => DossierState::Appraised,
            Step::Returned(_) => DossierState::Returned,
            Step::Decided(_) => DossierState::Decided,
            Step::Revised(_) => DossierState::Regraded,
            Step::Opened(_) => before,
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
        } else if kind == UnitCompleted::KIND {
            if let Some(e) = parse::<UnitCompleted>(event) {
                self.completed_units
                    .entry(e.cycle)
                    .or_default()
                    .insert(e.org);
            }
        } else if let Some(step) = Step::parse(event) {
            self.apply_step(step, event);
        }
    }
}

impl SubmissionModel {
    /// An empty model whose maps keep at most `capacity` values each in
    /// memory (at least 8) and spill the rest. The service's model is the
    /// [`Default`] one, whose capacity is `spill::capacity()`; tests use a
    /// tiny one to check that a spilled model answers as one held in memory.
    pub fn with_cache(capacity: usize) -> Self {
        Self {
            dossiers: SpillMap::with_capacity(capacity),
            by_org: SpillMap::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// Whether the list of `org` in [`SubmissionModel::by_org`] may hold a
    /// dossier awaiting its submitter (of `cycle`, when given). `false`
    /// means it surely holds none, so the worklist need not read it.
    pub fn may_await(&self, org: OrgId, cycle: Option<CycleId>) -> bool {
        if self.relisted.contains(&org) {
            return true;
        }
        match (self.awaiting.get(&org), cycle) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(counts), Some(cycle)) => counts.contains_key(&cycle),
        }
    }

    /// Counts a dossier of `org` in `cycle` going from state `before` to
    /// `after` (`None`: not there) in [`SubmissionModel::awaiting`].
    fn count_awaiting(
        &mut self,
        cycle: CycleId,
        org: OrgId,
        before: Option<DossierState>,
        after: DossierState,
    ) {
        let was = before.and_then(awaited).is_some();
        let is = awaited(after).is_some();
        if was == is {
            return;
        }
        if is {
            *self
                .awaiting
                .entry(org)
                .or_default()
                .entry(cycle)
                .or_default() += 1;
            return;
        }
        let Some(counts) = self.awaiting.get_mut(&org) else {
            return;
        };
        if let Some(n) = counts.get_mut(&cycle) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&cycle);
            }
        }
        if counts.is_empty() {
            self.awaiting.remove(&org);
        }
    }

    fn register(&mut self, e: SubjectRegistered, position: i64) {
        let id = e.dossier;
        self.by_org.upsert(e.org, Vec::new, |list| list.push(id));
        if e.kind == SubjectKind::Collective {
            self.collectives.insert((e.cycle, e.org), id);
        }
        self.mark_participating(e.cycle, e.org);
        // A registration starts the dossier over. Its first record stays
        // counted as awaiting, if it was (a count too high only costs the
        // worklist a read); but the first org's list still names the
        // dossier, whose record is now counted under another org, so that
        // list must be read whatever its count says.
        if let Some(first) = self.dossiers.get(&id) {
            if first.org != e.org {
                self.relisted.insert(first.org);
            }
        }
        self.count_awaiting(e.cycle, e.org, None, e.state);
        let mut events = Positions::default();
        events.push(position);
        let record = DossierRecord {
            subject: e.subject,
            cycle: e.cycle,
            org: e.org,
            name: e.name.into_boxed_str(),
            kind: e.kind,
            category: e.category,
            state: e.state,
            opened_for_decision: false,
            trace: None,
            events,
        };
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

    /// Folds an event about one dossier (own or observed): its state, its
    /// trace, whether it was opened for decision, and where the event is.
    fn apply_step(&mut self, step: Step, event: &StoredEvent) {
        if let Step::Registered(e) = step {
            self.register(e, event.position);
            return;
        }
        let changed = self.dossiers.update(&step.dossier(), |d| {
            let before = d.state;
            d.state = step.state_after(d.state);
            match step {
                Step::SelfReview(_) if d.trace.is_none() => {
                    d.trace = trace::valid(event.metadata.traceparent.as_deref())
                        .and_then(PackedTrace::pack);
                }
                Step::Opened(_) => d.opened_for_decision = true,
                _ => {}
            }
            d.events.push(event.position);
            (d.cycle, d.org, before, d.state)
        });
        if let Some((cycle, org, before, after)) = changed {
            self.count_awaiting(cycle, org, Some(before), after);
        }
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

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;
    use gradeflow_proto::{Actor, CorrelationId, EventId, Metadata, Role};
    use serde_json::{json, Value};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    pub(crate) fn stored(position: i64, stream: &str, kind: &str, payload: Value) -> StoredEvent {
        StoredEvent {
            position,
            stream: stream.into(),
            version: 1,
            event_id: EventId::new(),
            kind: kind.into(),
            payload,
            payload_text: String::new(),
            metadata: Metadata {
                actor: Actor {
                    sub: "submitter".into(),
                    role: Role::Submitter,
                    org: OrgId::new(),
                },
                correlation_id: CorrelationId::new(),
                causation_id: None,
                traceparent: Some(TP.into()),
                service: "submission".into(),
                province: None,
            },
            recorded_at: Utc.timestamp_opt(1_780_000_000 + position, 0).unwrap(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn positions_come_back_in_order_whatever_their_gaps() {
        let wanted = [
            1,
            2,
            129,
            130,
            20_000,
            3_000_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        let mut p = Positions::default();
        for w in wanted {
            p.push(w);
        }
        assert_eq!(p.to_vec(), wanted);
        // Not after the last one: ignored (the model folds in store order).
        p.push(5);
        p.push(i64::MAX);
        assert_eq!(p.to_vec(), wanted);
        assert_eq!(Positions::default().to_vec(), Vec::<i64>::new());
        let mut small = Positions::default();
        for w in [1_000_000, 1_100_000, 1_200_000] {
            small.push(w);
        }
        assert_eq!(small.0.len(), 9, "three bytes a position a million in");
    }

    #[test]
    fn the_record_keeps_the_state_and_where_the_events_are_not_their_payloads() {
        let (dossier, subject, cycle, org) = (
            DossierId::new(),
            SubjectId::new(),
            CycleId::new(),
            OrgId::new(),
        );
        let stream = dossier.stream();
        let long = "x".repeat(100_000);
        let mut m = SubmissionModel::default();
        let events = [
            stored(
                3,
                &stream,
                SubjectRegistered::KIND,
                json!({"subject": subject, "dossier": dossier,
                "cycle": cycle, "org": org, "deciding_org": OrgId::new(), "kind": "individual",
                "name": "Nguyễn Văn A", "category": "2B", "leader": false, "status": "active",
                "quota_group": "individuals", "state": "open"}),
            ),
            stored(
                7,
                &stream,
                SelfReviewSubmitted::KIND,
                json!({"dossier": dossier, "score": null,
                "proposed_grade": "good", "tasks": {"total": 1, "on_time": 1, "exceeded": 0, "late": 0,
                "not_done": 0}, "shortcomings_fixed": true, "report": long}),
            ),
            // About another dossier: not this one's.
            stored(
                8,
                "dossier-other",
                MeetingRecorded::KIND,
                json!({"dossier": DossierId::new(),
                "proposed_grade": "good", "votes": {}, "minutes": ""}),
            ),
            stored(
                9,
                &stream,
                MeetingRecorded::KIND,
                json!({"dossier": dossier,
                "proposed_grade": "good", "votes": {"good": 3}, "minutes": long}),
            ),
            stored(
                1_000_000,
                &stream,
                DossierReturned::KIND,
                json!({"dossier": dossier, "reason": long}),
            ),
        ];
        for e in &events {
            m.apply(e);
        }
        let mut at = Positions::default();
        for p in [3, 7, 9, 1_000_000] {
            at.push(p);
        }
        assert_eq!(
            *m.dossiers.get(&dossier).unwrap(),
            DossierRecord {
                subject,
                cycle,
                org,
                name: "Nguyễn Văn A".into(),
                kind: SubjectKind::Individual,
                category: Category::Member2B,
                state: DossierState::Returned,
                opened_for_decision: false,
                trace: PackedTrace::pack(TP),
                events: at,
            }
        );
        // Inline, the record is three ids, flags, the packed trace and two
        // small boxes (the name, the positions).
        assert!(std::mem::size_of::<DossierRecord>() <= 128);
    }
}
