//! Durable storage behind a narrow trait.
//!
//! The engine sees an ordered key-value store with tables, atomic multi-key batches (puts, deletes and counter
//! additions, [`Op`]) and range scans; it never sees a sled type, so that a PostgreSQL store (several nodes,
//! leases) can replace sled in this module alone.
//! Durability is the store's promise: [`Store::apply`] returns only after the batch is on stable storage.
//! Group commit lives one level up, in [`committer`], and works for every backend.

pub mod committer;
pub mod dump;
pub mod keys;
pub mod memory;
pub mod postgres;
pub mod shard;
pub mod sled_store;

use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;

pub use committer::Committer;
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// What a snapshot hands every row to ([`Store::snapshot`]): its table, key and value.
pub type RowSink<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<(), Error> + 'a;

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

impl Table {
    /// Every table, in their letters' byte order (the order of an export file and of a scan over all of them).
    pub const ALL: [Table; 10] = [
        Table::TimerIndex,
        Table::Entities,
        Table::Idempotency,
        Table::Journal,
        Table::Meta,
        Table::Index,
        Table::Outbox,
        Table::Records,
        Table::Timers,
        Table::Effects,
    ];

    /// Its name on `/metrics` (`marketflow_store_records{table}`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Entities => "entities",
            Table::Journal => "journal",
            Table::Timers => "timers",
            Table::TimerIndex => "timer_index",
            Table::Idempotency => "idempotency",
            Table::Outbox => "outbox",
            Table::Effects => "effects",
            Table::Meta => "meta",
            Table::Records => "records",
            Table::Index => "index",
        }
    }
}

/// One write of a batch.
///
/// [`Op::Add`] adds `delta` to the counter at `key`: a value of 8 bytes, a big-endian `i64` ([`counter_value`]),
/// absent read as 0. The store does the addition inside the atomic write, so the counter moves with the rest of
/// the batch and the writer never reads it first. Why an op of its own instead of a read and a put by the writer:
/// a counter that every writer may change (entities by state: every transition of every entity moves one) would
/// make two commits that both read it lose one's update, once several nodes write one database. PostgreSQL will
/// do `n = n + delta` in the transaction; the single-writer stores here (sled, memory: only the committer thread
/// writes) read, add and put inside [`Store::write`] ([`resolve_adds`]), exact because nobody writes meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { table: Table, key: Vec<u8>, value: Vec<u8> },
    Delete { table: Table, key: Vec<u8> },
    Add { table: Table, key: Vec<u8>, delta: i64 },
}

/// Writes that become durable together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// The lease this commit was decided under (an entity's commit); a store shared by several nodes refuses the
    /// batch once the lease moved on ([`Error::Fenced`]). `None` for writes that belong to no entity.
    pub fence: Option<shard::Fence>,
    /// Keys this batch puts that must not exist before it (a unique e-mail, a single-use link): if one does, the
    /// batch is refused whole ([`Error::Conflict`]) and nothing of it is written. Why in the store: an in-process
    /// lock protects nothing once several nodes write one database; the database's unique key does.
    pub new_keys: Vec<(Table, Vec<u8>)>,
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
    /// Puts a key that must not exist yet (see [`Batch::new_keys`]).
    pub fn put_new(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        self.new_keys.push((table, key.clone()));
        self.put(table, key, value);
    }
    /// Adds `delta` to the counter at `key` (see [`Op::Add`]).
    pub fn add(&mut self, table: Table, key: impl Into<Vec<u8>>, delta: i64) {
        self.ops.push(Op::Add { table, key: key.into(), delta });
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Appends `other`'s writes and conditions (its fence must be this batch's or none).
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.new_keys.extend(other.new_keys);
        self.fence = self.fence.or(other.fence);
    }
    /// The length of the largest value put (0 for none; a counter's value is [`COUNTER_BYTES`]).
    pub fn largest_value(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { value, .. } => value.len(),
                Op::Delete { .. } => 0,
                Op::Add { .. } => COUNTER_BYTES,
            })
            .max()
            .unwrap_or(0)
    }

    /// Approximate size in bytes, for sizing groups.
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len() + 1,
                Op::Delete { key, .. } => key.len() + 1,
                Op::Add { key, .. } => key.len() + COUNTER_BYTES + 1,
            })
            .sum()
    }
}

