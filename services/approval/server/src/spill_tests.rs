//! The model answers the same however little of it stays in memory. The
//! same events are folded into a model whose maps keep everything in memory
//! and into one that keeps 8 values per map (nearly everything goes to its
//! scratch file and is read back). Both must give the same records, units,
//! worklists, tallies, readiness, completions, reactions and decisions, and
//! the worklist's index must give what scanning every dossier gave before
//! it existed.
//!
//! The same comparison shows that events of a dossier's life recorded
//! before its registration are parked and applied right after it: folded
//! in that store order (into a model of either size, and again from
//! scratch) they give the model that folding them right after the
//! registration gives.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{TimeZone, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::commands::{BatchGrade, DecideBatch, DecisionKind};
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleOpened, DossierAppraised, DossierReturned, Event, GradeDecided,
    GradeRevised, OrgRegistered, RecordRef, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{
    Actor, Category, CorrelationId, CycleId, CycleKind, DecisionId, DossierId, DossierState,
    Envelope, EventId, Facts, Grade, Metadata, OrgId, QuotaSettings, Role, RulebookId, Score,
    SubjectId, SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
};
use gradeflow_service::{Emit, Model};
use gradeflow_testkit::registered_late;
use serde_json::{json, Value};

use crate::decide::{self, BatchInput};
use crate::keys::KeyError;
use crate::model::{ApprovalModel, DueEntry, Pending};
use crate::queries::{quota_meters, worklist, worklist_entry, Worklist, WorklistQuery};
use crate::record::DECISION_LOG_STREAM;
use crate::SERVICE;

/// A float the JSON parser reads back from its shortest text one unit in
/// the last place off (`…826e-75` comes back `…825e-75`): a record holding
/// it must still come back from the scratch file equal.
const AWKWARD: f64 = 1.0715660391465826e-75;

/// Two models fed the same events: `big` keeps everything in memory,
/// `small` 8 values per map.
struct World {
    big: ApprovalModel,
    small: ApprovalModel,
    /// Every event so far, for the stream versions.
    position: i64,
    versions: HashMap<String, u64>,
    tw: OrgId,
    provinces: Vec<OrgId>,
    districts: Vec<OrgId>,
    cells: Vec<OrgId>,
    cycles: Vec<CycleId>,
    /// Every dossier registered, in order.
    ids: Vec<DossierId>,
    /// Each dossier's latest registration.
    registered: HashMap<DossierId, SubjectRegistered>,
    /// Each dossier's current decision-log seq, once graded.
    current: HashMap<DossierId, u64>,
    /// Every event folded, in store order.
    log: Vec<StoredEvent>,
}

fn authority(org: OrgId) -> Actor {
    Actor {
        sub: format!("authority-{org}"),
        role: Role::Authority,
        org,
    }
}

impl World {
    /// A world of the central org with one cell under it, and one cycle
    /// opened: the cell and the cycle.
    fn one_cell() -> (World, OrgId, CycleId) {
        let mut w = World::new();
        let tw = w.tw;
        w.org(tw, "central", None);
        let cell = OrgId::new();
        w.org(cell, "cell", Some(tw));
        w.cells.push(cell);
        let cycle = w.open_cycle(2026);
        (w, cell, cycle)
    }

    /// Opens a card-tier cycle of `year` over the whole tree; its id.
    fn open_cycle(&mut self, year: i32) -> CycleId {
        let cycle = CycleId::new();
        self.cycles.push(cycle);
        let root = self.tw;
        self.push(
            cycle.stream(),
            &CycleOpened {
                cycle,
                year,
                kind: CycleKind::Annual,
                rulebook: RulebookId::Qd366_2025,
                tiers: Tiers::card(),
                deadlines: BTreeMap::new(),
                quota: QuotaSettings::default(),
                root,
            },
        );
        cycle
    }

