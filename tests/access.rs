//! Who may do what (issue #8, access), black-box against the running service: every route of
//! `marketflow::http::routes::ROUTES` is called without credentials, with the wrong role, and (where the route
//! names an organization, a subscription or an invitation) by another organization's user, and must refuse; the
//! path is filled with real ids so that the refusal is about access, which the right caller's success on the same
//! GET routes shows. The expectations derive from each route's `Access` by an exhaustive match, so a route added
//! to the table is walked without anyone writing a line here, and a new class of access does not compile until
//! it has expectations.
//!
//! Also: the SPI refuses a forged token and one made with another key (GET and POST; a tampered parameter and a
//! missing token on GET are in tests/lifecycle.rs), and 免登 refuses forged links and stale timestamps on both
//! sides of `MARKETFLOW_SSO_WINDOW` (a replayed link is refused in tests/binding.rs) and grants nothing for them.
//! That secrets never reach the logs is tests/logs.rs.

use crate::world;

use marketflow::aliyun::spi::format_time;
use marketflow::aliyun::token::spi_token;
use marketflow::clock::Clock;
use marketflow::config::Config;
use marketflow::http::routes::{Access, Route, ROUTES};
use reqwest::{header, Method};
use serde_json::{json, Value};
use world::*;

const ALICE_UID: &str = "1688000000000801";
/// The per-form token the page requests carry (cookie and field agree), so that a refusal is never about CSRF.
const CSRF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Everything the walk needs: Alice's organization with a bound subscription and a pending invitation (for Bob),
/// and Mallory, who has an organization of her own.
struct Fixture {
    alice: TestUser,
    mallory: TestUser,
    instance: String,
    invitation: String,
    /// The `mf_console` cookie of an operator logged in to the console.
    console: String,
    /// The query of a mailed verification link (of Carol, who has not opened it).
    verification: String,
    /// Texts of Alice's that no refusal to Mallory may contain.
    secrets: Vec<String>,
}

/// How a request authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Operator,
    Service,
    /// Alice, the right caller of her organization's user and member routes.
    Alice,
    /// Mallory: a logged-in user of another organization.
    Mallory,
    /// An operator logged in to the console (its cookie, no bearer token).
    Console,
}

