//! The read side for operators: entities by kind and state, one entity with its timers and pending effects,
//! journals. Reads go to the store (the truth), never to live actors.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::*;
use super::services::pending_effects;
use super::{Engine, Error};
use crate::store::{keys, prefix_end, Table};

/// A filter over entities.
#[derive(Debug, Clone, Default)]
pub struct EntityFilter {
    pub kind: Option<String>,
    pub state: Option<String>,
    /// Only entities with at least one pending timer.
    pub waiting_on_timer: bool,
    /// Only entities that need a person (any cause of [`super::attention`]).
    pub needs_attention: bool,
    /// Only entities with a concern of this cause.
    pub cause: Option<String>,
    /// Only entities that have been in their state at least this long.
    pub min_time_in_state: Option<chrono::TimeDelta>,
}

/// A page of entities and where the next one starts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A pending timer as operators read it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimerView {
    pub entity: String,
    pub name: String,
    pub due: DateTime<Utc>,
    /// Service seconds until it fires (negative when overdue).
    pub remaining_seconds: i64,
    pub target: TimerTarget,
}

impl TimerView {
    pub fn new(row: &TimerRow, now: DateTime<Utc>) -> Self {
        Self {
            entity: row.entity.to_string(),
            name: row.name.clone(),
            due: row.due,
            remaining_seconds: (row.due - now).num_seconds(),
            target: row.target.clone(),
        }
    }
}

/// One entity with everything an operator asks about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EntityView {
    pub kind: String,
    pub id: String,
    pub state: String,
    pub data: serde_json::Value,
    pub definition: String,
    pub version: u32,
    pub fingerprint: String,
    pub terminal: bool,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_since: DateTime<Utc>,
    pub seq: u64,
    pub timers: Vec<TimerView>,
    pub pending_messages: Vec<OutboxRow>,
    pub pending_calls: Vec<CallRow>,
    pub needs_attention: bool,
    /// Why it needs a person, each concern with its next step.
    pub attention: Vec<super::attention::AttentionRow>,
    pub last_error: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Internal(format!("stored value does not decode: {e}")))
}

/// Whether a record passes the filter's conditions on the record itself.
fn keeps(filter: &EntityFilter, r: &EntityRecord, now: DateTime<Utc>) -> bool {
    !(filter.state.as_ref().is_some_and(|s| *s != r.state)
        || (filter.waiting_on_timer && r.timers.is_empty())
        || filter.min_time_in_state.is_some_and(|d| now - r.state_since < d))
}

fn page_of(items: Vec<EntityRecord>, limit: usize) -> Page<EntityRecord> {
    let next_cursor = if items.len() == limit { items.last().map(|r| format!("{}/{}", r.kind, r.id)) } else { None };
    Page { items, next_cursor }
}

