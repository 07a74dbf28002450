//! Usage records reported by Zilliz Cloud's services: validated, stored idempotently by record id, and read back
//! per organization and window when a window is metered.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{AppError, Kind};
use crate::domain::ids::OrgId;
use crate::domain::metering::{self, Metering};
use crate::domain::pricing::{numerator, Catalog, MilliCu};
use crate::domain::protocol::{LateRecord, MeterWindow, MeteredItem, WindowMetered};
use crate::engine::records::{Records, TimedTable, Writes};
use crate::engine::{Engine, EntityKey};

/// `usage/{org}/{start}{record_id}`, and `usage-id/{record_id}` to find a record by its id.
const USAGE: TimedTable<UsageRecord> = TimedTable::new("usage/", "usage-id/");

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

/// Usage records whose interval ended more than `keep` ago (service time) are swept with their id's lookup: they
/// are the billing records of windows long pushed (`MARKETFLOW_RETENTION_RECORDS`).
pub fn sweep_rules(keep: TimeDelta) -> Vec<crate::engine::sweep::Rule> {
    vec![USAGE.sweep("usage", "end", keep, "record_id")]
}

/// Whether a record was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same record was stored before (a retry of the service).
    Repeated,
}

/// Stores a record once; a different record under a known id is a conflict.
pub async fn store(engine: &Engine, r: &UsageRecord) -> Result<Stored, StoreError> {
    let storage = |e: crate::engine::Error| StoreError::Storage(e.to_string());
    if let Some(old) = USAGE.find(engine, &r.record_id).await.map_err(storage)? {
        return if same(&old, r) { Ok(Stored::Repeated) } else { Err(StoreError::Conflict) };
    }
    let mut w = Writes::new();
    USAGE.put(&mut w, r.org_id.as_str(), r.start, &r.record_id, r).map_err(storage)?;
    match engine.write(w).await {
        Ok(()) => Ok(Stored::New),
        // Another request (on another node) stored this id meanwhile: a repeat if it is the same record.
        Err(crate::engine::Error::Conflict) => match USAGE.find(engine, &r.record_id).await.map_err(storage)? {
            Some(old) if same(&old, r) => Ok(Stored::Repeated),
            _ => Err(StoreError::Conflict),
        },
        Err(e) => Err(storage(e)),
    }
}

/// The writes that store these records with their id lookups, for a loader that fills a store before the service
/// opens it (the hourly-burst benchmark): what [`store`] commits for each, without its checks.
pub fn load_writes(records: &[UsageRecord]) -> Result<Writes, String> {
    let mut w = Writes::new();
    for r in records {
        USAGE.put(&mut w, r.org_id.as_str(), r.start, &r.record_id, r).map_err(|e| e.to_string())?;
    }
    Ok(w)
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
pub async fn overlapping(
    records: &impl AsRef<Records>,
    org: &OrgId,
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> Result<Vec<UsageRecord>, String> {
    // Keyed by start: a record that overlaps the window started at most MAX_RECORD before it.
    let rows = USAGE.between(records, org.as_str(), ws - MAX_RECORD, we).await.map_err(|e| e.to_string())?;
    Ok(rows.into_iter().filter(|r| r.end > ws && r.start < we).collect())
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

/// A window metered: the records received by its cut, each counted for its overlap with the window; and the records
/// received since the previous window's cut, counted for their overlap with the earlier windows too (late usage):
/// billed here for the windows whose deadline had not passed when they arrived, reported as past the deadline for
/// the others. Every record is counted for each window exactly once: by the window itself if it came by that
/// window's cut, or else by the first window whose cut it came by.
pub fn meter(catalog: &Catalog, records: &[UsageRecord], w: &MeterWindow) -> WindowMetered {
    let by_cut: Vec<&UsageRecord> = records.iter().filter(|r| w.cut.is_none_or(|c| r.received_at <= c)).collect();
    let own: Vec<UsageRecord> =
        by_cut.iter().filter(|r| r.end > w.start && r.start < w.end).map(|r| (*r).clone()).collect();
    let mut totals = window_numerators(catalog, &own, w.start, w.end);
    let mut late = Vec::new();
    if let Some(since) = w.since {
        for r in by_cut.iter().filter(|r| r.received_at > since && r.start < w.start) {
            let (mut billed, mut past) = (Default::default(), Default::default());
            for e in &w.earlier {
                let part = window_numerators(catalog, std::slice::from_ref(*r), e.start, e.end);
                let into: &mut std::collections::BTreeMap<(String, String), u128> =
                    if r.received_at <= e.deadline { &mut billed } else { &mut past };
                for (k, n) in part.into_iter().filter(|(_, n)| *n > 0) {
                    *into.entry(k).or_insert(0) += n;
                }
            }
            for (k, n) in &billed {
                *totals.entry(k.clone()).or_insert(0) += n;
            }
            if billed.is_empty() && past.is_empty() {
                continue;
            }
            late.push(LateRecord {
                record_id: r.record_id.clone(),
                received_at: r.received_at,
                billed: items(billed),
                past_deadline: items(past),
            });
        }
    }
    WindowMetered { start: w.start, end: w.end, items: items(totals), records: own.len() as u64, late }
}

fn items(numerators: std::collections::BTreeMap<(String, String), u128>) -> Vec<MeteredItem> {
    numerators
        .into_iter()
        .map(|((key, assit), n)| MeteredItem { key, assit, numerator: n.to_string(), nanos: true })
        .collect()
}

/// Where a metering call reads records from: the window, and the earlier windows a late record may belong to.
pub fn read_from(w: &MeterWindow) -> DateTime<Utc> {
    w.earlier.iter().map(|e| e.start).min().unwrap_or(w.start).min(w.start)
}

/// A usage record as a service reports it, before it is checked.
pub struct Report {
    pub record_id: String,
    pub org_id: OrgId,
    pub resource_id: String,
    pub cu_type: String,
    pub cu: f64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A stored (or repeated) usage record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub record_id: String,
    pub stored: Stored,
    /// Whether the organization pays through a bound, active subscription now; otherwise recorded, unbilled.
    pub billable: bool,
}

/// An organization's metering: every window of its subscriptions, totals by status, and unbilled usage.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OrgMetering {
    pub org_id: OrgId,
    pub windows: Vec<MeteringWindow>,
    /// By window status (`pushed`, `failed`, ...).
    pub totals: std::collections::BTreeMap<String, MeteringTotal>,
    /// Usage of the last 7 days that no window of the organization covers.
    pub unbilled: Unbilled,
}

/// One metering window (a whole hour, or merged) of a subscription.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeteringWindow {
    pub instance_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `metering`, `pushing`, `pushed`, `empty`, `failed` or `too_short`.
    pub status: String,
    /// Marketplace units.
    pub units: u64,
    /// Yuan, three decimals.
    pub yuan: String,
    /// The marketplace takes the window until then.
    pub deadline: DateTime<Utc>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    /// Usage records that overlapped the window.
    pub records: u64,
}

/// Windows and units of one status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MeteringTotal {
    pub windows: u64,
    pub units: u64,
    pub yuan: String,
}

