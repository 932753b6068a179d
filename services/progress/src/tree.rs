//! The caller's side of a paged `progress.v1` tree: one answer is one NATS
//! message, so a large tree comes back cut ([`crate::queries::MAX_NODES`],
//! [`crate::queries::MAX_REPLY_BYTES`]) with the cut nodes flagged
//! `children_truncated`. [`assemble`] asks for the rest of each cut node's
//! children with `after` and puts the pages together, so readers without a
//! message limit (the portal's HTTP answers, the benchmark) get the whole
//! tree. A tree two or more levels deep is asked in [`RANGES`] ranges of the
//! top node's children at once (`after`/`until`), so the service builds and
//! encodes one range while the caller reads the one before. It knows nothing
//! of NATS: the caller passes how to ask. It works on typed nodes
//! ([`ProgressNode`]), so a caller reads each page once, straight into them
//! (`CommandClient::call_as`).

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use crate::queries::{ProgressNode, ProgressPageQuery, ProgressQuery};

/// How many ranges of the top node's children [`assemble`] asks for at
/// once, for a tree two or more levels deep.
pub const RANGES: usize = 4;

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
/// query and returning its answer. The result is what one answer without
/// limits would be: no node carries `children_truncated`.
///
/// A tree of one level (or none) is asked as it is. A deeper one is asked
/// in two steps: first the top node with its children alone (one level),
/// whose codes split the children into up to [`RANGES`] ranges of about as
/// many children each; then every range to the asked depth, all at once —
/// `{cycle, org, depth, after: the code before the range, until: its last
/// code}`, the last range open-ended, so children added meanwhile still
/// come — each range completed on its own (below) while the others are
/// asked. The ranges' children, in order, replace the first step's.
///
/// Every node flagged `children_truncated` with levels left below it is
/// asked for again — `{cycle, org: the node's org, depth: the levels left,
/// after: its last child's code}` (and a range's `until` for a range's top)
/// — and the page's children are appended, until a page comes back whole;
/// then the same is done in every child, so cuts at any depth are
/// completed.
///
/// `ask` is called for every query before its answer is awaited, so up to
/// [`RANGES`] of its futures are in flight at once.
///
/// Pages are separate reads: a tree that changes while it is assembled may
/// mix states of before and after the change, as two requests would.
pub async fn assemble<F, Fut, E>(
    query: ProgressQuery,
    ask: F,
) -> Result<ProgressNode, AssembleError<E>>
where
    F: FnMut(ProgressPageQuery) -> Fut,
    Fut: Future<Output = Result<ProgressNode, E>>,
{
    // Each range asks for its own pages; the lock is held only while `ask`
    // makes a future, never while one is awaited.
    let ask = Mutex::new(ask);
    let ask = |q: ProgressPageQuery| (ask.lock().unwrap_or_else(PoisonError::into_inner))(q);
    let cycle = query.cycle;
    let depth = query.depth.unwrap_or(1);
    if depth < 2 {
        let first = ProgressPageQuery {
            cycle,
            org: query.org,
            depth: query.depth,
            after: None,
            until: None,
        };
        let mut tree = ask(first).await.map_err(AssembleError::Ask)?;
        complete(&mut tree, cycle, depth, &ask).await?;
        return Ok(tree);
    }
    // The top node and its children, one level: the ranges' bounds.
    let mut tree = ask(ProgressPageQuery {
        cycle,
        org: query.org,
        depth: Some(1),
        after: None,
        until: None,
    })
    .await
    .map_err(AssembleError::Ask)?;
    complete(&mut tree, cycle, 1, &ask).await?;
    if tree.children.is_empty() {
        return Ok(tree);
    }
    let org = tree.org;
    let ranges = ranges(&tree.children).into_iter().map(|(after, until)| {
        let ask = &ask;
        async move {
            let range = |after: Option<String>| ProgressPageQuery {
                cycle,
                org: Some(org),
                depth: Some(depth),
                after,
                until: until.clone(),
            };
            let mut page = ask(range(after.clone()))
                .await
                .map_err(AssembleError::Ask)?;
            while page.children_truncated {
                let last = page.children.last().map(|c| c.code.clone());
                let more = ask(range(last.clone().or_else(|| after.clone())))
                    .await
                    .map_err(AssembleError::Ask)?;
                extend(&mut page, more, org, last)?;
            }
            complete(&mut page, cycle, depth, ask).await?;
            Ok(page.children)
        }
    });
    let ranges = futures::future::try_join_all(ranges).await?;
    tree.children = ranges.into_iter().flatten().collect();
    Ok(tree)
}

