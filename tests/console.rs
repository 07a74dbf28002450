//! The operator console, black-box: the real service and the simulator on one manual clock (tests/world), driven
//! over HTTP like a browser (a cookie jar, no automatic redirects, form posts). Login and its refusals, the
//! redirect without a session, the list's filters and paging, the entity page with its diagram, timers, calls and
//! journal, actions audited with the operator's name, refusals of forged forms; and `/metrics` (entities by state,
//! histograms) in a valid Prometheus exposition.

use crate::world;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use world::{World, OP};

/// A browser of the console: its own cookie jar, redirects not followed (the tests look at them).
struct Browser {
    http: reqwest::Client,
    base: String,
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(SET_COOKIE).iter().filter_map(|c| c.to_str().ok().map(String::from)).collect()
    }

    /// The value of the first `name="csrf"` field.
    fn csrf(&self) -> String {
        attr_after(&self.body, "name=\"csrf\"", "value").unwrap_or_else(|| panic!("a form token in {}", self.body))
    }

    /// The `data-code` of the element with this id (an error shown on the page).
    fn code_of(&self, id: &str) -> Option<String> {
        attr_after(&self.body, &format!("id=\"{id}\""), "data-code")
    }
}

/// The value of attribute `attr` in the tag where `needle` occurs.
fn attr_after(html: &str, needle: &str, attr: &str) -> Option<String> {
    let at = html.find(needle)?;
    let start = html[..=at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start..end];
    let pat = format!("{attr}=\"");
    let v = tag.find(&pat)? + pat.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// The `data-id`s of the listed entities, in order.
fn listed(page: &Page) -> Vec<String> {
    page.body
        .split("<tr class=\"entity\"")
        .skip(1)
        .filter_map(|row| attr_after(&format!("<tr{row}"), "<tr", "data-id"))
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&").replace("&#x2f;", "/").replace("&#x3d;", "=").replace("&quot;", "\"")
}

impl Browser {
    fn new(w: &World) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        Self { http, base: w.service.clone() }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Page {
        let resp = r.send().await.expect("the service answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Page { status, headers, body: resp.text().await.unwrap_or_default() }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut r = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        self.send(r).await
    }

    /// Logs in as `name`; answers the console page it lands on.
    async fn login(&self, name: &str) -> Page {
        self.login_with(OP, name).await
    }

    /// Posts the login form with `token` and `name`; answers the response (a redirect when it worked).
    async fn try_login(&self, token: &str, name: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        self.post("/console/login", &[("csrf", &csrf), ("operator", name), ("token", token)], None).await
    }

    /// Logs in with `token` as `name`; answers the console page it lands on.
    async fn login_with(&self, token: &str, name: &str) -> Page {
        let r = self.try_login(token, name).await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.location(), "/console");
        let page = self.get("/console").await;
        assert_eq!(page.status, 200, "{}", page.body);
        page
    }
}

/// Advances the clock in steps until the entity (ops API) satisfies `done`.
async fn until(w: &World, entity: &str, step: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = w.api(Method::GET, &format!("/api/v1/ops/entities/{entity}"), Some(OP), None).await;
        assert_eq!(s, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{entity} never got there: {v}");
        w.clock.advance(step);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An opening subscription whose activation poll failed until its `describe_instance` call needs an operator;
/// answers the instance id and the call id.
async fn failing_subscription(w: &World, ali_uid: &str) -> (String, String) {
    let id = w.open(ali_uid, 3600).await;
    w.sim(Method::POST, "/sim/faults", Some(json!({ "openapi_error_rate": 1.0, "seed": 1 }))).await;
    let v = until(w, &format!("subscription/{id}"), Duration::from_secs(15), |v| v["needs_attention"] == true).await;
    let call = v["pending_calls"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["status"] == "needs_attention"))
        .and_then(|c| c["id"].as_str())
        .unwrap_or_else(|| panic!("a call needing attention: {v}"))
        .to_string();
    w.sim(Method::POST, "/sim/faults", Some(json!({ "openapi_error_rate": 0.0 }))).await;
    (id, call)
}

#[actix_rt::test]
async fn login_sessions_and_the_redirect_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let b = Browser::new(&w);

    // Without a session every console page sends the browser to log in, and back afterwards.
    let r = b.get("/console").await;
    assert_eq!((r.status, r.location()), (303, "/console/login?next=%2Fconsole"));
    let r = b.get("/console/entities/subscription/1?before=3").await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/console/login?next=%2Fconsole%2Fentities%2Fsubscription%2F1%3Fbefore%3D3")
    );
    for path in ["/console/timers", "/console/audit"] {
        assert_eq!(b.get(path).await.status, 303, "{path}");
    }
    // A form posted without a session does nothing and goes to the login page too.
    let r = b.post("/console/entities/subscription/1/actions/pause", &[("reason", "x")], None).await;
    assert_eq!((r.status, r.location()), (303, "/console/login?next=%2Fconsole"));
    // The assets are public.
    let css = b.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(css.headers["content-type"].to_str().unwrap().starts_with("text/css"));
    assert_eq!(b.get("/console/assets/nope.js").await.status, 404);

    // The login page: a form token, its cookie HttpOnly and SameSite=Strict.
    let form = b.get("/console/login?next=%2Fconsole%2Ftimers").await;
    assert_eq!(form.status, 200);
    assert!(form.headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let cookie = form.set_cookies().into_iter().find(|c| c.starts_with("mf_console_csrf=")).expect("a token cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/console"));
    let csrf = form.csrf();
    assert_eq!(
        attr_after(&form.body, "name=\"next\"", "value").map(|n| unescape(&n)).as_deref(),
        Some("/console/timers")
    );

    // Refusals: not the operator token (401), no name (400), a wrong form token or another site (403). No session.
    async fn login(b: &Browser, token: &str, name: &str, csrf: &str, origin: Option<&str>) -> Page {
        let form = [("csrf", csrf), ("operator", name), ("token", token), ("next", "/console/timers")];
        b.post("/console/login", &form, origin).await
    }
    let r = login(&b, "not-the-token", "dana", &csrf, None).await;
    assert_eq!((r.status, r.code_of("login-error").as_deref()), (401, Some("invalid_token")), "{}", r.body);
    assert!(!r.body.contains("not-the-token"), "the wrong token is not echoed");
    let r = login(&b, world::SVC, "dana", &csrf, None).await;
    assert_eq!(r.status, 401, "the service's token is not the operator's");
    let r = login(&b, OP, "  ", &csrf, None).await;
    assert_eq!((r.status, r.code_of("login-error").as_deref()), (400, Some("invalid_name")));
    let r = login(&b, OP, "dana", &"0".repeat(64), None).await;
    assert_eq!((r.status, r.code_of("login-error").as_deref()), (403, Some("csrf_failed")));
    let r = login(&b, OP, "dana", &csrf, Some("https://evil.example")).await;
    assert_eq!((r.status, r.code_of("login-error").as_deref()), (403, Some("csrf_failed")));
    assert_eq!(b.get("/console").await.status, 303, "no refused login opened a session");

    // The operator token and a name: a session cookie (HttpOnly, SameSite=Strict), then on to `next`.
    let r = login(&b, OP, "Dana Ops", &csrf, Some(&w.service)).await;
    assert_eq!((r.status, r.location()), (303, "/console/timers"), "{}", r.body);
    let session = r.set_cookies().into_iter().find(|c| c.starts_with("mf_console=")).expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"] {
        assert!(session.contains(flag), "{flag} in {session}");
    }
    let token = session.trim_start_matches("mf_console=").split(';').next().unwrap().to_string();
    let page = b.get("/console/timers").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<strong id=\"operator-name\">Dana Ops</strong>"), "{}", page.body);
    // Logged in, the login page moves on.
    assert_eq!(b.get("/console/login").await.location(), "/console");

    // Logging out needs the session's form token; then the session is gone on the server, not only in the jar.
    let r = b.post("/console/logout", &[("csrf", &csrf)], None).await;
    assert_eq!(r.status, 403, "the login form's token is not the session's");
    let r = b.post("/console/logout", &[("csrf", &page.csrf())], None).await;
    assert_eq!((r.status, r.location()), (303, "/console/login"));
    assert_eq!(b.get("/console").await.status, 303);
    let replay = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = replay.get(format!("{}/console", w.service)).header("cookie", format!("mf_console={token}")).send().await;
    assert_eq!(r.unwrap().status().as_u16(), 303, "the old session cookie is dead");

    // A session that is still open is stored by the digest of its token, never the token itself.
    let form = b.get("/console/login").await;
    let r = b.post("/console/login", &[("csrf", &form.csrf()), ("operator", "Erin"), ("token", OP)], None).await;
    let cookie = r.set_cookies().into_iter().find(|c| c.starts_with("mf_console=")).expect("a session cookie");
    let erin = cookie.trim_start_matches("mf_console=").split(';').next().unwrap().to_string();
    assert_eq!(b.get("/console").await.status, 200);
    w.shutdown().await;
    let store = reopen(&dir.path().join("data")).await;
    use marketflow::store::Store as _;
    let rows = marketflow::store::scan_prefix(&store, marketflow::store::Table::Records, b"console-session/", 10)
        .await
        .expect("a scan");
    assert_eq!(rows.len(), 1, "one open session (the logged-out one was deleted)");
    let key = String::from_utf8(rows[0].0.clone()).unwrap();
    let digest = key.trim_start_matches("console-session/");
    assert_eq!(digest.len(), 64, "{key}");
    assert_eq!(digest, hex::encode(Sha256::digest(erin.as_bytes())), "{key}");
    let value: Value = serde_json::from_slice(&rows[0].1).unwrap();
    assert!(!String::from_utf8_lossy(&rows[0].1).contains(&erin), "the token is not in the record: {value}");
    assert_eq!(value["operator"], "Erin", "{value}");
    assert!(value["expires_at"].is_string(), "{value}");
    // The operator token it was opened with is kept as a domain-separated digest: neither the token nor its plain
    // SHA-256.
    let bound = value["token_digest"].as_str().unwrap_or_else(|| panic!("a token digest: {value}"));
    assert!(bound.len() == 64 && bound.bytes().all(|b| b.is_ascii_hexdigit()), "{value}");
    assert_ne!(bound, hex::encode(Sha256::digest(OP.as_bytes())), "{value}");
    assert!(!String::from_utf8_lossy(&rows[0].1).contains(OP), "the operator token is not in the record: {value}");
    store.close().ok();
}

