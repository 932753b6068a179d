//! Access control at the HTTP edge (`ARCHITECTURE.md` § Security): bearer
//! JWTs whose `roles` claim grants roles at orgs, each valid for the org's
//! whole subtree.
//!
//! * Claims: `{"sub", "roles": [{"role", "org"}], "exp", "iat", "iss"?, "aud"?}`.
//!   `exp` is required, with a small leeway ([`DEFAULT_LEEWAY_SECS`]); a
//!   trusted key configured with an issuer or an audience requires the
//!   token to carry the same. The `system` role cannot be granted by a token.
//! * Algorithms: EdDSA (Ed25519) and RS256, never HMAC: a token is checked
//!   only against trusted keys of its own algorithm (and its `kid`, when
//!   both name one).
//! * Trusted keys: the local Ed25519 key `gradeflow up` creates on first
//!   start ([`LocalKeys`], `<data_dir>/portal/jwt-ed25519.pem`, PKCS#8 PEM,
//!   mode 0600) — `gradeflow token` signs with it ([`mint_token`]); a PEM
//!   public key file (`GRADEFLOW_JWT_KEY_FILE`, Ed25519 or RSA); a JWKS file
//!   (`GRADEFLOW_JWKS_FILE`), re-read when its modification time changes, so
//!   a cron job or sidecar that refreshes it from the identity provider's
//!   JWKS URL rotates keys without a restart. The portal does not fetch a
//!   JWKS URL itself: that needs an HTTPS client (a TLS stack) in the portal
//!   for one GET an hour, which the file plus a refresher does as well.
//!
//! A verified token becomes a [`Caller`]; the handlers pick, per call, the
//! grant to act under (`crate::access`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, HeaderMap};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use gradeflow_proto::{OrgId, Role};

/// Issuer of the tokens [`mint_token`] signs with the local key.
pub const LOCAL_ISSUER: &str = "gradeflow";
/// Audience of the tokens [`mint_token`] signs with the local key.
pub const LOCAL_AUDIENCE: &str = "gradeflow-portal";
/// The local key's file, under `<data_dir>/portal/`.
pub const LOCAL_KEY_FILE: &str = "jwt-ed25519.pem";
/// Seconds of clock skew tolerated on `exp`.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// How often the JWKS file's modification time is looked at by default.
pub const JWKS_RECHECK: Duration = Duration::from_secs(5);

/// One role granted at an org (valid for the org's whole subtree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The org it is granted at.
    pub org: OrgId,
}

/// The claims of a portal token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the caller is (a user name or id); recorded as the actor.
    pub sub: String,
    /// The roles granted.
    #[serde(default)]
    pub roles: Vec<Grant>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    #[serde(default)]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// An authenticated caller: who, and the roles the token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject.
    pub sub: String,
    /// The grants, in the token's order (the first that fits a call is the
    /// one acted under).
    pub grants: Vec<Grant>,
}

/// Why the local key could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the key file failed.
    #[error("portal: cannot {what} the token signing key {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable Ed25519 PKCS#8 key.
    #[error("portal: {} is not an Ed25519 PKCS#8 PEM private key: {problem}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key is neither an Ed25519 nor an RSA private key in PEM.
    #[error("the signing key is not an Ed25519 or RSA private key in PEM")]
    Key,
    /// Signing failed.
    #[error("signing the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// A TTL too large to add to the current time.
    #[error("the token lifetime is too long")]
    Ttl,
}

/// Why the trusted keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A key or JWKS file could not be read.
    #[error("portal: cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no Ed25519 or RSA public key.
    #[error("portal: {} holds no Ed25519 or RSA public key in PEM", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// A JWKS file is not a JWK set, or holds no usable key.
    #[error("portal: {} is not a usable JWKS: {problem}", path.display())]
    BadJwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The Ed25519 key pair `gradeflow up` signs local tokens with, kept in
/// `<data_dir>/portal/jwt-ed25519.pem` (PKCS#8 PEM, created on first start).
#[derive(Clone)]
pub struct LocalKeys {
    path: PathBuf,
    private_pem: String,
    public_pem: String,
    key_id: String,
}

