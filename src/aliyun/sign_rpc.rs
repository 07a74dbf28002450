//! The legacy RPC signature (`SignatureMethod=HMAC-SHA1`, `SignatureVersion=1.0`).
//!
//! Spec: "RPC风格请求体&签名机制" / "Sign RPC APIs" (help.aliyun.com; worked example with
//! AccessKeySecret `testsecret`, signature `OLeaidS1JvxuMvnyHOwuJ+uX5qY=`):
//!
//! ```text
//! CanonicalizedQuery = sorted params (without Signature), percentEncode(k)=percentEncode(v) joined by &
//! StringToSign       = METHOD & percentEncode("/") & percentEncode(CanonicalizedQuery)
//! Signature          = Base64(HMAC-SHA1(secret + "&", StringToSign))
//! ```
//!
//! All parameters, common ones included, travel in the URL query (the Python SDK's
//! `do_rpcrequest`, used when `Config.signature_algorithm == "v2"`); a form body, if any, is
//! signed too. Our own client signs with V3; this exists so the simulator accepts older clients.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::aliyun::auth::{
    check_timestamp, format_iso8601, signatures_equal, AuthError, AuthErrorCode, ReceivedRequest, Verified,
};
use crate::aliyun::encoding::{first_duplicate, parse_form, percent_encode};

pub const SIGNATURE_METHOD: &str = "HMAC-SHA1";
pub const SIGNATURE_VERSION: &str = "1.0";
pub const SIGNATURE_PARAM: &str = "Signature";

fn string_to_sign_from<'a, I>(method: &str, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let canonical = params
        .into_iter()
        .filter(|(k, _)| *k != SIGNATURE_PARAM)
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}&%2F&{}", percent_encode(&canonical))
}

