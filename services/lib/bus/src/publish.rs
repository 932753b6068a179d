//! Publishing one event envelope to JetStream (`API.md` § Events on the
//! wire): JSON body, subject `<prefix>.evt.<service>.<province|_>.<kind>`,
//! header `Nats-Msg-Id` = event id so the server drops a re-publish inside the
//! duplicate window, and the W3C `traceparent` when the event carries one.
//!
//! Services do not call this for their own events: they append to their
//! store and the outbox relay ([`crate::relay`]) publishes. It is public for
//! the relay, tools and tests.

use async_nats::{
    header::{NATS_EXPECTED_STREAM, NATS_MESSAGE_ID},
    jetstream::{self, context::PublishAckFuture, publish::PublishAck},
    HeaderMap,
};
use bytes::Bytes;
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
        js.publish_with_headers(self.subject.clone(), self.headers, self.body)
            .await
            .map_err(|source| PublishEventError::Publish {
                event_id: self.event_id,
                subject: self.subject,
                source,
            })
    }
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
