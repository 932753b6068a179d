//! Tests of the model with its maps spilled (`docs/adr/0002-bounded-model-memory.md`,
//! `gradeflow_service::spill`): folded with a cache of 8 values per map, so
//! nearly every record and every org's list lives in the scratch file, the
//! model must answer every query and decide every command exactly as one
//! held in memory; and the worklist, which skips the units with nothing
//! awaited, must list exactly what reading every list of the subtree lists.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::commands::{RecordMeeting, RegisterSubject, SubmitSelfReview};
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleOpened, DossierAppraised, DossierReturned, Event, GradeDecided,
    MeetingRecorded, OrgRegistered, RecordRef, SelfReviewSubmitted, SubjectRegistered,
    UnitCompleted,
};
use gradeflow_proto::{
    Actor, Category, CorrelationId, CycleId, CycleKind, DecisionId, DossierId, DossierState,
    Envelope, EventId, Facts, Grade, OrgId, QuotaSettings, Rejection, Role, RulebookId, Score,
    SubjectId, SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
};
use gradeflow_service::{Decision, Model};
use gradeflow_submission_domain::initial_state;
use serde_json::{json, Value};

use crate::dossiers::{
    collective_dossier_id, collective_subject_id, record_meeting, register_subject,
    submit_self_review,
};
use crate::model::tests::stored;
use crate::model::{awaited, SubmissionModel};
use crate::queries::{Answer, GetDossier, Query, WorkItem, Worklist, WORKLIST_LIMIT};
use crate::upward;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A small deterministic sequence, so that a failure comes back on rerun.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

/// A country in miniature and its events, in store order.
#[derive(Default)]
struct Country {
    events: Vec<StoredEvent>,
    root: OrgId,
    /// Every org, each after its parent.
    orgs: Vec<OrgId>,
    /// The orgs with a parent, and that parent.
    parents: Vec<(OrgId, OrgId)>,
    cycles: Vec<CycleId>,
    /// Every dossier, in registration order.
    dossiers: Vec<DossierId>,
    /// Per cycle, how many dossiers were left awaiting their submitter.
    awaiting: BTreeMap<CycleId, usize>,
    /// How many dossiers were left open or returned (a self-review is
    /// accepted for those).
    fileable: usize,
}

impl Country {
    fn push<E: Event>(&mut self, stream: &str, event: &E) {
        let position = self.events.len() as i64 + 1;
        let payload = serde_json::to_value(event).unwrap();
        self.events.push(stored(position, stream, E::KIND, payload));
    }

    fn org(&mut self, code: &str, tier: &str, parent: Option<OrgId>) -> OrgId {
        let org = OrgId::new();
        // Below the root, an org's province is the first part of its code.
        let province = parent.map(|_| code.split('.').next().unwrap_or(code).to_owned());
        self.push(
            "registry",
            &OrgRegistered {
                org,
                code: code.to_owned(),
                name: format!("Tổ chức {code}"),
                tier: Tier::new(tier),
                parent,
                province,
            },
        );
        if let Some(parent) = parent {
            self.parents.push((org, parent));
        } else {
            self.root = org;
        }
        self.orgs.push(org);
        org
    }

    fn register(
        &mut self,
        cycle: CycleId,
        org: OrgId,
        kind: SubjectKind,
        status: SubjectStatus,
    ) -> DossierId {
        let (subject, dossier, category, group) = match kind {
            SubjectKind::Collective => (
                collective_subject_id(org),
                collective_dossier_id(cycle, org),
                Category::Collective01,
                "collectives",
            ),
            SubjectKind::Individual => (
                SubjectId::new(),
                DossierId::new(),
                Category::Member2B,
                "individuals",
            ),
        };
        let deciding_org = self
            .parents
            .iter()
            .find(|(o, _)| *o == org)
            .map_or(org, |(_, p)| *p);
        self.push(
            &dossier.stream(),
            &SubjectRegistered {
                subject,
                dossier,
                cycle,
                org,
                deciding_org,
                kind,
                name: format!("Hồ sơ {}", self.dossiers.len()),
                category,
                leader: false,
                status,
                quota_group: group.to_owned(),
                state: initial_state(status),
            },
        );
        self.dossiers.push(dossier);
        dossier
    }
}

