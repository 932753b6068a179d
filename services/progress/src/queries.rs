//! Read-only queries over the command request/reply
//! (`<prefix>.cmd.progress.<query>`): they append nothing and answer
//! `accepted` with the `result`. Their payload and answer types live here;
//! the portal serves them as `API.md` § Progress, reports, audit.
//!
//! * [`PROGRESS`] — one node of the progress tree, with its children to a
//!   depth (exactly `API.md`'s node, plus a few extra fields). One answer
//!   is one NATS message, so it stops at [`MAX_NODES`] nodes and
//!   [`MAX_REPLY_BYTES`] bytes: the nodes left out are flagged
//!   `children_truncated`, and `after` asks for the rest of a node's
//!   children; `until` ends them at a child, so a large node's children can
//!   be asked in ranges at once ([`crate::tree::assemble`] does both and
//!   puts the pages together);
//! * [`REPORT`] — the report of a subtree ([`crate::report`]);
//! * [`PROGRESS_VERSION`] — the store position, polled by the portal's
//!   live-update stream ([`crate::changes`]).
//!
//! Scope: a caller with any role granted at the asked org or one of its
//! ancestors may read (`auditor` and `central` included); the answer is
//! a pure function of the model, the query, the caller and "today".

use std::collections::BTreeMap;

use chrono::NaiveDate;
use gradeflow_proto::{
    Actor, CommandEnvelope, CycleId, DossierState, Grade, OrgId, Rejection, Role, Tier,
};
use gradeflow_service::{payload, OrgNode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::counters::{grade_index, Counters, QuotaRule, REASONS};
use crate::model::{CycleInfo, ProgressModel};
use crate::refusals::{not_readable, unknown_cycle, unknown_org};
use crate::report::{report, ReportQuery};

/// `progress.v1`: a node of the progress tree.
pub const PROGRESS: &str = "progress.v1";
/// `report.v1`: the report of a subtree, with the Mẫu 04 dossier list.
pub const REPORT: &str = "report.v1";
/// `progress_version.v1`: the position of the progress store.
pub const PROGRESS_VERSION: &str = "progress_version.v1";

/// Every query kind this service answers.
pub const KINDS: [&str; 3] = [PROGRESS, REPORT, PROGRESS_VERSION];

/// The most nodes one `progress.v1` answer carries; past that the
/// remaining children are left out and their parent flagged
/// `children_truncated`.
pub const MAX_NODES: usize = 5_000;

/// The most bytes of node JSON one `progress.v1` answer carries (each node
/// measured as encoded without its children), for the same cut. Three
/// quarters of NATS's default `max_payload` (1 MiB): a node is about 1 KB,
/// so the whole country at depth 2 (~3,300 communes, ~3.5 MB) comes in
/// pages, and the reply envelope, the truncation flags and a first child
/// forced in past the budget fit in the last quarter. (512 KiB made the
/// 1,255-node tree of the 1M benchmark three pages asked one after
/// another; this makes it two.)
pub const MAX_REPLY_BYTES: usize = 768 * 1024;

/// How much of the tree one answer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nodes, the asked node included.
    pub nodes: usize,
    /// Bytes of node JSON, each node measured without its children.
    pub bytes: usize,
}

impl Limits {
    /// One `progress.v1` reply, which travels as one NATS message.
    pub const REPLY: Limits = Limits {
        nodes: MAX_NODES,
        bytes: MAX_REPLY_BYTES,
    };
    /// A reader of the model in process ([`progress`]): no message to fit
    /// in, only the node count.
    pub const IN_PROCESS: Limits = Limits {
        nodes: MAX_NODES,
        bytes: usize::MAX,
    };
}

/// A subtree of the progress tree, as read in process ([`progress`]); the
/// `progress.v1` payload is [`ProgressPageQuery`], which adds `after` and
/// `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// The cycle.
    pub cycle: CycleId,
    /// The node (default: the cycle's root).
    #[serde(default)]
    pub org: Option<OrgId>,
    /// Levels of children (default 1; 0 = none).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// `progress.v1` payload: a [`ProgressQuery`] and where the asked node's
