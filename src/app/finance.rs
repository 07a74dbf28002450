//! Finance's monthly export: every window pushed to the marketplace whose hour starts in a Beijing month, with its
//! instance, organization, units, yuan and the marketplace's request id, as CSV (RFC 4180) for a spreadsheet or a
//! ledger. Amounts are exact decimals of the integer units (the marketplace bills each push truncated to ¥0.01).

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::Serialize;

use super::{App, AppError};
use crate::aliyun::spi::{beijing_to_utc, format_time};
use crate::domain::metering::{self, Metering};
use crate::domain::pricing::yuan;
use crate::engine::inspect::EntityFilter;

/// A calendar month in Beijing time, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    pub fn parse(s: &str) -> Result<Month, AppError> {
        let bad = || AppError::invalid("invalid_month", "month is YYYY-MM, e.g. 2026-12");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let first = NaiveDate::from_ymd_opt(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, 1)
            .filter(|d| (1970..=9998).contains(&d.year()))
            .ok_or_else(bad)?;
        Ok(Month { first })
    }

    /// `[start, end)` of the month in UTC: from midnight of its first day in Beijing.
    pub fn bounds(self) -> (DateTime<Utc>, DateTime<Utc>) {
        let next = self.first.checked_add_months(chrono::Months::new(1)).unwrap_or(self.first);
        let midnight = |d: NaiveDate| beijing_to_utc(d.and_hms_opt(0, 0, 0).unwrap_or_default());
        (midnight(self.first), midnight(next))
    }

    pub fn label(self) -> String {
        self.first.format("%Y-%m").to_string()
    }
}

/// One pushed window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PushedWindow {
    pub instance_id: String,
    pub org_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub units: u64,
    /// Exact, as many decimals as the catalog's unit (¥0.001: three).
    pub yuan: String,
    pub request_id: String,
    pub pushed_at: Option<DateTime<Utc>>,
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str =
    "instance_id,org_id,window_start_beijing,window_end_beijing,window_start_utc,units,yuan,request_id,pushed_at_utc";

/// A field as RFC 4180 wants it: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The export as CSV: a header line and one line per window, in time order, then by instance.
pub fn to_csv(rows: &[PushedWindow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    for r in rows {
        let cells = [
            field(&r.instance_id),
            field(&r.org_id),
            format_time(r.start),
            format_time(r.end),
            r.start.to_rfc3339(),
            r.units.to_string(),
            r.yuan.clone(),
            field(&r.request_id),
            r.pushed_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ];
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

impl App {
    /// Every window pushed whose hour starts in `month` (Beijing time), in time order.
    pub async fn pushed_windows(&self, month: Month) -> Result<Vec<PushedWindow>, AppError> {
        let (from, to) = month.bounds();
        let filter = EntityFilter { kind: Some(metering::KIND.to_string()), ..Default::default() };
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.engine.list_entities(&filter, cursor.as_deref(), 500).await?;
            for r in &page.items {
                let m: Metering = serde_json::from_value(r.data.clone())
                    .map_err(|e| AppError::internal(format!("metering data of {}: {e}", r.id)))?;
                for w in m.windows.iter().filter(|w| w.status == "pushed" && w.start >= from && w.start < to) {
                    rows.push(PushedWindow {
                        instance_id: r.id.clone(),
                        org_id: w.org.to_string(),
                        start: w.start,
                        end: w.end,
                        units: w.units,
                        yuan: yuan(w.units, &self.catalog.unit_yuan).unwrap_or_default(),
                        request_id: w.request_id.clone().unwrap_or_default(),
                        pushed_at: w.pushed_at,
                    });
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        rows.sort_by(|a, b| (a.start, &a.instance_id).cmp(&(b.start, &b.instance_id)));
        Ok(rows)
    }
}

/// The month before the one `now` is in (Beijing time): what finance closes.
pub fn last_month(now: DateTime<Utc>) -> Month {
    let beijing = crate::aliyun::spi::utc_to_beijing(now).date();
    let first = beijing.with_day0(0).unwrap_or(beijing);
    let prev = first.checked_sub_signed(TimeDelta::days(1)).unwrap_or(first);
    Month { first: prev.with_day0(0).unwrap_or(prev) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_a_beijing_month() {
        let m = Month::parse("2026-12").unwrap();
        let (a, b) = m.bounds();
        assert_eq!(a.to_rfc3339(), "2026-11-30T16:00:00+00:00");
        assert_eq!(b.to_rfc3339(), "2026-12-31T16:00:00+00:00");
        for bad in ["2026-13", "2026-1", "26-12", "2026/12", "", "2026-00", "abcd-ef"] {
            assert_eq!(Month::parse(bad).unwrap_err().code, "invalid_month", "{bad}");
        }
        let now = "2026-12-31T17:00:00Z".parse().unwrap();
        assert_eq!(last_month(now).label(), "2026-12", "Beijing is already in January");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let t = "2026-12-04T01:00:00Z".parse().unwrap();
        let row = PushedWindow {
            instance_id: "i-1".into(),
            org_id: "org_1".into(),
            start: t,
            end: t + TimeDelta::hours(1),
            units: 1250,
            yuan: "1.250".into(),
            request_id: "a,\"b".into(),
            pushed_at: None,
        };
        let csv = to_csv(&[row]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            "i-1,org_1,2026-12-04 09:00:00,2026-12-04 10:00:00,2026-12-04T01:00:00+00:00,1250,1.250,\"a,\"\"b\","
        );
    }
}
