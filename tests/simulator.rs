//! Black-box tests of the marketplace simulator and the Market API client against each other.
//!
//! The simulator runs on port 0 with a manual clock; a tiny fake SPI receiver (an actix-web server
//! on port 0) plays the service: it checks every call's MD5 token with the same function the
//! service uses and records what it received. No test sleeps through service minutes: the clock
//! is advanced, and real waits are short polls.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, TimeZone, Utc};
use marketflow::aliyun::client::{Error as ClientError, MarketClient};
use marketflow::aliyun::encoding::{encode_query, parse_form};
use marketflow::aliyun::market::{
    InstanceStatus, LongIdString, MeteringEntity, MeteringRecord, PushMeteringDataRequest, VERSION,
};
use marketflow::aliyun::simulator::{self, RunningSimulator, SimulatorConfig};
use marketflow::aliyun::token::verify_spi_token;
use marketflow::aliyun::{sign_rpc, sign_v3};
use marketflow::clock::{Clock, ManualClock};
use marketflow::config::Secret;
use serde_json::{json, Value};

const ISV_KEY: &str = "test-isv-key";
const AK_ID: &str = "test-ak";
const AK_SECRET: &str = "test-ak-secret";
const PRODUCT: &str = "cmgj00063418";
const ASSIST: &str = "cmgj00063418-Frequency-1";

/// One SPI call as the fake service received it.
#[derive(Debug, Clone)]
struct SpiCall {
    params: BTreeMap<String, String>,
    token_ok: bool,
}

