//! `/api/v1/dossiers/{id}…`: the steps of a dossier and its merged view
//! (`API.md` § Subjects and dossiers).
//!
//! Who acts: the submitter of the dossier's org files the self-review and
//! the meeting (submission); the appraiser of its deciding org appraises or
//! returns it (appraisal). The portal learns the dossier's org and deciding
//! org from submission (which registers every dossier) and checks the
//! caller's scope before sending; the service checks again.
//!
//! The view merges what submission knows (registration, self-review,
//! meeting, and the appraisals, returns and grades it observed, with the
//! history) with appraisal's own view, which is ahead of submission's for a
//! moment after an appraisal or a return.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use gradeflow_proto::commands::{
    AppraiseDossier, Command, RecordMeeting, ReturnDossier, SubmitSelfReview,
};
use gradeflow_proto::{DossierId, DossierState, OrgId, Rejection, Role};
use gradeflow_submission_domain::{transition, Action};
use serde_json::{json, Value};

use crate::access::Need;
use crate::error::ApiError;
use crate::forward::Services;
use crate::request::{Authed, Id, Posted};
use crate::state::PortalState;

/// `POST /api/v1/dossiers/{id}/self-review` (submitter) → 200 `{state}`.
#[tracing::instrument(name = "portal.dossiers.self_review", skip_all, fields(dossier_id = %id))]
pub async fn self_review(
    State(state): State<PortalState>,
    Id(id): Id<DossierId>,
    post: Posted,
) -> Result<Response, ApiError> {
    act::<SubmitSelfReview>(&state, id, &post, Action::FileSelfReview).await
}

/// `POST /api/v1/dossiers/{id}/meeting` (submitter) → 200 `{state}`.
#[tracing::instrument(name = "portal.dossiers.meeting", skip_all, fields(dossier_id = %id))]
pub async fn meeting(
    State(state): State<PortalState>,
    Id(id): Id<DossierId>,
    post: Posted,
) -> Result<Response, ApiError> {
    act::<RecordMeeting>(&state, id, &post, Action::RecordMeeting).await
}

/// `POST /api/v1/dossiers/{id}/appraisal` (appraiser of the deciding org)
/// → 200 `{state, warnings}`.
#[tracing::instrument(name = "portal.dossiers.appraise", skip_all, fields(dossier_id = %id))]
pub async fn appraise(
    State(state): State<PortalState>,
    Id(id): Id<DossierId>,
    post: Posted,
) -> Result<Response, ApiError> {
    act::<AppraiseDossier>(&state, id, &post, Action::Appraise).await
}

/// `POST /api/v1/dossiers/{id}/return` (appraiser of the deciding org) →
/// 200 `{state}`.
#[tracing::instrument(name = "portal.dossiers.return", skip_all, fields(dossier_id = %id))]
pub async fn return_dossier(
    State(state): State<PortalState>,
    Id(id): Id<DossierId>,
    post: Posted,
) -> Result<Response, ApiError> {
    act::<ReturnDossier>(&state, id, &post, Action::Return).await
}

/// One step on a dossier: parse the body (with the dossier from the path),
/// check the caller's scope on the org that acts, send it — retrying while
/// the service has not seen the step before (see `crate::forward`).
async fn act<C: Command>(
    state: &PortalState,
    id: DossierId,
    post: &Posted,
    action: Action,
) -> Result<Response, ApiError> {
    let input: C = post.json_with(&[("dossier", json!(id))])?;
    let view = lookup(state, id).await?;
    let (role, field) = match action {
        Action::FileSelfReview | Action::RecordMeeting => (Role::Submitter, "org"),
        _ => (Role::Appraiser, "deciding_org"),
    };
    let org: OrgId = view[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::internal("the dossier's view names no org"))?;
    let chain = state.orgs().chain(org).await?;
    let actor = post.caller.pick(Need::Act(role), &chain)?;
    let tp = post.traceparent.clone();
    let wait = state.config().catch_up_wait;
    let actor = &actor;
    state
        .answer(post, actor, StatusCode::OK, move |command_id| async move {
            state
                .services()
                .command_catching_up(
                    C::SERVICE,
                    C::KIND,
                    actor,
                    json!(input),
                    command_id,
                    tp,
                    wait,
                    |r: Rejection| async move {
                        matches!(r.code.as_str(), "wrong_state" | "unknown_dossier")
                            && allows(state, id, action).await
                    },
                )
                .await
        })
        .await
}

/// Whether the freshest state any service knows of dossier `id` allows
/// `action` (so a refusal of it is a service lagging behind).
pub async fn allows(state: &PortalState, id: DossierId, action: Action) -> bool {
    fresh_state(state, id)
        .await
        .is_some_and(|s| transition(s, action).is_ok())
}

