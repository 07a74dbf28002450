//! The seam between the generic engine and a workflow's Rust code.
//!
//! A definition (data) says which transition may fire; the workflow (code) implements the guards and actions it
//! names. Actions decide without I/O: they change the entity's typed data and describe what to do next in
//! [`Effects`] (timers, messages, external calls, the reply); the engine persists all of it, then acts.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::attention::{Cause, Concern};
use super::definition::{call_event, Catalog, Definition};
use super::model::{EntityKey, Event};

/// A refusal of an input by an action: nothing of the transition is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Stable machine code, e.g. `org_already_bound`.
    pub code: String,
    pub message: String,
}

impl Reject {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_string(), message: message.into() }
    }
}

/// What a signal to a workflow is, once decoded.
#[derive(Debug, Clone)]
pub enum Signal<E> {
    Event(E),
    Timer(String),
    CallOk {
        call: String,
        response: Value,
    },
    /// A call failed for good; `request` is what it asked (absent in results recorded by earlier builds).
    CallFailed {
        call: String,
        error: String,
        request: Option<Value>,
        /// An operator cancelled it; the outside world did not refuse it.
        by_operator: bool,
    },
}

/// What actions ask the engine to do after the commit.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// The answer to the input's sender.
    pub reply: Option<Value>,
    /// Lines for the journal ("why").
    pub notes: Vec<String>,
    /// Named timers to set: with the definition's duration (`None`) or at a given time.
    pub set_timers: Vec<(String, Option<DateTime<Utc>>)>,
    pub cancel_timers: Vec<String>,
    /// Messages to other entities (delivered at least once, deduplicated by the receiver).
    pub messages: Vec<(EntityKey, Value)>,
    /// External calls by name with their request.
    pub calls: Vec<(String, Value)>,
    /// Writes to the index table, committed with the transition (derived lookups such as "the organizations of
    /// a user" that must never disagree with the entity that owns them); `None` deletes.
    pub index: Vec<(String, Option<Value>)>,
    /// Events worth counting on `/metrics` (family, label), counted once the transition is durable.
    pub marks: Vec<(&'static str, String)>,
    /// Concerns raised (`true`) or settled by the transition, indexed with its commit (filled by the engine).
    pub attention: Vec<(Concern, bool)>,
}

/// The context of one guard or action.
pub struct Cx<'a, D> {
    pub key: &'a EntityKey,
    pub now: DateTime<Utc>,
    /// The state the entity is in (before the transition).
    pub state: &'a str,
    /// The state the transition goes to.
    pub target: &'a str,
    pub data: &'a mut D,
    pub fx: &'a mut Effects,
    pub definition: &'a Definition,
}

impl<D> Cx<'_, D> {
    pub fn note(&mut self, s: impl Into<String>) {
        self.fx.notes.push(s.into());
    }
    pub fn reply(&mut self, v: Value) {
        self.fx.reply = Some(v);
    }
    /// Replies with a typed answer, the type the caller reads it back through (so the two cannot drift apart).
    pub fn answer<T: serde::Serialize>(&mut self, v: &T) {
        match serde_json::to_value(v) {
            Ok(v) => self.fx.reply = Some(v),
            Err(e) => tracing::error!(error = %e, "a workflow's reply does not encode"),
        }
    }
    pub fn set_timer(&mut self, name: &str) {
        self.fx.set_timers.push((name.to_string(), None));
    }
    pub fn set_timer_at(&mut self, name: &str, at: DateTime<Utc>) {
        self.fx.set_timers.push((name.to_string(), Some(at)));
    }
    pub fn cancel_timer(&mut self, name: &str) {
        self.fx.cancel_timers.push(name.to_string());
    }
    pub fn send(&mut self, to: EntityKey, body: Value) {
        self.fx.messages.push((to, body));
    }
    /// Sends `event`, of the receiver's event type, to another entity (delivered after the commit).
    pub fn tell<E: Serialize>(&mut self, to: EntityKey, event: &E) -> Result<(), Reject> {
        let body = serde_json::to_value(event).map_err(|e| Reject::new("internal_error", e.to_string()))?;
        self.fx.messages.push((to, body));
        Ok(())
    }
    pub fn call(&mut self, name: &str, request: Value) {
        self.fx.calls.push((name.to_string(), request));
    }
    /// Starts the external call `name` with a typed request (run after the commit; its answer comes back as an
    /// input).
    pub fn request<R: Serialize>(&mut self, name: &str, request: &R) -> Result<(), Reject> {
        let body = serde_json::to_value(request).map_err(|e| Reject::new("internal_error", e.to_string()))?;
        self.fx.calls.push((name.to_string(), body));
        Ok(())
    }
    /// Counts this transition on `/metrics` as `marketflow_{family}_total{kind="{label}"}` once it is durable
    /// (per node, from its start: a counter, as Prometheus expects).
    pub fn count(&mut self, family: &'static str, label: impl Into<String>) {
        self.fx.marks.push((family, label.into()));
    }
    pub fn index_put(&mut self, key: String, value: Value) {
        self.fx.index.push((key, Some(value)));
    }
    pub fn index_delete(&mut self, key: String) {
        self.fx.index.push((key, None));
    }
}

