//! Usage billing through the marketplace (issue 6), on the manual clock shared by the service and the local
//! marketplace: what the marketplace receives, window by window.

use crate::world;

use std::time::Duration;

use chrono::{DurationRound, TimeDelta};
use reqwest::Method;
use serde_json::{json, Value};
use world::*;

const UID: &str = "1999000000000001";

fn hour_floor(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap()
}

fn units(record: &Value) -> u64 {
    record["entities"].as_array().unwrap().iter().map(|e| e["value"].as_u64().unwrap()).sum()
}

#[actix_rt::test]
async fn a_day_of_usage_from_several_clusters_is_24_exact_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("mia").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, UID).await;
    // Usage starts at the next hour and runs for 24 hours, reported hour by hour as it happens.
    let day_start = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    let clusters = [("c-perf", "performance", 1.0), ("c-cap", "capacity", 2.5), ("c-small", "performance", 0.333)];
    let mut exact_numerator: u128 = 0;
    // Advance to the first boundary + settle: the short first window (binding → boundary) has no usage.
    w.clock.set(day_start + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    for h in 0..24 {
        let ws = day_start + TimeDelta::hours(h);
        for (i, (cluster, cu_type, cu)) in clusters.iter().enumerate() {
            // Two records per cluster and hour, as a service reporting every 30 minutes.
            for half in 0..2 {
                let start = ws + TimeDelta::minutes(30 * half);
                let end = start + TimeDelta::minutes(30);
                let id = format!("r-{h}-{i}-{half}");
                w.clock.set(end);
                let (st, v) = w.usage(&id, &u.org_id, cluster, cu_type, *cu, start, end).await;
                assert_eq!(st, 201, "{v}");
                assert_eq!(v["billable"], true);
                exact_numerator += 1800u128 * (cu * 1000.0).round() as u128 * 1250;
            }
        }
        // A repeated record changes nothing.
        let (st, v) = w
            .usage(&format!("r-{h}-0-0"), &u.org_id, "c-perf", "performance", 1.0, ws, ws + TimeDelta::minutes(30))
            .await;
        assert_eq!((st, v["stored"].as_str()), (200, Some("repeated")));
        w.clock.set(ws + TimeDelta::hours(1) + TimeDelta::minutes(6));
        w.metering_settled(&s).await;
    }
    let got = w.received(&s).await;
    let records = got["records"].as_array().unwrap();
    assert_eq!(records.len(), 24, "one push per hour: {got}");
    assert_eq!(got["duplicates"], 0);
    for (h, r) in records.iter().enumerate() {
        let ws = day_start + TimeDelta::hours(h as i64);
        assert_eq!(r["start_time"].as_i64().unwrap(), ws.timestamp(), "window {h}");
        assert_eq!(r["end_time"].as_i64().unwrap(), (ws + TimeDelta::hours(1)).timestamp());
        assert_eq!(
            r["entities"][0]["metering_assist"]
                .as_str()
                .or(r["entities"][0]["meteringAssit"].as_str())
                .unwrap_or("cmgj00063418-Frequency-1"),
            "cmgj00063418-Frequency-1"
        );
    }
    let total: u64 = records.iter().map(units).sum();
    assert_eq!(total as u128, exact_numerator / 3_600_000, "units add up to the exact total");
    // 1 CU + 2.5 CU + 0.333 CU for 24 h at 1250 units per CU-hour.
    assert_eq!(total, 114_990);
    let m = w.metering(&s).await;
    assert_eq!(m["data"]["totals"]["units_pushed"], total);
    let (_, view) = w.api(Method::GET, &format!("/api/v1/ops/orgs/{}/metering", u.org_id), Some(OP), None).await;
    assert_eq!(view["totals"]["pushed"]["windows"], 24, "{view}");
    assert_eq!(view["totals"]["pushed"]["yuan"], "114.990");
    w.shutdown().await;
}

/// Billing exactly: a service reporting contiguous usage whose boundaries fall between seconds (as clocks do) is
/// billed the whole hour, 1250 units for 1 CU; counted in whole seconds, every record lost its fraction.
#[actix_rt::test]
async fn contiguous_usage_with_sub_second_boundaries_bills_the_whole_hour() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("ivy").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, UID).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    // Seven records; each boundary inside the hour is 0.987654321 s past a whole second. Counted in whole seconds,
    // the first and last records lost about a second between them: 1249 units.
    let mut bounds = vec![h0];
    for k in 1..7 {
        bounds.push(h0 + TimeDelta::seconds(514 * k) + TimeDelta::nanoseconds(987_654_321));
    }
    bounds.push(h0 + TimeDelta::hours(1));
    w.clock.set(h0 + TimeDelta::hours(1));
    for (i, b) in bounds.windows(2).enumerate() {
        let (st, v) = w.usage(&format!("ns-{i}"), &u.org_id, "c1", "performance", 1.0, b[0], b[1]).await;
        assert_eq!(st, 201, "{v}");
    }
    w.clock.set(h0 + TimeDelta::hours(1) + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    let got = w.received(&s).await;
    let records = got["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{got}");
    assert_eq!(units(&records[0]), 1250, "{got}");
    w.shutdown().await;
}

