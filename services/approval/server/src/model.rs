//! The approval service's model: what it knows, folded from its own store
//! (its own events and the copies of submission's and appraisal's events
//! that its consumer recorded). Decisions and queries read it; nothing else
//! changes it.
//!
//! **Memory.** Nothing in the model grows with the number of dossiers but
//! its [`SpillMap`]s (`docs/adr/0002-bounded-model-memory.md`): the
//! per-dossier records, each unit's member list, and the worklist's index of
//! the dossiers waiting for a decision per deciding org. Each keeps a fixed
//! number of values in memory and the rest in the model's scratch file, so
//! the model answers the same however much of it is in memory. What stays in
//! ordinary maps grows with the number of orgs and cycles: the org tree, the
//! cycles, the orgs taking part, quota and worklist tallies per authority,
//! the completed units. No question walks every dossier: a unit is read
//! through its member list, a worklist through the index of its authorities.
//! The events parked for dossiers not registered yet (below) are in an
//! ordinary map too: it grows with the copies that arrived out of order, not
//! with the dossiers, and is empty in normal operation.
//!
//! **Order.** The consumer records other services' events in the order they
//! arrive, and a dossier's self-review, appraisal or return may arrive
//! before its registration (a registration nak'ed and redelivered after
//! later messages, or replicas sharing the durable). Such an event, and any
//! event of the dossier's life that needs its record (a collective opened,
//! a grade), is parked per dossier, in store order, and applied right after
//! the dossier's registration, in the order it was parked. What a grade
//! changes beyond the record — the log's head and version, and a first
//! grade's count in its authority's tally and its cycle's — is applied when
//! the grade is folded, parked or not; a re-grade's tallies move with the
//! record, whose superseded grade they take back. The model is folded from
//! the store in store order, so a replay parks and releases exactly the
//! same way and rebuilds the same model.
//!
//! The ordering rule of Art. 12.2 lives here as two questions the model
//! answers: which dossiers and child units a collective still waits for, and
//! which units a set of newly settled dossiers completes. Both can be asked
//! "as if" some dossiers were already settled or registered (a [`Pending`]),
//! because a decision must judge the batch it is about to write, and a
//! reaction must judge the fact it is about to record, before either is in
//! the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use gradeflow_approval_domain::GroupCounts;
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleCompleted, CycleOpened, DossierAppraised, DossierReturned, Event,
    GradeDecided, GradeRevised, SelfReviewSubmitted, SubjectRegistered, UnitCompleted,
};
use gradeflow_proto::{
    Category, CycleId, DossierId, DossierState, Facts, Grade, OrgId, QuotaSettings, RulebookId,
    Score, SubjectId, SubjectKind, SubjectStatus, TaskCounts, Tiers,
};
use gradeflow_service::spill::{self, SpillMap};
use gradeflow_service::trace::{self, PackedTrace};
use gradeflow_service::{Model, OrgTree};
use serde::{Deserialize, Serialize};

use crate::record::{DECISION_LOG_STREAM, GENESIS_HASH};
use crate::SERVICE;

/// A review cycle as approval needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleInfo {
    /// The rulebook the cycle is graded under.
    pub rulebook: RulebookId,
    /// Its quota settings.
    pub quota: QuotaSettings,
    /// Its tiers, lowest first.
    pub tiers: Tiers,
    /// The root org: its unit completing completes the cycle.
    pub root: OrgId,
    /// The year reviewed.
    pub year: i32,
}

/// The grade a dossier holds now, and where it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentGrade {
    /// The current decision-log record of the dossier.
    pub seq: u64,
    /// The grade.
    pub grade: Grade,
    /// The quota group it counts in.
    pub group: String,
    /// The authority that decided it.
    pub authority: OrgId,
}

