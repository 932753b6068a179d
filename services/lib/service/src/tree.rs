//! The organisation tree as every service sees it, folded from the registry's
//! events (`org_registered`, `org_renamed`, `org_moved`, `orgs_merged`), and
//! the scope check every command runs: a role granted at an org covers that
//! org's whole subtree (defence in depth behind the portal's own check).

use std::collections::{BTreeSet, HashMap};

use gradeflow_proto::events::{Event, OrgMoved, OrgRegistered, OrgRenamed, OrgsMerged};
use gradeflow_proto::{Actor, ErrorCode, OrgId, Rejection, Role, Tier};

/// One organisation.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgNode {
    /// Its id.
    pub id: OrgId,
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Parent (`None` for the root).
    pub parent: Option<OrgId>,
    /// Current children.
    pub children: BTreeSet<OrgId>,
    /// Province code (routing key), `None` above provinces.
    pub province: Option<String>,
    /// Set when merged into another org; it then has no children.
    pub merged_into: Option<OrgId>,
}

/// The tree of organisations.
#[derive(Debug, Clone, Default)]
pub struct OrgTree {
    orgs: HashMap<OrgId, OrgNode>,
    by_code: HashMap<String, OrgId>,
    root: Option<OrgId>,
}

impl OrgTree {
    /// Folds one event; returns whether it was a registry event.
    pub fn apply(&mut self, kind: &str, payload: &serde_json::Value) -> bool {
        if kind == OrgRegistered::KIND {
            if let Ok(e) = serde_json::from_value::<OrgRegistered>(payload.clone()) {
                if let Some(p) = e.parent.and_then(|p| self.orgs.get_mut(&p)) {
                    p.children.insert(e.org);
                }
                if e.parent.is_none() {
                    self.root = Some(e.org);
                }
                self.by_code.insert(e.code.clone(), e.org);
                self.orgs.insert(
                    e.org,
                    OrgNode {
                        id: e.org,
                        code: e.code,
                        name: e.name,
                        tier: e.tier,
                        parent: e.parent,
                        children: BTreeSet::new(),
                        province: e.province,
                        merged_into: None,
                    },
                );
            }
            true
        } else if kind == OrgRenamed::KIND {
            if let Ok(e) = serde_json::from_value::<OrgRenamed>(payload.clone()) {
                if let Some(o) = self.orgs.get_mut(&e.org) {
                    o.name = e.name;
                }
            }
            true
        } else if kind == OrgMoved::KIND {
            if let Ok(e) = serde_json::from_value::<OrgMoved>(payload.clone()) {
                self.reparent(e.org, e.to_parent);
            }
            true
        } else if kind == OrgsMerged::KIND {
            if let Ok(e) = serde_json::from_value::<OrgsMerged>(payload.clone()) {
                for child in &e.children_moved {
                    self.reparent(*child, e.into);
                }
                for from in &e.from {
                    if let Some(parent) = self.orgs.get(from).and_then(|o| o.parent) {
                        if let Some(p) = self.orgs.get_mut(&parent) {
                            p.children.remove(from);
                        }
                    }
                    if let Some(o) = self.orgs.get_mut(from) {
                        o.merged_into = Some(e.into);
                    }
                }
            }
            true
        } else {
            false
        }
    }

    fn reparent(&mut self, org: OrgId, to: OrgId) {
        let Some(old) = self.orgs.get(&org).and_then(|o| o.parent) else {
            return;
        };
        if let Some(p) = self.orgs.get_mut(&old) {
            p.children.remove(&org);
        }
        if let Some(p) = self.orgs.get_mut(&to) {
            p.children.insert(org);
        }
        let province = self.province_for_child_of(to);
        if let Some(o) = self.orgs.get_mut(&org) {
            o.parent = Some(to);
            if province.is_some() {
                o.province = province;
            }
        }
    }

    /// The province code a new child of `parent` gets.
    pub fn province_for_child_of(&self, parent: OrgId) -> Option<String> {
        let p = self.orgs.get(&parent)?;
        match p.parent {
            // A child of the root is a province itself: the caller uses its
            // own code.
            None => None,
            Some(_) => p.province.clone().or_else(|| Some(p.code.clone())),
        }
    }

    /// An org by id.
    pub fn get(&self, id: OrgId) -> Option<&OrgNode> {
        self.orgs.get(&id)
    }

    /// An org by code.
    pub fn by_code(&self, code: &str) -> Option<&OrgNode> {
        self.by_code.get(code).and_then(|id| self.orgs.get(id))
    }

    /// The root org.
    pub fn root(&self) -> Option<&OrgNode> {
        self.root.and_then(|r| self.orgs.get(&r))
    }

    /// Number of orgs ever registered.
    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    /// Whether no org is registered.
    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Whether `org` is `ancestor` or lies below it.
    pub fn is_within(&self, org: OrgId, ancestor: OrgId) -> bool {
        let mut cur = Some(org);
        // Bounded by the tree's size, so a corrupt cycle cannot hang us.
        for _ in 0..=self.orgs.len() {
            match cur {
                Some(c) if c == ancestor => return true,
                Some(c) => cur = self.orgs.get(&c).and_then(|o| o.parent),
                None => return false,
            }
        }
        false
    }

