//! The portal's side of the command bus: every HTTP call becomes one or
//! more commands or queries on `<prefix>.cmd.<service>.<kind>`, sent with
//! the caller's actor and trace, and every answer or refusal becomes the
//! HTTP answer (`crate::error`).
//!
//! Events travel between the services asynchronously, so a service may
//! refuse a command only because it has not yet seen the step before it
//! (appraisal has not seen the meeting a board recorded a moment ago).
//! [`Services::command_catching_up`] retries such a refusal for a short
//! while, with the same command id, when the service that owns the earlier
//! step says the step happened; a refusal that stands is answered as it
//! came.

use std::future::Future;
use std::time::{Duration, Instant};

use gradeflow_proto::{Actor, CommandId, OrgId, Rejection, Role};
use gradeflow_service::client::{CommandClient, CommandFailure};
use serde_json::Value;

use crate::error::ApiError;

/// First pause before a catch-up retry; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(40);
const MAX_PAUSE: Duration = Duration::from_millis(320);

/// The services the portal forwards to.
#[derive(Debug, Clone)]
pub struct Services {
    client: CommandClient,
}

impl Services {
    /// Forwarding through `client`.
    pub fn new(client: CommandClient) -> Self {
        Self { client }
    }

    /// The command client.
    pub fn client(&self) -> &CommandClient {
        &self.client
    }

    /// The actor of the portal's own lookups (an org's parent, a dossier's
    /// org before the scope check): gradeflow itself. Only read-only queries
    /// are ever sent as it; commands always carry the caller's actor.
    pub fn portal_actor() -> Actor {
        Actor {
            sub: "portal".to_owned(),
            role: Role::System,
            org: OrgId(uuid::Uuid::nil()),
        }
    }

    /// A read-only query.
    pub async fn query(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        traceparent: Option<String>,
    ) -> Result<Value, ApiError> {
        self.query_as(service, kind, actor, payload, traceparent)
            .await
    }

    /// A read-only query whose answer is read straight into `R` (one parse
    /// of a large answer).
    pub async fn query_as<R: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        traceparent: Option<String>,
    ) -> Result<R, ApiError> {
        Ok(self
            .client
            .call_as(service, kind, actor, payload, CommandId::new(), traceparent)
            .await?)
    }

    /// A command, once.
    pub async fn command(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        command_id: CommandId,
        traceparent: Option<String>,
    ) -> Result<Value, CommandFailure> {
        self.client
            .call(service, kind, actor, payload, command_id, traceparent)
            .await
    }

    /// A command, retried for up to `wait` (same command id, so it is
    /// applied once) while `lagging` says a refusal is only the service not
    /// having seen an earlier step yet.
    #[allow(clippy::too_many_arguments)]
    pub async fn command_catching_up<L, Fut>(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        command_id: CommandId,
        traceparent: Option<String>,
        wait: Duration,
        lagging: L,
    ) -> Result<Value, ApiError>
    where
        L: Fn(Rejection) -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        loop {
            match self
                .command(
                    service,
                    kind,
                    actor,
                    payload.clone(),
                    command_id,
                    traceparent.clone(),
                )
                .await
            {
                Err(CommandFailure::Rejected(r))
                    if started.elapsed() + pause < wait && lagging(r.clone()).await =>
                {
                    tracing::debug!(code = %r.code, service, kind, "portal.command.catching_up");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                other => return Ok(other?),
            }
        }
    }
}
