//! Read-only queries over the same request/reply as commands
//! (`<prefix>.cmd.submission.<query>`): they append nothing and answer
//! `accepted` with the `result`. The payload and answer types live here, not
//! in `gradeflow-proto`: they are the portal's private conversation with this
//! service, and the portal's HTTP answers (`API.md`) are the contract.
//!
//! Who may read: the registry and the cycles are the map everyone navigates
//! by, so any caller may read them; a dossier only within the caller's
//! subtree (any role, auditors included).
//!
//! Every query answers from the model except `get_dossier.v1`: the model
//! says whether the caller may read the dossier and where its events are
//! ([`Answer::Dossier`]), and the service reads those events from the store
//! after releasing the model and folds them ([`dossier_view_of`]).

use chrono::{DateTime, Utc};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::{
    Actor, CommandEnvelope, CycleId, DossierId, DossierState, OrgId, Rejection, Role,
};
use gradeflow_service::{payload, OrgNode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cycles::cycle_result;
use crate::detail::DossierDetail;
use crate::model::{awaited, SubmissionModel};
use crate::refusals::{not_readable, unknown_cycle, unknown_dossier, unknown_org};

/// `get_org.v1`: one org with its children.
pub const GET_ORG: &str = "get_org.v1";
/// `find_org.v1`: the orgs with a code.
pub const FIND_ORG: &str = "find_org.v1";
/// `get_cycle.v1`: a cycle as opened.
pub const GET_CYCLE: &str = "get_cycle.v1";
/// `get_dossier.v1`: a dossier with its history.
pub const GET_DOSSIER: &str = "get_dossier.v1";
/// `worklist.v1`: the dossiers awaiting the caller as submitter.
pub const WORKLIST: &str = "worklist.v1";

/// Every query kind this service answers.
pub const KINDS: [&str; 5] = [GET_ORG, FIND_ORG, GET_CYCLE, GET_DOSSIER, WORKLIST];

/// The default and the largest number of worklist items in one answer.
pub const WORKLIST_LIMIT: (usize, usize) = (500, 10_000);

/// `get_org.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOrg {
    /// The org.
    pub org: OrgId,
}

/// `find_org.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindOrg {
    /// The exact code.
    pub code: String,
}

/// `get_cycle.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetCycle {
    /// The cycle.
    pub cycle: CycleId,
}

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

/// An org as `GET /orgs/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgView {
    /// Its id.
    pub id: OrgId,
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: gradeflow_proto::Tier,
    /// Parent (`null` for the root).
    pub parent: Option<OrgId>,
    /// Current children.
    pub children: Vec<OrgId>,
    /// Province code (routing key), `null` above provinces.
    pub province: Option<String>,
    /// Set when it was merged into another org.
    pub merged_into: Option<OrgId>,
}

impl From<&OrgNode> for OrgView {
    fn from(n: &OrgNode) -> Self {
        Self {
            id: n.id,
            code: n.code.clone(),
            name: n.name.clone(),
            tier: n.tier.clone(),
            parent: n.parent,
            children: n.children.iter().copied().collect(),
            province: n.province.clone(),
            merged_into: n.merged_into,
        }
    }
}

/// One item of the submitter's worklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: gradeflow_proto::SubjectId,
    /// The subject's name.
    pub name: String,
    /// Individual or collective.
    pub kind: gradeflow_proto::SubjectKind,
    /// The form.
    pub category: gradeflow_proto::Category,
    /// The cycle.
    pub cycle: CycleId,
    /// The org it belongs to.
    pub org: OrgId,
    /// Its state.
    pub state: DossierState,
    /// What is awaited: `self_review` or `meeting`.
    pub action: String,
}

/// What a query answers from the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The answer itself.
    Ready(Value),
    /// A dossier the caller may read, and the store positions of its
    /// events: the answer is [`dossier_view_of`] those events.
    Dossier {
        /// The dossier.
        id: DossierId,
        /// Where its events are, ascending.
        events: Vec<i64>,
    },
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `get_org.v1`.
    GetOrg(GetOrg),
    /// `find_org.v1`.
    FindOrg(FindOrg),
    /// `get_cycle.v1`.
    GetCycle(GetCycle),
    /// `get_dossier.v1`.
    GetDossier(GetDossier),
    /// `worklist.v1`.
    Worklist(Worklist),
}

impl Query {
    /// Reads a query envelope (its kind must be one of [`KINDS`]).
    pub fn parse(cmd: &CommandEnvelope) -> Result<Query, Rejection> {
        Ok(match cmd.kind.as_str() {
            GET_ORG => Query::GetOrg(payload(cmd)?),
            FIND_ORG => Query::FindOrg(payload(cmd)?),
            GET_CYCLE => Query::GetCycle(payload(cmd)?),
            GET_DOSSIER => Query::GetDossier(payload(cmd)?),
            // An absent payload (`null`) reads as "no filter".
            _ if cmd.payload.is_null() => Query::Worklist(Worklist::default()),
            _ => Query::Worklist(payload(cmd)?),
        })
    }