    /// The routing key of events about `org`.
    pub fn province_of(&self, org: OrgId) -> Option<String> {
        let o = self.orgs.get(&org)?;
        o.province.clone()
    }

    /// Checks that `actor` may act as `needed` on `target`: the role covers
    /// `needed` and was granted at `target` or one of its ancestors.
    pub fn authorize(&self, actor: &Actor, needed: Role, target: OrgId) -> Result<(), Rejection> {
        if actor.role == Role::System {
            return Ok(());
        }
        if !actor.role.covers(needed) {
            return Err(ErrorCode::OutOfScope
                .reject(
                    format!("the role {:?} may not act as {:?}", actor.role, needed),
                    "Vai trò của người dùng không được phép thực hiện thao tác này",
                )
                .with_details(serde_json::json!({"needed_role": needed, "org": target})));
        }
        if !self.is_within(target, actor.org) {
            return Err(ErrorCode::OutOfScope
                .reject(
                    format!(
                        "org {target} lies outside the caller's scope ({})",
                        actor.org
                    ),
                    "Tổ chức nằm ngoài phạm vi được phân quyền",
                )
                .with_details(serde_json::json!({"org": target, "scope": actor.org})));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn reg(tree: &mut OrgTree, id: u128, code: &str, tier: &str, parent: Option<u128>) -> OrgId {
        let org = OrgId(uuid::Uuid::from_u128(id));
        let parent = parent.map(|p| OrgId(uuid::Uuid::from_u128(p)));
        let province = parent
            .and_then(|p| tree.province_for_child_of(p))
            .or_else(|| {
                parent
                    .filter(|p| tree.get(*p).is_some_and(|o| o.parent.is_none()))
                    .map(|_| code.to_owned())
            });
        let e = OrgRegistered {
            org,
            code: code.into(),
            name: code.into(),
            tier: Tier::new(tier),
            parent,
            province,
        };
        assert!(tree.apply(OrgRegistered::KIND, &serde_json::to_value(e).unwrap()));
        org
    }

    #[test]
    fn a_role_covers_its_org_and_the_whole_subtree_but_nothing_beside_it() {
        let mut t = OrgTree::default();
        let tw = reg(&mut t, 1, "TW", "central", None);
        let p1 = reg(&mut t, 2, "P01", "province", Some(1));
        let p2 = reg(&mut t, 3, "P02", "province", Some(1));
        let d1 = reg(&mut t, 4, "P01.D01", "district", Some(2));
        assert_eq!(t.province_of(d1).as_deref(), Some("P01"));
        assert_eq!(t.root().map(|r| r.id), Some(tw));
        let actor = Actor {
            sub: "a".into(),
            role: Role::Submitter,
            org: p1,
        };
        assert!(t.authorize(&actor, Role::Submitter, d1).is_ok());
        assert!(t.authorize(&actor, Role::Submitter, p1).is_ok());
        let err = t.authorize(&actor, Role::Submitter, p2).unwrap_err();
        assert_eq!(err.code, "out_of_scope");
        let err = t.authorize(&actor, Role::Authority, d1).unwrap_err();
        assert_eq!(err.code, "out_of_scope");
        let central = Actor {
            role: Role::Central,
            org: tw,
            ..actor
        };
        assert!(t.authorize(&central, Role::Authority, d1).is_ok());
        assert!(t.authorize(&central, Role::Auditor, d1).is_err());
    }

    #[test]
    fn moves_and_merges_reshape_the_tree_and_keep_history() {
        let mut t = OrgTree::default();
        reg(&mut t, 1, "TW", "central", None);
        let p1 = reg(&mut t, 2, "P01", "province", Some(1));
        let p2 = reg(&mut t, 3, "P02", "province", Some(1));
        let d = reg(&mut t, 4, "P02.D01", "district", Some(3));
        t.apply(
            OrgsMerged::KIND,
            &json!({"from": [p2], "into": p1, "children_moved": [d]}),
        );
        assert_eq!(t.get(d).unwrap().parent, Some(p1));
        assert_eq!(t.get(d).unwrap().province.as_deref(), Some("P01"));
        assert_eq!(t.get(p2).unwrap().merged_into, Some(p1));
        assert!(t.get(p1).unwrap().children.contains(&d));
        assert!(t.is_within(d, p1));
        t.apply(
            OrgRenamed::KIND,
            &json!({"org": p1, "old_name": "P01", "name": "Tỉnh Mới"}),
        );
        assert_eq!(t.by_code("P01").unwrap().name, "Tỉnh Mới");
        t.apply(
            OrgMoved::KIND,
            &json!({"org": d, "from_parent": p1, "to_parent": p2}),
        );
        assert_eq!(t.get(d).unwrap().parent, Some(p2));
    }
}
