//! The four grades of the regulation (mức xếp loại), ordered
//! `not_completed < completed < good < excellent`, with their official
//! Vietnamese and English labels.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A quality grade. The derived order is the regulation's order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Không hoàn thành nhiệm vụ (KHTNV).
    NotCompleted,
    /// Hoàn thành nhiệm vụ (HTNV).
    Completed,
    /// Hoàn thành tốt nhiệm vụ (HTTNV).
    Good,
    /// Hoàn thành xuất sắc nhiệm vụ (HTXSNV).
    Excellent,
}

impl Grade {
    /// Every grade, lowest first.
    pub const ALL: [Grade; 4] = [
        Grade::NotCompleted,
        Grade::Completed,
        Grade::Good,
        Grade::Excellent,
    ];

    /// The wire code (`excellent`, `good`, `completed`, `not_completed`).
    pub fn code(self) -> &'static str {
        match self {
            Grade::NotCompleted => "not_completed",
            Grade::Completed => "completed",
            Grade::Good => "good",
            Grade::Excellent => "excellent",
        }
    }

    /// The official Vietnamese label.
    pub fn label_vi(self) -> &'static str {
        match self {
            Grade::NotCompleted => "Không hoàn thành nhiệm vụ",
            Grade::Completed => "Hoàn thành nhiệm vụ",
            Grade::Good => "Hoàn thành tốt nhiệm vụ",
            Grade::Excellent => "Hoàn thành xuất sắc nhiệm vụ",
        }
    }

    /// The official Vietnamese abbreviation (HTXSNV, HTTNV, HTNV, KHTNV).
    pub fn abbrev_vi(self) -> &'static str {
        match self {
            Grade::NotCompleted => "KHTNV",
            Grade::Completed => "HTNV",
            Grade::Good => "HTTNV",
            Grade::Excellent => "HTXSNV",
        }
    }

    /// The English label.
    pub fn label_en(self) -> &'static str {
        match self {
            Grade::NotCompleted => "Not completed",
            Grade::Completed => "Completed",
            Grade::Good => "Good",
            Grade::Excellent => "Excellent",
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: &str) -> Option<Grade> {
        Grade::ALL.into_iter().find(|g| g.code() == code)
    }
}

impl std::fmt::Display for Grade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_are_ordered_as_the_regulation_orders_them() {
        assert!(Grade::NotCompleted < Grade::Completed);
        assert!(Grade::Completed < Grade::Good);
        assert!(Grade::Good < Grade::Excellent);
    }

    #[test]
    fn codes_round_trip_through_serde_and_from_code() {
        for g in Grade::ALL {
            let json = serde_json::to_string(&g).unwrap();
            assert_eq!(json, format!("\"{}\"", g.code()));
            assert_eq!(Grade::from_code(g.code()), Some(g));
        }
        assert_eq!(Grade::from_code("outstanding"), None);
    }
}
