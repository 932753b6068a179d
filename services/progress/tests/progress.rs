//! Integration tests of the progress service against a real event store (a
//! fresh SQLite file per test, one test on PostgreSQL). The other services'
//! events are made here as envelopes and fed the way the consumer loop
//! feeds them: `Workflow::observe`, then one append with the inbox entry of
//! the message. No NATS is needed.
//!
//! The tree of most tests (tiers cell → district → province → central):
//!
//! ```text
//! TW ─┬─ P01 ── P01.D01 ─┬─ P01.D01.C01
//!     │                  ├─ P01.D01.C02
//!     │                  └─ P01.D01.C03 (no dossiers)
//!     └─ P02 ── P02.D01 ─── P02.D01.C01
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{NaiveDate, Utc};
use gradeflow_eventstore::{AppendOutcome, InboxEntry, Store, StoreOptions};
use gradeflow_progress::queries::{
    progress, ProgressNode, ProgressPageQuery, ProgressQuery, MAX_REPLY_BYTES,
};
use gradeflow_progress::report::{report, ReportQuery};
use gradeflow_progress::{
    assemble, report_csv, report_xlsx, touched, Progress, ProgressModel, Report,
};
use gradeflow_proto::commands::DecisionKind;
use gradeflow_proto::events::{
    CycleOpened, DecisionRecorded, DossierAppraised, DossierReturned, Event, GradeDecided,
    GradeRevised, MeetingRecorded, OrgMoved, OrgRegistered, OrgsMerged, RecordRef,
    SelfReviewSubmitted, SubjectRegistered, UnitCompleted,
};
use gradeflow_proto::{
    Actor, Category, CommandEnvelope, CommandId, CommandReply, CorrelationId, CycleId, CycleKind,
    DecisionId, DossierId, DossierState, Envelope, EventId, Facts, Grade, OrgId, QuotaSettings,
    Rejection, Role, RulebookId, SubjectId, SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
    TypedReply,
};
use gradeflow_service::spill::DEFAULT_CAPACITY;
use gradeflow_service::{Model, Reply, Workflow};
use gradeflow_testkit::{fresh_pg, fresh_sqlite, SqliteFile};
use serde_json::{json, Value};

// ---------------------------------------------------------------- harness

/// The progress service on its own store, the tree above, one open cycle,
/// and the registrations fed so far (to build later events from).
struct World {
    progress: Progress,
    store: Store,
    url: String,
    _file: Option<SqliteFile>,
    today: Arc<Mutex<NaiveDate>>,
    registered: Mutex<HashMap<DossierId, SubjectRegistered>>,
    seq: Mutex<u64>,
    root: OrgId,
    p1: OrgId,
    p2: OrgId,
    d1: OrgId,
    c1: OrgId,
    c2: OrgId,
    c3: OrgId,
    d2: OrgId,
    e1: OrgId,
    cycle: CycleId,
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

impl World {
    async fn sqlite() -> World {
        let file = fresh_sqlite().unwrap();
        let url = file.url.clone();
        World::on(url, Some(file)).await
    }

    async fn on(url: String, file: Option<SqliteFile>) -> World {
        let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
        let today = Arc::new(Mutex::new(date("2026-11-30")));
        let progress = open(&store, &today).await;
        let w = World {
            progress,
            store,
            url,
            _file: file,
            today,
            registered: Mutex::new(HashMap::new()),
            seq: Mutex::new(0),
            root: OrgId::new(),
            p1: OrgId::new(),
            p2: OrgId::new(),
            d1: OrgId::new(),
            c1: OrgId::new(),
            c2: OrgId::new(),
            c3: OrgId::new(),
            d2: OrgId::new(),
            e1: OrgId::new(),
            cycle: CycleId::new(),
        };
        for (org, code, tier, parent) in [
            (w.root, "TW", "central", None),
            (w.p1, "P01", "province", Some(w.root)),
            (w.p2, "P02", "province", Some(w.root)),
            (w.d1, "P01.D01", "district", Some(w.p1)),
            (w.c1, "P01.D01.C01", "cell", Some(w.d1)),
            (w.c2, "P01.D01.C02", "cell", Some(w.d1)),
            (w.c3, "P01.D01.C03", "cell", Some(w.d1)),
            (w.d2, "P02.D01", "district", Some(w.p2)),
            (w.e1, "P02.D01.C01", "cell", Some(w.d2)),
        ] {
            w.feed(
                "registry",
                &OrgRegistered {
                    org,
                    code: code.into(),
                    name: format!("Đảng bộ {code}"),
                    tier: Tier::new(tier),
                    parent,
                    province: None,
                },
            )
            .await;
        }
        let deadlines = [
            ("cell", "2026-12-15"),
            ("district", "2026-12-22"),
            ("province", "2026-12-31"),
            ("central", "2027-02-01"),
        ]
        .into_iter()
        .map(|(t, d)| (Tier::new(t), date(d)))
        .collect();
        w.feed(
            &w.cycle.stream(),
            &CycleOpened {
                cycle: w.cycle,
                year: 2026,
                kind: CycleKind::Annual,
                rulebook: RulebookId::Qd366_2025,
                tiers: Tiers::card(),
                deadlines,
                quota: QuotaSettings::default(),
                root: w.root,
            },
        )
        .await;
        w
    }

    /// Records one event of another service as the consumer loop does: the
    /// service builds the append, which commits with the message's inbox
    /// entry.
    async fn feed<E: Event>(&self, stream: &str, event: &E) -> Envelope {
        let envelope = envelope(stream, event);
        let inbox = InboxEntry {
            consumer: "progress".into(),
            message_id: envelope.event_id.to_string(),
            reply: None,
        };
        let outcome = self
            .progress
            .observe(&envelope, inbox)
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        match outcome {
            AppendOutcome::Appended(events) => {
                assert_eq!(events.len(), 1, "progress reacts to nothing: only the copy");
            }
            other => panic!("expected Appended, got {other:?}"),
        }
        envelope
    }

    /// Registers a subject; `status` other than active makes it not
    /// reviewed. A collective's org is the collective itself.
    async fn subject(
        &self,
        org: OrgId,
        deciding: OrgId,
        kind: SubjectKind,
        category: Category,
        status: SubjectStatus,
        name: &str,
    ) -> DossierId {
        let dossier = DossierId::new();
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle: self.cycle,
            org,
            deciding_org: deciding,
            kind,
            name: name.into(),
            category,
            leader: category == Category::Leader2A,
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
        self.registered.lock().unwrap().insert(dossier, e.clone());
        self.feed(&dossier.stream(), &e).await;
        dossier
    }

    async fn member(&self, cell: OrgId, deciding: OrgId, name: &str) -> DossierId {
        self.subject(
            cell,
            deciding,
            SubjectKind::Individual,
            Category::Member2B,
            SubjectStatus::Active,
            name,
        )
        .await
    }

    async fn self_review(&self, d: DossierId) -> Envelope {
        self.feed(
            &d.stream(),
            &SelfReviewSubmitted {
                dossier: d,
                score: None,
                proposed_grade: Grade::Good,
                tasks: TaskCounts {
                    total: 4,
                    on_time: 4,
                    ..TaskCounts::default()
                },
                shortcomings_fixed: true,
                report: "Báo cáo".into(),
                resubmission: false,
            },
        )
        .await
    }

