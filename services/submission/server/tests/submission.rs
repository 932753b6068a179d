//! Integration tests of the submission service against a real event store
//! (a fresh SQLite file per test, one test on PostgreSQL). Commands go
//! straight to `handle_command`; the consumer is simulated by feeding
//! observed envelopes to `observe` and appending its result, as the
//! consumer loop does. No NATS is needed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gradeflow_eventstore::{AppendOutcome, InboxEntry, Store, StoreOptions};
use gradeflow_proto::events::{
    CollectiveDossierOpened, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    RecordRef, RuleWarning, UnitCompleted,
};
use gradeflow_proto::{
    Actor, CommandEnvelope, CommandId, CommandReply, CorrelationId, CycleId, DecisionId, DossierId,
    Envelope, EventId, Facts, Grade, OrgId, Rejection, Role, SubjectId,
};
use gradeflow_service::Workflow;
use gradeflow_submission_server::Submission;
use gradeflow_testkit::{fresh_pg, fresh_sqlite, SqliteFile};
use serde_json::{json, Value};

// ---------------------------------------------------------------- harness

/// One service over one fresh store, with the root registered.
struct World {
    svc: Submission,
    store: Store,
    url: String,
    _file: Option<SqliteFile>,
    root: OrgId,
}

impl World {
    async fn sqlite() -> World {
        let file = fresh_sqlite().unwrap();
        let url = file.url.clone();
        World::on(url, Some(file)).await
    }

    async fn on(url: String, file: Option<SqliteFile>) -> World {
        let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
        let svc = Submission::open(store.clone()).await.unwrap();
        let system = Actor {
            sub: "gradeflow".into(),
            role: Role::System,
            org: OrgId(uuid::Uuid::nil()),
        };
        let root = OrgId::new();
        let w = World {
            svc,
            store,
            url,
            _file: file,
            root,
        };
        w.ok(
            &system,
            "register_org.v1",
            json!({"id": root, "code": "TW", "name": "Trung ương", "tier": "central", "parent": null}),
        )
        .await;
        w
    }

    fn central(&self) -> Actor {
        actor(Role::Central, self.root)
    }

    async fn send(&self, actor: &Actor, kind: &str, payload: Value) -> CommandReply {
        self.svc
            .handle_command(envelope_of(actor, kind, payload))
            .await
    }

    async fn ok(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(self.send(actor, kind, payload).await)
    }

    /// Sends a command that must be refused with `code`, and checks that the
    /// store did not move.
    async fn refused(&self, actor: &Actor, kind: &str, payload: Value, code: &str) -> Rejection {
        let before = self.head().await;
        let reply = self.send(actor, kind, payload).await;
        let CommandReply::Rejected(r) = reply else {
            panic!("expected {code}, got {reply:?}");
        };
        assert_eq!(r.code, code, "{r:?}");
        assert!(!r.message.is_empty() && !r.message_vi.is_empty());
        assert_eq!(self.head().await, before, "a refusal must change nothing");
        r
    }

    async fn head(&self) -> i64 {
        self.store.head().await.unwrap().map_or(0, |(p, _)| p)
    }

    async fn org(&self, code: &str, tier: &str, parent: OrgId) -> OrgId {
        let c = self.central();
        let r = self
            .ok(
                &c,
                "register_org.v1",
                json!({"code": code, "name": format!("Tổ chức {code}"), "tier": tier, "parent": parent}),
            )
            .await;
        serde_json::from_value(r["id"].clone()).unwrap()
    }

    async fn cycle(&self) -> CycleId {
        let c = self.central();
        let r = self
            .ok(
                &c,
                "open_cycle.v1",
                json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                       "tiers": ["cell", "district", "province", "central"],
                       "deadlines": {"cell": "2026-12-15", "district": "2026-12-20"},
                       "quota": {"ratio": 0.2, "rounding": "floor"}}),
            )
            .await;
        serde_json::from_value(r["id"].clone()).unwrap()
    }

    async fn subject(&self, cycle: CycleId, org: OrgId, kind: &str) -> DossierId {
        let category = if kind == "collective" { "01" } else { "2B" };
        let r = self
            .ok(
                &actor(Role::Submitter, org),
                "register_subject.v1",
                json!({"cycle": cycle, "kind": kind, "org": org, "name": "Nguyễn Văn A",
                       "category": category}),
            )
            .await;
        assert_eq!(r["state"], "open");
        serde_json::from_value(r["dossier"].clone()).unwrap()
    }

    async fn query(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(self.send(actor, kind, payload).await)
    }

    async fn dossier(&self, id: DossierId) -> Value {
        self.query(&self.central(), "get_dossier.v1", json!({"dossier": id}))
            .await
    }

    /// Plays the consumer: records an observed event (and the reactions to
    /// it) the way the consumer loop appends them.
    async fn observe(&self, env: &Envelope) -> usize {
        let before = self.head().await;
        let inbox = InboxEntry {
            consumer: "submission-test".into(),
            message_id: env.event_id.to_string(),
            reply: None,
        };
        let outcome = self
            .svc
            .observe(env, inbox)
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        // A redelivered message is a duplicate of its first delivery.
        assert!(matches!(
            outcome,
            AppendOutcome::Appended(_) | AppendOutcome::Duplicate { .. }
        ));
        usize::try_from(self.head().await - before).unwrap()
    }
}

