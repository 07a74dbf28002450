//! A failing write is an error, never a silently lost commit.
//!
//! `marketflow serve` runs as a child process under a file-size limit (`sh -c "trap '' XFSZ; ulimit -f N; exec
//! marketflow serve"`): once sled's log reaches the limit, its writes fail with `EFBIG` ("File too large"), as they
//! would with `ENOSPC` on a full disk, for real and without root. Eight clients write as fast as they can (usage
//! records, organizations created by an operator, invitations, a few registrations) until the store fails. Then:
//! - every write is refused with `503 storage_unavailable` (and `Retry-After`), `/readyz` answers `503 not_ready`,
//!   reads and `/healthz` still answer: the process stays up and says why; its log names the failed write and
//!   holds no panic;
//! - SIGTERM stops it within seconds;
//! - started again on the same data without the limit, it is ready, and every write that was acknowledged (2xx)
//!   before the failure is there: each usage record (sent again: `200 repeated`, never `201 new`), each
//!   organization with its owner, each invitation, each registration (the user logs in);
//! - nothing refused is half-applied: a refused usage record sent again is either new or an exact repeat (never
//!   `409 record_conflict`), a refused registration is either absent (registers anew) or complete after login (the
//!   home organization exists and lists the user as Owner);
//! - and it takes writes again.
//!
//! The limit is 512 KiB of log; the whole test takes a few seconds.

use crate::serve;
use crate::world::smtp;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use serve::{free_port, Serve};

const OP: &str = "storage-operator-token";
const SVC: &str = "storage-service-token";
const PASSWORD: &str = "correct horse battery";
/// `ulimit -f` in 512-byte blocks: 512 KiB, reached after a few hundred commits.
const LIMIT_BLOCKS: u64 = 1024;
const WORKERS: usize = 8;
/// Real-time limits; generous, because two cores are shared with other builds.
const START_LIMIT: Duration = Duration::from_secs(30);
const WORK_LIMIT: Duration = Duration::from_secs(60);

/// What a write was, so that it can be checked after the restart.
#[derive(Debug, Clone)]
enum Write {
    Usage(Value),
    Org { org_id: Option<String>, owner: String },
    Invitation { org_id: String, invitation_id: Option<String>, email: String },
    Register { email: String },
}

/// A write and how it was answered (`status` 0: no answer).
#[derive(Debug, Clone)]
struct Sent {
    write: Write,
    status: u16,
    code: String,
    /// When the request was sent and when its answer arrived (answers of one group commit may arrive in any
    /// order, so "after the failure" is told by these, not by the order of the list).
    started: Instant,
    answered: Instant,
}

impl Sent {
    fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                let mut v: Value = resp.json().await.unwrap_or(Value::Null);
                if retry_after {
                    v["retry_after"] = json!(true);
                }
                (status, v)
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn register(&self, email: &str) -> (u16, Value) {
        let body = json!({"email": email, "password": PASSWORD, "name": "Storage"});
        self.call(Method::POST, "/api/v1/accounts", None, Some(&body)).await
    }

    async fn login(&self, email: &str) -> (u16, Value) {
        let body = json!({"email": email, "password": PASSWORD});
        self.call(Method::POST, "/api/v1/sessions", None, Some(&body)).await
    }

    async fn usage(&self, body: &Value) -> (u16, Value) {
        self.call(Method::POST, "/api/v1/usage", Some(SVC), Some(body)).await
    }

    async fn now(&self) -> DateTime<Utc> {
        let (_, h) = self.call(Method::GET, "/healthz", None, None).await;
        h["now"].as_str().and_then(|s| s.parse().ok()).expect("/healthz tells the service time")
    }
}

