//! A test workflow (`ledger`) and helpers shared by the engine's integration, restart and crash tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use marketflow::engine::definition::Catalog;
use marketflow::engine::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const LEDGER_TOML: &str = include_str!("ledger.toml");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub deposited: i64,
    pub received: i64,
    pub sent: i64,
    pub interest: i64,
    pub notified: u32,
    pub notify_failed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerEvent {
    Open { amount: i64 },
    Deposit { amount: i64 },
    Credit { amount: i64 },
    Transfer { to: String, amount: i64 },
    Ping,
    Boom,
    Close,
}

pub struct Ledger;

impl Workflow for Ledger {
    type Data = Account;
    type Event = LedgerEvent;

    fn kind(&self) -> &'static str {
        "ledger"
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            events: vec!["open", "deposit", "credit", "transfer", "ping", "boom", "close"],
            guards: vec!["has_funds"],
            actions: vec![
                "deposit",
                "credit",
                "send",
                "refuse",
                "pay_interest",
                "notify",
                "notified",
                "notify_failed",
                "panic",
            ],
            calls: vec!["notify"],
        }
    }

    fn event_name(&self, e: &LedgerEvent) -> String {
        serde_json::to_value(e).ok().and_then(|v| v["type"].as_str().map(String::from)).unwrap_or_default()
    }

    fn guard(&self, name: &str, cx: &Cx<'_, Account>, s: &Signal<LedgerEvent>) -> bool {
        match (name, s) {
            ("has_funds", Signal::Event(LedgerEvent::Transfer { amount, .. })) => cx.data.balance >= *amount,
            _ => false,
        }
    }

    fn action(&self, name: &str, cx: &mut Cx<'_, Account>, s: &Signal<LedgerEvent>) -> Result<(), Reject> {
        match (name, s) {
            ("deposit", Signal::Event(LedgerEvent::Open { amount } | LedgerEvent::Deposit { amount })) => {
                if *amount <= 0 {
                    return Err(Reject::new("invalid_amount", "amounts are positive"));
                }
                cx.data.balance += amount;
                cx.data.deposited += amount;
                cx.reply(json!({ "balance": cx.data.balance }));
            }
            ("credit", Signal::Event(LedgerEvent::Credit { amount })) => {
                cx.data.balance += amount;
                cx.data.received += amount;
            }
            ("send", Signal::Event(LedgerEvent::Transfer { to, amount })) => {
                let to = EntityKey::new("ledger", to).map_err(|e| Reject::new("invalid_target", e.to_string()))?;
                cx.data.balance -= amount;
                cx.data.sent += amount;
                cx.send(to, json!({ "type": "credit", "amount": amount }));
            }
            ("refuse", _) => return Err(Reject::new("insufficient_funds", "not enough money")),
            ("pay_interest", _) => {
                cx.data.balance += 1;
                cx.data.interest += 1;
                cx.set_timer("interest");
            }
            ("notify", _) => cx.call("notify", json!({ "account": cx.key.id })),
            ("notified", _) => cx.data.notified += 1,
            ("notify_failed", _) => cx.data.notify_failed += 1,
            ("panic", _) => panic!("the boom event blows up on purpose"),
            _ => {}
        }
        Ok(())
    }
}

/// A call handler that fails the first `fail_first` calls (retryably), then answers.
pub struct Flaky {
    pub fail_first: u32,
    pub calls: AtomicU32,
}

impl Flaky {
    pub fn new(fail_first: u32) -> Arc<Self> {
        Arc::new(Self { fail_first, calls: AtomicU32::new(0) })
    }
}

impl CallHandler for Flaky {
    fn call(&self, _call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.fail_first;
        Box::pin(async move {
            if fail {
                Err(CallError::retryable(format!("simulated failure #{}", n + 1)))
            } else {
                Ok(json!({ "ok": true, "echo": request }))
            }
        })
    }
}

pub fn registry(handler: Arc<dyn CallHandler>) -> Registry {
    let mut r = Registry::new();
    r.add_workflow(Arc::new(Ledger));
    r.add_definition("tests/common/ledger.toml", LEDGER_TOML).expect("the ledger definition is valid");
    r.add_handler("notify", handler);
    r
}

pub fn key(id: &str) -> EntityKey {
    EntityKey::new("ledger", id).expect("valid key")
}

pub fn ev(id: &str, body: Value) -> Input {
    Input::domain(id, body, Cause::System { detail: "test".into() })
}

pub fn account(engine: &Engine, id: &str) -> Option<(String, Account)> {
    engine
        .record(&key(id))
        .expect("readable")
        .map(|r| (r.state, serde_json::from_value(r.data).expect("account decodes")))
}

/// Waits (in real time, briefly) until background work of the engine makes `cond` true.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