fn record_ref(seq: u64) -> RecordRef {
    serde_json::from_value(
        json!({"seq": seq, "hash": "ab".repeat(32), "signature": "c2ln", "key_id": "k1"}),
    )
    .unwrap()
}

fn self_review(dossier: DossierId, resubmission: bool) -> SelfReviewSubmitted {
    SelfReviewSubmitted {
        dossier,
        score: Some(Score {
            general: 25.0,
            tasks: 60.0,
        }),
        proposed_grade: Grade::Good,
        tasks: TaskCounts {
            total: 3,
            on_time: 3,
            ..TaskCounts::default()
        },
        shortcomings_fixed: true,
        report: "Hoàn thành tốt nhiệm vụ".into(),
        resubmission,
    }
}

/// What becomes of a dossier: how far it goes.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// Left open.
    Open,
    /// Self-reviewed, no meeting yet.
    Submitted,
    /// Through the meeting.
    Reviewed,
    /// Returned by the appraiser.
    Returned,
    /// Appraised.
    Appraised,
    /// Graded.
    Decided,
    /// Returned, then filed again.
    Refiled,
    /// Not reviewed at all (a new member).
    NotReviewed,
}

/// A country of two provinces, each with two districts of `cells` cells of
/// `members` members, in two cycles: every org's collective (but the
/// districts' in the second cycle) and every member registered, then
/// taken through their steps one round at a time over all of them (so a
/// cache smaller than the country reloads a record at nearly every step),
/// and the first district of each province completed in the first cycle
/// with its collective opened.
fn country(cells: usize, members: usize) -> Country {
    let mut c = Country::default();
    let mut dice = Dice(20_261_127);
    let root = c.org("TW", "central", None);
    let mut districts = Vec::new();
    let mut cells_of: Vec<Vec<OrgId>> = Vec::new();
    for p in 1..=2 {
        let province = c.org(&format!("P{p:02}"), "province", Some(root));
        for d in 1..=2 {
            let district = c.org(&format!("P{p:02}.D{d:02}"), "district", Some(province));
            districts.push(district);
            let mut under = Vec::new();
            for k in 1..=cells {
                under.push(c.org(&format!("P{p:02}.D{d:02}.C{k:02}"), "cell", Some(district)));
            }
            cells_of.push(under);
        }
    }
    for year in [2025, 2026] {
        let cycle = CycleId::new();
        c.push(
            &cycle.stream(),
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
        c.cycles.push(cycle);
    }

    let mut plans: Vec<(DossierId, CycleId, Plan)> = Vec::new();
    for (n, &cycle) in c.cycles.clone().iter().enumerate() {
        for org in c.orgs.clone() {
            if n == 1 && districts.contains(&org) {
                continue;
            }
            let d = c.register(cycle, org, SubjectKind::Collective, SubjectStatus::Active);
            plans.push((d, cycle, Plan::Open));
        }
        for cell in cells_of.iter().flatten().copied() {
            for _ in 0..members {
                let plan = match dice.roll(8) {
                    0 => Plan::Open,
                    1 => Plan::Submitted,
                    2 => Plan::Reviewed,
                    3 => Plan::Returned,
                    4 => Plan::Appraised,
                    5 => Plan::Decided,
                    6 => Plan::Refiled,
                    _ => Plan::NotReviewed,
                };
                let status = match plan {
                    Plan::NotReviewed => SubjectStatus::NewMember,
                    _ => SubjectStatus::Active,
                };
                let d = c.register(cycle, cell, SubjectKind::Individual, status);
                plans.push((d, cycle, plan));
            }
        }
    }

    use Plan::*;
    for &(d, _, plan) in &plans {
        if matches!(
            plan,
            Submitted | Reviewed | Returned | Appraised | Decided | Refiled
        ) {
            c.push(&d.stream(), &self_review(d, false));
        }
    }
    for &(d, _, plan) in &plans {
        if matches!(plan, Reviewed | Returned | Appraised | Decided | Refiled) {
            c.push(
                &d.stream(),
                &MeetingRecorded {
                    dossier: d,
                    proposed_grade: Grade::Good,
                    votes: BTreeMap::from([(Grade::Good, 5)]),
                    minutes: "Biên bản".into(),
                },
            );
        }
    }
    for &(d, _, plan) in &plans {
        if matches!(plan, Returned | Refiled) {
            c.push(
                &d.stream(),
                &DossierReturned {
                    dossier: d,
                    reason: "Thiếu biên bản".into(),
                },
            );
        }
        if matches!(plan, Appraised | Decided) {
            c.push(
                &d.stream(),
                &DossierAppraised {
                    dossier: d,
                    recommended_grade: Grade::Good,
                    facts: Facts::default(),
                    notes: String::new(),
                    warnings: Vec::new(),
                },
            );
        }
    }
    for (seq, &(d, cycle, plan)) in (1..).zip(&plans) {
        if plan == Decided {
            c.push(
                "decision-log",
                &GradeDecided {
                    decision: DecisionId::new(),
                    dossier: d,
                    subject: SubjectId::new(),
                    cycle,
                    authority: root,
                    org: root,
                    grade: Grade::Good,
                    quota_group: "individuals".into(),
                    override_reason: None,
                    record: record_ref(seq),
                    number: None,
                },
            );
        }
        if plan == Refiled {
            c.push(&d.stream(), &self_review(d, true));
        }
    }
    let first = c.cycles[0];
    for district in [districts[0], districts[2]] {
        let under = cells_of[districts.iter().position(|d| *d == district).unwrap()].clone();
        for org in under.iter().chain([&district]) {
            c.push(
                &format!("unit-{first}-{org}"),
                &UnitCompleted {
                    cycle: first,
                    org: *org,
                    tier: Tier::new("cell"),
                    dossiers: members as u64,
                },
            );
        }
        let dossier = collective_dossier_id(first, district);
        c.push(
            &dossier.stream(),
            &CollectiveDossierOpened {
                cycle: first,
                dossier,
                org: district,
            },
        );
    }

    for &(_, cycle, plan) in &plans {
        if matches!(plan, Open | Submitted | Returned | Refiled) {
            *c.awaiting.entry(cycle).or_default() += 1;
        }
        if matches!(plan, Open | Returned) {
            c.fileable += 1;
        }
    }
    c
}

fn fold(events: &[StoredEvent], mut model: SubmissionModel) -> SubmissionModel {
    for e in events {
        model.apply(e);
    }
    model
}

fn actor(role: Role, org: OrgId) -> Actor {
    Actor {
        sub: format!("{role:?}@{org}").to_lowercase(),
        role,
        org,
    }
}

/// The worklist as it was answered before the model counted what its units
/// await: every list of the subtree read, every record in them looked at.
fn worklist_reading_every_list(model: &SubmissionModel, actor: &Actor, q: &Worklist) -> Value {
    let (default, max) = WORKLIST_LIMIT;
    let limit = q.limit.unwrap_or(default).min(max);
    let mut items = Vec::new();
    let mut truncated = false;
    let top = match actor.role {
        Role::System => model.orgs.root().map(|r| r.id),
        role if role.covers(Role::Submitter) => Some(actor.org),
        _ => None,
    };
    'walk: for org in top.map(|t| model.subtree(t)).unwrap_or_default() {
        let listed = model.by_org.get(&org).map(|l| l.to_vec());
        for id in listed.unwrap_or_default() {
            let d = model.dossiers.get(&id).unwrap();
            if q.cycle.is_some_and(|c| c != d.cycle) {
                continue;
            }
            let Some(action) = awaited(d.state) else {
                continue;
            };
            if items.len() == limit {
                truncated = true;
                break 'walk;
            }
            items.push(WorkItem {
                dossier: id,
                subject: d.subject,
                name: d.name.to_string(),
                kind: d.kind,
                category: d.category,
                cycle: d.cycle,
                org: d.org,
                state: d.state,
                action: action.to_owned(),
            });
        }
    }
    json!({ "items": items, "truncated": truncated })
}

