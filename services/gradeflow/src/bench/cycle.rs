//! `gradeflow bench cycle`: a whole national review cycle of a synthetic
//! country ([`country`](super::country)) driven through the real services —
//! this binary as `gradeflow up` in a child process ([`deploy`](super::deploy))
//! — over NATS or the portal's HTTP API ([`driver`](super::driver)), then the
//! raw limits of the same database and NATS server measured right after, on
//! the same servers.
//!
//! How the cycle runs, as the boards of a country would:
//! 1. **setup** — the annual cycle is opened, the root's collective and the
//!    provinces (with their collectives) registered;
//! 2. **second tier** — one board per district (commune), `--boards` at a
//!    time: it registers its unit and collective; each of its cells
//!    (concurrently, at most `--boards` cell boards in all) registers the cell,
//!    its collective and its members, files every self-review and review
//!    meeting, and then its dossiers are appraised; the district's standing
//!    committee decides its members in batches of up to 50, then its cells'
//!    collectives;
//! 3. **provinces** — each province files its collective's self-review and
//!    meeting, decides its districts' collectives, and is appraised;
//! 4. **central** — the root decides the provinces' collectives, then files,
//!    appraises and decides its own.
//!
//! With `--rate N` every attempt (resends included) takes the next slot of an
//! evenly spaced schedule of N per second, whatever the answers' latency (an
//! open loop), so command latencies can be read at a known load, as the
//! target "p99 ≤ 10 ms at 1,000 commands/s" asks.
//!
//! Then it waits until the progress read model shows every dossier decided
//! (the projection lag), times the whole-country progress tree query, reads
//! the child's peak RSS, stops it (SIGTERM, drained), counts the events of
//! every store and of the JetStream stream, and measures the raw baselines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use futures::stream::{self, StreamExt as _};
use gradeflow_audit::sources::{PROGRESS, WORKFLOW_SERVICES};
use gradeflow_audit::Sources;
use gradeflow_eventstore::raw::RawRows;
use gradeflow_kit::config::redact_url;
use gradeflow_kit::{Config, Overrides};
use gradeflow_proto::{Actor, Grade, Names, OrgId, Role};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::country::{list_salt, member_name, planned_in_list, score, Shape, BATCH};
use super::deploy::{remove_dir, Place, ScratchPgDatabase, Up};
use super::driver::{Driver, Via};
use super::machine::Machine;
use super::report::{
    format_millis, format_rate, group_thousands, Baseline, Latencies, Rate, Row, Section,
};
use super::scratch::{remove_streams, ScratchDb};
use super::transport;
use crate::seed::{Naming, Preset};

/// Flags of `gradeflow bench cycle`.
#[derive(Debug, Clone, Args)]
pub struct CycleArgs {
    /// Tier list of the country (and of the deployment).
    #[arg(long, value_enum, default_value = "card")]
    pub preset: Preset,
    /// Dossiers in the whole country: members and every unit's collective.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(30..=10_000_000))]
    pub dossiers: u64,
    /// PostgreSQL server to run on (a fresh database `gradeflow_bench_<id>`
    /// is created there and dropped at the end); SQLite files otherwise.
    #[arg(long)]
    pub database_url: Option<String>,
    /// How commands reach the services.
    #[arg(long, value_enum, default_value = "nats")]
    pub via: Via,
    /// Boards working at once (district boards, and cell boards in all).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub boards: u64,
    /// Send at most this many commands per second in all (resends
    /// included), to read latencies at a known load; unset: as fast as the
    /// boards and services go.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: Option<u64>,
    /// Seed of the names and of the planned grades.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Where the run's data dir (SQLite files, keys) is made.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub dir: PathBuf,
    /// Progress tree queries timed at the end.
    #[arg(long, default_value_t = 200)]
    pub progress_queries: u64,
    /// Leave the stores, the streams and the data dir for
    /// `gradeflow bench audit` (it prints the command).
    #[arg(long)]
    pub keep: bool,
}

