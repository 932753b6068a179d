//! `gradeflow audit replay --as-of T`: the state of every dossier and the
//! progress tree as they were at T, rebuilt from events alone.
//!
//! **Source.** The fold reads the three workflow stores — submission,
//! appraisal, approval — and takes from each only its *own* events (not
//! the copies it observed), merged by `recorded_at` (ties: submission,
//! appraisal, approval, then position), up to T inclusive; and folds them
//! into the progress service's own model, [`ProgressModel`], whose answer
//! is the `progress.v1` node ([`gradeflow_progress::ProgressNode`]).
//!
//! Why not the progress store: it is a disposable read model (rebuilt by
//! replay when lost), so its `recorded_at` says when progress *learned* of
//! an event — after a rebuild, all at once — not when it happened. The
//! workflow stores are the system of record: each event's time is when its
//! service decided it, and their chains are what `verify` proves. Every
//! event reaches progress from exactly these own events, so once progress
//! has caught up, the replay "as of now" equals the live `progress.v1`
//! answer (the tests hold it to that at three points of a cycle).
//!
//! Order across services follows causality: a service records an event
//! only after it observed the events that caused it, so the merged order
//! never puts an effect before its cause on one clock; across machines with
//! skewed clocks, [`ProgressModel`] parks a dossier's event that arrives
//! before the dossier's registration, exactly as the live service does.
//! "Today" for overdue units is T's UTC date.

use chrono::{DateTime, Utc};
use gradeflow_progress::queries::{progress, ProgressQuery};
use gradeflow_progress::{ProgressModel, ProgressNode};
use gradeflow_proto::{
    Actor, Category, CycleId, DecisionId, DossierId, DossierState, Grade, OrgId, Role, RulebookId,
    SubjectId, SubjectKind,
};
use gradeflow_service::Model as _;
use serde::Serialize;

use crate::problem::{Check, Problem};
use crate::scan::{is_own, Merged};
use crate::sources::{AuditError, Stores, WORKFLOW_SERVICES};
use crate::table::{or_dash, Table};

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayQuery {
    /// The time to rebuild the state at (inclusive).
    pub as_of: DateTime<Utc>,
    /// The subtree: an org id or code (default: each cycle's root).
    pub org: Option<String>,
    /// One cycle (default: every cycle open at T).
    pub cycle: Option<CycleId>,
    /// Levels of the tree below the org (default: all).
    pub depth: Option<u32>,
}

/// One dossier as it stood at T.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DossierAt {
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// The subject's name.
    pub name: String,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The form.
    pub category: Category,
    /// The org it belongs to (a collective: itself).
    pub org: OrgId,
    /// That org's code.
    pub org_code: String,
    /// The org whose authority decides it.
    pub deciding_org: OrgId,
    /// Its state.
    pub state: DossierState,
    /// The grade in force.
    pub grade: Option<Grade>,
    /// The grade a re-grade superseded.
    pub previous_grade: Option<Grade>,
    /// The decision of the grade in force.
    pub decision: Option<DecisionId>,
    /// That decision's number.
    pub decision_number: Option<String>,
    /// How often it was returned.
    pub returns: u32,
    /// The re-grading reason.
    pub regrade_reason: Option<String>,
}

/// One cycle as it stood at T.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleAt {
    /// The cycle.
    pub cycle: CycleId,
    /// The year reviewed.
    pub year: i32,
    /// Its rulebook.
    pub rulebook: RulebookId,
    /// When it completed, if it had by T.
    pub completed_at: Option<DateTime<Utc>>,
    /// The progress tree from the asked org (the `progress.v1` node).
    pub progress: ProgressNode,
    /// Every dossier of the subtree, by org code, collective first, name.
    pub dossiers: Vec<DossierAt>,
}

/// The answer of `gradeflow audit replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    /// The time replayed to.
    pub as_of: DateTime<Utc>,
    /// The stores folded (own events only).
    pub source: Vec<String>,
    /// Events folded.
    pub events: u64,
    /// Each cycle asked for.
    pub cycles: Vec<CycleAt>,
    /// Events that did not read back and were left out of the fold.
    pub unreadable: Vec<Problem>,
}

