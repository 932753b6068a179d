//! The read-only queries approval answers over the same request/reply as
//! its commands (answered `accepted` with the result and no events):
//! `worklist.v1` (what an authority may decide now, with the quota meter;
//! the subjects' names read from the store),
//! `audit_decisions.v1` (the decision log, paged, read from the store) and
//! `verify_log.v1` (the chain and signatures checked against the key
//! registry, see [`crate::log::verify`]).

use std::collections::{BTreeSet, HashMap};

use gradeflow_approval_domain::{max_excellent, ratio_bp, GroupCounts};
use gradeflow_eventstore::{Store, StoreError, StoredEvent};
use gradeflow_proto::events::{DecisionLogRecord, Event, SubjectRegistered};
use gradeflow_proto::{Actor, CycleId, DossierId, ErrorCode, OrgId, Rejection, Role};
use gradeflow_service::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::log;
use crate::model::{ApprovalModel, DossierInfo, DueEntry, Pending};

/// Kind of the worklist query.
pub const WORKLIST: &str = "worklist.v1";
/// Kind of the decision-log query.
pub const AUDIT_DECISIONS: &str = "audit_decisions.v1";
/// Kind of the log verification query.
pub const VERIFY_LOG: &str = "verify_log.v1";

/// Most worklist entries returned when no limit is asked.
const WORKLIST_DEFAULT_LIMIT: usize = 500;
/// Most worklist entries returned at all.
const WORKLIST_MAX_LIMIT: usize = 5_000;
/// Records per page of the decision log when no limit is asked.
const AUDIT_DEFAULT_LIMIT: usize = 100;
/// Most records per page.
const AUDIT_MAX_LIMIT: usize = 1_000;

/// `worklist.v1`: the appraised dossiers an authority may decide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorklistQuery {
    /// Only this cycle.
    #[serde(default)]
    pub cycle: Option<CycleId>,
    /// The subtree to list (default: the org of the caller's role); the
    /// caller's role must cover it.
    #[serde(default)]
    pub org: Option<OrgId>,
    /// Most entries (default 500, at most 5000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `audit_decisions.v1`: a page of the decision log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditDecisionsQuery {
    /// Only this cycle.
    #[serde(default)]
    pub cycle: Option<CycleId>,
    /// Records after this seq (0: from the start).
    #[serde(default)]
    pub after: u64,
    /// Most records (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `verify_log.v1`: no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyLogQuery {}

/// Reads a query's payload; `null` means all defaults.
pub fn query_payload<T: serde::de::DeserializeOwned + Default>(
    kind: &str,
    payload: &Value,
) -> Result<T, Rejection> {
    if payload.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(payload.clone()).map_err(|e| {
        ErrorCode::InvalidInput
            .reject(
                format!("invalid {kind} payload: {e}"),
                format!("Tham số truy vấn không hợp lệ: {e}"),
            )
            .with_details(json!({"kind": kind}))
    })
}

/// Auditors and central staff read the decision log.
pub fn authorize_audit(actor: &Actor) -> Result<(), Rejection> {
    if matches!(actor.role, Role::Auditor | Role::Central | Role::System) {
        Ok(())
    } else {
        Err(ErrorCode::OutOfScope
            .reject(
                format!("the role {:?} may not read the decision log", actor.role),
                "Vai trò của người dùng không được phép xem nhật ký quyết định",
            )
            .with_details(json!({"needed_role": ["auditor", "central"]})))
    }
}

/// The worklist as the model answers it: every entry but the subjects'
/// names, which [`named`] reads from the store once the model's lock is
/// released.
#[derive(Debug, Clone, PartialEq)]
pub struct Worklist {
    /// The answer, each entry's `name` still `null`.
    pub(crate) answer: Value,
    /// Per entry, in order: the dossier and the position of its
    /// `subject_registered`.
    pub(crate) registrations: Vec<(DossierId, i64)>,
}

