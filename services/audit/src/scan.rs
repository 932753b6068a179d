//! Reading stores the way an auditor must: in pages, in position order,
//! optionally only up to a time (`read_until`), and *past* a row that no
//! longer reads back (a payload edited into something that is not JSON): the
//! row is set aside with the reason, so one damaged event does not hide
//! every event after it. `Store::verify` names the damage; the folds go on.
//!
//! [`Merged`] interleaves several stores by `recorded_at` (ties: the order
//! the stores were given, then position), which is how `replay` and
//! `explain` see one history across the services.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use gradeflow_eventstore::{Store, StoreError, StoredEvent};

use crate::sources::AuditError;

/// Events per page.
const PAGE: usize = 1_000;

/// Whether `event` is `service`'s own, not a copy it observed.
pub(crate) fn is_own(service: &str, event: &StoredEvent) -> bool {
    event.metadata.service == service
}

/// One store read forward in position order.
pub(crate) struct Reader<'a> {
    service: &'a str,
    store: &'a Store,
    after: i64,
    until: Option<DateTime<Utc>>,
    buf: VecDeque<StoredEvent>,
    done: bool,
    /// Rows that could not be read back, skipped: position and why.
    pub unreadable: Vec<(i64, String)>,
}

impl<'a> Reader<'a> {
    /// Reads `store` from the start, up to `until` (inclusive) when given.
    pub(crate) fn new(service: &'a str, store: &'a Store, until: Option<DateTime<Utc>>) -> Self {
        Self {
            service,
            store,
            after: 0,
            until,
            buf: VecDeque::new(),
            done: false,
            unreadable: Vec::new(),
        }
    }

    async fn page(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        match self.until {
            Some(at) => self.store.read_until(at, self.after, limit).await,
            None => self.store.read_from(self.after, limit).await,
        }
    }

    /// The next event, or `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<StoredEvent>, AuditError> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            match self.page(PAGE).await {
                Ok(page) => match page.last() {
                    None => self.done = true,
                    Some(last) => {
                        self.after = last.position;
                        self.buf.extend(page);
                    }
                },
                // Somewhere in this page is a row that does not read back:
                // go one row at a time up to it, and step over it.
                Err(StoreError::Corrupt { position, .. }) if position > 0 => {
                    match self.page(1).await {
                        Ok(one) => match one.into_iter().next() {
                            None => self.done = true,
                            Some(e) => {
                                self.after = e.position;
                                self.buf.push_back(e);
                            }
                        },
                        Err(StoreError::Corrupt { position, problem }) if position > 0 => {
                            self.unreadable.push((position, problem));
                            self.after = position;
                        }
                        Err(e) => return Err(AuditError::read(self.service)(e)),
                    }
                }
                Err(e) => return Err(AuditError::read(self.service)(e)),
            }
        }
    }
}

/// Several stores' events interleaved by `recorded_at`.
pub(crate) struct Merged<'a> {
    readers: Vec<Reader<'a>>,
    heads: Vec<Option<StoredEvent>>,
    primed: bool,
}

impl<'a> Merged<'a> {
    /// Merges `stores` (service, store), each read up to `until`.
    pub(crate) fn new(stores: &[(&'a str, &'a Store)], until: Option<DateTime<Utc>>) -> Self {
        Self {
            readers: stores
                .iter()
                .map(|(service, store)| Reader::new(service, store, until))
                .collect(),
            heads: Vec::new(),
            primed: false,
        }
    }

    /// The service of reader `i`.
    pub(crate) fn service(&self, i: usize) -> &'a str {
        self.readers.get(i).map_or("", |r| r.service)
    }

    /// The next event of all stores, with the index of its store: the
    /// earliest `recorded_at`; ties go to the earlier store, then position.
    pub(crate) async fn next(&mut self) -> Result<Option<(usize, StoredEvent)>, AuditError> {
        if !self.primed {
            for r in &mut self.readers {
                self.heads.push(r.next().await?);
            }
            self.primed = true;
        }
        let pick = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|e| (i, e)))
            .min_by(|(i, a), (j, b)| {
                (a.recorded_at, *i, a.position).cmp(&(b.recorded_at, *j, b.position))
            })
            .map(|(i, _)| i);
        let Some(i) = pick else { return Ok(None) };
        let next = match self.readers.get_mut(i) {
            Some(r) => r.next().await?,
            None => None,
        };
        let event = self
            .heads
            .get_mut(i)
            .and_then(|h| std::mem::replace(h, next));
        Ok(event.map(|e| (i, e)))
    }

    /// Rows skipped as unreadable, per service.
    pub(crate) fn unreadable(&self) -> Vec<(&'a str, i64, String)> {
        self.readers
            .iter()
            .flat_map(|r| {
                r.unreadable
                    .iter()
                    .map(move |(p, why)| (r.service, *p, why.clone()))
            })
            .collect()
    }
}
