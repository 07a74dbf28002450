//! The engine against a real store, on the manual clock: timers, idempotency, guards, messages, calls. Every test
//! runs twice, on sled and on PostgreSQL (a fresh database of the test binary's server): the engine's contract does
//! not depend on the store.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::*;
use marketflow::clock::ManualClock;
use marketflow::engine::*;
use marketflow::store::{Store, Table};
use serde_json::json;

/// Each named test body runs once per store: `<name>::sled` and `<name>::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn sled() {
                super::$name(super::TestStore::sled()).await
            }
            #[actix_rt::test]
            async fn postgres() {
                super::$name(super::TestStore::postgres()).await
            }
        }
    )*};
}

on_both_stores!(
    a_one_hour_timer_fires_on_the_manual_clock_in_well_under_a_second,
    a_timer_delivered_again_is_stale_by_the_record_and_keeps_no_idempotency_record,
    a_repeated_input_gets_the_stored_outcome_and_changes_nothing,
    guards_choose_and_rejections_change_nothing,
    messages_move_money_once_through_the_outbox,
    external_calls_retry_with_backoff_then_need_an_operator,
    idle_actors_stop_and_entities_live_on_disk,
    overload_is_refused_not_queued_without_bound,
    a_definition_changed_under_a_running_instance_is_detected_not_applied,
    entities_by_state_are_kept_in_the_store_with_the_transitions_and_survive_a_restart,
    a_store_of_an_earlier_build_has_its_entities_counted_by_state_when_the_engine_starts,
);

fn start(store: Arc<dyn Store>, handler: Arc<dyn CallHandler>) -> (Engine, ManualClock) {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap());
    let engine = marketflow::store::wait(Engine::start(
        store,
        Arc::new(clock.clone()),
        registry(handler),
        EngineConfig::default(),
    ))
    .expect("engine starts");
    (engine, clock)
}

async fn a_one_hour_timer_fires_on_the_manual_clock_in_well_under_a_second(s: TestStore) {
    let (engine, clock) = start(s.open(), Flaky::new(0));
    let o = engine.send(key("a"), ev("open-a", json!({"type": "open", "amount": 10}))).await.unwrap();
    assert_eq!(o.status, Status::Accepted);
    assert_eq!(o.state, "open");
    let view = engine.entity_view(&key("a")).await.unwrap();
    assert_eq!(view.timers.len(), 1);
    assert_eq!(view.timers[0].name, "interest");
    assert_eq!(view.timers[0].remaining_seconds, 3600);

    let started = Instant::now();
    clock.advance(Duration::from_secs(59 * 60));
    tokio::task::yield_now().await;
    assert_eq!(account(&engine, "a").unwrap().1.interest, 0, "not due before the hour");
    clock.advance(Duration::from_secs(60));
    eventually("interest paid", || account(&engine, "a").unwrap().1.interest == 1).await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    // The timer re-armed itself for the next hour, and fired exactly once.
    let view = engine.entity_view(&key("a")).await.unwrap();
    assert_eq!(view.timers[0].remaining_seconds, 3600);
    let journal = engine.journal(&key("a"), 0, 100).await.unwrap().items;
    assert_eq!(journal.iter().filter(|j| j.event == "interest").count(), 1);
    assert!(matches!(journal[1].cause, Cause::Timer { ref name } if name == "interest"));
    engine.shutdown();
}

