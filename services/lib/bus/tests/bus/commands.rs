//! Commands over request/reply: round trips, malformed requests, replies
//! too large for one message, replies encoded by their handler and read
//! typed, no responders, queue groups, concurrency and graceful shutdown.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gradeflow_bus::{
    command::{MALFORMED_COMMAND, REPLY_TOO_LARGE},
    send_command, send_command_as, CommandError, CommandHandler, CommandInbox, CommandServer,
    Effects, Reply,
};
use gradeflow_proto::{
    Actor, CommandEnvelope, CommandId, CommandReply, EventId, OrgId, Rejection, Role, TypedReply,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{new_event, sqlite_store, Bus};

const TIMEOUT: Duration = Duration::from_secs(5);

fn command(kind: &str) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::new(),
        kind: kind.into(),
        actor: Actor {
            sub: "tester".into(),
            role: Role::Central,
            org: OrgId::new(),
        },
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        payload: serde_json::json!({"n": 1}),
    }
}

/// Accepts `ok.v1` (echoing the command id and traceparent), rejects the rest.
async fn decide(cmd: CommandEnvelope) -> CommandReply {
    if cmd.kind == "ok.v1" {
        CommandReply::Accepted {
            event_ids: vec![EventId::new()],
            result: serde_json::json!({
                "command_id": cmd.command_id,
                "traceparent": cmd.traceparent,
            }),
        }
    } else {
        CommandReply::Rejected(Rejection::new("wrong_state", "no", "không"))
    }
}

#[tokio::test]
async fn accepted_and_rejected_replies_round_trip() {
    let bus = Bus::new().await;
    let shutdown = CancellationToken::new();
    let server = CommandServer::bind(&bus.client, &bus.names, "approval", Arc::new(decide))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));

    let ok = command("ok.v1");
    match send_command(&bus.client, &bus.names, "approval", &ok, TIMEOUT)
        .await
        .unwrap()
    {
        CommandReply::Accepted { event_ids, result } => {
            assert_eq!(event_ids.len(), 1);
            assert_eq!(result["command_id"], serde_json::json!(ok.command_id));
            assert_eq!(result["traceparent"], serde_json::json!(ok.traceparent));
        }
        other => panic!("expected accepted, got {other:?}"),
    }
    match send_command(
        &bus.client,
        &bus.names,
        "approval",
        &command("no.v1"),
        TIMEOUT,
    )
    .await
    .unwrap()
    {
        CommandReply::Rejected(r) => assert_eq!(r.code, "wrong_state"),
        other => panic!("expected rejected, got {other:?}"),
    }
    shutdown.cancel();
    served.await.unwrap();
}

#[tokio::test]
async fn a_malformed_command_is_rejected_as_such() {
    let bus = Bus::new().await;
    let shutdown = CancellationToken::new();
    let server = CommandServer::bind(&bus.client, &bus.names, "approval", Arc::new(decide))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));

    for body in [&b"not json"[..], br#"{"kind": "ok.v1"}"#] {
        let msg = bus
            .client
            .request(
                bus.names.command_subject("approval", "ok_v1"),
                body.to_vec().into(),
            )
            .await
            .unwrap();
        let reply: CommandReply = serde_json::from_slice(&msg.payload).unwrap();
        match reply {
            CommandReply::Rejected(r) => assert_eq!(r.code, MALFORMED_COMMAND),
            other => panic!("expected malformed_command, got {other:?}"),
        }
    }
    shutdown.cancel();
    served.await.unwrap();
}

