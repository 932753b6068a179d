//! Integration tests of the approval service: a real event store (a fresh
//! SQLite file per test, PostgreSQL for the flow that must prove it), the
//! submission and appraisal facts fed in as observed envelopes exactly as
//! the consumer loop records them (`Workflow::observe` + an append with an
//! inbox entry), and commands answered through `Workflow::handle_command`.
//! No NATS: the wiring is the lead's and is tested there.
//!
//! Given / when / then; the names read as sentences.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::Utc;
use gradeflow_approval_server::queries::{self, AuditDecisionsQuery};
use gradeflow_approval_server::record::{
    record_hash, verify_chain, ChainCheck, DECISION_LOG_STREAM,
};
use gradeflow_approval_server::{audit_record, verify_record, Approval, KeyRing};
use gradeflow_eventstore::{AppendOutcome, InboxEntry, Store, StoreOptions, StoredEvent};
use gradeflow_proto::commands::{BatchGrade, Command, DecideBatch, DecisionKind};
use gradeflow_proto::events::{
    CycleOpened, DecisionLogRecord, DossierAppraised, DossierReturned, Event, GradeDecided,
    GradeRevised, OrgRegistered, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::*;
use gradeflow_service::Workflow;
use serde_json::{json, Value};

// ---------------------------------------------------------------- given

/// A hierarchy TW → P01 → D01 → {C01, C02} with an open 2026 cycle under
/// `qd366-2025`: six members in C01, three in C02, a collective dossier for
/// every org, and the actors who decide at each level.
struct World {
    approval: Approval,
    store: Store,
    _db: Option<gradeflow_testkit::SqliteFile>,
    cycle: CycleId,
    tw: OrgId,
    p01: OrgId,
    d01: OrgId,
    c01: OrgId,
    c02: OrgId,
    p02: OrgId,
    /// Members of C01 (decided by D01).
    c01_members: Vec<DossierId>,
    /// Members of C02 (decided by D01).
    c02_members: Vec<DossierId>,
    /// Collective dossier per org.
    collective: BTreeMap<OrgId, DossierId>,
}

fn system() -> Actor {
    Actor {
        sub: "gradeflow".into(),
        role: Role::System,
        org: OrgId(uuid::Uuid::nil()),
    }
}

fn authority(org: OrgId) -> Actor {
    Actor {
        sub: format!("authority-{org}"),
        role: Role::Authority,
        org,
    }
}

impl World {
    async fn sqlite() -> World {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        let mut w = World::given(store, KeyRing::ephemeral().unwrap()).await;
        w._db = Some(db);
        w
    }

    async fn given(store: Store, keys: KeyRing) -> World {
        let approval = Approval::open(store.clone(), keys).await.unwrap();
        let mut w = World {
            approval,
            store,
            _db: None,
            cycle: CycleId::new(),
            tw: OrgId::new(),
            p01: OrgId::new(),
            d01: OrgId::new(),
            c01: OrgId::new(),
            c02: OrgId::new(),
            p02: OrgId::new(),
            c01_members: Vec::new(),
            c02_members: Vec::new(),
            collective: BTreeMap::new(),
        };
        let (tw, p01, d01, c01, c02, p02) = (w.tw, w.p01, w.d01, w.c01, w.c02, w.p02);
        w.org(tw, "TW", "central", None, None).await;
        w.org(p01, "P01", "province", Some(tw), Some("P01")).await;
        w.org(p02, "P02", "province", Some(tw), Some("P02")).await;
        w.org(d01, "P01.D01", "district", Some(p01), Some("P01"))
            .await;
        w.org(c01, "P01.D01.C01", "cell", Some(d01), Some("P01"))
            .await;
        w.org(c02, "P01.D01.C02", "cell", Some(d01), Some("P01"))
            .await;
        w.observe(
            CycleOpened {
                cycle: w.cycle,
                year: 2026,
                kind: CycleKind::Annual,
                rulebook: RulebookId::Qd366_2025,
                tiers: Tiers::card(),
                deadlines: BTreeMap::new(),
                quota: QuotaSettings::default(),
                root: tw,
            },
            w.cycle.stream(),
        )
        .await;
        for i in 0..6 {
            let d = w
                .subject(
                    SubjectKind::Individual,
                    c01,
                    d01,
                    &format!("C01 member {i}"),
                    SubjectStatus::Active,
                )
                .await;
            w.c01_members.push(d);
        }
        for i in 0..3 {
            let d = w
                .subject(
                    SubjectKind::Individual,
                    c02,
                    d01,
                    &format!("C02 member {i}"),
                    SubjectStatus::Active,
                )
                .await;
            w.c02_members.push(d);
        }
        // Who decides a collective: the parent of its own org; the root's at
        // the root.
        for (org, decider) in [(c01, d01), (c02, d01), (d01, p01), (p01, tw), (tw, tw)] {
            let d = w
                .subject(
                    SubjectKind::Collective,
                    org,
                    decider,
                    "collective",
                    SubjectStatus::Active,
                )
                .await;
            w.collective.insert(org, d);
        }
        w
    }

    /// Records an event of another service as the consumer loop does: the
    /// copy and approval's reactions, with the inbox entry, in one append.
    async fn observe<E: Event>(&self, event: E, stream: String) {
        self.observe_in_trace(event, stream, None).await;
    }

    /// [`World::observe`] of an event recorded in the trace `traceparent`.
    async fn observe_in_trace<E: Event>(
        &self,
        event: E,
        stream: String,
        traceparent: Option<&str>,
    ) {
        let envelope = Envelope {
            event_id: EventId::new(),
            kind: E::KIND.to_owned(),
            stream,
            version: 1,
            occurred_at: Utc::now(),
            actor: system(),
            correlation_id: CorrelationId::new(),
            causation_id: None,
            traceparent: traceparent.map(str::to_owned),
            payload: serde_json::to_value(&event).unwrap(),
        };
        assert!(self.approval.observes(&envelope.kind), "{}", envelope.kind);
        let inbox = InboxEntry {
            consumer: "approval-test".into(),
            message_id: envelope.event_id.to_string(),
            reply: None,
        };
        let outcome = self
            .approval
            .observe(&envelope, inbox)
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
    }

    async fn org(
        &self,
        org: OrgId,
        code: &str,
        tier: &str,
        parent: Option<OrgId>,
        province: Option<&str>,
    ) {
        let e = OrgRegistered {
            org,
            code: code.into(),
            name: code.into(),
            tier: Tier::new(tier),
            parent,
            province: province.map(str::to_owned),
        };
        self.observe(e, "registry".into()).await;
    }

    async fn subject(
        &self,
        kind: SubjectKind,
        org: OrgId,
        deciding_org: OrgId,
        name: &str,
        status: SubjectStatus,
    ) -> DossierId {
        let dossier = DossierId::new();
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle: self.cycle,
            org,
            deciding_org,
            kind,
            name: name.into(),
            category: match kind {
                SubjectKind::Individual => Category::Member2B,
                SubjectKind::Collective => Category::Collective01,
            },
            leader: false,
            status,
            quota_group: match kind {
                SubjectKind::Individual => "individuals".into(),
                SubjectKind::Collective => "collectives".into(),
            },
            state: if status.is_reviewed() {
                DossierState::Open
            } else {
                DossierState::NotReviewed
            },
        };
        self.observe(e, dossier.stream()).await;
        dossier
    }

    /// A self-review scoring 93 with every task on time and 3 of 10
    /// exceeded: every grade up to excellent is within band and conditions.
    async fn submit(&self, dossier: DossierId) {
        self.observe(self_review(dossier, Grade::Excellent), dossier.stream())
            .await;
    }

    async fn appraise_with(&self, dossier: DossierId, facts: Facts) {
        self.submit(dossier).await;
        let e = DossierAppraised {
            dossier,
            recommended_grade: Grade::Good,
            facts,
            notes: String::new(),
            warnings: Vec::new(),
        };
        self.observe(e, dossier.stream()).await;
    }

    async fn appraise(&self, dossiers: &[DossierId]) {
        for d in dossiers {
            self.appraise_with(*d, Facts::default()).await;
        }
    }

    fn command(&self, actor: &Actor, batch: &DecideBatch) -> CommandEnvelope {
        CommandEnvelope {
            command_id: CommandId::new(),
            kind: DecideBatch::KIND.into(),
            actor: actor.clone(),
            traceparent: None,
            payload: serde_json::to_value(batch).unwrap(),
        }
    }

    fn batch(&self, authority: OrgId, grades: Vec<BatchGrade>) -> DecideBatch {
        DecideBatch {
            cycle: self.cycle,
            authority,
            number: "12-QĐ/HU".into(),
            kind: DecisionKind::Decide,
            grades,
            quota_exception: None,
        }
    }

    /// `authority` decides `grades` in one batch.
    async fn decide(&self, authority_org: OrgId, grades: Vec<BatchGrade>) -> CommandReply {
        let batch = self.batch(authority_org, grades);
        self.approval
            .handle_command(self.command(&authority(authority_org), &batch))
            .await
    }

    async fn regrade(&self, authority_org: OrgId, grades: Vec<BatchGrade>) -> CommandReply {
        let mut batch = self.batch(authority_org, grades);
        batch.kind = DecisionKind::Regrade;
        batch.number = "03-QĐ/HU".into();
        self.approval
            .handle_command(self.command(&authority(authority_org), &batch))
            .await
    }

    async fn query(&self, actor: &Actor, kind: &str, payload: Value) -> CommandReply {
        self.approval
            .handle_command(CommandEnvelope {
                command_id: CommandId::new(),
                kind: kind.into(),
                actor: actor.clone(),
                traceparent: None,
                payload,
            })
            .await
    }

    async fn events(&self) -> Vec<StoredEvent> {
        self.store.read_from(0, 1_000_000).await.unwrap()
    }

    async fn events_of(&self, kind: &str) -> Vec<StoredEvent> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    async fn head(&self) -> Option<(i64, String)> {
        self.store.head().await.unwrap()
    }

    /// Decides the whole of cell `cell`: its members good (C01's first one
    /// excellent when `one_excellent`) and its collective good.
    async fn complete_cell(&self, cell: OrgId, members: &[DossierId]) {
        let collective = self.collective[&cell];
        self.appraise(members).await;
        self.appraise(&[collective]).await;
        let mut grades: Vec<BatchGrade> = members.iter().map(|d| grade(*d, Grade::Good)).collect();
        grades.push(grade(collective, Grade::Good));
        accepted(self.decide(self.d01, grades).await);
    }
}

