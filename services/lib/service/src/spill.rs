//! [`SpillMap`]: a map whose values live in memory up to a fixed number and
//! beyond it in a scratch file, so a model's per-dossier state costs memory
//! by the size of its working set, not by the size of the country
//! (`docs/adr/0002-bounded-model-memory.md`).
//!
//! It behaves as an ordinary map to the model that owns it: [`SpillMap::get`]
//! answers from memory or, for a value written out, reads it back. The file
//! is *swap*, not storage: it holds nothing the events do not, belongs to
//! one map of one process, is created on the first eviction and is unlinked
//! right after it is opened, so it disappears with the map — when the model
//! is rebuilt, when the process exits, and when it crashes. Nothing in it is
//! ever read by another process, backed up or audited, and it is written
//! without a journal or `fsync`.
//!
//! **Eviction.** The values kept in memory are ordered by last use; when
//! there are more than the map's capacity, the least recently used eighth
//! is dropped from memory, those changed since they were last read from the
//! file written to it in one transaction first.
//!
//! **Failure.** A model is folded synchronously and has no way to report an
//! error halfway through applying an event, and a model that silently missed
//! a value would decide wrongly. So a scratch file that cannot be created,
//! written or read (a full disk) stops the process after logging why: the
//! events are the truth, and a restart folds them again.
//!
//! **Values are written as JSON.** serde_json reads most floating-point
//! numbers back exactly but not all (without its `float_roundtrip` feature,
//! some come back one unit in the last place off), so a record with an `f64`
//! that must compare equal after a round trip writes its bits instead
//! (approval's and appraisal's scores do).
//!
//! The file goes to the directory set with [`set_dir`] (`gradeflow up` sets
//! its data directory's `spill/`), else the system's temporary directory;
//! the capacity is [`set_capacity`]'s (a service sets its
//! `GRADEFLOW_MODEL_CACHE`), else [`DEFAULT_CAPACITY`] values per map.

use std::hash::Hash;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gradeflow_proto::{CycleId, DossierId, OrgId};
use hashlink::LinkedHashMap;
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// Values kept in memory per map unless [`set_capacity`] says otherwise
/// (`GRADEFLOW_MODEL_CACHE`'s default).
pub const DEFAULT_CAPACITY: usize = gradeflow_kit::config::DEFAULT_MODEL_CACHE;

/// The SQLite page cache of one scratch file, in KiB.
const FILE_CACHE_KIB: i64 = 2_048;

static DIR: OnceLock<PathBuf> = OnceLock::new();
static CAPACITY: AtomicUsize = AtomicUsize::new(DEFAULT_CAPACITY);

/// Sets where scratch files go, for every map created from now on. The
/// first call wins; later calls are ignored.
pub fn set_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// Sets how many values each map created from now on keeps in memory (at
/// least 8); a service process sets its `GRADEFLOW_MODEL_CACHE` at start.
pub fn set_capacity(values: usize) {
    CAPACITY.store(values.max(8), Ordering::Relaxed);
}

/// The capacity a new map gets: [`set_capacity`]'s, else
/// [`DEFAULT_CAPACITY`].
pub fn capacity() -> usize {
    CAPACITY.load(Ordering::Relaxed)
}

fn dir() -> PathBuf {
    DIR.get().cloned().unwrap_or_else(std::env::temp_dir)
}

/// A key a [`SpillMap`] can write to its file: its bytes, the same for
/// equal keys and different for different ones.
pub trait SpillKey: Clone + Eq + Hash {
    /// Appends the key's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

impl SpillKey for Uuid {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

macro_rules! uuid_key {
    ($($id:ty),*) => {$(
        impl SpillKey for $id {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(self.0.as_bytes());
            }
        }
    )*};
}

uuid_key!(DossierId, OrgId, CycleId);

impl<A: SpillKey, B: SpillKey> SpillKey for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        // Both parts of every key type here have a fixed length, so the
        // concatenation is unambiguous.
        self.0.encode(out);
        self.1.encode(out);
    }
}

struct Slot<V> {
    value: Arc<V>,
    /// Changed since it was last read from or written to the file.
    dirty: bool,
}

struct Inner<K, V> {
    /// The values in memory, least recently used first.
    hot: LinkedHashMap<K, Slot<V>>,
    capacity: usize,
    /// The scratch file, once something was evicted.
    file: Option<Connection>,
    /// How many values were written to or read back from the file.
    spilled: u64,
    loaded: u64,
}

/// A map from `K` to `V` that keeps at most its capacity of values in
/// memory and the rest in a scratch file (see the module's documentation).
///
/// Reads take `&self` (the map moves what it reads to memory behind a lock
/// of its own, which the engine's lock already makes uncontended) and hand
/// out the value behind an [`Arc`]; [`SpillMap::update`] changes a value in
/// place unless a reader still holds it.
pub struct SpillMap<K, V> {
    inner: Mutex<Inner<K, V>>,
}

