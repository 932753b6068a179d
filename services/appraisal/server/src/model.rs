//! [`AppraisalModel`]: the appraisal service's working state, folded from its
//! own store — its own appraisals and returns, and the copies of the events
//! it observes: the registry and cycles, subjects, self-reviews and meetings
//! (from submission) and grades (from approval).
//!
//! Per dossier the model keeps only what the commands and the worklist read
//! ([`AppraisalDossier`]): the registration's ids, name, form and flags and
//! its quota group, the state, the self-review's proposed grade, score, task
//! counts and shortcomings flag, the meeting's proposed grade, the standing
//! recommendation, the grade in force and the trace. The rest stays in the
//! store: the self-review's report, the meeting's votes and minutes, and the
//! board's appraisals and returns (facts, notes, warnings, reasons, who and
//! when). For those the record keeps where they are — the store positions of
//! the latest appraisal and of every return — and `get_dossier.v1` reads
//! them back and folds them with [`Board::fold`], the same parsing the model
//! applies them with.
//!
//! Beside each dossier the model keeps, per quota group of a deciding org in
//! a cycle, how many dossiers stand at excellent and at good — decided, or
//! else recommended by a standing appraisal — which is the pressure the
//! quota warning reports at appraisal time. A group's name is held once
//! ([`Arc<str>`]), shared by every dossier and tally of that name (a record
//! read back from the scratch file holds a copy of its own).
//!
//! **Bounded memory** (`docs/adr/0002-bounded-model-memory.md`). What grows
//! with the number of dossiers lives in [`SpillMap`]s, which keep a working
//! set in memory and the rest in a scratch file: the records, keyed by
//! dossier; the worklist index, keyed by deciding org — the dossiers
//! awaiting appraisal, in the order they were registered in; and the places
//! of a dossier registered twice. Nothing answers by going over every
//! dossier: the worklist walks the org tree and reads the index of each
//! org. What stays in ordinary maps grows with the units and quota groups,
//! not the dossiers: the org tree, the cycles, the tallies and the quota
//! group names. The events parked for dossiers not registered yet (below)
//! are in an ordinary map too: it grows with the copies that arrived out of
//! order, not with the dossiers, and is empty in normal operation.
//!
//! **Order.** The consumer records other services' events in the order they
//! arrive, and a dossier's self-review, meeting or grade may arrive before
//! its registration (a registration nak'ed and redelivered after later
//! messages, or replicas sharing the durable). Every event of a dossier's
//! life — the board's own appraisals and returns too — changes only its
//! record, and through the record its quota group's tally and its worklist
//! place; one about a dossier without a record is parked per dossier, in
//! store order, and applied right after the registration, in the order it
//! was parked. An appraisal or return applied so keeps its own store
//! position, where `get_dossier.v1` reads it back. The model is folded from
//! the store in store order, so a replay parks and releases exactly the
//! same way and rebuilds the same model.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroI64;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gradeflow_approval_domain::GroupCounts;
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CycleOpened, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    MeetingRecorded, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{
    Actor, Category, CycleId, DossierId, DossierState, Grade, OrgId, Score, SubjectId, SubjectKind,
    SubjectStatus, TaskCounts,
};
use gradeflow_service::spill::SpillMap;
use gradeflow_service::trace::{self, PackedTrace};
use gradeflow_service::{Model, OrgTree};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A quota group: (deciding org, cycle, group name).
pub type QuotaKey = (OrgId, CycleId, Arc<str>);

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

/// What the latest self-review said that the rulebook and the lists read
/// (its report stays in the store).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// The proposed grade.
    pub proposed_grade: Grade,
    /// The self-score (kept by the bits of its numbers when spilled).
    #[serde(with = "score_bits")]
    pub score: Option<Score>,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Past shortcomings fixed.
    pub shortcomings_fixed: bool,
}

/// Writes a self-score as the bits of its two numbers, so that a record
/// read back from the scratch file holds exactly the score it was written
/// with: `serde_json` reads a decimal back to the nearest double only on a
/// best-effort basis (its `float_roundtrip` feature is off), and writes a
/// number that is not finite as `null`, which it cannot read back as one.
mod score_bits {
    use gradeflow_proto::Score;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The score as `[general, tasks]`, each the bits of its `f64`.
    pub fn serialize<S: Serializer>(score: &Option<Score>, out: S) -> Result<S::Ok, S::Error> {
        score
            .map(|s| [s.general.to_bits(), s.tasks.to_bits()])
            .serialize(out)
    }

