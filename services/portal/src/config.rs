//! The portal's configuration: where its idempotency store lives, which
//! token keys it trusts, how long it waits for the services. Built by the
//! binary from `gradeflow_kit::Config` and the `GRADEFLOW_JWT_*` variables
//! ([`PortalConfig::from_kit`], [`PortalConfig::with_env_map`]); the library
//! never reads the environment itself.

use std::path::PathBuf;
use std::time::Duration;

use gradeflow_proto::{Names, Tiers};

/// `GRADEFLOW_JWT_KEY_FILE`: a PEM public key (Ed25519 or RSA) to trust.
pub const ENV_JWT_KEY_FILE: &str = "GRADEFLOW_JWT_KEY_FILE";
/// `GRADEFLOW_JWKS_FILE`: a JWKS file to trust (re-read when it changes).
pub const ENV_JWKS_FILE: &str = "GRADEFLOW_JWKS_FILE";
/// `GRADEFLOW_JWT_ISSUER`: the `iss` the external keys' tokens must carry.
pub const ENV_JWT_ISSUER: &str = "GRADEFLOW_JWT_ISSUER";
/// `GRADEFLOW_JWT_AUDIENCE`: the `aud` the external keys' tokens must carry.
pub const ENV_JWT_AUDIENCE: &str = "GRADEFLOW_JWT_AUDIENCE";
/// `GRADEFLOW_JWT_LOCAL`: `false` stops trusting the local key (production
/// behind an identity provider).
pub const ENV_JWT_LOCAL: &str = "GRADEFLOW_JWT_LOCAL";

/// The largest request body, 1 MiB (`API.md`: 413 above it).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Which token keys the portal trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Trust the local key under `<data_dir>/portal/` (created on first
    /// start); on by default, for `gradeflow up`.
    pub local: bool,
    /// A PEM public key file.
    pub key_file: Option<PathBuf>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` of tokens verified by the key file or the JWKS.
    pub issuer: Option<String>,
    /// Required `aud` of tokens verified by the key file or the JWKS.
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp`.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            local: true,
            key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: crate::auth::DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Everything [`crate::PortalState::open`] needs besides the NATS client.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// NATS names under the deployment's prefix.
    pub names: Names,
    /// The data dir (`portal/jwt-ed25519.pem`, `portal.db`).
    pub data_dir: PathBuf,
    /// PostgreSQL URL; the idempotency store then lives in schema `portal`.
    pub database_url: Option<String>,
    /// The deployment's tier list (checks org imports before sending).
    pub tiers: Tiers,
    /// Token keys.
    pub jwt: JwtConfig,
    /// How long one command or query may take.
    pub command_timeout: Duration,
    /// How long a command refused only because the service has not yet
    /// seen an earlier step (events travel asynchronously) is retried.
    pub catch_up_wait: Duration,
    /// How often the progress stream polls for changes.
    pub progress_poll: Duration,
    /// Interval of the progress stream's keep-alive comments.
    pub keep_alive: Duration,
    /// Services `/readyz` expects to answer a cheap query.
    pub ready_services: Vec<String>,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            names: Names::default(),
            data_dir: PathBuf::from("data"),
            database_url: None,
            tiers: Tiers::card(),
            jwt: JwtConfig::default(),
            command_timeout: Duration::from_secs(10),
            catch_up_wait: Duration::from_secs(5),
            progress_poll: Duration::from_millis(250),
            keep_alive: Duration::from_secs(15),
            ready_services: ["submission", "appraisal", "approval", "progress"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl PortalConfig {
    /// The names, data dir and database of a service process's
    /// configuration; everything else at its default.
    pub fn from_kit(config: &gradeflow_kit::Config) -> Self {
        Self {
            names: config.names.clone(),
            data_dir: config.data_dir.clone(),
            database_url: config.database_url.clone(),
            ..Self::default()
        }
    }

    /// This configuration with the `GRADEFLOW_JWT_*` / `GRADEFLOW_JWKS_FILE`
    /// variables among `vars` applied (pass the process environment from a
    /// binary; empty values count as unset).
    pub fn with_env_map<I>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, value) in vars {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                ENV_JWT_KEY_FILE => self.jwt.key_file = Some(PathBuf::from(value)),
                ENV_JWKS_FILE => self.jwt.jwks_file = Some(PathBuf::from(value)),
                ENV_JWT_ISSUER => self.jwt.issuer = Some(value.to_owned()),
                ENV_JWT_AUDIENCE => self.jwt.audience = Some(value.to_owned()),
                ENV_JWT_LOCAL => {
                    self.jwt.local = !matches!(
                        value.to_ascii_lowercase().as_str(),
                        "false" | "0" | "no" | "off"
                    )
                }
                _ => {}
            }
        }
        self
    }

    /// Where the idempotency store lives: `sqlite://<data_dir>/portal.db`,
    /// or the PostgreSQL URL (schema `portal`).
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("portal.db").display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_variables_override_the_defaults_and_empty_ones_do_not() {
        let c = PortalConfig::default().with_env_map([
            (ENV_JWKS_FILE.to_owned(), "/etc/gf/jwks.json".to_owned()),
            (ENV_JWT_ISSUER.to_owned(), "https://id.example".to_owned()),
            (ENV_JWT_AUDIENCE.to_owned(), " ".to_owned()),
            (ENV_JWT_LOCAL.to_owned(), "false".to_owned()),
        ]);
        assert_eq!(c.jwt.jwks_file, Some(PathBuf::from("/etc/gf/jwks.json")));
        assert_eq!(c.jwt.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(c.jwt.audience, None);
        assert!(!c.jwt.local);
        assert!(PortalConfig::default().jwt.local);
    }
}
