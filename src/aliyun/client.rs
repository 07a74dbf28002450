//! The Market OpenAPI client (us → marketplace): DescribeInstance, PushMeteringData,
//! DescribeFailedNotifications, ConfirmNotification.
//!
//! Requests look exactly like the official SDK's default (docs/aliyun-sdk-findings.md §1–2): V3
//! `ACS3-HMAC-SHA256`, `POST /` with the business parameters in the query and an empty body.
//! Signing and the parameter encoding come from [`crate::aliyun::sign_v3`] and
//! [`crate::aliyun::market`], which the simulator verifies with the same code, so the two sides
//! cannot drift apart.
//!
//! The request timestamp (`x-acs-date`) is always real UTC time, never the service clock: the
//! gateway rejects requests more than 15 minutes off its own wall clock, and a scaled demo clock
//! runs hours ahead within minutes. (The simulator checks signatures against real time for the
//! same reason.)
//!
//! The client does not retry: the engine owns retry policies and needs to journal every attempt.
//! [`Error::is_retryable`] tells it whether another attempt may help, and
//! [`Error::outcome_unknown`] whether the call may have taken effect although it failed, which
//! matters for PushMeteringData (the API has no way to ask whether a push arrived).
//!
//! The AccessKey secret is held as a [`Secret`] and only read to compute a signature; it never
//! appears in a URL (V3 puts the signature in a header), an error or a log line.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use crate::aliyun::encoding::encode_query;
use crate::aliyun::market::{
    ConfirmNotificationRequest, DescribeFailedNotificationsRequest, DescribeFailedNotificationsResponse,
    DescribeInstanceRequest, DescribeInstanceResponse, MarketRequest, MeteringRecord, MeteringRules,
    PushMeteringDataRequest, SuccessResponse, VERSION,
};
use crate::aliyun::sign_v3::{new_nonce, sign_rpc_call, RpcCall};
use crate::config::Secret;

/// Largest answer read from the marketplace; its answers are a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a Market API call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured endpoint cannot be used (a configuration error, found at start-up).
    #[error("invalid Market API endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The HTTP client could not be built, or the AccessKey is unusable.
    #[error("cannot set up the Market API client: {0}")]
    Setup(String),
    /// Our own request is invalid (checked before sending, e.g. a metering batch that breaks the
    /// documented limits). `code` follows the API's style (`MissingInstanceId`, `InvalidMetering.…`).
    #[error("{action}: invalid request ({code}): {reason}")]
    InvalidRequest { action: &'static str, code: String, reason: String },
    /// No complete answer within the timeout.
    #[error("{action}: no answer within {timeout:?}")]
    Timeout { action: &'static str, timeout: Duration },
    /// The connection could not be established: the request was not sent.
    #[error("{action}: cannot connect to the Market API: {message}")]
    Connect { action: &'static str, message: String },
    /// The connection broke while sending or receiving.
    #[error("{action}: transport error: {message}")]
    Transport { action: &'static str, message: String },
    /// The marketplace answered with an error status (4xx/5xx) and, usually, an Aliyun error body.
    #[error(
        "{action}: HTTP {status} {}: {message} (RequestId {})",
        code.as_deref().unwrap_or("(no code)"),
        request_id.as_deref().unwrap_or("-")
    )]
    Api {
        action: &'static str,
        status: u16,
        /// Aliyun's `Code`, e.g. `SignatureDoesNotMatch`, `Throttling.User`; `None` when the body was
        /// not an Aliyun error (a proxy's HTML page, say).
        code: Option<String>,
        message: String,
        request_id: Option<String>,
        /// From `x-acs-retry-after` or `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not the expected JSON.
    #[error("{action}: unreadable answer (HTTP {status}): {message}")]
    Decode { action: &'static str, status: u16, message: String },
    /// The marketplace answered 200 with `Success: false`.
    #[error("{action}: the marketplace answered Success=false (RequestId {request_id})")]
    Unsuccessful { action: &'static str, request_id: String },
}

/// Error codes after which the same request may succeed later (throttling, overload, outages).
fn is_retryable_code(code: &str) -> bool {
    code.starts_with("Throttling")
        || code.starts_with("ServiceUnavailable")
        || code.starts_with("InternalError")
        || matches!(code, "UnknownError" | "SystemBusy" | "ServiceTimeout" | "RequestTimeout" | "Busy")
}

impl Error {
    /// Whether sending the same call again later may succeed: timeouts, connection errors, 5xx,
    /// 429 and throttling codes. Signature, parameter and validation errors (4xx) are not: they
    /// will fail the same way until something is fixed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } | Self::Transport { .. } => true,
            Self::Api { status, code, retry_after, .. } => {
                *status >= 500
                    || *status == 429
                    || retry_after.is_some()
                    || code.as_deref().is_some_and(is_retryable_code)
            }
            Self::InvalidEndpoint { .. }
            | Self::Setup(_)
            | Self::InvalidRequest { .. }
            | Self::Decode { .. }
            | Self::Unsuccessful { .. } => false,
        }
    }

    /// Whether the call may have taken effect at the marketplace although it failed: the request
    /// may have arrived (timeout, broken connection, unreadable answer, a bare 5xx from a proxy).
    /// For PushMeteringData this means "do not blindly push again": the window may be billed.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } | Self::Decode { .. } => true,
            Self::Api { status, code, .. } => *status >= 500 && code.is_none(),
            _ => false,
        }
    }

    /// Aliyun's error `Code`, when the marketplace sent one (or our local check's code).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => code.as_deref(),
            Self::InvalidRequest { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The marketplace's `RequestId` for this call, when it answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. } => request_id.as_deref(),
            Self::Unsuccessful { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    /// The HTTP status, when the marketplace answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the marketplace asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable, machine-readable name of the failure class (for journals and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidEndpoint { .. } => "invalid_endpoint",
            Self::Setup(_) => "setup",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Transport { .. } => "transport",
            Self::Api { .. } => "api",
            Self::Decode { .. } => "decode",
            Self::Unsuccessful { .. } => "unsuccessful",
        }
    }
}

