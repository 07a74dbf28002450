//! Recovery (issue 9): a restart with 1,000,000 entities and their timers on disk, 100,000 of the timers
//! overdue. How long from `Engine::start` until the engine answers its first input, and until the overdue
//! backlog has fired.
//!
//!     cargo bench --bench recovery              # full run: 1,000,000 entities, 100,000 timers overdue
//!     cargo bench --bench recovery -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! Set-up (not measured): the store is written, in a child process, by the engine's own step function
//! (`support::bulk_load`): a
//! `ledger` entity per id with its `interest` timer, every tenth of them opened two hours ago (so its timer is an
//! hour overdue), the others opened a day from now; then closed. Each round copies that store and starts a fresh
//! process on it (the restart): it opens the sled store, starts the engine on the system clock, sends one input
//! to a new entity and one to an existing entity, and waits until the overdue timers have all fired.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use marketflow::clock::SystemClock;
use marketflow::engine::{Engine, EngineConfig};
use serde_json::json;
use support::{median, n, report};

fn sizes() -> (usize, usize) {
    if support::small() {
        (20_000, 1)
    } else {
        (support::env_usize("BENCH_ENTITIES", 1_000_000), support::env_usize("BENCH_ROUNDS", 3))
    }
}

/// Every tenth entity's timer is overdue.
fn overdue(i: usize) -> bool {
    i % 10 == 0
}

fn child_recover(entities: usize) {
    let dir = PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR"));
    let backlog = (0..entities).filter(|i| overdue(*i)).count();
    actix_rt::System::new().block_on(async move {
        let t = Instant::now();
        let store = support::open(&dir);
        let opened = t.elapsed();
        let engine = Engine::start(
            store,
            Arc::new(SystemClock),
            common::registry(common::Flaky::new(0)),
            EngineConfig::default(),
        )
        .await
        .expect("engine starts");
        let started = t.elapsed();
        let fresh = engine.send(common::key("newcomer"), common::ev("open", json!({"type": "open", "amount": 5})));
        fresh.await.expect("the first input is answered");
        let first = t.elapsed();
        let existing = common::key(&format!("acct{:07}", 1));
        engine
            .send(existing, common::ev("dep-after-restart", json!({"type": "deposit", "amount": 1})))
            .await
            .expect("an input to an existing entity is answered");
        let second = t.elapsed();
        let fired = || engine.stats().timers_fired.load(Ordering::Relaxed) as usize;
        support::wait_until(Duration::from_secs(300), || fired() >= backlog).await.expect("the backlog fired");
        let drained = t.elapsed();
        report("open", opened.as_secs_f64());
        report("start", (started - opened).as_secs_f64());
        report("first", (first - opened).as_secs_f64());
        report("second", (second - opened).as_secs_f64());
        report("backlog", (drained - opened).as_secs_f64());
        report("rss", support::rss_mib());
        report("hwm", support::hwm_mib());
        engine.shutdown();
    });
}

/// The `load` child: writes the store in a process of its own, so that the parent stays small.
fn child_load(entities: usize) {
    let dir = PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR"));
    let now: DateTime<Utc> = Utc::now();
    let load = Instant::now();
    let store = support::open(&dir);
    let reg = common::registry(common::Flaky::new(0));
    let keys = support::bulk_load(&*store, &reg, entities, 5_000, |i| {
        let at = if overdue(i) { now - TimeDelta::hours(2) } else { now + TimeDelta::days(1) };
        let key = common::key(&format!("acct{i:07}"));
        (key, common::ev("open", json!({"type": "open", "amount": 100})), at)
    });
    store.close().expect("close");
    report("keys", keys as f64);
    report("secs", load.elapsed().as_secs_f64());
}

fn main() {
    let (entities, rounds) = sizes();
    match support::child_role().as_deref() {
        Some("recover") => return child_recover(entities),
        Some("load") => return child_load(entities),
        Some(other) => panic!("unknown child role {other}"),
        None => {}
    }
    let small = support::small();
    let tmp = tempfile::tempdir().expect("tempdir");
    let golden = tmp.path().join("golden");
    let loaded = support::run_child("load", &[("BENCH_DIR", golden.display().to_string())]);
    let (keys, load_secs) = (loaded["keys"], loaded["secs"]);
    let disk = support::dir_bytes(&golden) as f64 / (1 << 20) as f64;
    eprintln!("loaded {entities} entities ({keys} keys, {disk:.0} MiB) in {load_secs:.1} s");
    let backlog = (0..entities).filter(|i| overdue(*i)).count();
    let mut results = Vec::new();
    for round in 0..rounds {
        let dir = tmp.path().join(format!("round{round}"));
        support::copy_dir(&golden, &dir);
        let r = support::run_child("recover", &[("BENCH_DIR", dir.display().to_string())]);
        eprintln!("round {round}: {r:?}");
        std::fs::remove_dir_all(&dir).expect("remove the round's copy");
        results.push(r);
    }
    let m = |k: &str| median(results.iter().map(|r| *r.get(k).unwrap_or_else(|| panic!("no {k}"))).collect());
    let ms = |s: f64| format!("{:.0} ms", s * 1e3);
    println!("| measurement (restart: a fresh process on a copy of the store) | median | target |");
    println!("|---|---:|---:|");
    println!(
        "| store: {} entities with a pending timer each, {} of them overdue | {} MiB on disk | |",
        n(entities as f64),
        n(backlog as f64),
        n(disk)
    );
    println!("| opening the sled store | {} | |", ms(m("open")));
    println!("| `Engine::start` | {} | |", ms(m("start")));
    println!("| from `Engine::start` to the first input answered (a new entity) | **{}** | < 2 s |", ms(m("first")));
    println!("| from `Engine::start` to an input to an existing entity answered | {} | |", ms(m("second")));
    println!(
        "| from `Engine::start` to all {} overdue timers fired | **{}** ({} timers/s) | < 10 s |",
        n(backlog as f64),
        ms(m("backlog")),
        n(backlog as f64 / m("backlog"))
    );
    println!("| resident memory after the backlog: now / peak | {:.0} / {:.0} MiB | |", m("rss"), m("hwm"));
    println!("\nsmall: {small}; rounds: {rounds}; set-up (bulk load) {load_secs:.1} s");
}
