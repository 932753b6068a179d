//! One trace id spans a dossier's journey from its self-review command to its
//! decision, across the three services (`ARCHITECTURE.md` § Observability),
//! through the real binaries, each service its own process.
//!
//! A member's dossier is filed with a self-review carrying the traceparent
//! `T`, then met on, returned, filed again, met on, appraised and decided by
//! commands carrying other traceparents or none. Every event about the
//! dossier — in the store of the service that emitted it, in the copies the
//! other services recorded, and in the `traceparent` header of its message on
//! the events stream — carries `T`'s trace id with a valid span id of its
//! own. An event about no dossier (`org_registered`) keeps the trace of the
//! command that caused it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_proto::events::{
    DossierAppraised, DossierReturned, Event, GradeDecided, MeetingRecorded, OrgRegistered,
    SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{Envelope, OrgId};
use gradeflow_service::trace;
use serde_json::{json, Value};
use system_tests::{central, wait_for, Deployment, Driver, SERVICES};

/// The self-review's trace: the dossier's.
const T: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// The root's registration.
const X: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Later commands on the dossier, each in a trace of its own.
const MEETING: &str = "00-11111111111111111111111111111111-1111111111111111-01";
const RETURN: &str = "00-22222222222222222222222222222222-2222222222222222-01";
const REFILE: &str = "00-33333333333333333333333333333333-3333333333333333-01";
const APPRAISAL: &str = "00-44444444444444444444444444444444-4444444444444444-01";

fn trace_id(traceparent: &str) -> &str {
    &traceparent[3..35]
}

fn span_id(traceparent: &str) -> &str {
    &traceparent[36..52]
}

/// Asserts `traceparent` is a valid W3C value in `T`'s trace.
fn assert_in_dossier_trace(traceparent: Option<&str>, what: &str) {
    let tp = traceparent.unwrap_or_else(|| panic!("{what}: no traceparent"));
    assert!(
        trace::valid(Some(tp)).is_some(),
        "{what}: invalid traceparent {tp}"
    );
    assert_eq!(
        trace_id(tp),
        trace_id(T),
        "{what}: {tp} is not in T's trace"
    );
}

async fn org(d: &Driver, root: OrgId, code: &str, tier: &str, parent: OrgId) -> OrgId {
    let r = d
        .eventually(&central(root), "submission", "register_org.v1", json!({"code": code, "name": format!("Tổ chức {code}"), "tier": tier, "parent": parent}))
        .await
        .unwrap();
    r["id"].as_str().unwrap().parse().unwrap()
}

