//! The engine against a real store: decisions commit with their reply,
//! retries of a command id change nothing, two engines on one store (two
//! replicas) never both win a race, observed events are copied once, and a
//! reopened engine folds to the same model.

#![allow(clippy::unwrap_used)]

use gradeflow_eventstore::{AppendOutcome, InboxEntry, Store, StoreOptions, StoredEvent};
use gradeflow_proto::{Actor, CorrelationId, Envelope, EventId, OrgId, Role};
use gradeflow_service::{Context, Decision, Emit, Engine, ExecuteError, Model, Outcome};
use serde_json::json;

/// A counter per stream: the number of `tick` events, and the observed ones.
#[derive(Default)]
struct Ticks {
    ticks: std::collections::HashMap<String, u64>,
    observed: u64,
}

impl Model for Ticks {
    fn apply(&mut self, event: &StoredEvent) {
        match event.kind.as_str() {
            "tick.v1" => *self.ticks.entry(event.stream.clone()).or_default() += 1,
            "observed_thing.v1" => self.observed += 1,
            _ => {}
        }
    }
}

fn ctx() -> Context {
    Context {
        actor: Actor {
            sub: "tester".into(),
            role: Role::Central,
            org: OrgId::new(),
        },
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

/// Ticks `stream` unless it already has `limit` ticks.
fn tick_up_to(limit: u64) -> impl Fn(&Ticks) -> Result<Decision, gradeflow_proto::Rejection> {
    move |m: &Ticks| {
        let n = m.ticks.get("counter").copied().unwrap_or(0);
        if n >= limit {
            return Err(gradeflow_proto::ErrorCode::WrongState.reject("full", "đầy"));
        }
        Ok(Decision {
            events: vec![Emit {
                stream: "counter".into(),
                kind: "tick.v1".into(),
                payload: json!({"n": n + 1}),
                province: None,
                traceparent: None,
            }],
            reads: vec![],
            result: json!({"n": n + 1}),
        })
    }
}

async fn store() -> (gradeflow_testkit::SqliteFile, Store) {
    let file = gradeflow_testkit::fresh_sqlite().unwrap();
    let store = Store::connect(&file.url, StoreOptions::default())
        .await
        .unwrap();
    (file, store)
}

#[tokio::test]
async fn a_decision_commits_its_events_with_the_callers_metadata() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let c = ctx();
    let out = engine
        .execute(&c, Some("cmd-1"), tick_up_to(10))
        .await
        .unwrap();
    let Outcome::Applied { events, result } = out else {
        panic!("not applied")
    };
    assert_eq!(result, json!({"n": 1}));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.actor, c.actor);
    assert_eq!(events[0].metadata.service, "submission");
    assert_eq!(events[0].metadata.traceparent, c.traceparent);
    assert_eq!(engine.read(|m| m.ticks["counter"]).await.unwrap(), 1);
}

#[tokio::test]
async fn an_event_in_a_dossiers_trace_carries_it_instead_of_the_callers() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let dossier_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let decide = |_: &Ticks| {
        let tick = |n: u64| Emit {
            stream: format!("counter-{n}"),
            kind: "tick.v1".into(),
            payload: json!({"n": n}),
            province: None,
            traceparent: None,
        };
        Ok(Decision {
            events: vec![
                tick(1).in_trace(Some(dossier_trace)),
                tick(2).in_trace(None),
            ],
            reads: vec![],
            result: json!({}),
        })
    };
    let c = ctx();
    let Outcome::Applied { events, .. } = engine.execute(&c, None, decide).await.unwrap() else {
        panic!("not applied")
    };
    let traced = events[0].metadata.traceparent.as_deref().unwrap();
    assert!(traced.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(gradeflow_service::trace::valid(Some(traced)).is_some());
    assert_ne!(traced, dossier_trace, "a fresh span id");
    // Without a dossier trace, the event keeps the caller's.
    assert_eq!(events[1].metadata.traceparent, c.traceparent);
}