/// The length of a counter's value ([`Op::Add`]).
pub const COUNTER_BYTES: usize = 8;

/// Decodes a counter's stored value ([`Op::Add`]): `None` (absent) is 0; anything but 8 bytes is corrupt.
pub fn counter_value(value: Option<&[u8]>) -> Result<i64, Error> {
    match value {
        None => Ok(0),
        Some(v) => v.try_into().map(i64::from_be_bytes).map_err(|_| Error::Corrupt {
            what: "counter".into(),
            detail: format!("a counter is {COUNTER_BYTES} bytes, this value is {}", v.len()),
        }),
    }
}

/// The final writes of every counter a group adds to, for a single-writer store to apply after the group's other
/// ops in [`Store::write`]: a [`Op::Put`] of the counter's value (or a [`Op::Delete`] where a later delete of the
/// group removed it), one per distinct key, so the result is what applying every op in order would leave.
///
/// The ops are resolved in order: a put or delete of a counter's key earlier in the group sets what a later add
/// starts from (the key is not read then), and one after an add overrides it. `read` is the store's current value
/// of a key; it is called at most once per distinct counter key, and only for keys the group did not set before
/// adding to them. Exact only while nobody else writes (the committer thread is the one writer). Fails before
/// anything is written on a stored value that is not a counter, or on an overflow.
pub fn resolve_adds(
    batches: &[Batch],
    mut read: impl FnMut(Table, &[u8]) -> Result<Option<Vec<u8>>, Error>,
) -> Result<Batch, Error> {
    use std::collections::BTreeMap;
    /// What a counter's key holds at this point of the group.
    enum Held {
        /// Nothing of the group has set it: what the store holds.
        Stored,
        /// Set by the group (`None`: deleted).
        Set(Option<Vec<u8>>),
    }
    let ops = || batches.iter().flat_map(|b| b.ops.iter());
    let mut values: BTreeMap<(Table, &[u8]), Held> = ops()
        .filter_map(|op| match op {
            Op::Add { table, key, .. } => Some(((*table, key.as_slice()), Held::Stored)),
            _ => None,
        })
        .collect();
    if values.is_empty() {
        return Ok(Batch::new());
    }
    // Most of a group's puts are in tables without counters: those need no look-up.
    let mut counted = [false; 256];
    for (table, _) in values.keys() {
        counted[*table as usize] = true;
    }
    for op in ops() {
        let (table, key, set) = match op {
            Op::Put { table, .. } | Op::Delete { table, .. } if !counted[*table as usize] => continue,
            Op::Put { table, key, value } => (table, key, Some(value)),
            Op::Delete { table, key } => (table, key, None),
            Op::Add { table, key, delta } => {
                let Some(held) = values.get_mut(&(*table, key.as_slice())) else { continue };
                let current = match std::mem::replace(held, Held::Stored) {
                    Held::Set(v) => v,
                    Held::Stored => read(*table, key)?,
                };
                let n = counter_value(current.as_deref())?.checked_add(*delta).ok_or_else(|| Error::Corrupt {
                    what: "counter".into(),
                    detail: format!("adding {delta} to {:?} overflows", String::from_utf8_lossy(key)),
                })?;
                *held = Held::Set(Some(n.to_be_bytes().to_vec()));
                continue;
            }
        };
        if let Some(held) = values.get_mut(&(*table, key.as_slice())) {
            *held = Held::Set(set.cloned());
        }
    }
    let mut out = Batch::new();
    for ((table, key), held) in values {
        match held {
            Held::Set(Some(v)) => out.put(table, key.to_vec(), v),
            Held::Set(None) => out.delete(table, key.to_vec()),
            // Every key here was added to, which sets it.
            Held::Stored => {}
        }
    }
    Ok(out)
}

