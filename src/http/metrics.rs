//! `GET /metrics` in the Prometheus text format: the engine's counters, group commit, timers, calls, and HTTP
//! requests by route and status; entities by kind and state; histograms of the commit latency (apply + fsync),
//! the group-commit size, the timers' firing lateness and the HTTP request duration by route.
//!
//! Why hand-written: the exposition format is a few lines per family, and the Prometheus client crates bring a
//! registry of their own that would sit beside the engine's counters rather than read them.
//!
//! The per-engine part (histograms of commits and timers, entity counts) is installed on the engine by the first
//! HTTP request the service answers (at start-up, the first probe), so two applications in one process (tests)
//! never mix their numbers; what happened before that request is in the counters only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::AppState;
use crate::engine::Engine;
use crate::store::committer::Observer;
use crate::store::{Batch, Op, Store, Table};

/// Commit (apply + fsync) latency buckets, seconds: a healthy disk fsyncs in about a millisecond.
const COMMIT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Group-commit size buckets, batches per group (the committer's cap is 4096).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
/// Timer lateness buckets, service seconds: from the timer loop's own delay up to a day of downtime.
const LATENESS_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0];
/// HTTP request duration buckets, seconds (Prometheus' defaults).
const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus histogram with fixed buckets, lock-free: cheap enough for the committer thread and every request.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (`le`), ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// Observations per bucket, not cumulated; the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observed values in millionths, so that an atomic integer holds it.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// The series of one labelled histogram: cumulative `_bucket`s, `_sum`, `_count` (equal to `+Inf`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, n) in self.counts.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}");
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Entities per (kind, state).
type Counts = BTreeMap<(String, String), i64>;

/// The metrics of one engine that its counters cannot give. Installed as the committer's [`Observer`].
///
/// Entities by state are counted by a scan of the entities table on the committer thread (the only writer, so
/// the count is exact), a slice of [`TALLY_SLICE`] records after each durable group, so that no group waits for
/// more than a slice (the whole scan at once held commits back about a second with 1,000,000 entities). Journal
/// entries of every durable group keep the count current for the entities the scan has passed: an entry's `from`
/// and `to` move an entity between states, its first entry (`seq` 1) adds it; the scan counts the others as they
/// are when it reaches them. No scrape scans the store.
#[derive(Debug)]
struct EngineMetrics {
    commit_seconds: Histogram,
    group_size: Histogram,
    /// Shared with the hook of the engine's timer loop.
    timer_lateness: Arc<Histogram>,
    /// The count and how far its scan has got.
    entities: Mutex<Tally>,
}

/// Records the committer reads per durable group while it counts entities (a few milliseconds).
const TALLY_SLICE: usize = 5_000;

#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    /// The key of the last record counted; the entities up to it are in `counts`. `None` before the first slice.
    scanned: Option<Vec<u8>>,
    /// The scan has reached the end: `counts` is every entity.
    done: bool,
}

impl Tally {
    /// Whether the scan has counted the entity whose record is at `record_key`.
    fn counted(&self, record_key: &[u8]) -> bool {
        self.done || self.scanned.as_deref().is_some_and(|last| record_key <= last)
    }

