//! `gradeflow bench cycle` and `gradeflow bench audit` driven as a user
//! drives them, at a tiny size (60 dossiers): the built binary starts
//! `gradeflow up` against the real NATS server (`GRADEFLOW_TEST_NATS_URL`)
//! on SQLite, and on PostgreSQL (`GRADEFLOW_TEST_PG_URL`), keeps the stores,
//! and `bench audit --remove` reads and then removes them. Checks that the
//! reports have every row with positive figures; the figures themselves are
//! not judged (that is `docs/performance.md`'s job).

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn nats_url() -> String {
    std::env::var("GRADEFLOW_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Runs the binary; its stdout (it must succeed).
fn run(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gradeflow"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "gradeflow {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// A number as printed (`12,345`, `1.234`).
fn number(s: &str) -> f64 {
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("`{s}` is not a number: {e}"))
}

/// The line starting with `label`, its columns after the label.
fn row<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row `{label}` in\n{stdout}"));
    line[label.len()..].split_whitespace().collect()
}

/// Runs the cycle at 60 dossiers with `--keep`, checks its report, then
/// `bench audit --remove` on what it kept and checks that report.
fn cycle_then_audit(database_url: Option<&str>) {
    let nats = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let mut args = vec![
        "bench",
        "cycle",
        "--dossiers",
        "60",
        "--boards",
        "8",
        "--progress-queries",
        "20",
        "--nats-url",
        &nats,
        "--dir",
        &dir_arg,
        "--keep",
    ];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let stdout = run(&args);
    assert!(
        stdout.starts_with("gradeflow bench cycle: card preset, 60 dossiers"),
        "{stdout}"
    );
    for line in ["machine: ", "servers: NATS ", "date: "] {
        assert!(stdout.contains(&format!("\n{line}")), "{stdout}");
    }
    for phase in [
        "setup: cycle, root, provinces",
        "districts and cells: register, file, appraise, decide",
        "provinces: decide districts",
        "central: decide provinces and itself",
        "projection lag",
        "end to end",
    ] {
        let cols = row(&stdout, phase);
        let seconds = cols[cols.len() - 2];
        assert!(number(seconds) >= 0.0, "{phase}: {cols:?}");
    }
    let dossiers = row(&stdout, "dossiers ");
    assert_eq!(number(dossiers[0]), 60.0);
    assert!(number(dossiers[1]) > 0.0);
    for (figure, baseline) in [
        ("events appended, all stores", "INSERT,"),
        ("events published to JetStream", "JetStream"),
    ] {
        let cols = row(&stdout, figure);
        assert!(number(cols[0]) > 60.0, "{figure}: {cols:?}");
        assert!(number(cols[1]) > 0.0, "{figure}: {cols:?}");
        assert!(number(cols[2]) > 0.0, "{figure}: {cols:?}");
        assert!(cols[3].ends_with('%'), "{figure}: {cols:?}");
        assert_eq!(cols[4], baseline, "{figure}: {cols:?}");
    }
    assert!(stdout.contains("60 grades decided"), "{stdout}");
    for (latency, count) in [
        ("command (all but decide_batch)", None),
        ("decide_batch (≤ 50 dossiers)", None),
        ("progress tree, whole country, depth 2", Some(20.0)),
    ] {
        let cols = row(&stdout, latency);
        let n = number(cols[0]);
        match count {
            Some(c) => assert_eq!(n, c, "{latency}: {cols:?}"),
            None => assert!(n > 0.0, "{latency}: {cols:?}"),
        }
        // p50 and p99 in milliseconds.
        assert!(number(cols[3]) > 0.0, "{latency}: {cols:?}");
        assert_eq!(cols[4], "ms");
    }
    // The same latencies by kind: decide_batch.v1's row counts what the
    // decide_batch row counts.
    assert_eq!(
        row(&stdout, "  decide_batch.v1")[0],
        row(&stdout, "decide_batch (≤ 50 dossiers)")[0]
    );
    assert!(
        stdout.contains("peak RSS of gradeflow up (every service and the portal): ")
            && stdout.contains(" MiB"),
        "{stdout}"
    );

    // The command it printed for the audit, run with --remove.
    let kept = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("gradeflow bench audit "))
        .unwrap_or_else(|| panic!("no audit command in\n{stdout}"));
    let mut audit: Vec<&str> = kept.split_whitespace().skip(1).collect();
    audit.push("--remove");
    let report = run(&audit);
    for figure in [
        "chain verify, submission",
        "chain verify, appraisal",
        "chain verify, approval",
        "chain verify, progress",
        "audit verify ",
        "audit replay ",
    ] {
        let cols = row(&report, figure);
        assert!(number(cols[0]) > 0.0, "{figure}: {cols:?}");
        assert!(number(cols[1]) > 0.0, "{figure}: {cols:?}");
        assert!(number(cols[2]) > 0.0, "{figure}: {cols:?}");
        assert!(cols[3].ends_with('%'), "{figure}: {cols:?}");
    }
    assert!(
        report.contains("60 records, signatures checked"),
        "{report}"
    );
    // Every round of audit verify, with its ratio.
    let rounds = report
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("audit verify against the raw runs around each round: "))
        .unwrap_or_else(|| panic!("no rounds in\n{report}"));
    assert_eq!(rounds.split(", ").count(), 3, "{rounds}");
    assert!(rounds.split(", ").all(|r| r.ends_with('%')), "{rounds}");
    // --remove took the data dir away.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_cycle_and_audit_run_on_sqlite() {
    cycle_then_audit(None);
}

#[test]
fn bench_cycle_and_audit_run_on_postgres() {
    let pg = std::env::var("GRADEFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    cycle_then_audit(Some(&pg));
}
