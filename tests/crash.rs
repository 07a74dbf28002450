//! A crash test in the style of sled's own: a child process runs a random workload on a real sled store and is
//! killed with SIGKILL at a random moment, again and again on the same directory; after every kill this process
//! reopens the store and checks that no acknowledged commit was lost and that every invariant holds.
//!
//! The workload runs over 20 ledgers at once: deposits, transfers between them (credits through the outbox),
//! pings (external calls, a quarter of whose attempts fail: retry timers, calls out of attempts), and a manual
//! clock advanced in steps so that the hourly interest timers keep firing;
//! actors stop when idle for a few tens of milliseconds, so entities are reloaded from the store all the time.
//! The clock never runs backwards across kills: each step is committed to `Table::Meta` before the clock moves,
//! and the next child starts from the stored value. A kill may land anywhere: between a commit and its
//! acknowledgement, between a delivery and the deletion of its outbox row, while a timer fires, while the store
//! recovers.
//!
//! After every kill ([`check_invariants`]): (a) every acknowledged input has its idempotency record with the
//! acknowledged status; (b) every balance is deposited + received - sent + interest; (c) money is conserved: total
//! sent = total received + credits still in the outbox and not yet recorded by their receiver, and each credit of
//! a committed transfer is recorded by its receiver or still in the outbox; (d) no input id appears twice in a
//! journal, and accepted interest entries = interest paid; (e) the timers table and the records agree both ways;
//! plus: the journal and the idempotency table agree, deposits and transfers match the amounts the child sent,
//! credits from one sender arrive in the order they were sent, every accepted ping is notified or its call
//! pending, a call waits for a retry timer exactly when it is retrying, no journal entry is later than the stored
//! clock. Finally a child runs without a kill until recovery is complete (it moves the clock a minute on, so that
//! retries are due, and retries the calls out of attempts as an operator would), and the outbox, the calls and
//! the overdue timers must be gone with every invariant still holding.
//!
//! `MARKETFLOW_CRASH_ITERATIONS` sets the number of kills (default 15: about 6 s in a debug build);
//! `MARKETFLOW_CRASH_SEED` the seed. Each check reads the whole store, which grows with every kill (sled's log by
//! a few MB, the journals by about a thousand entries), and the children take longer to open it, so a long run
//! belongs in a release build and still slows down as it goes (300 kills: about 11 minutes on 2 cores). Long
//! runs are where kills land while sled opens: one found a snapshot bug of sled 0.34 that `SledStore::open` now
//! works around.
//!
//! ```text
//! MARKETFLOW_CRASH_ITERATIONS=300 cargo test --release --test crash -- --nocapture
//! ```

mod common;

use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::harness::*;
use common::*;
use futures_util::future::{join_all, BoxFuture};
use marketflow::clock::{Clock, ManualClock};
use marketflow::engine::records::{RecordTable, Writes};
use marketflow::engine::*;
use marketflow::store::{Store, Table};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The tests' names: the filter a child is started with.
const TEST: &str = "random_sigkills_lose_no_acknowledged_commit_and_break_no_invariant";
const TEST_PG: &str = "random_sigkills_on_postgres_lose_no_acknowledged_commit_and_break_no_invariant";
const LEDGERS: usize = 20;
/// Concurrent senders in a child.
const WORKERS: u64 = 6;
const ITERATIONS_ENV: &str = "MARKETFLOW_CRASH_ITERATIONS";
const SEED_ENV: &str = "MARKETFLOW_CRASH_SEED";
/// Which run a child is (input ids are unique across runs) and its seed.
const RUN_ENV: &str = "MARKETFLOW_CRASH_RUN";
const RUN_SEED_ENV: &str = "MARKETFLOW_CRASH_RUN_SEED";
/// Where the children keep the service time, in `Table::Meta` (milliseconds since the epoch, decimal).
const CLOCK_KEY: &[u8] = b"crash-test/clock";

fn ledger(i: usize) -> String {
    format!("acct-{i:02}")
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap()
}