#[tokio::test]
async fn a_reply_larger_than_max_payload_comes_back_as_a_rejection_not_a_timeout() {
    let bus = Bus::new().await;
    let max_payload = bus.client.server_info().max_payload;
    assert!(max_payload > 0, "the server announced its max_payload");
    // `big.v1` answers one string longer than the server takes in a message.
    let handler = move |cmd: CommandEnvelope| async move {
        if cmd.kind == "big.v1" {
            return CommandReply::Accepted {
                event_ids: vec![],
                result: serde_json::json!("x".repeat(max_payload + 1)),
            };
        }
        decide(cmd).await
    };
    let shutdown = CancellationToken::new();
    let server = CommandServer::bind(&bus.client, &bus.names, "progress", Arc::new(handler))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));

    let started = Instant::now();
    let reply = send_command(
        &bus.client,
        &bus.names,
        "progress",
        &command("big.v1"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Well before the caller's timeout: the rejection is the answer.
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    match reply {
        CommandReply::Rejected(r) => {
            assert_eq!(r.code, REPLY_TOO_LARGE);
            assert!(!r.message.is_empty() && !r.message_vi.is_empty());
            assert_eq!(r.details["max_payload"], serde_json::json!(max_payload));
            assert!(r.details["bytes"].as_u64().unwrap() > max_payload as u64);
        }
        other => panic!("expected reply_too_large, got {other:?}"),
    }
    // The server still answers ordinary commands afterwards.
    let ok = send_command(
        &bus.client,
        &bus.names,
        "progress",
        &command("ok.v1"),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(matches!(ok, CommandReply::Accepted { .. }));
    shutdown.cancel();
    served.await.unwrap();
}

/// A small tree, as a service with a large typed answer has.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Tree {
    code: String,
    children: Vec<Tree>,
}

fn tree() -> Tree {
    let leaf = |code: &str| Tree {
        code: code.into(),
        children: vec![],
    };
    Tree {
        code: "VN".into(),
        children: vec![leaf("VN.01"), leaf("VN.02")],
    }
}

/// Encodes its own replies: `tree.v1` straight from [`Tree`], `huge.v1` a
/// string longer than the server takes; the rest as [`decide`] answers.
struct Encoding {
    max_payload: usize,
}

impl CommandHandler for Encoding {
    async fn handle(&self, cmd: CommandEnvelope) -> CommandReply {
        decide(cmd).await
    }

    async fn reply(&self, cmd: CommandEnvelope) -> Reply {
        match cmd.kind.as_str() {
            "tree.v1" => Reply::Encoded(CommandReply::encode_accepted(&[], &tree()).unwrap()),
            "huge.v1" => Reply::Encoded(
                CommandReply::encode_accepted(&[], &"x".repeat(self.max_payload + 1)).unwrap(),
            ),
            _ => Reply::Typed(self.handle(cmd).await),
        }
    }
}

#[tokio::test]
async fn a_reply_encoded_by_its_handler_is_sent_as_is_and_still_checked_for_size() {
    let bus = Bus::new().await;
    let max_payload = bus.client.server_info().max_payload;
    let handler = Encoding { max_payload };
    let shutdown = CancellationToken::new();
    let server = CommandServer::bind(&bus.client, &bus.names, "progress", Arc::new(handler))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));
    let send = |kind: &'static str| {
        let bus = &bus;
        async move {
            send_command(&bus.client, &bus.names, "progress", &command(kind), TIMEOUT)
                .await
                .unwrap()
        }
    };
    let send_as = |kind: &'static str| {
        let bus = &bus;
        async move {
            send_command_as::<Tree>(&bus.client, &bus.names, "progress", &command(kind), TIMEOUT)
                .await
                .unwrap()
        }
    };

    // Read typed, and read as any command reply: the same answer.
    assert_eq!(
        send_as("tree.v1").await,
        TypedReply::Accepted {
            event_ids: vec![],
            result: tree()
        }
    );
    assert_eq!(
        send("tree.v1").await,
        CommandReply::Accepted {
            event_ids: vec![],
            result: serde_json::to_value(tree()).unwrap()
        }
    );
    // Too large is refused by size, encoded or not.
    match send("huge.v1").await {
        CommandReply::Rejected(r) => assert_eq!(r.code, REPLY_TOO_LARGE),
        other => panic!("expected reply_too_large, got {other:?}"),
    }
    // A typed read of a refusal is the refusal.
    match send_as("no.v1").await {
        TypedReply::Rejected(r) => assert_eq!(r.code, "wrong_state"),
        other => panic!("expected rejected, got {other:?}"),
    }
    // An answer that is not the caller's type is malformed, not a success.
    let err = send_command_as::<Tree>(
        &bus.client,
        &bus.names,
        "progress",
        &command("ok.v1"),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CommandError::Malformed { .. }), "{err:?}");
    shutdown.cancel();
    served.await.unwrap();
}

