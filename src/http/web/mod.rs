//! The web concerns the buyer's pages and the operator console share, each written once: whether a form comes from
//! this service's own pages (`Origin`), cookies, form fields, and template environments. The pages and the console
//! keep only what differs (paths, SameSite, their texts); their random tokens are the accounts' (`random_token`).

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::HttpRequest;
use minijinja::{Environment, UndefinedBehavior};

use super::AppState;

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

/// Whether browsers reach the service over https (then every cookie is `Secure`).
pub fn https(state: &AppState) -> bool {
    state.config.public_url.starts_with("https://")
}

/// An HTTP-only cookie under `path`, `Secure` behind https.
pub fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    path: &'static str,
    same_site: SameSite,
) -> Cookie<'static> {
    Cookie::build(name, value).path(path).http_only(true).same_site(same_site).secure(https(state)).finish()
}

/// The cookie that removes `name` under `path`.
pub fn cleared(name: &'static str, path: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "").path(path).finish();
    c.make_removal();
    c
}

/// A field of a parsed form.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A template environment that refuses undefined values, with `templates` added; one that does not compile is
/// logged (the page that needs it then answers 503) rather than stopping the service.
pub fn templates(what: &str, templates: &[(&'static str, &'static str)]) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for (name, source) in templates {
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "a {what} template does not compile");
        }
    }
    env
}