fn env(root: &Path, smtp: &str) -> Vec<(String, String)> {
    let port = free_port();
    [
        ("MARKETFLOW_SMTP_URL", smtp.to_string()),
        ("MARKETFLOW_DATA_DIR", root.join("data").display().to_string()),
        ("MARKETFLOW_PUBLIC_URL", "http://127.0.0.1".to_string()),
        ("MARKETFLOW_ALIYUN_ISV_KEY", "storage-isv-key".to_string()),
        // Nothing here calls the marketplace; nobody listens on this port.
        ("MARKETFLOW_ALIYUN_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "storage-ak".to_string()),
        ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "storage-ak-secret".to_string()),
        ("MARKETFLOW_OPERATOR_TOKEN", OP.to_string()),
        ("MARKETFLOW_SERVICE_TOKEN", SVC.to_string()),
        ("RUST_LOG", "warn".to_string()),
        ("RUST_BACKTRACE", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Sends one write of worker `w`'s `n`-th turn.
async fn one_write(c: &Client, owner: &(String, String, String), now: DateTime<Utc>, w: usize, n: usize) -> Sent {
    let (owner_email, owner_token, home_org) = owner;
    let started = Instant::now();
    let (write, (status, v)) = match n % 16 {
        // A registration now and then (Argon2 is slow on purpose): a user and its home organization.
        0 if w < 2 => {
            let email = format!("late-{w}-{n}@example.com");
            let r = c.register(&email).await;
            (Write::Register { email }, r)
        }
        1 | 9 => {
            let body = json!({"name": format!("Team {w}-{n}"), "owner_email": owner_email});
            let r = c.call(Method::POST, "/api/v1/ops/orgs", Some(OP), Some(&body)).await;
            let org_id = r.1["org_id"].as_str().map(String::from);
            (Write::Org { org_id, owner: owner_email.clone() }, r)
        }
        5 => {
            let email = format!("guest-{w}-{n}@example.com");
            let body = json!({"email": email, "role": "member"});
            let r = c
                .call(Method::POST, &format!("/api/v1/orgs/{home_org}/invitations"), Some(owner_token), Some(&body))
                .await;
            let invitation_id = r.1["invitation_id"].as_str().map(String::from);
            (Write::Invitation { org_id: home_org.clone(), invitation_id, email }, r)
        }
        _ => {
            let body = json!({
                "record_id": format!("rec-{w}-{n}"), "org_id": home_org, "resource_id": format!("cluster-{w}"),
                "cu_type": "performance", "cu": 1 + (n % 4), "start": now - TimeDelta::minutes(30), "end": now,
            });
            let r = c.usage(&body).await;
            (Write::Usage(body), r)
        }
    };
    let code = v["code"].as_str().unwrap_or_default().to_string();
    Sent { write, status, code, started, answered: Instant::now() }
}

#[actix_rt::test]
async fn a_failing_write_is_refused_and_loses_no_acknowledged_commit() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("storage-faults-").tempdir().expect("a temp dir");
    let root = tmp.path().to_path_buf();
    let port = free_port();
    let mail = smtp::Sink::start();
    let mut env = env(&root, &mail.url());
    env.push(("MARKETFLOW_LISTEN".into(), format!("127.0.0.1:{port}")));
    let mut serve = Serve::new(&root, port, env);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("an HTTP client");
    let c = Arc::new(Client { http: http.clone(), base: serve.url() });
    let fail = |what: String, serve: &Serve| -> ! {
        let logs: Vec<String> =
            serve.logs.iter().map(|l| format!("--- {}:\n{}", l.display(), serve::tail(l, 25))).collect();
        panic!("{what}\n{}", logs.join("\n"))
    };

    // The service under the file-size limit.
    serve.spawn(Some(LIMIT_BLOCKS));
    if let Err(e) = serve.wait_ready(&http, Instant::now() + START_LIMIT).await {
        fail(format!("the limited service did not start: {e}"), &serve);
    }
    let owner_email = "owner@example.com".to_string();
    let (s, reg) = c.register(&owner_email).await;
    assert_eq!(s, 201, "register: {reg}");
    let (s, login) = c.login(&owner_email).await;
    assert_eq!(s, 201, "login: {login}");
    // The owner verifies the address (operators' organizations for it are made only then). The link names the
    // public URL, which has no port here: the same path and query on the service's address.
    let link = mail.mail_to(&owner_email).await.verification_link();
    let query = link.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let verified = http.get(format!("{}/verify-email?{query}", serve.url())).send().await.expect("the link opens");
    assert_eq!(verified.status(), 200);
    let owner =
        (owner_email, login["token"].as_str().unwrap().to_string(), reg["org_id"].as_str().unwrap().to_string());
    let now = c.now().await;

    // Write until the store fails, then a little more: what comes after the failure must be refused too.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let deadline = Instant::now() + WORK_LIMIT;
    join_all((0..WORKERS).map(|w| {
        let (c, sent, owner) = (c.clone(), sent.clone(), owner.clone());
        async move {
            let mut after_failure = 0;
            for n in 0.. {
                let r = one_write(&c, &owner, now, w, n).await;
                let failed = r.status == 503 && r.code == "storage_unavailable";
                sent.lock().unwrap().push(r);
                if failed || after_failure > 0 {
                    after_failure += 1;
                }
                if after_failure > 20 || Instant::now() > deadline {
                    break;
                }
            }
        }
    }))
    .await;
    let sent = sent.lock().unwrap().clone();
    let first_failure = sent.iter().position(|r| r.status == 503 && r.code == "storage_unavailable");
    let Some(first_failure) = first_failure else {
        fail(format!("{} writes and the store never failed under the limit", sent.len()), &serve);
    };

    // Refused, and says so; the process is up.
    let (s, ready) = c.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((s, ready["code"].as_str()), (503, Some("not_ready")), "/readyz after the failure: {ready}");
    let (s, _) = c.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, 200, "the process answers /healthz after the failure");
    // Reads work while sled has not noticed the failure; once its own flusher has hit it too, sled refuses reads
    // as well (its global error), and a read is refused like a write: 503 with a code, never a crash.
    let (s, me) = c.call(Method::GET, "/api/v1/me", Some(&owner.1), None).await;
    if s != 200 && (s, me["code"].as_str()) != (503, Some("storage_unavailable")) {
        fail(format!("a read after the failure: {s} {me}"), &serve);
    }
    let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
    for r in &sent {
        *by_answer.entry(format!("{} {}", r.status, r.code)).or_default() += 1;
    }
    // Every write sent after the first refusal arrived was answered (no hang, no reset) with the stable code.
    let refused_at = sent[first_failure].answered;
    let late: Vec<&Sent> = sent.iter().filter(|r| r.started > refused_at).collect();
    assert!(late.len() >= WORKERS, "each worker wrote on after the failure: {} late writes", late.len());
    let bad: Vec<String> = late
        .iter()
        .filter(|r| !(r.status == 503 && (r.code == "storage_unavailable")))
        .map(|r| format!("{} {} for {:?}", r.status, r.code, r.write))
        .collect();
    assert!(bad.is_empty(), "writes after the failure must be refused with 503 storage_unavailable: {bad:?}");
    let register = c.register("after-the-failure@example.com").await;
    assert_eq!(
        (register.0, register.1["code"].as_str()),
        (503, Some("storage_unavailable")),
        "a registration after the failure: {}",
        register.1
    );
    if serve.exited().is_some() {
        fail("the service exited after the failed write instead of refusing requests".into(), &serve);
    }
    let log = std::fs::read_to_string(serve.logs.last().unwrap()).unwrap_or_default();
    assert!(log.contains("File too large"), "the log names the failed write:\n{}", serve.log_tail(20));
    assert!(!log.contains("panicked"), "no panic in the log:\n{}", serve.log_tail(40));

    // A graceful stop still works with a failed store.
    let stopped = serve.terminate(Duration::from_secs(15));
    let Some(exit) = stopped else { fail("SIGTERM did not stop the service within 15 s".into(), &serve) };
    assert!(exit.code().is_some(), "the service exited by itself, not by a signal: {exit}");
    let log = std::fs::read_to_string(serve.logs.last().unwrap()).unwrap_or_default();
    assert!(!log.contains("panicked"), "no panic while stopping:\n{}", serve.log_tail(40));
    let db = std::fs::metadata(root.join("data").join("db")).map(|m| m.len()).unwrap_or(0);
    assert!(db <= LIMIT_BLOCKS * 512, "the log stayed within the limit ({db} bytes)");

    // Without the limit: everything acknowledged is there, nothing refused is half there.
    if let Err(e) = serve.start(&http, START_LIMIT).await {
        fail(format!("the service does not start again after the failure: {e}"), &serve);
    }
    let mut errors = vec![];
    let mut acked: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut refused_present, mut refused_absent) = (0, 0);
    for r in &sent {
        match (&r.write, r.acknowledged()) {
            (Write::Usage(body), true) => {
                *acked.entry("usage").or_default() += 1;
                let (s, v) = c.usage(body).await;
                if (s, v["stored"].as_str()) != (200, Some("repeated")) {
                    errors.push(format!("acknowledged usage record {} is missing: {s} {v}", body["record_id"]));
                }
            }
            (Write::Usage(body), false) => match c.usage(body).await {
                (200, _) => refused_present += 1,
                (201, _) => refused_absent += 1,
                (s, v) => errors.push(format!("refused usage record {} sent again: {s} {v}", body["record_id"])),
            },
            (Write::Org { org_id: Some(org), owner }, true) => {
                *acked.entry("organization").or_default() += 1;
                let (s, v) =
                    c.call(Method::GET, &format!("/api/v1/ops/entities/organization/{org}"), Some(OP), None).await;
                let owner_there = v["data"]["members"]
                    .as_object()
                    .is_some_and(|m| m.values().any(|m| m["email"] == owner.as_str() && m["role"] == "owner"));
                if s != 200 || !owner_there {
                    errors.push(format!("acknowledged organization {org} is missing or lost its owner: {s} {v}"));
                }
            }
            (Write::Invitation { org_id, invitation_id: Some(inv), email }, true) => {
                *acked.entry("invitation").or_default() += 1;
                let (_, v) =
                    c.call(Method::GET, &format!("/api/v1/ops/entities/organization/{org_id}"), Some(OP), None).await;
                if v["data"]["invitations"][inv.as_str()]["email"] != email.as_str() {
                    errors.push(format!("acknowledged invitation {inv} of {email} is missing: {v}"));
                }
            }
            (Write::Register { email }, true) => {
                *acked.entry("registration").or_default() += 1;
                let (s, v) = c.login(email).await;
                if s != 201 {
                    errors.push(format!("acknowledged registration of {email} is missing: {s} {v}"));
                }
            }
            (Write::Register { email }, false) => match c.register(email).await {
                (201, _) => refused_absent += 1,
                (409, _) => {
                    // The user was written before the failure; logging in completes the registration.
                    refused_present += 1;
                    let (s, login) = c.login(email).await;
                    let token = login["token"].as_str().unwrap_or_default();
                    let (_, orgs) = c.call(Method::GET, "/api/v1/orgs", Some(token), None).await;
                    let owns = orgs["orgs"].as_array().is_some_and(|o| o.iter().any(|o| o["role"] == "owner"));
                    if s != 201 || !owns {
                        errors.push(format!("refused registration of {email} is half there: {s} {login} {orgs}"));
                    }
                }
                (s, v) => errors.push(format!("refused registration of {email} registered again: {s} {v}")),
            },
            (Write::Org { .. } | Write::Invitation { .. }, true) => {
                errors.push(format!("acknowledged without an id: {r:?}"));
            }
            // A refused organization or invitation has no id to look for; its batch is atomic like the others.
            (Write::Org { .. } | Write::Invitation { .. }, false) => {}
        }
    }
    let body = json!({"record_id": "after-restart", "org_id": owner.2, "resource_id": "c", "cu_type": "performance",
                      "cu": 1, "start": now - TimeDelta::minutes(10), "end": now});
    let (s, v) = c.usage(&body).await;
    if s != 201 {
        errors.push(format!("the restarted service does not take writes: {s} {v}"));
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(20);
        fail(format!("{n} problems after the restart:\n  {}", errors.join("\n  ")), &serve);
    }
    let _ = serve.terminate(Duration::from_secs(15));
    println!(
        "storage faults: {} writes, answers {by_answer:?}; acknowledged {acked:?}, all present after the restart; \
         the store failed at write #{first_failure} with a {db}-byte log; of the refused writes sent again \
         {refused_present} were complete and {refused_absent} absent, none half there; SIGTERM: {exit}; took {:?}",
        sent.len(),
        started.elapsed()
    );
}
