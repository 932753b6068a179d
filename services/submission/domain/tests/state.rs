//! The dossier state machine over every state × action pair: the exact legal
//! set, the named refusal of each illegal pair, and the paths a dossier
//! really takes. The only integration-test binary of
//! `gradeflow-submission-domain`.

#![allow(clippy::unwrap_used)]

use gradeflow_proto::{DossierState, SubjectStatus};
use gradeflow_submission_domain::{
    initial_state, legal_actions, transition, Action, TransitionError,
};

use Action::*;
use DossierState::*;

/// Every legal move, and nothing else.
const LEGAL: [(DossierState, Action, DossierState); 9] = [
    (Open, FileSelfReview, Submitted),
    (Returned, FileSelfReview, Submitted),
    (Submitted, RecordMeeting, Reviewed),
    (Reviewed, Appraise, Appraised),
    (Reviewed, Return, Returned),
    (Appraised, Return, Returned),
    (Appraised, Decide, Decided),
    (Decided, Regrade, Regraded),
    (Regraded, Regrade, Regraded),
];

fn legal(from: DossierState, action: Action) -> Option<DossierState> {
    LEGAL
        .iter()
        .find(|(f, a, _)| *f == from && *a == action)
        .map(|(_, _, to)| *to)
}

#[test]
fn every_state_and_action_pair_is_legal_exactly_when_the_table_says_so() {
    let mut checked = 0;
    for from in DossierState::ALL {
        for action in Action::ALL {
            let got = transition(from, action);
            match legal(from, action) {
                Some(to) => assert_eq!(got, Ok(to), "{from:?} + {action:?}"),
                None => assert!(got.is_err(), "{from:?} + {action:?} should be refused"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 8 * 6);
}

#[test]
fn every_illegal_pair_is_refused_by_its_named_error() {
    for from in DossierState::ALL {
        for action in Action::ALL {
            let Err(err) = transition(from, action) else {
                continue;
            };
            let expected = match from {
                NotReviewed => TransitionError::NotReviewed { action },
                Decided | Regraded => TransitionError::AlreadyDecided { from, action },
                _ => TransitionError::WrongState { from, action },
            };
            assert_eq!(err, expected, "{from:?} + {action:?}");
        }
    }
}

#[test]
fn a_not_reviewed_dossier_refuses_everything() {
    assert!(legal_actions(NotReviewed).is_empty());
    let err = transition(NotReviewed, FileSelfReview).unwrap_err();
    assert_eq!(err.code(), "not_reviewed");
}

#[test]
fn not_reviewed_is_entered_only_at_registration() {
    assert_eq!(initial_state(SubjectStatus::Active), Open);
    for status in [
        SubjectStatus::NewMember,
        SubjectStatus::Exempt,
        SubjectStatus::Suspended,
    ] {
        assert_eq!(initial_state(status), NotReviewed);
    }
    for from in DossierState::ALL {
        for action in Action::ALL {
            assert_ne!(transition(from, action), Ok(NotReviewed));
        }
    }
}

#[test]
fn a_decided_dossier_can_only_be_regraded_and_regraded_again() {
    assert_eq!(legal_actions(Decided), vec![Regrade]);
    assert_eq!(legal_actions(Regraded), vec![Regrade]);
    let err = transition(Decided, Decide).unwrap_err();
    assert_eq!(err.code(), "already_decided");
    assert_eq!(
        err.message(),
        "dossier is already decided; only a regrade can change it, not decide"
    );
}

#[test]
fn the_appraiser_can_return_a_dossier_only_after_the_meeting_and_before_the_decision() {
    for from in DossierState::ALL {
        let ok = transition(from, Return).is_ok();
        assert_eq!(ok, matches!(from, Reviewed | Appraised), "{from:?}");
    }
    let err = transition(Submitted, Return).unwrap_err();
    assert_eq!(err.code(), "wrong_state");
    assert_eq!(err.message(), "cannot return a dossier that is submitted");
}

#[test]
fn a_dossier_walks_from_open_to_regraded() {
    let path = [
        FileSelfReview,
        RecordMeeting,
        Appraise,
        Decide,
        Regrade,
        Regrade,
    ];
    let end = path.into_iter().try_fold(Open, transition).unwrap();
    assert_eq!(end, Regraded);
}

#[test]
fn a_returned_dossier_is_filed_again_and_goes_through_the_meeting_again() {
    let mut state = Open;
    for action in [FileSelfReview, RecordMeeting, Appraise, Return] {
        state = transition(state, action).unwrap();
    }
    assert_eq!(state, Returned);
    assert_eq!(legal_actions(Returned), vec![FileSelfReview]);
    state = transition(state, FileSelfReview).unwrap();
    assert_eq!(state, Submitted);
    assert_eq!(
        transition(state, Appraise).unwrap_err().code(),
        "wrong_state"
    );
}

#[test]
fn every_refusal_reads_in_english_and_vietnamese() {
    for from in DossierState::ALL {
        for action in Action::ALL {
            if let Err(err) = transition(from, action) {
                assert!(!err.message().is_empty());
                assert!(!err.message_vi().is_empty());
                assert_ne!(err.message(), err.message_vi());
                assert!(["not_reviewed", "already_decided", "wrong_state"].contains(&err.code()));
            }
        }
    }
}