fn actor(role: Role, org: OrgId) -> Actor {
    Actor {
        sub: format!("{role:?}@{org}").to_lowercase(),
        role,
        org,
    }
}

fn envelope_of(actor: &Actor, kind: &str, payload: Value) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::new(),
        kind: kind.into(),
        actor: actor.clone(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        payload,
    }
}

fn accepted(reply: CommandReply) -> Value {
    match reply {
        CommandReply::Accepted { result, .. } => result,
        CommandReply::Rejected(r) => panic!("refused: {r:?}"),
    }
}

/// An event as another service would publish it.
fn published<E: Event>(stream: String, event: &E, actor: &Actor) -> Envelope {
    Envelope {
        event_id: EventId::new(),
        kind: E::KIND.into(),
        stream,
        version: 1,
        occurred_at: chrono::Utc::now(),
        actor: actor.clone(),
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: serde_json::to_value(event).unwrap(),
    }
}

fn self_review(dossier: DossierId) -> Value {
    json!({"dossier": dossier, "score": {"general": 27, "tasks": 60},
           "proposed_grade": "good",
           "tasks": {"total": 10, "on_time": 10, "exceeded": 2, "late": 0, "not_done": 0},
           "shortcomings_fixed": true, "report": "Hoàn thành tốt nhiệm vụ được giao"})
}

fn meeting(dossier: DossierId) -> Value {
    json!({"dossier": dossier, "proposed_grade": "good", "votes": {"good": 9, "completed": 1},
           "minutes": "Biên bản hội nghị"})
}

/// A province P01 with a district D01 and a cell C01, and a cycle.
struct Tree {
    province: OrgId,
    district: OrgId,
    cell: OrgId,
    cycle: CycleId,
}

async fn given_a_tree_and_a_cycle(w: &World) -> Tree {
    let province = w.org("P01", "province", w.root).await;
    let district = w.org("P01.D01", "district", province).await;
    let cell = w.org("P01.D01.C01", "cell", district).await;
    let cycle = w.cycle().await;
    Tree {
        province,
        district,
        cell,
        cycle,
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn a_member_dossier_goes_from_registration_through_self_review_and_meeting_to_reviewed() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);

    let d = w.subject(t.cycle, t.cell, "individual").await;
    let view = w.dossier(d).await;
    assert_eq!(view["state"], "open");
    assert_eq!(
        view["deciding_org"],
        json!(t.district),
        "a member is decided one tier up"
    );
    assert_eq!(view["quota_group"], "individuals");

    let work = w.query(&submitter, "worklist.v1", json!({})).await;
    assert_eq!(work["items"][0]["action"], "self_review");

    let r = w
        .ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    assert_eq!(r, json!({"state": "submitted"}));
    let work = w
        .query(&submitter, "worklist.v1", json!({"cycle": t.cycle}))
        .await;
    assert_eq!(work["items"][0]["action"], "meeting");

    let r = w.ok(&submitter, "record_meeting.v1", meeting(d)).await;
    assert_eq!(r, json!({"state": "reviewed"}));

    let view = w.dossier(d).await;
    assert_eq!(view["state"], "reviewed");
    assert_eq!(
        view["self_review"]["score"],
        json!({"general": 27.0, "tasks": 60.0})
    );
    assert_eq!(view["meeting"]["votes"]["good"], 9);
    let kinds: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "subject_registered.v1",
            "self_review_submitted.v1",
            "meeting_recorded.v1"
        ]
    );
    assert_eq!(view["history"][1]["actor"]["role"], "submitter");
    let work = w.query(&submitter, "worklist.v1", json!({})).await;
    assert_eq!(
        work["items"],
        json!([]),
        "nothing awaits the unit once reviewed"
    );

    // Events carry the actor, the correlation and the trace of the command.
    let stream = w.store.load_stream(&d.stream()).await.unwrap();
    assert_eq!(stream.len(), 3);
    assert_eq!(stream[1].metadata.actor, submitter);
    assert_eq!(stream[1].metadata.service, "submission");
    assert_eq!(stream[1].metadata.province.as_deref(), Some("P01"));
    assert!(stream[1].metadata.traceparent.is_some());
}

