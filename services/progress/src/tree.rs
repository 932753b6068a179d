//! The caller's side of a paged `progress.v1` tree: one answer is one NATS
//! message, so a large tree comes back cut ([`crate::queries::MAX_NODES`],
//! [`crate::queries::MAX_REPLY_BYTES`]) with the cut nodes flagged
//! `children_truncated`. [`assemble`] asks for the rest of each cut node's
//! children with `after` and puts the pages together, so readers without a
//! message limit (the portal's HTTP answers, the benchmark) get the whole
//! tree. It knows nothing of NATS: the caller passes how to ask.

use std::future::Future;

use serde_json::{json, Map, Value};

/// The flag of a node whose children were cut.
const TRUNCATED: &str = "children_truncated";

/// Why [`assemble`] could not put the tree together.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError<E> {
    /// Asking for the tree or one of its pages failed.
    #[error("asking the progress service for the tree or a page of it")]
    Ask(#[source] E),
    /// A page of a cut node brought no children after the last one
    /// present: asking again would never end.
    #[error("the page of `{org}` after {after} brought no further children")]
    Stalled {
        /// The node paged.
        org: String,
        /// The last child's code before the page, or `none`.
        after: String,
    },
    /// An answer is not a progress node.
    #[error("the progress answer is not a tree node: {what}")]
    Malformed {
        /// What was wrong.
        what: String,
    },
}

/// The whole tree `query` (`{cycle, org?, depth?}`, as `progress.v1`
/// takes it) asks for, with `ask` sending one `progress.v1` query and
/// returning its answer. Every node flagged `children_truncated` with
/// levels left below it is asked for again — `{cycle, org: the node's org,
/// depth: the levels left, after: its last child's code}` — and the page's
/// children are appended, until a page comes back whole; then the same is
/// done in every child, so cuts at any depth are completed. The result is
/// what one answer without limits would be: no node carries
/// `children_truncated`.
///
/// Pages are separate reads: a tree that changes while it is assembled may
/// mix states of before and after the change, as two requests would.
pub async fn assemble<F, Fut, E>(query: Value, mut ask: F) -> Result<Value, AssembleError<E>>
where
    F: FnMut(Value) -> Fut,
    Fut: Future<Output = Result<Value, E>>,
{
    let cycle = query.get("cycle").cloned().unwrap_or(Value::Null);
    let depth = match query.get("depth") {
        None | Some(Value::Null) => 1,
        Some(d) => d.as_u64().ok_or_else(|| AssembleError::Malformed {
            what: format!("the query's depth {d} is not a number of levels"),
        })?,
    };
    let mut tree = ask(query).await.map_err(AssembleError::Ask)?;
    // Nodes still to visit: their path of child indexes from the top, and
    // the levels of children they carry.
    let mut pending: Vec<(Vec<usize>, u64)> = vec![(Vec::new(), depth)];
    while let Some((path, levels)) = pending.pop() {
        loop {
            let node = node_at(&mut tree, &path)?;
            if levels == 0 || !is_truncated(node) {
                break;
            }
            let org = node.get("org").cloned().unwrap_or(Value::Null);
            let last = children_of(node)?.last().map(code_of).transpose()?;
            let mut page_query = json!({ "cycle": cycle, "org": org, "depth": levels });
            if let Some(after) = &last {
                page_query["after"] = json!(after);
            }
            let mut page = ask(page_query).await.map_err(AssembleError::Ask)?;
            let page = page
                .as_object_mut()
                .ok_or_else(|| AssembleError::Malformed {
                    what: "a page is not an object".to_owned(),
                })?;
            let more = std::mem::take(children_of(page)?);
            let still_truncated = is_truncated(page);
            // Each page must move past the last child held, or the loop
            // would ask for the same page for ever.
            let advances = match (more.first(), &last) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(first), Some(after)) => code_of(first)?.as_str() > after.as_str(),
            };
            if !advances && (still_truncated || !more.is_empty()) {
                return Err(AssembleError::Stalled {
                    org: org.to_string(),
                    after: last.unwrap_or_else(|| "none".to_owned()),
                });
            }
            let node = node_at(&mut tree, &path)?;
            children_of(node)?.extend(more);
            if !still_truncated {
                node.remove(TRUNCATED);
            }
        }
        let node = node_at(&mut tree, &path)?;
        node.remove(TRUNCATED);
        let count = children_of(node)?.len();
        // Reversed, so the stack visits children in code order.
        for index in (0..count).rev() {
            let mut child = path.clone();
            child.push(index);
            pending.push((child, levels.saturating_sub(1)));
        }
    }
    Ok(tree)
}

