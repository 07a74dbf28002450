//! The operators' API: where every workflow stands, why, and what it waits for.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::Operator;
use super::error::ErrorBody;
use super::error::{PayloadTooLarge, Unauthorized, Unavailable};
use super::{ApiError, AppState};
use crate::engine::inspect::{EntityFilter, EntityView, Page, TimerView};
use crate::engine::{services, EntityKey, JournalEntry};

/// The operators' part of the API description.
#[derive(OpenApi)]
#[openapi(
    paths(
        list,
        show,
        journal,
        timers,
        action,
        resolve_windows,
        pushes,
        hold_pushes,
        audit_trail,
        attention,
        dismiss,
        cluster,
        export
    ),
    components(schemas(
        crate::app::attention::AttentionSummary,
        crate::app::attention::CauseCount,
        crate::engine::attention::AttentionRow,
        DismissBody,
        EntityList,
        EntitySummary,
        TimerSummary,
        TimersList,
        ActionBody,
        ActionDone,
        ResolveBody,
        crate::app::windows::WindowsResolved,
        crate::app::windows::UnknownWindow,
        crate::app::pushes::PushHold,
        PushesView,
        HoldBody,
        ActionResult,
        AuditTrail,
        AuditEntry,
        crate::cluster::ClusterView,
        crate::store::postgres::leases::ClusterRows,
        crate::store::postgres::leases::NodeRow,
        crate::store::postgres::leases::ShardRow
    ))
)]
pub struct OpsApi;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// An entity kind: `subscription`, `organization`, `metering`.
    kind: Option<String>,
    /// A state of the kind's workflow, e.g. `opening`.
    state: Option<String>,
    /// Only entities with a pending timer.
    #[serde(default)]
    waiting_on_timer: bool,
    /// Only entities that need a person (any cause; see `GET /api/v1/ops/attention`).
    #[serde(default)]
    needs_attention: bool,
    /// Only entities with a concern of this cause, e.g. `window_failed`.
    cause: Option<String>,
    /// e.g. `10m`: only entities in their state at least this long.
    min_time_in_state: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of entities.
#[derive(Serialize, ToSchema)]
pub struct EntityList {
    pub items: Vec<EntitySummary>,
    /// Where the next page starts; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An entity in a list: where its workflow stands and what it waits for.
#[derive(Serialize, ToSchema)]
pub struct EntitySummary {
    pub kind: String,
    pub id: String,
    pub state: String,
    pub definition: String,
    pub version: u32,
    pub state_since: DateTime<Utc>,
    /// Service seconds since it entered its state.
    pub seconds_in_state: i64,
    pub paused: bool,
    pub updated_at: DateTime<Utc>,
    pub timers: Vec<TimerSummary>,
}

/// A pending timer of a listed entity.
#[derive(Serialize, ToSchema)]
pub struct TimerSummary {
    pub name: String,
    pub due: DateTime<Utc>,
    /// Service seconds until it fires (negative when overdue).
    pub remaining_seconds: i64,
}

/// Pending timers across the service, soonest first.
#[derive(Serialize, ToSchema)]
pub struct TimersList {
    /// The service clock.
    pub now: DateTime<Utc>,
    pub items: Vec<TimerView>,
}

fn entity_key(kind: &str, id: &str) -> Result<EntityKey, ApiError> {
    EntityKey::new(kind, id).map_err(|e| ApiError::bad_request("invalid_entity", e.to_string()))
}

/// Entities by kind, state, pending timer, needing attention and time in state, in key order.
#[utoipa::path(get, path = "/api/v1/ops/entities", tag = "operators", params(ListQuery),
    security(("operator" = [])),
    responses(
        (status = 200, body = EntityList),
        (status = 400, body = ErrorBody,
            description = "`invalid_query`, `invalid_limit`, `unknown_kind`, `unknown_cause` or `invalid_duration`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 422, body = ErrorBody, description = "`invalid_input`: the cursor is not one this API gave"),
        (status = 503, response = Unavailable),
    ))]
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
        cause: q.cause.as_deref().map(|c| state.cause(c)).transpose()?.map(|c| c.as_str().to_string()),
        min_time_in_state,
    };
    let page = state.engine.list_entities(&filter, q.cursor.as_deref(), limit).await?;
    let now = state.engine.clock().now();
    let items = page
        .items
        .iter()
        .map(|r| EntitySummary {
            kind: r.kind.clone(),
            id: r.id.clone(),
            state: r.state.clone(),
            definition: r.definition.clone(),
            version: r.version,
            state_since: r.state_since,
            seconds_in_state: (now - r.state_since).num_seconds(),
            paused: r.paused,
            updated_at: r.updated_at,
            timers: r
                .timers
                .iter()
                .map(|(n, t)| TimerSummary {
                    name: n.clone(),
                    due: t.due,
                    remaining_seconds: (t.due - now).num_seconds(),
                })
                .collect(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(EntityList { items, next_cursor: page.next_cursor }))
}

/// One entity: state and data, definition and version, pending timers, messages and external calls.
#[utoipa::path(get, path = "/api/v1/ops/entities/{kind}/{id}", tag = "operators",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
    ),
    security(("operator" = [])),
    responses(
        (status = 200, body = EntityView),
        (status = 400, body = ErrorBody, description = "`invalid_entity`: not a valid kind or id"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`not_found` or `unknown_kind`"),
        (status = 503, response = Unavailable),
    ))]
