//! Contract tests of the wire format: the JSON Schemas checked in under
//! `proto/schemas/` are exactly what the code generates, and every event
//! version has a frozen JSON snapshot under `tests/snapshots/` that still
//! deserialises and re-serialises to the same JSON and validates against its
//! schema. A shape that drifts fails here before it reaches a consumer.
//!
//! To regenerate after an intended change: `UPDATE_SCHEMAS=1 cargo test -p
//! gradeflow-proto --test contracts`. Snapshots are only ever *added*
//! (`UPDATE_SNAPSHOTS=1` writes missing ones); a published one is never
//! rewritten: a new shape gets a new version.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, TimeZone, Utc};
use gradeflow_proto::commands::DecisionKind;
use gradeflow_proto::events::{self as e, Event, RecordRef, RuleWarning};
use gradeflow_proto::*;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

fn envelope<P: Event + Serialize>(payload: P, version: u64) -> Value {
    let env = Envelope {
        event_id: EventId(id(1000 + version as u128)),
        kind: P::KIND.to_owned(),
        stream: format!("dossier-{}", id(7)),
        version,
        occurred_at: Utc.with_ymd_and_hms(2026, 12, 10, 8, 30, 0).unwrap(),
        actor: Actor {
            sub: "nguyen.van.a".into(),
            role: Role::Submitter,
            org: OrgId(id(3)),
        },
        correlation_id: CorrelationId(id(99)),
        causation_id: Some(id(98)),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        payload,
    };
    serde_json::to_value(env).unwrap()
}

fn record() -> RecordRef {
    RecordRef {
        seq: 12,
        hash: "9f".repeat(32),
        signature: "c2lnbmF0dXJl".into(),
        key_id: "authority-P01-2026".into(),
        // Optional fields added after the snapshots froze: absent there.
        prev_hash: None,
        at: None,
    }
}

