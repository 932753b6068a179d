//! `gradeflow-appraisal-server`: the appraisal service
//! (`docs/architecture.md` § Services). The organisation board of a
//! dossier's deciding org appraises it — a recommended grade on
//! consolidated facts, with the rulebook's warnings — or returns it to its
//! unit for rework.
//!
//! The service is a [`Workflow`] on the `gradeflow-service` runtime: each
//! command is decided by a pure function over the [`AppraisalModel`] (its
//! working set in memory, the rest in a scratch file) and committed by the
//! [`Engine`] with optimistic concurrency and command-id idempotency. It learns the tree, the cycles
//! and the dossiers from submission's events, and grades from approval's,
//! copied into its own store by the consumer the binary wires; it reacts to
//! none of them.

// A `Rejection` is the value every refusal travels as (code, two messages,
// details), built once per refused command and returned straight to the
// caller; boxing it would only add an allocation to every refusal path.
#![allow(clippy::result_large_err)]

pub mod appraisals;
pub mod model;
pub mod queries;
pub mod refusals;

#[cfg(test)]
mod spilling;

use gradeflow_eventstore::{InboxEntry, Store, StoreError};
use gradeflow_proto::commands::{AppraiseDossier, Command, ReturnDossier};
use gradeflow_proto::events::{
    CycleOpened, Event, GradeDecided, GradeRevised, MeetingRecorded, OrgMoved, OrgRegistered,
    OrgRenamed, OrgsMerged, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{CommandEnvelope, CommandReply, Envelope, ErrorCode, Rejection};
use gradeflow_service::{
    payload, reply, Committing, Context, Decision, Engine, ExecuteError, Workflow,
};
use serde_json::json;
use tracing::field::{display, Empty};

pub use model::AppraisalModel;

/// The service name: the `<service>` token of its subjects and the
/// `metadata.service` of its events.
pub const SERVICE: &str = "appraisal";

/// The kinds of other services' events this service records.
pub const OBSERVED_KINDS: [&str; 10] = [
    OrgRegistered::KIND,
    OrgRenamed::KIND,
    OrgMoved::KIND,
    OrgsMerged::KIND,
    CycleOpened::KIND,
    SubjectRegistered::KIND,
    SelfReviewSubmitted::KIND,
    MeetingRecorded::KIND,
    GradeDecided::KIND,
    GradeRevised::KIND,
];

/// The appraisal service.
#[derive(Clone)]
pub struct Appraisal {
    engine: Engine<AppraisalModel>,
}

impl Appraisal {
    /// Opens the service over `store`, replaying the store.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        Ok(Self {
            engine: Engine::open(store, SERVICE).await?,
        })
    }

    /// The engine (its store, for the outbox relay and the consumer loop).
    pub fn engine(&self) -> &Engine<AppraisalModel> {
        &self.engine
    }

    /// Decides and commits one command, idempotently by its command id.
    async fn run<F>(&self, cmd: &CommandEnvelope, decide: F) -> CommandReply
    where
        F: Fn(&AppraisalModel) -> Result<Decision, Rejection>,
    {
        let ctx = Context::of_command(cmd);
        let outcome = self
            .engine
            .execute(&ctx, Some(&cmd.command_id.to_string()), decide)
            .await;
        let reply = reply(outcome);
        match &reply {
            CommandReply::Accepted { event_ids, .. } => {
                tracing::debug!(events = event_ids.len(), "command accepted");
            }
            CommandReply::Rejected(r) => tracing::info!(code = %r.code, "command refused"),
        }
        reply
    }

    #[tracing::instrument(name = "appraisal.dossier.appraise", skip_all, fields(command_id = %cmd.command_id, dossier_id = Empty))]
    async fn appraise(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: AppraiseDossier = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("dossier_id", display(input.dossier));
        self.run(cmd, |m| appraisals::appraise(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "appraisal.dossier.return", skip_all, fields(command_id = %cmd.command_id, dossier_id = Empty))]
    async fn return_dossier(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: ReturnDossier = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("dossier_id", display(input.dossier));
        self.run(cmd, |m| appraisals::return_dossier(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "appraisal.query", skip_all, fields(kind = %cmd.kind))]
    async fn answer_query(&self, cmd: &CommandEnvelope) -> CommandReply {
        let query = match queries::Query::parse(cmd) {
            Ok(q) => q,
            Err(r) => return CommandReply::Rejected(r),
        };
        let answer = match &query {
            queries::Query::GetDossier(q) => {
                queries::get_dossier(&self.engine, &cmd.actor, q).await
            }
            queries::Query::Worklist(q) => {
                self.engine
                    .read(|m| Ok(queries::worklist(m, &cmd.actor, q)))
                    .await
            }
        };
        gradeflow_service::answer(answer)
    }
}

impl Workflow for Appraisal {
    fn service(&self) -> &'static str {
        SERVICE
    }

    async fn handle_command(&self, command: CommandEnvelope) -> CommandReply {
        let cmd = &command;
        match cmd.kind.as_str() {
            AppraiseDossier::KIND => self.appraise(cmd).await,
            ReturnDossier::KIND => self.return_dossier(cmd).await,
            kind if queries::KINDS.contains(&kind) => self.answer_query(cmd).await,
            kind => CommandReply::Rejected(
                ErrorCode::InvalidInput
                    .reject(
                        format!("the appraisal service has no command `{kind}`"),
                        "Dịch vụ thẩm định không hỗ trợ lệnh này",
                    )
                    .with_details(json!({ "kind": kind })),
            ),
        }
    }

    fn observes(&self, kind: &str) -> bool {
        OBSERVED_KINDS.contains(&kind)
    }

    async fn observe(
        &self,
        envelope: &Envelope,
        inbox: InboxEntry,
    ) -> Result<Committing, ExecuteError> {
        // Appraisal only records what it observes; it reacts to nothing.
        self.engine
            .observe(envelope, inbox, |_, _| Ok(Decision::default()))
            .await
    }
}
