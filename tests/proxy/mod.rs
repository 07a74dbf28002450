//! TCP in the middle, for the tests of several nodes: a round-robin load balancer in front of the nodes (what a
//! deployment puts there), and a proxy in front of PostgreSQL that can cut a connection just before or just after
//! it passes a COMMIT on. Each runs on a thread and runtime of its own, so that a test blocking its own thread (a
//! store connecting through the proxy) cannot stop it.
#![allow(dead_code)]

/// Runs `f` on a new thread with a runtime of its own; answers what its set-up returned.
fn background<T: Send + 'static, F>(setup: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = (T, std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let (value, run) = setup().await;
            let _ = tx.send(value);
            run.await;
        });
    });
    rx.recv().expect("the proxy thread started")
}

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Spreads connections over backends in turn; a backend that refuses is skipped.
pub struct Balancer {
    pub port: u16,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
}

impl Balancer {
    /// Listens on a free loopback port.
    pub fn start(backends: Vec<u16>) -> Self {
        background(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port for the balancer");
            let port = listener.local_addr().expect("its address").port();
            let accepted = Arc::new(AtomicU64::new(0));
            let (next, count) = (Arc::new(AtomicUsize::new(0)), accepted.clone());
            let backends = Arc::new(backends);
            let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    let backends = backends.clone();
                    tokio::task::spawn_local(async move {
                        let mut inbound = inbound;
                        for i in 0..backends.len() {
                            let port = backends[(first + i) % backends.len()];
                            if let Ok(mut out) = TcpStream::connect(("127.0.0.1", port)).await {
                                let _ = (inbound.set_nodelay(true), out.set_nodelay(true));
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                return;
                            }
                        }
                    });
                }
            });
            (Self { port, accepted }, run)
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Where a cut falls, relative to a COMMIT sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The COMMIT never reaches the server: the transaction cannot have committed.
    Before,
    /// The COMMIT reaches the server, its answer never reaches the client: it committed, and the client cannot
    /// know.
    After,
}

/// A proxy to a PostgreSQL server that cuts the connection at every `every`-th COMMIT (a simple query `COMMIT` in
/// the frontend protocol, as tokio-postgres sends it), alternating [`Cut::Before`] and [`Cut::After`]; `every` 0
/// cuts none. It can also play a network partition ([`PgProxy::partition`]).
pub struct PgProxy {
    pub port: u16,
    /// Cuts made, by kind.
    pub cuts: Arc<Mutex<Vec<Cut>>>,
    pub commits: Arc<AtomicU64>,
    /// Set: the connections whose start-up message holds this text (all for "") are dropped, new ones refused.
    partitioned: tokio::sync::watch::Sender<Option<String>>,
}

impl PgProxy {
    pub fn start(server_port: u16, every: u64) -> Self {
        background(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port for the proxy");
            let port = listener.local_addr().expect("its address").port();
            let cuts = Arc::new(Mutex::new(vec![]));
            let commits = Arc::new(AtomicU64::new(0));
            let (partitioned, watch) = tokio::sync::watch::channel(None::<String>);
            let (c, n) = (cuts.clone(), commits.clone());
            let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let (c, n, cut_off) = (c.clone(), n.clone(), watch.clone());
                    tokio::task::spawn_local(async move {
                        if let Ok(out) = TcpStream::connect(("127.0.0.1", server_port)).await {
                            // The relay writes a message at a time: with Nagle's algorithm each would wait for the
                            // peer's delayed acknowledgement of the one before (40 ms on Linux).
                            let _ = (inbound.set_nodelay(true), out.set_nodelay(true));
                            pipe(inbound, out, every, c, n, cut_off).await;
                        }
                    });
                }
            });
            (Self { port, cuts, commits, partitioned }, run)
        })
    }

    pub fn cuts(&self) -> Vec<Cut> {
        self.cuts.lock().unwrap().clone()
    }

    /// Cuts the connections whose start-up message holds `only` (every connection for `Some("")`) off from the
    /// database (dropped, and new ones refused), or heals the cut (`None`).
    pub fn partition(&self, only: Option<&str>) {
        let _ = self.partitioned.send(only.map(str::to_string));
    }
}

/// Relays both ways (until a partition that matches the connection); reads the client's messages one by one (the
/// startup message has no type byte) to find COMMIT.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    every: u64,
    cuts: Arc<Mutex<Vec<Cut>>>,
    commits: Arc<AtomicU64>,
    mut partition: tokio::sync::watch::Receiver<Option<String>>,
) {
    // The start-up message names the connection (its application_name): read before anything is relayed.
    let mut client = client;
    let mut len = [0u8; 4];
    if client.read_exact(&mut len).await.is_err() {
        return;
    }
    let n = u32::from_be_bytes(len) as usize;
    let mut startup = vec![0u8; n.saturating_sub(4)];
    if client.read_exact(&mut startup).await.is_err() {
        return;
    }
    let name = String::from_utf8_lossy(&startup).to_string();
    let matches = move |p: &Option<String>| p.as_deref().is_some_and(|only| name.contains(only));
    if matches(&partition.borrow()) {
        return;
    }
    let mut server = server;
    if server.write_all(&len).await.is_err() || server.write_all(&startup).await.is_err() {
        return;
    }
    tokio::select! {
        _ = relay(client, server, every, cuts, commits) => {}
        _ = partition.wait_for(matches) => {}
    }
}

async fn relay(client: TcpStream, server: TcpStream, every: u64, cuts: Arc<Mutex<Vec<Cut>>>, commits: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the server's answers must no longer reach the client (a cut after COMMIT).
    let (mute_tx, mut mute_rx) = tokio::sync::watch::channel(false);
    let down = tokio::task::spawn_local(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                r = sr.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if cw.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = mute_rx.changed() => {
                    let _ = cw.shutdown().await;
                    return;
                }
            }
        }
    });
    loop {
        let mut head = [0u8; 5];
        if cr.read_exact(&mut head).await.is_err() {
            break;
        }
        let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; n.saturating_sub(4)];
        if cr.read_exact(&mut body).await.is_err() {
            break;
        }
        let is_commit = head[0] == b'Q' && body.starts_with(b"COMMIT");
        let cut = if is_commit && every > 0 {
            let k = commits.fetch_add(1, Ordering::Relaxed) + 1;
            (k % every == 0).then(|| if (k / every) % 2 == 1 { Cut::Before } else { Cut::After })
        } else {
            None
        };
        if cut == Some(Cut::Before) {
            cuts.lock().unwrap().push(Cut::Before);
            break;
        }
        if cut == Some(Cut::After) {
            // No answer from here on reaches the client (muted before the COMMIT goes, so that its answer cannot
            // slip through), but the server gets the COMMIT and commits.
            cuts.lock().unwrap().push(Cut::After);
            let _ = mute_tx.send(true);
            tokio::task::yield_now().await;
            let _ = sw.write_all(&head).await;
            let _ = sw.write_all(&body).await;
            // Let the server read it before the connection goes.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            break;
        }
        let mut message = Vec::with_capacity(5 + body.len());
        message.extend_from_slice(&head);
        message.extend_from_slice(&body);
        if sw.write_all(&message).await.is_err() {
            break;
        }
    }
    let _ = sw.shutdown().await;
    down.abort();
}