async fn a_timer_delivered_again_is_stale_by_the_record_and_keeps_no_idempotency_record(s: TestStore) {
    let store = s.open();
    let (engine, clock) = start(store.clone(), Flaky::new(0));
    engine.send(key("t"), ev("open-t", json!({"type": "open", "amount": 10}))).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    eventually("interest paid", || account(&engine, "t").unwrap().1.interest == 1).await;
    let journal = engine.journal(&key("t"), 0, 100).await.unwrap().items;
    let fired = journal.iter().find(|j| j.event == "interest").expect("the firing is journaled");
    assert_eq!(fired.input_id, "timer:interest:1");
    // The firing wrote no idempotency record: the record's timer (set again, with a new set_seq) is what tells
    // a repeat, and it was consumed in the same commit as the journal entry.
    assert_eq!(
        marketflow::store::wait(store.get(Table::Idempotency, &idempotency_key(&key("t"), "timer:interest:1")))
            .unwrap(),
        None
    );
    assert!(marketflow::store::wait(store.get(Table::Idempotency, &idempotency_key(&key("t"), "open-t")))
        .unwrap()
        .is_some());

    let again = Input {
        id: "timer:interest:1".into(),
        event: Event::Timer { name: "interest".into(), set_seq: 1 },
        cause: Cause::Timer { name: "interest".into() },
        request_id: None,
    };
    let o = engine.send(key("t"), again).await.unwrap();
    assert_eq!((o.status, o.code.as_deref()), (Status::Ignored, Some("stale")));
    assert_eq!(account(&engine, "t").unwrap().1.interest, 1, "interest paid once");
    assert_eq!(engine.journal(&key("t"), 0, 100).await.unwrap().items.len(), journal.len(), "nothing journaled");
    engine.shutdown();
}

async fn a_repeated_input_gets_the_stored_outcome_and_changes_nothing(s: TestStore) {
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    engine.send(key("b"), ev("open", json!({"type": "open", "amount": 5}))).await.unwrap();
    let first = engine.send(key("b"), ev("dep-1", json!({"type": "deposit", "amount": 7}))).await.unwrap();
    let again = engine.send(key("b"), ev("dep-1", json!({"type": "deposit", "amount": 7}))).await.unwrap();
    assert!(!first.repeated);
    assert!(again.repeated);
    assert_eq!(first.reply, again.reply);
    assert_eq!(account(&engine, "b").unwrap().1.balance, 12);
    assert_eq!(engine.record(&key("b")).await.unwrap().unwrap().seq, 2);
}

async fn guards_choose_and_rejections_change_nothing(s: TestStore) {
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    engine.send(key("c"), ev("open", json!({"type": "open", "amount": 5}))).await.unwrap();
    let o = engine.send(key("c"), ev("t1", json!({"type": "transfer", "to": "d", "amount": 50}))).await.unwrap();
    assert_eq!(o.status, Status::Rejected);
    assert_eq!(o.code.as_deref(), Some("insufficient_funds"));
    assert_eq!(account(&engine, "c").unwrap().1.balance, 5);
    let o = engine.send(key("c"), ev("bad", json!({"type": "deposit", "amount": -1}))).await.unwrap();
    assert_eq!(o.code.as_deref(), Some("invalid_amount"));
    // Undecodable input is an error, not a transition.
    let e = engine.send(key("c"), ev("junk", json!({"type": "nope"}))).await.unwrap_err();
    assert_eq!(e.code(), "invalid_input");
    // An event with no transition is absorbed and journaled; for an unknown entity nothing is stored.
    let o = engine.send(key("c"), ev("o2", json!({"type": "open", "amount": 1}))).await.unwrap();
    assert_eq!(o.status, Status::Ignored);
    let o = engine.send(key("ghost"), ev("x", json!({"type": "close"}))).await.unwrap();
    assert_eq!(o.status, Status::Ignored);
    assert!(engine.record(&key("ghost")).await.unwrap().is_none());
    let journal = engine.journal(&key("c"), 0, 100).await.unwrap().items;
    assert_eq!(journal.last().unwrap().status, Status::Ignored);
    // A workflow that panics fails that input only; the actor is re-created and the entity carries on.
    let e = engine.send(key("c"), ev("boom", json!({"type": "boom"}))).await.unwrap_err();
    assert_eq!(e.code(), "internal_error");
    let o = engine.send(key("c"), ev("dep", json!({"type": "deposit", "amount": 1}))).await.unwrap();
    assert_eq!(o.status, Status::Accepted);
    assert_eq!(account(&engine, "c").unwrap().1.balance, 6);
}

