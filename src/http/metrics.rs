//! `GET /metrics` in the Prometheus text format: the engine's counters, group commit, timers, calls, and HTTP
//! requests by route and status; entities by kind and state; histograms of the commit latency (apply + fsync),
//! the group-commit size, the timers' firing lateness and the HTTP request duration by route.
//!
//! Why hand-written: the exposition format is a few lines per family, and the Prometheus client crates bring a
//! registry of their own that would sit beside the engine's counters rather than read them.
//!
//! The engine's part (histograms of commits and timers, entities by state, pending work) is measured by the engine
//! itself ([`crate::engine::telemetry`]) from its start; this module only renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::AppState;
use crate::engine::telemetry::Histogram;
use crate::engine::Engine;

/// HTTP request duration buckets, seconds (Prometheus' defaults).
const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HTTP requests by (method, route pattern, status); patterns, not paths, so ids do not explode the series.
#[derive(Default)]
pub struct HttpCounters {
    counts: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Request durations by (method, route pattern).
    durations: Mutex<BTreeMap<(String, String), Histogram>>,
}

static HTTP: std::sync::OnceLock<HttpCounters> = std::sync::OnceLock::new();

fn http() -> &'static HttpCounters {
    HTTP.get_or_init(HttpCounters::default)
}

/// The label of whatever is not in a closed set.
const OTHER: &str = "OTHER";

/// Methods from the closed set HTTP defines; anything a client makes up is `OTHER`, so junk methods cannot grow
/// the series without bound.
fn method_label(m: &actix_web::http::Method) -> String {
    const KNOWN: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.iter().find(|k| **k == m.as_str()).map_or(OTHER, |k| k).to_string()
}

/// Counts and times every request by its route pattern and status (until the handler has answered; the body's
/// transfer is not included).
pub async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let res = next.call(req).await?;
    let took = started.elapsed().as_secs_f64();
    // A pattern is one of the routes registered at start-up (a closed set); no pattern is `OTHER`, never the path.
    let pattern = res.request().match_pattern().unwrap_or_else(|| OTHER.into());
    let status = res.status().as_u16();
    if let Ok(mut m) = http().durations.lock() {
        m.entry((method.clone(), pattern.clone())).or_insert_with(|| Histogram::new(HTTP_BUCKETS)).observe(took);
    }
    if let Ok(mut m) = http().counts.lock() {
        *m.entry((method, pattern, status)).or_default() += 1;
    }
    Ok(res)
}

