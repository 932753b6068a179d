//! The auditor's tools against a real deployment: the four services run
//! in-process on their own stores (SQLite files in a fresh data dir, or
//! schemas of a fresh PostgreSQL database), wired to the shared NATS under a
//! fresh prefix, with the audit relay mirroring the decision log to
//! `<prefix>_AUDIT`. A small cycle runs through the services' commands:
//!
//! ```text
//! TW ── P01 ── P01.D01 ─┬─ P01.D01.C01  (members M1–M6: 1 excellent, 5 good)
//!                       └─ P01.D01.C02  (members M1–M5: 3 good, 2 completed)
//! ```
//!
//! plus every unit's collective; P01.D01 decides the members and the cells'
//! collectives, P01 the district's, TW the province's and its own: 16
//! records, and the cycle completes; then the district re-grades one
//! completed member good after a complaint (record 17).
//!
//! Then the stores are tampered with directly in the database (dropping the
//! immutability triggers) or the export file is, and the tools must name
//! what was done; or the tools' answers are held against what the services
//! said live.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey};
use gradeflow_appraisal_server::Appraisal;
use gradeflow_approval_server::keys::key_id_for;
use gradeflow_approval_server::record::{record_hash, record_time, signing_message};
use gradeflow_approval_server::{audit_message, Approval, ApprovalModel, KeyRing};
use gradeflow_audit::explain::explain;
use gradeflow_audit::export::{export, verify_export};
use gradeflow_audit::recheck::recheck;
use gradeflow_audit::replay::{replay, ReplayQuery};
use gradeflow_audit::sources::{StoreLocation, Stores, WORKFLOW_SERVICES};
use gradeflow_audit::verify::{decision_log, verify, VerifyOptions, VerifyReport};
use gradeflow_audit::{AuditError, Check, Problem, Sources};
use gradeflow_bus::{ensure_streams, Relay, StreamSettings};
use gradeflow_eventstore::canonical::{canonical_json, chain_hash, HashedFields, GENESIS_HASH};
use gradeflow_eventstore::{
    triggers, AppendRequest, ExpectedVersion, NewEvent, Store, StoreOptions,
};
use gradeflow_kit::Config;
use gradeflow_progress::Progress;
use gradeflow_proto::commands::DecisionKind;
use gradeflow_proto::events::{DecisionLogRecord, DecisionRecorded, Event, GradeDecided};
use gradeflow_proto::{
    Actor, CommandId, CorrelationId, CycleId, DecisionId, DossierId, Grade, Metadata, Names, OrgId,
    Role, Tiers,
};
use gradeflow_service::client::{CommandClient, CommandFailure};
use gradeflow_service::runtime::{spawn, Wiring};
use gradeflow_service::Model as _;
use gradeflow_submission_server::Submission;
use gradeflow_testkit::PgDatabase;
use serde_json::{json, Value};
use sqlx::{Connection as _, Executor as _, PgConnection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ------------------------------------------------------------- deployment

const SERVICES: [&str; 4] = ["submission", "appraisal", "approval", "progress"];

/// The four services in-process, each on its own store.
struct Deployment {
    dir: tempfile::TempDir,
    names: Names,
    pg: Option<PgDatabase>,
    nats: async_nats::Client,
    client: CommandClient,
    stores: Vec<(&'static str, Store)>,
    shutdown: CancellationToken,
    /// The audit relay alone, so a test can stop mirroring.
    relay: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The audit mirror as `gradeflow up` runs it: the approval service's own
/// mapping, its position recorded as `approval-audit`.
fn audit_relay(store: Store, client: &async_nats::Client, names: Names) -> Relay {
    Relay::new(store, client, names, "approval-audit").with_mapper(Arc::new(audit_message))
}

fn strings(kinds: &[&str]) -> Vec<String> {
    kinds.iter().map(|k| (*k).to_owned()).collect()
}

impl Deployment {
    async fn start(postgres: bool) -> Deployment {
        let pg = if postgres {
            Some(gradeflow_testkit::fresh_pg().await.unwrap())
        } else {
            None
        };
        let names = gradeflow_testkit::fresh_names();
        let nats = gradeflow_testkit::nats().await.unwrap();
        let mut d = Deployment {
            dir: tempfile::tempdir().unwrap(),
            client: CommandClient::new(nats.clone(), names.clone(), Duration::from_secs(15)),
            names,
            pg,
            nats,
            stores: Vec::new(),
            shutdown: CancellationToken::new(),
            relay: CancellationToken::new(),
            tasks: Vec::new(),
        };
        let js = jetstream::new(d.nats.clone());
        ensure_streams(&js, &d.names, &StreamSettings::default())
            .await
            .unwrap();
        let config = d.config();
        for service in SERVICES {
            let at = StoreLocation::of(&config, service);
            let store = Store::connect(
                &at.url,
                StoreOptions {
                    schema: at.schema.clone(),
                    ..StoreOptions::default()
                },
            )
            .await
            .unwrap();
            d.stores.push((service, store.clone()));
            let wiring = |observed: Vec<String>| Wiring {
                client: d.nats.clone(),
                names: d.names.clone(),
                store: store.clone(),
                observed,
            };
            let stop = d.shutdown.clone();
            let tasks = match service {
                "submission" => {
                    let w =
                        Submission::open_with_tiers(store.clone(), Tiers::preset("card").unwrap())
                            .await
                            .unwrap();
                    let kinds = strings(&gradeflow_submission_server::OBSERVED_KINDS);
                    spawn(Arc::new(w), wiring(kinds), stop).await.unwrap()
                }
                "appraisal" => {
                    let w = Appraisal::open(store.clone()).await.unwrap();
                    let kinds = strings(&gradeflow_appraisal_server::OBSERVED_KINDS);
                    spawn(Arc::new(w), wiring(kinds), stop).await.unwrap()
                }
                "approval" => {
                    let keys = KeyRing::open(d.dir.path().join("keys")).unwrap();
                    let w = Approval::open(store.clone(), keys).await.unwrap();
                    let kinds = strings(gradeflow_approval_server::OBSERVED_KINDS);
                    let mut t = spawn(Arc::new(w), wiring(kinds), stop).await.unwrap();
                    t.push(tokio::spawn(
                        audit_relay(store.clone(), &d.nats, d.names.clone()).run(d.relay.clone()),
                    ));
                    t
                }
                _ => {
                    let w = Progress::open(store.clone()).await.unwrap();
                    spawn(Arc::new(w), wiring(Progress::observed_kinds()), stop)
                        .await
                        .unwrap()
                }
            };
            d.tasks.extend(tasks);
        }
        d
    }

    /// The deployment's configuration, as `gradeflow audit` reads it from
    /// `GRADEFLOW_*`.
    fn config(&self) -> Config {
        let mut vars = vec![
            (
                "GRADEFLOW_DATA_DIR".to_owned(),
                self.dir.path().display().to_string(),
            ),
            (
                "GRADEFLOW_NATS_URL".to_owned(),
                gradeflow_testkit::nats_url(),
            ),
            (
                "GRADEFLOW_PREFIX".to_owned(),
                self.names.prefix().to_owned(),
            ),
        ];
        if let Some(pg) = &self.pg {
            vars.push(("GRADEFLOW_DATABASE_URL".to_owned(), pg.url.clone()));
        }
        Config::from_env_map(vars).unwrap()
    }

    fn sources(&self) -> Sources {
        Sources::new(self.config())
    }

    fn store(&self, service: &str) -> &Store {
        &self.stores.iter().find(|(s, _)| *s == service).unwrap().1
    }

    /// Waits until nothing moves: every own event of the workflow stores
    /// published, every consumer idle, progress holding a copy of each —
    /// twice in a row.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut previous = None;
        loop {
            let now = self.counts().await;
            if now.3 && now.0 == now.1 && now.1 == now.2 && previous == Some(now) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the deployment did not settle: {now:?}"
            );
            previous = Some(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (own events, published events, progress copies, consumers idle).
    async fn counts(&self) -> (u64, u64, u64, bool) {
        let mut own = 0;
        for service in WORKFLOW_SERVICES {
            own += self
                .store(service)
                .read_from(0, 1_000_000)
                .await
                .unwrap()
                .iter()
                .filter(|e| e.metadata.service == service)
                .count() as u64;
        }
        let js = jetstream::new(self.nats.clone());
        let mut stream = js.get_stream(self.names.events_stream()).await.unwrap();
        let published = stream.info().await.unwrap().state.messages;
        let copies = self
            .store("progress")
            .head()
            .await
            .unwrap()
            .map_or(0, |(p, _)| p as u64);
        let mut idle = true;
        for service in SERVICES {
            let mut c: jetstream::consumer::PullConsumer = stream
                .get_consumer(&self.names.durable(service))
                .await
                .unwrap();
            let info = c.info().await.unwrap();
            idle &= info.num_pending == 0 && info.num_ack_pending == 0;
        }
        (own, published, copies, idle)
    }

    /// Stops the audit relay alone: records decided from now on are not
    /// mirrored.
    async fn stop_audit_relay(&self) {
        self.relay.cancel();
        // Its last acknowledged position is recorded on the way out.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Stops everything and closes the stores.
    async fn stop(&mut self) {
        self.relay.cancel();
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        for (_, s) in self.stores.drain(..) {
            s.close().await;
        }
    }

    /// Drops the test's streams and database (best effort).
    async fn cleanup(mut self) {
        self.stop().await;
        let js = jetstream::new(self.nats.clone());
        for s in [
            self.names.events_stream(),
            self.names.audit_stream(),
            self.names.dead_letter_stream(),
        ] {
            let _ = js.delete_stream(&s).await;
        }
        if let Some(pg) = &self.pg {
            let _ = pg.drop_db().await;
        }
    }
}

// ------------------------------------------------------------------ cycle

/// Refusals that mean "not observed yet": the same command succeeds a
/// moment later.
const NOT_YET: [&str; 4] = [
    "unknown_dossier",
    "unknown_org",
    "unknown_cycle",
    "wrong_state",
];

struct World {
    root: OrgId,
    p1: OrgId,
    d1: OrgId,
    c1: OrgId,
    c2: OrgId,
    cycle: CycleId,
    /// Dossier and subject ids by name (`P01.D01.C01.M1`, `P01.D01.C01`).
    dossier: HashMap<String, DossierId>,
    subject: HashMap<String, String>,
}

impl World {
    fn me(&self) -> Actor {
        Actor {
            sub: "can.bo.trung.uong".into(),
            role: Role::Central,
            org: self.root,
        }
    }

    fn members(cell: &str) -> Vec<String> {
        let n = if cell.ends_with("C01") { 6 } else { 5 };
        (1..=n).map(|m| format!("{cell}.M{m}")).collect()
    }

    /// The planned grade of each member: C01's M1 excellent, C02's M4 and
    /// M5 completed, everyone else good; every collective good.
    fn planned(name: &str) -> Grade {
        if name == "P01.D01.C01.M1" {
            Grade::Excellent
        } else if name.starts_with("P01.D01.C02.M")
            && (name.ends_with("M4") || name.ends_with("M5"))
        {
            Grade::Completed
        } else {
            Grade::Good
        }
    }

    fn names() -> Vec<String> {
        let mut all = vec!["TW".to_owned(), "P01".into(), "P01.D01".into()];
        for cell in ["P01.D01.C01", "P01.D01.C02"] {
            all.push(cell.into());
            all.extend(World::members(cell));
        }
        all
    }
}

async fn call(d: &Deployment, actor: &Actor, service: &str, kind: &str, payload: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let id = CommandId::new();
    loop {
        let last = match d
            .client
            .call(service, kind, actor, payload.clone(), id, None)
            .await
        {
            Ok(v) => return v,
            Err(CommandFailure::Rejected(r)) if NOT_YET.contains(&r.code.as_str()) => {
                format!("{}: {}", r.code, r.message)
            }
            Err(CommandFailure::Transport(e)) => e.to_string(),
            Err(e) => panic!("{kind} refused: {e}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind} still refused after 30 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(d: &Deployment) -> World {
    let root = OrgId::new();
    let me = Actor {
        sub: "can.bo.trung.uong".into(),
        role: Role::Central,
        org: root,
    };
    call(
        d,
        &me,
        "submission",
        "register_org.v1",
        json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}),
    )
    .await;
    let cycle = call(
        d,
        &me,
        "submission",
        "open_cycle.v1",
        json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
               "tiers": ["cell", "district", "province", "central"],
               "deadlines": {"cell": "2026-12-15", "district": "2026-12-25", "province": "2027-01-15", "central": "2027-02-01"},
               "quota": {"ratio": 0.2, "rounding": "floor"}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let org = |code: &'static str, tier: &'static str, parent: OrgId| {
        let me = me.clone();
        async move {
            let r = call(d, &me, "submission", "register_org.v1", json!({"code": code, "name": format!("Đảng bộ {code}"), "tier": tier, "parent": parent})).await;
            r["id"].as_str().unwrap().parse::<OrgId>().unwrap()
        }
    };
    let p1 = org("P01", "province", root).await;
    let d1 = org("P01.D01", "district", p1).await;
    let c1 = org("P01.D01.C01", "cell", d1).await;
    let c2 = org("P01.D01.C02", "cell", d1).await;
    let mut w = World {
        root,
        p1,
        d1,
        c1,
        c2,
        cycle,
        dossier: HashMap::new(),
        subject: HashMap::new(),
    };
    let units = [
        ("TW", root),
        ("P01", p1),
        ("P01.D01", d1),
        ("P01.D01.C01", c1),
        ("P01.D01.C02", c2),
    ];
    for (name, org) in units {
        let r = call(d, &me, "submission", "register_subject.v1", json!({"cycle": cycle, "kind": "collective", "org": org, "name": name, "category": "01"})).await;
        remember(&mut w, name, &r);
        if name.contains(".C0") {
            for (i, m) in World::members(name).iter().enumerate() {
                let leader = i == 0;
                let r = call(d, &me, "submission", "register_subject.v1", json!({"cycle": cycle, "kind": "individual", "org": org, "name": m, "category": if leader {"2A"} else {"2B"}, "leader": leader})).await;
                remember(&mut w, m, &r);
            }
        }
    }
    w
}

fn remember(w: &mut World, name: &str, r: &Value) {
    w.dossier.insert(
        name.to_owned(),
        r["dossier"].as_str().unwrap().parse().unwrap(),
    );
    w.subject
        .insert(name.to_owned(), r["subject"].as_str().unwrap().to_owned());
}

/// Self-reviews and meetings of every dossier.
async fn file_all(d: &Deployment, w: &World) {
    for name in World::names() {
        let g = World::planned(&name);
        let id = w.dossier[&name];
        call(d, &w.me(), "submission", "submit_self_review.v1", json!({"dossier": id, "score": {"general": 28, "tasks": 65}, "proposed_grade": g, "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"})).await;
        call(d, &w.me(), "submission", "record_meeting.v1", json!({"dossier": id, "proposed_grade": g, "votes": {"good": 10}, "minutes": "Biên bản"})).await;
    }
}

/// Appraisals of every dossier (one returned and re-filed first).
async fn appraise_all(d: &Deployment, w: &World) {
    let returned = w.dossier["P01.D01.C02.M2"];
    call(
        d,
        &w.me(),
        "appraisal",
        "return_dossier.v1",
        json!({"dossier": returned, "reason": "Thiếu biên bản hội nghị"}),
    )
    .await;
    call(d, &w.me(), "submission", "submit_self_review.v1", json!({"dossier": returned, "score": {"general": 27, "tasks": 60}, "proposed_grade": "good", "tasks": {"total": 10, "on_time": 10, "exceeded": 1, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm bổ sung"})).await;
    call(d, &w.me(), "submission", "record_meeting.v1", json!({"dossier": returned, "proposed_grade": "good", "votes": {"good": 9}, "minutes": "Biên bản bổ sung"})).await;
    for name in World::names() {
        call(d, &w.me(), "appraisal", "appraise_dossier.v1", json!({"dossier": w.dossier[&name], "recommended_grade": World::planned(&name), "facts": {}, "notes": "Thẩm định"})).await;
    }
}

async fn decide(
    d: &Deployment,
    w: &World,
    authority: OrgId,
    number: &str,
    names: &[String],
) -> Value {
    let grades: Vec<Value> = names
        .iter()
        .map(|n| json!({"dossier": w.dossier[n], "grade": World::planned(n), "override_reason": null}))
        .collect();
    call(
        d,
        &w.me(),
        "approval",
        "decide_batch.v1",
        json!({"cycle": w.cycle, "authority": authority, "number": number, "grades": grades}),
    )
    .await
}

/// The district decides the members of `cells`.
async fn decide_members(d: &Deployment, w: &World, cells: &[&str]) -> Value {
    let members: Vec<String> = cells.iter().flat_map(|c| World::members(c)).collect();
    decide(d, w, w.d1, "01-QĐ/HU", &members).await
}

/// Everything after the members: cells', district's, province's and the
/// root's own collectives.
async fn decide_collectives(d: &Deployment, w: &World) {
    decide(
        d,
        w,
        w.d1,
        "02-QĐ/HU",
        &["P01.D01.C01".into(), "P01.D01.C02".into()],
    )
    .await;
    decide(d, w, w.p1, "03-QĐ/TU", &["P01.D01".into()]).await;
    decide(d, w, w.root, "04-QĐ/TW", &["P01".into()]).await;
    decide(d, w, w.root, "05-QĐ/TW", &["TW".into()]).await;
}

/// The member re-graded after a complaint (form 03): completed → good.
const REGRADED: &str = "P01.D01.C02.M4";

/// A whole cycle, to completion (16 records), then one re-grade (record
/// 17, superseding record 10).
async fn whole_cycle(d: &Deployment) -> World {
    let w = register(d).await;
    file_all(d, &w).await;
    appraise_all(d, &w).await;
    let decided = decide_members(d, &w, &["P01.D01.C01", "P01.D01.C02"]).await;
    decide_collectives(d, &w).await;
    let supersedes = decided["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dossier"] == json!(w.dossier[REGRADED]))
        .unwrap()["seq"]
        .clone();
    assert_eq!(supersedes, 10);
    call(d, &w.me(), "approval", "decide_batch.v1", json!({"cycle": w.cycle, "authority": w.d1, "number": "06-QĐ/HU", "kind": "regrade",
        "grades": [{"dossier": w.dossier[REGRADED], "grade": "good", "supersedes": supersedes, "reason": "Khiếu nại được chấp nhận"}]})).await;
    d.settle().await;
    w
}

// ---------------------------------------------------------------- helpers

async fn verify_now(d: &Deployment, stream: bool) -> VerifyReport {
    let opts = VerifyOptions {
        stream,
        stream_wait: Duration::from_secs(2),
    };
    verify(&d.sources(), &opts).await.unwrap()
}

async fn open_stores(d: &Deployment) -> Stores {
    d.sources()
        .open(&WORKFLOW_SERVICES, &["progress"])
        .await
        .unwrap()
}

/// The decision log (position, record) of the stopped deployment.
async fn log_of(d: &Deployment) -> Vec<(i64, DecisionLogRecord)> {
    let stores = open_stores(d).await;
    let (log, problems) = decision_log(stores.require("approval").unwrap())
        .await
        .unwrap();
    stores.close().await;
    assert!(problems.is_empty(), "{problems:?}");
    log
}

fn names(report: &VerifyReport, check: Check, f: impl Fn(&Problem) -> bool) -> bool {
    report.problems.iter().any(|p| p.check == check && f(p))
}

fn shows(report: &VerifyReport) -> String {
    report.render()
}

type Row = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// A direct connection to one store's database, for tampering.
enum Raw {
    Lite(SqliteConnection),
    Pg(PgConnection),
}

macro_rules! on {
    ($raw:expr, $c:ident => $body:expr) => {
        match $raw {
            Raw::Lite($c) => $body,
            Raw::Pg($c) => $body,
        }
    };
}

const COLUMNS: &str =
    "position, stream, version, event_id, kind, payload, metadata, recorded_at, prev_hash, hash";

impl Raw {
    /// Connects to `service`'s store and drops its immutability triggers.
    async fn unlocked(d: &Deployment, service: &str) -> Raw {
        match &d.pg {
            None => {
                let file = d.dir.path().join(format!("{service}.db"));
                let mut c = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                    .await
                    .unwrap();
                for t in [triggers::NO_UPDATE, triggers::NO_DELETE] {
                    c.execute(format!("DROP TRIGGER {t}").as_str())
                        .await
                        .unwrap();
                }
                Raw::Lite(c)
            }
            Some(pg) => {
                let mut c = PgConnection::connect(&pg.url).await.unwrap();
                c.execute(format!("SET search_path TO {service}").as_str())
                    .await
                    .unwrap();
                for t in [
                    triggers::NO_UPDATE,
                    triggers::NO_DELETE,
                    triggers::NO_TRUNCATE,
                ] {
                    c.execute(format!("DROP TRIGGER {t} ON events").as_str())
                        .await
                        .unwrap();
                }
                Raw::Pg(c)
            }
        }
    }

    async fn rows_from(&mut self, position: i64) -> Vec<Row> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE position >= $1 ORDER BY position");
        on!(self, c => sqlx::query_as::<_, Row>(&sql).bind(position).fetch_all(&mut *c).await.unwrap())
    }

    async fn row(&mut self, position: i64) -> Row {
        self.rows_from(position).await.into_iter().next().unwrap()
    }

    async fn set_payload(&mut self, position: i64, payload: &str) {
        on!(self, c => {
            sqlx::query("UPDATE events SET payload = $1 WHERE position = $2")
                .bind(payload).bind(position).execute(&mut *c).await.unwrap();
        });
    }

    async fn delete(&mut self, position: i64) {
        on!(self, c => {
            sqlx::query("DELETE FROM events WHERE position = $1")
                .bind(position).execute(&mut *c).await.unwrap();
        });
    }

    /// Recomputes every hash from `position` on and moves the chain head,
    /// as someone covering their tracks in the store would.
    async fn rechain_from(&mut self, position: i64) {
        let mut prev = if position == 1 {
            GENESIS_HASH.to_owned()
        } else {
            self.row(position - 1).await.9
        };
        for (pos, stream, version, event_id, kind, payload, metadata, recorded_at, _, _) in
            self.rows_from(position).await
        {
            let hash = chain_hash(
                &prev,
                &HashedFields {
                    position: pos,
                    stream: &stream,
                    version,
                    event_id: &event_id,
                    kind: &kind,
                    payload: &payload,
                    metadata: &metadata,
                    recorded_at: &recorded_at,
                },
            );
            on!(self, c => {
                sqlx::query("UPDATE events SET prev_hash = $1, hash = $2 WHERE position = $3")
                    .bind(&prev).bind(&hash).bind(pos).execute(&mut *c).await.unwrap();
            });
            prev = hash;
        }
        on!(self, c => {
            sqlx::query("UPDATE chain_head SET hash = $1 WHERE id = 1")
                .bind(&prev).execute(&mut *c).await.unwrap();
        });
    }

    async fn close(self) {
        on!(self, c => c.close().await.unwrap());
    }
}

/// The payload of `position` with `change` applied, stored back.
async fn edit_payload(raw: &mut Raw, position: i64, change: impl FnOnce(&mut Value)) {
    let mut payload: Value = serde_json::from_str(&raw.row(position).await.5).unwrap();
    change(&mut payload);
    raw.set_payload(position, &canonical_json(&payload)).await;
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_deployment_verifies_rechecks_and_explains_each_dossier() {
    let mut d = Deployment::start(false).await;
    let w = whole_cycle(&d).await;
    d.stop().await;

    let report = verify_now(&d, true).await;
    assert!(report.ok, "{}", shows(&report));
    assert_eq!(report.records, 17);
    assert_eq!(
        report
            .stores
            .iter()
            .map(|s| s.store.as_str())
            .collect::<Vec<_>>(),
        SERVICES
    );
    let stream = report.stream.as_ref().unwrap();
    assert_eq!((stream.messages, stream.records), (17, 17));
    assert_eq!(report.head, log_of(&d).await.last().unwrap().1.hash);

    let stores = open_stores(&d).await;
    let rechecked = recheck(&stores, Some(w.cycle)).await.unwrap();
    assert!(rechecked.ok, "{}", rechecked.render());
    assert_eq!((rechecked.decisions, rechecked.records), (6, 17));

    // The excellent member: registered, filed, met, appraised, decided.
    let keys = d.sources().keys().unwrap();
    let e = explain(&stores, w.dossier["P01.D01.C01.M1"], false, &keys)
        .await
        .unwrap();
    let steps: Vec<(&str, &str)> = e
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.service.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("subject_registered.v1", "submission"),
            ("self_review_submitted.v1", "submission"),
            ("meeting_recorded.v1", "submission"),
            ("dossier_appraised.v1", "appraisal"),
            ("decision_recorded.v1", "approval"),
            ("grade_decided.v1", "approval"),
        ]
    );
    assert!(e.steps.iter().all(|s| s.hash_ok && !s.observed));
    assert_eq!(e.name.as_deref(), Some("P01.D01.C01.M1"));
    let grade = e.steps.last().unwrap();
    assert_eq!(grade.grade, Some(Grade::Excellent));
    assert_eq!(grade.number.as_deref(), Some("01-QĐ/HU"));
    assert_eq!(grade.actor.org_code.as_deref(), Some("TW"));
    let record = grade.record.as_ref().unwrap();
    assert_eq!(record.signature_check, "valid");
    // From its self-review on, the dossier is one trace (the decision
    // document, about many dossiers, keeps its command's).
    let traces: std::collections::BTreeSet<_> = e.steps[1..]
        .iter()
        .filter(|s| s.step != "decision_recorded.v1")
        .map(|s| s.trace_id.clone().unwrap())
        .collect();
    assert_eq!(traces.len(), 1, "{traces:?}");
    // The returned member shows its return reason; with copies, each
    // observing store's copy is listed too, marked.
    let e = explain(&stores, w.dossier["P01.D01.C02.M2"], true, &keys)
        .await
        .unwrap();
    assert!(e.steps.iter().any(|s| s.step == "dossier_returned.v1"
        && !s.observed
        && s.return_reason.as_deref() == Some("Thiếu biên bản hội nghị")));
    assert!(e.steps.iter().any(|s| s.observed && s.store == "progress"));
    assert!(e.render().contains("return: Thiếu biên bản hội nghị"));
    // The re-graded member: both grades, the second with its reason.
    let e = explain(&stores, w.dossier[REGRADED], false, &keys)
        .await
        .unwrap();
    let grades: Vec<(&str, Option<Grade>, Option<&str>, u64)> = e
        .steps
        .iter()
        .filter_map(|s| {
            let r = s.record.as_ref()?;
            Some((s.step.as_str(), s.grade, s.regrade_reason.as_deref(), r.seq))
        })
        .collect();
    assert_eq!(
        grades,
        vec![
            ("grade_decided.v1", Some(Grade::Completed), None, 10),
            (
                "grade_revised.v1",
                Some(Grade::Good),
                Some("Khiếu nại được chấp nhận"),
                17
            ),
        ]
    );
    assert!(matches!(
        explain(&stores, DossierId::new(), false, &keys).await,
        Err(AuditError::UnknownDossier(_))
    ));
    stores.close().await;
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_payload_is_named_by_store_and_position() {
    let mut d = Deployment::start(false).await;
    let w = whole_cycle(&d).await;
    d.stop().await;
    let log = log_of(&d).await;
    let (graded, record) = log[3].clone();
    // A self-review's score in submission's store…
    let submission = open_stores(&d).await;
    let filed = submission
        .require("submission")
        .unwrap()
        .load_stream(&w.dossier["P01.D01.C02.M5"].stream())
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "self_review_submitted.v1")
        .unwrap()
        .position;
    submission.close().await;
    let mut raw = Raw::unlocked(&d, "submission").await;
    edit_payload(&mut raw, filed, |p| p["score"]["tasks"] = json!(70)).await;
    raw.close().await;
    // …and a grade in approval's.
    let mut raw = Raw::unlocked(&d, "approval").await;
    edit_payload(&mut raw, graded, |p| p["grade"] = json!("excellent")).await;
    raw.close().await;

    let report = verify_now(&d, true).await;
    assert!(!report.ok);
    let text = shows(&report);
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("submission")
            && p.position == Some(filed)
            && p.problem.contains("hash mismatch")),
        "{text}"
    );
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("approval")
            && p.position == Some(graded)),
        "{text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(record.seq)
            && p.position == Some(graded)
            && p.problem.contains("hash does not match")),
        "{text}"
    );
    assert!(
        names(&report, Check::AuditStream, |p| p.seq == Some(record.seq)
            && p.problem.contains("grade")),
        "{text}"
    );
    assert!(text.contains("PROBLEM"), "{text}");
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_is_named() {
    let mut d = Deployment::start(false).await;
    whole_cycle(&d).await;
    d.stop().await;
    let log = log_of(&d).await;
    let (position, record) = log[4].clone();
    assert_eq!(record.seq, 5);
    let mut raw = Raw::unlocked(&d, "approval").await;
    raw.delete(position).await;
    raw.close().await;

    let report = verify_now(&d, true).await;
    let text = shows(&report);
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("approval")
            && p.position == Some(position)
            && p.problem.contains("gap")),
        "{text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(6)
            && p.problem.contains("sequence gap: expected record 5")),
        "{text}"
    );
    assert!(
        names(&report, Check::AuditStream, |p| p.seq == Some(5)
            && p.problem.contains("not in the approval store")),
        "{text}"
    );
    assert_eq!(report.records, 16);
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_swapped_records_are_named() {
    let mut d = Deployment::start(false).await;
    whole_cycle(&d).await;
    d.stop().await;
    let log = log_of(&d).await;
    let (a, b) = (log[1].0, log[2].0);
    let mut raw = Raw::unlocked(&d, "approval").await;
    let (pa, pb) = (raw.row(a).await.5, raw.row(b).await.5);
    raw.set_payload(a, &pb).await;
    raw.set_payload(b, &pa).await;
    raw.close().await;

    let report = verify_now(&d, true).await;
    let text = shows(&report);
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("approval")
            && p.position == Some(a)),
        "{text}"
    );
    // In store order the log now reads 1, 3, 2, 4: both are named.
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(3)
            && p.position == Some(a)
            && p.problem.contains("expected record 2")),
        "{text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(2)
            && p.position == Some(b)),
        "{text}"
    );
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_grade_with_a_recomputed_hash_is_caught_by_its_signature() {
    let mut d = Deployment::start(false).await;
    whole_cycle(&d).await;
    d.stop().await;
    let log = log_of(&d).await;
    let (position, mut record) = log.last().cloned().unwrap();
    record.grade = Grade::Excellent;
    record.hash = record_hash(&record);
    let mut raw = Raw::unlocked(&d, "approval").await;
    edit_payload(&mut raw, position, |p| {
        p["grade"] = json!("excellent");
        p["record"]["hash"] = json!(record.hash);
    })
    .await;
    // The store's own chain is rewritten from there on, so only the
    // signature (and the mirror) can tell.
    raw.rechain_from(position).await;
    raw.close().await;

    let report = verify_now(&d, true).await;
    let text = shows(&report);
    assert!(
        !names(&report, Check::Store, |_| true),
        "the rewritten chain verifies: {text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(record.seq)
            && p.problem.contains("signature does not verify")),
        "{text}"
    );
    assert!(
        !names(&report, Check::DecisionLog, |p| p
            .problem
            .contains("hash does not match")),
        "{text}"
    );
    assert!(
        names(&report, Check::AuditStream, |p| p.seq == Some(record.seq)
            && p.problem.contains("grade")
            && p.problem.contains("hash")),
        "{text}"
    );
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_signed_with_a_key_outside_the_registry_is_named() {
    let mut d = Deployment::start(false).await;
    whole_cycle(&d).await;
    d.stop().await;
    let log = log_of(&d).await;
    let (position, mut record) = log.last().cloned().unwrap();
    let forger = SigningKey::generate(&mut rand::rngs::OsRng);
    record.key_id = key_id_for(record.authority, &forger.verifying_key());
    record.hash = record_hash(&record);
    record.signature = BASE64.encode(
        forger
            .sign(&signing_message(&record.hash).unwrap())
            .to_bytes(),
    );
    let mut raw = Raw::unlocked(&d, "approval").await;
    edit_payload(&mut raw, position, |p| {
        p["record"]["key_id"] = json!(record.key_id);
        p["record"]["hash"] = json!(record.hash);
        p["record"]["signature"] = json!(record.signature);
    })
    .await;
    raw.rechain_from(position).await;
    raw.close().await;

    let report = verify_now(&d, false).await;
    let text = shows(&report);
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(record.seq)
            && p.problem.contains(&format!(
                "unknown signing key `{}`",
                record.key_id
            ))),
        "{text}"
    );
    assert_eq!(report.problems.len(), 1, "{text}");
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_never_mirrored_to_the_audit_stream_is_named() {
    let mut d = Deployment::start(false).await;
    let w = register(&d).await;
    file_all(&d, &w).await;
    appraise_all(&d, &w).await;
    decide_members(&d, &w, &["P01.D01.C01", "P01.D01.C02"]).await;
    decide(
        &d,
        &w,
        w.d1,
        "02-QĐ/HU",
        &["P01.D01.C01".into(), "P01.D01.C02".into()],
    )
    .await;
    decide(&d, &w, w.p1, "03-QĐ/TU", &["P01.D01".into()]).await;
    d.settle().await;
    // The relay stops; the next decision is recorded, not mirrored.
    d.stop_audit_relay().await;
    decide(&d, &w, w.root, "04-QĐ/TW", &["P01".into()]).await;
    d.settle().await;
    d.stop().await;

    let log = log_of(&d).await;
    let (position, last) = log.last().cloned().unwrap();
    assert_eq!(last.seq, 15);
    let report = verify_now(&d, true).await;
    let text = shows(&report);
    assert!(
        names(&report, Check::AuditStream, |p| p.seq == Some(15)
            && p.position == Some(position)
            && p.problem.contains("never mirrored")),
        "{text}"
    );
    assert!(
        names(&report, Check::AuditStream, |p| p
            .problem
            .contains("holds 15")
            && p.problem.contains("14")),
        "{text}"
    );
    assert!(!names(&report, Check::DecisionLog, |_| true), "{text}");
    // The log itself is intact: without the stream it verifies.
    assert!(verify_now(&d, false).await.ok);
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_a_truncated_or_edited_one_does_not() {
    let mut d = Deployment::start(false).await;
    let w = whole_cycle(&d).await;
    d.stop().await;
    let stores = open_stores(&d).await;
    let keys = d.sources().keys().unwrap();
    let file = export(&stores, &keys, w.cycle, "P01.D01").await.unwrap();
    stores.close().await;
    assert_eq!(file.org, w.d1);
    // The district's subtree: 11 members and 3 collectives, each graded,
    // and one re-graded.
    assert_eq!(file.dossiers.len(), 14);
    assert_eq!(file.records.len(), 15);
    assert_eq!(file.log_head.records, 17);
    assert!(file.stores.values().all(|s| s.chain_ok));
    assert!(!file.keys.is_empty());
    let (file, text) = file.seal().unwrap();

    // On another machine: only the file.
    let elsewhere = tempfile::tempdir().unwrap();
    let path = elsewhere.path().join("export.json");
    std::fs::write(&path, &text).unwrap();
    let report = verify_export(&std::fs::read_to_string(&path).unwrap(), "export.json");
    assert!(report.ok, "{}", shows(&report));
    assert_eq!(report.records, 15);
    assert_eq!(report.head, file.log_head.hash);

    // Truncated.
    let truncated = verify_export(&text[..text.len() / 2], "truncated.json");
    assert!(
        names(&truncated, Check::Export, |p| p
            .problem
            .contains("not a complete export")),
        "{}",
        shows(&truncated)
    );
    // A grade edited in a record.
    let edited_text = text.replacen("\"grade\":\"excellent\"", "\"grade\":\"good\"", 1);
    assert_ne!(edited_text, text);
    let edited = verify_export(&edited_text, "edited.json");
    assert!(
        names(&edited, Check::Export, |p| p
            .problem
            .contains("changed after export")),
        "{}",
        shows(&edited)
    );
    // Edited and resealed: the file's hash agrees, the record does not.
    let mut value: Value = serde_json::from_str(&text).unwrap();
    let excellent = value["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["grade"] == "excellent")
        .unwrap();
    excellent["grade"] = json!("good");
    let seq = excellent["seq"].as_u64().unwrap();
    let resealed: gradeflow_audit::export::ExportFile = serde_json::from_value(value).unwrap();
    let (_, resealed_text) = resealed.seal().unwrap();
    let resealed = verify_export(&resealed_text, "resealed.json");
    assert!(
        !names(&resealed, Check::Export, |_| true),
        "{}",
        shows(&resealed)
    );
    assert!(
        names(&resealed, Check::DecisionLog, |p| p.seq == Some(seq)
            && p.problem.contains("hash does not match")),
        "{}",
        shows(&resealed)
    );
    // An event's bytes edited and resealed: its hash no longer recomputes.
    let mut value: Value = serde_json::from_str(&text).unwrap();
    let event = value["stores"]["appraisal"]["events"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["kind"] == "dossier_appraised.v1")
        .unwrap();
    let position = event["position"].as_i64().unwrap();
    event["payload"] = json!(event["payload"]
        .as_str()
        .unwrap()
        .replace("Thẩm định", "Sửa"));
    let (_, text) = serde_json::from_value::<gradeflow_audit::export::ExportFile>(value)
        .unwrap()
        .seal()
        .unwrap();
    let report = verify_export(&text, "event.json");
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("appraisal")
            && p.position == Some(position)
            && p.problem.contains("hash mismatch")),
        "{}",
        shows(&report)
    );
    d.cleanup().await;
}

