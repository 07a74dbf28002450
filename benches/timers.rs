//! Durable timers at scale (issue 9): 1,000,000 pending timers; the firing rate when 100,000 and when all
//! 1,000,000 become due at once; the lateness of timers when the engine is not in backlog; resident memory.
//!
//!     cargo bench --bench timers              # full run: 1,000,000 entities with a pending timer each
//!     cargo bench --bench timers -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! Set-up (not measured as engine work): 1,000,000 `ledger` entities are written straight into a sled store by
//! the engine's own step function (`support::bulk_load`: the same record, journal entry, idempotency record and
//! timer row the engine commits for `open`), so each has its `interest` timer pending, due one hour after it
//! opened; the entities open in ten slices a minute apart, so that a tenth of the timers is due at each minute.
//! Then two fresh processes open that store:
//! - `pending`, on the system clock (the timers are due a day later): resident memory with all of them pending;
//!   then timers of another workflow (`tick`, `support/tick.rs`) due spread over a few seconds, each of whose
//!   firing starts an external call once the firing is durable; the call handler records its lateness.
//! - `fire`, on a manual clock: the clock moves to the due time of three slices in turn (100,000 due at once
//!   each), then to a time when all 1,000,000 are due at once. Every firing is a real durable transition (the
//!   timer row is deleted, interest is paid, the timer is set again an hour later, one commit with fdatasync).
//!
//! The store is written by a third child (`load`), so that each measuring process starts fresh.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use marketflow::clock::{Clock, ManualClock, SystemClock};
use marketflow::engine::{Engine, EngineConfig, EntityKey, Registry};
use serde_json::json;
use support::{median, n, report};

const SLICES: usize = 10;

struct Params {
    entities: usize,
    /// Slices fired one at a time (each a tenth of the timers due at once); the rest fire with the others later.
    slices: usize,
    rounds_all: usize,
    lateness_timers: usize,
    lateness_spread: Duration,
    lateness_rounds: usize,
}

fn params() -> Params {
    if support::small() {
        Params {
            entities: 20_000,
            slices: 3,
            rounds_all: 1,
            lateness_timers: 1_000,
            lateness_spread: Duration::from_secs(2),
            lateness_rounds: 1,
        }
    } else {
        Params {
            entities: support::env_usize("BENCH_ENTITIES", 1_000_000),
            slices: support::env_usize("BENCH_SLICES", 3),
            rounds_all: support::env_usize("BENCH_ROUNDS", 1),
            lateness_timers: 20_000,
            lateness_spread: Duration::from_secs(10),
            lateness_rounds: 3,
        }
    }
}

fn registry(observer: support::tick::Observer) -> Registry {
    let mut r = common::registry(common::Flaky::new(0));
    support::tick::register(&mut r, observer);
    r
}

fn ledger(i: usize) -> EntityKey {
    common::key(&format!("acct{i:07}"))
}

/// When entity `i` opened (service time): slice `i % SLICES` opened `i % SLICES` minutes after `t0`.
fn opened_at(t0: DateTime<Utc>, i: usize) -> DateTime<Utc> {
    t0 + TimeDelta::minutes((i % SLICES) as i64)
}

fn env_t0() -> DateTime<Utc> {
    let ms: i64 = std::env::var("BENCH_T0").expect("BENCH_T0").parse().expect("BENCH_T0 is a number");
    DateTime::from_timestamp_millis(ms).expect("valid t0")
}

fn env_dir() -> PathBuf {
    PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR"))
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        // The default (30 s) in the full run; the smoke run does not wait that long for actors to stop.
        idle_timeout: Duration::from_secs(
            support::env_usize("BENCH_IDLE_SECS", if support::small() { 2 } else { 30 }) as u64
        ),
        ..EngineConfig::default()
    }
}

/// The `pending` child: memory with every timer pending, then lateness out of backlog on the system clock.
fn child_pending(p: &Params) {
    actix_rt::System::new().block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let lateness = Arc::new(Mutex::new(Vec::new()));
        let observer = support::tick::Observer { clock: clock.clone(), lateness_ms: lateness.clone() };
        let engine = Engine::start(support::open(&env_dir()), clock.clone(), registry(observer), engine_config())
            .await
            .expect("engine starts");
        tokio::time::sleep(Duration::from_secs(3)).await;
        report("rss_pending", support::rss_mib());
        for round in 0..p.lateness_rounds {
            let first_due = Utc::now() + TimeDelta::seconds(3);
            let step = p.lateness_spread.as_secs_f64() / p.lateness_timers as f64;
            let e = &engine;
            support::drive(p.lateness_timers, 2_000, |i| {
                let at = first_due + TimeDelta::microseconds((i as f64 * step * 1e6) as i64);
                let key = EntityKey::new("tick", &format!("r{round}-{i}")).expect("key");
                e.send(key, common::ev("arm", json!({"type": "arm", "at": at})))
            })
            .await;
            let limit = p.lateness_spread + Duration::from_secs(60);
            let done = support::wait_until(limit, || lateness.lock().unwrap().len() >= p.lateness_timers).await;
            assert!(done.is_some(), "the tick timers did not all fire within {limit:?}");
            let mut v = std::mem::take(&mut *lateness.lock().unwrap());
            report(&format!("late_p50_{round}"), support::percentile(&mut v, 50.0));
            report(&format!("late_p99_{round}"), support::percentile(&mut v, 99.0));
            report(&format!("late_max_{round}"), support::percentile(&mut v, 100.0));
        }
        report("rss_after_lateness", support::rss_mib());
        engine.shutdown();
    });
}

