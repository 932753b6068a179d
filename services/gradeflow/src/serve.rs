//! `gradeflow up` (every service in one process, on the embedded default)
//! and `gradeflow submission|appraisal|approval` (one service alone, for a
//! distributed deployment). Both wire the same pieces: configuration, NATS
//! (started under the data dir when none listens and `nats-server` is
//! installed), the JetStream streams, one event store per service, and each
//! service's relay, consumer and command server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, ValueEnum};
use gradeflow_appraisal_server::Appraisal;
use gradeflow_approval_server::{audit_message, Approval, KeyRing};
use gradeflow_bus::{ensure_streams, Relay, StreamSettings};
use gradeflow_eventstore::{Store, StoreOptions};
use gradeflow_kit::{Config, Health, Metrics, Overrides};
use gradeflow_progress::Progress;
use gradeflow_proto::{Names, Tiers};
use gradeflow_service::runtime::{spawn, Wiring};
use gradeflow_service::Workflow;
use gradeflow_submission_server::Submission;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::demo;

/// A workflow service that can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    /// Registry, cycles, subjects, self-reviews and meetings.
    Submission,
    /// Appraisals and returns.
    Appraisal,
    /// Batch decisions and the signed decision log.
    Approval,
    /// The progress read model: trees, roll-ups, reports.
    Progress,
}

impl ServiceName {
    const ALL: [ServiceName; 4] = [
        ServiceName::Submission,
        ServiceName::Appraisal,
        ServiceName::Approval,
        ServiceName::Progress,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ServiceName::Submission => "submission",
            ServiceName::Appraisal => "appraisal",
            ServiceName::Approval => "approval",
            ServiceName::Progress => "progress",
        }
    }
}

/// Flags shared by `up` and the single-service commands; each also has its
/// `GRADEFLOW_*` variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL URL (one schema per service); SQLite files otherwise.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Data directory (SQLite files, signing keys, an embedded NATS).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// NATS URL.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Prefix of every NATS subject, stream and consumer.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Address of the HTTP endpoints (health, readiness, metrics).
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Tier list of the deployment: `card` or `vn2025`.
    #[arg(long, default_value = "card")]
    pub tiers: String,
}

/// Flags of `gradeflow up` only.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Code of the root organisation registered on first start.
    #[arg(long, default_value = "TW")]
    pub root_code: String,
    /// Fill an empty deployment with a small demo country and cycle.
    #[arg(long)]
    pub demo: bool,
}

/// `gradeflow up`.
pub fn up(args: UpArgs) -> ExitCode {
    exit(runtime().and_then(|rt| {
        rt.block_on(run(
            ServiceName::ALL.to_vec(),
            true,
            args.serve.clone(),
            Some(args),
        ))
    }))
}

/// `gradeflow <service>`.
pub fn one(service: ServiceName, args: ServeArgs) -> ExitCode {
    exit(runtime().and_then(|rt| rt.block_on(run(vec![service], false, args, None))))
}

/// `gradeflow portal`: the HTTP edge alone.
pub fn portal(args: ServeArgs) -> ExitCode {
    exit(runtime().and_then(|rt| rt.block_on(run(Vec::new(), true, args, None))))
}

/// Threads for blocking work (`spawn_blocking`: loading or creating an
/// authority's signing key, checking the decision log at start), at most.
/// tokio's default is 512, started on demand and ended after 10 s idle: a
/// wave of first decisions by many authorities (each waiting for the key
/// ring's lock) started dozens at once, again at every wave, and in a 1M
/// cycle the resident memory jumped by up to 233 MiB with those waves (each
/// new thread gets an allocator heap of its own); with a few threads kept,
/// it no longer did (`docs/performance.md`). The key ring serialises that
/// work anyway, so a few threads, kept a minute, do it as fast.
const BLOCKING_THREADS: usize = 4;

/// How long an idle blocking thread is kept for the next task.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(60);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .context("starting the async runtime")
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gradeflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &ServeArgs, service_name: &str) -> anyhow::Result<Config> {
    let overrides = Overrides {
        prefix: args.prefix.clone(),
        nats_url: args.nats_url.clone(),
        database_url: args.database_url.clone(),
        http_addr: args.http_addr.clone(),
        data_dir: args.data_dir.clone(),
        service_name: Some(service_name.to_owned()),
        ..Overrides::default()
    };
    Ok(Config::from_process_env()?.with_overrides(&overrides)?)
}