/// A live `progress.v1` answer of the whole tree, and when it was seen.
async fn live_progress(d: &Deployment, w: &World, org: Option<OrgId>) -> (DateTime<Utc>, Value) {
    let mut query = json!({"cycle": w.cycle, "depth": 10});
    if let Some(org) = org {
        query["org"] = json!(org);
    }
    let answer = call(d, &w.me(), "progress", "progress.v1", query).await;
    (Utc::now(), answer)
}

async fn replayed(stores: &Stores, w: &World, at: DateTime<Utc>, org: Option<&str>) -> Value {
    let q = ReplayQuery {
        as_of: at,
        org: org.map(str::to_owned),
        cycle: Some(w.cycle),
        depth: Some(10),
    };
    let report = replay(stores, &q).await.unwrap();
    assert_eq!(report.cycles.len(), 1);
    serde_json::to_value(&report.cycles[0].progress).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_as_of_three_points_equals_the_progress_tree_seen_live() {
    let mut d = Deployment::start(false).await;
    let before = Utc::now();
    let w = register(&d).await;
    file_all(&d, &w).await;
    d.settle().await;
    let first = live_progress(&d, &w, None).await;
    appraise_all(&d, &w).await;
    decide_members(&d, &w, &["P01.D01.C01", "P01.D01.C02"]).await;
    d.settle().await;
    let second = live_progress(&d, &w, None).await;
    decide_collectives(&d, &w).await;
    d.settle().await;
    let third = live_progress(&d, &w, None).await;
    let district = live_progress(&d, &w, Some(w.d1)).await;
    d.stop().await;

    assert_eq!(first.1["totals"]["reviewed"], 16, "{}", first.1);
    assert_eq!(second.1["totals"]["decided"], 11, "{}", second.1);
    assert_eq!(third.1["complete"], true, "{}", third.1);
    assert!(first.1 != second.1 && second.1 != third.1);
    let stores = open_stores(&d).await;
    for (at, live) in [&first, &second, &third] {
        assert_eq!(&replayed(&stores, &w, *at, None).await, live, "as of {at}");
    }
    // The subtree, by code; and "now" is the live read model as it ended.
    assert_eq!(
        replayed(&stores, &w, district.0, Some("P01.D01")).await,
        district.1
    );
    assert_eq!(replayed(&stores, &w, Utc::now(), None).await, third.1);
    // The dossiers as they stood between the members' and the cells'
    // decisions.
    let q = ReplayQuery {
        as_of: second.0,
        org: Some(w.c1.to_string()),
        cycle: Some(w.cycle),
        depth: None,
    };
    let report = replay(&stores, &q).await.unwrap();
    let dossiers = &report.cycles[0].dossiers;
    assert_eq!(dossiers.len(), 7);
    assert_eq!(dossiers[0].name, "P01.D01.C01");
    assert_eq!(dossiers[0].state.code(), "appraised");
    assert!(dossiers[1..]
        .iter()
        .all(|x| x.state.code() == "decided" && x.decision_number.as_deref() == Some("01-QĐ/HU")));
    assert!(report.render().contains("P01.D01.C01.M1"));
    // Before the cycle was opened there is nothing to replay.
    let early = ReplayQuery {
        as_of: before,
        org: None,
        cycle: Some(w.cycle),
        depth: None,
    };
    assert!(matches!(
        replay(&stores, &early).await,
        Err(AuditError::UnknownCycle(_))
    ));
    stores.close().await;
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recheck_flags_a_decision_appended_behind_the_services_back() {
    let mut d = Deployment::start(false).await;
    let w = register(&d).await;
    file_all(&d, &w).await;
    appraise_all(&d, &w).await;
    // The district decides C01's members only (1 excellent, 5 good).
    decide_members(&d, &w, &["P01.D01.C01"]).await;
    d.settle().await;
    d.stop().await;

    // Someone with the district's signing key and write access to the
    // approval store grades C02's five members excellent: chained and
    // signed like the service would, but over the quota.
    let config = d.config();
    let at = StoreLocation::of(&config, "approval");
    let store = Store::connect(&at.url, StoreOptions::default())
        .await
        .unwrap();
    let mut model = ApprovalModel::default();
    for e in store.read_from(0, 1_000_000).await.unwrap() {
        model.apply(&e);
    }
    let ring = KeyRing::open(d.dir.path().join("keys")).unwrap();
    let key_id = ring.key_id(w.d1).unwrap();
    let decision = DecisionId::new();
    let actor = Actor {
        sub: "ke.gia.mao".into(),
        role: Role::Authority,
        org: w.d1,
    };
    let metadata = Metadata {
        actor: actor.clone(),
        correlation_id: CorrelationId(uuid::Uuid::new_v4()),
        causation_id: None,
        traceparent: None,
        service: "approval".into(),
        province: Some("P01".into()),
    };
    let members = World::members("P01.D01.C02");
    let dossiers: Vec<DossierId> = members.iter().map(|m| w.dossier[m]).collect();
    let mut events = vec![NewEvent::new(
        decision.stream(),
        DecisionRecorded::KIND,
        serde_json::to_value(DecisionRecorded {
            decision,
            cycle: w.cycle,
            authority: w.d1,
            number: "99-QĐ/HU".into(),
            kind: DecisionKind::Decide,
            dossiers: dossiers.clone(),
            quota_exception: None,
        })
        .unwrap(),
        metadata.clone(),
    )];
    let mut prev = model.head().to_owned();
    let now = record_time(Utc::now());
    for (seq, dossier) in (model.log_version + 1..).zip(&dossiers) {
        let info = model.dossiers.get(dossier).unwrap();
        let mut record = DecisionLogRecord {
            seq,
            decision,
            number: "99-QĐ/HU".into(),
            cycle: w.cycle,
            dossier: *dossier,
            subject: info.subject,
            grade: Grade::Excellent,
            authority: w.d1,
            actor: actor.sub.clone(),
            at: now,
            supersedes: None,
            reason: None,
            override_reason: None,
            prev_hash: prev.clone(),
            hash: String::new(),
            signature: String::new(),
            key_id: key_id.clone(),
        };
        record.hash = record_hash(&record);
        record.signature = ring
            .sign(w.d1, &signing_message(&record.hash).unwrap())
            .unwrap()
            .1;
        prev = record.hash.clone();
        events.push(NewEvent::new(
            "decision-log",
            GradeDecided::KIND,
            serde_json::to_value(GradeDecided {
                decision,
                dossier: *dossier,
                subject: info.subject,
                cycle: w.cycle,
                authority: w.d1,
                org: w.c2,
                grade: Grade::Excellent,
                quota_group: info.quota_group.clone(),
                override_reason: None,
                record: gradeflow_approval_server::record::record_ref(&record),
                number: Some("99-QĐ/HU".into()),
            })
            .unwrap(),
            metadata.clone(),
        ));
    }
    store
        .append(
            AppendRequest::new(events)
                .expect("decision-log", ExpectedVersion::Exactly(model.log_version)),
        )
        .await
        .unwrap();
    store.close().await;

    // Chained and signed with a registry key: the log verifies…
    let report = verify_now(&d, false).await;
    assert!(report.ok, "{}", shows(&report));
    assert_eq!(report.records, 11);
    // …but the rules refuse it.
    let stores = open_stores(&d).await;
    let rechecked = recheck(&stores, Some(w.cycle)).await.unwrap();
    stores.close().await;
    assert!(!rechecked.ok);
    assert_eq!(rechecked.decisions, 2);
    assert_eq!(rechecked.refused.len(), 1, "{}", rechecked.render());
    let refused = &rechecked.refused[0];
    assert_eq!(refused.decision, decision);
    assert_eq!(refused.number.as_deref(), Some("99-QĐ/HU"));
    assert_eq!(refused.records, vec![7, 8, 9, 10, 11]);
    let quota = serde_json::to_value(&refused.violations).unwrap();
    assert!(
        quota
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["rule"] == "quota"
                && v["excellent"] == 6
                && v["good"] == 5
                && v["max_excellent"] == 1),
        "{quota}"
    );
    assert!(refused.problems.is_empty(), "{:?}", refused.problems);
    assert!(rechecked.render().contains("quota"));
    d.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_intact_deployment_verifies_and_tampering_is_named() {
    let mut d = Deployment::start(true).await;
    let w = whole_cycle(&d).await;
    d.stop().await;
    let report = verify_now(&d, true).await;
    assert!(report.ok, "{}", shows(&report));
    assert_eq!(report.records, 17);
    let stores = open_stores(&d).await;
    assert!(recheck(&stores, None).await.unwrap().ok);
    let keys = d.sources().keys().unwrap();
    let file = export(&stores, &keys, w.cycle, &w.root.to_string())
        .await
        .unwrap();
    stores.close().await;
    assert_eq!(file.records.len(), 17);
    let (_, text) = file.seal().unwrap();
    assert!(verify_export(&text, "pg.json").ok);

    let log = log_of(&d).await;
    let (edited, record) = log[0].clone();
    let deleted = log[9].0;
    let mut raw = Raw::unlocked(&d, "approval").await;
    edit_payload(&mut raw, edited, |p| {
        p["override_reason"] = json!("thêm vào")
    })
    .await;
    raw.delete(deleted).await;
    raw.close().await;
    let report = verify_now(&d, true).await;
    let text = shows(&report);
    assert!(
        names(&report, Check::Store, |p| p.store.as_deref()
            == Some("approval")
            && p.position == Some(edited)),
        "{text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(record.seq)
            && p.problem.contains("hash does not match")),
        "{text}"
    );
    assert!(
        names(&report, Check::DecisionLog, |p| p.seq == Some(11)
            && p.problem.contains("expected record 10")),
        "{text}"
    );
    assert!(
        names(&report, Check::AuditStream, |p| p.seq == Some(10)
            && p.problem.contains("not in the approval store")),
        "{text}"
    );
    d.cleanup().await;
}