/// `gradeflow bench cycle`.
pub async fn cycle(args: CycleArgs) -> anyhow::Result<()> {
    let dossiers = usize::try_from(args.dossiers).context("--dossiers does not fit")?;
    let shape = Shape::of(args.preset, dossiers).with_context(|| {
        format!("{dossiers} dossiers are too few for a four-tier country; ask for at least 30")
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let names = Names::new(format!("bench-{id}")).context("making the run's NATS prefix")?;
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = jetstream::new(client.clone());
    let pg = match &args.database_url {
        Some(url) => Some(ScratchPgDatabase::create(url, &id).await?),
        None => None,
    };
    let data_dir = args.dir.join(format!("gradeflow-bench-{id}"));
    let place = Place {
        data_dir: data_dir.clone(),
        names: names.clone(),
        nats_url: args.nats_url.clone(),
        pg,
        tiers: args.preset.name(),
    };
    let made = std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()));
    let stop = gradeflow_kit::shutdown_signal();
    let outcome = match made {
        Ok(()) => {
            super::interruptible(&stop, measure(&args, shape, &place, &client, &js, &id)).await
        }
        Err(e) => Err(e),
    };
    if args.keep {
        let raw = transport::raw_stream_name(&names);
        if js.get_stream(&raw).await.is_ok() {
            if let Err(e) = js.delete_stream(&raw).await {
                eprintln!("gradeflow bench: could not delete the raw stream: {e}");
            }
        }
        if outcome.is_ok() {
            println!();
            println!(
                "kept for `gradeflow bench audit`:\n  gradeflow bench audit --data-dir {} --prefix {} --nats-url {}{}",
                data_dir.display(),
                names.prefix(),
                args.nats_url,
                place
                    .pg
                    .as_ref()
                    .map(|pg| format!(" --database-url {}", pg.url))
                    .unwrap_or_default()
            );
        } else {
            eprintln!(
                "gradeflow bench: kept after the failure: {} (prefix {})",
                data_dir.display(),
                names.prefix()
            );
        }
    } else {
        remove_streams(&js, &names).await;
        if let Some(pg) = &place.pg {
            pg.drop().await;
        }
        remove_dir(&data_dir);
    }
    outcome
}

