//! `progress.v1`'s reply encoded straight from the model, in one walk: the
//! bytes `CommandReply::encode_accepted(&[], &progress_page(..))` gives,
//! without building a [`ProgressNode`] per node, encoding each one a first
//! time to measure it against the reply's byte budget, and encoding the
//! tree again. Each node's fields are written once, straight from the
//! model's org tree and counters, and the bytes written are what is
//! measured.
//!
//! The cut is [`crate::queries::progress_within`]'s, node for node: depth
//! first, by code; a child that does not fit ([`Limits`]) ends its parent's
//! children, which is then flagged `children_truncated` (the flag is put in
//! front of the parent's children once they are written); the asked node
//! always carries its first child. The progress tests compare every answer
//! this gives with the typed one's encoding.
//!
//! [`ProgressNode`]: crate::queries::ProgressNode

use chrono::NaiveDate;
use gradeflow_proto::{Actor, Grade, Rejection};
use gradeflow_service::OrgNode;
use serde::Serialize;

use crate::counters::{Counters, QuotaRule};
use crate::model::{CycleInfo, ProgressModel};
use crate::queries::{
    children, cycle_info, percent, readable_org, status, Limits, NotReviewedReasons,
    ProgressPageQuery, Span, Totals,
};

/// What an accepted reply starts with, before its result (`event_ids`
/// empty, as a query appends nothing).
const ACCEPTED: &[u8] = br#"{"outcome":"accepted","event_ids":[],"result":"#;
/// What comes between a node's own fields and its children.
const CHILDREN: &[u8] = br#","children":["#;
/// A node's end without children: what a node alone is measured with.
const NO_CHILDREN: &[u8] = br#","children":[]}"#;
/// The flag of a node whose children were cut, put before its children.
const TRUNCATED: &[u8] = br#","children_truncated":true"#;

/// `progress.v1`'s accepted reply, encoded: [`crate::queries::progress_page`]
/// within [`Limits::REPLY`], as `CommandReply::encode_accepted` encodes it.
pub fn encode_progress_page(
    model: &ProgressModel,
    q: &ProgressPageQuery,
    actor: &Actor,
    today: NaiveDate,
) -> Result<Vec<u8>, Rejection> {
    encode_within(model, q, actor, today, Limits::REPLY)
}

/// [`encode_progress_page`] within `limits`.
pub fn encode_within(
    model: &ProgressModel,
    q: &ProgressPageQuery,
    actor: &Actor,
    today: NaiveDate,
    limits: Limits,
) -> Result<Vec<u8>, Rejection> {
    let cycle = cycle_info(model, q.cycle)?;
    let org = readable_org(model, cycle, q.org, actor)?;
    let mut page = Page {
        model,
        cycle,
        today,
        empty: Counters::default(),
        out: Vec::with_capacity(64 * 1024),
        nodes: limits.nodes.saturating_sub(1),
        bytes: 0,
    };
    page.out.extend_from_slice(ACCEPTED);
    let size = page.node(org);
    page.bytes = limits.bytes.saturating_sub(size);
    let flag_at = page.open_children();
    page.fill(flag_at, org, q.depth.unwrap_or(1), q.span(), true);
    page.out.extend_from_slice(b"]}}");
    Ok(page.out)
}

/// One reply being written, and what is left of its [`Limits`].
struct Page<'m> {
    model: &'m ProgressModel,
    cycle: &'m CycleInfo,
    today: NaiveDate,
    /// The counters of an org nothing was registered under.
    empty: Counters,
    out: Vec<u8>,
    nodes: usize,
    bytes: usize,
}

