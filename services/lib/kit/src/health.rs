//! Liveness, readiness and metrics endpoints, served by every service
//! (`ARCHITECTURE.md` § Observability):
//!
//! * `GET /healthz`: the process is alive and serving HTTP → `200 {"status":"ok"}`.
//!   It checks nothing else on purpose: an orchestrator restarts a process
//!   whose liveness fails, and restarting because NATS is down would only
//!   add a restart storm to an outage.
//! * `GET /readyz`: every registered component is ready → `200`, else `503`
//!   with `{"status":"unready","components":{name:{ready,detail}}}`. A load
//!   balancer stops sending work to an unready replica; during shutdown the
//!   service marks itself unready first so traffic drains away before intake
//!   stops.
//! * `GET /metrics`: the [`Metrics`] registry in Prometheus text format.
//!
//! Components report in two ways: push ([`Health::set_ready`], for state the
//! component already tracks, such as "consumer attached") or pull
//! ([`Health::add_check`], an async probe run on each `/readyz`, bounded by
//! [`CHECK_TIMEOUT`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// Longest a pull check may take before it counts as not ready. Probes are
/// usually polled every few seconds; a check slower than this would make
/// `/readyz` itself time out.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness of one component as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// Whether the component can do its work.
    pub ready: bool,
    /// Why not, or what it is connected to; free text for operators.
    pub detail: String,
}

/// Readiness of the whole process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `true` when every component is ready (or none is registered).
    pub ready: bool,
    /// Every component by name.
    pub components: BTreeMap<String, ComponentStatus>,
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

#[derive(Default)]
struct Inner {
    states: Mutex<BTreeMap<String, ComponentStatus>>,
    checks: Mutex<BTreeMap<String, Check>>,
}

/// Shared readiness registry. Cheap to clone (one `Arc`); hand a clone to
/// every component.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let states = self
            .inner
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Health")
            .field("states", &*states)
            .field("checks", &checks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Health {
    /// An empty registry: ready, since nothing is waited for.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `component` as not ready yet (`detail` = "starting"), so the
    /// process is unready from the start until the component says otherwise.
    /// Register every component at wiring time, before serving `/readyz`.
    pub fn register(&self, component: impl Into<String>) {
        self.set_ready(component, false, "starting");
    }

    /// Records whether `component` is ready, with a short reason.
    pub fn set_ready(&self, component: impl Into<String>, ready: bool, detail: impl Into<String>) {
        let status = ComponentStatus {
            ready,
            detail: detail.into(),
        };
        // Poisoning only means a panic elsewhere while holding the lock; the
        // map of plain values is still usable.
        self.inner
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(component.into(), status);
    }

    /// Adds an async probe for `component`, run on every `/readyz`: `Ok(detail)`
    /// is ready, `Err(detail)` is not, and so is a probe slower than
    /// [`CHECK_TIMEOUT`]. Keep probes cheap (a ping, not a query).
    pub fn add_check<F, Fut>(&self, component: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(component.into(), check);
    }

    /// Forgets `component` (both its pushed state and its probe).
    pub fn remove(&self, component: &str) {
        self.inner
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(component);
        self.inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(component);
    }

    /// Current readiness: pushed states plus the result of every probe, run
    /// concurrently so `/readyz` takes as long as the slowest probe, not the
    /// sum. A component with both a pushed state and a probe must pass both.
    pub async fn readiness(&self) -> Readiness {
        let mut components = self
            .inner
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Clone the probes out so no lock is held across an await.
        let checks: Vec<(String, Check)> = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, check)| (name.clone(), Arc::clone(check)))
            .collect();

        let probe_names: Vec<String> = checks.iter().map(|(name, _)| name.clone()).collect();
        let mut running = tokio::task::JoinSet::new();
        for (name, check) in checks {
            running.spawn(async move {
                let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("check timed out after {CHECK_TIMEOUT:?}")),
                };
                (name, result)
            });
        }
        let mut probed = BTreeMap::new();
        while let Some(joined) = running.join_next().await {
            // A panicking probe loses its name with its task; it is caught
            // below as "no result" for that component.
            if let Ok((name, result)) = joined {
                probed.insert(name, result);
            }
        }

        for name in probe_names {
            let status = match probed.remove(&name) {
                Some(Ok(detail)) => ComponentStatus {
                    ready: true,
                    detail,
                },
                Some(Err(detail)) => ComponentStatus {
                    ready: false,
                    detail,
                },
                None => ComponentStatus {
                    ready: false,
                    detail: "check failed to run".to_owned(),
                },
            };
            components
                .entry(name)
                .and_modify(|pushed| {
                    if pushed.ready && !status.ready {
                        *pushed = status.clone();
                    }
                })
                .or_insert(status);
        }

        Readiness {
            ready: components.values().all(|c| c.ready),
            components,
        }
    }
}

