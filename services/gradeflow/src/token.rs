//! `gradeflow token`: prints a bearer token for the running local deployment,
//! signed with the portal's local key under the same data dir
//! (`<data_dir>/portal/jwt-ed25519.pem`, created by `gradeflow up` or here).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gradeflow_proto::{OrgId, Role};

/// Flags of `gradeflow token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The role: submitter, appraiser, authority, central or auditor.
    #[arg(long)]
    pub role: String,
    /// The org the role is granted at (and its subtree); default: the root.
    #[arg(long)]
    pub org: Option<OrgId>,
    /// The root's code, to find the root when `--org` is not given.
    #[arg(long, default_value = "TW")]
    pub root_code: String,
    /// The token's subject (a user name).
    #[arg(long, default_value = "nguoi-dung")]
    pub name: String,
    /// Lifetime, e.g. `30m`, `8h`, `2d`.
    #[arg(long, default_value = "8h")]
    pub ttl: String,
    /// Data dir of the deployment (default `GRADEFLOW_DATA_DIR` or `./data`).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Runs `gradeflow token`.
pub fn run(args: TokenArgs) -> ExitCode {
    match mint(&args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gradeflow token: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let role: Role = serde_json::from_value(serde_json::json!(args.role))
        .ok()
        .filter(|r| *r != Role::System)
        .with_context(|| {
            format!(
                "unknown role `{}` (submitter, appraiser, authority, central, auditor)",
                args.role
            )
        })?;
    let ttl = parse_ttl(&args.ttl)?;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => gradeflow_kit::Config::from_process_env()?.data_dir,
    };
    let org = args
        .org
        .unwrap_or_else(|| crate::demo::root_id(&args.root_code));
    let keys = gradeflow_portal::LocalKeys::open(&data_dir)?;
    Ok(keys.mint(&args.name, &[gradeflow_portal::Grant { role, org }], ttl)?)
}

/// `30s`, `45m`, `8h`, `2d` (a bare number is seconds).
fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad --ttl `{s}` (e.g. 30m, 8h, 2d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("bad --ttl unit in `{s}` (s, m, h, d)"),
    };
    anyhow::ensure!(secs > 0, "--ttl must be positive");
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_people_write_them() {
        assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(28_800));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("8w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
