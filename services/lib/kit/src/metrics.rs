//! A small registry of named counters and gauges, rendered in the Prometheus
//! text exposition format on `/metrics` (`ARCHITECTURE.md` § Observability:
//! events appended, consumer lag, batch sizes, rejected commands).
//!
//! Deliberately tiny: services take a [`Counter`] or [`Gauge`] handle once,
//! at wiring time, and then only touch an atomic on the hot path: no lock,
//! no allocation, no map lookup per event. The registry's lock is taken only
//! to register a series and to render a scrape.
//!
//! Registering the same name and labels twice returns the same series, so
//! two replicas of a handler in one process (`gradeflow up`) add up instead
//! of hiding each other.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Events appended to an event store (counter; label `service`).
pub const EVENTS_APPENDED: &str = "gradeflow_events_appended_total";
/// Append batches committed by a store writer (counter; label `service`).
/// `events_appended / append_batches` is the mean batch size.
pub const APPEND_BATCHES: &str = "gradeflow_append_batches_total";
/// Size of the last committed append batch (gauge; label `service`).
pub const LAST_BATCH_SIZE: &str = "gradeflow_append_last_batch_size";
/// Messages a durable consumer has yet to process (gauge; label `consumer`).
pub const CONSUMER_LAG: &str = "gradeflow_consumer_lag";
/// Commands rejected (counter; labels `service`, `code`).
pub const COMMANDS_REJECTED: &str = "gradeflow_commands_rejected_total";
/// Commands accepted (counter; labels `service`, `command`).
pub const COMMANDS_ACCEPTED: &str = "gradeflow_commands_accepted_total";
/// Messages sent to the dead-letter subject (counter; label `consumer`).
pub const DEAD_LETTERS: &str = "gradeflow_dead_letters_total";

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count. Cheap to clone; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        // Relaxed: the value is only ever read whole by a scrape, nothing is
        // ordered against it.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

#[derive(Debug, Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
}

/// Sorted label pairs, so `{a,b}` and `{b,a}` are one series.
type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<Labels, Series>,
}

/// The registry. Cheap to clone (one `Arc`); share one per process and hand
/// it to every component and to [`crate::health::router`].
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name` without labels (see [`Metrics::counter_with`]).
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// The counter `name{labels}`, registered on first use. Names and label
    /// names are sanitised to Prometheus' alphabet (invalid characters become
    /// `_`). If `name` is already a gauge, the counter returned is detached
    /// (counts, but is never rendered) and a warning is logged: a wiring
    /// mistake should show up in logs, not take a service down.
    pub fn counter_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.series(name, help, labels, Kind::Counter) {
            Some(Series::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    /// The gauge `name` without labels (see [`Metrics::gauge_with`]).
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name{labels}`, registered on first use; same rules as
    /// [`Metrics::counter_with`].
    pub fn gauge_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(name, help, labels, Kind::Gauge) {
            Some(Series::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
    ) -> Option<Series> {
        let name = sanitise(name, true);
        let mut labels: Labels = labels
            .iter()
            .map(|(k, v)| (sanitise(k, false), (*v).to_owned()))
            .collect();
        labels.sort();
        // A poisoned lock only means another thread panicked mid-update of a
        // map of atomics; the map itself is still consistent, so go on.
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let family = families.entry(name.clone()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            tracing::warn!(
                metric = %name,
                registered = family.kind.as_str(),
                requested = kind.as_str(),
                "metric registered with another type; this handle is not exported"
            );
            return None;
        }
        let series = family.series.entry(labels).or_insert_with(|| match kind {
            Kind::Counter => Series::Counter(Counter::default()),
            Kind::Gauge => Series::Gauge(Gauge::default()),
        });
        Some(series.clone())
    }

    /// Every series in the Prometheus text exposition format (version 0.0.4),
    /// families sorted by name so scrapes diff cleanly.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for (name, family) in families.iter() {
            // `write!` into a String cannot fail; the results are ignored.
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, series) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = match series {
                    Series::Counter(c) => writeln!(out, " {}", c.get()),
                    Series::Gauge(g) => writeln!(out, " {}", g.get()),
                };
            }
        }
        out
    }
}

/// Maps `s` into `[a-zA-Z_:][a-zA-Z0-9_:]*` (metric names) or
/// `[a-zA-Z_][a-zA-Z0-9_]*` (label names).
fn sanitise(s: &str, metric: bool) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_and_gauges_render_in_prometheus_text_format() {
        let m = Metrics::new();
        let appended = m.counter_with(
            EVENTS_APPENDED,
            "Events appended.",
            &[("service", "approval")],
        );
        appended.add(41);
        appended.inc();
        let lag = m.gauge_with(
            CONSUMER_LAG,
            "Pending messages.",
            &[("consumer", "progress")],
        );
        lag.set(7);
        lag.dec();

        assert_eq!(
            m.render(),
            "# HELP gradeflow_consumer_lag Pending messages.\n\
             # TYPE gradeflow_consumer_lag gauge\n\
             gradeflow_consumer_lag{consumer=\"progress\"} 6\n\
             # HELP gradeflow_events_appended_total Events appended.\n\
             # TYPE gradeflow_events_appended_total counter\n\
             gradeflow_events_appended_total{service=\"approval\"} 42\n"
        );
    }

    #[test]
    fn the_same_name_and_labels_share_one_series_whatever_the_label_order() {
        let m = Metrics::new();
        let a = m.counter_with(
            COMMANDS_REJECTED,
            "h",
            &[("service", "s"), ("code", "quota")],
        );
        let b = m.counter_with(
            COMMANDS_REJECTED,
            "h",
            &[("code", "quota"), ("service", "s")],
        );
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
        let other = m.counter_with(
            COMMANDS_REJECTED,
            "h",
            &[("service", "s"), ("code", "late")],
        );
        other.inc();
        let text = m.render();
        assert!(
            text.contains("gradeflow_commands_rejected_total{code=\"quota\",service=\"s\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gradeflow_commands_rejected_total{code=\"late\",service=\"s\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 1);
    }

    #[test]
    fn a_type_clash_yields_a_detached_handle() {
        let m = Metrics::new();
        m.counter("x_total", "h").inc();
        let g = m.gauge("x_total", "h");
        g.set(99);
        assert!(m.render().contains("x_total 1\n"));
        assert!(!m.render().contains("99"));
    }

    #[test]
    fn names_are_sanitised_and_label_values_escaped() {
        let m = Metrics::new();
        m.gauge_with("9bad-name", "a\\b\nc", &[("la-bel", "q\"uo\\te\n")])
            .set(-3);
        let text = m.render();
        assert!(text.contains("# HELP _9bad_name a\\\\b\\nc\n"), "{text}");
        assert!(
            text.contains("_9bad_name{la_bel=\"q\\\"uo\\\\te\\n\"} -3\n"),
            "{text}"
        );
    }

    #[test]
    fn clones_share_the_registry() {
        let m = Metrics::new();
        let m2 = m.clone();
        m2.counter(APPEND_BATCHES, "h").add(3);
        assert!(m.render().contains("gradeflow_append_batches_total 3\n"));
    }
}