/// What the cycle itself measured.
struct Driven {
    cycle: String,
    phases: Vec<(&'static str, Duration)>,
    commands: u64,
    decided: u64,
    last_decision: Instant,
}

/// Everything measured in one run.
async fn measure(
    args: &CycleArgs,
    shape: Shape,
    place: &Place,
    client: &async_nats::Client,
    js: &jetstream::Context,
    id: &str,
) -> anyhow::Result<()> {
    let up = Up::start(place).await?;
    let actor = Actor {
        sub: "bench".into(),
        role: Role::Central,
        org: up.printed.root,
    };
    let boards = usize::try_from(args.boards).unwrap_or(64);
    let driver = match args.via {
        Via::Nats => Driver::nats(client.clone(), place.names.clone(), actor),
        Via::Http => Driver::http(&up.printed.portal, up.printed.token.clone(), actor, boards)?,
    };
    let driver = match args.rate {
        Some(rate) => driver.paced(rate),
        None => driver,
    };
    let paced = args
        .rate
        .map(|r| format!(", paced at {} commands/s", group_thousands(r)))
        .unwrap_or_default();
    let second = args
        .preset
        .tiers()
        .0
        .get(1)
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default();
    println!(
        "gradeflow bench cycle: {} preset, {} dossiers ({} provinces, {} {second}s, {} cells, {} members, {} collectives), seed {}, via {}, {boards} boards{paced}",
        args.preset.name(),
        group_thousands(shape.dossiers() as u64),
        shape.provinces,
        group_thousands(shape.second_count() as u64),
        group_thousands(shape.cell_count() as u64),
        group_thousands(shape.members as u64),
        group_thousands(shape.collectives() as u64),
        args.seed,
        match args.via {
            Via::Nats => "NATS request/reply",
            Via::Http => "the portal's HTTP API",
        }
    );
    println!("machine: {}", Machine::this());
    let database = match &place.pg {
        Some(pg) => format!(
            "PostgreSQL, database {} of {}",
            pg.name,
            redact_url(args.database_url.as_deref().unwrap_or_default())
        ),
        None => format!("SQLite files in {}", place.data_dir.display()),
    };
    println!(
        "servers: NATS {} at {}; {database}",
        client.server_info().version,
        args.nats_url
    );
    println!(
        "date:    {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    let started = Instant::now();
    let driven = match drive(&driver, shape, args, up.printed.root, boards).await {
        Ok(d) => d,
        Err(e) => {
            up.kill().await;
            return Err(e);
        }
    };
    eprintln!("waiting for the progress read model…");
    let settled = wait_progress(&driver, &driven.cycle, shape.dossiers() as u64).await;
    let lag = driven.last_decision.elapsed();
    let wall = started.elapsed();
    if let Err(e) = settled {
        up.kill().await;
        return Err(e);
    }
    eprintln!("timing the progress tree query…");
    let mut tree = Latencies::new();
    for _ in 0..args.progress_queries {
        let t = Instant::now();
        if let Err(e) = driver.progress(&driven.cycle, 2).await {
            up.kill().await;
            return Err(e.context("querying the progress tree"));
        }
        tree.record(t.elapsed());
    }
    let rss = up.peak_rss_kib();
    eprintln!("stopping gradeflow up…");
    up.stop().await?;

    // What the run stored and published.
    let stores = count_events(place).await?;
    let appended: u64 = stores.iter().map(|(_, n)| n).sum();
    let events_stream = stream_state(js, &place.names.events_stream()).await?;
    let audit_stream = stream_state(js, &place.names.audit_stream()).await?;
    let message_bytes = events_stream
        .1
        .checked_div(events_stream.0)
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(1_000);

    // The raw limits, on the same servers, right after.
    eprintln!("raw INSERT baseline…");
    let rows = usize::try_from(appended.clamp(20_000, 200_000)).unwrap_or(200_000);
    let raw_insert = raw_insert(place, id, rows).await?;
    eprintln!("raw JetStream publish baseline…");
    transport::create_raw_stream(js, &place.names).await?;
    let raw_publish = transport::raw_publish(
        js,
        &place.names,
        events_stream.0.clamp(20_000, 200_000),
        message_bytes,
    )
    .await?;

    let (commands, decisions) = driver.latencies();
    let by_kind = driver.latencies_by_kind();
    let report = CycleReport {
        shape,
        wall,
        driven,
        lag,
        stores,
        appended,
        events_stream,
        audit_stream,
        message_bytes,
        raw_insert,
        raw_publish,
        commands,
        decisions,
        by_kind,
        tree,
        rss_kib: rss,
        not_yet: driver.not_yet.load(Ordering::Relaxed),
        resent: driver.resent.load(Ordering::Relaxed),
    };
    print!("{}", report.render());
    Ok(())
}

/// Sends the whole cycle; see the module's description.
async fn drive(
    driver: &Driver,
    shape: Shape,
    args: &CycleArgs,
    root: OrgId,
    boards: usize,
) -> anyhow::Result<Driven> {
    let tiers = args.preset.tiers();
    let tier = |i: usize| {
        tiers
            .0
            .get(i)
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default()
    };
    let ctx = Ctx {
        d: driver,
        shape,
        naming: shape.naming(args.preset),
        seed: args.seed,
        cycle: String::new(),
        tiers: [tier(0), tier(1), tier(2), tier(3)],
        permits: Semaphore::new(boards),
        commands: Arc::new(AtomicU64::new(0)),
        decided: Arc::new(AtomicU64::new(0)),
    };
    let mut phases = Vec::new();

    // 1. Setup.
    let t = Instant::now();
    let year = 2026;
    let opened = ctx
        .send(
            "submission",
            "open_cycle.v1",
            json!({"year": year, "kind": "annual", "rulebook": "qd366-2025",
                "tiers": tiers.0.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "deadlines": crate::seed::deadlines(&tiers, year),
                "quota": {"ratio": 0.2, "rounding": "floor"}}),
        )
        .await?;
    let cycle = field(&opened, "id")?;
    let ctx = Ctx { cycle, ..ctx };
    let root_collective = ctx.collective(root, "Ban Chấp hành Trung ương").await?;
    let mut provinces = Vec::new();
    for p in 0..shape.provinces {
        let (code, name) = ctx.naming.province(p + 1);
        let org = ctx.org(&code, &name, &ctx.tiers[2], root).await?;
        let collective = ctx.collective(org, &name).await?;
        provinces.push(Province {
            org,
            code,
            collective,
        });
    }
    phases.push(("setup: cycle, root, provinces", t.elapsed()));

    // 2. The second tier and its cells.
    let t = Instant::now();
    let ticker = AbortOnDrop(ticker(&ctx));
    let mut seconds: Vec<Vec<Option<String>>> = vec![vec![None; shape.seconds]; shape.provinces];
    {
        let ctx = &ctx;
        let provinces = &provinces;
        let mut running = stream::iter(0..shape.second_count())
            .map(|g| async move { district(ctx, provinces, g).await.map(|c| (g, c)) })
            .buffer_unordered(boards);
        while let Some(done) = running.next().await {
            let (g, collective) = done?;
            seconds[g / shape.seconds][g % shape.seconds] = Some(collective);
        }
    }
    phases.push((
        "districts and cells: register, file, appraise, decide",
        t.elapsed(),
    ));

    // 3. Provinces decide their districts' collectives.
    let t = Instant::now();
    {
        let ctx = &ctx;
        let mut running = stream::iter(provinces.iter().zip(&seconds).enumerate())
            .map(|(p, (province, collectives))| async move {
                province_board(ctx, p, province, collectives).await
            })
            .buffer_unordered(boards);
        while let Some(done) = running.next().await {
            done?;
        }
    }
    phases.push(("provinces: decide districts", t.elapsed()));

    // 4. Central decides the provinces, then its own collective.
    let t = Instant::now();
    let listed: Vec<(String, Grade)> = provinces
        .iter()
        .enumerate()
        .map(|(p, province)| {
            (
                province.collective.clone(),
                planned_in_list(shape.provinces, p, ctx.seed, list_salt(3, 0)),
            )
        })
        .collect();
    ctx.decide_all(root, "TW", &listed).await?;
    ctx.file(&root_collective, Grade::Good).await?;
    ctx.appraise(&root_collective, Grade::Good).await?;
    ctx.decide(root, "TW-TW", &[(root_collective.clone(), Grade::Good)])
        .await?;
    let last_decision = Instant::now();
    phases.push(("central: decide provinces and itself", t.elapsed()));
    drop(ticker);

    Ok(Driven {
        cycle: ctx.cycle.clone(),
        phases,
        commands: ctx.commands.load(Ordering::Relaxed),
        decided: ctx.decided.load(Ordering::Relaxed),
        last_decision,
    })
}

/// A province registered at setup.
struct Province {
    org: OrgId,
    code: String,
    collective: String,
}

/// What every board shares.
struct Ctx<'a> {
    d: &'a Driver,
    shape: Shape,
    naming: Naming,
    seed: u64,
    cycle: String,
    /// Tier names, cell first.
    tiers: [String; 4],
    /// Boards at work at once.
    permits: Semaphore,
    commands: Arc<AtomicU64>,
    decided: Arc<AtomicU64>,
}

fn field(v: &Value, name: &str) -> anyhow::Result<String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("answer without `{name}`: {v}"))
}