impl SpiCall {
    fn action(&self) -> &str {
        self.params.get("action").map(String::as_str).unwrap_or_default()
    }
    fn get(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// How the fake service answers.
#[derive(Debug, Default)]
struct Behaviour {
    /// Answer createInstance with instanceId "0" this many times first.
    create_zero_times: u32,
    /// Answer orderPay with `{"success": false}`.
    fail_order_pay: bool,
}

#[derive(Default)]
struct Receiver {
    calls: Mutex<Vec<SpiCall>>,
    behaviour: Mutex<Behaviour>,
    base_url: Mutex<String>,
}

async fn spi_endpoint(req: HttpRequest, body: web::Bytes, rx: web::Data<Receiver>) -> HttpResponse {
    let mut params = parse_form(req.query_string()).unwrap_or_default();
    if !body.is_empty() {
        params.extend(parse_form(std::str::from_utf8(&body).unwrap_or_default()).unwrap_or_default());
    }
    let token_ok = verify_spi_token(&params, ISV_KEY).is_ok();
    let params: BTreeMap<String, String> = params.into_iter().collect();
    let call = SpiCall { params, token_ok };
    rx.calls.lock().unwrap().push(call.clone());
    if !token_ok {
        return HttpResponse::Unauthorized().json(json!({"success": false, "message": "bad token"}));
    }
    match call.action() {
        "createInstance" => {
            let mut b = rx.behaviour.lock().unwrap();
            if b.create_zero_times > 0 {
                b.create_zero_times -= 1;
                return HttpResponse::Ok().json(json!({"instanceId": "0"}));
            }
            let auth_url = format!("{}/aliyun/sso", rx.base_url.lock().unwrap());
            HttpResponse::Ok().json(json!({
                "instanceId": call.get("orderBizId"),
                "appInfo": {"authUrl": auth_url, "frontEndUrl": "https://cloud.zilliz.com.cn"},
            }))
        }
        "orderPay" if rx.behaviour.lock().unwrap().fail_order_pay => {
            HttpResponse::Ok().json(json!({"success": false, "message": "not today"}))
        }
        _ => HttpResponse::Ok().json(json!({"success": true})),
    }
}

struct Harness {
    clock: ManualClock,
    /// How the simulator was started, to start it again ([`Harness::restart`]).
    config: SimulatorConfig,
    sim: Option<RunningSimulator>,
    sim_url: String,
    receiver: Arc<Receiver>,
    receiver_handle: actix_web::dev::ServerHandle,
    http: reqwest::Client,
}

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap()
}

async fn harness() -> Harness {
    harness_with(Behaviour::default()).await
}

async fn harness_with(behaviour: Behaviour) -> Harness {
    harness_kept(behaviour, None).await
}

async fn harness_kept(behaviour: Behaviour, state_file: Option<std::path::PathBuf>) -> Harness {
    let receiver = Arc::new(Receiver { behaviour: Mutex::new(behaviour), ..Receiver::default() });
    let data = web::Data::from(receiver.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let service_url = format!("http://127.0.0.1:{port}");
    *receiver.base_url.lock().unwrap() = service_url.clone();
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).service(
            web::resource("/aliyun/spi").route(web::get().to(spi_endpoint)).route(web::post().to(spi_endpoint)),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let receiver_handle = server.handle();
    actix_rt::spawn(server);

    let clock = ManualClock::new(start_time());
    let config = SimulatorConfig {
        activation_delay: Some((Duration::from_secs(60), Duration::from_secs(300))),
        seed: Some(42),
        product_code: PRODUCT.into(),
        ..SimulatorConfig::new(
            service_url,
            Secret::new(ISV_KEY),
            AK_ID,
            Secret::new(AK_SECRET),
            Arc::new(clock.clone()),
        )
    };
    let config = SimulatorConfig { state_file, ..config };
    let sim = simulator::start(config.clone()).await.expect("the simulator starts");
    let sim_url = sim.base_url().to_string();
    Harness { clock, config, sim: Some(sim), sim_url, receiver, receiver_handle, http: reqwest::Client::new() }
}

/// Polls `f` every 20 ms (real time) until it yields, for at most 10 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

impl Harness {
    /// Stops the simulator and starts it again on the same port, clock and state file.
    async fn restart(&mut self) {
        let sim = self.sim.take().expect("running");
        let port = sim.port();
        sim.stop().await.expect("stops");
        let config = SimulatorConfig { listen: format!("127.0.0.1:{port}"), ..self.config.clone() };
        self.sim = Some(simulator::start(config).await.expect("starts again"));
    }

    fn client(&self) -> MarketClient {
        self.client_with(AK_ID, AK_SECRET)
    }

    fn client_with(&self, ak: &str, secret: &str) -> MarketClient {
        MarketClient::new(&self.sim_url, ak, Secret::new(secret), Duration::from_secs(5)).unwrap()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.sim_url);
        let req = match method {
            "POST" => self.http.post(url).json(&body.unwrap_or(json!({}))),
            _ => self.http.get(url),
        };
        let resp = req.send().await.expect("the simulator answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn calls(&self) -> Vec<SpiCall> {
        self.receiver.calls.lock().unwrap().clone()
    }

    fn calls_of(&self, action: &str) -> Vec<SpiCall> {
        self.calls().into_iter().filter(|c| c.action() == action).collect()
    }

    async fn wait_for_calls(&self, action: &str, n: usize) -> Vec<SpiCall> {
        eventually(&format!("{n} {action} call(s)"), || async move {
            let calls = self.calls_of(action);
            (calls.len() >= n).then_some(calls)
        })
        .await
    }

    async fn instance(&self, id: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/sim/instances/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        eventually(&format!("{id} to be {status}"), || async move {
            let i = self.instance(id).await;
            (i["status"] == status).then_some(i)
        })
        .await
    }

    /// Opens an instance and waits until the service answered createInstance.
    async fn open(&self, body: Value) -> String {
        let (status, created) = self.call("POST", "/sim/instances", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["status"], "OPENING");
        let id = created["instance_id"].as_str().unwrap().to_string();
        eventually("createInstance to succeed", || async {
            let i = self.instance(&id).await;
            i["service_instance_id"].is_string().then_some(())
        })
        .await;
        id
    }

    async fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    async fn stop(mut self) {
        if let Some(sim) = self.sim.take() {
            sim.stop().await.expect("the simulator stops cleanly");
        }
        self.receiver_handle.stop(true).await;
    }
}

fn record(instance: &str, start: DateTime<Utc>, end: DateTime<Utc>, value: u64) -> MeteringRecord {
    MeteringRecord {
        instance_id: LongIdString(instance.into()),
        start_time: start.timestamp(),
        end_time: end.timestamp(),
        entities: vec![MeteringEntity { key: "Frequency".into(), value, metering_assist: Some(ASSIST.into()) }],
        serial_no: None,
    }
}

fn api_code(e: &ClientError) -> &str {
    e.code().unwrap_or("(none)")
}

#[actix_rt::test]
async fn open_activate_expire_topup_close_send_the_right_spi_calls() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "1234567890", "activation_after_seconds": 120})).await;

    let create = h.wait_for_calls("createInstance", 1).await;
    let c = &create[0];
    assert!(c.token_ok, "createInstance token must verify: {c:?}");
    assert_eq!(c.get("aliUid"), "1234567890");
    assert_eq!(c.get("orderBizId"), id);
    assert_eq!(c.get("productCode"), PRODUCT);
    assert_eq!(c.get("skuId"), simulator::DEFAULT_SKU);
    assert_eq!(c.get("trial"), "false");
    assert!(!c.get("orderId").is_empty());

    // Not before the delay, on the simulator's clock.
    h.advance(119).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.instance(&id).await["status"], "OPENING");
    h.advance(1).await;
    let opened = h.wait_for_status(&id, "OPENED").await;
    assert_eq!(opened["opened_at"], "2026-11-27T08:02:00Z");

    // orderPay follows the activation.
    let pay = h.wait_for_calls("orderPay", 1).await;
    assert!(pay[0].token_ok);
    assert_eq!(pay[0].get("orderBizId"), id);
    assert_eq!(pay[0].get("aliUid"), "1234567890");
    assert!(!pay[0].get("requestId").is_empty());

    // Out of balance, then topped up, then closed.
    let (s, body) = h.call("POST", &format!("/sim/instances/{id}/expire"), None).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("EXPIRED")));
    let expired = h.wait_for_calls("expiredInstance", 1).await;
    assert!(expired[0].token_ok);
    assert_eq!(expired[0].get("instanceId"), id);

    let (s, body) = h.call("POST", &format!("/sim/instances/{id}/topup"), None).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("OPENED")));
    let resumed = h.wait_for_calls("resumeInstance", 1).await;
    assert!(resumed[0].token_ok);
    assert_eq!(resumed[0].get("instanceId"), id);
    assert_eq!(resumed[0].get("productCode"), PRODUCT);
    assert_eq!(resumed[0].get("skuId"), simulator::DEFAULT_SKU);

    let (s, body) = h.call("POST", &format!("/sim/instances/{id}/close"), None).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("CLOSED")));
    let released = h.wait_for_calls("releaseInstance", 1).await;
    assert!(released[0].token_ok);
    assert_eq!(released[0].get("instanceId"), id);
    assert_eq!(released[0].get("isRefund"), "false");

    // In order, one each.
    let actions: Vec<String> = h.calls().iter().map(|c| c.action().to_string()).collect();
    assert_eq!(actions, ["createInstance", "orderPay", "expiredInstance", "resumeInstance", "releaseInstance"]);

    // Impossible moves are refused with a code.
    for action in ["close", "expire", "topup"] {
        let (s, body) = h.call("POST", &format!("/sim/instances/{id}/{action}"), None).await;
        assert_eq!((s, body["code"].as_str()), (409, Some("invalid_state")), "{action}: {body}");
    }
    let timeline = h.instance(&id).await["timeline"].as_array().unwrap().clone();
    let events: Vec<&str> = timeline.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in
        ["opened", "spi.createInstance.ok", "activated", "expired", "resumed", "closed", "spi.releaseInstance.ok"]
    {
        assert!(events.contains(&want), "{want} missing from {events:?}");
    }
    let (s, all) = h.call("GET", "/sim/instances", None).await;
    assert_eq!((s, all["instances"].as_array().map(Vec::len)), (200, Some(1)));
    h.stop().await;
}

