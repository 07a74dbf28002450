//! Usage billing of one subscription: hourly windows, priced in integer units with carried fractions, pushed to
//! the marketplace once each. The graph is `workflows/metering.toml`.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::ids::OrgId;
use super::pricing::{settle, DENOMINATOR, SECONDS_SCALE};
pub use super::protocol::MeteringEvent;
pub use super::protocol::MeteringState as State;
use super::protocol::{
    EarlierWindow, MeterWindow, MeteredItem, MeteringPushed, PushMetering, PushedItem, WindowMetered,
};
use crate::engine::definition::Catalog;
use crate::engine::{AttentionCause, Concern, Cx, Reject, Signal, Workflow};

/// The entity kind (one per subscription, same id).
pub const KIND: &str = super::protocol::METERING;

/// The marketplace refuses windows of 5 minutes or less for hourly products.
pub const MIN_WINDOW: TimeDelta = TimeDelta::minutes(5);
/// Windows kept in the record (older ones only in the journal and the totals).
const MAX_WINDOWS: usize = 72;
/// A window's records are those received up to this long before it closed: a record received by then has been
/// stored when the window is metered (a store takes milliseconds; the usage API's requests time out far sooner).
const CUT_MARGIN: TimeDelta = TimeDelta::minutes(1);
/// How far back a late record is looked for: a record covers at most a day, and the marketplace takes a window
/// only until the end of the next hour.
const LATE_LOOKBACK: TimeDelta = TimeDelta::hours(26);

/// One metering item's units in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    pub assit: String,
    pub units: u64,
}

impl Metering {
    /// A window's exact numerators settled against the carried fractions: whole units per item (items with none
    /// left out) and their total; what is below a unit is carried to the next window.
    pub fn settle(&mut self, metered: Vec<MeteredItem>) -> Result<(Vec<Item>, u64), Reject> {
        if !self.carry_nanos {
            for c in self.carry.values_mut() {
                let seconds: u128 = c.parse().unwrap_or(0);
                *c = (seconds * SECONDS_SCALE).to_string();
            }
            self.carry_nanos = true;
        }
        let mut items = Vec::new();
        let mut total = 0u64;
        for it in metered {
            let num: u128 = it.numerator.parse().map_err(|_| {
                Reject::new("invalid_input", format!("a numerator that is not a number: {}", it.numerator))
            })?;
            let num = if it.nanos { num } else { num * SECONDS_SCALE };
            let carry_key = format!("{}|{}", it.key, it.assit);
            let carry: u128 = self.carry.get(&carry_key).and_then(|c| c.parse().ok()).unwrap_or(0);
            let (units, rest) = settle(num, carry);
            debug_assert!(rest < DENOMINATOR);
            self.carry.insert(carry_key, rest.to_string());
            total += units;
            if units > 0 {
                items.push(Item { key: it.key, assit: it.assit, units });
            }
        }
        Ok((items, total))
    }
}

/// A window and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub org: OrgId,
    /// `metering`, `pushing`, `pushed`, `empty` (no usage), `failed`, `cancelled` (given up by an operator),
    /// `too_short` (≤ 5 min, cannot be pushed), `not_billable` (refused by the marketplace because the subscription
    /// was closed or expired: nobody's work).
    pub status: String,
    #[serde(default)]
    pub items: Vec<Item>,
    pub units: u64,
    /// The marketplace takes the window until then (the end of the next hour).
    pub deadline: DateTime<Utc>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    pub pushed_at: Option<DateTime<Utc>>,
    /// Usage records that overlapped the window.
    pub records: u64,
    /// The marketplace refused the push on its merits before the window's deadline (not a failure to meter or to
    /// reach it, not an operator's cancel, not a push that came too late).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    /// Records that came after earlier windows were metered, billed in this one for their part in those.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub late_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Totals over every window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub windows_pushed: u64,
    pub units_pushed: u64,
    pub windows_failed: u64,
    pub units_failed: u64,
    /// Refused after the subscription was closed or expired (the marketplace bills no usage then).
    #[serde(default)]
    pub windows_not_billable: u64,
    #[serde(default)]
    pub units_not_billable: u64,
    /// Given up by an operator (found on the bill already, or written off), with their reason in the window.
    #[serde(default)]
    pub windows_cancelled: u64,
    #[serde(default)]
    pub units_cancelled: u64,
}