impl Page<'_> {
    /// Writes `org`'s own fields (`{` up to its quota groups, no closing
    /// brace) and returns the length of the node alone, as it would be
    /// encoded without children.
    fn node(&mut self, org: &OrgNode) -> usize {
        let start = self.out.len();
        let cycle = self.cycle.opened.cycle;
        let c = self.model.counters(cycle, org.id).unwrap_or(&self.empty);
        let (deadline, complete, overdue) = status(self.model, self.cycle, org, c, self.today);
        let out = &mut self.out;
        out.extend_from_slice(br#"{"org":""#);
        let mut uuid = [0u8; 36];
        out.extend_from_slice(org.id.0.hyphenated().encode_lower(&mut uuid).as_bytes());
        out.extend_from_slice(br#"","code":"#);
        value(out, org.code.as_str());
        out.extend_from_slice(br#","name":"#);
        value(out, org.name.as_str());
        out.extend_from_slice(br#","tier":"#);
        value(out, org.tier.as_str());
        out.extend_from_slice(br#","deadline":"#);
        value(out, &deadline);
        out.extend_from_slice(br#","overdue":"#);
        boolean(out, overdue);
        out.extend_from_slice(br#","complete":"#);
        boolean(out, complete);
        out.extend_from_slice(br#","percent":"#);
        value(out, &percent(c.settled(), c.subjects()));
        totals(out, &Totals::of(c));
        reasons(out, &NotReviewedReasons::of(c));
        out.extend_from_slice(br#","grades":{"#);
        for (i, (grade, count)) in Grade::ALL.iter().zip(c.grades()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            value(out, grade);
            out.push(b':');
            number(out, count);
        }
        out.extend_from_slice(br#"},"quota_groups":["#);
        let subtree = c
            .groups()
            .map(|(g, t)| (g, t.excellent, t.good, t.max_excellent));
        groups(out, subtree);
        out.extend_from_slice(br#"],"authority_quota_groups":["#);
        let rule: QuotaRule = self.cycle.rule;
        let own = self
            .model
            .decided_by(cycle, org.id)
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.excellent > 0 || c.good > 0)
            .map(|(g, c)| (g.as_str(), c.excellent, c.good, rule.max_excellent(c.good)));
        groups(out, own);
        out.push(b']');
        self.out.len() - start + NO_CHILDREN.len()
    }

    /// Opens the children of the node just written; returns where its
    /// `children_truncated` flag goes, should they be cut.
    fn open_children(&mut self) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(CHILDREN);
        at
    }

    /// Writes `org`'s children (only those in `span`) to `depth`
    /// levels, while the budget lasts, into the node whose children were
    /// just opened; flags it at `flag_at` when some are left out. `asked`
    /// is set for the asked node, whose first child always comes.
    fn fill(&mut self, flag_at: usize, org: &OrgNode, depth: u32, span: Span<'_>, asked: bool) {
        if depth == 0 {
            return;
        }
        let mut first = true;
        let mut cut = false;
        let remaining = children(self.model, org)
            .into_iter()
            .filter(|c| span.holds(&c.code));
        for child in remaining {
            let forced = asked && first;
            if !forced && self.nodes == 0 {
                cut = true;
                break;
            }
            let before = self.out.len();
            if !first {
                self.out.push(b',');
            }
            // One more byte for the comma between siblings.
            let size = self.node(child) + 1;
            if !forced && size > self.bytes {
                self.out.truncate(before);
                cut = true;
                break;
            }
            self.nodes = self.nodes.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(size);
            let child_flag = self.open_children();
            self.fill(child_flag, child, depth - 1, Span::ALL, false);
            self.out.extend_from_slice(b"]}");
            first = false;
        }
        if cut {
            self.out.splice(flag_at..flag_at, TRUNCATED.iter().copied());
        }
    }
}

/// `v` as serde_json encodes it (strings escaped, dates and floats as
/// their `Serialize` gives them).
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Plain data always serialises into a vector.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A count, in decimal (as serde_json writes integers).
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is one digit.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `"totals"`, as [`Totals`] encodes.
fn totals(out: &mut Vec<u8>, t: &Totals) {
    let Totals {
        subjects,
        not_reviewed,
        open,
        submitted,
        reviewed,
        appraised,
        returned,
        decided,
        regraded,
        settled,
    } = *t;
    let fields: [(&[u8], u64); 10] = [
        (br#","totals":{"subjects":"#, subjects),
        (br#","not_reviewed":"#, not_reviewed),
        (br#","open":"#, open),
        (br#","submitted":"#, submitted),
        (br#","reviewed":"#, reviewed),
        (br#","appraised":"#, appraised),
        (br#","returned":"#, returned),
        (br#","decided":"#, decided),
        (br#","regraded":"#, regraded),
        (br#","settled":"#, settled),
    ];
    for (key, n) in fields {
        out.extend_from_slice(key);
        number(out, n);
    }
    out.push(b'}');
}

/// `"not_reviewed_reasons"`, as [`NotReviewedReasons`] encodes.
fn reasons(out: &mut Vec<u8>, r: &NotReviewedReasons) {
    let NotReviewedReasons {
        new_member,
        exempt,
        suspended,
    } = *r;
    out.extend_from_slice(br#","not_reviewed_reasons":{"new_member":"#);
    number(out, new_member);
    out.extend_from_slice(br#","exempt":"#);
    number(out, exempt);
    out.extend_from_slice(br#","suspended":"#);
    number(out, suspended);
    out.push(b'}');
}

/// Quota groups (name, excellent, good, allowed excellent), as a list of
/// [`QuotaGroup`]s encodes, without the brackets.
///
/// [`QuotaGroup`]: crate::queries::QuotaGroup
fn groups<'g>(out: &mut Vec<u8>, groups: impl Iterator<Item = (&'g str, u64, u64, u64)>) {
    for (i, (group, excellent, good, max_excellent)) in groups.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"group":"#);
        value(out, group);
        out.extend_from_slice(br#","excellent":"#);
        number(out, excellent);
        out.extend_from_slice(br#","good":"#);
        number(out, good);
        out.extend_from_slice(br#","max_excellent":"#);
        number(out, max_excellent);
        out.extend_from_slice(br#","over":"#);
        boolean(out, excellent > max_excellent);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use gradeflow_proto::events::{
        CycleOpened, Event, GradeDecided, OrgRegistered, RecordRef, SubjectRegistered,
        UnitCompleted,
    };
    use gradeflow_proto::{
        Category, CommandReply, CycleId, CycleKind, DecisionId, DossierId, DossierState, OrgId,
        QuotaSettings, Role, RulebookId, SubjectId, SubjectKind, SubjectStatus, Tier, Tiers,
    };
    use gradeflow_service::Model;

    use super::*;
    use crate::queries::{progress_within, ProgressQuery};

    /// A model folded from events, as the service folds its store.
    struct Fold {
        model: ProgressModel,
        position: i64,
    }

    impl Fold {
        fn feed<E: Event>(&mut self, event: &E) {
            self.position += 1;
            self.model
                .apply(&crate::model::tests::stored(self.position, event));
        }
    }

    fn central() -> Actor {
        Actor {
            sub: "central".into(),
            role: Role::System,
            org: OrgId(uuid::Uuid::nil()),
        }
    }

    fn today() -> NaiveDate {
        "2026-12-20".parse().unwrap()
    }

    /// A root, three provinces of three districts of two cells (and one
    /// `ward` without a deadline), members graded in some, odd names.
    fn country() -> (ProgressModel, CycleId) {
        let mut f = Fold {
            model: ProgressModel::default(),
            position: 0,
        };
        let cycle = CycleId::new();
        let org = |f: &mut Fold, code: &str, name: &str, tier: &str, parent: Option<OrgId>| {
            let id = OrgId::new();
            f.feed(&OrgRegistered {
                org: id,
                code: code.into(),
                name: name.into(),
                tier: Tier::new(tier),
                parent,
                province: None,
            });
            id
        };
        let root = org(&mut f, "TW", "Trung ương", "central", None);
        let deadlines: BTreeMap<Tier, NaiveDate> = [
            ("cell", "2026-12-15"),
            ("district", "2026-12-22"),
            ("central", "2027-02-01"),
        ]
        .into_iter()
        .map(|(t, d)| (Tier::new(t), d.parse().unwrap()))
        .collect();
        f.feed(&CycleOpened {
            cycle,
            year: 2026,
            kind: CycleKind::Annual,
            rulebook: RulebookId::Qd366_2025,
            tiers: Tiers::card(),
            deadlines,
            quota: QuotaSettings::default(),
            root,
        });
        let mut n = 0u64;
        let mut member = |f: &mut Fold, org: OrgId, deciding: OrgId, grade: Option<Grade>| {
            n += 1;
            let (dossier, subject) = (DossierId::new(), SubjectId::new());
            let group = if n % 7 == 0 {
                "riêng \"A\""
            } else {
                "individuals"
            };
            f.feed(&SubjectRegistered {
                subject,
                dossier,
                cycle,
                org,
                deciding_org: deciding,
                kind: SubjectKind::Individual,
                name: format!("Đảng viên {n}"),
                category: Category::Member2B,
                leader: n % 5 == 0,
                status: if n % 11 == 0 {
                    SubjectStatus::Exempt
                } else {
                    SubjectStatus::Active
                },
                quota_group: group.into(),
                state: if n % 11 == 0 {
                    DossierState::NotReviewed
                } else {
                    DossierState::Open
                },
            });
            if let Some(grade) = grade.filter(|_| n % 11 != 0) {
                f.feed(&GradeDecided {
                    decision: DecisionId::new(),
                    dossier,
                    subject,
                    cycle,
                    authority: deciding,
                    org,
                    grade,
                    quota_group: group.into(),
                    override_reason: None,
                    record: RecordRef {
                        seq: n,
                        hash: String::new(),
                        signature: String::new(),
                        key_id: "k".into(),
                        prev_hash: None,
                        at: None,
                    },
                    number: None,
                });
            }
        };
        for p in 1..=3 {
            let name = format!("Tỉnh \"{p}\"\n\t\u{1}");
            let province = org(&mut f, &format!("P{p}"), &name, "province", Some(root));
            for d in 1..=3 {
                let code = format!("P{p}.D{d}");
                let district = org(&mut f, &code, &code, "district", Some(province));
                for c in 1..=2 {
                    let code = format!("P{p}.D{d}.C{c}");
                    let cell = org(&mut f, &code, &"Chi bộ ".repeat(c), "cell", Some(district));
                    for m in 0..(p + d + c) {
                        let grade = [Grade::Excellent, Grade::Good, Grade::Completed];
                        let graded = (p + d) % 3 != 0;
                        member(&mut f, cell, district, graded.then(|| grade[m % 3]));
                    }
                    if (p, d, c) == (1, 1, 1) {
                        f.feed(&UnitCompleted {
                            cycle,
                            org: cell,
                            tier: Tier::new("cell"),
                            dossiers: 0,
                        });
                    }
                }
            }
            org(
                &mut f,
                &format!("P{p}.W1"),
                "Phường",
                "ward",
                Some(province),
            );
        }
        (f.model, cycle)
    }

    #[test]
    fn one_walk_gives_the_typed_answers_bytes_at_every_limit() {
        let (model, cycle) = country();
        let actor = central();
        let mut cut = 0;
        for depth in 0..=3 {
            let spans: [(Option<&str>, Option<&str>); 4] = [
                (None, None),
                (Some("P1"), None),
                (None, Some("P2")),
                (Some("P1"), Some("P3")),
            ];
            for (after, until) in spans {
                let q = ProgressPageQuery {
                    cycle,
                    org: None,
                    depth: Some(depth),
                    after: after.map(str::to_owned),
                    until: until.map(str::to_owned),
                };
                // Every seventh byte count up to the whole answer's in two
                // cases, so a budget off by a few bytes shows; fewer in the
                // others, and fewer node counts.
                let full = encode_within(&model, &q, &actor, today(), Limits::IN_PROCESS)
                    .unwrap()
                    .len();
                let fine = (depth, after, until) == (3, None, None)
                    || (depth, after, until) == (2, Some("P1"), Some("P3"));
                let step = if fine { 7 } else { 61 };
                let limits = (0..=full / step)
                    .map(|b| (usize::MAX, b * step))
                    .chain((1..=50).step_by(7).map(|n| (n, usize::MAX)))
                    .chain([(3, 5_000), (9, 20_000)]);
                for (nodes, bytes) in limits {
                    let limits = Limits { nodes, bytes };
                    let typed = progress_within(
                        &model,
                        &ProgressQuery {
                            cycle,
                            org: None,
                            depth: Some(depth),
                        },
                        q.span(),
                        &actor,
                        today(),
                        limits,
                    )
                    .unwrap();
                    cut += usize::from(typed.children_truncated);
                    let expected = CommandReply::encode_accepted(&[], &typed).unwrap();
                    let written = encode_within(&model, &q, &actor, today(), limits).unwrap();
                    assert!(
                        written == expected,
                        "depth {depth}, {after:?}..={until:?}, {limits:?}:\n{}\n{}",
                        String::from_utf8_lossy(&written),
                        String::from_utf8_lossy(&expected),
                    );
                }
            }
        }
        assert!(cut > 100, "the limits cut: {cut}");
        // The case has what the encoding must get right.
        let whole = encode_within(
            &model,
            &ProgressPageQuery {
                cycle,
                org: None,
                depth: Some(3),
                after: None,
                until: None,
            },
            &actor,
            today(),
            Limits::IN_PROCESS,
        )
        .unwrap();
        let text = String::from_utf8(whole).unwrap();
        for needle in [
            r#""deadline":null"#,
            r#""overdue":true"#,
            r#""complete":true"#,
            r#"\"1\"\n\t\u0001"#,
            r#""group":"riêng \"A\"""#,
            r#""authority_quota_groups":[{"#,
            r#""over":true"#,
            r#""exempt":1"#,
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    #[test]
    fn a_refused_query_is_refused_as_the_typed_one() {
        let (model, cycle) = country();
        let q = ProgressPageQuery {
            cycle: CycleId::new(),
            org: None,
            depth: None,
            after: None,
            until: None,
        };
        let refused = encode_progress_page(&model, &q, &central(), today()).unwrap_err();
        assert_eq!(refused.code, "unknown_cycle");
        let q = ProgressPageQuery {
            cycle,
            org: Some(OrgId::new()),
            ..q
        };
        let refused = encode_progress_page(&model, &q, &central(), today()).unwrap_err();
        assert_eq!(refused.code, "unknown_org");
    }
}
