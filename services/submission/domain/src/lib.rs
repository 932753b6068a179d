//! `gradeflow-submission-domain`: the pure rules of the submission service —
//! the dossier state machine (open → submitted → reviewed → appraised →
//! decided, with returns, not-reviewed subjects and re-grading). No I/O
//! lives here; the service's handlers call [`transition`] before they
//! append an event, and refuse with the error's `code()` when it fails.

pub mod state;

pub use state::{initial_state, legal_actions, transition, Action, TransitionError};
