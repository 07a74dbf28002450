//! Several `marketflow serve` processes on one PostgreSQL server (a throwaway one, `initdb` in a temporary
//! directory), with short leases (2 s): failover after SIGKILL, fencing of a node paused with SIGSTOP past its lease
//! (and the same with fencing switched off, which must break a journal, to show the check has teeth), a node cut
//! off from the database, forwarding and request ids, and the graceful hand-over on SIGTERM.
//!
//! The tests of this binary run one at a time (each starts several debug builds of the service on two cores).

#[path = "proxy/mod.rs"]
mod proxy;
mod serve;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use marketflow::aliyun::token::spi_token;
use marketflow::store::postgres::server::shared;
use marketflow::store::shard;
use serde_json::Value;
use serve::{free_port, Serve};

const ISV: &str = "cluster-isv-key";
const OP: &str = "cluster-operator-token";
const SVC: &str = "cluster-service-token";
const SECRET: &str = "cluster-secret-of-the-tests";
const LEASE_MS: u64 = 2_000;

/// One test at a time (each test runs on a runtime of its own: an async lock, so that clippy and the runtimes agree).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("an HTTP client")
}

/// Nodes on one database.
struct Nodes {
    root: tempfile::TempDir,
    db: String,
    nodes: Vec<Serve>,
    http: reqwest::Client,
}

impl Nodes {
    /// The environment of node `i`; `extra` adds to it.
    fn env(&self, i: usize, port: u16, db: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = [
            ("MARKETFLOW_DATABASE_URL", db.to_string()),
            ("MARKETFLOW_CLUSTER_SECRET", SECRET.into()),
            ("MARKETFLOW_NODE_ID", format!("n{i}")),
            ("MARKETFLOW_NODE_URL", url.clone()),
            ("MARKETFLOW_LEASE", format!("{LEASE_MS}ms")),
            ("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}")),
            ("MARKETFLOW_DATA_DIR", self.root.path().join(format!("data-{i}")).display().to_string()),
            ("MARKETFLOW_PUBLIC_URL", url),
            ("MARKETFLOW_ALIYUN_ISV_KEY", ISV.into()),
            // Nobody listens there: calls fail and are retried, which these tests do not look at.
            ("MARKETFLOW_ALIYUN_ENDPOINT", format!("http://127.0.0.1:{}", free_port())),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "cluster-ak".into()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "cluster-ak-secret".into()),
            ("MARKETFLOW_OPERATOR_TOKEN", OP.into()),
            ("MARKETFLOW_SERVICE_TOKEN", SVC.into()),
            ("RUST_LOG", "info,actix_web=warn,actix_server=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().cloned());
        env
    }

    /// Starts `n` nodes on a fresh database; node `i` gets `extra(i)` and its database URL from `db_of(i, url)`.
    async fn start(
        n: usize,
        extra: impl Fn(usize) -> Vec<(String, String)>,
        db_of: impl Fn(usize, &str) -> String,
    ) -> Self {
        let db = shared().fresh().unwrap_or_else(|e| panic!("{e}"));
        let mut nodes = Nodes {
            root: tempfile::Builder::new().prefix("cluster-").tempdir().unwrap(),
            db,
            nodes: vec![],
            http: http(),
        };
        for i in 0..n {
            let port = free_port();
            let env = nodes.env(i, port, &db_of(i, &nodes.db), &extra(i));
            std::fs::create_dir_all(nodes.root.path().join(format!("logs-{i}"))).unwrap();
            nodes.nodes.push(Serve::new(&nodes.root.path().join(format!("logs-{i}")), port, env));
        }
        for i in 0..n {
            nodes.nodes[i]
                .start(&nodes.http, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("node {i}: {e}"));
        }
        nodes
    }

    fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    async fn ops(&self, via: usize, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.url(via))).bearer_auth(OP).send().await.expect("an answer");
        assert!(r.status().is_success(), "{path} via n{via}: {}", r.status());
        r.json().await.expect("JSON")
    }

    async fn metric(&self, i: usize, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.url(i))).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not on n{i}'s /metrics"))
    }

    /// The owner of every shard as node `via` sees it (`None`: no live lease).
    async fn owners(&self, via: usize) -> Vec<Option<String>> {
        let view = self.ops(via, "/api/v1/ops/cluster").await;
        let now = view["now"].as_str().unwrap().to_string();
        view["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| match (s["owner"].as_str(), s["lease_until"].as_str()) {
                (Some(o), Some(until)) if until > now.as_str() => Some(o.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Waits until every shard has an owner among `live` and each of them holds some.
    async fn wait_balanced(&self, live: &[usize], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let owners = self.owners(live[0]).await;
            let held: Vec<usize> =
                live.iter().map(|i| owners.iter().filter(|o| o.as_deref() == Some(&format!("n{i}"))).count()).collect();
            if owners.iter().all(Option::is_some) && held.iter().all(|h| *h > 0) && held.iter().sum::<usize>() == 256 {
                return;
            }
            assert!(Instant::now() < deadline, "the shards never settled over {live:?}: {held:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self, i: usize) -> String {
        self.nodes[i].log_tail(40)
    }
}

/// Sends a signed SPI call to `url`; answers the status and the body.
async fn spi(http: &reqwest::Client, url: &str, params: &[(&str, String)]) -> (u16, Value) {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut form = owned.clone();
    form.push(("token".into(), spi_token(&owned, ISV)));
    match http.post(format!("{url}/aliyun/spi")).form(&form).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn create(order_biz_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("action", "createInstance".into()),
        ("aliUid", "1234567".into()),
        ("orderBizId", order_biz_id.into()),
        ("orderId", format!("o-{order_biz_id}")),
        ("productCode", "cmgj00063418".into()),
        ("skuId", "sku-1".into()),
        ("trial", "false".into()),
    ]
}

fn renew(instance: &str, order: &str) -> Vec<(&'static str, String)> {
    vec![
        ("action", "renewInstance".into()),
        ("instanceId", instance.into()),
        ("orderId", order.into()),
        ("expiredOn", "2030-01-01 00:00:00".into()),
    ]
}

fn accepted(r: &(u16, Value)) -> bool {
    r.0 == 200 && (r.1["success"] == true || r.1["instanceId"].is_string())
}

/// An instance id whose shard `node` holds, as the owners say; a different `salt` gives a different id.
fn instance_of(owners: &[Option<String>], node: &str, salt: &str) -> String {
    let base = 500_000_000_000u64 + u64::from(shard::of_entity("salt", salt)) * 1_000_000 + salt.len() as u64 * 100_000;
    (0..100_000u64)
        .map(|n| (base + n).to_string())
        .find(|id| owners[shard::of_entity("subscription", id) as usize].as_deref() == Some(node))
        .expect("an id in a shard of that node")
}

/// The journal of a subscription, read through node `via`.
async fn journal(nodes: &Nodes, via: usize, id: &str) -> Vec<Value> {
    let j = nodes.ops(via, &format!("/api/v1/ops/entities/subscription/{id}/journal?limit=1000")).await;
    j["items"].as_array().cloned().unwrap_or_default()
}

/// What is wrong with a journal: a sequence number missing or repeated, an input twice, an acknowledged input
/// missing.
fn journal_problems(entries: &[Value], acked: &[String]) -> Vec<String> {
    let mut problems = vec![];
    for (i, e) in entries.iter().enumerate() {
        if e["seq"].as_u64() != Some(i as u64 + 1) {
            problems.push(format!("entry {} has seq {}", i + 1, e["seq"]));
        }
    }
    let mut seen = BTreeSet::new();
    for e in entries {
        let id = e["input_id"].as_str().unwrap_or_default().to_string();
        if !seen.insert(id.clone()) {
            problems.push(format!("input {id} is in the journal twice"));
        }
    }
    for a in acked {
        if !seen.contains(a) {
            problems.push(format!("input {a} was acknowledged but is not in the journal"));
        }
    }
    problems
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().starts_with('T')))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

#[actix_rt::test]
async fn any_node_takes_any_request_and_request_ids_reach_the_journal() {
    let _one = serial().await;
    let nodes = Nodes::start(3, |_| vec![], |_, db| db.to_string()).await;
    nodes.wait_balanced(&[0, 1, 2], Duration::from_secs(30)).await;
    let owners = nodes.owners(0).await;
    // An instance of each node's shards, created and renewed through every other node.
    for owner in 0..3 {
        let id = instance_of(&owners, &format!("n{owner}"), &"x".repeat(owner + 1));
        let via = (owner + 1) % 3;
        let r = spi(&nodes.http, &nodes.url(via), &create(&id)).await;
        assert!(accepted(&r), "createInstance of {id} via n{via}: {r:?}\n{}", nodes.log(via));
        let rid = format!("req-{owner}-renew");
        let r = nodes
            .http
            .post(format!("{}/aliyun/spi", nodes.url((owner + 2) % 3)))
            .header("x-request-id", &rid)
            .form(&{
                let p: Vec<(String, String)> = renew(&id, "o-renew").into_iter().map(|(k, v)| (k.into(), v)).collect();
                let mut f = p.clone();
                f.push(("token".into(), spi_token(&p, ISV)));
                f
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], rid.as_str());
        let status = r.status();
        assert_eq!(status, 200, "{}\n{}", r.text().await.unwrap_or_default(), nodes.log((owner + 2) % 3));
        let entries = journal(&nodes, via, &id).await;
        let renewal = entries.iter().find(|e| e["input_id"] == "spi:renewInstance:o-renew").expect("the renewal");
        assert_eq!(renewal["request_id"], rid.as_str(), "the request id travelled through forwarding");
    }
    let mut received = 0.0;
    for i in 0..3 {
        received += nodes.metric(i, "marketflow_forwarded_in_total").await;
    }
    assert!(received >= 6.0, "every call went through another node: {received} forwarded");
    // `ctl cluster`: every node serving, the shards' runs and their owners.
    let out = std::process::Command::new(serve::binary())
        .args(["ctl", "cluster"])
        .env_clear()
        .env("MARKETFLOW_URL", nodes.url(2))
        .env("MARKETFLOW_OPERATOR_TOKEN", OP)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("postgres mode, asked n2"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" serving ")).count(), 3, "{text}");
    assert!(text.contains("0 shards without a live lease"), "{text}");
}