#[tokio::test]
async fn the_registry_answers_orgs_by_id_and_code_and_places_provinces() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let someone = actor(Role::Auditor, t.cell);
    let org = w
        .query(&someone, "get_org.v1", json!({"org": t.district}))
        .await;
    assert_eq!(org["code"], "P01.D01");
    assert_eq!(org["parent"], json!(t.province));
    assert_eq!(org["children"], json!([t.cell]));
    assert_eq!(org["province"], "P01");
    let found = w
        .query(&someone, "find_org.v1", json!({"code": "P01"}))
        .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], json!(t.province));
    let none = w
        .query(&someone, "find_org.v1", json!({"code": "P99"}))
        .await;
    assert_eq!(none, json!([]));
    let cycle = w
        .query(&someone, "get_cycle.v1", json!({"cycle": t.cycle}))
        .await;
    assert_eq!(cycle["rulebook"], "qd366-2025");
    assert_eq!(cycle["root"], json!(w.root));
    assert_eq!(cycle["quota"]["ratio"], 0.2);
}

#[tokio::test]
async fn renaming_moving_and_merging_reshape_the_tree_and_keep_the_merged_orgs() {
    let w = World::sqlite().await;
    let c = w.central();
    let p1 = w.org("P01", "province", w.root).await;
    let p2 = w.org("P02", "province", w.root).await;
    let d1 = w.org("P01.D01", "district", p1).await;
    let d2 = w.org("P02.D01", "district", p2).await;
    let cell = w.org("P02.D01.C01", "cell", d2).await;

    let r = w
        .ok(&c, "rename_org.v1", json!({"org": p1, "name": "Tỉnh Mới"}))
        .await;
    assert_eq!(r["name"], "Tỉnh Mới");

    w.refused(
        &c,
        "move_org.v1",
        json!({"org": d1, "parent": d2}),
        "bad_tier",
    )
    .await;
    w.refused(
        &c,
        "move_org.v1",
        json!({"org": d2, "parent": cell}),
        "invalid_input",
    )
    .await;
    w.ok(&c, "move_org.v1", json!({"org": d1, "parent": p2}))
        .await;
    let moved = w.query(&c, "get_org.v1", json!({"org": d1})).await;
    assert_eq!(moved["parent"], json!(p2));

    w.refused(
        &c,
        "merge_orgs.v1",
        json!({"from": [d2], "into": p1}),
        "bad_tier",
    )
    .await;
    let r = w
        .ok(&c, "merge_orgs.v1", json!({"from": [p2], "into": p1}))
        .await;
    let mut children: Vec<OrgId> = serde_json::from_value(r["children_moved"].clone()).unwrap();
    children.sort();
    let mut expected = vec![d1, d2];
    expected.sort();
    assert_eq!(children, expected, "every child of the merged org moves");
    let merged = w.query(&c, "get_org.v1", json!({"org": p2})).await;
    assert_eq!(merged["merged_into"], json!(p1));
    let survivor = w.query(&c, "get_org.v1", json!({"org": p1})).await;
    assert_eq!(survivor["children"].as_array().unwrap().len(), 2);
    w.refused(
        &c,
        "rename_org.v1",
        json!({"org": p2, "name": "x"}),
        "unknown_org",
    )
    .await;
}

