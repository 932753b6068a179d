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
//! over them, nothing else. Each per-store figure is compared with the
//! faster of two raw runs of its store, one before and one after it.
//! `audit verify` runs in three rounds between raw runs over every store,
//! each round compared with the faster of the two runs around it, and the
//! median round is the figure; the replay is compared with the runs around
//! it too. A cold cache does not flatter either side, and a machine whose
//! speed drifts over the minutes of a run compares like with like.

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

/// Rounds of `audit verify`, each between two raw runs over every store.
const VERIFY_ROUNDS: usize = 3;

/// One raw read + hash run over every store, one store after another.
async fn raw_all(stores: &gradeflow_audit::sources::Stores) -> anyhow::Result<Vec<(String, Rate)>> {
    let mut out = Vec::new();
    for (service, store) in stores.iter() {
        let mut runs = Vec::new();
        raw(store, service, &mut runs).await?;
        out.extend(runs.into_iter().map(|r| (service.to_owned(), r)));
    }
    Ok(out)
}

/// The rows and the time of the stores `only` (all when empty) in one raw
/// run over every store.
fn sum(run: &[(String, Rate)], only: &[&str]) -> Rate {
    let picked: Vec<&Rate> = run
        .iter()
        .filter(|(s, _)| only.is_empty() || only.contains(&s.as_str()))
        .map(|(_, r)| r)
        .collect();
    Rate::new(
        picked.iter().map(|r| r.count).sum(),
        picked.iter().map(|r| r.elapsed).sum(),
    )
}

/// The faster of two runs.
fn faster(a: Rate, b: Rate) -> Rate {
    fastest(&[a, b])
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
    let total = raws.iter().map(|(_, r)| r.count).sum();

    // Audit verify, in rounds between runs of the raw side over every
    // store: each round is compared with the faster of the raw runs just
    // before and just after it, so a machine whose speed drifts over the
    // minutes of a run (a shared host) compares like with like; the median
    // round is the figure, and every round's ratio is in the notes.
    eprintln!("raw read + hash of every store…");
    let mut around = vec![raw_all(stores).await?];
    let mut rounds: Vec<(Rate, Rate, gradeflow_audit::verify::VerifyReport)> = Vec::new();
    for round in 1..=VERIFY_ROUNDS {
        eprintln!("audit verify, round {round} of {VERIFY_ROUNDS}…");
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
        eprintln!("raw read + hash of every store…");
        around.push(raw_all(stores).await?);
        let raw = faster(
            sum(&around[around.len() - 2], &[]),
            sum(&around[around.len() - 1], &[]),
        );
        rounds.push((Rate::new(report.events, elapsed), raw, report));
    }
    let ratio = |(rate, raw, _): &(Rate, Rate, _)| rate.share_of(raw).unwrap_or(0.0);
    let mut by_ratio: Vec<usize> = (0..rounds.len()).collect();
    by_ratio.sort_by(|a, b| ratio(&rounds[*a]).total_cmp(&ratio(&rounds[*b])));
    let median = by_ratio[by_ratio.len() / 2];
    let (verify_rate, verify_raw, report) = &rounds[median];
    rows.push(Row {
        figure: "audit verify".into(),
        rate: *verify_rate,
        baselines: vec![Baseline {
            what: format!(
                "read + SHA-256 of every store's rows, around it; median of {VERIFY_ROUNDS} rounds"
            ),
            rate: *verify_raw,
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
    eprintln!("raw read + hash of every store…");
    around.push(raw_all(stores).await?);
    let replay_raw = faster(
        sum(&around[around.len() - 2], &WORKFLOW_SERVICES),
        sum(&around[around.len() - 1], &WORKFLOW_SERVICES),
    );
    // The replay reads every row of the workflow stores and folds their own
    // events (not the copies they observed): its rate counts rows read.
    let read = replay_raw.count;
    rows.push(Row {
        figure: "audit replay".into(),
        rate: Rate::new(read, elapsed),
        baselines: vec![Baseline {
            what: "read + SHA-256 of the workflow stores' rows, around it".into(),
            rate: replay_raw,
        }],
    });

    let share = verify_rate.share_of(verify_raw).unwrap_or(0.0);
    let each_round: Vec<String> = rounds
        .iter()
        .map(|round| format!("{:.1}%", ratio(round) * 100.0))
        .collect();
    let notes = vec![
        format!(
            "decision log: {} records, signatures checked; audit stream compared; replay folded {} own events of {} rows",
            super::report::group_thousands(report.records),
            super::report::group_thousands(replayed.events),
            super::report::group_thousands(read)
        ),
        format!(
            "audit verify against the raw runs around each round: {}",
            each_round.join(", ")
        ),
        format!(
            "target audit verify ≥ 1,000,000 events/s or ≥ 50% of raw read + hash: {} events/s, {:.1}% of raw (median round), {}",
            format_rate(verify_rate.per_second()),
            share * 100.0,
            if verify_rate.per_second() >= 1_000_000.0 || share >= 0.5 {
                "met"
            } else {
                "not met"
            }
        ),
    ];
    Ok((
        Section {
            title: "audit over the stores the cycle kept".into(),
            rows,
            notes,
        },
        total,
    ))
}
