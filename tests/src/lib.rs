//! Support for the system tests: a deployment of the real `gradeflow`
//! binaries — each service its own process — under a fresh NATS prefix and a
//! fresh data dir (SQLite) or PostgreSQL database, and a driver that sends
//! commands as the portal would. Tests wait on conditions with deadlines,
//! never on bare sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use gradeflow_proto::{Actor, CommandId, Names, OrgId, Role};
use gradeflow_service::client::{CommandClient, CommandFailure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `gradeflow` binary of this build: `GRADEFLOW_BIN`, else next to the
/// test executable's directory (`target/<profile>/gradeflow`), which
/// `cargo nextest run --workspace` builds.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GRADEFLOW_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> → target/debug/gradeflow
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join("gradeflow");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p gradeflow) or run the whole workspace",
        bin.display()
    );
    bin
}

/// The services, in start order.
pub const SERVICES: [&str; 3] = ["submission", "appraisal", "approval"];

/// A running deployment.
pub struct Deployment {
    /// Its data dir (SQLite files, signing keys).
    pub dir: tempfile::TempDir,
    /// Its NATS names.
    pub names: Names,
    /// Its PostgreSQL database, when it runs on PostgreSQL.
    pub pg: Option<gradeflow_testkit::PgDatabase>,
    procs: HashMap<&'static str, Child>,
    /// A NATS connection for the driver and the checks.
    pub nats: async_nats::Client,
}

impl Deployment {
    /// Starts every service as its own process.
    pub async fn start(postgres: bool) -> anyhow::Result<Deployment> {
        let pg = if postgres {
            Some(gradeflow_testkit::fresh_pg().await?)
        } else {
            None
        };
        let mut d = Deployment {
            dir: tempfile::tempdir()?,
            names: gradeflow_testkit::fresh_names(),
            pg,
            procs: HashMap::new(),
            nats: gradeflow_testkit::nats().await?,
        };
        for s in SERVICES {
            d.spawn(s).await?;
        }
        Ok(d)
    }

    /// Starts (or restarts) one service and waits until it serves.
    pub async fn spawn(&mut self, service: &'static str) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary());
        cmd.arg(service)
            .env("GRADEFLOW_PREFIX", self.names.prefix())
            .env("GRADEFLOW_DATA_DIR", self.dir.path())
            .env("GRADEFLOW_NATS_URL", gradeflow_testkit::nats_url())
            .env("GRADEFLOW_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(pg) = &self.pg {
            cmd.env("GRADEFLOW_DATABASE_URL", &pg.url);
        }
        let mut child = cmd.spawn().context("starting gradeflow")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let up = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("is up") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await
        .with_context(|| format!("{service} did not come up in time"))??;
        anyhow::ensure!(up, "{service} exited before it was up");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.procs.insert(service, child);
        Ok(())
    }

    /// Kills a service with SIGKILL, as a crash would.
    pub async fn kill(&mut self, service: &'static str) -> anyhow::Result<()> {
        if let Some(mut child) = self.procs.remove(service) {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Stops every service with SIGTERM and waits for each to drain.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        for (name, mut child) in self.procs.drain() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .with_context(|| format!("{name} did not stop on SIGTERM"))??;
            anyhow::ensure!(status.success(), "{name} exited with {status}");
        }
        Ok(())
    }

    /// The event store URL and PostgreSQL schema of a service.
    pub fn store_location(&self, service: &str) -> (String, Option<String>) {
        match &self.pg {
            Some(pg) => (pg.url.clone(), Some(service.to_owned())),
            None => (
                format!(
                    "sqlite://{}?mode=rwc",
                    self.dir.path().join(format!("{service}.db")).display()
                ),
                None,
            ),
        }
    }

    /// Drops the test's streams and database (best effort).
    pub async fn cleanup(mut self) {
        let _ = self.stop().await;
        let js = async_nats::jetstream::new(self.nats.clone());
        for s in [
            self.names.events_stream(),
            self.names.audit_stream(),
            self.names.dead_letter_stream(),
        ] {
            let _ = js.delete_stream(&s).await;
        }
        if let Some(pg) = &self.pg {
            let _ = pg.drop_db().await;
        }
    }
}

/// Sends commands as the portal would, retrying while the services have not
/// yet observed what a command depends on (events travel asynchronously).
pub struct Driver {
    /// The command client.
    pub client: CommandClient,
}

/// Refusals that mean "not yet": the service has not observed the earlier
/// step, so the same command succeeds a moment later.
const NOT_YET: [&str; 5] = [
    "unknown_dossier",
    "unknown_org",
    "unknown_cycle",
    "wrong_state",
    "rule_violation",
];

impl Driver {
    /// A driver for `deployment`.
    pub fn new(d: &Deployment) -> Driver {
        Driver {
            client: CommandClient::new(d.nats.clone(), d.names.clone(), Duration::from_secs(15)),
        }
    }

    /// Sends once; the answer or the refusal.
    pub async fn send(
        &self,
        actor: &Actor,
        service: &str,
        kind: &str,
        payload: Value,
    ) -> Result<Value, CommandFailure> {
        self.client
            .call(service, kind, actor, payload, CommandId::new(), None)
            .await
    }

    /// Sends until accepted, while the refusal is one of `NOT_YET` (or the
    /// transport failed), for at most 30 s. `only_if` narrows the refusals
    /// that are retried (e.g. a quota refusal is final for a test that
    /// expects it).
    pub async fn eventually(
        &self,
        actor: &Actor,
        service: &str,
        kind: &str,
        payload: Value,
    ) -> anyhow::Result<Value> {
        self.call_traced(actor, service, kind, payload, None).await
    }

    /// [`Driver::eventually`], with the W3C `traceparent` the command
    /// carries (`None`: none, as `eventually` sends it).
    pub async fn call_traced(
        &self,
        actor: &Actor,
        service: &str,
        kind: &str,
        payload: Value,
        traceparent: Option<&str>,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // One command id across retries: a retry after a lost reply is
        // answered with the first reply, never applied twice.
        let id = CommandId::new();
        loop {
            let last = match self
                .client
                .call(
                    service,
                    kind,
                    actor,
                    payload.clone(),
                    id,
                    traceparent.map(str::to_owned),
                )
                .await
            {
                Ok(v) => return Ok(v),
                Err(CommandFailure::Rejected(r)) if NOT_YET.contains(&r.code.as_str()) => {
                    format!("{}: {} {}", r.code, r.message, r.details)
                }
                Err(CommandFailure::Transport(e)) => e.to_string(),
                Err(e) => anyhow::bail!("{kind} refused: {e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{kind} still refused after 30 s: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Central staff at the root.
pub fn central(root: OrgId) -> Actor {
    Actor {
        sub: "can.bo.trung.uong".into(),
        role: Role::Central,
        org: root,
    }
}

/// Polls `check` every 50 ms until it yields `Some`, for at most `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
