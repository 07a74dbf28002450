//! The embedded default store: sled 0.34, made durable with a real fsync.
//!
//! sled's own `flush` ends in `sync_file_range`, which neither flushes the drive's cache nor the file's metadata
//! (sled issue #1452), so an acknowledged commit could vanish on power loss. After every flush we `fdatasync` the
//! log file through a descriptor of our own. All tables live in one sled tree under a one-byte prefix; a group
//! commit is made atomic by a redo record of its own ([`Redo`]), not by sled's `apply_batch`.
//!
//! sled writes values larger than its blob threshold (a quarter of a segment, 128 KiB by default) to separate
//! files that it does not fsync; [`MAX_VALUE_BYTES`] keeps every value far below that.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::{keys, Batch, Error, Op, Read, RowSink, Store, Table};

/// The largest value the store accepts; well under sled's blob threshold, so every value is in the fsynced log.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// sled's page cache when none is configured, in MiB (`MARKETFLOW_SLED_CACHE_MB`): an eighth of the memory this
/// process may use (the machine's, or its cgroup's limit if lower), at least [`MIN_DEFAULT_CACHE_MB`] and at most
/// [`MAX_DEFAULT_CACHE_MB`].
///
/// Why it scales with memory: every transition writes leaves that are not in the cache once the store outgrows
/// it, so the firing rate with 1,000,000 entities went from 16,000/s with 256 MiB to 22,000-25,000/s with 2 GiB
/// (BENCHMARKS.md, round 4). Why it is bounded: sled keeps every page it read or wrote until the cache is full,
/// so an idle service holds what its working set touched, up to this much; with 100,000 entities touched the
/// memory bench settles at the same ~350 MiB with 256 MiB or 1 GiB of cache.
pub fn default_cache_mb() -> u64 {
    let limit = [
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| mem_total_bytes(&s)),
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| cgroup_limit_bytes(&s)),
        std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes")
            .ok()
            .and_then(|s| cgroup_limit_bytes(&s)),
    ]
    .into_iter()
    .flatten()
    .min();
    match limit {
        Some(bytes) => (bytes / 8 / (1 << 20)).clamp(MIN_DEFAULT_CACHE_MB, MAX_DEFAULT_CACHE_MB),
        None => MIN_DEFAULT_CACHE_MB,
    }
}

/// The smallest default cache, and the default where the memory cannot be read.
pub const MIN_DEFAULT_CACHE_MB: u64 = 256;
/// The largest default cache; more is a setting.
pub const MAX_DEFAULT_CACHE_MB: u64 = 4096;

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup memory limit (`max`, or v1's huge "unlimited" number, is no limit).
fn cgroup_limit_bytes(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|b| *b < 1 << 60)
}

/// sled, plus the file descriptor we fsync.
pub struct SledStore {
    /// The database and the single tree every table lives in; `None` once closed, which releases sled's lock
    /// on the directory even while other parts of the process still hold the store.
    inner: RwLock<Option<Open>>,
    /// The redo log that makes a group's single-key writes atomic (see [`Redo`]).
    redo: Redo,
    /// sled's log file, opened by us to fsync it; the lock serialises syncs (they are whole-file anyway).
    log: Mutex<File>,
    /// The data directory, for error messages.
    dir: PathBuf,
}

fn backend(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::Io(io),
        other => Error::Backend(other.to_string()),
    }
}

fn full_key(table: Table, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(table as u8);
    k.extend_from_slice(key);
    k
}

fn full_bound(table: Table, b: Bound<Vec<u8>>, is_end: bool) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(full_key(table, &k)),
        Bound::Excluded(k) => Bound::Excluded(full_key(table, &k)),
        Bound::Unbounded if is_end => Bound::Excluded(vec![table as u8 + 1]),
        Bound::Unbounded => Bound::Included(vec![table as u8]),
    }
}

fn open_sled(dir: &Path, cache_mb: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(cache_mb.saturating_mul(1 << 20))
        // Durability comes from our own fsync after each group commit, not from a background timer.
        .flush_every_ms(None)
        .open()
}

