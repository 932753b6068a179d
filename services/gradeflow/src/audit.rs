//! `gradeflow audit verify|replay|explain|recheck|export`: the auditor's
//! tools (`docs/audit.md`). This module only reads the flags, resolves the
//! deployment's configuration (flags over `GRADEFLOW_*`), calls
//! `gradeflow-audit`, prints the report — a table, or JSON with `--json` —
//! and turns it into the exit code:
//!
//! * `0` — the check passed, or the command printed what was asked;
//! * `1` — `verify` or `recheck` found a problem (each one is named);
//! * `2` — the command could not run: bad flags, a store or file that is
//!   not there, NATS unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use gradeflow_audit::export::{self, verify_export};
use gradeflow_audit::recheck::recheck;
use gradeflow_audit::replay::{replay, ReplayQuery};
use gradeflow_audit::sources::{APPROVAL, PROGRESS, WORKFLOW_SERVICES};
use gradeflow_audit::verify::{verify, VerifyOptions};
use gradeflow_audit::Sources;
use gradeflow_kit::{Config, Overrides};
use gradeflow_proto::{CycleId, DossierId};
use serde::Serialize;

/// `gradeflow audit …`.
#[derive(Debug, Args)]
pub struct AuditCmd {
    #[command(subcommand)]
    command: AuditCommand,
    #[command(flatten)]
    at: Location,
}

