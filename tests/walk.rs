//! The black-box walk of issue 5 on a scaled clock: the service and the local marketplace (simulator) in this
//! process on real ports, sharing one `ScaledClock` at 600x (one service minute is 0.1 s, the one-hour switch
//! window 6 s), driven only through HTTP: the JSON API, the simulator's `/sim/` buyer API and the 免登 link.
//!
//! Account A subscribes and binds → A closes the subscription (release): the window opens → account B subscribes
//! and binds within the window: the switch A → B → B runs out of balance (expiredInstance): frozen for arrears →
//! account C subscribes and binds: recovered, active. At each step the billing overview (`status`,
//! `frozen_reason`, `payment_channel`, `switch_deadline`, `recovery`) and its `history` are checked; at the end,
//! once service time is past the deadline of the window B closed, the window's timer must not have fired.
//!
//! Waiting on a scaled clock is real waiting: every wait polls with short sleeps up to a deadline, and the
//! whole walk takes about 7 s (most of it waiting for the closed window's deadline to pass).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use marketflow::aliyun::simulator::{self, RunningSimulator, SimulatorConfig};
use marketflow::clock::{Clock, ScaledClock};
use marketflow::config::{Config, Secret};
use marketflow::startup::{Application, Overrides};
use reqwest::Method;
use serde_json::{json, Value};

const SCALE: f64 = 600.0;
const ISV: &str = "walk-isv-key";
const AK: &str = "walk-ak";
const AK_SECRET: &str = "walk-ak-secret";
const OP: &str = "walk-operator";
const A: &str = "1000000000000101";
const B: &str = "1000000000000102";
const C: &str = "1000000000000103";
/// Real-time limit of one wait; generous, two cores are shared with other builds.
const WAIT: Duration = Duration::from_secs(10);

struct Walk {
    clock: Arc<ScaledClock>,
    service: String,
    sim_url: String,
    app: actix_web::dev::ServerHandle,
    sim: Option<RunningSimulator>,
    http: reqwest::Client,
    started: Instant,
    /// What happened so far, printed with a failure.
    steps: Vec<String>,
}

struct User {
    token: String,
    org: String,
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn kinds(bill: &Value) -> Vec<String> {
    let history = bill["history"].as_array().cloned().unwrap_or_default();
    history.iter().map(|h| h["kind"].as_str().unwrap_or("?").to_string()).collect()
}

impl Walk {
    async fn start(dir: &std::path::Path) -> Walk {
        let start = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let clock = Arc::new(ScaledClock::new(start, SCALE));
        // The service's listener first, so the simulator knows where to call.
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let service = format!("http://127.0.0.1:{}", listener.local_addr().expect("an address").port());
        let shared: Arc<dyn Clock> = clock.clone();
        let mut sc =
            SimulatorConfig::new(service.clone(), Secret::new(ISV), AK, Secret::new(AK_SECRET), shared.clone());
        sc.seed = Some(5);
        let sim = simulator::start(sc).await.expect("the simulator starts");
        let sim_url = sim.base_url().trim_end_matches('/').to_string();
        let config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.join("data"),
            public_url: service.clone(),
            isv_key: Some(Secret::new(ISV)),
            aliyun_endpoint: sim_url.clone(),
            access_key_id: Some(AK.into()),
            access_key_secret: Some(Secret::new(AK_SECRET)),
            operator_token: Some(Secret::new(OP)),
            service_token: Some(Secret::new("walk-service")),
            time_scale: SCALE,
            // One service hour is 6 s here: the 免登 link must survive a busy machine's scheduling delays.
            sso_window: Duration::from_secs(3600),
            ..Config::default()
        };
        let overrides = Overrides { clock: Some(shared), listener: Some(listener) };
        let app = Application::build_with(config, overrides).await.expect("the service starts");
        let handle = app.handle();
        actix_rt::spawn(app.run_until_stopped());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        Walk { clock, service, sim_url, app: handle, sim: Some(sim), http, started: Instant::now(), steps: vec![] }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn step(&mut self, what: &str) {
        let line = format!("{:>6.2} s real, service {}: {what}", self.started.elapsed().as_secs_f64(), self.now());
        println!("walk: {line}");
        self.steps.push(line);
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\nthe walk so far:\n  {}", self.steps.join("\n  "))
    }

