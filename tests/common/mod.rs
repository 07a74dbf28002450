//! A test workflow (`ledger`) and helpers shared by the engine's integration, restart and crash tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use marketflow::engine::definition::Catalog;
use marketflow::engine::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const LEDGER_TOML: &str = include_str!("ledger.toml");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub deposited: i64,
    pub received: i64,
    pub sent: i64,
    pub interest: i64,
    pub notified: u32,
    pub notify_failed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerEvent {
    Open { amount: i64 },
    Deposit { amount: i64 },
    Credit { amount: i64 },
    Transfer { to: String, amount: i64 },
    Ping,
    Boom,
    Close,
}

pub struct Ledger;

impl Workflow for Ledger {
    type Data = Account;
    type Event = LedgerEvent;

    fn kind(&self) -> &'static str {
        "ledger"
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            states: vec![],
            events: vec!["open", "deposit", "credit", "transfer", "ping", "boom", "close"],
            guards: vec!["has_funds"],
            actions: vec![
                "deposit",
                "credit",
                "send",
                "refuse",
                "pay_interest",
                "notify",
                "notified",
                "notify_failed",
                "panic",
            ],
            calls: vec!["notify"],
        }
    }

    fn event_name(&self, e: &LedgerEvent) -> String {
        serde_json::to_value(e).ok().and_then(|v| v["type"].as_str().map(String::from)).unwrap_or_default()
    }

    fn guard(&self, name: &str, cx: &Cx<'_, Account>, s: &Signal<LedgerEvent>) -> bool {
        match (name, s) {
            ("has_funds", Signal::Event(LedgerEvent::Transfer { amount, .. })) => cx.data.balance >= *amount,
            _ => false,
        }
    }

    fn action(&self, name: &str, cx: &mut Cx<'_, Account>, s: &Signal<LedgerEvent>) -> Result<(), Reject> {
        match (name, s) {
            ("deposit", Signal::Event(LedgerEvent::Open { amount } | LedgerEvent::Deposit { amount })) => {
                if *amount <= 0 {
                    return Err(Reject::new("invalid_amount", "amounts are positive"));
                }
                cx.data.balance += amount;
                cx.data.deposited += amount;
                cx.reply(json!({ "balance": cx.data.balance }));
            }
            ("credit", Signal::Event(LedgerEvent::Credit { amount })) => {
                cx.data.balance += amount;
                cx.data.received += amount;
            }
            ("send", Signal::Event(LedgerEvent::Transfer { to, amount })) => {
                let to = EntityKey::new("ledger", to).map_err(|e| Reject::new("invalid_target", e.to_string()))?;
                cx.data.balance -= amount;
                cx.data.sent += amount;
                cx.send(to, json!({ "type": "credit", "amount": amount }));
            }
            ("refuse", _) => return Err(Reject::new("insufficient_funds", "not enough money")),
            ("pay_interest", _) => {
                cx.data.balance += 1;
                cx.data.interest += 1;
                cx.set_timer("interest");
            }
            ("notify", _) => cx.call("notify", json!({ "account": cx.key.id })),
            ("notified", _) => cx.data.notified += 1,
            ("notify_failed", _) => cx.data.notify_failed += 1,
            ("panic", _) => panic!("the boom event blows up on purpose"),
            _ => {}
        }
        Ok(())
    }
}

/// A call handler that fails the first `fail_first` calls (retryably), then answers.
pub struct Flaky {
    pub fail_first: u32,
    pub calls: AtomicU32,
}

impl Flaky {
    pub fn new(fail_first: u32) -> Arc<Self> {
        Arc::new(Self { fail_first, calls: AtomicU32::new(0) })
    }
}

impl CallHandler for Flaky {
    fn call(&self, _call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.fail_first;
        Box::pin(async move {
            if fail {
                Err(CallError::retryable(format!("simulated failure #{}", n + 1)))
            } else {
                Ok(json!({ "ok": true, "echo": request }))
            }
        })
    }
}

pub fn registry(handler: Arc<dyn CallHandler>) -> Registry {
    let mut r = Registry::new();
    r.add_workflow(Arc::new(Ledger));
    r.add_definition("tests/common/ledger.toml", LEDGER_TOML).expect("the ledger definition is valid");
    r.add_handler("notify", handler);
    r
}

pub fn key(id: &str) -> EntityKey {
    EntityKey::new("ledger", id).expect("valid key")
}

pub fn ev(id: &str, body: Value) -> Input {
    Input::domain(id, body, Cause::System { detail: "test".into() })
}

/// The account's state and data, read where it stands (a wait on the store's read, which is quick: tests ask
/// it inside conditions polled by [`eventually`]).
pub fn account(engine: &Engine, id: &str) -> Option<(String, Account)> {
    marketflow::store::wait(engine.record(&key(id)))
        .expect("readable")
        .map(|r| (r.state, serde_json::from_value(r.data).expect("account decodes")))
}

