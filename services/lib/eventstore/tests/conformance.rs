//! The event-store conformance suite: every test is one `async fn` over a
//! [`Db`], run twice by the `conformance!` macro — once against a fresh
//! SQLite file, once against a fresh PostgreSQL database (with the store in
//! its own schema, as services run it). Real databases only, via
//! `gradeflow-testkit`.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use gradeflow_eventstore::{
    triggers, AppendError, AppendOutcome, AppendRequest, Backend, DeadLetter, ExpectedVersion,
    InboxEntry, NewEvent, Predicted, Store, StoreError, StoreOptions, StoredEvent,
};
use gradeflow_proto::{Actor, CorrelationId, Metadata, OrgId, Role};
use gradeflow_testkit::{fresh_pg, fresh_sqlite, PgDatabase, SqliteFile};
use serde_json::json;
use sqlx::{Connection, Executor};

/// Schema the PostgreSQL runs put the store in.
const PG_SCHEMA: &str = "es_test";

/// One test's database, and the stores opened on it (closed at the end).
struct Db {
    backend: Backend,
    url: String,
    schema: Option<String>,
    _sqlite: Option<SqliteFile>,
    pg: Option<PgDatabase>,
    stores: Mutex<Vec<Store>>,
}

impl Db {
    async fn sqlite() -> Db {
        let file = fresh_sqlite().unwrap();
        Db {
            backend: Backend::Sqlite,
            url: file.url.clone(),
            schema: None,
            _sqlite: Some(file),
            pg: None,
            stores: Mutex::new(Vec::new()),
        }
    }

    async fn postgres() -> Db {
        let pg = fresh_pg().await.unwrap();
        Db {
            backend: Backend::Postgres,
            url: pg.url.clone(),
            schema: Some(PG_SCHEMA.into()),
            _sqlite: None,
            pg: Some(pg),
            stores: Mutex::new(Vec::new()),
        }
    }

    fn options(&self) -> StoreOptions {
        StoreOptions {
            schema: self.schema.clone(),
            ..StoreOptions::default()
        }
    }

    async fn open(&self) -> Store {
        self.open_with(self.options()).await
    }

    async fn open_with(&self, opts: StoreOptions) -> Store {
        let store = Store::connect(&self.url, opts).await.unwrap();
        assert_eq!(store.backend(), self.backend);
        self.stores.lock().unwrap().push(store.clone());
        store
    }

    /// Runs SQL on a connection of its own, behind the store's back.
    async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await?;
                c.execute(format!("SET search_path TO {PG_SCHEMA}").as_str())
                    .await?;
                Ok(c.execute(sql).await?.rows_affected())
            }
        }
    }

    async fn drop_trigger(&self, name: &str) {
        let sql = match self.backend {
            Backend::Sqlite => format!("DROP TRIGGER {name}"),
            Backend::Postgres => format!("DROP TRIGGER {name} ON events"),
        };
        self.raw(&sql).await.unwrap();
    }

    async fn cleanup(self) {
        let stores: Vec<Store> = std::mem::take(&mut *self.stores.lock().unwrap());
        for s in stores {
            s.close().await;
        }
        if let Some(pg) = &self.pg {
            let _ = pg.drop_db().await;
        }
    }
}

/// Runs each listed test against SQLite and PostgreSQL, each with its own
/// database and a time limit (a hang is a failure, not a stuck run).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    tokio::time::timeout(super::LIMIT, super::$name(&db)).await.expect("timed out");
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::postgres().await;
                    tokio::time::timeout(super::LIMIT, super::$name(&db)).await.expect("timed out");
                    db.cleanup().await;
                }
            )*
        }
    };
}

const LIMIT: Duration = Duration::from_secs(30);

conformance!(
    postgres_plans_every_statement_for_the_tables_as_they_are,
    appends_with_expected_versions,
    a_conflict_is_its_own_variant_with_the_actual_version,
    a_request_is_all_or_nothing,
    read_from_is_in_global_order_with_contiguous_positions,
    reappending_an_event_id_is_idempotent,
    a_retry_a_conflict_and_new_requests_queued_together_get_their_own_answers,
    an_inbox_duplicate_returns_the_stored_reply_and_writes_nothing,
    an_inbox_only_request_records_the_message,
    a_conflicting_request_does_not_fail_its_batch_neighbours,
    concurrent_writers_get_exactly_one_winner_per_version,
    a_batch_the_database_refuses_is_retried_request_by_request,
    the_hash_chain_verifies,
    an_edited_payload_is_named_by_verify,
    a_deleted_event_is_named_by_verify,
    update_and_delete_are_refused_by_triggers,
    close_commits_requests_sent_before_it,
    the_outbox_position_only_moves_forward,
    dead_letters_are_recorded_and_listed,
    a_reopened_store_continues_the_chain,
    two_stores_on_one_database_share_the_chain,
    committed_signals_each_commit,
    stored_bytes_are_canonical_and_read_back_identically,
    read_until_returns_what_was_recorded_by_then,
    predicted_requests_land_where_predicted,
    a_refused_predicted_request_refuses_the_rest_of_its_chain,
    a_prediction_behind_the_log_is_refused,
    streams_and_positions_are_read_a_part_at_a_time,
    a_batch_wider_than_one_statement_is_stored_whole,
);

// ---------------------------------------------------------------- helpers

fn meta() -> Metadata {
    Metadata {
        actor: Actor {
            sub: "tester".into(),
            role: Role::System,
            org: OrgId::new(),
        },
        correlation_id: CorrelationId::new(),
        causation_id: None,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        service: "test".into(),
        province: Some("P01".into()),
    }
}

fn ev(stream: &str, n: u64) -> NewEvent {
    NewEvent::new(
        stream,
        "thing_happened.v1",
        json!({"n": n, "stream": stream}),
        meta(),
    )
}

fn one(stream: &str, n: u64, expected: ExpectedVersion) -> AppendRequest {
    AppendRequest::new(vec![ev(stream, n)]).expect(stream, expected)
}

#[track_caller]
fn appended(outcome: AppendOutcome) -> Vec<StoredEvent> {
    match outcome {
        AppendOutcome::Appended(events) => events,
        other => panic!("expected Appended, got {other:?}"),
    }
}

async fn all_events(store: &Store) -> Vec<StoredEvent> {
    store.read_from(0, 100_000).await.unwrap()
}

#[track_caller]
fn assert_contiguous(events: &[StoredEvent]) {
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(positions, expected);
}

async fn assert_verifies(store: &Store, events: u64) {
    let report = store.verify().await.unwrap();
    assert_eq!(report.first_broken, None);
    assert_eq!(report.events, events);
    assert_eq!(
        report.head,
        store.head().await.unwrap().map(|(_, hash)| hash)
    );
}

// ------------------------------------------------------------------ tests