/// The `fire` child: on a manual clock, 100,000 due at once (each slice in turn), then all at once.
fn child_fire(p: &Params) {
    actix_rt::System::new().block_on(async move {
        let t0 = env_t0();
        let manual = ManualClock::new(t0 + TimeDelta::minutes(59));
        let clock: Arc<dyn Clock> = Arc::new(manual.clone());
        let observer = support::tick::Observer { clock: clock.clone(), lateness_ms: Arc::default() };
        let config = engine_config();
        let idle = config.idle_timeout;
        let engine =
            Engine::start(support::open(&env_dir()), clock, registry(observer), config).await.expect("engine starts");
        tokio::time::sleep(Duration::from_secs(1)).await;
        report("rss_before", support::rss_mib());
        let fired = || engine.stats().timers_fired.load(Ordering::Relaxed) as usize;
        let per_slice = p.entities / SLICES;
        let limit = Duration::from_secs(900);
        let cs = engine.commit_stats();
        let group_counters = || {
            (
                cs.groups.load(Ordering::Relaxed),
                cs.commits.load(Ordering::Relaxed),
                cs.group_micros.load(Ordering::Relaxed),
            )
        };
        let sync_counters = || (cs.write_micros.load(Ordering::Relaxed), cs.sync_micros.load(Ordering::Relaxed));
        for k in 0..p.slices {
            let target = fired() + per_slice;
            let (g0, c0, us0) = group_counters();
            let (w0, sus0) = sync_counters();
            let start = Instant::now();
            manual.set(t0 + TimeDelta::hours(1) + TimeDelta::minutes(k as i64));
            support::wait_until(limit, || fired() >= target).await.expect("a slice fired");
            let secs = start.elapsed().as_secs_f64();
            let (g1, c1, us1) = group_counters();
            let groups = (g1 - g0).max(1) as f64;
            let (w1, sus1) = sync_counters();
            eprintln!(
                "slice {k}: {per_slice} timers in {secs:.2} s, {:.0}/s; {:.0} commits per group, {:.2} ms per group; \
                 writing {:.0} % of the time, fsyncing {:.0} %",
                per_slice as f64 / secs,
                (c1 - c0) as f64 / groups,
                (us1 - us0) as f64 / 1e3 / groups,
                (w1 - w0) as f64 / 1e4 / secs,
                (sus1 - sus0) as f64 / 1e4 / secs,
            );
            report(&format!("slice_rate_{k}"), per_slice as f64 / secs);
        }
        report("hwm_slices", support::hwm_mib());
        for r in 0..p.rounds_all {
            // The slices fired so far set their timers again an hour after their minute, the others are still due
            // at theirs: an hour and ten minutes later, all of them are due at once.
            let target = fired() + p.entities;
            let (g0, c0, us0) = group_counters();
            let start = Instant::now();
            manual.set(t0 + TimeDelta::hours(2 + r as i64) + TimeDelta::minutes(SLICES as i64));
            support::wait_until(limit, || fired() >= target).await.expect("all fired");
            let secs = start.elapsed().as_secs_f64();
            eprintln!("all at once #{r}: {} timers in {secs:.2} s, {:.0}/s", p.entities, p.entities as f64 / secs);
            report(&format!("all_rate_{r}"), p.entities as f64 / secs);
            let groups = (cs.groups.load(Ordering::Relaxed) - g0).max(1) as f64;
            report(&format!("all_group_{r}"), (cs.commits.load(Ordering::Relaxed) - c0) as f64 / groups);
            report(&format!("all_group_ms_{r}"), (cs.group_micros.load(Ordering::Relaxed) - us0) as f64 / 1e3 / groups);
            report(&format!("all_busy_{r}"), (cs.group_micros.load(Ordering::Relaxed) - us0) as f64 / 1e6 / secs);
            report(&format!("all_rss_{r}"), support::rss_mib());
        }
        report("hwm", support::hwm_mib());
        let stopped = support::wait_until(idle * 2 + Duration::from_secs(10), || engine.live_actors() == 0).await;
        report("idle_wait", stopped.map(|d| d.as_secs_f64()).unwrap_or(-1.0));
        report("rss_idle", support::rss_mib());
        report("mean_late_ms", engine.stats().timer_lateness_ms.load(Ordering::Relaxed) as f64 / fired().max(1) as f64);
        engine.shutdown();
    });
}