/// Removes the snapshot files sled did not finish writing; returns how many there were.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it, renames it to `snap.<lsn>` and only then
/// removes the older one; but on opening it reads whichever `snap.*` file sorts last, an unfinished `.generating`
/// one included (`Config::get_snapshot_files`). A process killed while sled writes a snapshot (it writes one while
/// it opens, too) leaves a store that every later open refuses as corrupt: the checksum does not match. The
/// unfinished file is never needed, the previous snapshot is still there: without it sled recovers as if the
/// process had died just before starting the snapshot. Called only after sled refused to open; it held the
/// directory's lock then, so no other process is writing a snapshot here.
fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing a snapshot that sled did not finish writing");
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What an open store holds; dropped as a whole by [`Store::close`] (every handle to sled must go for its lock to).
struct Open {
    db: sled::Db,
    /// Every table, under its one-byte prefix.
    tree: sled::Tree,
    /// The redo records of [`Redo`].
    redo: sled::Tree,
}

/// Chunks of a group's redo record are at most this long (sled's values stay under its blob threshold).
const REDO_CHUNK: usize = 60 * 1024;

/// Atomic groups without `apply_batch`.
///
/// sled's `apply_batch` is atomic, but it takes a global lock (`concurrency_control::write`) that stops every read
/// in the process while the batch is applied, and once any batch was applied every read takes that lock's read
/// side: the committer writing a group kept every actor from loading a record for 70 % of the time
/// (BENCHMARKS.md, round 4). Single-key writes take no lock, so a group is written as one: first its redo record
/// (every op of the group, encoded, in chunks that are single-key writes), then its ops one key at a time. sled
/// recovers a prefix of its log (it stops at the first write missing from the tail), so after a crash either
/// the last chunk of the group's redo record is missing, and then so is every op after it (the group is absent),
/// or the whole record is there, and replaying it on open completes the ops that are missing (each op sets a
/// key's final value or removes it, so replaying what already landed changes nothing). The redo record is removed
/// right after the fsync that made its ops durable, before the next group's is written, so at most one group's
/// record is ever on disk. One writer at a time (`writing`); the committer is the only one.
/// Its records are in [`Open::redo`], by group number and chunk (`group u64 | chunk u32 | chunks u32`, big-endian).
struct Redo {
    /// Keys of the redo records written since the last fsync began, removed after it; the lock serialises writers.
    writing: Mutex<Vec<Vec<u8>>>,
    /// The next group's number.
    next: std::sync::atomic::AtomicU64,
}

/// Encodes the ops of a group as `tag | key length | key | [value length | value]` with full (table-prefixed) keys.
/// Counter additions are not encoded: a group's record holds their results instead, as puts (see
/// [`SledStore::write`]), so that replaying it sets each counter's value again rather than adding twice.
fn encode_ops(batches: &[Batch]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.bytes() + 16 * b.ops.len()).sum());
    for op in batches.iter().flat_map(|b| b.ops.iter()) {
        let (tag, table, key, value) = match op {
            Op::Put { table, key, value } => (0u8, table, key, Some(value)),
            Op::Delete { table, key } => (1u8, table, key, None),
            Op::Add { .. } => continue,
        };
        out.push(tag);
        out.extend_from_slice(&(key.len() as u32 + 1).to_be_bytes());
        out.push(*table as u8);
        out.extend_from_slice(key);
        if let Some(v) = value {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    out
}

/// The ops of [`encode_ops`]: full keys and `Some(value)` to put, `None` to remove; `None` if it does not decode.
#[allow(clippy::type_complexity)]
fn decode_ops(mut b: &[u8]) -> Option<Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        take(b, 4).and_then(|x| x.try_into().ok()).map(|x| u32::from_be_bytes(x) as usize)
    }
    let mut ops = Vec::new();
    while let Some(tag) = take(&mut b, 1) {
        let key_len = len(&mut b)?;
        let key = take(&mut b, key_len)?.to_vec();
        let value = match tag[0] {
            0 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            1 => None,
            _ => return None,
        };
        ops.push((key, value));
    }
    Some(ops)
}

fn redo_key(group: u64, chunk: u32, chunks: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k.extend_from_slice(&chunks.to_be_bytes());
    k
}

/// Sets or removes one key of the main tree.
fn apply_op(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
    match value {
        Some(v) => tree.insert(key, v).map(|_| ()),
        None => tree.remove(key).map(|_| ()),
    }
    .map_err(backend)
}