/// One dossier of a cycle. Kept in the model's [`SpillMap`], so it may be
/// written to the scratch file and read back: its floating-point facts are
/// written as their bits (see `exact`), so a record read back is the record
/// written, to the last bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DossierInfo {
    /// Its subject.
    pub subject: SubjectId,
    /// The cycle.
    pub cycle: CycleId,
    /// The org an individual belongs to, or the collective itself.
    pub org: OrgId,
    /// The org whose authority decides it.
    pub deciding_org: OrgId,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// Where its latest `subject_registered` is in the store (its
    /// position): the subject's name, which no decision needs, is read
    /// from there when a query shows it (`worklist.v1`).
    pub registered: i64,
    /// The self-review form.
    pub category: Category,
    /// Leader flag.
    pub leader: bool,
    /// Reviewed or not.
    pub status: SubjectStatus,
    /// The quota group.
    pub quota_group: String,
    /// Where it stands.
    pub state: DossierState,
    /// The self-score (366).
    #[serde(with = "exact::score")]
    pub score: Option<Score>,
    /// Task counts.
    pub tasks: Option<TaskCounts>,
    /// Whether last review's shortcomings were fixed.
    pub shortcomings_fixed: bool,
    /// The appraisal's consolidated facts (the latest appraisal).
    #[serde(with = "exact::facts")]
    pub facts: Facts,
    /// The appraisal's recommendation.
    pub recommended_grade: Option<Grade>,
    /// For a collective: submission said it may now be decided.
    pub opened: bool,
    /// The grade it holds, once decided.
    pub current: Option<CurrentGrade>,
    /// The dossier's trace: the `traceparent` of its first self-review
    /// (`gradeflow_service::trace`), which its grades continue; packed.
    pub trace: Option<PackedTrace>,
}

/// A unit of a cycle: an org with the dossiers that belong to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Individual dossiers whose org is the unit.
    pub members: BTreeSet<DossierId>,
    /// The unit's own collective dossier.
    pub collective: Option<DossierId>,
}

/// `(cycle, org)`: one unit of one cycle.
pub type UnitKey = (CycleId, OrgId);

/// `(cycle, deciding org)`: the dossiers of one cycle one authority decides.
pub type AuthorityKey = (CycleId, OrgId);

/// A dossier waiting for a decision as the worklist orders it within its
/// authority: its org, whether it is that unit's collective, its id.
pub type DueEntry = (OrgId, bool, DossierId);

/// Per-unit lists kept in memory for every this many per-dossier records:
/// a list holds many dossiers, a record one.
const LIST_SHARE: usize = 8;

/// Facts not yet in the store that a question must take as given: dossiers
/// this batch settles, a dossier whose registration is being recorded.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// Dossiers to count as settled.
    pub settled: HashSet<DossierId>,
    /// Dossiers to count as registered: id, cycle, org, kind.
    pub registered: Vec<(DossierId, CycleId, OrgId, SubjectKind)>,
}

/// Everything approval knows.
#[derive(Debug)]
pub struct ApprovalModel {
    /// The organisation tree.
    pub tree: OrgTree,
    /// Cycles by id.
    pub cycles: HashMap<CycleId, CycleInfo>,
    /// Dossiers by id.
    pub dossiers: SpillMap<DossierId, DossierInfo>,
    /// Units by cycle and org: the dossiers that belong to each.
    pub units: SpillMap<UnitKey, Unit>,
    /// The worklist's index: per cycle and deciding org, the dossiers
    /// waiting for a first grade (appraised), in the worklist's order. A
    /// dossier is in it exactly while its record says it is appraised; an
    /// authority with none has no entry.
    pub due: SpillMap<AuthorityKey, BTreeSet<DueEntry>>,
    /// How many dossiers [`ApprovalModel::due`] holds per cycle, deciding
    /// org and quota group; only counts above zero, only authorities with
    /// one.
    pub due_groups: HashMap<AuthorityKey, BTreeMap<String, usize>>,
    /// Per cycle, the orgs taking part: those with a dossier in their
    /// subtree (the same rule submission's upward flow uses).
    pub participating: HashMap<CycleId, HashSet<OrgId>>,
    /// Hash of the last record of the decision log (empty before the first;
    /// [`ApprovalModel::head`] then gives 64 zeros). The records themselves
    /// stay in the store's `decision-log` stream ([`crate::log`]).
    pub log_head: String,
    /// Version of the `decision-log` stream: the last seq written. Every
    /// seq from 1 to it is a record.
    pub log_version: u64,
    /// Excellent and good counts of current grades per cycle, authority and
    /// quota group (a superseded grade no longer counts; its revision does).
    pub counts: HashMap<(CycleId, OrgId), BTreeMap<String, GroupCounts>>,
    /// Dossiers holding a grade, per cycle.
    pub graded: HashMap<CycleId, u64>,
    /// Units whose completion was recorded.
    pub completed_units: HashSet<UnitKey>,
    /// Cycles whose completion was recorded.
    pub completed_cycles: HashSet<CycleId>,
    /// Events of the life of dossiers not registered yet, per dossier in
    /// store order: applied right after the registration. Empty unless
    /// copies arrived out of order.
    orphans: HashMap<DossierId, Vec<StoredEvent>>,
}