/// The node at `path` (child indexes from the top).
fn node_at<'t, E>(
    tree: &'t mut Value,
    path: &[usize],
) -> Result<&'t mut Map<String, Value>, AssembleError<E>> {
    let mut node = tree;
    for &index in path {
        node = node
            .get_mut("children")
            .and_then(|c| c.get_mut(index))
            .ok_or_else(|| AssembleError::Malformed {
                what: format!("no child {index} on the path {path:?}"),
            })?;
    }
    node.as_object_mut()
        .ok_or_else(|| AssembleError::Malformed {
            what: "a node is not an object".to_owned(),
        })
}

/// A node's `children` array.
fn children_of<E>(node: &mut Map<String, Value>) -> Result<&mut Vec<Value>, AssembleError<E>> {
    node.get_mut("children")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| AssembleError::Malformed {
            what: "a node has no children array".to_owned(),
        })
}

fn is_truncated(node: &Map<String, Value>) -> bool {
    node.get(TRUNCATED).and_then(Value::as_bool) == Some(true)
}

fn code_of<E>(node: &Value) -> Result<String, AssembleError<E>> {
    node.get("code")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| AssembleError::Malformed {
            what: "a node has no code".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::convert::Infallible;

    use super::*;

    /// A tree in memory: `code` and its children, by code.
    #[derive(Debug, Clone)]
    struct Org {
        code: String,
        children: Vec<Org>,
    }

    /// `fanout[0]` children under the top, `fanout[1]` under each of
    /// those, and so on; codes like `T.03.01`.
    fn org(code: &str, fanout: &[usize]) -> Org {
        let children = match fanout.split_first() {
            None => Vec::new(),
            Some((n, rest)) => (1..=*n)
                .map(|i| org(&format!("{code}.{i:02}"), rest))
                .collect(),
        };
        Org {
            code: code.to_owned(),
            children,
        }
    }

    fn find<'o>(top: &'o Org, code: &str) -> Option<&'o Org> {
        if top.code == code {
            return Some(top);
        }
        top.children.iter().find_map(|c| find(c, code))
    }

    /// A node as the service shapes it (the org is the code here).
    fn shape(o: &Org) -> Value {
        json!({ "org": o.code, "code": o.code, "totals": {"subjects": 1}, "children": [] })
    }

    /// The answer of a service with no limits.
    fn whole(o: &Org, depth: u64) -> Value {
        let mut n = shape(o);
        if depth > 0 {
            n["children"] = o.children.iter().map(|c| whole(c, depth - 1)).collect();
        }
        n
    }

    /// The answer of a service that carries at most `max_nodes` nodes per
    /// answer, cutting as `progress.v1` does: depth first, the cut node
    /// flagged, the asked node's first child always present, `after`
    /// filtering the asked node's own children.
    fn answer(top: &Org, max_nodes: usize, q: &Value) -> Value {
        let o = match q.get("org").and_then(Value::as_str) {
            Some(code) => find(top, code).unwrap(),
            None => top,
        };
        let depth = q.get("depth").and_then(Value::as_u64).unwrap_or(1);
        let after = q.get("after").and_then(Value::as_str);
        let mut left = max_nodes - 1;
        fn fill(
            n: &mut Value,
            o: &Org,
            depth: u64,
            after: Option<&str>,
            asked: bool,
            left: &mut usize,
        ) {
            if depth == 0 {
                return;
            }
            for c in o
                .children
                .iter()
                .filter(|c| after.is_none_or(|a| c.code.as_str() > a))
            {
                let forced = asked && n["children"].as_array().unwrap().is_empty();
                if !forced && *left == 0 {
                    n[TRUNCATED] = json!(true);
                    return;
                }
                *left = left.saturating_sub(1);
                let mut child = shape(c);
                fill(&mut child, c, depth - 1, None, false, left);
                n["children"].as_array_mut().unwrap().push(child);
            }
        }
        let mut n = shape(o);
        fill(&mut n, o, depth, after, true, &mut left);
        n
    }

    fn has_flag(n: &Value) -> bool {
        n.get(TRUNCATED).is_some() || n["children"].as_array().unwrap().iter().any(has_flag)
    }

    /// Assembles `query` against [`answer`], returning the tree and the
    /// queries sent.
    async fn assembled(top: &Org, max_nodes: usize, query: Value) -> (Value, Vec<Value>) {
        let sent = RefCell::new(Vec::new());
        let tree = assemble(query, |q| {
            sent.borrow_mut().push(q.clone());
            let a = answer(top, max_nodes, &q);
            async move { Ok::<_, Infallible>(a) }
        })
        .await
        .unwrap();
        (tree, sent.into_inner())
    }

    #[tokio::test]
    async fn pages_cut_at_any_depth_are_put_together_into_the_whole_tree() {
        let top = org("T", &[4, 3, 5]);
        for depth in 0..=4 {
            for max_nodes in [1, 2, 3, 7, 20, 1_000] {
                let (tree, sent) =
                    assembled(&top, max_nodes, json!({"cycle": "c", "depth": depth})).await;
                assert_eq!(
                    tree,
                    whole(&top, depth),
                    "depth {depth}, {max_nodes} nodes per answer"
                );
                assert!(!has_flag(&tree));
                let first = answer(&top, max_nodes, &json!({"depth": depth}));
                if has_flag(&first) {
                    assert!(sent.len() > 1, "a cut answer is completed by pages");
                } else {
                    assert_eq!(sent.len(), 1, "a whole answer needs no page");
                }
                if depth > 0 && max_nodes < 5 {
                    assert!(has_flag(&first), "the case exercises paging");
                }
                for q in &sent[1..] {
                    assert_eq!(q["cycle"], json!("c"), "every page is of the same cycle");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_subtree_and_the_default_depth_are_assembled_too() {
        let top = org("T", &[3, 6, 2]);
        let (tree, _) = assembled(&top, 2, json!({"cycle": "c", "org": "T.02"})).await;
        assert_eq!(tree, whole(find(&top, "T.02").unwrap(), 1));
        let (tree, _) = assembled(&top, 4, json!({"cycle": "c", "org": "T.03", "depth": 9})).await;
        assert_eq!(tree, whole(find(&top, "T.03").unwrap(), 9));
    }

    #[tokio::test]
    async fn a_page_asks_for_the_children_after_the_last_one_held_with_the_levels_left() {
        let top = org("T", &[2, 3]);
        // Three nodes per answer: T, T.01, T.01.01 — both levels cut.
        let (_, sent) = assembled(&top, 3, json!({"cycle": "c", "depth": 2})).await;
        assert_eq!(sent[0], json!({"cycle": "c", "depth": 2}));
        assert_eq!(
            sent[1],
            json!({"cycle": "c", "org": "T", "depth": 2, "after": "T.01"})
        );
        assert!(
            sent.contains(&json!({"cycle": "c", "org": "T.01", "depth": 1, "after": "T.01.01"})),
            "{sent:#?}"
        );
    }

    #[tokio::test]
    async fn a_page_that_does_not_advance_is_an_error_not_a_loop() {
        let top = org("T", &[3]);
        // A service that ignores `after`: the same first page each time.
        let err = assemble(json!({"cycle": "c"}), |mut q: Value| {
            q.as_object_mut().unwrap().remove("after");
            let mut a = answer(&top, 2, &q);
            a[TRUNCATED] = json!(true);
            async move { Ok::<_, Infallible>(a) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, AssembleError::Stalled { after, .. } if after == "T.01"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_ask_is_returned_as_is() {
        let err = assemble(json!({"cycle": "c"}), |_| async { Err::<Value, _>("down") })
            .await
            .unwrap_err();
        assert!(matches!(err, AssembleError::Ask("down")), "{err:?}");
    }
}
