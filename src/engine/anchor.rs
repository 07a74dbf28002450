//! The service clock's anchor: scaled time (demos, tests) continues across restarts from the anchor stored with
//! the data, so that service time never runs backwards and the downtime passes at the scale that was in force.
//! Read before the engine starts (the engine runs on the clock), so it writes to the store directly.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, ScaledClock, SystemClock};
use crate::store::{Batch, Store, Table};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ClockAnchor {
    /// Wall-clock time at which service time was `service`.
    real: DateTime<Utc>,
    service: DateTime<Utc>,
    scale: f64,
}

const CLOCK_ANCHOR: &[u8] = b"clock/anchor";

/// The anchor of a store filled before the service opens it (a benchmark's loader): service time was `service`
/// at wall-clock time `real`, going on at `scale`. The service continues from it as from any anchor.
pub fn preset(real: DateTime<Utc>, service: DateTime<Utc>, scale: f64) -> Batch {
    let mut b = Batch::new();
    let anchor = ClockAnchor { real, service, scale };
    b.put(Table::Meta, CLOCK_ANCHOR.to_vec(), serde_json::to_vec(&anchor).unwrap_or_default());
    b
}

/// The service clock: scaled time continues from the anchor stored with the data, so it never runs backwards
/// across restarts and the downtime passes at the scale that was in force.
///
/// `shared`: the store is a database other nodes use too, so every node must be on one line of service time.
/// The first node to start on a scaled clock writes the anchor (a key that must be new); every other node reads it
/// and continues on it, never rewriting it; a node configured with another scale refuses to start.
pub async fn service_clock(store: &Arc<dyn Store>, scale: f64, shared: bool) -> Result<Arc<dyn Clock>, String> {
    if shared {
        return shared_clock(store, scale).await;
    }
    let real_now = Utc::now();
    let stored: Option<ClockAnchor> = store
        .get(Table::Meta, CLOCK_ANCHOR)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let service_now = match stored {
        Some(a) => {
            let elapsed = (real_now - a.real).max(TimeDelta::zero());
            let scaled = TimeDelta::milliseconds((elapsed.num_milliseconds() as f64 * a.scale) as i64);
            a.service + scaled
        }
        None => real_now,
    };
    if scale == 1.0 && service_now <= real_now + TimeDelta::seconds(1) {
        // Real time: nothing to anchor; forget an old anchor that real time has caught up with.
        if stored.is_some() {
            let mut b = Batch::new();
            b.delete(Table::Meta, CLOCK_ANCHOR.to_vec());
            apply(store, b).await.map_err(|e| e.to_string())?;
        }
        return Ok(Arc::new(SystemClock));
    }
    let anchor = ClockAnchor { real: real_now, service: service_now, scale };
    let mut b = Batch::new();
    b.put(Table::Meta, CLOCK_ANCHOR.to_vec(), serde_json::to_vec(&anchor).map_err(|e| e.to_string())?);
    apply(store, b).await.map_err(|e| e.to_string())?;
    Ok(Arc::new(ScaledClock::new(service_now, scale)))
}

/// Writes the anchor before the engine (and its committer) starts; blocking, so on the blocking pool.
async fn apply(store: &Arc<dyn Store>, b: Batch) -> Result<(), crate::store::Error> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.apply(&[b])).await.map_err(|e| crate::store::Error::Backend(e.to_string()))?
}

/// The service clock of a node sharing its database with others (see [`service_clock`]).
async fn shared_clock(store: &Arc<dyn Store>, scale: f64) -> Result<Arc<dyn Clock>, String> {
    for _ in 0..3 {
        let stored: Option<ClockAnchor> = store
            .get(Table::Meta, CLOCK_ANCHOR)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|b| serde_json::from_slice(&b).ok());
        match stored {
            Some(a) if (a.scale - scale).abs() > f64::EPSILON => {
                return Err(format!(
                    "the nodes of this database run at time scale {}, this node is configured with {scale}: every \
                     node of a database runs at the same scale",
                    a.scale
                ))
            }
            Some(a) => {
                let real_now = Utc::now();
                let elapsed = (real_now - a.real).max(TimeDelta::zero());
                let service_now =
                    a.service + TimeDelta::milliseconds((elapsed.num_milliseconds() as f64 * a.scale) as i64);
                return Ok(if scale == 1.0 {
                    Arc::new(SystemClock)
                } else {
                    Arc::new(ScaledClock::new(service_now, scale))
                });
            }
            None if scale == 1.0 => return Ok(Arc::new(SystemClock)),
            None => {
                let now = Utc::now();
                let anchor = ClockAnchor { real: now, service: now, scale };
                let mut b = Batch::new();
                b.put_new(Table::Meta, CLOCK_ANCHOR.to_vec(), serde_json::to_vec(&anchor).map_err(|e| e.to_string())?);
                match apply(store, b).await {
                    // Read back either way, and derive the clock from the anchor at the moment the clock is built:
                    // the write may have taken long, and a clock started from `now` would then run behind every
                    // other node's by that long.
                    Ok(()) | Err(crate::store::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    Err("the clock anchor could not be agreed on".into())
}
