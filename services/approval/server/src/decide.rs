//! Deciding a batch (`decide_batch.v1`): the pure function from the model
//! and one authority's decision document to the events that record it, or
//! to the refusal that says why nothing may be written.
//!
//! Order of the checks (the first refusal wins, except the rulebook's, which
//! are all reported together):
//! 1. the authority org is known (`unknown_org`), the actor holds
//!    `authority` (or `central`) there or above (`out_of_scope`), the cycle
//!    is known (`unknown_cycle`);
//! 2. the document has a number and at least one grade (`invalid_input`);
//! 3. per grade, in order: the dossier is known in this cycle
//!    (`unknown_dossier`), not twice in the batch (`invalid_input`), decided
//!    by this authority (`not_in_remit`), in the right state (`wrong_state`);
//!    for a re-grade also `supersedes` and a non-blank `reason`
//!    (`invalid_input`), a known record (`unknown_record`) that is the
//!    dossier's current one (`wrong_state`);
//! 4. the cycle's rulebook on the whole batch, counting the authority's
//!    earlier grades of the cycle (`rule_violation`, every violation).
//!
//! On acceptance, one append: `decision_recorded`, one decision-log record
//! per grade (hash-chained from the model's head, signed), then the units
//! (and the cycle) this batch completes.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gradeflow_approval_domain::{check_batch, DraftBatch, DraftDossier, GroupCounts};
use gradeflow_proto::commands::{BatchGrade, DecideBatch, DecisionKind};
use gradeflow_proto::events::{
    CycleCompleted, DecisionLogRecord, DecisionRecorded, GradeDecided, GradeRevised, UnitCompleted,
};
use gradeflow_proto::{
    Actor, CycleId, DecisionId, DossierId, DossierState, ErrorCode, Grade, OrgId, QuotaException,
    Rejection, Role, Tier,
};
use gradeflow_service::{Decision, Emit};
use serde_json::json;

use crate::keys::KeyError;
use crate::model::{ApprovalModel, DossierInfo, Pending};
use crate::record::{record_hash, record_ref, signing_message, DECISION_LOG_STREAM};

/// The stream of a unit's completion in a cycle: `unit-<cycle>-<org>`.
pub fn unit_stream(cycle: CycleId, org: OrgId) -> String {
    format!("unit-{cycle}-{org}")
}

/// Who may decide for `command.authority` in which cycle: the checks that
/// need no dossier. Run before anything else (and before a signing key is
/// created for the authority), and again inside [`decide`].
pub fn authorize(
    model: &ApprovalModel,
    command: &DecideBatch,
    actor: &Actor,
) -> Result<(), Rejection> {
    if model.tree.get(command.authority).is_none() {
        return Err(ErrorCode::UnknownOrg
            .reject(
                format!("no organisation {}", command.authority),
                format!("Không có tổ chức {}", command.authority),
            )
            .with_details(json!({"org": command.authority})));
    }
    model
        .tree
        .authorize(actor, Role::Authority, command.authority)?;
    if !model.cycles.contains_key(&command.cycle) {
        return Err(ErrorCode::UnknownCycle
            .reject(
                format!("no review cycle {}", command.cycle),
                format!("Không có kỳ kiểm điểm {}", command.cycle),
            )
            .with_details(json!({"cycle": command.cycle})));
    }
    Ok(())
}

fn invalid(message: impl Into<String>, message_vi: impl Into<String>) -> Rejection {
    ErrorCode::InvalidInput.reject(message, message_vi)
}

fn wrong_state(dossier: &BatchGrade, state: DossierState, expected: &[DossierState]) -> Rejection {
    let expected: Vec<&str> = expected.iter().map(|s| s.code()).collect();
    ErrorCode::WrongState
        .reject(
            format!(
                "dossier {} is {} ({}); it must be {} to be decided",
                dossier.dossier,
                state.code(),
                state.label_en(),
                expected.join(" or ")
            ),
            format!(
                "Hồ sơ {} đang ở trạng thái “{}”, chưa thể quyết định xếp loại",
                dossier.dossier,
                state.label_vi()
            ),
        )
        .with_details(json!({
            "dossier": dossier.dossier,
            "state": state.code(),
            "expected": expected,
        }))
}

/// One graded dossier of the batch, checked, with the record it was checked
/// on (held, as the model may write it out meanwhile).
struct Checked<'a> {
    grade: &'a BatchGrade,
    dossier: Arc<DossierInfo>,
}

