//! Typed record tables: the product's records that are not workflows (users, sessions, grants, usage records,
//! console sessions, the audit trail) and the indexes the workflows keep (members, invitations), each declared
//! once as a [`RecordTable`] with its key prefix and value type.
//!
//! Why here: the spelling of a key and the shape of its value are one decision, owned by the table, so no two
//! modules can spell `member/{user}/` differently or decode a row as two types; and every write goes through
//! the engine's committer ([`Writes`], committed alone by [`Engine::write`] or inside an input's batch), so a
//! shared store (several nodes) sees the same writes a single node makes. Nothing outside the engine and the
//! store names a table of the store or a batch.
//!
//! A key is the table's prefix followed by its parts joined with `/`; parts are ids, digests and addresses, and
//! every part but the last is refused if it holds a `/` (rows are listed under those parts).

use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Engine, Error};
use crate::store::{keys, prefix_end, Batch, Store, Table};

/// Read access to the record tables: the engine's (`&engine` is one), or made from the store for what runs
/// before the engine starts (the call handlers are built with the registry).
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
}

impl Records {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl AsRef<Records> for Records {
    fn as_ref(&self) -> &Records {
        self
    }
}

impl AsRef<Records> for Engine {
    fn as_ref(&self) -> &Records {
        &self.inner.records
    }
}

/// Where a table's rows live in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Domain records, written by the application.
    Records,
    /// Secondary indexes, written by workflows as effects of their transitions (and read by the application).
    Index,
    /// Service metadata: single rows under fixed keys.
    Meta,
}

impl Space {
    fn table(self) -> Table {
        match self {
            Space::Records => Table::Records,
            Space::Index => Table::Index,
            Space::Meta => Table::Meta,
        }
    }
}

/// A table of `V` values under one key prefix.
pub struct RecordTable<V> {
    space: Space,
    prefix: &'static str,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for RecordTable<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for RecordTable<V> {}

impl<V> std::fmt::Debug for RecordTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordTable({:?} {})", self.space, self.prefix)
    }
}

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}

impl<V> RecordTable<V> {
    /// A table of domain records; `prefix` ends with `/`.
    pub const fn records(prefix: &'static str) -> Self {
        Self { space: Space::Records, prefix, _value: PhantomData }
    }

    /// A secondary index written by workflows; `prefix` ends with `/`.
    pub const fn index(prefix: &'static str) -> Self {
        Self { space: Space::Index, prefix, _value: PhantomData }
    }

    /// A row of service metadata under the fixed key `key` (read and written with no parts).
    pub const fn meta(key: &'static str) -> Self {
        Self { space: Space::Meta, prefix: key, _value: PhantomData }
    }

    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    pub fn space(&self) -> Space {
        self.space
    }

    /// The key of a row (also what a workflow's index effect names).
    pub fn key(&self, parts: &[&str]) -> Result<String, Error> {
        let mut key = String::from(self.prefix);
        for (i, p) in parts.iter().enumerate() {
            // The last part may hold `/` (an e-mail address may): only the parts that rows are listed under must not.
            if p.is_empty() || (i + 1 < parts.len() && p.contains('/')) {
                return Err(Error::InvalidInput(format!("a key part of {} is empty or holds `/`", self.prefix)));
            }
            if i > 0 {
                key.push('/');
            }
            key.push_str(p);
        }
        Ok(key)
    }

    /// The key prefix of the rows under `parts` (all of them for no parts).
    fn under(&self, parts: &[&str]) -> Result<String, Error> {
        if parts.is_empty() {
            return Ok(self.prefix.to_string());
        }
        let mut k = self.key(parts)?;
        k.push('/');
        Ok(k)
    }

    /// Deletes a row in `w`.
    pub fn delete(&self, w: &mut Writes, parts: &[&str]) -> Result<(), Error> {
        let key = self.key(parts)?;
        w.batch.delete(self.space.table(), key.into_bytes());
        Ok(())
    }

