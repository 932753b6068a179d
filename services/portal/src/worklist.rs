//! `GET /api/v1/worklist`: the dossiers awaiting the caller's action, across
//! the three workflow services, by role: self-reviews and meetings
//! (submission) for a role covering `submitter`, appraisals (appraisal) for
//! one covering `appraiser`, decisions (approval, with the quota meters)
//! for one covering `authority`. Each grant is asked within its own
//! subtree; an item seen through two grants appears once.

use std::collections::HashSet;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_proto::{Actor, CycleId, Role};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::role_name;
use crate::error::ApiError;
use crate::request::{Authed, Params};
use crate::state::PortalState;

/// `GET /api/v1/worklist` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorklistParams {
    /// Only this cycle's dossiers.
    pub cycle: Option<CycleId>,
    /// At most this many items per service and grant.
    pub limit: Option<usize>,
}

/// `GET /api/v1/worklist?cycle=&limit=` → `{"items": [{dossier, subject,
/// name, kind, category, cycle, org, state, action, role, …}], "quota":
/// [{cycle, authority, group, excellent, good, max_excellent}],
/// "truncated": bool}`.
#[tracing::instrument(name = "portal.worklist.get", skip_all)]
pub async fn get(
    State(state): State<PortalState>,
    Params(params): Params<WorklistParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let mut items = Vec::new();
    let mut quota = Vec::new();
    let mut truncated = false;
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut seen_meters: HashSet<String> = HashSet::new();
    let filter = json!({ "cycle": params.cycle, "limit": params.limit });
    for grant in &authed.caller.grants {
        let actor = Actor {
            sub: authed.caller.sub.clone(),
            role: grant.role,
            org: grant.org,
        };
        let asks = [
            (Role::Submitter, "submission", "items"),
            (Role::Appraiser, "appraisal", "items"),
            (Role::Authority, "approval", "dossiers"),
        ];
        for (needed, service, list) in asks {
            if !grant.role.covers(needed) {
                continue;
            }
            let answer = state
                .services()
                .query(
                    service,
                    "worklist.v1",
                    &actor,
                    filter.clone(),
                    authed.traceparent.clone(),
                )
                .await?;
            truncated |= answer["truncated"].as_bool().unwrap_or(false)
                || answer["total"]
                    .as_u64()
                    .zip(answer[list].as_array().map(|a| a.len() as u64))
                    .is_some_and(|(total, shown)| total > shown);
            for mut item in answer[list].as_array().cloned().unwrap_or_default() {
                if service == "approval" {
                    item["state"] = json!("appraised");
                    item["action"] = json!("decide");
                }
                item["role"] = json!(role_name(grant.role));
                let key = (
                    item["dossier"].as_str().unwrap_or_default().to_owned(),
                    item["action"].as_str().unwrap_or_default().to_owned(),
                );
                if seen.insert(key) {
                    items.push(item);
                }
            }
            for meter in answer["quota"].as_array().cloned().unwrap_or_default() {
                if seen_meters.insert(meter_key(&meter)) {
                    quota.push(meter);
                }
            }
        }
    }
    Ok(Json(json!({ "items": items, "quota": quota, "truncated": truncated })).into_response())
}

fn meter_key(meter: &Value) -> String {
    format!(
        "{}/{}/{}",
        meter["cycle"], meter["authority"], meter["group"]
    )
}