#[actix_rt::test]
async fn random_activation_delay_is_within_the_configured_range() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "42", "order_pay": false})).await;
    let i = h.instance(&id).await;
    let created = DateTime::parse_from_rfc3339(i["created_at"].as_str().unwrap()).unwrap();
    let due = DateTime::parse_from_rfc3339(i["activation_due"].as_str().unwrap()).unwrap();
    let delay = (due - created).num_seconds();
    assert!((60..=300).contains(&delay), "delay {delay}s is outside 1–5 min");
    h.advance(59).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.instance(&id).await["status"], "OPENING");
    h.advance(241).await;
    h.wait_for_status(&id, "OPENED").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(h.calls_of("orderPay").is_empty(), "order_pay=false sends no orderPay");
    h.stop().await;
}

#[actix_rt::test]
async fn create_instance_is_repeated_until_the_service_gives_an_instance_id() {
    let h = harness_with(Behaviour { create_zero_times: 3, ..Behaviour::default() }).await;
    let id = h.open(json!({"ali_uid": "42"})).await;
    let calls = h.calls_of("createInstance");
    assert_eq!(calls.len(), 4, "three answers of instanceId 0, then a real one");
    assert!(calls.iter().all(|c| c.token_ok && c.params == calls[0].params), "every repeat is the same call");
    let i = h.instance(&id).await;
    assert_eq!(i["service_instance_id"], id.as_str());
    let failed = i["timeline"].as_array().unwrap().iter().filter(|e| e["event"] == "spi.createInstance.failed").count();
    assert_eq!(failed, 3);
    h.stop().await;
}

