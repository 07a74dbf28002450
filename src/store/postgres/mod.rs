//! The store of several nodes: PostgreSQL, shared by every marketflow node of a deployment.
//!
//! Each [`Table`] is a table `mf_<name>(key bytea PRIMARY KEY, shard int2, value bytea)`: the keys are sled's key
//! bytes, and PostgreSQL orders `bytea` bytewise as sled does, so every scan keeps its meaning. `shard` is derived
//! from the key ([`super::shard::of_row`], -1 for rows of no entity) and indexed `(shard, key)` where a node scans
//! by shard (timers, outbox, calls).
//!
//! A group commit is one transaction ([`PostgresStore::write`], on the committer's thread): the ops collapsed to
//! the last per key; the shard rows of the group's fences locked `FOR UPDATE` and their owner and epoch checked (a
//! node whose lease moved on writes nothing: [`Error::Fenced`]); counters read `FOR UPDATE` and added to; keys
//! that must be new inserted `ON CONFLICT DO NOTHING`; then one `unnest` statement per table and kind of write,
//! pipelined on one connection, and a row in `mf_commit_log`. A COMMIT whose answer is lost is resolved by that row,
//! read on a new connection after locking the group's shard rows (so the old backend is gone or finished), before
//! anyone is answered. Reads go through a pool and are answered as futures on this store's own runtime, so no
//! actix thread ever waits for the database.
//!
//! Only portable SQL is on the hot path (READ COMMITTED, `FOR UPDATE`, `ON CONFLICT`, `unnest`; serialization and
//! deadlock failures are retried), so that a PostgreSQL-compatible distributed SQL could serve later.

pub mod leases;
pub mod migrations;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

use super::shard::{self, Shard};
use super::{counter_value, Batch, Error, KvPairs, Op, Read, RowSink, Store, Table};

/// Every table of the store, with its name in the database.
pub const TABLES: [(Table, &str); 10] = [
    (Table::Entities, "mf_entities"),
    (Table::Journal, "mf_journal"),
    (Table::Timers, "mf_timers"),
    (Table::TimerIndex, "mf_timer_index"),
    (Table::Idempotency, "mf_idempotency"),
    (Table::Outbox, "mf_outbox"),
    (Table::Effects, "mf_effects"),
    (Table::Meta, "mf_meta"),
    (Table::Records, "mf_records"),
    (Table::Index, "mf_index"),
];

/// The database table of `table`.
pub fn table_name(table: Table) -> &'static str {
    TABLES.iter().find(|(t, _)| *t == table).map(|(_, n)| *n).unwrap_or("mf_meta")
}

/// How a node connects and behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The connection string (`postgres://user:pass@host:port/db`).
    pub url: String,
    /// This node's name in leases and the commit log.
    pub node: String,
    /// The shard lease; the session timeouts are set below it, so a paused node's open transaction cannot hold
    /// up the node taking over.
    pub lease: Duration,
    /// Connections of the read pool.
    pub pool: usize,
    /// Checks every commit's fences (always, but in the test that shows fencing is what keeps journals whole).
    pub fencing: bool,
}

impl Options {
    pub fn new(url: impl Into<String>, node: impl Into<String>, lease: Duration) -> Self {
        Self { url: url.into(), node: node.into(), lease, pool: 8, fencing: true }
    }

    /// The PostgreSQL settings of every session: below the lease (see [`Options::lease`]), and commits that are
    /// durable before they are answered whatever the server's default.
    fn session_options(&self) -> String {
        let lock = (self.lease.as_millis() * 2 / 5).max(100);
        let idle = (self.lease.as_millis() / 2).max(200);
        format!(
            "-c lock_timeout={lock} -c idle_in_transaction_session_timeout={idle} -c synchronous_commit=on \
             -c statement_timeout={}",
            (self.lease.as_millis() * 3).max(5_000)
        )
    }
}

/// The store over PostgreSQL. Cheap to share (`Arc`); its runtime drives every query.
pub struct PostgresStore {
    /// This store's own runtime: the pool's connections live on it, reads are spawned on it and awaited from
    /// wherever they were asked (actix threads included), the committer thread blocks on it.
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Connections for reads.
    pool: deadpool_postgres::Pool,
    /// How to open a connection of our own (the writer's, the resolver's, the leases').
    config: tokio_postgres::Config,
    options: Options,
    /// The committer's connection and its prepared statements; `None` until first used or after it broke. Only
    /// the committer thread writes, so the lock is never contended.
    writer: tokio::sync::Mutex<Option<Writer>>,
    /// Set once closed: reads and writes answer [`Error::Closed`].
    closed: std::sync::atomic::AtomicBool,
}

