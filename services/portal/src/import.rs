//! `POST /api/v1/orgs/import`: many orgs at once, all or nothing.
//!
//! The registry has no batch command, so "all or nothing" is made of two
//! parts:
//!
//! 1. **Everything is checked before anything is sent** ([`plan`]): every
//!    row has a code and a name; codes are unique within the file and not
//!    taken in the registry; every parent resolves (`parent` by id, or
//!    `parent_code` to a row of the file or a registered org), without a
//!    cycle; every tier is the one below its parent's (the deployment's
//!    tier list); the caller is `central` over every registered parent.
//!    Any problem refuses the whole file, listing every problem found.
//! 2. **Then the rows are registered parents first, each with a fixed id**
//!    (UUID v5 of the code) and a command id derived from the request's
//!    ([`apply`]). Should the portal or the bus fail half-way, sending the
//!    same file again (with the same `Idempotency-Key`, or without) finishes
//!    the job: a row whose code is registered already *under its fixed id
//!    and with the same fields* counts as done, and the services answer a
//!    repeated command id with its first answer.
//!
//! A code another request registers between the check and the send makes
//! that row's command fail (409); the rows before it stay, and the refusal
//! says how many were registered.

use std::collections::{HashMap, HashSet, VecDeque};

use futures::{StreamExt, TryStreamExt};

use gradeflow_proto::commands::{Command, RegisterOrg};
use gradeflow_proto::{Actor, CommandId, ErrorCode, OrgId, Role, Tier};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::Need;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::forward::Services;
use crate::idempotency::part_id;
use crate::request::Posted;
use crate::state::PortalState;

/// The most rows one import takes.
pub const MAX_ROWS: usize = 20_000;

/// Namespace of the fixed ids of imported orgs.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2f0c_8d1e_5b7a_4e39_a4c6_1d9e_0b3f_7a52);

/// The fixed id an import gives the org with `code`.
pub fn org_id_for(code: &str) -> OrgId {
    OrgId(uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("gradeflow:imported-org:{code}").as_bytes(),
    ))
}

/// One org of an import: the body of `POST /orgs`, with the parent named
/// by id (`parent`) or by code (`parent_code`, which may be a row of the
/// same file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// The parent's id.
    #[serde(default)]
    pub parent: Option<OrgId>,
    /// The parent's code.
    #[serde(default)]
    pub parent_code: Option<String>,
}

/// The rows of the body: CSV when the content type says `text/csv` (or the
/// body is not JSON at all), else a JSON array.
pub fn parse(post: &Posted) -> Result<Vec<ImportRow>, ApiError> {
    let first = post.body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let csv = match post.content_type.as_deref() {
        Some("text/csv") | Some("application/csv") => true,
        Some("application/json") => false,
        _ => !matches!(first, Some(b'[') | Some(b'{')),
    };
    let rows = if csv {
        let text = std::str::from_utf8(&post.body).map_err(|_| {
            ApiError::invalid(
                "the CSV file is not UTF-8 text",
                "Tệp CSV phải được mã hóa UTF-8",
            )
        })?;
        parse_csv(text)?
    } else {
        post.json::<Vec<ImportRow>>()?
    };
    if rows.is_empty() {
        return Err(ApiError::invalid(
            "the import holds no organisation",
            "Tệp nhập không có tổ chức nào",
        ));
    }
    if rows.len() > MAX_ROWS {
        return Err(ApiError::invalid(
            format!(
                "an import takes at most {MAX_ROWS} organisations, not {}",
                rows.len()
            ),
            format!("Mỗi lần nhập tối đa {MAX_ROWS} tổ chức"),
        ));
    }
    Ok(rows)
}