/// The service time the last child committed before moving its clock there.
fn stored_clock(store: &dyn Store) -> Option<DateTime<Utc>> {
    let v = marketflow::store::wait(store.get(Table::Meta, CLOCK_KEY)).expect("reading the stored clock")?;
    let ms: i64 = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).expect("the stored clock decodes");
    DateTime::from_timestamp_millis(ms)
}

#[test]
fn random_sigkills_lose_no_acknowledged_commit_and_break_no_invariant() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    crash_run(TEST, None);
}

/// The same on PostgreSQL: a child killed with SIGKILL leaves a transaction open or its COMMIT unanswered; the
/// database rolls back what was not committed, and nothing acknowledged may be missing.
#[test]
fn random_sigkills_on_postgres_lose_no_acknowledged_commit_and_break_no_invariant() {
    if let Some(role) = child_role() {
        return child(&role);
    }
    let url = marketflow::store::postgres::server::shared().fresh().unwrap_or_else(|e| panic!("{e}"));
    crash_run(TEST_PG, Some(url));
}

fn crash_run(test: &str, database: Option<String>) {
    let started = Instant::now();
    let iterations = env_u64(ITERATIONS_ENV, 15);
    let seed = env_u64(SEED_ENV, 0x6d61_726b_6574);
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("store");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Log::default();
    let (mut kills, mut early_kills) = (0u64, 0u64);
    // What the kills left for recovery, summed over all of them.
    let (mut credits_left, mut calls_left, mut retrying_left, mut attention_left) = (0, 0, 0, 0);

    // Fails with everything needed to understand what happened, and keeps the store for a post-mortem.
    let fail = |what: String, run: &ChildRun, tmp: tempfile::TempDir| -> ! {
        panic!(
            "{what}\nseed {seed} ({SEED_ENV}), child `{}` ran {:?}, status {}, {} stdout lines, last: {:?}\n{}\n\
             store and stderr files kept in {}",
            run.role,
            run.elapsed,
            run.status,
            run.lines.len(),
            run.lines.last(),
            run.stderr_tail(40),
            tmp.keep().display()
        )
    };

    for i in 0..iterations {
        let delay = Duration::from_millis(rng.gen_range(50..=400));
        let mut env = vec![(RUN_ENV, i.to_string()), (RUN_SEED_ENV, rng.gen::<u64>().to_string())];
        env.extend(database.iter().map(|d| (DATABASE_ENV, d.clone())));
        let stderr = tmp.path().join(format!("run-{i:04}.stderr"));
        let run = run_child(test, "work", &dir, &stderr, &env, Stop::KillAfter(delay));
        if !run.killed {
            fail(format!("iteration {i}: the child exited by itself before the kill after {delay:?}"), &run, tmp);
        }
        kills += 1;
        if !run.printed("OPENED") {
            early_kills += 1;
        }
        if let Err(e) = log.add(&run.lines) {
            fail(format!("iteration {i}: {e}"), &run, tmp);
        }
        let store = match open_backend(&dir, database.as_deref()) {
            Ok(s) => s,
            Err(e) => fail(format!("iteration {i}: the store does not reopen after the kill: {e}"), &run, tmp),
        };
        let clock = stored_clock(&*store);
        let snap = Snapshot::load(&*store);
        drop(store);
        match check_invariants(&snap, &log, clock) {
            Ok(t) => {
                credits_left += t.outbox_rows;
                calls_left += t.pending_calls;
                retrying_left += t.retrying_calls;
                attention_left += t.calls_needing_attention;
            }
            Err(errs) => fail(format!("iteration {i} (killed after {delay:?}): {}", report(&errs, 30)), &run, tmp),
        }
        if (i + 1) % 25 == 0 {
            println!("crash: {} iterations, {} acknowledged inputs, {:?}", i + 1, log.acks.len(), started.elapsed());
        }
    }

    // Once more without a kill: recovery finishes (the outbox drains, calls complete, overdue timers fire).
    let mut env = vec![(RUN_ENV, iterations.to_string()), (RUN_SEED_ENV, "0".into())];
    env.extend(database.iter().map(|d| (DATABASE_ENV, d.clone())));
    let run = run_child(
        test,
        "recover",
        &dir,
        &tmp.path().join("recover.stderr"),
        &env,
        Stop::WaitUpTo(Duration::from_secs(30)),
    );
    if !(run.status.success() && run.printed("DONE")) {
        fail("the final recovery run did not finish cleanly".into(), &run, tmp);
    }
    let store = match open_backend(&dir, database.as_deref()) {
        Ok(s) => s,
        Err(e) => fail(format!("the store does not reopen after the recovery run: {e}"), &run, tmp),
    };
    let clock = stored_clock(&*store).unwrap_or_else(t0);
    let left = unfinished(&*store, clock);
    let snap = Snapshot::load(&*store);
    drop(store);
    let (t, mut errs) = match check_invariants(&snap, &log, Some(clock)) {
        Ok(t) => (t, vec![]),
        Err(errs) => (Totals::default(), errs),
    };
    if !left.is_empty() {
        errs.push(format!("recovery left work behind: {}", left.join(", ")));
    }
    if snap.records.len() != LEDGERS {
        errs.push(format!("{} ledgers exist, expected {LEDGERS}", snap.records.len()));
    }
    let opened = log.count("OPENED");
    if opened == 0 {
        errs.push("no child got as far as opening its ledgers: the kills come too early to test anything".into());
    }
    if !errs.is_empty() {
        fail(report(&errs, 30), &run, tmp);
    }
    let accepted = log.acks.iter().filter(|a| a.status == Some(Status::Accepted)).count();
    println!(
        "crash ({}): {iterations} iterations, {kills} kills ({early_kills} before the ledgers were open), {} acknowledged \
         inputs ({accepted} accepted), {} inputs sent; the kills left {credits_left} undelivered credits and \
         {calls_left} unfinished calls ({retrying_left} waiting to retry, {attention_left} out of attempts) behind; \
         after recovery: {} journal entries, deposited {}, sent {} = received {}, interest {} paid, {} \
         notifications, service time {}; took {:?} (seed {seed})",
        if database.is_some() { "PostgreSQL" } else { "sled" },
        log.acks.len(),
        log.sent.len(),
        t.journal_entries,
        t.deposited,
        t.sent,
        t.received,
        t.interest,
        t.notified,
        clock,
        started.elapsed()
    );
}