    /// The score [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Score>, D::Error> {
        Ok(
            Option::<[u64; 2]>::deserialize(input)?.map(|[general, tasks]| Score {
                general: f64::from_bits(general),
                tasks: f64::from_bits(tasks),
            }),
        )
    }
}

/// What appraisal keeps about one dossier (its id is the key it is kept
/// under), in memory or, once evicted, in the model's scratch file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppraisalDossier {
    /// Its subject.
    pub subject: SubjectId,
    /// The cycle.
    pub cycle: CycleId,
    /// The org it belongs to (for a collective, the collective itself).
    pub org: OrgId,
    /// The org whose board appraises it.
    pub deciding_org: OrgId,
    /// The subject's name (the worklist shows it).
    pub name: Box<str>,
    /// Its quota group's name, shared with every dossier of that name.
    pub quota_group: Arc<str>,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The form.
    pub category: Category,
    /// Leader flag.
    pub leader: bool,
    /// Reviewed or not.
    pub status: SubjectStatus,
    /// Its current state.
    pub state: DossierState,
    /// The latest self-review.
    pub self_review: Option<Review>,
    /// The latest meeting's proposed grade.
    pub meeting_grade: Option<Grade>,
    /// The latest appraisal's recommended grade.
    pub recommended: Option<Grade>,
    /// The grade in force, once decided.
    pub decided: Option<Grade>,
    /// The dossier's trace: the `traceparent` of its first self-review
    /// (`gradeflow_service::trace`), which this service's events about it
    /// continue.
    pub trace: Option<PackedTrace>,
    /// Where the latest appraisal is in the store.
    pub appraisal_at: Option<NonZeroI64>,
    /// Where every return is in the store, oldest first.
    pub returns_at: Box<[i64]>,
    /// Its place in the worklist of its deciding org: the number of its
    /// registration among every registration the model folded (a worklist
    /// lists its dossiers in the order they were registered in).
    pub listed: u32,
}

impl AppraisalDossier {
    /// The grade this dossier counts with in its quota group: the decided
    /// grade, else the recommendation of a standing appraisal (a returned
    /// dossier's old recommendation no longer counts).
    pub fn counted_grade(&self) -> Option<Grade> {
        self.decided.or_else(|| {
            (self.state == DossierState::Appraised)
                .then_some(self.recommended)
                .flatten()
        })
    }

    /// Its quota group.
    pub fn quota_key(&self) -> QuotaKey {
        (self.deciding_org, self.cycle, Arc::clone(&self.quota_group))
    }

    /// The tentative grade before an appraisal: the meeting's proposal, else
    /// the self-review's.
    pub fn proposed_grade(&self) -> Option<Grade> {
        self.meeting_grade
            .or_else(|| self.self_review.map(|s| s.proposed_grade))
    }

    /// Whether it awaits its board's appraisal, so stands on the worklist.
    pub fn awaits_appraisal(&self) -> bool {
        self.state == DossierState::Reviewed
    }

    /// The store positions of the board's appraisal and returns that
    /// [`Board::fold`] reads back, ascending.
    pub fn board_positions(&self) -> Vec<i64> {
        let mut positions: Vec<i64> = self.returns_at.to_vec();
        positions.extend(self.appraisal_at.map(NonZeroI64::get));
        positions.sort_unstable();
        positions
    }
}

/// One of the board's own events about a dossier.
enum BoardEvent {
    Appraised(DossierAppraised),
    Returned(DossierReturned),
}

/// The board's event `event` is, parsed; `None` for another kind or a
/// payload that does not parse.
fn board_event(event: &StoredEvent) -> Option<BoardEvent> {
    match event.kind.as_str() {
        DossierAppraised::KIND => parse(event).map(BoardEvent::Appraised),
        DossierReturned::KIND => parse(event).map(BoardEvent::Returned),
        _ => None,
    }
}

/// The board's say on one dossier as the store holds it: what
/// `get_dossier.v1` shows beside the record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Board {
    /// The latest appraisal.
    pub appraisal: Option<Stamped<DossierAppraised>>,
    /// Every return, oldest first.
    pub returns: Vec<Stamped<DossierReturned>>,
}

impl Board {
    /// Folds `events`, read at `positions` (a record's
    /// [`AppraisalDossier::board_positions`]). `None` unless every position
    /// holds an appraisal or return of `dossier`: positions read before the
    /// appends the model holds committed (the caller reads once they have,
    /// `Engine::read_committed`), or a store that no longer holds what the
    /// model folded there.
    pub fn fold(dossier: DossierId, positions: &[i64], events: &[StoredEvent]) -> Option<Board> {
        if events.len() != positions.len() {
            return None;
        }
        let mut board = Board::default();
        for (event, position) in events.iter().zip(positions) {
            if event.position != *position {
                return None;
            }
            match board_event(event)? {
                BoardEvent::Appraised(e) if e.dossier == dossier => {
                    board.appraisal = Some(stamp(e, event));
                }
                BoardEvent::Returned(e) if e.dossier == dossier => {
                    board.returns.push(stamp(e, event));
                }
                _ => return None,
            }
        }
        Some(board)
    }
}

