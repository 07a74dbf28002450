//! The account switch within one hour, freezing for arrears, resubscribing and unfreezing (issue 5), on the
//! manual clock shared by the service and the local marketplace; each also across a restart of the service.

use crate::world;

use std::time::Duration;

use marketflow::clock::Clock;
use reqwest::Method;
use serde_json::json;
use world::*;

const A: &str = "1000000000000001";
const B: &str = "1000000000000002";
const C: &str = "1000000000000003";

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

#[actix_rt::test]
async fn a_switch_completed_at_59_minutes_keeps_the_organization_active() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let u = w.user("sam").await;
        let sa = w.subscribe_and_bind(&u, &u.org_id, A).await;
        // Account B's subscription is opened first (activation takes minutes), then A's is closed.
        let sb = w.active_subscription(B).await;
        w.close(&sa).await;
        w.wait_org(&u.org_id, "window").await;
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["status"], "active", "the organization keeps running in the window");
        assert!(bill["payment_channel"].is_null());
        assert!(bill["switch_deadline"].is_string(), "{bill}");
        if restart {
            w.restart_service().await;
        }
        w.clock.advance(minutes(59));
        w.sso(&u, &sb).await;
        let path = format!("/api/v1/marketplace/aliyun/subscriptions/{sb}/binding");
        let (s, v) = w.api(Method::POST, &path, Some(&u.token), Some(json!({"org_id": u.org_id}))).await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(w.binding_decided(&u, &sb).await.0, "bound");
        w.wait_org(&u.org_id, "bound").await;
        w.clock.advance(minutes(5));
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["status"], "active", "the window's timer was cancelled: {bill}");
        assert_eq!(bill["payment_channel"]["aliyun_account_id"], B);
        let switched = bill["history"].as_array().unwrap().iter().find(|h| h["kind"] == "switched").cloned().unwrap();
        assert_eq!(switched["from_aliyun_account_id"], A);
        assert_eq!(switched["aliyun_account_id"], B);
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_window_missed_at_60_minutes_freezes_once_for_no_payment_method() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let u = w.user("nina").await;
        let sa = w.subscribe_and_bind(&u, &u.org_id, A).await;
        w.close(&sa).await;
        w.wait_org(&u.org_id, "window").await;
        w.clock.advance(minutes(59));
        if restart {
            // Down across the deadline: the timer fires once, late, after the restart.
            if let Some(h) = w.app.take() {
                h.stop(true).await;
            }
            w.clock.advance(minutes(30));
            w.restart_service().await;
        } else {
            w.clock.advance(minutes(1));
        }
        w.wait_org(&u.org_id, "frozen").await;
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["status"], "frozen");
        assert_eq!(bill["frozen_reason"], "no_payment_method");
        assert!(bill["recovery"].as_str().unwrap().contains("subscribe"));
        let (_, j) = w
            .api(Method::GET, &format!("/api/v1/ops/entities/organization/{}/journal", u.org_id), Some(OP), None)
            .await;
        let fired: Vec<_> = j["items"].as_array().unwrap().iter().filter(|e| e["event"] == "switch-window").collect();
        assert_eq!(fired.len(), 1, "the window's timer fired once: {j}");
        assert_eq!(fired[0]["cause"]["kind"], "timer");
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn arrears_freeze_then_resume_unfreezes() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let u = w.user("ali").await;
        let s = w.subscribe_and_bind(&u, &u.org_id, A).await;
        w.sim(Method::POST, &format!("/sim/instances/{s}/expire"), None).await;
        w.wait_org(&u.org_id, "frozen").await;
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["frozen_reason"], "arrears");
        assert!(bill["payment_channel"].is_null(), "the channel is not shown while suspended: {bill}");
        assert!(bill["recovery"].as_str().unwrap().contains("充值"));
        if restart {
            w.restart_service().await;
        }
        w.sim(Method::POST, &format!("/sim/instances/{s}/topup"), None).await;
        w.wait_org(&u.org_id, "bound").await;
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["status"], "active");
        assert_eq!(bill["payment_channel"]["instance_id"], s.as_str());
        let kinds: Vec<_> =
            bill["history"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap().to_string()).collect();
        assert_eq!(kinds, ["bound", "frozen", "resumed"]);
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_frozen_organization_resubscribes_and_binds_to_recover() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let u = w.user("rui").await;
        let sa = w.subscribe_and_bind(&u, &u.org_id, A).await;
        w.sim(Method::POST, &format!("/sim/instances/{sa}/expire"), None).await;
        w.wait_org(&u.org_id, "frozen").await;
        if restart {
            w.restart_service().await;
        }
        let sc = w.subscribe_and_bind(&u, &u.org_id, C).await;
        w.wait_org(&u.org_id, "bound").await;
        let bill = w.billing(&u, &u.org_id).await;
        assert_eq!(bill["status"], "active");
        assert_eq!(bill["payment_channel"]["aliyun_account_id"], C);
        assert_eq!(bill["payment_channel"]["instance_id"], sc.as_str());
        let recovered = bill["history"].as_array().unwrap().iter().find(|h| h["kind"] == "recovered").cloned().unwrap();
        assert_eq!(recovered["reason"], "arrears");
        // The suspended subscription was unlinked; its resume no longer touches the organization.
        let (_, old) = w.api(Method::GET, &format!("/api/v1/ops/entities/subscription/{sa}"), Some(OP), None).await;
        assert!(old["data"]["org"].is_null(), "{old}");
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn operators_freeze_and_unfreeze_with_a_reason_in_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("opal").await;
    let path = format!("/api/v1/ops/entities/organization/{}/actions/freeze", u.org_id);
    let (s, v) = w.api(Method::POST, &path, Some(OP), Some(json!({}))).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("reason_required")));
    let (s, _) = w.api(Method::POST, &path, Some(&u.token), Some(json!({"reason": "x"}))).await;
    assert_eq!(s, 401, "a user's session is not an operator token");
    let (s, v) = w.api(Method::POST, &path, Some(OP), Some(json!({"reason": "ticket 42: fraud check"}))).await;
    assert_eq!(s, 200, "{v}");
    w.wait_org(&u.org_id, "frozen").await;
    assert_eq!(w.billing(&u, &u.org_id).await["frozen_reason"], "operator");
    // Unfrozen without a channel: a switch window opens, so it cannot stay unpaid.
    let path = format!("/api/v1/ops/entities/organization/{}/actions/unfreeze", u.org_id);
    let (s, v) = w.api(Method::POST, &path, Some(OP), Some(json!({"reason": "ticket 42 resolved"}))).await;
    assert_eq!(s, 200, "{v}");
    w.wait_org(&u.org_id, "window").await;
    assert!(w.billing(&u, &u.org_id).await["switch_deadline"].is_string());
    let (_, audit) = w.api(Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{audit}");
    assert_eq!(items[0]["action"], "unfreeze");
    assert_eq!(items[1]["reason"], "ticket 42: fraud check");
    let (_, j) =
        w.api(Method::GET, &format!("/api/v1/ops/entities/organization/{}/journal", u.org_id), Some(OP), None).await;
    let freeze = j["items"].as_array().unwrap().iter().find(|e| e["event"] == "freeze").cloned().unwrap();
    assert_eq!(freeze["cause"]["kind"], "operator");
    assert_eq!(freeze["cause"]["reason"], "ticket 42: fraud check");
    w.shutdown().await;
}

