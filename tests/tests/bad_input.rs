//! Bad input at every command kind, against a running deployment (the real
//! `gradeflow` binary, each service its own process, real NATS and SQLite or
//! PostgreSQL). Every refusal comes back with its named code and a non-empty
//! English and Vietnamese message, and leaves all three event stores exactly
//! as they were; a command sent again under the same command id after it
//! succeeded gets the first answer and appends nothing.
//!
//! The tree is small: TW → P01 → P01.D01 → P01.D01.C01, whose members A
//! (appraised) and B (reviewed) and whose collective K1 (self-review filed)
//! take part in the cycle, and TW → P02 → P02.D01 → P02.D01.C01 with member
//! C (reviewed) and collective K2 (open). The scoped actors hold their roles
//! at P01, so everything under P02 lies outside their scope.
//!
//! The cases are one table per command kind: malformed payloads (a string,
//! an array, a number or null instead of an object; a missing field; a value
//! of the wrong type), unknown fields, the unknown grade `outstanding`, wrong
//! states, orgs and dossiers outside the actor's scope or role, and the
//! domain's own refusals (duplicate code, bad tier, unknown org, cycle and
//! dossier, a score out of range, a return without a reason, the quota);
//! plus an unreadable envelope on every command's subject. The payload a
//! case spoils is one the service would accept, so a refusal is owed to the
//! spoiled part alone. "Unchanged" is checked on the heads (position and
//! hash) of the three stores, read beside the running services, against
//! heads taken once the deployment is quiet (every consumer caught up, no
//! head moving for 300 ms), after every refusal and again once everything
//! could have travelled.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_proto::commands::{
    AppraiseDossier, Command, DecideBatch, MergeOrgs, MoveOrg, OpenCycle, RecordMeeting,
    RegisterOrg, RegisterSubject, RenameOrg, ReturnDossier, SubmitSelfReview,
};
use gradeflow_proto::{Actor, CommandId, CommandReply, CycleId, DossierId, OrgId, Role};
use serde_json::{json, Value};
use system_tests::{central, wait_for, Deployment, Driver, SERVICES};

const INVALID: &str = "invalid_input";
const MALFORMED: &str = "malformed_command";
const SCOPE: &str = "out_of_scope";
const STATE: &str = "wrong_state";
const UNKNOWN_ORG: &str = "unknown_org";
const UNKNOWN_DOSSIER: &str = "unknown_dossier";
const UNKNOWN_CYCLE: &str = "unknown_cycle";

/// Every command kind: (service, kind).
const KINDS: [(&str, &str); 11] = [
    (RegisterOrg::SERVICE, RegisterOrg::KIND),
    (RenameOrg::SERVICE, RenameOrg::KIND),
    (MoveOrg::SERVICE, MoveOrg::KIND),
    (MergeOrgs::SERVICE, MergeOrgs::KIND),
    (OpenCycle::SERVICE, OpenCycle::KIND),
    (RegisterSubject::SERVICE, RegisterSubject::KIND),
    (SubmitSelfReview::SERVICE, SubmitSelfReview::KIND),
    (RecordMeeting::SERVICE, RecordMeeting::KIND),
    (AppraiseDossier::SERVICE, AppraiseDossier::KIND),
    (ReturnDossier::SERVICE, ReturnDossier::KIND),
    (DecideBatch::SERVICE, DecideBatch::KIND),
];

/// Refusals that mean "not observed yet" while the fixture is built.
const NOT_YET: [&str; 4] = [UNKNOWN_DOSSIER, UNKNOWN_ORG, UNKNOWN_CYCLE, STATE];

/// The (position, hash) heads of the three stores, in [`SERVICES`] order.
type Heads = Vec<Option<(i64, String)>>;

/// The three services' event stores, opened beside the running services.
struct Stores(Vec<Store>);

impl Stores {
    async fn open(dep: &Deployment) -> Stores {
        let mut stores = Vec::new();
        for service in SERVICES {
            let (url, schema) = dep.store_location(service);
            let opts = StoreOptions {
                schema,
                pool_size: 2,
                ..StoreOptions::default()
            };
            stores.push(Store::connect(&url, opts).await.unwrap());
        }
        Stores(stores)
    }

    async fn heads(&self) -> Heads {
        let mut heads = Vec::with_capacity(self.0.len());
        for store in &self.0 {
            heads.push(store.head().await.unwrap());
        }
        heads
    }

    /// Whether each service's outbox relay has published everything up to
    /// its store's head.
    async fn relayed(&self) -> bool {
        for (store, service) in self.0.iter().zip(SERVICES) {
            let head = store.head().await.unwrap().map_or(0, |(p, _)| p);
            if store.outbox_position(service).await.unwrap() < head {
                return false;
            }
        }
        true
    }

    async fn close(self) {
        for store in self.0 {
            store.close().await;
        }
    }
}

/// Whether every service's durable consumer has handled every published
/// event.
async fn consumers_idle(dep: &Deployment) -> bool {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let Ok(stream) = js.get_stream(dep.names.events_stream()).await else {
        return false;
    };
    for service in SERVICES {
        let durable = dep.names.durable(service);
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&durable).await else {
            return false;
        };
        match consumer.info().await {
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
            _ => return false,
        }
    }
    true
}

/// Waits until the deployment is quiet — every event relayed and consumed,
/// and no store's head moving across 300 ms — and returns the heads.
async fn quiet(dep: &Deployment, stores: &Stores) -> Heads {
    wait_for(Duration::from_secs(30), "a quiet deployment", || async {
        let settled = || async { stores.relayed().await && consumers_idle(dep).await };
        if !settled().await {
            return None;
        }
        let first = stores.heads().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = stores.heads().await;
        (first == second && settled().await).then_some(second)
    })
    .await
    .unwrap()
}

fn actor(sub: &str, role: Role, org: OrgId) -> Actor {
    Actor {
        sub: sub.into(),
        role,
        org,
    }
}

/// `v` with `key` set to `value`.
fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// `v` without `key`.
fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

