//! Read-only queries over the command request/reply
//! (`<prefix>.cmd.appraisal.<query>`): they append nothing and answer
//! `accepted` with the `result`. Their payload and answer types live here:
//! they are the portal's private conversation with this service.

use gradeflow_proto::events::RuleWarning;
use gradeflow_proto::{
    Actor, Category, CommandEnvelope, CycleId, DossierId, DossierState, Facts, Grade, OrgId,
    Rejection, Role, Score, SubjectId, SubjectKind,
};
use gradeflow_service::payload;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appraisals::warnings_for;
use crate::model::{AppraisalDossier, AppraisalModel};
use crate::refusals::{not_readable, unknown_dossier};

/// `get_dossier.v1`: appraisal's view of a dossier.
pub const GET_DOSSIER: &str = "get_dossier.v1";
/// `worklist.v1`: the dossiers awaiting the caller's appraisal.
pub const WORKLIST: &str = "worklist.v1";

/// Every query kind this service answers.
pub const KINDS: [&str; 2] = [GET_DOSSIER, WORKLIST];

/// The default and the largest number of worklist items in one answer.
pub const WORKLIST_LIMIT: (usize, usize) = (500, 10_000);

/// `get_dossier.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetDossier {
    /// The dossier.
    pub dossier: DossierId,
}

/// `worklist.v1` payload (every field optional: `{}` is a valid query).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worklist {
    /// Only this cycle's dossiers.
    #[serde(default)]
    pub cycle: Option<CycleId>,
    /// At most this many items (default 500, at most 10 000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One dossier awaiting appraisal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// The subject's name.
    pub name: String,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The form.
    pub category: Category,
    /// Leader flag.
    pub leader: bool,
    /// The cycle.
    pub cycle: CycleId,
    /// The org it belongs to.
    pub org: OrgId,
    /// The org whose board appraises it.
    pub deciding_org: OrgId,
    /// Its state (`reviewed`).
    pub state: DossierState,
    /// What is awaited: `appraise`.
    pub action: String,
    /// The grade the meeting (else the self-review) proposed.
    pub proposed_grade: Option<Grade>,
    /// The self-score.
    pub score: Option<Score>,
    /// The warnings an appraisal at the proposed grade, on no further
    /// facts, would carry.
    pub warnings: Vec<RuleWarning>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `get_dossier.v1`.
    GetDossier(GetDossier),
    /// `worklist.v1`.
    Worklist(Worklist),
}

impl Query {
    /// Reads a query envelope (its kind must be one of [`KINDS`]).
    pub fn parse(cmd: &CommandEnvelope) -> Result<Query, Rejection> {
        Ok(match cmd.kind.as_str() {
            GET_DOSSIER => Query::GetDossier(payload(cmd)?),
            // An absent payload (`null`) reads as "no filter".
            _ if cmd.payload.is_null() => Query::Worklist(Worklist::default()),
            _ => Query::Worklist(payload(cmd)?),
        })
    }

    /// The answer from `model`, for `actor`.
    pub fn answer(&self, model: &AppraisalModel, actor: &Actor) -> Result<Value, Rejection> {
        match self {
            Query::GetDossier(q) => {
                let d = model
                    .dossiers
                    .get(&q.dossier)
                    .ok_or_else(|| unknown_dossier(q.dossier))?;
                if actor.role != Role::System && !model.orgs.is_within(d.registered.org, actor.org)
                {
                    return Err(not_readable(q.dossier, actor.org));
                }
                Ok(dossier_view(d))
            }
            Query::Worklist(q) => Ok(worklist(model, actor, q)),
        }
    }
}

/// Appraisal's view of a dossier: its registration, state, the standing
/// appraisal and every return.
pub fn dossier_view(d: &AppraisalDossier) -> Value {
    let r = &d.registered;
    json!({
        "id": r.dossier,
        "subject": r.subject,
        "cycle": r.cycle,
        "org": r.org,
        "deciding_org": r.deciding_org,
        "kind": r.kind,
        "name": r.name,
        "category": r.category,
        "leader": r.leader,
        "status": r.status,
        "quota_group": r.quota_group,
        "state": d.state,
        "proposed_grade": d.proposed_grade(),
        "score": d.self_review.as_ref().and_then(|s| s.score),
        "appraisal": d.appraisal.as_ref().map(|a| json!({
            "recommended_grade": a.event.recommended_grade,
            "facts": a.event.facts,
            "notes": a.event.notes,
            "warnings": a.event.warnings,
            "at": a.at,
            "actor": a.actor,
        })),
        "returns": d.returns.iter().map(|r| json!({
            "reason": r.event.reason,
            "at": r.at,
            "actor": r.actor,
        })).collect::<Vec<_>>(),
        "decided_grade": d.decided,
    })
}

/// The reviewed dossiers whose deciding org lies in `actor`'s subtree, with
/// the warnings precomputed at the proposed grade. A caller whose role does
/// not cover the appraiser's has nothing to do here.
pub fn worklist(model: &AppraisalModel, actor: &Actor, q: &Worklist) -> Value {
    let (default, max) = WORKLIST_LIMIT;
    let limit = q.limit.unwrap_or(default).min(max);
    let mut items = Vec::new();
    let mut truncated = false;
    let top = match actor.role {
        Role::System => model.orgs.root().map(|r| r.id),
        role if role.covers(Role::Appraiser) => Some(actor.org),
        _ => None,
    };
    let no_facts = Facts::default();
    'walk: for org in top.map(|t| model.subtree(t)).unwrap_or_default() {
        for id in model
            .by_deciding
            .get(&org)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(d) = model.dossiers.get(id) else {
                continue;
            };
            if d.state != DossierState::Reviewed || q.cycle.is_some_and(|c| c != d.registered.cycle)
            {
                continue;
            }
            if items.len() == limit {
                truncated = true;
                break 'walk;
            }
            let proposed = d.proposed_grade();
            let warnings = proposed
                .and_then(|g| warnings_for(model, d, g, &no_facts).ok())
                .unwrap_or_default();
            let r = &d.registered;
            items.push(WorkItem {
                dossier: r.dossier,
                subject: r.subject,
                name: r.name.clone(),
                kind: r.kind,
                category: r.category,
                leader: r.leader,
                cycle: r.cycle,
                org: r.org,
                deciding_org: r.deciding_org,
                state: d.state,
                action: "appraise".to_owned(),
                proposed_grade: proposed,
                score: d.self_review.as_ref().and_then(|s| s.score),
                warnings,
            });
        }
    }
    json!({ "items": items, "truncated": truncated })
}
