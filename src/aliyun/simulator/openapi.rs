//! The Market OpenAPI endpoint (`/`, POST and GET), as the gateway behaves towards an SDK.
//!
//! Order of checks: injected faults (503 `ServiceUnavailable`, slowness), the signature (V3 or
//! RPC, [`crate::aliyun::verify_request`], against real time), the nonce (`SignatureNonceUsed`),
//! the version, then the action. Errors are `{RequestId, HostId, Code, Message, Recommend}` as
//! JSON with the gateway's status, which the official SDK turns into `ClientException` (4xx) or
//! `ServerException` (5xx).
//!
//! Codes of this simulator beyond the authentication ones (`auth.rs`):
//! `InvalidVersion` 400, `MissingAction` 400, `InvalidAction.NotFound` 404,
//! `Missing<Param>`/`Invalid<Param>` 400 (the gateway's pattern), `InvalidParameter` 400 (a name
//! given twice), `InvalidInstanceId.NotFound` 404 (DescribeInstance),
//! `InvalidNotificationRequestId.NotFound` 404, the metering codes of `state.rs`
//! (`InvalidMetering.*` 400, `Throttling.User` 400), `ServiceUnavailable` 503.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Serialize;

use super::state::{Failure, Status};
use super::Shared;
use crate::aliyun::auth::{AuthError, AuthErrorCode, ReceivedRequest};
use crate::aliyun::encoding::{first_duplicate, parse_form};
use crate::aliyun::market::{
    ConfirmNotificationRequest, DescribeFailedNotificationsRequest, DescribeFailedNotificationsResponse,
    DescribeInstanceRequest, DescribeInstanceResponse, ErrorResponse, FailedNotification, LongId, MarketRequest,
    PushMeteringDataRequest, SuccessResponse, VERSION,
};

/// Largest page of DescribeFailedNotifications.
const MAX_PAGE_SIZE: u32 = 100;

/// The gateway's RequestId format: an uppercase UUID.
fn new_request_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

fn error(request_id: &str, host_id: &str, failure: Failure, shared: &Shared) -> HttpResponse {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Real milliseconds until the service-time wait is over (the SDK reads `x-acs-retry-after` as
    // milliseconds); a manual clock has no real-time answer, so no header then.
    let retry_after_ms = failure
        .retry_after
        .and_then(|wait| shared.now().checked_add_signed(wait))
        .and_then(|at| shared.clock.real_until(at))
        .map(|d| d.as_millis().max(1));
    let mut body = ErrorResponse::new(request_id, host_id, failure.code.as_str(), failure.message);
    body.recommend =
        Some(format!("https://api.aliyun.com/troubleshoot?q={}&product=Market&requestId={request_id}", failure.code));
    tracing::info!(request_id, code = %failure.code, status = status.as_u16(), "market api refused a call");
    let mut response = HttpResponse::build(status);
    if let Some(ms) = retry_after_ms {
        response.insert_header(("x-acs-retry-after", ms.to_string()));
    }
    response.json(body)
}

fn auth_failure(e: AuthError) -> Failure {
    Failure { status: e.code.http_status(), code: e.code().to_string(), message: e.message, retry_after: None }
}

fn ok<T: Serialize>(body: &T) -> HttpResponse {
    HttpResponse::Ok().json(body)
}

pub(crate) async fn market_api(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let request_id = new_request_id();
    let host_id =
        req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(crate::aliyun::market::ENDPOINT).to_string();
    let (fail, slow_ms) = shared.lock().draw_openapi_fault();
    if slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
    }
    if fail {
        return error(
            &request_id,
            &host_id,
            Failure::new(503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server."),
            &shared,
        );
    }
    match handle(&req, &body, &shared, &request_id) {
        Ok(response) => response,
        Err(failure) => error(&request_id, &host_id, failure, &shared),
    }
}

fn handle(req: &HttpRequest, body: &[u8], shared: &Shared, request_id: &str) -> Result<HttpResponse, Failure> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let received = ReceivedRequest {
        method: req.method().as_str(),
        path: req.path(),
        raw_query: req.query_string(),
        headers: &headers,
        body,
    };
    // Real time, not the service clock: see the module doc of `simulator`.
    let real_now = Utc::now();
    let verified = crate::aliyun::verify_request(
        &received,
        |ak| (ak == shared.access_key_id).then(|| shared.access_key_secret.expose().to_string()),
        real_now,
    )
    .map_err(auth_failure)?;
    if !shared.lock().nonces.insert(&verified.nonce, real_now) {
        return Err(auth_failure(AuthError::new(
            AuthErrorCode::SignatureNonceUsed,
            "Specified signature nonce was used already.",
        )));
    }
    let params = request_params(req, body)?;
    if verified.version != VERSION {
        return Err(Failure::new(
            400,
            "InvalidVersion",
            format!("Specified parameter Version is not valid: {:?} (Market supports {VERSION}).", verified.version),
        ));
    }
    tracing::debug!(request_id, action = %verified.action, "market api call");
    match verified.action.as_str() {
        DescribeInstanceRequest::ACTION => describe_instance(shared, &params, request_id),
        PushMeteringDataRequest::ACTION => push_metering_data(shared, &params, request_id),
        DescribeFailedNotificationsRequest::ACTION => describe_failed_notifications(shared, &params, request_id),
        ConfirmNotificationRequest::ACTION => confirm_notification(shared, &params, request_id),
        "" => Err(Failure::new(400, "MissingAction", "Action is mandatory for this request.")),
        other => Err(Failure::new(
            404,
            "InvalidAction.NotFound",
            format!("Specified api {other:?} is not found, please check your url and method."),
        )),
    }
}

