//! Alibaba Cloud API signature V3 (`ACS3-HMAC-SHA256`), the official SDKs' default.
//!
//! Spec: "V3版本请求体&签名机制" (help.aliyun.com/zh/sdk/product-overview/v3-request-structure-and-signature,
//! document_detail/2593177). Behaviour checked against the installed Python SDK
//! (`alibabacloud-tea-openapi` 0.4.6, `alibabacloud_tea_openapi/utils.py::get_authorization`):
//!
//! ```text
//! CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n HexSHA256(body)
//! StringToSign     = "ACS3-HMAC-SHA256" \n HexSHA256(CanonicalRequest)
//! Signature        = Hex(HMAC-SHA256(secret, StringToSign))
//! Authorization    = ACS3-HMAC-SHA256 Credential=<AK>,SignedHeaders=<a;b;c>,Signature=<hex>
//! ```
//!
//! For RPC-style APIs the canonical URI is `/`, the business parameters travel in the URL query
//! and the body is empty, so the payload hash is SHA-256 of nothing.
//!
//! SDK generations differ in details the server must tolerate, which is why [`verify`] tries a
//! few canonical-query variants:
//! - tea-openapi ≥ 0.4 (Python) signs *every* header it sends (incl. `accept`, `user-agent`,
//!   `x-acs-credentials-provider`); the Java util signs only `host`, `content-type`, `x-acs-*`
//!   and lists SignedHeaders unsorted. The verifier therefore trusts the SignedHeaders list.
//! - Python does not percent-encode query *names*; the doc and Java do.
//! - The older Python `alibabacloud_openapi_util` writes an empty value as `k` instead of `k=`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::aliyun::auth::{
    check_timestamp, format_iso8601, signatures_equal, AuthError, AuthErrorCode, ReceivedRequest, Verified,
};
use crate::aliyun::encoding::{first_duplicate, parse_form, percent_encode};

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// SHA-256 of the empty body, the payload hash of every RPC-style call.
pub const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Headers the server requires to be signed: without them a signature could be replayed
/// against another action, version or host, or outside the time window.
const REQUIRED_SIGNED: &[&str] =
    &["host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"];

