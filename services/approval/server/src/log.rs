//! The decision log as the store holds it, read a page at a time.
//!
//! The model keeps no record of the log: only the chain's head (the next
//! record's `prev_hash`), the `decision-log` stream's version (the last
//! seq) and, per dossier, the seq of its current record. Whoever needs the
//! records themselves (the `audit_decisions.v1` pages, `verify_log.v1`, the
//! whole log for tools and tests) reads them from the `decision-log` stream,
//! whose version is the record's seq, and rebuilds each with
//! [`audit_record`], the same mapping the audit mirror uses. Reads go to the
//! store directly, without the engine's lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use gradeflow_eventstore::{Store, StoreError};
use gradeflow_proto::events::DecisionLogRecord;

use crate::record::{audit_record, ChainCheck, ChainProblem, ChainReport, TrustedKey};
use crate::record::{DECISION_LOG_STREAM, GENESIS_HASH};

/// Events of the `decision-log` stream read per page.
pub const PAGE: usize = 1_000;

/// One page of the log as read from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The records of the events read, in seq order (an event that is not
    /// a record of this service has none).
    pub records: Vec<DecisionLogRecord>,
    /// The stream version of the last event read: where the next page
    /// starts (`None` when nothing was read).
    pub last: Option<u64>,
    /// Whether the stream ended within this page.
    pub end: bool,
}

/// Up to `limit` events of the `decision-log` stream after version `after`
/// (the seq after which records are wanted), as records.
pub async fn read_page(store: &Store, after: u64, limit: usize) -> Result<Page, StoreError> {
    let limit = limit.max(1);
    let events = store.read_stream(DECISION_LOG_STREAM, after, limit).await?;
    Ok(Page {
        end: events.len() < limit,
        last: events.last().map(|e| e.version),
        records: events.iter().filter_map(audit_record).collect(),
    })
}

/// The whole log, in seq order, read `page` events at a time.
pub async fn read_all(store: &Store, page: usize) -> Result<Vec<DecisionLogRecord>, StoreError> {
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let p = read_page(store, after, page).await?;
        records.extend(p.records);
        match p.last {
            Some(last) if !p.end => after = last,
            _ => return Ok(records),
        }
    }
}

/// [`crate::record::verify_chain`] over the whole log, read `page` events
/// at a time: the same report, with one page in memory at once. The keys
/// are asked for once the first page is read (a store that cannot be read
/// is reported before a key registry that cannot). Each page is checked
/// off the async workers (one hash and one signature check per record).
pub async fn verify<E: From<StoreError>>(
    store: &Store,
    keys: impl FnOnce() -> Result<BTreeMap<String, TrustedKey>, E>,
    page: usize,
) -> Result<ChainReport, E> {
    let mut p = read_page(store, 0, page).await?;
    let keys = Arc::new(keys()?);
    let mut check = ChainCheck::new();
    loop {
        let records = std::mem::take(&mut p.records);
        let trusted = Arc::clone(&keys);
        let checked = tokio::task::spawn_blocking(move || {
            for record in &records {
                check.record(record, &trusted);
            }
            check
        })
        .await;
        check = match checked {
            Ok(check) => check,
            Err(e) => return Ok(unfinished(&e)),
        };
        match p.last {
            Some(last) if !p.end => p = read_page(store, last, page).await?,
            _ => return Ok(check.report()),
        }
    }
}

/// The report of a verification whose work did not finish.
fn unfinished(e: &tokio::task::JoinError) -> ChainReport {
    ChainReport {
        ok: false,
        records: 0,
        head: GENESIS_HASH.to_owned(),
        problems: vec![ChainProblem {
            seq: 0,
            problem: format!("verification did not finish: {e}"),
        }],
    }
}
