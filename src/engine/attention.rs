//! Why an entity needs a person: one row per concern in the index table, `attention/{cause}/{kind}/{id}/{subject}`,
//! written by the very commit that raises or settles it.
//!
//! Two sources, one index. A workflow says which of its states and data need a person
//! ([`super::Workflow::attention`]: an activation past its deadline, a window the marketplace refused for good);
//! the engine diffs that before and after each transition and writes only the change, so a transition that
//! leaves a concern in place writes nothing. The engine adds its own causes: a call out of attempts, a call whose
//! outcome is unknown, a message it cannot deliver. Lists by cause and the counts on `/metrics` read the index,
//! never every entity.
//!
//! An operator may dismiss a concern (audited): its row goes until the concern arises again.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{CallRow, CallStatus, EntityKey, EntityRecord, OutboxRow};
use super::{Engine, Error};
use crate::store::{prefix_end, Batch, Table};

/// The index rows' prefix.
pub const PREFIX: &str = "attention/";
/// Marks a store whose workflow concerns were indexed (a store of a build before the index is indexed once).
const INDEXED: &[u8] = b"attention.indexed";

/// A call used every attempt its policy allows and failed each time.
pub const CALL_OUT_OF_ATTEMPTS: &str = "call_out_of_attempts";
/// A call that may have taken effect (a push interrupted by a crash, a timeout): never sent again blindly.
pub const CALL_OUTCOME_UNKNOWN: &str = "call_outcome_unknown";
/// A message to another entity that its receiver refuses to take (not a transient failure).
pub const MESSAGE_UNDELIVERABLE: &str = "message_undeliverable";

/// A cause as the console, `ctl` and the docs describe it.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Cause {
    /// Stable code (a label on `/metrics`, a filter of the list).
    pub name: &'static str,
    /// What it covers, in words.
    pub covers: &'static str,
    /// What a person does about it.
    pub next_step: &'static str,
}

/// The engine's own causes; the workflows' follow in the registry's order.
pub const ENGINE_CAUSES: &[Cause] = &[
    Cause {
        name: CALL_OUT_OF_ATTEMPTS,
        covers: "an external call failed on every attempt its policy allows",
        next_step: "read its last error; fix the cause (credentials, the marketplace), then retry it, or cancel it",
    },
    Cause {
        name: CALL_OUTCOME_UNKNOWN,
        covers: "an at-most-once call (a push) was interrupted or timed out: it may have taken effect",
        next_step: "check the marketplace's bill, then mark it pushed, push it again, or cancel it",
    },
    Cause {
        name: MESSAGE_UNDELIVERABLE,
        covers: "a message between entities that its receiver refuses; later messages of the sender wait behind it",
        next_step: "read the log line of the refusal; it is delivered again at the next start once fixed",
    },
];

/// One concern of a workflow: its cause, what it is about within the entity, and the next step in words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Concern {
    pub cause: &'static str,
    /// Which part of the entity (a window's start, a call's id); empty for the entity as a whole.
    pub subject: String,
    pub next_step: String,
}

/// A concern as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttentionRow {
    pub cause: String,
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub subject: String,
    pub next_step: String,
    /// When the concern arose (service time).
    pub since: DateTime<Utc>,
}

impl AttentionRow {
    pub fn entity(&self) -> EntityKey {
        EntityKey { kind: self.kind.clone(), id: self.id.clone() }
    }
}

/// The index key of a concern.
pub fn key(cause: &str, entity: &EntityKey, subject: &str) -> Vec<u8> {
    format!("{PREFIX}{cause}/{}/{}/{subject}", entity.kind, entity.id).into_bytes()
}

/// Adds to `batch` the row of a concern that arose now.
pub fn raise(batch: &mut Batch, entity: &EntityKey, concern: &Concern, now: DateTime<Utc>) {
    let row = AttentionRow {
        cause: concern.cause.to_string(),
        kind: entity.kind.clone(),
        id: entity.id.clone(),
        subject: concern.subject.clone(),
        next_step: concern.next_step.clone(),
        since: now,
    };
    if let Ok(v) = serde_json::to_vec(&row) {
        batch.put(Table::Index, key(concern.cause, entity, &concern.subject), v);
    }
}

/// Adds to `batch` the removal of a settled concern.
pub fn settle(batch: &mut Batch, entity: &EntityKey, cause: &str, subject: &str) {
    batch.delete(Table::Index, key(cause, entity, subject));
}

