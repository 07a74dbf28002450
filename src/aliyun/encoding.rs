//! Percent-encoding and form decoding shared by the signature schemes and the SPI.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// RFC 3986 unreserved characters stay literal, everything else is `%XX` (uppercase hex).
///
/// Both signature docs spell this out (space → `%20`, `*` → `%2A`, `~` literal), and it is what
/// Python's `quote(v, safe='~')` in the official SDK produces, so one set serves V3 and RPC.
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Aliyun's `percentEncode`: UTF-8, RFC 3986 unreserved set, uppercase hex.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE_SET).to_string()
}

/// Builds a URL query string (`k=v&…`) in the given order with [`percent_encode`].
///
/// Servers decode both `%20` and `+`, so the strict encoding is always safe on the wire.
pub fn encode_query<'a, I>(pairs: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    pairs.into_iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

/// Why a query string or form body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("parameter #{index} is not valid UTF-8 after percent-decoding")]
    InvalidUtf8 { index: usize },
}

/// Decodes an `application/x-www-form-urlencoded` string (URL query or POST body) into pairs,
/// keeping order and duplicates.
///
/// Duplicates are kept on purpose: the SPI token and the signatures are only well-defined when
/// every name occurs once, so the callers must see repeats to reject them. `+` means space
/// because the official Python SDK builds its URLs with `urlencode` (`quote_plus`); a segment
/// without `=` is a name with an empty value, as in servlet containers.
pub fn parse_form(raw: &str) -> Result<Vec<(String, String)>, DecodeError> {
    let mut out = Vec::new();
    for (index, segment) in raw.split('&').enumerate() {
        if segment.is_empty() {
            continue;
        }
        let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = decode_component(name).ok_or(DecodeError::InvalidUtf8 { index })?;
        let value = decode_component(value).ok_or(DecodeError::InvalidUtf8 { index })?;
        out.push((name, value));
    }
    Ok(out)
}

fn decode_component(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_decode_str(&plus_as_space).decode_utf8().ok().map(|c| c.into_owned())
}

/// The first name that occurs more than once, if any.
pub fn first_duplicate(pairs: &[(String, String)]) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    pairs.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encode_follows_rfc3986_like_the_sdk() {
        // Expected values from Python: quote(s, safe='~')
        assert_eq!(percent_encode("a b*c~d+e/f"), "a%20b%2Ac~d%2Be%2Ff");
        assert_eq!(percent_encode("-_.~AZaz09"), "-_.~AZaz09");
        assert_eq!(percent_encode("中文"), "%E4%B8%AD%E6%96%87");
        assert_eq!(percent_encode("2013-01-01 01:01:01"), "2013-01-01%2001%3A01%3A01");
    }

    #[test]
    fn parse_form_decodes_plus_percent_and_bare_names() {
        let got = parse_form("a=1+2&b=%2B%20x&&c&d=&e=%E4%B8%AD").unwrap();
        let want: Vec<(String, String)> = [("a", "1 2"), ("b", "+ x"), ("c", ""), ("d", ""), ("e", "中")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn parse_form_keeps_duplicates_and_rejects_bad_utf8() {
        let got = parse_form("a=1&a=2").unwrap();
        assert_eq!(first_duplicate(&got), Some("a"));
        assert_eq!(parse_form("ok=1&x=%FF"), Err(DecodeError::InvalidUtf8 { index: 1 }));
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let s = encode_query([("k y", "v+1 *~%"), ("中", "")]);
        assert_eq!(
            parse_form(&s).unwrap(),
            vec![("k y".to_string(), "v+1 *~%".to_string()), ("中".to_string(), String::new())]
        );
    }
}