/// The `/healthz`, `/readyz` and `/metrics` routes. Merge them into the
/// service's own router (`app.merge(kit::router(health, metrics))`) or serve
/// them alone.
pub fn router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(health))
        .route("/metrics", get(metrics_text).with_state(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let readiness = health.readiness().await;
    let (code, status) = if readiness.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unready")
    };
    (
        code,
        Json(json!({"status": status, "components": readiness.components})),
    )
}

async fn metrics_text(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String, Option<String>) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    fn json_of(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn healthz_is_ok_even_when_unready() {
        let health = Health::new();
        health.register("store");
        let (status, body, _) = get_path(router(health, Metrics::new()), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_of(&body), json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn readyz_is_ok_when_nothing_is_registered() {
        let (status, body, _) = get_path(router(Health::new(), Metrics::new()), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_of(&body), json!({"status": "ready", "components": {}}));
    }

    #[tokio::test]
    async fn readyz_is_unavailable_until_every_component_is_ready() {
        let health = Health::new();
        let app = router(health.clone(), Metrics::new());
        health.register("store");
        health.set_ready("bus", true, "connected to nats://127.0.0.1:4222");

        let (status, body, _) = get_path(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            json_of(&body),
            json!({"status": "unready", "components": {
                "bus": {"ready": true, "detail": "connected to nats://127.0.0.1:4222"},
                "store": {"ready": false, "detail": "starting"},
            }})
        );

        health.set_ready("store", true, "sqlite");
        let (status, body, _) = get_path(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_of(&body)["status"], "ready");

        // Marking a component unready (say, at the start of shutdown) flips it back.
        health.set_ready("bus", false, "draining");
        let (status, _, _) = get_path(app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn async_checks_decide_readiness_and_a_slow_one_times_out() {
        let health = Health::new();
        health.add_check("nats", || async { Ok("ping 1 ms".to_owned()) });
        let readiness = health.readiness().await;
        assert!(readiness.ready);
        assert_eq!(readiness.components["nats"].detail, "ping 1 ms");

        health.add_check("postgres", || async {
            Err("connection refused".to_owned())
        });
        let readiness = health.readiness().await;
        assert!(!readiness.ready);
        assert_eq!(
            readiness.components["postgres"],
            ComponentStatus {
                ready: false,
                detail: "connection refused".into()
            }
        );

        health.remove("postgres");
        tokio::time::pause();
        health.add_check("slow", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(String::new())
        });
        let readiness = health.readiness().await;
        assert!(!readiness.components["slow"].ready);
        assert!(readiness.components["slow"].detail.contains("timed out"));
    }

    #[tokio::test]
    async fn a_failing_probe_overrides_a_ready_push_but_not_the_reverse() {
        let health = Health::new();
        health.set_ready("bus", true, "attached");
        health.add_check("bus", || async { Err("ping failed".to_owned()) });
        assert_eq!(
            health.readiness().await.components["bus"].detail,
            "ping failed"
        );

        health.set_ready("bus", false, "detached");
        health.add_check("bus", || async { Ok("pong".to_owned()) });
        assert_eq!(
            health.readiness().await.components["bus"].detail,
            "detached"
        );
    }

    #[tokio::test]
    async fn a_panicking_probe_counts_as_unready() {
        let health = Health::new();
        health.add_check("broken", || async { panic!("probe bug") });
        let readiness = health.readiness().await;
        assert!(!readiness.ready);
        assert!(!readiness.components["broken"].ready);
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let metrics = Metrics::new();
        metrics
            .counter_with(
                crate::metrics::EVENTS_APPENDED,
                "Events appended.",
                &[("service", "approval")],
            )
            .add(3);
        let (status, body, content_type) =
            get_path(router(Health::new(), metrics), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(
            body.contains("gradeflow_events_appended_total{service=\"approval\"} 3\n"),
            "{body}"
        );
    }
}