fn grade(dossier: DossierId, grade: Grade) -> BatchGrade {
    BatchGrade {
        dossier,
        grade,
        override_reason: None,
        supersedes: None,
        reason: None,
    }
}

fn accepted(reply: CommandReply) -> Value {
    match reply {
        CommandReply::Accepted { result, .. } => result,
        CommandReply::Rejected(r) => panic!("expected acceptance, got {r:?}"),
    }
}

fn rejected(reply: CommandReply) -> Rejection {
    match reply {
        CommandReply::Rejected(r) => r,
        CommandReply::Accepted { result, .. } => panic!("expected a refusal, got {result}"),
    }
}

fn kinds(violations: &Value) -> Vec<String> {
    violations
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_owned())
        .collect()
}

/// The decision log and the events it was rebuilt from agree, the chain
/// links, and every signature verifies with the registry's public key.
async fn assert_log_verifies(w: &World) -> Vec<gradeflow_proto::events::DecisionLogRecord> {
    let log = w.approval.decision_log().await.unwrap();
    let keys = w.approval.keys().public_keys();
    let from_events: Vec<_> = w
        .events()
        .await
        .iter()
        .filter(|e| e.stream == DECISION_LOG_STREAM)
        .map(|e| {
            let r = audit_record(e).unwrap();
            assert_eq!(e.version, r.seq, "the stream version is the record's seq");
            r
        })
        .collect();
    assert_eq!(from_events, log);
    for r in &log {
        assert!(verify_record(r, &keys[&r.key_id]), "record {}", r.seq);
    }
    let report = w.approval.verify_log().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    log
}

// ------------------------------------------------------------ decisions

async fn a_batch_is_decided_and_recorded_with_contiguous_seq_chained_hashes_and_valid_signatures(
    w: World,
) {
    w.appraise(&w.c01_members).await;
    let mut grades: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    grades[0].grade = Grade::Excellent;

    let result = accepted(w.decide(w.d01, grades.clone()).await);

    let records = result["records"].as_array().unwrap();
    assert_eq!(records.len(), 6);
    assert!(result["id"].is_string());
    for (i, (r, g)) in records.iter().zip(&grades).enumerate() {
        assert_eq!(r["seq"], json!(i + 1));
        assert_eq!(r["dossier"], json!(g.dossier));
        assert_eq!(r["grade"], json!(g.grade));
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
        assert!(r["signature"].is_string());
    }
    let log = assert_log_verifies(&w).await;
    assert_eq!(log[0].prev_hash, "0".repeat(64));
    for pair in log.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    assert!(log
        .iter()
        .all(|r| r.number == "12-QĐ/HU" && r.authority == w.d01));
    assert_eq!(log[0].actor, authority(w.d01).sub);
    // One time for the whole batch.
    assert!(log.iter().all(|r| r.at == log[0].at));
    let decided = w.events_of(GradeDecided::KIND).await;
    assert_eq!(decided.len(), 6);
    assert!(decided.iter().all(|e| e.metadata.service == "approval"));
    assert_eq!(w.events_of("decision_recorded.v1").await.len(), 1);
    // The chain continues in the next batch.
    w.appraise(&w.c02_members[..1]).await;
    let next = accepted(
        w.decide(w.d01, vec![grade(w.c02_members[0], Grade::Good)])
            .await,
    );
    assert_eq!(next["records"][0]["seq"], json!(7));
    let log = assert_log_verifies(&w).await;
    assert_eq!(log[6].prev_hash, log[5].hash);
}

