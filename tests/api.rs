//! Black-box tests of the running service on a real port: health, readiness, the ops API and who may call it.

use std::path::Path;

use marketflow::config::{Config, Secret};
use marketflow::startup::Application;
use serde_json::Value;

#[path = "api/security.rs"]
mod security;

struct TestApp {
    url: String,
    http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

async fn spawn(dir: &Path) -> TestApp {
    spawn_at(dir, None).await
}

/// The app, reached by browsers at `public_url` if given.
async fn spawn_at(dir: &Path, public_url: Option<&str>) -> TestApp {
    spawn_with(dir, |c| {
        if let Some(u) = public_url {
            c.public_url = u.to_string();
        }
    })
    .await
}

async fn spawn_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        operator_token: Some(Secret::new("op-token")),
        service_token: Some(Secret::new("svc-token")),
        isv_key: Some(Secret::new("isv")),
        access_key_id: Some("ak".into()),
        access_key_secret: Some(Secret::new("ak-secret")),
        aliyun_endpoint: "http://127.0.0.1:9".into(),
        time_scale: 60.0,
        ..Config::default()
    };
    tune(&mut config);
    let app = Application::build(config).await.expect("the app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    TestApp { url, http: reqwest::Client::new(), handle }
}

impl TestApp {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

#[actix_rt::test]
async fn health_readiness_and_the_scaled_clock() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    let (s, h) = app.get("/healthz", None).await;
    assert_eq!(s, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["time_scale"], 60.0);
    let now = chrono::DateTime::parse_from_rfc3339(h["now"].as_str().unwrap()).unwrap();
    let (s, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200);
    app.handle.stop(true).await;

    // Restarted on the same data, the scaled clock goes on from where it was, never back.
    let app = spawn(dir.path()).await;
    let (_, h) = app.get("/healthz", None).await;
    let later = chrono::DateTime::parse_from_rfc3339(h["now"].as_str().unwrap()).unwrap();
    assert!(later >= now, "{later} < {now}");
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn the_ops_api_checks_who_is_calling_and_answers_with_stable_codes() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    for path in ["/api/v1/ops/entities", "/api/v1/ops/timers", "/api/v1/ops/entities/subscription/1"] {
        let (s, b) = app.get(path, None).await;
        assert_eq!(s, 401, "{path}");
        assert_eq!(b["code"], "unauthorized");
        let (s, b) = app.get(path, Some("svc-token")).await;
        assert_eq!(s, 403, "{path}: the service role is not an operator");
        assert_eq!(b["code"], "forbidden");
        let (s, _) = app.get(path, Some("wrong")).await;
        assert_eq!(s, 401, "{path}");
    }
    let (s, b) = app.get("/api/v1/ops/entities", Some("op-token")).await;
    assert_eq!(s, 200);
    assert!(b["items"].as_array().unwrap().is_empty());
    let (s, b) = app.get("/api/v1/ops/entities?limit=0", Some("op-token")).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_limit")));
    let (s, b) = app.get("/api/v1/ops/entities?kind=nope", Some("op-token")).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("unknown_kind")));
    let (s, b) = app.get("/api/v1/ops/entities?bogus=1", Some("op-token")).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_query")));
    let (s, b) = app.get("/api/v1/ops/timers?due_before=yesterday", Some("op-token")).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_query")));
    let (s, b) = app.get("/api/v1/ops/entities/subscription/none", Some("op-token")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, b) = app.get("/no/such/route", None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("no_such_route")));
    app.handle.stop(true).await;
}

#[actix_rt::test]
async fn metrics_are_served_in_the_prometheus_format() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path()).await;
    app.get("/api/v1/ops/timers", Some("op-token")).await;
    let body = app.http.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    for name in [
        "marketflow_commits_total",
        "marketflow_commit_groups_total",
        "marketflow_timers_fired_total",
        "marketflow_actors_live",
    ] {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name} in {body}");
    }
    assert!(
        body.contains(r#"marketflow_http_requests_total{method="GET",route="/api/v1/ops/timers",status="200"}"#),
        "{body}"
    );
    app.handle.stop(true).await;
}

/// The JSON API's session cookie is `Secure` exactly when the service is reached over https, like the pages'.
#[actix_rt::test]
async fn the_session_cookie_is_secure_behind_https() {
    for (public_url, secure) in [(None, false), (Some("https://marketflow.example.com"), true)] {
        let dir = tempfile::tempdir().unwrap();
        let app = spawn_at(dir.path(), public_url).await;
        let account = serde_json::json!({"email": "c@example.com", "password": "correct horse battery", "name": "C"});
        let r = app.http.post(format!("{}/api/v1/accounts", app.url)).json(&account).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let login = serde_json::json!({"email": "c@example.com", "password": "correct horse battery"});
        let r = app.http.post(format!("{}/api/v1/sessions", app.url)).json(&login).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("mf_session="))
            .expect("a session cookie")
            .to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert_eq!(cookie.contains("Secure"), secure, "{public_url:?}: {cookie}");
        app.handle.stop(true).await;
    }
}

/// Labels come from closed sets: thousands of made-up methods and paths leave `/metrics` small, with every such
/// request counted under `OTHER` and none of the junk in a label.
#[actix_rt::test]
async fn junk_methods_and_paths_cannot_grow_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // 3,000 requests from one address in a few seconds: over the per-address limit, which is not under test here.
    let app = spawn_with(dir.path(), |c| c.rate_limits = "address=1000000".parse().unwrap()).await;
    let before = app.http.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    for chunk in 0..60 {
        let mut batch = Vec::new();
        for i in 0..50 {
            let n = chunk * 50 + i;
            let method = reqwest::Method::from_bytes(format!("JUNK{n}").as_bytes()).unwrap();
            let path = match n % 3 {
                0 => format!("/junk-{n}/{}", "x".repeat(200)),
                1 => format!("/api/v1/ops/entities/subscription/junk-{n}/nope"),
                _ => "/healthz".to_string(),
            };
            let m = if n % 2 == 0 { method } else { reqwest::Method::GET };
            batch.push(app.http.request(m, format!("{}{path}", app.url)).send());
        }
        for r in futures_util::future::join_all(batch).await {
            r.expect("every junk request is answered");
        }
    }
    let page = app.http.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.len() < 1024 * 1024, "{} bytes", page.len());
    assert!(page.len() < before.len() + 64 * 1024, "{} bytes after, {} before", page.len(), before.len());
    assert!(!page.contains("JUNK") && !page.contains("junk-"), "junk reached a label");
    assert!(page.contains("method=\"OTHER\""), "made-up methods are counted as OTHER");
    assert!(page.contains("route=\"OTHER\""), "unrouted paths are counted as OTHER");
    app.handle.stop(true).await;
}
