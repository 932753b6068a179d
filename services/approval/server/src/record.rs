//! The signed decision log, as pure functions: the canonical encoding a
//! record is hashed over, its hash, the message its signature covers, the
//! checks an auditor runs on one record or on the whole chain, and the
//! mapping from a stored `grade_decided` / `grade_revised` event back to its
//! [`DecisionLogRecord`] (what the relay mirrors to `<prefix>_AUDIT`).
//!
//! Nothing here does I/O, so the approval service, the audit mirror and
//! `gradeflow audit verify` share one definition of "a valid record".
//!
//! # Canonical encoding (what `hash` is computed over)
//!
//! The record **without** `hash` and `signature`, as one JSON object with
//! exactly these fifteen keys, sorted by key (byte order), no whitespace,
//! strings escaped as `serde_json` escapes them:
//!
//! | key | value |
//! | --- | --- |
//! | `actor` | string: the token subject that submitted the decision |
//! | `at` | string: decision time, UTC, always six fraction digits: `2026-12-10T08:30:00.123456Z` |
//! | `authority` | string: org UUID, lowercase hyphenated |
//! | `cycle` | string: cycle UUID |
//! | `decision` | string: decision UUID |
//! | `dossier` | string: dossier UUID |
//! | `grade` | string: `excellent` \| `good` \| `completed` \| `not_completed` |
//! | `key_id` | string: the signing key's id in the key registry |
//! | `number` | string: the decision document's number |
//! | `override_reason` | string or `null` |
//! | `prev_hash` | string: 64 lowercase hex digits (64 zeros for seq 1) |
//! | `reason` | string or `null` (the re-grading reason) |
//! | `seq` | integer, from 1 |
//! | `subject` | string: subject UUID |
//! | `supersedes` | integer or `null` (the record a re-grade supersedes) |
//!
//! * `hash` = lowercase hex of SHA-256 over the UTF-8 bytes of that text.
//! * `signature` = standard base64 (with padding) of the Ed25519 signature
//!   over the **32 raw bytes** of the hash (not its hex text).
//! * The key list is fixed here, not derived from the struct, so adding a
//!   field to [`DecisionLogRecord`] can never silently change old hashes.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use gradeflow_eventstore::canonical::{canonical_json, format_timestamp, truncate_timestamp};
use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{DecisionLogRecord, Event, GradeDecided, GradeRevised, RecordRef};
use gradeflow_proto::OrgId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::SERVICE;

/// The `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = gradeflow_eventstore::canonical::GENESIS_HASH;

/// The stream that holds the decision log; its version is the record's `seq`.
pub const DECISION_LOG_STREAM: &str = "decision-log";

/// The canonical text of a record without `hash` and `signature` (see the
/// module docs for the exact form).
pub fn canonical_record(record: &DecisionLogRecord) -> String {
    let value = json!({
        "actor": record.actor,
        "at": format_timestamp(record.at),
        "authority": record.authority.to_string(),
        "cycle": record.cycle.to_string(),
        "decision": record.decision.to_string(),
        "dossier": record.dossier.to_string(),
        "grade": record.grade.code(),
        "key_id": record.key_id,
        "number": record.number,
        "override_reason": record.override_reason,
        "prev_hash": record.prev_hash,
        "reason": record.reason,
        "seq": record.seq,
        "subject": record.subject.to_string(),
        "supersedes": record.supersedes,
    });
    canonical_json(&value)
}

/// SHA-256 of [`canonical_record`], lowercase hex: the record's `hash`.
pub fn record_hash(record: &DecisionLogRecord) -> String {
    hex::encode(Sha256::digest(canonical_record(record).as_bytes()))
}