fn child(role: &str) {
    child_init();
    let dir = child_dir();
    let run = env_u64(RUN_ENV, 0);
    let seed = env_u64(RUN_SEED_ENV, 0);
    actix_rt::System::new().block_on(async move {
        let database = std::env::var(DATABASE_ENV).ok();
        let store = open_backend(&dir, database.as_deref()).unwrap_or_else(|e| die(&format!("opening the store: {e}")));
        let now = stored_clock(&*store).unwrap_or_else(t0);
        let clock = ManualClock::new(now);
        // Actors stop after a few tens of milliseconds without input, so that entities are also reloaded from the
        // store while the workload runs, not only after a kill.
        let idle = Duration::from_millis(StdRng::seed_from_u64(seed).gen_range(20..=200));
        let config = EngineConfig { idle_timeout: idle, ..EngineConfig::default() };
        // The workload's calls fail now and then (retry timers, calls out of attempts); recovery's never do.
        let handler: Arc<dyn CallHandler> = match role {
            "work" => Arc::new(Chaos(Mutex::new(StdRng::seed_from_u64(seed ^ 0xca11)))),
            _ => Flaky::new(0),
        };
        let engine = Engine::start(store.clone(), Arc::new(clock.clone()), registry(handler), config)
            .await
            .unwrap_or_else(|e| die(&format!("starting the engine: {e}")));
        say(&format!("READY {now}"));
        match role {
            "work" => work(engine, clock, run, seed).await,
            "recover" => {
                // A minute on, so that every call's retry timer (a few seconds after its failure) is due.
                let later = now + TimeDelta::minutes(1);
                advance(&engine, &clock, later).await;
                // As an operator would: a fresh budget of attempts for each call that ran out of them.
                let calls = store
                    .scan(Table::Effects, Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
                    .await
                    .unwrap_or_else(|e| die(&format!("reading calls: {e}")));
                for (_, v) in calls {
                    let c: CallRow = serde_json::from_slice(&v).unwrap_or_else(|e| die(&format!("a call row: {e}")));
                    if c.status == CallStatus::NeedsAttention {
                        let audit = marketflow::engine::audit::Audit {
                            operator: "crash-test".into(),
                            reason: "recovery after the crash".into(),
                            action: "retry".into(),
                            call: None,
                        };
                        engine
                            .act_on_call(&c.id, CallAction::Retry, &audit, Route::Owner)
                            .await
                            .unwrap_or_else(|e| die(&format!("retrying {}: {e}", c.id)));
                    }
                }
                await_recovery(&*store, later, Duration::from_secs(20)).await;
                engine.shutdown();
                say("DONE");
            }
            other => die(&format!("unknown role {other}")),
        }
    });
}

/// Moves the clock to `to`, durably first: a restart never starts earlier than any time an entity has seen.
async fn advance(engine: &Engine, clock: &ManualClock, to: DateTime<Utc>) {
    // The same bytes the reader parses: a JSON integer is its decimal digits.
    const CLOCK: RecordTable<i64> = RecordTable::meta("crash-test/clock");
    let mut w = Writes::new();
    if let Err(err) = CLOCK.put(&mut w, &[], &to.timestamp_millis()) {
        die(&format!("storing the clock: {err}"));
    }
    if let Err(err) = engine.write(w).await {
        die(&format!("storing the clock: {err}"));
    }
    clock.set(to);
}

/// Fails a quarter of the calls, retryably and at random: calls wait for retry timers, a few run out of attempts.
struct Chaos(Mutex<StdRng>);

impl CallHandler for Chaos {
    fn call(&self, _call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let fail = self.0.lock().unwrap_or_else(|e| e.into_inner()).gen_bool(0.25);
        Box::pin(async move {
            if fail {
                Err(CallError::retryable("chaos"))
            } else {
                Ok(json!({ "ok": true, "echo": request }))
            }
        })
    }
}

/// Runs until killed: opens every ledger (again: a repeated input id gets its stored outcome), then moves money
/// around and the clock forward from several tasks at once.
async fn work(engine: Engine, clock: ManualClock, run: u64, seed: u64) {
    // Every ledger exists before money moves to it (a credit to an entity that does not exist is ignored).
    join_all((0..LEDGERS).map(|i| {
        let engine = engine.clone();
        async move { send_logged(&engine, &ledger(i), &format!("open-{i}"), &Op::Open(1_000 + i as i64)).await }
    }))
    .await;
    say("OPENED");

    let (e, c) = (engine.clone(), clock.clone());
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc10c);
    actix_rt::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..=25))).await;
            let next = c.now() + TimeDelta::minutes(rng.gen_range(1..=20));
            advance(&e, &c, next).await;
        }
    });
    for w in 0..WORKERS {
        let engine = engine.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w + 1));
        actix_rt::spawn(async move {
            for n in 0u64.. {
                let from = rng.gen_range(0..LEDGERS);
                let roll = rng.gen_range(0..100);
                let (input, op) = if roll < 40 {
                    (format!("d-{run}-{w}-{n}"), Op::Deposit(rng.gen_range(1..=50)))
                } else if roll < 90 {
                    let to = (from + rng.gen_range(1..LEDGERS)) % LEDGERS;
                    (format!("t-{run}-{w}-{n}"), Op::Transfer { to: ledger(to), amount: rng.gen_range(1..=400) })
                } else {
                    (format!("p-{run}-{w}-{n}"), Op::Ping)
                };
                send_logged(&engine, &ledger(from), &input, &op).await;
            }
        });
    }
    // The parent kills this process; end by ourselves only if it never does (it died, or was interrupted).
    tokio::time::sleep(Duration::from_secs(30)).await;
    die("never killed");
}
