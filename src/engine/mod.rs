//! The durable entity engine.
//!
//! Each entity (an organization, a subscription) is an actix actor, started on first use and stopped when idle;
//! its truth is in the store. An input is decided without I/O ([`step`]), everything the decision produced is
//! committed in one atomic, fsynced batch shared with other entities' commits ([`crate::store::Committer`]),
//! and only then acknowledged; after that the engine delivers messages and runs external calls, whose results
//! come back as inputs. Timers are rows indexed by due time; a firing is consumed by the commit it causes.

pub mod actor;
pub mod anchor;
pub mod attention;
pub mod audit;
pub mod by_state;
pub mod definition;
pub mod inspect;
pub mod model;
pub mod records;
pub mod registry;
pub mod request_id;
pub mod retention;
pub mod services;
pub mod shards;
pub mod step;
pub mod sweep;
pub mod telemetry;
pub mod workflow;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

pub use attention::{Cause as AttentionCause, Concern};
pub use definition::Definition;
pub use model::*;
pub use registry::{CallError, CallHandler, Registry, Ticket};
pub use workflow::{Cx, Effects, Reject, Signal, Workflow};

use crate::clock::Clock;
use crate::store::committer::{CommitConfig, CommitError};
use crate::store::{Committer, Store};

/// Why the engine could not process an input. Stable codes go to clients; the detail goes to logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("too many inputs in flight; try again shortly")]
    Overloaded,
    #[error("the engine is shutting down")]
    Stopped,
    #[error("storage: {0}")]
    Storage(String),
    #[error("unknown entity kind `{0}`")]
    UnknownKind(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    DefinitionMismatch(String),
    #[error("the entity is paused by an operator")]
    Paused,
    #[error("the workflow panicked: {0}")]
    Panicked(String),
    #[error("no such entity")]
    NotFound,
    #[error("internal: {0}")]
    Internal(String),
    /// The entity's shard is another node's (its lease moved while the input was decided, or no node holds it
    /// yet): nothing was changed; try again shortly (another node, or this one once it holds the lease).
    #[error("{0}")]
    NotOwner(String),
    /// A record this input creates exists already (a unique key taken); nothing was changed.
    #[error("a record this request creates exists already")]
    Conflict,
}

impl Error {
    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Overloaded => "overloaded",
            Error::Stopped => "shutting_down",
            Error::Storage(_) => "storage_unavailable",
            Error::UnknownKind(_) => "unknown_kind",
            Error::InvalidInput(_) => "invalid_input",
            Error::DefinitionMismatch(_) => "definition_mismatch",
            Error::Paused => "paused",
            Error::Panicked(_) => "internal_error",
            Error::NotFound => "not_found",
            Error::Internal(_) => "internal_error",
            Error::NotOwner(_) => "not_owner",
            Error::Conflict => "conflict",
        }
    }

    /// Whether the same input may succeed later without any change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Overloaded | Error::Paused | Error::Storage(_) | Error::NotOwner(_))
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Overloaded => Error::Overloaded,
            CommitError::Stopped => Error::Stopped,
            CommitError::Failed(e) => Error::Storage(e.to_string()),
            // A bug of the workflow (its record or a row grew too large), not of the store: not transient.
            CommitError::TooLarge(_) => Error::Internal(e.to_string()),
            CommitError::NotOwner(_) => Error::NotOwner(e.to_string()),
            CommitError::Conflict => Error::Conflict,
        }
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

/// Runs a read-heavy future off the threads that serve requests and run actors: sled answers reads on the asking
/// thread, so a scan of many records (a month of windows, a filtered listing) would hold those threads up. The
/// future runs on the blocking pool (a database's reads are awaited there without holding anyone up either).
pub async fn offload<F, T>(fut: F) -> Result<T, Error>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(fut))
        .await
        .map_err(|e| Error::Internal(format!("offloaded work: {e}")))
}

