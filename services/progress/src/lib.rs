//! `gradeflow-progress`: the progress service (`docs/architecture.md`
//! § Services) — a read model of every event of the flow, answering the
//! progress tree, reports (with the Mẫu 04 dossier list) and a version for
//! live updates.
//!
//! The service is a [`Workflow`] on the `gradeflow-service` runtime. It
//! observes every event kind ([`EVENT_KINDS`]); the consumer copies each
//! into the service's own store, and the [`Engine`] folds the store into a
//! [`ProgressModel`] — so the model is disposable: reopening the service on
//! its store replays it to the same state. Its per-dossier state (the
//! records and each unit's list of dossiers) is held in
//! `gradeflow_service::spill` maps, so its memory is bounded by their
//! capacity and the number of units, not by the number of dossiers
//! ([`model`]). It emits no events and reacts to none. Its commands are
//! read-only queries ([`queries`]), answered `accepted` with a `result`:
//!
//! | kind | payload | result |
//! | --- | --- | --- |
//! | `progress.v1` | `{cycle, org?, depth?, after?, until?}` | a [`ProgressNode`], at most [`queries::MAX_NODES`] nodes and [`queries::MAX_REPLY_BYTES`] bytes |
//! | `report.v1` | `{cycle, org?, offset?, limit?}` | a [`Report`] page |
//! | `progress_version.v1` | `{cycle?}` | `{"position", "cycle"?, "cycle_position"?}` |
//!
//! A `progress.v1` answer travels as one NATS message, so a large tree
//! comes back cut: the nodes whose children were left out are flagged
//! `children_truncated`, and `after` (a child's code) asks for a node's
//! children after that one; `until` ends them at a child's code, so ranges
//! of a node's children can be asked at once. [`tree::assemble`] asks a
//! deep tree in such ranges, asks for every missing page and returns the
//! whole tree; the portal and the benchmark read the tree through it. The
//! answer is encoded in one walk of the model ([`page`]). (An answer that
//! still does not fit in one message comes back as the bus's
//! `reply_too_large` rejection, never as a silent timeout.)
//!
//! The portal renders reports for people with [`report_csv`] and
//! [`report_xlsx`], and streams live progress by polling
//! `progress_version.v1` ([`changes`] explains why it polls).

// A `Rejection` is the value every refusal travels as (code, two messages,
// details), built once per refused query and returned straight to the
// caller; boxing it would only add an allocation to every refusal path.
#![allow(clippy::result_large_err)]

pub mod changes;
pub mod counters;
pub mod export;
pub mod model;
pub mod page;
pub mod queries;
pub mod refusals;
pub mod report;
#[cfg(test)]
mod spill_tests;
pub mod tree;

use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use gradeflow_eventstore::{InboxEntry, Store, StoreError};
use gradeflow_proto::events::EVENT_KINDS;
use gradeflow_proto::{Actor, CommandEnvelope, CommandReply, Envelope, ErrorCode, Rejection};
use gradeflow_service::{Committing, Decision, Engine, ExecuteError, Reply, Workflow};
use serde_json::json;

pub use changes::touched;
pub use export::{report_csv, report_xlsx, ExportError};
pub use model::ProgressModel;
pub use queries::ProgressNode;
pub use report::Report;
pub use tree::{assemble, AssembleError};

/// The service name: the `<service>` token of its subjects.
pub const SERVICE: &str = "progress";

/// The clock the queries read "today" from (UTC), for overdue units.
pub type Today = Arc<dyn Fn() -> NaiveDate + Send + Sync>;

/// The progress service.
#[derive(Clone)]
pub struct Progress {
    engine: Engine<ProgressModel>,
    today: Today,
}