/// Lowercase hex SHA-256, as `x-acs-content-sha256` and the payload line carry it.
pub fn hashed_payload(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A fresh `x-acs-signature-nonce` (32 hex chars, like the SDK's MD5-based nonces).
pub fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether the signer covers a header: `host`, `content-type` and `x-acs-*`, as the doc asks
/// ("除Authorization外的所有公共请求头") and the Java SDK does. Leaving `user-agent`/`accept` out
/// keeps a proxy that rewrites them from breaking signatures.
fn is_signed_header(lower_name: &str) -> bool {
    lower_name == "host" || lower_name == "content-type" || lower_name.starts_with("x-acs-")
}

#[derive(Clone, Copy)]
struct QueryStyle {
    /// Percent-encode names (doc, Java) or leave them raw (Python tea-openapi).
    encode_names: bool,
    /// `k` instead of `k=` for an empty value (old Python openapi-util).
    bare_empty: bool,
}

const STANDARD: QueryStyle = QueryStyle { encode_names: true, bare_empty: false };

fn canonical_query_with<'a, I>(pairs: I, style: QueryStyle) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    pairs
        .into_iter()
        .map(|(k, v)| {
            let k = if style.encode_names { percent_encode(k) } else { k.to_string() };
            if v.is_empty() && style.bare_empty {
                k
            } else {
                format!("{k}={}", percent_encode(v))
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical query: sorted by name (byte order), names and values RFC 3986-encoded,
/// `k=v` joined by `&`, `k=` for an empty value.
pub fn canonical_query(query: &BTreeMap<String, String>) -> String {
    canonical_query_with(query.iter().map(|(k, v)| (k.as_str(), v.as_str())), STANDARD)
}

fn build_canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    format!("{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}")
}

fn signature_for(secret: &str, canonical_request: &str) -> Option<String> {
    let string_to_sign = format!("{ALGORITHM}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(string_to_sign.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// The header set's canonical form and SignedHeaders list; only headers passing
/// [`is_signed_header`] are included. Names are lowercased, values trimmed.
fn canonical_headers(headers: &BTreeMap<String, String>) -> (String, String) {
    let mut signed: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if is_signed_header(&lower) {
            signed.entry(lower).or_default().push(value.trim());
        }
    }
    let mut canonical = String::new();
    for (name, values) in &mut signed {
        values.sort_unstable();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    let list = signed.keys().cloned().collect::<Vec<_>>().join(";");
    (canonical, list)
}

/// Inputs of one signature.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    pub method: &'a str,
    /// `/` for RPC-style APIs.
    pub canonical_uri: &'a str,
    pub query: &'a BTreeMap<String, String>,
    /// Headers as they will be sent; `host`, `content-type` and `x-acs-*` get signed.
    pub headers: &'a BTreeMap<String, String>,
    pub body: &'a [u8],
}

/// Computes the `Authorization` header value.
pub fn authorization(input: &SignInput<'_>, access_key_id: &str, secret: &str) -> String {
    let (canonical_headers, signed_headers) = canonical_headers(input.headers);
    let canonical_request = build_canonical_request(
        input.method,
        input.canonical_uri,
        &canonical_query(input.query),
        &canonical_headers,
        &signed_headers,
        &hashed_payload(input.body),
    );
    // HMAC-SHA256 takes keys of any length, so this never falls back in practice.
    let signature = signature_for(secret, &canonical_request).unwrap_or_default();
    format!("{ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}")
}

/// One RPC-style call to sign (Market API: POST, `/`, parameters in the query, empty body).
#[derive(Debug, Clone, Copy)]
pub struct RpcCall<'a> {
    pub method: &'a str,
    /// Host header value, e.g. `market.aliyuncs.com` (with `:port` for a non-default port).
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    pub query: &'a BTreeMap<String, String>,
    pub body: &'a [u8],
    /// Required when `body` is not empty.
    pub content_type: Option<&'a str>,
    pub date: DateTime<Utc>,
    pub nonce: &'a str,
    /// STS token; sent (and signed) as `x-acs-security-token`.
    pub security_token: Option<&'a str>,
}

/// Builds every header of an RPC call, `Authorization` included, ready to send.
///
/// The query itself is not returned: send it as [`crate::aliyun::encoding::encode_query`]
/// of the same map.
pub fn sign_rpc_call(call: &RpcCall<'_>, access_key_id: &str, secret: &str) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    headers.insert("host".to_string(), call.host.to_string());
    headers.insert("x-acs-action".to_string(), call.action.to_string());
    headers.insert("x-acs-version".to_string(), call.version.to_string());
    headers.insert("x-acs-date".to_string(), format_iso8601(call.date));
    headers.insert("x-acs-signature-nonce".to_string(), call.nonce.to_string());
    headers.insert("x-acs-content-sha256".to_string(), hashed_payload(call.body));
    if let Some(ct) = call.content_type {
        headers.insert("content-type".to_string(), ct.to_string());
    }
    if let Some(token) = call.security_token {
        headers.insert("x-acs-security-token".to_string(), token.to_string());
    }
    let auth = authorization(
        &SignInput { method: call.method, canonical_uri: "/", query: call.query, headers: &headers, body: call.body },
        access_key_id,
        secret,
    );
    headers.insert("Authorization".to_string(), auth);
    headers
}

struct ParsedAuthorization<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<ParsedAuthorization<'_>, AuthError> {
    let value = value.trim();
    let (algorithm, rest) =
        value.split_once(' ').ok_or_else(|| AuthError::incomplete("Authorization header is malformed."))?;
    if algorithm != ALGORITHM {
        return Err(AuthError::new(AuthErrorCode::InvalidSignatureMethod, "Specified signature method is not valid."));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let missing = |name: &str| AuthError::incomplete(format!("Authorization lacks {name}."));
    Ok(ParsedAuthorization {
        credential: credential.filter(|v| !v.is_empty()).ok_or_else(|| missing("Credential"))?,
        signed_headers: signed_headers.filter(|v| !v.is_empty()).ok_or_else(|| missing("SignedHeaders"))?,
        signature: signature.filter(|v| !v.is_empty()).ok_or_else(|| missing("Signature"))?,
    })
}

/// Verifies a V3-signed request, as the Market API gateway would.
///
/// Checks, in order: Authorization syntax and algorithm; that the mandatory headers exist and
/// are signed, and so is every `x-acs-*` header present; the date window; the AccessKey; the
/// body hash; the signature. The nonce is returned for the caller's replay check.
pub fn verify<F>(request: &ReceivedRequest<'_>, secret_for: F, now: DateTime<Utc>) -> Result<Verified, AuthError>
where
    F: Fn(&str) -> Option<String>,
{
    let auth_value =
        request.header("authorization").ok_or_else(|| AuthError::incomplete("Authorization header is missing."))?;
    let auth = parse_authorization(auth_value)?;

    let signed: BTreeSet<&str> = auth.signed_headers.split(';').collect();
    for required in REQUIRED_SIGNED {
        if request.header(required).is_none() || !signed.contains(required) {
            return Err(AuthError::incomplete(format!("Header {required} must be present and signed.")));
        }
    }
    if let Some((name, _)) =
        request.headers.iter().find(|(name, _)| name.starts_with("x-acs-") && !signed.contains(name.as_str()))
    {
        return Err(AuthError::incomplete(format!("Header {name} must be signed.")));
    }

    let header = |name: &str| request.header(name).unwrap_or_default();
    let date = check_timestamp(header("x-acs-date").trim(), now)?;
    let secret = secret_for(auth.credential).ok_or_else(|| {
        AuthError::new(AuthErrorCode::InvalidAccessKeyIdNotFound, "Specified access key is not found.")
    })?;

    let payload_hash = hashed_payload(request.body);
    if !header("x-acs-content-sha256").trim().eq_ignore_ascii_case(&payload_hash) {
        return Err(AuthError::new(
            AuthErrorCode::SignatureDoesNotMatch,
            "x-acs-content-sha256 does not match the request body.",
        ));
    }

    let mut canonical_headers = String::new();
    for name in &signed {
        let mut values: Vec<&str> = request.header_values(name).into_iter().map(str::trim).collect();
        if values.is_empty() {
            return Err(AuthError::incomplete(format!("Signed header {name} is missing.")));
        }
        values.sort_unstable();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }

    let query =
        parse_form(request.raw_query).map_err(|e| AuthError::incomplete(format!("Query string is malformed: {e}.")))?;
    if let Some(dup) = first_duplicate(&query) {
        return Err(AuthError::incomplete(format!("Query parameter {dup} occurs more than once.")));
    }
    let mut sorted: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sorted.sort_unstable();

    let canonical_uri = if request.path.is_empty() { "/" } else { request.path };
    let provided = auth.signature.to_ascii_lowercase();
    let mut tried = BTreeSet::new();
    for style in query_styles() {
        let canonical_query = canonical_query_with(sorted.iter().copied(), style);
        if !tried.insert(canonical_query.clone()) {
            continue;
        }
        let canonical_request = build_canonical_request(
            request.method,
            canonical_uri,
            &canonical_query,
            &canonical_headers,
            auth.signed_headers,
            &payload_hash,
        );
        let expected = signature_for(&secret, &canonical_request).unwrap_or_default();
        if signatures_equal(&expected, &provided) {
            return Ok(Verified {
                access_key_id: auth.credential.to_string(),
                nonce: header("x-acs-signature-nonce").trim().to_string(),
                date,
                action: header("x-acs-action").trim().to_string(),
                version: header("x-acs-version").trim().to_string(),
            });
        }
    }
    Err(AuthError::mismatch())
}

/// The standard form first, then the SDK variants described in the module doc.
fn query_styles() -> [QueryStyle; 4] {
    [
        STANDARD,
        QueryStyle { encode_names: false, bare_empty: false },
        QueryStyle { encode_names: true, bare_empty: true },
        QueryStyle { encode_names: false, bare_empty: true },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base_headers(action: &str) -> BTreeMap<String, String> {
        map(&[
            ("host", "market.aliyuncs.com"),
            ("x-acs-action", action),
            ("x-acs-version", "2015-11-01"),
            ("x-acs-date", "2024-08-16T01:00:00Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-content-sha256", EMPTY_PAYLOAD_SHA256),
        ])
    }

    // Expected Authorization values below come from the installed official Python SDK:
    // alibabacloud_tea_openapi.utils.Utils.get_authorization(DaraRequest(...),
    // 'ACS3-HMAC-SHA256', sha256(body).hexdigest(), ak, secret)  (tea-openapi 0.4.6).

    #[test]
    fn sdk_vector_describe_instance() {
        let query = map(&[("InstanceId", "123")]);
        let headers = base_headers("DescribeInstance");
        let input = SignInput { method: "POST", canonical_uri: "/", query: &query, headers: &headers, body: b"" };
        assert_eq!(
            authorization(&input, "YourAccessKeyId", "YourAccessKeySecret"),
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;\
             x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=98662b084c0a82fc1b0ce2cc0905b21b0f820a956281c277959bad50c8d742d1"
        );
    }

    #[test]
    fn sdk_vector_tricky_query_values() {
        let query = map(&[
            ("Metering", r#"[{"InstanceId":"1","Entities":[]}]"#),
            ("B", "a b*c~d+e/f"),
            ("A", ""),
            ("Z", "中文"),
        ]);
        assert_eq!(
            canonical_query(&query),
            "A=&B=a%20b%2Ac~d%2Be%2Ff&Metering=%5B%7B%22InstanceId%22%3A%221%22%2C%22\
             Entities%22%3A%5B%5D%7D%5D&Z=%E4%B8%AD%E6%96%87"
        );
        let headers = base_headers("PushMeteringData");
        let input = SignInput { method: "POST", canonical_uri: "/", query: &query, headers: &headers, body: b"" };
        assert!(authorization(&input, "ak", "sk")
            .ends_with("Signature=3ca8e7ce1e98999c024be92b57f75d654fb952fd946ff0a15f58d908c1c0de1a"));
    }

    #[test]
    fn sdk_vector_form_body_and_header_normalisation() {
        let body = b"InstanceId=123&Note=hello+world";
        let mut headers = base_headers("DescribeInstance");
        headers.insert("x-acs-content-sha256".into(), hashed_payload(body));
        headers.insert("content-type".into(), "application/x-www-form-urlencoded".into());
        headers.insert("X-Acs-Extra".into(), "  padded  ".into());
        // Not signed by this signer (the Python SDK would sign it; the server accepts both).
        headers.insert("user-agent".into(), "marketflow".into());
        let query = BTreeMap::new();
        let input = SignInput { method: "POST", canonical_uri: "/", query: &query, headers: &headers, body };
        assert_eq!(
            authorization(&input, "ak", "sk"),
            "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=content-type;host;x-acs-action;\
             x-acs-content-sha256;x-acs-date;x-acs-extra;x-acs-signature-nonce;x-acs-version,\
             Signature=7c8a0f4bd81ed5daa56147beeae2f43ef6d5021e2e1634c3fd54763d0cef16a9"
        );
    }

    fn lower(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect()
    }

    /// What Market20151101Client.describe_instance (tea-openapi 0.4.6, default config) put on
    /// the wire, captured by a local HTTP server; credentials testid/testsecret.
    fn captured_describe_instance() -> Vec<(String, String)> {
        lower(&[
            ("Accept-Encoding", "identity"),
            ("host", "127.0.0.1:42239"),
            ("x-acs-version", "2015-11-01"),
            ("x-acs-action", "DescribeInstance"),
            ("user-agent", "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2"),
            ("x-acs-date", "2026-11-27T15:47:14Z"),
            ("x-acs-signature-nonce", "f7028929583402d771658f957b282205"),
            ("accept", "application/json"),
            ("x-acs-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-acs-credentials-provider", "static_ak"),
            (
                "Authorization",
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=accept;host;user-agent;\
                 x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;\
                 x-acs-signature-nonce;x-acs-version,\
                 Signature=00fe13e38f7deb212ca23c43319612912cf7aaa989949be0ff715b97348fb487",
            ),
            ("Content-Length", "0"),
        ])
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 15, 50, 0).unwrap()
    }

    fn secrets(ak: &str) -> Option<String> {
        (ak == "testid" || ak == "ak").then(|| "testsecret".to_string())
    }

    fn received<'a>(query: &'a str, headers: &'a [(String, String)]) -> ReceivedRequest<'a> {
        ReceivedRequest { method: "POST", path: "/", raw_query: query, headers, body: b"" }
    }

    #[test]
    fn verifies_captured_sdk_describe_instance() {
        let headers = captured_describe_instance();
        let v = verify(&received("InstanceId=123", &headers), secrets, now()).unwrap();
        assert_eq!(v.access_key_id, "testid");
        assert_eq!(v.action, "DescribeInstance");
        assert_eq!(v.version, "2015-11-01");
        assert_eq!(v.nonce, "f7028929583402d771658f957b282205");
        assert_eq!(v.date, Utc.with_ymd_and_hms(2026, 11, 27, 15, 47, 14).unwrap());
    }

    #[test]
    fn verifies_captured_sdk_push_metering_data() {
        let headers = lower(&[
            ("host", "127.0.0.1:42239"),
            ("x-acs-version", "2015-11-01"),
            ("x-acs-action", "PushMeteringData"),
            ("user-agent", "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2"),
            ("x-acs-date", "2026-11-27T15:47:14Z"),
            ("x-acs-signature-nonce", "cdc3005a87ce2de15eb9b200086c571b"),
            ("accept", "application/json"),
            ("x-acs-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-acs-credentials-provider", "static_ak"),
            (
                "Authorization",
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=accept;host;user-agent;\
                 x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;\
                 x-acs-signature-nonce;x-acs-version,\
                 Signature=2c52c874d223fe2b6ed16fcbb73402df278629d6912dc459552da5773a11f11b",
            ),
        ]);
        let query = "Metering=%5B%7B%22InstanceId%22%3A%221000001%22%2C%22StartTime%22%3A\
                     %221723771200%22%2C%22EndTime%22%3A%221723774800%22%2C%22Entities%22%3A\
                     %5B%7B%22Key%22%3A%22Frequency%22%2C%22Value%22%3A%2296%22%2C%22\
                     meteringAssit%22%3A%22cmgj00063418-Frequency-1%22%7D%5D%7D%5D";
        let v = verify(&received(query, &headers), secrets, now()).unwrap();
        assert_eq!(v.action, "PushMeteringData");
    }

    fn expect_code(result: Result<Verified, AuthError>, code: &str) {
        match result {
            Ok(v) => panic!("verified unexpectedly: {v:?}"),
            Err(e) => assert_eq!(e.code(), code, "{e}"),
        }
    }

    #[test]
    fn rejects_tampering_and_bad_credentials() {
        let headers = captured_describe_instance();
        expect_code(verify(&received("InstanceId=124", &headers), secrets, now()), "SignatureDoesNotMatch");
        expect_code(verify(&received("InstanceId=123", &headers), |_| None, now()), "InvalidAccessKeyId.NotFound");
        expect_code(
            verify(&received("InstanceId=123", &headers), |_| Some("other".into()), now()),
            "SignatureDoesNotMatch",
        );
        let late = now() + chrono::TimeDelta::hours(1);
        expect_code(verify(&received("InstanceId=123", &headers), secrets, late), "InvalidTimeStamp.Expired");
        let mut changed_ua = headers.clone();
        changed_ua[4].1 = "curl".into();
        expect_code(verify(&received("InstanceId=123", &changed_ua), secrets, now()), "SignatureDoesNotMatch");
        let mut body_req = received("InstanceId=123", &headers);
        body_req.body = b"x";
        expect_code(verify(&body_req, secrets, now()), "SignatureDoesNotMatch");
        expect_code(verify(&received("InstanceId=123&InstanceId=1", &headers), secrets, now()), "IncompleteSignature");
    }

    #[test]
    fn rejects_incomplete_authorization() {
        let base = captured_describe_instance();
        let with_auth = |auth: &str| {
            let mut h = base.clone();
            if let Some(entry) = h.iter_mut().find(|(k, _)| k == "authorization") {
                entry.1 = auth.to_string();
            }
            h
        };
        let cases = [
            ("ACS3-HMAC-SHA256", "IncompleteSignature"),
            ("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host", "IncompleteSignature"),
            ("ACS3-HMAC-SM3 Credential=testid,SignedHeaders=host,Signature=00", "InvalidSignatureMethod"),
            (
                // x-acs-date not signed
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;\
                 x-acs-content-sha256;x-acs-signature-nonce;x-acs-version,Signature=00",
                "IncompleteSignature",
            ),
            (
                // every required header signed, but x-acs-credentials-provider is not
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;\
                 x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=00",
                "IncompleteSignature",
            ),
        ];
        for (auth, code) in cases {
            let h = with_auth(auth);
            expect_code(verify(&received("InstanceId=123", &h), secrets, now()), code);
        }
        let no_auth: Vec<_> = base.iter().filter(|(k, _)| k != "authorization").cloned().collect();
        expect_code(verify(&received("InstanceId=123", &no_auth), secrets, now()), "IncompleteSignature");
        let mut bad_date = base.clone();
        bad_date[5].1 = "yesterday".into();
        expect_code(verify(&received("InstanceId=123", &bad_date), secrets, now()), "InvalidTimeStamp.Format");
    }

    #[test]
    fn round_trip_with_body_plus_encoding_and_sts() {
        let query = map(&[("Note", "a b+c"), ("Empty", "")]);
        let body = b"PageNumber=1&PageSize=10";
        let headers = sign_rpc_call(
            &RpcCall {
                method: "POST",
                host: "127.0.0.1:8080",
                action: "DescribeFailedNotifications",
                version: "2015-11-01",
                query: &query,
                body,
                content_type: Some("application/x-www-form-urlencoded"),
                date: now(),
                nonce: "n-1",
                security_token: Some("sts"),
            },
            "ak",
            "testsecret",
        );
        let wire: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        // Python's urlencode writes spaces as `+`; the strict encoder writes `%20`.
        for raw_query in ["Note=a+b%2Bc&Empty=", "Empty&Note=a%20b%2Bc"] {
            let req = ReceivedRequest { method: "POST", path: "/", raw_query, headers: &wire, body };
            let v = verify(&req, secrets, now()).unwrap();
            assert_eq!(v.nonce, "n-1");
        }
        assert!(headers["Authorization"].contains("x-acs-security-token"));
    }

    #[test]
    fn accepts_legacy_query_variants() {
        // Old Python openapi-util: empty value as bare `Empty`; tea-openapi: raw names.
        let headers = base_headers("DescribeInstance");
        let (canonical_headers, signed) = canonical_headers(&headers);
        for style in query_styles() {
            let cq = canonical_query_with([("Empty", ""), ("k y", "v")], style);
            let cr = build_canonical_request("POST", "/", &cq, &canonical_headers, &signed, EMPTY_PAYLOAD_SHA256);
            let sig = signature_for("testsecret", &cr).unwrap();
            let mut wire: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            wire.push((
                "authorization".into(),
                format!("{ALGORITHM} Credential=ak,SignedHeaders={signed},Signature={sig}"),
            ));
            let req = received("Empty=&k+y=v", &wire);
            let t = Utc.with_ymd_and_hms(2024, 8, 16, 1, 0, 0).unwrap();
            assert!(verify(&req, secrets, t).is_ok());
        }
    }
}