#[tokio::test]
async fn a_retried_command_id_gets_the_first_reply_and_appends_nothing() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    engine
        .execute(&ctx(), Some("cmd-1"), tick_up_to(10))
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let again = engine
        .execute(&ctx(), Some("cmd-1"), tick_up_to(10))
        .await
        .unwrap();
    match again {
        Outcome::Duplicate { reply } => assert_eq!(reply, Some(json!({"n": 1}))),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), head);
}

#[tokio::test]
async fn a_refusal_changes_nothing() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let err = engine
        .execute(&ctx(), Some("c"), tick_up_to(0))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::Rejected(r) if r.code == "wrong_state"));
    assert_eq!(store.head().await.unwrap(), None);
    // A refused command id is not remembered: once the state allows it, the
    // same id may succeed.
    assert!(store
        .inbox_lookup("cmd:submission", "c")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn two_replicas_on_one_store_never_both_win_and_respect_the_limit() {
    let (_f, store) = store().await;
    let a: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let b: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    // 40 racing commands, half on each replica, against a limit of 25: the
    // version checks make every replica decide on the latest state.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let e = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            e.execute(&ctx(), Some(&format!("c{i}")), tick_up_to(25))
                .await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Outcome::Applied { .. }) => applied += 1,
            Err(ExecuteError::Rejected(r)) => assert_eq!(r.code, "wrong_state"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 25);
    let events = store.load_stream("counter").await.unwrap();
    assert_eq!(events.len(), 25);
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (1..=25).collect::<Vec<_>>(),
        "each decision saw the latest state"
    );
    assert_eq!(b.read(|m| m.ticks["counter"]).await.unwrap(), 25);
}

#[tokio::test]
async fn an_observed_event_is_copied_once_and_a_reopened_engine_folds_the_same() {
    let (file, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "approval").await.unwrap();
    let original = Envelope {
        event_id: EventId::new(),
        kind: "observed_thing.v1".into(),
        stream: "dossier-x".into(),
        version: 3,
        occurred_at: chrono::Utc::now(),
        actor: ctx().actor,
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: json!({"x": 1}),
    };
    // The same message twice to one consumer (a redelivery), then to a
    // second consumer (a stream replayed under a new prefix): one copy. The
    // model applied the redelivery's append as it was queued; it did not
    // commit as applied (a duplicate), so the model is rebuilt once. After
    // that the engine checks the store before applying a copy: the second
    // consumer's message finds its copy stored and appends only its inbox
    // entry, with no rebuild.
    for (n, consumer) in ["c1", "c1", "c2"].into_iter().enumerate() {
        let inbox = InboxEntry {
            consumer: consumer.into(),
            message_id: original.event_id.to_string(),
            reply: None,
        };
        let out = engine
            .observe(&original, inbox, |_, _| Ok(Decision::default()))
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        match (n, out) {
            (0, AppendOutcome::Appended(events)) => assert_eq!(events[0].position, 1),
            (1, AppendOutcome::Duplicate { .. }) => {}
            (2, AppendOutcome::Appended(events)) => {
                assert!(events.is_empty(), "only the inbox entry: {events:?}");
            }
            (n, other) => panic!("observation {n}: {other:?}"),
        }
        assert_eq!(engine.read(|m| m.observed).await.unwrap(), 1);
    }
    assert_eq!(engine.rebuilds(), 1);
    assert_eq!(
        store
            .inbox_lookup("c2", &original.event_id.to_string())
            .await
            .unwrap(),
        Some(None),
        "the second consumer's message is recorded as handled"
    );
    let copies = store.load_stream("dossier-x").await.unwrap();
    assert_eq!(
        copies.len(),
        1,
        "the copy's id is deterministic, so a redelivery adds nothing"
    );
    assert_eq!(
        copies[0].metadata.causation_id,
        Some(original.event_id.as_uuid())
    );
    assert_eq!(engine.read(|m| m.observed).await.unwrap(), 1);
    drop(engine);
    store.close().await;
    let reopened = Store::connect(&file.url, StoreOptions::default())
        .await
        .unwrap();
    let again: Engine<Ticks> = Engine::open(reopened, "approval").await.unwrap();
    assert_eq!(again.read(|m| m.observed).await.unwrap(), 1);
}

