//! `gradeflow audit recheck [--cycle C]`: every recorded decision judged
//! again by its cycle's own rulebook, on the facts it was decided on.
//!
//! The approval store is folded into the approval service's own model
//! ([`ApprovalModel`]) event by event. Just before the first event of each
//! decision (its `decision_recorded`, or its first grade when a forged
//! decision lacks one) the model holds exactly what the store held when the
//! decision was appended: the dossiers' facts, the authority's earlier
//! grades of the cycle per quota group, which units were complete. From it
//! the draft batch is built the way the approval service builds it
//! (`services/approval/server/src/decide.rs`), and the same
//! [`check_batch`] runs under [`Rulebook::for_id`] of the cycle's rulebook.
//! Besides the rulebook's violations (quota, hard triggers without a
//! written reason, score bands, conditions, ordering, not reviewed), the
//! preconditions the service checks first are reported as problems: a
//! dossier unknown, outside the authority's remit, not in a state to be
//! decided, or a re-grade of a record that is not the dossier's current
//! one; and grades appended without their decision document.
//!
//! A signature proves who recorded a grade; only a re-check proves the
//! grade was allowed. A decision appended behind the service's back, even
//! chained and signed with a registry key, is caught here.
//!
//! [`Rulebook::for_id`]: gradeflow_approval_domain::Rulebook::for_id

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gradeflow_approval_domain::{check_batch, DraftBatch, Violation};
use gradeflow_approval_server::decide::{draft_batch, GradedLine};
use gradeflow_approval_server::model::{DossierInfo, Pending};
use gradeflow_approval_server::ApprovalModel;
use gradeflow_eventstore::canonical::format_timestamp;
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::commands::DecisionKind;
use gradeflow_proto::events::{DecisionRecorded, Event, GradeDecided, GradeRevised};
use gradeflow_proto::{
    CycleId, DecisionId, DossierId, DossierState, Grade, OrgId, QuotaException, RulebookId,
};
use gradeflow_service::Model as _;
use serde::Serialize;

use crate::problem::{Check, Problem};
use crate::scan::{is_own, Reader};
use crate::sources::{AuditError, Stores, APPROVAL};
use crate::table::{or_dash, Table};

/// One grade of a recorded decision.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    seq: u64,
    dossier: DossierId,
    grade: Grade,
    override_reason: Option<String>,
    supersedes: Option<u64>,
    reason: Option<String>,
    authority: OrgId,
    cycle: CycleId,
}

/// A recorded decision: its document and its grades, as the store holds
/// them.
#[derive(Debug, Clone, PartialEq, Default)]
struct Recorded {
    first_position: i64,
    recorded_at: Option<DateTime<Utc>>,
    document: Option<DecisionRecorded>,
    lines: Vec<Line>,
}

impl Recorded {
    fn cycle(&self) -> Option<CycleId> {
        self.document
            .as_ref()
            .map(|d| d.cycle)
            .or_else(|| self.lines.first().map(|l| l.cycle))
    }

    fn authority(&self) -> Option<OrgId> {
        self.document
            .as_ref()
            .map(|d| d.authority)
            .or_else(|| self.lines.first().map(|l| l.authority))
    }

    fn kind(&self) -> DecisionKind {
        match &self.document {
            Some(d) => d.kind,
            None if self.lines.iter().any(|l| l.supersedes.is_some()) => DecisionKind::Regrade,
            None => DecisionKind::Decide,
        }
    }
}

/// A decision the rules (or the preconditions) would refuse today.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusedDecision {
    /// The decision.
    pub decision: DecisionId,
    /// Its document number.
    pub number: Option<String>,
    /// Its cycle.
    pub cycle: Option<CycleId>,
    /// The deciding org.
    pub authority: Option<OrgId>,
    /// That org's code.
    pub authority_code: Option<String>,
    /// Decide or regrade.
    pub kind: DecisionKind,
    /// The rulebook it was judged under.
    pub rulebook: Option<RulebookId>,
    /// Its first event's position in the approval store.
    pub position: i64,
    /// When it was recorded.
    pub recorded_at: Option<String>,
    /// Its decision-log records.
    pub records: Vec<u64>,
    /// The dossiers it grades.
    pub dossiers: Vec<DossierId>,
    /// The rulebook's violations, as `POST /api/v1/decisions` names them.
    pub violations: Vec<Violation>,
    /// Preconditions the service checks before the rulebook.
    pub problems: Vec<String>,
}

