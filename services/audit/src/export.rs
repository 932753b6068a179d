//! `gradeflow audit export --cycle C --org ID` and `gradeflow audit verify
//! --file EXPORT`: one self-contained JSON file with what another machine
//! needs to check a cycle's subtree offline, and that check.
//!
//! # What goes in ([`ExportFile`], `"format": "gradeflow-audit-export.v1"`)
//!
//! * From each workflow store (submission, appraisal, approval), every
//!   event — its own and the copies it observed — that belongs to the cycle
//!   in the subtree: the registry events of the subtree's orgs and of the
//!   org's ancestors, the cycle's `cycle_opened` / `cycle_completed`, every
//!   event on the stream of a dossier registered in the cycle at an org of
//!   the subtree, the grades of those dossiers, the decision documents that
//!   grade them, and the subtree's `unit_completed`. Each event keeps its
//!   position, stream, version, id, kind, the exact payload text, the
//!   metadata text (the canonical encoding the writer stored), its
//!   `recorded_at` text, `prev_hash` and `hash`.
//! * The decision-log records of those grades, the public keys of the
//!   registry, each store's chain head and whether its whole chain verified
//!   at export time, and the decision log's head (last seq and hash).
//! * `sha256`: lowercase hex SHA-256 of the canonical JSON (keys sorted, no
//!   whitespace) of the whole file without the `sha256` key.
//!
//! # What checking it proves ([`verify_export`])
//!
//! * The file is whole and unedited since export: it parses, and `sha256`
//!   matches (a truncated or edited file fails here).
//! * Each included event is intact: its hash recomputes from its own bytes
//!   and its `prev_hash`; where two included events are consecutive in
//!   their store, the later one links to the earlier. The export holds a
//!   *subset* of each chain, so the links to events left out cannot be
//!   followed offline; the chain heads let one check the export against the
//!   live store later (the head and every included hash must be found
//!   there).
//! * Each included record is intact and signed: its hash recomputes, its
//!   signature verifies with the included key its `key_id` names, that key
//!   was issued to the deciding authority, and consecutive records link.
//!   Each record equals the one rebuilt from its grade event, and each
//!   grade event has its record.
//!
//! It does not prove the file is complete (nothing in the subset says what
//! was left out, beyond gaps in positions and seqs), nor that the included
//! keys are the real ones: compare the key ids and public keys with the
//! deployment's `registry.json` obtained by another channel. The
//! `sha256` guards against damage and careless edits; a deliberate editor
//! could recompute it, which is why the events' hashes and the records'
//! signatures are checked independently of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::Utc;
use gradeflow_approval_server::audit_record;
use gradeflow_approval_server::keys::RegistryEntry;
use gradeflow_approval_server::record::{
    record_hash, verify_record, DECISION_LOG_STREAM, GENESIS_HASH,
};
use gradeflow_eventstore::canonical::{
    canonical_json, chain_hash, format_timestamp, metadata_text, HashedFields,
};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{
    CycleOpened, DecisionLogRecord, DecisionRecorded, Event, GradeDecided, GradeRevised,
    SubjectRegistered, UnitCompleted,
};
use gradeflow_proto::{CycleId, DossierId, Metadata, OrgId};
use gradeflow_service::OrgTree;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::problem::{Check, Problem};
use crate::scan::{is_own, Reader};
use crate::sources::{AuditError, Keys, Stores, APPROVAL, WORKFLOW_SERVICES};
use crate::verify::{StoreSummary, VerifyReport};

/// The `format` of an export file.
pub const FORMAT: &str = "gradeflow-audit-export.v1";

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedEvent {
    /// Position in its store.
    pub position: i64,
    /// Stream.
    pub stream: String,
    /// Version in the stream.
    pub version: i64,
    /// Event id.
    pub event_id: String,
    /// Kind.
    pub kind: String,
    /// The payload text as stored (canonical JSON).
    pub payload: String,
    /// The metadata text as the writer stored it (canonical JSON).
    pub metadata: String,
    /// `recorded_at` as stored.
    pub recorded_at: String,
    /// The previous event's hash in its store.
    pub prev_hash: String,
    /// Its hash.
    pub hash: String,
}