/// A self-review scoring 93 with every task on time and 3 of 10 exceeded,
/// proposing `grade`.
fn self_review(dossier: DossierId, grade: Grade) -> SelfReviewSubmitted {
    SelfReviewSubmitted {
        dossier,
        score: Some(Score {
            general: 28.0,
            tasks: 65.0,
        }),
        proposed_grade: grade,
        tasks: TaskCounts {
            total: 10,
            on_time: 10,
            exceeded: 3,
            late: 0,
            not_done: 0,
        },
        shortcomings_fixed: true,
        report: "Hoàn thành tốt nhiệm vụ".into(),
        resubmission: false,
    }
}

#[tokio::test]
async fn a_batch_is_decided_and_recorded_with_contiguous_seq_chained_hashes_and_valid_signatures_on_sqlite(
) {
    a_batch_is_decided_and_recorded_with_contiguous_seq_chained_hashes_and_valid_signatures(
        World::sqlite().await,
    )
    .await;
}

#[tokio::test]
async fn a_batch_is_decided_and_recorded_with_contiguous_seq_chained_hashes_and_valid_signatures_on_postgres(
) {
    let pg = gradeflow_testkit::fresh_pg().await.unwrap();
    let store = Store::connect(&pg.url, StoreOptions::default())
        .await
        .unwrap();
    let w = World::given(store.clone(), KeyRing::ephemeral().unwrap()).await;
    a_batch_is_decided_and_recorded_with_contiguous_seq_chained_hashes_and_valid_signatures(w)
        .await;
    store.close().await;
    pg.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_batch_over_the_quota_is_refused_with_the_violation_and_changes_nothing_then_the_corrected_batch_is_accepted(
) {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    // 2 excellent for 4 good: floor(0.2 × 4) = 0 allowed.
    let mut grades: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    grades[0].grade = Grade::Excellent;
    grades[1].grade = Grade::Excellent;
    let before = w.head().await;

    let refusal = rejected(w.decide(w.d01, grades.clone()).await);

    assert_eq!(refusal.code, "rule_violation");
    assert_eq!(ErrorCode::RuleViolation.http_status(), 422);
    assert!(!refusal.message_vi.is_empty());
    assert_eq!(
        refusal.details["violations"],
        json!([{"rule": "quota", "group": "individuals", "excellent": 2, "good": 4,
                "max_excellent": 0, "ratio": 0.2}])
    );
    assert_eq!(w.head().await, before, "a refused batch writes nothing");

    // Corrected: 1 excellent for 5 good.
    grades[1].grade = Grade::Good;
    accepted(w.decide(w.d01, grades).await);
    assert_eq!(w.approval.decision_log().await.unwrap().len(), 6);
}

#[tokio::test]
async fn earlier_decisions_of_the_authority_in_the_cycle_count_in_a_second_batch() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    w.appraise(&w.c02_members).await;
    // First batch: six good.
    let first: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, first).await);

    // Alone, 1 excellent for 1 good would break the quota; with the six
    // earlier goods it is 1 for 7, within floor(1.4) = 1.
    accepted(
        w.decide(
            w.d01,
            vec![
                grade(w.c02_members[0], Grade::Excellent),
                grade(w.c02_members[1], Grade::Good),
            ],
        )
        .await,
    );

    // A third excellent is now over: 2 for 7.
    let refusal = rejected(
        w.decide(w.d01, vec![grade(w.c02_members[2], Grade::Excellent)])
            .await,
    );
    assert_eq!(
        refusal.details["violations"],
        json!([{"rule": "quota", "group": "individuals", "excellent": 2, "good": 7,
                "max_excellent": 1, "ratio": 0.2}])
    );
}

#[tokio::test]
async fn a_hard_trigger_is_refused_without_an_override_reason_and_recorded_with_one() {
    let w = World::sqlite().await;
    let member = w.c01_members[0];
    let facts = Facts {
        discipline: Some(Discipline {
            level: DisciplineLevel::Reprimand,
            duty_related: true,
            previous_unit: false,
        }),
        ..Facts::default()
    };
    w.appraise_with(member, facts).await;

    let refusal = rejected(w.decide(w.d01, vec![grade(member, Grade::Good)]).await);
    assert_eq!(refusal.code, "rule_violation");
    assert_eq!(refusal.details["violations"][0]["rule"], "hard_trigger");
    assert_eq!(refusal.details["violations"][0]["trigger"], "discipline");
    assert_eq!(
        refusal.details["violations"][0]["dossier"],
        json!(member.to_string())
    );

    let mut overridden = grade(member, Grade::Good);
    overridden.override_reason = Some("Tự phát hiện và khắc phục kịp thời".into());
    accepted(w.decide(w.d01, vec![overridden]).await);

    let log = assert_log_verifies(&w).await;
    assert_eq!(
        log[0].override_reason.as_deref(),
        Some("Tự phát hiện và khắc phục kịp thời")
    );
    let event: GradeDecided =
        serde_json::from_value(w.events_of(GradeDecided::KIND).await[0].payload.clone()).unwrap();
    assert_eq!(event.override_reason, log[0].override_reason);
}

// ------------------------------------------------------------- ordering

#[tokio::test]
async fn a_collective_is_refused_as_not_ready_until_its_members_and_child_units_are_decided() {
    let w = World::sqlite().await;
    let c01 = w.collective[&w.c01];
    w.appraise(&w.c01_members).await;
    w.appraise(&[c01]).await;

    // The cell's collective before its members.
    let refusal = rejected(w.decide(w.d01, vec![grade(c01, Grade::Good)]).await);
    let violations = &refusal.details["violations"];
    assert_eq!(kinds(violations), ["not_ready"]);
    let waiting: Vec<&str> = violations[0]["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut members: Vec<String> = w.c01_members.iter().map(ToString::to_string).collect();
    members.sort();
    assert_eq!(waiting, members);

    // Members first, then the collective.
    let members: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, members).await);
    accepted(w.decide(w.d01, vec![grade(c01, Grade::Good)]).await);

    // The district's collective waits for its child unit C02.
    let d01 = w.collective[&w.d01];
    w.appraise(&[d01]).await;
    let refusal = rejected(w.decide(w.p01, vec![grade(d01, Grade::Good)]).await);
    assert_eq!(
        refusal.details["violations"],
        json!([{"rule": "not_ready", "dossier": d01.to_string(), "waiting_for": [w.c02.to_string()]}])
    );
    w.complete_cell(w.c02, &w.c02_members).await;
    accepted(w.decide(w.p01, vec![grade(d01, Grade::Good)]).await);
}