    /// The sweeper's rule for this table: rows whose `field` (a time on `clock`) plus `grace` has passed are
    /// deleted ([`super::sweep`]). Only domain records are swept; an index is the workflows' to keep.
    pub fn sweep(
        &self,
        kind: &'static str,
        field: &'static str,
        grace: chrono::TimeDelta,
        clock: super::sweep::RuleClock,
    ) -> super::sweep::Rule {
        debug_assert_eq!(self.space, Space::Records, "{} is an index", self.prefix);
        super::sweep::Rule { kind, prefix: self.prefix, field, grace, clock, id_index: None }
    }

    /// Whether a row exists (whatever its value).
    pub async fn exists(&self, r: &impl AsRef<Records>, parts: &[&str]) -> Result<bool, Error> {
        let key = self.key(parts)?;
        Ok(r.as_ref().store.get(self.space.table(), key.as_bytes()).await.map_err(storage)?.is_some())
    }
}

impl<V: Serialize + DeserializeOwned> RecordTable<V> {
    /// A row's value; `None` when there is none. A row that does not decode is a storage error (logged by the
    /// caller's error path), never silently absent.
    pub async fn get(&self, r: &impl AsRef<Records>, parts: &[&str]) -> Result<Option<V>, Error> {
        let key = self.key(parts)?;
        match r.as_ref().store.get(self.space.table(), key.as_bytes()).await.map_err(storage)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Storage(format!("{key}: {e}"))),
            None => Ok(None),
        }
    }

    /// Up to `limit` rows under `parts`, in key order (newest last for time-ordered keys; `reverse` for newest
    /// first), as (the rest of the key after `parts`, value). Rows that do not decode are skipped and logged.
    pub async fn list(
        &self,
        r: &impl AsRef<Records>,
        parts: &[&str],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(String, V)>, Error> {
        let under = self.under(parts)?.into_bytes();
        let rows = r
            .as_ref()
            .store
            .scan(self.space.table(), Bound::Included(under.clone()), prefix_end(&under), limit, reverse)
            .await
            .map_err(storage)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let rest = String::from_utf8_lossy(&k[under.len()..]).to_string();
            match serde_json::from_slice(&v) {
                Ok(value) => out.push((rest, value)),
                Err(e) => tracing::warn!(table = self.prefix, key = %rest, error = %e, "a row that does not decode"),
            }
        }
        Ok(out)
    }

    /// Writes a row in `w`.
    pub fn put(&self, w: &mut Writes, parts: &[&str], value: &V) -> Result<(), Error> {
        let key = self.key(parts)?;
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("{key}: {e}")))?;
        w.batch.put(self.space.table(), key.into_bytes(), bytes);
        Ok(())
    }

    /// Writes a row that must not exist yet (a unique address, a single-use link): the commit is refused with
    /// [`Error::Conflict`] if it does, by the store itself, so that it holds across nodes sharing one database.
    pub fn put_new(&self, w: &mut Writes, parts: &[&str], value: &V) -> Result<(), Error> {
        let key = self.key(parts)?;
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("{key}: {e}")))?;
        w.batch.put_new(self.space.table(), key.into_bytes(), bytes);
        Ok(())
    }

    /// A workflow's index row, as the effect of a transition (committed with it).
    pub fn index_put<D>(&self, cx: &mut super::Cx<'_, D>, parts: &[&str], value: &V) -> Result<(), super::Reject> {
        let key = self.key(parts).map_err(|e| super::Reject::new("invalid_input", e.to_string()))?;
        let v = serde_json::to_value(value).map_err(|e| super::Reject::new("internal", e.to_string()))?;
        cx.index_put(key, v);
        Ok(())
    }

    /// Removes a workflow's index row, as the effect of a transition.
    pub fn index_delete<D>(&self, cx: &mut super::Cx<'_, D>, parts: &[&str]) -> Result<(), super::Reject> {
        let key = self.key(parts).map_err(|e| super::Reject::new("invalid_input", e.to_string()))?;
        cx.index_delete(key);
        Ok(())
    }
}

/// Rows ordered by time within a group, each also found by its id: `{prefix}{group}/{time}{id}` (the time as
/// eight big-endian bytes of [`keys::time_key`]) and `{id_prefix}{id}`, whose value is the row's key. The layout
/// of the usage records since the first build.
pub struct TimedTable<V> {
    prefix: &'static str,
    id_prefix: &'static str,
    _value: PhantomData<fn() -> V>,
}

