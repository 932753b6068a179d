//! The consumer loop: a durable JetStream pull consumer whose handler turns
//! each event into events of its own service, committed together with an
//! inbox record in ONE store transaction (`ARCHITECTURE.md` § Processes and
//! data flow, "Consumers").
//!
//! For each message, in stream order:
//!
//! 1. Parse the [`Envelope`]. A body that is not one is dead-lettered at once.
//!    Kinds outside [`ConsumerConfig::kinds`] are acked and skipped (NATS 2.9
//!    has one filter subject per consumer, so a service that needs several
//!    kinds filters on a wider subject and skips the rest here).
//! 2. On a redelivery, look the message up in the inbox: if it was applied
//!    (the process died after the commit and before the ack), just ack.
//! 3. Ask the [`EventHandler`] to queue the append of its effects with
//!    `InboxEntry { consumer: <durable>, message_id: <event id> }`
//!    ([`EventHandler::submit`]). The inbox row and the events commit
//!    together, so "applied" and "recorded as applied" cannot diverge.
//!    `Duplicate` from the store means it was applied before: ack. A version
//!    `Conflict` (or `Moved`, see below) re-runs the handler on the new
//!    state, up to [`ConsumerConfig::conflict_retries`] times.
//! 4. **Ack only after the commit.** A plain `+ACK`, not the awaited double
//!    ack: if the ack is lost the message comes back and step 2 or the
//!    store's `Duplicate` absorbs it, so confirming the ack would buy nothing
//!    but a round trip (and, in async-nats 0.42, a subscription) per message.
//!    The client is flushed before the loop returns, so acks of finished
//!    messages are not left in its buffer at shutdown.
//! 5. Transient failures are `-NAK`ed with a delay that doubles with each
//!    delivery ([`ConsumerConfig::backoff_base`] … `backoff_max`). A
//!    [`HandlerError::Permanent`] failure, or a message delivered
//!    [`ConsumerConfig::max_deliver`] times, is dead-lettered: recorded in the
//!    store's `dead_letters` table, published on
//!    `<prefix>.dlq.<consumer>` (captured by `<prefix>_DLQ`), then `+TERM`ed
//!    so the consumer moves on.
//!
//! **Pipelining.** The loop does not wait for one message's commit before
//! handling the next: up to [`ConsumerConfig::pipeline`] appends are queued
//! at once (the store's writer commits them in queue order, many per
//! transaction), and each message is acked when its own commit is answered.
//! A handler whose decisions depend on what it appended before (a service
//! engine) applies each append to its state as it queues it and predicts
//! where it lands ([`gradeflow_eventstore::Predicted`]); when one does not
//! commit, the store refuses the appends queued after it, and the loop waits
//! for everything queued, then handles the ones that did not commit again,
//! one at a time, in order. A redelivery, and a message the handler refused
//! while appends were queued, are likewise handled alone once the queue has
//! committed, so a refusal is always judged on committed state.
//!
//! **Ordering.** Messages are handled, and their appends queued, in stream
//! order, so events of one aggregate are applied in the order they were
//! published. A task reads each pull request's messages off the client as
//! they arrive: the client drops what is still buffered a few seconds after
//! the request's expiry, and a loop slower than that would otherwise get
//! those messages back only after the ack wait, behind later ones. The
//! order holds as long as no message is nak'ed: a nak'ed message comes back
//! after its delay, possibly after later messages of the same aggregate.
//! Handlers that depend on per-aggregate order compare `envelope.version`
//! with what they have applied and return [`HandlerError::Transient`] on a
//! gap; the redelivery then restores the order. Throughput comes from the batched
//! fetch, the pipelined appends and the store's group commit, not from
//! handling messages concurrently.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use async_nats::{
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
        AckKind,
    },
    Client, HeaderMap,
};
use futures::StreamExt;
use gradeflow_eventstore::{
    AppendError, AppendOutcome, AppendRequest, DeadLetter, ExpectedVersion, InboxEntry, NewEvent,
    Store,
};
use gradeflow_proto::{Envelope, Names};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::relay::{sleep_or_shutdown, Backoff};
use crate::trace::inject_traceparent;

