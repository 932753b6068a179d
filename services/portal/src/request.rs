//! What the handlers take from a request, each piece refused with the
//! API's error shape rather than axum's plain-text rejections: the caller
//! ([`Authed`], 401), a POST's body with its `Idempotency-Key` ([`Posted`],
//! 413 over 1 MiB, 400 on a bad key), query parameters ([`Params`], 400)
//! and path ids ([`Id`], 400), and the trace context to forward.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use gradeflow_kit::TraceParent;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::config::BODY_LIMIT;
use crate::error::{body_error, body_error_at, ApiError};
use crate::idempotency::check_key;
use crate::state::PortalState;

/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

/// The trace context to send with the commands of this request: the
/// portal's own span when OpenTelemetry is on (a child of the caller's, see
/// `crate::trace_request`), else the caller's `traceparent` as it came (when
/// valid), so the services continue the caller's trace either way.
pub fn traceparent(headers: &HeaderMap) -> Option<String> {
    gradeflow_kit::trace::current_traceparent().or_else(|| incoming_traceparent(headers))
}

/// The caller's `traceparent` header, when it is a valid one.
pub fn incoming_traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| TraceParent::parse(v).is_ok())
        .map(str::to_owned)
}

/// Authenticates every API call first (401 before any other check), and
/// hands the [`Caller`] to the handler's extractors.
pub async fn authenticate(
    axum::extract::State(state): axum::extract::State<PortalState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.auth().authenticate(req.headers()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The caller the authentication layer found, or (outside it) the token's.
fn caller(parts: &Parts, state: &PortalState) -> Result<Caller, ApiError> {
    match parts.extensions.get::<Caller>() {
        Some(caller) => Ok(caller.clone()),
        None => state.auth().authenticate(&parts.headers),
    }
}

/// An authenticated request without a body: the caller and the trace.
pub struct Authed {
    /// Who calls.
    pub caller: Caller,
    /// The trace to forward.
    pub traceparent: Option<String>,
}

impl FromRequestParts<PortalState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        let caller = caller(parts, state)?;
        Ok(Authed {
            caller,
            traceparent: traceparent(&parts.headers),
        })
    }
}

/// An authenticated POST: caller, body (at most [`BODY_LIMIT`] bytes),
/// `Idempotency-Key`, and what the key's record covers (method and path).
pub struct Posted {
    /// Who calls.
    pub caller: Caller,
    /// The trace to forward.
    pub traceparent: Option<String>,
    /// The `Idempotency-Key`, when sent.
    pub key: Option<String>,
    /// The method.
    pub method: Method,
    /// The path (without the query).
    pub path: String,
    /// The `Content-Type`, lower-cased, without parameters.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl FromRequest<PortalState> for Posted {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &PortalState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let caller = caller(&parts, state)?;
        let key = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => {
                let key = v.to_str().map_err(|_| {
                    ApiError::invalid(
                        "the Idempotency-Key must be visible ASCII characters",
                        "Khóa Idempotency-Key chỉ được chứa ký tự ASCII",
                    )
                    .with_details(json!({ "field": "Idempotency-Key" }))
                })?;
                check_key(key)?;
                Some(key.to_owned())
            }
        };
        // A declared length over the limit is refused before reading.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
            return Err(ApiError::payload_too_large(BODY_LIMIT));
        }
        let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
            if is_length_limit(&e) {
                ApiError::payload_too_large(BODY_LIMIT)
            } else {
                ApiError::invalid(
                    "the request body could not be read",
                    "Không đọc được nội dung yêu cầu",
                )
            }
        })?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        Ok(Posted {
            caller,
            traceparent: traceparent(&parts.headers),
            key,
            method: parts.method,
            path: parts.uri.path().to_owned(),
            content_type,
            body,
        })
    }
}

/// Whether reading a body stopped at the length limit (the limiter's error
/// is the innermost source).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

impl Posted {
    /// The body as `T` (whose unknown fields are refused); a precise 400
    /// otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let de = &mut serde_json::Deserializer::from_slice(&self.body);
        let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| body_error(&e))?;
        // Trailing characters after the value are malformed JSON too.
        de.end().map_err(|e| body_error_at("", &e))?;
        Ok(value)
    }

    /// The body as `T` once the fields the path names (e.g. the dossier of
    /// `/dossiers/{id}/meeting`) are added; the body itself may not carry
    /// them.
    pub fn json_with<T: DeserializeOwned>(
        &self,
        from_path: &[(&str, Value)],
    ) -> Result<T, ApiError> {
        let mut value: Value = self.json()?;
        let Some(object) = value.as_object_mut() else {
            return Err(ApiError::invalid(
                "the request body must be a JSON object",
                "Nội dung yêu cầu phải là một đối tượng JSON",
            ));
        };
        for (field, v) in from_path {
            if object.contains_key(*field) {
                return Err(ApiError::invalid(
                    format!("unknown field `{field}`: it is taken from the path"),
                    format!("Trường không được hỗ trợ: `{field}` (đã có trong địa chỉ)"),
                )
                .with_details(json!({ "field": field })));
            }
            object.insert((*field).to_owned(), v.clone());
        }
        serde_path_to_error::deserialize(value).map_err(|e| body_error(&e))
    }
}

/// Query parameters, refused with a 400 naming the problem.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<PortalState> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(Params(t)),
            Err(e) => Err(ApiError::invalid(
                format!("invalid query parameters: {}", e.body_text()),
                "Tham số truy vấn không hợp lệ",
            )),
        }
    }
}

/// A path id, refused with a 400 when it is not a UUID.
pub struct Id<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<PortalState> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Id(t)),
            Err(e) => Err(ApiError::invalid(
                format!("invalid id in the path: {}", e.body_text()),
                "Mã định danh trong địa chỉ không hợp lệ (phải là UUID)",
            )),
        }
    }
}