impl Default for ApprovalModel {
    /// An empty model whose maps keep [`spill::capacity`] records in memory
    /// (see [`ApprovalModel::with_cache`]).
    fn default() -> Self {
        Self::with_cache(spill::capacity())
    }
}

/// Where a dossier stands in the worklist's index: the authority it waits
/// for, its entry there and its quota group. `None` (see [`due_of`]) for a
/// dossier not waiting for a first grade.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Due {
    key: AuthorityKey,
    entry: DueEntry,
    group: String,
}

/// Where `record` (the record of `dossier`) belongs in the worklist's index.
fn due_of(dossier: DossierId, record: &DossierInfo) -> Option<Due> {
    (record.state == DossierState::Appraised).then(|| Due {
        key: (record.cycle, record.deciding_org),
        entry: (record.org, record.kind == SubjectKind::Collective, dossier),
        group: record.quota_group.clone(),
    })
}

fn parse<E: Event>(event: &StoredEvent) -> Option<E> {
    match serde_json::from_value(event.payload.clone()) {
        Ok(e) => Some(e),
        Err(error) => {
            // A payload of a known kind that does not parse is a contract
            // break upstream; the model skips it rather than stop the service.
            tracing::warn!(kind = %event.kind, position = event.position, %error, "approval: unreadable event skipped");
            None
        }
    }
}

fn bump(counts: &mut GroupCounts, grade: Grade, up: bool) {
    let slot = match grade {
        Grade::Excellent => &mut counts.excellent,
        Grade::Good => &mut counts.good,
        Grade::Completed | Grade::NotCompleted => return,
    };
    *slot = if up {
        slot.saturating_add(1)
    } else {
        slot.saturating_sub(1)
    };
}

/// An event of a dossier's life that changes the dossier's record, parsed.
/// The grades are boxed: they are several times the size of the others.
enum Life {
    Reviewed(SelfReviewSubmitted),
    Appraised(DossierAppraised),
    Returned(DossierReturned),
    Opened(CollectiveDossierOpened),
    Decided(Box<GradeDecided>),
    Revised(Box<GradeRevised>),
}

impl Life {
    /// The event of a dossier's life `event` is; `None` for another kind or
    /// a payload that does not parse.
    fn of(event: &StoredEvent) -> Option<Life> {
        match event.kind.as_str() {
            SelfReviewSubmitted::KIND => parse(event).map(Life::Reviewed),
            DossierAppraised::KIND => parse(event).map(Life::Appraised),
            DossierReturned::KIND => parse(event).map(Life::Returned),
            CollectiveDossierOpened::KIND => parse(event).map(Life::Opened),
            GradeDecided::KIND => parse(event).map(|e| Life::Decided(Box::new(e))),
            GradeRevised::KIND => parse(event).map(|e| Life::Revised(Box::new(e))),
            _ => None,
        }
    }

    /// The dossier it is about.
    fn dossier(&self) -> DossierId {
        match self {
            Life::Reviewed(e) => e.dossier,
            Life::Appraised(e) => e.dossier,
            Life::Returned(e) => e.dossier,
            Life::Opened(e) => e.dossier,
            Life::Decided(e) => e.dossier,
            Life::Revised(e) => e.dossier,
        }
    }
}

