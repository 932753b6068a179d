//! The quota (rule 6, 366-QĐ/TW Art. 11 §1): per quota group,
//! `excellent ≤ rounding(ratio × good)`, ratio 0.20, raised by the authority
//! to at most 0.25 with a recorded reason. The base is the number graded
//! good, not the headcount.
//!
//! Ratios are turned into whole basis points before multiplying, so the
//! product is exact integer arithmetic: `0.2 × 10` is 2, never
//! 1.9999999999999998 floored to 1.

use gradeflow_proto::Rounding;

/// Basis points in one: a ratio of 0.2 is 2000 basis points.
pub const BASIS: u64 = 10_000;

/// The highest exception ratio the regulation allows (0.25), in basis points.
pub const MAX_EXCEPTION_BP: u64 = 2_500;

/// A ratio in whole basis points (0.2 → 2000, 0.25 → 2500). Ratios are
/// validated to 0..1 before they get here; anything else saturates.
pub fn ratio_bp(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    // In range by validation; `as` saturates otherwise.
    (ratio * BASIS as f64).round() as u64
}

/// The most excellent grades `good` good grades allow at `ratio_bp` basis
/// points, rounded as configured: `rounding(ratio × good)`.
pub fn max_excellent(ratio_bp: u64, good: u64, rounding: Rounding) -> u64 {
    let product = u128::from(ratio_bp) * u128::from(good);
    let basis = u128::from(BASIS);
    let max = match rounding {
        Rounding::Floor => product / basis,
        Rounding::Round => (product + basis / 2) / basis,
        Rounding::Ceil => product.div_ceil(basis),
    };
    // ratio_bp ≤ BASIS for validated ratios, so max ≤ good fits in u64.
    u64::try_from(max).unwrap_or(u64::MAX)
}

/// Whether `excellent` excellent grades fit the quota of `good` good grades.
pub fn within_quota(excellent: u64, good: u64, ratio_bp: u64, rounding: Rounding) -> bool {
    excellent <= max_excellent(ratio_bp, good, rounding)
}