    /// Counts the next slice of records after the last one counted.
    fn scan_slice(&mut self, store: &dyn Store) -> Result<(), crate::store::Error> {
        #[derive(serde::Deserialize)]
        struct KindState {
            kind: String,
            state: String,
        }
        let start = match &self.scanned {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let page = store.scan(Table::Entities, start, Bound::Unbounded, TALLY_SLICE, false)?;
        for (_, v) in &page {
            if let Ok(r) = serde_json::from_slice::<KindState>(v) {
                *self.counts.entry((r.kind, r.state)).or_default() += 1;
            }
        }
        self.done = page.len() < TALLY_SLICE;
        if let Some((k, _)) = page.last() {
            self.scanned = Some(k.clone());
        }
        Ok(())
    }
}

/// The part of a journal entry that moves an entity between states.
#[derive(serde::Deserialize)]
struct Moved {
    seq: u64,
    from: String,
    to: String,
}

impl EngineMetrics {
    /// The count, once the scan has counted every entity.
    fn entities(&self) -> Option<Counts> {
        let t = self.entities.lock().unwrap_or_else(|e| e.into_inner());
        t.done.then(|| t.counts.clone())
    }
}

impl Observer for EngineMetrics {
    fn durable(&self, store: &dyn Store, batches: &[Batch], took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.group_size.observe(batches.len() as f64);
        let mut tally = self.entities.lock().unwrap_or_else(|e| e.into_inner());
        for op in batches.iter().flat_map(|b| b.ops.iter()) {
            let Op::Put { table: Table::Journal, key, value } = op else { continue };
            // A journal key is the entity's record key and then the entry's sequence number (8 bytes).
            let record_key = &key[..key.len().saturating_sub(8)];
            if !tally.counted(record_key) {
                continue;
            }
            let kind = key.split(|b| *b == crate::store::keys::SEP).next().map(String::from_utf8_lossy);
            let (Some(kind), Ok(m)) = (kind, serde_json::from_slice::<Moved>(value)) else { continue };
            if m.seq == 1 {
                *tally.counts.entry((kind.to_string(), m.to)).or_default() += 1;
            } else if m.from != m.to {
                *tally.counts.entry((kind.to_string(), m.from)).or_default() -= 1;
                *tally.counts.entry((kind.to_string(), m.to)).or_default() += 1;
            }
        }
        if !tally.done {
            if let Err(e) = tally.scan_slice(store) {
                tracing::warn!(error = %e, "counting entities by state failed; trying again next commit");
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The engine's metrics, installed on its committer and timer loop the first time.
fn engine_metrics(engine: &Engine) -> Option<&EngineMetrics> {
    let observer = engine.committer().stats.observer.get_or_init(|| {
        let m = EngineMetrics {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            group_size: Histogram::new(GROUP_BUCKETS),
            timer_lateness: Arc::new(Histogram::new(LATENESS_BUCKETS)),
            entities: Mutex::new(Tally::default()),
        };
        let lateness = m.timer_lateness.clone();
        let _ = engine.inner.services.timer_lateness.set(Box::new(move |ms| lateness.observe(ms as f64 / 1000.0)));
        Arc::new(m)
    });
    observer.as_any().downcast_ref::<EngineMetrics>()
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
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        engine_metrics(&state.engine);
    }
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

/// Rows waiting in the store's work tables, as last counted.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    timers: u64,
    outbox: u64,
    calls: u64,
}

/// How long a count of the work tables is reused: a million pending timers take about a second to count, so
/// scrapes share one count instead of each scanning the table (a gauge a few seconds old is still a gauge).
const PENDING_TTL: Duration = Duration::from_secs(10);

/// The last count and when it was taken; one per service (tests run several in one process).
pub type PendingCache = Mutex<Option<(Instant, Pending)>>;

/// Counts the work tables off the async workers (the count reads the store), at most once per [`PENDING_TTL`].
async fn pending(state: &AppState) -> Option<Pending> {
    if let Some((at, p)) = *state.pending.lock().unwrap_or_else(|e| e.into_inner()) {
        if at.elapsed() < PENDING_TTL {
            return Some(p);
        }
    }
    let store = state.engine.store().clone();
    let counted = web::block(move || -> Result<Pending, crate::store::Error> {
        Ok(Pending {
            timers: store.count_prefix(Table::Timers, b"")?,
            outbox: store.count_prefix(Table::Outbox, b"")?,
            calls: store.count_prefix(Table::Effects, b"")?,
        })
    })
    .await
    .ok()?
    .ok()?;
    *state.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), counted));
    Some(counted)
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
    match pending(&state).await {
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
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}

/// The families of the engine's [`EngineMetrics`]: histograms of commits and timers, entities by kind and state.
async fn engine_families(engine: &Engine, out: &mut String) {
    let Some(m) = engine_metrics(engine) else { return };
    header(out, "marketflow_commit_seconds", "Group commit latency: one apply and one fsync, seconds.", "histogram");
    m.commit_seconds.render(out, "marketflow_commit_seconds", "");
    header(out, "marketflow_commit_group_size", "Batches per group commit (entities sharing one fsync).", "histogram");
    m.group_size.render(out, "marketflow_commit_group_size", "");
    header(out, "marketflow_timer_lateness_seconds", "How late timers fired, service seconds.", "histogram");
    m.timer_lateness.render(out, "marketflow_timer_lateness_seconds", "");
    // Until the scan is through (nothing committed since installation, or a large store), empty groups make the
    // committer count the next slices; a scrape waits for at most a few seconds of it, the next one goes on.
    let deadline = Instant::now() + Duration::from_secs(3);
    while m.entities().is_none() && Instant::now() < deadline {
        if engine.committer().commit(Batch::new()).await.is_err() {
            break;
        }
    }
    let Some(counts) = m.entities() else { return };
    // Every state of every definition, so that an emptied state reads 0 instead of vanishing.
    let mut all: BTreeMap<(String, String), i64> = engine
        .registry()
        .kinds()
        .flat_map(|(kind, reg)| {
            reg.versions.values().flat_map(move |d| d.states.iter().map(move |s| ((kind.clone(), s.name.clone()), 0)))
        })
        .collect();
    all.extend(counts);
    header(out, "marketflow_entities", "Entities by kind and state (stored, live or not).", "gauge");
    for ((kind, state), n) in all {
        let _ = writeln!(out, "marketflow_entities{{kind=\"{}\",state=\"{}\"}} {n}", label(&kind), label(&state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn record_key(id: usize) -> Vec<u8> {
        format!("k\0e{id:06}\0").into_bytes()
    }

    /// What a commit moving entity `id` from `from` to `to` writes: the record and the journal entry.
    fn moved(id: usize, seq: u64, from: &str, to: &str) -> Batch {
        let mut b = Batch::new();
        b.put(
            Table::Entities,
            record_key(id),
            serde_json::to_vec(&serde_json::json!({"kind": "k", "state": to})).unwrap(),
        );
        let mut jk = record_key(id);
        jk.extend_from_slice(&seq.to_be_bytes());
        b.put(
            Table::Journal,
            jk,
            serde_json::to_vec(&serde_json::json!({"seq": seq, "from": from, "to": to})).unwrap(),
        );
        b
    }

    #[test]
    fn entities_are_counted_a_slice_per_group_and_exactly_despite_commits_meanwhile() {
        let store = MemoryStore::new();
        let n = 2 * TALLY_SLICE + 345;
        store.apply(&(0..n).map(|i| moved(i, 1, "new", "a")).collect::<Vec<_>>()).unwrap();
        let m = EngineMetrics {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            group_size: Histogram::new(GROUP_BUCKETS),
            timer_lateness: Arc::new(Histogram::new(LATENESS_BUCKETS)),
            entities: Mutex::new(Tally::default()),
        };
        // As the committer does: the group is in the store before the observer hears of it.
        let durable = |batches: Vec<Batch>| {
            store.apply(&batches).unwrap();
            m.durable(&store, &batches, Duration::ZERO);
        };
        durable(vec![]);
        assert_eq!(m.entities(), None, "one slice is not the whole count");
        // One entity the scan has passed, one it has not reached, and a new one beyond it.
        durable(vec![moved(10, 2, "a", "b"), moved(n - 10, 2, "a", "b"), moved(n + 1, 1, "new", "a")]);
        durable(vec![moved(11, 2, "a", "b")]);
        let counts = m.entities().expect("three slices count them all");
        assert_eq!(counts.get(&("k".to_string(), "a".to_string())), Some(&(n as i64 + 1 - 3)));
        assert_eq!(counts.get(&("k".to_string(), "b".to_string())), Some(&3));
        // From now on, every commit moves the count.
        durable(vec![moved(n - 10, 3, "b", "c")]);
        assert_eq!(m.entities().unwrap().get(&("k".to_string(), "c".to_string())), Some(&1));
    }
}
