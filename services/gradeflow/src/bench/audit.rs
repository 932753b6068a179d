//! `gradeflow bench audit`: how fast the auditor's tools read what a cycle
//! left (`gradeflow bench cycle --keep`), each beside the raw read + SHA-256
//! rate of the same rows ([`Store::raw_read_hash_baseline`]), measured in the
//! same run:
//!
//! * **chain verify, per store** — [`Store::verify`] over every event of
//!   the store: read in order, canonical JSON, SHA-256 hash chain;
//! * **audit verify** — `gradeflow audit verify`'s own function
//!   ([`gradeflow_audit::verify::verify`]): every store's chain, the decision
//!   log rebuilt from the approval store with every signature checked, and
//!   the log compared record for record with the `<prefix>_AUDIT` stream;
//! * **audit replay** — `gradeflow audit replay --as-of now --depth 2`'s
//!   function ([`gradeflow_audit::replay::replay`]): every row of the
//!   workflow stores read in merged order, their own events folded into the
//!   progress model, then the tree; its rate counts rows read.
//!
//! The raw side reads the same rows in pages — every column the chain hash
//! covers, the ten a chain verify reads — and computes one SHA-256 per row
//! over them, nothing else; it runs before and after the figures and the
//! faster run counts, so a cold cache does not flatter either side.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use gradeflow_audit::replay::{replay, ReplayQuery};
use gradeflow_audit::sources::{PROGRESS, WORKFLOW_SERVICES};
use gradeflow_audit::verify::{verify, VerifyOptions};
use gradeflow_audit::Sources;
use gradeflow_eventstore::Store;
use gradeflow_kit::config::redact_url;

use super::cycle::config_of;
use super::deploy::{remove_dir, ScratchPgDatabase};
use super::machine::Machine;
use super::report::{format_rate, Baseline, Rate, Row, Section};
use super::scratch::remove_streams;

/// Flags of `gradeflow bench audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The data dir `gradeflow bench cycle --keep` printed (SQLite files,
    /// the key registry).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Its PostgreSQL database, when it ran on PostgreSQL.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Its NATS prefix (for the audit stream).
    #[arg(long)]
    pub prefix: String,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Afterwards, remove what the cycle kept: the data dir, the streams
    /// under the prefix and the `gradeflow_bench_…` database.
    #[arg(long)]
    pub remove: bool,
}

/// `gradeflow bench audit`.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let outcome = measure(&args).await;
    if args.remove {
        let names = gradeflow_proto::Names::new(args.prefix.clone())
            .context("the prefix is not a NATS prefix")?;
        if let Ok(client) = async_nats::connect(&args.nats_url).await {
            remove_streams(&async_nats::jetstream::new(client), &names).await;
        }
        if let Some(url) = &args.database_url {
            // Dropped from the server's maintenance database.
            let admin = super::deploy::database_url_with(url, "postgres");
            match ScratchPgDatabase::existing(url, &admin) {
                Some(db) => db.drop().await,
                None => eprintln!(
                    "gradeflow bench: {} is not a gradeflow_bench_ database; not dropped",
                    redact_url(url)
                ),
            }
        }
        remove_dir(&args.data_dir);
    }
    outcome
}

