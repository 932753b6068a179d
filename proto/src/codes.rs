//! The stable error codes of every refusal, shared by the services (in
//! command replies) and the portal (in HTTP error bodies), with the HTTP
//! status each maps to (`API.md` § HTTP conventions).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A stable, snake_case refusal code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input is not well-formed or misses a field (400).
    InvalidInput,
    /// The command envelope could not be read (400).
    MalformedCommand,
    /// No or bad credentials (401).
    Unauthenticated,
    /// The org or dossier lies outside the caller's scope or role (403).
    OutOfScope,
    /// No such organisation (404).
    UnknownOrg,
    /// No such cycle (404).
    UnknownCycle,
    /// No such dossier (404).
    UnknownDossier,
    /// No such decision-log record (404).
    UnknownRecord,
    /// The dossier is not in a state that allows this (409).
    WrongState,
    /// An organisation code is taken (409).
    DuplicateCode,
    /// The subject is registered already (409).
    DuplicateSubject,
    /// Someone else changed the same thing first (409).
    Conflict,
    /// The tier is not the one below the parent's (422).
    BadTier,
    /// A grading rule refuses the decision (422).
    RuleViolation,
    /// The dossier is not decided by this authority (422).
    NotInRemit,
    /// A dependency (store, broker) is down (503).
    Unavailable,
}

impl ErrorCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::MalformedCommand => "malformed_command",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::OutOfScope => "out_of_scope",
            ErrorCode::UnknownOrg => "unknown_org",
            ErrorCode::UnknownCycle => "unknown_cycle",
            ErrorCode::UnknownDossier => "unknown_dossier",
            ErrorCode::UnknownRecord => "unknown_record",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::DuplicateCode => "duplicate_code",
            ErrorCode::DuplicateSubject => "duplicate_subject",
            ErrorCode::Conflict => "conflict",
            ErrorCode::BadTier => "bad_tier",
            ErrorCode::RuleViolation => "rule_violation",
            ErrorCode::NotInRemit => "not_in_remit",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status the portal answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput | ErrorCode::MalformedCommand => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::OutOfScope => 403,
            ErrorCode::UnknownOrg
            | ErrorCode::UnknownCycle
            | ErrorCode::UnknownDossier
            | ErrorCode::UnknownRecord => 404,
            ErrorCode::WrongState
            | ErrorCode::DuplicateCode
            | ErrorCode::DuplicateSubject
            | ErrorCode::Conflict => 409,
            ErrorCode::BadTier | ErrorCode::RuleViolation | ErrorCode::NotInRemit => 422,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: &str) -> Option<Self> {
        ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// A rejection with this code.
    pub fn reject(
        self,
        message: impl Into<String>,
        message_vi: impl Into<String>,
    ) -> crate::Rejection {
        crate::Rejection::new(self.as_str(), message, message_vi)
    }
}

const ALL: &[ErrorCode] = &[
    ErrorCode::InvalidInput,
    ErrorCode::MalformedCommand,
    ErrorCode::Unauthenticated,
    ErrorCode::OutOfScope,
    ErrorCode::UnknownOrg,
    ErrorCode::UnknownCycle,
    ErrorCode::UnknownDossier,
    ErrorCode::UnknownRecord,
    ErrorCode::WrongState,
    ErrorCode::DuplicateCode,
    ErrorCode::DuplicateSubject,
    ErrorCode::Conflict,
    ErrorCode::BadTier,
    ErrorCode::RuleViolation,
    ErrorCode::NotInRemit,
    ErrorCode::Unavailable,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_matches_its_serde_name() {
        for c in ALL {
            assert_eq!(ErrorCode::from_code(c.as_str()), Some(*c));
            assert_eq!(
                serde_json::to_value(c).unwrap_or_default(),
                serde_json::json!(c.as_str())
            );
        }
    }

    #[test]
    fn refusals_map_to_the_statuses_of_the_api() {
        assert_eq!(ErrorCode::WrongState.http_status(), 409);
        assert_eq!(ErrorCode::RuleViolation.http_status(), 422);
        assert_eq!(ErrorCode::OutOfScope.http_status(), 403);
        assert_eq!(ErrorCode::UnknownDossier.http_status(), 404);
        assert_eq!(ErrorCode::InvalidInput.http_status(), 400);
    }
}