/// What a refusal must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 401 with the JSON code `unauthorized`.
    Unauthorized,
    /// 403 with the JSON code `forbidden`.
    Forbidden,
    /// 403 with this JSON code and `"success": false` (the SPI's answers).
    SpiToken(&'static str),
    /// 403 with this code in the 免登 refusal page.
    SsoPage(&'static str),
    /// 303 to a page under this path (the login page of the buyer or of the console).
    Redirect(&'static str),
    /// The console: a redirect to its login, or 401/403.
    ConsoleLogin,
    /// 403 or 404, and nothing of Alice's organization in the answer.
    NotYours,
}

/// The refusals a route's class promises, per caller; `None` for the callers the class admits or that are not
/// meaningful for it. Exhaustive on purpose: a new `Access` variant fails to compile here until it is given its
/// expectations.
fn expectations(access: Access, names_an_object: bool) -> Vec<(Who, Refusal)> {
    let stranger = if names_an_object { vec![(Who::Mallory, Refusal::NotYours)] } else { vec![] };
    match access {
        Access::Public => vec![],
        Access::Spi => vec![
            (Who::Nobody, Refusal::SpiToken("missing_token")),
            (Who::Operator, Refusal::SpiToken("missing_token")),
            (Who::Alice, Refusal::SpiToken("missing_token")),
        ],
        Access::Sso => vec![
            (Who::Nobody, Refusal::SsoPage("invalid_token")),
            (Who::Operator, Refusal::SsoPage("invalid_token")),
            (Who::Alice, Refusal::SsoPage("invalid_token")),
        ],
        Access::User | Access::Member => [
            vec![
                (Who::Nobody, Refusal::Unauthorized),
                (Who::Operator, Refusal::Unauthorized),
                (Who::Service, Refusal::Unauthorized),
                (Who::Console, Refusal::Unauthorized),
            ],
            stranger,
        ]
        .concat(),
        Access::UserPage | Access::MemberPage => [
            vec![
                (Who::Nobody, Refusal::Redirect("/login")),
                (Who::Operator, Refusal::Redirect("/login")),
                (Who::Service, Refusal::Redirect("/login")),
                (Who::Console, Refusal::Redirect("/login")),
            ],
            stranger,
        ]
        .concat(),
        Access::Service => vec![
            (Who::Nobody, Refusal::Unauthorized),
            (Who::Operator, Refusal::Forbidden),
            (Who::Alice, Refusal::Unauthorized),
            (Who::Console, Refusal::Unauthorized),
        ],
        // The API takes the operator token as a bearer only: the console's cookie does not open it (a page of
        // another site could make the browser send that cookie).
        Access::Operator => vec![
            (Who::Nobody, Refusal::Unauthorized),
            (Who::Service, Refusal::Forbidden),
            (Who::Alice, Refusal::Unauthorized),
            (Who::Console, Refusal::Unauthorized),
        ],
        Access::OperatorPage => vec![
            (Who::Nobody, Refusal::Redirect("/console/login")),
            (Who::Service, Refusal::ConsoleLogin),
            (Who::Alice, Refusal::ConsoleLogin),
        ],
        // Between nodes: only a request signed with the cluster secret; every role's credential is refused.
        Access::Node => vec![
            (Who::Nobody, Refusal::Unauthorized),
            (Who::Operator, Refusal::Unauthorized),
            (Who::Service, Refusal::Unauthorized),
            (Who::Alice, Refusal::Unauthorized),
            (Who::Console, Refusal::Unauthorized),
        ],
    }
}

/// Who succeeds on a route of this class (checked on GET routes, which change nothing).
fn admitted(access: Access) -> Option<Who> {
    match access {
        Access::Public => Some(Who::Nobody),
        Access::User | Access::Member | Access::UserPage | Access::MemberPage => Some(Who::Alice),
        Access::Operator => Some(Who::Operator),
        Access::OperatorPage => Some(Who::Console),
        // A signed call, a signed link, a usage record: shown by their own tests.
        Access::Spi | Access::Sso | Access::Service | Access::Node => None,
    }
}

fn is_page(access: Access) -> bool {
    match access {
        Access::UserPage | Access::MemberPage | Access::OperatorPage => true,
        Access::Public
        | Access::Spi
        | Access::Sso
        | Access::User
        | Access::Member
        | Access::Service
        | Access::Operator
        | Access::Node => false,
    }
}

/// The route's path with real ids in its `{params}`; whether one of them names Alice's organization, subscription
/// or invitation.
fn fill(route: &Route, f: &Fixture) -> (String, bool) {
    let mut names_an_object = false;
    let path = route
        .path
        .split('/')
        .map(|segment| {
            let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return segment.to_string();
            };
            let (value, object) = match param {
                "org_id" => (f.alice.org_id.clone(), true),
                "instance_id" => (f.instance.clone(), true),
                "invitation_id" => (f.invitation.clone(), true),
                "kind" => ("subscription".to_string(), false),
                "id" => (f.instance.clone(), false),
                "action" => ("pause".to_string(), false),
                "switch" => ("hold".to_string(), false),
                "name" if route.path.starts_with("/console/") => ("console.css".to_string(), false),
                "name" => ("app.css".to_string(), false),
                other => panic!(
                    "{} {}: no value for `{{{other}}}`; give it a real one in fill() of tests/access.rs",
                    route.method, route.path
                ),
            };
            names_an_object |= object;
            value
        })
        .collect::<Vec<_>>()
        .join("/");
    (path, names_an_object)
}

/// A body that the route would accept from its right caller, so that a refusal is not about the body.
fn body_for(route: &Route, f: &Fixture) -> Option<Value> {
    if route.method != "POST" || is_page(route.access) || route.access == Access::Spi {
        return None;
    }
    Some(match route.path {
        "/api/v1/orgs/{org_id}/invitations" => json!({"email": "newcomer@example.com", "role": "member"}),
        "/api/v1/marketplace/aliyun/subscriptions/{instance_id}/binding" => json!({"org_id": f.mallory.org_id}),
        "/api/v1/ops/orgs" => json!({"name": "Access test", "owner_email": f.alice.email}),
        "/api/v1/ops/entities/{kind}/{id}/actions/{action}" => json!({"reason": "access test"}),
        "/api/v1/usage" => json!({"record_id": "access-1", "org_id": f.alice.org_id, "resource_id": "c-1",
                                  "cu_type": "performance", "cu": 1.0, "start": "2026-11-27T07:00:00Z",
                                  "end": "2026-11-27T07:30:00Z"}),
        _ => json!({}),
    })
}

struct Answer {
    status: u16,
    location: String,
    text: String,
}

impl Answer {
    fn code(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.text).ok().and_then(|v| v["code"].as_str().map(String::from))
    }
}

