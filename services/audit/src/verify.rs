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

use std::time::Duration;

use gradeflow_approval_server::{audit_record, verify_chain};
use gradeflow_eventstore::Store;
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
    let (mut report, log) = verify_stores(stores, keys).await?;
    if !opts.stream {
        return Ok(report.finish());
    }
    let url = &sources.config.nats_url;
    let client = sources
        .config
        .connect_nats()
        .await
        .map_err(|source| AuditError::Nats {
            url: url.clone(),
            source,
        })?;
    let approval = stores.require(APPROVAL)?;
    let deadline = tokio::time::Instant::now() + opts.stream_wait;
    let (summary, comparison) = loop {
        let audit = stream::read(&client, &sources.config.names).await?;
        let relay = approval
            .outbox_position(AUDIT_RELAY)
            .await
            .map_err(AuditError::read(APPROVAL))?;
        let comparison = stream::compare(&log, &audit, relay);
        // Records past the relay's position may be on their way: give a
        // live deployment's relay a moment before calling them missing.
        if comparison.pending && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let summary = StreamSummary {
            stream: audit.name.clone(),
            messages: audit.entries.len() as u64,
            records: comparison.records,
            relay_position: relay,
        };
        break (summary, comparison);
    };
    report.stream = Some(summary);
    report.problems.extend(comparison.problems);
    Ok(report.finish())
}

/// Checks 1 and 2 on open stores: every store's chain, and the decision log
/// rebuilt from the approval store against `keys`. Returns the report so
/// far and the log (position, record) for the stream comparison.
pub async fn verify_stores(
    stores: &Stores,
    keys: &Keys,
) -> Result<(VerifyReport, Vec<(i64, DecisionLogRecord)>), AuditError> {
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
    // Every store's chain, and the decision log rebuilt from the approval
    // store, read at once: each is one sequential pass over its store, and
    // the passes wait on different files (or on the database server).
    let chains = futures::future::join_all(ALL_SERVICES.iter().filter_map(|service| {
        let store = stores.get(service)?;
        Some(async move {
            let chain = store.verify().await.map_err(AuditError::read(service))?;
            let head = store.head().await.map_err(AuditError::read(service))?;
            Ok::<_, AuditError>((*service, chain, head))
        })
    }));
    let approval = stores.require(APPROVAL)?;
    let (chains, log) = tokio::join!(chains, decision_log(approval));
    for checked in chains {
        let (service, chain, head) = checked?;
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
    let (log, problems) = log?;
    report.problems.extend(problems);
    let records: Vec<DecisionLogRecord> = log.iter().map(|(_, r)| r.clone()).collect();
    // CPU-bound (a hash and a signature check per record) but the audit
    // runs nothing else meanwhile, so it stays on this task.
    let chain = verify_chain(&records, &keys.trusted);
    if keys.missing && !log.is_empty() {
        report.problems.push(Problem::new(
            Check::DecisionLog,
            format!(
                "the key registry {} does not exist: no signature can be checked",
                keys.path.display()
            ),
        ));
    }
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
    Ok((report, log))
}

/// The decision log as the approval store holds it: each own
/// `grade_decided` / `grade_revised` event rebuilt into its record, in
/// store order, with its position; and the events that do not rebuild.
pub async fn decision_log(
    approval: &Store,
) -> Result<(Vec<(i64, DecisionLogRecord)>, Vec<Problem>), AuditError> {
    let mut log = Vec::new();
    let mut problems = Vec::new();
    let mut reader = Reader::new(APPROVAL, approval, None);
    while let Some(event) = reader.next().await? {
        if !is_own(APPROVAL, &event)
            || !(event.kind == GradeDecided::KIND || event.kind == GradeRevised::KIND)
        {
            continue;
        }
        match audit_record(&event) {
            Some(record) => log.push((event.position, record)),
            None => problems.push(
                Problem::new(
                    Check::DecisionLog,
                    format!(
                        "the {} event's payload is not a decision-log record",
                        event.kind
                    ),
                )
                .in_store(APPROVAL)
                .at(event.position),
            ),
        }
    }
    for (position, why) in reader.unreadable {
        problems.push(
            Problem::new(
                Check::DecisionLog,
                format!("the event does not read back, so its record (if any) is lost: {why}"),
            )
            .in_store(APPROVAL)
            .at(position),
        );
    }
    Ok((log, problems))
}
