//! `gradeflow-approval-server`: the approval service — the competent
//! authority's batch decisions, the signed decision log, and the completion
//! of units and cycles (`ARCHITECTURE.md` § Processes — Decisions).
//!
//! It runs on the service runtime (`gradeflow-service`): its model is a fold
//! of its own store, which holds its own events and the copies of the
//! submission and appraisal events it observes (the org tree, cycles,
//! subjects, self-reviews, appraisals, returns). [`Approval`] implements
//! [`Workflow`], so the lead's NATS wiring serves it like every other
//! service:
//!
//! * commands: `decide_batch.v1` ([`decide`]), and the read-only queries
//!   `worklist.v1`, `audit_decisions.v1`, `verify_log.v1` ([`queries`]);
//! * observed kinds: [`OBSERVED_KINDS`]; the only reaction is completing a
//!   unit when a not-reviewed subject is its last open dossier;
//! * the audit mirror: [`record::audit_record`] maps each stored
//!   `grade_decided` / `grade_revised` event to the [`DecisionLogRecord`]
//!   that goes to `<prefix>_AUDIT`.
//!
//! Streams it writes: `decision-<id>` (`decision_recorded`), `decision-log`
//! (`grade_decided`, `grade_revised`; the version is the record's seq, so
//! the engine's version check on it serialises the chain across replicas),
//! `unit-<cycle>-<org>` (`unit_completed`, once: the stream must not exist)
//! and `cycle-<id>` (`cycle_completed`).
//!
//! Signing keys live outside the store, in a [`KeyRing`] directory.

pub mod decide;
pub mod keys;
pub mod log;
pub mod model;
pub mod queries;
pub mod record;

#[cfg(test)]
mod spill_tests;

