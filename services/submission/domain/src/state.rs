//! The dossier state machine over [`DossierState`]:
//!
//! ```text
//! open ──FileSelfReview──▶ submitted ──RecordMeeting──▶ reviewed ──Appraise──▶ appraised ──Decide──▶ decided
//!                              ▲                            │                      │                   │
//!                              │                            └───────Return─────────┤                Regrade
//!                              │                                                   ▼                   ▼
//!                              └──────────────FileSelfReview──────────────── returned            regraded ⟲ Regrade
//!
//! not_reviewed: entered only at registration; terminal.
//! ```
//!
//! Every illegal pair is refused by a named [`TransitionError`] with a
//! stable `code()`, which the submission service maps to HTTP 409.

use gradeflow_proto::{DossierState, SubjectStatus};

/// What can happen to a dossier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The submitter files the self-review (again, after a return).
    FileSelfReview,
    /// The submitter records the review meeting.
    RecordMeeting,
    /// The appraiser of the deciding tier appraises.
    Appraise,
    /// The appraiser returns the dossier for rework.
    Return,
    /// The authority decides the grade.
    Decide,
    /// The authority re-grades after a complaint (form 03).
    Regrade,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 6] = [
        Action::FileSelfReview,
        Action::RecordMeeting,
        Action::Appraise,
        Action::Return,
        Action::Decide,
        Action::Regrade,
    ];

    /// The stable snake_case name.
    pub fn code(self) -> &'static str {
        match self {
            Action::FileSelfReview => "file_self_review",
            Action::RecordMeeting => "record_meeting",
            Action::Appraise => "appraise",
            Action::Return => "return",
            Action::Decide => "decide",
            Action::Regrade => "regrade",
        }
    }

    /// What it is called in Vietnamese.
    pub fn label_vi(self) -> &'static str {
        match self {
            Action::FileSelfReview => "nộp bản tự kiểm điểm",
            Action::RecordMeeting => "ghi nhận hội nghị kiểm điểm",
            Action::Appraise => "thẩm định",
            Action::Return => "trả lại hồ sơ",
            Action::Decide => "quyết định xếp loại",
            Action::Regrade => "xếp loại lại",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Why an action is refused in the dossier's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The subject is not reviewed this cycle: nothing can happen to its
    /// dossier.
    #[error("dossier is not reviewed this cycle; it cannot {action}")]
    NotReviewed {
        /// The refused action.
        action: Action,
    },
    /// The dossier is decided: only a re-grading decision can change it.
    #[error("dossier is already {}; only a regrade can change it, not {action}", from.code())]
    AlreadyDecided {
        /// `decided` or `regraded`.
        from: DossierState,
        /// The refused action.
        action: Action,
    },
    /// Any other action the state does not allow.
    #[error("cannot {action} a dossier that is {}", from.code())]
    WrongState {
        /// The current state.
        from: DossierState,
        /// The refused action.
        action: Action,
    },
}

impl TransitionError {
    /// The stable error code: `not_reviewed`, `already_decided` or
    /// `wrong_state`.
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::NotReviewed { .. } => "not_reviewed",
            TransitionError::AlreadyDecided { .. } => "already_decided",
            TransitionError::WrongState { .. } => "wrong_state",
        }
    }

    /// The English message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The Vietnamese message.
    pub fn message_vi(&self) -> String {
        match self {
            TransitionError::NotReviewed { action } => format!(
                "Hồ sơ thuộc diện không kiểm điểm trong kỳ này, không thể {}",
                action.label_vi()
            ),
            TransitionError::AlreadyDecided { from, action } => format!(
                "Hồ sơ đã ở trạng thái \u{201c}{}\u{201d}; chỉ có thể xếp loại lại, không thể {}",
                from.label_vi(),
                action.label_vi()
            ),
            TransitionError::WrongState { from, action } => format!(
                "Không thể {} hồ sơ đang ở trạng thái \u{201c}{}\u{201d}",
                action.label_vi(),
                from.label_vi()
            ),
        }
    }
}

/// The state a dossier opens in when its subject is registered: `open`, or
/// `not_reviewed` for a new member, an exempt or a suspended subject. This
/// is the only way into `not_reviewed`.
pub fn initial_state(status: SubjectStatus) -> DossierState {
    if status.is_reviewed() {
        DossierState::Open
    } else {
        DossierState::NotReviewed
    }
}

/// The state after `action`, or why it is refused.
///
/// Legal moves:
///
/// | from | action | to |
/// | --- | --- | --- |
/// | open | FileSelfReview | submitted |
/// | returned | FileSelfReview | submitted |
/// | submitted | RecordMeeting | reviewed |
/// | reviewed | Appraise | appraised |
/// | reviewed | Return | returned |
/// | appraised | Return | returned |
/// | appraised | Decide | decided |
/// | decided | Regrade | regraded |
/// | regraded | Regrade | regraded |
///
/// `Return` is legal only once the dossier is in the appraiser's hands,
/// i.e. after the review meeting (`reviewed`) and up to the decision
/// (`appraised`, e.g. a complaint before the decision calls for
/// re-appraisal, Art. 12.1). A `submitted` dossier still belongs to its
/// unit, which holds the meeting; the appraiser cannot return it.
pub fn transition(from: DossierState, action: Action) -> Result<DossierState, TransitionError> {
    use Action::*;
    use DossierState::*;
    let to = match (from, action) {
        (Open | Returned, FileSelfReview) => Submitted,
        (Submitted, RecordMeeting) => Reviewed,
        (Reviewed, Appraise) => Appraised,
        (Reviewed | Appraised, Return) => Returned,
        (Appraised, Decide) => Decided,
        (Decided | Regraded, Regrade) => Regraded,
        (NotReviewed, action) => return Err(TransitionError::NotReviewed { action }),
        (Decided | Regraded, action) => {
            return Err(TransitionError::AlreadyDecided { from, action })
        }
        (from, action) => return Err(TransitionError::WrongState { from, action }),
    };
    Ok(to)
}

/// The actions legal in a state, in [`Action::ALL`] order (for worklists
/// and for the portal's buttons).
pub fn legal_actions(state: DossierState) -> Vec<Action> {
    Action::ALL
        .into_iter()
        .filter(|&a| transition(state, a).is_ok())
        .collect()
}
