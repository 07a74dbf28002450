//! The HTTP load generator of the benches: this same bench binary re-executed as a child process (a
//! single-threaded client with keep-alive connections over loopback, spread over one or more addresses), closed
//! loop (as fast as it goes) or open loop (each request has a scheduled start, and its latency counts from that
//! start, so a stalled server cannot hide its queue). Every `createInstance` is a new instance with its own valid
//! MD5 token; a request counts only if it is answered 200 with the instance id, anything else fails the run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketflow::aliyun::token::spi_token;

use super::report;

/// The ISV key the benches' services are started with.
pub const ISV_KEY: &str = "bench-isv-key";

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The request line and headers of one `createInstance`, signed with the ISV key.
pub fn create_instance(host: &str, id: &str) -> Vec<u8> {
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

pub fn healthz(host: &str) -> Vec<u8> {
    format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Runs the load generator child and returns what it reported.
pub fn load(
    addrs: &[SocketAddr],
    what: &str,
    conns: usize,
    rate: f64,
    duration: Duration,
    prefix: &str,
) -> HashMap<String, f64> {
    load_only(addrs, what, conns, rate, duration, prefix, None)
}

/// [`load`], with `createInstance` ids only of `shards` when given.
pub fn load_only(
    addrs: &[SocketAddr],
    what: &str,
    conns: usize,
    rate: f64,
    duration: Duration,
    prefix: &str,
    shards: Option<&[u16]>,
) -> HashMap<String, f64> {
    let mut env = vec![
        ("BENCH_ADDRS", addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")),
        ("BENCH_WHAT", what.to_string()),
        ("BENCH_LOAD_CONNS", conns.to_string()),
        ("BENCH_LOAD_RATE", rate.to_string()),
        ("BENCH_LOAD_MILLIS", duration.as_millis().to_string()),
        ("BENCH_PREFIX", prefix.to_string()),
    ];
    if let Some(s) = shards {
        env.push(("BENCH_SHARDS", s.iter().map(u16::to_string).collect::<Vec<_>>().join(",")));
    }
    super::run_child("load", &env)
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

pub fn child_load() {
    let addrs: Vec<SocketAddr> =
        env::<String>("BENCH_ADDRS").split(',').map(|a| a.parse().expect("an address")).collect();
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
    let host = addrs[0].to_string();
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(if what == "healthz" {
        vec![healthz(&host)]
    } else {
        // `BENCH_SHARDS`: only ids of these shards (requests sent straight to their owner: no forwarding).
        let only: Option<std::collections::HashSet<u16>> =
            std::env::var("BENCH_SHARDS").ok().map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect());
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|id| {
                only.as_ref().is_none_or(|o| o.contains(&marketflow::store::shard::of_entity("subscription", id)))
            })
            .take(limit)
            .map(|id| create_instance(&host, &id))
            .collect()
    });
    let (latencies, done, secs) = actix_rt::System::new().block_on(async move {
        use tokio::io::AsyncWriteExt;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + duration;
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let (requests, next, what) = (requests.clone(), next.clone(), what.clone());
                let addr = addrs[c % addrs.len()];
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
    report("p50", super::percentile(&mut latencies, 50.0));
    report("p99", super::percentile(&mut latencies, 99.0));
    report("max", super::percentile(&mut latencies, 100.0));
}