/// Files the self-review and records the meeting, the self-review with
/// `traceparent`.
async fn file(d: &Driver, root: OrgId, dossier: &str, self_review: &str, meeting: Option<&str>) {
    let me = central(root);
    d.call_traced(&me, "submission", "submit_self_review.v1", json!({"dossier": dossier, "score": {"general": 28, "tasks": 65}, "proposed_grade": "good", "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0}, "shortcomings_fixed": true, "report": "Bản tự kiểm điểm"}), Some(self_review))
        .await
        .unwrap();
    d.call_traced(&me, "submission", "record_meeting.v1", json!({"dossier": dossier, "proposed_grade": "good", "votes": {"good": 10}, "minutes": "Biên bản"}), meeting)
        .await
        .unwrap();
}

/// Every message of the events stream: its envelope and `traceparent`
/// header.
async fn published(dep: &Deployment) -> Vec<(Envelope, Option<String>)> {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=total {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let env: Envelope = serde_json::from_slice(&msg.payload).unwrap();
        let header = msg
            .headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned());
        out.push((env, header));
    }
    out
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

fn about(payload: &Value, dossier: &str) -> bool {
    payload["dossier"].as_str() == Some(dossier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_a_dossier_from_self_review_to_decision() {
    let mut dep = Deployment::start(false).await.unwrap();
    let d = Driver::new(&dep);

    // The tree: central → province → district → cell with one member. The
    // root's registration carries X.
    let root = OrgId::new();
    let me = central(root);
    d.call_traced(
        &me,
        "submission",
        "register_org.v1",
        json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}),
        Some(X),
    )
    .await
    .unwrap();
    let cycle = d
        .eventually(
            &me,
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
    let province = org(&d, root, "P01", "province", root).await;
    let district = org(&d, root, "P01.D01", "district", province).await;
    let cell = org(&d, root, "P01.D01.C01", "cell", district).await;
    let member = d
        .eventually(&me, "submission", "register_subject.v1", json!({"cycle": cycle, "kind": "individual", "org": cell, "name": "P01.D01.C01.M1", "category": "2B"}))
        .await
        .unwrap();
    let dossier = member["dossier"].as_str().unwrap().to_owned();

    // The journey: filed in T, then returned and filed again, appraised and
    // decided by commands in other traces or none.
    file(&d, root, &dossier, T, Some(MEETING)).await;
    d.call_traced(
        &me,
        "appraisal",
        "return_dossier.v1",
        json!({"dossier": dossier, "reason": "Thiếu biên bản hội nghị"}),
        Some(RETURN),
    )
    .await
    .unwrap();
    file(&d, root, &dossier, REFILE, None).await;
    d.call_traced(
        &me,
        "appraisal",
        "appraise_dossier.v1",
        json!({"dossier": dossier, "recommended_grade": "good", "facts": {}, "notes": "Thẩm định"}),
        Some(APPRAISAL),
    )
    .await
    .unwrap();
    d.eventually(&me, "approval", "decide_batch.v1", json!({"cycle": cycle, "authority": district, "number": "01-QĐ/HU", "grades": [{"dossier": dossier, "grade": "good"}]}))
        .await
        .unwrap();

    // Everything published and copied, then the services stopped.
    let (dep_ref, dossier_ref) = (&dep, &dossier);
    wait_for(
        Duration::from_secs(30),
        "grade_decided on the stream",
        || async move {
            published(dep_ref)
                .await
                .iter()
                .any(|(e, _)| e.kind == GradeDecided::KIND && about(&e.payload, dossier_ref))
                .then_some(())
        },
    )
    .await
    .unwrap();
    wait_consumers_caught_up(&dep).await;
    dep.stop().await.unwrap();

    // The wire: every message about the dossier after its registration
    // carries T's trace in its header and its envelope, each with a span of
    // its own.
    let messages = published(&dep).await;
    let mut kinds = Vec::new();
    let mut spans = BTreeSet::new();
    for (env, header) in &messages {
        if !about(&env.payload, &dossier) || env.kind == SubjectRegistered::KIND {
            continue;
        }
        let what = format!("{} on the stream", env.kind);
        assert_in_dossier_trace(header.as_deref(), &format!("{what} (header)"));
        assert_eq!(
            header, &env.traceparent,
            "{what}: header and envelope differ"
        );
        assert!(
            spans.insert(span_id(header.as_deref().unwrap()).to_owned()),
            "{what}: a span id used twice"
        );
        kinds.push(env.kind.as_str());
    }
    assert_eq!(
        kinds,
        [
            SelfReviewSubmitted::KIND,
            MeetingRecorded::KIND,
            DossierReturned::KIND,
            SelfReviewSubmitted::KIND,
            MeetingRecorded::KIND,
            DossierAppraised::KIND,
            GradeDecided::KIND,
        ]
    );
    // The first self-review carries the command's own traceparent.
    let first = messages
        .iter()
        .find(|(e, _)| e.kind == SelfReviewSubmitted::KIND)
        .unwrap();
    assert_eq!(first.0.traceparent.as_deref(), Some(T));

    // The root's registration is about no dossier: it keeps X's trace.
    let registered = messages
        .iter()
        .find(|(e, _)| e.kind == OrgRegistered::KIND && e.payload["org"] == json!(root))
        .unwrap();
    assert_eq!(
        registered.0.traceparent.as_deref().map(trace_id),
        Some(trace_id(X))
    );
    assert_eq!(registered.1.as_deref().map(trace_id), Some(trace_id(X)));

    // The stores: each service's own events and its copies of the others'.
    let expected: [(&str, &[&str]); 3] = [
        (
            "submission",
            &[
                SelfReviewSubmitted::KIND,
                MeetingRecorded::KIND,
                DossierReturned::KIND,
                DossierAppraised::KIND,
                GradeDecided::KIND,
            ],
        ),
        (
            "appraisal",
            &[
                SelfReviewSubmitted::KIND,
                MeetingRecorded::KIND,
                DossierReturned::KIND,
                DossierAppraised::KIND,
                GradeDecided::KIND,
            ],
        ),
        (
            "approval",
            &[
                SelfReviewSubmitted::KIND,
                DossierReturned::KIND,
                DossierAppraised::KIND,
                GradeDecided::KIND,
            ],
        ),
    ];
    for (service, kinds) in expected {
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
        let events = store.read_from(0, usize::MAX >> 1).await.unwrap();
        let mut seen = BTreeSet::new();
        for e in &events {
            if !about(&e.payload, &dossier) || e.kind == SubjectRegistered::KIND {
                continue;
            }
            assert_in_dossier_trace(
                e.metadata.traceparent.as_deref(),
                &format!("{service}'s {} (from {})", e.kind, e.metadata.service),
            );
            seen.insert(e.kind.as_str());
        }
        assert_eq!(
            seen,
            kinds.iter().copied().collect::<BTreeSet<_>>(),
            "{service}'s store"
        );
        if service == "submission" {
            let registered = events
                .iter()
                .find(|e| e.kind == OrgRegistered::KIND && e.payload["org"] == json!(root))
                .unwrap();
            assert_eq!(
                registered.metadata.traceparent.as_deref().map(trace_id),
                Some(trace_id(X))
            );
        }
        store.close().await;
    }
    dep.cleanup().await;
}
