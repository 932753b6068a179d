//! The figures of `gradeflow bench store` and how they are printed: a rate
//! (events over wall time), each gradeflow figure beside the raw limits it is
//! compared with, and the plain-text table. Pure: no I/O, so the arithmetic
//! and the layout are unit-tested.

use std::fmt;
use std::time::Duration;

use gradeflow_eventstore::WriterStats;

/// Events handled in a wall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events (rows, messages) handled.
    pub count: u64,
    /// Wall time they took.
    pub elapsed: Duration,
}

impl Rate {
    /// `count` events in `elapsed`.
    pub fn new(count: u64, elapsed: Duration) -> Self {
        Self { count, elapsed }
    }

    /// Events per second; a zero wall time counts as one nanosecond, so the
    /// rate stays finite.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// This rate as a share of `limit` (1.0 = as fast), or `None` when the
    /// limit is zero.
    pub fn share_of(&self, limit: &Rate) -> Option<f64> {
        let limit = limit.per_second();
        (limit > 0.0).then(|| self.per_second() / limit)
    }
}

/// A raw limit a figure is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// What was measured, e.g. `INSERT, 1 row per transaction`.
    pub what: String,
    /// How fast.
    pub rate: Rate,
}

/// One gradeflow figure and its raw limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was measured, e.g. `append, 16 callers`.
    pub figure: String,
    /// How fast, through gradeflow's code.
    pub rate: Rate,
    /// The raw limits, the most relevant first.
    pub baselines: Vec<Baseline>,
}

/// One database's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The heading, e.g. `SQLite (…)`.
    pub title: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

/// Requests the store's writer committed per transaction between two
/// snapshots of its counters (0 when it committed none): how much group
/// commit a figure got.
pub fn requests_per_transaction(before: WriterStats, after: WriterStats) -> f64 {
    let batches = after.batches.saturating_sub(before.batches);
    let requests = after.requests.saturating_sub(before.requests);
    if batches == 0 {
        0.0
    } else {
        requests as f64 / batches as f64
    }
}

/// `1234567.8` → `1,234,568`: whole events per second with thousands
/// separators (commas, so the columns stay split by spaces).
pub fn format_rate(per_second: f64) -> String {
    if !per_second.is_finite() || per_second < 0.0 {
        return "-".to_owned();
    }
    group_thousands(per_second.round() as u64)
}

/// `12345` → `12,345`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0.0694` → `6.9%`; below 1 % one more decimal, so small shares do not all
/// read `0.0%`.
pub fn format_share(share: Option<f64>) -> String {
    match share {
        Some(s) if s.is_finite() => {
            let pct = s * 100.0;
            if pct < 1.0 {
                format!("{pct:.2}%")
            } else {
                format!("{pct:.1}%")
            }
        }
        _ => "-".to_owned(),
    }
}

/// Column headings of the table.
const HEADINGS: [&str; 6] = [
    "figure",
    "events",
    "gradeflow/s",
    "raw/s",
    "ratio",
    "raw baseline",
];
/// Width of the `figure` column.
const FIGURE_WIDTH: usize = 38;
/// Width of the four number columns.
const NUMBER_WIDTH: usize = 13;
/// Width of the ratio column.
const SHARE_WIDTH: usize = 8;

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        writeln!(
            f,
            "{:<FIGURE_WIDTH$}{:>NUMBER_WIDTH$}{:>NUMBER_WIDTH$}{:>NUMBER_WIDTH$}{:>SHARE_WIDTH$}  {}",
            HEADINGS[0], HEADINGS[1], HEADINGS[2], HEADINGS[3], HEADINGS[4], HEADINGS[5]
        )?;
        for row in &self.rows {
            let events = group_thousands(row.rate.count);
            let rate = format_rate(row.rate.per_second());
            let mut baselines = row.baselines.iter();
            match baselines.next() {
                None => writeln!(
                    f,
                    "{:<FIGURE_WIDTH$}{events:>NUMBER_WIDTH$}{rate:>NUMBER_WIDTH$}",
                    row.figure
                )?,
                Some(first) => writeln!(
                    f,
                    "{:<FIGURE_WIDTH$}{events:>NUMBER_WIDTH$}{rate:>NUMBER_WIDTH$}{:>NUMBER_WIDTH$}{:>SHARE_WIDTH$}  {}",
                    row.figure,
                    format_rate(first.rate.per_second()),
                    format_share(row.rate.share_of(&first.rate)),
                    first.what
                )?,
            }
            // Further baselines of the same figure on their own lines, under
            // the first one.
            for more in baselines {
                writeln!(
                    f,
                    "{:<FIGURE_WIDTH$}{:>NUMBER_WIDTH$}{:>NUMBER_WIDTH$}{:>NUMBER_WIDTH$}{:>SHARE_WIDTH$}  {}",
                    "",
                    "",
                    "",
                    format_rate(more.rate.per_second()),
                    format_share(row.rate.share_of(&more.rate)),
                    more.what
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  {note}")?;
        }
        Ok(())
    }
}

/// Latencies in microseconds, kept as a log-linear histogram: exact below
/// 1,024 µs, then 512 buckets per power of two (under 0.2 % error), so a
/// million commands take the same 100 KiB as ten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latencies {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

