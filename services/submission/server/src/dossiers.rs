//! Subjects and their dossiers up to the review meeting: registering a
//! subject (which opens its dossier), filing the self-review (again, after
//! a return) and recording the review meeting. Every dossier event goes on
//! the dossier's own stream `dossier-<id>`; the state machine of the
//! submission domain decides which step is legal when.
//!
//! Who may act (`API.md` § Subjects and dossiers): the submitter of the
//! dossier's org (or anyone whose role covers it higher up the tree).

use std::sync::Arc;

use gradeflow_proto::commands::{RecordMeeting, RegisterSubject, SubmitSelfReview};
use gradeflow_proto::events::{MeetingRecorded, SelfReviewSubmitted, SubjectRegistered};
use gradeflow_proto::{
    Actor, Category, CycleId, DossierId, DossierState, ErrorCode, OrgId, Rejection, Role,
    RulebookId, SubjectId, SubjectKind,
};
use gradeflow_service::{trace, Decision, Emit};
use gradeflow_submission_domain::{initial_state, transition, Action};
use serde_json::json;

use crate::model::{DossierRecord, SubmissionModel};
use crate::refusals::{
    bad_tier, blank, invalid_input, unknown_cycle, unknown_dossier, wrong_state,
};
use crate::upward;

/// The default quota group of collectives.
pub const COLLECTIVES_GROUP: &str = "collectives";
/// The default quota group of individuals.
pub const INDIVIDUALS_GROUP: &str = "individuals";

/// The subject id of the collective of `org`: the same collective in every
/// cycle, so it is derived from the org rather than drawn at random.
pub fn collective_subject_id(org: OrgId) -> SubjectId {
    SubjectId(uuid::Uuid::new_v5(
        &org.as_uuid(),
        b"gradeflow:collective-subject",
    ))
}

/// The dossier id of `org`'s collective in `cycle`. Name-based, so two
/// replicas registering the same collective at once write the same stream
/// and only one of them commits (the other decides again and is refused as
/// a duplicate), and so the upward flow can name it.
pub fn collective_dossier_id(cycle: CycleId, org: OrgId) -> DossierId {
    DossierId(uuid::Uuid::new_v5(
        &cycle.as_uuid(),
        format!("gradeflow:collective-dossier:{org}").as_bytes(),
    ))
}

/// The state after `action` on dossier `id`, or the state machine's refusal
/// as `wrong_state` (409).
pub fn step(id: DossierId, d: &DossierRecord, action: Action) -> Result<DossierState, Rejection> {
    transition(d.state, action).map_err(|why| wrong_state(id, d.state, action, why))
}

fn dossier(model: &SubmissionModel, id: DossierId) -> Result<Arc<DossierRecord>, Rejection> {
    model.dossiers.get(&id).ok_or_else(|| unknown_dossier(id))
}