/// The metering entity's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metering {
    /// The organization whose usage is billed.
    pub org: Option<OrgId>,
    /// Where the next window starts (end of the last closed window, or the start of billing).
    pub next_start: Option<DateTime<Utc>>,
    /// Billing ends here (release, expiry); `None` while open-ended.
    pub until: Option<DateTime<Utc>>,
    /// Per metering item, the fraction carried to the next window (numerator below the denominator), as text
    /// because JSON numbers are not wide enough.
    #[serde(default)]
    pub carry: BTreeMap<String, String>,
    /// Whether `carry` counts nanoseconds; the data of an earlier build counted whole seconds and is scaled up
    /// the first time a window is settled.
    #[serde(default)]
    pub carry_nanos: bool,
    #[serde(default)]
    pub windows: Vec<Window>,
    #[serde(default)]
    pub totals: Totals,
    /// The cut of the last window closed (see [`MeterWindow::cut`]); `None` before the first, or in data of a
    /// build before late usage (whose first window then bills no late records).
    #[serde(default)]
    pub last_cut: Option<DateTime<Utc>>,
    /// Late records the marketplace could no longer bill (the last [`MAX_WINDOWS`]): a person decides.
    #[serde(default)]
    pub past_deadline: Vec<PastDeadline>,
}

/// Usage that came after its window's deadline: not billed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastDeadline {
    pub record_id: String,
    pub received_at: DateTime<Utc>,
    /// Whole units it would have billed (the fraction shown as a remainder over the catalog's denominator is
    /// left out: this is for a person, not for the bill).
    pub units: u64,
}

/// Runs `workflows/metering.toml`.
pub struct MeteringWorkflow;

fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

fn window_index(d: &Metering, start: DateTime<Utc>) -> Option<usize> {
    d.windows.iter().position(|w| w.start == start)
}

/// A window the marketplace will not bill: refused on its merits, or lost past its deadline.
pub const WINDOW_FAILED: &str = "window_failed";
/// Usage reported after the marketplace's deadline for its hours.
pub const USAGE_PAST_DEADLINE: &str = "usage_past_deadline";

impl Workflow for MeteringWorkflow {
    type Data = Metering;
    type Event = MeteringEvent;

    fn attention(&self, _state: &str, data: &Metering) -> Vec<Concern> {
        data.windows
            .iter()
            .filter(|w| w.status == "failed")
            .map(|w| {
                let why = w.error.as_deref().unwrap_or("no error recorded");
                let what = if w.refused { "refused by the marketplace" } else { "not pushed before its deadline" };
                Concern {
                    cause: WINDOW_FAILED,
                    subject: w.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    next_step: format!(
                        "{} units of {} – {} {what} ({why}): they are not on the marketplace's bill; bill them another \
                         way or write them off, then dismiss",
                        w.units,
                        w.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        w.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                }
            })
            .chain(data.past_deadline.iter().map(|p| Concern {
                cause: USAGE_PAST_DEADLINE,
                subject: p.record_id.clone(),
                next_step: format!(
                    "usage record {} came at {} for hours whose marketplace deadline had passed (about {} units): \
                     not billed; ask the reporting service why, bill it another way or write it off, then dismiss",
                    p.record_id,
                    p.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    p.units
                ),
            }))
            .collect()
    }

    fn causes(&self) -> Vec<AttentionCause> {
        vec![
            AttentionCause {
                name: WINDOW_FAILED,
                covers: "a usage window the marketplace will not bill: refused on its merits, or past its deadline",
                next_step: "read the window's error; bill its units another way or write them off, then dismiss it",
            },
            AttentionCause {
                name: USAGE_PAST_DEADLINE,
                covers: "a usage record reported after the marketplace's deadline for the hours it covers",
                next_step: "ask why the service reported it late; bill it another way or write it off, then dismiss",
            },
        ]
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            states: State::NAMES.to_vec(),
            events: vec!["start", "stop"],
            guards: vec![],
            actions: vec![
                "start_period",
                "arm_hour",
                "close_windows",
                "stop_period",
                "price_window",
                "window_pushed",
                "window_failed",
            ],
            calls: vec!["meter_window", "push_metering_data"],
        }
    }

