//! Operations: gradeflow on the servers a real deployment runs, with the
//! faults real deployments see. Every test owns its servers — nats-server
//! processes (one, or a 3-node cluster with R3 streams), a PostgreSQL
//! instance — on free loopback ports, and runs the real binaries, one process
//! per service, through a small but whole cycle (a four-tier tree, every
//! dossier filed, appraised and decided up to `cycle_completed`):
//!
//! * a NATS node killed mid-cycle and restarted later (R3): the cycle
//!   completes, every decision is in the log and the audit stream once;
//! * a single NATS server, then PostgreSQL, restarted mid-cycle: nothing
//!   lost or doubled, and the service processes are the same ones;
//! * `deploy/nats/accounts.conf`: services run with their own credentials,
//!   and a service credential cannot publish a command or another service's
//!   event (the server refuses);
//! * a back-up of every store taken mid-cycle, restored into a fresh data dir
//!   with the keys: the chains and the decision log verify and the cycle
//!   finishes there;
//! * `deploy/compose/compose.yaml` passes `docker compose config` and the
//!   Kubernetes manifests parse and name only what the code defines.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_proto::Names;
use gradeflow_proto::{Actor, OrgId};
use gradeflow_service::client::CommandClient;
use serde_json::{json, Value};
use system_tests::checks::{check_audit_stream, check_exactly_once, wait_consumers_caught_up};
use system_tests::{
    central, connect_nats, free_port, wait_for, Deployment, Driver, NatsCluster, NatsServer,
    PgServer, SERVICES,
};

// ------------------------------------------------------------ the cycle

struct Unit {
    org: OrgId,
    collective: String,
    children: Vec<usize>,
    members: Vec<String>,
}

/// A small whole cycle, step by step, so a test can do harm in between:
/// root → 2 provinces → 1 district each → 2 cells each → 2 members each
/// (8 members and 9 collectives), every grade `good`.
struct Cycle {
    driver: Driver,
    me: Actor,
    cycle: String,
    units: Vec<Unit>,
    dossier: HashMap<String, String>,
    name_of: HashMap<String, String>,
}

impl Cycle {
    async fn register(dep: &Deployment) -> Cycle {
        Cycle::register_with(Driver::new(dep)).await
    }