/// A decision as text, each event's `traceparent` cut to its trace id and
/// flags: a child span's id is drawn at random (`trace::child_of`), so two
/// decisions on the same record differ there and nowhere else.
fn decided(decision: Result<Decision, Rejection>) -> String {
    let decision = decision.map(|mut d| {
        for e in &mut d.events {
            e.traceparent = e.traceparent.as_deref().map(|tp| {
                let parts: Vec<&str> = tp.split('-').collect();
                format!("{}-{}-…-{}", parts[0], parts[1], parts[3])
            });
        }
        d
    });
    format!("{decision:?}")
}

/// The worklist queries asked of every caller.
fn worklists(c: &Country) -> Vec<Worklist> {
    let mut out = vec![Worklist::default()];
    for limit in [0, 1, 7, 10_000, usize::MAX] {
        out.push(Worklist {
            cycle: None,
            limit: Some(limit),
        });
    }
    for cycle in c.cycles.iter().copied().chain([CycleId::new()]) {
        for limit in [None, Some(3), Some(10_000)] {
            out.push(Worklist {
                cycle: Some(cycle),
                limit,
            });
        }
    }
    out
}

/// The same answer from both models, and the worklist's the one of
/// reading every list.
fn answers_alike(spilled: &SubmissionModel, held: &SubmissionModel, who: &Actor, q: &Worklist) {
    let query = Query::Worklist(q.clone());
    let answer = query.answer(spilled, who);
    assert_eq!(answer, query.answer(held, who), "{who:?} {q:?}");
    assert_eq!(
        answer,
        Ok(Answer::Ready(worklist_reading_every_list(held, who, q))),
        "{who:?} {q:?}"
    );
}