/// The session token in a login response's `Set-Cookie`.
fn session_of(r: &Page) -> String {
    let cookie = r.set_cookies().into_iter().find(|c| c.starts_with("mf_console=")).expect("a session cookie");
    cookie.trim_start_matches("mf_console=").split(';').next().unwrap().to_string()
}

/// `GET /console` with only this session cookie: its status and where it redirects.
async fn with_session(w: &World, token: &str) -> (u16, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http.get(format!("{}/console", w.service)).header("cookie", format!("mf_console={token}")).send().await;
    let r = r.expect("the service answers");
    let location = r.headers().get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
    (r.status().as_u16(), location)
}

const NEW_OP: &str = "lifecycle-operator-new";

#[actix_rt::test]
async fn a_console_session_ends_when_its_operator_token_is_rotated_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path()).await;
    let old = Browser::new(&w);
    old.login("Dana").await;

    // A rotation in progress ('old,new'): the session opened with the old value goes on, the new value logs in.
    w.operator_token = format!("{OP},{NEW_OP}");
    w.restart_service().await;
    let page = old.get("/console").await;
    assert_eq!(page.status, 200, "the old value is still configured: {}", page.body);
    assert!(page.body.contains("<strong id=\"operator-name\">Dana</strong>"), "{}", page.body);
    let new = Browser::new(&w);
    new.login_with(NEW_OP, "Erin").await;

    // The old value removed: its sessions end at the next request, pages and forms alike; the new one's stays.
    w.operator_token = NEW_OP.to_string();
    w.restart_service().await;
    let r = old.get("/console").await;
    assert_eq!((r.status, r.location()), (303, "/console/login?next=%2Fconsole"), "{}", r.body);
    let r = old.get("/console/audit").await;
    assert_eq!((r.status, r.location()), (303, "/console/login?next=%2Fconsole%2Faudit"));
    let r = old.post("/console/entities/subscription/1/actions/pause", &[("reason", "x")], None).await;
    assert_eq!((r.status, r.location()), (303, "/console/login?next=%2Fconsole"));
    assert_eq!(old.get("/console/login").await.status, 200, "the login page does not take it for logged in");
    assert_eq!(old.try_login(OP, "Dana").await.status, 401, "nor does the old value log in again");
    let page = new.get("/console").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<strong id=\"operator-name\">Erin</strong>"), "{}", page.body);
    w.shutdown().await;
}

