//! The optional alert webhook (`MARKETFLOW_ALERT_WEBHOOK`): the conditions the Prometheus alerts watch, as this
//! process sees them, sent as JSON when one starts and when it ends, for a team without Prometheus (or as a second
//! path beside it).
//!
//! Every `every` (real time) the watcher reads what needs a person by cause, whether pushes are held, whether
//! storage refuses writes, and the Market API's authentication failures since the last look; a condition that
//! appeared is sent as `firing`, one that went as `resolved`. Conditions of the shared store (attention, the hold)
//! are sent by one node only, the one holding shard 0 (a node alone holds it); conditions of a node (storage, the
//! AccessKey) by each node, with its name. Each message is retried with backoff for about two minutes; the URL is
//! a secret (it may carry a token) and is never logged. The watcher's memory is the process's: after a restart a
//! condition still true is sent as firing again (receivers key on `key`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::App;
use crate::config::Secret;

/// One alert event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertEvent {
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The alert's name, as in `deploy/prometheus/alerts.yml`.
    pub alert: &'static str,
    /// What the condition is about, stable across its firing and resolution: the alert and its labels.
    pub key: String,
    pub severity: &'static str,
    pub summary: String,
    pub runbook_url: String,
    /// The node that saw it.
    pub node: String,
    /// Service time.
    pub at: DateTime<Utc>,
}

/// What one look found: key → (alert, severity, summary).
type Conditions = BTreeMap<String, (&'static str, &'static str, String)>;

/// Attempts per message, and the first wait between two (doubling).
const ATTEMPTS: u32 = 8;
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// Starts the watcher. Must run inside an actix system; ends with the engine.
pub fn start(app: App, url: Secret, node: String, every: Duration) {
    actix_rt::spawn(async move {
        let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the alert webhook's client cannot be built; no alerts will be sent");
                return;
            }
        };
        let mut firing = Conditions::new();
        let mut auth_seen = auth_failures();
        loop {
            tokio::time::sleep(every).await;
            if app.engine.stopping() {
                return;
            }
            let now = app.engine.clock().now();
            let Some(seen) = look(&app, &node, &mut auth_seen).await else { continue };
            let mut events = Vec::new();
            for (key, (alert, severity, summary)) in &seen {
                if !firing.contains_key(key) {
                    events.push(event("firing", key, alert, severity, summary.clone(), &node, now));
                }
            }
            for (key, (alert, severity, summary)) in &firing {
                if !seen.contains_key(key) {
                    events.push(event("resolved", key, alert, severity, summary.clone(), &node, now));
                }
            }
            firing = seen;
            if !events.is_empty() {
                let (http, url) = (http.clone(), url.clone());
                actix_rt::spawn(async move { deliver(&http, &url, &events).await });
            }
        }
    });
}

fn event(
    status: &'static str,
    key: &str,
    alert: &'static str,
    severity: &'static str,
    summary: String,
    node: &str,
    at: DateTime<Utc>,
) -> AlertEvent {
    AlertEvent {
        status,
        alert,
        key: key.to_string(),
        severity,
        summary,
        runbook_url: format!("docs/runbook.md#{}", alert.to_lowercase()),
        node: node.to_string(),
        at,
    }
}

fn auth_failures() -> u64 {
    super::call_errors::errors_by_class().iter().find(|(c, _)| *c == "auth").map(|(_, n)| *n).unwrap_or(0)
}

/// The conditions true now; `None` when the store cannot be read (nothing is resolved on a failed look).
async fn look(app: &App, node: &str, auth_seen: &mut u64) -> Option<Conditions> {
    let mut seen = Conditions::new();
    if app.engine.ownership().serves(0) {
        let counts = app.engine.attention_counts().await.ok()?;
        for (cause, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
            let summary = format!("{n} concerns of cause {cause} need a person");
            seen.insert(format!("MarketflowNeedsAttention/{cause}"), ("MarketflowNeedsAttention", "warn", summary));
        }
        let hold = app.push_hold().await.ok()?;
        if hold.held {
            let summary = format!(
                "an operator ({}) holds every metering push: {}",
                hold.operator.unwrap_or_default(),
                hold.reason.unwrap_or_default()
            );
            seen.insert("MarketflowPushesHeld".into(), ("MarketflowPushesHeld", "page", summary));
        }
    }
    if app.engine.commit_stats().failed.load(std::sync::atomic::Ordering::Relaxed) {
        let summary = format!("{node} refuses every write after a storage failure (503 storage_unavailable)");
        seen.insert(
            format!("MarketflowStorageRefusingWrites/{node}"),
            ("MarketflowStorageRefusingWrites", "page", summary),
        );
    }
    let auth = auth_failures();
    if auth > *auth_seen {
        let summary = format!(
            "Market API calls fail authentication on {node} ({} since the last look): the AccessKey is wrong or \
             revoked, and every push will fail",
            auth - *auth_seen
        );
        seen.insert(
            format!("MarketflowMarketApiAuthFailing/{node}"),
            ("MarketflowMarketApiAuthFailing", "page", summary),
        );
    }
    *auth_seen = auth;
    Some(seen)
}

/// Posts the events until the receiver answers 2xx, or the attempts run out (logged, without the URL).
async fn deliver(http: &reqwest::Client, url: &Secret, events: &[AlertEvent]) {
    let body = serde_json::json!({ "alerts": events });
    let mut wait = FIRST_WAIT;
    for attempt in 1..=ATTEMPTS {
        match http.post(url.expose()).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(status = %r.status(), attempt, "the alert webhook refused; retrying"),
            Err(e) => tracing::warn!(error = %e.without_url(), attempt, "the alert webhook is unreachable; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    let names: Vec<&str> = events.iter().map(|e| e.alert).collect();
    tracing::error!(alerts = ?names, "alert webhook: given up after {ATTEMPTS} attempts");
}
