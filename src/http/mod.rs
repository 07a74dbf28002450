//! Routes. Handlers parse raw input into domain types at the edge and talk to the engine through its handle.

pub mod accounts;
pub mod auth;
pub mod error;
pub mod marketplace;
pub mod metrics;
pub mod ops;
pub mod pages;
pub mod routes;
pub mod session;
pub mod spi;
pub mod sso;
pub mod usage;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;
pub use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub engine: Engine,
    pub config: Config,
    pub accounts: std::sync::Arc<crate::accounts::Accounts>,
    /// The price catalog (CU types, units per CU-hour, metering items).
    pub catalog: std::sync::Arc<crate::domain::pricing::Catalog>,
}

/// Liveness: the process answers, and says what time it thinks it is.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let clock = state.engine.clock();
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "now": clock.now().to_rfc3339(),
        "time_scale": clock.scale(),
    }))
}

/// Readiness: the store accepts commits and shutdown has not begun.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.ready() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({ "code": "not_ready", "message": "the store is unavailable or the service is stopping" }))
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

/// Registers every route of the service.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|e, _| ApiError::bad_request("invalid_json", e.to_string()).into()),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
    )
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics::metrics))
    .service(web::resource("/aliyun/spi").route(web::get().to(spi::spi)).route(web::post().to(spi::spi)))
    .route("/aliyun/sso", web::get().to(sso::sso))
    .service(web::scope("/api/v1/ops").configure(ops::configure).configure(usage::configure_ops))
    .service(
        web::scope("/api/v1")
            .configure(accounts::configure)
            .configure(marketplace::configure)
            .configure(usage::configure),
    )
    .configure(pages::configure)
    .default_service(web::to(not_found));
}