    async fn register_with(driver: Driver) -> Cycle {
        let root = OrgId::new();
        let me = central(root);
        driver
            .eventually(&me, "submission", "register_org.v1", json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}))
            .await
            .unwrap();
        let cycle = driver
            .eventually(&me, "submission", "open_cycle.v1",
                json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                       "tiers": ["cell", "district", "province", "central"],
                       "deadlines": {"cell": "2026-12-15", "district": "2026-12-25", "province": "2027-01-15", "central": "2027-02-01"},
                       "quota": {"ratio": 0.2, "rounding": "floor"}}))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut c = Cycle {
            driver,
            me,
            cycle,
            units: vec![Unit {
                org: root,
                collective: "TW".into(),
                children: vec![],
                members: vec![],
            }],
            dossier: HashMap::new(),
            name_of: HashMap::new(),
        };
        for p in 1..=2 {
            let pcode = format!("P{p:02}");
            let pi = c.unit(&pcode, "province", 0).await;
            let dcode = format!("{pcode}.D01");
            let di = c.unit(&dcode, "district", pi).await;
            for k in 1..=2 {
                let ccode = format!("{dcode}.C{k:02}");
                let ci = c.unit(&ccode, "cell", di).await;
                c.units[ci].members = (1..=2).map(|m| format!("{ccode}.M{m}")).collect();
            }
        }
        for i in 0..c.units.len() {
            let (org, collective, members) = (
                c.units[i].org,
                c.units[i].collective.clone(),
                c.units[i].members.clone(),
            );
            let r = c.driver
                .eventually(&c.me, "submission", "register_subject.v1", json!({"cycle": c.cycle, "kind": "collective", "org": org, "name": collective, "category": "01"}))
                .await
                .unwrap();
            c.remember(&collective, &r);
            for (n, name) in members.iter().enumerate() {
                let leader = n == 0;
                let r = c.driver
                    .eventually(&c.me, "submission", "register_subject.v1", json!({"cycle": c.cycle, "kind": "individual", "org": org, "name": name, "category": if leader {"2A"} else {"2B"}, "leader": leader}))
                    .await
                    .unwrap();
                c.remember(name, &r);
            }
        }
        c
    }

    async fn unit(&mut self, code: &str, tier: &str, parent: usize) -> usize {
        let r = self
            .driver
            .eventually(&self.me, "submission", "register_org.v1", json!({"code": code, "name": format!("Tổ chức {code}"), "tier": tier, "parent": self.units[parent].org}))
            .await
            .unwrap();
        self.units.push(Unit {
            org: r["id"].as_str().unwrap().parse().unwrap(),
            collective: code.to_owned(),
            children: vec![],
            members: vec![],
        });
        let i = self.units.len() - 1;
        self.units[parent].children.push(i);
        i
    }

    fn remember(&mut self, name: &str, r: &Value) {
        let id = r["dossier"].as_str().unwrap().to_owned();
        self.name_of.insert(id.clone(), name.to_owned());
        self.dossier.insert(name.to_owned(), id);
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.dossier.keys().cloned().collect();
        v.sort();
        v
    }

    /// Self-review and meeting of every dossier.
    async fn file_all(&self) {
        for name in self.names() {
            let dossier = &self.dossier[&name];
            self.driver.eventually(&self.me, "submission", "submit_self_review.v1", json!({"dossier": dossier, "score": {"general": 28, "tasks": 65}, "proposed_grade": "good", "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"}))
                .await
                .unwrap();
            self.driver.eventually(&self.me, "submission", "record_meeting.v1", json!({"dossier": dossier, "proposed_grade": "good", "votes": {"good": 10}, "minutes": "Biên bản"}))
                .await
                .unwrap();
        }
    }

    /// [`Cycle::file_all`], except the self-review of `filed` (sent
    /// another way): only its meeting.
    async fn file_all_but(&self, filed: &str) {
        for name in self.names() {
            let dossier = &self.dossier[&name];
            if name != filed {
                self.driver.eventually(&self.me, "submission", "submit_self_review.v1", json!({"dossier": dossier, "score": {"general": 28, "tasks": 65}, "proposed_grade": "good", "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"}))
                    .await
                    .unwrap();
            }
            self.driver.eventually(&self.me, "submission", "record_meeting.v1", json!({"dossier": dossier, "proposed_grade": "good", "votes": {"good": 10}, "minutes": "Biên bản"}))
                .await
                .unwrap();
        }
    }

    async fn appraise_all(&self) {
        for name in self.names() {
            self.driver.eventually(&self.me, "appraisal", "appraise_dossier.v1", json!({"dossier": self.dossier[&name], "recommended_grade": "good", "facts": {}, "notes": "Thẩm định"}))
                .await
                .unwrap();
        }
    }

    async fn decide(&self, authority: usize, number: &str, names: &[String]) {
        let grades: Vec<Value> = names
            .iter()
            .map(|n| json!({"dossier": self.dossier[n], "grade": "good"}))
            .collect();
        self.driver
            .eventually(&self.me, "approval", "decide_batch.v1", json!({"cycle": self.cycle, "authority": self.units[authority].org, "number": number, "grades": grades}))
            .await
            .unwrap();
    }

    fn districts(&self) -> Vec<usize> {
        (0..self.units.len())
            .filter(|i| self.units[*i].collective.matches('.').count() == 1)
            .collect()
    }

    /// Each district decides its cells' members.
    async fn decide_members(&self) {
        for di in self.districts() {
            let members: Vec<String> = self.units[di]
                .children
                .iter()
                .flat_map(|c| self.units[*c].members.clone())
                .collect();
            self.decide(di, &format!("{di}-QĐ/HU"), &members).await;
        }
    }

    /// Every collective, bottom-up, up to the root's own.
    async fn decide_collectives(&self) {
        let children = |u: usize| -> Vec<String> {
            self.units[u]
                .children
                .iter()
                .map(|c| self.units[*c].collective.clone())
                .collect()
        };
        for di in self.districts() {
            self.decide(di, &format!("cells-{di}"), &children(di)).await;
        }
        for &pi in &self.units[0].children {
            self.decide(pi, &format!("districts-{pi}"), &children(pi))
                .await;
        }
        self.decide(0, "provinces", &children(0)).await;
        self.decide(0, "tw", &["TW".to_owned()]).await;
    }

    /// Waits for `cycle_completed` at submission, then checks the decision
    /// log: every dossier decided exactly once, `good`, and the log verifies.
    /// Returns the log.
    async fn finish(&self) -> Vec<Value> {
        let (d, me) = (&self.driver, &self.me);
        wait_for(
            Duration::from_secs(45),
            "cycle_completed at submission",
            || async {
                let c = d
                    .send(
                        me,
                        "submission",
                        "get_cycle.v1",
                        json!({"cycle": self.cycle}),
                    )
                    .await
                    .ok()?;
                (!c["completed_at"].is_null()).then_some(())
            },
        )
        .await
        .unwrap();
        let log = decision_log(d, me).await;
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for r in &log {
            assert_eq!(r["grade"], "good");
            *seen
                .entry(self.name_of[r["dossier"].as_str().unwrap()].clone())
                .or_default() += 1;
        }
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            self.names(),
            "every dossier is decided"
        );
        assert!(
            seen.values().all(|n| *n == 1),
            "a decision recorded twice: {seen:?}"
        );
        let v = d
            .send(me, "approval", "verify_log.v1", json!({}))
            .await
            .unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["records"], json!(log.len()));
        log
    }
}