    fn new() -> World {
        World {
            big: ApprovalModel::with_cache(1 << 20),
            small: ApprovalModel::with_cache(8),
            position: 0,
            versions: HashMap::new(),
            tw: OrgId::new(),
            provinces: Vec::new(),
            districts: Vec::new(),
            cells: Vec::new(),
            cycles: Vec::new(),
            ids: Vec::new(),
            registered: HashMap::new(),
            current: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// This world's orgs, cycles and dossiers with `big` and `small` as
    /// its models (folded from events of this world).
    fn with_models(&self, big: ApprovalModel, small: ApprovalModel) -> World {
        World {
            big,
            small,
            position: self.position,
            versions: self.versions.clone(),
            tw: self.tw,
            provinces: self.provinces.clone(),
            districts: self.districts.clone(),
            cells: self.cells.clone(),
            cycles: self.cycles.clone(),
            ids: self.ids.clone(),
            registered: self.registered.clone(),
            current: self.current.clone(),
            log: Vec::new(),
        }
    }

    fn orgs(&self) -> Vec<OrgId> {
        let mut all = vec![self.tw];
        all.extend(&self.provinces);
        all.extend(&self.districts);
        all.extend(&self.cells);
        all
    }

    /// Appends one event to the store both models fold.
    fn push_raw(
        &mut self,
        stream: String,
        kind: &str,
        payload: Value,
        service: &str,
        traceparent: Option<&str>,
    ) {
        let version = self.versions.entry(stream.clone()).or_default();
        *version += 1;
        self.position += 1;
        let event = StoredEvent {
            position: self.position,
            stream,
            version: *version,
            event_id: EventId::new(),
            kind: kind.to_owned(),
            payload_text: payload.to_string(),
            payload,
            metadata: Metadata {
                actor: Actor {
                    sub: "gradeflow".into(),
                    role: Role::System,
                    org: OrgId(uuid::Uuid::nil()),
                },
                correlation_id: CorrelationId::new(),
                causation_id: None,
                traceparent: traceparent.map(str::to_owned),
                service: service.to_owned(),
                province: None,
            },
            recorded_at: Utc::now(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        self.big.apply(&event);
        self.small.apply(&event);
        self.log.push(event);
    }

    fn push<E: Event>(&mut self, stream: String, event: &E) {
        self.push_raw(
            stream,
            E::KIND,
            serde_json::to_value(event).unwrap(),
            "submission",
            None,
        );
    }

    /// Appends what a decision emitted, as the engine would.
    fn emitted(&mut self, events: &[Emit]) {
        for e in events {
            self.push_raw(
                e.stream.clone(),
                &e.kind,
                e.payload.clone(),
                SERVICE,
                e.traceparent.as_deref(),
            );
        }
    }

    fn org(&mut self, org: OrgId, tier: &str, parent: Option<OrgId>) {
        let code = format!("{tier}-{org}");
        self.push(
            "registry".into(),
            &OrgRegistered {
                org,
                code: code.clone(),
                name: code,
                tier: Tier::new(tier),
                parent,
                province: parent.map(|_| "P".to_owned()),
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn subject(
        &mut self,
        cycle: CycleId,
        kind: SubjectKind,
        org: OrgId,
        deciding_org: OrgId,
        status: SubjectStatus,
        quota_group: &str,
        leader: bool,
    ) -> DossierId {
        let dossier = DossierId::new();
        self.register(
            dossier,
            cycle,
            kind,
            org,
            deciding_org,
            status,
            quota_group,
            leader,
        );
        self.ids.push(dossier);
        dossier
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        dossier: DossierId,
        cycle: CycleId,
        kind: SubjectKind,
        org: OrgId,
        deciding_org: OrgId,
        status: SubjectStatus,
        quota_group: &str,
        leader: bool,
    ) {
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle,
            org,
            deciding_org,
            kind,
            name: format!("subject {dossier}"),
            category: match kind {
                SubjectKind::Individual => Category::Member2B,
                SubjectKind::Collective => Category::Collective01,
            },
            leader,
            status,
            quota_group: quota_group.into(),
            state: if status.is_reviewed() {
                DossierState::Open
            } else {
                DossierState::NotReviewed
            },
        };
        self.push(dossier.stream(), &e);
        self.registered.insert(dossier, e);
    }

    fn submit(&mut self, dossier: DossierId, resubmission: bool) {
        self.push(
            dossier.stream(),
            &SelfReviewSubmitted {
                dossier,
                score: Some(Score {
                    general: 28.0,
                    tasks: 65.0 - AWKWARD * 1e60,
                }),
                proposed_grade: Grade::Good,
                tasks: TaskCounts {
                    total: 10,
                    on_time: 10,
                    exceeded: 3,
                    late: 0,
                    not_done: 0,
                },
                shortcomings_fixed: true,
                report: "Hoàn thành tốt nhiệm vụ".into(),
                resubmission,
            },
        );
    }

    fn appraise(&mut self, dossier: DossierId, awkward: bool) {
        self.submit(dossier, false);
        let facts = if awkward {
            Facts {
                low_confidence_ratio: Some(AWKWARD),
                subordinates_not_completed_ratio: Some(AWKWARD * 3.0),
                ..Facts::default()
            }
        } else {
            Facts::default()
        };
        self.push(
            dossier.stream(),
            &DossierAppraised {
                dossier,
                recommended_grade: Grade::Good,
                facts,
                notes: String::new(),
                warnings: Vec::new(),
            },
        );
    }

    fn record(&self) -> RecordRef {
        let seq = self.versions.get(DECISION_LOG_STREAM).copied().unwrap_or(0) + 1;
        RecordRef {
            seq,
            hash: format!("{seq:064x}"),
            signature: String::new(),
            key_id: "test".into(),
            prev_hash: None,
            at: None,
        }
    }

    /// A first grade, recorded as the approval service records it.
    fn grade(&mut self, dossier: DossierId, grade: Grade) {
        let r = self.registered[&dossier].clone();
        let record = self.record();
        self.current.insert(dossier, record.seq);
        let e = GradeDecided {
            decision: DecisionId::new(),
            dossier,
            subject: r.subject,
            cycle: r.cycle,
            authority: r.deciding_org,
            org: r.org,
            grade,
            quota_group: r.quota_group,
            override_reason: None,
            record,
            number: Some("1-QĐ/HU".into()),
        };
        self.push_raw(
            DECISION_LOG_STREAM.into(),
            GradeDecided::KIND,
            serde_json::to_value(e).unwrap(),
            SERVICE,
            None,
        );
    }

    fn regrade(&mut self, dossier: DossierId, previous_grade: Grade, grade: Grade) {
        let r = self.registered[&dossier].clone();
        let record = self.record();
        let supersedes = self.current.insert(dossier, record.seq).unwrap();
        let e = GradeRevised {
            decision: DecisionId::new(),
            dossier,
            subject: r.subject,
            cycle: r.cycle,
            authority: r.deciding_org,
            previous_grade,
            grade,
            supersedes,
            reason: "Khiếu nại".into(),
            record,
            number: Some("2-QĐ/HU".into()),
            override_reason: None,
        };
        self.push_raw(
            DECISION_LOG_STREAM.into(),
            GradeRevised::KIND,
            serde_json::to_value(e).unwrap(),
            SERVICE,
            None,
        );
    }

    /// TW → 2 provinces → 4 districts → 12 cells; cycle A over all of it
    /// (10 members a cell, every fourth a leader decided by the province,
    /// a collective per org), cycle B over half the cells (5 members a
    /// cell, their collectives and the districts'). Then every state a
    /// dossier can be in, in both cycles: registered, submitted, appraised,
    /// returned, re-filed, registered again elsewhere, decided, re-graded,
    /// not reviewed; cells 0 and 1 of cycle A nearly all decided.
    fn given() -> World {
        let mut w = World::new();
        let tw = w.tw;
        w.org(tw, "central", None);
        for _ in 0..2 {
            let province = OrgId::new();
            w.org(province, "province", Some(tw));
            w.provinces.push(province);
            for _ in 0..2 {
                let district = OrgId::new();
                w.org(district, "district", Some(province));
                w.districts.push(district);
                for _ in 0..3 {
                    let cell = OrgId::new();
                    w.org(cell, "cell", Some(district));
                    w.cells.push(cell);
                }
            }
        }
        for year in [2026, 2027] {
            w.open_cycle(year);
        }
        let (a, b) = (w.cycles[0], w.cycles[1]);
        let parent = |w: &World, org: OrgId| -> OrgId {
            if let Some(i) = w.cells.iter().position(|c| *c == org) {
                w.districts[i / 3]
            } else if let Some(i) = w.districts.iter().position(|d| *d == org) {
                w.provinces[i / 2]
            } else {
                w.tw
            }
        };
        let mut members: Vec<(CycleId, usize, DossierId)> = Vec::new();
        for (cycle, cells, per_cell) in [(a, 12, 10), (b, 6, 5)] {
            for c in 0..cells {
                let cell = w.cells[c];
                let district = w.districts[c / 3];
                let province = w.provinces[c / 6];
                for i in 0..per_cell {
                    let leader = i % 4 == 3;
                    let status = if i == 9 {
                        SubjectStatus::Suspended
                    } else {
                        SubjectStatus::Active
                    };
                    let d = w.subject(
                        cycle,
                        SubjectKind::Individual,
                        cell,
                        if leader { province } else { district },
                        status,
                        if leader { "leaders" } else { "individuals" },
                        leader,
                    );
                    members.push((cycle, c, d));
                }
            }
        }
        let mut collectives: Vec<(CycleId, OrgId, DossierId)> = Vec::new();
        for org in w.orgs() {
            let decider = parent(&w, org);
            let d = w.subject(
                a,
                SubjectKind::Collective,
                org,
                decider,
                SubjectStatus::Active,
                "collectives",
                false,
            );
            collectives.push((a, org, d));
        }
        let in_b: Vec<OrgId> = w.cells[..6]
            .iter()
            .chain(&w.districts[..2])
            .copied()
            .collect();
        for org in in_b {
            let decider = parent(&w, org);
            let d = w.subject(
                b,
                SubjectKind::Collective,
                org,
                decider,
                SubjectStatus::Active,
                "collectives",
                false,
            );
            collectives.push((b, org, d));
        }

        for (k, (cycle, cell, d)) in members.iter().copied().enumerate() {
            if w.registered[&d].status == SubjectStatus::Suspended {
                continue;
            }
            if cycle == a && cell < 2 {
                // Cells 0 and 1: all appraised and graded, but for one
                // member of cell 1 left appraised.
                w.appraise(d, k % 2 == 0);
                if !(cell == 1 && k % 10 == 4) {
                    w.grade(d, Grade::Good);
                }
                continue;
            }
            match k % 6 {
                0 => {}
                1 => w.submit(d, false),
                2 => {
                    w.appraise(d, false);
                    w.push(
                        d.stream(),
                        &DossierReturned {
                            dossier: d,
                            reason: "Bổ sung".into(),
                        },
                    );
                }
                _ => {
                    w.appraise(d, k % 6 == 4);
                    if k % 12 == 3 {
                        w.grade(d, Grade::Good);
                        if k % 24 == 3 {
                            w.regrade(d, Grade::Good, Grade::Completed);
                        }
                    } else if k % 18 == 5 {
                        // Registered again, now decided by the province
                        // in another quota group; half appraised again.
                        let r = w.registered[&d].clone();
                        let province = parent(&w, parent(&w, r.org));
                        w.register(
                            d,
                            r.cycle,
                            r.kind,
                            r.org,
                            province,
                            SubjectStatus::Active,
                            "individuals-2",
                            r.leader,
                        );
                        if k % 36 == 5 {
                            w.appraise(d, true);
                        }
                    } else if k % 30 == 4 {
                        // Re-filed: waits for a new appraisal.
                        w.submit(d, true);
                    }
                }
            }
        }
        for (n, (cycle, org, d)) in collectives.iter().copied().enumerate() {
            if n % 5 == 4 {
                continue;
            }
            w.push(
                d.stream(),
                &CollectiveDossierOpened {
                    cycle,
                    dossier: d,
                    org,
                },
            );
            w.appraise(d, n % 3 == 0);
        }
        w
    }

    /// The worklist as it was answered before the index existed: every
    /// dossier scanned (kept here as the reference).
    fn reference_worklist(&self, query: &WorklistQuery, actor: &Actor) -> Worklist {
        let model = &self.big;
        let scope = query.org.unwrap_or(actor.org);
        let limit = query.limit.unwrap_or(500).clamp(1, 5_000);
        let records: Vec<_> = self
            .ids
            .iter()
            .map(|id| (*id, model.dossiers.get(id).unwrap()))
            .collect();
        let mut due: Vec<_> = records
            .iter()
            .filter(|(_, d)| d.state == DossierState::Appraised)
            .filter(|(_, d)| query.cycle.is_none_or(|c| c == d.cycle))
            .filter(|(_, d)| model.tree.is_within(d.deciding_org, scope))
            .collect();
        due.sort_by_key(|(id, d)| {
            (
                d.deciding_org,
                d.org,
                d.kind == SubjectKind::Collective,
                *id,
            )
        });
        let total = due.len();
        let none = Pending::default();
        let mut meters: BTreeSet<(CycleId, OrgId, String)> = due
            .iter()
            .map(|(_, d)| (d.cycle, d.deciding_org, d.quota_group.clone()))
            .collect();
        for ((cycle, authority), groups) in &model.counts {
            if query.cycle.is_none_or(|q| q == *cycle) && model.tree.is_within(*authority, scope) {
                meters.extend(groups.keys().map(|g| (*cycle, *authority, g.clone())));
            }
        }
        let registrations = due
            .iter()
            .take(limit)
            .map(|(id, d)| (*id, d.registered))
            .collect();
        let entries: Vec<Value> = due
            .iter()
            .take(limit)
            .map(|(id, d)| worklist_entry(model, *id, d, &none))
            .collect();
        let quota = quota_meters(model, meters);
        Worklist {
            answer: json!({"dossiers": entries, "total": total, "quota": quota}),
            registrations,
        }
    }

    /// The index of waiting dossiers as a scan of every record gives it.
    #[allow(clippy::type_complexity)]
    fn scanned_index(
        &self,
    ) -> (
        BTreeMap<(CycleId, OrgId), BTreeSet<DueEntry>>,
        BTreeMap<(CycleId, OrgId), BTreeMap<String, usize>>,
    ) {
        let mut sets: BTreeMap<(CycleId, OrgId), BTreeSet<DueEntry>> = BTreeMap::new();
        let mut groups: BTreeMap<(CycleId, OrgId), BTreeMap<String, usize>> = BTreeMap::new();
        for id in &self.ids {
            let d = self.big.dossiers.get(id).unwrap();
            if d.state != DossierState::Appraised {
                continue;
            }
            let key = (d.cycle, d.deciding_org);
            sets.entry(key)
                .or_default()
                .insert((d.org, d.kind == SubjectKind::Collective, *id));
            *groups
                .entry(key)
                .or_default()
                .entry(d.quota_group.clone())
                .or_default() += 1;
        }
        (sets, groups)
    }

    /// Everything both models answer, compared; the worklists also with the
    /// answer of a scan of every dossier. How many worklist entries were
    /// compared.
    fn assert_same(&self) -> usize {
        let (big, small) = (&self.big, &self.small);
        let orgs = self.orgs();
        for id in &self.ids {
            let record = big.dossiers.get(id);
            assert!(record.is_some(), "{id}");
            assert_eq!(small.dossiers.get(id).as_deref(), record.as_deref(), "{id}");
        }
        let (sets, groups) = self.scanned_index();
        let indexed: BTreeMap<_, _> = big
            .due_groups
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        assert_eq!(indexed, groups);
        assert_eq!(small.due_groups, big.due_groups);
        assert_eq!(small.counts, big.counts);
        assert_eq!(small.graded, big.graded);
        assert_eq!(small.participating, big.participating);
        assert_eq!(small.completed_units, big.completed_units);
        assert_eq!(small.completed_cycles, big.completed_cycles);
        for cycle in &self.cycles {
            for org in &orgs {
                let key = (*cycle, *org);
                assert_eq!(small.units.get(&key), big.units.get(&key));
                assert_eq!(
                    big.due.get(&key).as_deref(),
                    sets.get(&key),
                    "the index of {key:?}"
                );
                assert_eq!(small.due.get(&key), big.due.get(&key));
                assert_eq!(
                    small.waiting_for(*cycle, *org, &Pending::default()),
                    big.waiting_for(*cycle, *org, &Pending::default())
                );
            }
            // Completions as if every appraised dossier were settled.
            let pending = Pending {
                settled: self
                    .ids
                    .iter()
                    .filter(|id| {
                        big.dossiers
                            .get(id)
                            .is_some_and(|d| d.state == DossierState::Appraised)
                    })
                    .copied()
                    .collect(),
                registered: Vec::new(),
            };
            assert_eq!(
                small.completions(*cycle, &self.cells, &pending),
                big.completions(*cycle, &self.cells, &pending)
            );
        }
        let actor = authority(self.tw);
        let mut seen_entries = 0;
        for scope in &orgs {
            for cycle in std::iter::once(None).chain(self.cycles.iter().copied().map(Some)) {
                for limit in [None, Some(1), Some(4), Some(25), Some(5_000)] {
                    let query = WorklistQuery {
                        cycle,
                        org: Some(*scope),
                        limit,
                    };
                    let expected = self.reference_worklist(&query, &actor);
                    // Compared whole; only the query and totals shown.
                    let shown = |w: &Worklist| (w.answer["total"].clone(), w.registrations.len());
                    let answer = worklist(big, &actor, &query).unwrap();
                    assert!(
                        answer == expected,
                        "{query:?}: {:?} against the scan's {:?}",
                        shown(&answer),
                        shown(&expected)
                    );
                    let spilled = worklist(small, &actor, &query).unwrap();
                    assert!(
                        spilled == expected,
                        "{query:?}: {:?} from the spilled model",
                        shown(&spilled)
                    );
                    seen_entries += expected.registrations.len();
                }
            }
        }
        // Out of scope: refused alike.
        let outsider = authority(self.cells[0]);
        let query = WorklistQuery {
            org: Some(self.tw),
            ..WorklistQuery::default()
        };
        assert_eq!(
            worklist(small, &outsider, &query).unwrap_err(),
            worklist(big, &outsider, &query).unwrap_err()
        );
        seen_entries
    }
}

fn batch(
    cycle: CycleId,
    authority: OrgId,
    kind: DecisionKind,
    grades: Vec<BatchGrade>,
) -> DecideBatch {
    DecideBatch {
        cycle,
        authority,
        number: "12-QĐ/HU".into(),
        kind,
        grades,
        quota_exception: None,
    }
}

fn good(dossier: DossierId) -> BatchGrade {
    BatchGrade {
        dossier,
        grade: Grade::Good,
        supersedes: None,
        reason: None,
        override_reason: None,
    }
}

/// Decides `command` on both models with the same id, time and signature:
/// the answers must be the same; the accepted events go to both.
fn decide_on_both(w: &mut World, command: &DecideBatch) -> Result<Vec<Emit>, String> {
    let actor = authority(command.authority);
    let input = BatchInput {
        command,
        actor: &actor,
        decision: DecisionId(uuid::Uuid::from_u128(7)),
        at: Utc.with_ymd_and_hms(2026, 12, 10, 8, 30, 0).unwrap(),
        key_id: "test-key",
        sign: |message: &[u8]| Ok::<_, KeyError>(hex::encode(message)),
    };
    let big = decide::decide(&w.big, &input);
    let small = decide::decide(&w.small, &input);
    assert_eq!(format!("{small:?}"), format!("{big:?}"));
    match big {
        Ok(decision) => {
            w.emitted(&decision.events);
            Ok(decision.events)
        }
        Err(rejection) => Err(rejection.code),
    }
}

#[test]
fn a_model_that_keeps_eight_values_per_map_answers_as_one_that_keeps_everything() {
    let mut w = World::given();
    // The small model really lives in its scratch file.
    let (spilled, _) = w.small.dossiers.traffic();
    assert!(spilled as usize > w.ids.len(), "{:?}", w.small.dossiers);
    assert!(w.small.dossiers.in_memory() <= 8);
    assert!(w.small.units.traffic().0 > 0, "{:?}", w.small.units);
    assert!(w.small.due.traffic().0 > 0, "{:?}", w.small.due);
    assert_eq!(w.big.dossiers.traffic(), (0, 0));
    assert_eq!(w.big.due.traffic(), (0, 0));
    // A record holding a float the JSON parser would misread came back
    // whole (the records are compared field by field below too).
    let awkward = w
        .ids
        .iter()
        .find(|id| w.big.dossiers.get(id).unwrap().facts.low_confidence_ratio == Some(AWKWARD))
        .copied()
        .unwrap();
    let back = w.small.dossiers.get(&awkward).unwrap();
    assert_eq!(
        back.facts.low_confidence_ratio.map(f64::to_bits),
        Some(AWKWARD.to_bits())
    );

    assert!(w.assert_same() > 1_000, "the worklists list something");

    // District 0 decides everything it has waiting in cycle A that is
    // ready: cell 1's last member, then cell 0's and cell 1's collectives,
    // which completes both units.
    let (a, d0) = (w.cycles[0], w.districts[0]);
    let waiting: Vec<DueEntry> = w.big.due.get(&(a, d0)).unwrap().iter().copied().collect();
    let members: Vec<BatchGrade> = waiting
        .iter()
        .filter(|(org, collective, _)| !collective && (*org == w.cells[0] || *org == w.cells[1]))
        .map(|(_, _, d)| good(*d))
        .collect();
    assert_eq!(members.len(), 1, "{waiting:?}");
    decide_on_both(&mut w, &batch(a, d0, DecisionKind::Decide, members)).unwrap();
    let collectives: Vec<BatchGrade> = waiting
        .iter()
        .filter(|(org, collective, _)| *collective && (*org == w.cells[0] || *org == w.cells[1]))
        .map(|(_, _, d)| good(*d))
        .collect();
    assert_eq!(collectives.len(), 2, "{waiting:?}");
    let events = decide_on_both(&mut w, &batch(a, d0, DecisionKind::Decide, collectives)).unwrap();
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "unit_completed.v1")
        .map(|e| &e.payload["org"])
        .collect();
    assert_eq!(completed.len(), 2, "{events:?}");
    w.assert_same();

    // A collective of district 1 still waiting for its members: refused
    // alike.
    let d1 = w.districts[1];
    let not_ready = w
        .big
        .due
        .get(&(a, d1))
        .unwrap()
        .iter()
        .find(|(org, collective, _)| {
            *collective && !w.big.waiting_for(a, *org, &Pending::default()).is_empty()
        })
        .map(|(_, _, d)| *d)
        .unwrap();
    assert_eq!(
        decide_on_both(
            &mut w,
            &batch(a, d1, DecisionKind::Decide, vec![good(not_ready)])
        )
        .err(),
        Some("rule_violation".to_owned())
    );

    // A re-grade of a graded member of cell 0.
    let member = w
        .big
        .units
        .get(&(a, w.cells[0]))
        .unwrap()
        .members
        .iter()
        .copied()
        .find(|m| w.big.dossiers.get(m).unwrap().current.is_some())
        .unwrap();
    let current = w
        .big
        .dossiers
        .get(&member)
        .unwrap()
        .current
        .clone()
        .unwrap();
    let (seq, decider) = (current.seq, current.authority);
    let regrade = BatchGrade {
        dossier: member,
        grade: Grade::Completed,
        supersedes: Some(seq),
        reason: Some("Khiếu nại được xem xét lại".into()),
        override_reason: None,
    };
    decide_on_both(
        &mut w,
        &batch(a, decider, DecisionKind::Regrade, vec![regrade]),
    )
    .unwrap();

    // A subject registered as not reviewed, last of its unit: the reaction
    // is the same.
    let envelope = Envelope {
        event_id: EventId::new(),
        kind: SubjectRegistered::KIND.to_owned(),
        stream: "dossier-x".into(),
        version: 1,
        occurred_at: Utc.with_ymd_and_hms(2026, 12, 11, 0, 0, 0).unwrap(),
        actor: authority(w.tw),
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: serde_json::to_value(SubjectRegistered {
            subject: SubjectId::new(),
            dossier: DossierId::new(),
            cycle: a,
            org: w.cells[3],
            deciding_org: w.districts[1],
            kind: SubjectKind::Individual,
            name: "x".into(),
            category: Category::Member2B,
            leader: false,
            status: SubjectStatus::Exempt,
            quota_group: "individuals".into(),
            state: DossierState::NotReviewed,
        })
        .unwrap(),
    };
    assert_eq!(
        format!("{:?}", crate::react(&w.small, &envelope)),
        format!("{:?}", crate::react(&w.big, &envelope))
    );

    w.assert_same();
    let (_, loaded) = w.small.dossiers.traffic();
    assert!(loaded > 0, "records were read back: {:?}", w.small.dossiers);
}

#[test]
fn a_dossier_leaves_the_worklist_index_when_returned_registered_again_or_graded() {
    let (mut w, cell, cycle) = World::one_cell();
    let tw = w.tw;
    let d = w.subject(
        cycle,
        SubjectKind::Individual,
        cell,
        tw,
        SubjectStatus::Active,
        "individuals",
        false,
    );
    let index = |w: &World| {
        (
            w.small.due.get(&(cycle, tw)).map(|s| s.len()),
            w.small.due_groups.get(&(cycle, tw)).cloned(),
        )
    };
    let one = |group: &str| (Some(1), Some(BTreeMap::from([(group.to_owned(), 1)])));
    assert_eq!(index(&w), (None, None));
    w.appraise(d, false);
    assert_eq!(index(&w), one("individuals"));
    w.push(
        d.stream(),
        &DossierReturned {
            dossier: d,
            reason: "Bổ sung".into(),
        },
    );
    assert_eq!(index(&w), (None, None));
    w.appraise(d, false);
    assert_eq!(index(&w), one("individuals"));
    // Registered again in another group: waits no more until appraised,
    // then in its new group.
    w.register(
        d,
        cycle,
        SubjectKind::Individual,
        cell,
        tw,
        SubjectStatus::Active,
        "leaders",
        true,
    );
    assert_eq!(index(&w), (None, None));
    w.appraise(d, false);
    assert_eq!(index(&w), one("leaders"));
    w.grade(d, Grade::Good);
    assert_eq!(index(&w), (None, None));
    // A re-appraisal after the grade keeps it decided: not waiting.
    w.appraise(d, false);
    assert_eq!(index(&w), (None, None));
    assert_eq!(w.assert_same(), 0);
}

/// A model keeping `records` records in memory, folded from `events`.
fn fold(events: &[StoredEvent], records: usize) -> ApprovalModel {
    let mut model = ApprovalModel::with_cache(records);
    for event in events {
        model.apply(event);
    }
    model
}

#[test]
fn events_recorded_before_their_dossiers_registration_are_applied_right_after_it() {
    let given = World::given();
    // Two dossiers in three registered after their next one, two, three or
    // five events, or after all of them (a second registration, should one
    // have it, still comes after the first).
    let late: HashMap<DossierId, usize> = given
        .ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(i, d)| (*d, [1, 2, 3, 5, usize::MAX][i % 5]))
        .collect();
    let moved = registered_late(&given.log, &late);
    // Every kind of the dossier's life approval folds came early.
    for kind in [
        SelfReviewSubmitted::KIND,
        DossierAppraised::KIND,
        DossierReturned::KIND,
        CollectiveDossierOpened::KIND,
        GradeDecided::KIND,
        GradeRevised::KIND,
    ] {
        assert!(
            moved.early.get(kind).copied().unwrap_or_default() > 0,
            "{kind}: {:?}",
            moved.early
        );
    }

    // Parked and released, in a model that keeps 8 records in memory, as
    // if each had come right after the registration.
    let w = given.with_models(fold(&moved.expected, 1 << 20), fold(&moved.store, 8));
    assert!(w.assert_same() > 1_000, "the worklists list something");
    // A replay folds the same store into the same model.
    let again = given.with_models(fold(&moved.store, 1 << 20), fold(&moved.store, 1 << 20));
    again.assert_same();
    let replayed = given.with_models(fold(&moved.store, 1 << 20), fold(&moved.store, 8));
    replayed.assert_same();
    // The log's head is not the record's: a parked grade moved it when it
    // was folded, so it is the last grade's in the store, as it was before
    // any registration came late.
    let log = |m: &ApprovalModel| (m.head().to_owned(), m.log_version);
    for model in [&w.small, &again.big, &again.small, &replayed.small] {
        assert_eq!(log(model), log(&given.big));
    }

    // What a decision reads of a dossier appraised before it was
    // registered: its score, its state; a Good is accepted alike (the
    // decision chains on the log's head, so on the store's models).
    let mut w = replayed;
    let (a, d1) = (w.cycles[0], w.districts[1]);
    let early = w
        .big
        .due
        .get(&(a, d1))
        .unwrap()
        .iter()
        .find(|(_, collective, d)| !collective && late.contains_key(d))
        .map(|(_, _, d)| *d)
        .unwrap();
    let record = w.small.dossiers.get(&early).unwrap();
    assert_eq!(record.state, DossierState::Appraised);
    assert!(record.score.is_some(), "{record:?}");
    decide_on_both(
        &mut w,
        &batch(a, d1, DecisionKind::Decide, vec![good(early)]),
    )
    .unwrap();
    assert_eq!(
        w.small.dossiers.get(&early).unwrap().state,
        DossierState::Decided
    );
    w.assert_same();
}

#[test]
fn a_self_review_recorded_before_the_registration_gives_the_decision_its_score() {
    let (mut w, cell, cycle) = World::one_cell();
    let tw = w.tw;
    // The self-review first (its registration was redelivered late), the
    // appraisal after the registration.
    let d = DossierId::new();
    w.submit(d, false);
    w.register(
        d,
        cycle,
        SubjectKind::Individual,
        cell,
        tw,
        SubjectStatus::Active,
        "individuals",
        false,
    );
    w.ids.push(d);
    w.push(
        d.stream(),
        &DossierAppraised {
            dossier: d,
            recommended_grade: Grade::Good,
            facts: Facts::default(),
            notes: String::new(),
            warnings: Vec::new(),
        },
    );
    for model in [&w.big, &w.small] {
        let record = model.dossiers.get(&d).unwrap();
        assert_eq!(record.state, DossierState::Appraised);
        assert_eq!(
            record.score.map(|s| s.general.to_bits()),
            Some(28.0_f64.to_bits())
        );
        assert!(record.tasks.is_some());
    }
    let events = decide_on_both(
        &mut w,
        &batch(cycle, tw, DecisionKind::Decide, vec![good(d)]),
    )
    .unwrap();
    assert!(
        events.iter().any(|e| e.kind == GradeDecided::KIND),
        "{events:?}"
    );
    assert_eq!(w.big.dossiers.get(&d).unwrap().state, DossierState::Decided);
}