async fn show(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let key = entity_key(&kind, &id)?;
    let view = state.engine.entity_view(&key).await.map_err(|e| match e {
        crate::engine::Error::NotFound => ApiError::not_found(format!("no {kind} `{id}`")),
        other => other.into(),
    })?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JournalQuery {
    /// Entries after this sequence number (the previous page's `next_cursor`).
    after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// An entity's journal: every input, its cause, the transition and its effects, oldest first.
#[utoipa::path(get, path = "/api/v1/ops/entities/{kind}/{id}/journal", tag = "operators",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
        JournalQuery,
    ),
    security(("operator" = [])),
    responses(
        (status = 200, body = Page<JournalEntry>),
        (status = 400, body = ErrorBody, description = "`invalid_entity`, `invalid_query` or `invalid_limit`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`not_found` or `unknown_kind`"),
        (status = 503, response = Unavailable),
    ))]
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
    if state.engine.record(&key).await?.is_none() {
        return Err(ApiError::not_found(format!("no {kind} `{id}`")));
    }
    Ok(HttpResponse::Ok().json(state.engine.journal(&key, q.after.unwrap_or(0), limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TimersQuery {
    /// Only timers due before this time (RFC 3339).
    due_before: Option<DateTime<Utc>>,
    /// At most this many, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// Pending timers across the service, soonest first, with the time remaining.
#[utoipa::path(get, path = "/api/v1/ops/timers", tag = "operators", params(TimersQuery),
    security(("operator" = [])),
    responses(
        (status = 200, body = TimersList),
        (status = 400, body = ErrorBody, description = "`invalid_query` or `invalid_limit`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
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
    let rows = services::pending_timers(&state.engine, q.due_before, limit).await?;
    let items: Vec<TimerView> = rows.iter().map(|r| TimerView::new(r, now)).collect();
    Ok(HttpResponse::Ok().json(TimersList { now, items }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/entities", web::get().to(list))
        .route("/entities/{kind}/{id}", web::get().to(show))
        .route("/entities/{kind}/{id}/journal", web::get().to(journal))
        .route("/timers", web::get().to(timers))
        .route("/orgs", web::post().to(super::accounts::ops_create_org))
        .route("/entities/{kind}/{id}/actions/{action}", web::post().to(action))
        .route("/windows/resolve", web::post().to(resolve_windows))
        .route("/pushes", web::get().to(pushes))
        .route("/pushes/{switch}", web::post().to(hold_pushes))
        .route("/audit", web::get().to(audit_trail))
        .route("/attention", web::get().to(attention))
        .route("/entities/{kind}/{id}/attention/dismiss", web::post().to(dismiss))
        .route("/cluster", web::get().to(cluster))
        .route("/export", web::get().to(export));
}

/// Hands `Write`s over to the response body in chunks, from a blocking thread.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for Chunks {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = web::Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the client went away"))?;
        }
        Ok(())
    }
}

/// Every table of the store as `marketflow export` writes it, from a snapshot taken while the service runs: the
/// way to back up a running sled store (whose directory no other process may open). On sled the snapshot holds
/// commits up while it is read; on PostgreSQL it does not.
#[utoipa::path(get, path = "/api/v1/ops/export", tag = "operators",
    security(("operator" = [])),
    responses(
        (status = 200, description = "The dump, `marketflow-export 1`", content_type = "text/plain", body = String),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn export(state: web::Data<AppState>, _op: Operator) -> HttpResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let engine = state.engine.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let mut out = Chunks { tx: tx.clone(), buf: vec![] };
        let r = engine.export(&mut out).map_err(|e| std::io::Error::other(e.to_string()));
        match r.and_then(|_| std::io::Write::flush(&mut out)) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "the export failed");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("content-disposition", "attachment; filename=\"marketflow.export\""))
        .streaming(body)
}

/// The nodes sharing this service's database, their heartbeats, and the shards each holds with its epoch and
/// lease (PostgreSQL mode); on sled, the one node that holds every shard.
#[utoipa::path(get, path = "/api/v1/ops/cluster", tag = "operators",
    security(("operator" = [])),
    responses(
        (status = 200, body = crate::cluster::ClusterView),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn cluster(state: web::Data<AppState>, _op: Operator) -> Result<HttpResponse, ApiError> {
    let view = state.cluster_view(state.cluster.as_ref(), &state.config.node_id, &state.config.node_url).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// An operator action's request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why (1 to 500 characters); kept in the journal and the audit trail.
    reason: Option<String>,
    /// `retry` / `cancel`: only this call (default: every pending call of the entity).
    call_id: Option<String>,
}

pub use crate::app::ops::ActionDone;
use crate::app::windows::WindowsResolved;
pub use crate::engine::audit::{ActionResult, AuditEntry};

/// Steers one entity: `retry` / `cancel` an external call, `pause` / `resume` the entity, `freeze` / `unfreeze`
/// an organization. Every action needs a reason and lands in the entity's journal and the audit trail.
#[utoipa::path(post, path = "/api/v1/ops/entities/{kind}/{id}/actions/{action}", tag = "operators",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
        ("action" = String, Path, description = "`retry`, `cancel`, `pause`, `resume`; `freeze`, `unfreeze` for organizations"),
    ),
    request_body(content = Option<ActionBody>, description = "Optional: a missing or empty body counts as no reason; a body that is not this JSON object is refused (`invalid_json`)"),
    security(("operator" = [])),
    responses(
        (status = 200, body = ActionDone),
        (status = 400, body = ErrorBody, description = "`invalid_entity`, `invalid_json`, `reason_required` or `unknown_action`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody,
            description = "`not_found` (no such entity, or no pending external call to act on) or `unknown_kind`"),
        (status = 409, body = ErrorBody,
            description = "`not_applicable` (freeze/unfreeze does not apply in this state) or `paused`"),
        (status = 413, response = PayloadTooLarge),
        (status = 422, body = ErrorBody, description = "`invalid_input`: the workflow refused the input"),
        (status = 503, response = Unavailable),
    ))]
