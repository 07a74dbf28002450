//! A throwaway PostgreSQL server: `initdb` in a temporary directory, a free port on loopback, stopped and removed
//! when dropped, or when the process that started it ends (a watcher outlives it for that). The tests, the
//! benchmarks and `marketflow dev-cluster` start their own this way; nothing needs a database installed beyond
//! Debian's `postgresql` package.
//!
//! PostgreSQL refuses to run as root, which CI is: as root, the server's directory is handed to the `postgres`
//! user (made by the Debian package) and every server command runs as that user (`runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a server could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// PostgreSQL's server programs are not installed: the message says what to install.
    #[error(
        "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found in /usr/lib/postgresql/*/bin, \
         MARKETFLOW_PG_BIN or PATH: install them with `scripts/test-deps.sh` (Debian: apt-get install postgresql)"
    )]
    NotInstalled,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running throwaway server.
pub struct TempServer {
    /// Where PostgreSQL's programs are.
    bin: PathBuf,
    /// Holds the data directory, the socket directory and the log; removed on drop.
    dir: Option<tempfile::TempDir>,
    port: u16,
    /// Run every server command as the `postgres` user (we are root).
    as_postgres: bool,
    /// The watcher's stdin: when this process ends, the watcher reads EOF, stops the server and removes the
    /// directory, even after a SIGKILL of ours.
    _watch: Option<std::process::ChildStdin>,
}

/// The directory of PostgreSQL's server programs: `MARKETFLOW_PG_BIN`, the newest `/usr/lib/postgresql/*/bin`
/// (Debian puts them there, off PATH), or PATH.
pub fn bin_dir() -> Result<PathBuf, ServerError> {
    if let Ok(dir) = std::env::var("MARKETFLOW_PG_BIN") {
        let p = PathBuf::from(dir);
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir);
        if p.join("initdb").exists() && p.join("postgres").exists() {
            return Ok(p.to_path_buf());
        }
    }
    Err(ServerError::NotInstalled)
}

fn is_root() -> bool {
    // SAFETY-free: the effective user id from /proc, without a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn free_port() -> Result<u16, ServerError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TempServer {
    /// Starts a server with the settings marketflow requires (`deploy/postgresql.conf`'s essentials) and `extra`
    /// settings (`name=value`).
    pub fn start(extra: &[&str]) -> Result<Self, ServerError> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("marketflow-pg-").tempdir()?;
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock)?;
        if as_postgres {
            let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()).status()?;
            if !status.success() {
                return Err(ServerError::Command { what: "chown to postgres".into(), detail: status.to_string() });
            }
        }
        let mut server = Self { bin, dir: Some(dir), port: 0, as_postgres, _watch: None };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nsynchronous_commit = on\nfsync = on\nmax_connections = 300\n\
             shared_buffers = 128MB\nlog_min_messages = warning\nlog_line_prefix = '%m [%p] '\n",
        );
        for e in extra {
            conf.push_str(e);
            conf.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))?;
        server.port = free_port()?;
        server.watch()?;
        server.start_again()?;
        Ok(server)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new("/nonexistent"))
    }

    /// The server's log (for a test's failure message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), ServerError> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(ServerError::Command {
                what: program.into(),
                detail: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                ),
            });
        }
        Ok(())
    }

    /// A process that waits for this one to end (its stdin closes), then stops the server and removes the
    /// directory: a test killed midway leaves no server running.
    fn watch(&mut self) -> Result<(), ServerError> {
        let script = format!(
            "cat >/dev/null; {} -D '{}' stop -m immediate >/dev/null 2>&1; rm -rf '{}'",
            if self.as_postgres {
                format!("runuser -u postgres -- '{}'", self.bin.join("pg_ctl").display())
            } else {
                format!("'{}'", self.bin.join("pg_ctl").display())
            },
            self.dir().join("data").display(),
            self.dir().display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self._watch = child.stdin.take();
        // Reaped by init once it ends: nobody waits for it here.
        std::mem::forget(child);
        Ok(())
    }

    /// Starts the server (again, after [`TempServer::stop`]) on its port, and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), ServerError> {
        let data = self.dir().join("data");
        let opts = format!("-p {} -k {}", self.port, self.dir().join("sock").display());
        let log = self.dir().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                opts.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(ServerError::Command { what: "waiting for the server".into(), detail: self.log() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server: `immediate` is a crash (no checkpoint; recovery replays the WAL at the next start),
    /// `fast` a clean stop.
    pub fn stop(&self, mode: &str) -> Result<(), ServerError> {
        let data = self.dir().join("data");
        self.run(
            "pg_ctl",
            &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), mode.as_ref(), "-w".as_ref(), "stop".as_ref()],
        )
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as the superuser in database `db` (with `psql`, so no runtime is needed).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ServerError> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(ServerError::Command {
                what: format!("psql {sql}"),
                detail: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates database `name` (a copy of `template` if given: far quicker than migrating each one) and answers
    /// its URL.
    pub fn create_database(&self, name: &str, template: Option<&str>) -> Result<String, ServerError> {
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        self.psql("postgres", &sql)?;
        Ok(self.url(name))
    }
}

/// A throwaway server with a migrated template database, handing out fresh databases copied from it (`CREATE
/// DATABASE ... TEMPLATE`: milliseconds, where migrating each one would take longer). The tests and benchmarks of
/// one process share one ([`shared`]).
pub struct Databases {
    server: TempServer,
    next: std::sync::atomic::AtomicU32,
}

/// The template every fresh database is copied from.
const TEMPLATE: &str = "mf_template";

impl Databases {
    /// Starts a server and migrates the template.
    pub fn start() -> Result<Self, ServerError> {
        let server = TempServer::start(&[])?;
        let url = server.create_database(TEMPLATE, None)?;
        let store =
            super::PostgresStore::connect(super::Options::new(url, "template", Duration::from_secs(10))).map_err(
                |e| ServerError::Command { what: "migrating the template database".into(), detail: e.to_string() },
            )?;
        crate::store::Store::close(&*store)
            .map_err(|e| ServerError::Command { what: "closing the template".into(), detail: e.to_string() })?;
        Ok(Self { server, next: Default::default() })
    }

    /// A fresh, migrated database's URL.
    pub fn fresh(&self) -> Result<String, ServerError> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let mut last = None;
        for _ in 0..200 {
            match self.server.create_database(&name, Some(TEMPLATE)) {
                Ok(url) => return Ok(url),
                // The template's last connections may still be closing.
                Err(e) if e.to_string().contains("being accessed") => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ServerError::Command { what: "creating a database".into(), detail: "busy".into() }))
    }

    pub fn server(&self) -> &TempServer {
        &self.server
    }
}

/// The process's shared server, started on first use. Without PostgreSQL installed it panics with the message of
/// [`ServerError::NotInstalled`]: a test that needs a database fails loudly, naming what to install, and never
/// skips.
pub fn shared() -> &'static Databases {
    static SHARED: std::sync::OnceLock<Databases> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| Databases::start().unwrap_or_else(|e| panic!("a PostgreSQL server for the tests: {e}")))
}

impl Drop for TempServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        // The directory belongs to `postgres` when we are root; removing it as root is fine.
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}
