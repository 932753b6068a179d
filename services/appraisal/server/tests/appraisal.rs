//! Integration tests of the appraisal service against a real event store (a
//! fresh SQLite file per test, one test on PostgreSQL). The dossiers are
//! made by the real submission service on its own store; a small relay
//! plays the consumers, feeding each service the other's events through
//! `observe` and appending the result as the consumer loop does. No NATS is
//! needed.

#![allow(clippy::unwrap_used)]

use gradeflow_appraisal_server::Appraisal;
use gradeflow_eventstore::{AppendOutcome, InboxEntry, Store, StoreOptions};
use gradeflow_proto::events::{DossierAppraised, Event, GradeDecided, RecordRef};
use gradeflow_proto::{
    Actor, CommandEnvelope, CommandId, CommandReply, CorrelationId, CycleId, DecisionId, DossierId,
    Envelope, EventId, Facts, Grade, OrgId, Rejection, Role, SubjectId,
};
use gradeflow_service::Workflow;
use gradeflow_submission_server::Submission;
use gradeflow_testkit::{fresh_pg, fresh_sqlite, SqliteFile};
use serde_json::{json, Value};

// ---------------------------------------------------------------- harness

/// Submission and appraisal, each on its own store, with a hand-cranked
/// relay between them, and a tree: TW → P01 → P01.D01 → P01.D01.C01.
struct World {
    submission: Submission,
    sub_store: Store,
    appraisal: Appraisal,
    store: Store,
    urls: (String, String),
    _files: Vec<SqliteFile>,
    /// How far each store has been relayed to the other service.
    relayed: std::sync::Mutex<(i64, i64)>,
    root: OrgId,
    province: OrgId,
    district: OrgId,
    cell: OrgId,
    cycle: CycleId,
}

impl World {
    async fn sqlite() -> World {
        let (a, b) = (fresh_sqlite().unwrap(), fresh_sqlite().unwrap());
        let urls = (a.url.clone(), b.url.clone());
        World::on(urls, vec![a, b]).await
    }

    async fn on(urls: (String, String), files: Vec<SqliteFile>) -> World {
        let sub_store = Store::connect(&urls.0, StoreOptions::default())
            .await
            .unwrap();
        let store = Store::connect(&urls.1, StoreOptions::default())
            .await
            .unwrap();
        let submission = Submission::open(sub_store.clone()).await.unwrap();
        let appraisal = Appraisal::open(store.clone()).await.unwrap();
        let mut w = World {
            submission,
            sub_store,
            appraisal,
            store,
            urls,
            _files: files,
            relayed: std::sync::Mutex::new((0, 0)),
            root: OrgId::new(),
            province: OrgId::new(),
            district: OrgId::new(),
            cell: OrgId::new(),
            cycle: CycleId::new(),
        };
        let system = actor(Role::System, OrgId(uuid::Uuid::nil()));
        let central = actor(Role::Central, w.root);
        for (id, code, tier, parent) in [
            (w.root, "TW", "central", None),
            (w.province, "P01", "province", Some(w.root)),
            (w.district, "P01.D01", "district", Some(w.province)),
            (w.cell, "P01.D01.C01", "cell", Some(w.district)),
        ] {
            let by = if parent.is_none() { &system } else { &central };
            w.submit(
                by,
                "register_org.v1",
                json!({"id": id, "code": code, "name": code, "tier": tier, "parent": parent}),
            )
            .await;
        }
        let r = w
            .submit(
                &central,
                "open_cycle.v1",
                json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                       "tiers": ["cell", "district", "province", "central"],
                       "quota": {"ratio": 0.2, "rounding": "floor"}}),
            )
            .await;
        w.cycle = serde_json::from_value(r["id"].clone()).unwrap();
        w.relay().await;
        w
    }

    /// A command to submission; must be accepted.
    async fn submit(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(
            self.submission
                .handle_command(cmd(actor, kind, payload))
                .await,
        )
    }

    /// A command to appraisal.
    async fn send(&self, actor: &Actor, kind: &str, payload: Value) -> CommandReply {
        self.appraisal
            .handle_command(cmd(actor, kind, payload))
            .await
    }

    async fn ok(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(self.send(actor, kind, payload).await)
    }

    /// A command appraisal must refuse with `code`, leaving its store as it
    /// was.
    async fn refused(&self, actor: &Actor, kind: &str, payload: Value, code: &str) -> Rejection {
        let before = head(&self.store).await;
        let reply = self.send(actor, kind, payload).await;
        let CommandReply::Rejected(r) = reply else {
            panic!("expected {code}, got {reply:?}");
        };
        assert_eq!(r.code, code, "{r:?}");
        assert!(!r.message.is_empty() && !r.message_vi.is_empty());
        assert_eq!(
            head(&self.store).await,
            before,
            "a refusal must change nothing"
        );
        r
    }

    /// Plays both consumers: every event a service emitted since the last
    /// relay goes to the other service if it observes that kind.
    async fn relay(&self) {
        let (from_sub, from_appr) = *self.relayed.lock().unwrap();
        let a = forward(&self.sub_store, from_sub, "submission", &self.appraisal).await;
        let b = forward(&self.store, from_appr, "appraisal", &self.submission).await;
        *self.relayed.lock().unwrap() = (a, b);
    }

    /// A member of the cell whose dossier is reviewed (self-review and
    /// meeting done), relayed to appraisal.
    async fn reviewed_member(&self, general: u32, tasks: u32) -> DossierId {
        let submitter = actor(Role::Submitter, self.cell);
        let r = self
            .submit(
                &submitter,
                "register_subject.v1",
                json!({"cycle": self.cycle, "kind": "individual", "org": self.cell,
                       "name": "Trần Thị B", "category": "2B"}),
            )
            .await;
        let d: DossierId = serde_json::from_value(r["dossier"].clone()).unwrap();
        self.review(d, general, tasks).await;
        d
    }

    async fn review(&self, d: DossierId, general: u32, tasks: u32) {
        let submitter = actor(Role::Submitter, self.cell);
        self.submit(
            &submitter,
            "submit_self_review.v1",
            json!({"dossier": d, "score": {"general": general, "tasks": tasks},
                   "proposed_grade": "good",
                   "tasks": {"total": 10, "on_time": 10, "exceeded": 3},
                   "shortcomings_fixed": true}),
        )
        .await;
        self.submit(
            &submitter,
            "record_meeting.v1",
            json!({"dossier": d, "proposed_grade": "good"}),
        )
        .await;
        self.relay().await;
    }

    fn appraiser(&self) -> Actor {
        actor(Role::Appraiser, self.district)
    }

    async fn query(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(self.send(actor, kind, payload).await)
    }
}