#[tokio::test]
async fn members_and_their_collective_may_be_decided_in_one_batch_and_the_unit_completes_exactly_once(
) {
    let w = World::sqlite().await;
    // Members and the collective in one document (members listed first).
    w.complete_cell(w.c01, &w.c01_members).await;

    let completed = w.events_of("unit_completed.v1").await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].stream, format!("unit-{}-{}", w.cycle, w.c01));
    assert_eq!(completed[0].payload["org"], json!(w.c01));
    assert_eq!(completed[0].payload["tier"], "cell");
    assert_eq!(completed[0].payload["dossiers"], 7);

    // A re-grade in the completed unit does not complete it again.
    let log = w.approval.decision_log().await.unwrap();
    let mut regrade = grade(w.c01_members[0], Grade::Completed);
    regrade.supersedes = Some(log[0].seq);
    regrade.reason = Some("Khiếu nại được xem xét lại".into());
    accepted(w.regrade(w.d01, vec![regrade]).await);
    assert_eq!(w.events_of("unit_completed.v1").await.len(), 1);
}

#[tokio::test]
async fn a_not_reviewed_subject_registered_last_completes_its_unit_once() {
    let w = World::sqlite().await;
    w.complete_cell(w.c01, &w.c01_members).await;
    assert_eq!(w.events_of("unit_completed.v1").await.len(), 1);
    // A settled dossier joining a complete unit completes nothing again.
    w.subject(
        SubjectKind::Individual,
        w.c01,
        w.d01,
        "suspended",
        SubjectStatus::Suspended,
    )
    .await;
    assert_eq!(w.events_of("unit_completed.v1").await.len(), 1);

    // A new cell whose member is decided before its collective is known;
    // the collective then arrives not reviewed: nothing is left open.
    let c03 = OrgId::new();
    w.org(c03, "P01.D01.C03", "cell", Some(w.d01), Some("P01"))
        .await;
    let member = w
        .subject(
            SubjectKind::Individual,
            c03,
            w.d01,
            "C03 member",
            SubjectStatus::Active,
        )
        .await;
    w.appraise(&[member]).await;
    accepted(w.decide(w.d01, vec![grade(member, Grade::Good)]).await);
    assert_eq!(w.events_of("unit_completed.v1").await.len(), 1);

    w.subject(
        SubjectKind::Collective,
        c03,
        w.d01,
        "C03",
        SubjectStatus::Exempt,
    )
    .await;

    let completed = w.events_of("unit_completed.v1").await;
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[1].payload["org"], json!(c03));
    assert_eq!(completed[1].payload["dossiers"], 2);
    // The reaction was appended with the copy of the registration.
    let events = w.events().await;
    let at = events
        .iter()
        .position(|e| e.event_id == completed[1].event_id)
        .unwrap();
    assert_eq!(events[at - 1].kind, SubjectRegistered::KIND);
}

#[tokio::test]
async fn the_cycle_completes_when_the_root_collective_is_decided() {
    let w = World::sqlite().await;
    w.complete_cell(w.c01, &w.c01_members).await;
    w.complete_cell(w.c02, &w.c02_members).await;
    let d01 = w.collective[&w.d01];
    let p01 = w.collective[&w.p01];
    let tw = w.collective[&w.tw];
    w.appraise(&[d01, p01, tw]).await;
    accepted(w.decide(w.p01, vec![grade(d01, Grade::Good)]).await);
    accepted(w.decide(w.tw, vec![grade(p01, Grade::Good)]).await);
    assert!(w.events_of("cycle_completed.v1").await.is_empty());

    accepted(w.decide(w.tw, vec![grade(tw, Grade::Good)]).await);

    let units: Vec<Value> = w
        .events_of("unit_completed.v1")
        .await
        .into_iter()
        .map(|e| e.payload["org"].clone())
        .collect();
    assert_eq!(
        units,
        [
            json!(w.c01),
            json!(w.c02),
            json!(w.d01),
            json!(w.p01),
            json!(w.tw)
        ]
    );
    let cycle = w.events_of("cycle_completed.v1").await;
    assert_eq!(cycle.len(), 1);
    assert_eq!(cycle[0].stream, w.cycle.stream());
    assert_eq!(cycle[0].payload["decided"], 6 + 1 + 3 + 1 + 3);
}

// ------------------------------------------------------------ re-grading

#[tokio::test]
async fn a_regrade_supersedes_the_current_record_and_keeps_the_old_one() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    let grades: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, grades).await);
    let member = w.c01_members[2];
    let old = w.approval.decision_log().await.unwrap()[2].clone();
    assert_eq!(old.dossier, member);

    // Reason required.
    let mut blank = grade(member, Grade::Excellent);
    blank.supersedes = Some(old.seq);
    blank.reason = Some("  ".into());
    assert_eq!(
        rejected(w.regrade(w.d01, vec![blank]).await).code,
        "invalid_input"
    );
    // A record that does not exist.
    let mut unknown = grade(member, Grade::Excellent);
    unknown.supersedes = Some(999);
    unknown.reason = Some("Khiếu nại".into());
    assert_eq!(
        rejected(w.regrade(w.d01, vec![unknown]).await).code,
        "unknown_record"
    );

    // Re-graded to excellent: 1 for 5 good once its own good stops counting.
    let mut up = grade(member, Grade::Excellent);
    up.supersedes = Some(old.seq);
    up.reason = Some("Khiếu nại được chấp nhận".into());
    let result = accepted(w.regrade(w.d01, vec![up.clone()]).await);
    assert_eq!(result["records"][0]["seq"], 7);

    let log = assert_log_verifies(&w).await;
    assert_eq!(log.len(), 7);
    assert_eq!(log[2], old, "the superseded record stays as it was");
    assert_eq!(log[6].supersedes, Some(old.seq));
    assert_eq!(log[6].reason.as_deref(), Some("Khiếu nại được chấp nhận"));
    let revised: GradeRevised =
        serde_json::from_value(w.events_of(GradeRevised::KIND).await[0].payload.clone()).unwrap();
    assert_eq!(revised.previous_grade, Grade::Good);
    assert_eq!(revised.grade, Grade::Excellent);
    assert_eq!(revised.supersedes, old.seq);

    // The superseded record cannot be superseded again.
    let refusal = rejected(w.regrade(w.d01, vec![up]).await);
    assert_eq!(refusal.code, "wrong_state");
    assert_eq!(refusal.details["current"], 7);
    // A first-grade decision of a re-graded dossier is the wrong state.
    let refusal = rejected(w.decide(w.d01, vec![grade(member, Grade::Good)]).await);
    assert_eq!(refusal.code, "wrong_state");
    assert_eq!(refusal.details["state"], "regraded");
}

// -------------------------------------------------------------- refusals

#[tokio::test]
async fn a_dossier_outside_the_authoritys_remit_is_refused() {
    let w = World::sqlite().await;
    let d01 = w.collective[&w.d01];
    w.appraise(&[d01]).await;
    // D01's own collective is decided by its parent, P01.
    let refusal = rejected(w.decide(w.d01, vec![grade(d01, Grade::Good)]).await);
    assert_eq!(refusal.code, "not_in_remit");
    assert_eq!(refusal.details["deciding_org"], json!(w.p01));
}

