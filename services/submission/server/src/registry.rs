//! The organisation registry's decisions: register, rename, move and merge
//! organisations. Every registry event goes on the one stream
//! [`REGISTRY_STREAM`], so the engine's version check on that stream makes
//! code uniqueness and tier placement hold across replicas: two replicas
//! registering the same code cannot both commit.
//!
//! Only `central` (or gradeflow itself, `system`) manages orgs, and only
//! within the subtree its role was granted at.

use gradeflow_proto::commands::{MergeOrgs, MoveOrg, RegisterOrg, RenameOrg};
use gradeflow_proto::events::{OrgMoved, OrgRegistered, OrgRenamed, OrgsMerged};
use gradeflow_proto::{Actor, OrgId, Rejection, Role, Tiers};
use gradeflow_service::{Decision, Emit, OrgNode};
use serde_json::{json, Value};

use crate::model::SubmissionModel;
use crate::refusals::{
    bad_tier, blank, conflict, duplicate_code, invalid_input, no_root, role_not_allowed,
};

/// The stream of every registry event.
pub const REGISTRY_STREAM: &str = "registry";

/// The answer to a registry command: the org as `POST /orgs` returns it.
pub fn org_result(node: &OrgNode) -> Value {
    json!({
        "id": node.id,
        "code": node.code,
        "name": node.name,
        "tier": node.tier,
        "parent": node.parent,
    })
}

/// Registers an organisation under a parent of the tier above (or the root
/// when none exists yet). A given `id` that is registered already with the
/// same fields is answered as done, so an import can be re-run.
pub fn register_org(
    model: &SubmissionModel,
    tiers: &Tiers,
    actor: &Actor,
    input: &RegisterOrg,
) -> Result<Decision, Rejection> {
    let code = input.code.trim();
    let name = input.name.trim();
    if code.is_empty() {
        return Err(blank("code"));
    }
    if name.is_empty() {
        return Err(blank("name"));
    }
    if let Some(existing) = input.id.and_then(|id| model.orgs.get(id)) {
        return replay_registration(model, actor, existing, code, name, input);
    }

    let province = match input.parent {
        None => {
            if let Some(root) = model.orgs.root() {
                return Err(conflict(
                    format!(
                        "the root organisation is registered already ({})",
                        root.code
                    ),
                    "Tổ chức cấp cao nhất đã được đăng ký",
                    json!({ "root": root.id }),
                ));
            }
            // There is no org yet to check the scope against: the role alone
            // decides who may found the tree.
            if !actor.role.covers(Role::Central) {
                return Err(role_not_allowed(actor.role, Role::Central));
            }
            if tiers.root() != Some(&input.tier) {
                return Err(bad_tier(
                    input.tier.as_str(),
                    tiers.root().map(|t| t.as_str()),
                    format!(
                        "the root organisation must have the top tier `{}`, not `{}`",
                        tiers.root().map(|t| t.as_str()).unwrap_or("?"),
                        input.tier
                    ),
                ));
            }
            None
        }
        Some(parent) => {
            let p = model.live_org(parent)?;
            model.orgs.authorize(actor, Role::Central, parent)?;
            if !tiers.allows_child(Some(&p.tier), &input.tier) {
                let expected = tiers.below(&p.tier).map(|t| t.as_str());
                return Err(bad_tier(
                    input.tier.as_str(),
                    expected,
                    format!(
                        "an organisation under `{}` ({}) must have the tier `{}`, not `{}`",
                        p.code,
                        p.tier,
                        expected.unwrap_or("(none: nothing sits below it)"),
                        input.tier
                    ),
                ));
            }
            // A child of the root is a province: its own code routes it.
            // Below, the province is inherited.
            if p.parent.is_none() {
                Some(code.to_owned())
            } else {
                model.orgs.province_for_child_of(parent)
            }
        }
    };
    if let Some(holder) = model.orgs.by_code(code) {
        return Err(duplicate_code(code, holder.id));
    }

    let org = input.id.unwrap_or_default();
    let event = OrgRegistered {
        org,
        code: code.to_owned(),
        name: name.to_owned(),
        tier: input.tier.clone(),
        parent: input.parent,
        province: province.clone(),
    };
    Ok(Decision {
        events: vec![Emit::new(REGISTRY_STREAM, &event, province)],
        reads: Vec::new(),
        result: json!({
            "id": org,
            "code": event.code,
            "name": event.name,
            "tier": event.tier,
            "parent": event.parent,
        }),
    })
}

/// A registration whose id exists: done already when every field agrees,
/// a conflict otherwise.
fn replay_registration(
    model: &SubmissionModel,
    actor: &Actor,
    existing: &OrgNode,
    code: &str,
    name: &str,
    input: &RegisterOrg,
) -> Result<Decision, Rejection> {
    let same = existing.code == code
        && existing.name == name
        && existing.tier == input.tier
        && existing.parent == input.parent;
    if !same {
        return Err(conflict(
            format!(
                "organisation {} is registered already with other fields",
                existing.id
            ),
            "Mã định danh tổ chức đã được đăng ký với thông tin khác",
            json!({ "org": existing.id, "code": existing.code }),
        ));
    }
    // Even a no-op answer reveals the org: the caller must be allowed to
    // register it in the first place.
    match existing.parent {
        Some(parent) => model.orgs.authorize(actor, Role::Central, parent)?,
        None if !actor.role.covers(Role::Central) => {
            return Err(role_not_allowed(actor.role, Role::Central))
        }
        None => {}
    }
    Ok(Decision {
        result: org_result(existing),
        ..Decision::default()
    })
}

