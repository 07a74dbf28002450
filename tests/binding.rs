//! The binding flow, black-box: 免登 → choose an organization → 确认绑定 → billing overview, with every reason
//! and error code for an Owner, a Billing Admin, a Member and a user without organizations, and under
//! concurrency.

use crate::world;

use reqwest::Method;
use serde_json::{json, Value};
use world::*;

const ALICE_UID: &str = "1688000000000001";

#[actix_rt::test]
async fn owner_billing_admin_and_member_see_the_right_reasons_and_codes() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    w.join(&bob, &bob.org_id, &alice, "billing_admin").await;
    w.join(&carol, &carol.org_id, &alice, "member").await;

    let s1 = w.active_subscription(ALICE_UID).await;
    // Before the 免登 link, the subscription is not Alice's to see.
    let path = format!("/api/v1/marketplace/aliyun/subscriptions/{s1}");
    assert_eq!(w.api(Method::GET, &path, Some(&alice.token), None).await.0, 404);
    let (status, location) = w.sso(&alice, &s1).await;
    assert_eq!((status, location.as_str()), (302, format!("/bind/{s1}").as_str()));
    // A replayed link is refused.
    w.clock.advance(std::time::Duration::from_secs(1));
    let v = w.sim(Method::GET, &format!("/sim/instances/{s1}/sso-url"), None).await;
    let url = v["url"].as_str().unwrap().to_string();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let first = browser.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 302, "a fresh link without a session leads to login");
    let location = first.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/login?next="), "{location}");
    let again = browser.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 403, "a replayed 免登 link is refused");
    assert!(again.text().await.unwrap().contains("link_used"));

    let (s, opts) = w.api(Method::GET, &format!("{path}/binding-options"), Some(&alice.token), None).await;
    assert_eq!(s, 200, "{opts}");
    let by_org = |org: &str| opts["orgs"].as_array().unwrap().iter().find(|o| o["org_id"] == org).cloned().unwrap();
    assert_eq!(by_org(&alice.org_id)["role"], "owner");
    assert_eq!(by_org(&alice.org_id)["bindable"], true);
    assert_eq!(by_org(&bob.org_id)["role"], "billing_admin");
    assert_eq!(by_org(&bob.org_id)["bindable"], true);
    assert_eq!(by_org(&carol.org_id)["role"], "member");
    assert_eq!(by_org(&carol.org_id)["bindable"], false);
    assert_eq!(by_org(&carol.org_id)["reason"], "insufficient_permission");
    assert_eq!(opts["can_confirm"], true);

    // A Member may not bind: 403 insufficient_permission, nothing changes.
    let (s, e) = w
        .api(Method::POST, &format!("{path}/binding"), Some(&alice.token), Some(json!({"org_id": carol.org_id})))
        .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("insufficient_permission")), "{e}");
    // Not a member at all: the organization does not exist for her.
    let (s, _) =
        w.api(Method::POST, &format!("{path}/binding"), Some(&bob.token), Some(json!({"org_id": alice.org_id}))).await;
    assert_eq!(s, 404, "bob has no grant on the subscription");
    // Bad input.
    let (s, e) =
        w.api(Method::POST, &format!("{path}/binding"), Some(&alice.token), Some(json!({"org_id": "nope"}))).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("invalid_id")), "{e}");
    let (s, _) = w.api(Method::POST, &format!("{path}/binding"), None, Some(json!({"org_id": alice.org_id}))).await;
    assert_eq!(s, 401);

    // A Billing Admin binds: 202 processing, then bound.
    let (s, b) =
        w.api(Method::POST, &format!("{path}/binding"), Some(&alice.token), Some(json!({"org_id": bob.org_id}))).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["status"], "pending");
    assert_eq!(w.binding_decided(&alice, &s1).await, ("bound".into(), None));
    let (s, bill) = w.api(Method::GET, &format!("/api/v1/orgs/{}/billing", bob.org_id), Some(&bob.token), None).await;
    assert_eq!(s, 200, "{bill}");
    assert_eq!(bill["status"], "active");
    assert_eq!(bill["payment_channel"]["label"], "云市场扣费渠道");
    assert_eq!(bill["payment_channel"]["aliyun_account_id"], ALICE_UID);
    assert_eq!(bill["payment_channel"]["instance_id"], s1.as_str());
    assert!(bill["payment_channel"]["bill_url"].as_str().unwrap().starts_with("https://"));
    assert_eq!(bill["history"][0]["kind"], "bound");
    // The billing overview is for Owners and Billing Admins only.
    let (s, e) = w.api(Method::GET, &format!("/api/v1/orgs/{}/billing", carol.org_id), Some(&alice.token), None).await;
    assert_eq!((s, e["code"].as_str()), (403, Some("insufficient_permission")));
    let (s, _) = w.api(Method::GET, &format!("/api/v1/orgs/{}/billing", bob.org_id), Some(&carol.token), None).await;
    assert_eq!(s, 404);

    // Bound: the subscription cannot be bound again; the organization cannot take a second one.
    let (s, e) = w
        .api(Method::POST, &format!("{path}/binding"), Some(&alice.token), Some(json!({"org_id": alice.org_id})))
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("subscription_already_bound")), "{e}");
    let s2 = w.active_subscription("1688000000000002").await;
    w.sso(&alice, &s2).await;
    let path2 = format!("/api/v1/marketplace/aliyun/subscriptions/{s2}");
    let (_, opts) = w.api(Method::GET, &format!("{path2}/binding-options"), Some(&alice.token), None).await;
    let bob_org =
        opts["orgs"].as_array().unwrap().iter().find(|o| o["org_id"] == bob.org_id.as_str()).cloned().unwrap();
    assert_eq!(bob_org["reason"], "org_already_bound");
    let (s, e) =
        w.api(Method::POST, &format!("{path2}/binding"), Some(&alice.token), Some(json!({"org_id": bob.org_id}))).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("org_already_bound")), "{e}");
    // The 免登 link of a bound subscription leads to its organization's billing page.
    let (status, location) = w.sso(&bob, &s1).await;
    assert_eq!((status, location), (302, format!("/orgs/{}/billing", bob.org_id)));
    // The purchased list shows active subscriptions.
    let (_, list) = w.api(Method::GET, "/api/v1/marketplace/aliyun/subscriptions", Some(&alice.token), None).await;
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 2, "{list}");
    w.shutdown().await;
}

