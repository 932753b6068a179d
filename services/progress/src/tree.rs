//! The caller's side of a paged `progress.v1` tree: one answer is one NATS
//! message, so a large tree comes back cut ([`crate::queries::MAX_NODES`],
//! [`crate::queries::MAX_REPLY_BYTES`]) with the cut nodes flagged
//! `children_truncated`. [`assemble`] asks for the rest of each cut node's
//! children with `after` and puts the pages together, so readers without a
//! message limit (the portal's HTTP answers, the benchmark) get the whole
//! tree. It knows nothing of NATS: the caller passes how to ask. It works on
//! typed nodes ([`ProgressNode`]), so a caller reads each page once, straight
//! into them (`CommandClient::call_as`).

use std::future::Future;

use crate::queries::{ProgressNode, ProgressPageQuery, ProgressQuery};

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
}

/// The whole tree `query` asks for, with `ask` sending one `progress.v1`
/// query and returning its answer. Every node flagged `children_truncated`
/// with levels left below it is asked for again — `{cycle, org: the node's
/// org, depth: the levels left, after: its last child's code}` — and the
/// page's children are appended, until a page comes back whole; then the
/// same is done in every child, so cuts at any depth are completed. The
/// result is what one answer without limits would be: no node carries
/// `children_truncated`.
///
/// Pages are separate reads: a tree that changes while it is assembled may
/// mix states of before and after the change, as two requests would.
pub async fn assemble<F, Fut, E>(
    query: ProgressQuery,
    mut ask: F,
) -> Result<ProgressNode, AssembleError<E>>
where
    F: FnMut(ProgressPageQuery) -> Fut,
    Fut: Future<Output = Result<ProgressNode, E>>,
{
    let cycle = query.cycle;
    let depth = query.depth.unwrap_or(1);
    let first = ProgressPageQuery {
        cycle,
        org: query.org,
        depth: query.depth,
        after: None,
    };
    let mut tree = ask(first).await.map_err(AssembleError::Ask)?;
    // Nodes still to visit: their path of child indexes from the top, and
    // the levels of children they carry.
    let mut pending: Vec<(Vec<usize>, u32)> = vec![(Vec::new(), depth)];
    while let Some((path, levels)) = pending.pop() {
        loop {
            let node = node_at(&mut tree, &path);
            if levels == 0 || !node.children_truncated {
                break;
            }
            let org = node.org;
            let last = node.children.last().map(|c| c.code.clone());
            let page_query = ProgressPageQuery {
                cycle,
                org: Some(org),
                depth: Some(levels),
                after: last.clone(),
            };
            let page = ask(page_query).await.map_err(AssembleError::Ask)?;
            let more = page.children;
            // Each page must move past the last child held, or the loop
            // would ask for the same page for ever.
            let advances = match (more.first(), &last) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(first), Some(after)) => first.code.as_str() > after.as_str(),
            };
            if !advances && (page.children_truncated || !more.is_empty()) {
                return Err(AssembleError::Stalled {
                    org: org.to_string(),
                    after: last.unwrap_or_else(|| "none".to_owned()),
                });
            }
            let node = node_at(&mut tree, &path);
            node.children.extend(more);
            node.children_truncated = page.children_truncated;
        }
        let node = node_at(&mut tree, &path);
        node.children_truncated = false;
        // Reversed, so the stack visits children in code order.
        for index in (0..node.children.len()).rev() {
            let mut child = path.clone();
            child.push(index);
            pending.push((child, levels.saturating_sub(1)));
        }
    }
    Ok(tree)
}

