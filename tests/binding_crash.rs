//! A crash test of the binding workflow (issue 4), with real processes: `marketflow serve` on a sled store and
//! `marketflow simulate` (the local marketplace) beside it, both at `MARKETFLOW_TIME_SCALE=600` (one service
//! minute is 0.1 s; the simulator aligns its clock with the service's `/healthz` when it starts).
//!
//! Each iteration registers two users through the JSON API (Alice owns her home organization and one made by
//! support, Bob his home organization), opens three subscriptions in the simulator (activation after one service
//! minute), and has each user follow the 免登 link of theirs with their bearer session, which grants the
//! subscription to them. Then it fires binding requests all at once, conflicting on purpose (Alice's two
//! subscriptions to both of her organizations: two subscriptions to one organization and one subscription to two
//! organizations, sometimes a double click), plus Bob's uncontested one, and SIGKILLs the service after a seeded
//! random 0–30 ms. The service is started again on the same data directory and port, and then:
//! - every binding attempt that was acknowledged (202) is in its subscription's journal (nothing acknowledged was
//!   lost), and every binding of these subscriptions is decided (`bound` or `refused`, never `pending` forever);
//! - every subscription has at most one organization and every organization at most one subscription, and both
//!   sides agree: the subscription's `org_id` ⇔ the organization's `payment_channel.instance_id` (billing
//!   overview) and its workflow state (`bound` ⇔ a channel);
//! - a refusal says why (`org_already_bound`), a bound binding names the organization the subscription has, and
//!   Bob's uncontested binding, when it was made at all, is bound;
//! - the ops API shows no pending outbox message for any of these entities once recovery is done;
//! - every entity took each input once (no input id twice in its journal: redeliveries after the kill were
//!   deduplicated), and an organization's history records one `bound` entry exactly when it has a channel.
//!
//! The printed numbers also say how many bindings the kill interrupted between the reservation and the decision
//! (decided by the restarted service: the decision came later than half the downtime, in service time) and how
//! many requests that got no answer were made anyway. `MARKETFLOW_SSO_WINDOW` is one service hour (6 s), so that
//! a busy machine's scheduling delays do not expire the 免登 links.
//!
//! At the end the pairing invariants are checked again over every iteration's entities (earlier ones went through
//! later kills too), and the numbers are printed: iterations, kills, acknowledged, bound, refused.
//!
//! `MARKETFLOW_BINDING_CRASH_ITERATIONS` (default 6: about 6 s with a debug build on two cores),
//! `MARKETFLOW_BINDING_CRASH_SEED`, and `MARKETFLOW_BIN` (default: the binary Cargo built for this test) tune it:
//!
//! ```text
//! MARKETFLOW_BINDING_CRASH_ITERATIONS=100 cargo test --release --test it binding_crash:: -- --nocapture
//! ```

use crate::world::smtp;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

const ISV: &str = "binding-crash-isv-key";
const AK: &str = "binding-crash-ak";
const AK_SECRET: &str = "binding-crash-ak-secret";
const OP: &str = "binding-crash-operator";
const SVC: &str = "binding-crash-service";
const PASSWORD: &str = "correct horse battery";
const TIME_SCALE: &str = "600";
const SCALE: f64 = 600.0;
const ITERATIONS_ENV: &str = "MARKETFLOW_BINDING_CRASH_ITERATIONS";
const SEED_ENV: &str = "MARKETFLOW_BINDING_CRASH_SEED";
/// Real-time limits; generous, because two cores are shared with other builds.
const START_LIMIT: Duration = Duration::from_secs(30);
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// The binary under test: `MARKETFLOW_BIN`, else the one Cargo built along with this test.
fn binary() -> PathBuf {
    std::env::var_os("MARKETFLOW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_marketflow")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process, SIGKILLed when dropped; its stdout and stderr go to `log`.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, String)], log: PathBuf) -> Proc {
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("a second handle on the log");
        let mut cmd = Command::new(binary());
        cmd.args(args).env_clear().stdin(Stdio::null()).stdout(out).stderr(err);
        cmd.env("RUST_LOG", "info").env("RUST_BACKTRACE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {} {args:?}: {e}", binary().display()));
        Proc { child: Some(child) }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A registered, logged-in user with their home organization.