/// page of children starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressPageQuery {
    /// The cycle.
    pub cycle: CycleId,
    /// The node (default: the cycle's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgId>,
    /// Levels of children (default 1; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Only the asked node's own children whose code sorts after this one
    /// (byte order, the order children come in): the last child present in
    /// an answer flagged `children_truncated` asks for the next page.
    /// Deeper levels are not filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only the asked node's own children whose code sorts at or before
    /// this one: with `after`, one range of its children (ranges split at
    /// children's codes, `(a, b]` then `(b, c]`, cover every child once).
    /// Deeper levels are not filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl ProgressPageQuery {
    /// The subtree asked, without the paging.
    pub fn subtree(&self) -> ProgressQuery {
        ProgressQuery {
            cycle: self.cycle,
            org: self.org,
            depth: self.depth,
        }
    }

    /// The asked node's children this page may carry.
    pub fn span(&self) -> Span<'_> {
        Span {
            after: self.after.as_deref(),
            until: self.until.as_deref(),
        }
    }
}

/// Which of the asked node's own children an answer carries, by code:
/// those after `after` and at or before `until` (either open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span<'q> {
    /// Only children whose code sorts after this one.
    pub after: Option<&'q str>,
    /// Only children whose code sorts at or before this one.
    pub until: Option<&'q str>,
}

impl Span<'_> {
    /// Every child.
    pub const ALL: Span<'static> = Span {
        after: None,
        until: None,
    };

    /// Whether the child coded `code` is in the span.
    pub fn holds(&self, code: &str) -> bool {
        self.after.is_none_or(|a| code > a) && self.until.is_none_or(|u| code <= u)
    }
}

/// `progress_version.v1` payload (`{}` is valid).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// Also answer the last position that changed this cycle.
    #[serde(default)]
    pub cycle: Option<CycleId>,
}

/// The counts of a node's subtree by state (`decided` counts decided and
/// re-graded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Dossiers registered.
    pub subjects: u64,
    /// Not reviewed (new member, exempt, suspended).
    pub not_reviewed: u64,
    /// Nothing filed yet.
    pub open: u64,
    /// Self-review filed.
    pub submitted: u64,
    /// Review meeting held.
    pub reviewed: u64,
    /// Appraised.
    pub appraised: u64,
    /// Returned for rework.
    pub returned: u64,
    /// Graded: decided or re-graded.
    pub decided: u64,
    /// Of `decided`, re-graded.
    #[serde(default)]
    pub regraded: u64,
    /// Settled: decided, re-graded or not reviewed.
    #[serde(default)]
    pub settled: u64,
}

impl Totals {
    /// The totals of subtree counters.
    pub fn of(c: &Counters) -> Totals {
        Totals {
            subjects: c.subjects(),
            not_reviewed: c.state(DossierState::NotReviewed),
            open: c.state(DossierState::Open),
            submitted: c.state(DossierState::Submitted),
            reviewed: c.state(DossierState::Reviewed),
            appraised: c.state(DossierState::Appraised),
            returned: c.state(DossierState::Returned),
            decided: c.state(DossierState::Decided) + c.state(DossierState::Regraded),
            regraded: c.state(DossierState::Regraded),
            settled: c.settled(),
        }
    }
}

/// Not-reviewed dossiers per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotReviewedReasons {
    /// Admitted less than six months before the review.
    pub new_member: u64,
    /// Exempted from party work.
    pub exempt: u64,
    /// Suspended from party activities.
    pub suspended: u64,
}

impl NotReviewedReasons {
    /// The reasons of subtree counters.
    pub fn of(c: &Counters) -> NotReviewedReasons {
        let [new_member, exempt, suspended] = c.reasons();
        debug_assert_eq!(REASONS.len(), 3);
        NotReviewedReasons {
            new_member,
            exempt,
            suspended,
        }
    }
}