fn line(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// The metrics' part of the API description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub struct MetricsApi;

/// Counters and gauges in the Prometheus text format (version 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let e = state.engine.stats();
    let c = state.engine.commit_stats();
    let mut out = String::with_capacity(4096);
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    line(&mut out, "marketflow_inputs_total", "Inputs delivered to entities.", "counter", r(&e.inputs));
    line(&mut out, "marketflow_transitions_total", "Inputs that ran a transition.", "counter", r(&e.transitions));
    line(
        &mut out,
        "marketflow_ignored_total",
        "Inputs no transition matched (absorbed, journaled).",
        "counter",
        r(&e.ignored),
    );
    line(&mut out, "marketflow_rejected_total", "Inputs an action refused.", "counter", r(&e.rejected));
    line(
        &mut out,
        "marketflow_repeated_total",
        "Repeated inputs answered from the idempotency record.",
        "counter",
        r(&e.repeated),
    );
    line(
        &mut out,
        "marketflow_overloaded_total",
        "Inputs refused because too many were in flight.",
        "counter",
        r(&e.overloaded),
    );
    line(&mut out, "marketflow_commits_total", "Batches made durable.", "counter", r(&c.commits));
    line(
        &mut out,
        "marketflow_commit_groups_total",
        "Group commits (one apply and one fsync each).",
        "counter",
        r(&c.groups),
    );
    line(
        &mut out,
        "marketflow_commit_group_micros_total",
        "Time spent in group commits, microseconds.",
        "counter",
        r(&c.group_micros),
    );
    line(
        &mut out,
        "marketflow_commit_write_micros_total",
        "The part of the group commits' time spent writing into the store, microseconds.",
        "counter",
        r(&c.write_micros),
    );
    line(
        &mut out,
        "marketflow_commit_sync_micros_total",
        "The part of the group commits' time spent flushing and fsyncing, microseconds.",
        "counter",
        r(&c.sync_micros),
    );
    line(
        &mut out,
        "marketflow_store_failed",
        "1 once a write or sync failed (the service must restart).",
        "gauge",
        u64::from(c.failed.load(Ordering::Relaxed)),
    );
    line(&mut out, "marketflow_timers_fired_total", "Timers fired.", "counter", r(&e.timers_fired));
    line(
        &mut out,
        "marketflow_timer_lateness_ms_total",
        "Sum of firing lateness, service milliseconds.",
        "counter",
        r(&e.timer_lateness_ms),
    );
    line(
        &mut out,
        "marketflow_messages_delivered_total",
        "Outbox messages delivered.",
        "counter",
        r(&e.messages_delivered),
    );
    line(&mut out, "marketflow_calls_started_total", "External call attempts.", "counter", r(&e.calls_started));
    line(
        &mut out,
        "marketflow_call_failures_total",
        "External call attempts that failed and were retried or escalated.",
        "counter",
        r(&e.call_failures),
    );
    line(
        &mut out,
        "marketflow_calls_needing_attention_total",
        "External calls handed to an operator.",
        "counter",
        r(&e.calls_needing_attention),
    );
    line(&mut out, "marketflow_actors_started_total", "Entity actors started.", "counter", r(&e.actors_started));
    line(&mut out, "marketflow_actors_stopped_total", "Entity actors stopped (idle).", "counter", r(&e.actors_stopped));
    line(
        &mut out,
        "marketflow_actors_live",
        "Entity actors in memory now.",
        "gauge",
        state.engine.live_actors() as u64,
    );
    match state.engine.pending_work().await {
        Some(p) => {
            line(&mut out, "marketflow_timers_pending", "Durable timers not fired yet.", "gauge", p.timers);
            line(
                &mut out,
                "marketflow_outbox_pending",
                "Messages between entities not delivered yet.",
                "gauge",
                p.outbox,
            );
            line(
                &mut out,
                "marketflow_calls_pending",
                "External calls not finished (pending, retrying, in flight or needing attention).",
                "gauge",
                p.calls,
            );
        }
        None => tracing::warn!("counting pending timers, messages and calls failed"),
    }
    // What the workflows count (`Cx::count`), a family each; the families the domain declares are shown at 0
    // before their first event, so an alert on their increase has a series to watch.
    let mut marks: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for (family, help, labels) in crate::domain::COUNTED {
        let f = marks.entry(family).or_default();
        for l in *labels {
            f.insert(l.to_string(), 0);
        }
        let _ = help;
    }
    for ((family, label), n) in state.engine.stats().marks() {
        marks.entry(family).or_default().insert(label, n);
    }
    for (family, labels) in marks {
        let help = crate::domain::COUNTED
            .iter()
            .find(|(f, _, _)| *f == family)
            .map(|(_, h, _)| *h)
            .unwrap_or("Transitions a workflow counted, by kind.");
        let name = format!("marketflow_{family}_total");
        header(&mut out, &name, help, "counter");
        for (label, n) in labels {
            let _ = writeln!(out, "{name}{{kind=\"{label}\"}} {n}");
        }
    }
    header(
        &mut out,
        "marketflow_market_api_errors_total",
        "Failed Market API calls (DescribeInstance, PushMeteringData) by class: auth (a wrong or revoked AccessKey), \
         throttled, unavailable, unknown_outcome (no answer: a push needs a person), refused.",
        "counter",
    );
    for (class, n) in crate::app::call_errors::errors_by_class() {
        let _ = writeln!(out, "marketflow_market_api_errors_total{{class=\"{class}\"}} {n}");
    }
    let (calls, records, splits, waiting) = crate::app::pushes::stats();
    // Read from the store, not from this node's last look (a node with nothing to push does not look).
    let held = state.push_hold().await.map(|h| h.held).unwrap_or(false);
    for (name, help, kind, n) in [
        (
            "marketflow_push_calls_total",
            "PushMeteringData calls this node made (each carries up to 100 windows).",
            "counter",
            calls,
        ),
        ("marketflow_push_records_total", "Windows those calls carried.", "counter", records),
        (
            "marketflow_push_splits_total",
            "Refused batches split in halves to find the refused window.",
            "counter",
            splits,
        ),
        (
            "marketflow_pushes_waiting",
            "Windows waiting for a seat in a batch (held, paced or gathering).",
            "gauge",
            waiting,
        ),
        ("marketflow_pushes_held", "1 while an operator holds every push (service-wide).", "gauge", held as u64),
    ] {
        header(&mut out, name, help, kind);
        let _ = writeln!(out, "{name} {n}");
    }
    let r = &state.retained;
    line(
        &mut out,
        "marketflow_journal_trimmed_total",
        "Journal entries past MARKETFLOW_RETENTION_RECORDS deleted.",
        "counter",
        r.journal_trimmed.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "marketflow_outcomes_trimmed_total",
        "Stored input outcomes past MARKETFLOW_RETENTION_IDEMPOTENCY deleted.",
        "counter",
        r.outcomes_trimmed.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "marketflow_retention_cycles_total",
        "Passes of retention over the whole journal table, each followed by a count of the tables.",
        "counter",
        r.cycles.load(Ordering::Relaxed),
    );
    // The families are always described; their samples appear once retention has counted (moments after start).
    let records = r.records.lock().map(|g| g.clone()).unwrap_or_default();
    header(&mut out, "marketflow_store_records", "Stored rows by table, when last counted.", "gauge");
    for (table, n) in &records {
        let _ = writeln!(out, "marketflow_store_records{{table=\"{table}\"}} {n}");
    }
    header(&mut out, "marketflow_store_bytes", "The store's size in bytes, when last counted.", "gauge");
    if !records.is_empty() {
        let _ = writeln!(out, "marketflow_store_bytes {}", r.bytes.load(Ordering::Relaxed));
    }
    header(&mut out, "marketflow_swept_records_total", "Ended records deleted by the sweeper, by kind.", "counter");
    let mut swept: BTreeMap<&str, u64> = BTreeMap::new();
    for (kind, n) in state.swept.counts() {
        *swept.entry(kind).or_default() += n;
    }
    for (kind, n) in swept {
        let _ = writeln!(out, "marketflow_swept_records_total{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP marketflow_http_requests_total HTTP requests by route and status.\n# TYPE marketflow_http_requests_total counter");
    if let Ok(m) = http().counts.lock() {
        for ((method, route, status), n) in m.iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "marketflow_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    if let Ok(m) = http().durations.lock() {
        header(&mut out, "marketflow_http_request_duration_seconds", "HTTP request duration by route.", "histogram");
        for ((method, route), h) in m.iter() {
            h.render(
                &mut out,
                "marketflow_http_request_duration_seconds",
                &format!("method=\"{}\",route=\"{}\"", label(method), label(route)),
            );
        }
    }
    engine_families(&state.engine, &mut out).await;
    cluster_families(&state, &mut out);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}

/// Shards, leases and forwarding. On sled the node holds every shard and forwards nothing: the same series, so
/// that dashboards and alerts read one shape.
fn cluster_families(state: &AppState, out: &mut String) {
    let ownership = state.engine.ownership();
    line(out, "marketflow_shards_owned", "Shards this node holds a lease on.", "gauge", ownership.held().len() as u64);
    line(
        out,
        "marketflow_shards_gained_total",
        "Shards this node took (at start, from released or ended leases).",
        "counter",
        ownership.gained.load(Ordering::Relaxed),
    );
    line(
        out,
        "marketflow_shards_lost_total",
        "Shards this node dropped (handed over, taken by another node, or a lease that ended).",
        "counter",
        ownership.lost.load(Ordering::Relaxed),
    );
    let c = state.cluster.as_ref().map(|c| &c.stats);
    let n = |f: fn(&crate::cluster::ClusterStats) -> &std::sync::atomic::AtomicU64| {
        c.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0)
    };
    line(
        out,
        "marketflow_shards_unowned",
        "Shards no node held a live lease on at this node's last look.",
        "gauge",
        n(|s| &s.unowned),
    );
    line(out, "marketflow_lease_renewals_total", "Lease renewals that succeeded.", "counter", n(|s| &s.renewals));
    line(
        out,
        "marketflow_lease_renewals_failed_total",
        "Lease renewals that failed (the database unreachable or slow).",
        "counter",
        n(|s| &s.renewals_failed),
    );
    line(
        out,
        "marketflow_lease_age_seconds",
        "Seconds since the last successful lease renewal was sent (0 on sled).",
        "gauge",
        if ownership.is_alone() { 0 } else { ownership.since_renewal().as_secs() },
    );
    line(
        out,
        "marketflow_forwarded_in_total",
        "Inputs other nodes forwarded to this one.",
        "counter",
        n(|s| &s.forwarded_in),
    );
    line(
        out,
        "marketflow_forward_requests_total",
        "Requests that carried forwarded inputs to other nodes (one carries those queued meanwhile).",
        "counter",
        n(|s| &s.forward_requests),
    );
    line(
        out,
        "marketflow_forward_errors_total",
        "Forwards that got no answer from the owner.",
        "counter",
        n(|s| &s.forward_errors),
    );
    line(
        out,
        "marketflow_not_owner_total",
        "`not_owner` answers given or received (a shard that moved).",
        "counter",
        n(|s| &s.not_owner),
    );
    line(
        out,
        "marketflow_shards_handed_over_total",
        "Shards released after draining.",
        "counter",
        n(|s| &s.handed_over),
    );
    header(
        out,
        "marketflow_forwards_total",
        "Inputs forwarded to the node holding their entity, by that node.",
        "counter",
    );
    if let Some(m) = c.and_then(|s| s.forwards.lock().ok()) {
        for (node, count) in m.iter() {
            let _ = writeln!(out, "marketflow_forwards_total{{to=\"{}\"}} {count}", label(node));
        }
    }
}

