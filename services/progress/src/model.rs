//! [`ProgressModel`]: the progress service's read model, folded from its own
//! store — which holds only copies of the events of every other service
//! (`docs/architecture.md` § Inside a workflow service), so the model is
//! disposable and rebuilt by replay.
//!
//! It keeps the organisation tree, the cycles, one [`DossierRecord`] per
//! dossier, the completed units, and per (cycle, org) the aggregated
//! [`Counters`] of the org's whole subtree, shifted along the ancestor path
//! on every change of a dossier (see `counters`).
//!
//! **Memory** (`docs/adr/0002-bounded-model-memory.md`). What grows with the
//! number of dossiers lives in two [`SpillMap`]s, which keep a bounded
//! working set in memory and the rest in a scratch file: the records
//! ([`ProgressModel::dossiers`]) and each unit's list of its own dossiers
//! ([`ProgressModel::own_dossiers`]). Everything else is per unit, per
//! authority, per cycle or per decision. Nothing reads every dossier: a
//! reader of a subtree walks the org tree and reads each unit's list
//! ([`ProgressModel::subtree_dossiers`], the report's dossier list).
//!
//! **Order.** The consumer records events in stream order, but a dossier's
//! events come from three services; should one arrive before the dossier's
//! registration (a nak'ed and redelivered registration, or replicas sharing
//! the durable), it is parked and applied right after the registration.
//! Parking happens in store order, so a replay parks and releases exactly
//! the same way and the rebuilt model is the same.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use gradeflow_approval_domain::{ratio_bp, GroupCounts};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleCompleted, CycleOpened, DecisionRecorded, DossierAppraised,
    DossierReturned, Event, GradeDecided, GradeRevised, MeetingRecorded, OrgMoved, OrgsMerged,
    SelfReviewSubmitted, SubjectRegistered, UnitCompleted,
};
use gradeflow_proto::{
    Category, CycleId, DecisionId, DossierId, DossierState, Grade, OrgId, SubjectId, SubjectKind,
    SubjectStatus,
};
use gradeflow_service::spill::SpillMap;
use gradeflow_service::{Model, OrgNode, OrgTree};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::counters::{Contribution, Counters, QuotaRule, Segment};

/// A cycle as progress knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleInfo {
    /// The cycle as opened.
    pub opened: CycleOpened,
    /// When Central's own decision completed it.
    pub completed_at: Option<DateTime<Utc>>,
    /// Its quota rule.
    pub rule: QuotaRule,
}

impl CycleInfo {
    /// The deadline of `org`'s tier.
    pub fn deadline_of(&self, org: &OrgNode) -> Option<NaiveDate> {
        self.opened.deadlines.get(&org.tier).copied()
    }
}

/// What progress keeps of a dossier's registration: what the counters and
/// the unit report read (the dossier's id is its key in
/// [`ProgressModel::dossiers`]). The quota group's name is shared by the
/// records of the group held in memory (a record read back from the
/// scratch file has its own copy).
///
/// It is written to the model's scratch file when evicted, with one-letter
/// keys: there is one such value per dossier out of memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The subject.
    #[serde(rename = "s")]
    pub subject: SubjectId,
    /// The cycle.
    #[serde(rename = "c")]
    pub cycle: CycleId,
    /// The org it belongs to.
    #[serde(rename = "o")]
    pub org: OrgId,
    /// The org that decides its grade.
    #[serde(rename = "d")]
    pub deciding_org: OrgId,
    /// Individual or collective.
    #[serde(rename = "k")]
    pub kind: SubjectKind,
    /// The subject's name.
    #[serde(rename = "n")]
    pub name: Box<str>,
    /// Its category.
    #[serde(rename = "t")]
    pub category: Category,
    /// Whether the subject is a leader.
    #[serde(rename = "l", default, skip_serializing_if = "is_false")]
    pub leader: bool,
    /// Its status (the not-reviewed reason).
    #[serde(rename = "u")]
    pub status: SubjectStatus,
    /// Its quota group.
    #[serde(rename = "q")]
    pub quota_group: Arc<str>,
}