/// A workflow implementation: typed data and events, guards and actions by name.
pub trait Workflow: Send + Sync + 'static {
    type Data: Serialize + DeserializeOwned + Default + Clone + Send;
    /// Domain events, decoded from `{"type": "<name>", ...}`.
    type Event: Serialize + DeserializeOwned + Send;

    /// The entity kind this workflow runs (`subscription`, `organization`).
    fn kind(&self) -> &'static str;
    /// The names a definition may use.
    fn catalog(&self) -> Catalog;
    /// The name transitions use for a domain event.
    fn event_name(&self, event: &Self::Event) -> String;
    /// Whether a transition's guard holds. Unknown names never get here (definitions are validated).
    fn guard(&self, name: &str, cx: &Cx<'_, Self::Data>, signal: &Signal<Self::Event>) -> bool;
    /// Runs an action; an `Err` rejects the whole input.
    fn action(&self, name: &str, cx: &mut Cx<'_, Self::Data>, signal: &Signal<Self::Event>) -> Result<(), Reject>;

    /// What in this state and data needs a person (see [`super::attention`]): a pure function of them, so that
    /// the engine can diff it around every transition and index only the change.
    fn attention(&self, _state: &str, _data: &Self::Data) -> Vec<Concern> {
        Vec::new()
    }

    /// The causes [`Workflow::attention`] may name, described for the console, `ctl` and `/metrics`.
    fn causes(&self) -> Vec<Cause> {
        Vec::new()
    }
}

/// What the engine needs from a workflow, with the types erased to JSON.
pub trait DynWorkflow: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn catalog(&self) -> Catalog;
    /// Runs the decision of one input: pick the transition, run its actions, return the result.
    fn decide(&self, input: DecideInput<'_>) -> Result<DecideOutput, DecideError>;
    /// A new entity's data.
    fn initial_data(&self) -> Value;
    /// [`Workflow::attention`] over stored data (none when it does not decode).
    fn concerns(&self, state: &str, data: &Value) -> Vec<Concern>;
    fn causes(&self) -> Vec<Cause>;
}

/// Everything a decision may look at.
pub struct DecideInput<'a> {
    pub definition: &'a Definition,
    pub key: &'a EntityKey,
    pub state: &'a str,
    pub data: &'a Value,
    pub event: &'a Event,
    pub now: DateTime<Utc>,
}

/// The result of a decision.
#[derive(Debug, Clone)]
pub enum DecideOutput {
    /// A transition ran: the new state and data and its effects.
    Transition { event: String, to: String, data: Value, effects: Box<Effects>, line: usize },
    /// No transition matched.
    Ignored { event: String },
    /// An action refused the input.
    Rejected { event: String, reject: Reject },
}

/// An input that cannot be decided at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("the event does not decode: {0}")]
    BadEvent(String),
    #[error("the stored data does not decode: {0}")]
    BadData(String),
}

impl<W: Workflow> DynWorkflow for W {
    fn kind(&self) -> &'static str {
        Workflow::kind(self)
    }

    fn catalog(&self) -> Catalog {
        Workflow::catalog(self)
    }

    fn initial_data(&self) -> Value {
        serde_json::to_value(W::Data::default()).unwrap_or(Value::Null)
    }

    fn concerns(&self, state: &str, data: &Value) -> Vec<Concern> {
        serde_json::from_value::<W::Data>(data.clone()).map(|d| self.attention(state, &d)).unwrap_or_default()
    }

    fn causes(&self) -> Vec<Cause> {
        Workflow::causes(self)
    }

    fn decide(&self, input: DecideInput<'_>) -> Result<DecideOutput, DecideError> {
        let (signal, event) = match input.event {
            Event::Domain { body } => {
                let ev: W::Event =
                    serde_json::from_value(body.clone()).map_err(|e| DecideError::BadEvent(e.to_string()))?;
                let name = self.event_name(&ev);
                (Signal::Event(ev), name)
            }
            Event::Timer { name, .. } => (Signal::Timer(name.clone()), name.clone()),
            Event::CallResult { call, result: Ok(v), .. } => {
                (Signal::CallOk { call: call.clone(), response: v.clone() }, call_event(call, true))
            }
            Event::CallResult { call, result: Err(e), request, by_operator, .. } => (
                Signal::CallFailed {
                    call: call.clone(),
                    error: e.clone(),
                    request: request.clone(),
                    by_operator: *by_operator,
                },
                call_event(call, false),
            ),
            Event::Control { action } => {
                return Err(DecideError::BadEvent(format!("`{action}` is not a workflow event")))
            }
        };
        let data: W::Data =
            serde_json::from_value(input.data.clone()).map_err(|e| DecideError::BadData(e.to_string()))?;
        let before = &data;
        let name = event.clone();
        let candidates: Vec<_> = input.definition.candidates(input.state, &name).collect();
        for t in candidates {
            let target = t.to.clone().unwrap_or_else(|| input.state.to_string());
            let mut fx = Effects::default();
            let mut data = before.clone();
            let mut cx = Cx {
                key: input.key,
                now: input.now,
                state: input.state,
                target: &target,
                data: &mut data,
                fx: &mut fx,
                definition: input.definition,
            };
            if let Some(g) = &t.guard {
                if !self.guard(g, &cx, &signal) {
                    continue;
                }
            }
            for a in &t.actions {
                if let Err(reject) = self.action(a, &mut cx, &signal) {
                    return Ok(DecideOutput::Rejected { event, reject });
                }
            }
            fx.attention =
                super::attention::changes(self.attention(input.state, before), self.attention(&target, &data));
            let data = serde_json::to_value(&data).map_err(|e| DecideError::BadData(e.to_string()))?;
            return Ok(DecideOutput::Transition { event, to: target, data, effects: Box::new(fx), line: t.line });
        }
        Ok(DecideOutput::Ignored { event })
    }
}
