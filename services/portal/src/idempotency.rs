//! `Idempotency-Key` on POSTs (`API.md` § HTTP conventions): a retry with
//! the same key and body returns the first response and changes nothing;
//! the same key with another method, path or body is refused (409
//! `idempotency_key_reused`).
//!
//! Two layers make that hold across portal restarts and replicas:
//!
//! 1. **The command id.** The portal derives the [`CommandId`] of the
//!    command(s) a keyed request sends from the caller and the key (UUID v5,
//!    [`command_id_for`]). A service stores each command's reply in its inbox
//!    together with the events, so the same command id reaching it again is
//!    answered with the first reply and appends nothing — even when the
//!    portal died between sending and answering.
//! 2. **The portal's own record**, in an event store of its own (the
//!    `gradeflow_eventstore::Store` every service uses: SQLite
//!    `<data_dir>/portal.db`, or schema `portal` in PostgreSQL), so it
//!    survives a restart without the portal talking SQL itself. Per
//!    (caller, key), stream `idem-<sha256(sub, key)>`:
//!    * version 1, `idempotency_key_used.v1` `{method, path, request_sha256,
//!      command_id}`, appended with `ExpectedVersion::NoStream` before the
//!      command is sent: the first request wins; a later one with another
//!      request hash is refused, one with the same hash goes on (with the
//!      same command id);
//!    * version 2, `idempotency_response_recorded.v1` `{status, body}`,
//!      appended after the answer (expecting version 1, so only the first
//!      answer is kept): a later retry gets exactly that answer, refusals
//!      included, without reaching the services. Answers of status 500 and
//!      above are not recorded: they are worth retrying.
//!
//! These kinds are the portal's private bookkeeping (never published; no
//! outbox relay runs on this store), so they have no schema in
//! `proto/schemas/`.

use axum::http::{Method, StatusCode};
use gradeflow_eventstore::{
    AppendError, AppendRequest, ExpectedVersion, NewEvent, Store, StoreError,
};
use gradeflow_proto::{Actor, CommandId, CorrelationId, Metadata};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Kind of the record of a key's first use.
pub const KEY_USED: &str = "idempotency_key_used.v1";
/// Kind of the record of the first answer to a key.
pub const RESPONSE_RECORDED: &str = "idempotency_response_recorded.v1";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 200;

/// Namespace of the command ids derived from idempotency keys.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1f_53c2_0e4b_4c8e_9f0d_7b3e_2a91_c5d4);

/// The command id of a keyed request: the same for the same caller and key.
pub fn command_id_for(sub: &str, key: &str) -> CommandId {
    CommandId(uuid::Uuid::new_v5(&NAMESPACE, scoped(sub, key).as_bytes()))
}

/// The id of the `n`-th of several commands one keyed request sends
/// (an org import), named by `part`.
pub fn part_id(command: CommandId, part: &str) -> CommandId {
    CommandId(uuid::Uuid::new_v5(&command.as_uuid(), part.as_bytes()))
}

/// Caller and key, unambiguously joined (a `sub` may hold any character
/// but NUL is not in a header value).
fn scoped(sub: &str, key: &str) -> String {
    format!("{sub}\u{0}{key}")
}

/// The stream of a (caller, key) pair.
pub fn stream_for(sub: &str, key: &str) -> String {
    format!("idem-{}", hex::encode(Sha256::digest(scoped(sub, key))))
}

/// SHA-256 (hex) of the method, the path and the body bytes.
pub fn request_hash(method: &Method, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// Checks an `Idempotency-Key` header value: 1 to [`MAX_KEY_LEN`] visible
/// ASCII characters.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::invalid(
            format!(
                "the Idempotency-Key must be 1 to {MAX_KEY_LEN} characters long, not {}",
                key.len()
            ),
            format!("Khóa Idempotency-Key phải dài từ 1 đến {MAX_KEY_LEN} ký tự"),
        )
        .with_details(json!({ "field": "Idempotency-Key", "length": key.len() })));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyUsed {
    method: String,
    path: String,
    request_sha256: String,
    command_id: CommandId,
}

#[derive(Debug, Serialize, Deserialize)]
struct ResponseRecorded {
    status: u16,
    body: Value,
}

/// What a keyed request does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// First use, or a retry whose first attempt left no answer: send the
    /// command(s) with this id.
    Proceed(CommandId),
    /// A retry answered before: send this answer again.
    Replay {
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: Value,
    },
}

/// The portal's record of used keys.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    store: Store,
}

/// One keyed request, as [`IdempotencyStore::begin`] records it.
pub struct Keyed<'a> {
    /// The caller's `sub`.
    pub sub: &'a str,
    /// The key.
    pub key: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The path.
    pub path: &'a str,
    /// The body bytes as received.
    pub body: &'a [u8],
    /// The actor the request acts as (recorded in the metadata).
    pub actor: &'a Actor,
    /// The caller's trace.
    pub traceparent: Option<String>,
}