#[actix_rt::test]
async fn a_console_session_stored_without_a_token_digest_counts_as_ended() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let b = Browser::new(&w);
    let token = session_of(&b.try_login(OP, "Dana").await);
    assert_eq!(with_session(&w, &token).await.0, 200);
    w.shutdown().await;

    // The record as the previous build wrote it: no `token_digest`.
    let store = reopen(&dir.path().join("data")).await;
    use marketflow::store::Store as _;
    let key = format!("console-session/{}", hex::encode(Sha256::digest(token.as_bytes()))).into_bytes();
    let table = marketflow::store::Table::Records;
    let mut record: Value =
        serde_json::from_slice(&store.get(table, &key).await.unwrap().expect("the session")).unwrap();
    record.as_object_mut().unwrap().remove("token_digest").expect("a digest to remove");
    let mut batch = marketflow::store::Batch::new();
    batch.put(table, key, serde_json::to_vec(&record).unwrap());
    store.apply(&[batch]).unwrap();
    store.close().ok();
    drop(store);

    let w = World::new(dir.path()).await;
    assert_eq!(with_session(&w, &token).await, (303, "/console/login?next=%2Fconsole".to_string()));
    // Logging in again works as ever.
    Browser::new(&w).login("Dana").await;
    w.shutdown().await;
}

const ALICE: &str = "alice-console-token-1";
const BOB: &str = "bob-console-token-22";

