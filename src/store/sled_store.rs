//! The embedded default store: sled 0.34, made durable with a real fsync.
//!
//! sled's own `flush` ends in `sync_file_range`, which neither flushes the drive's cache nor the file's metadata
//! (sled issue #1452), so an acknowledged commit could vanish on power loss. After every flush we `fdatasync` the
//! log file through a descriptor of our own. All tables live in one sled tree under a one-byte prefix, so that a
//! whole group commit is a single `apply_batch`, which sled applies atomically.
//!
//! sled writes values larger than its blob threshold (a quarter of a segment, 128 KiB by default) to separate
//! files that it does not fsync; [`MAX_VALUE_BYTES`] keeps every value far below that.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::{Batch, Error, Op, Store, Table};

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
    inner: RwLock<Option<(sled::Db, sled::Tree)>>,
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
        let log = File::options().read(true).write(true).open(dir.join("db"))?;
        // The directory entry of a newly created log must be durable too.
        File::open(&dir)?.sync_all()?;
        Ok(Self { inner: RwLock::new(Some((db, tree))), log: Mutex::new(log), dir })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn with<T>(&self, f: impl FnOnce(&sled::Db, &sled::Tree) -> Result<T, Error>) -> Result<T, Error> {
        let g = self.inner.read().map_err(|_| Error::Backend("store lock poisoned".into()))?;
        match g.as_ref() {
            Some((db, tree)) => f(db, tree),
            None => Err(Error::Closed),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        self.with(|db, _| db.flush().map_err(backend))?;
        let f = self.log.lock().map_err(|_| Error::Backend("log lock poisoned".into()))?;
        f.sync_data()?;
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with(|_, tree| Ok(tree.get(full_key(table, key)).map_err(backend)?.map(|v| v.to_vec())))
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Result<super::KvPairs, Error> {
        let g = self.inner.read().map_err(|_| Error::Backend("store lock poisoned".into()))?;
        let Some((_, tree)) = g.as_ref() else {
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

    fn write(&self, batches: &[Batch]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for op in batches.iter().flat_map(|b| b.ops.iter()) {
            match op {
                Op::Put { table, key, value } => {
                    if value.len() > MAX_VALUE_BYTES {
                        return Err(Error::Backend(format!(
                            "value of {} bytes exceeds the {MAX_VALUE_BYTES}-byte limit",
                            value.len()
                        )));
                    }
                    batch.insert(full_key(*table, key), value.as_slice());
                }
                Op::Delete { table, key } => batch.remove(full_key(*table, key)),
            }
        }
        // One `apply_batch` for the whole group, not one per caller: sled's `apply_batch` takes a global lock that
        // stops every read (`concurrency_control::write`), and taking it per batch, against the actors' reads, made
        // firing timers 2.5x slower (BENCHMARKS.md, round 4).
        self.with(|_, tree| tree.apply_batch(batch).map_err(backend))
    }

    fn flush(&self) -> Result<(), Error> {
        self.sync()
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    fn close(&self) -> Result<(), Error> {
        let result = self.sync();
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
        assert_eq!(s.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
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
        assert_eq!(s.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
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
        assert_eq!(s.get(Table::Meta, b"big").unwrap(), None);
    }
}
