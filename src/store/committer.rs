//! Group commit: many entities' batches share one atomic apply and one fsync.
//!
//! A single committer thread owns the write path. While it is fsyncing one group, new requests queue up; the
//! next group takes all of them (up to a size cap). A caller's future resolves only after its batch is durable.
//! If the store ever fails a write or a sync, the committer refuses everything after it: the in-memory view of
//! the store may then hold writes that never reached the disk (the fsync-gate problem), so the only honest
//! continuation is a restart from what is on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Batch, Error, Store};

/// The outcome of a commit as its caller sees it.
pub type CommitResult = Result<(), CommitError>;

/// Why a commit was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("storage failed: {0}")]
    Failed(Arc<Error>),
    #[error("the commit queue is full")]
    Overloaded,
    #[error("the committer has stopped")]
    Stopped,
    /// One batch held a value larger than the store takes; refused alone, before any write, so that the store
    /// stays healthy for everyone else.
    #[error("a value of {0} bytes is larger than the store takes")]
    TooLarge(usize),
    /// The batch's shard lease moved to another node ([`super::Error::Fenced`]); nothing of it was written.
    #[error("shard {0} is no longer this node's")]
    NotOwner(super::shard::Shard),
    /// A key the batch must create exists already ([`super::Batch::new_keys`]); nothing of it was written.
    #[error("a key this commit creates exists already")]
    Conflict,
}

struct Request {
    batch: Batch,
    reply: oneshot::Sender<CommitResult>,
}

/// Watches the write path for metrics (latency and size histograms): told of every group once it is durable, on
/// the committer thread. The store knows nothing of what it does; it must be quick, as the next group waits for
/// it. (What must agree with the data, such as entities by state, is written with the commits instead:
/// [`super::Op::Add`].)
pub trait Observer: Send + Sync + std::fmt::Debug {
    fn durable(&self, batches: &[Batch], took: Duration);
    /// For the one who installed it to find its own type again.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What every commit gets once a write or sync has failed: the failure (clients see `storage_unavailable`), not
/// `Stopped`, which reads as a shutdown (`shutting_down`) and hides why the service refuses.
fn refused_after_failure() -> CommitError {
    CommitError::Failed(Arc::new(Error::Backend("an earlier write failed; nothing is written until a restart".into())))
}

/// What the engine does when the store refuses commits of shards whose leases moved on.
pub type OnFenced = Box<dyn Fn(&[super::shard::Shard]) + Send + Sync>;

/// Counters read by `/metrics` and the benchmarks.
#[derive(Default)]
pub struct CommitStats {
    /// Batches made durable.
    pub commits: AtomicU64,
    /// Groups (one atomic write and one fsync each).
    pub groups: AtomicU64,
    /// Sum of the time from a group's start to its fsync's end, in microseconds.
    pub group_micros: AtomicU64,
    /// The part of `group_micros` spent writing groups into the store, in microseconds.
    pub write_micros: AtomicU64,
    /// The part of `group_micros` spent flushing and fsyncing, in microseconds.
    pub sync_micros: AtomicU64,
    /// Set once a write or sync failed; never cleared in this process.
    pub failed: AtomicBool,
    /// Installed once by the engine as it starts (its telemetry); sees every durable group.
    pub observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// Told, on the committer thread, of shards whose leases the store found moved on (installed by the engine,
    /// which drops them at once: their entities are another node's now).
    pub on_fenced: std::sync::OnceLock<OnFenced>,
    /// Groups a store that does not fail-stop refused with an error (the database unreachable); each one's
    /// callers were told `storage_unavailable` and nothing of it was written.
    pub failed_groups: AtomicU64,
}

impl std::fmt::Debug for CommitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitStats")
            .field("commits", &self.commits)
            .field("groups", &self.groups)
            .field("failed", &self.failed)
            .field("failed_groups", &self.failed_groups)
            .finish_non_exhaustive()
    }
}

/// The handle to the committer thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    /// Requests to the committer thread; bounded, so a stalled disk turns into `Overloaded`, not into memory.
    tx: Arc<Mutex<Option<SyncSender<Request>>>>,
    /// The committer thread, joined at shutdown.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    pub stats: Arc<CommitStats>,
}

/// Tuning of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct CommitConfig {
    /// Requests that may wait for the committer before callers are told to back off.
    pub queue: usize,
    /// At most this many batches in one group.
    pub max_group: usize,
    /// At most this many bytes in one group.
    pub max_group_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self { queue: 65_536, max_group: 4_096, max_group_bytes: 8 << 20 }
    }
}

