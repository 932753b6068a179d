//! `/api/v1/cycles/{cycle}/progress…` and `/report`: the progress read
//! model (`API.md` § Progress, reports, audit), answered by the progress
//! service's queries `progress.v1 {cycle, org?, depth?}`, `report.v1
//! {cycle, org?}` and `progress_version.v1 {cycle?}`. Any role may read the
//! progress of an org within its subtree; without `org`, the org of the
//! caller's first grant.
//!
//! One `progress.v1` answer is one NATS message, so a large tree comes back
//! cut into pages (`children_truncated`, then `after`); HTTP has no such
//! limit, so both the node and the stream answer the whole tree, put
//! together by [`gradeflow_progress::assemble`].
//!
//! The live stream (Server-Sent Events) polls `progress_version.v1` — the
//! read model's position for the cycle, which moves on every event about
//! it — every
//! `progress_poll` (250 ms by default), re-reads the node only when the
//! position moved, and sends it only when the node itself changed; comments
//! keep idle connections open through proxies.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use gradeflow_progress::queries::ProgressQuery;
use gradeflow_progress::{assemble, AssembleError, ProgressNode};
use gradeflow_proto::{Actor, CycleId, OrgId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::Need;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::forward::Services;
use crate::report;
use crate::request::{Authed, Id, Params};
use crate::state::PortalState;

/// `…/progress` and `…/progress/stream` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressParams {
    /// The subtree's top (default: the org of the caller's first grant).
    pub org: Option<OrgId>,
    /// Levels of children to include.
    pub depth: Option<u32>,
}

/// `…/report` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// The subtree's top (default: the org of the caller's first grant).
    pub org: Option<OrgId>,
    /// `json` (default), `csv` or `xlsx`.
    pub format: Option<String>,
}

/// The org to report on and the actor to read it as.
async fn scope(
    state: &PortalState,
    caller: &Caller,
    org: Option<OrgId>,
) -> Result<(OrgId, Actor), ApiError> {
    let org = match org {
        Some(org) => org,
        None => caller.pick_any(Need::Read)?.org,
    };
    let chain = state.orgs().chain(org).await?;
    Ok((org, caller.pick(Need::Read, &chain)?))
}

fn progress_query(cycle: CycleId, org: OrgId, depth: Option<u32>) -> ProgressQuery {
    ProgressQuery {
        cycle,
        org: Some(org),
        depth,
    }
}

/// The whole tree `query` asks for: the `progress.v1` answer and, where it
/// was cut, the pages of the rest.
async fn whole_tree(
    services: &Services,
    actor: &Actor,
    query: ProgressQuery,
    traceparent: Option<String>,
) -> Result<ProgressNode, ApiError> {
    assemble(query, |page| {
        services.query_as(
            "progress",
            "progress.v1",
            actor,
            json!(page),
            traceparent.clone(),
        )
    })
    .await
    .map_err(|e| match e {
        AssembleError::Ask(e) => e,
        other => {
            tracing::error!(error = %other, "portal.progress.assemble_failed");
            ApiError::internal("the progress tree's pages could not be put together")
        }
    })
}

/// `GET /api/v1/cycles/{cycle}/progress?org=&depth=` → the progress node
/// `{org, code, tier, deadline, overdue, complete, totals, grades,
/// quota_groups, children}`.
#[tracing::instrument(name = "portal.progress.get", skip_all, fields(cycle_id = %cycle))]
pub async fn node(
    State(state): State<PortalState>,
    Id(cycle): Id<CycleId>,
    Params(params): Params<ProgressParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let (org, actor) = scope(&state, &authed.caller, params.org).await?;
    let node = whole_tree(
        state.services(),
        &actor,
        progress_query(cycle, org, params.depth),
        authed.traceparent,
    )
    .await?;
    Ok(Json(node).into_response())
}

