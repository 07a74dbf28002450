//! Types shared by the V3 and RPC signature verifiers.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use subtle::ConstantTimeEq;

/// How far a request's timestamp may be from the server clock.
///
/// Aliyun rejects requests whose `x-acs-date`/`Timestamp` is more than 15 minutes off
/// (`InvalidTimeStamp.Expired`, "用户时间和服务器时间超过15分钟", developer.aliyun.com/ask/278265),
/// which bounds how long a captured request can be replayed.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(15);

/// Timestamp format of `x-acs-date` (V3) and `Timestamp` (RPC): ISO 8601, UTC, seconds.
pub const ISO8601_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// An HTTP request as the simulator received it, before any interpretation.
///
/// Raw parts are required because a signature covers exact bytes: re-serialising a parsed
/// request would hide encoding differences the real gateway would reject.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedRequest<'a> {
    pub method: &'a str,
    /// The path without the query, e.g. `/`.
    pub path: &'a str,
    /// The query string after `?`, undecoded; empty if none.
    pub raw_query: &'a str,
    /// Header names must already be lowercase; a name may repeat.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl<'a> ReceivedRequest<'a> {
    /// The first value of a header (names are lowercase).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// All values of a header, in arrival order.
    pub fn header_values(&self, name: &str) -> Vec<&'a str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    /// Returned, not checked: replay detection needs state, which this pure module has not.
    /// Callers reject a reused nonce with [`AuthErrorCode::SignatureNonceUsed`].
    pub nonce: String,
    pub date: DateTime<Utc>,
    /// `Action` (RPC) or `x-acs-action` (V3).
    pub action: String,
    /// `Version` (RPC) or `x-acs-version` (V3).
    pub version: String,
}

/// Aliyun's public error codes for authentication failures.
///
/// The strings are the gateway's own (help.aliyun.com/document_detail/51132.html,
/// developer.aliyun.com/ask/278265) so that SDK users see familiar errors from the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthErrorCode {
    IncompleteSignature,
    SignatureDoesNotMatch,
    InvalidAccessKeyIdNotFound,
    InvalidSignatureMethod,
    InvalidTimeStampFormat,
    InvalidTimeStampExpired,
    /// RPC requests without `Timestamp` (help.aliyun.com/document_detail/51132.html).
    IllegalTimestamp,
    SignatureNonceUsed,
}

impl AuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IncompleteSignature => "IncompleteSignature",
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::InvalidAccessKeyIdNotFound => "InvalidAccessKeyId.NotFound",
            Self::InvalidSignatureMethod => "InvalidSignatureMethod",
            Self::InvalidTimeStampFormat => "InvalidTimeStamp.Format",
            Self::InvalidTimeStampExpired => "InvalidTimeStamp.Expired",
            Self::IllegalTimestamp => "IllegalTimestamp",
            Self::SignatureNonceUsed => "SignatureNonceUsed",
        }
    }

    /// The HTTP status the real gateway uses for this code (same sources as above).
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidAccessKeyIdNotFound => 404,
            _ => 400,
        }
    }
}

impl std::fmt::Display for AuthErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentication failure: a gateway error code plus a message for the `Message` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AuthError {
    pub code: AuthErrorCode,
    pub message: String,
}

impl AuthError {
    pub fn new(code: AuthErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub(crate) fn incomplete(message: impl Into<String>) -> Self {
        Self::new(AuthErrorCode::IncompleteSignature, message)
    }

    pub(crate) fn mismatch() -> Self {
        Self::new(AuthErrorCode::SignatureDoesNotMatch, "Specified signature is not matched with our calculation.")
    }

    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }
}

/// Formats a time the way `x-acs-date` and `Timestamp` carry it.
pub fn format_iso8601(t: DateTime<Utc>) -> String {
    t.format(ISO8601_FORMAT).to_string()
}

/// Parses `x-acs-date`/`Timestamp` and checks it against `now` within [`MAX_CLOCK_SKEW`].
pub(crate) fn check_timestamp(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AuthError> {
    let naive = NaiveDateTime::parse_from_str(value, ISO8601_FORMAT).map_err(|_| {
        AuthError::new(
            AuthErrorCode::InvalidTimeStampFormat,
            "Specified time stamp or date value is not well formatted.",
        )
    })?;
    let t = naive.and_utc();
    let skew = if t > now { t - now } else { now - t };
    if skew > MAX_CLOCK_SKEW {
        return Err(AuthError::new(
            AuthErrorCode::InvalidTimeStampExpired,
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(t)
}

/// Compares two signatures without leaking where they differ.
pub(crate) fn signatures_equal(expected: &str, provided: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(provided.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamp_window_is_fifteen_minutes_each_way() {
        let now = Utc.with_ymd_and_hms(2024, 8, 16, 1, 0, 0).unwrap();
        assert!(check_timestamp("2024-08-16T01:15:00Z", now).is_ok());
        assert!(check_timestamp("2024-08-16T00:45:00Z", now).is_ok());
        let late = check_timestamp("2024-08-16T01:15:01Z", now).unwrap_err();
        assert_eq!(late.code(), "InvalidTimeStamp.Expired");
        let bad = check_timestamp("2024-08-16 01:00:00", now).unwrap_err();
        assert_eq!(bad.code(), "InvalidTimeStamp.Format");
        assert_eq!(format_iso8601(now), "2024-08-16T01:00:00Z");
    }

    #[test]
    fn codes_match_gateway_strings() {
        assert_eq!(AuthErrorCode::InvalidAccessKeyIdNotFound.as_str(), "InvalidAccessKeyId.NotFound");
        assert_eq!(AuthErrorCode::InvalidAccessKeyIdNotFound.http_status(), 404);
        assert_eq!(AuthErrorCode::SignatureDoesNotMatch.http_status(), 400);
    }
}