use chrono::Utc;
use gradeflow_eventstore::{InboxEntry, Store, StoreError};
use gradeflow_proto::commands::{Command, DecideBatch};
use gradeflow_proto::events::{
    CollectiveDossierOpened, CycleOpened, DecisionLogRecord, DossierAppraised, DossierReturned,
    Event, OrgMoved, OrgRegistered, OrgRenamed, OrgsMerged, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{
    CommandEnvelope, CommandReply, DecisionId, DossierState, Envelope, ErrorCode, Rejection,
};
use gradeflow_service::{
    answer, payload, reply, Committing, Context, Decision, Engine, ExecuteError, Workflow,
};
use serde_json::Value;

pub use keys::{KeyError, KeyRing};
pub use model::ApprovalModel;
pub use record::{
    audit_message, audit_record, record_hash, verify_chain, verify_record, ChainReport,
};

/// The service name: the `<service>` token of its subjects and the
/// `metadata.service` of its own events.
pub const SERVICE: &str = "approval";

/// The kinds of other services' events approval records and folds.
pub const OBSERVED_KINDS: &[&str] = &[
    OrgRegistered::KIND,
    OrgRenamed::KIND,
    OrgMoved::KIND,
    OrgsMerged::KIND,
    CycleOpened::KIND,
    SubjectRegistered::KIND,
    SelfReviewSubmitted::KIND,
    CollectiveDossierOpened::KIND,
    DossierAppraised::KIND,
    DossierReturned::KIND,
];

/// Why the approval service could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Replaying the store failed.
    #[error("approval: cannot replay its event store")]
    Store(#[from] StoreError),
}

/// Why the decision log could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the decision log from the store failed.
    #[error("approval: cannot read the decision log")]
    Store(#[from] StoreError),
    /// The key registry could not be read.
    #[error("approval: cannot read the key registry")]
    Keys(#[from] KeyError),
}

/// The approval service: its engine (store + model) and its signing keys.
#[derive(Clone)]
pub struct Approval {
    engine: Engine<ApprovalModel>,
    keys: KeyRing,
}

impl Approval {
    /// Opens the service over `store` (replaying it) with the keys in `keys`.
    pub async fn open(store: Store, keys: KeyRing) -> Result<Self, OpenError> {
        let engine = Engine::open(store, SERVICE).await?;
        Ok(Self { engine, keys })
    }

    /// The engine (store and model).
    pub fn engine(&self) -> &Engine<ApprovalModel> {
        &self.engine
    }

    /// The signing keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The whole decision log, in seq order, read from the store a page at
    /// a time (the model does not hold it). For tools and tests: the
    /// service itself never needs the log whole.
    pub async fn decision_log(&self) -> Result<Vec<DecisionLogRecord>, StoreError> {
        log::read_all(self.engine.store(), log::PAGE).await
    }

    /// Checks the whole decision log: chain, hashes, and signatures against
    /// the key registry, read from the store and checked a page at a time.
    pub async fn verify_log(&self) -> Result<ChainReport, VerifyError> {
        log::verify(
            self.engine.store(),
            || self.keys.trusted_keys().map_err(VerifyError::Keys),
            log::PAGE,
        )
        .await
    }

    async fn handle(&self, command: CommandEnvelope) -> CommandReply {
        match command.kind.as_str() {
            DecideBatch::KIND => self.decide(&command).await,
            queries::WORKLIST => self.worklist(&command).await,
            queries::AUDIT_DECISIONS => self.audit_decisions(&command).await,
            queries::VERIFY_LOG => self.verify(&command).await,
            other => CommandReply::Rejected(
                ErrorCode::MalformedCommand
                    .reject(
                        format!("the approval service has no command `{other}`"),
                        format!("Dịch vụ phê duyệt không có lệnh `{other}`"),
                    )
                    .with_details(serde_json::json!({"kind": other})),
            ),
        }
    }

    #[tracing::instrument(
        name = "approval.decision.decide",
        skip_all,
        fields(
            command_id = %command.command_id,
            org_id = tracing::field::Empty,
            decision_id = tracing::field::Empty,
            grades = tracing::field::Empty,
        )
    )]
    async fn decide(&self, command: &CommandEnvelope) -> CommandReply {
        let batch: DecideBatch = match payload(command) {
            Ok(b) => b,
            Err(r) => return CommandReply::Rejected(r),
        };
        let span = tracing::Span::current();
        span.record("org_id", tracing::field::display(batch.authority));
        span.record("grades", batch.grades.len());

        // Scope first, so a caller who may not decide here never causes a
        // signing key to be created for the org.
        match self
            .engine
            .read(|m| decide::authorize(m, &batch, &command.actor))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(rejection)) => return CommandReply::Rejected(rejection),
            Err(e) => return reply(Err(ExecuteError::Store(e))),
        }
        let keys = self.keys.clone();
        let authority = batch.authority;
        let key_id = match tokio::task::spawn_blocking(move || keys.key_id(authority)).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "approval: the authority's signing key is unavailable");
                return CommandReply::Rejected(key_unavailable());
            }
            Err(e) => {
                tracing::error!(error = %e, "approval: loading the signing key did not finish");
                return CommandReply::Rejected(key_unavailable());
            }
        };

        let decision = DecisionId::new();
        span.record("decision_id", tracing::field::display(decision));
        let input = decide::BatchInput {
            command: &batch,
            actor: &command.actor,
            decision,
            at: record::record_time(Utc::now()),
            key_id: &key_id,
            sign: |message: &[u8]| self.keys.sign(authority, message).map(|(_, s)| s),
        };
        let ctx = Context::of_command(command);
        let command_id = command.command_id.to_string();
        let outcome = self
            .engine
            .execute(&ctx, Some(&command_id), |m| decide::decide(m, &input))
            .await;
        if let Err(ExecuteError::Rejected(r)) = &outcome {
            tracing::info!(code = %r.code, "approval: decision refused");
        }
        reply(outcome)
    }

    #[tracing::instrument(name = "approval.query.worklist", skip_all, fields(org_id = %command.actor.org))]
    async fn worklist(&self, command: &CommandEnvelope) -> CommandReply {
        let query: queries::WorklistQuery =
            match queries::query_payload(&command.kind, &command.payload) {
                Ok(q) => q,
                Err(r) => return CommandReply::Rejected(r),
            };
        // Once the registrations it lists have committed, so their names
        // can be read from the store.
        let list = match self
            .engine
            .read_committed(|m| queries::worklist(m, &command.actor, &query))
            .await
        {
            Ok(Ok(list)) => list,
            Ok(Err(rejection)) => return CommandReply::Rejected(rejection),
            Err(e) => return answer(Err(e)),
        };
        // Outside the model's lock: commands and the consumer go on meanwhile.
        answer(queries::named(self.engine.store(), list).await.map(Ok))
    }

    #[tracing::instrument(name = "approval.query.audit_decisions", skip_all, fields(org_id = %command.actor.org))]
    async fn audit_decisions(&self, command: &CommandEnvelope) -> CommandReply {
        let query: queries::AuditDecisionsQuery =
            match queries::query_payload(&command.kind, &command.payload) {
                Ok(q) => q,
                Err(r) => return CommandReply::Rejected(r),
            };
        answer(queries::audit_decisions(&self.engine, &command.actor, &query, log::PAGE).await)
    }

    #[tracing::instrument(name = "approval.query.verify_log", skip_all, fields(org_id = %command.actor.org))]
    async fn verify(&self, command: &CommandEnvelope) -> CommandReply {
        if let Err(r) =
            queries::query_payload::<queries::VerifyLogQuery>(&command.kind, &command.payload)
                .and_then(|_| queries::authorize_audit(&command.actor))
        {
            return CommandReply::Rejected(r);
        }
        match self.verify_log().await {
            Ok(report) => accepted(serde_json::to_value(report).unwrap_or(Value::Null)),
            Err(VerifyError::Store(e)) => reply(Err(ExecuteError::Store(e))),
            Err(VerifyError::Keys(e)) => {
                tracing::error!(error = %e, "approval: cannot read the key registry");
                CommandReply::Rejected(key_unavailable())
            }
        }
    }
}