#[actix_rt::test]
async fn a_user_without_organizations_cannot_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let dave = w.user("dave").await;
    let (s, v) = w.api(Method::POST, &format!("/api/v1/orgs/{}/leave", dave.org_id), Some(&dave.token), None).await;
    assert_eq!(s, 200, "{v}");
    let (_, orgs) = w.api(Method::GET, "/api/v1/orgs", Some(&dave.token), None).await;
    assert_eq!(orgs["orgs"], json!([]));
    let s1 = w.active_subscription("1688000000000009").await;
    w.sso(&dave, &s1).await;
    let (s, opts) = w
        .api(
            Method::GET,
            &format!("/api/v1/marketplace/aliyun/subscriptions/{s1}/binding-options"),
            Some(&dave.token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(opts["orgs"], json!([]));
    assert_eq!(opts["can_confirm"], false);
    assert_eq!(opts["reason"], "no_organizations");
    w.shutdown().await;
}

#[actix_rt::test]
async fn concurrent_bindings_never_pair_one_side_twice() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let owner = w.user("olga").await;
    // Olga owns four organizations (one by registration, three by support) and comes to six subscriptions.
    let mut orgs = vec![owner.org_id.clone()];
    for i in 0..3 {
        let (s, v) = w
            .api(
                Method::POST,
                "/api/v1/ops/orgs",
                Some(OP),
                Some(json!({"name": format!("Team {i}"), "owner_email": owner.email})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        orgs.push(v["org_id"].as_str().unwrap().to_string());
    }
    let mut subs = vec![];
    for i in 0..6 {
        let s = w.active_subscription(&format!("16880000000001{i:02}")).await;
        w.sso(&owner, &s).await;
        subs.push(s);
    }
    // Every subscription to every organization, all at once, twice.
    let mut attempts = vec![];
    for _round in 0..2 {
        for s in &subs {
            for o in &orgs {
                attempts.push((s.clone(), o.clone()));
            }
        }
    }
    let wr = &w;
    let token = owner.token.clone();
    let results = futures_util::future::join_all(attempts.into_iter().map(|(s, o)| {
        let token = token.clone();
        async move {
            let path = format!("/api/v1/marketplace/aliyun/subscriptions/{s}/binding");
            let r = wr.api(Method::POST, &path, Some(&token), Some(json!({"org_id": o}))).await;
            (s, o, r)
        }
    }))
    .await;
    let mut accepted = 0;
    for (s, o, (status, body)) in &results {
        match status {
            202 => accepted += 1,
            409 | 422 => assert!(
                ["subscription_already_bound", "org_already_bound"].contains(&body["code"].as_str().unwrap_or("")),
                "{s} → {o}: {status} {body}"
            ),
            other => panic!("{s} → {o}: unexpected {other} {body}"),
        }
    }
    assert!(accepted >= 4, "at least one binding per organization was attempted: {accepted}");
    // Let every accepted attempt be decided.
    let mut bound: Vec<(String, String)> = vec![];
    for s in &subs {
        let (status, code) = w.binding_decided(&owner, s).await;
        match status.as_str() {
            "bound" => {
                let (_, v) = w
                    .api(
                        Method::GET,
                        &format!("/api/v1/marketplace/aliyun/subscriptions/{s}"),
                        Some(&owner.token),
                        None,
                    )
                    .await;
                bound.push((s.clone(), v["org_id"].as_str().unwrap().to_string()));
            }
            "refused" => assert_eq!(code.as_deref(), Some("org_already_bound")),
            "none" => {}
            other => panic!("{s}: {other}"),
        }
    }
    // Every organization has at most one subscription, every subscription at most one organization, and both
    // sides agree.
    let mut seen_orgs = std::collections::HashSet::new();
    for (s, o) in &bound {
        assert!(seen_orgs.insert(o.clone()), "{o} has two subscriptions");
        let (_, bill) = w.api(Method::GET, &format!("/api/v1/orgs/{o}/billing"), Some(&owner.token), None).await;
        assert_eq!(bill["payment_channel"]["instance_id"], s.as_str(), "{bill}");
    }
    assert!(!bound.is_empty(), "some binding won");
    for o in &orgs {
        let (_, bill) = w.api(Method::GET, &format!("/api/v1/orgs/{o}/billing"), Some(&owner.token), None).await;
        let ch: &Value = &bill["payment_channel"];
        if ch.is_null() {
            assert!(!bound.iter().any(|(_, b)| b == o), "{o} is bound on one side only");
        } else {
            assert!(bound.iter().any(|(s, b)| b == o && ch["instance_id"] == s.as_str()), "{o}: {bill}");
        }
    }
    w.shutdown().await;
}

/// A used 免登 link stays used however it is spelt: white space around the token (percent-encoded space, tab,
/// newline, CR LF, U+3000 ideographic space, leading or trailing) and upper-case hex all name the same signed
/// tuple (instanceId, timeStamp, token), so each is `link_used`; a token that is not 32 hex digits is
/// `invalid_token`. Nothing of these binds the subscription to the replayer's organization.
#[actix_rt::test]
async fn a_used_link_cannot_be_replayed_in_another_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let s1 = w.active_subscription(ALICE_UID).await;
    let v = w.sim(Method::GET, &format!("/sim/instances/{s1}/sso-url"), None).await;
    let url = v["url"].as_str().unwrap().to_string();
    let (base, token) = url.rsplit_once("token=").expect("the token is the link's last parameter");
    assert_eq!(token.len(), 32, "{url}");
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let first = browser.get(&url).bearer_auth(&alice.token).send().await.unwrap();
    assert_eq!(first.status(), 302, "the buyer's own first use");

    let upper = token.to_uppercase();
    let variants = [
        format!("{token}%20"),
        format!("%20{token}"),
        format!("{token}%09"),
        format!("{token}%0A"),
        format!("{token}%0D%0A"),
        format!("{token}%E3%80%80"),
        format!("%E3%80%80{token}"),
        upper.clone(),
        format!("%20{upper}%09"),
        format!("{token}+"),
    ];
    for t in &variants {
        let r = browser.get(format!("{base}token={t}")).bearer_auth(&mallory.token).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "token={t}: {body}");
        assert!(body.contains("data-code=\"link_used\""), "token={t}: {body}");
    }
    for t in [format!("{token}0"), token[..31].to_string(), format!("{}%00", &token[..31])] {
        let r = browser.get(format!("{base}token={t}")).bearer_auth(&mallory.token).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "token={t}: {body}");
        assert!(body.contains("data-code=\"invalid_token\""), "token={t}: {body}");
    }
    // Mallory got no grant from any of it: the subscription is not hers to see or bind.
    let path = format!("/api/v1/marketplace/aliyun/subscriptions/{s1}");
    assert_eq!(w.api(Method::GET, &path, Some(&mallory.token), None).await.0, 404);
    let (s, _) = w
        .api(Method::POST, &format!("{path}/binding"), Some(&mallory.token), Some(json!({"org_id": mallory.org_id})))
        .await;
    assert_eq!(s, 404);
}