impl std::fmt::Debug for LocalKeys {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("path", &self.path)
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl LocalKeys {
    /// Opens the local key under `data_dir`, creating it (and the
    /// `portal/` directory, mode 0700) on first use. The file is published
    /// whole (written aside, then hard-linked into place), so two processes
    /// starting at once agree on one key.
    pub fn open(data_dir: &Path) -> Result<LocalKeys, KeyFileError> {
        let dir = data_dir.join("portal");
        let path = dir.join(LOCAL_KEY_FILE);
        if !path.exists() {
            create_key_file(&dir, &path)?;
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| KeyFileError::Io {
            what: "read",
            path: path.clone(),
            source,
        })?;
        Self::from_private_pem(path, pem)
    }

    fn from_private_pem(path: PathBuf, private_pem: String) -> Result<LocalKeys, KeyFileError> {
        let unreadable = |problem: String| KeyFileError::Unreadable {
            path: path.clone(),
            problem,
        };
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&private_pem)
            .map_err(|e| unreadable(e.to_string()))?;
        let verifying = signing.verifying_key();
        let public_pem = verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| unreadable(e.to_string()))?;
        Ok(LocalKeys {
            key_id: key_id(verifying.as_bytes()),
            path,
            private_pem,
            public_pem,
        })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private key, PKCS#8 PEM (what [`mint_token`] takes).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public key, SPKI PEM (what verifies the tokens).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The key id put in the tokens' `kid` header.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A token for `sub` with `roles`, valid for `ttl` (what `gradeflow
    /// token` prints).
    pub fn mint(&self, sub: &str, roles: &[Grant], ttl: Duration) -> Result<String, TokenError> {
        mint_token(&self.private_pem, sub, roles, ttl)
    }
}

/// `local-` and the first 16 hex digits of SHA-256 of the raw public key.
fn key_id(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    format!("local-{}", &hex::encode(digest)[..16])
}

fn create_key_file(dir: &Path, path: &Path) -> Result<(), KeyFileError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyFileError::Io {
            what,
            path: p,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create the directory of", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("protect the directory of", dir))?;
    }
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyFileError::Unreadable {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    let tmp = dir.join(format!(
        ".{LOCAL_KEY_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        use std::io::Write;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    });
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        // Another process published its key first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(io("write", path))
}

/// Signs a token for `sub` with `roles`, valid for `ttl` from now, with the
/// Ed25519 (or RSA) private key `key_pem`; issuer [`LOCAL_ISSUER`], audience
/// [`LOCAL_AUDIENCE`].
pub fn mint_token(
    key_pem: &str,
    sub: &str,
    roles: &[Grant],
    ttl: Duration,
) -> Result<String, TokenError> {
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).map_err(|_| TokenError::Ttl)?;
    let claims = Claims {
        sub: sub.to_owned(),
        roles: roles.to_vec(),
        exp: now.checked_add(ttl).ok_or(TokenError::Ttl)?,
        iat: Some(now),
        iss: Some(LOCAL_ISSUER.to_owned()),
        aud: Some(LOCAL_AUDIENCE.to_owned()),
    };
    sign_claims(key_pem, &claims)
}

/// Signs arbitrary `claims` with `key_pem` (Ed25519 → EdDSA, RSA → RS256);
/// an Ed25519 key's token carries its local `kid`.
pub fn sign_claims(key_pem: &str, claims: &Claims) -> Result<String, TokenError> {
    let (header, key) = if let Ok(key) = EncodingKey::from_ed_pem(key_pem.as_bytes()) {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = ed25519_dalek::SigningKey::from_pkcs8_pem(key_pem)
            .ok()
            .map(|k| key_id(k.verifying_key().as_bytes()));
        (header, key)
    } else if let Ok(key) = EncodingKey::from_rsa_pem(key_pem.as_bytes()) {
        (Header::new(Algorithm::RS256), key)
    } else {
        return Err(TokenError::Key);
    };
    jsonwebtoken::encode(&header, claims, &key).map_err(TokenError::Sign)
}

/// A key tokens are verified with, and what it requires of them.
#[derive(Clone)]
struct TrustedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The JWKS file, re-read when it changes.
struct JwksFile {
    path: PathBuf,
    recheck: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    state: Mutex<JwksState>,
}

struct JwksState {
    keys: Arc<Vec<TrustedKey>>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Verifies bearer tokens against the trusted keys.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    keys: Vec<TrustedKey>,
    jwks: Option<JwksFile>,
    leeway: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.inner.keys.len())
            .field("jwks", &self.inner.jwks.as_ref().map(|j| &j.path))
            .field("leeway", &self.inner.leeway)
            .finish()
    }
}

