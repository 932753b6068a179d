//! `report.v1`: what goes up for a subtree (`DOMAIN.md` § What goes up) —
//! counts and percentages per grade split by subject segment, not-reviewed
//! counts with reasons, the excellent:good ratio per quota group, overdue
//! units per tier deadline, the named lists (excellent, not completed,
//! re-graded) and the Mẫu 04 dossier list.
//!
//! The counts come from the subtree's aggregated counters (cheap at any
//! size). The dossier list is paged (`offset`, `limit`), because one NATS
//! message is capped at 1 MiB: a page lists the dossiers in a stable
//! order — the org's own dossiers in registration order, then each child's
//! subtree by code — numbered (STT) across the whole subtree, and the named
//! lists of a page hold that page's dossiers. The portal fetches pages
//! while `page.next` is set and joins them with [`Report::append_page`];
//! `position` tells it whether the store moved in between.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use gradeflow_proto::{
    Actor, Category, CycleId, DossierId, DossierState, Grade, OrgId, Rejection, RulebookId,
    SubjectId, SubjectKind, SubjectStatus, Tier,
};
use gradeflow_service::OrgNode;
use serde::{Deserialize, Serialize};

use crate::counters::{Counters, Segment};
use crate::model::{CycleInfo, DossierRecord, ProgressModel};
use crate::queries::{
    children, cycle_info, grade_counts, percent, quota_groups, readable_org, status,
    NotReviewedReasons, QuotaGroup, Totals,
};
use crate::refusals::invalid_input;

/// Dossier rows per page when the query names no limit.
pub const DEFAULT_ROWS: u64 = 500;
/// The most dossier rows one page carries (a page stays well under 1 MiB).
pub const MAX_ROWS: u64 = 1_000;
/// The most overdue units listed by name (all are counted per tier).
pub const MAX_OVERDUE_LISTED: usize = 1_000;

/// `report.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// The cycle.
    pub cycle: CycleId,
    /// The subtree's top (default: the cycle's root).
    #[serde(default)]
    pub org: Option<OrgId>,
    /// Dossier rows to skip (default 0).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Dossier rows in this page (default 500, at most 1 000).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One line of the Mẫu 04 dossier list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DossierRow {
    /// Number in the subtree's list, from 1.
    pub stt: u64,
    /// The dossier.
    pub dossier: DossierId,
    /// Its subject.
    pub subject: SubjectId,
    /// Full name (a collective's name).
    pub name: String,
    /// The org it belongs to (a collective's own org).
    pub org: OrgId,
    /// That org's name.
    pub unit: String,
    /// That org's code.
    pub unit_code: String,
    /// Individual or collective.
    pub kind: SubjectKind,
    /// The form (01, 2A, 2B, 2C).
    pub category: Category,
    /// Leader flag.
    pub leader: bool,
    /// Reviewed or why not.
    pub status: SubjectStatus,
    /// The dossier's state.
    pub state: DossierState,
    /// The grade in force (decided or re-graded).
    #[serde(default)]
    pub grade: Option<Grade>,
    /// The decision document's number, once known.
    #[serde(default)]
    pub decision_number: Option<String>,
    /// For a re-graded dossier: the grade it had.
    #[serde(default)]
    pub previous_grade: Option<Grade>,
    /// For a re-graded dossier: why.
    #[serde(default)]
    pub regrade_reason: Option<String>,
}

/// Counts of one segment of subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// The segment.
    pub segment: Segment,
    /// Its Vietnamese heading.
    pub label_vi: String,
    /// Subjects registered.
    pub subjects: u64,
    /// Not reviewed.
    pub not_reviewed: u64,
    /// Graded.
    pub graded: u64,
    /// Graded per grade.
    pub grades: BTreeMap<Grade, u64>,
    /// Percent of the graded, per grade (one decimal).
    pub percent: BTreeMap<Grade, f64>,
}

/// One quota group with its ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaRatio {
    /// The group and its counts.
    #[serde(flatten)]
    pub counts: QuotaGroup,
    /// excellent ÷ good in percent (one decimal), `None` with no good.
    pub ratio_percent: Option<f64>,
}

/// An incomplete unit past its tier's deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverdueUnit {
    /// The org.
    pub org: OrgId,
    /// Its code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// The deadline it missed.
    pub deadline: Option<NaiveDate>,
    /// Dossiers of its subtree not settled yet.
    pub unsettled: u64,
}

/// Where a page of the dossier list sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Rows skipped before this page.
    pub offset: u64,
    /// Rows this page (or, after [`Report::append_page`], these pages)
    /// hold.
    pub rows: u64,
    /// Rows in the whole subtree.
    pub total: u64,
    /// The offset of the next page, if any.
    pub next: Option<u64>,
}

