//! The per-org aggregated counters of the progress read model: for one
//! (cycle, org), the counts of every dossier in the org's whole subtree —
//! by state, not-reviewed reason, grade, subject segment and quota group.
//!
//! They are kept *incrementally*: when a dossier changes, the model takes
//! its [`Contribution`] before and after the change and shifts the
//! difference along the ancestor path of the dossier's org, so a
//! whole-country progress query reads one `Counters` per node it returns
//! instead of walking millions of dossiers. Everything here is additive
//! (a move or merge of a subtree subtracts its counters from the old
//! ancestors and adds them to the new), including the quota maxima, which
//! are kept as a sum over deciding authorities of `rounding(ratio × good)`.

use std::collections::{BTreeMap, HashMap};

use gradeflow_approval_domain::{max_excellent, GroupCounts};
use gradeflow_proto::{Category, DossierState, Grade, OrgId, Rounding, SubjectKind, SubjectStatus};
use serde::{Deserialize, Serialize};

/// A slice of the subjects the reports split counts by (`DOMAIN.md`
/// § What goes up): collectives and individuals, the individual forms
/// 2A/2B/2C, and leaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Segment {
    /// Collectives (form 01).
    #[serde(rename = "collectives")]
    Collectives,
    /// Individuals (forms 2A, 2B, 2C).
    #[serde(rename = "individuals")]
    Individuals,
    /// Individuals on form 2A (leaders and managers).
    #[serde(rename = "2A")]
    Form2A,
    /// Individuals on form 2B (members who are not leaders).
    #[serde(rename = "2B")]
    Form2B,
    /// Individuals on form 2C (members outside the political system).
    #[serde(rename = "2C")]
    Form2C,
    /// Subjects with the leader flag.
    #[serde(rename = "leaders")]
    Leaders,
}

impl Segment {
    /// Every segment, in report order.
    pub const ALL: [Segment; 6] = [
        Segment::Collectives,
        Segment::Individuals,
        Segment::Form2A,
        Segment::Form2B,
        Segment::Form2C,
        Segment::Leaders,
    ];

    /// The wire code (`collectives`, `individuals`, `2A`, `2B`, `2C`,
    /// `leaders`).
    pub fn code(self) -> &'static str {
        match self {
            Segment::Collectives => "collectives",
            Segment::Individuals => "individuals",
            Segment::Form2A => "2A",
            Segment::Form2B => "2B",
            Segment::Form2C => "2C",
            Segment::Leaders => "leaders",
        }
    }

    /// The Vietnamese heading used in reports.
    pub fn label_vi(self) -> &'static str {
        match self {
            Segment::Collectives => "Tập thể",
            Segment::Individuals => "Cá nhân",
            Segment::Form2A => "Cá nhân mẫu 2A (lãnh đạo, quản lý)",
            Segment::Form2B => "Cá nhân mẫu 2B",
            Segment::Form2C => "Cá nhân mẫu 2C",
            Segment::Leaders => "Cán bộ lãnh đạo, quản lý",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The segments a subject belongs to.
    pub fn of(kind: SubjectKind, category: Category, leader: bool) -> [bool; 6] {
        let mut mask = [false; 6];
        match kind {
            SubjectKind::Collective => mask[Segment::Collectives.index()] = true,
            SubjectKind::Individual => mask[Segment::Individuals.index()] = true,
        }
        match category {
            Category::Leader2A => mask[Segment::Form2A.index()] = true,
            Category::Member2B => mask[Segment::Form2B.index()] = true,
            Category::Outside2C => mask[Segment::Form2C.index()] = true,
            Category::Collective01 => {}
        }
        if leader {
            mask[Segment::Leaders.index()] = true;
        }
        mask
    }
}

/// The counts of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentTally {
    /// Subjects registered.
    pub subjects: u64,
    /// Of which not reviewed.
    pub not_reviewed: u64,
    /// Of which graded (decided or re-graded).
    pub graded: u64,
    /// Graded, per grade ([`Grade::ALL`] order).
    pub grades: [u64; 4],
}

/// Excellent, good and the allowed excellent of one quota group, summed
/// over the deciding authorities whose dossiers lie in the subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaTally {
    /// Graded excellent.
    pub excellent: u64,
    /// Graded good.
    pub good: u64,
    /// Σ over authorities of `rounding(ratio × good)`.
    pub max_excellent: u64,
}

/// How a cycle turns good grades into allowed excellent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRule {
    /// The ratio in basis points (0.2 → 2000).
    pub ratio_bp: u64,
    /// The rounding.
    pub rounding: Rounding,
}

