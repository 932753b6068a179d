//! The refusals the submission service answers with, each with its stable
//! code (`gradeflow_proto::ErrorCode`), an English and a Vietnamese message,
//! and details a client can act on. Kept in one place so the same refusal
//! reads the same whichever command meets it.

use gradeflow_proto::{CycleId, DossierId, DossierState, ErrorCode, OrgId, Rejection, Role};
use gradeflow_submission_domain::{Action, TransitionError};
use serde_json::json;

/// Input that is well-formed JSON but unusable; `field` names the culprit.
pub fn invalid_input(field: &str, message: impl Into<String>, message_vi: &str) -> Rejection {
    ErrorCode::InvalidInput
        .reject(message, message_vi)
        .with_details(json!({ "field": field }))
}

/// A text field that must say something.
pub fn blank(field: &str) -> Rejection {
    invalid_input(
        field,
        format!("`{field}` must not be blank"),
        "Trường bắt buộc không được để trống",
    )
}

/// No such organisation.
pub fn unknown_org(org: OrgId) -> Rejection {
    ErrorCode::UnknownOrg
        .reject(format!("no organisation {org}"), "Không tìm thấy tổ chức")
        .with_details(json!({ "org": org }))
}

/// No root organisation yet: nothing can be opened or placed under it.
pub fn no_root() -> Rejection {
    ErrorCode::UnknownOrg.reject(
        "no root organisation is registered yet",
        "Chưa đăng ký tổ chức cấp cao nhất (Trung ương)",
    )
}

/// The organisation ceased to exist in a merge.
pub fn merged_org(org: OrgId, into: OrgId) -> Rejection {
    ErrorCode::UnknownOrg
        .reject(
            format!("organisation {org} was merged into {into}"),
            "Tổ chức đã được hợp nhất vào tổ chức khác",
        )
        .with_details(json!({ "org": org, "merged_into": into }))
}

/// No such cycle.
pub fn unknown_cycle(cycle: CycleId) -> Rejection {
    ErrorCode::UnknownCycle
        .reject(
            format!("no review cycle {cycle}"),
            "Không tìm thấy đợt kiểm điểm",
        )
        .with_details(json!({ "cycle": cycle }))
}

/// No such dossier.
pub fn unknown_dossier(dossier: DossierId) -> Rejection {
    ErrorCode::UnknownDossier
        .reject(format!("no dossier {dossier}"), "Không tìm thấy hồ sơ")
        .with_details(json!({ "dossier": dossier }))
}

/// The dossier's state does not allow the action (the state machine's
/// refusal, whose own code — `wrong_state`, `not_reviewed`,
/// `already_decided` — goes into the details as `reason`).
pub fn wrong_state(
    dossier: DossierId,
    state: DossierState,
    action: Action,
    why: TransitionError,
) -> Rejection {
    ErrorCode::WrongState
        .reject(
            format!("dossier {dossier}: {}", why.message()),
            why.message_vi(),
        )
        .with_details(json!({
            "dossier": dossier,
            "state": state,
            "action": action.code(),
            "reason": why.code(),
        }))
}

/// The caller's role does not cover what the command needs (used where
/// there is no org to check the scope against yet).
pub fn role_not_allowed(role: Role, needed: Role) -> Rejection {
    ErrorCode::OutOfScope
        .reject(
            format!("the role {role:?} may not act as {needed:?}"),
            "Vai trò của người dùng không được phép thực hiện thao tác này",
        )
        .with_details(json!({ "needed_role": needed }))
}

/// The dossier lies outside what the caller may read.
pub fn not_readable(dossier: DossierId, scope: OrgId) -> Rejection {
    ErrorCode::OutOfScope
        .reject(
            format!("dossier {dossier} lies outside the caller's scope ({scope})"),
            "Hồ sơ nằm ngoài phạm vi được phân quyền",
        )
        .with_details(json!({ "dossier": dossier, "scope": scope }))
}

/// An organisation code is taken.
pub fn duplicate_code(code: &str, holder: OrgId) -> Rejection {
    ErrorCode::DuplicateCode
        .reject(
            format!("the code `{code}` belongs to organisation {holder} already"),
            format!("Mã tổ chức \"{code}\" đã được sử dụng"),
        )
        .with_details(json!({ "code": code, "org": holder }))
}

/// The tier is not the one the hierarchy expects here.
pub fn bad_tier(tier: &str, expected: Option<&str>, message: impl Into<String>) -> Rejection {
    ErrorCode::BadTier
        .reject(
            message,
            "Cấp tổ chức không phù hợp với vị trí trong hệ thống",
        )
        .with_details(json!({ "tier": tier, "expected": expected }))
}

/// Something else holds the same identity with different content.
pub fn conflict(
    message: impl Into<String>,
    message_vi: &str,
    details: serde_json::Value,
) -> Rejection {
    ErrorCode::Conflict
        .reject(message, message_vi)
        .with_details(details)
}