async fn messages_move_money_once_through_the_outbox(s: TestStore) {
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    engine.send(key("from"), ev("o", json!({"type": "open", "amount": 100}))).await.unwrap();
    engine.send(key("to"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    for i in 0..10 {
        let o = engine
            .send(key("from"), ev(&format!("t{i}"), json!({"type": "transfer", "to": "to", "amount": 3})))
            .await
            .unwrap();
        assert_eq!(o.status, Status::Accepted);
    }
    eventually("all credits arrive", || account(&engine, "to").unwrap().1.received == 30).await;
    eventually("outbox drains", || {
        marketflow::store::wait(marketflow::engine::services::pending_effects(&engine, &key("from")))
            .unwrap()
            .0
            .is_empty()
    })
    .await;
    assert_eq!(account(&engine, "from").unwrap().1.balance, 70);
    assert_eq!(account(&engine, "to").unwrap().1.balance, 31);
}

async fn external_calls_retry_with_backoff_then_need_an_operator(s: TestStore) {
    // Two failures, then success: the result arrives after the backoffs pass on the service clock.
    let flaky = Flaky::new(2);
    let (engine, clock) = start(s.open(), flaky.clone());
    engine.send(key("n"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    engine.send(key("n"), ev("p", json!({"type": "ping"}))).await.unwrap();
    eventually("first attempt failed", || flaky.calls.load(Ordering::SeqCst) == 1).await;
    eventually("retry scheduled", || {
        marketflow::store::wait(engine.entity_view(&key("n"))).unwrap().pending_calls.first().map(|c| c.status)
            == Some(CallStatus::Retrying)
    })
    .await;
    clock.advance(Duration::from_secs(1));
    eventually("second attempt", || flaky.calls.load(Ordering::SeqCst) == 2).await;
    eventually("second retry scheduled", || {
        marketflow::store::wait(engine.entity_view(&key("n"))).unwrap().pending_calls.first().map(|c| c.attempts)
            == Some(2)
    })
    .await;
    clock.advance(Duration::from_secs(2));
    eventually("notified", || account(&engine, "n").unwrap().1.notified == 1).await;
    assert!(engine.entity_view(&key("n")).await.unwrap().pending_calls.is_empty());

    // Always failing: three attempts, then needs attention; an operator's retry runs it again.
    engine.shutdown();
    let dead = Flaky::new(u32::MAX);
    let (engine, clock) = start(s.another().open(), dead.clone());
    engine.send(key("m"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    engine.send(key("m"), ev("p", json!({"type": "ping"}))).await.unwrap();
    for n in 1..=3u32 {
        eventually("attempt", || dead.calls.load(Ordering::SeqCst) == n).await;
        eventually("recorded", || {
            marketflow::store::wait(engine.entity_view(&key("m"))).unwrap().pending_calls.first().map(|c| c.attempts)
                == Some(n)
        })
        .await;
        clock.advance(Duration::from_secs(4));
    }
    let view = engine.entity_view(&key("m")).await.unwrap();
    assert!(view.needs_attention);
    assert!(view.last_error.unwrap().contains("simulated failure #3"));
    let filter = marketflow::engine::inspect::EntityFilter { needs_attention: true, ..Default::default() };
    assert_eq!(engine.list_entities(&filter, None, 10).await.unwrap().items.len(), 1);
    let call_id = view.pending_calls[0].id.clone();
    assert!(engine.audit_trail(10).await.unwrap().is_empty());
    let audit = marketflow::engine::audit::Audit {
        operator: "ops".into(),
        reason: "marketplace down".into(),
        action: "cancel".into(),
        call: None,
    };
    engine.act_on_call(&call_id, CallAction::Cancel, &audit, Route::Owner).await.unwrap();
    eventually("failure delivered", || account(&engine, "m").unwrap().1.notify_failed == 1).await;
    // The audit row came with the commit that delivered the cancellation, naming the call.
    let trail = engine.audit_trail(10).await.unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!((trail[0].operator.as_str(), trail[0].action.as_str()), ("ops", "cancel"));
    assert_eq!(trail[0].entity, key("m").to_string());
    assert_eq!(trail[0].result["calls"], json!([call_id]));
    let journal = engine.journal(&key("m"), 0, 100).await.unwrap().items;
    assert!(journal.iter().any(|j| j.event.ends_with(".failed")), "the cancellation is in the journal too");
}

async fn idle_actors_stop_and_entities_live_on_disk(s: TestStore) {
    let config = EngineConfig { idle_timeout: Duration::from_millis(100), ..Default::default() };
    let clock = ManualClock::new(Utc::now());
    let engine = Engine::start(s.open(), Arc::new(clock), registry(Flaky::new(0)), config).await.unwrap();
    for i in 0..200 {
        engine.send(key(&format!("e{i}")), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    }
    assert!(engine.live_actors() > 0);
    eventually("actors stop when idle", || engine.live_actors() == 0).await;
    let o = engine.send(key("e7"), ev("d", json!({"type": "deposit", "amount": 2}))).await.unwrap();
    assert_eq!(o.reply["balance"], 3, "a stopped entity resumes from its record");
}

async fn overload_is_refused_not_queued_without_bound(s: TestStore) {
    let config = EngineConfig { max_inflight: 1, ..Default::default() };
    let engine =
        Engine::start(s.open(), Arc::new(ManualClock::new(Utc::now())), registry(Flaky::new(0)), config).await.unwrap();
    let sends: Vec<_> =
        (0..50).map(|i| engine.send(key(&format!("o{i}")), ev("o", json!({"type": "open", "amount": 1})))).collect();
    let results = futures_util::future::join_all(sends).await;
    let refused = results.iter().filter(|r| matches!(r, Err(Error::Overloaded))).count();
    assert!(refused > 0, "some inputs must be refused with one permit");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(Error::Overloaded))));
}

async fn a_definition_changed_under_a_running_instance_is_detected_not_applied(s: TestStore) {
    let store = s.open();
    let (engine, _clock) = start(store.clone(), Flaky::new(0));
    engine.send(key("pin"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    let pinned = engine.record(&key("pin")).await.unwrap().unwrap();
    assert_eq!((pinned.definition.as_str(), pinned.version), ("ledger", 1));
    engine.shutdown();

    // Same version, different graph (the interest timer changed): refused for the running instance.
    let changed = LEDGER_TOML.replace("interest = \"1h\"", "interest = \"2h\"");
    let mut r = Registry::new();
    r.add_workflow(Arc::new(Ledger));
    r.add_definition("tests/common/ledger.toml", &changed).unwrap();
    r.add_handler("notify", Flaky::new(0));
    let engine =
        Engine::start(s.open(), Arc::new(ManualClock::new(Utc::now())), r, EngineConfig::default()).await.unwrap();
    let e = engine.send(key("pin"), ev("d", json!({"type": "deposit", "amount": 1}))).await.unwrap_err();
    assert_eq!(e.code(), "definition_mismatch", "{e}");
    assert_eq!(engine.record(&key("pin")).await.unwrap().unwrap().seq, 1, "nothing applied");
    engine.shutdown();

    // A new version beside the old one: the running instance stays on v1, new instances start on v2.
    let v2 = changed.replace("version = 1", "version = 2");
    let mut r = Registry::new();
    r.add_workflow(Arc::new(Ledger));
    r.add_definition("ledger.v1.toml", LEDGER_TOML).unwrap();
    r.add_definition("ledger.toml", &v2).unwrap();
    r.add_handler("notify", Flaky::new(0));
    let engine =
        Engine::start(s.open(), Arc::new(ManualClock::new(Utc::now())), r, EngineConfig::default()).await.unwrap();
    let o = engine.send(key("pin"), ev("d", json!({"type": "deposit", "amount": 1}))).await.unwrap();
    assert_eq!(o.status, Status::Accepted);
    assert_eq!(engine.record(&key("pin")).await.unwrap().unwrap().version, 1);
    engine.send(key("fresh"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    assert_eq!(engine.record(&key("fresh")).await.unwrap().unwrap().version, 2);
    engine.shutdown();
}

fn by_state(counts: &std::collections::BTreeMap<(String, String), i64>) -> [i64; 3] {
    ["new", "open", "closed"].map(|s| counts.get(&("ledger".to_string(), s.to_string())).copied().unwrap_or(-1))
}

async fn entities_by_state_are_kept_in_the_store_with_the_transitions_and_survive_a_restart(s: TestStore) {
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 0, 0], "every state, zero-filled");
    for id in ["a", "b", "c"] {
        engine.send(key(id), ev(&format!("open-{id}"), json!({"type": "open", "amount": 10}))).await.unwrap();
    }
    // Staying in a state, a refused input and a repeated one move nothing; a change of state moves one entity.
    engine.send(key("a"), ev("dep-a", json!({"type": "deposit", "amount": 1}))).await.unwrap();
    engine.send(key("a"), ev("dep-a", json!({"type": "deposit", "amount": 1}))).await.unwrap();
    engine.send(key("b"), ev("open-b2", json!({"type": "open", "amount": 10}))).await.unwrap();
    let o = engine.send(key("c"), ev("close-c", json!({"type": "close"}))).await.unwrap();
    assert_eq!(o.state, "closed");
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 2, 1]);
    engine.shutdown();

    // The counts are in the store: a restart reads them as they were, and carries on from them.
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 2, 1]);
    engine.send(key("a"), ev("close-a", json!({"type": "close"}))).await.unwrap();
    engine.send(key("d"), ev("open-d", json!({"type": "open", "amount": 1}))).await.unwrap();
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 2, 2]);
    engine.shutdown();
}

