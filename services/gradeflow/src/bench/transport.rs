//! The transport figures of `gradeflow bench store`, each beside the raw
//! JetStream rate of the same server measured in the same run:
//!
//! * **publish** — [`Relay::drain`] over every event the append figures
//!   stored (read pages from the store, envelope, pipelined publish with
//!   `Nats-Msg-Id`, acks awaited in order, position recorded) beside a bare
//!   pipelined publish of as many messages of the same size with
//!   `Nats-Msg-Id`: all handed to the client first, then every ack awaited.
//! * **consume** — an [`EventConsumer`] with a no-op handler, so each message
//!   costs an inbox insert (its own store transaction) and an ack, timed
//!   until the inbox holds the N-th event; beside a bare pull consumer that
//!   fetches the same number of messages and acks each.
//!
//! The raw side talks to async-nats directly: it is the floor under
//! `gradeflow-bus`, so it must not go through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy},
};
use async_nats::HeaderMap;
use futures::StreamExt;
use gradeflow_bus::streams::events_stream_config;
use gradeflow_bus::{
    ConsumerConfig, Effects, EventConsumer, EventHandler, HandlerError, OutgoingEvent, Relay,
    StreamSettings,
};
use gradeflow_eventstore::Store;
use gradeflow_proto::{Envelope, Names};
use tokio_util::sync::CancellationToken;

use super::report::{Baseline, Rate, Row};

/// Messages per pull request, on both sides of the consume figure: the
/// consumer loop's default batch.
const FETCH_BATCH: usize = 256;
/// How often the consume figure looks for the N-th event in the inbox.
const INBOX_POLL: Duration = Duration::from_millis(2);
/// Longest the consume figures may go without finishing.
const CONSUME_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The raw stream beside `<prefix>_EVENTS`: `<prefix>_RAW` on
/// `<prefix>.raw.>`, configured like the events stream (file storage, the
/// same duplicate window), so both sides pay for the same stream.
pub fn raw_stream_name(names: &Names) -> String {
    format!("{}_RAW", names.prefix())
}

fn raw_subject(names: &Names) -> String {
    format!("{}.raw.bench", names.prefix())
}

/// Creates `<prefix>_RAW`.
pub async fn create_raw_stream(js: &jetstream::Context, names: &Names) -> anyhow::Result<()> {
    let mut config = events_stream_config(names, &StreamSettings::default());
    config.name = raw_stream_name(names);
    config.description = Some("gradeflow bench: raw JetStream baseline".into());
    config.subjects = vec![format!("{}.raw.>", names.prefix())];
    js.create_stream(config)
        .await
        .with_context(|| format!("creating the stream {}", raw_stream_name(names)))?;
    Ok(())
}

/// The publish row: the relay draining the store's `total` events, beside a
/// bare pipelined publish of as many messages of the relay's message size.
pub async fn publish(
    store: &Store,
    js: &jetstream::Context,
    names: &Names,
    total: u64,
) -> anyhow::Result<Row> {
    let first = store
        .read_from(0, 1)
        .await
        .context("reading the first event to size the raw messages")?;
    let first = first
        .first()
        .context("the store has no events to publish")?;
    let message_bytes = OutgoingEvent::new(names, &first.metadata.service, None, &first.envelope())
        .context("encoding the first event's envelope")?
        .body
        .len();

    eprintln!("  raw JetStream publish…");
    let raw = raw_publish(js, names, total, message_bytes).await?;

    eprintln!("  relay drain…");
    let relay = Relay::new(store.clone(), js.clone(), names.clone(), "bench");
    let started = Instant::now();
    let acked = relay.drain().await.context("draining the outbox relay")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        u64::try_from(acked).unwrap_or(0) == total,
        "the relay got to position {acked}, expected {total}"
    );
    Ok(Row {
        figure: "publish through the relay".into(),
        rate: Rate::new(total, elapsed),
        baselines: vec![Baseline {
            what: format!("JetStream publish, pipelined, Nats-Msg-Id, {message_bytes} B"),
            rate: raw,
        }],
    })
}

/// Publishes `count` messages of `bytes` bytes, each with its own
/// `Nats-Msg-Id`: every publish handed to the client first, then every ack
/// awaited. Ids and bodies are made before the clock starts.
async fn raw_publish(
    js: &jetstream::Context,
    names: &Names,
    count: u64,
    bytes: usize,
) -> anyhow::Result<Rate> {
    let subject = raw_subject(names);
    let body = bytes::Bytes::from(vec![b'x'; bytes]);
    let headers: Vec<HeaderMap> = (0..count)
        .map(|_| {
            let mut h = HeaderMap::new();
            h.insert(NATS_MESSAGE_ID, uuid::Uuid::now_v7().to_string().as_str());
            h
        })
        .collect();
    let started = Instant::now();
    let mut acks = Vec::with_capacity(headers.len());
    for h in headers {
        let ack = js
            .publish_with_headers(subject.clone(), h, body.clone())
            .await
            .context("handing a raw message to the NATS client")?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await
            .context("awaiting the acknowledgment of a raw message")?;
    }
    Ok(Rate::new(count, started.elapsed()))
}

