//! What runs after commits and in the background: the timer loop, outbox delivery, external calls with
//! retries, and the recovery of all three after a restart.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};

use super::model::*;
use super::{Engine, Error};
use crate::store::shard::Shard;
use crate::store::{keys, scan_prefix, Batch, Table};

/// In-memory bookkeeping of the background services (never the truth: that is in the store).
#[derive(Default)]
pub struct Services {
    /// Timer rows being delivered right now, so a scan does not dispatch them twice.
    timers_in_flight: Mutex<HashSet<Vec<u8>>>,
    /// Timer rows whose delivery failed transiently (paused entity, overload), with when to try again.
    timers_deferred: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Calls being run right now (including those waiting to be admitted).
    calls_in_flight: Mutex<HashSet<String>>,
    /// Of those, the calls their handler still holds back (paced, or pushes an operator holds): nothing of theirs
    /// has gone out, so a hand-over does not wait for them.
    calls_waiting: Mutex<HashSet<String>>,
    /// Messages waiting for delivery, per sender, in send order; a sender with a queue has one worker draining it.
    outbox_queues: Mutex<HashMap<EntityKey, std::collections::VecDeque<OutboxRow>>>,
    /// Told each fired timer's lateness in service milliseconds (the `/metrics` histogram), once installed.
    pub(crate) timer_lateness: std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the timer loop and, for a node alone on its store, recovers undelivered messages and unfinished calls
/// (a node of a cluster recovers each shard as it gains it: [`Engine::gain`]).
pub fn start(engine: &Engine) {
    let e = engine.clone();
    actix_rt::spawn(async move { timer_loop(e).await });
    if engine.inner.ownership.is_alone() {
        let e = engine.clone();
        actix_rt::spawn(async move {
            if let Err(err) = recover(&e, None).await {
                tracing::error!(error = %err, "recovering outbox and calls failed");
            }
        });
    }
}

/// Reads rows of a work table: every row when this node holds every shard, else those of `shards` (or of the
/// shards this node holds, for `None`).
pub(super) async fn scan_work(
    engine: &Engine,
    table: Table,
    shards: Option<&[Shard]>,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    limit: usize,
) -> Result<crate::store::KvPairs, crate::store::Error> {
    let store = &engine.inner.store;
    let ownership = &engine.inner.ownership;
    match shards {
        None if ownership.holds_all() => store.scan(table, start, end, limit, false).await,
        None => store.scan_shards(table, &ownership.held(), start, end, limit).await,
        Some(s) => store.scan_shards(table, s, start, end, limit).await,
    }
}

/// Delivers the outbox and resumes the calls of `shards` (every shard for `None`): after a restart, or when this
/// node gains shards from another. An at-most-once call found in flight may have reached the marketplace: its
/// outcome is unknown, and it waits for an operator instead of being sent again.
async fn recover(engine: &Engine, shards: Option<Vec<Shard>>) -> Result<(), Error> {
    let mut start = Bound::Unbounded;
    loop {
        let page = scan_work(engine, Table::Outbox, shards.as_deref(), start, Bound::Unbounded, 1000).await?;
        for (_, v) in &page {
            if let Ok(row) = serde_json::from_slice::<OutboxRow>(v) {
                engine.spawn_delivery(row);
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
            _ => break,
        }
    }
    let mut start = Bound::Unbounded;
    loop {
        let page = scan_work(engine, Table::Effects, shards.as_deref(), start, Bound::Unbounded, 1000).await?;
        for (_, v) in &page {
            if let Ok(mut row) = serde_json::from_slice::<CallRow>(v) {
                match row.status {
                    CallStatus::Pending => engine.spawn_call(row),
                    CallStatus::InFlight => {
                        // Interrupted while being sent: it may have taken effect; never send it blindly again.
                        row.status = CallStatus::NeedsAttention;
                        row.last_error = Some(
                            "interrupted while being sent (crash, restart or hand-over): the outcome is \
                            unknown; check the marketplace, then retry or cancel"
                                .into(),
                        );
                        engine.inner.stats.calls_needing_attention.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(call = %row.call, id = %row.id, "at-most-once call interrupted; needs an operator");
                        if let Ok(v) = serde_json::to_vec(&row) {
                            let mut b = Batch::new();
                            b.put(Table::Effects, row.key(), v);
                            let now = engine.inner.clock.now();
                            super::attention::raise(&mut b, &row.entity, &super::attention::of_call(&row, true), now);
                            if let Err(e) = engine.commit_for(&row.entity, b).await {
                                tracing::error!(id = %row.id, error = %e, "could not record an interrupted call");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
            _ => break,
        }
    }
    Ok(())
}

impl Engine {
    /// Commits an engine write about `entity` (a call row, a delivered message, a stale timer) under the fence of
    /// its shard: refused with `not_owner` if this node no longer holds the shard.
    pub(crate) async fn commit_for(&self, entity: &EntityKey, mut b: Batch) -> Result<(), Error> {
        let shard = super::shards::Ownership::shard_of(entity);
        b.fence = self
            .inner
            .ownership
            .fence(shard)
            .ok_or_else(|| Error::NotOwner(format!("shard {shard} of {entity} is not held by this node")))?;
        // The engine's own work: queued at the committer within the background permits while clients are active.
        let _permit = self.yield_to_clients(&self.inner.background).await;
        self.inner.committer.commit(b).await.map_err(Error::from)
    }

    /// This node took or renewed these leases (shard, epoch): the shards new to it start their work at once (due
    /// timers fire on the next scan; messages are delivered and calls resumed here).
    pub fn gain(&self, leases: &[(Shard, i64)]) {
        let new = self.inner.ownership.gain(leases);
        if new.is_empty() {
            return;
        }
        tracing::info!(shards = new.len(), "shards gained");
        let e = self.clone();
        actix_rt::spawn(async move {
            if let Err(err) = recover(&e, Some(new)).await {
                tracing::error!(error = %err, "recovering the outbox and calls of gained shards failed");
            }
        });
        self.inner.timer_wake.notify_one();
    }

    /// These shards are another node's now (or nobody's): their actors, queued messages and timers are dropped at
    /// once; calls in flight finish, but their results are not taken here (the new owner has the rows).
    pub fn lose(&self, shards: &[Shard]) {
        let gone = self.inner.ownership.lose(shards);
        if gone.is_empty() {
            return;
        }
        tracing::warn!(shards = ?gone, "shards lost");
        let set: HashSet<Shard> = gone.iter().copied().collect();
        let of = |k: &EntityKey| set.contains(&super::shards::Ownership::shard_of(k));
        self.inner.directory.stop_where(|k| of(k));
        lock(&self.inner.services.outbox_queues).retain(|from, _| !of(from));
        lock(&self.inner.services.timers_deferred).clear();
    }

    /// Hands shards over gracefully: no new input of theirs is taken, the ones in flight finish (and calls in
    /// flight, so that a push does not become "outcome unknown" at the new owner), for at most `deadline`; then
    /// the shards are dropped here. The caller releases their leases afterwards.
    pub async fn drain(&self, shards: &[Shard], deadline: Duration) {
        let ownership = &self.inner.ownership;
        ownership.leave(shards);
        let until = Instant::now() + deadline;
        loop {
            let busy = shards.iter().map(|s| ownership.busy(*s)).sum::<usize>() + {
                let waiting = lock(&self.inner.services.calls_waiting);
                lock(&self.inner.services.calls_in_flight)
                    .iter()
                    .filter(|id| !waiting.contains(*id) && shard_of_id(id).is_some_and(|s| shards.contains(&s)))
                    .count()
            };
            if busy == 0 || Instant::now() >= until {
                if busy > 0 {
                    tracing::warn!(busy, "handing shards over with work still in flight");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.lose(shards);
    }
}

/// The shard of a call or message id (`kind/id#...`).
fn shard_of_id(id: &str) -> Option<Shard> {
    crate::store::shard::of_row(Table::Effects, id.as_bytes())
}

impl Engine {
    /// Delivers the messages and runs the calls of a commit that just became durable.
    pub(crate) fn after_commit(&self, messages: Vec<OutboxRow>, calls: Vec<CallRow>) {
        for m in messages {
            self.spawn_delivery(m);
        }
        for c in calls {
            self.spawn_call(c);
        }
        // A new timer may be sooner than what the timer loop sleeps towards.
        self.inner.timer_wake.notify_one();
    }

    /// Queues a message behind the sender's earlier ones: messages from one entity arrive in the order they were
    /// sent (a bind request is never overtaken by the release that followed it).
    pub(crate) fn spawn_delivery(&self, row: OutboxRow) {
        let start_worker = {
            let mut queues = lock(&self.inner.services.outbox_queues);
            let q = queues.entry(row.from.clone()).or_default();
            let idle = q.is_empty();
            if !q.iter().any(|r| r.id == row.id) {
                q.push_back(row.clone());
            }
            idle
        };
        if start_worker {
            let e = self.clone();
            let from = row.from.clone();
            actix_rt::spawn(async move { e.drain_outbox(from).await });
        }
    }

    async fn drain_outbox(&self, from: EntityKey) {
        let shard = super::shards::Ownership::shard_of(&from);
        loop {
            if self.inner.ownership.epoch(shard).is_none() {
                // The sender's shard moved: its messages are the new owner's to deliver.
                lock(&self.inner.services.outbox_queues).remove(&from);
                return;
            }
            let next = lock(&self.inner.services.outbox_queues).get(&from).and_then(|q| q.front().cloned());
            let Some(row) = next else { return };
            let delivered = self.deliver_message(row.clone()).await;
            let mut queues = lock(&self.inner.services.outbox_queues);
            if let Some(q) = queues.get_mut(&from) {
                if q.front().map(|r| &r.id) == Some(&row.id) {
                    q.pop_front();
                }
                if q.is_empty() || !delivered {
                    // Undeliverable messages stay in the store for operators and recovery; the queue moves on only
                    // when the message was delivered, so order holds.
                    if !delivered {
                        q.clear();
                    }
                    queues.remove(&from);
                    return;
                }
            }
        }
    }

    /// Delivers one message until its receiver has it; `false` when it cannot be delivered (stopping, or a
    /// permanent error that operators must look at).
    async fn deliver_message(&self, row: OutboxRow) -> bool {
        let _work = self.yield_to_clients(&self.inner.work).await;
        let mut wait = Duration::from_millis(20);
        loop {
            let input = Input {
                id: row.id.clone(),
                event: Event::Domain { body: row.body.clone() },
                cause: Cause::Message { from: row.from.to_string() },
                request_id: row.request_id.clone(),
            };
            match self.send_internal(row.to.clone(), input, None, super::Route::Owner).await {
                Ok(_) => {
                    self.inner.stats.messages_delivered.fetch_add(1, Ordering::Relaxed);
                    let mut b = Batch::new();
                    b.delete(Table::Outbox, row.key());
                    super::attention::settle(&mut b, &row.from, super::attention::MESSAGE_UNDELIVERABLE, &row.id);
                    if let Err(e) = self.commit_for(&row.from, b).await {
                        tracing::warn!(message = %row.id, error = %e, "could not remove a delivered message");
                    }
                    return true;
                }
                Err(Error::Stopped) => return false,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(message = %row.id, to = %row.to, error = %e,
                        "message cannot be delivered; it stays in the outbox for operators");
                    let mut b = Batch::new();
                    let concern = super::attention::of_message(&row, &e.to_string());
                    super::attention::raise(&mut b, &row.from, &concern, self.inner.clock.now());
                    if let Err(e) = self.commit_for(&row.from, b).await {
                        tracing::warn!(message = %row.id, error = %e, "could not record an undeliverable message");
                    }
                    return false;
                }
            }
        }
    }

    pub(crate) fn spawn_call(&self, row: CallRow) {
        if !lock(&self.inner.services.calls_in_flight).insert(row.id.clone()) {
            return;
        }
        let e = self.clone();
        actix_rt::spawn(async move { e.run_call(row).await });
    }

    /// Runs one attempt of a call. Leaves the in-flight set before its retry timer can exist, so that the
    /// retry is never mistaken for the attempt still running.
    async fn run_call(&self, mut row: CallRow) {
        let inner = &self.inner;
        let done = |id: &str| {
            lock(&inner.services.calls_in_flight).remove(id);
        };
        let policy = inner
            .registry
            .kind(&row.entity.kind)
            .and_then(|r| r.versions.values().rev().find_map(|d| d.calls.get(&row.call).copied()));
        let (Some(policy), Some(handler)) = (policy, inner.registry.handler(&row.call)) else {
            tracing::error!(call = %row.call, id = %row.id, "no policy or handler for call");
            done(&row.id);
            return;
        };
        let shard = super::shards::Ownership::shard_of(&row.entity);
        // The handler may hold the call back (pacing, batching, an operator's hold on pushes); while it waits,
        // nothing is recorded, and a shard lost or a stop meanwhile ends the wait.
        lock(&inner.services.calls_waiting).insert(row.id.clone());
        let admit = handler.admit(&row.call, &row.request);
        tokio::pin!(admit);
        let ticket = loop {
            tokio::select! {
                biased;
                t = &mut admit => break t,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if inner.ownership.epoch(shard).is_none() || inner.stopping.load(Ordering::Acquire) {
                        lock(&inner.services.calls_waiting).remove(&row.id);
                        done(&row.id);
                        return;
                    }
                }
            }
        };
        lock(&inner.services.calls_waiting).remove(&row.id);
        // A call the handler did not hold back is the engine's own work, bounded always (each call's result is a
        // commit: unbounded, a burst of calls would fill the committer's queue); a batched push is not (its batch
        // waits for every seat, and batching bounds it already).
        let _work = match ticket {
            None => inner.work.clone().acquire_owned().await.ok(),
            Some(_) => None,
        };
        // A node whose leases may be running out (cut off from the database) starts nothing the outside world
        // sees: the node taking its shards over must never be calling at the same time. It waits for a renewal;
        // a shard it loses meanwhile is the new owner's to resume.
        loop {
            // A return from here on drops the ticket: its seat is given up.
            if inner.ownership.epoch(shard).is_none() || inner.stopping.load(Ordering::Acquire) {
                done(&row.id);
                return;
            }
            if inner.ownership.fresh() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        inner.stats.calls_started.fetch_add(1, Ordering::Relaxed);
        if policy.at_most_once {
            // The intent is durable before the call goes out: a crash from here on is an unknown outcome.
            let mut flight = row.clone();
            flight.status = CallStatus::InFlight;
            let mut b = Batch::new();
            if let Ok(v) = serde_json::to_vec(&flight) {
                b.put(Table::Effects, flight.key(), v);
            }
            if let Err(e) = self.commit_for(&row.entity, b).await {
                tracing::error!(id = %row.id, error = %e, "could not record the attempt; not sending");
                done(&row.id);
                return;
            }
        }
        let result = match ticket {
            Some(ticket) => handler.call_admitted(ticket, &row.call, row.request.clone(), policy.timeout).await,
            None => match tokio::time::timeout(policy.timeout, handler.call(&row.call, row.request.clone())).await {
                Ok(r) => r,
                Err(_) => Err(super::CallError::unknown(format!("timed out after {:?}", policy.timeout))),
            },
        };
        crate::failpoint::hit_at("after_call", &row.call);
        let delivered = match result {
            Ok(response) => Ok(response),
            Err(e) if !e.retryable => Err(e.message),
            Err(e) if policy.at_most_once && e.outcome_unknown => {
                inner.stats.call_failures.fetch_add(1, Ordering::Relaxed);
                inner.stats.calls_needing_attention.fetch_add(1, Ordering::Relaxed);
                row.attempts += 1;
                row.status = CallStatus::NeedsAttention;
                row.next_attempt_at = None;
                row.last_error = Some(format!(
                    "{} (the outcome is unknown: check the marketplace, then retry or cancel)",
                    e.message
                ));
                tracing::error!(call = %row.call, id = %row.id, error = %e.message, "at-most-once call with unknown outcome");
                let mut b = Batch::new();
                if let Ok(v) = serde_json::to_vec(&row) {
                    b.put(Table::Effects, row.key(), v);
                }
                super::attention::raise(&mut b, &row.entity, &super::attention::of_call(&row, true), inner.clock.now());
                done(&row.id);
                if let Err(err) = self.commit_for(&row.entity, b).await {
                    tracing::error!(id = %row.id, error = %err, "could not record a call with unknown outcome");
                }
                return;
            }
            Err(e) => {
                inner.stats.call_failures.fetch_add(1, Ordering::Relaxed);
                row.attempts += 1;
                row.last_error = Some(e.message.clone());
                let mut b = Batch::new();
                let now = inner.clock.now();
                if row.attempts < policy.max_attempts {
                    let due = now + TimeDelta::from_std(policy.backoff(row.attempts)).unwrap_or(TimeDelta::MAX);
                    row.status = CallStatus::Retrying;
                    row.next_attempt_at = Some(due);
                    let timer = TimerRow {
                        entity: row.entity.clone(),
                        name: format!("retry:{}", row.id),
                        due,
                        set_seq: row.attempts as u64,
                        set_at: now,
                        target: TimerTarget::CallRetry { call_id: row.id.clone() },
                    };
                    if let Ok(v) = serde_json::to_vec(&timer) {
                        b.put(Table::Timers, timer.key(), v);
                    }
                    tracing::warn!(call = %row.call, id = %row.id, attempt = row.attempts, error = %e.message,
                        retry_at = %due, "external call failed; will retry");
                } else {
                    row.status = CallStatus::NeedsAttention;
                    row.next_attempt_at = None;
                    inner.stats.calls_needing_attention.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(call = %row.call, id = %row.id, attempts = row.attempts, error = %e.message,
                        "external call out of attempts; needs an operator");
                    super::attention::raise(&mut b, &row.entity, &super::attention::of_call(&row, false), now);
                }
                if let Ok(v) = serde_json::to_vec(&row) {
                    b.put(Table::Effects, row.key(), v);
                }
                done(&row.id);
                if let Err(err) = self.commit_for(&row.entity, b).await {
                    tracing::error!(id = %row.id, error = %err, "could not record a failed call attempt");
                }
                inner.timer_wake.notify_one();
                return;
            }
        };
        self.deliver_call_result(&row, delivered, None).await;
        done(&row.id);
    }

    /// Hands a call's result to its entity; `audit` is the operator's cancel, committed with the result.
    async fn deliver_call_result(
        &self,
        row: &CallRow,
        result: Result<serde_json::Value, String>,
        audit: Option<super::audit::Audit>,
    ) {
        let input = Input {
            id: format!("call:{}", row.id),
            event: Event::CallResult {
                call: row.call.clone(),
                call_id: row.id.clone(),
                request: result.is_err().then(|| row.request.clone()),
                by_operator: audit.is_some(),
                result,
            },
            cause: Cause::Call { call: row.call.clone() },
            request_id: None,
        };
        let mut wait = Duration::from_millis(20);
        loop {
            match self.send_internal(row.entity.clone(), input.clone(), audit.clone(), super::Route::Here).await {
                Ok(_) => return,
                Err(Error::NotOwner(why)) => {
                    // The entity's shard moved: its new owner resumes the call from the store.
                    tracing::info!(id = %row.id, why, "a call result is left to the shard's new owner");
                    return;
                }
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(id = %row.id, error = %e, "call result cannot be delivered");
                    return;
                }
            }
        }
    }

    /// An operator's retry or cancel of a call, carried out by the node that holds the call's entity (forwarded
    /// there from any other); `route` [`super::Route::Here`] is the receiving end of a forward.
    pub async fn act_on_call(
        &self,
        call_id: &str,
        action: super::CallAction,
        audit: &super::audit::Audit,
        route: super::Route,
    ) -> Result<(), Error> {
        let bytes = self.inner.store.get(Table::Effects, call_id.as_bytes()).await?.ok_or(Error::NotFound)?;
        let row: CallRow = serde_json::from_slice(&bytes).map_err(|e| Error::Internal(e.to_string()))?;
        let shard = super::shards::Ownership::shard_of(&row.entity);
        if !self.inner.ownership.serves(shard) {
            return match (route, self.inner.forwarder.get()) {
                (super::Route::Owner, Some(f)) => {
                    f.forward_call(row.entity.clone(), call_id.to_string(), action, audit.clone()).await
                }
                _ => Err(Error::NotOwner(format!("shard {shard} of {} is not served by this node", row.entity))),
            };
        }
        match action {
            super::CallAction::Retry => self.retry_call(row, audit).await.map(|_| ()),
            super::CallAction::Cancel => {
                let why = format!("cancelled: {}: {}", audit.operator, audit.reason);
                let audit = super::audit::Audit { call: Some(row.id.clone()), ..audit.clone() };
                self.deliver_call_result(&row, Err(why), Some(audit)).await;
                Ok(())
            }
            super::CallAction::Complete { response } => {
                // A call still running or waiting for its retry may yet answer for itself.
                if row.status != CallStatus::NeedsAttention {
                    return Err(Error::InvalidInput(format!(
                        "call {} does not need attention ({:?}): only such a call can be marked done",
                        row.id, row.status
                    )));
                }
                let audit = super::audit::Audit { call: Some(row.id.clone()), ..audit.clone() };
                self.deliver_call_result(&row, Ok(response), Some(audit)).await;
                Ok(())
            }
        }
    }

    /// Runs a call again now (operator "retry"): for calls waiting on a retry or needing attention.
    /// `audit` is the operator who asked, committed with the call's new row.
    async fn retry_call(&self, mut row: CallRow, audit: &super::audit::Audit) -> Result<CallRow, Error> {
        let mut b = Batch::new();
        if let (CallStatus::Retrying, Some(due)) = (row.status, row.next_attempt_at) {
            let timer = TimerRow {
                entity: row.entity.clone(),
                name: format!("retry:{}", row.id),
                due,
                set_seq: row.attempts as u64,
                set_at: due,
                target: TimerTarget::CallRetry { call_id: row.id.clone() },
            };
            b.delete(Table::Timers, timer.key());
        }
        row.status = CallStatus::Pending;
        row.next_attempt_at = None;
        if row.attempts > 0 {
            // A fresh budget of attempts: the operator has looked at it.
            row.attempts = 0;
        }
        b.put(Table::Effects, row.key(), serde_json::to_vec(&row).map_err(|e| Error::Internal(e.to_string()))?);
        super::attention::settle_call(&mut b, &row.entity, &row.id);
        let audit = super::audit::Audit { call: Some(row.id.clone()), ..audit.clone() };
        audit.put(&mut b, &row.entity, self.inner.clock.now(), &Default::default());
        self.commit_for(&row.entity, b).await?;
        self.spawn_call(row.clone());
        Ok(row)
    }

    async fn fire(&self, key: Vec<u8>, row: TimerRow) {
        let inner = &self.inner;
        let _work = self.yield_to_clients(&inner.work).await;
        let now = inner.clock.now();
        let late = (now - row.due).num_milliseconds().max(0) as u64;
        let result = match &row.target {
            TimerTarget::Entity => {
                let input = Input {
                    id: format!("timer:{}:{}", row.name, row.set_seq),
                    event: Event::Timer { name: row.name.clone(), set_seq: row.set_seq },
                    cause: Cause::Timer { name: row.name.clone() },
                    request_id: None,
                };
                match self.send_internal(row.entity.clone(), input, None, super::Route::Here).await {
                    Ok(o) if o.code.as_deref() == Some("stale") => {
                        // Cancelled or consumed already; the row is a leftover.
                        let mut b = Batch::new();
                        b.delete(Table::Timers, key.clone());
                        self.commit_for(&row.entity, b).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            TimerTarget::CallRetry { call_id } => {
                let mut b = Batch::new();
                b.delete(Table::Timers, key.clone());
                let call = inner
                    .store
                    .get(Table::Effects, call_id.as_bytes())
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice::<CallRow>(&v).ok());
                let call = call.map(|mut r| {
                    r.status = CallStatus::Pending;
                    r.next_attempt_at = None;
                    r
                });
                if let Some(r) = &call {
                    if let Ok(v) = serde_json::to_vec(r) {
                        b.put(Table::Effects, r.key(), v);
                    }
                }
                let res = self.commit_for(&row.entity, b).await;
                if let (Ok(()), Some(r)) = (&res, call) {
                    self.spawn_call(r);
                }
                res
            }
        };
        match result {
            Ok(()) => {
                inner.stats.timers_fired.fetch_add(1, Ordering::Relaxed);
                inner.stats.timer_lateness_ms.fetch_add(late, Ordering::Relaxed);
                inner.services.timer_lateness.get().inspect(|observe| observe(late));
            }
            Err(Error::Stopped) => {}
            Err(e) => {
                let again = if e.is_transient() { Duration::from_millis(500) } else { Duration::from_secs(30) };
                if !e.is_transient() {
                    tracing::error!(timer = %row.name, entity = %row.entity, error = %e, "timer delivery failed");
                }
                lock(&inner.services.timers_deferred).insert(key.clone(), Instant::now() + again);
            }
        }
        lock(&inner.services.timers_in_flight).remove(&key);
        inner.timer_wake.notify_one();
    }
}

/// Fires due timers in due order, sleeping on the service clock until the next one (or a wake-up).
///
/// A backlog (every overdue timer after a restart, a million due at the same minute) is worked through in one pass
/// of scans, each starting after the last row the previous one dispatched, so no scan reads rows already in flight
/// again; at most `2 × timer_batch` firings are in flight, so the backlog stays on disk, not in memory. A pass ends
/// when a scan reaches the rows not yet due; the next one starts from the soonest row again, which picks up rows
/// whose delivery was deferred and rows set meanwhile before the cursor (late, never lost).
async fn timer_loop(engine: Engine) {
    let inner = &engine.inner;
    let batch = inner.config.timer_batch.max(1);
    let max_in_flight = batch.saturating_mul(2);
    // Where the pass stands: the last row dispatched; `None` starts from the soonest row.
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let room = max_in_flight.saturating_sub(lock(&inner.services.timers_in_flight).len()).min(batch);
        if room == 0 {
            // Each firing that ends wakes us; the sleep only bounds a lost wake-up.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = inner.timer_wake.notified() => {}
            }
            continue;
        }
        let now = inner.clock.now();
        let horizon = keys::time_key(now + TimeDelta::milliseconds(1)).to_be_bytes().to_vec();
        let start = match &cursor {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let due = match scan_work(&engine, Table::Timers, None, start, Bound::Excluded(horizon.clone()), room).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "scanning timers failed");
                cursor = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let full = due.len() == room;
        cursor = if full { due.last().map(|(k, _)| k.clone()) } else { None };
        let mut busy = false;
        {
            let real_now = Instant::now();
            let mut deferred = lock(&inner.services.timers_deferred);
            if !deferred.is_empty() {
                deferred.retain(|_, at| *at > real_now);
            }
            let mut in_flight = lock(&inner.services.timers_in_flight);
            for (k, v) in due {
                if in_flight.contains(&k) || deferred.contains_key(&k) {
                    busy = true;
                    continue;
                }
                let Ok(row) = serde_json::from_slice::<TimerRow>(&v) else {
                    tracing::error!("a timer row does not decode; skipping it");
                    continue;
                };
                in_flight.insert(k.clone());
                let e = engine.clone();
                actix_rt::spawn(async move { e.fire(k, row).await });
            }
            busy |= !in_flight.is_empty();
        }
        if full {
            // More may be due right after the cursor: go on once the firings just spawned had a turn.
            tokio::task::yield_now().await;
            continue;
        }
        let next = scan_work(&engine, Table::Timers, None, Bound::Included(horizon), Bound::Unbounded, 1)
            .await
            .ok()
            .and_then(|r| r.first().and_then(|(k, _)| keys::read_u64(k, 0)))
            .and_then(keys::time_from_key);
        let until_next = next.and_then(|n| inner.clock.real_until(n)).unwrap_or(Duration::from_secs(1));
        let cap = if busy { Duration::from_millis(200) } else { Duration::from_secs(1) };
        tokio::select! {
            _ = tokio::time::sleep(until_next.min(cap)) => {}
            _ = inner.timer_wake.notified() => {}
        }
    }
}

/// Reads every pending timer of the store in due order, at most `limit`, due before `before` if given.
pub async fn pending_timers(
    engine: &Engine,
    before: Option<chrono::DateTime<Utc>>,
    limit: usize,
) -> Result<Vec<TimerRow>, Error> {
    let end = match before {
        Some(t) => Bound::Excluded(keys::time_key(t).to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    let rows = engine.inner.store.scan(Table::Timers, Bound::Unbounded, end, limit, false).await?;
    Ok(rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
}

/// Reads the pending messages and calls of one entity (for operators).
pub async fn pending_effects(engine: &Engine, key: &EntityKey) -> Result<(Vec<OutboxRow>, Vec<CallRow>), Error> {
    let prefix = format!("{key}#");
    let store = &*engine.inner.store;
    let msgs = scan_prefix(store, Table::Outbox, prefix.as_bytes(), 1000).await?;
    let calls = scan_prefix(store, Table::Effects, prefix.as_bytes(), 1000).await?;
    Ok((
        msgs.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect(),
        calls.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect(),
    ))
}