/// Every pooled PostgreSQL connection plans each execution afresh: a cached
/// generic plan made while the tables were empty (a sequential scan) would
/// otherwise stay until statistics change, which never happens where
/// autovacuum is off. Checked on several connections at once, after the
/// store has run its own lookups.
async fn postgres_plans_every_statement_for_the_tables_as_they_are(db: &Db) {
    let store = db.open().await;
    for i in 0..8 {
        store
            .append(AppendRequest::new(vec![ev(&format!("plan-{i}"), i)]))
            .await
            .unwrap();
    }
    let settings = join_all((0..8).map(|_| store.raw_setting("plan_cache_mode"))).await;
    for setting in settings {
        let setting = setting.unwrap();
        match db.backend {
            Backend::Sqlite => assert_eq!(setting, None),
            Backend::Postgres => assert_eq!(setting.as_deref(), Some("force_custom_plan")),
        }
    }
}

async fn appends_with_expected_versions(db: &Db) {
    let store = db.open().await;
    let first = appended(
        store
            .append(
                AppendRequest::new(vec![ev("a", 1), ev("a", 2)])
                    .expect("a", ExpectedVersion::NoStream),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        first
            .iter()
            .map(|e| (e.position, e.version))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2)]
    );
    let third = appended(
        store
            .append(one("a", 3, ExpectedVersion::Exactly(2)))
            .await
            .unwrap(),
    );
    assert_eq!((third[0].position, third[0].version), (3, 3));
    let fourth = appended(
        store
            .append(one("a", 4, ExpectedVersion::Any))
            .await
            .unwrap(),
    );
    assert_eq!(fourth[0].version, 4);
    // Exactly(0) means "no stream" too.
    let b = appended(
        store
            .append(one("b", 1, ExpectedVersion::Exactly(0)))
            .await
            .unwrap(),
    );
    assert_eq!((b[0].position, b[0].version), (5, 1));
    // Any on a new stream starts it.
    let c = appended(
        store
            .append(one("c", 1, ExpectedVersion::Any))
            .await
            .unwrap(),
    );
    assert_eq!(c[0].version, 1);

    let a = store.load_stream("a").await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        a.iter().map(|e| e.payload["n"].clone()).collect::<Vec<_>>(),
        [json!(1), json!(2), json!(3), json!(4)]
    );
    assert_eq!(store.stream_version("a").await.unwrap(), 4);
    assert_eq!(store.stream_version("b").await.unwrap(), 1);
    assert_eq!(store.stream_version("nothing").await.unwrap(), 0);
    assert!(store.load_stream("nothing").await.unwrap().is_empty());
}

async fn streams_and_positions_are_read_a_part_at_a_time(db: &Db) {
    let store = db.open().await;
    // Two streams interleaved: a1 b1 a2 b2 … a5 b5 at positions 1…10.
    for n in 1..=5 {
        for stream in ["a", "b"] {
            store
                .append(one(stream, n, ExpectedVersion::Exactly(n - 1)))
                .await
                .unwrap();
        }
    }
    let page = store.read_stream("a", 1, 2).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|e| (e.version, e.position))
            .collect::<Vec<_>>(),
        [(2, 3), (3, 5)]
    );
    assert_eq!(page, store.load_stream("a").await.unwrap()[1..3]);
    let rest = store.read_stream("a", 3, 100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    assert!(store.read_stream("a", 5, 100).await.unwrap().is_empty());
    assert!(store
        .read_stream("nothing", 0, 100)
        .await
        .unwrap()
        .is_empty());

    // Positions in any order, with a duplicate and ones that do not exist:
    // the events that do, once each, in position order, as read_from reads them.
    let all = all_events(&store).await;
    let read = store
        .read_positions(&[8, 0, 2, 99, 8, -1, 5])
        .await
        .unwrap();
    assert_eq!(read, [all[1].clone(), all[4].clone(), all[7].clone()]);
    assert!(store.read_positions(&[]).await.unwrap().is_empty());
    // More positions than one statement carries.
    let many: Vec<i64> = (1..=1_200).rev().collect();
    assert_eq!(store.read_positions(&many).await.unwrap(), all);
}

