//! The service and the local marketplace (simulator) on real ports, sharing one manual clock, for black-box
//! tests that walk subscriptions and organizations through their workflows.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use marketflow::aliyun::simulator::{self, RunningSimulator, SimulatorConfig};
use marketflow::aliyun::token::spi_token;
use marketflow::clock::{Clock, ManualClock};
use marketflow::config::{Config, NamedTokens, Secret};
use marketflow::startup::{Application, Overrides};
use serde_json::{json, Value};

pub mod smtp;

pub const ISV: &str = "lifecycle-isv-key";
pub const OP: &str = "lifecycle-operator";
pub const SVC: &str = "lifecycle-service";

pub struct World {
    pub clock: ManualClock,
    pub service: String,
    service_port: u16,
    sim: Option<RunningSimulator>,
    pub sim_url: String,
    pub app: Option<actix_web::dev::ServerHandle>,
    /// The task serving the running service; it ends once the engine has drained and the store is closed.
    serving: Option<actix_rt::task::JoinHandle<std::io::Result<()>>>,
    dir: PathBuf,
    pub http: reqwest::Client,
    /// `MARKETFLOW_OPERATOR_TOKEN` of the next start (`OP` unless a test rotates it before a restart).
    pub operator_token: String,
    /// `MARKETFLOW_OPERATOR_TOKENS` of the next start (none unless a test sets them).
    pub operator_tokens: Option<String>,
    /// The SMTP server the service mails verification links to.
    pub mail: smtp::Sink,
    /// `MARKETFLOW_WORKFLOWS_DIR` of the next start (the built-in definitions unless a test sets one).
    pub workflows_dir: Option<PathBuf>,
    /// Changes a test makes to the configuration of every start.
    pub tweak: Option<fn(&mut Config)>,
}

impl World {
    pub async fn new(dir: &Path) -> Self {
        Self::with_operator_tokens(dir, None).await
    }

    /// As [`World::new`], with the configuration changed by `tweak` (from the first start on).
    pub async fn with_config(dir: &Path, tweak: fn(&mut Config)) -> Self {
        Self::build(dir, None, Some(tweak)).await
    }

    /// As [`World::new`], with named operator tokens (`name:token,...`) beside the shared `OP`.
    pub async fn with_operator_tokens(dir: &Path, named: Option<&str>) -> Self {
        Self::build(dir, named, None).await
    }

