//! The hourly burst (issue 17): N bound subscriptions whose hour of usage is due at once, pushed to the marketplace
//! (the simulator, in this process) by the real service (`marketflow serve`, a child process), while the load
//! generator (another child) sends `createInstance` at a fixed rate through the same service.
//!
//!     cargo bench --bench burst                     # 100,000 subscriptions, createInstance at 1,000 req/s
//!     cargo bench --bench burst -- --small          # 2,000 (what `cargo test --all-targets` runs)
//!     BENCH_SUBSCRIPTIONS=20000 cargo bench --bench burst
//!
//! Seeding, without 100,000 registrations: the service's data directory is filled before it starts, each
//! subscription's metering entity by the engine's own step function (`support::bulk_load`: the record, journal
//! entry and timer the engine commits for "billing started an hour and some minutes ago"), and one usage record of
//! 1 CU for that hour per organization (the usage API's own writes); the simulator knows every instance, opened.
//! When the service starts, every metering timer is overdue: the burst is every window metered, priced and
//! pushed in batches of up to 100.
//!
//! Two rounds side by side on the same machine: `createInstance` at the rate on a service with nothing else to do
//! (the baseline), and the same during the burst. Reported: calls the marketplace received, windows pushed, the time
//! from the service's start until the last window was received, and the achieved rate and latency of
//! `createInstance` (open loop: each request's latency counts from its scheduled start).

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use marketflow::app::usage::UsageRecord;
use marketflow::clock::{Clock, SystemClock};
use marketflow::config::{Config, Secret};
use marketflow::domain::ids::OrgId;
use marketflow::domain::pricing::{Catalog, MilliCu};
use marketflow::engine::{Cause, EntityKey, Input};
use support::load::{self, ISV_KEY};
use support::n;

const AK: &str = "bench-ak";
const AK_SECRET: &str = "bench-ak-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn instance(i: usize) -> String {
    format!("7{i:011}")
}

fn org(i: usize) -> OrgId {
    OrgId::parse(format!("org_{i:032x}")).expect("an organization id")
}

/// How far service time runs ahead of the wall clock in the burst: it starts ten minutes into the hour after the
/// billed one, whatever the time of day, so the window is due at once and 50 minutes remain before the
/// marketplace's deadline (the end of the next hour).
fn offset(now: DateTime<Utc>) -> TimeDelta {
    now.duration_trunc(TimeDelta::hours(1)).expect("an hour") + TimeDelta::minutes(70) - now
}

/// Fills `dir` (the service's data directory) with `n` metering entities billing since `hour` and one usage record
/// of 1 CU for that hour per organization, on service time `offset` ahead of the wall clock.
fn seed(dir: &Path, n: usize, hour: DateTime<Utc>, offset: TimeDelta) {
    let store = support::open(dir);
    let real = Utc::now();
    store.apply(&[marketflow::engine::anchor::preset(real, real + offset, 1.0)]).expect("the clock's anchor");
    let catalog = Arc::new(Catalog::builtin().expect("the built-in catalog"));
    let config = Config {
        access_key_id: Some(AK.into()),
        access_key_secret: Some(Secret::new(AK_SECRET)),
        aliyun_endpoint: "http://127.0.0.1:9".into(),
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let registry = actix_rt::System::new().block_on(async {
        marketflow::startup::registry(&config, store.clone(), catalog, clock).expect("the service's registry")
    });
    support::bulk_load(&*store, &registry, n, 5_000, |i| {
        let key = EntityKey::new("metering", &instance(i)).expect("a key");
        let start = marketflow::domain::protocol::MeteringEvent::Start { org: org(i), at: hour };
        let body = serde_json::to_value(start).expect("an event");
        let cause = Cause::Message { from: format!("subscription/{}", instance(i)) };
        (key, Input::domain(format!("seed-{i}"), body, cause), hour)
    });
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let records: Vec<UsageRecord> = chunk
            .iter()
            .map(|&i| UsageRecord {
                record_id: format!("seed-{i}"),
                org_id: org(i),
                resource_id: "c1".into(),
                cu_type: "performance".into(),
                milli_cu: MilliCu(1000),
                start: hour,
                end: hour + TimeDelta::hours(1),
                received_at: hour + TimeDelta::hours(1),
            })
            .collect();
        let writes = marketflow::app::usage::load_writes(&records).expect("usage writes");
        store.apply(&[writes.into_batch()]).expect("usage stored");
    }
    store.close().expect("the store closes");
}

struct Server {
    child: Child,
    addr: SocketAddr,
    started: Instant,
    ready: Duration,
}

impl Server {
    fn start(dir: &Path, market: &str) -> Server {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("serve.log")).expect("log file");
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_marketflow"))
            .arg("serve")
            .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
            .env("MARKETFLOW_DATA_DIR", dir.join("data"))
            .env("MARKETFLOW_PUBLIC_URL", &url)
            .env("MARKETFLOW_ALIYUN_ISV_KEY", ISV_KEY)
            .env("MARKETFLOW_ALIYUN_ENDPOINT", market)
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", AK)
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", AK_SECRET)
            .env("MARKETFLOW_OPERATOR_TOKEN", "bench-operator-token")
            .env("MARKETFLOW_SERVICE_TOKEN", "bench-service-token")
            .env("MARKETFLOW_TIME_SCALE", "1")
            .env("MARKETFLOW_RATE_LIMITS", "address=1000000000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("`marketflow serve` starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut server = Server { child, addr, started, ready: Duration::ZERO };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("`marketflow serve` exited with {status}; see {}", dir.join("serve.log").display());
            }
            if let Ok(mut s) = TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(&load::healthz("bench"));
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    server.ready = started.elapsed();
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "`marketflow serve` did not answer /healthz within 300 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: signals our own child process by its pid.
        unsafe { kill(self.child.id() as i32, 15) };
        let status = self.child.wait().expect("wait for the server");
        assert!(status.success(), "`marketflow serve` did not stop cleanly: {status}");
    }
}

