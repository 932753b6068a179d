//! A whole annual cycle through the real binaries, each service its own
//! process, against real NATS and SQLite or PostgreSQL: a four-tier tree (1
//! central, 2 provinces, 2 districts each, 3 cells each, 5 members per cell,
//! plus every unit's collective), self-reviews, meetings, appraisals with one
//! return and resubmission, batch decisions at every tier — one refused for
//! the quota and then corrected, one refused as not ready, one hard trigger
//! with an override reason — one re-grade, up to `cycle_completed`.
//!
//! It then checks the final grade of every dossier, the quota in every group,
//! that the decision log verifies and matches the audit stream record for
//! record, that every store's chain verifies, and that every event was
//! published once and consumed exactly once by each service observing it.
//! The same cycle runs once with the approval and appraisal services killed
//! (SIGKILL) mid-way and restarted: identical final grades, nothing lost,
//! nothing doubled.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gradeflow_proto::{Actor, Grade, OrgId};
use serde_json::{json, Value};
use system_tests::checks::{check_audit_stream, check_exactly_once, wait_consumers_caught_up};
use system_tests::{central, wait_for, Deployment, Driver};

/// What the cycle decided: the current grade per subject name, and the
/// decision log as (dossier name, grade, supersedes).
struct Outcome {
    grades: BTreeMap<String, Grade>,
    log: Vec<(String, Grade, Option<u64>)>,
}

struct Unit {
    org: OrgId,
    collective: String,
    children: Vec<usize>,
    members: Vec<String>,
}

struct World {
    root: OrgId,
    cycle: String,
    /// Dossier id by subject name, and the reverse.
    dossier: HashMap<String, String>,
    name_of: HashMap<String, String>,
    /// Units by index; 0 is the root.
    units: Vec<Unit>,
}

fn plan_member_grade(index_in_district: usize) -> Grade {
    match index_in_district {
        0 | 1 => Grade::Excellent,
        12..=14 => Grade::Completed,
        _ => Grade::Good,
    }
}

async fn register_tree(d: &Driver) -> World {
    let root: OrgId = OrgId::new();
    let boss = central(root);
    let me = &boss;
    let reg = d
        .eventually(&boss, "submission", "register_org.v1", json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}))
        .await
        .unwrap();
    assert_eq!(reg["id"], json!(root));
    let cycle = d
        .eventually(
            me,
            "submission",
            "open_cycle.v1",
            json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                   "tiers": ["cell", "district", "province", "central"],
                   "deadlines": {"cell": "2026-12-15", "district": "2026-12-25", "province": "2027-01-15", "central": "2027-02-01"},
                   "quota": {"ratio": 0.2, "rounding": "floor"}}),
        )
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut w = World {
        root,
        cycle,
        dossier: HashMap::new(),
        name_of: HashMap::new(),
        units: vec![Unit {
            org: root,
            collective: "TW".into(),
            children: vec![],
            members: vec![],
        }],
    };
    let add_unit = |w: &mut World, org: OrgId, code: &str, parent: usize| {
        w.units.push(Unit {
            org,
            collective: code.to_owned(),
            children: vec![],
            members: vec![],
        });
        let i = w.units.len() - 1;
        w.units[parent].children.push(i);
        i
    };
    for p in 1..=2 {
        let pcode = format!("P{p:02}");
        let porg = org(d, me, &pcode, "province", root).await;
        let pi = add_unit(&mut w, porg, &pcode, 0);
        for k in 1..=2 {
            let dcode = format!("{pcode}.D{k:02}");
            let dorg = org(d, me, &dcode, "district", porg).await;
            let di = add_unit(&mut w, dorg, &dcode, pi);
            for c in 1..=3 {
                let ccode = format!("{dcode}.C{c:02}");
                let corg = org(d, me, &ccode, "cell", dorg).await;
                let ci = add_unit(&mut w, corg, &ccode, di);
                for m in 1..=5 {
                    w.units[ci].members.push(format!("{ccode}.M{m}"));
                }
            }
        }
    }
    // Subjects: every unit's collective and every member.
    for i in 0..w.units.len() {
        let (org, collective, members) = (
            w.units[i].org,
            w.units[i].collective.clone(),
            w.units[i].members.clone(),
        );
        let r = d
            .eventually(me, "submission", "register_subject.v1", json!({"cycle": w.cycle, "kind": "collective", "org": org, "name": collective, "category": "01"}))
            .await
            .unwrap();
        remember(&mut w, &collective, &r);
        for (n, name) in members.iter().enumerate() {
            let leader = n == 0;
            let r = d
                .eventually(me, "submission", "register_subject.v1", json!({"cycle": w.cycle, "kind": "individual", "org": org, "name": name, "category": if leader {"2A"} else {"2B"}, "leader": leader}))
                .await
                .unwrap();
            remember(&mut w, name, &r);
        }
    }
    w
}

