//! The model answers the same whatever part of its per-dossier state is in
//! memory: the same events folded into a model that keeps eight values per
//! spilled map in memory ([`ProgressModel::with_cache`]) and into one with
//! the default capacity, which keeps them all, give the same records, unit
//! lists, subtree dossiers, reports (every page of every org), CSV,
//! progress trees and touched paths. The events touch the dossiers in
//! shuffled order, so most changes land on a record read back from the
//! scratch file, and they include parked events, moves, merges, re-grades
//! and a second cycle.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::commands::DecisionKind;
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleCompleted, CycleOpened, DecisionRecorded, DossierAppraised,
    DossierReturned, Event, GradeDecided, GradeRevised, MeetingRecorded, OrgMoved, OrgRegistered,
    OrgsMerged, RecordRef, SelfReviewSubmitted, SubjectRegistered, UnitCompleted,
};
use gradeflow_proto::{
    Actor, Category, CorrelationId, CycleId, CycleKind, DecisionId, DossierId, DossierState,
    Envelope, EventId, Facts, Grade, OrgId, QuotaSettings, Role, RulebookId, SubjectId,
    SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
};
use gradeflow_service::spill::DEFAULT_CAPACITY;
use gradeflow_service::Model;
use serde_json::{json, Value};

use crate::model::tests::stored;
use crate::model::{DossierRecord, ProgressModel};
use crate::page::encode_progress_page;
use crate::queries::{ProgressPageQuery, Query};
use crate::report::{report, ReportQuery};
use crate::{report_csv, touched};

/// Values per map the spilling model keeps in memory.
const TINY: usize = 8;

/// The events of a country with two cycles, and what they name.
struct Country {
    events: Vec<StoredEvent>,
    /// Every org, the merged and moved ones included.
    orgs: Vec<OrgId>,
    cycles: [CycleId; 2],
    /// Every dossier registered, with its cycle.
    dossiers: Vec<(DossierId, CycleId)>,
}

struct Builder {
    events: Vec<StoredEvent>,
    orgs: BTreeMap<String, OrgId>,
    regs: BTreeMap<DossierId, SubjectRegistered>,
    order: Vec<(DossierId, CycleId)>,
    seq: u64,
}

impl Builder {
    fn feed<E: Event>(&mut self, event: &E) {
        let position = self.events.len() as i64 + 1;
        self.events.push(stored(position, event));
    }

    fn org(&mut self, code: &str, tier: &str, parent: Option<&str>) -> OrgId {
        let id = OrgId::new();
        let parent = parent.map(|p| self.orgs[p]);
        self.feed(&OrgRegistered {
            org: id,
            code: code.into(),
            name: format!("Đảng bộ \"{code}\""),
            tier: Tier::new(tier),
            parent,
            province: None,
        });
        self.orgs.insert(code.to_owned(), id);
        id
    }

