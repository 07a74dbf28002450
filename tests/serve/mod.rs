//! `marketflow serve` as a child process on a data directory that outlives it, for the tests that kill it at
//! random (tests/chaos.rs) or starve its disk (tests/storage_faults.rs).
//!
//! Each start gets a log file of its own (`serve-NN.log` in the run's directory), so that a failure can show what
//! the last runs said. A start may also run the binary under a file-size limit (`ulimit -f`) with SIGXFSZ ignored,
//! so that writes past the limit fail with `EFBIG` as on a full disk, without root and without a special
//! filesystem: the ignored signal survives `exec`, and the limit applies to the service alone.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: `MARKETFLOW_BIN` (as the other crash tests), else the one Cargo built for this test.
pub fn binary() -> PathBuf {
    std::env::var_os("MARKETFLOW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_marketflow")))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The last `lines` lines of a file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One service on one port and data directory, started again and again.
pub struct Serve {
    /// Where the logs go (the data directory is named by the environment).
    pub root: PathBuf,
    pub port: u16,
    /// The whole environment of the child (it starts from an empty one).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Log of every start, oldest first.
    pub logs: Vec<PathBuf>,
}

/// How a wait for the service ended badly.
#[derive(Debug)]
pub enum StartError {
    /// It exited while starting; with the tail of its log.
    Exited(ExitStatus, String),
    /// It did not answer in time.
    Timeout(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(status, log) => write!(f, "`marketflow serve` exited with {status} while starting:\n{log}"),
            Self::Timeout(log) => write!(f, "`marketflow serve` did not become ready in time:\n{log}"),
        }
    }
}

impl Serve {
    pub fn new(root: &Path, port: u16, env: Vec<(String, String)>) -> Self {
        Self { root: root.to_path_buf(), port, env, child: None, logs: vec![] }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts a new process (the previous one must be gone). `file_limit_blocks`: run it under `ulimit -f` (in
    /// 512-byte blocks) with SIGXFSZ ignored.
    pub fn spawn(&mut self, file_limit_blocks: Option<u64>) {
        let log = self.root.join(format!("serve-{:02}.log", self.logs.len()));
        self.logs.push(log.clone());
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("a second handle on the log");
        let mut cmd = match file_limit_blocks {
            None => {
                let mut c = Command::new(binary());
                c.arg("serve");
                c
            }
            Some(blocks) => {
                // `$0` is the binary: no quoting of its path inside the script.
                let script = format!("trap '' XFSZ; ulimit -f {blocks} || exit 97; exec \"$0\" serve");
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(script).arg(binary());
                c
            }
        };
        cmd.env_clear().stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", binary().display())));
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, and reap: no graceful shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful stop) and wait up to `limit` for the exit; SIGKILL after that (`None`).
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// The exit status, if the child has exited (it is then reaped and forgotten).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The current log's last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        self.logs.last().map(|l| tail(l, lines)).unwrap_or_default()
    }

    /// Starts the service and waits (at most `limit`) until `/readyz` answers 200. A start that finds the port
    /// still held by the process killed just before is tried again.
    pub async fn start(&mut self, http: &reqwest::Client, limit: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + limit;
        loop {
            self.spawn(None);
            match self.wait_ready(http, deadline).await {
                Err(StartError::Exited(_, log)) if log.contains("cannot listen") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until `/readyz` answers 200, the child exits, or `deadline` passes.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, deadline: Instant) -> Result<(), StartError> {
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(status) = self.exited() {
                return Err(StartError::Exited(status, self.log_tail(20)));
            }
            if matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Timeout(self.log_tail(20)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}
