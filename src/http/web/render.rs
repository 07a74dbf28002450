//! Rendering HTML: the template environments and the headers every page and console answer carries (a strict
//! content security policy: no inline script or style, no framing).

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};
use minijinja::{Environment, UndefinedBehavior};

/// The pages' and the console's policy: their own scripts, styles and images only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// An HTML answer with the security headers of every page. `Referrer-Policy: same-origin`: under `no-referrer`
/// browsers send `Origin: null` with a form's POST, which the origin check would refuse (`super::headers`).
pub fn html(status: StatusCode) -> HttpResponseBuilder {
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "same-origin"));
    r
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