/// The StringToSign for `params` (the `Signature` parameter, if present, is skipped).
pub fn string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    string_to_sign_from(method, params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn sign_string(string_to_sign: &str, secret: &str) -> String {
    // The `&` suffix is part of the key: the doc formula omits it, its example and every SDK
    // (`secret + '&'`) include it.
    match Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()) {
        Ok(mut mac) => {
            mac.update(string_to_sign.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; unreachable, but no panic path.
        Err(_) => String::new(),
    }
}

/// The base64 signature of `params`.
pub fn signature(method: &str, params: &BTreeMap<String, String>, secret: &str) -> String {
    sign_string(&string_to_sign(method, params), secret)
}

/// Common parameters of an RPC request.
#[derive(Debug, Clone, Copy)]
pub struct CommonParams<'a> {
    pub action: &'a str,
    pub version: &'a str,
    pub access_key_id: &'a str,
    pub timestamp: DateTime<Utc>,
    pub nonce: &'a str,
    pub security_token: Option<&'a str>,
}

/// Adds the common parameters and `Signature` to `params`, which then form the whole query.
pub fn sign_params(method: &str, params: &mut BTreeMap<String, String>, common: &CommonParams<'_>, secret: &str) {
    let mut set = |k: &str, v: &str| {
        params.insert(k.to_string(), v.to_string());
    };
    set("Action", common.action);
    set("Version", common.version);
    set("Format", "json");
    set("AccessKeyId", common.access_key_id);
    set("SignatureMethod", SIGNATURE_METHOD);
    set("SignatureVersion", SIGNATURE_VERSION);
    set("SignatureNonce", common.nonce);
    set("Timestamp", &format_iso8601(common.timestamp));
    if let Some(token) = common.security_token {
        set("SecurityToken", token);
    }
    params.remove(SIGNATURE_PARAM);
    let sig = signature(method, params, secret);
    params.insert(SIGNATURE_PARAM.to_string(), sig);
}

/// Verifies an RPC-signed request (query parameters plus a form body, if any).
///
/// `Verified::action`/`version` are empty when the request lacks them: that is a dispatch
/// error for the caller, not an authentication one. Both empty-value conventions are accepted:
/// Python signs `k=`, the Java util skips empty values altogether.
pub fn verify<F>(request: &ReceivedRequest<'_>, secret_for: F, now: DateTime<Utc>) -> Result<Verified, AuthError>
where
    F: Fn(&str) -> Option<String>,
{
    let mut params =
        parse_form(request.raw_query).map_err(|e| AuthError::incomplete(format!("Query string is malformed: {e}.")))?;
    let is_form = request
        .header("content-type")
        .is_some_and(|ct| ct.trim_start().starts_with("application/x-www-form-urlencoded"));
    if is_form && !request.body.is_empty() {
        let body = std::str::from_utf8(request.body).map_err(|_| AuthError::incomplete("Form body is not UTF-8."))?;
        params.extend(parse_form(body).map_err(|e| AuthError::incomplete(format!("Form body is malformed: {e}.")))?);
    }
    if let Some(dup) = first_duplicate(&params) {
        return Err(AuthError::incomplete(format!("Parameter {dup} occurs more than once.")));
    }
    let map: BTreeMap<&str, &str> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let get = |k: &str| map.get(k).copied().filter(|v| !v.is_empty());
    let missing = |k: &str| AuthError::incomplete(format!("Parameter {k} is missing."));

    // Base64 never contains spaces: a space is a `+` that the client forgot to encode.
    let provided = get(SIGNATURE_PARAM).ok_or_else(|| missing(SIGNATURE_PARAM))?.replace(' ', "+");
    match get("SignatureMethod") {
        Some(SIGNATURE_METHOD) => {}
        Some(_) => {
            return Err(AuthError::new(
                AuthErrorCode::InvalidSignatureMethod,
                "Specified signature method is not valid.",
            ))
        }
        None => return Err(missing("SignatureMethod")),
    }
    if get("SignatureVersion") != Some(SIGNATURE_VERSION) {
        return Err(AuthError::incomplete("SignatureVersion must be 1.0."));
    }
    let access_key_id = get("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?;
    let nonce = get("SignatureNonce").ok_or_else(|| missing("SignatureNonce"))?;
    let timestamp = get("Timestamp").ok_or_else(|| {
        AuthError::new(
            AuthErrorCode::IllegalTimestamp,
            "The input parameter \"Timestamp\" that is mandatory for processing this request is not supplied.",
        )
    })?;
    let date = check_timestamp(timestamp, now)?;
    let secret = secret_for(access_key_id).ok_or_else(|| {
        AuthError::new(AuthErrorCode::InvalidAccessKeyIdNotFound, "Specified access key is not found.")
    })?;

    let mut tried = BTreeSet::new();
    for skip_empty in [false, true] {
        let sts = string_to_sign_from(
            request.method,
            map.iter().filter(|(_, v)| !(skip_empty && v.is_empty())).map(|(k, v)| (*k, *v)),
        );
        if !tried.insert(sts.clone()) {
            continue;
        }
        if signatures_equal(&sign_string(&sts, &secret), &provided) {
            return Ok(Verified {
                access_key_id: access_key_id.to_string(),
                nonce: nonce.to_string(),
                date,
                action: get("Action").unwrap_or_default().to_string(),
                version: get("Version").unwrap_or_default().to_string(),
            });
        }
    }
    Err(AuthError::mismatch())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn doc_params() -> BTreeMap<String, String> {
        map(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ])
    }

    #[test]
    fn documented_example() {
        // Aliyun's RPC signature doc (ECS DescribeRegions, AccessKeySecret `testsecret`).
        let params = doc_params();
        assert_eq!(
            string_to_sign("GET", &params),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML\
             %26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-\
             4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46\
             %253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(signature("GET", &params, "testsecret"), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn sdk_vector_with_empty_json_and_unicode_values() {
        // alibabacloud_tea_openapi.utils.Utils.get_rpcsignature(params, "POST", "testsecret")
        let params = map(&[
            ("AccessKeyId", "testid"),
            ("Action", "PushMeteringData"),
            ("Metering", r#"[{"a":"b c*~"}]"#),
            ("Empty", ""),
            ("Format", "json"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "n1"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2024-08-16T01:00:00Z"),
            ("Version", "2015-11-01"),
            ("Z", "中文"),
        ]);
        assert_eq!(signature("POST", &params, "testsecret"), "U7Fy7ZHthPnJSUc33XkbxnwE9x0=");
    }

    fn captured_headers() -> Vec<(String, String)> {
        [
            ("accept-encoding", "identity"),
            ("host", "127.0.0.1:42239"),
            ("x-acs-version", "2015-11-01"),
            ("x-acs-action", "DescribeInstance"),
            ("content-length", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Market20151101Client.describe_instance with Config(signature_algorithm="v2"), as a local
    /// HTTP server received it (credentials testid/testsecret).
    const CAPTURED_QUERY: &str = "Action=DescribeInstance&Format=json&Version=2015-11-01\
        &Timestamp=2026-11-27T15%3A47%3A14Z&SignatureNonce=201a25207c18dc24f61e5048bf2620a6\
        &InstanceId=123&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=testid\
        &Signature=GX0YiULcsQ14YasLL2RSRTTOSy8%3D";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 15, 47, 14).unwrap()
    }

    fn secrets(ak: &str) -> Option<String> {
        (ak == "testid").then(|| "testsecret".to_string())
    }

    fn req<'a>(query: &'a str, headers: &'a [(String, String)]) -> ReceivedRequest<'a> {
        ReceivedRequest { method: "POST", path: "/", raw_query: query, headers, body: b"" }
    }

    #[test]
    fn verifies_captured_sdk_request() {
        let headers = captured_headers();
        let v = verify(&req(CAPTURED_QUERY, &headers), secrets, now()).unwrap();
        assert_eq!(v.access_key_id, "testid");
        assert_eq!(v.action, "DescribeInstance");
        assert_eq!(v.version, "2015-11-01");
        assert_eq!(v.nonce, "201a25207c18dc24f61e5048bf2620a6");
        // Also reachable through the dispatcher, which must pick RPC here.
        assert!(crate::aliyun::verify_request(&req(CAPTURED_QUERY, &headers), secrets, now()).is_ok());
    }

    #[test]
    fn verifies_captured_push_metering_data() {
        let headers = captured_headers();
        let query = "Action=PushMeteringData&Format=json&Version=2015-11-01\
            &Timestamp=2026-11-27T15%3A47%3A14Z&SignatureNonce=88a11833f2ea50582f083fff85b0dd15\
            &Metering=%5B%7B%22InstanceId%22%3A%221000001%22%2C%22StartTime%22%3A%221723771200%22\
            %2C%22EndTime%22%3A%221723774800%22%2C%22Entities%22%3A%5B%7B%22Key%22%3A%22Frequency\
            %22%2C%22Value%22%3A%2296%22%2C%22meteringAssit%22%3A%22cmgj00063418-Frequency-1%22\
            %7D%5D%7D%5D&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=testid\
            &Signature=AY9hAQHEB4TFPPflAEaRt337H6A%3D";
        assert!(verify(&req(query, &headers), secrets, now()).is_ok());
    }

    fn code(result: Result<Verified, AuthError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn rejections() {
        let h = captured_headers();
        let q = CAPTURED_QUERY;
        let tampered = q.replace("InstanceId=123", "InstanceId=124");
        assert_eq!(code(verify(&req(&tampered, &h), secrets, now())), "SignatureDoesNotMatch");
        assert_eq!(code(verify(&req(q, &h), |_| None, now())), "InvalidAccessKeyId.NotFound");
        let later = now() + chrono::TimeDelta::minutes(16);
        assert_eq!(code(verify(&req(q, &h), secrets, later)), "InvalidTimeStamp.Expired");
        let sha256 = q.replace("HMAC-SHA1", "HMAC-SHA256");
        assert_eq!(code(verify(&req(&sha256, &h), secrets, now())), "InvalidSignatureMethod");
        let no_sig = q.replace("&Signature=GX0YiULcsQ14YasLL2RSRTTOSy8%3D", "");
        assert_eq!(code(verify(&req(&no_sig, &h), secrets, now())), "IncompleteSignature");
        let no_ts = q.replace("&Timestamp=2026-11-27T15%3A47%3A14Z", "");
        assert_eq!(code(verify(&req(&no_ts, &h), secrets, now())), "IllegalTimestamp");
        let dup = format!("{q}&InstanceId=123");
        assert_eq!(code(verify(&req(&dup, &h), secrets, now())), "IncompleteSignature");
        let wrong_method = ReceivedRequest { method: "GET", ..req(q, &h) };
        assert_eq!(code(verify(&wrong_method, secrets, now())), "SignatureDoesNotMatch");
    }

    #[test]
    fn round_trip_with_form_body_and_java_style_empty_values() {
        let mut params = map(&[("Note", "a b"), ("Empty", "")]);
        sign_params(
            "POST",
            &mut params,
            &CommonParams {
                action: "ConfirmNotification",
                version: "2015-11-01",
                access_key_id: "testid",
                timestamp: now(),
                nonce: "n-2",
                security_token: None,
            },
            "testsecret",
        );
        // Move a business parameter into a form body: still signed, still verified.
        let body = format!("Note={}", crate::aliyun::encoding::percent_encode("a b"));
        let query: Vec<(&str, &str)> =
            params.iter().filter(|(k, _)| *k != "Note").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let raw = crate::aliyun::encoding::encode_query(query);
        let mut headers = captured_headers();
        headers.push(("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()));
        let r = ReceivedRequest { body: body.as_bytes(), ..req(&raw, &headers) };
        let v = verify(&r, secrets, now()).unwrap();
        assert_eq!(v.action, "ConfirmNotification");

        // Java's util leaves empty values out of the string to sign.
        let mut java = params.clone();
        java.remove("Empty");
        java.remove(SIGNATURE_PARAM);
        let sig = signature("POST", &java, "testsecret");
        java.insert("Empty".into(), String::new());
        java.insert(SIGNATURE_PARAM.into(), sig);
        let raw = crate::aliyun::encoding::encode_query(java.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert!(verify(&req(&raw, &captured_headers()), secrets, now()).is_ok());
    }
}
