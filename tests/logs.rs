//! Secrets and passwords never reach the logs: a real service process runs with debug logging through
//! registration, login, SPI calls, a 免登 link and a refused token, and its whole log is searched.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use marketflow::aliyun::token::spi_token;
use serde_json::json;

const SECRETS: [&str; 5] = [
    "isv-key-never-logged",
    "ak-secret-never-logged",
    "operator-token-never-logged",
    "service-token-never-logged",
    "password-never-logged",
];

#[actix_rt::test]
async fn no_secret_or_password_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketflow"))
        .arg("serve")
        .env("RUST_LOG", "debug")
        .env("MARKETFLOW_LOG_FORMAT", "json")
        .env("MARKETFLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("MARKETFLOW_DATA_DIR", dir.path().join("data"))
        .env("MARKETFLOW_PUBLIC_URL", &url)
        .env("MARKETFLOW_ALIYUN_ISV_KEY", SECRETS[0])
        .env("MARKETFLOW_ALIYUN_ENDPOINT", "http://127.0.0.1:9")
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", "ak-id")
        .env("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", SECRETS[1])
        .env("MARKETFLOW_OPERATOR_TOKEN", SECRETS[2])
        .env("MARKETFLOW_SERVICE_TOKEN", SECRETS[3])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reg = json!({"email": "lou@example.com", "password": SECRETS[4], "name": "Lou"});
    assert_eq!(http.post(format!("{url}/api/v1/accounts")).json(&reg).send().await.unwrap().status(), 201);
    let login: serde_json::Value = http
        .post(format!("{url}/api/v1/sessions"))
        .json(&json!({"email": "lou@example.com", "password": SECRETS[4]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = login["token"].as_str().unwrap().to_string();
    http.post(format!("{url}/api/v1/sessions"))
        .json(&json!({"email": "lou@example.com", "password": "wrong-password-x"}))
        .send()
        .await
        .unwrap();
    http.get(format!("{url}/api/v1/orgs")).bearer_auth(&session).send().await.unwrap();
    http.get(format!("{url}/api/v1/ops/timers")).bearer_auth(SECRETS[2]).send().await.unwrap();
    http.get(format!("{url}/api/v1/ops/timers")).bearer_auth(SECRETS[3]).send().await.unwrap();
    let mut p = vec![
        ("action".to_string(), "createInstance".to_string()),
        ("aliUid".into(), "123".into()),
        ("orderBizId".into(), "555".into()),
        ("orderId".into(), "556".into()),
        ("productCode".into(), "cmgj00063418".into()),
        ("skuId".into(), "payg".into()),
        ("trial".into(), "false".into()),
    ];
    let token = spi_token(&p, SECRETS[0]);
    p.push(("token".into(), token.clone()));
    let q: String = p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    assert_eq!(http.get(format!("{url}/aliyun/spi?{q}")).send().await.unwrap().status(), 200);
    http.get(format!("{url}/aliyun/spi?{}", q.replace(&token, &"0".repeat(32)))).send().await.unwrap();
    http.get(format!("{url}/aliyun/sso?action=verify&instanceId=555&timeStamp=2026-01-01%2000:00:00&token=abc"))
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.len() > 1000, "debug logging produced a log: {} bytes", text.len());
    for s in SECRETS.iter().chain([session.as_str(), token.as_str()].iter()) {
        assert!(!text.contains(s), "`{s}` appears in the log");
    }
}
