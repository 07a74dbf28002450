//! Routes. Handlers parse raw input into domain types at the edge and talk to the engine through its handle.

pub mod accounts;
pub mod auth;
pub mod console;
pub mod error;
pub mod internal;
pub mod limits;
pub mod marketplace;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod routes;
pub mod session;
pub mod spi;
pub mod sso;
pub mod trace;
pub mod usage;
pub mod web;

use actix_web::HttpResponse;
// `web` here is this module's shared web concerns; actix's is spelled out.
use actix_web::web as aweb;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::config::Config;
pub use error::ApiError;
use error::ErrorBody;

/// What every handler can reach: the use cases (`app`, also reached through `Deref`, so `state.engine` and
/// `state.bind(..)` read alike) and the web layer's own settings.
pub struct AppState {
    /// The use cases and what they reach (engine, accounts, catalog); the same value for every adapter.
    pub app: crate::app::App,
    pub config: Config,
    /// Records deleted by the sweeper of ended records, for `/metrics`.
    pub swept: std::sync::Arc<crate::engine::sweep::SweepStats>,
    /// What retention trimmed, and the store's rows by table and bytes when last counted, for `/metrics`.
    pub retained: std::sync::Arc<crate::engine::retention::RetentionStats>,
    /// The rate limits' buckets (per route class and client).
    pub limiter: limits::Limiter,
    /// This node's part in a cluster (PostgreSQL); `None` on sled.
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

impl std::ops::Deref for AppState {
    type Target = crate::app::App;
    fn deref(&self) -> &crate::app::App {
        &self.app
    }
}

/// The probes' part of the API description.
#[derive(OpenApi)]
#[openapi(paths(healthz, readyz), components(schemas(Health, Ready)))]
pub struct ProbesApi;

/// The liveness answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
    /// The service clock (RFC 3339): the marketplace's notion of now, scaled in demos.
    #[schema(format = DateTime)]
    now: String,
    /// Service seconds per real second (1 in production).
    time_scale: f64,
}

/// The readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    status: &'static str,
}

/// Liveness: the process answers, and says what time it thinks it is.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, body = Health)))]
async fn healthz(state: aweb::Data<AppState>) -> HttpResponse {
    let clock = state.engine.clock();
    HttpResponse::Ok().json(Health { status: "ok", now: clock.now().to_rfc3339(), time_scale: clock.scale() })
}

/// Readiness: the store accepts commits and shutdown has not begun.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, body = Ready),
    (status = 503, description = "`not_ready`: the store refused a write (restart needed) or the service is stopping",
        body = ErrorBody, headers(("Retry-After" = u32, description = "seconds"))),
))]
async fn readyz(state: aweb::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.engine.ready() {
        Ok(HttpResponse::Ok().json(Ready { status: "ready" }))
    } else {
        let mut e = ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store is unavailable or the service is stopping",
        );
        e.retry_after = Some(1);
        Err(e)
    }
}

/// The answer for a (method, path) no route serves: its own code, so that clients and the route probe tell "this
/// route does not exist" from a served route's `not_found`.
async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(actix_web::http::StatusCode::NOT_FOUND, "no_such_route", "no such route"))
}

/// Why a JSON body was refused: too large is 413 (`payload_too_large`), anything else 400 (`invalid_json`).
fn json_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match e {
        E::Payload(p) if limits::timed_out(&p) => ApiError::new(
            actix_web::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        ),
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        ),
        other => ApiError::bad_request("invalid_json", other.to_string()),
    }
}

/// Registers every route of the service.
pub fn configure(cfg: &mut aweb::ServiceConfig) {
    cfg.app_data(aweb::JsonConfig::default().limit(64 * 1024).error_handler(|e, _| json_error(e).into()))
        .app_data(
            aweb::QueryConfig::default()
                .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
        )
        .app_data(
            aweb::PathConfig::default()
                .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
        )
        .route("/healthz", aweb::get().to(healthz))
        .route("/readyz", aweb::get().to(readyz))
        .route("/metrics", aweb::get().to(metrics::metrics))
        .route("/openapi.json", aweb::get().to(openapi::openapi_json))
        .route("/api/docs", aweb::get().to(openapi::api_docs))
        .service(
            aweb::resource("/aliyun/spi").route(aweb::get().to(spi::spi_get)).route(aweb::post().to(spi::spi_post)),
        )
        .route("/aliyun/sso", aweb::get().to(sso::sso))
        .service(aweb::scope("/api/v1/ops").configure(ops::configure).configure(usage::configure_ops))
        .service(
            aweb::scope("/api/v1")
                .configure(accounts::configure)
                .configure(marketplace::configure)
                .configure(usage::configure),
        )
        .configure(pages::configure)
        .configure(console::configure)
        .configure(internal::configure)
        .default_service(aweb::to(no_such_route));
}