/// The batches of a group that must be refused because a key of their [`Batch::new_keys`] exists already (in the
/// store, or put by an earlier batch of the same group), in group order: for single-writer stores, which check
/// before writing. `exists` reads the store.
pub fn conflicts(
    batches: &[Batch],
    mut exists: impl FnMut(Table, &[u8]) -> Result<bool, Error>,
) -> Result<Vec<usize>, Error> {
    use std::collections::HashMap;
    if batches.iter().all(|b| b.new_keys.is_empty()) {
        return Ok(vec![]);
    }
    // What the group's earlier batches (those not refused) left at a key: present or absent.
    let mut overlay: HashMap<(Table, &[u8]), bool> = HashMap::new();
    let mut refused = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let mut taken = false;
        for (table, key) in &b.new_keys {
            let present = match overlay.get(&(*table, key.as_slice())) {
                Some(p) => *p,
                None => exists(*table, key)?,
            };
            taken |= present;
        }
        if taken {
            refused.push(i);
            continue;
        }
        for op in &b.ops {
            match op {
                Op::Put { table, key, .. } | Op::Add { table, key, .. } => {
                    overlay.insert((*table, key.as_slice()), true)
                }
                Op::Delete { table, key } => overlay.insert((*table, key.as_slice()), false),
            };
        }
    }
    Ok(refused)
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
    /// Nothing of the group was written: these shards' leases moved on, so the batches fenced on them must be
    /// refused (their entities now belong to another node); the group's other batches may be written again.
    #[error("the leases of shards {shards:?} moved to another node")]
    Fenced { shards: Vec<shard::Shard> },
    /// Nothing of the group was written: these batches (indexes in the group) put a key of their `new_keys` that
    /// exists; the others may be written again.
    #[error("batches {batches:?} put keys that exist already")]
    Conflict { batches: Vec<usize> },
    /// The database cannot be reached or refused the transaction; nothing was written. Transient: the next group
    /// may succeed (unlike a failed fsync, which leaves sled's memory and disk apart).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

/// The answer of a read: ready at once (sled and memory answer on the caller's thread, in microseconds) or later
/// (a database answers over the network). Why not simply a boxed future: a ready answer costs no allocation and no
/// task switch, so the embedded store keeps its speed, while nothing has to block a thread waiting for a database.
pub enum Read<T> {
    /// The answer, taken when polled.
    Ready(Option<T>),
    /// An answer still on its way.
    Later(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> Read<T> {
    pub fn ready(value: T) -> Self {
        Read::Ready(Some(value))
    }

    pub fn later(f: impl Future<Output = T> + Send + 'static) -> Self {
        Read::Later(Box::pin(f))
    }
}

impl<T: Unpin> Future for Read<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.get_mut() {
            Read::Ready(v) => match v.take() {
                Some(v) => std::task::Poll::Ready(v),
                // Polled after it answered: a bug of the caller; it waits forever instead of answering twice.
                None => std::task::Poll::Pending,
            },
            Read::Later(f) => f.as_mut().poll(cx),
        }
    }
}