/// Registers a subject of review in a cycle and opens its dossier: `open`,
/// or `not_reviewed` for a new member, an exempt or a suspended subject.
pub fn register_subject(
    model: &SubmissionModel,
    actor: &Actor,
    input: &RegisterSubject,
) -> Result<Decision, Rejection> {
    let cycle = model
        .cycles
        .get(&input.cycle)
        .ok_or_else(|| unknown_cycle(input.cycle))?;
    let org = model.live_org(input.org)?;
    model.orgs.authorize(actor, Role::Submitter, input.org)?;
    if let Some(at) = cycle.completed_at {
        return Err(ErrorCode::WrongState
            .reject(
                format!("cycle {} was completed at {at}", input.cycle),
                "Đợt kiểm điểm đã kết thúc",
            )
            .with_details(json!({ "cycle": input.cycle, "state": "completed" })));
    }
    let name = input.name.trim();
    if name.is_empty() {
        return Err(blank("name"));
    }
    if cycle.opened.tiers.index_of(&org.tier).is_none() {
        return Err(bad_tier(
            org.tier.as_str(),
            None,
            format!(
                "the tier `{}` of `{}` is not one of the cycle's tiers",
                org.tier, org.code
            ),
        ));
    }
    let (subject, dossier) = match input.kind {
        SubjectKind::Collective => {
            if input.category != Category::Collective01 {
                return Err(invalid_input(
                    "category",
                    format!("a collective files form 01, not {}", input.category.code()),
                    "Tập thể sử dụng mẫu 01",
                ));
            }
            if let Some(existing) = model.collectives.get(&(input.cycle, input.org)) {
                return Err(ErrorCode::DuplicateSubject
                    .reject(
                        format!(
                            "the collective of `{}` is registered in this cycle already",
                            org.code
                        ),
                        "Tập thể này đã được đăng ký trong đợt kiểm điểm",
                    )
                    .with_details(json!({ "dossier": existing, "org": input.org })));
            }
            (
                collective_subject_id(input.org),
                collective_dossier_id(input.cycle, input.org),
            )
        }
        SubjectKind::Individual => {
            if input.category == Category::Collective01 {
                return Err(invalid_input(
                    "category",
                    "an individual files form 2A, 2B or 2C, not 01",
                    "Cá nhân sử dụng mẫu 2A, 2B hoặc 2C",
                ));
            }
            (SubjectId::new(), DossierId::new())
        }
    };
    let quota_group = match input.quota_group.as_deref().map(str::trim) {
        Some(g) if !g.is_empty() => g.to_owned(),
        _ => match input.kind {
            SubjectKind::Collective => COLLECTIVES_GROUP.to_owned(),
            SubjectKind::Individual => INDIVIDUALS_GROUP.to_owned(),
        },
    };
    let state = initial_state(input.status);
    let event = SubjectRegistered {
        subject,
        dossier,
        cycle: input.cycle,
        org: input.org,
        // The standing committee directly above decides; the root's own
        // collective is decided at the root.
        deciding_org: org.parent.unwrap_or(org.id),
        kind: input.kind,
        name: name.to_owned(),
        category: input.category,
        leader: input.leader,
        status: input.status,
        quota_group,
        state,
    };
    let province = model.orgs.province_of(input.org);
    let mut events = vec![Emit::new(dossier.stream(), &event, province)];
    // A collective registered after its child units completed is opened for
    // decision at once: the completions it waited for are already known.
    if input.kind == SubjectKind::Collective && state == DossierState::Open {
        if let Some(opened) = upward::open_at_registration(model, input.cycle, input.org, dossier) {
            events.push(opened);
        }
    }
    Ok(Decision {
        events,
        reads: Vec::new(),
        result: json!({ "subject": subject, "dossier": dossier, "state": state }),
    })
}

/// Files the self-review, or files it again after a return. The first one
/// starts the dossier's trace: the command's `traceparent`, or a new trace
/// when it carried none; a re-filed one continues the dossier's trace.
pub fn submit_self_review(
    model: &SubmissionModel,
    actor: &Actor,
    input: &SubmitSelfReview,
    traceparent: Option<&str>,
) -> Result<Decision, Rejection> {
    let d = dossier(model, input.dossier)?;
    model.orgs.authorize(actor, Role::Submitter, d.org)?;
    let rulebook = model
        .cycles
        .get(&d.cycle)
        .map(|c| c.opened.rulebook)
        .ok_or_else(|| unknown_cycle(d.cycle))?;
    validate_self_review(rulebook, input)?;
    let state = step(input.dossier, &d, Action::FileSelfReview)?;
    let event = SelfReviewSubmitted {
        dossier: input.dossier,
        score: input.score,
        proposed_grade: input.proposed_grade,
        tasks: input.tasks,
        shortcomings_fixed: input.shortcomings_fixed,
        report: input.report.clone(),
        resubmission: d.state == DossierState::Returned,
    };
    let emit = Emit::new(
        input.dossier.stream(),
        &event,
        model.orgs.province_of(d.org),
    );
    let emit = match (&d.trace, trace::valid(traceparent)) {
        (Some(dossier), _) => emit.in_trace(Some(&dossier.traceparent())),
        // The command's own trace, as the context stamps it.
        (None, Some(_)) => emit,
        // No trace to continue: the dossier's starts here.
        (None, None) => Emit {
            traceparent: Some(trace::new_root()),
            ..emit
        },
    };
    Ok(Decision {
        events: vec![emit],
        reads: Vec::new(),
        result: json!({ "state": state }),
    })
}

