//! Every request's id: the caller's `X-Request-Id` when it is a plain token, or a new one. It is answered in the
//! response, written in the access log, and carried into the journal entries the request causes (through
//! forwarding to another node, too: `engine::request_id`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::engine::request_id;

const HEADER: &str = "x-request-id";

/// Runs the request inside its id's scope and answers the id.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| request_id::acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(request_id::generate);
    let mut res = request_id::scope(id.clone(), next.call(req)).await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HeaderName::from_static(HEADER), v);
    }
    Ok(res)
}