/// The committer's connection.
struct Writer {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Writer {
    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Why a database call failed, for the caller's decision.
fn pg(e: tokio_postgres::Error) -> Error {
    Error::Unavailable(describe(&e))
}

/// The error with its database detail (tokio-postgres' `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => Error::Unavailable(other.to_string()),
    }
}

/// Whether the transaction may simply be run again: a serialization failure or a deadlock (the database rolled
/// it back whole).
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
        || e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}

/// The final write of one key in a group.
#[derive(Debug, Clone, PartialEq)]
enum Final {
    Put(Vec<u8>),
    Delete,
    /// Only additions, summed: added to the stored counter in the transaction.
    Add(i64),
}

/// A group's writes, collapsed to the last per key, by table.
#[derive(Debug, Default)]
struct Collapsed {
    writes: BTreeMap<(Table, Vec<u8>), Final>,
}

fn collapse(batches: &[Batch]) -> Result<Collapsed, Error> {
    let mut c = Collapsed::default();
    for op in batches.iter().flat_map(|b| b.ops.iter()) {
        match op {
            Op::Put { table, key, value } => {
                c.writes.insert((*table, key.clone()), Final::Put(value.clone()));
            }
            Op::Delete { table, key } => {
                c.writes.insert((*table, key.clone()), Final::Delete);
            }
            Op::Add { table, key, delta } => {
                let next = match c.writes.get(&(*table, key.clone())) {
                    None => Final::Add(*delta),
                    Some(Final::Add(d)) => Final::Add(d.checked_add(*delta).ok_or_else(|| overflow(key, *delta))?),
                    Some(Final::Delete) => Final::Put(delta.to_be_bytes().to_vec()),
                    Some(Final::Put(v)) => {
                        let n = counter_value(Some(v))?.checked_add(*delta).ok_or_else(|| overflow(key, *delta))?;
                        Final::Put(n.to_be_bytes().to_vec())
                    }
                };
                c.writes.insert((*table, key.clone()), next);
            }
        }
    }
    Ok(c)
}

fn overflow(key: &[u8], delta: i64) -> Error {
    Error::Corrupt {
        what: "counter".into(),
        detail: format!("adding {delta} to {:?} overflows", String::from_utf8_lossy(key)),
    }
}

/// The shard column of a row.
fn shard_column(table: Table, key: &[u8]) -> i16 {
    shard::of_row(table, key).map(|s| s as i16).unwrap_or(-1)
}

/// The SQL of a scan with these bounds.
fn scan_sql(table: Table, start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>, reverse: bool, by_shard: bool) -> String {
    let mut conds = Vec::new();
    let mut n = 0;
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    if by_shard {
        conds.push(format!("shard = ANY({}::int2[])", param()));
    }
    match start {
        Bound::Included(_) => conds.push(format!("key >= {}", param())),
        Bound::Excluded(_) => conds.push(format!("key > {}", param())),
        Bound::Unbounded => {}
    }
    match end {
        Bound::Included(_) => conds.push(format!("key <= {}", param())),
        Bound::Excluded(_) => conds.push(format!("key < {}", param())),
        Bound::Unbounded => {}
    }
    let limit = param();
    let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    format!(
        "SELECT key, value FROM {}{filter} ORDER BY key {} LIMIT {limit}",
        table_name(table),
        if reverse { "DESC" } else { "ASC" }
    )
}