/// Header on a dead letter: the subject the message arrived on.
pub const DLQ_SUBJECT: &str = "Gradeflow-Dlq-Subject";
/// Header on a dead letter: the original message id (event id).
pub const DLQ_MESSAGE_ID: &str = "Gradeflow-Dlq-Msg-Id";
/// Header on a dead letter: the durable consumer that gave up.
pub const DLQ_CONSUMER: &str = "Gradeflow-Dlq-Consumer";
/// Header on a dead letter: how many times it was delivered.
pub const DLQ_DELIVERIES: &str = "Gradeflow-Dlq-Deliveries";
/// Header on a dead letter: why it was given up on.
pub const DLQ_REASON: &str = "Gradeflow-Dlq-Reason";
/// Header on a dead letter: its sequence in the source stream.
pub const DLQ_STREAM_SEQUENCE: &str = "Gradeflow-Dlq-Stream-Seq";

/// Deliveries the server allows beyond [`ConsumerConfig::max_deliver`], so a
/// message whose dead-lettering failed (store or NATS down) comes back once
/// more to be dead-lettered again, instead of being stranded unacked.
const DEAD_LETTER_SLACK: i64 = 2;

/// What a handler wants committed for one message: events to append and
/// version checks, all in the same transaction as the inbox record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Version expectations checked before anything is written.
    pub checks: Vec<(String, ExpectedVersion)>,
    /// Events to append, in order.
    pub events: Vec<NewEvent>,
}

impl Effects {
    /// Nothing to append: the message is only recorded as handled.
    pub fn none() -> Self {
        Self::default()
    }

    /// Appends `events`.
    pub fn events(events: Vec<NewEvent>) -> Self {
        Self {
            checks: Vec::new(),
            events,
        }
    }

    /// Adds a version expectation on `stream`.
    pub fn expect(mut self, stream: impl Into<String>, expected: ExpectedVersion) -> Self {
        self.checks.push((stream.into(), expected));
        self
    }
}

/// Why a handler could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (a dependency is down, an earlier event of the same
    /// aggregate has not arrived yet): the message is redelivered after a
    /// backoff, and dead-lettered after `max_deliver` deliveries.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never work (the event contradicts the state): dead-lettered now.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// An append queued for one message: resolves once it committed, or with
/// why it did not.
pub type Queued = Pin<Box<dyn Future<Output = Result<AppendOutcome, AppendError>> + Send>>;

/// Turns one event into the effects to commit. Must be free of side effects
/// outside what it appends, since it may run more than once for one message
/// (conflict retries, redeliveries before a commit).
///
/// A handler implements one of the two methods: [`EventHandler::handle`]
/// (decide the effects; the loop queues them), or [`EventHandler::submit`]
/// (queue the append itself — what a service engine does, so that it can
/// apply the effects to its state at once and decide the next message on
/// them while this one commits).
pub trait EventHandler: Send + Sync + 'static {
    /// Decides the effects of `event`. The default refuses every event: a
    /// handler implementing [`EventHandler::submit`] never has it called.
    fn handle(
        &self,
        event: &Envelope,
    ) -> impl Future<Output = Result<Effects, HandlerError>> + Send {
        let kind = event.kind.clone();
        async move {
            Err(HandlerError::Permanent(format!(
                "no handler decides `{kind}` (the handler only submits)"
            )))
        }
    }

    /// Queues the append that records `event` — its effects and `inbox` in
    /// one request — and returns the commit to await. Returning means
    /// queued, not committed: the loop acks only after the commit.
    fn submit(
        &self,
        event: &Envelope,
        store: &Store,
        inbox: InboxEntry,
    ) -> impl Future<Output = Result<Queued, HandlerError>> + Send {
        async move {
            let effects = self.handle(event).await?;
            let request = AppendRequest {
                checks: effects.checks,
                events: effects.events,
                inbox: Some(inbox),
                predicted: None,
            };
            let queued: Queued = match store.submit(request).await {
                Ok(pending) => Box::pin(pending.outcome()),
                Err(e) => Box::pin(async move { Err(e) }),
            };
            Ok(queued)
        }
    }
}

