//! `gradeflow-audit`: the auditor's tools (`API.md` § Progress, reports,
//! audit; `docs/audit.md`). They work on the services' own stores — SQLite
//! files under the data dir, or one PostgreSQL schema per service — on the
//! key registry, and on the JetStream audit stream, with no service or
//! portal running, and they never write to any of them.
//!
//! | command | module | what it answers |
//! | --- | --- | --- |
//! | `gradeflow audit verify` | [`verify`] | every store's hash chain, the decision log's chain and signatures, the log against `<prefix>_AUDIT`; an export offline ([`export::verify_export`]) |
//! | `gradeflow audit replay --as-of T` | [`replay`] | every dossier's state and the progress tree as they were at T, folded from events alone |
//! | `gradeflow audit explain DOSSIER` | [`explain`] | every event of one dossier across the services, in order, with actors, reasons, trace ids, hashes and signatures |
//! | `gradeflow audit recheck` | [`recheck`] | each recorded decision judged again by its cycle's rulebook on the facts it had |
//! | `gradeflow audit export` | [`export`] | one self-contained file of a cycle's subtree that another machine verifies offline |
//!
//! Everything that judges is pure and shared with the services: the event
//! hash ([`gradeflow_eventstore::canonical`]), the record hash and signature
//! checks ([`gradeflow_approval_server::record`]), the rulebooks
//! ([`gradeflow_approval_domain::check_batch`]) and the models the services
//! fold ([`gradeflow_approval_server::ApprovalModel`],
//! [`gradeflow_progress::ProgressModel`]). This crate only reads, folds and
//! compares. The command line (`services/gradeflow/src/audit.rs`) parses
//! flags, calls these functions and prints their reports.

pub mod explain;
pub mod export;
pub mod problem;
pub mod recheck;
pub mod replay;
mod scan;
pub mod sources;
pub mod stream;
pub mod table;
pub mod verify;

pub use problem::{Check, Problem};
pub use sources::{AuditError, Keys, Sources, StoreLocation, Stores};