/// The freshest state of dossier `id` across submission and appraisal.
pub async fn fresh_state(state: &PortalState, id: DossierId) -> Option<DossierState> {
    let actor = Services::portal_actor();
    let payload = json!({ "dossier": id });
    let (submission, appraisal) = tokio::join!(
        state.services().query(
            "submission",
            "get_dossier.v1",
            &actor,
            payload.clone(),
            None
        ),
        state
            .services()
            .query("appraisal", "get_dossier.v1", &actor, payload, None),
    );
    match (submission.ok(), appraisal.ok()) {
        (Some(s), a) => merged_state(&s, a.as_ref()),
        (None, Some(a)) => serde_json::from_value(a["state"].clone()).ok(),
        (None, None) => None,
    }
}

/// Submission's view of dossier `id`, as the portal itself reads it (to
/// find the org to check the caller's scope against). 404 when unknown.
async fn lookup(state: &PortalState, id: DossierId) -> Result<Value, ApiError> {
    state
        .services()
        .query(
            "submission",
            "get_dossier.v1",
            &Services::portal_actor(),
            json!({ "dossier": id }),
            None,
        )
        .await
}

fn at(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// When submission last recorded something about the dossier.
fn submission_latest(view: &Value) -> Option<DateTime<Utc>> {
    view["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| at(&h["at"]))
        .max()
}

/// When appraisal last appraised or returned the dossier.
fn appraisal_latest(view: &Value) -> Option<DateTime<Utc>> {
    let appraised = at(&view["appraisal"]["at"]);
    let returned = view["returns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| at(&r["at"]))
        .max();
    appraised.max(returned)
}

/// Whether appraisal's view holds an appraisal or a return submission has
/// not observed yet.
fn appraisal_ahead(submission: &Value, appraisal: &Value) -> bool {
    let state: Option<DossierState> = serde_json::from_value(appraisal["state"].clone()).ok();
    matches!(
        state,
        Some(DossierState::Appraised | DossierState::Returned)
    ) && appraisal_latest(appraisal) > submission_latest(submission)
}

/// The state of the fresher of the two views.
pub fn merged_state(submission: &Value, appraisal: Option<&Value>) -> Option<DossierState> {
    let view = match appraisal {
        Some(a) if appraisal_ahead(submission, a) => a,
        _ => submission,
    };
    serde_json::from_value(view["state"].clone()).ok()
}

/// `GET /api/v1/dossiers/{id}` (any role over the dossier's org) →
/// `{id, subject, cycle, org, state, self_review, meeting, appraisal,
/// decision, history, …}`.
#[tracing::instrument(name = "portal.dossiers.get", skip_all, fields(dossier_id = %id))]
pub async fn get(
    State(state): State<PortalState>,
    Id(id): Id<DossierId>,
    authed: Authed,
) -> Result<Response, ApiError> {
    let found = lookup(&state, id).await?;
    let org: OrgId = found["org"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::internal("the dossier's view names no org"))?;
    let chain = state.orgs().chain(org).await?;
    let actor = authed.caller.pick(Need::Read, &chain)?;
    // Read again as the caller, so the services' own scope check stands
    // behind the portal's.
    let payload = json!({ "dossier": id });
    let (submission, appraisal) = tokio::join!(
        state.services().query(
            "submission",
            "get_dossier.v1",
            &actor,
            payload.clone(),
            authed.traceparent.clone()
        ),
        state.services().query(
            "appraisal",
            "get_dossier.v1",
            &actor,
            payload,
            authed.traceparent.clone()
        ),
    );
    let mut view = submission?;
    // Appraisal's view is a bonus: a dossier it has not observed yet, or a
    // moment of unavailability, leaves submission's view as it is.
    if let Ok(a) = appraisal {
        merge_appraisal(&mut view, &a);
    }
    Ok(Json(view).into_response())
}

/// Folds appraisal's view into submission's: its appraisal and returns
/// (and state) when it is ahead, and the proposed grade it derived.
fn merge_appraisal(view: &mut Value, appraisal: &Value) {
    if appraisal_ahead(view, appraisal) {
        view["state"] = appraisal["state"].clone();
        view["appraisal"] = appraisal["appraisal"].clone();
        view["returns"] = appraisal["returns"].clone();
    }
    if view.get("proposed_grade").is_none() {
        view["proposed_grade"] = appraisal["proposed_grade"].clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fresher_view_gives_the_state() {
        let submission = json!({"state": "reviewed", "history": [
            {"kind": "meeting_recorded.v1", "at": "2026-01-01T10:00:00Z"}]});
        let appraised = json!({"state": "appraised", "appraisal": {"at": "2026-01-01T10:00:05Z"}, "returns": []});
        assert_eq!(
            merged_state(&submission, Some(&appraised)),
            Some(DossierState::Appraised)
        );
        // Once submission has observed it (and more), submission's wins.
        let later = json!({"state": "submitted", "history": [
            {"at": "2026-01-01T10:00:00Z"}, {"at": "2026-01-01T10:00:06Z"}, {"at": "2026-01-01T10:01:00Z"}]});
        let returned = json!({"state": "returned", "appraisal": null, "returns": [{"at": "2026-01-01T10:00:05Z"}]});
        assert_eq!(
            merged_state(&later, Some(&returned)),
            Some(DossierState::Submitted)
        );
        assert_eq!(
            merged_state(&submission, None),
            Some(DossierState::Reviewed)
        );
    }
}