/// A store a test can open again after its engine shut down: sled in a temporary directory, or a fresh database on
/// the test binary's PostgreSQL server (started on first use; without PostgreSQL installed the test fails, naming
/// what to install).
pub enum TestStore {
    Sled(tempfile::TempDir),
    Postgres(String),
}

impl TestStore {
    pub fn sled() -> Self {
        TestStore::Sled(tempfile::tempdir().expect("a temporary directory"))
    }

    pub fn postgres() -> Self {
        let url = marketflow::store::postgres::server::shared().fresh().unwrap_or_else(|e| panic!("{e}"));
        TestStore::Postgres(url)
    }

    /// A fresh store of the same kind.
    pub fn another(&self) -> Self {
        match self {
            TestStore::Sled(_) => Self::sled(),
            TestStore::Postgres(_) => Self::postgres(),
        }
    }

    /// Opens it (again: after the previous engine's shutdown closed it).
    pub fn open(&self) -> Arc<dyn marketflow::store::Store> {
        match self {
            TestStore::Sled(dir) => Arc::new(harness::open_store(dir.path()).expect("sled opens")),
            TestStore::Postgres(url) => {
                let options = marketflow::store::postgres::Options::new(url.clone(), "test", Duration::from_secs(10));
                marketflow::store::postgres::PostgresStore::connect(options).expect("PostgreSQL connects")
            }
        }
    }
}

/// Waits (in real time, briefly) until background work of the engine makes `cond` true.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Child processes on a real sled store, and what the restart and crash tests check in it afterwards.
///
/// A test re-executes its own binary (`current_exe()`, the test's name with `--exact --nocapture`, and
/// [`harness::CHILD_ENV`] set to the workload); the child prints one line per input it is about to send
/// (`SEND`) and one per input acknowledged (`ACK`), flushing each, so that the parent knows every input that may
/// have been committed and every input that must have been, even when it kills the child with SIGKILL.
pub mod harness {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::io::{BufRead, BufReader, Write};
    use std::ops::Bound;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use chrono::{DateTime, TimeDelta, Utc};
    use marketflow::engine::*;
    use marketflow::store::{keys, wait, SledStore, Store, Table};
    use serde_json::{json, Value};

    use super::{ev, key, Account};

    /// Set in a child's environment to the workload it runs; absent in the parent.
    pub const CHILD_ENV: &str = "MARKETFLOW_CHILD";
    /// The store directory of a child.
    pub const DIR_ENV: &str = "MARKETFLOW_CHILD_DIR";

    /// The workload this process runs, when it is a child.
    pub fn child_role() -> Option<String> {
        std::env::var(CHILD_ENV).ok()
    }

    /// The store directory a child was given.
    pub fn child_dir() -> PathBuf {
        PathBuf::from(std::env::var(DIR_ENV).unwrap_or_else(|_| die("no store directory in the environment")))
    }