#[actix_rt::test]
async fn after_a_sigkill_the_dead_nodes_shards_serve_again_within_two_leases() {
    let _one = serial().await;
    let mut nodes = Nodes::start(3, |_| vec![], |_, db| db.to_string()).await;
    nodes.wait_balanced(&[0, 1, 2], Duration::from_secs(30)).await;
    let owners = nodes.owners(1).await;
    let id = instance_of(&owners, "n0", "failover");
    let r = spi(&nodes.http, &nodes.url(1), &create(&id)).await;
    assert!(accepted(&r), "{r:?}");
    let killed = Instant::now();
    nodes.nodes[0].kill();
    // Served again: an input for an entity of the dead node's shards is taken, through another node.
    let mut n = 0;
    let served = loop {
        n += 1;
        if accepted(&spi(&nodes.http, &nodes.url(1), &renew(&id, &format!("o-after-{n}"))).await) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "never served again:\n{}", nodes.log(1));
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    nodes.wait_balanced(&[1, 2], Duration::from_secs(10)).await;
    println!("failover: served again {served:?} after the SIGKILL (lease {LEASE_MS} ms)");
    assert!(served < Duration::from_millis(2 * LEASE_MS), "served again only after {served:?}");
}

/// Pauses node 0 at `pausepoint` in the middle of a commit of an entity it holds, until node 1 took the shard;
/// answers the journal's problems after it is continued, and whether its request was refused.
async fn pause_past_the_lease(pausepoint: &str, fencing: bool) -> (Vec<String>, u16) {
    let arm = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let arm_path = arm.to_path_buf();
    drop(arm);
    let extra = |i: usize| {
        let mut e = vec![];
        if i == 0 {
            e.push(("MARKETFLOW_PAUSEPOINT".to_string(), pausepoint.to_string()));
            e.push(("MARKETFLOW_PAUSEPOINT_ARM".to_string(), arm_path.display().to_string()));
            if !fencing {
                e.push(("MARKETFLOW_UNSAFE_NO_FENCING".to_string(), "true".to_string()));
            }
        }
        e
    };
    let nodes = Nodes::start(2, extra, |_, db| db.to_string()).await;
    nodes.wait_balanced(&[0, 1], Duration::from_secs(30)).await;
    let owners = nodes.owners(1).await;
    let id = instance_of(&owners, "n0", pausepoint);
    let mut acked = vec!["spi:createInstance".to_string()];
    assert!(accepted(&spi(&nodes.http, &nodes.url(0), &create(&id)).await));
    for n in 0..3 {
        let order = format!("o-before-{n}");
        assert!(accepted(&spi(&nodes.http, &nodes.url(0), &renew(&id, &order)).await));
        acked.push(format!("spi:renewInstance:{order}"));
    }
    // Armed: the commit on node 0 that writes the renewal `o-paused` stops the process in the middle of it (the
    // subscription's calls fail and are retried meanwhile: their commits pass).
    std::fs::write(&arm_path, b"o-paused").unwrap();
    let pid = nodes.nodes[0].pid().unwrap();
    let (http, url, paused_id) = (nodes.http.clone(), nodes.url(0), id.clone());
    let paused = actix_rt::spawn(async move { spi(&http, &url, &renew(&paused_id, "o-paused")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped(pid) {
        assert!(Instant::now() < deadline, "node 0 never reached {pausepoint}:\n{}", nodes.log(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Node 1 takes the paused node's shards once its lease ended and its heartbeat went silent.
    let shard = shard::of_entity("subscription", &id) as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if nodes.owners(1).await[shard].as_deref() == Some("n1") {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 never took the shard:\n{}", nodes.log(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..3 {
        let order = format!("o-taken-{n}");
        let r = spi(&nodes.http, &nodes.url(1), &renew(&id, &order)).await;
        assert!(accepted(&r), "renewal via the new owner: {r:?}\n{}", nodes.log(1));
        acked.push(format!("spi:renewInstance:{order}"));
    }
    signal(pid, "CONT");
    let answer = paused.await.unwrap();
    if accepted(&answer) {
        acked.push("spi:renewInstance:o-paused".into());
    }
    // What node 0 may still write, it writes now; node 1 takes one more renewal after it.
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    let r = spi(&nodes.http, &nodes.url(1), &renew(&id, "o-last")).await;
    if accepted(&r) {
        acked.push("spi:renewInstance:o-last".into());
    }
    let entries = journal(&nodes, 1, &id).await;
    (journal_problems(&entries, &acked), answer.0)
}

#[actix_rt::test]
async fn a_node_paused_past_its_lease_has_its_commit_refused_and_no_journal_breaks() {
    let _one = serial().await;
    for point in ["pg_before_begin", "pg_before_lock", "pg_after_lock"] {
        let (problems, status) = pause_past_the_lease(point, true).await;
        assert!(problems.is_empty(), "paused at {point}: {problems:#?}");
        assert_ne!(status, 200, "paused at {point}: the paused node's commit must be refused");
    }
}

#[actix_rt::test]
async fn without_fencing_a_node_paused_past_its_lease_breaks_a_journal() {
    let _one = serial().await;
    // The test-only switch: the same pause without the check inside the transaction. A decision taken under the
    // old lease lands on top of the new owner's commits.
    let (problems, status) = pause_past_the_lease("pg_before_begin", false).await;
    assert!(!problems.is_empty(), "without fencing the paused node's late commit must show (answered {status})");
    println!("without fencing: {problems:?}");
}

#[actix_rt::test]
async fn a_node_cut_off_from_postgres_stops_its_calls_before_its_lease_ends_and_steals_nothing_on_return() {
    let _one = serial().await;
    let proxy = proxy::PgProxy::start(shared().server().port(), 0);
    let port = proxy.port;
    // Node 0 reaches the database through the proxy; every subscription polls DescribeInstance every service
    // minute (at ×60, every second) while it waits for its activation, which the marketplace (the simulator) keeps
    // from coming: each poll a call started and answered. Forty subscriptions made 25 ms apart poll about every
    // 25 ms, which is how closely the test sees when calls stop.
    let sim_port = free_port();
    let extra = [
        ("MARKETFLOW_TIME_SCALE".to_string(), "60".to_string()),
        ("MARKETFLOW_ALIYUN_ENDPOINT".to_string(), format!("http://127.0.0.1:{sim_port}")),
        ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID".to_string(), "sim-ak".to_string()),
        ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET".to_string(), "sim-ak-secret".to_string()),
    ];
    let nodes = Nodes::start(
        2,
        |_| extra.to_vec(),
        move |i, db| {
            if i == 0 {
                db.replace(&format!("127.0.0.1:{}", shared().server().port()), &format!("127.0.0.1:{port}"))
            } else {
                db.to_string()
            }
        },
    )
    .await;
    nodes.wait_balanced(&[0, 1], Duration::from_secs(30)).await;
    let health: Value = nodes.http.get(format!("{}/healthz", nodes.url(1))).send().await.unwrap().json().await.unwrap();
    let now =
        chrono::DateTime::parse_from_rfc3339(health["now"].as_str().unwrap()).unwrap().with_timezone(&chrono::Utc);
    let clock = std::sync::Arc::new(marketflow::clock::ScaledClock::new(now, 60.0));
    let mut sc = marketflow::aliyun::simulator::SimulatorConfig::new(
        nodes.url(1),
        marketflow::config::Secret::new(ISV),
        "sim-ak",
        marketflow::config::Secret::new("sim-ak-secret"),
        clock,
    );
    sc.listen = format!("127.0.0.1:{sim_port}");
    let never = Duration::from_secs(30 * 86_400);
    sc.activation_delay = Some((never, never));
    let sim = marketflow::aliyun::simulator::start(sc).await.expect("the simulator starts");
    for n in 0..40 {
        let r = nodes
            .http
            .post(format!("http://127.0.0.1:{sim_port}/sim/instances"))
            .json(&serde_json::json!({"ali_uid": format!("77{n:04}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = nodes.metric(0, "marketflow_calls_started_total").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = nodes.metric(0, "marketflow_calls_started_total").await;
    assert!(after > before, "node 0 makes calls before the cut: {before} -> {after}\n{}", nodes.log(0));
    let lost_before = nodes.metric(1, "marketflow_shards_lost_total").await;
    let handed_before = nodes.metric(1, "marketflow_shards_handed_over_total").await;

    // The lease connection alone: renewals and heartbeats fail, commits and calls go on, until the node stops
    // them itself.
    let cut = Instant::now();
    proxy.partition(Some("leases"));
    let mut last = nodes.metric(0, "marketflow_calls_started_total").await;
    let mut last_change = cut;
    while cut.elapsed() < Duration::from_millis(3 * LEASE_MS) {
        let now = nodes.metric(0, "marketflow_calls_started_total").await;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stopped_after = last_change - cut;
    println!("cut off: node 0's last external call started {stopped_after:?} after the cut (lease {LEASE_MS} ms)");
    // Its leases were renewed at most a fifth of a lease before the cut: they end no sooner than 4/5 of a lease
    // after it. Calls stop by 4/5 of a lease after the last renewal, so before that; and they went on until close
    // to it (the cut did not simply stop everything).
    assert!(stopped_after < Duration::from_millis(LEASE_MS * 4 / 5), "calls went on for {stopped_after:?}");
    assert!(
        stopped_after > Duration::from_millis(LEASE_MS / 2),
        "calls stopped at once: {stopped_after:?}\n{}",
        nodes.log(0)
    );
    // Node 1 took every shard meanwhile.
    let owners = nodes.owners(1).await;
    assert!(owners.iter().all(|o| o.as_deref() == Some("n1")), "{owners:?}");

    proxy.partition(None);
    let healed = Instant::now();
    // For a lease after it is back, node 0 takes nothing; node 1 loses nothing it did not hand over.
    while healed.elapsed() < Duration::from_millis(LEASE_MS) {
        let owners = nodes.owners(1).await;
        assert!(owners.iter().all(|o| o.as_deref() == Some("n1")), "node 0 took a shard within a lease: {owners:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes.wait_balanced(&[0, 1], Duration::from_secs(20)).await;
    let lost = nodes.metric(1, "marketflow_shards_lost_total").await - lost_before;
    let handed = nodes.metric(1, "marketflow_shards_handed_over_total").await - handed_before;
    assert_eq!(lost, handed, "every shard node 1 lost, it handed over: none was stolen");
    let _ = sim.stop().await;
}

#[actix_rt::test]
async fn sigterm_hands_every_shard_over_before_the_node_stops() {
    let _one = serial().await;
    let mut nodes = Nodes::start(2, |_| vec![], |_, db| db.to_string()).await;
    nodes.wait_balanced(&[0, 1], Duration::from_secs(30)).await;
    let stopping = Instant::now();
    let status = nodes.nodes[0].terminate(Duration::from_secs(20)).expect("node 0 stops");
    assert!(status.success(), "{status}");
    // Released, not left to expire: node 1 holds everything within a round or two, well before a lease.
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS);
    loop {
        let owners = nodes.owners(1).await;
        if owners.iter().all(|o| o.as_deref() == Some("n1")) {
            break;
        }
        assert!(Instant::now() < deadline, "not handed over within a lease: {owners:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("graceful hand-over: node 1 held every shard {:?} after SIGTERM", stopping.elapsed());
    let view = nodes.ops(1, "/api/v1/ops/cluster").await;
    let n0 = view["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "n0").cloned().unwrap();
    assert_eq!(n0["state"], "stopped");
}

/// Runs `marketflow <args>` with `env` and no other variable; fails with its output if it fails.
fn admin(args: &[&str], env: &[(&str, String)]) {
    let out = std::process::Command::new(serve::binary())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "marketflow {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[actix_rt::test]
async fn sled_to_a_file_to_postgres_to_a_file_is_byte_identical_and_a_node_serves_what_was_imported() {
    let _one = serial().await;
    // A data directory of an earlier build (the upgrade test's fixture): real entities, journals, records.
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade-88443ce.tar.gz");
    let st = std::process::Command::new("tar").arg("xzf").arg(&fixture).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success());
    let (a, b) = (dir.path().join("a.export"), dir.path().join("b.export"));
    let data = ("MARKETFLOW_DATA_DIR", dir.path().join("data").display().to_string());
    admin(&["export", "--to", a.to_str().unwrap()], &[data]);
    let db = shared().fresh().unwrap_or_else(|e| panic!("{e}"));
    let database = ("MARKETFLOW_DATABASE_URL", db.clone());
    admin(&["import", "--from", a.to_str().unwrap()], std::slice::from_ref(&database));
    admin(&["export", "--to", b.to_str().unwrap()], std::slice::from_ref(&database));
    let (first, second) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(first.len() > 1000, "the fixture has data: {} bytes", first.len());
    assert!(first == second, "sled → file → PostgreSQL → file changed the bytes");
    // A second import into the same database is refused: it holds rows now.
    let out = std::process::Command::new(serve::binary())
        .args(["import", "--from", a.to_str().unwrap()])
        .env_clear()
        .env(database.0, &database.1)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // A node on the imported database serves the entities, and exports the same bytes while it serves.
    let nodes = Nodes::start(1, |_| vec![], |_, _| db.clone()).await;
    let subscriptions = nodes.ops(0, "/api/v1/ops/entities?kind=subscription").await;
    assert!(!subscriptions["items"].as_array().unwrap().is_empty(), "{subscriptions}");
    let live = nodes.http.get(format!("{}/api/v1/ops/export", nodes.url(0))).bearer_auth(OP).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let live = live.bytes().await.unwrap();
    // The node wrote since (its anchor, the counts it keeps, the timers that were overdue): the rows it did not
    // touch are the imported ones, and the file reads back whole.
    let text = String::from_utf8(live.to_vec()).unwrap();
    assert!(
        text.starts_with("marketflow-export 1\n") && text.trim_end().rsplit('\n').next().unwrap().starts_with("end ")
    );
    let journal_rows = |t: &str| t.lines().filter(|l| l.starts_with("j ")).count();
    assert!(journal_rows(&text) >= journal_rows(&String::from_utf8(first).unwrap()), "the journals are all there");
}

#[actix_rt::test]
async fn scripts_cluster_sh_starts_three_nodes_on_a_throwaway_postgres_and_stops_them() {
    let _one = serial().await;
    use std::io::BufRead;
    // Three consecutive free ports for the nodes.
    let base = (0..200)
        .map(|_| free_port())
        .find(|p| *p < 60_000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("three free ports in a row");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    let mut child = std::process::Command::new("bash")
        .arg(&script)
        .env("MARKETFLOW_BIN", serve::binary())
        .env("CLUSTER_BASE_PORT", base.to_string())
        .env("CLUSTER_SIM_PORT", free_port().to_string())
        .env("MARKETFLOW_LEASE", "2s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("the script runs");
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut seen = vec![];
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let ready = line.starts_with("ready");
            seen.push(line);
            if ready {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines.is_finished() {
        assert!(Instant::now() < deadline, "scripts/cluster.sh never said it was ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let printed = lines.join().unwrap();
    assert!(printed.last().is_some_and(|l| l.starts_with("ready")), "{printed:#?}");
    let dir = printed[0].rsplit("logs in ").next().unwrap().trim().to_string();
    for i in 0..3 {
        assert!(printed.iter().any(|l| l.contains(&format!("http://127.0.0.1:{}/", base + i))), "{printed:#?}");
    }
    // All three serve, and share the shards.
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view: Value = http
            .get(format!("http://127.0.0.1:{base}/api/v1/ops/cluster"))
            .bearer_auth("dev-operator-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let by_node = view["shards_by_node"].as_object().cloned().unwrap_or_default();
        if by_node.len() == 3 && view["unowned"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes never shared the shards: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the script did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was left behind");
    assert!(std::net::TcpListener::bind(("127.0.0.1", base)).is_ok(), "node 1 still listens");
}
