//! The subscription lifecycle, black-box: the service and the local marketplace (simulator) on real ports,
//! sharing one manual clock, so the activation wait of minutes passes in milliseconds. Each scenario also runs
//! across a restart of the service while a timer is pending.

use crate::world;

use serde_json::Value;
use world::*;

#[actix_rt::test]
async fn open_is_activated_within_the_wait() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let id = w.open("100000001", 150).await;
        w.pass_minutes(&id, 1).await;
        assert_eq!(w.state(&id).await.as_deref(), Some("opening"), "still opening after a minute");
        if restart {
            w.restart_service().await;
        }
        w.pass_minutes(&id, 3).await;
        w.wait_state(&id, "active").await;
        let (_, e) = w.entity(&id).await;
        assert_eq!(e["data"]["marketplace_status"], "OPENED");
        // The wait's timers are gone; what is left is the periodic check of every live subscription.
        let timers: Vec<_> = e["timers"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(timers, ["check"], "the wait's timers are gone: {e}");
        let events = w.journal_events(&id).await;
        assert_eq!(events.first().map(String::as_str), Some("create:opening"));
        assert!(events.contains(&"describe_instance.ok:active".to_string()), "{events:?}");
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn past_the_deadline_it_fails_and_a_late_opened_still_activates() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let id = w.open("100000002", 22 * 60).await;
        w.pass_minutes(&id, 14).await;
        assert_eq!(w.state(&id).await.as_deref(), Some("opening"));
        if restart {
            w.restart_service().await;
        }
        w.pass_minutes(&id, 1).await;
        w.wait_state(&id, "activation_failed").await;
        let filter = format!("{}/api/v1/ops/entities?kind=subscription&state=activation_failed", w.service);
        let listed: Value = w.http.get(filter).bearer_auth(OP).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed["items"][0]["id"], id.as_str(), "operators find it");
        // The marketplace opens it at 22 min; the late poll (every 10 min) sees it by 25 min.
        w.pass_minutes(&id, 12).await;
        w.wait_state(&id, "active").await;
        let events = w.journal_events(&id).await;
        assert!(events.contains(&"activation-deadline:activation_failed".to_string()), "{events:?}");
        assert!(events.contains(&"late-poll:activation_failed".to_string()), "{events:?}");
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn create_instance_repeated_five_times_is_one_subscription_with_one_answer() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let q = signed(&[
        ("action", "createInstance"),
        ("aliUid", "100000003"),
        ("orderBizId", "77001"),
        ("orderId", "880001"),
        ("productCode", "cmgj00063418"),
        ("skuId", "payg"),
        ("trial", "false"),
        ("expiredOn", "2099-01-01 00:00:00"),
    ]);
    let mut answers = vec![];
    for _ in 0..5 {
        let r = w.http.get(format!("{}/aliyun/spi?{q}", w.service)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        answers.push(r.json::<Value>().await.unwrap());
    }
    assert!(answers.windows(2).all(|p| p[0] == p[1]), "{answers:?}");
    assert_eq!(answers[0]["instanceId"], "77001");
    assert_eq!(answers[0]["appInfo"]["authUrl"], format!("{}/aliyun/sso", w.service));
    let events = w.journal_events("77001").await;
    assert_eq!(events, vec!["create:opening"], "one subscription, created once");

    // Forged, missing and tampered tokens are refused and store nothing.
    let forged = q.replace("orderBizId=77001", "orderBizId=77002");
    let missing = q.split("&token=").next().unwrap().to_string();
    for bad in [forged, missing, format!("{q}&extra=1")] {
        let r = w.http.get(format!("{}/aliyun/spi?{bad}", w.service)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["success"], false);
    }
    assert_eq!(w.entity("77002").await.0, 404, "nothing stored for a forged call");
    // Unknown instances: success, nothing stored.
    let r = w.http.get(format!(
        "{}/aliyun/spi?{}",
        w.service,
        signed(&[("action", "expiredInstance"), ("instanceId", "404404")])
    ));
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(w.entity("404404").await.0, 404);
    w.shutdown().await;
}

#[actix_rt::test]
async fn expire_resume_and_release_follow_the_marketplace() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World::new(dir.path()).await;
        let id = w.open("100000004", 60).await;
        w.pass_minutes(&id, 2).await;
        w.wait_state(&id, "active").await;
        w.sim(reqwest::Method::POST, &format!("/sim/instances/{id}/expire"), None).await;
        w.wait_state(&id, "expired").await;
        if restart {
            w.restart_service().await;
        }
        w.sim(reqwest::Method::POST, &format!("/sim/instances/{id}/topup"), None).await;
        w.wait_state(&id, "active").await;
        w.sim(reqwest::Method::POST, &format!("/sim/instances/{id}/close"), None).await;
        w.wait_state(&id, "released").await;
        let (_, e) = w.entity(&id).await;
        assert_eq!(e["terminal"], true);
        let events = w.journal_events(&id).await;
        for expected in ["expire:expired", "resume:active", "release:released"] {
            assert!(events.iter().any(|e| e == expected), "{expected} in {events:?}");
        }
        w.shutdown().await;
    }
}

#[actix_rt::test]
async fn spi_calls_out_of_order_are_reconciled_with_the_marketplace() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let id = w.open("100000005", 60).await;
    w.pass_minutes(&id, 2).await;
    w.wait_state(&id, "active").await;
    // The marketplace expired and resumed the instance, but the resume overtook the expire: the service sees
    // resume (while active), then expire, and would stay expired although the marketplace says OPENED.
    for q in [
        signed(&[
            ("action", "resumeInstance"),
            ("instanceId", &id),
            ("productCode", "cmgj00063418"),
            ("skuId", "payg"),
        ]),
        signed(&[("action", "expiredInstance"), ("instanceId", &id)]),
        signed(&[("action", "expiredInstance"), ("instanceId", &id)]),
    ] {
        let v: Value = w.http.get(format!("{}/aliyun/spi?{q}", w.service)).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["success"], true);
    }
    assert_eq!(w.state(&id).await.as_deref(), Some("expired"));
    w.pass_minutes(&id, 1).await;
    w.wait_state(&id, "active").await;
    let events = w.journal_events(&id).await;
    assert!(events.contains(&"reconcile:expired".to_string()), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("describe_instance.ok:active"), "{events:?}");
    w.shutdown().await;
}