/// Builds an [`Auth`]: each `trust_*` adds keys.
#[derive(Default)]
pub struct AuthBuilder {
    keys: Vec<TrustedKey>,
    jwks: Option<JwksFile>,
    leeway: Option<u64>,
    recheck: Option<Duration>,
}

impl AuthBuilder {
    /// Trusts the local key (tokens from [`mint_token`]: issuer
    /// [`LOCAL_ISSUER`], audience [`LOCAL_AUDIENCE`]).
    pub fn trust_local(mut self, keys: &LocalKeys) -> Result<Self, AuthSetupError> {
        let key = DecodingKey::from_ed_pem(keys.public_pem().as_bytes()).map_err(|_| {
            AuthSetupError::BadKey {
                path: keys.path().to_path_buf(),
            }
        })?;
        self.keys.push(TrustedKey {
            kid: Some(keys.key_id().to_owned()),
            alg: Algorithm::EdDSA,
            key,
            issuer: Some(LOCAL_ISSUER.to_owned()),
            audience: Some(LOCAL_AUDIENCE.to_owned()),
        });
        Ok(self)
    }

    /// Trusts a PEM public key (Ed25519 → EdDSA, RSA → RS256); tokens must
    /// carry `issuer` and `audience` when given.
    pub fn trust_public_pem(
        mut self,
        pem: &str,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Option<Self> {
        let (alg, key) = if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
            (Algorithm::EdDSA, k)
        } else if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            (Algorithm::RS256, k)
        } else {
            return None;
        };
        self.keys.push(TrustedKey {
            kid: None,
            alg,
            key,
            issuer,
            audience,
        });
        Some(self)
    }

    /// Trusts the PEM public key in `path` (`GRADEFLOW_JWT_KEY_FILE`).
    pub fn trust_key_file(
        self,
        path: &Path,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, AuthSetupError> {
        let pem = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.trust_public_pem(&pem, issuer, audience)
            .ok_or_else(|| AuthSetupError::BadKey {
                path: path.to_path_buf(),
            })
    }

    /// Trusts the keys of the JWKS file `path` (`GRADEFLOW_JWKS_FILE`),
    /// re-read whenever its modification time changes.
    pub fn trust_jwks_file(
        mut self,
        path: &Path,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, AuthSetupError> {
        let (keys, modified) = read_jwks(path, &issuer, &audience)?;
        self.jwks = Some(JwksFile {
            path: path.to_path_buf(),
            recheck: self.recheck.unwrap_or(JWKS_RECHECK),
            issuer,
            audience,
            state: Mutex::new(JwksState {
                keys: Arc::new(keys),
                modified,
                checked: Instant::now(),
            }),
        });
        Ok(self)
    }

    /// Seconds of clock skew tolerated (default [`DEFAULT_LEEWAY_SECS`]).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = Some(secs);
        self
    }

    /// How often the JWKS file is looked at for changes (default
    /// [`JWKS_RECHECK`]); set before [`AuthBuilder::trust_jwks_file`].
    pub fn jwks_recheck(mut self, every: Duration) -> Self {
        self.recheck = Some(every);
        self
    }

    /// The verifier.
    pub fn build(self) -> Auth {
        Auth {
            inner: Arc::new(AuthInner {
                keys: self.keys,
                jwks: self.jwks,
                leeway: self.leeway.unwrap_or(DEFAULT_LEEWAY_SECS),
            }),
        }
    }
}

/// The usable keys of a JWKS file: Ed25519 (`OKP`) and RSA keys whose `alg`,
/// when given, is EdDSA or RS256. Symmetric (`oct`) and EC keys are skipped.
fn read_jwks(
    path: &Path,
    issuer: &Option<String>,
    audience: &Option<String>,
) -> Result<(Vec<TrustedKey>, Option<SystemTime>), AuthSetupError> {
    let bad = |problem: String| AuthSetupError::BadJwks {
        path: path.to_path_buf(),
        problem,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let declared = format!("{declared:?}");
            if declared != format!("{alg:?}") {
                continue;
            }
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(TrustedKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
            issuer: issuer.clone(),
            audience: audience.clone(),
        });
    }
    if keys.is_empty() {
        return Err(bad("no Ed25519 or RSA key in it".to_owned()));
    }
    Ok((keys, modified))
}

