//! Tests that the model answers exactly as it did before its maps could
//! spill: a model keeping eight values per map in memory, the rest in its
//! scratch file, against one with the default capacity, both fed the same
//! events; and the worklist index against the scan over every dossier of
//! each deciding org that it replaces.
//!
//! The same comparison shows that events of a dossier's life recorded
//! before its registration are parked and applied right after it: folded
//! in that store order (into a model of either size, and again from
//! scratch) they give the model that folding them right after the
//! registration gives.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroI64;

use chrono::{NaiveDate, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::commands::{AppraiseDossier, ReturnDossier};
use gradeflow_proto::events::{
    CycleOpened, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    MeetingRecorded, OrgRegistered, RecordRef, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{
    Actor, Category, CorrelationId, CycleId, CycleKind, DecisionId, DossierId, DossierState,
    EventId, Facts, Grade, Metadata, OrgId, QuotaSettings, Rejection, Role, RulebookId, Score,
    SubjectId, SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
};
use gradeflow_service::spill::SpillMap;
use gradeflow_service::trace::PackedTrace;
use gradeflow_service::{Decision, Model};
use gradeflow_testkit::{about, registered_late};
use serde::Serialize;
use serde_json::{json, Value};

use crate::appraisals::{appraise, return_dossier, warnings_for};
use crate::model::{AppraisalDossier, AppraisalModel, Board, Review};
use crate::queries::{readable, worklist, WorkItem, Worklist, WORKLIST_LIMIT};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Self-scores, some of which `serde_json` reads back one unit in the last
/// place off once written as text (`14.75…45` comes back as `14.75…43`).
const SCORES: [f64; 6] = [
    27.0,
    61.5,
    14.751763244338745,
    25.039350521214434,
    21.595521737191522,
    0.30000000000000004,
];

/// A small deterministic generator (xorshift), so that a failure replays.
struct Dice(u64);

impl Dice {
    /// A number below `n`.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// Two models fed the same events: `whole` with the default capacity,
/// `spilling` with eight values per map. Beside them, what the worklist
/// scanned before it had an index: every dossier by deciding org, once per
/// registration, in the order of the registrations.
struct Twin {
    whole: AppraisalModel,
    spilling: AppraisalModel,
    position: i64,
    by_deciding: HashMap<OrgId, Vec<DossierId>>,
    /// Every event folded, in store order.
    log: Vec<StoredEvent>,
}

impl Twin {
    fn new() -> Self {
        Self {
            whole: AppraisalModel::default(),
            spilling: AppraisalModel::with_cache(8),
            position: 0,
            by_deciding: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// Two models folded from `store`, each from scratch (`whole` from
    /// `whole_from`), and what the worklist scanned: the registrations in
    /// `store`'s order.
    fn folded(whole_from: &[StoredEvent], store: &[StoredEvent], spilling: usize) -> Twin {
        let fold = |events: &[StoredEvent], mut model: AppraisalModel| {
            for event in events {
                model.apply(event);
            }
            model
        };
        let mut by_deciding: HashMap<OrgId, Vec<DossierId>> = HashMap::new();
        for event in store {
            if event.kind == SubjectRegistered::KIND {
                let e: SubjectRegistered = serde_json::from_value(event.payload.clone()).unwrap();
                by_deciding
                    .entry(e.deciding_org)
                    .or_default()
                    .push(e.dossier);
            }
        }
        Twin {
            whole: fold(whole_from, AppraisalModel::default()),
            spilling: fold(store, AppraisalModel::with_cache(spilling)),
            position: store.len() as i64,
            by_deciding,
            log: Vec::new(),
        }
    }

    /// Folds `event` into both models, at the next position.
    fn feed<E: Event + Serialize>(&mut self, stream: &str, event: &E, traceparent: Option<&str>) {
        self.position += 1;
        let stored = StoredEvent {
            position: self.position,
            stream: stream.to_owned(),
            version: 1,
            event_id: EventId::new(),
            kind: E::KIND.to_owned(),
            payload: serde_json::to_value(event).unwrap(),
            payload_text: String::new(),
            metadata: Metadata {
                actor: system(),
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
        self.whole.apply(&stored);
        self.spilling.apply(&stored);
        self.log.push(stored);
    }

    /// The record of `d` in the model that does not spill.
    fn record(&self, d: DossierId) -> AppraisalDossier {
        AppraisalDossier::clone(&self.whole.dossiers.get(&d).unwrap())
    }
}

/// The tree (a root, four provinces of three districts of two cells) and
/// two cycles.
struct Country {
    root: OrgId,
    provinces: Vec<OrgId>,
    districts: Vec<OrgId>,
    cells: Vec<OrgId>,
    parents: HashMap<OrgId, OrgId>,
    cycles: [CycleId; 2],
}

impl Country {
    fn found(t: &mut Twin) -> Country {
        let mut c = Country {
            root: OrgId::new(),
            provinces: Vec::new(),
            districts: Vec::new(),
            cells: Vec::new(),
            parents: HashMap::new(),
            cycles: [CycleId::new(), CycleId::new()],
        };
        let org = |t: &mut Twin, c: &mut Country, code: String, tier: &str, parent| {
            let id = OrgId::new();
            t.feed(
                "registry",
                &OrgRegistered {
                    org: id,
                    name: format!("Tổ chức {code}"),
                    code,
                    tier: Tier::new(tier),
                    parent,
                    province: None,
                },
                None,
            );
            if let Some(p) = parent {
                c.parents.insert(id, p);
            }
            id
        };
        let root = c.root;
        t.feed(
            "registry",
            &OrgRegistered {
                org: root,
                code: "TW".to_owned(),
                name: "Trung ương".to_owned(),
                tier: Tier::new("central"),
                parent: None,
                province: None,
            },
            None,
        );
        for p in 1..=4 {
            let province = org(t, &mut c, format!("P{p:02}"), "province", Some(root));
            c.provinces.push(province);
            for d in 1..=3 {
                let code = format!("P{p:02}.D{d:02}");
                let district = org(t, &mut c, code.clone(), "district", Some(province));
                c.districts.push(district);
                for cell in 1..=2 {
                    let id = org(
                        t,
                        &mut c,
                        format!("{code}.C{cell:02}"),
                        "cell",
                        Some(district),
                    );
                    c.cells.push(id);
                }
            }
        }
        let deadlines: BTreeMap<Tier, NaiveDate> = [
            ("cell", "2026-12-15"),
            ("district", "2026-12-22"),
            ("province", "2027-01-10"),
            ("central", "2027-02-01"),
        ]
        .into_iter()
        .map(|(tier, day)| (Tier::new(tier), day.parse().unwrap()))
        .collect();
        for (year, cycle) in [2025, 2026].into_iter().zip(c.cycles) {
            t.feed(
                &format!("cycle-{}", cycle.0),
                &CycleOpened {
                    cycle,
                    year,
                    kind: CycleKind::Annual,
                    rulebook: RulebookId::Qd366_2025,
                    tiers: Tiers::card(),
                    deadlines: deadlines.clone(),
                    quota: QuotaSettings::default(),
                    root,
                },
                None,
            );
        }
        c
    }

    /// Every org but the root.
    fn below_root(&self) -> Vec<OrgId> {
        [&self.provinces[..], &self.districts, &self.cells].concat()
    }

    /// Registers a subject of a random org (or registers `again` anew),
    /// decided by the org's parent.
    fn register(&self, t: &mut Twin, dice: &mut Dice, again: Option<DossierId>) -> DossierId {
        let dossier = again.unwrap_or_default();
        let collective = dice.chance(15);
        let org = if collective {
            dice.pick(&self.below_root())
        } else {
            dice.pick(&[&self.cells[..], &self.districts].concat())
        };
        let deciding_org = self.parents[&org];
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle: dice.pick(&self.cycles),
            org,
            deciding_org,
            kind: if collective {
                SubjectKind::Collective
            } else {
                SubjectKind::Individual
            },
            name: format!("Đảng viên {}", t.position),
            category: if collective {
                Category::Collective01
            } else {
                dice.pick(&[Category::Member2B, Category::Leader2A, Category::Outside2C])
            },
            leader: dice.chance(20),
            status: if dice.chance(90) {
                SubjectStatus::Active
            } else {
                SubjectStatus::NewMember
            },
            quota_group: dice
                .pick(&["individuals", "leaders", "riêng \"A\""])
                .to_owned(),
            state: DossierState::Open,
        };
        t.by_deciding.entry(deciding_org).or_default().push(dossier);
        t.feed(&dossier.stream(), &e, None);
        dossier
    }
}

fn system() -> Actor {
    actor(Role::System, OrgId(uuid::Uuid::nil()))
}

fn actor(role: Role, org: OrgId) -> Actor {
    Actor {
        sub: format!("{role:?}@{org}"),
        role,
        org,
    }
}

fn record_ref(seq: usize) -> RecordRef {
    RecordRef {
        seq: seq as u64,
        hash: String::new(),
        signature: String::new(),
        key_id: "k".to_owned(),
        prev_hash: None,
        at: None,
    }
}

const GRADES: [Grade; 4] = [
    Grade::Excellent,
    Grade::Good,
    Grade::Completed,
    Grade::NotCompleted,
];

/// Moves dossier `d` one step along its life, chosen by `dice`, or leaves
/// it where it is.
fn step(t: &mut Twin, dice: &mut Dice, d: DossierId) {
    let r = t.record(d);
    let stream = d.stream();
    match r.state {
        DossierState::Open | DossierState::Returned => {
            let e = SelfReviewSubmitted {
                dossier: d,
                score: dice.chance(85).then(|| Score {
                    general: dice.pick(&SCORES),
                    tasks: dice.pick(&SCORES),
                }),
                proposed_grade: dice.pick(&GRADES),
                tasks: TaskCounts {
                    total: 10,
                    on_time: dice.below(11) as u32,
                    ..TaskCounts::default()
                },
                shortcomings_fixed: dice.chance(50),
                report: "Báo cáo".to_owned(),
                resubmission: r.state == DossierState::Returned,
            };
            let trace = dice.chance(70).then_some(PARENT);
            t.feed(&stream, &e, trace);
        }
        DossierState::Submitted => {
            let grade = dice.pick(&GRADES);
            let e = MeetingRecorded {
                dossier: d,
                proposed_grade: grade,
                votes: [(grade, 9)].into(),
                minutes: "Biên bản".to_owned(),
            };
            t.feed(&stream, &e, None);
        }
        DossierState::Reviewed | DossierState::Appraised => {
            let roll = dice.below(100);
            if roll < 20 {
                let e = DossierReturned {
                    dossier: d,
                    reason: "Thiếu biên bản".to_owned(),
                };
                t.feed(&stream, &e, None);
            } else if r.state == DossierState::Reviewed && roll < 75 {
                let e = DossierAppraised {
                    dossier: d,
                    recommended_grade: dice.pick(&GRADES),
                    facts: Facts::default(),
                    notes: String::new(),
                    warnings: Vec::new(),
                };
                t.feed(&stream, &e, None);
            } else if r.state == DossierState::Appraised && roll < 70 {
                let e = GradeDecided {
                    decision: DecisionId::new(),
                    dossier: d,
                    subject: r.subject,
                    cycle: r.cycle,
                    authority: r.deciding_org,
                    org: r.org,
                    grade: dice.pick(&GRADES),
                    quota_group: r.quota_group.to_string(),
                    override_reason: None,
                    record: record_ref(t.position as usize),
                    number: None,
                };
                t.feed("decision-log", &e, None);
            }
        }
        DossierState::Decided if dice.chance(30) => {
            let e = GradeRevised {
                decision: DecisionId::new(),
                dossier: d,
                subject: r.subject,
                cycle: r.cycle,
                authority: r.deciding_org,
                previous_grade: r.decided.unwrap(),
                grade: dice.pick(&GRADES),
                supersedes: 1,
                reason: "Xét lại".to_owned(),
                record: record_ref(t.position as usize),
                number: None,
                override_reason: None,
            };
            t.feed("decision-log", &e, None);
        }
        _ => {}
    }
}

/// The worklist as it was answered before the index: the subtree walked
/// breadth first and, per org, every dossier it decides, in the order of
/// their registrations, read and kept if it stands reviewed.
fn scan(
    model: &AppraisalModel,
    by_deciding: &HashMap<OrgId, Vec<DossierId>>,
    actor: &Actor,
    q: &Worklist,
) -> Value {
    let (default, max) = WORKLIST_LIMIT;
    let limit = q.limit.unwrap_or(default).min(max);
    let mut items = Vec::new();
    let mut truncated = false;
    let top = match actor.role {
        Role::System => model.orgs.root().map(|r| r.id),
        role if role.covers(Role::Appraiser) => Some(actor.org),
        _ => None,
    };
    let no_facts = Facts::default();
    'walk: for org in top.map(|t| model.subtree(t)).unwrap_or_default() {
        for id in by_deciding.get(&org).map(Vec::as_slice).unwrap_or_default() {
            let Some(d) = model.dossiers.get(id) else {
                continue;
            };
            if d.state != DossierState::Reviewed || q.cycle.is_some_and(|c| c != d.cycle) {
                continue;
            }
            if items.len() == limit {
                truncated = true;
                break 'walk;
            }
            let proposed = d.proposed_grade();
            let warnings = proposed
                .and_then(|g| warnings_for(model, *id, &d, g, &no_facts).ok())
                .unwrap_or_default();
            items.push(WorkItem {
                dossier: *id,
                subject: d.subject,
                name: d.name.to_string(),
                kind: d.kind,
                category: d.category,
                leader: d.leader,
                cycle: d.cycle,
                org: d.org,
                deciding_org: d.deciding_org,
                state: d.state,
                action: "appraise".to_owned(),
                proposed_grade: proposed,
                score: d.self_review.and_then(|s| s.score),
                warnings,
            });
        }
    }
    json!({ "items": items, "truncated": truncated })
}

/// A decision or refusal as text, each event's fresh span id blanked (the
/// rest of its `traceparent` is the dossier's trace).
fn decided(outcome: Result<Decision, Rejection>) -> String {
    let outcome = outcome.map(|mut decision| {
        for emit in &mut decision.events {
            if let Some(tp) = &mut emit.traceparent {
                tp.replace_range(36..52, "<span>");
            }
        }
        decision
    });
    format!("{outcome:?}")
}

/// Asserts that both models hold the same records and tallies, answer
/// every worklist as the scan does, and decide every appraisal and return
/// alike. Answers the system's whole worklist.
fn same_answers(t: &Twin, c: &Country, dossiers: &[DossierId]) -> Value {
    for d in dossiers.iter().chain([&DossierId::new()]) {
        assert_eq!(t.whole.dossiers.get(d), t.spilling.dossiers.get(d), "{d}");
    }
    assert_eq!(t.whole.tallies, t.spilling.tallies);
    // The index holds exactly what the scan kept, whatever the worklist
    // reads past.
    for (org, registered) in &t.by_deciding {
        let awaiting: Vec<DossierId> = registered
            .iter()
            .copied()
            .filter(|d| t.record(*d).awaits_appraisal())
            .collect();
        for model in [&t.whole, &t.spilling] {
            let listed = model.awaiting.get(org).unwrap_or_default();
            let listed: Vec<DossierId> = listed.iter().map(|&(_, d)| d).collect();
            assert_eq!(listed, awaiting, "{org}");
        }
    }

    let mut actors = vec![
        system(),
        actor(Role::Appraiser, c.root),
        actor(Role::Appraiser, c.provinces[0]),
        actor(Role::Appraiser, c.provinces[3]),
        actor(Role::Appraiser, c.districts[1]),
        actor(Role::Appraiser, c.districts[7]),
        actor(Role::Appraiser, c.cells[4]),
        actor(Role::Central, c.provinces[2]),
        actor(Role::Authority, c.root),
        actor(Role::Submitter, c.districts[0]),
    ];
    let queries = [
        Worklist::default(),
        Worklist {
            cycle: Some(c.cycles[0]),
            limit: None,
        },
        Worklist {
            cycle: Some(c.cycles[1]),
            limit: Some(7),
        },
        Worklist {
            cycle: Some(CycleId::new()),
            limit: None,
        },
        Worklist {
            cycle: None,
            limit: Some(0),
        },
        Worklist {
            cycle: None,
            limit: Some(1),
        },
        Worklist {
            cycle: None,
            limit: Some(5),
        },
        Worklist {
            cycle: None,
            limit: Some(1_000_000),
        },
    ];
    for a in &actors {
        for q in &queries {
            let expected = scan(&t.whole, &t.by_deciding, a, q);
            assert_eq!(worklist(&t.whole, a, q), expected, "{a:?} {q:?}");
            assert_eq!(worklist(&t.spilling, a, q), expected, "{a:?} {q:?}");
        }
    }

    actors.truncate(1);
    for &d in dossiers {
        let r = t.record(d);
        let board = actor(Role::Appraiser, r.deciding_org);
        let stranger = actor(Role::Appraiser, c.cells[0]);
        let submitter = actor(Role::Submitter, r.org);
        for a in [&board, &stranger, &submitter, &actors[0]] {
            for grade in [Grade::Excellent, Grade::Good] {
                let input = AppraiseDossier {
                    dossier: d,
                    recommended_grade: grade,
                    facts: Facts::default(),
                    notes: "Nhận xét".to_owned(),
                };
                assert_eq!(
                    decided(appraise(&t.whole, a, &input)),
                    decided(appraise(&t.spilling, a, &input)),
                );
            }
            let input = ReturnDossier {
                dossier: d,
                reason: "Thiếu biên bản".to_owned(),
            };
            assert_eq!(
                decided(return_dossier(&t.whole, a, &input)),
                decided(return_dossier(&t.spilling, a, &input)),
            );
            assert_eq!(
                format!("{:?}", readable(&t.whole, a, d)),
                format!("{:?}", readable(&t.spilling, a, d)),
            );
        }
    }
    worklist(&t.whole, &system(), &queries[7])
}

#[test]
fn a_model_that_spills_answers_as_one_that_does_not_and_as_the_scan_did() {
    let mut t = Twin::new();
    let c = Country::found(&mut t);
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut dossiers: Vec<DossierId> = (0..120)
        .map(|_| c.register(&mut t, &mut dice, None))
        .collect();
    let mut again = Vec::new();
    for tick in 1..=1_500 {
        if dossiers.len() < 240 && dice.chance(10) {
            dossiers.push(c.register(&mut t, &mut dice, None));
        }
        let d = dice.pick(&dossiers);
        step(&mut t, &mut dice, d);
        if tick == 800 {
            // Dossiers registered a second time, in whatever state they
            // stand: they keep their places in the worklists.
            for _ in 0..4 {
                let d = dice.pick(&dossiers);
                c.register(&mut t, &mut dice, Some(d));
                again.push(d);
            }
        }
        if tick % 500 == 0 {
            same_answers(&t, &c, &dossiers);
        }
    }
    // One of them filed and reviewed again: listed under both its places.
    let twice = again[0];
    while t.record(twice).state != DossierState::Reviewed {
        step(&mut t, &mut dice, twice);
    }
    let all = same_answers(&t, &c, &dossiers);

    // Not a vacuous comparison: the lives went everywhere, the worklists
    // have something to list, and the small model spilled and read back.
    let mut states: HashMap<DossierState, usize> = HashMap::new();
    for d in &dossiers {
        *states.entry(t.record(*d).state).or_default() += 1;
    }
    for state in [
        DossierState::Open,
        DossierState::Submitted,
        DossierState::Reviewed,
        DossierState::Returned,
        DossierState::Appraised,
        DossierState::Decided,
        DossierState::Regraded,
    ] {
        assert!(
            states.get(&state).copied().unwrap_or_default() >= 3,
            "{states:?}"
        );
    }
    let items = all["items"].as_array().unwrap();
    assert!(items.len() >= 20, "{}", items.len());
    let listed = |d: DossierId| items.iter().filter(|i| i["dossier"] == json!(d)).count();
    assert_eq!(listed(twice), 2);
    assert!(t
        .whole
        .tallies
        .values()
        .any(|g| g.excellent > 0 && g.good > 0));
    let (written, read) = t.spilling.dossiers.traffic();
    assert!(written > 200 && read > 200, "{:?}", t.spilling.dossiers);
    assert!(t.spilling.dossiers.in_memory() <= 8);
    let (written, read) = t.spilling.awaiting.traffic();
    assert!(written > 0 && read > 0, "{:?}", t.spilling.awaiting);
}

#[test]
fn a_record_comes_back_from_the_scratch_file_exactly_as_it_went() {
    let record = AppraisalDossier {
        subject: SubjectId::new(),
        cycle: CycleId::new(),
        org: OrgId::new(),
        deciding_org: OrgId::new(),
        name: "Nguyễn Văn \"A\"".into(),
        quota_group: "riêng".into(),
        kind: SubjectKind::Individual,
        category: Category::Leader2A,
        leader: true,
        status: SubjectStatus::Active,
        state: DossierState::Appraised,
        self_review: Some(Review {
            proposed_grade: Grade::Good,
            score: Some(Score {
                general: SCORES[2],
                tasks: SCORES[3],
            }),
            tasks: TaskCounts {
                total: 12,
                on_time: 9,
                exceeded: 2,
                late: 1,
                not_done: 2,
            },
            shortcomings_fixed: true,
        }),
        meeting_grade: Some(Grade::Excellent),
        recommended: Some(Grade::Excellent),
        decided: Some(Grade::Completed),
        trace: PackedTrace::pack(PARENT),
        appraisal_at: NonZeroI64::new(41),
        returns_at: vec![3, 17].into(),
        listed: 7,
    };
    let mut map = SpillMap::with_capacity(8);
    let id = DossierId::new();
    map.insert(id, record.clone());
    for _ in 0..64 {
        map.insert(DossierId::new(), record.clone());
    }
    let back = map.get(&id).unwrap();
    assert_eq!(map.traffic().1, 1, "read back from the file: {map:?}");
    assert_eq!(*back, record);
    let score = back.self_review.unwrap().score.unwrap();
    assert_eq!(score.general.to_bits(), SCORES[2].to_bits());
}

#[test]
fn events_recorded_before_their_dossiers_registration_are_applied_right_after_it() {
    let mut t = Twin::new();
    let c = Country::found(&mut t);
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let dossiers: Vec<DossierId> = (0..90)
        .map(|_| c.register(&mut t, &mut dice, None))
        .collect();
    for tick in 1..=900 {
        let d = dice.pick(&dossiers);
        step(&mut t, &mut dice, d);
        if tick == 450 {
            // Registered a second time: the first still comes first.
            for _ in 0..3 {
                let d = dice.pick(&dossiers);
                c.register(&mut t, &mut dice, Some(d));
            }
        }
    }
    // Two dossiers in three registered after their next one, two, three or
    // five events, or after all of them.
    let late: HashMap<DossierId, usize> = dossiers
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(i, d)| (*d, [1, 2, 3, 5, usize::MAX][i % 5]))
        .collect();
    let moved = registered_late(&t.log, &late);
    // Every kind of the dossier's life appraisal folds came early.
    for kind in [
        SelfReviewSubmitted::KIND,
        MeetingRecorded::KIND,
        DossierAppraised::KIND,
        DossierReturned::KIND,
        GradeDecided::KIND,
        GradeRevised::KIND,
    ] {
        assert!(
            moved.early.get(kind).copied().unwrap_or_default() > 2,
            "{kind}: {:?}",
            moved.early
        );
    }

    // Parked and released, in a model that keeps 8 values per map in
    // memory, as if each had come right after the registration.
    let parked = Twin::folded(&moved.expected, &moved.store, 8);
    let all = same_answers(&parked, &c, &dossiers);
    assert!(
        all["items"].as_array().unwrap().len() >= 5,
        "the worklist lists something: {}",
        all["items"].as_array().unwrap().len()
    );
    let (written, read) = parked.spilling.dossiers.traffic();
    assert!(written > 50 && read > 50, "{:?}", parked.spilling.dossiers);
    // A replay folds the same store into the same model, at either size.
    for spilling in [8, 1 << 20] {
        same_answers(
            &Twin::folded(&moved.store, &moved.store, spilling),
            &c,
            &dossiers,
        );
    }

    // A dossier whose latest appraisal (so its self-review too) came before
    // its registration: the record parked and released holds them, and
    // `get_dossier.v1` reads the appraisal back where the store holds it.
    let folded = |d: DossierId| AppraisalDossier::clone(&parked.spilling.dossiers.get(&d).unwrap());
    let registered_at = |d: DossierId| {
        moved
            .store
            .iter()
            .find(|r| r.kind == SubjectRegistered::KIND && about(r) == Some(d))
            .unwrap()
            .position
    };
    let (d, at) = moved
        .store
        .iter()
        .filter(|e| e.kind == DossierAppraised::KIND)
        .map(|e| (about(e).unwrap(), e.position))
        .find(|&(d, at)| {
            at < registered_at(d) && folded(d).appraisal_at.map(NonZeroI64::get) == Some(at)
        })
        .unwrap();
    let record = folded(d);
    assert!(record.self_review.is_some(), "{record:?}");
    assert!(record.recommended.is_some(), "{record:?}");
    let positions = record.board_positions();
    assert!(positions.contains(&at), "{positions:?}");
    let events: Vec<StoredEvent> = positions
        .iter()
        .map(|p| moved.store[*p as usize - 1].clone())
        .collect();
    let board = Board::fold(d, &positions, &events).unwrap();
    assert_eq!(
        board.appraisal.map(|a| a.event.recommended_grade),
        record.recommended
    );
}