impl Progress {
    /// Opens the service over `store`, replaying the store.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        Ok(Self {
            engine: Engine::open(store, SERVICE).await?,
            today: Arc::new(|| Utc::now().date_naive()),
        })
    }

    /// The same service reading "today" from `today` (tests, replays as
    /// of a date).
    pub fn with_today(mut self, today: Today) -> Self {
        self.today = today;
        self
    }

    /// The engine (its store, for the consumer loop; its model, for
    /// in-process readers).
    pub fn engine(&self) -> &Engine<ProgressModel> {
        &self.engine
    }

    /// The kinds the consumer must deliver: every event kind.
    pub fn observed_kinds() -> Vec<String> {
        EVENT_KINDS.iter().map(|k| (*k).to_owned()).collect()
    }

    #[tracing::instrument(name = "progress.query", skip_all, fields(kind = %cmd.kind))]
    async fn answer_query(&self, cmd: &CommandEnvelope) -> CommandReply {
        let query = match queries::Query::parse(cmd) {
            Ok(q) => q,
            Err(r) => return CommandReply::Rejected(r),
        };
        match self
            .read(cmd, |m, actor, today| query.answer(m, actor, today))
            .await
        {
            Ok(result) => CommandReply::Accepted {
                event_ids: Vec::new(),
                result,
            },
            Err(refused) => refused,
        }
    }

    /// `progress.v1` as the command server sends it: the largest answer
    /// this service gives (~1 KB a node), encoded under the engine's lock
    /// in one walk of the model ([`page::encode_progress_page`]), with no
    /// node built or measured apart — the bytes [`Progress::answer_query`]'s
    /// reply encodes to.
    #[tracing::instrument(name = "progress.query", skip_all, fields(kind = %cmd.kind))]
    async fn answer_progress(&self, cmd: &CommandEnvelope) -> Reply {
        let q = match gradeflow_service::payload::<queries::ProgressPageQuery>(cmd) {
            Ok(q) => q,
            Err(r) => return Reply::Typed(CommandReply::Rejected(r)),
        };
        match self
            .read(cmd, |m, actor, today| {
                page::encode_progress_page(m, &q, actor, today)
            })
            .await
        {
            Ok(body) => Reply::Encoded(body),
            Err(refused) => Reply::Typed(refused),
        }
    }

    /// Runs a read-only query on the model as `cmd`'s actor, today: its
    /// answer, or the reply refusing it (the query's own refusal, or
    /// `unavailable` when the store could not be read).
    async fn read<T>(
        &self,
        cmd: &CommandEnvelope,
        query: impl FnOnce(&ProgressModel, &Actor, NaiveDate) -> Result<T, Rejection>,
    ) -> Result<T, CommandReply> {
        let today = (self.today)();
        match self.engine.read(|m| query(m, &cmd.actor, today)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(rejection)) => {
                tracing::info!(code = %rejection.code, "query refused");
                Err(CommandReply::Rejected(rejection))
            }
            Err(e) => Err(gradeflow_service::answer(Err(e))),
        }
    }
}

impl Workflow for Progress {
    fn service(&self) -> &'static str {
        SERVICE
    }

    /// `progress.v1` written in one walk of the model
    /// ([`page::encode_progress_page`]); every other command as
    /// [`Workflow::handle_command`] answers it.
    async fn answer_command(&self, command: CommandEnvelope) -> Reply {
        if command.kind == queries::PROGRESS {
            return self.answer_progress(&command).await;
        }
        Reply::Typed(self.handle_command(command).await)
    }

    async fn handle_command(&self, command: CommandEnvelope) -> CommandReply {
        let cmd = &command;
        match cmd.kind.as_str() {
            kind if queries::KINDS.contains(&kind) => self.answer_query(cmd).await,
            kind => CommandReply::Rejected(
                ErrorCode::InvalidInput
                    .reject(
                        format!("the progress service has no command `{kind}`"),
                        "Dịch vụ theo dõi tiến độ không hỗ trợ lệnh này",
                    )
                    .with_details(json!({ "kind": kind })),
            ),
        }
    }

    fn observes(&self, kind: &str) -> bool {
        EVENT_KINDS.contains(&kind)
    }

    async fn observe(
        &self,
        envelope: &Envelope,
        inbox: InboxEntry,
    ) -> Result<Committing, ExecuteError> {
        // Progress only records what it observes; it reacts to nothing, so
        // the append carries no version checks and never conflicts.
        self.engine
            .observe(envelope, inbox, |_, _| Ok(Decision::default()))
            .await
    }
}