#[actix_rt::test]
async fn a_marketplace_down_for_30_minutes_gets_each_window_once_before_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("leo").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, UID).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    w.clock.set(h0 + TimeDelta::hours(1));
    let (st, _) = w.usage("x-1", &u.org_id, "c1", "performance", 1.0, h0, h0 + TimeDelta::hours(1)).await;
    assert_eq!(st, 201);
    w.sim(Method::POST, "/sim/faults", Some(json!({"openapi_error_rate": 1.0, "seed": 1}))).await;
    // The window closes at h0+1h+5m; pushes fail for 30 minutes, retried with backoff.
    for _ in 0..35 {
        w.clock.advance(Duration::from_secs(60));
        w.quiet("metering", &s).await;
    }
    let m = w.metering(&s).await;
    assert_eq!(m["data"]["windows"].as_array().unwrap().last().unwrap()["status"], "pushing", "{m}");
    assert_eq!(w.received(&s).await["records"].as_array().unwrap().len(), 0);
    w.sim(Method::POST, "/sim/faults", Some(json!({"openapi_error_rate": 0.0}))).await;
    for _ in 0..20 {
        w.clock.advance(Duration::from_secs(60));
        w.quiet("metering", &s).await;
    }
    let m = w.metering_settled(&s).await;
    let window = m["data"]["windows"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(window["status"], "pushed", "{m}");
    let pushed_at = chrono::DateTime::parse_from_rfc3339(window["pushed_at"].as_str().unwrap()).unwrap();
    let deadline = chrono::DateTime::parse_from_rfc3339(window["deadline"].as_str().unwrap()).unwrap();
    assert!(pushed_at < deadline, "pushed late but before the deadline: {window}");
    let got = w.received(&s).await;
    assert_eq!(got["records"].as_array().unwrap().len(), 1, "pushed once: {got}");
    assert_eq!(units(&got["records"][0]), 1250);
    w.shutdown().await;
}

#[actix_rt::test]
async fn bad_usage_is_refused_with_a_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("val").await;
    let now = marketflow::clock::Clock::now(&w.clock);
    let h = TimeDelta::hours(1);
    let cases = [
        (json!({"cu": -1.0}), "invalid_cu"),
        (json!({"cu": 1e9}), "invalid_cu"),
        (json!({"cu_type": "gold"}), "unknown_cu_type"),
        (json!({"start": now, "end": now - h}), "invalid_interval"),
        (json!({"start": now + h, "end": now + h * 2}), "interval_in_future"),
        (json!({"start": now - h * 30, "end": now - h * 2}), "invalid_interval"),
        (json!({"record_id": "bad id!"}), "invalid_id"),
    ];
    for (patch, code) in cases {
        let mut body = json!({"record_id": "r1", "org_id": u.org_id, "resource_id": "c1", "cu_type": "performance",
                              "cu": 1.0, "start": now - h, "end": now});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = w.api(Method::POST, "/api/v1/usage", Some(SVC), Some(body.clone())).await;
        assert_eq!((s, v["code"].as_str()), (422, Some(code)), "{body}");
    }
    let (s, _) = w.api(Method::POST, "/api/v1/usage", Some(OP), Some(json!({}))).await;
    assert_eq!(s, 403, "the operator is not the service");
    let (s, _) = w.usage("r1", &u.org_id, "c1", "performance", 1.0, now - h, now).await;
    assert_eq!(s, 201, "a valid record after all the refusals is new: nothing was stored before");
    let (s, v) = w.usage("r1", &u.org_id, "c1", "performance", 2.0, now - h, now).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("record_conflict")));
    let (_, v) = w.usage("r2", &u.org_id, "c1", "performance", 1.0, now - h, now).await;
    assert_eq!(v["billable"], false, "no bound subscription: recorded, not billed");
    w.shutdown().await;
}

#[actix_rt::test]
async fn usage_is_billed_up_to_the_release_and_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("ivy").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, UID).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    // 1 CU all hour; the buyer closes the subscription at h0 + 30 min.
    w.clock.set(h0 + TimeDelta::minutes(30));
    let (st, _) = w.usage("a", &u.org_id, "c1", "performance", 1.0, h0, h0 + TimeDelta::minutes(30)).await;
    assert_eq!(st, 201);
    w.close(&s).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.metering(&s).await["state"] != "stopped" {
        assert!(std::time::Instant::now() < deadline, "metering never stopped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let m = w.metering_settled(&s).await;
    let last = m["data"]["windows"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        last["end"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        h0 + TimeDelta::minutes(30)
    );
    assert_eq!(last["status"], "pushed", "the last partial window is billed at once: {m}");
    assert_eq!(last["units"], 625);
    // Usage after the release is recorded, not billed, and shown to operators as unbilled.
    w.clock.set(h0 + TimeDelta::hours(1));
    let (_, v) =
        w.usage("b", &u.org_id, "c1", "performance", 1.0, h0 + TimeDelta::minutes(30), h0 + TimeDelta::hours(1)).await;
    assert_eq!(v["billable"], false, "{v}");
    w.clock.set(h0 + TimeDelta::hours(3));
    w.quiet("metering", &s).await;
    let got = w.received(&s).await;
    assert_eq!(got["records"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(units(&got["records"][0]), 625);
    let (_, view) = w.api(Method::GET, &format!("/api/v1/ops/orgs/{}/metering", u.org_id), Some(OP), None).await;
    assert_eq!(view["unbilled"]["units"], 625, "{view}");
    assert_eq!(view["unbilled"]["yuan"], "0.625");
    w.shutdown().await;
}

/// Finance's monthly export: the pushed window of the month in CSV from the ops API and from `ctl finance`, the
/// same bytes, exact yuan, the marketplace's request id; a month without pushes has only the header; a bad month is
/// refused with its code.
#[actix_rt::test]
async fn the_monthly_finance_export_lists_every_pushed_window() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: marketflow::ctl::CtlArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("fay").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, UID).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    w.clock.set(h0 + TimeDelta::hours(1));
    let (st, _) = w.usage("fin-1", &u.org_id, "c1", "performance", 1.0, h0, h0 + TimeDelta::hours(1)).await;
    assert_eq!(st, 201);
    w.clock.set(h0 + TimeDelta::hours(1) + TimeDelta::minutes(6));
    w.metering_settled(&s).await;
    let m = w.metering(&s).await;
    let pushed = m["data"]["windows"].as_array().unwrap().iter().find(|w| w["status"] == "pushed").unwrap().clone();
    let request_id = pushed["request_id"].as_str().unwrap().to_string();
    let month = marketflow::aliyun::spi::utc_to_beijing(h0).format("%Y-%m").to_string();

    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/ops/finance/pushed-windows?month={month}", w.service);
    let r = http.get(&url).bearer_auth(OP).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert_eq!(lines[0], marketflow::app::finance::CSV_HEADER);
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((cells[0], cells[1]), (s.as_str(), u.org_id.as_str()), "{csv}");
    assert_eq!(cells[2], marketflow::aliyun::spi::format_time(h0));
    assert_eq!((cells[5], cells[6], cells[7]), ("1250", "1.250", request_id.as_str()), "{csv}");

    let (st, v) =
        w.api(Method::GET, &format!("{}&format=json", url.trim_start_matches(&w.service)), Some(OP), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["units"].as_u64(), v["yuan"].as_str()), (Some(1250), Some("1.250")));

    // ctl prints the service's CSV as it is.
    let cli = Cli::try_parse_from(["ctl", "--url", &w.service, "--token", OP, "finance", "--month", &month]).unwrap();
    let mut out = Vec::new();
    marketflow::ctl::run(cli.args, &mut out).await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), csv);

    // Another month: the header alone. A bad one: refused, with its code.
    let r = http.get(format!("{}/api/v1/ops/finance/pushed-windows?month=2001-01", w.service)).bearer_auth(OP);
    let empty = r.send().await.unwrap().text().await.unwrap();
    assert_eq!(empty, format!("{}\r\n", marketflow::app::finance::CSV_HEADER));
    for bad in ["2026-13", "december", ""] {
        let (st, v) =
            w.api(Method::GET, &format!("/api/v1/ops/finance/pushed-windows?month={bad}"), Some(OP), None).await;
        assert_eq!((st, v["code"].as_str()), (400, Some("invalid_month")), "{bad}: {v}");
    }
    let (st, v) = w.api(Method::GET, "/api/v1/ops/finance/pushed-windows?format=xml", Some(OP), None).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_format")), "{v}");
    w.shutdown().await;
}

