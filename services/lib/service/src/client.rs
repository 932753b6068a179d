//! The caller's side of the command bus, as the portal, `gradeflow seed`,
//! the demo data and the system tests use it: typed commands in, the
//! service's answer (or its refusal) out.

use std::time::Duration;

use gradeflow_bus::{send_command, send_command_as, CommandError};
use gradeflow_proto::commands::Command;
use gradeflow_proto::{
    Actor, CommandEnvelope, CommandId, CommandReply, Names, Rejection, TypedReply,
};
use serde_json::Value;

/// Why a command brought no answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    /// The service refused it; nothing changed.
    #[error("refused: {} ({})", .0.code, .0.message)]
    Rejected(Rejection),
    /// The command did not reach a service, or its answer was lost.
    #[error(transparent)]
    Transport(#[from] CommandError),
    /// The payload could not be encoded.
    #[error("encoding the command: {0}")]
    Encode(#[from] serde_json::Error),
}

impl CommandFailure {
    /// The refusal, if it was one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            CommandFailure::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// Sends commands to gradeflow's services over NATS.
#[derive(Debug, Clone)]
pub struct CommandClient {
    client: async_nats::Client,
    names: Names,
    timeout: Duration,
}

impl CommandClient {
    /// A client under `names`, waiting at most `timeout` for each answer.
    pub fn new(client: async_nats::Client, names: Names, timeout: Duration) -> Self {
        Self {
            client,
            names,
            timeout,
        }
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends a typed command as `actor`; returns the service's answer.
    pub async fn send<C: Command>(
        &self,
        actor: &Actor,
        command: &C,
    ) -> Result<Value, CommandFailure> {
        let payload = serde_json::to_value(command)?;
        self.call(C::SERVICE, C::KIND, actor, payload, CommandId::new(), None)
            .await
    }

    /// Sends any command or query kind (e.g. `worklist.v1`) to `service`.
    pub async fn call(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        command_id: CommandId,
        traceparent: Option<String>,
    ) -> Result<Value, CommandFailure> {
        self.call_as(service, kind, actor, payload, command_id, traceparent)
            .await
    }

    /// [`CommandClient::call`], with the answer read straight into `R`
    /// (one parse of a large answer, such as a progress tree).
    pub async fn call_as<R: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        command_id: CommandId,
        traceparent: Option<String>,
    ) -> Result<R, CommandFailure> {
        let envelope = envelope(kind, actor, payload, command_id, traceparent);
        match send_command_as(&self.client, &self.names, service, &envelope, self.timeout).await? {
            TypedReply::Accepted { result, .. } => Ok(result),
            TypedReply::Rejected(r) => Err(CommandFailure::Rejected(r)),
        }
    }

    /// Sends a command and returns the service's reply as it came.
    pub async fn reply(
        &self,
        service: &str,
        kind: &str,
        actor: &Actor,
        payload: Value,
        command_id: CommandId,
        traceparent: Option<String>,
    ) -> Result<CommandReply, CommandFailure> {
        let envelope = envelope(kind, actor, payload, command_id, traceparent);
        Ok(send_command(&self.client, &self.names, service, &envelope, self.timeout).await?)
    }
}

fn envelope(
    kind: &str,
    actor: &Actor,
    payload: Value,
    command_id: CommandId,
    traceparent: Option<String>,
) -> CommandEnvelope {
    CommandEnvelope {
        command_id,
        kind: kind.to_owned(),
        actor: actor.clone(),
        traceparent,
        payload,
    }
}