    async fn meeting(&self, d: DossierId) {
        self.feed(
            &d.stream(),
            &MeetingRecorded {
                dossier: d,
                proposed_grade: Grade::Good,
                votes: BTreeMap::new(),
                minutes: "Biên bản".into(),
            },
        )
        .await;
    }

    async fn appraise(&self, d: DossierId) {
        self.feed(
            &d.stream(),
            &DossierAppraised {
                dossier: d,
                recommended_grade: Grade::Good,
                facts: Facts::default(),
                notes: String::new(),
                warnings: Vec::new(),
            },
        )
        .await;
    }

    async fn return_(&self, d: DossierId) {
        self.feed(
            &d.stream(),
            &DossierReturned {
                dossier: d,
                reason: "Thiếu biên bản".into(),
            },
        )
        .await;
    }

    fn next_seq(&self) -> u64 {
        let mut s = self.seq.lock().unwrap();
        *s += 1;
        *s
    }

    fn record(&self) -> RecordRef {
        RecordRef {
            seq: self.next_seq(),
            hash: "0".repeat(64),
            signature: String::new(),
            key_id: "k".into(),
            prev_hash: None,
            at: None,
        }
    }

    /// A decision document grading `grades` by the dossiers' deciding org.
    async fn decide(&self, number: &str, grades: &[(DossierId, Grade)]) -> DecisionId {
        let decision = DecisionId::new();
        let regs: Vec<SubjectRegistered> = {
            let r = self.registered.lock().unwrap();
            grades.iter().map(|(d, _)| r[d].clone()).collect()
        };
        self.feed(
            &decision.stream(),
            &DecisionRecorded {
                decision,
                cycle: self.cycle,
                authority: regs[0].deciding_org,
                number: number.into(),
                kind: DecisionKind::Decide,
                dossiers: grades.iter().map(|(d, _)| *d).collect(),
                quota_exception: None,
            },
        )
        .await;
        for ((d, grade), reg) in grades.iter().zip(regs) {
            self.feed(
                "decision-log",
                &GradeDecided {
                    decision,
                    dossier: *d,
                    subject: reg.subject,
                    cycle: self.cycle,
                    authority: reg.deciding_org,
                    org: reg.org,
                    grade: *grade,
                    quota_group: reg.quota_group,
                    override_reason: None,
                    record: self.record(),
                    // The number comes from the decision_recorded event.
                    number: None,
                },
            )
            .await;
        }
        decision
    }

    async fn regrade(&self, d: DossierId, from: Grade, to: Grade, number: &str) {
        let reg = self.registered.lock().unwrap()[&d].clone();
        self.feed(
            "decision-log",
            &GradeRevised {
                decision: DecisionId::new(),
                dossier: d,
                subject: reg.subject,
                cycle: self.cycle,
                authority: reg.deciding_org,
                previous_grade: from,
                grade: to,
                supersedes: 1,
                reason: "Khiếu nại được chấp nhận".into(),
                record: self.record(),
                number: Some(number.into()),
                override_reason: None,
            },
        )
        .await;
    }

    async fn unit_completed(&self, org: OrgId) {
        self.feed(
            &format!("unit-{}-{}", self.cycle, org.as_uuid()),
            &UnitCompleted {
                cycle: self.cycle,
                org,
                tier: Tier::new("cell"),
                dossiers: 0,
            },
        )
        .await;
    }

    /// Registers one more org under `parent`.
    async fn org(&self, code: &str, name: &str, tier: &str, parent: OrgId) -> OrgId {
        let org = OrgId::new();
        self.feed(
            "registry",
            &OrgRegistered {
                org,
                code: code.into(),
                name: name.into(),
                tier: Tier::new(tier),
                parent: Some(parent),
                province: None,
            },
        )
        .await;
        org
    }

    /// One `progress.v1` query by central, its answer or refusal.
    /// One `progress.v1` page by central, read as the portal and the
    /// benchmark read it: the bytes the command server sends, straight
    /// into a typed node.
    async fn ask(&self, q: ProgressPageQuery) -> Result<ProgressNode, Rejection> {
        let payload = serde_json::to_value(q).unwrap();
        let body = self.body(&self.central(), "progress.v1", payload).await;
        match TypedReply::from_slice(&body).unwrap() {
            TypedReply::Accepted { result, .. } => Ok(result),
            TypedReply::Rejected(r) => Err(r),
        }
    }

    /// The tree of `org` to `depth` as the model holds it, read in process
    /// (no reply budget), by central.
    async fn whole(&self, org: OrgId, depth: u32) -> Value {
        serde_json::to_value(self.whole_node(org, depth).await).unwrap()
    }

    /// [`World::whole`], typed.
    async fn whole_node(&self, org: OrgId, depth: u32) -> ProgressNode {
        let today = *self.today.lock().unwrap();
        let q = ProgressQuery {
            cycle: self.cycle,
            org: Some(org),
            depth: Some(depth),
        };
        let central = self.central();
        self.progress
            .engine()
            .read(|m| progress(m, &q, &central, today))
            .await
            .unwrap()
            .unwrap()
    }

    fn set_today(&self, d: &str) {
        *self.today.lock().unwrap() = date(d);
    }

    async fn send(&self, actor: &Actor, kind: &str, payload: Value) -> CommandReply {
        serde_json::from_slice(&self.body(actor, kind, payload).await).unwrap()
    }

    /// The reply's bytes as the command server sends them
    /// ([`Workflow::answer_command`]), checked to be those of
    /// [`Workflow::handle_command`]'s reply: a `progress.v1` answer encoded
    /// straight from its nodes is byte for byte the one through a value.
    async fn body(&self, actor: &Actor, kind: &str, payload: Value) -> Vec<u8> {
        let command = cmd(actor, kind, payload);
        let typed = self.progress.handle_command(command.clone()).await;
        let body = match self.progress.answer_command(command).await {
            Reply::Encoded(body) => body,
            Reply::Typed(reply) => serde_json::to_vec(&reply).unwrap(),
        };
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            serde_json::to_string(&typed).unwrap()
        );
        body
    }

    async fn ok(&self, actor: &Actor, kind: &str, payload: Value) -> Value {
        accepted(self.send(actor, kind, payload).await)
    }