async fn decision_log(d: &Driver, me: &Actor) -> Vec<Value> {
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

// ------------------------------------------------------------ the checks

/// Deletes the streams of a deployment on a shared server (best effort).
async fn delete_streams(dep: &Deployment) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    for s in [
        dep.names.events_stream(),
        dep.names.audit_stream(),
        dep.names.dead_letter_stream(),
    ] {
        let _ = js.delete_stream(&s).await;
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ------------------------------------------------------------ the tests

/// 17 dossiers: 8 members and 9 collectives.
const DOSSIERS: usize = 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_completes_on_a_3_node_cluster_while_a_node_is_killed_and_restarted() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let mut dep = Deployment::on(
        &cluster.urls(),
        None,
        None,
        gradeflow_testkit::fresh_names(),
        env_vars(&[("GRADEFLOW_STREAM_REPLICAS", "3")]),
    )
    .await
    .unwrap();
    dep.spawn_all().await.unwrap();
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut events = js.get_stream(dep.names.events_stream()).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(
        info.config.num_replicas, 3,
        "R3 from GRADEFLOW_STREAM_REPLICAS"
    );
    let mut audit = js.get_stream(dep.names.audit_stream()).await.unwrap();
    assert_eq!(audit.info().await.unwrap().config.num_replicas, 3);

    let c = Cycle::register(&dep).await;
    c.file_all().await;
    // The node that leads the events stream goes down with work in flight.
    let leader = events
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap();
    let victim = cluster.nodes.iter().position(|n| n.name == leader).unwrap();
    cluster.nodes[victim].kill();
    c.appraise_all().await;
    c.decide_members().await;
    cluster.nodes[victim].restart().unwrap();
    cluster.nodes[victim]
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    c.decide_collectives().await;
    let log = c.finish().await;
    assert_eq!(log.len(), DOSSIERS);
    check_audit_stream(&dep, &log).await;
    check_exactly_once(&dep).await;
    assert!(dep.all_running(), "no service exited");
    dep.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_survives_nats_and_postgres_restarts_without_restarting_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::single(dir.path()).unwrap();
    nats.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let pg = PgServer::start().unwrap();
    let mut dep = Deployment::on(
        &nats.url(),
        Some(pg.url()),
        None,
        gradeflow_testkit::fresh_names(),
        Vec::new(),
    )
    .await
    .unwrap();
    // Approval's /readyz, to watch readiness follow the servers.
    let ready_port = free_port();
    dep.service_env.insert(
        "approval".to_owned(),
        vec![(
            "GRADEFLOW_HTTP_ADDR".to_owned(),
            format!("127.0.0.1:{ready_port}"),
        )],
    );
    dep.spawn_all().await.unwrap();
    let pids: Vec<Option<u32>> = SERVICES.iter().map(|s| dep.pid(s)).collect();
    let readyz = |want: u16, what: &'static str| async move {
        wait_for(Duration::from_secs(20), what, || async move {
            system_tests::http_get_status(ready_port, "/readyz")
                .await
                .filter(|s| *s == want)
        })
        .await
        .unwrap();
    };
    readyz(200, "ready at start").await;

    let c = Cycle::register(&dep).await;
    c.file_all().await;
    // NATS goes down (SIGKILL) with events still in flight, and comes back
    // on the same store.
    nats.kill();
    readyz(503, "unready without NATS").await;
    nats.restart().unwrap();
    nats.wait_healthy(Duration::from_secs(20)).await.unwrap();
    readyz(200, "ready again with NATS back").await;
    c.appraise_all().await;
    // PostgreSQL crashes (immediate stop: recovery on start) and comes back.
    pg.stop("immediate").unwrap();
    readyz(503, "unready without PostgreSQL").await;
    pg.start_again().unwrap();
    readyz(200, "ready again with PostgreSQL back").await;
    c.decide_members().await;
    c.decide_collectives().await;
    let log = c.finish().await;
    assert_eq!(log.len(), DOSSIERS);
    check_audit_stream(&dep, &log).await;
    check_exactly_once(&dep).await;
    let after: Vec<Option<u32>> = SERVICES.iter().map(|s| dep.pid(s)).collect();
    assert_eq!(pids, after, "the same service processes throughout");
    assert!(dep.all_running(), "no service exited");
    dep.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_mid_cycle_restores_onto_a_fresh_data_dir_and_the_cycle_finishes() {
    let mut dep = Deployment::on(
        &gradeflow_testkit::nats_url(),
        None,
        None,
        gradeflow_testkit::fresh_names(),
        Vec::new(),
    )
    .await
    .unwrap();
    dep.spawn_all().await.unwrap();
    let mut c = Cycle::register(&dep).await;
    c.file_all().await;
    c.appraise_all().await;
    c.decide_members().await;
    // A quiet moment (every consumer caught up), then an online backup of
    // every store while the services keep running, and the keys.
    wait_consumers_caught_up(&dep).await;
    let backup = tempfile::tempdir().unwrap();
    for service in SERVICES {
        let (url, _) = dep.store_location(service);
        let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
        store
            .backup_to(&backup.path().join(format!("{service}.db")))
            .await
            .unwrap();
        store.close().await;
    }
    copy_dir(&dep.dir.path().join("keys"), &backup.path().join("keys"));
    let decided_before = decision_log(&c.driver, &c.me).await.len();
    assert_eq!(
        decided_before, 8,
        "the members were decided before the backup"
    );
    // The old machine is gone.
    dep.stop().await.unwrap();
    delete_streams(&dep).await;
    drop(dep);

    // A fresh machine: a new data dir from the backup, a NATS without any of
    // the old streams.
    let fresh = tempfile::tempdir().unwrap();
    for service in SERVICES {
        std::fs::copy(
            backup.path().join(format!("{service}.db")),
            fresh.path().join(format!("{service}.db")),
        )
        .unwrap();
        let store = Store::connect(
            &format!(
                "sqlite://{}?mode=rw",
                fresh.path().join(format!("{service}.db")).display()
            ),
            StoreOptions::default(),
        )
        .await
        .unwrap();
        let report = store.verify().await.unwrap();
        assert!(
            report.is_ok(),
            "{service} restored chain: {:?}",
            report.first_broken
        );
        store.close().await;
    }
    copy_dir(&backup.path().join("keys"), &fresh.path().join("keys"));
    let mut dep = Deployment::on(
        &gradeflow_testkit::nats_url(),
        None,
        Some(fresh),
        gradeflow_testkit::fresh_names(),
        Vec::new(),
    )
    .await
    .unwrap();
    dep.spawn_all().await.unwrap();
    c.driver = Driver::new(&dep);
    let v = c
        .driver
        .eventually(&c.me, "approval", "verify_log.v1", json!({}))
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "the restored decision log verifies: {v}");
    assert_eq!(v["records"], json!(decided_before));
    c.decide_collectives().await;
    let log = c.finish().await;
    assert_eq!(log.len(), DOSSIERS);
    check_audit_stream(&dep, &log).await;
    check_exactly_once(&dep).await;
    dep.stop().await.unwrap();
    audit_verify(&dep);
    delete_streams(&dep).await;
}

