//! The portal's half of the scope check (`ARCHITECTURE.md` § Security):
//! every call is authorised against the org it touches before anything is
//! sent. A role granted at an org covers the org's whole subtree; `central`
//! also covers `submitter`, `appraiser` and `authority`. The services run
//! the same check again on the actor the portal sends (defence in depth).
//!
//! The portal keeps no copy of the tree: it asks the submission service
//! (which owns the registry) for an org's ancestry, and remembers each
//! org's parent for a moment ([`PARENT_TTL`]) so a burst of calls on one
//! unit does not ask again for every call. A move seen late errs only for
//! that moment, and the service's own check stands behind it anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gradeflow_proto::{Actor, OrgId, Role};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::forward::Services;

/// How long an org's parent is remembered.
pub const PARENT_TTL: Duration = Duration::from_secs(2);
/// The deepest tree walked (a guard against a cycle in corrupt data).
const MAX_DEPTH: usize = 64;

/// What a call needs of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To act in this role (or one that covers it).
    Act(Role),
    /// To read: any role.
    Read,
    /// To read the decision log: `auditor` or `central`.
    Audit,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Act(needed) => role.covers(needed),
            Need::Read => true,
            Need::Audit => matches!(role, Role::Auditor | Role::Central),
        }
    }

    fn describe(self) -> (String, &'static str) {
        match self {
            Need::Act(role) => (
                format!("act as {}", role_name(role)),
                match role {
                    Role::Submitter => "nhập liệu hồ sơ (cấp ủy/đơn vị)",
                    Role::Appraiser => "thẩm định (ban tổ chức)",
                    Role::Authority => "quyết định xếp loại (ban thường vụ)",
                    Role::Central => "quản lý tổ chức và kỳ kiểm điểm (Trung ương)",
                    Role::Auditor => "kiểm tra, giám sát",
                    Role::System => "hệ thống",
                },
            ),
            Need::Read => ("read".to_owned(), "xem"),
            Need::Audit => (
                "read the decision log (auditor or central)".to_owned(),
                "xem nhật ký quyết định",
            ),
        }
    }
}

/// The wire name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Submitter => "submitter",
        Role::Appraiser => "appraiser",
        Role::Authority => "authority",
        Role::Central => "central",
        Role::Auditor => "auditor",
        Role::System => "system",
    }
}

impl Caller {
    /// The actor for a call that needs `need` on the org whose ancestry
    /// (itself first, the root last) is `chain`: the first grant that
    /// covers the need and whose org is on the chain. 403 when none does.
    pub fn pick(&self, need: Need, chain: &[OrgId]) -> Result<Actor, ApiError> {
        self.grants
            .iter()
            .find(|g| need.allows(g.role) && chain.contains(&g.org))
            .map(|g| Actor {
                sub: self.sub.clone(),
                role: g.role,
                org: g.org,
            })
            .ok_or_else(|| {
                let target = chain.first().copied();
                let (what, what_vi) = need.describe();
                ApiError::out_of_scope(
                    match target {
                        Some(org) => {
                            format!("none of your roles lets you {what} on organisation {org}")
                        }
                        None => format!("none of your roles lets you {what}"),
                    },
                    format!("Bạn không có quyền {what_vi} đối với tổ chức này"),
                )
                .with_details(json!({
                    "org": target,
                    "needed": match need {
                        Need::Act(r) => json!(role_name(r)),
                        Need::Read => json!("any"),
                        Need::Audit => json!(["auditor", "central"]),
                    },
                }))
            })
    }

    /// The actor for a call that touches several orgs (a merge, an
    /// import): the first grant that covers `need` on every chain.
    pub fn pick_all(&self, need: Need, chains: &[Vec<OrgId>]) -> Result<Actor, ApiError> {
        if let Some(g) = self
            .grants
            .iter()
            .find(|g| need.allows(g.role) && chains.iter().all(|c| c.contains(&g.org)))
        {
            return Ok(Actor {
                sub: self.sub.clone(),
                role: g.role,
                org: g.org,
            });
        }
        // Name the first org no grant covers; or, when each is covered by a
        // different grant, say that one grant must cover them all.
        for chain in chains {
            self.pick(need, chain)?;
        }
        Err(ApiError::out_of_scope(
            "no single role of yours covers every organisation this call touches",
            "Không có vai trò nào của bạn bao quát tất cả các tổ chức trong yêu cầu này",
        )
        .with_details(
            json!({ "orgs": chains.iter().filter_map(|c| c.first()).collect::<Vec<_>>() }),
        ))
    }

