//! Opening a review cycle. A cycle pins its rulebook, its tier list, its
//! per-tier deadlines and its quota settings for good: an auditor re-checks
//! each decision against the cycle it was made in. `cycle_opened` goes on the
//! cycle's own stream `cycle-<id>`.

use gradeflow_proto::commands::OpenCycle;
use gradeflow_proto::events::CycleOpened;
use gradeflow_proto::{Actor, CycleId, CycleKind, OrgId, Rejection, Role};
use gradeflow_service::{Decision, Emit};
use serde_json::{json, Value};

use crate::model::SubmissionModel;
use crate::refusals::{bad_tier, conflict, invalid_input};
use crate::registry::root;

/// The highest base quota ratio a cycle may set: the regulation's 0.20,
/// raised for outstanding units to at most 0.25.
pub const MAX_QUOTA_RATIO: f64 = 0.25;

/// The years a cycle may review (sanity bounds on input, not policy).
pub const YEARS: std::ops::RangeInclusive<i32> = 1945..=9999;

/// The id the annual review of `year` gets when the caller names none.
pub fn annual_cycle_id(root: OrgId, year: i32) -> CycleId {
    CycleId(uuid::Uuid::new_v5(
        &root.as_uuid(),
        format!("gradeflow:annual-cycle:{year}").as_bytes(),
    ))
}

/// The cycle as opened, as `POST /cycles` answers it.
pub fn cycle_result(e: &CycleOpened) -> Value {
    json!({
        "id": e.cycle,
        "year": e.year,
        "kind": e.kind,
        "rulebook": e.rulebook,
        "tiers": e.tiers,
        "deadlines": e.deadlines,
        "quota": e.quota,
        "root": e.root,
    })
}

/// Opens a cycle over the whole tree (central at the root only). A given
/// `id` already opened with the same settings is answered as done.
pub fn open_cycle(
    model: &SubmissionModel,
    actor: &Actor,
    input: &OpenCycle,
) -> Result<Decision, Rejection> {
    let root = root(model)?;
    model.orgs.authorize(actor, Role::Central, root.id)?;
    if !YEARS.contains(&input.year) {
        return Err(invalid_input(
            "year",
            format!("the year {} is not a plausible review year", input.year),
            "Năm kiểm điểm không hợp lệ",
        ));
    }
    if let Err(e) = input.tiers.validate() {
        return Err(invalid_input(
            "tiers",
            format!("the tier list cannot serve as a hierarchy: {e}"),
            "Danh sách cấp tổ chức không hợp lệ",
        ));
    }
    if input.tiers.root() != Some(&root.tier) {
        return Err(bad_tier(
            input.tiers.root().map(|t| t.as_str()).unwrap_or(""),
            Some(root.tier.as_str()),
            format!(
                "the cycle's top tier must be the root organisation's tier `{}`",
                root.tier
            ),
        ));
    }
    if let Some(tier) = input
        .deadlines
        .keys()
        .find(|t| input.tiers.index_of(t).is_none())
    {
        return Err(invalid_input(
            "deadlines",
            format!("a deadline is set for `{tier}`, which is not one of the cycle's tiers"),
            "Thời hạn được đặt cho một cấp không có trong danh sách cấp của đợt kiểm điểm",
        ));
    }
    let ratio = input.quota.ratio;
    // `!(a && b)` rather than `<= 0 || > max`, so a NaN is refused too.
    if !(ratio > 0.0 && ratio <= MAX_QUOTA_RATIO) {
        return Err(invalid_input(
            "quota.ratio",
            format!("the quota ratio must be above 0 and at most {MAX_QUOTA_RATIO}, not {ratio}"),
            "Tỷ lệ hoàn thành xuất sắc nhiệm vụ phải lớn hơn 0 và không quá 0,25",
        ));
    }

    let cycle = match (input.id, input.kind) {
        (Some(id), _) => id,
        // The annual review of a year gets a name-based id, so two replicas
        // opening it at once write the same stream and only one commits.
        (None, CycleKind::Annual) => annual_cycle_id(root.id, input.year),
        (None, _) => CycleId::new(),
    };
    let event = CycleOpened {
        cycle,
        year: input.year,
        kind: input.kind,
        rulebook: input.rulebook,
        tiers: input.tiers.clone(),
        deadlines: input.deadlines.clone(),
        quota: input.quota,
        root: root.id,
    };
    if let Some(existing) = model.cycles.get(&cycle) {
        // A retried import: done already when it says the same.
        if existing.opened == event {
            return Ok(Decision {
                result: cycle_result(&existing.opened),
                ..Decision::default()
            });
        }
        return Err(conflict(
            format!("cycle {cycle} is opened already with other settings"),
            "Đợt kiểm điểm đã được mở với thông số khác",
            json!({ "cycle": cycle }),
        ));
    }
    // One annual review per year; quarterly, term and ad hoc cycles may
    // share a year.
    if input.kind == CycleKind::Annual {
        if let Some(other) = model
            .cycles
            .values()
            .find(|c| c.opened.kind == CycleKind::Annual && c.opened.year == input.year)
        {
            return Err(conflict(
                format!("the annual review of {} is opened already", input.year),
                "Đợt kiểm điểm hằng năm của năm này đã được mở",
                json!({ "cycle": other.opened.cycle, "year": input.year }),
            ));
        }
    }
    Ok(Decision {
        events: vec![Emit::new(cycle.stream(), &event, None)],
        reads: Vec::new(),
        result: cycle_result(&event),
    })
}