/// Where the deployment is; every flag also has its `GRADEFLOW_*` variable.
#[derive(Debug, Args)]
struct Location {
    /// PostgreSQL URL (schemas submission, appraisal, approval, progress);
    /// SQLite files under the data dir otherwise.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Data directory (SQLite files; keys/registry.json).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// NATS URL (for the audit stream).
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// Prefix of the deployment's NATS names (`<prefix>_AUDIT`).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// The key registry to trust (default `<data_dir>/keys/registry.json`).
    #[arg(long, global = true)]
    keys: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Every store's hash chain, the decision log's chain and signatures,
    /// and the log against the audit stream; or an export file offline.
    Verify {
        /// Verify this export file offline instead (no store, no NATS).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Do not compare with the audit stream (no NATS needed).
        #[arg(long)]
        no_stream: bool,
        /// Seconds to wait for records not mirrored yet on a live system.
        #[arg(long, default_value_t = 5)]
        stream_wait: u64,
    },
    /// The state of every dossier and the progress tree as at a time.
    Replay {
        /// RFC 3339 time (`2026-12-20T00:00:00Z`) or `now`.
        #[arg(long)]
        as_of: String,
        /// The subtree's org: an id or a code (default: the cycle's root).
        #[arg(long)]
        org: Option<String>,
        /// One cycle (default: every cycle open at that time).
        #[arg(long)]
        cycle: Option<CycleId>,
        /// Levels of the tree to show (default: all).
        #[arg(long)]
        depth: Option<u32>,
    },
    /// Every event of one dossier across the services, in order.
    Explain {
        /// The dossier.
        dossier: DossierId,
        /// Also list the copies each service observed (marked).
        #[arg(long)]
        copies: bool,
    },
    /// Re-runs each cycle's rulebook on every recorded decision.
    Recheck {
        /// Only this cycle's decisions.
        #[arg(long)]
        cycle: Option<CycleId>,
    },
    /// A self-contained file of a cycle's subtree, verifiable offline.
    Export {
        /// The cycle.
        #[arg(long)]
        cycle: CycleId,
        /// The subtree's org: an id or a code.
        #[arg(long)]
        org: String,
        /// Write here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `gradeflow audit …` and maps the outcome to the exit code.
pub fn run(cmd: AuditCmd) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(dispatch(cmd)));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gradeflow audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn sources(at: &Location) -> anyhow::Result<Sources> {
    let overrides = Overrides {
        prefix: at.prefix.clone(),
        nats_url: at.nats_url.clone(),
        database_url: at.database_url.clone(),
        data_dir: at.data_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::from_process_env()?.with_overrides(&overrides)?;
    let sources = Sources::new(config);
    Ok(match &at.keys {
        Some(path) => sources.with_registry(path),
        None => sources,
    })
}

/// Prints `report` as JSON or as its table.
fn print<T: Serialize>(
    json: bool,
    report: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", table(report));
    }
    Ok(())
}

/// Whether the command passed (`Ok(false)`: it ran and found problems).
async fn dispatch(cmd: AuditCmd) -> anyhow::Result<bool> {
    let at = &cmd.at;
    match cmd.command {
        AuditCommand::Verify {
            file: Some(file), ..
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading the export file {}", file.display()))?;
            let report = verify_export(&text, &file.display().to_string());
            print(at.json, &report, |r| r.render())?;
            Ok(report.ok)
        }
        AuditCommand::Verify {
            file: None,
            no_stream,
            stream_wait,
        } => {
            let opts = VerifyOptions {
                stream: !no_stream,
                stream_wait: std::time::Duration::from_secs(stream_wait),
            };
            let report = verify(&sources(at)?, &opts).await?;
            print(at.json, &report, |r| r.render())?;
            Ok(report.ok)
        }
        AuditCommand::Replay {
            as_of,
            org,
            cycle,
            depth,
        } => {
            let as_of = parse_time(&as_of)?;
            let stores = sources(at)?.open(&WORKFLOW_SERVICES, &[]).await?;
            let query = ReplayQuery {
                as_of,
                org,
                cycle,
                depth,
            };
            let report = replay(&stores, &query).await;
            stores.close().await;
            let report = report?;
            print(at.json, &report, |r| r.render())?;
            Ok(true)
        }
        AuditCommand::Explain { dossier, copies } => {
            let sources = sources(at)?;
            let keys = sources.keys()?;
            let optional: &[&str] = if copies { &[PROGRESS] } else { &[] };
            let stores = sources.open(&WORKFLOW_SERVICES, optional).await?;
            let found = gradeflow_audit::explain::explain(&stores, dossier, copies, &keys).await;
            stores.close().await;
            let explanation = found?;
            print(at.json, &explanation, |r| r.render())?;
            Ok(true)
        }
        AuditCommand::Recheck { cycle } => {
            let stores = sources(at)?.open(&[APPROVAL], &[]).await?;
            let report = recheck(&stores, cycle).await;
            stores.close().await;
            let report = report?;
            print(at.json, &report, |r| r.render())?;
            Ok(report.ok)
        }
        AuditCommand::Export { cycle, org, out } => {
            let sources = sources(at)?;
            let keys = sources.keys()?;
            let stores = sources.open(&WORKFLOW_SERVICES, &[]).await?;
            let built = export::export(&stores, &keys, cycle, &org).await;
            stores.close().await;
            let (file, text) = built?.seal()?;
            let summary = file.summary();
            match &out {
                Some(path) => std::fs::write(path, &text)
                    .with_context(|| format!("writing the export to {}", path.display()))?,
                None => print!("{text}"),
            }
            // The summary goes to stderr, so stdout stays the file itself.
            if at.json {
                eprintln!("{}", serde_json::to_string(&summary)?);
            } else {
                eprintln!(
                    "exported cycle {cycle} under {} ({}): {} events ({}), {} records, {} keys; sha256 {}{}",
                    file.org_code,
                    file.org,
                    summary.events.values().sum::<usize>(),
                    summary
                        .events
                        .iter()
                        .map(|(s, n)| format!("{s} {n}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    summary.records,
                    summary.keys,
                    summary.sha256,
                    out.as_ref()
                        .map(|p| format!(" → {}", p.display()))
                        .unwrap_or_default()
                );
                if !summary.broken_stores.is_empty() {
                    eprintln!(
                        "warning: the chain of {} did not verify at export time; run `gradeflow audit verify`",
                        summary.broken_stores.join(", ")
                    );
                }
            }
            Ok(true)
        }
    }
}

/// `now`, or an RFC 3339 time.
fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if text.eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("--as-of `{text}` is neither `now` nor an RFC 3339 time"))
}
