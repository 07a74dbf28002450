//! Several marketflow nodes on one PostgreSQL database: each node's lease loop, the hand-over of shards, and
//! forwarding to the node that holds an entity.
//!
//! The loop runs every fifth of a lease (`MARKETFLOW_LEASE`): it renews this node's leases (a shard missing from
//! the answer was taken by another node, and is dropped at once), beats the heartbeat, takes shards up to its fair
//! share (the shards nobody holds: released ones, or ended leases of silent nodes) and hands over what it holds
//! beyond that share (drained, then released), so that nodes that join share the load. A node whose renewals fail
//! (cut off from the database) stops starting external calls when its last renewal is older than four fifths of a
//! lease, drops every shard once a whole lease has passed, and after it reconnects renews first and takes nothing
//! for one lease: no stealing storm when a partition heals.
//!
//! On SIGTERM a node drains and releases every shard before it stops ([`Cluster::shutdown`]); the others take
//! them on their next round. Every time is the database's; see `store::postgres::leases`.

pub mod forward;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Secret;
use crate::engine::Engine;
use crate::store::postgres::leases::{ClusterRows, LeaseClient};
use crate::store::postgres::PostgresStore;
use crate::store::shard::{Shard, SHARDS};

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's unique name (`MARKETFLOW_NODE_ID`).
    pub node: String,
    /// The base URL other nodes reach this node at (`MARKETFLOW_NODE_URL`).
    pub url: String,
    /// The shard lease (`MARKETFLOW_LEASE`); renewed at a fifth of it.
    pub lease: Duration,
    /// The HMAC key of requests between nodes (`MARKETFLOW_CLUSTER_SECRET`).
    pub secret: Secret,
    /// How long a forwarded request may take, end to end.
    pub forward_timeout: Duration,
}

/// What a node is doing, as its heartbeat row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    Serving = 0,
    /// Handing its shards over before it stops: not counted in anyone's fair share.
    Draining = 1,
    Stopped = 2,
    /// Back after its renewals failed: renewing only, for one lease, and not counted in anyone's fair share
    /// meanwhile (so that nobody hands it shards it will not take yet).
    Rejoining = 3,
}

impl NodeState {
    fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
            NodeState::Stopped => "stopped",
            NodeState::Rejoining => "rejoining",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub renewals: AtomicU64,
    pub renewals_failed: AtomicU64,
    /// Inputs forwarded to another node, by that node.
    pub forwards: Mutex<BTreeMap<String, u64>>,
    /// Forwards that failed (the owner unreachable, a timeout).
    pub forward_errors: AtomicU64,
    /// Inputs other nodes forwarded here.
    pub forwarded_in: AtomicU64,
    /// Requests that carried forwarded inputs to other nodes (inputs per request: how well they batch).
    pub forward_requests: AtomicU64,
    /// `not_owner` answers: given to a forward for a shard this node no longer serves, or received from one.
    pub not_owner: AtomicU64,
    /// Shards nobody held a live lease on at the last look.
    pub unowned: AtomicU64,
    /// Shards handed over to other nodes (released after draining).
    pub handed_over: AtomicU64,
}

/// One node's part in the cluster.
pub struct Cluster {
    engine: Engine,
    leases: LeaseClient,
    pub config: ClusterConfig,
    /// Who holds each shard and where they are reached (refreshed every round and on a `not_owner`).
    owners: RwLock<Vec<Option<(String, String)>>>,
    state: AtomicU8,
    pub stats: ClusterStats,
    /// Wakes the loop early (shutdown).
    wake: tokio::sync::Notify,
    /// The loop has ended.
    ended: tokio::sync::Notify,
    running: std::sync::atomic::AtomicBool,
}

/// The cluster as `GET /api/v1/ops/cluster` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `postgres` (nodes sharing a database, with leases) or `sled` (one node holding every shard).
    pub mode: String,
    /// The node that answered.
    pub node: String,
    /// The lease length in seconds.
    pub lease_seconds: f64,
    /// Nodes, shards and the database's time.
    #[serde(flatten)]
    pub rows: ClusterRows,
    /// Shards held by each node (with a lease that has not ended).
    pub shards_by_node: BTreeMap<String, u32>,
    /// Shards nobody holds a live lease on.
    pub unowned: u32,
}

