//! Durable transitions per second with 100,000 entities and group commit, next to the raw sled batch-and-fsync
//! rate measured in the same run on the same disk (issue 9, first target).
//!
//!     cargo bench --bench transitions              # full run: 100,000 entities, 5 rounds
//!     cargo bench --bench transitions -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! Each round: a fresh engine on a fresh sled store: 100,000 ledger entities created through the engine
//! (`open`, which also sets the entity's interest timer), then two deposits per entity in round-robin order with a
//! steady window of inputs in flight. Every input is acknowledged only after its group's fdatasync. Then raw
//! sled on the same disk: batches of 1, 100 and 1,000 keys with values the mean size of the engine's rows, each
//! applied, flushed and fdatasynced on its own; the 1,000-key rate is the baseline of the ratio.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use marketflow::clock::ManualClock;
use marketflow::engine::{Engine, EngineConfig};
use marketflow::store::Table;
use serde_json::json;
use support::{median, n};

struct EngineRound {
    create_rate: f64,
    rate: f64,
    commits_per_group: f64,
    keys_per_transition: f64,
    value_len: f64,
    group_ms: f64,
}

fn engine_round(dir: &std::path::Path, entities: usize, per_entity: usize, window: usize) -> EngineRound {
    actix_rt::System::new().block_on(async move {
        let store = support::open(dir);
        let clock = ManualClock::new(Utc::now());
        let engine = Engine::start(
            store.clone(),
            Arc::new(clock),
            common::registry(common::Flaky::new(0)),
            EngineConfig::default(),
        )
        .await
        .expect("engine starts");
        let keys: Vec<_> = (0..entities).map(|i| common::key(&format!("acct{i:07}"))).collect();
        let e = &engine;
        let created = support::drive(entities, window, |i| {
            e.send(keys[i].clone(), common::ev("open", json!({"type": "open", "amount": 100})))
        })
        .await;
        let stats = engine.commit_stats();
        let (g0, c0, us0) = (
            stats.groups.load(Ordering::Relaxed),
            stats.commits.load(Ordering::Relaxed),
            stats.group_micros.load(Ordering::Relaxed),
        );
        let total = entities * per_entity;
        let took = support::drive(total, window, |i| {
            e.send(
                keys[i % entities].clone(),
                common::ev(&format!("dep{}", i / entities), json!({"type": "deposit", "amount": 1})),
            )
        })
        .await;
        let groups = stats.groups.load(Ordering::Relaxed) - g0;
        let commits = stats.commits.load(Ordering::Relaxed) - c0;
        let micros = stats.group_micros.load(Ordering::Relaxed) - us0;
        // A deposit writes the entity record, its journal entry and its idempotency record.
        let value_len = (support::mean_value_len(&*store, Table::Entities, 200)
            + support::mean_value_len(&*store, Table::Journal, 200)
            + support::mean_value_len(&*store, Table::Idempotency, 200))
            / 3.0;
        engine.shutdown();
        EngineRound {
            create_rate: entities as f64 / created.as_secs_f64(),
            rate: total as f64 / took.as_secs_f64(),
            commits_per_group: commits as f64 / groups.max(1) as f64,
            keys_per_transition: 3.0,
            value_len,
            group_ms: micros as f64 / 1000.0 / groups.max(1) as f64,
        }
    })
}

fn main() {
    let small = support::small();
    let rounds = support::env_usize("BENCH_ROUNDS", if small { 1 } else { 5 });
    let raw_secs = Duration::from_millis(if small { 300 } else { 2_000 });
    let (entities, per_entity) = if small { (2_000, 2) } else { (100_000, 2) };
    let window = support::env_usize("BENCH_WINDOW", 4_000);

    let (mut raw1, mut raw100, mut raw1000) = (vec![], vec![], vec![]);
    let (mut create, mut rate, mut group, mut keys_s, mut group_ms, mut ratio) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut value_len = 0;
    for round in 0..rounds {
        let d = tempfile::tempdir().expect("tempdir");
        let r = engine_round(&d.path().join("engine"), entities, per_entity, window);
        value_len = r.value_len.round() as usize;
        let r1 = support::raw_sled(&d.path().join("r1"), 1, value_len, raw_secs);
        let r100 = support::raw_sled(&d.path().join("r100"), 100, value_len, raw_secs);
        let r1000 = support::raw_sled(&d.path().join("r1000"), 1_000, value_len, raw_secs);
        eprintln!(
            "round {round}: engine {:.0} transitions/s ({:.0} creations/s), groups of {:.0}; raw 1-key {:.0} commits/s, \
             100-key {:.0} keys/s, 1000-key {:.0} keys/s",
            r.rate, r.create_rate, r.commits_per_group, r1.0, r100.1, r1000.1
        );
        raw1.push(r1.0);
        raw100.push(r100.1);
        raw1000.push(r1000.1);
        create.push(r.create_rate);
        rate.push(r.rate);
        group.push(r.commits_per_group);
        keys_s.push(r.rate * r.keys_per_transition);
        group_ms.push(r.group_ms);
        ratio.push(r.rate * r.keys_per_transition / r1000.1);
    }
    let (r1, r100, r1000) = (median(raw1), median(raw100), median(raw1000));
    let (c, m, g, k, gm, q) =
        (median(create), median(rate), median(group), median(keys_s), median(group_ms), median(ratio));
    println!("| measurement | median | ratio |");
    println!("|---|---:|---:|");
    println!("| raw sled: 1-key batch + flush + fdatasync | {} commits/s | |", n(r1));
    println!("| raw sled: 100-key batches ({value_len}-byte rows) + flush + fdatasync | {} keys/s | |", n(r100));
    println!(
        "| raw sled: 1,000-key batches ({value_len}-byte rows) + flush + fdatasync (**baseline**) | {} keys/s = {} commits/s | 1.00 |",
        n(r1000),
        n(r1000 / 1000.0)
    );
    println!(
        "| engine: {} entities, {} deposits in flight | **{} transitions/s** | {:.2} (transitions ÷ raw keys) |",
        n(entities as f64),
        n(window as f64),
        n(m),
        m / r1000
    );
    println!("| engine: the same, in keys written (3 per deposit) | {} keys/s | **{q:.2}** |", n(k));
    println!(
        "| engine: creating the {} entities (`open`, 4 keys each) | {} transitions/s | |",
        n(entities as f64),
        n(c)
    );
    println!("| engine: mean group commit | {g:.0} transitions, {gm:.1} ms per apply + flush + fdatasync | |");
    println!("\nrounds: {rounds}; small: {small}; window: {window}");
    if small {
        assert!(m > 0.0 && g >= 1.0, "the smoke run made no progress");
    }
}
