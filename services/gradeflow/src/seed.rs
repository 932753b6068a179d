//! `gradeflow seed`: fills a running deployment with a synthetic country
//! through the public HTTP API (`API.md`), as an outside caller would.
//!
//! Under the existing root it
//! 1. imports the hierarchy (`POST /api/v1/orgs/import`, one JSON array per
//!    chunk, parents first): provinces `P01…`, their districts (`card`) or
//!    communes (`vn2025`) `P01.D01…` / `P01.X01…`, and cells
//!    `P01.D01.C001…`;
//! 2. opens the annual cycle of `--cycle` (`POST /api/v1/cycles`: the
//!    preset's tiers, a deadline per tier, quota 0.2 rounded down);
//! 3. registers subjects (`POST /api/v1/cycles/{cycle}/subjects`): every
//!    unit's collective (the root's too) and `--members` people per cell
//!    with Vietnamese names — the first one the cell's secretary (2A,
//!    leader), a few new members and exempted ones (not reviewed);
//! 4. optionally files the self-review and the review meeting of
//!    `--file-reviews` percent of the reviewed members.
//!
//! Requests run `--concurrency` at a time. Every POST carries an
//! `Idempotency-Key` derived from the codes (and the import chunk's
//! content), so running the same command again — after a crash half-way,
//! say — continues where it stopped and duplicates nothing; an org or a
//! collective registered by other means is taken as already there
//! (`409 duplicate_code`, `409 duplicate_subject`). Keys belong to the
//! token's subject: the token minted from `--data-dir` always has the same
//! one (`gradeflow-seed`); with `--token`, re-run with a token of the same
//! user.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Datelike;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use gradeflow_proto::{Role, Tiers};
use serde_json::{json, Value};

/// The tier list the country is built for (it must be the deployment's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// cell → district → province → central.
    Card,
    /// cell → commune → province → central.
    Vn2025,
}

impl Preset {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Preset::Card => "card",
            Preset::Vn2025 => "vn2025",
        }
    }

    pub(crate) fn tiers(self) -> Tiers {
        match self {
            Preset::Card => Tiers::card(),
            Preset::Vn2025 => Tiers::vn2025(),
        }
    }

    /// The letter of the second tier's codes and its name in org names.
    pub(crate) fn second_tier(self) -> (&'static str, &'static str) {
        match self {
            Preset::Card => ("D", "huyện"),
            Preset::Vn2025 => ("X", "xã"),
        }
    }
}

/// Flags of `gradeflow seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Tier list of the deployment (`gradeflow up --tiers`).
    #[arg(long, value_enum)]
    pub preset: Preset,
    /// Provinces under the root.
    #[arg(long)]
    pub provinces: usize,
    /// Second-tier units per province: districts (`card`) or communes
    /// (`vn2025`).
    #[arg(long)]
    pub districts: usize,
    /// Cells per district (or commune).
    #[arg(long)]
    pub cells: usize,
    /// Members per cell.
    #[arg(long)]
    pub members: usize,
    /// The year of the annual cycle to open (default: this year).
    #[arg(long)]
    pub cycle: Option<i32>,
    /// The portal's base URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token of `central` staff at the root.
    #[arg(long, conflicts_with = "data_dir")]
    pub token: Option<String>,
    /// Data dir of the local deployment, to mint a central token with its
    /// key when `--token` is not given (default `GRADEFLOW_DATA_DIR` or
    /// `./data`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The root's code.
    #[arg(long, default_value = "TW")]
    pub root_code: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Percent of the reviewed members whose self-review and meeting are
    /// filed.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub file_reviews: u8,
    /// Orgs per import request.
    #[arg(long, default_value_t = 2000)]
    pub import_chunk: usize,
}

/// Runs `gradeflow seed`.
pub fn run(args: SeedArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(seed(&args)));
    match result {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gradeflow seed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The subject of the tokens `gradeflow seed` mints: fixed, so the
/// idempotency keys of one run are the next run's too.
const SEED_SUB: &str = "gradeflow-seed";

/// One org of the synthetic country.
#[derive(Debug, Clone)]
struct Unit {
    code: String,
    name: String,
    tier: String,
    parent_code: String,
    /// The cell's running number (for members' names and statuses).
    cell: Option<usize>,
}

/// What a member of a cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    NewMember,
    Exempt,
}