impl Auth {
    /// A builder with no trusted key yet.
    pub fn builder() -> AuthBuilder {
        AuthBuilder::default()
    }

    /// The caller named by the `Authorization: Bearer …` header, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthenticated(
                "this call needs a bearer token (Authorization: Bearer <token>)",
                "Cần đăng nhập: thiếu mã xác thực (Authorization: Bearer <token>)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "the Authorization header must read `Bearer <token>`",
                    "Tiêu đề Authorization phải có dạng `Bearer <token>`",
                )
            })?;
        self.verify(token)
    }

    /// Verifies `token`: signature by a trusted key of its algorithm, `exp`
    /// (with the leeway), issuer and audience where the key requires them,
    /// and grantable roles.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            ApiError::unauthenticated(
                "the bearer token is not a well-formed JWT",
                "Mã xác thực không đúng định dạng JWT",
            )
        })?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::RS256) {
            return Err(ApiError::unauthenticated(
                format!(
                    "tokens signed with {:?} are not accepted (EdDSA or RS256 only)",
                    header.alg
                ),
                "Thuật toán ký của mã xác thực không được chấp nhận",
            ));
        }
        let jwks = self.jwks_keys();
        let candidates = self
            .inner
            .keys
            .iter()
            .chain(jwks.iter())
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            });
        // The most telling failure wins: a token whose signature verified but
        // which expired says "expired", not "bad signature".
        let mut best: Option<ErrorKind> = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key)) {
                Ok(data) => return caller(data.claims),
                Err(e) => {
                    let kind = e.into_kind();
                    if rank(&kind) > best.as_ref().map_or(0, rank) {
                        best = Some(kind);
                    }
                }
            }
        }
        Err(refusal(best))
    }

    fn validation(&self, key: &TrustedKey) -> Validation {
        let mut v = Validation::new(key.alg);
        v.leeway = self.inner.leeway;
        let mut required = vec!["exp"];
        match &key.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &key.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The JWKS file's keys, re-read when the file changed (looked at no
    /// more often than every few seconds). A file that became unreadable
    /// keeps the keys last read, and says so in the log.
    fn jwks_keys(&self) -> Arc<Vec<TrustedKey>> {
        let Some(jwks) = &self.inner.jwks else {
            return Arc::new(Vec::new());
        };
        let mut state = jwks.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= jwks.recheck {
            state.checked = Instant::now();
            let modified = std::fs::metadata(&jwks.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                match read_jwks(&jwks.path, &jwks.issuer, &jwks.audience) {
                    Ok((keys, modified)) => {
                        tracing::info!(path = %jwks.path.display(), keys = keys.len(), "portal.auth.jwks_reloaded");
                        state.keys = Arc::new(keys);
                        state.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "portal.auth.jwks_unreadable");
                    }
                }
            }
        }
        Arc::clone(&state.keys)
    }
}

/// How telling a verification failure is (higher wins).
fn rank(kind: &ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidSignature => 1,
        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => 2,
        ErrorKind::ExpiredSignature
        | ErrorKind::ImmatureSignature
        | ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::MissingRequiredClaim(_) => 3,
        _ => 1,
    }
}