/// The worklist: appraised dossiers whose deciding org lies in the scope,
/// each with its readiness (`waiting_for`: for a collective, the member
/// dossiers and child units still open), and the quota meter of every
/// authority and group in the scope (`excellent`, `good`, `max_excellent`,
/// counting current grades). The names come from the store: see [`named`].
///
/// Entries are ordered by deciding org, org, individuals before the
/// collective, then dossier id; `total` counts them all, `limit` caps the
/// page. It reads the model's index of the dossiers waiting for a decision
/// ([`ApprovalModel::due`]), never every dossier: the tallies per authority
/// give the total and the meters, and the waiting dossiers of the
/// authorities in the scope are read in order only until the page is full.
pub fn worklist(
    model: &ApprovalModel,
    actor: &Actor,
    query: &WorklistQuery,
) -> Result<Worklist, Rejection> {
    let scope = query.org.unwrap_or(actor.org);
    model.tree.authorize(actor, Role::Authority, scope)?;
    let limit = query
        .limit
        .unwrap_or(WORKLIST_DEFAULT_LIMIT)
        .clamp(1, WORKLIST_MAX_LIMIT);
    // The authorities in the scope with dossiers waiting, as (deciding org,
    // cycle): the order the entries follow.
    let mut authorities: Vec<(OrgId, CycleId)> = model
        .due_groups
        .keys()
        .filter(|(cycle, authority)| {
            query.cycle.is_none_or(|c| c == *cycle) && model.tree.is_within(*authority, scope)
        })
        .map(|(cycle, authority)| (*authority, *cycle))
        .collect();
    authorities.sort_unstable();
    let mut total = 0usize;
    let mut meters: BTreeSet<(CycleId, OrgId, String)> = BTreeSet::new();
    for (authority, cycle) in &authorities {
        if let Some(groups) = model.due_groups.get(&(*cycle, *authority)) {
            total = total.saturating_add(groups.values().sum());
            meters.extend(groups.keys().map(|g| (*cycle, *authority, g.clone())));
        }
    }
    for ((cycle, authority), groups) in &model.counts {
        if query.cycle.is_none_or(|q| q == *cycle) && model.tree.is_within(*authority, scope) {
            meters.extend(groups.keys().map(|g| (*cycle, *authority, g.clone())));
        }
    }
    // One authority at a time (all its cycles together, as they interleave
    // in the order), until the page is full.
    let mut due: Vec<(OrgId, DueEntry)> = Vec::new();
    for same in authorities.chunk_by(|a, b| a.0 == b.0) {
        if due.len() >= limit {
            break;
        }
        let from = due.len();
        for (authority, cycle) in same {
            if let Some(set) = model.due.get(&(*cycle, *authority)) {
                due.extend(set.iter().map(|entry| (*authority, *entry)));
            }
        }
        due[from..].sort_unstable();
    }
    due.truncate(limit);
    let none = Pending::default();
    let mut registrations: Vec<(DossierId, i64)> = Vec::with_capacity(due.len());
    let mut entries: Vec<Value> = Vec::with_capacity(due.len());
    for (_, (_, _, id)) in due {
        // The index holds only dossiers with a record.
        let Some(d) = model.dossiers.get(&id) else {
            continue;
        };
        registrations.push((id, d.registered));
        entries.push(worklist_entry(model, id, &d, &none));
    }
    let quota = quota_meters(model, meters);
    Ok(Worklist {
        answer: json!({"dossiers": entries, "total": total, "quota": quota}),
        registrations,
    })
}

/// The worklist's answer with each subject's name, read from its
/// `subject_registered` in `store`. The worklist was read once every
/// registration it lists had committed (`Engine::read_committed`); a
/// position that does not hold that dossier's registration is a store that
/// cannot answer.
pub async fn named(store: &Store, list: Worklist) -> Result<Value, StoreError> {
    let Worklist {
        mut answer,
        registrations,
    } = list;
    let positions: Vec<i64> = registrations.iter().map(|(_, p)| *p).collect();
    let names = subject_names(store.read_positions(&positions).await?);
    if let Some((_, position)) = registrations
        .iter()
        .find(|(d, p)| names.get(p).is_none_or(|(id, _)| id != d))
    {
        return Err(StoreError::Corrupt {
            position: *position,
            problem: "not the subject_registered the approval model read there".to_owned(),
        });
    }
    if let Some(entries) = answer.get_mut("dossiers").and_then(Value::as_array_mut) {
        for (entry, (_, position)) in entries.iter_mut().zip(&registrations) {
            if let Some((_, name)) = names.get(position) {
                entry["name"] = Value::String(name.clone());
            }
        }
    }
    Ok(answer)
}

