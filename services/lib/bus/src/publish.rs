//! Publishing one event envelope to JetStream (`API.md` § Events on the
//! wire): JSON body, subject `<prefix>.evt.<service>.<province|_>.<kind>`,
//! header `Nats-Msg-Id` = event id so the server drops a re-publish inside the
//! duplicate window, and the W3C `traceparent` when the event carries one.
//!
//! Services do not call this for their own events: they append to their
//! store and the outbox relay ([`crate::relay`]) publishes. It is public for
//! the relay, tools and tests.
//!
//! The relay builds its messages with [`OutgoingEvent::from_stored`], which
//! writes the stored payload text into the body as it is instead of encoding
//! the parsed payload again. The store keeps payloads as canonical JSON
//! printed by `serde_json`, so the body is byte for byte the one
//! [`OutgoingEvent::new`] gives for [`StoredEvent::envelope`]. For rows read
//! with `Store::read_outbox_from` ([`OutgoingEvent::from_outbox`]) the payload
//! is never parsed at all.

use async_nats::{
    header::{NATS_EXPECTED_STREAM, NATS_MESSAGE_ID},
    jetstream::{self, context::PublishAckFuture, publish::PublishAck},
    HeaderMap,
};
use bytes::Bytes;
use gradeflow_eventstore::{OutboxEvent, StoredEvent};
use gradeflow_proto::{Envelope, Names};

use crate::trace::inject_traceparent;

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishEventError {
    /// The envelope could not be encoded (a payload that is not JSON-able).
    #[error("encoding event {event_id}")]
    Encode {
        /// The event's id.
        event_id: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The client could not hand the message to the server.
    #[error("publishing event {event_id} on `{subject}`")]
    Publish {
        /// The event's id.
        event_id: String,
        /// The subject it was published on.
        subject: String,
        /// What went wrong.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// The server did not acknowledge the message (refused it, timed out, or
    /// the connection broke). It may or may not be in the stream.
    #[error("event {event_id} was not acknowledged by the stream")]
    Unacknowledged {
        /// The event's id.
        event_id: String,
        /// What went wrong.
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// An event ready to go on the wire: subject, headers, body.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// `<prefix>.evt.<service>.<province|_>.<kind>`.
    pub subject: String,
    /// `Nats-Msg-Id`, `Nats-Expected-Stream`, `traceparent`.
    pub headers: HeaderMap,
    /// The JSON envelope.
    pub body: Bytes,
    /// The event's id, for error messages.
    pub event_id: String,
}

impl OutgoingEvent {
    /// Builds the message for `envelope`, recorded by `service` and routed by
    /// `province` (both from the event's store metadata).
    pub fn new(
        names: &Names,
        service: &str,
        province: Option<&str>,
        envelope: &Envelope,
    ) -> Result<Self, PublishEventError> {
        let event_id = envelope.event_id.to_string();
        let body = serde_json::to_vec(envelope).map_err(|source| PublishEventError::Encode {
            event_id: event_id.clone(),
            source,
        })?;
        let mut headers = HeaderMap::new();
        // Dedup key: a re-publish of the same event inside the stream's
        // duplicate window is acknowledged but not stored again.
        headers.insert(NATS_MESSAGE_ID, event_id.as_str());
        // The server refuses the message if the subject is not captured by
        // the events stream, rather than silently storing it elsewhere.
        headers.insert(NATS_EXPECTED_STREAM, names.events_stream());
        inject_traceparent(&mut headers, envelope.traceparent.as_deref());
        Ok(Self {
            subject: names.event_subject(service, province, &envelope.kind),
            headers,
            body: body.into(),
            event_id,
        })
    }

    /// The message of a stored event: its envelope on its event subject
    /// (service and province from the event's metadata), like
    /// [`OutgoingEvent::new`] with [`StoredEvent::envelope`] but without
    /// parsing or copying the payload: the body is the envelope encoded
    /// around the stored payload text, byte for byte what `new` would encode
    /// (the stored text is canonical JSON as `serde_json` prints it).
    pub fn from_stored(names: &Names, event: &StoredEvent) -> Result<Self, PublishEventError> {
        let body = stored_envelope_body(event)?;
        let event_id = event.event_id.to_string();
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event_id.as_str());
        headers.insert(NATS_EXPECTED_STREAM, names.events_stream());
        inject_traceparent(&mut headers, event.metadata.traceparent.as_deref());
        Ok(Self {
            subject: names.event_subject(
                &event.metadata.service,
                event.metadata.province.as_deref(),
                &event.kind,
            ),
            headers,
            body: body.into(),
            event_id,
        })
    }

    /// The message of an outbox row ([`gradeflow_eventstore::Store::read_outbox_from`]):
    /// the same subject, headers and body as [`OutgoingEvent::from_stored`]
    /// gives for the same stored event, without the payload ever being
    /// parsed.
    pub fn from_outbox(names: &Names, event: OutboxEvent) -> Result<Self, PublishEventError> {
        let event_id = event.event_id.to_string();
        let subject = names.event_subject(
            &event.metadata.service,
            event.metadata.province.as_deref(),
            &event.kind,
        );
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event_id.as_str());
        headers.insert(NATS_EXPECTED_STREAM, names.events_stream());
        inject_traceparent(&mut headers, event.metadata.traceparent.as_deref());
        let body = outbox_envelope_body(event)?;
        Ok(Self {
            subject,
            headers,
            body: body.into(),
            event_id,
        })
    }

    /// A message of `body` on `subject`, deduplicated by `message_id` and
    /// refused unless `stream` captures the subject (for mirrors other than
    /// the events stream, e.g. the decision log on `<prefix>_AUDIT`).
    pub fn to_stream(subject: String, message_id: String, stream: &str, body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, message_id.as_str());
        headers.insert(NATS_EXPECTED_STREAM, stream);
        Self {
            subject,
            headers,
            body,
            event_id: message_id,
        }
    }

    /// Hands the message to the client and returns the future of the
    /// server's acknowledgment, without waiting for it: many of these can be
    /// in flight at once (pipelining). The acknowledgment timeout starts when
    /// the future is awaited.
    pub async fn send(
        self,
        js: &jetstream::Context,
    ) -> Result<PublishAckFuture, PublishEventError> {
        // A `Subject` shares its bytes, so keeping it for the error message
        // costs no copy.
        let subject = async_nats::Subject::from(self.subject);
        js.publish_with_headers(subject.clone(), self.headers, self.body)
            .await
            .map_err(|source| PublishEventError::Publish {
                event_id: self.event_id,
                subject: subject.to_string(),
                source,
            })
    }
}