/// Everything progress knows about one dossier: the value of
/// [`ProgressModel::dossiers`], written to the scratch file (one-letter
/// keys, empty fields left out) when evicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DossierRecord {
    /// The registration (org, deciding org, kind, category, leader,
    /// status, quota group, name).
    #[serde(rename = "r")]
    pub registered: Registration,
    /// Its current state.
    #[serde(rename = "s")]
    pub state: DossierState,
    /// The grade in force once decided (the new one after a re-grade).
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
    /// The grade a re-grade superseded.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub previous_grade: Option<Grade>,
    /// The decision document of the grade in force (its number:
    /// [`ProgressModel::decision_number`]).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionId>,
    /// The re-grading reason.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub regrade_reason: Option<Box<str>>,
    /// How often it was returned for rework.
    #[serde(rename = "n", default, skip_serializing_if = "is_zero")]
    pub returns: u32,
    /// For a collective: opened for decision (all it waited for is
    /// settled).
    #[serde(rename = "o", default, skip_serializing_if = "is_false")]
    pub ready: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DossierRecord {
    /// What the dossier adds to the counters of its ancestors.
    pub fn contribution(&self) -> Contribution {
        let r = &self.registered;
        let graded = matches!(self.state, DossierState::Decided | DossierState::Regraded);
        Contribution {
            state: self.state,
            status: r.status,
            grade: self.grade.filter(|_| graded),
            segments: Segment::of(r.kind, r.category, r.leader),
            authority: r.deciding_org,
            group: r.quota_group.clone(),
        }
    }
}

/// How one of the model's spilled maps stands
/// ([`ProgressModel::spill_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillStats {
    /// Values in memory now.
    pub in_memory: usize,
    /// Values written to its scratch file so far.
    pub written: u64,
    /// Values read back from it so far.
    pub read_back: u64,
}

impl SpillStats {
    fn of<K, V>(map: &SpillMap<K, V>) -> SpillStats
    where
        K: gradeflow_service::spill::SpillKey,
        V: Serialize + DeserializeOwned + Clone,
    {
        let (written, read_back) = map.traffic();
        SpillStats {
            in_memory: map.in_memory(),
            written,
            read_back,
        }
    }
}