#[test]
fn a_model_that_spills_answers_and_decides_as_one_held_in_memory() {
    let c = country(4, 12);
    let spilled = fold(&c.events, SubmissionModel::with_cache(8));
    let held = fold(&c.events, SubmissionModel::with_cache(100_000));

    // The small model did keep most of its values in the file and read them
    // back; the large one never needed its file.
    assert!(c.dossiers.len() > 400, "{}", c.dossiers.len());
    assert!(spilled.dossiers.in_memory() <= 8, "{:?}", spilled.dossiers);
    let (out, back) = spilled.dossiers.traffic();
    // More written out and read back than there are dossiers: most steps
    // found their record in the file.
    let all = c.dossiers.len() as u64;
    assert!(out > all && back > all, "{:?}", spilled.dossiers);
    assert!(spilled.by_org.in_memory() <= 8, "{:?}", spilled.by_org);
    let (out, back) = spilled.by_org.traffic();
    assert!(out > 0 && back > 0, "{:?}", spilled.by_org);
    assert_eq!(held.dossiers.traffic(), (0, 0));
    assert_eq!(held.by_org.traffic(), (0, 0));

    // The same records and lists.
    for d in &c.dossiers {
        let record = held.dossiers.get(d);
        assert!(record.is_some());
        assert_eq!(spilled.dossiers.get(d), record, "dossier {d}");
    }
    let mut listed = 0;
    for org in &c.orgs {
        let list = held.by_org.get(org).unwrap();
        listed += list.len();
        assert_eq!(spilled.by_org.get(org).as_ref(), Some(&list), "org {org}");
    }
    assert_eq!(listed, c.dossiers.len());

    // Every worklist, for callers at every tier and roles that have none.
    let system = actor(Role::System, c.root);
    let mut callers = vec![
        system.clone(),
        actor(Role::Central, c.root),
        actor(Role::Auditor, c.root),
        actor(Role::Authority, c.orgs[1]),
    ];
    callers.extend(c.orgs.iter().map(|o| actor(Role::Submitter, *o)));
    for who in &callers {
        let all = worklists(&c);
        // Every variant at the root; below it, with and without a cycle.
        let asked = if who.org == c.root {
            &all[..]
        } else {
            &all[..7]
        };
        for q in asked {
            answers_alike(&spilled, &held, who, q);
        }
    }
    // The whole country's list holds what was left awaiting, cycle by cycle.
    for (cycle, awaiting) in &c.awaiting {
        let q = Worklist {
            cycle: Some(*cycle),
            limit: Some(10_000),
        };
        let answer = crate::queries::worklist(&spilled, &system, &q);
        assert_eq!(answer["items"].as_array().unwrap().len(), *awaiting);
        assert_eq!(answer["truncated"], false);
    }

    // Every dossier's view, for the whole country and for one cell's board
    // (which may read only its own).
    let cell = actor(Role::Submitter, *c.orgs.last().unwrap());
    let mut readable = 0;
    for d in c.dossiers.iter().copied().chain([DossierId::new()]) {
        let q = Query::GetDossier(GetDossier { dossier: d });
        assert_eq!(q.answer(&spilled, &system), q.answer(&held, &system), "{d}");
        let answer = q.answer(&spilled, &cell);
        assert_eq!(answer, q.answer(&held, &cell), "{d}");
        readable += usize::from(answer.is_ok());
    }
    assert!(readable > 0 && readable < c.dossiers.len());

    // Every decision about a dossier: the same events, answers and refusals.
    let mut filed = 0;
    for &d in &c.dossiers {
        let review = SubmitSelfReview {
            dossier: d,
            score: Some(Score {
                general: 20.0,
                tasks: 50.0,
            }),
            proposed_grade: Grade::Good,
            tasks: TaskCounts {
                total: 1,
                on_time: 1,
                ..TaskCounts::default()
            },
            shortcomings_fixed: true,
            report: "Báo cáo".into(),
        };
        let filing = submit_self_review(&spilled, &system, &review, Some(TP));
        filed += usize::from(filing.is_ok());
        assert_eq!(
            decided(filing),
            decided(submit_self_review(&held, &system, &review, Some(TP))),
            "{d}"
        );
        let meeting = RecordMeeting {
            dossier: d,
            proposed_grade: Grade::Good,
            votes: BTreeMap::from([(Grade::Good, 3)]),
            minutes: "Biên bản".into(),
        };
        assert_eq!(
            decided(record_meeting(&spilled, &system, &meeting)),
            decided(record_meeting(&held, &system, &meeting)),
            "{d}"
        );
    }
    assert_eq!(filed, c.fileable);

    // Registering every org's collective (refused where it is registered,
    // accepted for the districts in the second cycle), and the upward flow's
    // reaction to every unit completing.
    let mut registered = 0;
    let mut opened = 0;
    for &cycle in &c.cycles {
        for &org in &c.orgs {
            let input = RegisterSubject {
                cycle,
                kind: SubjectKind::Collective,
                org,
                name: "Tập thể".into(),
                category: Category::Collective01,
                leader: false,
                status: SubjectStatus::Active,
                quota_group: None,
            };
            let registering = register_subject(&spilled, &system, &input);
            registered += usize::from(registering.is_ok());
            assert_eq!(
                decided(registering),
                decided(register_subject(&held, &system, &input)),
                "{org}"
            );

            let completed = Envelope {
                event_id: EventId::new(),
                kind: UnitCompleted::KIND.into(),
                stream: format!("unit-{cycle}-{org}"),
                version: 1,
                occurred_at: chrono::Utc::now(),
                actor: actor(Role::Authority, org),
                correlation_id: CorrelationId::new(),
                causation_id: None,
                traceparent: None,
                payload: serde_json::to_value(UnitCompleted {
                    cycle,
                    org,
                    tier: Tier::new("cell"),
                    dossiers: 1,
                })
                .unwrap(),
            };
            let reaction = upward::react(&spilled, &completed);
            opened += reaction.as_ref().map_or(0, |r| r.events.len());
            assert_eq!(
                decided(reaction),
                decided(upward::react(&held, &completed)),
                "{org}"
            );
        }
    }
    assert_eq!(
        registered, 4,
        "the districts' collectives of the second cycle"
    );
    assert!(opened > 0, "some completion opens a collective");
}