impl ClusterView {
    /// One node on sled: every shard, no lease, no epoch but 0.
    pub fn alone(
        node: &str,
        url: &str,
        now: chrono::DateTime<chrono::Utc>,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        use crate::store::postgres::leases::{NodeRow, ShardRow};
        let rows = ClusterRows {
            now,
            nodes: vec![NodeRow {
                node: node.into(),
                url: url.into(),
                heartbeat: now,
                started_at: started,
                state: NodeState::Serving.as_str().into(),
            }],
            shards: (0..SHARDS)
                .map(|shard| ShardRow { shard, owner: Some(node.into()), epoch: 0, lease_until: None })
                .collect(),
        };
        Self {
            mode: "sled".into(),
            node: node.into(),
            lease_seconds: 0.0,
            rows,
            shards_by_node: [(node.to_string(), u32::from(SHARDS))].into_iter().collect(),
            unowned: 0,
        }
    }
}

impl Cluster {
    /// Joins the cluster: registers the node, takes back what this node's name still holds (with new epochs),
    /// installs forwarding in the engine and starts the lease loop. Must run inside an actix system.
    pub async fn start(
        engine: Engine,
        store: Arc<PostgresStore>,
        config: ClusterConfig,
    ) -> Result<Arc<Self>, crate::store::Error> {
        let leases = LeaseClient::new(store);
        let cluster = Arc::new(Self {
            engine: engine.clone(),
            leases,
            owners: RwLock::new(vec![None; SHARDS as usize]),
            state: AtomicU8::new(NodeState::Serving as u8),
            stats: ClusterStats::default(),
            wake: tokio::sync::Notify::new(),
            ended: tokio::sync::Notify::new(),
            running: std::sync::atomic::AtomicBool::new(true),
            config,
        });
        cluster.leases.register(&cluster.config.url, NodeState::Serving.as_str()).await?;
        let sent = Instant::now();
        let held = cluster.leases.reclaim(cluster.config.lease).await?;
        engine.ownership().renewed(sent);
        engine.gain(&held.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>());
        engine.set_forwarder(Arc::new(forward::Forwarder::new(cluster.clone())));
        cluster.refresh_owners().await;
        let c = cluster.clone();
        actix_rt::spawn(async move { c.run().await });
        tracing::info!(node = %cluster.config.node, url = %cluster.config.url, reclaimed = held.len(), "joined the cluster");
        Ok(cluster)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            0 => NodeState::Serving,
            1 => NodeState::Draining,
            3 => NodeState::Rejoining,
            _ => NodeState::Stopped,
        }
    }

    /// The owner of `shard` as last seen: node and URL.
    pub fn owner(&self, shard: Shard) -> Option<(String, String)> {
        self.owners.read().ok().and_then(|o| o.get(shard as usize).cloned().flatten())
    }

    /// Reads who holds which shard again (every round, and after a `not_owner` answer).
    pub async fn refresh_owners(&self) {
        match self.leases.owners().await {
            Ok(rows) => {
                let mut table = vec![None; SHARDS as usize];
                for (shard, node, url) in rows {
                    if let Some(slot) = table.get_mut(shard as usize) {
                        *slot = Some((node, url));
                    }
                }
                let unowned = table.iter().filter(|o| o.is_none()).count() as u64;
                self.stats.unowned.store(unowned, Ordering::Relaxed);
                if let Ok(mut o) = self.owners.write() {
                    *o = table;
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the shard owners failed"),
        }
    }

    async fn run(self: Arc<Self>) {
        let lease = self.config.lease;
        let round = lease / 5;
        let ownership = self.engine.ownership();
        // Taking shards waits until then: after an outage, one lease of renewing only.
        let mut quiet_until = Instant::now();
        let mut failing = false;
        let mut rounds: u64 = 0;
        while self.running.load(Ordering::Acquire) {
            tokio::select! {
                _ = tokio::time::sleep(round) => {}
                _ = self.wake.notified() => {}
            }
            if !self.running.load(Ordering::Acquire) {
                break;
            }
            rounds += 1;
            let sent = Instant::now();
            match self.leases.renew(lease).await {
                Ok(held) => {
                    self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    ownership.renewed(sent);
                    let still: Vec<Shard> = held.iter().map(|l| l.shard).collect();
                    let lost: Vec<Shard> = ownership.held().into_iter().filter(|s| !still.contains(s)).collect();
                    if !lost.is_empty() {
                        tracing::warn!(shards = ?lost, "leases taken by another node");
                        self.engine.lose(&lost);
                    }
                    self.engine.gain(&held.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>());
                    if failing {
                        failing = false;
                        quiet_until = Instant::now() + lease;
                        let _ = self.state.compare_exchange(
                            NodeState::Serving as u8,
                            NodeState::Rejoining as u8,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        tracing::info!("renewals work again; taking no shard for one lease");
                    } else if Instant::now() >= quiet_until {
                        let _ = self.state.compare_exchange(
                            NodeState::Rejoining as u8,
                            NodeState::Serving as u8,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                }
                Err(e) => {
                    self.stats.renewals_failed.fetch_add(1, Ordering::Relaxed);
                    failing = true;
                    tracing::warn!(error = %e, "renewing the leases failed");
                    if ownership.since_renewal() >= lease {
                        // Every lease has ended by now: another node may hold any of them.
                        let all = ownership.held();
                        if !all.is_empty() {
                            tracing::error!(shards = all.len(), "no renewal for a whole lease; dropping every shard");
                            self.engine.lose(&all);
                        }
                    }
                    continue;
                }
            }
            let state = self.state();
            if let Err(e) = self.leases.heartbeat(state.as_str()).await {
                tracing::warn!(error = %e, "the heartbeat failed");
            }
            if state == NodeState::Serving && Instant::now() >= quiet_until {
                self.balance().await;
            }
            self.refresh_owners().await;
            if rounds % 50 == 0 {
                if let Err(e) = self.leases.trim_commit_log(Duration::from_secs(600)).await {
                    tracing::debug!(error = %e, "trimming the commit log failed");
                }
            }
        }
        self.ended.notify_waiters();
    }

    /// Takes shards up to this node's fair share, or hands over what it holds beyond it.
    async fn balance(&self) {
        let lease = self.config.lease;
        let ownership = self.engine.ownership();
        let target = match self.leases.fair_share(lease).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "counting the nodes failed");
                return;
            }
        };
        let held = ownership.held();
        if held.len() < target {
            let sent = Instant::now();
            match self.leases.acquire(target - held.len(), lease).await {
                Ok(got) if !got.is_empty() => {
                    ownership.renewed(sent);
                    tracing::info!(shards = got.len(), "shards taken");
                    self.engine.gain(&got.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "taking shards failed"),
            }
        } else if held.len() > target {
            // Hand over from the top, a slice per round, so that a joining node takes its share without a storm.
            let surplus: Vec<Shard> = held.iter().rev().take((held.len() - target).min(32)).copied().collect();
            self.hand_over(surplus).await;
        }
    }

    /// Drains shards and releases their leases.
    async fn hand_over(&self, shards: Vec<Shard>) {
        if shards.is_empty() {
            return;
        }
        self.engine.drain(&shards, self.config.lease / 2).await;
        match self.leases.release(shards.clone()).await {
            Ok(()) => {
                self.stats.handed_over.fetch_add(shards.len() as u64, Ordering::Relaxed);
                tracing::info!(shards = shards.len(), "shards handed over");
            }
            // Not released: they end with the lease, and a silent node's are taken then.
            Err(e) => tracing::warn!(error = %e, "releasing shards failed; they end with their lease"),
        }
    }

    /// Hands every shard over and leaves (SIGTERM): drained, released, the loop stopped, the node marked stopped.
    pub async fn shutdown(&self) {
        let before = self.state.swap(NodeState::Draining as u8, Ordering::AcqRel);
        if before != NodeState::Serving as u8 && before != NodeState::Rejoining as u8 {
            return;
        }
        let _ = self.leases.heartbeat(NodeState::Draining.as_str()).await;
        let held = self.engine.ownership().held();
        tracing::info!(shards = held.len(), "handing every shard over before stopping");
        self.hand_over(held).await;
        self.running.store(false, Ordering::Release);
        let ended = self.ended.notified();
        self.wake.notify_waiters();
        let _ = tokio::time::timeout(self.config.lease, ended).await;
        self.state.store(NodeState::Stopped as u8, Ordering::Release);
        let _ = self.leases.heartbeat(NodeState::Stopped.as_str()).await;
    }

    /// Nodes, shards, epochs and leases.
    pub async fn view(&self) -> Result<ClusterView, crate::store::Error> {
        let rows = self.leases.view().await?;
        let mut shards_by_node = BTreeMap::new();
        let mut unowned = 0;
        for s in &rows.shards {
            match (&s.owner, s.lease_until) {
                (Some(o), Some(until)) if until > rows.now => *shards_by_node.entry(o.clone()).or_insert(0) += 1,
                _ => unowned += 1,
            }
        }
        Ok(ClusterView {
            mode: "postgres".into(),
            node: self.config.node.clone(),
            lease_seconds: self.config.lease.as_secs_f64(),
            rows,
            shards_by_node,
            unowned,
        })
    }
}