    /// Registers a subject (`early` feeds its self-review first, to be
    /// parked until the registration).
    fn subject(
        &mut self,
        cycle: CycleId,
        org: &str,
        deciding: &str,
        kind: SubjectKind,
        n: usize,
        early: bool,
    ) -> DossierId {
        let dossier = DossierId::new();
        if early {
            self.self_review(dossier);
        }
        let exempt = kind == SubjectKind::Individual && n % 13 == 0;
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle,
            org: self.orgs[org],
            deciding_org: self.orgs[deciding],
            kind,
            name: format!("Đảng viên {n}, \"{org}\""),
            category: match kind {
                SubjectKind::Collective => Category::Collective01,
                SubjectKind::Individual if n % 6 == 0 => Category::Leader2A,
                SubjectKind::Individual => Category::Member2B,
            },
            leader: n % 6 == 0,
            status: if exempt {
                SubjectStatus::Exempt
            } else {
                SubjectStatus::Active
            },
            quota_group: match kind {
                SubjectKind::Collective => "collectives".into(),
                SubjectKind::Individual if n % 4 == 0 => "riêng".into(),
                SubjectKind::Individual => "individuals".into(),
            },
            state: if exempt {
                DossierState::NotReviewed
            } else {
                DossierState::Open
            },
        };
        self.feed(&e);
        self.regs.insert(dossier, e);
        self.order.push((dossier, cycle));
        dossier
    }

    fn self_review(&mut self, dossier: DossierId) {
        self.feed(&SelfReviewSubmitted {
            dossier,
            score: None,
            proposed_grade: Grade::Good,
            tasks: TaskCounts::default(),
            shortcomings_fixed: true,
            report: "Báo cáo".into(),
            resubmission: false,
        });
    }

    fn record(&mut self) -> RecordRef {
        self.seq += 1;
        RecordRef {
            seq: self.seq,
            hash: String::new(),
            signature: String::new(),
            key_id: "k".into(),
            prev_hash: None,
            at: None,
        }
    }

    /// One decision grading `graded` (of one deciding org); the number
    /// comes with the decision, before the grades or after them.
    fn decide(&mut self, number: &str, graded: &[(DossierId, Grade)], number_first: bool) {
        let Some((first, _)) = graded.first() else {
            return;
        };
        let decision = DecisionId::new();
        let reg = self.regs[first].clone();
        let recorded = DecisionRecorded {
            decision,
            cycle: reg.cycle,
            authority: reg.deciding_org,
            number: number.into(),
            kind: DecisionKind::Decide,
            dossiers: graded.iter().map(|(d, _)| *d).collect(),
            quota_exception: None,
        };
        if number_first {
            self.feed(&recorded);
        }
        for (i, (d, grade)) in graded.iter().enumerate() {
            let r = self.regs[d].clone();
            let record = self.record();
            self.feed(&GradeDecided {
                decision,
                dossier: *d,
                subject: r.subject,
                cycle: r.cycle,
                authority: r.deciding_org,
                org: r.org,
                grade: *grade,
                quota_group: r.quota_group,
                override_reason: None,
                record,
                // Some grades carry the number themselves.
                number: (i % 3 == 0).then(|| format!("{number}/g")),
            });
        }
        if !number_first {
            self.feed(&recorded);
        }
    }
}

/// A deterministic shuffle of `items` (`salt` picks the order).
fn shuffled<T: Copy>(items: &[T], salt: u64) -> Vec<T> {
    let mut keyed: Vec<(u64, T)> = items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let k = (i as u64 + salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (k ^ (k >> 29), *t)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, t)| t).collect()
}

