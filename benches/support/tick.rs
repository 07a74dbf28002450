//! A bench workflow (`tick`): one timer at an exact time, whose firing starts an external call `observe`. The
//! call runs only after the firing's transition is durable, so the call handler sees when the timer's effect
//! happened: its lateness (handler time minus due time) covers the timer loop, the actor and the group commit.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use marketflow::clock::Clock;
use marketflow::engine::definition::Catalog;
use marketflow::engine::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const TICK_TOML: &str = r#"
name = "tick"
version = 1
initial = "new"
terminal = []

[timers]
ring = "1h"

[calls.observe]
max_attempts = 3
initial_backoff = "1s"
max_backoff = "4s"
timeout = "2s"

[[state]]
name = "new"

[[state]]
name = "armed"

[[state]]
name = "rung"

[[transition]]
from = ["new"]
on = "arm"
to = "armed"
actions = ["arm"]

[[transition]]
from = ["armed"]
on = "ring"
to = "rung"
actions = ["observe"]

[[transition]]
from = ["rung"]
on = "observe.ok"

[[transition]]
from = ["rung"]
on = "observe.failed"
"#;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TickData {
    pub due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TickEvent {
    Arm { at: DateTime<Utc> },
}

pub struct Tick;

impl Workflow for Tick {
    type Data = TickData;
    type Event = TickEvent;

    fn kind(&self) -> &'static str {
        "tick"
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            states: vec![],
            events: vec!["arm"],
            guards: vec![],
            actions: vec!["arm", "observe"],
            calls: vec!["observe"],
        }
    }

    fn event_name(&self, _e: &TickEvent) -> String {
        "arm".into()
    }

    fn guard(&self, _name: &str, _cx: &Cx<'_, TickData>, _s: &Signal<TickEvent>) -> bool {
        false
    }

    fn action(&self, name: &str, cx: &mut Cx<'_, TickData>, s: &Signal<TickEvent>) -> Result<(), Reject> {
        match (name, s) {
            ("arm", Signal::Event(TickEvent::Arm { at })) => {
                cx.data.due = Some(*at);
                cx.set_timer_at("ring", *at);
            }
            ("observe", _) => cx.call("observe", json!({ "due": cx.data.due })),
            _ => {}
        }
        Ok(())
    }
}

/// The `observe` call: records how late (service milliseconds) each firing's effect happened.
pub struct Observer {
    pub clock: Arc<dyn Clock>,
    pub lateness_ms: Arc<Mutex<Vec<f64>>>,
}

impl CallHandler for Observer {
    fn call(&self, _call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let now = self.clock.now();
        if let Some(due) = request.get("due").cloned().and_then(|d| serde_json::from_value::<DateTime<Utc>>(d).ok()) {
            let late = (now - due).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
            self.lateness_ms.lock().unwrap_or_else(|e| e.into_inner()).push(late);
        }
        Box::pin(async { Ok(Value::Null) })
    }
}

/// Adds the tick workflow and its observer to a registry.
pub fn register(r: &mut Registry, observer: Observer) {
    r.add_workflow(Arc::new(Tick));
    r.add_definition("benches/support/tick.rs", TICK_TOML).expect("the tick definition is valid");
    r.add_handler("observe", Arc::new(observer));
}