#[derive(Clone, Debug)]
struct User {
    email: String,
    token: String,
    org: String,
}

/// One binding request as fired.
#[derive(Clone, Debug)]
struct Attempt {
    /// Sent this long after the first, so that the kill lands among them.
    stagger_ms: u64,
    user: usize,
    sub: String,
    org: String,
}

/// How a request ended, as the client saw it.
#[derive(Debug)]
enum Answer {
    /// 202: the binding id.
    Acknowledged(String),
    /// Refused at once, with the code.
    Rejected(String),
    /// No answer: the service died under it (or answered 503 while stopping).
    Lost(&'static str),
}

/// What one iteration set up: its users (Alice, Bob), organizations and subscriptions, with who sees what.
struct Round {
    users: Vec<User>,
    /// org id → index of its owner in `users`.
    orgs: BTreeMap<String, usize>,
    /// subscription id → index of the user it was granted to.
    subs: BTreeMap<String, usize>,
    /// Bob's uncontested subscription.
    clean_sub: String,
}

#[derive(Default, Debug)]
struct Totals {
    fired: u64,
    acknowledged: u64,
    /// Refused at once, by code.
    rejected: BTreeMap<String, u64>,
    /// Without an answer, by what the client saw.
    lost: BTreeMap<&'static str, u64>,
    /// Bindings made although their request got no answer (committed before the kill).
    unacknowledged_made: u64,
    bound: u64,
    refused: u64,
    /// Bindings decided by the restarted service: the kill fell between the reservation and the decision.
    decided_after_restart: u64,
    /// Acknowledged bindings that a later attempt on the same subscription replaced after they were decided.
    superseded: u64,
}

struct Cluster {
    tmp: Mutex<Option<tempfile::TempDir>>,
    root: PathBuf,
    service_port: u16,
    sim_port: u16,
    /// The running `serve` (killed and replaced while requests are in flight, hence the lock).
    service: Mutex<Option<Proc>>,
    sim: Option<Proc>,
    /// Logs of every service run, oldest first.
    service_logs: Mutex<Vec<PathBuf>>,
    http: reqwest::Client,
    /// The SMTP server the service mails verification links to.
    mail: smtp::Sink,
}

impl Cluster {
    async fn start() -> Cluster {
        let tmp = tempfile::Builder::new().prefix("binding-crash-").tempdir().expect("a temp dir");
        let root = tmp.path().to_path_buf();
        let service_port = free_port();
        let mut sim_port = free_port();
        while sim_port == service_port {
            sim_port = free_port();
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        let mut c = Cluster {
            tmp: Mutex::new(Some(tmp)),
            root,
            service_port,
            sim_port,
            service: Mutex::new(None),
            sim: None,
            service_logs: Mutex::new(vec![]),
            http,
            mail: smtp::Sink::start(),
        };
        c.start_service().await;
        // The simulator reads the service's clock at start-up, so it starts second.
        let sim_env = vec![
            ("MARKETFLOW_SIMULATOR_LISTEN", format!("127.0.0.1:{}", c.sim_port)),
            ("MARKETFLOW_SIMULATOR_SERVICE_URL", c.service_url()),
            ("MARKETFLOW_ALIYUN_ISV_KEY", ISV.to_string()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", AK.to_string()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", AK_SECRET.to_string()),
            ("MARKETFLOW_TIME_SCALE", TIME_SCALE.to_string()),
        ];
        c.sim = Some(Proc::spawn(&["simulate"], &sim_env, c.root.join("simulate.log")));
        let url = format!("{}/healthz", c.sim_url());
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = c.sim.as_mut().and_then(Proc::exited) {
                c.fail(format!("`marketflow simulate` exited with {status}"));
            }
            if matches!(c.http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                c.fail("`marketflow simulate` did not answer /healthz");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.service_port)
    }

    fn sim_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.sim_port)
    }

    fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MARKETFLOW_LISTEN", format!("127.0.0.1:{}", self.service_port)),
            ("MARKETFLOW_SMTP_URL", self.mail.url()),
            ("MARKETFLOW_DATA_DIR", self.root.join("data").display().to_string()),
            ("MARKETFLOW_PUBLIC_URL", self.service_url()),
            ("MARKETFLOW_ALIYUN_ISV_KEY", ISV.to_string()),
            ("MARKETFLOW_ALIYUN_ENDPOINT", self.sim_url()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", AK.to_string()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", AK_SECRET.to_string()),
            ("MARKETFLOW_OPERATOR_TOKEN", OP.to_string()),
            ("MARKETFLOW_SERVICE_TOKEN", SVC.to_string()),
            ("MARKETFLOW_TIME_SCALE", TIME_SCALE.to_string()),
            // One service hour is 6 s here: the 免登 link must survive a busy machine's scheduling delays.
            ("MARKETFLOW_SSO_WINDOW", "1h".to_string()),
        ]
    }

    /// Starts `serve` on the data directory and port and waits for `/healthz`; a start that loses the port (the
    /// killed process's socket not released yet) is tried again.
    async fn start_service(&self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = {
                let mut logs = self.service_logs.lock().unwrap_or_else(|e| e.into_inner());
                let log = self.root.join(format!("serve-{:02}.log", logs.len()));
                logs.push(log.clone());
                log
            };
            let proc = Proc::spawn(&["serve"], &self.service_env(), log.clone());
            *self.service.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc);
            let url = format!("{}/healthz", self.service_url());
            loop {
                let exited = self.service.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(Proc::exited);
                if let Some(status) = exited {
                    let why = tail(&log, 5);
                    if why.contains("cannot listen") && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    self.fail(format!("`marketflow serve` exited with {status} while starting"));
                }
                if matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                    return;
                }
                if Instant::now() > deadline {
                    self.fail("`marketflow serve` did not answer /healthz");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// SIGKILL: no graceful shutdown, no flush.
    fn kill_service(&self) {
        if let Some(mut p) = self.service.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.kill();
        }
    }

    /// Fails with the logs' tails, and keeps the directory (store and logs) for a post-mortem.
    fn fail(&self, what: impl Display) -> ! {
        let kept = self.tmp.lock().unwrap_or_else(|e| e.into_inner()).take().map(|t| t.keep());
        let mut context = String::new();
        let logs = self.service_logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, log) in logs.iter().enumerate().skip(logs.len().saturating_sub(2)) {
            context.push_str(&format!("\n--- service run {i} ({}), last lines:\n{}", log.display(), tail(log, 25)));
        }
        let sim_log = self.root.join("simulate.log");
        context.push_str(&format!("\n--- simulator, last lines:\n{}", tail(&sim_log, 15)));
        panic!(
            "{what}\n(seed {} from {SEED_ENV}; store and logs kept in {}){context}",
            env_u64(SEED_ENV, DEFAULT_SEED),
            kept.map(|p| p.display().to_string()).unwrap_or_else(|| "?".into())
        );
    }

    async fn request(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut r = self.http.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// A call of the service's API that must get an answer.
    async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.service_url());
        match self.request(method.clone(), url, token, body).await {
            Ok(r) => r,
            Err(e) => self.fail(format!("{method} {path}: no answer: {e}")),
        }
    }

    async fn expect(&self, status: u16, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (s, v) = self.api(method.clone(), path, token, body).await;
        if s != status {
            self.fail(format!("{method} {path}: expected {status}, got {s} {v}"));
        }
        v
    }

    async fn sim(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.sim_url());
        match self.request(method.clone(), url, None, body).await {
            Ok((s, v)) if (200..300).contains(&s) => v,
            Ok((s, v)) => self.fail(format!("simulator {method} {path}: {s} {v}")),
            Err(e) => self.fail(format!("simulator {method} {path}: no answer: {e}")),
        }
    }

    async fn register(&self, name: &str) -> User {
        let email = format!("{name}@example.com");
        let body = json!({"email": email, "password": PASSWORD, "name": name});
        let reg = self.expect(201, Method::POST, "/api/v1/accounts", None, Some(body)).await;
        let Some(org) = reg["org_id"].as_str() else { self.fail(format!("register {name}: {reg}")) };
        let token = self.login(&email).await;
        // The address is verified from the mail (an operator's organization for it waits until then).
        let link = self.mail.mail_to(&email).await.verification_link();
        let r = match self.http.get(&link).send().await {
            Ok(r) => r,
            Err(e) => self.fail(format!("verifying {email}: no answer: {e}")),
        };
        if r.status() != 200 {
            self.fail(format!("verifying {email}: {}", r.status()));
        }
        User { email, token, org: org.to_string() }
    }

    /// A new session (they last 12 service hours: 72 s here).
    async fn login(&self, email: &str) -> String {
        let body = json!({"email": email, "password": PASSWORD});
        let login = self.expect(201, Method::POST, "/api/v1/sessions", None, Some(body)).await;
        let Some(token) = login["token"].as_str() else { self.fail(format!("login {email}: {login}")) };
        token.to_string()
    }

    async fn entity(&self, kind: &str, id: &str) -> Value {
        self.expect(200, Method::GET, &format!("/api/v1/ops/entities/{kind}/{id}"), Some(OP), None).await
    }

    /// Opens a subscription in the simulator (OPENED after one service minute) and waits until it is active.
    async fn open(&self, ali_uid: &str) -> String {
        let body = json!({"ali_uid": ali_uid, "activation_after_seconds": 60});
        let v = self.sim(Method::POST, "/sim/instances", Some(body)).await;
        let Some(id) = v["order_biz_id"].as_str().map(String::from) else {
            self.fail(format!("no order_biz_id in {v}"))
        };
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let path = format!("/api/v1/ops/entities/subscription/{id}");
            let (s, e) = self.api(Method::GET, &path, Some(OP), None).await;
            if s == 200 && e["state"] == "active" {
                return id;
            }
            if Instant::now() > deadline {
                self.fail(format!("subscription {id} never became active: {s} {e}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The user follows the subscription's signed 免登 link with their session: it is granted to them and the
    /// link leads to the binding page.
    async fn sso(&self, user: &User, sub: &str) {
        let v = self.sim(Method::GET, &format!("/sim/instances/{sub}/sso-url"), None).await;
        let Some(url) = v["url"].as_str() else { self.fail(format!("no 免登 url in {v}")) };
        let r = match self.http.get(url).bearer_auth(&user.token).send().await {
            Ok(r) => r,
            Err(e) => self.fail(format!("免登 of {sub}: no answer: {e}")),
        };
        let status = r.status().as_u16();
        let location = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
        if (status, location.as_str()) != (302, format!("/bind/{sub}").as_str()) {
            let body = r.text().await.unwrap_or_default();
            self.fail(format!("免登 of {sub}: {status} to {location:?}: {body}"));
        }
    }

    async fn setup(&self, i: u64, rng: &mut StdRng) -> (Round, Vec<Attempt>) {
        let alice = self.register(&format!("alice{i}")).await;
        let bob = self.register(&format!("bob{i}")).await;
        let body = json!({"name": format!("Support team {i}"), "owner_email": alice.email});
        let team = self.expect(201, Method::POST, "/api/v1/ops/orgs", Some(OP), Some(body)).await;
        let Some(team) = team["org_id"].as_str().map(String::from) else { self.fail(format!("no org_id: {team}")) };
        let uid = |k: u64| format!("17{:014}", i * 10 + k);
        let (s1, s2, s3) = (self.open(&uid(1)).await, self.open(&uid(2)).await, self.open(&uid(3)).await);
        self.sso(&alice, &s1).await;
        self.sso(&alice, &s2).await;
        self.sso(&bob, &s3).await;
        let orgs = BTreeMap::from([(alice.org.clone(), 0), (team.clone(), 0), (bob.org.clone(), 1)]);
        let subs = BTreeMap::from([(s1.clone(), 0), (s2.clone(), 0), (s3.clone(), 1)]);
        // Each of Alice's subscriptions to each of her organizations: every organization wanted by two
        // subscriptions, every subscription wanted by two organizations. Bob's binding competes with nobody.
        let mut attempts = vec![];
        for s in [&s1, &s2] {
            for o in [&alice.org, &team] {
                attempts.push(Attempt { stagger_ms: 0, user: 0, sub: s.clone(), org: o.clone() });
            }
        }
        if rng.gen_bool(0.5) {
            // A double click.
            let again = attempts[rng.gen_range(0..attempts.len())].clone();
            attempts.push(again);
        }
        attempts.push(Attempt { stagger_ms: 0, user: 1, sub: s3.clone(), org: bob.org.clone() });
        attempts.shuffle(rng);
        for a in &mut attempts {
            a.stagger_ms = rng.gen_range(0..=15);
        }
        let round = Round { users: vec![alice, bob], orgs, subs, clean_sub: s3 };
        (round, attempts)
    }

    async fn fire(&self, round: &Round, a: &Attempt) -> Answer {
        tokio::time::sleep(Duration::from_millis(a.stagger_ms)).await;
        let url = format!("{}/api/v1/marketplace/aliyun/subscriptions/{}/binding", self.service_url(), a.sub);
        let token = &round.users[a.user].token;
        match self.request(Method::POST, url, Some(token), Some(json!({"org_id": a.org}))).await {
            Ok((202, v)) => match v["binding_id"].as_str() {
                Some(id) => Answer::Acknowledged(id.to_string()),
                None => self.fail(format!("202 without a binding id: {v}")),
            },
            Ok((409, v)) | Ok((422, v)) => {
                let code = v["code"].as_str().unwrap_or_default().to_string();
                if !["subscription_already_bound", "org_already_bound"].contains(&code.as_str()) {
                    self.fail(format!("{} → {}: refused with an unexpected code: {v}", a.sub, a.org));
                }
                Answer::Rejected(code)
            }
            Ok((503, _)) => Answer::Lost("503 while stopping"),
            Ok((s, v)) => self.fail(format!("{} → {}: unexpected {s} {v}", a.sub, a.org)),
            Err(e) if e.is_connect() => Answer::Lost("no connection: the service was down"),
            Err(e) if e.is_timeout() => Answer::Lost("timed out"),
            Err(_) => Answer::Lost("the connection dropped: killed mid-request"),
        }
    }

    /// The subscription as its buyer sees it (through the session from before the kill).
    async fn subscription(&self, round: &Round, sub: &str) -> Value {
        let user = &round.users[round.subs[sub]];
        let path = format!("/api/v1/marketplace/aliyun/subscriptions/{sub}");
        self.expect(200, Method::GET, &path, Some(&user.token), None).await
    }

    /// Waits until no binding of the round's subscriptions is pending; answers the subscriptions.
    async fn decided(&self, round: &Round) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let mut out = BTreeMap::new();
            for sub in round.subs.keys() {
                out.insert(sub.clone(), self.subscription(round, sub).await);
            }
            let pending: Vec<_> = out.iter().filter(|(_, v)| v["binding"]["status"] == "pending").collect();
            if pending.is_empty() {
                return out;
            }
            if Instant::now() > deadline {
                self.fail(format!("bindings still pending after {SETTLE_LIMIT:?}: {pending:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn journal(&self, kind: &str, id: &str) -> Vec<Value> {
        let path = format!("/api/v1/ops/entities/{kind}/{id}/journal?limit=1000");
        let j = self.expect(200, Method::GET, &path, Some(OP), None).await;
        j["items"].as_array().cloned().unwrap_or_default()
    }

    /// Whether the subscription's journal holds the accepted `bind` input of this binding.
    async fn journaled(&self, sub: &str, binding_id: &str) -> bool {
        let input = format!("bind:{binding_id}");
        self.journal("subscription", sub)
            .await
            .iter()
            .any(|e| e["input_id"] == input.as_str() && e["status"] == "accepted")
    }

    /// Service time from the subscription's `bind` to the decision that came back for it.
    async fn decision_took(&self, sub: &str, binding_id: &str) -> Option<chrono::TimeDelta> {
        let journal = self.journal("subscription", sub).await;
        let input = format!("bind:{binding_id}");
        let at = |e: &Value| e["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let start = journal.iter().position(|e| e["input_id"] == input.as_str())?;
        let decided = journal[start..].iter().find(|e| {
            e["status"] == "accepted" && (e["event"] == "binding_confirmed" || e["event"] == "binding_refused")
        })?;
        Some(at(decided)? - at(&journal[start])?)
    }

    /// Each entity of the round took every input once (a redelivery after the kill was deduplicated), and each
    /// organization's history records its binding once.
    async fn check_journals(&self, round: &Round) {
        let entities =
            round.subs.keys().map(|s| ("subscription", s)).chain(round.orgs.keys().map(|o| ("organization", o)));
        for (kind, id) in entities {
            let journal = self.journal(kind, id).await;
            let mut seen = BTreeMap::new();
            for e in &journal {
                let input = e["input_id"].as_str().unwrap_or_default().to_string();
                if let Some(first) = seen.insert(input.clone(), e.clone()) {
                    self.fail(format!("{kind} {id} took input {input} twice:\n{first}\n{e}"));
                }
            }
        }
        for (org, owner) in &round.orgs {
            let bill = self
                .expect(
                    200,
                    Method::GET,
                    &format!("/api/v1/orgs/{org}/billing"),
                    Some(&round.users[*owner].token),
                    None,
                )
                .await;
            let bound =
                bill["history"].as_array().map(|h| h.iter().filter(|e| e["kind"] == "bound").count()).unwrap_or(0);
            let expected = usize::from(!bill["payment_channel"].is_null());
            if bound != expected {
                self.fail(format!("{org}'s history records {bound} bindings, expected {expected}: {bill}"));
            }
        }
    }

    /// The pairing invariants over a round: each side has at most one partner and both sides agree.
    async fn check_pairs(&self, round: &Round, subs: &BTreeMap<String, Value>) {
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for (sub, v) in subs {
            let Some(org) = v["org_id"].as_str() else { continue };
            if !round.orgs.contains_key(org) {
                self.fail(format!("{sub} is bound to {org}, which no binding of it named: {v}"));
            }
            if let Some(other) = claimed.insert(org.to_string(), sub.clone()) {
                self.fail(format!("{org} is the organization of two subscriptions: {other} and {sub}"));
            }
        }
        for (org, owner) in &round.orgs {
            let user = &round.users[*owner];
            let bill =
                self.expect(200, Method::GET, &format!("/api/v1/orgs/{org}/billing"), Some(&user.token), None).await;
            let channel = bill["payment_channel"]["instance_id"].as_str();
            if channel != claimed.get(org).map(String::as_str) {
                self.fail(format!(
                    "half-done binding: {org}'s channel is {channel:?}, but the subscription bound to it is {:?}\n\
                     billing: {bill}\nsubscriptions: {subs:?}",
                    claimed.get(org)
                ));
            }
            let state = self.entity("organization", org).await["state"].clone();
            let expected = if channel.is_some() { "bound" } else { "unbound" };
            if state != expected {
                self.fail(format!("{org} is in state {state} with channel {channel:?}: {bill}"));
            }
            if bill["status"] != "active" {
                self.fail(format!("{org} should be active: {bill}"));
            }
        }
    }

    /// Waits until none of the round's entities has an outbox message pending.
    async fn outbox_drained(&self, round: &Round) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let entities: Vec<(&str, &String)> = round
            .subs
            .keys()
            .map(|s| ("subscription", s))
            .chain(round.orgs.keys().map(|o| ("organization", o)))
            .collect();
        loop {
            let mut left = vec![];
            for (kind, id) in &entities {
                let e = self.entity(kind, id).await;
                if e["pending_messages"].as_array().is_none_or(|m| !m.is_empty()) {
                    left.push(format!("{kind}/{id}: {}", e["pending_messages"]));
                }
            }
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("outbox messages still pending after recovery: {}", left.join("; ")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const DEFAULT_SEED: u64 = 0x6269_6e64;

#[actix_rt::test]
async fn bindings_killed_midway_complete_or_are_refused_never_half_done() {
    let started = Instant::now();
    let iterations = env_u64(ITERATIONS_ENV, 6);
    let seed = env_u64(SEED_ENV, DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let c = Cluster::start().await;
    let mut t = Totals::default();
    let mut rounds = vec![];
    let mut kills = 0u64;

    for i in 0..iterations {
        let (round, attempts) = c.setup(i, &mut rng).await;
        let delay = Duration::from_millis(rng.gen_range(0..=30));
        // Every request in flight at once; the service is killed under them.
        let fired = join_all(attempts.iter().map(|a| c.fire(&round, a)));
        let kill = async {
            tokio::time::sleep(delay).await;
            c.kill_service();
            Instant::now()
        };
        let (answers, killed_at) = futures_util::future::join(fired, kill).await;
        kills += 1;
        c.start_service().await;
        // A decision that took longer than half the downtime (in service time) was made by the restarted service.
        let across =
            chrono::TimeDelta::from_std(killed_at.elapsed().mul_f64(SCALE / 2.0)).unwrap_or(chrono::TimeDelta::MAX);

        let mut acknowledged: Vec<(&Attempt, String)> = vec![];
        for (a, answer) in attempts.iter().zip(answers) {
            t.fired += 1;
            match answer {
                Answer::Acknowledged(id) => {
                    t.acknowledged += 1;
                    acknowledged.push((a, id));
                }
                Answer::Rejected(code) => *t.rejected.entry(code).or_default() += 1,
                Answer::Lost(why) => *t.lost.entry(why).or_default() += 1,
            }
        }
        let subs = c.decided(&round).await;
        for (a, id) in &acknowledged {
            if !c.journaled(&a.sub, id).await {
                c.fail(format!(
                    "iteration {i}: acknowledged binding {id} ({} → {}) was lost by the kill",
                    a.sub, a.org
                ));
            }
        }
        for (sub, v) in &subs {
            let b = &v["binding"];
            let current = b["binding_id"].as_str();
            let ours = acknowledged.iter().filter(|(a, _)| &a.sub == sub).collect::<Vec<_>>();
            t.superseded += ours.iter().filter(|(_, id)| Some(id.as_str()) != current).count() as u64;
            if !b.is_null() && !ours.iter().any(|(_, id)| Some(id.as_str()) == current) {
                t.unacknowledged_made += 1;
            }
            if let Some(id) = current {
                match c.decision_took(sub, id).await {
                    Some(took) if took > across => t.decided_after_restart += 1,
                    Some(_) => {}
                    None => c.fail(format!("iteration {i}: {sub}'s journal lacks binding {id} or its decision: {v}")),
                }
            }
            match b["status"].as_str() {
                None => {
                    if !ours.is_empty() || !v["org_id"].is_null() {
                        c.fail(format!("iteration {i}: {sub} has no binding after acknowledged ones: {v}"));
                    }
                }
                Some("bound") => {
                    t.bound += 1;
                    if v["org_id"] != b["org_id"] {
                        c.fail(format!("iteration {i}: {sub} is bound but its organization differs: {v}"));
                    }
                }
                Some("refused") => {
                    t.refused += 1;
                    if !v["org_id"].is_null() || b["code"] != "org_already_bound" {
                        c.fail(format!("iteration {i}: {sub} was refused, but not cleanly: {v}"));
                    }
                }
                Some(other) => c.fail(format!("iteration {i}: {sub}'s binding is {other}: {v}")),
            }
        }
        // Bob competed with nobody: his binding, if the kill let it be made at all, went through.
        let clean = &subs[&round.clean_sub];
        if !clean["binding"].is_null() && clean["binding"]["status"] != "bound" {
            c.fail(format!("iteration {i}: the uncontested binding did not go through: {clean}"));
        }
        c.check_pairs(&round, &subs).await;
        c.outbox_drained(&round).await;
        c.check_journals(&round).await;
        rounds.push(round);
    }

    // Earlier rounds lived through later kills and restarts: they still hold.
    for round in &mut rounds {
        for u in &mut round.users {
            u.token = c.login(&u.email).await;
        }
        let subs = c.decided(round).await;
        c.check_pairs(round, &subs).await;
    }
    if t.bound == 0 {
        c.fail(format!(
            "no binding was made in {iterations} iterations: the kills come too early to test anything: {t:?}"
        ));
    }
    println!(
        "binding crash: {iterations} iterations, {kills} kills, {} requests fired: {} acknowledged (202), refused \
         at once {:?}, without an answer {:?} ({} bindings made anyway); after recovery {} bound, {} \
         refused (org_already_bound), {} of them decided by the restarted service, {} acknowledged and then replaced \
         by a later attempt; took {:?} (seed {seed})",
        t.fired,
        t.acknowledged,
        t.rejected,
        t.lost,
        t.unacknowledged_made,
        t.bound,
        t.refused,
        t.decided_after_restart,
        t.superseded,
        started.elapsed()
    );
}
