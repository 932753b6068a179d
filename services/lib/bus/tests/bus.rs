//! Integration tests of `gradeflow-bus` against the real NATS server (and,
//! for the relay and the consumer loop, real SQLite and PostgreSQL stores).
//! Each test takes its own subject prefix, so they run in parallel on the
//! shared server, and deletes its streams at the end (best effort).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "bus/support.rs"]
mod support;

#[path = "bus/commands.rs"]
mod commands;
#[path = "bus/consumer.rs"]
mod consumer;
#[path = "bus/relay.rs"]
mod relay;
#[path = "bus/streams.rs"]
mod streams;