/// One deciding org's worklist: its dossiers that await appraisal, each
/// with the number it is listed under ([`AppraisalDossier::listed`]),
/// ascending.
pub type Awaiting = Vec<(u32, DossierId)>;

/// A place in a worklist: (deciding org, number).
pub type Place = (OrgId, u32);

/// The appraisal service's model.
#[derive(Debug, Default)]
pub struct AppraisalModel {
    /// The organisation tree.
    pub orgs: OrgTree,
    /// Cycles by id.
    pub cycles: HashMap<CycleId, CycleOpened>,
    /// Dossiers by id: a working set in memory, the rest spilled.
    pub dossiers: SpillMap<DossierId, AppraisalDossier>,
    /// The worklist index: per deciding org, the dossiers that await its
    /// board's appraisal, in the order they were registered in (the
    /// worklist walks the tree, then this index). An org keeps its entry,
    /// empty, once it has nothing left to appraise.
    pub awaiting: SpillMap<OrgId, Awaiting>,
    /// The places earlier registrations gave a dossier registered again
    /// (which submission never does): it stays listed there too, as it did
    /// in the list of dossiers by deciding org the worklist index replaces.
    /// Empty in any store submission wrote.
    pub relisted: SpillMap<DossierId, Vec<Place>>,
    /// Excellent and good counts per quota group.
    pub tallies: HashMap<QuotaKey, GroupCounts>,
    /// Every quota group name seen, each held once.
    quota_groups: HashSet<Arc<str>>,
    /// How many registrations the model folded: the last one's number. A
    /// `u32` keeps the record within its size, and `u32::MAX` registrations
    /// would be some 700 national cycles of 5.8M dossiers.
    registrations: u32,
    /// Events of the life of dossiers not registered yet, per dossier in
    /// store order: applied right after the registration. Empty unless
    /// copies arrived out of order.
    orphans: HashMap<DossierId, Vec<StoredEvent>>,
}

/// What one change to a record changed beyond it.
struct Changed {
    /// The grade it counted with in its quota group before and after.
    counted: (Option<Grade>, Option<Grade>),
    /// Its quota group, if the counted grade changed.
    group: Option<QuotaKey>,
    /// Whether it now awaits appraisal and the place of its registration,
    /// if that changed.
    listing: Option<(bool, Place)>,
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
        match event.kind.as_str() {
            CycleOpened::KIND => {
                if let Some(e) = parse::<CycleOpened>(event) {
                    self.cycles.insert(e.cycle, e);
                }
            }
            SubjectRegistered::KIND => {
                if let Some(e) = parse::<SubjectRegistered>(event) {
                    self.register(e);
                }
            }
            _ => {
                if let Some(dossier) = self.live(event) {
                    // Not registered yet: applied right after its
                    // registration.
                    self.orphans.entry(dossier).or_default().push(event.clone());
                }
            }
        }
    }
}