#[actix_rt::test]
async fn a_named_token_logs_in_as_its_owner_whatever_the_form_says() {
    let dir = tempfile::tempdir().unwrap();
    let named = format!("alice:{ALICE},bob:{BOB}");
    let mut w = World::with_operator_tokens(dir.path(), Some(&named)).await;
    let owner = w.user("olga").await;
    let org = format!("/console/entities/organization/{}", owner.org_id);

    // Alice's token with another name in the form: the console is Alice's, and so is the audit trail.
    let alice = Browser::new(&w);
    let page = alice.login_with(ALICE, "Mallory").await;
    assert!(page.body.contains("<strong id=\"operator-name\">alice</strong>"), "{}", page.body);
    let csrf = page.csrf();
    let r = alice.post(&format!("{org}/actions/freeze"), &[("reason", "fraud check"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Bob's token needs no name at all; the shared token still takes the form's.
    let bob = Browser::new(&w);
    let r = bob.try_login(BOB, "").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let csrf = bob.get(&org).await.csrf();
    let r = bob.post(&format!("{org}/actions/unfreeze"), &[("reason", "cleared"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shared = Browser::new(&w);
    assert_eq!(shared.try_login(OP, " ").await.code_of("login-error").as_deref(), Some("invalid_name"));
    let csrf = shared.login("Dana Ops").await.csrf();
    let r = shared.post(&format!("{org}/actions/freeze"), &[("reason", "again"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let trail = w.audit_trail().await;
    let row = |o: &str, a: &str| (o.to_string(), a.to_string());
    assert_eq!(trail, [row("Dana Ops", "freeze"), row("bob", "unfreeze"), row("alice", "freeze")]);
    let path = format!("/api/v1/ops/entities/organization/{}/journal?limit=1000", owner.org_id);
    let (_, j) = w.api(Method::GET, &path, Some(OP), None).await;
    let causes: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cause"]["kind"] == "operator")
        .filter_map(|e| e["cause"]["operator"].as_str())
        .collect();
    assert_eq!(causes, ["alice", "bob", "Dana Ops"], "{j}");

    // Alice's token removed: her session ends; Bob's and the shared one's go on.
    w.operator_tokens = Some(format!("bob:{BOB}"));
    w.restart_service().await;
    assert_eq!(alice.get("/console").await.status, 303);
    assert_eq!(alice.try_login(ALICE, "alice").await.status, 401);
    let page = bob.get("/console").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<strong id=\"operator-name\">bob</strong>"), "{}", page.body);
    assert_eq!(shared.get("/console").await.status, 200);
    w.shutdown().await;
}

/// The store of a stopped service (its drain may still be closing it).
async fn reopen(dir: &std::path::Path) -> marketflow::store::SledStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match marketflow::store::SledStore::open(dir) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "the store does not reopen: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[actix_rt::test]
async fn the_list_filters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    // An active subscription and an organization, twenty minutes old; then an opening subscription whose calls fail.
    let active = w.active_subscription("1688000000000501").await;
    let owner = w.user("olga").await;
    w.clock.advance(Duration::from_secs(20 * 60));
    let (opening, _) = failing_subscription(&w, "1688000000000502").await;
    let b = Browser::new(&w);
    b.login("Dana").await;

    let ids = |q: &'static str| {
        let b = &b;
        async move {
            let p = b.get(&format!("/console?{q}")).await;
            assert_eq!(p.status, 200, "{q}: {}", p.body);
            let mut ids = listed(&p);
            ids.sort();
            ids
        }
    };
    let mut both = vec![active.clone(), opening.clone()];
    both.sort();
    assert_eq!(ids("kind=subscription").await, both);
    assert_eq!(ids("kind=organization").await, [owner.org_id.as_str()]);
    assert_eq!(ids("kind=subscription&state=opening").await, [opening.as_str()]);
    assert_eq!(ids("kind=subscription&state=active").await, [active.as_str()]);
    // The opening one waits on its activation poll, the active one on its periodic check.
    assert_eq!(ids("kind=subscription&waiting_on_timer=true").await, both);
    assert_eq!(ids("kind=organization&waiting_on_timer=true").await, Vec::<String>::new());
    assert_eq!(ids("needs_attention=true").await, [opening.as_str()]);
    assert_eq!(ids("kind=subscription&min_time_in_state=10m").await, [active.as_str()]);
    assert_eq!(ids("kind=&state=&min_time_in_state=&limit=").await, ids("").await, "empty fields are no filter");

    // The row says where it stands: state, the soonest timer counting down.
    let p = b.get("/console?kind=subscription&state=opening").await;
    assert!(p.body.contains(&format!("data-id=\"{opening}\" data-state=\"opening\"")), "{}", p.body);
    assert!(p.body.contains("class=\"countdown\" data-due=\""), "{}", p.body);
    // The form keeps the filters.
    assert!(p.body.contains("<option value=\"subscription\" selected>"), "{}", p.body);

    // Paging: one at a time, following the "next page" links to a page without one.
    let mut page = b.get("/console?kind=subscription&limit=1").await;
    let mut seen = vec![];
    for _ in 0..5 {
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(listed(&page).len() <= 1, "one per page");
        seen.extend(listed(&page));
        let Some(next) = attr_after(&page.body, "id=\"next-page\"", "href") else { break };
        page = b.get(&unescape(&next)).await;
        assert!(page.body.contains("id=\"first-page\""), "a later page links back to the first");
    }
    assert!(!page.body.contains("id=\"next-page\""), "the pages end");
    seen.sort();
    assert_eq!(seen, both);

    // Invalid filters: the page says why, with a stable code and a 400.
    for (q, code) in [
        ("kind=nope", "unknown_kind"),
        ("min_time_in_state=soon", "invalid_duration"),
        ("limit=0", "invalid_limit"),
        ("limit=many", "invalid_limit"),
        ("cursor=nonsense", "invalid_input"),
    ] {
        let p = b.get(&format!("/console?{q}")).await;
        assert_eq!((p.status, p.code_of("filter-error").as_deref()), (400, Some(code)), "{q}: {}", p.body);
        assert!(listed(&p).is_empty());
    }
    w.shutdown().await;
}

#[actix_rt::test]
async fn the_entity_page_and_actions_audited_with_the_operator_name() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let (id, call) = failing_subscription(&w, "1688000000000601").await;
    let owner = w.user("olga").await;
    let b = Browser::new(&w);
    b.login("Dana Ops").await;
    let path = format!("/console/entities/subscription/{id}");

    // State, definition, the diagram with the current state marked, timers, the failed call, the journal.
    let p = b.get(&path).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("id=\"entity-state\" data-state=\"opening\""), "{}", p.body);
    assert!(p.body.contains("subscription v2"), "the definition and version");
    assert!(p.body.contains("<svg class=\"diagram\""), "an inline diagram");
    assert_eq!(p.body.matches("data-current=\"true\"").count(), 1, "one current state");
    assert!(p.body.contains("data-state=\"opening\" data-current=\"true\""));
    for state in ["new", "activation_failed", "active", "expired", "released"] {
        assert!(p.body.contains(&format!("data-state=\"{state}\" data-current=\"false\"")), "{state} drawn");
    }
    for timer in ["activation-poll", "activation-deadline"] {
        let due = attr_after(&p.body, &format!("<tr class=\"timer\" data-name=\"{timer}\""), "data-name");
        assert!(due.is_some(), "{timer} listed");
    }
    assert!(p.body.contains("data-due=\""), "countdowns carry their due time");
    assert!(p.body.contains("data-now=\"") && p.body.contains("data-scale=\"0\""), "the manual clock's scale");
    let row = unescape(p.body.split("<tr class=\"call\"").nth(1).expect("the call's row"));
    assert!(row.contains(&format!("data-call-id=\"{call}\" data-status=\"needs_attention\"")), "{row}");
    assert!(row.contains("<td>3</td>"), "out of its three attempts: {row}");
    assert!(row.contains("data-action=\"retry\"") && row.contains("data-action=\"cancel\""), "{row}");
    assert!(p.body.contains("data-event=\"create\""), "the journal's first entry");
    assert!(p.body.contains("id=\"needs-attention\""));

    // Unknown and invalid entities.
    assert_eq!(b.get("/console/entities/subscription/nope").await.status, 404);
    let p = b.get("/console/entities/subscription/a%23b").await;
    assert_eq!((p.status, p.code_of("message").as_deref()), (400, Some("invalid_entity")));

    // Forged forms change nothing: no token, another session's token, another site.
    let csrf = b.get(&path).await.csrf();
    let action = |a: &str| format!("{path}/actions/{a}");
    let r = b.post(&action("pause"), &[("reason", "look")], None).await;
    assert_eq!((r.status, r.code_of("message").as_deref()), (403, Some("csrf_failed")));
    let other = Browser::new(&w);
    let other_csrf = other.login("Mallory").await.csrf();
    assert_ne!(other_csrf, csrf);
    let r = b.post(&action("pause"), &[("reason", "look"), ("csrf", &other_csrf)], None).await;
    assert_eq!(r.status, 403, "a form token of another session");
    let r = b.post(&action("pause"), &[("reason", "look"), ("csrf", &csrf)], Some("https://evil.example")).await;
    assert_eq!(r.status, 403, "a form from another site");
    // No reason: refused with the API's code, shown on the entity page.
    let r = b.post(&action("pause"), &[("reason", " "), ("csrf", &csrf)], None).await;
    assert_eq!((r.status, r.code_of("action-result").as_deref()), (400, Some("reason_required")), "{}", r.body);
    let r = b.post(&action("reboot"), &[("reason", "x"), ("csrf", &csrf)], None).await;
    assert_eq!((r.status, r.code_of("action-result").as_deref()), (400, Some("unknown_action")));
    assert!(w.audit().await.is_empty(), "refused actions are not audited");
    assert_eq!(w.entity(&id).await.1["paused"], false);

    // Retry the failed call (the marketplace answers again): done, audited as Dana Ops.
    let r =
        b.post(&action("retry"), &[("reason", "marketplace back"), ("call_id", &call), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"action-result\" data-action=\"retry\" data-status=\"ok\""), "{}", r.body);
    assert!(unescape(&r.body).contains(&format!("Calls: {call}.")), "the retried call is named");
    until(&w, &format!("subscription/{id}"), Duration::ZERO, |v| v["needs_attention"] == false).await;

    // Pause and resume: the journal has them with the operator and the reason as their cause.
    let r = b.post(&action("pause"), &[("reason", "investigating"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"paused\""), "the page shows it paused");
    assert!(r.body.contains("data-action=\"resume\""), "and offers to resume");
    let r = b.post(&action("resume"), &[("reason", "all clear"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200);
    let journal = b.get(&path).await.body;
    assert!(journal.contains("operator Dana Ops: investigating"), "the journal's cause: {journal}");

    // An organization: freeze and unfreeze are offered by state, and audited.
    let org = format!("/console/entities/organization/{}", owner.org_id);
    let p = b.get(&org).await;
    assert!(p.body.contains("data-action=\"freeze\"") && !p.body.contains("data-action=\"unfreeze\""));
    let r = b.post(&format!("{org}/actions/freeze"), &[("reason", "fraud check"), ("csrf", &csrf)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"entity-state\" data-state=\"frozen\""), "{}", r.body);
    assert!(r.body.contains("data-state=\"frozen\" data-current=\"true\""), "the diagram follows");
    let r = b.post(&format!("{org}/actions/freeze"), &[("reason", "again"), ("csrf", &csrf)], None).await;
    assert_eq!((r.status, r.code_of("action-result").as_deref()), (409, Some("not_applicable")));

    // The audit trail (API and console page), newest first, with who and why.
    let trail: Vec<(String, String, String)> = w
        .audit()
        .await
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("operator"), s("action"), s("reason"))
        })
        .collect();
    let expect = |o: &str, a: &str, r: &str| (o.to_string(), a.to_string(), r.to_string());
    assert_eq!(
        trail,
        [
            expect("Dana Ops", "freeze", "fraud check"),
            expect("Dana Ops", "resume", "all clear"),
            expect("Dana Ops", "pause", "investigating"),
            expect("Dana Ops", "retry", "marketplace back"),
        ]
    );
    let page = b.get("/console/audit").await;
    assert_eq!(page.body.matches("<tr class=\"audit\" data-operator=\"Dana Ops\"").count(), 4, "{}", page.body);
    w.shutdown().await;
}

/// A Prometheus text exposition, checked: every sample's family has `# HELP` and `# TYPE` before it, once;
/// histograms have ascending cumulative buckets ending in `+Inf` equal to `_count`, and a `_sum`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let (mut helped, mut typed) = (BTreeSet::new(), BTreeMap::new());
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(helped.insert(name.clone()), "HELP of {name} twice");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap().to_string(), it.next().unwrap().to_string());
            assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "{line}");
            assert!(typed.insert(name.clone(), kind).is_none(), "TYPE of {name} twice");
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).map(String::as_str) == Some("histogram")))
                .unwrap_or(name);
            assert!(typed.contains_key(family) && helped.contains(family), "{family} declared before {line}");
            assert!(samples.insert(series.to_string(), value).is_none(), "{series} twice");
        }
    }
    for (family, _) in typed.iter().filter(|(_, k)| *k == "histogram") {
        let mut by_labels: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, v) in
            samples.range(format!("{family}_bucket")..).take_while(|(s, _)| s.starts_with(&format!("{family}_bucket")))
        {
            let labels = series.split_once('{').map(|(_, l)| l.trim_end_matches('}')).unwrap_or("");
            let (rest, le) = labels.rsplit_once("le=\"").unwrap();
            let le = le.trim_end_matches('"');
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            by_labels.entry(rest.trim_end_matches(',').to_string()).or_default().push((le, *v));
        }
        assert!(!by_labels.is_empty(), "{family} has buckets");
        for (labels, mut buckets) in by_labels {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{{{labels}}} cumulative: {buckets:?}");
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{family} ends in +Inf");
            let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            let count = samples[&format!("{family}_count{braces}")];
            assert_eq!(buckets.last().unwrap().1, count, "{family}{braces}: +Inf = _count");
            assert!(samples.contains_key(&format!("{family}_sum{braces}")), "{family}{braces} has a _sum");
        }
    }
    samples
}

