//! The MD5 token that authenticates SPI callbacks from the marketplace.
//!
//! Rule (help.aliyun.com SPI安全令牌 / alibabacloud.com/help/en/marketplace/spi-security-scheme):
//! take every parameter except `token` (the marketplace may add parameters at any time, so no
//! fixed list), sort by name, join as `k1=v1&k2=v2`, append `&key=<ISV key>`, MD5, lowercase hex.
//! Values are the URL-decoded values, as Java's `request.getParameterMap()` yields them in the
//! published ISV implementations (github shanshili/isv-spi `MD5.py`, `IsvController.java`).
//!
//! MD5 with a shared secret is weak, but it is the marketplace's protocol; the constant-time
//! comparison at least avoids handing out a timing oracle.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Name of the parameter that carries the token.
pub const TOKEN_PARAM: &str = "token";

/// Why an SPI request's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the `token` parameter is missing or empty")]
    Missing,
    /// Not 32 hexadecimal digits once trimmed: no MD5 the marketplace makes looks like that.
    #[error("the token is not 32 hexadecimal digits")]
    Malformed,
    #[error("the token does not match the request parameters")]
    Mismatch,
    /// A name repeats: rejected as malformed, because the marketplace never repeats a name and
    /// the token rule has no defined meaning for repeats (Java's `getParameterMap` keeps an
    /// array and implementations hash only its first element, which a forger could exploit by
    /// appending a second value the application might read instead).
    #[error("parameter `{0}` occurs more than once")]
    Duplicate(String),
}

/// Computes the token for `params` (pairs as received, `token` itself is skipped).
///
/// Pairs are sorted by name in byte order (equal to Java `TreeMap`'s order for the ASCII
/// names the marketplace uses, so `Count` sorts before `action`). If a name repeats, both
/// pairs are hashed in value order; [`verify_spi_token`] rejects such requests before this.
pub fn spi_token(params: &[(String, String)], isv_key: &str) -> String {
    let mut pairs: Vec<(&str, &str)> =
        params.iter().filter(|(k, _)| k != TOKEN_PARAM).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    let mut hasher = Md5::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            hasher.update(b"&");
        }
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(v.as_bytes());
    }
    // With no parameters at all the string is just `key=…`; a leading `&` would be an artefact.
    if !pairs.is_empty() {
        hasher.update(b"&");
    }
    hasher.update(b"key=");
    hasher.update(isv_key.as_bytes());
    hex::encode(hasher.finalize())
}

/// An SPI or 免登 token in its one normal form: trimmed (any Unicode white space, U+3000 included),
/// lower-case, exactly 32 hexadecimal digits.
///
/// Normalised once, at the edge, because a single-use check keyed on anything else is a replay:
/// a used 免登 link with a trailing `%20`, a tab or upper-case hex would otherwise count as new.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiToken(String);