/// A root, three provinces of three districts of four cells; members in
/// every cell and a collective per district in cycle A, two members per
/// cell in cycle B; every step of a dossier's life, in shuffled order, a
/// move and a merge halfway, and registrations after them.
fn country() -> Country {
    let mut b = Builder {
        events: Vec::new(),
        orgs: BTreeMap::new(),
        regs: BTreeMap::new(),
        order: Vec::new(),
        seq: 0,
    };
    let root = b.org("TW", "central", None);
    let mut cells = Vec::new();
    let mut districts = Vec::new();
    for p in 1..=3 {
        let province = format!("P{p}");
        b.org(&province, "province", Some("TW"));
        for d in 1..=3 {
            let district = format!("{province}.D{d}");
            b.org(&district, "district", Some(&province));
            districts.push((district.clone(), province.clone()));
            for c in 1..=4 {
                let cell = format!("{district}.C{c}");
                b.org(&cell, "cell", Some(&district));
                cells.push((cell, district.clone()));
            }
        }
    }
    let cycles = [CycleId::new(), CycleId::new()];
    for (year, cycle) in [2026, 2027].into_iter().zip(cycles) {
        let deadlines = [("cell", "2026-12-15"), ("district", "2026-12-22")]
            .into_iter()
            .map(|(t, d)| (Tier::new(t), d.parse().unwrap()))
            .collect();
        b.feed(&CycleOpened {
            cycle,
            year,
            kind: CycleKind::Annual,
            rulebook: RulebookId::Qd366_2025,
            tiers: Tiers::card(),
            deadlines,
            quota: QuotaSettings::default(),
            root,
        });
    }
    let [a, second] = cycles;

    // Registrations, the units interleaved: cycle A's members (every tenth
    // parked behind its self-review), cycle B's members, then cycle A's
    // collectives.
    let mut slots = Vec::new();
    for (i, _) in cells.iter().enumerate() {
        slots.extend(std::iter::repeat_n((a, i), 4 + i % 7));
        slots.extend(std::iter::repeat_n((second, i), 2));
    }
    let mut n = 0;
    let mut members = Vec::new();
    let mut early = Vec::new();
    let mut collectives = Vec::new();
    for (cycle, i) in shuffled(&slots, 0) {
        let (cell, district) = &cells[i];
        n += 1;
        let parked = cycle == a && n % 10 == 0;
        let d = b.subject(cycle, cell, district, SubjectKind::Individual, n, parked);
        if parked {
            early.push(d);
        }
        if cycle == a {
            members.push(d);
        }
    }
    for (district, province) in &districts {
        n += 1;
        let d = b.subject(a, district, province, SubjectKind::Collective, n, false);
        collectives.push(d);
    }
    let reviewed: Vec<DossierId> = members
        .iter()
        .copied()
        .filter(|d| b.regs[d].status == SubjectStatus::Active)
        .collect();

    // Self-reviews and meetings, each round in its own order.
    for d in shuffled(&reviewed, 1) {
        if !early.contains(&d) {
            b.self_review(d);
        }
    }
    for (i, d) in shuffled(&reviewed, 2).into_iter().enumerate() {
        if i % 7 != 0 {
            b.feed(&MeetingRecorded {
                dossier: d,
                proposed_grade: Grade::Good,
                votes: BTreeMap::new(),
                minutes: "Biên bản".into(),
            });
        }
    }

    // Halfway: a cell moves to another province's district, a district is
    // merged into its neighbour with its cells, a cell is completed.
    b.feed(&OrgMoved {
        org: b.orgs["P1.D1.C1"],
        from_parent: b.orgs["P1.D1"],
        to_parent: b.orgs["P2.D1"],
    });
    b.feed(&OrgsMerged {
        from: vec![b.orgs["P3.D3"]],
        into: b.orgs["P3.D2"],
        children_moved: (1..=4).map(|c| b.orgs[&format!("P3.D3.C{c}")]).collect(),
    });
    b.feed(&UnitCompleted {
        cycle: a,
        org: b.orgs["P2.D2.C3"],
        tier: Tier::new("cell"),
        dossiers: 0,
    });
    // Registrations after the reshape: at a cell of the merged district,
    // at the merged district itself, and at the moved cell.
    for org in ["P3.D3.C3", "P3.D3", "P1.D1.C1"] {
        n += 1;
        let d = b.subject(a, org, "P3.D2", SubjectKind::Individual, n, false);
        members.push(d);
    }

    // Appraisals and returns (some twice), in another order.
    let mut decided: BTreeMap<OrgId, Vec<(DossierId, Grade)>> = BTreeMap::new();
    for (i, d) in shuffled(&reviewed, 3).into_iter().enumerate() {
        match i % 5 {
            0 => {}
            1 | 2 => {
                b.feed(&DossierReturned {
                    dossier: d,
                    reason: "Thiếu biên bản".into(),
                });
                if i % 2 == 0 {
                    b.self_review(d);
                    b.feed(&DossierReturned {
                        dossier: d,
                        reason: "Lần hai".into(),
                    });
                }
            }
            _ => {
                b.feed(&DossierAppraised {
                    dossier: d,
                    recommended_grade: Grade::Good,
                    facts: Facts::default(),
                    notes: String::new(),
                    warnings: Vec::new(),
                });
                let grade = Grade::ALL[i % 4];
                let deciding = b.regs[&d].deciding_org;
                decided.entry(deciding).or_default().push((d, grade));
            }
        }
    }
    for (k, graded) in decided.values().enumerate() {
        b.decide(&format!("{k}-QĐ/ĐU"), graded, k % 2 == 0);
    }
    // Re-grades of some graded dossiers, in yet another order.
    let graded: Vec<(DossierId, Grade)> = decided.values().flatten().copied().collect();
    for (i, (d, from)) in shuffled(&graded, 4).into_iter().enumerate() {
        if i % 4 != 0 {
            continue;
        }
        let r = b.regs[&d].clone();
        let record = b.record();
        b.feed(&GradeRevised {
            decision: DecisionId::new(),
            dossier: d,
            subject: r.subject,
            cycle: r.cycle,
            authority: r.deciding_org,
            previous_grade: from,
            grade: Grade::ALL[(i + 1) % 4],
            supersedes: 1,
            reason: format!("Khiếu nại {i} được chấp nhận"),
            record,
            number: Some(format!("{i}-QĐ/TW")),
            override_reason: None,
        });
    }
    // The collectives are opened and decided by their provinces.
    for d in &collectives {
        let r = b.regs[d].clone();
        b.feed(&CollectiveDossierOpened {
            cycle: a,
            dossier: *d,
            org: r.org,
        });
    }
    let by_province: Vec<(DossierId, Grade)> = collectives
        .iter()
        .enumerate()
        .map(|(i, d)| (*d, Grade::ALL[i % 4]))
        .collect();
    for (k, chunk) in by_province.chunks(3).enumerate() {
        b.decide(&format!("{k}-QĐ/TU"), chunk, true);
    }
    b.feed(&CycleCompleted {
        cycle: second,
        decided: 0,
        completed_at: Utc::now(),
    });
    Country {
        events: b.events,
        orgs: b.orgs.into_values().collect(),
        cycles,
        dossiers: b.order,
    }
}

