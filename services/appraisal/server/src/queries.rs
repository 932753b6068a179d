//! Read-only queries over the command request/reply
//! (`<prefix>.cmd.appraisal.<query>`): they append nothing and answer
//! `accepted` with the `result`. Their payload and answer types live here:
//! they are the portal's private conversation with this service.

use gradeflow_eventstore::StoreError;
use gradeflow_proto::events::RuleWarning;
use gradeflow_proto::{
    Actor, Category, CommandEnvelope, CycleId, DossierId, DossierState, Facts, Grade, OrgId,
    Rejection, Role, Score, SubjectId, SubjectKind,
};
use gradeflow_service::{payload, Engine};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appraisals::warnings_for;
use crate::model::{AppraisalDossier, AppraisalModel, Board};
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
}

/// `get_dossier.v1`: dossier `q.dossier` as `actor` may read it. The record
/// is copied under the engine's lock once every append it may reflect has
/// committed (`Engine::read_committed`); the board's appraisal and returns
/// are then read from the store at the positions it keeps, outside the
/// lock, and folded with [`Board::fold`]. A store failure, or positions
/// that do not hold what the model put there, is the `Err` (the caller
/// answers `unavailable`).
pub async fn get_dossier(
    engine: &Engine<AppraisalModel>,
    actor: &Actor,
    q: &GetDossier,
) -> Result<Result<Value, Rejection>, StoreError> {
    let d = match engine
        .read_committed(|m| readable(m, actor, q.dossier))
        .await?
    {
        Ok(d) => d,
        Err(refused) => return Ok(Err(refused)),
    };
    let positions = d.board_positions();
    let events = if positions.is_empty() {
        Vec::new()
    } else {
        engine.store().read_positions(&positions).await?
    };
    match Board::fold(q.dossier, &positions, &events) {
        Some(board) => Ok(Ok(dossier_view(q.dossier, &d, &board))),
        None => Err(StoreError::Corrupt {
            position: positions.first().copied().unwrap_or_default(),
            problem: format!(
                "the appraisals and returns of dossier {} are not where the model has them",
                q.dossier
            ),
        }),
    }
}

/// A copy of dossier `id`'s record, if `actor` may read it.
pub fn readable(
    model: &AppraisalModel,
    actor: &Actor,
    id: DossierId,
) -> Result<AppraisalDossier, Rejection> {
    let d = model.dossiers.get(&id).ok_or_else(|| unknown_dossier(id))?;
    if actor.role != Role::System && !model.orgs.is_within(d.org, actor.org) {
        return Err(not_readable(id, actor.org));
    }
    Ok(AppraisalDossier::clone(&d))
}

/// Appraisal's view of dossier `id`: its registration, state, the standing
/// appraisal and every return (`board`, as read back from the store).
pub fn dossier_view(id: DossierId, d: &AppraisalDossier, board: &Board) -> Value {
    json!({
        "id": id,
        "subject": d.subject,
        "cycle": d.cycle,
        "org": d.org,
        "deciding_org": d.deciding_org,
        "kind": d.kind,
        "name": &*d.name,
        "category": d.category,
        "leader": d.leader,
        "status": d.status,
        "quota_group": &*d.quota_group,
        "state": d.state,
        "proposed_grade": d.proposed_grade(),
        "score": d.self_review.and_then(|s| s.score),
        "appraisal": board.appraisal.as_ref().map(|a| json!({
            "recommended_grade": a.event.recommended_grade,
            "facts": a.event.facts,
            "notes": a.event.notes,
            "warnings": a.event.warnings,
            "at": a.at,
            "actor": a.actor,
        })),
        "returns": board.returns.iter().map(|r| json!({
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
///
/// It walks the subtree breadth first and, per org, its worklist index
/// ([`AppraisalModel::awaiting`]: the dossiers awaiting appraisal, in the
/// order they were registered in), so it reads the records of dossiers
/// awaiting appraisal only, never the rest of the subtree's.
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
        let Some(listed) = model.awaiting.get(&org) else {
            continue;
        };
        for &(_, id) in listed.iter() {
            let Some(d) = model.dossiers.get(&id) else {
                continue;
            };
            if !d.awaits_appraisal() || q.cycle.is_some_and(|c| c != d.cycle) {
                continue;
            }
            if items.len() == limit {
                truncated = true;
                break 'walk;
            }
            let proposed = d.proposed_grade();
            let warnings = proposed
                .and_then(|g| warnings_for(model, id, &d, g, &no_facts).ok())
                .unwrap_or_default();
            items.push(WorkItem {
                dossier: id,
                subject: d.subject,
                name: d.name.to_string(),
                kind: d.kind,
                category: d.category,
                leader: d.leader,
                cycle: d.cycle,
                org: d.org,
                deciding_org: d.deciding_org,
                state: d.state,
                action: "appraise".to_owned(),
                proposed_grade: proposed,
                score: d.self_review.and_then(|s| s.score),
                warnings,
            });
        }
    }
    json!({ "items": items, "truncated": truncated })
}