/// One quota group: excellent and good graded, and the excellent the
/// cycle's quota allows (`rounding(ratio × good)`, summed per deciding
/// authority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaGroup {
    /// The group (`collectives`, `individuals`, or the authority's own).
    pub group: String,
    /// Graded excellent.
    pub excellent: u64,
    /// Graded good.
    pub good: u64,
    /// Allowed excellent.
    pub max_excellent: u64,
    /// Whether excellent exceeds the allowance (an exception at 25 % may
    /// explain it).
    #[serde(default)]
    pub over: bool,
}

impl QuotaGroup {
    fn new(group: &str, excellent: u64, good: u64, max_excellent: u64) -> QuotaGroup {
        QuotaGroup {
            group: group.to_owned(),
            excellent,
            good,
            max_excellent,
            over: excellent > max_excellent,
        }
    }
}

/// One node of the progress tree (`API.md` § Progress): counts cover the
/// whole subtree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressNode {
    /// The org.
    pub org: OrgId,
    /// Its code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// The cycle's deadline for the tier.
    pub deadline: Option<NaiveDate>,
    /// Not complete, and today is after the deadline.
    pub overdue: bool,
    /// The unit is complete: announced by approval, or every dossier of
    /// the subtree settled.
    pub complete: bool,
    /// Settled share of the subtree's dossiers, in percent (one decimal).
    pub percent: f64,
    /// Counts by state.
    pub totals: Totals,
    /// Not-reviewed counts by reason.
    pub not_reviewed_reasons: NotReviewedReasons,
    /// Graded dossiers per grade (every grade present).
    pub grades: BTreeMap<Grade, u64>,
    /// Quota groups of the subtree, summed over deciding authorities.
    pub quota_groups: Vec<QuotaGroup>,
    /// The quota groups this org decides itself, as the authority.
    pub authority_quota_groups: Vec<QuotaGroup>,
    /// Some children (those after the last one present) were left out to
    /// keep the answer under [`MAX_NODES`] and [`MAX_REPLY_BYTES`]; ask
    /// for this node again with `after` the last present child's code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub children_truncated: bool,
    /// Children, by code, to the asked depth.
    pub children: Vec<ProgressNode>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `progress.v1`.
    Progress(ProgressPageQuery),
    /// `report.v1`.
    Report(ReportQuery),
    /// `progress_version.v1`.
    Version(VersionQuery),
}

impl Query {
    /// Reads a query envelope (its kind must be one of [`KINDS`]).
    pub fn parse(cmd: &CommandEnvelope) -> Result<Query, Rejection> {
        Ok(match cmd.kind.as_str() {
            PROGRESS => Query::Progress(payload(cmd)?),
            REPORT => Query::Report(payload(cmd)?),
            // An absent payload (`null`) reads as "no cycle".
            _ if cmd.payload.is_null() => Query::Version(VersionQuery::default()),
            _ => Query::Version(payload(cmd)?),
        })
    }

    /// The answer from `model`, for `actor`, on `today` (UTC).
    pub fn answer(
        &self,
        model: &ProgressModel,
        actor: &Actor,
        today: NaiveDate,
    ) -> Result<Value, Rejection> {
        let value = match self {
            Query::Progress(q) => serde_json::to_value(progress_page(model, q, actor, today)?),
            Query::Report(q) => serde_json::to_value(report(model, q, actor, today)?),
            Query::Version(q) => return version(model, q),
        };
        // Plain data structs always serialise.
        Ok(value.unwrap_or_default())
    }
}

/// The cycle `cycle`, or `unknown_cycle`.
pub fn cycle_info(model: &ProgressModel, cycle: CycleId) -> Result<&CycleInfo, Rejection> {
    model.cycles.get(&cycle).ok_or_else(|| unknown_cycle(cycle))
}

/// Resolves the asked org (default: the cycle's root) and checks that
/// `actor` may read it: any role granted at it or an ancestor.
pub fn readable_org<'m>(
    model: &'m ProgressModel,
    cycle: &CycleInfo,
    org: Option<OrgId>,
    actor: &Actor,
) -> Result<&'m OrgNode, Rejection> {
    let id = org.unwrap_or(cycle.opened.root);
    let node = model.orgs.get(id).ok_or_else(|| unknown_org(id))?;
    if actor.role != Role::System && !model.orgs.is_within(id, actor.org) {
        return Err(not_readable(id, actor.org));
    }
    Ok(node)
}