#[tokio::test]
async fn a_command_nobody_serves_fails_fast() {
    let bus = Bus::new().await;
    let err = send_command(
        &bus.client,
        &bus.names,
        "approval",
        &command("ok.v1"),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::NoResponders { .. } | CommandError::Timeout { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn two_replicas_in_the_queue_group_answer_each_request_once() {
    let bus = Bus::new().await;
    let shutdown = CancellationToken::new();
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut servers = Vec::new();
    for count in &counts {
        let count = count.clone();
        let handler = move |cmd: CommandEnvelope| {
            count.fetch_add(1, Ordering::SeqCst);
            decide(cmd)
        };
        let server = CommandServer::bind(&bus.client, &bus.names, "approval", Arc::new(handler))
            .await
            .unwrap();
        servers.push(tokio::spawn(server.run(shutdown.clone())));
    }
    const N: usize = 60;
    for _ in 0..N {
        let reply = send_command(
            &bus.client,
            &bus.names,
            "approval",
            &command("ok.v1"),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(matches!(reply, CommandReply::Accepted { .. }));
    }
    shutdown.cancel();
    for s in servers {
        s.await.unwrap();
    }
    let (a, b) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert_eq!(a + b, N, "every request handled exactly once ({a} + {b})");
    assert!(a > 0 && b > 0, "both replicas served ({a} / {b})");
}

#[tokio::test]
async fn a_slow_command_does_not_block_others_and_shutdown_answers_it() {
    let bus = Bus::new().await;
    let shutdown = CancellationToken::new();
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let handler = {
        let (release, started) = (release.clone(), started.clone());
        move |cmd: CommandEnvelope| {
            let (release, started) = (release.clone(), started.clone());
            async move {
                if cmd.kind == "slow.v1" {
                    started.notify_one();
                    release.notified().await;
                    return CommandReply::Accepted {
                        event_ids: vec![],
                        result: serde_json::json!("slow"),
                    };
                }
                decide(cmd).await
            }
        }
    };
    let server = CommandServer::bind(&bus.client, &bus.names, "approval", Arc::new(handler))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));

    let slow = {
        let (client, names) = (bus.client.clone(), bus.names.clone());
        tokio::spawn(async move {
            send_command(
                &client,
                &names,
                "approval",
                &command("slow.v1"),
                Duration::from_secs(10),
            )
            .await
        })
    };
    tokio::time::timeout(TIMEOUT, started.notified())
        .await
        .unwrap();
    // The slow one is in its handler; a fast one still gets through.
    let fast = send_command(
        &bus.client,
        &bus.names,
        "approval",
        &command("ok.v1"),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(matches!(fast, CommandReply::Accepted { .. }));

    // Shut down with the slow one in flight: the server stops taking new
    // requests but still answers it before `run` returns.
    shutdown.cancel();
    release.notify_one();
    tokio::time::timeout(TIMEOUT, served)
        .await
        .unwrap()
        .unwrap();
    match slow.await.unwrap().unwrap() {
        CommandReply::Accepted { result, .. } => assert_eq!(result, serde_json::json!("slow")),
        other => panic!("expected the slow command's answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retried_command_gets_its_first_reply_and_changes_nothing() {
    let bus = Bus::new().await;
    let (store, db) = sqlite_store().await;
    let inbox = CommandInbox::new(store.clone(), "submission");
    assert_eq!(inbox.consumer(), "cmd:submission");

    // A handler in the documented shape: the inbox first, then decide and
    // commit with the inbox record.
    let handler = {
        let inbox = inbox.clone();
        move |cmd: CommandEnvelope| {
            let inbox = inbox.clone();
            async move {
                if let Some(first) = inbox.previous_reply(cmd.command_id).await.unwrap() {
                    return first;
                }
                if cmd.kind == "no.v1" {
                    let refusal = Rejection::new("wrong_state", "no", "không");
                    return inbox.reject(cmd.command_id, refusal).await.unwrap();
                }
                let event = new_event(
                    "submission",
                    "dossier-1",
                    "opened.v1",
                    serde_json::json!({}),
                );
                let effects = Effects::events(vec![event]);
                inbox
                    .commit(
                        cmd.command_id,
                        effects,
                        serde_json::json!({"dossier": "d1"}),
                    )
                    .await
                    .unwrap()
            }
        }
    };
    let shutdown = CancellationToken::new();
    let server = CommandServer::bind(&bus.client, &bus.names, "submission", Arc::new(handler))
        .await
        .unwrap();
    let served = tokio::spawn(server.run(shutdown.clone()));

    let cmd = command("ok.v1");
    let first = send_command(&bus.client, &bus.names, "submission", &cmd, TIMEOUT)
        .await
        .unwrap();
    let again = send_command(&bus.client, &bus.names, "submission", &cmd, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert!(matches!(&first, CommandReply::Accepted { event_ids, .. } if event_ids.len() == 1));
    assert_eq!(
        store.load_stream("dossier-1").await.unwrap().len(),
        1,
        "applied once"
    );

    let refused = command("no.v1");
    let first = send_command(&bus.client, &bus.names, "submission", &refused, TIMEOUT)
        .await
        .unwrap();
    let again = send_command(&bus.client, &bus.names, "submission", &refused, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert!(matches!(first, CommandReply::Rejected(_)));

    // Two copies racing past the lookup: the store answers the second with
    // the first reply, and nothing more is written.
    let racing = CommandId::new();
    let one = inbox
        .commit(
            racing,
            Effects::events(vec![new_event(
                "submission",
                "dossier-2",
                "opened.v1",
                serde_json::json!({}),
            )]),
            serde_json::json!(1),
        )
        .await
        .unwrap();
    let two = inbox
        .commit(
            racing,
            Effects::events(vec![new_event(
                "submission",
                "dossier-2",
                "opened.v1",
                serde_json::json!({}),
            )]),
            serde_json::json!(2),
        )
        .await
        .unwrap();
    assert_eq!(one, two);
    assert_eq!(store.load_stream("dossier-2").await.unwrap().len(), 1);

    shutdown.cancel();
    served.await.unwrap();
    db.cleanup(store).await;
}