/// Up to [`RANGES`] runs of `children` (in code order) of about as many
/// children each, as `(after, until)`: after the run before's last code
/// (none for the first), up to the run's own last code (none for the last).
fn ranges(children: &[ProgressNode]) -> Vec<(Option<String>, Option<String>)> {
    let n = children.len();
    let count = n.min(RANGES);
    let mut out = Vec::with_capacity(count);
    let mut after: Option<String> = None;
    for i in 1..=count {
        // The run's end: the first `i` of `count` equal shares of `n`.
        let end = n * i / count;
        let until = (i < count).then(|| children[end - 1].code.clone());
        out.push((after.take(), until.clone()));
        after = until;
    }
    out
}

/// Adds `page`'s children to `node`'s, where `last` was its last child's
/// code when the page was asked: the page must move past it.
fn extend<E>(
    node: &mut ProgressNode,
    page: ProgressNode,
    org: gradeflow_proto::OrgId,
    last: Option<String>,
) -> Result<(), AssembleError<E>> {
    let more = page.children;
    // Each page must move past the last child held, or the caller would
    // ask for the same page for ever.
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
    node.children.extend(more);
    node.children_truncated = page.children_truncated;
    Ok(())
}

/// Completes every cut in `tree`, which carries `depth` levels of
/// children: each node flagged `children_truncated` with levels left below
/// it gets the rest of its children, page after page, then the same is done
/// in every child.
async fn complete<F, Fut, E>(
    tree: &mut ProgressNode,
    cycle: gradeflow_proto::CycleId,
    depth: u32,
    ask: &F,
) -> Result<(), AssembleError<E>>
where
    F: Fn(ProgressPageQuery) -> Fut,
    Fut: Future<Output = Result<ProgressNode, E>>,
{
    // Nodes still to visit: their path of child indexes from the top, and
    // the levels of children they carry.
    let mut pending: Vec<(Vec<usize>, u32)> = vec![(Vec::new(), depth)];
    while let Some((path, levels)) = pending.pop() {
        loop {
            let node = node_at(tree, &path);
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
                until: None,
            };
            let page = ask(page_query).await.map_err(AssembleError::Ask)?;
            extend(node_at(tree, &path), page, org, last)?;
        }
        let node = node_at(tree, &path);
        node.children_truncated = false;
        // Reversed, so the stack visits children in code order.
        for index in (0..node.children.len()).rev() {
            let mut child = path.clone();
            child.push(index);
            pending.push((child, levels.saturating_sub(1)));
        }
    }
    Ok(())
}