async fn run(
    services: Vec<ServiceName>,
    with_portal: bool,
    args: ServeArgs,
    up: Option<UpArgs>,
) -> anyhow::Result<()> {
    let label = match (services.as_slice(), with_portal) {
        ([one], false) => format!("gradeflow-{}", one.as_str()),
        ([], true) => "gradeflow-portal".to_owned(),
        _ => "gradeflow".to_owned(),
    };
    let config = config(&args, &label)?;
    let tiers = Tiers::preset(&args.tiers)
        .with_context(|| format!("unknown tier preset `{}` (card, vn2025)", args.tiers))?;
    let _telemetry = gradeflow_kit::telemetry::init(&config.telemetry())?;
    if !config.uses_postgres() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    }
    // The models' scratch files (`gradeflow_service::spill`): unlinked as
    // soon as they are opened, so nothing is left here after a stop.
    gradeflow_service::spill::set_dir(config.data_dir.join("spill"));
    gradeflow_service::spill::set_capacity(config.model_cache);
    let shutdown = gradeflow_kit::shutdown_signal();
    let (client, _embedded_nats) = nats(&config).await?;
    let js = jetstream::new(client.clone());
    let streams = StreamSettings {
        replicas: config.stream_replicas,
        placement_cluster: config.stream_cluster.clone(),
        placement_tags: config.stream_tags.clone(),
        ..StreamSettings::default()
    };
    ensure_streams(&js, &config.names, &streams)
        .await
        .context("creating or checking the JetStream streams")?;

    let health = Health::new();
    let metrics = Metrics::new();
    // `/readyz` follows the real state: unready while NATS is away (the
    // client reconnects on its own) or a store does not answer.
    let nats_probe = client.clone();
    health.add_check("nats", move || {
        let state = nats_probe.connection_state();
        async move {
            match state {
                async_nats::connection::State::Connected => Ok("connected".to_owned()),
                other => Err(format!("NATS connection is {other:?}")),
            }
        }
    });
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut stores = Vec::new();
    for service in &services {
        let store = open_store(&config, service.as_str()).await?;
        stores.push(store.clone());
        let probe = store.clone();
        health.add_check(format!("{}.store", service.as_str()), move || {
            let store = probe.clone();
            async move {
                store
                    .head()
                    .await
                    .map(|_| "answers".to_owned())
                    .map_err(|e| e.to_string())
            }
        });
        let wiring = |observed: &[&str]| Wiring {
            client: client.clone(),
            names: config.names.clone(),
            store: store.clone(),
            observed: observed.iter().map(|s| (*s).to_owned()).collect(),
        };
        let started = match service {
            ServiceName::Submission => {
                let w = Submission::open_with_tiers(store.clone(), tiers.clone()).await?;
                start(
                    w,
                    wiring(&gradeflow_submission_server::OBSERVED_KINDS),
                    &shutdown,
                )
                .await?
            }
            ServiceName::Appraisal => {
                let w = Appraisal::open(store.clone()).await?;
                start(
                    w,
                    wiring(&gradeflow_appraisal_server::OBSERVED_KINDS),
                    &shutdown,
                )
                .await?
            }
            ServiceName::Approval => {
                let keys = KeyRing::open(config.data_dir.join("keys"))?;
                let w = Approval::open(store.clone(), keys).await?;
                let mut t = start(
                    w,
                    wiring(gradeflow_approval_server::OBSERVED_KINDS),
                    &shutdown,
                )
                .await?;
                t.push(tokio::spawn(
                    audit_relay(store.clone(), &client, config.names.clone()).run(shutdown.clone()),
                ));
                t
            }
            ServiceName::Progress => {
                let w = Progress::open(store.clone()).await?;
                let kinds = Progress::observed_kinds();
                let observed: Vec<&str> = kinds.iter().map(String::as_str).collect();
                start(w, wiring(&observed), &shutdown).await?
            }
        };
        tasks.extend(started);
        health.set_ready(service.as_str(), true, "serving commands");
    }

    let portal = if with_portal {
        let portal_config = gradeflow_portal::PortalConfig {
            tiers: tiers.clone(),
            ..gradeflow_portal::PortalConfig::from_kit(&config)
        }
        .with_env_map(std::env::vars());
        let state = gradeflow_portal::PortalState::open(
            portal_config,
            client.clone(),
            health.clone(),
            metrics.clone(),
        )
        .await
        .context("starting the portal")?;
        state.end_streams_on(shutdown.clone());
        Some(state)
    } else {
        None
    };
    let app = match &portal {
        Some(state) => gradeflow_portal::router(state.clone()),
        None => gradeflow_kit::router(health, metrics),
    };
    let http = serve_http(config.http_addr, app, shutdown.clone()).await?;
    if let Some(up) = up {
        let root = demo::ensure_root(&client, &config.names, &up.root_code, &tiers).await?;
        let token = gradeflow_portal::LocalKeys::open(&config.data_dir)?.mint(
            "trung-uong",
            &[gradeflow_portal::Grant {
                role: gradeflow_proto::Role::Central,
                org: root,
            }],
            Duration::from_secs(8 * 3600),
        )?;
        println!("gradeflow is up");
        println!("  portal:  http://{http}");
        println!(
            "  nats:    {} (prefix {})",
            config.nats_url_redacted(),
            config.prefix()
        );
        println!("  root:    {} ({})", root, up.root_code);
        if up.demo {
            match demo::seed(&client, &config.names, root, &tiers).await? {
                Some(summary) => println!("  demo:    {summary}"),
                None => println!("  demo:    already present"),
            }
        }
        println!("  token:   {token}");
        println!("           (central staff at the root, 8 h; `gradeflow token` mints others)");
    } else if services.is_empty() {
        println!("gradeflow portal is up (http://{http})");
    } else {
        println!("gradeflow {} is up (http://{http})", services[0].as_str());
    }

    shutdown.cancelled().await;
    tracing::info!("gradeflow.shutdown.draining");
    // Intake stops first (command servers and consumers watch the token),
    // in-flight work finishes, relays record their positions, then the
    // stores commit what is queued and close.
    let grace = config.shutdown_grace;
    for t in tasks {
        if tokio::time::timeout(grace, t).await.is_err() {
            tracing::warn!("gradeflow.shutdown.task_unfinished");
        }
    }
    if let Some(state) = portal {
        state.close().await;
    }
    for s in stores {
        s.close().await;
    }
    Ok(())
}