async fn a_store_of_an_earlier_build_has_its_entities_counted_by_state_when_the_engine_starts(s: TestStore) {
    let store = s.open();
    let (engine, _clock) = start(store.clone(), Flaky::new(0));
    for i in 0..30 {
        engine.send(key(&format!("e{i}")), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    }
    for i in 0..10 {
        engine.send(key(&format!("e{i}")), ev("c", json!({"type": "close"}))).await.unwrap();
    }
    engine.shutdown();
    // What an earlier build left: the same entities, and no counters nor the mark that they were counted.
    let store = s.open();
    let meta = marketflow::store::scan_prefix(&*store, Table::Meta, b"entities-by-state", 1000).await.unwrap();
    assert!(meta.len() >= 3, "{meta:?}");
    let mut forget = marketflow::store::Batch::new();
    for (k, _) in meta {
        forget.delete(Table::Meta, k);
    }
    store.apply(&[forget]).unwrap();
    store.close().unwrap();

    let (engine, _clock) = start(s.open(), Flaky::new(0));
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 20, 10], "counted once, as it started");
    engine.send(key("e20"), ev("c", json!({"type": "close"}))).await.unwrap();
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 19, 11]);
    engine.shutdown();
    // Counted once: the next start keeps the counters as they are.
    let (engine, _clock) = start(s.open(), Flaky::new(0));
    assert_eq!(by_state(&engine.entities_by_state().await.unwrap()), [0, 19, 11]);
    engine.shutdown();
}