/// The answer of `gradeflow audit recheck`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecheckReport {
    /// No decision would be refused.
    pub ok: bool,
    /// The cycle re-checked (every cycle when `None`).
    pub cycle: Option<CycleId>,
    /// Decisions re-checked.
    pub decisions: u64,
    /// Their decision-log records.
    pub records: u64,
    /// The decisions that would be refused today.
    pub refused: Vec<RefusedDecision>,
    /// Approval events that did not read back (left out of the fold).
    pub unreadable: Vec<Problem>,
}

/// Re-checks every decision (of `cycle`, when given) in the approval store.
pub async fn recheck(stores: &Stores, cycle: Option<CycleId>) -> Result<RecheckReport, AuditError> {
    let store = stores.require(APPROVAL)?;
    // Pass 1: the decisions as recorded, grouped by decision id.
    let mut decisions: BTreeMap<DecisionId, Recorded> = BTreeMap::new();
    let mut reader = Reader::new(APPROVAL, store, None);
    while let Some(event) = reader.next().await? {
        collect(&mut decisions, &event);
    }
    if let Some(c) = cycle {
        decisions.retain(|_, d| d.cycle() == Some(c));
    }
    let starts: HashMap<i64, DecisionId> = decisions
        .iter()
        .map(|(id, d)| (d.first_position, *id))
        .collect();

    // Pass 2: fold, judging each decision on the model just before it.
    let mut model = ApprovalModel::default();
    let mut refused = Vec::new();
    let mut reader = Reader::new(APPROVAL, store, None);
    while let Some(event) = reader.next().await? {
        if let Some(d) = starts
            .get(&event.position)
            .and_then(|id| decisions.get(id).map(|d| (id, d)))
        {
            if let Some(r) = judge(&model, *d.0, d.1) {
                refused.push(r);
            }
        }
        model.apply(&event);
    }
    let unreadable = reader
        .unreadable
        .into_iter()
        .map(|(position, why)| {
            Problem::new(Check::Store, format!("left out of the re-check: {why}"))
                .in_store(APPROVAL)
                .at(position)
        })
        .collect();
    Ok(RecheckReport {
        ok: refused.is_empty(),
        cycle,
        decisions: decisions.len() as u64,
        records: decisions.values().map(|d| d.lines.len() as u64).sum(),
        refused,
        unreadable,
    })
}

/// The decision `id` being collected, first seen (or seen earlier) at
/// `event`.
fn note<'a>(
    decisions: &'a mut BTreeMap<DecisionId, Recorded>,
    id: DecisionId,
    event: &StoredEvent,
) -> &'a mut Recorded {
    let d = decisions.entry(id).or_insert_with(|| Recorded {
        first_position: event.position,
        recorded_at: Some(event.recorded_at),
        ..Recorded::default()
    });
    if event.position < d.first_position {
        d.first_position = event.position;
        d.recorded_at = Some(event.recorded_at);
    }
    d
}

fn collect(decisions: &mut BTreeMap<DecisionId, Recorded>, event: &StoredEvent) {
    if !is_own(APPROVAL, event) {
        return;
    }
    let kind = event.kind.as_str();
    if kind == DecisionRecorded::KIND {
        if let Ok(e) = serde_json::from_value::<DecisionRecorded>(event.payload.clone()) {
            let id = e.decision;
            note(decisions, id, event).document = Some(e);
        }
    } else if kind == GradeDecided::KIND {
        if let Ok(e) = serde_json::from_value::<GradeDecided>(event.payload.clone()) {
            note(decisions, e.decision, event).lines.push(Line {
                seq: e.record.seq,
                dossier: e.dossier,
                grade: e.grade,
                override_reason: e.override_reason,
                supersedes: None,
                reason: None,
                authority: e.authority,
                cycle: e.cycle,
            });
        }
    } else if kind == GradeRevised::KIND {
        if let Ok(e) = serde_json::from_value::<GradeRevised>(event.payload.clone()) {
            note(decisions, e.decision, event).lines.push(Line {
                seq: e.record.seq,
                dossier: e.dossier,
                grade: e.grade,
                override_reason: e.override_reason,
                supersedes: Some(e.supersedes),
                reason: Some(e.reason),
                authority: e.authority,
                cycle: e.cycle,
            });
        }
    }
}

