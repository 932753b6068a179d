//! The portal's error answer (`API.md` § HTTP conventions):
//! `{"error": {"code", "message", "message_vi", "details"}}` with the status
//! of the code. A service's refusal keeps its code, messages and details and
//! gets the status [`ErrorCode::http_status`] gives it; the errors the portal
//! makes itself (bad body, bad token, out of scope, unavailable service) are
//! built here, each in English and Vietnamese.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gradeflow_bus::CommandError;
use gradeflow_proto::{ErrorCode, Rejection};
use gradeflow_service::client::CommandFailure;
use serde_json::{json, Value};

/// Code of a request whose `Idempotency-Key` was used before with another
/// method, path or body (409).
pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
/// Code of a body over the size limit (413).
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// Code of an unknown path (404).
pub const NOT_FOUND: &str = "not_found";
/// Code of a known path called with another method (405).
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// Code of a failure inside the portal or a reply it cannot read (500).
pub const INTERNAL_ERROR: &str = "internal_error";

/// An HTTP error answer. Every refused request changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: String,
    /// English message.
    pub message: String,
    /// Vietnamese message.
    pub message_vi: String,
    /// Structured details (an object, `{}` when there is nothing to add).
    pub details: Value,
}

impl ApiError {
    /// An error with `code`, `status` and both messages.
    pub fn new(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        message_vi: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            message_vi: message_vi.into(),
            details: json!({}),
        }
    }

    /// An error with one of the shared codes, at its status.
    pub fn coded(
        code: ErrorCode,
        message: impl Into<String>,
        message_vi: impl Into<String>,
    ) -> Self {
        Self::new(status_of(code), code.as_str(), message, message_vi)
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = if details.is_null() {
            json!({})
        } else {
            details
        };
        self
    }

    /// 400 `invalid_input`.
    pub fn invalid(message: impl Into<String>, message_vi: impl Into<String>) -> Self {
        Self::coded(ErrorCode::InvalidInput, message, message_vi)
    }

    /// 401 `unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>, message_vi: impl Into<String>) -> Self {
        Self::coded(ErrorCode::Unauthenticated, message, message_vi)
    }

    /// 403 `out_of_scope`.
    pub fn out_of_scope(message: impl Into<String>, message_vi: impl Into<String>) -> Self {
        Self::coded(ErrorCode::OutOfScope, message, message_vi)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>, message_vi: impl Into<String>) -> Self {
        Self::coded(ErrorCode::Unavailable, message, message_vi)
    }

    /// 500 `internal_error`: something in the portal failed; the details
    /// went to the log, not to the caller.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL_ERROR,
            message,
            "Lỗi nội bộ của cổng thông tin; vui lòng thử lại sau",
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
            format!("Nội dung yêu cầu vượt quá giới hạn {limit} byte"),
        )
        .with_details(json!({ "limit": limit }))
    }

    /// 409 `idempotency_key_reused`.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used before for a different request (method, path or body); \
             use a new key for a new request",
            "Khóa Idempotency-Key này đã được dùng cho một yêu cầu khác; hãy dùng khóa mới cho yêu cầu mới",
        )
    }

    /// 404 `not_found` for a path the API does not have.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            NOT_FOUND,
            format!("no such resource: {path}"),
            "Không tìm thấy địa chỉ yêu cầu",
        )
        .with_details(json!({ "path": path }))
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            METHOD_NOT_ALLOWED,
            format!("{path} does not accept {method}"),
            "Địa chỉ này không hỗ trợ phương thức yêu cầu",
        )
        .with_details(json!({ "method": method, "path": path }))
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "message_vi": self.message_vi,
                "details": self.details,
            }
        })
    }
}

/// The HTTP status of a shared code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<Rejection> for ApiError {
    /// A service's refusal, as it came; a code the portal does not know
    /// (e.g. `internal_error` from a failed handler) is a 500.
    fn from(r: Rejection) -> Self {
        let status = ErrorCode::from_code(&r.code)
            .map(status_of)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            code: r.code,
            message: r.message,
            message_vi: r.message_vi,
            details: json!({}),
        }
        .with_details(r.details)
    }
}

impl From<CommandFailure> for ApiError {
    fn from(f: CommandFailure) -> Self {
        match f {
            CommandFailure::Rejected(r) => r.into(),
            CommandFailure::Transport(e) => transport(&e),
            CommandFailure::Encode(e) => {
                tracing::error!(error = %e, "portal.command.encode_failed");
                ApiError::internal("the portal could not encode the command")
            }
        }
    }
}