async fn action(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<(String, String, String)>,
    req: actix_web::HttpRequest,
    body: Result<web::Json<ActionBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id, action) = path.into_inner();
    let body = match body {
        Ok(b) => b.into_inner(),
        // No body at all is an action without a reason: the reason check answers it with its own code.
        Err(_)
            if req.headers().get("content-length").is_none_or(|l| l.as_bytes() == b"0")
                && req.headers().get("transfer-encoding").is_none() =>
        {
            ActionBody { reason: None, call_id: None }
        }
        // Too large (413) or not the JSON object above (400): the JSON extractor's own answer, with its code.
        Err(e) => return Ok(e.error_response()),
    };
    let key = entity_key(&kind, &id)?;
    let reason = crate::app::ops::reason(body.reason)?;
    Ok(HttpResponse::Ok().json(state.act(&op.name, &key, &action, reason, body.call_id).await?))
}

/// Which windows of unknown outcome to resolve, and how.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// `mark-pushed` (the marketplace's bill shows it), `push-again` (it does not) or `cancel`.
    resolution: String,
    /// Windows starting at this hour (RFC 3339).
    hour: Option<DateTime<Utc>>,
    /// Windows of these instances. With `hour`, both must match; at least one of the two is required.
    #[serde(default)]
    instances: Vec<String>,
    /// Why (1 to 500 characters); kept in each window's journal and the audit trail. Not needed for a dry run.
    reason: Option<String>,
    /// `mark-pushed` only: the request id of the bill's record, kept with the window.
    request_id: Option<String>,
    /// List what would be resolved, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Resolves windows whose push has an unknown outcome, in bulk: by hour, by instances, or both. Each window is