async fn start<W: Workflow>(
    workflow: W,
    wiring: Wiring,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let service = workflow.service();
    spawn(Arc::new(workflow), wiring, shutdown.clone())
        .await
        .with_context(|| format!("starting the {service} service"))
}

/// The store of `service`: its SQLite file, or its schema in PostgreSQL.
async fn open_store(config: &Config, service: &str) -> anyhow::Result<Store> {
    let opts = StoreOptions {
        schema: config.uses_postgres().then(|| service.to_owned()),
        pool_size: config.db_pool,
        ..StoreOptions::default()
    };
    let url = config.store_url(service);
    Store::connect(&url, opts)
        .await
        .with_context(|| format!("opening the {service} event store"))
}

/// Mirrors the decision log to `<prefix>_AUDIT` (see
/// [`audit_message`]), with its own recorded position so it resumes where it
/// stopped.
fn audit_relay(store: Store, client: &async_nats::Client, names: Names) -> Relay {
    Relay::new(store, client, names, "approval-audit").with_mapper(Arc::new(audit_message))
}

/// Connects to NATS; when nothing listens at a loopback URL and `nats-server`
/// is installed, starts one with JetStream under the data dir first.
async fn nats(config: &Config) -> anyhow::Result<(async_nats::Client, Option<EmbeddedNats>)> {
    match config.connect_nats().await {
        Ok(c) => Ok((c, None)),
        Err(first) => {
            let Some(embedded) = EmbeddedNats::start(&config.nats_url, &config.data_dir)? else {
                return Err(first)
                    .with_context(|| format!("connecting to NATS at {}", config.nats_url));
            };
            for _ in 0..100 {
                if let Ok(c) = config.connect_nats().await {
                    return Ok((c, Some(embedded)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!(
                "started nats-server, but it did not accept connections at {}",
                config.nats_url
            )
        }
    }
}

/// A `nats-server` this process started; stopped when dropped.
struct EmbeddedNats {
    child: std::process::Child,
}

impl EmbeddedNats {
    fn start(url: &str, data_dir: &Path) -> anyhow::Result<Option<EmbeddedNats>> {
        let Some((host, port)) = loopback_host_port(url) else {
            return Ok(None);
        };
        let binary = [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let Some(binary) = binary else {
            return Ok(None);
        };
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store)?;
        eprintln!(
            "gradeflow: no NATS at {url}; starting {binary} with JetStream under {}",
            store.display()
        );
        let child = std::process::Command::new(binary)
            .args(["-a", &host, "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Some(EmbeddedNats { child }))
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(host, port)` of a `nats://` URL on this machine, else `None`.
fn loopback_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let hostport = rest.split(['/', ',']).next()?;
    let hostport = hostport.rsplit('@').next()?;
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "4222"));
    let port: u16 = port.parse().ok()?;
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
        .then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// Serves `app` (the portal, or `/healthz`, `/readyz` and `/metrics` for a
/// service alone) until shutdown; returns the bound address.
async fn serve_http(
    addr: SocketAddr,
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gradeflow.http.failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many blocking tasks at once run on a few threads, not one each.
    #[test]
    fn blocking_work_runs_on_a_bounded_set_of_threads() {
        let rt = runtime().unwrap();
        let threads = rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    tokio::task::spawn_blocking(|| {
                        std::thread::sleep(Duration::from_millis(5));
                        std::thread::current().id()
                    })
                })
                .collect();
            let mut ids = std::collections::HashSet::new();
            for t in tasks {
                ids.insert(t.await.unwrap());
            }
            ids
        });
        assert!(
            (1..=BLOCKING_THREADS).contains(&threads.len()),
            "{} threads",
            threads.len()
        );
    }

    #[test]
    fn only_loopback_urls_get_an_embedded_server() {
        assert_eq!(
            loopback_host_port("nats://127.0.0.1:4333"),
            Some(("127.0.0.1".into(), 4333))
        );
        assert_eq!(
            loopback_host_port("nats://localhost"),
            Some(("localhost".into(), 4222))
        );
        assert_eq!(loopback_host_port("nats://nats.example.org:4222"), None);
        assert_eq!(loopback_host_port("nats://127.0.0.1:notaport"), None);
    }
}