/// The node of `q.org` (default the cycle's root) with its children to
/// `q.depth` levels (default 1), for a reader in process: at most
/// [`MAX_NODES`] nodes ([`Limits::IN_PROCESS`]), with no byte budget.
pub fn progress(
    model: &ProgressModel,
    q: &ProgressQuery,
    actor: &Actor,
    today: NaiveDate,
) -> Result<ProgressNode, Rejection> {
    progress_within(model, q, Span::ALL, actor, today, Limits::IN_PROCESS)
}

/// `progress.v1`: [`progress`] within one reply's [`Limits::REPLY`], the
/// asked node's children in `q`'s [`Span`].
pub fn progress_page(
    model: &ProgressModel,
    q: &ProgressPageQuery,
    actor: &Actor,
    today: NaiveDate,
) -> Result<ProgressNode, Rejection> {
    progress_within(model, &q.subtree(), q.span(), actor, today, Limits::REPLY)
}

/// The node of `q.org` with its children to `q.depth` levels, the asked
/// node's own children only those in `span`, within
/// `limits`. The tree is built depth first, by code; once a child does not
/// fit, it and the children after it are left out and the parent is
/// flagged `children_truncated`. The asked node always carries its first
/// child, whatever the limits, so paging with `after` always advances.
pub fn progress_within(
    model: &ProgressModel,
    q: &ProgressQuery,
    span: Span<'_>,
    actor: &Actor,
    today: NaiveDate,
    limits: Limits,
) -> Result<ProgressNode, Rejection> {
    let cycle = cycle_info(model, q.cycle)?;
    let org = readable_org(model, cycle, q.org, actor)?;
    let mut top = node(model, cycle, org, today);
    let mut budget = Budget {
        nodes: limits.nodes.saturating_sub(1),
        bytes: limits.bytes.saturating_sub(encoded_len(&top)),
    };
    let tree = TreeBuilder {
        model,
        cycle,
        today,
    };
    tree.fill(&mut top, org, q.depth.unwrap_or(1), span, true, &mut budget);
    Ok(top)
}

/// What is left of an answer's [`Limits`].
struct Budget {
    nodes: usize,
    bytes: usize,
}

/// What every node of one answer is built from.
struct TreeBuilder<'m> {
    model: &'m ProgressModel,
    cycle: &'m CycleInfo,
    today: NaiveDate,
}

impl TreeBuilder<'_> {
    /// Adds `org`'s children (only those in `span`) to `parent`, to
    /// `depth` levels, while `budget` lasts; `asked` is set for the asked
    /// node, whose first child always comes.
    fn fill(
        &self,
        parent: &mut ProgressNode,
        org: &OrgNode,
        depth: u32,
        span: Span<'_>,
        asked: bool,
        budget: &mut Budget,
    ) {
        if depth == 0 {
            return;
        }
        let remaining = children(self.model, org)
            .into_iter()
            .filter(|c| span.holds(&c.code));
        for child_org in remaining {
            let forced = asked && parent.children.is_empty();
            if !forced && budget.nodes == 0 {
                parent.children_truncated = true;
                return;
            }
            let mut child = node(self.model, self.cycle, child_org, self.today);
            // One more byte for the comma between siblings.
            let size = encoded_len(&child) + 1;
            if !forced && size > budget.bytes {
                parent.children_truncated = true;
                return;
            }
            budget.nodes = budget.nodes.saturating_sub(1);
            budget.bytes = budget.bytes.saturating_sub(size);
            self.fill(&mut child, child_org, depth - 1, Span::ALL, false, budget);
            parent.children.push(child);
        }
    }
}

/// The length of `node`'s JSON as it stands (children included, so call
/// it on a node before its children are added).
fn encoded_len(node: &ProgressNode) -> usize {
    let mut count = ByteCount(0);
    // Plain data structs always serialise; a failure would only undercount
    // one node.
    let _ = serde_json::to_writer(&mut count, node);
    count.0
}

