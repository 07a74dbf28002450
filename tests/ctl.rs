//! `marketflow ctl`, black-box: the real service on a port of its own, on a manual clock so that timers stand
//! still while the CLI reads them; subscriptions created through the marketplace SPI (signed as the marketplace
//! signs it); every command parsed from argv the way the binary parses it, its output read as an operator would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::Parser;
use marketflow::aliyun::token::spi_token;
use marketflow::clock::{Clock, ManualClock};
use marketflow::config::{Config, Secret};
use marketflow::ctl::{self, CtlArgs};
use marketflow::startup::Application;
use serde_json::Value;

const ISV: &str = "ctl-isv-key";
const OP: &str = "ctl-operator-token";
const SVC: &str = "ctl-service-token";

/// The binary's `ctl` flags, as `main` flattens them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CtlArgs,
}

struct Service {
    url: String,
    clock: ManualClock,
    handle: actix_web::dev::ServerHandle,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Starts the service on port 0. Its marketplace endpoint is a closed port, so `describe_instance` fails
/// (retryably) when the activation poll runs: an entity with a pending call and a last error.
async fn start() -> Service {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap());
    let config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        isv_key: Some(Secret::new(ISV)),
        aliyun_endpoint: "http://127.0.0.1:9".into(),
        access_key_id: Some("ctl-ak".into()),
        access_key_secret: Some(Secret::new("ctl-ak-secret")),
        operator_token: Some(Secret::new(OP)),
        service_token: Some(Secret::new(SVC)),
        ..Config::default()
    };
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let app = Application::build_with_clock(config, Some(shared)).await.expect("the service starts");
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    Service { url, clock, handle, http: reqwest::Client::new(), _dir: dir }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Service {
    /// Calls the SPI as the marketplace does (MD5 token over the parameters).
    async fn spi(&self, params: &[(&str, &str)]) -> Value {
        let pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        q.push(format!("token={}", spi_token(&pairs, ISV)));
        let r = self.http.get(format!("{}/aliyun/spi?{}", self.url, q.join("&"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn create(&self, id: &str) {
        let v = self
            .spi(&[
                ("action", "createInstance"),
                ("aliUid", "100000009"),
                ("orderBizId", id),
                ("orderId", &format!("88{id}")),
                ("productCode", "cmgj00063418"),
                ("skuId", "payg"),
                ("trial", "false"),
                ("expiredOn", "2099-01-01 00:00:00"),
            ])
            .await;
        assert_eq!(v["instanceId"], id, "{v}");
    }

    /// Two subscriptions: `91001` opening (two timers pending), `91002` released (terminal, no timers).
    async fn with_two_subscriptions(&self) {
        self.create("91001").await;
        self.create("91002").await;
        let v = self.spi(&[("action", "releaseInstance"), ("instanceId", "91002")]).await;
        assert_eq!(v["success"], true, "{v}");
    }

    fn parse(&self, argv: &[&str]) -> CtlArgs {
        let mut full = vec!["ctl", "--url", &self.url, "--token", OP, "--operator", "alice"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full) {
            Ok(c) => c.args,
            Err(e) => panic!("{argv:?} does not parse: {e}"),
        }
    }

    async fn try_ctl(&self, argv: &[&str]) -> Result<String, ctl::Error> {
        run(self.parse(argv)).await
    }

    async fn ctl(&self, argv: &[&str]) -> String {
        match self.try_ctl(argv).await {
            Ok(s) => s,
            Err(e) => panic!("ctl {argv:?} failed: {e}"),
        }
    }

    async fn ctl_json(&self, argv: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(argv);
        let s = self.ctl(&full).await;
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    async fn entity(&self) -> Value {
        self.ctl_json(&["entity", "show", "subscription/91001"]).await
    }

    async fn stop(self) {
        self.handle.stop(true).await;
    }
}

async fn run(args: CtlArgs) -> Result<String, ctl::Error> {
    let mut buf = Vec::new();
    ctl::run(args, &mut buf).await?;
    Ok(String::from_utf8(buf).expect("the output is UTF-8"))
}

/// The line of `out` that mentions `needle`.
fn line<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{out}"))
}

/// The ids in the first column of a table (`kind/id`).
fn listed(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("subscription/"))
        .map(|l| l.split_whitespace().next().unwrap_or("").into())
        .collect()
}

#[actix_rt::test]
async fn entities_list_filters_pages_and_prints_json() {
    let s = start().await;
    s.with_two_subscriptions().await;

    let all = s.ctl(&["entities", "list"]).await;
    assert_eq!(listed(&all), ["subscription/91001", "subscription/91002"], "{all}");
    // Columns line up: every row's state starts under the STATE header.
    let header = line(&all, "ENTITY");
    let col = header.find("STATE").unwrap();
    assert_eq!(&line(&all, "91001")[col..col + "opening".len()], "opening", "{all}");
    assert_eq!(&line(&all, "91002")[col..col + "released".len()], "released", "{all}");
    assert!(line(&all, "91001").contains("subscription@2"), "{all}");
    assert!(line(&all, "91001").contains("activation-poll in 1 min (+1 more)"), "{all}");
    assert!(all.contains("2 entities"), "{all}");
    assert!(all.lines().all(|l| l == l.trim_end()), "no trailing blanks:\n{all}");

    let opening = s.ctl(&["entities", "list", "--state", "opening"]).await;
    assert_eq!(listed(&opening), ["subscription/91001"], "{opening}");
    let released = s.ctl(&["entities", "list", "--kind", "subscription", "--state", "released"]).await;
    assert_eq!(listed(&released), ["subscription/91002"], "{released}");
    let waiting = s.ctl(&["entities", "list", "--waiting-on-timer"]).await;
    assert_eq!(listed(&waiting), ["subscription/91001"], "{waiting}");
    let attention = s.ctl(&["entities", "list", "--needs-attention"]).await;
    assert_eq!(attention.trim(), "no entities match");
    let long = s.ctl(&["entities", "list", "--min-time-in-state", "10m"]).await;
    assert_eq!(long.trim(), "no entities match", "nothing has been anywhere 10 minutes yet");
    s.clock.advance(Duration::from_secs(10));
    let short = s.ctl(&["entities", "list", "--min-time-in-state", "5s", "--state", "released"]).await;
    assert_eq!(listed(&short), ["subscription/91002"], "{short}");
    assert!(line(&short, "91002").contains("10 s"), "time in state on the service's clock: {short}");

    // Paging: one page and its cursor, or every page with --all.
    let page = s.ctl(&["entities", "list", "--limit", "1"]).await;
    assert_eq!(listed(&page), ["subscription/91001"], "{page}");
    assert!(page.contains("more: --cursor subscription/91001"), "{page}");
    let next = s.ctl(&["entities", "list", "--limit", "1", "--cursor", "subscription/91001"]).await;
    assert_eq!(listed(&next), ["subscription/91002"], "{next}");
    let every = s.ctl(&["entities", "list", "--limit", "1", "--all"]).await;
    assert_eq!(listed(&every), ["subscription/91001", "subscription/91002"], "{every}");
    assert!(!every.contains("more:"), "{every}");

    // JSON: the service's answer as it is; --all joins the pages.
    let json = s.ctl_json(&["entities", "list", "--state", "opening"]).await;
    assert_eq!(json["items"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["items"][0]["id"], "91001");
    assert_eq!(json["items"][0]["timers"][0]["name"], "activation-deadline");
    assert!(json["next_cursor"].is_null());
    let json = s.ctl_json(&["entities", "list", "--limit", "1", "--all"]).await;
    let ids: Vec<&str> = json["items"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["91001", "91002"]);

    // The service's refusals come with its code and message.
    let err = s.try_ctl(&["entities", "list", "--kind", "nope"]).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ctl::Error::Server { .. }), "{err:?}");
    assert!(msg.contains("400") && msg.contains("unknown_kind") && msg.contains("no entity kind `nope`"), "{msg}");
    s.stop().await;
}

#[actix_rt::test]
async fn entity_show_and_journal_say_where_it_stands_and_why() {
    let s = start().await;
    s.with_two_subscriptions().await;

    let show = s.ctl(&["entity", "show", "subscription/91001"]).await;
    assert_eq!(show.lines().next(), Some("subscription/91001"), "{show}");
    assert!(line(&show, "state").contains("opening  (for 0 s, since 2026-11-27T08:00:00Z)"), "{show}");
    assert!(line(&show, "definition").contains("subscription@2"), "{show}");
    assert!(line(&show, "paused").ends_with("no"), "{show}");
    assert!(line(&show, "needs attention").ends_with("no"), "{show}");
    assert!(line(&show, "activation-poll").contains("2026-11-27T08:01:00Z  in 1 min"), "{show}");
    assert!(line(&show, "activation-deadline").contains("in 15 min"), "{show}");
    assert!(show.contains("Pending calls: none"), "{show}");
    let data = &show[show.find("\nData\n").expect("a data section") + 6..];
    let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("data is pretty JSON ({e}): {show}"));
    assert!(data.is_object(), "{data}");

    let json = s.entity().await;
    assert_eq!(json["state"], "opening");
    assert_eq!(json["definition"], "subscription");
    assert_eq!(json["timers"].as_array().map(Vec::len), Some(2));

    // A minute on, the activation poll calls the marketplace, which is unreachable: a call waits on its retry.
    s.clock.advance(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.entity().await["pending_calls"][0]["status"] != "retrying" {
        assert!(Instant::now() < deadline, "the poll never failed: {}", s.entity().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let show = s.ctl(&["entity", "show", "subscription/91001"]).await;
    let call = line(&show, "describe_instance");
    assert!(call.contains("retrying"), "{show}");
    assert!(call.contains("  1  "), "one attempt so far: {show}");
    assert!(call.contains("(in 5 s)"), "the next retry and when: {show}");
    let last_error = line(&show, "last error");
    assert!(!last_error.ends_with(" -"), "the call's error is shown: {show}");
    assert!(show.contains("retry:"), "the retry is a timer too: {show}");
    assert!(line(&show, "state").contains("(for 1 min,"), "{show}");

    let journal = s.ctl(&["entity", "journal", "subscription/91001"]).await;
    let header = line(&journal, "SEQ");
    for col in ["AT", "EVENT", "TRANSITION", "STATUS", "CAUSE", "NOTES"] {
        assert!(header.contains(col), "{journal}");
    }
    let create = line(&journal, "create");
    assert!(create.starts_with("1  ") && create.contains("new → opening"), "{journal}");
    assert!(create.contains("accepted") && create.contains("marketplace SPI createInstance"), "{journal}");
    assert!(line(&journal, "activation-poll").contains("timer activation-poll"), "{journal}");
    let after = s.ctl(&["entity", "journal", "subscription/91001", "--after", "1", "--limit", "1"]).await;
    assert!(!after.contains("new → opening"), "{after}");
    assert!(after.contains("more: --after 2"), "{after}");
    let json = s.ctl_json(&["entity", "journal", "subscription/91001", "--limit", "1"]).await;
    assert_eq!(json["items"][0]["event"], "create");
    assert_eq!(json["next_cursor"], "1");

    // An unknown entity is named; a malformed one is refused before anything is sent.
    for argv in [&["entity", "show", "subscription/nope"][..], &["entity", "journal", "subscription/nope"]] {
        let err = s.try_ctl(argv).await.unwrap_err();
        assert!(matches!(err, ctl::Error::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), "no subscription `nope`");
    }
    let bad = Cli::try_parse_from(["ctl", "entity", "show", "subscription"]).err().expect("refused");
    assert!(bad.to_string().contains("kind/id"), "{bad}");
    s.stop().await;
}

#[actix_rt::test]
async fn timers_soonest_first_with_their_remaining_time() {
    let s = start().await;
    s.with_two_subscriptions().await;

    let out = s.ctl(&["timers"]).await;
    assert_eq!(out.lines().next(), Some("service time 2026-11-27T08:00:00Z"), "{out}");
    let header = line(&out, "NAME");
    for col in ["ENTITY", "DUE", "REMAINING"] {
        assert!(header.contains(col), "{out}");
    }
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("subscription/91001")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].starts_with("activation-poll") && rows[0].ends_with("2026-11-27T08:01:00Z  in 1 min"), "{out}");
    assert!(rows[1].starts_with("activation-deadline") && rows[1].ends_with("in 15 min"), "{out}");
    let col = header.find("REMAINING").unwrap();
    assert_eq!(&rows[1][col..], "in 15 min", "aligned: {out}");
    assert!(out.contains("2 pending timers"), "{out}");

    // --due-before: a span from the service's now (not this machine's), or a point in time.
    let soon = s.ctl(&["timers", "--due-before", "+5m"]).await;
    assert!(soon.contains("activation-poll") && !soon.contains("activation-deadline"), "{soon}");
    assert!(soon.contains("1 pending timer due before 2026-11-27T08:05:00Z"), "{soon}");
    let at = s.ctl(&["timers", "--due-before", "2026-11-27T08:20:00Z"]).await;
    assert!(at.contains("activation-poll") && at.contains("activation-deadline"), "{at}");
    let none = s.ctl(&["timers", "--due-before", "2026-11-27T08:00:30Z"]).await;
    assert!(none.contains("no pending timers due before 2026-11-27T08:00:30Z"), "{none}");
    assert!(Cli::try_parse_from(["ctl", "timers", "--due-before", "soon"]).is_err());

    let json = s.ctl_json(&["timers", "--limit", "1"]).await;
    assert_eq!(json["items"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["items"][0]["name"], "activation-poll");
    assert_eq!(json["items"][0]["remaining_seconds"], 60);
    assert!(json["now"].is_string());
    s.stop().await;
}

#[actix_rt::test]
async fn refusals_name_the_token_and_never_print_it() {
    let s = start().await;
    for argv in [&["entities", "list"][..], &["entity", "show", "subscription/1"], &["timers"]] {
        // No token at all (whatever this machine's environment holds).
        let mut args = s.parse(argv);
        args.token = None;
        let err = run(args).await.unwrap_err();
        assert!(matches!(err, ctl::Error::NoToken), "{err:?}");
        assert!(err.to_string().contains("MARKETFLOW_OPERATOR_TOKEN"), "{err}");

        let mut args = s.parse(argv);
        args.token = Some(Secret::new("not-the-operator-token"));
        let err = run(args).await.unwrap_err();
        assert_eq!(err.to_string(), "the operator token was refused (set MARKETFLOW_OPERATOR_TOKEN)");
        assert!(!format!("{err} {err:?}").contains("not-the-operator-token"));

        // The service's own token is a valid token, but not an operator's.
        let mut args = s.parse(argv);
        args.token = Some(Secret::new(SVC));
        let err = run(args).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ctl::Error::Forbidden { .. }), "{err:?}");
        assert!(msg.contains("operator token") && !msg.contains(SVC), "{msg}");
    }

    // Nothing listening: the URL is named, with what to do.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}");
    let cli = Cli::try_parse_from(["ctl", "--url", &url, "--token", OP, "timers"]).unwrap();
    let err = run(cli.args).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ctl::Error::Connect { .. }), "{err:?}");
    assert!(msg.contains(&format!("cannot connect to {url}")) && msg.contains("MARKETFLOW_URL"), "{msg}");
    assert!(!msg.contains(OP));
    let cli = Cli::try_parse_from(["ctl", "--url", "not a url", "--token", OP, "timers"]).unwrap();
    assert!(matches!(run(cli.args).await, Err(ctl::Error::InvalidUrl { .. })));
    s.stop().await;
}

