//! Market API failures as the engine's call errors, counted by class for `/metrics`: one reading of the
//! marketplace's answers for every call, batched pushes included.

use crate::aliyun::client::Error as ClientError;
use crate::engine::CallError;

/// Why Market API calls failed, by class, for `/metrics` (`marketflow_market_api_errors_total{class}`): a revoked
/// or wrong AccessKey fails every call with `auth`, which an alert must see before the windows' deadlines pass.
/// Per process, from its start (a counter).
pub const ERROR_CLASSES: &[&str] = &["auth", "throttled", "unavailable", "unknown_outcome", "refused"];

static ERRORS: [std::sync::atomic::AtomicU64; 5] = [const { std::sync::atomic::AtomicU64::new(0) }; 5];

/// The class of a failed call (one of [`ERROR_CLASSES`]).
fn class(e: &ClientError) -> &'static str {
    let code = e.code().unwrap_or("");
    if code.starts_with("InvalidAccessKeyId")
        || code.starts_with("SignatureDoesNotMatch")
        || code.starts_with("IncompleteSignature")
        || code.starts_with("InvalidTimeStamp")
        || code.starts_with("Forbidden")
    {
        "auth"
    } else if code.starts_with("Throttling") {
        "throttled"
    } else if e.outcome_unknown() {
        "unknown_outcome"
    } else if e.is_retryable() {
        "unavailable"
    } else {
        "refused"
    }
}

/// Failed Market API calls by class since the process started, in [`ERROR_CLASSES`]' order.
pub fn errors_by_class() -> Vec<(&'static str, u64)> {
    ERROR_CLASSES.iter().zip(&ERRORS).map(|(c, n)| (*c, n.load(std::sync::atomic::Ordering::Relaxed))).collect()
}

pub(crate) fn call_error(e: ClientError) -> CallError {
    let class = class(&e);
    if let Some(i) = ERROR_CLASSES.iter().position(|c| *c == class) {
        ERRORS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let message = match (e.code(), e.request_id()) {
        (Some(code), Some(rid)) => format!("{code}: {e} (RequestId {rid})"),
        (Some(code), None) => format!("{code}: {e}"),
        _ => e.to_string(),
    };
    if e.outcome_unknown() {
        CallError::unknown(message)
    } else if e.is_retryable() {
        CallError::retryable(message)
    } else {
        CallError::permanent(message)
    }
}
