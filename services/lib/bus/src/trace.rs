//! W3C trace context (`traceparent`, `tracestate`) carried in NATS headers.
//!
//! The trace context travels with every event and command so that one
//! dossier's journey across services is one trace (`ARCHITECTURE.md`
//! § Observability). This module is pure string handling: it validates and
//! moves the two header values; wiring them to OpenTelemetry spans lives in
//! `gradeflow-kit`.

use async_nats::HeaderMap;

/// Header that carries the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// Header that carries the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context: a validated `traceparent` and an optional
/// `tracestate` (vendor data, passed through untouched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// A context from a `traceparent` value, or `None` when the value is not
    /// a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids
    /// not all zero). A malformed value is dropped rather than forwarded:
    /// receivers would discard it anyway.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let traceparent = traceparent.trim();
        is_valid_traceparent(traceparent).then(|| Self {
            traceparent: traceparent.to_owned(),
            tracestate: None,
        })
    }

    /// The same context with a `tracestate`; a value that could not travel in
    /// a header (control characters) or is empty is dropped.
    pub fn with_state(mut self, tracestate: &str) -> Self {
        let tracestate = tracestate.trim();
        self.tracestate = (!tracestate.is_empty() && !tracestate.chars().any(char::is_control))
            .then(|| tracestate.to_owned());
        self
    }

    /// The context carried by `headers`, if any (and well-formed).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let parent = headers.get(TRACEPARENT)?;
        let ctx = Self::parse(parent.as_str())?;
        Some(match headers.get(TRACESTATE) {
            Some(state) => ctx.with_state(state.as_str()),
            None => ctx,
        })
    }

    /// Writes the context into `headers`, replacing any earlier values.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent.as_str());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.as_str());
        }
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        // Validated in `parse`: the trace id sits at bytes 3..35.
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The 16-hex-digit parent (span) id.
    pub fn parent_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }
}

/// Sets the `traceparent` header from an optional value (as found in an
/// envelope). Nothing is written when the value is absent or malformed.
pub fn inject_traceparent(headers: &mut HeaderMap, traceparent: Option<&str>) {
    if let Some(ctx) = traceparent.and_then(TraceContext::parse) {
        ctx.inject(headers);
    }
}

/// The well-formed `traceparent` carried by a message's headers, if any.
pub fn extract_traceparent(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(TraceContext::from_headers)
        .map(|ctx| ctx.traceparent)
}

/// Whether `s` is a W3C `traceparent`: `vv-<32 hex>-<16 hex>-<2 hex>` in
/// lower case, version not `ff`, trace and parent ids not all zeros. Future
/// versions may append fields after another `-`; those are accepted as the
/// spec asks.
pub fn is_valid_traceparent(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = match version {
        // Version 00 has exactly four fields.
        "00" => parts.next().is_none(),
        _ => true,
    };
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
    rest_ok
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_through_headers() {
        let mut h = HeaderMap::new();
        TraceContext::parse(TP)
            .unwrap()
            .with_state("congo=t61rcWkgMzE")
            .inject(&mut h);
        let back = TraceContext::from_headers(&h).unwrap();
        assert_eq!(back.traceparent(), TP);
        assert_eq!(back.tracestate(), Some("congo=t61rcWkgMzE"));
        assert_eq!(back.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(back.parent_id(), "00f067aa0ba902b7");
        assert_eq!(extract_traceparent(Some(&h)).as_deref(), Some(TP));
    }

    #[test]
    fn malformed_traceparents_are_not_forwarded() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?} accepted");
            let mut h = HeaderMap::new();
            inject_traceparent(&mut h, Some(bad));
            assert!(h.get(TRACEPARENT).is_none());
        }
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
    }
}
