//! Shared test fixtures: a NATS connection with its own prefix, and
//! condition waits with a deadline.

use std::{future::Future, time::Duration};

use async_nats::jetstream;
use gradeflow_proto::Names;

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
#[allow(dead_code)] // used by the relay and consumer tests
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
