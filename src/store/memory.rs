//! A store in memory: for unit tests of everything above the store, and for nothing that must survive.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Batch, Error, Op, Read, Store, Table};

type Tables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// An ordered map per table behind one lock, so a batch is applied atomically with respect to readers.
#[derive(Default)]
pub struct MemoryStore {
    /// All tables, keyed by table and key; one lock keeps batches atomic.
    data: RwLock<Tables>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn bound(table: Table, b: Bound<Vec<u8>>, unbounded_end: bool) -> Bound<(Table, Vec<u8>)> {
    match b {
        Bound::Included(k) => Bound::Included((table, k)),
        Bound::Excluded(k) => Bound::Excluded((table, k)),
        Bound::Unbounded if unbounded_end => {
            // The next table's first key, or the end of everything.
            let next = Table::ALL.into_iter().find(|t| *t as u8 > table as u8);
            match next {
                Some(t) => Bound::Excluded((t, Vec::new())),
                None => Bound::Unbounded,
            }
        }
        Bound::Unbounded => Bound::Included((table, Vec::new())),
    }
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Read<Result<Option<Vec<u8>>, Error>> {
        Read::ready(match self.data.read() {
            Ok(g) => Ok(g.get(&(table, key.to_vec())).cloned()),
            Err(_) => Err(Error::Backend("memory store lock poisoned".into())),
        })
    }

    fn scan(
        &self,
        table: Table,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
        reverse: bool,
    ) -> Read<Result<super::KvPairs, Error>> {
        let Ok(g) = self.data.read() else {
            return Read::ready(Err(Error::Backend("memory store lock poisoned".into())));
        };
        let range = g.range((bound(table, start, false), bound(table, end, true)));
        let map = |((_, k), v): (&(Table, Vec<u8>), &Vec<u8>)| (k.clone(), v.clone());
        Read::ready(Ok(if reverse {
            range.rev().take(limit).map(map).collect()
        } else {
            range.take(limit).map(map).collect()
        }))
    }

    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Read<Result<u64, Error>> {
        let Ok(g) = self.data.read() else {
            return Read::ready(Err(Error::Backend("memory store lock poisoned".into())));
        };
        let start = (table, prefix.to_vec());
        Read::ready(Ok(g.range(start..).take_while(|((t, k), _)| *t == table && k.starts_with(prefix)).count() as u64))
    }

    fn size_bytes(&self) -> Read<Result<u64, Error>> {
        let Ok(g) = self.data.read() else {
            return Read::ready(Err(Error::Backend("memory store lock poisoned".into())));
        };
        Read::ready(Ok(g.iter().map(|((_, k), v)| (k.len() + v.len()) as u64).sum()))
    }

    /// Counters are read, added to and put under the write lock ([`super::resolve_adds`]): exact, as nobody can
    /// write between the read and the put.
    fn write(&self, batches: &[Batch]) -> Result<(), Error> {
        let mut g = self.data.write().map_err(|_| Error::Backend("memory store lock poisoned".into()))?;
        let refused = super::conflicts(batches, |table, key| Ok(g.contains_key(&(table, key.to_vec()))))?;
        if !refused.is_empty() {
            return Err(Error::Conflict { batches: refused });
        }
        let counters = super::resolve_adds(batches, |table, key| Ok(g.get(&(table, key.to_vec())).cloned()))?;
        for op in batches.iter().chain([&counters]).flat_map(|b| b.ops.iter()) {
            match op {
                Op::Put { table, key, value } => {
                    g.insert((*table, key.clone()), value.clone());
                }
                Op::Delete { table, key } => {
                    g.remove(&(*table, key.clone()));
                }
                // Resolved into `counters`, written last.
                Op::Add { .. } => {}
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_keeps_the_store_contract() {
        super::super::contract_tests::roundtrip(&super::MemoryStore::new());
        super::super::contract_tests::counters(&super::MemoryStore::new());
        super::super::contract_tests::new_keys(&super::MemoryStore::new());
    }
}