/// Exact buckets below this many microseconds.
const LINEAR: u64 = 1_024;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 512;

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: Vec::new(),
            count: 0,
            max: 0,
        }
    }

    fn index(micros: u64) -> usize {
        if micros < LINEAR {
            return micros as usize;
        }
        // The value's top ten bits: 512..1023 after shifting by `shift`.
        let shift = u64::from(63 - micros.leading_zeros()) - 9;
        (LINEAR + (shift - 1) * SUB + ((micros >> shift) - SUB)) as usize
    }

    fn lower_bound(index: usize) -> u64 {
        let index = index as u64;
        if index < LINEAR {
            return index;
        }
        let k = index - LINEAR;
        let shift = k / SUB + 1;
        (k % SUB + SUB) << shift
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX / 2);
        let i = Self::index(micros);
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The latency under which a share `q` (0..=1) of them fall (the
    /// bucket's lower bound; the largest one for `q = 1`); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(Duration::from_micros(self.max));
        }
        let rank = ((q.max(0.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(Self::lower_bound(i).min(self.max)));
            }
        }
        Some(Duration::from_micros(self.max))
    }
}

/// `1.234 ms` with three decimals, or `-`.
pub fn format_millis(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3} ms", d.as_secs_f64() * 1_000.0),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u64, millis: u64) -> Rate {
        Rate::new(count, Duration::from_millis(millis))
    }

    #[test]
    fn a_rate_is_events_over_wall_time() {
        assert_eq!(rate(20_000, 2_000).per_second(), 10_000.0);
        assert!(rate(1, 0).per_second().is_finite());
    }

    #[test]
    fn a_share_is_this_rate_over_the_limit() {
        let store = rate(5_000, 1_000);
        let raw = rate(20_000, 1_000);
        assert_eq!(store.share_of(&raw), Some(0.25));
        assert_eq!(store.share_of(&rate(0, 1_000)), None);
    }

    #[test]
    fn requests_per_transaction_come_from_the_writer_counters() {
        let before = WriterStats {
            batches: 10,
            requests: 10,
            events: 10,
        };
        let after = WriterStats {
            batches: 12,
            requests: 30,
            events: 30,
        };
        assert_eq!(requests_per_transaction(before, after), 10.0);
        assert_eq!(requests_per_transaction(after, after), 0.0);
    }

    #[test]
    fn rates_are_whole_numbers_grouped_by_thousands() {
        assert_eq!(format_rate(0.4), "0");
        assert_eq!(format_rate(999.5), "1,000");
        assert_eq!(format_rate(1_234_567.4), "1,234,567");
        assert_eq!(format_rate(f64::NAN), "-");
        assert_eq!(group_thousands(100), "100");
        assert_eq!(group_thousands(100_000), "100,000");
    }

    #[test]
    fn shares_are_percentages_with_more_precision_below_one_percent() {
        assert_eq!(format_share(Some(0.0694)), "6.9%");
        assert_eq!(format_share(Some(0.00456)), "0.46%");
        assert_eq!(format_share(Some(1.25)), "125.0%");
        assert_eq!(format_share(None), "-");
    }

    #[test]
    fn a_row_with_two_baselines_prints_the_second_under_the_first() {
        let section = Section {
            title: "SQLite".into(),
            rows: vec![Row {
                figure: "append, 1 caller".into(),
                rate: rate(2_000, 1_000),
                baselines: vec![
                    Baseline {
                        what: "INSERT, 1 row per transaction".into(),
                        rate: rate(4_000, 1_000),
                    },
                    Baseline {
                        what: "INSERT, 1000 rows per transaction".into(),
                        rate: rate(100_000, 1_000),
                    },
                ],
            }],
            notes: vec!["writer: 1.0 requests per transaction".into()],
        };
        let text = section.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], "SQLite");
        assert!(lines[1].starts_with("figure"), "{text}");
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "append,",
                "1",
                "caller",
                "2,000",
                "2,000",
                "4,000",
                "50.0%",
                "INSERT,",
                "1",
                "row",
                "per",
                "transaction"
            ]
        );
        let second: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(second[..2], ["100,000", "2.0%"]);
        // The second baseline's rate is right-aligned in the first's column.
        let end = |line: &str, s: &str| line.find(s).map(|i| i + s.len());
        assert_eq!(end(lines[2], "4,000"), end(lines[3], "100,000"));
        assert_eq!(lines[4], "  writer: 1.0 requests per transaction");
    }
    #[test]
    fn latency_quantiles_are_exact_below_a_millisecond_and_close_above() {
        let mut l = Latencies::new();
        assert_eq!(l.quantile(0.5), None);
        for us in 1..=100 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_micros(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_micros(100)));
        let mut slow = Latencies::new();
        for ms in 1..=1_000_u64 {
            slow.record(Duration::from_millis(ms));
        }
        let p99 = slow.quantile(0.99).unwrap().as_secs_f64();
        assert!((p99 - 0.990).abs() < 0.990 * 0.003, "{p99}");
        assert_eq!(slow.quantile(1.0), Some(Duration::from_millis(1_000)));
        for us in [1_023_u64, 1_024, 2_047, 2_048, 123_456_789] {
            let i = Latencies::index(us);
            assert!(Latencies::lower_bound(i) <= us, "{us}");
            assert!(Latencies::lower_bound(i + 1) > us, "{us}");
        }
        assert_eq!(
            format_millis(Some(Duration::from_micros(1_500))),
            "1.500 ms"
        );
        assert_eq!(format_millis(None), "-");
    }
}