    fn event_name(&self, e: &MeteringEvent) -> String {
        match e {
            MeteringEvent::Start { .. } => "start",
            MeteringEvent::Stop { .. } => "stop",
        }
        .to_string()
    }

    fn guard(&self, _name: &str, _cx: &Cx<'_, Metering>, _s: &Signal<MeteringEvent>) -> bool {
        false
    }

    fn action(&self, name: &str, cx: &mut Cx<'_, Metering>, s: &Signal<MeteringEvent>) -> Result<(), Reject> {
        let now = cx.now;
        match (name, s) {
            ("start_period", Signal::Event(MeteringEvent::Start { org, at })) => {
                if cx.data.org.as_ref() != Some(org) || cx.data.until.is_some() || cx.data.next_start.is_none() {
                    cx.data.next_start = Some(cx.data.next_start.map(|n| n.max(*at)).unwrap_or(*at));
                }
                if let Some(until) = cx.data.until {
                    // Billing restarts (resume): nothing between the stop and now is billed.
                    cx.data.next_start = Some(until.max(*at));
                }
                cx.data.org = Some(org.clone());
                cx.data.until = None;
                cx.note(format!("billing {org} from {at}"));
            }
            ("arm_hour", _) => {
                let settle = cx
                    .definition
                    .timers
                    .get("metering-hour")
                    .and_then(|d| TimeDelta::from_std(*d).ok())
                    .unwrap_or(TimeDelta::minutes(5));
                let next = floor_hour(now - settle) + TimeDelta::hours(1) + settle;
                cx.set_timer_at("metering-hour", next);
            }
            ("stop_period", Signal::Event(MeteringEvent::Stop { at })) => {
                cx.data.until = Some(*at);
                cx.note(format!("billing stops at {at}"));
                // The windows refused since the last one the marketplace took were refused because it had
                // closed or expired the subscription before we heard of it: not billable, not a person's work.
                let last_pushed = cx.data.windows.iter().filter(|w| w.status == "pushed").map(|w| w.start).max();
                let mut moved = Vec::new();
                for w in cx.data.windows.iter_mut() {
                    if w.status == "failed" && w.refused && last_pushed.is_none_or(|p| w.start > p) {
                        w.status = "not_billable".into();
                        cx.data.totals.windows_failed = cx.data.totals.windows_failed.saturating_sub(1);
                        cx.data.totals.units_failed = cx.data.totals.units_failed.saturating_sub(w.units);
                        cx.data.totals.windows_not_billable += 1;
                        cx.data.totals.units_not_billable += w.units;
                        moved.push(w.start);
                    }
                }
                for start in moved {
                    cx.note(format!("window from {start} refused because the subscription had ended: not billable"));
                }
            }
            ("close_windows", _) => close_windows(cx)?,
            ("price_window", Signal::CallOk { response, .. }) => {
                let metered = serde_json::from_value::<WindowMetered>(response.clone()).ok();
                let Some((i, metered)) = metered.and_then(|m| window_index(cx.data, m.start).map(|i| (i, m))) else {
                    cx.note("a metered window that is not known: ignored");
                    return Ok(());
                };
                let (items, total) = cx.data.settle(metered.items)?;
                let records = metered.records;
                let instance = cx.key.id.clone();
                let mut late_billed = 0;
                for late in &metered.late {
                    let units = |items: &[MeteredItem]| {
                        let n: u128 = items.iter().filter_map(|i| i.numerator.parse::<u128>().ok()).sum();
                        (n / DENOMINATOR).min(u64::MAX as u128) as u64
                    };
                    if !late.billed.is_empty() {
                        late_billed += 1;
                        cx.note(format!(
                            "late usage: record {} (received {}) billed in this window for its part in earlier \
                             windows (about {} units)",
                            late.record_id,
                            late.received_at,
                            units(&late.billed)
                        ));
                    }
                    if !late.past_deadline.is_empty() {
                        let units = units(&late.past_deadline);
                        cx.note(format!(
                            "late usage: record {} (received {}) came after the marketplace's deadline for part of \
                             it (about {units} units): not billed, flagged",
                            late.record_id, late.received_at
                        ));
                        cx.data.past_deadline.push(PastDeadline {
                            record_id: late.record_id.clone(),
                            received_at: late.received_at,
                            units,
                        });
                    }
                }
                let extra = cx.data.past_deadline.len().saturating_sub(MAX_WINDOWS);
                cx.data.past_deadline.drain(..extra);
                let w = &mut cx.data.windows[i];
                w.items = items.clone();
                w.units = total;
                w.records = records;
                w.late_records = late_billed;
                if total == 0 {
                    w.status = "empty".into();
                    let (s, e) = (w.start, w.end);
                    cx.note(format!("window {s} – {e}: no billable usage"));
                } else {
                    w.status = "pushing".into();
                    let (s, e) = (w.start, w.end);
                    let push = PushMetering {
                        instance_id: instance,
                        start: s.timestamp(),
                        end: e.timestamp(),
                        window_start: s,
                        entities: items
                            .iter()
                            .map(|it| PushedItem { key: it.key.clone(), value: it.units, assit: it.assit.clone() })
                            .collect(),
                    };
                    cx.request("push_metering_data", &push)?;
                    cx.note(format!("window {s} – {e}: {total} units to push"));
                }
            }
            ("window_pushed", Signal::CallOk { response, .. }) => {
                let pushed = serde_json::from_value::<MeteringPushed>(response.clone()).ok();
                let start = pushed.as_ref().and_then(|p| p.window_start);
                if let Some(i) = start.and_then(|s| window_index(cx.data, s)) {
                    let w = &mut cx.data.windows[i];
                    w.status = "pushed".into();
                    w.pushed_at = Some(now);
                    w.request_id = pushed.and_then(|p| p.request_id);
                    w.error = None;
                    let units = w.units;
                    let rid = w.request_id.clone().unwrap_or_default();
                    cx.data.totals.windows_pushed += 1;
                    cx.data.totals.units_pushed += units;
                    cx.note(format!("pushed {units} units (RequestId {rid})"));
                }
            }
            ("window_failed", Signal::CallFailed { call, error, request, by_operator }) => {
                let pushing = call == "push_metering_data";
                let start = request.as_ref().and_then(|r| {
                    if pushing {
                        serde_json::from_value::<PushMetering>(r.clone()).ok().map(|p| p.window_start)
                    } else {
                        serde_json::from_value::<MeterWindow>(r.clone()).ok().map(|m| m.start)
                    }
                });
                let phase = if pushing { "pushing" } else { "metering" };
                // A result recorded by an earlier build carries no request: the oldest unfinished window.
                let i = match start {
                    Some(s) => window_index(cx.data, s).filter(|i| cx.data.windows[*i].status == phase),
                    None => cx.data.windows.iter().position(|w| w.status == phase),
                };
                let stopped = cx.data.until.is_some();
                if let Some(i) = i {
                    let w = &mut cx.data.windows[i];
                    w.error = Some(error.clone());
                    // Refused by the marketplace on its merits before the window's deadline: not cancelled by an
                    // operator (who decided it, and why), and not lost by pushing too late (a loss a person must see).
                    w.refused = pushing && !by_operator && now < w.deadline;
                    let units = w.units;
                    if *by_operator {
                        w.status = "cancelled".into();
                        cx.data.totals.windows_cancelled += 1;
                        cx.data.totals.units_cancelled += units;
                        cx.note(format!("window cancelled by an operator ({call}): {error}"));
                    } else if w.refused && stopped {
                        w.status = "not_billable".into();
                        cx.data.totals.windows_not_billable += 1;
                        cx.data.totals.units_not_billable += units;
                        cx.note(format!("window refused after the subscription ended: not billable ({error})"));
                    } else {
                        w.status = "failed".into();
                        cx.data.totals.windows_failed += 1;
                        cx.data.totals.units_failed += units;
                        cx.note(format!("window failed for good ({call}): {error}"));
                    }
                }
            }
            (other, _) => {
                return Err(Reject::new("unexpected_event", format!("action `{other}` does not apply to this event")))
            }
        }
        let extra = cx.data.windows.len().saturating_sub(MAX_WINDOWS);
        if extra > 0 {
            cx.data.windows.drain(..extra);
        }
        Ok(())
    }
}