    async fn build(dir: &Path, named: Option<&str>, tweak: Option<fn(&mut Config)>) -> Self {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap());
        // The service's listener is bound first, so its port is known to the simulator and cannot be taken.
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let service_port = listener.local_addr().expect("an address").port();
        let service = format!("http://127.0.0.1:{service_port}");
        let mut sc = SimulatorConfig::new(
            service.clone(),
            Secret::new(ISV),
            "lifecycle-ak",
            Secret::new("lifecycle-ak-secret"),
            Arc::new(clock.clone()),
        );
        sc.seed = Some(7);
        sc.order_pay = false;
        let sim = simulator::start(sc).await.expect("the simulator starts");
        let sim_url = sim.base_url().trim_end_matches('/').to_string();
        let mut w = World {
            clock,
            service,
            service_port,
            sim: Some(sim),
            sim_url,
            app: None,
            serving: None,
            dir: dir.to_path_buf(),
            http: reqwest::Client::new(),
            operator_token: OP.to_string(),
            operator_tokens: named.map(String::from),
            mail: smtp::Sink::start(),
            workflows_dir: None,
            tweak,
        };
        w.start_service(Some(listener)).await;
        w
    }

    pub async fn start_service(&mut self, listener: Option<TcpListener>) {
        let config = Config {
            listen: format!("127.0.0.1:{}", self.service_port),
            data_dir: self.dir.join("data"),
            public_url: self.service.clone(),
            isv_key: Some(Secret::new(ISV)),
            aliyun_endpoint: self.sim_url.clone(),
            access_key_id: Some("lifecycle-ak".into()),
            access_key_secret: Some(Secret::new("lifecycle-ak-secret")),
            operator_token: Some(Secret::new(self.operator_token.clone())),
            operator_tokens: self.operator_tokens.as_deref().map(NamedTokens::parse),
            service_token: Some(Secret::new(SVC)),
            smtp_url: Some(Secret::new(self.mail.url())),
            // Ended records go within a moment of the manual clock passing their time.
            sweep_interval: Duration::from_millis(50),
            workflows_dir: self.workflows_dir.clone(),
            ..Config::default()
        };
        let mut config = config;
        if let Some(tweak) = self.tweak {
            tweak(&mut config);
        }
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let mut listener = listener;
        // A restart binds the same port again and opens the same store: the old server has released the port,
        // and sled releases its lock once its background flusher has let go, a moment after the close.
        let deadline = Instant::now() + Duration::from_secs(10);
        let app = loop {
            let l = match listener.take() {
                Some(l) => l,
                None => match TcpListener::bind(("127.0.0.1", self.service_port)) {
                    Ok(l) => l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => panic!("cannot bind the service's port again: {e}"),
                },
            };
            let overrides = Overrides { clock: Some(clock.clone()), listener: Some(l) };
            match Application::build_with(config.clone(), overrides).await {
                Ok(app) => break app,
                Err(e) if e.to_string().contains("could not acquire lock") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the service starts: {e}"),
            }
        };
        self.app = Some(app.handle());
        self.serving = Some(actix_rt::spawn(app.run_until_stopped()));
    }

    /// Stops the service (gracefully) and starts it again on the same data and clock.
    pub async fn restart_service(&mut self) {
        if let Some(h) = self.app.take() {
            h.stop(true).await;
        }
        // The old service closes its store after its server stopped; the new one must find the directory free.
        if let Some(t) = self.serving.take() {
            let _ = t.await;
        }
        self.start_service(None).await;
    }

    pub async fn sim(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.sim_url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("simulator answers");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "simulator {path}: {status} {v}");
        v
    }

    pub async fn open(&self, ali_uid: &str, after_seconds: u64) -> String {
        let v = self
            .sim(
                reqwest::Method::POST,
                "/sim/instances",
                Some(json!({"ali_uid": ali_uid, "activation_after_seconds": after_seconds, "order_pay": false})),
            )
            .await;
        let id = v["order_biz_id"].as_str().or(v["instance_id"].as_str()).or(v["id"].as_str());
        let id = id.unwrap_or_else(|| panic!("an instance id in {v}")).to_string();
        // createInstance reaches the service asynchronously.
        self.wait_state(&id, "opening").await;
        id
    }

    pub async fn entity(&self, id: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/api/v1/ops/entities/subscription/{id}", self.service))
            .bearer_auth(OP)
            .send()
            .await
            .expect("service answers");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn state(&self, id: &str) -> Option<String> {
        let (s, v) = self.entity(id).await;
        (s == 200).then(|| v["state"].as_str().unwrap_or_default().to_string())
    }

    pub async fn wait_state(&self, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.state(id).await.as_deref() == Some(state) {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never reached {state}: {:?}", self.entity(id).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Advances the shared clock a minute at a time, letting each minute's poll finish.
    pub async fn pass_minutes(&self, id: &str, minutes: u32) {
        for _ in 0..minutes {
            let before = self.entity(id).await.1["data"]["polls"].as_u64().unwrap_or(0);
            let pending = !self.entity(id).await.1["timers"].as_array().map(|t| t.is_empty()).unwrap_or(true);
            self.clock.advance(Duration::from_secs(60));
            if pending {
                // Wait for whatever this minute made due (a poll) to be consumed.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    let (_, e) = self.entity(id).await;
                    let overdue = e["timers"]
                        .as_array()
                        .map(|ts| ts.iter().any(|t| t["remaining_seconds"].as_i64().unwrap_or(1) <= 0));
                    let polls = e["data"]["polls"].as_u64().unwrap_or(0);
                    let calls = e["pending_calls"].as_array().map(|c| c.len()).unwrap_or(0);
                    if overdue == Some(false) && calls == 0 && (polls > before || e["state"] != "opening") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    pub async fn journal_events(&self, id: &str) -> Vec<String> {
        let r = self
            .http
            .get(format!("{}/api/v1/ops/entities/subscription/{id}/journal?limit=1000", self.service))
            .bearer_auth(OP)
            .send()
            .await
            .expect("journal");
        let v: Value = r.json().await.expect("json");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}:{}", e["event"].as_str().unwrap(), e["to"].as_str().unwrap()))
            .collect()
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.app.take() {
            h.stop(true).await;
        }
        if let Some(s) = self.sim.take() {
            let _ = s.stop().await;
        }
    }
}

pub fn signed(params: &[(&str, &str)]) -> String {
    let pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let token = spi_token(&pairs, ISV);
    let mut q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
    q.push(format!("token={token}"));
    q.join("&")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A registered user of the service.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub email: String,
    pub token: String,
    pub user_id: String,
    pub org_id: String,
}

impl World {
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.service));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("service answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Registers and logs in a user, who verifies their address from the mail; they own a new organization.
    pub async fn user(&self, name: &str) -> TestUser {
        let u = self.unverified_user(name).await;
        self.verify(&u.email).await;
        u
    }

    /// Opens the verification link of the latest mail to `email`, as its recipient would.
    pub async fn verify(&self, email: &str) {
        let n = self.mail.mails_to(email).len().max(1);
        let link = self.mail.nth_mail_to(email, n).await.verification_link();
        assert!(link.starts_with(&self.service), "{link}");
        let resp = self.http.get(&link).send().await.expect("the verification page answers");
        let status = resp.status().as_u16();
        let page = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "verify {email}: {page}");
    }

    /// Registers and logs in a user who has not opened the mailed link yet.
    pub async fn unverified_user(&self, name: &str) -> TestUser {
        let email = format!("{name}@example.com");
        let (s, reg) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/accounts",
                None,
                Some(json!({"email": email, "password": "correct horse battery", "name": name})),
            )
            .await;
        assert_eq!(s, 201, "register {name}: {reg}");
        let (s, login) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/sessions",
                None,
                Some(json!({"email": email, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(s, 201, "login {name}: {login}");
        TestUser {
            email,
            token: login["token"].as_str().unwrap().to_string(),
            user_id: reg["user_id"].as_str().unwrap().to_string(),
            org_id: reg["org_id"].as_str().unwrap().to_string(),
        }
    }

    /// `owner` invites `who` into `org` with `role`, and `who` accepts.
    pub async fn join(&self, owner: &TestUser, org: &str, who: &TestUser, role: &str) {
        let (s, inv) = self
            .api(
                reqwest::Method::POST,
                &format!("/api/v1/orgs/{org}/invitations"),
                Some(&owner.token),
                Some(json!({"email": who.email, "role": role})),
            )
            .await;
        assert_eq!(s, 201, "invite: {inv}");
        let id = inv["invitation_id"].as_str().unwrap();
        let (s, acc) =
            self.api(reqwest::Method::POST, &format!("/api/v1/invitations/{id}/accept"), Some(&who.token), None).await;
        assert_eq!(s, 200, "accept: {acc}");
    }

    /// Opens a subscription for `ali_uid` and waits until it is active.
    pub async fn active_subscription(&self, ali_uid: &str) -> String {
        let id = self.open(ali_uid, 60).await;
        self.pass_minutes(&id, 2).await;
        self.wait_state(&id, "active").await;
        id
    }

    /// The user follows the subscription's signed 免登 link with their session; answers where it leads.
    pub async fn sso(&self, user: &TestUser, instance: &str) -> (u16, String) {
        let v = self.sim(reqwest::Method::GET, &format!("/sim/instances/{instance}/sso-url"), None).await;
        let url = v["url"].as_str().expect("an sso url").to_string();
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r = client.get(url).bearer_auth(&user.token).send().await.expect("sso answers");
        let loc = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
        (r.status().as_u16(), loc)
    }

    /// Waits until the subscription's binding attempt is decided; returns (status, code).
    pub async fn binding_decided(&self, user: &TestUser, instance: &str) -> (String, Option<String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/v1/marketplace/aliyun/subscriptions/{instance}"),
                    Some(&user.token),
                    None,
                )
                .await;
            let status = v["binding"]["status"].as_str().unwrap_or("none").to_string();
            if status != "pending" {
                return (status, v["binding"]["code"].as_str().map(String::from));
            }
            assert!(Instant::now() < deadline, "binding of {instance} never decided: {v}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl World {
    /// The operators' audit trail, newest first.
    pub async fn audit(&self) -> Vec<Value> {
        let (s, v) = self.api(reqwest::Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
        assert_eq!(s, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// The audit trail as (operator, action), newest first.
    pub async fn audit_trail(&self) -> Vec<(String, String)> {
        let field = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_string();
        self.audit().await.iter().map(|e| (field(e, "operator"), field(e, "action"))).collect()
    }

    /// An organization's workflow state, from the ops API.
    pub async fn org_state(&self, org: &str) -> String {
        let (_, v) =
            self.api(reqwest::Method::GET, &format!("/api/v1/ops/entities/organization/{org}"), Some(OP), None).await;
        v["state"].as_str().unwrap_or_default().to_string()
    }

    pub async fn wait_org(&self, org: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.org_state(org).await != state {
            assert!(Instant::now() < deadline, "{org} never reached {state} (is {})", self.org_state(org).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn billing(&self, user: &TestUser, org: &str) -> Value {
        let (s, v) =
            self.api(reqwest::Method::GET, &format!("/api/v1/orgs/{org}/billing"), Some(&user.token), None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Opens, activates, and binds a subscription of `ali_uid` to `org`, through 免登 by `user`.
    pub async fn subscribe_and_bind(&self, user: &TestUser, org: &str, ali_uid: &str) -> String {
        let s = self.active_subscription(ali_uid).await;
        self.sso(user, &s).await;
        let path = format!("/api/v1/marketplace/aliyun/subscriptions/{s}/binding");
        let (st, v) = self.api(reqwest::Method::POST, &path, Some(&user.token), Some(json!({"org_id": org}))).await;
        assert_eq!(st, 202, "{v}");
        assert_eq!(self.binding_decided(user, &s).await.0, "bound");
        s
    }

    /// The buyer closes the subscription in the marketplace console (releaseInstance).
    pub async fn close(&self, instance: &str) {
        self.sim(reqwest::Method::POST, &format!("/sim/instances/{instance}/close"), None).await;
        self.wait_state(instance, "released").await;
    }
}

impl World {
    /// Posts a usage record with the service token.
    #[allow(clippy::too_many_arguments)]
    pub async fn usage(
        &self,
        record_id: &str,
        org: &str,
        cluster: &str,
        cu_type: &str,
        cu: f64,
        start: chrono::DateTime<Utc>,
        end: chrono::DateTime<Utc>,
    ) -> (u16, Value) {
        self.api(
            reqwest::Method::POST,
            "/api/v1/usage",
            Some(SVC),
            Some(json!({"record_id": record_id, "org_id": org, "resource_id": cluster, "cu_type": cu_type, "cu": cu,
                        "start": start, "end": end})),
        )
        .await
    }

    /// The metering entity of a subscription, from the ops API.
    pub async fn metering(&self, instance: &str) -> Value {
        self.api(reqwest::Method::GET, &format!("/api/v1/ops/entities/metering/{instance}"), Some(OP), None).await.1
    }

    /// Waits until no window of the subscription is still being metered or pushed (and no call is running).
    pub async fn metering_settled(&self, instance: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metering(instance).await;
            let busy = m["data"]["windows"]
                .as_array()
                .map(|ws| ws.iter().any(|w| w["status"] == "metering" || w["status"] == "pushing"))
                .unwrap_or(false);
            let overdue = m["timers"]
                .as_array()
                .map(|ts| ts.iter().any(|t| t["remaining_seconds"].as_i64().unwrap_or(1) <= 0))
                .unwrap_or(false);
            if !busy && !overdue {
                return m;
            }
            assert!(Instant::now() < deadline, "metering of {instance} never settled: {m}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What the marketplace received for an instance.
    pub async fn received(&self, instance: &str) -> Value {
        self.sim(reqwest::Method::GET, &format!("/sim/metering?instance_id={instance}"), None).await
    }
}

impl World {
    /// Waits until nothing of the entity is due or running: no overdue timer, no call being sent (a call waiting
    /// for its retry is quiet).
    pub async fn quiet(&self, kind: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, e) =
                self.api(reqwest::Method::GET, &format!("/api/v1/ops/entities/{kind}/{id}"), Some(OP), None).await;
            let overdue = e["timers"]
                .as_array()
                .map(|ts| ts.iter().any(|t| t["remaining_seconds"].as_i64().unwrap_or(1) <= 0))
                .unwrap_or(false);
            let running = e["pending_calls"]
                .as_array()
                .map(|cs| cs.iter().any(|c| c["status"] == "pending" || c["status"] == "in_flight"))
                .unwrap_or(false);
            if !overdue && !running {
                return;
            }
            assert!(Instant::now() < deadline, "{kind}/{id} never became quiet: {e}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
