//! `/api/v1/orgs…`: registering, importing, reading, finding and merging
//! organisations (`API.md` § Hierarchy and cycles). The registry lives in
//! the submission service; managing it needs `central` over the org
//! touched (a new org's parent, every org of a merge). Reading the map is
//! open to every authenticated caller, as the registry's own queries are.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_proto::commands::{Command, MergeOrgs, RegisterOrg};
use gradeflow_proto::{OrgId, Role};
use serde::Deserialize;
use serde_json::json;
use tracing::field::{display, Empty};

use crate::access::Need;
use crate::error::ApiError;
use crate::import;
use crate::request::{Authed, Id, Params, Posted};
use crate::state::PortalState;

/// `POST /api/v1/orgs` (central over the parent) → 201 `{id, code, name,
/// tier, parent}`.
#[tracing::instrument(name = "portal.orgs.create", skip_all, fields(org_id = Empty))]
pub async fn create(State(state): State<PortalState>, post: Posted) -> Result<Response, ApiError> {
    let input: RegisterOrg = post.json()?;
    let actor = match input.parent {
        Some(parent) => {
            tracing::Span::current().record("org_id", display(parent));
            let chain = state.orgs().chain(parent).await?;
            post.caller.pick(Need::Act(Role::Central), &chain)?
        }
        // The root: there is no org to check against yet; the registry
        // refuses a second root and any role but central.
        None => post.caller.pick_any(Need::Act(Role::Central))?,
    };
    let tp = post.traceparent.clone();
    let (state, actor) = (&state, &actor);
    state
        .answer(&post, actor, StatusCode::CREATED, move |id| async move {
            Ok(state
                .services()
                .command(
                    RegisterOrg::SERVICE,
                    RegisterOrg::KIND,
                    actor,
                    json!(input),
                    id,
                    tp,
                )
                .await?)
        })
        .await
}

/// `POST /api/v1/orgs/import` (central): a JSON array of orgs or CSV
/// `code,name,tier,parent_code`; validated whole, then registered parents
/// first with fixed ids → 201 `{"created": N}`. See [`crate::import`].
#[tracing::instrument(name = "portal.orgs.import", skip_all, fields(rows = Empty))]
pub async fn import(State(state): State<PortalState>, post: Posted) -> Result<Response, ApiError> {
    let rows = import::parse(&post)?;
    tracing::Span::current().record("rows", rows.len());
    let plan = import::plan(&state, &post.caller, rows).await?;
    let actor = plan.actor.clone();
    let tp = post.traceparent.clone();
    let (state, actor) = (&state, &actor);
    state
        .answer(&post, actor, StatusCode::CREATED, |id| {
            import::apply(state, plan, id, tp)
        })
        .await
}

/// `GET /api/v1/orgs/{id}` → `{id, code, name, tier, parent, children}`.
#[tracing::instrument(name = "portal.orgs.get", skip_all, fields(org_id = %id))]
pub async fn get(
    State(state): State<PortalState>,
    Id(id): Id<OrgId>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let actor = authed.caller.pick_any(Need::Read)?;
    let org = state
        .services()
        .query(
            "submission",
            "get_org.v1",
            &actor,
            json!({ "org": id }),
            authed.traceparent,
        )
        .await?;
    Ok(Json(org).into_response())
}

/// `GET /api/v1/orgs?code=` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindParams {
    /// The exact code.
    pub code: Option<String>,
}

/// `GET /api/v1/orgs?code=CODE` → `[{org}]` (empty when none).
#[tracing::instrument(name = "portal.orgs.find", skip_all)]
pub async fn find(
    State(state): State<PortalState>,
    Params(params): Params<FindParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let Some(code) = params.code.filter(|c| !c.trim().is_empty()) else {
        return Err(ApiError::invalid(
            "name the code to look for: /api/v1/orgs?code=CODE",
            "Cần nêu mã tổ chức cần tìm: /api/v1/orgs?code=MÃ",
        )
        .with_details(json!({ "field": "code" })));
    };
    let actor = authed.caller.pick_any(Need::Read)?;
    let found = state
        .services()
        .query(
            "submission",
            "find_org.v1",
            &actor,
            json!({ "code": code }),
            authed.traceparent,
        )
        .await?;
    Ok(Json(found).into_response())
}

/// `POST /api/v1/orgs/merge` (central over every org named) `{from, into}`
/// → 200 `{into, from, children_moved}`; the merged orgs' history stays.
#[tracing::instrument(name = "portal.orgs.merge", skip_all, fields(org_id = Empty))]
pub async fn merge(State(state): State<PortalState>, post: Posted) -> Result<Response, ApiError> {
    let input: MergeOrgs = post.json()?;
    tracing::Span::current().record("org_id", display(input.into));
    let mut chains = vec![state.orgs().chain(input.into).await?];
    for from in &input.from {
        chains.push(state.orgs().chain(*from).await?);
    }
    let actor = post.caller.pick_all(Need::Act(Role::Central), &chains)?;
    let tp = post.traceparent.clone();
    let (state, actor) = (&state, &actor);
    state
        .answer(&post, actor, StatusCode::OK, move |id| async move {
            Ok(state
                .services()
                .command(
                    MergeOrgs::SERVICE,
                    MergeOrgs::KIND,
                    actor,
                    json!(input),
                    id,
                    tp,
                )
                .await?)
        })
        .await
}