#[tokio::test]
async fn every_refusal_names_its_code_and_leaves_the_store_unchanged() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let c = w.central();
    let submitter = actor(Role::Submitter, t.cell);
    let d = w.subject(t.cycle, t.cell, "individual").await;

    // Malformed payload: not an object, a missing field, an unknown field,
    // an unknown grade.
    w.refused(
        &submitter,
        "submit_self_review.v1",
        json!("oops"),
        "invalid_input",
    )
    .await;
    w.refused(
        &submitter,
        "submit_self_review.v1",
        json!({"dossier": d}),
        "invalid_input",
    )
    .await;
    let mut extra = self_review(d);
    extra["mood"] = json!("great");
    let r = w
        .refused(&submitter, "submit_self_review.v1", extra, "invalid_input")
        .await;
    assert!(r.message.contains("mood"), "{}", r.message);
    let mut grade = self_review(d);
    grade["proposed_grade"] = json!("outstanding");
    w.refused(&submitter, "submit_self_review.v1", grade, "invalid_input")
        .await;

    // Score out of range, missing under 366, inconsistent task counts.
    let mut score = self_review(d);
    score["score"]["general"] = json!(31);
    let r = w
        .refused(&submitter, "submit_self_review.v1", score, "invalid_input")
        .await;
    assert_eq!(r.details["field"], "score.general");
    let mut score = self_review(d);
    score["score"]["tasks"] = json!(-1);
    let r = w
        .refused(&submitter, "submit_self_review.v1", score, "invalid_input")
        .await;
    assert_eq!(r.details["field"], "score.tasks");
    let mut no_score = self_review(d);
    no_score.as_object_mut().unwrap().remove("score");
    let r = w
        .refused(
            &submitter,
            "submit_self_review.v1",
            no_score,
            "invalid_input",
        )
        .await;
    assert_eq!(r.details["field"], "score");
    let mut tasks = self_review(d);
    tasks["tasks"]["late"] = json!(3);
    let r = w
        .refused(&submitter, "submit_self_review.v1", tasks, "invalid_input")
        .await;
    assert_eq!(r.details["field"], "tasks");

    // Registry: wrong tier under a parent, duplicate code, unknown parent,
    // a second root.
    let r = w
        .refused(
            &c,
            "register_org.v1",
            json!({"code": "X1", "name": "x", "tier": "cell", "parent": t.province}),
            "bad_tier",
        )
        .await;
    assert_eq!(r.details["expected"], "district");
    let r = w
        .refused(
            &c,
            "register_org.v1",
            json!({"code": "P01.D01", "name": "x", "tier": "district", "parent": t.province}),
            "duplicate_code",
        )
        .await;
    assert_eq!(r.details["org"], json!(t.district));
    w.refused(
        &c,
        "register_org.v1",
        json!({"code": "X2", "name": "x", "tier": "district", "parent": OrgId::new()}),
        "unknown_org",
    )
    .await;
    w.refused(
        &c,
        "register_org.v1",
        json!({"code": "TW2", "name": "x", "tier": "central", "parent": null}),
        "conflict",
    )
    .await;

    // Out of scope: another province's submitter, and a submitter managing
    // orgs.
    let elsewhere = w.org("P02", "province", w.root).await;
    let stranger = actor(Role::Submitter, elsewhere);
    w.refused(
        &stranger,
        "submit_self_review.v1",
        self_review(d),
        "out_of_scope",
    )
    .await;
    w.refused(
        &submitter,
        "register_org.v1",
        json!({"code": "C9", "name": "x", "tier": "cell", "parent": t.district}),
        "out_of_scope",
    )
    .await;

    // Unknown ids and kinds.
    w.refused(
        &submitter,
        "submit_self_review.v1",
        self_review(DossierId::new()),
        "unknown_dossier",
    )
    .await;
    w.refused(
        &submitter,
        "register_subject.v1",
        json!({"cycle": CycleId::new(), "kind": "individual", "org": t.cell, "name": "A", "category": "2B"}),
        "unknown_cycle",
    )
    .await;
    w.refused(&submitter, "decide_batch.v1", json!({}), "invalid_input")
        .await;

    // Wrong state: the meeting before the self-review, the self-review twice.
    let r = w
        .refused(&submitter, "record_meeting.v1", meeting(d), "wrong_state")
        .await;
    assert_eq!(r.details["state"], "open");
    assert_eq!(r.details["action"], "record_meeting");
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    let r = w
        .refused(
            &submitter,
            "submit_self_review.v1",
            self_review(d),
            "wrong_state",
        )
        .await;
    assert_eq!(r.details["state"], "submitted");
    assert_eq!(r.details["action"], "file_self_review");
}

#[tokio::test]
async fn subjects_are_checked_for_form_uniqueness_and_whether_they_are_reviewed() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);
    let collective = w.subject(t.cycle, t.cell, "collective").await;
    let view = w.dossier(collective).await;
    assert_eq!(view["quota_group"], "collectives");
    assert_eq!(view["deciding_org"], json!(t.district));

    let again = json!({"cycle": t.cycle, "kind": "collective", "org": t.cell,
                       "name": "Chi bộ 1", "category": "01"});
    w.refused(
        &submitter,
        "register_subject.v1",
        again,
        "duplicate_subject",
    )
    .await;
    let wrong_form = json!({"cycle": t.cycle, "kind": "collective", "org": t.district,
                            "name": "Đảng bộ", "category": "2A"});
    let r = w
        .refused(
            &actor(Role::Submitter, t.district),
            "register_subject.v1",
            wrong_form,
            "invalid_input",
        )
        .await;
    assert_eq!(r.details["field"], "category");
    let wrong_form = json!({"cycle": t.cycle, "kind": "individual", "org": t.cell,
                            "name": "B", "category": "01"});
    w.refused(
        &submitter,
        "register_subject.v1",
        wrong_form,
        "invalid_input",
    )
    .await;

    let r = w
        .ok(
            &submitter,
            "register_subject.v1",
            json!({"cycle": t.cycle, "kind": "individual", "org": t.cell, "name": "C",
                   "category": "2B", "status": "new_member", "quota_group": "members"}),
        )
        .await;
    assert_eq!(r["state"], "not_reviewed");
    let d: DossierId = serde_json::from_value(r["dossier"].clone()).unwrap();
    assert_eq!(w.dossier(d).await["quota_group"], "members");
    let r = w
        .refused(
            &submitter,
            "submit_self_review.v1",
            self_review(d),
            "wrong_state",
        )
        .await;
    assert_eq!(r.details["reason"], "not_reviewed");

    // The root's own collective is decided at the root.
    let root_collective = w.subject(t.cycle, w.root, "collective").await;
    assert_eq!(
        w.dossier(root_collective).await["deciding_org"],
        json!(w.root)
    );
}