    /// The answer from `model`, for `actor`.
    pub fn answer(&self, model: &SubmissionModel, actor: &Actor) -> Result<Answer, Rejection> {
        let value = match self {
            Query::GetOrg(q) => model
                .orgs
                .get(q.org)
                .map(|n| json!(OrgView::from(n)))
                .ok_or_else(|| unknown_org(q.org))?,
            Query::FindOrg(q) => json!(model
                .orgs
                .by_code(q.code.trim())
                .map(OrgView::from)
                .into_iter()
                .collect::<Vec<_>>()),
            Query::GetCycle(q) => model
                .cycles
                .get(&q.cycle)
                .map(|c| {
                    let mut v = cycle_result(&c.opened);
                    v["opened_at"] = json!(c.opened_at);
                    v["completed_at"] = json!(c.completed_at);
                    v
                })
                .ok_or_else(|| unknown_cycle(q.cycle))?,
            Query::GetDossier(q) => {
                let d = model
                    .dossiers
                    .get(&q.dossier)
                    .ok_or_else(|| unknown_dossier(q.dossier))?;
                if actor.role != Role::System && !model.orgs.is_within(d.org, actor.org) {
                    return Err(not_readable(q.dossier, actor.org));
                }
                return Ok(Answer::Dossier {
                    id: q.dossier,
                    events: d.events.to_vec(),
                });
            }
            Query::Worklist(q) => worklist(model, actor, q),
        };
        Ok(Answer::Ready(value))
    }
}

fn with_at(mut value: Value, at: DateTime<Utc>) -> Value {
    if let Some(map) = value.as_object_mut() {
        // The dossier id is the view's own `id`; repeating it adds nothing.
        map.remove("dossier");
        map.insert("at".into(), json!(at));
    }
    value
}

/// The view of dossier `id` from its events as read from the store (see
/// [`DossierDetail::fold`]); `unknown_dossier` when its registration is not
/// among them. The caller reads them once the steps the model holds have
/// committed (`Engine::settled`), so each is there.
pub fn dossier_view_of(id: DossierId, events: &[StoredEvent]) -> Result<Value, Rejection> {
    DossierDetail::fold(id, events)
        .map(|d| dossier_view(&d))
        .ok_or_else(|| unknown_dossier(id))
}

/// A dossier as `GET /dossiers/{id}` answers it, as far as submission
/// knows it (its own steps and the appraisals, returns and grades it
/// observed).
pub fn dossier_view(d: &DossierDetail) -> Value {
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
        "self_review": d.self_review.as_ref().map(|(e, at)| with_at(json!(e), *at)),
        "meeting": d.meeting.as_ref().map(|(e, at)| with_at(json!(e), *at)),
        "appraisal": d.appraisal.as_ref().map(|(e, at)| with_at(json!(e), *at)),
        "returns": d.returns.iter().map(|(e, at)| with_at(json!(e), *at)).collect::<Vec<_>>(),
        "decision": d.decision,
        "opened_for_decision": d.opened_for_decision,
        "history": d.history,
    })
}

/// The dossiers awaiting `actor` as submitter within its subtree, the
/// subtree walked breadth first (upper units first), each unit's in the
/// order they were registered. A caller whose role does not cover the
/// submitter's has nothing to do here.
///
/// It reads the lists of the units that may have something awaited
/// ([`SubmissionModel::may_await`]) and the records in them, never every
/// dossier of the subtree: a unit whose dossiers are all past the meeting
/// costs nothing but the walk.
pub fn worklist(model: &SubmissionModel, actor: &Actor, q: &Worklist) -> Value {
    let (default, max) = WORKLIST_LIMIT;
    let limit = q.limit.unwrap_or(default).min(max);
    let mut items = Vec::new();
    let mut truncated = false;
    let top = match actor.role {
        Role::System => model.orgs.root().map(|r| r.id),
        role if role.covers(Role::Submitter) => Some(actor.org),
        _ => None,
    };
    'walk: for org in top.map(|t| model.subtree(t)).unwrap_or_default() {
        if !model.may_await(org, q.cycle) {
            continue;
        }
        let Some(listed) = model.by_org.get(&org) else {
            continue;
        };
        for id in listed.iter() {
            let Some(d) = model.dossiers.get(id) else {
                continue;
            };
            if q.cycle.is_some_and(|c| c != d.cycle) {
                continue;
            }
            let Some(action) = awaited(d.state) else {
                continue;
            };
            if items.len() == limit {
                truncated = true;
                break 'walk;
            }
            items.push(WorkItem {
                dossier: *id,
                subject: d.subject,
                name: d.name.to_string(),
                kind: d.kind,
                category: d.category,
                cycle: d.cycle,
                org: d.org,
                state: d.state,
                action: action.to_owned(),
            });
        }
    }
    json!({ "items": items, "truncated": truncated })
}
