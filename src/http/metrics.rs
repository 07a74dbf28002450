//! `GET /metrics` in the Prometheus text format: the engine's counters, group commit, timers, calls, and HTTP
//! requests by route and status. Counters only (no histograms yet): rates and means come from PromQL.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::AppState;

/// HTTP requests by (method, route pattern, status); patterns, not paths, so ids do not explode the series.
#[derive(Default)]
pub struct HttpCounters {
    counts: Mutex<BTreeMap<(String, String, u16), u64>>,
}

static HTTP: std::sync::OnceLock<HttpCounters> = std::sync::OnceLock::new();

fn http() -> &'static HttpCounters {
    HTTP.get_or_init(HttpCounters::default)
}

/// Counts every request by its route pattern and status.
pub async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let pattern = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16();
    if let Ok(mut m) = http().counts.lock() {
        *m.entry((method, pattern, status)).or_default() += 1;
    }
    Ok(res)
}

fn line(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let e = state.engine.stats();
    let c = &state.engine.committer().stats;
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
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}
