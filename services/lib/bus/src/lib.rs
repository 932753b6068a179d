//! `gradeflow-bus`: everything gradeflow does with NATS JetStream
//! (`ARCHITECTURE.md` § Processes and data flow, § NATS JetStream).
//!
//! * [`streams`]: the events, audit and dead-letter streams, created or
//!   checked at start-up.
//! * [`publish`]: one event on the wire, with `Nats-Msg-Id` and `traceparent`.
//! * [`trace`]: the W3C trace context in NATS headers.
//! * [`relay`]: the outbox relay, store → `<prefix>_EVENTS`.
//! * [`consumer`]: the durable pull-consumer loop with inbox, redelivery
//!   backoff and dead letters.
//! * [`command`]: commands over request/reply, server and caller side;
//!   [`command_inbox`]: idempotent commands through the store's inbox.
//!
//! Only this crate and `gradeflow-eventstore` talk to async-nats and sqlx.
//! Everything here works on NATS Server 2.9.

pub mod command;
pub mod command_inbox;
pub mod consumer;
pub mod publish;
pub mod relay;
pub mod streams;
pub mod trace;

pub use command::{
    send_command, send_command_as, serve_commands, CommandError, CommandHandler, CommandServer,
    Reply, ServeCommandsError,
};
pub use command_inbox::CommandInbox;
pub use consumer::{
    ConsumerConfig, ConsumerError, CrashHook, CrashPoint, Effects, EventConsumer, EventHandler,
    HandlerError, Queued,
};
pub use publish::{publish_event, OutgoingEvent, PublishEventError};
pub use relay::{Mapper, Relay, RelayConfig, RelayError};
pub use streams::{ensure_streams, EnsureStreamsError, StreamSettings};
pub use trace::TraceContext;
