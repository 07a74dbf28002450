//! The marketplace's metering pushes, gathered into batches: one `PushMeteringData` carries up to 100 windows of
//! different instances, and no instance goes out in two calls within 60 s of service time (the marketplace's
//! rules, DESIGN.md "Marketplace truth"), so the hourly burst of N subscriptions takes about N/100 calls.
//!
//! How a window goes out, with the engine's call machinery around it:
//! 1. Its metering entity asks for the `push_metering_data` call. The engine asks [`Pusher::admit`] first: the
//!    call waits here, not yet recorded as attempted, until a batch has a seat for it (its instance not sent in
//!    the last 60 s, pushes not held by an operator). A crash while it waits loses nothing: the call is resumed.
//! 2. Seated, the engine records the attempt (in flight) and hands the record over ([`Pusher::send`]). The batch
//!    waits until each of its seats has been recorded or given up, then goes out as one call.
//! 3. The answer is only `{RequestId, Success}`. Taken: every window of the batch is pushed under that RequestId.
//!    A definite refusal says nothing of which record it refused, so the batch is split in halves, each sent again
//!    after the 60 s, until the refused record stands alone and fails by itself. Throttling or an answer that says
//!    the call did not arrive: every window retries later (the engine's backoff). A timeout or a broken connection:
//!    every window of the batch has an unknown outcome and waits for an operator, as a crash in flight does.
//!
//! Pacing is counted on this node: a batch holds windows of this node's own entities, and an instance's windows
//! belong to one node at a time (a shard that moves carries its calls over, after a retry's backoff of at least a
//! minute, or as unknown outcomes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use super::{App, AppError};
use crate::aliyun::client::MarketClient;
use crate::aliyun::market::{LongIdString, MeteringEntity, MeteringRecord};
use crate::clock::Clock;
use crate::domain::protocol::{MeteringPushed, PushMetering};
use crate::engine::audit::{ActionResult, Audit};
use crate::engine::records::{RecordTable, Records, Writes};
use crate::engine::{CallError, EntityKey, Ticket};

/// Records one call may carry (the marketplace's limit for hourly products).
pub const MAX_RECORDS: usize = 100;
/// No instance in two calls within this much service time (the marketplace's rule, on its clock), counted from
/// when each call was sent, whatever its answer. Should the marketplace count from arrivals that came closer, its
/// throttling answer is retried after the engine's backoff.
pub const SPACING: TimeDelta = TimeDelta::seconds(60);

/// How batches form.
#[derive(Debug, Clone, Copy)]
pub struct PushConfig {
    /// A batch goes when no new window has come for this long (the burst has passed) ...
    pub quiet: Duration,
    /// ... or when its oldest window has waited this long, or when it is full.
    pub linger: Duration,
    /// How long a batch waits for its seats to be recorded; a seat late past it goes in a later call.
    pub gather: Duration,
}

impl PushConfig {
    /// Batches that wait at most `linger` for more windows, and go after a tenth of it without a new one.
    pub fn with_linger(linger: Duration) -> Self {
        Self { quiet: (linger / 10).max(Duration::from_millis(5)), linger, gather: Duration::from_secs(5) }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self::with_linger(Duration::from_secs(2))
    }
}

/// `push-hold`: an operator's hold on every push (an incident switch), service-wide.
const HOLD: RecordTable<PushHold> = RecordTable::meta("push-hold");

/// The entity an audit row of the hold names: the service's pushes, not any one subscription.
fn hold_subject() -> EntityKey {
    EntityKey { kind: "service".into(), id: "pushes".into() }
}

/// Whether pushes are held, since when, by whom and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushHold {
    pub held: bool,
    /// When the hold was set or released.
    pub since: Option<DateTime<Utc>>,
    pub operator: Option<String>,
    pub reason: Option<String>,
}

/// Counters for `/metrics`, per process.
static CALLS: AtomicU64 = AtomicU64::new(0);
static RECORDS: AtomicU64 = AtomicU64::new(0);
static SPLITS: AtomicU64 = AtomicU64::new(0);
static WAITING: AtomicU64 = AtomicU64::new(0);