/// Completes the group whose redo record survived a crash, then removes every redo record; returns how many
/// ops were replayed.
fn recover_redo(db: &sled::Db, tree: &sled::Tree, redo: &sled::Tree, log: &File) -> Result<usize, Error> {
    let mut groups: std::collections::BTreeMap<u64, Vec<(u32, u32, sled::IVec)>> = Default::default();
    let mut keys = Vec::new();
    for item in redo.iter() {
        let (k, v) = item.map_err(backend)?;
        let (Some(group), Some(chunk), Some(chunks)) = (
            keys::read_u64(&k, 0),
            k.get(8..12).and_then(|x| x.try_into().ok()).map(u32::from_be_bytes),
            k.get(12..16).and_then(|x| x.try_into().ok()).map(u32::from_be_bytes),
        ) else {
            return Err(Error::Corrupt { what: "redo record".into(), detail: format!("key {k:?}") });
        };
        groups.entry(group).or_default().push((chunk, chunks, v));
        keys.push(k);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let mut replayed = 0;
    for (group, chunks) in groups {
        let complete = chunks.iter().enumerate().all(|(i, (c, n, _))| *c as usize == i && *n as usize == chunks.len());
        if !complete {
            // Its last chunk never reached the disk, so neither did any of its ops: the group did not happen.
            tracing::warn!(group, "an unfinished group commit was dropped on recovery (it was never acknowledged)");
            continue;
        }
        let bytes: Vec<u8> = chunks.iter().flat_map(|(_, _, v)| v.iter().copied()).collect();
        let ops = decode_ops(&bytes).ok_or_else(|| Error::Corrupt {
            what: "redo record".into(),
            detail: format!("group {group} does not decode"),
        })?;
        for (key, value) in &ops {
            apply_op(tree, key, value.as_deref())?;
        }
        replayed += ops.len();
        tracing::info!(group, ops = ops.len(), "completed a group commit interrupted by a crash");
    }
    db.flush().map_err(backend)?;
    log.sync_data()?;
    for k in keys {
        redo.remove(k).map_err(backend)?;
    }
    db.flush().map_err(backend)?;
    log.sync_data()?;
    Ok(replayed)
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with the default page cache ([`default_cache_mb`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with_cache(dir, default_cache_mb())
    }

    /// Opens (or creates) the store in `dir`, with a page cache of at most `cache_mb` MiB (sled's accounting of
    /// its pages; resident memory is somewhat more).
    pub fn open_with_cache(dir: impl AsRef<Path>, cache_mb: u64) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let db = match open_sled(&dir, cache_mb) {
            // A process killed while sled wrote a snapshot leaves one that sled refuses forever after; without it,
            // sled recovers from the previous snapshot and the log (see `remove_unfinished_snapshots`).
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(&dir)? > 0 => open_sled(&dir, cache_mb),
            other => other,
        }
        .map_err(backend)?;
        let tree = db.open_tree("marketflow").map_err(backend)?;
        let redo = db.open_tree("marketflow-redo").map_err(backend)?;
        let log = File::options().read(true).write(true).open(dir.join("db"))?;
        // The directory entry of a newly created log must be durable too.
        File::open(&dir)?.sync_all()?;
        recover_redo(&db, &tree, &redo, &log)?;
        Ok(Self {
            inner: RwLock::new(Some(Open { db, tree, redo })),
            redo: Redo { writing: Mutex::new(Vec::new()), next: Default::default() },
            log: Mutex::new(log),
            dir,
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn with<T>(&self, f: impl FnOnce(&sled::Db, &sled::Tree) -> Result<T, Error>) -> Result<T, Error> {
        self.with_open(|o| f(&o.db, &o.tree))
    }

    fn with_open<T>(&self, f: impl FnOnce(&Open) -> Result<T, Error>) -> Result<T, Error> {
        let g = self.inner.read().map_err(|_| Error::Backend("store lock poisoned".into()))?;
        match g.as_ref() {
            Some(o) => f(o),
            None => Err(Error::Closed),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        let mut written = self.redo.writing.lock().map_err(|_| Error::Backend("redo lock poisoned".into()))?;
        self.with(|db, _| db.flush().map_err(backend))?;
        let f = self.log.lock().map_err(|_| Error::Backend("log lock poisoned".into()))?;
        f.sync_data()?;
        // Their ops are durable: the records are not needed any more (the removals are durable with the next
        // fsync, and always before the next group's record, which is written after them).
        self.with_open(|o| {
            for k in written.drain(..) {
                o.redo.remove(k).map_err(backend)?;
            }
            Ok(())
        })
    }
}

impl SledStore {
    /// Reads one key on this thread (sled answers from its cache or a page read).
    pub fn get_now(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with(|_, tree| Ok(tree.get(full_key(table, key)).map_err(backend)?.map(|v| v.to_vec())))
    }

    /// Reads a range on this thread.
    pub fn scan_now(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Result<super::KvPairs, Error> {
        let g = self.inner.read().map_err(|_| Error::Backend("store lock poisoned".into()))?;
        let Some(Open { tree, .. }) = g.as_ref() else {
            return Err(Error::Closed);
        };
        let range = tree.range::<Vec<u8>, _>((full_bound(table, start, false), full_bound(table, end, true)));
        let mut out = Vec::new();
        let mut push = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, Error> {
            let (k, v) = item.map_err(backend)?;
            out.push((k[1..].to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        if limit == 0 {
            return Ok(out);
        }
        if reverse {
            for item in range.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in range {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Read<Result<Option<Vec<u8>>, Error>> {
        Read::ready(self.get_now(table, key))
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Read<Result<super::KvPairs, Error>> {
        Read::ready(self.scan_now(table, start, end, limit, reverse))
    }

    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Read<Result<u64, Error>> {
        let start = full_key(table, prefix);
        let end = match super::prefix_end(&start) {
            Bound::Excluded(e) => Bound::Excluded(e),
            _ => Bound::Excluded(vec![table as u8 + 1]),
        };
        Read::ready(self.with(|_, tree| {
            let mut n = 0u64;
            for item in tree.range::<Vec<u8>, _>((Bound::Included(start), end)) {
                item.map_err(backend)?;
                n += 1;
            }
            Ok(n)
        }))
    }

    fn size_bytes(&self) -> Read<Result<u64, Error>> {
        Read::ready(self.with(|db, _| db.size_on_disk().map_err(backend)))
    }

    /// The read-ahead the actors do for the committer (BENCHMARKS.md, round 4): an error here is the commit's to
    /// report.
    fn prefetch(&self, table: Table, key: &[u8]) {
        let _ = self.get_now(table, key);
    }

    /// One redo record, then every op as a single-key write (see [`Redo`]: atomic after a crash, and no global
    /// lock against readers). Readers may see a group half written before it is durable, as they could always
    /// see a group before its fsync; every input is still acknowledged only after the fsync.
    ///
    /// Counters ([`Op::Add`]) are read and added to first, under the writers' lock ([`super::resolve_adds`]: exact,
    /// as the committer is the one writer), and their final values are written as puts after the group's other
    /// ops, in the redo record too (replaying a put is idempotent, replaying an add would not be).
    fn write(&self, batches: &[Batch]) -> Result<(), Error> {
        // The committer refuses such a batch before it gets here; this guards the store's other callers.
        if let Some(len) = batches.iter().map(Batch::largest_value).max().filter(|len| *len > MAX_VALUE_BYTES) {
            return Err(Error::Backend(format!("value of {len} bytes exceeds the {MAX_VALUE_BYTES}-byte limit")));
        }
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        let mut written = self.redo.writing.lock().map_err(|_| Error::Backend("redo lock poisoned".into()))?;
        self.with_open(|Open { tree, redo, .. }| {
            // Exact under the writers' lock: the committer is the one writer.
            let refused =
                super::conflicts(batches, |table, key| tree.contains_key(full_key(table, key)).map_err(backend))?;
            if !refused.is_empty() {
                return Err(Error::Conflict { batches: refused });
            }
            let counters = super::resolve_adds(batches, |table, key| {
                Ok(tree.get(full_key(table, key)).map_err(backend)?.map(|v| v.to_vec()))
            })?;
            let mut record = encode_ops(batches);
            record.extend(encode_ops(std::slice::from_ref(&counters)));
            let group = self.redo.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let chunks: Vec<&[u8]> = record.chunks(REDO_CHUNK).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let key = redo_key(group, i as u32, chunks.len() as u32);
                redo.insert(&key, *chunk).map_err(backend)?;
                written.push(key);
            }
            for op in batches.iter().chain([&counters]).flat_map(|b| b.ops.iter()) {
                match op {
                    Op::Put { table, key, value } => apply_op(tree, &full_key(*table, key), Some(value))?,
                    Op::Delete { table, key } => apply_op(tree, &full_key(*table, key), None)?,
                    // Resolved into `counters`, written last.
                    Op::Add { .. } => {}
                }
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), Error> {
        self.sync()
    }

    /// Consistent by holding the writers' lock for the whole read: the committer (the one writer) waits meanwhile,
    /// so a live export holds commits up for as long as it reads (sled 0.34 has no snapshots of its own).
    fn snapshot(&self, f: &mut RowSink<'_>) -> Result<(), Error> {
        let _writers = self.redo.writing.lock().map_err(|_| Error::Backend("redo lock poisoned".into()))?;
        self.with_open(|Open { tree, .. }| {
            for table in super::dump::tables() {
                for item in tree.scan_prefix([table as u8]) {
                    let (k, v) = item.map_err(backend)?;
                    f(table, &k[1..], &v)?;
                }
            }
            Ok(())
        })
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    fn close(&self) -> Result<(), Error> {
        // Twice: the first fsync removes the last group's redo record, the second makes the removal durable, so a
        // clean close leaves nothing to replay.
        let result = self.sync().and_then(|()| self.sync());
        if let Ok(mut g) = self.inner.write() {
            g.take();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        super::super::contract_tests::roundtrip(&s);
        super::super::contract_tests::counters(&s);
        super::super::contract_tests::new_keys(&s);
    }

    #[test]
    fn sled_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
            s.apply(&[b]).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get_now(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_snapshot_sled_did_not_finish_writing_does_not_brick_the_store() {
        // What a kill in the middle of sled's `write_snapshot` leaves: a snapshot cut short. (In a fresh directory:
        // reopening a store right after dropping it races with sled's background threads for the lock.)
        let dir = tempfile::tempdir().unwrap();
        let unfinished = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"the first bytes of a snapshot, and no checksum").unwrap();
        let s = SledStore::open(dir.path()).expect("opens despite the unfinished snapshot");
        assert!(!unfinished.exists());
        let mut b = Batch::new();
        b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
        s.apply(&[b]).unwrap();
        assert_eq!(s.get_now(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn redo_records_decode_to_their_ops() {
        let mut a = Batch::new();
        a.put(Table::Entities, b"k\0a\0".to_vec(), b"{}".to_vec());
        a.delete(Table::Timers, vec![0, 1, 2]);
        let mut b = Batch::new();
        b.put(Table::Meta, b"empty".to_vec(), vec![]);
        let ops = decode_ops(&encode_ops(&[a, b])).unwrap();
        assert_eq!(
            ops,
            vec![
                (full_key(Table::Entities, b"k\0a\0"), Some(b"{}".to_vec())),
                (full_key(Table::Timers, &[0, 1, 2]), None),
                (full_key(Table::Meta, b"empty"), Some(vec![])),
            ]
        );
        assert_eq!(decode_ops(&[7]), None, "an unknown tag");
        assert_eq!(decode_ops(&[0, 0, 0, 0, 9, 1]), None, "cut short");
    }

    /// Leaves in `dir` what a crash in the middle of [`SledStore::write`] leaves: the first `chunks_written` chunks
    /// of a group's redo record (of `chunks`), and the first `ops_written` of its ops.
    fn crash_mid_group(
        dir: &Path,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        chunks: u32,
        chunks_written: u32,
        ops_written: usize,
    ) {
        let record = {
            let mut b = Batch::new();
            for (k, v) in ops {
                let table = Table::Meta;
                assert_eq!(k[0], table as u8);
                match v {
                    Some(v) => b.put(table, k[1..].to_vec(), v.clone()),
                    None => b.delete(table, k[1..].to_vec()),
                }
            }
            encode_ops(&[b])
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match open_sled(dir, 64) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("opening: {e}"),
            }
        };
        let tree = db.open_tree("marketflow").unwrap();
        let redo = db.open_tree("marketflow-redo").unwrap();
        let size = record.len().div_ceil(chunks as usize);
        for (i, chunk) in record.chunks(size).enumerate().take(chunks_written as usize) {
            redo.insert(redo_key(41, i as u32, chunks), chunk).unwrap();
        }
        for (k, v) in ops.iter().take(ops_written) {
            apply_op(&tree, k, v.as_deref()).unwrap();
        }
        db.flush().unwrap();
    }

    fn reopen(dir: &Path) -> SledStore {
        // sled's background threads may hold the directory's lock a moment after the last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open_with_cache(dir, 64) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopening: {e}"),
            }
        }
    }

    #[test]
    fn a_group_cut_short_by_a_crash_is_completed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_cache(dir.path(), 64).unwrap();
            let mut b = Batch::new();
            b.put(Table::Meta, b"gone".to_vec(), b"old".to_vec());
            b.put(Table::Meta, b"a".to_vec(), b"old".to_vec());
            s.apply(&[b]).unwrap();
            s.close().unwrap();
        }
        let ops = vec![
            (full_key(Table::Meta, b"a"), Some(b"new".to_vec())),
            (full_key(Table::Meta, b"b"), Some(vec![b'x'; 3000])),
            (full_key(Table::Meta, b"gone"), None),
        ];
        crash_mid_group(dir.path(), &ops, 3, 3, 1);
        let s = reopen(dir.path());
        assert_eq!(s.get_now(Table::Meta, b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(s.get_now(Table::Meta, b"b").unwrap().map(|v| v.len()), Some(3000));
        assert_eq!(s.get_now(Table::Meta, b"gone").unwrap(), None);
        assert!(s.with_open(|o| Ok(o.redo.is_empty())).unwrap(), "the record is removed once its group is complete");
    }

    #[test]
    fn a_group_whose_redo_record_is_incomplete_did_not_happen() {
        let dir = tempfile::tempdir().unwrap();
        let ops = vec![(full_key(Table::Meta, b"a"), Some(b"new".to_vec()))];
        // The second chunk never landed, so (sled recovers a prefix of its log) no op did either.
        crash_mid_group(dir.path(), &ops, 2, 1, 0);
        let s = reopen(dir.path());
        assert_eq!(s.get_now(Table::Meta, b"a").unwrap(), None);
        assert!(s.with_open(|o| Ok(o.redo.is_empty())).unwrap());
    }

    #[test]
    fn a_closed_store_releases_the_directory_while_its_handle_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with_cache(dir.path(), 64).unwrap();
        let mut b = Batch::new();
        b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
        s.apply(&[b]).unwrap();
        s.close().unwrap();
        assert!(matches!(s.get_now(Table::Meta, b"k"), Err(Error::Closed)));
        // An in-process restart opens the directory again while the old handle is still shared around.
        let again = reopen(dir.path());
        assert_eq!(again.get_now(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(s);
    }

    #[test]
    fn written_groups_leave_no_redo_record_after_their_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with_cache(dir.path(), 64).unwrap();
        let mut b = Batch::new();
        for i in 0..100u32 {
            b.put(Table::Meta, i.to_be_bytes().to_vec(), vec![b'v'; 2000]);
        }
        s.write(std::slice::from_ref(&b)).unwrap();
        assert_eq!(s.with_open(|o| Ok(o.redo.len())).unwrap(), 4, "200 KB of ops: four chunks until the fsync");
        s.flush().unwrap();
        assert!(s.with_open(|o| Ok(o.redo.is_empty())).unwrap());
        assert_eq!(super::super::contract_tests::block(s.count_prefix(Table::Meta, b"")).unwrap(), 100);
    }

    #[test]
    fn a_groups_redo_record_holds_its_counters_values_not_their_additions() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with_cache(dir.path(), 64).unwrap();
        let mut b = Batch::new();
        b.add(Table::Meta, b"c".to_vec(), 5);
        s.apply(&[b]).unwrap();
        let mut b = Batch::new();
        b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
        b.add(Table::Meta, b"c".to_vec(), 2);
        s.write(std::slice::from_ref(&b)).unwrap();
        let record: Vec<u8> =
            s.with_open(|o| Ok(o.redo.iter().values().flat_map(|v| v.unwrap().to_vec()).collect())).unwrap();
        // Replaying it after a crash sets the counter to 7 again, however often, instead of adding 2 once more.
        assert_eq!(
            decode_ops(&record).unwrap(),
            vec![
                (full_key(Table::Meta, b"k"), Some(b"v".to_vec())),
                (full_key(Table::Meta, b"c"), Some(7i64.to_be_bytes().to_vec())),
            ]
        );
        s.flush().unwrap();
        assert_eq!(s.get_now(Table::Meta, b"c").unwrap(), Some(7i64.to_be_bytes().to_vec()));
    }

    #[test]
    fn the_default_cache_is_an_eighth_of_the_memory_within_bounds() {
        assert_eq!(mem_total_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(cgroup_limit_bytes("max\n"), None);
        assert_eq!(cgroup_limit_bytes("9223372036854771712\n"), None, "cgroup v1 without a limit");
        assert_eq!(cgroup_limit_bytes("1073741824\n"), Some(1 << 30));
        let mb = default_cache_mb();
        assert!((MIN_DEFAULT_CACHE_MB..=MAX_DEFAULT_CACHE_MB).contains(&mb), "{mb}");
    }

    #[test]
    fn oversized_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::new();
        b.put(Table::Meta, b"big".to_vec(), vec![0u8; MAX_VALUE_BYTES + 1]);
        assert!(s.apply(&[b]).is_err());
        assert_eq!(s.get_now(Table::Meta, b"big").unwrap(), None);
    }
}
