//! The operator's actions, black-box, through the ops API and `marketflow ctl` against the real service and the
//! simulator on one manual clock: a Market call made to fail until it needs an operator, then each action (retry,
//! cancel, pause, resume, freeze, unfreeze) with its effect on the workflow, its journal entry and the audit trail,
//! and the refusals (no token, the service's token, no reason, an unknown action).

use crate::world;

use std::time::{Duration, Instant};

use clap::Parser;
use marketflow::ctl::{self, CtlArgs};
use reqwest::Method;
use serde_json::{json, Value};
use world::{World, OP, SVC};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CtlArgs,
}

/// Runs `ctl` as operator `name`, the way the binary parses its argv; answers what it printed.
pub(crate) async fn ctl(w: &World, name: &str, argv: &[&str]) -> Result<String, ctl::Error> {
    let mut full = vec!["ctl", "--url", &w.service, "--token", OP, "--operator", name];
    full.extend_from_slice(argv);
    let args = Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}")).args;
    let mut out = Vec::new();
    ctl::run(args, &mut out).await?;
    Ok(String::from_utf8(out).expect("UTF-8"))
}

/// POSTs an action as `operator` with `token`; answers (status, body).
async fn act(w: &World, token: Option<&str>, entity: &str, action: &str, body: Value) -> (u16, Value) {
    let mut r = w
        .http
        .post(format!("{}/api/v1/ops/entities/{entity}/actions/{action}", w.service))
        .header("x-operator", "carol")
        .json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("the service answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn faults(w: &World, rate: f64) {
    w.sim(Method::POST, "/sim/faults", Some(json!({ "openapi_error_rate": rate, "seed": 1 }))).await;
}

async fn show(w: &World, entity: &str) -> Value {
    let (s, v) = w.api(Method::GET, &format!("/api/v1/ops/entities/{entity}"), Some(OP), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Advances the clock in small steps until `done` holds for the entity (calls retry with backoff on the clock).
async fn until(w: &World, entity: &str, what: &str, step: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = show(w, entity).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{entity}: never {what}: {v}");
        w.clock.advance(step);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The opening subscription whose activation poll has failed three times: its `describe_instance` call needs an
/// operator. Answers its instance id and the call's id.
async fn failed_poll(w: &World) -> (String, String) {
    let id = w.open("1688000000000901", 3600).await;
    faults(w, 1.0).await;
    let entity = format!("subscription/{id}");
    let v = until(w, &entity, "needed attention", Duration::from_secs(15), |v| v["needs_attention"] == true).await;
    let call = v["pending_calls"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["status"] == "needs_attention"))
        .unwrap_or_else(|| panic!("a call needing attention in {v}"))
        .clone();
    assert_eq!(call["call"], "describe_instance", "{call}");
    assert_eq!(call["attempts"], 3, "out of its three attempts: {call}");
    assert!(call["last_error"].as_str().is_some_and(|e| !e.is_empty()), "the last error is shown: {call}");
    (id, call["id"].as_str().expect("a call id").to_string())
}

#[actix_rt::test]
async fn retry_and_cancel_a_failed_call_with_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let (id, call) = failed_poll(&w).await;
    let entity = format!("subscription/{id}");

    // The needs-attention filter finds it, through the API and the CLI.
    let (_, list) = w.api(Method::GET, "/api/v1/ops/entities?needs_attention=true", Some(OP), None).await;
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "{list}");
    let out = ctl(&w, "alice", &["entities", "list", "--needs-attention"]).await.unwrap();
    assert!(out.contains(&entity), "{out}");
    // Under its cause, with the call and its last error in the next step.
    let v = show(&w, &entity).await;
    let concern = &v["attention"][0];
    assert_eq!(
        (concern["cause"].as_str(), concern["subject"].as_str()),
        (Some("call_out_of_attempts"), Some(call.as_str())),
        "{v}"
    );
    assert!(concern["next_step"].as_str().unwrap().contains("retry or cancel"), "{v}");
    let (_, list) = w.api(Method::GET, "/api/v1/ops/entities?cause=call_out_of_attempts", Some(OP), None).await;
    assert_eq!(list["items"][0]["id"], id.as_str(), "{list}");

    // Refusals change nothing: no token, the service's token, no reason, an unknown action, an unknown call.
    let body = json!({ "reason": "marketplace back", "call_id": call });
    assert_eq!(act(&w, None, &entity, "retry", body.clone()).await.0, 401);
    let (s, v) = act(&w, Some(SVC), &entity, "retry", body.clone()).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = act(&w, Some(OP), &entity, "retry", json!({ "call_id": call })).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("reason_required")), "{v}");
    let (s, v) = act(&w, Some(OP), &entity, "reboot", body.clone()).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("unknown_action")), "{v}");
    let (s, v) = act(&w, Some(OP), &entity, "retry", json!({ "reason": "x", "call_id": "nope" })).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")), "{v}");
    for (body, status, code) in [
        (String::new(), 400, "reason_required"),
        ("{not json".to_string(), 400, "invalid_json"),
        (format!("{{\"reason\": \"{}\"}}", "x".repeat(70 * 1024)), 413, "payload_too_large"),
    ] {
        let r = w
            .http
            .post(format!("{}/api/v1/ops/entities/{entity}/actions/retry", w.service))
            .bearer_auth(OP)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the service answers");
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap_or_default();
        assert_eq!(v["code"], code, "{v}");
    }
    let err = ctl(&w, "alice", &["action", &entity, "retry", "--call", &call]).await.unwrap_err();
    assert!(err.to_string().contains("reason_required"), "{err}");
    assert!(w.audit().await.is_empty(), "refused actions are not audited");
    assert_eq!(show(&w, &entity).await["needs_attention"], true);

    // Retry once the marketplace answers again: the poll succeeds, nothing needs attention any more.
    faults(&w, 0.0).await;
    let out = ctl(&w, "alice", &["action", &entity, "retry", "--reason", "marketplace back", "--call", &call])
        .await
        .expect("retry");
    assert!(out.contains("retry subscription/") && out.contains(&call), "{out}");
    let v = until(&w, &entity, "finished the retried call", Duration::from_millis(0), |v| {
        v["needs_attention"] == false && v["pending_calls"].as_array().is_some_and(|c| c.is_empty())
    })
    .await;
    assert_eq!(v["state"], "opening", "not opened yet in the marketplace: {v}");
    assert_eq!(v["attention"], json!([]), "the retry settled the concern: {v}");
    assert!(v["data"]["polls"].as_u64().unwrap_or(0) >= 1, "the retried poll counted: {v}");

    // Fail it again, then cancel it through the API as operator carol.
    faults(&w, 1.0).await;
    let v =
        until(&w, &entity, "needed attention again", Duration::from_secs(15), |v| v["needs_attention"] == true).await;
    let second = v["pending_calls"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = act(&w, Some(OP), &entity, "cancel", json!({ "reason": "polled by hand instead" })).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["calls"], json!([second]), "{v}");
    let v = show(&w, &entity).await;
    assert_eq!(v["needs_attention"], false, "{v}");
    assert_eq!(v["attention"], json!([]), "the cancel settled the concern: {v}");
    assert!(v["pending_calls"].as_array().is_some_and(|c| c.is_empty()), "{v}");
    assert_eq!(v["state"], "opening", "the workflow goes on waiting for its next poll: {v}");

    // The audit trail, newest first, says who did what and why — through the API and `ctl audit`.
    let trail = w.audit().await;
    let rows: Vec<(&str, &str, &str, &str)> = trail
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default();
            (s("operator"), s("entity"), s("action"), s("reason"))
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("carol", entity.as_str(), "cancel", "polled by hand instead"),
            ("alice", entity.as_str(), "retry", "marketplace back"),
        ]
    );
    let out = ctl(&w, "alice", &["audit"]).await.unwrap();
    assert!(out.lines().next().is_some_and(|h| h.starts_with("AT") && h.contains("OPERATOR")), "{out}");
    assert!(out.contains("carol") && out.contains("polled by hand instead") && out.ends_with("2 actions\n"), "{out}");
    let json: Value =
        serde_json::from_str(&ctl(&w, "alice", &["--output", "json", "audit", "--limit", "1"]).await.unwrap())
            .expect("JSON");
    assert_eq!(json["items"].as_array().map(Vec::len), Some(1), "{json}");

    // The entity's journal says why the call failed: cancelled by carol, with her reason.
    let (_, j) = w.api(Method::GET, &format!("/api/v1/ops/entities/{entity}/journal?limit=1000"), Some(OP), None).await;
    let last = j["items"].as_array().and_then(|i| i.last()).cloned().unwrap_or_default();
    assert_eq!(last["event"], "describe_instance.failed", "{last}");
    assert!(last["notes"][0].as_str().is_some_and(|n| n.contains("carol: polled by hand instead")), "{last}");
    w.shutdown().await;
}

