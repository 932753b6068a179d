//! `gradeflow bench store` driven as a user drives it, at a tiny size: the
//! built binary against the real NATS and PostgreSQL servers (the test
//! servers, `GRADEFLOW_TEST_NATS_URL` / `GRADEFLOW_TEST_PG_URL`) and a SQLite
//! file in the temp dir. Checks that the report has both databases' tables
//! with every figure and every raw baseline at a positive rate; the figures
//! themselves are not judged (that is `docs/performance.md`'s job).

#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The figures every database's table has, in order, with how many raw
/// baselines each is printed beside.
const FIGURES: [(&str, usize); 7] = [
    ("append, 1 caller", 2),
    ("append, 16 callers", 3),
    ("append, 256 callers", 3),
    ("append, 100 events per request", 2),
    ("publish through the relay", 1),
    ("consume through the inbox, 1 loop", 2),
    ("consume through the inbox, 16 loops", 2),
];

/// A number as printed (`12,345`).
fn number(s: &str) -> f64 {
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("`{s}` is not a number: {e}"))
}

/// Checks one database's table, starting at its title line; returns the
/// lines after it.
fn check_table<'a>(lines: &mut impl Iterator<Item = &'a str>, title: &str, events: f64) {
    let heading = lines.next().unwrap();
    assert!(
        heading.starts_with(title),
        "expected the {title} table, got {heading:?}"
    );
    assert!(lines.next().unwrap().starts_with("figure"));
    for (figure, baselines) in FIGURES {
        let line = lines.next().unwrap();
        let rest = line
            .strip_prefix(figure)
            .unwrap_or_else(|| panic!("expected the row `{figure}`, got {line:?}"));
        let cols: Vec<&str> = rest.split_whitespace().collect();
        // events, gradeflow/s, raw/s, ratio, then the baseline's name.
        let expected_events = if figure.starts_with("publish") {
            4.0 * events
        } else {
            events
        };
        assert_eq!(number(cols[0]), expected_events, "{line}");
        assert!(number(cols[1]) > 0.0, "{line}");
        assert!(number(cols[2]) > 0.0, "{line}");
        assert!(
            cols[3].ends_with('%') && number(cols[3].trim_end_matches('%')) > 0.0,
            "{line}"
        );
        for _ in 1..baselines {
            let more = lines.next().unwrap();
            let cols: Vec<&str> = more.split_whitespace().collect();
            assert!(number(cols[0]) > 0.0, "{more}");
            assert!(cols[1].ends_with('%'), "{more}");
        }
    }
    let note = lines.next().unwrap();
    assert!(
        note.trim_start()
            .starts_with("writer, requests per transaction:"),
        "{note}"
    );
}

#[test]
fn bench_store_prints_every_figure_beside_its_raw_limit_on_both_databases() {
    let nats =
        std::env::var("GRADEFLOW_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pg = std::env::var("GRADEFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let output = Command::new(env!("CARGO_BIN_EXE_gradeflow"))
        .args([
            "bench",
            "store",
            "--events",
            "300",
            "--nats-url",
            &nats,
            "--database-url",
            &pg,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let mut lines = stdout.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("gradeflow bench store: 300 events per figure"));
    assert!(lines.next().unwrap().starts_with("machine: "));
    let servers = lines.next().unwrap();
    for server in ["NATS ", "SQLite ", "PostgreSQL "] {
        assert!(servers.contains(server), "{servers}");
    }
    assert!(lines.next().unwrap().starts_with("date: "));
    assert_eq!(lines.next(), Some(""));
    check_table(&mut lines, "SQLite (", 300.0);
    assert_eq!(lines.next(), Some(""));
    check_table(&mut lines, "PostgreSQL (", 300.0);
    assert_eq!(lines.next(), None, "{stdout}");
}