impl ExportedEvent {
    fn of(e: &StoredEvent) -> Self {
        Self {
            position: e.position,
            stream: e.stream.clone(),
            version: i64::try_from(e.version).unwrap_or(i64::MAX),
            event_id: e.event_id.to_string(),
            kind: e.kind.clone(),
            payload: e.payload_text.clone(),
            metadata: metadata_text(&e.metadata),
            recorded_at: format_timestamp(e.recorded_at),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }

    /// The hash recomputed from the texts.
    pub fn recomputed_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            &HashedFields {
                position: self.position,
                stream: &self.stream,
                version: self.version,
                event_id: &self.event_id,
                kind: &self.kind,
                payload: &self.payload,
                metadata: &self.metadata,
                recorded_at: &self.recorded_at,
            },
        )
    }

    /// The event read back from its texts, as the store would.
    pub fn to_stored(&self) -> Result<StoredEvent, String> {
        let metadata: Metadata =
            serde_json::from_str(&self.metadata).map_err(|e| format!("metadata: {e}"))?;
        Ok(StoredEvent {
            position: self.position,
            stream: self.stream.clone(),
            version: u64::try_from(self.version).map_err(|_| "negative version".to_owned())?,
            event_id: self
                .event_id
                .parse()
                .map_err(|e| format!("event_id: {e}"))?,
            kind: self.kind.clone(),
            payload: serde_json::from_str(&self.payload).map_err(|e| format!("payload: {e}"))?,
            payload_text: self.payload.clone(),
            metadata,
            recorded_at: chrono::DateTime::parse_from_rfc3339(&self.recorded_at)
                .map_err(|e| format!("recorded_at: {e}"))?
                .with_timezone(&Utc),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// A store's last event at export time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    /// Its position.
    pub position: i64,
    /// Its hash.
    pub hash: String,
}

/// One store's part of the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedStore {
    /// The store's head at export time (`None`: empty store).
    pub head: Option<ChainHead>,
    /// Whether the store's whole chain verified at export time.
    pub chain_ok: bool,
    /// The included events, by position.
    pub events: Vec<ExportedEvent>,
}

/// The decision log's head at export time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHead {
    /// Records in the whole log.
    pub records: u64,
    /// The last record's hash (64 zeros when empty).
    pub hash: String,
}

/// An export file (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    /// [`FORMAT`].
    pub format: String,
    /// When it was made.
    pub created_at: String,
    /// The cycle.
    pub cycle: CycleId,
    /// The subtree's top org.
    pub org: OrgId,
    /// Its code.
    pub org_code: String,
    /// The orgs of the subtree registered in the included events.
    pub orgs: Vec<OrgId>,
    /// The cycle's dossiers in the subtree.
    pub dossiers: Vec<DossierId>,
    /// The included events, by store (service).
    pub stores: BTreeMap<String, ExportedStore>,
    /// The decision log's head.
    pub log_head: LogHead,
    /// The included decision-log records, by seq.
    pub records: Vec<DecisionLogRecord>,
    /// The key registry (key id → public key, org, creation time).
    pub keys: BTreeMap<String, RegistryEntry>,
    /// SHA-256 of the canonical JSON of everything else.
    pub sha256: String,
}

/// What an export holds, in numbers (for the command's message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Events per store.
    pub events: BTreeMap<String, usize>,
    /// Records.
    pub records: usize,
    /// Keys.
    pub keys: usize,
    /// Dossiers.
    pub dossiers: usize,
    /// Stores whose chain did not verify at export time.
    pub broken_stores: Vec<String>,
    /// The file's `sha256`.
    pub sha256: String,
}

impl ExportFile {
    /// Its summary.
    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            events: self
                .stores
                .iter()
                .map(|(s, x)| (s.clone(), x.events.len()))
                .collect(),
            records: self.records.len(),
            keys: self.keys.len(),
            dossiers: self.dossiers.len(),
            broken_stores: self
                .stores
                .iter()
                .filter(|(_, x)| !x.chain_ok)
                .map(|(s, _)| s.clone())
                .collect(),
            sha256: self.sha256.clone(),
        }
    }

    /// The file's text (compact JSON and a newline), with `sha256` set.
    pub fn seal(mut self) -> Result<(ExportFile, String), AuditError> {
        let encode = |source| AuditError::Encode {
            what: "the export",
            source,
        };
        self.sha256 = String::new();
        let value = serde_json::to_value(&self).map_err(encode)?;
        self.sha256 = content_hash(value);
        let mut text = serde_json::to_string(&self).map_err(encode)?;
        text.push('\n');
        Ok((self, text))
    }
}

/// SHA-256 of the canonical JSON of `file` without its `sha256` key.
fn content_hash(mut file: Value) -> String {
    if let Value::Object(map) = &mut file {
        map.remove("sha256");
    }
    hex::encode(Sha256::digest(canonical_json(&file).as_bytes()))
}

