//! `gradeflow audit verify`: what an auditor can prove about the stores as
//! they are now.
//!
//! 1. **Every store's hash chain** ([`gradeflow_eventstore::Store::verify`]):
//!    positions contiguous from 1, each `prev_hash` the previous event's
//!    hash, each hash recomputed from the stored bytes, the last event
//!    agreeing with the chain head. A store reports its first broken
//!    position (every later link hangs on it).
//! 2. **The decision log**: every `grade_decided` / `grade_revised` event of
//!    the approval store rebuilt into its record
//!    ([`gradeflow_approval_server::audit_record`]), in store order, then
//!    [`gradeflow_approval_server::verify_chain`]: seq contiguous from 1,
//!    `prev_hash` links, each hash recomputed from the record's content,
//!    each signature verified with the key its `key_id` names in the
//!    registry, and that key issued to the deciding authority. Every
//!    broken record is named, not only the first.
//! 3. **The log against `<prefix>_AUDIT`** ([`crate::stream::compare`]):
//!    the same records, each once, equal in every field; nothing in the
//!    stream the store lacks.
//!
//! A record whose grade was changed and whose hash was recomputed (and the
//! store's chain rewritten after it) passes 1, fails 2 on its signature, and
//! differs from the stream in 3.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gradeflow_approval_server::record::TrustedKey;
use gradeflow_approval_server::{audit_record, verify_chain, ChainReport};
use gradeflow_eventstore::{Store, StoreError, StoredEvent};
use gradeflow_proto::events::{DecisionLogRecord, Event, GradeDecided, GradeRevised};
use serde::Serialize;

use crate::problem::{Check, Problem};
use crate::scan::{is_own, Reader};
use crate::sources::{AuditError, Keys, Sources, Stores, ALL_SERVICES, APPROVAL};
use crate::stream::{self, StreamSummary, AUDIT_RELAY};
use crate::table::{or_dash, short, Table};

/// What to check besides the stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Compare the decision log with the audit stream (needs NATS).
    pub stream: bool,
    /// How long to keep re-reading the stream while records past the
    /// relay's position are not mirrored yet (a live deployment lags by a
    /// moment).
    pub stream_wait: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            stream: true,
            stream_wait: Duration::from_secs(5),
        }
    }
}

/// One store's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreSummary {
    /// The service.
    pub store: String,
    /// Events read.
    pub events: u64,
    /// The last event's position.
    pub head_position: Option<i64>,
    /// The last event's hash.
    pub head: Option<String>,
    /// Whether its chain verified.
    pub ok: bool,
}

/// The answer of `gradeflow audit verify` (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// No problem at all.
    pub ok: bool,
    /// `stores`, or `export <file>` for an offline check.
    pub source: String,
    /// Every store's chain.
    pub stores: Vec<StoreSummary>,
    /// Total events across the stores.
    pub events: u64,
    /// Decision-log records checked.
    pub records: u64,
    /// Keys in the registry used.
    pub keys: u64,
    /// Hash of the last record (64 zeros for an empty log).
    pub head: String,
    /// The audit stream, when it was compared.
    pub stream: Option<StreamSummary>,
    /// Every problem, by check.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// The human form: a summary table, then every problem.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut stores = Table::new(&["STORE", "EVENTS", "HEAD POSITION", "HEAD HASH", "CHAIN"]);
        for s in &self.stores {
            stores.row(vec![
                s.store.clone(),
                s.events.to_string(),
                or_dash(s.head_position),
                or_dash(s.head.as_deref().map(|h| short(h, 16))),
                if s.ok { "ok" } else { "BROKEN" }.to_owned(),
            ]);
        }
        out.push_str(&format!("Source: {}\n", self.source));
        if !stores.is_empty() {
            out.push_str(&stores.render());
        }
        out.push_str(&format!(
            "Decision log: {} records, head {}, signatures checked against {} registry keys\n",
            self.records,
            short(&self.head, 16),
            self.keys
        ));
        match &self.stream {
            Some(s) => out.push_str(&format!(
                "Audit stream {}: {} messages ({} records); relay acknowledged up to approval position {}\n",
                s.stream, s.messages, s.records, s.relay_position
            )),
            None if self.source == "stores" => {
                out.push_str("Audit stream: not compared (--no-stream)\n")
            }
            None => {}
        }
        if self.ok {
            out.push_str("OK: no problem found\n");
            return out;
        }
        out.push_str(&format!("\n{} PROBLEM(S)\n", self.problems.len()));
        let mut problems =
            Table::new(&["CHECK", "STORE", "POSITION", "SEQ", "STREAM SEQ", "PROBLEM"]);
        for p in &self.problems {
            problems.row(vec![
                p.check.label().to_owned(),
                or_dash(p.store.as_deref()),
                or_dash(p.position),
                or_dash(p.seq),
                or_dash(p.stream_seq),
                p.problem.clone(),
            ]);
        }
        out.push_str(&problems.render());
        out
    }

    fn finish(mut self) -> Self {
        self.ok = self.problems.is_empty();
        self.events = self.stores.iter().map(|s| s.events).sum();
        self
    }
}