/// Folds the workflow stores' own events recorded up to `as_of` into a
/// [`ProgressModel`]. Returns the model, the number of events folded and
/// the rows that did not read back.
pub async fn fold(
    stores: &Stores,
    as_of: DateTime<Utc>,
) -> Result<(ProgressModel, u64, Vec<Problem>), AuditError> {
    let mut open = Vec::new();
    for service in WORKFLOW_SERVICES {
        open.push((service, stores.require(service)?));
    }
    let mut merged = Merged::new(&open, Some(as_of));
    let mut model = ProgressModel::default();
    let mut events = 0u64;
    while let Some((i, event)) = merged.next().await? {
        if is_own(merged.service(i), &event) {
            model.apply(&event);
            events += 1;
        }
    }
    let unreadable = merged
        .unreadable()
        .into_iter()
        .map(|(service, position, why)| {
            Problem::new(Check::Store, format!("left out of the replay: {why}"))
                .in_store(service)
                .at(position)
        })
        .collect();
    Ok((model, events, unreadable))
}

/// `gradeflow audit replay` on open stores.
pub async fn replay(stores: &Stores, q: &ReplayQuery) -> Result<ReplayReport, AuditError> {
    let (model, events, unreadable) = fold(stores, q.as_of).await?;
    let mut report = report(&model, q)?;
    report.events = events;
    report.unreadable = unreadable;
    Ok(report)
}

/// The org `reference` names in `model`: an id, or else a code.
pub fn resolve_org(model: &ProgressModel, reference: &str) -> Result<OrgId, AuditError> {
    let by_id = reference
        .parse::<OrgId>()
        .ok()
        .filter(|id| model.orgs.get(*id).is_some());
    by_id
        .or_else(|| model.orgs.by_code(reference).map(|o| o.id))
        .ok_or_else(|| AuditError::UnknownOrg(reference.to_owned()))
}

/// The report of `q` from a folded model (pure).
pub fn report(model: &ProgressModel, q: &ReplayQuery) -> Result<ReplayReport, AuditError> {
    let org = q
        .org
        .as_deref()
        .map(|r| resolve_org(model, r))
        .transpose()?;
    let mut cycles: Vec<_> = match q.cycle {
        Some(id) => vec![model.cycles.get(&id).ok_or(AuditError::UnknownCycle(id))?],
        None => model.cycles.values().collect(),
    };
    cycles.sort_by_key(|c| (c.opened.year, c.opened.cycle.as_uuid()));
    let today = q.as_of.date_naive();
    let mut out = Vec::new();
    for info in cycles {
        let cycle = info.opened.cycle;
        let top = org.unwrap_or(info.opened.root);
        let actor = Actor {
            sub: "gradeflow-audit".to_owned(),
            role: Role::System,
            org: info.opened.root,
        };
        let query = ProgressQuery {
            cycle,
            org: Some(top),
            depth: Some(q.depth.unwrap_or(u32::MAX)),
        };
        let node = progress(model, &query, &actor, today)
            .map_err(|r| AuditError::UnknownOrg(format!("{top} ({})", r.message)))?;
        // Every dossier of the cycle in `top`'s subtree, read through the
        // units' lists (the model keeps no list of all dossiers to scan).
        let mut dossiers: Vec<DossierAt> = Vec::new();
        model.subtree_dossiers(cycle, top, |id, d| {
            let r = &d.registered;
            dossiers.push(DossierAt {
                dossier: id,
                subject: r.subject,
                name: r.name.to_string(),
                kind: r.kind,
                category: r.category,
                org: r.org,
                org_code: model
                    .orgs
                    .get(r.org)
                    .map_or_else(|| r.org.to_string(), |o| o.code.clone()),
                deciding_org: r.deciding_org,
                state: d.state,
                grade: d.grade,
                previous_grade: d.previous_grade,
                decision: d.decision,
                decision_number: model.decision_number(d).map(str::to_owned),
                returns: d.returns,
                regrade_reason: d.regrade_reason.as_deref().map(str::to_owned),
            });
        });
        dossiers.sort_by(|a, b| {
            (
                &a.org_code,
                a.kind != SubjectKind::Collective,
                &a.name,
                a.dossier.as_uuid(),
            )
                .cmp(&(
                    &b.org_code,
                    b.kind != SubjectKind::Collective,
                    &b.name,
                    b.dossier.as_uuid(),
                ))
        });
        out.push(CycleAt {
            cycle,
            year: info.opened.year,
            rulebook: info.opened.rulebook,
            completed_at: info.completed_at,
            progress: node,
            dossiers,
        });
    }
    Ok(ReplayReport {
        as_of: q.as_of,
        source: WORKFLOW_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        events: 0,
        cycles: out,
        unreadable: Vec::new(),
    })
}

