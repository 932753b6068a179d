//! `gradeflow-approval-domain`: the pure grading rules the approval service
//! enforces at the decision step — the `qd366-2025`, `qd124-2023` and
//! `qd132-2018` rulebooks, the quota and the whole-batch decision check —
//! plus the warnings the appraisal step shows. No I/O lives here: the
//! service, the `gradeflow rules check` CLI and the auditor's `recheck` all
//! call the same functions.
//!
//! ```
//! use gradeflow_approval_domain::{check_batch, DraftBatch};
//!
//! let batch = DraftBatch::from_json(r#"{"rulebook": "qd366-2025", "dossiers": [
//!     {"id": "d1", "kind": "individual", "grade": "good",
//!      "score": {"general": 25, "tasks": 50},
//!      "tasks": {"total": 4, "on_time": 4}}]}"#)?;
//! let outcome = check_batch(&batch);
//! assert!(outcome.ok, "{:?}", outcome.violations);
//! # Ok::<(), gradeflow_approval_domain::DraftError>(())
//! ```
//!
//! The rules, rule by rule, with their articles: `docs/domain.md`.

pub mod draft;
pub mod grading;
pub mod quota;
pub mod rulebook;
pub mod trigger;
pub mod violation;
pub mod warnings;

pub use draft::{
    DraftBatch, DraftDossier, DraftError, GroupCounts, COLLECTIVES_GROUP, INDIVIDUALS_GROUP,
};
pub use grading::{band_grade, max_grade_by_conditions, Condition, ScorePolicy};
pub use quota::{max_excellent, ratio_bp};
pub use rulebook::{check_batch, group_totals, CheckOutcome, Rulebook};
pub use trigger::{Trigger, TriggerPolicy};
pub use violation::{Points, Violation};
pub use warnings::appraisal_warnings;
