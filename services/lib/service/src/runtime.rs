//! Wires a [`Workflow`] to NATS: the command server (request/reply in the
//! service's queue group), the consumer that records observed events through
//! the inbox, and the outbox relay that publishes the service's own events.
//! Every service process — `gradeflow up` runs all of them in one — starts
//! its services through [`spawn`].
//!
//! Each command runs in a `service.command` span and each observed event in a
//! `service.observe` span, both children of the caller's span named by the
//! incoming `traceparent`, so a service's work continues the caller's trace.

use std::sync::Arc;

use async_nats::jetstream;
use gradeflow_bus::{
    CommandServer, ConsumerConfig, EventConsumer, EventHandler, HandlerError, Queued, Relay,
};
use gradeflow_eventstore::{InboxEntry, Store};
use gradeflow_proto::{Envelope, Names};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{ExecuteError, Workflow};

/// Adapts a workflow's `observe` to the consumer loop's handler.
struct Observer<W>(Arc<W>);

impl<W: Workflow> EventHandler for Observer<W> {
    async fn submit(
        &self,
        event: &Envelope,
        _store: &Store,
        inbox: InboxEntry,
    ) -> Result<Queued, HandlerError> {
        let span = tracing::info_span!(
            "service.observe",
            kind = %event.kind,
            event_id = %event.event_id
        );
        continue_trace(&span, event.traceparent.as_deref());
        // The workflow's engine appends to its own store (the one the loop
        // was given): it applies the append to its model as it queues it.
        match self.0.observe(event, inbox).instrument(span).await {
            Ok(committing) => Ok(Box::pin(committing)),
            // The service's rules refuse to record the event: it will never
            // fit, so it goes to the dead letters with the reason.
            Err(ExecuteError::Rejected(r)) => Err(HandlerError::Permanent(format!(
                "{}: {}",
                r.code, r.message
            ))),
            Err(e) => Err(HandlerError::Transient(e.to_string())),
        }
    }
}

/// Adapts a workflow's `handle_command` to the command server.
struct Commands<W>(Arc<W>);

impl<W: Workflow> gradeflow_bus::CommandHandler for Commands<W> {
    async fn handle(
        &self,
        command: gradeflow_proto::CommandEnvelope,
    ) -> gradeflow_proto::CommandReply {
        let span = command_span(&command);
        self.0.handle_command(command).instrument(span).await
    }

    async fn reply(&self, command: gradeflow_proto::CommandEnvelope) -> gradeflow_bus::Reply {
        let span = command_span(&command);
        self.0.answer_command(command).instrument(span).await
    }
}

/// The span a command is handled in, a child of the caller's.
fn command_span(command: &gradeflow_proto::CommandEnvelope) -> tracing::Span {
    let span = tracing::info_span!(
        "service.command",
        kind = %command.kind,
        command_id = %command.command_id
    );
    continue_trace(&span, command.traceparent.as_deref());
    span
}

/// Makes `span` a child of the caller's span named by `traceparent`, before
/// it is entered. Without one (or with a malformed one) the span starts its
/// own trace.
fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        if let Err(e) = gradeflow_kit::trace::set_parent(span, traceparent) {
            tracing::debug!(parent: span, error = %e, traceparent, "service.trace.malformed");
        }
    }
}

/// What [`spawn`] needs for one service.
pub struct Wiring {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Names under the deployment's prefix.
    pub names: Names,
    /// The service's store.
    pub store: Store,
    /// Kinds the workflow observes (its consumer skips the others).
    pub observed: Vec<String>,
}

/// Starts the relay, the consumer and the command server of `workflow`;
/// they stop when `shutdown` is cancelled. Returns once the command server
/// is subscribed, so a command sent afterwards finds a responder.
pub async fn spawn<W: Workflow>(
    workflow: Arc<W>,
    wiring: Wiring,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SpawnError> {
    let service = workflow.service();
    let js = jetstream::new(wiring.client.clone());
    let mut tasks = Vec::new();

    // The relay publishes only the service's own events: the copies of
    // observed events in its store came from the stream in the first place.
    let relay = Relay::new(
        wiring.store.clone(),
        &wiring.client,
        wiring.names.clone(),
        service,
    )
    .only_service(service);
    tasks.push(tokio::spawn(relay.run(shutdown.clone())));

    forget_stale_durable(&js, &wiring, service).await?;

    let mut config = ConsumerConfig::new(service, wiring.names.events_filter())
        .kinds(wiring.observed.iter().cloned());
    // A message held by a process that died comes back after the ack wait:
    // short enough that a crashed replica's work resumes promptly, long
    // enough for any handler (the loop also extends it with +WPI).
    config.ack_wait = std::time::Duration::from_secs(10);
    let consumer = EventConsumer::new(
        wiring.store.clone(),
        wiring.client.clone(),
        wiring.names.clone(),
        config,
        Arc::new(Observer(Arc::clone(&workflow))),
    );
    // Create the durable now, so events published from here on are kept for
    // it even before its loop fetches.
    consumer
        .ensure()
        .await
        .map_err(|e| SpawnError::Consumer(e.to_string()))?;
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = consumer.run(stop).await {
            tracing::error!(error = %e, "service.consumer.stopped");
        }
    }));

    let server = CommandServer::bind(
        &wiring.client,
        &wiring.names,
        service,
        Arc::new(Commands(workflow)),
    )
    .await
    .map_err(|e| SpawnError::Commands(e.to_string()))?;
    tasks.push(tokio::spawn(server.run(shutdown)));
    Ok(tasks)
}

/// A durable consumer remembers what it delivered; the service's store
/// remembers what it applied (its inbox). When the store is empty — a new
/// store, or a read model deleted to be rebuilt — but the durable already
/// delivered messages, those messages were applied to a store that no longer
/// exists: the durable is deleted so it is created anew from the start of the
/// stream and the store is rebuilt by replay. A store with events keeps its
/// durable: the inbox absorbs any redelivery.
async fn forget_stale_durable(
    js: &jetstream::Context,
    wiring: &Wiring,
    service: &str,
) -> Result<(), SpawnError> {
    let empty = wiring
        .store
        .head()
        .await
        .map_err(|e| SpawnError::Consumer(e.to_string()))?
        .is_none();
    if !empty {
        return Ok(());
    }
    let durable = wiring.names.durable(service);
    let Ok(stream) = js.get_stream(wiring.names.events_stream()).await else {
        return Ok(());
    };
    let consumer: Result<jetstream::consumer::PullConsumer, _> =
        stream.get_consumer(&durable).await;
    let Ok(mut consumer) = consumer else {
        return Ok(());
    };
    let delivered = consumer
        .info()
        .await
        .map(|i| i.delivered.stream_sequence)
        .unwrap_or(0);
    if delivered > 0 {
        tracing::warn!(
            %durable,
            delivered,
            "service.consumer.rebuilding: the store is empty, replaying the stream from its start"
        );
        stream
            .delete_consumer(&durable)
            .await
            .map_err(|e| SpawnError::Consumer(e.to_string()))?;
    }
    Ok(())
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The durable consumer could not be created.
    #[error("creating the service's consumer: {0}")]
    Consumer(String),
    /// The command subscription failed.
    #[error("subscribing to the service's commands: {0}")]
    Commands(String),
}