async fn call(w: &World, http: &reqwest::Client, route: &Route, f: &Fixture, who: Who) -> Answer {
    let (path, _) = fill(route, f);
    let method = Method::from_bytes(route.method.as_bytes()).unwrap();
    let query = if route.path == "/verify-email" { format!("?{}", f.verification) } else { String::new() };
    let mut r = http.request(method, format!("{}{path}{query}", w.service));
    let mut cookies = vec![format!("mf_csrf={CSRF}")];
    let session = match who {
        Who::Nobody => None,
        Who::Operator => Some(OP),
        Who::Service => Some(SVC),
        Who::Alice => Some(f.alice.token.as_str()),
        Who::Mallory => Some(f.mallory.token.as_str()),
        Who::Console => {
            cookies.push(format!("mf_console={}", f.console));
            None
        }
    };
    match (who, session) {
        // A browser carries its session in the cookie; bearer tokens are what API clients and services send.
        (Who::Alice | Who::Mallory, Some(token)) if is_page(route.access) => {
            cookies.push(format!("mf_session={token}"))
        }
        (_, Some(token)) => r = r.bearer_auth(token),
        (_, None) => {}
    }
    r = r.header(header::COOKIE, cookies.join("; "));
    if route.method == "POST" && is_page(route.access) {
        let mut form = format!("csrf={CSRF}");
        if route.path.starts_with("/bind/") {
            form.push_str(&format!("&org_id={}", f.mallory.org_id));
        }
        r = r.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form);
    } else if let Some(body) = body_for(route, f) {
        r = r.json(&body);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{} {path}: {e}", route.method));
    let status = resp.status().as_u16();
    let location = resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("").to_string();
    Answer { status, location, text: resp.text().await.unwrap_or_default() }
}

/// Checks one answer against the refusal expected; returns what is wrong, if anything.
fn judge(answer: &Answer, refusal: Refusal, path: &str, f: &Fixture) -> Option<String> {
    let code = answer.code();
    let ok = match refusal {
        Refusal::Unauthorized => answer.status == 401 && code.as_deref() == Some("unauthorized"),
        Refusal::Forbidden => answer.status == 403 && code.as_deref() == Some("forbidden"),
        Refusal::SpiToken(want) => {
            let v: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
            answer.status == 403 && v["success"] == false && code.as_deref() == Some(want)
        }
        Refusal::SsoPage(want) => answer.status == 403 && answer.text.contains(&format!("data-code=\"{want}\"")),
        Refusal::Redirect(to) => answer.status == 303 && answer.location.starts_with(to),
        Refusal::ConsoleLogin => {
            (answer.status == 303 && answer.location.starts_with("/console/login"))
                || answer.status == 401
                || answer.status == 403
        }
        Refusal::NotYours => {
            let leaked: Vec<&String> =
                f.secrets.iter().filter(|s| !path.contains(s.as_str()) && answer.text.contains(s.as_str())).collect();
            if !leaked.is_empty() {
                return Some(format!("leaks {leaked:?}"));
            }
            answer.status == 403 || answer.status == 404
        }
    };
    (!ok).then(|| {
        let text: String = answer.text.chars().take(300).collect();
        format!("expected {refusal:?}, got {} (location {:?}) {text}", answer.status, answer.location)
    })
}