/// The progress read model.
#[derive(Debug, Default)]
pub struct ProgressModel {
    /// The organisation tree.
    pub orgs: OrgTree,
    /// Cycles by id.
    pub cycles: HashMap<CycleId, CycleInfo>,
    /// Dossiers by id: a bounded working set in memory, the rest in the
    /// model's scratch file. Read one with `dossiers.get(&id)`; there is
    /// no way to read them all (a subtree's are read through its units:
    /// [`ProgressModel::subtree_dossiers`]).
    pub dossiers: SpillMap<DossierId, DossierRecord>,
    /// Every quota group name, once (the records in memory share them).
    groups: HashSet<Arc<str>>,
    /// Subtree counters per (cycle, org).
    counters: HashMap<(CycleId, OrgId), Counters>,
    /// Per (cycle, authority): the excellent and good it decided, per quota
    /// group (the groups an org decides itself).
    authorities: HashMap<(CycleId, OrgId), std::collections::BTreeMap<String, GroupCounts>>,
    /// The dossiers of each (cycle, org) itself, in registration order
    /// (spilled as [`ProgressModel::dossiers`] is: together they grow with
    /// the dossiers).
    units: SpillMap<(CycleId, OrgId), Vec<DossierId>>,
    /// Units whose completion approval announced.
    completed: HashSet<(CycleId, OrgId)>,
    /// Decision document numbers, from the decision or from the first
    /// grade that carried one.
    decisions: HashMap<DecisionId, String>,
    /// Orgs merged into each org (their own dossiers are listed there).
    merged_from: HashMap<OrgId, Vec<OrgId>>,
    /// Events about dossiers not registered yet, in store order.
    orphans: HashMap<DossierId, Vec<StoredEvent>>,
    /// The last position folded.
    position: i64,
    /// The last position of a registry event (they change every cycle's
    /// answers: names, shape).
    registry_position: i64,
    /// The last position that changed each cycle's answers.
    cycle_positions: HashMap<CycleId, i64>,
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

/// The dossier an event of a dossier's life is about, if it is one.
fn dossier_of(event: &StoredEvent) -> Option<DossierId> {
    const KINDS: [&str; 7] = [
        SelfReviewSubmitted::KIND,
        MeetingRecorded::KIND,
        DossierAppraised::KIND,
        DossierReturned::KIND,
        GradeDecided::KIND,
        GradeRevised::KIND,
        CollectiveDossierOpened::KIND,
    ];
    if !KINDS.contains(&event.kind.as_str()) {
        return None;
    }
    event
        .payload
        .get("dossier")
        .and_then(|d| serde_json::from_value(d.clone()).ok())
}

impl Model for ProgressModel {
    fn apply(&mut self, event: &StoredEvent) {
        self.position = event.position;
        let kind = event.kind.as_str();
        if kind == OrgMoved::KIND || kind == OrgsMerged::KIND {
            self.reshape(event);
            self.registry_position = event.position;
            return;
        }
        if self.orgs.apply(kind, &event.payload) {
            self.registry_position = event.position;
            return;
        }
        if let Some(dossier) = dossier_of(event) {
            if !self.dossiers.contains_key(&dossier) {
                self.orphans.entry(dossier).or_default().push(event.clone());
                return;
            }
            self.apply_to_dossier(event);
            return;
        }
        if kind == CycleOpened::KIND {
            if let Some(e) = parse::<CycleOpened>(event) {
                let rule = QuotaRule {
                    ratio_bp: ratio_bp(e.quota.ratio),
                    rounding: e.quota.rounding,
                };
                self.touch(e.cycle);
                self.cycles.insert(
                    e.cycle,
                    CycleInfo {
                        opened: e,
                        completed_at: None,
                        rule,
                    },
                );
            }
        } else if kind == SubjectRegistered::KIND {
            if let Some(e) = parse::<SubjectRegistered>(event) {
                self.register(e);
            }
        } else if kind == DecisionRecorded::KIND {
            if let Some(e) = parse::<DecisionRecorded>(event) {
                // A grade folded first may have given the number already
                // (the same document's, as approval writes both).
                self.decisions.entry(e.decision).or_insert(e.number);
                self.touch(e.cycle);
            }
        } else if kind == UnitCompleted::KIND {
            if let Some(e) = parse::<UnitCompleted>(event) {
                self.completed.insert((e.cycle, e.org));
                self.touch(e.cycle);
            }
        } else if kind == CycleCompleted::KIND {
            if let Some(e) = parse::<CycleCompleted>(event) {
                if let Some(c) = self.cycles.get_mut(&e.cycle) {
                    c.completed_at = Some(e.completed_at);
                }
                self.touch(e.cycle);
            }
        }
    }
}

impl ProgressModel {
    /// An empty model whose maps of per-dossier state keep at most
    /// `values` values each in memory (at least 8), the rest in their
    /// scratch files; [`ProgressModel::default`] keeps
    /// [`gradeflow_service::spill::capacity`]'s. Its answers are the same
    /// whatever the capacity (tests fold with a tiny one to show it).
    pub fn with_cache(values: usize) -> Self {
        Self {
            dossiers: SpillMap::with_capacity(values),
            units: SpillMap::with_capacity(values),
            ..Self::default()
        }
    }

    /// How the maps that grow with the dossiers stand: the records, then
    /// the units' lists.
    pub fn spill_stats(&self) -> (SpillStats, SpillStats) {
        (SpillStats::of(&self.dossiers), SpillStats::of(&self.units))
    }

    /// The last store position folded into the model.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The last store position that changed an answer about `cycle` (its
    /// own events, or a registry event, which may rename or reshape any
    /// cycle's tree).
    pub fn cycle_position(&self, cycle: CycleId) -> i64 {
        self.cycle_positions
            .get(&cycle)
            .copied()
            .unwrap_or_default()
            .max(self.registry_position)
    }

