//! Stream set-up: idempotent, immutable audit stream, mismatches named.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, StorageType};
use gradeflow_bus::{ensure_streams, EnsureStreamsError, StreamSettings};

use crate::support::Bus;

#[tokio::test]
async fn ensure_streams_creates_the_three_streams_and_is_idempotent() {
    let bus = Bus::new().await;
    let settings = StreamSettings::default();
    ensure_streams(&bus.js, &bus.names, &settings)
        .await
        .unwrap();
    // A second run (another replica starting) finds them and is content.
    ensure_streams(&bus.js, &bus.names, &settings)
        .await
        .unwrap();

    let mut events = bus.js.get_stream(bus.names.events_stream()).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![bus.names.events_filter()]);
    assert_eq!(info.config.storage, StorageType::File);
    assert!(info.config.duplicate_window >= Duration::from_secs(600));

    let mut audit = bus.js.get_stream(bus.names.audit_stream()).await.unwrap();
    let info = audit.info().await.unwrap();
    assert!(info.config.deny_delete && info.config.deny_purge);
    assert_eq!(info.config.storage, StorageType::File);

    let mut dlq = bus
        .js
        .get_stream(bus.names.dead_letter_stream())
        .await
        .unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.subjects,
        vec![bus.names.dead_letter_filter()]
    );
    bus.cleanup().await;
}

#[tokio::test]
async fn the_audit_stream_refuses_to_delete_or_purge_a_record() {
    let bus = Bus::new().await;
    ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap();
    let ack = bus
        .js
        .publish(bus.names.audit_subject("c1"), "record-1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let audit = bus.js.get_stream(bus.names.audit_stream()).await.unwrap();

    // Refused by the server because of deny_delete / deny_purge, not by
    // accident: the error says so.
    let deleted = audit.delete_message(ack.sequence).await.unwrap_err();
    assert!(deleted.to_string().contains("not permitted"), "{deleted}");
    let purged = audit.purge().await.unwrap_err();
    assert!(purged.to_string().contains("not permitted"), "{purged}");

    // Still there, and readable by direct get (allow_direct, NATS 2.9+).
    let msg = audit.direct_get(ack.sequence).await.unwrap();
    assert_eq!(msg.payload.as_ref(), b"record-1");
    bus.cleanup().await;
}

#[tokio::test]
async fn an_existing_stream_that_breaks_a_guarantee_is_named() {
    let bus = Bus::new().await;
    // Someone created the audit stream by hand, without deny_delete.
    bus.js
        .create_stream(Config {
            name: bus.names.audit_stream(),
            subjects: vec![bus.names.audit_filter()],
            duplicate_window: Duration::from_secs(900),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = ensure_streams(&bus.js, &bus.names, &StreamSettings::default())
        .await
        .unwrap_err();
    match err {
        EnsureStreamsError::Mismatch { stream, field, .. } => {
            assert_eq!(stream, bus.names.audit_stream());
            assert_eq!(field, "deny_delete");
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    bus.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_window_shorter_than_ten_minutes_is_refused() {
    let bus = Bus::new().await;
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    };
    let err = ensure_streams(&bus.js, &bus.names, &settings)
        .await
        .unwrap_err();
    assert!(matches!(err, EnsureStreamsError::Settings(_)), "{err}");
}
