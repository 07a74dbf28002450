//! A restart test: real child processes on a real sled store.
//!
//! Phase 1 (a child on a manual clock stopped at T0) opens 50 ledgers, each with its one-hour `interest` timer,
//! makes deposits, transfers and pings, and shuts down gracefully (what it leaves must already satisfy every
//! invariant, with some credits possibly still in the outbox). Phase 2 (another child, on a manual clock at
//! T0 + 2h30m) starts the engine on the same directory and waits until recovery is complete: the outbox drained,
//! the calls finished, every overdue timer fired. Then this process opens the store and checks that nothing
//! acknowledged was lost, that each overdue timer fired once (late, at T0 + 2h30m, not twice even though two and
//! a half of its hours passed) and re-armed an hour after its firing, and that records and timer rows agree.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::harness::*;
use common::*;
use futures_util::future::join_all;
use marketflow::clock::ManualClock;
use marketflow::engine::*;

/// This test's name: the filter a child is started with.
const TEST: &str = "a_restart_keeps_acknowledged_work_and_fires_each_overdue_timer_once";
const LEDGERS: usize = 50;
/// T0 as RFC 3339, given to both phases.
const T0_ENV: &str = "MARKETFLOW_T0";
/// How long after T0 the second phase starts: the one-hour timers are 1h30m overdue.
const DOWNTIME: TimeDelta = TimeDelta::minutes(150);

fn ledger(i: usize) -> String {
    format!("l-{i:02}")
}

fn ops_of(i: usize) -> Vec<(String, Op)> {
    let mut ops = vec![
        (format!("dep-{i}"), Op::Deposit(i as i64 + 1)),
        // More than any account ever holds: rejected by the guard, and acknowledged as rejected.
        (format!("tr-{i}-b"), Op::Transfer { to: ledger((i + 17) % LEDGERS), amount: 1_000 }),
    ];
    if i % 5 == 0 {
        ops.push((format!("ping-{i}"), Op::Ping));
    }
    // Last, so that the shutdown right after it finds credits (and calls) still on their way.
    ops.push((format!("tr-{i}-a"), Op::Transfer { to: ledger((i + 1) % LEDGERS), amount: 10 + (i % 7) as i64 }));
    ops
}

