//! The outbox relay: exactly once per event id in the stream, in position
//! order, across aborts and restarts; the restart tail; wake-up on commit.

use std::{collections::HashSet, time::Duration};

use async_nats::header::NATS_MESSAGE_ID;
use gradeflow_bus::{ensure_streams, Relay, RelayConfig, StreamSettings};
use gradeflow_eventstore::AppendRequest;
use gradeflow_proto::Envelope;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, new_event, read_all, sqlite_store, stream_len, Bus, TRACEPARENT};

const TOTAL: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_exactly_once_across_relay_aborts() {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let (store, db) = sqlite_store().await;
    let events_stream = bus.names.events_stream();

    // The service keeps appending while the relay is killed and restarted.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 20 {
                let events = (0..20)
                    .map(|i| {
                        let n = chunk * 20 + i;
                        new_event(
                            "submission",
                            &format!("dossier-{}", n % 97),
                            "thing_happened.v1",
                            serde_json::json!({"n": n}),
                        )
                    })
                    .collect();
                store.append(AppendRequest::new(events)).await.unwrap();
            }
        })
    };

    let relay = |window: usize, read_batch: usize| {
        Relay::new(store.clone(), &bus.client, bus.names.clone(), "submission").with_config(
            RelayConfig {
                window,
                read_batch,
                ..RelayConfig::default()
            },
        )
    };
    // Abort the relay task mid-flight, each time once the stream has grown
    // past a mark: whatever it published but had not recorded is published
    // again by the next run (and by its restart tail) and must be dropped by
    // the stream's dedup.
    let mut mid_flight = 0;
    for (mark, window, read_batch) in [
        (700, 256, 500),
        (2_500, 64, 100),
        (4_000, 1024, 1000),
        (6_500, 128, 300),
        (8_000, 512, 50),
    ] {
        let task = tokio::spawn(relay(window, read_batch).run(CancellationToken::new()));
        eventually(Duration::from_secs(20), "the stream to grow", || async {
            (stream_len(&bus.js, &events_stream).await >= mark).then_some(())
        })
        .await;
        task.abort();
        let _ = task.await;
        let recorded = store.outbox_position("submission").await.unwrap();
        let in_stream = stream_len(&bus.js, &events_stream).await;
        // Published but not yet recorded: the next run must re-publish them.
        if in_stream as i64 > recorded {
            mid_flight += 1;
        }
    }
    assert!(
        mid_flight > 0,
        "no abort happened between a publish and its record"
    );
    writer.await.unwrap();

    // The last run catches up and stops gracefully.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay(512, 1000).run(shutdown.clone()));
    eventually(
        Duration::from_secs(20),
        "the relay to record every position",
        || async {
            (store.outbox_position("submission").await.unwrap() == TOTAL as i64).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();

    let stored: Vec<String> = store
        .read_from(0, TOTAL + 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(stored.len(), TOTAL);
    let messages = read_all(&bus.js, &events_stream, &bus.names.events_filter()).await;
    assert_eq!(
        messages.len(),
        TOTAL,
        "the stream holds each event exactly once"
    );
    let published: Vec<String> = messages
        .iter()
        .map(|m| {
            let env: Envelope = serde_json::from_slice(&m.payload).unwrap();
            let header = m
                .headers
                .as_ref()
                .unwrap()
                .get(NATS_MESSAGE_ID)
                .unwrap()
                .as_str();
            assert_eq!(header, env.event_id.to_string());
            env.event_id.to_string()
        })
        .collect();
    assert_eq!(
        published.iter().collect::<HashSet<_>>().len(),
        TOTAL,
        "ids are distinct"
    );
    assert!(published == stored, "the stream is in store position order");

    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn the_restart_tail_restores_events_the_server_lost() {
    let bus = Bus::new().await;
    let settings = StreamSettings::default();
    ensure_streams(&bus.js, &bus.names, &settings)
        .await
        .unwrap();
    let (store, db) = sqlite_store().await;
    let events = (0..50)
        .map(|n| {
            new_event(
                "approval",
                "decision-1",
                "grade_decided.v1",
                serde_json::json!({"n": n}),
            )
        })
        .collect();
    store.append(AppendRequest::new(events)).await.unwrap();
    let relay = Relay::new(store.clone(), &bus.client, bus.names.clone(), "approval").with_config(
        RelayConfig {
            tail_events: 20,
            ..RelayConfig::default()
        },
    );
    assert_eq!(relay.drain().await.unwrap(), 50);
    assert_eq!(stream_len(&bus.js, &bus.names.events_stream()).await, 50);

    // With the stream intact, the tail is absorbed by dedup.
    assert_eq!(relay.republish_tail().await.unwrap(), 20);
    assert_eq!(stream_len(&bus.js, &bus.names.events_stream()).await, 50);

    // Simulate a server that acknowledged and then lost everything: a
    // fresh stream. A restarted relay puts the recent tail back.
    bus.js
        .delete_stream(bus.names.events_stream())
        .await
        .unwrap();
    ensure_streams(&bus.js, &bus.names, &settings)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(shutdown.clone()));
    eventually(
        Duration::from_secs(10),
        "the tail to be re-published",
        || async { (stream_len(&bus.js, &bus.names.events_stream()).await == 20).then_some(()) },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    let tail = payload_numbers(&bus.js, &bus.names).await;
    assert_eq!(tail, (30..50).collect::<Vec<_>>());

    // Events older than the tail age are left alone (they would be stored
    // twice once outside the duplicate window).
    let old_only = relay.with_config(RelayConfig {
        tail_events: 20,
        tail_max_age: Some(Duration::ZERO),
        ..RelayConfig::default()
    });
    assert_eq!(old_only.republish_tail().await.unwrap(), 0);

    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn a_caught_up_relay_wakes_on_commit_with_subject_and_headers() {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let (store, db) = sqlite_store().await;
    // The fallback poll is an hour: only the commit signal can wake it.
    let relay = Relay::new(store.clone(), &bus.client, bus.names.clone(), "approval").with_config(
        RelayConfig {
            idle_poll: Duration::from_secs(3600),
            ..RelayConfig::default()
        },
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    let mut event = new_event(
        "approval",
        "decision-7",
        "grade_decided.v1",
        serde_json::json!({"grade": "good"}),
    );
    event.metadata.province = Some("P01".into());
    let id = event.event_id;
    store.append(AppendRequest::new(vec![event])).await.unwrap();

    eventually(
        Duration::from_secs(5),
        "the event to be published",
        || async { (stream_len(&bus.js, &bus.names.events_stream()).await == 1).then_some(()) },
    )
    .await;
    let msg = &read_all(
        &bus.js,
        &bus.names.events_stream(),
        &bus.names.events_filter(),
    )
    .await[0];
    assert_eq!(
        msg.subject.as_str(),
        bus.names
            .event_subject("approval", Some("P01"), "grade_decided.v1")
    );
    let headers = msg.headers.as_ref().unwrap();
    assert_eq!(
        headers.get(NATS_MESSAGE_ID).unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(headers.get("traceparent").unwrap().as_str(), TRACEPARENT);
    let env: Envelope = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        (env.event_id, env.version, env.stream.as_str()),
        (id, 1, "decision-7")
    );

    shutdown.cancel();
    task.await.unwrap();
    bus.cleanup().await;
    db.cleanup(store).await;
}

/// A private JetStream server on a free port (the shared one must not be
/// restarted under other tests).
struct OwnServer {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnServer {
    fn new() -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("gf-bus-nats-{}", uuid::Uuid::new_v4().simple()));
        OwnServer {
            port,
            dir,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let child = tokio::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH or in /usr/sbin (scripts/services.sh installs it)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(10),
            "the private NATS server to listen",
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await;
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `n` of each event's payload in the events stream, in stream order.
async fn payload_numbers(
    js: &async_nats::jetstream::Context,
    names: &gradeflow_proto::Names,
) -> Vec<i64> {
    read_all(js, &names.events_stream(), &names.events_filter())
        .await
        .iter()
        .map(|m| {
            serde_json::from_slice::<Envelope>(&m.payload)
                .unwrap()
                .payload["n"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// A relay on a SQLite store publishing to a private server that a test
/// stops and starts.
struct RestartRig {
    server: OwnServer,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    names: gradeflow_proto::Names,
    store: gradeflow_eventstore::Store,
    db: crate::support::Db,
}

impl RestartRig {
    async fn new() -> RestartRig {
        let mut server = OwnServer::new();
        server.start().await;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(server.url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let names = gradeflow_testkit::fresh_names();
        ensure_streams(&js, &names, &StreamSettings::default())
            .await
            .unwrap();
        let (store, db) = sqlite_store().await;
        RestartRig {
            server,
            client,
            js,
            names,
            store,
            db,
        }
    }

    /// Commits the events numbered `from..from + 100` in one request.
    async fn append(&self, from: i64) {
        let events = (from..from + 100)
            .map(|n| {
                new_event(
                    "approval",
                    "decision-1",
                    "grade_decided.v1",
                    serde_json::json!({"n": n}),
                )
            })
            .collect();
        self.store.append(AppendRequest::new(events)).await.unwrap();
    }

    /// Messages in the events stream; `None` while the server is away.
    async fn len(&self) -> Option<u64> {
        let mut s = self.js.get_stream(self.names.events_stream()).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    }

    async fn recorded(&self) -> i64 {
        self.store.outbox_position("approval").await.unwrap()
    }

    /// The running relay, retrying fast and failing in-flight publishes
    /// fast while the server is away.
    fn spawn_relay(&self, shutdown: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let relay = Relay::new(
            self.store.clone(),
            &self.client,
            self.names.clone(),
            "approval",
        )
        .with_config(RelayConfig {
            retry_max: Duration::from_millis(300),
            ack_timeout: Duration::from_millis(500),
            ..RelayConfig::default()
        });
        tokio::spawn(relay.run(shutdown.clone()))
    }

    async fn numbers(&self) -> Vec<i64> {
        payload_numbers(&self.js, &self.names).await
    }

    async fn cleanup(self) {
        self.db.cleanup(self.store).await;
    }
}

#[tokio::test]
async fn the_relay_rides_out_a_nats_restart() {
    let mut rig = RestartRig::new().await;
    let shutdown = CancellationToken::new();
    let task = rig.spawn_relay(&shutdown);
    rig.append(0).await;
    // Stored by the server and recorded by the relay: the stream can show
    // the messages before the relay has read their acks and moved its
    // position.
    eventually(Duration::from_secs(10), "the first hundred", || async {
        (rig.len().await == Some(100) && rig.recorded().await == 100).then_some(())
    })
    .await;

    // The server goes away while the service keeps committing.
    rig.server.stop().await;
    rig.append(100).await;
    // The outage lasts three publish timeouts, so the relay's publishes
    // fail and it has to retry (this sleep is the outage, not a wait for a
    // condition).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rig.recorded().await, 100);
    rig.server.start().await;
    eventually(
        Duration::from_secs(20),
        "the relay to catch up after the restart",
        || async { (rig.recorded().await == 200 && rig.len().await == Some(200)).then_some(()) },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        rig.numbers().await,
        (0..200).collect::<Vec<_>>(),
        "each event once, in order"
    );
    rig.cleanup().await;
}

#[tokio::test]
async fn a_running_relay_sends_its_tail_again_to_a_server_that_lost_what_it_acknowledged() {
    let mut rig = RestartRig::new().await;
    let shutdown = CancellationToken::new();
    let task = rig.spawn_relay(&shutdown);
    rig.append(0).await;
    eventually(Duration::from_secs(10), "the first hundred", || async {
        (rig.len().await == Some(100) && rig.recorded().await == 100).then_some(())
    })
    .await;

    // The server dies and comes back without the messages it had
    // acknowledged (as a kill before its buffered writes reach the disk can
    // leave it); the relay keeps running and nothing new is committed.
    rig.server.stop().await;
    let msgs = rig
        .server
        .dir
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join(rig.names.events_stream())
        .join("msgs");
    assert!(msgs.is_dir(), "the stream's message files at {msgs:?}");
    std::fs::remove_dir_all(&msgs).unwrap();
    std::fs::create_dir(&msgs).unwrap();
    rig.server.start().await;
    eventually(
        Duration::from_secs(20),
        "the relay to send the lost events again after the reconnect",
        || async { (rig.len().await == Some(100)).then_some(()) },
    )
    .await;

    // And it goes on with new commits: each event once, in order.
    rig.append(100).await;
    eventually(Duration::from_secs(10), "the next hundred", || async {
        (rig.len().await == Some(200)).then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(rig.numbers().await, (0..200).collect::<Vec<_>>());
    rig.cleanup().await;
}

#[tokio::test]
async fn a_relay_for_one_service_skips_the_copies_of_observed_events() {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let (store, db) = sqlite_store().await;
    // Own events interleaved with copies of other services' events.
    let events = (0..6)
        .map(|n| {
            let service = if n % 2 == 0 { "approval" } else { "submission" };
            new_event(
                service,
                "s",
                "thing_happened.v1",
                serde_json::json!({"n": n}),
            )
        })
        .collect();
    store.append(AppendRequest::new(events)).await.unwrap();
    let relay = Relay::new(store.clone(), &bus.client, bus.names.clone(), "approval")
        .only_service("approval");
    // Every position counts as handled, published or skipped.
    assert_eq!(relay.drain().await.unwrap(), 6);
    assert_eq!(stream_len(&bus.js, &bus.names.events_stream()).await, 3);
    let published = read_all(
        &bus.js,
        &bus.names.events_stream(),
        &bus.names.events_filter(),
    )
    .await;
    let ns: Vec<u64> = published
        .iter()
        .map(|m| {
            let e: Envelope = serde_json::from_slice(&m.payload).unwrap();
            e.payload["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ns, vec![0, 2, 4]);
    bus.cleanup().await;
    db.cleanup(store).await;
}

#[tokio::test]
async fn published_bodies_are_the_encoded_envelopes_of_the_stored_events() {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let (store, db) = sqlite_store().await;
    let payloads = [
        serde_json::json!({"grade": "xuất sắc", "note": "Quyết định số 12/QĐ — \"đạt\"\n\t\u{1F600}"}),
        serde_json::json!({"z": 1, "a": {"y": [1, 2.5, -0.0, 1e300, null, true], "b": "\\"}}),
        serde_json::json!({"big": u64::MAX, "neg": i64::MIN, "f": 0.1, "ctl": "\u{0001}"}),
        serde_json::json!({}),
        serde_json::json!(["Đà Nẵng", "Hà Nội", "Thừa Thiên Huế"]),
    ];
    let events = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut event = new_event(
                "approval",
                &format!("hồ-sơ-{i}"),
                "grade_decided.v1",
                payload.clone(),
            );
            if i % 2 == 1 {
                event.metadata.traceparent = None;
                event.metadata.causation_id = Some(uuid::Uuid::now_v7());
            }
            event
        })
        .collect();
    store.append(AppendRequest::new(events)).await.unwrap();
    let relay = Relay::new(store.clone(), &bus.client, bus.names.clone(), "approval");
    assert_eq!(relay.drain().await.unwrap(), payloads.len() as i64);

    let stored = store.read_from(0, 100).await.unwrap();
    let messages = read_all(
        &bus.js,
        &bus.names.events_stream(),
        &bus.names.events_filter(),
    )
    .await;
    assert_eq!(messages.len(), stored.len());
    for (msg, event) in messages.iter().zip(&stored) {
        let expected = serde_json::to_vec(&event.envelope()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&msg.payload),
            String::from_utf8_lossy(&expected),
            "the body of event {}",
            event.position
        );
        let parsed: Envelope = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(parsed, event.envelope());
    }
    bus.cleanup().await;
    db.cleanup(store).await;
}