/// The binary's `ctl` flags, as `main` flattens them.
#[derive(clap::Parser)]
struct Ctl {
    #[command(flatten)]
    args: marketflow::ctl::CtlArgs,
}

/// Windows whose push timed out (the marketplace may have billed them) wait for a person. An operator resolves
/// them in bulk: a dry run by hour lists both and changes nothing; one, picked by instance, is marked pushed with
/// the bill's request id; `ctl` lists the other; cancelled by hour, it is failed. Bad requests change nothing, and
/// the audit trail says who did what and why.
/// Two bound subscriptions of two organizations whose pushes of the hour `h0` timed out (their outcome unknown,
/// both needing a person), with pushes timing out after 300 ms in this world. Answers the world, the two
/// instances and the hour.
pub(crate) async fn two_windows_of_unknown_outcome(
    dir: &std::path::Path,
) -> (World, String, String, chrono::DateTime<chrono::Utc>) {
    let mut w = World::new(dir).await;
    // Pushes time out after 300 ms here, so a slow marketplace leaves their outcome unknown.
    let defs = dir.join("workflows");
    std::fs::create_dir_all(&defs).unwrap();
    for (file, source) in marketflow::startup::BUILTIN_WORKFLOWS {
        let name = std::path::Path::new(file).file_name().unwrap();
        let source = match file.ends_with("/metering.toml") {
            true => source.replace("timeout = \"20s\"", "timeout = \"300ms\""),
            false => source.to_string(),
        };
        std::fs::write(defs.join(name), source).unwrap();
    }
    w.workflows_dir = Some(defs);
    w.restart_service().await;
    let (ua, ub) = (w.user("una").await, w.user("ben").await);
    let sa = w.subscribe_and_bind(&ua, &ua.org_id, "1999000000000011").await;
    let sb = w.subscribe_and_bind(&ub, &ub.org_id, "1999000000000012").await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    w.metering_settled(&sa).await;
    w.metering_settled(&sb).await;
    w.clock.set(h0 + TimeDelta::hours(1));
    for (n, u) in [&ua, &ub].into_iter().enumerate() {
        let (st, _) =
            w.usage(&format!("u-{n}"), &u.org_id, "c1", "performance", 1.0, h0, h0 + TimeDelta::hours(1)).await;
        assert_eq!(st, 201);
    }
    w.sim(Method::POST, "/sim/faults", Some(json!({"openapi_slow_ms": 1500}))).await;
    w.clock.set(h0 + TimeDelta::hours(1) + TimeDelta::minutes(6));
    for s in [&sa, &sb] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while w.metering(s).await["needs_attention"] != true {
            assert!(std::time::Instant::now() < deadline, "{s}: {}", w.metering(s).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    w.sim(Method::POST, "/sim/faults", Some(json!({"openapi_slow_ms": 0}))).await;
    (w, sa, sb, h0)
}

#[actix_rt::test]
async fn windows_of_unknown_outcome_are_resolved_in_bulk_with_a_dry_run_and_an_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (w, sa, sb, h0) = two_windows_of_unknown_outcome(dir.path()).await;
    let resolve = |body: Value| w.api(Method::POST, "/api/v1/ops/windows/resolve", Some(OP), Some(body));
    let hour = h0.to_rfc3339();

    // Refused, and nothing changes: no selector, an unknown resolution, no reason, a request id for a cancel.
    for (body, code) in [
        (json!({"resolution": "cancel", "reason": "r"}), "selector_required"),
        (json!({"resolution": "forget", "hour": hour, "reason": "r"}), "unknown_resolution"),
        (json!({"resolution": "cancel", "hour": hour}), "reason_required"),
        (json!({"resolution": "cancel", "hour": hour, "reason": "r", "request_id": "x"}), "invalid_parameter"),
        (json!({"resolution": "cancel", "instances": ["a/b"], "reason": "r"}), "invalid_entity"),
    ] {
        let (st, v) = resolve(body.clone()).await;
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
    }
    let (st, _) = w.api(Method::POST, "/api/v1/ops/windows/resolve", None, Some(json!({}))).await;
    assert_eq!(st, 401);

    // A dry run by hour: both, 1250 units each, nothing changed.
    let (st, v) =
        resolve(json!({"resolution": "mark-pushed", "hour": hour, "reason": "checking", "dry_run": true})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["dry_run"], true);
    let listed: Vec<_> = v["windows"].as_array().unwrap().iter().map(|x| x["instance_id"].as_str().unwrap()).collect();
    let mut both = vec![sa.as_str(), sb.as_str()];
    both.sort();
    assert_eq!(listed, both, "{v}");
    assert!(v["windows"].as_array().unwrap().iter().all(|x| x["units"] == 1250), "{v}");
    for s in [&sa, &sb] {
        assert_eq!(w.metering(s).await["needs_attention"], true, "a dry run changed {s}");
    }
    // Both are in the attention index, under the cause of an unknown outcome, with the next step in words.
    let a = attention(&w, "call_outcome_unknown").await;
    let count = |a: &Value, cause: &str| {
        a["causes"].as_array().unwrap().iter().find(|c| c["cause"] == cause).map(|c| c["count"].clone())
    };
    assert_eq!(count(&a, "call_outcome_unknown"), Some(json!(2)), "{a}");
    let mut ids: Vec<&str> = a["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, both, "{a}");
    assert!(a["items"][0]["next_step"].as_str().unwrap().contains("check the marketplace"), "{a}");

    // One instance, marked pushed with the bill's request id.
    let body = json!({"resolution": "mark-pushed", "instances": [sa], "reason": "on the bill of 27 Nov",
                      "request_id": "bill-0001"});
    let (st, v) = resolve(body).await;
    assert_eq!((st, v["windows"].as_array().unwrap().len()), (200, 1), "{v}");
    let m = w.metering_settled(&sa).await;
    let window = m["data"]["windows"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((window["status"].as_str(), window["request_id"].as_str()), (Some("pushed"), Some("bill-0001")), "{m}");
    assert_eq!(m["needs_attention"], false, "{m}");

    // `ctl` lists what is left for that hour.
    let argv =
        ["ctl", "--url", &w.service, "--token", OP, "windows", "resolve", "cancel", "--hour", &hour, "--dry-run"];
    let args = <Ctl as clap::Parser>::try_parse_from(argv).unwrap().args;
    let mut out = Vec::new();
    marketflow::ctl::run(args, &mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("1 window(s) would be resolved as cancel"), "{out}");
    assert!(out.contains(sb.as_str()) && !out.contains(sa.as_str()), "{out}");

    // The rest of the hour, cancelled, with the operator's reason.
    let (st, v) = resolve(json!({"resolution": "cancel", "hour": hour, "reason": "not on the bill, too late"})).await;
    assert_eq!((st, v["windows"].as_array().unwrap().len()), (200, 1), "{v}");
    let m = w.metering_settled(&sb).await;
    let window = m["data"]["windows"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(window["status"], "cancelled", "{m}");
    assert!(window["error"].as_str().unwrap().contains("not on the bill, too late"), "{window}");
    assert_eq!(m["needs_attention"], false, "an operator's cancel is settled, not a failure to look at: {m}");
    let a = attention(&w, "call_outcome_unknown").await;
    assert_eq!(count(&a, "call_outcome_unknown"), Some(json!(0)), "{a}");
    assert_eq!(count(&a, "window_failed"), Some(json!(0)), "{a}");

    // The audit trail: who resolved which window and why.
    let (_, trail) = w.api(Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
    let rows: Vec<(String, String)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect();
    assert!(rows.contains(&("window:mark-pushed".into(), "on the bill of 27 Nov".into())), "{trail}");
    assert!(rows.contains(&("window:cancel".into(), "not on the bill, too late".into())), "{trail}");
    w.shutdown().await;
}

/// What needs attention, every cause counted and the concerns of `cause` listed (`GET /api/v1/ops/attention`).
async fn attention(w: &World, cause: &str) -> Value {
    let (st, v) = w.api(Method::GET, &format!("/api/v1/ops/attention?cause={cause}"), Some(OP), None).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// `n` subscriptions, each bound by `owner` to an organization of its own made for them by an operator (cheap: no
/// password hashing per subscription), all active; answers (instance, organization) pairs.
async fn many_bound(w: &World, owner: &TestUser, n: usize) -> Vec<(String, String)> {
    let mut orgs = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"name": format!("org {i}"), "owner_email": owner.email});
        let (st, v) = w.api(Method::POST, "/api/v1/ops/orgs", Some(OP), Some(body)).await;
        assert_eq!(st, 201, "{v}");
        orgs.push(v["org_id"].as_str().unwrap().to_string());
    }
    let mut instances = Vec::with_capacity(n);
    for i in 0..n {
        instances.push(w.open(&format!("19990000{i:08}"), 60).await);
    }
    // Activation: a poll a minute; two minutes activate every one of them.
    for _ in 0..3 {
        w.clock.advance(Duration::from_secs(60));
        for s in &instances {
            w.quiet("subscription", s).await;
        }
    }
    let mut pairs = Vec::with_capacity(n);
    for (s, org) in instances.into_iter().zip(orgs) {
        w.wait_state(&s, "active").await;
        w.sso(owner, &s).await;
        let path = format!("/api/v1/marketplace/aliyun/subscriptions/{s}/binding");
        let (st, v) = w.api(Method::POST, &path, Some(&owner.token), Some(json!({"org_id": org}))).await;
        assert_eq!(st, 202, "{v}");
        pairs.push((s, org));
    }
    for (s, _) in &pairs {
        assert_eq!(w.binding_decided(owner, s).await.0, "bound");
    }
    // Billing starts when the subscription's message reaches its metering entity, a moment after the binding.
    for (s, _) in &pairs {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while w.metering(s).await["state"] != "billing" {
            assert!(std::time::Instant::now() < deadline, "{s} never started billing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pairs
}

/// Waits until every window of these subscriptions is settled.
async fn all_settled(w: &World, pairs: &[(String, String)]) {
    for (s, _) in pairs {
        w.metering_settled(s).await;
    }
}

/// The marketplace's log of accepted records, grouped by the call (RequestId) that carried them.
async fn calls_received(w: &World) -> std::collections::BTreeMap<String, Vec<Value>> {
    let got = w.sim(Method::GET, "/sim/metering", None).await;
    let mut calls: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for r in got["records"].as_array().unwrap() {
        calls.entry(r["request_id"].as_str().unwrap().to_string()).or_default().push(r.clone());
    }
    calls
}

/// Batched pushes: the hourly burst of 250 bound subscriptions goes out in 3 calls of at most 100 windows, each
/// instance once, every window exact.
#[actix_rt::test]
async fn two_hundred_fifty_subscriptions_push_their_hour_in_three_calls() {
    let dir = tempfile::tempdir().unwrap();
    // Batches wait for 100 windows, or 2 s without a new one, however slowly a loaded machine meters them.
    let w = World::with_config(dir.path(), |c| c.push_linger = Duration::from_secs(20)).await;
    let owner = w.user("pat").await;
    let pairs = many_bound(&w, &owner, 250).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;
    w.clock.set(h0 + TimeDelta::hours(1));
    for (i, (_, org)) in pairs.iter().enumerate() {
        let (st, v) = w.usage(&format!("u-{i}"), org, "c1", "performance", 1.0, h0, h0 + TimeDelta::hours(1)).await;
        assert_eq!(st, 201, "{v}");
    }
    w.clock.set(h0 + TimeDelta::hours(1) + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;
    let calls = calls_received(&w).await;
    assert_eq!(calls.len(), 3, "250 windows in 3 calls: {:?}", calls.values().map(Vec::len).collect::<Vec<_>>());
    let mut seen = std::collections::BTreeSet::new();
    for records in calls.values() {
        assert!(records.len() <= 100, "{} records in one call", records.len());
        for r in records {
            assert!(seen.insert(r["instance_id"].as_str().unwrap().to_string()), "an instance twice: {r}");
            assert_eq!(units(r), 1250, "{r}");
            assert_eq!(r["start_time"].as_i64().unwrap(), h0.timestamp());
        }
    }
    assert_eq!(seen.len(), 250);
    for (s, _) in pairs.iter().take(3) {
        let m = w.metering(s).await;
        let window = m["data"]["windows"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(window["status"], "pushed", "{m}");
        assert!(calls.contains_key(window["request_id"].as_str().unwrap()), "{window}");
    }
    w.shutdown().await;
}

/// An operator holds every push (audited): windows keep being metered and wait, not in flight, and go out once
/// released. No instance goes in two calls within 60 s: released half a minute after its hour's push, a
/// subscription's last window waits for the marketplace's 60 s.
#[actix_rt::test]
async fn held_pushes_wait_and_an_instance_is_never_pushed_twice_within_60_s() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let owner = w.user("hal").await;
    let pairs = many_bound(&w, &owner, 3).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;

    let hold = |switch: &'static str, reason: Option<&'static str>| {
        let path = format!("/api/v1/ops/pushes/{switch}");
        let w = &w;
        async move { w.api(Method::POST, &path, Some(OP), Some(json!({ "reason": reason }))).await }
    };
    let (st, v) = hold("hold", None).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("reason_required")), "{v}");
    let (st, v) = hold("pause", Some("x")).await;
    assert_eq!(st, 404, "{v}");
    let (st, _) = w.api(Method::POST, "/api/v1/ops/pushes/hold", None, Some(json!({"reason": "x"}))).await;
    assert_eq!(st, 401);
    let (st, v) = hold("hold", Some("the marketplace bills twice: incident 42")).await;
    assert_eq!((st, v["held"].as_bool()), (200, Some(true)), "{v}");

    // An hour of usage; its windows are metered, and held.
    let h1 = h0 + TimeDelta::hours(1);
    w.clock.set(h1);
    for (i, (_, org)) in pairs.iter().enumerate() {
        let (st, _) = w.usage(&format!("u-{i}"), org, "c1", "performance", 1.0, h0, h1).await;
        assert_eq!(st, 201);
    }
    w.clock.set(h1 + TimeDelta::minutes(6));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    'held: loop {
        let mut all = true;
        for (s, _) in &pairs {
            let m = w.metering(s).await;
            let last = m["data"]["windows"].as_array().and_then(|ws| ws.last().cloned()).unwrap_or_default();
            all &= last["status"] == "pushing";
            assert!(m["pending_calls"].as_array().unwrap().iter().all(|c| c["status"] == "pending"), "{m}");
        }
        if all {
            break 'held;
        }
        assert!(std::time::Instant::now() < deadline, "the windows were never metered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Given every chance to leak out (the hold is read once a second), nothing went.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(calls_received(&w).await.is_empty(), "a held push went out");
    let (_, p) = w.api(Method::GET, "/api/v1/ops/pushes", Some(OP), None).await;
    assert_eq!(p["hold"]["held"], true, "{p}");

    // `ctl pushes` tells it; `ctl pushes release` releases it, and the windows go in one call.
    let ctl = |argv: Vec<String>| async move {
        let args = <Ctl as clap::Parser>::try_parse_from(argv).unwrap().args;
        let mut out = Vec::new();
        marketflow::ctl::run(args, &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let base = ["ctl", "--url", &w.service, "--token", OP].map(String::from).to_vec();
    let out = ctl([base.clone(), vec!["pushes".into()]].concat()).await;
    assert!(out.starts_with("pushes HELD since") && out.contains("incident 42"), "{out}");
    let release = ["pushes", "release", "--reason", "incident 42 closed"].map(String::from).to_vec();
    let out = ctl([base.clone(), release].concat()).await;
    assert!(out.starts_with("pushes flowing"), "{out}");
    all_settled(&w, &pairs).await;
    let calls = calls_received(&w).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls.values().next().unwrap().len(), 3);
    let trail = w.audit().await;
    let actions: Vec<_> =
        trail.iter().map(|e| (e["action"].as_str().unwrap(), e["entity"].as_str().unwrap())).collect();
    assert!(actions.contains(&("hold-pushes", "service/pushes")), "{trail:?}");
    assert!(actions.contains(&("release-pushes", "service/pushes")), "{trail:?}");

    // The next hour's windows go at its 5th minute; the subscriptions close half a minute later, and their last
    // windows (6 minutes, 5.5 minutes) wait until 60 s have passed since the previous call.
    let h2 = h1 + TimeDelta::hours(1);
    let last = h2 + TimeDelta::minutes(5) + TimeDelta::seconds(30);
    w.clock.set(h2);
    for (i, (_, org)) in pairs.iter().enumerate() {
        let (st, _) = w.usage(&format!("v-{i}"), org, "c1", "performance", 1.0, h1, h2).await;
        assert_eq!(st, 201);
    }
    w.clock.set(h2 + TimeDelta::minutes(5));
    all_settled(&w, &pairs).await;
    assert_eq!(calls_received(&w).await.len(), 2);
    w.clock.set(last);
    for (i, (s, org)) in pairs.iter().enumerate() {
        let (st, _) = w.usage(&format!("x-{i}"), org, "c1", "performance", 1.0, h2, last).await;
        assert_eq!(st, 201);
        w.close(s).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = true;
        for (s, _) in &pairs {
            let m = w.metering(s).await;
            let window = m["data"]["windows"].as_array().and_then(|ws| ws.last().cloned()).unwrap_or_default();
            all &= window["end"] == json!(last) && window["status"] == "pushing";
        }
        if all {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the last windows were never metered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(calls_received(&w).await.len(), 2, "a last window went within 60 s of its hour's");
    w.clock.advance(Duration::from_secs(30));
    all_settled(&w, &pairs).await;
    let calls = calls_received(&w).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    let mut by_instance: std::collections::BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> = Default::default();
    for r in calls.values().flatten() {
        let at = chrono::DateTime::parse_from_rfc3339(r["received_at"].as_str().unwrap()).unwrap().to_utc();
        by_instance.entry(r["instance_id"].as_str().unwrap().to_string()).or_default().push(at);
    }
    for (instance, mut at) in by_instance {
        at.sort();
        assert_eq!(at.len(), 3, "{instance}");
        assert!(at.windows(2).all(|p| p[1] - p[0] >= TimeDelta::seconds(60)), "{instance} within 60 s: {at:?}");
    }
    w.shutdown().await;
}

/// A batch refused on its merits (one instance closed by the marketplace, its notice lost) is split in halves and
/// sent again after the marketplace's 60 s until the refused window stands alone: the others are pushed, it fails.
/// When the periodic check finds the subscription closed, that window is `not_billable`, nobody's work.
#[actix_rt::test]
async fn a_refused_batch_is_split_to_find_the_refused_window() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic check and no failed-notice poll before the pushes: the close stays unknown until the poll.
    let w = World::with_config(dir.path(), |c| {
        c.timer_overrides.push(("subscription".into(), "check".into(), Duration::from_secs(24 * 3600)));
        c.notice_poll_interval = Duration::from_secs(4 * 3600);
    })
    .await;
    let owner = w.user("rex").await;
    let pairs = many_bound(&w, &owner, 4).await;
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    w.clock.set(h0 + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;
    // The marketplace closes the last one in the first hour; it gives up on the releaseInstance notice, which
    // waits in DescribeFailedNotifications. Usage of the hour after is not billed, and pushing it is refused.
    let closed = pairs[3].0.clone();
    w.sim(Method::POST, "/sim/faults", Some(json!({"spi_give_up_rate": 1.0, "seed": 3}))).await;
    w.sim(Method::POST, &format!("/sim/instances/{closed}/close"), None).await;
    let h1 = h0 + TimeDelta::hours(1);
    w.clock.set(h1 + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;
    w.sim(Method::POST, "/sim/faults", Some(json!({"spi_give_up_rate": 0.0}))).await;
    assert_eq!(w.state(&closed).await.as_deref(), Some("active"), "the close went unnoticed");
    w.clock.set(h1 + TimeDelta::hours(1));
    for (i, (_, org)) in pairs.iter().enumerate() {
        let (st, _) = w.usage(&format!("u-{i}"), org, "c1", "performance", 1.0, h1, h1 + TimeDelta::hours(1)).await;
        assert_eq!(st, 201);
    }
    w.clock.set(h1 + TimeDelta::hours(1) + TimeDelta::minutes(6));
    // Refused whole; halves after 61 s; the half with the closed instance refused again; quarters after 61 s more.
    let mut round = 0;
    'split: loop {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let mut done = true;
            for (s, _) in &pairs {
                let m = w.metering(s).await;
                let last = m["data"]["windows"].as_array().and_then(|ws| ws.last().cloned()).unwrap_or_default();
                done &= last["start"] == json!(h1) && last["status"] != "pushing" && last["status"] != "metering";
            }
            if done {
                break 'split;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        round += 1;
        assert!(round <= 6, "the split never ended");
        w.clock.advance(Duration::from_secs(61));
    }
    all_settled(&w, &pairs).await;
    let calls = calls_received(&w).await;
    let pushed: Vec<&str> = calls
        .values()
        .flatten()
        .filter(|r| r["start_time"].as_i64() == Some(h1.timestamp()))
        .map(|r| r["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(pushed.len(), 3, "{calls:?}");
    assert!(!pushed.contains(&closed.as_str()), "{calls:?}");
    for (s, _) in &pairs[..3] {
        let m = w.metering(s).await;
        assert_eq!(m["data"]["windows"].as_array().unwrap().last().unwrap()["status"], "pushed", "{m}");
    }
    let m = w.metering(&closed).await;
    let window = m["data"]["windows"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(window["status"], "failed", "{m}");
    assert!(window["error"].as_str().unwrap().contains("InvalidMetering.InstanceClosed"), "{window}");
    // A person must see it: the attention index holds the window, its units and why.
    let a = attention(&w, "window_failed").await;
    let items = a["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{a}");
    assert_eq!((items[0]["kind"].as_str(), items[0]["id"].as_str()), (Some("metering"), Some(closed.as_str())), "{a}");
    let start = chrono::DateTime::parse_from_rfc3339(window["start"].as_str().unwrap()).unwrap();
    assert_eq!(items[0]["subject"], start.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "{a}");
    assert!(items[0]["next_step"].as_str().unwrap().contains("InvalidMetering.InstanceClosed"), "{a}");

    // The failed-notice poll takes the given-up releaseInstance: released, and the refused window not billable.
    w.clock.set(h0 + TimeDelta::hours(4));
    w.wait_state(&closed, "released").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = w.metering(&closed).await;
        let status = m["data"]["windows"].as_array().unwrap().iter().find(|x| x["start"] == window["start"]).unwrap()
            ["status"]
            .clone();
        if status == "not_billable" {
            assert_eq!(m["data"]["totals"]["windows_not_billable"], 1, "{m}");
            assert_eq!(m["data"]["totals"]["windows_failed"], 0, "{m}");
            // Not billable is nobody's work: the transition that found it settled the concern.
            let a = attention(&w, "window_failed").await;
            assert_eq!(a["items"].as_array().map(Vec::len), Some(0), "{a}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.shutdown().await;
}

/// A series of `/metrics`, summed over its labels matching `labels` (e.g. `table="journal"`).
async fn metric(w: &World, name: &str, labels: &str) -> f64 {
    let text = w.http.get(format!("{}/metrics", w.service)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The stored rows of `table` once retention has passed over the whole journal twice more (the count follows a
/// pass; the sweeper of usage and audit records runs at the same interval).
async fn rows_after_retention(w: &World, table: &str) -> u64 {
    let start = metric(w, "marketflow_retention_cycles_total", "").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(w, "marketflow_retention_cycles_total", "").await < start + 2.0 {
        assert!(std::time::Instant::now() < deadline, "retention made no pass");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    metric(w, "marketflow_store_records", &format!("table=\"{table}\"")).await as u64
}

/// Retention: fifty bound subscriptions billed hour after hour, with journals, usage records, the audit trail and
/// inputs' outcomes kept two hours (outcomes one): once the horizon is reached the stored rows stay flat while
/// every hour adds as many as ever; an operator's audit row and the createInstance outcomes go at their time.
#[actix_rt::test]
async fn retention_keeps_the_stored_rows_flat_once_the_horizon_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::with_config(dir.path(), |c| {
        c.retention_idempotency = Duration::from_secs(3600);
        c.retention_records = Duration::from_secs(2 * 3600);
        c.sweep_interval = Duration::from_millis(20);
    })
    .await;
    let owner = w.user("rita").await;
    let pairs = many_bound(&w, &owner, 50).await;
    let (st, v) = w
        .api(
            Method::POST,
            &format!("/api/v1/ops/entities/subscription/{}/actions/pause", pairs[0].0),
            Some(OP),
            Some(json!({"reason": "looking at it"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = w
        .api(
            Method::POST,
            &format!("/api/v1/ops/entities/subscription/{}/actions/resume", pairs[0].0),
            Some(OP),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(w.audit().await.len(), 2);
    let outcomes = rows_after_retention(&w, "idempotency").await;
    assert!(outcomes >= 50, "the createInstance outcomes are kept an hour: {outcomes}");
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    let written = |w: &World| {
        let pairs = pairs.clone();
        let (http, service) = (w.http.clone(), w.service.clone());
        async move {
            let mut n = 0;
            for (s, org) in &pairs {
                for (kind, id) in [("subscription", s), ("metering", s), ("organization", org)] {
                    let v: Value = http
                        .get(format!("{service}/api/v1/ops/entities/{kind}/{id}"))
                        .bearer_auth(OP)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    n += v["seq"].as_u64().unwrap();
                }
            }
            n
        }
    };
    let mut seen = Vec::new();
    for h in 0..7 {
        let hs = h0 + TimeDelta::hours(h);
        w.clock.set(hs + TimeDelta::hours(1));
        for (i, (_, org)) in pairs.iter().enumerate() {
            let (st, v) =
                w.usage(&format!("u-{h}-{i}"), org, "c1", "performance", 1.0, hs, hs + TimeDelta::hours(1)).await;
            assert_eq!(st, 201, "{v}");
        }
        w.clock.set(hs + TimeDelta::hours(1) + TimeDelta::minutes(6));
        all_settled(&w, &pairs).await;
        let mut row = vec![written(&w).await];
        for table in ["journal", "records", "index", "idempotency"] {
            row.push(rows_after_retention(&w, table).await);
        }
        println!(
            "hour {h}: entries written {}, rows journal {} records {} index {} idempotency {}",
            row[0], row[1], row[2], row[3], row[4]
        );
        seen.push(row);
    }
    // Every hour writes as much as the one before...
    let per_hour = seen[6][0] - seen[5][0];
    assert!(per_hour >= 150 && seen[6][0] - seen[3][0] >= 3 * per_hour - 10, "{seen:?}");
    // ...and from the third hour on (the horizon is two), what is stored stays flat.
    for t in 1..5 {
        let (a, b) = (seen[3][t], seen[6][t]);
        assert!(b <= a + a / 20 + 10, "table {t} grew from {a} to {b} after the horizon: {seen:?}");
    }
    assert!(seen[6][1] < seen[6][0], "the journal holds less than was ever written: {seen:?}");
    let left = rows_after_retention(&w, "idempotency").await;
    assert!(left < 50, "the createInstance outcomes went after an hour: {outcomes} then {left}");
    assert!(w.audit().await.is_empty(), "the audit rows went after two hours");
    assert!(metric(&w, "marketflow_journal_trimmed_total", "").await > 0.0);
    assert!(metric(&w, "marketflow_store_bytes", "").await > 0.0);
    // Usage records of the last two hours are kept; older ones, and their ids, are gone.
    let (st, v) = w
        .usage("u-6-0", &pairs[0].1, "c1", "performance", 1.0, h0 + TimeDelta::hours(6), h0 + TimeDelta::hours(7))
        .await;
    assert_eq!(st, 200, "a repeat of a kept record: {v}");
    w.shutdown().await;
}

/// Late usage: a record for an hour already pushed, reported before the marketplace's deadline for that hour (the end
/// of the next), is billed in the next window (journaled); one reported after the deadline is not billed, and needs
/// a person (`usage_past_deadline`). Nothing is billed twice.
#[actix_rt::test]
async fn late_usage_is_billed_in_the_next_window_or_flagged_past_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let owner = w.user("lena").await;
    let pairs = many_bound(&w, &owner, 1).await;
    let (s, org) = pairs[0].clone();
    let h0 = hour_floor(marketflow::clock::Clock::now(&w.clock)) + TimeDelta::hours(1);
    let hour = |n: i64| h0 + TimeDelta::hours(n);
    let report = |id: &'static str, from: i64| {
        let (w, org) = (&w, org.clone());
        async move {
            let (st, v) = w.usage(id, &org, "c1", "performance", 1.0, hour(from), hour(from + 1)).await;
            assert_eq!(st, 201, "{v}");
        }
    };
    let window = |m: &Value, start: chrono::DateTime<chrono::Utc>| {
        m["data"]["windows"].as_array().unwrap().iter().find(|x| x["start"] == json!(start)).cloned().unwrap()
    };
    w.clock.set(hour(0) + TimeDelta::minutes(6));
    all_settled(&w, &pairs).await;

    // Hour 0 on time: 1250 units.
    w.clock.set(hour(1));
    report("h0", 0).await;
    w.clock.set(hour(1) + TimeDelta::minutes(6));
    let m = w.metering_settled(&s).await;
    assert_eq!(window(&m, hour(0))["units"], 1250, "{m}");

    // More of hour 0, reported at 1:20 (its deadline is 2:00): billed with hour 1.
    w.clock.set(hour(1) + TimeDelta::minutes(20));
    report("h0-late", 0).await;
    w.clock.set(hour(2));
    report("h1", 1).await;
    w.clock.set(hour(2) + TimeDelta::minutes(6));
    let m = w.metering_settled(&s).await;
    let h1 = window(&m, hour(1));
    assert_eq!((h1["units"].as_u64(), h1["late_records"].as_u64()), (Some(2500), Some(1)), "{m}");
    assert_eq!(window(&m, hour(0))["units"], 1250, "hour 0 keeps what it pushed: {m}");
    let (_, j) =
        w.api(Method::GET, &format!("/api/v1/ops/entities/metering/{s}/journal?limit=1000"), Some(OP), None).await;
    assert!(j.to_string().contains("late usage: record h0-late"), "{j}");

    // Still more of hour 0, reported at 2:10: past its deadline. Not billed; a person is told.
    w.clock.set(hour(2) + TimeDelta::minutes(10));
    report("h0-too-late", 0).await;
    w.clock.set(hour(3));
    report("h2", 2).await;
    w.clock.set(hour(3) + TimeDelta::minutes(6));
    let m = w.metering_settled(&s).await;
    assert_eq!(window(&m, hour(2))["units"], 1250, "{m}");
    let a = attention(&w, "usage_past_deadline").await;
    let items = a["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{a}");
    assert_eq!((items[0]["id"].as_str(), items[0]["subject"].as_str()), (Some(s.as_str()), Some("h0-too-late")));
    assert!(items[0]["next_step"].as_str().unwrap().contains("about 1250 units"), "{a}");

    // The marketplace got each hour once: 1250, 2500, 1250.
    let got = w.sim(Method::GET, "/sim/metering", None).await;
    let mut by_hour: Vec<(i64, u64)> = got["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["instance_id"] == s.as_str())
        .map(|r| (r["start_time"].as_i64().unwrap(), units(r)))
        .collect();
    by_hour.sort();
    let expected: Vec<(i64, u64)> =
        vec![(hour(0).timestamp(), 1250), (hour(1).timestamp(), 2500), (hour(2).timestamp(), 1250)];
    assert_eq!(by_hour, expected);
    w.shutdown().await;
}
