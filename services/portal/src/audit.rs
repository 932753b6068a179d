//! `/api/v1/audit/…`: the decision log, read-only, for auditors and central
//! staff (`API.md` § Progress, reports, audit). The approval service keeps
//! the log and narrows a page to the records whose authority lies in the
//! actor's subtree.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_proto::CycleId;
use serde::Deserialize;
use serde_json::json;

use crate::access::Need;
use crate::error::ApiError;
use crate::request::{Authed, Params};
use crate::state::PortalState;

/// `GET /api/v1/audit/decisions` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this cycle.
    pub cycle: Option<CycleId>,
    /// Records after this seq.
    pub after: Option<u64>,
    /// At most this many records (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /api/v1/audit/decisions?cycle=&after=&limit=` (auditor, central) →
/// `{"records": [{seq, decision, number, dossier, subject, grade, authority,
/// actor, at, supersedes, prev_hash, hash, signature, key_id, …}],
/// "next_after": SEQ|null}`.
#[tracing::instrument(name = "portal.audit.decisions", skip_all)]
pub async fn decisions(
    State(state): State<PortalState>,
    Params(params): Params<AuditParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let actor = authed.caller.pick_any(Need::Audit)?;
    let page = state
        .services()
        .query(
            "approval",
            "audit_decisions.v1",
            &actor,
            json!({
                "cycle": params.cycle,
                "after": params.after.unwrap_or(0),
                "limit": params.limit,
            }),
            authed.traceparent,
        )
        .await?;
    Ok(Json(page).into_response())
}

/// `GET /api/v1/audit/verify` (auditor, central) → `{ok, records, head,
/// problems: [{seq, problem}]}`.
#[tracing::instrument(name = "portal.audit.verify", skip_all)]
pub async fn verify(
    State(state): State<PortalState>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let actor = authed.caller.pick_any(Need::Audit)?;
    let report = state
        .services()
        .query(
            "approval",
            "verify_log.v1",
            &actor,
            json!({}),
            authed.traceparent,
        )
        .await?;
    Ok(Json(report).into_response())
}