/// The refusal of decision `id` on `model` (the store just before it), or
/// `None` when the rules and preconditions accept it.
fn judge(model: &ApprovalModel, id: DecisionId, d: &Recorded) -> Option<RefusedDecision> {
    let mut problems = Vec::new();
    let kind = d.kind();
    let mut refused = RefusedDecision {
        decision: id,
        number: d.document.as_ref().map(|doc| doc.number.clone()),
        cycle: d.cycle(),
        authority: d.authority(),
        authority_code: d
            .authority()
            .and_then(|a| model.tree.get(a))
            .map(|o| o.code.clone()),
        kind,
        rulebook: None,
        position: d.first_position,
        recorded_at: d.recorded_at.map(format_timestamp),
        records: d.lines.iter().map(|l| l.seq).collect(),
        dossiers: d.lines.iter().map(|l| l.dossier).collect(),
        violations: Vec::new(),
        problems: Vec::new(),
    };
    let (Some(cycle), Some(authority)) = (d.cycle(), d.authority()) else {
        refused
            .problems
            .push("neither a decision document nor a grade names its cycle and authority".into());
        return Some(refused);
    };
    match &d.document {
        None => problems.push(
            "grades without their decision_recorded event: no decision document was recorded"
                .to_owned(),
        ),
        Some(doc) => {
            let listed: BTreeSet<DossierId> = doc.dossiers.iter().copied().collect();
            let graded: BTreeSet<DossierId> = d.lines.iter().map(|l| l.dossier).collect();
            if listed != graded {
                problems.push(format!(
                    "the decision document lists {} dossier(s) but {} were graded",
                    listed.len(),
                    graded.len()
                ));
            }
        }
    }
    if d.lines.is_empty() {
        problems.push("the decision grades no dossier".to_owned());
    }
    for l in &d.lines {
        if l.cycle != cycle || l.authority != authority {
            problems.push(format!(
                "record {} names cycle {} and authority {}, the decision cycle {cycle} and authority {authority}",
                l.seq, l.cycle, l.authority
            ));
        }
    }
    let Some(info) = model.cycles.get(&cycle) else {
        problems.push(format!("cycle {cycle} was not open when it was decided"));
        refused.problems = problems;
        return Some(refused);
    };
    refused.rulebook = Some(info.rulebook);

    // The preconditions decide.rs checks per grade, then the draft.
    let mut seen = HashSet::new();
    let mut checked: Vec<(&Line, Arc<DossierInfo>)> = Vec::new();
    for l in &d.lines {
        let Some(dossier) = model.dossiers.get(&l.dossier).filter(|x| x.cycle == cycle) else {
            problems.push(format!(
                "record {}: no dossier {} in the cycle at the time",
                l.seq, l.dossier
            ));
            continue;
        };
        if !seen.insert(l.dossier) {
            problems.push(format!(
                "dossier {} is graded twice in the decision",
                l.dossier
            ));
            continue;
        }
        if dossier.deciding_org != authority {
            problems.push(format!(
                "record {}: dossier {} is decided by org {}, not by {authority} (not in remit)",
                l.seq, l.dossier, dossier.deciding_org
            ));
        }
        match kind {
            DecisionKind::Decide if dossier.state != DossierState::Appraised => {
                problems.push(format!(
                    "record {}: dossier {} was {}, not appraised (wrong state)",
                    l.seq,
                    l.dossier,
                    dossier.state.code()
                ));
            }
            DecisionKind::Regrade => {
                if !matches!(
                    dossier.state,
                    DossierState::Decided | DossierState::Regraded
                ) {
                    problems.push(format!(
                        "record {}: dossier {} was {}, not decided (wrong state for a re-grade)",
                        l.seq,
                        l.dossier,
                        dossier.state.code()
                    ));
                }
                let current = dossier.current.as_ref().map(|c| c.seq);
                if l.supersedes.is_none() || l.supersedes != current {
                    problems.push(format!(
                        "record {}: re-grades record {} but the dossier's current record was {}",
                        l.seq,
                        or_dash(l.supersedes),
                        or_dash(current)
                    ));
                }
                if l.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    problems.push(format!(
                        "record {}: a re-grade without a written reason",
                        l.seq
                    ));
                }
            }
            DecisionKind::Decide => {}
        }
        checked.push((l, dossier));
    }
    let quota_exception = d
        .document
        .as_ref()
        .and_then(|doc| doc.quota_exception.clone());
    let draft = draft(model, cycle, authority, kind, quota_exception, &checked);
    match draft.validate() {
        Err(e) => problems.push(format!("the decision cannot be judged: {}", e.message())),
        Ok(()) => refused.violations = check_batch(&draft).violations,
    }
    refused.problems = problems;
    (!refused.problems.is_empty() || !refused.violations.is_empty()).then_some(refused)
}

