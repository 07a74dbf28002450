//! Security and abuse, bounded, black-box: rate limits per route class (log-ins per address and per account, bearer tokens
//! per token, `X-Forwarded-For` believed only from trusted proxies, the SPI not limited by address), Argon2
//! behind a bounded number of slots (100 concurrent log-ins keep a real process under 300 MiB), and start-up
//! refusing weak, empty or development secrets by name.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use marketflow::aliyun::token::spi_token;
use marketflow::config::Config;
use serde_json::{json, Value};

/// The SPI key of the in-process app.
const ISV: &str = "isv";
/// The SPI key of the service processes these tests start.
const PROCESS_ISV: &str = "security-isv-key";

/// The in-process app of `super::spawn_with`: SPI key `isv`, tokens `op-token` and `svc-token`.
use super::TestApp as App;

async fn spawn(dir: &Path, tune: impl FnOnce(&mut Config)) -> App {
    super::spawn_with(dir, tune).await
}

impl App {
    async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("an answer");
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
        (status, retry, r.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, email: &str) {
        let (s, _, v) = self
            .post("/api/v1/accounts", json!({"email": email, "password": "right-password", "name": "N"}), &[])
            .await;
        assert_eq!(s, 201, "{v}");
    }
}

fn login(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

/// 50 wrong log-ins for one account: a few are checked (401), the rest refused before any hashing (429
/// `rate_limited` with `Retry-After`); the right password is refused too until the bucket refills, and another
/// account is not affected. From one address, log-ins across many accounts hit the per-address limit.
#[actix_rt::test]
async fn wrong_logins_are_rate_limited_per_account_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |_| {}).await;
    app.register("victim@example.com").await;
    app.register("other@example.com").await;
    let (s, _, v) = app.post("/api/v1/sessions", login("other@example.com", "right-password"), &[]).await;
    assert_eq!(s, 201, "{v}");
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..50 {
        if i == 14 {
            // The victim's account is over its limit by now; another account is not held back by it.
            let (s, _, v) = app.post("/api/v1/sessions", login("other@example.com", "right-password"), &[]).await;
            assert_eq!(s, 201, "{v}");
        }
        let (s, retry, v) = app.post("/api/v1/sessions", login("victim@example.com", "wrong-password"), &[]).await;
        *codes.entry(s).or_default() += 1;
        if s == 429 {
            assert_eq!(v["code"], "rate_limited", "{v}");
            let secs: u32 = retry.expect("Retry-After").parse().unwrap();
            assert!((1..=60).contains(&secs), "{secs}");
        } else {
            assert_eq!((s, v["code"].as_str()), (401, Some("invalid_credentials")), "{v}");
        }
    }
    assert_eq!(codes.get(&401), Some(&10), "the account's burst: {codes:?}");
    assert_eq!(codes.get(&429), Some(&40), "{codes:?}");
    let (s, _, _) = app.post("/api/v1/sessions", login("victim@example.com", "right-password"), &[]).await;
    assert_eq!(s, 429, "the account stays limited until the bucket refills");
    // The per-address bucket (30 a minute) has seen 53 log-ins by now: the next one is refused, whatever account
    // it names, and a made-up X-Forwarded-For does not make it another client.
    let (s, _, v) = app
        .post("/api/v1/sessions", login("nobody@example.com", "whatever-1"), &[("x-forwarded-for", "198.51.100.7")])
        .await;
    assert_eq!((s, v["code"].as_str()), (429, Some("rate_limited")), "{v}");
    app.handle.stop(true).await;
}

/// Behind a trusted proxy the client is the address in `X-Forwarded-For`: two clients of one proxy have buckets
/// of their own; a header from an untrusted peer is ignored (see the test above).
#[actix_rt::test]
async fn forwarded_for_names_the_client_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.rate_limits = "login=3,account=1000".parse().unwrap();
    })
    .await;
    let attempt = |xff: &'static str| {
        let app = &app;
        async move {
            app.post("/api/v1/sessions", login("x@example.com", "wrong-password"), &[("x-forwarded-for", xff)]).await.0
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("198.51.100.1").await, 401);
    }
    assert_eq!(attempt("198.51.100.1").await, 429);
    assert_eq!(attempt("198.51.100.2").await, 401, "another client of the proxy has its own bucket");
    assert_eq!(attempt("198.51.100.2, 127.0.0.1").await, 401, "the proxy's own hop is skipped");
    app.handle.stop(true).await;
}