/// Usage recorded but billed by no window.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Unbilled {
    pub records: u64,
    pub units: u64,
    pub yuan: String,
}

impl super::App {
    /// Records usage of Zilliz Cloud's services, idempotent by `record_id`; billed only while the organization
    /// pays through an active subscription ([`organization::State::billable`]), otherwise recorded, unbilled.
    pub async fn record_usage(&self, report: Report) -> Result<Recorded, AppError> {
        let now = self.engine.clock().now();
        let Report { record_id, org_id, resource_id, cu_type, cu, start, end } = report;
        let record = parse(&self.catalog, now, record_id, org_id.clone(), resource_id, cu_type, cu, start, end)
            .map_err(|e| AppError::new(Kind::Refused, e.code, e.message))?;
        let (org_state, _) = self
            .organization(&org_id)
            .await?
            .ok_or_else(|| AppError::new(Kind::NotFound, "org_not_found", "no such organization"))?;
        let stored = store(&self.engine, &record).await.map_err(|e| match e {
            StoreError::Conflict => {
                AppError::conflict("record_conflict", "a different record was stored under this record_id")
            }
            StoreError::Storage(detail) => AppError::storage(format!("storing usage: {detail}")),
        })?;
        Ok(Recorded { record_id: record.record_id, stored, billable: org_state.billable() })
    }

