//! The audit stream `<prefix>_AUDIT`: reading every message (an ordered,
//! ephemeral consumer — nothing is acknowledged or removed, and the stream
//! denies deletes anyway), and comparing it with the decision log rebuilt
//! from the approval store, record by record.
//!
//! The mirror (`gradeflow up`'s audit relay) publishes each record as its
//! JSON on `<prefix>.audit.<cycle>` with `Nats-Msg-Id: record-<seq>`, and
//! records how far the stream acknowledged it in the approval store's
//! outbox positions under [`AUDIT_RELAY`]. That position tells a record the
//! stream once had (lost or deleted since) from one not mirrored yet.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt as _;
use gradeflow_proto::events::DecisionLogRecord;
use gradeflow_proto::Names;
use serde::Serialize;

use crate::problem::{Check, Problem};
use crate::sources::{AuditError, APPROVAL};

/// The publisher name the audit relay records its position under in the
/// approval store (`services/gradeflow/src/serve.rs`).
pub const AUDIT_RELAY: &str = "approval-audit";

/// How long to wait for the next message before giving up on a read.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One message of the audit stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// Its stream sequence.
    pub stream_seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub msg_id: Option<String>,
    /// The record it carries, or why it is not one.
    pub record: Result<DecisionLogRecord, String>,
}

/// The audit stream as read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditStream {
    /// The stream's name.
    pub name: String,
    /// Every message, in stream order.
    pub entries: Vec<StreamEntry>,
}

/// What the stream holds, for the report's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// The stream.
    pub stream: String,
    /// Messages read.
    pub messages: u64,
    /// Of which decision-log records.
    pub records: u64,
    /// Where the audit relay says the stream acknowledged the approval
    /// store up to.
    pub relay_position: i64,
}

/// Reads every message of `<prefix>_AUDIT` present when the read starts.
pub async fn read(client: &async_nats::Client, names: &Names) -> Result<AuditStream, AuditError> {
    let name = names.audit_stream();
    let fail = |detail: String| AuditError::Stream {
        stream: name.clone(),
        detail,
    };
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (count, last) = {
        let info = stream.info().await.map_err(|e| fail(e.to_string()))?;
        (info.state.messages, info.state.last_sequence)
    };
    let mut out = AuditStream {
        name: name.clone(),
        entries: Vec::new(),
    };
    if count == 0 {
        return Ok(out);
    }
    // An ordered consumer: ephemeral, no acks, gap-free and in order (it
    // recreates itself should it miss a message).
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..pull::OrderedConfig::default()
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| fail(e.to_string()))?;
    loop {
        let next = tokio::time::timeout(MESSAGE_TIMEOUT, messages.next())
            .await
            .map_err(|_| {
                fail(format!(
                    "no message for {} s before reaching sequence {last}",
                    MESSAGE_TIMEOUT.as_secs()
                ))
            })?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| fail(e.to_string()))?;
        let stream_seq = message
            .info()
            .map_err(|e| fail(e.to_string()))?
            .stream_sequence;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let record = serde_json::from_slice::<DecisionLogRecord>(&message.payload)
            .map_err(|e| format!("not a decision-log record: {e}"));
        out.entries.push(StreamEntry {
            stream_seq,
            subject: message.subject.to_string(),
            msg_id,
            record,
        });
        if stream_seq >= last {
            break;
        }
    }
    Ok(out)
}

/// What comparing the log with the stream found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// Every disagreement.
    pub problems: Vec<Problem>,
    /// Some record is missing from the stream but lies past the relay's
    /// acknowledged position: it may simply not be mirrored yet.
    pub pending: bool,
    /// Messages that carry a record.
    pub records: u64,
}

