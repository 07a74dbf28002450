//! Nodes, shard leases and the commit log, in SQL. Every time is the database's (`now()`), never a node's clock:
//! two nodes whose clocks disagree still agree on who holds a lease.
//!
//! A lease is a row of `mf_shards`: its owner, an epoch that grows by one at every change of owner, and when it
//! ends. The owner renews it at a fifth of its length; another node takes it only when it has ended and its owner's
//! heartbeat in `mf_nodes` is older than a lease (a silent node), or when it was released (a node shutting down or
//! handing over its surplus). Every commit locks the rows of its shards and checks owner and epoch
//! ([`LOCK_SHARDS`]), so a node whose lease moved on can never write again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{pg, PostgresStore};
use crate::store::shard::{Shard, SHARDS};
use crate::store::{Error, Read};

/// Locks a group's shard rows and reads owner and epoch (in the group's transaction, before it writes).
pub const LOCK_SHARDS: &str =
    "SELECT shard, owner, epoch FROM mf_shards WHERE shard = ANY($1::int2[]) ORDER BY shard FOR UPDATE";

/// Locks this node's row: what a group of no entity locks instead of shard rows, so that the resolution of a lost
/// COMMIT answer (which locks the same row) waits for the transaction to end.
pub const LOCK_NODE: &str = "SELECT node FROM mf_nodes WHERE node = $1 FOR UPDATE";

/// The commit's row in the log, written inside the group's transaction.
pub const LOG_COMMIT: &str = "INSERT INTO mf_commit_log (id, node) VALUES ($1, $2)";

/// Whether commit `id` is in the log, on a new connection, after locking the group's shard rows (or the node's
/// row): the transaction that wrote it has finished or is gone by then, so the answer is final.
pub(super) async fn committed(
    config: &tokio_postgres::Config,
    node: &str,
    id: i64,
    shards: &[Shard],
) -> Result<bool, Error> {
    let mut client = PostgresStore::connect_one(config).await?;
    let tx = client.transaction().await.map_err(pg)?;
    if shards.is_empty() {
        tx.query(LOCK_NODE, &[&node]).await.map_err(pg)?;
    } else {
        let list: Vec<i16> = shards.iter().map(|s| *s as i16).collect();
        tx.query(LOCK_SHARDS, &[&list]).await.map_err(pg)?;
    }
    let found = tx.query_opt("SELECT 1 FROM mf_commit_log WHERE id = $1", &[&id]).await.map_err(pg)?.is_some();
    tx.commit().await.map_err(pg)?;
    Ok(found)
}

/// A lease this node holds, as the database wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub shard: Shard,
    pub epoch: i64,
    /// When it ends, on the database's clock.
    pub until: DateTime<Utc>,
}

/// A shard held by a live lease: the shard, its owner, and the URL the owner is reached at.
pub type Owner = (Shard, String, String);

/// A node as the cluster sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeRow {
    pub node: String,
    pub url: String,
    pub heartbeat: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// `serving`, `draining` (handing its shards over before it stops) or `stopped`.
    pub state: String,
}

/// A shard's lease as the cluster sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShardRow {
    pub shard: u16,
    pub owner: Option<String>,
    pub epoch: i64,
    pub lease_until: Option<DateTime<Utc>>,
}

/// Everything about the cluster at one instant of the database's clock.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterRows {
    pub now: DateTime<Utc>,
    pub nodes: Vec<NodeRow>,
    pub shards: Vec<ShardRow>,
}

/// The lease statements of one node, on a connection of their own (a pool busy with reads must not make a renewal
/// late). Every call runs on the store's runtime and answers as a [`Read`].
pub struct LeaseClient {
    store: Arc<PostgresStore>,
    client: Arc<tokio::sync::Mutex<Option<Client>>>,
}

/// A duration in milliseconds, as the statements multiply `interval '1 millisecond'` by it.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn leases(rows: Vec<tokio_postgres::Row>) -> Vec<Lease> {
    rows.into_iter().map(|r| Lease { shard: r.get::<_, i16>(0) as Shard, epoch: r.get(1), until: r.get(2) }).collect()
}

