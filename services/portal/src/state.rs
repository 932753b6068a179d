//! [`PortalState`]: what every handler shares — the command client, the
//! token verifier, the idempotency record, the org directory and the
//! configuration — and [`PortalState::open`], which builds it for a
//! deployment and registers the portal's readiness checks.

use std::future::Future;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_eventstore::{Store, StoreError, StoreOptions};
use gradeflow_kit::{Health, Metrics};
use gradeflow_proto::{Actor, CommandId};
use gradeflow_service::client::CommandClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::access::OrgDirectory;
use crate::auth::{Auth, AuthSetupError, KeyFileError, LocalKeys};
use crate::config::PortalConfig;
use crate::error::ApiError;
use crate::forward::Services;
use crate::idempotency::{Begin, IdempotencyStore, Keyed};
use crate::request::Posted;

/// Header set on an answer replayed from the idempotency record.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";

/// Why the portal could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The local signing key could not be opened or created.
    #[error(transparent)]
    LocalKey(#[from] KeyFileError),
    /// A configured key or JWKS file is unusable.
    #[error(transparent)]
    Keys(#[from] AuthSetupError),
    /// No key is trusted at all: every call would be refused.
    #[error("portal: no token key is trusted (enable the local key or set GRADEFLOW_JWT_KEY_FILE / GRADEFLOW_JWKS_FILE)")]
    NoKeys,
    /// The data dir could not be created.
    #[error("portal: cannot create the data dir {}", path.display())]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The idempotency store could not be opened.
    #[error("portal: cannot open its idempotency store")]
    Store(#[source] StoreError),
}

/// The handlers' shared state. Cheap to clone.
#[derive(Clone)]
pub struct PortalState {
    inner: Arc<Inner>,
}

struct Inner {
    services: Services,
    orgs: OrgDirectory,
    auth: Auth,
    idempotency: IdempotencyStore,
    config: PortalConfig,
    health: Health,
    metrics: Metrics,
    /// Cancelled when the portal shuts down: ends the open progress
    /// streams, which would otherwise hold a graceful shutdown open.
    streams: CancellationToken,
}

impl std::fmt::Debug for PortalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalState")
            .field("prefix", &self.inner.config.names.prefix())
            .field("auth", &self.inner.auth)
            .finish()
    }
}

impl PortalState {
    /// The state from its parts (tests, or a binary that builds them
    /// itself). `health` and `metrics` are served at `/readyz` and
    /// `/metrics`; nothing is registered in them here.
    pub fn new(
        commands: CommandClient,
        auth: Auth,
        store: Store,
        config: PortalConfig,
        health: Health,
        metrics: Metrics,
    ) -> Self {
        let services = Services::new(commands);
        Self {
            inner: Arc::new(Inner {
                orgs: OrgDirectory::new(services.clone()),
                services,
                auth,
                idempotency: IdempotencyStore::new(store),
                config,
                health,
                metrics,
                streams: CancellationToken::new(),
            }),
        }
    }

    /// Opens the portal of a deployment: the trusted keys (the local key
    /// under `<data_dir>/portal/`, created on first start, and the
    /// configured files), the idempotency store (`portal.db`, or schema
    /// `portal`), a command client on `nats`; registers the readiness
    /// checks (`portal.nats`, `portal.store`, `portal.<service>` for each
    /// of `config.ready_services`) in `health`.
    pub async fn open(
        config: PortalConfig,
        nats: async_nats::Client,
        health: Health,
        metrics: Metrics,
    ) -> Result<PortalState, OpenError> {
        let auth = auth_for(&config)?;
        if config.database_url.is_none() {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        }
        let store = Store::connect(
            &config.store_url(),
            StoreOptions {
                schema: config.database_url.as_ref().map(|_| "portal".to_owned()),
                pool_size: 4,
                ..StoreOptions::default()
            },
        )
        .await
        .map_err(OpenError::Store)?;
        let commands =
            CommandClient::new(nats.clone(), config.names.clone(), config.command_timeout);
        let state = PortalState::new(commands, auth, store, config, health, metrics);
        state.register_checks(nats);
        Ok(state)
    }