/// What `/metrics` shows of this process's pushes: calls made, records they carried, refused batches split, and
/// windows waiting for a seat.
pub fn stats() -> (u64, u64, u64, u64) {
    (
        CALLS.load(Ordering::Relaxed),
        RECORDS.load(Ordering::Relaxed),
        SPLITS.load(Ordering::Relaxed),
        WAITING.load(Ordering::Relaxed),
    )
}

/// Forms the batches of this node and sends them.
#[derive(Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
}

struct Shared {
    /// Sends the calls (the marketplace, or the simulator).
    client: Arc<MarketClient>,
    /// Service time, for the 60 s between two calls of an instance.
    clock: Arc<dyn Clock>,
    /// Where the operators' hold is read before each batch forms.
    records: Records,
    config: PushConfig,
    /// Woken by a new window, a seat given up, a clock that jumps (manual clocks) and a split to send.
    wake: Arc<Notify>,
    /// Whether the loop that forms batches runs (started with the first window, inside the runtime).
    started: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Windows waiting for a seat, oldest first.
    waiting: VecDeque<Applicant>,
    /// Instance → when a call last carried it (service time); seated and not yet sent: `DateTime::MAX_UTC`.
    recent: HashMap<String, DateTime<Utc>>,
    /// Records already recorded as attempted that wait to go again: halves of a refused batch, after the spacing;
    /// seats recorded after their batch left, at once.
    resends: Vec<(DateTime<Utc>, Vec<Deposit>)>,
    /// When the last window arrived (for the quiet period).
    last_arrival: Option<Instant>,
    /// When `recent` was last pruned.
    pruned: Option<DateTime<Utc>>,
}

struct Applicant {
    instance: String,
    since: Instant,
    seat: oneshot::Sender<Seat>,
}

/// A window's record ready to go, and where its answer goes.
struct Deposit {
    instance: String,
    record: MeteringRecord,
    window_start: DateTime<Utc>,
    reply: oneshot::Sender<Result<Value, CallError>>,
    /// The call's timeout (its definition's), for the network call that carries it.
    timeout: Duration,
}

/// A batch being gathered: its seats, and the records deposited so far.
struct Gather {
    seats: usize,
    inner: Mutex<GatherInner>,
    changed: Notify,
}

#[derive(Default)]
struct GatherInner {
    deposits: Vec<Deposit>,
    given_up: usize,
    /// The batch left (or gave up waiting): a record deposited now goes in a later call.
    departed: bool,
}