impl<K, V> std::fmt::Debug for SpillMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("SpillMap")
            .field("in_memory", &inner.hot.len())
            .field("capacity", &inner.capacity)
            .field("spilled", &inner.spilled)
            .field("loaded", &inner.loaded)
            .finish()
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone> Default for SpillMap<K, V> {
    fn default() -> Self {
        Self::with_capacity(capacity())
    }
}

/// Stops the process: the scratch file failed, and the model cannot go on
/// without the values in it (see the module's documentation).
fn fatal(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "service.spill.failed: {what}; stopping, a restart folds the events again");
    eprintln!("gradeflow: the model's scratch file failed ({what}: {error}); stopping");
    std::process::abort()
}

impl<K, V> SpillMap<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // Nothing panics while the lock is held but a failed scratch file,
        // which aborts; a poisoned lock still holds whole values.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone> SpillMap<K, V> {
    /// An empty map keeping at most `capacity` values (at least 8) in memory.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                hot: LinkedHashMap::new(),
                capacity: capacity.max(8),
                file: None,
                spilled: 0,
                loaded: 0,
            }),
        }
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut inner = self.lock();
        inner.fetch(key).map(|slot| Arc::clone(&slot.value))
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        let mut inner = self.lock();
        inner.fetch(key).is_some()
    }

    /// Sets the value of `key`. It does not look at the file: the value in
    /// memory shadows an evicted one, and replaces it when written out.
    pub fn insert(&mut self, key: K, value: V) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        inner.hot.insert(
            key,
            Slot {
                value: Arc::new(value),
                dirty: true,
            },
        );
        inner.evict();
    }

    /// Changes the value of `key` with `f`, if it has one; `f`'s answer.
    pub fn update<R>(&mut self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let slot = inner.fetch(key)?;
        slot.dirty = true;
        Some(f(Arc::make_mut(&mut slot.value)))
    }

    /// The value of `key`, inserting `default()` first if it has none, changed
    /// with `f`; `f`'s answer.
    pub fn upsert<R>(
        &mut self,
        key: K,
        default: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.fetch(&key).is_none() {
            inner.hot.insert(
                key.clone(),
                Slot {
                    value: Arc::new(default()),
                    dirty: true,
                },
            );
        }
        let answer = match inner.hot.get_mut(&key) {
            Some(slot) => {
                slot.dirty = true;
                f(Arc::make_mut(&mut slot.value))
            }
            // Just inserted, and nothing was evicted since.
            None => unreachable!("a value inserted a moment ago is in memory"),
        };
        inner.evict();
        answer
    }

    /// Removes the value of `key`, returning whether it had one.
    pub fn remove(&mut self, key: &K) -> bool {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let in_memory = inner.hot.remove(key).is_some();
        let in_file = match &inner.file {
            Some(conn) => {
                let mut k = Vec::with_capacity(32);
                key.encode(&mut k);
                conn.prepare_cached("DELETE FROM spill WHERE k = ?1")
                    .and_then(|mut s| s.execute(params![k]))
                    .unwrap_or_else(|e| fatal("delete", &e))
                    > 0
            }
            None => false,
        };
        in_memory || in_file
    }

    /// How many values are in memory now.
    pub fn in_memory(&self) -> usize {
        self.lock().hot.len()
    }

    /// How many values were written to the scratch file, and how many read
    /// back from it, so far.
    pub fn traffic(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.spilled, inner.loaded)
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone> Inner<K, V> {
    /// The slot of `key`, read back from the file if it was evicted, and
    /// marked most recently used.
    fn fetch(&mut self, key: &K) -> Option<&mut Slot<V>> {
        if self.hot.contains_key(key) {
            return self.hot.to_back(key);
        }
        let conn = self.file.as_ref()?;
        let mut k = Vec::with_capacity(32);
        key.encode(&mut k);
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT v FROM spill WHERE k = ?1")
            .and_then(|mut s| s.query_row(params![k], |row| row.get(0)).optional())
            .unwrap_or_else(|e| fatal("read", &e));
        let value: V = serde_json::from_slice(&bytes?).unwrap_or_else(|e| fatal("decode", &e));
        self.loaded += 1;
        self.hot.insert(
            key.clone(),
            Slot {
                value: Arc::new(value),
                dirty: false,
            },
        );
        self.evict_but(key);
        self.hot.get_mut(key)
    }

    fn evict(&mut self) {
        if self.hot.len() > self.capacity {
            self.evict_batch(None);
        }
    }

    /// Evicts as [`Inner::evict`], keeping `keep` in memory.
    fn evict_but(&mut self, keep: &K) {
        if self.hot.len() > self.capacity {
            self.evict_batch(Some(keep));
        }
    }

    /// Drops the least recently used eighth of the capacity from memory,
    /// writing the changed ones to the file in one transaction.
    fn evict_batch(&mut self, keep: Option<&K>) {
        let target = self.capacity - self.capacity / 8;
        let mut out: Vec<(K, Arc<V>)> = Vec::new();
        while self.hot.len() > target {
            let Some((key, slot)) = self.hot.pop_front() else {
                break;
            };
            if keep == Some(&key) {
                // The value being handed out stays: put it back as the most
                // recently used.
                self.hot.insert(key, slot);
                continue;
            }
            if slot.dirty {
                out.push((key, slot.value));
            }
        }
        if out.is_empty() {
            return;
        }
        let conn = match &mut self.file {
            Some(conn) => conn,
            None => self
                .file
                .insert(open_file_in(&dir()).unwrap_or_else(|e| fatal("create", &e))),
        };
        let written = (|| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("INSERT OR REPLACE INTO spill (k, v) VALUES (?1, ?2)")?;
                let mut k = Vec::with_capacity(32);
                for (key, value) in &out {
                    k.clear();
                    key.encode(&mut k);
                    let v = serde_json::to_vec(&**value)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    stmt.execute(params![k, v])?;
                }
            }
            tx.commit()
        })();
        written.unwrap_or_else(|e| fatal("write", &e));
        self.spilled += out.len() as u64;
    }
}

