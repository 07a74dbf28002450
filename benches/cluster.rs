//! Several nodes on PostgreSQL (issue 16), side by side with sled on the same machine in the same run:
//!
//!     cargo bench --bench cluster              # full run (about 10 minutes on two cores)
//!     cargo bench --bench cluster -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! 1. Durable transitions per second with 100,000 entities, the engine in this process (as `transitions` measures
//!    it): on sled, and on PostgreSQL as a node of a cluster (leases taken, every commit fenced on its shard's
//!    epoch), alternating, on a throwaway server started by the bench (`initdb` in a temporary directory).
//! 2. The service over HTTP (`createInstance`, each a durable transition, load from another process over loopback,
//!    closed loop): one node on PostgreSQL, then three nodes on one PostgreSQL with the connections spread over all
//!    three (about two thirds of the inputs are forwarded to their entity's owner), and the same three nodes with
//!    each request sent straight to its entity's owner (no forwarding). Every process shares the same two cores:
//!    three nodes are not three machines; the two ratios tell what forwarding costs from what three processes and
//!    three transactions for one cost.
//! 3. `createInstance` at a fixed 1,000 requests per second through any node of three (open loop): the latency.
//! 4. Failover: three nodes; SIGKILL one; seconds until an input for an entity of its shards is taken again
//!    (through another node), with the default lease (10 s) and a short one (2 s); the median of several kills.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use marketflow::aliyun::token::spi_token;
use marketflow::clock::ManualClock;
use marketflow::cluster::{Cluster, ClusterConfig};
use marketflow::config::Secret;
use marketflow::engine::{Engine, EngineConfig};
use marketflow::store::postgres::{server, Options, PostgresStore};
use marketflow::store::{shard, Store};
use serde_json::{json, Value};
use support::load::{self, ISV_KEY};
use support::{median, n};

const OP: &str = "bench-operator-token";
const SECRET: &str = "bench-cluster-secret-0123";

// ---- 1. the engine on both stores ------------------------------------------------------------------------

struct EngineRound {
    create_rate: f64,
    rate: f64,
    commits_per_group: f64,
    group_ms: f64,
}