impl ReplayReport {
    /// The human form: per cycle, the tree and the dossiers.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Replay as of {} from the {} stores' own events ({} events)\n",
            gradeflow_eventstore::canonical::format_timestamp(self.as_of),
            self.source.join(", "),
            self.events
        );
        if self.cycles.is_empty() {
            out.push_str("No review cycle was open at that time.\n");
        }
        for c in &self.cycles {
            out.push_str(&format!(
                "\nCycle {} ({}, {}): {}\n",
                c.cycle,
                c.year,
                c.rulebook.code(),
                c.completed_at.map_or_else(
                    || "in progress".to_owned(),
                    |t| format!(
                        "completed at {}",
                        gradeflow_eventstore::canonical::format_timestamp(t)
                    )
                )
            ));
            let mut tree = Table::new(&[
                "ORG",
                "TIER",
                "SUBJECTS",
                "NOT REVIEWED",
                "OPEN",
                "SUBMITTED",
                "REVIEWED",
                "APPRAISED",
                "RETURNED",
                "DECIDED",
                "EXCELLENT",
                "GOOD",
                "COMPLETED",
                "NOT COMPLETED",
                "COMPLETE",
                "OVERDUE",
            ]);
            tree_rows(&c.progress, 0, &mut tree);
            out.push_str(&tree.render());
            out.push_str(&format!("\nDossiers ({})\n", c.dossiers.len()));
            let mut dossiers = Table::new(&[
                "ORG", "NAME", "KIND", "STATE", "GRADE", "DECISION", "RETURNS", "DOSSIER",
            ]);
            for d in &c.dossiers {
                dossiers.row(vec![
                    d.org_code.clone(),
                    d.name.clone(),
                    format!("{:?}", d.kind).to_lowercase(),
                    d.state.code().to_owned(),
                    or_dash(d.grade.map(|g| g.code())),
                    or_dash(d.decision_number.as_deref()),
                    d.returns.to_string(),
                    d.dossier.to_string(),
                ]);
            }
            out.push_str(&dossiers.render());
        }
        for p in &self.unreadable {
            out.push_str(&format!(
                "warning: {} position {}: {}\n",
                p.store.as_deref().unwrap_or("?"),
                or_dash(p.position),
                p.problem
            ));
        }
        out
    }
}

fn tree_rows(node: &ProgressNode, depth: usize, t: &mut Table) {
    let grade = |g: Grade| node.grades.get(&g).copied().unwrap_or(0).to_string();
    let totals = &node.totals;
    t.row(vec![
        format!("{}{} {}", "  ".repeat(depth), node.code, node.name),
        node.tier.to_string(),
        totals.subjects.to_string(),
        totals.not_reviewed.to_string(),
        totals.open.to_string(),
        totals.submitted.to_string(),
        totals.reviewed.to_string(),
        totals.appraised.to_string(),
        totals.returned.to_string(),
        totals.decided.to_string(),
        grade(Grade::Excellent),
        grade(Grade::Good),
        grade(Grade::Completed),
        grade(Grade::NotCompleted),
        if node.complete { "yes" } else { "no" }.to_owned(),
        if node.overdue { "yes" } else { "no" }.to_owned(),
    ]);
    for child in &node.children {
        tree_rows(child, depth + 1, t);
    }
}
