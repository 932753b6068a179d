//! Tiers are data, not code: each deployment and each cycle carries an ordered
//! list of tier names, lowest first (`cell → district → province → central`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of one tier, e.g. `cell` or `province`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Tier(pub String);

impl Tier {
    /// A tier from its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The tier name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ordered list of tiers, lowest (cells) first and the root (central) last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Tiers(pub Vec<Tier>);

/// A tier list that cannot serve as a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TiersError {
    /// Fewer than two tiers.
    #[error("a hierarchy needs at least two tiers")]
    TooFew,
    /// The same name twice.
    #[error("tier `{0}` is listed twice")]
    Duplicate(String),
    /// An empty name.
    #[error("a tier name is empty")]
    Empty,
}

impl Tiers {
    /// The `card` preset: cell → district → province → central.
    pub fn card() -> Self {
        Self::from_names(["cell", "district", "province", "central"])
    }

    /// The `vn2025` preset: cell → commune → province → central (the district
    /// tier was abolished on 1 July 2025).
    pub fn vn2025() -> Self {
        Self::from_names(["cell", "commune", "province", "central"])
    }

    /// A preset by its name (`card`, `vn2025`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "card" => Some(Self::card()),
            "vn2025" => Some(Self::vn2025()),
            _ => None,
        }
    }

    fn from_names<const N: usize>(names: [&str; N]) -> Self {
        Self(names.iter().map(|n| Tier::new(*n)).collect())
    }

    /// Checks that the list can serve as a hierarchy.
    pub fn validate(&self) -> Result<(), TiersError> {
        if self.0.len() < 2 {
            return Err(TiersError::TooFew);
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.0 {
            if t.0.trim().is_empty() {
                return Err(TiersError::Empty);
            }
            if !seen.insert(&t.0) {
                return Err(TiersError::Duplicate(t.0.clone()));
            }
        }
        Ok(())
    }

    /// Position of a tier, 0 for the lowest.
    pub fn index_of(&self, tier: &Tier) -> Option<usize> {
        self.0.iter().position(|t| t == tier)
    }

    /// The root tier (the last one).
    pub fn root(&self) -> Option<&Tier> {
        self.0.last()
    }

    /// The tier directly below `parent`, i.e. the tier a child of a `parent`
    /// organisation must have.
    pub fn below(&self, parent: &Tier) -> Option<&Tier> {
        let i = self.index_of(parent)?;
        i.checked_sub(1).and_then(|j| self.0.get(j))
    }

    /// Whether `tier` is a legal tier for a child of an org of tier `parent`
    /// (`None` for the root, which must be the top tier).
    pub fn allows_child(&self, parent: Option<&Tier>, tier: &Tier) -> bool {
        match parent {
            None => self.root() == Some(tier),
            Some(p) => self.below(p) == Some(tier),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_run_from_cell_to_central() {
        let card = Tiers::card();
        assert_eq!(card.root(), Some(&Tier::new("central")));
        assert_eq!(
            card.below(&Tier::new("province")),
            Some(&Tier::new("district"))
        );
        assert_eq!(card.below(&Tier::new("cell")), None);
        let vn = Tiers::vn2025();
        assert_eq!(
            vn.below(&Tier::new("province")),
            Some(&Tier::new("commune"))
        );
        assert!(vn.validate().is_ok());
    }

    #[test]
    fn a_child_must_sit_exactly_one_tier_below_its_parent() {
        let t = Tiers::card();
        assert!(t.allows_child(None, &Tier::new("central")));
        assert!(!t.allows_child(None, &Tier::new("province")));
        assert!(t.allows_child(Some(&Tier::new("central")), &Tier::new("province")));
        assert!(!t.allows_child(Some(&Tier::new("central")), &Tier::new("district")));
        assert!(!t.allows_child(Some(&Tier::new("cell")), &Tier::new("cell")));
    }

    #[test]
    fn bad_tier_lists_are_refused_by_name() {
        assert_eq!(
            Tiers(vec![Tier::new("x")]).validate(),
            Err(TiersError::TooFew)
        );
        assert_eq!(
            Tiers(vec![Tier::new("a"), Tier::new("a")]).validate(),
            Err(TiersError::Duplicate("a".into()))
        );
        assert_eq!(
            Tiers(vec![Tier::new("a"), Tier::new(" ")]).validate(),
            Err(TiersError::Empty)
        );
    }
}