async fn metrics(w: &World) -> BTreeMap<String, f64> {
    let r = w.http.get(format!("{}/metrics", w.service)).send().await.expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    parse_metrics(&r.text().await.unwrap())
}

/// The metrics once `ready` holds of them (or after 5 s): a state is visible to the API as soon as its group is
/// written, the gauge moves once the group is durable, a moment later.
async fn metrics_when(w: &World, ready: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(w).await;
        if ready(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn entities(m: &BTreeMap<String, f64>, kind: &str, state: &str) -> f64 {
    m.get(&format!("marketflow_entities{{kind=\"{kind}\",state=\"{state}\"}}")).copied().unwrap_or(-1.0)
}

#[actix_rt::test]
async fn metrics_count_entities_by_state_and_time_commits_timers_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path()).await;
    let first = w.open("1688000000000701", 60).await;
    let m = metrics_when(&w, |m| entities(m, "subscription", "opening") == 1.0).await;
    assert_eq!(entities(&m, "subscription", "opening"), 1.0, "{m:?}");
    assert_eq!(entities(&m, "subscription", "active"), 0.0, "every state of the definition is a series");
    assert_eq!(entities(&m, "organization", "frozen"), 0.0);
    // The work tables: the opening subscription's poll and deadline, nothing sent or called yet.
    assert_eq!(m.get("marketflow_timers_pending").copied(), Some(2.0), "{m:?}");
    assert_eq!(m.get("marketflow_outbox_pending").copied(), Some(0.0));
    assert_eq!(m.get("marketflow_calls_pending").copied(), Some(0.0));

    // State changes move the gauge without another scan: activation, a new organization, a second subscription.
    w.pass_minutes(&first, 2).await;
    w.wait_state(&first, "active").await;
    w.user("olga").await;
    let second = w.open("1688000000000702", 3600).await;
    let m = metrics_when(&w, |m| {
        entities(m, "subscription", "opening") == 1.0
            && entities(m, "subscription", "active") == 1.0
            && entities(m, "organization", "unbound") == 1.0
    })
    .await;
    assert_eq!(entities(&m, "subscription", "opening"), 1.0, "{m:?}");
    assert_eq!(entities(&m, "subscription", "active"), 1.0);
    assert_eq!(entities(&m, "organization", "unbound"), 1.0);
    // The deadline passes for the second: opening → activation_failed.
    w.pass_minutes(&second, 16).await;
    w.wait_state(&second, "activation_failed").await;
    let m = metrics_when(&w, |m| entities(m, "subscription", "activation_failed") == 1.0).await;
    assert_eq!(entities(&m, "subscription", "activation_failed"), 1.0, "{m:?}");
    assert_eq!(entities(&m, "subscription", "opening"), 0.0);

    // Histograms: commits timed and sized, timers' lateness, requests by route.
    assert!(m["marketflow_commit_seconds_count"] >= 5.0, "{m:?}");
    assert!(m["marketflow_commit_seconds_sum"] > 0.0);
    assert!(m["marketflow_commit_group_size_count"] >= 5.0);
    assert!(m["marketflow_timer_lateness_seconds_count"] >= 10.0, "the polls fired: {m:?}");
    let route =
        "marketflow_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/ops/entities/{kind}/{id}\"}";
    assert!(m.get(route).copied().unwrap_or(0.0) >= 1.0, "{m:?}");

    // After a restart the counts are taken from the store again, and agree.
    w.restart_service().await;
    let m = metrics(&w).await;
    assert_eq!(entities(&m, "subscription", "active"), 1.0, "{m:?}");
    assert_eq!(entities(&m, "subscription", "activation_failed"), 1.0);
    assert_eq!(entities(&m, "organization", "unbound"), 1.0);
    w.shutdown().await;
}

