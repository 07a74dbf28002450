//! Whether a form comes from this service's own pages: the `Origin` check of every page and console POST.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::http::AppState;

/// Does the request come from one of this service's own pages? A present `Origin` (or, without it, `Referer`)
/// must be the public URL's origin or the origin the request was addressed to. Neither header (old clients): the
/// form token and SameSite still hold.
pub fn same_origin(state: &AppState, req: &HttpRequest) -> bool {
    let origin_of = |url: &str| -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        (!host.is_empty()).then(|| format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
    };
    let claimed = match req.headers().get(header::ORIGIN) {
        Some(o) => match o.to_str() {
            Ok(o) if o != "null" => origin_of(o),
            _ => return false,
        },
        None => match req.headers().get(header::REFERER).and_then(|r| r.to_str().ok()) {
            Some(r) => origin_of(r),
            None => return true,
        },
    };
    let Some(claimed) = claimed else { return false };
    let info = req.connection_info();
    let addressed = format!("{}://{}", info.scheme(), info.host()).to_ascii_lowercase();
    Some(claimed.as_str()) == origin_of(&state.config.public_url).as_deref() || claimed == addressed
}
