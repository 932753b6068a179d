//! `gradeflow audit explain DOSSIER`: every event of one dossier across the
//! services' stores, in the order they happened (`recorded_at`, then the
//! store — submission, appraisal, approval, progress — then position): who
//! did what, as which role at which org, when, with which grade and which
//! reason, under which trace, with the event's hash and, for a grade, the
//! decision-log record (seq, hashes, signature, key) and whether its
//! signature verifies against the registry.
//!
//! A dossier's events live on its stream `dossier-<id>` (submission,
//! appraisal), its grades on `decision-log` and its decision documents on
//! `decision-<id>` (approval); those streams are read, not whole stores.
//! Each service's store also holds copies of the events it observed; they
//! are left out (each event is shown once, from the store of the service
//! that recorded it) unless asked for, and then marked `observed`.

use std::collections::BTreeSet;

use gradeflow_approval_server::record::DECISION_LOG_STREAM;
use gradeflow_approval_server::{audit_record, verify_record};
use gradeflow_eventstore::canonical::{event_hash, format_timestamp};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    DecisionRecorded, DossierAppraised, DossierReturned, Event, GradeDecided, GradeRevised,
    MeetingRecorded, SelfReviewSubmitted, SubjectRegistered,
};
use gradeflow_proto::{
    CycleId, DecisionId, DossierId, EventId, Grade, OrgId, Role, SubjectId, SubjectKind,
};
use gradeflow_service::OrgTree;
use serde::Serialize;
use serde_json::Value;

use crate::scan::is_own;
use crate::sources::{AuditError, Keys, Stores, ALL_SERVICES, PROGRESS};
use crate::table::{or_dash, short, Table};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorView {
    /// The token subject.
    pub sub: String,
    /// The role acted in.
    pub role: Role,
    /// The org the role was granted at.
    pub org: OrgId,
    /// That org's code, when the registry knows it.
    pub org_code: Option<String>,
}

/// The decision-log record a grade event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// Its seq.
    pub seq: u64,
    /// The previous record's hash.
    pub prev_hash: String,
    /// Its hash.
    pub hash: String,
    /// Its signature.
    pub signature: String,
    /// The signing key.
    pub key_id: String,
    /// `valid`, `invalid` (hash or signature), or `unknown key`.
    pub signature_check: String,
}

/// One step of the dossier's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// 1-based, in order.
    pub n: usize,
    /// When the store recorded it.
    pub at: String,
    /// The event kind.
    pub step: String,
    /// The service that recorded the event.
    pub service: String,
    /// The store it was read from.
    pub store: String,
    /// A copy observed by `store`, not `store`'s own event.
    pub observed: bool,
    /// Its position in that store.
    pub position: i64,
    /// Who caused it.
    pub actor: ActorView,
    /// The W3C trace id (the dossier's trace).
    pub trace_id: Option<String>,
    /// The grade this step proposes, recommends or decides.
    pub grade: Option<Grade>,
    /// The appraiser's reason for returning the dossier.
    pub return_reason: Option<String>,
    /// The authority's reason for overriding a hard trigger.
    pub override_reason: Option<String>,
    /// The re-grading reason.
    pub regrade_reason: Option<String>,
    /// The decision document.
    pub decision: Option<DecisionId>,
    /// Its number.
    pub number: Option<String>,
    /// The event id.
    pub event_id: EventId,
    /// The event's hash in its store's chain.
    pub hash: String,
    /// Whether that hash recomputes from the event's bytes and its
    /// `prev_hash` (`verify` checks the links between events).
    pub hash_ok: bool,
    /// For a grade: its decision-log record.
    pub record: Option<RecordView>,
}

/// The answer of `gradeflow audit explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: Option<SubjectId>,
    /// The subject's name.
    pub name: Option<String>,
    /// Individual or collective.
    pub kind: Option<SubjectKind>,
    /// Its cycle.
    pub cycle: Option<CycleId>,
    /// Its org.
    pub org: Option<OrgId>,
    /// That org's code.
    pub org_code: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

