//! HTTP system tests through the real binary: `gradeflow up` (every service
//! and the portal in one process) on the real NATS server and SQLite or
//! PostgreSQL, driven over HTTP exactly as `API.md` describes, with tokens
//! minted by `gradeflow token` and a country registered by `gradeflow seed`
//! (the binary too).
//!
//! * **Every call** of `API.md` § HTTP once, with its status and the key
//!   fields of its body — orgs (create, import JSON and CSV, get, find by
//!   code, merge), cycles, subjects, self-review, meeting, return,
//!   appraisal, the dossier view, worklists, decisions (201, a 422 quota
//!   refusal with its details, a re-grade), progress and its SSE stream (an
//!   update arrives after a decision), reports in JSON/CSV/XLSX, the audit
//!   log and its verification, the OpenAPI document and the probes; and a
//!   submitter token from `gradeflow token` that works in its org and is
//!   refused outside it. Once per backend.
//! * **Progress under concurrency**: `gradeflow seed` registers a small
//!   country (run twice: the second run adds nothing), then 24 boards file
//!   self-reviews and meetings at once; once the projection has caught up,
//!   the root's counts equal the dossiers' own states (each dossier read
//!   from the services) and every node equals the sum of its children plus
//!   its own dossiers. Then `gradeflow up` is stopped, the progress store
//!   deleted (SQLite file, or PostgreSQL schema), and after a restart — the
//!   service finds its store empty and replays the stream from its start —
//!   the rebuilt tree equals the one before.
//!
//! Waits are conditions with deadlines, never bare sleeps.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use system_tests::{Answer, Body, Up};

/// How long a condition may take to come true.
/// How long a rebuilt projection may take to catch up with the stream.
const REBUILD_DEADLINE: Duration = Duration::from_secs(150);
const DEADLINE: Duration = Duration::from_secs(30);

/// Each test's budget.
const BUDGET: Duration = Duration::from_secs(60);

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {v}"))
        .to_owned()
}

fn self_review(grade: &str) -> Value {
    json!({"score": {"general": 28, "tasks": 65}, "proposed_grade": grade,
           "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
           "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"})
}

fn meeting(grade: &str) -> Value {
    json!({"proposed_grade": grade, "votes": {grade: 9}, "minutes": "Biên bản hội nghị"})
}

fn member(org: &str, name: &str) -> Value {
    json!({"kind": "individual", "org": org, "name": name, "category": "2B", "leader": false, "status": "active"})
}

/// `a` has `status`, else the test fails showing the body.
fn ok(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "{}", a.body);
}