impl IdempotencyStore {
    /// The record over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The underlying store (to close it on shutdown).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records the key's first use, or finds out what an earlier use was.
    pub async fn begin(&self, req: &Keyed<'_>) -> Result<Begin, ApiError> {
        let command_id = command_id_for(req.sub, req.key);
        let stream = stream_for(req.sub, req.key);
        let hash = request_hash(req.method, req.path, req.body);
        let used = KeyUsed {
            method: req.method.to_string(),
            path: req.path.to_owned(),
            request_sha256: hash.clone(),
            command_id,
        };
        let event = NewEvent {
            // A fresh id per attempt: the store answers an event id it holds
            // already with the stored event, which would hide the version
            // check that tells a first use from a reuse.
            event_id: gradeflow_proto::EventId::new(),
            stream: stream.clone(),
            kind: KEY_USED.to_owned(),
            payload: json!(used),
            metadata: metadata(req.actor, command_id, req.traceparent.clone()),
        };
        let append = AppendRequest::new(vec![event]).expect(&stream, ExpectedVersion::NoStream);
        match self.store.append(append).await {
            Ok(_) => return Ok(Begin::Proceed(command_id)),
            Err(AppendError::Conflict { .. }) => {}
            Err(e) => return Err(store_down(&e.to_string())),
        }
        let events = self
            .store
            .load_stream(&stream)
            .await
            .map_err(|e| store_down(&e.to_string()))?;
        let first: Option<KeyUsed> = events
            .iter()
            .find(|e| e.kind == KEY_USED)
            .and_then(|e| serde_json::from_value(e.payload.clone()).ok());
        let Some(first) = first else {
            return Err(ApiError::internal(
                "the record of this Idempotency-Key is unreadable",
            ));
        };
        if first.request_sha256 != hash {
            return Err(ApiError::idempotency_key_reused().with_details(json!({
                "first": { "method": first.method, "path": first.path },
            })));
        }
        let answered: Option<ResponseRecorded> = events
            .iter()
            .find(|e| e.kind == RESPONSE_RECORDED)
            .and_then(|e| serde_json::from_value(e.payload.clone()).ok());
        Ok(match answered {
            Some(r) => Begin::Replay {
                status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
                body: r.body,
            },
            None => Begin::Proceed(first.command_id),
        })
    }

    /// Records the first answer to a keyed request (not a 5xx one). A
    /// failure to record is logged, not answered: the services' inboxes
    /// still make a retry safe.
    pub async fn finish(
        &self,
        req: &Keyed<'_>,
        command_id: CommandId,
        status: StatusCode,
        body: &Value,
    ) {
        if status.is_server_error() {
            return;
        }
        let stream = stream_for(req.sub, req.key);
        let event = NewEvent {
            event_id: gradeflow_proto::EventId(uuid::Uuid::new_v5(
                &command_id.as_uuid(),
                RESPONSE_RECORDED.as_bytes(),
            )),
            stream: stream.clone(),
            kind: RESPONSE_RECORDED.to_owned(),
            payload: json!(ResponseRecorded {
                status: status.as_u16(),
                body: body.clone(),
            }),
            metadata: metadata(req.actor, command_id, req.traceparent.clone()),
        };
        let append = AppendRequest::new(vec![event]).expect(&stream, ExpectedVersion::Exactly(1));
        match self.store.append(append).await {
            // A concurrent retry recorded its (identical) answer first.
            Ok(_) | Err(AppendError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "portal.idempotency.record_failed"),
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.stream_version("idem-ping").await.map(|_| ())
    }
}

fn metadata(actor: &Actor, command_id: CommandId, traceparent: Option<String>) -> Metadata {
    Metadata {
        actor: actor.clone(),
        correlation_id: CorrelationId(command_id.as_uuid()),
        causation_id: None,
        traceparent,
        service: "portal".to_owned(),
        province: None,
    }
}

fn store_down(detail: &str) -> ApiError {
    tracing::error!(error = %detail, "portal.idempotency.store_failed");
    ApiError::unavailable(
        "the portal cannot record the Idempotency-Key right now; nothing was changed",
        "Cổng thông tin tạm thời không ghi nhận được khóa Idempotency-Key; chưa có thay đổi nào",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_depend_on_caller_and_key_only() {
        assert_eq!(command_id_for("a", "k"), command_id_for("a", "k"));
        assert_ne!(command_id_for("a", "k"), command_id_for("b", "k"));
        assert_ne!(command_id_for("a", "k"), command_id_for("a", "k2"));
        // No ambiguity from joining: ("ab", "c") ≠ ("a", "bc").
        assert_ne!(command_id_for("ab", "c"), command_id_for("a", "bc"));
        assert_ne!(stream_for("ab", "c"), stream_for("a", "bc"));
    }

    #[test]
    fn the_request_hash_covers_method_path_and_body() {
        let h = request_hash(&Method::POST, "/api/v1/orgs", b"{}");
        assert_eq!(h, request_hash(&Method::POST, "/api/v1/orgs", b"{}"));
        assert_ne!(h, request_hash(&Method::POST, "/api/v1/orgs", b"{ }"));
        assert_ne!(h, request_hash(&Method::POST, "/api/v1/cycles", b"{}"));
        assert_ne!(h, request_hash(&Method::PUT, "/api/v1/orgs", b"{}"));
    }

    #[test]
    fn keys_are_1_to_200_characters() {
        assert!(check_key("k").is_ok());
        assert!(check_key(&"x".repeat(200)).is_ok());
        assert!(check_key(&"x".repeat(201)).is_err());
        assert!(check_key("").is_err());
    }
}