/// `pg`: the database to run on as a clustered node; `None`: sled in `dir`.
fn engine_round(dir: &Path, pg: Option<&str>, entities: usize, per_entity: usize, window: usize) -> EngineRound {
    let pg = pg.map(str::to_string);
    let dir = dir.to_path_buf();
    actix_rt::System::new().block_on(async move {
        let lease = Duration::from_secs(10);
        let (store, database): (Arc<dyn Store>, Option<Arc<PostgresStore>>) = match &pg {
            Some(url) => {
                let s = PostgresStore::connect(Options::new(url.clone(), "bench", lease)).expect("connects");
                (s.clone(), Some(s))
            }
            None => (support::open(&dir), None),
        };
        let config = EngineConfig {
            cluster_lease: database.as_ref().map(|_| lease),
            counter_writer: if database.is_some() { "bench".into() } else { String::new() },
            ..EngineConfig::default()
        };
        let engine = Engine::start(
            store.clone(),
            Arc::new(ManualClock::new(Utc::now())),
            common::registry(common::Flaky::new(0)),
            config,
        )
        .await
        .expect("engine starts");
        if let Some(db) = database {
            let cc = ClusterConfig {
                node: "bench".into(),
                url: "http://127.0.0.1:9".into(),
                lease,
                secret: Secret::new(SECRET),
                forward_timeout: Duration::from_secs(10),
            };
            Cluster::start(engine.clone(), db, cc).await.expect("joins");
            let deadline = Instant::now() + Duration::from_secs(30);
            while engine.ownership().held().len() < shard::SHARDS as usize {
                assert!(Instant::now() < deadline, "the node never held every shard");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let keys: Vec<_> = (0..entities).map(|i| common::key(&format!("acct{i:07}"))).collect();
        let e = &engine;
        let created = support::drive(entities, window, |i| {
            e.send(keys[i].clone(), common::ev("open", json!({"type": "open", "amount": 100})))
        })
        .await;
        let stats = engine.commit_stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let (g0, c0, us0) = (load(&stats.groups), load(&stats.commits), load(&stats.group_micros));
        let total = entities * per_entity;
        let took = support::drive(total, window, |i| {
            e.send(
                keys[i % entities].clone(),
                common::ev(&format!("dep{}", i / entities), json!({"type": "deposit", "amount": 1})),
            )
        })
        .await;
        let groups = load(&stats.groups) - g0;
        let commits = load(&stats.commits) - c0;
        let micros = load(&stats.group_micros) - us0;
        engine.shutdown();
        EngineRound {
            create_rate: entities as f64 / created.as_secs_f64(),
            rate: total as f64 / took.as_secs_f64(),
            commits_per_group: commits as f64 / groups.max(1) as f64,
            group_ms: micros as f64 / 1000.0 / groups.max(1) as f64,
        }
    })
}

// ---- 2-4. nodes as processes ------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

/// `marketflow serve` on PostgreSQL.
struct Node {
    child: Option<Child>,
    port: u16,
    id: String,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
}

impl Node {
    fn new(dir: &Path, i: usize, db: &str, lease: &str) -> Node {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let env: Vec<(String, String)> = [
            ("MARKETFLOW_DATABASE_URL", db.to_string()),
            ("MARKETFLOW_CLUSTER_SECRET", SECRET.into()),
            ("MARKETFLOW_NODE_ID", format!("n{i}")),
            ("MARKETFLOW_NODE_URL", url.clone()),
            ("MARKETFLOW_LEASE", lease.into()),
            ("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}")),
            ("MARKETFLOW_DATA_DIR", dir.join(format!("data-{i}")).display().to_string()),
            ("MARKETFLOW_PUBLIC_URL", url),
            ("MARKETFLOW_ALIYUN_ISV_KEY", ISV_KEY.into()),
            ("MARKETFLOW_ALIYUN_ENDPOINT", "http://127.0.0.1:9".into()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "bench-ak".into()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "bench-secret".into()),
            ("MARKETFLOW_OPERATOR_TOKEN", OP.into()),
            ("MARKETFLOW_SERVICE_TOKEN", "bench-service-token".into()),
            ("MARKETFLOW_RATE_LIMITS", "address=1000000000,token=1000000000".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut node = Node { child: None, port, id: format!("n{i}"), env, log: dir.join(format!("n{i}.log")) };
        node.start();
        node
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("a log");
        let child = Command::new(env!("CARGO_BIN_EXE_marketflow"))
            .arg("serve")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log"))
            .stderr(log)
            .spawn()
            .expect("`marketflow serve` starts");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("an address")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs an HTTP exchange to its end on a runtime of the bench's own (the parent has none).
fn block<F: std::future::Future>(f: F) -> F::Output {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
        .block_on(f)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client")
}

fn ok(url: String) -> bool {
    block(async move { http().get(url).send().await.is_ok_and(|r| r.status().is_success()) })
}

fn wait_ready(nodes: &[Node]) {
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok(format!("{}/readyz", node.url())) {
            assert!(Instant::now() < deadline, "{} never became ready: {}", node.id, tail(&node.log));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    s.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The owner of every shard (with a live lease), as `via` sees it.
fn owners(via: &Node) -> Vec<Option<String>> {
    let url = format!("{}/api/v1/ops/cluster", via.url());
    let v: Value = block(async move {
        match http().get(url).bearer_auth(OP).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    });
    let now = v["now"].as_str().unwrap_or_default().to_string();
    v["shards"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| match (s["owner"].as_str(), s["lease_until"].as_str()) {
                    (Some(o), Some(u)) if u > now.as_str() => Some(o.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every shard is held by one of `live`, each holding some.
fn wait_balanced(nodes: &[Node], live: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let o = owners(&nodes[live[0]]);
        let held: Vec<usize> =
            live.iter().map(|i| o.iter().filter(|x| x.as_deref() == Some(&nodes[*i].id)).count()).collect();
        if o.len() == 256 && o.iter().all(Option::is_some) && held.iter().all(|h| *h > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "the shards never settled: {held:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spi(url: &str, params: &[(&str, String)]) -> bool {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut form = owned.clone();
    form.push(("token".into(), spi_token(&owned, ISV_KEY)));
    let url = format!("{url}/aliyun/spi");
    block(async move {
        let Ok(r) = http().post(url).form(&form).timeout(Duration::from_secs(2)).send().await else { return false };
        if !r.status().is_success() {
            return false;
        }
        r.json::<Value>().await.is_ok_and(|v| v["success"] == true || v["instanceId"].is_string())
    })
}

fn create(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("action", "createInstance".into()),
        ("aliUid", "1234567".into()),
        ("orderBizId", id.into()),
        ("orderId", format!("o-{id}")),
        ("productCode", "cmgj00063418".into()),
        ("skuId", "sku-1".into()),
        ("trial", "false".into()),
    ]
}

fn renew(id: &str, order: &str) -> Vec<(&'static str, String)> {
    vec![
        ("action", "renewInstance".into()),
        ("instanceId", id.into()),
        ("orderId", order.into()),
        ("expiredOn", "2030-01-01 00:00:00".into()),
    ]
}

/// Seconds from a SIGKILL of node 0 until an input for an entity of its shards is taken through node 1; `kills`
/// times (node 0 started again in between).
fn failover(dir: &Path, lease: &str, kills: usize) -> Vec<f64> {
    let db = server::shared().fresh().expect("a database");
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir, i, &db, lease)).collect();
    wait_ready(&nodes);
    let mut took = vec![];
    for k in 0..kills {
        wait_balanced(&nodes, &[0, 1, 2]);
        let o = owners(&nodes[1]);
        let id = (0..100_000u64)
            .map(|n| (600_000_000_000u64 + k as u64 * 1_000_000 + n).to_string())
            .find(|id| o[shard::of_entity("subscription", id) as usize].as_deref() == Some("n0"))
            .expect("an id of node 0");
        assert!(spi(&nodes[1].url(), &create(&id)), "createInstance");
        let killed = Instant::now();
        nodes[0].kill();
        let mut n = 0;
        loop {
            n += 1;
            if spi(&nodes[1].url(), &renew(&id, &format!("o-{k}-{n}"))) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(120), "never served again");
            std::thread::sleep(Duration::from_millis(20));
        }
        took.push(killed.elapsed().as_secs_f64());
        eprintln!("failover (lease {lease}): {:.2} s", killed.elapsed().as_secs_f64());
        nodes[0].start();
        wait_ready(&nodes);
    }
    for n in &mut nodes {
        n.stop();
    }
    took
}

fn main() {
    if let Some(role) = support::child_role() {
        assert_eq!(role, "load", "unknown child role");
        return load::child_load();
    }
    let small = support::small();
    let rounds = support::env_usize("BENCH_ROUNDS", if small { 1 } else { 3 });
    let (entities, per_entity) = if small { (2_000, 2) } else { (100_000, 2) };
    let window = support::env_usize("BENCH_WINDOW", 4_000);
    let secs = Duration::from_secs(support::env_usize("BENCH_SECS", if small { 1 } else { 8 }) as u64);
    let conns = support::env_usize("BENCH_CONNS", if small { 16 } else { 96 });
    let rate = support::env_usize("BENCH_RATE", if small { 200 } else { 1_000 }) as f64;
    let pg = server::shared();

    // 1. The engine: sled and PostgreSQL alternating, a fresh store each round.
    let (mut sled, mut postgres) = (vec![], vec![]);
    for round in 0..rounds {
        let d = tempfile::tempdir().expect("tempdir");
        let s = engine_round(&d.path().join("sled"), None, entities, per_entity, window);
        let db = pg.fresh().expect("a database");
        let p = engine_round(d.path(), Some(&db), entities, per_entity, window);
        eprintln!(
            "round {round}: sled {:.0}/s (creations {:.0}/s, groups of {:.0}, {:.1} ms); PostgreSQL {:.0}/s (creations \
             {:.0}/s, groups of {:.0}, {:.1} ms)",
            s.rate, s.create_rate, s.commits_per_group, s.group_ms, p.rate, p.create_rate, p.commits_per_group, p.group_ms
        );
        sled.push(s);
        postgres.push(p);
    }
    let m = |v: &[EngineRound], f: fn(&EngineRound) -> f64| median(v.iter().map(f).collect());

    // 2. One node and three nodes on PostgreSQL, over HTTP.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut one, mut three, mut direct, mut fixed) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let db = pg.fresh().expect("a database");
        let mut solo = vec![Node::new(tmp.path(), 10 + round, &db, "10s")];
        wait_ready(&solo);
        wait_balanced(&solo, &[0]);
        let r1 = load::load(&[solo[0].addr()], "create", conns, 0.0, secs, &format!("one{round}-"));
        solo[0].stop();
        let db = pg.fresh().expect("a database");
        let mut trio: Vec<Node> = (0..3).map(|i| Node::new(tmp.path(), 20 + 3 * round + i, &db, "10s")).collect();
        wait_ready(&trio);
        wait_balanced(&trio, &[0, 1, 2]);
        let addrs: Vec<SocketAddr> = trio.iter().map(Node::addr).collect();
        let r3 = load::load(&addrs, "create", conns, 0.0, secs, &format!("three{round}-"));
        // The same three nodes with each request sent to its entity's owner: what three nodes do without
        // forwarding, to tell its cost from the cost of three processes and three committers on two cores.
        let o = owners(&trio[0]);
        let routed: Vec<_> = trio
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let shards: Vec<u16> =
                    (0..256u16).filter(|s| o[*s as usize].as_deref() == Some(node.id.as_str())).collect();
                let (addr, per) = (node.addr(), conns.div_ceil(3));
                let prefix = format!("routed{round}-{i}-");
                std::thread::spawn(move || load::load_only(&[addr], "create", per, 0.0, secs, &prefix, Some(&shards)))
            })
            .collect();
        let routed: Vec<_> = routed.into_iter().map(|t| t.join().expect("a loader")).collect();
        let rr = std::collections::HashMap::from([
            ("rate".to_string(), routed.iter().map(|r| r["rate"]).sum::<f64>()),
            ("p99".to_string(), routed.iter().map(|r| r["p99"]).fold(0.0, f64::max)),
        ]);
        let rf = load::load(&addrs, "create", conns.min(64), rate, secs, &format!("fixed{round}-"));
        for n in &mut trio {
            n.stop();
        }
        eprintln!("round {round}: one node {r1:?}\n  three nodes {r3:?}\n  routed {rr:?}\n  fixed {rf:?}");
        one.push(r1);
        three.push(r3);
        direct.push(rr);
        fixed.push(rf);
    }
    let h = |v: &[std::collections::HashMap<String, f64>], k: &str| median(v.iter().map(|r| r[k]).collect());

    // 4. Failover.
    let kills = support::env_usize("BENCH_KILLS", if small { 1 } else { 3 });
    let short = failover(tmp.path(), "2s", kills);
    let default = if small { vec![] } else { failover(tmp.path(), "10s", kills) };

    println!("| measurement | median | ratio | target |");
    println!("|---|---:|---:|---:|");
    let (s_rate, p_rate) = (m(&sled, |r| r.rate), m(&postgres, |r| r.rate));
    println!(
        "| engine on sled: {} entities, {} deposits in flight (groups of {:.0}, {:.1} ms) | {} transitions/s | 1.00 | |",
        n(entities as f64),
        n(window as f64),
        m(&sled, |r| r.commits_per_group),
        m(&sled, |r| r.group_ms),
        n(s_rate)
    );
    println!(
        "| engine on PostgreSQL, one clustered node (fenced commits; groups of {:.0}, {:.1} ms) | **{} transitions/s** | {:.2} | ≥ 5,000/s |",
        m(&postgres, |r| r.commits_per_group),
        m(&postgres, |r| r.group_ms),
        n(p_rate),
        p_rate / s_rate
    );
    println!(
        "| creations (`open`) on sled / on PostgreSQL | {} / {} per s | {:.2} | |",
        n(m(&sled, |r| r.create_rate)),
        n(m(&postgres, |r| r.create_rate)),
        m(&postgres, |r| r.create_rate) / m(&sled, |r| r.create_rate)
    );
    let (r1, r3) = (h(&one, "rate"), h(&three, "rate"));
    println!(
        "| `createInstance` over HTTP, one node on PostgreSQL, {conns} connections | {} req/s (p99 {:.1} ms) | 1.00 | |",
        n(r1),
        h(&one, "p99")
    );
    println!(
        "| the same, three nodes on the same two cores, connections spread over all three | **{} req/s** (p99 {:.1} ms) | **{:.2}** | ≥ 0.8 |",
        n(r3),
        h(&three, "p99"),
        r3 / r1
    );
    let rd = h(&direct, "rate");
    println!(
        "| the same three nodes, each request sent to its entity's owner (no forwarding; p99 the worst node's) | {} req/s (p99 {:.1} ms) | {:.2} | |",
        n(rd),
        h(&direct, "p99"),
        rd / r1
    );
    println!(
        "| `createInstance` at {} req/s through any node of three (open loop): achieved; p50 / **p99** / max | {} req/s; {:.1} / **{:.1}** / {:.1} ms | | p99 < 50 ms |",
        n(rate),
        n(h(&fixed, "rate")),
        h(&fixed, "p50"),
        h(&fixed, "p99"),
        h(&fixed, "max")
    );
    println!(
        "| failover, lease 2 s: SIGKILL to the dead node's shards serving again ({} kills) | **{:.2} s** (min {:.2}, max {:.2}) | | < 2 leases |",
        short.len(),
        median(short.clone()),
        short.iter().copied().fold(f64::MAX, f64::min),
        short.iter().copied().fold(0.0, f64::max)
    );
    if !default.is_empty() {
        println!(
            "| failover, lease 10 s (the default) ({} kills) | **{:.2} s** (min {:.2}, max {:.2}) | | < 2 leases |",
            default.len(),
            median(default.clone()),
            default.iter().copied().fold(f64::MAX, f64::min),
            default.iter().copied().fold(0.0, f64::max)
        );
    }
    println!("\nrounds: {rounds}; small: {small}; {} s per HTTP measurement", secs.as_secs());
}