impl Engine {
    /// The stored record of an entity.
    pub async fn record(&self, key: &EntityKey) -> Result<Option<EntityRecord>, Error> {
        match self.inner.store.get(Table::Entities, &key.prefix()).await? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    /// One entity as operators see it.
    pub async fn entity_view(&self, key: &EntityKey) -> Result<EntityView, Error> {
        let r = self.record(key).await?.ok_or(Error::NotFound)?;
        let now = self.inner.clock.now();
        let (msgs, calls) = pending_effects(self, key).await?;
        let terminal = self.inner.registry.kind(&r.kind).map(|k| k.current.is_terminal(&r.state)).unwrap_or(false);
        let mut timers: Vec<TimerView> = r
            .timers
            .iter()
            .map(|(name, t)| TimerView {
                entity: key.to_string(),
                name: name.clone(),
                due: t.due,
                remaining_seconds: (t.due - now).num_seconds(),
                target: TimerTarget::Entity,
            })
            .collect();
        for c in &calls {
            if let (CallStatus::Retrying, Some(due)) = (c.status, c.next_attempt_at) {
                timers.push(TimerView {
                    entity: key.to_string(),
                    name: format!("retry:{}", c.id),
                    due,
                    remaining_seconds: (due - now).num_seconds(),
                    target: TimerTarget::CallRetry { call_id: c.id.clone() },
                });
            }
        }
        timers.sort_by_key(|t| t.due);
        let attention = self.attention_of(key).await?;
        let needs_attention = !attention.is_empty() || calls.iter().any(|c| c.status == CallStatus::NeedsAttention);
        let last_error = calls.iter().filter_map(|c| c.last_error.clone()).next_back();
        Ok(EntityView {
            kind: r.kind,
            id: r.id,
            state: r.state,
            data: r.data,
            definition: r.definition,
            version: r.version,
            fingerprint: r.fingerprint,
            terminal,
            paused: r.paused,
            created_at: r.created_at,
            updated_at: r.updated_at,
            state_since: r.state_since,
            seq: r.seq,
            timers,
            pending_messages: msgs,
            pending_calls: calls,
            needs_attention,
            attention,
            last_error,
        })
    }

    /// Entities matching `filter`, in key order, from `cursor` (exclusive), at most `limit`. A filter may read
    /// many records to find a few (sled reads them on the asking thread), so the scan runs on the blocking pool,
    /// never on the threads that serve requests and run actors.
    pub async fn list_entities(
        &self,
        filter: &EntityFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EntityRecord>, Error> {
        let (engine, filter, cursor) = (self.clone(), filter.clone(), cursor.map(str::to_string));
        super::offload(async move { engine.scan_entities(&filter, cursor.as_deref(), limit).await }).await?
    }

    async fn scan_entities(
        &self,
        filter: &EntityFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EntityRecord>, Error> {
        let after = match cursor {
            Some(c) => {
                let (kind, id) = c.split_once('/').ok_or_else(|| Error::InvalidInput("bad cursor".into()))?;
                Some(EntityKey { kind: kind.into(), id: id.into() })
            }
            None => None,
        };
        if filter.needs_attention || filter.cause.is_some() {
            return self.scan_attention(filter, after, limit).await;
        }
        let prefix = match &filter.kind {
            Some(k) => {
                let mut p = Vec::new();
                keys::push_str(&mut p, k);
                p
            }
            None => Vec::new(),
        };
        let mut start = match &after {
            Some(k) => Bound::Excluded(k.prefix()),
            None => Bound::Included(prefix.clone()),
        };
        let end = prefix_end(&prefix);
        let now = self.inner.clock.now();
        let mut items = Vec::new();
        let mut last_key = None;
        'outer: loop {
            let page = self.inner.store.scan(Table::Entities, start.clone(), end.clone(), 500, false).await?;
            if page.is_empty() {
                break;
            }
            for (k, v) in &page {
                last_key = Some(k.clone());
                let r: EntityRecord = decode(v)?;
                if !keeps(filter, &r, now) {
                    continue;
                }
                items.push(r);
                if items.len() == limit {
                    break 'outer;
                }
            }
            match &last_key {
                Some(k) if page.len() == 500 => start = Bound::Excluded(k.clone()),
                _ => break,
            }
        }
        Ok(page_of(items, limit))
    }

    /// The entities with a concern, from the attention index (never a scan of every entity).
    async fn scan_attention(
        &self,
        filter: &EntityFilter,
        after: Option<EntityKey>,
        limit: usize,
    ) -> Result<Page<EntityRecord>, Error> {
        let keys = self.attention_entities(filter.cause.as_deref(), filter.kind.as_deref()).await?;
        let now = self.inner.clock.now();
        let mut items = Vec::new();
        let range = match &after {
            Some(a) => keys.range((Bound::Excluded(a.clone()), Bound::Unbounded)),
            None => keys.range(..),
        };
        for key in range {
            let Some(r) = self.record(key).await? else { continue };
            if keeps(filter, &r, now) {
                items.push(r);
                if items.len() == limit {
                    break;
                }
            }
        }
        Ok(page_of(items, limit))
    }

    /// An entity's journal from sequence number `after` (exclusive), at most `limit`.
    pub async fn journal(&self, key: &EntityKey, after: u64, limit: usize) -> Result<Page<JournalEntry>, Error> {
        let start = Bound::Excluded(journal_key(key, after));
        let end = prefix_end(&key.prefix());
        let rows = self.inner.store.scan(Table::Journal, start, end, limit, false).await?;
        let items: Vec<JournalEntry> = rows.iter().map(|(_, v)| decode(v)).collect::<Result<_, _>>()?;
        let next_cursor = if items.len() == limit { items.last().map(|e| e.seq.to_string()) } else { None };
        Ok(Page { items, next_cursor })
    }
}