#[actix_rt::test]
async fn pause_holds_timers_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let id = w.open("1688000000000902", 3600).await;
    let entity = format!("subscription/{id}");

    let out = ctl(&w, "alice", &["action", &entity, "pause", "--reason", "investigating"]).await.unwrap();
    assert!(out.contains("pause subscription/"), "{out}");
    let v = show(&w, &entity).await;
    assert_eq!(v["paused"], true, "{v}");
    let polls = v["data"]["polls"].as_u64().unwrap_or(0);

    // Three minutes pass: the activation poll is due, but a paused entity takes no timer.
    w.clock.advance(Duration::from_secs(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = show(&w, &entity).await;
    assert_eq!(v["data"]["polls"].as_u64().unwrap_or(0), polls, "no poll while paused: {v}");
    assert!(
        v["timers"].as_array().unwrap().iter().any(|t| t["remaining_seconds"].as_i64().unwrap_or(1) <= 0),
        "the poll is overdue and waiting: {v}"
    );

    let (s, v) = act(&w, Some(OP), &entity, "resume", json!({ "reason": "all clear" })).await;
    assert_eq!((s, &v["result"]["paused"]), (200, &json!(false)), "{v}");
    until(&w, &entity, "polled after resume", Duration::from_millis(0), |v| {
        v["data"]["polls"].as_u64().unwrap_or(0) > polls
    })
    .await;
    let actions: Vec<String> = w.audit().await.iter().map(|e| e["action"].as_str().unwrap_or("").into()).collect();
    assert_eq!(actions, ["resume", "pause"]);
    // Both are in the entity's journal with the operator and the reason as their cause.
    let (_, j) = w.api(Method::GET, &format!("/api/v1/ops/entities/{entity}/journal?limit=1000"), Some(OP), None).await;
    let causes: Vec<(String, String)> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cause"]["kind"] == "operator")
        .map(|e| {
            (e["cause"]["operator"].as_str().unwrap_or("").into(), e["cause"]["reason"].as_str().unwrap_or("").into())
        })
        .collect();
    assert_eq!(
        causes,
        [("alice".to_string(), "investigating".to_string()), ("carol".into(), "all clear".into())],
        "{j}"
    );
    w.shutdown().await;
}

#[actix_rt::test]
async fn freeze_and_unfreeze_an_organization() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let owner = w.user("olga").await;
    let org = owner.org_id.clone();
    let entity = format!("organization/{org}");
    assert_eq!(w.org_state(&org).await, "unbound");

    // Freeze needs the operator token and a reason; a subscription cannot be frozen.
    assert_eq!(act(&w, Some(SVC), &entity, "freeze", json!({ "reason": "fraud check" })).await.0, 403);
    let sub = w.open("1688000000000903", 3600).await;
    let (s, v) = act(&w, Some(OP), &format!("subscription/{sub}"), "freeze", json!({ "reason": "x" })).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("unknown_action")), "{v}");

    let out = ctl(&w, "alice", &["action", &entity, "freeze", "--reason", "fraud check"]).await.unwrap();
    assert!(out.contains("frozen"), "{out}");
    assert_eq!(w.org_state(&org).await, "frozen");
    let billing = w.billing(&owner, &org).await;
    assert_eq!(billing["status"], "frozen", "{billing}");
    // Freezing a frozen organization is refused as not applicable.
    let (s, v) = act(&w, Some(OP), &entity, "freeze", json!({ "reason": "again" })).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_applicable")), "{v}");

    // Unfrozen without a live payment channel, it gets a new switch window rather than staying unpaid.
    let (s, v) = act(&w, Some(OP), &entity, "unfreeze", json!({ "reason": "cleared" })).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(w.org_state(&org).await, "window");
    let billing = w.billing(&owner, &org).await;
    assert_eq!(billing["status"], "active", "{billing}");
    assert!(billing["switch_deadline"].is_string(), "an hour to bind a subscription: {billing}");

    let trail: Vec<(String, String)> = w
        .audit()
        .await
        .iter()
        .map(|e| (e["action"].as_str().unwrap_or("").into(), e["operator"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(trail, [("unfreeze".to_string(), "carol".to_string()), ("freeze".into(), "alice".into())]);
    w.shutdown().await;
}

const ALICE: &str = "alice-ops-token-0001";

#[actix_rt::test]
async fn a_named_token_is_its_owner_whatever_x_operator_says() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::with_operator_tokens(dir.path(), Some(&format!("alice:{ALICE}"))).await;
    let owner = w.user("olga").await;
    let entity = format!("organization/{}", owner.org_id);

    // `act` says it is carol; the token is Alice's. So is `ctl --operator mallory` with her token.
    let (s, v) = act(&w, Some(ALICE), &entity, "freeze", json!({ "reason": "fraud check" })).await;
    assert_eq!(s, 200, "{v}");
    let argv = ["ctl", "--url", &w.service, "--token", ALICE, "--operator", "mallory"];
    let args = Cli::try_parse_from(argv.iter().chain(&["action", &entity, "unfreeze", "--reason", "cleared"]))
        .expect("ctl parses")
        .args;
    ctl::run(args, &mut Vec::new()).await.expect("unfreeze");
    // The shared token still goes by X-Operator.
    let (s, v) = act(&w, Some(OP), &entity, "freeze", json!({ "reason": "again" })).await;
    assert_eq!(s, 200, "{v}");

    let trail = w.audit_trail().await;
    let row = |o: &str, a: &str| (o.to_string(), a.to_string());
    assert_eq!(trail, [row("carol", "freeze"), row("alice", "unfreeze"), row("alice", "freeze")]);
    let (_, j) =
        w.api(Method::GET, &format!("/api/v1/ops/entities/{entity}/journal?limit=1000"), Some(ALICE), None).await;
    let causes: Vec<&str> = j["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a journal: {j}"))
        .iter()
        .filter(|e| e["cause"]["kind"] == "operator")
        .filter_map(|e| e["cause"]["operator"].as_str())
        .collect();
    assert_eq!(causes, ["alice", "alice", "carol"], "{j}");

    // A named token is an operator's: not the service's, and not a service token's lookalike.
    let (s, v) = w.api(Method::POST, "/api/v1/usage", Some(ALICE), Some(json!({}))).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, _) = act(&w, Some("alice-ops-token-0002"), &entity, "freeze", json!({ "reason": "x" })).await;
    assert_eq!(s, 401);
    w.shutdown().await;
}

