//! The canonical encoding the hash chain is computed over, and the fixed
//! timestamp form the store writes.
//!
//! * **Canonical JSON**: object keys sorted recursively (by Unicode code
//!   point, i.e. UTF-8 byte order), no whitespace, scalars as `serde_json`
//!   prints them. The workspace builds `serde_json` with `preserve_order`, so
//!   a `Value`'s own key order is insertion order; we sort explicitly.
//! * **Hashed record** of one event: the canonical JSON of
//!   `{event_id, kind, metadata, payload, position, recorded_at, stream,
//!   version}`, where `metadata` and `payload` are the canonical texts stored
//!   in the database. Because those texts are canonical, splicing them in
//!   verbatim yields exactly the canonical JSON of the whole record — and an
//!   auditor can recompute the hash from the stored bytes alone.
//! * **Hash**: `sha256_hex(prev_hash_hex || record)`, the first event's
//!   `prev_hash` being 64 zeros ([`GENESIS_HASH`]).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use gradeflow_proto::Metadata;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::StoredEvent;

/// The `prev_hash` of the first event: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical JSON text of a value: keys sorted recursively, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Null, booleans, numbers and strings: serde_json's compact form is
        // already deterministic.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    put_json_string(s, out);
}

/// Where a canonical text goes: a `String`, or straight into a SHA-256
/// hasher (the chain hashes the record without building it first). Both
/// receive the same pieces in the same order, so the bytes hashed are the
/// bytes of the record's text.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }
}

/// `s` as a JSON string, exactly as `serde_json` prints it. `serde_json`
/// escapes only `"`, `\` and the control characters below U+0020 (not
/// DEL, not non-ASCII); a string with none of them is printed verbatim
/// between quotes, which is the common case (ids, kinds, timestamps) and
/// needs no allocation. Anything else goes through `serde_json` itself.
fn put_json_string(s: &str, out: &mut impl Sink) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.put("\"");
        out.put(s);
        out.put("\"");
    } else {
        out.put(&Value::String(s.to_owned()).to_string());
    }
}

/// `n` in decimal, as `i64::to_string` prints it, without allocating.
fn put_integer(n: i64, out: &mut impl Sink) {
    // 19 digits and a sign hold every i64.
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        // `rest % 10` is below 10, so the cast cannot truncate.
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits and '-' were written.
    if let Ok(text) = std::str::from_utf8(&buf[at..]) {
        out.put(text);
    }
}

/// The fields of one event that the hash covers, as stored (for
/// [`chain_hash`]; auditors recompute a hash from an export's texts with it).
#[derive(Debug, Clone, Copy)]
pub struct HashedFields<'a> {
    /// Global position.
    pub position: i64,
    /// The stream.
    pub stream: &'a str,
    /// Version within the stream.
    pub version: i64,
    /// The event id, as stored (lowercase hyphenated UUID).
    pub event_id: &'a str,
    /// The versioned kind.
    pub kind: &'a str,
    /// Canonical payload text, as stored.
    pub payload: &'a str,
    /// Canonical metadata text, as stored.
    pub metadata: &'a str,
    /// [`format_timestamp`] text, as stored.
    pub recorded_at: &'a str,
}

/// The canonical record of one event as text (keys in sorted order, stored
/// texts spliced in verbatim). The product hashes it in place
/// ([`chain_digest`]); the tests hold the two equal.
#[cfg(test)]
pub(crate) fn canonical_record(f: &HashedFields<'_>) -> String {
    let mut out = String::with_capacity(f.payload.len() + f.metadata.len() + 256);
    write_record(f, &mut out);
    out
}

/// Writes the canonical record of `f` into `out`, piece by piece: the one
/// definition behind both `canonical_record` (the text) and
/// [`chain_digest`] (its hash).
fn write_record(f: &HashedFields<'_>, out: &mut impl Sink) {
    out.put("{\"event_id\":");
    put_json_string(f.event_id, out);
    out.put(",\"kind\":");
    put_json_string(f.kind, out);
    out.put(",\"metadata\":");
    out.put(f.metadata);
    out.put(",\"payload\":");
    out.put(f.payload);
    out.put(",\"position\":");
    put_integer(f.position, out);
    out.put(",\"recorded_at\":");
    put_json_string(f.recorded_at, out);
    out.put(",\"stream\":");
    put_json_string(f.stream, out);
    out.put(",\"version\":");
    put_integer(f.version, out);
    out.put("}");
}

/// SHA-256 of `prev_hash || canonical_record`, as raw bytes. The record is
/// fed to the hasher as it is written, never built as a `String`: this is
/// what [`Store::verify`](crate::Store::verify) runs once per event.
pub(crate) fn chain_digest(prev_hash: &str, f: &HashedFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    write_record(f, &mut h);
    h.finalize().into()
}