/// Where the loop can simulate a process crash (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before the message's append is queued (before the handler decides:
    /// a handler that submits appends as it decides).
    BeforeCommit,
    /// After the effects and the inbox record committed, before the ack.
    AfterCommit,
}

/// A test hook: called at each [`CrashPoint`]; returning `true` makes the
/// loop stop right there with [`ConsumerError::Crashed`], leaving the message
/// unacked as a killed process would. Production code leaves it unset.
pub type CrashHook = Arc<dyn Fn(CrashPoint, &Envelope) -> bool + Send + Sync>;

/// How a consumer loop consumes.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The consumer's name, e.g. `submission-unit-completed`. The durable is
    /// `names.durable(name)`, which is also the inbox's consumer name; dead
    /// letters go to `names.dead_letter_subject(name)`.
    pub name: String,
    /// The stream consumed; `None` is `<prefix>_EVENTS`.
    pub stream: Option<String>,
    /// The one filter subject (NATS 2.9 has no plural filters).
    pub filter_subject: String,
    /// Kinds the handler handles; others are acked and skipped. `None`
    /// hands every kind to the handler.
    pub kinds: Option<HashSet<String>>,
    /// Where a new durable starts.
    pub deliver_policy: DeliverPolicy,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: u32,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Messages per pull request.
    pub batch: usize,
    /// How long one pull request waits for messages.
    pub fetch_expiry: Duration,
    /// Nak delay after the first delivery; doubles with each delivery.
    pub backoff_base: Duration,
    /// Longest nak delay (and longest pause after a fetch failure).
    pub backoff_max: Duration,
    /// Handler re-runs after a version conflict before the message is nak'ed.
    pub conflict_retries: u32,
    /// Most messages whose appends are queued and not yet committed (1:
    /// each message commits before the next is handled).
    pub pipeline: usize,
    /// Test hook; see [`CrashHook`].
    pub crash_hook: Option<CrashHook>,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("name", &self.name)
            .field("stream", &self.stream)
            .field("filter_subject", &self.filter_subject)
            .field("kinds", &self.kinds)
            .field("max_deliver", &self.max_deliver)
            .field("ack_wait", &self.ack_wait)
            .field("batch", &self.batch)
            .field("crash_hook", &self.crash_hook.is_some())
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// A consumer named `name` on `filter_subject` with the defaults: 5
    /// deliveries, 30 s ack wait, batches of 256 with a 1 s expiry, nak
    /// backoff from 1 s to 2 min, 3 conflict retries, up to 512 messages
    /// committing at once, from the stream's start.
    pub fn new(name: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            stream: None,
            filter_subject: filter_subject.into(),
            kinds: None,
            deliver_policy: DeliverPolicy::All,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            batch: 256,
            fetch_expiry: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            conflict_retries: 3,
            pipeline: 512,
            crash_hook: None,
        }
    }

    /// Only these kinds reach the handler.
    pub fn kinds<I: IntoIterator<Item = S>, S: Into<String>>(mut self, kinds: I) -> Self {
        self.kinds = Some(kinds.into_iter().map(Into::into).collect());
        self
    }

    /// The nak delay for a message delivered `delivered` times.
    fn nak_delay(&self, delivered: u64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).min(20)).unwrap_or(20);
        self.backoff_base
            .saturating_mul(2_u32.saturating_pow(exp))
            .min(self.backoff_max)
    }
}

/// Why a consumer loop stopped (other than shutdown).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The durable consumer could not be created or updated.
    #[error("creating durable consumer `{durable}` on `{stream}`")]
    Setup {
        /// The durable's name.
        durable: String,
        /// The stream.
        stream: String,
        /// What went wrong.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// The store was closed; the loop cannot commit anything more.
    #[error("consumer `{durable}`: the event store is closed")]
    StoreClosed {
        /// The durable's name.
        durable: String,
    },
    /// The test hook simulated a crash.
    #[error("consumer `{durable}`: simulated crash at {point:?}")]
    Crashed {
        /// The durable's name.
        durable: String,
        /// Where.
        point: CrashPoint,
    },
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Committed (or found committed) and acked.
    Acked,
    /// Not for this handler; acked.
    Skipped,
    /// Nak'ed for a later redelivery.
    Retried,
    /// Dead-lettered and terminated.
    DeadLettered,
}