fn accepted(result: Value) -> CommandReply {
    CommandReply::Accepted {
        event_ids: Vec::new(),
        result,
    }
}

fn key_unavailable() -> Rejection {
    ErrorCode::Unavailable.reject(
        "the authority's signing key is unavailable; nothing was recorded",
        "Khóa ký của cấp có thẩm quyền tạm thời không khả dụng; chưa ghi nhận gì",
    )
}

/// Approval's reaction to an observed event, judged on the model as it was
/// before the event and the event itself: a subject registered as not
/// reviewed is settled from the start, so it may be the last open dossier
/// of its unit.
pub fn react(model: &ApprovalModel, envelope: &Envelope) -> Result<Decision, Rejection> {
    if envelope.kind != SubjectRegistered::KIND {
        return Ok(Decision::default());
    }
    let Ok(e) = serde_json::from_value::<SubjectRegistered>(envelope.payload.clone()) else {
        return Ok(Decision::default());
    };
    let settled_at_once = !e.status.is_reviewed() || e.state == DossierState::NotReviewed;
    if !settled_at_once || model.dossiers.contains_key(&e.dossier) {
        return Ok(Decision::default());
    }
    let pending = model::Pending {
        settled: [e.dossier].into_iter().collect(),
        registered: vec![(e.dossier, e.cycle, e.org, e.kind)],
    };
    let events = decide::completion_events(
        model,
        e.cycle,
        &[e.org],
        &pending,
        0,
        record::record_time(envelope.occurred_at),
    );
    Ok(Decision {
        events,
        reads: Vec::new(),
        result: Value::Null,
    })
}

impl Workflow for Approval {
    fn service(&self) -> &'static str {
        SERVICE
    }

    async fn handle_command(&self, command: CommandEnvelope) -> CommandReply {
        self.handle(command).await
    }

    fn observes(&self, kind: &str) -> bool {
        OBSERVED_KINDS.contains(&kind)
    }

    #[tracing::instrument(name = "approval.observe", skip_all, fields(event_id = %envelope.event_id, kind = %envelope.kind))]
    async fn observe(
        &self,
        envelope: &Envelope,
        inbox: InboxEntry,
    ) -> Result<Committing, ExecuteError> {
        self.engine.observe(envelope, inbox, react).await
    }
}
