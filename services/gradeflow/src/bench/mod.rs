//! `gradeflow bench …`: benchmarks against the real databases and NATS
//! server (issue 3). Not a test: it prints figures for a human (and for
//! `docs/performance.md`), each beside the raw limit of the same database or
//! server measured in the same run, so a figure reads as a share of what the
//! hardware does rather than in a void.
//!
//! `gradeflow bench store` measures, on SQLite (a fresh file) and then on
//! PostgreSQL (a fresh schema): appends per second through the event store
//! ([`appends`]), publishes per second through the outbox relay and consumes
//! per second through the inbox ([`transport`]). [`report`] holds the rate
//! arithmetic and the table, [`machine`] what it ran on, [`scratch`] the
//! scratch databases and streams it removes afterwards.
//!
//! `gradeflow bench cycle` ([`cycle`]) drives a whole national cycle of a
//! synthetic country ([`country`]) through `gradeflow up` run as a child
//! process ([`deploy`]), over NATS or HTTP ([`driver`]), and measures the raw
//! limits of the same servers right after; `gradeflow bench audit`
//! ([`audit`]) times the auditor's tools over the stores it kept.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, Subcommand};
use gradeflow_bus::{ensure_streams, StreamSettings};
use gradeflow_kit::config::redact_url;
use gradeflow_proto::Names;

mod appends;
mod audit;
mod country;
mod cycle;
mod deploy;
mod driver;
mod machine;
mod report;
mod scratch;
mod transport;

use machine::Machine;
use report::Section;
use scratch::{remove_streams, ScratchDb};

/// `gradeflow bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Appends/s through the event store, publishes/s through the outbox
    /// relay and consumes/s through the inbox, on SQLite and PostgreSQL,
    /// each beside the raw limit measured in the same run.
    Store(StoreArgs),
    /// A whole national cycle of a synthetic country through the real
    /// services (`gradeflow up` in a child process): dossiers/s, events/s,
    /// command and decision latencies, projection lag, peak RSS, beside the
    /// raw INSERT and JetStream publish rates of the same servers.
    Cycle(cycle::CycleArgs),
    /// `audit verify` and `audit replay` over the stores `bench cycle
    /// --keep` left, beside the raw read + SHA-256 rate of the same rows.
    Audit(audit::AuditArgs),
}

/// Flags of `gradeflow bench store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the scratch SQLite file (removed at the end). Put it on
    /// the disk you want measured: fsync cost is most of what is measured.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub sqlite_dir: PathBuf,
    /// PostgreSQL database holding the scratch schema (dropped at the end).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// Events per figure.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events: u64,
    /// Bytes of each event's JSON payload.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    pub payload_bytes: u64,
    /// NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

/// Runs a `gradeflow bench` command.
pub fn run(cmd: BenchCmd) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| match cmd {
            BenchCmd::Store(args) => rt.block_on(store(args)),
            BenchCmd::Cycle(args) => rt.block_on(cycle::cycle(args)),
            BenchCmd::Audit(args) => rt.block_on(audit::audit(args)),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gradeflow bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `work`, unless SIGINT (Ctrl-C) or SIGTERM arrives first: then `work` is
/// dropped (a `gradeflow up` it started is killed with it) and an error is
/// returned, so the caller goes on to remove what the run made (databases,
/// streams, data dir) instead of the process ending and leaving them, and
/// the services, behind. Only the first signal is heeded: one more while the
/// clean-up runs changes nothing.
pub(crate) async fn interruptible<T>(
    stop: &tokio_util::sync::CancellationToken,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        outcome = work => outcome,
        () = stop.cancelled() => {
            eprintln!("gradeflow bench: interrupted; removing what the run made");
            Err(anyhow::anyhow!("interrupted before the run finished"))
        }
    }
}