async fn measure(args: &AuditArgs) -> anyhow::Result<()> {
    let config = config_of(
        &args.data_dir,
        args.database_url.clone(),
        &args.prefix,
        &args.nats_url,
    )?;
    let sources = Sources::new(config);
    let stores = sources
        .open(&WORKFLOW_SERVICES, &[PROGRESS])
        .await
        .context("opening the stores the cycle kept")?;
    let measured = figures(&sources, &stores).await;
    stores.close().await;
    let (section, total) = measured?;

    println!(
        "gradeflow bench audit: {} events in the stores of {}{}",
        super::report::group_thousands(total),
        args.data_dir.display(),
        args.database_url
            .as_deref()
            .map(|u| format!(" and {}", redact_url(u)))
            .unwrap_or_default()
    );
    println!("machine: {}", Machine::this());
    println!(
        "date:    {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
    print!("{section}");
    Ok(())
}

/// The read + hash rate of `store`'s rows: the faster of two runs.
async fn raw(store: &Store, service: &str, runs: &mut Vec<Rate>) -> anyhow::Result<()> {
    let r = store
        .raw_read_hash_baseline()
        .await
        .with_context(|| format!("the raw read + hash baseline of {service}"))?;
    runs.push(Rate::new(r.rows, r.elapsed));
    Ok(())
}

fn fastest(runs: &[Rate]) -> Rate {
    runs.iter()
        .copied()
        .max_by(|a, b| a.per_second().total_cmp(&b.per_second()))
        .unwrap_or(Rate::new(0, Duration::ZERO))
}

/// Every row; the events of all stores.
async fn figures(
    sources: &Sources,
    stores: &gradeflow_audit::sources::Stores,
) -> anyhow::Result<(Section, u64)> {
    let mut rows = Vec::new();
    let mut raws: Vec<(String, Rate)> = Vec::new();
    for (service, store) in stores.iter() {
        eprintln!("{service}: raw read + hash, chain verify…");
        let mut runs = Vec::new();
        raw(store, service, &mut runs).await?;
        let started = Instant::now();
        let report = store
            .verify()
            .await
            .with_context(|| format!("verifying the {service} store"))?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            report.is_ok(),
            "the {service} store does not verify: {report:?}"
        );
        raw(store, service, &mut runs).await?;
        let raw = fastest(&runs);
        rows.push(Row {
            figure: format!("chain verify, {service}"),
            rate: Rate::new(report.events, elapsed),
            baselines: vec![Baseline {
                what: "read + SHA-256 of the same rows".into(),
                rate: raw,
            }],
        });
        raws.push((service.to_owned(), raw));
    }
    let sum = |only: &[&str]| {
        let picked: Vec<&Rate> = raws
            .iter()
            .filter(|(s, _)| only.is_empty() || only.contains(&s.as_str()))
            .map(|(_, r)| r)
            .collect();
        Rate::new(
            picked.iter().map(|r| r.count).sum(),
            picked.iter().map(|r| r.elapsed).sum(),
        )
    };
    let total = sum(&[]).count;

    eprintln!("audit verify…");
    let started = Instant::now();
    let report = verify(
        sources,
        &VerifyOptions {
            stream: true,
            stream_wait: Duration::ZERO,
        },
    )
    .await
    .context("audit verify")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.ok,
        "audit verify found problems:\n{}",
        report.render()
    );
    rows.push(Row {
        figure: "audit verify".into(),
        rate: Rate::new(report.events, elapsed),
        baselines: vec![Baseline {
            what: "read + SHA-256 of every store's rows".into(),
            rate: sum(&[]),
        }],
    });

    eprintln!("audit replay…");
    let workflow = sources
        .open(&WORKFLOW_SERVICES, &[])
        .await
        .context("opening the workflow stores")?;
    let started = Instant::now();
    let replayed = replay(
        &workflow,
        &ReplayQuery {
            as_of: chrono::Utc::now(),
            org: None,
            cycle: None,
            depth: Some(2),
        },
    )
    .await;
    let elapsed = started.elapsed();
    workflow.close().await;
    let replayed = replayed.context("audit replay")?;
    // The replay reads every row of the workflow stores and folds their own
    // events (not the copies they observed): its rate counts rows read.
    let read = sum(&WORKFLOW_SERVICES).count;
    rows.push(Row {
        figure: "audit replay".into(),
        rate: Rate::new(read, elapsed),
        baselines: vec![Baseline {
            what: "read + SHA-256 of the workflow stores' rows".into(),
            rate: sum(&WORKFLOW_SERVICES),
        }],
    });

    let verify_rate = rows
        .iter()
        .find(|r| r.figure == "audit verify")
        .map(|r| r.rate);
    let notes = verify_rate
        .map(|rate| {
            let share = rate.share_of(&sum(&[])).unwrap_or(0.0);
            vec![
                format!(
                    "decision log: {} records, signatures checked; audit stream compared; replay folded {} own events of {} rows",
                    super::report::group_thousands(report.records),
                    super::report::group_thousands(replayed.events),
                    super::report::group_thousands(read)
                ),
                format!(
                    "target audit verify ≥ 1,000,000 events/s or ≥ 50% of raw read + hash: {} events/s, {:.1}% of raw, {}",
                    format_rate(rate.per_second()),
                    share * 100.0,
                    if rate.per_second() >= 1_000_000.0 || share >= 0.5 {
                        "met"
                    } else {
                        "not met"
                    }
                ),
            ]
        })
        .unwrap_or_default();
    Ok((
        Section {
            title: "audit over the stores the cycle kept".into(),
            rows,
            notes,
        },
        total,
    ))
}
