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
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

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

/// A dossier's trace as a model keeps it: the trace id, span id and flags
/// of a valid `traceparent`, 25 bytes in the record rather than a string of
/// 55 (models keep one per dossier). [`PackedTrace::traceparent`] gives it
/// back as a version-00 `traceparent`, which [`child_of`] continues exactly
/// as it would the one recorded: a child keeps only the trace id and flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PackedTrace([u8; 25]);

impl PackedTrace {
    /// Packs `traceparent` if it is a valid W3C `traceparent` (what
    /// [`valid`] accepts); `None` otherwise.
    pub fn pack(traceparent: &str) -> Option<Self> {
        let tp = TraceParent::parse(traceparent).ok()?;
        let mut bytes = [0u8; 25];
        bytes[..16].copy_from_slice(&tp.trace_id().to_bytes());
        bytes[16..24].copy_from_slice(&tp.span_id().to_bytes());
        bytes[24] = tp.flags().to_u8();
        Some(Self(bytes))
    }

    /// The version-00 `traceparent` of the trace.
    pub fn traceparent(&self) -> String {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&self.0[..16]);
        span_id.copy_from_slice(&self.0[16..24]);
        // Packed from a valid traceparent, so the ids are not zero and
        // `new` accepts them; the fallback is never taken.
        TraceParent::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::new(self.0[24]),
        )
        .map_or_else(new_root, |tp| tp.to_string())
    }
}

impl std::fmt::Debug for PackedTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PackedTrace")
            .field(&self.traceparent())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_packed_trace_gives_back_its_traceparent_and_refuses_what_is_not_one() {
        for tp in [
            PARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ] {
            let packed = PackedTrace::pack(tp).unwrap();
            assert_eq!(packed.traceparent(), tp);
            assert_eq!(std::mem::size_of::<Option<PackedTrace>>(), 26);
        }
        // A later version with more fields: the same trace, span and flags,
        // which a child continues.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-follows";
        assert_eq!(valid(Some(later)), Some(later));
        let packed = PackedTrace::pack(later).unwrap();
        assert_eq!(
            packed.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        let child = child_of(&packed.traceparent());
        assert_eq!(&child[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_eq!(&child[52..], "-00");
        for bad in [
            "",
            "not a traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            &PARENT[..54],
            "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
        ] {
            assert_eq!(PackedTrace::pack(bad), None, "{bad}");
        }
    }

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
