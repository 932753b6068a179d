//! [`StreamVersions`]: the version of every stream a model has folded, kept
//! compactly. A service's store holds about one stream per dossier, so at a
//! national scale this map has millions of entries; most stream names are
//! `<kind>-<uuid>` (`dossier-…`, `decision-…`), and such a name is kept as
//! its kind's index and the UUID's 16 bytes instead of a 40-odd byte string
//! of its own, in a [`SpillMap`]: the streams in use stay in memory, the rest
//! go to the map's scratch file. Exact, not hashed: a name is only split when
//! formatting the parts again gives back the very same name, so two names
//! never share an entry.

use std::collections::HashMap;

use uuid::Uuid;

use crate::spill::{SpillKey, SpillMap};

/// A `<kind>-<uuid>` stream name, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UuidKey {
    /// The UUID's bits, high then low (two `u64`s, not a `u128`, so the key
    /// is 8-byte aligned and an entry takes 32 bytes, not 48).
    hi: u64,
    lo: u64,
    /// Index of `<kind>` in [`StreamVersions::kinds`].
    kind: u16,
}

impl SpillKey for UuidKey {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hi.to_be_bytes());
        out.extend_from_slice(&self.lo.to_be_bytes());
        out.extend_from_slice(&self.kind.to_be_bytes());
    }
}

/// Stream name → version, for the streams a model has folded.
#[derive(Debug, Default)]
pub(crate) struct StreamVersions {
    /// Streams named `<kind>-<uuid>` (the UUID hyphenated and lower case).
    by_uuid: SpillMap<UuidKey, u64>,
    /// Every other stream, by name.
    named: HashMap<String, u64>,
    /// The distinct `<kind>`s seen, in order of first sight.
    kinds: Vec<String>,
}

/// The length of a hyphenated UUID.
const UUID_LEN: usize = 36;

impl StreamVersions {
    /// The version of `stream`, if it was folded.
    pub(crate) fn get(&self, stream: &str) -> Option<u64> {
        match self.split(stream) {
            Some((kind, id)) => {
                let kind = self.kinds.iter().position(|k| k == kind)?;
                self.by_uuid.get(&key(kind, id)?).map(|v| *v)
            }
            None => self.named.get(stream).copied(),
        }
    }

    /// Records that `stream` is at `version`.
    pub(crate) fn insert(&mut self, stream: &str, version: u64) {
        match self.split(stream) {
            Some((kind, id)) => {
                let index = match self.kinds.iter().position(|k| k == kind) {
                    Some(i) => Some(i),
                    None if self.kinds.len() < usize::from(u16::MAX) => {
                        self.kinds.push(kind.to_owned());
                        Some(self.kinds.len() - 1)
                    }
                    // More kinds than a u16 counts: keep the name whole.
                    None => None,
                };
                match index.and_then(|i| key(i, id)) {
                    Some(k) => {
                        self.by_uuid.insert(k, version);
                    }
                    None => {
                        self.named.insert(stream.to_owned(), version);
                    }
                }
            }
            None => {
                self.named.insert(stream.to_owned(), version);
            }
        }
    }

    /// Versions kept in memory for at most `capacity` `<kind>-<uuid>`
    /// streams, the rest in the scratch file.
    #[cfg(test)]
    fn with_capacity(capacity: usize) -> Self {
        Self {
            by_uuid: SpillMap::with_capacity(capacity),
            named: HashMap::new(),
            kinds: Vec::new(),
        }
    }

    /// `<kind>` and the UUID of a stream named `<kind>-<uuid>` whose UUID
    /// is written exactly as it formats (hyphenated, lower case), so that
    /// the parts give back the name; `None` for any other name.
    fn split<'s>(&self, stream: &'s str) -> Option<(&'s str, Uuid)> {
        let cut = stream.len().checked_sub(UUID_LEN + 1)?;
        let (kind, rest) = (stream.get(..cut)?, stream.get(cut..)?);
        let text = rest.strip_prefix('-')?;
        let id = Uuid::try_parse(text).ok()?;
        let mut buf = Uuid::encode_buffer();
        (id.hyphenated().encode_lower(&mut buf) == text).then_some((kind, id))
    }
}

fn key(kind: usize, id: Uuid) -> Option<UuidKey> {
    let (hi, lo) = id.as_u64_pair();
    Some(UuidKey {
        hi,
        lo,
        kind: u16::try_from(kind).ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_name_keeps_its_own_version() {
        let id = Uuid::now_v7();
        let names = [
            format!("dossier-{id}"),
            format!("decision-{id}"),
            // Upper case and simple forms are other names, kept whole.
            format!("dossier-{}", id.hyphenated().to_string().to_uppercase()),
            format!("dossier-{}", id.simple()),
            format!("-{id}"),
            id.to_string(),
            "decision-log".to_owned(),
            "registry".to_owned(),
            String::new(),
            // Multi-byte text where a split would fall mid-character.
            format!("ngành-{}", "é".repeat(18)),
        ];
        let mut versions = StreamVersions::default();
        for (v, name) in names.iter().enumerate() {
            assert_eq!(versions.get(name), None, "{name}");
            versions.insert(name, v as u64 + 1);
        }
        for (v, name) in names.iter().enumerate() {
            assert_eq!(versions.get(name), Some(v as u64 + 1), "{name}");
        }
        // The split names went to the compact map, the others by name.
        assert_eq!(versions.by_uuid.in_memory(), 3);
        assert_eq!(versions.named.len(), names.len() - 3);
        assert_eq!(versions.kinds, ["dossier", "decision", ""]);

        versions.insert(&names[0], 42);
        assert_eq!(versions.get(&names[0]), Some(42));
        assert_eq!(versions.get(&names[1]), Some(2));
        assert_eq!(versions.get(&format!("dossier-{}", Uuid::now_v7())), None);
        assert_eq!(versions.get(&format!("cycle-{id}")), None);
    }

    #[test]
    fn versions_of_streams_out_of_memory_come_back_from_the_scratch_file() {
        let mut versions = StreamVersions::with_capacity(16);
        let streams: Vec<String> = (0..500)
            .map(|_| format!("dossier-{}", Uuid::now_v7()))
            .collect();
        for (v, s) in streams.iter().enumerate() {
            versions.insert(s, v as u64 + 1);
        }
        assert!(versions.by_uuid.in_memory() <= 16);
        // A stream's later version replaces the one written out.
        versions.insert(&streams[0], 7_000);
        for s in &streams[100..200] {
            versions.get(s);
        }
        assert_eq!(versions.get(&streams[0]), Some(7_000));
        for (v, s) in streams.iter().enumerate().skip(1) {
            assert_eq!(versions.get(s), Some(v as u64 + 1), "{s}");
        }
        assert_eq!(versions.get(&format!("dossier-{}", Uuid::now_v7())), None);
    }
}
