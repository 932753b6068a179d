//! The refusals the progress service answers its queries with, each with its
//! stable code (`gradeflow_proto::ErrorCode`), English and Vietnamese
//! messages and details a client can act on.

use gradeflow_proto::{CycleId, ErrorCode, OrgId, Rejection};
use serde_json::json;

/// No such cycle (or not one progress has heard of yet).
pub fn unknown_cycle(cycle: CycleId) -> Rejection {
    ErrorCode::UnknownCycle
        .reject(
            format!("no review cycle {cycle}"),
            "Không tìm thấy kỳ kiểm điểm",
        )
        .with_details(json!({ "cycle": cycle }))
}

/// No such organisation.
pub fn unknown_org(org: OrgId) -> Rejection {
    ErrorCode::UnknownOrg
        .reject(format!("no organisation {org}"), "Không tìm thấy tổ chức")
        .with_details(json!({ "org": org }))
}

/// The org lies outside what the caller may read.
pub fn not_readable(org: OrgId, scope: OrgId) -> Rejection {
    ErrorCode::OutOfScope
        .reject(
            format!("org {org} lies outside the caller's scope ({scope})"),
            "Tổ chức nằm ngoài phạm vi được phân quyền",
        )
        .with_details(json!({ "org": org, "scope": scope }))
}

/// Input that is well-formed JSON but unusable; `field` names the culprit.
pub fn invalid_input(field: &str, message: impl Into<String>, message_vi: &str) -> Rejection {
    ErrorCode::InvalidInput
        .reject(message, message_vi)
        .with_details(json!({ "field": field }))
}
