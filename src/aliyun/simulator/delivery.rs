//! The marketplace's side of the SPI: calls to `{service_url}/aliyun/spi`, and the activation loop.
//!
//! One task (`drive`) owns every background activity, so that stopping the simulator stops
//! them all: it receives jobs from the HTTP handlers, runs one queue ("lane") per instance so
//! that calls for one instance go out in order, one at a time, and promotes instances whose
//! activation is due. With `spi_reorder` injected, a call skips its lane and leaves after a random
//! delay instead.
//!
//! Requests are GETs with every parameter in the query, as in the SPI docs' examples, and the MD5
//! token over all of them ([`crate::aliyun::token::spi_token`]). Retries: createInstance up to
//! 120 times while the answer is not a non-zero instanceId (the documented limit); the other
//! actions up to [`NOTICE_ATTEMPTS`] times until `{"success": true}`; a notice that never
//! succeeds (or that the `spi_give_up_rate` fault gives up on) becomes a failed notification
//! (DescribeFailedNotifications). Backoffs are short and
//! in real time: the point is to exercise the service's idempotency, not to wait for hours.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use super::state::{Notification, Status};
use super::Shared;
use crate::aliyun::encoding::encode_query;
use crate::aliyun::token::spi_token;

/// createInstance is repeated up to this many times (help.aliyun.com/document_detail/147358).
pub(crate) const CREATE_ATTEMPTS: u32 = 120;
/// Attempts of the other SPI actions before the simulator gives up.
pub(crate) const NOTICE_ATTEMPTS: u32 = 5;
/// How often the activation loop looks at the clock (real time).
const TICK: Duration = Duration::from_millis(50);
/// Largest SPI answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An SPI call the marketplace owes the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpiAction {
    CreateInstance,
    ReleaseInstance,
    ExpiredInstance,
    ResumeInstance,
    OrderPay,
}

impl SpiAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateInstance => "createInstance",
            Self::ReleaseInstance => "releaseInstance",
            Self::ExpiredInstance => "expiredInstance",
            Self::ResumeInstance => "resumeInstance",
            Self::OrderPay => "orderPay",
        }
    }
}

/// A call for one instance (by orderBizId).
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub instance: String,
    pub action: SpiAction,
}

impl Shared {
    /// Queues `action` for `instance`; the caller holds the state lock and has checked the
    /// instance exists. Refused (the caller answers 503) when the queues are full.
    pub(crate) fn enqueue(
        &self,
        state: &mut super::state::State,
        instance: &str,
        action: SpiAction,
    ) -> Result<(), super::state::Failure> {
        let overloaded = || super::state::Failure::new(503, "overloaded", "too many SPI calls are pending; try later");
        let pending = state.instance(instance).map(|i| i.pending_spi).unwrap_or(0);
        if pending >= super::state::MAX_PENDING_SPI {
            return Err(overloaded());
        }
        self.jobs.try_send(Job { instance: instance.to_string(), action }).map_err(|_| overloaded())?;
        if let Some(i) = state.instance_mut(instance) {
            i.pending_spi += 1;
        }
        Ok(())
    }
}