/// What a self-review must hold: consistent task counts and, under
/// `qd366-2025`, a score within the sheet's ranges. The older rulebooks had
/// no points; a score sent anyway must still be in range.
pub fn validate_self_review(
    rulebook: RulebookId,
    input: &SubmitSelfReview,
) -> Result<(), Rejection> {
    if !input.tasks.is_consistent() {
        return Err(invalid_input(
            "tasks",
            "task counts do not add up: on_time + late + not_done must equal total, \
             and exceeded may not be more than the tasks done",
            "Số liệu nhiệm vụ không khớp: đúng hạn + trễ hạn + chưa hoàn thành phải bằng tổng số, \
             số vượt mức không được lớn hơn số đã hoàn thành",
        ));
    }
    match input.score {
        None if rulebook == RulebookId::Qd366_2025 => Err(invalid_input(
            "score",
            "a self-score is required under qd366-2025",
            "Theo Quy định 366-QĐ/TW, bản tự kiểm điểm phải có điểm tự chấm",
        )),
        None => Ok(()),
        Some(score) if !(0.0..=30.0).contains(&score.general) => Err(invalid_input(
            "score.general",
            format!(
                "the general criteria score must be between 0 and 30, not {}",
                score.general
            ),
            "Điểm tiêu chí chung phải từ 0 đến 30",
        )),
        Some(score) if !(0.0..=70.0).contains(&score.tasks) => Err(invalid_input(
            "score.tasks",
            format!(
                "the task results score must be between 0 and 70, not {}",
                score.tasks
            ),
            "Điểm kết quả thực hiện nhiệm vụ phải từ 0 đến 70",
        )),
        Some(_) => Ok(()),
    }
}

/// Records the review meeting's outcome.
pub fn record_meeting(
    model: &SubmissionModel,
    actor: &Actor,
    input: &RecordMeeting,
) -> Result<Decision, Rejection> {
    let d = dossier(model, input.dossier)?;
    model.orgs.authorize(actor, Role::Submitter, d.org)?;
    let state = step(input.dossier, &d, Action::RecordMeeting)?;
    let event = MeetingRecorded {
        dossier: input.dossier,
        proposed_grade: input.proposed_grade,
        votes: input.votes.clone(),
        minutes: input.minutes.clone(),
    };
    Ok(Decision {
        events: vec![Emit::new(
            input.dossier.stream(),
            &event,
            model.orgs.province_of(d.org),
        )
        .in_trace(d.trace.map(|t| t.traceparent()).as_deref())],
        reads: Vec::new(),
        result: json!({ "state": state }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gradeflow_proto::{Grade, Score, TaskCounts};

    fn review(score: Option<(f64, f64)>, tasks: TaskCounts) -> SubmitSelfReview {
        SubmitSelfReview {
            dossier: DossierId::new(),
            score: score.map(|(general, tasks)| Score { general, tasks }),
            proposed_grade: Grade::Good,
            tasks,
            shortcomings_fixed: true,
            report: String::new(),
        }
    }

    fn all_on_time() -> TaskCounts {
        TaskCounts {
            total: 4,
            on_time: 4,
            ..TaskCounts::default()
        }
    }

    fn refused_field(r: Result<(), Rejection>) -> String {
        r.unwrap_err().details["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_366_self_review_needs_a_score_within_the_sheet() {
        let rb = RulebookId::Qd366_2025;
        assert!(validate_self_review(rb, &review(Some((30.0, 70.0)), all_on_time())).is_ok());
        assert!(validate_self_review(rb, &review(Some((0.0, 0.0)), all_on_time())).is_ok());
        let missing = validate_self_review(rb, &review(None, all_on_time()));
        assert_eq!(refused_field(missing), "score");
        let general = validate_self_review(rb, &review(Some((30.5, 10.0)), all_on_time()));
        assert_eq!(refused_field(general), "score.general");
        let tasks = validate_self_review(rb, &review(Some((10.0, 70.1)), all_on_time()));
        assert_eq!(refused_field(tasks), "score.tasks");
    }

    #[test]
    fn the_older_rulebooks_need_no_score_but_refuse_one_out_of_range() {
        let rb = RulebookId::Qd124_2023;
        assert!(validate_self_review(rb, &review(None, all_on_time())).is_ok());
        let bad = validate_self_review(rb, &review(Some((-1.0, 10.0)), all_on_time()));
        assert_eq!(refused_field(bad), "score.general");
    }

    #[test]
    fn task_counts_must_add_up() {
        let counts = TaskCounts {
            total: 4,
            on_time: 2,
            late: 1,
            ..TaskCounts::default()
        };
        let r = validate_self_review(RulebookId::Qd366_2025, &review(Some((20.0, 50.0)), counts));
        assert_eq!(refused_field(r), "tasks");
    }

    #[test]
    fn a_collective_keeps_its_subject_id_across_cycles_but_gets_a_dossier_per_cycle() {
        let org = OrgId::new();
        let (a, b) = (CycleId::new(), CycleId::new());
        assert_eq!(collective_subject_id(org), collective_subject_id(org));
        assert_eq!(collective_dossier_id(a, org), collective_dossier_id(a, org));
        assert_ne!(collective_dossier_id(a, org), collective_dossier_id(b, org));
        assert_ne!(
            collective_dossier_id(a, org),
            collective_dossier_id(a, OrgId::new())
        );
    }
}