/// The node at `path` (child indexes from the top). Every path is one
/// [`complete`] made from the children present, which are only ever added
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
    use crate::queries::{NotReviewedReasons, Span, Totals};

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
            until: None,
        }
    }

    /// [`page`] of one range of the asked node's children.
    fn range(org: &str, depth: u32, after: Option<&str>, until: Option<&str>) -> ProgressPageQuery {
        ProgressPageQuery {
            until: until.map(str::to_owned),
            ..page(Some(org), Some(depth), after)
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
    /// flagged, the asked node's first child always present, `after` and
    /// `until` filtering the asked node's own children.
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
            span: Span<'_>,
            asked: bool,
            left: &mut usize,
        ) {
            if depth == 0 {
                return;
            }
            for c in o.children.iter().filter(|c| span.holds(&c.code)) {
                let forced = asked && n.children.is_empty();
                if !forced && *left == 0 {
                    n.children_truncated = true;
                    return;
                }
                *left = left.saturating_sub(1);
                let mut child = shape(c);
                fill(&mut child, c, depth - 1, Span::ALL, false, left);
                n.children.push(child);
            }
        }
        let mut n = shape(o);
        fill(&mut n, o, q.depth.unwrap_or(1), q.span(), true, &mut left);
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
                if depth >= 2 {
                    // The top's children (4, in one page from 5 nodes on),
                    // then four ranges, plus what was cut.
                    assert_eq!(sent[0], page(None, Some(1), None));
                    let ranges = sent.iter().filter(|q| q.depth == Some(depth)).count();
                    assert!(ranges >= RANGES, "{sent:#?}");
                    if max_nodes >= 1_000 {
                        assert_eq!(sent.len(), 1 + RANGES, "no range is cut");
                    }
                } else if has_flag(&first) {
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
        let top = org("T", &[5, 3]);
        // One level, three nodes per answer: T, T.01, T.02, then the rest.
        let (_, sent) = assembled(&top, 3, query(None, Some(1))).await;
        assert_eq!(sent[0], page(None, Some(1), None));
        assert_eq!(sent[1], page(Some("T"), Some(1), Some("T.02")));
        assert_eq!(sent[2], page(Some("T"), Some(1), Some("T.04")));
        assert_eq!(sent.len(), 3);
        // Two levels: the cut T.01 gets the rest of its children, one level.
        let (_, sent) = assembled(&top, 3, query(None, Some(2))).await;
        assert!(
            sent.contains(&page(Some("T.01"), Some(1), Some("T.01.01"))),
            "{sent:#?}"
        );
    }

    #[tokio::test]
    async fn a_deep_tree_is_asked_in_ranges_of_the_top_childrens_codes_at_once() {
        let top = org("T", &[8, 3]);
        let (tree, sent) = assembled(&top, 1_000, query(None, Some(2))).await;
        assert_eq!(tree, whole(&top, 2));
        assert_eq!(
            sent,
            [
                page(None, Some(1), None),
                range("T", 2, None, Some("T.02")),
                range("T", 2, Some("T.02"), Some("T.04")),
                range("T", 2, Some("T.04"), Some("T.06")),
                range("T", 2, Some("T.06"), None),
            ]
        );
        // Three nodes per answer: the top's children come in pages first,
        // and a range cut at its top goes on within the range.
        let (tree, sent) = assembled(&top, 3, query(None, Some(2))).await;
        assert_eq!(tree, whole(&top, 2));
        assert_eq!(sent[1], page(Some("T"), Some(1), Some("T.02")));
        assert!(
            sent.contains(&range("T", 2, Some("T.01"), Some("T.02"))),
            "{sent:#?}"
        );
        assert!(
            sent.contains(&range("T", 2, Some("T.07"), None)),
            "{sent:#?}"
        );
        // Fewer children than ranges: one range each.
        let top = org("T", &[2, 1]);
        let (tree, sent) = assembled(&top, 1_000, query(None, Some(3))).await;
        assert_eq!(tree, whole(&top, 3));
        assert_eq!(
            sent[1..],
            [
                range("T", 3, None, Some("T.01")),
                range("T", 3, Some("T.01"), None),
            ]
        );
        // No children: the first answer is the tree.
        let top = org("T", &[]);
        let (tree, sent) = assembled(&top, 1_000, query(None, Some(2))).await;
        assert_eq!(tree, whole(&top, 2));
        assert_eq!(sent.len(), 1);
    }

    #[test]
    fn the_ranges_split_the_children_into_runs_that_cover_each_once() {
        for n in 1..=13 {
            let top = org("T", &[n]);
            let children: Vec<ProgressNode> = top.children.iter().map(shape).collect();
            let spans = ranges(&children);
            assert_eq!(spans.len(), n.min(RANGES));
            let sizes: Vec<usize> = spans
                .iter()
                .map(|(after, until)| {
                    let span = Span {
                        after: after.as_deref(),
                        until: until.as_deref(),
                    };
                    children.iter().filter(|c| span.holds(&c.code)).count()
                })
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {spans:?}");
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{n}: {sizes:?}");
            // Any code at all falls in exactly one range: a child added
            // between two of them comes once.
            for code in ["A", "T.00", "T.015", "T.05x", "T.99", "U"] {
                let holding = spans
                    .iter()
                    .filter(|(after, until)| {
                        let span = Span {
                            after: after.as_deref(),
                            until: until.as_deref(),
                        };
                        span.holds(code)
                    })
                    .count();
                assert_eq!(holding, 1, "{code} in {spans:?}");
            }
        }
    }

    #[tokio::test]
    async fn the_ranges_are_in_flight_together() {
        let top = org("T", &[9, 2]);
        let in_flight = std::cell::Cell::new(0usize);
        let most = std::cell::Cell::new(0usize);
        let tree = assemble(query(None, Some(2)), |q| {
            let a = answer(&top, 1_000, &q);
            let (in_flight, most) = (&in_flight, &most);
            async move {
                in_flight.set(in_flight.get() + 1);
                most.set(most.get().max(in_flight.get()));
                // Let the other asks start before this one answers.
                tokio::task::yield_now().await;
                in_flight.set(in_flight.get() - 1);
                Ok::<_, Infallible>(a)
            }
        })
        .await
        .unwrap();
        assert_eq!(tree, whole(&top, 2));
        assert_eq!(most.get(), RANGES);
    }

    #[tokio::test]
    async fn a_child_added_between_the_first_answer_and_the_ranges_comes_once() {
        let before = org("T", &[6, 1]);
        let mut after = before.clone();
        // A new child between T.03 and T.04, and one after the last.
        for code in ["T.035", "T.07"] {
            after.children.push(Org {
                code: code.to_owned(),
                children: vec![org(&format!("{code}.01"), &[])],
            });
        }
        after.children.sort_by(|a, b| a.code.cmp(&b.code));
        let asked = RefCell::new(0);
        let tree = assemble(query(None, Some(2)), |q| {
            let n = asked.replace_with(|n| *n + 1);
            let a = answer(if n == 0 { &before } else { &after }, 1_000, &q);
            async move { Ok::<_, Infallible>(a) }
        })
        .await
        .unwrap();
        assert_eq!(tree.children, whole(&after, 2).children);
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
        // A range that fails fails the tree, whatever the others answered.
        let top = org("T", &[5, 2]);
        for failing in [0, 2, 4] {
            let asked = RefCell::new(0);
            let err = assemble(query(None, Some(2)), |q| {
                let n = asked.replace_with(|n| *n + 1);
                let a = answer(&top, 1_000, &q);
                async move {
                    if n == failing {
                        Err("down")
                    } else {
                        Ok(a)
                    }
                }
            })
            .await
            .unwrap_err();
            assert!(matches!(err, AssembleError::Ask("down")), "{err:?}");
        }
    }

    #[tokio::test]
    async fn a_range_that_does_not_advance_is_an_error_not_a_loop() {
        let top = org("T", &[3, 2]);
        // A service that ignores `after` for the ranges: the first child of
        // each range, cut, each time.
        let err = assemble(query(None, Some(2)), |mut q: ProgressPageQuery| {
            let ranged = q.depth == Some(2);
            if ranged {
                q.after = None;
            }
            let mut a = answer(&top, 2, &q);
            a.children_truncated |= ranged;
            async move { Ok::<_, Infallible>(a) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, AssembleError::Stalled { after, .. } if after == "T.01"),
            "{err:?}"
        );
    }
}