#[tokio::test]
async fn a_repeated_command_id_gets_the_first_answer_and_appends_nothing() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);
    let cmd = envelope_of(
        &submitter,
        "register_subject.v1",
        json!({"cycle": t.cycle, "kind": "individual", "org": t.cell, "name": "A", "category": "2B"}),
    );
    let first = w.svc.handle_command(cmd.clone()).await;
    let CommandReply::Accepted { event_ids, result } = &first else {
        panic!("{first:?}");
    };
    assert_eq!(event_ids.len(), 1);
    let head = w.head().await;
    let second = w.svc.handle_command(cmd).await;
    assert_eq!(
        second,
        CommandReply::Accepted {
            event_ids: vec![],
            result: result.clone()
        }
    );
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn a_returned_dossier_is_filed_again_reviewed_again_and_appraised() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);
    let appraiser = actor(Role::Appraiser, t.district);
    let d = w.subject(t.cycle, t.cell, "individual").await;
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    w.ok(&submitter, "record_meeting.v1", meeting(d)).await;

    let returned = DossierReturned {
        dossier: d,
        reason: "Thiếu biên bản".into(),
    };
    assert_eq!(
        w.observe(&published(d.stream(), &returned, &appraiser))
            .await,
        1
    );
    let view = w.dossier(d).await;
    assert_eq!(view["state"], "returned");
    assert_eq!(view["returns"][0]["reason"], "Thiếu biên bản");
    let work = w.query(&submitter, "worklist.v1", json!({})).await;
    assert_eq!(work["items"][0]["action"], "self_review");

    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    let stream = w.store.load_stream(&d.stream()).await.unwrap();
    let last = stream.last().unwrap();
    assert_eq!(last.kind, "self_review_submitted.v1");
    assert_eq!(last.payload["resubmission"], true);
    w.ok(&submitter, "record_meeting.v1", meeting(d)).await;

    let appraised = DossierAppraised {
        dossier: d,
        recommended_grade: Grade::Good,
        facts: Facts::default(),
        notes: String::new(),
        warnings: vec![],
    };
    w.observe(&published(d.stream(), &appraised, &appraiser))
        .await;
    let decided = GradeDecided {
        decision: DecisionId::new(),
        dossier: d,
        subject: SubjectId::new(),
        cycle: t.cycle,
        authority: t.district,
        org: t.cell,
        grade: Grade::Good,
        quota_group: "individuals".into(),
        override_reason: None,
        record: RecordRef {
            seq: 1,
            hash: "ab".repeat(32),
            signature: "c2ln".into(),
            key_id: "k1".into(),
            prev_hash: None,
            at: None,
        },
        number: Some("12-QĐ/HU".into()),
    };
    w.observe(&published(
        "decision-log".into(),
        &decided,
        &actor(Role::Authority, t.district),
    ))
    .await;
    let view = w.dossier(d).await;
    assert_eq!(view["state"], "decided");
    assert_eq!(view["appraisal"]["recommended_grade"], "good");
    assert_eq!(view["decision"]["grade"], "good");
    let history: Vec<(&str, &str)> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            ("subject_registered.v1", "open"),
            ("self_review_submitted.v1", "submitted"),
            ("meeting_recorded.v1", "reviewed"),
            ("dossier_returned.v1", "returned"),
            ("self_review_submitted.v1", "submitted"),
            ("meeting_recorded.v1", "reviewed"),
            ("dossier_appraised.v1", "appraised"),
            ("grade_decided.v1", "decided"),
        ]
    );
    assert_eq!(view["history"][3]["service"], "appraisal");
}