/// Which events belong to the cycle's subtree, learnt while reading the
/// stores in order (submission first: it registers the dossiers).
struct Selection {
    tree: OrgTree,
    cycle: CycleId,
    top: OrgId,
    orgs: BTreeSet<OrgId>,
    dossiers: BTreeSet<DossierId>,
}

impl Selection {
    fn in_subtree(&self, org: OrgId) -> bool {
        self.tree.is_within(org, self.top)
    }

    fn org_matters(&self, v: Option<&Value>) -> bool {
        let ids: Vec<OrgId> = match v {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| serde_json::from_value(i.clone()).ok())
                .collect(),
            Some(other) => serde_json::from_value(other.clone())
                .ok()
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        ids.into_iter()
            .any(|o| self.in_subtree(o) || self.tree.is_within(self.top, o))
    }

    fn dossier_of(e: &StoredEvent) -> Option<DossierId> {
        e.payload
            .get("dossier")
            .and_then(|d| serde_json::from_value(d.clone()).ok())
    }

    /// Whether `e` goes into the export (and what it teaches us).
    fn take(&mut self, e: &StoredEvent) -> bool {
        let p = &e.payload;
        if e.stream == "registry" {
            let keep = ["org", "from", "into", "children_moved"]
                .iter()
                .any(|k| self.org_matters(p.get(*k)));
            if keep {
                if let Some(org) = p
                    .get("org")
                    .and_then(|o| serde_json::from_value(o.clone()).ok())
                {
                    if self.in_subtree(org) {
                        self.orgs.insert(org);
                    }
                }
            }
            return keep;
        }
        if e.stream == self.cycle.stream() {
            return true;
        }
        let cycle_is = |v: Option<&Value>| {
            v.and_then(|c| serde_json::from_value::<CycleId>(c.clone()).ok()) == Some(self.cycle)
        };
        if e.kind == SubjectRegistered::KIND {
            let org = p
                .get("org")
                .and_then(|o| serde_json::from_value(o.clone()).ok());
            if cycle_is(p.get("cycle")) && org.is_some_and(|o| self.in_subtree(o)) {
                if let Some(d) = Self::dossier_of(e) {
                    self.dossiers.insert(d);
                }
                return true;
            }
            return false;
        }
        if e.kind == DecisionRecorded::KIND {
            return cycle_is(p.get("cycle"))
                && p.get("dossiers")
                    .and_then(Value::as_array)
                    .is_some_and(|ds| {
                        ds.iter()
                            .filter_map(|d| serde_json::from_value::<DossierId>(d.clone()).ok())
                            .any(|d| self.dossiers.contains(&d))
                    });
        }
        if e.kind == UnitCompleted::KIND {
            return cycle_is(p.get("cycle"))
                && p.get("org")
                    .and_then(|o| serde_json::from_value(o.clone()).ok())
                    .is_some_and(|o| self.in_subtree(o));
        }
        Self::dossier_of(e).is_some_and(|d| self.dossiers.contains(&d))
    }
}

/// Builds the export of `cycle` in the subtree of `org` (an id or a code)
/// from open stores, with the registry `keys`. Not yet sealed: call
/// [`ExportFile::seal`].
pub async fn export(
    stores: &Stores,
    keys: &Keys,
    cycle: CycleId,
    org: &str,
) -> Result<ExportFile, AuditError> {
    let submission = stores.require("submission")?;
    let mut tree = OrgTree::default();
    for e in submission
        .load_stream("registry")
        .await
        .map_err(AuditError::read("submission"))?
    {
        tree.apply(&e.kind, &e.payload);
    }
    let top = org
        .parse::<OrgId>()
        .ok()
        .filter(|id| tree.get(*id).is_some())
        .or_else(|| tree.by_code(org).map(|o| o.id))
        .ok_or_else(|| AuditError::UnknownOrg(org.to_owned()))?;
    let org_code = tree.get(top).map(|o| o.code.clone()).unwrap_or_default();
    let opened = submission
        .load_stream(&cycle.stream())
        .await
        .map_err(AuditError::read("submission"))?
        .iter()
        .any(|e| e.kind == CycleOpened::KIND);
    if !opened {
        return Err(AuditError::UnknownCycle(cycle));
    }
    let mut sel = Selection {
        tree,
        cycle,
        top,
        orgs: BTreeSet::new(),
        dossiers: BTreeSet::new(),
    };
    let mut out = BTreeMap::new();
    let mut records = Vec::new();
    let mut log_head = LogHead {
        records: 0,
        hash: GENESIS_HASH.to_owned(),
    };
    for service in WORKFLOW_SERVICES {
        let store = stores.require(service)?;
        let chain_ok = store
            .verify()
            .await
            .map_err(AuditError::read(service))?
            .is_ok();
        let head = store
            .head()
            .await
            .map_err(AuditError::read(service))?
            .map(|(position, hash)| ChainHead { position, hash });
        let mut events = Vec::new();
        let mut reader = Reader::new(service, store, None);
        while let Some(e) = reader.next().await? {
            // Only what the head covered: appends made while we read are
            // for the next export.
            if head.as_ref().is_some_and(|h| e.position > h.position) {
                break;
            }
            let grade = service == APPROVAL
                && is_own(APPROVAL, &e)
                && e.stream == DECISION_LOG_STREAM
                && (e.kind == GradeDecided::KIND || e.kind == GradeRevised::KIND);
            let record = grade.then(|| audit_record(&e)).flatten();
            if let Some(r) = &record {
                log_head.records = r.seq;
                log_head.hash.clone_from(&r.hash);
            }
            if sel.take(&e) {
                if let Some(r) = record {
                    records.push(r);
                }
                events.push(ExportedEvent::of(&e));
            }
        }
        out.insert(
            service.to_owned(),
            ExportedStore {
                head,
                chain_ok,
                events,
            },
        );
    }
    records.sort_by_key(|r| r.seq);
    Ok(ExportFile {
        format: FORMAT.to_owned(),
        created_at: format_timestamp(Utc::now()),
        cycle,
        org: top,
        org_code,
        orgs: sel.orgs.into_iter().collect(),
        dossiers: sel.dossiers.into_iter().collect(),
        stores: out,
        log_head,
        records,
        keys: keys.entries.clone(),
        sha256: String::new(),
    })
}

