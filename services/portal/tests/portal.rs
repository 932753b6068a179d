//! The portal's HTTP tests: the real services (submission, appraisal,
//! approval, progress) run in-process on the real NATS server under a fresh
//! prefix, each on its own SQLite file; the portal's router is served on
//! 127.0.0.1:0 and driven with an HTTP client, exactly as an outside caller
//! would (`API.md`). Waits are conditions with deadlines, never bare sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gradeflow_appraisal_server::Appraisal;
use gradeflow_approval_server::{Approval, KeyRing};
use gradeflow_bus::{ensure_streams, StreamSettings};
use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_kit::{Health, Metrics};
use gradeflow_portal::auth::{sign_claims, Claims, LOCAL_AUDIENCE, LOCAL_ISSUER};
use gradeflow_portal::idempotency::command_id_for;
use gradeflow_portal::{router, Grant, LocalKeys, PortalConfig, PortalState};
use gradeflow_progress::Progress;
use gradeflow_proto::{Actor, Names, OrgId, Role};
use gradeflow_service::client::CommandClient;
use gradeflow_service::runtime::{spawn, Wiring};
use gradeflow_submission_server::Submission;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a condition may take to come true.
const DEADLINE: Duration = Duration::from_secs(30);

/// One deployment: services, portal, HTTP client.
struct World {
    url: String,
    http: reqwest::Client,
    keys: LocalKeys,
    names: Names,
    nats: async_nats::Client,
    stores: Vec<(&'static str, Store)>,
    state: PortalState,
    shutdown: CancellationToken,
    portal_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    data_dir: tempfile::TempDir,
    _files: Vec<gradeflow_testkit::SqliteFile>,
}

/// An answer: status, body (JSON, or the text as a JSON string), headers.
struct Answer {
    status: u16,
    body: Value,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl World {
    /// Every service and the portal.
    async fn start() -> anyhow::Result<World> {
        Self::start_with(true, |_| {}).await
    }

    async fn start_with(
        services: bool,
        tweak: impl FnOnce(&mut PortalConfig),
    ) -> anyhow::Result<World> {
        let nats = gradeflow_testkit::nats().await?;
        let names = gradeflow_testkit::fresh_names();
        let js = async_nats::jetstream::new(nats.clone());
        ensure_streams(&js, &names, &StreamSettings::default()).await?;
        let shutdown = CancellationToken::new();
        let data_dir = tempfile::tempdir()?;
        let mut tasks = Vec::new();
        let mut stores = Vec::new();
        let mut files = Vec::new();
        if services {
            for service in ["submission", "appraisal", "approval", "progress"] {
                let file = gradeflow_testkit::fresh_sqlite()?;
                let store = Store::connect(&file.url, StoreOptions::default()).await?;
                let wiring = |observed: Vec<String>| Wiring {
                    client: nats.clone(),
                    names: names.clone(),
                    store: store.clone(),
                    observed,
                };
                let kinds = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
                let started = match service {
                    "submission" => {
                        let w = Submission::open(store.clone()).await?;
                        let observed = kinds(&gradeflow_submission_server::OBSERVED_KINDS);
                        spawn(Arc::new(w), wiring(observed), shutdown.clone()).await?
                    }
                    "appraisal" => {
                        let w = Appraisal::open(store.clone()).await?;
                        let observed = kinds(&gradeflow_appraisal_server::OBSERVED_KINDS);
                        spawn(Arc::new(w), wiring(observed), shutdown.clone()).await?
                    }
                    "approval" => {
                        let ring = KeyRing::open(data_dir.path().join("keys"))?;
                        let w = Approval::open(store.clone(), ring).await?;
                        let observed = kinds(gradeflow_approval_server::OBSERVED_KINDS);
                        spawn(Arc::new(w), wiring(observed), shutdown.clone()).await?
                    }
                    _ => {
                        let w = Progress::open(store.clone()).await?;
                        spawn(
                            Arc::new(w),
                            wiring(Progress::observed_kinds()),
                            shutdown.clone(),
                        )
                        .await?
                    }
                };
                tasks.extend(started);
                stores.push((service, store));
                files.push(file);
            }
        }
        let mut config = PortalConfig {
            names: names.clone(),
            data_dir: data_dir.path().to_path_buf(),
            catch_up_wait: Duration::from_secs(15),
            ..PortalConfig::default()
        };
        tweak(&mut config);
        let state = PortalState::open(config, nats.clone(), Health::new(), Metrics::new()).await?;
        let keys = LocalKeys::open(data_dir.path())?;
        let portal_stop = CancellationToken::new();
        let url = serve(&state, portal_stop.clone()).await?;
        Ok(World {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            keys,
            names,
            nats,
            stores,
            state,
            shutdown,
            portal_stop,
            tasks,
            data_dir,
            _files: files,
        })
    }

    /// Stops the portal and starts a new one on the same data dir (its
    /// keys, its idempotency store), as a restart would.
    async fn restart_portal(&mut self) -> anyhow::Result<()> {
        self.portal_stop.cancel();
        self.state.close().await;
        let config = PortalConfig {
            names: self.names.clone(),
            data_dir: self.data_dir.path().to_path_buf(),
            catch_up_wait: Duration::from_secs(15),
            ..PortalConfig::default()
        };
        self.state =
            PortalState::open(config, self.nats.clone(), Health::new(), Metrics::new()).await?;
        self.portal_stop = CancellationToken::new();
        self.url = serve(&self.state, self.portal_stop.clone()).await?;
        Ok(())
    }

    async fn finish(self) {
        self.portal_stop.cancel();
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.state.close().await;
        for (_, s) in &self.stores {
            s.close().await;
        }
        let js = async_nats::jetstream::new(self.nats.clone());
        for s in [
            self.names.events_stream(),
            self.names.audit_stream(),
            self.names.dead_letter_stream(),
        ] {
            let _ = js.delete_stream(&s).await;
        }
    }

    fn token(&self, role: Role, org: OrgId) -> String {
        self.token_for(&format!("{role:?}-{org}"), &[Grant { role, org }])
    }

    fn token_for(&self, sub: &str, grants: &[Grant]) -> String {
        self.keys
            .mint(sub, grants, Duration::from_secs(3600))
            .unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Raw(bytes, content_type)) => {
                req.header("content-type", content_type).body(bytes)
            }
            None => req,
        };
        let resp = req.send().await.expect("the portal answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("a body").to_vec();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            body,
            headers,
            bytes,
        }
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(Body::Json(body)), &[])
            .await
    }

    async fn post_keyed(&self, path: &str, token: &str, key: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(token),
            Some(Body::Json(body)),
            &[("idempotency-key", key)],
        )
        .await
    }

    async fn post_raw(&self, path: &str, token: &str, raw: &[u8], content_type: &str) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(token),
            Some(Body::Raw(raw.to_vec(), content_type.to_owned())),
            &[],
        )
        .await
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None, &[]).await
    }

    /// GETs `path` until `ok` holds of the answer.
    async fn get_until(&self, path: &str, token: &str, ok: impl Fn(&Answer) -> bool) -> Answer {
        let started = Instant::now();
        loop {
            let a = self.get(path, token).await;
            if ok(&a) {
                return a;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "GET {path} never satisfied the condition; last: {} {}",
                a.status,
                a.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The head (position, hash) of every service store and of the
    /// portal's own, once they stopped moving (events between the services
    /// travel asynchronously).
    async fn settled_heads(&self) -> Vec<(&'static str, Option<(i64, String)>)> {
        let started = Instant::now();
        let mut last = self.heads().await;
        loop {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let now = self.heads().await;
            if now == last {
                return now;
            }
            assert!(started.elapsed() < DEADLINE, "the stores never settled");
            last = now;
        }
    }

    async fn heads(&self) -> Vec<(&'static str, Option<(i64, String)>)> {
        let mut heads = Vec::new();
        for (name, store) in &self.stores {
            heads.push((*name, store.head().await.unwrap()));
        }
        heads.push((
            "portal",
            self.state.idempotency().store().head().await.unwrap(),
        ));
        heads
    }

    /// A command client on this deployment's prefix (to check the
    /// services' own refusals, and to play a portal that died mid-request).
    fn commands(&self) -> CommandClient {
        CommandClient::new(
            self.nats.clone(),
            self.names.clone(),
            Duration::from_secs(10),
        )
    }
}

/// POSTs `size` bytes of JSON with `Transfer-Encoding: chunked` (no
/// `Content-Length`) over a bare connection; returns the raw answer.
async fn chunked_post(url: &str, path: &str, token: &str, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    // The server may answer and close before everything is sent.
    while sent < size {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if conn.write_all(&framed).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

enum Body {
    Json(Value),
    Raw(Vec<u8>, String),
}

async fn serve(state: &PortalState, stop: CancellationToken) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(format!("http://{addr}"))
}

fn id(v: &Value, field: &str) -> OrgId {
    v[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no `{field}` in {v}"))
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {v}"))
        .to_owned()
}

/// The tree every test starts from: TW → P01 → D01 → {C01, C02}, and the
/// 2026 annual cycle.
struct Tree {
    root: OrgId,
    province: OrgId,
    district: OrgId,
    cells: [OrgId; 2],
    cycle: String,
    central: String,
}

async fn tree(w: &World) -> Tree {
    // Founding the tree: the token's org is a placeholder, since no org
    // exists yet; only the role counts for the root.
    let founder = w.token(Role::Central, OrgId::new());
    let root = w
        .post(
            "/api/v1/orgs",
            &founder,
            json!({"code": "TW", "name": "Trung ương", "tier": "central", "parent": null}),
        )
        .await;
    assert_eq!(root.status, 201, "{}", root.body);
    assert_eq!(root.body["parent"], Value::Null);
    let root = id(&root.body, "id");
    let central = w.token(Role::Central, root);
    let org = |code: &'static str, tier: &'static str, parent: OrgId| {
        let central = central.clone();
        async move {
            let a = w
                .post(
                    "/api/v1/orgs",
                    &central,
                    json!({"code": code, "name": format!("Đảng bộ {code}"), "tier": tier, "parent": parent}),
                )
                .await;
            assert_eq!(a.status, 201, "{code}: {}", a.body);
            for field in ["id", "code", "name", "tier", "parent"] {
                assert!(
                    a.body.get(field).is_some(),
                    "{field} missing from {}",
                    a.body
                );
            }
            assert_eq!(a.body["parent"], json!(parent));
            id(&a.body, "id")
        }
    };
    let province = org("P01", "province", root).await;
    let district = org("D01", "district", province).await;
    let c1 = org("C01", "cell", district).await;
    let c2 = org("C02", "cell", district).await;
    let cycle = w
        .post(
            "/api/v1/cycles",
            &central,
            json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                   "tiers": ["cell", "district", "province", "central"],
                   "deadlines": {"cell": "2026-12-15", "district": "2026-12-25"},
                   "quota": {"ratio": 0.2, "rounding": "floor"}}),
        )
        .await;
    assert_eq!(cycle.status, 201, "{}", cycle.body);
    assert_eq!(cycle.body["year"], 2026);
    assert_eq!(cycle.body["rulebook"], "qd366-2025");
    Tree {
        root,
        province,
        district,
        cells: [c1, c2],
        cycle: s(&cycle.body, "id"),
        central,
    }
}

fn self_review(grade: &str) -> Value {
    json!({"score": {"general": 28, "tasks": 65}, "proposed_grade": grade,
           "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
           "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"})
}

fn meeting(grade: &str) -> Value {
    json!({"proposed_grade": grade, "votes": {grade: 9}, "minutes": "Biên bản hội nghị"})
}

/// Registers a subject; returns its dossier id.
async fn subject(w: &World, t: &Tree, token: &str, body: Value) -> String {
    let a = w
        .post(&format!("/api/v1/cycles/{}/subjects", t.cycle), token, body)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.body["subject"].is_string());
    s(&a.body, "dossier")
}

fn member(org: OrgId, name: &str) -> Value {
    json!({"kind": "individual", "org": org, "name": name, "category": "2B", "leader": false, "status": "active"})
}

/// Files self-review and meeting (submitter), then the appraisal
/// (appraiser): the dossier ends appraised.
async fn to_appraised(w: &World, submitter: &str, appraiser: &str, dossier: &str, grade: &str) {
    let a = w
        .post(
            &format!("/api/v1/dossiers/{dossier}/self-review"),
            submitter,
            self_review(grade),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["state"]),
        (200, &json!("submitted")),
        "{}",
        a.body
    );
    let a = w
        .post(
            &format!("/api/v1/dossiers/{dossier}/meeting"),
            submitter,
            meeting(grade),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["state"]),
        (200, &json!("reviewed")),
        "{}",
        a.body
    );
    // At once: appraisal may not have seen the meeting yet; the portal
    // waits for it to catch up.
    let a = w
        .post(
            &format!("/api/v1/dossiers/{dossier}/appraisal"),
            appraiser,
            json!({"recommended_grade": grade, "facts": {}, "notes": "Đồng ý"}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["state"]),
        (200, &json!("appraised")),
        "{}",
        a.body
    );
    assert!(a.body["warnings"].is_array(), "{}", a.body);
}

