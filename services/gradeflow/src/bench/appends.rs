//! The append figures of `gradeflow bench store`: events per second through
//! [`Store::append`] (the writer task, version checks, hash chain, group
//! commit) with 1, 16 and 256 concurrent callers and with requests of 100
//! events, each beside the raw INSERT rates of the same database measured in
//! the same run ([`Store::raw_insert_baseline`],
//! [`Store::raw_concurrent_insert_baseline`]).
//!
//! The concurrent figures get three raw limits: as many raw callers, each
//! inserting one row per transaction and waiting for its commit (what the
//! database gives that many independent durable writers, on the pool's
//! connections); transactions of as many rows as the writer grouped per
//! transaction in that figure, one after another; and the 1000-row ceiling
//! of any grouping.
//!
//! The raw rows are the figure's events as the database sees them
//! ([`RawRows`]): the same payload and metadata sizes, in a table built like
//! `events` (its `(stream, version)` unique index included), going round as
//! many streams as the figure's callers, so each raw transaction dirties as
//! many index leaves as the writer's transactions do.
//!
//! Every caller appends like a command handler does: one request at a time,
//! on its own stream, with `NoStream` for its first event and `Exactly(v)`
//! after, waiting for the commit before the next request.

use std::time::Instant;

use anyhow::Context as _;
use gradeflow_eventstore::canonical::canonical_json;
use gradeflow_eventstore::raw::RawRows;
use gradeflow_eventstore::{AppendOutcome, AppendRequest, ExpectedVersion, NewEvent, Store};
use gradeflow_proto::{Actor, CorrelationId, Metadata, OrgId, Role};
use tokio::task::JoinSet;

use super::report::{requests_per_transaction, Baseline, Rate, Row};

/// The kind of every benchmark event.
pub const KIND: &str = "bench_appended.v1";
/// The service recorded in the events' metadata (their subject token).
pub const SERVICE: &str = "bench";
/// Events per request in the batched figure.
const BATCH_EVENTS: usize = 100;
/// Rows per transaction of the batched raw baseline: the size at which the
/// store's writer also commits at most (`StoreOptions::max_batch`).
const RAW_BATCH: usize = 1_000;
/// The concurrent-caller figures (besides the lone caller).
const CONCURRENT_CALLERS: [usize; 2] = [16, 256];
/// A fixed W3C trace context, so events are as large as traced ones.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The append rows of one database, and what the writer did for each.
#[derive(Debug, Clone)]
pub struct Appends {
    /// The table rows, in the order measured.
    pub rows: Vec<Row>,
    /// Events the store holds afterwards.
    pub appended: u64,
    /// Requests per committed transaction, per figure.
    pub group_commit: Vec<(String, f64)>,
    /// The one-row-per-transaction raw rate (also the honest limit of a
    /// consumer that commits one message at a time).
    pub raw_single: Baseline,
    /// The multi-row raw rate (the limit of anything the writer can group).
    pub raw_batched: Baseline,
}

