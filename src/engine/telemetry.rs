//! What the engine measures beyond its counters, for `/metrics`: histograms of the group commits and of the
//! timers' lateness, entities by kind and state, and the rows waiting in the work tables. The HTTP adapter renders
//! them; nothing outside the engine reads the store to derive them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Engine;
use crate::store::committer::Observer;
use crate::store::{Batch, Op, Store, Table};

/// Commit (apply + fsync) latency buckets, seconds: a healthy disk fsyncs in about a millisecond.
const COMMIT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Group-commit size buckets, batches per group (the committer's cap is 4096).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
/// Timer lateness buckets, service seconds: from the timer loop's own delay up to a day of downtime.
const LATENESS_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0];
/// A Prometheus histogram with fixed buckets, lock-free: cheap enough for the committer thread and every request.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (`le`), ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// Observations per bucket, not cumulated; the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observed values in millionths, so that an atomic integer holds it.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// Writes the series of one labelled histogram in the Prometheus text format: cumulative `_bucket`s, `_sum`, `_count` (equal to `+Inf`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, n) in self.counts.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}");
    }
}

/// Entities per (kind, state).
pub type Counts = BTreeMap<(String, String), i64>;

/// The measurements of one engine that its counters cannot give. Installed as the committer's [`Observer`] when
/// the engine starts, so two engines in one process (tests) never mix their numbers.
///
/// Entities by state are counted by a scan of the entities table on the committer thread (the only writer, so
/// the count is exact), a slice of [`TALLY_SLICE`] records after each durable group, so that no group waits for
/// more than a slice (the whole scan at once held commits back about a second with 1,000,000 entities). Journal
/// entries of every durable group keep the count current for the entities the scan has passed: an entry's `from`
/// and `to` move an entity between states, its first entry (`seq` 1) adds it; the scan counts the others as they
/// are when it reaches them. No scrape scans the store.
#[derive(Debug)]
pub struct Telemetry {
    /// Group commit latency (apply + fsync), seconds.
    pub commit_seconds: Histogram,
    /// Batches per group commit.
    pub group_size: Histogram,
    /// How late timers fired, service seconds; shared with the hook of the engine's timer loop.
    pub timer_lateness: Arc<Histogram>,
    /// The count and how far its scan has got.
    entities: Mutex<Tally>,
    /// The last count of the work tables and when it was taken.
    pending: Mutex<Option<(Instant, Pending)>>,
}

/// Records the committer reads per durable group while it counts entities (a few milliseconds).
const TALLY_SLICE: usize = 5_000;

#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    /// The key of the last record counted; the entities up to it are in `counts`. `None` before the first slice.
    scanned: Option<Vec<u8>>,
    /// The scan has reached the end: `counts` is every entity.
    done: bool,
}

impl Tally {
    /// Whether the scan has counted the entity whose record is at `record_key`.
    fn counted(&self, record_key: &[u8]) -> bool {
        self.done || self.scanned.as_deref().is_some_and(|last| record_key <= last)
    }