    /// A number from the environment, or `default`.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
            Err(_) => default,
        }
    }

    /// Starts a child: ends the test harness's `test <name> ... ` line, so that the child's first line stands
    /// alone, and sends engine warnings and errors to its stderr file (`RUST_LOG` overrides the level).
    pub fn child_init() {
        say("");
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    }

    /// Prints one line and flushes it, so that the parent has it even if the child is killed right after.
    pub fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Ends a child at once: the parent sees the exit code and prints the stderr tail with this message.
    pub fn die(msg: &str) -> ! {
        eprintln!("CHILD FAILURE: {msg}");
        let _ = std::io::stderr().flush();
        std::process::exit(3)
    }

    /// An input of the ledger workflow as the children send it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Open(i64),
        Deposit(i64),
        Transfer { to: String, amount: i64 },
        Ping,
    }

    impl Op {
        pub fn kind(&self) -> &'static str {
            match self {
                Op::Open(_) => "open",
                Op::Deposit(_) => "deposit",
                Op::Transfer { .. } => "transfer",
                Op::Ping => "ping",
            }
        }
        pub fn amount(&self) -> i64 {
            match self {
                Op::Open(a) | Op::Deposit(a) | Op::Transfer { amount: a, .. } => *a,
                Op::Ping => 0,
            }
        }
        pub fn to(&self) -> Option<&str> {
            match self {
                Op::Transfer { to, .. } => Some(to),
                _ => None,
            }
        }
        pub fn body(&self) -> Value {
            match self {
                Op::Open(a) => json!({"type": "open", "amount": a}),
                Op::Deposit(a) => json!({"type": "deposit", "amount": a}),
                Op::Transfer { to, amount } => json!({"type": "transfer", "to": to, "amount": amount}),
                Op::Ping => json!({"type": "ping"}),
            }
        }
    }

    pub fn status_name(s: Status) -> &'static str {
        match s {
            Status::Accepted => "accepted",
            Status::Ignored => "ignored",
            Status::Rejected => "rejected",
        }
    }

    fn parse_status(s: &str) -> Option<Status> {
        [Status::Accepted, Status::Ignored, Status::Rejected].into_iter().find(|st| status_name(*st) == s)
    }

    /// Sends `op` as input `input` to ledger `entity`: prints `SEND` before it and `ACK` after its durable outcome.
    /// Any error ends the child (a healthy engine on a healthy disk refuses none of these inputs).
    pub async fn send_logged(engine: &Engine, entity: &str, input: &str, op: &Op) -> Outcome {
        let (kind, amount, to) = (op.kind(), op.amount(), op.to().unwrap_or("-"));
        say(&format!("SEND {entity} {input} {kind} {amount} {to}"));
        match engine.send(key(entity), ev(input, op.body())).await {
            Ok(o) => {
                say(&format!("ACK {entity} {input} {kind} {amount} {to} {}", status_name(o.status)));
                o
            }
            Err(e) => die(&format!("input {input} to {entity} failed: {e} ({})", e.code())),
        }
    }

    /// Opens the store, waiting (at most 5 s) while a database dropped just before still holds sled's lock on the
    /// directory: sled releases it only when its background threads are done, a little after the drop.
    pub fn open_store(dir: &Path) -> Result<SledStore, marketflow::store::Error> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match SledStore::open(dir) {
                Err(e) if e.to_string().contains("could not acquire lock") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                r => return r,
            }
        }
    }

    /// Where a crash test's PostgreSQL database is (its PostgreSQL run); unset, the children use sled in their
    /// directory.
    pub const DATABASE_ENV: &str = "MARKETFLOW_TEST_DATABASE_URL";

    /// The store of a crash test's run: PostgreSQL at `database` if given, else sled in `dir`.
    pub fn open_backend(
        dir: &Path,
        database: Option<&str>,
    ) -> Result<std::sync::Arc<dyn Store>, marketflow::store::Error> {
        match database {
            Some(url) => {
                let options = marketflow::store::postgres::Options::new(url, "crash-test", Duration::from_secs(10));
                Ok(marketflow::store::postgres::PostgresStore::connect(options)?)
            }
            None => Ok(std::sync::Arc::new(open_store(dir)?)),
        }
    }

    /// What is left for the engine to do in `store` at service time `now`: undelivered messages, unfinished
    /// calls, overdue timers. Empty once recovery is complete.
    pub fn unfinished(store: &dyn Store, now: DateTime<Utc>) -> Vec<String> {
        let mut left = Vec::new();
        let count = |t: Table| wait(store.count_prefix(t, b"")).unwrap_or_else(|e| die(&format!("reading {t:?}: {e}")));
        let outbox = count(Table::Outbox);
        if outbox > 0 {
            left.push(format!("{outbox} undelivered messages"));
        }
        let calls = count(Table::Effects);
        if calls > 0 {
            left.push(format!("{calls} unfinished calls"));
        }
        let horizon = keys::time_key(now + TimeDelta::milliseconds(1)).to_be_bytes().to_vec();
        let due = wait(store.scan(Table::Timers, Bound::Unbounded, Bound::Excluded(horizon), usize::MAX, false))
            .unwrap_or_else(|e| die(&format!("reading timers: {e}")));
        if !due.is_empty() {
            left.push(format!("{} overdue timers", due.len()));
        }
        left
    }

    /// Waits (in real time, at most `limit`) until [`unfinished`] is empty; ends the child if it never is.
    pub async fn await_recovery(store: &dyn Store, now: DateTime<Utc>, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = unfinished(store, now);
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                die(&format!("recovery did not finish within {limit:?}: {}", left.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One `SEND` or `ACK` line.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Line {
        pub entity: String,
        pub input: String,
        pub kind: String,
        pub amount: i64,
        pub to: Option<String>,
        /// The acknowledged status (`ACK` lines only).
        pub status: Option<Status>,
    }

    fn parse_line(l: &str) -> Option<Line> {
        let f: Vec<&str> = l.split(' ').collect();
        let (n, status) = match f.first() {
            Some(&"SEND") => (6, None),
            Some(&"ACK") => (7, Some(parse_status(f.get(6)?)?)),
            _ => return None,
        };
        if f.len() != n {
            return None;
        }
        Some(Line {
            entity: f[1].to_string(),
            input: f[2].to_string(),
            kind: f[3].to_string(),
            amount: f[4].parse().ok()?,
            to: (f[5] != "-").then(|| f[5].to_string()),
            status,
        })
    }

    /// What children printed, over all their runs.
    #[derive(Debug, Default)]
    pub struct Log {
        /// Every input a child was about to send, by (entity, input id): a committed input is always here.
        pub sent: HashMap<(String, String), Line>,
        /// Every acknowledged input, with the status it was acknowledged with.
        pub acks: Vec<Line>,
        /// Every other line (`READY`, `DONE`, the test harness's own).
        pub other: Vec<String>,
    }

    impl Log {
        /// Adds a run's lines; an input id sent twice must be the same input (opens are re-sent after a crash).
        pub fn add(&mut self, lines: &[String]) -> Result<(), String> {
            for l in lines {
                if !(l.starts_with("SEND ") || l.starts_with("ACK ")) {
                    self.other.push(l.clone());
                    continue;
                }
                let p = parse_line(l).ok_or_else(|| format!("a child printed a malformed line: {l:?}"))?;
                if p.status.is_some() {
                    self.acks.push(p);
                    continue;
                }
                let k = (p.entity.clone(), p.input.clone());
                if let Some(old) = self.sent.get(&k) {
                    if *old != p {
                        return Err(format!("input {} of {} was sent as {old:?} and as {p:?}", p.input, p.entity));
                    }
                }
                self.sent.insert(k, p);
            }
            Ok(())
        }

        pub fn count(&self, line: &str) -> usize {
            self.other.iter().filter(|l| l.as_str() == line || l.starts_with(&format!("{line} "))).count()
        }
    }

    /// How a child run ends.
    #[derive(Debug, Clone, Copy)]
    pub enum Stop {
        /// SIGKILL after this long (if it is still running).
        KillAfter(Duration),
        /// Let it finish; kill it and fail if it takes longer than this.
        WaitUpTo(Duration),
    }

    /// A finished child run.
    #[derive(Debug)]
    pub struct ChildRun {
        pub role: String,
        /// Complete lines of its stdout (a line cut by the kill is dropped).
        pub lines: Vec<String>,
        pub status: ExitStatus,
        /// Whether this side killed it.
        pub killed: bool,
        pub elapsed: Duration,
        pub stderr: PathBuf,
    }

    impl ChildRun {
        /// The last `n` lines of the child's stderr, for failure messages.
        pub fn stderr_tail(&self, n: usize) -> String {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_else(|e| format!("(unreadable: {e})"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            format!(
                "--- last {} of {} stderr lines of child `{}` ({}) ---\n{tail}\n--- end ---",
                n.min(lines.len()),
                lines.len(),
                self.role,
                self.stderr.display()
            )
        }

        /// Whether it printed `line` (or `line ...`).
        pub fn printed(&self, line: &str) -> bool {
            self.lines.iter().any(|l| l == line || l.starts_with(&format!("{line} ")))
        }

        /// Panics with context unless the child exited 0 by itself after printing `DONE`.
        pub fn expect_clean_exit(&self) {
            assert!(
                !self.killed && self.status.success() && self.printed("DONE"),
                "child `{}` did not finish cleanly (status {}, killed: {}, {} stdout lines, last: {:?})\n{}",
                self.role,
                self.status,
                self.killed,
                self.lines.len(),
                self.lines.last(),
                self.stderr_tail(60)
            );
        }
    }

    /// Runs this test binary's `test` as a child with workload `role` on store directory `dir`.
    pub fn run_child(
        test: &str,
        role: &str,
        dir: &Path,
        stderr: &Path,
        envs: &[(&str, String)],
        stop: Stop,
    ) -> ChildRun {
        let exe = std::env::current_exe().expect("the path of the test binary");
        let err = std::fs::File::create(stderr).expect("create the child's stderr file");
        let mut child = Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env(DIR_ENV, dir)
            .env("RUST_BACKTRACE", "1")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn the child");
        let started = Instant::now();
        let out = child.stdout.take().expect("the child's stdout is piped");
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut lines = Vec::new();
            let mut buf = String::new();
            loop {
                buf.clear();
                match r.read_line(&mut buf) {
                    Ok(0) | Err(_) => return lines,
                    Ok(_) if buf.ends_with('\n') => lines.push(buf.trim_end().to_string()),
                    Ok(_) => {}
                }
            }
        });
        let limit = match stop {
            Stop::KillAfter(d) | Stop::WaitUpTo(d) => d,
        };
        let mut killed = false;
        let status = loop {
            if let Some(s) = child.try_wait().expect("poll the child") {
                break s;
            }
            if started.elapsed() >= limit {
                // SIGKILL on unix: no destructor, no flush, no exit handler runs.
                child.kill().expect("kill the child");
                killed = true;
                break child.wait().expect("reap the child");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let elapsed = started.elapsed();
        let lines = reader.join().expect("the stdout reader");
        let run = ChildRun { role: role.to_string(), lines, status, killed, elapsed, stderr: stderr.to_path_buf() };
        if killed && matches!(stop, Stop::WaitUpTo(_)) {
            panic!("child `{role}` did not finish within {limit:?}\n{}", run.stderr_tail(60));
        }
        run
    }

    /// Every table of the store the engine writes, decoded (the parent reads it after the child has exited).
    #[derive(Debug, Default)]
    pub struct Snapshot {
        /// Entity records by entity id.
        pub records: BTreeMap<String, EntityRecord>,
        /// Journals by entity id, in key (sequence) order.
        pub journals: BTreeMap<String, Vec<JournalEntry>>,
        /// Idempotency records by entity id and input id.
        pub outcomes: BTreeMap<String, BTreeMap<String, Outcome>>,
        /// Timer rows by key.
        pub timers: BTreeMap<Vec<u8>, TimerRow>,
        /// Outbox rows by message id.
        pub outbox: BTreeMap<String, OutboxRow>,
        /// Unfinished calls by call id.
        pub calls: BTreeMap<String, CallRow>,
        /// Keys that do not parse and values that do not decode: each one is a failure.
        pub garbage: Vec<String>,
    }

    /// `kind\0id\0rest` into the entity key and the rest.
    fn split_entity(k: &[u8]) -> Option<(EntityKey, &[u8])> {
        let a = k.iter().position(|b| *b == 0)?;
        let b = a + 1 + k[a + 1..].iter().position(|b| *b == 0)?;
        let key = EntityKey::new(std::str::from_utf8(&k[..a]).ok()?, std::str::from_utf8(&k[a + 1..b]).ok()?).ok()?;
        Some((key, &k[b + 1..]))
    }

    impl Snapshot {
        pub fn load(store: &dyn Store) -> Self {
            let all = |t: Table| {
                wait(store.scan(t, Bound::Unbounded, Bound::Unbounded, usize::MAX, false))
                    .unwrap_or_else(|e| panic!("scanning {t:?}: {e}"))
            };
            let mut s = Snapshot::default();
            fn decode<T: serde::de::DeserializeOwned>(g: &mut Vec<String>, t: Table, k: &[u8], v: &[u8]) -> Option<T> {
                serde_json::from_slice(v)
                    .map_err(|e| g.push(format!("{t:?} row {:?} does not decode: {e}", String::from_utf8_lossy(k))))
                    .ok()
            }
            let g = &mut s.garbage;
            let mut by_state = BTreeMap::<(String, String), i64>::new();
            for (k, v) in all(Table::Entities) {
                let Some(r) = decode::<EntityRecord>(g, Table::Entities, &k, &v) else { continue };
                *by_state.entry((r.kind.clone(), r.state.clone())).or_default() += 1;
                if split_entity(&k).map(|(e, rest)| (e.kind, e.id, rest.is_empty()))
                    != Some((r.kind.clone(), r.id.clone(), true))
                {
                    g.push(format!(
                        "entity row {:?} holds the record of {}/{}",
                        String::from_utf8_lossy(&k),
                        r.kind,
                        r.id
                    ));
                }
                s.records.insert(r.id.clone(), r);
            }
            // Entities by state, as the store counts them with the commits, are the states of the records.
            match wait(marketflow::engine::by_state::read(store)) {
                Ok(mut counted) => {
                    counted.retain(|_, n| *n != 0);
                    if counted != by_state {
                        g.push(format!("entities by state are counted as {counted:?}, the records say {by_state:?}"));
                    }
                }
                Err(e) => g.push(format!("entities by state do not read: {e}")),
            }
            for (k, v) in all(Table::Journal) {
                let Some(j) = decode::<JournalEntry>(g, Table::Journal, &k, &v) else { continue };
                match split_entity(&k) {
                    Some((e, rest)) if keys::read_u64(rest, 0) == Some(j.seq) && rest.len() == 8 => {
                        s.journals.entry(e.id).or_default().push(j)
                    }
                    _ => {
                        g.push(format!("journal key {:?} does not match entry {}", String::from_utf8_lossy(&k), j.seq))
                    }
                }
            }
            for (k, v) in all(Table::Idempotency) {
                let Some(o) = decode::<Outcome>(g, Table::Idempotency, &k, &v) else { continue };
                match split_entity(&k).and_then(|(e, rest)| Some((e, String::from_utf8(rest.to_vec()).ok()?))) {
                    Some((e, input)) => {
                        s.outcomes.entry(e.id).or_default().insert(input, o);
                    }
                    None => g.push(format!("idempotency key {:?} does not parse", String::from_utf8_lossy(&k))),
                }
            }
            for (k, v) in all(Table::Timers) {
                let Some(t) = decode::<TimerRow>(g, Table::Timers, &k, &v) else { continue };
                if t.key() != k {
                    g.push(format!("timer row {} of {} is stored under another key", t.name, t.entity));
                }
                s.timers.insert(k, t);
            }
            for (k, v) in all(Table::Outbox) {
                let Some(m) = decode::<OutboxRow>(g, Table::Outbox, &k, &v) else { continue };
                s.outbox.insert(m.id.clone(), m);
            }
            for (k, v) in all(Table::Effects) {
                let Some(c) = decode::<CallRow>(g, Table::Effects, &k, &v) else { continue };
                s.calls.insert(c.id.clone(), c);
            }
            s
        }

        pub fn account(&self, id: &str) -> Option<Account> {
            self.records.get(id).and_then(|r| serde_json::from_value(r.data.clone()).ok())
        }

        fn recorded(&self, entity: &str, input: &str) -> bool {
            self.outcomes.get(entity).is_some_and(|m| m.contains_key(input))
        }
    }

    /// Sums over the whole store, for the summary.
    #[derive(Debug, Default, Clone)]
    pub struct Totals {
        pub accounts: usize,
        pub journal_entries: usize,
        pub deposited: i64,
        pub sent: i64,
        pub received: i64,
        /// Credits in the outbox not yet recorded by their receiver.
        pub in_flight: i64,
        pub interest: i64,
        pub notified: u64,
        pub outbox_rows: usize,
        pub pending_calls: usize,
        /// Calls waiting for their retry timer, and calls out of attempts.
        pub retrying_calls: usize,
        pub calls_needing_attention: usize,
        pub timers: usize,
    }

    /// Checks the invariants of a ledger store against what the children printed. `clock` is the service time the
    /// store was last used at (no journal entry may be later).
    pub fn check_invariants(s: &Snapshot, log: &Log, clock: Option<DateTime<Utc>>) -> Result<Totals, Vec<String>> {
        let mut errs: Vec<String> = s.garbage.clone();
        macro_rules! bad {
            ($($t:tt)*) => { errs.push(format!($($t)*)) };
        }
        let mut t = Totals {
            accounts: s.records.len(),
            outbox_rows: s.outbox.len(),
            pending_calls: s.calls.len(),
            timers: s.timers.len(),
            ..Totals::default()
        };

        // (a) Every acknowledged input has its idempotency record, with the status it was acknowledged with.
        for a in &log.acks {
            match s.outcomes.get(&a.entity).and_then(|m| m.get(&a.input)) {
                None => bad!("(a) acknowledged input {} of {} ({} {}) has no idempotency record: an acknowledged commit was lost", a.input, a.entity, a.kind, a.amount),
                Some(o) if Some(o.status) != a.status => bad!("(a) input {} of {} was acknowledged as {:?} but is stored as {:?}", a.input, a.entity, a.status, o.status),
                Some(_) => {}
            }
        }

        let mut accounts = BTreeMap::new();
        // Credits of committed transfers: message id -> (receiver, amount).
        let mut credits: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for (id, rec) in &s.records {
            let Ok(acct) = serde_json::from_value::<Account>(rec.data.clone()) else {
                bad!("the data of {id} is not an account: {}", rec.data);
                continue;
            };
            // (b) The balance is what came in minus what went out.
            if acct.balance != acct.deposited + acct.received - acct.sent + acct.interest {
                bad!(
                    "(b) {id}: balance {} != deposited {} + received {} - sent {} + interest {}",
                    acct.balance,
                    acct.deposited,
                    acct.received,
                    acct.sent,
                    acct.interest
                );
            }
            let journal = s.journals.get(id).map(Vec::as_slice).unwrap_or(&[]);
            t.journal_entries += journal.len();
            if journal.len() as u64 != rec.seq || journal.iter().enumerate().any(|(i, j)| j.seq != i as u64 + 1) {
                bad!(
                    "(d) {id}: journal has {} entries with seqs {:?}.. but the record is at seq {}",
                    journal.len(),
                    journal.iter().map(|j| j.seq).take(5).collect::<Vec<_>>(),
                    rec.seq
                );
            }
            // (d) No input took effect twice; the journal and the idempotency table agree.
            let empty = BTreeMap::new();
            let outcomes = s.outcomes.get(id).unwrap_or(&empty);
            let mut seen = HashSet::new();
            for j in journal {
                if !seen.insert(j.input_id.as_str()) {
                    bad!(
                        "(d) {id}: input {} appears twice in the journal (seq {}): it took effect twice",
                        j.input_id,
                        j.seq
                    );
                }
                match outcomes.get(&j.input_id) {
                    // Timers and call results are kept from taking effect twice by the record (their own test is
                    // the `seen` set above), not by an idempotency record.
                    None if matches!(j.cause, Cause::Timer { .. } | Cause::Call { .. }) => {}
                    None => bad!("(d) {id}: journal entry {} ({}) has no idempotency record", j.seq, j.input_id),
                    Some(o) if o.status != j.status => {
                        bad!("(d) {id}: entry {} is {:?} but its outcome {:?}", j.seq, j.status, o.status)
                    }
                    Some(_) => {}
                }
            }
            for input in outcomes.keys() {
                if !seen.contains(input.as_str()) {
                    bad!("(d) {id}: idempotency record of {input} without a journal entry");
                }
            }
            // Service time never ran backwards: within an entity, and across restarts (the stored clock).
            for w in journal.windows(2) {
                if w[1].at < w[0].at {
                    bad!(
                        "(clock) {id}: entry {} at {} is earlier than entry {} at {}",
                        w[1].seq,
                        w[1].at,
                        w[0].seq,
                        w[0].at
                    );
                }
            }
            if let (Some(c), Some(last)) = (clock, journal.last()) {
                if last.at > c {
                    bad!("(clock) {id}: entry {} at {} is later than the stored clock {c}", last.seq, last.at);
                }
            }
            // (d) Interest paid once per accepted firing; effects match the inputs that caused them.
            let accepted = journal.iter().filter(|j| j.status == Status::Accepted);
            let (mut deposited, mut sent, mut pings, mut interest, mut notified) = (0i64, 0i64, 0i64, 0i64, 0u32);
            for j in accepted {
                match j.event.as_str() {
                    "interest" => {
                        interest += 1;
                        if !matches!(&j.cause, Cause::Timer { name } if name == "interest") {
                            bad!("(d) {id}: interest entry {} was not caused by the timer: {:?}", j.seq, j.cause);
                        }
                    }
                    "notify.ok" => notified += 1,
                    "credit" => {}
                    "open" | "deposit" | "transfer" | "ping" => {
                        let Some(l) = log.sent.get(&(id.clone(), j.input_id.clone())) else {
                            bad!("{id}: input {} ({}) was committed but no child ever sent it", j.input_id, j.event);
                            continue;
                        };
                        if l.kind != j.event {
                            bad!("{id}: input {} was sent as {} but journaled as {}", j.input_id, l.kind, j.event);
                        }
                        match j.event.as_str() {
                            "open" | "deposit" => deposited += l.amount,
                            "ping" => pings += 1,
                            _ => {
                                sent += l.amount;
                                if j.messages.len() != 1 {
                                    bad!("{id}: transfer {} sent {} messages", j.input_id, j.messages.len());
                                }
                                for m in &j.messages {
                                    let mid = m.split(" to ").next().unwrap_or_default().to_string();
                                    credits.insert(mid, (l.to.clone().unwrap_or_default(), l.amount));
                                }
                            }
                        }
                    }
                    other => bad!("{id}: unexpected accepted event `{other}` at seq {}", j.seq),
                }
            }
            if interest != acct.interest {
                bad!("(d) {id}: {interest} accepted interest entries but interest {}", acct.interest);
            }
            if deposited != acct.deposited {
                bad!("{id}: deposited {} but its accepted opens and deposits sum to {deposited}", acct.deposited);
            }
            if sent != acct.sent {
                bad!("{id}: sent {} but its accepted transfers sum to {sent}", acct.sent);
            }
            if notified != acct.notified || acct.notify_failed != 0 {
                bad!(
                    "{id}: {notified} accepted notify.ok entries but notified {} (failed {})",
                    acct.notified,
                    acct.notify_failed
                );
            }
            // Every accepted ping started a call: its result was consumed once, or the call is still pending.
            if pings != i64::from(acct.notified) + rec.calls.len() as i64 {
                bad!("(calls) {id}: {pings} pings accepted but {} notified and {} calls pending: a call was lost or ran twice", acct.notified, rec.calls.len());
            }
            for c in &rec.calls {
                if !s.calls.contains_key(c) {
                    bad!("(calls) {id} waits for call {c}, which has no row");
                }
            }
            // (e) Each timer the record lists has its row.
            for (name, tr) in &rec.timers {
                let row = TimerRow {
                    entity: key(id),
                    name: name.clone(),
                    due: tr.due,
                    set_seq: tr.set_seq,
                    set_at: tr.due,
                    target: TimerTarget::Entity,
                };
                match s.timers.get(&row.key()) {
                    None => bad!(
                        "(e) {id}: timer {name} due {} (set at seq {}) has no row: it would never fire",
                        tr.due,
                        tr.set_seq
                    ),
                    Some(r) if r.set_seq != tr.set_seq || r.target != TimerTarget::Entity => {
                        bad!("(e) {id}: timer {name} row {r:?} does not match {tr:?}")
                    }
                    Some(_) => {}
                }
            }
            if rec.state == "open" && !rec.timers.contains_key("interest") {
                bad!("(e) {id}: an open account without its interest timer");
            }
            t.deposited += acct.deposited;
            t.sent += acct.sent;
            t.received += acct.received;
            t.interest += acct.interest;
            t.notified += u64::from(acct.notified);
            accounts.insert(id.clone(), acct);
        }

        // (e) No timer row of an entity that its record does not list.
        for row in s.timers.values() {
            match &row.target {
                TimerTarget::Entity => match s.records.get(&row.entity.id).and_then(|r| r.timers.get(&row.name)) {
                    Some(tr) if tr.due == row.due && tr.set_seq == row.set_seq => {}
                    other => bad!("(e) timer row {} of {} due {} (set at seq {}) is not what its record lists ({other:?}): it would fire a stale or second time", row.name, row.entity, row.due, row.set_seq),
                },
                TimerTarget::CallRetry { call_id } => match s.calls.get(call_id) {
                    Some(c) if c.status == CallStatus::Retrying && c.next_attempt_at == Some(row.due) => {}
                    other => bad!("(e) retry timer of call {call_id} due {} does not match the call: {other:?}", row.due),
                },
            }
        }
        // A call waits for its retry timer exactly when it is retrying.
        for (cid, c) in &s.calls {
            if !s.records.get(&c.entity.id).is_some_and(|r| r.calls.contains(cid)) {
                bad!("(calls) call row {cid} is not awaited by its entity {}", c.entity);
            }
            let timers = s
                .timers
                .values()
                .filter(|r| matches!(&r.target, TimerTarget::CallRetry { call_id } if call_id == cid))
                .count();
            if timers != usize::from(c.status == CallStatus::Retrying) {
                bad!("(calls) call {cid} is {:?} with {timers} retry timers", c.status);
            }
            match c.status {
                CallStatus::Retrying => t.retrying_calls += 1,
                CallStatus::NeedsAttention => t.calls_needing_attention += 1,
                CallStatus::Pending | CallStatus::InFlight => {}
            }
        }

        // (c) Money is conserved: every credit of a committed transfer is recorded by its receiver or still in the
        // outbox, and each account received exactly the credits it recorded.
        let mut received: BTreeMap<&str, i64> = BTreeMap::new();
        for (mid, (to, amount)) in &credits {
            if s.recorded(to, mid) {
                *received.entry(to.as_str()).or_default() += amount;
            } else if !s.outbox.contains_key(mid) {
                bad!("(c) credit {mid} of {amount} to {to} is neither recorded by its receiver nor in the outbox: a message was lost");
            }
        }
        for (id, acct) in &accounts {
            let r = received.get(id.as_str()).copied().unwrap_or(0);
            if r != acct.received {
                bad!("(c) {id}: received {} but the credits it recorded sum to {r}", acct.received);
            }
            // Messages from one entity arrive in the order they were sent (ids are `<sender>#<seq>.<n>`).
            let mut last_from: HashMap<&str, &str> = HashMap::new();
            for j in s.journals.get(id).into_iter().flatten().filter(|j| j.event == "credit") {
                let (from, order) = j.input_id.split_once('#').unwrap_or_default();
                if let Some(prev) = last_from.insert(from, order) {
                    if sent_order(prev) >= sent_order(order) {
                        bad!("(c) {id}: credit {} arrived after {from}#{prev}, which was sent later", j.input_id);
                    }
                }
                if j.status != Status::Accepted || credits.get(&j.input_id).map(|c| c.0.as_str()) != Some(id.as_str()) {
                    bad!(
                        "(c) {id}: credit entry {} ({}, {:?}) is not a credit of a committed transfer to it",
                        j.seq,
                        j.input_id,
                        j.status
                    );
                }
            }
        }
        for m in s.outbox.values() {
            if m.body["type"] != "credit" || !credits.contains_key(&m.id) {
                bad!("(c) outbox row {} ({}) is not a credit of a committed transfer", m.id, m.body);
            }
            if !s.recorded(&m.to.id, &m.id) {
                t.in_flight += m.body["amount"].as_i64().unwrap_or(0);
            }
        }
        if t.sent != t.received + t.in_flight {
            bad!(
                "(c) total sent {} != total received {} + in the outbox, not yet received {}",
                t.sent,
                t.received,
                t.in_flight
            );
        }
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    /// The position of a message among its sender's (`<seq>.<n>` of its id).
    fn sent_order(s: &str) -> (u64, u64) {
        let (seq, n) = s.split_once('.').unwrap_or((s, ""));
        (seq.parse().unwrap_or(u64::MAX), n.parse().unwrap_or(u64::MAX))
    }

    /// Formats violations for a panic message (the first `n`).
    pub fn report(errs: &[String], n: usize) -> String {
        let mut s = format!("{} invariant violations:\n", errs.len());
        for e in errs.iter().take(n) {
            s.push_str("  - ");
            s.push_str(e);
            s.push('\n');
        }
        if errs.len() > n {
            s.push_str(&format!("  ... and {} more\n", errs.len() - n));
        }
        s
    }
}