/// Checks an export file's text offline (see the module docs).
pub fn verify_export(text: &str, source: &str) -> VerifyReport {
    let mut report = VerifyReport {
        ok: false,
        source: format!("export {source}"),
        stores: Vec::new(),
        events: 0,
        records: 0,
        keys: 0,
        head: GENESIS_HASH.to_owned(),
        stream: None,
        problems: Vec::new(),
    };
    let problem = |text: String| Problem::new(Check::Export, text);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            report.problems.push(problem(format!(
                "the file is not a complete export (truncated or not JSON): {e}"
            )));
            return finish(report);
        }
    };
    let stated = value
        .get("sha256")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let actual = content_hash(value.clone());
    match stated {
        Some(s) if s == actual => {}
        Some(s) => report.problems.push(problem(format!(
            "the file was changed after export: its sha256 is {s}, its content hashes to {actual}"
        ))),
        None => report
            .problems
            .push(problem("the file has no sha256".to_owned())),
    }
    let file: ExportFile = match serde_json::from_value(value) {
        Ok(f) => f,
        Err(e) => {
            report
                .problems
                .push(problem(format!("the file is not an export: {e}")));
            return finish(report);
        }
    };
    if file.format != FORMAT {
        report.problems.push(problem(format!(
            "unknown format `{}` (expected `{FORMAT}`)",
            file.format
        )));
    }
    check_events(&file, &mut report);
    check_records(&file, &mut report);
    report.head = file.log_head.hash.clone();
    finish(report)
}

fn finish(mut report: VerifyReport) -> VerifyReport {
    report.ok = report.problems.is_empty();
    report.events = report.stores.iter().map(|s| s.events).sum();
    report
}

fn check_events(file: &ExportFile, report: &mut VerifyReport) {
    for (service, store) in &file.stores {
        let before = report.problems.len();
        let mut push = |position: i64, text: String| {
            report.problems.push(
                Problem::new(Check::Store, text)
                    .in_store(service.clone())
                    .at(position),
            );
        };
        let mut previous: Option<&ExportedEvent> = None;
        for e in &store.events {
            let recomputed = e.recomputed_hash();
            if recomputed != e.hash {
                push(
                    e.position,
                    format!(
                        "hash mismatch: the file says {}, the event's bytes hash to {recomputed}",
                        e.hash
                    ),
                );
            }
            if let Err(why) = e.to_stored() {
                push(e.position, format!("the event does not read back: {why}"));
            }
            if let Some(p) = previous {
                if e.position <= p.position {
                    push(
                        e.position,
                        format!("out of order: follows position {}", p.position),
                    );
                } else if e.position == p.position + 1 && e.prev_hash != p.hash {
                    push(
                        e.position,
                        "prev_hash does not link to the previous position's hash".to_owned(),
                    );
                }
            } else if e.position == 1 && e.prev_hash != GENESIS_HASH {
                push(
                    e.position,
                    "the first event's prev_hash is not the genesis hash".to_owned(),
                );
            }
            previous = Some(e);
        }
        match (&store.head, previous) {
            (None, Some(last)) => push(
                last.position,
                "events are included but the store's head is missing".to_owned(),
            ),
            (Some(head), Some(last)) if last.position > head.position => push(
                last.position,
                format!("beyond the store's head at export time ({})", head.position),
            ),
            (Some(head), Some(last))
                if last.position == head.position && last.hash != head.hash =>
            {
                push(
                    last.position,
                    "the last event's hash differs from the head's".to_owned(),
                )
            }
            _ => {}
        }
        if !store.chain_ok {
            report.problems.push(
                Problem::new(
                    Check::Store,
                    "the store's whole chain did not verify when this was exported",
                )
                .in_store(service.clone()),
            );
        }
        report.stores.push(StoreSummary {
            store: service.clone(),
            events: store.events.len() as u64,
            head_position: store.head.as_ref().map(|h| h.position),
            head: store.head.as_ref().map(|h| h.hash.clone()),
            ok: report.problems.len() == before,
        });
    }
}