fn refusal(kind: Option<ErrorKind>) -> ApiError {
    let (reason, message, message_vi) = match kind {
        Some(ErrorKind::ExpiredSignature) => (
            "expired",
            "the bearer token has expired; sign in again".to_owned(),
            "Mã xác thực đã hết hạn; vui lòng đăng nhập lại".to_owned(),
        ),
        Some(ErrorKind::ImmatureSignature) => (
            "not_yet_valid",
            "the bearer token is not valid yet".to_owned(),
            "Mã xác thực chưa có hiệu lực".to_owned(),
        ),
        Some(ErrorKind::InvalidIssuer) => (
            "wrong_issuer",
            "the bearer token was issued by an issuer this portal does not trust".to_owned(),
            "Mã xác thực do một bên phát hành không được tin cậy".to_owned(),
        ),
        Some(ErrorKind::InvalidAudience) => (
            "wrong_audience",
            "the bearer token is not meant for this portal (audience)".to_owned(),
            "Mã xác thực không dành cho cổng thông tin này".to_owned(),
        ),
        Some(ErrorKind::MissingRequiredClaim(claim)) => (
            "missing_claim",
            format!("the bearer token lacks the `{claim}` claim"),
            format!("Mã xác thực thiếu thông tin bắt buộc `{claim}`"),
        ),
        Some(ErrorKind::Json(e)) => (
            "bad_claims",
            format!("the bearer token's claims are not readable: {e}"),
            "Thông tin trong mã xác thực không hợp lệ".to_owned(),
        ),
        _ => (
            "bad_signature",
            "the bearer token's signature does not verify with any trusted key".to_owned(),
            "Chữ ký của mã xác thực không hợp lệ".to_owned(),
        ),
    };
    ApiError::unauthenticated(message, message_vi)
        .with_details(serde_json::json!({ "reason": reason }))
}