/// Runs the raw baselines, then the four store figures, `events` events each.
pub async fn measure(
    store: &Store,
    events: usize,
    payload_bytes: usize,
) -> anyhow::Result<Appends> {
    // Raw rows as large as this figure's events, on as many streams as the
    // figure appends to (one per caller; the batched figure uses one).
    let metadata_bytes = canonical_json(
        &serde_json::to_value(metadata()).context("encoding the benchmark's metadata")?,
    )
    .len();
    let shape = |streams: usize| RawRows {
        payload_bytes,
        metadata_bytes,
        streams,
    };
    let raw = |batch: usize, streams: usize| async move {
        store
            .raw_insert_baseline(events, batch, shape(streams))
            .await
            .with_context(|| format!("raw INSERT baseline, {batch} rows per transaction"))
            .map(|r| Rate::new(r.rows, r.elapsed))
    };
    eprintln!("  raw INSERTs…");
    let raw_single = Baseline {
        what: "INSERT, 1 row per transaction".into(),
        rate: raw(1, 1).await?,
    };
    let raw_hundred = Baseline {
        what: format!("INSERT, {BATCH_EVENTS} rows per transaction, 1 stream"),
        rate: raw(BATCH_EVENTS, 1).await?,
    };
    let raw_batched = Baseline {
        what: format!("INSERT, {RAW_BATCH} rows per transaction, 1 stream"),
        rate: raw(RAW_BATCH, 1).await?,
    };
    let connections = store.raw_pool_size();
    let mut raw_concurrent = Vec::new();
    for callers in CONCURRENT_CALLERS {
        eprintln!("  raw INSERTs, {callers} callers…");
        let rate = store
            .raw_concurrent_insert_baseline(events, callers, shape(callers))
            .await
            .with_context(|| format!("raw INSERT baseline, {callers} concurrent callers"))?;
        raw_concurrent.push(Baseline {
            what: format!(
                "INSERT, 1 row per transaction, {callers} callers on {connections} connections"
            ),
            rate: Rate::new(rate.rows, rate.elapsed),
        });
    }

    let payload = payload(payload_bytes);
    let mut rows = Vec::new();
    let mut group_commit = Vec::new();
    for callers in std::iter::once(1).chain(CONCURRENT_CALLERS) {
        let figure = if callers == 1 {
            "append, 1 caller".to_owned()
        } else {
            format!("append, {callers} callers")
        };
        eprintln!("  {figure}…");
        let before = store.stats();
        let rate = concurrent_callers(store, callers, events, &payload).await?;
        let grouped = requests_per_transaction(before, store.stats());
        group_commit.push((figure.clone(), grouped));
        // A single caller waits for every commit: its honest limit is the
        // database's one-row-per-transaction rate. Concurrent callers are
        // compared with as many raw durable writers, with the database's
        // rate for transactions of the size the writer grouped, and with the
        // ceiling of any grouping.
        let baselines = match CONCURRENT_CALLERS.iter().position(|&c| c == callers) {
            None => vec![raw_single.clone(), raw_batched.clone()],
            Some(i) => {
                let seen = writer_batch(grouped);
                eprintln!("  raw INSERTs, {seen} rows per transaction…");
                let seen_rate = raw(seen, callers).await?;
                eprintln!("  raw INSERTs, {RAW_BATCH} rows per transaction, {callers} streams…");
                let ceiling = Baseline {
                    what: format!("INSERT, {RAW_BATCH} rows per transaction, {callers} streams"),
                    rate: raw(RAW_BATCH, callers).await?,
                };
                let seen = Baseline {
                    what: format!(
                        "INSERT, {seen} rows per transaction, {callers} streams (the writer's mean batch here)"
                    ),
                    rate: seen_rate,
                };
                vec![raw_concurrent[i].clone(), seen, ceiling]
            }
        };
        rows.push(Row {
            figure,
            rate,
            baselines,
        });
    }
    let figure = format!("append, {BATCH_EVENTS} events per request");
    eprintln!("  {figure}…");
    let before = store.stats();
    let rate = batched_requests(store, events, &payload).await?;
    group_commit.push((
        figure.clone(),
        requests_per_transaction(before, store.stats()),
    ));
    rows.push(Row {
        figure,
        rate,
        baselines: vec![raw_hundred, raw_batched.clone()],
    });

    let appended = store
        .head()
        .await
        .context("reading the store's head after the appends")?
        .map_or(0, |(position, _)| position);
    let appended = u64::try_from(appended).unwrap_or(0);
    anyhow::ensure!(
        appended == 4 * events as u64,
        "the store holds {appended} events after appending {} in four figures",
        4 * events
    );
    Ok(Appends {
        rows,
        appended,
        group_commit,
        raw_single,
        raw_batched,
    })
}

/// The raw batch size matching a writer that grouped `requests_per_transaction`
/// one-event requests per transaction: the mean, rounded, within
/// `1..=RAW_BATCH`.
fn writer_batch(requests_per_transaction: f64) -> usize {
    if requests_per_transaction.is_finite() {
        (requests_per_transaction.round() as usize).clamp(1, RAW_BATCH)
    } else {
        1
    }
}

