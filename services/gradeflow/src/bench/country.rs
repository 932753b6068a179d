//! The synthetic country of `gradeflow bench cycle`: its shape for a
//! requested number of dossiers, and the grade planned for every dossier.
//! Pure and deterministic: the same size and seed give the same country, so
//! two runs compare. Nothing is held per dossier: the bench derives each
//! unit's codes, names, member counts and grades from its indices when its
//! board gets to it.
//!
//! Shape: about 20 members per cell (5.6 M members in ~270,000 cells), about
//! 40 cells per district (`card`) or 80 per commune (`vn2025`), 2 to 34
//! provinces. Every unit has its collective dossier, the root's too; the
//! members fill what is left of the requested size.
//!
//! Grades are planned per decision batch (at most [`BATCH`] dossiers of one
//! authority): 1 in 25 `completed`, then 1 in 6 of the rest `excellent`, the
//! others `good`, at seeded positions. Then `excellent ≤ floor(0.2 × good)`
//! holds in every batch, hence in every quota group's running total.

use gradeflow_proto::Grade;

use crate::seed::{person, Naming, Preset};

/// The most dossiers one decision batch carries.
pub const BATCH: usize = 50;
/// Members per cell aimed at.
const MEMBERS_PER_CELL: usize = 20;

/// The size of every level of the synthetic country.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Provinces under the root.
    pub provinces: usize,
    /// Second-tier units (districts or communes) per province.
    pub seconds: usize,
    /// Cells per second-tier unit.
    pub cells: usize,
    /// Members in the whole country (spread evenly over the cells).
    pub members: usize,
}

impl Shape {
    /// The country of `dossiers` dossiers in all (members and collectives);
    /// `None` when that is too few for one member per cell.
    pub fn of(preset: Preset, dossiers: usize) -> Option<Shape> {
        let per_second = match preset {
            Preset::Card => 40,
            Preset::Vn2025 => 80,
        } * (MEMBERS_PER_CELL + 1);
        let provinces = (dossiers / 30_000).clamp(2, 34);
        let seconds = dossiers.div_ceil(provinces * per_second).max(1);
        let cells = dossiers
            .div_ceil(provinces * seconds * (MEMBERS_PER_CELL + 1))
            .max(1);
        let mut shape = Shape {
            provinces,
            seconds,
            cells,
            members: 0,
        };
        let members = dossiers.checked_sub(shape.collectives())?;
        if members < shape.cell_count() {
            return None;
        }
        shape.members = members;
        Some(shape)
    }

    /// Second-tier units in the country.
    pub fn second_count(&self) -> usize {
        self.provinces * self.seconds
    }

    /// Cells in the country.
    pub fn cell_count(&self) -> usize {
        self.second_count() * self.cells
    }

    /// Collective dossiers: every unit's, the root's included.
    pub fn collectives(&self) -> usize {
        1 + self.provinces + self.second_count() + self.cell_count()
    }

    /// Every dossier.
    pub fn dossiers(&self) -> usize {
        self.members + self.collectives()
    }

    /// Members of the cell with the country-wide index `cell`.
    pub fn members_of(&self, cell: usize) -> usize {
        super::appends::share(self.members, self.cell_count(), cell)
    }

    /// The country-wide index of the first member of `cell`.
    pub fn first_member_of(&self, cell: usize) -> usize {
        let parts = self.cell_count().max(1);
        let (base, extra) = (self.members / parts, self.members % parts);
        cell * base + cell.min(extra)
    }

    /// The codes and names of the country's orgs.
    pub fn naming(&self, preset: Preset) -> Naming {
        Naming::new(preset, self.provinces, self.seconds, self.cells)
    }
}