/// `gradeflow bench store`.
async fn store(args: StoreArgs) -> anyhow::Result<()> {
    let events = usize::try_from(args.events).context("--events does not fit in memory")?;
    let payload_bytes =
        usize::try_from(args.payload_bytes).context("--payload-bytes does not fit in memory")?;
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = jetstream::new(client.clone());
    // One id for the run: the scratch file, schema and NATS prefixes.
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let stop = gradeflow_kit::shutdown_signal();

    let dbs = [
        ("SQLite", ScratchDb::sqlite(&args.sqlite_dir, &id)),
        ("PostgreSQL", ScratchDb::postgres(&id)),
    ];
    let names = dbs
        .iter()
        .map(|(label, _)| Names::new(format!("bench-{id}-{}", label.to_lowercase())))
        .collect::<Result<Vec<_>, _>>()
        .context("making the benchmark's NATS prefixes")?;
    // Open both first, so the header names both servers before any figure.
    let mut stores = Vec::new();
    for (label, db) in &dbs {
        match open(db, label, &args.database_url).await {
            Ok(opened) => stores.push(opened),
            Err(e) => {
                for ((_, db), (store, _)) in dbs.iter().zip(&stores) {
                    db.remove(store).await;
                }
                return Err(e);
            }
        }
    }
    let nats_version = client.server_info().version;
    println!(
        "gradeflow bench store: {} events per figure, {payload_bytes}-byte payloads",
        report::group_thousands(args.events)
    );
    println!("machine: {}", Machine::this());
    println!(
        "servers: NATS {nats_version} at {}; {}; {}",
        args.nats_url, stores[0].1, stores[1].1
    );
    println!(
        "date:    {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    let mut result = Ok(());
    let mut removed = [false, false];
    for (i, ((label, db), (store, _))) in dbs.iter().zip(&stores).enumerate() {
        println!();
        let names = &names[i];
        let title = match db {
            ScratchDb::Sqlite(_) => format!("{label} ({db}; WAL, synchronous=FULL)"),
            ScratchDb::Postgres(_) => {
                format!("{label} ({db} of {})", redact_url(&args.database_url))
            }
        };
        eprintln!("{label}:");
        let measured = interruptible(
            &stop,
            section(store, &client, &js, names, events, payload_bytes, title),
        )
        .await;
        remove_streams(&js, names).await;
        db.remove(store).await;
        removed[i] = true;
        match measured {
            Ok(section) => print!("{section}"),
            Err(e) => {
                result = Err(e.context(format!("measuring {label}")));
                break;
            }
        }
    }
    // A failure stops the run; the scratch databases not reached yet are
    // removed all the same.
    for (((_, db), (store, _)), removed) in dbs.iter().zip(&stores).zip(removed) {
        if !removed {
            db.remove(store).await;
        }
    }
    result
}

/// Opens the store in `db` and asks its server for its version.
async fn open(
    db: &ScratchDb,
    label: &str,
    database_url: &str,
) -> anyhow::Result<(gradeflow_eventstore::Store, String)> {
    let store = db.open(database_url).await?;
    match store.raw_server_version().await {
        Ok(version) => Ok((store, version)),
        Err(e) => {
            db.remove(&store).await;
            Err(anyhow::Error::new(e).context(format!("asking {label} for its version")))
        }
    }
}

/// All figures of one database.
async fn section(
    store: &gradeflow_eventstore::Store,
    client: &async_nats::Client,
    js: &jetstream::Context,
    names: &Names,
    events: usize,
    payload_bytes: usize,
    title: String,
) -> anyhow::Result<Section> {
    ensure_streams(js, names, &StreamSettings::default())
        .await
        .context("creating the benchmark's streams")?;
    transport::create_raw_stream(js, names).await?;
    let appends = appends::measure(store, events, payload_bytes).await?;
    let mut rows = appends.rows;
    rows.push(transport::publish(store, client, js, names, appends.appended).await?);
    let (consume_rows, consume_commits) = transport::consume(
        store,
        client,
        names,
        events as u64,
        appends.raw_single,
        appends.raw_batched,
    )
    .await?;
    rows.extend(consume_rows);
    let notes = vec![format!(
        "writer, requests per transaction: {}",
        appends
            .group_commit
            .iter()
            .chain(&consume_commits)
            .map(|(figure, n)| format!("{} {n:.1}", figure.trim_start_matches("append, ")))
            .collect::<Vec<_>>()
            .join("; ")
    )];
    Ok(Section { title, rows, notes })
}
