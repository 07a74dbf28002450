//! Forwarding: an input for an entity of another node's shard goes to that node, signed, in one hop, with a
//! deadline. The receiving node delivers it as its own or answers `not_owner` (the shard moved meanwhile); then the
//! sender reads the owners again and tries once more. No owner yet: `not_owner` to the caller, which the API
//! answers 503 with `Retry-After`.
//!
//! Inputs for one node travel together: while requests to a node are on their way (at most two), the inputs that
//! come for it queue, and go as the next request, one batch (as commits share a group). The receiving node delivers a batch's
//! inputs at once, so they share its next group commit too. Why: with a request of its own for every input, three
//! nodes on two cores spent more of their time on the requests between them than on the work (BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{sign, Cluster};
use crate::engine::audit::Audit;
use crate::engine::shards::Ownership;
use crate::engine::{CallAction, EntityKey, Error, Forward, Input, Outcome};

/// Where a node takes forwarded inputs.
pub const DELIVER_PATH: &str = "/internal/v1/deliver";
/// Where a node takes an operator's action on a call of an entity it holds.
pub const CALL_PATH: &str = "/internal/v1/call";

/// A forwarded input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverRequest {
    pub key: EntityKey,
    pub input: Input,
    pub audit: Option<Audit>,
}

/// Forwarded inputs, for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverBatch {
    pub inputs: Vec<DeliverRequest>,
}

/// What one forwarded input came to: its outcome, or the error its node answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivered {
    Outcome(Outcome),
    Error { code: String, message: String },
}

impl Delivered {
    pub fn of(r: Result<Outcome, Error>) -> Self {
        match r {
            Ok(o) => Delivered::Outcome(o),
            Err(e) => Delivered::Error { code: e.code().to_string(), message: e.to_string() },
        }
    }
}

/// The answers to a [`DeliverBatch`], in its order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverAnswers {
    pub answers: Vec<Delivered>,
}

/// A forwarded retry or cancel of an external call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRequest {
    pub entity: EntityKey,
    pub call_id: String,
    pub action: CallAction,
    pub audit: Audit,
}

/// The error body a node answers (the API's).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// The engine's error for a code another node answered.
fn error_of(code: &str, message: String) -> Error {
    match code {
        "not_owner" | "shutting_down" => Error::NotOwner(message),
        "overloaded" => Error::Overloaded,
        "paused" => Error::Paused,
        "storage_unavailable" => Error::Storage(message),
        "not_found" => Error::NotFound,
        "unknown_kind" => Error::UnknownKind(message),
        "invalid_input" => Error::InvalidInput(message),
        "definition_mismatch" => Error::DefinitionMismatch(message),
        "conflict" => Error::Conflict,
        _ => Error::Internal(format!("{code}: {message}")),
    }
}

/// The most inputs in one request.
const BATCH: usize = 256;

/// An input waiting for the next request to its node, where its answer goes, and whether it was sent once and
/// answered `not_owner` (it is sent once more after the owners are read again, never a third time).
struct Queued {
    request: DeliverRequest,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, Error>>,
    second: bool,
}

/// Sends inputs to the nodes that hold their entities.
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Arc<Cluster>,
    http: reqwest::Client,
    /// Inputs waiting for a request, and the requests on their way, by node URL.
    queues: Mutex<HashMap<String, Queue>>,
}

/// The inputs for one node.
#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    /// Tasks sending requests to the node (at most [`IN_FLIGHT`]); each takes what waits when its request is done.
    senders: usize,
}

/// Requests on their way to one node at once: two, so that a batch gathers while the one before it is answered,
/// and the owner gets the next while it commits the last.
const IN_FLIGHT: usize = 2;

impl Forwarder {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cluster.config.forward_timeout)
            .connect_timeout(cluster.config.forward_timeout.min(std::time::Duration::from_secs(2)))
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { inner: Arc::new(Inner { cluster, http, queues: Mutex::default() }) }
    }
}