/// A 64-bit mix (splitmix64's finaliser): the seeded choices.
pub fn mix(seed: u64, value: u64) -> u64 {
    let mut z = seed ^ value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The grade planned for the `position`-th of the `len` dossiers of one
/// decision batch; `salt` names the batch (seeded), so the excellent and
/// completed ones sit at different positions in each.
pub fn planned(len: usize, position: usize, salt: u64) -> Grade {
    let completed = len / 25;
    let excellent = (len - completed) / 6;
    let slot = (position + (salt % len.max(1) as u64) as usize) % len.max(1);
    if slot < completed {
        Grade::Completed
    } else if slot < completed + excellent {
        Grade::Excellent
    } else {
        Grade::Good
    }
}

/// The grade planned for the `index`-th of `total` dossiers that one
/// authority decides in batches of [`BATCH`], in that order; `salt` names
/// the authority's list.
pub fn planned_in_list(total: usize, index: usize, seed: u64, salt: u64) -> Grade {
    let batch = index / BATCH;
    let len = BATCH.min(total - batch * BATCH);
    planned(len, index % BATCH, mix(seed, salt ^ ((batch as u64) << 40)))
}

/// The salt of a list of dossiers an authority decides: what is decided
/// (`0` members, `1` collectives) and the authority's unit number.
pub fn list_salt(what: u64, unit: usize) -> u64 {
    (what << 56) ^ unit as u64
}

/// The name of the `n`-th member of the country under `seed`.
pub fn member_name(seed: u64, n: usize) -> String {
    person((mix(seed, n as u64) % 1_000_003) as usize)
}

/// Self-review score (general, tasks) matching a planned grade's band.
pub fn score(grade: Grade) -> (f64, f64) {
    match grade {
        Grade::Excellent => (28.0, 65.0),
        Grade::Good => (26.0, 56.0),
        Grade::Completed => (22.0, 40.0),
        Grade::NotCompleted => (15.0, 25.0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shape_adds_up_to_the_requested_size() {
        for (preset, n) in [
            (Preset::Card, 60),
            (Preset::Card, 10_000),
            (Preset::Vn2025, 100_000),
            (Preset::Card, 1_000_000),
        ] {
            let s = Shape::of(preset, n).unwrap();
            assert_eq!(s.dossiers(), n, "{s:?}");
            let per_cell = s.members as f64 / s.cell_count() as f64;
            assert!((1.0..=25.0).contains(&per_cell), "{s:?}");
            assert_eq!(
                (0..s.cell_count()).map(|c| s.members_of(c)).sum::<usize>(),
                s.members
            );
            let last = s.cell_count() - 1;
            assert_eq!(s.first_member_of(last) + s.members_of(last), s.members);
        }
        let big = Shape::of(Preset::Card, 1_000_000).unwrap();
        assert_eq!(big.provinces, 33);
        assert!((19..=21).contains(&(big.members / big.cell_count())));
        assert!(Shape::of(Preset::Card, 5).is_none());
    }

    #[test]
    fn every_batch_keeps_the_quota() {
        for len in 1..=BATCH {
            for salt in 0..60 {
                let grades: Vec<Grade> = (0..len).map(|p| planned(len, p, salt)).collect();
                let e = grades.iter().filter(|g| **g == Grade::Excellent).count();
                let g = grades.iter().filter(|g| **g == Grade::Good).count();
                assert!(5 * e <= g, "{len} {salt}: {e} excellent, {g} good");
            }
        }
        let full: Vec<Grade> = (0..50).map(|p| planned(50, p, 7)).collect();
        assert_eq!(full.iter().filter(|g| **g == Grade::Excellent).count(), 8);
        assert_eq!(full.iter().filter(|g| **g == Grade::Completed).count(), 2);
        // Deterministic, and the seed moves the positions.
        assert_eq!(
            planned_in_list(120, 55, 1, 3),
            planned_in_list(120, 55, 1, 3)
        );
        let a: Vec<Grade> = (0..50).map(|i| planned_in_list(50, i, 1, 0)).collect();
        let b: Vec<Grade> = (0..50).map(|i| planned_in_list(50, i, 2, 0)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn names_and_scores_follow_the_seed_and_the_grade() {
        assert_eq!(member_name(1, 5), member_name(1, 5));
        let (g, t) = score(Grade::Excellent);
        assert!(g + t >= 90.0);
        let (g, t) = score(Grade::Good);
        assert!((70.0..90.0).contains(&(g + t)));
        let (g, t) = score(Grade::Completed);
        assert!((50.0..70.0).contains(&(g + t)));
    }
}
