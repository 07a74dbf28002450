//! The service killed right after a push reached the marketplace and before the push's result was committed:
//! after the restart the window is not pushed a second time; it waits for an operator with an "unknown outcome".
//!
//! The service is a real child process (the `marketflow` binary, scaled clock 600×) that aborts at the failpoint
//! `after_call:push_metering_data`; the local marketplace runs in this process on the same scaled time.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use marketflow::aliyun::simulator::{self, SimulatorConfig};
use marketflow::clock::{Clock, ScaledClock};
use marketflow::config::Secret;
use serde_json::{json, Value};

const ISV: &str = "crash-isv";
const OP: &str = "metering-crash-operator";
const SVC: &str = "metering-crash-service";

struct Service {
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, port: u16, sim: &str, failpoint: Option<&str>) -> Service {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_marketflow"));
    cmd.arg("serve")
        .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("MARKETFLOW_DATA_DIR", dir.join("data"))
        .env("MARKETFLOW_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("MARKETFLOW_ALIYUN_ISV_KEY", ISV)
        .env("MARKETFLOW_ALIYUN_ENDPOINT", sim)
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "crash-ak")
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "crash-ak-secret")
        .env("MARKETFLOW_OPERATOR_TOKEN", OP)
        .env("MARKETFLOW_SERVICE_TOKEN", SVC)
        .env("MARKETFLOW_TIME_SCALE", "600")
        .env_remove("MARKETFLOW_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(f) = failpoint {
        cmd.env("MARKETFLOW_FAILPOINT", f);
    }
    Service { child: cmd.spawn().expect("the service starts") }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send().await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn until<F, Fut>(what: &str, secs: u64, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_push_interrupted_by_a_crash_is_not_pushed_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let service = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The marketplace starts first, on scaled time; the service's clock is anchored when it first starts.
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(Utc::now(), 600.0));
    let mut sc = SimulatorConfig::new(
        service.clone(),
        Secret::new(ISV),
        "crash-ak",
        Secret::new("crash-ak-secret"),
        clock.clone(),
    );
    sc.seed = Some(3);
    let sim = simulator::start(sc).await.unwrap();
    let sim_url = sim.base_url().trim_end_matches('/').to_string();

    let mut svc = spawn(dir.path(), port, &sim_url, Some("after_call:push_metering_data"));
    until("the service", 20, || async {
        (call(&http, reqwest::Method::GET, format!("{service}/healthz"), None, None).await.0 == 200)
            .then_some(Value::Null)
    })
    .await;

    let (s, reg) = call(
        &http,
        reqwest::Method::POST,
        format!("{service}/api/v1/accounts"),
        None,
        Some(json!({"email": "kai@example.com", "password": "correct horse battery", "name": "Kai"})),
    )
    .await;
    assert_eq!(s, 201, "{reg}");
    let org = reg["org_id"].as_str().unwrap().to_string();
    let (_, login) = call(
        &http,
        reqwest::Method::POST,
        format!("{service}/api/v1/sessions"),
        None,
        Some(json!({"email": "kai@example.com", "password": "correct horse battery"})),
    )
    .await;
    let token = login["token"].as_str().unwrap().to_string();

    let (_, inst) = call(
        &http,
        reqwest::Method::POST,
        format!("{sim_url}/sim/instances"),
        None,
        Some(json!({"ali_uid": "1777000000000001", "activation_after_seconds": 60})),
    )
    .await;
    let id = inst["order_biz_id"].as_str().unwrap().to_string();
    until("active", 20, || async {
        let (_, e) = call(
            &http,
            reqwest::Method::GET,
            format!("{service}/api/v1/ops/entities/subscription/{id}"),
            Some(OP),
            None,
        )
        .await;
        (e["state"] == "active").then_some(e)
    })
    .await;
    let (_, sso) = call(&http, reqwest::Method::GET, format!("{sim_url}/sim/instances/{id}/sso-url"), None, None).await;
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    no_redirect.get(sso["url"].as_str().unwrap()).bearer_auth(&token).send().await.unwrap();
    let (s, b) = call(
        &http,
        reqwest::Method::POST,
        format!("{service}/api/v1/marketplace/aliyun/subscriptions/{id}/binding"),
        Some(&token),
        Some(json!({"org_id": org})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    until("bound", 20, || async {
        let (_, v) = call(
            &http,
            reqwest::Method::GET,
            format!("{service}/api/v1/marketplace/aliyun/subscriptions/{id}"),
            Some(&token),
            None,
        )
        .await;
        (v["binding"]["status"] == "bound").then_some(v)
    })
    .await;
    // Ten minutes of 2 CU from the start of billing, reported once they have passed on the service's clock (at
    // 600× a few milliseconds are seconds of service time: usage ending "now" may overlap billing by less than a
    // unit, which is carried, not pushed).
    let m = until("billing to start", 20, || async {
        let (_, m) =
            call(&http, reqwest::Method::GET, format!("{service}/api/v1/ops/entities/metering/{id}"), Some(OP), None)
                .await;
        (m["state"] == "billing").then_some(m)
    })
    .await;
    let from: DateTime<Utc> = serde_json::from_value(m["data"]["next_start"].clone()).unwrap();
    let to = from + TimeDelta::minutes(10);
    until("ten minutes of billing", 20, || async {
        let (_, h) = call(&http, reqwest::Method::GET, format!("{service}/healthz"), None, None).await;
        let now: Option<DateTime<Utc>> = h["now"].as_str().and_then(|n| n.parse().ok());
        now.filter(|n| *n >= to).map(|_| Value::Null)
    })
    .await;
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        format!("{service}/api/v1/usage"),
        Some(SVC),
        Some(json!({"record_id": "u1", "org_id": org, "resource_id": "c1", "cu_type": "performance", "cu": 2.0,
                    "start": from, "end": to})),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // The push reaches the marketplace, then the service aborts before committing its result.
    // The window holding the usage may close two service hours from now (a bind in the last five minutes of an
    // hour joins the next one: 12.5 s), and a push may take its 20 s timeout before the failpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = svc.child.try_wait().ok().flatten() {
            break format!("{s:?}");
        }
        if Instant::now() > deadline {
            let (_, m) = call(
                &http,
                reqwest::Method::GET,
                format!("{service}/api/v1/ops/entities/metering/{id}"),
                Some(OP),
                None,
            )
            .await;
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!("timed out waiting for the crash at the failpoint\nmetering: {m:#}\nserve.log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let received = || async {
        let (_, m) =
            call(&http, reqwest::Method::GET, format!("{sim_url}/sim/metering?instance_id={id}"), None, None).await;
        m["records"].as_array().map(|r| r.len()).unwrap_or(0)
    };
    assert_eq!(received().await, 1, "the push arrived before the crash ({status})");

    // Restarted without the failpoint: recovery finds the attempt in flight and hands it to an operator.
    drop(svc);
    let _svc = spawn(dir.path(), port, &sim_url, None);
    until("the service again", 20, || async {
        (call(&http, reqwest::Method::GET, format!("{service}/healthz"), None, None).await.0 == 200)
            .then_some(Value::Null)
    })
    .await;
    let m = until("the interrupted push to need an operator", 20, || async {
        let (_, m) =
            call(&http, reqwest::Method::GET, format!("{service}/api/v1/ops/entities/metering/{id}"), Some(OP), None)
                .await;
        (m["needs_attention"] == true).then_some(m)
    })
    .await;
    let call_row =
        m["pending_calls"].as_array().unwrap().iter().find(|c| c["call"] == "push_metering_data").cloned().unwrap();
    assert_eq!(call_row["status"], "needs_attention");
    assert!(call_row["last_error"].as_str().unwrap().contains("unknown"), "{call_row}");
    // Time passes (10 service minutes = 1 s): nothing is pushed again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received().await, 1, "never pushed a second time");
    let _ = sim.stop().await;
}