/// The node at `path` (child indexes from the top). Every path is one
/// [`assemble`] made from the children present, which are only ever added
/// to, so it always leads to a node.
fn node_at<'t>(tree: &'t mut ProgressNode, path: &[usize]) -> &'t mut ProgressNode {
    path.iter()
        .fold(tree, |node, &index| &mut node.children[index])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use gradeflow_proto::{CycleId, OrgId, Tier};
    use uuid::Uuid;

    use super::*;
    use crate::queries::{NotReviewedReasons, Totals};

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

    /// The org id of a code (the same code, the same id).
    fn id(code: &str) -> OrgId {
        OrgId(Uuid::new_v5(&Uuid::NAMESPACE_OID, code.as_bytes()))
    }

    fn find(top: &Org, org: OrgId) -> Option<&Org> {
        if id(&top.code) == org {
            return Some(top);
        }
        top.children.iter().find_map(|c| find(c, org))
    }

    fn cycle() -> CycleId {
        CycleId(Uuid::nil())
    }

    fn query(org: Option<&str>, depth: Option<u32>) -> ProgressQuery {
        ProgressQuery {
            cycle: cycle(),
            org: org.map(id),
            depth,
        }
    }

    fn page(org: Option<&str>, depth: Option<u32>, after: Option<&str>) -> ProgressPageQuery {
        ProgressPageQuery {
            cycle: cycle(),
            org: org.map(id),
            depth,
            after: after.map(str::to_owned),
        }
    }

    /// A node as the service shapes it, without children.
    fn shape(o: &Org) -> ProgressNode {
        ProgressNode {
            org: id(&o.code),
            code: o.code.clone(),
            name: o.code.clone(),
            tier: Tier::new("cell"),
            deadline: None,
            overdue: false,
            complete: false,
            percent: 0.0,
            totals: Totals {
                subjects: 1,
                ..Totals::default()
            },
            not_reviewed_reasons: NotReviewedReasons::default(),
            grades: BTreeMap::new(),
            quota_groups: Vec::new(),
            authority_quota_groups: Vec::new(),
            children_truncated: false,
            children: Vec::new(),
        }
    }

    /// The answer of a service with no limits.
    fn whole(o: &Org, depth: u32) -> ProgressNode {
        let mut n = shape(o);
        if depth > 0 {
            n.children = o.children.iter().map(|c| whole(c, depth - 1)).collect();
        }
        n
    }

    /// The answer of a service that carries at most `max_nodes` nodes per
    /// answer, cutting as `progress.v1` does: depth first, the cut node
    /// flagged, the asked node's first child always present, `after`
    /// filtering the asked node's own children.
    fn answer(top: &Org, max_nodes: usize, q: &ProgressPageQuery) -> ProgressNode {
        let o = match q.org {
            Some(org) => find(top, org).unwrap(),
            None => top,
        };
        let mut left = max_nodes - 1;
        fn fill(
            n: &mut ProgressNode,
            o: &Org,
            depth: u32,
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
                let forced = asked && n.children.is_empty();
                if !forced && *left == 0 {
                    n.children_truncated = true;
                    return;
                }
                *left = left.saturating_sub(1);
                let mut child = shape(c);
                fill(&mut child, c, depth - 1, None, false, left);
                n.children.push(child);
            }
        }
        let mut n = shape(o);
        fill(
            &mut n,
            o,
            q.depth.unwrap_or(1),
            q.after.as_deref(),
            true,
            &mut left,
        );
        n
    }

    fn has_flag(n: &ProgressNode) -> bool {
        n.children_truncated || n.children.iter().any(has_flag)
    }

    /// Assembles `query` against [`answer`], returning the tree and the
    /// queries sent.
    async fn assembled(
        top: &Org,
        max_nodes: usize,
        query: ProgressQuery,
    ) -> (ProgressNode, Vec<ProgressPageQuery>) {
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
                let (tree, sent) = assembled(&top, max_nodes, query(None, Some(depth))).await;
                assert_eq!(
                    tree,
                    whole(&top, depth),
                    "depth {depth}, {max_nodes} nodes per answer"
                );
                assert!(!has_flag(&tree));
                let first = answer(&top, max_nodes, &page(None, Some(depth), None));
                if has_flag(&first) {
                    assert!(sent.len() > 1, "a cut answer is completed by pages");
                } else {
                    assert_eq!(sent.len(), 1, "a whole answer needs no page");
                }
                if depth > 0 && max_nodes < 5 {
                    assert!(has_flag(&first), "the case exercises paging");
                }
                for q in &sent[1..] {
                    assert_eq!(q.cycle, cycle(), "every page is of the same cycle");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_subtree_and_the_default_depth_are_assembled_too() {
        let top = org("T", &[3, 6, 2]);
        let (tree, _) = assembled(&top, 2, query(Some("T.02"), None)).await;
        assert_eq!(tree, whole(find(&top, id("T.02")).unwrap(), 1));
        let (tree, _) = assembled(&top, 4, query(Some("T.03"), Some(9))).await;
        assert_eq!(tree, whole(find(&top, id("T.03")).unwrap(), 9));
    }

    #[tokio::test]
    async fn a_page_asks_for_the_children_after_the_last_one_held_with_the_levels_left() {
        let top = org("T", &[2, 3]);
        // Three nodes per answer: T, T.01, T.01.01 — both levels cut.
        let (_, sent) = assembled(&top, 3, query(None, Some(2))).await;
        assert_eq!(sent[0], page(None, Some(2), None));
        assert_eq!(sent[1], page(Some("T"), Some(2), Some("T.01")));
        assert!(
            sent.contains(&page(Some("T.01"), Some(1), Some("T.01.01"))),
            "{sent:#?}"
        );
    }

    #[tokio::test]
    async fn a_page_that_does_not_advance_is_an_error_not_a_loop() {
        let top = org("T", &[3]);
        // A service that ignores `after`: the same first page each time.
        let err = assemble(query(None, None), |mut q: ProgressPageQuery| {
            q.after = None;
            let mut a = answer(&top, 2, &q);
            a.children_truncated = true;
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
        let err = assemble(query(None, None), |_| async {
            Err::<ProgressNode, _>("down")
        })
        .await
        .unwrap_err();
        assert!(matches!(err, AssembleError::Ask("down")), "{err:?}");
    }
}