    fn check(&self, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.fail(what);
        }
    }

    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method.clone(), format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = match r.send().await {
            Ok(r) => r,
            Err(e) => self.fail(format!("{method} {base}{path}: no answer: {e}")),
        };
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call(&self.service, method, path, token, body).await
    }

    async fn expect(&self, status: u16, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (s, v) = self.api(method.clone(), path, token, body).await;
        self.check(s == status, format!("{method} {path}: expected {status}, got {s} {v}"));
        v
    }

    async fn sim(&self, method: Method, path: &str) -> Value {
        let (s, v) = self.call(&self.sim_url, method.clone(), path, None, None).await;
        self.check((200..300).contains(&s), format!("simulator {method} {path}: {s} {v}"));
        v
    }

    async fn user(&self, name: &str) -> User {
        let email = format!("{name}@example.com");
        let body = json!({"email": email, "password": "correct horse battery", "name": name});
        let reg = self.expect(201, Method::POST, "/api/v1/accounts", None, Some(body)).await;
        let body = json!({"email": email, "password": "correct horse battery"});
        let login = self.expect(201, Method::POST, "/api/v1/sessions", None, Some(body)).await;
        User {
            token: login["token"].as_str().expect("a session token").to_string(),
            org: reg["org_id"].as_str().expect("a home organization").to_string(),
        }
    }

    async fn entity(&self, kind: &str, id: &str) -> Value {
        self.expect(200, Method::GET, &format!("/api/v1/ops/entities/{kind}/{id}"), Some(OP), None).await
    }

    /// Polls the ops API until the entity is in `state`.
    async fn wait_state(&self, kind: &str, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (s, e) = self.api(Method::GET, &format!("/api/v1/ops/entities/{kind}/{id}"), Some(OP), None).await;
            if s == 200 && e["state"] == state {
                return e;
            }
            if Instant::now() > deadline {
                self.fail(format!("{kind} {id} never reached {state} within {WAIT:?}: {s} {e}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn billing(&self, user: &User) -> Value {
        self.expect(200, Method::GET, &format!("/api/v1/orgs/{}/billing", user.org), Some(&user.token), None).await
    }

    /// The buyer opens a subscription in the marketplace (OPENED after one service minute); waits until the
    /// service has it active.
    async fn subscribe(&self, ali_uid: &str) -> String {
        let body = json!({"ali_uid": ali_uid, "activation_after_seconds": 60});
        let (s, v) = self.call(&self.sim_url, Method::POST, "/sim/instances", None, Some(body)).await;
        self.check(s == 201, format!("opening an instance: {s} {v}"));
        let id = v["order_biz_id"].as_str().expect("an orderBizId").to_string();
        self.wait_state("subscription", &id, "active").await;
        id
    }

    /// 免登 with the user's session, then 确认绑定 for the user's organization; waits for the decision.
    async fn bind(&self, user: &User, sub: &str) {
        let v = self.sim(Method::GET, &format!("/sim/instances/{sub}/sso-url")).await;
        let url = v["url"].as_str().expect("a 免登 url");
        let r = match self.http.get(url).bearer_auth(&user.token).send().await {
            Ok(r) => r,
            Err(e) => self.fail(format!("免登 of {sub}: {e}")),
        };
        let location = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
        self.check(
            r.status() == 302 && location == format!("/bind/{sub}"),
            format!("免登 of {sub}: {} to {location:?}", r.status()),
        );
        let path = format!("/api/v1/marketplace/aliyun/subscriptions/{sub}");
        let opts = self.expect(200, Method::GET, &format!("{path}/binding-options"), Some(&user.token), None).await;
        let mine = opts["orgs"].as_array().and_then(|o| o.iter().find(|o| o["org_id"] == user.org.as_str()).cloned());
        self.check(
            opts["can_confirm"] == true && mine.is_some_and(|o| o["bindable"] == true),
            format!("the organization is bindable: {opts}"),
        );
        let body = json!({"org_id": user.org});
        let b = self.expect(202, Method::POST, &format!("{path}/binding"), Some(&user.token), Some(body)).await;
        self.check(b["status"] == "pending", format!("binding answers processing: {b}"));
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.expect(200, Method::GET, &path, Some(&user.token), None).await;
            match v["binding"]["status"].as_str() {
                Some("bound") => {
                    self.check(v["org_id"] == user.org.as_str(), format!("bound to the organization: {v}"));
                    break;
                }
                Some("pending") if Instant::now() < deadline => {}
                _ => self.fail(format!("the binding of {sub} was not made: {v}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.wait_state("organization", &user.org, "bound").await;
    }

    async fn journal_events(&self, kind: &str, id: &str) -> Vec<String> {
        let path = format!("/api/v1/ops/entities/{kind}/{id}/journal?limit=1000");
        let j = self.expect(200, Method::GET, &path, Some(OP), None).await;
        let items = j["items"].as_array().cloned().unwrap_or_default();
        items.iter().map(|e| e["event"].as_str().unwrap_or("?").to_string()).collect()
    }

    async fn shutdown(mut self) {
        self.app.stop(true).await;
        if let Some(s) = self.sim.take() {
            let _ = s.stop().await;
        }
    }
}

#[actix_rt::test]
async fn a_release_b_within_the_window_b_in_arrears_then_c_on_a_scaled_clock() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut w = Walk::start(dir.path()).await;
    let u = w.user("walker").await;
    let hour = TimeDelta::hours(1);

    // A subscribes and binds.
    let sa = w.subscribe(A).await;
    w.bind(&u, &sa).await;
    w.step(&format!("A's subscription {sa} bound"));
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "active" && bill["frozen_reason"].is_null(), format!("active: {bill}"));
    w.check(bill["payment_channel"]["aliyun_account_id"] == A, format!("A pays: {bill}"));
    w.check(bill["payment_channel"]["instance_id"] == sa.as_str(), format!("A's instance: {bill}"));
    w.check(bill["payment_channel"]["label"] == "云市场扣费渠道", format!("the channel's label: {bill}"));
    w.check(bill["switch_deadline"].is_null(), format!("no window: {bill}"));
    w.check(kinds(&bill) == ["bound"], format!("history: {bill}"));
    w.check(bill["history"][0]["aliyun_account_id"] == A, format!("history: {bill}"));

    // A closes the subscription: released, the organization keeps running and the one-hour window opens.
    w.sim(Method::POST, &format!("/sim/instances/{sa}/close")).await;
    w.wait_state("subscription", &sa, "released").await;
    let org = w.wait_state("organization", &u.org, "window").await;
    w.step("A released: the switch window is open");
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "active" && bill["frozen_reason"].is_null(), format!("active in the window: {bill}"));
    w.check(bill["payment_channel"].is_null(), format!("A's channel is gone: {bill}"));
    w.check(kinds(&bill) == ["bound", "released"], format!("history: {bill}"));
    let released = &bill["history"][1];
    w.check(released["aliyun_account_id"] == A && released["instance_id"] == sa.as_str(), format!("{bill}"));
    let (Some(deadline), Some(released_at)) = (parse_time(&bill["switch_deadline"]), parse_time(&released["at"]))
    else {
        w.fail(format!("a switch deadline and a release time: {bill}"))
    };
    w.check(deadline - released_at == hour, format!("the window is one hour from the release: {bill}"));
    w.check(w.now() < deadline, format!("the window is still open at {}: {bill}", w.now()));
    let timers = org["timers"].as_array().cloned().unwrap_or_default();
    w.check(
        timers.iter().any(|t| t["name"] == "switch-window" && parse_time(&t["due"]) == Some(deadline)),
        format!("the window's timer is due at the deadline: {org}"),
    );

    // B subscribes and binds within the window: the switch A → B.
    let sb = w.subscribe(B).await;
    w.bind(&u, &sb).await;
    let bound_b = w.now();
    w.step(&format!(
        "B's subscription {sb} bound, {} service min before the deadline",
        (deadline - bound_b).num_minutes()
    ));
    w.check(bound_b < deadline, format!("B was bound within the window ({bound_b} < {deadline})"));
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "active" && bill["frozen_reason"].is_null(), format!("active: {bill}"));
    w.check(bill["payment_channel"]["aliyun_account_id"] == B, format!("B pays: {bill}"));
    w.check(bill["payment_channel"]["instance_id"] == sb.as_str(), format!("B's instance: {bill}"));
    w.check(bill["switch_deadline"].is_null(), format!("the window is closed: {bill}"));
    w.check(kinds(&bill) == ["bound", "released", "switched"], format!("history: {bill}"));
    let switched = &bill["history"][2];
    w.check(
        switched["from_aliyun_account_id"] == A && switched["aliyun_account_id"] == B,
        format!("the switch is recorded A → B: {bill}"),
    );
    w.check(
        parse_time(&switched["at"]).is_some_and(|t| released_at <= t && t < deadline),
        format!("the switch is within the window: {bill}"),
    );
    let org = w.entity("organization", &u.org).await;
    w.check(org["timers"].as_array().is_some_and(|t| t.is_empty()), format!("the window's timer is cancelled: {org}"));

    // B runs out of balance: expiredInstance freezes the organization at once, for arrears.
    w.sim(Method::POST, &format!("/sim/instances/{sb}/expire")).await;
    w.wait_state("subscription", &sb, "expired").await;
    w.wait_state("organization", &u.org, "frozen").await;
    w.step("B expired: the organization is frozen");
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "frozen" && bill["frozen_reason"] == "arrears", format!("frozen for arrears: {bill}"));
    w.check(bill["payment_channel"].is_null(), format!("the suspended channel is not shown: {bill}"));
    w.check(bill["switch_deadline"].is_null(), format!("no window while frozen: {bill}"));
    w.check(bill["recovery"].as_str().is_some_and(|r| r.contains("充值")), format!("how to recover: {bill}"));
    w.check(kinds(&bill) == ["bound", "released", "switched", "frozen"], format!("history: {bill}"));
    let frozen = &bill["history"][3];
    w.check(frozen["reason"] == "arrears" && frozen["instance_id"] == sb.as_str(), format!("history: {bill}"));

    // C subscribes and binds to the frozen organization: recovered, active, paid by C.
    let sc = w.subscribe(C).await;
    w.bind(&u, &sc).await;
    w.step(&format!("C's subscription {sc} bound: the organization is active again"));
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "active" && bill["frozen_reason"].is_null(), format!("unfrozen: {bill}"));
    w.check(bill["payment_channel"]["aliyun_account_id"] == C, format!("C pays: {bill}"));
    w.check(bill["payment_channel"]["instance_id"] == sc.as_str(), format!("C's instance: {bill}"));
    w.check(bill["switch_deadline"].is_null() && bill["recovery"].is_null(), format!("nothing to do: {bill}"));
    w.check(kinds(&bill) == ["bound", "released", "switched", "frozen", "recovered"], format!("history: {bill}"));
    let recovered = &bill["history"][4];
    w.check(
        recovered["reason"] == "arrears"
            && recovered["from_aliyun_account_id"] == B
            && recovered["aliyun_account_id"] == C
            && recovered["instance_id"] == sc.as_str(),
        format!("the recovery is recorded B → C: {bill}"),
    );
    let times: Vec<_> = bill["history"].as_array().unwrap().iter().map(|h| parse_time(&h["at"])).collect();
    w.check(
        times.iter().all(Option::is_some) && times.windows(2).all(|p| p[0] <= p[1]),
        format!("the history is in order: {bill}"),
    );
    // B was replaced: unlinked from the organization.
    let b = w.entity("subscription", &sb).await;
    w.check(b["data"]["org"].is_null(), format!("B is unlinked: {b}"));

    // Past the deadline of the window B closed: its timer must not fire (nor freeze for no_payment_method).
    let wait_until = deadline + TimeDelta::minutes(2);
    let limit = Instant::now() + WAIT;
    while w.now() < wait_until {
        w.check(Instant::now() < limit, format!("service time did not reach {wait_until}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.step("past the closed window's deadline");
    let bill = w.billing(&u).await;
    w.check(bill["status"] == "active" && bill["payment_channel"]["aliyun_account_id"] == C, format!("{bill}"));
    w.check(kinds(&bill).len() == 5, format!("nothing happened since: {bill}"));
    let events = w.journal_events("organization", &u.org).await;
    w.check(!events.iter().any(|e| e == "switch-window"), format!("the window's timer never fired: {events:?}"));
    let org = w.wait_state("organization", &u.org, "bound").await;
    w.check(org["pending_messages"].as_array().is_some_and(|m| m.is_empty()), format!("nothing pending: {org}"));
    w.step("done");
    w.shutdown().await;
}
