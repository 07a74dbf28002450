//! Memory (issue 9): an idle entity costs nothing in memory, and resident memory with 100,000 entities touched
//! and then idle goes back down.
//!
//!     cargo bench --bench memory              # full run: 100,000 entities, 3 rounds
//!     cargo bench --bench memory -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! Each round is a fresh process on a fresh sled store with a short idle timeout (3 s; the service's default is
//! 30 s, which only makes the wait longer). It touches 100,000 `ledger` entities (`open`: each gets a live actor),
//! waits until every actor has stopped, touches them all again (a deposit each: each actor is started again and
//! loads its record from the store), waits again, and reads `VmRSS` at each step. At the end it waits past the
//! allocator's decay time (jemalloc, `src/lib.rs`, returns unused pages from a background thread) and reads it
//! again, then calls glibc's `malloc_trim`, which only matters for memory glibc's malloc still holds.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use marketflow::clock::ManualClock;
use marketflow::engine::{Engine, EngineConfig};
use serde_json::json;
use support::{median, n, report};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free memory of the allocator; it takes no pointers.
    unsafe { malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() -> bool {
    false
}

/// How long to wait, once idle, for the allocator to hand back what it no longer uses.
fn settle_secs() -> u64 {
    if support::small() {
        1
    } else {
        support::env_usize("BENCH_SETTLE_SECS", 12) as u64
    }
}

fn sizes() -> (usize, usize, u64) {
    if support::small() {
        (5_000, 1, 1)
    } else {
        (support::env_usize("BENCH_ENTITIES", 100_000), support::env_usize("BENCH_ROUNDS", 3), 3)
    }
}

fn child(entities: usize, idle_secs: u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    actix_rt::System::new().block_on(async move {
        let config = EngineConfig { idle_timeout: Duration::from_secs(idle_secs), ..EngineConfig::default() };
        let engine = Engine::start(
            support::open(&tmp.path().join("store")),
            Arc::new(ManualClock::new(Utc::now())),
            common::registry(common::Flaky::new(0)),
            config,
        )
        .await
        .expect("engine starts");
        tokio::time::sleep(Duration::from_millis(500)).await;
        report("rss_start", support::rss_mib());
        let keys: Vec<_> = (0..entities).map(|i| common::key(&format!("acct{i:07}"))).collect();
        let e = &engine;
        let limit = Duration::from_secs(idle_secs * 3 + 30);
        for (cycle, input) in ["open", "deposit"].into_iter().enumerate() {
            support::drive(entities, 4_000, |i| {
                e.send(keys[i].clone(), common::ev(input, json!({"type": input, "amount": 10})))
            })
            .await;
            report(&format!("live_{cycle}"), engine.live_actors() as f64);
            report(&format!("rss_touched_{cycle}"), support::rss_mib());
            let idle = support::wait_until(limit, || engine.live_actors() == 0).await;
            let idle = idle.expect("every actor stops once idle");
            report(&format!("idle_after_{cycle}"), idle.as_secs_f64());
            report(&format!("rss_idle_{cycle}"), support::rss_mib());
        }
        // jemalloc hands pages back from a background thread once they have been unused for its decay time (10 s).
        tokio::time::sleep(Duration::from_secs(settle_secs())).await;
        report("rss_settled", support::rss_mib());
        report("trimmed", if malloc_trim() { 1.0 } else { 0.0 });
        report("rss_trimmed", support::rss_mib());
        report("hwm", support::hwm_mib());
        report("disk", support::dir_bytes(&tmp.path().join("store")) as f64 / (1 << 20) as f64);
        engine.shutdown();
    });
}

fn main() {
    let (entities, rounds, idle_secs) = sizes();
    if let Some(role) = support::child_role() {
        assert_eq!(role, "memory", "unknown child role");
        return child(entities, idle_secs);
    }
    let results: Vec<_> = (0..rounds)
        .map(|round| {
            let r = support::run_child("memory", &[]);
            eprintln!("round {round}: {r:?}");
            r
        })
        .collect();
    let m = |k: &str| median(results.iter().map(|r| *r.get(k).unwrap_or_else(|| panic!("no {k}"))).collect());
    let per_entity = |mib: f64| mib * 1024.0 * 1024.0 / entities as f64;
    let base = m("rss_start");
    println!(
        "| step ({} entities, idle timeout {idle_secs} s, fresh process) | resident memory (median) | live actors |",
        n(entities as f64)
    );
    println!("|---|---:|---:|");
    println!("| engine started, store empty | {base:.0} MiB | 0 |");
    for (cycle, what) in ["touched: `open` to each (created)", "touched again: a deposit to each"].iter().enumerate() {
        println!(
            "| {what} | {:.0} MiB (+{} bytes per entity) | {} |",
            m(&format!("rss_touched_{cycle}")),
            n(per_entity(m(&format!("rss_touched_{cycle}")) - base)),
            n(m(&format!("live_{cycle}")))
        );
        println!(
            "| then idle: every actor stopped (after {:.1} s) | **{:.0} MiB** (+{} bytes per entity) | 0 |",
            m(&format!("idle_after_{cycle}")),
            m(&format!("rss_idle_{cycle}")),
            n(per_entity(m(&format!("rss_idle_{cycle}")) - base))
        );
    }
    println!(
        "| then {} s more idle (the allocator's decay time) | **{:.0} MiB** (+{} bytes per entity) | 0 |",
        settle_secs(),
        m("rss_settled"),
        n(per_entity(m("rss_settled") - base))
    );
    println!(
        "| then glibc's `malloc_trim(0)` (frees only what glibc's malloc holds) | {:.0} MiB (+{} bytes per entity) | 0 |",
        m("rss_trimmed"),
        n(per_entity(m("rss_trimmed") - base))
    );
    println!("| peak | {:.0} MiB | |", m("hwm"));
    println!("| the store on disk | {:.0} MiB | |", m("disk"));
    println!("\nrounds: {rounds}; small: {}", support::small());
}