/// Where an input may be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To whichever node serves the entity's shard (forwarded if that is another node).
    Owner,
    /// Here only (a forwarded input, a timer, a call result): refused if this node does not serve the shard.
    Here,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Workflows(#[from] registry::Error),
    /// The store failed while the engine prepared it (counting a store of an earlier build by state).
    #[error("the engine cannot prepare the store: {0}")]
    Storage(crate::store::Error),
    /// Indexing the concerns of a store of an earlier build failed.
    #[error("the engine cannot index what needs attention: {0}")]
    Attention(String),
}

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Messages an actor's mailbox holds before senders wait.
    pub mailbox: usize,
    /// Inputs from clients in flight at once; beyond it clients get `overloaded` (HTTP 503 with Retry-After).
    pub max_inflight: usize,
    /// An actor with no input for this long stops; its entity lives on disk only.
    pub idle_timeout: Duration,
    /// Actor threads (arbiters); entities are spread over them by key.
    pub arbiters: usize,
    /// Timers fired per scan of the timers table.
    pub timer_batch: usize,
    /// Commits of the engine's own work (timers, call results and attempts, messages between entities) waiting
    /// for the committer at once. The committer serves its queue in order; a burst of thousands of timers queued
    /// there would make every client's commit wait behind all of them. Bounded, the burst goes as fast (the
    /// committer is its limit either way) while a client's commit joins the next group.
    pub background_commits: usize,
    /// Units of the engine's own work under way at once: timers firing, external calls other than batched pushes,
    /// messages being delivered. Each runs an entity's step on an actor thread; thousands queued there (every
    /// window of an hour due at once) would make a client's input wait behind them all.
    pub background_work: usize,
    pub commit: CommitConfig,
    /// `None`: this node is alone on its store and holds every shard. `Some(lease)`: it shares a database with
    /// other nodes and holds the shards its lease loop takes (`crate::cluster`), each for this long at a time.
    pub cluster_lease: Option<Duration>,
    /// Whose counters of entities by state this engine moves (`by_state::key`): the node's name in a cluster, so
    /// that nodes never wait for each other's counters; `""` alone.
    pub counter_writer: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mailbox: 256,
            max_inflight: 20_000,
            idle_timeout: Duration::from_secs(30),
            arbiters: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            timer_batch: 4_096,
            background_commits: 128,
            background_work: 128,
            commit: CommitConfig::default(),
            cluster_lease: None,
            counter_writer: String::new(),
        }
    }
}

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub inputs: AtomicU64,
    pub transitions: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
    pub repeated: AtomicU64,
    pub timers_fired: AtomicU64,
    /// Sum of the lateness of fired timers in service milliseconds.
    pub timer_lateness_ms: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub calls_started: AtomicU64,
    pub call_failures: AtomicU64,
    pub calls_needing_attention: AtomicU64,
    pub actors_started: AtomicU64,
    pub actors_stopped: AtomicU64,
    pub overloaded: AtomicU64,
    /// What workflows counted ([`Cx::count`]): (family, label) → transitions, durable ones only.
    pub marks: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), u64>>,
}