/// Bearer-token routes are limited per token: one token over its limit does not hold another back.
#[actix_rt::test]
async fn bearer_tokens_are_limited_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |c| c.rate_limits = "token=20".parse().unwrap()).await;
    let get = |token: &'static str| {
        let app = &app;
        async move {
            let r = app.http.get(format!("{}/api/v1/ops/timers", app.url)).bearer_auth(token).send().await.unwrap();
            r.status().as_u16()
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(get("op-token").await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    assert_eq!(get("svc-token").await, 403, "another token is not limited by the first");
    app.handle.stop(true).await;
}

/// 1,000 SPI calls in about a second from one address are all answered by the SPI itself, none refused by a
/// rate limit: the marketplace calls from few addresses.
#[actix_rt::test]
async fn the_spi_is_not_limited_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |_| {}).await;
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for i in 0..50 {
            let id = format!("unknown-{chunk}-{i}");
            let mut p: Vec<(String, String)> = [
                ("action", "renewInstance"),
                ("instanceId", id.as_str()),
                ("orderId", "o-1"),
                ("expiredOn", "2030-01-01 00:00:00"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let token = spi_token(&p, ISV);
            p.push(("token".into(), token));
            batch.push(app.http.post(format!("{}/aliyun/spi", app.url)).form(&p).send());
        }
        for r in futures_util::future::join_all(batch).await {
            *statuses.entry(r.expect("an answer").status().as_u16()).or_default() += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(statuses.get(&200), Some(&1000), "{statuses:?} in {took:?}");
    eprintln!("1,000 SPI calls from one address in {took:?}");
    app.handle.stop(true).await;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment of a real service process (secrets long enough for production).
fn service(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_marketflow"));
    c.arg("serve")
        .env_clear()
        .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("MARKETFLOW_DATA_DIR", dir.join("data"))
        .env("MARKETFLOW_ALIYUN_ISV_KEY", PROCESS_ISV)
        .env("MARKETFLOW_ALIYUN_ENDPOINT", "http://127.0.0.1:9")
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "ak-id")
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "ak-secret")
        .env("MARKETFLOW_OPERATOR_TOKEN", "security-operator-token")
        .env("MARKETFLOW_SERVICE_TOKEN", "security-service-token")
        .stdin(Stdio::null());
    c
}

/// 100 log-ins at once: Argon2 runs in one slot per core with a bounded queue; whoever finds the queue full gets
/// 503 `busy` with `Retry-After` at once. The process's peak resident memory (VmHWM) stays under 300 MiB.
#[actix_rt::test]
async fn a_hundred_concurrent_logins_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = service(dir.path(), port)
        .env("MARKETFLOW_RATE_LIMITS", "login=100000,account=100000,register=100000,connections=1000")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reg = json!({"email": "many@example.com", "password": "right-password", "name": "Many"});
    assert_eq!(http.post(format!("{url}/api/v1/accounts")).json(&reg).send().await.unwrap().status(), 201);
    let logins = (0..100).map(|i| {
        let password = if i % 2 == 0 { "right-password" } else { "wrong-password" };
        http.post(format!("{url}/api/v1/sessions")).json(&login("many@example.com", password)).send()
    });
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (i, r) in futures_util::future::join_all(logins).await.into_iter().enumerate() {
        let r = r.expect("an answer");
        let s = r.status().as_u16();
        let expected = if i % 2 == 0 { 201 } else { 401 };
        assert!(s == expected || s == 503, "log-in {i}: {s}");
        if s == 503 {
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(r.json::<Value>().await.unwrap()["code"], "busy");
        }
        *statuses.entry(s).or_default() += 1;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("100 concurrent log-ins: {statuses:?}, peak RSS {} MiB", hwm_kib / 1024);
    assert!(hwm_kib < 300 * 1024, "peak RSS {} MiB", hwm_kib / 1024);
    let checked = statuses.get(&201).unwrap_or(&0) + statuses.get(&401).unwrap_or(&0);
    assert!(checked >= 32, "the queue's worth was checked: {statuses:?}");
    assert_eq!(checked + statuses.get(&503).unwrap_or(&0), 100, "every answer is a check or `busy`: {statuses:?}");
}

/// Outside `--dev`, start-up refuses a minted token shorter than 16 characters, an empty marketplace credential
/// and a development value, naming the variable, and exits non-zero without serving.
#[test]
fn weak_secrets_refuse_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, says) in [
        ("MARKETFLOW_OPERATOR_TOKEN", "short-token", "MARKETFLOW_OPERATOR_TOKEN is shorter than 16"),
        ("MARKETFLOW_SERVICE_TOKEN", "dev-service-token", "MARKETFLOW_SERVICE_TOKEN is a development value"),
        ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "", "MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET is empty"),
    ] {
        let port = free_port();
        let out = service(dir.path(), port).env(var, value).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value:?} started: {text}");
        assert!(text.contains(says), "{var}={value:?}: {text}");
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "nothing listens");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_marketflow"))
        .args(["serve", "--dev"])
        .env_clear()
        .env("MARKETFLOW_LISTEN", "0.0.0.0:0")
        .env("MARKETFLOW_DATA_DIR", dir.path().join("dev"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("--dev-allow-remote"), "{text}");
}