#[test]
fn a_dossier_registered_again_under_another_org_stays_listed_under_the_first() {
    // What the fold allows (it trusts its events): a dossier's registration
    // folded again under another org. The first org's list still names it,
    // now counted under the second org, and the worklist lists it under
    // both, as it always has.
    let mut c = Country::default();
    let root = c.org("TW", "central", None);
    let p = c.org("P01", "province", Some(root));
    let (a, b) = (
        c.org("P01.A", "district", Some(p)),
        c.org("P01.B", "district", Some(p)),
    );
    let cycle = CycleId::new();
    let twice = c.register(cycle, a, SubjectKind::Individual, SubjectStatus::Active);
    // Past the meeting under `a`, so `a` counts nothing awaited.
    c.push(&twice.stream(), &self_review(twice, false));
    c.push(
        &twice.stream(),
        &MeetingRecorded {
            dossier: twice,
            proposed_grade: Grade::Good,
            votes: BTreeMap::new(),
            minutes: String::new(),
        },
    );
    let mut again = c.events[c.events.len() - 3].clone();
    again.position = c.events.len() as i64 + 1;
    again.payload["org"] = json!(b);
    c.events.push(again);
    for _ in 0..20 {
        c.register(cycle, b, SubjectKind::Individual, SubjectStatus::Active);
    }

    for model in [
        fold(&c.events, SubmissionModel::with_cache(8)),
        fold(&c.events, SubmissionModel::default()),
    ] {
        assert!(model.may_await(a, None), "a's list names an open record");
        let system = actor(Role::System, root);
        let q = Worklist::default();
        let answer = crate::queries::worklist(&model, &system, &q);
        assert_eq!(answer, worklist_reading_every_list(&model, &system, &q));
        let listed: Vec<&Value> = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["dossier"] == json!(twice))
            .collect();
        assert_eq!(listed.len(), 2, "{answer}");
        assert_eq!(listed[0]["org"], json!(b));
        assert_eq!(listed[0]["state"], json!(DossierState::Open));
    }
}