#[actix_rt::test]
async fn the_cluster_page_shows_the_one_node_that_holds_every_shard_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let b = Browser::new(&w);
    assert_eq!(b.get("/console/cluster").await.status, 303, "a session first");
    b.login("Erin").await;
    let page = b.get("/console/cluster").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("one node on sled: it holds every shard"), "{}", page.body);
    assert!(page.body.contains("<td class=\"mono\">0–255</td>"), "{}", page.body);
    assert_eq!(page.body.matches("<tr class=\"node\"").count(), 1);
}

/// The windows whose push has an unknown outcome, on their page: listed, previewed (nothing changes), resolved in
/// bulk as the operator, a form without its token refused; the audit trail names the console's operator.
#[actix_rt::test]
async fn windows_of_unknown_outcome_are_listed_previewed_and_resolved_from_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (w, sa, sb, h0) = crate::metering::two_windows_of_unknown_outcome(dir.path()).await;
    let b = Browser::new(&w);
    b.login("Wen Ops").await;
    let rows = |p: &Page| -> Vec<String> {
        p.body
            .split("<tr class=\"window\"")
            .skip(1)
            .filter_map(|row| attr_after(&format!("<tr{row}"), "<tr", "data-instance"))
            .collect()
    };
    let mut both = vec![sa.clone(), sb.clone()];
    both.sort();
    let page = b.get("/console/windows").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(rows(&page), both, "{}", page.body);
    let csrf = page.csrf();
    let hour = h0.to_rfc3339();

    // A preview by hour: both, and nothing changes.
    let preview = [("csrf", csrf.as_str()), ("resolution", "cancel"), ("hour", &hour), ("dry_run", "true")];
    let p = b.post("/console/windows", &preview, None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("data-status=\"ok\" data-count=\"2\""), "{}", p.body);
    assert!(p.body.contains("would be resolved as cancel"), "{}", p.body);
    assert_eq!(rows(&p), both);

    // Without the form's token: refused, nothing done.
    let p = b.post("/console/windows", &[("resolution", "cancel"), ("hour", &hour), ("reason", "x")], None).await;
    assert_eq!(p.status, 403, "{}", p.body);
    // Without a reason: refused with its code.
    let p = b.post("/console/windows", &[("csrf", &csrf), ("resolution", "cancel"), ("hour", &hour)], None).await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("data-status=\"refused\"") && p.body.contains("reason_required"), "{}", p.body);

    // Resolved for one instance: one left on the page.
    let resolve = [
        ("csrf", csrf.as_str()),
        ("resolution", "cancel"),
        ("instances", sa.as_str()),
        ("reason", "not on the bill"),
        ("dry_run", "false"),
    ];
    let p = b.post("/console/windows", &resolve, None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("data-status=\"ok\" data-count=\"1\""), "{}", p.body);
    assert_eq!(rows(&p), std::slice::from_ref(&sb), "{}", p.body);
    let (_, trail) = w.api(reqwest::Method::GET, "/api/v1/ops/audit", Some(OP), None).await;
    let first = &trail["items"][0];
    assert_eq!(
        (first["operator"].as_str(), first["action"].as_str()),
        (Some("Wen Ops"), Some("window:cancel")),
        "{trail}"
    );
    w.shutdown().await;
}

