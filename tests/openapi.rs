//! The API description against the running service on a real port: `/openapi.json` names exactly the routes of
//! `marketflow::http::routes::ROUTES` (both ways), every one of them is really served (neither 405 nor the
//! unrouted answer `no_such_route`), `/api/docs` names every path, and an oversized JSON body is refused as
//! described (413).

use std::collections::BTreeSet;
use std::path::Path;

use marketflow::config::{Config, Secret};
use marketflow::http::routes::ROUTES;
use marketflow::startup::Application;
use serde_json::Value;

struct TestApp {
    url: String,
    http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

async fn spawn(dir: &Path) -> TestApp {
    let config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        operator_token: Some(Secret::new("op-token")),
        service_token: Some(Secret::new("svc-token")),
        isv_key: Some(Secret::new("isv")),
        access_key_id: Some("ak".into()),
        access_key_secret: Some(Secret::new("ak-secret")),
        aliyun_endpoint: "http://127.0.0.1:9".into(),
        ..Config::default()
    };
    let app = Application::build(config).await.expect("the app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    // Redirects are answers to check, not to follow.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    TestApp { url, http, handle }
}

impl TestApp {
    /// Status, content type and body of a request without credentials.
    async fn call(&self, method: &str, path: &str) -> (u16, String, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self.http.request(method, format!("{}{path}", self.url)).send().await.expect("request");
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        (status, content_type, resp.text().await.unwrap_or_default())
    }

    async fn spec(&self) -> Value {
        let (status, content_type, body) = self.call("GET", "/openapi.json").await;
        assert_eq!(status, 200, "{body}");
        assert!(content_type.starts_with("application/json"), "{content_type}");
        serde_json::from_str(&body).expect("the description is JSON")
    }
}

/// (METHOD, path) of every operation in the description.
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// A path with every `{param}` replaced by a value that matches the route's pattern.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{kind}" => "subscription",
            s if s.starts_with('{') && s.ends_with('}') => "probe",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[actix_rt::test]
async fn the_description_names_exactly_the_routes_of_the_route_table() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    let spec = app.spec().await;
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", spec["openapi"]);
    let described = operations(&spec);
    let table: BTreeSet<(String, String)> = ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let undescribed: Vec<_> = table.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&table).collect();
    assert!(
        undescribed.is_empty() && unrouted.is_empty(),
        "in ROUTES but not in /openapi.json: {undescribed:?}\nin /openapi.json but not in ROUTES: {unrouted:?}"
    );
    // Every operation says what it answers, and every JSON error answer is `{code, message}`.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for (status, r) in responses {
                let r = match r["$ref"].as_str() {
                    Some(name) => &spec["components"]["responses"][name.rsplit('/').next().unwrap()],
                    None => r,
                };
                assert!(r.is_object(), "{method} {path} {status}: unresolved");
                if status.starts_with('4') || status.starts_with('5') {
                    if let Some(schema) = r["content"]["application/json"]["schema"].as_object() {
                        let name = schema.get("$ref").and_then(Value::as_str).unwrap_or_default();
                        let ok = name.ends_with("/ErrorBody") || name.ends_with("/SpiFailure");
                        assert!(ok, "{method} {path} {status}: error body is {name:?}");
                    }
                }
            }
        }
    }
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn every_route_of_the_table_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    // What the probe looks for: an unrouted path, and a served path with a method it does not serve, answer
    // `no_such_route` (the app's default service), which a served route's own 404 never does.
    for (method, path) in [("GET", "/no/such/route"), ("PUT", "/healthz"), ("GET", "/api/v1/usage")] {
        let (status, _, body) = app.call(method, path).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "no_such_route", "{method} {path}");
    }
    let mut not_served = vec![];
    for route in ROUTES {
        let path = concrete(route.path);
        let (status, _, body) = app.call(route.method, &path).await;
        let unrouted = serde_json::from_str::<Value>(&body).is_ok_and(|b| b["code"] == "no_such_route");
        if status == 405 || unrouted {
            not_served.push(format!("{} {} -> {status} {body}", route.method, path));
        }
    }
    assert!(not_served.is_empty(), "listed in ROUTES but not served:\n{}", not_served.join("\n"));
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn the_api_page_renders_offline_and_names_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    let (status, content_type, html) = app.call("GET", "/api/docs").await;
    assert_eq!(status, 200, "{html}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    // Text is HTML-escaped (`/` as `&#x2f;`).
    let text = html.replace("&#x2f;", "/");
    let missing: Vec<&str> = ROUTES.iter().map(|r| r.path).filter(|p| !text.contains(&format!(">{p}<"))).collect();
    assert!(missing.is_empty(), "/api/docs does not name {missing:?}");
    assert!(text.contains("id=\"schema-ErrorBody\""));
    // Offline: nothing but this service's own assets, and they are served.
    for attr in ["src=\"", "href=\""] {
        for link in text.split(attr).skip(1).filter_map(|s| s.split('"').next()) {
            assert!(link.starts_with('/') || link.starts_with('#'), "the page links elsewhere: {link}");
        }
    }
    for asset in ["/assets/api-docs.css", "/assets/favicon.svg"] {
        let (status, _, _) = app.call("GET", asset).await;
        assert_eq!(status, 200, "{asset}");
    }
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn an_oversized_json_body_is_refused_as_described() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    let spec = app.spec().await;
    let described = &spec["paths"]["/api/v1/accounts"]["post"]["responses"]["413"];
    assert!(described.is_object(), "413 is described");
    let body = serde_json::json!({ "email": "a@example.com", "password": "x".repeat(70 * 1024), "name": "A" });
    let resp = app.http.post(format!("{}/api/v1/accounts", app.url)).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["code"], "payload_too_large");
    // Nothing was stored: the same e-mail registers afterwards (it would be `email_taken` otherwise).
    let body = serde_json::json!({ "email": "a@example.com", "password": "correct horse", "name": "A" });
    let resp = app.http.post(format!("{}/api/v1/accounts", app.url)).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    app.handle.stop(true).await;
}

/// Every operation but the SPI's may answer `429 rate_limited` (the route classes of `http::limits`), and says so.
#[test]
fn every_operation_but_the_spi_documents_429() {
    let doc = serde_json::to_value(marketflow::http::openapi::document()).unwrap();
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let has = op["responses"].get("429").is_some();
            assert_eq!(has, path != "/aliyun/spi", "{method} {path}");
            seen += 1;
        }
    }
    assert!(seen > 30, "{seen} operations");
}