#[test]
fn the_worklist_reads_nothing_of_units_whose_dossiers_are_all_past_the_meeting() {
    let mut c = Country::default();
    let root = c.org("TW", "central", None);
    let p = c.org("P01", "province", Some(root));
    let (busy, done) = (
        c.org("P01.A", "district", Some(p)),
        c.org("P01.B", "district", Some(p)),
    );
    let (first, second) = (CycleId::new(), CycleId::new());
    let mut open = Vec::new();
    for n in 0..200 {
        let d = c.register(first, done, SubjectKind::Individual, SubjectStatus::Active);
        c.push(&d.stream(), &self_review(d, false));
        c.push(
            &d.stream(),
            &MeetingRecorded {
                dossier: d,
                proposed_grade: Grade::Good,
                votes: BTreeMap::new(),
                minutes: String::new(),
            },
        );
        if n % 50 == 0 {
            open.push(c.register(second, busy, SubjectKind::Individual, SubjectStatus::Active));
        }
    }
    let model = fold(&c.events, SubmissionModel::with_cache(8));
    assert!(!model.may_await(done, None));
    assert!(model.may_await(busy, None));
    assert!(model.may_await(busy, Some(second)));
    assert!(!model.may_await(busy, Some(first)));

    let system = actor(Role::System, root);
    for q in [
        Worklist::default(),
        Worklist {
            cycle: Some(second),
            limit: None,
        },
    ] {
        let (_, loaded) = model.dossiers.traffic();
        let answer = crate::queries::worklist(&model, &system, &q);
        let (_, reloaded) = model.dossiers.traffic();
        let ids: Vec<Value> = open.iter().map(|d| json!(d)).collect();
        let listed: Vec<Value> = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["dossier"].clone())
            .collect();
        assert_eq!(listed, ids);
        assert!(
            reloaded - loaded <= open.len() as u64,
            "read back {} records for {} listed",
            reloaded - loaded,
            open.len()
        );
        assert_eq!(answer, worklist_reading_every_list(&model, &system, &q));
    }
    // Nothing awaited in the first cycle: nothing read at all.
    let q = Worklist {
        cycle: Some(first),
        limit: None,
    };
    let (_, loaded) = model.dossiers.traffic();
    let answer = crate::queries::worklist(&model, &system, &q);
    assert_eq!(model.dossiers.traffic().1, loaded);
    assert_eq!(answer, json!({"items": [], "truncated": false}));
}