/// The dossier and subject name of each `subject_registered` among
/// `events`, by position.
fn subject_names(events: Vec<StoredEvent>) -> HashMap<i64, (DossierId, String)> {
    events
        .into_iter()
        .filter(|e| e.kind == SubjectRegistered::KIND)
        .filter_map(|e| {
            let registered: SubjectRegistered = serde_json::from_value(e.payload).ok()?;
            Some((e.position, (registered.dossier, registered.name)))
        })
        .collect()
}

/// A page of the decision log: records after `after`, of `cycle` when
/// given, whose authority lies in the caller's scope (everything for a
/// role at the root), in seq order; `next_after` is the seq to ask after
/// for the next page (`null` at the end).
///
/// The records are read from the store (the model keeps none), `read`
/// events of the `decision-log` stream at a time (the first read only as
/// many as the page can take, plus one to know whether more follow),
/// outside the engine's lock; the model is asked, caught up, only who the
/// caller is and which authorities the scope covers. The outer `Err` is a
/// store that could not be read.
pub async fn audit_decisions(
    engine: &Engine<ApprovalModel>,
    actor: &Actor,
    query: &AuditDecisionsQuery,
    read: usize,
) -> Result<Result<Value, Rejection>, StoreError> {
    if let Err(r) = engine.read(|_| authorize_audit(actor)).await? {
        return Ok(Err(r));
    }
    let limit = query
        .limit
        .unwrap_or(AUDIT_DEFAULT_LIMIT)
        .clamp(1, AUDIT_MAX_LIMIT);
    let everything = actor.role == Role::System;
    // Whether an authority lies in the caller's scope, asked of the model
    // once per authority met.
    let mut in_scope: HashMap<OrgId, bool> = HashMap::new();
    let mut page: Vec<DecisionLogRecord> = Vec::new();
    let mut more = false;
    let mut after = query.after;
    let mut size = limit.saturating_add(1).min(read.max(1));
    'pages: loop {
        let chunk = log::read_page(engine.store(), after, size).await?;
        let records: Vec<DecisionLogRecord> = chunk
            .records
            .into_iter()
            .filter(|r| r.seq > query.after && query.cycle.is_none_or(|c| c == r.cycle))
            .collect();
        if !everything {
            let mut unknown: Vec<OrgId> = records
                .iter()
                .map(|r| r.authority)
                .filter(|a| !in_scope.contains_key(a))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            if !unknown.is_empty() {
                let judged: Vec<(OrgId, bool)> = engine
                    .read(|m| {
                        unknown
                            .iter()
                            .map(|a| (*a, m.tree.is_within(*a, actor.org)))
                            .collect()
                    })
                    .await?;
                in_scope.extend(judged);
            }
        }
        for record in records {
            if !everything && !in_scope.get(&record.authority).copied().unwrap_or(false) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break 'pages;
            }
            page.push(record);
        }
        match chunk.last {
            Some(last) if !chunk.end => after = last,
            _ => break,
        }
        size = read.max(1);
    }
    let next_after = if more {
        page.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Ok(json!({"records": page, "next_after": next_after})))
}

/// One dossier of the worklist's answer, as the model holds it (the name is
/// filled in from the store afterwards).
pub(crate) fn worklist_entry(
    model: &ApprovalModel,
    id: DossierId,
    d: &DossierInfo,
    none: &Pending,
) -> Value {
    let waiting_for = match d.kind {
        gradeflow_proto::SubjectKind::Collective => model.waiting_for(d.cycle, d.org, none),
        gradeflow_proto::SubjectKind::Individual => Vec::new(),
    };
    json!({
        "dossier": id,
        "subject": d.subject,
        "name": Value::Null,
        "cycle": d.cycle,
        "org": d.org,
        "deciding_org": d.deciding_org,
        "kind": d.kind,
        "category": d.category,
        "leader": d.leader,
        "quota_group": d.quota_group,
        "recommended_grade": d.recommended_grade,
        "score": d.score,
        "ready": waiting_for.is_empty(),
        "waiting_for": waiting_for,
    })
}