    /// The actor for a call that needs `need` with no particular org (the
    /// service narrows the answer to the actor's subtree): the first grant
    /// that covers it.
    pub fn pick_any(&self, need: Need) -> Result<Actor, ApiError> {
        let orgs: Vec<OrgId> = self.grants.iter().map(|g| g.org).collect();
        self.pick(need, &orgs).map_err(|mut e| {
            e.details["org"] = serde_json::Value::Null;
            e
        })
    }
}

/// Each org's parent as last read, and when.
type Parents = HashMap<OrgId, (Option<OrgId>, Instant)>;

/// Org ancestry as the registry knows it, with a short memory of parents.
#[derive(Clone)]
pub struct OrgDirectory {
    services: Services,
    parents: Arc<Mutex<Parents>>,
}

impl OrgDirectory {
    /// A directory asking `services`.
    pub fn new(services: Services) -> Self {
        Self {
            services,
            parents: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `org` and its ancestors, itself first and the root last; 404
    /// `unknown_org` when the registry has no such org.
    pub async fn chain(&self, org: OrgId) -> Result<Vec<OrgId>, ApiError> {
        let mut chain = vec![org];
        let mut at = org;
        while chain.len() <= MAX_DEPTH {
            match self.parent(at).await? {
                Some(parent) if !chain.contains(&parent) => {
                    chain.push(parent);
                    at = parent;
                }
                _ => return Ok(chain),
            }
        }
        Ok(chain)
    }

    /// The root of the tree `org` belongs to.
    pub async fn root_of(&self, org: OrgId) -> Result<OrgId, ApiError> {
        Ok(self.chain(org).await?.last().copied().unwrap_or(org))
    }

    async fn parent(&self, org: OrgId) -> Result<Option<OrgId>, ApiError> {
        if let Some((parent, at)) = self
            .parents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&org)
        {
            if at.elapsed() < PARENT_TTL {
                return Ok(*parent);
            }
        }
        let view = self
            .services
            .query(
                "submission",
                "get_org.v1",
                &Services::portal_actor(),
                json!({ "org": org }),
                None,
            )
            .await?;
        let parent = view["parent"].as_str().and_then(|p| p.parse().ok());
        let mut parents = self.parents.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: forget everything rather than grow without limit.
        if parents.len() > 100_000 {
            parents.clear();
        }
        parents.insert(org, (parent, Instant::now()));
        Ok(parent)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Grant;

    #[test]
    fn the_first_grant_covering_the_need_on_the_chain_is_picked() {
        let (root, province, district, elsewhere) =
            (OrgId::new(), OrgId::new(), OrgId::new(), OrgId::new());
        let caller = Caller {
            sub: "u".into(),
            grants: vec![
                Grant {
                    role: Role::Auditor,
                    org: root,
                },
                Grant {
                    role: Role::Submitter,
                    org: elsewhere,
                },
                Grant {
                    role: Role::Central,
                    org: province,
                },
            ],
        };
        let chain = [district, province, root];
        let a = caller.pick(Need::Act(Role::Submitter), &chain).unwrap();
        assert_eq!((a.role, a.org), (Role::Central, province));
        let r = caller.pick(Need::Read, &chain).unwrap();
        assert_eq!((r.role, r.org), (Role::Auditor, root));
        let audit = caller.pick(Need::Audit, &chain).unwrap();
        assert_eq!(audit.role, Role::Auditor);

        let e = caller
            .pick(Need::Act(Role::Authority), &[elsewhere])
            .unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.code, "out_of_scope");
        assert_eq!(e.details["needed"], "authority");
        // An auditor never acts.
        let auditor = Caller {
            sub: "a".into(),
            grants: vec![Grant {
                role: Role::Auditor,
                org: root,
            }],
        };
        assert!(auditor.pick(Need::Act(Role::Submitter), &chain).is_err());
    }
}