/// Reads Server-Sent Events from a streaming response.
struct Events {
    resp: reqwest::Response,
    /// Bytes, not text: a chunk may end inside a character.
    buf: Vec<u8>,
}

impl Events {
    /// The next `progress` event's data, skipping comments.
    async fn next_progress(&mut self) -> Value {
        let started = Instant::now();
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(bytes).expect("events are UTF-8");
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = if e.trim() == "progress" {
                            "progress"
                        } else {
                            "other"
                        };
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event == "progress" {
                    return serde_json::from_str(&data).unwrap();
                }
                continue;
            }
            let left = DEADLINE.saturating_sub(started.elapsed());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("the stream stays open")
                .expect("the stream goes on");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_with_its_status_and_shape() -> anyhow::Result<()> {
    let w = World::start().await?;

    // Meta: the document and the probes need no token.
    let doc = w
        .call(Method::GET, "/api/v1/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["paths"]["/api/v1/decisions"]["post"].is_object());
    assert_eq!(
        w.call(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
    let started = Instant::now();
    loop {
        let ready = w.call(Method::GET, "/readyz", None, None, &[]).await;
        if ready.status == 200 {
            for c in [
                "portal.nats",
                "portal.store",
                "portal.submission",
                "portal.progress",
            ] {
                assert_eq!(ready.body["components"][c]["ready"], true, "{}", ready.body);
            }
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Hierarchy.
    let t = tree(&w).await;
    let central = t.central.clone();
    let p01 = w
        .get(&format!("/api/v1/orgs/{}", t.province), &central)
        .await;
    assert_eq!(p01.status, 200);
    assert_eq!(p01.body["code"], "P01");
    assert_eq!(p01.body["tier"], "province");
    assert_eq!(p01.body["parent"], json!(t.root));
    assert_eq!(p01.body["children"], json!([t.district]));
    let found = w.get("/api/v1/orgs?code=C01", &central).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body.as_array().map(Vec::len), Some(1));
    assert_eq!(found.body[0]["id"], json!(t.cells[0]));
    assert!(found.body[0]["children"].is_array());
    assert_eq!(
        w.get("/api/v1/orgs?code=NOPE", &central).await.body,
        json!([])
    );

    // Import: CSV (parents within the file or registered), then JSON.
    let csv = "code,name,tier,parent_code\nP02,Tỉnh 2,province,TW\nD02,\"Huyện 2, mới\",district,P02\nC03,Chi bộ 3,cell,D02\n";
    let imported = w
        .post_raw("/api/v1/orgs/import", &central, csv.as_bytes(), "text/csv")
        .await;
    assert_eq!(
        (imported.status, &imported.body),
        (201, &json!({"created": 3}))
    );
    let d02 = w.get("/api/v1/orgs?code=D02", &central).await.body[0].clone();
    assert_eq!(d02["name"], "Huyện 2, mới");
    let p02 = id(
        &w.get("/api/v1/orgs?code=P02", &central).await.body[0],
        "id",
    );
    assert_eq!(d02["parent"], json!(p02));
    let imported = w
        .post(
            "/api/v1/orgs/import",
            &central,
            json!([{"code": "D03", "name": "Huyện 3", "tier": "district", "parent": p02},
                   {"code": "C04", "name": "Chi bộ 4", "tier": "cell", "parent_code": "D03"}]),
        )
        .await;
    assert_eq!(
        (imported.status, &imported.body),
        (201, &json!({"created": 2}))
    );

    // Merge D03 into D02: C04 moves, D03's history stays.
    let d03 = id(
        &w.get("/api/v1/orgs?code=D03", &central).await.body[0],
        "id",
    );
    let c04 = id(
        &w.get("/api/v1/orgs?code=C04", &central).await.body[0],
        "id",
    );
    let merged = w
        .post(
            "/api/v1/orgs/merge",
            &central,
            json!({"from": [d03], "into": id(&d02, "id")}),
        )
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(merged.body["children_moved"], json!([c04]));
    let gone = w.get(&format!("/api/v1/orgs/{d03}"), &central).await;
    assert_eq!(gone.status, 200);
    assert_eq!(gone.body["merged_into"], d02["id"]);
    let c04 = w.get(&format!("/api/v1/orgs/{c04}"), &central).await;
    assert_eq!(c04.body["parent"], d02["id"]);

    // Cycles.
    let cycle = w
        .get(&format!("/api/v1/cycles/{}", t.cycle), &central)
        .await;
    assert_eq!(cycle.status, 200);
    assert_eq!(cycle.body["id"], json!(t.cycle));
    assert_eq!(
        cycle.body["tiers"],
        json!(["cell", "district", "province", "central"])
    );

    // Subjects: C01's collective, three members and a new member.
    let submitter = w.token(Role::Submitter, t.cells[0]);
    let appraiser = w.token(Role::Appraiser, t.district);
    let authority = w.token(Role::Authority, t.district);
    let collective = subject(
        &w,
        &t,
        &submitter,
        json!({"kind": "collective", "org": t.cells[0], "name": "Chi bộ C01", "category": "01"}),
    )
    .await;
    let m: Vec<String> = {
        let mut m = Vec::new();
        for name in ["Nguyễn Văn An", "Trần Thị Bình", "Lê Minh Chi"] {
            m.push(subject(&w, &t, &submitter, member(t.cells[0], name)).await);
        }
        m
    };
    let newcomer = w
        .post(
            &format!("/api/v1/cycles/{}/subjects", t.cycle),
            &submitter,
            json!({"kind": "individual", "org": t.cells[0], "name": "Phạm Đức Dũng", "category": "2B", "status": "new_member"}),
        )
        .await;
    assert_eq!(
        (newcomer.status, &newcomer.body["state"]),
        (201, &json!("not_reviewed"))
    );

    let work = w.get("/api/v1/worklist", &submitter).await;
    assert_eq!(work.status, 200);
    let items = work.body["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["dossier"] == json!(m[0])
        && i["action"] == "self_review"
        && i["role"] == "submitter"));
    assert_eq!(work.body["truncated"], false);

    // M3 goes to its meeting and is returned, then filed again.
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/self-review", m[2]),
            &submitter,
            self_review("good"),
        )
        .await;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "submitted"})));
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/meeting", m[2]),
            &submitter,
            meeting("good"),
        )
        .await;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "reviewed"})));
    let work = w
        .get_until("/api/v1/worklist", &appraiser, |a| {
            a.body["items"].as_array().is_some_and(|i| {
                i.iter()
                    .any(|i| i["dossier"] == json!(m[2]) && i["action"] == "appraise")
            })
        })
        .await;
    assert_eq!(work.status, 200);
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/return", m[2]),
            &appraiser,
            json!({"reason": "Thiếu biên bản hội nghị"}),
        )
        .await;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "returned"})));
    // At once: submission may not have seen the return yet.
    let dossier = w
        .get(&format!("/api/v1/dossiers/{}", m[2]), &submitter)
        .await;
    assert_eq!(
        dossier.body["state"], "returned",
        "the merged view is fresh: {}",
        dossier.body
    );
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/self-review", m[2]),
            &submitter,
            self_review("good"),
        )
        .await;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "submitted"})));
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/meeting", m[2]),
            &submitter,
            meeting("good"),
        )
        .await;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "reviewed"})));
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/appraisal", m[2]),
            &appraiser,
            json!({"recommended_grade": "good", "notes": "Đã bổ sung"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    for d in [&m[0], &m[1], &collective] {
        to_appraised(&w, &submitter, &appraiser, d, "good").await;
    }

    // The merged view of a dossier.
    let view = w
        .get(&format!("/api/v1/dossiers/{}", m[0]), &submitter)
        .await;
    assert_eq!(view.status, 200);
    for field in [
        "id",
        "subject",
        "cycle",
        "org",
        "state",
        "self_review",
        "meeting",
        "appraisal",
        "decision",
        "history",
    ] {
        assert!(
            view.body.get(field).is_some(),
            "{field} missing from {}",
            view.body
        );
    }
    assert_eq!(view.body["id"], json!(m[0]));
    assert_eq!(view.body["org"], json!(t.cells[0]));
    assert_eq!(view.body["state"], "appraised");
    assert_eq!(view.body["self_review"]["proposed_grade"], "good");
    assert_eq!(view.body["appraisal"]["recommended_grade"], "good");
    assert_eq!(view.body["decision"], Value::Null);
    let history = view.body["history"].as_array().unwrap();
    assert!(history.len() >= 3);
    assert!(history
        .iter()
        .all(|h| h["kind"].is_string() && h["at"].is_string() && h["actor"].is_object()));

    // The authority's worklist, then the decisions: members first, then
    // the collective, at once after the appraisals.
    let work = w
        .get_until("/api/v1/worklist", &authority, |a| {
            a.body["items"]
                .as_array()
                .is_some_and(|i| i.iter().filter(|i| i["action"] == "decide").count() >= 4)
        })
        .await;
    assert!(work.body["quota"].is_array());
    let members = w
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": t.cycle, "authority": t.district, "number": "12-QĐ/HU",
                   "grades": m.iter().map(|d| json!({"dossier": d, "grade": "good", "override_reason": null})).collect::<Vec<_>>(),
                   "quota_exception": null}),
        )
        .await;
    assert_eq!(members.status, 201, "{}", members.body);
    assert!(members.body["id"].is_string());
    let records = members.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    for r in records {
        for field in ["seq", "dossier", "grade", "hash", "signature"] {
            assert!(r.get(field).is_some(), "{field} missing from {r}");
        }
    }
    let first_seq = records
        .iter()
        .find(|r| r["dossier"] == json!(m[0]))
        .map(|r| r["seq"].clone())
        .unwrap();
    let unit = w
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": t.cycle, "authority": t.district, "number": "13-QĐ/HU",
                   "grades": [{"dossier": collective, "grade": "good"}]}),
        )
        .await;
    assert_eq!(unit.status, 201, "{}", unit.body);

    // Re-grading (form 03): the old record stays.
    let regrade = w
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": t.cycle, "authority": t.district, "number": "03-QĐ/HU", "kind": "regrade",
                   "grades": [{"dossier": m[0], "grade": "completed", "supersedes": first_seq,
                               "reason": "Khiếu nại được chấp nhận"}]}),
        )
        .await;
    assert_eq!(regrade.status, 201, "{}", regrade.body);
    assert_eq!(regrade.body["records"][0]["grade"], "completed");
    let view = w
        .get_until(&format!("/api/v1/dossiers/{}", m[0]), &submitter, |a| {
            a.body["state"] == "regraded"
        })
        .await;
    assert_eq!(view.body["decision"]["grade"], "completed");

    // Audit.
    let auditor = w.token(Role::Auditor, t.root);
    let log = w.get("/api/v1/audit/decisions", &auditor).await;
    assert_eq!(log.status, 200, "{}", log.body);
    let recs = log.body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 5);
    for field in [
        "seq",
        "decision",
        "number",
        "dossier",
        "subject",
        "grade",
        "authority",
        "actor",
        "at",
        "supersedes",
        "prev_hash",
        "hash",
        "signature",
        "key_id",
    ] {
        assert!(
            recs[0].get(field).is_some(),
            "{field} missing from {}",
            recs[0]
        );
    }
    assert_eq!(recs[4]["supersedes"], first_seq);
    let page = w
        .get(
            &format!("/api/v1/audit/decisions?cycle={}&after=1&limit=2", t.cycle),
            &auditor,
        )
        .await;
    assert_eq!(page.body["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["records"][0]["seq"], 2);
    let verify = w.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(verify.status, 200);
    assert_eq!(verify.body["ok"], true, "{}", verify.body);
    assert_eq!(verify.body["records"], 5);
    assert!(verify.body["head"].is_string());
    assert_eq!(verify.body["problems"], json!([]));

    // Progress of the district, once progress has seen everything.
    let path = format!(
        "/api/v1/cycles/{}/progress?org={}&depth=1",
        t.cycle, t.district
    );
    let node = w
        .get_until(&path, &authority, |a| {
            a.status == 200
                && a.body["totals"]["subjects"] == 5
                && a.body["totals"]["not_reviewed"] == 1
        })
        .await;
    for field in [
        "org",
        "code",
        "tier",
        "deadline",
        "overdue",
        "complete",
        "totals",
        "grades",
        "quota_groups",
        "children",
    ] {
        assert!(
            node.body.get(field).is_some(),
            "{field} missing from {}",
            node.body
        );
    }
    assert_eq!(node.body["code"], "D01");
    assert_eq!(node.body["children"].as_array().map(Vec::len), Some(2));
    for field in [
        "subjects",
        "not_reviewed",
        "open",
        "submitted",
        "reviewed",
        "appraised",
        "returned",
        "decided",
    ] {
        assert!(
            node.body["totals"][field].is_u64(),
            "totals.{field}: {}",
            node.body
        );
    }

    // Reports: JSON, CSV, XLSX, each a download with a file name.
    for (format, content_type) in [
        ("json", "application/json"),
        ("csv", "text/csv"),
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ] {
        let r = w
            .get(
                &format!(
                    "/api/v1/cycles/{}/report?org={}&format={format}",
                    t.cycle, t.district
                ),
                &authority,
            )
            .await;
        assert_eq!(r.status, 200, "{format}: {}", r.body);
        let ct = r.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(content_type), "{format}: {ct}");
        let cd = r.headers["content-disposition"].to_str().unwrap();
        assert!(
            cd.starts_with("attachment; filename=\"") && cd.ends_with(&format!(".{format}\"")),
            "{cd}"
        );
        match format {
            "json" => {
                assert_eq!(
                    r.body["rows"].as_array().map(Vec::len),
                    Some(5),
                    "{}",
                    r.body
                );
                assert!(r.body["grades"].is_object());
            }
            "csv" => assert!(r.bytes.starts_with("\u{feff}".as_bytes())),
            _ => assert!(r.bytes.starts_with(b"PK")),
        }
    }

    // Live progress: the node now, then again when a subject is added.
    let resp = w
        .http
        .get(format!(
            "{}/api/v1/cycles/{}/progress/stream?org={}",
            w.url, t.cycle, t.district
        ))
        .bearer_auth(&authority)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/event-stream"));
    let mut events = Events {
        resp,
        buf: Vec::new(),
    };
    let first = events.next_progress().await;
    assert_eq!(first["org"], json!(t.district));
    assert_eq!(first["totals"]["subjects"], 5);
    let other_cell = w.token(Role::Submitter, t.cells[1]);
    subject(&w, &t, &other_cell, member(t.cells[1], "Vũ Thị Hà")).await;
    let started = Instant::now();
    loop {
        let next = events.next_progress().await;
        if next["totals"]["subjects"] == 6 {
            break;
        }
        assert!(started.elapsed() < DEADLINE);
    }

    // Shutting down ends the open streams, so a graceful shutdown is not
    // held open by them.
    w.state.end_streams();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = events.resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");

    // Central's worklist spans all three services (C02's new member waits
    // for its self-review).
    let all = w.get("/api/v1/worklist", &central).await;
    assert!(all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["action"] == "self_review" && i["role"] == "central"));

    w.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_and_changes_nothing() -> anyhow::Result<()> {
    let w = World::start().await?;
    let t = tree(&w).await;
    let submitter = w.token(Role::Submitter, t.cells[0]);
    let appraiser = w.token(Role::Appraiser, t.district);
    let authority = w.token(Role::Authority, t.district);
    let open = subject(&w, &t, &submitter, member(t.cells[0], "Hồ sơ mở")).await;
    let mut quota = Vec::new();
    for (i, grade) in ["excellent", "good", "good"].into_iter().enumerate() {
        let d = subject(
            &w,
            &t,
            &submitter,
            member(t.cells[0], &format!("Đảng viên {i}")),
        )
        .await;
        to_appraised(&w, &submitter, &appraiser, &d, grade).await;
        quota.push((d, grade));
    }
    // Approval must know the appraisals before the quota can be judged.
    w.get_until("/api/v1/worklist", &authority, |a| {
        a.body["items"].as_array().is_some_and(|i| i.len() == 3)
    })
    .await;

    let before = w.settled_heads().await;
    let sr = format!("/api/v1/dossiers/{open}/self-review");
    let refused = |a: &Answer, status: u16, code: &str| {
        assert_eq!(a.status, status, "{}", a.body);
        let e = &a.body["error"];
        assert_eq!(e["code"], code, "{}", a.body);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["message_vi"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["details"].is_object(), "{}", a.body);
    };

    // Malformed JSON, missing and extra fields, an unknown grade, a score
    // out of range.
    let a = w
        .post_raw(&sr, &submitter, br#"{"score": "#, "application/json")
        .await;
    refused(&a, 400, "invalid_input");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not well-formed JSON"));
    let mut missing = self_review("good");
    missing.as_object_mut().unwrap().remove("proposed_grade");
    let a = w.post(&sr, &submitter, missing).await;
    refused(&a, 400, "invalid_input");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing field `proposed_grade`"));
    let mut extra = self_review("good");
    extra["mood"] = json!("happy");
    let a = w.post(&sr, &submitter, extra).await;
    refused(&a, 400, "invalid_input");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field `mood`"));
    let a = w.post(&sr, &submitter, self_review("great")).await;
    refused(&a, 400, "invalid_input");
    assert_eq!(a.body["error"]["details"]["field"], "proposed_grade");
    let mut nested = self_review("good");
    nested["tasks"]["late"] = json!("many");
    let a = w.post(&sr, &submitter, nested).await;
    refused(&a, 400, "invalid_input");
    assert_eq!(a.body["error"]["details"]["field"], "tasks.late");
    let mut high = self_review("good");
    high["score"]["general"] = json!(31);
    let a = w.post(&sr, &submitter, high).await;
    refused(&a, 400, "invalid_input");
    assert_eq!(a.body["error"]["details"]["field"], "score.general");
    let mut with_path_field = self_review("good");
    with_path_field["dossier"] = json!(open);
    refused(
        &w.post(&sr, &submitter, with_path_field).await,
        400,
        "invalid_input",
    );
    let a = w.post("/api/v1/decisions", &authority, json!([1, 2])).await;
    refused(&a, 400, "invalid_input");

    // A tier that is not the one below the parent's, a taken code.
    let a = w
        .post(
            "/api/v1/orgs",
            &t.central,
            json!({"code": "X1", "name": "Sai cấp", "tier": "cell", "parent": t.province}),
        )
        .await;
    refused(&a, 422, "bad_tier");
    let a = w
        .post(
            "/api/v1/orgs",
            &t.central,
            json!({"code": "C01", "name": "Trùng mã", "tier": "cell", "parent": t.district}),
        )
        .await;
    refused(&a, 409, "duplicate_code");

    // Out of scope: another cell's board, an appraiser below the deciding
    // org, an auditor deciding, a submitter opening a cycle.
    let other = w.token(Role::Submitter, t.cells[1]);
    let a = w.post(&sr, &other, self_review("good")).await;
    refused(&a, 403, "out_of_scope");
    let a = w
        .post(
            &format!("/api/v1/cycles/{}/subjects", t.cycle),
            &submitter,
            member(t.cells[1], "Lạc chỗ"),
        )
        .await;
    refused(&a, 403, "out_of_scope");
    let low = w.token(Role::Appraiser, t.cells[0]);
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/return", quota[0].0),
            &low,
            json!({"reason": "x"}),
        )
        .await;
    refused(&a, 403, "out_of_scope");
    let auditor = w.token(Role::Auditor, t.root);
    let a = w
        .post(
            "/api/v1/decisions",
            &auditor,
            json!({"cycle": t.cycle, "authority": t.district, "number": "1", "grades": []}),
        )
        .await;
    refused(&a, 403, "out_of_scope");
    refused(
        &w.get(&format!("/api/v1/dossiers/{open}"), &other).await,
        403,
        "out_of_scope",
    );
    refused(
        &w.get("/api/v1/audit/verify", &submitter).await,
        403,
        "out_of_scope",
    );
    // The service refuses the same actor on its own (defence in depth).
    let outsider = Actor {
        sub: "other".into(),
        role: Role::Submitter,
        org: t.cells[1],
    };
    let direct = w
        .commands()
        .call(
            "submission",
            "submit_self_review.v1",
            &outsider,
            json!({"dossier": open, "score": {"general": 28, "tasks": 65}, "proposed_grade": "good",
                     "tasks": {"total": 1, "on_time": 1}}),
            gradeflow_proto::CommandId::new(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        direct.rejection().map(|r| r.code.as_str()),
        Some("out_of_scope")
    );

    // No token, an expired one, one signed by another key, one for
    // another audience, a garbled one.
    let nobody = w
        .call(
            Method::POST,
            &sr,
            None,
            Some(Body::Json(self_review("good"))),
            &[],
        )
        .await;
    refused(&nobody, 401, "unauthenticated");
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, aud: &str| Claims {
        sub: "late".into(),
        roles: vec![Grant {
            role: Role::Submitter,
            org: t.cells[0],
        }],
        exp,
        iat: Some(now - 7200),
        iss: Some(LOCAL_ISSUER.into()),
        aud: Some(aud.into()),
    };
    let expired = sign_claims(w.keys.private_pem(), &claims(now - 600, LOCAL_AUDIENCE)).unwrap();
    let a = w.post(&sr, &expired, self_review("good")).await;
    refused(&a, 401, "unauthenticated");
    assert_eq!(a.body["error"]["details"]["reason"], "expired");
    let elsewhere = tempfile::tempdir()?;
    let forged = LocalKeys::open(elsewhere.path())?.mint(
        "mallory",
        &[Grant {
            role: Role::Central,
            org: t.root,
        }],
        Duration::from_secs(60),
    )?;
    let a = w.post(&sr, &forged, self_review("good")).await;
    refused(&a, 401, "unauthenticated");
    assert_eq!(a.body["error"]["details"]["reason"], "bad_signature");
    let misdirected = sign_claims(w.keys.private_pem(), &claims(now + 600, "another-app")).unwrap();
    refused(
        &w.post(&sr, &misdirected, self_review("good")).await,
        401,
        "unauthenticated",
    );
    refused(
        &w.post(&sr, "garbage", self_review("good")).await,
        401,
        "unauthenticated",
    );
    refused(
        &w.get("/api/v1/worklist", "garbage").await,
        401,
        "unauthenticated",
    );
    // The token is checked first, before the path's ids or the body.
    let a = w
        .call(Method::GET, "/api/v1/dossiers/not-a-uuid", None, None, &[])
        .await;
    refused(&a, 401, "unauthenticated");
    let raw = Body::Raw(b"{".to_vec(), "application/json".into());
    let a = w
        .call(Method::POST, "/api/v1/decisions", None, Some(raw), &[])
        .await;
    refused(&a, 401, "unauthenticated");

    // Wrong state.
    let a = w
        .post(
            &format!("/api/v1/dossiers/{open}/meeting"),
            &submitter,
            meeting("good"),
        )
        .await;
    refused(&a, 409, "wrong_state");
    let a = w
        .post(
            &format!("/api/v1/dossiers/{open}/appraisal"),
            &appraiser,
            json!({"recommended_grade": "good"}),
        )
        .await;
    refused(&a, 409, "wrong_state");

    // The quota: one excellent against two good allows none.
    let batch = json!({"cycle": t.cycle, "authority": t.district, "number": "1-QĐ/HU",
        "grades": quota.iter().map(|(d, g)| json!({"dossier": d, "grade": g})).collect::<Vec<_>>()});
    let a = w.post("/api/v1/decisions", &authority, batch).await;
    refused(&a, 422, "rule_violation");
    let violations = a.body["error"]["details"]["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["rule"] == "quota"
            && v["excellent"] == 1
            && v["good"] == 2
            && v["max_excellent"] == 0),
        "{violations:?}"
    );

    // Over 1 MiB.
    let big = format!("{{\"report\": \"{}\"}}", "x".repeat(1024 * 1024));
    let a = w
        .post_raw(&sr, &submitter, big.as_bytes(), "application/json")
        .await;
    refused(&a, 413, "payload_too_large");

    // Over 1 MiB without a declared length (chunked): cut off while read.
    let chunked = chunked_post(&w.url, &sr, &submitter, 17 * 64 * 1024).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("\"payload_too_large\""), "{chunked}");

    // Unknown and malformed ids, unknown paths and methods, a long key.
    let a = w
        .post(
            &format!("/api/v1/dossiers/{}/self-review", uuid::Uuid::new_v4()),
            &submitter,
            self_review("good"),
        )
        .await;
    refused(&a, 404, "unknown_dossier");
    refused(
        &w.get("/api/v1/dossiers/not-a-uuid", &submitter).await,
        400,
        "invalid_input",
    );
    refused(
        &w.get(
            &format!("/api/v1/orgs/{}", uuid::Uuid::new_v4()),
            &submitter,
        )
        .await,
        404,
        "unknown_org",
    );
    refused(
        &w.get("/api/v1/orgs", &submitter).await,
        400,
        "invalid_input",
    );
    refused(
        &w.get("/api/v1/nothing", &submitter).await,
        404,
        "not_found",
    );
    let a = w
        .call(Method::DELETE, "/api/v1/orgs", Some(&submitter), None, &[])
        .await;
    refused(&a, 405, "method_not_allowed");
    let long = "k".repeat(201);
    refused(
        &w.post_keyed(&sr, &submitter, &long, self_review("good"))
            .await,
        400,
        "invalid_input",
    );
    let a = w
        .get(
            &format!("/api/v1/cycles/{}/report?format=pdf", t.cycle),
            &t.central,
        )
        .await;
    refused(&a, 400, "invalid_input");

    // Nothing changed anywhere: the services' stores and the portal's.
    assert_eq!(w.settled_heads().await, before);
    let view = w.get(&format!("/api/v1/dossiers/{open}"), &submitter).await;
    assert_eq!(view.body["state"], "open");
    assert_eq!(
        w.get("/api/v1/orgs?code=X1", &t.central).await.body,
        json!([])
    );

    w.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() -> anyhow::Result<()>
{
    let mut w = World::start().await?;
    let t = tree(&w).await;
    let body = json!({"code": "P09", "name": "Tỉnh 9", "tier": "province", "parent": t.root});

    let first = w
        .post_keyed("/api/v1/orgs", &t.central, "create-P09", body.clone())
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let after_first = w.settled_heads().await;

    let again = w
        .post_keyed("/api/v1/orgs", &t.central, "create-P09", body.clone())
        .await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert_eq!(again.headers["idempotency-replayed"], "true");
    let other = w
        .post_keyed(
            "/api/v1/orgs",
            &t.central,
            "create-P09",
            json!({"code": "P10", "name": "Tỉnh 10", "tier": "province", "parent": t.root}),
        )
        .await;
    assert_eq!(other.status, 409, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(
        w.settled_heads().await,
        after_first,
        "a replay or a reuse changes nothing"
    );
    assert_eq!(
        w.get("/api/v1/orgs?code=P10", &t.central).await.body,
        json!([])
    );
    assert_eq!(
        w.get("/api/v1/orgs?code=P09", &t.central)
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The same key from another caller is another request.
    let colleague = w.token_for(
        "colleague",
        &[Grant {
            role: Role::Central,
            org: t.root,
        }],
    );
    let theirs = w
        .post_keyed(
            "/api/v1/orgs",
            &colleague,
            "create-P09",
            json!({"code": "P11", "name": "Tỉnh 11", "tier": "province", "parent": t.root}),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);

    // A refusal is a first answer too, replayed as it was.
    let submitter = w.token(Role::Submitter, t.cells[0]);
    let open = subject(&w, &t, &submitter, member(t.cells[0], "Chưa nộp")).await;
    let early = w
        .post_keyed(
            &format!("/api/v1/dossiers/{open}/meeting"),
            &submitter,
            "meet-1",
            meeting("good"),
        )
        .await;
    assert_eq!(early.status, 409);
    let replayed = w
        .post_keyed(
            &format!("/api/v1/dossiers/{open}/meeting"),
            &submitter,
            "meet-1",
            meeting("good"),
        )
        .await;
    assert_eq!((replayed.status, &replayed.body), (409, &early.body));

    // A decision replayed after a portal restart: same answer, one record.
    let appraiser = w.token(Role::Appraiser, t.district);
    let authority = w.token(Role::Authority, t.district);
    let d = subject(&w, &t, &submitter, member(t.cells[0], "Được xếp loại")).await;
    to_appraised(&w, &submitter, &appraiser, &d, "good").await;
    let batch = json!({"cycle": t.cycle, "authority": t.district, "number": "7-QĐ/HU",
                       "grades": [{"dossier": d, "grade": "good"}]});
    let decided = w
        .post_keyed("/api/v1/decisions", &authority, "decision-7", batch.clone())
        .await;
    assert_eq!(decided.status, 201, "{}", decided.body);
    let before = w.settled_heads().await;
    w.restart_portal().await?;
    let again = w
        .post_keyed("/api/v1/decisions", &authority, "decision-7", batch.clone())
        .await;
    assert_eq!((again.status, &again.body), (201, &decided.body));
    let changed = {
        let mut b = batch.clone();
        b["number"] = json!("8-QĐ/HU");
        b
    };
    let reused = w
        .post_keyed("/api/v1/decisions", &authority, "decision-7", changed)
        .await;
    assert_eq!(reused.status, 409);
    assert_eq!(w.settled_heads().await, before);
    let auditor = w.token(Role::Auditor, t.root);
    let log = w.get("/api/v1/audit/decisions", &auditor).await;
    assert_eq!(log.body["records"].as_array().map(Vec::len), Some(1));

    // A portal that died after sending but before recording the answer:
    // the command reached the service under the key's command id; the
    // retry through the portal gets the service's stored first answer.
    let sub = "crashy";
    let crashy = w.token_for(
        sub,
        &[Grant {
            role: Role::Central,
            org: t.root,
        }],
    );
    let actor = Actor {
        sub: sub.into(),
        role: Role::Central,
        org: t.root,
    };
    let lost = w
        .commands()
        .call(
            "submission",
            "register_org.v1",
            &actor,
            json!({"code": "P12", "name": "Tỉnh 12", "tier": "province", "parent": t.root}),
            command_id_for(sub, "lost-answer"),
            None,
        )
        .await?;
    let retry = w
        .post_keyed(
            "/api/v1/orgs",
            &crashy,
            "lost-answer",
            json!({"code": "P12", "name": "Tỉnh 12", "tier": "province", "parent": t.root}),
        )
        .await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(
        retry.body["id"], lost["id"],
        "the first answer, not a second org"
    );
    assert_eq!(
        w.get("/api/v1/orgs?code=P12", &t.central)
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    w.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_is_all_or_nothing_and_can_be_sent_again() -> anyhow::Result<()> {
    let w = World::start().await?;
    let t = tree(&w).await;
    let c = &t.central;
    let codes = ["P05", "D05", "C05", "C06"];
    let none_registered = || async {
        for code in codes {
            let found = w.get(&format!("/api/v1/orgs?code={code}"), c).await;
            assert_eq!(found.body, json!([]), "{code} was registered");
        }
    };
    let before = w.settled_heads().await;

    // One bad tier among good rows: refused whole, every problem listed.
    let bad = "code,name,tier,parent_code\nP05,Tỉnh 5,province,TW\nD05,Huyện 5,district,P05\nC05,Chi bộ 5,cell,D05\nC06,Chi bộ 6,district,D05\n";
    let a = w
        .post_raw("/api/v1/orgs/import", c, bad.as_bytes(), "text/csv")
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "bad_tier");
    let problems = a.body["error"]["details"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["row"], 4);

    // An unknown parent, a code taken in the registry, a code twice.
    let a = w
        .post(
            "/api/v1/orgs/import",
            c,
            json!([
            {"code": "P05", "name": "Tỉnh 5", "tier": "province", "parent_code": "TW"},
            {"code": "D05", "name": "Huyện 5", "tier": "district", "parent_code": "NOWHERE"},
            {"code": "C01", "name": "Trùng", "tier": "cell", "parent": t.district},
            {"code": "C06", "name": "Chi bộ 6", "tier": "cell", "parent": t.district},
            {"code": "C06", "name": "Chi bộ 6 lần 2", "tier": "cell", "parent": t.district}]),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "unknown_org");
    let kinds: Vec<&str> = a.body["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"duplicate_code") && kinds.contains(&"invalid_input"),
        "{kinds:?}"
    );

    // Someone else's subtree.
    let provincial = w.token(Role::Central, t.province);
    let a = w
        .post_raw(
            "/api/v1/orgs/import",
            &provincial,
            b"code,name,tier,parent_code\nP05,Tinh 5,province,TW\n",
            "text/csv",
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);

    none_registered().await;
    assert_eq!(w.settled_heads().await, before);

    // The good file, twice (as after a failure half-way): the second run
    // finds every row done and registers nothing new.
    let good = "code,name,tier,parent_code\nP05,Tỉnh 5,province,TW\nD05,Huyện 5,district,P05\nC05,Chi bộ 5,cell,D05\nC06,Chi bộ 6,cell,D05\n";
    let a = w
        .post_raw("/api/v1/orgs/import", c, good.as_bytes(), "text/csv")
        .await;
    assert_eq!((a.status, &a.body), (201, &json!({"created": 4})));
    let after = w.settled_heads().await;
    let a = w
        .post_raw("/api/v1/orgs/import", c, good.as_bytes(), "text/csv")
        .await;
    assert_eq!((a.status, &a.body), (201, &json!({"created": 4})));
    // The registry (submission's store) did not move.
    assert_eq!(w.settled_heads().await[0], after[0]);
    let d05 = w.get("/api/v1/orgs?code=D05", c).await.body[0].clone();
    assert_eq!(d05["children"].as_array().map(Vec::len), Some(2));

    w.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_services_the_portal_is_unready_and_answers_503() -> anyhow::Result<()> {
    let w = World::start_with(false, |c| c.command_timeout = Duration::from_secs(2)).await?;
    assert_eq!(
        w.call(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
    let ready = w.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body["components"]["portal.submission"]["ready"],
        false
    );
    assert_eq!(ready.body["components"]["portal.nats"]["ready"], true);
    let central = w.token(Role::Central, OrgId::new());
    let a = w
        .post(
            "/api/v1/orgs",
            &central,
            json!({"code": "P01", "name": "x", "tier": "province", "parent": OrgId::new()}),
        )
        .await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "unavailable");
    let a = w
        .get(&format!("/api/v1/cycles/{}", OrgId::new()), &central)
        .await;
    assert_eq!(a.status, 503);
    w.finish().await;
    Ok(())
}

/// The caller's W3C trace context travels with the command into the
/// metadata of the events it causes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_reaches_the_events() -> anyhow::Result<()> {
    let w = World::start().await?;
    let t = tree(&w).await;
    let submitter = w.token(Role::Submitter, t.cells[0]);
    let d = subject(&w, &t, &submitter, member(t.cells[0], "Theo dõi vết")).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body = serde_json::to_vec(&self_review("good"))?;
    let a = w
        .call(
            Method::POST,
            &format!("/api/v1/dossiers/{d}/self-review"),
            Some(&submitter),
            Some(Body::Raw(body, "application/json".into())),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (name, submission) = &w.stores[0];
    assert_eq!(*name, "submission");
    let events = submission.load_stream(&format!("dossier-{d}")).await?;
    let filed = events
        .iter()
        .find(|e| e.kind == "self_review_submitted.v1")
        .expect("the self-review is stored");
    let stored = filed.metadata.traceparent.as_deref().unwrap_or_default();
    assert_eq!(stored.split('-').nth(1), Some(trace_id), "{stored}");
    assert_eq!(
        filed.metadata.actor.sub,
        format!("{:?}-{}", Role::Submitter, t.cells[0])
    );

    // The request was counted.
    let metrics = w.call(Method::GET, "/metrics", None, None, &[]).await;
    let text = String::from_utf8_lossy(&metrics.bytes);
    assert!(
        text.contains("portal_http_requests_total{route=\"/api/v1/dossiers/{id}/self-review\",status=\"200\"} 1"),
        "{text}"
    );
    w.finish().await;
    Ok(())
}

/// A progress tree larger than one NATS message (the progress service
/// answers it in pages) comes back whole from `GET …/progress` and as the
/// stream's first event: HTTP has no such limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_tree_larger_than_one_message_comes_back_whole() -> anyhow::Result<()> {
    let w = World::start().await?;
    let t = tree(&w).await;
    // Four provinces of 80 districts, each node about 3.5 KB (long names):
    // ~1.2 MB at depth 2, more than one NATS message may carry.
    let long = "Đảng bộ xã ".repeat(250);
    for p in 2..=5 {
        let mut csv = format!("code,name,tier,parent_code\nP{p:02},{long},province,TW\n");
        for d in 1..=80 {
            csv.push_str(&format!("P{p:02}.D{d:02},{long},district,P{p:02}\n"));
        }
        let imported = w
            .post_raw(
                "/api/v1/orgs/import",
                &t.central,
                csv.as_bytes(),
                "text/csv",
            )
            .await;
        assert_eq!(imported.status, 201, "{}", imported.body);
    }
    fn nodes(n: &Value) -> usize {
        assert!(n.get("children_truncated").is_none(), "{}", n["code"]);
        1 + n["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(nodes)
            .sum::<usize>()
    }
    // TW, P01, D01, and the four provinces with their districts.
    let all = 3 + 4 * 81;
    let path = format!("/api/v1/cycles/{}/progress?org={}&depth=2", t.cycle, t.root);
    let whole = w
        .get_until(&path, &t.central, |a| {
            a.status == 200 && nodes(&a.body) == all
        })
        .await;
    let max_payload = w.nats.server_info().max_payload;
    assert!(
        whole.bytes.len() > max_payload,
        "{} bytes: more than one message of at most {max_payload} carries",
        whole.bytes.len()
    );
    let codes: Vec<&str> = whole.body["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["P01", "P02", "P03", "P04", "P05"]);

    let resp = w
        .http
        .get(format!(
            "{}/api/v1/cycles/{}/progress/stream?org={}&depth=2",
            w.url, t.cycle, t.root
        ))
        .bearer_auth(&t.central)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut events = Events {
        resp,
        buf: Vec::new(),
    };
    let first = events.next_progress().await;
    assert_eq!(nodes(&first), all);
    assert!(first == whole.body, "the stream's tree is the GET's");
    w.state.end_streams();
    w.finish().await;
    Ok(())
}

/// The local key the portal made on first start signs tokens `gradeflow
/// token` would print; the portal reopened on the same data dir keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_key_survives_a_restart() -> anyhow::Result<()> {
    let mut w = World::start_with(false, |_| {}).await?;
    let token = w.token(Role::Auditor, OrgId::new());
    let path = w.keys.path().to_path_buf();
    assert!(
        path.ends_with("portal/jwt-ed25519.pem"),
        "{}",
        path.display()
    );
    w.restart_portal().await?;
    assert_eq!(
        LocalKeys::open(w.data_dir.path())?.public_pem(),
        w.keys.public_pem()
    );
    // Authenticated (the call then fails only for want of services).
    let a = w.get("/api/v1/audit/verify", &token).await;
    assert_ne!(a.status, 401, "{}", a.body);
    w.finish().await;
    Ok(())
}