#[tokio::test]
async fn a_dossier_in_the_wrong_state_is_refused_with_details() {
    let w = World::sqlite().await;
    let member = w.c01_members[0];
    w.submit(member).await;
    let refusal = rejected(w.decide(w.d01, vec![grade(member, Grade::Good)]).await);
    assert_eq!(refusal.code, "wrong_state");
    assert_eq!(
        refusal.details,
        json!({"dossier": member, "state": "submitted", "expected": ["appraised"]})
    );
    // Appraised, then returned: wrong state again.
    w.appraise(&[member]).await;
    w.observe(
        DossierReturned {
            dossier: member,
            reason: "Thiếu biên bản".into(),
        },
        member.stream(),
    )
    .await;
    let refusal = rejected(w.decide(w.d01, vec![grade(member, Grade::Good)]).await);
    assert_eq!(refusal.details["state"], "returned");
}

#[tokio::test]
async fn unknown_ids_and_malformed_batches_are_refused() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members[..1]).await;
    let member = w.c01_members[0];
    let unknown = rejected(
        w.decide(w.d01, vec![grade(DossierId::new(), Grade::Good)])
            .await,
    );
    assert_eq!(unknown.code, "unknown_dossier");
    let twice = rejected(
        w.decide(
            w.d01,
            vec![grade(member, Grade::Good), grade(member, Grade::Good)],
        )
        .await,
    );
    assert_eq!(twice.code, "invalid_input");
    let mut batch = w.batch(w.d01, vec![grade(member, Grade::Good)]);
    batch.cycle = CycleId::new();
    let reply = w
        .approval
        .handle_command(w.command(&authority(w.d01), &batch))
        .await;
    assert_eq!(rejected(reply).code, "unknown_cycle");
}

#[tokio::test]
async fn an_actor_out_of_scope_is_refused() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members[..1]).await;
    let batch = w.batch(w.d01, vec![grade(w.c01_members[0], Grade::Good)]);
    let before = w.head().await;
    // An authority of another province.
    let reply = w
        .approval
        .handle_command(w.command(&authority(w.p02), &batch))
        .await;
    assert_eq!(rejected(reply).code, "out_of_scope");
    // A submitter of the very org.
    let submitter = Actor {
        role: Role::Submitter,
        ..authority(w.d01)
    };
    let reply = w
        .approval
        .handle_command(w.command(&submitter, &batch))
        .await;
    assert_eq!(rejected(reply).code, "out_of_scope");
    assert_eq!(w.head().await, before);
    // No key was created for an org nobody may decide for.
    assert!(w.approval.keys().public_keys().is_empty());
    // Central staff above may.
    let central = Actor {
        role: Role::Central,
        ..authority(w.tw)
    };
    accepted(w.approval.handle_command(w.command(&central, &batch)).await);
}

#[tokio::test]
async fn a_duplicate_command_id_returns_the_first_reply_without_new_events() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members[..2]).await;
    let batch = w.batch(
        w.d01,
        vec![
            grade(w.c01_members[0], Grade::Good),
            grade(w.c01_members[1], Grade::Good),
        ],
    );
    let command = w.command(&authority(w.d01), &batch);
    let first = w.approval.handle_command(command.clone()).await;
    let head = w.head().await;

    let second = w.approval.handle_command(command).await;

    let (
        CommandReply::Accepted {
            result: a,
            event_ids: ids_a,
        },
        CommandReply::Accepted {
            result: b,
            event_ids: ids_b,
        },
    ) = (first, second)
    else {
        panic!("both accepted");
    };
    assert_eq!(a, b);
    assert!(!ids_a.is_empty());
    assert!(ids_b.is_empty());
    assert_eq!(w.head().await, head);
    assert_eq!(w.approval.decision_log().await.unwrap().len(), 2);
}

// ----------------------------------------------------------------- audit

#[tokio::test]
async fn a_tampered_record_with_a_recomputed_hash_fails_signature_verification() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    let grades: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, grades).await);
    let mut log = w.approval.decision_log().await.unwrap();
    let keys = w.approval.keys().public_keys();

    log[3].grade = Grade::Excellent;
    log[3].hash = record_hash(&log[3]);

    assert!(!verify_record(&log[3], &keys[&log[3].key_id]));
    let report = verify_chain(&log, &w.approval.keys().trusted_keys().unwrap());
    assert!(!report.ok);
    assert_eq!(report.problems[0].seq, 4);
    assert!(report.problems[0].problem.contains("signature"));
    // Record 5 still names the original hash of record 4.
    assert_eq!(report.problems[1].seq, 5);
}

#[tokio::test]
async fn the_key_registry_survives_reopening_and_signatures_verify_with_the_stored_public_keys() {
    let db = gradeflow_testkit::fresh_sqlite().unwrap();
    let key_dir = db.dir.path().join("keys");
    let key_id = {
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        let w = World::given(store.clone(), KeyRing::open(&key_dir).unwrap()).await;
        w.appraise(&w.c01_members).await;
        let grades: Vec<BatchGrade> = w
            .c01_members
            .iter()
            .map(|d| grade(*d, Grade::Good))
            .collect();
        accepted(w.decide(w.d01, grades).await);
        w.appraise(&w.c02_members[..1]).await;
        let w2 = (w.cycle, w.d01, w.c02_members.clone());
        let log = w.approval.decision_log().await.unwrap();
        store.close().await;
        (log[0].key_id.clone(), w2)
    };
    let (key_id, (cycle, d01, c02_members)) = key_id;

    // A new process: the store replayed, the keys read from the directory.
    let store = Store::connect(&db.url, StoreOptions::default())
        .await
        .unwrap();
    let keys = KeyRing::open(&key_dir).unwrap();
    let registry: Value =
        serde_json::from_str(&std::fs::read_to_string(key_dir.join("registry.json")).unwrap())
            .unwrap();
    assert_eq!(registry[&key_id]["org"], json!(d01));
    let approval = Approval::open(store.clone(), keys.clone()).await.unwrap();
    let log = approval.decision_log().await.unwrap();
    assert_eq!(log.len(), 6);
    let public = keys.public_keys();
    assert!(log
        .iter()
        .all(|r| r.key_id == key_id && verify_record(r, &public[&key_id])));
    assert!(approval.verify_log().await.unwrap().ok);

    // The authority keeps signing with the same key.
    let batch = DecideBatch {
        cycle,
        authority: d01,
        number: "13-QĐ/HU".into(),
        kind: DecisionKind::Decide,
        grades: vec![grade(c02_members[0], Grade::Good)],
        quota_exception: None,
    };
    let reply = approval
        .handle_command(CommandEnvelope {
            command_id: CommandId::new(),
            kind: DecideBatch::KIND.into(),
            actor: authority(d01),
            traceparent: None,
            payload: serde_json::to_value(batch).unwrap(),
        })
        .await;
    let result = accepted(reply);
    assert_eq!(result["records"][0]["key_id"], json!(key_id));
    assert_eq!(keys.public_keys().len(), 1);
    store.close().await;
}

// --------------------------------------------------------------- queries