    /// Counts the next slice of records after the last one counted.
    fn scan_slice(&mut self, store: &dyn Store) -> Result<(), crate::store::Error> {
        #[derive(serde::Deserialize)]
        struct KindState {
            kind: String,
            state: String,
        }
        let start = match &self.scanned {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let page = store.scan(Table::Entities, start, Bound::Unbounded, TALLY_SLICE, false)?;
        for (_, v) in &page {
            if let Ok(r) = serde_json::from_slice::<KindState>(v) {
                *self.counts.entry((r.kind, r.state)).or_default() += 1;
            }
        }
        self.done = page.len() < TALLY_SLICE;
        if let Some((k, _)) = page.last() {
            self.scanned = Some(k.clone());
        }
        Ok(())
    }
}

/// The part of a journal entry that moves an entity between states.
#[derive(serde::Deserialize)]
struct Moved {
    seq: u64,
    from: String,
    to: String,
}

impl Telemetry {
    /// The count, once the scan has counted every entity.
    pub fn entities(&self) -> Option<Counts> {
        let t = self.entities.lock().unwrap_or_else(|e| e.into_inner());
        t.done.then(|| t.counts.clone())
    }
}

impl Observer for Telemetry {
    fn durable(&self, store: &dyn Store, batches: &[Batch], took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.group_size.observe(batches.len() as f64);
        let mut tally = self.entities.lock().unwrap_or_else(|e| e.into_inner());
        for op in batches.iter().flat_map(|b| b.ops.iter()) {
            let Op::Put { table: Table::Journal, key, value } = op else { continue };
            // A journal key is the entity's record key and then the entry's sequence number (8 bytes).
            let record_key = &key[..key.len().saturating_sub(8)];
            if !tally.counted(record_key) {
                continue;
            }
            let kind = key.split(|b| *b == crate::store::keys::SEP).next().map(String::from_utf8_lossy);
            let (Some(kind), Ok(m)) = (kind, serde_json::from_slice::<Moved>(value)) else { continue };
            if m.seq == 1 {
                *tally.counts.entry((kind.to_string(), m.to)).or_default() += 1;
            } else if m.from != m.to {
                *tally.counts.entry((kind.to_string(), m.from)).or_default() -= 1;
                *tally.counts.entry((kind.to_string(), m.to)).or_default() += 1;
            }
        }
        if !tally.done {
            if let Err(e) = tally.scan_slice(store) {
                tracing::warn!(error = %e, "counting entities by state failed; trying again next commit");
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Rows waiting in the store's work tables, as last counted.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub timers: u64,
    pub outbox: u64,
    pub calls: u64,
}

/// How long a count of the work tables is reused: a million pending timers take about a second to count, so
/// scrapes share one count instead of each scanning the table (a gauge a few seconds old is still a gauge).
const PENDING_TTL: Duration = Duration::from_secs(10);

impl Telemetry {
    pub(crate) fn new() -> Self {
        Self {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            group_size: Histogram::new(GROUP_BUCKETS),
            timer_lateness: Arc::new(Histogram::new(LATENESS_BUCKETS)),
            entities: Mutex::new(Tally::default()),
            pending: Mutex::new(None),
        }
    }
}

impl Engine {
    /// What the engine measures beyond its counters.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// The committer's counters (commits, groups, time spent, failure).
    pub fn commit_stats(&self) -> &crate::store::committer::CommitStats {
        &self.inner.committer.stats
    }

    /// Entities per (kind, state), every state of every definition included (an emptied state reads 0 instead of
    /// vanishing). Until the count's scan is through (nothing committed since the start, or a large store), empty
    /// groups make the committer count the next slices; a caller waits for at most a few seconds of it and the
    /// next one goes on. `None` while the scan is not through.
    pub async fn entities_by_state(&self) -> Option<Counts> {
        let t = &self.inner.telemetry;
        let deadline = Instant::now() + Duration::from_secs(3);
        while t.entities().is_none() && Instant::now() < deadline {
            if self.inner.committer.commit(Batch::new()).await.is_err() {
                break;
            }
        }
        let counts = t.entities()?;
        let mut all: Counts = self
            .registry()
            .kinds()
            .flat_map(|(kind, reg)| {
                reg.versions
                    .values()
                    .flat_map(move |d| d.states.iter().map(move |s| ((kind.clone(), s.name.clone()), 0)))
            })
            .collect();
        all.extend(counts);
        Some(all)
    }

    /// The rows waiting in the work tables (timers, outbox, calls), counted off the async workers at most once per
    /// [`PENDING_TTL`].
    pub async fn pending_work(&self) -> Option<Pending> {
        let t = &self.inner.telemetry;
        if let Some((at, p)) = *t.pending.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < PENDING_TTL {
                return Some(p);
            }
        }
        let store = self.inner.store.clone();
        let counted = tokio::task::spawn_blocking(move || -> Result<Pending, crate::store::Error> {
            Ok(Pending {
                timers: store.count_prefix(Table::Timers, b"")?,
                outbox: store.count_prefix(Table::Outbox, b"")?,
                calls: store.count_prefix(Table::Effects, b"")?,
            })
        })
        .await
        .ok()?
        .ok()?;
        *t.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), counted));
        Some(counted)
    }
}

/// Installs the telemetry on a starting engine's committer and timer loop.
pub(crate) fn install(engine: &Engine) {
    let t = engine.inner.telemetry.clone();
    let lateness = t.timer_lateness.clone();
    let _ = engine.inner.services.timer_lateness.set(Box::new(move |ms| lateness.observe(ms as f64 / 1000.0)));
    let _ = engine.inner.committer.stats.observer.set(t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn record_key(id: usize) -> Vec<u8> {
        format!("k\0e{id:06}\0").into_bytes()
    }

    /// What a commit moving entity `id` from `from` to `to` writes: the record and the journal entry.
    fn moved(id: usize, seq: u64, from: &str, to: &str) -> Batch {
        let mut b = Batch::new();
        b.put(
            Table::Entities,
            record_key(id),
            serde_json::to_vec(&serde_json::json!({"kind": "k", "state": to})).unwrap(),
        );
        let mut jk = record_key(id);
        jk.extend_from_slice(&seq.to_be_bytes());
        b.put(
            Table::Journal,
            jk,
            serde_json::to_vec(&serde_json::json!({"seq": seq, "from": from, "to": to})).unwrap(),
        );
        b
    }

    #[test]
    fn entities_are_counted_a_slice_per_group_and_exactly_despite_commits_meanwhile() {
        let store = MemoryStore::new();
        let n = 2 * TALLY_SLICE + 345;
        store.apply(&(0..n).map(|i| moved(i, 1, "new", "a")).collect::<Vec<_>>()).unwrap();
        let m = Telemetry {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            group_size: Histogram::new(GROUP_BUCKETS),
            timer_lateness: Arc::new(Histogram::new(LATENESS_BUCKETS)),
            entities: Mutex::new(Tally::default()),
            pending: Mutex::new(None),
        };
        // As the committer does: the group is in the store before the observer hears of it.
        let durable = |batches: Vec<Batch>| {
            store.apply(&batches).unwrap();
            m.durable(&store, &batches, Duration::ZERO);
        };
        durable(vec![]);
        assert_eq!(m.entities(), None, "one slice is not the whole count");
        // One entity the scan has passed, one it has not reached, and a new one beyond it.
        durable(vec![moved(10, 2, "a", "b"), moved(n - 10, 2, "a", "b"), moved(n + 1, 1, "new", "a")]);
        durable(vec![moved(11, 2, "a", "b")]);
        let counts = m.entities().expect("three slices count them all");
        assert_eq!(counts.get(&("k".to_string(), "a".to_string())), Some(&(n as i64 + 1 - 3)));
        assert_eq!(counts.get(&("k".to_string(), "b".to_string())), Some(&3));
        // From now on, every commit moves the count.
        durable(vec![moved(n - 10, 3, "b", "c")]);
        assert_eq!(m.entities().unwrap().get(&("k".to_string(), "c".to_string())), Some(&1));
    }
}