#[actix_rt::test]
async fn market_client_describes_instances_and_pushes_metering() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "1234567890", "activation_after_seconds": 60})).await;
    let client = h.client();

    let d = client.describe_instance(&id).await.expect("DescribeInstance succeeds");
    assert_eq!(d.status, Some(InstanceStatus::Opening));
    assert_eq!(d.instance_id.map(|i| i.0), Some(id.clone()));
    assert_eq!(d.product_code.as_deref(), Some(PRODUCT));
    assert!(d.request_id.is_some());
    assert!(d.app_json.unwrap_or_default().contains("/aliyun/sso"));

    h.advance(60).await;
    h.wait_for_status(&id, "OPENED").await;
    assert_eq!(client.describe_instance(&id).await.unwrap().status, Some(InstanceStatus::Opened));

    // Usage 08:00–09:00, pushed at 09:01.
    h.advance(3600).await;
    let hour = start_time();
    let pushed = client
        .push_metering_data(&[record(&id, hour, hour + chrono::TimeDelta::hours(1), 1250)])
        .await
        .expect("a valid push is accepted");
    assert!(pushed.success);
    let (s, m) = h.call("GET", &format!("/sim/metering?instance_id={id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(m["records"][0]["request_id"], pushed.request_id.as_str());
    assert_eq!(m["records"][0]["entities"][0]["value"], 1250);
    assert_eq!(m["totals"]["Frequency"], 1250);

    // A second call for the instance within 60 s of the simulator's clock is throttled.
    let next = record(&id, hour + chrono::TimeDelta::hours(1), hour + chrono::TimeDelta::hours(2), 5);
    let e = client.push_metering_data(std::slice::from_ref(&next)).await.unwrap_err();
    assert_eq!(api_code(&e), "Throttling.User", "{e}");
    assert!(e.is_retryable());
    h.advance(60).await;
    client.push_metering_data(&[next]).await.expect("accepted 60 s later");

    // What the rules forbid is refused by the marketplace with a code (sent unchecked via `call`).
    h.advance(60).await;
    let too_short = record(&id, hour, hour + chrono::TimeDelta::minutes(5), 1);
    let e = client.call(&PushMeteringDataRequest { metering: vec![too_short.clone()] }).await.unwrap_err();
    assert_eq!((api_code(&e), e.http_status()), ("InvalidMetering.TimeWindow", Some(400)), "{e}");
    assert!(!e.is_retryable());
    assert!(e.request_id().is_some());
    let too_late = record(&id, hour - chrono::TimeDelta::hours(3), hour - chrono::TimeDelta::hours(2), 1);
    let e = client.push_metering_data(&[too_late]).await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidMetering.Expired", "{e}");
    let unknown = record("999999", hour, hour + chrono::TimeDelta::hours(1), 1);
    let e = client.push_metering_data(&[unknown]).await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidMetering.InstanceNotFound", "{e}");
    let mut other_product = record(&id, hour, hour + chrono::TimeDelta::hours(1), 1);
    other_product.entities[0].metering_assist = Some("cmgj00000001-Frequency-1".into());
    let e = client.push_metering_data(&[other_product]).await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidMetering.MeteringAssit", "{e}");
    let e =
        client.call(&PushMeteringDataRequest { metering: vec![record(&id, hour, hour, 1); 101] }).await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidMetering.TooManyRecords", "{e}");
    // The client's own check stops an invalid batch before it is sent.
    let e = client.push_metering_data(&[too_short]).await.unwrap_err();
    assert_eq!(e.kind(), "invalid_request", "{e}");

    let (_, m) = h.call("GET", &format!("/sim/metering?instance_id={id}"), None).await;
    assert_eq!(m["records"].as_array().map(Vec::len), Some(2), "refused pushes are not recorded");
    assert_eq!(m["duplicates"], 0);

    let e = client.describe_instance("404404").await.unwrap_err();
    assert_eq!((api_code(&e), e.http_status()), ("InvalidInstanceId.NotFound", Some(404)));
    h.stop().await;
}

#[actix_rt::test]
async fn wrong_credentials_and_reused_nonces_are_refused() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "42"})).await;

    let e = h.client_with(AK_ID, "not-the-secret").describe_instance(&id).await.unwrap_err();
    assert_eq!((api_code(&e), e.http_status()), ("SignatureDoesNotMatch", Some(400)), "{e}");
    assert!(!e.is_retryable());
    assert!(e.request_id().is_some());
    let e = h.client_with("someone-else", AK_SECRET).describe_instance(&id).await.unwrap_err();
    assert_eq!((api_code(&e), e.http_status()), ("InvalidAccessKeyId.NotFound", Some(404)), "{e}");

    // The same signed request twice: the second is a replay.
    let query: BTreeMap<String, String> = [("InstanceId".to_string(), id.clone())].into();
    let host = h.sim_url.trim_start_matches("http://").to_string();
    let headers = sign_v3::sign_rpc_call(
        &sign_v3::RpcCall {
            method: "POST",
            host: &host,
            action: "DescribeInstance",
            version: VERSION,
            query: &query,
            body: b"",
            content_type: None,
            date: Utc::now(),
            nonce: "fixed-nonce-1",
            security_token: None,
        },
        AK_ID,
        AK_SECRET,
    );
    let url = format!("{}/?{}", h.sim_url, encode_query(query.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let send = || {
        let mut req = h.http.post(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = send().await.unwrap();
    assert_eq!(second.status().as_u16(), 400);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["Code"], "SignatureNonceUsed");
    for field in ["RequestId", "HostId", "Message", "Recommend"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }

    // The legacy RPC signature (HMAC-SHA1, everything in the query) is accepted too.
    let mut params: BTreeMap<String, String> = [("InstanceId".to_string(), id.clone())].into();
    sign_rpc::sign_params(
        "GET",
        &mut params,
        &sign_rpc::CommonParams {
            action: "DescribeInstance",
            version: VERSION,
            access_key_id: AK_ID,
            timestamp: Utc::now(),
            nonce: "rpc-nonce-1",
            security_token: None,
        },
        AK_SECRET,
    );
    let rpc_url = format!("{}/?{}", h.sim_url, encode_query(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let rpc = h.http.get(&rpc_url).send().await.unwrap();
    assert_eq!(rpc.status().as_u16(), 200);
    let body: Value = rpc.json().await.unwrap();
    assert_eq!(body["InstanceId"].to_string().trim_matches('"'), id);
    let replay = h.http.get(&rpc_url).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 400);

    // Unsigned calls and unknown actions get gateway errors.
    let (s, body) = h.call("POST", "/", None).await;
    assert_eq!((s, body["Code"].as_str()), (400, Some("IncompleteSignature")));
    h.stop().await;
}

#[actix_rt::test]
async fn sso_url_carries_a_valid_token() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "42"})).await;
    h.advance(7 * 3600).await;
    let (s, sso) = h.call("GET", &format!("/sim/instances/{id}/sso-url"), None).await;
    assert_eq!(s, 200, "{sso}");
    let url = sso["url"].as_str().unwrap();
    let auth_url = h.instance(&id).await["auth_url"].as_str().unwrap().to_string();
    let (base, query) = url.split_once('?').unwrap();
    assert_eq!(base, auth_url);
    assert!(!query.contains(' '), "the query is URL-encoded: {query}");
    let params = parse_form(query).unwrap();
    assert!(verify_spi_token(&params, ISV_KEY).is_ok());
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("action"), Some("verify"));
    assert_eq!(get("instanceId"), Some(id.as_str()));
    // 15:00 UTC on the simulator's clock is 23:00 in Beijing.
    assert_eq!(get("timeStamp"), Some("2026-11-27 23:00:00"));
    assert_eq!(sso["time_stamp"], "2026-11-27 23:00:00");
    h.stop().await;
}

