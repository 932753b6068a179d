//! The consumer loop: inbox idempotency across crashes, dead letters,
//! skipped kinds, graceful shutdown.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::header::NATS_MESSAGE_ID;
use gradeflow_bus::{
    consumer::{DLQ_DELIVERIES, DLQ_MESSAGE_ID, DLQ_REASON, DLQ_SUBJECT},
    ensure_streams, publish_event, ConsumerConfig, ConsumerError, CrashHook, CrashPoint, Effects,
    EventConsumer, EventHandler, HandlerError, StreamSettings,
};
use gradeflow_eventstore::{ExpectedVersion, NewEvent, Store};
use gradeflow_proto::{Envelope, EventId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{envelope, eventually, metadata, pg_store, read_all, sqlite_store, Bus, Db};

const HAPPENED: &str = "thing_happened.v1";
const POISON: &str = "poison.v1";
const REFUSED: &str = "refused.v1";
const EFFECTS: &str = "effects";

/// Records one `effect_recorded.v1` per event on a shared stream, with a
/// fresh id each time: only the inbox stands between a redelivery and a
/// second effect. Fails `poison.v1` transiently and `refused.v1` for good.
#[derive(Default)]
struct Recorder {
    calls: Mutex<HashMap<EventId, usize>>,
    /// When set, the handler waits here before deciding.
    gate: Option<Arc<Notify>>,
    entered: Arc<Notify>,
}

impl Recorder {
    fn calls(&self, id: EventId) -> usize {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl EventHandler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<Effects, HandlerError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(event.event_id)
            .or_default() += 1;
        if let Some(gate) = &self.gate {
            self.entered.notify_one();
            gate.notified().await;
        }
        match event.kind.as_str() {
            POISON => Err(HandlerError::Transient("the dependency is down".into())),
            REFUSED => Err(HandlerError::Permanent("contradicts the state".into())),
            _ => {
                let mut effect = NewEvent::new(
                    EFFECTS,
                    "effect_recorded.v1",
                    serde_json::json!({"source": event.event_id}),
                    metadata("reactor", None),
                );
                effect.metadata.causation_id = Some(event.event_id.as_uuid());
                Ok(Effects::events(vec![effect]).expect(EFFECTS, ExpectedVersion::Any))
            }
        }
    }
}

/// How many effects the store holds for `source`.
async fn effects_of(store: &Store, source: EventId) -> usize {
    store
        .load_stream(EFFECTS)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.payload["source"] == serde_json::json!(source))
        .count()
}

/// Publishes `n` source events of `kind`; returns their ids.
async fn publish(bus: &Bus, kind: &str, n: usize) -> Vec<EventId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let env = envelope(
            &format!("dossier-{i}"),
            1,
            kind,
            serde_json::json!({"i": i}),
        );
        publish_event(&bus.js, &bus.names, "source", None, &env)
            .await
            .unwrap();
        ids.push(env.event_id);
    }
    ids
}

fn config(bus: &Bus) -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_secs(1),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        fetch_expiry: Duration::from_millis(500),
        max_deliver: 3,
        ..ConsumerConfig::new("reactor", bus.names.events_filter())
    }
}

/// Crashes once, at `point`, on the first event.
fn crash_once(point: CrashPoint) -> CrashHook {
    let fired = AtomicBool::new(false);
    Arc::new(move |at, _env: &Envelope| at == point && !fired.swap(true, Ordering::SeqCst))
}

/// The durable's state on the server.
async fn consumer_info(bus: &Bus, durable: &str) -> Option<async_nats::jetstream::consumer::Info> {
    let mut c: async_nats::jetstream::consumer::PullConsumer = bus
        .js
        .get_consumer_from_stream(durable, bus.names.events_stream())
        .await
        .ok()?;
    c.info().await.ok().cloned()
}