/// Every answer says `nosniff` and a referrer policy that sends nothing to other sites (`no-referrer` on the 免登
/// hand-off, whose URL is a credential); pages, the 免登 hand-off and API answers are `no-store` (the
/// assets keep their own caching); behind https every cookie is `Secure` and HSTS is set, over plain http not.
#[actix_rt::test]
async fn security_headers_on_every_answer() {
    for public_url in ["http://127.0.0.1:8080", "https://marketflow.example.com"] {
        let https = public_url.starts_with("https");
        let dir = tempfile::tempdir().unwrap();
        let app = spawn(dir.path(), |c| c.public_url = public_url.into()).await;
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        for path in [
            "/login",
            "/register",
            "/console/login",
            "/aliyun/sso?action=verify&instanceId=x",
            "/healthz",
            "/api/v1/orgs",
        ] {
            let r = client.get(format!("{}{path}", app.url)).send().await.unwrap();
            let h = r.headers();
            let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
            // Pages with forms keep `same-origin`: under `no-referrer` a browser sends `Origin: null` with a form's
            // POST, and the origin check would refuse every form. Their URLs carry no token.
            let referrer = get("referrer-policy");
            if path.starts_with("/aliyun/sso") || path.starts_with("/api/") || path == "/healthz" {
                assert_eq!(referrer, "no-referrer", "{path}");
            } else {
                assert!(["no-referrer", "same-origin"].contains(&referrer.as_str()), "{path}: {referrer}");
            }
            assert_eq!(get("cache-control"), "no-store", "{path}");
            assert_eq!(h.contains_key("strict-transport-security"), https, "{public_url}{path}");
            for c in h.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
                assert_eq!(c.contains("Secure"), https, "{public_url}{path}: {c}");
            }
            if path == "/login" {
                assert!(h.get_all("set-cookie").iter().count() > 0, "the login page sets its CSRF cookie");
            }
        }
        let css = client.get(format!("{}/assets/app.css", app.url)).send().await.unwrap();
        assert_eq!(css.status(), 200);
        assert_ne!(css.headers()["cache-control"], "no-store", "assets keep their caching");
        assert_eq!(css.headers()["x-content-type-options"], "nosniff");
        app.handle.stop(true).await;
    }
}

/// A body trickled slower than `MARKETFLOW_BODY_TIMEOUT` is cut off: `408 request_timeout`, and nothing stored.
#[actix_rt::test]
async fn a_body_must_arrive_within_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |c| c.body_timeout = Duration::from_millis(800)).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = "POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(br#"{"email": "slow@example.com", "#).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    let (s, _, _) = app.post("/api/v1/sessions", login("slow@example.com", "right-password"), &[]).await;
    assert_eq!(s, 401, "no account was made");
    app.handle.stop(true).await;
}

