//! `/api/v1/cycles…`: opening and reading review cycles, and registering
//! subjects (which opens their dossiers) — `API.md` § Hierarchy and cycles,
//! § Subjects and dossiers. Opening a cycle needs `central` at the root;
//! registering a subject needs `submitter` (or `central`) over its org.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_proto::commands::{Command, OpenCycle, RegisterSubject};
use gradeflow_proto::{CycleId, Role};
use serde_json::json;
use tracing::field::{display, Empty};

use crate::access::Need;
use crate::error::ApiError;
use crate::request::{Authed, Id, Posted};
use crate::state::PortalState;

/// `POST /api/v1/cycles` (central at the root) → 201 the cycle as opened.
#[tracing::instrument(name = "portal.cycles.open", skip_all, fields(cycle_id = Empty))]
pub async fn open(State(state): State<PortalState>, post: Posted) -> Result<Response, ApiError> {
    let input: OpenCycle = post.json()?;
    if let Some(id) = input.id {
        tracing::Span::current().record("cycle_id", display(id));
    }
    // A cycle covers the whole tree: the grant must sit at the root.
    let any = post.caller.pick_any(Need::Act(Role::Central))?;
    let root = state.orgs().root_of(any.org).await?;
    let actor = post.caller.pick(Need::Act(Role::Central), &[root])?;
    let tp = post.traceparent.clone();
    let (state, actor) = (&state, &actor);
    state
        .answer(&post, actor, StatusCode::CREATED, move |id| async move {
            Ok(state
                .services()
                .command(
                    OpenCycle::SERVICE,
                    OpenCycle::KIND,
                    actor,
                    json!(input),
                    id,
                    tp,
                )
                .await?)
        })
        .await
}

/// `GET /api/v1/cycles/{cycle}` → the cycle as opened.
#[tracing::instrument(name = "portal.cycles.get", skip_all, fields(cycle_id = %cycle))]
pub async fn get(
    State(state): State<PortalState>,
    Id(cycle): Id<CycleId>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let actor = authed.caller.pick_any(Need::Read)?;
    let found = state
        .services()
        .query(
            "submission",
            "get_cycle.v1",
            &actor,
            json!({ "cycle": cycle }),
            authed.traceparent,
        )
        .await?;
    Ok(Json(found).into_response())
}

/// `POST /api/v1/cycles/{cycle}/subjects` (submitter over the org) → 201
/// `{subject, dossier, state}`.
#[tracing::instrument(name = "portal.cycles.register_subject", skip_all, fields(cycle_id = %cycle, org_id = Empty))]
pub async fn register_subject(
    State(state): State<PortalState>,
    Id(cycle): Id<CycleId>,
    post: Posted,
) -> Result<Response, ApiError> {
    let input: RegisterSubject = post.json_with(&[("cycle", json!(cycle))])?;
    tracing::Span::current().record("org_id", display(input.org));
    let chain = state.orgs().chain(input.org).await?;
    let actor = post.caller.pick(Need::Act(Role::Submitter), &chain)?;
    let tp = post.traceparent.clone();
    let (state, actor) = (&state, &actor);
    state
        .answer(&post, actor, StatusCode::CREATED, move |id| async move {
            Ok(state
                .services()
                .command(
                    RegisterSubject::SERVICE,
                    RegisterSubject::KIND,
                    actor,
                    json!(input),
                    id,
                    tp,
                )
                .await?)
        })
        .await
}