/// An ordered key-value store with atomic, durable batches.
///
/// Reads answer with a [`Read`], so a backend on the network never blocks the thread that asks (actors and HTTP
/// handlers share a few threads). Writes are blocking on purpose: the group committer calls them on its own
/// thread, the one place where waiting for the disk or the database is the job.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, table: Table, key: &[u8]) -> Read<Result<Option<Vec<u8>>, Error>>;
    /// Reads keys of `table` in `[start, end)` order, at most `limit`, forward or in reverse.
    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Read<Result<KvPairs, Error>>;
    /// Reads keys of `table` in `[start, end)` order whose rows belong to one of `shards` ([`shard::of_row`]), at
    /// most `limit`: the timers, outbox and calls of the shards a node holds. This default filters a plain scan,
    /// for the stores of one node, which hold every shard and call [`Store::scan`] instead.
    fn scan_shards(
        &self,
        table: Table,
        shards: &[shard::Shard],
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
    ) -> Read<Result<KvPairs, Error>> {
        let wanted: std::collections::HashSet<shard::Shard> = shards.iter().copied().collect();
        let read = self.scan(table, start, end, usize::MAX, false);
        Read::later(async move {
            let rows = read.await?;
            Ok(rows
                .into_iter()
                .filter(|(k, _)| shard::of_row(table, k).is_some_and(|s| wanted.contains(&s)))
                .take(limit)
                .collect())
        })
    }
    /// Counts keys of a table with a prefix (for metrics and tests; may be slow: a blocking pool's thread asks).
    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Read<Result<u64, Error>>;
    /// The bytes the store takes (files on disk, the database's size), for `/metrics`.
    fn size_bytes(&self) -> Read<Result<u64, Error>>;
    /// Brings a key into the backend's cache ahead of a write of it, on the caller's thread (sled: the committer,
    /// the one serial stage, then finds the leaf in memory); a backend without such a cache does nothing.
    fn prefetch(&self, _table: Table, _key: &[u8]) {}
    /// Applies the batches in order as one atomic unit: visible to reads at once, durable only after the next
    /// [`Store::flush`] (all or nothing after a crash either way). A counter's adds ([`Op::Add`]) are part of the
    /// unit: each lands exactly once, with the batch that holds it. Blocking: the committer's thread calls it.
    fn write(&self, batches: &[Batch]) -> Result<(), Error>;
    /// Applies the batches in order as one atomic unit and makes them durable before returning (blocking).
    fn apply(&self, batches: &[Batch]) -> Result<(), Error> {
        self.write(batches)?;
        self.flush()
    }
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), Error>;
    /// How long the committer may wait for more batches to join a group while it is under load (zero: never).
    /// Worth it where every transaction has a cost of its own, beside its rows' (a database).
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// The largest value a write takes; a batch with a larger one is refused whole.
    fn max_value_bytes(&self) -> usize {
        usize::MAX
    }
    /// Flushes and releases the backend (its files and locks); every later call fails with [`Error::Closed`].
    fn close(&self) -> Result<(), Error> {
        self.flush()
    }
    /// Calls `f` with every row of every table ([`dump::tables`] order, keys in order) as of one instant, however the
    /// store is written meanwhile (blocking: for `marketflow export`). This default pages through scans, consistent
    /// only while nothing writes; the stores override it.
    fn snapshot(&self, f: &mut RowSink<'_>) -> Result<(), Error> {
        for table in dump::tables() {
            let mut start = Bound::Unbounded;
            loop {
                let page = wait(self.scan(table, start, Bound::Unbounded, 10_000, false))?;
                for (k, v) in &page {
                    f(table, k, v)?;
                }
                match page.last() {
                    Some((k, _)) if page.len() == 10_000 => start = Bound::Excluded(k.clone()),
                    _ => break,
                }
            }
        }
        Ok(())
    }
    /// Whether a failed write must stop every later one (sled: its memory may hold writes the disk does not, the
    /// fsync-gate problem) or only fails its own group (a database rolls the transaction back whole).
    fn fail_stop(&self) -> bool {
        true
    }
}