/// What an envelope's payload slot encodes to before the stored text takes
/// its place: `"payload"` is the envelope's last field, and `()` is `null`.
const PAYLOAD_SLOT: &[u8] = b"null}";

/// `head` encoded (through the envelope's own `Serialize`, so field names and
/// order cannot drift from the wire type) with `payload_text` spliced in
/// verbatim as the payload; `None` if the encoding is not the shape this
/// relies on or there is no stored text.
fn spliced_body(
    head: &Envelope<()>,
    payload_text: &str,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let mut body = Vec::with_capacity(384 + payload_text.len());
    serde_json::to_writer(&mut body, head)?;
    if !body.ends_with(PAYLOAD_SLOT) || payload_text.is_empty() {
        return Ok(None);
    }
    body.truncate(body.len() - PAYLOAD_SLOT.len());
    body.extend_from_slice(payload_text.as_bytes());
    body.push(b'}');
    Ok(Some(body))
}

/// The JSON envelope of `event` (as [`StoredEvent::envelope`] encodes),
/// with `payload_text` spliced in verbatim as the payload.
fn stored_envelope_body(event: &StoredEvent) -> Result<Vec<u8>, PublishEventError> {
    let encode_err = |source| PublishEventError::Encode {
        event_id: event.event_id.to_string(),
        source,
    };
    let head = Envelope::<()> {
        event_id: event.event_id,
        kind: event.kind.clone(),
        stream: event.stream.clone(),
        version: event.version,
        occurred_at: event.recorded_at,
        actor: event.metadata.actor.clone(),
        correlation_id: event.metadata.correlation_id,
        causation_id: event.metadata.causation_id,
        traceparent: event.metadata.traceparent.clone(),
        payload: (),
    };
    match spliced_body(&head, &event.payload_text).map_err(encode_err)? {
        Some(body) => Ok(body),
        // Not the shape this relies on (or no stored text): encode the parsed
        // payload the ordinary way.
        None => serde_json::to_vec(&event.envelope()).map_err(encode_err),
    }
}

/// The JSON envelope of an outbox row (as [`StoredEvent::envelope`] encodes
/// for the same event), with its payload text spliced in verbatim; the row's
/// strings move into the envelope instead of being copied.
fn outbox_envelope_body(event: OutboxEvent) -> Result<Vec<u8>, PublishEventError> {
    let event_id = event.event_id;
    let encode_err = |source| PublishEventError::Encode {
        event_id: event_id.to_string(),
        source,
    };
    let metadata = event.metadata;
    let head = Envelope::<()> {
        event_id,
        kind: event.kind,
        stream: event.stream,
        version: event.version,
        occurred_at: event.recorded_at,
        actor: metadata.actor,
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        traceparent: metadata.traceparent,
        payload: (),
    };
    if let Some(body) = spliced_body(&head, &event.payload_text).map_err(encode_err)? {
        return Ok(body);
    }
    // Not the shape this relies on: parse the payload and encode the
    // envelope the ordinary way.
    let payload: serde_json::Value =
        serde_json::from_str(&event.payload_text).map_err(encode_err)?;
    let envelope = Envelope {
        event_id: head.event_id,
        kind: head.kind,
        stream: head.stream,
        version: head.version,
        occurred_at: head.occurred_at,
        actor: head.actor,
        correlation_id: head.correlation_id,
        causation_id: head.causation_id,
        traceparent: head.traceparent,
        payload,
    };
    serde_json::to_vec(&envelope).map_err(encode_err)
}

