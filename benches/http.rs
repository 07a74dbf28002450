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

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{median, n};

use support::load::{self, healthz, ISV_KEY};

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

fn main() {
    if let Some(role) = support::child_role() {
        assert_eq!(role, "load", "unknown child role");
        return load::child_load();
    }
    let p = params();
    let mut rounds = Vec::new();
    for round in 0..p.rounds {
        let tmp = tempfile::tempdir().expect("tempdir");
        let server = Server::start(tmp.path());
        let addrs = [server.addr];
        let health = load::load(&addrs, "healthz", p.conns_max, 0.0, p.duration, "");
        let max = load::load(&addrs, "create", p.conns_max, 0.0, p.duration, &format!("max{round}-"));
        let fixed = load::load(&addrs, "create", p.conns_rate, p.rate, p.duration, &format!("fix{round}-"));
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