fn remember(w: &mut World, name: &str, r: &Value) {
    assert_eq!(r["state"], "open");
    let id = r["dossier"].as_str().unwrap().to_owned();
    w.name_of.insert(id.clone(), name.to_owned());
    w.dossier.insert(name.to_owned(), id);
}

async fn org(d: &Driver, me: &Actor, code: &str, tier: &str, parent: OrgId) -> OrgId {
    let r = d
        .eventually(me, "submission", "register_org.v1", json!({"code": code, "name": format!("Tổ chức {code}"), "tier": tier, "parent": parent}))
        .await
        .unwrap();
    r["id"].as_str().unwrap().parse().unwrap()
}

async fn file(d: &Driver, me: &Actor, dossier: &str, grade: Grade) {
    d.eventually(me, "submission", "submit_self_review.v1", json!({"dossier": dossier, "score": {"general": 28, "tasks": 65}, "proposed_grade": grade, "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"}))
        .await
        .unwrap();
    d.eventually(me, "submission", "record_meeting.v1", json!({"dossier": dossier, "proposed_grade": grade, "votes": {"good": 10}, "minutes": "Biên bản"}))
        .await
        .unwrap();
}

async fn appraise(d: &Driver, me: &Actor, dossier: &str, grade: Grade, facts: Value) {
    d.eventually(me, "appraisal", "appraise_dossier.v1", json!({"dossier": dossier, "recommended_grade": grade, "facts": facts, "notes": "Thẩm định"}))
        .await
        .unwrap();
}

async fn decide(
    d: &Driver,
    me: &Actor,
    w: &World,
    authority: OrgId,
    number: &str,
    grades: &[(String, Grade, Option<&str>)],
) -> Value {
    let grades: Vec<Value> = grades
        .iter()
        .map(|(name, g, reason)| json!({"dossier": w.dossier[name], "grade": g, "override_reason": reason}))
        .collect();
    d.eventually(
        me,
        "approval",
        "decide_batch.v1",
        json!({"cycle": w.cycle, "authority": authority, "number": number, "grades": grades}),
    )
    .await
    .unwrap()
}