    /// An organization's metering windows (pending, pushed, failed, too short), totals, and the usage of the last
    /// seven days no window covers.
    pub async fn org_metering(&self, org: &OrgId) -> Result<OrgMetering, AppError> {
        let (_, data) = self.organization(org).await?.ok_or_else(|| AppError::not_found("no such organization"))?;
        let mut instances: Vec<String> = data.history.iter().filter_map(|h| h.instance_id.clone()).collect();
        instances.sort();
        instances.dedup();
        // Exact decimals of the integer units, never floats.
        let yuan = |units: u64| crate::domain::pricing::yuan(units, &self.catalog.unit_yuan).unwrap_or_default();
        let mut windows: Vec<MeteringWindow> = vec![];
        let mut by_status: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for instance in instances {
            let Ok(mk) = EntityKey::new(metering::KIND, &instance) else { continue };
            let Some(m) = self.engine.record(&mk).await? else { continue };
            let m: Metering = serde_json::from_value(m.data).unwrap_or_default();
            for w in m.windows.iter().filter(|w| &w.org == org) {
                let e = by_status.entry(w.status.clone()).or_default();
                e.0 += 1;
                e.1 += w.units;
                windows.push(MeteringWindow {
                    instance_id: instance.clone(),
                    start: w.start,
                    end: w.end,
                    status: w.status.clone(),
                    units: w.units,
                    yuan: yuan(w.units),
                    deadline: w.deadline,
                    request_id: w.request_id.clone(),
                    error: w.error.clone(),
                    records: w.records,
                });
            }
        }
        // Usage not covered by any window of this organization: recorded, not billed (no bound, active
        // subscription at the time), over the records the service still keeps (the last 7 days).
        let now = self.engine.clock().now();
        let records = overlapping(&self.engine, org, now - MAX_AGE, now + MAX_SKEW).await.map_err(AppError::storage)?;
        let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = windows.iter().map(|w| (w.start, w.end)).collect();
        intervals.sort();
        let mut unbilled_numerator: u128 = 0;
        let mut unbilled_records = 0u64;
        for r in &records {
            let Some(price) = self.catalog.price(&r.cu_type) else { continue };
            let whole = numerator(price, r.milli_cu, r.start, r.end, r.start, r.end);
            let covered: u128 =
                intervals.iter().map(|(ws, we)| numerator(price, r.milli_cu, r.start, r.end, *ws, *we)).sum();
            if whole > covered {
                unbilled_numerator += whole - covered;
                unbilled_records += 1;
            }
        }
        let unbilled_units = (unbilled_numerator / crate::domain::pricing::DENOMINATOR) as u64;
        let totals = by_status
            .into_iter()
            .map(|(s, (n, u))| (s, MeteringTotal { windows: n, units: u, yuan: yuan(u) }))
            .collect();
        Ok(OrgMetering {
            org_id: org.clone(),
            windows,
            totals,
            unbilled: Unbilled { records: unbilled_records, units: unbilled_units, yuan: yuan(unbilled_units) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::protocol::EarlierWindow;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap()
    }

    fn record(id: &str, start: DateTime<Utc>, end: DateTime<Utc>, received: DateTime<Utc>) -> UsageRecord {
        UsageRecord {
            record_id: id.into(),
            org_id: OrgId::parse("org_0123456789abcdef0123456789abcdef").unwrap(),
            resource_id: "c1".into(),
            cu_type: "performance".into(),
            milli_cu: MilliCu(1000),
            start,
            end,
            received_at: received,
        }
    }

    fn units(items: &[MeteredItem]) -> u128 {
        items.iter().map(|i| i.numerator.parse::<u128>().unwrap()).sum::<u128>() / crate::domain::pricing::DENOMINATOR
    }

    /// Windows of 10:00 and 11:00; the 10:00 one was cut at 11:04, the 11:00 one is cut at 12:04.
    fn eleven() -> MeterWindow {
        MeterWindow {
            org_id: OrgId::parse("org_0123456789abcdef0123456789abcdef").unwrap(),
            start: t(11, 0),
            end: t(12, 0),
            cut: Some(t(12, 4)),
            since: Some(t(11, 4)),
            earlier: vec![EarlierWindow { start: t(10, 0), end: t(11, 0), deadline: t(12, 0) }],
        }
    }

    #[test]
    fn each_record_is_counted_once_by_the_first_window_it_came_by() {
        let c = Catalog::builtin().unwrap();
        let records = vec![
            // Came in time for 10:00: counted there, only its own hour here.
            record("on-time", t(10, 30), t(11, 30), t(11, 31)),
            // 10:00's hour, after 10:00 was cut, before its deadline: billed here, late.
            record("late", t(10, 0), t(11, 0), t(11, 40)),
            // 10:00's hour after its deadline (12:00): not billed, reported.
            record("too-late", t(10, 0), t(11, 0), t(12, 2)),
            // After this window's cut: the next window's.
            record("next", t(11, 0), t(12, 0), t(12, 5)),
        ];
        let m = meter(&c, &records, &eleven());
        // on-time: 30 min here (its 10:00 half was the earlier window's: received 11:31 is after 11:04, so late too).
        // late: 1 h billed here. too-late: nothing billed.
        assert_eq!(units(&m.items), 625 + 625 + 1250, "{m:?}");
        assert_eq!(m.records, 1, "one record overlaps 11:00 itself");
        let late: Vec<(&str, u128, u128)> =
            m.late.iter().map(|l| (l.record_id.as_str(), units(&l.billed), units(&l.past_deadline))).collect();
        assert_eq!(late, [("on-time", 625, 0), ("late", 1250, 0), ("too-late", 0, 1250)]);
    }

    #[test]
    fn a_record_received_by_the_earlier_cut_is_not_late_and_a_window_of_an_earlier_build_counts_every_record() {
        let c = Catalog::builtin().unwrap();
        let records = vec![record("r", t(10, 30), t(11, 30), t(11, 2))];
        let m = meter(&c, &records, &eleven());
        assert_eq!((units(&m.items), m.late.len()), (625, 0), "{m:?}");
        let old = MeterWindow { cut: None, since: None, earlier: vec![], ..eleven() };
        let records = vec![record("r", t(11, 0), t(12, 0), t(13, 0))];
        assert_eq!(units(&meter(&c, &records, &old).items), 1250);
    }
}