#[tokio::test]
async fn the_queries_list_the_worklist_with_readiness_and_quota_page_the_log_and_verify_it() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    w.appraise(&[w.collective[&w.c01]]).await;
    let grades: Vec<BatchGrade> = w.c01_members[..5]
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, grades).await);

    let list = accepted(
        w.query(&authority(w.d01), "worklist.v1", json!({"cycle": w.cycle}))
            .await,
    );
    let dossiers = list["dossiers"].as_array().unwrap();
    assert_eq!(dossiers.len(), 2, "{list}");
    let collective = dossiers.iter().find(|d| d["kind"] == "collective").unwrap();
    assert_eq!(collective["ready"], false);
    assert_eq!(
        collective["waiting_for"],
        json!([w.c01_members[5].to_string()])
    );
    let member = dossiers.iter().find(|d| d["kind"] == "individual").unwrap();
    assert_eq!(member["ready"], true);
    let quota = list["quota"].as_array().unwrap();
    let individuals = quota.iter().find(|q| q["group"] == "individuals").unwrap();
    assert_eq!(individuals["excellent"], 0);
    assert_eq!(individuals["good"], 5);
    assert_eq!(individuals["max_excellent"], 1);
    // Outside one's scope.
    let other = w
        .query(&authority(w.p02), "worklist.v1", json!({"org": w.d01}))
        .await;
    assert_eq!(rejected(other).code, "out_of_scope");

    let auditor = Actor {
        sub: "kiem.toan".into(),
        role: Role::Auditor,
        org: w.tw,
    };
    let page = accepted(
        w.query(
            &auditor,
            "audit_decisions.v1",
            json!({"cycle": w.cycle, "after": 1, "limit": 2}),
        )
        .await,
    );
    let records = page["records"].as_array().unwrap();
    assert_eq!(
        records.iter().map(|r| r["seq"].clone()).collect::<Vec<_>>(),
        [json!(2), json!(3)]
    );
    assert_eq!(page["next_after"], 3);
    for key in [
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
        assert!(records[0].get(key).is_some(), "missing {key}");
    }
    let last = accepted(
        w.query(&auditor, "audit_decisions.v1", json!({"after": 3}))
            .await,
    );
    assert_eq!(last["records"].as_array().unwrap().len(), 2);
    assert_eq!(last["next_after"], Value::Null);
    let denied = w
        .query(&authority(w.d01), "audit_decisions.v1", Value::Null)
        .await;
    assert_eq!(rejected(denied).code, "out_of_scope");

    let report = accepted(w.query(&auditor, "verify_log.v1", Value::Null).await);
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 5);
    let log = w.approval.decision_log().await.unwrap();
    assert_eq!(report["head"], json!(log[4].hash));
    assert_eq!(report["problems"], json!([]));
}

#[tokio::test]
async fn a_regrade_is_checked_against_the_quota_with_the_superseded_grade_replaced() {
    let w = World::sqlite().await;
    let members = &w.c01_members[..5];
    w.appraise(members).await;
    let grades: Vec<BatchGrade> = members.iter().map(|d| grade(*d, Grade::Good)).collect();
    accepted(w.decide(w.d01, grades).await);
    let first = w.approval.decision_log().await.unwrap()[0].clone();

    // Good → excellent leaves 4 good: floor(0.8) = 0 excellent allowed. Had
    // the old good still counted, 5 good would allow it.
    let mut up = grade(first.dossier, Grade::Excellent);
    up.supersedes = Some(first.seq);
    up.reason = Some("Khiếu nại".into());
    let refusal = rejected(w.regrade(w.d01, vec![up]).await);
    assert_eq!(
        refusal.details["violations"],
        json!([{"rule": "quota", "group": "individuals", "excellent": 1, "good": 4,
                "max_excellent": 0, "ratio": 0.2}])
    );
}

#[tokio::test]
async fn two_replicas_deciding_at_once_on_one_postgres_store_keep_one_gap_free_signed_chain() {
    let pg = gradeflow_testkit::fresh_pg().await.unwrap();
    let store = Store::connect(&pg.url, StoreOptions::default())
        .await
        .unwrap();
    let keys = KeyRing::ephemeral().unwrap();
    let w = World::given(store.clone(), keys.clone()).await;
    w.appraise(&w.c01_members).await;
    w.appraise(&w.c02_members).await;
    // A second process: its own store handle (writer) and engine, the same
    // database and key directory.
    let other_store = Store::connect(&pg.url, StoreOptions::default())
        .await
        .unwrap();
    let other = Approval::open(other_store.clone(), KeyRing::open(keys.dir()).unwrap())
        .await
        .unwrap();

    let one = w.batch(
        w.d01,
        w.c01_members
            .iter()
            .map(|d| grade(*d, Grade::Good))
            .collect(),
    );
    let two = w.batch(
        w.d01,
        w.c02_members
            .iter()
            .map(|d| grade(*d, Grade::Good))
            .collect(),
    );
    let (a, b) = tokio::join!(
        w.approval
            .handle_command(w.command(&authority(w.d01), &one)),
        other.handle_command(w.command(&authority(w.d01), &two)),
    );
    accepted(a);
    accepted(b);

    let log = assert_log_verifies(&w).await;
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<u64>>()
    );
    assert_eq!(other.decision_log().await.unwrap(), log);
    store.close().await;
    other_store.close().await;
    pg.drop_db().await.unwrap();
}

// ------------------------------------------------ the log, read from the store

/// The decision log as the store holds it: the record of every event of
/// the `decision-log` stream, in stream order.
async fn log_in_store(w: &World) -> Vec<DecisionLogRecord> {
    w.events()
        .await
        .iter()
        .filter(|e| e.stream == DECISION_LOG_STREAM)
        .map(|e| audit_record(e).unwrap())
        .collect()
}

/// The pages `audit_decisions.v1` answers, walked from the start by
/// following `next_after`, computed over the whole log in memory the way
/// the query always paged it: records after `after`, of `cycle`, whose
/// authority is in `scope` (`None`: everything), `limit` a page.
fn reference_pages(
    log: &[DecisionLogRecord],
    scope: Option<&[OrgId]>,
    cycle: Option<CycleId>,
    limit: usize,
) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let mut page: Vec<&DecisionLogRecord> = Vec::new();
        let mut more = false;
        for r in log.iter().filter(|r| r.seq > after) {
            if cycle.is_some_and(|c| c != r.cycle)
                || scope.is_some_and(|s| !s.contains(&r.authority))
            {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(r);
        }
        let next = if more {
            page.last().map(|r| r.seq)
        } else {
            None
        };
        pages.push(json!({"records": page, "next_after": next}));
        match next {
            Some(n) => after = n,
            None => return pages,
        }
    }
}

/// The pages `approval` answers to `actor`, walked from the start: through
/// the service's command path when `read` is `None`, else through the
/// query reading `read` events of the stream at a time.
async fn walk_pages(
    approval: &Approval,
    actor: &Actor,
    cycle: Option<CycleId>,
    limit: usize,
    read: Option<usize>,
) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let query = AuditDecisionsQuery {
            cycle,
            after,
            limit: Some(limit),
        };
        let page = match read {
            None => accepted(
                approval
                    .handle_command(CommandEnvelope {
                        command_id: CommandId::new(),
                        kind: "audit_decisions.v1".into(),
                        actor: actor.clone(),
                        traceparent: None,
                        payload: serde_json::to_value(&query).unwrap(),
                    })
                    .await,
            ),
            Some(read) => queries::audit_decisions(approval.engine(), actor, &query, read)
                .await
                .unwrap()
                .unwrap(),
        };
        let next = page["next_after"].as_u64();
        pages.push(page);
        match next {
            Some(n) => after = n,
            None => return pages,
        }
        assert!(pages.len() < 100, "the pages never end");
    }
}

