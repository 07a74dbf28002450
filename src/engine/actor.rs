//! Entity actors and the directory that finds or re-creates them.
//!
//! The actor is thin on purpose (actix is in passive maintenance): it serialises one entity's inputs, keeps the
//! record it last committed, and holds its mailbox while a commit is in flight (`AtomicResponse`), so an entity
//! never has two decisions racing. Everything else is in [`super::step`] and [`super::services`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::model::*;
use super::step::{self, Step};
use super::{Engine, Error};
use crate::store::{Op, Table};

/// One input for an entity's actor, and the operator's action to audit with its commit if it is accepted.
pub struct Deliver(pub Input, pub Option<super::audit::Audit>);

impl Message for Deliver {
    type Result = Result<Outcome, Error>;
}

/// The live actor of one entity.
pub struct EntityActor {
    /// Which entity; fixed for the actor's life.
    key: EntityKey,
    engine: Engine,
    /// The record as last committed; `None` until loaded or while the entity does not exist.
    record: Option<EntityRecord>,
    /// Whether `record` reflects the store (loaded once, then kept in step with every commit).
    loaded: bool,
    /// Real time of the last input, for stopping when idle.
    last_active: Instant,
}

enum Prepared {
    Done(Outcome),
    Commit(Box<Step>),
}

/// What the actor read before deciding an input: the record (once per actor life) and the input's idempotency
/// record (for inputs that have one); `None` for what it did not need to read.
type Reads =
    (Option<Result<Option<Vec<u8>>, crate::store::Error>>, Option<Result<Option<Vec<u8>>, crate::store::Error>>);

impl EntityActor {
    /// Takes the record read for this actor (once per life, or again after a refused commit).
    fn load(&mut self, read: Option<Result<Option<Vec<u8>>, crate::store::Error>>) -> Result<(), Error> {
        if let Some(bytes) = read {
            self.record = match bytes? {
                Some(b) => Some(
                    serde_json::from_slice(&b)
                        .map_err(|e| Error::Internal(format!("the record of {} does not decode: {e}", self.key)))?,
                ),
                None => None,
            };
            self.loaded = true;
        }
        Ok(())
    }

    fn prepare(&mut self, input: &Input, (record, recorded): Reads) -> Result<Prepared, Error> {
        let fresh = !self.loaded;
        if fresh {
            self.load(record)?;
        }
        let inner = &self.engine.inner;
        let recorded = recorded.transpose()?.flatten();
        if let Some(b) = recorded {
            // The record and the input's outcome are two reads, not one snapshot: an input found done may have
            // been committed after the record was read (by a commit this node was told had failed), so a record
            // read for this input is not kept.
            if fresh {
                self.loaded = false;
            }
            let mut o: Outcome = serde_json::from_slice(&b)
                .map_err(|e| Error::Internal(format!("a stored outcome of {} does not decode: {e}", self.key)))?;
            o.repeated = true;
            inner.stats.repeated.fetch_add(1, Ordering::Relaxed);
            return Ok(Prepared::Done(o));
        }
        if let Some(r) = &self.record {
            if r.paused && matches!(input.cause, Cause::Timer { .. } | Cause::Message { .. } | Cause::Call { .. }) {
                return Err(Error::Paused);
            }
        }
        let reg = inner.registry.kind(&self.key.kind).ok_or_else(|| Error::UnknownKind(self.key.kind.clone()))?;
        let def = match &self.record {
            None => reg.current.clone(),
            Some(r) => match reg.versions.get(&r.version) {
                // The current definition declares that instances of this version go on with it.
                Some(d)
                    if d.fingerprint == r.fingerprint
                        && d.name == r.definition
                        && reg.current.name == r.definition
                        && reg.current.upgrades_from.contains(&r.version) =>
                {
                    reg.current.clone()
                }
                Some(d) if d.fingerprint == r.fingerprint && d.name == r.definition => d.clone(),
                Some(d) => {
                    return Err(Error::DefinitionMismatch(format!(
                        "{} runs {} v{} with fingerprint {}, but {} now has fingerprint {} under the same version; \
                         give a changed definition a new version and keep the old one loaded",
                        self.key, r.definition, r.version, r.fingerprint, d.file, d.fingerprint
                    )))
                }
                None => {
                    return Err(Error::DefinitionMismatch(format!(
                        "{} runs {} v{}, which is no longer loaded",
                        self.key, r.definition, r.version
                    )))
                }
            },
        };
        let now = inner.clock.now();
        let record = self.record.as_ref();
        let key = &self.key;
        let result = catch_unwind(AssertUnwindSafe(|| step::step(&*reg.workflow, &def, key, record, input, now)));
        let step = match result {
            Ok(r) => r?,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(entity = %self.key, input = %input.id, panic = %msg, "workflow panicked");
                return Err(Error::Panicked(msg));
            }
        };
        let counter = match step.outcome.status {
            Status::Accepted => &inner.stats.transitions,
            Status::Ignored => &inner.stats.ignored,
            Status::Rejected => &inner.stats.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if step.batch.is_none() {
            return Ok(Prepared::Done(step.outcome));
        }
        Ok(Prepared::Commit(Box::new(step)))
    }
}