/// A command that did not reach a service or whose answer was lost: 503,
/// with the advice to retry with the same `Idempotency-Key`.
fn transport(e: &CommandError) -> ApiError {
    tracing::warn!(error = %e, "portal.command.transport_failed");
    match e {
        CommandError::NoResponders { subject } => ApiError::unavailable(
            "the service that handles this request is not running; nothing was changed",
            "Dịch vụ xử lý yêu cầu này hiện không hoạt động; chưa có thay đổi nào",
        )
        .with_details(json!({ "subject": subject })),
        CommandError::Timeout { subject, timeout } => ApiError::unavailable(
            format!(
                "the service did not answer within {} ms; the request may or may not have been applied — \
                 retry with the same Idempotency-Key to be safe",
                timeout.as_millis()
            ),
            "Dịch vụ không phản hồi kịp thời; yêu cầu có thể đã hoặc chưa được thực hiện — \
             hãy gửi lại với cùng khóa Idempotency-Key",
        )
        .with_details(json!({ "subject": subject, "timeout_ms": timeout.as_millis() as u64 })),
        CommandError::Transport { subject, .. } => ApiError::unavailable(
            "the message bus is unreachable; nothing was changed",
            "Không kết nối được hệ thống truyền tin; chưa có thay đổi nào",
        )
        .with_details(json!({ "subject": subject })),
        CommandError::Malformed { subject, what } => {
            tracing::error!(%subject, %what, "portal.command.malformed_reply");
            ApiError::internal("the service's answer could not be read")
        }
    }
}

/// A body that is not the JSON the call expects, as a 400 that names the
/// field (`grades[0].grade`) and says what is wrong with it.
pub fn body_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    body_error_at(&e.path().to_string(), e.inner())
}

/// [`body_error`] for a serde error at `path` (`.` or empty: the body).
pub fn body_error_at(path: &str, inner: &serde_json::Error) -> ApiError {
    let raw = inner.to_string();
    // serde_json appends " at line L column C"; the details carry those.
    let what = raw
        .rsplit_once(" at line ")
        .map(|(w, _)| w.to_owned())
        .unwrap_or_else(|| raw.clone());
    let at_root = path.is_empty() || path == ".";
    let (message, message_vi) = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => (
            format!("the request body is not well-formed JSON: {what}"),
            "Nội dung yêu cầu không phải JSON hợp lệ".to_owned(),
        ),
        _ if what.starts_with("missing field") => (
            format!(
                "{what}{}",
                if at_root {
                    String::new()
                } else {
                    format!(" in `{path}`")
                }
            ),
            format!("Thiếu trường bắt buộc: {}", field_in(&what)),
        ),
        _ if what.starts_with("unknown field") => (
            format!(
                "{what}{}",
                if at_root {
                    String::new()
                } else {
                    format!(" in `{path}`")
                }
            ),
            format!("Trường không được hỗ trợ: {}", field_in(&what)),
        ),
        _ if what.starts_with("unknown variant") => (
            format!("`{path}`: {what}"),
            format!("Giá trị không hợp lệ tại `{path}`: {}", field_in(&what)),
        ),
        _ => (
            if at_root {
                format!("the request body is not valid: {what}")
            } else {
                format!("`{path}` is not valid: {what}")
            },
            if at_root {
                "Nội dung yêu cầu không hợp lệ".to_owned()
            } else {
                format!("Giá trị không hợp lệ tại `{path}`")
            },
        ),
    };
    ApiError::invalid(message, message_vi).with_details(json!({
        "field": if at_root { Value::Null } else { json!(path) },
        "line": inner.line(),
        "column": inner.column(),
    }))
}

/// The first back-quoted name in a serde message (`unknown field \`x\``).
fn field_in(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .map(|f| format!("`{f}`"))
        .unwrap_or_else(|| message.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(body: &str) -> ApiError {
        let de = &mut serde_json::Deserializer::from_str(body);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(_) => panic!("{body} parsed"),
            Err(e) => body_error(&e),
        }
    }

    #[test]
    fn a_body_error_names_the_field_and_what_is_wrong() {
        use gradeflow_proto::commands::DecideBatch;
        let e = parse::<DecideBatch>(
            r#"{"cycle": "0190a8a4-6c4e-7d2e-9d5c-000000000001", "authority": "0190a8a4-6c4e-7d2e-9d5c-000000000002",
                "number": "1", "grades": [{"dossier": "0190a8a4-6c4e-7d2e-9d5c-000000000003", "grade": "great"}]}"#,
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_input");
        assert_eq!(e.details["field"], json!("grades[0].grade"));
        assert!(
            e.message.contains("unknown variant `great`"),
            "{}",
            e.message
        );

        let e = parse::<DecideBatch>(r#"{"cycle": 1"#);
        assert!(e.message.contains("not"), "{}", e.message);

        let e = parse::<gradeflow_proto::commands::ReturnDossier>(
            r#"{"dossier": "0190a8a4-6c4e-7d2e-9d5c-000000000003", "reason": "x", "extra": 1}"#,
        );
        assert!(
            e.message.starts_with("unknown field `extra`"),
            "{}",
            e.message
        );
        assert!(e.message_vi.contains("`extra`"));

        let e = parse::<gradeflow_proto::commands::ReturnDossier>(
            r#"{"dossier": "0190a8a4-6c4e-7d2e-9d5c-000000000003"}"#,
        );
        assert!(
            e.message.starts_with("missing field `reason`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_refusal_keeps_its_code_and_gets_the_status_of_its_code() {
        let e: ApiError = ErrorCode::WrongState.reject("no", "không").into();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.details, json!({}));
        let e: ApiError = Rejection::new("internal_error", "boom", "lỗi").into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