/// A durable pull consumer feeding an [`EventHandler`], committing through
/// the store's inbox.
pub struct EventConsumer<H> {
    store: Store,
    client: Client,
    js: jetstream::Context,
    names: Names,
    config: ConsumerConfig,
    durable: String,
    stream: String,
    handler: Arc<H>,
}

impl<H: EventHandler> EventConsumer<H> {
    /// A consumer loop over `client`, committing to `store`.
    pub fn new(
        store: Store,
        client: Client,
        names: Names,
        config: ConsumerConfig,
        handler: Arc<H>,
    ) -> Self {
        let durable = names.durable(&config.name);
        let stream = config
            .stream
            .clone()
            .unwrap_or_else(|| names.events_stream());
        Self {
            store,
            js: jetstream::new(client.clone()),
            client,
            names,
            config,
            durable,
            stream,
            handler,
        }
    }

    /// The durable consumer's name (also the inbox's consumer name).
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// Creates the durable consumer, or updates it to this configuration.
    pub async fn ensure(&self) -> Result<PullConsumer, ConsumerError> {
        let config = pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(format!("gradeflow consumer {}", self.config.name)),
            filter_subject: self.config.filter_subject.clone(),
            deliver_policy: self.config.deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_deliver: i64::from(self.config.max_deliver.max(1)) + DEAD_LETTER_SLACK,
            // Room for a few batches awaiting acks.
            max_ack_pending: i64::try_from(self.config.batch.saturating_mul(4)).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let setup = |source| ConsumerError::Setup {
            durable: self.durable.clone(),
            stream: self.stream.clone(),
            source,
        };
        self.js
            .create_consumer_on_stream(config, &self.stream)
            .await
            .map_err(setup)
    }