impl Actor for EntityActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let idle = self.engine.inner.config.idle_timeout;
        ctx.run_interval((idle / 2).max(Duration::from_millis(50)), move |act, ctx| {
            if act.last_active.elapsed() >= idle {
                act.engine.inner.directory.forget(&act.key, &ctx.address());
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.engine.inner.stats.actors_stopped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Handler<Deliver> for EntityActor {
    type Result = AtomicResponse<Self, Result<Outcome, Error>>;

    /// Reads what the decision needs, decides, commits, answers; the mailbox waits meanwhile (`AtomicResponse`), so
    /// an entity never has two decisions racing. The reads are futures: sled's are ready at once and the whole
    /// chain runs in one poll; a database's are awaited without blocking the actor's thread.
    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let store = &self.engine.inner.store;
        let record = (!self.loaded).then(|| store.get(Table::Entities, &self.key.prefix()));
        // Timers and call results are told apart from repeats by the record (answered `stale`): no idempotency record.
        let recorded = (!msg.0.event.consumed_by_record())
            .then(|| store.get(Table::Idempotency, &idempotency_key(&self.key, &msg.0.id)));
        let reads = async move {
            let record = match record {
                Some(r) => Some(r.await),
                None => None,
            };
            let recorded = match recorded {
                Some(r) => Some(r.await),
                None => None,
            };
            (record, recorded)
        };
        AtomicResponse::new(Box::pin(reads.into_actor(self).then(move |reads, act, _ctx| act.decide(msg, reads))))
    }
}

impl EntityActor {
    /// Decides the input on what was read, then commits what the decision produced and answers once it is durable.
    fn decide(&mut self, msg: Deliver, reads: Reads) -> ResponseActFuture<Self, Result<Outcome, Error>> {
        let prepared = self.prepare(&msg.0, reads);
        let step = match prepared {
            Err(e) => return Box::pin(fut::ready(Err(e))),
            Ok(Prepared::Done(o)) => return Box::pin(fut::ready(Ok(o))),
            Ok(Prepared::Commit(step)) => step,
        };
        let committer = self.engine.inner.committer.clone();
        let mut step = *step;
        let mut batch = step.batch.take().unwrap_or_default();
        // This node's counters of entities by state (see `by_state::key`).
        super::by_state::relabel(&mut batch, &self.engine.inner.config.counter_writer);
        // Decided under this node's lease of the shard: the store refuses the commit if the lease moved on.
        let shard = super::shards::Ownership::shard_of(&self.key);
        match self.engine.inner.ownership.fence(shard) {
            Some(fence) => batch.fence = fence,
            None => {
                return Box::pin(fut::ready(Err(Error::NotOwner(format!(
                    "shard {shard} of {} is not held by this node",
                    self.key
                )))))
            }
        }
        if let Some(audit) = &msg.1 {
            if step.outcome.status == Status::Accepted {
                let result = super::audit::ActionResult::of(&step.outcome);
                audit.put(&mut batch, &self.key, self.engine.inner.clock.now(), &result);
            }
        }
        // Read the leaves the commit will write (journal, timers, outbox...) here, on this actor's thread, so that
        // the committer, the one serial stage, does not page them in: +10 % timers fired per second with
        // 1,000,000 entities (BENCHMARKS.md, round 4). The record and idempotency leaves were read just now.
        for op in &batch.ops {
            let (Op::Put { table, key, .. } | Op::Delete { table, key } | Op::Add { table, key, .. }) = op;
            if !matches!(table, Table::Entities | Table::Idempotency) {
                self.engine.inner.store.prefetch(*table, key);
            }
        }
        // The engine's own work waits for a permit before it queues at the committer while clients are active; a
        // client's input does not.
        let client = msg.0.cause.is_client();
        if client {
            self.engine.client_arrived();
        }
        let engine = self.engine.clone();
        let commit = async move {
            let _permit = match client {
                false => engine.yield_to_clients(&engine.inner.background).await,
                true => None,
            };
            committer.commit(batch).await
        };
        Box::pin(commit.into_actor(self).map(move |res, act, _ctx| match res {
            Ok(()) => {
                act.record = step.record;
                act.last_active = Instant::now();
                act.engine.inner.stats.count_marks(&step.marks);
                act.engine.after_commit(step.messages, step.calls);
                Ok(step.outcome)
            }
            Err(e) => {
                // The store refused: what is in memory is what was last committed; reload to be sure.
                act.loaded = false;
                Err(e.into())
            }
        }))
    }
}

const SHARDS: usize = 64;

/// Live actors by entity key, and the threads they run on.
pub struct Directory {
    /// Sharded map of live actors; an entry whose address is closed is stale and replaced on next lookup.
    shards: Vec<Mutex<HashMap<EntityKey, Addr<EntityActor>>>>,
    /// Actor threads; an entity always runs on the same one (by key hash), which spreads load over cores.
    arbiters: Vec<ArbiterHandle>,
}

fn hash_of(key: &EntityKey) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() as usize
}

impl Directory {
    pub fn new(arbiters: usize) -> Self {
        let arbiters = (0..arbiters.max(1)).map(|_| Arbiter::new().handle()).collect();
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), arbiters }
    }

    fn shard(&self, key: &EntityKey) -> &Mutex<HashMap<EntityKey, Addr<EntityActor>>> {
        &self.shards[hash_of(key) % SHARDS]
    }

    /// The live actor of `key`, started if there is none (or the last one stopped or died).
    pub fn get_or_start(&self, key: &EntityKey, engine: &Engine) -> Addr<EntityActor> {
        let mut g = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = g.get(key) {
            if a.connected() {
                return a.clone();
            }
        }
        let arbiter = &self.arbiters[(hash_of(key) / SHARDS) % self.arbiters.len()];
        let (k, e) = (key.clone(), engine.clone());
        let mailbox = engine.inner.config.mailbox;
        let addr = EntityActor::start_in_arbiter(arbiter, move |ctx: &mut Context<EntityActor>| {
            ctx.set_mailbox_capacity(mailbox);
            EntityActor { key: k, engine: e, record: None, loaded: false, last_active: Instant::now() }
        });
        engine.inner.stats.actors_started.fetch_add(1, Ordering::Relaxed);
        g.insert(key.clone(), addr.clone());
        addr
    }

    /// Removes `addr` as the actor of `key` (if it still is).
    pub fn forget(&self, key: &EntityKey, addr: &Addr<EntityActor>) {
        let mut g = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if g.get(key) == Some(addr) {
            g.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|g| g.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the addresses of the entities `pred` picks (their actors stop when their mailboxes close; the next
    /// input of such an entity starts a new actor, which reads the record afresh).
    pub fn stop_where(&self, pred: impl Fn(&EntityKey) -> bool) {
        for s in &self.shards {
            if let Ok(mut g) = s.lock() {
                g.retain(|k, _| !pred(k));
            }
        }
    }

    /// Drops every address (actors stop when their mailboxes close).
    pub fn stop_all(&self) {
        for s in &self.shards {
            if let Ok(mut g) = s.lock() {
                g.clear();
            }
        }
    }
}