/// The draft the rulebook judges, built by the approval service's own
/// [`draft_batch`] from the model as it stood before the decision.
fn draft(
    model: &ApprovalModel,
    cycle: CycleId,
    authority: OrgId,
    kind: DecisionKind,
    quota_exception: Option<QuotaException>,
    checked: &[(&Line, Arc<DossierInfo>)],
) -> DraftBatch {
    let mut pending = Pending::default();
    if kind == DecisionKind::Decide {
        pending.settled = checked.iter().map(|(l, _)| l.dossier).collect();
    }
    let lines: Vec<GradedLine<'_>> = checked
        .iter()
        .map(|(l, d)| GradedLine {
            dossier: l.dossier,
            info: d,
            grade: l.grade,
            override_reason: l.override_reason.as_deref(),
        })
        .collect();
    draft_batch(
        model,
        cycle,
        authority,
        kind,
        quota_exception,
        &lines,
        &pending,
    )
}

impl RecheckReport {
    /// The human form: the count, then one row per violation or problem.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Re-checked {} decision(s) ({} record(s)){} against their cycles' rulebooks: ",
            self.decisions,
            self.records,
            self.cycle
                .map(|c| format!(" of cycle {c}"))
                .unwrap_or_default()
        );
        if self.ok {
            out.push_str("every one is allowed\n");
        } else {
            out.push_str(&format!("{} would be refused today\n", self.refused.len()));
            let mut t = Table::new(&[
                "DECISION",
                "NUMBER",
                "AUTHORITY",
                "POSITION",
                "RECORDS",
                "RULE",
                "WHY",
            ]);
            for r in &self.refused {
                let records = match (r.records.first(), r.records.last()) {
                    (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
                    (Some(a), _) => a.to_string(),
                    _ => "-".to_owned(),
                };
                let mut row = |rule: &str, why: String| {
                    t.row(vec![
                        r.decision.to_string(),
                        or_dash(r.number.as_deref()),
                        r.authority_code
                            .clone()
                            .or_else(|| r.authority.map(|a| a.to_string()))
                            .unwrap_or_else(|| "-".to_owned()),
                        r.position.to_string(),
                        records.clone(),
                        rule.to_owned(),
                        why,
                    ]);
                };
                for v in &r.violations {
                    row(v.rule(), v.message());
                }
                for p in &r.problems {
                    row("precondition", p.clone());
                }
            }
            out.push_str(&t.render());
        }
        for p in &self.unreadable {
            out.push_str(&format!(
                "warning: approval position {}: {}\n",
                or_dash(p.position),
                p.problem
            ));
        }
        out
    }
}