/// Answers after a real delay.
struct Slow(Duration, std::sync::atomic::AtomicU32);

impl CallHandler for Slow {
    fn call(
        &self,
        _call: &str,
        request: serde_json::Value,
    ) -> futures_util::future::BoxFuture<'static, Result<serde_json::Value, CallError>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let d = self.0;
        Box::pin(async move {
            tokio::time::sleep(d).await;
            Ok(json!({ "ok": true, "echo": request }))
        })
    }
}

/// A call's timeout is real time whatever the clock's scale: the world on the other end answers in real time. At
/// ×600 the ledger's 2 s notify timeout would be 3.3 ms of real time if it ran on the service clock, and a call
/// answered in 300 ms would end `unknown`; it is answered, once.
#[actix_rt::test]
async fn a_call_timeout_is_real_time_on_a_scaled_clock() {
    let slow = Arc::new(Slow(Duration::from_millis(300), Default::default()));
    let clock = marketflow::clock::ScaledClock::new(Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap(), 600.0);
    let store = TestStore::sled();
    let engine = Engine::start(store.open(), Arc::new(clock), registry(slow.clone()), EngineConfig::default())
        .await
        .expect("engine starts");
    engine.send(key("s"), ev("o", json!({"type": "open", "amount": 1}))).await.unwrap();
    engine.send(key("s"), ev("p", json!({"type": "ping"}))).await.unwrap();
    eventually("notified", || account(&engine, "s").unwrap().1.notified == 1).await;
    let data = account(&engine, "s").unwrap().1;
    assert_eq!(data.notify_failed, 0, "{data:?}");
    assert_eq!(slow.1.load(Ordering::SeqCst), 1, "one attempt, answered");
    engine.shutdown();
}