/// Explains `dossier` from open `stores`; `copies` also lists the copies
/// each store observed; `keys` checks the grades' signatures.
pub async fn explain(
    stores: &Stores,
    dossier: DossierId,
    copies: bool,
    keys: &Keys,
) -> Result<Explanation, AuditError> {
    let mut tree = OrgTree::default();
    if let Some(submission) = stores.get("submission") {
        for e in submission
            .load_stream("registry")
            .await
            .map_err(AuditError::read("submission"))?
        {
            tree.apply(&e.kind, &e.payload);
        }
    }
    let id = serde_json::to_value(dossier).unwrap_or(Value::Null);
    let about = |e: &StoredEvent| {
        e.payload.get("dossier") == Some(&id)
            || (e.kind == DecisionRecorded::KIND
                && e.payload
                    .get("dossiers")
                    .and_then(Value::as_array)
                    .is_some_and(|ds| ds.contains(&id)))
    };
    // (store order, event) for every event kept.
    let mut found: Vec<(usize, &str, StoredEvent)> = Vec::new();
    for (order, service) in ALL_SERVICES.iter().enumerate() {
        if *service == PROGRESS && !copies {
            continue;
        }
        let Some(store) = stores.get(service) else {
            continue;
        };
        let read = AuditError::read(service);
        let mut events = store.load_stream(&dossier.stream()).await.map_err(read)?;
        let grades: Vec<StoredEvent> = store
            .load_stream(DECISION_LOG_STREAM)
            .await
            .map_err(AuditError::read(service))?
            .into_iter()
            .filter(|e| about(e))
            .collect();
        let decisions: BTreeSet<String> = grades
            .iter()
            .filter_map(|e| e.payload.get("decision").and_then(Value::as_str))
            .map(|d| format!("decision-{d}"))
            .collect();
        events.extend(grades);
        for stream in decisions {
            events.extend(
                store
                    .load_stream(&stream)
                    .await
                    .map_err(AuditError::read(service))?
                    .into_iter()
                    .filter(|e| about(e)),
            );
        }
        for e in events {
            if copies || is_own(service, &e) {
                found.push((order, service, e));
            }
        }
    }
    if found.is_empty() {
        return Err(AuditError::UnknownDossier(dossier));
    }
    found.sort_by(|(i, _, a), (j, _, b)| {
        (a.recorded_at, *i, a.position).cmp(&(b.recorded_at, *j, b.position))
    });

    let mut out = Explanation {
        dossier,
        subject: None,
        name: None,
        kind: None,
        cycle: None,
        org: None,
        org_code: None,
        steps: Vec::new(),
    };
    for (n, (_, store, e)) in found.iter().enumerate() {
        if e.kind == SubjectRegistered::KIND && out.subject.is_none() {
            if let Ok(r) = serde_json::from_value::<SubjectRegistered>(e.payload.clone()) {
                out.subject = Some(r.subject);
                out.name = Some(r.name);
                out.kind = Some(r.kind);
                out.cycle = Some(r.cycle);
                out.org = Some(r.org);
                out.org_code = tree.get(r.org).map(|o| o.code.clone());
            }
        }
        out.steps.push(step(n + 1, store, e, &tree, keys));
    }
    Ok(out)
}