/// Waits for a future on this thread, parking it until the future is woken: for blocking contexts (the committer's
/// thread, `marketflow export`/`import`, tests). It needs no runtime of its own (a database store drives its reads
/// on its own threads), so it also works where a runtime is running; never call it on a thread that runs actors or
/// serves requests, which it would hold up.
pub fn wait<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    // Outside tokio's cooperative budget: inside a runtime's task (a test), an exhausted budget defers the wake-up
    // until the task yields to its scheduler, which a parked thread never does.
    let mut f = std::pin::pin!(tokio::task::unconstrained(f));
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Reads every key with `prefix`, at most `limit`.
pub async fn scan_prefix(store: &dyn Store, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, Error> {
    store.scan(table, Bound::Included(prefix.to_vec()), prefix_end(prefix), limit, false).await
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

    pub use super::wait as block;

    pub fn roundtrip(store: &dyn Store) {
        let mut b = Batch::new();
        b.put(Table::Entities, b"a/1".to_vec(), b"one".to_vec());
        b.put(Table::Entities, b"a/2".to_vec(), b"two".to_vec());
        b.put(Table::Journal, b"a/1".to_vec(), b"j".to_vec());
        store.apply(&[b]).unwrap();
        assert_eq!(block(store.get(Table::Entities, b"a/1")).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(block(store.get(Table::Timers, b"a/1")).unwrap(), None);
        let all = block(scan_prefix(store, Table::Entities, b"a/", 10)).unwrap();
        assert_eq!(all.len(), 2);
        let rev = block(store.scan(Table::Entities, Bound::Unbounded, Bound::Unbounded, 1, true)).unwrap();
        assert_eq!(rev[0].0, b"a/2".to_vec());
        assert_eq!(block(store.count_prefix(Table::Entities, b"a/")).unwrap(), 2);
        // Later batches in one apply win over earlier ones.
        let mut d = Batch::new();
        d.delete(Table::Entities, b"a/1".to_vec());
        let mut p = Batch::new();
        p.put(Table::Entities, b"a/2".to_vec(), b"TWO".to_vec());
        store.apply(&[d, p]).unwrap();
        assert_eq!(block(store.get(Table::Entities, b"a/1")).unwrap(), None);
        assert_eq!(block(store.get(Table::Entities, b"a/2")).unwrap().as_deref(), Some(&b"TWO"[..]));
        // Tables do not leak into each other.
        assert_eq!(block(scan_prefix(store, Table::Journal, b"", 10)).unwrap().len(), 1);
    }

    fn counter(store: &dyn Store, key: &[u8]) -> i64 {
        counter_value(block(store.get(Table::Meta, key)).unwrap().as_deref()).unwrap()
    }

    /// Counters ([`Op::Add`]): absent is 0, adds land with their batch, in order with the group's puts and
    /// deletes of the same key, and a group that cannot be resolved writes nothing.
    pub fn counters(store: &dyn Store) {
        // Several adds in one batch, to a new counter and beside other writes.
        let mut b = Batch::new();
        b.add(Table::Meta, b"c/a".to_vec(), 1);
        b.put(Table::Entities, b"x".to_vec(), b"x".to_vec());
        b.add(Table::Meta, b"c/a".to_vec(), 2);
        b.add(Table::Meta, b"c/b".to_vec(), -1);
        store.apply(&[b]).unwrap();
        assert_eq!(counter(store, b"c/a"), 3);
        assert_eq!(counter(store, b"c/b"), -1);
        assert_eq!(counter(store, b"c/none"), 0);
        assert_eq!(block(store.get(Table::Meta, b"c/a")).unwrap(), Some(3i64.to_be_bytes().to_vec()));
        assert_eq!(block(store.get(Table::Entities, b"x")).unwrap().as_deref(), Some(&b"x"[..]));
        // Across the batches of one group, starting from the stored value.
        let batches: Vec<Batch> = [5, -2, 10]
            .into_iter()
            .map(|d| {
                let mut b = Batch::new();
                b.add(Table::Meta, b"c/a".to_vec(), d);
                b.add(Table::Meta, b"c/b".to_vec(), 1);
                b
            })
            .collect();
        store.apply(&batches).unwrap();
        assert_eq!(counter(store, b"c/a"), 16);
        assert_eq!(counter(store, b"c/b"), 2);
        // A put earlier in the group is what a later add starts from; a delete resets to absent (0).
        let mut p = Batch::new();
        p.put(Table::Meta, b"c/a".to_vec(), 100i64.to_be_bytes().to_vec());
        p.delete(Table::Meta, b"c/b".to_vec());
        let mut a = Batch::new();
        a.add(Table::Meta, b"c/a".to_vec(), 1);
        a.add(Table::Meta, b"c/b".to_vec(), 7);
        store.apply(&[p, a]).unwrap();
        assert_eq!(counter(store, b"c/a"), 101);
        assert_eq!(counter(store, b"c/b"), 7);
        // A put or delete after an add in the group wins over it.
        let mut a = Batch::new();
        a.add(Table::Meta, b"c/a".to_vec(), 1);
        a.add(Table::Meta, b"c/b".to_vec(), 1);
        let mut p = Batch::new();
        p.put(Table::Meta, b"c/a".to_vec(), 42i64.to_be_bytes().to_vec());
        p.delete(Table::Meta, b"c/b".to_vec());
        store.apply(&[a, p]).unwrap();
        assert_eq!(counter(store, b"c/a"), 42);
        assert_eq!(block(store.get(Table::Meta, b"c/b")).unwrap(), None);
        // Adding to a value that is not a counter refuses the whole group before anything is written.
        let mut bad = Batch::new();
        bad.put(Table::Meta, b"c/text".to_vec(), b"text".to_vec());
        store.apply(&[bad]).unwrap();
        let mut ok = Batch::new();
        ok.add(Table::Meta, b"c/a".to_vec(), 1);
        ok.put(Table::Meta, b"c/side".to_vec(), b"x".to_vec());
        let mut bad = Batch::new();
        bad.add(Table::Meta, b"c/text".to_vec(), 1);
        assert!(matches!(store.apply(&[ok, bad]), Err(Error::Corrupt { .. })));
        assert_eq!(counter(store, b"c/a"), 42);
        assert_eq!(block(store.get(Table::Meta, b"c/side")).unwrap(), None);
        // Counters are listed by a prefix scan like any other key.
        let listed = block(scan_prefix(store, Table::Meta, b"c/", 10)).unwrap();
        assert_eq!(listed.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [&b"c/a"[..], b"c/text"]);
    }

    /// Keys that must be new ([`Batch::new_keys`]): a batch that puts an existing one, or one an earlier batch of
    /// the group put, is refused whole with its index, and nothing of the group is written.
    pub fn new_keys(store: &dyn Store) {
        let mut first = Batch::new();
        first.put_new(Table::Records, b"email/a".to_vec(), b"u1".to_vec());
        first.put(Table::Records, b"user/u1".to_vec(), b"{}".to_vec());
        store.apply(&[first]).unwrap();
        let mut again = Batch::new();
        again.put_new(Table::Records, b"email/a".to_vec(), b"u2".to_vec());
        again.put(Table::Records, b"user/u2".to_vec(), b"{}".to_vec());
        let mut other = Batch::new();
        other.put_new(Table::Records, b"email/b".to_vec(), b"u3".to_vec());
        let mut twice = Batch::new();
        twice.put_new(Table::Records, b"email/b".to_vec(), b"u4".to_vec());
        match store.apply(&[again.clone(), other.clone(), twice]) {
            Err(Error::Conflict { batches }) => assert_eq!(batches, [0, 2]),
            r => panic!("expected a conflict, got {r:?}"),
        }
        assert_eq!(block(store.get(Table::Records, b"user/u2")).unwrap(), None, "nothing of the group");
        assert_eq!(block(store.get(Table::Records, b"email/b")).unwrap(), None);
        store.apply(&[other]).unwrap();
        assert_eq!(block(store.get(Table::Records, b"email/a")).unwrap().as_deref(), Some(&b"u1"[..]));
        assert_eq!(block(store.get(Table::Records, b"email/b")).unwrap().as_deref(), Some(&b"u3"[..]));
        // Deleted earlier in the group: new again.
        let mut del = Batch::new();
        del.delete(Table::Records, b"email/a".to_vec());
        store.apply(&[del, again]).unwrap();
        assert_eq!(block(store.get(Table::Records, b"email/a")).unwrap().as_deref(), Some(&b"u2"[..]));
    }

    #[test]
    fn adds_resolve_in_order_and_read_each_counter_once() {
        let mut reads = Vec::new();
        let mut a = Batch::new();
        a.add(Table::Meta, b"k".to_vec(), 2);
        a.put(Table::Meta, b"set".to_vec(), 5i64.to_be_bytes().to_vec());
        let mut b = Batch::new();
        b.add(Table::Meta, b"k".to_vec(), 3);
        b.add(Table::Meta, b"set".to_vec(), 1);
        b.add(Table::Journal, b"k".to_vec(), -1);
        let out = resolve_adds(&[a, b], |t, k| {
            reads.push((t, k.to_vec()));
            Ok(Some(10i64.to_be_bytes().to_vec()))
        })
        .unwrap();
        assert_eq!(reads, [(Table::Meta, b"k".to_vec()), (Table::Journal, b"k".to_vec())], "`set` was set first");
        let mut want = Batch::new();
        want.put(Table::Journal, b"k".to_vec(), 9i64.to_be_bytes().to_vec());
        want.put(Table::Meta, b"k".to_vec(), 15i64.to_be_bytes().to_vec());
        want.put(Table::Meta, b"set".to_vec(), 6i64.to_be_bytes().to_vec());
        assert_eq!(out, want);
        assert!(resolve_adds(&[Batch::new()], |_, _| unreachable!()).unwrap().is_empty());
        let mut max = Batch::new();
        max.add(Table::Meta, b"k".to_vec(), i64::MAX);
        assert!(resolve_adds(&[max], |_, _| Ok(Some(1i64.to_be_bytes().to_vec()))).is_err(), "overflow");
        assert_eq!(counter_value(None).unwrap(), 0);
        assert_eq!(counter_value(Some(&(-3i64).to_be_bytes())).unwrap(), -3);
        assert!(counter_value(Some(b"abc")).is_err());
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"ab"), Bound::Excluded(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Bound::Excluded(vec![2]));
        assert_eq!(prefix_end(&[0xff]), Bound::Unbounded);
    }
}

#[cfg(test)]
mod table_tests {
    use super::Table;

    #[test]
    fn all_tables_once_in_their_letters_order() {
        let letters: Vec<u8> = Table::ALL.iter().map(|t| *t as u8).collect();
        let mut sorted = letters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(letters, sorted);
    }
}
