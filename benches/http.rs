//! The HTTP path (issue 9): the marketplace's SPI `createInstance` (token checked, committed durably) against
//! the real service, `marketflow serve`, with the load coming from another process over loopback.
//!
//!     cargo bench --bench http              # full run: 3 rounds
//!     cargo bench --bench http -- --small   # smoke run (also what `cargo test --all-targets` runs)
//!
//! Each round starts `marketflow serve` (the binary cargo built next to this bench) on a fresh data directory,
//! configured through the environment as deployments are (`shared/contract/smoke.py`), and runs the load
//! generator, this same bench binary re-executed as a child process (a single-threaded client with keep-alive
//! connections over loopback; every request is a new instance with its own valid MD5 token):
//! - `GET /healthz` as fast as it goes: the ceiling of the HTTP stack and the client on this machine (baseline);
//! - `createInstance` as fast as it goes (closed loop, 128 connections): the throughput;
//! - `createInstance` at a fixed 2,000 requests per second (open loop: each request has a scheduled start, and
//!   its latency counts from that start, so a stalled server cannot hide its queue): the latency.
//!
//! A request counts only if it is answered 200 with the instance id; anything else fails the run.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketflow::aliyun::token::spi_token;
use support::{median, n, report};

const ISV_KEY: &str = "bench-isv-key";

struct Params {
    rounds: usize,
    duration: Duration,
    conns_max: usize,
    rate: f64,
    conns_rate: usize,
}