/// The report of a subtree (`report.v1`'s answer). Serialisable both ways:
/// the portal reads it from the reply and renders it with
/// [`crate::report_csv`] and [`crate::report_xlsx`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The cycle.
    pub cycle: CycleId,
    /// Its year.
    pub year: i32,
    /// Its rulebook.
    pub rulebook: RulebookId,
    /// The subtree's top.
    pub org: OrgId,
    /// Its code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// The day the report was made for (UTC).
    pub today: NaiveDate,
    /// The progress store position it was read at.
    pub position: i64,
    /// The cycle's deadline for the tier.
    pub deadline: Option<NaiveDate>,
    /// Whether the unit is complete.
    pub complete: bool,
    /// Whether it is overdue.
    pub overdue: bool,
    /// Counts by state.
    pub totals: Totals,
    /// Graded per grade.
    pub grades: BTreeMap<Grade, u64>,
    /// Percent of the graded, per grade.
    pub percent: BTreeMap<Grade, f64>,
    /// Per segment: collectives, individuals, 2A, 2B, 2C, leaders.
    pub segments: Vec<SegmentReport>,
    /// Not-reviewed counts by reason.
    pub not_reviewed: NotReviewedReasons,
    /// excellent:good per quota group.
    pub quota_groups: Vec<QuotaRatio>,
    /// Overdue units below (and including) the top, per tier.
    pub overdue_by_tier: BTreeMap<Tier, u64>,
    /// Overdue units by name (at most [`MAX_OVERDUE_LISTED`]).
    pub overdue_units: Vec<OverdueUnit>,
    /// Subjects graded excellent (of this page).
    pub excellent: Vec<DossierRow>,
    /// Subjects graded not completed (of this page).
    pub not_completed: Vec<DossierRow>,
    /// Re-graded subjects (of this page).
    pub regraded: Vec<DossierRow>,
    /// The Mẫu 04 dossier list (this page).
    pub rows: Vec<DossierRow>,
    /// Where the page sits.
    pub page: Page,
}

impl Report {
    /// Joins the next page (`next.page.offset` must be this report's
    /// `page.next`): its rows and named lists are appended.
    pub fn append_page(&mut self, next: Report) {
        self.rows.extend(next.rows);
        self.excellent.extend(next.excellent);
        self.not_completed.extend(next.not_completed);
        self.regraded.extend(next.regraded);
        self.page.rows = self.rows.len() as u64;
        self.page.next = next.page.next;
        self.page.total = next.page.total;
    }

    /// Whether every row of the subtree is here.
    pub fn is_complete_list(&self) -> bool {
        self.page.next.is_none() && self.page.offset == 0
    }
}