    fn register_checks(&self, nats: async_nats::Client) {
        let health = &self.inner.health;
        health.add_check("portal.nats", move || {
            let state = nats.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok("connected".to_owned()),
                    other => Err(format!("NATS connection is {other:?}")),
                }
            }
        });
        let idem = self.inner.idempotency.clone();
        health.add_check("portal.store", move || {
            let idem = idem.clone();
            async move {
                idem.ping()
                    .await
                    .map(|()| "idempotency store answers".to_owned())
                    .map_err(|e| e.to_string())
            }
        });
        for service in &self.inner.config.ready_services {
            let (kind, payload) = probe(service);
            let services = self.inner.services.clone();
            let service = service.clone();
            health.add_check(format!("portal.{service}"), move || {
                let services = services.clone();
                let service = service.clone();
                let payload = payload.clone();
                async move {
                    // Any answer, a refusal included, proves the service is
                    // serving; only a transport failure does not.
                    match services
                        .command(
                            &service,
                            kind,
                            &Services::portal_actor(),
                            payload,
                            CommandId::new(),
                            None,
                        )
                        .await
                    {
                        Ok(_) | Err(gradeflow_service::client::CommandFailure::Rejected(_)) => {
                            Ok("answers".to_owned())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            });
        }
    }

    /// The services the portal forwards to.
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// The org directory (ancestry for scope checks).
    pub fn orgs(&self) -> &OrgDirectory {
        &self.inner.orgs
    }

    /// The token verifier.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The configuration.
    pub fn config(&self) -> &PortalConfig {
        &self.inner.config
    }

    /// The readiness registry served at `/readyz`.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// The metrics served at `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The idempotency record.
    pub fn idempotency(&self) -> &IdempotencyStore {
        &self.inner.idempotency
    }

    /// Ends the open progress streams (their clients reconnect elsewhere):
    /// call it when shutdown begins, or hand the shutdown token to
    /// [`PortalState::end_streams_on`], so a graceful HTTP shutdown does not
    /// wait on them forever.
    pub fn end_streams(&self) {
        self.inner.streams.cancel();
    }

    /// Ends the progress streams when `shutdown` is cancelled.
    pub fn end_streams_on(&self, shutdown: CancellationToken) {
        let streams = self.inner.streams.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            streams.cancel();
        });
    }

    /// The token that ends the progress streams.
    pub fn streams_token(&self) -> &CancellationToken {
        &self.inner.streams
    }

    /// Ends the streams and closes the idempotency store (commits what is
    /// queued).
    pub async fn close(&self) {
        self.end_streams();
        self.inner.idempotency.store().close().await;
    }

    /// Answers a POST as `actor`: `run` sends the command(s) with the
    /// command id it is given and returns the service's answer, answered
    /// with `ok`. With an `Idempotency-Key`, the key is recorded first (a
    /// different request under the same key is refused), the command id is
    /// derived from the caller and the key, and the first answer is kept
    /// and replayed to retries.
    pub async fn answer<F, Fut>(
        &self,
        post: &Posted,
        actor: &Actor,
        ok: StatusCode,
        run: F,
    ) -> Result<Response, ApiError>
    where
        F: FnOnce(CommandId) -> Fut,
        Fut: Future<Output = Result<Value, ApiError>>,
    {
        let Some(key) = post.key.as_deref() else {
            let value = run(CommandId::new()).await?;
            return Ok((ok, Json(value)).into_response());
        };
        let keyed = Keyed {
            sub: &post.caller.sub,
            key,
            method: &post.method,
            path: &post.path,
            body: &post.body,
            actor,
            traceparent: post.traceparent.clone(),
        };
        let command_id = match self.inner.idempotency.begin(&keyed).await? {
            Begin::Replay { status, body } => {
                let mut response = (status, Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                return Ok(response);
            }
            Begin::Proceed(id) => id,
        };
        let outcome = run(command_id).await;
        let (status, body) = match &outcome {
            Ok(value) => (ok, value.clone()),
            Err(e) => (e.status, e.body()),
        };
        self.inner
            .idempotency
            .finish(&keyed, command_id, status, &body)
            .await;
        outcome.map(|value| (ok, Json(value)).into_response())
    }
}

/// The trusted keys of `config`.
fn auth_for(config: &PortalConfig) -> Result<Auth, OpenError> {
    let jwt = &config.jwt;
    let mut builder = Auth::builder().leeway(jwt.leeway_secs);
    let mut any = false;
    if jwt.local {
        let keys = LocalKeys::open(&config.data_dir)?;
        builder = builder.trust_local(&keys)?;
        any = true;
    }
    if let Some(path) = &jwt.key_file {
        builder = builder.trust_key_file(path, jwt.issuer.clone(), jwt.audience.clone())?;
        any = true;
    }
    if let Some(path) = &jwt.jwks_file {
        builder = builder.trust_jwks_file(path, jwt.issuer.clone(), jwt.audience.clone())?;
        any = true;
    }
    if !any {
        return Err(OpenError::NoKeys);
    }
    Ok(builder.build())
}

/// A cheap query each service answers at once (a refusal counts): the
/// readiness probe.
fn probe(service: &str) -> (&'static str, Value) {
    let nil = uuid::Uuid::nil();
    match service {
        "submission" => ("get_org.v1", json!({ "org": nil })),
        "appraisal" => ("get_dossier.v1", json!({ "dossier": nil })),
        // Past the last record: an empty page, whatever the log's size.
        "approval" => (
            "audit_decisions.v1",
            json!({ "after": u64::MAX, "limit": 1 }),
        ),
        "progress" => ("progress_version.v1", json!({})),
        _ => ("readiness_probe.v1", json!({})),
    }
}