/// Every cause of attention in the API, `ctl` and the console: a subscription past its activation deadline, one
/// the marketplace does not know; each with its next step, counted on `/metrics`, listed by cause; one dismissed
/// from the console (audited, and it stays dismissed while the same concern lasts), the other settled by the
/// marketplace opening the instance late.
#[actix_rt::test]
async fn every_cause_of_attention_shows_in_the_api_ctl_and_console_and_goes_when_settled_or_dismissed() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    // Opened by the marketplace only after an hour: past the 15-minute activation deadline.
    let late = w.open("1688000000000971", 3600).await;
    w.pass_minutes(&late, 16).await;
    w.wait_state(&late, "activation_failed").await;
    // A createInstance for an instance the marketplace has no record of: DescribeInstance answers not found.
    let q = world::signed(&[
        ("action", "createInstance"),
        ("aliUid", "100000971"),
        ("orderBizId", "97100"),
        ("orderId", "971001"),
        ("productCode", "cmgj00063418"),
        ("skuId", "payg"),
        ("trial", "false"),
        ("expiredOn", "2099-01-01 00:00:00"),
    ]);
    let r = w.http.get(format!("{}/aliyun/spi?{q}", w.service)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let unknown = "97100";
    until(&w, &format!("subscription/{unknown}"), Duration::from_secs(60), |v| {
        v["attention"].as_array().is_some_and(|a| a.iter().any(|c| c["cause"] == "instance_not_found"))
    })
    .await;

    // The API: every cause described and counted, the concerns with their next step.
    let (st, a) = w.api(Method::GET, "/api/v1/ops/attention", Some(OP), None).await;
    assert_eq!(st, 200, "{a}");
    let causes: BTreeMap<String, u64> = a["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["cause"].as_str().unwrap().to_string(), c["count"].as_u64().unwrap()))
        .collect();
    let expected: BTreeMap<String, u64> = [
        ("activation_overdue", 1),
        ("call_out_of_attempts", 0),
        ("call_outcome_unknown", 0),
        ("instance_not_found", 1),
        ("message_undeliverable", 0),
        ("usage_past_deadline", 0),
        ("window_failed", 0),
    ]
    .into_iter()
    .map(|(c, n)| (c.to_string(), n))
    .collect();
    assert_eq!(causes, expected, "{a}");
    assert!(a["causes"].as_array().unwrap().iter().all(|c| !c["covers"].as_str().unwrap().is_empty()), "{a}");
    let by_id = |id: &str| a["items"].as_array().unwrap().iter().find(|i| i["id"] == id).cloned().unwrap_or_default();
    assert_eq!(by_id(&late)["cause"], "activation_overdue", "{a}");
    assert!(by_id(&late)["next_step"].as_str().unwrap().contains("a late OPENED still activates it"), "{a}");
    assert!(by_id(unknown)["next_step"].as_str().unwrap().contains("InvalidInstanceId.NotFound"), "{a}");
    let (_, list) = w.api(Method::GET, "/api/v1/ops/entities?cause=instance_not_found", Some(OP), None).await;
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [unknown], "{list}");
    let (_, list) = w.api(Method::GET, "/api/v1/ops/entities?needs_attention=true", Some(OP), None).await;
    let mut ids: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort();
    let mut both = vec![late.as_str(), unknown];
    both.sort();
    assert_eq!(ids, both, "{list}");
    let (st, v) = w.api(Method::GET, "/api/v1/ops/entities?cause=bored", Some(OP), None).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("unknown_cause")), "{v}");
    let metrics = w.http.get(format!("{}/metrics", w.service)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("marketflow_needs_attention{cause=\"activation_overdue\"} 1"), "{metrics}");
    assert!(metrics.contains("marketflow_needs_attention{cause=\"window_failed\"} 0"), "{metrics}");
    assert!(metrics.contains("marketflow_drift_total{kind=\"not_found\"} 1"), "{metrics}");

    // `ctl`: the causes with their counts, the concerns; the list by cause.
    let out = crate::ops::ctl(&w, "alice", &["attention"]).await.unwrap();
    assert!(
        out.contains("activation_overdue") && out.contains(&format!("subscription/{unknown} instance_not_found")),
        "{out}"
    );
    let out = crate::ops::ctl(&w, "alice", &["entities", "list", "--cause", "activation_overdue"]).await.unwrap();
    assert!(out.contains(&format!("subscription/{late}")) && !out.contains(unknown), "{out}");

    // The console: the filter by cause, what each cause covers, and the entity's concerns with a dismiss button.
    let b = Browser::new(&w);
    b.login("Wen Ops").await;
    let page = b.get("/console?cause=activation_overdue").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(listed(&page), std::slice::from_ref(&late), "{}", page.body);
    assert!(page.body.contains("data-cause=\"instance_not_found\" data-count=\"1\""), "{}", page.body);
    let page = b.get("/console?cause=bored").await;
    assert_eq!((page.status, page.code_of("filter-error").as_deref()), (400, Some("unknown_cause")));
    let page = b.get(&format!("/console/entities/subscription/{unknown}")).await;
    assert!(page.body.contains("class=\"concern\" data-cause=\"instance_not_found\""), "{}", page.body);
    let csrf = page.csrf();
    let path = format!("/console/entities/subscription/{unknown}/actions/dismiss");
    let form = [("csrf", csrf.as_str()), ("cause", "instance_not_found"), ("subject", ""), ("reason", "a test order")];
    let done = b.post(&path, &form, None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("data-status=\"ok\""), "{}", done.body);
    assert!(!done.body.contains("class=\"concern\""), "{}", done.body);
    assert!(w.audit_trail().await.contains(&("Wen Ops".into(), "dismiss:instance_not_found".into())));
    let (st, v) = w
        .api(
            Method::POST,
            &format!("/api/v1/ops/entities/subscription/{unknown}/attention/dismiss"),
            Some(OP),
            Some(json!({ "cause": "instance_not_found", "reason": "again" })),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")), "dismissed already: {v}");
    // Another poll answers not found again: the same concern, not a new one; it stays dismissed.
    let (_, v) = w.entity(unknown).await;
    let failures = v["data"]["poll_failures"].as_u64().unwrap();
    until(&w, &format!("subscription/{unknown}"), Duration::from_secs(60), |v| {
        v["data"]["poll_failures"].as_u64().unwrap() > failures
    })
    .await;
    let (_, a) = w.api(Method::GET, "/api/v1/ops/attention?cause=instance_not_found", Some(OP), None).await;
    assert_eq!(a["items"], json!([]), "{a}");

    // The marketplace opens the late one: active, and its concern is settled by that very transition.
    until(&w, &format!("subscription/{late}"), Duration::from_secs(600), |v| v["state"] == "active").await;
    let (_, a) = w.api(Method::GET, "/api/v1/ops/attention?cause=activation_overdue", Some(OP), None).await;
    let ids: Vec<&str> = a["items"].as_array().unwrap().iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, [unknown], "the unknown instance passed its own deadline meanwhile; the late one is settled: {a}");
    w.shutdown().await;
}