fn text(e: &StoredEvent, field: &str) -> Option<String> {
    e.payload
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn grade_of(e: &StoredEvent, field: &str) -> Option<Grade> {
    e.payload
        .get(field)
        .and_then(|g| serde_json::from_value(g.clone()).ok())
}

fn step(n: usize, store: &str, e: &StoredEvent, tree: &OrgTree, keys: &Keys) -> Step {
    let kind = e.kind.as_str();
    let grade = if kind == SelfReviewSubmitted::KIND || kind == MeetingRecorded::KIND {
        grade_of(e, "proposed_grade")
    } else if kind == DossierAppraised::KIND {
        grade_of(e, "recommended_grade")
    } else if kind == GradeDecided::KIND || kind == GradeRevised::KIND {
        grade_of(e, "grade")
    } else {
        None
    };
    let is_grade = kind == GradeDecided::KIND || kind == GradeRevised::KIND;
    let record = if is_grade {
        audit_record(e).map(|r| {
            let signature_check = match keys.trusted.get(&r.key_id) {
                None => "unknown key",
                Some(k) if verify_record(&r, &k.key) => "valid",
                Some(_) => "invalid",
            }
            .to_owned();
            RecordView {
                seq: r.seq,
                prev_hash: r.prev_hash,
                hash: r.hash,
                signature: r.signature,
                key_id: r.key_id,
                signature_check,
            }
        })
    } else {
        None
    };
    let actor = &e.metadata.actor;
    Step {
        n,
        at: format_timestamp(e.recorded_at),
        step: e.kind.clone(),
        service: e.metadata.service.clone(),
        store: store.to_owned(),
        observed: !is_own(store, e),
        position: e.position,
        actor: ActorView {
            sub: actor.sub.clone(),
            role: actor.role,
            org: actor.org,
            org_code: tree.get(actor.org).map(|o| o.code.clone()),
        },
        trace_id: e
            .metadata
            .traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_owned),
        grade,
        return_reason: (kind == DossierReturned::KIND)
            .then(|| text(e, "reason"))
            .flatten(),
        override_reason: is_grade.then(|| text(e, "override_reason")).flatten(),
        regrade_reason: (kind == GradeRevised::KIND)
            .then(|| text(e, "reason"))
            .flatten(),
        decision: e
            .payload
            .get("decision")
            .and_then(|d| serde_json::from_value(d.clone()).ok()),
        number: text(e, "number"),
        event_id: e.event_id,
        hash: e.hash.clone(),
        hash_ok: event_hash(&e.prev_hash, e) == e.hash,
        record,
    }
}

impl Explanation {
    /// The human form: the steps, then the grades' records.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Dossier {}: {} ({}), org {}, cycle {}\n",
            self.dossier,
            self.name.as_deref().unwrap_or("?"),
            self.kind
                .map_or_else(|| "?".to_owned(), |k| format!("{k:?}").to_lowercase()),
            self.org_code
                .clone()
                .or_else(|| self.org.map(|o| o.to_string()))
                .unwrap_or_else(|| "?".to_owned()),
            or_dash(self.cycle),
        );
        let mut t = Table::new(&[
            "#", "TIME", "SERVICE", "STEP", "ACTOR", "GRADE", "REASON", "TRACE", "HASH",
        ]);
        for s in &self.steps {
            let reason = [
                s.return_reason.as_ref().map(|r| format!("return: {r}")),
                s.override_reason.as_ref().map(|r| format!("override: {r}")),
                s.regrade_reason.as_ref().map(|r| format!("regrade: {r}")),
                s.number.as_ref().map(|r| format!("decision {r}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            let service = if s.observed {
                format!("{} (copy in {})", s.service, s.store)
            } else {
                s.service.clone()
            };
            t.row(vec![
                s.n.to_string(),
                s.at.clone(),
                service,
                s.step.clone(),
                format!(
                    "{} ({} @ {})",
                    s.actor.sub,
                    format!("{:?}", s.actor.role).to_lowercase(),
                    s.actor
                        .org_code
                        .clone()
                        .unwrap_or_else(|| s.actor.org.to_string())
                ),
                or_dash(s.grade.map(|g| g.code())),
                if reason.is_empty() {
                    "-".to_owned()
                } else {
                    reason
                },
                or_dash(s.trace_id.as_deref().map(|t| short(t, 16))),
                format!(
                    "{}{}",
                    short(&s.hash, 16),
                    if s.hash_ok { "" } else { " (BROKEN)" }
                ),
            ]);
        }
        out.push_str(&t.render());
        // Each record once: from the approval store's own grade events.
        let records: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| s.record.is_some() && !s.observed)
            .collect();
        if !records.is_empty() {
            out.push_str("\nDecision-log records\n");
            let mut r = Table::new(&["#", "SEQ", "PREV HASH", "HASH", "KEY", "SIGNATURE", "CHECK"]);
            for s in records {
                if let Some(rec) = &s.record {
                    r.row(vec![
                        s.n.to_string(),
                        rec.seq.to_string(),
                        short(&rec.prev_hash, 16),
                        rec.hash.clone(),
                        rec.key_id.clone(),
                        rec.signature.clone(),
                        rec.signature_check.clone(),
                    ]);
                }
            }
            out.push_str(&r.render());
        }
        out
    }
}