impl Status {
    /// The `n`-th member (across the country) at `position` in its cell:
    /// the secretary first (always reviewed), then about one in ten not
    /// reviewed (new members and the exempted).
    fn of(n: usize, position: usize) -> Status {
        if position == 0 {
            return Status::Active;
        }
        match n % 20 {
            7 => Status::NewMember,
            13 => Status::Exempt,
            _ => Status::Active,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NewMember => "new_member",
            Status::Exempt => "exempt",
        }
    }
}

/// Whether the `n`-th member's self-review and meeting are filed, for
/// `percent` of them, spread evenly.
fn files(n: usize, percent: u8) -> bool {
    (n * 37 + 11) % 100 < usize::from(percent)
}

const FAMILY: [&str; 14] = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
    "Hồ", "Ngô",
];
const MIDDLE: [&str; 8] = ["Văn", "Thị", "Đức", "Minh", "Hữu", "Ngọc", "Thanh", "Quốc"];
const GIVEN: [&str; 20] = [
    "An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Hùng", "Hương", "Khánh", "Lan", "Long", "Mai",
    "Nam", "Ngân", "Phúc", "Quân", "Sơn", "Thảo", "Trang", "Tuấn",
];

/// A Vietnamese full name for the `n`-th member.
pub(crate) fn person(n: usize) -> String {
    format!(
        "{} {} {}",
        FAMILY[n % FAMILY.len()],
        MIDDLE[(n / FAMILY.len()) % MIDDLE.len()],
        GIVEN[(n * 7 + n / 3) % GIVEN.len()]
    )
}

/// Digits needed to number `count` items (at least `min`).
pub(crate) fn width(count: usize, min: usize) -> usize {
    count.max(1).to_string().len().max(min)
}

/// How the synthetic country's orgs are coded and named (shared with
/// `gradeflow bench cycle`): provinces `P01`, second-tier units `P01.D01`
/// (`card`) or `P01.X01` (`vn2025`), cells `P01.D01.C001`, numbers padded to
/// the widest of their level; numbers are 1-based.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Naming {
    preset: Preset,
    pw: usize,
    dw: usize,
    cw: usize,
}

impl Naming {
    /// The naming of a country of `provinces` provinces, `seconds`
    /// second-tier units per province and `cells` cells per second-tier unit.
    pub(crate) fn new(preset: Preset, provinces: usize, seconds: usize, cells: usize) -> Self {
        Self {
            preset,
            pw: width(provinces, 2),
            dw: width(seconds, 2),
            cw: width(cells, 3),
        }
    }

    /// Code and name of the `p`-th province.
    pub(crate) fn province(&self, p: usize) -> (String, String) {
        let pw = self.pw;
        (format!("P{p:0pw$}"), format!("Đảng bộ tỉnh {p:0pw$}"))
    }

    /// Code and name of the `d`-th second-tier unit of the province `pcode`.
    pub(crate) fn second(&self, pcode: &str, d: usize) -> (String, String) {
        let (letter, second) = self.preset.second_tier();
        let dw = self.dw;
        let code = format!("{pcode}.{letter}{d:0dw$}");
        let name = format!("Đảng bộ {second} {code}");
        (code, name)
    }

    /// Code and name of the `c`-th cell of the second-tier unit `dcode`.
    pub(crate) fn cell(&self, dcode: &str, c: usize) -> (String, String) {
        let cw = self.cw;
        let code = format!("{dcode}.C{c:0cw$}");
        let name = format!("Chi bộ {code}");
        (code, name)
    }
}

