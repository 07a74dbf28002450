//! Durable storage behind a narrow trait.
//!
//! The engine sees an ordered key-value store with tables, atomic multi-key batches and range scans; it never
//! sees a sled type, so that a PostgreSQL store (several nodes, leases) can replace sled in this module alone.
//! Durability is the store's promise: [`Store::apply`] returns only after the batch is on stable storage.
//! Group commit lives one level up, in [`committer`], and works for every backend.

pub mod committer;
pub mod keys;
pub mod memory;
pub mod sled_store;

use std::ops::Bound;

pub use committer::Committer;
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// Key-value pairs as scans return them.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The tables of the store. Each is a key prefix in one keyspace, so a whole group commit is one atomic write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    /// Entity records (state, data, definition) by entity key.
    Entities = b'e',
    /// Journal entries by entity key and sequence number.
    Journal = b'j',
    /// Pending timers by due time, so the soonest is the first key.
    Timers = b't',
    /// Pending timers by entity key and timer name, to cancel and to show an entity's timers.
    TimerIndex = b'T',
    /// Outcomes of processed inputs by entity key and input id (idempotency).
    Idempotency = b'i',
    /// Messages between entities not yet acknowledged by their receiver.
    Outbox = b'o',
    /// External calls not yet completed, by call id.
    Effects = b'x',
    /// Service metadata (clock anchor, schema version).
    Meta = b'm',
    /// Domain records that are not workflows (users, sessions, usage records), under their own key prefixes.
    Records = b'r',
    /// Secondary indexes of domain records (email to user, organization to members, ...).
    Index = b'n',
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { table: Table, key: Vec<u8>, value: Vec<u8> },
    Delete { table: Table, key: Vec<u8> },
}

/// Writes that become durable together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put { table, key: key.into(), value: value.into() });
    }
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete { table, key: key.into() });
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
    /// Approximate size in bytes, for sizing groups.
    /// The length of the largest value put (0 for none).
    pub fn largest_value(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { value, .. } => value.len(),
                Op::Delete { .. } => 0,
            })
            .max()
            .unwrap_or(0)
    }

    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len() + 1,
                Op::Delete { key, .. } => key.len() + 1,
            })
            .sum()
    }
}

/// Errors of the storage layer. The cause chain goes to logs; clients see `storage_unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored value is corrupt at {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("the store is closed")]
    Closed,
}

/// An ordered key-value store with atomic, durable batches.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Reads keys of `table` in `[start, end)` order, at most `limit`, forward or in reverse.
    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Result<KvPairs, Error>;
    /// Applies the batches in order as one atomic unit: visible to reads at once, durable only after the next
    /// [`Store::flush`] (all or nothing after a crash either way).
    fn write(&self, batches: &[Batch]) -> Result<(), Error>;
    /// Applies the batches in order as one atomic unit and makes them durable before returning.
    fn apply(&self, batches: &[Batch]) -> Result<(), Error> {
        self.write(batches)?;
        self.flush()
    }
    /// Counts keys of a table with a prefix (for metrics and tests; may be slow).
    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Result<u64, Error> {
        let mut n = 0u64;
        let mut start = Bound::Included(prefix.to_vec());
        loop {
            let page = self.scan(table, start.clone(), prefix_end(prefix), 10_000, false)?;
            n += page.len() as u64;
            match page.last() {
                Some((k, _)) if page.len() == 10_000 => start = Bound::Excluded(k.clone()),
                _ => return Ok(n),
            }
        }
    }
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), Error>;
    /// The largest value a write takes; a batch with a larger one is refused whole.
    fn max_value_bytes(&self) -> usize {
        usize::MAX
    }
    /// Flushes and releases the backend (its files and locks); every later call fails with [`Error::Closed`].
    fn close(&self) -> Result<(), Error> {
        self.flush()
    }
}

/// Reads every key with `prefix`, at most `limit`.
pub fn scan_prefix(store: &dyn Store, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, Error> {
    store.scan(table, Bound::Included(prefix.to_vec()), prefix_end(prefix), limit, false)
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

#[cfg(test)]
pub(crate) mod contract_tests {
    //! The same behaviour asked of every backend.
    use super::*;

    pub fn roundtrip(store: &dyn Store) {
        let mut b = Batch::new();
        b.put(Table::Entities, b"a/1".to_vec(), b"one".to_vec());
        b.put(Table::Entities, b"a/2".to_vec(), b"two".to_vec());
        b.put(Table::Journal, b"a/1".to_vec(), b"j".to_vec());
        store.apply(&[b]).unwrap();
        assert_eq!(store.get(Table::Entities, b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get(Table::Timers, b"a/1").unwrap(), None);
        let all = scan_prefix(store, Table::Entities, b"a/", 10).unwrap();
        assert_eq!(all.len(), 2);
        let rev = store.scan(Table::Entities, Bound::Unbounded, Bound::Unbounded, 1, true).unwrap();
        assert_eq!(rev[0].0, b"a/2".to_vec());
        assert_eq!(store.count_prefix(Table::Entities, b"a/").unwrap(), 2);
        // Later batches in one apply win over earlier ones.
        let mut d = Batch::new();
        d.delete(Table::Entities, b"a/1".to_vec());
        let mut p = Batch::new();
        p.put(Table::Entities, b"a/2".to_vec(), b"TWO".to_vec());
        store.apply(&[d, p]).unwrap();
        assert_eq!(store.get(Table::Entities, b"a/1").unwrap(), None);
        assert_eq!(store.get(Table::Entities, b"a/2").unwrap().as_deref(), Some(&b"TWO"[..]));
        // Tables do not leak into each other.
        assert_eq!(scan_prefix(store, Table::Journal, b"", 10).unwrap().len(), 1);
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"ab"), Bound::Excluded(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Bound::Excluded(vec![2]));
        assert_eq!(prefix_end(&[0xff]), Bound::Unbounded);
    }
}
