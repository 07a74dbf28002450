//! Shards: which entity a stored row belongs to, and the fence a commit carries.
//!
//! Entities are split into [`SHARDS`] shards by a stable hash of their key; a node that shares a database with
//! others steps, fires timers for and delivers messages of only the shards it holds a lease on, and every commit of
//! an entity carries the epoch of its shard's lease ([`Fence`]) for the database to check inside the transaction.
//!
//! The hash is part of the stored data (the `shard` column of the PostgreSQL tables) and is fixed: FNV-1a, 32 bits,
//! over the entity's key prefix `kind \0 id \0` (the bytes every entity row starts with), modulo 256. Changing it
//! would put rows in shards nobody scans; a unit test pins a few values.

use super::Table;

/// How many shards there are; fixed, like the hash.
pub const SHARDS: u16 = 256;

/// A shard number, `0..SHARDS`.
pub type Shard = u16;

/// What a commit of one entity promises: it was decided by the holder of `shard`'s lease at `epoch`. A database
/// store refuses the commit if the lease moved on since ([`super::Error::Fenced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub shard: Shard,
    pub epoch: i64,
}

/// FNV-1a over `bytes`, 32 bits.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The shard of the entity `kind/id`.
pub fn of_entity(kind: &str, id: &str) -> Shard {
    let bytes = kind.bytes().chain([0]).chain(id.bytes()).chain([0]);
    (fnv1a(bytes) % u32::from(SHARDS)) as Shard
}

/// The shard of an entity prefix `kind \0 id \0` at the start of `key`; `None` if `key` does not start with one.
fn of_prefix(key: &[u8]) -> Option<Shard> {
    let a = key.iter().position(|b| *b == 0)?;
    let b = a + 1 + key[a + 1..].iter().position(|b| *b == 0)?;
    Some((fnv1a(key[..=b].iter().copied()) % u32::from(SHARDS)) as Shard)
}

/// The shard of an outbox or call id, `kind/id#...`.
fn of_effect_id(key: &[u8]) -> Option<Shard> {
    let end = key.iter().position(|b| *b == b'#')?;
    let slash = key[..end].iter().position(|b| *b == b'/')?;
    let kind = std::str::from_utf8(&key[..slash]).ok()?;
    let id = std::str::from_utf8(&key[slash + 1..end]).ok()?;
    Some(of_entity(kind, id))
}

/// The shard a row of `table` belongs to, derived from its key alone; `None` for rows that belong to no entity
/// (metadata, records, indexes: written by whoever serves the request, guarded by constraints, not by a lease).
pub fn of_row(table: Table, key: &[u8]) -> Option<Shard> {
    match table {
        Table::Entities | Table::Journal | Table::Idempotency | Table::TimerIndex => of_prefix(key),
        // `due (8 bytes) ‖ kind \0 id \0 name \0`.
        Table::Timers => key.get(8..).and_then(of_prefix),
        Table::Outbox | Table::Effects => of_effect_id(key),
        Table::Meta | Table::Records | Table::Index => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Stored data depends on these values: they never change.
        assert_eq!(fnv1a(*b""), 0x811c_9dc5);
        assert_eq!(fnv1a(*b"a"), 0xe40c_292c);
        assert_eq!(of_entity("subscription", "500000000001"), of_prefix(b"subscription\x00500000000001\x00").unwrap());
        let pinned: Vec<Shard> = ["1", "2", "3", "org_0123456789abcdef0123456789abcdef"]
            .iter()
            .map(|id| of_entity("organization", id))
            .collect();
        assert_eq!(pinned, [135, 76, 181, 75]);
        assert_eq!(of_entity("subscription", "500000000001"), 66);
    }

    #[test]
    fn every_entity_table_finds_the_entity_of_a_row() {
        let s = of_entity("subscription", "42");
        let mut timer = 17u64.to_be_bytes().to_vec();
        timer.extend_from_slice(b"subscription\x0042\0activation\0");
        assert_eq!(of_row(Table::Timers, &timer), Some(s));
        assert_eq!(of_row(Table::Entities, b"subscription\x0042\0"), Some(s));
        assert_eq!(of_row(Table::Journal, b"subscription\x0042\0\0\0\0\0\0\0\0\x07"), Some(s));
        assert_eq!(of_row(Table::Outbox, b"subscription/42#0000000000000003.0001"), Some(s));
        assert_eq!(of_row(Table::Effects, b"subscription/42#0000000000000003.c0001"), Some(s));
        assert_eq!(of_row(Table::Records, b"user/x"), None);
        assert_eq!(of_row(Table::Outbox, b"no-hash"), None);
        let spread: std::collections::BTreeSet<Shard> =
            (0..2000).map(|i| of_entity("subscription", &format!("{}", 500_000_000_000u64 + i))).collect();
        assert!(spread.len() > 240, "2,000 ids cover almost every shard: {}", spread.len());
    }
}