/// The background task: dispatches jobs to lanes, promotes due activations, until shutdown.
pub(crate) async fn drive(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>, mut shutdown: watch::Receiver<bool>) {
    let mut lanes: HashMap<String, mpsc::UnboundedSender<SpiAction>> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let wake = Arc::new(Notify::new());
    shared.clock.subscribe(wake.clone());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once every handle is dropped nobody can stop it any more; it then runs as long as the runtime.
    let mut stoppable = true;
    loop {
        tokio::select! {
            changed = shutdown.changed(), if stoppable => {
                if changed.is_err() {
                    stoppable = false;
                } else if *shutdown.borrow() {
                    break;
                }
            }
            job = jobs.recv() => match job {
                Some(job) => dispatch(&shared, &mut lanes, &mut tasks, job),
                None => break,
            },
            _ = tick.tick() => promote(&shared, &mut lanes, &mut tasks),
            _ = wake.notified() => promote(&shared, &mut lanes, &mut tasks),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

fn dispatch(
    shared: &Arc<Shared>,
    lanes: &mut HashMap<String, mpsc::UnboundedSender<SpiAction>>,
    tasks: &mut JoinSet<()>,
    job: Job,
) {
    let reorder_delay = {
        let mut state = shared.lock();
        state.faults.spi_reorder.then(|| state.draw_reorder_delay_ms())
    };
    if let Some(ms) = reorder_delay {
        let shared = shared.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            deliver(&shared, &job.instance, job.action).await;
        });
        return;
    }
    let action = match lanes.get(&job.instance) {
        Some(lane) => match lane.send(job.action) {
            Ok(()) => return,
            // The lane's task ended (it never should): start a new one rather than lose the call.
            Err(mpsc::error::SendError(action)) => action,
        },
        None => job.action,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tasks.spawn(run_lane(shared.clone(), job.instance.clone(), rx));
    // The receiver is alive: it was just handed to the new task.
    let _ = tx.send(action);
    lanes.insert(job.instance, tx);
}

/// Delivers one instance's calls in order. Its queue is bounded by `MAX_PENDING_SPI`, counted at
/// enqueue time.
async fn run_lane(shared: Arc<Shared>, instance: String, mut rx: mpsc::UnboundedReceiver<SpiAction>) {
    while let Some(action) = rx.recv().await {
        deliver(&shared, &instance, action).await;
    }
}

/// Instances whose activation is due and whose createInstance succeeded become OPENED (and get an
/// orderPay, if they want one).
fn promote(
    shared: &Arc<Shared>,
    lanes: &mut HashMap<String, mpsc::UnboundedSender<SpiAction>>,
    tasks: &mut JoinSet<()>,
) {
    let now = shared.now();
    let mut order_pays = Vec::new();
    {
        let mut guard = shared.lock();
        let state = &mut *guard;
        let due: Vec<(DateTime<Utc>, String)> =
            state.activations.iter().take_while(|(at, _)| *at <= now).cloned().collect();
        for entry in due {
            state.activations.remove(&entry);
            let Some(instance) = state.instances.get_mut(&entry.1) else { continue };
            if instance.status != Status::Opening {
                continue;
            }
            instance.status = Status::Opened;
            instance.opened_at = Some(now);
            instance.log(now, "activated", Some("OPENED".into()));
            if instance.order_pay {
                instance.pending_spi += 1;
                order_pays.push(entry.1.clone());
            }
        }
    }
    for instance in order_pays {
        dispatch(shared, lanes, tasks, Job { instance, action: SpiAction::OrderPay });
    }
}

/// The outcome of one HTTP attempt.
enum Answer {
    /// The service answered; its status and parsed JSON body (`Null` when not JSON).
    Http { status: u16, body: Value, text: String },
    /// No answer: connection refused, timeout, …
    Failed(String),
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Self::Http { status, text, .. } => format!("HTTP {status} {}", snippet(text)),
            Self::Failed(e) => e.clone(),
        }
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

async fn send(shared: &Shared, params: &[(String, String)]) -> Answer {
    let url = format!("{}?{}", shared.spi_url, encode_query(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let response = match shared.http.get(url).header("accept", "application/json").send().await {
        Ok(r) => r,
        // Without the URL: it carries the token.
        Err(e) => return Answer::Failed(error_chain(&e.without_url())),
    };
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES.saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if bytes.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Answer::Failed(error_chain(&e.without_url())),
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer::Http { status, body, text }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// Backoff before attempt `attempt + 1`: 50 ms doubling, at most 2 s.
fn backoff(attempt: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(2_000))
}

/// The parameters of `action` for the instance, token included; `None` if the instance is gone.
fn build_params(shared: &Shared, instance: &str, action: SpiAction) -> Option<Vec<(String, String)>> {
    let now = shared.now();
    let mut state = shared.lock();
    let i = state.instances.get_mut(instance)?;
    if action != SpiAction::CreateInstance && i.create_failed {
        // The service never created it: there is nothing to tell it about.
        i.log(now, format!("spi.{}.skipped", action.as_str()), Some("createInstance never succeeded".into()));
        return None;
    }
    let p = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut params = vec![p("action", action.as_str())];
    match action {
        SpiAction::CreateInstance => params.extend([
            p("aliUid", &i.ali_uid),
            p("orderBizId", &i.order_biz_id),
            p("orderId", &i.order_id),
            p("productCode", &i.product_code),
            p("skuId", &i.sku_id),
            p("trial", "false"),
        ]),
        SpiAction::ReleaseInstance => params.extend([p("instanceId", i.spi_instance_id()), p("isRefund", "false")]),
        SpiAction::ExpiredInstance => params.push(p("instanceId", i.spi_instance_id())),
        SpiAction::ResumeInstance => params.extend([
            p("instanceId", i.spi_instance_id()),
            p("productCode", &i.product_code),
            p("skuId", &i.sku_id),
        ]),
        SpiAction::OrderPay => params.extend([
            // The idempotency key: one per notice, the same on every retry.
            p("requestId", &uuid::Uuid::new_v4().to_string()),
            p("aliUid", &i.ali_uid),
            p("orderBizId", &i.order_biz_id),
            p("orderId", &i.order_id),
            p("productCode", &i.product_code),
            p("skuId", &i.sku_id),
        ]),
    }
    let token = spi_token(&params, shared.isv_key.expose());
    params.push(p("token", &token));
    Some(params)
}

fn log(shared: &Shared, instance: &str, event: String, detail: Option<String>) {
    let now = shared.now();
    if let Some(i) = shared.lock().instances.get_mut(instance) {
        i.log(now, event, detail);
    }
}

/// Sends the same request again when the duplicate fault says so.
async fn maybe_duplicate(shared: &Shared, instance: &str, action: SpiAction, params: &[(String, String)]) {
    if !shared.lock().draw_duplicate() {
        return;
    }
    let answer = send(shared, params).await;
    log(shared, instance, format!("spi.{}.duplicate", action.as_str()), Some(answer.describe()));
}

async fn deliver(shared: &Shared, instance: &str, action: SpiAction) {
    match build_params(shared, instance, action) {
        Some(params) if action == SpiAction::CreateInstance => deliver_create(shared, instance, &params).await,
        Some(params) => deliver_notice(shared, instance, action, &params).await,
        None => {}
    }
    if let Some(i) = shared.lock().instances.get_mut(instance) {
        i.pending_spi = i.pending_spi.saturating_sub(1);
    }
}

/// A createInstance answer's instanceId, if it is usable (non-empty, not `0`).
fn created_instance_id(body: &Value) -> Option<String> {
    let id = match body.get("instanceId")? {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id != "0" && crate::aliyun::spi::InstanceId::new(id.clone()).is_ok()).then_some(id)
}

async fn deliver_create(shared: &Shared, instance: &str, params: &[(String, String)]) {
    for attempt in 1..=CREATE_ATTEMPTS {
        let answer = send(shared, params).await;
        let created = match &answer {
            Answer::Http { status, body, .. } if (200..300).contains(status) => created_instance_id(body),
            _ => None,
        };
        if let (Some(id), Answer::Http { body, .. }) = (created, &answer) {
            record_created(shared, instance, &id, body, attempt);
            maybe_duplicate(shared, instance, SpiAction::CreateInstance, params).await;
            return;
        }
        log(
            shared,
            instance,
            "spi.createInstance.failed".into(),
            Some(format!("attempt {attempt}: {}", answer.describe())),
        );
        tokio::time::sleep(backoff(attempt)).await;
    }
    let now = shared.now();
    let mut state = shared.lock();
    if let Some(i) = state.instances.get_mut(instance) {
        i.create_failed = true;
        if i.status != Status::Closed {
            i.status = Status::Closed;
            i.closed_at = Some(now);
        }
        i.log(
            now,
            "spi.createInstance.gave_up",
            Some(format!("no instanceId after {CREATE_ATTEMPTS} attempts; order cancelled")),
        );
    }
}

fn record_created(shared: &Shared, instance: &str, id: &str, body: &Value, attempt: u32) {
    let now = shared.now();
    let mut guard = shared.lock();
    let state = &mut *guard;
    let Some(i) = state.instances.get_mut(instance) else { return };
    let app_info = body.get("appInfo").filter(|v| v.is_object());
    i.service_instance_id = Some(id.to_string());
    i.auth_url = app_info.and_then(|a| a.get("authUrl")).and_then(Value::as_str).map(String::from);
    i.app_json = app_info.map(Value::to_string);
    i.extend_json = body.get("info").filter(|v| v.is_object()).map(Value::to_string);
    i.log(now, "spi.createInstance.ok", Some(format!("attempt {attempt}: instanceId {id}")));
    let due = i.activation_due.max(now);
    let opening = i.status == Status::Opening;
    let key = i.order_biz_id.clone();
    if id != key {
        state.aliases.insert(id.to_string(), key.clone());
    }
    if opening {
        state.activations.insert((due, key));
    }
}

/// `{"success": true}`, or `"true"` as the docs' samples literally show.
fn is_success(body: &Value) -> bool {
    match body.get("success") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

async fn deliver_notice(shared: &Shared, instance: &str, action: SpiAction, params: &[(String, String)]) {
    let name = action.as_str();
    if shared.lock().draw_drop() {
        log(shared, instance, format!("spi.{name}.dropped"), Some("lost (injected fault)".into()));
        return;
    }
    if shared.lock().draw_give_up() {
        log(shared, instance, format!("spi.{name}.given_up"), Some("not delivered (injected fault)".into()));
        give_up(shared, action, params);
        return;
    }
    for attempt in 1..=NOTICE_ATTEMPTS {
        let answer = send(shared, params).await;
        let ok =
            matches!(&answer, Answer::Http { status, body, .. } if (200..300).contains(status) && is_success(body));
        if ok {
            log(shared, instance, format!("spi.{name}.ok"), Some(format!("attempt {attempt}")));
            maybe_duplicate(shared, instance, action, params).await;
            return;
        }
        log(shared, instance, format!("spi.{name}.failed"), Some(format!("attempt {attempt}: {}", answer.describe())));
        if attempt < NOTICE_ATTEMPTS {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    log(shared, instance, format!("spi.{name}.gave_up"), Some(format!("no success after {NOTICE_ATTEMPTS} attempts")));
    give_up(shared, action, params);
}

/// Lists a notice for DescribeFailedNotifications: its parameters without the token, under the orderPay's
/// `requestId` or a new id of its own for the other actions.
fn give_up(shared: &Shared, action: SpiAction, params: &[(String, String)]) {
    let now = shared.now();
    let message: serde_json::Map<String, Value> =
        params.iter().filter(|(k, _)| k != "token").map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let id = params
        .iter()
        .find(|(k, _)| k == "requestId")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    shared.lock().notifications.push(Notification {
        id,
        action: action.as_str().to_string(),
        created_at: now,
        message: Value::Object(message).to_string(),
        confirmed: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_answers() {
        assert_eq!(created_instance_id(&json!({"instanceId": "123"})), Some("123".into()));
        assert_eq!(created_instance_id(&json!({"instanceId": 123})), Some("123".into()));
        assert_eq!(created_instance_id(&json!({"instanceId": "0"})), None);
        assert_eq!(created_instance_id(&json!({"instanceId": 0})), None);
        assert_eq!(created_instance_id(&json!({"instanceId": ""})), None);
        assert_eq!(created_instance_id(&json!({"instanceId": "a b"})), None);
        assert_eq!(created_instance_id(&json!({"success": true})), None);
        assert_eq!(created_instance_id(&Value::Null), None);
    }

    #[test]
    fn success_answers() {
        assert!(is_success(&json!({"success": true})));
        assert!(is_success(&json!({"success": "true"})));
        assert!(!is_success(&json!({"success": false, "message": "m"})));
        assert!(!is_success(&json!({})));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(7), Duration::from_millis(2_000));
        assert_eq!(backoff(120), Duration::from_millis(2_000));
    }
}