/// Decisions pipeline: each is applied to the model when its append is
/// queued, so concurrent commands on one engine each see all the ones before
/// them without a conflict, and the model never needs a rebuild when the
/// engine is the store's only writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_decisions_see_each_other_and_commit_in_decision_order() {
    let (file, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let e = engine.clone();
            tokio::spawn(async move {
                e.execute(&ctx(), Some(&format!("p{i}")), tick_up_to(150))
                    .await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Outcome::Applied { .. }) => applied += 1,
            Err(ExecuteError::Rejected(r)) => assert_eq!(r.code, "wrong_state"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 150);
    assert_eq!(engine.rebuilds(), 0, "nothing failed, nothing rebuilt");
    let ns: Vec<u64> = store
        .load_stream("counter")
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=150).collect::<Vec<_>>());
    assert_eq!(store.verify().await.unwrap().first_broken, None);
    // What the model applied before the commits is what a fresh fold of the
    // store gives.
    drop(engine);
    store.close().await;
    let reopened = Store::connect(&file.url, StoreOptions::default())
        .await
        .unwrap();
    let again: Engine<Ticks> = Engine::open(reopened, "submission").await.unwrap();
    assert_eq!(again.read(|m| m.ticks["counter"]).await.unwrap(), 150);
}

/// The same command id sent twice at once (a client retry while the first
/// try commits): one decision, the same reply to both, one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_while_in_flight_gets_the_first_reply() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(async move { e.execute(&ctx(), Some("same"), tick_up_to(10)).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(match t.await.unwrap().unwrap() {
            Outcome::Applied { result, .. } => result,
            Outcome::Duplicate { reply } => reply.unwrap(),
        });
    }
    assert!(replies.iter().all(|r| *r == json!({"n": 1})), "{replies:?}");
    assert_eq!(store.load_stream("counter").await.unwrap().len(), 1);
    assert_eq!(engine.read(|m| m.ticks["counter"]).await.unwrap(), 1);
}

/// Whoever awaits a queued append may give up (a dropped future): the
/// engine cannot know what became of it, so it rebuilds its model from the
/// store, which is then the truth either way, and the inbox key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_nobody_awaits_makes_the_model_rebuild_from_the_store() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "approval").await.unwrap();
    let original = observed_thing("dossier-y");
    let inbox = InboxEntry {
        consumer: "c".into(),
        message_id: original.event_id.to_string(),
        reply: None,
    };
    let committing = engine
        .observe(&original, inbox.clone(), |_, _| Ok(Decision::default()))
        .await
        .unwrap();
    drop(committing);
    // The append is still queued in the store's writer and commits; the
    // rebuilt model catches up with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while engine.read(|m| m.observed).await.unwrap() != 1 {
        assert!(std::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(engine.rebuilds(), 1);
    // The key is free again: the redelivery is answered as a duplicate.
    let again = engine
        .observe(&original, inbox, |_, _| Ok(Decision::default()))
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert!(
        matches!(again, AppendOutcome::Duplicate { .. }),
        "{again:?}"
    );
    assert_eq!(engine.read(|m| m.observed).await.unwrap(), 1);
    assert_eq!(store.load_stream("dossier-y").await.unwrap().len(), 1);
}

/// A fresh `observed_thing.v1` of another service on `stream`.
fn observed_thing(stream: &str) -> Envelope {
    Envelope {
        event_id: EventId::new(),
        kind: "observed_thing.v1".into(),
        stream: stream.into(),
        version: 1,
        occurred_at: chrono::Utc::now(),
        actor: ctx().actor,
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: None,
        payload: json!({"n": 1}),
    }
}

/// Queues the copy of a fresh `observed_thing.v1` on `dossier-z` and
/// applies it to the model; its commit is left for the caller to await.
async fn observe_one(engine: &Engine<Ticks>) -> gradeflow_service::Committing {
    let original = observed_thing("dossier-z");
    let inbox = InboxEntry {
        consumer: "c".into(),
        message_id: original.event_id.to_string(),
        reply: None,
    };
    engine
        .observe(&original, inbox, |_, _| Ok(Decision::default()))
        .await
        .unwrap()
}

