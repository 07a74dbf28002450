//! One step of one entity, without I/O: from the stored record and an input to the outcome, the new record and
//! the batch that makes it all durable (state, journal, timers, outbox, calls, idempotency, the count of
//! entities by state) in one commit.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::by_state;
use super::definition::Definition;
use super::model::*;
use super::workflow::{DecideInput, DecideOutput, DynWorkflow};
use super::Error;
use crate::store::{Batch, Table};

/// The result of a step.
#[derive(Debug, Clone)]
pub struct Step {
    pub outcome: Outcome,
    /// The batch to commit; `None` when nothing is to be kept (an input ignored by an entity that does not exist).
    pub batch: Option<Batch>,
    /// The record after the commit.
    pub record: Option<EntityRecord>,
    /// Messages to deliver and calls to run once the batch is durable.
    pub messages: Vec<OutboxRow>,
    pub calls: Vec<CallRow>,
    /// The input was a timer or call result that no longer applies (already consumed, or cancelled).
    pub stale: bool,
    /// What the workflow asked to count on `/metrics` ([`crate::engine::Cx::count`]), once durable.
    pub marks: Vec<(&'static str, String)>,
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

/// Runs `input` against `record` (or a new entity) and returns everything the engine must persist and do.
pub fn step(
    workflow: &dyn DynWorkflow,
    def: &Definition,
    key: &EntityKey,
    record: Option<&EntityRecord>,
    input: &Input,
    now: DateTime<Utc>,
) -> Result<Step, Error> {
    let state = record.map(|r| r.state.clone()).unwrap_or_else(|| def.initial.clone());
    let stale_step = |state: String| Step {
        outcome: Outcome {
            status: Status::Ignored,
            code: Some("stale".into()),
            message: Some("this timer or call result was already consumed or cancelled".into()),
            state,
            reply: Value::Null,
            repeated: false,
        },
        batch: None,
        record: record.cloned(),
        messages: vec![],
        calls: vec![],
        stale: true,
        marks: vec![],
    };
    // A timer or call result must still be pending, or it is a leftover (cancelled, or consumed already).
    match (&input.event, record) {
        (Event::Timer { name, set_seq }, r)
            if r.and_then(|r| r.timers.get(name)).map(|t| t.set_seq) != Some(*set_seq) =>
        {
            return Ok(stale_step(state));
        }
        (Event::CallResult { call_id, .. }, r) if !r.map(|r| r.calls.contains(call_id)).unwrap_or(false) => {
            return Ok(stale_step(state));
        }
        _ => {}
    }

    if let Event::Control { action } = &input.event {
        return control(key, record, input, action, now);
    }

    let initial_data;
    let data = match record {
        Some(r) => &r.data,
        None => {
            initial_data = workflow.initial_data();
            &initial_data
        }
    };
    let decided = workflow
        .decide(DecideInput { definition: def, key, state: &state, data, event: &input.event, now })
        .map_err(|e| Error::InvalidInput(e.to_string()))?;

    let exists = record.is_some();
    let mut rec = record.cloned().unwrap_or_else(|| EntityRecord {
        kind: key.kind.clone(),
        id: key.id.clone(),
        definition: def.name.clone(),
        version: def.version,
        fingerprint: def.fingerprint.clone(),
        state: state.clone(),
        data: data.clone(),
        seq: 0,
        created_at: now,
        updated_at: now,
        state_since: now,
        timers: Default::default(),
        calls: vec![],
        paused: false,
    });
    let seq = rec.seq + 1;
    let mut batch = Batch::new();
    let mut entry = JournalEntry {
        seq,
        at: now,
        input_id: input.id.clone(),
        cause: input.cause.clone(),
        event: String::new(),
        from: state.clone(),
        to: state.clone(),
        status: Status::Ignored,
        code: None,
        notes: vec![],
        timers_set: vec![],
        timers_cancelled: vec![],
        messages: vec![],
        calls: vec![],
        request_id: input.request_id.clone(),
    };

    // Consume the timer or call result that caused this input, whatever the decision.
    match &input.event {
        Event::Timer { name, .. } => {
            if let Some(t) = rec.timers.remove(name) {
                batch.delete(Table::Timers, timer_row(key, name, &t, now).key());
            }
        }
        Event::CallResult { call_id, by_operator, .. } => {
            rec.calls.retain(|c| c != call_id);
            batch.delete(Table::Effects, call_id.as_bytes().to_vec());
            if *by_operator {
                // Only an operator settles a call that needs attention (or its retry, which settles it there).
                super::attention::settle_call(&mut batch, key, call_id);
            }
        }
        Event::Domain { .. } | Event::Control { .. } => {}
    }

    let mut messages = Vec::new();
    let mut calls = Vec::new();
    let mut marks = Vec::new();
    let outcome = match decided {
        DecideOutput::Ignored { event } => {
            entry.event = event;
            entry.notes.push(format!("no transition from `{state}` on `{}`: ignored", entry.event));
            if !exists {
                return Ok(Step {
                    outcome: Outcome {
                        status: Status::Ignored,
                        code: None,
                        message: Some(format!("no transition on `{}` for an unknown entity", entry.event)),
                        state,
                        reply: Value::Null,
                        repeated: false,
                    },
                    batch: None,
                    record: None,
                    messages: vec![],
                    calls: vec![],
                    stale: false,
                    marks: vec![],
                });
            }
            Outcome {
                status: Status::Ignored,
                code: None,
                message: None,
                state: state.clone(),
                reply: Value::Null,
                repeated: false,
            }
        }
        DecideOutput::Rejected { event, reject } => {
            entry.event = event;
            entry.status = Status::Rejected;
            entry.code = Some(reject.code.clone());
            entry.notes.push(reject.message.clone());
            if !exists {
                return Ok(Step {
                    outcome: Outcome {
                        status: Status::Rejected,
                        code: Some(reject.code),
                        message: Some(reject.message),
                        state,
                        reply: Value::Null,
                        repeated: false,
                    },
                    batch: None,
                    record: None,
                    messages: vec![],
                    calls: vec![],
                    stale: false,
                    marks: vec![],
                });
            }
            Outcome {
                status: Status::Rejected,
                code: Some(reject.code),
                message: Some(reject.message),
                state: state.clone(),
                reply: Value::Null,
                repeated: false,
            }
        }
        DecideOutput::Transition { event, to, data, effects, line } => {
            entry.event = event;
            entry.status = Status::Accepted;
            entry.to = to.clone();
            entry.notes = effects.notes.clone();
            entry.notes.push(format!("transition at {}:{line}", def.file));
            let mut cancel: Vec<String> = Vec::new();
            if to != state {
                if let Some(s) = def.state(&state) {
                    cancel.extend(s.timers.iter().cloned());
                }
                rec.state_since = now;
            }
            cancel.extend(effects.cancel_timers.iter().cloned());
            for name in cancel {
                if let Some(t) = rec.timers.remove(&name) {
                    batch.delete(Table::Timers, timer_row(key, &name, &t, now).key());
                    entry.timers_cancelled.push(name);
                }
            }
            let mut set: Vec<(String, Option<DateTime<Utc>>)> = Vec::new();
            if to != state || !exists {
                if let Some(s) = def.state(&to) {
                    set.extend(s.timers.iter().map(|t| (t.clone(), None)));
                }
            }
            set.extend(effects.set_timers.iter().cloned());
            for (name, at) in set {
                let due = match at {
                    Some(at) => at,
                    None => {
                        let d = def.timers.get(&name).copied().ok_or_else(|| {
                            Error::Internal(format!("timer `{name}` is not declared in {}", def.file))
                        })?;
                        now + TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
                    }
                };
                if let Some(old) = rec.timers.remove(&name) {
                    batch.delete(Table::Timers, timer_row(key, &name, &old, now).key());
                }
                let tref = TimerRef { due, set_seq: seq };
                let row = timer_row(key, &name, &tref, now);
                batch.put(Table::Timers, row.key(), encode(&row)?);
                entry.timers_set.push(format!("{name} at {}", due.to_rfc3339()));
                rec.timers.insert(name, tref);
            }
            for (n, (to_key, body)) in effects.messages.into_iter().enumerate() {
                let row = OutboxRow {
                    id: format!("{key}#{seq:016}.{n:04}"),
                    from: key.clone(),
                    to: to_key,
                    body,
                    created_at: now,
                    request_id: input.request_id.clone(),
                };
                batch.put(Table::Outbox, row.key(), encode(&row)?);
                entry.messages.push(format!("{} to {}", row.id, row.to));
                messages.push(row);
            }
            for (concern, raised) in &effects.attention {
                if *raised {
                    super::attention::raise(&mut batch, key, concern, now);
                } else {
                    super::attention::settle(&mut batch, key, concern.cause, &concern.subject);
                }
            }
            for (k, v) in &effects.index {
                match v {
                    Some(v) => batch.put(Table::Index, k.as_bytes().to_vec(), encode(v)?),
                    None => batch.delete(Table::Index, k.as_bytes().to_vec()),
                }
            }
            for (n, (call, request)) in effects.calls.into_iter().enumerate() {
                let row = CallRow {
                    id: format!("{key}#{seq:016}.c{n:04}"),
                    entity: key.clone(),
                    call,
                    request,
                    status: CallStatus::Pending,
                    attempts: 0,
                    created_at: now,
                    next_attempt_at: None,
                    last_error: None,
                };
                batch.put(Table::Effects, row.key(), encode(&row)?);
                entry.calls.push(format!("{} {}", row.call, row.id));
                rec.calls.push(row.id.clone());
                calls.push(row);
            }
            rec.state = to.clone();
            rec.data = data;
            marks = effects.marks;
            Outcome {
                status: Status::Accepted,
                code: None,
                message: None,
                state: to,
                reply: effects.reply.unwrap_or(Value::Null),
                repeated: false,
            }
        }
    };
    if rec.version != def.version || rec.fingerprint != def.fingerprint {
        // Only a definition that names the pinned version in `upgrades_from` gets here (the actor checks it).
        entry.notes.push(format!(
            "moves from {} v{} to v{} (which declares `upgrades_from = [{}]`)",
            rec.definition, rec.version, def.version, rec.version
        ));
        rec.version = def.version;
        rec.fingerprint = def.fingerprint.clone();
    }
    rec.seq = seq;
    rec.updated_at = now;
    batch.put(Table::Entities, key.prefix(), encode(&rec)?);
    by_state::count(&mut batch, &key.kind, record.map(|r| r.state.as_str()), &rec.state);
    batch.put(Table::Journal, journal_key(key, seq), encode(&entry)?);
    if !input.event.consumed_by_record() {
        batch.put(Table::Idempotency, idempotency_key(key, &input.id), encode(&outcome)?);
    }
    Ok(Step { outcome, batch: Some(batch), record: Some(rec), messages, calls, stale: false, marks })
}

/// The timers-table row of an entity's named timer.
pub fn timer_row(key: &EntityKey, name: &str, t: &TimerRef, now: DateTime<Utc>) -> TimerRow {
    TimerRow {
        entity: key.clone(),
        name: name.to_string(),
        due: t.due,
        set_seq: t.set_seq,
        set_at: now,
        target: TimerTarget::Entity,
    }
}

/// An operator's pause or resume: recorded in the journal like any transition, decided by the engine.
fn control(
    key: &EntityKey,
    record: Option<&EntityRecord>,
    input: &Input,
    action: &str,
    now: DateTime<Utc>,
) -> Result<Step, Error> {
    let Some(record) = record else { return Err(Error::NotFound) };
    let paused = match action {
        "pause" => true,
        "resume" => false,
        other => return Err(Error::InvalidInput(format!("unknown control action `{other}`"))),
    };
    let mut rec = record.clone();
    let changed = rec.paused != paused;
    rec.paused = paused;
    rec.seq += 1;
    rec.updated_at = now;
    let entry = JournalEntry {
        seq: rec.seq,
        at: now,
        input_id: input.id.clone(),
        cause: input.cause.clone(),
        event: action.to_string(),
        from: rec.state.clone(),
        to: rec.state.clone(),
        status: if changed { Status::Accepted } else { Status::Ignored },
        code: None,
        notes: vec![if paused {
            "paused: timers, messages and call results wait until resumed".to_string()
        } else {
            "resumed".to_string()
        }],
        timers_set: vec![],
        timers_cancelled: vec![],
        messages: vec![],
        calls: vec![],
        request_id: input.request_id.clone(),
    };
    let outcome = Outcome {
        status: entry.status,
        code: None,
        message: None,
        state: rec.state.clone(),
        reply: serde_json::json!({ "paused": paused }),
        repeated: false,
    };
    let mut batch = Batch::new();
    batch.put(Table::Entities, key.prefix(), encode(&rec)?);
    // A pause or resume keeps the state, so this moves no counter; here so that every record written is counted.
    by_state::count(&mut batch, &key.kind, Some(&record.state), &rec.state);
    batch.put(Table::Journal, journal_key(key, rec.seq), encode(&entry)?);
    batch.put(Table::Idempotency, idempotency_key(key, &input.id), encode(&outcome)?);
    Ok(Step {
        outcome,
        batch: Some(batch),
        record: Some(rec),
        messages: vec![],
        calls: vec![],
        stale: false,
        marks: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::by_state;
    use crate::engine::definition::Catalog;
    use crate::engine::workflow::{Cx, Reject, Signal, Workflow};
    use crate::store::{MemoryStore, Store};

    /// A workflow that does nothing but move between the states of [`DEF`].
    struct Mover;

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Ev {
        Go,
        Poke,
        Stop,
    }

    impl Workflow for Mover {
        type Data = ();
        type Event = Ev;
        fn kind(&self) -> &'static str {
            "mover"
        }
        fn catalog(&self) -> Catalog {
            Catalog {
                states: vec![],
                events: vec!["go", "poke", "stop"],
                guards: vec![],
                actions: vec![],
                calls: vec![],
            }
        }
        fn event_name(&self, event: &Ev) -> String {
            match event {
                Ev::Go => "go",
                Ev::Poke => "poke",
                Ev::Stop => "stop",
            }
            .into()
        }
        fn guard(&self, _: &str, _: &Cx<'_, ()>, _: &Signal<Ev>) -> bool {
            true
        }
        fn action(&self, _: &str, _: &mut Cx<'_, ()>, _: &Signal<Ev>) -> Result<(), Reject> {
            Ok(())
        }
    }

    const DEF: &str = r#"
name = "mover"
version = 1
initial = "idle"
terminal = ["done"]

[[state]]
name = "idle"

[[state]]
name = "running"

[[state]]
name = "done"

[[transition]]
from = ["idle"]
on = "go"
to = "running"

[[transition]]
from = ["running"]
on = "poke"

[[transition]]
from = ["running"]
on = "stop"
to = "done"
"#;

    /// Runs `event` on the entity `id` as the actor does: from its stored record, committing the batch.
    fn run(store: &dyn Store, def: &Definition, id: &str, event: &str, n: usize) -> Outcome {
        let key = EntityKey::new("mover", id).unwrap();
        let record: Option<EntityRecord> =
            crate::store::contract_tests::block(store.get(Table::Entities, &key.prefix()))
                .unwrap()
                .map(|b| serde_json::from_slice(&b).unwrap());
        let input = match event {
            "pause" => Input {
                id: format!("i{n}"),
                event: Event::Control { action: "pause".into() },
                cause: sys(),
                request_id: None,
            },
            _ => Input::domain(format!("i{n}"), serde_json::json!({ "type": event }), sys()),
        };
        let s = step(&Mover, def, &key, record.as_ref(), &input, Utc::now()).unwrap();
        if let Some(b) = s.batch {
            store.apply(&[b]).unwrap();
        }
        s.outcome
    }

    fn sys() -> Cause {
        Cause::System { detail: "test".into() }
    }

    fn count(store: &dyn Store, state: &str) -> i64 {
        crate::store::contract_tests::block(by_state::read(store))
            .unwrap()
            .get(&("mover".to_string(), state.to_string()))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn the_counters_move_in_the_batch_of_each_transition() {
        let def = Definition::parse("mover.toml", DEF, &Workflow::catalog(&Mover)).unwrap();
        let store = MemoryStore::new();
        let counts = |store: &MemoryStore| ["idle", "running", "done"].map(|s| count(store, s));
        // A new entity is counted in its first state.
        assert_eq!(run(&store, &def, "a", "go", 1).status, Status::Accepted);
        assert_eq!(run(&store, &def, "b", "go", 2).status, Status::Accepted);
        assert_eq!(counts(&store), [0, 2, 0]);
        // Staying in a state (a transition without `to`, an ignored input, a pause) moves nothing.
        assert_eq!(run(&store, &def, "a", "poke", 3).status, Status::Accepted);
        assert_eq!(run(&store, &def, "a", "go", 4).status, Status::Ignored);
        assert_eq!(run(&store, &def, "a", "pause", 5).status, Status::Accepted);
        assert_eq!(counts(&store), [0, 2, 0]);
        // A change of state moves one entity from one counter to the other.
        run(&store, &def, "a", "stop", 6);
        assert_eq!(counts(&store), [0, 1, 1]);
        // An input that creates nothing (ignored by an unknown entity) counts nothing.
        assert_eq!(run(&store, &def, "c", "stop", 7).status, Status::Ignored);
        assert_eq!(counts(&store), [0, 1, 1]);
    }
}