/// A command the fixture or the duplicate check needs accepted: sent under
/// one command id until the service has observed what it depends on.
struct Accepted {
    label: &'static str,
    service: &'static str,
    kind: &'static str,
    actor: Actor,
    payload: Value,
    id: CommandId,
    result: Value,
}

async fn accept<C: Command>(
    d: &Driver,
    label: &'static str,
    actor: &Actor,
    payload: Value,
) -> Accepted {
    let id = CommandId::new();
    let outcome = wait_for(Duration::from_secs(30), label, || async {
        match d
            .client
            .reply(C::SERVICE, C::KIND, actor, payload.clone(), id, None)
            .await
        {
            Ok(CommandReply::Accepted { event_ids, result }) => Some(Ok((event_ids, result))),
            Ok(CommandReply::Rejected(r)) if NOT_YET.contains(&r.code.as_str()) => None,
            Ok(CommandReply::Rejected(r)) => Some(Err(r)),
            Err(_) => None,
        }
    })
    .await
    .unwrap();
    let (event_ids, result) = outcome.unwrap_or_else(|r| panic!("{label}: refused: {r:?}"));
    assert!(!event_ids.is_empty(), "{label}: accepted without events");
    Accepted {
        label,
        service: C::SERVICE,
        kind: C::KIND,
        actor: actor.clone(),
        payload,
        id,
        result,
    }
}

/// The fixture: the tree, the cycle and the dossiers.
struct Fixture {
    root: OrgId,
    p01: OrgId,
    p01_d: OrgId,
    p01_c: OrgId,
    p02: OrgId,
    p02_d: OrgId,
    p02_c: OrgId,
    cycle: String,
    /// P01.D01.C01's members: A appraised, B reviewed; K1 its collective,
    /// self-review filed.
    a: String,
    b: String,
    k1: String,
    /// P02.D01.C01's member C, reviewed; K2 its collective, open.
    c: String,
    k2: String,
}

const TIERS: [&str; 4] = ["cell", "district", "province", "central"];

fn review(dossier: &str) -> Value {
    json!({"dossier": dossier, "score": {"general": 28, "tasks": 65}, "proposed_grade": "good",
           "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
           "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"})
}

fn meeting(dossier: &str) -> Value {
    json!({"dossier": dossier, "proposed_grade": "good", "votes": {"good": 7}, "minutes": "Biên bản họp"})
}

fn appraisal(dossier: &str) -> Value {
    json!({"dossier": dossier, "recommended_grade": "good", "facts": {}, "notes": "Thẩm định"})
}

fn decision(f: &Fixture, authority: OrgId, grades: Value) -> Value {
    json!({"cycle": f.cycle, "authority": authority, "number": "01-QĐ/ĐU", "grades": grades})
}

async fn build(d: &Driver) -> Fixture {
    let root = OrgId::new();
    let boss = central(root);
    accept::<RegisterOrg>(
        d,
        "the root",
        &boss,
        json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}),
    )
    .await;
    let org = |code: &'static str, tier: &'static str, parent: OrgId| {
        let boss = boss.clone();
        async move {
            let body = json!({"code": code, "name": code, "tier": tier, "parent": parent});
            let r = accept::<RegisterOrg>(d, code, &boss, body).await;
            r.result["id"].as_str().unwrap().parse::<OrgId>().unwrap()
        }
    };
    let p01 = org("P01", "province", root).await;
    let p01_d = org("P01.D01", "district", p01).await;
    let p01_c = org("P01.D01.C01", "cell", p01_d).await;
    let p02 = org("P02", "province", root).await;
    let p02_d = org("P02.D01", "district", p02).await;
    let p02_c = org("P02.D01.C01", "cell", p02_d).await;
    let cycle = accept::<OpenCycle>(
        d,
        "the cycle",
        &boss,
        json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025", "tiers": TIERS,
               "deadlines": {"cell": "2026-12-15"}, "quota": {"ratio": 0.2, "rounding": "floor"}}),
    )
    .await
    .result["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let subject = |kind: &'static str, org: OrgId, name: &'static str, category: &'static str| {
        let boss = boss.clone();
        let cycle = cycle.clone();
        async move {
            let body = json!({"cycle": cycle, "kind": kind, "org": org, "name": name, "category": category});
            let r = accept::<RegisterSubject>(d, name, &boss, body).await;
            assert_eq!(r.result["state"], "open");
            r.result["dossier"].as_str().unwrap().to_owned()
        }
    };
    let a = subject("individual", p01_c, "Nguyễn Văn A", "2B").await;
    let b = subject("individual", p01_c, "Trần Thị B", "2B").await;
    let k1 = subject("collective", p01_c, "Chi bộ P01.D01.C01", "01").await;
    let c = subject("individual", p02_c, "Lê Văn C", "2B").await;
    let k2 = subject("collective", p02_c, "Chi bộ P02.D01.C01", "01").await;
    for dossier in [&a, &b, &c] {
        accept::<SubmitSelfReview>(d, "a self-review", &boss, review(dossier)).await;
        accept::<RecordMeeting>(d, "a meeting", &boss, meeting(dossier)).await;
    }
    accept::<SubmitSelfReview>(d, "K1's self-review", &boss, review(&k1)).await;
    accept::<AppraiseDossier>(d, "A's appraisal", &boss, appraisal(&a)).await;
    Fixture {
        root,
        p01,
        p01_d,
        p01_c,
        p02,
        p02_d,
        p02_c,
        cycle,
        a,
        b,
        k1,
        c,
        k2,
    }
}

/// One refusal the table expects.
struct Case {
    what: &'static str,
    service: &'static str,
    kind: &'static str,
    actor: Actor,
    payload: Value,
    code: &'static str,
    /// `details` at a JSON pointer must equal the value.
    details: Vec<(&'static str, Value)>,
    /// A further check of `details`.
    check: Option<fn(&Value) -> bool>,
}

impl Case {
    fn field(&mut self, field: &str) -> &mut Self {
        self.details.push(("/field", json!(field)));
        self
    }