/// Publishes one event and waits for the server's acknowledgment. The ack's
/// `duplicate` flag is set when the stream already had this event id.
pub async fn publish_event(
    js: &jetstream::Context,
    names: &Names,
    service: &str,
    province: Option<&str>,
    envelope: &Envelope,
) -> Result<PublishAck, PublishEventError> {
    let msg = OutgoingEvent::new(names, service, province, envelope)?;
    let event_id = msg.event_id.clone();
    msg.send(js)
        .await?
        .await
        .map_err(|source| PublishEventError::Unacknowledged { event_id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradeflow_eventstore::canonical::canonical_json;
    use gradeflow_proto::{Actor, CorrelationId, EventId, Metadata, OrgId, Role};
    use serde_json::json;

    /// A stored event with `payload`, stored as the writer stores it.
    fn stored(payload: serde_json::Value, traceparent: Option<&str>) -> StoredEvent {
        let payload_text = canonical_json(&payload);
        StoredEvent {
            position: 7,
            stream: "dossier-Đà-Nẵng-1".into(),
            version: 3,
            event_id: EventId::new(),
            kind: "grade_decided.v1".into(),
            // As the store reads it back: parsed from the stored text.
            payload: serde_json::from_str(&payload_text).expect("canonical JSON parses"),
            payload_text,
            metadata: Metadata {
                actor: Actor {
                    sub: "Nguyễn \"Văn\" A".into(),
                    role: Role::Authority,
                    org: OrgId::new(),
                },
                correlation_id: CorrelationId::new(),
                causation_id: Some(uuid::Uuid::now_v7()),
                traceparent: traceparent.map(Into::into),
                service: "approval".into(),
                province: Some("P01".into()),
            },
            recorded_at: chrono::Utc::now(),
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        }
    }

    #[test]
    fn a_stored_event_is_encoded_byte_for_byte_as_its_envelope() {
        let names = Names::new("gf-test").expect("a valid prefix");
        let payloads = [
            json!({}),
            json!(null),
            json!([]),
            json!({"grade": "xuất sắc", "note": "Quyết định số 12/QĐ — \"đạt\"\n\ttab \u{1F600}"}),
            json!({"z": 1, "a": {"y": [1, 2.5, -0.0, 1e300, null, true], "b": "\\"}}),
            json!({"big": u64::MAX, "neg": i64::MIN, "f": 0.1, "ctl": "\u{0001}\u{007f}"}),
            json!({"p": "x".repeat(592)}),
            json!("a bare string"),
            json!(42),
        ];
        for (i, payload) in payloads.into_iter().enumerate() {
            let traceparent =
                (i % 2 == 0).then_some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            let event = stored(payload, traceparent);
            let fast = OutgoingEvent::from_stored(&names, &event).expect("encodes");
            let old = OutgoingEvent::new(
                &names,
                &event.metadata.service,
                event.metadata.province.as_deref(),
                &event.envelope(),
            )
            .expect("encodes");
            assert_eq!(
                String::from_utf8_lossy(&fast.body),
                String::from_utf8_lossy(&old.body),
                "payload {i}"
            );
            assert_eq!(fast.subject, old.subject);
            assert_eq!(fast.event_id, old.event_id);
            for header in ["Nats-Msg-Id", "Nats-Expected-Stream", "traceparent"] {
                assert_eq!(
                    fast.headers.get(header),
                    old.headers.get(header),
                    "{header}"
                );
            }
            assert_eq!(
                fast.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str()),
                Some(event.event_id.to_string().as_str())
            );
            let parsed: Envelope = serde_json::from_slice(&fast.body).expect("parses");
            assert_eq!(parsed, event.envelope(), "payload {i}");
            // The relay's unparsed row of the same event gives the same message.
            let row = OutboxEvent {
                position: event.position,
                stream: event.stream.clone(),
                version: event.version,
                event_id: event.event_id,
                kind: event.kind.clone(),
                payload_text: event.payload_text.clone(),
                metadata: event.metadata.clone(),
                recorded_at: event.recorded_at,
            };
            let unparsed = OutgoingEvent::from_outbox(&names, row).expect("encodes");
            assert_eq!(unparsed.body, old.body, "payload {i}");
            assert_eq!(unparsed.subject, old.subject);
            assert_eq!(unparsed.event_id, old.event_id);
            for header in ["Nats-Msg-Id", "Nats-Expected-Stream", "traceparent"] {
                assert_eq!(
                    unparsed.headers.get(header),
                    old.headers.get(header),
                    "{header}"
                );
            }
        }
    }
}