async fn forward<W: Workflow>(from: &Store, after: i64, service: &str, to: &W) -> i64 {
    let mut last = after;
    for e in from.read_from(after, 100_000).await.unwrap() {
        last = e.position;
        if e.metadata.service != service || !to.observes(&e.kind) {
            continue;
        }
        let inbox = InboxEntry {
            consumer: "appraisal-test".into(),
            message_id: e.event_id.to_string(),
            reply: None,
        };
        let outcome = to
            .observe(&e.envelope(), inbox)
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        assert!(matches!(outcome, AppendOutcome::Appended(_)));
    }
    last
}

async fn head(store: &Store) -> i64 {
    store.head().await.unwrap().map_or(0, |(p, _)| p)
}

fn actor(role: Role, org: OrgId) -> Actor {
    Actor {
        sub: format!("{role:?}@{org}").to_lowercase(),
        role,
        org,
    }
}

fn cmd(actor: &Actor, kind: &str, payload: Value) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::new(),
        kind: kind.into(),
        actor: actor.clone(),
        traceparent: None,
        payload,
    }
}

fn accepted(reply: CommandReply) -> Value {
    match reply {
        CommandReply::Accepted { result, .. } => result,
        CommandReply::Rejected(r) => panic!("refused: {r:?}"),
    }
}

fn appraise(d: DossierId, grade: &str) -> Value {
    json!({"dossier": d, "recommended_grade": grade, "facts": {}, "notes": "Đạt yêu cầu"})
}