/// `sha256_hex(prev_hash || canonical_record)`.
pub fn chain_hash(prev_hash: &str, f: &HashedFields<'_>) -> String {
    hex::encode(chain_digest(prev_hash, f))
}

/// The metadata text the writer stores (and hashes) for `metadata`: the
/// canonical JSON of its serde form.
pub fn metadata_text(metadata: &Metadata) -> String {
    // A struct of strings, ids and options always serialises; should it
    // ever not, `null` makes every hash over it fail loudly.
    canonical_json(&serde_json::to_value(metadata).unwrap_or_default())
}

/// The hash of an event as read back: [`chain_hash`] over its stored payload
/// text, the canonical text of its metadata ([`metadata_text`], what the
/// writer stored), and its `recorded_at` in the stored form. Equal to
/// `event.hash` for every event the store wrote; auditors use it on events
/// they export or re-check outside the database.
pub fn event_hash(prev_hash: &str, event: &StoredEvent) -> String {
    let metadata = metadata_text(&event.metadata);
    let event_id = event.event_id.to_string();
    let recorded_at = format_timestamp(event.recorded_at);
    chain_hash(
        prev_hash,
        &HashedFields {
            position: event.position,
            stream: &event.stream,
            version: i64::try_from(event.version).unwrap_or(i64::MAX),
            event_id: &event_id,
            kind: &event.kind,
            payload: &event.payload_text,
            metadata: &metadata,
            recorded_at: &recorded_at,
        },
    )
}

