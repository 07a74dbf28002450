//! Upgrades keep working: a data directory written by an earlier build (kept in `tests/fixtures/` as a tarball
//! with a manifest of what it holds) opens with this build, every entity, journal, timer, pending call and record
//! in it still decodes, and the service carries on with it: log-ins, memberships, a pending invitation, usage
//! records, the audit trail and a used 免登 link are as the old build left them, and new work goes on top.
//!
//! The fixture was made by the ignored test at the end of this file, run against the old build's binary:
//!
//! ```text
//! MARKETFLOW_BIN=/path/to/old/marketflow MARKETFLOW_FIXTURE_OUT=tests/fixtures/upgrade-88443ce.tar.gz \
//!     cargo test --test it -- --ignored --exact upgrade::make_fixture
//! ```
//!
//! The old build ran on real time (scale 1) and was killed with SIGKILL at the end, so the directory is what a
//! crash leaves, not a clean shutdown; this build runs it on real time too, so whatever has come due since the
//! fixture was made fires at start-up, as after any long downtime.

use crate::world::smtp;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use marketflow::aliyun::simulator::{self, RunningSimulator, SimulatorConfig};
use marketflow::clock::SystemClock;
use marketflow::config::Secret;
use reqwest::Method;
use serde_json::{json, Value};