/// P01 with districts D1 and D2 (a cell under each), P01's collective and a
/// member in each cell.
async fn given_a_province_with_two_districts(w: &World) -> (CycleId, OrgId, [OrgId; 2]) {
    let p = w.org("P01", "province", w.root).await;
    let d1 = w.org("P01.D01", "district", p).await;
    let d2 = w.org("P01.D02", "district", p).await;
    let c1 = w.org("P01.D01.C01", "cell", d1).await;
    let c2 = w.org("P01.D02.C01", "cell", d2).await;
    // A district with no subject in the cycle is not waited for.
    w.org("P01.D03", "district", p).await;
    let cycle = w.cycle().await;
    w.subject(cycle, c1, "individual").await;
    w.subject(cycle, c2, "individual").await;
    (cycle, p, [d1, d2])
}

fn completed(cycle: CycleId, org: OrgId) -> UnitCompleted {
    UnitCompleted {
        cycle,
        org,
        tier: gradeflow_proto::Tier::new("district"),
        dossiers: 1,
    }
}

#[tokio::test]
async fn the_parent_collective_opens_once_when_its_last_child_unit_completes() {
    let w = World::sqlite().await;
    let (cycle, p, [d1, d2]) = given_a_province_with_two_districts(&w).await;
    let collective = w.subject(cycle, p, "collective").await;
    let approval = actor(Role::Authority, p);

    let first = published(
        format!("unit-{cycle}-{d1}"),
        &completed(cycle, d1),
        &approval,
    );
    assert_eq!(
        w.observe(&first).await,
        1,
        "only the copy: D2 is still open"
    );
    assert!(w.dossier(collective).await["opened_for_decision"].is_null());

    let last = published(
        format!("unit-{cycle}-{d2}"),
        &completed(cycle, d2),
        &approval,
    );
    assert_eq!(w.observe(&last).await, 2, "the copy and the opening");
    let stream = w.store.load_stream(&collective.stream()).await.unwrap();
    let opened: Vec<_> = stream
        .iter()
        .filter(|e| e.kind == CollectiveDossierOpened::KIND)
        .collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(
        opened[0].payload,
        json!({"cycle": cycle, "dossier": collective, "org": p})
    );
    assert_eq!(
        opened[0].metadata.causation_id,
        Some(last.event_id.as_uuid())
    );
    assert!(!w.dossier(collective).await["opened_for_decision"].is_null());

    // A redelivery appends nothing: the copy has a name-based id and the
    // collective is open already.
    assert_eq!(w.observe(&last).await, 0);
    assert_eq!(w.observe(&first).await, 0);
}

#[tokio::test]
async fn a_collective_registered_after_its_children_completed_opens_at_registration() {
    let w = World::sqlite().await;
    let (cycle, p, [d1, d2]) = given_a_province_with_two_districts(&w).await;
    let approval = actor(Role::Authority, p);
    for d in [d1, d2] {
        let env = published(format!("unit-{cycle}-{d}"), &completed(cycle, d), &approval);
        assert_eq!(w.observe(&env).await, 1, "no collective to open yet");
    }
    let collective = w.subject(cycle, p, "collective").await;
    let stream = w.store.load_stream(&collective.stream()).await.unwrap();
    let kinds: Vec<&str> = stream.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["subject_registered.v1", "collective_dossier_opened.v1"]
    );
}

#[tokio::test]
async fn a_service_reopened_on_its_store_answers_exactly_as_the_live_one() {
    let w = World::sqlite().await;
    let (cycle, p, [d1, d2]) = given_a_province_with_two_districts(&w).await;
    let collective = w.subject(cycle, p, "collective").await;
    let approval = actor(Role::Authority, p);
    for d in [d1, d2] {
        let env = published(format!("unit-{cycle}-{d}"), &completed(cycle, d), &approval);
        w.observe(&env).await;
    }
    let cells = w
        .query(&w.central(), "find_org.v1", json!({"code": "P01.D01.C01"}))
        .await;
    let cell: OrgId = serde_json::from_value(cells[0]["id"].clone()).unwrap();
    let member = w.subject(cycle, cell, "individual").await;
    let submitter = actor(Role::Submitter, p);
    w.ok(&submitter, "submit_self_review.v1", self_review(member))
        .await;

    let questions = [
        (
            w.central(),
            "get_dossier.v1",
            json!({"dossier": collective}),
        ),
        (w.central(), "get_dossier.v1", json!({"dossier": member})),
        (w.central(), "get_org.v1", json!({"org": p})),
        (w.central(), "get_cycle.v1", json!({"cycle": cycle})),
        (submitter.clone(), "worklist.v1", json!({})),
    ];
    let mut live = Vec::new();
    for (a, k, q) in &questions {
        live.push(w.query(a, k, q.clone()).await);
    }
    w.store.close().await;

    let store = Store::connect(&w.url, StoreOptions::default())
        .await
        .unwrap();
    let rebuilt = Submission::open(store).await.unwrap();
    for ((a, k, q), expected) in questions.iter().zip(live) {
        let answer = accepted(rebuilt.handle_command(envelope_of(a, k, q.clone())).await);
        assert_eq!(answer, expected, "{k} {q}");
    }
}

