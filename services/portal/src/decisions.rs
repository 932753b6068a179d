//! `POST /api/v1/decisions`: one authority's decision document, checked
//! whole by the approval service (`API.md` § Decisions) — first grades, or
//! re-grades (`"kind": "regrade"`, each grade naming the record it
//! supersedes and why). Needs `authority` (or `central`) over the deciding
//! org. A refusal by the rulebook is 422 `rule_violation` with every
//! violation in `details.violations`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use gradeflow_proto::commands::{Command, DecideBatch, DecisionKind};
use gradeflow_proto::{DossierId, Rejection, Role};
use gradeflow_submission_domain::Action;
use serde_json::json;
use tracing::field::display;

use crate::access::Need;
use crate::dossiers::allows;
use crate::error::ApiError;
use crate::forward::Services;
use crate::request::Posted;
use crate::state::PortalState;

/// `POST /api/v1/decisions` → 201 `{id, records: [{seq, dossier, grade,
/// hash, signature, key_id}]}`.
#[tracing::instrument(name = "portal.decisions.decide", skip_all, fields(org_id = tracing::field::Empty, grades = tracing::field::Empty))]
pub async fn decide(State(state): State<PortalState>, post: Posted) -> Result<Response, ApiError> {
    let batch: DecideBatch = post.json()?;
    let span = tracing::Span::current();
    span.record("org_id", display(batch.authority));
    span.record("grades", batch.grades.len());
    let chain = state.orgs().chain(batch.authority).await?;
    let actor = post.caller.pick(Need::Act(Role::Authority), &chain)?;
    let tp = post.traceparent.clone();
    let wait = state.config().catch_up_wait;
    let actor = &actor;
    let kind = batch.kind;
    let state = &state;
    state
        .answer(
            &post,
            actor,
            StatusCode::CREATED,
            move |command_id| async move {
                state
                    .services()
                    .command_catching_up(
                        DecideBatch::SERVICE,
                        DecideBatch::KIND,
                        actor,
                        json!(batch),
                        command_id,
                        tp,
                        wait,
                        |r: Rejection| async move { approval_lags(state, kind, &r).await },
                    )
                    .await
            },
        )
        .await
}

/// Whether approval refused only because it has not yet observed what
/// submission or appraisal already hold: the org or the cycle, or a
/// dossier's appraisal.
async fn approval_lags(state: &PortalState, kind: DecisionKind, r: &Rejection) -> bool {
    let lookup = |service: &'static str, query: &'static str, payload| async move {
        state
            .services()
            .query(service, query, &Services::portal_actor(), payload, None)
            .await
            .is_ok()
    };
    match r.code.as_str() {
        "unknown_org" => {
            lookup(
                "submission",
                "get_org.v1",
                json!({ "org": r.details["org"] }),
            )
            .await
        }
        "unknown_cycle" => {
            lookup(
                "submission",
                "get_cycle.v1",
                json!({ "cycle": r.details["cycle"] }),
            )
            .await
        }
        code @ ("unknown_dossier" | "wrong_state") => {
            let Some(dossier) = r.details["dossier"]
                .as_str()
                .and_then(|s| s.parse::<DossierId>().ok())
            else {
                return false;
            };
            match kind {
                DecisionKind::Decide => allows(state, dossier, Action::Decide).await,
                // A re-grade's dossier is approval's own (decided there);
                // only one it has not seen at all can be a lag.
                DecisionKind::Regrade => {
                    code == "unknown_dossier" && allows(state, dossier, Action::Regrade).await
                }
            }
        }
        _ => false,
    }
}