    async fn refused(&self, actor: &Actor, kind: &str, payload: Value) -> Rejection {
        match self.send(actor, kind, payload).await {
            CommandReply::Rejected(r) => {
                assert!(!r.message.is_empty() && !r.message_vi.is_empty());
                r
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn central(&self) -> Actor {
        actor(Role::Central, self.root)
    }

    /// `progress.v1` of `org` to `depth`, read by central.
    async fn node(&self, org: OrgId, depth: u32) -> Value {
        self.ok(
            &self.central(),
            "progress.v1",
            json!({"cycle": self.cycle, "org": org, "depth": depth}),
        )
        .await
    }

    async fn totals(&self, org: OrgId) -> Value {
        self.node(org, 0).await["totals"].clone()
    }

    async fn report(&self, org: OrgId, offset: u64, limit: u64) -> Report {
        let v = self
            .ok(
                &self.central(),
                "report.v1",
                json!({"cycle": self.cycle, "org": org, "offset": offset, "limit": limit}),
            )
            .await;
        serde_json::from_value(v).unwrap()
    }
}

async fn open(store: &Store, today: &Arc<Mutex<NaiveDate>>) -> Progress {
    let t = Arc::clone(today);
    Progress::open(store.clone())
        .await
        .unwrap()
        .with_today(Arc::new(move || *t.lock().unwrap()))
}

fn envelope<E: Event>(stream: &str, event: &E) -> Envelope {
    Envelope {
        event_id: EventId::new(),
        kind: E::KIND.into(),
        stream: stream.into(),
        version: 1,
        occurred_at: Utc::now(),
        actor: actor(Role::System, OrgId(uuid::Uuid::nil())),
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: serde_json::to_value(event).unwrap(),
    }
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
        CommandReply::Accepted { event_ids, result } => {
            assert!(event_ids.is_empty(), "a query appends nothing");
            result
        }
        CommandReply::Rejected(r) => panic!("refused: {r:?}"),
    }
}

/// The dossiers of [`populated`], by name.
struct Cast {
    m: Vec<DossierId>,
    exempt: DossierId,
    collective: DossierId,
    a: DossierId,
    b: DossierId,
    e: DossierId,
}

/// A cycle in flight:
/// * C01: m0 submitted, m1 reviewed, m2 appraised, m3 returned, m4 (2A
///   leader) decided excellent, one exempt member, the cell's collective
///   open;
/// * C02: a decided not completed, b decided good then re-graded completed;
/// * P02.D01.C01: e open.
async fn populated(w: &World) -> Cast {
    let mut m = Vec::new();
    for i in 0..4 {
        m.push(w.member(w.c1, w.d1, &format!("Nguyễn Văn {i}")).await);
    }
    m.push(
        w.subject(
            w.c1,
            w.d1,
            SubjectKind::Individual,
            Category::Leader2A,
            SubjectStatus::Active,
            "Trần Thị Bí thư",
        )
        .await,
    );
    let exempt = w
        .subject(
            w.c1,
            w.d1,
            SubjectKind::Individual,
            Category::Member2B,
            SubjectStatus::Exempt,
            "Lê Văn Miễn",
        )
        .await;
    let collective = w
        .subject(
            w.c1,
            w.d1,
            SubjectKind::Collective,
            Category::Collective01,
            SubjectStatus::Active,
            "Chi bộ C01",
        )
        .await;
    let a = w.member(w.c2, w.d1, "Phạm Văn A").await;
    let b = w.member(w.c2, w.d1, "Hoàng Thị B").await;
    let e = w.member(w.e1, w.d2, "Đỗ Văn E").await;

    for d in &m {
        w.self_review(*d).await;
    }
    for d in &m[1..] {
        w.meeting(*d).await;
    }
    w.appraise(m[2]).await;
    w.return_(m[3]).await;
    w.appraise(m[4]).await;
    w.decide("12-QĐ/HU", &[(m[4], Grade::Excellent)]).await;
    for d in [a, b] {
        w.self_review(d).await;
        w.meeting(d).await;
        w.appraise(d).await;
    }
    w.decide("13-QĐ/HU", &[(a, Grade::NotCompleted), (b, Grade::Good)])
        .await;
    w.regrade(b, Grade::Good, Grade::Completed, "01-QĐ/HU")
        .await;
    Cast {
        m,
        exempt,
        collective,
        a,
        b,
        e,
    }
}

const COUNT_KEYS: [&str; 8] = [
    "subjects",
    "not_reviewed",
    "open",
    "submitted",
    "reviewed",
    "appraised",
    "returned",
    "decided",
];

fn counts(node: &Value) -> Vec<u64> {
    COUNT_KEYS
        .iter()
        .map(|k| node["totals"][k].as_u64().unwrap())
        .chain(
            ["excellent", "good", "completed", "not_completed"]
                .iter()
                .map(|g| node["grades"][g].as_u64().unwrap()),
        )
        .collect()
}

/// Every node with children (and no dossiers of its own, as in these
/// trees) counts exactly the sum of its children.
fn assert_rollups(node: &Value) -> usize {
    let children = node["children"].as_array().unwrap();
    if children.is_empty() {
        return 0;
    }
    let mut sum = vec![0; counts(node).len()];
    for c in children {
        for (s, n) in sum.iter_mut().zip(counts(c)) {
            *s += n;
        }
    }
    assert_eq!(counts(node), sum, "roll-up of {}", node["code"]);
    1 + children.iter().map(assert_rollups).sum::<usize>()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn every_step_of_a_dossier_moves_the_counts_of_its_whole_ancestor_path() {
    let w = World::sqlite().await;
    let d = w.member(w.c1, w.d1, "Nguyễn Văn A").await;
    let path = [w.c1, w.d1, w.p1, w.root];
    let state_of = |t: &Value| -> Vec<(String, u64)> {
        COUNT_KEYS
            .iter()
            .filter(|k| **k != "subjects")
            .filter_map(|k| {
                let n = t[k].as_u64().unwrap();
                (n > 0).then(|| (k.to_string(), n))
            })
            .collect()
    };
    let steps: [(&str, u8); 6] = [
        ("open", 0),
        ("submitted", 1),
        ("reviewed", 2),
        ("returned", 3),
        ("appraised", 4),
        ("decided", 5),
    ];
    for (expected, step) in steps {
        match step {
            0 => {}
            1 => {
                w.self_review(d).await;
            }
            2 => w.meeting(d).await,
            3 => w.return_(d).await,
            4 => {
                w.self_review(d).await;
                w.meeting(d).await;
                w.appraise(d).await;
            }
            _ => {
                w.decide("7-QĐ/HU", &[(d, Grade::Good)]).await;
            }
        }
        for org in path {
            let t = w.totals(org).await;
            assert_eq!(t["subjects"], 1);
            assert_eq!(state_of(&t), vec![(expected.to_owned(), 1)], "{expected}");
        }
        // Nothing leaks to the sibling province.
        assert_eq!(w.totals(w.p2).await["subjects"], 0);
    }
    w.regrade(d, Grade::Good, Grade::Excellent, "2-QĐ/HU").await;
    for org in path {
        let n = w.node(org, 0).await;
        assert_eq!(
            n["totals"]["decided"], 1,
            "a re-graded dossier stays decided"
        );
        assert_eq!(n["totals"]["regraded"], 1);
        assert_eq!(n["grades"]["excellent"], 1);
        assert_eq!(n["grades"]["good"], 0);
    }
}

#[tokio::test]
async fn the_node_has_the_api_shape_and_each_node_rolls_up_its_children() {
    let w = World::sqlite().await;
    populated(&w).await;
    let root = w.node(w.root, 3).await;
    for key in [
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
        assert!(root.get(key).is_some(), "missing {key}");
    }
    for key in COUNT_KEYS {
        assert!(root["totals"][key].is_u64(), "totals.{key}");
    }
    assert_eq!(root["code"], "TW");
    assert_eq!(root["tier"], "central");
    assert_eq!(root["deadline"], "2027-02-01");
    // 7 in C01, 2 in C02, 1 in P02.
    assert_eq!(root["totals"]["subjects"], 10);
    assert_eq!(root["totals"]["not_reviewed"], 1);
    assert_eq!(root["not_reviewed_reasons"]["exempt"], 1);
    assert_eq!(root["totals"]["open"], 2);
    assert_eq!(root["totals"]["submitted"], 1);
    assert_eq!(root["totals"]["reviewed"], 1);
    assert_eq!(root["totals"]["appraised"], 1);
    assert_eq!(root["totals"]["returned"], 1);
    assert_eq!(root["totals"]["decided"], 3);
    assert_eq!(
        root["grades"],
        json!({"not_completed": 1, "completed": 1, "good": 0, "excellent": 1})
    );
    let c1 = &root["children"][0]["children"][0]["children"][0];
    assert_eq!(c1["code"], "P01.D01.C01");
    assert_eq!(c1["totals"]["subjects"], 7);
    // Four levels: the root, provinces, districts and cells all roll up.
    assert_eq!(assert_rollups(&root), 1 + 2 + 2);
}

#[tokio::test]
async fn depth_limits_how_many_levels_of_children_come_back() {
    let w = World::sqlite().await;
    populated(&w).await;
    let deepest = |n: &Value| -> usize {
        fn go(n: &Value) -> usize {
            n["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| 1 + go(c))
                .max()
                .unwrap_or(0)
        }
        go(n)
    };
    assert_eq!(w.node(w.root, 0).await["children"], json!([]));
    for depth in 1..=3 {
        assert_eq!(deepest(&w.node(w.root, depth).await), depth as usize);
    }
    assert_eq!(
        deepest(&w.node(w.root, 9).await),
        3,
        "the tree ends at cells"
    );
    // Default depth 1, default org the cycle's root; children by code.
    let default = w
        .ok(&w.central(), "progress.v1", json!({"cycle": w.cycle}))
        .await;
    assert_eq!(default["org"], json!(w.root));
    let codes: Vec<&str> = default["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["P01", "P02"]);
    assert_eq!(deepest(&default), 1);
}

#[tokio::test]
async fn overdue_is_judged_against_each_tiers_deadline_on_the_given_day() {
    let w = World::sqlite().await;
    populated(&w).await;
    let overdue = |n: &Value| -> Vec<String> {
        fn go(n: &Value, out: &mut Vec<String>) {
            if n["overdue"] == true {
                out.push(n["code"].as_str().unwrap().to_owned());
            }
            for c in n["children"].as_array().unwrap() {
                go(c, out);
            }
        }
        let mut out = Vec::new();
        go(n, &mut out);
        out
    };
    w.set_today("2026-12-15");
    assert!(
        overdue(&w.node(w.root, 3).await).is_empty(),
        "on the day is in time"
    );

    w.set_today("2026-12-16");
    let tree = w.node(w.root, 3).await;
    // C02 is complete (every dossier settled); C03 has nothing at all yet.
    assert_eq!(
        overdue(&tree),
        ["P01.D01.C01", "P01.D01.C03", "P02.D01.C01"]
    );
    let c2 = &tree["children"][0]["children"][0]["children"][1];
    assert_eq!(
        (c2["complete"].clone(), c2["deadline"].clone()),
        (json!(true), json!("2026-12-15"))
    );

    // Approval announces the empty cell complete.
    w.unit_completed(w.c3).await;
    w.set_today("2026-12-23");
    assert_eq!(
        overdue(&w.node(w.root, 3).await),
        ["P01.D01", "P01.D01.C01", "P02.D01", "P02.D01.C01"]
    );
    let report = w.report(w.root, 0, 100).await;
    assert_eq!(report.overdue_by_tier[&Tier::new("cell")], 2);
    assert_eq!(report.overdue_by_tier[&Tier::new("district")], 2);
    assert_eq!(report.overdue_units.len(), 4);
    assert!(!report.overdue);
}

#[tokio::test]
async fn quota_groups_carry_the_allowed_excellent_of_each_deciding_authority() {
    let w = World::sqlite().await;
    // D01 grades 9 good + 1 excellent individuals (5 + 1 in C01, 4 in C02)
    // and C01's collective good; P02.D01 grades 4 good.
    let mut grades = Vec::new();
    for i in 0..6 {
        let d = w.member(w.c1, w.d1, &format!("C01 {i}")).await;
        grades.push((
            d,
            if i == 0 {
                Grade::Excellent
            } else {
                Grade::Good
            },
        ));
    }
    for i in 0..4 {
        grades.push((w.member(w.c2, w.d1, &format!("C02 {i}")).await, Grade::Good));
    }
    w.decide("20-QĐ/HU", &grades).await;
    let collective = w
        .subject(
            w.c1,
            w.d1,
            SubjectKind::Collective,
            Category::Collective01,
            SubjectStatus::Active,
            "Chi bộ C01",
        )
        .await;
    w.decide("21-QĐ/HU", &[(collective, Grade::Good)]).await;
    let mut p2 = Vec::new();
    for i in 0..4 {
        p2.push((w.member(w.e1, w.d2, &format!("P02 {i}")).await, Grade::Good));
    }
    w.decide("5-QĐ/HU", &p2).await;

    let group = |n: &Value, key: &str, g: &str| -> Value {
        n[key]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["group"] == g)
            .map(|q| json!([q["excellent"], q["good"], q["max_excellent"], q["over"]]))
            .unwrap_or(Value::Null)
    };
    let d1 = w.node(w.d1, 1).await;
    assert_eq!(
        group(&d1, "quota_groups", "individuals"),
        json!([1, 9, 1, false])
    );
    assert_eq!(
        group(&d1, "quota_groups", "collectives"),
        json!([0, 1, 0, false])
    );
    assert_eq!(
        group(&d1, "authority_quota_groups", "individuals"),
        json!([1, 9, 1, false])
    );
    // Below the authority, each cell's share: C01 floor(0.2 × 5) = 1, C02
    // floor(0.8) = 0.
    let c1 = &d1["children"][0];
    assert_eq!(
        group(c1, "quota_groups", "individuals"),
        json!([1, 5, 1, false])
    );
    assert_eq!(c1["authority_quota_groups"], json!([]));
    assert_eq!(
        group(&d1["children"][1], "quota_groups", "individuals"),
        json!([0, 4, 0, false])
    );
    // At the root the allowance is summed per authority (1 + 0), not
    // pooled (floor(0.2 × 13) = 2): each authority's quota is its own.
    let root = w.node(w.root, 0).await;
    assert_eq!(
        group(&root, "quota_groups", "individuals"),
        json!([1, 13, 1, false])
    );
    let report = w.report(w.root, 0, 100).await;
    let q = report
        .quota_groups
        .iter()
        .find(|q| q.counts.group == "individuals")
        .unwrap();
    assert_eq!(q.ratio_percent, Some(7.7));
}

#[tokio::test]
async fn many_concurrent_observers_leave_the_tree_equal_to_the_sum_of_the_dossiers_and_a_replay_rebuilds_it(
) {
    let w = Arc::new(World::sqlite().await);
    // 500 dossiers over the three cells of P01.D01 and P02's cell, four
    // events each (registration, self-review, meeting, then one of
    // appraised / returned / decided good / decided excellent): 2,000
    // events from 8 concurrent feeders, each feeding its dossiers in order.
    let cells = [w.c1, w.c2, w.c3, w.e1];
    let plan: Vec<(DossierId, OrgId, u8)> = (0..500)
        .map(|i| (DossierId::new(), cells[i % 4], (i / 4 % 4) as u8))
        .collect();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let w = Arc::clone(&w);
        let mine: Vec<_> = plan.iter().copied().skip(t).step_by(8).collect();
        tasks.push(tokio::spawn(async move {
            for (d, cell, end) in mine {
                let deciding = if cell == w.e1 { w.d2 } else { w.d1 };
                let reg = SubjectRegistered {
                    subject: SubjectId::new(),
                    dossier: d,
                    cycle: w.cycle,
                    org: cell,
                    deciding_org: deciding,
                    kind: SubjectKind::Individual,
                    name: format!("Đảng viên {d}"),
                    category: Category::Member2B,
                    leader: false,
                    status: SubjectStatus::Active,
                    quota_group: "individuals".into(),
                    state: DossierState::Open,
                };
                w.feed(&d.stream(), &reg).await;
                w.self_review(d).await;
                w.meeting(d).await;
                match end {
                    0 => w.appraise(d).await,
                    1 => w.return_(d).await,
                    g => {
                        let grade = if g == 2 {
                            Grade::Good
                        } else {
                            Grade::Excellent
                        };
                        w.feed(
                            "decision-log",
                            &GradeDecided {
                                decision: DecisionId::new(),
                                dossier: d,
                                subject: reg.subject,
                                cycle: w.cycle,
                                authority: deciding,
                                org: cell,
                                grade,
                                quota_group: "individuals".into(),
                                override_reason: None,
                                record: w.record(),
                                number: Some("1-QĐ".into()),
                            },
                        )
                        .await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // The expected counts, from the plan alone.
    let mut expected: HashMap<OrgId, [u64; 5]> = HashMap::new();
    for (_, cell, end) in &plan {
        expected.entry(*cell).or_default()[usize::from(*end)] += 1;
    }
    let tree = w.node(w.root, 3).await;
    assert_eq!(tree["totals"]["subjects"], 500);
    let find = |code: &str| -> Value {
        fn go(n: &Value, code: &str) -> Option<Value> {
            if n["code"] == code {
                return Some(n.clone());
            }
            n["children"].as_array()?.iter().find_map(|c| go(c, code))
        }
        go(&tree, code).unwrap()
    };
    for (cell, code) in [
        (w.c1, "P01.D01.C01"),
        (w.c2, "P01.D01.C02"),
        (w.c3, "P01.D01.C03"),
        (w.e1, "P02.D01.C01"),
    ] {
        let e = expected[&cell];
        let n = find(code);
        assert_eq!(n["totals"]["subjects"], e.iter().sum::<u64>(), "{code}");
        assert_eq!(n["totals"]["appraised"], e[0], "{code}");
        assert_eq!(n["totals"]["returned"], e[1], "{code}");
        assert_eq!(n["totals"]["decided"], e[2] + e[3], "{code}");
        assert_eq!(n["grades"]["good"], e[2], "{code}");
        assert_eq!(n["grades"]["excellent"], e[3], "{code}");
        assert_eq!(n["totals"]["open"], 0, "{code}");
    }
    assert_rollups(&tree);
    // The same from the model's own dossiers (every one under the root,
    // read through the units' lists).
    let (root, cycle) = (w.root, w.cycle);
    let by_state = w
        .progress
        .engine()
        .read(move |m| {
            let mut s: BTreeMap<String, u64> = BTreeMap::new();
            m.subtree_dossiers(cycle, root, |_, d| {
                *s.entry(d.state.code().to_owned()).or_default() += 1;
            });
            s
        })
        .await
        .unwrap();
    for (state, n) in &by_state {
        assert_eq!(tree["totals"][state], *n, "{state}");
    }

    // Rebuild: a fresh service on the same store replays it to the same
    // answer.
    let again = open(&w.store, &w.today).await;
    let reply = again
        .handle_command(cmd(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "depth": 3}),
        ))
        .await;
    assert_eq!(accepted(reply), tree);
}

#[tokio::test]
async fn the_report_lists_every_dossier_and_exports_csv_and_xlsx_in_vietnamese() {
    let w = World::sqlite().await;
    let cast = populated(&w).await;
    let report = w.report(w.d1, 0, 1_000).await;
    assert_eq!(report.code, "P01.D01");
    assert_eq!(report.page.total, 9);
    assert_eq!(report.page.next, None);
    let stt: Vec<u64> = report.rows.iter().map(|r| r.stt).collect();
    assert_eq!(stt, (1..=9).collect::<Vec<_>>());
    // C01's dossiers in registration order, then C02's.
    let order: Vec<DossierId> = report.rows.iter().map(|r| r.dossier).collect();
    let mut expected = cast.m.clone();
    expected.extend([cast.exempt, cast.collective, cast.a, cast.b]);
    assert_eq!(order, expected);
    assert!(!order.contains(&cast.e), "P02's dossier is outside P01.D01");

    let leader = &report.rows[4];
    assert_eq!(leader.grade, Some(Grade::Excellent));
    assert_eq!(leader.decision_number.as_deref(), Some("12-QĐ/HU"));
    assert_eq!(leader.unit_code, "P01.D01.C01");
    let names = |rows: &[gradeflow_progress::report::DossierRow]| -> Vec<DossierId> {
        rows.iter().map(|r| r.dossier).collect()
    };
    assert_eq!(names(&report.excellent), [cast.m[4]]);
    assert_eq!(names(&report.not_completed), [cast.a]);
    assert_eq!(names(&report.regraded), [cast.b]);
    assert_eq!(report.regraded[0].previous_grade, Some(Grade::Good));
    assert_eq!(report.regraded[0].grade, Some(Grade::Completed));
    assert_eq!(
        report.regraded[0].decision_number.as_deref(),
        Some("01-QĐ/HU")
    );
    assert_eq!(report.not_reviewed.exempt, 1);

    let seg = |code: &str| {
        report
            .segments
            .iter()
            .find(|s| s.segment.code() == code)
            .unwrap()
            .clone()
    };
    assert_eq!(seg("collectives").subjects, 1);
    assert_eq!(seg("individuals").subjects, 8);
    assert_eq!(seg("2A").grades[&Grade::Excellent], 1);
    assert_eq!(seg("leaders").graded, 1);
    assert_eq!(seg("2B").not_reviewed, 1);
    assert_eq!(seg("2B").graded, 2);
    assert_eq!(seg("2B").percent[&Grade::NotCompleted], 50.0);
    assert_eq!(report.percent[&Grade::Excellent], 33.3);

    // The JSON round-trips (the portal deserialises it).
    let back: Report = serde_json::from_value(serde_json::to_value(&report).unwrap()).unwrap();
    assert_eq!(back, report);

    let csv = report_csv(&report);
    assert!(csv.starts_with('\u{feff}'), "a BOM for Excel");
    let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(lines.len(), 1 + 9, "headings and one row per dossier");
    for heading in [
        "STT",
        "Họ và tên",
        "Đơn vị",
        "Mẫu",
        "Mức xếp loại",
        "Số quyết định",
    ] {
        assert!(lines[0].split(',').any(|h| h == heading), "{heading}");
    }
    assert!(lines[5].starts_with("5,Trần Thị Bí thư,Đảng bộ P01.D01.C01,"));
    assert!(
        lines[5].contains(",2A,x,Đã quyết định xếp loại,Hoàn thành xuất sắc nhiệm vụ,12-QĐ/HU,")
    );
    assert!(lines[6].contains("Không kiểm điểm: Được miễn công tác"));
    assert!(lines[9].contains("Xếp loại lại (trước: Hoàn thành tốt nhiệm vụ); lý do: Khiếu nại"));

    let xlsx = report_xlsx(&report).unwrap();
    assert!(xlsx.starts_with(b"PK"), "an XLSX is a ZIP");
    assert!(xlsx.len() > 2_000);
}

#[tokio::test]
async fn report_pages_number_rows_across_the_subtree_and_join_into_the_whole_list() {
    let w = World::sqlite().await;
    populated(&w).await;
    let whole = w.report(w.root, 0, 1_000).await;
    assert_eq!(whole.rows.len(), 10);
    let mut joined = w.report(w.root, 0, 4).await;
    assert_eq!(joined.page.next, Some(4));
    while let Some(next) = joined.page.next {
        let page = w.report(w.root, next, 4).await;
        assert_eq!(page.rows[0].stt, next + 1);
        joined.append_page(page);
    }
    assert_eq!(joined.rows, whole.rows);
    assert_eq!(joined.excellent, whole.excellent);
    assert_eq!(joined.regraded, whole.regraded);
    assert_eq!(report_csv(&joined), report_csv(&whole));
    // A page starting inside P02 skips P01's subtree whole.
    let last = w.report(w.root, 9, 4).await;
    assert_eq!(last.rows.len(), 1);
    assert_eq!(last.rows[0].unit_code, "P02.D01.C01");
    assert_eq!(last.page.next, None);
}

#[tokio::test]
async fn a_reader_sees_its_own_subtree_and_nothing_beside_it() {
    let w = World::sqlite().await;
    populated(&w).await;
    let p1 = actor(Role::Submitter, w.p1);
    let r = w
        .refused(&p1, "progress.v1", json!({"cycle": w.cycle, "org": w.p2}))
        .await;
    assert_eq!(r.code, "out_of_scope");
    let r = w
        .refused(&p1, "report.v1", json!({"cycle": w.cycle, "org": w.p2}))
        .await;
    assert_eq!(r.code, "out_of_scope");
    // The default org is the root: outside a province's scope too.
    let r = w
        .refused(&p1, "progress.v1", json!({"cycle": w.cycle}))
        .await;
    assert_eq!(r.code, "out_of_scope");
    let below = w
        .ok(&p1, "progress.v1", json!({"cycle": w.cycle, "org": w.d1}))
        .await;
    assert_eq!(below["totals"]["subjects"], 9);
    for role in [Role::Auditor, Role::Central, Role::Authority] {
        w.ok(
            &actor(role, w.root),
            "progress.v1",
            json!({"cycle": w.cycle, "org": w.p2}),
        )
        .await;
    }
    let r = w
        .refused(
            &w.central(),
            "progress.v1",
            json!({"cycle": CycleId::new()}),
        )
        .await;
    assert_eq!(r.code, "unknown_cycle");
    let r = w
        .refused(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "org": OrgId::new()}),
        )
        .await;
    assert_eq!(r.code, "unknown_org");
    let r = w
        .refused(
            &w.central(),
            "report.v1",
            json!({"cycle": w.cycle, "limit": 100_000}),
        )
        .await;
    assert_eq!(r.code, "invalid_input");
    let r = w
        .refused(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "dept": 2}),
        )
        .await;
    assert_eq!(r.code, "invalid_input");
    let r = w.refused(&w.central(), "decide_batch.v1", json!({})).await;
    assert_eq!(r.code, "invalid_input");
}

#[tokio::test]
async fn the_version_moves_with_every_committed_event_and_touched_names_the_path() {
    let w = World::sqlite().await;
    let cast = populated(&w).await;
    let version = |v: Value| (v["position"].as_i64().unwrap(), v["cycle_position"].clone());
    let before = version(
        w.ok(
            &w.central(),
            "progress_version.v1",
            json!({"cycle": w.cycle}),
        )
        .await,
    );
    assert_eq!(before.0, w.store.head().await.unwrap().unwrap().0);
    assert_eq!(before.1, json!(before.0), "the last event was this cycle's");

    let env = w.self_review(cast.e).await;
    let after = version(
        w.ok(
            &w.central(),
            "progress_version.v1",
            json!({"cycle": w.cycle}),
        )
        .await,
    );
    assert_eq!(after.0, before.0 + 1);
    assert_eq!(after.1, json!(after.0));
    let plain = w.ok(&w.central(), "progress_version.v1", json!({})).await;
    assert_eq!(plain, json!({"position": after.0}));
    // Another cycle's position does not move with this cycle's events.
    let other = CycleId::new();
    w.feed(
        &other.stream(),
        &CycleOpened {
            cycle: other,
            year: 2027,
            kind: CycleKind::Quarterly,
            rulebook: RulebookId::Qd366_2025,
            tiers: Tiers::card(),
            deadlines: BTreeMap::new(),
            quota: QuotaSettings::default(),
            root: w.root,
        },
    )
    .await;
    w.meeting(cast.e).await;
    let v = w
        .ok(&w.central(), "progress_version.v1", json!({"cycle": other}))
        .await;
    assert_eq!(v["cycle_position"], json!(after.0 + 1));
    assert_eq!(v["position"], json!(after.0 + 2));

    let nodes = w
        .progress
        .engine()
        .read(|m| touched(m, &env))
        .await
        .unwrap();
    assert_eq!(
        nodes,
        [
            (w.cycle, w.e1),
            (w.cycle, w.d2),
            (w.cycle, w.p2),
            (w.cycle, w.root)
        ]
    );
}

#[tokio::test]
async fn moves_and_merges_carry_a_subtrees_counts_to_its_new_ancestors() {
    let w = World::sqlite().await;
    populated(&w).await;
    // P02's own collective, decided at the root.
    let p2_collective = w
        .subject(
            w.p2,
            w.root,
            SubjectKind::Collective,
            Category::Collective01,
            SubjectStatus::Active,
            "Đảng bộ P02",
        )
        .await;
    assert_eq!(w.totals(w.p2).await["subjects"], 2);

    // P02.D01 (one open member) moves under P01.
    w.feed(
        "registry",
        &OrgMoved {
            org: w.d2,
            from_parent: w.p2,
            to_parent: w.p1,
        },
    )
    .await;
    assert_eq!(w.totals(w.p1).await["subjects"], 10);
    assert_eq!(w.totals(w.p2).await["subjects"], 1);
    let root = w.node(w.root, 3).await;
    assert_eq!(root["totals"]["subjects"], 11);
    assert_eq!(root["children"][0]["children"].as_array().unwrap().len(), 2);

    // P02 merges into P01: its own collective now counts there.
    w.feed(
        "registry",
        &OrgsMerged {
            from: vec![w.p2],
            into: w.p1,
            children_moved: Vec::new(),
        },
    )
    .await;
    let root = w.node(w.root, 1).await;
    assert_eq!(root["children"].as_array().unwrap().len(), 1);
    assert_eq!(root["children"][0]["totals"]["subjects"], 11);
    assert_eq!(root["totals"]["subjects"], 11);
    let report = w.report(w.p1, 0, 100).await;
    assert_eq!(report.rows.len(), 11);
    assert!(report.rows.iter().any(|r| r.dossier == p2_collective));
    // A later step of the merged org's dossier moves P01's counts.
    w.self_review(p2_collective).await;
    assert_eq!(w.totals(w.p1).await["submitted"], 2);
    assert_eq!(w.totals(w.p2).await["subjects"], 0);

    // And a replay folds the same reshaped tree.
    let again = open(&w.store, &w.today).await;
    let reply = again
        .handle_command(cmd(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "depth": 3}),
        ))
        .await;
    assert_eq!(accepted(reply), w.node(w.root, 3).await);
}

#[tokio::test]
async fn an_event_ahead_of_its_registration_is_applied_once_the_dossier_is_registered() {
    let w = World::sqlite().await;
    let d = DossierId::new();
    w.self_review(d).await;
    assert_eq!(w.totals(w.root).await["subjects"], 0);
    let reg = SubjectRegistered {
        subject: SubjectId::new(),
        dossier: d,
        cycle: w.cycle,
        org: w.c1,
        deciding_org: w.d1,
        kind: SubjectKind::Individual,
        name: "Muộn".into(),
        category: Category::Member2B,
        leader: false,
        status: SubjectStatus::Active,
        quota_group: "individuals".into(),
        state: DossierState::Open,
    };
    w.feed(&d.stream(), &reg).await;
    let t = w.totals(w.root).await;
    assert_eq!(
        (t["subjects"].clone(), t["submitted"].clone()),
        (json!(1), json!(1))
    );
    let again = open(&w.store, &w.today).await;
    let reply = again
        .handle_command(cmd(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "depth": 3}),
        ))
        .await;
    assert_eq!(accepted(reply), w.node(w.root, 3).await);
}

