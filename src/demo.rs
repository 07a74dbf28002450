//! `marketflow demo`: the service and the local marketplace in one process on a scaled clock, walking one
//! buyer through the whole lifecycle — opening, activation, binding, an hour of usage billed, an account switch,
//! arrears and resubscription — then printing the timeline from the entities' journals and leaving the service
//! up for browsing (pages, ops API, `ctl`).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};

use crate::aliyun::simulator::{self, SimulatorConfig};
use crate::clock::{Clock, ScaledClock};
use crate::config::{Config, Secret};
use crate::startup::{Application, Overrides};

/// The flags of `marketflow demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Service seconds per real second (3600: an hour passes in a second).
    #[arg(long, env = "MARKETFLOW_TIME_SCALE", default_value_t = 1200.0)]
    pub time_scale: f64,
    /// Address of the service.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the local marketplace.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub simulator_listen: String,
    /// Exit after the walk instead of leaving the service up.
    #[arg(long)]
    pub exit: bool,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("step `{step}` failed: {detail}")]
    Step { step: &'static str, detail: String },
}

struct Walk {
    http: reqwest::Client,
    service: String,
    sim: String,
    clock: Arc<dyn Clock>,
}

const OP: &str = "dev-operator-token";
const SVC: &str = "dev-service-token";

