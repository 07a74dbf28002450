//! Usage records reported by Zilliz Cloud's services: validated, stored idempotently by record id, and read back
//! per organization and window when a window is metered.

use std::ops::Bound;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::OrgId;
use crate::domain::pricing::{numerator, Catalog, MilliCu};
use crate::store::{keys, Batch, Committer, Store, Table};

/// The longest interval one record may cover; windows look back this far for overlapping records.
pub const MAX_RECORD: TimeDelta = TimeDelta::hours(24);
/// How far in the future an interval may end (clock skew between services).
pub const MAX_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How old a record may be: older ones can no longer be billed by the marketplace.
pub const MAX_AGE: TimeDelta = TimeDelta::days(7);

/// A stored usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub record_id: String,
    pub org_id: OrgId,
    pub resource_id: String,
    pub cu_type: String,
    pub milli_cu: MilliCu,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// Why a record was refused; `code` is what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code, message: message.into() }
}

fn check_id(what: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(invalid("invalid_id", format!("{what}: 1 to 128 of A-Z a-z 0-9 - _ . :")));
    }
    Ok(())
}

/// Validates a record as it arrives.
#[allow(clippy::too_many_arguments)]
pub fn parse(
    catalog: &Catalog,
    now: DateTime<Utc>,
    record_id: String,
    org_id: OrgId,
    resource_id: String,
    cu_type: String,
    cu: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<UsageRecord, Invalid> {
    check_id("record_id", &record_id)?;
    check_id("resource_id", &resource_id)?;
    if catalog.price(&cu_type).is_none() {
        let known: Vec<_> = catalog.prices.keys().cloned().collect();
        return Err(invalid("unknown_cu_type", format!("cu_type is one of {}", known.join(", "))));
    }
    let milli_cu = MilliCu::from_f64(cu)
        .ok_or_else(|| invalid("invalid_cu", "cu is a number above 0, at most 10000, with at most 3 decimals"))?;
    if end <= start {
        return Err(invalid("invalid_interval", "end must be after start"));
    }
    if end - start > MAX_RECORD {
        return Err(invalid("invalid_interval", "one record covers at most 24 hours"));
    }
    if end > now + MAX_SKEW {
        return Err(invalid("interval_in_future", "the interval ends in the future"));
    }
    if start < now - MAX_AGE {
        return Err(invalid("interval_too_old", "the interval is older than 7 days"));
    }
    Ok(UsageRecord { record_id, org_id, resource_id, cu_type, milli_cu, start, end, received_at: now })
}

fn record_key(r: &UsageRecord) -> Vec<u8> {
    let mut k = format!("usage/{}/", r.org_id).into_bytes();
    keys::push_u64(&mut k, keys::time_key(r.start));
    k.extend_from_slice(r.record_id.as_bytes());
    k
}

fn id_key(record_id: &str) -> Vec<u8> {
    format!("usage-id/{record_id}").into_bytes()
}

/// Whether a record was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same record was stored before (a retry of the service).
    Repeated,
}

/// Stores a record once; a different record under a known id is a conflict.
pub async fn store(store: &dyn Store, committer: &Committer, r: &UsageRecord) -> Result<Stored, StoreError> {
    if let Some(existing) =
        store.get(Table::Index, &id_key(&r.record_id)).map_err(|e| StoreError::Storage(e.to_string()))?
    {
        let key: Vec<u8> = existing;
        let old: Option<UsageRecord> = store
            .get(Table::Records, &key)
            .map_err(|e| StoreError::Storage(e.to_string()))?
            .and_then(|b| serde_json::from_slice(&b).ok());
        return match old {
            Some(o) if same(&o, r) => Ok(Stored::Repeated),
            _ => Err(StoreError::Conflict),
        };
    }
    let mut b = Batch::new();
    let key = record_key(r);
    b.put(Table::Records, key.clone(), serde_json::to_vec(r).map_err(|e| StoreError::Storage(e.to_string()))?);
    b.put(Table::Index, id_key(&r.record_id), key);
    committer.commit(b).await.map_err(|e| StoreError::Storage(e.to_string()))?;
    Ok(Stored::New)
}

fn same(a: &UsageRecord, b: &UsageRecord) -> bool {
    a.org_id == b.org_id
        && a.resource_id == b.resource_id
        && a.cu_type == b.cu_type
        && a.milli_cu == b.milli_cu
        && a.start == b.start
        && a.end == b.end
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("a different record was stored under this record_id")]
    Conflict,
    #[error("storage: {0}")]
    Storage(String),
}

/// The records of `org` that overlap `[ws, we)`.
pub fn overlapping(
    store: &dyn Store,
    org: &OrgId,
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> Result<Vec<UsageRecord>, String> {
    let prefix = format!("usage/{org}/").into_bytes();
    let mut from = prefix.clone();
    keys::push_u64(&mut from, keys::time_key(ws - MAX_RECORD));
    let mut to = prefix;
    keys::push_u64(&mut to, keys::time_key(we));
    let mut out = Vec::new();
    let mut start = Bound::Included(from);
    loop {
        let page =
            store.scan(Table::Records, start, Bound::Excluded(to.clone()), 1000, false).map_err(|e| e.to_string())?;
        for (_, v) in &page {
            if let Ok(r) = serde_json::from_slice::<UsageRecord>(v) {
                if r.end > ws && r.start < we {
                    out.push(r);
                }
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => start = Bound::Excluded(k.clone()),
            _ => return Ok(out),
        }
    }
}

/// The exact numerators of a window per metering item (`key|assit`).
pub fn window_numerators(
    catalog: &Catalog,
    records: &[UsageRecord],
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> std::collections::BTreeMap<(String, String), u128> {
    let mut out = std::collections::BTreeMap::new();
    for r in records {
        if let Some(p) = catalog.price(&r.cu_type) {
            *out.entry((p.metering_key.clone(), p.metering_assit.clone())).or_insert(0) +=
                numerator(p, r.milli_cu, r.start, r.end, ws, we);
        }
    }
    out
}