fn params() -> Params {
    if support::small() {
        Params { rounds: 1, duration: Duration::from_millis(800), conns_max: 16, rate: 300.0, conns_rate: 16 }
    } else {
        Params {
            rounds: support::env_usize("BENCH_ROUNDS", 3),
            duration: Duration::from_secs(support::env_usize("BENCH_SECS", 8) as u64),
            conns_max: support::env_usize("BENCH_CONNS", 128),
            rate: support::env_usize("BENCH_RATE", 2_000) as f64,
            conns_rate: 64,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The request line and headers of one `createInstance`, signed with the ISV key.
fn create_instance(host: &str, id: &str) -> Vec<u8> {
    let mut params: Vec<(String, String)> = [
        ("action", "createInstance"),
        ("aliUid", "1234567890"),
        ("orderBizId", id),
        ("orderId", &format!("o-{id}")),
        ("productCode", "cmgj00063418"),
        ("skuId", "pay-as-you-go"),
        ("trial", "false"),
        ("expiredOn", "2099-01-01 00:00:00"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let token = spi_token(&params, ISV_KEY);
    params.push(("token".into(), token));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("GET /aliyun/spi?{} HTTP/1.1\r\nHost: {host}\r\n\r\n", query.join("&")).into_bytes()
}

fn healthz(host: &str) -> Vec<u8> {
    format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// The service under test, as deployments run it.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("serve.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_marketflow"))
            .arg("serve")
            .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
            .env("MARKETFLOW_DATA_DIR", dir.join("data"))
            .env("MARKETFLOW_PUBLIC_URL", &url)
            .env("MARKETFLOW_ALIYUN_ISV_KEY", ISV_KEY)
            .env("MARKETFLOW_ALIYUN_ENDPOINT", "http://127.0.0.1:9")
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "bench-ak")
            .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "bench-secret")
            .env("MARKETFLOW_OPERATOR_TOKEN", "bench-operator-token")
            .env("MARKETFLOW_SERVICE_TOKEN", "bench-service-token")
            .env("MARKETFLOW_TIME_SCALE", "1")
            // One load generator is one client address: lift the per-address limit, which is not what is measured.
            .env("MARKETFLOW_RATE_LIMITS", "address=1000000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("`marketflow serve` starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut server = Server { child, addr };
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("`marketflow serve` exited with {status}; see {}", dir.join("serve.log").display());
            }
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(&healthz("bench"));
                let mut buf = [0u8; 12];
                if std::io::Read::read_exact(&mut s, &mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "`marketflow serve` did not answer /healthz within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as a deployment stops it; it must exit 0 (drains its commits).
    fn stop(mut self) {
        extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: signals our own child process by its pid.
        unsafe { kill(self.child.id() as i32, 15) };
        let status = self.child.wait().expect("wait for the server");
        assert!(status.success(), "`marketflow serve` did not stop cleanly: {status}");
    }
}

/// Runs the load generator child and returns what it reported.
fn load(
    addr: SocketAddr,
    what: &str,
    conns: usize,
    rate: f64,
    duration: Duration,
    prefix: &str,
) -> HashMap<String, f64> {
    support::run_child(
        "load",
        &[
            ("BENCH_ADDR", addr.to_string()),
            ("BENCH_WHAT", what.to_string()),
            ("BENCH_LOAD_CONNS", conns.to_string()),
            ("BENCH_LOAD_RATE", rate.to_string()),
            ("BENCH_LOAD_MILLIS", duration.as_millis().to_string()),
            ("BENCH_PREFIX", prefix.to_string()),
        ],
    )
}

// ---- the load generator (child process) ----

fn env<T: std::str::FromStr>(name: &str) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} missing or invalid"))
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body) from `s`; returns its status and body.
async fn read_response(s: &mut actix_rt::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or_default();
            let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok((status, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        let got = s.read(&mut chunk).await?;
        if got == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn child_load() {
    let addr: SocketAddr = env("BENCH_ADDR");
    let what: String = env("BENCH_WHAT");
    let conns: usize = env("BENCH_LOAD_CONNS");
    let rate: f64 = env("BENCH_LOAD_RATE");
    let duration = Duration::from_millis(env("BENCH_LOAD_MILLIS"));
    let prefix: String = env("BENCH_PREFIX");
    // Requests are built before the clock starts, so the client spends its time sending and reading.
    // Every createInstance is a new instance; a closed loop gets more than it can send in the time.
    let limit = if rate > 0.0 {
        (rate * duration.as_secs_f64()).ceil() as usize
    } else if what == "healthz" {
        usize::MAX
    } else {
        25_000 * (duration.as_millis() as usize).div_ceil(1000)
    };
    let host = addr.to_string();
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(if what == "healthz" {
        vec![healthz(&host)]
    } else {
        (0..limit).map(|i| create_instance(&host, &format!("{prefix}{i}"))).collect()
    });
    let (latencies, done, secs) = actix_rt::System::new().block_on(async move {
        use tokio::io::AsyncWriteExt;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + duration;
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (requests, next, what) = (requests.clone(), next.clone(), what.clone());
                actix_rt::spawn(async move {
                    let mut s = actix_rt::net::TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    let mut buf = Vec::with_capacity(16 * 1024);
                    let mut lat = Vec::new();
                    actix_rt::time::sleep_until(start.into()).await;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit {
                            break;
                        }
                        let at = if rate > 0.0 {
                            let at = start + Duration::from_secs_f64(i as f64 / rate);
                            actix_rt::time::sleep_until(at.into()).await;
                            at
                        } else {
                            Instant::now()
                        };
                        if at >= end {
                            break;
                        }
                        s.write_all(&requests[i % requests.len()]).await.expect("send");
                        let (status, body) = read_response(&mut s, &mut buf).await.expect("response");
                        let ok = status == 200
                            && (what == "healthz" || String::from_utf8_lossy(&body).contains("instanceId"));
                        assert!(ok, "request {i} answered {status}: {}", String::from_utf8_lossy(&body));
                        lat.push(at.elapsed().as_secs_f64() * 1e3);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("connection task"));
        }
        let secs = start.elapsed().as_secs_f64();
        let done = all.len();
        (all, done, secs)
    });
    let mut latencies = latencies;
    report("done", done as f64);
    report("rate", done as f64 / secs);
    report("p50", support::percentile(&mut latencies, 50.0));
    report("p99", support::percentile(&mut latencies, 99.0));
    report("max", support::percentile(&mut latencies, 100.0));
}

fn main() {
    if let Some(role) = support::child_role() {
        assert_eq!(role, "load", "unknown child role");
        return child_load();
    }
    let p = params();
    let mut rounds = Vec::new();
    for round in 0..p.rounds {
        let tmp = tempfile::tempdir().expect("tempdir");
        let server = Server::start(tmp.path());
        let health = load(server.addr, "healthz", p.conns_max, 0.0, p.duration, "");
        let max = load(server.addr, "create", p.conns_max, 0.0, p.duration, &format!("max{round}-"));
        let fixed = load(server.addr, "create", p.conns_rate, p.rate, p.duration, &format!("fix{round}-"));
        server.stop();
        eprintln!("round {round}: healthz {health:?}\n  max {max:?}\n  fixed {fixed:?}");
        rounds.push((health, max, fixed));
    }
    let m = |which: usize, k: &str| median(rounds.iter().map(|r| [&r.0, &r.1, &r.2][which][k]).collect());
    let (h, x, f) = (0, 1, 2);
    println!("| measurement (load from another process over loopback) | median | ratio | target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `GET /healthz`, {} connections, as fast as it goes (baseline: HTTP stack + client) | {} req/s (p99 {:.1} ms) | 1.00 | |",
        p.conns_max,
        n(m(h, "rate")),
        m(h, "p99")
    );
    println!(
        "| SPI `createInstance`, {} connections, as fast as it goes | **{} req/s** (p50 {:.1} ms, p99 {:.1} ms) | {:.2} | ≥ 5,000 req/s |",
        p.conns_max,
        n(m(x, "rate")),
        m(x, "p50"),
        m(x, "p99"),
        m(x, "rate") / m(h, "rate")
    );
    println!(
        "| SPI `createInstance` at {} req/s ({} connections, open loop): achieved; p50 / **p99** / max | {} req/s; {:.1} / **{:.1}** / {:.1} ms | | p99 < 20 ms |",
        n(p.rate),
        p.conns_rate,
        n(m(f, "rate")),
        m(f, "p50"),
        m(f, "p99"),
        m(f, "max")
    );
    println!("\nrounds: {}; {} s per measurement; small: {}", p.rounds, p.duration.as_secs_f64(), support::small());
}