/// Sixteen records: C01's cell (7, by D01), three members of a second
/// cycle (by D01), C02's cell (4, by D01), D01's collective (by P01) and a
/// re-grade of C01's first member (by D01). Returns the second cycle.
async fn two_cycles_of_decisions(w: &World) -> CycleId {
    let second = CycleId::new();
    w.complete_cell(w.c01, &w.c01_members).await;
    w.observe(
        CycleOpened {
            cycle: second,
            year: 2027,
            kind: CycleKind::Annual,
            rulebook: RulebookId::Qd366_2025,
            tiers: Tiers::card(),
            deadlines: BTreeMap::new(),
            quota: QuotaSettings::default(),
            root: w.tw,
        },
        second.stream(),
    )
    .await;
    let mut members = Vec::new();
    for i in 0..3 {
        let dossier = DossierId::new();
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle: second,
            org: w.c02,
            deciding_org: w.d01,
            kind: SubjectKind::Individual,
            name: format!("C02 member {i}, 2027"),
            category: Category::Member2B,
            leader: false,
            status: SubjectStatus::Active,
            quota_group: "individuals".into(),
            state: DossierState::Open,
        };
        w.observe(e, dossier.stream()).await;
        members.push(dossier);
    }
    w.appraise(&members).await;
    let mut batch = w.batch(
        w.d01,
        members.iter().map(|d| grade(*d, Grade::Good)).collect(),
    );
    batch.cycle = second;
    accepted(
        w.approval
            .handle_command(w.command(&authority(w.d01), &batch))
            .await,
    );
    w.complete_cell(w.c02, &w.c02_members).await;
    let d01 = w.collective[&w.d01];
    w.appraise(&[d01]).await;
    accepted(w.decide(w.p01, vec![grade(d01, Grade::Good)]).await);
    let mut again = grade(w.c01_members[0], Grade::Completed);
    again.supersedes = Some(1);
    again.reason = Some("Khiếu nại được xem xét lại".into());
    accepted(w.regrade(w.d01, vec![again]).await);
    second
}

#[tokio::test]
async fn the_audit_pages_read_from_the_store_are_the_pages_of_the_whole_log_for_every_scope_cycle_and_size(
) {
    let w = World::sqlite().await;
    let second = two_cycles_of_decisions(&w).await;
    let log = log_in_store(&w).await;
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=16).collect::<Vec<u64>>()
    );
    let auditor = |org: OrgId| Actor {
        sub: "kiem.toan".into(),
        role: Role::Auditor,
        org,
    };
    let everything: Option<&[OrgId]> = None;
    let d01_scope = [w.d01, w.c01, w.c02];
    let p02_scope = [w.p02];
    let callers: [(Actor, Option<&[OrgId]>); 4] = [
        (system(), everything),
        (auditor(w.tw), everything),
        (auditor(w.d01), Some(&d01_scope)),
        (auditor(w.p02), Some(&p02_scope)),
    ];
    let restarted = Approval::open(
        w.store.clone(),
        KeyRing::open(w.approval.keys().dir()).unwrap(),
    )
    .await
    .unwrap();
    for (actor, scope) in &callers {
        for cycle in [None, Some(w.cycle), Some(second)] {
            for limit in [1, 2, 3, 5, 16, 100] {
                let expected = reference_pages(&log, *scope, cycle, limit);
                let case = format!(
                    "{} at {}, cycle {cycle:?}, limit {limit}",
                    actor.sub, actor.org
                );
                assert_eq!(
                    walk_pages(&w.approval, actor, cycle, limit, None).await,
                    expected,
                    "{case}"
                );
                assert_eq!(
                    walk_pages(&restarted, actor, cycle, limit, None).await,
                    expected,
                    "{case}, after a restart"
                );
                for read in [1, 2, 3, 7] {
                    assert_eq!(
                        walk_pages(&w.approval, actor, cycle, limit, Some(read)).await,
                        expected,
                        "{case}, {read} events read at a time"
                    );
                }
            }
        }
    }
    // A page may start anywhere, in scope or not, past the end too.
    for after in 0..=18 {
        let query = json!({"after": after, "limit": 2});
        let expected = {
            let rest: Vec<DecisionLogRecord> = log
                .iter()
                .filter(|r| r.seq > after && d01_scope.contains(&r.authority))
                .cloned()
                .collect();
            let next = (rest.len() > 2).then(|| rest[1].seq);
            json!({"records": rest.iter().take(2).collect::<Vec<_>>(), "next_after": next})
        };
        assert_eq!(
            accepted(w.query(&auditor(w.d01), "audit_decisions.v1", query).await),
            expected,
            "after {after}"
        );
    }
}

#[tokio::test]
async fn the_whole_log_and_its_verification_read_in_pages_equal_the_log_held_whole() {
    let w = World::sqlite().await;
    two_cycles_of_decisions(&w).await;
    let log = log_in_store(&w).await;
    let keys = w.approval.keys().trusted_keys().unwrap();
    let whole = verify_chain(&log, &keys);
    assert!(whole.ok, "{:?}", whole.problems);
    assert_eq!(
        (whole.records, whole.head.clone()),
        (16, log[15].hash.clone())
    );
    for page in [1, 2, 3, 5, 16, 17, 1_000] {
        assert_eq!(
            gradeflow_approval_server::log::read_all(&w.store, page)
                .await
                .unwrap(),
            log,
            "{page} a page"
        );
        let report = gradeflow_approval_server::log::verify(
            &w.store,
            || Ok::<_, gradeflow_eventstore::StoreError>(keys.clone()),
            page,
        )
        .await
        .unwrap();
        assert_eq!(report, whole, "{page} a page");
    }
    assert_eq!(w.approval.decision_log().await.unwrap(), log);
    assert_eq!(w.approval.verify_log().await.unwrap(), whole);

    // A record changed in the store: each page's check still sees the
    // record before it, whichever page it fell in.
    let mut forged = log.clone();
    forged[7].grade = Grade::Excellent;
    forged[7].hash = record_hash(&forged[7]);
    let broken = verify_chain(&forged, &keys);
    assert_eq!(
        broken.problems.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [8, 9]
    );
    let mut check = ChainCheck::new();
    for chunk in forged.chunks(8) {
        for r in chunk {
            check.record(r, &keys);
        }
    }
    assert_eq!(check.report(), broken);
}