impl EngineStats {
    pub(crate) fn count_marks(&self, marks: &[(&'static str, String)]) {
        if marks.is_empty() {
            return;
        }
        let mut m = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        for (family, label) in marks {
            *m.entry((family, label.clone())).or_default() += 1;
        }
    }

    /// The counts of [`Cx::count`], in order.
    pub fn marks(&self) -> Vec<((&'static str, String), u64)> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

pub(crate) struct Inner {
    /// The store every record is read from; written only through `committer`.
    pub store: Arc<dyn Store>,
    /// The only write path: group commit with fsync.
    pub committer: Committer,
    /// Read access to the record tables ([`records`]), over `store`.
    pub records: records::Records,
    /// Service time; every due date is on it.
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    /// Live actors by entity; an entity has at most one live actor.
    pub directory: actor::Directory,
    pub config: EngineConfig,
    /// Permits for client inputs in flight (bounded queues, not unbounded memory).
    pub inflight: Arc<Semaphore>,
    /// Permits for the engine's own commits queued at the committer ([`EngineConfig::background_commits`]).
    pub background: Arc<Semaphore>,
    /// Permits for the engine's own work under way ([`EngineConfig::background_work`]).
    pub work: Arc<Semaphore>,
    /// When a client's input last arrived (milliseconds since `epoch`): the bounds on the engine's own work apply
    /// only while clients are there to wait behind it, so a backlog with nobody waiting goes at full speed.
    pub last_client_ms: AtomicU64,
    pub epoch: std::time::Instant,
    /// Wakes the timer loop when a sooner timer is set or the clock jumps.
    pub timer_wake: Arc<Notify>,
    pub stopping: AtomicBool,
    pub stats: EngineStats,
    pub services: services::Services,
    /// Histograms observed on the committer (installed at start), and the last count of pending work.
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The shards this node holds; every input, timer, message and call asks it first.
    pub ownership: Arc<shards::Ownership>,
    /// Where an input for an entity of another node's shard goes (set by the cluster); unset when alone.
    pub forwarder: std::sync::OnceLock<Arc<dyn Forward>>,
}

/// Sends an input to the node that holds its entity's shard (HTTP between nodes, `crate::cluster`), and answers
/// what that node answered.
pub trait Forward: Send + Sync {
    fn forward(
        &self,
        key: EntityKey,
        input: Input,
        audit: Option<audit::Audit>,
    ) -> futures_util::future::BoxFuture<'static, Result<Outcome, Error>>;

    /// An operator's retry or cancel of an external call of an entity the other node holds.
    fn forward_call(
        &self,
        entity: EntityKey,
        call_id: String,
        action: CallAction,
        audit: audit::Audit,
    ) -> futures_util::future::BoxFuture<'static, Result<(), Error>>;
}

/// What an operator does to an external call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallAction {
    Retry,
    Cancel,
    /// Only for a call that needs attention: the operator found that it took effect (a push whose answer was lost
    /// is on the marketplace's bill) and gives the answer its workflow takes as the call's success.
    Complete {
        response: serde_json::Value,
    },
}

/// The handle to the engine; cheap to clone, shared by HTTP handlers, actors and background services.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl Engine {
    /// Starts the engine: the count of entities by state for a store of an earlier build ([`by_state`]), the
    /// committer, the actor threads, the timer loop, and the recovery of undelivered messages and unfinished
    /// calls. Must run inside an actix system.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        mut registry: Registry,
        config: EngineConfig,
    ) -> Result<Self, StartError> {
        registry.finish()?;
        // Before the committer: nothing writes while a store of an earlier build is counted.
        by_state::baseline(&store).await.map_err(StartError::Storage)?;
        let committer = Committer::start(store.clone(), config.commit);
        let ownership = Arc::new(match config.cluster_lease {
            None => shards::Ownership::alone(),
            Some(lease) => shards::Ownership::clustered(lease),
        });
        let timer_wake = Arc::new(Notify::new());
        clock.subscribe(timer_wake.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                records: records::Records::new(store.clone()),
                store,
                committer,
                clock,
                registry,
                directory: actor::Directory::new(config.arbiters),
                inflight: Arc::new(Semaphore::new(config.max_inflight)),
                background: Arc::new(Semaphore::new(config.background_commits.max(1))),
                work: Arc::new(Semaphore::new(config.background_work.max(1))),
                last_client_ms: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                config,
                timer_wake,
                stopping: AtomicBool::new(false),
                stats: EngineStats::default(),
                services: services::Services::default(),
                telemetry: Arc::new(telemetry::Telemetry::new()),
                ownership,
                forwarder: std::sync::OnceLock::new(),
            }),
        };
        telemetry::install(&engine);
        // A commit the store refused because a lease moved on: the shard is another node's now.
        let weak = Arc::downgrade(&engine.inner);
        let _ = engine.inner.committer.stats.on_fenced.set(Box::new(move |shards| {
            if let Some(inner) = weak.upgrade() {
                Engine { inner }.lose(shards);
            }
        }));
        // Before timers and calls run: a store of an earlier build gets its concerns indexed once.
        engine.index_attention_once().await.map_err(|e| StartError::Attention(e.to_string()))?;
        services::start(&engine);
        Ok(engine)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The store, for the engine's own modules: everything else reads through [`records`] and the inspection
    /// API, and writes through [`Engine::write`] or inputs.
    pub(in crate::engine) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The committer, for the engine's own modules (see [`Engine::store`]).
    pub(in crate::engine) fn committer(&self) -> &Committer {
        &self.inner.committer
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// A client's input arrived: the engine's own work yields to clients for a while ([`Engine::yield_to_clients`]).
    pub(crate) fn client_arrived(&self) {
        let ms = self.inner.epoch.elapsed().as_millis() as u64 + 1;
        self.inner.last_client_ms.store(ms, Ordering::Relaxed);
    }

    /// A permit of `permits` while clients have been active in the last two seconds (`None` otherwise: nobody waits
    /// behind the engine's own work, which then goes at full speed).
    pub(crate) async fn yield_to_clients(&self, permits: &Arc<Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let last = self.inner.last_client_ms.load(Ordering::Relaxed);
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        if last == 0 || now.saturating_sub(last) > 2_000 {
            return None;
        }
        permits.clone().acquire_owned().await.ok()
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Whether a write ever failed in this process (sled's failure stops every later write; a database's failed
    /// only its group): the process should exit non-zero when stopped.
    pub fn storage_failed(&self) -> bool {
        let s = &self.inner.committer.stats;
        s.failed.load(Ordering::Acquire) || s.failed_groups.load(Ordering::Relaxed) > 0
    }

    /// Whether the engine accepts work (the store has not failed, shutdown has not begun).
    pub fn ready(&self) -> bool {
        self.inner.committer.healthy() && !self.inner.stopping.load(Ordering::Acquire)
    }

    /// Live actors right now (memory grows with these, not with the entities on disk).
    pub fn live_actors(&self) -> usize {
        self.inner.directory.len()
    }

    /// The shards this node holds.
    pub fn ownership(&self) -> &shards::Ownership {
        &self.inner.ownership
    }

    /// Sets where inputs for other nodes' entities go (once, by the cluster as it starts).
    pub fn set_forwarder(&self, f: Arc<dyn Forward>) {
        let _ = self.inner.forwarder.set(f);
    }

    /// Delivers a client's input (API, SPI, operator) and waits for its durable outcome.
    /// Refuses at once with [`Error::Overloaded`] when too many inputs are in flight.
    pub async fn send(&self, key: EntityKey, input: Input) -> Result<Outcome, Error> {
        self.send_with(key, input, None).await
    }

    /// Delivers an input that another node forwarded here: never forwarded again (one hop), refused with
    /// `not_owner` when this node does not serve the entity's shard (any more).
    pub async fn send_forwarded(
        &self,
        key: EntityKey,
        input: Input,
        audit: Option<audit::Audit>,
    ) -> Result<Outcome, Error> {
        let permit = self.inner.inflight.clone().try_acquire_owned().map_err(|_| {
            self.inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            Error::Overloaded
        })?;
        let r = self.deliver(key, input, audit, Route::Here).await;
        drop(permit);
        r
    }

    /// Delivers an operator's input; an accepted one commits its audit row with the transition.
    pub async fn send_audited(&self, key: EntityKey, input: Input, audit: audit::Audit) -> Result<Outcome, Error> {
        self.send_with(key, input, Some(audit)).await
    }

    async fn send_with(&self, key: EntityKey, input: Input, audit: Option<audit::Audit>) -> Result<Outcome, Error> {
        if input.cause.is_client() {
            // Before it queues anywhere: the engine's own work starts yielding at once.
            self.client_arrived();
        }
        let permit = self.inner.inflight.clone().try_acquire_owned().map_err(|_| {
            self.inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            Error::Overloaded
        })?;
        let r = self.deliver(key, input, audit, Route::Owner).await;
        drop(permit);
        r
    }

    /// Delivers an internal input: waits for capacity instead of refusing. A message goes to its receiver's node
    /// ([`Route::Owner`]); a timer or a call result is this node's own work ([`Route::Here`]): if its shard moved,
    /// the new owner has it from the store.
    pub(crate) async fn send_internal(
        &self,
        key: EntityKey,
        input: Input,
        audit: Option<audit::Audit>,
        route: Route,
    ) -> Result<Outcome, Error> {
        let permit = self.inner.inflight.clone().acquire_owned().await.map_err(|_| Error::Stopped)?;
        let r = self.deliver(key, input, audit, route).await;
        drop(permit);
        r
    }

    async fn deliver(
        &self,
        key: EntityKey,
        mut input: Input,
        audit: Option<audit::Audit>,
        route: Route,
    ) -> Result<Outcome, Error> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        if self.inner.registry.kind(&key.kind).is_none() {
            return Err(Error::UnknownKind(key.kind));
        }
        if input.request_id.is_none() {
            input.request_id = request_id::current();
        }
        let shard = shards::Ownership::shard_of(&key);
        let ownership = &self.inner.ownership;
        if !ownership.serves(shard) {
            return match (route, self.inner.forwarder.get()) {
                (Route::Owner, Some(f)) => f.forward(key, input, audit).await,
                _ => Err(Error::NotOwner(format!("shard {shard} of {key} is not served by this node"))),
            };
        }
        let _busy = ownership.enter(shard);
        self.inner.stats.inputs.fetch_add(1, Ordering::Relaxed);
        // An actor may stop (idle, or died) between lookup and delivery; the next lookup re-creates it.
        for _ in 0..5 {
            let addr = self.inner.directory.get_or_start(&key, self);
            match addr.send(actor::Deliver(input.clone(), audit.clone())).await {
                Ok(r) => return r,
                Err(_) => self.inner.directory.forget(&key, &addr),
            }
        }
        Err(Error::Internal(format!("the actor of {key} keeps closing")))
    }

    /// Writes every table of the store in the format of `marketflow export` (`store::dump`), from a snapshot, while
    /// the service runs; answers the number of rows. Blocking: on sled the snapshot holds commits up while it reads.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<u64, Error> {
        crate::store::dump::export(&*self.inner.store, out).map_err(Error::from)
    }

    /// Stops accepting inputs, lets queued commits finish and flushes the store.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.timer_wake.notify_waiters();
        self.inner.directory.stop_all();
        self.inner.committer.shutdown();
        if let Err(e) = self.inner.store.close() {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}
