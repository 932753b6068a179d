//! W3C trace context between services: the `traceparent` that travels in NATS
//! headers and in event metadata, so that one dossier's journey from cell to
//! Central is one trace (`ARCHITECTURE.md` § Observability).
//!
//! The trace id of a span comes from the OpenTelemetry layer that
//! [`crate::telemetry::init`] installs. That layer is installed **whether or
//! not** an OTLP endpoint is configured: without an exporter, spans still get
//! real W3C trace and span ids (they are just not sent anywhere). So a trace id
//! always flows through commands, events and logs, and switching export on
//! later, or on only some services, yields whole traces. Without that layer
//! (a library test that never initialised telemetry) the functions here return
//! `None` or write nothing rather than inventing ids that no span carries.
//!
//! Producer side: [`inject`] (or [`current_traceparent`] for event metadata).
//! Consumer / command-handler side: create the handler span, then
//! [`set_parent`] or [`set_parent_from_headers`] **before entering it**, so
//! that the span and its children continue the caller's trace.
//!
//! [`TraceParent`] is the pure, validated form of the header value.

use std::fmt;
use std::str::FromStr;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// NATS header that carries the W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// NATS header that carries the W3C `tracestate` (vendor data, passed on).
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Length of a version-00 `traceparent`: `2 + 1 + 32 + 1 + 16 + 1 + 2`.
const TRACEPARENT_LEN: usize = 55;

/// A validated W3C `traceparent`: which trace, which span in it is the
/// parent, and whether the trace is sampled.
///
/// Displays as `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// Why a string is not a usable `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Not four `-`-separated fields of the right lengths.
    #[error("traceparent must be `00-<32 hex>-<16 hex>-<2 hex>`")]
    Format,
    /// The version is not two lowercase hex digits, or is the forbidden `ff`.
    #[error("traceparent version is invalid")]
    Version,
    /// The trace id is not 32 lowercase hex digits, or is all zeros.
    #[error("trace id must be 32 lowercase hex digits, not all zero")]
    TraceId,
    /// The parent span id is not 16 lowercase hex digits, or is all zeros.
    #[error("span id must be 16 lowercase hex digits, not all zero")]
    SpanId,
    /// The flags are not two lowercase hex digits.
    #[error("trace flags must be 2 lowercase hex digits")]
    Flags,
}

impl TraceParent {
    /// A trace parent from its parts; `None` when either id is the invalid
    /// all-zero id.
    pub fn new(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> Option<Self> {
        (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(Self {
            trace_id,
            span_id,
            flags: flags & TraceFlags::SAMPLED,
        })
    }

    /// Parses a header value per W3C Trace Context level 1. Surrounding
    /// whitespace is ignored; hex must be lowercase; a version above `00` may
    /// carry extra `-`-separated fields, which are ignored (forward
    /// compatibility, as the specification asks). Only the `sampled` flag is
    /// kept, as the OpenTelemetry propagator does.
    pub fn parse(s: &str) -> Result<Self, TraceParentError> {
        let s = s.trim();
        let version = s.get(0..2).ok_or(TraceParentError::Format)?;
        if !is_lower_hex(version) || version == "ff" {
            return Err(TraceParentError::Version);
        }
        let head = match (version, s.len()) {
            ("00", TRACEPARENT_LEN) => s,
            ("00", _) => return Err(TraceParentError::Format),
            // A later version: the first 55 characters keep their meaning,
            // and anything after them must start a new field.
            (_, n) if n == TRACEPARENT_LEN => s,
            (_, n) if n > TRACEPARENT_LEN && s.as_bytes()[TRACEPARENT_LEN] == b'-' => {
                &s[..TRACEPARENT_LEN]
            }
            _ => return Err(TraceParentError::Format),
        };
        let mut parts = head.split('-');
        let (Some(_), Some(trace), Some(span), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TraceParentError::Format);
        };
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return Err(TraceParentError::Format);
        }
        if !is_lower_hex(trace) {
            return Err(TraceParentError::TraceId);
        }
        if !is_lower_hex(span) {
            return Err(TraceParentError::SpanId);
        }
        if !is_lower_hex(flags) {
            return Err(TraceParentError::Flags);
        }
        let trace_id = TraceId::from_hex(trace).map_err(|_| TraceParentError::TraceId)?;
        let span_id = SpanId::from_hex(span).map_err(|_| TraceParentError::SpanId)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| TraceParentError::Flags)?;
        if trace_id == TraceId::INVALID {
            return Err(TraceParentError::TraceId);
        }
        if span_id == SpanId::INVALID {
            return Err(TraceParentError::SpanId);
        }
        Ok(Self {
            trace_id,
            span_id,
            flags: TraceFlags::new(flags) & TraceFlags::SAMPLED,
        })
    }

    /// A new root: random trace and span ids, sampled. For a command that
    /// starts outside any span (a CLI, a scheduled job) and still wants its
    /// work to be one trace.
    pub fn random() -> Self {
        let ids = RandomIdGenerator::default();
        // The generator may in theory return zero; draw again rather than
        // emit an invalid id (the chance is 2^-64 per draw).
        let mut trace_id = ids.new_trace_id();
        while trace_id == TraceId::INVALID {
            trace_id = ids.new_trace_id();
        }
        let mut span_id = ids.new_span_id();
        while span_id == SpanId::INVALID {
            span_id = ids.new_span_id();
        }
        Self {
            trace_id,
            span_id,
            flags: TraceFlags::SAMPLED,
        }
    }

    /// The trace parent of a span context; `None` when the context is invalid
    /// (no span, or no OpenTelemetry layer).
    pub fn from_span_context(cx: &SpanContext) -> Option<Self> {
        Self::new(cx.trace_id(), cx.span_id(), cx.trace_flags())
    }

    /// The trace id (32 hex digits when displayed).
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent span id (16 hex digits when displayed).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The trace flags (only `sampled` is kept).
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// Whether the caller sampled (records) this trace.
    pub fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }

    /// This parent as a remote span context, as a receiver sees it.
    pub fn to_span_context(&self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            true,
            TraceState::default(),
        )
    }

    /// An OpenTelemetry context whose (remote) parent is this one.
    pub fn to_context(&self) -> Context {
        Context::new().with_remote_span_context(self.to_span_context())
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            self.flags.to_u8()
        )
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `traceparent` of the current `tracing` span, to store in event
/// metadata or send with a command. `None` outside any span, or when the
/// OpenTelemetry layer is not installed (see the module docs).
pub fn current_traceparent() -> Option<String> {
    span_traceparent(&tracing::Span::current())
}