#[actix_rt::test]
async fn a_second_release_or_an_expiry_after_release_changes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("tao").await;
    let sa = w.subscribe_and_bind(&u, &u.org_id, A).await;
    w.close(&sa).await;
    w.wait_org(&u.org_id, "window").await;
    let before = w.billing(&u, &u.org_id).await;
    for q in [
        signed(&[("action", "releaseInstance"), ("instanceId", &sa), ("isRefund", "false")]),
        signed(&[("action", "expiredInstance"), ("instanceId", &sa)]),
        signed(&[
            ("action", "resumeInstance"),
            ("instanceId", &sa),
            ("productCode", "cmgj00063418"),
            ("skuId", "payg"),
        ]),
    ] {
        let (s, v) = w.api(Method::GET, &format!("/aliyun/spi?{q}"), None, None).await;
        assert_eq!((s, v["success"].as_bool()), (200, Some(true)), "{v}");
    }
    w.quiet("subscription", &sa).await;
    w.quiet("organization", &u.org_id).await;
    assert_eq!(w.state(&sa).await.as_deref(), Some("released"));
    let after = w.billing(&u, &u.org_id).await;
    assert_eq!(after, before, "the organization saw nothing more");
    let (_, j) = w.api(Method::GET, &format!("/api/v1/ops/entities/subscription/{sa}/journal"), Some(OP), None).await;
    let ignored = j["items"].as_array().unwrap().iter().filter(|e| e["status"] == "ignored").count();
    assert_eq!(ignored, 3, "each stray call is journaled as ignored: {j}");
    w.shutdown().await;
}