    fn check(&mut self, check: fn(&Value) -> bool) -> &mut Self {
        self.check = Some(check);
        self
    }
}

#[derive(Default)]
struct Table {
    current: (&'static str, &'static str),
    cases: Vec<Case>,
}

impl Table {
    /// The following cases are of `C`.
    fn kind<C: Command>(&mut self) {
        self.current = (C::SERVICE, C::KIND);
    }

    fn add(
        &mut self,
        what: &'static str,
        actor: &Actor,
        payload: Value,
        code: &'static str,
    ) -> &mut Case {
        self.cases.push(Case {
            what,
            service: self.current.0,
            kind: self.current.1,
            actor: actor.clone(),
            payload,
            code,
            details: Vec::new(),
            check: None,
        });
        self.cases.last_mut().unwrap()
    }
}

/// The actors of the tables.
struct Actors {
    /// Central staff at the root: may do everything.
    boss: Actor,
    /// Roles granted at P01.
    central1: Actor,
    sub1: Actor,
    app1: Actor,
    auth1: Actor,
    /// A submitter at the root (may not manage orgs or cycles).
    sub0: Actor,
}

fn actors(f: &Fixture) -> Actors {
    Actors {
        boss: central(f.root),
        central1: actor("can.bo.tinh.p01", Role::Central, f.p01),
        sub1: actor("bi.thu.p01", Role::Submitter, f.p01),
        app1: actor("ubkt.p01", Role::Appraiser, f.p01),
        auth1: actor("btv.p01", Role::Authority, f.p01),
        sub0: actor("van.phong.tw", Role::Submitter, f.root),
    }
}

/// The cases of the registry and cycle commands.
#[rustfmt::skip]
fn registry_cases(t: &mut Table, f: &Fixture, who: &Actors) {
    let boss = &who.boss;
    t.kind::<RegisterOrg>();
    let ok = json!({"code": "P01.D01.C09", "name": "Chi bộ 9", "tier": "cell", "parent": f.p01_d});
    t.add("a JSON string instead of an object", boss, json!("P01.D01.C09"), INVALID);
    t.add("a JSON array of the object", boss, json!([ok]), INVALID);
    t.add("its fields as an array, in order", boss, json!([null, "P01.D01.C09", "Chi bộ 9", "cell", f.p01_d]), INVALID);
    t.add("null instead of an object", boss, Value::Null, INVALID);
    t.add("a missing tier", boss, without(ok.clone(), "tier"), INVALID);
    t.add("a missing code", boss, without(ok.clone(), "code"), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "colour", json!("đỏ")), INVALID);
    t.add("a parent that is no uuid", boss, with(ok.clone(), "parent", json!("P01.D01")), INVALID);
    t.add("a code that is a number", boss, with(ok.clone(), "code", json!(9)), INVALID);
    t.add("a blank code", boss, with(ok.clone(), "code", json!("  ")), INVALID).field("code");
    t.add("a blank name", boss, with(ok.clone(), "name", json!("")), INVALID).field("name");
    t.add("a province code taken", boss, json!({"code": "P02", "name": "Tỉnh", "tier": "province", "parent": f.root}), "duplicate_code");
    t.add("a cell code taken under another parent", boss, with(ok.clone(), "code", json!("P02.D01.C01")), "duplicate_code");
    t.add("a district right under the root", boss, json!({"code": "D99", "name": "Huyện", "tier": "district", "parent": f.root}), "bad_tier");
    t.add("a tier no hierarchy has", boss, with(ok.clone(), "tier", json!("galaxy")), "bad_tier");
    t.add("a second root", boss, json!({"code": "TW2", "name": "Gốc 2", "tier": "central", "parent": null}), "conflict");
    t.add("an unknown parent", boss, with(ok.clone(), "parent", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("P01's central staff registering under P02", &who.central1, json!({"code": "P02.D09", "name": "Huyện 9", "tier": "district", "parent": f.p02}), SCOPE);
    t.add("a submitter registering an org", &who.sub1, ok.clone(), SCOPE);

    t.kind::<RenameOrg>();
    let ok = json!({"org": f.p01_c, "name": "Chi bộ Một"});
    t.add("a JSON string instead of an object", boss, json!("Chi bộ Một"), INVALID);
    t.add("its fields as an array, in order", boss, json!([f.p01_c, "Chi bộ Một"]), INVALID);
    t.add("a missing name", boss, without(ok.clone(), "name"), INVALID);
    t.add("a missing org", boss, without(ok.clone(), "org"), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "code", json!("X1")), INVALID);
    t.add("an org that is no uuid", boss, with(ok.clone(), "org", json!("P01.D01.C01")), INVALID);
    t.add("a blank name", boss, with(ok.clone(), "name", json!(" \t ")), INVALID).field("name");
    t.add("an unknown org", boss, with(ok.clone(), "org", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("P01's central staff renaming P02's district", &who.central1, with(ok.clone(), "org", json!(f.p02_d)), SCOPE);
    t.add("a submitter renaming its own cell", &who.sub1, ok.clone(), SCOPE);

    t.kind::<MoveOrg>();
    let ok = json!({"org": f.p01_c, "parent": f.p02_d});
    t.add("a number instead of an object", boss, json!(42), INVALID);
    t.add("its fields as an array, in order", boss, json!([f.p01_c, f.p02_d]), INVALID);
    t.add("a missing parent", boss, without(ok.clone(), "parent"), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "when", json!("2026-01-01")), INVALID);
    t.add("an unknown org", boss, with(ok.clone(), "org", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("an unknown parent", boss, with(ok.clone(), "parent", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("P01's central staff moving a P01 cell under P02", &who.central1, ok.clone(), SCOPE);
    t.add("P01's central staff moving P02's cell under P01", &who.central1, json!({"org": f.p02_c, "parent": f.p01_d}), SCOPE);
    t.add("a cell moved under a province", boss, with(ok.clone(), "parent", json!(f.p02)), "bad_tier");
    t.add("the root moved", boss, json!({"org": f.root, "parent": f.p01}), INVALID).field("org");
    t.add("a district moved under its own cell", boss, json!({"org": f.p01_d, "parent": f.p01_c}), INVALID).field("parent");

    t.kind::<MergeOrgs>();
    let ok = json!({"from": [f.p02_c], "into": f.p01_c});
    t.add("a JSON string instead of an object", boss, json!("merge"), INVALID);
    t.add("its fields as an array, in order", boss, json!([[f.p02_c], f.p01_c]), INVALID);
    t.add("a missing into", boss, without(ok.clone(), "into"), INVALID);
    t.add("from that is no list", boss, with(ok.clone(), "from", json!(f.p02_c)), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "reason", json!("sáp nhập")), INVALID);
    t.add("nothing to merge", boss, with(ok.clone(), "from", json!([])), INVALID).field("from");
    t.add("an org merged into itself", boss, with(ok.clone(), "from", json!([f.p01_c])), INVALID).field("from");
    t.add("an org listed twice", boss, with(ok.clone(), "from", json!([f.p02_c, f.p02_c])), INVALID).field("from");
    t.add("an unknown org merged", boss, with(ok.clone(), "from", json!([OrgId::new()])), UNKNOWN_ORG);
    t.add("an unknown org merged into", boss, with(ok.clone(), "into", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("a district merged into a cell", boss, with(ok.clone(), "from", json!([f.p02_d])), "bad_tier");
    t.add("P01's central staff merging P02's cell", &who.central1, ok.clone(), SCOPE);
    t.add("a submitter merging orgs", &who.sub1, json!({"from": [f.p01_c], "into": f.p02_c}), SCOPE);

    t.kind::<OpenCycle>();
    let quota = json!({"ratio": 0.2, "rounding": "floor"});
    let deadlines = json!({"cell": "2027-12-15"});
    let ok = json!({"year": 2027, "kind": "annual", "rulebook": "qd366-2025", "tiers": TIERS, "deadlines": deadlines, "quota": quota});
    t.add("a JSON string instead of an object", boss, json!("2027"), INVALID);
    t.add("its fields as an array, in order", boss, json!([null, 2027, "annual", "qd366-2025", TIERS, deadlines, quota]), INVALID);
    t.add("missing tiers", boss, without(ok.clone(), "tiers"), INVALID);
    t.add("a missing rulebook", boss, without(ok.clone(), "rulebook"), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "name", json!("Năm 2027")), INVALID);
    t.add("an unknown field in the quota", boss, with(ok.clone(), "quota", json!({"ratio": 0.2, "bonus": 1})), INVALID);
    t.add("an unknown rulebook", boss, with(ok.clone(), "rulebook", json!("qd999-2030")), INVALID);
    t.add("an unknown cycle kind", boss, with(ok.clone(), "kind", json!("weekly")), INVALID);
    t.add("a deadline that is no date", boss, with(ok.clone(), "deadlines", json!({"cell": "mid-December"})), INVALID);
    t.add("a year that is a string", boss, with(ok.clone(), "year", json!("2027")), INVALID);
    t.add("an implausible year", boss, with(ok.clone(), "year", json!(1800)), INVALID).field("year");
    t.add("a quota ratio above 0.25", boss, with(ok.clone(), "quota", json!({"ratio": 0.5, "rounding": "floor"})), INVALID).field("quota.ratio");
    t.add("a single tier", boss, with(ok.clone(), "tiers", json!(["central"])), INVALID).field("tiers");
    t.add("a deadline for a tier not in the list", boss, with(ok.clone(), "deadlines", json!({"ward": "2027-12-15"})), INVALID).field("deadlines");
    t.add("a tier list topped by the province", boss, with(ok.clone(), "tiers", json!(["cell", "district", "province"])), "bad_tier");
    t.add("a second annual review of 2026", boss, with(with(ok.clone(), "year", json!(2026)), "id", json!(CycleId::new())), "conflict");
    t.add("P01's central staff opening a cycle", &who.central1, ok.clone(), SCOPE);
    t.add("a submitter at the root opening a cycle", &who.sub0, ok.clone(), SCOPE);
}

/// The cases of the subject, self-review and meeting commands.
#[rustfmt::skip]
fn submission_cases(t: &mut Table, f: &Fixture, who: &Actors) {
    let (boss, sub1, app1) = (&who.boss, &who.sub1, &who.app1);
    t.kind::<RegisterSubject>();
    let ok = json!({"cycle": f.cycle, "kind": "individual", "org": f.p01_c, "name": "Phạm Văn D", "category": "2B"});
    t.add("a JSON string instead of an object", sub1, json!("Phạm Văn D"), INVALID);
    t.add("a JSON array of the object", sub1, json!([ok]), INVALID);
    t.add("its fields as an array, in order", sub1, json!([f.cycle, "individual", f.p01_c, "Phạm Văn D", "2B", false, "active", null]), INVALID);
    t.add("a missing name", sub1, without(ok.clone(), "name"), INVALID);
    t.add("a missing cycle", sub1, without(ok.clone(), "cycle"), INVALID);
    t.add("an unknown field", sub1, with(ok.clone(), "birthday", json!("1980-01-01")), INVALID);
    t.add("an unknown subject kind", sub1, with(ok.clone(), "kind", json!("family")), INVALID);
    t.add("an unknown category", sub1, with(ok.clone(), "category", json!("3Z")), INVALID);
    t.add("an unknown status", sub1, with(ok.clone(), "status", json!("retired")), INVALID);
    t.add("a leader flag that is a string", sub1, with(ok.clone(), "leader", json!("yes")), INVALID);
    t.add("a blank name", sub1, with(ok.clone(), "name", json!("   ")), INVALID).field("name");
    t.add("a collective filing form 2B", sub1, with(with(ok.clone(), "kind", json!("collective")), "org", json!(f.p01_d)), INVALID).field("category");
    t.add("an individual filing form 01", sub1, with(ok.clone(), "category", json!("01")), INVALID).field("category");
    t.add("the cell's collective a second time", sub1, json!({"cycle": f.cycle, "kind": "collective", "org": f.p01_c, "name": "Chi bộ", "category": "01"}), "duplicate_subject");
    t.add("an unknown cycle", sub1, with(ok.clone(), "cycle", json!(CycleId::new())), UNKNOWN_CYCLE);
    t.add("an unknown org", sub1, with(ok.clone(), "org", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("P01's submitter registering in P02's cell", sub1, with(ok.clone(), "org", json!(f.p02_c)), SCOPE);
    t.add("an appraiser registering a subject", app1, ok.clone(), SCOPE);

    t.kind::<SubmitSelfReview>();
    // K2 is open: the boss may file its self-review.
    let ok = review(&f.k2);
    t.add("a JSON string instead of an object", boss, json!("Bản tự kiểm điểm"), INVALID);
    t.add("a JSON array of the object", boss, json!([ok]), INVALID);
    t.add("its fields as an array, in order", boss, json!([f.k2, ok["score"], "good", ok["tasks"], true, "Bản tự kiểm điểm"]), INVALID);
    t.add("missing task counts", boss, without(ok.clone(), "tasks"), INVALID);
    t.add("a missing proposed grade", boss, without(ok.clone(), "proposed_grade"), INVALID);
    t.add("an unknown field", boss, with(ok.clone(), "signature", json!("A")), INVALID);
    t.add("an unknown field in the score", boss, with(ok.clone(), "score", json!({"general": 28, "tasks": 65, "bonus": 5})), INVALID);
    t.add("the unknown grade outstanding", boss, with(ok.clone(), "proposed_grade", json!("outstanding")), INVALID);
    t.add("a negative task count", boss, with(ok.clone(), "tasks", json!({"total": -1, "on_time": 0, "exceeded": 0, "late": 0, "not_done": 0})), INVALID);
    t.add("a score that is a string", boss, with(ok.clone(), "score", json!({"general": "28", "tasks": 65})), INVALID);
    t.add("a dossier that is no uuid", boss, with(ok.clone(), "dossier", json!("K2")), INVALID);
    t.add("a general score above 30", boss, with(ok.clone(), "score", json!({"general": 31, "tasks": 65})), INVALID).field("score.general");
    t.add("a negative general score", boss, with(ok.clone(), "score", json!({"general": -1, "tasks": 65})), INVALID).field("score.general");
    t.add("a task score above 70", boss, with(ok.clone(), "score", json!({"general": 28, "tasks": 71})), INVALID).field("score.tasks");
    t.add("no score under qd366-2025", boss, without(ok.clone(), "score"), INVALID).field("score");
    t.add("task counts that do not add up", boss, with(ok.clone(), "tasks", json!({"total": 10, "on_time": 5, "exceeded": 0, "late": 1, "not_done": 0})), INVALID).field("tasks");
    t.add("a self-review filed twice", sub1, review(&f.k1), STATE);
    t.add("a self-review of a reviewed dossier", sub1, review(&f.b), STATE);
    t.add("a self-review of an appraised dossier", sub1, review(&f.a), STATE);
    t.add("an unknown dossier", boss, with(ok.clone(), "dossier", json!(DossierId::new())), UNKNOWN_DOSSIER);
    t.add("P01's submitter on P02's dossier", sub1, ok.clone(), SCOPE);
    t.add("an appraiser filing a self-review", app1, ok.clone(), SCOPE);

    t.kind::<RecordMeeting>();
    // K1's self-review is filed: its meeting may be recorded.
    let ok = meeting(&f.k1);
    t.add("a JSON string instead of an object", sub1, json!("Biên bản"), INVALID);
    t.add("a JSON array of the object", sub1, json!([ok]), INVALID);
    t.add("its fields as an array, in order", sub1, json!([f.k1, "good", {"good": 7}, "Biên bản họp"]), INVALID);
    t.add("a missing proposed grade", sub1, without(ok.clone(), "proposed_grade"), INVALID);
    t.add("an unknown field", sub1, with(ok.clone(), "chair", json!("Bí thư")), INVALID);
    t.add("the unknown grade outstanding", sub1, with(ok.clone(), "proposed_grade", json!("outstanding")), INVALID);
    t.add("a vote for the unknown grade outstanding", sub1, with(ok.clone(), "votes", json!({"outstanding": 3})), INVALID);
    t.add("a vote count that is a string", sub1, with(ok.clone(), "votes", json!({"good": "many"})), INVALID);
    t.add("a negative vote count", sub1, with(ok.clone(), "votes", json!({"good": -1})), INVALID);
    t.add("a meeting before the self-review", boss, meeting(&f.k2), STATE);
    t.add("a meeting recorded twice", sub1, meeting(&f.b), STATE);
    t.add("a meeting on an appraised dossier", sub1, meeting(&f.a), STATE);
    t.add("an unknown dossier", sub1, with(ok.clone(), "dossier", json!(DossierId::new())), UNKNOWN_DOSSIER);
    t.add("P01's submitter on P02's dossier", sub1, meeting(&f.c), SCOPE);
    t.add("an appraiser recording a meeting", app1, ok.clone(), SCOPE);
}

/// The cases of the appraisal commands.
#[rustfmt::skip]
fn appraisal_cases(t: &mut Table, f: &Fixture, who: &Actors) {
    let (boss, sub1, app1, auth1) = (&who.boss, &who.sub1, &who.app1, &who.auth1);
    t.kind::<AppraiseDossier>();
    // B is reviewed and decided by P01.D01, within the appraiser's scope.
    let ok = appraisal(&f.b);
    t.add("a JSON string instead of an object", app1, json!("good"), INVALID);
    t.add("a JSON array of the object", app1, json!([ok]), INVALID);
    t.add("its fields as an array, in order", app1, json!([f.b, "good", {}, "Thẩm định"]), INVALID);
    t.add("a missing recommended grade", app1, without(ok.clone(), "recommended_grade"), INVALID);
    t.add("an unknown field", app1, with(ok.clone(), "score", json!(90)), INVALID);
    t.add("an unknown fact", app1, with(ok.clone(), "facts", json!({"mood": "good"})), INVALID);
    t.add("an unknown discipline level", app1, with(ok.clone(), "facts", json!({"discipline": {"level": "scolding", "duty_related": false, "previous_unit": false}})), INVALID);
    t.add("the unknown grade outstanding", app1, with(ok.clone(), "recommended_grade", json!("outstanding")), INVALID);
    t.add("a share above 1", app1, with(ok.clone(), "facts", json!({"low_confidence_ratio": 1.5})), INVALID).field("facts.low_confidence_ratio");
    t.add("an open dossier", boss, appraisal(&f.k2), STATE);
    t.add("a dossier before its meeting", app1, appraisal(&f.k1), STATE);
    t.add("a dossier appraised twice", app1, appraisal(&f.a), STATE);
    t.add("an unknown dossier", app1, with(ok.clone(), "dossier", json!(DossierId::new())), UNKNOWN_DOSSIER);
    t.add("P01's appraiser on P02's dossier", app1, appraisal(&f.c), SCOPE);
    t.add("a submitter appraising", sub1, ok.clone(), SCOPE);
    t.add("an authority appraising", auth1, ok.clone(), SCOPE);

    t.kind::<ReturnDossier>();
    let ok = json!({"dossier": f.b, "reason": "Thiếu biên bản hội nghị"});
    t.add("a JSON string instead of an object", app1, json!("Thiếu biên bản"), INVALID);
    t.add("a JSON array of the object", app1, json!([ok]), INVALID);
    t.add("its fields as an array, in order", app1, json!([f.b, "Thiếu biên bản hội nghị"]), INVALID);
    t.add("a missing reason", app1, without(ok.clone(), "reason"), INVALID);
    t.add("an unknown field", app1, with(ok.clone(), "deadline", json!("2026-12-01")), INVALID);
    t.add("a reason that is a number", app1, with(ok.clone(), "reason", json!(1)), INVALID);
    t.add("an empty reason", app1, with(ok.clone(), "reason", json!("")), INVALID).field("reason");
    t.add("a blank reason", app1, with(ok.clone(), "reason", json!(" \n ")), INVALID).field("reason");
    t.add("an open dossier", boss, json!({"dossier": f.k2, "reason": "Thiếu"}), STATE);
    t.add("a dossier before its meeting", app1, json!({"dossier": f.k1, "reason": "Thiếu"}), STATE);
    t.add("an unknown dossier", app1, with(ok.clone(), "dossier", json!(DossierId::new())), UNKNOWN_DOSSIER);
    t.add("P01's appraiser on P02's dossier", app1, with(ok.clone(), "dossier", json!(f.c)), SCOPE);
    t.add("a submitter returning", sub1, ok.clone(), SCOPE);
}

/// The cases of the decision command.
#[rustfmt::skip]
fn approval_cases(t: &mut Table, f: &Fixture, who: &Actors) {
    let (app1, auth1) = (&who.app1, &who.auth1);
    t.kind::<DecideBatch>();
    // A is appraised and decided by P01.D01.
    let grade_a = json!({"dossier": f.a, "grade": "good"});
    let ok = decision(f, f.p01_d, json!([grade_a]));
    let regrade = with(ok.clone(), "kind", json!("regrade"));
    t.add("a JSON string instead of an object", auth1, json!("01-QĐ/ĐU"), INVALID);
    t.add("a JSON array of a grade", auth1, json!([grade_a]), INVALID);
    t.add("its fields as an array, in order", auth1, json!([f.cycle, f.p01_d, "01-QĐ/ĐU", "decide", [grade_a], null]), INVALID);
    t.add("missing grades", auth1, without(ok.clone(), "grades"), INVALID);
    t.add("a missing number", auth1, without(ok.clone(), "number"), INVALID);
    t.add("an unknown field", auth1, with(ok.clone(), "signed_by", json!("Bí thư")), INVALID);
    t.add("an unknown field in a grade", auth1, with(ok.clone(), "grades", json!([{"dossier": f.a, "grade": "good", "note": "x"}])), INVALID);
    t.add("the unknown grade outstanding", auth1, with(ok.clone(), "grades", json!([{"dossier": f.a, "grade": "outstanding"}])), INVALID);
    t.add("an unknown decision kind", auth1, with(ok.clone(), "kind", json!("annul")), INVALID);
    t.add("grades that are no list", auth1, with(ok.clone(), "grades", grade_a.clone()), INVALID);
    t.add("a blank number", auth1, with(ok.clone(), "number", json!("  ")), INVALID).field("number");
    t.add("no grades", auth1, with(ok.clone(), "grades", json!([])), INVALID).field("grades");
    t.add("the same dossier twice", auth1, with(ok.clone(), "grades", json!([grade_a, grade_a])), INVALID);
    t.add("a first grade that supersedes a record", auth1, with(ok.clone(), "grades", json!([{"dossier": f.a, "grade": "good", "supersedes": 1}])), INVALID);
    t.add("a quota exception ratio above 1", auth1, with(ok.clone(), "quota_exception", json!({"ratio": 1.5, "reason": "Đơn vị xuất sắc"})), INVALID);
    t.add("a re-grade without a reason", auth1, with(regrade.clone(), "grades", json!([{"dossier": f.a, "grade": "good", "supersedes": 1}])), INVALID).field("reason");
    t.add("a reviewed dossier not yet appraised", auth1, decision(f, f.p01_d, json!([{"dossier": f.b, "grade": "good"}])), STATE);
    t.add("a re-grade of a dossier never decided", auth1, with(regrade.clone(), "grades", json!([{"dossier": f.a, "grade": "good", "supersedes": 1, "reason": "Khiếu nại"}])), STATE);
    t.add("a dossier another authority decides", auth1, decision(f, f.p01_d, json!([grade_a, {"dossier": f.c, "grade": "good"}])), "not_in_remit");
    t.add("an unknown dossier", auth1, decision(f, f.p01_d, json!([{"dossier": DossierId::new(), "grade": "good"}])), UNKNOWN_DOSSIER);
    t.add("an unknown cycle", auth1, with(ok.clone(), "cycle", json!(CycleId::new())), UNKNOWN_CYCLE);
    t.add("an unknown authority", auth1, with(ok.clone(), "authority", json!(OrgId::new())), UNKNOWN_ORG);
    t.add("P01's authority deciding for P02's district", auth1, decision(f, f.p02_d, json!([{"dossier": f.c, "grade": "good"}])), SCOPE);
    t.add("an appraiser deciding", app1, ok.clone(), SCOPE);
    t.add("an excellent over the quota", auth1, decision(f, f.p01_d, json!([{"dossier": f.a, "grade": "excellent"}])), "rule_violation")
        .check(|d| violation(d, |v| v["rule"] == "quota" && v["excellent"] == 1 && v["good"] == 0 && v["max_excellent"] == 0));
    t.add("a quota exception without its reason", auth1, with(ok.clone(), "quota_exception", json!({"ratio": 0.25})), "rule_violation")
        .check(|d| violation(d, |v| v["rule"] == "exception_reason_required"));
}

/// Whether `details` lists a violation that `is`.
fn violation(details: &Value, is: fn(&Value) -> bool) -> bool {
    details["violations"]
        .as_array()
        .is_some_and(|v| v.iter().any(is))
}

/// Sends every case; returns what went wrong. `before` follows a store that
/// moved (and is reported), so one fault is not reported by every later
/// case.
async fn run_cases(
    dep: &Deployment,
    d: &Driver,
    stores: &Stores,
    before: &mut Heads,
    cases: &[Case],
) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let label = format!("{} with {}", c.kind, c.what);
        let sent = d
            .client
            .reply(
                c.service,
                c.kind,
                &c.actor,
                c.payload.clone(),
                CommandId::new(),
                None,
            )
            .await;
        match sent {
            Ok(CommandReply::Rejected(r)) => {
                if r.code != c.code {
                    failures.push(format!(
                        "{label}: `{}` instead of `{}` ({}; {})",
                        r.code, c.code, r.message, r.details
                    ));
                }
                if r.message.trim().is_empty() || r.message_vi.trim().is_empty() {
                    failures.push(format!(
                        "{label}: a refusal without its two messages: {r:?}"
                    ));
                }
                for (pointer, expected) in &c.details {
                    if r.details.pointer(pointer) != Some(expected) {
                        failures.push(format!(
                            "{label}: details{pointer} is not {expected}: {}",
                            r.details
                        ));
                    }
                }
                if c.check.is_some_and(|check| !check(&r.details)) {
                    failures.push(format!("{label}: unexpected details {}", r.details));
                }
            }
            Ok(CommandReply::Accepted { event_ids, result }) => failures.push(format!(
                "{label}: accepted with {} events: {result}",
                event_ids.len()
            )),
            Err(e) => failures.push(format!("{label}: no answer: {e}")),
        }
        let now = stores.heads().await;
        if now != *before {
            failures.push(format!("{label}: a store changed: {before:?} → {now:?}"));
            *before = quiet(dep, stores).await;
        }
    }
    failures
}

/// An unreadable request and an envelope without its actor on every
/// command's subject: `malformed_command`, nothing changed.
async fn malformed_envelopes(dep: &Deployment, stores: &Stores, before: &Heads) -> Vec<String> {
    let mut failures = Vec::new();
    for (service, kind) in KINDS {
        let subject = dep.names.command_subject(service, kind);
        let no_actor = json!({"command_id": CommandId::new(), "kind": kind, "payload": {}});
        for (what, body) in [
            ("bytes that are no JSON", b"{\"command_id\": ".to_vec()),
            (
                "an envelope without its actor",
                no_actor.to_string().into_bytes(),
            ),
        ] {
            let label = format!("{kind} with {what}");
            let answer = dep.nats.request(subject.clone(), body.into()).await;
            match answer.map(|m| serde_json::from_slice::<CommandReply>(&m.payload)) {
                Ok(Ok(CommandReply::Rejected(r))) => {
                    if r.code != MALFORMED {
                        failures.push(format!("{label}: `{}` instead of `{MALFORMED}`", r.code));
                    }
                    if r.message.trim().is_empty() || r.message_vi.trim().is_empty() {
                        failures.push(format!("{label}: a refusal without its two messages"));
                    }
                }
                other => failures.push(format!("{label}: answered {other:?}")),
            }
            if stores.heads().await != *before {
                failures.push(format!("{label}: a store changed"));
            }
        }
    }
    failures
}

/// One success of every command kind, each under its own command id.
async fn successes(d: &Driver, f: &Fixture, who: &Actors) -> Vec<Accepted> {
    let boss = &who.boss;
    let sub2 = actor("bi.thu.p02", Role::Submitter, f.p02);
    let app2 = actor("ubkt.p02", Role::Appraiser, f.p02);
    let mut done = Vec::new();
    let cell = accept::<RegisterOrg>(
        d,
        "a new cell",
        boss,
        json!({"code": "P01.D01.C02", "name": "Chi bộ 2", "tier": "cell", "parent": f.p01_d}),
    )
    .await;
    let c02: OrgId = cell.result["id"].as_str().unwrap().parse().unwrap();
    done.push(cell);
    done.push(
        accept::<RenameOrg>(
            d,
            "its rename",
            boss,
            json!({"org": c02, "name": "Chi bộ Hai"}),
        )
        .await,
    );
    done.push(
        accept::<MoveOrg>(
            d,
            "its move to P02",
            boss,
            json!({"org": c02, "parent": f.p02_d}),
        )
        .await,
    );
    done.push(
        accept::<MergeOrgs>(
            d,
            "its merge into P02's cell",
            boss,
            json!({"from": [c02], "into": f.p02_c}),
        )
        .await,
    );
    done.push(
        accept::<OpenCycle>(
            d,
            "a quarterly cycle",
            boss,
            json!({"year": 2026, "kind": "quarterly", "rulebook": "qd366-2025", "tiers": TIERS}),
        )
        .await,
    );
    let member = accept::<RegisterSubject>(
        d,
        "a new member of P02's cell",
        &sub2,
        json!({"cycle": f.cycle, "kind": "individual", "org": f.p02_c, "name": "Hoàng Văn E", "category": "2B"}),
    )
    .await;
    let e = member.result["dossier"].as_str().unwrap().to_owned();
    done.push(member);
    done.push(accept::<SubmitSelfReview>(d, "E's self-review", &sub2, review(&e)).await);
    done.push(accept::<RecordMeeting>(d, "E's meeting", &sub2, meeting(&e)).await);
    done.push(accept::<AppraiseDossier>(d, "B's appraisal", &who.app1, appraisal(&f.b)).await);
    done.push(
        accept::<ReturnDossier>(
            d,
            "C's return",
            &app2,
            json!({"dossier": f.c, "reason": "Thiếu biên bản hội nghị"}),
        )
        .await,
    );
    done.push(
        accept::<DecideBatch>(
            d,
            "A's decision",
            &who.auth1,
            decision(f, f.p01_d, json!([{"dossier": f.a, "grade": "good"}])),
        )
        .await,
    );
    done
}

/// Each success sent again under its command id: the first answer, no
/// events, no store moved.
async fn resend(d: &Driver, stores: &Stores, before: &Heads, done: &[Accepted]) -> Vec<String> {
    let mut failures = Vec::new();
    for a in done {
        let label = format!("{} ({}) sent again", a.kind, a.label);
        match d
            .client
            .reply(a.service, a.kind, &a.actor, a.payload.clone(), a.id, None)
            .await
        {
            Ok(CommandReply::Accepted { event_ids, result }) => {
                if result != a.result {
                    failures.push(format!("{label}: {result} instead of {}", a.result));
                }
                if !event_ids.is_empty() {
                    failures.push(format!("{label}: {} new events", event_ids.len()));
                }
            }
            other => failures.push(format!("{label}: answered {other:?}")),
        }
        if stores.heads().await != *before {
            failures.push(format!("{label}: a store changed"));
        }
    }
    failures
}

/// Wrong states (and orgs gone) that only exist after the successes.
#[rustfmt::skip]
fn later_cases(t: &mut Table, f: &Fixture, who: &Actors, c02: OrgId) {
    let boss = &who.boss;
    t.kind::<DecideBatch>();
    t.add("a dossier decided already", &who.auth1, decision(f, f.p01_d, json!([{"dossier": f.a, "grade": "good"}])), STATE);
    t.kind::<AppraiseDossier>();
    t.add("a decided dossier", &who.app1, appraisal(&f.a), STATE);
    t.kind::<ReturnDossier>();
    t.add("a decided dossier", &who.app1, json!({"dossier": f.a, "reason": "Thiếu"}), STATE);
    t.kind::<RecordMeeting>();
    t.add("a returned dossier", boss, meeting(&f.c), STATE);
    t.kind::<RegisterOrg>();
    t.add("the code of a merged org", boss, json!({"code": "P01.D01.C02", "name": "Chi bộ 2", "tier": "cell", "parent": f.p01_d}), "duplicate_code");
    t.kind::<RenameOrg>();
    t.add("a merged org", boss, json!({"org": c02, "name": "Chi bộ Ba"}), UNKNOWN_ORG);
    t.kind::<RegisterSubject>();
    t.add("a merged org", boss, json!({"cycle": f.cycle, "kind": "individual", "org": c02, "name": "Vũ Thị F", "category": "2B"}), UNKNOWN_ORG);
}

async fn bad_input(postgres: bool) {
    let started = std::time::Instant::now();
    let dep = Deployment::start(postgres).await.unwrap();
    let driver = Driver::new(&dep);
    let d = &driver;
    let f = build(d).await;
    let who = actors(&f);
    let stores = Stores::open(&dep).await;
    let mut failures = Vec::new();

    // Refusals on the fixture as built.
    let mut before = quiet(&dep, &stores).await;
    let mut t = Table::default();
    registry_cases(&mut t, &f, &who);
    submission_cases(&mut t, &f, &who);
    appraisal_cases(&mut t, &f, &who);
    approval_cases(&mut t, &f, &who);
    for (_, kind) in KINDS {
        assert!(t.cases.iter().any(|c| c.kind == kind), "no case for {kind}");
    }
    failures.extend(run_cases(&dep, d, &stores, &mut before, &t.cases).await);
    failures.extend(malformed_envelopes(&dep, &stores, &before).await);
    // Nothing travelled from a refusal either.
    let after = quiet(&dep, &stores).await;
    if after != before {
        failures.push(format!(
            "the stores moved after the refusals: {before:?} → {after:?}"
        ));
    }
    // What follows builds on the fixture as it was: stop at a fault here.
    let refusals = t.cases.len() + 2 * KINDS.len();
    assert_none(&failures, refusals);

    // One success per kind, then each sent again under its command id.
    let done = successes(d, &f, &who).await;
    let before = quiet(&dep, &stores).await;
    failures.extend(resend(d, &stores, &before, &done).await);
    let c02: OrgId = done[0].result["id"].as_str().unwrap().parse().unwrap();
    let mut later = Table::default();
    later_cases(&mut later, &f, &who, c02);
    let mut heads = before.clone();
    failures.extend(run_cases(&dep, d, &stores, &mut heads, &later.cases).await);
    let after = quiet(&dep, &stores).await;
    if after != before {
        failures.push(format!(
            "the stores moved after the repeats and refusals: {before:?} → {after:?}"
        ));
    }

    stores.close().await;
    dep.cleanup().await;
    let total = refusals + done.len() + later.cases.len();
    assert_none(&failures, total);
    eprintln!(
        "{total} bad inputs and repeats answered as expected in {:?}",
        started.elapsed()
    );
}

/// Fails with every failure listed.
fn assert_none(failures: &[String], checks: usize) {
    assert!(
        failures.is_empty(),
        "{} of {checks} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_cycle_under_way_when_each_command_gets_bad_input_or_a_repeat_then_it_is_answered_by_name_and_no_store_moves_on_sqlite(
) {
    bad_input(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_cycle_under_way_when_each_command_gets_bad_input_or_a_repeat_then_it_is_answered_by_name_and_no_store_moves_on_postgres(
) {
    bad_input(true).await;
}
