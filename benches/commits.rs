//! Durable commits per second: the raw sled batch-and-fsync rate, then engine transitions with group commit
//! for one entity and for many, measured in the same run on the same disk.
//!
//!     cargo bench --bench commits              # full run (writes the table to stdout)
//!     cargo bench --bench commits -- --small   # the CI smoke run (also what `cargo test` runs)
//!
//! Each figure is the median of several rounds; the machine is noisy, so compare ratios within one run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use marketflow::clock::ManualClock;
use marketflow::engine::{Engine, EngineConfig};
use marketflow::store::{Batch, SledStore, Store, Table};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Raw sled: batches of `keys` puts, each applied and fsynced on its own.
fn raw_sled(dir: &std::path::Path, keys: usize, duration: Duration) -> (f64, f64) {
    let store = SledStore::open(dir).expect("store opens");
    let value = vec![7u8; 200];
    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < duration {
        let mut b = Batch::new();
        for k in 0..keys {
            b.put(Table::Meta, format!("raw/{commits}/{k}").into_bytes(), value.clone());
        }
        store.apply(&[b]).expect("apply");
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (commits as f64 / secs, (commits * keys as u64) as f64 / secs)
}

fn engine_run(dir: &std::path::Path, entities: usize, concurrency: usize, total: usize) -> (f64, f64) {
    actix_rt::System::new().block_on(async move {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).expect("store opens"));
        let clock = ManualClock::new(Utc::now());
        let engine =
            Engine::start(store, Arc::new(clock), common::registry(common::Flaky::new(0)), EngineConfig::default())
                .await
                .expect("engine starts");
        // Create the entities first (not measured).
        let mut created = 0;
        while created < entities {
            let n = (entities - created).min(concurrency);
            let futs: Vec<_> = (created..created + n)
                .map(|i| {
                    engine.send(common::key(&format!("b{i}")), common::ev("open", json!({"type": "open", "amount": 1})))
                })
                .collect();
            for r in futures_util::future::join_all(futs).await {
                r.expect("open");
            }
            created += n;
        }
        let groups_before = engine.commit_stats().groups.load(std::sync::atomic::Ordering::Relaxed);
        let commits_before = engine.commit_stats().commits.load(std::sync::atomic::Ordering::Relaxed);
        let start = Instant::now();
        let mut sent = 0usize;
        let mut next = 0usize;
        while sent < total {
            let n = (total - sent).min(concurrency);
            let futs: Vec<_> = (0..n)
                .map(|_| {
                    let i = next % entities;
                    next += 1;
                    engine.send(
                        common::key(&format!("b{i}")),
                        common::ev(&format!("d{next}"), json!({"type": "deposit", "amount": 1})),
                    )
                })
                .collect();
            for r in futures_util::future::join_all(futs).await {
                r.expect("deposit");
            }
            sent += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let groups = engine.commit_stats().groups.load(std::sync::atomic::Ordering::Relaxed) - groups_before;
        let commits = engine.commit_stats().commits.load(std::sync::atomic::Ordering::Relaxed) - commits_before;
        engine.shutdown();
        (total as f64 / secs, commits as f64 / groups.max(1) as f64)
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, as a smoke test.
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small") || !args.iter().any(|a| a == "--bench");
    let rounds = if small { 1 } else { 5 };
    let secs = Duration::from_millis(if small { 300 } else { 2000 });
    let (many_entities, many_total) = if small { (1_000, 5_000) } else { (10_000, 100_000) };
    let one_total = if small { 300 } else { 3_000 };

    let mut raw1 = vec![];
    let mut raw100 = vec![];
    let mut one = vec![];
    let mut many = vec![];
    let mut group = vec![];
    for _ in 0..rounds {
        let d = tempfile::tempdir().expect("tempdir");
        raw1.push(raw_sled(&d.path().join("r1"), 1, secs).0);
        raw100.push(raw_sled(&d.path().join("r100"), 100, secs).1);
        one.push(engine_run(&d.path().join("one"), 1, 1, one_total).0);
        let (rate, g) = engine_run(&d.path().join("many"), many_entities, 2_000, many_total);
        many.push(rate);
        group.push(g);
    }
    let (r1, r100, o, m, g) = (median(raw1), median(raw100), median(one), median(many), median(group));
    println!("| measurement | median | ratio |");
    println!("|---|---:|---:|");
    println!("| raw sled: 1-key batch + flush + fdatasync | {r1:.0} commits/s | 1.00 |");
    println!("| raw sled: 100-key batches + flush + fdatasync | {r100:.0} keys/s | |");
    println!("| engine: 1 entity, one input at a time | {o:.0} transitions/s | {:.2} of raw 1-key |", o / r1);
    println!(
        "| engine: {many_entities} entities, 2,000 in flight | {m:.0} transitions/s | {:.2} of raw 100-key keys/s; {:.1}x raw 1-key |",
        m / r100,
        m / r1
    );
    println!("| engine: mean group-commit size | {g:.0} commits per fsync | |");
    println!("\nrounds: {rounds}; small: {small}");
}