impl Ctx<'_> {
    async fn send(&self, service: &str, kind: &str, payload: Value) -> anyhow::Result<Value> {
        let answer = self.d.command(service, kind, payload).await?;
        self.commands.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    async fn org(
        &self,
        code: &str,
        name: &str,
        tier: &str,
        parent: OrgId,
    ) -> anyhow::Result<OrgId> {
        let a = self
            .send(
                "submission",
                "register_org.v1",
                json!({"code": code, "name": name, "tier": tier, "parent": parent}),
            )
            .await?;
        field(&a, "id")?
            .parse()
            .with_context(|| format!("the org id of {code}"))
    }

    async fn collective(&self, org: OrgId, name: &str) -> anyhow::Result<String> {
        let a = self
            .send(
                "submission",
                "register_subject.v1",
                json!({"cycle": self.cycle, "kind": "collective", "org": org, "name": name, "category": "01"}),
            )
            .await?;
        field(&a, "dossier")
    }

    async fn member(&self, org: OrgId, n: usize, leader: bool) -> anyhow::Result<String> {
        let a = self
            .send(
                "submission",
                "register_subject.v1",
                json!({"cycle": self.cycle, "kind": "individual", "org": org,
                    "name": member_name(self.seed, n),
                    "category": if leader { "2A" } else { "2B" }, "leader": leader}),
            )
            .await?;
        field(&a, "dossier")
    }

    /// The self-review and the review meeting, proposing `grade`.
    async fn file(&self, dossier: &str, grade: Grade) -> anyhow::Result<()> {
        let (general, tasks) = score(grade);
        self.send(
            "submission",
            "submit_self_review.v1",
            json!({"dossier": dossier, "score": {"general": general, "tasks": tasks},
                "proposed_grade": grade,
                "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
                "shortcomings_fixed": true,
                "report": "Hoàn thành các nhiệm vụ được giao trong năm."}),
        )
        .await?;
        self.send(
            "submission",
            "record_meeting.v1",
            json!({"dossier": dossier, "proposed_grade": grade, "votes": {grade.to_string(): 12},
                "minutes": "Biên bản hội nghị kiểm điểm cuối năm."}),
        )
        .await?;
        Ok(())
    }

    async fn appraise(&self, dossier: &str, grade: Grade) -> anyhow::Result<()> {
        self.send(
            "appraisal",
            "appraise_dossier.v1",
            json!({"dossier": dossier, "recommended_grade": grade, "facts": {}, "notes": "Thẩm định"}),
        )
        .await?;
        Ok(())
    }

    async fn decide(
        &self,
        authority: OrgId,
        number: &str,
        grades: &[(String, Grade)],
    ) -> anyhow::Result<()> {
        let body = json!({"cycle": self.cycle, "authority": authority, "number": number,
            "grades": grades.iter().map(|(d, g)| json!({"dossier": d, "grade": g})).collect::<Vec<_>>()});
        let a = self.send("approval", "decide_batch.v1", body).await?;
        let records = a["records"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            records == grades.len(),
            "decision {number} recorded {records} grades of {}",
            grades.len()
        );
        self.decided
            .fetch_add(grades.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Decides `listed` in batches of [`BATCH`], in order, numbered
    /// `<n>-QĐ/<code>`.
    async fn decide_all(
        &self,
        authority: OrgId,
        code: &str,
        listed: &[(String, Grade)],
    ) -> anyhow::Result<()> {
        for (i, batch) in listed.chunks(BATCH).enumerate() {
            self.decide(authority, &format!("{}-QĐ/{code}", i + 1), batch)
                .await?;
        }
        Ok(())
    }
}

/// Stops a task when dropped (the ticker, also when the cycle fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints how far the cycle got every 5 s on stderr.
fn ticker(ctx: &Ctx<'_>) -> tokio::task::JoinHandle<()> {
    let (commands, decided) = (Arc::clone(&ctx.commands), Arc::clone(&ctx.decided));
    let total = ctx.shape.dossiers() as u64;
    let started = Instant::now();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        loop {
            every.tick().await;
            eprintln!(
                "gradeflow bench: {:.0} s, {} commands, {}/{} dossiers decided",
                started.elapsed().as_secs_f64(),
                group_thousands(commands.load(Ordering::Relaxed)),
                group_thousands(decided.load(Ordering::Relaxed)),
                group_thousands(total)
            );
        }
    })
}