/// A new scratch file: opened, then unlinked, so only this connection
/// reaches it and it goes when the connection does.
fn open_file_in(dir: &std::path::Path) -> Result<Connection, rusqlite::Error> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        fatal(&format!("create {}", dir.display()), &e);
    }
    let path = dir.join(format!("gradeflow-spill-{}.db", Uuid::new_v4()));
    let conn = Connection::open(&path)?;
    let setup = conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{FILE_CACHE_KIB};
         CREATE TABLE spill (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
    ));
    // Unlinked whether or not the setup worked: the open connection keeps
    // the file, and nothing else must find it.
    let unlinked = std::fs::remove_file(&path);
    setup?;
    if let Err(e) = unlinked {
        fatal(&format!("unlink {}", path.display()), &e);
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        n: u64,
        skipped: Option<u32>,
    }

    fn rec(n: u64) -> Rec {
        Rec {
            name: format!("record {n}"),
            n,
            skipped: (n % 2 == 0).then_some(7),
        }
    }

    fn ids(n: usize) -> Vec<DossierId> {
        (0..n).map(|_| DossierId::new()).collect()
    }

    #[test]
    fn values_beyond_the_capacity_come_back_from_the_file_unchanged() {
        let mut map = SpillMap::with_capacity(64);
        let keys = ids(1_000);
        for (n, k) in keys.iter().enumerate() {
            map.insert(*k, rec(n as u64));
        }
        assert!(map.in_memory() <= 64, "{map:?}");
        let (spilled, _) = map.traffic();
        assert!(spilled >= 900, "the rest went to the file: {map:?}");
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(*map.get(k).unwrap(), rec(n as u64));
            assert!(map.in_memory() <= 64);
        }
        assert!(map.get(&DossierId::new()).is_none());
        assert!(!map.contains_key(&DossierId::new()));
    }

    #[test]
    fn a_change_to_an_evicted_value_is_kept_through_the_next_eviction() {
        let mut map = SpillMap::with_capacity(16);
        let keys = ids(200);
        for (n, k) in keys.iter().enumerate() {
            map.insert(*k, rec(n as u64));
        }
        // The first key is long evicted: changing it reads it back, and the
        // change must survive being evicted again.
        assert_eq!(
            map.update(&keys[0], |r| std::mem::replace(&mut r.n, 999)),
            Some(0)
        );
        for k in &keys[100..] {
            map.get(k).unwrap();
        }
        assert_eq!(map.get(&keys[0]).unwrap().n, 999);
        assert_eq!(map.update(&DossierId::new(), |r| r.n), None);
    }

    #[test]
    fn an_unchanged_value_read_back_is_not_written_again() {
        let mut map = SpillMap::with_capacity(16);
        let keys = ids(100);
        for (n, k) in keys.iter().enumerate() {
            map.insert(*k, rec(n as u64));
        }
        // A first pass writes out the values changed in memory as it evicts
        // them; after it, everything in memory was read back unchanged.
        for k in &keys {
            map.get(k).unwrap();
        }
        let (spilled, loaded) = map.traffic();
        assert!(spilled >= 100, "every value was written once: {map:?}");
        for k in &keys {
            map.get(k).unwrap();
        }
        let (after, reloaded) = map.traffic();
        assert!(reloaded > loaded);
        assert_eq!(after, spilled, "reading writes nothing: {map:?}");
    }

    #[test]
    fn insert_upsert_and_remove_see_evicted_values() {
        let mut map: SpillMap<(CycleId, OrgId), Vec<u32>> = SpillMap::with_capacity(8);
        let cycle = CycleId::new();
        let orgs: Vec<OrgId> = (0..50).map(|_| OrgId::new()).collect();
        for o in &orgs {
            map.upsert((cycle, *o), Vec::new, |v| v.push(1));
        }
        for o in &orgs {
            map.upsert((cycle, *o), Vec::new, |v| v.push(2));
        }
        assert_eq!(*map.get(&(cycle, orgs[0])).unwrap(), vec![1, 2]);
        map.insert((cycle, orgs[1]), vec![3]);
        assert_eq!(*map.get(&(cycle, orgs[1])).unwrap(), vec![3]);
        // Removing an evicted key removes it from the file too.
        let gone = (cycle, orgs[2]);
        for o in &orgs[10..30] {
            map.get(&(cycle, *o));
        }
        assert!(map.remove(&gone));
        assert!(!map.remove(&gone));
        assert!(map.get(&gone).is_none());
        // Other cycles are other keys.
        assert!(map.get(&(CycleId::new(), orgs[0])).is_none());
    }

    #[test]
    fn a_value_held_by_a_reader_is_not_changed_under_it() {
        let mut map = SpillMap::with_capacity(8);
        let k = DossierId::new();
        map.insert(k, rec(1));
        let held = map.get(&k).unwrap();
        map.update(&k, |r| r.n = 2);
        assert_eq!(held.n, 1);
        assert_eq!(map.get(&k).unwrap().n, 2);
    }

    /// Random inserts, updates, upserts, removes and reads on a map of 8
    /// values against a whole `HashMap`: every read agrees, a value read
    /// stays as it was read while later steps change the map, and every
    /// value agrees at the end. Seeded, so a failure repeats.
    #[test]
    fn random_operations_agree_with_a_whole_map() {
        for seed in 1..=20u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                // xorshift64*: enough spread for choosing keys and steps.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
            };
            let keys = ids(40);
            let mut map = SpillMap::with_capacity(8);
            let mut whole: std::collections::HashMap<DossierId, Rec> =
                std::collections::HashMap::new();
            // The last value read, kept across later steps, and a copy of it.
            let mut held: Option<(Arc<Rec>, Rec)> = None;
            for step in 0..4_000u64 {
                let k = keys[next(keys.len() as u64) as usize];
                match next(6) {
                    0 => {
                        map.insert(k, rec(step));
                        whole.insert(k, rec(step));
                    }
                    1 => {
                        let got = map.update(&k, |r| {
                            r.n += step;
                            r.n
                        });
                        let want = whole.get_mut(&k).map(|r| {
                            r.n += step;
                            r.n
                        });
                        assert_eq!(got, want, "seed {seed}, step {step}: update");
                    }
                    2 => {
                        let got = map.upsert(
                            k,
                            || rec(0),
                            |r| {
                                r.skipped = Some(step as u32);
                                r.n
                            },
                        );
                        let r = whole.entry(k).or_insert_with(|| rec(0));
                        r.skipped = Some(step as u32);
                        assert_eq!(got, r.n, "seed {seed}, step {step}: upsert");
                    }
                    3 if next(4) == 0 => {
                        assert_eq!(
                            map.remove(&k),
                            whole.remove(&k).is_some(),
                            "seed {seed}, step {step}: remove"
                        );
                    }
                    _ => {
                        let read = map.get(&k);
                        assert_eq!(
                            read.as_deref(),
                            whole.get(&k),
                            "seed {seed}, step {step}: get"
                        );
                        if let Some(value) = read {
                            let copy = (*value).clone();
                            held = Some((value, copy));
                        }
                    }
                }
                if let Some((value, copy)) = &held {
                    assert_eq!(**value, *copy, "seed {seed}, step {step}: held");
                }
                assert!(map.in_memory() <= 8);
            }
            for k in &keys {
                assert_eq!(map.get(k).as_deref(), whole.get(k), "seed {seed}: end");
                assert_eq!(map.contains_key(k), whole.contains_key(k));
            }
        }
    }

    #[test]
    fn the_scratch_file_is_unlinked_as_soon_as_it_is_opened() {
        let dir = std::env::temp_dir().join(format!("gf-spill-test-{}", Uuid::new_v4()));
        let conn = open_file_in(&dir).unwrap();
        conn.execute("INSERT INTO spill (k, v) VALUES (x'01', x'02')", [])
            .unwrap();
        let v: Vec<u8> = conn
            .query_row("SELECT v FROM spill WHERE k = x'01'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, vec![2]);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing left to find in {}",
            dir.display()
        );
        drop(conn);
        std::fs::remove_dir(&dir).unwrap();
    }
}