impl Drop for Server {
    /// A bench that fails part-way must not leave the service running (it would take the machine's cores).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The marketplace's log: (calls, windows) received so far, counted by the simulator; `None` when it did not
/// answer this time (asked again on the next round).
fn received(rt: &tokio::runtime::Runtime, http: &reqwest::Client, sim: &str) -> Option<(usize, usize)> {
    let v: serde_json::Value =
        rt.block_on(async { http.get(format!("{sim}/sim/metering?summary=true")).send().await?.json().await }).ok()?;
    Some((v["calls"].as_u64().unwrap_or(0) as usize, v["records"].as_u64().unwrap_or(0) as usize))
}

fn main() {
    if let Some(role) = support::child_role() {
        assert_eq!(role, "load", "unknown child role");
        return load::child_load();
    }
    let small = support::small();
    let subs = if small { 2_000 } else { support::env_usize("BENCH_SUBSCRIPTIONS", 100_000) };
    let rate = if small { 200.0 } else { support::env_usize("BENCH_RATE", 1_000) as f64 };
    let conns = 64;

    // The marketplace, in this process, knowing every seeded instance.
    let sim_port = free_port();
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let (tx, rx) = std::sync::mpsc::channel();
    let opened: Vec<(String, String)> = (0..subs).map(|i| (instance(i), format!("1688{i:08}"))).collect();
    let ahead = offset(Utc::now());
    let sim_thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut sc = marketflow::aliyun::simulator::SimulatorConfig::new(
                "http://127.0.0.1:9",
                Secret::new(ISV_KEY),
                AK,
                Secret::new(AK_SECRET),
                Arc::new(marketflow::clock::ScaledClock::new(Utc::now() + ahead, 1.0)),
            );
            sc.listen = format!("127.0.0.1:{sim_port}");
            sc.opened = opened;
            let sim = marketflow::aliyun::simulator::start(sc).await.expect("the simulator starts");
            tx.send(()).expect("started");
            // Serves until the process ends.
            std::future::pending::<()>().await;
            drop(sim);
        })
    });
    rx.recv().expect("the simulator started");

    // Baseline: createInstance at the rate, nothing else to do.
    let base_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(base_dir.path(), &sim_url);
    let secs = if small { Duration::from_secs(2) } else { Duration::from_secs(20) };
    let base = load::load(&[server.addr], "create", conns, rate, secs, "base-");
    server.stop();

    // The burst.
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = (Utc::now() + ahead).duration_trunc(TimeDelta::hours(1)).expect("an hour") - TimeDelta::hours(1);
    let seeding = Instant::now();
    seed(&dir.path().join("data"), subs, hour, ahead);
    let seeded = seeding.elapsed();
    let server = Server::start(dir.path(), &sim_url);
    let addrs = [server.addr];
    let started = server.started;
    let watcher = std::thread::spawn({
        let sim_url = sim_url.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client");
            let deadline = Instant::now() + Duration::from_secs(3_600);
            loop {
                let Some((calls, windows)) = received(&rt, &http, &sim_url) else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                if windows >= subs {
                    return (calls, windows, started.elapsed());
                }
                assert!(Instant::now() < deadline, "only {windows} of {subs} windows pushed in an hour");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    let during = load::load(&addrs, "create", conns, rate, secs, "burst-");
    let (calls, windows, all_pushed) = watcher.join().expect("the watcher");
    let ready = server.ready;
    server.stop();
    drop(sim_thread);

    let h = |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    println!("\n## The hourly burst: {} subscriptions (`benches/burst.rs`)\n", n(subs as f64));
    println!("| | figure |");
    println!("|---|---|");
    println!(
        "| set-up: {} metering entities and usage records written before the start | {:.1} s |",
        n(subs as f64),
        seeded.as_secs_f64()
    );
    println!("| the service answers /healthz after | {:.1} s |", ready.as_secs_f64());
    println!(
        "| windows pushed; `PushMeteringData` calls the marketplace received | {}; **{}** ({:.0} windows a call) |",
        n(windows as f64),
        n(calls as f64),
        windows as f64 / calls.max(1) as f64
    );
    println!(
        "| from the service's start to the last window received | **{:.1} min** ({:.0} s) |",
        all_pushed.as_secs_f64() / 60.0,
        all_pushed.as_secs_f64()
    );
    println!(
        "| `createInstance` at {} req/s, nothing else to do: achieved; p50 / p99 / max | {} req/s; {:.1} / {:.1} / {:.1} ms |",
        n(rate),
        n(h(&base, "rate")),
        h(&base, "p50"),
        h(&base, "p99"),
        h(&base, "max")
    );
    println!(
        "| the same during the burst (the first {} s after /healthz answers) | {} req/s; {:.1} / **{:.1}** / {:.1} ms |",
        secs.as_secs(),
        n(h(&during, "rate")),
        h(&during, "p50"),
        h(&during, "p99"),
        h(&during, "max")
    );
}