#[tokio::test]
async fn on_postgresql_the_tree_is_folded_and_rebuilt_the_same() {
    let db = fresh_pg().await.unwrap();
    {
        let w = World::on(db.url.clone(), None).await;
        populated(&w).await;
        w.set_today("2026-12-16");
        let tree = w.node(w.root, 3).await;
        assert_eq!(tree["totals"]["subjects"], 10);
        assert_eq!(tree["totals"]["decided"], 3);
        assert_rollups(&tree);
        let store = Store::connect(&w.url, StoreOptions::default())
            .await
            .unwrap();
        let again = open(&store, &w.today).await;
        let reply = again
            .handle_command(cmd(
                &w.central(),
                "progress.v1",
                json!({"cycle": w.cycle, "depth": 3}),
            ))
            .await;
        assert_eq!(accepted(reply), tree);
        store.close().await;
        w.store.close().await;
    }
    db.drop_db().await.unwrap();
}

fn codes(node: &Value) -> Vec<String> {
    node["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect()
}

fn truncated(node: &Value) -> bool {
    node["children_truncated"] == json!(true)
}

fn node_count(node: &Value) -> usize {
    1 + node["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(node_count)
        .sum::<usize>()
}

#[tokio::test]
async fn a_tree_over_the_reply_budget_comes_in_pages_that_join_into_the_whole_tree() {
    let w = World::sqlite().await;
    populated(&w).await;
    // Three more provinces of 70 districts, each node about 5.5 KB (long
    // names): ~1.2 MB at depth 2, over the 768 KiB a reply may carry.
    let long = "Đảng bộ xã ".repeat(400);
    let mut provinces = Vec::new();
    for p in 1..=3 {
        let code = format!("Q{p:02}");
        let province = w.org(&code, &long, "province", w.root).await;
        for d in 1..=70 {
            w.org(&format!("{code}.D{d:02}"), &long, "district", province)
                .await;
        }
        provinces.push(province);
    }
    let whole = w.whole(w.root, 2).await;
    assert_eq!(node_count(&whole), 1 + 5 + 2 + 3 * 70);
    assert!(serde_json::to_vec(&whole).unwrap().len() > MAX_REPLY_BYTES);

    // One answer: cut, flagged at the root and where the cut fell, and
    // within the budget.
    let first = w.node(w.root, 2).await;
    let size = serde_json::to_vec(&first).unwrap().len();
    assert!(size <= MAX_REPLY_BYTES, "{size} bytes");
    assert!(
        size > MAX_REPLY_BYTES / 2,
        "{size} bytes: the budget is used"
    );
    assert!(truncated(&first));
    assert_eq!(codes(&first)[..3], ["P01", "P02", "Q01"]);
    let children = first["children"].as_array().unwrap();
    assert!(!truncated(&children[2]), "Q01 whole");
    assert_eq!(codes(&children[2]).len(), 70);
    let last = children.last().unwrap();
    assert!(
        truncated(last),
        "the last province is cut: {}",
        last["code"]
    );
    assert!(codes(last).len() < 70);
    // Totals are the whole subtree's, whatever the children carried.
    assert_eq!(first["totals"], whole["totals"]);

    // The next page of the root: only children after the last one held,
    // each with its own children to the levels left.
    let after = last["code"].as_str().unwrap();
    let page = w
        .ok(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "org": w.root, "depth": 2, "after": after}),
        )
        .await;
    assert!(
        !codes(&page).is_empty(),
        "the first child after is always there"
    );
    assert!(codes(&page).iter().all(|c| c.as_str() > after));
    assert_eq!(page["code"], "TW");
    assert_eq!(page["totals"], whole["totals"]);

    // Pages of the cut province complete it; joined, everything is there.
    let mut province = last.clone();
    while truncated(&province) {
        let after = codes(&province).last().unwrap().clone();
        let page = w
            .ok(
                &w.central(),
                "progress.v1",
                json!({"cycle": w.cycle, "org": province["org"], "depth": 1, "after": after}),
            )
            .await;
        assert!(!codes(&page).is_empty());
        let more = page["children"].as_array().unwrap().clone();
        province["children"].as_array_mut().unwrap().extend(more);
        province["children_truncated"] = page["children_truncated"].clone();
    }
    province
        .as_object_mut()
        .unwrap()
        .remove("children_truncated");
    let same = whole["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == province["code"])
        .unwrap();
    assert_eq!(&province, same);

    // The assembler does all of that.
    let sent = Mutex::new(0);
    let query = ProgressQuery {
        cycle: w.cycle,
        org: None,
        depth: Some(2),
    };
    let assembled = assemble(query, |q| {
        *sent.lock().unwrap() += 1;
        w.ask(q)
    })
    .await
    .unwrap();
    let assembled = serde_json::to_value(assembled).unwrap();
    assert_eq!(assembled, whole);
    assert!(*sent.lock().unwrap() > 1);
    assert_rollups(&assembled);

    // A query naming another field is still refused.
    let r = w
        .refused(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "before": "Q02"}),
        )
        .await;
    assert_eq!(r.code, "invalid_input");
}