/// The bytes a record's signature covers: the 32 raw bytes of its hash.
/// `None` when `hash` is not 64 hex digits.
pub fn signing_message(hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// The time a record carries: truncated to microseconds, the precision the
/// canonical encoding keeps, so a record read back hashes the same.
pub fn record_time(at: DateTime<Utc>) -> DateTime<Utc> {
    truncate_timestamp(at)
}

/// Whether `record` is intact and signed by `key`: its hash matches its
/// content and its signature verifies (strictly) over that hash. A record
/// whose content was changed and its hash recomputed fails here, because
/// nobody but the authority can sign the new hash.
pub fn verify_record(record: &DecisionLogRecord, key: &VerifyingKey) -> bool {
    record_hash(record) == record.hash && signature_valid(record, key)
}

fn signature_valid(record: &DecisionLogRecord, key: &VerifyingKey) -> bool {
    let Some(message) = signing_message(&record.hash) else {
        return false;
    };
    let Ok(bytes) = BASE64.decode(&record.signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(&message, &signature).is_ok()
}

/// A public key an auditor trusts, with the org it was issued to (from the
/// key registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// The authority org the key belongs to, when the registry says.
    pub org: Option<OrgId>,
}

/// One problem found in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    /// The record it concerns.
    pub seq: u64,
    /// What is wrong, in English.
    pub problem: String,
}

/// What [`verify_chain`] found: the `verify_log.v1` answer and the body of
/// `GET /api/v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Whether every record verified.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Hash of the last record (64 zeros for an empty log).
    pub head: String,
    /// Every problem, in log order.
    pub problems: Vec<ChainProblem>,
}

/// Checks a whole log, in order: `seq` contiguous from 1, each `prev_hash`
/// equal to the previous record's hash (64 zeros first), each hash
/// recomputed from the content, each signature verified with the registry
/// key named by `key_id`, and that key issued to the record's authority.
/// Every problem is reported, not only the first.
pub fn verify_chain(
    records: &[DecisionLogRecord],
    keys: &BTreeMap<String, TrustedKey>,
) -> ChainReport {
    let mut check = ChainCheck::new();
    for record in records {
        check.record(record, keys);
    }
    check.report()
}

/// [`verify_chain`] one record at a time, for a log read in pages: fed the
/// records of the whole log in order, [`ChainCheck::report`] is exactly
/// what `verify_chain` answers over the same records, without the log ever
/// being held whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// Hash of the last record checked (64 zeros before the first).
    prev: String,
    /// The seq the next record must carry.
    expected_seq: u64,
    /// Records checked.
    records: u64,
    /// Every problem so far, in log order.
    problems: Vec<ChainProblem>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCheck {
    /// A check before the first record.
    pub fn new() -> Self {
        Self {
            prev: GENESIS_HASH.to_owned(),
            expected_seq: 1,
            records: 0,
            problems: Vec::new(),
        }
    }

    /// Checks the next record of the log against the one before it.
    pub fn record(&mut self, record: &DecisionLogRecord, keys: &BTreeMap<String, TrustedKey>) {
        let seq = record.seq;
        let mut problem = |text: String| self.problems.push(ChainProblem { seq, problem: text });
        if seq != self.expected_seq {
            problem(format!(
                "sequence gap: expected record {}, found {seq}",
                self.expected_seq
            ));
        }
        if record.prev_hash != self.prev {
            problem("prev_hash does not match the previous record's hash".to_owned());
        }
        if record_hash(record) != record.hash {
            problem("hash does not match the record's content".to_owned());
        }
        match keys.get(&record.key_id) {
            None => problem(format!("unknown signing key `{}`", record.key_id)),
            Some(trusted) => {
                if !signature_valid(record, &trusted.key) {
                    problem(format!(
                        "signature does not verify with key `{}`",
                        record.key_id
                    ));
                }
                if trusted.org.is_some_and(|org| org != record.authority) {
                    problem(format!(
                        "key `{}` was not issued to the deciding authority {}",
                        record.key_id, record.authority
                    ));
                }
            }
        }
        self.prev.clone_from(&record.hash);
        self.expected_seq = seq.saturating_add(1);
        self.records = self.records.saturating_add(1);
    }

    /// What the records checked so far add up to.
    pub fn report(self) -> ChainReport {
        ChainReport {
            ok: self.problems.is_empty(),
            records: self.records,
            head: self.prev,
            problems: self.problems,
        }
    }
}