/// Business parameters: the query, plus a form body if one was sent (RPC clients may post forms).
fn request_params(req: &HttpRequest, body: &[u8]) -> Result<BTreeMap<String, String>, Failure> {
    let malformed = |m: String| Failure::new(400, "InvalidParameter", m);
    let mut pairs = parse_form(req.query_string()).map_err(|e| malformed(format!("The query is malformed: {e}.")))?;
    let is_form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/x-www-form-urlencoded"));
    if is_form && !body.is_empty() {
        let text = std::str::from_utf8(body).map_err(|_| malformed("The form body is not UTF-8.".into()))?;
        pairs.extend(parse_form(text).map_err(|e| malformed(format!("The form body is malformed: {e}.")))?);
    }
    if let Some(dup) = first_duplicate(&pairs) {
        return Err(malformed(format!("Parameter {dup} is given more than once.")));
    }
    Ok(pairs.into_iter().collect())
}

fn param_failure(e: crate::aliyun::market::ParamError) -> Failure {
    Failure::new(400, &e.code(), e.to_string())
}

fn describe_instance(
    shared: &Shared,
    params: &BTreeMap<String, String>,
    request_id: &str,
) -> Result<HttpResponse, Failure> {
    let request = DescribeInstanceRequest::from_query(params).map_err(param_failure)?;
    let state = shared.lock();
    let i = state.instance(&request.instance_id).ok_or_else(|| {
        Failure::new(404, "InvalidInstanceId.NotFound", format!("The instance {} does not exist.", request.instance_id))
    })?;
    let millis = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let response = DescribeInstanceResponse {
        request_id: Some(request_id.to_string()),
        instance_id: Some(LongId(i.spi_instance_id().to_string())),
        order_id: Some(LongId(i.order_id.clone())),
        status: Some(i.status.to_market()),
        product_code: Some(i.product_code.clone()),
        product_sku_code: Some(i.sku_id.clone()),
        product_name: Some("Zilliz Cloud".into()),
        product_type: Some("APP".into()),
        supplier_name: Some("Zilliz".into()),
        is_trial: Some(false),
        auto_renewal: Some("false".into()),
        began_on: millis(i.opened_at),
        end_on: if i.status == Status::Closed { millis(i.closed_at) } else { None },
        created_on: millis(Some(i.created_at)),
        app_json: i.app_json.clone(),
        extend_json: i.extend_json.clone(),
        ..DescribeInstanceResponse::default()
    };
    Ok(ok(&response))
}

fn push_metering_data(
    shared: &Shared,
    params: &BTreeMap<String, String>,
    request_id: &str,
) -> Result<HttpResponse, Failure> {
    let request = PushMeteringDataRequest::from_query(params).map_err(param_failure)?;
    let now = shared.now();
    let count = shared.lock().accept_metering(&request, &shared.product_code, request_id, now)?;
    tracing::info!(request_id, records = count, "metering accepted");
    Ok(ok(&SuccessResponse { request_id: request_id.to_string(), success: true }))
}

fn describe_failed_notifications(
    shared: &Shared,
    params: &BTreeMap<String, String>,
    request_id: &str,
) -> Result<HttpResponse, Failure> {
    let request = DescribeFailedNotificationsRequest::from_query(params).map_err(param_failure)?;
    if request.page_number == 0 {
        return Err(Failure::new(400, "InvalidPageNumber", "PageNumber must be 1 or more."));
    }
    if request.page_size == 0 || request.page_size > MAX_PAGE_SIZE {
        return Err(Failure::new(400, "InvalidPageSize", format!("PageSize must be between 1 and {MAX_PAGE_SIZE}.")));
    }
    let state = shared.lock();
    let open: Vec<_> = state.notifications.iter().filter(|n| !n.confirmed).collect();
    let skip = (request.page_number as usize - 1).saturating_mul(request.page_size as usize);
    let page = open
        .iter()
        .skip(skip)
        .take(request.page_size as usize)
        .map(|n| FailedNotification {
            notification_request_id: n.id.clone(),
            action: n.action.clone(),
            create_time: Some(n.created_at.timestamp_millis()),
            message: n.message.clone(),
        })
        .collect();
    Ok(ok(&DescribeFailedNotificationsResponse {
        request_id: request_id.to_string(),
        page_number: request.page_number,
        page_size: request.page_size,
        total_count: open.len() as u64,
        notification_list: page,
    }))
}

fn confirm_notification(
    shared: &Shared,
    params: &BTreeMap<String, String>,
    request_id: &str,
) -> Result<HttpResponse, Failure> {
    let request = ConfirmNotificationRequest::from_query(params).map_err(param_failure)?;
    let mut state = shared.lock();
    // Confirming twice is harmless (the caller may have lost the first answer).
    let n = state.notifications.iter_mut().find(|n| n.id == request.notification_request_id).ok_or_else(|| {
        Failure::new(
            404,
            "InvalidNotificationRequestId.NotFound",
            format!("The notification {} does not exist.", request.notification_request_id),
        )
    })?;
    n.confirmed = true;
    Ok(ok(&SuccessResponse { request_id: request_id.to_string(), success: true }))
}