#[tokio::test]
async fn the_asked_node_always_carries_its_first_child_even_past_the_budget() {
    let w = World::sqlite().await;
    // One cell whose node alone is larger than a reply's budget.
    let huge = "Chi bộ ".repeat(MAX_REPLY_BYTES / 8 + 1);
    let big = w.org("P02.D01.C02", &huge, "cell", w.d2).await;
    let node = w.node(w.d2, 1).await;
    assert_eq!(codes(&node), ["P02.D01.C01"]);
    assert!(truncated(&node), "the big cell does not fit after C01");
    let page = w
        .ok(
            &w.central(),
            "progress.v1",
            json!({"cycle": w.cycle, "org": w.d2, "depth": 1, "after": "P02.D01.C01"}),
        )
        .await;
    assert_eq!(codes(&page), ["P02.D01.C02"], "forced in, alone");
    assert_eq!(page["children"][0]["org"], json!(big));
    assert!(!truncated(&page));
    // From the top, the cut falls at the same place, two levels down: only
    // P02.D01 is flagged, and the assembler asks for its page alone.
    let top = w.node(w.root, 3).await;
    assert_eq!(codes(&top), ["P01", "P02"]);
    assert!(!truncated(&top));
    let d2 = &top["children"][1]["children"][0];
    assert_eq!(codes(d2), ["P02.D01.C01"]);
    assert!(truncated(d2));
    let query = ProgressQuery {
        cycle: w.cycle,
        org: None,
        depth: Some(3),
    };
    let tree = assemble(query, |q| w.ask(q)).await.unwrap();
    assert_eq!(tree, w.whole_node(w.root, 3).await);
}