/// resolved as the single-call action would (`mark-pushed` delivers the push's success with the bill's request id,
/// `push-again` is a retry, `cancel` fails the window), audited as `window:<resolution>`.
#[utoipa::path(post, path = "/api/v1/ops/windows/resolve", tag = "operators",
    request_body = ResolveBody,
    security(("operator" = [])),
    responses(
        (status = 200, body = WindowsResolved),
        (status = 400, body = ErrorBody,
            description = "`invalid_json`, `reason_required`, `selector_required`, `unknown_resolution`, `invalid_parameter` or `invalid_entity`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn resolve_windows(
    state: web::Data<AppState>,
    op: Operator,
    body: web::Json<ResolveBody>,
) -> Result<HttpResponse, ApiError> {
    use crate::app::windows::{Resolution, Selector};
    let body = body.into_inner();
    let resolution = Resolution::parse(&body.resolution)?;
    let selector = Selector::parse(body.hour, body.instances.iter().map(String::as_str))?;
    Ok(HttpResponse::Ok().json(
        state.resolve_windows(&op.name, &selector, resolution, body.reason, body.request_id, body.dry_run).await?,
    ))
}

/// The pushes of this node and the service-wide hold.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushesView {
    pub hold: crate::app::pushes::PushHold,
    /// `PushMeteringData` calls this node made since it started.
    pub calls: u64,
    /// Windows those calls carried.
    pub records: u64,
    /// Refused batches split to find the refused record.
    pub splits: u64,
    /// Windows waiting for a seat in a batch now (held, paced, or gathering).
    pub waiting: u64,
}

/// Whether pushes are held (service-wide), and this node's pushes so far.
#[utoipa::path(get, path = "/api/v1/ops/pushes", tag = "operators",
    security(("operator" = [])),
    responses(
        (status = 200, body = PushesView),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn pushes(state: web::Data<AppState>, _op: Operator) -> Result<HttpResponse, ApiError> {
    let (calls, records, splits, waiting) = crate::app::pushes::stats();
    Ok(HttpResponse::Ok().json(PushesView { hold: state.push_hold().await?, calls, records, splits, waiting }))
}

/// Why an operator holds or releases the pushes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// 1 to 500 characters, kept in the audit trail.
    reason: Option<String>,
}

