//! Which shards this node holds, at which epoch, and how fresh its leases are: what the engine asks before it
//! steps an entity, fires a timer, delivers a message or starts an external call.
//!
//! A node alone on sled holds every shard at epoch 0 for ever (no lease, no fence). A node of a cluster holds
//! what its lease loop (`crate::cluster`) says: [`Ownership::gain`] and [`Ownership::lose`] are told to the
//! engine ([`super::Engine::gain`], [`super::Engine::lose`]), which starts or drops the shard's work. Reads of
//! this state are atomics: it is asked on every input.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::shard::{self, Fence, Shard, SHARDS};

/// The epoch of a shard this node does not hold.
const NOT_HELD: i64 = -1;

/// This node's shards.
pub struct Ownership {
    /// Per shard: the epoch of this node's lease, or [`NOT_HELD`].
    epochs: Vec<AtomicI64>,
    /// Per shard: being handed over (drained before release): no new input is taken.
    leaving: Vec<AtomicBool>,
    /// Per shard: inputs being decided or committed right now (a drain waits for them).
    busy: Vec<AtomicUsize>,
    /// A node alone: every shard, no lease, no fence.
    alone: bool,
    /// The lease's length (zero when alone).
    lease: Duration,
    /// Real time at which the last successful renewal was sent (a lease runs from at least then).
    renewed: Mutex<Instant>,
    /// Changes of ownership, for `/metrics`.
    pub gained: AtomicU64,
    pub lost: AtomicU64,
}

impl Ownership {
    /// Every shard, for ever: one node on its own store.
    pub fn alone() -> Self {
        Self::new(true, Duration::ZERO)
    }

    /// No shard until the lease loop takes some.
    pub fn clustered(lease: Duration) -> Self {
        Self::new(false, lease)
    }

    fn new(alone: bool, lease: Duration) -> Self {
        let start = if alone { 0 } else { NOT_HELD };
        Self {
            epochs: (0..SHARDS).map(|_| AtomicI64::new(start)).collect(),
            leaving: (0..SHARDS).map(|_| AtomicBool::new(false)).collect(),
            busy: (0..SHARDS).map(|_| AtomicUsize::new(0)).collect(),
            alone,
            lease,
            renewed: Mutex::new(Instant::now()),
            gained: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Whether this node is alone (sled, or one node by design): no fence, no forwarding.
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The epoch this node holds `shard` at, if it does.
    pub fn epoch(&self, shard: Shard) -> Option<i64> {
        let e = self.epochs.get(shard as usize)?.load(Ordering::Acquire);
        (e != NOT_HELD).then_some(e)
    }

    /// Whether this node takes inputs of `shard` now: held, and not being handed over.
    pub fn serves(&self, shard: Shard) -> bool {
        self.epoch(shard).is_some() && !self.leaving[shard as usize].load(Ordering::Acquire)
    }

    /// The fence of a commit of `shard` (none when alone); `None` if this node does not hold it.
    pub fn fence(&self, shard: Shard) -> Option<Option<Fence>> {
        if self.alone {
            return Some(None);
        }
        self.epoch(shard).map(|epoch| Some(Fence { shard, epoch }))
    }

    /// Every shard this node holds, in order.
    pub fn held(&self) -> Vec<Shard> {
        (0..SHARDS).filter(|s| self.epoch(*s).is_some()).collect()
    }

    /// Whether this node holds every shard (then a scan needs no filter by shard).
    pub fn holds_all(&self) -> bool {
        self.alone || self.epochs.iter().all(|e| e.load(Ordering::Acquire) != NOT_HELD)
    }

    /// Records leases taken or renewed; returns the shards that are new to this node.
    pub(crate) fn gain(&self, leases: &[(Shard, i64)]) -> Vec<Shard> {
        let mut new = Vec::new();
        for (s, epoch) in leases {
            let Some(slot) = self.epochs.get(*s as usize) else { continue };
            let before = slot.swap(*epoch, Ordering::AcqRel);
            if before != *epoch {
                new.push(*s);
                self.leaving[*s as usize].store(false, Ordering::Release);
                self.gained.fetch_add(1, Ordering::Relaxed);
            }
        }
        new
    }

    /// Forgets shards; returns those this node held.
    pub(crate) fn lose(&self, shards: &[Shard]) -> Vec<Shard> {
        let mut gone = Vec::new();
        for s in shards {
            let Some(slot) = self.epochs.get(*s as usize) else { continue };
            if slot.swap(NOT_HELD, Ordering::AcqRel) != NOT_HELD {
                gone.push(*s);
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            self.leaving[*s as usize].store(false, Ordering::Release);
        }
        gone
    }

    /// Stops taking new inputs of these shards (a hand-over begins).
    pub(crate) fn leave(&self, shards: &[Shard]) {
        for s in shards {
            if let Some(l) = self.leaving.get(*s as usize) {
                l.store(true, Ordering::Release);
            }
        }
    }

    /// Inputs of `shard` in flight right now.
    pub(crate) fn busy(&self, shard: Shard) -> usize {
        self.busy[shard as usize].load(Ordering::Acquire)
    }

    /// Counts an input of `shard` in flight until the guard is dropped.
    pub(crate) fn enter(&self, shard: Shard) -> Busy<'_> {
        self.busy[shard as usize].fetch_add(1, Ordering::AcqRel);
        Busy { ownership: self, shard }
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        if let Ok(mut g) = self.renewed.lock() {
            if sent > *g {
                *g = sent;
            }
        }
    }

    /// Whether the leases are fresh enough to start something the outside world sees (an external call): the
    /// last renewal was sent less than four fifths of a lease ago. A node cut off from the database stops
    /// starting calls before its leases end, so that the node taking over never overlaps with it.
    pub fn fresh(&self) -> bool {
        self.alone || self.renewed.lock().map(|g| g.elapsed() < self.lease * 4 / 5).unwrap_or(false)
    }

    /// How long ago the last successful renewal was sent.
    pub fn since_renewal(&self) -> Duration {
        self.renewed.lock().map(|g| g.elapsed()).unwrap_or(Duration::MAX)
    }

    /// The shard of an entity (the stable hash of [`shard::of_entity`]).
    pub fn shard_of(key: &super::EntityKey) -> Shard {
        shard::of_entity(&key.kind, &key.id)
    }
}

/// An input of a shard in flight (see [`Ownership::enter`]).
pub struct Busy<'a> {
    ownership: &'a Ownership,
    shard: Shard,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.ownership.busy[self.shard as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_holds_everything_without_fences() {
        let o = Ownership::alone();
        assert!(o.holds_all() && o.fresh() && o.serves(200));
        assert_eq!(o.fence(7), Some(None));
    }

    #[test]
    fn a_cluster_node_holds_what_it_gained_until_it_loses_it() {
        let o = Ownership::clustered(Duration::from_secs(10));
        assert_eq!(o.fence(3), None);
        assert_eq!(o.gain(&[(3, 7), (4, 1)]), vec![3, 4]);
        assert_eq!(o.gain(&[(3, 7)]), Vec::<Shard>::new(), "a renewal is not a gain");
        assert_eq!(o.fence(3), Some(Some(Fence { shard: 3, epoch: 7 })));
        o.leave(&[4]);
        assert!(o.serves(3) && !o.serves(4) && o.epoch(4) == Some(1));
        {
            let _b = o.enter(3);
            assert_eq!(o.busy(3), 1);
        }
        assert_eq!(o.busy(3), 0);
        assert_eq!(o.lose(&[4, 5]), vec![4]);
        assert_eq!(o.held(), vec![3]);
        o.renewed(Instant::now());
        assert!(o.fresh());
    }
}