/// The families of the engine's telemetry: histograms of commits and timers, entities by kind and state.
async fn engine_families(engine: &Engine, out: &mut String) {
    let t = engine.telemetry();
    header(out, "marketflow_commit_seconds", "Group commit latency: one apply and one fsync, seconds.", "histogram");
    t.commit_seconds.render(out, "marketflow_commit_seconds", "");
    header(out, "marketflow_commit_group_size", "Batches per group commit (entities sharing one fsync).", "histogram");
    t.group_size.render(out, "marketflow_commit_group_size", "");
    header(out, "marketflow_timer_lateness_seconds", "How late timers fired, service seconds.", "histogram");
    t.timer_lateness.render(out, "marketflow_timer_lateness_seconds", "");
    if let Ok(counts) = engine.attention_counts().await {
        header(
            out,
            "marketflow_needs_attention",
            "Concerns that need a person, by cause (the attention index).",
            "gauge",
        );
        for (cause, n) in counts {
            let _ = writeln!(out, "marketflow_needs_attention{{cause=\"{}\"}} {n}", label(cause));
        }
    }
    let Some(all) = engine.entities_by_state().await else { return };
    header(out, "marketflow_entities", "Entities by kind and state (stored, live or not).", "gauge");
    for ((kind, state), n) in all {
        let _ = writeln!(out, "marketflow_entities{{kind=\"{}\",state=\"{}\"}} {n}", label(&kind), label(&state));
    }
}