#[actix_rt::test]
async fn failed_order_pay_is_listed_until_confirmed() {
    let h = harness_with(Behaviour { fail_order_pay: true, ..Behaviour::default() }).await;
    let id = h.open(json!({"ali_uid": "42", "activation_after_seconds": 0})).await;
    h.wait_for_status(&id, "OPENED").await;
    let client = h.client();
    let list = eventually("a failed notification", || async {
        let r = client.describe_failed_notifications(1, 10).await.ok()?;
        (r.total_count == 1).then_some(r)
    })
    .await;
    assert_eq!(h.calls_of("orderPay").len(), 5, "five attempts, then given up");
    let n = &list.notification_list[0];
    assert_eq!(n.action, "orderPay");
    assert!(n.message.contains(&id), "{}", n.message);
    assert!(!n.message.contains("token"));
    client.confirm_notification(&n.notification_request_id).await.expect("confirmed");
    client.confirm_notification(&n.notification_request_id).await.expect("confirming twice is fine");
    assert_eq!(client.describe_failed_notifications(1, 10).await.unwrap().total_count, 0);
    let e = client.confirm_notification("no-such-notification").await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidNotificationRequestId.NotFound");
    let e = client.describe_failed_notifications(0, 10).await.unwrap_err();
    assert_eq!(api_code(&e), "InvalidPageNumber");
    h.stop().await;
}