/// The orgs under the root, parents before children (provinces, then
/// second-tier units, then cells).
fn country(args: &SeedArgs, root_code: &str) -> Vec<Unit> {
    let tiers = args.preset.tiers();
    let tier = |i: usize| {
        tiers
            .0
            .get(i)
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default()
    };
    let naming = Naming::new(args.preset, args.provinces, args.districts, args.cells);
    let mut provinces = Vec::new();
    let mut seconds = Vec::new();
    let mut cells = Vec::new();
    for p in 1..=args.provinces {
        let (pcode, name) = naming.province(p);
        provinces.push(Unit {
            code: pcode.clone(),
            name,
            tier: tier(2),
            parent_code: root_code.to_owned(),
            cell: None,
        });
        for d in 1..=args.districts {
            let (dcode, name) = naming.second(&pcode, d);
            seconds.push(Unit {
                code: dcode.clone(),
                name,
                tier: tier(1),
                parent_code: pcode.clone(),
                cell: None,
            });
            for c in 1..=args.cells {
                let (ccode, name) = naming.cell(&dcode, c);
                let number = cells.len();
                cells.push(Unit {
                    code: ccode,
                    name,
                    tier: tier(0),
                    parent_code: dcode.clone(),
                    cell: Some(number),
                });
            }
        }
    }
    provinces.extend(seconds);
    provinces.extend(cells);
    provinces
}

/// The portal, called with one token; counts requests.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    requests: AtomicU64,
}

/// An answer: its status, its JSON body (or the text as a string), and
/// whether it was a replay of an earlier answer to the same key.
struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// `Ok(self)` when the status is `want`, else the error, named.
    fn expect(self, want: u16, what: &str) -> anyhow::Result<Answer> {
        if self.status == want {
            return Ok(self);
        }
        anyhow::bail!("{what}: {}", self.describe())
    }

    /// The status and the error, short: code, message and the first few
    /// problems of an import.
    fn describe(&self) -> String {
        let e = &self.body["error"];
        let Some(code) = e["code"].as_str() else {
            return format!("HTTP {} {}", self.status, self.body);
        };
        let mut out = format!(
            "HTTP {} {code}: {}",
            self.status,
            e["message"].as_str().unwrap_or_default()
        );
        if let Some(problems) = e["details"]["problems"].as_array() {
            for p in problems.iter().take(3) {
                out.push_str(&format!(
                    "\n  row {}: {} {}",
                    p["row"],
                    p["code"].as_str().unwrap_or_default(),
                    p["message"].as_str().unwrap_or_default()
                ));
            }
            if problems.len() > 3 {
                out.push_str(&format!("\n  … and {} more", problems.len() - 3));
            }
        } else if e["details"].as_object().is_some_and(|d| !d.is_empty()) {
            out.push_str(&format!(" {}", e["details"]));
        }
        let bad_tier = code == "bad_tier"
            || e["details"]["problems"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["code"] == "bad_tier"));
        if bad_tier {
            out.push_str(
                "\n(does the deployment run with the same tiers? `gradeflow up --tiers <preset>`)",
            );
        }
        out
    }
}

/// Attempts per request when the portal is unreachable or answers 502–504.
const ATTEMPTS: u32 = 8;

impl Api {
    fn new(base: &str, token: String) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // An import chunk registers its orgs one by one.
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            requests: AtomicU64::new(0),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> anyhow::Result<Answer> {
        self.send(reqwest::Method::POST, path, Some(key), Some(body))
            .await
    }