/// Truncates to the precision the store keeps (microseconds).
pub fn truncate_timestamp(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The one form `recorded_at` is stored and hashed in:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fraction digits, UTC `Z`). Fixed
/// width, so text order is time order.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    truncate_timestamp(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a stored `recorded_at`.
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_recursively_without_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [ {"z": 1, "a": null} ], "a": {"d": "x", "c": 2.5} }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":2.5,"d":"x"},"b":[{"a":null,"z":1}]}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_json() {
        let v = json!({"k\"ey": "line\nbreak \u{e9}"});
        assert_eq!(canonical_json(&v), "{\"k\\\"ey\":\"line\\nbreak \u{e9}\"}");
    }

    #[test]
    fn the_spliced_record_is_the_canonical_json_of_the_whole_record() {
        let payload = canonical_json(&json!({"z": 1, "a": [1, 2]}));
        let metadata = canonical_json(&json!({"service": "s", "actor": {"sub": "u"}}));
        let f = HashedFields {
            position: 7,
            stream: "dossier-\"1\"",
            version: 3,
            event_id: "0190a7c4-0000-7000-8000-000000000000",
            kind: "grade_decided.v1",
            payload: &payload,
            metadata: &metadata,
            recorded_at: "2025-01-02T03:04:05.000006Z",
        };
        let whole = json!({
            "version": 3, "stream": "dossier-\"1\"", "recorded_at": "2025-01-02T03:04:05.000006Z",
            "position": 7, "payload": {"a": [1, 2], "z": 1},
            "metadata": {"actor": {"sub": "u"}, "service": "s"},
            "kind": "grade_decided.v1", "event_id": "0190a7c4-0000-7000-8000-000000000000",
        });
        assert_eq!(canonical_record(&f), canonical_json(&whole));
        // The hash is over prev_hash's hex text followed by the record.
        let mut h = Sha256::new();
        h.update(GENESIS_HASH.as_bytes());
        h.update(canonical_json(&whole).as_bytes());
        assert_eq!(chain_hash(GENESIS_HASH, &f), hex::encode(h.finalize()));
    }

    /// Fields whose texts exercise every branch of the record writer:
    /// strings that need escaping and strings that do not, integers at the
    /// ends of their range.
    fn awkward_fields() -> Vec<(String, String, String, String, String, i64, i64)> {
        let payload = canonical_json(&json!({"z": "tab\there", "a": [1, -2.5, null]}));
        let metadata = canonical_json(&json!({"service": "s", "actor": {"sub": "u\u{1}"}}));
        let plain = |s: &str| s.to_owned();
        vec![
            (
                plain("dossier-1"),
                plain("0190a7c4-0000-7000-8000-000000000000"),
                plain("grade_decided.v1"),
                payload.clone(),
                metadata.clone(),
                1,
                1,
            ),
            (
                plain("quote\" backslash\\ nl\n cr\r nul\u{0} us\u{1f} del\u{7f}"),
                plain("Quyết định \u{2028} ✓"),
                plain("k\u{8}\u{c}"),
                payload,
                metadata,
                i64::MAX,
                i64::MIN,
            ),
            (
                plain(""),
                plain(""),
                plain(""),
                plain("{}"),
                plain("{}"),
                0,
                -1,
            ),
        ]
    }

    #[test]
    fn the_record_hashed_in_place_is_the_record_text_hashed() {
        for (stream, event_id, kind, payload, metadata, position, version) in awkward_fields() {
            let f = HashedFields {
                position,
                stream: &stream,
                version,
                event_id: &event_id,
                kind: &kind,
                payload: &payload,
                metadata: &metadata,
                recorded_at: "2025-01-02T03:04:05.000006Z",
            };
            // The text: the canonical JSON of the whole record.
            let whole = json!({
                "event_id": event_id, "kind": kind,
                "metadata": serde_json::from_str::<Value>(&metadata).unwrap(),
                "payload": serde_json::from_str::<Value>(&payload).unwrap(),
                "position": position, "recorded_at": "2025-01-02T03:04:05.000006Z",
                "stream": stream, "version": version,
            });
            assert_eq!(canonical_record(&f), canonical_json(&whole));
            // The digest fed piece by piece equals the digest of that text.
            for prev in [GENESIS_HASH, "ab".repeat(32).as_str()] {
                let mut h = Sha256::new();
                h.update(prev.as_bytes());
                h.update(canonical_record(&f).as_bytes());
                let text_digest: [u8; 32] = h.finalize().into();
                assert_eq!(chain_digest(prev, &f), text_digest);
                assert_eq!(chain_hash(prev, &f), hex::encode(text_digest));
            }
        }
    }

    #[test]
    fn strings_and_integers_print_as_serde_json_prints_them() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend(
            [
                "",
                "plain",
                "a\"b",
                "a\\b",
                "\u{e9}\u{2028}\u{10ffff}",
                "x\u{1f}y\u{7f}",
            ]
            .map(str::to_owned),
        );
        for s in samples {
            let mut out = String::new();
            put_json_string(&s, &mut out);
            assert_eq!(out, Value::String(s.clone()).to_string(), "{s:?}");
        }
        for n in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_234_567,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut out = String::new();
            put_integer(n, &mut out);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn an_events_hash_is_recomputed_from_the_event_as_read_back() {
        let org = "0190a7c4-0000-7000-8000-0000000000aa";
        let corr = "0190a7c4-0000-7000-8000-0000000000bb";
        let id = "0190a7c4-0000-7000-8000-0000000000cc";
        let metadata: Metadata = serde_json::from_value(json!({
            "actor": {"sub": "tran.thi.b", "role": "authority", "org": org},
            "correlation_id": corr, "service": "approval",
        }))
        .unwrap();
        let payload_text = canonical_json(&json!({"z": [1, 2], "a": "Quyết định"}));
        let event = StoredEvent {
            position: 3,
            stream: "decision-log".into(),
            version: 2,
            event_id: id.parse().unwrap(),
            kind: "grade_decided.v1".into(),
            payload: serde_json::from_str(&payload_text).unwrap(),
            payload_text,
            metadata,
            recorded_at: parse_timestamp("2025-01-02T03:04:05.000006Z").unwrap(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        // The record as the writer hashed it: every metadata field present
        // (absent options as null), keys sorted, no whitespace.
        let whole = json!({
            "event_id": id, "kind": "grade_decided.v1",
            "metadata": {"actor": {"org": org, "role": "authority", "sub": "tran.thi.b"},
                         "causation_id": null, "correlation_id": corr, "province": null,
                         "service": "approval", "traceparent": null},
            "payload": {"a": "Quyết định", "z": [1, 2]},
            "position": 3, "recorded_at": "2025-01-02T03:04:05.000006Z",
            "stream": "decision-log", "version": 2,
        });
        let mut h = Sha256::new();
        h.update(GENESIS_HASH.as_bytes());
        h.update(canonical_json(&whole).as_bytes());
        assert_eq!(event_hash(GENESIS_HASH, &event), hex::encode(h.finalize()));
        // Any other prev_hash gives another hash.
        assert_ne!(
            event_hash(&"1".repeat(64), &event),
            event_hash(GENESIS_HASH, &event)
        );
    }

    #[test]
    fn timestamps_have_fixed_width_and_round_trip() {
        let t = DateTime::parse_from_rfc3339("2025-06-01T10:00:00.123456789+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let s = format_timestamp(t);
        assert_eq!(s, "2025-06-01T08:00:00.123456Z");
        assert_eq!(parse_timestamp(&s).unwrap(), truncate_timestamp(t));
        let whole = DateTime::parse_from_rfc3339("2025-06-01T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(whole), "2025-06-01T08:00:00.000000Z");
    }
}