/// One district's (commune's) board; the dossier of its collective.
async fn district(ctx: &Ctx<'_>, provinces: &[Province], g: usize) -> anyhow::Result<String> {
    let shape = ctx.shape;
    let (p, d) = (g / shape.seconds, g % shape.seconds);
    let province = &provinces[p];
    let (code, name) = ctx.naming.second(&province.code, d + 1);
    let (org, collective) = {
        let _permit = ctx.permits.acquire().await?;
        let org = ctx.org(&code, &name, &ctx.tiers[1], province.org).await?;
        (org, ctx.collective(org, &name).await?)
    };
    let first_cell = g * shape.cells;
    let first_member = shape.first_member_of(first_cell);
    let members = shape.first_member_of(first_cell + shape.cells) - first_member;

    // The cell boards register and file, then are appraised.
    let mut cells: Vec<(Vec<(String, Grade)>, String)> = Vec::with_capacity(shape.cells);
    {
        let code = code.as_str();
        let mut running = stream::iter(0..shape.cells)
            .map(|c| async move {
                let _permit = ctx.permits.acquire().await?;
                cell(ctx, org, code, g, c, first_member, members)
                    .await
                    .map(|done| (c, done))
            })
            .buffer_unordered(shape.cells);
        let mut done = Vec::with_capacity(shape.cells);
        while let Some(cell) = running.next().await {
            done.push(cell?);
        }
        done.sort_by_key(|(c, _)| *c);
        cells.extend(done.into_iter().map(|(_, cell)| cell));
    }

    let _permit = ctx.permits.acquire().await?;
    // The district's own collective, decided later by its province.
    let grade = planned_in_list(shape.seconds, d, ctx.seed, list_salt(2, p));
    ctx.file(&collective, grade).await?;
    ctx.appraise(&collective, grade).await?;
    // Its standing committee decides the members, then the cells.
    let listed: Vec<(String, Grade)> = cells.iter().flat_map(|(m, _)| m.iter().cloned()).collect();
    ctx.decide_all(org, &code, &listed).await?;
    let listed: Vec<(String, Grade)> = cells
        .iter()
        .enumerate()
        .map(|(c, (_, dossier))| {
            (
                dossier.clone(),
                planned_in_list(shape.cells, c, ctx.seed, list_salt(1, g)),
            )
        })
        .collect();
    ctx.decide_all(org, &format!("{code}-CB"), &listed).await?;
    Ok(collective)
}