/// Runs the whole cycle; `crash` is called once mid-way (after the first
/// district's members are decided).
async fn run_cycle(dep: &mut Deployment, crash: bool) -> Outcome {
    let driver = Driver::new(dep);
    let d = &driver;
    // Central staff register the root, then everything below it.
    let w = register_tree(d).await;
    let me = central(w.root);

    // Self-reviews and meetings for every dossier.
    let mut planned: BTreeMap<String, Grade> = BTreeMap::new();
    for (di, district) in w
        .units
        .iter()
        .enumerate()
        .filter(|(_, u)| u.collective.matches('.').count() == 1)
    {
        let _ = di;
        let members: Vec<String> = district
            .children
            .iter()
            .flat_map(|c| w.units[*c].members.clone())
            .collect();
        for (i, m) in members.iter().enumerate() {
            planned.insert(m.clone(), plan_member_grade(i));
        }
    }
    for u in &w.units {
        planned.insert(u.collective.clone(), Grade::Good);
    }
    for (name, grade) in &planned {
        file(d, &me, &w.dossier[name], *grade).await;
    }

    // One return and resubmission: P01.D01.C01.M4 goes back to its board.
    let returned = "P01.D01.C01.M4".to_owned();
    d.eventually(
        &me,
        "appraisal",
        "return_dossier.v1",
        json!({"dossier": w.dossier[&returned], "reason": "Thiếu biên bản hội nghị"}),
    )
    .await
    .unwrap();
    file(d, &me, &w.dossier[&returned], planned[&returned]).await;

    // Appraisals; one member carries a hard trigger (a duty-related reprimand).
    let triggered = "P01.D01.C02.M2".to_owned();
    for (name, grade) in &planned {
        let facts = if *name == triggered {
            json!({"discipline": {"level": "reprimand", "duty_related": true, "previous_unit": false}})
        } else {
            json!({})
        };
        appraise(d, &me, &w.dossier[name], *grade, facts).await;
    }

    // Decisions, bottom-up. Districts decide their cells' members.
    let districts: Vec<usize> = (0..w.units.len())
        .filter(|i| w.units[*i].collective.matches('.').count() == 1)
        .collect();
    let mut first = true;
    let mut expected_log: Vec<(String, Grade, Option<u64>)> = Vec::new();
    for &di in &districts {
        let district = &w.units[di];
        let members: Vec<String> = district
            .children
            .iter()
            .flat_map(|c| w.units[*c].members.clone())
            .collect();
        if first {
            // Over the quota: 3 excellent against 9 good → refused whole.
            let mut over: Vec<(String, Grade, Option<&str>)> = members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        m.clone(),
                        if i < 3 { Grade::Excellent } else { planned[m] },
                        None,
                    )
                })
                .collect();
            for g in &mut over {
                if g.0 == triggered {
                    g.2 = Some("Đã khắc phục hậu quả, nguyên nhân khách quan");
                }
            }
            let refused = wait_refusal(d, &me, &w, district.org, &over).await;
            assert_eq!(refused.code, "rule_violation");
            let v = &refused.details["violations"];
            assert!(
                v.as_array().unwrap().iter().any(|x| x["rule"] == "quota"
                    && x["excellent"] == 3
                    && x["good"] == 9
                    && x["max_excellent"] == 1),
                "{v}"
            );
            // Without the override reason the trigger refuses it too.
            let no_reason: Vec<(String, Grade, Option<&str>)> = members
                .iter()
                .map(|m| (m.clone(), planned[m], None))
                .collect();
            let refused = wait_refusal(d, &me, &w, district.org, &no_reason).await;
            assert!(refused.details["violations"]
                .as_array()
                .unwrap()
                .iter()
                .any(
                    |x| x["rule"] == "hard_trigger" && x["dossier"] == json!(w.dossier[&triggered])
                ));
            // A cell's collective before its members: not ready.
            let cell = &w.units[district.children[0]];
            let early = vec![(cell.collective.clone(), Grade::Good, None)];
            let refused = wait_refusal(d, &me, &w, district.org, &early).await;
            assert!(refused.details["violations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["rule"] == "not_ready"));
        }
        let batch: Vec<(String, Grade, Option<&str>)> = members
            .iter()
            .map(|m| {
                let reason =
                    (*m == triggered).then_some("Đã khắc phục hậu quả, nguyên nhân khách quan");
                (m.clone(), planned[m], reason)
            })
            .collect();
        let r = decide(d, &me, &w, district.org, &format!("{}-QĐ/HU", di), &batch).await;
        assert_eq!(r["records"].as_array().unwrap().len(), batch.len());
        expected_log.extend(batch.iter().map(|(n, g, _)| (n.clone(), *g, None)));
        if first && crash {
            dep.kill("approval").await.unwrap();
            dep.kill("appraisal").await.unwrap();
            dep.spawn("appraisal").await.unwrap();
            dep.spawn("approval").await.unwrap();
        }
        first = false;
    }
    // Districts decide their cells' collectives; provinces their districts';
    // central its provinces' and, last, its own.
    for &di in &districts {
        let batch: Vec<_> = w.units[di]
            .children
            .iter()
            .map(|c| (w.units[*c].collective.clone(), Grade::Good, None))
            .collect();
        decide(d, &me, &w, w.units[di].org, &format!("cells-{di}"), &batch).await;
        expected_log.extend(batch.iter().map(|(n, g, _)| (n.clone(), *g, None)));
    }
    for &pi in &w.units[0].children {
        let batch: Vec<_> = w.units[pi]
            .children
            .iter()
            .map(|c| (w.units[*c].collective.clone(), Grade::Good, None))
            .collect();
        decide(
            d,
            &me,
            &w,
            w.units[pi].org,
            &format!("districts-{pi}"),
            &batch,
        )
        .await;
        expected_log.extend(batch.iter().map(|(n, g, _)| (n.clone(), *g, None)));
    }
    let batch: Vec<_> = w.units[0]
        .children
        .iter()
        .map(|c| (w.units[*c].collective.clone(), Grade::Good, None))
        .collect();
    decide(d, &me, &w, w.root, "provinces", &batch).await;
    expected_log.extend(batch.iter().map(|(n, g, _)| (n.clone(), *g, None)));
    decide(
        d,
        &me,
        &w,
        w.root,
        "tw",
        &[("TW".into(), Grade::Good, None)],
    )
    .await;
    expected_log.push(("TW".into(), Grade::Good, None));

    // One re-grade (form 03): a completed member becomes good.
    let regraded = w.units[districts[0]]
        .children
        .iter()
        .flat_map(|c| w.units[*c].members.clone())
        .nth(12)
        .unwrap();
    let log = audit_log(d, &me).await;
    let current = log
        .iter()
        .rev()
        .find(|r| r["dossier"] == json!(w.dossier[&regraded]))
        .unwrap();
    d.eventually(&me, "approval", "decide_batch.v1", json!({"cycle": w.cycle, "authority": w.units[districts[0]].org, "number": "03-QĐ/HU", "kind": "regrade",
        "grades": [{"dossier": w.dossier[&regraded], "grade": "good", "supersedes": current["seq"], "reason": "Khiếu nại được chấp nhận"}]}))
        .await
        .unwrap();
    expected_log.push((regraded.clone(), Grade::Good, current["seq"].as_u64()));
    planned.insert(regraded, Grade::Good);

    // The cycle completes, and submission learns it.
    wait_for(
        Duration::from_secs(30),
        "cycle_completed at submission",
        || async {
            let c = d
                .send(&me, "submission", "get_cycle.v1", json!({"cycle": w.cycle}))
                .await
                .ok()?;
            (!c["completed_at"].is_null()).then_some(())
        },
    )
    .await
    .unwrap();

    let log = audit_log(d, &me).await;
    let mut grades = BTreeMap::new();
    let mut entries = Vec::new();
    for r in &log {
        let name = w.name_of[r["dossier"].as_str().unwrap()].clone();
        let grade: Grade = serde_json::from_value(r["grade"].clone()).unwrap();
        grades.insert(name.clone(), grade);
        entries.push((name, grade, r["supersedes"].as_u64()));
    }
    assert_eq!(grades, planned, "every dossier ends with its planned grade");
    assert_eq!(
        entries, expected_log,
        "the decision log holds each accepted grade once, in order"
    );
    check_quota(&log, &w);
    let v = d
        .send(&me, "approval", "verify_log.v1", json!({}))
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], json!(log.len()));
    check_audit_stream(dep, &log).await;
    Outcome {
        grades,
        log: entries,
    }
}

