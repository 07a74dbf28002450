//! The engine on PostgreSQL when the database misbehaves: a connection cut just before or just after a COMMIT (a
//! proxy in the middle), and the server itself stopped with `pg_ctl stop -m immediate` and started again under
//! load. What must hold: every caller gets exactly one answer, every acknowledged commit is in the database, and an
//! input refused as not committed left nothing behind.

use crate::common;
#[path = "proxy/mod.rs"]
mod proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use marketflow::clock::ManualClock;
use marketflow::engine::*;
use marketflow::store::postgres::server::{shared, TempServer};
use marketflow::store::postgres::{Options, PostgresStore};
use marketflow::store::{wait, Store, Table};
use serde_json::json;

fn engine_on(url: &str) -> Engine {
    let store = PostgresStore::connect(Options::new(url, "faults", Duration::from_secs(10))).expect("connects");
    wait(Engine::start(store, Arc::new(ManualClock::new(Utc::now())), registry(Flaky::new(0)), EngineConfig::default()))
        .expect("the engine starts")
}

/// Whether the input `id` of ledger `entity` was committed: its idempotency record, read straight from the
/// database (not through the proxy).
fn committed(store: &dyn Store, entity: &str, id: &str) -> bool {
    wait(store.get(Table::Idempotency, &idempotency_key(&key(entity), id))).expect("readable").is_some()
}

#[actix_rt::test]
async fn a_connection_cut_before_or_after_commit_gets_every_caller_one_answer_and_loses_nothing() {
    // The store's warnings (each lost COMMIT answer and how it was resolved) go with the test's output on failure.
    let _ = tracing_subscriber::fmt().with_env_filter("marketflow=warn").with_test_writer().with_ansi(false).try_init();
    let url = shared().fresh().unwrap_or_else(|e| panic!("{e}"));
    let db = url.rsplit('/').next().unwrap().to_string();
    let proxy = proxy::PgProxy::start(shared().server().port(), 7);
    let through = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
    let engine = engine_on(&through);
    let ledgers = 12;
    for i in 0..ledgers {
        // Opening may itself meet a cut: sent again until it is answered as done (the same input id).
        loop {
            if engine
                .send(key(&format!("l{i}")), ev(&format!("open-{i}"), json!({"type": "open", "amount": 1})))
                .await
                .is_ok()
            {
                break;
            }
        }
    }
    let sends = (0..300).map(|n| {
        let engine = engine.clone();
        async move {
            let (entity, id) = (format!("l{}", n % ledgers), format!("dep-{n}"));
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                engine.send(key(&entity), ev(&id, json!({"type": "deposit", "amount": 1}))),
            )
            .await;
            (entity, id, r)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    engine.shutdown();
    let direct = PostgresStore::connect(Options::new(url, "check", Duration::from_secs(10))).unwrap();
    let (mut acked, mut refused) = (0, 0);
    for (entity, id, r) in &answers {
        match r {
            Err(_) => panic!("{id}: no answer within a minute"),
            Ok(Ok(o)) => {
                acked += 1;
                assert!(committed(&*direct, entity, id), "{id} was acknowledged ({o:?}) but is not in the database");
            }
            Ok(Err(e)) => {
                refused += 1;
                assert_eq!(e.code(), "storage_unavailable", "{id}: {e}");
                assert!(!committed(&*direct, entity, id), "{id} was refused as not committed, but it is there");
            }
        }
    }
    let cuts = proxy.cuts();
    assert!(cuts.contains(&proxy::Cut::Before) && cuts.contains(&proxy::Cut::After), "{cuts:?}");
    // A cut after COMMIT is resolved by the commit log as committed: its callers were told so.
    assert!(acked > refused, "{acked} acknowledged, {refused} refused, cuts {cuts:?}");
    // The balances are what the acknowledged deposits say: nothing committed twice, nothing lost.
    for i in 0..ledgers {
        let r = wait(direct.get(Table::Entities, &key(&format!("l{i}")).prefix())).unwrap().expect("the ledger");
        let record: EntityRecord = serde_json::from_slice(&r).unwrap();
        let deposits = answers.iter().filter(|(e, _, a)| *e == format!("l{i}") && matches!(a, Ok(Ok(_)))).count();
        assert_eq!(record.data["balance"], json!(1 + deposits as i64), "ledger l{i}");
    }
    println!(
        "commit cuts: {} before, {} after; {acked} acknowledged, {refused} refused",
        cuts.iter().filter(|c| **c == proxy::Cut::Before).count(),
        cuts.iter().filter(|c| **c == proxy::Cut::After).count()
    );
}

#[actix_rt::test]
async fn postgres_stopped_and_started_again_under_load_loses_no_acknowledged_commit() {
    // A server of its own: stopping it must not touch the other tests' databases.
    let server = Arc::new(TempServer::start(&[]).unwrap_or_else(|e| panic!("{e}")));
    let url = server.create_database("load", None).unwrap();
    let engine = engine_on(&url);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = (0..4).map(|w| {
        let (engine, stop) = (engine.clone(), stop.clone());
        actix_rt::spawn(async move {
            let mut answers = vec![];
            let entity = format!("w{w}");
            while engine.send(key(&entity), ev("open", json!({"type": "open", "amount": 1}))).await.is_err() {}
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let id = format!("in-{w}-{n}");
                n += 1;
                let body = json!({"type": "deposit", "amount": 1});
                let sent = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(60), engine.send(key(&entity), ev(&id, body))).await;
                let ok = match r {
                    Err(_) => panic!("{id}: no answer within a minute"),
                    Ok(r) => r.is_ok(),
                };
                if !ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers.push((entity.clone(), id, ok, sent, Instant::now()));
            }
            answers
        })
    });
    let load: Vec<_> = load.collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = server.clone();
    actix_rt::task::spawn_blocking(move || s.stop("immediate")).await.unwrap().expect("pg_ctl stop -m immediate");
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = server.clone();
    actix_rt::task::spawn_blocking(move || s.start_again()).await.unwrap().expect("the server starts again");
    let back = Instant::now();
    // The engine carries on once the database is back.
    loop {
        if engine.send(key("after"), ev("after-1", json!({"type": "open", "amount": 1}))).await.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "the engine never wrote again after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut answers = vec![];
    for h in load {
        answers.extend(h.await.unwrap());
    }
    engine.shutdown();
    let direct = PostgresStore::connect(Options::new(url, "check", Duration::from_secs(10))).unwrap();
    let acked: Vec<_> = answers.iter().filter(|(_, _, ok, _, _)| *ok).collect();
    let refused = answers.len() - acked.len();
    // Under load: inputs were on their way while the server was down (sent before it was back, answered after it
    // went). Each was refused, or held until the database could say whether its COMMIT had been kept.
    let met = answers.iter().filter(|(_, _, _, sent, answered)| *sent < back && *answered > down).count();
    assert!(met > 0, "no input was on its way during the outage: it did not happen under load");
    for (entity, id, ..) in &acked {
        assert!(committed(&*direct, entity, id), "{id} was acknowledged but is not in the database");
    }
    println!(
        "PostgreSQL restart under load: {} acknowledged, {refused} refused, {met} on their way during the outage",
        acked.len()
    );
}