    /// Consumes until `shutdown`: fetches batches, handles each message as
    /// described in the module docs. On shutdown it stops fetching, finishes
    /// the message in hand (commit and ack), releases the rest of the batch
    /// (`-NAK`, so another replica takes them at once), flushes the acks and
    /// returns `Ok`. NATS failures are retried with backoff; the loop only
    /// returns early when the consumer cannot be set up at start, the store
    /// is closed, or the test hook crashes it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let mut consumer = Some(self.ensure().await?);
        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.backoff_max);
        tracing::info!(durable = %self.durable, stream = %self.stream, "bus.consumer.started");
        let result = self.consume(&mut consumer, &mut backoff, &shutdown).await;
        if let Err(err) = self.client.flush().await {
            tracing::warn!(error = %err, durable = %self.durable, "bus.consumer.flush_failed");
        }
        result
    }

    async fn consume(
        &self,
        consumer: &mut Option<PullConsumer>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        while !shutdown.is_cancelled() {
            let pull = match consumer.as_ref() {
                Some(c) => c,
                None => match self.ensure().await {
                    Ok(c) => consumer.insert(c),
                    Err(err) => {
                        tracing::warn!(error = %err, "bus.consumer.setup_failed");
                        if !sleep_or_shutdown(backoff.next(), shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let request = pull
                .batch()
                .max_messages(self.config.batch.max(1))
                .expires(self.config.fetch_expiry)
                .messages();
            let batch = tokio::select! {
                // Anything the server sends to an abandoned pull request is
                // redelivered after the ack wait.
                () = shutdown.cancelled() => break,
                batch = request => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, durable = %self.durable, "bus.consumer.fetch_failed");
                    // Maybe the consumer was deleted: set it up again.
                    *consumer = None;
                    if !sleep_or_shutdown(backoff.next(), shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            // The client gives up on a pull request a few seconds after its
            // expiry and drops what is still in its buffer then, so a loop
            // slower than that (a long drain) would lose those deliveries
            // until the ack wait brings them back, after later messages:
            // out of stream order. A task of its own reads the request's
            // messages as they arrive, so none is left behind; at most
            // `batch` wait here.
            let mut batch = forward(batch);
            // The ack timers of this batch started about now.
            let fetched_at = Instant::now();
            let mut window: VecDeque<InFlight> = VecDeque::new();
            let limit = self.config.pipeline.max(1);
            loop {
                let step = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => Step::Shutdown,
                    outcome = front(&mut window) => Step::Committed(outcome),
                    next = batch.messages.recv(), if window.len() < limit => Step::Next(next.map(|r| r.map(Box::new))),
                };
                match step {
                    Step::Shutdown => {
                        // Finish what is queued (commit and ack), release the rest.
                        self.drain(&mut window, Vec::new()).await?;
                        release_buffered(&mut batch).await;
                        break;
                    }
                    Step::Committed(outcome) => {
                        let Some(done) = window.pop_front() else {
                            continue;
                        };
                        if let Some(redo) = self.complete(done, outcome).await? {
                            // It did not commit, so nothing queued after it
                            // did as decided: settle them all, then handle
                            // the failed ones again, one by one, in order.
                            self.drain(&mut window, vec![redo]).await?;
                        }
                    }
                    Step::Next(None) => {
                        self.drain(&mut window, Vec::new()).await?;
                        break;
                    }
                    Step::Next(Some(Err(err))) => {
                        // A status such as "consumer deleted" or "exceeded
                        // max waiting": back off, set up again.
                        self.drain(&mut window, Vec::new()).await?;
                        tracing::warn!(error = %err, durable = %self.durable, "bus.consumer.batch_failed");
                        *consumer = None;
                        if !sleep_or_shutdown(backoff.next(), shutdown).await {
                            return Ok(());
                        }
                        break;
                    }
                    Step::Next(Some(Ok(msg))) => {
                        backoff.reset();
                        // A message that waited half its ack window in our
                        // buffer gets its timer reset, so it is not
                        // redelivered elsewhere while we are about to handle it.
                        if fetched_at.elapsed() > self.config.ack_wait / 2 {
                            if let Err(err) = msg.ack_with(AckKind::Progress).await {
                                tracing::debug!(error = %err, "bus.consumer.progress_failed");
                            }
                        }
                        match self.start(*msg).await? {
                            Started::Done(handled) => {
                                tracing::trace!(?handled, durable = %self.durable, "bus.consumer.handled");
                            }
                            Started::Queued(in_flight) => window.push_back(in_flight),
                            Started::Slow(message) => {
                                // Decided on the state after everything
                                // queued before it: let that commit first.
                                self.drain(&mut window, Vec::new()).await?;
                                let handled = self.process(message, None).await?;
                                tracing::trace!(?handled, durable = %self.durable, "bus.consumer.handled");
                            }
                            Started::Refused(message, refusal) => {
                                // With nothing queued, the refusal was judged
                                // on committed state and stands; otherwise
                                // it is judged again once the queue committed.
                                let refusal = window.is_empty().then_some(refusal);
                                self.drain(&mut window, Vec::new()).await?;
                                let handled = self.process(message, refusal).await?;
                                tracing::trace!(?handled, durable = %self.durable, "bus.consumer.handled");
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses a message and, in the common case (a first delivery of a kind
    /// the handler takes), queues its append without waiting for the commit.
    async fn start(&self, msg: jetstream::Message) -> Result<Started, ConsumerError> {
        let (delivered, stream_sequence) = match msg.info() {
            Ok(info) => (
                u64::try_from(info.delivered).unwrap_or(1),
                info.stream_sequence,
            ),
            Err(_) => (1, 0),
        };
        let env: Envelope = match serde_json::from_slice(&msg.payload) {
            Ok(env) => env,
            Err(err) => {
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_else(|| format!("seq-{stream_sequence}"));
                let reason = format!("not an event envelope: {err}");
                return self
                    .dead_letter(&msg, &id, None, delivered, stream_sequence, &reason)
                    .await
                    .map(Started::Done);
            }
        };
        if let Some(kinds) = &self.config.kinds {
            if !kinds.contains(&env.kind) {
                self.ack(&msg).await;
                return Ok(Started::Done(Handled::Skipped));
            }
        }
        let message = Message {
            event_id: env.event_id.to_string(),
            msg,
            env,
            delivered,
            stream_sequence,
        };
        if delivered > 1 {
            // A redelivery: the inbox may know it; handled on its own, once
            // what is queued committed (its first delivery may be among it).
            return Ok(Started::Slow(message));
        }
        self.crash_if(CrashPoint::BeforeCommit, &message.env)?;
        match self
            .handler
            .submit(&message.env, &self.store, self.inbox_entry(&message))
            .await
        {
            Ok(queued) => Ok(Started::Queued(InFlight { message, queued })),
            Err(refusal) => Ok(Started::Refused(message, refusal)),
        }
    }

    fn inbox_entry(&self, message: &Message) -> InboxEntry {
        InboxEntry {
            consumer: self.durable.clone(),
            message_id: message.event_id.clone(),
            reply: None,
        }
    }

    /// Acks a queued message whose append committed (or was found handled
    /// before); hands back one that did not commit.
    async fn complete(
        &self,
        done: InFlight,
        outcome: Result<AppendOutcome, AppendError>,
    ) -> Result<Option<Message>, ConsumerError> {
        match outcome {
            Ok(AppendOutcome::Appended(_)) => {
                self.crash_if(CrashPoint::AfterCommit, &done.message.env)?;
                // Committed: now, and only now, the ack.
                self.ack(&done.message.msg).await;
                Ok(None)
            }
            Ok(AppendOutcome::Duplicate { .. }) => {
                self.ack(&done.message.msg).await;
                Ok(None)
            }
            Err(err) => {
                tracing::debug!(error = %err, event_id = %done.message.event_id, "bus.consumer.requeue");
                Ok(Some(done.message))
            }
        }
    }

    /// Waits for every queued append, in order, acking those that committed;
    /// then handles `redo` and the ones that did not commit again, one at a
    /// time, in stream order.
    async fn drain(
        &self,
        window: &mut VecDeque<InFlight>,
        mut redo: Vec<Message>,
    ) -> Result<(), ConsumerError> {
        while let Some(mut in_flight) = window.pop_front() {
            let outcome = (&mut in_flight.queued).await;
            if let Some(message) = self.complete(in_flight, outcome).await? {
                redo.push(message);
            }
        }
        for message in redo {
            let handled = self.process(message, None).await?;
            tracing::trace!(?handled, durable = %self.durable, "bus.consumer.handled");
        }
        Ok(())
    }

    /// Handles one message to the end, waiting for its commit: acked, nak'ed
    /// or dead-lettered. `refused` is the handler's answer when it was just
    /// asked on the same state (so it is not asked twice).
    #[tracing::instrument(name = "bus.consumer.message", skip_all, fields(durable = %self.durable, event_id = %message.event_id))]
    async fn process(
        &self,
        message: Message,
        mut refused: Option<HandlerError>,
    ) -> Result<Handled, ConsumerError> {
        let Message {
            msg,
            env,
            event_id,
            delivered,
            stream_sequence,
        } = message;

        // A redelivery may be of a message whose effects committed just
        // before the process died (or whose ack was lost): the inbox knows.
        if delivered > 1 {
            match self.store.inbox_lookup(&self.durable, &event_id).await {
                Ok(Some(_)) => {
                    self.ack(&msg).await;
                    return Ok(Handled::Acked);
                }
                Ok(None) => {}
                Err(err) => {
                    let reason = format!("inbox lookup failed: {err}");
                    return self
                        .retry_or_give_up(&msg, &env, delivered, stream_sequence, &reason)
                        .await;
                }
            }
        }

        let mut conflicts = 0;
        loop {
            let submitted = match refused.take() {
                Some(refusal) => Err(refusal),
                None => {
                    self.crash_if(CrashPoint::BeforeCommit, &env)?;
                    let inbox = InboxEntry {
                        consumer: self.durable.clone(),
                        message_id: event_id.clone(),
                        reply: None,
                    };
                    self.handler.submit(&env, &self.store, inbox).await
                }
            };
            let queued = match submitted {
                Ok(queued) => queued,
                Err(HandlerError::Transient(why)) => {
                    return self
                        .retry_or_give_up(&msg, &env, delivered, stream_sequence, &why)
                        .await;
                }
                Err(HandlerError::Permanent(why)) => {
                    // Before giving up, make sure it was not applied already
                    // (a duplicate the handler refuses on the new state).
                    if let Ok(Some(_)) = self.store.inbox_lookup(&self.durable, &event_id).await {
                        self.ack(&msg).await;
                        return Ok(Handled::Acked);
                    }
                    return self
                        .dead_letter(
                            &msg,
                            &event_id,
                            Some(&env),
                            delivered,
                            stream_sequence,
                            &why,
                        )
                        .await;
                }
            };
            match queued.await {
                Ok(AppendOutcome::Appended(_)) => {
                    self.crash_if(CrashPoint::AfterCommit, &env)?;
                    // Committed: now, and only now, the ack.
                    self.ack(&msg).await;
                    return Ok(Handled::Acked);
                }
                Ok(AppendOutcome::Duplicate { .. }) => {
                    // Applied by an earlier delivery: nothing was written.
                    self.ack(&msg).await;
                    return Ok(Handled::Acked);
                }
                Err(AppendError::Conflict { stream, .. })
                    if conflicts < self.config.conflict_retries =>
                {
                    // The state moved under the handler: decide again on the
                    // new state.
                    conflicts += 1;
                    tracing::debug!(stream = %stream, conflicts, "bus.consumer.conflict_retry");
                }
                Err(AppendError::Moved { .. }) if conflicts < self.config.conflict_retries => {
                    // Queued on top of an append that did not commit: the
                    // handler's state is rebuilt; decide again.
                    conflicts += 1;
                    tracing::debug!(conflicts, "bus.consumer.moved_retry");
                }
                Err(AppendError::Closed) => {
                    self.nak(&msg, None).await;
                    return Err(ConsumerError::StoreClosed {
                        durable: self.durable.clone(),
                    });
                }
                Err(err) => {
                    let reason = format!("append failed: {err}");
                    return self
                        .retry_or_give_up(&msg, &env, delivered, stream_sequence, &reason)
                        .await;
                }
            }
        }
    }

    /// A transient failure: nak with backoff, or dead-letter when this was
    /// the last allowed delivery.
    async fn retry_or_give_up(
        &self,
        msg: &jetstream::Message,
        env: &Envelope,
        delivered: u64,
        stream_sequence: u64,
        why: &str,
    ) -> Result<Handled, ConsumerError> {
        if delivered >= u64::from(self.config.max_deliver) {
            let reason = format!("gave up after {delivered} deliveries: {why}");
            let id = env.event_id.to_string();
            return self
                .dead_letter(msg, &id, Some(env), delivered, stream_sequence, &reason)
                .await;
        }
        let delay = self.config.nak_delay(delivered);
        tracing::info!(delivered, delay_ms = delay.as_millis() as u64, reason = %why, "bus.consumer.retry");
        self.nak(msg, Some(delay)).await;
        Ok(Handled::Retried)
    }

    /// Records the message in the store's dead letters, publishes it on the
    /// dead-letter subject, then terminates it. If recording or publishing
    /// fails the message is nak'ed instead and comes back (the server allows
    /// a few deliveries beyond `max_deliver` for this).
    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        message_id: &str,
        env: Option<&Envelope>,
        delivered: u64,
        stream_sequence: u64,
        reason: &str,
    ) -> Result<Handled, ConsumerError> {
        tracing::warn!(message_id, delivered, reason, "bus.consumer.dead_letter");
        let record = DeadLetter {
            consumer: self.durable.clone(),
            message_id: message_id.to_owned(),
            subject: msg.subject.to_string(),
            deliveries: delivered,
            reason: reason.to_owned(),
            payload: String::from_utf8_lossy(&msg.payload).into_owned(),
        };
        if let Err(err) = self.store.record_dead_letter(record).await {
            tracing::warn!(error = %err, "bus.consumer.dead_letter_record_failed");
            self.nak(msg, Some(self.config.nak_delay(delivered))).await;
            return Ok(Handled::Retried);
        }
        let mut headers = HeaderMap::new();
        // Repeated dead-lettering of the same message (a lost +TERM) is
        // deduplicated by the DLQ stream.
        headers.insert(NATS_MESSAGE_ID, format!("{}:{message_id}", self.durable));
        headers.insert(DLQ_SUBJECT, msg.subject.as_str());
        headers.insert(DLQ_MESSAGE_ID, header_safe(message_id));
        headers.insert(DLQ_CONSUMER, self.durable.as_str());
        headers.insert(DLQ_DELIVERIES, delivered.to_string());
        headers.insert(DLQ_REASON, header_safe(reason));
        headers.insert(DLQ_STREAM_SEQUENCE, stream_sequence.to_string());
        inject_traceparent(&mut headers, env.and_then(|e| e.traceparent.as_deref()));
        let subject = self.names.dead_letter_subject(&self.config.name);
        let published = match self
            .js
            .publish_with_headers(subject, headers, msg.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = published {
            tracing::warn!(error = %err, "bus.consumer.dead_letter_publish_failed");
            self.nak(msg, Some(self.config.nak_delay(delivered))).await;
            return Ok(Handled::Retried);
        }
        // Recorded and published: stop redeliveries.
        if let Err(err) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(error = %err, "bus.consumer.term_failed");
        }
        Ok(Handled::DeadLettered)
    }

    async fn ack(&self, msg: &jetstream::Message) {
        // A lost ack costs a redelivery, which the inbox absorbs.
        if let Err(err) = msg.ack().await {
            tracing::warn!(error = %err, "bus.consumer.ack_failed");
        }
    }

    async fn nak(&self, msg: &jetstream::Message, delay: Option<Duration>) {
        if let Err(err) = msg.ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(error = %err, "bus.consumer.nak_failed");
        }
    }

    fn crash_if(&self, point: CrashPoint, env: &Envelope) -> Result<(), ConsumerError> {
        match &self.config.crash_hook {
            Some(hook) if hook(point, env) => Err(ConsumerError::Crashed {
                durable: self.durable.clone(),
                point,
            }),
            _ => Ok(()),
        }
    }
}

/// A parsed message on its way through the loop.
struct Message {
    msg: jetstream::Message,
    env: Envelope,
    event_id: String,
    delivered: u64,
    stream_sequence: u64,
}

/// A message whose append is queued, not yet committed.
struct InFlight {
    message: Message,
    queued: Queued,
}

/// Where [`EventConsumer::start`] left a message.
enum Started {
    /// Finished (skipped or dead-lettered).
    Done(Handled),
    /// Its append is queued.
    Queued(InFlight),
    /// To be handled on its own once everything queued committed.
    Slow(Message),
    /// The handler refused it (on a state that may include appends still
    /// queued).
    Refused(Message, HandlerError),
}

/// What woke the loop.
enum Step {
    Shutdown,
    Committed(Result<AppendOutcome, AppendError>),
    Next(Option<Result<Box<jetstream::Message>, async_nats::Error>>),
}

/// The commit of the oldest queued message; never resolves when none is.
async fn front(window: &mut VecDeque<InFlight>) -> Result<AppendOutcome, AppendError> {
    match window.front_mut() {
        Some(in_flight) => (&mut in_flight.queued).await,
        None => std::future::pending().await,
    }
}

/// A pull request's messages, read off the client by a task of their own
/// as they arrive (see the loop); the task stops when the request ends or
/// this is dropped.
struct Forwarded {
    messages: tokio::sync::mpsc::UnboundedReceiver<Result<jetstream::Message, async_nats::Error>>,
    _reader: tokio_util::task::AbortOnDropHandle<()>,
}

/// Starts reading `batch` into a [`Forwarded`].
fn forward(mut batch: pull::Batch) -> Forwarded {
    let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = batch.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    Forwarded {
        messages,
        _reader: tokio_util::task::AbortOnDropHandle::new(reader),
    }
}

/// Naks (without delay) the messages of an interrupted batch that already
/// reached the client, so another replica gets them now rather than after
/// the ack wait.
async fn release_buffered(batch: &mut Forwarded) {
    batch.messages.close();
    while let Ok(item) = batch.messages.try_recv() {
        let Ok(msg) = item else { continue };
        if let Err(err) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(error = %err, "bus.consumer.release_failed");
        }
    }
}

/// A header value cannot hold line breaks.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