/// The [`RecordRef`] a grade event carries for `record`.
pub fn record_ref(record: &DecisionLogRecord) -> RecordRef {
    RecordRef {
        seq: record.seq,
        hash: record.hash.clone(),
        signature: record.signature.clone(),
        key_id: record.key_id.clone(),
        prev_hash: Some(record.prev_hash.clone()),
        at: Some(record.at),
    }
}

/// The decision-log record behind one stored event of the approval store:
/// `Some` for approval's own `grade_decided` / `grade_revised` events, `None`
/// for anything else (or a payload that does not parse).
///
/// The record is rebuilt from the payload (`record` carries seq, hash,
/// signature, key id, prev_hash and time; the event the number, ids and
/// grades) and the metadata (`actor.sub`). It equals the record that was
/// hashed and signed. Should an event lack the optional fields (it never
/// does when written by this service), the gaps are filled with empty
/// values and the time it was stored, so verification fails loudly on that
/// record rather than skipping it.
pub fn audit_record(event: &StoredEvent) -> Option<DecisionLogRecord> {
    if event.metadata.service != SERVICE {
        return None;
    }
    let actor = event.metadata.actor.sub.clone();
    if event.kind == GradeDecided::KIND {
        let e = GradeDecided::deserialize(&event.payload).ok()?;
        Some(DecisionLogRecord {
            seq: e.record.seq,
            decision: e.decision,
            number: e.number.unwrap_or_default(),
            cycle: e.cycle,
            dossier: e.dossier,
            subject: e.subject,
            grade: e.grade,
            authority: e.authority,
            actor,
            at: e.record.at.unwrap_or(event.recorded_at),
            supersedes: None,
            reason: None,
            override_reason: e.override_reason,
            prev_hash: e.record.prev_hash.unwrap_or_default(),
            hash: e.record.hash,
            signature: e.record.signature,
            key_id: e.record.key_id,
        })
    } else if event.kind == GradeRevised::KIND {
        let e = GradeRevised::deserialize(&event.payload).ok()?;
        Some(DecisionLogRecord {
            seq: e.record.seq,
            decision: e.decision,
            number: e.number.unwrap_or_default(),
            cycle: e.cycle,
            dossier: e.dossier,
            subject: e.subject,
            grade: e.grade,
            authority: e.authority,
            actor,
            at: e.record.at.unwrap_or(event.recorded_at),
            supersedes: Some(e.supersedes),
            reason: Some(e.reason),
            override_reason: e.override_reason,
            prev_hash: e.record.prev_hash.unwrap_or_default(),
            hash: e.record.hash,
            signature: e.record.signature,
            key_id: e.record.key_id,
        })
    } else {
        None
    }
}