#[actix_rt::test]
async fn injected_faults_reach_the_client_and_the_service() {
    let h = harness().await;
    let id = h.open(json!({"ali_uid": "42"})).await;
    let client = h.client();

    let (s, f) = h.call("POST", "/sim/faults", Some(json!({"openapi_error_rate": 1.0, "seed": 1}))).await;
    assert_eq!((s, f["openapi_error_rate"].as_f64()), (200, Some(1.0)));
    let e = client.describe_instance(&id).await.unwrap_err();
    assert_eq!((api_code(&e), e.http_status()), ("ServiceUnavailable", Some(503)), "{e}");
    assert!(e.is_retryable());

    h.call("POST", "/sim/faults", Some(json!({"openapi_slow_ms": 1500}))).await;
    let impatient = MarketClient::new(&h.sim_url, AK_ID, Secret::new(AK_SECRET), Duration::from_millis(300)).unwrap();
    let e = impatient.describe_instance(&id).await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(e.is_retryable() && e.outcome_unknown());

    let (s, _) = h.call("POST", "/sim/faults", Some(json!({"spi_duplicate_rate": 1.0}))).await;
    assert_eq!(s, 200);
    assert!(client.describe_instance(&id).await.is_ok(), "slowness is off again");
    h.call("POST", &format!("/sim/instances/{id}/close"), None).await;
    let released = h.wait_for_calls("releaseInstance", 2).await;
    assert_eq!(released[0].params, released[1].params, "a duplicate is the same call again");

    let (s, body) = h.call("POST", "/sim/faults", Some(json!({"openapi_error_rate": 2}))).await;
    assert_eq!((s, body["code"].as_str()), (400, Some("invalid_parameter")));
    let (s, body) = h.call("POST", "/sim/faults", Some(json!({"typo": true}))).await;
    assert_eq!((s, body["code"].as_str()), (400, Some("invalid_json")));

    // Reordering: calls made together may arrive in any order, but all arrive.
    h.call("POST", "/sim/faults", Some(json!({"spi_reorder": true, "seed": 3}))).await;
    let other = h.open(json!({"ali_uid": "43", "activation_after_seconds": 0, "order_pay": false})).await;
    h.wait_for_status(&other, "OPENED").await;
    h.call("POST", &format!("/sim/instances/{other}/expire"), None).await;
    h.call("POST", &format!("/sim/instances/{other}/topup"), None).await;
    h.call("POST", &format!("/sim/instances/{other}/close"), None).await;
    for action in ["expiredInstance", "resumeInstance"] {
        h.wait_for_calls(action, 1).await;
    }
    h.wait_for_calls("releaseInstance", 3).await;
    h.stop().await;
}

