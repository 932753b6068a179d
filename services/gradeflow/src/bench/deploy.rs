//! The deployment `gradeflow bench cycle` measures: this very binary run as
//! `gradeflow up` in a child process (every service and the portal), on a
//! fresh data dir, a fresh NATS prefix and — on PostgreSQL — a fresh
//! database, so nothing of another run or deployment is in the way and all
//! of it can be removed afterwards (or kept with `--keep` for
//! `gradeflow bench audit`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use gradeflow_proto::{Names, OrgId};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long `gradeflow up` may take to print its token.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it may take to drain and exit on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// A PostgreSQL database made for one run.
#[derive(Debug, Clone)]
pub struct ScratchPgDatabase {
    /// Its name, `gradeflow_bench_<id>`.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    /// The URL of the database it was created from (to drop it).
    admin_url: String,
}

/// The prefix of the databases [`ScratchPgDatabase::drop`] may drop.
pub const BENCH_DATABASE_PREFIX: &str = "gradeflow_bench_";

impl ScratchPgDatabase {
    /// Creates `gradeflow_bench_<id>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, id: &str) -> anyhow::Result<Self> {
        let name = format!("{BENCH_DATABASE_PREFIX}{id}");
        let mut admin = PgConnection::connect(admin_url).await.with_context(|| {
            format!(
                "connecting to {}",
                gradeflow_kit::config::redact_url(admin_url)
            )
        })?;
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .with_context(|| format!("creating the database {name}"))?;
        admin.close().await.ok();
        Ok(Self {
            url: database_url_with(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    /// The database `url` names, when it is a benchmark database.
    pub fn existing(url: &str, admin_url: &str) -> Option<Self> {
        let name = database_name(url)?;
        name.starts_with(BENCH_DATABASE_PREFIX).then(|| Self {
            name: name.to_owned(),
            url: url.to_owned(),
            admin_url: admin_url.to_owned(),
        })
    }

    /// Drops the database, forcing out connections; best effort, reported
    /// on stderr.
    pub async fn drop(&self) {
        if !self.name.starts_with(BENCH_DATABASE_PREFIX) {
            return;
        }
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            admin
                .execute(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name).as_str())
                .await?;
            admin.close().await
        }
        .await;
        if let Err(e) = dropped {
            eprintln!(
                "gradeflow bench: could not drop the database {}: {e}",
                self.name
            );
        }
    }
}

/// `postgres://…/<old>?query` with the database replaced by `name`.
pub fn database_url_with(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The path starts after the authority (`scheme://authority/path`).
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// The database a `postgres://` URL names.
pub fn database_name(url: &str) -> Option<&str> {
    let base = url.split('?').next()?;
    let after_scheme = base.find("://")? + 3;
    let path = &base[after_scheme..];
    let name = &path[path.find('/')? + 1..];
    (!name.is_empty()).then_some(name)
}

/// What the child printed when it came up.
#[derive(Debug, Clone)]
pub struct Printed {
    /// The portal's base URL.
    pub portal: String,
    /// The root org.
    pub root: OrgId,
    /// A central token at the root.
    pub token: String,
}

/// A running `gradeflow up`.
pub struct Up {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// What it printed.
    pub printed: Printed,
}

/// Where one run's deployment lives.
#[derive(Debug, Clone)]
pub struct Place {
    /// The data dir (SQLite files, keys).
    pub data_dir: PathBuf,
    /// NATS names under the run's prefix.
    pub names: Names,
    /// The NATS server.
    pub nats_url: String,
    /// The PostgreSQL database, when on PostgreSQL.
    pub pg: Option<ScratchPgDatabase>,
    /// The tier preset.
    pub tiers: &'static str,
}

impl Up {
    /// Starts `gradeflow up` at `place` and waits until it printed its
    /// token (the root is registered and every service serves).
    pub async fn start(place: &Place) -> anyhow::Result<Up> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&place.data_dir)
            .args(["--prefix", place.names.prefix()])
            .args(["--nats-url", &place.nats_url])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--tiers", place.tiers])
            // Flags only: the bench's own environment must not point the
            // services elsewhere.
            .env_remove("GRADEFLOW_DATABASE_URL")
            .env(
                "RUST_LOG",
                std::env::var("GRADEFLOW_BENCH_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(pg) = &place.pg {
            cmd.args(["--database-url", &pg.url]);
        }
        // `GRADEFLOW_BENCH_UP_ENV_<NAME>=value` sets `<NAME>=value` for the
        // services only, not for the bench: a heap profiler's `LD_PRELOAD`,
        // say, which must not load into the driver too.
        for (name, value) in up_env(std::env::vars_os()) {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().context("starting gradeflow up")?;
        let pid = child.id().context("gradeflow up has no process id")?;
        let stdout = child.stdout.take().context("no stdout of gradeflow up")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut portal, mut root, mut token) = (None, None, None);
        let read = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("portal:") {
                    portal = Some(rest.trim().to_owned());
                } else if let Some(rest) = line.strip_prefix("root:") {
                    root = rest.split_whitespace().next().and_then(|s| s.parse().ok());
                } else if let Some(rest) = line.strip_prefix("token:") {
                    token = Some(rest.trim().to_owned());
                    break;
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context("reading what gradeflow up printed"),
            Err(_) => anyhow::bail!("gradeflow up did not come up within {START_TIMEOUT:?}"),
        }
        let (Some(portal), Some(root), Some(token)) = (portal, root, token) else {
            anyhow::bail!("gradeflow up exited before printing its portal, root and token");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Up {
            child,
            pid,
            printed: Printed {
                portal,
                root,
                token,
            },
        })
    }

    /// Peak resident set (`VmHWM`) of the child so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        vm_hwm_kib(&status)
    }