const ISV: &str = "upgrade-isv-key";
const AK: &str = "upgrade-ak";
const AK_SECRET: &str = "upgrade-ak-secret";
const OP: &str = "upgrade-operator-token";
const SVC: &str = "upgrade-service-token";
const PASSWORD: &str = "correct horse battery";
const FIXTURE: &str = "tests/fixtures/upgrade-88443ce.tar.gz";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `marketflow serve` child process, killed with SIGKILL when dropped.
struct Service {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts `binary` on `dir/data` and `port` and waits until it is ready.
    async fn start(binary: &Path, dir: &Path, port: u16, sim: &str, smtp: &str) -> Service {
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join(format!("serve-{port}.log"));
        let out = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
            .env("MARKETFLOW_DATA_DIR", dir.join("data"))
            .env("MARKETFLOW_PUBLIC_URL", &url)
            .env("MARKETFLOW_ALIYUN_ISV_KEY", ISV)
            .env("MARKETFLOW_ALIYUN_ENDPOINT", sim)
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", AK)
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", AK_SECRET)
            .env("MARKETFLOW_OPERATOR_TOKEN", OP)
            .env("MARKETFLOW_SERVICE_TOKEN", SVC)
            .env("MARKETFLOW_SMTP_URL", smtp)
            // The fixture's 免登 link must still be inside its window whenever this test runs.
            .env("MARKETFLOW_SSO_WINDOW", "87600h")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .expect("the service starts");
        let s = Service { child, url, log };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", s.url)).send().await {
                if r.status() == 200 {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "the service did not become ready:\n{}", s.tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let mut r = http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("the service answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn expect(&self, status: u16, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (s, v) = self.call(method.clone(), path, token, body).await;
        assert_eq!(s, status, "{method} {path}: {v}\n{}", self.tail());
        v
    }

    async fn login(&self, email: &str) -> String {
        let v = self
            .expect(201, Method::POST, "/api/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD})))
            .await;
        v["token"].as_str().expect("a session token").to_string()
    }

    /// Every entity the operator API lists, `kind/id`.
    async fn entities(&self) -> Vec<String> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page =
                self.expect(200, Method::GET, &format!("/api/v1/ops/entities?limit=100{q}"), Some(OP), None).await;
            for e in page["items"].as_array().expect("items") {
                out.push(format!("{}/{}", e["kind"].as_str().unwrap(), e["id"].as_str().unwrap()));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

async fn simulator(service_url: &str) -> RunningSimulator {
    let mut sc = SimulatorConfig::new(service_url, Secret::new(ISV), AK, Secret::new(AK_SECRET), Arc::new(SystemClock));
    sc.order_pay = true;
    simulator::start(sc).await.expect("the simulator starts")
}

#[actix_rt::test]
async fn a_data_directory_of_an_earlier_build_opens_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let st = Command::new("tar").arg("xzf").arg(&fixture).arg("-C").arg(dir.path()).status().expect("tar runs");
    assert!(st.success(), "extracting {}", fixture.display());
    let m: Value = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let mail = smtp::Sink::start();
    // The simulator's state is not part of the data directory: it starts empty, as a marketplace that lost
    // track would look; what the service stored is what is under test.
    let port = free_port();
    let sim = simulator(&format!("http://127.0.0.1:{port}")).await;
    let bin = Path::new(env!("CARGO_BIN_EXE_marketflow"));
    let svc = Service::start(bin, dir.path(), port, sim.base_url().trim_end_matches('/'), &mail.url()).await;

    // Every entity, its journal, timers, pending calls and messages decode.
    let entities = svc.entities().await;
    let want: Vec<String> = serde_json::from_value(m["entities"].clone()).unwrap();
    assert_eq!(entities.len(), want.len(), "{entities:?}");
    for e in &want {
        assert!(entities.contains(e), "{e} is missing after the upgrade");
        svc.expect(200, Method::GET, &format!("/api/v1/ops/entities/{e}"), Some(OP), None).await;
        let journal = svc.expect(200, Method::GET, &format!("/api/v1/ops/entities/{e}/journal"), Some(OP), None).await;
        assert!(!journal["items"].as_array().unwrap().is_empty(), "{e}: the journal is there");
    }

    // The old build kept no counts of entities by state: this one counted the directory's entities as it started,
    // and `/metrics` shows every one of them, by kind.
    let text = reqwest::get(format!("{}/metrics", svc.url)).await.unwrap().text().await.unwrap();
    let mut by_kind = std::collections::BTreeMap::<String, f64>::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("marketflow_entities{kind=\"")) {
        let (kind, rest) = line.split_once('"').unwrap();
        *by_kind.entry(kind.to_string()).or_default() += rest.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    }
    let mut want_by_kind = std::collections::BTreeMap::<String, f64>::new();
    for e in &want {
        *want_by_kind.entry(e.split('/').next().unwrap().to_string()).or_default() += 1.0;
    }
    for (kind, n) in &want_by_kind {
        assert_eq!(by_kind.get(kind), Some(n), "{kind}: {by_kind:?}\n{text}");
    }
    assert!(std::fs::read_to_string(&svc.log).unwrap().contains("counted the stored entities by state"));

    // The call that was waiting for its retry is still there, or has been retried since (its result is journaled).
    let opening = format!("subscription/{}", m["opening"].as_str().unwrap());
    let e = svc.expect(200, Method::GET, &format!("/api/v1/ops/entities/{opening}"), Some(OP), None).await;
    let call = m["pending_call"].as_str().unwrap();
    let pending = e["pending_calls"].as_array().unwrap().iter().any(|c| c["id"] == call);
    let journal =
        svc.expect(200, Method::GET, &format!("/api/v1/ops/entities/{opening}/journal"), Some(OP), None).await;
    let retried = journal["items"].as_array().unwrap().iter().any(|j| j.to_string().contains("describe_instance."));
    assert!(pending || retried, "the pending call {call} was lost: {e}");

    // Users log in; memberships (the organization workflow's index) are as they were.
    let s = |k: &str| m[k].as_str().unwrap().to_string();
    let alice = svc.login(&s("alice")).await;
    let me = svc.expect(200, Method::GET, "/api/v1/me", Some(&alice), None).await;
    assert_eq!(me["email_verified"], true, "{me}");
    let orgs = svc.expect(200, Method::GET, "/api/v1/orgs", Some(&alice), None).await;
    let roles: Vec<(String, String)> = orgs["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["org_id"].as_str().unwrap().to_string(), o["role"].as_str().unwrap().to_string()))
        .collect();
    assert!(roles.contains(&(s("alice_org"), "owner".into())), "{roles:?}");
    assert!(roles.contains(&(s("team_org"), "owner".into())), "{roles:?}");
    let bob = svc.login(&s("bob")).await;
    let orgs = svc.expect(200, Method::GET, "/api/v1/orgs", Some(&bob), None).await;
    assert!(
        orgs["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["org_id"] == s("alice_org").as_str() && o["role"] == "billing_admin"),
        "{orgs}"
    );

    // The pending invitation is found through its index (taken, or expired since the fixture was made; never
    // unknown).
    let carol = svc.login(&s("carol")).await;
    let (st, v) =
        svc.call(Method::POST, &format!("/api/v1/invitations/{}/accept", s("invitation")), Some(&carol), None).await;
    assert!(st == 200 || (st == 409 && v["code"] == "invitation_expired"), "{st} {v}");

    // The usage record is known by its id: sent again, it is a repeat.
    let v = svc.expect(200, Method::POST, "/api/v1/usage", Some(SVC), Some(m["usage"].clone())).await;
    assert_eq!(v["stored"], "repeated", "{v}");

    // The audit trail of the old build, newest first, and a new action on top of it.
    let trail = svc.expect(200, Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
    let actions: Vec<&str> = trail["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["resume", "pause"], "{trail}");
    let team = format!("organization/{}", s("team_org"));
    let path = format!("/api/v1/ops/entities/{team}/actions/pause");
    svc.expect(200, Method::POST, &path, Some(OP), Some(json!({"reason": "after the upgrade"}))).await;
    let trail = svc.expect(200, Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
    let actions: Vec<&str> = trail["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["pause", "resume", "pause"], "{trail}");

    // The 免登 link the buyer used before the upgrade stays used.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sso = s("sso_url").replace(&s("service_url"), &svc.url);
    let r = http.get(&sso).bearer_auth(&alice).send().await.unwrap();
    let status = r.status().as_u16();
    let page = r.text().await.unwrap_or_default();
    assert!(status == 403 && page.contains("data-code=\"link_used\""), "{status}: {page}");

    // The bound subscription is Alice's to see, bound to her organization.
    let sub = svc
        .expect(
            200,
            Method::GET,
            &format!("/api/v1/marketplace/aliyun/subscriptions/{}", s("instance")),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(sub["binding"]["org_id"], s("alice_org").as_str(), "{sub}");
    // The old build had no periodic checks: its live subscription gets its first one at start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/api/v1/ops/entities/subscription/{}", s("instance"));
        let e = svc.expect(200, Method::GET, &path, Some(OP), None).await;
        if e["timers"].as_array().unwrap().iter().any(|t| t["name"] == "check") {
            break;
        }
        assert!(Instant::now() < deadline, "the old build's subscription never got its periodic check: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New work on top: a new user registers, verifies from the mail and is invited.
    let (st, reg) = svc
        .call(
            Method::POST,
            "/api/v1/accounts",
            None,
            Some(json!({"email": "dora@example.com", "password": PASSWORD, "name": "Dora"})),
        )
        .await;
    assert_eq!(st, 201, "{reg}");
    let link = mail.mail_to("dora@example.com").await.verification_link();
    assert_eq!(reqwest::get(&link).await.unwrap().status(), 200);
    let _ = sim.stop().await;
}

/// Makes the fixture above with the build in `MARKETFLOW_BIN` (see the file's opening comment).
#[actix_rt::test]
#[ignore = "makes the fixture: run by hand against an old build"]
async fn make_fixture() {
    let binary = PathBuf::from(std::env::var("MARKETFLOW_BIN").expect("MARKETFLOW_BIN: the old build"));
    let out = PathBuf::from(std::env::var("MARKETFLOW_FIXTURE_OUT").unwrap_or_else(|_| FIXTURE.into()));
    let dir = tempfile::tempdir().unwrap();
    let mail = smtp::Sink::start();
    // The service's port is chosen first so that the simulator can call it.
    let port = free_port();
    let service_url = format!("http://127.0.0.1:{port}");
    let sim = simulator(&service_url).await;
    let sim_url = sim.base_url().trim_end_matches('/').to_string();
    let svc = Service::start(&binary, dir.path(), port, &sim_url, &mail.url()).await;
    let http = reqwest::Client::new();
    let mut users = vec![];
    for name in ["alice", "bob", "carol"] {
        let email = format!("{name}@example.com");
        let body = json!({"email": email, "password": PASSWORD, "name": name});
        let reg = svc.expect(201, Method::POST, "/api/v1/accounts", None, Some(body)).await;
        let link = mail.mail_to(&email).await.verification_link();
        assert_eq!(reqwest::get(&link).await.unwrap().status(), 200);
        let token = svc.login(&email).await;
        users.push((email, token, reg["org_id"].as_str().unwrap().to_string()));
    }
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let team = svc
        .expect(201, Method::POST, "/api/v1/ops/orgs", Some(OP), Some(json!({"name": "Team", "owner_email": alice.0})))
        .await;
    let team = team["org_id"].as_str().unwrap().to_string();
    let invite = |email: &str, role: &str| json!({"email": email, "role": role});
    let path = format!("/api/v1/orgs/{}/invitations", alice.2);
    let inv = svc.expect(201, Method::POST, &path, Some(&alice.1), Some(invite(&bob.0, "billing_admin"))).await;
    let accept = format!("/api/v1/invitations/{}/accept", inv["invitation_id"].as_str().unwrap());
    svc.expect(200, Method::POST, &accept, Some(&bob.1), None).await;
    let pending = svc.expect(201, Method::POST, &path, Some(&alice.1), Some(invite(&carol.0, "member"))).await;

    // A subscription, opened on the marketplace, 免登 by Alice and bound to her organization.
    let v = sim_call(
        &http,
        &sim_url,
        Method::POST,
        "/sim/instances",
        Some(json!({"ali_uid": "1688000000000901", "activation_after_seconds": 1})),
    )
    .await;
    let instance = v["order_biz_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, e) =
            svc.call(Method::GET, &format!("/api/v1/ops/entities/subscription/{instance}"), Some(OP), None).await;
        if e["state"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "never active: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sso = sim_call(&http, &sim_url, Method::GET, &format!("/sim/instances/{instance}/sso-url"), None).await;
    let sso = sso["url"].as_str().unwrap().to_string();
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(&sso).bearer_auth(&alice.1).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let binding = format!("/api/v1/marketplace/aliyun/subscriptions/{instance}/binding");
    svc.expect(202, Method::POST, &binding, Some(&alice.1), Some(json!({"org_id": alice.2}))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = svc
            .call(Method::GET, &format!("/api/v1/marketplace/aliyun/subscriptions/{instance}"), Some(&alice.1), None)
            .await;
        if v["binding"]["status"] == "bound" {
            break;
        }
        assert!(Instant::now() < deadline, "never bound: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = Utc::now();
    let usage = json!({"record_id": "upgrade-u1", "org_id": alice.2, "resource_id": "c-1", "cu_type": "performance",
                       "cu": 2.0, "start": now - TimeDelta::minutes(30), "end": now - TimeDelta::minutes(1)});
    svc.expect(201, Method::POST, "/api/v1/usage", Some(SVC), Some(usage.clone())).await;
    for action in ["pause", "resume"] {
        let path = format!("/api/v1/ops/entities/organization/{team}/actions/{action}");
        svc.expect(200, Method::POST, &path, Some(OP), Some(json!({"reason": "before the upgrade"}))).await;
    }
    // A second subscription still opening when the marketplace goes away: its poll (a minute after
    // createInstance) fails and waits for its retry, so the directory holds a pending call and its timers.
    let body = json!({"ali_uid": "1688000000000902", "activation_after_seconds": 86400});
    let v = sim_call(&http, &sim_url, Method::POST, "/sim/instances", Some(body)).await;
    let opening = v["order_biz_id"].as_str().unwrap().to_string();
    let view = format!("/api/v1/ops/entities/subscription/{opening}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while svc.call(Method::GET, &view, Some(OP), None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the second subscription never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = sim.stop().await;
    let deadline = Instant::now() + Duration::from_secs(150);
    let call_id = loop {
        let e = svc.expect(200, Method::GET, &view, Some(OP), None).await;
        let failed = e["pending_calls"].as_array().and_then(|calls| {
            calls.iter().find(|c| c["call"] == "describe_instance" && c["attempts"].as_u64() >= Some(1)).cloned()
        });
        if let Some(c) = failed {
            break c["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no failed poll to retry: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let entities = svc.entities().await;
    // Killed, not stopped: the directory is what a crash leaves.
    drop(svc);
    let manifest = json!({
        "service_url": service_url, "alice": alice.0, "bob": bob.0, "carol": carol.0, "alice_org": alice.2,
        "team_org": team, "invitation": pending["invitation_id"], "instance": instance, "sso_url": sso,
        "usage": usage, "entities": entities, "opening": opening, "pending_call": call_id,
    });
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let st = Command::new("tar")
        .arg("czf")
        .arg(std::fs::canonicalize(out.parent().unwrap()).unwrap().join(out.file_name().unwrap()))
        .arg("-C")
        .arg(dir.path())
        .args(["data", "manifest.json"])
        .status()
        .unwrap();
    assert!(st.success());
}

async fn sim_call(http: &reqwest::Client, sim: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut r = http.request(method, format!("{sim}{path}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}