/// Renames an organisation (the code, its identity for imports, stays).
pub fn rename_org(
    model: &SubmissionModel,
    actor: &Actor,
    input: &RenameOrg,
) -> Result<Decision, Rejection> {
    let node = model.live_org(input.org)?;
    model.orgs.authorize(actor, Role::Central, input.org)?;
    let name = input.name.trim();
    if name.is_empty() {
        return Err(blank("name"));
    }
    let event = OrgRenamed {
        org: input.org,
        old_name: node.name.clone(),
        name: name.to_owned(),
    };
    let mut result = org_result(node);
    result["name"] = json!(name);
    Ok(Decision {
        events: vec![Emit::new(
            REGISTRY_STREAM,
            &event,
            model.orgs.province_of(input.org),
        )],
        reads: Vec::new(),
        result,
    })
}

/// Moves an organisation under another parent of the same tier as its
/// current one. Moving it where it already is changes nothing.
pub fn move_org(
    model: &SubmissionModel,
    actor: &Actor,
    input: &MoveOrg,
) -> Result<Decision, Rejection> {
    let node = model.live_org(input.org)?;
    let target = model.live_org(input.parent)?;
    model.orgs.authorize(actor, Role::Central, input.org)?;
    model.orgs.authorize(actor, Role::Central, input.parent)?;
    let Some(from_parent) = node.parent else {
        return Err(invalid_input(
            "org",
            "the root organisation cannot be moved",
            "Không thể di chuyển tổ chức cấp cao nhất",
        ));
    };
    if model.orgs.is_within(input.parent, input.org) {
        return Err(invalid_input(
            "parent",
            "an organisation cannot move under itself or its own subtree",
            "Không thể chuyển tổ chức vào chính nó hoặc tổ chức trực thuộc nó",
        ));
    }
    if from_parent == input.parent {
        let mut result = org_result(node);
        result["moved"] = json!(false);
        return Ok(Decision {
            result,
            ..Decision::default()
        });
    }
    let old_parent_tier = model.orgs.get(from_parent).map(|p| p.tier.clone());
    if old_parent_tier.as_ref() != Some(&target.tier) {
        let expected = old_parent_tier.as_ref().map(|t| t.as_str());
        return Err(bad_tier(
            target.tier.as_str(),
            expected,
            format!(
                "`{}` ({}) must move under an organisation of the tier `{}`, not `{}`",
                node.code,
                node.tier,
                expected.unwrap_or("?"),
                target.tier
            ),
        ));
    }
    let province = if target.parent.is_none() {
        Some(node.code.clone())
    } else {
        model.orgs.province_for_child_of(input.parent)
    };
    let event = OrgMoved {
        org: input.org,
        from_parent,
        to_parent: input.parent,
    };
    let mut result = org_result(node);
    result["parent"] = json!(input.parent);
    result["moved"] = json!(true);
    Ok(Decision {
        events: vec![Emit::new(REGISTRY_STREAM, &event, province)],
        reads: Vec::new(),
        result,
    })
}

/// Merges organisations of one tier into another of the same tier: the
/// merged ones cease to exist (their history stays) and their children move
/// under `into`.
pub fn merge_orgs(
    model: &SubmissionModel,
    actor: &Actor,
    input: &MergeOrgs,
) -> Result<Decision, Rejection> {
    if input.from.is_empty() {
        return Err(invalid_input(
            "from",
            "name at least one organisation to merge",
            "Cần chọn ít nhất một tổ chức để hợp nhất",
        ));
    }
    let into = model.live_org(input.into)?;
    model.orgs.authorize(actor, Role::Central, input.into)?;
    let mut seen: Vec<OrgId> = Vec::with_capacity(input.from.len());
    let mut children_moved = Vec::new();
    for &from in &input.from {
        if from == input.into {
            return Err(invalid_input(
                "from",
                "an organisation cannot be merged into itself",
                "Không thể hợp nhất một tổ chức vào chính nó",
            ));
        }
        if seen.contains(&from) {
            return Err(invalid_input(
                "from",
                format!("organisation {from} is listed twice"),
                "Một tổ chức được liệt kê hai lần",
            ));
        }
        seen.push(from);
        let node = model.live_org(from)?;
        model.orgs.authorize(actor, Role::Central, from)?;
        if node.tier != into.tier {
            return Err(bad_tier(
                node.tier.as_str(),
                Some(into.tier.as_str()),
                format!(
                    "`{}` ({}) cannot merge into `{}` ({}): merged organisations share one tier",
                    node.code, node.tier, into.code, into.tier
                ),
            ));
        }
        children_moved.extend(node.children.iter().copied());
    }
    let event = OrgsMerged {
        from: input.from.clone(),
        into: input.into,
        children_moved: children_moved.clone(),
    };
    Ok(Decision {
        events: vec![Emit::new(
            REGISTRY_STREAM,
            &event,
            model.orgs.province_of(input.into),
        )],
        reads: Vec::new(),
        result: json!({
            "into": input.into,
            "from": input.from,
            "children_moved": children_moved,
        }),
    })
}

/// A check used by the cycle and subject decisions: the root must exist.
pub fn root(model: &SubmissionModel) -> Result<&OrgNode, Rejection> {
    model.orgs.root().ok_or_else(no_root)
}