/// Closes every window that has ended: whole hours up to the last boundary (or to the stop), each metered.
fn close_windows(cx: &mut Cx<'_, Metering>) -> Result<(), Reject> {
    let Some(org) = cx.data.org.clone() else { return Ok(()) };
    let Some(mut start) = cx.data.next_start else { return Ok(()) };
    let settle = cx
        .definition
        .timers
        .get("metering-hour")
        .and_then(|d| TimeDelta::from_std(*d).ok())
        .unwrap_or(TimeDelta::minutes(5));
    let end_all = match cx.data.until {
        Some(u) => u,
        None => floor_hour(cx.now - settle),
    };
    let stopping = cx.data.until.is_some();
    while start < end_all {
        let mut end = (floor_hour(start) + TimeDelta::hours(1)).min(end_all);
        if end - start <= MIN_WINDOW && end < end_all {
            // A first window of a few minutes joins the next hour.
            end = (end + TimeDelta::hours(1)).min(end_all);
        }
        if stopping && end < end_all && end_all - end <= MIN_WINDOW {
            // A last window of a few minutes (released just after a boundary) joins this one.
            end = end_all;
        }
        if end - start <= MIN_WINDOW && !stopping {
            break;
        }
        push_window(cx, &org, start, end);
        start = end;
    }
    cx.data.next_start = Some(start);
    Ok(())
}