/// Waits until the durable has nothing pending or awaiting an ack.
async fn drained(bus: &Bus, durable: &str) {
    eventually(
        Duration::from_secs(15),
        "the consumer to ack everything",
        || async {
            let info = consumer_info(bus, durable).await?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
}

/// A consumer of `handler` with `config`, running until `shutdown`: its
/// durable's name and its task.
fn spawn_consumer<H: EventHandler + 'static>(
    bus: &Bus,
    store: &Store,
    config: ConsumerConfig,
    handler: Arc<H>,
    shutdown: &CancellationToken,
) -> (String, tokio::task::JoinHandle<Result<(), ConsumerError>>) {
    let consumer = EventConsumer::new(
        store.clone(),
        bus.client.clone(),
        bus.names.clone(),
        config,
        handler,
    );
    let durable = consumer.durable().to_owned();
    (durable, tokio::spawn(consumer.run(shutdown.clone())))
}

async fn setup(pg: bool) -> (Bus, Store, Db) {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let (store, db) = if pg {
        pg_store().await
    } else {
        sqlite_store().await
    };
    (bus, store, db)
}

#[tokio::test]
async fn a_crash_after_commit_before_ack_does_not_apply_the_message_twice() {
    let (bus, store, db) = setup(true).await;
    let ids = publish(&bus, HAPPENED, 3).await;
    let handler = Arc::new(Recorder::default());

    let crashing = EventConsumer::new(
        store.clone(),
        bus.client.clone(),
        bus.names.clone(),
        ConsumerConfig {
            crash_hook: Some(crash_once(CrashPoint::AfterCommit)),
            ..config(&bus)
        },
        handler.clone(),
    );
    let err = crashing.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConsumerError::Crashed {
                point: CrashPoint::AfterCommit,
                ..
            }
        ),
        "{err}"
    );
    // Committed, not acked.
    assert_eq!(effects_of(&store, ids[0]).await, 1);

    // The restarted process gets the message again after the ack wait.
    let shutdown = CancellationToken::new();
    let restarted = EventConsumer::new(
        store.clone(),
        bus.client.clone(),
        bus.names.clone(),
        config(&bus),
        handler.clone(),
    );
    let durable = restarted.durable().to_owned();
    let task = tokio::spawn(restarted.run(shutdown.clone()));
    for id in &ids {
        eventually(Duration::from_secs(15), "every event applied", || async {
            (effects_of(&store, *id).await >= 1).then_some(())
        })
        .await;
    }
    drained(&bus, &durable).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    for id in &ids {
        assert_eq!(
            effects_of(&store, *id).await,
            1,
            "{id} applied exactly once"
        );
    }
    // The redelivery was recognised by the inbox without running the handler.
    assert_eq!(handler.calls(ids[0]), 1);
    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn a_crash_before_commit_applies_the_message_once_on_redelivery() {
    let (bus, store, db) = setup(false).await;
    let ids = publish(&bus, HAPPENED, 2).await;
    let handler = Arc::new(Recorder::default());

    let crashing = EventConsumer::new(
        store.clone(),
        bus.client.clone(),
        bus.names.clone(),
        ConsumerConfig {
            crash_hook: Some(crash_once(CrashPoint::BeforeCommit)),
            ..config(&bus)
        },
        handler.clone(),
    );
    let err = crashing.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConsumerError::Crashed {
                point: CrashPoint::BeforeCommit,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        effects_of(&store, ids[0]).await,
        0,
        "nothing committed before the crash"
    );

    let shutdown = CancellationToken::new();
    let restarted = EventConsumer::new(
        store.clone(),
        bus.client.clone(),
        bus.names.clone(),
        config(&bus),
        handler.clone(),
    );
    let durable = restarted.durable().to_owned();
    let task = tokio::spawn(restarted.run(shutdown.clone()));
    drained(&bus, &durable).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    for id in &ids {
        assert_eq!(
            effects_of(&store, *id).await,
            1,
            "{id} applied exactly once"
        );
    }
    assert_eq!(
        handler.calls(ids[0]),
        1,
        "the crash came before the decision; decided once, after the restart"
    );
    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_consumer_goes_on() {
    let (bus, store, db) = setup(true).await;
    let poison = publish(&bus, POISON, 1).await[0];
    let refused = publish(&bus, REFUSED, 1).await[0];
    // Not an envelope at all.
    bus.js
        .publish(
            bus.names.event_subject("source", None, HAPPENED),
            "garbage".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let good = publish(&bus, HAPPENED, 3).await;
    let handler = Arc::new(Recorder::default());

    let shutdown = CancellationToken::new();
    let (durable, task) = spawn_consumer(&bus, &store, config(&bus), handler.clone(), &shutdown);

    // The good ones do not wait for the poison's redeliveries.
    for id in &good {
        eventually(
            Duration::from_secs(5),
            "the following events applied",
            || async { (effects_of(&store, *id).await == 1).then_some(()) },
        )
        .await;
    }
    let letters = eventually(Duration::from_secs(15), "three dead letters", || async {
        let letters = store.dead_letters(Some(&durable)).await.unwrap();
        (letters.len() == 3).then_some(letters)
    })
    .await;
    drained(&bus, &durable).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let by_id = |id: EventId| {
        letters
            .iter()
            .find(|l| l.message_id == id.to_string())
            .unwrap()
    };
    let transient = by_id(poison);
    assert_eq!(transient.deliveries, 3);
    assert!(
        transient.reason.contains("gave up after 3 deliveries"),
        "{}",
        transient.reason
    );
    assert_eq!(handler.calls(poison), 3);
    let permanent = by_id(refused);
    assert_eq!(permanent.deliveries, 1);
    assert!(permanent.reason.contains("contradicts the state"));
    assert_eq!(handler.calls(refused), 1);
    assert!(letters
        .iter()
        .any(|l| l.payload == "garbage" && l.reason.contains("not an event envelope")));

    // The same three on the dead-letter subject, with their provenance.
    let dlq = read_all(
        &bus.js,
        &bus.names.dead_letter_stream(),
        &bus.names.dead_letter_filter(),
    )
    .await;
    assert_eq!(dlq.len(), 3);
    let msg = dlq
        .iter()
        .find(|m| {
            m.headers
                .as_ref()
                .unwrap()
                .get(DLQ_MESSAGE_ID)
                .unwrap()
                .as_str()
                == poison.to_string()
        })
        .unwrap();
    assert_eq!(
        msg.subject.as_str(),
        bus.names.dead_letter_subject("reactor")
    );
    let h = msg.headers.as_ref().unwrap();
    assert_eq!(
        h.get(DLQ_SUBJECT).unwrap().as_str(),
        bus.names.event_subject("source", None, POISON)
    );
    assert_eq!(h.get(DLQ_DELIVERIES).unwrap().as_str(), "3");
    assert!(h
        .get(DLQ_REASON)
        .unwrap()
        .as_str()
        .contains("dependency is down"));
    assert!(h.get(NATS_MESSAGE_ID).is_some());
    let env: Envelope = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(env.event_id, poison);

    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn kinds_outside_the_handlers_are_acked_and_skipped() {
    let (bus, store, db) = setup(false).await;
    let other = publish(&bus, "something_else.v1", 2).await;
    let mine = publish(&bus, HAPPENED, 2).await;
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let (durable, task) = spawn_consumer(
        &bus,
        &store,
        config(&bus).kinds([HAPPENED]),
        handler.clone(),
        &shutdown,
    );
    drained(&bus, &durable).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    for id in &mine {
        assert_eq!(effects_of(&store, *id).await, 1);
    }
    for id in &other {
        assert_eq!(handler.calls(*id), 0);
    }
    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_hand_then_returns() {
    let (bus, store, db) = setup(false).await;
    let ids = publish(&bus, HAPPENED, 3).await;
    let gate = Arc::new(Notify::new());
    let handler = Arc::new(Recorder {
        gate: Some(gate.clone()),
        ..Recorder::default()
    });
    let shutdown = CancellationToken::new();
    let (durable, task) = spawn_consumer(
        &bus,
        &store,
        ConsumerConfig {
            // Long enough that nothing is redelivered during the test.
            ack_wait: Duration::from_secs(30),
            ..config(&bus)
        },
        handler.clone(),
        &shutdown,
    );

    // The first message is in the handler when shutdown comes.
    tokio::time::timeout(Duration::from_secs(5), handler.entered.notified())
        .await
        .unwrap();
    shutdown.cancel();
    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // It was committed and acked; the rest were released, not handled.
    assert_eq!(effects_of(&store, ids[0]).await, 1);
    assert_eq!(handler.calls(ids[1]) + handler.calls(ids[2]), 0);
    // The server applies acks asynchronously: wait for the floor to move.
    eventually(
        Duration::from_secs(5),
        "the first message to be acked",
        || async {
            let info = consumer_info(&bus, &durable).await?;
            (info.ack_floor.stream_sequence == 1).then_some(())
        },
    )
    .await;
    bus.cleanup().await;
    db.cleanup(store).await;
}

/// Records the order it is handed events in; the first one waits at the
/// gate.
#[derive(Default)]
struct InOrder {
    seen: Mutex<Vec<EventId>>,
    gate: Arc<Notify>,
    entered: Arc<Notify>,
}

impl EventHandler for InOrder {
    async fn handle(&self, event: &Envelope) -> Result<Effects, HandlerError> {
        let first = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(event.event_id);
            seen.len() == 1
        };
        if first {
            self.entered.notify_one();
            self.gate.notified().await;
        }
        Ok(Effects::none())
    }
}

/// The client drops what a pull request left in its buffer a few seconds
/// after the request's expiry. A handler slower than that must not lose
/// the rest of the batch until the ack wait brings it back, out of order:
/// every message is handled once, in stream order, long before the ack
/// wait (30 s) could have redelivered anything.
#[tokio::test]
async fn a_slow_handler_keeps_the_rest_of_its_batch_in_stream_order() {
    let (bus, store, db) = setup(false).await;
    let ids = publish(&bus, HAPPENED, 5).await;
    let handler = Arc::new(InOrder::default());
    let shutdown = CancellationToken::new();
    let (durable, task) = spawn_consumer(
        &bus,
        &store,
        ConsumerConfig {
            ack_wait: Duration::from_secs(30),
            // The client ends the request 5 s after this.
            fetch_expiry: Duration::from_millis(200),
            ..config(&bus)
        },
        handler.clone(),
        &shutdown,
    );

    tokio::time::timeout(Duration::from_secs(5), handler.entered.notified())
        .await
        .unwrap();
    // Past the client's own end of the request.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    handler.gate.notify_one();
    eventually(Duration::from_secs(10), "every message handled", || async {
        (handler.seen.lock().unwrap().len() >= ids.len()).then_some(())
    })
    .await;
    drained(&bus, &durable).await;
    assert_eq!(
        *handler.seen.lock().unwrap(),
        ids,
        "once each, in stream order"
    );

    shutdown.cancel();
    task.await.unwrap().unwrap();
    bus.cleanup().await;
    db.cleanup(store).await;
}