/// What changed between the concerns before and after a transition: raised (`true`) or settled (`false`).
pub fn changes(before: Vec<Concern>, after: Vec<Concern>) -> Vec<(Concern, bool)> {
    let had: BTreeMap<(&'static str, String), Concern> =
        before.into_iter().map(|c| ((c.cause, c.subject.clone()), c)).collect();
    let has: BTreeMap<(&'static str, String), Concern> =
        after.into_iter().map(|c| ((c.cause, c.subject.clone()), c)).collect();
    let mut out: Vec<(Concern, bool)> =
        has.iter().filter(|(k, _)| !had.contains_key(*k)).map(|(_, c)| (c.clone(), true)).collect();
    out.extend(had.into_iter().filter(|(k, _)| !has.contains_key(k)).map(|(_, c)| (c, false)));
    out
}

/// The concern of a call that an operator must settle.
pub fn of_call(row: &CallRow, unknown: bool) -> Concern {
    let (cause, step) = if unknown {
        (CALL_OUTCOME_UNKNOWN, "the outcome is unknown: check the marketplace, then mark it done, retry or cancel it")
    } else {
        (CALL_OUT_OF_ATTEMPTS, "out of attempts: fix the cause, then retry or cancel it")
    };
    let error = row.last_error.as_deref().unwrap_or("no error recorded");
    Concern { cause, subject: row.id.clone(), next_step: format!("{} {}: {error}; {step}", row.call, row.id) }
}

/// The concern of a message its receiver refuses.
pub fn of_message(row: &OutboxRow, error: &str) -> Concern {
    Concern {
        cause: MESSAGE_UNDELIVERABLE,
        subject: row.id.clone(),
        next_step: format!(
            "message {} to {} is refused ({error}); later messages of {} wait; fixed, it goes at the next start",
            row.id, row.to, row.from
        ),
    }
}

/// Adds to `batch` the removal of whatever an operator's action on a call settles.
pub fn settle_call(batch: &mut Batch, entity: &EntityKey, call_id: &str) {
    settle(batch, entity, CALL_OUT_OF_ATTEMPTS, call_id);
    settle(batch, entity, CALL_OUTCOME_UNKNOWN, call_id);
}

impl Engine {
    /// Every cause the index may hold: the engine's, then each workflow's.
    pub fn attention_causes(&self) -> Vec<Cause> {
        let mut causes = ENGINE_CAUSES.to_vec();
        for c in self.inner.registry.attention_causes() {
            if !causes.iter().any(|x| x.name == c.name) {
                causes.push(c);
            }
        }
        causes
    }

    /// Rows of the index under `attention/{cause}/` (every cause when `None`), at most `limit`.
    pub async fn attention_rows(&self, cause: Option<&str>, limit: usize) -> Result<Vec<AttentionRow>, Error> {
        let prefix = match cause {
            Some(c) => format!("{PREFIX}{c}/"),
            None => PREFIX.to_string(),
        }
        .into_bytes();
        let end = prefix_end(&prefix);
        let mut start = Bound::Included(prefix);
        let mut rows = Vec::new();
        while rows.len() < limit {
            let page = self.inner.store.scan(Table::Index, start.clone(), end.clone(), 1000, false).await?;
            for (_, v) in &page {
                if let Ok(r) = serde_json::from_slice::<AttentionRow>(v) {
                    rows.push(r);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
                _ => break,
            }
        }
        rows.truncate(limit);
        Ok(rows)
    }

    /// The concerns of one entity.
    pub async fn attention_of(&self, key: &EntityKey) -> Result<Vec<AttentionRow>, Error> {
        let mut out = Vec::new();
        for cause in self.attention_causes() {
            let prefix = format!("{PREFIX}{}/{}/{}/", cause.name, key.kind, key.id).into_bytes();
            let end = prefix_end(&prefix);
            let page = self.inner.store.scan(Table::Index, Bound::Included(prefix), end, 1000, false).await?;
            out.extend(page.iter().filter_map(|(_, v)| serde_json::from_slice::<AttentionRow>(v).ok()));
        }
        Ok(out)
    }

    /// Concerns counted by cause (every known cause, zero included), for `/metrics`.
    pub async fn attention_counts(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let mut counts: Vec<(&'static str, u64)> = self.attention_causes().iter().map(|c| (c.name, 0)).collect();
        let prefix = PREFIX.as_bytes().to_vec();
        let end = prefix_end(&prefix);
        let mut start = Bound::Included(prefix);
        loop {
            let page = self.inner.store.scan(Table::Index, start.clone(), end.clone(), 5000, false).await?;
            for (k, _) in &page {
                let cause = k.get(PREFIX.len()..).and_then(|r| r.split(|b| *b == b'/').next()).unwrap_or_default();
                if let Some(c) = counts.iter_mut().find(|(name, _)| name.as_bytes() == cause) {
                    c.1 += 1;
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 5000 => start = Bound::Excluded(k.clone()),
                _ => break,
            }
        }
        Ok(counts)
    }

    /// The entities with a concern (of `cause`, or any), in key order, after `cursor` (`kind/id`).
    pub(crate) async fn attention_entities(
        &self,
        cause: Option<&str>,
        kind: Option<&str>,
    ) -> Result<BTreeSet<EntityKey>, Error> {
        let rows = self.attention_rows(cause, usize::MAX).await?;
        Ok(rows.iter().filter(|r| kind.is_none_or(|k| k == r.kind)).map(AttentionRow::entity).collect())
    }

    /// An operator dismisses a concern (audited): it is gone until it arises again.
    pub async fn dismiss_attention(
        &self,
        key: &EntityKey,
        cause: &str,
        subject: &str,
        audit: &super::audit::Audit,
    ) -> Result<(), Error> {
        let k = self::key(cause, key, subject);
        if self.inner.store.get(Table::Index, &k).await?.is_none() {
            return Err(Error::NotFound);
        }
        let mut b = Batch::new();
        b.delete(Table::Index, k);
        audit.put(&mut b, key, self.inner.clock.now(), &Default::default());
        // The index is no shard's: any node may remove a row of it.
        self.inner.committer.commit(b).await.map_err(Error::from)
    }

    /// Indexes, once, the concerns of a store written before the index: every entity's workflow concerns and
    /// every call that needs attention. Idempotent (a crash part-way indexes again).
    pub(crate) async fn index_attention_once(&self) -> Result<(), Error> {
        let store = &self.inner.store;
        if store.get(Table::Meta, INDEXED).await?.is_some() {
            return Ok(());
        }
        let now = self.inner.clock.now();
        let mut start = Bound::Unbounded;
        let mut batch = Batch::new();
        loop {
            let page = store.scan(Table::Entities, start.clone(), Bound::Unbounded, 1000, false).await?;
            for (_, v) in &page {
                let Ok(r) = serde_json::from_slice::<EntityRecord>(v) else { continue };
                let key = EntityKey { kind: r.kind.clone(), id: r.id.clone() };
                for c in self.inner.registry.concerns(&r.kind, &r.state, &r.data) {
                    raise(&mut batch, &key, &c, now);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
                _ => break,
            }
        }
        let mut start = Bound::Unbounded;
        loop {
            let page = store.scan(Table::Effects, start.clone(), Bound::Unbounded, 1000, false).await?;
            for (_, v) in &page {
                let Ok(row) = serde_json::from_slice::<CallRow>(v) else { continue };
                if row.status == CallStatus::NeedsAttention {
                    let unknown = row.last_error.as_deref().is_some_and(|e| e.contains("outcome is unknown"));
                    raise(&mut batch, &row.entity, &of_call(&row, unknown), now);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
                _ => break,
            }
        }
        batch.put(Table::Meta, INDEXED.to_vec(), b"1".to_vec());
        self.inner.committer.commit(batch).await.map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(cause: &'static str, subject: &str) -> Concern {
        Concern { cause, subject: subject.into(), next_step: String::new() }
    }

    #[test]
    fn only_what_changed_is_written() {
        let before = vec![c("a", ""), c("w", "1"), c("w", "2")];
        let after = vec![c("a", ""), c("w", "2"), c("w", "3")];
        let ch = changes(before, after);
        assert_eq!(ch, vec![(c("w", "3"), true), (c("w", "1"), false)]);
        assert!(changes(vec![c("a", "")], vec![c("a", "")]).is_empty());
    }

    #[test]
    fn keys_group_by_cause_then_entity() {
        let e = EntityKey { kind: "metering".into(), id: "42".into() };
        assert_eq!(
            key("window_failed", &e, "2026-01-01T00:00:00Z"),
            b"attention/window_failed/metering/42/2026-01-01T00:00:00Z"
        );
    }
}
