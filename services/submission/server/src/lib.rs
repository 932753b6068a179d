//! `gradeflow-submission-server`: the submission service
//! (`docs/architecture.md` § Services). It owns the organisation registry,
//! the review cycles, the subjects and their dossiers up to the review
//! meeting, and opens a unit's collective dossier for decision once every
//! child unit is complete (the upward flow, Art. 12.2).
//!
//! The service is a [`Workflow`] on the `gradeflow-service` runtime: every
//! command is decided by a pure function over the [`SubmissionModel`]
//! (held in memory but for its per-dossier maps, which keep their working
//! set in memory and spill the rest to a scratch file) and committed by the
//! [`Engine`] with optimistic concurrency and command-id idempotency;
//! observed events of appraisal and approval are copied into this service's
//! store (by the consumer the binary wires) so the model is a fold of this
//! store alone.
//!
//! Layout: [`registry`] (orgs), [`cycles`], [`dossiers`] (subjects,
//! self-reviews, meetings), [`upward`] (reacting to `unit_completed`),
//! [`queries`] (read-only answers), [`model`], [`detail`] (one dossier's
//! details, folded from its events when asked for) and [`refusals`]; the
//! tests of the model with its maps spilled are in `spilled`.

// A `Rejection` is the value every refusal travels as (code, two messages,
// details), built once per refused command and returned straight to the
// caller; boxing it would only add an allocation to every refusal path.
#![allow(clippy::result_large_err)]

pub mod cycles;
pub mod detail;
pub mod dossiers;
pub mod model;
pub mod queries;
pub mod refusals;
pub mod registry;
#[cfg(test)]
mod spilled;
pub mod upward;

use gradeflow_eventstore::{InboxEntry, Store, StoreError};
use gradeflow_proto::commands::{
    Command, MergeOrgs, MoveOrg, OpenCycle, RecordMeeting, RegisterOrg, RegisterSubject, RenameOrg,
    SubmitSelfReview,
};
use gradeflow_proto::events::{
    CycleCompleted, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    UnitCompleted,
};
use gradeflow_proto::{
    Actor, CommandEnvelope, CommandReply, Envelope, ErrorCode, Rejection, Tiers,
};
use gradeflow_service::{
    answer, payload, reply, Committing, Context, Decision, Engine, ExecuteError, Workflow,
};
use serde_json::json;
use tracing::field::{display, Empty};

pub use model::SubmissionModel;

/// The service name: the `<service>` token of its subjects and the
/// `metadata.service` of its events.
pub const SERVICE: &str = "submission";

/// The kinds of other services' events this service records.
pub const OBSERVED_KINDS: [&str; 6] = [
    DossierAppraised::KIND,
    DossierReturned::KIND,
    GradeDecided::KIND,
    GradeRevised::KIND,
    UnitCompleted::KIND,
    CycleCompleted::KIND,
];

/// The submission service.
#[derive(Clone)]
pub struct Submission {
    engine: Engine<SubmissionModel>,
    tiers: Tiers,
}