impl QuotaRule {
    /// `rounding(ratio × good)`.
    pub fn max_excellent(self, good: u64) -> u64 {
        max_excellent(self.ratio_bp, good, self.rounding)
    }
}

/// What one dossier adds to the counters of every org on its ancestor path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// Its state.
    pub state: DossierState,
    /// Its subject's status (the not-reviewed reason).
    pub status: SubjectStatus,
    /// The grade in force, counted only once decided or re-graded.
    pub grade: Option<Grade>,
    /// The segments its subject belongs to.
    pub segments: [bool; 6],
    /// The deciding authority.
    pub authority: OrgId,
    /// Its quota group.
    pub group: std::sync::Arc<str>,
}

/// Index of a state in [`DossierState::ALL`].
pub fn state_index(state: DossierState) -> usize {
    DossierState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default()
}

/// Index of a grade in [`Grade::ALL`].
pub fn grade_index(grade: Grade) -> usize {
    Grade::ALL
        .iter()
        .position(|g| *g == grade)
        .unwrap_or_default()
}

/// The not-reviewed reasons, in counter order.
pub const REASONS: [SubjectStatus; 3] = [
    SubjectStatus::NewMember,
    SubjectStatus::Exempt,
    SubjectStatus::Suspended,
];

fn reason_index(status: SubjectStatus) -> Option<usize> {
    REASONS.iter().position(|s| *s == status)
}

fn shift(slot: &mut u64, delta: i64) {
    *slot = slot.saturating_add_signed(delta);
}

/// The aggregated counts of one (cycle, org) over its whole subtree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Dossiers per state ([`DossierState::ALL`] order).
    pub states: [u64; 8],
    /// Not-reviewed dossiers per reason ([`REASONS`] order).
    pub reasons: [u64; 3],
    /// Graded dossiers per grade ([`Grade::ALL`] order).
    pub grades: [u64; 4],
    /// Per segment ([`Segment::ALL`] order).
    pub segments: [SegmentTally; 6],
    /// Per quota group name, summed over authorities.
    pub groups: BTreeMap<String, QuotaTally>,
    /// Per (authority, group): the excellent and good of that authority's
    /// group that lie in this subtree (what `groups` is summed from).
    pub by_authority: HashMap<(OrgId, String), GroupCounts>,
}

impl Counters {
    /// Dossiers registered.
    pub fn subjects(&self) -> u64 {
        self.states.iter().sum()
    }

    /// Dossiers in `state`.
    pub fn state(&self, state: DossierState) -> u64 {
        self.states[state_index(state)]
    }

    /// Dossiers settled: decided, re-graded or not reviewed.
    pub fn settled(&self) -> u64 {
        DossierState::ALL
            .iter()
            .filter(|s| s.is_settled())
            .map(|s| self.state(*s))
            .sum()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.subjects() == 0
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) one dossier.
    pub fn apply(&mut self, c: &Contribution, sign: i64, rule: QuotaRule) {
        shift(&mut self.states[state_index(c.state)], sign);
        let not_reviewed = c.state == DossierState::NotReviewed;
        if not_reviewed {
            if let Some(i) = reason_index(c.status) {
                shift(&mut self.reasons[i], sign);
            }
        }
        if let Some(g) = c.grade {
            shift(&mut self.grades[grade_index(g)], sign);
        }
        for seg in Segment::ALL {
            if !c.segments[seg.index()] {
                continue;
            }
            let t = &mut self.segments[seg.index()];
            shift(&mut t.subjects, sign);
            if not_reviewed {
                shift(&mut t.not_reviewed, sign);
            }
            if let Some(g) = c.grade {
                shift(&mut t.graded, sign);
                shift(&mut t.grades[grade_index(g)], sign);
            }
        }
        let delta = match c.grade {
            Some(Grade::Excellent) => GroupDelta {
                excellent: sign,
                good: 0,
            },
            Some(Grade::Good) => GroupDelta {
                excellent: 0,
                good: sign,
            },
            _ => return,
        };
        self.shift_group(c.authority, &c.group, delta, rule);
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) a whole subtree's
    /// counters: a moved or merged org.
    pub fn merge(&mut self, other: &Counters, sign: i64, rule: QuotaRule) {
        for (a, b) in self.states.iter_mut().zip(other.states) {
            shift(a, sign * signed(b));
        }
        for (a, b) in self.reasons.iter_mut().zip(other.reasons) {
            shift(a, sign * signed(b));
        }
        for (a, b) in self.grades.iter_mut().zip(other.grades) {
            shift(a, sign * signed(b));
        }
        for (a, b) in self.segments.iter_mut().zip(other.segments) {
            shift(&mut a.subjects, sign * signed(b.subjects));
            shift(&mut a.not_reviewed, sign * signed(b.not_reviewed));
            shift(&mut a.graded, sign * signed(b.graded));
            for (x, y) in a.grades.iter_mut().zip(b.grades) {
                shift(x, sign * signed(y));
            }
        }
        for ((authority, group), counts) in &other.by_authority {
            let delta = GroupDelta {
                excellent: sign * signed(counts.excellent),
                good: sign * signed(counts.good),
            };
            self.shift_group(*authority, group, delta, rule);
        }
    }