    /// The subtree counters of `org` in `cycle` (empty when nothing was
    /// registered below it).
    pub fn counters(&self, cycle: CycleId, org: OrgId) -> Option<&Counters> {
        self.counters.get(&(cycle, org))
    }

    /// The excellent and good `authority` decided in `cycle`, per quota
    /// group.
    pub fn decided_by(
        &self,
        cycle: CycleId,
        authority: OrgId,
    ) -> Option<&std::collections::BTreeMap<String, GroupCounts>> {
        self.authorities.get(&(cycle, authority))
    }

    /// The dossiers registered at `org` itself (members, or the collective
    /// of the org), in registration order (empty when none were).
    pub fn own_dossiers(&self, cycle: CycleId, org: OrgId) -> Arc<Vec<DossierId>> {
        self.units.get(&(cycle, org)).unwrap_or_default()
    }

    /// Calls `visit` with every dossier of `cycle` registered in `top`'s
    /// subtree — every dossier whose org's [`ProgressModel::path`] holds
    /// `top` — read through the units' lists, never by scanning every
    /// dossier: `top`'s own dossiers in registration order, then those of
    /// the orgs merged into it (each with its whole subtree), then each
    /// current child's subtree by code.
    ///
    /// A merged org's path is that of the org it joined, so a merged `top`
    /// has none. (An org registered before its parent was is not among the
    /// parent's children, so its dossiers are not reached from above it.)
    pub fn subtree_dossiers(
        &self,
        cycle: CycleId,
        top: OrgId,
        mut visit: impl FnMut(DossierId, &DossierRecord),
    ) {
        if self.orgs.get(top).is_some_and(|o| o.merged_into.is_some()) {
            return;
        }
        let mut seen = HashSet::new();
        self.visit_subtree(cycle, top, &mut seen, &mut visit);
    }

    fn visit_subtree(
        &self,
        cycle: CycleId,
        org: OrgId,
        seen: &mut HashSet<OrgId>,
        visit: &mut impl FnMut(DossierId, &DossierRecord),
    ) {
        // `seen` guards against a corrupt tree with a loop.
        if !seen.insert(org) {
            return;
        }
        for dossier in self.own_dossiers(cycle, org).iter() {
            if let Some(d) = self.dossiers.get(dossier) {
                visit(*dossier, &d);
            }
        }
        for merged in self.merged_into(org) {
            // Only an org the tree shows merged here counts here.
            if self
                .orgs
                .get(*merged)
                .is_some_and(|m| m.merged_into == Some(org))
            {
                self.visit_subtree(cycle, *merged, seen, visit);
            }
        }
        let Some(node) = self.orgs.get(org) else {
            return;
        };
        for child in crate::queries::children(self, node) {
            self.visit_subtree(cycle, child.id, seen, visit);
        }
    }