/// One sample per event kind, used only to write a snapshot that is missing.
fn samples() -> Vec<(&'static str, Value)> {
    let facts = Facts {
        discipline: Some(Discipline {
            level: DisciplineLevel::Reprimand,
            duty_related: true,
            previous_unit: false,
        }),
        unit_task_completion: Some(0.8),
        ..Facts::default()
    };
    vec![
        (
            e::OrgRegistered::KIND,
            envelope(
                e::OrgRegistered {
                    org: OrgId(id(3)),
                    code: "P01.D01.C01".into(),
                    name: "Chi bộ 1".into(),
                    tier: Tier::new("cell"),
                    parent: Some(OrgId(id(2))),
                    province: Some("P01".into()),
                },
                1,
            ),
        ),
        (
            e::OrgRenamed::KIND,
            envelope(
                e::OrgRenamed {
                    org: OrgId(id(3)),
                    old_name: "Chi bộ 1".into(),
                    name: "Chi bộ Khu phố 1".into(),
                },
                2,
            ),
        ),
        (
            e::OrgMoved::KIND,
            envelope(
                e::OrgMoved {
                    org: OrgId(id(3)),
                    from_parent: OrgId(id(2)),
                    to_parent: OrgId(id(4)),
                },
                3,
            ),
        ),
        (
            e::OrgsMerged::KIND,
            envelope(
                e::OrgsMerged {
                    from: vec![OrgId(id(5)), OrgId(id(6))],
                    into: OrgId(id(4)),
                    children_moved: vec![OrgId(id(8))],
                },
                1,
            ),
        ),
        (
            e::CycleOpened::KIND,
            envelope(
                e::CycleOpened {
                    cycle: CycleId(id(20)),
                    year: 2026,
                    kind: CycleKind::Annual,
                    rulebook: RulebookId::Qd366_2025,
                    tiers: Tiers::card(),
                    deadlines: BTreeMap::from([
                        (
                            Tier::new("cell"),
                            NaiveDate::from_ymd_opt(2026, 12, 15).unwrap(),
                        ),
                        (
                            Tier::new("central"),
                            NaiveDate::from_ymd_opt(2027, 2, 1).unwrap(),
                        ),
                    ]),
                    quota: QuotaSettings::default(),
                    root: OrgId(id(1)),
                },
                1,
            ),
        ),
        (
            e::SubjectRegistered::KIND,
            envelope(
                e::SubjectRegistered {
                    subject: SubjectId(id(30)),
                    dossier: DossierId(id(7)),
                    cycle: CycleId(id(20)),
                    org: OrgId(id(3)),
                    deciding_org: OrgId(id(2)),
                    kind: SubjectKind::Individual,
                    name: "Nguyễn Văn A".into(),
                    category: Category::Member2B,
                    leader: false,
                    status: SubjectStatus::Active,
                    quota_group: "individuals".into(),
                    state: DossierState::Open,
                },
                1,
            ),
        ),
        (
            e::SelfReviewSubmitted::KIND,
            envelope(
                e::SelfReviewSubmitted {
                    dossier: DossierId(id(7)),
                    score: Some(Score {
                        general: 28.0,
                        tasks: 65.5,
                    }),
                    proposed_grade: Grade::Excellent,
                    tasks: TaskCounts {
                        total: 10,
                        on_time: 10,
                        exceeded: 3,
                        late: 0,
                        not_done: 0,
                    },
                    shortcomings_fixed: true,
                    report: "Hoàn thành tốt các nhiệm vụ được giao.".into(),
                    resubmission: false,
                },
                2,
            ),
        ),
        (
            e::MeetingRecorded::KIND,
            envelope(
                e::MeetingRecorded {
                    dossier: DossierId(id(7)),
                    proposed_grade: Grade::Good,
                    votes: BTreeMap::from([(Grade::Excellent, 3), (Grade::Good, 12)]),
                    minutes: "Biên bản hội nghị".into(),
                },
                3,
            ),
        ),
        (
            e::DossierAppraised::KIND,
            envelope(
                e::DossierAppraised {
                    dossier: DossierId(id(7)),
                    recommended_grade: Grade::Good,
                    facts,
                    notes: "Đề nghị Hoàn thành tốt nhiệm vụ".into(),
                    warnings: vec![RuleWarning {
                        rule: "hard_trigger".into(),
                        message: "A duty-related reprimand forces not completed".into(),
                        message_vi: "Bị khiển trách liên quan đến thực thi nhiệm vụ".into(),
                    }],
                },
                4,
            ),
        ),
        (
            e::DossierReturned::KIND,
            envelope(
                e::DossierReturned {
                    dossier: DossierId(id(7)),
                    reason: "Thiếu biên bản hội nghị".into(),
                },
                4,
            ),
        ),
        (
            e::DecisionRecorded::KIND,
            envelope(
                e::DecisionRecorded {
                    decision: DecisionId(id(40)),
                    cycle: CycleId(id(20)),
                    authority: OrgId(id(2)),
                    number: "12-QĐ/HU".into(),
                    kind: DecisionKind::Decide,
                    dossiers: vec![DossierId(id(7))],
                    quota_exception: Some(QuotaException {
                        ratio: 0.25,
                        reason: Some("Đơn vị có thành tích nổi bật".into()),
                    }),
                },
                1,
            ),
        ),
        (
            e::GradeDecided::KIND,
            envelope(
                e::GradeDecided {
                    decision: DecisionId(id(40)),
                    dossier: DossierId(id(7)),
                    subject: SubjectId(id(30)),
                    cycle: CycleId(id(20)),
                    authority: OrgId(id(2)),
                    org: OrgId(id(3)),
                    grade: Grade::Good,
                    quota_group: "individuals".into(),
                    override_reason: None,
                    record: record(),
                    number: None,
                },
                5,
            ),
        ),
        (
            e::GradeRevised::KIND,
            envelope(
                e::GradeRevised {
                    decision: DecisionId(id(41)),
                    dossier: DossierId(id(7)),
                    subject: SubjectId(id(30)),
                    cycle: CycleId(id(20)),
                    authority: OrgId(id(2)),
                    previous_grade: Grade::Completed,
                    grade: Grade::Good,
                    supersedes: 12,
                    reason: "Khiếu nại được chấp nhận".into(),
                    record: record(),
                    number: None,
                    override_reason: None,
                },
                6,
            ),
        ),
        (
            e::UnitCompleted::KIND,
            envelope(
                e::UnitCompleted {
                    cycle: CycleId(id(20)),
                    org: OrgId(id(3)),
                    tier: Tier::new("cell"),
                    dossiers: 21,
                },
                1,
            ),
        ),
        (
            e::CollectiveDossierOpened::KIND,
            envelope(
                e::CollectiveDossierOpened {
                    cycle: CycleId(id(20)),
                    dossier: DossierId(id(9)),
                    org: OrgId(id(3)),
                },
                2,
            ),
        ),
        (
            e::CycleCompleted::KIND,
            envelope(
                e::CycleCompleted {
                    cycle: CycleId(id(20)),
                    decided: 5_600_000,
                    completed_at: Utc.with_ymd_and_hms(2027, 1, 30, 10, 0, 0).unwrap(),
                },
                9,
            ),
        ),
    ]
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn checked_in_schemas_are_exactly_what_the_code_generates() {
    let dir = root().join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    let mut expected_files = std::collections::BTreeSet::new();
    for s in schema::all() {
        let path = dir.join(&s.file);
        expected_files.insert(s.file.clone());
        let body = schema::render(&s.schema);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &body).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
            drifted.push(s.file);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the code (run with UPDATE_SCHEMAS=1 and review): {drifted:?}"
    );
    // No stale schema of a message that no longer exists.
    let mut present = Vec::new();
    for sub in ["", "commands"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|x| x == "json") {
                let name = entry.file_name().to_string_lossy().into_owned();
                present.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    let stale: Vec<_> = present
        .iter()
        .filter(|f| !expected_files.contains(*f))
        .collect();
    assert!(
        stale.is_empty(),
        "schemas with no message behind them: {stale:?}"
    );
}

#[test]
fn every_event_kind_has_a_schema_and_a_sample() {
    let kinds: Vec<&str> = samples().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        e::EVENT_KINDS,
        "samples must cover every event kind, in order"
    );
    let schema_kinds: Vec<String> = schema::all().into_iter().map(|s| s.kind).collect();
    for k in e::EVENT_KINDS {
        assert!(schema_kinds.iter().any(|s| s == k), "no schema for {k}");
    }
}