/// CSV with a header naming the columns `code,name,tier,parent_code` (in
/// any order; RFC 4180 quoting).
pub fn parse_csv(text: &str) -> Result<Vec<ImportRow>, ApiError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let records = csv_records(text)?;
    let mut lines = records
        .into_iter()
        .filter(|(_, r)| r.iter().any(|f| !f.trim().is_empty()));
    let Some((_, header)) = lines.next() else {
        return Err(ApiError::invalid("the CSV file is empty", "Tệp CSV trống"));
    };
    let header: Vec<String> = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(code), Some(name), Some(tier)) = (column("code"), column("name"), column("tier"))
    else {
        return Err(ApiError::invalid(
            "the CSV header must name the columns code,name,tier,parent_code",
            "Dòng tiêu đề CSV phải có các cột code,name,tier,parent_code",
        )
        .with_details(json!({ "header": header })));
    };
    let parent_code = column("parent_code");
    if let Some(unknown) = header
        .iter()
        .find(|h| !["code", "name", "tier", "parent_code"].contains(&h.as_str()))
    {
        return Err(ApiError::invalid(
            format!("unknown CSV column `{unknown}` (expected code,name,tier,parent_code)"),
            format!("Cột CSV không được hỗ trợ: `{unknown}`"),
        )
        .with_details(json!({ "header": header })));
    }
    let mut rows = Vec::new();
    for (line, record) in lines {
        if record.len() != header.len() {
            return Err(ApiError::invalid(
                format!(
                    "CSV line {line} has {} fields; the header has {}",
                    record.len(),
                    header.len()
                ),
                format!("Dòng {line} của tệp CSV có số cột không khớp với dòng tiêu đề"),
            )
            .with_details(json!({ "line": line })));
        }
        let field = |i: usize| record[i].trim().to_owned();
        rows.push(ImportRow {
            code: field(code),
            name: field(name),
            tier: Tier::new(field(tier)),
            parent: None,
            parent_code: parent_code.map(field).filter(|c| !c.is_empty()),
        });
    }
    Ok(rows)
}

/// RFC 4180 records with the line each starts on.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, ApiError> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push((start, std::mem::take(&mut record)));
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(ApiError::invalid(
            format!("CSV line {start}: a quoted field is not closed"),
            format!("Dòng {start} của tệp CSV có trường trong ngoặc kép chưa đóng"),
        )
        .with_details(json!({ "line": start })));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((start, record));
    }
    Ok(records)
}

/// Where a row's parent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// Another row of the file (its index).
    Row(usize),
    /// A registered org.
    Registered(OrgId),
}

/// A checked import, ready to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The actor every row is registered as.
    pub actor: Actor,
    /// The commands, parents first; `None` for a row registered already by
    /// an earlier run of the same import.
    pub commands: Vec<(String, Option<RegisterOrg>)>,
}

/// One problem of the file.
fn problem(row: usize, code: ErrorCode, field: &str, message: String) -> Value {
    let message_vi = match code {
        ErrorCode::UnknownOrg => "Không tìm thấy tổ chức cấp trên",
        ErrorCode::DuplicateCode => "Mã tổ chức đã được sử dụng",
        ErrorCode::BadTier => "Cấp tổ chức không phù hợp với tổ chức cấp trên",
        _ => "Dữ liệu của dòng này không hợp lệ",
    };
    json!({ "row": row + 1, "code": code.as_str(), "field": field,
            "message": message, "message_vi": message_vi })
}