    /// Stops the child with SIGTERM (it drains: consumers stop, relays
    /// record their positions, stores commit and close) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let status = tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .context("gradeflow up did not stop on SIGTERM")?
            .context("waiting for gradeflow up")?;
        anyhow::ensure!(status.success(), "gradeflow up exited with {status}");
        Ok(())
    }

    /// Kills the child (after a failure).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `VmHWM` in KiB from `/proc/<pid>/status` text.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Removes the data dir (best effort, reported on stderr).
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("gradeflow bench: could not remove {}: {e}", dir.display());
        }
    }
}

/// The prefix of the variables [`Up::start`] hands to the services alone.
const UP_ENV_PREFIX: &str = "GRADEFLOW_BENCH_UP_ENV_";

/// The variables `GRADEFLOW_BENCH_UP_ENV_<NAME>=value` among `vars`, as
/// (`<NAME>`, value); names that are not UTF-8 or empty after the prefix
/// are left out.
fn up_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(String, std::ffi::OsString)> {
    vars.filter_map(|(name, value)| {
        let name = name.into_string().ok()?;
        let rest = name.strip_prefix(UP_ENV_PREFIX)?;
        (!rest.is_empty()).then(|| (rest.to_owned(), value))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_get_the_new_name_and_keep_their_query() {
        assert_eq!(
            database_url_with("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url_with("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(database_url_with("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            database_name("postgres://h:5/gradeflow_bench_1?a=b"),
            Some("gradeflow_bench_1")
        );
        assert_eq!(database_name("postgres://h:5"), None);
        assert!(ScratchPgDatabase::existing("postgres://h/test", "postgres://h/test").is_none());
        assert!(
            ScratchPgDatabase::existing("postgres://h/gradeflow_bench_a", "postgres://h/test")
                .is_some()
        );
    }

    #[test]
    fn the_peak_rss_is_read_from_proc_status() {
        let status =
            "Name:\tgradeflow\nVmPeak:\t  900 kB\nVmHWM:\t   123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(123_456));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
    }

    #[test]
    fn only_the_prefixed_variables_reach_the_services_without_their_prefix() {
        let vars = [
            ("GRADEFLOW_BENCH_UP_ENV_LD_PRELOAD", "/lib/x.so"),
            ("GRADEFLOW_BENCH_UP_ENV_", "nameless"),
            ("LD_PRELOAD", "/lib/y.so"),
            ("GRADEFLOW_BENCH_LOG", "info"),
            ("GRADEFLOW_BENCH_UP_ENV_MALLOC_ARENA_MAX", "2"),
        ]
        .map(|(n, v)| (n.into(), v.into()));
        assert_eq!(
            up_env(vars.into_iter()),
            vec![
                ("LD_PRELOAD".to_owned(), "/lib/x.so".into()),
                ("MALLOC_ARENA_MAX".to_owned(), "2".into()),
            ]
        );
    }
}
