//! `gradeflow-bus`: everything gradeflow does with NATS JetStream
//! (`ARCHITECTURE.md` § Processes and data flow, § NATS JetStream).
//!
//! * [`streams`]: the events, audit and dead-letter streams, created or
//!   checked at start-up.
//! * [`publish`]: one event on the wire, with `Nats-Msg-Id` and `traceparent`.
//! * [`trace`]: the W3C trace context in NATS headers.
//! * [`command`]: commands over request/reply, server and caller side.
//!
//! Only this crate and `gradeflow-eventstore` talk to async-nats and sqlx.
//! Everything here works on NATS Server 2.9.

pub mod command;
pub mod publish;
pub mod streams;
pub mod trace;

pub use command::{
    send_command, serve_commands, CommandError, CommandHandler, CommandServer, ServeCommandsError,
};
pub use publish::{publish_event, OutgoingEvent, PublishEventError};
pub use streams::{ensure_streams, EnsureStreamsError, StreamSettings};
pub use trace::TraceContext;
