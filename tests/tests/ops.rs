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
use gradeflow_proto::{Actor, Envelope, OrgId};
use gradeflow_service::client::CommandClient;
use serde_json::{json, Value};
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

/// The audit stream holds exactly the decision log, record for record.
async fn check_audit_stream(dep: &Deployment, log: &[Value]) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut stream = js.get_stream(dep.names.audit_stream()).await.unwrap();
    wait_for(Duration::from_secs(30), "the audit stream to hold the log", || {
        let mut stream = stream.clone();
        async move {
            (stream.info().await.ok()?.state.messages == log.len() as u64).then_some(())
        }
    })
    .await
    .unwrap();
    let info = stream.info().await.unwrap();
    let first = info.state.first_sequence;
    for (i, record) in log.iter().enumerate() {
        let msg = stream.get_raw_message(first + i as u64).await.unwrap();
        let mirrored: Value = serde_json::from_slice(&msg.payload).unwrap();
        for field in ["seq", "dossier", "grade", "hash", "signature"] {
            assert_eq!(
                mirrored[field],
                record[field],
                "audit record {} {field}",
                i + 1
            );
        }
    }
}

/// Waits until every service's durable consumer has handled everything in
/// the events stream.
async fn wait_consumers_caught_up(dep: &Deployment) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    for service in SERVICES {
        let durable = dep.names.durable(service);
        wait_for(
            Duration::from_secs(60),
            &format!("{durable} to catch up"),
            || {
                let stream = stream.clone();
                let durable = durable.clone();
                async move {
                    let mut c: async_nats::jetstream::consumer::PullConsumer =
                        stream.get_consumer(&durable).await.ok()?;
                    let info = c.info().await.ok()?;
                    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
                }
            },
        )
        .await
        .unwrap();
    }
}

/// Every event published once; every observed event copied exactly once
/// into each store that observes it; every store's chain verifies.
async fn check_exactly_once(dep: &Deployment) {
    wait_consumers_caught_up(dep).await;
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    let mut published: HashMap<String, Envelope> = HashMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let env: Envelope = serde_json::from_slice(&msg.payload).unwrap();
        assert!(
            published.insert(env.event_id.to_string(), env).is_none(),
            "an event id published twice"
        );
    }
    let mut own_total = 0;
    for service in SERVICES {
        let (url, schema) = dep.store_location(service);
        let store = Store::connect(
            &url,
            StoreOptions {
                schema,
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap();
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{service} chain: {:?}", report.first_broken);
        let events = store.read_from(0, usize::MAX >> 1).await.unwrap();
        let mut copies: HashSet<uuid::Uuid> = HashSet::new();
        let mut observed_kinds: HashSet<String> = HashSet::new();
        for e in &events {
            if e.metadata.service == service {
                own_total += 1;
                assert!(
                    published.contains_key(&e.event_id.to_string()),
                    "{service} event {} never published",
                    e.kind
                );
            } else {
                let cause = e.metadata.causation_id.unwrap();
                assert!(copies.insert(cause), "{service} recorded {} twice", e.kind);
                observed_kinds.insert(e.kind.clone());
            }
        }
        for (id, env) in &published {
            if observed_kinds.contains(&env.kind) {
                assert!(
                    copies.contains(&id.parse().unwrap()),
                    "{service} missed a {}",
                    env.kind
                );
            }
        }
        store.close().await;
    }
    assert_eq!(
        own_total,
        published.len(),
        "every own event published once, nothing else"
    );
}

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
    dep.spawn_all().await.unwrap();
    let pids: Vec<Option<u32>> = SERVICES.iter().map(|s| dep.pid(s)).collect();

    let c = Cycle::register(&dep).await;
    c.file_all().await;
    // NATS goes down (SIGKILL) with events still in flight, and comes back
    // on the same store.
    nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart().unwrap();
    nats.wait_healthy(Duration::from_secs(20)).await.unwrap();
    c.appraise_all().await;
    // PostgreSQL crashes (immediate stop: recovery on start) and comes back.
    pg.stop("immediate").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.start_again().unwrap();
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
    submission.flush().await.unwrap();
    portal
        .publish("gradeflow.cmd.submission.probe.v1", "{}".into())
        .await
        .unwrap();
    portal.flush().await.unwrap();
    use futures::StreamExt as _;
    let got = tokio::time::timeout(Duration::from_secs(5), commands.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject.as_str(), "gradeflow.cmd.submission.probe.v1");
}