/// Holds every metering push (`hold`: an incident switch) or releases them (`release`), audited. Held windows are
/// still metered and wait, unsent and not in flight; released, they go out in batches. Holding what is held
/// changes nothing.
#[utoipa::path(post, path = "/api/v1/ops/pushes/{switch}", tag = "operators",
    params(("switch" = String, Path, description = "`hold` or `release`")),
    request_body = HoldBody,
    security(("operator" = [])),
    responses(
        (status = 200, body = crate::app::pushes::PushHold),
        (status = 400, body = ErrorBody, description = "`invalid_json` or `reason_required`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`not_found`: neither `hold` nor `release`"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn hold_pushes(
    state: web::Data<AppState>,
    op: Operator,
    switch: web::Path<String>,
    body: web::Json<HoldBody>,
) -> Result<HttpResponse, ApiError> {
    let hold = match switch.as_str() {
        "hold" => true,
        "release" => false,
        other => return Err(ApiError::not_found(format!("no switch `{other}`: `hold` or `release`"))),
    };
    let reason = crate::app::ops::reason(body.into_inner().reason)?;
    Ok(HttpResponse::Ok().json(state.hold_pushes(&op.name, hold, reason).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// At most this many (clamped to 1..=1000; default 100).
    limit: Option<usize>,
}

/// The audit trail, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditTrail {
    pub items: Vec<AuditEntry>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/api/v1/ops/audit", tag = "operators", params(AuditQuery),
    security(("operator" = [])),
    responses(
        (status = 200, body = AuditTrail),
        (status = 400, body = ErrorBody, description = "`invalid_query`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn audit_trail(
    state: web::Data<AppState>,
    _op: Operator,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let items = state.audit_trail(q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(HttpResponse::Ok().json(AuditTrail { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AttentionQuery {
    /// Only concerns of this cause.
    cause: Option<String>,
    /// At most this many concerns (clamped to 1..=1000; default 100).
    limit: Option<usize>,
}

/// What needs a person: every cause with what it covers, its next step and its count now, and the concerns
/// themselves (of one cause, or all), each with its entity, subject, next step and since when.
#[utoipa::path(get, path = "/api/v1/ops/attention", tag = "operators", params(AttentionQuery),
    security(("operator" = [])),
    responses(
        (status = 200, body = crate::app::attention::AttentionSummary),
        (status = 400, body = ErrorBody, description = "`invalid_query` or `unknown_cause`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 503, response = Unavailable),
    ))]
async fn attention(
    state: web::Data<AppState>,
    _op: Operator,
    q: web::Query<AttentionQuery>,
) -> Result<HttpResponse, ApiError> {
    let cause = q.cause.as_deref().map(|c| state.cause(c)).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(HttpResponse::Ok().json(state.attention(cause.as_ref(), limit).await?))
}

/// Which concern to dismiss, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissBody {
    /// The concern's cause, e.g. `window_failed`.
    cause: String,
    /// The concern's subject (a window's start, a call's id); empty or absent for the entity as a whole.
    #[serde(default)]
    subject: String,
    /// 1 to 500 characters, kept in the audit trail.
    reason: Option<String>,
}

/// Dismisses one concern of an entity, audited as `dismiss:<cause>`: it leaves the list and the counts until it
/// arises again. For what a person has dealt with outside marketflow (a refused window billed another way).
#[utoipa::path(post, path = "/api/v1/ops/entities/{kind}/{id}/attention/dismiss", tag = "operators",
    params(
        ("kind" = String, Path, description = "`subscription`, `organization` or `metering`"),
        ("id" = String, Path, description = "the entity's id within its kind"),
    ),
    request_body = DismissBody,
    security(("operator" = [])),
    responses(
        (status = 204, description = "Dismissed"),
        (status = 400, body = ErrorBody, description = "`invalid_entity`, `invalid_json`, `unknown_cause` or `reason_required`"),
        (status = 401, response = Unauthorized),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token is not the operator's"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such concern (settled, or dismissed already)"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
async fn dismiss(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<(String, String)>,
    body: web::Json<DismissBody>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let key = entity_key(&kind, &id)?;
    let body = body.into_inner();
    let cause = state.cause(&body.cause)?;
    let reason = crate::app::ops::reason(body.reason)?;
    state.dismiss_attention(&op.name, &key, &cause, &body.subject, reason).await?;
    Ok(HttpResponse::NoContent().finish())
}
