//! `GET /openapi.json`, the OpenAPI 3.1 description of every route, generated from the handlers'
//! `#[utoipa::path]` annotations; and `GET /api/docs`, a page rendered from it on the server.
//!
//! Why per module: each `src/http/*.rs` derives its own `utoipa::OpenApi` struct naming the handlers it
//! registers, and [`modules`] lists them, so a new module joins with one line and a handler is described next to
//! its code. `tests/openapi.rs` compares the result with [`super::routes::ROUTES`] both ways.
//!
//! Why no Swagger UI or similar crate: they fetch their JavaScript at build time or link a CDN at run time; the
//! page here is plain HTML from a minijinja template and one stylesheet, both compiled into the binary.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::HttpResponse;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Ref;
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};

/// The description's own routes, its info, tags and security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "marketflow",
        description = "Durable orchestration of Alibaba Cloud Marketplace subscriptions: the marketplace's SPI and \
            免登 hand-off, the buyers' JSON API and pages, usage records from Zilliz Cloud's services, and the \
            operators' API.\n\nErrors of the JSON API are `{\"code\", \"message\"}` with a stable `code`. A 503 \
            carries `Retry-After`: the request changed nothing and may be repeated. A 500 (`internal_error`) is a \
            bug of the service and is not listed per operation. A (method, path) that no route serves answers \
            404 `no_such_route`.",
    ),
    paths(openapi_json, api_docs),
    components(schemas(ErrorBody), responses(Unauthorized, Unavailable, PayloadTooLarge, RateLimited)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "probes", description = "Liveness, readiness and metrics"),
        (name = "marketplace", description = "Alibaba Cloud Marketplace: the SPI and the 免登 hand-off"),
        (name = "accounts", description = "Users, sessions, organizations and invitations"),
        (name = "subscriptions", description = "The buyer's marketplace subscriptions and their binding"),
        (name = "usage", description = "Usage records from Zilliz Cloud's services"),
        (name = "operators", description = "Where every workflow stands, and actions on it"),
        (name = "pages", description = "The buyer's pages (HTML forms; a session cookie)"),
        (name = "api", description = "This description"),
        (name = "cluster", description = "Between the nodes of a cluster (PostgreSQL mode): signed with the cluster secret"),
    )
)]
struct BaseApi;

/// Every module's part of the description, by module name.
pub fn modules() -> Vec<(&'static str, utoipa::openapi::OpenApi)> {
    vec![
        ("openapi", BaseApi::openapi()),
        ("probes", super::ProbesApi::openapi()),
        ("metrics", super::metrics::MetricsApi::openapi()),
        ("spi", super::spi::SpiApi::openapi()),
        ("sso", super::sso::SsoApi::openapi()),
        ("ops", super::ops::OpsApi::openapi()),
        ("accounts", super::accounts::AccountsApi::openapi()),
        ("marketplace", super::marketplace::MarketplaceApi::openapi()),
        ("usage", super::usage::UsageApi::openapi()),
        ("pages", super::pages::PagesApi::openapi()),
        ("console", super::console::ConsoleApi::openapi()),
        ("internal", super::internal::InternalApi::openapi()),
    ]
}

/// The whole description (built once).
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut parts = modules().into_iter().map(|(_, d)| d);
        let mut doc = parts.next().unwrap_or_else(BaseApi::openapi);
        for part in parts {
            doc.merge(part);
        }
        // After the merge: it applies to every module's operations.
        RateLimitedEverywhere.modify(&mut doc);
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc
    })
}

/// The description as JSON (serialized once).
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string_pretty(document()).unwrap_or_else(|_| "{}".into()))
}

/// Bearer tokens of the two roles, the buyer's session (cookie or bearer) and the marketplace's signed token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build())
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator",
            bearer(
                "The `operator` role's token: the shared `MARKETFLOW_OPERATOR_TOKEN`, where `X-Operator` names the \
                 person, or a named token of `MARKETFLOW_OPERATOR_TOKENS`, which names its owner (`X-Operator` is \
                 ignored).",
            ),
        );
        components.add_security_scheme("service", bearer("The `service` role's token (`MARKETFLOW_SERVICE_TOKEN`)."));
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::session::SESSION_COOKIE,
                "The session cookie the pages and `POST /api/v1/sessions` set.",
            ))),
        );
        components.add_security_scheme(
            "session_token",
            bearer("A session token from `POST /api/v1/sessions`, instead of the cookie."),
        );
        components.add_security_scheme(
            "cluster_node",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::cluster::sign::SIGNATURE,
                "HMAC-SHA256 with the cluster secret (`MARKETFLOW_CLUSTER_SECRET`) over the method, the path, the \
                 sending node (`X-Marketflow-Node`), a timestamp in milliseconds (`X-Marketflow-Timestamp`, within 30 \
                 s) and the body.",
            ))),
        );
        components.add_security_scheme(
            "spi_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "MD5 over the sorted parameters and the ISV key (`MARKETFLOW_ALIYUN_ISV_KEY`), as the marketplace \
                 signs SPI calls and 免登 links.",
            ))),
        );
    }
}