/// The consume row: the consumer loop recording `count` events in the
/// store's inbox, beside a bare pull consumer fetching and acking `count`
/// messages of `<prefix>_RAW`. `single_row` (the database's one row per
/// transaction rate) is printed too: the loop commits one message at a time.
pub async fn consume(
    store: &Store,
    client: &async_nats::Client,
    names: &Names,
    count: u64,
    single_row: Baseline,
) -> anyhow::Result<Row> {
    eprintln!("  raw JetStream pull consume…");
    let raw = raw_consume(client, names, count).await?;
    eprintln!("  inbox consume…");
    let rate = inbox_consume(store, client, names, count).await?;
    Ok(Row {
        figure: "consume through the inbox".into(),
        rate,
        baselines: vec![
            Baseline {
                what: format!("JetStream pull, fetch {FETCH_BATCH} + ack each"),
                rate: raw,
            },
            single_row,
        ],
    })
}

/// A bare pull consumer on `<prefix>_RAW`, configured like the consumer
/// loop's durable (explicit acks, the same ack-pending room), fetching
/// batches and acking each message with a plain `+ACK`.
async fn raw_consume(
    client: &async_nats::Client,
    names: &Names,
    count: u64,
) -> anyhow::Result<Rate> {
    let js = jetstream::new(client.clone());
    let stream = raw_stream_name(names);
    let consumer: jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(format!("{}-raw", names.prefix())),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: i64::try_from(FETCH_BATCH * 4).unwrap_or(i64::MAX),
                ..Default::default()
            },
            &stream,
        )
        .await
        .with_context(|| format!("creating the raw pull consumer on {stream}"))?;
    let deadline = Instant::now() + CONSUME_DEADLINE;
    let started = Instant::now();
    let mut seen = 0_u64;
    while seen < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the raw pull consumer got {seen} of {count} messages"
        );
        let mut batch = consumer
            .batch()
            .max_messages(FETCH_BATCH)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .context("fetching a batch with the raw pull consumer")?;
        while let Some(msg) = batch.next().await {
            let msg = msg
                .map_err(anyhow::Error::from_boxed)
                .context("receiving a raw message")?;
            msg.ack()
                .await
                .map_err(anyhow::Error::from_boxed)
                .context("acking a raw message")?;
            seen += 1;
        }
    }
    // Acks are fire-and-forget: the figure includes handing them all over.
    client.flush().await.context("flushing the raw acks")?;
    Ok(Rate::new(seen, started.elapsed()))
}

/// A handler that commits nothing but the inbox record.
struct Noop;

impl EventHandler for Noop {
    async fn handle(&self, _event: &Envelope) -> Result<Effects, HandlerError> {
        Ok(Effects::none())
    }
}

/// Runs the consumer loop over `<prefix>_EVENTS` from its start until the
/// inbox holds the `count`-th event (the loop handles messages in stream
/// order, one at a time, so that means all `count`), then stops it.
async fn inbox_consume(
    store: &Store,
    client: &async_nats::Client,
    names: &Names,
    count: u64,
) -> anyhow::Result<Rate> {
    let last = store
        .read_from(i64::try_from(count).unwrap_or(i64::MAX) - 1, 1)
        .await
        .context("reading the last event the consumer must record")?;
    let last = last
        .first()
        .with_context(|| format!("the store has fewer than {count} events"))?
        .event_id
        .to_string();
    let config = ConsumerConfig::new("bench-inbox", names.events_filter());
    let consumer = EventConsumer::new(
        store.clone(),
        client.clone(),
        names.clone(),
        config,
        Arc::new(Noop),
    );
    let durable = consumer.durable().to_owned();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut running = tokio::spawn(consumer.run(shutdown.clone()));
    let outcome = async {
        loop {
            if store
                .inbox_lookup(&durable, &last)
                .await
                .context("looking for the last event in the inbox")?
                .is_some()
            {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < CONSUME_DEADLINE,
                "the consumer loop did not record {count} events within {CONSUME_DEADLINE:?}"
            );
            tokio::select! {
                ended = &mut running => {
                    let result = ended.context("the consumer loop panicked")?;
                    result.context("the consumer loop stopped")?;
                    anyhow::bail!("the consumer loop stopped before recording {count} events");
                }
                () = tokio::time::sleep(INBOX_POLL) => {}
            }
        }
    }
    .await;
    shutdown.cancel();
    if !running.is_finished() {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), running).await {
            eprintln!("gradeflow bench: the consumer loop stopped with: {e:#}");
        }
    }
    Ok(Rate::new(count, outcome?))
}