    /// Moves one authority's group counts, keeping the group's summed
    /// maximum in step: the authority's `rounding(ratio × good)` before and
    /// after.
    fn shift_group(&mut self, authority: OrgId, group: &str, delta: GroupDelta, rule: QuotaRule) {
        let key = (authority, group.to_owned());
        let entry = self.by_authority.entry(key.clone()).or_default();
        let before = rule.max_excellent(entry.good);
        shift(&mut entry.excellent, delta.excellent);
        shift(&mut entry.good, delta.good);
        let after = rule.max_excellent(entry.good);
        let empty = entry.excellent == 0 && entry.good == 0;
        if empty {
            self.by_authority.remove(&key);
        }
        let tally = self.groups.entry(group.to_owned()).or_default();
        shift(&mut tally.excellent, delta.excellent);
        shift(&mut tally.good, delta.good);
        shift(&mut tally.max_excellent, signed(after) - signed(before));
        if *tally == QuotaTally::default() {
            self.groups.remove(group);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct GroupDelta {
    excellent: i64,
    good: i64,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> QuotaRule {
        QuotaRule {
            ratio_bp: 2_000,
            rounding: Rounding::Floor,
        }
    }

    fn graded(authority: u128, grade: Grade) -> Contribution {
        Contribution {
            state: DossierState::Decided,
            status: SubjectStatus::Active,
            grade: Some(grade),
            segments: Segment::of(SubjectKind::Individual, Category::Member2B, false),
            authority: OrgId(uuid::Uuid::from_u128(authority)),
            group: "individuals".into(),
        }
    }

    #[test]
    fn the_group_maximum_is_the_sum_of_each_authoritys_floor() {
        let mut c = Counters::default();
        // Authority 1: 7 good → floor(1.4) = 1; authority 2: 4 good → 0.
        for _ in 0..7 {
            c.apply(&graded(1, Grade::Good), 1, rule());
        }
        for _ in 0..4 {
            c.apply(&graded(2, Grade::Good), 1, rule());
        }
        c.apply(&graded(2, Grade::Excellent), 1, rule());
        let g = c.groups["individuals"];
        assert_eq!((g.excellent, g.good, g.max_excellent), (1, 11, 1));
        // One more good at authority 2 lifts its floor to 1.
        c.apply(&graded(2, Grade::Good), 1, rule());
        assert_eq!(c.groups["individuals"].max_excellent, 2);
        assert_eq!(c.segments[Segment::Form2B.index()].graded, 13);
    }

    #[test]
    fn merging_then_unmerging_a_subtree_leaves_the_counters_as_they_were() {
        let mut a = Counters::default();
        a.apply(&graded(1, Grade::Good), 1, rule());
        let mut b = Counters::default();
        for _ in 0..5 {
            b.apply(&graded(1, Grade::Good), 1, rule());
        }
        let before = a.clone();
        a.merge(&b, 1, rule());
        assert_eq!(a.groups["individuals"].good, 6);
        assert_eq!(a.groups["individuals"].max_excellent, 1);
        a.merge(&b, -1, rule());
        assert_eq!(a, before);
    }

    #[test]
    fn a_not_reviewed_dossier_counts_with_its_reason_and_no_grade() {
        let mut c = Counters::default();
        let nr = Contribution {
            state: DossierState::NotReviewed,
            status: SubjectStatus::Exempt,
            grade: None,
            ..graded(1, Grade::Good)
        };
        c.apply(&nr, 1, rule());
        assert_eq!(c.reasons, [0, 1, 0]);
        assert_eq!(c.settled(), 1);
        assert_eq!(c.grades, [0; 4]);
        assert!(c.groups.is_empty());
        c.apply(&nr, -1, rule());
        assert!(c.is_empty());
    }
}