impl Committer {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<dyn Store>, config: CommitConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let stats = Arc::new(CommitStats::default());
        let st = stats.clone();
        let thread =
            std::thread::Builder::new().name("marketflow-commit".into()).spawn(move || run(store, rx, config, st)).ok();
        Self { tx: Arc::new(Mutex::new(Some(tx))), thread: Arc::new(Mutex::new(thread)), stats }
    }

    fn enqueue(&self, batch: Batch) -> Result<oneshot::Receiver<CommitResult>, CommitError> {
        if self.stats.failed.load(Ordering::Acquire) {
            return Err(refused_after_failure());
        }
        let (reply, rx) = oneshot::channel();
        let guard = self.tx.lock().map_err(|_| CommitError::Stopped)?;
        let tx = guard.as_ref().ok_or(CommitError::Stopped)?;
        match tx.try_send(Request { batch, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(CommitError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(CommitError::Stopped),
        }
    }

    /// Makes `batch` durable; resolves after its fsync.
    pub async fn commit(&self, batch: Batch) -> CommitResult {
        let rx = self.enqueue(batch)?;
        rx.await.map_err(|_| CommitError::Stopped)?
    }

    /// Makes `batch` durable from a thread outside any async runtime.
    pub fn commit_blocking(&self, batch: Batch) -> CommitResult {
        let rx = self.enqueue(batch)?;
        rx.blocking_recv().map_err(|_| CommitError::Stopped)?
    }

    /// Commits without waiting for the result (start-up repairs); failures are logged.
    pub fn commit_blocking_or_spawn(&self, batch: Batch) {
        match self.enqueue(batch) {
            Ok(rx) => {
                actix_rt::spawn(async move {
                    if let Ok(Err(e)) = rx.await {
                        tracing::error!(error = %e, "a start-up repair could not be committed");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "a start-up repair could not be queued"),
        }
    }

    /// Whether the committer still accepts work.
    pub fn healthy(&self) -> bool {
        !self.stats.failed.load(Ordering::Acquire)
    }

    /// Stops taking requests, finishes the queued ones, and waits for the thread.
    pub fn shutdown(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Writes a group, fsyncs it, then takes the next, on one thread. Writing the next group while another thread
/// fsynced the last one (tried twice with sled's `apply_batch`, BENCHMARKS.md rounds 1 and 4) shrank the groups
/// to a tenth and made each write slower, as sled's flush waited for the batch in progress; with the redo-record
/// writes of today's store the fsync is 2 % of the committer's time in a backlog, so there is little to overlap.
fn run(store: Arc<dyn Store>, rx: Receiver<Request>, config: CommitConfig, stats: Arc<CommitStats>) {
    let max_value = store.max_value_bytes();
    let linger = store.linger();
    let mut busy = false;
    let mut group: Vec<Request> = Vec::new();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r.batch.largest_value() {
                // A value the store would refuse fails the whole write, and a failed write stops the committer
                // for good (the fsync-gate rule): refuse this batch alone instead.
                n if n > max_value => {
                    tracing::error!(bytes = n, limit = max_value, "a commit holds a value larger than the store takes");
                    let _ = r.reply.send(Err(CommitError::TooLarge(n)));
                }
                _ => {
                    bytes += r.batch.bytes();
                    group.push(r);
                }
            }
            if group.len() < config.max_group && bytes < config.max_group_bytes {
                next = rx.try_recv().ok();
                // Under load (the last group was shared), a store whose transactions cost more than their rows
                // waits a moment for more to join: fewer, larger groups.
                if next.is_none() && busy && started.elapsed() < linger {
                    next = rx.recv_timeout(linger.saturating_sub(started.elapsed())).ok();
                }
            }
        }
        busy = group.len() > 1;
        if group.is_empty() {
            continue;
        }
        let mut batches = Vec::with_capacity(group.len());
        let mut replies: Vec<_> = group
            .drain(..)
            .map(|r| {
                batches.push(r.batch);
                r.reply
            })
            .collect();
        if stats.failed.load(Ordering::Acquire) {
            answer(replies, &Err(refused_after_failure()));
            continue;
        }
        // A store shared with other nodes may refuse some batches (a lease moved on, a key taken): it writes
        // nothing then, and the group is written again without them.
        let written = loop {
            match store.write(&batches) {
                Err(Error::Fenced { shards }) => {
                    tracing::warn!(?shards, "commits refused: these shards' leases moved to another node");
                    stats.on_fenced.get().inspect(|f| f(&shards));
                    let mut i = 0;
                    while i < batches.len() {
                        match batches[i].fence {
                            Some(f) if shards.contains(&f.shard) => {
                                batches.remove(i);
                                let _ = replies.remove(i).send(Err(CommitError::NotOwner(f.shard)));
                            }
                            _ => i += 1,
                        }
                    }
                }
                Err(Error::Conflict { batches: refused }) => {
                    for i in refused.into_iter().rev() {
                        if i < batches.len() {
                            batches.remove(i);
                            let _ = replies.remove(i).send(Err(CommitError::Conflict));
                        }
                    }
                }
                other => break other,
            }
            if batches.is_empty() {
                break Ok(());
            }
        };
        if batches.is_empty() {
            continue;
        }
        if let Err(e) = written {
            if store.fail_stop() {
                fail(&stats, &e, "group commit failed");
            } else {
                stats.failed_groups.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, batches = batches.len(), "group commit failed; nothing of it was written");
            }
            answer(replies, &Err(CommitError::Failed(Arc::new(e))));
            continue;
        }
        let written = Instant::now();
        stats.write_micros.fetch_add((written - started).as_micros() as u64, Ordering::Relaxed);
        let synced = store.flush();
        stats.sync_micros.fetch_add(written.elapsed().as_micros() as u64, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                stats.commits.fetch_add(replies.len() as u64, Ordering::Relaxed);
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.group_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                stats.observer.get().inspect(|o| o.durable(&batches, started.elapsed()));
                answer(replies, &Ok(()));
            }
            Err(e) => {
                fail(&stats, &e, "fsync failed");
                answer(replies, &Err(CommitError::Failed(Arc::new(e))));
            }
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}

fn answer(replies: Vec<oneshot::Sender<CommitResult>>, result: &CommitResult) {
    for r in replies {
        let _ = r.send(result.clone());
    }
}

/// From now on every commit is refused (see the module's doc: the fsync-gate problem).
fn fail(stats: &CommitStats, e: &Error, what: &str) {
    tracing::error!(error = %e, "{what}; refusing all further commits");
    stats.failed.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Table};

    #[test]
    fn concurrent_commits_are_grouped_and_all_land() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Committer::start(store.clone(), CommitConfig::default());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut b = Batch::new();
                        b.put(Table::Meta, format!("{t}/{i}").into_bytes(), b"x".to_vec());
                        c.commit_blocking(b).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(crate::store::contract_tests::block(store.count_prefix(Table::Meta, b"")).unwrap(), 800);
        assert_eq!(c.stats.commits.load(Ordering::Relaxed), 800);
        c.shutdown();
        let mut b = Batch::new();
        b.put(Table::Meta, b"late".to_vec(), b"x".to_vec());
        assert!(matches!(c.commit_blocking(b), Err(CommitError::Stopped)));
    }

    #[test]
    fn counters_added_to_by_concurrent_commits_lose_no_addition() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open_with_cache(dir.path(), 64).unwrap());
        let c = Committer::start(store.clone(), CommitConfig::default());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut b = Batch::new();
                        b.put(Table::Meta, format!("{t}/{i}").into_bytes(), b"x".to_vec());
                        b.add(Table::Meta, b"n".to_vec(), 1);
                        b.add(Table::Meta, format!("n/{}", t % 2).into_bytes(), if t % 2 == 0 { 1 } else { -1 });
                        c.commit_blocking(b).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let n = |k: &[u8]| {
            crate::store::counter_value(
                crate::store::contract_tests::block(store.get(Table::Meta, k)).unwrap().as_deref(),
            )
            .unwrap()
        };
        assert_eq!((n(b"n"), n(b"n/0"), n(b"n/1")), (800, 400, -400));
        c.shutdown();
    }

    #[test]
    fn a_batch_whose_new_key_is_taken_is_refused_alone_and_its_group_lands() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Committer::start(store.clone(), CommitConfig::default());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            // Every thread claims the same 50 names, each with a row of its own beside it.
                            let mut b = Batch::new();
                            b.put_new(Table::Records, format!("name/{i}").into_bytes(), format!("{t}").into_bytes());
                            b.put(Table::Records, format!("row/{t}/{i}").into_bytes(), b"x".to_vec());
                            let mut plain = Batch::new();
                            plain.put(Table::Meta, format!("plain/{t}/{i}").into_bytes(), b"x".to_vec());
                            let plain = c.commit_blocking(plain);
                            (c.commit_blocking(b), plain)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert!(results.iter().all(|(_, plain)| plain.is_ok()), "batches without new keys always land");
        let won = results.iter().filter(|(r, _)| r.is_ok()).count();
        let lost = results.iter().filter(|(r, _)| matches!(r, Err(CommitError::Conflict))).count();
        assert_eq!((won, lost), (50, 350), "one claim of each name wins");
        let rows = crate::store::contract_tests::block(store.count_prefix(Table::Records, b"row/")).unwrap();
        assert_eq!(rows, 50, "a refused claim wrote nothing");
        assert!(c.healthy());
        c.shutdown();
    }

    #[test]
    fn an_oversized_value_is_refused_alone_and_the_store_stays_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let c = Committer::start(store.clone(), CommitConfig::default());
        let limit = store.max_value_bytes();
        let mut big = Batch::new();
        big.put(Table::Meta, b"big".to_vec(), vec![b'x'; limit + 1]);
        big.put(Table::Meta, b"small".to_vec(), b"x".to_vec());
        assert!(matches!(c.commit_blocking(big), Err(CommitError::TooLarge(n)) if n == limit + 1));
        assert!(c.healthy());
        assert_eq!(
            crate::store::contract_tests::block(store.get(Table::Meta, b"small")).unwrap(),
            None,
            "nothing of the refused batch was written"
        );
        let mut ok = Batch::new();
        ok.put(Table::Meta, b"k".to_vec(), vec![b'y'; limit]);
        c.commit_blocking(ok).expect("a value at the limit is taken");
        assert_eq!(
            crate::store::contract_tests::block(store.get(Table::Meta, b"k")).unwrap().map(|v| v.len()),
            Some(limit)
        );
        c.shutdown();
    }
}