    /// Sends, retrying transport failures and 502–504 with backoff (with
    /// the same `Idempotency-Key`, so a retry changes nothing twice).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let failure = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let replayed = resp.headers().contains_key("idempotency-replayed");
                    let bytes = match resp.bytes().await {
                        Ok(b) => b,
                        Err(e) if attempt < ATTEMPTS => {
                            tracing::debug!(error = %e, "seed.read_failed");
                            attempt += 1;
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                            continue;
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("{method} {url}: reading"))
                        }
                    };
                    if !matches!(status, 502..=504) {
                        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&bytes).into_owned())
                        });
                        return Ok(Answer {
                            status,
                            body,
                            replayed,
                        });
                    }
                    format!("HTTP {status} {}", String::from_utf8_lossy(&bytes))
                }
                Err(e) => format!("{e}"),
            };
            if attempt >= ATTEMPTS {
                anyhow::bail!("{method} {url}: {failure} (after {ATTEMPTS} attempts)");
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Percent-encodes a query value (codes are letters, digits and dots;
/// anything else is encoded).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The id and tier of the org with `code`, if any.
async fn find(api: &Api, code: &str) -> anyhow::Result<Option<(String, String)>> {
    let a = api
        .get(&format!("/api/v1/orgs?code={}", encode(code)))
        .await?
        .expect(200, &format!("looking up the org `{code}`"))?;
    Ok(a.body.as_array().and_then(|orgs| orgs.first()).map(|org| {
        (
            org["id"].as_str().unwrap_or_default().to_owned(),
            org["tier"].as_str().unwrap_or_default().to_owned(),
        )
    }))
}

/// A stable key for `body`: UUID v5 of its bytes.
fn content_key(prefix: &str, body: &Value) -> String {
    let bytes = body.to_string();
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, bytes.as_bytes());
    format!("{prefix}-{}", id.simple())
}

/// Imports `units` in chunks, parents first; an org whose code is taken
/// already is left as it is (`409 duplicate_code`). Returns the requests
/// sent.
async fn import(api: &Api, units: &[Unit], chunk: usize) -> anyhow::Result<usize> {
    let mut requests = 0;
    for part in units.chunks(chunk.max(1)) {
        let mut rows: Vec<Value> = part
            .iter()
            .map(|u| {
                json!({"code": u.code, "name": u.name, "tier": u.tier, "parent_code": u.parent_code})
            })
            .collect();
        // Each round drops the rows whose codes are taken; a few rounds
        // are enough unless someone registers the same codes meanwhile.
        for round in 0.. {
            if rows.is_empty() {
                break;
            }
            let body = Value::Array(rows.clone());
            // The round is part of the key: a chunk refused for a code taken
            // meanwhile is sent again as a new request, not replayed.
            let key = content_key(&format!("seed-import-{round}"), &body);
            let a = api.post("/api/v1/orgs/import", &key, &body).await?;
            requests += 1;
            if a.status == 201 {
                break;
            }
            let taken: HashSet<usize> = a.body["error"]["details"]["problems"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["code"] == "duplicate_code")
                        .filter_map(|p| p["row"].as_u64())
                        .filter_map(|row| usize::try_from(row).ok()?.checked_sub(1))
                        .collect()
                })
                .unwrap_or_default();
            let others = a.body["error"]["details"]["problems"]
                .as_array()
                .map_or(0, |ps| {
                    ps.iter().filter(|p| p["code"] != "duplicate_code").count()
                });
            let retry_after_race =
                a.code() == "duplicate_code" && a.body["error"]["details"]["import"].is_object();
            if a.status != 409
                || others > 0
                || round >= 5
                || (taken.is_empty() && !retry_after_race)
            {
                anyhow::bail!(
                    "importing the orgs {}…: {}",
                    part.first().map(|u| u.code.as_str()).unwrap_or_default(),
                    a.describe()
                );
            }
            let mut i = 0;
            rows.retain(|_| {
                let keep = !taken.contains(&i);
                i += 1;
                keep
            });
        }
    }
    Ok(requests)
}

/// Deadlines per tier: cells by 15 December, the next tier by 25
/// December, provinces by 15 January, the root by 1 February.
pub(crate) fn deadlines(tiers: &Tiers, year: i32) -> Value {
    let dates = [
        format!("{year}-12-15"),
        format!("{year}-12-25"),
        format!("{}-01-15", year + 1),
        format!("{}-02-01", year + 1),
    ];
    let mut out = serde_json::Map::new();
    for (tier, date) in tiers.0.iter().zip(dates) {
        out.insert(tier.as_str().to_owned(), json!(date));
    }
    Value::Object(out)
}