async fn fixture(w: &World) -> Fixture {
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mallory = w.user("mallory").await;
    let instance = w.subscribe_and_bind(&alice, &alice.org_id, ALICE_UID).await;
    let (s, inv) = w
        .api(
            Method::POST,
            &format!("/api/v1/orgs/{}/invitations", alice.org_id),
            Some(&alice.token),
            Some(json!({"email": bob.email, "role": "billing_admin"})),
        )
        .await;
    assert_eq!(s, 201, "{inv}");
    let invitation = inv["invitation_id"].as_str().unwrap().to_string();
    let (_, orgs) = w.api(Method::GET, "/api/v1/orgs", Some(&alice.token), None).await;
    let org_name = orgs["orgs"][0]["name"].as_str().unwrap().to_string();
    let console = console_login(w).await;
    let carol = w.unverified_user("carol").await;
    let link = w.mail.mail_to(&carol.email).await.verification_link();
    let verification = link.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let secrets = vec![
        alice.email.clone(),
        alice.user_id.clone(),
        alice.org_id.clone(),
        org_name,
        ALICE_UID.to_string(),
        instance.clone(),
        invitation.clone(),
        bob.email.clone(),
    ];
    Fixture { alice, mallory, instance, invitation, console, verification, secrets }
}

/// Logs an operator in to the console with the operator token; answers the session cookie's value.
async fn console_login(w: &World) -> String {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http
        .post(format!("{}/console/login", w.service))
        .header(header::COOKIE, format!("mf_console_csrf={CSRF}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={OP}&operator=access-test&csrf={CSRF}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "console login");
    let session = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok())
        .find_map(|c| c.strip_prefix("mf_console=").map(|rest| rest.split(';').next().unwrap_or("").to_string()))
        .filter(|v| !v.is_empty());
    session.expect("a console session cookie")
}

#[actix_rt::test]
async fn every_route_refuses_the_wrong_caller() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let f = fixture(&w).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut failures = vec![];
    let mut checked = 0;
    for route in ROUTES {
        let (path, names_an_object) = fill(route, &f);
        let label = format!("{} {path} ({:?})", route.method, route.access);
        for (who, refusal) in expectations(route.access, names_an_object) {
            let answer = call(&w, &http, route, &f, who).await;
            checked += 1;
            if answer.status >= 500 {
                failures.push(format!("{label} as {who:?}: {}", answer.status));
            } else if let Some(why) = judge(&answer, refusal, &path, &f) {
                failures.push(format!("{label} as {who:?}: {why}"));
            }
        }
        // The right caller gets through on the same path: the ids are real, the route is served.
        if let (Some(who), "GET") = (admitted(route.access), route.method) {
            let answer = call(&w, &http, route, &f, who).await;
            checked += 1;
            if !(200..300).contains(&answer.status) {
                let text: String = answer.text.chars().take(300).collect();
                failures.push(format!("{label} as {who:?} (admitted): {} {text}", answer.status));
            }
        } else if route.access == Access::Public {
            let answer = call(&w, &http, route, &f, Who::Nobody).await;
            checked += 1;
            if answer.status >= 500 || answer.code().as_deref() == Some("no_such_route") || answer.status == 401 {
                failures.push(format!("{label}: {} {:?}", answer.status, answer.code()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} checks failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > ROUTES.len(), "every route was called");
    w.shutdown().await;
}

/// A createInstance the marketplace could send, as pairs.
fn create_params(order: &str) -> Vec<(String, String)> {
    [
        ("action", "createInstance"),
        ("aliUid", "1688000000000802"),
        ("orderBizId", order),
        ("orderId", "access-order-1"),
        ("productCode", "cmgj00063418"),
        ("skuId", "payg"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn query(params: &[(String, String)], token: &str) -> String {
    let mut q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
    q.push(format!("token={token}"));
    q.join("&")
}

#[actix_rt::test]
async fn the_spi_refuses_forged_tokens_and_the_sso_stale_links() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // The SPI: a made-up token, and a real MD5 token over the right parameters but with another key; by GET and
    // by POST. Nothing is stored for either; the same call correctly signed is served.
    let params = create_params("access-forged");
    let forged = "0123456789abcdef0123456789abcdef".to_string();
    let other_key = spi_token(&params, "not-the-isv-key");
    for token in [&forged, &other_key] {
        let q = query(&params, token);
        let by_get = http.get(format!("{}/aliyun/spi?{q}", w.service)).send().await.unwrap();
        let by_post = http
            .post(format!("{}/aliyun/spi", w.service))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(q.clone())
            .send()
            .await
            .unwrap();
        for r in [by_get, by_post] {
            assert_eq!(r.status(), 403);
            let v: Value = r.json().await.unwrap();
            assert_eq!((v["success"].as_bool(), v["code"].as_str()), (Some(false), Some("invalid_token")), "{v}");
        }
    }
    let missing = params.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
    let r = http
        .post(format!("{}/aliyun/spi", w.service))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(missing)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "missing_token");
    assert_eq!(w.entity("access-forged").await.0, 404, "nothing stored for a forged call");
    let signed_right = query(&params, &spi_token(&params, ISV));
    let r = http.get(format!("{}/aliyun/spi?{signed_right}", w.service)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the same call with the right token is served");

    // 免登: links of a real, active subscription that Mallory follows with her session.
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let instance = w.active_subscription(ALICE_UID).await;
    let window = chrono::TimeDelta::from_std(Config::default().sso_window).unwrap();
    let link = |offset: chrono::TimeDelta, key: &str| {
        let stamp = format_time(w.clock.now() + offset);
        let params: Vec<(String, String)> =
            [("action", "verify"), ("instanceId", instance.as_str()), ("timeStamp", stamp.as_str())]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let token = if key.is_empty() { forged.clone() } else { spi_token(&params, key) };
        format!("{}/aliyun/sso?{}", w.service, query(&params, &token))
    };
    let follow = |url: String, token: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let location = r.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("").to_string();
            (status, location, r.text().await.unwrap())
        }
    };
    let second = chrono::TimeDelta::seconds(1);
    let refused = [
        ("forged token", link(chrono::TimeDelta::zero(), ""), "invalid_token"),
        ("another key", link(chrono::TimeDelta::zero(), "not-the-isv-key"), "invalid_token"),
        ("stale", link(-window - second, ISV), "link_expired"),
        ("from the future", link(window + second, ISV), "link_expired"),
    ];
    for (what, url, code) in refused {
        let (status, _, page) = follow(url.clone(), mallory.token.clone()).await;
        assert_eq!(status, 403, "{what}: {page}");
        assert!(page.contains(&format!("data-code=\"{code}\"")), "{what}: {page}");
        // Refused again the same way: a refusal neither consumes nor validates a link.
        let (status, _, page) = follow(url, mallory.token.clone()).await;
        assert!(status == 403 && page.contains(&format!("data-code=\"{code}\"")), "{what} again: {page}");
    }
    let path = format!("/api/v1/marketplace/aliyun/subscriptions/{instance}");
    assert_eq!(w.api(Method::GET, &path, Some(&mallory.token), None).await.0, 404, "the refused links granted nothing");
    // Just inside the window on either side, the link works (once: the replay is refused, tests/binding.rs).
    let (status, location, _) = follow(link(-window + second, ISV), alice.token.clone()).await;
    assert_eq!((status, location), (302, format!("/bind/{instance}")));
    let (status, location, _) = follow(link(window - second, ISV), alice.token.clone()).await;
    assert_eq!((status, location), (302, format!("/bind/{instance}")));
    assert_eq!(w.api(Method::GET, &path, Some(&alice.token), None).await.0, 200);
    w.shutdown().await;
}

/// An address is trusted only once the link mailed to it was opened: until then the user cannot take an
/// invitation to it, and an organization an operator creates for it waits. The link comes from a real SMTP
/// conversation with the test's server.
#[actix_rt::test]
async fn invitations_and_operator_organizations_wait_for_a_verified_address() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let owner = w.user("olga").await;
    let dan = w.unverified_user("dan").await;
    let (_, me) = w.api(Method::GET, "/api/v1/me", Some(&dan.token), None).await;
    assert_eq!(me["email_verified"], false, "{me}");
    let mail = w.mail.mail_to(&dan.email).await;
    assert!(mail.data.contains("Subject:"), "{}", mail.data);
    let link = mail.verification_link();
    assert!(link.starts_with(&format!("{}/verify-email?token=", w.service)), "{link}");

    // Unverified: the invitation to his address is refused with a code, and nothing changes.
    let (s, inv) = w
        .api(
            Method::POST,
            &format!("/api/v1/orgs/{}/invitations", owner.org_id),
            Some(&owner.token),
            Some(json!({"email": dan.email, "role": "member"})),
        )
        .await;
    assert_eq!(s, 201, "{inv}");
    let inv = inv["invitation_id"].as_str().unwrap().to_string();
    let accept = format!("/api/v1/invitations/{inv}/accept");
    let (s, refused) = w.api(Method::POST, &accept, Some(&dan.token), None).await;
    assert_eq!((s, refused["code"].as_str()), (403, Some("email_unverified")), "{refused}");
    let (_, orgs) = w.api(Method::GET, "/api/v1/orgs", Some(&dan.token), None).await;
    assert_eq!(orgs["orgs"].as_array().unwrap().len(), 1, "only his own organization: {orgs}");

    // An operator's organization for him waits.
    let (s, waiting) = w
        .api(Method::POST, "/api/v1/ops/orgs", Some(OP), Some(json!({"name": "Dan's team", "owner_email": dan.email})))
        .await;
    assert_eq!((s, waiting["status"].as_str()), (202, Some("waiting_for_verification")), "{waiting}");
    let team = waiting["org_id"].as_str().unwrap().to_string();
    let (s, _) = w.api(Method::GET, &format!("/api/v1/ops/entities/organization/{team}"), Some(OP), None).await;
    assert_eq!(s, 404, "not made before the owner verifies");

    // A made-up or mangled link verifies nothing.
    for bad in ["0".repeat(64), "zz".repeat(32), String::new(), "ab".to_string()] {
        let r = w.http.get(format!("{}/verify-email?token={bad}", w.service)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert!(r.text().await.unwrap().contains("invalid_verification_link"));
    }
    let (_, me) = w.api(Method::GET, "/api/v1/me", Some(&dan.token), None).await;
    assert_eq!(me["email_verified"], false, "{me}");

    // He asks for the mail again (a second mail arrives), and opens the first link: both work while they last.
    let (s, sent) = w.api(Method::POST, "/api/v1/me/email-verification", Some(&dan.token), None).await;
    assert_eq!((s, sent["status"].as_str()), (202, Some("sent")), "{sent}");
    let second = w.mail.nth_mail_to(&dan.email, 2).await.verification_link();
    assert_ne!(second, link);
    let r = w.http.get(&link).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, me) = w.api(Method::GET, "/api/v1/me", Some(&dan.token), None).await;
    assert_eq!(me["email_verified"], true, "{me}");

    // Verified: the operator's organization is made with him as its Owner, and the invitation is his to take.
    let (s, e) = w.api(Method::GET, &format!("/api/v1/ops/entities/organization/{team}"), Some(OP), None).await;
    assert_eq!(s, 200, "{e}");
    let (s, acc) = w.api(Method::POST, &accept, Some(&dan.token), None).await;
    assert_eq!(s, 200, "{acc}");
    let (_, orgs) = w.api(Method::GET, "/api/v1/orgs", Some(&dan.token), None).await;
    let mut mine: Vec<(String, String)> = orgs["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["org_id"].as_str().unwrap().to_string(), o["role"].as_str().unwrap().to_string()))
        .collect();
    mine.sort();
    let mut want = vec![
        (dan.org_id.clone(), "owner".to_string()),
        (team.clone(), "owner".to_string()),
        (owner.org_id.clone(), "member".to_string()),
    ];
    want.sort();
    assert_eq!(mine, want);
    // Opening a link again changes nothing; asking for another mail is refused now.
    assert_eq!(w.http.get(&second).send().await.unwrap().status().as_u16(), 200);
    let (s, again) = w.api(Method::POST, "/api/v1/me/email-verification", Some(&dan.token), None).await;
    assert_eq!((s, again["code"].as_str()), (409, Some("already_verified")), "{again}");
    assert_eq!(w.mail.mails_to(&dan.email).len(), 2, "no mail after the refusal");
    w.shutdown().await;
}

/// Asking for the verification mail again is bounded per user, so that someone who registered a stranger's
/// address cannot flood that mailbox.
#[actix_rt::test]
async fn verification_mail_cannot_flood_a_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let eve = w.unverified_user("eve").await;
    let mut statuses = vec![];
    for _ in 0..6 {
        let (s, v) = w.api(Method::POST, "/api/v1/me/email-verification", Some(&eve.token), None).await;
        if s == 429 {
            assert_eq!(v["code"], "rate_limited", "{v}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 4, "{statuses:?}");
    // The registration's mail and the two asked for; the refused ones sent nothing.
    w.mail.nth_mail_to(&eve.email, 3).await;
    assert_eq!(w.mail.mails_to(&eve.email).len(), 3);
    w.shutdown().await;
}