/// Every route but the SPI is rate limited (`http::limits`), so every operation but the SPI's may answer 429.
struct RateLimitedEverywhere;

impl Modify for RateLimitedEverywhere {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/aliyun/spi" {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
                &mut item.head,
                &mut item.options,
            ];
            for op in ops.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("429".to_string())
                    .or_insert_with(|| Ref::from_response_name("RateLimited").into());
            }
        }
    }
}

/// This description (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "api",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(document_json())
}

/// This description as a page for people: every operation with its parameters, bodies and answers.
#[utoipa::path(get, path = "/api/docs", tag = "api",
    responses((status = 200, description = "The page", content_type = "text/html")))]
pub async fn api_docs() -> HttpResponse {
    let (status, body) = match render_docs() {
        Ok(html) => (actix_web::http::StatusCode::OK, html),
        Err(e) => {
            tracing::error!(error = %e, "the API page could not be rendered");
            (
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>API</title><p>The page could not be rendered; \
                 <a href=\"/openapi.json\">/openapi.json</a> has the description."
                    .to_string(),
            )
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(body)
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const DOCS_TEMPLATE: &str = include_str!("../../templates/api_docs.html");

/// The page, rendered once (the description does not change while the process runs).
fn render_docs() -> Result<String, String> {
    static HTML: OnceLock<Result<String, String>> = OnceLock::new();
    HTML.get_or_init(|| {
        let doc = serde_json::to_value(document()).unwrap_or(Value::Null);
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template("api_docs.html", DOCS_TEMPLATE)
            .and_then(|()| env.get_template("api_docs.html"))
            .and_then(|t| t.render(docs_view(&doc)))
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
}

/// A piece of a type's label: text, and the schema it names (a link on the page).
#[derive(Serialize)]
struct Piece {
    text: String,
    schema: Option<String>,
}

fn text(t: impl Into<String>) -> Piece {
    Piece { text: t.into(), schema: None }
}

/// "array of EntityView", "string (date-time) or null", "one of: a, b"... as pieces.
fn type_label(schema: &Value, out: &mut Vec<Piece>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r).to_string();
        out.push(Piece { text: name.clone(), schema: Some(name) });
        return;
    }
    for (key, joiner) in [("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            for (i, s) in list.iter().enumerate() {
                if i > 0 {
                    out.push(text(joiner));
                }
                type_label(s, out);
            }
            return;
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let shown: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        out.push(text(format!("one of {}", shown.join(", "))));
        return;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.is_empty() {
        out.push(text(if schema.get("properties").is_some() { "object" } else { "any" }));
        return;
    }
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            out.push(text(" or "));
        }
        match *t {
            "array" => {
                out.push(text("array of "));
                type_label(schema.get("items").unwrap_or(&Value::Null), out);
            }
            "object" if schema.get("additionalProperties").is_some_and(Value::is_object) => {
                out.push(text("map of "));
                type_label(&schema["additionalProperties"], out);
            }
            other => match schema.get("format").and_then(Value::as_str) {
                Some(f) => out.push(text(format!("{other} ({f})"))),
                None => out.push(text(other)),
            },
        }
    }
}

fn label(schema: &Value) -> Vec<Piece> {
    let mut out = Vec::new();
    type_label(schema, &mut out);
    out
}

fn string(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A description with its `code spans` marked, for the template to set in `<code>` (escaped like all text).
fn rich(s: &str) -> Vec<Value> {
    s.split('`')
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, t)| json!({ "text": t, "code": i % 2 == 1 }))
        .collect()
}

fn rich_of(v: &Value, key: &str) -> Vec<Value> {
    rich(v.get(key).and_then(Value::as_str).unwrap_or_default())
}

/// The properties of an object schema as rows (name, type, required, description).
fn fields(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return vec![] };
    props
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "type": label(p),
                "required": required.contains(&name.as_str()),
                "description": rich_of(p, "description"),
            })
        })
        .collect()
}