/// Checks every row (see the module docs); the refusal lists every problem
/// found and takes the status of the first.
pub async fn plan(
    state: &PortalState,
    caller: &Caller,
    rows: Vec<ImportRow>,
) -> Result<Plan, ApiError> {
    let services = state.services();
    let mut problems = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if row.code.trim().is_empty() {
            problems.push(problem(
                i,
                ErrorCode::InvalidInput,
                "code",
                "the code is blank".into(),
            ));
        }
        if row.name.trim().is_empty() {
            problems.push(problem(
                i,
                ErrorCode::InvalidInput,
                "name",
                "the name is blank".into(),
            ));
        }
        if let Some(first) = index.insert(row.code.trim(), i) {
            problems.push(problem(
                i,
                ErrorCode::InvalidInput,
                "code",
                format!(
                    "the code `{}` is also on row {}",
                    row.code.trim(),
                    first + 1
                ),
            ));
        }
    }

    // Everything the registry must say, asked at once: the orgs holding
    // the file's codes and the parents named by code, and the parents named
    // by id.
    let mut codes: Vec<&str> = rows.iter().map(|r| r.code.trim()).collect();
    codes.extend(
        rows.iter()
            .filter_map(|r| r.parent_code.as_deref().map(str::trim))
            .filter(|c| !c.is_empty() && !index.contains_key(c)),
    );
    let by_code = find_codes(services, codes).await?;
    let ids: Vec<OrgId> = rows.iter().filter_map(|r| r.parent).collect();
    let by_id = get_orgs(services, ids).await?;

    // Resolve parents; remember the registered ones' tiers.
    let mut parents: Vec<Option<Parent>> = Vec::with_capacity(rows.len());
    let mut registered_tiers: HashMap<OrgId, Tier> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let parent = match (&row.parent, row.parent_code.as_deref().map(str::trim)) {
            (Some(_), Some(_)) => {
                problems.push(problem(
                    i,
                    ErrorCode::InvalidInput,
                    "parent",
                    "name the parent by `parent` or by `parent_code`, not both".into(),
                ));
                None
            }
            (None, None) | (None, Some("")) => {
                problems.push(problem(
                    i,
                    ErrorCode::InvalidInput,
                    "parent",
                    "every imported organisation needs a parent (`parent` or `parent_code`)".into(),
                ));
                None
            }
            (None, Some(code)) => match index.get(code) {
                Some(&j) => Some(Parent::Row(j)),
                None => match by_code.get(code).and_then(Option::as_ref) {
                    Some(org) => registered(org, &mut registered_tiers).map(Parent::Registered),
                    None => {
                        problems.push(problem(
                            i,
                            ErrorCode::UnknownOrg,
                            "parent_code",
                            format!(
                                "no organisation has the code `{code}`, in the file or registered"
                            ),
                        ));
                        None
                    }
                },
            },
            (Some(id), None) => match by_id.get(id).and_then(Option::as_ref) {
                Some(org) => registered(org, &mut registered_tiers).map(Parent::Registered),
                None => {
                    problems.push(problem(
                        i,
                        ErrorCode::UnknownOrg,
                        "parent",
                        format!("no organisation {id}"),
                    ));
                    None
                }
            },
        };
        parents.push(parent);
    }

    // Tiers: each the one below its parent's.
    let tiers = &state.config().tiers;
    for (i, row) in rows.iter().enumerate() {
        let parent_tier = match parents[i] {
            Some(Parent::Row(j)) => Some(&rows[j].tier),
            Some(Parent::Registered(id)) => registered_tiers.get(&id),
            None => None,
        };
        if let Some(parent_tier) = parent_tier {
            if !tiers.allows_child(Some(parent_tier), &row.tier) {
                problems.push(problem(
                    i,
                    ErrorCode::BadTier,
                    "tier",
                    format!(
                        "an organisation under a `{parent_tier}` must have the tier `{}`, not `{}`",
                        tiers
                            .below(parent_tier)
                            .map(Tier::as_str)
                            .unwrap_or("(none)"),
                        row.tier
                    ),
                ));
            }
        }
    }

    // Codes taken in the registry (unless by this import's earlier run).
    let mut done = vec![false; rows.len()];
    for (i, row) in rows.iter().enumerate() {
        let code = row.code.trim();
        if code.is_empty() {
            continue;
        }
        let Some(org) = by_code.get(code).and_then(Option::as_ref) else {
            continue;
        };
        let same = org["id"] == json!(org_id_for(code))
            && org["name"] == json!(row.name.trim())
            && org["tier"] == json!(row.tier)
            && match parents[i] {
                Some(Parent::Row(j)) => org["parent"] == json!(org_id_for(rows[j].code.trim())),
                Some(Parent::Registered(p)) => org["parent"] == json!(p),
                None => false,
            };
        if same {
            done[i] = true;
        } else {
            problems.push(problem(
                i,
                ErrorCode::DuplicateCode,
                "code",
                format!(
                    "the code `{code}` belongs to organisation {} already",
                    org["id"]
                ),
            ));
        }
    }

    // Parents first (and no cycle among the file's rows).
    let order = parents_first(&parents);
    if order.len() < rows.len() && problems.is_empty() {
        let placed: HashSet<usize> = order.iter().copied().collect();
        let stuck = (0..rows.len()).find(|i| !placed.contains(i)).unwrap_or(0);
        problems.push(problem(
            stuck,
            ErrorCode::InvalidInput,
            "parent_code",
            "the parents of these rows form a cycle".into(),
        ));
    }

    // By row, so the first problem (whose code gives the status) is the
    // first in the file.
    problems.sort_by_key(|p| p["row"].as_u64());
    if let Some(first) = problems.first() {
        let code = first["code"]
            .as_str()
            .and_then(ErrorCode::from_code)
            .unwrap_or(ErrorCode::InvalidInput);
        let n = problems.len();
        return Err(ApiError::coded(
            code,
            format!(
                "the import was refused whole ({n} problem(s)); nothing was registered. Row {}: {}",
                first["row"],
                first["message"].as_str().unwrap_or_default()
            ),
            format!("Tệp nhập bị từ chối toàn bộ ({n} lỗi); chưa đăng ký tổ chức nào"),
        )
        .with_details(json!({ "problems": problems })));
    }

    // Scope: central over every registered parent.
    let mut chains = Vec::new();
    let mut seen = HashSet::new();
    for parent in parents.iter().flatten() {
        if let Parent::Registered(id) = parent {
            if seen.insert(*id) {
                chains.push(state.orgs().chain(*id).await?);
            }
        }
    }
    let actor = caller.pick_all(Need::Act(Role::Central), &chains)?;

    let commands = order
        .into_iter()
        .map(|i| {
            let row = &rows[i];
            let code = row.code.trim().to_owned();
            let command = (!done[i]).then(|| RegisterOrg {
                id: Some(org_id_for(&code)),
                code: code.clone(),
                name: row.name.trim().to_owned(),
                tier: row.tier.clone(),
                parent: match parents[i] {
                    Some(Parent::Row(j)) => Some(org_id_for(rows[j].code.trim())),
                    Some(Parent::Registered(p)) => Some(p),
                    None => None,
                },
            });
            (code, command)
        })
        .collect();
    Ok(Plan { actor, commands })
}

