//! The refusals the appraisal service answers with, each with its stable
//! code (`gradeflow_proto::ErrorCode`), English and Vietnamese messages and
//! details a client can act on.

use gradeflow_proto::{CycleId, DossierId, DossierState, ErrorCode, OrgId, Rejection};
use gradeflow_submission_domain::{Action, TransitionError};
use serde_json::json;

/// Input that is well-formed JSON but unusable; `field` names the culprit.
pub fn invalid_input(field: &str, message: impl Into<String>, message_vi: &str) -> Rejection {
    ErrorCode::InvalidInput
        .reject(message, message_vi)
        .with_details(json!({ "field": field }))
}

/// No such dossier (or not one this service has heard of yet).
pub fn unknown_dossier(dossier: DossierId) -> Rejection {
    ErrorCode::UnknownDossier
        .reject(format!("no dossier {dossier}"), "Không tìm thấy hồ sơ")
        .with_details(json!({ "dossier": dossier }))
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

/// The dossier's state does not allow the action (the state machine's
/// own code goes into the details as `reason`).
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

/// The dossier lies outside what the caller may read.
pub fn not_readable(dossier: DossierId, scope: OrgId) -> Rejection {
    ErrorCode::OutOfScope
        .reject(
            format!("dossier {dossier} lies outside the caller's scope ({scope})"),
            "Hồ sơ nằm ngoài phạm vi được phân quyền",
        )
        .with_details(json!({ "dossier": dossier, "scope": scope }))
}