#[actix_rt::test]
async fn bad_buyer_input_gets_clear_errors() {
    let h = harness().await;
    let cases = [
        (json!({}), 400, "missing_parameter"),
        (json!({"ali_uid": "a b"}), 400, "invalid_parameter"),
        (json!({"ali_uid": "1", "sku_id": ""}), 400, "invalid_parameter"),
        (json!({"ali_uid": "1", "activation_after_seconds": 99_999_999}), 400, "invalid_parameter"),
        (json!({"ali_uid": "1", "colour": "red"}), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let (s, b) = h.call("POST", "/sim/instances", Some(body.clone())).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}: {b}");
    }
    let raw = h.http.post(format!("{}/sim/instances", h.sim_url)).body("{not json").send().await.unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    for path in ["/sim/instances/nope", "/sim/instances/nope/sso-url", "/sim/metering?instance_id=nope", "/sim/nothing"]
    {
        let (s, b) = h.call("GET", path, None).await;
        assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{path}");
    }
    let (s, b) = h.call("POST", "/sim/instances/nope/close", None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, health) = h.call("GET", "/healthz", None).await;
    assert_eq!((s, health["now"].as_str()), (200, Some("2026-11-27T08:00:00+00:00")));
    assert_eq!(h.clock.now(), start_time());
    h.stop().await;
}

/// `serve --dev` keeps the marketplace in its data directory: stopped and started again, the simulator still
/// knows an opened instance (DescribeInstance says OPENED, the 免登 link is signed as before) and one still
/// opening opens when its time comes.
#[actix_rt::test]
async fn a_kept_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dev-marketplace.json");
    let mut h = harness_kept(Behaviour::default(), Some(file.clone())).await;
    let opened = h.open(json!({"ali_uid": "1234567890", "activation_after_seconds": 60})).await;
    h.wait_for_calls("createInstance", 1).await;
    h.advance(60).await;
    h.wait_for_status(&opened, "OPENED").await;
    let opening = h.open(json!({"ali_uid": "1234567891", "activation_after_seconds": 600})).await;
    h.wait_for_calls("createInstance", 2).await;
    let (_, before) = h.call("GET", &format!("/sim/instances/{opened}/sso-url"), None).await;

    h.restart().await;
    assert!(file.exists(), "the state was written to {}", file.display());
    let client = h.client();
    assert_eq!(client.describe_instance(&opened).await.unwrap().status, Some(InstanceStatus::Opened));
    assert_eq!(h.instance(&opening).await["status"], "OPENING");
    let (_, after) = h.call("GET", &format!("/sim/instances/{opened}/sso-url"), None).await;
    assert_eq!(after["instance_id"], before["instance_id"], "{before} {after}");
    h.advance(600).await;
    h.wait_for_status(&opening, "OPENED").await;
}