fn rules(result: &Value) -> Vec<String> {
    result["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["rule"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_reviewed_dossier_is_appraised_by_the_board_of_its_deciding_org() {
    let w = World::sqlite().await;
    let d = w.reviewed_member(27, 60).await;

    let work = w.query(&w.appraiser(), "worklist.v1", json!({})).await;
    assert_eq!(work["items"].as_array().unwrap().len(), 1);
    assert_eq!(work["items"][0]["dossier"], json!(d));
    assert_eq!(work["items"][0]["action"], "appraise");
    assert_eq!(work["items"][0]["warnings"], json!([]));

    let r = w
        .ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
        .await;
    assert_eq!(r, json!({"state": "appraised", "warnings": []}));

    let view = w
        .query(&w.appraiser(), "get_dossier.v1", json!({"dossier": d}))
        .await;
    assert_eq!(view["state"], "appraised");
    assert_eq!(view["appraisal"]["recommended_grade"], "good");
    assert_eq!(view["appraisal"]["actor"]["role"], "appraiser");
    let work = w.query(&w.appraiser(), "worklist.v1", json!({})).await;
    assert_eq!(work["items"], json!([]));

    // Submission learns of it through its consumer.
    w.relay().await;
    let seen = accepted(
        w.submission
            .handle_command(cmd(&w.appraiser(), "get_dossier.v1", json!({"dossier": d})))
            .await,
    );
    assert_eq!(seen["state"], "appraised");
    assert_eq!(seen["appraisal"]["recommended_grade"], "good");

    let stream = w.store.load_stream(&d.stream()).await.unwrap();
    let last = stream.last().unwrap();
    assert_eq!(last.kind, "dossier_appraised.v1");
    assert_eq!(last.metadata.service, "appraisal");
    assert_eq!(last.metadata.province.as_deref(), Some("P01"));
}

#[tokio::test]
async fn warnings_flag_a_grade_above_the_band_a_hard_trigger_and_quota_pressure() {
    let w = World::sqlite().await;
    // 78 points: the band allows good, not excellent.
    let d = w.reviewed_member(25, 53).await;
    let work = w.query(&w.appraiser(), "worklist.v1", json!({})).await;
    assert_eq!(work["items"][0]["proposed_grade"], "good");

    let mut input = appraise(d, "excellent");
    input["facts"] = json!({"discipline": {"level": "reprimand", "duty_related": true}});
    let r = w.ok(&w.appraiser(), "appraise_dossier.v1", input).await;
    let found = rules(&r);
    assert!(found.contains(&"score_band".to_owned()), "{found:?}");
    assert!(found.contains(&"hard_trigger".to_owned()), "{found:?}");
    // No good grade stands in the group yet: one excellent is over quota.
    assert!(found.contains(&"quota".to_owned()), "{found:?}");
    for warning in r["warnings"].as_array().unwrap() {
        assert!(!warning["message"].as_str().unwrap().is_empty());
        assert!(!warning["message_vi"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn quota_pressure_counts_the_recommendations_standing_in_the_group() {
    let w = World::sqlite().await;
    // Five good recommendations allow one excellent (floor(0.2 × 5) = 1).
    for _ in 0..5 {
        let d = w.reviewed_member(27, 65).await;
        w.ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
            .await;
    }
    let first = w.reviewed_member(29, 68).await;
    let r = w
        .ok(
            &w.appraiser(),
            "appraise_dossier.v1",
            appraise(first, "excellent"),
        )
        .await;
    assert_eq!(rules(&r), Vec::<String>::new());
    let second = w.reviewed_member(29, 68).await;
    let r = w
        .ok(
            &w.appraiser(),
            "appraise_dossier.v1",
            appraise(second, "excellent"),
        )
        .await;
    assert_eq!(rules(&r), ["quota"]);
    assert!(r["warnings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("individuals"));

    // A returned recommendation no longer counts: after returning the first
    // excellent, the second is within quota when appraised again.
    w.ok(
        &w.appraiser(),
        "return_dossier.v1",
        json!({"dossier": first, "reason": "Xem lại"}),
    )
    .await;
    w.ok(
        &w.appraiser(),
        "return_dossier.v1",
        json!({"dossier": second, "reason": "Xem lại"}),
    )
    .await;
    w.relay().await;
    w.review(second, 29, 68).await;
    let r = w
        .ok(
            &w.appraiser(),
            "appraise_dossier.v1",
            appraise(second, "excellent"),
        )
        .await;
    assert_eq!(rules(&r), Vec::<String>::new());
}

#[tokio::test]
async fn a_decided_grade_counts_in_the_quota_pressure_in_place_of_the_recommendation() {
    let w = World::sqlite().await;
    let mut good = Vec::new();
    for _ in 0..5 {
        let d = w.reviewed_member(27, 65).await;
        w.ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
            .await;
        good.push(d);
    }
    // The authority grades one of them excellent: 4 good, 1 excellent.
    let decided = GradeDecided {
        decision: DecisionId::new(),
        dossier: good[0],
        subject: SubjectId::new(),
        cycle: w.cycle,
        authority: w.district,
        org: w.cell,
        grade: Grade::Excellent,
        quota_group: "individuals".into(),
        override_reason: Some("Thành tích đột xuất".into()),
        record: RecordRef {
            seq: 1,
            hash: "ab".repeat(32),
            signature: "c2ln".into(),
            key_id: "k1".into(),
            prev_hash: None,
            at: None,
        },
        number: Some("1-QĐ/HU".into()),
    };
    let env = Envelope {
        event_id: EventId::new(),
        kind: GradeDecided::KIND.into(),
        stream: "decision-log".into(),
        version: 1,
        occurred_at: chrono::Utc::now(),
        actor: actor(Role::Authority, w.district),
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: serde_json::to_value(&decided).unwrap(),
    };
    let inbox = InboxEntry {
        consumer: "appraisal-test".into(),
        message_id: env.event_id.to_string(),
        reply: None,
    };
    let outcome = w
        .appraisal
        .observe(&env, inbox)
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    match outcome {
        AppendOutcome::Appended(events) => assert_eq!(
            events.len(),
            1,
            "appraisal records grades and reacts to nothing"
        ),
        other => panic!("expected Appended, got {other:?}"),
    }
    let d = w.reviewed_member(29, 68).await;
    let r = w
        .ok(
            &w.appraiser(),
            "appraise_dossier.v1",
            appraise(d, "excellent"),
        )
        .await;
    assert_eq!(rules(&r), ["quota"], "floor(0.2 × 4) = 0 excellent allowed");
    let view = w
        .query(
            &w.appraiser(),
            "get_dossier.v1",
            json!({"dossier": good[0]}),
        )
        .await;
    assert_eq!(view["state"], "decided");
    assert_eq!(view["decided_grade"], "excellent");
}

#[tokio::test]
async fn every_refusal_names_its_code_and_leaves_the_store_unchanged() {
    let w = World::sqlite().await;
    let d = w.reviewed_member(27, 60).await;
    let appraiser = w.appraiser();

    // Malformed input.
    w.refused(
        &appraiser,
        "appraise_dossier.v1",
        json!([1, 2]),
        "invalid_input",
    )
    .await;
    w.refused(
        &appraiser,
        "appraise_dossier.v1",
        appraise(d, "outstanding"),
        "invalid_input",
    )
    .await;
    let mut unknown = appraise(d, "good");
    unknown["facts"]["mood"] = json!(true);
    w.refused(&appraiser, "appraise_dossier.v1", unknown, "invalid_input")
        .await;
    let mut ratio = appraise(d, "good");
    ratio["facts"]["low_confidence_ratio"] = json!(1.5);
    let r = w
        .refused(&appraiser, "appraise_dossier.v1", ratio, "invalid_input")
        .await;
    assert_eq!(r.details["field"], "facts.low_confidence_ratio");

    // A return needs a reason.
    let r = w
        .refused(
            &appraiser,
            "return_dossier.v1",
            json!({"dossier": d, "reason": "   "}),
            "invalid_input",
        )
        .await;
    assert_eq!(r.details["field"], "reason");
    w.refused(
        &appraiser,
        "return_dossier.v1",
        json!({"dossier": d}),
        "invalid_input",
    )
    .await;

    // Scope: the board of the dossier's own cell is not the deciding org's,
    // and a submitter is not an appraiser.
    let cell_board = actor(Role::Appraiser, w.cell);
    w.refused(
        &cell_board,
        "appraise_dossier.v1",
        appraise(d, "good"),
        "out_of_scope",
    )
    .await;
    let submitter = actor(Role::Submitter, w.root);
    w.refused(
        &submitter,
        "appraise_dossier.v1",
        appraise(d, "good"),
        "out_of_scope",
    )
    .await;

    // Unknown ids and kinds.
    w.refused(
        &appraiser,
        "appraise_dossier.v1",
        appraise(DossierId::new(), "good"),
        "unknown_dossier",
    )
    .await;
    w.refused(
        &appraiser,
        "submit_self_review.v1",
        json!({}),
        "invalid_input",
    )
    .await;

    // Wrong state: twice, and an open dossier.
    w.ok(&appraiser, "appraise_dossier.v1", appraise(d, "good"))
        .await;
    let r = w
        .refused(
            &appraiser,
            "appraise_dossier.v1",
            appraise(d, "good"),
            "wrong_state",
        )
        .await;
    assert_eq!(r.details["state"], "appraised");
    assert_eq!(r.details["action"], "appraise");
    let r = w
        .submit(
            &actor(Role::Submitter, w.cell),
            "register_subject.v1",
            json!({"cycle": w.cycle, "kind": "individual", "org": w.cell, "name": "C", "category": "2A", "leader": true}),
        )
        .await;
    let open: DossierId = serde_json::from_value(r["dossier"].clone()).unwrap();
    w.relay().await;
    let r = w
        .refused(
            &appraiser,
            "return_dossier.v1",
            json!({"dossier": open, "reason": "x"}),
            "wrong_state",
        )
        .await;
    assert_eq!(r.details["state"], "open");
}

#[tokio::test]
async fn a_repeated_command_id_gets_the_first_answer_and_appends_nothing() {
    let w = World::sqlite().await;
    let d = w.reviewed_member(27, 60).await;
    let command = cmd(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"));
    let first = w.appraisal.handle_command(command.clone()).await;
    let CommandReply::Accepted { event_ids, result } = &first else {
        panic!("{first:?}");
    };
    assert_eq!(event_ids.len(), 1);
    let before = head(&w.store).await;
    let second = w.appraisal.handle_command(command).await;
    assert_eq!(
        second,
        CommandReply::Accepted {
            event_ids: vec![],
            result: result.clone()
        }
    );
    assert_eq!(head(&w.store).await, before);
}

#[tokio::test]
async fn a_returned_dossier_is_filed_again_reviewed_again_and_then_appraised() {
    let w = World::sqlite().await;
    let d = w.reviewed_member(27, 60).await;
    let r = w
        .ok(
            &w.appraiser(),
            "return_dossier.v1",
            json!({"dossier": d, "reason": "Thiếu biên bản hội nghị"}),
        )
        .await;
    assert_eq!(r, json!({"state": "returned"}));
    w.relay().await;

    // Submission saw the return: the unit files again, a resubmission.
    let submitter = actor(Role::Submitter, w.cell);
    let seen = accepted(
        w.submission
            .handle_command(cmd(&submitter, "get_dossier.v1", json!({"dossier": d})))
            .await,
    );
    assert_eq!(seen["state"], "returned");
    w.review(d, 27, 61).await;
    let resubmitted = w
        .sub_store
        .load_stream(&d.stream())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "self_review_submitted.v1")
        .map(|e| e.payload["resubmission"].as_bool().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(resubmitted, [false, true]);

    let r = w
        .ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
        .await;
    assert_eq!(r["state"], "appraised");
    let view = w
        .query(&w.appraiser(), "get_dossier.v1", json!({"dossier": d}))
        .await;
    assert_eq!(view["returns"][0]["reason"], "Thiếu biên bản hội nghị");
    assert_eq!(view["score"]["tasks"], 61.0, "the refiled score stands");
}

#[tokio::test]
async fn the_view_shows_the_boards_appraisal_and_returns_as_the_store_holds_them() {
    let w = World::sqlite().await;
    let d = w.reviewed_member(27, 60).await;
    let untouched = w.reviewed_member(27, 60).await;
    for reason in ["Lần một", "Lần hai"] {
        w.ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
            .await;
        w.ok(
            &w.appraiser(),
            "return_dossier.v1",
            json!({"dossier": d, "reason": reason}),
        )
        .await;
        w.relay().await;
        w.review(d, 27, 61).await;
    }
    let mut input = appraise(d, "excellent");
    input["facts"] = json!({"degradation": true, "low_confidence_ratio": 0.123_456_789_123_4});
    w.ok(&w.appraiser(), "appraise_dossier.v1", input).await;

    let view = w
        .query(&w.appraiser(), "get_dossier.v1", json!({"dossier": d}))
        .await;
    let stored = w.store.load_stream(&d.stream()).await.unwrap();
    let of = |kind: &str| {
        stored
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let appraisals = of("dossier_appraised.v1");
    assert_eq!(appraisals.len(), 3);
    let last = appraisals.last().unwrap();
    assert_eq!(
        view["appraisal"],
        json!({
            "recommended_grade": "excellent",
            "facts": last.payload["facts"],
            "notes": "Đạt yêu cầu",
            "warnings": last.payload["warnings"],
            "at": last.recorded_at,
            "actor": last.metadata.actor,
        })
    );
    assert_eq!(
        view["appraisal"]["facts"]["low_confidence_ratio"],
        0.123_456_789_123_4
    );
    let returns = of("dossier_returned.v1")
        .iter()
        .map(|e| json!({"reason": e.payload["reason"], "at": e.recorded_at, "actor": e.metadata.actor}))
        .collect::<Vec<_>>();
    assert_eq!(view["returns"], json!(returns));
    assert_eq!(view["returns"][1]["reason"], "Lần hai");
    assert_eq!(view["state"], "appraised");
    assert_eq!(view["score"]["tasks"], 61.0);

    let plain = w
        .query(
            &w.appraiser(),
            "get_dossier.v1",
            json!({"dossier": untouched}),
        )
        .await;
    assert_eq!(plain["appraisal"], Value::Null);
    assert_eq!(plain["returns"], json!([]));
    assert_eq!(plain["state"], "reviewed");

    // Someone else's dossier is refused before anything is read.
    let r = w
        .refused(
            &actor(Role::Appraiser, OrgId::new()),
            "get_dossier.v1",
            json!({"dossier": d}),
            "out_of_scope",
        )
        .await;
    assert_eq!(r.details["dossier"], json!(d));

    // A store that cannot be read answers `unavailable`.
    w.store.close().await;
    let reply = w
        .send(&w.appraiser(), "get_dossier.v1", json!({"dossier": d}))
        .await;
    let CommandReply::Rejected(r) = reply else {
        panic!("expected unavailable, got {reply:?}");
    };
    assert_eq!(r.code, "unavailable");
}

#[tokio::test]
async fn a_dossier_read_while_its_appraisal_commits_shows_the_appraisal() {
    let w = World::sqlite().await;
    // The engine applies an append to the model as soon as it is queued,
    // before it commits, and a read may see it (`Engine::read`); the view
    // reads the appraisal itself from the store, so it waits for the
    // commit. The append is handed to the engine here without awaiting it,
    // and read at once — a few times, as the commit may win the race.
    for _ in 0..5 {
        let d = w.reviewed_member(27, 60).await;
        let appraised = DossierAppraised {
            dossier: d,
            recommended_grade: Grade::Good,
            facts: Facts::default(),
            notes: "Đang ghi".into(),
            warnings: Vec::new(),
        };
        let env = Envelope {
            event_id: EventId::new(),
            kind: DossierAppraised::KIND.into(),
            stream: d.stream(),
            version: 4,
            occurred_at: chrono::Utc::now(),
            actor: w.appraiser(),
            correlation_id: CorrelationId::new(),
            causation_id: None,
            traceparent: None,
            payload: serde_json::to_value(&appraised).unwrap(),
        };
        let inbox = InboxEntry {
            consumer: "appraisal-test".into(),
            message_id: env.event_id.to_string(),
            reply: None,
        };
        let committing = w.appraisal.observe(&env, inbox).await.unwrap();
        let view = w
            .query(&w.appraiser(), "get_dossier.v1", json!({"dossier": d}))
            .await;
        assert_eq!(view["state"], "appraised");
        assert_eq!(view["appraisal"]["notes"], "Đang ghi");
        assert_eq!(view["appraisal"]["actor"], json!(w.appraiser()));
        let outcome = committing.outcome().await.unwrap();
        let AppendOutcome::Appended(events) = outcome else {
            panic!("expected Appended, got {outcome:?}");
        };
        assert_eq!(view["appraisal"]["at"], json!(events[0].recorded_at));
    }
}

#[tokio::test]
async fn a_service_reopened_on_its_store_answers_exactly_as_the_live_one() {
    let w = World::sqlite().await;
    let a = w.reviewed_member(27, 60).await;
    let b = w.reviewed_member(29, 68).await;
    w.reviewed_member(20, 40).await;
    w.ok(&w.appraiser(), "appraise_dossier.v1", appraise(a, "good"))
        .await;
    w.ok(
        &w.appraiser(),
        "appraise_dossier.v1",
        appraise(b, "excellent"),
    )
    .await;
    let questions = [
        ("get_dossier.v1", json!({"dossier": a})),
        ("get_dossier.v1", json!({"dossier": b})),
        ("worklist.v1", json!({})),
    ];
    let mut live = Vec::new();
    for (k, q) in &questions {
        live.push(w.query(&w.appraiser(), k, q.clone()).await);
    }
    w.store.close().await;
    let store = Store::connect(&w.urls.1, StoreOptions::default())
        .await
        .unwrap();
    let rebuilt = Appraisal::open(store).await.unwrap();
    for ((k, q), expected) in questions.iter().zip(live) {
        let answer = accepted(
            rebuilt
                .handle_command(cmd(&w.appraiser(), k, q.clone()))
                .await,
        );
        assert_eq!(answer, expected, "{k} {q}");
    }
}

#[tokio::test]
async fn a_service_whose_model_spills_answers_as_the_one_that_kept_it_whole() {
    let w = World::sqlite().await;
    // More dossiers than the smallest capacity a map can be given (64), in
    // every state the board sees.
    let mut dossiers = Vec::new();
    for i in 0..90 {
        dossiers.push(w.reviewed_member(20 + i % 10, 40 + i % 30).await);
    }
    for (i, d) in dossiers.iter().enumerate() {
        match i % 4 {
            0 => {
                w.ok(&w.appraiser(), "appraise_dossier.v1", appraise(*d, "good"))
                    .await;
            }
            1 if i % 3 == 0 => {
                w.ok(
                    &w.appraiser(),
                    "appraise_dossier.v1",
                    appraise(*d, "excellent"),
                )
                .await;
            }
            2 => {
                w.ok(
                    &w.appraiser(),
                    "return_dossier.v1",
                    json!({"dossier": d, "reason": "Thiếu biên bản"}),
                )
                .await;
            }
            _ => {}
        }
    }
    let system = actor(Role::System, OrgId(uuid::Uuid::nil()));
    let mut questions = vec![
        (w.appraiser(), "worklist.v1", json!({})),
        (w.appraiser(), "worklist.v1", json!({"limit": 7})),
        (system.clone(), "worklist.v1", json!({"cycle": w.cycle})),
    ];
    for d in &dossiers {
        questions.push((w.appraiser(), "get_dossier.v1", json!({"dossier": d})));
    }
    let mut live = Vec::new();
    for (a, k, q) in &questions {
        live.push(w.query(a, k, q.clone()).await);
    }
    let waiting = live[0]["items"].as_array().unwrap().clone();
    assert!(waiting.len() > 30, "{}", waiting.len());

    // The same store folded into a model that keeps 64 values per map (the
    // capacity is the process's: nextest runs each test in a process of
    // its own).
    gradeflow_service::spill::set_capacity(64);
    w.store.close().await;
    let store = Store::connect(&w.urls.1, StoreOptions::default())
        .await
        .unwrap();
    let spilled = Appraisal::open(store).await.unwrap();
    for ((a, k, q), expected) in questions.iter().zip(live) {
        let answer = accepted(spilled.handle_command(cmd(a, k, q.clone())).await);
        assert_eq!(answer, expected, "{k} {q}");
    }
    let (written, read) = spilled
        .engine()
        .read(|m| m.dossiers.traffic())
        .await
        .unwrap();
    assert!(written > 0 && read > 0, "the model spilled");

    // And it decides as the live one would have: the warnings the worklist
    // precomputed at the proposed grade.
    let item = &waiting[waiting.len() - 1];
    let d: DossierId = serde_json::from_value(item["dossier"].clone()).unwrap();
    let r = accepted(
        spilled
            .handle_command(cmd(
                &w.appraiser(),
                "appraise_dossier.v1",
                appraise(d, item["proposed_grade"].as_str().unwrap()),
            ))
            .await,
    );
    assert_eq!(r["state"], "appraised");
    assert_eq!(r["warnings"], item["warnings"]);
}

#[tokio::test]
async fn the_flow_runs_the_same_on_postgresql() {
    let (a, b) = (fresh_pg().await.unwrap(), fresh_pg().await.unwrap());
    let w = World::on((a.url.clone(), b.url.clone()), Vec::new()).await;
    let d = w.reviewed_member(27, 60).await;
    w.refused(
        &w.appraiser(),
        "return_dossier.v1",
        json!({"dossier": d, "reason": ""}),
        "invalid_input",
    )
    .await;
    let r = w
        .ok(&w.appraiser(), "appraise_dossier.v1", appraise(d, "good"))
        .await;
    assert_eq!(r["state"], "appraised");
    w.store.close().await;
    w.sub_store.close().await;
    a.drop_db().await.unwrap();
    b.drop_db().await.unwrap();
}