async fn wait_refusal(
    d: &Driver,
    me: &Actor,
    w: &World,
    authority: OrgId,
    grades: &[(String, Grade, Option<&str>)],
) -> gradeflow_proto::Rejection {
    let body = json!({"cycle": w.cycle, "authority": authority, "number": "draft",
        "grades": grades.iter().map(|(n, g, r)| json!({"dossier": w.dossier[n], "grade": g, "override_reason": r})).collect::<Vec<_>>()});
    // Until approval has observed every appraisal the refusal may be
    // `wrong_state`; the rule refusal is what the test is after.
    wait_for(Duration::from_secs(30), "a rule refusal", || async {
        match d
            .send(me, "approval", "decide_batch.v1", body.clone())
            .await
        {
            Err(f) => f
                .rejection()
                .filter(|r| r.code == "rule_violation")
                .cloned(),
            Ok(v) => panic!("a batch that breaks the rules was accepted: {v}"),
        }
    })
    .await
    .unwrap()
}

async fn audit_log(d: &Driver, me: &Actor) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = d
            .send(
                me,
                "approval",
                "audit_decisions.v1",
                json!({"after": after, "limit": 1000}),
            )
            .await
            .unwrap();
        let records = page["records"].as_array().unwrap().clone();
        if records.is_empty() {
            return out;
        }
        after = records.last().unwrap()["seq"].as_u64().unwrap();
        out.extend(records);
    }
}

/// Excellent ≤ floor(0.2 × good) for every authority and group, counting
/// current grades.
fn check_quota(log: &[Value], _w: &World) {
    let mut current: BTreeMap<String, (String, String, Grade)> = BTreeMap::new();
    for r in log {
        let grade: Grade = serde_json::from_value(r["grade"].clone()).unwrap();
        current.insert(
            r["dossier"].as_str().unwrap().to_owned(),
            (
                r["authority"].as_str().unwrap().to_owned(),
                String::new(),
                grade,
            ),
        );
    }
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (authority, _, grade) in current.values() {
        let c = counts.entry(authority.clone()).or_default();
        match grade {
            Grade::Excellent => c.0 += 1,
            Grade::Good => c.1 += 1,
            _ => {}
        }
    }
    for (authority, (e, g)) in counts {
        assert!(
            5 * e <= g,
            "authority {authority}: {e} excellent against {g} good"
        );
    }
}

async fn whole_cycle(postgres: bool, crash: bool) -> Outcome {
    let mut dep = Deployment::start(postgres).await.unwrap();
    let outcome = run_cycle(&mut dep, crash).await;
    wait_consumers_caught_up(&dep).await;
    dep.stop().await.unwrap();
    check_exactly_once(&dep).await;
    dep.cleanup().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cycle_runs_to_completion_on_sqlite() {
    let outcome = whole_cycle(false, false).await;
    assert_eq!(outcome.grades.len(), 60 + 19);
    // 79 first grades and one re-grade.
    assert_eq!(outcome.log.len(), 80);
    assert_eq!(outcome.log.iter().filter(|e| e.2.is_some()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cycle_runs_to_completion_on_postgres() {
    let outcome = whole_cycle(true, false).await;
    assert_eq!(outcome.log.len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_survives_services_killed_mid_way_with_identical_results() {
    // The grades and the log are checked against the plan inside the run:
    // identical to an undisturbed cycle, nothing lost, nothing doubled.
    let crashed = whole_cycle(false, true).await;
    assert_eq!(crashed.log.len(), 80);
    assert_eq!(crashed.grades.len(), 79);
}