async fn a_conflict_is_its_own_variant_with_the_actual_version(db: &Db) {
    let store = db.open().await;
    store
        .append(one("a", 1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Exactly(5),
        ExpectedVersion::Exactly(0),
        ExpectedVersion::NoStream,
    ] {
        match store.append(one("a", 2, expected)).await {
            Err(AppendError::Conflict {
                stream,
                expected: e,
                actual,
            }) => {
                assert_eq!(stream, "a");
                assert_eq!(e, expected);
                assert_eq!(actual, 1);
            }
            other => panic!("expected a conflict for {expected:?}, got {other:?}"),
        }
    }
    // A conflict on a stream that does not exist reports version 0.
    match store.append(one("z", 1, ExpectedVersion::Exactly(3))).await {
        Err(AppendError::Conflict { actual: 0, .. }) => {}
        other => panic!("expected a conflict at 0, got {other:?}"),
    }
    assert_eq!(store.stream_version("a").await.unwrap(), 1);
    assert_eq!(all_events(&store).await.len(), 1);
}

async fn a_request_is_all_or_nothing(db: &Db) {
    let store = db.open().await;
    store
        .append(one("b", 1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    // Two streams, the second check fails: nothing of the request is written.
    let req = AppendRequest::new(vec![ev("a", 1), ev("b", 2)])
        .expect("a", ExpectedVersion::NoStream)
        .expect("b", ExpectedVersion::NoStream)
        .with_inbox(InboxEntry {
            consumer: "c".into(),
            message_id: "m".into(),
            reply: None,
        });
    match store.append(req).await {
        Err(AppendError::Conflict { stream, actual, .. }) => {
            assert_eq!((stream.as_str(), actual), ("b", 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.stream_version("a").await.unwrap(), 0);
    assert_eq!(all_events(&store).await.len(), 1);
    assert_eq!(store.inbox_lookup("c", "m").await.unwrap(), None);
    // Several events of one stream in one request get consecutive versions.
    let evs = appended(
        store
            .append(AppendRequest::new(vec![ev("a", 1), ev("b", 2), ev("a", 2)]))
            .await
            .unwrap(),
    );
    assert_eq!(
        evs.iter()
            .map(|e| (e.stream.as_str(), e.version))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 2), ("a", 2)]
    );
}

async fn read_from_is_in_global_order_with_contiguous_positions(db: &Db) {
    let store = db.open().await;
    for i in 0..30u64 {
        let stream = ["x", "y", "z"][(i % 3) as usize];
        store
            .append(one(stream, i, ExpectedVersion::Any))
            .await
            .unwrap();
    }
    let all = all_events(&store).await;
    assert_contiguous(&all);
    assert_eq!(
        all.iter()
            .map(|e| e.payload["n"].clone())
            .collect::<Vec<_>>(),
        (0..30u64).map(|i| json!(i)).collect::<Vec<_>>()
    );
    // Each stream's versions run 1..=10 in global order.
    for s in ["x", "y", "z"] {
        let versions: Vec<u64> = all
            .iter()
            .filter(|e| e.stream == s)
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    }
    // Each event links to the previous one.
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // Paging.
    let page = store.read_from(10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(store.read_from(30, 10).await.unwrap().is_empty());
    assert_eq!(
        store.head().await.unwrap(),
        Some((30, all[29].hash.clone()))
    );
}

/// The writer runs a batch without looking its ids up first, and again with
/// the lookup when a stored id or a failed check shows up: whichever way a
/// batch goes, each request gets the answer it would get alone.
async fn a_retry_a_conflict_and_new_requests_queued_together_get_their_own_answers(db: &Db) {
    let store = db.open().await;
    let retried = AppendRequest::new(vec![ev("r", 1)]).expect("r", ExpectedVersion::NoStream);
    let first = appended(store.append(retried.clone()).await.unwrap());
    appended(
        store
            .append(one("k", 1, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    for round in 0..3 {
        let (n1, n2) = (format!("n1-{round}"), format!("n2-{round}"));
        // Queued back to back, so the writer mostly takes them as one batch.
        let pending = vec![
            store
                .submit(one(&n1, 1, ExpectedVersion::NoStream))
                .await
                .unwrap(),
            store.submit(retried.clone()).await.unwrap(),
            store
                .submit(one("k", 9, ExpectedVersion::NoStream))
                .await
                .unwrap(),
            store
                .submit(one(&n2, 1, ExpectedVersion::NoStream))
                .await
                .unwrap(),
        ];
        let mut outcomes = Vec::new();
        for p in pending {
            outcomes.push(p.outcome().await);
        }
        let mut outcomes = outcomes.into_iter();
        let fresh = appended(outcomes.next().unwrap().unwrap());
        assert_eq!(
            (fresh[0].stream.as_str(), fresh[0].version),
            (n1.as_str(), 1)
        );
        assert_eq!(appended(outcomes.next().unwrap().unwrap()), first);
        match outcomes.next().unwrap() {
            Err(AppendError::Conflict { stream, actual, .. }) => {
                assert_eq!((stream.as_str(), actual), ("k", 1));
            }
            other => panic!("expected a conflict on k, got {other:?}"),
        }
        let fresh = appended(outcomes.next().unwrap().unwrap());
        assert_eq!(
            (fresh[0].stream.as_str(), fresh[0].version),
            (n2.as_str(), 1)
        );
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 2 + 3 * 2);
    assert_contiguous(&all);
    assert_verifies(&store, 8).await;
}

async fn reappending_an_event_id_is_idempotent(db: &Db) {
    let store = db.open().await;
    let e = ev("a", 1);
    let req = AppendRequest::new(vec![e.clone()]).expect("a", ExpectedVersion::NoStream);
    let first = appended(store.append(req.clone()).await.unwrap());
    // The retry's check no longer holds, but it is a retry: answered as stored.
    let again = appended(store.append(req).await.unwrap());
    assert_eq!(again, first);
    assert_eq!(all_events(&store).await.len(), 1);
    // A request mixing the stored event and a new one writes only the new one.
    let mixed = appended(
        store
            .append(AppendRequest::new(vec![e.clone(), ev("a", 2)]))
            .await
            .unwrap(),
    );
    assert_eq!(mixed[0], first[0]);
    assert_eq!((mixed[1].position, mixed[1].version), (2, 2));
    // The same id twice in one request is one event.
    let twice = ev("b", 1);
    let dup = appended(
        store
            .append(AppendRequest::new(vec![twice.clone(), twice]))
            .await
            .unwrap(),
    );
    assert_eq!(dup[0], dup[1]);
    assert_eq!(all_events(&store).await.len(), 3);
    // Concurrent retries of one request (same batch or not): one row.
    let racing = ev("c", 1);
    let outcomes =
        join_all((0..10).map(|_| store.append(AppendRequest::new(vec![racing.clone()])))).await;
    let stored: Vec<StoredEvent> = outcomes
        .into_iter()
        .flat_map(|o| appended(o.unwrap()))
        .collect();
    assert!(stored.iter().all(|s| *s == stored[0]));
    assert_eq!(all_events(&store).await.len(), 4);
    assert_verifies(&store, 4).await;
}

async fn an_inbox_duplicate_returns_the_stored_reply_and_writes_nothing(db: &Db) {
    let store = db.open().await;
    assert_eq!(store.inbox_lookup("relay", "m1").await.unwrap(), None);
    let reply = json!({"outcome": "accepted", "ids": [1, 2]});
    let entry = InboxEntry {
        consumer: "relay".into(),
        message_id: "m1".into(),
        reply: Some(reply.clone()),
    };
    appended(
        store
            .append(AppendRequest::new(vec![ev("a", 1)]).with_inbox(entry.clone()))
            .await
            .unwrap(),
    );
    assert_eq!(
        store.inbox_lookup("relay", "m1").await.unwrap(),
        Some(Some(reply.clone()))
    );
    // Redelivery: new event ids (a handler re-run), same message id.
    let again = store
        .append(AppendRequest::new(vec![ev("a", 2)]).with_inbox(entry))
        .await
        .unwrap();
    assert_eq!(again, AppendOutcome::Duplicate { reply: Some(reply) });
    assert_eq!(all_events(&store).await.len(), 1);
    // The same message id for another consumer is a different message.
    appended(
        store
            .append(AppendRequest::new(vec![ev("a", 3)]).with_inbox(InboxEntry {
                consumer: "other".into(),
                message_id: "m1".into(),
                reply: None,
            }))
            .await
            .unwrap(),
    );
    assert_eq!(store.inbox_lookup("other", "m1").await.unwrap(), Some(None));
    // Two deliveries of one message racing (possibly in one batch): one wins.
    let outcomes = join_all((0..10u64).map(|i| {
        store.append(AppendRequest::new(vec![ev("r", i)]).with_inbox(InboxEntry {
            consumer: "racer".into(),
            message_id: "m2".into(),
            reply: Some(json!(i)),
        }))
    }))
    .await;
    let winners: Vec<u64> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Ok(AppendOutcome::Appended(_))))
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(winners.len(), 1);
    for o in &outcomes {
        if let Ok(AppendOutcome::Duplicate { reply }) = o {
            assert_eq!(reply, &Some(json!(winners[0])));
        }
    }
    assert_eq!(store.stream_version("r").await.unwrap(), 1);
}

/// A batch carrying more rows, inbox entries and ids to look up than one
/// SQLite statement takes (256) is written as several statements in one
/// transaction: every event lands once, in order, every inbox entry keeps
/// its reply, and a redelivery of the whole batch writes nothing.
async fn a_batch_wider_than_one_statement_is_stored_whole(db: &Db) {
    let store = db.open().await;
    let entry = |i: u64| InboxEntry {
        consumer: "wide".into(),
        message_id: format!("m{i}"),
        reply: (i % 3 != 0).then(|| json!(i)),
    };
    let reqs: Vec<AppendRequest> = (0..700u64)
        .map(|i| {
            AppendRequest::new(vec![ev(&format!("s{i}"), i)])
                .expect(format!("s{i}"), ExpectedVersion::NoStream)
                .with_inbox(entry(i))
        })
        .collect();
    let long = AppendRequest::new((0..600u64).map(|n| ev("long", n)).collect());
    let mut all = reqs.clone();
    all.push(long.clone());
    let mut first = Vec::new();
    for p in submit_all(&store, all).await {
        first.extend(appended(p.outcome().await.unwrap()));
    }
    assert_eq!(first.len(), 1_300);
    let events = all_events(&store).await;
    assert_contiguous(&events);
    assert_eq!(events.len(), 1_300);
    assert_eq!(store.stream_version("long").await.unwrap(), 600);
    for i in [0u64, 1, 255, 256, 257, 511, 699] {
        assert_eq!(store.stream_version(&format!("s{i}")).await.unwrap(), 1);
        assert_eq!(
            store.inbox_lookup("wide", &format!("m{i}")).await.unwrap(),
            Some(entry(i).reply),
            "m{i}"
        );
    }
    // Redelivered all at once: every message is a duplicate with its reply,
    // and the long request's events are answered as stored.
    let mut again = reqs;
    again.push(long);
    let pending = submit_all(&store, again).await;
    for (i, p) in pending.into_iter().enumerate() {
        match p.outcome().await.unwrap() {
            AppendOutcome::Duplicate { reply } => assert_eq!(reply, entry(i as u64).reply),
            AppendOutcome::Appended(events) => {
                assert_eq!(i, 700);
                assert_eq!(events, first[700..]);
            }
        }
    }
    assert_eq!(all_events(&store).await.len(), 1_300);
    assert_verifies(&store, 1_300).await;
}

async fn an_inbox_only_request_records_the_message(db: &Db) {
    let store = db.open().await;
    let entry = InboxEntry {
        consumer: "c".into(),
        message_id: "ignored".into(),
        reply: Some(json!("nothing to do")),
    };
    let out = store
        .append(AppendRequest::default().with_inbox(entry.clone()))
        .await
        .unwrap();
    assert_eq!(out, AppendOutcome::Appended(vec![]));
    assert_eq!(
        store
            .append(AppendRequest::default().with_inbox(entry))
            .await
            .unwrap(),
        AppendOutcome::Duplicate {
            reply: Some(json!("nothing to do"))
        }
    );
    // A request with only a check still checks.
    match store
        .append(AppendRequest::default().expect("a", ExpectedVersion::Exactly(1)))
        .await
    {
        Err(AppendError::Conflict { actual: 0, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(all_events(&store).await.is_empty());
    assert_eq!(store.head().await.unwrap(), None);
}

async fn a_conflicting_request_does_not_fail_its_batch_neighbours(db: &Db) {
    let store = db.open().await;
    // Sent together, so the writer finds them queued and commits them in a
    // few batches: even requests start their own stream, odd ones all race
    // to start "shared".
    let outcomes = join_all((0..100u64).map(|i| {
        let stream = if i % 2 == 0 {
            format!("own-{i}")
        } else {
            "shared".to_owned()
        };
        store.append(one(&stream, i, ExpectedVersion::NoStream))
    }))
    .await;
    let stats = store.stats();
    assert!(
        stats.batches < stats.requests,
        "no group commit happened: {stats:?}"
    );
    let mut shared_wins = 0;
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Ok(AppendOutcome::Appended(evs)) => {
                assert_eq!(evs.len(), 1);
                if i % 2 == 1 {
                    shared_wins += 1;
                }
            }
            Err(AppendError::Conflict { stream, actual, .. }) => {
                assert_eq!(i % 2, 1, "request {i} on its own stream failed");
                assert_eq!((stream.as_str(), actual), ("shared", 1));
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(shared_wins, 1);
    let all = all_events(&store).await;
    assert_eq!(all.len(), 51);
    assert_contiguous(&all);
    assert_verifies(&store, 51).await;
}

async fn concurrent_writers_get_exactly_one_winner_per_version(db: &Db) {
    let store = db.open().await;
    let tasks: Vec<_> = (0..50u64)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                let mut conflicts = 0;
                for target in 0..20u64 {
                    match store
                        .append(one("race", task, ExpectedVersion::Exactly(target)))
                        .await
                    {
                        Ok(AppendOutcome::Appended(evs)) => {
                            assert_eq!(evs[0].version, target + 1);
                            won.push(evs[0].version);
                        }
                        Err(AppendError::Conflict { actual, .. }) => {
                            assert_ne!(actual, target);
                            conflicts += 1;
                        }
                        other => panic!("task {task}: {other:?}"),
                    }
                }
                (won, conflicts)
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (won, c) = t.await.unwrap();
        versions.extend(won);
        conflicts += c;
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
    assert_eq!(conflicts, 50 * 20 - 20);
    let stream = store.load_stream("race").await.unwrap();
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<u64>>()
    );
    assert_contiguous(&all_events(&store).await);
    assert_verifies(&store, 20).await;
}

async fn a_batch_the_database_refuses_is_retried_request_by_request(db: &Db) {
    let store = db.open().await;
    store
        .append(one("a", 1, ExpectedVersion::Any))
        .await
        .unwrap();
    // Another process writes position 2 behind the store's back (bypassing
    // the chain_head row): the writer's next batch collides with it on the
    // primary key, is rolled back, and each request is retried on its own
    // after reloading the head from the events table.
    let intrude = |position: i64| {
        let metadata = serde_json::to_string(&meta()).unwrap();
        format!(
            "INSERT INTO events ({cols}) VALUES ({position}, 'intruder', {position}, '{id}', \
             'k.v1', '{{}}', '{metadata}', '2030-01-01T00:00:00.000000Z', 'x', 'y')",
            cols = "position, stream, version, event_id, kind, payload, metadata, recorded_at, \
                    prev_hash, hash",
            id = uuid::Uuid::new_v4(),
        )
    };
    // A batch of one.
    assert_eq!(db.raw(&intrude(2)).await.unwrap(), 1);
    let alone = appended(
        store
            .append(one("a", 2, ExpectedVersion::Exactly(1)))
            .await
            .unwrap(),
    );
    assert_eq!((alone[0].position, alone[0].version), (3, 2));
    // Requests sent together (so batched).
    assert_eq!(db.raw(&intrude(4)).await.unwrap(), 1);
    let outcomes = join_all(
        (0..10u64).map(|i| store.append(one(&format!("s{i}"), i, ExpectedVersion::NoStream))),
    )
    .await;
    for o in outcomes {
        appended(o.unwrap());
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 14);
    assert_contiguous(&all);
    // verify names the intruder (its hash is not the chain's).
    assert_eq!(
        store.verify().await.unwrap().first_broken.map(|b| b.0),
        Some(2)
    );
}

async fn the_hash_chain_verifies(db: &Db) {
    let store = db.open().await;
    let empty = store.verify().await.unwrap();
    assert_eq!(
        (empty.events, empty.head, empty.first_broken),
        (0, None, None)
    );
    for i in 0..7u64 {
        store
            .append(AppendRequest::new(vec![ev("a", i), ev("b", i)]))
            .await
            .unwrap();
    }
    assert_verifies(&store, 14).await;
    let all = all_events(&store).await;
    assert_eq!(all[0].prev_hash, "0".repeat(64));
    assert!(all
        .iter()
        .all(|e| e.hash.len() == 64 && e.hash.chars().all(|c| c.is_ascii_hexdigit())));
}

async fn an_edited_payload_is_named_by_verify(db: &Db) {
    let store = db.open().await;
    for i in 0..5u64 {
        store
            .append(one("a", i, ExpectedVersion::Any))
            .await
            .unwrap();
    }
    db.drop_trigger(triggers::NO_UPDATE).await;
    let changed = db
        .raw(r#"UPDATE events SET payload = '{"n":999,"stream":"a"}' WHERE position = 3"#)
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let report = store.verify().await.unwrap();
    let (position, problem) = report.first_broken.clone().unwrap();
    assert_eq!(position, 3, "{problem}");
    assert!(problem.contains("hash mismatch"), "{problem}");
    assert_eq!(report.events, 5);
    // A payload that is no longer JSON at all is still reported, not an error.
    db.raw("UPDATE events SET payload = 'garbage' WHERE position = 2")
        .await
        .unwrap();
    let report = store.verify().await.unwrap();
    assert_eq!(report.first_broken.map(|b| b.0), Some(2));
    // Editing the hash too breaks the next event's link.
    db.raw("UPDATE events SET hash = 'x' WHERE position = 1")
        .await
        .unwrap();
    let report = store.verify().await.unwrap();
    assert_eq!(report.first_broken.map(|b| b.0), Some(1));
}

async fn a_deleted_event_is_named_by_verify(db: &Db) {
    let store = db.open().await;
    for i in 0..6u64 {
        store
            .append(one("a", i, ExpectedVersion::Any))
            .await
            .unwrap();
    }
    db.drop_trigger(triggers::NO_DELETE).await;
    // The last event: no gap, but the chain head knows.
    db.raw("DELETE FROM events WHERE position = 6")
        .await
        .unwrap();
    let (position, problem) = store.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(position, 6, "{problem}");
    assert!(problem.contains("missing"), "{problem}");
    // One in the middle: a gap.
    db.raw("DELETE FROM events WHERE position = 4")
        .await
        .unwrap();
    let report = store.verify().await.unwrap();
    let (position, problem) = report.first_broken.unwrap();
    assert_eq!(position, 4, "{problem}");
    assert!(problem.contains("gap"), "{problem}");
    assert_eq!(report.events, 4);
}

async fn update_and_delete_are_refused_by_triggers(db: &Db) {
    let store = db.open().await;
    store
        .append(one("a", 1, ExpectedVersion::Any))
        .await
        .unwrap();
    let mut refused = vec![
        db.raw("UPDATE events SET payload = '{}' WHERE position = 1")
            .await,
        db.raw("UPDATE events SET kind = kind").await,
        db.raw("DELETE FROM events WHERE position = 1").await,
        db.raw("DELETE FROM events").await,
    ];
    if db.backend == Backend::Postgres {
        refused.push(db.raw("TRUNCATE events").await);
    }
    for r in refused {
        let err = r.unwrap_err();
        assert!(
            err.to_string().contains(triggers::MESSAGE),
            "unexpected error: {err}"
        );
    }
    assert_eq!(all_events(&store).await.len(), 1);
    assert_verifies(&store, 1).await;
}

async fn close_commits_requests_sent_before_it(db: &Db) {
    // Small batches, so most requests are still queued when close() starts.
    let store = db
        .open_with(StoreOptions {
            max_batch: 5,
            ..db.options()
        })
        .await;
    // Unconstrained: without Tokio's cooperative budget, one poll of
    // join_all polls every append once, and each one's send completes at
    // once (the channel has room) — so all 100 are queued before close().
    let appends = tokio::task::unconstrained(join_all(
        (0..100u64).map(|i| store.append(one("a", i, ExpectedVersion::Any))),
    ));
    let mut appends = Box::pin(appends);
    std::future::poll_fn(|cx| {
        let _ = appends.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    let closer = store.clone();
    let (outcomes, ()) = tokio::join!(appends, closer.close());
    for o in outcomes {
        appended(o.unwrap());
    }
    assert!(matches!(
        store.append(one("a", 0, ExpectedVersion::Any)).await,
        Err(AppendError::Closed)
    ));
    store.close().await; // idempotent
    let reopened = db.open().await;
    let all = all_events(&reopened).await;
    assert_eq!(all.len(), 100);
    assert_contiguous(&all);
    assert_verifies(&reopened, 100).await;
}

async fn the_outbox_position_only_moves_forward(db: &Db) {
    let store = db.open().await;
    assert_eq!(store.outbox_position("relay").await.unwrap(), 0);
    store.set_outbox_position("relay", 5).await.unwrap();
    assert_eq!(store.outbox_position("relay").await.unwrap(), 5);
    store.set_outbox_position("relay", 3).await.unwrap();
    assert_eq!(store.outbox_position("relay").await.unwrap(), 5);
    store.set_outbox_position("relay", 9).await.unwrap();
    assert_eq!(store.outbox_position("relay").await.unwrap(), 9);
    assert_eq!(store.outbox_position("audit").await.unwrap(), 0);
    store.set_outbox_position("audit", 1).await.unwrap();
    assert_eq!(store.outbox_position("audit").await.unwrap(), 1);
    assert_eq!(store.outbox_position("relay").await.unwrap(), 9);
}

async fn dead_letters_are_recorded_and_listed(db: &Db) {
    let store = db.open().await;
    let dl = |consumer: &str, id: &str| DeadLetter {
        consumer: consumer.into(),
        message_id: id.into(),
        subject: format!("t.evt.x.{id}"),
        deliveries: 5,
        reason: "handler failed: bad input".into(),
        payload: r#"{"not": "valid for us"}"#.into(),
    };
    assert!(store.dead_letters(None).await.unwrap().is_empty());
    store.record_dead_letter(dl("a", "1")).await.unwrap();
    store.record_dead_letter(dl("b", "2")).await.unwrap();
    store.record_dead_letter(dl("a", "3")).await.unwrap();
    let all = store.dead_letters(None).await.unwrap();
    assert_eq!(all.len(), 3);
    let mut of_a = store.dead_letters(Some("a")).await.unwrap();
    of_a.sort_by(|x, y| x.message_id.cmp(&y.message_id));
    assert_eq!(of_a, vec![dl("a", "1"), dl("a", "3")]);
    assert_eq!(
        store.dead_letters(Some("b")).await.unwrap(),
        vec![dl("b", "2")]
    );
    // Recording one again replaces it.
    let mut more = dl("a", "1");
    more.deliveries = 9;
    store.record_dead_letter(more.clone()).await.unwrap();
    let of_a = store.dead_letters(Some("a")).await.unwrap();
    assert_eq!(of_a.len(), 2);
    assert!(of_a.contains(&more));
}

async fn a_reopened_store_continues_the_chain(db: &Db) {
    let store = db.open().await;
    for i in 0..3u64 {
        store
            .append(one("a", i, ExpectedVersion::Any))
            .await
            .unwrap();
    }
    let (_, old_head) = store.head().await.unwrap().unwrap();
    store.close().await;
    let reopened = db.open().await;
    assert_eq!(*reopened.committed().borrow(), 3);
    let next = appended(
        reopened
            .append(one("a", 3, ExpectedVersion::Exactly(3)))
            .await
            .unwrap(),
    );
    assert_eq!((next[0].position, next[0].version), (4, 4));
    assert_eq!(next[0].prev_hash, old_head);
    reopened
        .append(one("b", 0, ExpectedVersion::NoStream))
        .await
        .unwrap();
    assert_contiguous(&all_events(&reopened).await);
    assert_verifies(&reopened, 5).await;
}

async fn two_stores_on_one_database_share_the_chain(db: &Db) {
    // Two writers, as two processes or replicas of one service would have.
    let a = db.open().await;
    let b = db.open().await;
    // Each must notice the other's appends (cached versions are not trusted
    // once the head moved under them).
    a.append(one("s", 1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    b.append(one("s", 2, ExpectedVersion::Exactly(1)))
        .await
        .unwrap();
    let third = appended(
        a.append(one("s", 3, ExpectedVersion::Exactly(2)))
            .await
            .unwrap(),
    );
    assert_eq!((third[0].position, third[0].version), (3, 3));
    match b.append(one("s", 4, ExpectedVersion::Exactly(2))).await {
        Err(AppendError::Conflict { actual: 3, .. }) => {}
        other => panic!("expected a conflict at 3, got {other:?}"),
    }
    // Racing: both stores, many tasks, one shared stream and own streams.
    let tasks: Vec<_> = (0..20u64)
        .map(|task| {
            let store = if task % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut won = Vec::new();
                for target in 3..13u64 {
                    let own = format!("own-{task}");
                    store
                        .append(one(&own, target, ExpectedVersion::Any))
                        .await
                        .unwrap();
                    match store
                        .append(one("s", task, ExpectedVersion::Exactly(target)))
                        .await
                    {
                        Ok(AppendOutcome::Appended(evs)) => won.push(evs[0].version),
                        Err(AppendError::Conflict { .. }) => {}
                        other => panic!("task {task}: {other:?}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (4..=13).collect::<Vec<u64>>());
    let all = all_events(&a).await;
    assert_eq!(all.len(), 3 + 200 + 10);
    assert_contiguous(&all);
    assert_verifies(&a, all.len() as u64).await;
}

async fn committed_signals_each_commit(db: &Db) {
    let store = db.open().await;
    let mut rx = store.committed();
    assert_eq!(*rx.borrow_and_update(), 0);
    store
        .append(AppendRequest::new(vec![ev("a", 1), ev("a", 2), ev("a", 3)]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), 3);
    // A watcher waiting before the commit wakes on it.
    let waiter = {
        let mut rx = store.committed();
        tokio::spawn(async move { *rx.wait_for(|p| *p >= 4).await.unwrap() })
    };
    store
        .append(one("a", 4, ExpectedVersion::Any))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, 4);
}

async fn stored_bytes_are_canonical_and_read_back_identically(db: &Db) {
    let store = db.open().await;
    let payload: serde_json::Value = serde_json::from_str(
        r#"{ "zeta": [3, {"b": true, "a": null}], "alpha": {"y": "ư", "x": 1.5}, "mid": "q\"uote" }"#,
    )
    .unwrap();
    let metadata = meta();
    let new = NewEvent::new(
        "dossier-1",
        "grade_decided.v1",
        payload.clone(),
        metadata.clone(),
    );
    let stored = appended(
        store
            .append(AppendRequest::new(vec![new.clone()]))
            .await
            .unwrap(),
    );
    let e = &stored[0];
    assert_eq!(
        e.payload_text,
        r#"{"alpha":{"x":1.5,"y":"ư"},"mid":"q\"uote","zeta":[3,{"a":null,"b":true}]}"#
    );
    assert_eq!(e.payload, payload);
    assert_eq!(e.metadata, metadata);
    assert_eq!(e.event_id, new.event_id);
    assert_eq!(e.recorded_at.timestamp_subsec_nanos() % 1_000, 0);
    // What is read back is exactly what the append answered.
    assert_eq!(store.load_stream("dossier-1").await.unwrap(), stored);
    assert_eq!(all_events(&store).await, stored);
    // The wire envelope.
    let env = e.envelope();
    assert_eq!(env.event_id, new.event_id);
    assert_eq!(env.kind, "grade_decided.v1");
    assert_eq!((env.stream.as_str(), env.version), ("dossier-1", 1));
    assert_eq!(env.occurred_at, e.recorded_at);
    assert_eq!(env.actor, metadata.actor);
    assert_eq!(env.correlation_id, metadata.correlation_id);
    assert_eq!(env.traceparent, metadata.traceparent);
    assert_eq!(env.payload, payload);
}

async fn read_until_returns_what_was_recorded_by_then(db: &Db) {
    let store = db.open().await;
    store
        .append(AppendRequest::new(vec![ev("a", 1), ev("a", 2)]))
        .await
        .unwrap();
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .append(AppendRequest::new(vec![ev("a", 3)]))
        .await
        .unwrap();
    let before = store.read_until(cut, 0, 100).await.unwrap();
    assert_eq!(
        before.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(store.read_until(cut, 2, 100).await.unwrap().is_empty());
    let all = store.read_until(chrono::Utc::now(), 0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    // recorded_at never decreases along positions.
    assert!(all.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
}

// ------------------------------------------------------ backend-specific

#[tokio::test]
async fn postgres_schemas_isolate_stores_in_one_database() {
    let pg = fresh_pg().await.unwrap();
    let open = |schema: &str| {
        Store::connect(
            &pg.url,
            StoreOptions {
                schema: Some(schema.into()),
                ..StoreOptions::default()
            },
        )
    };
    let submission = open("submission").await.unwrap();
    let approval = open("approval").await.unwrap();
    submission
        .append(one("a", 1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    assert!(all_events(&approval).await.is_empty());
    let first = appended(
        approval
            .append(one("a", 1, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    assert_eq!(first[0].position, 1);
    // Reopening a schema that exists runs no migration twice.
    let again = open("submission").await.unwrap();
    assert_eq!(all_events(&again).await.len(), 1);
    for s in [submission, approval, again] {
        s.close().await;
    }
    pg.drop_db().await.unwrap();
}

/// The writer keeps one connection across batches. When the server ends it
/// (here an administrator's `pg_terminate_backend`; a restart or an idle
/// timeout alike), the next append must not fail: the batch runs again on a
/// fresh connection. (The server's FATAL message arrives as a database
/// error, so the one-by-one retry of a failed batch is what recovers here; a
/// connection that merely went dead, an I/O error at BEGIN, is retried at
/// once. The restart of a whole server is in the system tests.)
#[tokio::test]
async fn appends_go_on_after_the_server_kills_the_writers_connection() {
    let db = Db::postgres().await;
    let store = db.open().await;
    appended(
        store
            .append(one("a", 1, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    for round in 2..=3 {
        // Every other session on this test's own database: the writer's
        // and the pool's.
        let killed = db
            .raw(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        assert!(killed >= 1, "the writer's connection was open");
        let events = appended(
            store
                .append(one("a", round, ExpectedVersion::Exactly(round - 1)))
                .await
                .unwrap(),
        );
        assert_eq!(events[0].position, i64::try_from(round).unwrap());
    }
    assert_contiguous(&all_events(&store).await);
    let report = store.verify().await.unwrap();
    assert_eq!((report.events, report.first_broken), (3, None));
    db.cleanup().await;
}

/// A deferred constraint trigger on `events` that runs at COMMIT: it sleeps
/// `seconds` for every row of `stream` and, with `fail`, then refuses the
/// transaction. So the COMMIT of a batch holding such a row is in flight (or
/// fails) while the next requests queue behind it (a writer that overlaps
/// commits, as was tried on 2026-11-27, writes the next batch meanwhile).
async fn at_commit(db: &Db, stream: &str, seconds: f64, fail: bool) {
    let name = format!("at_commit_{stream}");
    let raise = if fail {
        "RAISE EXCEPTION 'refused at commit';"
    } else {
        ""
    };
    db.raw(&format!(
        "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep({seconds}); {raise} RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON events \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.stream = '{stream}') EXECUTE FUNCTION {name}()"
    ))
    .await
    .unwrap();
}

/// Appends one event to each of `streams`, so the writer has seen them
/// (their versions are cached).
async fn seen(store: &Store, streams: &[&str]) {
    for (n, stream) in streams.iter().enumerate() {
        appended(
            store
                .append(one(stream, n as u64, ExpectedVersion::NoStream))
                .await
                .unwrap(),
        );
    }
}

/// Submits `reqs` back to back (one batch, unless the writer was idle and
/// took the first one alone) and returns their pending outcomes.
async fn submit_all(store: &Store, reqs: Vec<AppendRequest>) -> Vec<gradeflow_eventstore::Pending> {
    let mut pending = Vec::new();
    for req in reqs {
        pending.push(store.submit(req).await.unwrap());
    }
    pending
}

/// A COMMIT that fails (here in a deferred trigger) fails its batch as a
/// whole: the batch is retried request by request, so only the bad request
/// fails, and the requests queued behind it are decided after those
/// retries, on the log as it then is. (Requests queued behind must never be
/// decided on the head the failed batch would have left.)
#[tokio::test]
async fn a_batch_whose_commit_fails_is_retried_before_the_requests_behind_it() {
    let db = Db::postgres().await;
    let store = db.open().await;
    seen(&store, &["a", "c", "d"]).await;
    at_commit(&db, "poison", 0.3, true).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    // Batch N: its COMMIT sleeps, then fails.
    let first = submit_all(
        &store,
        vec![
            one("poison", 10, ExpectedVersion::Any),
            one("a", 11, ExpectedVersion::Exactly(1)),
            one("b", 12, ExpectedVersion::NoStream),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Queued while N's COMMIT is in flight: `a` at 2 holds only if N's `a`
    // commits; the prediction holds only if all of N commits.
    let second = submit_all(
        &store,
        vec![
            one("a", 13, ExpectedVersion::Exactly(2)),
            predicted(one("c", 14, ExpectedVersion::Exactly(1)), 7, at),
            one("d", 15, ExpectedVersion::Exactly(1)),
        ],
    )
    .await;
    let mut outcomes = Vec::new();
    for p in first.into_iter().chain(second) {
        outcomes.push(p.outcome().await);
    }
    assert!(
        matches!(outcomes[0], Err(AppendError::Store(_))),
        "{:?}",
        outcomes[0]
    );
    let position = |i: usize| match &outcomes[i] {
        Ok(AppendOutcome::Appended(events)) => (events[0].stream.clone(), events[0].position),
        other => panic!("request {i}: {other:?}"),
    };
    assert_eq!(position(1), ("a".into(), 4));
    assert_eq!(position(2), ("b".into(), 5));
    assert_eq!(position(3), ("a".into(), 6));
    assert!(
        matches!(
            outcomes[4],
            Err(AppendError::Moved {
                expected: 7,
                actual: 6
            })
        ),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(position(5), ("d".into(), 7));
    let all = all_events(&store).await;
    assert_eq!(
        all.iter()
            .map(|e| (e.stream.as_str(), e.version))
            .collect::<Vec<_>>(),
        [
            ("a", 1),
            ("c", 1),
            ("d", 1),
            ("a", 2),
            ("b", 1),
            ("a", 3),
            ("d", 2)
        ]
    );
    assert_contiguous(&all);
    assert_verifies(&store, 7).await;
    db.cleanup().await;
}

/// Requests queued behind a slow COMMIT land after it, in queue order, and
/// their callers hear nothing before the slow batch's callers do.
#[tokio::test]
async fn a_batch_behind_a_slow_commit_is_answered_after_it() {
    let db = Db::postgres().await;
    let store = db.open().await;
    seen(&store, &["a", "b"]).await;
    at_commit(&db, "slow", 0.3, false).await;
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let watch = |p: gradeflow_eventstore::Pending, name: &'static str| {
        let order = order.clone();
        tokio::spawn(async move {
            let outcome = p.outcome().await;
            order.lock().unwrap().push(name);
            outcome
        })
    };
    let slow = submit_all(&store, vec![one("slow", 1, ExpectedVersion::NoStream)]).await;
    let slow = watch(slow.into_iter().next().unwrap(), "slow");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let behind = submit_all(
        &store,
        vec![
            one("a", 2, ExpectedVersion::Exactly(1)),
            one("b", 3, ExpectedVersion::Exactly(1)),
        ],
    )
    .await;
    let behind: Vec<_> = behind.into_iter().map(|p| watch(p, "behind")).collect();
    let slow = appended(slow.await.unwrap().unwrap());
    assert_eq!(slow[0].position, 3);
    for (i, b) in behind.into_iter().enumerate() {
        let events = appended(b.await.unwrap().unwrap());
        assert_eq!((events[0].position, events[0].version), (4 + i as i64, 2));
    }
    assert_eq!(*order.lock().unwrap(), ["slow", "behind", "behind"]);
    assert_contiguous(&all_events(&store).await);
    assert_verifies(&store, 5).await;
    db.cleanup().await;
}

/// The server ends the writer's connection (and the pool's) while a
/// batch's COMMIT is in flight and more requests queue behind it: nothing
/// commits half, every request answered as appended is stored as answered
/// and in order, and appends go on on a fresh connection.
#[tokio::test]
async fn the_server_ending_the_writers_connection_during_a_commit() {
    let db = Db::postgres().await;
    let store = db.open().await;
    appended(
        store
            .append(one("a", 0, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    at_commit(&db, "slow", 0.5, false).await;
    let first = submit_all(
        &store,
        vec![
            one("slow", 1, ExpectedVersion::NoStream),
            one("a", 2, ExpectedVersion::Exactly(1)),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = submit_all(
        &store,
        vec![
            one("a", 3, ExpectedVersion::Exactly(2)),
            one("b", 4, ExpectedVersion::NoStream),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = db
        .raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    assert!(killed >= 1, "the writer's connection was open");
    let mut stored = Vec::new();
    for p in first.into_iter().chain(second) {
        match p.outcome().await {
            Ok(outcome) => stored.extend(appended(outcome)),
            // The COMMIT in flight lost its connection: reported, as a
            // COMMIT that lost its connection always was.
            Err(AppendError::Store(e)) if e.is_unavailable() => {}
            other => panic!("{other:?}"),
        }
    }
    // Everything answered as appended is stored as answered, in order.
    let all = all_events(&store).await;
    assert_eq!(all[1..], stored[..]);
    assert_contiguous(&all);
    let versions: Vec<u64> = all
        .iter()
        .filter(|e| e.stream == "a")
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    // And the writer goes on.
    let next = appended(
        store
            .append(one("z", 5, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    assert_eq!(next[0].position, all.len() as i64 + 1);
    assert_verifies(&store, all.len() as u64 + 1).await;
    db.cleanup().await;
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_refused() {
    let err = Store::connect("mysql://localhost/x", StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
    let err = Store::connect(
        &gradeflow_testkit::pg_admin_url(),
        StoreOptions {
            schema: Some("bad\"; DROP".into()),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::InvalidSchema(_)), "{err:?}");
}

/// The benchmark baselines run on both databases and count what they did.
mod raw_baselines {
    #![allow(clippy::unwrap_used)]
    use gradeflow_eventstore::raw::RawRows;
    use gradeflow_eventstore::{Store, StoreOptions};

    async fn check(store: Store) {
        let rate = store
            .raw_insert_baseline(
                2_500,
                1_000,
                RawRows {
                    payload_bytes: 600,
                    metadata_bytes: 300,
                    streams: 1_000,
                },
            )
            .await
            .unwrap();
        assert_eq!(rate.rows, 2_500);
        assert!(rate.per_second() > 0.0);
        // The scratch table is gone afterwards and the log untouched.
        assert_eq!(store.head().await.unwrap(), None);
        let read = store.raw_read_hash_baseline().await.unwrap();
        assert_eq!(read.rows, 0);
    }

    #[tokio::test]
    async fn sqlite_raw_baselines_insert_and_read_the_requested_rows() {
        let f = gradeflow_testkit::fresh_sqlite().unwrap();
        check(
            Store::connect(&f.url, StoreOptions::default())
                .await
                .unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn postgres_raw_baselines_insert_and_read_the_requested_rows() {
        let db = gradeflow_testkit::fresh_pg().await.unwrap();
        check(
            Store::connect(&db.url, StoreOptions::default())
                .await
                .unwrap(),
        )
        .await;
        db.drop_db().await.ok();
    }
}

fn predicted(
    mut req: AppendRequest,
    head: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> AppendRequest {
    req.predicted = Some(Predicted {
        head,
        recorded_at: at,
    });
    req
}

/// Queued back to back, each predicting the head the one before leaves:
/// they commit at the predicted positions with the predicted time, in
/// order, and the chain still verifies.
async fn predicted_requests_land_where_predicted(db: &Db) {
    let store = db.open().await;
    let t0 = chrono::Utc::now();
    let mut pending = Vec::new();
    for i in 0..20u64 {
        let at = t0 + chrono::Duration::microseconds(i as i64 * 7);
        let req = AppendRequest::new(vec![ev("s-a", 2 * i), ev(&format!("s-{i}"), 2 * i + 1)])
            .expect("s-a", ExpectedVersion::Exactly(i));
        let i = i as i64;
        pending.push(store.submit(predicted(req, 2 * i, at)).await.unwrap());
    }
    for (i, p) in pending.into_iter().enumerate() {
        let events = appended(p.outcome().await.unwrap());
        let i = i as i64;
        assert_eq!(
            events.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![2 * i + 1, 2 * i + 2]
        );
        let at = gradeflow_eventstore::canonical::truncate_timestamp(
            t0 + chrono::Duration::microseconds(i * 7),
        );
        assert!(events.iter().all(|e| e.recorded_at == at));
    }
    let stored = all_events(&store).await;
    assert_contiguous(&stored);
    assert_eq!(stored.len(), 40);
    assert_verifies(&store, 40).await;
}

/// The first request of a chain conflicts: it and every later request of
/// the chain are refused (nothing written), while a request outside the
/// chain queued among them commits.
async fn a_refused_predicted_request_refuses_the_rest_of_its_chain(db: &Db) {
    let store = db.open().await;
    appended(
        store
            .append(one("s", 1, ExpectedVersion::NoStream))
            .await
            .unwrap(),
    );
    let at = chrono::Utc::now();
    // Expects "s" to be new: a conflict.
    let first = store
        .submit(predicted(one("s", 2, ExpectedVersion::NoStream), 1, at))
        .await
        .unwrap();
    // Predicts the head the first one would have left.
    let second = store
        .submit(predicted(one("t", 3, ExpectedVersion::NoStream), 2, at))
        .await
        .unwrap();
    let outside = store
        .submit(one("u", 4, ExpectedVersion::NoStream))
        .await
        .unwrap();
    let third = store
        .submit(predicted(one("v", 5, ExpectedVersion::NoStream), 3, at))
        .await
        .unwrap();
    assert!(matches!(
        first.outcome().await,
        Err(AppendError::Conflict { .. })
    ));
    match second.outcome().await {
        Err(AppendError::Moved { expected, actual }) => {
            assert_eq!((expected, actual), (2, 1));
        }
        other => panic!("expected Moved, got {other:?}"),
    }
    let outside = appended(outside.outcome().await.unwrap());
    assert_eq!(outside[0].position, 2);
    assert!(matches!(
        third.outcome().await,
        Err(AppendError::Moved {
            expected: 3,
            actual: 2
        })
    ));
    let stored = all_events(&store).await;
    assert_eq!(
        stored.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        vec!["s", "u"]
    );
    assert_verifies(&store, 2).await;
}

/// A predicted time earlier than the last event's is refused, so
/// `recorded_at` never decreases along positions.
async fn a_prediction_behind_the_log_is_refused(db: &Db) {
    let store = db.open().await;
    let last = appended(
        store
            .append(one("s", 1, ExpectedVersion::Any))
            .await
            .unwrap(),
    );
    let earlier = last[0].recorded_at - chrono::Duration::seconds(1);
    let refused = store
        .append(predicted(one("s", 2, ExpectedVersion::Any), 1, earlier))
        .await;
    assert!(
        matches!(
            refused,
            Err(AppendError::Moved {
                expected: 1,
                actual: 1
            })
        ),
        "{refused:?}"
    );
    let later = last[0].recorded_at + chrono::Duration::milliseconds(5);
    let ok = appended(
        store
            .append(predicted(one("s", 2, ExpectedVersion::Any), 1, later))
            .await
            .unwrap(),
    );
    assert_eq!(ok[0].position, 2);
    assert_eq!(
        ok[0].recorded_at,
        gradeflow_eventstore::canonical::truncate_timestamp(later)
    );
    assert_verifies(&store, 2).await;
}
