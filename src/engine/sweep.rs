//! Records that end at a time of their own (sessions, pending 免登 grants, used-link records, console sessions)
//! are deleted once that time has passed, by a task of the engine's, never on a request path.
//!
//! Each rule names a key prefix of the records table and the JSON field of the record that says until when it
//! must be kept. A pass reads at most a slice of each prefix from where the last pass stopped and deletes what
//! has ended in one batch, so no pass holds the committer up for long, however many records there are; the
//! cursor wraps at the end of the prefix. Times are compared on the clock the records were written with
//! ([`RuleClock`]).

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::Engine;
use crate::store::{prefix_end, Batch, Table};

/// One kind of record that ends.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name on `/metrics` (`marketflow_swept_records_total{kind}`).
    pub kind: &'static str,
    /// The key prefix in the records table.
    pub prefix: &'static str,
    /// The field holding the time the record must be kept until.
    pub field: &'static str,
    /// Kept this much longer than the field says (records of older builds whose field says when they were made).
    pub grace: TimeDelta,
    /// The clock the field was written with: the engine's (service time) or the wall clock.
    pub clock: RuleClock,
    /// A lookup of the record by id in the index table, deleted with it: `(index prefix, id field)`.
    pub id_index: Option<(&'static str, &'static str)>,
}

/// Which clock a rule's times are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleClock {
    /// The engine's clock (scaled in demos and tests): sessions, grants, links.
    Service,
    /// The wall clock: the console's sessions (an operator's 8 hours are real hours).
    Wall,
}

/// Records read per rule per slice.
pub const SLICE: usize = 1_000;
/// Slices per rule per pass: a long table (usage records past their retention) is worked through a bounded slice
/// at a time, each its own commit, so the committer is never held up for long.
const SLICES_PER_PASS: usize = 20;

/// Records deleted so far, per rule, in the rules' order.
#[derive(Debug, Default)]
pub struct SweepStats {
    swept: Vec<(&'static str, AtomicU64)>,
}

impl SweepStats {
    /// `(kind, records deleted)` per rule.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        self.swept.iter().map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect()
    }
}

/// Starts sweeping every `every` (real time) with these rules. Must run inside an actix system; ends with the
/// engine.
pub fn start(engine: &Engine, rules: Vec<Rule>, every: Duration) -> Arc<SweepStats> {
    let stats = Arc::new(SweepStats { swept: rules.iter().map(|r| (r.kind, AtomicU64::new(0))).collect() });
    let (engine, out) = (engine.clone(), stats.clone());
    actix_rt::spawn(async move {
        let mut cursors: Vec<Option<Vec<u8>>> = vec![None; rules.len()];
        loop {
            tokio::time::sleep(every).await;
            if engine.stopping() {
                return;
            }
            for (i, rule) in rules.iter().enumerate() {
                for _ in 0..SLICES_PER_PASS {
                    match pass(&engine, rule, cursors[i].take()).await {
                        Ok((deleted, next)) => {
                            stats.swept[i].1.fetch_add(deleted, Ordering::Relaxed);
                            cursors[i] = next;
                        }
                        Err(e) => {
                            tracing::warn!(kind = rule.kind, error = %e, "sweeping ended records failed; retried next pass");
                        }
                    }
                    if cursors[i].is_none() || engine.stopping() {
                        break;
                    }
                }
            }
        }
    });
    out
}

/// One slice of one rule: the records deleted and where the next slice starts (`None`: from the beginning).
async fn pass(engine: &Engine, rule: &Rule, from: Option<Vec<u8>>) -> Result<(u64, Option<Vec<u8>>), String> {
    let prefix = rule.prefix.as_bytes();
    let start = match from {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included(prefix.to_vec()),
    };
    let rows = engine
        .store()
        .scan(Table::Records, start, prefix_end(prefix), SLICE, false)
        .await
        .map_err(|e| e.to_string())?;
    let now: DateTime<Utc> = match rule.clock {
        RuleClock::Service => engine.clock().now(),
        RuleClock::Wall => Utc::now(),
    };
    let mut batch = Batch::new();
    let mut deleted = 0;
    for (key, value) in &rows {
        let value = serde_json::from_slice::<serde_json::Value>(value).ok();
        let until = value
            .as_ref()
            .and_then(|v| v.get(rule.field).cloned())
            .and_then(|t| serde_json::from_value::<DateTime<Utc>>(t).ok());
        // A record without a readable time is left alone: better kept than lost. Strictly after: a check that
        // admits its time itself (the 免登 window's `<=`) must still find the record then.
        if until.is_some_and(|t| t + rule.grace < now) {
            batch.delete(Table::Records, key.clone());
            if let Some((prefix, field)) = rule.id_index {
                if let Some(id) = value.as_ref().and_then(|v| v.get(field)).and_then(|i| i.as_str()) {
                    batch.delete(Table::Index, format!("{prefix}{id}").into_bytes());
                }
            }
            deleted += 1;
        }
    }
    if deleted > 0 {
        engine.committer().commit(batch).await.map_err(|e| e.to_string())?;
    }
    let next = if rows.len() < SLICE { None } else { rows.last().map(|(k, _)| k.clone()) };
    Ok((deleted, next))
}