impl Inner {
    /// Queues an input for the owner of its shard (reading the owners again first if `refresh`, or if the map
    /// knows no other owner: it may be older than the shard's move).
    async fn enqueue(self: &Arc<Self>, q: Queued, refresh: bool) {
        let shard = Ownership::shard_of(&q.request.key);
        let other = |c: &Cluster| c.owner(shard).filter(|(node, _)| *node != c.config.node);
        if refresh || other(&self.cluster).is_none() {
            self.cluster.refresh_owners().await;
        }
        let Some((node, url)) = other(&self.cluster) else {
            let _ = q.reply.send(Err(Error::NotOwner(format!("no node holds shard {shard} yet"))));
            return;
        };
        if let Ok(mut f) = self.cluster.stats.forwards.lock() {
            *f.entry(node).or_insert(0) += 1;
        }
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues.entry(url.clone()).or_default();
            queue.waiting.push(q);
            let start = queue.senders < IN_FLIGHT;
            if start {
                queue.senders += 1;
            }
            start
        };
        if start {
            let me = self.clone();
            actix_rt::spawn(async move { me.drain(url).await });
        }
    }

    /// Sends the inputs queued for `url`, a batch at a time, until none are left; one of the node's senders.
    async fn drain(self: Arc<Self>, url: String) {
        loop {
            let batch: Vec<Queued> = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let Some(queue) = queues.get_mut(&url) else { return };
                if queue.waiting.is_empty() {
                    queue.senders = queue.senders.saturating_sub(1);
                    if queue.senders == 0 {
                        queues.remove(&url);
                    }
                    return;
                }
                let n = queue.waiting.len().min(BATCH);
                queue.waiting.drain(..n).collect()
            };
            self.send(&url, batch).await;
        }
    }

    async fn send(self: &Arc<Self>, url: &str, batch: Vec<Queued>) {
        let (requests, waiting): (Vec<DeliverRequest>, Vec<_>) =
            batch.into_iter().map(|q| (q.request, (q.reply, q.second))).unzip();
        let keys: Vec<EntityKey> = requests.iter().map(|r| r.key.clone()).collect();
        let inputs: Vec<Input> = requests.iter().map(|r| r.input.clone()).collect();
        let audits: Vec<Option<Audit>> = requests.iter().map(|r| r.audit.clone()).collect();
        let request_id = requests.first().and_then(|r| r.input.request_id.clone());
        let body = match serde_json::to_vec(&DeliverBatch { inputs: requests }) {
            Ok(b) => b,
            Err(e) => {
                for (reply, _) in waiting {
                    let _ = reply.send(Err(Error::Internal(format!("encoding a forward: {e}"))));
                }
                return;
            }
        };
        self.cluster.stats.forward_requests.fetch_add(1, Ordering::Relaxed);
        let answers = match post(&self.cluster, &self.http, url, DELIVER_PATH, body, request_id.as_deref()).await {
            Ok(bytes) => match serde_json::from_slice::<DeliverAnswers>(&bytes) {
                Ok(a) if a.answers.len() == waiting.len() => a.answers,
                _ => {
                    let e = Error::Internal("a node answered a forwarded batch with what it was not asked".into());
                    return fail(waiting, e);
                }
            },
            Err(e) => return fail(waiting, e),
        };
        let mut again = vec![];
        for ((((reply, second), answer), key), (input, audit)) in
            waiting.into_iter().zip(answers).zip(keys).zip(inputs.into_iter().zip(audits))
        {
            match answer {
                Delivered::Outcome(o) => {
                    let _ = reply.send(Ok(o));
                }
                Delivered::Error { code, message } => match error_of(&code, message) {
                    Error::NotOwner(_) if !second => {
                        self.cluster.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                        again.push(Queued { request: DeliverRequest { key, input, audit }, reply, second: true });
                    }
                    other => {
                        if matches!(other, Error::NotOwner(_)) {
                            self.cluster.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = reply.send(Err(other));
                    }
                },
            }
        }
        for (i, q) in again.into_iter().enumerate() {
            // The owners are read again once for the whole batch.
            self.enqueue(q, i == 0).await;
        }
    }
}

fn fail(waiting: Vec<(tokio::sync::oneshot::Sender<Result<Outcome, Error>>, bool)>, e: Error) {
    for (reply, _) in waiting {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Posts a signed `body` to `path` at `url`: the body of a 2xx, or the engine error the node answered. A node that
/// does not answer is `not_owner` (the caller answers 503, and the lease loop will move its shards if it is gone).
async fn post(
    cluster: &Cluster,
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: Vec<u8>,
    request_id: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let ts = chrono::Utc::now().timestamp_millis();
    let signature = sign::sign(&cluster.config.secret, "POST", path, &cluster.config.node, ts, &body);
    let mut req = http
        .post(format!("{}{path}", url.trim_end_matches('/')))
        .header("content-type", "application/json")
        .header(sign::NODE, &cluster.config.node)
        .header(sign::TIMESTAMP, ts.to_string())
        .header(sign::SIGNATURE, signature)
        .body(body);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            cluster.stats.forward_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(to = %url, error = %e, "forwarding failed");
            return Err(Error::NotOwner(format!("the node at {url} did not answer")));
        }
    };
    let ok = resp.status().is_success();
    let bytes = resp.bytes().await.map_err(|e| Error::NotOwner(format!("{url} broke off its answer: {e}")))?;
    if ok {
        return Ok(bytes.to_vec());
    }
    let err: ErrorBody = serde_json::from_slice(&bytes)
        .map_err(|_| Error::Internal(format!("{url} answered a forward with an unreadable error")))?;
    Err(error_of(&err.code, err.message))
}

impl Forward for Forwarder {
    fn forward(
        &self,
        key: EntityKey,
        input: Input,
        audit: Option<Audit>,
    ) -> BoxFuture<'static, Result<Outcome, Error>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .enqueue(Queued { request: DeliverRequest { key, input, audit }, reply: tx, second: false }, false)
                .await;
            rx.await.unwrap_or(Err(Error::Stopped))
        })
    }

    fn forward_call(
        &self,
        entity: EntityKey,
        call_id: String,
        action: CallAction,
        audit: Audit,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let shard = Ownership::shard_of(&entity);
            let body = serde_json::to_vec(&CallRequest { entity, call_id, action, audit })
                .map_err(|e| Error::Internal(format!("encoding a forward: {e}")))?;
            let request_id = crate::engine::request_id::current();
            for attempt in 0..2 {
                if attempt > 0 {
                    inner.cluster.refresh_owners().await;
                }
                let owner = inner.cluster.owner(shard).filter(|(n, _)| *n != inner.cluster.config.node);
                let Some((_, url)) = owner else { continue };
                match post(&inner.cluster, &inner.http, &url, CALL_PATH, body.clone(), request_id.as_deref()).await {
                    Ok(_) => return Ok(()),
                    Err(Error::NotOwner(_)) if attempt == 0 => {
                        inner.cluster.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::NotOwner(format!("no node holds shard {shard} yet")))
        })
    }
}
