//! The operators' API: where every workflow stands, why, and what it waits for.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::auth::Operator;
use super::{ApiError, AppState};
use crate::engine::inspect::{EntityFilter, TimerView};
use crate::engine::{services, EntityKey};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<String>,
    state: Option<String>,
    #[serde(default)]
    waiting_on_timer: bool,
    #[serde(default)]
    needs_attention: bool,
    /// e.g. `10m`: only entities in their state at least this long.
    min_time_in_state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn entity_key(kind: &str, id: &str) -> Result<EntityKey, ApiError> {
    EntityKey::new(kind, id).map_err(|e| ApiError::bad_request("invalid_entity", e.to_string()))
}

async fn list(state: web::Data<AppState>, _op: Operator, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 1000"));
    }
    if let Some(k) = &q.kind {
        if state.engine.registry().kind(k).is_none() {
            return Err(ApiError::bad_request("unknown_kind", format!("no entity kind `{k}`")));
        }
    }
    let min_time_in_state = q
        .min_time_in_state
        .as_deref()
        .map(crate::engine::definition::parse_duration)
        .transpose()
        .map_err(|m| ApiError::bad_request("invalid_duration", m))?
        .map(|d| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX));
    let filter = EntityFilter {
        kind: q.kind,
        state: q.state,
        waiting_on_timer: q.waiting_on_timer,
        needs_attention: q.needs_attention,
        min_time_in_state,
    };
    let engine = state.engine.clone();
    let page = web::block(move || engine.list_entities(&filter, q.cursor.as_deref(), limit))
        .await
        .map_err(|_| ApiError::from(crate::engine::Error::Overloaded))??;
    let now = state.engine.clock().now();
    let items: Vec<_> = page
        .items
        .iter()
        .map(|r| {
            json!({
                "kind": r.kind, "id": r.id, "state": r.state, "definition": r.definition, "version": r.version,
                "state_since": r.state_since, "seconds_in_state": (now - r.state_since).num_seconds(),
                "paused": r.paused, "updated_at": r.updated_at,
                "timers": r.timers.iter().map(|(n, t)| json!({
                    "name": n, "due": t.due, "remaining_seconds": (t.due - now).num_seconds()
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": page.next_cursor })))
}

async fn show(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let key = entity_key(&kind, &id)?;
    let view = state.engine.entity_view(&key).map_err(|e| match e {
        crate::engine::Error::NotFound => ApiError::not_found(format!("no {kind} `{id}`")),
        other => other.into(),
    })?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn journal(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<(String, String)>,
    q: web::Query<JournalQuery>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let key = entity_key(&kind, &id)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 1000"));
    }
    if state.engine.record(&key)?.is_none() {
        return Err(ApiError::not_found(format!("no {kind} `{id}`")));
    }
    Ok(HttpResponse::Ok().json(state.engine.journal(&key, q.after.unwrap_or(0), limit)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimersQuery {
    due_before: Option<DateTime<Utc>>,
    limit: Option<usize>,
}

async fn timers(
    state: web::Data<AppState>,
    _op: Operator,
    q: web::Query<TimersQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 1000"));
    }
    let now = state.engine.clock().now();
    let rows = services::pending_timers(&state.engine, q.due_before, limit)?;
    let items: Vec<TimerView> = rows.iter().map(|r| TimerView::new(r, now)).collect();
    Ok(HttpResponse::Ok().json(json!({ "now": now, "items": items })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/entities", web::get().to(list))
        .route("/entities/{kind}/{id}", web::get().to(show))
        .route("/entities/{kind}/{id}/journal", web::get().to(journal))
        .route("/timers", web::get().to(timers))
        .route("/orgs", web::post().to(super::accounts::ops_create_org))
        .route("/entities/{kind}/{id}/actions/{action}", web::post().to(action))
        .route("/audit", web::get().to(audit_trail));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    reason: Option<String>,
    call_id: Option<String>,
}

/// Steers one entity: `retry` / `cancel` an external call, `pause` / `resume` the entity, `freeze` / `unfreeze`
/// an organization. Every action needs a reason and lands in the entity's journal and the audit trail.
async fn action(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<(String, String, String)>,
    body: Option<web::Json<ActionBody>>,
) -> Result<HttpResponse, ApiError> {
    use crate::engine::{Cause, Event, Input, Status};
    let (kind, id, action) = path.into_inner();
    let key = entity_key(&kind, &id)?;
    let body = body.map(|b| b.into_inner()).unwrap_or(ActionBody { reason: None, call_id: None });
    let reason = body.reason.unwrap_or_default().trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::bad_request(
            "reason_required",
            "give a reason (1 to 500 characters) for the audit trail",
        ));
    }
    if state.engine.record(&key)?.is_none() {
        return Err(ApiError::not_found(format!("no {kind} `{id}`")));
    }
    let cause = Cause::Operator { operator: op.name.clone(), reason: reason.clone() };
    let input_id = format!("op:{action}:{}", uuid::Uuid::new_v4());
    let result = match action.as_str() {
        "pause" | "resume" => {
            let input = Input { id: input_id, event: Event::Control { action: action.clone() }, cause };
            let o = state.engine.send(key.clone(), input).await?;
            json!({ "status": o.status, "state": o.state, "paused": o.reply["paused"] })
        }
        "freeze" | "unfreeze" if kind == crate::domain::organization::KIND => {
            let input = Input::domain(input_id, json!({ "type": action, "reason": reason }), cause);
            let o = state.engine.send(key.clone(), input).await?;
            if o.status == Status::Ignored {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::CONFLICT,
                    "not_applicable",
                    format!("`{action}` does not apply to an organization in state `{}`", o.state),
                ));
            }
            json!({ "status": o.status, "state": o.state })
        }
        "retry" | "cancel" => {
            let (_, calls) = services::pending_effects(&state.engine, &key)?;
            let chosen: Vec<_> = match &body.call_id {
                Some(c) => calls.into_iter().filter(|r| &r.id == c).collect(),
                None => calls,
            };
            if chosen.is_empty() {
                return Err(ApiError::not_found("no pending external call to act on"));
            }
            let mut done = vec![];
            for c in chosen {
                if action == "retry" {
                    state.engine.retry_call(&c.id).await?;
                } else {
                    state.engine.cancel_call(&c.id, &format!("{}: {reason}", op.name)).await?;
                }
                done.push(c.id);
            }
            json!({ "calls": done })
        }
        _ => {
            return Err(ApiError::bad_request(
                "unknown_action",
                format!("`{action}` is not an action for a {kind} (retry, cancel, pause, resume; freeze, unfreeze for organizations)"),
            ))
        }
    };
    audit(&state, &op.name, &key.to_string(), &action, &reason, &result).await;
    Ok(HttpResponse::Ok().json(json!({ "entity": key.to_string(), "action": action, "result": result })))
}

/// Appends to the service-wide audit trail (the entity's journal has the same fact with its cause).
async fn audit(state: &AppState, operator: &str, entity: &str, action: &str, reason: &str, result: &serde_json::Value) {
    let now = state.engine.clock().now();
    let mut key = Vec::new();
    // Time, then a process-wide sequence (actions at one instant keep their order), then randomness.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    crate::store::keys::push_u64(&mut key, crate::store::keys::time_key(now));
    crate::store::keys::push_u64(&mut key, SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    key.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..4]);
    let mut full = b"audit/".to_vec();
    full.extend_from_slice(&key);
    let entry = json!({ "at": now, "operator": operator, "entity": entity, "action": action, "reason": reason, "result": result });
    let mut b = crate::store::Batch::new();
    b.put(crate::store::Table::Records, full, serde_json::to_vec(&entry).unwrap_or_default());
    if let Err(e) = state.engine.committer().commit(b).await {
        tracing::error!(error = %e, "could not write the audit trail");
    }
    tracing::info!(operator, entity, action, "operator action");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

/// The audit trail, newest first.
async fn audit_trail(
    state: web::Data<AppState>,
    _op: Operator,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let prefix = b"audit/".to_vec();
    let rows = state
        .engine
        .store()
        .scan(
            crate::store::Table::Records,
            std::ops::Bound::Included(prefix.clone()),
            crate::store::prefix_end(&prefix),
            limit,
            true,
        )
        .map_err(crate::engine::Error::from)?;
    let items: Vec<serde_json::Value> = rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
