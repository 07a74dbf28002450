//! Entities by kind and state: a read model the engine keeps in the store, with the commits.
//!
//! One counter per (kind, state) in the meta table, under [`PREFIX`], moved by the very batch that commits an
//! entity's record ([`count`], called by [`super::step`]): +1 for the state of a new entity, -1 and +1 for a
//! change of state ([`Op::Add`](crate::store::Op::Add), added by the store inside the atomic write).
//!
//! Why in the store and not counted in memory: written in the same batch as the transition, the count is exact at
//! every commit and after every crash (it cannot miss or repeat a transition), it is there as soon as the engine
//! starts (no scan of the entities table), and several nodes sharing one database will read the same numbers
//! instead of each counting what it saw. Nothing ever deletes an entity, so nothing else moves the counters.
//!
//! Data directories written before the counters existed hold entities and no counters: the first start of this
//! build counts them once ([`baseline`]) and marks the store as counted ([`COUNTED`]).

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use super::telemetry::Counts;
use crate::store::{self, keys, prefix_end, Batch, Op, Store, Table};

/// The counters' keys in [`Table::Meta`]: the prefix, then the kind and the state ([`keys::push_str`]).
pub const PREFIX: &[u8] = b"entities-by-state/";

/// Present once the counters hold every entity (a store counted by [`baseline`], or new with this build); outside
/// [`PREFIX`], so that listing the counters does not meet it.
pub const COUNTED: &[u8] = b"entities-by-state.counted";

/// Records read per page while counting a store without counters.
const PAGE: usize = 5_000;

/// The counter of entities of `kind` in `state` that `writer` keeps: the kind, the state, then the writer's name.
/// [`read`] sums every writer's counters of a (kind, state).
///
/// Why a writer's own: every node that shares a database moves these counters with its commits, and a commit holds
/// a counter's row locked until it is durable; one counter per state would make every node's group commit wait for
/// every other's. Each node moves its own (an entity that changes hands is counted in by one node and out by
/// another: each counter may drift below zero, their sum is exact). A node alone (sled) is the writer `""`, whose
/// counters are the keys of the builds before writers.
pub fn key(kind: &str, state: &str, writer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + kind.len() + state.len() + writer.len() + 2);
    k.extend_from_slice(PREFIX);
    keys::push_str(&mut k, kind);
    keys::push_str(&mut k, state);
    k.extend_from_slice(writer.as_bytes());
    k
}

/// The kind and state of a counter's key (whoever its writer is).
fn parse(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(PREFIX)?;
    let a = rest.iter().position(|b| *b == 0)?;
    let b = a + 1 + rest[a + 1..].iter().position(|b| *b == 0)?;
    let kind = std::str::from_utf8(&rest[..a]).ok()?;
    let state = std::str::from_utf8(&rest[a + 1..b]).ok()?;
    std::str::from_utf8(&rest[b + 1..]).ok().filter(|w| !w.contains('\0'))?;
    Some((kind.to_string(), state.to_string()))
}

/// Adds to `batch`, which commits an entity of `kind` now in state `to`, the moves of the counters: from its
/// previous state `from` (`None`: the entity is new). The step is pure and names no writer: [`relabel`] makes them
/// the committing node's.
pub fn count(batch: &mut Batch, kind: &str, from: Option<&str>, to: &str) {
    match from {
        Some(from) if from == to => {}
        Some(from) => {
            batch.add(Table::Meta, key(kind, from, ""), -1);
            batch.add(Table::Meta, key(kind, to, ""), 1);
        }
        None => batch.add(Table::Meta, key(kind, to, ""), 1),
    }
}

/// Makes a batch's counter moves the counters of `writer` (nothing to do for the writer `""`).
pub fn relabel(batch: &mut Batch, writer: &str) {
    if writer.is_empty() {
        return;
    }
    for op in &mut batch.ops {
        if let Op::Add { table: Table::Meta, key, .. } = op {
            if key.starts_with(PREFIX) {
                key.extend_from_slice(writer.as_bytes());
            }
        }
    }
}

/// Every counter: entities by (kind, state), for the states that ever held an entity.
pub async fn read(store: &dyn Store) -> Result<Counts, store::Error> {
    let mut counts = Counts::new();
    let mut start = Bound::Included(PREFIX.to_vec());
    loop {
        let page = store.scan(Table::Meta, start, prefix_end(PREFIX), 1_000, false).await?;
        for (k, v) in &page {
            let Some(ks) = parse(k) else {
                return Err(store::Error::Corrupt { what: "entities-by-state key".into(), detail: format!("{k:?}") });
            };
            *counts.entry(ks).or_default() += store::counter_value(Some(v))?;
        }
        match page.last() {
            Some((k, _)) if page.len() == 1_000 => start = Bound::Excluded(k.clone()),
            _ => return Ok(counts),
        }
    }
}

