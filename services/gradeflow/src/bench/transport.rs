//! The transport figures of `gradeflow bench store`, each beside the raw
//! JetStream rate of the same server measured in the same run:
//!
//! * **publish** — [`Relay::drain`] over every event the append figures
//!   stored (read pages from the store, envelope, pipelined publish with
//!   `Nats-Msg-Id`, acks awaited in order, position recorded) beside a bare
//!   pipelined publish of as many messages of the same size with
//!   `Nats-Msg-Id`: all handed to the client first, then every ack awaited.
//! * **consume** — [`EventConsumer`] loops with a no-op handler, so each
//!   message costs an inbox insert and an ack, timed until the inbox holds N
//!   rows: one loop (each message its own store transaction), and
//!   [`SHARED_LOOPS`] loops sharing one durable as replicas would (their
//!   appends can share a transaction); beside a bare pull consumer that
//!   fetches the same number of messages and acks each.
//!
//! The raw side talks to async-nats directly: it is the floor under
//! `gradeflow-bus`, so it must not go through it.

use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::report::{requests_per_transaction, Baseline, Rate, Row};

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
    client: &async_nats::Client,
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
    let relay = Relay::new(store.clone(), client, names.clone(), "bench");
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
pub(crate) async fn raw_publish(
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

/// Consumer loops sharing one durable in the many-loops consume figure, as
/// replicas of a service would.
pub const SHARED_LOOPS: usize = 16;

/// The consume rows: the consumer loop recording `count` events in the
/// store's inbox, alone and as [`SHARED_LOOPS`] loops sharing one durable,
/// beside a bare pull consumer fetching and acking `count` messages of
/// `<prefix>_RAW`. Each also shows the database limit that binds it: one
/// row per transaction (`single_row`) for the lone loop, which commits one
/// message at a time; multi-row transactions (`batched`) for the shared
/// durable, whose loops' appends the writer can group. Also returns the
/// requests per store transaction of each.
pub async fn consume(
    store: &Store,
    client: &async_nats::Client,
    names: &Names,
    count: u64,
    single_row: Baseline,
    batched: Baseline,
) -> anyhow::Result<(Vec<Row>, Vec<(String, f64)>)> {
    eprintln!("  raw JetStream pull consume…");
    let raw = Baseline {
        what: format!("JetStream pull, fetch {FETCH_BATCH} + ack each"),
        rate: raw_consume(client, names, count).await?,
    };
    let mut group_commit = Vec::new();
    eprintln!("  inbox consume, 1 loop…");
    let before = store.stats();
    let alone = inbox_consume(store, client, names, count, 1).await?;
    group_commit.push((
        "consume 1 loop".to_owned(),
        requests_per_transaction(before, store.stats()),
    ));
    eprintln!("  inbox consume, {SHARED_LOOPS} loops…");
    let before = store.stats();
    let shared = inbox_consume(store, client, names, count, SHARED_LOOPS).await?;
    group_commit.push((
        format!("consume {SHARED_LOOPS} loops"),
        requests_per_transaction(before, store.stats()),
    ));
    let rows = vec![
        Row {
            figure: "consume through the inbox, 1 loop".into(),
            rate: alone,
            baselines: vec![raw.clone(), single_row],
        },
        Row {
            figure: format!("consume through the inbox, {SHARED_LOOPS} loops"),
            rate: shared,
            baselines: vec![raw, batched],
        },
    ];
    Ok((rows, group_commit))
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

/// A handler that commits nothing but the inbox record, counting the
/// messages it saw.
struct Noop {
    handled: Arc<AtomicU64>,
}

impl EventHandler for Noop {
    async fn handle(&self, _event: &Envelope) -> Result<Effects, HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Effects::none())
    }
}

/// Runs `loops` consumer loops on one new durable over `<prefix>_EVENTS`
/// from its start, until the inbox holds `count` of its messages, then stops
/// them. Only committed inbox rows count: the handlers' own count only says
/// when to start asking the database (a COUNT per poll would load it during
/// the whole run).
async fn inbox_consume(
    store: &Store,
    client: &async_nats::Client,
    names: &Names,
    count: u64,
    loops: usize,
) -> anyhow::Result<Rate> {
    let handled = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let name = format!("bench-inbox-{loops}");
    let durable = names.durable(&name);
    let started = Instant::now();
    let mut running = JoinSet::new();
    for _ in 0..loops.max(1) {
        let consumer = EventConsumer::new(
            store.clone(),
            client.clone(),
            names.clone(),
            ConsumerConfig::new(name.as_str(), names.events_filter()),
            Arc::new(Noop {
                handled: handled.clone(),
            }),
        );
        running.spawn(consumer.run(shutdown.clone()));
    }
    let outcome = async {
        loop {
            if handled.load(Ordering::Relaxed) >= count {
                let recorded = store
                    .raw_inbox_count(&durable)
                    .await
                    .context("counting the consumer's inbox rows")?;
                if recorded >= count {
                    return Ok(started.elapsed());
                }
            }
            anyhow::ensure!(
                started.elapsed() < CONSUME_DEADLINE,
                "the consumer loops did not record {count} events within {CONSUME_DEADLINE:?}"
            );
            tokio::select! {
                Some(ended) = running.join_next() => {
                    let result = ended.context("a consumer loop panicked")?;
                    result.context("a consumer loop stopped")?;
                    anyhow::bail!("a consumer loop stopped before {count} events were recorded");
                }
                () = tokio::time::sleep(INBOX_POLL) => {}
            }
        }
    }
    .await;
    shutdown.cancel();
    let stopping = async {
        while let Some(ended) = running.join_next().await {
            if let Ok(Err(e)) = ended {
                eprintln!("gradeflow bench: a consumer loop stopped with: {e:#}");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .is_err()
    {
        eprintln!("gradeflow bench: the consumer loops did not stop within 10 s");
    }
    Ok(Rate::new(count, outcome?))
}