/// The audit-stream message of a stored event: for this store's own
/// `grade_decided` / `grade_revised` events, the decision-log record as JSON
/// on `<prefix>.audit.<cycle>`, deduplicated by `record-<seq>`; `None` for
/// every other event. The approval service's audit relay publishes with it
/// (`gradeflow_bus::Relay::with_mapper`).
pub fn audit_message(
    names: &gradeflow_proto::Names,
    event: &StoredEvent,
) -> Result<Option<gradeflow_bus::OutgoingEvent>, gradeflow_bus::PublishEventError> {
    let Some(record) = audit_record(event) else {
        return Ok(None);
    };
    let body =
        serde_json::to_vec(&record).map_err(|source| gradeflow_bus::PublishEventError::Encode {
            event_id: event.event_id.to_string(),
            source,
        })?;
    Ok(Some(gradeflow_bus::OutgoingEvent::to_stream(
        names.audit_subject(&record.cycle.to_string()),
        format!("record-{}", record.seq),
        &names.audit_stream(),
        body.into(),
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use gradeflow_proto::{CycleId, DecisionId, DossierId, Grade, SubjectId};
    use uuid::Uuid;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn sample(seq: u64, prev: &str) -> DecisionLogRecord {
        DecisionLogRecord {
            seq,
            decision: DecisionId(id(1)),
            number: "12-QĐ/HU".into(),
            cycle: CycleId(id(2)),
            dossier: DossierId(id(3)),
            subject: SubjectId(id(4)),
            grade: Grade::Good,
            authority: OrgId(id(5)),
            actor: "tran.thi.b".into(),
            at: DateTime::parse_from_rfc3339("2026-12-10T08:30:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            supersedes: None,
            reason: None,
            override_reason: None,
            prev_hash: prev.to_owned(),
            hash: String::new(),
            signature: String::new(),
            key_id: "00000000-abcdef01".into(),
        }
    }

    fn seal(mut r: DecisionLogRecord, key: &SigningKey) -> DecisionLogRecord {
        r.hash = record_hash(&r);
        let msg = signing_message(&r.hash).unwrap();
        r.signature = BASE64.encode(key.sign(&msg).to_bytes());
        r
    }

    #[test]
    fn the_canonical_encoding_is_sorted_compact_and_ignores_hash_and_signature() {
        let mut r = sample(1, GENESIS_HASH);
        let text = canonical_record(&r);
        assert_eq!(
            text,
            format!(
                "{{\"actor\":\"tran.thi.b\",\"at\":\"2026-12-10T08:30:00.500000Z\",\
                 \"authority\":\"{}\",\"cycle\":\"{}\",\"decision\":\"{}\",\"dossier\":\"{}\",\
                 \"grade\":\"good\",\"key_id\":\"00000000-abcdef01\",\"number\":\"12-QĐ/HU\",\
                 \"override_reason\":null,\"prev_hash\":\"{GENESIS_HASH}\",\"reason\":null,\
                 \"seq\":1,\"subject\":\"{}\",\"supersedes\":null}}",
                id(5),
                id(2),
                id(1),
                id(3),
                id(4)
            )
        );
        r.hash = "ff".repeat(32);
        r.signature = "x".into();
        assert_eq!(canonical_record(&r), text);
        assert_eq!(record_hash(&r).len(), 64);
    }

    #[test]
    fn a_sealed_record_verifies_and_a_regraded_copy_with_a_recomputed_hash_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let r = seal(sample(1, GENESIS_HASH), &key);
        assert!(verify_record(&r, &key.verifying_key()));
        let mut forged = r.clone();
        forged.grade = Grade::Excellent;
        forged.hash = record_hash(&forged);
        assert!(!verify_record(&forged, &key.verifying_key()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!verify_record(&r, &other.verifying_key()));
    }

    #[test]
    fn the_chain_report_names_each_broken_record() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let r1 = seal(sample(1, GENESIS_HASH), &key);
        let r2 = seal(sample(2, &r1.hash), &key);
        let r3 = seal(sample(3, &r2.hash), &key);
        let keys = BTreeMap::from([(
            "00000000-abcdef01".to_owned(),
            TrustedKey {
                key: key.verifying_key(),
                org: Some(OrgId(id(5))),
            },
        )]);
        let good = verify_chain(&[r1.clone(), r2.clone(), r3.clone()], &keys);
        assert!(good.ok, "{:?}", good.problems);
        assert_eq!(good.head, r3.hash);
        assert_eq!(good.records, 3);

        let mut forged = r2.clone();
        forged.grade = Grade::Excellent;
        forged.hash = record_hash(&forged);
        let bad = verify_chain(&[r1.clone(), forged, r3.clone()], &keys);
        assert!(!bad.ok);
        let seqs: Vec<u64> = bad.problems.iter().map(|p| p.seq).collect();
        // Record 2's signature fails, and record 3 no longer links to it.
        assert_eq!(seqs, vec![2, 3]);

        let gap = verify_chain(&[r1, r3], &keys);
        assert!(gap
            .problems
            .iter()
            .any(|p| p.problem.contains("sequence gap")));
        assert_eq!(verify_chain(&[], &keys).head, GENESIS_HASH);
    }
}