/// Opens the annual cycle of `year` (or finds it open); its id.
async fn open_cycle(api: &Api, preset: Preset, year: i32) -> anyhow::Result<(String, bool)> {
    let tiers = preset.tiers();
    let body = json!({"year": year, "kind": "annual", "rulebook": "qd366-2025",
        "tiers": tiers.0.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "deadlines": deadlines(&tiers, year),
        "quota": {"ratio": 0.2, "rounding": "floor"}});
    let a = api
        .post(
            "/api/v1/cycles",
            &format!("seed-cycle-{year}-{}", preset.name()),
            &body,
        )
        .await?;
    match (a.status, a.code()) {
        (201, _) => Ok((a.body["id"].as_str().unwrap_or_default().to_owned(), false)),
        // Opened before with other settings: seed into it as it is.
        (409, "conflict") if a.body["error"]["details"]["cycle"].is_string() => Ok((
            a.body["error"]["details"]["cycle"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            true,
        )),
        _ => anyhow::bail!("opening the {year} cycle: {}", a.describe()),
    }
}

/// One subject to register.
struct Job {
    key: String,
    body: Value,
    /// `Some(n)`: a member, the `n`-th of the country, whose self-review
    /// and meeting are filed.
    file: Option<usize>,
}

/// What the subjects' phase did.
#[derive(Debug, Default)]
struct Tally {
    new: u64,
    again: u64,
    filed: u64,
    skipped: u64,
}

/// Registers one subject (and files its reviews when asked).
async fn subject(api: &Api, cycle: &str, job: Job) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let a = api
        .post(
            &format!("/api/v1/cycles/{cycle}/subjects"),
            &job.key,
            &job.body,
        )
        .await?;
    let dossier = match (a.status, a.code()) {
        (201, _) => {
            if a.replayed {
                tally.again += 1;
            } else {
                tally.new += 1;
            }
            a.body["dossier"].as_str().unwrap_or_default().to_owned()
        }
        // A collective registered by other means.
        (409, "duplicate_subject") => {
            tally.again += 1;
            return Ok(tally);
        }
        _ => anyhow::bail!(
            "registering {} ({}): {}",
            job.body["name"],
            job.key,
            a.describe()
        ),
    };
    let Some(n) = job.file else {
        return Ok(tally);
    };
    let grade = ["excellent", "good", "good", "completed", "completed"][n % 5];
    let tasks = [66, 62, 55, 45, 38][n % 5];
    let review = json!({"score": {"general": 27, "tasks": tasks}, "proposed_grade": grade,
        "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
        "shortcomings_fixed": true,
        "report": "Hoàn thành các nhiệm vụ được giao trong năm."});
    let meeting = json!({"proposed_grade": grade, "votes": {grade: 12},
        "minutes": "Biên bản hội nghị kiểm điểm cuối năm."});
    for (step, body, state) in [
        ("self-review", review, "submitted"),
        ("meeting", meeting, "reviewed"),
    ] {
        let a = api
            .post(
                &format!("/api/v1/dossiers/{dossier}/{step}"),
                &format!("{}-{step}", job.key),
                &body,
            )
            .await?;
        match (a.status, a.code()) {
            (200, _) if a.body["state"] == state => {}
            // Moved on by someone else: leave it.
            (409, "wrong_state") => {
                tally.skipped += 1;
                return Ok(tally);
            }
            _ => anyhow::bail!("filing the {step} of {dossier}: {}", a.describe()),
        }
    }
    tally.filed += 1;
    Ok(tally)
}

/// The central token: `--token`, or one minted with the local key.
fn token(args: &SeedArgs) -> anyhow::Result<String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => gradeflow_kit::Config::from_process_env()?.data_dir,
    };
    let keys = gradeflow_portal::LocalKeys::open(&data_dir)
        .with_context(|| format!("opening the local key under {}", data_dir.display()))?;
    Ok(keys.mint(
        SEED_SUB,
        &[gradeflow_portal::Grant {
            role: Role::Central,
            org: crate::demo::root_id(&args.root_code),
        }],
        Duration::from_secs(24 * 3600),
    )?)
}