/// Counts the entities of a store without counters (written by a build before them) and writes the counters and
/// [`COUNTED`] in one batch; a store marked already is left alone, a new one gets the mark and no counts.
///
/// Runs as the engine starts, before its committer: nothing else writes yet, so the count cannot miss a commit,
/// and it writes straight to the store. A counter left by an interrupted earlier attempt cannot be (the counters
/// and the mark are one atomic batch), but any there is overwritten or removed anyway: the scan is the truth.
pub async fn baseline(store: &Arc<dyn Store>) -> Result<(), store::Error> {
    if store.get(Table::Meta, COUNTED).await?.is_some() {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct KindState {
        kind: String,
        state: String,
    }
    let started = Instant::now();
    let (mut counts, mut entities, mut unreadable) = (Counts::new(), 0u64, 0u64);
    let mut start = Bound::Unbounded;
    loop {
        let page = store.scan(Table::Entities, start, Bound::Unbounded, PAGE, false).await?;
        for (_, v) in &page {
            match serde_json::from_slice::<KindState>(v) {
                Ok(r) => {
                    *counts.entry((r.kind, r.state)).or_default() += 1;
                    entities += 1;
                }
                Err(_) => unreadable += 1,
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => start = Bound::Excluded(k.clone()),
            _ => break,
        }
    }
    let mut batch = Batch::new();
    // Every counter there is (none should be: they come with the mark), replaced by the count.
    let stale =
        store.scan(Table::Meta, Bound::Included(PREFIX.to_vec()), prefix_end(PREFIX), usize::MAX, false).await?;
    for (k, _) in stale {
        batch.delete(Table::Meta, k);
    }
    for ((kind, state), n) in &counts {
        batch.put(Table::Meta, key(kind, state, ""), n.to_be_bytes().to_vec());
    }
    let mark = serde_json::json!({ "entities": entities, "at": chrono::Utc::now() });
    batch.put(Table::Meta, COUNTED.to_vec(), mark.to_string().into_bytes());
    // Blocking (a database's write waits for its answer): on a thread of the blocking pool.
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.apply(&[batch]))
        .await
        .map_err(|e| store::Error::Backend(format!("counting by state: {e}")))??;
    if unreadable > 0 {
        tracing::warn!(unreadable, "entity records without a readable kind and state were not counted by state");
    }
    tracing::info!(
        entities,
        counters = counts.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "counted the stored entities by state (once: the store keeps the counts from now on)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn n(counts: &Counts, kind: &str, state: &str) -> Option<i64> {
        counts.get(&(kind.to_string(), state.to_string())).copied()
    }

    #[test]
    fn keys_name_kind_and_state_and_read_back() {
        for writer in ["", "node-1"] {
            assert_eq!(parse(&key("subscription", "active", writer)), Some(("subscription".into(), "active".into())));
        }
        assert_eq!(parse(&[PREFIX, b"k\0s\0w\0x"].concat()), None);
        assert_eq!(parse(b"entities-by-state/x"), None);
        assert_eq!(parse(COUNTED), None);
        assert!(!COUNTED.starts_with(PREFIX));
    }

    #[tokio::test]
    async fn counts_move_with_new_entities_and_changes_of_state() {
        let store = MemoryStore::new();
        let mut b = Batch::new();
        count(&mut b, "k", None, "a");
        count(&mut b, "k", None, "a");
        count(&mut b, "j", None, "a");
        store.apply(&[b]).unwrap();
        // Another writer moves one of them on: its own counters go below zero, the sums stay exact.
        let mut b = Batch::new();
        count(&mut b, "k", Some("a"), "b");
        count(&mut b, "k", Some("b"), "b");
        relabel(&mut b, "node-2");
        store.apply(&[b]).unwrap();
        let c = read(&store).await.unwrap();
        assert_eq!((n(&c, "k", "a"), n(&c, "k", "b"), n(&c, "j", "a")), (Some(1), Some(1), Some(1)));
        assert_eq!(c.len(), 3);
    }

    fn entity(store: &MemoryStore, id: usize, kind: &str, state: &str) {
        let mut b = Batch::new();
        let record = serde_json::json!({"kind": kind, "id": format!("e{id}"), "state": state});
        b.put(Table::Entities, format!("{kind}\0e{id:06}\0").into_bytes(), record.to_string().into_bytes());
        store.apply(&[b]).unwrap();
    }

    #[tokio::test]
    async fn a_store_without_counters_is_counted_once_and_a_new_one_is_marked_at_once() {
        let fresh: Arc<dyn Store> = Arc::new(MemoryStore::new());
        baseline(&fresh).await.unwrap();
        assert!(fresh.get(Table::Meta, COUNTED).await.unwrap().is_some());
        assert!(read(&*fresh).await.unwrap().is_empty());

        let mem = Arc::new(MemoryStore::new());
        let old: Arc<dyn Store> = mem.clone();
        let old_ = &*mem;
        for i in 0..PAGE + 7 {
            entity(old_, i, "k", if i % 2 == 0 { "even" } else { "odd" });
        }
        entity(old_, 0, "j", "a");
        // A stray counter (a state no entity is in) goes: the scan is the truth.
        let mut stray = Batch::new();
        stray.add(Table::Meta, key("k", "gone", "node-3"), 3);
        old.apply(&[stray]).unwrap();
        baseline(&old).await.unwrap();
        let c = read(&*old).await.unwrap();
        assert_eq!(n(&c, "k", "even"), Some((PAGE as i64 + 7).div_euclid(2) + 1));
        assert_eq!(n(&c, "k", "odd"), Some((PAGE as i64 + 7) / 2));
        assert_eq!(n(&c, "j", "a"), Some(1));
        assert_eq!(n(&c, "k", "gone"), None);
        // Marked: a later start counts nothing again (this entity came without its counter, so it stays uncounted).
        entity(old_, PAGE + 100, "k", "odd");
        baseline(&old).await.unwrap();
        assert_eq!(read(&*old).await.unwrap(), c);
    }
}