impl Model for ApprovalModel {
    fn apply(&mut self, event: &StoredEvent) {
        if event.stream == DECISION_LOG_STREAM {
            // The next seq follows the stream's version even should a record
            // not parse (verification then names the gap).
            self.log_version = event.version;
        }
        if self.tree.apply(&event.kind, &event.payload) {
            return;
        }
        let kind = event.kind.as_str();
        if kind == CycleOpened::KIND {
            if let Some(e) = parse::<CycleOpened>(event) {
                self.cycles.insert(
                    e.cycle,
                    CycleInfo {
                        rulebook: e.rulebook,
                        quota: e.quota,
                        tiers: e.tiers,
                        root: e.root,
                        year: e.year,
                    },
                );
            }
        } else if kind == SubjectRegistered::KIND {
            if let Some(e) = parse::<SubjectRegistered>(event) {
                self.register(e, event.position);
            }
        } else if kind == UnitCompleted::KIND {
            if let Some(e) = parse::<UnitCompleted>(event) {
                self.completed_units.insert((e.cycle, e.org));
            }
        } else if kind == CycleCompleted::KIND {
            if let Some(e) = parse::<CycleCompleted>(event) {
                self.completed_cycles.insert(e.cycle);
            }
        } else if let Some(life) = Life::of(event) {
            // What a grade changes beyond the record is the log's and the
            // authority's: it moves when the grade is folded, whether the
            // record is there yet or not, and never again on release.
            match &life {
                Life::Decided(e) => {
                    self.count_decided(e);
                    self.log_head(event, &e.record.hash);
                }
                Life::Revised(e) => self.log_head(event, &e.record.hash),
                _ => {}
            }
            let dossier = life.dossier();
            if !self.live(event, life) {
                // Not registered yet: applied right after its registration.
                self.orphans.entry(dossier).or_default().push(event.clone());
            }
        }
    }
}

impl ApprovalModel {
    /// An empty model keeping at most `records` dossier records in memory,
    /// and an eighth as many of each kind of per-unit list (at least 8 of
    /// each); the rest go to the model's scratch file. [`Default`] takes
    /// [`spill::capacity`]; the answers are the same at any size.
    pub fn with_cache(records: usize) -> Self {
        let lists = (records / LIST_SHARE).max(8);
        Self {
            tree: OrgTree::default(),
            cycles: HashMap::new(),
            dossiers: SpillMap::with_capacity(records),
            units: SpillMap::with_capacity(lists),
            due: SpillMap::with_capacity(lists),
            due_groups: HashMap::new(),
            participating: HashMap::new(),
            log_head: String::new(),
            log_version: 0,
            counts: HashMap::new(),
            graded: HashMap::new(),
            completed_units: HashSet::new(),
            completed_cycles: HashSet::new(),
            orphans: HashMap::new(),
        }
    }

    fn register(&mut self, e: SubjectRegistered, position: i64) {
        self.mark_participating(e.cycle, e.org);
        self.units
            .upsert((e.cycle, e.org), Unit::default, |unit| match e.kind {
                SubjectKind::Individual => {
                    unit.members.insert(e.dossier);
                }
                SubjectKind::Collective => unit.collective = Some(e.dossier),
            });
        let state = if e.status.is_reviewed() {
            e.state
        } else {
            DossierState::NotReviewed
        };
        let record = DossierInfo {
            subject: e.subject,
            cycle: e.cycle,
            org: e.org,
            deciding_org: e.deciding_org,
            kind: e.kind,
            registered: position,
            category: e.category,
            leader: e.leader,
            status: e.status,
            quota_group: e.quota_group,
            state,
            score: None,
            tasks: None,
            shortcomings_fixed: true,
            facts: Facts::default(),
            recommended_grade: None,
            opened: false,
            current: None,
            trace: None,
        };
        // A registration starts the dossier afresh: whatever the record it
        // replaces had in the worklist's index goes.
        let before = self
            .dossiers
            .get(&e.dossier)
            .and_then(|old| due_of(e.dossier, &old));
        let after = due_of(e.dossier, &record);
        self.dossiers.insert(e.dossier, record);
        self.reindex(before, after);
        if let Some(parked) = self.orphans.remove(&e.dossier) {
            for event in &parked {
                // Parsed when parked, so it parses again; the record is
                // there now, so it is applied.
                if let Some(life) = Life::of(event) {
                    self.live(event, life);
                }
            }
        }
    }