    /// The orgs merged into `org`.
    pub fn merged_into(&self, org: OrgId) -> &[OrgId] {
        self.merged_from
            .get(&org)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether approval announced `org` complete in `cycle` (or, for the
    /// cycle's root, the cycle complete).
    pub fn unit_completed(&self, cycle: CycleId, org: OrgId) -> bool {
        self.completed.contains(&(cycle, org))
            || self
                .cycles
                .get(&cycle)
                .is_some_and(|c| c.completed_at.is_some() && c.opened.root == org)
    }

    /// The number of the decision document of `d`'s grade in force, once
    /// known (from the decision, or from a grade that carried it).
    pub fn decision_number(&self, d: &DossierRecord) -> Option<&str> {
        d.decision
            .and_then(|id| self.decisions.get(&id))
            .map(String::as_str)
    }

    /// `org` and its ancestors up to the root, nearest first; a merged org
    /// stands for the org it was merged into.
    pub fn path(&self, org: OrgId) -> Vec<OrgId> {
        let mut out = Vec::new();
        let mut cur = Some(org);
        // Bounded by the tree's size (plus merge hops), so a corrupt loop
        // cannot hang the fold.
        for _ in 0..=(2 * self.orgs.len() + 1) {
            let Some(c) = cur else { break };
            let Some(node) = self.orgs.get(c) else {
                // Unknown org: count it where it is, alone.
                if out.is_empty() {
                    out.push(c);
                }
                break;
            };
            if let Some(into) = node.merged_into {
                cur = Some(into);
                continue;
            }
            if out.contains(&c) {
                break;
            }
            out.push(c);
            cur = node.parent;
        }
        out
    }

    fn touch(&mut self, cycle: CycleId) {
        self.cycle_positions.insert(cycle, self.position);
    }

    fn rule(&self, cycle: CycleId) -> QuotaRule {
        self.cycles
            .get(&cycle)
            .map(|c| c.rule)
            .unwrap_or(QuotaRule {
                ratio_bp: ratio_bp(0.2),
                rounding: Default::default(),
            })
    }

    fn register(&mut self, e: SubjectRegistered) {
        let dossier = e.dossier;
        if self.dossiers.contains_key(&dossier) {
            // A second registration of the same dossier changes nothing.
            return;
        }
        let (cycle, org) = (e.cycle, e.org);
        let quota_group = match self.groups.get(e.quota_group.as_str()) {
            Some(g) => g.clone(),
            None => {
                let g: Arc<str> = Arc::from(e.quota_group.as_str());
                self.groups.insert(g.clone());
                g
            }
        };
        let record = DossierRecord {
            state: e.state,
            registered: Registration {
                subject: e.subject,
                cycle: e.cycle,
                org: e.org,
                deciding_org: e.deciding_org,
                kind: e.kind,
                name: e.name.into_boxed_str(),
                category: e.category,
                leader: e.leader,
                status: e.status,
                quota_group,
            },
            grade: None,
            previous_grade: None,
            decision: None,
            regrade_reason: None,
            returns: 0,
            ready: false,
        };
        let c = record.contribution();
        self.dossiers.insert(dossier, record);
        self.units
            .upsert((cycle, org), Vec::new, |list| list.push(dossier));
        self.shift(cycle, org, &c, 1);
        self.touch(cycle);
        if let Some(parked) = self.orphans.remove(&dossier) {
            for event in &parked {
                self.apply_to_dossier(event);
            }
        }
    }

    /// Folds one event of a registered dossier's life.
    fn apply_to_dossier(&mut self, event: &StoredEvent) {
        let kind = event.kind.as_str();
        if kind == SelfReviewSubmitted::KIND {
            if let Some(e) = parse::<SelfReviewSubmitted>(event) {
                self.update(e.dossier, |d| d.state = DossierState::Submitted);
            }
        } else if kind == MeetingRecorded::KIND {
            if let Some(e) = parse::<MeetingRecorded>(event) {
                self.update(e.dossier, |d| d.state = DossierState::Reviewed);
            }
        } else if kind == DossierAppraised::KIND {
            if let Some(e) = parse::<DossierAppraised>(event) {
                self.update(e.dossier, |d| d.state = DossierState::Appraised);
            }
        } else if kind == DossierReturned::KIND {
            if let Some(e) = parse::<DossierReturned>(event) {
                self.update(e.dossier, |d| {
                    d.state = DossierState::Returned;
                    d.returns += 1;
                });
            }
        } else if kind == GradeDecided::KIND {
            if let Some(e) = parse::<GradeDecided>(event) {
                if let Some(number) = e.number {
                    self.decisions.entry(e.decision).or_insert(number);
                }
                self.update(e.dossier, |d| {
                    d.state = DossierState::Decided;
                    d.grade = Some(e.grade);
                    d.decision = Some(e.decision);
                });
            }
        } else if kind == GradeRevised::KIND {
            if let Some(e) = parse::<GradeRevised>(event) {
                if let Some(number) = e.number {
                    self.decisions.entry(e.decision).or_insert(number);
                }
                self.update(e.dossier, |d| {
                    d.state = DossierState::Regraded;
                    d.previous_grade = Some(e.previous_grade);
                    d.grade = Some(e.grade);
                    d.decision = Some(e.decision);
                    d.regrade_reason = Some(e.reason.into_boxed_str());
                });
            }
        } else if kind == CollectiveDossierOpened::KIND {
            if let Some(e) = parse::<CollectiveDossierOpened>(event) {
                self.update(e.dossier, |d| d.ready = true);
            }
        }
    }

    /// Changes one dossier and shifts the difference of its contribution
    /// along its ancestor path.
    fn update(&mut self, dossier: DossierId, change: impl FnOnce(&mut DossierRecord)) {
        let changed = self.dossiers.update(&dossier, |d| {
            let before = d.contribution();
            change(d);
            let after = d.contribution();
            (before, after, d.registered.cycle, d.registered.org)
        });
        let Some((before, after, cycle, org)) = changed else {
            return;
        };
        self.touch(cycle);
        if before != after {
            self.shift(cycle, org, &before, -1);
            self.shift(cycle, org, &after, 1);
        }
    }

    /// Adds or removes one dossier's contribution on every org of the path
    /// of `org`, and in its authority's tally.
    fn shift(&mut self, cycle: CycleId, org: OrgId, c: &Contribution, sign: i64) {
        let rule = self.rule(cycle);
        for node in self.path(org) {
            self.counters
                .entry((cycle, node))
                .or_default()
                .apply(c, sign, rule);
        }
        let slot = match c.grade {
            Some(Grade::Excellent) | Some(Grade::Good) => self
                .authorities
                .entry((cycle, c.authority))
                .or_default()
                .entry(c.group.to_string())
                .or_default(),
            _ => return,
        };
        let n = if c.grade == Some(Grade::Excellent) {
            &mut slot.excellent
        } else {
            &mut slot.good
        };
        *n = n.saturating_add_signed(sign);
    }

    /// Folds a move or a merge: the tree changes, and the counters of each
    /// moved subtree leave its old ancestors and join its new ones.
    fn reshape(&mut self, event: &StoredEvent) {
        // (org, its counters' old homes): the ancestors above it before.
        let mut moved: Vec<(OrgId, Vec<OrgId>)> = Vec::new();
        let mut merged: Vec<(OrgId, Vec<OrgId>, OrgId)> = Vec::new();
        if event.kind == OrgMoved::KIND {
            if let Some(e) = parse::<OrgMoved>(event) {
                moved.push((e.org, self.ancestors(e.org)));
            }
        } else if let Some(e) = parse::<OrgsMerged>(event) {
            for child in &e.children_moved {
                moved.push((*child, self.ancestors(*child)));
            }
            for from in &e.from {
                let mut homes = vec![*from];
                homes.extend(self.ancestors(*from));
                merged.push((*from, homes, e.into));
                self.merged_from.entry(e.into).or_default().push(*from);
            }
        }
        self.orgs.apply(&event.kind, &event.payload);
        let cycles: Vec<CycleId> = self.cycles.keys().copied().collect();
        for cycle in cycles {
            let rule = self.rule(cycle);
            for (org, old) in &moved {
                let Some(c) = self.counters.get(&(cycle, *org)).cloned() else {
                    continue;
                };
                let new = self.ancestors(*org);
                self.transfer(cycle, &c, old, &new, rule);
            }
            // What is left at a merged org (its own dossiers, and children
            // the merge did not list) now counts at the org it joined.
            for (from, old, into) in &merged {
                let Some(c) = self.counters.get(&(cycle, *from)).cloned() else {
                    continue;
                };
                let new = self.path(*into);
                self.transfer(cycle, &c, old, &new, rule);
            }
            self.touch(cycle);
        }
    }

    fn ancestors(&self, org: OrgId) -> Vec<OrgId> {
        let parent = self.orgs.get(org).and_then(|o| o.parent);
        parent.map(|p| self.path(p)).unwrap_or_default()
    }

    fn transfer(
        &mut self,
        cycle: CycleId,
        c: &Counters,
        from: &[OrgId],
        to: &[OrgId],
        rule: QuotaRule,
    ) {
        for node in from {
            self.counters
                .entry((cycle, *node))
                .or_default()
                .merge(c, -1, rule);
        }
        for node in to {
            self.counters
                .entry((cycle, *node))
                .or_default()
                .merge(c, 1, rule);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use gradeflow_proto::events::RecordRef;
    use gradeflow_proto::{Actor, CorrelationId, EventId, Metadata, Role};

    use super::*;

    fn feed<E: Event>(model: &mut ProgressModel, position: i64, event: &E) {
        model.apply(&stored(position, event));
    }

    /// `event` as the store would hand it out at `position`, recorded now
    /// by the system actor.
    pub(crate) fn stored<E: Event>(position: i64, event: &E) -> StoredEvent {
        StoredEvent {
            position,
            stream: "test".into(),
            version: 1,
            event_id: EventId::new(),
            kind: E::KIND.into(),
            payload: serde_json::to_value(event).unwrap(),
            payload_text: String::new(),
            metadata: Metadata {
                actor: Actor {
                    sub: "central".into(),
                    role: Role::System,
                    org: OrgId(uuid::Uuid::nil()),
                },
                correlation_id: CorrelationId::new(),
                causation_id: None,
                traceparent: None,
                service: "test".into(),
                province: None,
            },
            recorded_at: Utc::now(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn registered(cycle: CycleId, org: OrgId, group: &str) -> SubjectRegistered {
        SubjectRegistered {
            subject: SubjectId::new(),
            dossier: DossierId::new(),
            cycle,
            org,
            deciding_org: org,
            kind: SubjectKind::Individual,
            name: "Nguyễn Văn A".into(),
            category: Category::Member2B,
            leader: false,
            status: SubjectStatus::Active,
            quota_group: group.into(),
            state: DossierState::Open,
        }
    }

    #[test]
    fn dossiers_share_their_group_name_and_a_decision_number_is_kept_once() {
        let mut model = ProgressModel::default();
        let (cycle, org) = (CycleId::new(), OrgId::new());
        let a = registered(cycle, org, "individuals");
        let b = registered(cycle, org, &String::from("individuals"));
        let c = registered(cycle, org, "leaders");
        for (i, e) in [&a, &b, &c].into_iter().enumerate() {
            feed(&mut model, i as i64 + 1, e);
        }
        let group = |id: DossierId| {
            model
                .dossiers
                .get(&id)
                .unwrap()
                .registered
                .quota_group
                .clone()
        };
        assert!(Arc::ptr_eq(&group(a.dossier), &group(b.dossier)));
        assert_eq!(&*group(c.dossier), "leaders");
        assert_eq!(
            &*model.dossiers.get(&a.dossier).unwrap().registered.name,
            "Nguyễn Văn A"
        );

        // One decision grading two dossiers: its number is kept once and
        // both read it; the grade's own number comes first.
        let decision = DecisionId::new();
        for (i, e) in [&a, &b].into_iter().enumerate() {
            feed(
                &mut model,
                10 + i as i64,
                &GradeDecided {
                    decision,
                    dossier: e.dossier,
                    subject: e.subject,
                    cycle,
                    authority: org,
                    org,
                    grade: Grade::Good,
                    quota_group: "individuals".into(),
                    override_reason: None,
                    record: RecordRef {
                        seq: i as u64 + 1,
                        hash: String::new(),
                        signature: String::new(),
                        key_id: String::new(),
                        prev_hash: None,
                        at: None,
                    },
                    number: (i == 0).then(|| "7-QĐ/ĐU".to_owned()),
                },
            );
        }
        assert_eq!(model.decisions.len(), 1);
        for id in [a.dossier, b.dossier] {
            let d = model.dossiers.get(&id).unwrap();
            assert_eq!(model.decision_number(&d), Some("7-QĐ/ĐU"));
        }
        let d = model.dossiers.get(&c.dossier).unwrap();
        assert_eq!(model.decision_number(&d), None);
    }
}