/// The error body, read leniently: the SDK accepts `Code`/`code`, `Message`/`message`,
/// `RequestId`/`requestId`, and so do we.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "code")]
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(alias = "message")]
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(alias = "requestId")]
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

/// A Market OpenAPI client for one AccessKey and endpoint. Cheap to clone (the HTTP connection
/// pool is shared).
#[derive(Debug, Clone)]
pub struct MarketClient {
    http: reqwest::Client,
    /// `scheme://host[:port]/`: RPC-style calls all go to `/`.
    base: String,
    /// The `host` header exactly as sent and signed (`host` or `host:port` for a non-default port).
    host: String,
    access_key_id: String,
    /// Only read to sign; `Secret` prints as `***`.
    access_key_secret: Secret,
    timeout: Duration,
    /// Limits checked before PushMeteringData is sent.
    metering_rules: MeteringRules,
}

impl MarketClient {
    /// A client for `endpoint` (`https://market.aliyuncs.com`, `market.aliyuncs.com` meaning
    /// https, or `http://127.0.0.1:9090` for the simulator). `timeout` bounds each call as a whole.
    pub fn new(
        endpoint: &str,
        access_key_id: &str,
        access_key_secret: Secret,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (base, host) = parse_endpoint(endpoint)?;
        if access_key_id.trim().is_empty() || access_key_id.chars().any(|c| c.is_control() || c == ',') {
            return Err(Error::Setup("the AccessKey ID is empty or contains invalid characters".into()));
        }
        if access_key_secret.expose().is_empty() {
            return Err(Error::Setup("the AccessKey secret is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("marketflow/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Self {
            http,
            base,
            host,
            access_key_id: access_key_id.to_string(),
            access_key_secret,
            timeout,
            metering_rules: MeteringRules::default(),
        })
    }

    /// Replaces the limits PushMeteringData batches are checked against before sending (real-time
    /// billing products have other limits than hourly ones).
    pub fn with_metering_rules(mut self, rules: MeteringRules) -> Self {
        self.metering_rules = rules;
        self
    }

    /// The base URL calls go to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `DescribeInstance`: the instance's status (OPENING, OPENED, EXPIRED, CLOSED) and details.
    pub async fn describe_instance(&self, instance_id: &str) -> Result<DescribeInstanceResponse, Error> {
        self.call(&DescribeInstanceRequest { instance_id: instance_id.to_string() }).await
    }

    /// `PushMeteringData`: checks the batch against the documented limits first (window > 5 min,
    /// ≤ 100 records, `meteringAssit` present), then pushes it. A `Success: false` answer is an
    /// [`Error::Unsuccessful`], so that a window is never taken as pushed when it was not.
    pub async fn push_metering_data(&self, records: &[MeteringRecord]) -> Result<SuccessResponse, Error> {
        let request = PushMeteringDataRequest { metering: records.to_vec() };
        request.validate(self.metering_rules).map_err(|e| Error::InvalidRequest {
            action: PushMeteringDataRequest::ACTION,
            code: "InvalidMetering".into(),
            reason: e.to_string(),
        })?;
        let answer = self.call(&request).await?;
        if !answer.success {
            return Err(Error::Unsuccessful { action: PushMeteringDataRequest::ACTION, request_id: answer.request_id });
        }
        Ok(answer)
    }

    /// `DescribeFailedNotifications`: orderPay notices the marketplace gave up delivering.
    /// `page_number` starts at 1.
    pub async fn describe_failed_notifications(
        &self,
        page_number: u32,
        page_size: u32,
    ) -> Result<DescribeFailedNotificationsResponse, Error> {
        self.call(&DescribeFailedNotificationsRequest { page_number, page_size }).await
    }

    /// `ConfirmNotification`: acknowledges a failed notification so it is no longer returned.
    pub async fn confirm_notification(&self, notification_request_id: &str) -> Result<SuccessResponse, Error> {
        let answer = self
            .call(&ConfirmNotificationRequest { notification_request_id: notification_request_id.to_string() })
            .await?;
        if !answer.success {
            return Err(Error::Unsuccessful {
                action: ConfirmNotificationRequest::ACTION,
                request_id: answer.request_id,
            });
        }
        Ok(answer)
    }

    /// Sends any Market action as is, without the client-side checks of the typed methods (tests
    /// use it to see what the marketplace itself refuses).
    pub async fn call<R: MarketRequest>(&self, request: &R) -> Result<R::Response, Error> {
        let action = R::ACTION;
        let query =
            request.to_query().map_err(|e| Error::InvalidRequest { action, code: e.code(), reason: e.to_string() })?;
        let nonce = new_nonce();
        let headers = sign_rpc_call(
            &RpcCall {
                method: "POST",
                host: &self.host,
                action,
                version: VERSION,
                query: &query,
                body: b"",
                content_type: None,
                date: Utc::now(),
                nonce: &nonce,
                security_token: None,
            },
            &self.access_key_id,
            self.access_key_secret.expose(),
        );
        let query_string = encode_query(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let url = if query_string.is_empty() { self.base.clone() } else { format!("{}?{query_string}", self.base) };
        let mut builder = self.http.post(url).header("accept", "application/json").body(Vec::<u8>::new());
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await.map_err(|e| self.transport_error(action, e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = read_limited(response).await.map_err(|e| self.transport_error(action, e))?;
        tracing::debug!(action, status, endpoint = %self.base, "Market API answered");
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| Error::Decode { action, status, message: e.to_string() });
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let (code, message, request_id) = match parsed {
            Some(b) if b.code.is_some() => (b.code, b.message.unwrap_or_default(), b.request_id),
            _ => (None, snippet(&body), None),
        };
        Err(Error::Api { action, status, code, message, request_id, retry_after })
    }

    fn transport_error(&self, action: &'static str, e: reqwest::Error) -> Error {
        // The URL carries only business parameters (the signature is a header), but leave it out
        // anyway: error messages end up in journals.
        let e = e.without_url();
        if e.is_timeout() {
            Error::Timeout { action, timeout: self.timeout }
        } else if e.is_connect() {
            Error::Connect { action, message: error_chain(&e) }
        } else {
            Error::Transport { action, message: error_chain(&e) }
        }
    }
}

/// `reqwest`'s top-level message is generic ("error sending request"); the cause says what broke.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

/// The start of a non-JSON body, for the error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    match trimmed.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None if trimmed.is_empty() => "(empty body)".to_string(),
        None => trimmed.to_string(),
    }
}

/// `x-acs-retry-after` (the SDK's throttling hint, milliseconds per tea-openapi) or
/// `Retry-After` (seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok().filter(|n| *n > 0) };
    number("x-acs-retry-after").map(Duration::from_millis).or_else(|| number("retry-after").map(Duration::from_secs))
}

/// Splits an endpoint into the base URL (`scheme://host[:port]/`) and the `host` header value.
fn parse_endpoint(endpoint: &str) -> Result<(String, String), Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint { endpoint: endpoint.to_string(), reason: reason.to_string() };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid("it has no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials do not belong in the endpoint"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the Market API is served at `/`: give the endpoint without a path or query"));
    }
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((format!("{}://{host_header}/", url.scheme()), host_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            parse_endpoint("market.aliyuncs.com").unwrap(),
            ("https://market.aliyuncs.com/".to_string(), "market.aliyuncs.com".to_string())
        );
        assert_eq!(
            parse_endpoint("https://market.aliyuncs.com:443/").unwrap(),
            ("https://market.aliyuncs.com/".to_string(), "market.aliyuncs.com".to_string())
        );
        assert_eq!(
            parse_endpoint(" http://127.0.0.1:9090 ").unwrap(),
            ("http://127.0.0.1:9090/".to_string(), "127.0.0.1:9090".to_string())
        );
        for bad in ["", "ftp://x", "http://x/market", "http://x/?a=1", "http://u:p@x", "http://"] {
            assert!(matches!(parse_endpoint(bad), Err(Error::InvalidEndpoint { .. })), "{bad:?}");
        }
    }