impl PostgresStore {
    /// Connects, runs the migrations (under an advisory lock, so that nodes starting together take turns), and
    /// checks that a query answers. Blocking: call it from start-up, off the actix threads (or before them).
    pub fn connect(options: Options) -> Result<Arc<Self>, Error> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|e| Error::Backend(format!("MARKETFLOW_DATABASE_URL: {e}")))?;
        config.options(options.session_options());
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.application_name(format!("marketflow {}", options.node));
        // One thread drives every connection: they wait on the network, and each thread more is one more to wake
        // and switch to on every query (three nodes sharing two cores spent a third of their time switching).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("marketflow-pg")
            .enable_all()
            .build()
            .map_err(Error::Io)?;
        let handle = rt.handle().clone();
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let timeout = Some(options.lease.max(Duration::from_secs(2)));
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.pool.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| Error::Backend(e.to_string()))?;
        let store = Arc::new(Self {
            rt: Mutex::new(Some(rt)),
            handle,
            pool,
            config,
            options,
            writer: tokio::sync::Mutex::new(None),
            closed: Default::default(),
        });
        store.block(async {
            migrations::run(&store).await?;
            // The node's row exists before its first commit (a commit of no entity locks it).
            let c = Self::connect_one(&store.config).await?;
            c.execute(
                "INSERT INTO mf_nodes (node, url, heartbeat, started_at, state) VALUES ($1, '', now(), now(), 'starting') \
                 ON CONFLICT (node) DO UPDATE SET heartbeat = now(), state = 'starting'",
                &[&store.options.node],
            )
            .await
            .map_err(pg)?;
            Ok::<_, Error>(())
        })?;
        Ok(store)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.options.node
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Waits for `f` on this thread, inside this store's runtime (its connections, timers and spawned tasks are
    /// there): for start-up, the committer's thread and the command-line tools, never for an actix thread.
    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        let _inside = self.handle.enter();
        super::wait(f)
    }

    /// Runs `f` on this store's runtime and answers when it is done, on whatever runtime asked.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Read<Result<T, Error>> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Read::ready(Err(Error::Closed));
        }
        let h = self.handle.spawn(f);
        Read::later(async move { h.await.map_err(|e| Error::Backend(format!("a database task failed: {e}")))? })
    }

    /// A pooled connection (for the modules beside this one).
    pub(crate) async fn conn(pool: &deadpool_postgres::Pool) -> Result<deadpool_postgres::Object, Error> {
        pool.get().await.map_err(pool_error)
    }

    /// A new connection of our own (not from the pool), driven on this store's runtime.
    pub(crate) async fn connect_one(config: &tokio_postgres::Config) -> Result<Client, Error> {
        let (client, connection) = config.connect(NoTls).await.map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a database connection ended");
            }
        });
        Ok(client)
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// One group, as one transaction; see the module's doc.
    async fn write_group(&self, batches: &[Batch]) -> Result<(), Error> {
        // Keys that must be new: the ones taken already, or created twice in the group, are refused before the
        // transaction (and `ON CONFLICT DO NOTHING` in it catches another node creating one meanwhile).
        if batches.iter().any(|b| !b.new_keys.is_empty()) {
            let mut asked: BTreeMap<Table, Vec<Vec<u8>>> = BTreeMap::new();
            for (t, k) in batches.iter().flat_map(|b| b.new_keys.iter()) {
                asked.entry(*t).or_default().push(k.clone());
            }
            let mut existing: BTreeSet<(Table, Vec<u8>)> = BTreeSet::new();
            let c = Self::conn(&self.pool).await?;
            for (t, keys) in asked {
                let sql = format!("SELECT key FROM {} WHERE key = ANY($1::bytea[])", table_name(t));
                for r in c.query(&sql, &[&keys]).await.map_err(pg)? {
                    existing.insert((t, r.get(0)));
                }
            }
            let refused = super::conflicts(batches, |t, k| Ok(existing.contains(&(t, k.to_vec()))))?;
            if !refused.is_empty() {
                return Err(Error::Conflict { batches: refused });
            }
        }
        let collapsed = collapse(batches)?;
        let mut fences: BTreeMap<Shard, BTreeSet<i64>> = BTreeMap::new();
        for f in batches.iter().filter_map(|b| b.fence) {
            fences.entry(f.shard).or_default().insert(f.epoch);
        }
        // Keys that must be new, inserted `ON CONFLICT DO NOTHING`; but not one the group deletes first (it exists
        // until the group's delete, which the check above counted).
        let deleted: BTreeSet<(Table, &[u8])> = batches
            .iter()
            .flat_map(|b| b.ops.iter())
            .filter_map(|op| match op {
                Op::Delete { table, key } => Some((*table, key.as_slice())),
                _ => None,
            })
            .collect();
        let new_keys: BTreeSet<(Table, Vec<u8>)> = batches
            .iter()
            .flat_map(|b| b.new_keys.iter().cloned())
            .filter(|(t, k)| !deleted.contains(&(*t, k.as_slice())))
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let commit_id: i64 = rand::random::<i64>() & i64::MAX;
            let mut guard = self.writer.lock().await;
            if guard.is_none() {
                let mut config = self.config.clone();
                config.application_name(format!("marketflow {} writer", self.options.node));
                let client = Self::connect_one(&config).await?;
                *guard = Some(Writer { client, statements: HashMap::new() });
            }
            let Some(writer) = guard.as_mut() else { return Err(Error::Unavailable("no connection".into())) };
            let outcome = self.transaction(writer, &collapsed, &fences, &new_keys, batches, commit_id).await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Retry(e)) if attempt < 5 => {
                    tracing::debug!(error = %describe(&e), attempt, "a group commit is run again");
                    continue;
                }
                Err(Failure::Retry(e)) => return Err(pg(e)),
                Err(Failure::Before(e)) => {
                    // COMMIT was never sent: the transaction cannot have committed.
                    if writer.client.is_closed() {
                        *guard = None;
                    }
                    return Err(pg(e));
                }
                Err(Failure::AtCommit(e)) => {
                    *guard = None;
                    drop(guard);
                    tracing::warn!(error = %describe(&e), commit_id, "the answer to a COMMIT was lost; asking the commit log");
                    // The rows the transaction locked: its shards' (fenced), else this node's.
                    let locked = if self.options.fencing { fences.keys().copied().collect() } else { vec![] };
                    return match self.resolve(commit_id, locked).await {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            Err(Error::Unavailable(format!("the connection broke at COMMIT: {}", describe(&e))))
                        }
                        Err(err) => Err(err),
                    };
                }
            }
        }
    }

    async fn transaction(
        &self,
        w: &mut Writer,
        collapsed: &Collapsed,
        fences: &BTreeMap<Shard, BTreeSet<i64>>,
        new_keys: &BTreeSet<(Table, Vec<u8>)>,
        batches: &[Batch],
        commit_id: i64,
    ) -> Result<(), Failure> {
        let lock_shards = w.statement(leases::LOCK_SHARDS).await.map_err(Failure::Before)?;
        let lock_node = w.statement(leases::LOCK_NODE).await.map_err(Failure::Before)?;
        // Statements first (each prepared once per connection), then the transaction, pipelined.
        let mut counter_reads: Vec<(Table, Vec<Vec<u8>>, Statement)> = Vec::new();
        let mut by_table: BTreeMap<Table, TableWrites> = BTreeMap::new();
        for ((table, key), f) in &collapsed.writes {
            let tw = by_table.entry(*table).or_default();
            let s = shard_column(*table, key);
            match f {
                Final::Put(v) if new_keys.contains(&(*table, key.clone())) => {
                    tw.insert.push((key.clone(), s, v.clone()))
                }
                Final::Put(v) => tw.put.push((key.clone(), s, v.clone())),
                Final::Delete => tw.delete.push(key.clone()),
                Final::Add(d) => tw.add.push((key.clone(), s, *d)),
            }
        }
        for (table, tw) in &by_table {
            if !tw.add.is_empty() {
                let sql = format!(
                    "SELECT key, value FROM {} WHERE key = ANY($1::bytea[]) ORDER BY key FOR UPDATE",
                    table_name(*table)
                );
                let st = w.statement(&sql).await.map_err(Failure::Before)?;
                counter_reads.push((*table, tw.add.iter().map(|(k, _, _)| k.clone()).collect(), st));
            }
        }
        let mut statements = Vec::new();
        for (table, tw) in &by_table {
            let name = table_name(*table);
            statements.push((
                w.statement(&format!(
                    "INSERT INTO {name} (key, shard, value) SELECT * FROM unnest($1::bytea[], $2::int2[], $3::bytea[]) \
                     ON CONFLICT (key) DO NOTHING RETURNING key"
                ))
                .await
                .map_err(Failure::Before)?,
                w.statement(&format!(
                    "INSERT INTO {name} (key, shard, value) SELECT * FROM unnest($1::bytea[], $2::int2[], $3::bytea[]) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ))
                .await
                .map_err(Failure::Before)?,
                w.statement(&format!("DELETE FROM {name} WHERE key = ANY($1::bytea[])"))
                    .await
                    .map_err(Failure::Before)?,
                tw,
            ));
        }
        let log = w.statement(leases::LOG_COMMIT).await.map_err(Failure::Before)?;
        let node = self.options.node.clone();

        let fenced_group = !fences.is_empty();
        // A pausepoint's file names bytes the aimed commit writes (see `failpoint::pause_when`).
        let aimed = |needle: &[u8]| {
            by_table
                .values()
                .any(|tw| tw.put.iter().chain(&tw.insert).any(|(_, _, v)| v.windows(needle.len()).any(|w| w == needle)))
        };
        if fenced_group {
            crate::failpoint::pause_when("pg_before_begin", aimed);
        }
        let client = &w.client;
        let shard_list: Vec<i16> = fences.keys().map(|s| *s as i16).collect();
        let lock_shard_rows = !shard_list.is_empty() && self.options.fencing;
        let mut insert_rows = Vec::new();
        let mut put_rows = Vec::new();
        let mut delete_rows = Vec::new();
        for (insert, upsert, delete, tw) in &statements {
            if !tw.insert.is_empty() {
                insert_rows.push((insert, *tw, columns(&tw.insert)));
            }
            if !tw.put.is_empty() {
                put_rows.push((upsert, columns(&tw.put)));
            }
            if !tw.delete.is_empty() {
                delete_rows.push((delete, tw.delete.clone()));
            }
        }
        // Two flights, a round trip each, instead of one per statement: the server runs a flight's statements in
        // the order they were sent. The first: BEGIN, the locks (shard rows, then counters by key: one order, so
        // that two nodes never deadlock), the keys that must be new, the puts, the deletes and the commit-log row.
        // Nothing is kept until it is checked: a lease that moved on or a key taken rolls it all back.
        let split = fenced_group && crate::failpoint::pausepoint_set("pg_before_lock");
        if split {
            // The fencing test stops the node with its transaction open and no lock taken: BEGIN on its own.
            client.batch_execute("BEGIN").await.map_err(Failure::Before)?;
            crate::failpoint::pause_when("pg_before_lock", aimed);
        }
        let begin = async {
            if split {
                Ok(())
            } else {
                client.batch_execute("BEGIN").await
            }
        };
        let locked = async {
            if lock_shard_rows {
                client.query(&lock_shards, &[&shard_list]).await
            } else {
                // Something the resolution of a lost COMMIT answer can wait on (see `leases::committed`).
                client.query(&lock_node, &[&node]).await.map(|_| vec![])
            }
        };
        let counted = futures_util::future::try_join_all(
            counter_reads.iter().map(|(_, keys, st)| async move { client.query(st, &[keys]).await }),
        );
        let inserted = futures_util::future::try_join_all(
            insert_rows
                .iter()
                .map(|(st, tw, (k, s, v))| async move { client.query(*st, &[k, s, v]).await.map(|rows| (*tw, rows)) }),
        );
        let put = futures_util::future::try_join_all(
            put_rows.iter().map(|(st, (k, s, v))| async move { client.execute(*st, &[k, s, v]).await }),
        );
        let deleted = futures_util::future::try_join_all(
            delete_rows.iter().map(|(st, keys)| async move { client.execute(*st, &[keys]).await }),
        );
        let logged = async { client.execute(&log, &[&commit_id, &node]).await };
        let (began, locked, counted, inserted, written) =
            futures_util::future::join5(begin, locked, counted, inserted, async {
                futures_util::future::try_join3(put, deleted, logged).await
            })
            .await;
        let flight = (|| {
            began?;
            Ok::<_, tokio_postgres::Error>((locked?, counted?, inserted?, written?))
        })();
        let (locked, counted, inserted, _) = match flight {
            Ok(f) => f,
            Err(e) => {
                // The transaction is aborted (or the connection gone): end it, nothing was written.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(classify_before(e));
            }
        };
        if fenced_group {
            crate::failpoint::pause_when("pg_after_lock", aimed);
        }
        let mut lost = Vec::new();
        for row in &locked {
            let shard: i16 = row.get(0);
            let owner: Option<String> = row.get(1);
            let epoch: i64 = row.get(2);
            let expected = fences.get(&(shard as Shard));
            let ours = owner.as_deref() == Some(self.options.node.as_str());
            if !ours || expected.is_none_or(|e| e.iter().any(|x| *x != epoch)) {
                lost.push(shard as Shard);
            }
        }
        if lock_shard_rows && locked.len() < shard_list.len() {
            for s in fences.keys() {
                if !locked.iter().any(|r| r.get::<_, i16>(0) as Shard == *s) {
                    lost.push(*s);
                }
            }
        }
        if !lost.is_empty() {
            let _ = client.batch_execute("ROLLBACK").await;
            lost.sort_unstable();
            lost.dedup();
            return Err(Failure::Refused(Error::Fenced { shards: lost }));
        }
        let mut taken: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (tw, rows) in &inserted {
            let got: BTreeSet<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
            taken.extend(tw.insert.iter().map(|(k, _, _)| k.clone()).filter(|k| !got.contains(k)));
        }
        if !taken.is_empty() {
            let _ = client.batch_execute("ROLLBACK").await;
            let refused = batches
                .iter()
                .enumerate()
                .filter(|(_, b)| b.new_keys.iter().any(|(_, k)| taken.contains(k)))
                .map(|(i, _)| i)
                .collect();
            return Err(Failure::Refused(Error::Conflict { batches: refused }));
        }
        // The second flight: the counters (the stored value, locked, plus the group's additions) and COMMIT.
        let mut counter_puts = Vec::new();
        for ((table, _, _), rows) in counter_reads.iter().zip(counted) {
            let stored: HashMap<Vec<u8>, Vec<u8>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut puts: Vec<Row> = vec![];
            for (key, s, delta) in &by_table[table].add {
                let n = match counter_value(stored.get(key).map(Vec::as_slice))
                    .and_then(|n| n.checked_add(*delta).ok_or_else(|| overflow(key, *delta)))
                {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(Failure::Refused(e));
                    }
                };
                puts.push((key.clone(), *s, n.to_be_bytes().to_vec()));
            }
            let upsert = statements.iter().find(|(_, _, _, tw)| std::ptr::eq(*tw, &by_table[table])).map(|s| &s.1);
            if let Some(upsert) = upsert {
                counter_puts.push((upsert, columns(&puts)));
            }
        }
        let counters = futures_util::future::try_join_all(
            counter_puts.iter().map(|(st, (k, s, v))| async move { client.execute(*st, &[k, s, v]).await }),
        );
        let (counters, committed) = futures_util::future::join(counters, client.batch_execute("COMMIT")).await;
        // COMMIT went out with the counters: whichever of the two failed first, what the server did with it is
        // known only from a statement's own error (the transaction aborted, COMMIT then rolled it back); a broken
        // connection or a session ended by the server leaves it unknown, to be asked of the commit log.
        counters.map_err(at_commit)?;
        committed.map_err(at_commit)
    }

    /// Whether the transaction that wrote `commit_id` committed: read on a new connection after locking the
    /// group's shard rows (or, for a group of no entity, this node's row), which waits until the old backend has
    /// finished or is gone. Asked again until the database answers: nobody is answered before.
    async fn resolve(&self, commit_id: i64, shards: Vec<Shard>) -> Result<bool, Error> {
        let mut wait = Duration::from_millis(50);
        let started = Instant::now();
        loop {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::Unavailable("closed while a COMMIT's outcome was unknown".into()));
            }
            match leases::committed(&self.config, &self.options.node, commit_id, &shards).await {
                Ok(found) => {
                    tracing::warn!(commit_id, committed = found, took = ?started.elapsed(), "a lost COMMIT answer resolved");
                    return Ok(found);
                }
                Err(e) => {
                    tracing::warn!(error = %e, commit_id, "resolving a lost COMMIT answer failed; asking again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// A row to write: key, shard column, value.
type Row = (Vec<u8>, i16, Vec<u8>);

/// A table's part of a group.
#[derive(Debug, Default)]
struct TableWrites {
    /// Keys that must be new: inserted `ON CONFLICT DO NOTHING`, and the group refused if one exists.
    insert: Vec<Row>,
    put: Vec<Row>,
    delete: Vec<Vec<u8>>,
    add: Vec<(Vec<u8>, i16, i64)>,
}

/// The three columns of rows, for `unnest`.
fn columns(rows: &[Row]) -> (Vec<Vec<u8>>, Vec<i16>, Vec<Vec<u8>>) {
    let mut k = Vec::with_capacity(rows.len());
    let mut s = Vec::with_capacity(rows.len());
    let mut v = Vec::with_capacity(rows.len());
    for (key, shard, value) in rows {
        k.push(key.clone());
        s.push(*shard);
        v.push(value.clone());
    }
    (k, s, v)
}

/// How a transaction ended without committing.
enum Failure {
    /// Refused on purpose (fenced, a key taken, a corrupt counter): rolled back, nothing written.
    Refused(Error),
    /// Rolled back by the database (serialization, deadlock): the same group may be run again.
    Retry(tokio_postgres::Error),
    /// Failed before COMMIT was sent: nothing can have been written.
    Before(tokio_postgres::Error),
    /// The answer to COMMIT was lost: it may or may not have committed.
    AtCommit(tokio_postgres::Error),
}

/// A failure of the flight that carries COMMIT. An `ERROR` answer is the server saying it rolled back; a `FATAL`
/// one (an immediate shutdown, a session timeout) ends the session whatever point the COMMIT had reached, and a
/// lost connection says nothing: both are resolved by the commit log. Taking either as "not committed" answered
/// callers that their input failed when it had been kept, and the actor that read the entity again at once could
/// read it from before the COMMIT landed and its input's record from after (the PostgreSQL fault test found it).
fn at_commit(e: tokio_postgres::Error) -> Failure {
    use tokio_postgres::error::Severity;
    match e.as_db_error().and_then(|d| d.parsed_severity()) {
        Some(Severity::Error) => classify_before(e),
        _ => Failure::AtCommit(e),
    }
}

fn classify_before(e: tokio_postgres::Error) -> Failure {
    if retryable(&e) {
        Failure::Retry(e)
    } else {
        Failure::Before(e)
    }
}

/// Reads rows of `table` in order (of `shards` only, if given).
async fn scan(
    pool: &deadpool_postgres::Pool,
    table: Table,
    shards: Option<Vec<Shard>>,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    limit: usize,
    reverse: bool,
) -> Result<KvPairs, Error> {
    if limit == 0 {
        return Ok(vec![]);
    }
    let sql = scan_sql(table, &start, &end, reverse, shards.is_some());
    let c = PostgresStore::conn(pool).await?;
    let st = c.prepare_cached(&sql).await.map_err(pg)?;
    let shard_list: Option<Vec<i16>> = shards.map(|s| s.into_iter().map(|x| x as i16).collect());
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    if let Some(s) = &shard_list {
        params.push(s);
    }
    if let Bound::Included(k) | Bound::Excluded(k) = &start {
        params.push(k);
    }
    if let Bound::Included(k) | Bound::Excluded(k) = &end {
        params.push(k);
    }
    params.push(&limit);
    let rows = c.query(&st, &params).await.map_err(pg)?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

impl Store for PostgresStore {
    fn get(&self, table: Table, key: &[u8]) -> Read<Result<Option<Vec<u8>>, Error>> {
        let pool = self.pool.clone();
        let key = key.to_vec();
        self.spawn(async move {
            let c = PostgresStore::conn(&pool).await?;
            let st = c
                .prepare_cached(&format!("SELECT value FROM {} WHERE key = $1", table_name(table)))
                .await
                .map_err(pg)?;
            let row = c.query_opt(&st, &[&key]).await.map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Read<Result<KvPairs, Error>> {
        let pool = self.pool.clone();
        self.spawn(async move { scan(&pool, table, None, start, end, limit, reverse).await })
    }

    /// With the `(shard, key)` index of the work tables.
    fn scan_shards(
        &self,
        table: Table,
        shards: &[Shard],
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
    ) -> Read<Result<KvPairs, Error>> {
        let pool = self.pool.clone();
        let shards = shards.to_vec();
        self.spawn(async move { scan(&pool, table, Some(shards), start, end, limit, false).await })
    }

    fn size_bytes(&self) -> Read<Result<u64, Error>> {
        let pool = self.pool.clone();
        self.spawn(async move {
            let c = PostgresStore::conn(&pool).await?;
            let row = c.query_one("SELECT pg_database_size(current_database())", &[]).await.map_err(pg)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Read<Result<u64, Error>> {
        let pool = self.pool.clone();
        let start = prefix.to_vec();
        let end = super::prefix_end(prefix);
        self.spawn(async move {
            let c = PostgresStore::conn(&pool).await?;
            let name = table_name(table);
            let row = match end {
                Bound::Excluded(end) => {
                    let st = c
                        .prepare_cached(&format!("SELECT count(*) FROM {name} WHERE key >= $1 AND key < $2"))
                        .await
                        .map_err(pg)?;
                    c.query_one(&st, &[&start, &end]).await
                }
                _ => {
                    let st =
                        c.prepare_cached(&format!("SELECT count(*) FROM {name} WHERE key >= $1")).await.map_err(pg)?;
                    c.query_one(&st, &[&start]).await
                }
            }
            .map_err(pg)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    /// On the committer's thread: the whole group as one transaction, committed (durable, `synchronous_commit`)
    /// before this returns.
    fn write(&self, batches: &[Batch]) -> Result<(), Error> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if batches.iter().all(|b| b.ops.is_empty()) {
            return Ok(());
        }
        self.block(self.write_group(batches))
    }

    /// One `REPEATABLE READ` transaction: a snapshot of the database while every node goes on writing. Rows are read
    /// a page at a time, in key order.
    fn snapshot(&self, f: &mut RowSink<'_>) -> Result<(), Error> {
        let (tx_rows, mut rx) = tokio::sync::mpsc::channel::<Result<(Table, Vec<u8>, Vec<u8>), Error>>(1024);
        let config = self.config.clone();
        let reader = self.handle.spawn(async move {
            let read = async {
                let mut client = PostgresStore::connect_one(&config).await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg)?;
                for table in super::dump::tables() {
                    let name = table_name(table);
                    let first = format!("SELECT key, value FROM {name} ORDER BY key LIMIT 5000");
                    let next = format!("SELECT key, value FROM {name} WHERE key > $1 ORDER BY key LIMIT 5000");
                    let mut after: Option<Vec<u8>> = None;
                    loop {
                        let rows = match &after {
                            None => tx.query(&first, &[]).await,
                            Some(k) => tx.query(&next, &[k]).await,
                        }
                        .map_err(pg)?;
                        let n = rows.len();
                        for r in rows {
                            let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
                            after = Some(k.clone());
                            if tx_rows.send(Ok((table, k, v))).await.is_err() {
                                return Ok(());
                            }
                        }
                        if n < 5000 {
                            break;
                        }
                    }
                }
                tx.commit().await.map_err(pg)
            };
            if let Err(e) = read.await {
                let _ = tx_rows.send(Err(e)).await;
            }
        });
        while let Some(row) = super::wait(rx.recv()) {
            let (table, k, v) = row?;
            f(table, &k, &v)?;
        }
        super::wait(reader).map_err(|e| Error::Backend(format!("the snapshot's reader: {e}")))
    }

    /// Every write was committed by [`Store::write`].
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// PostgreSQL takes up to 1 GB in a `bytea`; the engine's rows stay far smaller, and sled's limit keeps a data
    /// directory exported from sled importable and back.
    fn max_value_bytes(&self) -> usize {
        super::sled_store::MAX_VALUE_BYTES
    }

    fn close(&self) -> Result<(), Error> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        self.pool.close();
        if let Some(rt) = self.rt.lock().ok().and_then(|mut g| g.take()) {
            rt.shutdown_background();
        }
        Ok(())
    }

    fn fail_stop(&self) -> bool {
        false
    }

    /// A transaction costs PostgreSQL about a millisecond of CPU of its own (the statements' set-up, the commit),
    /// beside its rows': a group of five paid twice as much per input as a group of thirty-five (BENCHMARKS.md).
    fn linger(&self) -> Duration {
        Duration::from_millis(2)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // A runtime dropped on an async thread would panic; shut it down without waiting instead.
        if let Some(rt) = self.rt.get_mut().ok().and_then(|g| g.take()) {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::contract_tests::{self, block};
    use crate::store::shard::Fence;

    pub fn server() -> &'static server::TempServer {
        server::shared().server()
    }

    /// A fresh, migrated database.
    pub fn database() -> String {
        server::shared().fresh().unwrap_or_else(|e| panic!("{e}"))
    }

    fn store(node: &str) -> Arc<PostgresStore> {
        PostgresStore::connect(Options::new(database(), node, Duration::from_secs(10))).unwrap()
    }

    #[test]
    fn postgres_store_keeps_the_store_contract() {
        let s = store("n1");
        contract_tests::roundtrip(&*s);
        contract_tests::counters(&*s);
        contract_tests::new_keys(&*s);
    }

    #[test]
    fn rows_carry_their_shard_and_scans_by_shard_see_only_those() {
        let s = store("n1");
        let mut b = Batch::new();
        for id in 0..50 {
            let mut k = 7u64.to_be_bytes().to_vec();
            k.extend_from_slice(format!("subscription\0{id}\0activation\0").as_bytes());
            b.put(Table::Timers, k, b"t".to_vec());
        }
        s.apply(&[b]).unwrap();
        let one = shard::of_entity("subscription", "3");
        let rows = block(s.scan_shards(Table::Timers, &[one], Bound::Unbounded, Bound::Unbounded, 100)).unwrap();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|(k, _)| shard::of_row(Table::Timers, k) == Some(one)));
        let all: Vec<Shard> = (0..shard::SHARDS).collect();
        assert_eq!(
            block(s.scan_shards(Table::Timers, &all, Bound::Unbounded, Bound::Unbounded, 100)).unwrap().len(),
            50
        );
    }

    #[test]
    fn a_commit_fenced_on_a_lease_that_moved_writes_nothing() {
        let url = database();
        let s = PostgresStore::connect(Options::new(url.clone(), "n1", Duration::from_secs(10))).unwrap();
        let db = url.rsplit('/').next().unwrap().to_string();
        server().psql(&db, "UPDATE mf_shards SET owner = 'n1', epoch = 5 WHERE shard IN (3, 4)").unwrap();
        let fenced = |shard, epoch, key: &[u8]| {
            let mut b = Batch::new();
            b.fence = Some(Fence { shard, epoch });
            b.put(Table::Entities, key.to_vec(), b"v".to_vec());
            b
        };
        s.apply(&[fenced(3, 5, b"ok")]).unwrap();
        match s.apply(&[fenced(3, 5, b"a"), fenced(4, 4, b"b"), Batch::new()]) {
            Err(Error::Fenced { shards }) => assert_eq!(shards, [4]),
            r => panic!("expected fenced, got {r:?}"),
        }
        assert_eq!(block(s.get(Table::Entities, b"a")).unwrap(), None, "nothing of the group");
        server().psql(&db, "UPDATE mf_shards SET owner = 'n2', epoch = 6 WHERE shard = 3").unwrap();
        assert!(matches!(s.apply(&[fenced(3, 5, b"c")]), Err(Error::Fenced { shards }) if shards == [3]));
        // With fencing off (the test-only switch), the same commit lands: the switch is what the check is.
        let mut off = Options::new(url, "n1", Duration::from_secs(10));
        off.fencing = false;
        let unfenced = PostgresStore::connect(off).unwrap();
        unfenced.apply(&[fenced(3, 5, b"c")]).unwrap();
        assert_eq!(block(s.get(Table::Entities, b"c")).unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_collapsed_group_writes_what_applying_each_op_in_order_would() {
        let s = store("n1");
        let mut a = Batch::new();
        a.put(Table::Meta, b"k".to_vec(), b"1".to_vec());
        a.delete(Table::Meta, b"k".to_vec());
        a.put(Table::Meta, b"j".to_vec(), b"x".to_vec());
        let mut b = Batch::new();
        b.put(Table::Meta, b"k".to_vec(), b"2".to_vec());
        b.delete(Table::Meta, b"j".to_vec());
        s.apply(&[a, b]).unwrap();
        assert_eq!(block(s.get(Table::Meta, b"k")).unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(block(s.get(Table::Meta, b"j")).unwrap(), None);
    }
}