/// A read may reflect an append still committing; `settled` answers once
/// the store has it, so what the read names by position can be read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_read_is_settled_once_the_appends_it_reflects_have_committed() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "approval").await.unwrap();
    // Nothing in flight: settled at once.
    let (observed, mark) = engine.read_marked(|m| m.observed).await.unwrap();
    assert_eq!(observed, 0);
    assert!(engine.settled(mark).await.unwrap());

    // Queued and applied to the model; nobody has awaited its commit yet.
    let committing = observe_one(&engine).await;
    let (observed, mark) = engine.read_marked(|m| m.observed).await.unwrap();
    assert_eq!(observed, 1, "the model holds the append before it commits");
    assert!(engine.settled(mark).await.unwrap());
    let stored = store.load_stream("dossier-z").await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "settled: the store holds what the read saw"
    );
    assert_eq!(stored[0].kind, "observed_thing.v1");
    assert!(matches!(
        committing.outcome().await.unwrap(),
        AppendOutcome::Appended(_)
    ));
    assert_eq!(engine.read_committed(|m| m.observed).await.unwrap(), 1);
    assert_eq!(engine.rebuilds(), 0);
}

/// An append the read reflects whose outcome is lost (nobody awaits it)
/// cannot be vouched for: `settled` says so, and `read_committed` reads
/// again on the model rebuilt from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_read_is_not_settled_when_an_append_it_reflects_is_in_doubt() {
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "approval").await.unwrap();
    let committing = observe_one(&engine).await;
    let (observed, mark) = engine.read_marked(|m| m.observed).await.unwrap();
    assert_eq!(observed, 1);
    drop(committing);
    assert!(!engine.settled(mark).await.unwrap());
    // The rebuilt model holds what the store has committed: the append
    // (still queued in the writer) or not yet.
    let now = engine.read_committed(|m| m.observed).await.unwrap();
    assert!(now <= 1, "{now}");
    assert_eq!(engine.rebuilds(), 1);
    // It commits; from then on the committed read holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.load_stream("dossier-z").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(engine.read_committed(|m| m.observed).await.unwrap(), 1);
}

#[tokio::test]
async fn streams_whose_versions_went_to_the_scratch_file_are_checked_at_their_versions() {
    // Far fewer versions in memory than streams: most are read back from
    // the scratch file when a decision writes their stream again. A wrong
    // version would fail the store's check (`Conflict`) on every attempt.
    gradeflow_service::spill::set_capacity(64);
    let (_f, store) = store().await;
    let engine: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let streams: Vec<String> = (0..300)
        .map(|_| format!("dossier-{}", uuid::Uuid::now_v7()))
        .collect();
    let tick = |stream: &str| {
        let stream = stream.to_owned();
        move |_: &Ticks| {
            Ok(Decision {
                events: vec![Emit {
                    stream: stream.clone(),
                    kind: "tick.v1".into(),
                    payload: json!({}),
                    province: None,
                    traceparent: None,
                }],
                reads: vec![],
                result: json!({}),
            })
        }
    };
    for round in 1..=3u64 {
        for s in &streams {
            let Outcome::Applied { events, .. } =
                engine.execute(&ctx(), None, tick(s)).await.unwrap()
            else {
                panic!("not applied")
            };
            assert_eq!(events[0].version, round, "{s}");
        }
    }
    assert_eq!(engine.rebuilds(), 0);
    // A new engine folds the store again, its versions spilling the same way.
    let again: Engine<Ticks> = Engine::open(store.clone(), "submission").await.unwrap();
    let Outcome::Applied { events, .. } = again
        .execute(&ctx(), None, tick(&streams[0]))
        .await
        .unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(events[0].version, 4);
    assert_eq!(again.read(|m| m.ticks[&streams[0]]).await.unwrap(), 4);
}