fn fold(events: &[StoredEvent], mut model: ProgressModel) -> ProgressModel {
    for event in events {
        model.apply(event);
    }
    model
}

/// The country folded into a model that keeps everything in memory and
/// into one that keeps eight values per map, checked to spill.
fn both() -> (Country, ProgressModel, ProgressModel) {
    let country = country();
    let whole = fold(&country.events, ProgressModel::with_cache(DEFAULT_CAPACITY));
    let tiny = fold(&country.events, ProgressModel::with_cache(TINY));
    let n = country.dossiers.len() as u64;
    assert!(n > 300, "{n} dossiers");
    let (records, units) = whole.spill_stats();
    assert_eq!((records.written, records.read_back), (0, 0), "{records:?}");
    assert_eq!((units.written, units.read_back), (0, 0), "{units:?}");
    let (records, units) = tiny.spill_stats();
    assert!(records.in_memory <= TINY, "{records:?}");
    assert!(units.in_memory <= TINY, "{units:?}");
    // Most records went to the file and came back to be changed.
    assert!(records.written >= n, "{records:?}");
    assert!(records.read_back >= n, "{records:?}");
    assert!(units.written > 40 && units.read_back > 40, "{units:?}");
    (country, whole, tiny)
}

fn central() -> Actor {
    Actor {
        sub: "central".into(),
        role: Role::System,
        org: OrgId(uuid::Uuid::nil()),
    }
}

fn today() -> NaiveDate {
    "2026-12-20".parse().unwrap()
}

fn in_subtree(
    model: &ProgressModel,
    cycle: CycleId,
    top: OrgId,
) -> Vec<(DossierId, DossierRecord)> {
    let mut out = Vec::new();
    model.subtree_dossiers(cycle, top, |id, d| out.push((id, d.clone())));
    out
}

#[test]
fn a_model_that_spills_holds_the_same_records_and_unit_lists() {
    let (country, whole, tiny) = both();
    for (d, _) in &country.dossiers {
        let expected = whole.dossiers.get(d).unwrap();
        assert_eq!(tiny.dossiers.get(d).unwrap(), expected, "{d}");
    }
    assert!(tiny.dossiers.get(&DossierId::new()).is_none());
    let mut listed = 0;
    for cycle in country.cycles {
        for org in country.orgs.iter().copied().chain([OrgId::new()]) {
            let own = whole.own_dossiers(cycle, org);
            listed += own.len();
            assert_eq!(tiny.own_dossiers(cycle, org), own, "{org}");
            assert_eq!(
                in_subtree(&tiny, cycle, org),
                in_subtree(&whole, cycle, org),
                "{org}"
            );
        }
    }
    assert_eq!(listed, country.dossiers.len(), "every dossier is in a unit");
    // Some records changed: the comparison is not of registrations alone.
    let changed = country
        .dossiers
        .iter()
        .filter(|(d, _)| {
            let r = tiny.dossiers.get(d).unwrap();
            r.returns > 0 && r.regrade_reason.is_none()
        })
        .count();
    assert!(changed > 20, "{changed}");
}

