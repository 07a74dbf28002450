//! The language of a page: `?lang=` (remembered in a cookie), else the browser's `Accept-Language`, else the
//! seed's zh-CN. The texts themselves stay with the pages that show them.

use actix_web::http::header;
use actix_web::HttpRequest;

/// A language the pages speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// `zh`, `zh-CN`, `en-US`, ... (case and spaces ignored).
    pub fn parse(s: &str) -> Option<Lang> {
        let s = s.trim().to_ascii_lowercase();
        if s.starts_with("zh") {
            Some(Lang::Zh)
        } else if s.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The BCP 47 tag (`Content-Language`, `<html lang>`).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The `?lang=` value and the cookie's.
    pub fn short(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::Zh => Lang::En,
            Lang::En => Lang::Zh,
        }
    }
}

/// The browser's preferred language among ours, by `q` weight.
pub fn accept_language(req: &HttpRequest) -> Option<Lang> {
    let raw = req.headers().get(header::ACCEPT_LANGUAGE)?.to_str().ok()?;
    let mut best: Option<(f32, Lang)> = None;
    for part in raw.split(',') {
        let mut it = part.split(';');
        let Some(lang) = it.next().and_then(Lang::parse) else { continue };
        let q = it.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok())).unwrap_or(1.0);
        if best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heaviest_known_language_wins() {
        let req =
            |v: &str| actix_web::test::TestRequest::default().insert_header(("Accept-Language", v)).to_http_request();
        assert_eq!(accept_language(&req("fr, en;q=0.8, zh-CN;q=0.9")), Some(Lang::Zh));
        assert_eq!(accept_language(&req("en-US")), Some(Lang::En));
        assert_eq!(accept_language(&req("fr")), None);
        assert_eq!(Lang::parse(" ZH-tw "), Some(Lang::Zh));
    }
}