/// `report.v1`: the report of the subtree under `q.org` (default the
/// cycle's root), with one page of its dossier list.
pub fn report(
    model: &ProgressModel,
    q: &ReportQuery,
    actor: &Actor,
    today: NaiveDate,
) -> Result<Report, Rejection> {
    let cycle = cycle_info(model, q.cycle)?;
    let top = readable_org(model, cycle, q.org, actor)?;
    let limit = q.limit.unwrap_or(DEFAULT_ROWS);
    if limit == 0 || limit > MAX_ROWS {
        return Err(invalid_input(
            "limit",
            format!("limit must be between 1 and {MAX_ROWS}"),
            "Số dòng mỗi trang phải từ 1 đến 1000",
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let empty = Counters::default();
    let c = model.counters(q.cycle, top.id).unwrap_or(&empty);
    let (deadline, complete, overdue) = status(model, cycle, top, c, today);

    let mut lister = Lister {
        model,
        cycle: q.cycle,
        skip: offset,
        stt: 0,
        take: usize::try_from(limit).unwrap_or(usize::MAX),
        rows: Vec::new(),
        seen: HashSet::new(),
    };
    lister.walk(top);
    let rows = lister.rows;
    let total = c.subjects();
    let end = offset + rows.len() as u64;
    let named = |keep: fn(&DossierRow) -> bool| -> Vec<DossierRow> {
        rows.iter().filter(|r| keep(r)).cloned().collect()
    };
    let excellent = named(|r| r.grade == Some(Grade::Excellent));
    let not_completed = named(|r| r.grade == Some(Grade::NotCompleted));
    let regraded = named(|r| r.state == DossierState::Regraded);
    let (overdue_by_tier, overdue_units) = overdue_units(model, cycle, top, today);
    let grades = c.grades();
    let graded: u64 = grades.iter().sum();
    Ok(Report {
        cycle: q.cycle,
        year: cycle.opened.year,
        rulebook: cycle.opened.rulebook,
        org: top.id,
        code: top.code.clone(),
        name: top.name.clone(),
        tier: top.tier.clone(),
        today,
        position: model.position(),
        deadline,
        complete,
        overdue,
        totals: Totals::of(c),
        grades: grade_counts(&grades),
        percent: grade_percents(&grades, graded),
        segments: Segment::ALL
            .iter()
            .zip(c.segments().iter())
            .map(|(s, t)| SegmentReport {
                segment: *s,
                label_vi: s.label_vi().to_owned(),
                subjects: t.subjects,
                not_reviewed: t.not_reviewed,
                graded: t.graded,
                grades: grade_counts(&t.grades),
                percent: grade_percents(&t.grades, t.graded),
            })
            .collect(),
        not_reviewed: NotReviewedReasons::of(c),
        quota_groups: quota_groups(c)
            .into_iter()
            .map(|g| QuotaRatio {
                ratio_percent: (g.good > 0).then(|| percent(g.excellent, g.good)),
                counts: g,
            })
            .collect(),
        overdue_by_tier,
        overdue_units,
        excellent,
        not_completed,
        regraded,
        rows,
        page: Page {
            offset,
            rows: end - offset,
            total,
            next: (end < total).then_some(end),
        },
    })
}

fn grade_percents(counts: &[u64; 4], graded: u64) -> BTreeMap<Grade, f64> {
    grade_counts(counts)
        .into_iter()
        .map(|(g, n)| (g, percent(n, graded)))
        .collect()
}

/// Walks a subtree in list order, skipping whole subtrees by their counts
/// until the page starts, so a late page costs O(nodes + rows), not
/// O(dossiers before it).
struct Lister<'m> {
    model: &'m ProgressModel,
    cycle: CycleId,
    skip: u64,
    stt: u64,
    take: usize,
    rows: Vec<DossierRow>,
    seen: HashSet<OrgId>,
}

impl Lister<'_> {
    fn full(&self) -> bool {
        self.rows.len() >= self.take
    }

    fn walk(&mut self, org: &OrgNode) {
        // `seen` guards against a corrupt tree with a loop.
        if self.full() || !self.seen.insert(org.id) {
            return;
        }
        self.own(org.id, org);
        for child in children(self.model, org) {
            if self.full() {
                return;
            }
            let n = self
                .model
                .counters(self.cycle, child.id)
                .map_or(0, Counters::subjects);
            if n <= self.skip {
                self.skip -= n;
                self.stt += n;
                continue;
            }
            self.walk(child);
        }
    }

    /// The dossiers of `id` itself and of the orgs merged into it (listed
    /// under `unit`, the org they count at now).
    fn own(&mut self, id: OrgId, unit: &OrgNode) {
        let own = self.model.own_dossiers(self.cycle, id);
        for dossier in own.iter() {
            if self.full() {
                return;
            }
            self.stt += 1;
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            if let Some(d) = self.model.dossiers.get(dossier) {
                let org = self.model.orgs.get(id).unwrap_or(unit);
                let number = self.model.decision_number(&d);
                self.rows.push(row(self.stt, *dossier, &d, number, org));
            }
        }
        for merged in self.model.merged_into(id).to_vec() {
            if self.seen.insert(merged) {
                self.own(merged, unit);
            }
        }
    }
}

fn row(
    stt: u64,
    dossier: DossierId,
    d: &DossierRecord,
    decision_number: Option<&str>,
    org: &OrgNode,
) -> DossierRow {
    let r = &d.registered;
    let graded = matches!(d.state, DossierState::Decided | DossierState::Regraded);
    DossierRow {
        stt,
        dossier,
        subject: r.subject,
        name: r.name.to_string(),
        org: r.org,
        unit: org.name.clone(),
        unit_code: org.code.clone(),
        kind: r.kind,
        category: r.category,
        leader: r.leader,
        status: r.status,
        state: d.state,
        grade: d.grade.filter(|_| graded),
        decision_number: decision_number.map(str::to_owned).filter(|_| graded),
        previous_grade: d.previous_grade,
        regrade_reason: d.regrade_reason.as_deref().map(str::to_owned),
    }
}

/// Overdue units of the subtree (the top included): counted per tier,
/// listed by name up to [`MAX_OVERDUE_LISTED`], breadth first.
fn overdue_units(
    model: &ProgressModel,
    cycle: &CycleInfo,
    top: &OrgNode,
    today: NaiveDate,
) -> (BTreeMap<Tier, u64>, Vec<OverdueUnit>) {
    let mut by_tier = BTreeMap::new();
    let mut listed = Vec::new();
    let mut queue = std::collections::VecDeque::from([top]);
    let mut seen = HashSet::new();
    let empty = Counters::default();
    while let Some(org) = queue.pop_front() {
        if !seen.insert(org.id) {
            continue;
        }
        let c = model.counters(cycle.opened.cycle, org.id).unwrap_or(&empty);
        let (deadline, _, overdue) = status(model, cycle, org, c, today);
        if overdue {
            *by_tier.entry(org.tier.clone()).or_insert(0) += 1;
            if listed.len() < MAX_OVERDUE_LISTED {
                listed.push(OverdueUnit {
                    org: org.id,
                    code: org.code.clone(),
                    name: org.name.clone(),
                    tier: org.tier.clone(),
                    deadline,
                    unsettled: c.subjects().saturating_sub(c.settled()),
                });
            }
        }
        queue.extend(children(model, org));
    }
    (by_tier, listed)
}