#[actix_rt::test]
async fn an_action_the_service_cannot_find_is_a_clear_404() {
    let s = start().await;
    // Unknown entity: 404 whether or not this service has the actions route yet.
    let err = s.try_ctl(&["action", "subscription/nope", "retry", "--reason", "stuck", "--call", "c-1"]).await;
    let err = err.unwrap_err();
    let msg = err.to_string();
    match &err {
        ctl::Error::NoSuchRoute { method, path, .. } => {
            assert_eq!(
                (method.as_str(), path.as_str()),
                ("POST", "/api/v1/ops/entities/subscription/nope/actions/retry")
            );
            assert!(msg.contains("404") && msg.contains("has no route"), "{msg}");
        }
        ctl::Error::NotFound { .. } => assert!(msg.contains("nope"), "{msg}"),
        other => panic!("not a 404: {other:?}"),
    }
    s.stop().await;
}

/// What `ctl action` sends, checked against a stand-in for the (future) actions route.
#[actix_rt::test]
async fn an_action_posts_the_reason_call_and_operator_and_prints_the_answer() {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    async fn echo(req: HttpRequest, path: web::Path<(String, String, String)>, body: web::Json<Value>) -> HttpResponse {
        let header = |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (kind, id, action) = path.into_inner();
        HttpResponse::Ok().json(serde_json::json!({
            "entity": format!("{kind}/{id}"), "action": action, "reason": body["reason"], "call_id": body["call_id"],
            "operator": header("x-operator"), "authorized": header("authorization") == format!("Bearer {OP}"),
        }))
    }
    let server =
        HttpServer::new(|| App::new().route("/api/v1/ops/entities/{kind}/{id}/actions/{action}", web::post().to(echo)))
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
    let url = format!("http://127.0.0.1:{}", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let argv = ["ctl", "--url", &url, "--token", OP, "--operator", "alice", "action", "subscription/7", "retry"];
    let mut with_flags = argv.to_vec();
    with_flags.extend(["--reason", "poll stuck", "--call", "c-42"]);
    let out = run(Cli::try_parse_from(&with_flags).unwrap().args).await.unwrap();
    assert_eq!(out.lines().next(), Some("retry subscription/7: done"), "{out}");
    assert!(line(&out, "reason").ends_with("poll stuck"), "{out}");
    assert!(line(&out, "call_id").ends_with("c-42"), "{out}");
    assert!(line(&out, "operator").ends_with("alice"), "{out}");
    assert!(line(&out, "authorized").ends_with("true"), "{out}");

    let mut json = argv.to_vec();
    json.extend(["--output", "json"]);
    let out = run(Cli::try_parse_from(&json).unwrap().args).await.unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entity"], "subscription/7");
    assert!(v["reason"].is_null() && v["call_id"].is_null(), "{v}");
    handle.stop(true).await;
}