#[tokio::test]
async fn a_regrade_of_an_unknown_or_superseded_record_is_refused_as_before_and_after_a_restart() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    let grades: Vec<BatchGrade> = w
        .c01_members
        .iter()
        .map(|d| grade(*d, Grade::Good))
        .collect();
    accepted(w.decide(w.d01, grades).await);
    let (member, other) = (w.c01_members[2], w.c01_members[4]);
    let mut up = grade(member, Grade::Excellent);
    up.supersedes = Some(3);
    up.reason = Some("Khiếu nại được chấp nhận".into());
    assert_eq!(
        accepted(w.regrade(w.d01, vec![up]).await)["records"][0]["seq"],
        7
    );

    let regrade = |supersedes: u64| {
        let mut g = grade(member, Grade::Good);
        g.supersedes = Some(supersedes);
        g.reason = Some("Xem xét lại".into());
        g
    };
    let unknown = |seq: u64| {
        json!({
            "code": "unknown_record",
            "message": format!("no decision-log record {seq}"),
            "message_vi": format!("Không có bản ghi quyết định số {seq}"),
            "details": {"supersedes": seq},
        })
    };
    let not_current = |seq: u64| {
        json!({
            "code": "wrong_state",
            "message": format!("record {seq} is not the current record of dossier {member} (current: 7)"),
            "message_vi": format!("Bản ghi {seq} không phải là bản ghi hiện hành của hồ sơ {member}; chỉ thay thế được bản ghi hiện hành"),
            "details": {"dossier": member, "supersedes": seq, "current": 7},
        })
    };
    let restarted = Approval::open(
        w.store.clone(),
        KeyRing::open(w.approval.keys().dir()).unwrap(),
    )
    .await
    .unwrap();
    for approval in [&w.approval, &restarted] {
        let refuse = |supersedes: u64| {
            let batch = DecideBatch {
                kind: DecisionKind::Regrade,
                number: "04-QĐ/HU".into(),
                ..w.batch(w.d01, vec![regrade(supersedes)])
            };
            let command = w.command(&authority(w.d01), &batch);
            async move {
                serde_json::to_value(rejected(approval.handle_command(command).await)).unwrap()
            }
        };
        // No record 0, none past the last.
        assert_eq!(refuse(0).await, unknown(0));
        assert_eq!(refuse(8).await, unknown(8));
        assert_eq!(refuse(999).await, unknown(999));
        // The record the re-grade superseded, and another dossier's record
        // (the current one of dossier `other`).
        assert_eq!(refuse(3).await, not_current(3));
        assert_eq!(refuse(5).await, not_current(5));
        assert_eq!(log_in_store(&w).await[4].dossier, other);
    }
    // The restarted service continues the chain where it stands.
    let mut down = regrade(7);
    down.grade = Grade::Good;
    let result = accepted(
        restarted
            .handle_command(w.command(
                &authority(w.d01),
                &DecideBatch {
                    kind: DecisionKind::Regrade,
                    number: "05-QĐ/HU".into(),
                    ..w.batch(w.d01, vec![down])
                },
            ))
            .await,
    );
    assert_eq!(result["records"][0]["seq"], 8);
    let report = restarted.verify_log().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.records, 8);
}

#[tokio::test]
async fn the_worklist_names_each_subject_as_last_registered_and_answers_the_same_after_a_restart() {
    let w = World::sqlite().await;
    w.appraise(&w.c01_members).await;
    // C01's second member registered again under a new name, then
    // appraised again (a registration starts the dossier afresh).
    let renamed = w.c01_members[1];
    let again = SubjectRegistered {
        subject: SubjectId::new(),
        dossier: renamed,
        cycle: w.cycle,
        org: w.c01,
        deciding_org: w.d01,
        kind: SubjectKind::Individual,
        name: "Nguyễn Thị Đổi Tên".into(),
        category: Category::Member2B,
        leader: false,
        status: SubjectStatus::Active,
        quota_group: "individuals".into(),
        state: DossierState::Open,
    };
    w.observe(again, renamed.stream()).await;
    w.appraise(&[renamed]).await;

    let ask = json!({"cycle": w.cycle});
    let list = accepted(w.query(&authority(w.d01), "worklist.v1", ask.clone()).await);
    let mut names: Vec<(String, String)> = list["dossiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dossier"].as_str().unwrap().to_owned(),
                d["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    names.sort();
    let mut expected: Vec<(String, String)> = w
        .c01_members
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let name = if *d == renamed {
                "Nguyễn Thị Đổi Tên".to_owned()
            } else {
                format!("C01 member {i}")
            };
            (d.to_string(), name)
        })
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    // The name sits where it always did in each entry.
    let keys: Vec<&String> = list["dossiers"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["dossier", "subject", "name"]);

    let restarted = Approval::open(
        w.store.clone(),
        KeyRing::open(w.approval.keys().dir()).unwrap(),
    )
    .await
    .unwrap();
    let again = accepted(
        restarted
            .handle_command(CommandEnvelope {
                command_id: CommandId::new(),
                kind: "worklist.v1".into(),
                actor: authority(w.d01),
                traceparent: None,
                payload: ask,
            })
            .await,
    );
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        serde_json::to_string(&list).unwrap()
    );
}

#[tokio::test]
async fn each_grade_continues_the_trace_of_its_dossiers_first_self_review_also_after_a_restart() {
    let w = World::sqlite().await;
    let traced = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    ];
    let members = &w.c01_members[..3];
    for (d, tp) in members.iter().zip(traced) {
        let e = self_review(*d, Grade::Good);
        // A later self-review in another trace does not move the dossier's.
        w.observe_in_trace(e.clone(), d.stream(), Some(tp)).await;
        w.observe_in_trace(
            e,
            d.stream(),
            Some("00-11111111111111111111111111111111-2222222222222222-01"),
        )
        .await;
    }
    w.appraise(&members[2..]).await;
    for d in &members[..2] {
        w.observe(
            DossierAppraised {
                dossier: *d,
                recommended_grade: Grade::Good,
                facts: Facts::default(),
                notes: String::new(),
                warnings: Vec::new(),
            },
            d.stream(),
        )
        .await;
    }
    let restarted = Approval::open(
        w.store.clone(),
        KeyRing::open(w.approval.keys().dir()).unwrap(),
    )
    .await
    .unwrap();
    let batch = w.batch(
        w.d01,
        members.iter().map(|d| grade(*d, Grade::Good)).collect(),
    );
    accepted(
        restarted
            .handle_command(w.command(&authority(w.d01), &batch))
            .await,
    );
    let grades = w.events_of(GradeDecided::KIND).await;
    assert_eq!(grades.len(), 3);
    for e in &grades {
        let dossier: DossierId = serde_json::from_value(e.payload["dossier"].clone()).unwrap();
        let tp = e.metadata.traceparent.as_deref();
        match members.iter().position(|m| *m == dossier) {
            Some(i) if i < 2 => {
                let (tp, first) = (tp.unwrap(), traced[i]);
                // The trace id and flags of the first self-review, a span
                // of its own.
                assert_eq!((&tp[..36], &tp[52..]), (&first[..36], &first[52..]), "{tp}");
                assert_ne!(&tp[36..52], &first[36..52]);
            }
            // No trace recorded: the command's own (here, none).
            _ => assert_eq!(tp, None),
        }
    }
}