fn record(seq: u64) -> RecordRef {
    RecordRef {
        seq,
        hash: "ab".repeat(32),
        signature: "c2ln".into(),
        key_id: "k1".into(),
        prev_hash: None,
        at: None,
    }
}

/// A member's dossier through every step submission sees: filed, returned,
/// filed again, reviewed, appraised with a warning, graded and re-graded
/// (the grades observed on approval's `decision-log`, not the dossier's
/// stream).
async fn given_a_dossier_with_a_full_history(w: &World, t: &Tree) -> DossierId {
    let submitter = actor(Role::Submitter, t.cell);
    let appraiser = actor(Role::Appraiser, t.district);
    let authority = actor(Role::Authority, t.district);
    let d = w.subject(t.cycle, t.cell, "individual").await;
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    let returned = DossierReturned {
        dossier: d,
        reason: "Thiếu biên bản".into(),
    };
    w.observe(&published(d.stream(), &returned, &appraiser))
        .await;
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    w.ok(&submitter, "record_meeting.v1", meeting(d)).await;
    let appraised = DossierAppraised {
        dossier: d,
        recommended_grade: Grade::Good,
        facts: Facts::default(),
        notes: "Thẩm định".into(),
        warnings: vec![RuleWarning {
            rule: "quota".into(),
            message: "over the quota".into(),
            message_vi: "vượt tỷ lệ".into(),
        }],
    };
    w.observe(&published(d.stream(), &appraised, &appraiser))
        .await;
    let (first, second) = (DecisionId::new(), DecisionId::new());
    let decided = GradeDecided {
        decision: first,
        dossier: d,
        subject: SubjectId::new(),
        cycle: t.cycle,
        authority: t.district,
        org: t.cell,
        grade: Grade::Good,
        quota_group: "individuals".into(),
        override_reason: Some("giảm nhẹ".into()),
        record: record(1),
        number: Some("12-QĐ/HU".into()),
    };
    w.observe(&published("decision-log".into(), &decided, &authority))
        .await;
    let revised = GradeRevised {
        decision: second,
        dossier: d,
        subject: decided.subject,
        cycle: t.cycle,
        authority: t.district,
        previous_grade: Grade::Good,
        grade: Grade::Excellent,
        supersedes: 1,
        reason: "Xét lại".into(),
        record: record(2),
        number: None,
        override_reason: None,
    };
    w.observe(&published("decision-log".into(), &revised, &authority))
        .await;
    d
}

#[tokio::test]
async fn a_dossier_view_is_read_back_from_the_store_and_is_the_same_after_a_restart() {
    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let d = given_a_dossier_with_a_full_history(&w, &t).await;

    // The model keeps where the dossier's events are: every event about it,
    // on its own stream and on the decision log, and nothing else.
    let all = w.store.read_from(0, 10_000).await.unwrap();
    let about: Vec<i64> = all
        .iter()
        .filter(|e| e.payload.get("dossier") == Some(&json!(d)))
        .map(|e| e.position)
        .collect();
    assert_eq!(about.len(), 8);
    let kept = w
        .svc
        .engine()
        .read(|m| m.dossiers.get(&d).unwrap().events.to_vec())
        .await
        .unwrap();
    assert_eq!(kept, about);

    let live = w.dossier(d).await;
    assert_eq!(live["state"], "regraded");
    assert_eq!(live["returns"][0]["reason"], "Thiếu biên bản");
    assert_eq!(live["self_review"]["resubmission"], true);
    assert_eq!(live["appraisal"]["warnings"][0]["rule"], "quota");
    assert_eq!(live["decision"]["grade"], "excellent");
    assert_eq!(live["decision"]["override_reason"], "giảm nhẹ");
    assert_eq!(live["decision"]["revisions"][0]["reason"], "Xét lại");
    let history: Vec<(&str, &str)> = live["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            ("subject_registered.v1", "open"),
            ("self_review_submitted.v1", "submitted"),
            ("dossier_returned.v1", "returned"),
            ("self_review_submitted.v1", "submitted"),
            ("meeting_recorded.v1", "reviewed"),
            ("dossier_appraised.v1", "appraised"),
            ("grade_decided.v1", "decided"),
            ("grade_revised.v1", "regraded"),
        ]
    );
    for (entry, position) in live["history"].as_array().unwrap().iter().zip(&about) {
        let event = all.iter().find(|e| e.position == *position).unwrap();
        assert_eq!(entry["event_id"], json!(event.event_id));
        assert_eq!(entry["at"], json!(event.recorded_at));
    }

    w.store.close().await;
    let store = Store::connect(&w.url, StoreOptions::default())
        .await
        .unwrap();
    let restarted = Submission::open(store).await.unwrap();
    let again = accepted(
        restarted
            .handle_command(envelope_of(
                &w.central(),
                "get_dossier.v1",
                json!({"dossier": d}),
            ))
            .await,
    );
    assert_eq!(again, live);
}