fn check_records(file: &ExportFile, report: &mut VerifyReport) {
    let keys_text = serde_json::to_string(&file.keys).unwrap_or_default();
    let keys = match Keys::parse(Path::new("(export keys)"), &keys_text) {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(Problem::new(
                Check::DecisionLog,
                format!("the included keys are not a registry: {e}"),
            ));
            Keys::default()
        }
    };
    report.keys = keys.trusted.len() as u64;
    report.records = file.records.len() as u64;
    let mut previous: Option<&DecisionLogRecord> = None;
    for r in &file.records {
        let mut push = |text: String| {
            report.problems.push(
                Problem::new(Check::DecisionLog, text)
                    .in_store(APPROVAL)
                    .record(r.seq),
            );
        };
        if record_hash(r) != r.hash {
            push("hash does not match the record's content".to_owned());
        }
        match keys.trusted.get(&r.key_id) {
            None => push(format!("unknown signing key `{}`", r.key_id)),
            Some(k) => {
                if !verify_record(r, &k.key) {
                    push(format!("signature does not verify with key `{}`", r.key_id));
                }
                if k.org.is_some_and(|o| o != r.authority) {
                    push(format!(
                        "key `{}` was not issued to the deciding authority {}",
                        r.key_id, r.authority
                    ));
                }
            }
        }
        if let Some(p) = previous {
            if r.seq <= p.seq {
                push(format!("out of order: follows record {}", p.seq));
            } else if r.seq == p.seq + 1 && r.prev_hash != p.hash {
                push("prev_hash does not match the previous record's hash".to_owned());
            }
        } else if r.seq == 1 && r.prev_hash != GENESIS_HASH {
            push("the first record's prev_hash is not the genesis hash".to_owned());
        }
        if r.seq > file.log_head.records {
            push(format!(
                "beyond the decision log's head at export time (record {})",
                file.log_head.records
            ));
        }
        previous = Some(r);
    }
    // Records and the grade events they come from agree, both ways.
    let by_seq: BTreeMap<u64, &DecisionLogRecord> =
        file.records.iter().map(|r| (r.seq, r)).collect();
    let mut from_events = BTreeSet::new();
    if let Some(approval) = file.stores.get(APPROVAL) {
        for e in &approval.events {
            let Ok(stored) = e.to_stored() else { continue };
            if !is_own(APPROVAL, &stored)
                || !(stored.kind == GradeDecided::KIND || stored.kind == GradeRevised::KIND)
            {
                continue;
            }
            // The event's own hash is checked above; here, what it says.
            match audit_record(&stored) {
                None => report.problems.push(
                    Problem::new(Check::DecisionLog, "the grade event carries no record")
                        .in_store(APPROVAL)
                        .at(e.position),
                ),
                Some(rebuilt) => {
                    from_events.insert(rebuilt.seq);
                    if by_seq.get(&rebuilt.seq) != Some(&&rebuilt) {
                        report.problems.push(
                            Problem::new(
                                Check::DecisionLog,
                                "the included record differs from its grade event (or is missing)",
                            )
                            .in_store(APPROVAL)
                            .at(e.position)
                            .record(rebuilt.seq),
                        );
                    }
                }
            }
        }
    }
    for seq in by_seq.keys() {
        if !from_events.contains(seq) {
            report.problems.push(
                Problem::new(
                    Check::DecisionLog,
                    "the record is included without its grade event",
                )
                .in_store(APPROVAL)
                .record(*seq),
            );
        }
    }
}