#[test]
fn a_model_that_spills_gives_the_same_reports_pages_csv_trees_and_touched_paths() {
    let (country, whole, tiny) = both();
    let actor = central();
    let ask = |model: &ProgressModel, q: &Query| match q.answer(model, &actor, today()) {
        Ok(v) => v,
        Err(r) => json!({ "refused": r.code }),
    };
    let mut rows = 0;
    for cycle in country.cycles {
        let orgs = country.orgs.iter().copied().map(Some);
        for org in orgs.chain([None, Some(OrgId::new())]) {
            // The whole list, then pages of 7 at every offset.
            let q = ReportQuery {
                cycle,
                org,
                offset: None,
                limit: Some(1_000),
            };
            let full = report(&whole, &q, &actor, today());
            assert_eq!(report(&tiny, &q, &actor, today()), full, "{org:?}");
            if let Ok(full) = &full {
                rows += full.rows.len();
                assert_eq!(
                    report_csv(&report(&tiny, &q, &actor, today()).unwrap()),
                    report_csv(full)
                );
                let mut offset = 0;
                loop {
                    let q = Query::Report(ReportQuery {
                        offset: Some(offset),
                        limit: Some(7),
                        ..q.clone()
                    });
                    let page = ask(&whole, &q);
                    assert_eq!(ask(&tiny, &q), page, "{org:?} from {offset}");
                    match page["page"]["next"].as_u64() {
                        Some(next) => {
                            assert!(next > offset, "{org:?}: {page}");
                            offset = next;
                        }
                        None => break,
                    }
                }
            }
            let q = ProgressPageQuery {
                cycle,
                org,
                depth: Some(9),
                after: None,
                until: None,
            };
            assert_eq!(
                encode_progress_page(&tiny, &q, &actor, today()),
                encode_progress_page(&whole, &q, &actor, today()),
            );
        }
    }
    assert!(rows > 1_000, "the reports listed dossiers: {rows}");
    for (d, _) in &country.dossiers {
        let envelope = Envelope {
            event_id: EventId::new(),
            kind: SelfReviewSubmitted::KIND.into(),
            stream: d.stream(),
            version: 1,
            occurred_at: Utc::now(),
            actor: central(),
            correlation_id: CorrelationId::new(),
            causation_id: None,
            traceparent: None,
            payload: json!({ "dossier": d }),
        };
        let path = touched(&whole, &envelope);
        assert!(!path.is_empty());
        assert_eq!(touched(&tiny, &envelope), path, "{d}");
    }
}

#[test]
fn subtree_dossiers_are_those_whose_org_path_holds_the_top() {
    let (country, whole, tiny) = both();
    let mut total = 0;
    for cycle in country.cycles {
        for top in country.orgs.iter().copied() {
            // The filter a scan of every dossier would apply.
            let expected: BTreeSet<DossierId> = country
                .dossiers
                .iter()
                .filter(|(_, c)| *c == cycle)
                .filter(|(d, _)| {
                    let org = whole.dossiers.get(d).unwrap().registered.org;
                    whole.path(org).contains(&top)
                })
                .map(|(d, _)| *d)
                .collect();
            for model in [&whole, &tiny] {
                let listed = in_subtree(model, cycle, top);
                let ids: BTreeSet<DossierId> = listed.iter().map(|(d, _)| *d).collect();
                assert_eq!(ids.len(), listed.len(), "each once under {top}");
                assert_eq!(ids, expected, "under {top}");
            }
            if whole.orgs.get(top).is_some_and(|o| o.parent.is_none()) {
                total += expected.len();
            }
        }
    }
    assert_eq!(total, country.dossiers.len(), "the roots hold them all");
    // The merged district holds nothing of its own any more; what was
    // registered there counts at the district it joined.
    let merged = whole
        .orgs
        .by_code("P3.D3")
        .map(|o| (o.id, o.merged_into))
        .unwrap();
    assert!(merged.1.is_some());
    assert!(in_subtree(&whole, country.cycles[0], merged.0).is_empty());
    assert!(!whole.own_dossiers(country.cycles[0], merged.0).is_empty());
}

#[test]
fn the_spilled_record_is_the_record() {
    // A record written to the scratch file and read back is equal to the
    // one kept in memory, its empty fields left out of the file.
    let (country, _, tiny) = both();
    let (d, _) = country.dossiers[0];
    let record = tiny.dossiers.get(&d).unwrap();
    let text = serde_json::to_value(&*record).unwrap();
    let back: DossierRecord = serde_json::from_value(text.clone()).unwrap();
    assert_eq!(back, *record);
    let fresh = country
        .dossiers
        .iter()
        .map(|(d, _)| tiny.dossiers.get(d).unwrap())
        .find(|r| r.grade.is_none() && r.returns == 0 && !r.registered.leader)
        .unwrap();
    let keys: Vec<String> = match serde_json::to_value(&*fresh).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("{other}"),
    };
    assert_eq!(keys, ["r", "s"], "{fresh:?}");
}
