//! What the benchmarks share: the small/full switch, medians and percentiles, resident memory, the raw sled
//! baseline, a bulk loader that writes exactly what the engine would, and a steady window of inputs in flight.
#![allow(dead_code)]

pub mod load;
pub mod tick;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use marketflow::engine::{step, EntityKey, Input, Registry};
use marketflow::store::{Batch, SledStore, Store, Table};

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench binaries without it, and then (or with
/// `--small`) every bench runs its small mode, a smoke test of a few seconds.
pub fn small() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--small") || !args.iter().any(|a| a == "--bench")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`-th percentile (0..=100) of unsorted samples (nearest rank).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    assert!(!v.is_empty(), "percentile of nothing");
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A line of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Resident memory now, in MiB.
pub fn rss_mib() -> f64 {
    status_kib("VmRSS:") as f64 / 1024.0
}

/// Peak resident memory of this process, in MiB.
pub fn hwm_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

/// Thousands separators for the tables.
pub fn n(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Raw sled on its own store: batches of `keys` puts of `value_len` bytes, each applied, flushed and fdatasynced
/// through [`SledStore`] (the engine's own write path, without the engine). Keys are spread over the key space
/// as the engine's are. Returns (commits/s, keys/s).
pub fn raw_sled(dir: &Path, keys: usize, value_len: usize, duration: Duration) -> (f64, f64) {
    let store = SledStore::open_with_cache(dir, cache_mb()).expect("store opens");
    let value = vec![7u8; value_len];
    let start = Instant::now();
    let mut commits = 0u64;
    let mut k = 0u64;
    while start.elapsed() < duration {
        let mut b = Batch::new();
        for _ in 0..keys {
            // A multiplicative hash: consecutive writes land all over the tree, not at its end.
            let spread = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            b.put(Table::Meta, spread.to_be_bytes().to_vec(), value.clone());
            k += 1;
        }
        store.apply(&[b]).expect("apply");
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = store.close();
    (commits as f64 / secs, (commits * keys as u64) as f64 / secs)
}

/// Writes entities straight into `store`, each by the engine's own step function (no actor, no committer):
/// record, journal entry, idempotency record and timer rows are byte for byte what the engine commits for the
/// same input at the same service time. `input(i)` gives entity `i`'s key, first input and its service time.
/// Batches of `per_batch` entities share one apply + fsync. Returns the number of keys written.
pub fn bulk_load(
    store: &dyn Store,
    registry: &Registry,
    count: usize,
    per_batch: usize,
    mut input: impl FnMut(usize) -> (EntityKey, Input, DateTime<Utc>),
) -> u64 {
    let mut keys = 0u64;
    let mut i = 0;
    while i < count {
        let mut batch = Batch::new();
        for j in i..(i + per_batch).min(count) {
            let (key, inp, now) = input(j);
            let reg = registry.kind(&key.kind).expect("a registered kind");
            let s = step::step(&*reg.workflow, &reg.current, &key, None, &inp, now).expect("the first step runs");
            let b = s.batch.expect("the first input creates the entity");
            keys += b.len() as u64;
            batch.extend(b);
        }
        store.apply(&[batch]).expect("bulk apply");
        i += per_batch;
    }
    keys
}

/// Runs `total` inputs with `window` of them in flight at all times (a new one starts as soon as one ends), and
/// returns the elapsed real time. `make(i)` builds input `i`; every outcome must be `Ok`.
pub async fn drive<F, Fut, T, E>(total: usize, window: usize, mut make: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for i in 0..total {
        if inflight.len() >= window {
            if let Some(Err(e)) = inflight.next().await {
                panic!("an input failed: {e}");
            }
        }
        inflight.push(make(i));
    }
    while let Some(r) = inflight.next().await {
        if let Err(e) = r {
            panic!("an input failed: {e}");
        }
    }
    start.elapsed()
}

/// The sled page cache the benches open stores with: `MARKETFLOW_SLED_CACHE_MB` as the service reads it, or the
/// service's default, so that one binary can be measured with several sizes.
pub fn cache_mb() -> u64 {
    env_usize("MARKETFLOW_SLED_CACHE_MB", marketflow::store::sled_store::default_cache_mb() as usize) as u64
}

/// Opens a sled store behind the trait, with the page cache of [`cache_mb`].
pub fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open_with_cache(dir, cache_mb()).expect("store opens"))
}

/// Waits in real time until `cond` holds or `limit` passes; returns the time waited, `None` on timeout.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(start.elapsed())
}

/// Mean size in bytes of the values of `table` (sampled), to size the raw baseline like the engine's writes.
pub fn mean_value_len(store: &dyn Store, table: Table, sample: usize) -> f64 {
    let rows = marketflow::store::wait(store.scan(
        table,
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        sample,
        false,
    ))
    .expect("scan");
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().map(|(k, v)| (k.len() + v.len()) as f64).sum::<f64>() / rows.len() as f64
}

/// A number from the environment (to explore a parameter without editing the bench), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Set in a child's environment to the part of a bench it runs; absent in the parent.
pub const CHILD_ENV: &str = "BENCH_CHILD";

/// The part of the bench this process runs, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// A result line of a child for its parent (`RESULT name value`).
pub fn report(name: &str, value: f64) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "RESULT {name} {value}");
    let _ = out.flush();
}

/// Runs this bench binary again as a child (a fresh process: its own memory, its own start-up), with `role` and
/// `env`, and returns the results it reported. Its stderr goes to ours. Panics if it fails.
pub fn run_child(role: &str, env: &[(&str, String)]) -> std::collections::HashMap<String, f64> {
    let exe = std::env::current_exe().expect("current exe");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).env(CHILD_ENV, role).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the child starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child `{role}` failed with {}; its output:\n{stdout}", out.status);
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Copies a directory tree (a store, to restart from the same state in every round).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Bytes of a directory tree on disk.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += dir_bytes(&entry.path()),
            Ok(_) => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => {}
        }
    }
    total
}