/// The operations grouped by tag (in the tags' order), and the schemas, as the template shows them.
fn docs_view(doc: &Value) -> Value {
    let tags: Vec<(String, String)> = doc["tags"]
        .as_array()
        .map(|ts| ts.iter().map(|t| (string(t, "name"), string(t, "description"))).collect())
        .unwrap_or_default();
    let mut groups: Vec<(String, String, Vec<Value>)> = tags.into_iter().map(|(n, d)| (n, d, vec![])).collect();
    let empty = Map::new();
    for (path, item) in doc["paths"].as_object().unwrap_or(&empty) {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            let Some(op) = item.get(method) else { continue };
            let tag = op["tags"].get(0).and_then(Value::as_str).unwrap_or("other").to_string();
            let params: Vec<Value> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            json!({
                                "name": string(p, "name"), "in": string(p, "in"),
                                "required": p["required"].as_bool().unwrap_or(false),
                                "type": label(&p["schema"]), "description": rich_of(p, "description"),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let contents = |c: &Value| -> Vec<Value> {
                c.as_object()
                    .map(|m| {
                        m.iter().map(|(ct, v)| json!({ "content_type": ct, "type": label(&v["schema"]) })).collect()
                    })
                    .unwrap_or_default()
            };
            let body = op.get("requestBody").map(|b| {
                json!({ "description": rich_of(b, "description"), "contents": contents(&b["content"]),
                        "required": b["required"].as_bool().unwrap_or(false) })
            });
            let responses: Vec<Value> = op["responses"]
                .as_object()
                .map(|rs| {
                    rs.iter()
                        .map(|(status, r)| {
                            // A reusable response: show its definition.
                            let r = match r.get("$ref").and_then(Value::as_str) {
                                Some(reference) => {
                                    let name = reference.rsplit('/').next().unwrap_or_default();
                                    &doc["components"]["responses"][name]
                                }
                                None => r,
                            };
                            let headers: Vec<String> =
                                r["headers"].as_object().map(|h| h.keys().cloned().collect()).unwrap_or_default();
                            json!({ "status": status, "description": rich_of(r, "description"),
                                    "contents": contents(&r["content"]), "headers": headers })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let security: Vec<String> = op["security"]
                .as_array()
                .map(|reqs| {
                    reqs.iter()
                        .filter_map(Value::as_object)
                        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(" + "))
                        .collect()
                })
                .unwrap_or_default();
            let anchor = format!("{method}-{path}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .collect::<String>();
            let operation = json!({
                "anchor": anchor, "method": method.to_uppercase(), "path": path,
                "summary": rich_of(op, "summary"), "description": rich_of(op, "description"),
                "params": params, "body": body, "responses": responses, "security": security,
            });
            match groups.iter_mut().find(|(n, _, _)| *n == tag) {
                Some(g) => g.2.push(operation),
                None => groups.push((tag, String::new(), vec![operation])),
            }
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .filter(|(_, _, ops)| !ops.is_empty())
        .map(|(name, description, operations)| json!({ "name": name, "description": description, "operations": operations }))
        .collect();
    let schemas: Vec<Value> = doc["components"]["schemas"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, s)| {
                    let variants: Vec<Vec<Piece>> = s
                        .get("oneOf")
                        .and_then(Value::as_array)
                        .map(|vs| vs.iter().map(label).collect())
                        .unwrap_or_default();
                    json!({ "name": name, "description": rich_of(s, "description"), "type": label(s),
                            "fields": fields(s), "variants": variants })
                })
                .collect()
        })
        .unwrap_or_default();
    let security: Vec<Value> = doc["components"]["securitySchemes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, s)| {
                    let kind = match string(s, "type").as_str() {
                        "http" => format!("{} (Authorization header)", string(s, "scheme")),
                        "apiKey" => format!("{} {}", string(s, "in"), string(s, "name")),
                        other => other.to_string(),
                    };
                    json!({ "name": name, "kind": kind, "description": rich_of(s, "description") })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "title": string(&doc["info"], "title"),
        "version": string(&doc["info"], "version"),
        "description": string(&doc["info"], "description").split("\n\n").map(rich).collect::<Vec<_>>(),
        "openapi": string(doc, "openapi"),
        "groups": groups,
        "schemas": schemas,
        "security": security,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema name two modules define differently would be dropped silently by `merge`.
    #[test]
    fn no_two_modules_define_a_schema_or_an_operation_differently() {
        let mut schemas: std::collections::BTreeMap<String, (String, Value)> = Default::default();
        let mut operations: std::collections::BTreeMap<String, &str> = Default::default();
        for (module, part) in modules() {
            let v = serde_json::to_value(&part).unwrap_or(Value::Null);
            for (name, s) in v["components"]["schemas"].as_object().cloned().unwrap_or_default() {
                if let Some((other, existing)) = schemas.get(&name) {
                    assert_eq!(existing, &s, "schema {name} differs between {other} and {module}");
                }
                schemas.insert(name, (module.to_string(), s));
            }
            for (path, item) in v["paths"].as_object().cloned().unwrap_or_default() {
                for method in item.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                    let key = format!("{method} {path}");
                    assert!(operations.insert(key.clone(), module).is_none(), "{key} described twice");
                }
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(document()).unwrap_or(Value::Null);
        let mut missing = vec![];
        fn walk(v: &Value, doc: &Value, missing: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        let target = r.trim_start_matches("#/").split('/').fold(doc, |d, k| &d[k]);
                        if target.is_null() {
                            missing.push(r.to_string());
                        }
                    }
                    m.values().for_each(|x| walk(x, doc, missing));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc, missing)),
                _ => {}
            }
        }
        walk(&doc, &doc, &mut missing);
        assert!(missing.is_empty(), "unresolved references: {missing:?}");
    }

    #[test]
    fn the_page_renders_types_with_links_to_their_schemas() {
        let pieces = label(&json!({ "type": ["array", "null"], "items": { "$ref": "#/components/schemas/X" } }));
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["array of ", "X", " or ", "null"]);
        assert_eq!(pieces[1].schema.as_deref(), Some("X"));
        let html = render_docs().unwrap_or_else(|e| panic!("{e:#}"));
        assert!(html.contains("id=\"schema-ErrorBody\""), "schemas have anchors");
    }
}