/// The `traceparent` of `span` (see [`current_traceparent`]).
pub fn span_traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let parent = TraceParent::from_span_context(cx.span().span_context())?;
    Some(parent.to_string())
}

/// Writes the current span's trace context (`traceparent`, and `tracestate`
/// when there is one) into NATS `headers`. Writes nothing when there is no
/// valid context: a receiver then starts its own trace.
pub fn inject(headers: &mut HeaderMap) {
    inject_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx`'s trace context into NATS `headers` (see [`inject`]).
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    // The propagator is used directly rather than through the global one:
    // W3C is our wire format, whatever a process set globally.
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The caller's trace context from NATS `headers`: a context with a remote
/// parent span, or an empty context when the headers carry no valid
/// `traceparent` (so the receiver starts a new trace).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the caller's span named by `traceparent`. Call it
/// right after creating the span and before entering it: children created
/// earlier keep the old trace. A malformed value leaves the span as it was
/// (it starts its own trace) and is reported so the caller can log it.
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> Result<(), TraceParentError> {
    let parent = TraceParent::parse(traceparent)?;
    span.set_parent(parent.to_context());
    Ok(())
}

/// Makes `span` a child of the caller's span carried in NATS `headers`
/// (`traceparent` and `tracestate`). Returns whether the headers carried a
/// valid context; when not, the span keeps its own new trace.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) -> bool {
    let cx = extract(headers);
    let found = cx.span().span_context().is_valid();
    if found {
        span.set_parent(cx);
    }
    found
}

/// Writes into an async-nats header map for the OpenTelemetry propagator.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is legal to omit and saves bytes per message.
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

/// Reads an async-nats header map for the OpenTelemetry propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // NATS header names are case-sensitive, but HTTP habits produce
        // `Traceparent`; accept any case, exact match first.
        self.0.get(key).map(|v| v.as_str()).or_else(|| {
            self.0
                .iter()
                .find(|(name, _)| {
                    let name: &str = name.as_ref();
                    name.eq_ignore_ascii_case(key)
                })
                .and_then(|(_, values)| values.first())
                .map(|v| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` under a subscriber with the OpenTelemetry layer over an SDK
    /// provider without exporter: ids are real, nothing is sent.
    fn with_otel<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_valid_traceparent_parses_and_displays_unchanged() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(
            tp.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(tp.span_id().to_string(), "00f067aa0ba902b7");
        assert!(tp.is_sampled());
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(VALID.parse::<TraceParent>().unwrap(), tp);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
        // Surrounding whitespace, as header values may carry, is ignored.
        assert_eq!(TraceParent::parse(&format!(" {VALID}\t")).unwrap(), tp);
    }

    #[test]
    fn later_versions_keep_the_known_fields() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let tp = TraceParent::parse(v1).unwrap();
        // Re-emitted as the version we speak.
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            Err(TraceParentError::Format)
        );
    }

    #[test]
    fn invalid_versions_are_refused() {
        for v in ["ff", "0g", "AB", "0-"] {
            let s = format!("{v}{}", &VALID[2..]);
            assert_eq!(
                TraceParent::parse(&s),
                Err(TraceParentError::Version),
                "{s}"
            );
        }
        // Version 00 allows nothing after the flags.
        assert_eq!(
            TraceParent::parse(&format!("{VALID}-extra")),
            Err(TraceParentError::Format)
        );
    }

    #[test]
    fn all_zero_ids_are_refused() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert_eq!(
            TraceParent::parse(zero_trace),
            Err(TraceParentError::TraceId)
        );
        assert_eq!(TraceParent::parse(zero_span), Err(TraceParentError::SpanId));
        assert_eq!(
            TraceParent::new(TraceId::INVALID, SpanId::from(1), TraceFlags::SAMPLED),
            None
        );
    }

    #[test]
    fn wrong_lengths_and_characters_are_refused() {
        let cases = [
            ("", TraceParentError::Format),
            ("00", TraceParentError::Format),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                TraceParentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b-01",
                TraceParentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                TraceParentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7-01",
                TraceParentError::Format,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::TraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bZ-01",
                TraceParentError::SpanId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                TraceParentError::Flags,
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(TraceParent::parse(s), Err(expected), "{s:?}");
        }
    }

    #[test]
    fn random_roots_are_valid_and_distinct() {
        let a = TraceParent::random();
        let b = TraceParent::random();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.is_sampled());
        assert_eq!(TraceParent::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn without_the_otel_layer_there_is_no_traceparent() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("plain");
            let _entered = span.enter();
            assert_eq!(current_traceparent(), None);
            let mut headers = HeaderMap::new();
            inject(&mut headers);
            assert!(headers.get(TRACEPARENT_HEADER).is_none());
        });
    }

    #[test]
    fn a_root_span_gets_a_fresh_valid_traceparent_and_children_share_its_trace() {
        with_otel(|| {
            assert_eq!(current_traceparent(), None, "no span, no trace");
            let root = tracing::info_span!("root");
            let _entered = root.enter();
            let root_tp = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            let child = tracing::info_span!("child");
            let _entered = child.enter();
            let child_tp = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            assert_eq!(child_tp.trace_id(), root_tp.trace_id());
            assert_ne!(child_tp.span_id(), root_tp.span_id());
        });
    }

    #[test]
    fn a_span_after_set_parent_continues_the_callers_trace() {
        with_otel(|| {
            let caller = TraceParent::parse(VALID).unwrap();
            let span = tracing::info_span!("approval.command.decide_batch");
            set_parent(&span, VALID).unwrap();
            let _entered = span.enter();
            let mine = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            assert_eq!(mine.trace_id(), caller.trace_id());
            assert_ne!(
                mine.span_id(),
                caller.span_id(),
                "a new span in the same trace"
            );
            assert!(mine.is_sampled(), "the caller's sampling decision is kept");

            // Children opened inside continue it too.
            let child = tracing::info_span!("approval.store.append");
            let _entered = child.enter();
            let grandchild = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            assert_eq!(grandchild.trace_id(), caller.trace_id());
        });
    }

    #[test]
    fn a_malformed_parent_is_reported_and_the_span_keeps_its_own_trace() {
        with_otel(|| {
            let span = tracing::info_span!("handler");
            assert_eq!(
                set_parent(&span, "00-garbage"),
                Err(TraceParentError::Format)
            );
            let _entered = span.enter();
            let mine = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            assert_ne!(
                mine.trace_id(),
                TraceParent::parse(VALID).unwrap().trace_id()
            );
        });
    }

    #[test]
    fn headers_carry_the_trace_from_producer_to_consumer() {
        with_otel(|| {
            let mut headers = HeaderMap::new();
            let producer = tracing::info_span!("producer");
            let sent = {
                let _entered = producer.enter();
                inject(&mut headers);
                current_traceparent().unwrap()
            };
            assert_eq!(headers.get(TRACEPARENT_HEADER).unwrap().as_str(), sent);
            // An empty tracestate is not written.
            assert!(headers.get(TRACESTATE_HEADER).is_none());

            let consumer = tracing::info_span!("consumer");
            assert!(set_parent_from_headers(&consumer, &headers));
            let _entered = consumer.enter();
            let received = TraceParent::parse(&current_traceparent().unwrap()).unwrap();
            assert_eq!(
                received.trace_id(),
                TraceParent::parse(&sent).unwrap().trace_id()
            );
        });
    }

    #[test]
    fn extract_reads_tracestate_and_any_header_case() {
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", VALID);
        headers.insert(TRACESTATE_HEADER, "vendor=abc");
        let cx = extract(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            TraceParent::from_span_context(sc).unwrap().to_string(),
            VALID
        );
        assert_eq!(sc.trace_state().get("vendor"), Some("abc"));

        let mut out = HeaderMap::new();
        inject_context(&cx, &mut out);
        assert_eq!(out.get(TRACEPARENT_HEADER).unwrap().as_str(), VALID);
        assert_eq!(out.get(TRACESTATE_HEADER).unwrap().as_str(), "vendor=abc");
    }

    #[test]
    fn headers_without_a_valid_parent_leave_the_span_alone() {
        let mut headers = HeaderMap::new();
        assert!(!extract(&headers).span().span_context().is_valid());
        headers.insert(TRACEPARENT_HEADER, "00-zz-zz-zz");
        with_otel(|| {
            let span = tracing::info_span!("consumer");
            assert!(!set_parent_from_headers(&span, &headers));
        });
    }
}
