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
        .route("/orgs", web::post().to(super::accounts::ops_create_org));
}