impl LeaseClient {
    pub fn new(store: Arc<PostgresStore>) -> Self {
        Self { store, client: Arc::new(tokio::sync::Mutex::new(None)) }
    }

    /// The connection's settings: the store's, named apart (`application_name`), so that an operator reading
    /// `pg_stat_activity` tells the lease connection from the others.
    fn config(&self) -> tokio_postgres::Config {
        let mut c = self.store.config().clone();
        c.application_name(format!("marketflow {} leases", self.store.node()));
        c
    }

    /// Runs `f` with the connection (opened, or opened again after it broke).
    fn run<T, F>(&self, f: F) -> Read<Result<T, Error>>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Client) -> futures_util::future::BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        let slot = self.client.clone();
        let config = self.config();
        self.store.spawn(async move {
            let mut g = slot.lock().await;
            if g.as_ref().is_none_or(|c| c.is_closed()) {
                *g = Some(PostgresStore::connect_one(&config).await?);
            }
            let Some(c) = g.as_ref() else { return Err(Error::Unavailable("no connection".into())) };
            let r = f(c).await;
            if c.is_closed() {
                *g = None;
            }
            r.map_err(pg)
        })
    }

    /// Says this node is here (or here again, after a restart), with the URL other nodes forward to; answers the
    /// database's time.
    pub fn register(&self, url: &str, state: &str) -> Read<Result<DateTime<Utc>, Error>> {
        let (node, url, state) = (self.store.node().to_string(), url.to_string(), state.to_string());
        self.run(move |c| {
            Box::pin(async move {
                let r = c
                    .query_one(
                        "INSERT INTO mf_nodes (node, url, heartbeat, started_at, state) \
                         VALUES ($1, $2, now(), now(), $3) \
                         ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url, heartbeat = now(), \
                           started_at = now(), state = EXCLUDED.state \
                         RETURNING now()",
                        &[&node, &url, &state],
                    )
                    .await?;
                Ok(r.get(0))
            })
        })
    }

    /// The heartbeat (and the node's state: serving, draining, stopped).
    pub fn heartbeat(&self, state: &str) -> Read<Result<(), Error>> {
        let (node, state) = (self.store.node().to_string(), state.to_string());
        self.run(move |c| {
            Box::pin(async move {
                c.execute("UPDATE mf_nodes SET heartbeat = now(), state = $2 WHERE node = $1", &[&node, &state])
                    .await?;
                Ok(())
            })
        })
    }

    /// At start: the shards this node's name still holds from before a restart, taken again with a new epoch, so
    /// that nothing the previous process left in flight can commit.
    pub fn reclaim(&self, lease: Duration) -> Read<Result<Vec<Lease>, Error>> {
        let node = self.store.node().to_string();
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "UPDATE mf_shards SET epoch = epoch + 1, lease_until = now() + $2::float8 * interval '1 millisecond' \
                         WHERE owner = $1 RETURNING shard, epoch, lease_until",
                        &[&node, &millis(lease)],
                    )
                    .await?;
                Ok(leases(rows))
            })
        })
    }

    /// Extends every lease this node still holds; a shard missing from the answer was taken by another node.
    pub fn renew(&self, lease: Duration) -> Read<Result<Vec<Lease>, Error>> {
        let node = self.store.node().to_string();
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "UPDATE mf_shards SET lease_until = now() + $2::float8 * interval '1 millisecond' \
                         WHERE owner = $1 RETURNING shard, epoch, lease_until",
                        &[&node, &millis(lease)],
                    )
                    .await?;
                Ok(leases(rows))
            })
        })
    }

    /// Takes at most `n` shards that nobody holds: released ones, or ended leases of silent nodes (no heartbeat for
    /// a lease). A new owner means a new epoch.
    pub fn acquire(&self, n: usize, lease: Duration) -> Read<Result<Vec<Lease>, Error>> {
        let node = self.store.node().to_string();
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "UPDATE mf_shards SET owner = $1, epoch = epoch + 1, \
                           lease_until = now() + $2::float8 * interval '1 millisecond' \
                         WHERE shard IN ( \
                           SELECT shard FROM mf_shards \
                           WHERE owner IS NULL \
                              OR (owner <> $1 AND lease_until < now() AND owner NOT IN ( \
                                   SELECT node FROM mf_nodes WHERE heartbeat > now() - $2::float8 * interval '1 millisecond')) \
                           ORDER BY shard LIMIT $3 FOR UPDATE SKIP LOCKED) \
                         RETURNING shard, epoch, lease_until",
                        &[&node, &millis(lease), &n],
                    )
                    .await?;
                Ok(leases(rows))
            })
        })
    }

    /// Gives shards up (after this node drained them): anyone may take them at once.
    pub fn release(&self, shards: Vec<Shard>) -> Read<Result<(), Error>> {
        let node = self.store.node().to_string();
        self.run(move |c| {
            Box::pin(async move {
                let list: Vec<i16> = shards.iter().map(|s| *s as i16).collect();
                c.execute(
                    "UPDATE mf_shards SET owner = NULL, lease_until = NULL WHERE owner = $1 AND shard = ANY($2::int2[])",
                    &[&node, &list],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// How many nodes are serving (a heartbeat within a lease, not draining), and so this node's fair share of
    /// the shards.
    pub fn fair_share(&self, lease: Duration) -> Read<Result<usize, Error>> {
        self.run(move |c| {
            Box::pin(async move {
                let r = c
                    .query_one(
                        "SELECT count(*) FROM mf_nodes WHERE heartbeat > now() - $1::float8 * interval '1 millisecond' \
                         AND state = 'serving'",
                        &[&millis(lease)],
                    )
                    .await?;
                let live = r.get::<_, i64>(0).max(1) as usize;
                Ok((SHARDS as usize).div_ceil(live))
            })
        })
    }

    /// Who holds each shard with a lease that has not ended, and the URL to forward to.
    pub fn owners(&self) -> Read<Result<Vec<Owner>, Error>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT s.shard, s.owner, n.url FROM mf_shards s JOIN mf_nodes n ON n.node = s.owner \
                         WHERE s.lease_until > now()",
                        &[],
                    )
                    .await?;
                Ok(rows.into_iter().map(|r| (r.get::<_, i16>(0) as Shard, r.get(1), r.get(2))).collect())
            })
        })
    }

    /// Nodes and shards as they stand (for `/api/v1/ops/cluster`).
    pub fn view(&self) -> Read<Result<ClusterRows, Error>> {
        self.run(move |c| {
            Box::pin(async move {
                let now: DateTime<Utc> = c.query_one("SELECT now()", &[]).await?.get(0);
                let nodes = c
                    .query("SELECT node, url, heartbeat, started_at, state FROM mf_nodes ORDER BY node", &[])
                    .await?
                    .into_iter()
                    .map(|r| NodeRow {
                        node: r.get(0),
                        url: r.get(1),
                        heartbeat: r.get(2),
                        started_at: r.get(3),
                        state: r.get(4),
                    })
                    .collect();
                let shards = c
                    .query("SELECT shard, owner, epoch, lease_until FROM mf_shards ORDER BY shard", &[])
                    .await?
                    .into_iter()
                    .map(|r| ShardRow {
                        shard: r.get::<_, i16>(0) as u16,
                        owner: r.get(1),
                        epoch: r.get(2),
                        lease_until: r.get(3),
                    })
                    .collect();
                Ok(ClusterRows { now, nodes, shards })
            })
        })
    }

    /// Forgets this node's commit-log rows older than `keep` (a lost COMMIT answer is resolved within seconds).
    pub fn trim_commit_log(&self, keep: Duration) -> Read<Result<u64, Error>> {
        let node = self.store.node().to_string();
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM mf_commit_log WHERE node = $1 AND at < now() - $2::float8 * interval '1 millisecond'",
                    &[&node, &millis(keep)],
                )
                .await
            })
        })
    }
}
