//! Late registrations: a log of stored events rewritten as the store would
//! hold it had some dossiers' first `SubjectRegistered` been recorded only
//! after later events of the same dossier (a registration nak'ed and
//! redelivered after later messages), with what a model folded from it must
//! hold. Shared by the services' tests of parking events that come before
//! their dossier's registration.

use std::collections::{BTreeMap, HashMap, HashSet};

use gradeflow_eventstore::StoredEvent;
use gradeflow_proto::events::{Event, SubjectRegistered};
use gradeflow_proto::DossierId;

/// The dossier `event` is about: the one its payload's `dossier` field
/// names, as in every event of a dossier's life and its registration.
pub fn about(event: &StoredEvent) -> Option<DossierId> {
    event
        .payload
        .get("dossier")
        .and_then(|d| serde_json::from_value(d.clone()).ok())
}

/// A store in which some registrations came late, and what a model folded
/// from it must hold.
#[derive(Debug, Clone)]
pub struct Late {
    /// The events in the order of that store, renumbered in it.
    pub store: Vec<StoredEvent>,
    /// The same events (the same positions) with each that came before its
    /// dossier's registration moved to right after it: what parking must
    /// amount to.
    pub expected: Vec<StoredEvent>,
    /// How many events of each kind came before their registration.
    pub early: BTreeMap<String, usize>,
}

/// `log` as the store would hold it had the first registration of each
/// dossier of `late` been recorded only after the next `n` events of that
/// dossier (`late`'s value; fewer should the dossier's events or its next
/// registration come first), as when a registration is nak'ed and
/// redelivered after later messages.
///
/// An event is about the dossier its payload's `dossier` names
/// ([`about`]); events about none keep their place.
///
/// # Panics
///
/// If the expected order leaves an early event without its registration.
pub fn registered_late(log: &[StoredEvent], late: &HashMap<DossierId, usize>) -> Late {
    let mut store = Vec::new();
    // Registrations held back, with the events still to come before them.
    let mut held: HashMap<DossierId, (StoredEvent, usize)> = HashMap::new();
    let mut seen = HashSet::new();
    let mut early = HashSet::new();
    for event in log {
        let Some(dossier) = about(event) else {
            store.push(event.clone());
            continue;
        };
        let registration = event.kind == SubjectRegistered::KIND;
        if registration && late.contains_key(&dossier) && seen.insert(dossier) {
            held.insert(dossier, (event.clone(), late[&dossier]));
            continue;
        }
        if registration {
            if let Some((first, _)) = held.remove(&dossier) {
                store.push(first);
            }
        } else if let Some((_, left)) = held.get_mut(&dossier) {
            early.insert(event.event_id);
            *left -= 1;
            if *left == 0 {
                store.push(event.clone());
                if let Some((first, _)) = held.remove(&dossier) {
                    store.push(first);
                }
                continue;
            }
        }
        store.push(event.clone());
    }
    let mut last: Vec<StoredEvent> = held.into_values().map(|(r, _)| r).collect();
    last.sort_by_key(|r| r.position);
    store.extend(last);
    for (i, event) in store.iter_mut().enumerate() {
        event.position = i as i64 + 1;
    }

    let mut expected = Vec::new();
    let mut parked: HashMap<DossierId, Vec<StoredEvent>> = HashMap::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for event in &store {
        if early.contains(&event.event_id) {
            *counts.entry(event.kind.clone()).or_default() += 1;
            parked
                .entry(about(event).expect("an early event is about a dossier"))
                .or_default()
                .push(event.clone());
            continue;
        }
        expected.push(event.clone());
        if event.kind == SubjectRegistered::KIND {
            let dossier = about(event).expect("a registration is about a dossier");
            expected.extend(parked.remove(&dossier).unwrap_or_default());
        }
    }
    assert!(
        parked.is_empty(),
        "early events left unregistered: {parked:?}"
    );
    Late {
        store,
        expected,
        early: counts,
    }
}
