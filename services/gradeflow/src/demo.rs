//! The root organisation every deployment starts from, and the small demo
//! country `gradeflow up --demo` fills an empty deployment with: two
//! provinces, each with two districts (or communes) of two cells with five
//! members, every unit's collective, an open annual cycle, and the
//! self-reviews and meetings of the first province filed, so every worklist
//! has something on it. Everything goes through the same commands a board
//! would send.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{Datelike, NaiveDate};
use gradeflow_proto::commands::{
    OpenCycle, RecordMeeting, RegisterOrg, RegisterSubject, SubmitSelfReview,
};
use gradeflow_proto::{
    Actor, Category, CycleKind, DossierId, Grade, OrgId, QuotaSettings, Role, RulebookId, Score,
    SubjectKind, SubjectStatus, TaskCounts, Tier, Tiers,
};
use gradeflow_service::client::CommandClient;
use serde_json::{json, Value};

/// gradeflow acting on its own behalf (first start, demo data).
fn system(root: OrgId) -> Actor {
    Actor {
        sub: "gradeflow".into(),
        role: Role::System,
        org: root,
    }
}

fn client(nats: &async_nats::Client, names: &gradeflow_proto::Names) -> CommandClient {
    CommandClient::new(nats.clone(), names.clone(), Duration::from_secs(10))
}

/// The id `gradeflow up` gives the root org with `code`: derived from the
/// code, so two processes starting at once agree, and `gradeflow token` can
/// name the root without asking a running service.
pub fn root_id(code: &str) -> OrgId {
    OrgId(uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("gradeflow-root-{code}").as_bytes(),
    ))
}