#[tokio::test]
async fn until_ends_the_asked_nodes_children_at_a_code_and_ranges_join_into_the_whole_tree() {
    let w = World::sqlite().await;
    populated(&w).await;
    for (code, parent) in [("P03", w.root), ("P04", w.root), ("P03.D01", w.p1)] {
        let tier = if code.contains(".D") {
            "district"
        } else {
            "province"
        };
        w.org(code, &format!("Đảng bộ {code}"), tier, parent).await;
    }
    let whole = w.whole(w.root, 2).await;
    let central = w.central();
    let page = |after: Option<&str>, until: Option<&str>| {
        let mut q = json!({"cycle": w.cycle, "org": w.root, "depth": 2});
        if let Some(a) = after {
            q["after"] = json!(a);
        }
        if let Some(u) = until {
            q["until"] = json!(u);
        }
        w.ok(&central, "progress.v1", q)
    };
    // Up to and including the code; after one and up to another; a code
    // between two children; a bound before every child.
    let first = page(None, Some("P02")).await;
    assert_eq!(codes(&first), ["P01", "P02"]);
    assert!(!truncated(&first));
    assert_eq!(
        first["children"][0], whole["children"][0],
        "deeper levels whole"
    );
    assert_eq!(codes(&page(Some("P01"), Some("P03")).await), ["P02", "P03"]);
    assert_eq!(codes(&page(Some("P02"), Some("P035")).await), ["P03"]);
    let none = page(None, Some("P")).await;
    assert!(codes(&none).is_empty());
    assert!(!truncated(&none));
    assert_eq!(none["totals"], whole["totals"], "the node is whole");
    // Ranges split at children's codes carry every child once.
    let mut joined = Vec::new();
    for (after, until) in [
        (None, Some("P01")),
        (Some("P01"), Some("P03")),
        (Some("P03"), None),
    ] {
        let p = page(after, until).await;
        joined.extend(p["children"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(&joined, whole["children"].as_array().unwrap());
    // The assembler asks a tree two levels deep in such ranges, at once.
    let sent = Mutex::new(Vec::new());
    let query = ProgressQuery {
        cycle: w.cycle,
        org: None,
        depth: Some(3),
    };
    let tree = assemble(query, |q| {
        sent.lock().unwrap().push(q.clone());
        w.ask(q)
    })
    .await
    .unwrap();
    assert_eq!(tree, w.whole_node(w.root, 3).await);
    let sent = sent.into_inner().unwrap();
    assert_eq!(sent[0].depth, Some(1), "the top's children first");
    assert_eq!(sent.len(), 1 + 4, "{sent:#?}");
    assert!(sent[1..].iter().all(|q| q.depth == Some(3)));
    assert_eq!(sent[1].until.as_deref(), Some("P01"));
    assert_eq!(sent[4].after.as_deref(), Some("P03"));
    assert_eq!(sent[4].until, None, "the last range is open");
}

#[tokio::test]
async fn names_with_quotes_backslashes_and_control_characters_encode_as_the_typed_answer() {
    let w = World::sqlite().await;
    populated(&w).await;
    // `body` checks every answer's bytes against the typed reply's.
    let odd = "Chi bộ \"Đoàn kết\" \\ số 1\n\t\u{1}\u{7f} – ✓";
    w.org("P01.D01.C09", odd, "cell", w.d1).await;
    let node = w.node(w.d1, 1).await;
    assert_eq!(node["children"][3]["name"], json!(odd));
    let node = w.node(w.root, 3).await;
    assert_eq!(node_count(&node), node_count(&w.whole(w.root, 3).await));
}

#[tokio::test]
async fn a_service_whose_model_spills_answers_as_a_model_that_keeps_everything_in_memory() {
    // The models opened from here on in this process keep 64 values per
    // map in memory (nextest runs each test in a process of its own; under
    // `cargo test` the tests after this one spill too, and must answer the
    // same anyway).
    gradeflow_service::spill::set_capacity(64);
    let w = World::sqlite().await;
    let cells = [w.c1, w.c2, w.c3, w.e1];
    let deciding = |cell: OrgId| if cell == w.e1 { w.d2 } else { w.d1 };
    let mut dossiers = Vec::new();
    for i in 0..400 {
        let cell = cells[i % 4];
        let d = w
            .member(cell, deciding(cell), &format!("Đảng viên {i}"))
            .await;
        dossiers.push((d, cell));
    }
    // Every later step in another order than the registrations, so most
    // land on a record the model wrote out.
    let stride = |k: usize| (0..dossiers.len()).map(move |i| (i * k) % 400);
    for i in stride(7) {
        w.self_review(dossiers[i].0).await;
    }
    for i in stride(13).filter(|i| i % 5 != 0) {
        w.meeting(dossiers[i].0).await;
    }
    let mut graded: HashMap<OrgId, Vec<(DossierId, Grade)>> = HashMap::new();
    for i in stride(17) {
        let (d, cell) = dossiers[i];
        match i % 5 {
            0 => {}
            1 => w.return_(d).await,
            2 => w.appraise(d).await,
            _ => graded
                .entry(deciding(cell))
                .or_default()
                .push((d, Grade::ALL[i % 4])),
        }
    }
    for (k, batch) in graded.values().flat_map(|g| g.chunks(25)).enumerate() {
        w.decide(&format!("{k}-QĐ/ĐU"), batch).await;
    }
    for (d, grade) in graded.values().flatten().step_by(9) {
        let to = if *grade == Grade::Good {
            Grade::Excellent
        } else {
            Grade::Good
        };
        w.regrade(*d, *grade, to, "9-QĐ/TW").await;
    }
    w.set_today("2026-12-20");

    let (records, _) = w.progress.engine().read(|m| m.spill_stats()).await.unwrap();
    assert!(records.in_memory <= 64, "{records:?}");
    assert!(
        records.written >= 300 && records.read_back >= 300,
        "the service's model spilled: {records:?}"
    );

    // The same store folded into a model that keeps everything.
    let mut reference = ProgressModel::with_cache(DEFAULT_CAPACITY);
    let mut after = 0;
    loop {
        let page = w.store.read_from(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            reference.apply(event);
        }
    }
    assert_eq!(reference.spill_stats().0.written, 0);
    let today = *w.today.lock().unwrap();
    let central = w.central();
    for org in [w.root, w.p1, w.p2, w.d1, w.c1, w.c2, w.c3, w.d2, w.e1] {
        for (offset, limit) in [(0, 1_000), (0, 37), (37, 37), (150, 100), (390, 50)] {
            let expected = report(
                &reference,
                &ReportQuery {
                    cycle: w.cycle,
                    org: Some(org),
                    offset: Some(offset),
                    limit: Some(limit),
                },
                &central,
                today,
            )
            .unwrap();
            let answered = w.report(org, offset, limit).await;
            assert_eq!(answered, expected, "{org} from {offset}, {limit} rows");
            assert_eq!(report_csv(&answered), report_csv(&expected));
        }
        let q = ProgressQuery {
            cycle: w.cycle,
            org: Some(org),
            depth: Some(3),
        };
        let expected = progress(&reference, &q, &central, today).unwrap();
        assert_eq!(w.whole_node(org, 3).await, expected, "{org}");
    }
    let whole = w.report(w.root, 0, 1_000).await;
    assert_eq!(whole.rows.len(), 400);
    assert!(whole.regraded.len() > 10 && whole.excellent.len() > 10);
}