impl Submission {
    /// Opens the service over `store` with the `card` tier list
    /// (cell → district → province → central), replaying the store.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        Self::open_with_tiers(store, Tiers::card()).await
    }

    /// Opens the service with the deployment's tier list, which
    /// `register_org` checks every new org against (the cycles' own tier
    /// lists cannot serve: orgs exist before the first cycle is opened).
    pub async fn open_with_tiers(store: Store, tiers: Tiers) -> Result<Self, StoreError> {
        Ok(Self {
            engine: Engine::open(store, SERVICE).await?,
            tiers,
        })
    }

    /// The engine (its store, for the outbox relay and the consumer loop).
    pub fn engine(&self) -> &Engine<SubmissionModel> {
        &self.engine
    }

    /// The deployment's tier list.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Decides and commits one command, idempotently by its command id.
    async fn run<F>(&self, cmd: &CommandEnvelope, decide: F) -> CommandReply
    where
        F: Fn(&SubmissionModel) -> Result<Decision, Rejection>,
    {
        let ctx = Context::of_command(cmd);
        let outcome = self
            .engine
            .execute(&ctx, Some(&cmd.command_id.to_string()), decide)
            .await;
        log_outcome(reply(outcome))
    }

    /// Answers a read-only query from the caught-up model; a dossier's view
    /// from its events, read from the store once the model's lock is
    /// released and every step the model holds of it has committed (a store
    /// that cannot be read, or does not commit, answers `unavailable`).
    async fn query(&self, query: &queries::Query, actor: &Actor) -> CommandReply {
        loop {
            let (found, mark) = match self.engine.read_marked(|m| query.answer(m, actor)).await {
                Ok((Ok(found), mark)) => (found, mark),
                Ok((Err(rejection), _)) => return CommandReply::Rejected(rejection),
                Err(e) => return answer(Err(e)),
            };
            let (id, positions) = match found {
                queries::Answer::Ready(result) => return answer(Ok(Ok(result))),
                queries::Answer::Dossier { id, events } => (id, events),
            };
            // Outside the model's lock: commands and the consumer go on
            // meanwhile. A step whose append did not commit is read again.
            match self.engine.settled(mark).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return answer(Err(e)),
            }
            let events = self.engine.store().read_positions(&positions).await;
            return answer(events.map(|events| queries::dossier_view_of(id, &events)));
        }
    }

    #[tracing::instrument(name = "submission.org.register", skip_all, fields(command_id = %cmd.command_id, org_id = Empty))]
    async fn register_org(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: RegisterOrg = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        if let Some(id) = input.id {
            tracing::Span::current().record("org_id", display(id));
        }
        self.run(cmd, |m| {
            registry::register_org(m, &self.tiers, &cmd.actor, &input)
        })
        .await
    }

    #[tracing::instrument(name = "submission.org.rename", skip_all, fields(command_id = %cmd.command_id, org_id = Empty))]
    async fn rename_org(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: RenameOrg = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("org_id", display(input.org));
        self.run(cmd, |m| registry::rename_org(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.org.move", skip_all, fields(command_id = %cmd.command_id, org_id = Empty))]
    async fn move_org(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: MoveOrg = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("org_id", display(input.org));
        self.run(cmd, |m| registry::move_org(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.org.merge", skip_all, fields(command_id = %cmd.command_id, org_id = Empty))]
    async fn merge_orgs(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: MergeOrgs = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("org_id", display(input.into));
        self.run(cmd, |m| registry::merge_orgs(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.cycle.open", skip_all, fields(command_id = %cmd.command_id, cycle_id = Empty))]
    async fn open_cycle(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: OpenCycle = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        if let Some(id) = input.id {
            tracing::Span::current().record("cycle_id", display(id));
        }
        self.run(cmd, |m| cycles::open_cycle(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.subject.register", skip_all, fields(command_id = %cmd.command_id, org_id = Empty))]
    async fn register_subject(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: RegisterSubject = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("org_id", display(input.org));
        self.run(cmd, |m| dossiers::register_subject(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.dossier.self_review", skip_all, fields(command_id = %cmd.command_id, dossier_id = Empty))]
    async fn submit_self_review(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: SubmitSelfReview = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("dossier_id", display(input.dossier));
        self.run(cmd, |m| {
            dossiers::submit_self_review(m, &cmd.actor, &input, cmd.traceparent.as_deref())
        })
        .await
    }

    #[tracing::instrument(name = "submission.dossier.meeting", skip_all, fields(command_id = %cmd.command_id, dossier_id = Empty))]
    async fn record_meeting(&self, cmd: &CommandEnvelope) -> CommandReply {
        let input: RecordMeeting = match payload(cmd) {
            Ok(i) => i,
            Err(r) => return CommandReply::Rejected(r),
        };
        tracing::Span::current().record("dossier_id", display(input.dossier));
        self.run(cmd, |m| dossiers::record_meeting(m, &cmd.actor, &input))
            .await
    }

    #[tracing::instrument(name = "submission.query", skip_all, fields(kind = %cmd.kind))]
    async fn answer_query(&self, cmd: &CommandEnvelope) -> CommandReply {
        let query = match queries::Query::parse(cmd) {
            Ok(q) => q,
            Err(r) => return CommandReply::Rejected(r),
        };
        self.query(&query, &cmd.actor).await
    }
}

fn log_outcome(reply: CommandReply) -> CommandReply {
    match &reply {
        CommandReply::Accepted { event_ids, .. } => {
            tracing::debug!(events = event_ids.len(), "command accepted");
        }
        CommandReply::Rejected(r) => tracing::info!(code = %r.code, "command refused"),
    }
    reply
}

fn unknown_kind(kind: &str) -> CommandReply {
    CommandReply::Rejected(
        ErrorCode::InvalidInput
            .reject(
                format!("the submission service has no command `{kind}`"),
                "Dịch vụ tiếp nhận hồ sơ không hỗ trợ lệnh này",
            )
            .with_details(json!({ "kind": kind })),
    )
}

impl Workflow for Submission {
    fn service(&self) -> &'static str {
        SERVICE
    }

    async fn handle_command(&self, command: CommandEnvelope) -> CommandReply {
        let cmd = &command;
        match cmd.kind.as_str() {
            RegisterOrg::KIND => self.register_org(cmd).await,
            RenameOrg::KIND => self.rename_org(cmd).await,
            MoveOrg::KIND => self.move_org(cmd).await,
            MergeOrgs::KIND => self.merge_orgs(cmd).await,
            OpenCycle::KIND => self.open_cycle(cmd).await,
            RegisterSubject::KIND => self.register_subject(cmd).await,
            SubmitSelfReview::KIND => self.submit_self_review(cmd).await,
            RecordMeeting::KIND => self.record_meeting(cmd).await,
            kind if queries::KINDS.contains(&kind) => self.answer_query(cmd).await,
            kind => unknown_kind(kind),
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
        self.engine.observe(envelope, inbox, upward::react).await
    }
}