impl AppraisalModel {
    /// A model whose maps keep at most `capacity` values each in memory
    /// (at least 8; [`AppraisalModel::default`] takes
    /// `gradeflow_service::spill::capacity()`). A tiny one makes a test's
    /// model spill.
    pub fn with_cache(capacity: usize) -> Self {
        Self {
            dossiers: SpillMap::with_capacity(capacity),
            awaiting: SpillMap::with_capacity(capacity),
            relisted: SpillMap::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// Folds `event` into its dossier's record if it is an event of a
    /// dossier's life. The dossier when it has no record yet (nothing is
    /// changed), for the caller to park the event; `None` once applied, and
    /// for another kind or a payload that does not parse.
    fn live(&mut self, event: &StoredEvent) -> Option<DossierId> {
        let (dossier, applied) = match event.kind.as_str() {
            SelfReviewSubmitted::KIND => {
                let e = parse::<SelfReviewSubmitted>(event)?;
                let traceparent = event.metadata.traceparent.as_deref();
                let applied = self.update(e.dossier, |d| {
                    d.state = DossierState::Submitted;
                    d.self_review = Some(Review {
                        proposed_grade: e.proposed_grade,
                        score: e.score,
                        tasks: e.tasks,
                        shortcomings_fixed: e.shortcomings_fixed,
                    });
                    if d.trace.is_none() {
                        d.trace = trace::valid(traceparent).and_then(PackedTrace::pack);
                    }
                });
                (e.dossier, applied)
            }
            MeetingRecorded::KIND => {
                let e = parse::<MeetingRecorded>(event)?;
                let applied = self.update(e.dossier, |d| {
                    d.state = DossierState::Reviewed;
                    d.meeting_grade = Some(e.proposed_grade);
                });
                (e.dossier, applied)
            }
            DossierAppraised::KIND | DossierReturned::KIND => match board_event(event)? {
                BoardEvent::Appraised(e) => {
                    let applied = self.update(e.dossier, |d| {
                        d.state = DossierState::Appraised;
                        d.recommended = Some(e.recommended_grade);
                        // The event's own position, also when it was
                        // parked: where `get_dossier.v1` reads it back.
                        d.appraisal_at = NonZeroI64::new(event.position);
                    });
                    (e.dossier, applied)
                }
                BoardEvent::Returned(e) => {
                    let applied = self.update(e.dossier, |d| {
                        d.state = DossierState::Returned;
                        let mut at = std::mem::take(&mut d.returns_at).into_vec();
                        at.push(event.position);
                        d.returns_at = at.into_boxed_slice();
                    });
                    (e.dossier, applied)
                }
            },
            GradeDecided::KIND => {
                let e = parse::<GradeDecided>(event)?;
                let applied = self.update(e.dossier, |d| {
                    d.state = DossierState::Decided;
                    d.decided = Some(e.grade);
                });
                (e.dossier, applied)
            }
            GradeRevised::KIND => {
                let e = parse::<GradeRevised>(event)?;
                let applied = self.update(e.dossier, |d| {
                    d.state = DossierState::Regraded;
                    d.decided = Some(e.grade);
                });
                (e.dossier, applied)
            }
            _ => return None,
        };
        (!applied).then_some(dossier)
    }

    /// Opens a dossier's record from its registration, then applies the
    /// events of its life parked until it.
    fn register(&mut self, e: SubjectRegistered) {
        self.registrations = self.registrations.saturating_add(1);
        let quota_group = self.intern(e.quota_group);
        let record = AppraisalDossier {
            subject: e.subject,
            cycle: e.cycle,
            org: e.org,
            deciding_org: e.deciding_org,
            name: e.name.into_boxed_str(),
            quota_group,
            kind: e.kind,
            category: e.category,
            leader: e.leader,
            status: e.status,
            state: e.state,
            self_review: None,
            meeting_grade: None,
            recommended: None,
            decided: None,
            trace: None,
            appraisal_at: None,
            returns_at: Box::default(),
            listed: self.registrations,
        };
        // A dossier registered again (which submission never does) keeps
        // the places its earlier registrations gave it; its record is
        // replaced and its tally left as it was, as they always were.
        if let Some(earlier) = self.dossiers.get(&e.dossier) {
            let places = self.places(e.dossier, (earlier.deciding_org, earlier.listed));
            if earlier.awaits_appraisal() {
                for &(org, number) in &places {
                    self.unlist(org, number);
                }
            }
            self.relisted.insert(e.dossier, places);
        }
        if record.awaits_appraisal() {
            for (org, number) in self.places(e.dossier, (record.deciding_org, record.listed)) {
                self.list(org, number, e.dossier);
            }
        }
        self.dossiers.insert(e.dossier, record);
        if let Some(parked) = self.orphans.remove(&e.dossier) {
            for event in &parked {
                // The record is there now: each is applied, in the order
                // it was parked.
                self.live(event);
            }
        }
    }

    /// Every place `dossier` has in the worklists: its earlier
    /// registrations' ([`AppraisalModel::relisted`]), then `latest`, its
    /// registration's.
    fn places(&self, dossier: DossierId, latest: Place) -> Vec<Place> {
        let mut places = self
            .relisted
            .get(&dossier)
            .map(|earlier| earlier.to_vec())
            .unwrap_or_default();
        places.push(latest);
        places
    }

    /// Puts `dossier` on `org`'s worklist under `number`.
    fn list(&mut self, org: OrgId, number: u32, dossier: DossierId) {
        self.awaiting.upsert(org, Awaiting::new, |list| {
            if let Err(at) = list.binary_search_by_key(&number, |&(n, _)| n) {
                list.insert(at, (number, dossier));
            }
        });
    }

    /// Takes what is listed under `number` off `org`'s worklist.
    fn unlist(&mut self, org: OrgId, number: u32) {
        self.awaiting.update(&org, |list| {
            if let Ok(at) = list.binary_search_by_key(&number, |&(n, _)| n) {
                list.remove(at);
            }
        });
    }

    /// The one shared copy of a quota group's name.
    fn intern(&mut self, group: String) -> Arc<str> {
        if let Some(known) = self.quota_groups.get(group.as_str()) {
            return Arc::clone(known);
        }
        let group: Arc<str> = Arc::from(group);
        self.quota_groups.insert(Arc::clone(&group));
        group
    }

    /// Changes one dossier and keeps its quota group's tally in step with
    /// the grade it counts with before and after, and the worklists with
    /// whether it awaits appraisal; false, changing nothing, when it has no
    /// record.
    fn update(&mut self, dossier: DossierId, change: impl FnOnce(&mut AppraisalDossier)) -> bool {
        let Some(changed) = self.dossiers.update(&dossier, |d| {
            let (counted, awaits) = (d.counted_grade(), d.awaits_appraisal());
            change(d);
            let counted = (counted, d.counted_grade());
            Changed {
                counted,
                group: (counted.0 != counted.1).then(|| d.quota_key()),
                listing: (awaits != d.awaits_appraisal())
                    .then_some((!awaits, (d.deciding_org, d.listed))),
            }
        }) else {
            return false;
        };
        if let Some(group) = changed.group {
            let group = (group.0, group.1, self.shared(group.2));
            let tally = self.tallies.entry(group).or_default();
            count(tally, changed.counted.0, false);
            count(tally, changed.counted.1, true);
        }
        if let Some((awaits, place)) = changed.listing {
            for (org, number) in self.places(dossier, place) {
                if awaits {
                    self.list(org, number, dossier);
                } else {
                    self.unlist(org, number);
                }
            }
        }
        true
    }

    /// The shared copy of `group`, which a record read back from the
    /// scratch file holds a copy of.
    fn shared(&self, group: Arc<str>) -> Arc<str> {
        self.quota_groups.get(&*group).map_or(group, Arc::clone)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gradeflow_proto::events::{RecordRef, RuleWarning};
    use gradeflow_proto::{CorrelationId, DecisionId, EventId, Facts, Metadata, Role};
    use serde::Serialize;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Folds events into a model as the engine does, each at the next
    /// position; keeps what it folded.
    #[derive(Default)]
    struct Fold {
        model: AppraisalModel,
        log: Vec<StoredEvent>,
    }

    impl Fold {
        fn apply<E: Event + Serialize>(&mut self, stream: &str, event: &E, actor: &Actor) -> i64 {
            self.apply_traced(stream, event, actor, None)
        }

        fn apply_traced<E: Event + Serialize>(
            &mut self,
            stream: &str,
            event: &E,
            actor: &Actor,
            traceparent: Option<&str>,
        ) -> i64 {
            let position = self.log.len() as i64 + 1;
            let stored = StoredEvent {
                position,
                stream: stream.to_owned(),
                version: 1,
                event_id: EventId::new(),
                kind: E::KIND.to_owned(),
                payload: serde_json::to_value(event).unwrap(),
                payload_text: String::new(),
                metadata: Metadata {
                    actor: actor.clone(),
                    correlation_id: CorrelationId::new(),
                    causation_id: None,
                    traceparent: traceparent.map(str::to_owned),
                    service: "test".to_owned(),
                    province: None,
                },
                recorded_at: Utc::now(),
                prev_hash: String::new(),
                hash: String::new(),
            };
            self.model.apply(&stored);
            self.log.push(stored);
            position
        }

        /// The events at `positions`, as `Store::read_positions` answers.
        fn read(&self, positions: &[i64]) -> Vec<StoredEvent> {
            self.log
                .iter()
                .filter(|e| positions.contains(&e.position))
                .cloned()
                .collect()
        }

        fn register(&mut self, deciding_org: OrgId, group: &str) -> DossierId {
            let dossier = DossierId::new();
            let e = SubjectRegistered {
                subject: SubjectId::new(),
                dossier,
                cycle: CycleId(uuid::Uuid::nil()),
                org: OrgId::new(),
                deciding_org,
                kind: SubjectKind::Individual,
                name: "Trần Thị B".to_owned(),
                category: Category::Member2B,
                leader: false,
                status: SubjectStatus::Active,
                quota_group: group.to_owned(),
                state: DossierState::Open,
            };
            self.apply(&dossier.stream(), &e, &system());
            dossier
        }
    }

    fn system() -> Actor {
        Actor {
            sub: "system".to_owned(),
            role: Role::System,
            org: OrgId(uuid::Uuid::nil()),
        }
    }

    fn appraiser() -> Actor {
        Actor {
            sub: "appraiser@district".to_owned(),
            role: Role::Appraiser,
            org: OrgId(uuid::Uuid::nil()),
        }
    }

    fn review(dossier: DossierId, grade: Grade) -> SelfReviewSubmitted {
        SelfReviewSubmitted {
            dossier,
            score: Some(Score {
                general: 27.0,
                tasks: 61.5,
            }),
            proposed_grade: grade,
            tasks: TaskCounts {
                total: 10,
                on_time: 9,
                ..TaskCounts::default()
            },
            shortcomings_fixed: false,
            report: "Báo cáo kiểm điểm ".repeat(200),
            resubmission: false,
        }
    }

    fn appraised(dossier: DossierId, grade: Grade, notes: &str) -> DossierAppraised {
        DossierAppraised {
            dossier,
            recommended_grade: grade,
            facts: Facts {
                degradation: true,
                ..Facts::default()
            },
            notes: notes.to_owned(),
            warnings: vec![RuleWarning {
                rule: "quota".to_owned(),
                message: "over".to_owned(),
                message_vi: "vượt".to_owned(),
            }],
        }
    }

    fn returned(dossier: DossierId, reason: &str) -> DossierReturned {
        DossierReturned {
            dossier,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn the_record_keeps_the_graded_facts_and_where_the_boards_events_are() {
        let mut f = Fold::default();
        let d = f.register(OrgId::new(), "individuals");
        let stream = d.stream();
        f.apply(&stream, &review(d, Grade::Good), &system());
        let meeting = MeetingRecorded {
            dossier: d,
            proposed_grade: Grade::Excellent,
            votes: [(Grade::Excellent, 12)].into(),
            minutes: "Biên bản ".repeat(200),
        };
        f.apply(&stream, &meeting, &system());
        let first = f.apply(&stream, &appraised(d, Grade::Good, "một"), &appraiser());
        let back = f.apply(&stream, &returned(d, "Thiếu biên bản"), &appraiser());
        f.apply(&stream, &review(d, Grade::Completed), &system());
        f.apply(&stream, &meeting, &system());
        let latest = f.apply(
            &stream,
            &appraised(d, Grade::Excellent, "hai"),
            &appraiser(),
        );

        let r = f.model.dossiers.get(&d).unwrap();
        assert_eq!(r.state, DossierState::Appraised);
        assert_eq!(&*r.name, "Trần Thị B");
        assert_eq!(
            r.self_review,
            Some(Review {
                proposed_grade: Grade::Completed,
                score: Some(Score {
                    general: 27.0,
                    tasks: 61.5
                }),
                tasks: TaskCounts {
                    total: 10,
                    on_time: 9,
                    ..TaskCounts::default()
                },
                shortcomings_fixed: false,
            })
        );
        assert_eq!(r.meeting_grade, Some(Grade::Excellent));
        assert_eq!(r.proposed_grade(), Some(Grade::Excellent));
        assert_eq!(r.recommended, Some(Grade::Excellent));
        assert_eq!(r.counted_grade(), Some(Grade::Excellent));
        // Only the latest appraisal is shown, so only its place is kept.
        assert_eq!(r.appraisal_at.map(NonZeroI64::get), Some(latest));
        assert_eq!(&*r.returns_at, [back]);
        assert_eq!(r.board_positions(), [back, latest]);
        assert!(first < back);
        // The free text stays in the store: the record is a fixed size
        // plus the name, whatever the report and minutes hold.
        assert!(
            std::mem::size_of::<AppraisalDossier>() <= 208,
            "{}",
            std::mem::size_of::<AppraisalDossier>()
        );
    }

    #[test]
    fn the_boards_events_read_back_fold_as_the_model_saw_them() {
        let mut f = Fold::default();
        let d = f.register(OrgId::new(), "individuals");
        let other = f.register(OrgId::new(), "individuals");
        let stream = d.stream();
        f.apply(&stream, &appraised(d, Grade::Good, "một"), &appraiser());
        f.apply(&stream, &returned(d, "Lần một"), &appraiser());
        f.apply(
            &other.stream(),
            &appraised(other, Grade::Good, "khác"),
            &appraiser(),
        );
        f.apply(
            &stream,
            &appraised(d, Grade::Excellent, "hai"),
            &appraiser(),
        );
        f.apply(&stream, &returned(d, "Lần hai"), &appraiser());

        let positions = f.model.dossiers.get(&d).unwrap().board_positions();
        assert_eq!(positions, [4, 6, 7]);
        let events = f.read(&positions);
        let board = Board::fold(d, &positions, &events).unwrap();
        let stamped = |position: usize| (f.log[position - 1].recorded_at, appraiser());
        let a = board.appraisal.unwrap();
        assert_eq!(a.event, appraised(d, Grade::Excellent, "hai"));
        assert_eq!((a.at, a.actor), stamped(6));
        let reasons: Vec<_> = board.returns.iter().map(|r| &*r.event.reason).collect();
        assert_eq!(reasons, ["Lần một", "Lần hai"]);
        assert_eq!(
            (board.returns[1].at, board.returns[1].actor.clone()),
            stamped(7)
        );

        // Nothing to read: nothing to show.
        let none = f.register(OrgId::new(), "individuals");
        assert!(f
            .model
            .dossiers
            .get(&none)
            .unwrap()
            .board_positions()
            .is_empty());
        assert_eq!(Board::fold(none, &[], &[]), Some(Board::default()));
    }

    #[test]
    fn a_board_event_not_where_the_model_has_it_is_not_folded() {
        let mut f = Fold::default();
        let d = f.register(OrgId::new(), "individuals");
        let other = f.register(OrgId::new(), "individuals");
        f.apply(&d.stream(), &appraised(d, Grade::Good, "một"), &appraiser());
        f.apply(&other.stream(), &returned(other, "khác"), &appraiser());
        let positions = f.model.dossiers.get(&d).unwrap().board_positions();
        assert_eq!(positions, [3]);

        // Nothing there in the store.
        assert_eq!(Board::fold(d, &positions, &[]), None);
        // Another dossier's return, another kind, another position.
        assert_eq!(Board::fold(d, &[4], &f.read(&[4])), None);
        assert_eq!(Board::fold(d, &[1], &f.read(&[1])), None);
        assert_eq!(Board::fold(d, &positions, &f.read(&[4])), None);
        assert!(Board::fold(d, &positions, &f.read(&positions)).is_some());
    }

    #[test]
    fn a_quota_group_name_is_held_once_for_every_dossier_and_tally() {
        let mut f = Fold::default();
        let board = OrgId::new();
        let a = f.register(board, &String::from("individuals"));
        let b = f.register(board, &String::from("individuals"));
        let c = f.register(board, "leaders");
        for d in [a, b] {
            f.apply(&d.stream(), &appraised(d, Grade::Good, ""), &appraiser());
        }
        let group = |d: DossierId| Arc::clone(&f.model.dossiers.get(&d).unwrap().quota_group);
        assert!(Arc::ptr_eq(&group(a), &group(b)));
        assert!(!Arc::ptr_eq(&group(a), &group(c)));
        assert_eq!(&*group(c), "leaders");
        let (key, counts) = f.model.tallies.iter().next().unwrap();
        assert_eq!(f.model.tallies.len(), 1);
        assert!(Arc::ptr_eq(&key.2, &group(a)));
        assert_eq!(counts.good, 2);
        assert_eq!(f.model.quota_groups.len(), 2);
    }

    #[test]
    fn the_trace_is_the_first_valid_self_reviews_kept_compactly() {
        let mut f = Fold::default();
        let d = f.register(OrgId::new(), "individuals");
        let later = "00-11111111111111111111111111111111-2222222222222222-00";
        f.apply_traced(
            &d.stream(),
            &review(d, Grade::Good),
            &system(),
            Some("00-garbage"),
        );
        assert_eq!(f.model.dossiers.get(&d).unwrap().trace, None);
        f.apply_traced(
            &d.stream(),
            &review(d, Grade::Good),
            &system(),
            Some(PARENT),
        );
        f.apply_traced(&d.stream(), &review(d, Grade::Good), &system(), Some(later));
        let trace = f.model.dossiers.get(&d).unwrap().trace.unwrap();
        assert_eq!(trace.traceparent(), PARENT);
        assert_eq!(format!("{trace:?}"), format!("PackedTrace({PARENT:?})"));
    }

    #[test]
    fn the_appraisal_continues_the_dossiers_trace() {
        let mut f = Fold::default();
        let d = f.register(OrgId::new(), "individuals");
        f.apply_traced(
            &d.stream(),
            &review(d, Grade::Good),
            &system(),
            Some(PARENT),
        );
        let r = f.model.dossiers.get(&d).unwrap();
        let emit = gradeflow_service::Emit::new(d.stream(), &returned(d, "x"), None)
            .in_trace(r.trace.map(|t| t.traceparent()).as_deref());
        let child = emit.traceparent.unwrap();
        assert_eq!(child[..36], PARENT[..36], "the same trace id");
        assert_eq!(child[52..], PARENT[52..], "the same flags");
        assert_ne!(child[37..53], PARENT[37..53], "a fresh span");
    }

    #[test]
    fn a_dossiers_events_recorded_before_its_registration_are_applied_right_after_it() {
        let (board, cycle) = (OrgId::new(), CycleId(uuid::Uuid::nil()));
        let registration = |dossier: DossierId| SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle,
            org: OrgId::new(),
            deciding_org: board,
            kind: SubjectKind::Individual,
            name: "Lê Văn C".to_owned(),
            category: Category::Member2B,
            leader: false,
            status: SubjectStatus::Active,
            quota_group: "individuals".to_owned(),
            state: DossierState::Open,
        };
        let (reviewed, decided) = (DossierId::new(), DossierId::new());
        let registrations = [registration(reviewed), registration(decided)];
        let meeting = |dossier: DossierId| MeetingRecorded {
            dossier,
            proposed_grade: Grade::Excellent,
            votes: [(Grade::Excellent, 9)].into(),
            minutes: "Biên bản".to_owned(),
        };
        let grade = GradeDecided {
            decision: DecisionId::new(),
            dossier: decided,
            subject: registrations[1].subject,
            cycle,
            authority: board,
            org: registrations[1].org,
            grade: Grade::Excellent,
            quota_group: "individuals".to_owned(),
            override_reason: None,
            record: RecordRef {
                seq: 1,
                hash: String::new(),
                signature: String::new(),
                key_id: String::new(),
                prev_hash: None,
                at: None,
            },
            number: None,
        };
        // Each dossier's life: `reviewed` filed and met on, `decided` also
        // appraised and graded. Folded `early` (before the registrations,
        // as when they are redelivered late) or after them; the appraisal's
        // position.
        let life = |f: &mut Fold, early: bool| -> i64 {
            if !early {
                for r in &registrations {
                    f.apply(&r.dossier.stream(), r, &system());
                }
            }
            let mut appraisal_at = 0;
            for d in [reviewed, decided] {
                let traced = review(d, Grade::Good);
                f.apply_traced(&d.stream(), &traced, &system(), Some(PARENT));
                f.apply(&d.stream(), &meeting(d), &system());
                if d == decided {
                    let a = appraised(d, Grade::Good, "");
                    appraisal_at = f.apply(&d.stream(), &a, &appraiser());
                    f.apply("decision-log", &grade, &system());
                }
            }
            if early {
                // Nothing to apply them to yet.
                assert!(f.model.dossiers.get(&reviewed).is_none());
                assert!(f.model.tallies.is_empty());
                for r in &registrations {
                    f.apply(&r.dossier.stream(), r, &system());
                }
            }
            appraisal_at
        };
        let mut in_order = Fold::default();
        let at_in_order = life(&mut in_order, false);
        let mut late = Fold::default();
        let at_late = life(&mut late, true);

        let r = late.model.dossiers.get(&reviewed).unwrap();
        assert_eq!(r.state, DossierState::Reviewed);
        assert_eq!(r.proposed_grade(), Some(Grade::Excellent));
        assert_eq!(
            r.self_review.unwrap().score,
            review(reviewed, Grade::Good).score
        );
        assert_eq!(r.trace.unwrap().traceparent(), PARENT);
        let r = late.model.dossiers.get(&decided).unwrap();
        assert_eq!(r.state, DossierState::Decided);
        assert_eq!(r.counted_grade(), Some(Grade::Excellent));
        // The appraisal is where the store holds it, folded late or not.
        assert_eq!(r.appraisal_at.map(NonZeroI64::get), Some(at_late));

        // The same model as in order (but for where the appraisal is),
        // and again when the late store is folded anew into a model that
        // keeps 8 values per map in memory.
        let mut replay = AppraisalModel::with_cache(8);
        for event in &late.log {
            replay.apply(event);
        }
        for model in [&late.model, &replay] {
            for d in [reviewed, decided] {
                let mut expected =
                    AppraisalDossier::clone(&in_order.model.dossiers.get(&d).unwrap());
                if d == decided {
                    assert_eq!(
                        expected.appraisal_at.map(NonZeroI64::get),
                        Some(at_in_order)
                    );
                    expected.appraisal_at = NonZeroI64::new(at_late);
                }
                assert_eq!(*model.dossiers.get(&d).unwrap(), expected);
            }
            assert_eq!(model.tallies, in_order.model.tallies);
            assert_eq!(
                model.awaiting.get(&board),
                in_order.model.awaiting.get(&board)
            );
        }
        assert_eq!(
            in_order.model.awaiting.get(&board).unwrap().as_slice(),
            [(1, reviewed)]
        );
        assert_eq!(in_order.model.tallies.values().next().unwrap().excellent, 1);
    }
}