/// A writer that only counts what it is given, to measure JSON without
/// keeping it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The current children of `org`, by code.
pub fn children<'m>(model: &'m ProgressModel, org: &OrgNode) -> Vec<&'m OrgNode> {
    let mut out: Vec<&OrgNode> = org
        .children
        .iter()
        .filter_map(|c| model.orgs.get(*c))
        .filter(|c| c.merged_into.is_none())
        .collect();
    out.sort_by(|a, b| a.code.cmp(&b.code));
    out
}

/// Deadline, completeness and overdue of `org` in `cycle` on `today`.
pub fn status(
    model: &ProgressModel,
    cycle: &CycleInfo,
    org: &OrgNode,
    counters: &Counters,
    today: NaiveDate,
) -> (Option<NaiveDate>, bool, bool) {
    let deadline = cycle.deadline_of(org);
    let subjects = counters.subjects();
    let complete = model.unit_completed(cycle.opened.cycle, org.id)
        || (subjects > 0 && counters.settled() == subjects);
    let overdue = !complete && deadline.is_some_and(|d| today > d);
    (deadline, complete, overdue)
}

/// Percent with one decimal: `part / whole × 100`, 0 for an empty whole.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let tenths = (u128::from(part) * 1_000 + u128::from(whole) / 2) / u128::from(whole);
    // At most 1000 tenths for part ≤ whole: exact in f64.
    tenths as f64 / 10.0
}

/// Every grade with its count.
pub fn grade_counts(counts: &[u64; 4]) -> BTreeMap<Grade, u64> {
    Grade::ALL
        .into_iter()
        .map(|g| (g, counts[grade_index(g)]))
        .collect()
}

/// The subtree quota groups of counters.
pub fn quota_groups(c: &Counters) -> Vec<QuotaGroup> {
    c.groups()
        .map(|(g, t)| QuotaGroup::new(g, t.excellent, t.good, t.max_excellent))
        .collect()
}

/// The quota groups `org` decides itself in `cycle`.
pub fn authority_groups(
    model: &ProgressModel,
    cycle: CycleId,
    org: OrgId,
    rule: QuotaRule,
) -> Vec<QuotaGroup> {
    model
        .decided_by(cycle, org)
        .map(|groups| {
            groups
                .iter()
                .filter(|(_, c)| c.excellent > 0 || c.good > 0)
                .map(|(g, c)| QuotaGroup::new(g, c.excellent, c.good, rule.max_excellent(c.good)))
                .collect()
        })
        .unwrap_or_default()
}

/// One node without children.
pub fn node(
    model: &ProgressModel,
    cycle: &CycleInfo,
    org: &OrgNode,
    today: NaiveDate,
) -> ProgressNode {
    let empty = Counters::default();
    let c = model.counters(cycle.opened.cycle, org.id).unwrap_or(&empty);
    let (deadline, complete, overdue) = status(model, cycle, org, c, today);
    ProgressNode {
        org: org.id,
        code: org.code.clone(),
        name: org.name.clone(),
        tier: org.tier.clone(),
        deadline,
        overdue,
        complete,
        percent: percent(c.settled(), c.subjects()),
        totals: Totals::of(c),
        not_reviewed_reasons: NotReviewedReasons::of(c),
        grades: grade_counts(&c.grades()),
        quota_groups: quota_groups(c),
        authority_quota_groups: authority_groups(model, cycle.opened.cycle, org.id, cycle.rule),
        children_truncated: false,
        children: Vec::new(),
    }
}

/// `progress_version.v1`: `{"position": P}` — the last store position
/// folded — and, for a cycle, `"cycle_position"`: the last position that
/// changed any answer about that cycle.
pub fn version(model: &ProgressModel, q: &VersionQuery) -> Result<Value, Rejection> {
    match q.cycle {
        None => Ok(json!({ "position": model.position() })),
        Some(cycle) => {
            cycle_info(model, cycle)?;
            Ok(json!({
                "position": model.position(),
                "cycle": cycle,
                "cycle_position": model.cycle_position(cycle),
            }))
        }
    }
}