/// Checks the grades one by one (step 3 of the module docs).
fn check_grades<'a>(
    model: &'a ApprovalModel,
    command: &'a DecideBatch,
) -> Result<Vec<Checked<'a>>, Rejection> {
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(command.grades.len());
    for grade in &command.grades {
        let id = grade.dossier;
        let Some(dossier) = model.dossiers.get(&id).filter(|d| d.cycle == command.cycle) else {
            return Err(ErrorCode::UnknownDossier
                .reject(
                    format!("no dossier {id} in cycle {}", command.cycle),
                    format!("Không có hồ sơ {id} trong kỳ kiểm điểm này"),
                )
                .with_details(json!({"dossier": id, "cycle": command.cycle})));
        };
        if !seen.insert(id) {
            return Err(invalid(
                format!("dossier {id} appears twice in the decision"),
                format!("Hồ sơ {id} xuất hiện hai lần trong cùng một quyết định"),
            )
            .with_details(json!({"dossier": id})));
        }
        if dossier.deciding_org != command.authority {
            return Err(ErrorCode::NotInRemit
                .reject(
                    format!(
                        "dossier {id} is decided by org {}, not by {}",
                        dossier.deciding_org, command.authority
                    ),
                    format!("Hồ sơ {id} không thuộc thẩm quyền quyết định của cấp này"),
                )
                .with_details(json!({
                    "dossier": id,
                    "deciding_org": dossier.deciding_org,
                    "authority": command.authority,
                })));
        }
        match command.kind {
            DecisionKind::Decide => check_first_grade(grade, &dossier)?,
            DecisionKind::Regrade => check_regrade(model, grade, &dossier)?,
        }
        checked.push(Checked { grade, dossier });
    }
    Ok(checked)
}

fn check_first_grade(grade: &BatchGrade, dossier: &DossierInfo) -> Result<(), Rejection> {
    if let Some(seq) = grade.supersedes {
        return Err(invalid(
            format!(
                "dossier {}: `supersedes` belongs to a re-grading decision (kind `regrade`)",
                grade.dossier
            ),
            format!(
                "Hồ sơ {}: chỉ quyết định xếp loại lại mới được thay thế bản ghi",
                grade.dossier
            ),
        )
        .with_details(json!({"dossier": grade.dossier, "supersedes": seq})));
    }
    if dossier.state != DossierState::Appraised {
        return Err(wrong_state(
            grade,
            dossier.state,
            &[DossierState::Appraised],
        ));
    }
    Ok(())
}

fn check_regrade(
    model: &ApprovalModel,
    grade: &BatchGrade,
    dossier: &DossierInfo,
) -> Result<(), Rejection> {
    let id = grade.dossier;
    let Some(seq) = grade.supersedes else {
        return Err(invalid(
            format!("dossier {id}: a re-grade names the record it supersedes (`supersedes`)"),
            format!("Hồ sơ {id}: xếp loại lại phải nêu bản ghi bị thay thế"),
        )
        .with_details(json!({"dossier": id, "field": "supersedes"})));
    };
    if grade.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(invalid(
            format!("dossier {id}: a re-grade needs a written reason"),
            format!("Hồ sơ {id}: xếp loại lại phải ghi rõ lý do"),
        )
        .with_details(json!({"dossier": id, "field": "reason"})));
    }
    if !matches!(
        dossier.state,
        DossierState::Decided | DossierState::Regraded
    ) {
        return Err(wrong_state(
            grade,
            dossier.state,
            &[DossierState::Decided, DossierState::Regraded],
        ));
    }
    // The `decision-log` stream's versions are the seqs, contiguous from 1:
    // every seq up to its version is a record, none above it.
    if seq == 0 || seq > model.log_version {
        return Err(ErrorCode::UnknownRecord
            .reject(
                format!("no decision-log record {seq}"),
                format!("Không có bản ghi quyết định số {seq}"),
            )
            .with_details(json!({"supersedes": seq})));
    }
    // The dossier's current record is a record of this dossier (the model
    // takes it from the dossier's own grade event), so a record of another
    // dossier is never it: no need to read the record itself.
    let current = dossier.current.as_ref().map(|c| c.seq);
    if current != Some(seq) {
        return Err(ErrorCode::WrongState
            .reject(
                format!(
                    "record {seq} is not the current record of dossier {id} (current: {})",
                    current.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
                format!(
                    "Bản ghi {seq} không phải là bản ghi hiện hành của hồ sơ {id}; chỉ thay thế được bản ghi hiện hành"
                ),
            )
            .with_details(json!({"dossier": id, "supersedes": seq, "current": current})));
    }
    Ok(())
}