/// A window's seat in a batch (the engine's [`Ticket`]). Dropped unused, it is given up.
struct Seat {
    gather: Arc<Gather>,
    instance: String,
    pusher: Weak<Shared>,
    used: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        self.gather.inner.lock().unwrap_or_else(|e| e.into_inner()).given_up += 1;
        self.gather.changed.notify_one();
        if let Some(p) = self.pusher.upgrade() {
            // Nothing of it went out: the instance may go in the next batch.
            p.lock().recent.remove(&self.instance);
            p.wake.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Pusher {
    pub fn new(client: Arc<MarketClient>, clock: Arc<dyn Clock>, records: Records, config: PushConfig) -> Self {
        let wake = Arc::new(Notify::new());
        clock.subscribe(wake.clone());
        Self {
            shared: Arc::new(Shared {
                client,
                clock,
                records,
                config,
                wake,
                started: AtomicBool::new(false),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Waits for a seat for the window of `request` (a [`PushMetering`]). A request that does not decode gets no
    /// seat: [`Pusher::send`] then refuses it for good.
    pub fn admit(&self, request: &Value) -> futures_util::future::BoxFuture<'static, Option<Ticket>> {
        let Ok(push) = serde_json::from_value::<PushMetering>(request.clone()) else {
            return Box::pin(std::future::ready(None));
        };
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            // The loop never ends; should it panic, it is started again, or every push of the node would wait.
            tokio::spawn(async move {
                while let Err(e) = tokio::spawn(form_batches(shared.clone())).await {
                    tracing::error!(error = %e, "the loop that forms metering batches died; starting it again");
                }
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            st.waiting.push_back(Applicant { instance: push.instance_id, since: Instant::now(), seat: tx });
            st.last_arrival = Some(Instant::now());
            WAITING.store(st.waiting.len() as u64, Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
        Box::pin(async move { rx.await.ok().map(|seat| Box::new(seat) as Ticket) })
    }

    /// Sends a seated window with its batch (its attempt is recorded by now) and answers what became of it;
    /// `timeout` bounds each call that carries it (a batch's calls take the shortest of their windows').
    pub fn send(
        &self,
        ticket: Option<Ticket>,
        request: Value,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<Value, CallError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let push: PushMetering = serde_json::from_value(request)
                .map_err(|e| CallError::permanent(format!("the request does not decode: {e}")))?;
            let window_start = push.window_start;
            let instance = push.instance_id.clone();
            let record = MeteringRecord {
                instance_id: LongIdString(push.instance_id),
                start_time: push.start,
                end_time: push.end,
                entities: push
                    .entities
                    .into_iter()
                    .map(|e| MeteringEntity { key: e.key, value: e.value, metering_assist: Some(e.assit) })
                    .collect(),
                serial_no: None,
            };
            let (reply, answer) = oneshot::channel();
            let deposit = Deposit { instance, record, window_start, reply, timeout };
            let seat = ticket.and_then(|t| t.downcast::<Seat>().ok());
            match seat {
                Some(mut seat) => {
                    seat.used = true;
                    let mut g = lock(&seat.gather.inner);
                    if g.departed {
                        drop(g);
                        shared.lock().resends.push((DateTime::<Utc>::MIN_UTC, vec![deposit]));
                        shared.wake.notify_one();
                    } else {
                        g.deposits.push(deposit);
                        drop(g);
                        seat.gather.changed.notify_one();
                    }
                }
                None => {
                    // No seat (a handler built without batching): it goes alone, at once.
                    shared.lock().resends.push((DateTime::<Utc>::MIN_UTC, vec![deposit]));
                    shared.wake.notify_one();
                }
            }
            answer.await.unwrap_or_else(|_| {
                Err(CallError::unknown("the push was dropped before its answer (the node is stopping)"))
            })
        })
    }
}

/// Whether an instance last carried at `at` (`DateTime::MAX_UTC`: seated, not yet sent) may go in a call at `now`.
/// Checked arithmetic: the seated marker is the latest time there is, and a panic here would end the loop that
/// forms every batch of the node.
fn free_at(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    at.checked_add_signed(SPACING).is_some_and(|free| free <= now)
}

/// Whether an operator holds the pushes; a store that cannot answer counts as held (nothing can be recorded
/// then either).
async fn held(records: &Records) -> bool {
    match HOLD.get(records, &[]).await {
        Ok(h) => h.is_some_and(|h| h.held),
        Err(e) => {
            tracing::warn!(error = %e, "the push hold cannot be read; holding");
            true
        }
    }
}

/// The loop of one node: seats windows in batches as the rules allow, and sends what waits to go again.
async fn form_batches(shared: Arc<Shared>) {
    // The hold is read at most once a second: an operator's hold takes effect within that.
    let mut hold: Option<(Instant, bool)> = None;
    loop {
        let idle = {
            let mut st = shared.lock();
            st.waiting.retain(|a| !a.seat.is_closed());
            WAITING.store(st.waiting.len() as u64, Ordering::Relaxed);
            st.waiting.is_empty() && st.resends.is_empty()
        };
        if idle {
            shared.wake.notified().await;
            continue;
        }
        let is_held = match hold {
            Some((at, h)) if at.elapsed() < Duration::from_secs(1) => h,
            _ => {
                let h = held(&shared.records).await;
                hold = Some((Instant::now(), h));
                h
            }
        };
        if is_held {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let now = shared.clock.now();
        let mut next_service: Option<DateTime<Utc>> = None;
        let mut next_real: Option<Duration> = None;
        let mut formed = None;
        let mut due = Vec::new();
        {
            let mut st = shared.lock();
            if st.pruned.is_none_or(|p| now - p >= SPACING) {
                st.recent.retain(|_, at| !free_at(*at, now));
                st.pruned = Some(now);
            }
            let mut i = 0;
            while i < st.resends.len() {
                if st.resends[i].0 <= now {
                    due.push(st.resends.swap_remove(i).1);
                } else {
                    let at = st.resends[i].0;
                    next_service = Some(next_service.map_or(at, |n| n.min(at)));
                    i += 1;
                }
            }
            let mut chosen: Vec<usize> = Vec::new();
            let mut instances: HashSet<&str> = HashSet::new();
            for (i, a) in st.waiting.iter().enumerate() {
                if chosen.len() == MAX_RECORDS {
                    break;
                }
                if instances.contains(a.instance.as_str()) {
                    continue;
                }
                if let Some(at) = st.recent.get(&a.instance) {
                    if !free_at(*at, now) {
                        // Seated and not yet sent (no time), or sent less than 60 s ago (free then).
                        if let Some(free) = at.checked_add_signed(SPACING) {
                            next_service = Some(next_service.map_or(free, |n| n.min(free)));
                        }
                        continue;
                    }
                }
                instances.insert(a.instance.as_str());
                chosen.push(i);
            }
            if !chosen.is_empty() {
                let quiet = st.last_arrival.map_or(Duration::MAX, |t| t.elapsed());
                let oldest = st.waiting[chosen[0]].since.elapsed();
                if chosen.len() == MAX_RECORDS || quiet >= shared.config.quiet || oldest >= shared.config.linger {
                    let mut seated = Vec::with_capacity(chosen.len());
                    for i in chosen.into_iter().rev() {
                        if let Some(a) = st.waiting.remove(i) {
                            seated.push(a);
                        }
                    }
                    seated.reverse();
                    for a in &seated {
                        st.recent.insert(a.instance.clone(), DateTime::<Utc>::MAX_UTC);
                    }
                    formed = Some(seated);
                } else {
                    let left =
                        (shared.config.quiet.saturating_sub(quiet)).min(shared.config.linger.saturating_sub(oldest));
                    next_real = Some(left.max(Duration::from_millis(5)));
                }
            }
            WAITING.store(st.waiting.len() as u64, Ordering::Relaxed);
        }
        for group in due {
            tokio::spawn(send_group(shared.clone(), group));
        }
        if let Some(seated) = formed {
            seat(&shared, seated);
            continue;
        }
        let wait = match next_service.and_then(|at| shared.clock.real_until(at)) {
            Some(d) => Some(next_real.map_or(d, |r| r.min(d))),
            None => next_real,
        };
        match wait {
            Some(d) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(d.max(Duration::from_millis(1))) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

/// Hands each applicant its seat and waits, in the background, for the batch to gather.
fn seat(shared: &Arc<Shared>, seated: Vec<Applicant>) {
    let gather =
        Arc::new(Gather { seats: seated.len(), inner: Mutex::new(GatherInner::default()), changed: Notify::new() });
    for a in seated {
        let seat = Seat { gather: gather.clone(), instance: a.instance, pusher: Arc::downgrade(shared), used: false };
        // An applicant gone meanwhile drops the seat it is refused here: given up.
        let _ = a.seat.send(seat);
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let until = Instant::now() + shared.config.gather;
        loop {
            let complete = {
                let g = lock(&gather.inner);
                g.deposits.len() + g.given_up >= gather.seats
            };
            if complete || Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = gather.changed.notified() => {}
                _ = tokio::time::sleep(until.saturating_duration_since(Instant::now())) => {}
            }
        }
        let deposits = {
            let mut g = lock(&gather.inner);
            g.departed = true;
            std::mem::take(&mut g.deposits)
        };
        if deposits.is_empty() {
            return;
        }
        send_group(shared, deposits).await;
    });
}

/// Sends one call of `group` and answers each record; a refused group of several is split to send again.
async fn send_group(shared: Arc<Shared>, group: Vec<Deposit>) {
    let now = shared.clock.now();
    {
        let mut st = shared.lock();
        for d in &group {
            st.recent.insert(d.instance.clone(), now);
        }
    }
    let records: Vec<MeteringRecord> = group.iter().map(|d| d.record.clone()).collect();
    CALLS.fetch_add(1, Ordering::Relaxed);
    RECORDS.fetch_add(records.len() as u64, Ordering::Relaxed);
    let timeout = group.iter().map(|d| d.timeout).min().unwrap_or(Duration::from_secs(20));
    let answer = match tokio::time::timeout(timeout, shared.client.push_metering_data(&records)).await {
        Ok(answer) => answer,
        Err(_) => {
            let error = CallError::unknown(format!("timed out after {timeout:?}"));
            tracing::warn!(records = group.len(), error = %error.message, "a metering push timed out");
            for d in group {
                let _ = d.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    match answer {
        Ok(r) => {
            tracing::info!(records = group.len(), request_id = %r.request_id, "metering pushed");
            for d in group {
                let pushed =
                    MeteringPushed { request_id: Some(r.request_id.clone()), window_start: Some(d.window_start) };
                let _ = d.reply.send(serde_json::to_value(pushed).map_err(|e| CallError::permanent(e.to_string())));
            }
        }
        Err(e) => {
            let definite_refusal = !e.is_retryable() && !e.outcome_unknown();
            if definite_refusal && group.len() > 1 {
                SPLITS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(records = group.len(), error = %e, "a batch was refused; splitting it to find the record");
                let mut first = group;
                let second = first.split_off(first.len() / 2);
                let again = now.checked_add_signed(SPACING).unwrap_or(now);
                let mut st = shared.lock();
                st.resends.push((again, first));
                st.resends.push((again, second));
                drop(st);
                shared.wake.notify_one();
                return;
            }
            let error = super::call_errors::call_error(e);
            tracing::warn!(records = group.len(), error = %error.message, "a metering push failed");
            for d in group {
                let _ = d.reply.send(Err(error.clone()));
            }
        }
    }
}

impl App {
    /// Whether pushes are held.
    pub async fn push_hold(&self) -> Result<PushHold, AppError> {
        Ok(HOLD.get(&self.engine, &[]).await?.unwrap_or_default())
    }

    /// Holds every push (`hold`) or releases them, audited with who and why. Windows keep being metered; held, they
    /// wait unrecorded, and go out in batches once released (within the marketplace's deadline, the end of the next
    /// hour). Setting what is already set changes nothing and audits nothing.
    pub async fn hold_pushes(&self, operator: &str, hold: bool, reason: String) -> Result<PushHold, AppError> {
        let reason = super::ops::reason(Some(reason))?;
        let now = self.engine.clock().now();
        let current = self.push_hold().await?;
        if current.held == hold {
            return Ok(current);
        }
        let value = PushHold {
            held: hold,
            since: Some(now),
            operator: Some(operator.to_string()),
            reason: Some(reason.clone()),
        };
        let mut w = Writes::new();
        HOLD.put(&mut w, &[], &value)?;
        let audit = Audit {
            operator: operator.to_string(),
            reason,
            action: if hold { "hold-pushes" } else { "release-pushes" }.into(),
            call: None,
        };
        let result = ActionResult { paused: Some(hold), ..Default::default() };
        self.engine.write_audited(w, &hold_subject(), &audit, &result).await?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seated_instance_is_never_free_and_its_marker_does_not_overflow() {
        let now = Utc::now();
        assert!(!free_at(DateTime::<Utc>::MAX_UTC, now));
        assert!(!free_at(now - TimeDelta::seconds(59), now));
        assert!(free_at(now - SPACING, now));
        // Pruning keeps seated instances and recent ones, drops the free (the loop once died on this).
        let mut recent: HashMap<String, DateTime<Utc>> = HashMap::new();
        recent.insert("seated".into(), DateTime::<Utc>::MAX_UTC);
        recent.insert("recent".into(), now - TimeDelta::seconds(10));
        recent.insert("old".into(), now - TimeDelta::minutes(5));
        recent.retain(|_, at| !free_at(*at, now));
        let mut kept: Vec<_> = recent.into_keys().collect();
        kept.sort();
        assert_eq!(kept, ["recent", "seated"]);
    }
}
