//! The routes between nodes (PostgreSQL mode): an input forwarded to the node that holds its entity, and an
//! operator's action on an external call of such an entity. Only a request signed with the cluster secret is read
//! (`crate::cluster::sign`); on sled, where no node has a secret, every such request is refused.

use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::OpenApi;

use super::error::{ErrorBody, PayloadTooLarge, Unavailable};
use super::{ApiError, AppState};
use crate::cluster::forward::{CallRequest, DeliverAnswers, DeliverBatch, Delivered, CALL_PATH, DELIVER_PATH};
use crate::cluster::sign;
use crate::engine::{request_id, Route};

/// The node-to-node part of the API description.
#[derive(OpenApi)]
#[openapi(paths(deliver, call))]
pub struct InternalApi;

/// Admits a request signed by a node of this cluster; anything else is 401 before the body is read.
fn verify(state: &AppState, req: &HttpRequest, body: &[u8]) -> Result<String, ApiError> {
    let refused = |why: &str| {
        ApiError::new(actix_web::http::StatusCode::UNAUTHORIZED, "unauthorized", format!("not a cluster node: {why}"))
    };
    let Some(secret) = state.config.cluster_secret.as_ref().filter(|_| state.cluster.is_some()) else {
        return Err(refused("this node is not part of a cluster"));
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let node = header(sign::NODE);
    let (timestamp, signature) = (header(sign::TIMESTAMP), header(sign::SIGNATURE));
    let signed = sign::Signed {
        method: req.method().as_str(),
        path: req.path(),
        node: &node,
        timestamp: &timestamp,
        signature: &signature,
    };
    sign::verify(secret, &signed, body, chrono::Utc::now().timestamp_millis()).map_err(|e| refused(&e.to_string()))?;
    Ok(node)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

fn count_refusal(state: &AppState, e: &crate::engine::Error) {
    if let (crate::engine::Error::NotOwner(_), Some(c)) = (e, &state.cluster) {
        c.stats.not_owner.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Inputs another node forwarded (a batch, `{inputs: [{key, input, audit}]}`): each delivered here as if it had
/// arrived here, all at once (so they share a group commit), never forwarded again; each answered in order with
/// its outcome or its error (`not_owner` when this node does not serve the entity's shard, any more).
#[utoipa::path(post, path = "/internal/v1/deliver", tag = "cluster",
    security(("cluster_node" = [])),
    request_body(content = String, content_type = "application/json", description = "`{inputs: [{key, input, audit}]}`"),
    responses(
        (status = 200, description = "`{answers: [{outcome} | {error: {code, message}}]}`, in order",
            content_type = "application/json", body = String),
        (status = 400, body = ErrorBody, description = "`invalid_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: not signed by a node of this cluster"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn deliver(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    verify(&state, &req, &body)?;
    let batch: DeliverBatch = parse(&body)?;
    if let Some(c) = &state.cluster {
        c.stats.forwarded_in.fetch_add(batch.inputs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let answers = futures_util::future::join_all(batch.inputs.into_iter().map(|r| {
        let state = state.clone();
        async move {
            let id = r.input.request_id.clone().unwrap_or_else(request_id::generate);
            let outcome = request_id::scope(id, state.engine.send_forwarded(r.key, r.input, r.audit)).await;
            if let Err(e) = &outcome {
                count_refusal(&state, e);
            }
            Delivered::of(outcome)
        }
    }))
    .await;
    Ok(HttpResponse::Ok().json(DeliverAnswers { answers }))
}

/// An operator's retry or cancel of a call of an entity this node holds, forwarded by the node the operator asked.
#[utoipa::path(post, path = "/internal/v1/call", tag = "cluster",
    security(("cluster_node" = [])),
    request_body(content = String, content_type = "application/json", description = "`{entity, call_id, action, audit}`"),
    responses(
        (status = 204, description = "Done"),
        (status = 400, body = ErrorBody, description = "`invalid_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: not signed by a node of this cluster"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such call"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn call(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    verify(&state, &req, &body)?;
    let r: CallRequest = parse(&body)?;
    let id = request_id::current().unwrap_or_else(request_id::generate);
    let done = request_id::scope(id, state.engine.act_on_call(&r.call_id, r.action, &r.audit, Route::Here)).await;
    match done {
        Ok(()) => Ok(HttpResponse::NoContent().finish()),
        Err(e) => {
            count_refusal(&state, &e);
            Err(e.into())
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(DELIVER_PATH).app_data(web::PayloadConfig::new(1 << 20)).route(web::post().to(deliver)))
        .service(web::resource(CALL_PATH).app_data(web::PayloadConfig::new(1 << 20)).route(web::post().to(call)));
}