/// `a` is the API's error with `status` and `code`, in both languages.
fn refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let e = &a.body["error"];
    assert_eq!(e["code"], code, "{}", a.body);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(e["message_vi"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(e["details"].is_object(), "{}", a.body);
}

/// Reads Server-Sent Events from a streaming response.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// The next `progress` event's data, skipping comments, within the
    /// deadline.
    async fn next_progress(&mut self) -> Value {
        let started = Instant::now();
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut progress = false;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        progress = e.trim() == "progress";
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if progress {
                    return serde_json::from_str(&data).unwrap();
                }
                continue;
            }
            let left = DEADLINE.saturating_sub(started.elapsed());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("a progress event in time")
                .expect("the stream stays open")
                .expect("the stream goes on");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Registers a subject; its dossier id.
async fn subject(up: &Up, cycle: &str, token: &str, body: Value) -> String {
    let a = up
        .post(&format!("/api/v1/cycles/{cycle}/subjects"), token, body)
        .await
        .unwrap();
    ok(&a, 201);
    assert!(a.body["subject"].is_string(), "{}", a.body);
    s(&a.body, "dossier")
}

/// Self-review and meeting by the board, then the appraisal.
async fn to_appraised(up: &Up, board: &str, appraiser: &str, dossier: &str, grade: &str) {
    let a = up
        .post(
            &format!("/api/v1/dossiers/{dossier}/self-review"),
            board,
            self_review(grade),
        )
        .await
        .unwrap();
    ok(&a, 200);
    assert_eq!(a.body, json!({"state": "submitted"}));
    let a = up
        .post(
            &format!("/api/v1/dossiers/{dossier}/meeting"),
            board,
            meeting(grade),
        )
        .await
        .unwrap();
    ok(&a, 200);
    assert_eq!(a.body, json!({"state": "reviewed"}));
    let a = up
        .post(
            &format!("/api/v1/dossiers/{dossier}/appraisal"),
            appraiser,
            json!({"recommended_grade": grade, "facts": {}, "notes": "Đồng ý"}),
        )
        .await
        .unwrap();
    ok(&a, 200);
    assert_eq!(a.body["state"], "appraised", "{}", a.body);
    assert!(a.body["warnings"].is_array(), "{}", a.body);
}

async fn every_call(postgres: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let up = Up::start(postgres).await?;
    let central = up.token.clone();
    let root = up.root.to_string();

    // Meta: the document and the probes need no token; the API does.
    let doc = up
        .call(Method::GET, "/api/v1/openapi.json", None, None, &[])
        .await?;
    ok(&doc, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    for (method, path) in [
        ("post", "/api/v1/orgs/import"),
        ("post", "/api/v1/decisions"),
        ("get", "/api/v1/cycles/{cycle}/progress/stream"),
        ("get", "/api/v1/audit/verify"),
    ] {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    ok(
        &up.call(Method::GET, "/healthz", None, None, &[]).await?,
        200,
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = up.call(Method::GET, "/readyz", None, None, &[]).await?;
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
        assert!(Instant::now() < deadline, "never ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(
        &up.call(Method::GET, "/api/v1/worklist", None, None, &[])
            .await?,
        401,
        "unauthenticated",
    );

    // Orgs: the root `gradeflow up` registered, then a tree below it.
    let tw = up.get(&format!("/api/v1/orgs/{root}"), &central).await?;
    ok(&tw, 200);
    assert_eq!(
        (&tw.body["code"], &tw.body["tier"], &tw.body["parent"]),
        (&json!("TW"), &json!("central"), &Value::Null)
    );
    let mut ids: HashMap<&str, String> = HashMap::new();
    for (code, tier, parent) in [
        ("P01", "province", "TW"),
        ("D01", "district", "P01"),
        ("C01", "cell", "D01"),
        ("C02", "cell", "D01"),
    ] {
        let parent = if parent == "TW" {
            root.clone()
        } else {
            ids[parent].clone()
        };
        let a = up
            .post(
                "/api/v1/orgs",
                &central,
                json!({"code": code, "name": format!("Đảng bộ {code}"), "tier": tier, "parent": parent}),
            )
            .await?;
        ok(&a, 201);
        assert_eq!(a.body["code"], code);
        assert_eq!(a.body["name"], format!("Đảng bộ {code}"));
        assert_eq!(a.body["tier"], tier);
        assert_eq!(a.body["parent"], json!(parent));
        ids.insert(code, s(&a.body, "id"));
    }
    let (p01, d01, c01, c02) = (
        ids["P01"].clone(),
        ids["D01"].clone(),
        ids["C01"].clone(),
        ids["C02"].clone(),
    );
    refused(
        &up.post(
            "/api/v1/orgs",
            &central,
            json!({"code": "C01", "name": "Trùng mã", "tier": "cell", "parent": d01}),
        )
        .await?,
        409,
        "duplicate_code",
    );
    refused(
        &up.post(
            "/api/v1/orgs",
            &central,
            json!({"code": "X1", "name": "Sai cấp", "tier": "cell", "parent": p01}),
        )
        .await?,
        422,
        "bad_tier",
    );
    // A keyed POST sent twice: the first answer, replayed.
    let body = json!({"code": "P09", "name": "Tỉnh 9", "tier": "province", "parent": root});
    let key = [("idempotency-key", "create-P09")];
    let first = up
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(&central),
            Some(Body::Json(body.clone())),
            &key,
        )
        .await?;
    ok(&first, 201);
    let again = up
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(&central),
            Some(Body::Json(body)),
            &key,
        )
        .await?;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert_eq!(again.headers["idempotency-replayed"], "true");

    let p = up.get(&format!("/api/v1/orgs/{p01}"), &central).await?;
    ok(&p, 200);
    assert_eq!(p.body["code"], "P01");
    assert_eq!(p.body["tier"], "province");
    assert_eq!(p.body["parent"], json!(root));
    assert_eq!(p.body["children"], json!([d01]));
    let found = up.get("/api/v1/orgs?code=C01", &central).await?;
    ok(&found, 200);
    assert_eq!(found.body.as_array().map(Vec::len), Some(1));
    assert_eq!(found.body[0]["id"], json!(c01));
    assert_eq!(
        up.get("/api/v1/orgs?code=NOPE", &central).await?.body,
        json!([])
    );

    // Import: CSV, then JSON (a parent by id, one by code in the file).
    let csv = "code,name,tier,parent_code\nP02,Tỉnh 2,province,TW\nD02,\"Huyện 2, mới\",district,P02\nC03,Chi bộ 3,cell,D02\n";
    let a = up
        .call(
            Method::POST,
            "/api/v1/orgs/import",
            Some(&central),
            Some(Body::Raw(csv.as_bytes().to_vec(), "text/csv")),
            &[],
        )
        .await?;
    assert_eq!((a.status, &a.body), (201, &json!({"created": 3})));
    let d02 = up.get("/api/v1/orgs?code=D02", &central).await?.body[0].clone();
    assert_eq!(d02["name"], "Huyện 2, mới");
    let p02 = up.get("/api/v1/orgs?code=P02", &central).await?.body[0]["id"].clone();
    assert_eq!(d02["parent"], p02);
    let a = up
        .post(
            "/api/v1/orgs/import",
            &central,
            json!([{"code": "D03", "name": "Huyện 3", "tier": "district", "parent": p02},
                   {"code": "C04", "name": "Chi bộ 4", "tier": "cell", "parent_code": "D03"}]),
        )
        .await?;
    assert_eq!((a.status, &a.body), (201, &json!({"created": 2})));

    // Merge D03 into D02: C04 moves, D03's history stays.
    let d03 = up.get("/api/v1/orgs?code=D03", &central).await?.body[0]["id"].clone();
    let c04 = up.get("/api/v1/orgs?code=C04", &central).await?.body[0]["id"].clone();
    let merged = up
        .post(
            "/api/v1/orgs/merge",
            &central,
            json!({"from": [d03], "into": d02["id"]}),
        )
        .await?;
    ok(&merged, 200);
    assert_eq!(merged.body["children_moved"], json!([c04]));
    let gone = up
        .get(&format!("/api/v1/orgs/{}", d03.as_str().unwrap()), &central)
        .await?;
    ok(&gone, 200);
    assert_eq!(gone.body["merged_into"], d02["id"]);
    let moved = up
        .get(&format!("/api/v1/orgs/{}", c04.as_str().unwrap()), &central)
        .await?;
    assert_eq!(moved.body["parent"], d02["id"]);

    // Cycles.
    let opened = up
        .post(
            "/api/v1/cycles",
            &central,
            json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                   "tiers": ["cell", "district", "province", "central"],
                   "deadlines": {"cell": "2026-12-15", "district": "2026-12-25",
                                 "province": "2027-01-15", "central": "2027-02-01"},
                   "quota": {"ratio": 0.2, "rounding": "floor"}}),
        )
        .await?;
    ok(&opened, 201);
    assert_eq!(opened.body["year"], 2026);
    let cycle = s(&opened.body, "id");
    let got = up.get(&format!("/api/v1/cycles/{cycle}"), &central).await?;
    ok(&got, 200);
    assert_eq!(got.body["id"], json!(cycle));
    assert_eq!(got.body["rulebook"], "qd366-2025");
    assert_eq!(
        got.body["tiers"],
        json!(["cell", "district", "province", "central"])
    );

    // Tokens from `gradeflow token` (the binary, the same data dir).
    let board = up.mint("submitter", &c01).await?;
    let appraiser = up.mint("appraiser", &d01).await?;
    let authority = up.mint("authority", &d01).await?;
    let auditor = up.mint("auditor", &root).await?;

    // Subjects: C01's collective, three members, a new member.
    let collective = subject(
        &up,
        &cycle,
        &board,
        json!({"kind": "collective", "org": c01, "name": "Chi bộ C01", "category": "01"}),
    )
    .await;
    let mut m = Vec::new();
    for name in ["Nguyễn Văn An", "Trần Thị Bình", "Lê Minh Chi"] {
        m.push(subject(&up, &cycle, &board, member(&c01, name)).await);
    }
    let newcomer = up
        .post(
            &format!("/api/v1/cycles/{cycle}/subjects"),
            &board,
            json!({"kind": "individual", "org": c01, "name": "Phạm Đức Dũng", "category": "2B", "status": "new_member"}),
        )
        .await?;
    ok(&newcomer, 201);
    assert_eq!(newcomer.body["state"], "not_reviewed");

    // The C01 board's token is refused outside C01: another cell's
    // subject, and reading another cell's dossier.
    refused(
        &up.post(
            &format!("/api/v1/cycles/{cycle}/subjects"),
            &board,
            member(&c02, "Lạc chỗ"),
        )
        .await?,
        403,
        "out_of_scope",
    );
    let elsewhere = subject(&up, &cycle, &central, member(&c02, "Vũ Thị Hà")).await;
    refused(
        &up.get(&format!("/api/v1/dossiers/{elsewhere}"), &board)
            .await?,
        403,
        "out_of_scope",
    );

    let work = up.get("/api/v1/worklist", &board).await?;
    ok(&work, 200);
    let items = work.body["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["dossier"] == json!(m[0])
        && i["action"] == "self_review"
        && i["role"] == "submitter"));
    assert!(!items.iter().any(|i| i["dossier"] == json!(elsewhere)));
    assert_eq!(work.body["truncated"], false);

    // M3: self-review, meeting, returned, filed again, appraised.
    let sr = format!("/api/v1/dossiers/{}/self-review", m[2]);
    let mt = format!("/api/v1/dossiers/{}/meeting", m[2]);
    let a = up.post(&sr, &board, self_review("excellent")).await?;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "submitted"})));
    let a = up.post(&mt, &board, meeting("excellent")).await?;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "reviewed"})));
    up.get_until("/api/v1/worklist", &appraiser, DEADLINE, |a| {
        a.body["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|i| i["dossier"] == json!(m[2]) && i["action"] == "appraise")
        })
    })
    .await?;
    let a = up
        .post(
            &format!("/api/v1/dossiers/{}/return", m[2]),
            &appraiser,
            json!({"reason": "Thiếu biên bản hội nghị"}),
        )
        .await?;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "returned"})));
    let a = up
        .get(&format!("/api/v1/dossiers/{}", m[2]), &board)
        .await?;
    assert_eq!(a.body["state"], "returned", "{}", a.body);
    let a = up.post(&sr, &board, self_review("excellent")).await?;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "submitted"})));
    let a = up.post(&mt, &board, meeting("excellent")).await?;
    assert_eq!((a.status, &a.body), (200, &json!({"state": "reviewed"})));
    let a = up
        .post(
            &format!("/api/v1/dossiers/{}/appraisal", m[2]),
            &appraiser,
            json!({"recommended_grade": "excellent", "notes": "Đã bổ sung"}),
        )
        .await?;
    ok(&a, 200);
    assert_eq!(a.body["state"], "appraised");
    for d in [&m[0], &m[1]] {
        to_appraised(&up, &board, &appraiser, d, "good").await;
    }

    // The merged view of a dossier.
    let view = up
        .get(&format!("/api/v1/dossiers/{}", m[0]), &board)
        .await?;
    ok(&view, 200);
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
            "{field} missing: {}",
            view.body
        );
    }
    assert_eq!(view.body["id"], json!(m[0]));
    assert_eq!(view.body["cycle"], json!(cycle));
    assert_eq!(view.body["org"], json!(c01));
    assert_eq!(view.body["state"], "appraised");
    assert_eq!(view.body["self_review"]["proposed_grade"], "good");
    assert_eq!(view.body["meeting"]["proposed_grade"], "good");
    assert_eq!(view.body["appraisal"]["recommended_grade"], "good");
    assert_eq!(view.body["decision"], Value::Null);
    let history = view.body["history"].as_array().unwrap();
    assert!(history.len() >= 3, "{history:?}");
    assert!(history
        .iter()
        .all(|h| h["kind"].is_string() && h["at"].is_string() && h["actor"].is_object()));

    // Decisions: the authority's worklist, two members good.
    let work = up
        .get_until("/api/v1/worklist", &authority, DEADLINE, |a| {
            a.body["items"]
                .as_array()
                .is_some_and(|i| i.iter().filter(|i| i["action"] == "decide").count() >= 3)
        })
        .await?;
    assert!(work.body["quota"].is_array(), "{}", work.body);
    let first = up
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": cycle, "authority": d01, "number": "12-QĐ/HU",
                   "grades": [{"dossier": m[0], "grade": "good", "override_reason": null},
                              {"dossier": m[1], "grade": "good", "override_reason": null}],
                   "quota_exception": null}),
        )
        .await?;
    ok(&first, 201);
    assert!(first.body["id"].is_string());
    let records = first.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
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

    // M3 excellent against two good: over the quota, refused whole.
    let a = up
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": cycle, "authority": d01, "number": "13-QĐ/HU",
                   "grades": [{"dossier": m[2], "grade": "excellent"}]}),
        )
        .await?;
    refused(&a, 422, "rule_violation");
    let violations = a.body["error"]["details"]["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["rule"] == "quota"
            && v["group"].is_string()
            && v["excellent"] == 1
            && v["good"] == 2
            && v["max_excellent"] == 0),
        "{violations:?}"
    );

    // Live progress: the district's node now, then again after M3 is
    // decided good.
    let progress = format!("/api/v1/cycles/{cycle}/progress?org={d01}&depth=1");
    up.get_until(&progress, &authority, DEADLINE, |a| {
        a.status == 200 && a.body["totals"]["decided"] == 2
    })
    .await?;
    let resp = up
        .http
        .get(format!(
            "{}/api/v1/cycles/{cycle}/progress/stream?org={d01}",
            up.url
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
        buf: String::new(),
    };
    let now = events.next_progress().await;
    assert_eq!(now["org"], json!(d01));
    assert_eq!(now["totals"]["decided"], 2, "{now}");
    let second = up
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": cycle, "authority": d01, "number": "14-QĐ/HU",
                   "grades": [{"dossier": m[2], "grade": "good"}]}),
        )
        .await?;
    ok(&second, 201);
    let streamed = Instant::now();
    loop {
        let next = events.next_progress().await;
        if next["totals"]["decided"] == 3 {
            assert_eq!(next["grades"]["good"], 3, "{next}");
            break;
        }
        assert!(streamed.elapsed() < DEADLINE, "no update with the decision");
    }
    drop(events);

    // Re-grading (form 03): M1 becomes completed; the old record stays.
    let regrade = up
        .post(
            "/api/v1/decisions",
            &authority,
            json!({"cycle": cycle, "authority": d01, "number": "03-QĐ/HU", "kind": "regrade",
                   "grades": [{"dossier": m[0], "grade": "completed", "supersedes": first_seq,
                               "reason": "Khiếu nại được chấp nhận"}]}),
        )
        .await?;
    ok(&regrade, 201);
    assert_eq!(regrade.body["records"][0]["grade"], "completed");
    let view = up
        .get_until(
            &format!("/api/v1/dossiers/{}", m[0]),
            &board,
            DEADLINE,
            |a| a.body["state"] == "regraded",
        )
        .await?;
    assert_eq!(view.body["decision"]["grade"], "completed", "{}", view.body);

    // Audit: the log, a page of it, the verification.
    let log = up.get("/api/v1/audit/decisions", &auditor).await?;
    ok(&log, 200);
    let recs = log.body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4, "{}", log.body);
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
    assert_eq!(recs[3]["supersedes"], first_seq);
    assert_eq!(recs[3]["prev_hash"], recs[2]["hash"]);
    let page = up
        .get(
            &format!("/api/v1/audit/decisions?cycle={cycle}&after=1&limit=2"),
            &auditor,
        )
        .await?;
    ok(&page, 200);
    assert_eq!(page.body["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["records"][0]["seq"], 2);
    let verify = up.get("/api/v1/audit/verify", &auditor).await?;
    ok(&verify, 200);
    assert_eq!(verify.body["ok"], true, "{}", verify.body);
    assert_eq!(verify.body["records"], 4);
    assert!(verify.body["head"].is_string());
    assert_eq!(verify.body["problems"], json!([]));

    // Progress of the district, once progress has seen everything: C01's
    // collective, three members decided, the new member, C02's member.
    let node = up
        .get_until(&progress, &authority, DEADLINE, |a| {
            a.status == 200 && a.body["grades"]["completed"] == 1
        })
        .await?;
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
            "{field} missing: {}",
            node.body
        );
    }
    assert_eq!(node.body["code"], "D01");
    assert_eq!(node.body["tier"], "district");
    assert_eq!(node.body["deadline"], "2026-12-25");
    let totals = &node.body["totals"];
    assert_eq!(
        (
            &totals["subjects"],
            &totals["decided"],
            &totals["not_reviewed"],
            &totals["open"]
        ),
        (&json!(6), &json!(3), &json!(1), &json!(2)),
        "{}",
        node.body
    );
    assert_eq!(node.body["grades"]["good"], 2);
    let codes: Vec<&Value> = node.body["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["code"])
        .collect();
    assert_eq!(codes, [&json!("C01"), &json!("C02")]);

    // Reports: JSON, CSV, XLSX, each a download with a file name.
    for (format, content_type) in [
        ("json", "application/json"),
        ("csv", "text/csv"),
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ] {
        let r = up
            .get(
                &format!("/api/v1/cycles/{cycle}/report?org={d01}&format={format}"),
                &authority,
            )
            .await?;
        ok(&r, 200);
        let ct = r.headers["content-type"].to_str()?;
        assert!(ct.starts_with(content_type), "{format}: {ct}");
        let cd = r.headers["content-disposition"].to_str()?;
        assert!(
            cd.starts_with("attachment; filename=\"") && cd.ends_with(&format!(".{format}\"")),
            "{cd}"
        );
        match format {
            "json" => {
                assert_eq!(
                    r.body["rows"].as_array().map(Vec::len),
                    Some(6),
                    "{}",
                    r.body
                );
                assert_eq!(r.body["grades"]["good"], 2, "{}", r.body);
            }
            "csv" => {
                assert!(r.bytes.starts_with("\u{feff}".as_bytes()));
                assert!(String::from_utf8_lossy(&r.bytes).contains("Lê Minh Chi"));
            }
            _ => assert!(r.bytes.starts_with(b"PK")),
        }
    }
    // Central's worklist spans the services (C02's member waits for its
    // self-review; C01's collective too).
    let all = up.get("/api/v1/worklist", &central).await?;
    ok(&all, 200);
    assert!(all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["dossier"] == json!(collective) && i["action"] == "self_review"));

    up.cleanup().await;
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_through_gradeflow_up_on_sqlite() -> anyhow::Result<()> {
    every_call(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_through_gradeflow_up_on_postgres() -> anyhow::Result<()> {
    every_call(true).await
}

/// The counters of a progress node (and of a dossier's state).
const COUNTERS: [&str; 8] = [
    "subjects",
    "not_reviewed",
    "open",
    "submitted",
    "reviewed",
    "appraised",
    "returned",
    "decided",
];

type Counts = BTreeMap<&'static str, u64>;

/// The counts one dossier in `state` adds to its nodes.
fn counts_of(state: &str) -> Counts {
    let mut c: Counts = COUNTERS.iter().map(|k| (*k, 0)).collect();
    c.insert("subjects", 1);
    let bucket = match state {
        "regraded" => "decided",
        other => COUNTERS
            .iter()
            .copied()
            .find(|k| *k == other)
            .unwrap_or_else(|| panic!("unknown state {other}")),
    };
    *c.get_mut(bucket).unwrap() += 1;
    c
}

fn add(into: &mut Counts, more: &Counts) {
    for (k, v) in more {
        *into.entry(k).or_default() += v;
    }
}

fn totals(node: &Value) -> Counts {
    COUNTERS
        .iter()
        .map(|k| (*k, node["totals"][*k].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

/// Checks that every node equals the sum of its children plus its own
/// dossiers; returns the number of nodes checked.
fn check_sums(node: &Value, own: &HashMap<String, Counts>) -> usize {
    let mut expected: Counts = COUNTERS.iter().map(|k| (*k, 0)).collect();
    if let Some(mine) = own.get(&s(node, "org")) {
        add(&mut expected, mine);
    }
    let mut checked = 1;
    for child in node["children"].as_array().unwrap() {
        add(&mut expected, &totals(child));
        checked += check_sums(child, own);
    }
    assert_eq!(
        totals(node),
        expected,
        "{} is not the sum of its children and its own dossiers",
        node["code"]
    );
    checked
}

/// The line of `out` starting with `label`, after it.
fn line_after<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in {out}"))
        .trim()
}

/// One cell's board: files the self-reviews of its half of the cell's
/// worklist, and the meetings of two in three; how many it filed.
async fn board(up: &Up, cycle: &str, cell: &str, token: &str, half: usize) -> usize {
    let work = up
        .get(&format!("/api/v1/worklist?cycle={cycle}"), token)
        .await
        .unwrap();
    ok(&work, 200);
    let mut mine: Vec<String> = work.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "self_review")
        .inspect(|i| assert_eq!(i["org"], json!(cell), "{i}"))
        .map(|i| s(i, "dossier"))
        .collect();
    mine.sort();
    let mut filed = 0;
    for (i, dossier) in mine.iter().enumerate() {
        if i % 2 != half {
            continue;
        }
        let a = up
            .post(
                &format!("/api/v1/dossiers/{dossier}/self-review"),
                token,
                self_review("good"),
            )
            .await
            .unwrap();
        assert_eq!((a.status, &a.body), (200, &json!({"state": "submitted"})));
        if i % 3 != 0 {
            let a = up
                .post(
                    &format!("/api/v1/dossiers/{dossier}/meeting"),
                    token,
                    meeting("good"),
                )
                .await
                .unwrap();
            assert_eq!((a.status, &a.body), (200, &json!({"state": "reviewed"})));
        }
        filed += 1;
    }
    filed
}

async fn boards_at_once(postgres: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut up = Up::start(postgres).await?;
    let central = up.token.clone();
    let dir = up.dir.path().display().to_string();
    let url = up.url.clone();
    let seed = [
        "seed",
        "--preset",
        "card",
        "--provinces",
        "2",
        "--districts",
        "2",
        "--cells",
        "3",
        "--members",
        "8",
        "--cycle",
        "2026",
        "--url",
        &url,
        "--data-dir",
        &dir,
        "--file-reviews",
        "25",
    ];
    let out = up.run(&seed).await?;
    let cycle = line_after(&out, "cycle:")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // 19 units' collectives and 12 × 8 members.
    let subjects = 1 + 2 + 4 + 12 + 12 * 8;
    assert!(
        line_after(&out, "subjects:").starts_with(&format!("{subjects} ({subjects} new,")),
        "{out}"
    );
    // Again, as after a crash: everything is there already.
    let again = up.run(&seed).await?;
    assert_eq!(line_after(&again, "cycle:"), line_after(&out, "cycle:"));
    assert!(
        line_after(&again, "subjects:")
            .starts_with(&format!("{subjects} (0 new, {subjects} there already)")),
        "{again}"
    );

    // 24 boards at once, two per cell, each with its cell's token from
    // `gradeflow token`: self-reviews, and meetings for two in three.
    let mut cells = Vec::new();
    for p in 1..=2 {
        for d in 1..=2 {
            for c in 1..=3 {
                let code = format!("P{p:02}.D{d:02}.C{c:03}");
                let found = up
                    .get(&format!("/api/v1/orgs?code={code}"), &central)
                    .await?;
                let id = s(&found.body[0], "id");
                let token = up.mint("submitter", &id).await?;
                cells.push((id, token));
            }
        }
    }
    let mut boards = Vec::new();
    for (cell, token) in &cells {
        for half in 0..2 {
            boards.push(board(&up, &cycle, cell, token, half));
        }
    }
    let filed: usize = futures::future::join_all(boards).await.into_iter().sum();
    assert!(filed > 50, "only {filed} self-reviews filed");

    // Every dossier, from the report's list, read from the services.
    let report = format!("/api/v1/cycles/{cycle}/report?format=json");
    let list = up
        .get_until(&report, &central, DEADLINE, |a| {
            a.body["rows"].as_array().map(Vec::len) == Some(subjects)
        })
        .await?;
    let ids: Vec<String> = list.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(r, "dossier"))
        .collect();
    let views: Vec<anyhow::Result<Answer>> = futures::stream::iter(ids.iter().map(|id| {
        let (up, central) = (&up, &central);
        async move { up.get(&format!("/api/v1/dossiers/{id}"), central).await }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let mut own: HashMap<String, Counts> = HashMap::new();
    let mut expected: Counts = COUNTERS.iter().map(|k| (*k, 0)).collect();
    for view in views {
        let view = view?;
        ok(&view, 200);
        let counts = counts_of(view.body["state"].as_str().unwrap());
        add(own.entry(s(&view.body, "org")).or_default(), &counts);
        add(&mut expected, &counts);
    }
    assert_eq!(expected["not_reviewed"], 10, "{expected:?}");
    assert!(expected["submitted"] > 0 && expected["reviewed"] > 0 && expected["open"] > 0);

    // Once the projection has caught up: the root equals the dossiers,
    // every node its children plus its own dossiers, down to the cells.
    let tree_path = format!("/api/v1/cycles/{cycle}/progress?depth=3");
    let tree = up
        .get_until(&tree_path, &central, DEADLINE, |a| {
            a.status == 200 && totals(&a.body) == expected
        })
        .await?;
    let again = up.get(&tree_path, &central).await?;
    assert_eq!(again.body, tree.body, "the tree kept changing");
    assert_eq!(check_sums(&tree.body, &own), 1 + 2 + 4 + 12);

    // Rebuilt from scratch: stop, delete the progress store (only the store:
    // the service itself must notice that its durable consumer is stale),
    // start again on the same data dir and prefix.
    up.stop().await?;
    match &up.pg {
        None => {
            for file in ["progress.db", "progress.db-wal", "progress.db-shm"] {
                let path = up.dir.path().join(file);
                if path.exists() {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Some(pg) => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&pg.url).await?;
            sqlx::query("DROP SCHEMA progress CASCADE")
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
    }
    up.restart().await?;
    // The replay applies every event of the stream again, one transaction
    // each; on a loaded machine that takes longer than a single step does.
    let rebuilt = up
        .get_until(&tree_path, &up.token, REBUILD_DEADLINE, |a| {
            a.status == 200 && a.body == tree.body
        })
        .await?;
    assert_eq!(
        rebuilt.body["children"][0]["children"][0]["children"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    up.cleanup().await;
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_at_once_then_progress_rebuilt_on_sqlite() -> anyhow::Result<()> {
    boards_at_once(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_at_once_then_progress_rebuilt_on_postgres() -> anyhow::Result<()> {
    boards_at_once(true).await
}