/// `GET /api/v1/cycles/{cycle}/progress/stream?org=` → `text/event-stream`:
/// an `event: progress` with the node now, then again each time it changes
/// (`id` is the read model's position); an `event: error` with the error
/// body when the progress service stops answering (once, until it answers
/// again).
#[tracing::instrument(name = "portal.progress.stream", skip_all, fields(cycle_id = %cycle))]
pub async fn stream(
    State(state): State<PortalState>,
    Id(cycle): Id<CycleId>,
    Params(params): Params<ProgressParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let (org, actor) = scope(&state, &authed.caller, params.org).await?;
    let query = progress_query(cycle, org, params.depth);
    // Refuse an unknown cycle or org before the stream starts.
    let first = whole_tree(state.services(), &actor, query.clone(), None).await?;
    let poller = Poller {
        services: state.services().clone(),
        actor,
        cycle,
        query,
        every: state.config().progress_poll,
        position: None,
        last: None,
        first: Some(first),
        failing: false,
        stop: state.streams_token().clone(),
    };
    let keep_alive = KeepAlive::new()
        .interval(state.config().keep_alive)
        .text("keep-alive");
    let mut response = Sse::new(poller.into_stream())
        .keep_alive(keep_alive)
        .into_response();
    // Tell buffering proxies (nginx) to pass events through at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The state of one progress stream.
struct Poller {
    services: Services,
    actor: Actor,
    cycle: CycleId,
    query: ProgressQuery,
    every: Duration,
    position: Option<Value>,
    last: Option<ProgressNode>,
    first: Option<ProgressNode>,
    failing: bool,
    stop: tokio_util::sync::CancellationToken,
}

impl Poller {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut p| async move {
            let stop = p.stop.clone();
            tokio::select! {
                // The portal shuts down: end the stream (the client may
                // reconnect to another replica).
                () = stop.cancelled() => None,
                event = p.next_event() => Some((Ok(event), p)),
            }
        })
    }

    /// Waits for the next event to send.
    async fn next_event(&mut self) -> Event {
        if let Some(node) = self.first.take() {
            let data = encode(&node);
            self.last = Some(node);
            return Event::default().event("progress").data(data);
        }
        loop {
            tokio::time::sleep(self.every).await;
            let version = self
                .services
                .query(
                    "progress",
                    "progress_version.v1",
                    &self.actor,
                    json!({ "cycle": self.cycle }),
                    None,
                )
                .await;
            // The cycle's own position moves only with events about the
            // cycle; the store's position is the fallback.
            let position = match version {
                Ok(v) => v
                    .get("cycle_position")
                    .filter(|p| !p.is_null())
                    .unwrap_or(&v["position"])
                    .clone(),
                Err(e) => {
                    if let Some(event) = self.failed(e) {
                        return event;
                    }
                    continue;
                }
            };
            if self.position.as_ref() == Some(&position) {
                continue;
            }
            let node = match whole_tree(&self.services, &self.actor, self.query.clone(), None).await
            {
                Ok(node) => node,
                Err(e) => {
                    if let Some(event) = self.failed(e) {
                        return event;
                    }
                    continue;
                }
            };
            self.failing = false;
            self.position = Some(position.clone());
            if self.last.as_ref() != Some(&node) {
                let data = encode(&node);
                self.last = Some(node);
                return Event::default()
                    .event("progress")
                    .id(position.to_string())
                    .data(data);
            }
        }
    }

    /// An `error` event the first time polling fails, then silence until it
    /// works again.
    fn failed(&mut self, e: ApiError) -> Option<Event> {
        if self.failing {
            return None;
        }
        self.failing = true;
        Some(Event::default().event("error").data(e.body().to_string()))
    }
}

/// A node as one line of JSON, for an event's data.
fn encode(node: &ProgressNode) -> String {
    // Plain data structs always serialise.
    serde_json::to_string(node).unwrap_or_default()
}

/// `GET /api/v1/cycles/{cycle}/report?org=&format=json|csv|xlsx` → the
/// report as a download (`Content-Disposition: attachment`).
#[tracing::instrument(name = "portal.progress.report", skip_all, fields(cycle_id = %cycle))]
pub async fn report(
    State(state): State<PortalState>,
    Id(cycle): Id<CycleId>,
    Params(params): Params<ReportParams>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let format = report::Format::parse(params.format.as_deref())?;
    let (org, actor) = scope(&state, &authed.caller, params.org).await?;
    let data = report::fetch(state.services(), &actor, cycle, org, authed.traceparent).await?;
    let bytes = report::render(format, &data)?;
    let filename = format!("gradeflow-report-{cycle}-{org}.{}", format.extension());
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .map_err(|_| ApiError::internal("the report's file name is not a valid header"))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}
