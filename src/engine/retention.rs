//! Nothing grows without bound: journal entries older than the records' retention are trimmed, for live entities
//! too (an entity's state is its record, never its journal), and the stored outcome of an input goes once it is
//! older than the idempotency retention. Records outside entities (usage, audit, sessions) are the sweeper's
//! ([`super::sweep`]); metering windows are bounded in their record and trimmed here with the journal.
//!
//! A task of the engine's reads one slice of the journal table at a time, from where the last slice stopped, and
//! deletes what is past its time in one commit per slice, so no pass holds the committer up however long the
//! journals are. A node of several trims only the shards it holds. An outcome is deleted once: a pass over the
//! whole table deletes the outcomes of entries between the horizon the previous pass began with and its own.
//!
//! The same task counts the stored rows by table and the store's bytes for `/metrics` (counting reads every key:
//! once per pass of the journal, never per scrape).

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::Engine;
use crate::store::{Batch, Table};

/// How long what is kept, on the service clock.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// An input's outcome (`MARKETFLOW_RETENTION_IDEMPOTENCY`).
    pub idempotency: TimeDelta,
    /// Journal entries (`MARKETFLOW_RETENTION_RECORDS`); never shorter than `idempotency`.
    pub records: TimeDelta,
}

/// Journal entries read per slice.
const SLICE: usize = 1_000;
/// Slices per pass; a pass ends earlier at the end of the table.
const SLICES_PER_PASS: usize = 20;

/// What retention did, and the store's size when last counted.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Journal entries deleted since the process started.
    pub journal_trimmed: AtomicU64,
    /// Stored outcomes deleted since the process started.
    pub outcomes_trimmed: AtomicU64,
    /// Passes over the whole journal table finished (each followed by a count of the tables).
    pub cycles: AtomicU64,
    /// Rows by table when last counted (every table, in [`Table::ALL`] order).
    pub records: Mutex<Vec<(&'static str, u64)>>,
    /// The store's bytes when last counted.
    pub bytes: AtomicU64,
}

/// The part of a journal entry retention reads.
#[derive(serde::Deserialize)]
struct Head {
    at: DateTime<Utc>,
    input_id: String,
}

/// Where the journal trim stands between passes.
struct Cursor {
    /// The next slice starts after this key (`None`: at the table's start).
    after: Option<Vec<u8>>,
    /// Outcomes of entries older than this were deleted by a finished cycle over the table.
    done_below: DateTime<Utc>,
    /// The idempotency horizon the current cycle began with.
    cycle_horizon: Option<DateTime<Utc>>,
}

/// Starts trimming every `every` (real time). Must run inside an actix system; ends with the engine.
pub fn start(engine: &Engine, retention: Retention, every: Duration) -> Arc<RetentionStats> {
    let stats = Arc::new(RetentionStats::default());
    let (engine, out) = (engine.clone(), stats.clone());
    actix_rt::spawn(async move {
        let mut cursor = Cursor { after: None, done_below: DateTime::<Utc>::MIN_UTC, cycle_horizon: None };
        count(&engine, &stats).await;
        loop {
            tokio::time::sleep(every).await;
            if engine.stopping() {
                return;
            }
            for _ in 0..SLICES_PER_PASS {
                match slice(&engine, &retention, &mut cursor).await {
                    Ok((entries, outcomes)) => {
                        stats.journal_trimmed.fetch_add(entries, Ordering::Relaxed);
                        stats.outcomes_trimmed.fetch_add(outcomes, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "trimming journals failed; retried next pass"),
                }
                if cursor.after.is_none() || engine.stopping() {
                    break;
                }
            }
            if cursor.after.is_none() {
                count(&engine, &stats).await;
                stats.cycles.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    out
}

/// One slice of the journal table: deletes entries past the records' horizon with their outcomes, and the outcomes
/// of entries past the idempotency horizon not deleted by an earlier cycle. Answers (entries, outcomes) deleted.
async fn slice(engine: &Engine, retention: &Retention, cursor: &mut Cursor) -> Result<(u64, u64), String> {
    let now = engine.clock().now();
    let outcome_horizon = now - retention.idempotency;
    let entry_horizon = now - retention.records;
    let horizon = *cursor.cycle_horizon.get_or_insert(outcome_horizon);
    let start = match cursor.after.take() {
        Some(k) => Bound::Excluded(k),
        None => Bound::Unbounded,
    };
    let rows = super::services::scan_work(engine, Table::Journal, None, start, Bound::Unbounded, SLICE)
        .await
        .map_err(|e| e.to_string())?;
    let mut batch = Batch::new();
    let (mut entries, mut outcomes) = (0, 0);
    for (key, value) in &rows {
        let Ok(head) = serde_json::from_slice::<Head>(value) else { continue };
        // `entity prefix ‖ seq (8 bytes)`; the outcome's key is `entity prefix ‖ input id`.
        let Some(prefix) = key.len().checked_sub(8).map(|n| &key[..n]) else { continue };
        let outcome_key = || [prefix, head.input_id.as_bytes()].concat();
        if head.at < entry_horizon {
            batch.delete(Table::Journal, key.clone());
            batch.delete(Table::Idempotency, outcome_key());
            entries += 1;
            outcomes += 1;
        } else if head.at < outcome_horizon && head.at >= cursor.done_below {
            batch.delete(Table::Idempotency, outcome_key());
            outcomes += 1;
        }
    }
    if !batch.is_empty() {
        engine.committer().commit(batch).await.map_err(|e| e.to_string())?;
    }
    if rows.len() < SLICE {
        // The end of the table: the next cycle needs to look only at entries from this cycle's horizon on.
        cursor.done_below = horizon;
        cursor.cycle_horizon = None;
        cursor.after = None;
    } else {
        cursor.after = rows.last().map(|(k, _)| k.clone());
    }
    Ok((entries, outcomes))
}

/// Counts the rows of every table and the store's bytes.
async fn count(engine: &Engine, stats: &RetentionStats) {
    let mut records = Vec::new();
    for table in Table::ALL {
        match engine.store().count_prefix(table, &[]).await {
            Ok(n) => records.push((table.name(), n)),
            Err(e) => {
                tracing::warn!(error = %e, "counting stored records failed");
                return;
            }
        }
    }
    if let Ok(mut r) = stats.records.lock() {
        *r = records;
    }
    match engine.store().size_bytes().await {
        Ok(b) => stats.bytes.store(b, Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %e, "reading the store's size failed"),
    }
}
