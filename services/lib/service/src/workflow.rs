//! The face a workflow service shows the runtime: how it answers commands and
//! which observed events it records and reacts to. The runtime (command
//! server, consumer loop, outbox relay) is wired once, for every service, in
//! terms of this trait.

use std::future::Future;

use gradeflow_eventstore::InboxEntry;
use gradeflow_proto::{CommandEnvelope, CommandReply, Envelope, ErrorCode, EventId, Rejection};

use crate::{Committing, ExecuteError, Outcome};

/// A workflow service (submission, appraisal, approval).
pub trait Workflow: Send + Sync + 'static {
    /// The service name: the `<service>` token of its subjects.
    fn service(&self) -> &'static str;

    /// Answers one command (or read-only query) addressed to the service.
    fn handle_command(&self, command: CommandEnvelope)
        -> impl Future<Output = CommandReply> + Send;

    /// Answers one command as the command server sends it: by default
    /// [`Workflow::handle_command`]'s reply; a service whose answer is
    /// large may encode it straight from its own types
    /// ([`gradeflow_bus::Reply::Encoded`]), byte for byte what
    /// `handle_command`'s reply encodes to.
    fn answer_command(
        &self,
        command: CommandEnvelope,
    ) -> impl Future<Output = gradeflow_bus::Reply> + Send {
        async move { gradeflow_bus::Reply::Typed(self.handle_command(command).await) }
    }

    /// Whether the service records events of `kind` published by others.
    fn observes(&self, kind: &str) -> bool;

    /// Queues the append that records an observed event (and the service's
    /// reactions to it) with the consumer's `inbox` entry, and returns its
    /// commit to await; see [`crate::Engine::observe`].
    fn observe(
        &self,
        envelope: &Envelope,
        inbox: InboxEntry,
    ) -> impl Future<Output = Result<Committing, ExecuteError>> + Send;
}

/// Turns the outcome of [`crate::Engine::execute`] into a command reply.
pub fn reply(outcome: Result<Outcome, ExecuteError>) -> CommandReply {
    match outcome {
        Ok(Outcome::Applied { events, result }) => CommandReply::Accepted {
            event_ids: events.iter().map(|e| e.event_id).collect::<Vec<EventId>>(),
            result,
        },
        // A retry: the answer of the first execution, no new events.
        Ok(Outcome::Duplicate { reply }) => CommandReply::Accepted {
            event_ids: Vec::new(),
            result: reply.unwrap_or_default(),
        },
        Err(ExecuteError::Rejected(r)) => CommandReply::Rejected(r),
        Err(ExecuteError::Contended(n)) => CommandReply::Rejected(ErrorCode::Conflict.reject(
            format!("the same records kept changing; gave up after {n} attempts, try again"),
            "Dữ liệu đang được cập nhật đồng thời, vui lòng thử lại",
        )),
        Err(ExecuteError::Store(e)) => {
            tracing::error!(error = %e, "command failed: event store unavailable");
            CommandReply::Rejected(unavailable())
        }
        Err(ExecuteError::Closed) => CommandReply::Rejected(unavailable()),
    }
}

/// Turns the answer of a read-only query (run on the model with
/// [`crate::Engine::read`]) into a command reply: accepted with the result
/// and no events, the query's own refusal, or `unavailable` when the store
/// could not be read.
pub fn answer(
    answer: Result<Result<serde_json::Value, Rejection>, gradeflow_eventstore::StoreError>,
) -> CommandReply {
    match answer {
        Ok(Ok(result)) => CommandReply::Accepted {
            event_ids: Vec::new(),
            result,
        },
        Ok(Err(rejection)) => CommandReply::Rejected(rejection),
        Err(e) => reply(Err(ExecuteError::Store(e))),
    }
}

fn unavailable() -> Rejection {
    ErrorCode::Unavailable.reject(
        "the service's event store is unavailable; nothing was changed",
        "Kho dữ liệu tạm thời không khả dụng; chưa có thay đổi nào",
    )
}

/// Reads a command's payload into its typed form, or a refusal naming what
/// is wrong with it. The payload must be a JSON object: serde would also
/// read a struct from an array of its fields in order, which no client is
/// meant to send and which would slip past `deny_unknown_fields`.
pub fn payload<T: serde::de::DeserializeOwned>(command: &CommandEnvelope) -> Result<T, Rejection> {
    if !command.payload.is_object() {
        return Err(ErrorCode::InvalidInput
            .reject(
                format!("invalid {} payload: expected a JSON object", command.kind),
                "Dữ liệu không hợp lệ: phải là một đối tượng JSON",
            )
            .with_details(serde_json::json!({"kind": command.kind})));
    }
    serde_json::from_value(command.payload.clone()).map_err(|e| {
        ErrorCode::InvalidInput
            .reject(
                format!("invalid {} payload: {e}", command.kind),
                format!("Dữ liệu không hợp lệ: {e}"),
            )
            .with_details(serde_json::json!({"kind": command.kind}))
    })
}