    #[test]
    fn construction_checks_the_access_key_and_hides_the_secret() {
        let c = MarketClient::new("http://127.0.0.1:1", "ak", Secret::new("s3cr3t"), Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.endpoint(), "http://127.0.0.1:1/");
        assert!(MarketClient::new("http://x", " ", Secret::new("s"), Duration::from_secs(1)).is_err());
        assert!(MarketClient::new("http://x", "ak", Secret::new(""), Duration::from_secs(1)).is_err());
    }

    fn api(status: u16, code: Option<&str>) -> Error {
        Error::Api {
            action: "PushMeteringData",
            status,
            code: code.map(String::from),
            message: "m".into(),
            request_id: Some("R".into()),
            retry_after: None,
        }
    }

    #[test]
    fn retryable_classification() {
        assert!(api(503, Some("ServiceUnavailable")).is_retryable());
        assert!(api(500, None).is_retryable());
        assert!(api(400, Some("Throttling.User")).is_retryable());
        assert!(api(429, None).is_retryable());
        assert!(!api(400, Some("SignatureDoesNotMatch")).is_retryable());
        assert!(!api(400, Some("InvalidParameter")).is_retryable());
        assert!(!api(404, Some("InvalidAccessKeyId.NotFound")).is_retryable());
        assert!(!api(400, Some("SignatureNonceUsed")).is_retryable());
        assert!(Error::Timeout { action: "a", timeout: Duration::from_secs(1) }.is_retryable());
        assert!(Error::Connect { action: "a", message: "refused".into() }.is_retryable());
        assert!(!Error::Unsuccessful { action: "a", request_id: "R".into() }.is_retryable());

        assert!(Error::Timeout { action: "a", timeout: Duration::from_secs(1) }.outcome_unknown());
        assert!(!Error::Connect { action: "a", message: "refused".into() }.outcome_unknown());
        assert!(api(502, None).outcome_unknown());
        assert!(!api(503, Some("ServiceUnavailable")).outcome_unknown());

        let e = api(400, Some("SignatureDoesNotMatch"));
        assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
        assert_eq!(e.request_id(), Some("R"));
        assert_eq!(e.http_status(), Some(400));
        assert_eq!(e.kind(), "api");
        assert_eq!(e.to_string(), "PushMeteringData: HTTP 400 SignatureDoesNotMatch: m (RequestId R)");
    }

    #[test]
    fn retry_after_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("x-acs-retry-after", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)), "the SDK's header wins, in ms");
        h.insert("x-acs-retry-after", "0".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)), "non-positive values are ignored");
    }

    #[test]
    fn error_bodies_are_read_in_either_case() {
        let upper: ErrorBody = serde_json::from_str(r#"{"Code":"C","Message":"M","RequestId":"R"}"#).unwrap();
        assert_eq!(
            (upper.code.as_deref(), upper.message.as_deref(), upper.request_id.as_deref()),
            (Some("C"), Some("M"), Some("R"))
        );
        let lower: ErrorBody = serde_json::from_str(r#"{"code":"C","message":"M","requestId":"R"}"#).unwrap();
        assert_eq!(lower.code.as_deref(), Some("C"));
        assert_eq!(snippet(b"  "), "(empty body)");
        assert_eq!(snippet("x".repeat(300).as_bytes()).chars().count(), 201);
    }
}