/// Verifies the deployment `sources` describes: every store that exists
/// (the three workflow stores must), the decision log, and — when
/// `opts.stream` — the audit stream.
pub async fn verify(sources: &Sources, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let keys = sources.keys()?;
    let stores = sources
        .open(
            &crate::sources::WORKFLOW_SERVICES,
            &[crate::sources::PROGRESS],
        )
        .await?;
    let result = verify_open(&stores, &keys, sources, opts).await;
    stores.close().await;
    result
}

async fn verify_open(
    stores: &Stores,
    keys: &Keys,
    sources: &Sources,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let stream = opts.stream.then_some(StreamCheck {
        sources,
        wait: opts.stream_wait,
    });
    let checked = check(stores, keys, stream.as_ref()).await?;
    let mut report = checked.report;
    if let Some(compared) = checked.stream {
        let (summary, comparison) = compared?;
        report.stream = Some(summary);
        report.problems.extend(comparison.problems);
    }
    Ok(report.finish())
}

/// Checks 1 and 2 on open stores: every store's chain, and the decision log
/// rebuilt from the approval store against `keys`. Returns the report so
/// far and the log (position, record) for the stream comparison.
pub async fn verify_stores(
    stores: &Stores,
    keys: &Keys,
) -> Result<(VerifyReport, Vec<(i64, DecisionLogRecord)>), AuditError> {
    let checked = check(stores, keys, None).await?;
    Ok((checked.report, checked.log))
}

/// Check 3, when asked for: where to read the stream, and how long to wait
/// for records not mirrored yet.
struct StreamCheck<'a> {
    sources: &'a Sources,
    wait: Duration,
}

/// What [`check`] found: the report of checks 1 and 2, the log, and the
/// outcome of check 3 when it ran.
struct Checked {
    report: VerifyReport,
    log: Vec<(i64, DecisionLogRecord)>,
    stream: Option<Result<(StreamSummary, stream::Comparison), AuditError>>,
}

/// One store's chain and its head row.
type Chain = (gradeflow_eventstore::VerifyReport, Option<(i64, String)>);