/// A verified token's caller; the `system` role is gradeflow's own and is
/// never granted by a token.
fn caller(claims: Claims) -> Result<Caller, ApiError> {
    if claims.sub.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "the bearer token has no subject (`sub`)",
            "Mã xác thực không có định danh người dùng (`sub`)",
        )
        .with_details(serde_json::json!({ "reason": "missing_claim" })));
    }
    if claims.roles.iter().any(|g| g.role == Role::System) {
        return Err(ApiError::unauthenticated(
            "the role `system` cannot be granted by a token",
            "Vai trò `system` không thể được cấp qua mã xác thực",
        )
        .with_details(serde_json::json!({ "reason": "bad_claims" })));
    }
    Ok(Caller {
        sub: claims.sub,
        grants: claims.roles,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant(role: Role) -> Grant {
        Grant {
            role,
            org: OrgId::new(),
        }
    }

    #[test]
    fn the_local_key_is_created_once_and_verifies_its_own_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let keys = LocalKeys::open(dir.path()).unwrap();
        let again = LocalKeys::open(dir.path()).unwrap();
        assert_eq!(keys.public_pem(), again.public_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let auth = Auth::builder().trust_local(&keys).unwrap().build();
        let g = grant(Role::Central);
        let token = keys.mint("alice", &[g], Duration::from_secs(60)).unwrap();
        let caller = auth.verify(&token).unwrap();
        assert_eq!(caller.sub, "alice");
        assert_eq!(caller.grants, vec![g]);
    }

    #[test]
    fn tokens_of_another_key_expired_or_granting_system_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let keys = LocalKeys::open(dir.path()).unwrap();
        let stranger = LocalKeys::open(other.path()).unwrap();
        let auth = Auth::builder().trust_local(&keys).unwrap().build();
        let reason = |t: &str| auth.verify(t).unwrap_err().details["reason"].clone();

        let forged = stranger
            .mint("mallory", &[grant(Role::Central)], Duration::from_secs(60))
            .unwrap();
        assert_eq!(reason(&forged), "bad_signature");

        let now = chrono::Utc::now().timestamp();
        let expired = Claims {
            sub: "bob".into(),
            roles: vec![grant(Role::Submitter)],
            exp: now - 60,
            iat: Some(now - 120),
            iss: Some(LOCAL_ISSUER.into()),
            aud: Some(LOCAL_AUDIENCE.into()),
        };
        assert_eq!(
            reason(&sign_claims(keys.private_pem(), &expired).unwrap()),
            "expired"
        );

        let wrong_aud = Claims {
            exp: now + 60,
            aud: Some("someone-else".into()),
            ..expired.clone()
        };
        assert_eq!(
            reason(&sign_claims(keys.private_pem(), &wrong_aud).unwrap()),
            "wrong_audience"
        );

        let no_iss = Claims {
            exp: now + 60,
            iss: None,
            ..expired.clone()
        };
        assert_eq!(
            reason(&sign_claims(keys.private_pem(), &no_iss).unwrap()),
            "missing_claim"
        );

        let system = keys
            .mint("x", &[grant(Role::System)], Duration::from_secs(60))
            .unwrap();
        assert_eq!(reason(&system), "bad_claims");
        assert_eq!(auth.verify("not.a.jwt").unwrap_err().status, 401);
    }

    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/rsa-test-private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/rsa-test-public.pem");

    fn claims(iss: Option<&str>, aud: Option<&str>) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: "idp-user".into(),
            roles: vec![grant(Role::Appraiser)],
            exp: now + 60,
            iat: Some(now),
            iss: iss.map(str::to_owned),
            aud: aud.map(str::to_owned),
        }
    }

    #[test]
    fn rs256_tokens_verify_against_a_configured_public_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idp.pem");
        std::fs::write(&path, RSA_PUBLIC).unwrap();
        let auth = Auth::builder()
            .trust_key_file(
                &path,
                Some("https://id.example".into()),
                Some("gradeflow".into()),
            )
            .unwrap()
            .build();
        let good = sign_claims(
            RSA_PRIVATE,
            &claims(Some("https://id.example"), Some("gradeflow")),
        )
        .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&good).unwrap().alg,
            Algorithm::RS256
        );
        assert_eq!(auth.verify(&good).unwrap().sub, "idp-user");
        let reason = |t: &str| auth.verify(t).unwrap_err().details["reason"].clone();
        let other_issuer = sign_claims(
            RSA_PRIVATE,
            &claims(Some("https://evil.example"), Some("gradeflow")),
        )
        .unwrap();
        assert_eq!(reason(&other_issuer), "wrong_issuer");
        // An Ed25519 token is not checked against an RSA key at all.
        let local = LocalKeys::open(dir.path()).unwrap();
        let ed = sign_claims(
            local.private_pem(),
            &claims(Some("https://id.example"), Some("gradeflow")),
        )
        .unwrap();
        assert_eq!(reason(&ed), "bad_signature");
        assert!(matches!(
            Auth::builder().trust_key_file(&dir.path().join("missing.pem"), None, None),
            Err(AuthSetupError::Read { .. })
        ));
    }

    #[test]
    fn jwks_keys_verify_by_kid_and_a_rotated_file_is_picked_up() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (
            LocalKeys::open(a.path()).unwrap(),
            LocalKeys::open(b.path()).unwrap(),
        );
        let jwk = |keys: &LocalKeys| {
            let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(keys.private_pem()).unwrap();
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(signing.verifying_key().as_bytes());
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                               "kid": keys.key_id(), "x": x})
        };
        let path = dir.path().join("jwks.json");
        // An HMAC key in the set is ignored, never trusted.
        let set = |k: &LocalKeys| {
            serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, jwk(k)]})
        };
        std::fs::write(&path, set(&old).to_string()).unwrap();
        let auth = Auth::builder()
            .jwks_recheck(Duration::ZERO)
            .trust_jwks_file(&path, None, Some("gradeflow".into()))
            .unwrap()
            .build();
        let token =
            |k: &LocalKeys| sign_claims(k.private_pem(), &claims(None, Some("gradeflow"))).unwrap();
        assert!(auth.verify(&token(&old)).is_ok());
        assert!(auth.verify(&token(&new)).is_err());

        // The refresher replaces the file: the new key is trusted, the old one no longer.
        std::thread::sleep(Duration::from_millis(20));
        let tmp = dir.path().join("jwks.json.new");
        std::fs::write(&tmp, set(&new).to_string()).unwrap();
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(auth.verify(&token(&new)).is_ok());
        assert!(auth.verify(&token(&old)).is_err());

        std::fs::write(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        assert!(matches!(
            Auth::builder().trust_jwks_file(&path, None, None),
            Err(AuthSetupError::BadJwks { .. })
        ));
    }

    #[test]
    fn the_authorization_header_must_carry_a_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let keys = LocalKeys::open(dir.path()).unwrap();
        let auth = Auth::builder().trust_local(&keys).unwrap().build();
        let mut headers = HeaderMap::new();
        assert_eq!(auth.authenticate(&headers).unwrap_err().status, 401);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(auth.authenticate(&headers).unwrap_err().status, 401);
        let token = keys
            .mint("carol", &[grant(Role::Auditor)], Duration::from_secs(60))
            .unwrap();
        headers.insert(
            header::AUTHORIZATION,
            format!("bearer {token}").parse().unwrap(),
        );
        assert_eq!(auth.authenticate(&headers).unwrap().sub, "carol");
    }
}