    /// Folds `life`, read from `event`, into its dossier's record; false,
    /// changing nothing, when the dossier has no record yet.
    fn live(&mut self, event: &StoredEvent, life: Life) -> bool {
        match life {
            Life::Reviewed(e) => self
                .change(e.dossier, |d| {
                    d.score = e.score;
                    d.tasks = Some(e.tasks);
                    d.shortcomings_fixed = e.shortcomings_fixed;
                    if d.trace.is_none() {
                        d.trace = trace::valid(event.metadata.traceparent.as_deref())
                            .and_then(PackedTrace::pack);
                    }
                    if e.resubmission {
                        // A re-filed dossier will be appraised afresh; the
                        // old appraisal's facts no longer stand.
                        d.facts = Facts::default();
                        d.recommended_grade = None;
                    }
                    if !d.state.is_settled() {
                        d.state = DossierState::Submitted;
                    }
                })
                .is_some(),
            Life::Appraised(e) => self
                .change(e.dossier, |d| {
                    d.facts = e.facts;
                    d.recommended_grade = Some(e.recommended_grade);
                    // A re-appraisal after a complaint keeps the dossier
                    // decided: it is what a re-grade decides on.
                    if !d.state.is_settled() {
                        d.state = DossierState::Appraised;
                    }
                })
                .is_some(),
            Life::Returned(e) => self
                .change(e.dossier, |d| {
                    if !d.state.is_settled() {
                        d.state = DossierState::Returned;
                        d.facts = Facts::default();
                        d.recommended_grade = None;
                    }
                })
                .is_some(),
            Life::Opened(e) => self.change(e.dossier, |d| d.opened = true).is_some(),
            Life::Decided(e) => self.grade_decided(&e),
            Life::Revised(e) => self.grade_revised(&e),
        }
    }

    /// Changes the record of `dossier` with `f`, if there is one, and keeps
    /// the worklist's index in step with it; `f`'s answer.
    fn change<R>(
        &mut self,
        dossier: DossierId,
        f: impl FnOnce(&mut DossierInfo) -> R,
    ) -> Option<R> {
        let (answer, before, after) = self.dossiers.update(&dossier, |d| {
            let before = due_of(dossier, d);
            let answer = f(d);
            (answer, before, due_of(dossier, d))
        })?;
        self.reindex(before, after);
        Some(answer)
    }

