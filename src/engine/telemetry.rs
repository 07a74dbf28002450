//! What the engine measures beyond its counters, for `/metrics`: histograms of the group commits and of the
//! timers' lateness, entities by kind and state (kept in the store with the commits: [`super::by_state`]), and
//! the rows waiting in the work tables. The HTTP adapter renders them; nothing outside the engine reads the store
//! to derive them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Engine;
use crate::store::committer::Observer;
use crate::store::{Batch, Table};

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
/// Entities by state are not here: they are a read model in the store ([`super::by_state`]), moved by the batch
/// of every transition, so the count is exact (it is written with the transition, atomically) and will be the
/// same for every node that shares the database; a scrape reads the counters, never the entities.
#[derive(Debug)]
pub struct Telemetry {
    /// Group commit latency (apply + fsync), seconds.
    pub commit_seconds: Histogram,
    /// Batches per group commit.
    pub group_size: Histogram,
    /// How late timers fired, service seconds; shared with the hook of the engine's timer loop.
    pub timer_lateness: Arc<Histogram>,
    /// The last count of the work tables and when it was taken.
    pending: Mutex<Option<(Instant, Pending)>>,
}

impl Observer for Telemetry {
    fn durable(&self, batches: &[Batch], took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.group_size.observe(batches.len() as f64);
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
    /// vanishing), as the store's counters hold them ([`super::by_state`]): a read of a few keys. `None` if the
    /// store cannot be read.
    pub async fn entities_by_state(&self) -> Option<Counts> {
        let counts = match super::by_state::read(&*self.inner.store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the entities by state failed");
                return None;
            }
        };
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
        // Off the async workers: sled counts on the asking thread (a million timers take a second).
        let rt = tokio::runtime::Handle::current();
        let counted = tokio::task::spawn_blocking(move || -> Result<Pending, crate::store::Error> {
            Ok(Pending {
                timers: rt.block_on(store.count_prefix(Table::Timers, b""))?,
                outbox: rt.block_on(store.count_prefix(Table::Outbox, b""))?,
                calls: rt.block_on(store.count_prefix(Table::Effects, b""))?,
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

    #[test]
    fn durable_groups_are_timed_and_sized() {
        let t = Telemetry::new();
        t.durable(&[Batch::new(), Batch::new(), Batch::new()], Duration::from_millis(2));
        let mut out = String::new();
        t.group_size.render(&mut out, "g", "");
        assert!(out.contains("g_bucket{le=\"2\"} 0\ng_bucket{le=\"4\"} 1\n"), "{out}");
        assert!(out.contains("g_count 1"), "{out}");
        let mut out = String::new();
        t.commit_seconds.render(&mut out, "c", "");
        assert!(out.contains("c_bucket{le=\"0.0025\"} 1\n") && out.contains("c_sum 0.002\n"), "{out}");
    }
}