/// Compares the decision log (records with their positions in the approval
/// store) with the stream, record by record: each record in the stream
/// once, under `record-<seq>`, equal in every field; nothing in the stream
/// that the store lacks. `relay_position` is the audit relay's acknowledged
/// position.
pub fn compare(
    log: &[(i64, DecisionLogRecord)],
    stream: &AuditStream,
    relay_position: i64,
) -> Comparison {
    let mut out = Comparison::default();
    let name = &stream.name;
    let mut by_seq: BTreeMap<u64, Vec<(u64, &DecisionLogRecord)>> = BTreeMap::new();
    for entry in &stream.entries {
        match &entry.record {
            Ok(record) => {
                out.records += 1;
                let expected = format!("record-{}", record.seq);
                if entry.msg_id.as_deref() != Some(expected.as_str()) {
                    out.problems.push(
                        Problem::new(
                            Check::AuditStream,
                            format!(
                                "message {} carries record {} under Nats-Msg-Id {:?}, expected `{expected}`",
                                entry.stream_seq,
                                record.seq,
                                entry.msg_id.as_deref().unwrap_or("(none)")
                            ),
                        )
                        .record(record.seq)
                        .message(entry.stream_seq),
                    );
                }
                by_seq
                    .entry(record.seq)
                    .or_default()
                    .push((entry.stream_seq, record));
            }
            Err(why) => out.problems.push(
                Problem::new(
                    Check::AuditStream,
                    format!("message {} of {name}: {why}", entry.stream_seq),
                )
                .message(entry.stream_seq),
            ),
        }
    }
    if out.records != log.len() as u64 {
        out.problems.push(Problem::new(
            Check::AuditStream,
            format!(
                "the approval store holds {} decision-log records, {name} {}",
                log.len(),
                out.records
            ),
        ));
    }
    let mut in_store = std::collections::BTreeSet::new();
    for (position, record) in log {
        in_store.insert(record.seq);
        let mirrored = by_seq.get(&record.seq).map(Vec::as_slice).unwrap_or(&[]);
        match mirrored {
            [] => {
                let why = if *position <= relay_position {
                    format!(
                        "the audit relay recorded it as acknowledged (up to position {relay_position}), so it was deleted or lost"
                    )
                } else {
                    out.pending = true;
                    format!(
                        "never mirrored: the audit relay has acknowledged the store up to position {relay_position}"
                    )
                };
                out.problems.push(
                    Problem::new(
                        Check::AuditStream,
                        format!(
                            "record {} (approval position {position}) is not in {name}: {why}",
                            record.seq
                        ),
                    )
                    .in_store(APPROVAL)
                    .at(*position)
                    .record(record.seq),
                );
            }
            [(stream_seq, copy), rest @ ..] => {
                if !rest.is_empty() {
                    let seqs: Vec<String> = mirrored.iter().map(|(s, _)| s.to_string()).collect();
                    out.problems.push(
                        Problem::new(
                            Check::AuditStream,
                            format!(
                                "record {} is in {name} {} times (messages {})",
                                record.seq,
                                mirrored.len(),
                                seqs.join(", ")
                            ),
                        )
                        .record(record.seq)
                        .message(*stream_seq),
                    );
                }
                // Equal records (nearly always) are not encoded to be
                // told apart field by field.
                let differ = if record == *copy {
                    Vec::new()
                } else {
                    differing_fields(record, copy)
                };
                if !differ.is_empty() {
                    out.problems.push(
                        Problem::new(
                            Check::AuditStream,
                            format!(
                                "record {} differs from {name} message {stream_seq} in {}",
                                record.seq,
                                differ.join(", ")
                            ),
                        )
                        .in_store(APPROVAL)
                        .at(*position)
                        .record(record.seq)
                        .message(*stream_seq),
                    );
                }
            }
        }
    }
    for (seq, mirrored) in &by_seq {
        if in_store.contains(seq) {
            continue;
        }
        if let Some((stream_seq, _)) = mirrored.first() {
            out.problems.push(
                Problem::new(
                    Check::AuditStream,
                    format!(
                        "record {seq} is in {name} (message {stream_seq}) but not in the approval store"
                    ),
                )
                .record(*seq)
                .message(*stream_seq),
            );
        }
    }
    out
}

/// The names of the fields in which two records differ.
fn differing_fields(a: &DecisionLogRecord, b: &DecisionLogRecord) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unencodable record)".to_owned()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use gradeflow_proto::{CycleId, DecisionId, DossierId, Grade, OrgId, SubjectId};

    fn record(seq: u64) -> DecisionLogRecord {
        DecisionLogRecord {
            seq,
            decision: DecisionId::new(),
            number: "1-QĐ".into(),
            cycle: CycleId::new(),
            dossier: DossierId::new(),
            subject: SubjectId::new(),
            grade: Grade::Good,
            authority: OrgId::new(),
            actor: "a".into(),
            at: Utc::now(),
            supersedes: None,
            reason: None,
            override_reason: None,
            prev_hash: "0".repeat(64),
            hash: format!("{seq:064}"),
            signature: "sig".into(),
            key_id: "k".into(),
        }
    }

    fn entry(stream_seq: u64, r: &DecisionLogRecord) -> StreamEntry {
        StreamEntry {
            stream_seq,
            subject: "t.audit.x".into(),
            msg_id: Some(format!("record-{}", r.seq)),
            record: Ok(r.clone()),
        }
    }

    fn stream(entries: Vec<StreamEntry>) -> AuditStream {
        AuditStream {
            name: "t_AUDIT".into(),
            entries,
        }
    }

    #[test]
    fn a_log_mirrored_record_for_record_agrees() {
        let log = vec![(10, record(1)), (12, record(2))];
        let s = stream(vec![entry(1, &log[0].1), entry(2, &log[1].1)]);
        let c = compare(&log, &s, 12);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(!c.pending);
    }

    #[test]
    fn a_record_missing_from_the_stream_is_named_lost_or_not_yet_mirrored() {
        let log = vec![(10, record(1)), (12, record(2)), (15, record(3))];
        let s = stream(vec![entry(1, &log[0].1)]);
        let c = compare(&log, &s, 12);
        let named: Vec<(Option<u64>, bool)> = c
            .problems
            .iter()
            .filter(|p| p.seq.is_some())
            .map(|p| (p.seq, p.problem.contains("never mirrored")))
            .collect();
        assert_eq!(named, vec![(Some(2), false), (Some(3), true)]);
        assert!(c.pending);
        assert!(c.problems.iter().any(|p| p.problem.contains("holds 3")));
    }

    #[test]
    fn a_stream_record_the_store_lacks_and_a_differing_one_are_named() {
        let log = vec![(10, record(1))];
        let mut changed = log[0].1.clone();
        changed.grade = Grade::Excellent;
        let s = stream(vec![entry(1, &changed), entry(2, &record(2))]);
        let c = compare(&log, &s, 10);
        assert!(c.problems.iter().any(|p| p.seq == Some(1)
            && p.problem.contains("differs")
            && p.problem.contains("grade")));
        assert!(c.problems.iter().any(|p| p.seq == Some(2)
            && p.stream_seq == Some(2)
            && p.problem.contains("not in the approval store")));
    }
}