/// `gradeflow audit verify` on the deployment's stores and audit stream,
/// when this build has the command.
fn audit_verify(dep: &Deployment) {
    let bin = system_tests::binary();
    let has_audit = std::process::Command::new(&bin)
        .args(["audit", "verify", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_audit {
        return;
    }
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["audit", "verify", "--data-dir"])
        .arg(dep.dir.path())
        .args(["--nats-url", &dep.nats_url, "--prefix", dep.names.prefix()]);
    if let Some(url) = &dep.database_url {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "gradeflow audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one of PostgreSQL's client programs against the test's instance.
fn pg_tool(pg: &PgServer, program: &str, args: &[&str]) {
    let out = std::process::Command::new(format!("{}/{program}", system_tests::PG_BIN))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_per_schema_taken_mid_cycle_restores_into_a_fresh_database_and_the_cycle_finishes(
) {
    let pg = PgServer::start().unwrap();
    let mut dep = Deployment::on(
        &gradeflow_testkit::nats_url(),
        Some(pg.url()),
        None,
        gradeflow_testkit::fresh_names(),
        Vec::new(),
    )
    .await
    .unwrap();
    dep.spawn_all().await.unwrap();
    let mut c = Cycle::register(&dep).await;
    c.file_all().await;
    c.appraise_all().await;
    c.decide_members().await;
    // A quiet moment, then one dump per service schema while the services
    // run (docs/operations.md § Back up), and the keys.
    wait_consumers_caught_up(&dep).await;
    let backup = tempfile::tempdir().unwrap();
    for service in SERVICES {
        let file = backup.path().join(format!("{service}.dump"));
        pg_tool(
            &pg,
            "pg_dump",
            &[
                "--format=custom",
                "--schema",
                service,
                "--file",
                file.to_str().unwrap(),
                "postgres",
            ],
        );
    }
    copy_dir(&dep.dir.path().join("keys"), &backup.path().join("keys"));
    dep.stop().await.unwrap();
    delete_streams(&dep).await;
    drop(dep);

    // A fresh database on the server, restored schema by schema; a fresh
    // data dir with the keys; a NATS without the old streams.
    pg_tool(
        &pg,
        "psql",
        &["-d", "postgres", "-qc", "CREATE DATABASE restored"],
    );
    for service in SERVICES {
        let file = backup.path().join(format!("{service}.dump"));
        pg_tool(
            &pg,
            "pg_restore",
            &["--dbname", "restored", file.to_str().unwrap()],
        );
    }
    let fresh = tempfile::tempdir().unwrap();
    copy_dir(&backup.path().join("keys"), &fresh.path().join("keys"));
    let restored_url = format!("postgres://postgres@127.0.0.1:{}/restored", pg.port);
    let mut dep = Deployment::on(
        &gradeflow_testkit::nats_url(),
        Some(restored_url),
        Some(fresh),
        gradeflow_testkit::fresh_names(),
        Vec::new(),
    )
    .await
    .unwrap();
    dep.spawn_all().await.unwrap();
    c.driver = Driver::new(&dep);
    let v = c
        .driver
        .eventually(&c.me, "approval", "verify_log.v1", json!({}))
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "the restored decision log verifies: {v}");
    assert_eq!(v["records"], json!(8));
    c.decide_collectives().await;
    let log = c.finish().await;
    assert_eq!(log.len(), DOSSIERS);
    check_audit_stream(&dep, &log).await;
    check_exactly_once(&dep).await;
    dep.stop().await.unwrap();
    audit_verify(&dep);
    delete_streams(&dep).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The users of `deploy/nats/accounts.conf`.
const NATS_USERS: [&str; 6] = [
    "portal",
    "submission",
    "appraisal",
    "approval",
    "progress",
    "ops",
];

/// Whether the server refuses `user`'s publish on `subject`: the client is
/// told "Permissions Violation" and a subscriber with the whole account
/// (`ops`) receives nothing.
async fn publish_refused(url: &str, ops: &async_nats::Client, subject: &str) -> bool {
    use futures::StreamExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (user, password) = url
        .trim_start_matches("nats://")
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .unwrap();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.to_owned(), password.to_owned())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    let mut watcher = ops.subscribe(subject.to_owned()).await.unwrap();
    ops.flush().await.unwrap();
    client
        .publish(subject.to_owned(), "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = rx.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let delivered = tokio::time::timeout(Duration::from_millis(300), watcher.next())
        .await
        .is_ok();
    refused && !delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_deploy_nats_accounts_only_the_portal_sends_commands_and_each_service_its_own_events()
{
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("deploy/nats/accounts.conf"),
        dir.path().join("accounts.conf"),
    )
    .unwrap();
    let (port, http) = (free_port(), free_port());
    let config = format!(
        "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
         jetstream {{ store_dir: \"{}\" }}\ninclude \"accounts.conf\"\n",
        dir.path().join("js").display()
    );
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let password = |user: &str| format!("{user}-{secret}");
    let env = NATS_USERS
        .iter()
        .map(|u| {
            (
                format!("GRADEFLOW_NATS_{}_PASSWORD", u.to_uppercase()),
                password(u),
            )
        })
        .collect();
    let server = NatsServer::start(dir.path(), "secured", port, http, &config, env).unwrap();
    server.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let url = |user: &str| format!("nats://{user}:{}@127.0.0.1:{port}", password(user));

    // The prefix the file is written for. The checks connect as `ops`; each
    // service runs on its own user; commands come from the portal's.
    let names = Names::new("gradeflow").unwrap();
    let mut dep = Deployment::on(&url("ops"), None, None, names.clone(), Vec::new())
        .await
        .unwrap();
    for s in SERVICES {
        dep.service_env.insert(
            s.to_owned(),
            vec![("GRADEFLOW_NATS_URL".to_owned(), url(s))],
        );
    }
    dep.spawn_all().await.unwrap();
    let portal = connect_nats(&url("portal")).await.unwrap();
    let driver = Driver {
        client: CommandClient::new(portal.clone(), names, Duration::from_secs(15)),
    };
    let c = Cycle::register_with(driver).await;
    c.file_all().await;
    c.appraise_all().await;
    c.decide_members().await;
    c.decide_collectives().await;
    let log = c.finish().await;
    assert_eq!(log.len(), DOSSIERS);
    check_audit_stream(&dep, &log).await;
    check_exactly_once(&dep).await;
    assert!(dep.all_running(), "no service exited");
    dep.stop().await.unwrap();

    // What the server refuses.
    let ops = dep.nats.clone();
    for (user, subject) in [
        ("submission", "gradeflow.cmd.approval.decide_batch.v1"),
        ("submission", "gradeflow.cmd.submission.register_org.v1"),
        ("appraisal", "gradeflow.cmd.approval.decide_batch.v1"),
        ("approval", "gradeflow.cmd.approval.decide_batch.v1"),
        ("submission", "gradeflow.evt.approval._.grade_decided.v1"),
        (
            "appraisal",
            "gradeflow.evt.submission.P01.self_review_submitted.v1",
        ),
        ("appraisal", "gradeflow.audit.forged"),
        ("portal", "gradeflow.evt.submission._.org_registered.v1"),
    ] {
        assert!(
            publish_refused(&url(user), &ops, subject).await,
            "{user} could publish on {subject}"
        );
    }
    // What it lets through: a service's own event into the stream, and a
    // command from the portal to the service's subscription.
    let submission = connect_nats(&url("submission")).await.unwrap();
    let js = async_nats::jetstream::new(submission.clone());
    js.publish("gradeflow.evt.submission._.probe.v1", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut commands = submission
        .subscribe("gradeflow.cmd.submission.>")
        .await
        .unwrap();
    // async-nats's flush does not wait for the server to have the
    // subscription, so the portal sends its (allowed) command until the
    // subscriber sees one, rather than once into a possible race.
    let sender = {
        let portal = portal.clone();
        tokio::spawn(async move {
            loop {
                let _ = portal
                    .publish("gradeflow.cmd.submission.probe.v1", "{}".into())
                    .await;
                let _ = portal.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    use futures::StreamExt as _;
    let got = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .unwrap()
        .unwrap();
    sender.abort();
    assert_eq!(got.subject.as_str(), "gradeflow.cmd.submission.probe.v1");
}

// ------------------------------------------------------------ deploy/

/// Reads the compose file and the Kubernetes manifests with PyYAML and
/// prints what the test checks, as JSON: every container that runs the
/// gradeflow image, the other images, and what the manifests define and
/// reference.
const MANIFEST_SUMMARY: &str = r#"
import glob, json, os, sys, yaml
root = sys.argv[1]
out = {"gradeflow": [], "other_images": [], "defined": {}, "referenced": []}
compose = yaml.safe_load(open(os.path.join(root, "deploy/compose/compose.yaml")))
for name, svc in compose["services"].items():
    image = svc.get("image", "")
    if image.startswith("gradeflow"):
        ports = sorted({int(str(p).split(":")[-1]) for p in svc.get("ports", []) + svc.get("expose", [])})
        out["gradeflow"].append({"where": "compose " + name, "image": image,
            "args": svc.get("command", []), "env": sorted(svc.get("environment", {})),
            "env_values": {k: str(v) for k, v in svc.get("environment", {}).items()},
            "ports": ports, "readiness": None, "liveness": None,
            "dockerfile": svc.get("build", {}).get("dockerfile")})
    else:
        out["other_images"].append(image)
for f in sorted(glob.glob(os.path.join(root, "deploy/k8s/*.yaml"))):
    for doc in yaml.safe_load_all(open(f)):
        if not doc or "metadata" not in doc:
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        keys = sorted(doc.get("data", {}) or {}) + sorted(doc.get("stringData", {}) or {})
        out["defined"]["%s/%s" % (kind, name)] = keys
        if kind not in ("Deployment", "StatefulSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v: out["referenced"].append("ConfigMap/" + v["configMap"]["name"])
            if "secret" in v: out["referenced"].append("Secret/" + v["secret"]["secretName"])
            if "persistentVolumeClaim" in v: out["referenced"].append("PersistentVolumeClaim/" + v["persistentVolumeClaim"]["claimName"])
        for c in spec["containers"]:
            env_from = []
            for e in c.get("envFrom", []):
                if "configMapRef" in e: env_from.append("ConfigMap/" + e["configMapRef"]["name"])
                if "secretRef" in e: env_from.append("Secret/" + e["secretRef"]["name"])
            out["referenced"].extend(env_from)
            if not c["image"].startswith("gradeflow"):
                out["other_images"].append(c["image"])
                continue
            probe = lambda p: p and [p["httpGet"]["path"], p["httpGet"]["port"]]
            out["gradeflow"].append({"where": "k8s %s/%s" % (kind, name), "image": c["image"],
                "args": c.get("args", []), "env": sorted(e["name"] for e in c.get("env", [])),
                "env_from": env_from, "env_values": {},
                "ports": [p["containerPort"] for p in c.get("ports", [])],
                "readiness": probe(c.get("readinessProbe")), "liveness": probe(c.get("livenessProbe")),
                "dockerfile": None})
print(json.dumps(out))
"#;

/// A Python that has PyYAML (`scripts/services.sh tools` installs it).
fn python_with_yaml() -> String {
    for p in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(p)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p.to_owned();
        }
    }
    panic!("no python3 with PyYAML: run scripts/services.sh tools");
}

/// `docker compose`, else Debian's `docker-compose` (the client alone is
/// enough for `config`).
fn compose_command() -> Vec<String> {
    let plugin = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// The example passwords of deploy/compose/.env.example, as variables.
fn compose_example_env(root: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(root.join("deploy/compose/.env.example"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn deploy_manifests_are_valid_and_name_only_what_the_code_defines() {
    let root = repo_root();
    let example = compose_example_env(&root);

    // `docker compose config` accepts the compose file.
    let cmd = compose_command();
    let out = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg("-f")
        .arg(root.join("deploy/compose/compose.yaml"))
        .arg("config")
        .envs(example.iter().cloned())
        .output()
        .expect("docker compose (or docker-compose) is installed: scripts/services.sh tools");
    assert!(
        out.status.success(),
        "{} config: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );

    // The NATS configurations parse (with the accounts' passwords set).
    let nats_env: Vec<(String, String)> = NATS_USERS
        .iter()
        .map(|u| {
            (
                format!("GRADEFLOW_NATS_{}_PASSWORD", u.to_uppercase()),
                "x".to_owned(),
            )
        })
        .collect();
    for conf in [
        "single.conf",
        "accounts.conf",
        "cluster/n1.conf",
        "cluster/n2.conf",
        "cluster/n3.conf",
    ] {
        let out = std::process::Command::new(system_tests::nats_server_binary())
            .arg("-c")
            .arg(root.join("deploy/nats").join(conf))
            .arg("-t")
            .envs(nats_env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/nats/{conf}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The manifests parse, and name only what the code defines.
    let out = std::process::Command::new(python_with_yaml())
        .args(["-c", MANIFEST_SUMMARY])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the manifests do not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut variables: HashSet<&str> = gradeflow_kit::config::VARIABLES.into_iter().collect();
    variables.extend([
        gradeflow_portal::config::ENV_JWT_KEY_FILE,
        gradeflow_portal::config::ENV_JWKS_FILE,
        gradeflow_portal::config::ENV_JWT_ISSUER,
        gradeflow_portal::config::ENV_JWT_AUDIENCE,
        gradeflow_portal::config::ENV_JWT_LOCAL,
    ]);
    let help = std::process::Command::new(system_tests::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let subcommands: HashSet<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The HTTP port the code listens on, as configured.
    let defined = summary["defined"].as_object().unwrap();
    let k8s_addr = defined["ConfigMap/gradeflow-env"].as_array().unwrap();
    assert!(k8s_addr.contains(&json!("GRADEFLOW_HTTP_ADDR")));
    let http_port = 8080;

    let containers = summary["gradeflow"].as_array().unwrap();
    let mut run: HashSet<String> = HashSet::new();
    for c in containers {
        let at = c["where"].as_str().unwrap();
        assert_eq!(c["image"], "gradeflow:latest", "{at}");
        let sub = c["args"][0].as_str().unwrap();
        assert!(
            subcommands.contains(sub),
            "{at}: `gradeflow {sub}` does not exist"
        );
        run.insert(sub.to_owned());
        for name in c["env"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(
                variables.contains(name),
                "{at}: {name} is not read by gradeflow"
            );
        }
        if let Some(addr) = c["env_values"]["GRADEFLOW_HTTP_ADDR"].as_str() {
            assert!(addr.ends_with(&format!(":{http_port}")), "{at}: {addr}");
        }
        for source in c["env_from"].as_array().into_iter().flatten() {
            let source = source.as_str().unwrap();
            let keys = defined
                .get(source)
                .unwrap_or_else(|| panic!("{at}: {source} is not defined in deploy/k8s"));
            for key in keys.as_array().unwrap() {
                let key = key.as_str().unwrap();
                assert!(
                    variables.contains(key),
                    "{source}: {key} is not read by gradeflow"
                );
            }
        }
        let ports: Vec<u64> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(ports, [http_port], "{at}: the port of GRADEFLOW_HTTP_ADDR");
        if at.starts_with("k8s") {
            assert_eq!(c["readiness"], json!(["/readyz", http_port]), "{at}");
            assert_eq!(c["liveness"], json!(["/healthz", http_port]), "{at}");
        } else {
            let dockerfile = c["dockerfile"].as_str().unwrap();
            assert!(root.join(dockerfile).exists(), "{at}: {dockerfile}");
        }
    }
    for s in ["submission", "appraisal", "approval", "progress", "portal"] {
        assert!(run.contains(s), "deploy runs no {s}");
    }
    for image in summary["other_images"].as_array().unwrap() {
        let image = image.as_str().unwrap();
        assert!(
            image.starts_with("nats:2.") || image.starts_with("postgres:15"),
            "unexpected image {image}"
        );
    }
    // Everything referenced is defined, except what docs/operations.md has
    // the operator create from files (the accounts, the identity provider's
    // keys).
    let by_hand = ["ConfigMap/nats-accounts", "Secret/portal-jwks"];
    for r in summary["referenced"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(
            defined.contains_key(r) || by_hand.contains(&r),
            "{r} is referenced but not defined"
        );
    }
    let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    for r in by_hand {
        let name = r.split('/').nth(1).unwrap();
        assert!(
            ops.contains(name),
            "docs/operations.md says how to create {name}"
        );
    }
    // Every file under deploy/ is referenced from docs/operations.md.
    let mut dirs = vec![root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            assert!(
                ops.contains(&rel),
                "docs/operations.md does not reference {rel}"
            );
        }
    }
}

// ------------------------------------------------------------ OTLP/HTTP

/// One span as an OTLP/HTTP receiver sees it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: String,
    name: String,
    kind: Option<String>,
}

/// Reads a protobuf varint at `*i`.
fn varint(buf: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields of a protobuf message as (number, bytes);
/// other wire types are skipped.
fn fields(buf: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let Some(key) = varint(buf, &mut i) else {
            break;
        };
        match key & 7 {
            0 => {
                if varint(buf, &mut i).is_none() {
                    break;
                }
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let Some(len) = varint(buf, &mut i) else {
                    break;
                };
                let end = i + len as usize;
                if end > buf.len() {
                    break;
                }
                out.push((key >> 3, &buf[i..end]));
                i = end;
            }
            _ => break,
        }
    }
    out
}

/// A `KeyValue`'s key and string value.
fn key_value(buf: &[u8]) -> (String, Option<String>) {
    let mut key = String::new();
    let mut value = None;
    for (n, b) in fields(buf) {
        match n {
            1 => key = String::from_utf8_lossy(b).into_owned(),
            // AnyValue { string_value = 1 }
            2 => {
                value = fields(b)
                    .into_iter()
                    .find(|(n, _)| *n == 1)
                    .map(|(_, s)| String::from_utf8_lossy(s).into_owned())
            }
            _ => {}
        }
    }
    (key, value)
}

/// The spans of an `ExportTraceServiceRequest` (opentelemetry-proto:
/// resource_spans = 1 { resource = 1 { attributes = 1 }, scope_spans = 2 {
/// spans = 2 { trace_id = 1, name = 5, attributes = 9 } } }).
fn decode_spans(body: &[u8]) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for (_, resource_spans) in fields(body).into_iter().filter(|(n, _)| *n == 1) {
        let mut service = String::new();
        for (n, b) in fields(resource_spans) {
            if n == 1 {
                for (_, kv) in fields(b).into_iter().filter(|(n, _)| *n == 1) {
                    let (key, value) = key_value(kv);
                    if let ("service.name", Some(v)) = (key.as_str(), value) {
                        service = v;
                    }
                }
            }
        }
        for (_, scope_spans) in fields(resource_spans).into_iter().filter(|(n, _)| *n == 2) {
            for (_, span) in fields(scope_spans).into_iter().filter(|(n, _)| *n == 2) {
                let mut s = ReceivedSpan {
                    service: service.clone(),
                    trace_id: String::new(),
                    name: String::new(),
                    kind: None,
                };
                for (n, b) in fields(span) {
                    match n {
                        1 => s.trace_id = b.iter().map(|x| format!("{x:02x}")).collect(),
                        5 => s.name = String::from_utf8_lossy(b).into_owned(),
                        9 => {
                            let (key, value) = key_value(b);
                            if key == "kind" {
                                s.kind = value;
                            }
                        }
                        _ => {}
                    }
                }
                out.push(s);
            }
        }
    }
    out
}

/// A tiny OTLP/HTTP receiver on loopback: answers every `POST /v1/traces`
/// with 200 and keeps the spans it decoded.
async fn otlp_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    if head.starts_with("post /v1/traces") {
                        kept.lock().unwrap().extend(decode_spans(&body));
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, spans)
}

/// The dossier's trace: the self-review's `traceparent`.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_export_shows_one_trace_from_the_http_request_to_the_decision_across_services() {
    let (otlp_port, spans) = otlp_receiver().await;
    let portal_port = free_port();
    let mut dep = Deployment::on(
        &gradeflow_testkit::nats_url(),
        None,
        None,
        gradeflow_testkit::fresh_names(),
        env_vars(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{otlp_port}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]),
    )
    .await
    .unwrap();
    dep.service_env.insert(
        "portal".to_owned(),
        vec![(
            "GRADEFLOW_HTTP_ADDR".to_owned(),
            format!("127.0.0.1:{portal_port}"),
        )],
    );
    dep.spawn_all().await.unwrap();
    dep.spawn("portal").await.unwrap();

    let c = Cycle::register(&dep).await;
    // The dossier's first step goes through the portal's HTTP API with the
    // W3C trace context; everything else travels as commands without one.
    let member = "P01.D01.C01.M1".to_owned();
    let token = std::process::Command::new(system_tests::binary())
        .args(["token", "--role", "central", "--org"])
        .arg(c.units[0].org.to_string())
        .arg("--data-dir")
        .arg(dep.dir.path())
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{portal_port}/api/v1/dossiers/{}/self-review",
        c.dossier[&member]
    );
    let body = json!({"score": {"general": 28, "tasks": 65}, "proposed_grade": "good",
        "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
        "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"});
    wait_for(Duration::from_secs(30), "the self-review over HTTP", || {
        let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
        async move {
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .header("traceparent", TRACE)
                .json(&body)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await
    .unwrap();
    c.file_all_but(&member).await;
    c.appraise_all().await;
    c.decide_members().await;

    let trace_id = TRACE.split('-').nth(1).unwrap().to_owned();
    let seen = |service: &str, name: &str, kind: Option<&str>| {
        spans.lock().unwrap().iter().any(|s| {
            s.trace_id == trace_id
                && s.service == service
                && s.name == name
                && kind.is_none_or(|k| s.kind.as_deref().is_some_and(|x| x.starts_with(k)))
        })
    };
    // Spans are exported in batches (every 5 s by default).
    wait_for(
        Duration::from_secs(30),
        "the dossier's spans at the receiver",
        || async {
            (seen("gradeflow-portal", "portal.http", None)
                && seen(
                    "gradeflow-submission",
                    "service.command",
                    Some("submit_self_review"),
                )
                && seen(
                    "gradeflow-appraisal",
                    "service.observe",
                    Some("meeting_recorded"),
                )
                && seen(
                    "gradeflow-approval",
                    "service.observe",
                    Some("dossier_appraised"),
                )
                && seen(
                    "gradeflow-submission",
                    "service.observe",
                    Some("grade_decided"),
                ))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        let mine: Vec<ReceivedSpan> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        panic!("{e}: spans of the trace: {mine:#?}")
    });
    dep.stop().await.unwrap();
    delete_streams(&dep).await;
}