/// The quota meters of the worklist's answer: per (cycle, authority, group),
/// the current counts against the cycle's limit.
pub(crate) fn quota_meters(
    model: &ApprovalModel,
    meters: BTreeSet<(CycleId, OrgId, String)>,
) -> Vec<Value> {
    meters
        .into_iter()
        .map(|(cycle, authority, group)| {
            let counts: GroupCounts = model
                .counts
                .get(&(cycle, authority))
                .and_then(|groups| groups.get(&group))
                .copied()
                .unwrap_or_default();
            let settings = model.cycles.get(&cycle).map(|c| c.quota).unwrap_or_default();
            json!({
                "cycle": cycle,
                "authority": authority,
                "group": group,
                "excellent": counts.excellent,
                "good": counts.good,
                "max_excellent": max_excellent(ratio_bp(settings.ratio), counts.good, settings.rounding),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use gradeflow_eventstore::{AppendRequest, NewEvent, StoreOptions};
    use gradeflow_proto::{
        Category, CorrelationId, CycleId, DossierState, Metadata, SubjectId, SubjectKind,
        SubjectStatus,
    };

    fn registration(dossier: DossierId, name: &str) -> NewEvent {
        let e = SubjectRegistered {
            subject: SubjectId::new(),
            dossier,
            cycle: CycleId::new(),
            org: OrgId::new(),
            deciding_org: OrgId::new(),
            kind: SubjectKind::Individual,
            name: name.into(),
            category: Category::Member2B,
            leader: false,
            status: SubjectStatus::Active,
            quota_group: "individuals".into(),
            state: DossierState::Open,
        };
        NewEvent::new(
            dossier.stream(),
            SubjectRegistered::KIND,
            serde_json::to_value(e).unwrap(),
            Metadata {
                actor: Actor {
                    sub: "gradeflow".into(),
                    role: Role::System,
                    org: OrgId::new(),
                },
                correlation_id: CorrelationId::new(),
                causation_id: None,
                traceparent: None,
                service: "submission".into(),
                province: None,
            },
        )
    }

    fn list(registrations: Vec<(DossierId, i64)>) -> Worklist {
        let entries: Vec<Value> = registrations
            .iter()
            .map(|(d, _)| json!({"dossier": d, "name": null, "ready": true}))
            .collect();
        Worklist {
            answer: json!({"dossiers": entries, "total": entries.len(), "quota": []}),
            registrations,
        }
    }

    #[tokio::test]
    async fn names_are_read_where_the_model_saw_the_registrations() {
        let db = gradeflow_testkit::fresh_sqlite().unwrap();
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .unwrap();
        let (a, b, c) = (DossierId::new(), DossierId::new(), DossierId::new());
        store
            .append(AppendRequest::new(vec![
                registration(a, "Nguyễn Văn A"),
                registration(b, "Trần Thị B"),
            ]))
            .await
            .unwrap();

        // Names in the entries' order, each key where it was.
        let named_list = named(&store, list(vec![(b, 2), (a, 1)])).await.unwrap();
        assert_eq!(
            serde_json::to_string(&named_list).unwrap(),
            format!(
                "{{\"dossiers\":[{{\"dossier\":\"{b}\",\"name\":\"Trần Thị B\",\"ready\":true}},\
                 {{\"dossier\":\"{a}\",\"name\":\"Nguyễn Văn A\",\"ready\":true}}],\
                 \"total\":2,\"quota\":[]}}"
            )
        );

        // A position the store does not hold (the worklist is read once
        // its registrations committed, so this is a store that lost it).
        let missing = named(&store, list(vec![(a, 1), (c, 3)])).await;
        assert!(
            matches!(missing, Err(StoreError::Corrupt { position: 3, .. })),
            "{missing:?}"
        );

        // A position holding another dossier's registration: the store
        // cannot answer for this one.
        let wrong = named(&store, list(vec![(a, 2)])).await;
        assert!(
            matches!(wrong, Err(StoreError::Corrupt { position: 2, .. })),
            "{wrong:?}"
        );
        store.close().await;
    }
}