/// The number of records of `kind` the sweeper has deleted, from `/metrics`.
async fn swept(w: &World, kind: &str) -> u64 {
    let page = reqwest::get(format!("{}/metrics", w.service)).await.unwrap().text().await.unwrap();
    let series = format!("marketflow_swept_records_total{{kind=\"{kind}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Waits until the sweeper has deleted `n` records of `kind` (it passes every 50 ms in the test world).
async fn swept_reaches(w: &World, kind: &str, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while swept(w, kind).await < n {
        assert!(std::time::Instant::now() < deadline, "{kind}: {} swept, {n} expected", swept(w, kind).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sessions, pending 免登 grants and used-link records are deleted by the sweeper once they have ended, off
/// every request path; a used-link record is kept until its link's timeStamp + window has passed, so a link
/// can never be replayed after its record is gone.
#[actix_rt::test]
async fn ended_sessions_grants_and_used_links_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let alice = w.user("alice").await;
    let s1 = w.active_subscription(ALICE_UID).await;
    let v = w.sim(Method::GET, &format!("/sim/instances/{s1}/sso-url"), None).await;
    let url = v["url"].as_str().unwrap().to_string();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // Without a session: a pending grant for the browser, and the link is used.
    let first = browser.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 302);
    for kind in ["session", "pending_grant", "used_link"] {
        assert_eq!(swept(&w, kind).await, 0, "{kind}");
    }
    // Five minutes on, within the link's window: its record stays, and the link is still refused.
    w.clock.advance(std::time::Duration::from_secs(5 * 60));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(swept(&w, "used_link").await, 0, "kept while the link is within its window");
    let again = browser.get(&url).send().await.unwrap();
    assert!(again.text().await.unwrap().contains("data-code=\"link_used\""));
    // Two hours on: the window and the pending grant (1 h) have ended; the link is refused as expired.
    w.clock.advance(std::time::Duration::from_secs(2 * 3600));
    swept_reaches(&w, "used_link", 1).await;
    swept_reaches(&w, "pending_grant", 1).await;
    let late = browser.get(&url).send().await.unwrap();
    assert!(late.text().await.unwrap().contains("data-code=\"link_expired\""));
    assert_eq!(swept(&w, "session").await, 0, "sessions last 12 h");
    assert_eq!(w.api(Method::GET, "/api/v1/orgs", Some(&alice.token), None).await.0, 200);
    // Past the session's 12 hours: swept; the token no longer opens anything.
    w.clock.advance(std::time::Duration::from_secs(11 * 3600));
    swept_reaches(&w, "session", 1).await;
    assert_eq!(w.api(Method::GET, "/api/v1/orgs", Some(&alice.token), None).await.0, 401);
}
