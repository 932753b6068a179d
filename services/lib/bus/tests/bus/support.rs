//! Shared test fixtures: a NATS connection with its own prefix, and
//! condition waits with a deadline.

use std::{future::Future, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use futures::StreamExt;
use gradeflow_eventstore::{NewEvent, Store, StoreOptions};
use gradeflow_proto::{Actor, CorrelationId, Envelope, EventId, Metadata, Names, OrgId, Role};

/// One test's view of NATS: a client, JetStream, and a prefix nobody else uses.
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
}

impl Bus {
    pub async fn new() -> Bus {
        let client = gradeflow_testkit::nats().await.unwrap();
        let js = jetstream::new(client.clone());
        Bus {
            client,
            js,
            names: gradeflow_testkit::fresh_names(),
        }
    }

    /// Deletes this test's streams (and with them their consumers); best effort.
    pub async fn cleanup(&self) {
        for stream in [
            self.names.events_stream(),
            self.names.audit_stream(),
            self.names.dead_letter_stream(),
        ] {
            let _ = self.js.delete_stream(&stream).await;
        }
    }
}

/// Polls `check` until it yields `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store and what keeps its database alive.
pub enum Db {
    Sqlite(#[allow(dead_code)] gradeflow_testkit::SqliteFile),
    Postgres(gradeflow_testkit::PgDatabase),
}

impl Db {
    /// Drops the PostgreSQL database (best effort); SQLite files go with the guard.
    pub async fn cleanup(self, store: Store) {
        store.close().await;
        if let Db::Postgres(pg) = self {
            let _ = pg.drop_db().await;
        }
    }
}

/// A fresh SQLite store.
pub async fn sqlite_store() -> (Store, Db) {
    let file = gradeflow_testkit::fresh_sqlite().unwrap();
    let store = Store::connect(&file.url, StoreOptions::default())
        .await
        .unwrap();
    (store, Db::Sqlite(file))
}

/// A fresh PostgreSQL store.
pub async fn pg_store() -> (Store, Db) {
    let pg = gradeflow_testkit::fresh_pg().await.unwrap();
    let store = Store::connect(&pg.url, StoreOptions::default())
        .await
        .unwrap();
    (store, Db::Postgres(pg))
}

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Metadata of an event recorded by `service`.
pub fn metadata(service: &str, province: Option<&str>) -> Metadata {
    Metadata {
        actor: Actor {
            sub: "tester".into(),
            role: Role::System,
            org: OrgId::new(),
        },
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: Some(TRACEPARENT.into()),
        service: service.into(),
        province: province.map(Into::into),
    }
}

/// A new event of `kind` on `stream`, recorded by `service`.
pub fn new_event(service: &str, stream: &str, kind: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(stream, kind, payload, metadata(service, None))
}

/// An envelope as another service would publish it.
pub fn envelope(stream: &str, version: u64, kind: &str, payload: serde_json::Value) -> Envelope {
    let m = metadata("source", None);
    Envelope {
        event_id: EventId::new(),
        kind: kind.into(),
        stream: stream.into(),
        version,
        occurred_at: chrono::Utc::now(),
        actor: m.actor,
        correlation_id: m.correlation_id,
        causation_id: None,
        traceparent: m.traceparent,
        payload,
    }
}

/// Messages currently in `stream`.
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Every message of `stream` on `filter`, in stream order, read with a
/// throw-away consumer.
pub async fn read_all(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<jetstream::Message> {
    let s = js.get_stream(stream).await.unwrap();
    let consumer = s
        .create_consumer(pull::Config {
            filter_subject: filter.into(),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap());
            pending -= 1;
        }
    }
    out
}