/// Rows a range scan reads per page.
const PAGE: usize = 1000;

impl<V: Serialize + DeserializeOwned> TimedTable<V> {
    pub const fn new(prefix: &'static str, id_prefix: &'static str) -> Self {
        Self { prefix, id_prefix, _value: PhantomData }
    }

    fn group_prefix(&self, group: &str) -> Vec<u8> {
        format!("{}{group}/", self.prefix).into_bytes()
    }

    fn id_key(&self, id: &str) -> Vec<u8> {
        format!("{}{id}", self.id_prefix).into_bytes()
    }

    /// The sweeper's rule for this table: rows whose `field` plus `grace` has passed (service time) are deleted with
    /// their id's lookup, whose value names the id in `id_field` ([`super::sweep`]).
    pub fn sweep(
        &self,
        kind: &'static str,
        field: &'static str,
        grace: chrono::TimeDelta,
        id_field: &'static str,
    ) -> super::sweep::Rule {
        super::sweep::Rule {
            kind,
            prefix: self.prefix,
            field,
            grace,
            clock: super::sweep::RuleClock::Service,
            id_index: Some((self.id_prefix, id_field)),
        }
    }

    /// The row stored under `id`, if any.
    pub async fn find(&self, r: &impl AsRef<Records>, id: &str) -> Result<Option<V>, Error> {
        let store = &r.as_ref().store;
        let Some(key) = store.get(Table::Index, &self.id_key(id)).await.map_err(storage)? else { return Ok(None) };
        match store.get(Table::Records, &key).await.map_err(storage)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Storage(format!("{id}: {e}"))),
            None => Ok(None),
        }
    }

    /// Writes a row and its id in `w`; the id must be new (a key the store itself refuses to create twice, so that
    /// two nodes taking the same id at once cannot both write it: the commit answers [`Error::Conflict`]).
    pub fn put(
        &self,
        w: &mut Writes,
        group: &str,
        at: chrono::DateTime<chrono::Utc>,
        id: &str,
        value: &V,
    ) -> Result<(), Error> {
        if group.is_empty() || group.contains('/') {
            return Err(Error::InvalidInput(format!("a group of {} is empty or holds `/`", self.prefix)));
        }
        let mut key = self.group_prefix(group);
        keys::push_u64(&mut key, keys::time_key(at));
        key.extend_from_slice(id.as_bytes());
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("{id}: {e}")))?;
        w.batch.put(Table::Records, key.clone(), bytes);
        w.batch.put_new(Table::Index, self.id_key(id), key);
        Ok(())
    }

    /// The rows of `group` whose time is in `[from, to)`, in time order, read a page at a time. Rows that do not
    /// decode are skipped and logged.
    pub async fn between(
        &self,
        r: &impl AsRef<Records>,
        group: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<V>, Error> {
        let store = &r.as_ref().store;
        let prefix = self.group_prefix(group);
        let (mut lo, mut hi) = (prefix.clone(), prefix);
        keys::push_u64(&mut lo, keys::time_key(from));
        keys::push_u64(&mut hi, keys::time_key(to));
        let mut out = Vec::new();
        let mut start = Bound::Included(lo);
        loop {
            let page =
                store.scan(Table::Records, start, Bound::Excluded(hi.clone()), PAGE, false).await.map_err(storage)?;
            for (_, v) in &page {
                match serde_json::from_slice(v) {
                    Ok(value) => out.push(value),
                    Err(e) => tracing::warn!(table = self.prefix, error = %e, "a row that does not decode"),
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE => start = Bound::Excluded(k.clone()),
                _ => return Ok(out),
            }
        }
    }
}

/// Record writes that become durable together: committed alone ([`Engine::write`]) or with an input.
#[derive(Debug, Default)]
pub struct Writes {
    batch: Batch,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The store's batch of these writes: for the engine's commits, and for a loader that fills a store before
    /// any engine opens it (the benches).
    pub fn into_batch(self) -> Batch {
        self.batch
    }
}

impl Engine {
    /// Commits record writes (durably, in the next group commit).
    pub async fn write(&self, w: Writes) -> Result<(), Error> {
        if w.is_empty() {
            return Ok(());
        }
        self.inner.committer.commit(w.into_batch()).await.map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_prefix_and_the_parts() {
        const T: RecordTable<u32> = RecordTable::records("thing/");
        assert_eq!(T.key(&["a", "b"]).unwrap(), "thing/a/b");
        assert_eq!(T.key(&["a", "x/y@z"]).unwrap(), "thing/a/x/y@z", "the last part may hold a slash");
        assert!(T.key(&["a/b", "c"]).is_err(), "a part rows are listed under may not");
        assert!(T.key(&["", "c"]).is_err());
        assert_eq!(T.under(&["a"]).unwrap(), "thing/a/");
        assert_eq!(T.under(&[]).unwrap(), "thing/");
    }

    /// The store's tables and batches are the engine's: outside `src/engine` and `src/store` nothing names them
    /// (the engine's `store()` and `committer()` are private to it, so the compiler refuses those already).
    #[test]
    fn nothing_outside_the_engine_and_the_store_names_the_store() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = vec![];
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
                if rel == "engine" || rel == "store" {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for needle in ["store::Table", "store::Batch", "store::Committer", "Table::Records", "Table::Index"] {
                    if text.contains(needle) {
                        offenders.push(format!("{rel}: {needle}"));
                    }
                }
                for line in text.lines().filter(|l| l.trim_start().starts_with("use crate::store::{")) {
                    if ["Table", "Batch", "Committer"].iter().any(|t| line.contains(t)) {
                        offenders.push(format!("{rel}: {line}"));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}

#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};

    /// The modules of `src/<dir>/` and which of their siblings each uses (`super::x`, `crate::<dir>::x`), comments
    /// left out.
    fn graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().to_string()))
            .filter(|n| n != "mod")
            .collect();
        let mut g = BTreeMap::new();
        for name in &names {
            let code = code_of(&root, name);
            let uses = names
                .iter()
                .filter(|other| *other != name)
                .filter(|other| {
                    [format!("super::{other}"), format!("crate::{dir}::{other}")].iter().any(|p| {
                        code.match_indices(p.as_str())
                            .any(|(i, _)| !code[i + p.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
                    })
                })
                .cloned()
                .collect();
            g.insert(name.clone(), uses);
        }
        g
    }

    /// The code of module `name` of `root` (a file, or a directory's files), without comments and unit tests:
    /// unit tests may reach anywhere; the code they test may not.
    fn code_of(root: &std::path::Path, name: &str) -> String {
        let file = root.join(format!("{name}.rs"));
        let mut files = vec![];
        if file.is_file() {
            files.push(file);
        } else if let Ok(dir) = std::fs::read_dir(root.join(name)) {
            files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rs")));
        }
        let mut code = String::new();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            for l in text.lines() {
                code.push_str(l.split("//").next().unwrap_or(""));
                code.push('\n');
            }
        }
        code
    }

    /// The workflows build every message, call and reply from a type (`domain::protocol`), never with `json!`,
    /// so that a renamed field fails to compile instead of failing in the receiver.
    #[test]
    fn the_domain_builds_no_json_by_hand() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join("domain");
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            let name = e.path().file_stem().unwrap().to_string_lossy().to_string();
            let code = code_of(&root, &name);
            assert!(!code.contains("json!"), "src/domain/{name}.rs builds JSON by hand");
        }
    }

    fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == n) {
                return Some(path[i..].to_vec());
            }
            if done.contains(n) {
                return None;
            }
            path.push(n.to_string());
            for m in g.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, g, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        g.keys().find_map(|n| visit(n, g, &mut vec![], &mut done))
    }

    /// Adapters, use cases and rules import one way: no module of `src/http/`, `src/domain/` or `src/app/`
    /// reaches back to one that uses it.
    #[test]
    fn no_module_cycles_in_http_domain_or_app() {
        for dir in ["http", "domain", "app"] {
            let g = graph(dir);
            assert!(g.len() > 3, "{dir}: {g:?}");
            assert_eq!(cycle(&g), None, "a cycle among src/{dir}/ modules: {g:#?}");
        }
    }
}