async fn seed(args: &SeedArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let started = Instant::now();
    let api = Arc::new(Api::new(&args.url, token(args)?)?);
    let year = args.cycle.unwrap_or_else(|| chrono::Utc::now().year());

    // The root, and a check that the preset is the deployment's.
    let (root, root_tier) = find(&api, &args.root_code).await?.with_context(|| {
        format!(
            "no organisation has the code `{}` at {}: start `gradeflow up` first (or name the root with --root-code)",
            args.root_code, args.url
        )
    })?;
    let tiers = args.preset.tiers();
    anyhow::ensure!(
        tiers.root().map(|t| t.as_str()) == Some(root_tier.as_str()),
        "the root `{}` has the tier `{root_tier}`, not the `{}` preset's top tier",
        args.root_code,
        args.preset.name()
    );

    // 1. The hierarchy.
    let units = country(args, &args.root_code);
    let imports = import(&api, &units, args.import_chunk).await?;
    let mut ids: HashMap<String, String> = HashMap::new();
    {
        let mut found = futures::stream::iter(units.iter().map(|u| {
            let api = &api;
            async move {
                let (id, _) = find(api, &u.code)
                    .await?
                    .with_context(|| format!("`{}` is not registered after the import", u.code))?;
                Ok::<_, anyhow::Error>((u.code.clone(), id))
            }
        }))
        .buffer_unordered(args.concurrency);
        while let Some(r) = found.next().await {
            let (code, id) = r?;
            ids.insert(code, id);
        }
    }

    // 2. The cycle.
    let (cycle, preexisting) = open_cycle(&api, args.preset, year).await?;

    // 3. The subjects: collectives first, then the members cell by cell.
    let mut jobs = Vec::new();
    let collective = |code: &str, org: &str, name: &str| Job {
        key: format!("seed-{year}-{code}-collective"),
        body: json!({"kind": "collective", "org": org, "name": name, "category": "01"}),
        file: None,
    };
    jobs.push(collective(
        &args.root_code,
        &root,
        &format!("Ban Chấp hành {}", args.root_code),
    ));
    for u in &units {
        let org = ids.get(&u.code).cloned().unwrap_or_default();
        jobs.push(collective(&u.code, &org, &u.name));
    }
    let mut members = 0u64;
    let mut not_reviewed = 0u64;
    for u in &units {
        let Some(cell) = u.cell else { continue };
        let org = ids.get(&u.code).cloned().unwrap_or_default();
        for position in 0..args.members {
            let n = cell * args.members + position;
            let status = Status::of(n, position);
            let leader = position == 0;
            members += 1;
            if status != Status::Active {
                not_reviewed += 1;
            }
            jobs.push(Job {
                key: format!("seed-{year}-{}-m{position:04}", u.code),
                body: json!({"kind": "individual", "org": org, "name": person(n),
                    "category": if leader { "2A" } else { "2B" }, "leader": leader,
                    "status": status.as_str()}),
                file: (status == Status::Active && files(n, args.file_reviews)).then_some(n),
            });
        }
    }
    let total = jobs.len();
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!(
                    "gradeflow seed: {}/{total} subjects",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut tally = Tally::default();
    let outcome = async {
        let mut running = futures::stream::iter(jobs.into_iter().map(|job| {
            let (api, cycle, done) = (&api, &cycle, &done);
            async move {
                let t = subject(api, cycle, job).await;
                done.fetch_add(1, Ordering::Relaxed);
                t
            }
        }))
        .buffer_unordered(args.concurrency);
        while let Some(t) = running.next().await {
            let t = t?;
            tally.new += t.new;
            tally.again += t.again;
            tally.filed += t.filed;
            tally.skipped += t.skipped;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    ticker.abort();
    outcome?;

    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    let requests = api.requests.load(Ordering::Relaxed);
    let collectives = units.len() + 1;
    let mut out = String::new();
    out.push_str(&format!(
        "gradeflow seed: {} ({} preset) at {}\n",
        args.root_code,
        args.preset.name(),
        args.url
    ));
    out.push_str(&format!(
        "  cycle:    {cycle} ({year}{})\n",
        if preexisting {
            ", open already with other settings"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  orgs:     {} below {} ({} provinces, {} {}s, {} cells) in {imports} import request(s)\n",
        units.len(),
        args.root_code,
        args.provinces,
        args.provinces * args.districts,
        tiers.0.get(1).map(|t| t.as_str()).unwrap_or("units"),
        args.provinces * args.districts * args.cells
    ));
    out.push_str(&format!(
        "  subjects: {total} ({} new, {} there already): {collectives} collectives, {members} members ({not_reviewed} not reviewed)\n",
        tally.new, tally.again
    ));
    out.push_str(&format!(
        "  reviews:  {} self-reviews and meetings filed{}\n",
        tally.filed,
        if tally.skipped > 0 {
            format!(" ({} dossiers had moved on)", tally.skipped)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "  elapsed:  {elapsed:.1} s, {requests} requests ({:.0} requests/s, {:.0} subjects/s)\n",
        requests as f64 / elapsed,
        total as f64 / elapsed
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        seed: SeedArgs,
    }

    fn args(preset: &str) -> SeedArgs {
        let argv = [
            "seed",
            "--preset",
            preset,
            "--provinces",
            "2",
            "--districts",
            "2",
            "--cells",
            "3",
            "--members",
            "8",
        ];
        Cli::parse_from(argv).seed
    }

    #[test]
    fn the_country_is_coded_by_tier_with_parents_first() {
        let units = country(&args("card"), "TW");
        assert_eq!(units.len(), 2 + 4 + 12);
        assert_eq!(units[0].code, "P01");
        assert_eq!(units[0].parent_code, "TW");
        assert_eq!(units[0].tier, "province");
        assert_eq!(units[2].code, "P01.D01");
        assert_eq!(units[2].tier, "district");
        assert_eq!(units[6].code, "P01.D01.C001");
        assert_eq!(units[6].parent_code, "P01.D01");
        assert_eq!(units[6].tier, "cell");
        assert_eq!(units[17].code, "P02.D02.C003");
        for (i, u) in units.iter().enumerate() {
            assert!(
                u.parent_code == "TW" || units[..i].iter().any(|p| p.code == u.parent_code),
                "{} comes before its parent",
                u.code
            );
        }
        let vn = country(&args("vn2025"), "TW");
        assert_eq!(vn[2].code, "P01.X01");
        assert_eq!(vn[2].tier, "commune");
    }

    #[test]
    fn a_few_members_are_not_reviewed_and_secretaries_always_are() {
        let statuses: Vec<Status> = (0..200).map(|n| Status::of(n, n % 8)).collect();
        let not = statuses.iter().filter(|s| **s != Status::Active).count();
        assert!((10..=30).contains(&not), "{not}");
        assert!((0..200)
            .step_by(8)
            .all(|n| Status::of(n, 0) == Status::Active));
        assert!(statuses.contains(&Status::NewMember) && statuses.contains(&Status::Exempt));
    }

    #[test]
    fn the_filed_share_follows_the_percentage() {
        assert_eq!((0..100).filter(|n| files(*n, 25)).count(), 25);
        assert_eq!((0..1000).filter(|n| files(*n, 0)).count(), 0);
        assert_eq!((0..1000).filter(|n| files(*n, 100)).count(), 1000);
    }

    #[test]
    fn keys_and_queries_are_stable_and_encoded() {
        let body = json!([{"code": "P01"}]);
        assert_eq!(content_key("k", &body), content_key("k", &body));
        assert_ne!(
            content_key("k", &body),
            content_key("k", &json!([{"code": "P02"}]))
        );
        assert_eq!(encode("P01.D01.C001"), "P01.D01.C001");
        assert_eq!(encode("T W&x"), "T%20W%26x");
        assert_eq!(width(9, 2), 2);
        assert_eq!(width(120, 2), 3);
        assert!(person(0).starts_with("Nguyễn"));
    }

    #[test]
    fn deadlines_cover_every_tier() {
        let d = deadlines(&Tiers::card(), 2026);
        assert_eq!(d["cell"], "2026-12-15");
        assert_eq!(d["district"], "2026-12-25");
        assert_eq!(d["province"], "2027-01-15");
        assert_eq!(d["central"], "2027-02-01");
    }
}