/// Checks 1 and 2, and 3 with `stream`.
///
/// The work is spread so that both cores (and the database) stay busy
/// without the stores' reader threads crowding them: the approval store is
/// read once, its chain verified and its decision log rebuilt from the same
/// rows, the records' hashes and Ed25519 signatures checked in chunks on
/// blocking threads, at most one per core, as they are rebuilt
/// ([`LogChecks`]); beside it one task walks the other stores' chains one
/// after another, joined by a second once the approval pass is done, and,
/// with `stream`, another reads the audit stream. Once
/// the log is complete it is compared with the stream as read (read again
/// while records past the relay's position are missing and the wait
/// allows). Problems and errors come in the order they always came in: the
/// stores' in [`ALL_SERVICES`] order, then the decision log's, then the
/// stream's.
async fn check(
    stores: &Stores,
    keys: &Keys,
    stream: Option<&StreamCheck<'_>>,
) -> Result<Checked, AuditError> {
    let approval = stores.require(APPROVAL)?;
    // Two stores are walked at a time: the approval pass, and beside it
    // the other stores one after another; once the approval pass is done,
    // a second walker takes the other stores left. Each walk keeps a core
    // busy hashing and its database reader busy on a thread of its own, so
    // walking every store at once on two cores only makes the reader
    // threads take turns (measured at 100k: 11 to 28 % slower).
    let others: VecDeque<(&'static str, Store)> = ALL_SERVICES
        .iter()
        .filter(|service| **service != APPROVAL)
        .filter_map(|service| Some((*service, stores.get(service)?.clone())))
        .collect();
    let others = Arc::new(std::sync::Mutex::new(others));
    let first_walker = tokio::spawn(walk_chains(Arc::clone(&others)));
    // The audit stream, when asked for, is read while the stores are:
    // the relay's acknowledged position first, so every record at or
    // before it was in the stream before the read began.
    let mirrored = stream.map(|s| {
        let config = s.sources.config.clone();
        let approval = approval.clone();
        tokio::spawn(async move { read_mirror(&config, &approval).await })
    });

    let checks = LogChecks::new(keys.trusted.clone(), CHECK_CHUNK);
    let (mut approval_chain, log, checks) = match approval_pass(approval, checks).await {
        Ok((chain, log, checks)) => (Some(Ok(chain)), Some(log), Some(checks)),
        Err(e) => (Some(Err(e)), None, None),
    };
    let second_walker = tokio::spawn(walk_chains(others));
    let (signatures, compared) = match (&log, checks) {
        (Some(log), Some(checks)) => {
            let compared = async {
                match (stream, mirrored) {
                    (Some(s), Some(mirrored)) => {
                        let first = joined(mirrored.await, "audit stream");
                        Some(match first {
                            Ok(first) => compare_stream(s, approval, &log.log, first).await,
                            Err(e) => Err(e),
                        })
                    }
                    _ => None,
                }
            };
            let (signatures, compared) = tokio::join!(checks.finish(), compared);
            (Some(signatures?), compared)
        }
        _ => {
            if let Some(mirrored) = mirrored {
                mirrored.abort();
            }
            (None, None)
        }
    };

    let mut report = VerifyReport {
        ok: false,
        source: "stores".to_owned(),
        stores: Vec::new(),
        events: 0,
        records: 0,
        keys: keys.trusted.len() as u64,
        head: gradeflow_approval_server::record::GENESIS_HASH.to_owned(),
        stream: None,
        problems: Vec::new(),
    };
    let mut chains = joined(first_walker.await, "store walk")?;
    chains.extend(joined(second_walker.await, "store walk")?);
    for service in ALL_SERVICES {
        let (chain, head) = if service == APPROVAL {
            match approval_chain.take() {
                Some(chain) => chain?,
                None => continue,
            }
        } else {
            let Some(i) = chains.iter().position(|(s, _)| *s == service) else {
                continue;
            };
            let (_, walk) = chains.swap_remove(i);
            walk.map_err(AuditError::read(service))?
        };
        if let Some((position, problem)) = &chain.first_broken {
            report.problems.push(
                Problem::new(Check::Store, problem.clone())
                    .in_store(service)
                    .at(*position),
            );
        }
        report.stores.push(StoreSummary {
            store: service.to_owned(),
            events: chain.events,
            head_position: head.as_ref().map(|(p, _)| *p),
            head: chain.head.clone(),
            ok: chain.is_ok(),
        });
    }
    // A failed approval pass returned above, so the log is there.
    let DecisionLog { log, problems } = log.unwrap_or_default();
    report.problems.extend(problems);
    if keys.missing && !log.is_empty() {
        report.problems.push(Problem::new(
            Check::DecisionLog,
            format!(
                "the key registry {} does not exist: no signature can be checked",
                keys.path.display()
            ),
        ));
    }
    if let Some(chain) = signatures {
        for p in chain.problems {
            let position = log
                .iter()
                .find(|(_, r)| r.seq == p.seq)
                .map(|(position, _)| *position);
            let mut problem = Problem::new(Check::DecisionLog, p.problem)
                .in_store(APPROVAL)
                .record(p.seq);
            problem.position = position;
            report.problems.push(problem);
        }
        report.records = chain.records;
        report.head = chain.head;
    }
    Ok(Checked {
        report,
        log,
        stream: compared,
    })
}

/// The stores other walkers have not taken yet.
type Unwalked = Arc<std::sync::Mutex<VecDeque<(&'static str, Store)>>>;

/// Walks the chains of the stores in `queue`, one after another, until none
/// is left (or one cannot be read: as before, that ends the audit, so the
/// rest need not be walked).
async fn walk_chains(queue: Unwalked) -> Vec<(&'static str, Result<Chain, StoreError>)> {
    let next = || {
        queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    };
    let mut chains = Vec::new();
    while let Some((service, store)) = next() {
        let walk = async {
            let chain = store.verify().await?;
            let head = store.head().await?;
            Ok((chain, head))
        };
        let walk = walk.await;
        let failed = walk.is_err();
        chains.push((service, walk));
        if failed {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }
    chains
}

/// The decision log rebuilt from the approval store, with the events that
/// did not rebuild (see [`decision_log`]).
#[derive(Debug, Default)]
struct DecisionLog {
    log: Vec<(i64, DecisionLogRecord)>,
    problems: Vec<Problem>,
}

/// Rebuilds the decision log from the approval store's events, fed in store
/// order: the one definition behind [`decision_log`] and the single pass
/// `verify` makes over the approval store.
#[derive(Debug, Default)]
struct LogBuilder {
    log: DecisionLog,
    /// Rows that do not read back: position and why.
    unreadable: Vec<(i64, String)>,
}

impl LogBuilder {
    /// The next event of the store; the record it rebuilt into, if it is
    /// one.
    fn event(&mut self, event: &StoredEvent) -> Option<&DecisionLogRecord> {
        if !is_own(APPROVAL, event)
            || !(event.kind == GradeDecided::KIND || event.kind == GradeRevised::KIND)
        {
            return None;
        }
        match audit_record(event) {
            Some(record) => {
                self.log.log.push((event.position, record));
                self.log.log.last().map(|(_, record)| record)
            }
            None => {
                self.log.problems.push(
                    Problem::new(
                        Check::DecisionLog,
                        format!(
                            "the {} event's payload is not a decision-log record",
                            event.kind
                        ),
                    )
                    .in_store(APPROVAL)
                    .at(event.position),
                );
                None
            }
        }
    }

    /// The log, and its problems: the events that do not rebuild, then the
    /// rows that do not read back.
    fn finish(mut self) -> DecisionLog {
        for (position, why) in self.unreadable {
            self.log.problems.push(
                Problem::new(
                    Check::DecisionLog,
                    format!("the event does not read back, so its record (if any) is lost: {why}"),
                )
                .in_store(APPROVAL)
                .at(position),
            );
        }
        self.log
    }
}

/// The approval store read once: its chain verified
/// ([`Store::verify_with_events`]) and the decision log rebuilt from the
/// same rows. The rows of the two record kinds are decoded as
/// [`decision_log`]'s reader decodes them (a row that does not read back is
/// set aside with why, and the pass goes on); the others are only hashed,
/// like every row of the other stores. A record whose kind was altered is
/// thus left out of the log, where the log's own chain (seq, links) names
/// the gap. Each record is handed to `checks` as it is rebuilt.
async fn approval_pass(
    approval: &Store,
    checks: LogChecks,
) -> Result<(Chain, DecisionLog, LogChecks), AuditError> {
    let mut builder = LogBuilder::default();
    let mut checks = checks;
    let mut failed = None;
    let chain = approval
        .verify_with_events(
            &[GradeDecided::KIND, GradeRevised::KIND],
            |read| match read {
                Ok(event) => {
                    if let Some(record) = builder.event(&event) {
                        checks.push(record.clone());
                    }
                }
                Err(StoreError::Corrupt { position, problem }) if position > 0 => {
                    builder.unreadable.push((position, problem));
                }
                // What the reader would fail on; kept to fail the same way.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            },
        )
        .await
        .map_err(AuditError::read(APPROVAL))?;
    if let Some(e) = failed {
        return Err(AuditError::read(APPROVAL)(e));
    }
    let head = approval.head().await.map_err(AuditError::read(APPROVAL))?;
    Ok(((chain, head), builder.finish(), checks))
}

/// Records per chunk of the decision log checked on a blocking thread.
const CHECK_CHUNK: usize = 1_000;

/// The decision log's chain ([`verify_chain`]: seq, links, hashes,
/// Ed25519 signatures, key owners) checked in chunks on blocking threads
/// while the approval store is still being read, so the signature checks —
/// the costliest part of `verify` — run beside the reads and, at the end,
/// on every core.
///
/// Exactly the answer of one `verify_chain` over the whole log: a chunk is
/// checked with the record before it as its first record (its *primer*).
/// `verify_chain` judges each record against the record before it only
/// (seq one more, `prev_hash` its hash), so every record of the chunk is
/// judged as in one pass. The primer itself is judged as a first record;
/// its problems come first in the chunk's report (problems are in log
/// order) and are exactly those of checking it alone, so that many are
/// dropped. Chunks' problems are then concatenated in log order.
struct LogChecks {
    trusted: Arc<BTreeMap<String, TrustedKey>>,
    chunk_size: usize,
    /// The chunk being filled: the primer (if any), then its records.
    chunk: Vec<DecisionLogRecord>,
    primed: bool,
    records: u64,
    running: Vec<tokio::task::JoinHandle<Result<ChainReport, tokio::task::JoinError>>>,
    /// One permit per core: chunks wait for one rather than each taking a
    /// blocking thread of its own and every core at once.
    cores: Arc<tokio::sync::Semaphore>,
}

impl LogChecks {
    fn new(trusted: BTreeMap<String, TrustedKey>, chunk_size: usize) -> Self {
        Self {
            trusted: Arc::new(trusted),
            chunk_size: chunk_size.max(1),
            chunk: Vec::new(),
            primed: false,
            records: 0,
            running: Vec::new(),
            cores: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
        }
    }

    /// The next record of the log.
    fn push(&mut self, record: DecisionLogRecord) {
        self.chunk.push(record);
        self.records += 1;
        if self.chunk.len() - usize::from(self.primed) >= self.chunk_size {
            self.flush();
        }
    }

    /// Starts checking the chunk filled so far; its last record primes the
    /// next one.
    fn flush(&mut self) {
        // Nothing new: empty, or only the primer.
        if self.chunk.len() <= usize::from(self.primed) {
            return;
        }
        let Some(last) = self.chunk.last().cloned() else {
            return;
        };
        let chunk = std::mem::replace(&mut self.chunk, vec![last]);
        let primed = std::mem::replace(&mut self.primed, true);
        let trusted = self.trusted.clone();
        let cores = Arc::clone(&self.cores);
        self.running.push(tokio::spawn(async move {
            // The semaphore is never closed, so the permit always comes.
            let _core = cores.acquire_owned().await;
            tokio::task::spawn_blocking(move || check_chunk(&chunk, primed, &trusted)).await
        }));
    }

    /// Waits for every chunk and puts their answers together.
    async fn finish(mut self) -> Result<ChainReport, AuditError> {
        self.flush();
        let mut problems = Vec::new();
        let mut head = gradeflow_approval_server::record::GENESIS_HASH.to_owned();
        for running in self.running {
            let chunk = joined(joined(running.await, "decision log")?, "decision log")?;
            problems.extend(chunk.problems);
            head = chunk.head;
        }
        Ok(ChainReport {
            ok: problems.is_empty(),
            records: self.records,
            head,
            problems,
        })
    }
}

/// [`verify_chain`] over `chunk`; when `primed`, its first record is the
/// primer and its own problems are left out (see [`LogChecks`]).
fn check_chunk(
    chunk: &[DecisionLogRecord],
    primed: bool,
    trusted: &BTreeMap<String, TrustedKey>,
) -> ChainReport {
    let mut report = verify_chain(chunk, trusted);
    if primed {
        let primer = verify_chain(chunk.get(..1).unwrap_or_default(), trusted);
        let own = primer.problems.len().min(report.problems.len());
        report.problems.drain(..own);
        report.records = report.records.saturating_sub(1);
    }
    report
}

/// The audit stream as read, and the audit relay's acknowledged position
/// read just before it: every record at or before that position was in the
/// stream when the read began.
struct Mirror {
    relay: i64,
    audit: stream::AuditStream,
}

/// Reads the relay's position, then the stream ([`Mirror`]).
async fn read_mirror(
    config: &gradeflow_kit::Config,
    approval: &Store,
) -> Result<Mirror, AuditError> {
    let client = config
        .connect_nats()
        .await
        .map_err(|source| AuditError::Nats {
            url: config.nats_url.clone(),
            source,
        })?;
    let relay = approval
        .outbox_position(AUDIT_RELAY)
        .await
        .map_err(AuditError::read(APPROVAL))?;
    let audit = stream::read(&client, &config.names).await?;
    Ok(Mirror { relay, audit })
}

/// Check 3: the log against the stream as first read (`first`, read while
/// the stores were), read again while records past the relay's position
/// are not mirrored yet and `check.wait` allows.
async fn compare_stream(
    check: &StreamCheck<'_>,
    approval: &Store,
    log: &[(i64, DecisionLogRecord)],
    first: Result<Mirror, AuditError>,
) -> Result<(StreamSummary, stream::Comparison), AuditError> {
    let deadline = tokio::time::Instant::now() + check.wait;
    let mut mirror = first?;
    loop {
        let comparison = stream::compare(log, &mirror.audit, mirror.relay);
        // Records past the relay's position may be on their way: give a
        // live deployment's relay a moment before calling them missing.
        if comparison.pending && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            mirror = read_mirror(&check.sources.config, approval).await?;
            continue;
        }
        let summary = StreamSummary {
            stream: mirror.audit.name.clone(),
            messages: mirror.audit.entries.len() as u64,
            records: comparison.records,
            relay_position: mirror.relay,
        };
        return Ok((summary, comparison));
    }
}

/// The outcome of a task of `what`: a panic goes on unwinding here, as if
/// the work had run inline; a task cancelled (the runtime shutting down)
/// is an error.
fn joined<T>(outcome: Result<T, tokio::task::JoinError>, what: &str) -> Result<T, AuditError> {
    match outcome {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(AuditError::Interrupted {
            what: what.to_owned(),
        }),
    }
}

/// The decision log as the approval store holds it: each own
/// `grade_decided` / `grade_revised` event rebuilt into its record, in
/// store order, with its position; and the events that do not rebuild.
pub async fn decision_log(
    approval: &Store,
) -> Result<(Vec<(i64, DecisionLogRecord)>, Vec<Problem>), AuditError> {
    let mut builder = LogBuilder::default();
    let mut reader = Reader::new(APPROVAL, approval, None);
    while let Some(event) = reader.next().await? {
        builder.event(&event);
    }
    builder.unreadable = reader.unreadable;
    let DecisionLog { log, problems } = builder.finish();
    Ok((log, problems))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use chrono::{DateTime, Utc};
    use ed25519_dalek::{Signer, SigningKey};
    use gradeflow_approval_server::record::{record_hash, signing_message, GENESIS_HASH};
    use gradeflow_proto::{CycleId, DecisionId, DossierId, Grade, OrgId, SubjectId};
    use uuid::Uuid;

    use super::*;

    fn org(n: u128) -> OrgId {
        OrgId(Uuid::from_u128(n))
    }

    fn unsealed(seq: u64) -> DecisionLogRecord {
        DecisionLogRecord {
            seq,
            decision: DecisionId(Uuid::from_u128(u128::from(seq))),
            number: format!("{seq}-QĐ/HU"),
            cycle: CycleId(Uuid::from_u128(2)),
            dossier: DossierId(Uuid::from_u128(1_000 + u128::from(seq))),
            subject: SubjectId(Uuid::from_u128(4)),
            grade: Grade::Good,
            authority: org(5),
            actor: "tran.thi.b".into(),
            at: DateTime::parse_from_rfc3339("2026-12-10T08:30:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            supersedes: None,
            reason: None,
            override_reason: None,
            prev_hash: String::new(),
            hash: String::new(),
            signature: String::new(),
            key_id: "key-a".into(),
        }
    }

    fn seal(mut r: DecisionLogRecord, key: &SigningKey) -> DecisionLogRecord {
        r.hash = record_hash(&r);
        let message = signing_message(&r.hash).unwrap();
        r.signature = BASE64.encode(key.sign(&message).to_bytes());
        r
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// A sound log of `n` records, each linked to the one before.
    fn log(n: u64) -> Vec<DecisionLogRecord> {
        let mut out: Vec<DecisionLogRecord> = Vec::new();
        for seq in 1..=n {
            let mut r = unsealed(seq);
            r.prev_hash = out
                .last()
                .map_or(GENESIS_HASH.to_owned(), |p| p.hash.clone());
            out.push(seal(r, &key(7)));
        }
        out
    }

    fn trusted() -> BTreeMap<String, TrustedKey> {
        BTreeMap::from([
            (
                "key-a".to_owned(),
                TrustedKey {
                    key: key(7).verifying_key(),
                    org: Some(org(5)),
                },
            ),
            (
                "key-b".to_owned(),
                TrustedKey {
                    key: key(8).verifying_key(),
                    org: Some(org(6)),
                },
            ),
        ])
    }

    /// Every kind of damage, at record `at` (an index) of a sound log.
    fn damaged(n: u64, at: usize) -> Vec<(String, Vec<DecisionLogRecord>)> {
        let sound = log(n);
        let mut out = vec![("sound".to_owned(), sound.clone())];
        let mut edit = |what: &str, change: &dyn Fn(&mut Vec<DecisionLogRecord>)| {
            let mut records = sound.clone();
            change(&mut records);
            out.push((format!("{what} at {at}"), records));
        };
        edit("regraded, hash recomputed", &|r| {
            r[at].grade = Grade::Excellent;
            r[at].hash = record_hash(&r[at]);
        });
        edit("removed", &|r| {
            r.remove(at);
        });
        edit("repeated", &|r| {
            let copy = r[at].clone();
            r.insert(at, copy);
        });
        edit("link broken", &|r| r[at].prev_hash = "1".repeat(64));
        edit("unknown key", &|r| r[at].key_id = "key-z".into());
        edit("key of another authority", &|r| {
            r[at].key_id = "key-b".into();
            r[at] = seal(r[at].clone(), &key(8));
        });
        edit("hash not hex", &|r| r[at].hash = "not hex".into());
        out
    }

    #[tokio::test]
    async fn checking_the_log_in_chunks_finds_what_one_pass_finds() {
        // Chunks of 1, 2 and 3 over 4 records put every record of every
        // damaged log at a chunk's start, middle and end. (Few records:
        // signature checks are slow in a debug build.)
        let n = 4;
        for at in 0..n as usize {
            for (what, records) in damaged(n, at) {
                let whole = verify_chain(&records, &trusted());
                for chunk_size in [1, 2, 3] {
                    let mut checks = LogChecks::new(trusted(), chunk_size);
                    for r in &records {
                        checks.push(r.clone());
                    }
                    let chunked = checks.finish().await.unwrap();
                    assert_eq!(chunked, whole, "{what}, chunks of {chunk_size}");
                }
            }
        }
        // Not vacuous: the damage is found.
        let (_, regraded) = damaged(n, 2).swap_remove(1);
        assert!(!verify_chain(&regraded, &trusted()).ok);
        let empty = LogChecks::new(trusted(), 3).finish().await.unwrap();
        assert_eq!(empty, verify_chain(&[], &trusted()));
    }
}
