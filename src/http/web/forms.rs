//! Form bodies: parsed once (`application/x-www-form-urlencoded`, UTF-8), fields read by name.

use crate::aliyun::encoding::parse_form;

/// A field of a parsed form.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The fields of a form body; `None` when it is not UTF-8 or not a form.
pub fn fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    std::str::from_utf8(body).ok().and_then(|b| parse_form(b).ok())
}