/// Deserialises a frozen snapshot into its typed envelope and back.
fn round_trip(kind: &str, v: &Value) -> Value {
    fn rt<P: Event + Serialize>(v: &Value) -> Value {
        let env: Envelope<P> = serde_json::from_value(v.clone()).unwrap();
        serde_json::to_value(env).unwrap()
    }
    match kind {
        k if k == e::OrgRegistered::KIND => rt::<e::OrgRegistered>(v),
        k if k == e::OrgRenamed::KIND => rt::<e::OrgRenamed>(v),
        k if k == e::OrgMoved::KIND => rt::<e::OrgMoved>(v),
        k if k == e::OrgsMerged::KIND => rt::<e::OrgsMerged>(v),
        k if k == e::CycleOpened::KIND => rt::<e::CycleOpened>(v),
        k if k == e::SubjectRegistered::KIND => rt::<e::SubjectRegistered>(v),
        k if k == e::SelfReviewSubmitted::KIND => rt::<e::SelfReviewSubmitted>(v),
        k if k == e::MeetingRecorded::KIND => rt::<e::MeetingRecorded>(v),
        k if k == e::DossierAppraised::KIND => rt::<e::DossierAppraised>(v),
        k if k == e::DossierReturned::KIND => rt::<e::DossierReturned>(v),
        k if k == e::DecisionRecorded::KIND => rt::<e::DecisionRecorded>(v),
        k if k == e::GradeDecided::KIND => rt::<e::GradeDecided>(v),
        k if k == e::GradeRevised::KIND => rt::<e::GradeRevised>(v),
        k if k == e::UnitCompleted::KIND => rt::<e::UnitCompleted>(v),
        k if k == e::CollectiveDossierOpened::KIND => rt::<e::CollectiveDossierOpened>(v),
        k if k == e::CycleCompleted::KIND => rt::<e::CycleCompleted>(v),
        other => panic!("no type for {other}"),
    }
}

#[test]
fn frozen_snapshots_still_round_trip_and_validate_against_their_schemas() {
    let dir = root().join("tests/snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    let write_missing = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let schemas: BTreeMap<String, Value> = schema::all()
        .into_iter()
        .map(|s| (s.kind, s.schema))
        .collect();
    for (kind, sample) in samples() {
        let path = dir.join(format!("{kind}.json"));
        if !path.exists() {
            assert!(
                write_missing,
                "no frozen snapshot for {kind}; run with UPDATE_SNAPSHOTS=1 to add it"
            );
            std::fs::write(&path, schema::render(&sample)).unwrap();
        }
        let frozen = read_json(&path);
        assert_eq!(frozen["kind"], kind, "{}", path.display());
        assert_eq!(
            round_trip(kind, &frozen),
            frozen,
            "{kind}: the type no longer reads and writes its frozen shape"
        );
        let validator = jsonschema::validator_for(&schemas[kind]).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&frozen)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{kind} snapshot breaks its schema: {errors:?}"
        );
    }
}

#[test]
fn a_schema_rejects_an_event_of_another_kind_or_a_missing_field() {
    let schemas: BTreeMap<String, Value> = schema::all()
        .into_iter()
        .map(|s| (s.kind, s.schema))
        .collect();
    let (_, mut decided) = samples()
        .into_iter()
        .find(|(k, _)| *k == e::GradeDecided::KIND)
        .unwrap();
    let validator = jsonschema::validator_for(&schemas[e::GradeDecided::KIND]).unwrap();
    assert!(validator.is_valid(&decided));
    decided["kind"] = "grade_revised.v1".into();
    assert!(
        !validator.is_valid(&decided),
        "kind is pinned by the schema"
    );
    decided["kind"] = e::GradeDecided::KIND.into();
    decided["payload"]["grade"] = "outstanding".into();
    assert!(!validator.is_valid(&decided), "an unknown grade is refused");
    decided["payload"]["grade"] = "good".into();
    decided["payload"]
        .as_object_mut()
        .unwrap()
        .remove("dossier");
    assert!(!validator.is_valid(&decided), "a missing field is refused");
}

#[test]
fn commands_refuse_unknown_fields() {
    let ok = serde_json::json!({"dossier": id(7), "reason": "thiếu hồ sơ"});
    assert!(serde_json::from_value::<commands::ReturnDossier>(ok.clone()).is_ok());
    let mut extra = ok;
    extra["reasn"] = "typo".into();
    assert!(serde_json::from_value::<commands::ReturnDossier>(extra).is_err());
}