/// One cell's board: registers the cell, its collective and its members,
/// files every self-review and meeting, then has them appraised. Returns the
/// members' dossiers with their planned grades, and the collective's.
async fn cell(
    ctx: &Ctx<'_>,
    district: OrgId,
    district_code: &str,
    g: usize,
    c: usize,
    district_first_member: usize,
    district_members: usize,
) -> anyhow::Result<(Vec<(String, Grade)>, String)> {
    let shape = ctx.shape;
    let index = g * shape.cells + c;
    let (code, name) = ctx.naming.cell(district_code, c + 1);
    let org = ctx.org(&code, &name, &ctx.tiers[0], district).await?;
    let collective = ctx.collective(org, &name).await?;
    let first = shape.first_member_of(index);
    let mut members = Vec::with_capacity(shape.members_of(index));
    for m in 0..shape.members_of(index) {
        let n = first + m;
        let grade = planned_in_list(
            district_members,
            n - district_first_member,
            ctx.seed,
            list_salt(0, g),
        );
        let dossier = ctx.member(org, n, m == 0).await?;
        ctx.file(&dossier, grade).await?;
        members.push((dossier, grade));
    }
    let grade = planned_in_list(shape.cells, c, ctx.seed, list_salt(1, g));
    ctx.file(&collective, grade).await?;
    for (dossier, grade) in &members {
        ctx.appraise(dossier, *grade).await?;
    }
    ctx.appraise(&collective, grade).await?;
    Ok((members, collective))
}