impl Walk {
    async fn call(
        &self,
        step: &'static str,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let mut r = self.http.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| Error::Step { step, detail: e.to_string() })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() && !status.is_redirection() {
            return Err(Error::Step { step, detail: format!("{status}: {v}") });
        }
        Ok(v)
    }

    async fn until(&self, step: &'static str, mut check: impl AsyncFnMut() -> Option<Value>) -> Result<Value, Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(Error::Step { step, detail: "timed out".into() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn entity(&self, kind: &str, id: &str) -> Value {
        self.call(
            "inspect",
            reqwest::Method::GET,
            format!("{}/api/v1/ops/entities/{kind}/{id}", self.service),
            Some(OP),
            None,
        )
        .await
        .unwrap_or(Value::Null)
    }

    async fn open_active(&self, ali_uid: &str) -> Result<String, Error> {
        let v = self
            .call(
                "open",
                reqwest::Method::POST,
                format!("{}/sim/instances", self.sim),
                None,
                Some(json!({ "ali_uid": ali_uid })),
            )
            .await?;
        let id = v["order_biz_id"].as_str().unwrap_or_default().to_string();
        self.until("activation", async || {
            (self.entity("subscription", &id).await["state"] == "active").then_some(Value::Null)
        })
        .await?;
        Ok(id)
    }

    async fn bind(&self, token: &str, id: &str, org: &str) -> Result<(), Error> {
        let link = self
            .call("免登 link", reqwest::Method::GET, format!("{}/sim/instances/{id}/sso-url", self.sim), None, None)
            .await?;
        let no_redirect = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        no_redirect
            .get(link["url"].as_str().unwrap_or_default())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::Step { step: "免登", detail: e.to_string() })?;
        let url = format!("{}/api/v1/marketplace/aliyun/subscriptions/{id}", self.service);
        self.call("bind", reqwest::Method::POST, format!("{url}/binding"), Some(token), Some(json!({ "org_id": org })))
            .await?;
        self.until("binding", async || {
            let v = self.call("binding", reqwest::Method::GET, url.clone(), Some(token), None).await.ok()?;
            (v["binding"]["status"] == "bound").then_some(v)
        })
        .await?;
        Ok(())
    }

    async fn org_state(&self, org: &str, state: &str) -> Result<(), Error> {
        self.until("organization", async || {
            (self.entity("organization", org).await["state"] == state).then_some(Value::Null)
        })
        .await?;
        Ok(())
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs, out: &mut dyn std::io::Write) -> Result<(), Error> {
    let started = Instant::now();
    let dir = tempfile_dir()?;
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(Utc::now(), args.time_scale));
    let listener = TcpListener::bind(&args.listen).map_err(|e| Error::Setup(format!("{}: {e}", args.listen)))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let service = format!("http://127.0.0.1:{port}");
    let mut sc = SimulatorConfig::new(
        service.clone(),
        Secret::new("dev-isv-key"),
        "dev-access-key-id",
        Secret::new("dev-access-key-secret"),
        clock.clone(),
    );
    sc.listen = args.simulator_listen.clone();
    sc.seed = Some(2026);
    let sim = simulator::start(sc).await.map_err(|e| Error::Setup(e.to_string()))?;
    let config = Config {
        listen: args.listen.clone(),
        data_dir: dir.clone(),
        public_url: service.clone(),
        aliyun_endpoint: sim.base_url().trim_end_matches('/').to_string(),
        dev: true,
        isv_key: Some(Secret::new("dev-isv-key")),
        access_key_id: Some("dev-access-key-id".into()),
        access_key_secret: Some(Secret::new("dev-access-key-secret")),
        operator_token: Some(Secret::new(OP)),
        service_token: Some(Secret::new(SVC)),
        sso_window: Duration::from_secs(24 * 3600),
        time_scale: args.time_scale,
        ..Config::default()
    };
    let app = Application::build_with(config, Overrides { clock: Some(clock.clone()), listener: Some(listener) })
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    let w = Walk {
        http: reqwest::Client::new(),
        service: service.clone(),
        sim: sim.base_url().trim_end_matches('/').to_string(),
        clock,
    };
    let _ = writeln!(out, "marketflow demo: service {service}, marketplace {}, time ×{}", w.sim, args.time_scale);

    let reg = w
        .call(
            "register",
            reqwest::Method::POST,
            format!("{service}/api/v1/accounts"),
            None,
            Some(json!({"email": "buyer@example.com", "password": "demo-password", "name": "Demo Buyer"})),
        )
        .await?;
    let org = reg["org_id"].as_str().unwrap_or_default().to_string();
    let login = w
        .call(
            "login",
            reqwest::Method::POST,
            format!("{service}/api/v1/sessions"),
            None,
            Some(json!({"email": "buyer@example.com", "password": "demo-password"})),
        )
        .await?;
    let token = login["token"].as_str().unwrap_or_default().to_string();

    // Account A opens the service, binds it, and runs a cluster for an hour.
    let a = w.open_active("1000000000000001").await?;
    w.bind(&token, &a, &org).await?;
    // One CU for the hour after the binding, reported as it runs (before each window closes), billed hourly.
    // Whole seconds: usage is prorated to the second.
    let t0 =
        chrono::DurationRound::duration_trunc(w.clock.now(), TimeDelta::seconds(1)).unwrap_or_else(|_| w.clock.now());
    let h1 = chrono::DurationRound::duration_trunc(t0, TimeDelta::hours(1)).unwrap_or(t0) + TimeDelta::hours(1);
    for (n, (start, end)) in [(t0, h1), (h1, t0 + TimeDelta::hours(1))].into_iter().enumerate() {
        w.until("usage time passes", async || (w.clock.now() >= end).then_some(Value::Null)).await?;
        w.call(
            "usage",
            reqwest::Method::POST,
            format!("{service}/api/v1/usage"),
            Some(SVC),
            Some(json!({"record_id": format!("demo-{n}"), "org_id": org, "resource_id": "in01-demo",
                        "cu_type": "performance", "cu": 1.0, "start": start, "end": end})),
        )
        .await?;
    }
    let m = w
        .until("the hour billed", async || {
            let m = w.entity("metering", &a).await;
            (m["data"]["totals"]["units_pushed"].as_u64() == Some(1250)).then_some(m)
        })
        .await?;
    let _ = writeln!(out, "an hour of 1 CU billed: {} units pushed (¥1.25)", m["data"]["totals"]["units_pushed"]);
    // The switch: B opens, A closes, B is bound within the hour.
    let b = w.open_active("1000000000000002").await?;
    w.call("close A", reqwest::Method::POST, format!("{}/sim/instances/{a}/close", w.sim), None, None).await?;
    w.org_state(&org, "window").await?;
    w.bind(&token, &b, &org).await?;
    // Arrears: B runs out of balance; the organization freezes. C resubscribes and recovers it.
    w.call("expire B", reqwest::Method::POST, format!("{}/sim/instances/{b}/expire", w.sim), None, None).await?;
    w.org_state(&org, "frozen").await?;
    let c = w.open_active("1000000000000003").await?;
    w.bind(&token, &c, &org).await?;
    w.org_state(&org, "bound").await?;

    // The timeline, from the journals.
    let mut lines: Vec<(String, String)> = vec![];
    for (kind, id) in [
        ("subscription", a.as_str()),
        ("subscription", b.as_str()),
        ("subscription", c.as_str()),
        ("organization", org.as_str()),
        ("metering", a.as_str()),
    ] {
        let j = w
            .call(
                "journal",
                reqwest::Method::GET,
                format!("{service}/api/v1/ops/entities/{kind}/{id}/journal?limit=1000"),
                Some(OP),
                None,
            )
            .await?;
        for e in j["items"].as_array().cloned().unwrap_or_default() {
            if e["status"] != "accepted"
                || (e["from"] == e["to"]
                    && !["push_metering_data.ok", "bind", "binding_confirmed"]
                        .contains(&e["event"].as_str().unwrap_or("")))
            {
                continue;
            }
            let at = e["at"].as_str().unwrap_or_default().to_string();
            let note = e["notes"].as_array().and_then(|n| n.first()).and_then(|n| n.as_str()).unwrap_or("").to_string();
            lines.push((
                at.clone(),
                format!(
                    "{at}  {kind}/{id}  {} → {}  ({})  {note}",
                    e["from"].as_str().unwrap_or(""),
                    e["to"].as_str().unwrap_or(""),
                    e["event"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    lines.sort();
    let _ = writeln!(out, "\ntimeline (service time, from the journals):");
    for (_, l) in &lines {
        let _ = writeln!(out, "  {l}");
    }
    let bill = w
        .call("billing", reqwest::Method::GET, format!("{service}/api/v1/orgs/{org}/billing"), Some(&token), None)
        .await?;
    let _ = writeln!(
        out,
        "\nbilling overview: status {}, paid by Aliyun account {}",
        bill["status"], bill["payment_channel"]["aliyun_account_id"]
    );
    let _ = writeln!(out, "walk finished in {:.1} s", started.elapsed().as_secs_f64());
    if args.exit {
        handle.stop(true).await;
        let _ = sim.stop().await;
        return Ok(());
    }
    let _ = writeln!(
        out,
        "\nbrowse: {service}/login (buyer@example.com / demo-password), {service}/orgs/{org}/billing;\n\
        operators: {service}/console (token {OP}), {service}/api/docs, marketflow ctl --token {OP} entities list;\n\
        Ctrl-C to stop."
    );
    let _ = out.flush();
    let _ = tokio::signal::ctrl_c().await;
    handle.stop(true).await;
    let _ = sim.stop().await;
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("marketflow-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Setup(e.to_string()))?;
    Ok(dir)
}