/// One graded line of a decision as the rulebook judges it: the dossier, what
/// the model knows of it, the grade and the authority's mitigation reason.
#[derive(Debug, Clone, Copy)]
pub struct GradedLine<'a> {
    /// The dossier.
    pub dossier: DossierId,
    /// What the model knows of it.
    pub info: &'a DossierInfo,
    /// The grade given.
    pub grade: Grade,
    /// The written mitigation for a hard trigger.
    pub override_reason: Option<&'a str>,
}

/// The draft the rulebook judges: every graded dossier with what the model
/// knows of it, and the authority's earlier grades of the cycle (for a
/// re-grade, without the grades it replaces). The approval service builds
/// it before deciding; `gradeflow audit recheck` builds it again, with this
/// same function, from the model as it stood before each recorded decision.
pub fn draft_batch(
    model: &ApprovalModel,
    cycle: CycleId,
    authority: OrgId,
    kind: DecisionKind,
    quota_exception: Option<QuotaException>,
    lines: &[GradedLine<'_>],
    pending: &Pending,
) -> DraftBatch {
    let info = model.cycles.get(&cycle);
    let mut earlier = model.earlier(cycle, authority);
    if kind == DecisionKind::Regrade {
        // A re-graded dossier counts with its new grade only: take its
        // current grade out of the earlier counts.
        for line in lines {
            if let Some(current) = &line.info.current {
                if current.authority == authority {
                    let counts: &mut GroupCounts =
                        earlier.entry(current.group.clone()).or_default();
                    match current.grade {
                        Grade::Excellent => counts.excellent = counts.excellent.saturating_sub(1),
                        Grade::Good => counts.good = counts.good.saturating_sub(1),
                        Grade::Completed | Grade::NotCompleted => {}
                    }
                }
            }
        }
    }
    let dossiers = lines
        .iter()
        .map(|line| {
            let d = line.info;
            let mut draft = DraftDossier::new(line.dossier.to_string(), d.kind);
            draft.category = Some(d.category);
            draft.leader = d.leader;
            draft.status = d.status;
            draft.quota_group = Some(d.quota_group.clone());
            draft.score = d.score;
            draft.tasks = d.tasks;
            draft.shortcomings_fixed = d.shortcomings_fixed;
            draft.facts = d.facts.clone();
            draft.grade = Some(line.grade);
            draft.override_reason = line.override_reason.map(str::to_owned);
            // Ordering applies to first grades; a re-graded collective was
            // ready when it was first decided.
            if d.kind == gradeflow_proto::SubjectKind::Collective && kind == DecisionKind::Decide {
                draft.waiting_for = model.waiting_for(d.cycle, d.org, pending);
            }
            draft
        })
        .collect();
    DraftBatch {
        rulebook: info.map_or(gradeflow_proto::RulebookId::Qd366_2025, |c| c.rulebook),
        quota: info.map(|c| c.quota).unwrap_or_default(),
        quota_exception,
        earlier,
        dossiers,
    }
}

/// The draft of a batch being decided.
fn draft(
    model: &ApprovalModel,
    command: &DecideBatch,
    checked: &[Checked<'_>],
    pending: &Pending,
) -> DraftBatch {
    let lines: Vec<GradedLine<'_>> = checked
        .iter()
        .map(|c| GradedLine {
            dossier: c.grade.dossier,
            info: &c.dossier,
            grade: c.grade.grade,
            override_reason: c.grade.override_reason.as_deref(),
        })
        .collect();
    draft_batch(
        model,
        command.cycle,
        command.authority,
        command.kind,
        command.quota_exception.clone(),
        &lines,
        pending,
    )
}

/// Runs the cycle's rulebook on the draft: input it cannot judge is
/// `invalid_input`, any violation `rule_violation` with every violation.
fn judge(draft: &DraftBatch) -> Result<(), Rejection> {
    draft.validate().map_err(|e| {
        invalid(
            format!("the decision cannot be checked: {}", e.message()),
            e.message_vi(),
        )
    })?;
    let outcome = check_batch(draft);
    if outcome.ok {
        return Ok(());
    }
    let n = outcome.violations.len();
    let first_en = outcome
        .violations
        .first()
        .map(|v| v.message())
        .unwrap_or_default();
    let first_vi = outcome
        .violations
        .first()
        .map(|v| v.message_vi())
        .unwrap_or_default();
    Err(ErrorCode::RuleViolation
        .reject(
            format!("the decision breaks {n} grading rule(s); nothing was recorded. {first_en}"),
            format!("Quyết định vi phạm {n} quy định về xếp loại; chưa ghi nhận gì. {first_vi}"),
        )
        .with_details(json!({"violations": outcome.violations})))
}

/// What the decision needs besides the model: its id, time, the actor and
/// the authority's signing key.
pub struct BatchInput<'a, S> {
    /// The decision document.
    pub command: &'a DecideBatch,
    /// Who submits it.
    pub actor: &'a Actor,
    /// The id the decision gets (fixed before the first attempt, so a retry
    /// after a lost race records the same id).
    pub decision: DecisionId,
    /// The decision time, microsecond precision (one for the whole batch).
    pub at: DateTime<Utc>,
    /// The authority's key id.
    pub key_id: &'a str,
    /// Signs a record's hash bytes with the authority's key (base64).
    pub sign: S,
}

/// Decides a batch on `model`: the events to append, the streams read, and
/// the answer (`{"id", "records": [{"seq", "dossier", "grade", "hash",
/// "signature", "key_id"}]}`), or why nothing may be written.
pub fn decide<S>(model: &ApprovalModel, input: &BatchInput<'_, S>) -> Result<Decision, Rejection>
where
    S: Fn(&[u8]) -> Result<String, KeyError>,
{
    let command = input.command;
    authorize(model, command, input.actor)?;
    if command.number.trim().is_empty() {
        return Err(invalid(
            "the decision needs its document number",
            "Quyết định phải có số văn bản",
        )
        .with_details(json!({"field": "number"})));
    }
    if command.grades.is_empty() {
        return Err(invalid(
            "the decision grades no dossier",
            "Quyết định chưa có hồ sơ nào được xếp loại",
        )
        .with_details(json!({"field": "grades"})));
    }
    let checked = check_grades(model, command)?;

    // First grades settle their dossiers; the rulebook's ordering rule and
    // the completions below judge the batch as if it were written.
    let mut pending = Pending::default();
    if command.kind == DecisionKind::Decide {
        pending.settled = checked.iter().map(|c| c.grade.dossier).collect();
    }
    let draft = draft(model, command, &checked, &pending);
    judge(&draft)?;

    let mut events = Vec::new();
    let province = model.tree.province_of(command.authority);
    events.push(Emit::new(
        input.decision.stream(),
        &DecisionRecorded {
            decision: input.decision,
            cycle: command.cycle,
            authority: command.authority,
            number: command.number.clone(),
            kind: command.kind,
            dossiers: checked.iter().map(|c| c.grade.dossier).collect(),
            quota_exception: command.quota_exception.clone(),
        },
        province.clone(),
    ));

    let mut prev = model.head().to_owned();
    let mut records = Vec::with_capacity(checked.len());
    // Seqs continue the `decision-log` stream the model saw; the engine
    // appends expecting exactly that version, so two deciders cannot both
    // take the same seq.
    let seqs = model.log_version.saturating_add(1)..;
    for (seq, (c, drafted)) in seqs.zip(checked.iter().zip(&draft.dossiers)) {
        let mut record = DecisionLogRecord {
            seq,
            decision: input.decision,
            number: command.number.clone(),
            cycle: command.cycle,
            dossier: c.grade.dossier,
            subject: c.dossier.subject,
            grade: c.grade.grade,
            authority: command.authority,
            actor: input.actor.sub.clone(),
            at: input.at,
            supersedes: c
                .grade
                .supersedes
                .filter(|_| command.kind == DecisionKind::Regrade),
            reason: match command.kind {
                DecisionKind::Regrade => c.grade.reason.clone(),
                DecisionKind::Decide => None,
            },
            override_reason: c.grade.override_reason.clone(),
            prev_hash: prev,
            hash: String::new(),
            signature: String::new(),
            key_id: input.key_id.to_owned(),
        };
        record.hash = record_hash(&record);
        let message = signing_message(&record.hash).unwrap_or_default();
        record.signature = (input.sign)(&message).map_err(|e| {
            tracing::error!(error = %e, "approval: cannot sign a decision record");
            ErrorCode::Unavailable.reject(
                "the authority's signing key is unavailable; nothing was recorded",
                "Khóa ký của cấp có thẩm quyền tạm thời không khả dụng; chưa ghi nhận gì",
            )
        })?;
        prev = record.hash.clone();
        records.push(json!({
            "seq": record.seq,
            "dossier": record.dossier,
            "grade": record.grade,
            "hash": record.hash,
            "signature": record.signature,
            "key_id": record.key_id,
        }));
        let group = drafted.group().to_owned();
        let grade = match (command.kind, &c.dossier.current) {
            (DecisionKind::Regrade, Some(current)) => Emit::new(
                DECISION_LOG_STREAM,
                &GradeRevised {
                    decision: input.decision,
                    dossier: c.grade.dossier,
                    subject: c.dossier.subject,
                    cycle: command.cycle,
                    authority: command.authority,
                    previous_grade: current.grade,
                    grade: c.grade.grade,
                    supersedes: current.seq,
                    reason: record.reason.clone().unwrap_or_default(),
                    record: record_ref(&record),
                    number: Some(command.number.clone()),
                    override_reason: record.override_reason.clone(),
                },
                province.clone(),
            ),
            _ => Emit::new(
                DECISION_LOG_STREAM,
                &GradeDecided {
                    decision: input.decision,
                    dossier: c.grade.dossier,
                    subject: c.dossier.subject,
                    cycle: command.cycle,
                    authority: command.authority,
                    org: c.dossier.org,
                    grade: c.grade.grade,
                    quota_group: group,
                    override_reason: record.override_reason.clone(),
                    record: record_ref(&record),
                    number: Some(command.number.clone()),
                },
                province.clone(),
            ),
        };
        // Each grade continues its dossier's trace.
        let trace = c.dossier.trace.map(|t| t.traceparent());
        events.push(grade.in_trace(trace.as_deref()));
    }

    if command.kind == DecisionKind::Decide {
        let orgs: Vec<OrgId> = checked.iter().map(|c| c.dossier.org).collect();
        let newly_graded = checked.len() as u64;
        events.extend(completion_events(
            model,
            command.cycle,
            &orgs,
            &pending,
            newly_graded,
            input.at,
        ));
    }

    Ok(Decision {
        events,
        // A dossier returned or re-appraised while we decided must make us
        // decide again: its stream's version is checked at commit.
        reads: checked.iter().map(|c| c.grade.dossier.stream()).collect(),
        result: json!({"id": input.decision, "records": records}),
    })
}

/// The `unit_completed` events (and `cycle_completed`, when the root's unit
/// completes) that the pending facts cause, starting at the units of `orgs`.
/// Each unit's stream is new, and the engine appends it expecting no stream,
/// so a unit completes exactly once even across replicas.
pub fn completion_events(
    model: &ApprovalModel,
    cycle: CycleId,
    orgs: &[OrgId],
    pending: &Pending,
    newly_graded: u64,
    at: DateTime<Utc>,
) -> Vec<Emit> {
    let mut events = Vec::new();
    let Some(info) = model.cycles.get(&cycle) else {
        return events;
    };
    for org in model.completions(cycle, orgs, pending) {
        let node = model.tree.get(org);
        let tier = node.map_or_else(|| Tier::new("unknown"), |n| n.tier.clone());
        let dossiers = model.unit((cycle, org), pending).map_or(0, |u| {
            u.members.len() as u64 + u64::from(u.collective.is_some())
        });
        events.push(Emit::new(
            unit_stream(cycle, org),
            &UnitCompleted {
                cycle,
                org,
                tier,
                dossiers,
            },
            model.tree.province_of(org),
        ));
        if org == info.root && !model.completed_cycles.contains(&cycle) {
            let graded = model.graded.get(&cycle).copied().unwrap_or(0);
            events.push(Emit::new(
                cycle.stream(),
                &CycleCompleted {
                    cycle,
                    decided: graded.saturating_add(newly_graded),
                    completed_at: at,
                },
                None,
            ));
        }
    }
    events
}
