//! Checks the system tests share on a deployment that ran a cycle: every
//! consumer caught up, the audit stream equal to the decision log record for
//! record, and every event published once and consumed exactly once with
//! every store's chain intact.
//!
//! Test support: a failed check panics, as an assertion does.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_proto::Envelope;
use serde_json::Value;

use crate::{wait_for, Deployment, SERVICES};

/// Waits until every service's durable consumer has handled everything in
/// the events stream. After a crash, the messages a killed process held come
/// back once their ack wait runs out, so this can take that long.
pub async fn wait_consumers_caught_up(dep: &Deployment) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    for service in SERVICES {
        let durable = dep.names.durable(service);
        wait_for(
            Duration::from_secs(60),
            &format!("{durable} to catch up"),
            || {
                let stream = stream.clone();
                let durable = durable.clone();
                async move {
                    let mut c: async_nats::jetstream::consumer::PullConsumer =
                        stream.get_consumer(&durable).await.ok()?;
                    let info = c.info().await.ok()?;
                    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
                }
            },
        )
        .await
        .unwrap();
    }
}

/// The audit stream holds exactly the decision log (the records of
/// `audit_decisions.v1`), record for record, in order.
pub async fn check_audit_stream(dep: &Deployment, log: &[Value]) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut stream = js.get_stream(dep.names.audit_stream()).await.unwrap();
    wait_for(Duration::from_secs(30), "the audit stream to hold the log", || {
        let mut stream = stream.clone();
        async move {
            (stream.info().await.ok()?.state.messages == log.len() as u64).then_some(())
        }
    })
    .await
    .unwrap();
    let info = stream.info().await.unwrap();
    let first = info.state.first_sequence;
    for (i, record) in log.iter().enumerate() {
        let msg = stream.get_raw_message(first + i as u64).await.unwrap();
        let mirrored: Value = serde_json::from_slice(&msg.payload).unwrap();
        for field in [
            "seq",
            "dossier",
            "grade",
            "hash",
            "prev_hash",
            "signature",
            "key_id",
            "supersedes",
        ] {
            assert_eq!(
                mirrored[field],
                record[field],
                "audit record {} {field}",
                i + 1
            );
        }
    }
}

/// Waits until the events stream holds as many messages as the stores hold
/// events of their own: a relay that was backing off after an outage (of
/// NATS or of the database) publishes the last events a little later than
/// they committed. An event that is never published keeps this waiting, and
/// [`check_exactly_once`] then names it.
pub async fn wait_relays_caught_up(dep: &Deployment) {
    let js = async_nats::jetstream::new(dep.nats.clone());
    let stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    let mut own = 0u64;
    for service in SERVICES {
        let store = open_store(dep, service).await;
        let events = store.read_from(0, usize::MAX >> 1).await.unwrap();
        own += events
            .iter()
            .filter(|e| e.metadata.service == service)
            .count() as u64;
        store.close().await;
    }
    let caught_up = wait_for(Duration::from_secs(30), "the relays to catch up", || {
        let mut stream = stream.clone();
        async move { (stream.info().await.ok()?.state.messages >= own).then_some(()) }
    })
    .await;
    if let Err(e) = caught_up {
        // Not a failure here: the check below says which event is missing.
        eprintln!("{e}");
    }
}

/// A service's store, as the deployment configured it.
async fn open_store(dep: &Deployment, service: &str) -> Store {
    let (url, schema) = dep.store_location(service);
    Store::connect(
        &url,
        StoreOptions {
            schema,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Every event published once; every observed event copied exactly once into
/// each store that observes it; every store's chain verifies.
pub async fn check_exactly_once(dep: &Deployment) {
    wait_relays_caught_up(dep).await;
    wait_consumers_caught_up(dep).await;
    let js = async_nats::jetstream::new(dep.nats.clone());
    let mut stream = js.get_stream(dep.names.events_stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    let mut published: HashMap<String, Envelope> = HashMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let env: Envelope = serde_json::from_slice(&msg.payload).unwrap();
        assert!(
            published.insert(env.event_id.to_string(), env).is_none(),
            "an event id published twice"
        );
    }
    let mut own_total = 0;
    for service in SERVICES {
        let store = open_store(dep, service).await;
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{service} chain: {:?}", report.first_broken);
        let events = store.read_from(0, usize::MAX >> 1).await.unwrap();
        let mut copies: HashSet<uuid::Uuid> = HashSet::new();
        let mut observed_kinds: HashSet<String> = HashSet::new();
        for e in &events {
            if e.metadata.service == service {
                own_total += 1;
                assert!(
                    published.contains_key(&e.event_id.to_string()),
                    "{service} event {} never published",
                    e.kind
                );
            } else {
                let cause = e.metadata.causation_id.unwrap();
                assert!(copies.insert(cause), "{service} recorded {} twice", e.kind);
                assert!(
                    published.contains_key(&cause.to_string()),
                    "{service} copied an unknown event"
                );
                observed_kinds.insert(e.kind.clone());
            }
        }
        // Every published event of a kind this service observes was copied.
        for (id, env) in &published {
            if observed_kinds.contains(&env.kind) {
                assert!(
                    copies.contains(&id.parse().unwrap()),
                    "{service} missed a {}",
                    env.kind
                );
            }
        }
        store.close().await;
    }
    assert_eq!(
        own_total,
        published.len() as u64,
        "every own event published once, nothing else"
    );
}
