//! `gradeflow-portal`: the HTTP edge of gradeflow (`ARCHITECTURE.md` §
//! Processes and data flow, § Security). It serves the public REST API v1
//! of `API.md` — exactly its paths, bodies, answers and error shape, also
//! described as OpenAPI 3.1 at `GET /api/v1/openapi.json` — by forwarding
//! each call as a command or query to the services over NATS
//! request/reply. It owns no domain data.
//!
//! What it adds on the way:
//! * **authentication** — bearer JWTs (EdDSA or RS256) verified against the
//!   local key of `gradeflow up` and/or configured keys ([`auth`]);
//! * **authorisation** — the org a call touches must lie in the subtree of
//!   a granted role that covers what the call needs; the first such grant
//!   becomes the command's actor ([`access`]); the services check again;
//! * **precise bad-input answers** — bodies are parsed into the proto
//!   command types (which refuse unknown fields) before anything is sent,
//!   bodies over 1 MiB are refused, every error has the API's shape in
//!   English and Vietnamese ([`error`], [`request`]);
//! * **idempotency keys** — a keyed POST's command id is derived from the
//!   caller and the key, and the first answer is kept in the portal's own
//!   event store ([`idempotency`]);
//! * **catching up** — a command refused only because its service has not
//!   yet seen the step before it is retried briefly ([`forward`]).
//!
//! Entry points for the binary: [`PortalConfig`], [`PortalState::open`],
//! [`router`]; for `gradeflow token`: [`LocalKeys`] and [`mint_token`].

pub mod access;
pub mod audit;
pub mod auth;
pub mod config;
pub mod cycles;
pub mod decisions;
pub mod dossiers;
pub mod error;
pub mod forward;
pub mod idempotency;
pub mod import;
pub mod openapi;
pub mod orgs;
pub mod progress;
pub mod report;
pub mod request;
pub mod state;
pub mod ui;
pub mod worklist;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gradeflow_kit::Metrics;
use tracing::Instrument;

pub use auth::{mint_token, Auth, Caller, Claims, Grant, LocalKeys};
pub use config::{JwtConfig, PortalConfig};
pub use error::ApiError;
pub use state::{OpenError, PortalState};

/// Every route of the API: method and path, as served and as described in
/// the OpenAPI document (a test holds the two to each other).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/orgs"),
    ("GET", "/api/v1/orgs"),
    ("POST", "/api/v1/orgs/import"),
    ("POST", "/api/v1/orgs/merge"),
    ("GET", "/api/v1/orgs/{id}"),
    ("POST", "/api/v1/cycles"),
    ("GET", "/api/v1/cycles/{cycle}"),
    ("POST", "/api/v1/cycles/{cycle}/subjects"),
    ("GET", "/api/v1/cycles/{cycle}/progress"),
    ("GET", "/api/v1/cycles/{cycle}/progress/stream"),
    ("GET", "/api/v1/cycles/{cycle}/report"),
    ("GET", "/api/v1/dossiers/{id}"),
    ("POST", "/api/v1/dossiers/{id}/self-review"),
    ("POST", "/api/v1/dossiers/{id}/meeting"),
    ("POST", "/api/v1/dossiers/{id}/appraisal"),
    ("POST", "/api/v1/dossiers/{id}/return"),
    ("GET", "/api/v1/worklist"),
    ("POST", "/api/v1/decisions"),
    ("GET", "/api/v1/audit/decisions"),
    ("GET", "/api/v1/audit/verify"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The portal's HTTP application: the API v1 routes, `/healthz`, `/readyz`
/// and `/metrics` (from the state's `Health` and `Metrics`), JSON answers
/// for unknown paths and methods, and a span per request that continues the
/// caller's W3C trace.
pub fn router(state: PortalState) -> Router {
    let api = Router::new()
        .route("/api/v1/orgs", post(orgs::create).get(orgs::find))
        .route("/api/v1/orgs/import", post(orgs::import))
        .route("/api/v1/orgs/merge", post(orgs::merge))
        .route("/api/v1/orgs/{id}", get(orgs::get))
        .route("/api/v1/cycles", post(cycles::open))
        .route("/api/v1/cycles/{cycle}", get(cycles::get))
        .route(
            "/api/v1/cycles/{cycle}/subjects",
            post(cycles::register_subject),
        )
        .route("/api/v1/cycles/{cycle}/progress", get(progress::node))
        .route(
            "/api/v1/cycles/{cycle}/progress/stream",
            get(progress::stream),
        )
        .route("/api/v1/cycles/{cycle}/report", get(progress::report))
        .route("/api/v1/dossiers/{id}", get(dossiers::get))
        .route(
            "/api/v1/dossiers/{id}/self-review",
            post(dossiers::self_review),
        )
        .route("/api/v1/dossiers/{id}/meeting", post(dossiers::meeting))
        .route("/api/v1/dossiers/{id}/appraisal", post(dossiers::appraise))
        .route(
            "/api/v1/dossiers/{id}/return",
            post(dossiers::return_dossier),
        )
        .route("/api/v1/worklist", get(worklist::get))
        .route("/api/v1/decisions", post(decisions::decide))
        .route("/api/v1/audit/decisions", get(audit::decisions))
        .route("/api/v1/audit/verify", get(audit::verify))
        // Every call above needs a token, checked before anything else of
        // the request (its path ids, its body) is looked at.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            request::authenticate,
        ))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .with_state(state.clone());
    api.merge(gradeflow_kit::router(
        state.health().clone(),
        state.metrics().clone(),
    ))
    // The web UI's pages and assets (no token: the API calls they make
    // carry it).
    .merge(ui::router())
    .fallback(no_route)
    .method_not_allowed_fallback(wrong_method)
    .layer(middleware::from_fn_with_state(
        state.metrics().clone(),
        trace_request,
    ))
}

async fn no_route(uri: Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

/// One `portal.http` span per request, a child of the caller's span when
/// the request carries a valid `traceparent` (so the portal's spans and the
/// services' join the caller's trace), with the route and the status; and
/// `portal_http_requests_total{route, status}`.
async fn trace_request(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "portal.http",
        method = %req.method(),
        route = %route,
        status = tracing::field::Empty,
    );
    if let Some(tp) = request::incoming_traceparent(req.headers()) {
        if let Err(e) = gradeflow_kit::trace::set_parent(&span, &tp) {
            tracing::debug!(error = %e, "portal.trace.malformed");
        }
    }
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("status", status.as_u16());
    metrics
        .counter_with(
            "portal_http_requests_total",
            "HTTP requests answered by the portal, by route and status.",
            &[("route", &route), ("status", status.as_str())],
        )
        .inc();
    response
}