/// How many registry lookups are in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 32;

/// The registered org holding each code (`None`: free).
async fn find_codes(
    services: &Services,
    codes: Vec<&str>,
) -> Result<HashMap<String, Option<Value>>, ApiError> {
    let unique: HashSet<String> = codes
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let lookup = Services::portal_actor();
    futures::stream::iter(unique)
        .map(|code: String| {
            let lookup = &lookup;
            async move {
                let found = services
                    .query(
                        "submission",
                        "find_org.v1",
                        lookup,
                        json!({ "code": code }),
                        None,
                    )
                    .await?;
                let org = found.as_array().and_then(|a| a.first()).cloned();
                Ok::<_, ApiError>((code, org))
            }
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Each org by id (`None`: no such org).
async fn get_orgs(
    services: &Services,
    ids: Vec<OrgId>,
) -> Result<HashMap<OrgId, Option<Value>>, ApiError> {
    let unique: HashSet<OrgId> = ids.into_iter().collect();
    let lookup = Services::portal_actor();
    futures::stream::iter(unique)
        .map(|id| {
            let lookup = &lookup;
            async move {
                match services
                    .query(
                        "submission",
                        "get_org.v1",
                        lookup,
                        json!({ "org": id }),
                        None,
                    )
                    .await
                {
                    Ok(org) => Ok((id, Some(org))),
                    Err(e) if e.code == ErrorCode::UnknownOrg.as_str() => Ok((id, None)),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await
}

/// The id of a registered org, noting its tier.
fn registered(org: &Value, tiers: &mut HashMap<OrgId, Tier>) -> Option<OrgId> {
    let id: OrgId = org["id"].as_str()?.parse().ok()?;
    if let Some(tier) = org["tier"].as_str() {
        tiers.insert(id, Tier::new(tier));
    }
    Some(id)
}

/// Row indexes, every row after its parent row; rows on a cycle are left
/// out.
fn parents_first(parents: &[Option<Parent>]) -> Vec<usize> {
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut queue = VecDeque::new();
    for (i, p) in parents.iter().enumerate() {
        match p {
            Some(Parent::Row(j)) => children.entry(*j).or_default().push(i),
            _ => queue.push_back(i),
        }
    }
    let mut order = Vec::with_capacity(parents.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        queue.extend(children.remove(&i).unwrap_or_default());
    }
    order
}

/// Registers the planned rows in order, each with a command id derived from
/// the request's; answers `{"created": N}` (every row of the file).
pub async fn apply(
    state: &PortalState,
    plan: Plan,
    command_id: CommandId,
    traceparent: Option<String>,
) -> Result<Value, ApiError> {
    let total = plan.commands.len();
    for (sent, (code, command)) in plan.commands.into_iter().enumerate() {
        let Some(command) = command else {
            continue;
        };
        let outcome = state
            .services()
            .command(
                RegisterOrg::SERVICE,
                RegisterOrg::KIND,
                &plan.actor,
                json!(command),
                part_id(command_id, &code),
                traceparent.clone(),
            )
            .await;
        if let Err(failure) = outcome {
            let mut e = ApiError::from(failure);
            e.message = format!(
                "{} (the import stopped at `{code}` after {sent} of {total} organisations; \
                 send the same file again to finish it)",
                e.message
            );
            e.details["import"] = json!({ "stopped_at": code, "registered": sent, "total": total });
            return Err(e);
        }
    }
    Ok(json!({ "created": total }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_is_read_by_header_with_quotes_and_crlf() {
        let rows = parse_csv(
            "\u{feff}code,name,tier,parent_code\r\nP01,\"Tỉnh \"\"Một\"\", mới\",province,TW\r\n\r\nD01,Huyện 1,district,P01\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "Tỉnh \"Một\", mới");
        assert_eq!(rows[0].parent_code.as_deref(), Some("TW"));
        assert_eq!(rows[1].tier, Tier::new("district"));

        let reordered = parse_csv("tier,code,name\ncell,C1,Chi bộ 1").unwrap();
        assert_eq!(reordered[0].code, "C1");
        assert_eq!(reordered[0].parent_code, None);
    }

    #[test]
    fn bad_csv_is_refused_with_the_line() {
        assert!(parse_csv("code,name\nA,B").is_err());
        assert!(parse_csv("code,name,tier,color\nA,B,cell,red").is_err());
        let e = parse_csv("code,name,tier\nA,B\n").unwrap_err();
        assert_eq!(e.details["line"], 2);
        assert!(parse_csv("code,name,tier\n\"A,B,cell\n").is_err());
    }

    #[test]
    fn parents_come_before_children_and_cycles_are_left_out() {
        let parents = vec![
            Some(Parent::Row(1)),
            Some(Parent::Registered(OrgId::new())),
            Some(Parent::Row(0)),
            Some(Parent::Row(4)),
            Some(Parent::Row(3)),
        ];
        let order = parents_first(&parents);
        assert_eq!(order, vec![1, 0, 2]);
    }

    #[test]
    fn imported_ids_are_fixed_by_code() {
        assert_eq!(org_id_for("P01"), org_id_for("P01"));
        assert_ne!(org_id_for("P01"), org_id_for("P02"));
    }
}