/// A JSON payload whose canonical encoding is `bytes` long (at least the 8
/// bytes of `{"p":""}`), like the raw baseline's rows.
pub fn payload(bytes: usize) -> serde_json::Value {
    serde_json::json!({ "p": "x".repeat(bytes.saturating_sub(8)) })
}

/// Metadata like a command handler's: an actor, a correlation id per
/// request, a trace context.
fn metadata() -> Metadata {
    Metadata {
        actor: Actor {
            sub: "bench".into(),
            role: Role::System,
            org: OrgId::new(),
        },
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: Some(TRACEPARENT.into()),
        service: SERVICE.into(),
        province: None,
    }
}

/// The expectation of a request that finds its stream at `version`.
fn expected(version: u64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exactly(version)
    }
}

/// How many of `total` items the `index`-th of `parts` takes: an even split,
/// the remainder going to the first ones.
pub fn share(total: usize, parts: usize, index: usize) -> usize {
    let parts = parts.max(1);
    total / parts + usize::from(index < total % parts)
}

/// `callers` tasks append `events` events between them, one per request.
async fn concurrent_callers(
    store: &Store,
    callers: usize,
    events: usize,
    payload: &serde_json::Value,
) -> anyhow::Result<Rate> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let n = share(events, callers, caller);
        let store = store.clone();
        let payload = payload.clone();
        let stream = format!("bench-{run}-c{callers}-{caller}");
        tasks.spawn(async move {
            for version in 0..n as u64 {
                let event = NewEvent::new(stream.as_str(), KIND, payload.clone(), metadata());
                let request =
                    AppendRequest::new(vec![event]).expect(stream.as_str(), expected(version));
                let outcome = store
                    .append(request)
                    .await
                    .with_context(|| format!("appending to `{stream}` at version {version}"))?;
                anyhow::ensure!(
                    matches!(outcome, AppendOutcome::Appended(_)),
                    "append to `{stream}` answered {outcome:?}"
                );
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an appending caller panicked")??;
    }
    Ok(Rate::new(events as u64, started.elapsed()))
}

/// One caller appends `events` events on one stream, 100 per request.
async fn batched_requests(
    store: &Store,
    events: usize,
    payload: &serde_json::Value,
) -> anyhow::Result<Rate> {
    let stream = format!("bench-{}-b{BATCH_EVENTS}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let mut version = 0_u64;
    while (version as usize) < events {
        let n = BATCH_EVENTS.min(events - version as usize);
        let batch = (0..n)
            .map(|_| NewEvent::new(stream.as_str(), KIND, payload.clone(), metadata()))
            .collect();
        let request = AppendRequest::new(batch).expect(stream.as_str(), expected(version));
        let outcome = store
            .append(request)
            .await
            .with_context(|| format!("appending {n} events to `{stream}` at version {version}"))?;
        anyhow::ensure!(
            matches!(outcome, AppendOutcome::Appended(_)),
            "append to `{stream}` answered {outcome:?}"
        );
        version += n as u64;
    }
    Ok(Rate::new(events as u64, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_split_the_events_evenly_and_lose_none() {
        assert_eq!((0..16).map(|i| share(20_000, 16, i)).sum::<usize>(), 20_000);
        assert_eq!((0..256).map(|i| share(300, 256, i)).sum::<usize>(), 300);
        assert_eq!(share(300, 256, 0), 2);
        assert_eq!(share(300, 256, 255), 1);
        assert_eq!(share(5, 0, 0), 5);
    }

    #[test]
    fn the_raw_batch_follows_the_writers_mean_batch() {
        assert_eq!(writer_batch(8.04), 8);
        assert_eq!(writer_batch(132.5), 133);
        assert_eq!(writer_batch(0.0), 1);
        assert_eq!(writer_batch(5_000.0), RAW_BATCH);
        assert_eq!(writer_batch(f64::NAN), 1);
    }

    #[test]
    fn the_payload_encodes_to_the_requested_size() {
        let text = serde_json::to_string(&payload(600)).unwrap_or_default();
        assert_eq!(text.len(), 600);
        assert_eq!(
            serde_json::to_string(&payload(3)).unwrap_or_default(),
            r#"{"p":""}"#
        );
    }
}
