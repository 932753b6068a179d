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

use std::sync::Arc;

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

/// How [`Counters`] keeps a [`SegmentTally`]: the same counts in 32 bits
/// (a whole country has fewer than 2³² subjects), so the counters of the
/// tens of thousands of units take half the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Tally {
    subjects: u32,
    not_reviewed: u32,
    graded: u32,
    grades: [u32; 4],
}

impl Tally {
    fn widen(self) -> SegmentTally {
        SegmentTally {
            subjects: self.subjects.into(),
            not_reviewed: self.not_reviewed.into(),
            graded: self.graded.into(),
            grades: widen(self.grades),
        }
    }
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

/// [`shift`] for a 32-bit count; a delta is ±1 or a whole subtree's count,
/// which fits.
fn shift32(slot: &mut u32, delta: i64) {
    let delta = i32::try_from(delta).unwrap_or(if delta < 0 { i32::MIN } else { i32::MAX });
    *slot = slot.saturating_add_signed(delta);
}

/// The aggregated counts of one (cycle, org) over its whole subtree.
///
/// Progress keeps one per unit of every cycle, so it is kept small: counts
/// in 32 bits, and the quota groups in short sorted vectors that share the
/// model's interned group names, rather than maps (a unit has one or two
/// groups and one authority; only the upper tiers have many).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Dossiers per state ([`DossierState::ALL`] order).
    states: [u32; 8],
    /// Not-reviewed dossiers per reason ([`REASONS`] order).
    reasons: [u32; 3],
    /// Graded dossiers per grade ([`Grade::ALL`] order).
    grades: [u32; 4],
    /// Per segment ([`Segment::ALL`] order).
    segments: [Tally; 6],
    /// Per quota group name, summed over authorities; sorted by name,
    /// only groups with a count.
    groups: Vec<(Arc<str>, QuotaTally)>,
    /// Per (authority, group): the excellent and good of that authority's
    /// group that lie in this subtree (what `groups` is summed from);
    /// sorted, only pairs with a count.
    by_authority: Vec<(OrgId, Arc<str>, GroupCounts)>,
}

impl Counters {
    /// Dossiers registered.
    pub fn subjects(&self) -> u64 {
        self.states.iter().map(|n| u64::from(*n)).sum()
    }

    /// Dossiers in `state`.
    pub fn state(&self, state: DossierState) -> u64 {
        self.states[state_index(state)].into()
    }

    /// Not-reviewed dossiers per reason ([`REASONS`] order).
    pub fn reasons(&self) -> [u64; 3] {
        widen(self.reasons)
    }

    /// Graded dossiers per grade ([`Grade::ALL`] order).
    pub fn grades(&self) -> [u64; 4] {
        widen(self.grades)
    }

    /// The counts per segment ([`Segment::ALL`] order).
    pub fn segments(&self) -> [SegmentTally; 6] {
        self.segments.map(Tally::widen)
    }