#[tokio::test]
async fn a_dossier_view_whose_events_cannot_be_read_is_refused_as_unavailable() {
    use sqlx::Connection as _;

    let w = World::sqlite().await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);
    let d = w.subject(t.cycle, t.cell, "individual").await;
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    assert_eq!(w.dossier(d).await["state"], "submitted");

    // The stored self-review becomes unreadable (below the service: the
    // immutability trigger dropped, the payload overwritten).
    let filed = w.store.load_stream(&d.stream()).await.unwrap()[1].position;
    let mut db = sqlx::SqliteConnection::connect(&w.url).await.unwrap();
    sqlx::query(&format!(
        "DROP TRIGGER {}",
        gradeflow_eventstore::triggers::NO_UPDATE
    ))
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET payload = 'not json' WHERE position = $1")
        .bind(filed)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    let reply = w
        .send(&w.central(), "get_dossier.v1", json!({"dossier": d}))
        .await;
    let CommandReply::Rejected(r) = reply else {
        panic!("expected unavailable, got {reply:?}");
    };
    assert_eq!(r.code, "unavailable", "{r:?}");
    // What the model answers alone is still answered.
    let work = w.query(&submitter, "worklist.v1", json!({})).await;
    assert_eq!(work["items"][0]["action"], "meeting");
}

#[tokio::test]
async fn cycles_refuse_bad_settings_and_a_second_annual_review_of_a_year() {
    let w = World::sqlite().await;
    let c = w.central();
    let province = w.org("P01", "province", w.root).await;
    let base = json!({"year": 2026, "kind": "annual", "rulebook": "qd366-2025",
                      "tiers": ["cell", "district", "province", "central"],
                      "quota": {"ratio": 0.2}});
    let mut ratio = base.clone();
    ratio["quota"]["ratio"] = json!(0.3);
    let r = w.refused(&c, "open_cycle.v1", ratio, "invalid_input").await;
    assert_eq!(r.details["field"], "quota.ratio");
    let mut tiers = base.clone();
    tiers["tiers"] = json!(["cell", "cell", "central"]);
    w.refused(&c, "open_cycle.v1", tiers, "invalid_input").await;
    let mut deadlines = base.clone();
    deadlines["deadlines"] = json!({"ward": "2026-12-01"});
    w.refused(&c, "open_cycle.v1", deadlines, "invalid_input")
        .await;
    let mut rulebook = base.clone();
    rulebook["rulebook"] = json!("qd999");
    w.refused(&c, "open_cycle.v1", rulebook, "invalid_input")
        .await;
    w.refused(
        &actor(Role::Central, province),
        "open_cycle.v1",
        base.clone(),
        "out_of_scope",
    )
    .await;

    let first = w.ok(&c, "open_cycle.v1", base.clone()).await;
    let again = w.ok(&c, "open_cycle.v1", base.clone()).await;
    assert_eq!(
        first, again,
        "the same annual review opened twice is one cycle"
    );
    let mut other = base;
    other["quota"]["ratio"] = json!(0.25);
    w.refused(&c, "open_cycle.v1", other, "conflict").await;
}

#[tokio::test]
async fn the_flow_runs_the_same_on_postgresql() {
    let pg = fresh_pg().await.unwrap();
    let w = World::on(pg.url.clone(), None).await;
    let t = given_a_tree_and_a_cycle(&w).await;
    let submitter = actor(Role::Submitter, t.cell);
    let d = w.subject(t.cycle, t.cell, "individual").await;
    w.ok(&submitter, "submit_self_review.v1", self_review(d))
        .await;
    w.refused(
        &submitter,
        "submit_self_review.v1",
        self_review(d),
        "wrong_state",
    )
    .await;
    w.ok(&submitter, "record_meeting.v1", meeting(d)).await;
    assert_eq!(w.dossier(d).await["state"], "reviewed");
    let votes: BTreeMap<String, u32> =
        serde_json::from_value(w.dossier(d).await["meeting"]["votes"].clone()).unwrap();
    assert_eq!(votes["good"], 9);
    w.store.close().await;
    pg.drop_db().await.unwrap();
}