impl SpiToken {
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        let t = raw.trim();
        if t.is_empty() {
            return Err(TokenError::Missing);
        }
        if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        Ok(Self(t.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A 免登 link as the marketplace signed it: what its single use is keyed on, so that no spelling of
/// the same link (white space, hex case, an added unsigned parameter) counts as another link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoLink {
    pub instance_id: crate::aliyun::spi::InstanceId,
    pub time_stamp: chrono::NaiveDateTime,
    pub token: SpiToken,
}

impl SsoLink {
    /// A digest of the normalised signed tuple: the key of its used-link record (fixed length, no raw
    /// id in a key).
    pub fn digest(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.instance_id.as_str().as_bytes());
        h.update(b"\0");
        h.update(self.time_stamp.format("%Y-%m-%d %H:%M:%S").to_string().as_bytes());
        h.update(b"\0");
        h.update(self.token.as_str().as_bytes());
        hex::encode(h.finalize())
    }
}

/// Checks the `token` parameter of an SPI request and returns it normalised ([`SpiToken`]).
///
/// Hex case and surrounding white space carry no information (a proxy or sender emitting
/// upper-case hex should not break purchases); the comparison is in constant time.
pub fn verify_spi_token(params: &[(String, String)], isv_key: &str) -> Result<SpiToken, TokenError> {
    if let Some(dup) = crate::aliyun::encoding::first_duplicate(params) {
        return Err(TokenError::Duplicate(dup.to_string()));
    }
    let provided =
        SpiToken::parse(params.iter().find(|(k, _)| k == TOKEN_PARAM).map(|(_, v)| v.as_str()).unwrap_or(""))?;
    let expected = spi_token(params, isv_key);
    if bool::from(expected.as_bytes().ct_eq(provided.as_str().as_bytes())) {
        Ok(provided)
    } else {
        Err(TokenError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    // Every expected value below was computed with Python's hashlib:
    // md5("&".join(f"{k}={v}" for k, v in sorted(pairs) if k != "token") + "&key=" + key)

    #[test]
    fn english_doc_example() {
        // MD5("p1=1&p2=2&p3=3&key=isvkey") from the SPI security doc.
        let params = p(&[("p3", "3"), ("p1", "1"), ("p2", "2")]);
        assert_eq!(spi_token(&params, "isvkey"), "691b1c2be27485a87fb000de6f89f1d3");
    }

    #[test]
    fn value_with_space_is_hashed_decoded() {
        let params = p(&[
            ("token", "ignored"),
            ("action", "renewInstance"),
            ("instanceId", "1"),
            ("orderId", "o-1"),
            ("expiredOn", "2013-01-01 01:01:01"),
        ]);
        assert_eq!(spi_token(&params, "isvkey"), "8828a9816d9e041aff1bb18c4dcd2fe8");
    }

    #[test]
    fn empty_values_and_unknown_params_are_included() {
        // Uppercase `Count` sorts before `action`; `template=` contributes `template=`.
        let params = p(&[
            ("action", "createInstance"),
            ("aliUid", "1234567890"),
            ("orderBizId", "biz-1"),
            ("orderId", "o-9"),
            ("productCode", "cmgj00063418"),
            ("skuId", "yuncode1234"),
            ("trial", "false"),
            ("template", ""),
            ("Count", "3"),
            ("package_version", "v2"),
        ]);
        let token = "60a5a3c639f9f692d8251c89f914aec0";
        assert_eq!(spi_token(&params, "s3cr3t"), token);
        let mut with_token = params.clone();
        with_token.push(("token".into(), token.into()));
        assert_eq!(verify_spi_token(&with_token, "s3cr3t").map(drop), Ok(()));
    }

    #[test]
    fn verify_action_and_non_ascii() {
        let params = p(&[
            ("action", "verify"),
            ("instanceId", "1"),
            ("timeStamp", "2013-01-01 01:01:01"),
            ("token", "8187B9FF1E100A800175A7CD2C74BA63"),
        ]);
        assert_eq!(verify_spi_token(&params, "isvkey").map(drop), Ok(()));
        let utf8 = p(&[("action", "verify"), ("instanceId", "实例"), ("timeStamp", "2013-01-01 01:01:01")]);
        assert_eq!(spi_token(&utf8, "密钥"), "f94b381e428897e563073b05adaab38f");
    }

    #[test]
    fn missing_mismatch_duplicate() {
        let base = p(&[("action", "expiredInstance"), ("instanceId", "1")]);
        assert_eq!(verify_spi_token(&base, "k").map(drop), Err(TokenError::Missing));
        let mut empty = base.clone();
        empty.push(("token".into(), " ".into()));
        assert_eq!(verify_spi_token(&empty, "k").map(drop), Err(TokenError::Missing));
        let mut wrong = base.clone();
        wrong.push(("token".into(), spi_token(&base, "other")));
        assert_eq!(verify_spi_token(&wrong, "k").map(drop), Err(TokenError::Mismatch));
        let mut tampered = base.clone();
        tampered.push(("token".into(), spi_token(&base, "k")));
        tampered[1].1 = "2".into();
        assert_eq!(verify_spi_token(&tampered, "k").map(drop), Err(TokenError::Mismatch));
        let mut dup = base.clone();
        dup.push(("token".into(), spi_token(&base, "k")));
        dup.push(("instanceId".into(), "2".into()));
        assert_eq!(verify_spi_token(&dup, "k").map(drop), Err(TokenError::Duplicate("instanceId".into())));
        let mut dup_token = base.clone();
        dup_token.push(("token".into(), spi_token(&base, "k")));
        dup_token.push(("token".into(), spi_token(&base, "k")));
        assert_eq!(verify_spi_token(&dup_token, "k").map(drop), Err(TokenError::Duplicate("token".into())));
    }

    #[test]
    fn tokens_have_one_normal_form() {
        let t = "8187b9ff1e100a800175a7cd2c74ba63";
        for variant in [
            t.to_string(),
            t.to_uppercase(),
            format!("{t} "),
            format!(" {t}"),
            format!("{t}\t"),
            format!("{t}\n"),
            format!("{t}\u{3000}"),
            format!("\u{3000}{}\r\n", t.to_uppercase()),
        ] {
            assert_eq!(SpiToken::parse(&variant).map(|t| t.as_str().to_string()), Ok(t.to_string()), "{variant:?}");
        }
        for bad in [&t[..31], &format!("{t}0"), &format!("{}g", &t[..31]), "8187b9ff 1e100a800175a7cd2c74ba6"] {
            assert_eq!(SpiToken::parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
        assert_eq!(SpiToken::parse(" \t"), Err(TokenError::Missing));
    }

    #[test]
    fn no_params_hashes_only_the_key() {
        // md5("key=isvkey")
        assert_eq!(spi_token(&[], "isvkey"), "34f04427e099f8bf903e733dcc407c8e");
    }
}