/// The incident switch on every push, from the console: held and released as the logged-in operator, audited with
/// their name and reason, the same hold the API reads; refusals (no reason, a forged form, an unknown switch) change
/// nothing.
#[actix_rt::test]
async fn pushes_are_held_and_released_from_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let b = Browser::new(&w);
    b.login("Wen Ops").await;
    let page = b.get("/console/windows").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"pushes\" data-held=\"false\""), "{}", page.body);
    let csrf = page.csrf();
    let held = || async {
        let (_, v) = w.api(Method::GET, "/api/v1/ops/pushes", Some(OP), None).await;
        v["hold"]["held"].clone()
    };

    let p = b.post("/console/pushes/hold", &[("csrf", &csrf), ("reason", "")], None).await;
    assert_eq!((p.status, p.code_of("pushes-result").as_deref()), (400, Some("reason_required")), "{}", p.body);
    let p = b.post("/console/pushes/hold", &[("csrf", "forged"), ("reason", "x")], None).await;
    assert_eq!(p.status, 403, "{}", p.body);
    let p = b.post("/console/pushes/pause", &[("csrf", &csrf), ("reason", "x")], None).await;
    assert_eq!((p.status, p.code_of("pushes-result").as_deref()), (404, Some("not_found")), "{}", p.body);
    assert_eq!(held().await, false);
    assert!(w.audit().await.is_empty(), "refusals are not audited");

    let p = b.post("/console/pushes/hold", &[("csrf", &csrf), ("reason", "marketplace incident 42")], None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(
        p.body.contains("id=\"pushes\" data-held=\"true\"") && p.body.contains("marketplace incident 42"),
        "{}",
        p.body
    );
    assert_eq!(held().await, true);
    let p = b.post("/console/pushes/release", &[("csrf", &csrf), ("reason", "incident over")], None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("id=\"pushes\" data-held=\"false\""), "{}", p.body);
    assert_eq!(held().await, false);
    let trail: Vec<(String, String)> = w
        .audit()
        .await
        .iter()
        .map(|e| (e["operator"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        trail,
        [("Wen Ops".to_string(), "release-pushes".to_string()), ("Wen Ops".to_string(), "hold-pushes".to_string())]
    );
    w.shutdown().await;
}
