//! Forwarding: an input for an entity of another node's shard goes to that node, signed, in one hop, with a
//! deadline. The receiving node delivers it as its own or answers `not_owner` (the shard moved meanwhile); then the
//! sender reads the owners again and tries once more. No owner yet: `not_owner` to the caller, which the API
//! answers 503 with `Retry-After`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

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

/// Sends inputs to the nodes that hold their entities.
pub struct Forwarder {
    cluster: Arc<Cluster>,
    http: reqwest::Client,
}

impl Forwarder {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cluster.config.forward_timeout)
            .connect_timeout(cluster.config.forward_timeout.min(std::time::Duration::from_secs(2)))
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { cluster, http }
    }
}

/// Posts `body` to `path` of the node that holds `shard`; a `not_owner` answer reads the owners again and tries
/// once more. Answers the body of a 2xx, or the engine error the owner answered.
async fn post(
    cluster: &Cluster,
    http: &reqwest::Client,
    shard: u16,
    path: &str,
    body: Vec<u8>,
    request_id: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let mut last = Error::NotOwner(format!("no node holds shard {shard} yet"));
    for attempt in 0..2 {
        if attempt > 0 {
            cluster.refresh_owners().await;
        }
        let Some((node, url)) = cluster.owner(shard) else { continue };
        if node == cluster.config.node {
            // The map is older than this node's own view (it does not serve the shard): read it again.
            last = Error::NotOwner(format!("shard {shard} is moving"));
            continue;
        }
        let ts = chrono::Utc::now().timestamp_millis();
        let signature = sign::sign(&cluster.config.secret, "POST", path, &cluster.config.node, ts, &body);
        let mut req = http
            .post(format!("{}{path}", url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .header(sign::NODE, &cluster.config.node)
            .header(sign::TIMESTAMP, ts.to_string())
            .header(sign::SIGNATURE, signature)
            .body(body.clone());
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        if let Ok(mut f) = cluster.stats.forwards.lock() {
            *f.entry(node.clone()).or_insert(0) += 1;
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                cluster.stats.forward_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(to = %node, error = %e, "forwarding failed");
                last = Error::NotOwner(format!("the node holding shard {shard} ({node}) did not answer"));
                continue;
            }
        };
        let ok = resp.status().is_success();
        let bytes = resp.bytes().await.map_err(|e| Error::NotOwner(format!("{node} broke off its answer: {e}")))?;
        if ok {
            return Ok(bytes.to_vec());
        }
        let err: ErrorBody = serde_json::from_slice(&bytes)
            .map_err(|_| Error::Internal(format!("{node} answered a forward with an unreadable error")))?;
        match error_of(&err.code, err.message) {
            Error::NotOwner(why) => {
                cluster.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                last = Error::NotOwner(why);
            }
            other => return Err(other),
        }
    }
    Err(last)
}

impl Forward for Forwarder {
    fn forward(
        &self,
        key: EntityKey,
        input: Input,
        audit: Option<Audit>,
    ) -> BoxFuture<'static, Result<Outcome, Error>> {
        let (cluster, http) = (self.cluster.clone(), self.http.clone());
        Box::pin(async move {
            let shard = Ownership::shard_of(&key);
            let request_id = input.request_id.clone();
            let body = serde_json::to_vec(&DeliverRequest { key, input, audit })
                .map_err(|e| Error::Internal(format!("encoding a forward: {e}")))?;
            let answer = post(&cluster, &http, shard, DELIVER_PATH, body, request_id.as_deref()).await?;
            serde_json::from_slice(&answer).map_err(|e| Error::Internal(format!("a forwarded outcome: {e}")))
        })
    }

    fn forward_call(
        &self,
        entity: EntityKey,
        call_id: String,
        action: CallAction,
        audit: Audit,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let (cluster, http) = (self.cluster.clone(), self.http.clone());
        Box::pin(async move {
            let shard = Ownership::shard_of(&entity);
            let body = serde_json::to_vec(&CallRequest { entity, call_id, action, audit })
                .map_err(|e| Error::Internal(format!("encoding a forward: {e}")))?;
            post(&cluster, &http, shard, CALL_PATH, body, crate::engine::request_id::current().as_deref()).await?;
            Ok(())
        })
    }
}