/// The `load` child: writes the store (in a process of its own, so that the parent stays small).
fn child_load(p: &Params) {
    let t0 = env_t0();
    let load = Instant::now();
    let store = support::open(&env_dir());
    let reg = registry(support::tick::Observer { clock: Arc::new(SystemClock), lateness_ms: Arc::default() });
    let keys = support::bulk_load(&*store, &reg, p.entities, 5_000, |i| {
        (ledger(i), common::ev("open", json!({"type": "open", "amount": 100})), opened_at(t0, i))
    });
    store.close().expect("close");
    report("keys", keys as f64);
    report("secs", load.elapsed().as_secs_f64());
}

fn main() {
    let p = params();
    match support::child_role().as_deref() {
        Some("load") => return child_load(&p),
        Some("pending") => return child_pending(&p),
        Some("fire") => return child_fire(&p),
        Some(other) => panic!("unknown child role {other}"),
        None => {}
    }
    let small = support::small();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    // A day ahead of the real clock, so that on the system clock every ledger timer stays pending.
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() + 86_400, 0).expect("t0");
    let env = [("BENCH_DIR", dir.display().to_string()), ("BENCH_T0", t0.timestamp_millis().to_string())];
    let loaded = support::run_child("load", &env);
    let (keys, load_secs) = (loaded["keys"], loaded["secs"]);
    eprintln!("loaded {} entities ({} keys) in {load_secs:.1} s", p.entities, keys);
    let disk = support::dir_bytes(&dir) as f64 / (1 << 20) as f64;
    let pending = support::run_child("pending", &env);
    let fire = support::run_child("fire", &env);

    let get = |m: &std::collections::HashMap<String, f64>, k: &str| {
        *m.get(k).unwrap_or_else(|| panic!("the child did not report {k}"))
    };
    let series = |m: &std::collections::HashMap<String, f64>, prefix: &str, count: usize| -> Vec<f64> {
        (0..count).map(|i| get(m, &format!("{prefix}{i}"))).collect()
    };
    let slices = series(&fire, "slice_rate_", p.slices);
    let all = series(&fire, "all_rate_", p.rounds_all);
    let p99 = series(&pending, "late_p99_", p.lateness_rounds);
    let p50 = series(&pending, "late_p50_", p.lateness_rounds);
    let max = series(&pending, "late_max_", p.lateness_rounds);
    let per_slice = p.entities / SLICES;
    println!("| measurement | median | target |");
    println!("|---|---:|---:|");
    println!("| pending timers (one per entity, on disk: {disk:.0} MiB) | {} | 1,000,000 |", n(p.entities as f64));
    println!(
        "| firing, {} due at once ({} slices in turn) | **{} timers/s** (min {}, max {}) | ≥ 20,000/s |",
        n(per_slice as f64),
        p.slices,
        n(median(slices.clone())),
        n(slices.iter().cloned().fold(f64::MAX, f64::min)),
        n(slices.iter().cloned().fold(0.0, f64::max))
    );
    println!(
        "| firing, all {} due at once ({} rounds) | **{} timers/s** | ≥ 20,000/s |",
        n(p.entities as f64),
        p.rounds_all,
        n(median(all.clone()))
    );
    println!(
        "| the same: mean group commit (one apply + fdatasync); share of the time the committer is busy | {:.0} firings, {:.1} ms; {:.0} % | |",
        median(series(&fire, "all_group_", p.rounds_all)),
        median(series(&fire, "all_group_ms_", p.rounds_all)),
        100.0 * median(series(&fire, "all_busy_", p.rounds_all))
    );
    println!(
        "| lateness out of backlog ({} timers due over {} s, {} rounds): p50 / **p99** / max | {:.1} / **{:.1}** / {:.1} ms | p99 < 100 ms |",
        n(p.lateness_timers as f64),
        p.lateness_spread.as_secs(),
        p.lateness_rounds,
        median(p50),
        median(p99),
        median(max)
    );
    println!(
        "| resident memory, all pending, engine idle (fresh process, system clock) | **{:.0} MiB** | < 512 MiB |",
        get(&pending, "rss_pending")
    );
    println!("| resident memory after the lateness rounds | {:.0} MiB | |", get(&pending, "rss_after_lateness"));
    println!(
        "| resident memory, firing child: before / peak / after the last round / actors idle | {:.0} / {:.0} / {:.0} / {:.0} MiB | |",
        get(&fire, "rss_before"),
        get(&fire, "hwm"),
        get(&fire, &format!("all_rss_{}", p.rounds_all - 1)),
        get(&fire, "rss_idle")
    );
    println!(
        "| set-up: bulk load of {} entities by the engine's step function | {:.1} s ({} keys) | |",
        n(p.entities as f64),
        load_secs,
        n(keys)
    );
    println!("| actors stopped after the firing (idle timeout), in | {:.1} s | |", get(&fire, "idle_wait"));
    println!("\nsmall: {small}; slices of {}; all-at-once rounds: {}", n(per_slice as f64), p.rounds_all);
}
