//! Idempotent commands through the store's inbox.
//!
//! A command may arrive twice (the caller timed out and retried with the same
//! `command_id`). The handler records the command in the inbox in the same
//! transaction as its events — `InboxEntry { consumer: "cmd:<service>",
//! message_id: <command_id>, reply: <the reply> }` — so:
//!
//! * before deciding, [`CommandInbox::previous_reply`] finds a command that
//!   was already applied and returns its first reply (deciding again on the
//!   new state would wrongly refuse it as "wrong state");
//! * if two copies race past that check, the store answers the second append
//!   with `Duplicate { reply }` and [`CommandInbox::commit`] returns the
//!   stored reply; nothing is written twice.
//!
//! The reply is known before the append because event ids are chosen by the
//! handler (`NewEvent::event_id`).

use gradeflow_eventstore::{
    AppendError, AppendOutcome, AppendRequest, InboxEntry, Store, StoreError,
};
use gradeflow_proto::{CommandId, CommandReply, Rejection};

use crate::consumer::Effects;

/// The inbox of one service's commands.
#[derive(Debug, Clone)]
pub struct CommandInbox {
    store: Store,
    consumer: String,
}

impl CommandInbox {
    /// The inbox of `service`'s commands in `store`: consumer name
    /// `cmd:<service>`.
    pub fn new(store: Store, service: &str) -> Self {
        Self {
            store,
            consumer: format!("cmd:{service}"),
        }
    }

    /// The inbox consumer name, `cmd:<service>`.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The reply given when `command_id` was first applied, if it was.
    pub async fn previous_reply(
        &self,
        command_id: CommandId,
    ) -> Result<Option<CommandReply>, StoreError> {
        let id = command_id.to_string();
        match self.store.inbox_lookup(&self.consumer, &id).await? {
            None => Ok(None),
            Some(reply) => self.decode(&id, reply).map(Some),
        }
    }

    /// Appends `effects` with the command's inbox record and returns the
    /// reply: `Accepted` with the new events' ids and `result`, or — if the
    /// command had already been applied — the reply recorded then.
    pub async fn commit(
        &self,
        command_id: CommandId,
        effects: Effects,
        result: serde_json::Value,
    ) -> Result<CommandReply, AppendError> {
        let reply = CommandReply::Accepted {
            event_ids: effects.events.iter().map(|e| e.event_id).collect(),
            result,
        };
        self.append(command_id, effects, reply).await
    }

    /// Records a refusal, so a retry of the command gets the same refusal
    /// even if the state has changed since. Writes no events.
    pub async fn reject(
        &self,
        command_id: CommandId,
        rejection: Rejection,
    ) -> Result<CommandReply, AppendError> {
        self.append(
            command_id,
            Effects::none(),
            CommandReply::Rejected(rejection),
        )
        .await
    }

    async fn append(
        &self,
        command_id: CommandId,
        effects: Effects,
        reply: CommandReply,
    ) -> Result<CommandReply, AppendError> {
        let id = command_id.to_string();
        let encoded = serde_json::to_value(&reply).map_err(|e| StoreError::Encode {
            what: "command reply",
            source: std::sync::Arc::new(e),
        })?;
        let request = AppendRequest {
            checks: effects.checks,
            events: effects.events,
            inbox: Some(InboxEntry {
                consumer: self.consumer.clone(),
                message_id: id.clone(),
                reply: Some(encoded),
            }),
            predicted: None,
        };
        match self.store.append(request).await? {
            AppendOutcome::Appended(_) => Ok(reply),
            AppendOutcome::Duplicate { reply: stored } => Ok(self.decode(&id, stored)?),
        }
    }

    fn decode(
        &self,
        id: &str,
        stored: Option<serde_json::Value>,
    ) -> Result<CommandReply, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt {
            position: 0,
            problem: format!("inbox reply of {}/{id}: {problem}", self.consumer),
        };
        let value = stored.ok_or_else(|| corrupt("no reply recorded".into()))?;
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }
}
