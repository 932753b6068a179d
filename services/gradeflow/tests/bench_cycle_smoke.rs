//! `gradeflow bench cycle` and `gradeflow bench audit` driven as a user
//! drives them, at a tiny size (60 dossiers): the built binary starts
//! `gradeflow up` against the real NATS server (`GRADEFLOW_TEST_NATS_URL`)
//! on SQLite, and on PostgreSQL (`GRADEFLOW_TEST_PG_URL`), keeps the stores,
//! and `bench audit --remove` reads and then removes them. Checks that the
//! reports have every row with positive figures; the figures themselves are
//! not judged (that is `docs/performance.md`'s job). And a run interrupted
//! with Ctrl-C removes what it made, as a failed one does.

#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nats_url() -> String {
    std::env::var("GRADEFLOW_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Runs the binary with `env` added to its environment (and its children's:
/// `bench cycle` starts `gradeflow up`); its stdout (it must succeed).
fn run_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gradeflow"))
        .args(args)
        .envs(env.iter().copied())
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

/// `bench cycle` of `dossiers` against the test's NATS server, into `dir`,
/// on PostgreSQL when `database_url` is given, with `extra` flags.
fn cycle_args<'a>(
    dossiers: &'a str,
    nats: &'a str,
    dir: &'a str,
    database_url: Option<&'a str>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "bench",
        "cycle",
        "--dossiers",
        dossiers,
        "--nats-url",
        nats,
        "--dir",
        dir,
    ];
    args.extend_from_slice(extra);
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    args
}

/// Runs the cycle at 60 dossiers with `--keep`, checks its report, then
/// `bench audit --remove` on what it kept and checks that report.
fn cycle_then_audit(database_url: Option<&str>) {
    cycle_then_audit_with(database_url, &[]);
}

/// Every directory named `spill` under `dir`.
fn spill_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if entry.file_name() == "spill" {
                    found.push(path.clone());
                }
                todo.push(path);
            }
        }
    }
    found
}

/// [`cycle_then_audit`], with `env` set for the bench and the services.
fn cycle_then_audit_with(database_url: Option<&str>, env: &[(&str, &str)]) {
    let nats = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let args = cycle_args(
        "60",
        &nats,
        &dir_arg,
        database_url,
        &["--boards", "8", "--progress-queries", "20", "--keep"],
    );
    let stdout = run_with(&args, env);
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
    // The models' scratch files went with the services that had them open.
    let spills = spill_dirs(dir.path());
    for d in &spills {
        let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
        assert!(left.is_empty(), "{}: {left:?}", d.display());
    }
    let report = run_with(&audit, env);
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
    if env.iter().any(|(k, _)| *k == "GRADEFLOW_MODEL_CACHE") {
        // The models wrote values out: the directory is made on the first
        // eviction.
        assert_eq!(spills.len(), 1, "{spills:?}");
    }
}

#[test]
fn bench_cycle_and_audit_run_on_sqlite() {
    cycle_then_audit(None);
}

#[test]
fn bench_cycle_and_audit_run_with_models_keeping_eight_values_in_memory() {
    // Every model's maps hold 8 values and spill the rest: the whole cycle,
    // its 60 grades and the audit come out as with whole models.
    cycle_then_audit_with(None, &[("GRADEFLOW_MODEL_CACHE", "8")]);
}

#[test]
fn bench_cycle_and_audit_run_on_postgres() {
    let pg = std::env::var("GRADEFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    cycle_then_audit(Some(&pg));
}

/// The pids of the running processes with `needle` in their command line.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Kills, when dropped, the bench and every process started under its
/// directory, so a failed assertion does not leave a million-dossier run
/// behind.
struct Reaper {
    bench: std::process::Child,
    dir: String,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.bench.kill();
        let _ = self.bench.wait();
        for pid in processes_mentioning(&self.dir) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Starts a cycle far too large to finish, sends it SIGINT once it drives
/// the services, and checks that it stops them and removes its data dir,
/// its NATS streams and (on PostgreSQL) its database.
fn interrupted_cycle(database_url: Option<&str>) {
    let nats = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let args = cycle_args("1000000", &nats, &dir_arg, database_url, &[]);
    let mut bench = Reaper {
        bench: Command::new(env!("CARGO_BIN_EXE_gradeflow"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        dir: dir_arg.clone(),
    };
    let (lines, stderr) = std::sync::mpsc::channel();
    let reader = std::io::BufReader::new(bench.bench.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The first progress line: the services are up and being driven.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("dossiers decided")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match stderr.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no progress ({e}); stderr so far:\n{}", seen.join("\n")),
        }
    }
    let data_dirs: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [data_dir] = data_dirs.as_slice() else {
        panic!("not one data dir: {data_dirs:?}");
    };
    let id = data_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .strip_prefix("gradeflow-bench-")
        .unwrap()
        .to_owned();
    let data_dir_text = data_dir.display().to_string();
    let up = processes_mentioning(&data_dir_text);
    assert!(!up.is_empty(), "no gradeflow up running");
    // `gradeflow up` re-executed itself so that mimalloc gives freed memory
    // back at once (`services/gradeflow/src/allocator.rs`); the bench did
    // not set the variable.
    if cfg!(not(feature = "system-allocator")) {
        for pid in &up {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert!(
                environ
                    .split(|b| *b == 0)
                    .any(|v| v == b"MIMALLOC_PURGE_DELAY=0"),
                "gradeflow up ({pid}) runs without MIMALLOC_PURGE_DELAY=0"
            );
        }
    }

    let signalled = Command::new("kill")
        .args(["-INT", &bench.bench.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = bench.bench.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the bench did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    seen.extend(stderr.try_iter());
    let said = seen.join("\n");
    assert!(!status.success(), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    assert!(!Path::new(data_dir).exists(), "{said}");
    // The killed `gradeflow up` is gone (reaped, or at least not running).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&data_dir_text).is_empty() {
        assert!(Instant::now() < deadline, "gradeflow up still runs");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for suffix in ["EVENTS", "AUDIT", "DLQ", "RAW"] {
            let name = format!("bench-{id}_{suffix}");
            assert!(js.get_stream(&name).await.is_err(), "{name} is still there");
        }
        if let Some(url) = database_url {
            use sqlx::Connection as _;
            let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                    .bind(format!("gradeflow_bench_{id}"))
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            assert_eq!(left, 0, "the database gradeflow_bench_{id} is still there");
        }
    });
}

#[test]
fn an_interrupted_cycle_removes_what_it_made_on_sqlite() {
    interrupted_cycle(None);
}

#[test]
fn an_interrupted_cycle_removes_what_it_made_on_postgres() {
    let pg = std::env::var("GRADEFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    interrupted_cycle(Some(&pg));
}