/// The id of the root org with `code`, registering it on first start (with
/// [`root_id`]).
pub async fn ensure_root(
    nats: &async_nats::Client,
    names: &gradeflow_proto::Names,
    code: &str,
    tiers: &Tiers,
) -> anyhow::Result<OrgId> {
    let id = root_id(code);
    let c = client(nats, names);
    let found = c
        .call(
            "submission",
            "find_org.v1",
            &system(id),
            json!({"code": code}),
            gradeflow_proto::CommandId::new(),
            None,
        )
        .await
        .context("looking up the root organisation")?;
    if let Some(org) = found.as_array().and_then(|a| a.first()) {
        return org["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("the registry answered an org without an id");
    }
    let root_tier = tiers
        .root()
        .cloned()
        .unwrap_or_else(|| Tier::new("central"));
    let reg = RegisterOrg {
        id: Some(id),
        code: code.to_owned(),
        name: "Trung ương".to_owned(),
        tier: root_tier,
        parent: None,
    };
    c.send(&system(id), &reg)
        .await
        .context("registering the root organisation")?;
    Ok(id)
}

const FAMILY: [&str; 8] = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi"];
const MIDDLE: [&str; 4] = ["Văn", "Thị", "Đức", "Minh"];
const GIVEN: [&str; 10] = [
    "An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Hùng", "Lan", "Nam", "Thảo",
];

fn person(n: usize) -> String {
    format!(
        "{} {} {}",
        FAMILY[n % FAMILY.len()],
        MIDDLE[(n / 3) % MIDDLE.len()],
        GIVEN[(n / 7 + n) % GIVEN.len()]
    )
}

async fn register(
    c: &CommandClient,
    actor: &Actor,
    code: String,
    name: String,
    tier: &Tier,
    parent: OrgId,
) -> anyhow::Result<OrgId> {
    let reg = RegisterOrg {
        id: None,
        code,
        name,
        tier: tier.clone(),
        parent: Some(parent),
    };
    let v = c.send(actor, &reg).await?;
    id_of(&v, "id")
}

fn id_of<T: std::str::FromStr>(v: &Value, field: &str) -> anyhow::Result<T> {
    v[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("answer without `{field}`: {v}"))
}

async fn subject(
    c: &CommandClient,
    actor: &Actor,
    reg: RegisterSubject,
) -> anyhow::Result<DossierId> {
    let v = c.send(actor, &reg).await?;
    id_of(&v, "dossier")
}

/// A unit's collective (form 01).
fn collective(cycle: gradeflow_proto::CycleId, org: OrgId, name: String) -> RegisterSubject {
    RegisterSubject {
        cycle,
        kind: SubjectKind::Collective,
        org,
        name,
        category: Category::Collective01,
        leader: false,
        status: SubjectStatus::Active,
        quota_group: None,
    }
}

/// A member of a cell: its secretary (a leader, form 2A) or a member (2B).
fn member(
    cycle: gradeflow_proto::CycleId,
    org: OrgId,
    name: String,
    leader: bool,
) -> RegisterSubject {
    RegisterSubject {
        cycle,
        kind: SubjectKind::Individual,
        org,
        name,
        category: if leader {
            Category::Leader2A
        } else {
            Category::Member2B
        },
        leader,
        status: SubjectStatus::Active,
        quota_group: None,
    }
}

/// Fills an empty deployment with the demo country; `None` when the root
/// already has children (the demo, or real data, is there).
pub async fn seed(
    nats: &async_nats::Client,
    names: &gradeflow_proto::Names,
    root: OrgId,
    tiers: &Tiers,
) -> anyhow::Result<Option<String>> {
    let c = client(nats, names);
    let actor = system(root);
    let existing = c
        .call(
            "submission",
            "get_org.v1",
            &actor,
            json!({"org": root}),
            gradeflow_proto::CommandId::new(),
            None,
        )
        .await?;
    if existing["children"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return Ok(None);
    }
    let t = &tiers.0;
    anyhow::ensure!(t.len() == 4, "the demo needs a four-tier list");
    let year = chrono::Utc::now().year();
    let deadline = |m: u32, d: u32, y: i32| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
    let open = OpenCycle {
        id: None,
        year,
        kind: CycleKind::Annual,
        rulebook: RulebookId::Qd366_2025,
        tiers: tiers.clone(),
        deadlines: [
            (t[0].clone(), deadline(12, 15, year)),
            (t[1].clone(), deadline(12, 25, year)),
            (t[2].clone(), deadline(1, 15, year + 1)),
            (t[3].clone(), deadline(2, 1, year + 1)),
        ]
        .into_iter()
        .collect(),
        quota: QuotaSettings::default(),
    };
    let cycle: gradeflow_proto::CycleId = id_of(&c.send(&actor, &open).await?, "id")?;

    subject(
        &c,
        &actor,
        collective(cycle, root, "Ban Chấp hành Trung ương".into()),
    )
    .await?;
    let mut members = 0;
    let mut filed = Vec::new();
    for p in 1..=2 {
        let pcode = format!("P{p:02}");
        let province = register(
            &c,
            &actor,
            pcode.clone(),
            format!("Tỉnh ủy {p}"),
            &t[2],
            root,
        )
        .await?;
        subject(
            &c,
            &actor,
            collective(cycle, province, format!("Ban Thường vụ Tỉnh ủy {p}")),
        )
        .await?;
        for d in 1..=2 {
            let dcode = format!("{pcode}.D{d:02}");
            let district = register(
                &c,
                &actor,
                dcode.clone(),
                format!("Đảng ủy {d} — Tỉnh {p}"),
                &t[1],
                province,
            )
            .await?;
            subject(
                &c,
                &actor,
                collective(cycle, district, format!("Ban Thường vụ {dcode}")),
            )
            .await?;
            for k in 1..=2 {
                let ccode = format!("{dcode}.C{k:02}");
                let cell = register(
                    &c,
                    &actor,
                    ccode.clone(),
                    format!("Chi bộ {k} — {dcode}"),
                    &t[0],
                    district,
                )
                .await?;
                subject(
                    &c,
                    &actor,
                    collective(cycle, cell, format!("Chi bộ {ccode}")),
                )
                .await?;
                for m in 0..5 {
                    let leader = m == 0;
                    let dossier =
                        subject(&c, &actor, member(cycle, cell, person(members), leader)).await?;
                    members += 1;
                    if p == 1 {
                        filed.push(dossier);
                    }
                }
            }
        }
    }
    for (i, dossier) in filed.iter().enumerate() {
        // Scores spread over the bands, so every grade shows up.
        let tasks_points = [66.0, 62.0, 55.0, 45.0, 38.0][i % 5];
        let proposed = [
            Grade::Excellent,
            Grade::Good,
            Grade::Good,
            Grade::Completed,
            Grade::Completed,
        ][i % 5];
        let review = SubmitSelfReview {
            dossier: *dossier,
            score: Some(Score {
                general: 27.0,
                tasks: tasks_points,
            }),
            proposed_grade: proposed,
            tasks: TaskCounts {
                total: 10,
                on_time: 10,
                exceeded: 3,
                late: 0,
                not_done: 0,
            },
            shortcomings_fixed: true,
            report: "Hoàn thành các nhiệm vụ được giao trong năm.".into(),
        };
        c.send(&actor, &review).await?;
        let meeting = RecordMeeting {
            dossier: *dossier,
            proposed_grade: proposed,
            votes: [(proposed, 12)].into_iter().collect(),
            minutes: "Biên bản hội nghị kiểm điểm cuối năm.".into(),
        };
        c.send(&actor, &meeting).await?;
    }
    Ok(Some(format!(
        "cycle {cycle} ({year}), 2 provinces, 8 cells, {members} members; {} dossiers reviewed and awaiting appraisal",
        filed.len()
    )))
}