/// An Owner fills the organization with everything the API allows (members and pending invitations up to the
/// limit, every address as long as the rules allow) and operators give it the longest history they can write;
/// it still freezes, expires with its subscription and resumes: no transition of it can fail on size. Addresses
/// with control characters are refused outright.
#[actix_rt::test]
async fn the_fullest_organization_still_freezes_expires_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("olga").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, A).await;
    let invite = |email: String| {
        let path = format!("/api/v1/orgs/{}/invitations", u.org_id);
        let w = &w;
        let token = u.token.clone();
        async move { w.api(Method::POST, &path, Some(&token), Some(json!({"email": email, "role": "billing_admin"}))).await }
    };
    for bad in ["a\u{1}b@example.com", "a\u{202e}b@example.com", "a..b@example.com", "a@b_c.com"] {
        let (status, e) = invite(bad.to_string()).await;
        assert_eq!((status, e["code"].as_str()), (400, Some("invalid_email")), "{bad:?}: {e}");
    }
    // A few real members, then pending invitations up to the limit (100 together, the Owner included).
    let mut members = 1;
    for name in ["m1", "m2", "m3"] {
        let m = w.user(name).await;
        w.join(&u, &u.org_id, &m, "member").await;
        members += 1;
    }
    let longest = |i: usize| {
        let local = format!("{i:03}{}", "x".repeat(61));
        format!("{local}@{}.{}.{}.com", "d".repeat(63), "e".repeat(63), "f".repeat(57))
    };
    assert_eq!(longest(0).len(), 254);
    for i in 0..100 - members {
        let (status, e) = invite(longest(i)).await;
        assert_eq!(status, 201, "invitation {i}: {e}");
    }
    let (status, e) = invite(longest(999)).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("too_many_members")), "{e}");
    // The longest history operators can write: freezes and unfreezes with 500-character reasons.
    let reason = "冻".repeat(500);
    for i in 0..60 {
        let action = if i % 2 == 0 { "freeze" } else { "unfreeze" };
        let path = format!("/api/v1/ops/entities/organization/{}/actions/{action}", u.org_id);
        let (status, v) = w.api(Method::POST, &path, Some(OP), Some(json!({"reason": reason}))).await;
        assert_eq!(status, 200, "{action} {i}: {v}");
    }
    w.wait_org(&u.org_id, "bound").await;
    // Frozen by arrears, resumed, frozen by an operator and unfrozen: every transition is written.
    w.sim(Method::POST, &format!("/sim/instances/{s}/expire"), None).await;
    w.wait_org(&u.org_id, "frozen").await;
    assert_eq!(w.billing(&u, &u.org_id).await["frozen_reason"], "arrears");
    w.sim(Method::POST, &format!("/sim/instances/{s}/topup"), None).await;
    w.wait_org(&u.org_id, "bound").await;
    let bill = w.billing(&u, &u.org_id).await;
    assert_eq!(bill["status"], "active", "{bill}");
    assert_eq!(bill["payment_channel"]["instance_id"], s.as_str());
    let history = bill["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["kind"], "resumed", "the newest history entry stays");
    let (status, v) = w
        .api(
            Method::POST,
            &format!("/api/v1/ops/entities/organization/{}/actions/freeze", u.org_id),
            Some(OP),
            Some(json!({"reason": reason})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    w.wait_org(&u.org_id, "frozen").await;
    // Nothing needs a person: no entity of the organization failed a transition.
    let (_, j) = w
        .api(Method::GET, &format!("/api/v1/ops/entities/organization/{}/journal?limit=500", u.org_id), Some(OP), None)
        .await;
    let refused: Vec<_> =
        j["items"].as_array().unwrap().iter().filter(|e| e.to_string().contains("internal_error")).collect();
    assert!(refused.is_empty(), "{refused:?}");
    w.shutdown().await;
}

/// The unconfirmed notices the simulator lists, by action.
async fn listed(w: &World) -> Vec<(String, String)> {
    let v = w.sim(Method::GET, "/sim/notifications", None).await;
    v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["confirmed"] == false)
        .map(|n| (n["notification_request_id"].as_str().unwrap().into(), n["action"].as_str().unwrap().into()))
        .collect()
}

/// An expire and a resume the marketplace gave up delivering arrive through DescribeFailedNotifications at the
/// next poll (every 5 minutes of service time), freeze and unfreeze the organization, and are confirmed; a
/// notice listed again after its confirmation changes nothing.
#[actix_rt::test]
async fn notices_the_marketplace_gave_up_on_are_polled_taken_once_and_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("gia").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, A).await;
    w.sim(Method::POST, "/sim/faults", Some(json!({"spi_give_up_rate": 1.0}))).await;
    w.sim(Method::POST, &format!("/sim/instances/{s}/expire"), None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expire = loop {
        if let Some((id, _)) = listed(&w).await.into_iter().find(|(_, a)| a == "expiredInstance") {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "the given-up expire was never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Never delivered: the organization does not know yet.
    assert_eq!(w.state(&s).await.as_deref(), Some("active"));
    assert_eq!(w.org_state(&u.org_id).await, "bound");
    w.clock.advance(minutes(5));
    w.wait_org(&u.org_id, "frozen").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !listed(&w).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the taken notice was never confirmed: {:?}", listed(&w).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expires = |j: &[String]| j.iter().filter(|e| e.starts_with("expire:")).count();
    let journal = w.journal_events(&s).await;
    assert_eq!(expires(&journal), 1, "{journal:?}");

    // Listed again (the marketplace's list is at-least-once): taken again, it is the same input and changes
    // nothing.
    w.sim(Method::POST, &format!("/sim/notifications/{expire}/relist"), None).await;
    w.clock.advance(minutes(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !listed(&w).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the relisted notice was never confirmed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Taken a second time as a new input it would journal a second `expire` (from `expired`, which schedules a
    // check); the same input is answered from its stored outcome and journals nothing.
    let again = w.journal_events(&s).await;
    assert_eq!(expires(&again), 1, "a notice taken twice was taken twice: {again:?}");
    assert_eq!(w.org_state(&u.org_id).await, "frozen");

    // The resume given up the same way unfreezes at the next poll.
    w.sim(Method::POST, &format!("/sim/instances/{s}/topup"), None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !listed(&w).await.iter().any(|(_, a)| a == "resumeInstance") {
        assert!(std::time::Instant::now() < deadline, "the given-up resume was never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.clock.advance(minutes(5));
    w.wait_org(&u.org_id, "bound").await;
    assert_eq!(w.state(&s).await.as_deref(), Some("active"));
    w.shutdown().await;
}

/// A release whose notice was lost outright (never delivered, never listed) is found by the periodic check within
/// the interval: the subscription is released, its organization's switch window opens from the discovery, the
/// journal says it was drift, and `/metrics` counts it.
#[actix_rt::test]
async fn a_release_whose_notice_was_lost_is_found_by_the_periodic_check() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let u = w.user("lou").await;
    let s = w.subscribe_and_bind(&u, &u.org_id, A).await;
    let (_, e) = w.entity(&s).await;
    let due: chrono::DateTime<chrono::Utc> = e["data"]["check_due"].as_str().expect("a check is due").parse().unwrap();
    let now = w.clock.now();
    assert!(due > now && due <= now + chrono::TimeDelta::hours(1), "the check is within the hour: {due} vs {now}");
    w.sim(Method::POST, "/sim/faults", Some(json!({"spi_drop_rate": 1.0}))).await;
    w.sim(Method::POST, &format!("/sim/instances/{s}/close"), None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = w.sim(Method::GET, &format!("/sim/instances/{s}"), None).await;
        if v.to_string().contains("spi.releaseInstance.dropped") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the release was never dropped: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.state(&s).await.as_deref(), Some("active"), "the lost release never arrived");
    w.clock.set(due + chrono::TimeDelta::seconds(1));
    w.wait_state(&s, "released").await;
    w.wait_org(&u.org_id, "window").await;
    let journal = w.journal_events(&s).await;
    assert!(journal.iter().any(|e| e == "describe_instance.ok:released"), "{journal:?}");
    let metrics =
        w.http.get(format!("{}/metrics", w.service)).bearer_auth(OP).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("marketflow_drift_total{kind=\"released\"} 1"), "{metrics}");
    assert!(metrics.contains("marketflow_drift_total{kind=\"expired\"} 0"), "{metrics}");
    w.shutdown().await;
}