fn push_window(cx: &mut Cx<'_, Metering>, org: &OrgId, start: DateTime<Utc>, end: DateTime<Utc>) {
    let deadline = floor_hour(end) + TimeDelta::hours(if floor_hour(end) == end { 1 } else { 2 });
    // In whole seconds, as the window is pushed: 5 min 0.3 s goes out as 300 s, which the marketplace refuses.
    let too_short = end.timestamp() - start.timestamp() <= MIN_WINDOW.num_seconds();
    cx.data.windows.push(Window {
        start,
        end,
        org: org.clone(),
        status: if too_short { "too_short".into() } else { "metering".into() },
        items: vec![],
        units: 0,
        deadline,
        request_id: None,
        error: None,
        pushed_at: None,
        records: 0,
        refused: false,
        late_records: 0,
    });
    if too_short {
        cx.note(format!("window {start} – {end} is 5 minutes or less: the marketplace cannot take it"));
        return;
    }
    // A minute before now (the store has every record received by then), but never before the window's end.
    let cut = (cx.now - CUT_MARGIN).max(end);
    let since = cx.data.last_cut;
    let earlier = cx
        .data
        .windows
        .iter()
        .filter(|w| w.start < start && w.end > start - LATE_LOOKBACK)
        .map(|w| EarlierWindow { start: w.start, end: w.end, deadline: w.deadline })
        .collect();
    cx.data.last_cut = Some(since.map_or(cut, |s| s.max(cut)));
    let request = MeterWindow { org_id: org.clone(), start, end, cut: Some(cut), since, earlier };
    if let Err(e) = cx.request("meter_window", &request) {
        cx.note(format!("window {start} – {end} could not be metered: {}", e.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(numerator: u128, nanos: bool) -> MeteredItem {
        MeteredItem { key: "k".into(), assit: "a".into(), numerator: numerator.to_string(), nanos }
    }

    #[test]
    fn a_carry_and_an_answer_of_an_earlier_build_count_seconds_and_are_scaled() {
        // Half a unit carried in seconds (1,800,000 over 3,600,000) and half a unit answered in seconds: one unit.
        let mut m = Metering { carry: [("k|a".to_string(), "1800000".to_string())].into(), ..Default::default() };
        let (items, total) = m.settle(vec![item(1_800_000, false)]).unwrap();
        assert_eq!((total, items.len()), (1, 1));
        assert!(m.carry_nanos);
        assert_eq!(m.carry["k|a"], "0");
        // From now on nanoseconds: a quarter unit now, three quarters later.
        let quarter = DENOMINATOR / 4;
        assert_eq!(m.settle(vec![item(quarter, true)]).unwrap().1, 0);
        assert_eq!(m.settle(vec![item(3 * quarter, true)]).unwrap().1, 1);
        assert_eq!(m.carry["k|a"], "0");
    }

    #[test]
    fn a_numerator_that_is_not_a_number_is_refused() {
        let mut m = Metering::default();
        let bad = MeteredItem { key: "k".into(), assit: "a".into(), numerator: "1e9".into(), nanos: true };
        assert_eq!(m.settle(vec![bad]).unwrap_err().code, "invalid_input");
    }
}