    /// Moves a dossier in the worklist's index from `before` to `after`.
    fn reindex(&mut self, before: Option<Due>, after: Option<Due>) {
        if before == after {
            return;
        }
        if let Some(Due { key, entry, group }) = before {
            let emptied = self.due.update(&key, |set| {
                set.remove(&entry);
                set.is_empty()
            });
            if emptied == Some(true) {
                self.due.remove(&key);
            }
            if let Some(groups) = self.due_groups.get_mut(&key) {
                if let Some(n) = groups.get_mut(&group) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        groups.remove(&group);
                    }
                }
                if groups.is_empty() {
                    self.due_groups.remove(&key);
                }
            }
        }
        if let Some(Due { key, entry, group }) = after {
            self.due.upsert(key, BTreeSet::new, |set| set.insert(entry));
            let n = self
                .due_groups
                .entry(key)
                .or_default()
                .entry(group)
                .or_default();
            *n = n.saturating_add(1);
        }
    }

    /// Marks `org` and its ancestors as taking part in `cycle`; stops at
    /// the first one already marked (its ancestors are marked too).
    fn mark_participating(&mut self, cycle: CycleId, org: OrgId) {
        let set = self.participating.entry(cycle).or_default();
        let mut cur = Some(org);
        // Bounded by the tree's size, so a corrupt parent cycle cannot hang.
        for _ in 0..=self.tree.len() {
            let Some(c) = cur else { break };
            if !set.insert(c) {
                break;
            }
            cur = self.tree.get(c).and_then(|o| o.parent);
        }
    }

    /// Whether `org` takes part in `cycle`, counting pending registrations.
    fn participates(&self, cycle: CycleId, org: OrgId, pending: &Pending) -> bool {
        self.participating
            .get(&cycle)
            .is_some_and(|p| p.contains(&org))
            || pending
                .registered
                .iter()
                .any(|(_, c, o, _)| *c == cycle && self.tree.is_within(*o, org))
    }

    /// A first grade on the dossier's record; false when it has none yet.
    fn grade_decided(&mut self, e: &GradeDecided) -> bool {
        self.change(e.dossier, |d| {
            d.state = DossierState::Decided;
            d.current = Some(CurrentGrade {
                seq: e.record.seq,
                grade: e.grade,
                group: e.quota_group.clone(),
                authority: e.authority,
            });
        })
        .is_some()
    }

    /// A first grade in its authority's tally and its cycle's count: the
    /// grade carries its group and authority, so it counts from the moment
    /// it is folded, record or not.
    fn count_decided(&mut self, e: &GradeDecided) {
        bump(
            self.group_counts(e.cycle, e.authority, &e.quota_group),
            e.grade,
            true,
        );
        let graded = self.graded.entry(e.cycle).or_default();
        *graded = graded.saturating_add(1);
    }

    /// A re-grade on the dossier's record and in the tallies; false,
    /// changing nothing, when the dossier has no record yet (the
    /// superseded grade's group and authority are the record's).
    fn grade_revised(&mut self, e: &GradeRevised) -> bool {
        let Some((group, previous_authority)) = self.change(e.dossier, |d| {
            d.state = DossierState::Regraded;
            let group = d
                .current
                .as_ref()
                .map_or_else(|| d.quota_group.clone(), |c| c.group.clone());
            let previous_authority = d.current.as_ref().map_or(e.authority, |c| c.authority);
            d.current = Some(CurrentGrade {
                seq: e.record.seq,
                grade: e.grade,
                group: group.clone(),
                authority: e.authority,
            });
            (group, previous_authority)
        }) else {
            return false;
        };
        // The superseded grade stops counting towards the quota; the new one
        // counts instead.
        bump(
            self.group_counts(e.cycle, previous_authority, &group),
            e.previous_grade,
            false,
        );
        bump(
            self.group_counts(e.cycle, e.authority, &group),
            e.grade,
            true,
        );
        true
    }

    fn group_counts(&mut self, cycle: CycleId, authority: OrgId, group: &str) -> &mut GroupCounts {
        self.counts
            .entry((cycle, authority))
            .or_default()
            .entry(group.to_owned())
            .or_default()
    }

    /// A record of this service's log now heads the chain (the events
    /// [`crate::record::audit_record`] maps to a record: own grade events).
    fn log_head(&mut self, event: &StoredEvent, hash: &str) {
        if event.metadata.service == SERVICE {
            hash.clone_into(&mut self.log_head);
        }
    }

    /// Hash of the last record: the next record's `prev_hash`.
    pub fn head(&self) -> &str {
        if self.log_head.is_empty() {
            GENESIS_HASH
        } else {
            &self.log_head
        }
    }

    /// Excellent and good counts of current grades given by `authority` in
    /// `cycle`, per quota group.
    pub fn earlier(&self, cycle: CycleId, authority: OrgId) -> BTreeMap<String, GroupCounts> {
        self.counts
            .get(&(cycle, authority))
            .cloned()
            .unwrap_or_default()
    }

    fn is_settled(&self, dossier: DossierId, pending: &Pending) -> bool {
        pending.settled.contains(&dossier)
            || self
                .dossiers
                .get(&dossier)
                .is_some_and(|d| d.state.is_settled())
    }

    /// The unit `key` with the pending registrations added; `None` when it
    /// has no dossier at all (the org takes no part in the cycle). The
    /// model's own value unless a pending registration changes it.
    pub fn unit(&self, key: UnitKey, pending: &Pending) -> Option<Arc<Unit>> {
        let mut unit = self.units.get(&key);
        for (dossier, cycle, org, kind) in &pending.registered {
            if (*cycle, *org) != key {
                continue;
            }
            let u = Arc::make_mut(unit.get_or_insert_with(Arc::default));
            match kind {
                SubjectKind::Individual => {
                    u.members.insert(*dossier);
                }
                SubjectKind::Collective => u.collective = Some(*dossier),
            }
        }
        unit
    }

    /// The child units of `org` in `cycle`: its children in the tree that
    /// take part in the cycle (a dossier somewhere in their subtree, as
    /// submission's upward flow counts them). A child with no dossier below
    /// it is not waited for: nothing of it can ever be decided.
    fn child_units(&self, cycle: CycleId, org: OrgId, pending: &Pending) -> Vec<OrgId> {
        self.tree
            .get(org)
            .map(|node| {
                node.children
                    .iter()
                    .copied()
                    .filter(|c| self.participates(cycle, *c, pending))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether unit `key` is complete: recorded as such, or (with the
    /// pending facts) its collective and every member settled and every
    /// child unit complete. `newly` holds units found complete but not
    /// recorded yet.
    fn unit_complete(
        &self,
        key: UnitKey,
        pending: &Pending,
        newly: &HashSet<UnitKey>,
        depth: usize,
    ) -> bool {
        if self.completed_units.contains(&key) || newly.contains(&key) {
            return true;
        }
        // Bounded by the tree's size, so a corrupt cycle cannot recurse
        // without end.
        if depth > self.tree.len() {
            return false;
        }
        let Some(unit) = self.unit(key, pending) else {
            return false;
        };
        let Some(collective) = unit.collective else {
            return false;
        };
        self.is_settled(collective, pending)
            && unit.members.iter().all(|m| self.is_settled(*m, pending))
            && self
                .child_units(key.0, key.1, pending)
                .into_iter()
                .all(|c| self.unit_complete((key.0, c), pending, newly, depth + 1))
    }

    /// What the collective of `org` in `cycle` still waits for (Art. 12.2):
    /// the unit's member dossiers not settled, then its child units not
    /// complete (their org ids), as strings for the rulebook.
    pub fn waiting_for(&self, cycle: CycleId, org: OrgId, pending: &Pending) -> Vec<String> {
        let mut waiting = Vec::new();
        if let Some(unit) = self.unit((cycle, org), pending) {
            waiting.extend(
                unit.members
                    .iter()
                    .filter(|m| !self.is_settled(**m, pending))
                    .map(ToString::to_string),
            );
        }
        let none = HashSet::new();
        waiting.extend(
            self.child_units(cycle, org, pending)
                .into_iter()
                .filter(|c| !self.unit_complete((cycle, *c), pending, &none, 0))
                .map(|c| c.to_string()),
        );
        waiting
    }

    /// The units that complete once the pending facts hold, starting from
    /// the units of `orgs` and walking up while parents complete too, each
    /// not recorded as complete yet; children before parents.
    pub fn completions(&self, cycle: CycleId, orgs: &[OrgId], pending: &Pending) -> Vec<OrgId> {
        let mut newly: HashSet<UnitKey> = HashSet::new();
        let mut order = Vec::new();
        let mut frontier: Vec<OrgId> = Vec::new();
        for org in orgs {
            if !frontier.contains(org) {
                frontier.push(*org);
            }
        }
        // Lower tiers first, so a parent is judged after its children.
        frontier.sort_by_key(|o| std::cmp::Reverse(self.depth_of(*o)));
        while let Some(org) = (!frontier.is_empty()).then(|| frontier.remove(0)) {
            let key = (cycle, org);
            if self.completed_units.contains(&key) || newly.contains(&key) {
                continue;
            }
            if self.unit_complete(key, pending, &newly, 0) {
                newly.insert(key);
                order.push(org);
                if let Some(parent) = self.tree.get(org).and_then(|n| n.parent) {
                    if !frontier.contains(&parent) {
                        frontier.push(parent);
                        frontier.sort_by_key(|o| std::cmp::Reverse(self.depth_of(*o)));
                    }
                }
            }
        }
        order
    }

    fn depth_of(&self, org: OrgId) -> usize {
        let mut depth = 0;
        let mut cur = self.tree.get(org).and_then(|n| n.parent);
        while let Some(p) = cur {
            depth += 1;
            if depth > self.tree.len() {
                break;
            }
            cur = self.tree.get(p).and_then(|n| n.parent);
        }
        depth
    }
}

/// The serde forms a record's floating-point facts take in the scratch file:
/// each `f64` as its bits. As decimal text a float is read back by the JSON
/// parser to within a unit in the last place, not always exactly, and a
/// record read back must decide as the record written did.
mod exact {
    /// `Option<Score>` as the bits of its two parts.
    pub mod score {
        use gradeflow_proto::Score;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes the score's parts as bits.
        pub fn serialize<S: Serializer>(score: &Option<Score>, s: S) -> Result<S::Ok, S::Error> {
            score
                .map(|Score { general, tasks }| (general.to_bits(), tasks.to_bits()))
                .serialize(s)
        }

        /// Reads what [`serialize`] wrote.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Score>, D::Error> {
            Ok(
                Option::<(u64, u64)>::deserialize(d)?.map(|(general, tasks)| Score {
                    general: f64::from_bits(general),
                    tasks: f64::from_bits(tasks),
                }),
            )
        }
    }

    /// `Facts` with its ratios as bits.
    pub mod facts {
        use gradeflow_proto::{Discipline, Facts};
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// [`Facts`], field for field, each ratio as its bits. Converted
        /// with an exhaustive pattern, so a new field of `Facts` does not
        /// compile until it is written here too.
        #[derive(Serialize, Deserialize)]
        struct Exact {
            discipline: Option<Discipline>,
            degradation: bool,
            low_confidence_ratio: Option<u64>,
            unit_task_completion: Option<u64>,
            subordinates_not_completed_ratio: Option<u64>,
            member_disciplined: bool,
            subordinate_disciplined: bool,
            wrongdoing_concluded: bool,
        }

        /// Writes the facts with their ratios as bits.
        pub fn serialize<S: Serializer>(facts: &Facts, s: S) -> Result<S::Ok, S::Error> {
            let Facts {
                discipline,
                degradation,
                low_confidence_ratio,
                unit_task_completion,
                subordinates_not_completed_ratio,
                member_disciplined,
                subordinate_disciplined,
                wrongdoing_concluded,
            } = facts.clone();
            Exact {
                discipline,
                degradation,
                low_confidence_ratio: low_confidence_ratio.map(f64::to_bits),
                unit_task_completion: unit_task_completion.map(f64::to_bits),
                subordinates_not_completed_ratio: subordinates_not_completed_ratio
                    .map(f64::to_bits),
                member_disciplined,
                subordinate_disciplined,
                wrongdoing_concluded,
            }
            .serialize(s)
        }

        /// Reads what [`serialize`] wrote.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Facts, D::Error> {
            let Exact {
                discipline,
                degradation,
                low_confidence_ratio,
                unit_task_completion,
                subordinates_not_completed_ratio,
                member_disciplined,
                subordinate_disciplined,
                wrongdoing_concluded,
            } = Exact::deserialize(d)?;
            Ok(Facts {
                discipline,
                degradation,
                low_confidence_ratio: low_confidence_ratio.map(f64::from_bits),
                unit_task_completion: unit_task_completion.map(f64::from_bits),
                subordinates_not_completed_ratio: subordinates_not_completed_ratio
                    .map(f64::from_bits),
                member_disciplined,
                subordinate_disciplined,
                wrongdoing_concluded,
            })
        }
    }
}