    /// The quota groups with a count, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, QuotaTally)> + '_ {
        self.groups.iter().map(|(g, t)| (&**g, *t))
    }

    /// One quota group's counts, if it has any.
    pub fn group(&self, name: &str) -> Option<QuotaTally> {
        let i = self
            .groups
            .binary_search_by(|(g, _)| (**g).cmp(name))
            .ok()?;
        Some(self.groups[i].1)
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
        shift32(&mut self.states[state_index(c.state)], sign);
        let not_reviewed = c.state == DossierState::NotReviewed;
        if not_reviewed {
            if let Some(i) = reason_index(c.status) {
                shift32(&mut self.reasons[i], sign);
            }
        }
        if let Some(g) = c.grade {
            shift32(&mut self.grades[grade_index(g)], sign);
        }
        for seg in Segment::ALL {
            if !c.segments[seg.index()] {
                continue;
            }
            let t = &mut self.segments[seg.index()];
            shift32(&mut t.subjects, sign);
            if not_reviewed {
                shift32(&mut t.not_reviewed, sign);
            }
            if let Some(g) = c.grade {
                shift32(&mut t.graded, sign);
                shift32(&mut t.grades[grade_index(g)], sign);
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
            shift32(a, sign * i64::from(b));
        }
        for (a, b) in self.reasons.iter_mut().zip(other.reasons) {
            shift32(a, sign * i64::from(b));
        }
        for (a, b) in self.grades.iter_mut().zip(other.grades) {
            shift32(a, sign * i64::from(b));
        }
        for (a, b) in self.segments.iter_mut().zip(other.segments) {
            shift32(&mut a.subjects, sign * i64::from(b.subjects));
            shift32(&mut a.not_reviewed, sign * i64::from(b.not_reviewed));
            shift32(&mut a.graded, sign * i64::from(b.graded));
            for (x, y) in a.grades.iter_mut().zip(b.grades) {
                shift32(x, sign * i64::from(y));
            }
        }
        for (authority, group, counts) in &other.by_authority {
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
    fn shift_group(
        &mut self,
        authority: OrgId,
        group: &Arc<str>,
        delta: GroupDelta,
        rule: QuotaRule,
    ) {
        let at = self
            .by_authority
            .binary_search_by(|(a, g, _)| (*a, &**g).cmp(&(authority, &**group)));
        let i = at.unwrap_or_else(|i| {
            insert_tight(
                &mut self.by_authority,
                i,
                (authority, Arc::clone(group), GroupCounts::default()),
            );
            i
        });
        let entry = &mut self.by_authority[i].2;
        let before = rule.max_excellent(entry.good);
        shift(&mut entry.excellent, delta.excellent);
        shift(&mut entry.good, delta.good);
        let after = rule.max_excellent(entry.good);
        if entry.excellent == 0 && entry.good == 0 {
            self.by_authority.remove(i);
        }
        let at = self.groups.binary_search_by(|(g, _)| g.cmp(group));
        let i = at.unwrap_or_else(|i| {
            insert_tight(
                &mut self.groups,
                i,
                (Arc::clone(group), QuotaTally::default()),
            );
            i
        });
        let tally = &mut self.groups[i].1;
        shift(&mut tally.excellent, delta.excellent);
        shift(&mut tally.good, delta.good);
        shift(&mut tally.max_excellent, signed(after) - signed(before));
        if *tally == QuotaTally::default() {
            self.groups.remove(i);
        }
    }
}

/// Inserts at `i`, growing the vector by one slot only: these vectors are
/// kept per unit and rarely grow, so room for the next three entries would
/// be wasted.
fn insert_tight<T>(v: &mut Vec<T>, i: usize, value: T) {
    v.reserve_exact(1);
    v.insert(i, value);
}

/// 32-bit counts as the 64-bit counts the queries use.
fn widen<const N: usize>(counts: [u32; N]) -> [u64; N] {
    counts.map(u64::from)
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
        let g = c.group("individuals").unwrap();
        assert_eq!((g.excellent, g.good, g.max_excellent), (1, 11, 1));
        // One more good at authority 2 lifts its floor to 1.
        c.apply(&graded(2, Grade::Good), 1, rule());
        assert_eq!(c.group("individuals").unwrap().max_excellent, 2);
        assert_eq!(c.segments()[Segment::Form2B.index()].graded, 13);
    }

    #[test]
    fn groups_are_listed_by_name_and_leave_when_their_last_grade_goes() {
        let mut c = Counters::default();
        let collective = |grade| Contribution {
            group: "collectives".into(),
            ..graded(3, grade)
        };
        c.apply(&graded(2, Grade::Good), 1, rule());
        c.apply(&collective(Grade::Excellent), 1, rule());
        c.apply(&graded(1, Grade::Excellent), 1, rule());
        let names: Vec<&str> = c.groups().map(|(g, _)| g).collect();
        assert_eq!(names, ["collectives", "individuals"]);
        assert_eq!(c.group("individuals").unwrap().good, 1);
        assert_eq!(c.group("individuals").unwrap().excellent, 1);
        c.apply(&collective(Grade::Excellent), -1, rule());
        assert_eq!(c.group("collectives"), None);
        c.apply(&graded(2, Grade::Good), -1, rule());
        c.apply(&graded(1, Grade::Excellent), -1, rule());
        assert_eq!(c.groups().count(), 0);
        assert_eq!(c, Counters::default());
    }

    #[test]
    fn a_count_never_goes_below_zero() {
        let mut c = Counters::default();
        c.apply(&graded(1, Grade::Good), -1, rule());
        assert_eq!(c.subjects(), 0);
        assert_eq!(c.grades(), [0; 4]);
        let mut big = Counters::default();
        for _ in 0..3 {
            big.apply(&graded(1, Grade::Good), 1, rule());
        }
        c.merge(&big, -1, rule());
        assert_eq!(c.state(DossierState::Decided), 0);
        assert_eq!(c.segments()[Segment::Individuals.index()].subjects, 0);
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
        assert_eq!(a.group("individuals").unwrap().good, 6);
        assert_eq!(a.group("individuals").unwrap().max_excellent, 1);
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
        assert_eq!(c.reasons(), [0, 1, 0]);
        assert_eq!(c.settled(), 1);
        assert_eq!(c.grades(), [0; 4]);
        assert_eq!(c.groups().count(), 0);
        c.apply(&nr, -1, rule());
        assert!(c.is_empty());
    }
}