#[test]
fn a_restart_keeps_acknowledged_work_and_fires_each_overdue_timer_once() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("store");
    let t0 = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
    let env = [(T0_ENV, t0.to_rfc3339())];
    let limit = Stop::WaitUpTo(Duration::from_secs(30));

    let p1 = run_child(TEST, "phase1", &dir, &tmp.path().join("phase1.stderr"), &env, limit);
    p1.expect_clean_exit();
    let mut log = Log::default();
    log.add(&p1.lines).unwrap_or_else(|e| panic!("{e}\n{}", p1.stderr_tail(30)));
    let inputs = LEDGERS + (0..LEDGERS).map(|i| ops_of(i).len()).sum::<usize>();
    assert_eq!(log.acks.len(), inputs, "phase 1 acknowledges every input it sends\n{}", p1.stderr_tail(30));
    // What the graceful shutdown left for the next start: consistent, but not necessarily finished.
    let store = open_store(&dir).expect("the store opens after phase 1");
    let snap = Snapshot::load(&store);
    drop(store);
    if let Err(errs) = check_invariants(&snap, &log, Some(t0)) {
        panic!("after the graceful shutdown: {}{}", report(&errs, 40), p1.stderr_tail(30));
    }
    let (pending_messages, pending_calls) = (snap.outbox.len(), snap.calls.len());

    let p2 = run_child(TEST, "phase2", &dir, &tmp.path().join("phase2.stderr"), &env, limit);
    p2.expect_clean_exit();
    let context = || format!("{}\n{}", p1.stderr_tail(30), p2.stderr_tail(30));

    let store = open_store(&dir).expect("the store opens after the children exited");
    let snap = Snapshot::load(&store);
    let now = t0 + DOWNTIME;
    let left = unfinished(&store, now);
    drop(store);

    let mut errs = match check_invariants(&snap, &log, Some(now)) {
        Ok(_) => vec![],
        Err(e) => e,
    };
    if !left.is_empty() {
        errs.push(format!("recovery left work behind: {}", left.join(", ")));
    }
    // What the acknowledgements say each account must hold, once every credit has arrived.
    let mut expected: Vec<Account> = vec![Account { interest: 1, ..Account::default() }; LEDGERS];
    let index = |id: &str| id.strip_prefix("l-").and_then(|n| n.parse::<usize>().ok()).expect("a ledger id");
    for a in log.acks.iter().filter(|a| a.status == Some(Status::Accepted)) {
        let e = &mut expected[index(&a.entity)];
        match a.kind.as_str() {
            "open" | "deposit" => e.deposited += a.amount,
            "transfer" => {
                e.sent += a.amount;
                expected[index(a.to.as_deref().unwrap_or_default())].received += a.amount;
            }
            "ping" => e.notified += 1,
            other => errs.push(format!("unexpected acknowledged kind {other}")),
        }
    }
    let rejected = log.acks.iter().filter(|a| a.status == Some(Status::Rejected)).count();
    if rejected != LEDGERS {
        errs.push(format!("{rejected} inputs were rejected, expected the {LEDGERS} oversized transfers"));
    }
    let rearmed = now + TimeDelta::hours(1);
    for (i, e) in expected.iter_mut().enumerate() {
        e.balance = e.deposited + e.received - e.sent + e.interest;
        let id = ledger(i);
        let Some(rec) = snap.records.get(&id) else {
            errs.push(format!("{id} does not exist"));
            continue;
        };
        if rec.state != "open" || snap.account(&id).as_ref() != Some(e) {
            errs.push(format!("{id} is {} with {:?}, expected open with {e:?}", rec.state, snap.account(&id)));
        }
        // The overdue timer fired once, late (at the restart's time), and re-armed an hour after its firing.
        let interest: Vec<_> = snap.journals[&id].iter().filter(|j| j.event == "interest").collect();
        if interest.len() != 1 || interest[0].at != now || interest[0].status != Status::Accepted {
            errs.push(format!("{id}: interest entries {interest:?}, expected one accepted at {now}"));
        }
        let timers: Vec<(&String, DateTime<Utc>)> = rec.timers.iter().map(|(n, t)| (n, t.due)).collect();
        if timers != [(&"interest".to_string(), rearmed)] {
            errs.push(format!("{id}: timers {timers:?}, expected interest at {rearmed}"));
        }
        let rows: Vec<_> = snap.timers.values().filter(|r| r.entity.id == id).collect();
        if rows.len() != 1 || rows[0].due != rearmed || rows[0].name != "interest" {
            errs.push(format!("{id}: timer rows {rows:?}, expected one interest row at {rearmed}"));
        }
    }
    if snap.timers.len() != LEDGERS || !snap.outbox.is_empty() || !snap.calls.is_empty() {
        errs.push(format!(
            "after recovery: {} timer rows (expected {LEDGERS}), {} outbox rows, {} calls (expected none)",
            snap.timers.len(),
            snap.outbox.len(),
            snap.calls.len()
        ));
    }
    assert!(errs.is_empty(), "{}{}\nkept in {}", report(&errs, 40), context(), tmp.keep().display());

    println!(
        "restart: {} ledgers, {} acknowledged inputs ({rejected} rejected); the graceful shutdown left \
         {pending_messages} credits and {pending_calls} calls to recover; phase 1 took {:?}, phase 2 (recovery) \
         {:?}, all {:?}",
        LEDGERS,
        log.acks.len(),
        p1.elapsed,
        p2.elapsed,
        started.elapsed()
    );
}

fn child(role: &str) {
    child_init();
    let dir = child_dir();
    let t0 = std::env::var(T0_ENV)
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .unwrap_or_else(|| die("no T0 in the environment"))
        .with_timezone(&Utc);
    actix_rt::System::new().block_on(async move {
        let store = Arc::new(open_store(&dir).unwrap_or_else(|e| die(&format!("opening the store: {e}"))));
        let now = match role {
            "phase1" => t0,
            "phase2" => t0 + DOWNTIME,
            other => die(&format!("unknown role {other}")),
        };
        let clock = ManualClock::new(now);
        let engine = Engine::start(store.clone(), Arc::new(clock), registry(Flaky::new(0)), EngineConfig::default())
            .await
            .unwrap_or_else(|e| die(&format!("starting the engine: {e}")));
        say("READY");
        if role == "phase1" {
            // Every ledger exists before money moves to it (a credit to an entity that does not exist is ignored).
            join_all((0..LEDGERS).map(|i| {
                let engine = engine.clone();
                async move { send_logged(&engine, &ledger(i), &format!("open-{i}"), &Op::Open(100 + i as i64)).await }
            }))
            .await;
            join_all((0..LEDGERS).map(|i| {
                let engine = engine.clone();
                async move {
                    for (input, op) in ops_of(i) {
                        send_logged(&engine, &ledger(i), &input, &op).await;
                    }
                }
            }))
            .await;
            // At once: some credits and calls may still be on their way, for the next start to recover.
            engine.shutdown();
        } else {
            await_recovery(&*store, now, Duration::from_secs(10)).await;
            engine.shutdown();
        }
        say("DONE");
    });
}
