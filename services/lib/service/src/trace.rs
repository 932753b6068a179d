//! The dossier's trace (`ARCHITECTURE.md` § Observability): one trace id
//! spans a dossier's journey from its self-review to its decision, across
//! every service.
//!
//! A dossier's trace is the `traceparent` of its first
//! `self_review_submitted` event: the self-review command's own, or a new
//! root when the command carried none. Each service's model remembers it
//! from the stored event (own or observed copy), and every later event
//! about the dossier is stamped with [`child_of`] it — the same trace id and
//! a fresh span id — through [`crate::Emit::in_trace`], whatever the trace
//! of the command or event that caused it. Events about no single dossier
//! keep the trace of their cause.

use gradeflow_kit::TraceParent;

/// A `traceparent` in the trace of `traceparent`, with a fresh random span
/// id and the same sampling decision. A value that is not a valid W3C
/// `traceparent` has no trace to continue: the result is then a new root.
/// Either way the result is a valid version-00 `traceparent`.
pub fn child_of(traceparent: &str) -> String {
    let fresh = TraceParent::random();
    TraceParent::parse(traceparent)
        .ok()
        .and_then(|parent| TraceParent::new(parent.trace_id(), fresh.span_id(), parent.flags()))
        .unwrap_or(fresh)
        .to_string()
}

/// A new root: random trace and span ids, sampled. For a dossier whose
/// first self-review command carried no (valid) trace.
pub fn new_root() -> String {
    TraceParent::random().to_string()
}

/// `traceparent` when it is a valid W3C `traceparent`, else `None`: what a
/// model may record as a dossier's trace.
pub fn valid(traceparent: Option<&str>) -> Option<&str> {
    traceparent.filter(|tp| TraceParent::parse(tp).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_and_the_flags_with_a_fresh_span() {
        let parent = TraceParent::parse(PARENT).unwrap();
        let a = TraceParent::parse(&child_of(PARENT)).unwrap();
        let b = TraceParent::parse(&child_of(PARENT)).unwrap();
        assert_eq!(a.trace_id(), parent.trace_id());
        assert_eq!(b.trace_id(), parent.trace_id());
        assert_ne!(a.span_id(), parent.span_id());
        assert_ne!(a.span_id(), b.span_id(), "each child gets its own span");
        assert!(a.is_sampled());

        let unsampled = PARENT.replace("-01", "-00");
        let c = TraceParent::parse(&child_of(&unsampled)).unwrap();
        assert_eq!(c.trace_id(), parent.trace_id());
        assert!(!c.is_sampled(), "the parent's sampling decision is kept");
    }

    #[test]
    fn a_child_is_a_version_00_traceparent() {
        let child = child_of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future");
        assert_eq!(child.len(), 55);
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
    }

    #[test]
    fn an_invalid_parent_starts_a_new_trace() {
        for bad in [
            "",
            "00-garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let child = TraceParent::parse(&child_of(bad)).unwrap();
            assert_ne!(
                child.trace_id(),
                TraceParent::parse(PARENT).unwrap().trace_id(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn new_roots_are_valid_and_distinct() {
        let (a, b) = (new_root(), new_root());
        let (pa, pb) = (
            TraceParent::parse(&a).unwrap(),
            TraceParent::parse(&b).unwrap(),
        );
        assert_ne!(pa.trace_id(), pb.trace_id());
        assert!(pa.is_sampled());
    }

    #[test]
    fn only_valid_traceparents_are_kept() {
        assert_eq!(valid(Some(PARENT)), Some(PARENT));
        assert_eq!(valid(Some("00-garbage")), None);
        assert_eq!(valid(None), None);
    }
}