/// Where the alert webhook test's receiver listens (a `World` tweak is a plain function: it reads it from here).
static HOOK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The alert webhook: holding every push is sent as a firing `MarketflowPushesHeld` (retried after the receiver's
/// first answer, a 500), releasing them as its resolution.
#[actix_rt::test]
async fn the_alert_webhook_sends_a_condition_when_it_starts_and_when_it_ends_and_retries() {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let server = actix_web::HttpServer::new(move || {
        let sink = sink.clone();
        actix_web::App::new().route(
            "/hook",
            actix_web::web::post().to(move |body: actix_web::web::Json<Value>| {
                let sink = sink.clone();
                async move {
                    let mut g = sink.lock().unwrap();
                    g.push(body.into_inner());
                    // The first delivery fails: the watcher must try again.
                    if g.len() == 1 {
                        actix_web::HttpResponse::InternalServerError().finish()
                    } else {
                        actix_web::HttpResponse::NoContent().finish()
                    }
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    HOOK.set(format!("http://127.0.0.1:{port}/hook")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = World::with_config(dir.path(), |c| {
        c.alert_webhook = Some(marketflow::config::Secret::new(HOOK.get().unwrap().clone()));
        c.alert_interval = Duration::from_millis(50);
    })
    .await;
    let wait_for = |n: usize| {
        let got = got.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let all = got.lock().unwrap().clone();
                if all.len() >= n {
                    return all;
                }
                assert!(Instant::now() < deadline, "the receiver got {all:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (st, v) = w.api(Method::POST, "/api/v1/ops/pushes/hold", Some(OP), Some(json!({"reason": "incident 7"}))).await;
    assert_eq!(st, 200, "{v}");
    let all = wait_for(2).await;
    assert_eq!(all[0], all[1], "the same message again after the 500");
    let firing = &all[1]["alerts"][0];
    assert_eq!((firing["status"].as_str(), firing["alert"].as_str()), (Some("firing"), Some("MarketflowPushesHeld")));
    assert!(firing["summary"].as_str().unwrap().contains("incident 7"), "{firing}");
    assert_eq!(firing["runbook_url"], "docs/runbook.md#marketflowpushesheld");
    let (st, v) = w.api(Method::POST, "/api/v1/ops/pushes/release", Some(OP), Some(json!({"reason": "over"}))).await;
    assert_eq!(st, 200, "{v}");
    let all = wait_for(3).await;
    let resolved = &all[2]["alerts"][0];
    assert_eq!(
        (resolved["status"].as_str(), resolved["key"].as_str()),
        (Some("resolved"), Some("MarketflowPushesHeld"))
    );
    w.shutdown().await;
    handle.stop(true).await;
}