/// A province's board: its collective's self-review and meeting, the
/// decisions on its districts' collectives, and its appraisal by Central.
async fn province_board(
    ctx: &Ctx<'_>,
    p: usize,
    province: &Province,
    collectives: &[Option<String>],
) -> anyhow::Result<()> {
    let _permit = ctx.permits.acquire().await?;
    let grade = planned_in_list(ctx.shape.provinces, p, ctx.seed, list_salt(3, 0));
    ctx.file(&province.collective, grade).await?;
    let listed = collectives
        .iter()
        .enumerate()
        .map(|(d, dossier)| {
            let dossier = dossier
                .clone()
                .context("a district without its collective")?;
            Ok((
                dossier,
                planned_in_list(ctx.shape.seconds, d, ctx.seed, list_salt(2, p)),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ctx.decide_all(province.org, &province.code, &listed)
        .await?;
    ctx.appraise(&province.collective, grade).await?;
    Ok(())
}

/// Waits until the progress read model shows every dossier decided and the
/// root complete.
async fn wait_progress(driver: &Driver, cycle: &str, dossiers: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    loop {
        let node = driver.progress(cycle, 0).await?;
        let decided = node.totals.decided;
        if decided >= dossiers && node.complete {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the progress read model shows {decided} of {dossiers} dossiers decided after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Events per store (its head position), read after the services stopped.
async fn count_events(place: &Place) -> anyhow::Result<Vec<(String, u64)>> {
    let sources = Sources::new(config_of(
        &place.data_dir,
        place.pg.as_ref().map(|pg| pg.url.clone()),
        place.names.prefix(),
        &place.nats_url,
    )?);
    let stores = sources
        .open(&WORKFLOW_SERVICES, &[PROGRESS])
        .await
        .context("opening the services' stores")?;
    let mut counts = Vec::new();
    for (service, store) in stores.iter() {
        let head = store
            .head()
            .await
            .with_context(|| format!("reading the head of the {service} store"))?;
        counts.push((
            service.to_owned(),
            head.map_or(0, |(position, _)| u64::try_from(position).unwrap_or(0)),
        ));
    }
    stores.close().await;
    Ok(counts)
}

/// The configuration `gradeflow audit` would resolve for these flags, with
/// the database exactly as given (not taken from the environment).
pub fn config_of(
    data_dir: &std::path::Path,
    database_url: Option<String>,
    prefix: &str,
    nats_url: &str,
) -> anyhow::Result<Config> {
    let overrides = Overrides {
        prefix: Some(prefix.to_owned()),
        nats_url: Some(nats_url.to_owned()),
        data_dir: Some(data_dir.to_owned()),
        ..Overrides::default()
    };
    let mut config = Config::from_process_env()?.with_overrides(&overrides)?;
    config.database_url = database_url;
    Ok(config)
}

/// Messages and bytes of a stream.
async fn stream_state(js: &jetstream::Context, name: &str) -> anyhow::Result<(u64, u64)> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("looking up the stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading the state of {name}"))?;
    Ok((info.state.messages, info.state.bytes))
}

/// `rows` event-shaped rows inserted 1000 per transaction into a scratch
/// table next to the services' stores (a file in the same data dir, or a
/// schema in the same database).
async fn raw_insert(place: &Place, id: &str, rows: usize) -> anyhow::Result<Rate> {
    let (db, url) = match &place.pg {
        Some(pg) => (ScratchDb::postgres(id), pg.url.clone()),
        None => (ScratchDb::sqlite(&place.data_dir, id), String::new()),
    };
    let store = db.open(&url).await?;
    let measured = store
        .raw_insert_baseline(
            rows,
            1_000,
            RawRows {
                payload_bytes: RAW_PAYLOAD_BYTES,
                metadata_bytes: RAW_METADATA_BYTES,
                streams: RAW_STREAMS,
            },
        )
        .await
        .context("the raw INSERT baseline");
    db.remove(&store).await;
    let r = measured?;
    Ok(Rate::new(r.rows, r.elapsed))
}

/// Payload of the raw INSERT rows: about a self-review's.
const RAW_PAYLOAD_BYTES: usize = 400;
/// Metadata of the raw INSERT rows: about a command's (actor, correlation
/// and causation ids, trace context, service, province).
const RAW_METADATA_BYTES: usize = 300;
/// Streams the raw INSERT rows go round: every row of a transaction on a
/// different stream, as the events of many boards' dossiers are.
const RAW_STREAMS: usize = 1_000;

/// Everything the report prints.
struct CycleReport {
    shape: Shape,
    wall: Duration,
    driven: Driven,
    lag: Duration,
    stores: Vec<(String, u64)>,
    appended: u64,
    events_stream: (u64, u64),
    audit_stream: (u64, u64),
    message_bytes: usize,
    raw_insert: Rate,
    raw_publish: Rate,
    commands: Latencies,
    decisions: Latencies,
    /// Accepted commands by kind.
    by_kind: BTreeMap<String, Latencies>,
    tree: Latencies,
    rss_kib: Option<u64>,
    not_yet: u64,
    resent: u64,
}

impl CycleReport {
    fn render(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(&mut out, String::new());
        line(&mut out, format!("{:<58}{:>12}", "phase", "wall time"));
        for (phase, d) in &self.driven.phases {
            line(&mut out, format!("{phase:<58}{:>10.2} s", d.as_secs_f64()));
        }
        line(
            &mut out,
            format!(
                "{:<58}{:>10.3} s",
                "projection lag (last decision → progress complete)",
                self.lag.as_secs_f64()
            ),
        );
        line(
            &mut out,
            format!("{:<58}{:>10.2} s", "end to end", self.wall.as_secs_f64()),
        );
        line(&mut out, String::new());

        let section = Section {
            title: "throughput (end to end, setup to progress complete)".into(),
            rows: vec![
                Row {
                    figure: "dossiers".into(),
                    rate: Rate::new(self.shape.dossiers() as u64, self.wall),
                    baselines: vec![],
                },
                Row {
                    figure: "commands".into(),
                    rate: Rate::new(self.driven.commands, self.wall),
                    baselines: vec![],
                },
                Row {
                    figure: "events appended, all stores".into(),
                    rate: Rate::new(self.appended, self.wall),
                    baselines: vec![Baseline {
                        what: "INSERT, 1000 rows per transaction".into(),
                        rate: self.raw_insert,
                    }],
                },
                Row {
                    figure: "events published to JetStream".into(),
                    rate: Rate::new(self.events_stream.0, self.wall),
                    baselines: vec![Baseline {
                        what: format!("JetStream publish, pipelined, Nats-Msg-Id, {} B", self.message_bytes),
                        rate: self.raw_publish,
                    }],
                },
            ],
            notes: vec![
                format!(
                    "events per store: {}; {} grades decided",
                    self.stores
                        .iter()
                        .map(|(s, n)| format!("{s} {}", group_thousands(*n)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    group_thousands(self.driven.decided)
                ),
                format!(
                    "JetStream: {} event messages ({} B on average), {} audit messages",
                    group_thousands(self.events_stream.0),
                    self.message_bytes,
                    group_thousands(self.audit_stream.0)
                ),
                format!(
                    "resent: {} commands refused for an event not observed yet, {} without an answer",
                    group_thousands(self.not_yet),
                    group_thousands(self.resent)
                ),
            ],
        };
        out.push_str(&section.to_string());
        line(&mut out, String::new());

        line(
            &mut out,
            format!(
                "{:<38}{:>13}{:>13}{:>13}{:>13}  {}",
                "latency", "count", "p50", "p99", "max", "target"
            ),
        );
        for (what, l, target) in [
            (
                "command (all but decide_batch)",
                &self.commands,
                "p99 ≤ 10 ms at 1,000 commands/s",
            ),
            (
                "decide_batch (≤ 50 dossiers)",
                &self.decisions,
                "p99 ≤ 50 ms",
            ),
            (
                "progress tree, whole country, depth 2",
                &self.tree,
                "p99 ≤ 50 ms at 1M dossiers",
            ),
        ] {
            line(
                &mut out,
                format!(
                    "{what:<38}{:>13}{:>13}{:>13}{:>13}  {target}",
                    group_thousands(l.count()),
                    format_millis(l.quantile(0.5)),
                    format_millis(l.quantile(0.99)),
                    format_millis(l.quantile(1.0)),
                ),
            );
        }
        // Where a tail comes from: the same latencies by command kind.
        for (kind, l) in &self.by_kind {
            line(
                &mut out,
                format!(
                    "{:<38}{:>13}{:>13}{:>13}{:>13}",
                    format!("  {kind}"),
                    group_thousands(l.count()),
                    format_millis(l.quantile(0.5)),
                    format_millis(l.quantile(0.99)),
                    format_millis(l.quantile(1.0)),
                ),
            );
        }
        line(&mut out, String::new());
        let dossiers_per_s = self.shape.dossiers() as f64 / self.wall.as_secs_f64().max(1e-9);
        line(
            &mut out,
            format!(
                "peak RSS of gradeflow up (every service and the portal): {} (target < 512 MiB at 1M dossiers)",
                self.rss_kib
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "unknown".into())
            ),
        );
        line(
            &mut out,
            format!(
                "target end to end ≥ 5,000 dossiers/s: {} dossiers/s, {}",
                format_rate(dossiers_per_s),
                if dossiers_per_s >= 5_000.0 {
                    "met"
                } else {
                    "not met"
                }
            ),
        );
        out
    }
}