/// `/api/v1` takes the session as a bearer token only: the pages' cookie does not open it (a page of another
/// site can make a browser send a cookie, never a header). The pages' own routes keep the cookie.
#[actix_rt::test]
async fn the_json_api_takes_bearer_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |_| {}).await;
    app.register("cookie@example.com").await;
    let (s, _, v) = app.post("/api/v1/sessions", login("cookie@example.com", "right-password"), &[]).await;
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let cookie = format!("mf_session={token}");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let by_cookie = client.get(format!("{}/api/v1/orgs", app.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(by_cookie.status(), 401);
    let by_bearer = client.get(format!("{}/api/v1/orgs", app.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(by_bearer.status(), 200);
    // The processing page polls its own route with the cookie: a subscription not hers reads as not found,
    // not as "log in first".
    let page = client.get(format!("{}/bind/i-unknown/status", app.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 404);
    let anonymous = client.get(format!("{}/bind/i-unknown/status", app.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 303, "without a session: to the login page");
    app.handle.stop(true).await;
}

/// A client address has a bounded number of open connections: past the cap, every request on a further
/// connection is refused (`429 too_many_connections`) and the connection closed; closing one frees a place.
#[actix_rt::test]
async fn open_connections_are_capped_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |c| c.rate_limits = "connections=5".parse().unwrap()).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let statuses = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let ask = |s: &mut std::net::TcpStream| -> String {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap_or("none").to_string()
        };
        let connect = || {
            let s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        let mut open: Vec<_> = (0..5).map(|_| connect()).collect();
        let mut seen: Vec<String> = open.iter_mut().map(ask).collect();
        let mut extra = connect();
        seen.push(ask(&mut extra));
        // The refused connection is closed by the service.
        let mut rest = Vec::new();
        let closed = extra.read_to_end(&mut rest).map(|_| "closed").unwrap_or("open");
        drop(open.remove(0));
        std::thread::sleep(Duration::from_millis(200));
        let mut again = connect();
        seen.push(ask(&mut again));
        (seen, closed)
    })
    .await
    .unwrap();
    let (seen, closed) = statuses;
    assert_eq!(seen[..5], ["200", "200", "200", "200", "200"], "{seen:?}");
    assert_eq!(seen[5], "429", "{seen:?}");
    assert_eq!(closed, "closed");
    assert_eq!(seen[6], "200", "a closed connection frees its place: {seen:?}");
    app.handle.stop(true).await;
}

/// `serve --dev` prints where the service and its console are and the secrets it made up to standard output,
/// and never to the log; without an SMTP server it prints a new account's verification link there too, and the
/// link works.
#[actix_rt::test]
async fn dev_mode_prints_its_made_up_secrets_to_stdout_only() {
    let dir = tempfile::tempdir().unwrap();
    let (port, sim) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketflow"))
        .args(["serve", "--dev"])
        .env_clear()
        .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("MARKETFLOW_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("MARKETFLOW_SIMULATOR_LISTEN", format!("127.0.0.1:{sim}"))
        .env("MARKETFLOW_DATA_DIR", dir.path().join("data"))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stdout = loop {
        let text = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
        if text.contains("MARKETFLOW_SERVICE_TOKEN=") {
            break text;
        }
        assert!(Instant::now() < deadline, "no banner: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let http = reqwest::Client::new();
    let body = serde_json::json!({"email": "dev@example.com", "password": "correct horse battery", "name": "Dev"});
    let r = http.post(format!("http://127.0.0.1:{port}/api/v1/accounts")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let link = loop {
        let text = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("mail to dev@example.com")) {
            break line.rsplit(' ').next().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "no verification link on stdout: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(link.starts_with(&format!("http://127.0.0.1:{port}/verify-email?token=")), "{link}");
    assert_eq!(http.get(&link).send().await.unwrap().status().as_u16(), 200);
    let token = link.rsplit('=').next().unwrap_or_default().to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert!(stdout.contains(&format!("http://127.0.0.1:{port}/console")), "{stdout}");
    assert!(stdout.contains("MARKETFLOW_OPERATOR_TOKEN=dev-operator-token"), "{stdout}");
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    for secret in ["dev-operator-token", "dev-service-token", "dev-isv-key", "dev-access-key-secret", &token] {
        assert!(!log.contains(secret), "`{secret}` in the log");
    }
}

/// A made-up bearer token per request does not escape the address's limit (only the tokens the configuration
/// knows have buckets of their own), and a percent-encoded path is classed as the route it reaches.
#[actix_rt::test]
async fn made_up_tokens_and_encoded_paths_do_not_escape_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), |c| c.rate_limits = "address=10,login=3,account=1000".parse().unwrap()).await;
    let mut statuses = Vec::new();
    for i in 0..15 {
        let r = app.http.get(format!("{}/api/v1/orgs", app.url)).bearer_auth(format!("made-up-{i}")).send().await;
        statuses.push(r.unwrap().status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    let mut logins = Vec::new();
    for path in ["/api/v1/%73essions", "/api/v1/sessions", "/api/v1/%73ession%73", "/api/v1/sessions"] {
        logins.push(app.post(path, login("enc@example.com", "wrong-password"), &[]).await.0);
    }
    assert_eq!(logins, [401, 401, 401, 429], "the encoded spellings count as log-ins");
    app.handle.stop(true).await;
}
