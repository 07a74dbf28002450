//! `marketflow demo` walks the whole lifecycle in under two minutes, and its timeline is the journals' story in
//! order: activation, binding, an hour billed, the account switch, arrears, resubscription.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_walks_the_lifecycle_in_under_two_minutes() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_marketflow"))
        .args(["demo", "--exit", "--listen", "127.0.0.1:0", "--simulator-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    assert!(stdout.contains("an hour of 1 CU billed: 1250 units pushed"), "{stdout}");
    let expected = [
        "new → opening  (create)",
        "opening → active",
        "unbound → bound  (bind_request)",
        "(push_metering_data.ok)  pushed",
        "active → released  (release)",
        "bound → window  (channel_released)",
        "window → bound  (bind_request)  account switch: 1000000000000001 → 1000000000000002",
        "active → expired  (expire)",
        "bound → frozen  (channel_suspended)",
        "frozen → bound  (bind_request)",
    ];
    let mut at = 0;
    for e in expected {
        let found = stdout[at..].find(e).map(|i| i + at);
        let Some(i) = found else { panic!("`{e}` (in order) in:\n{stdout}") };
        at = i;
    }
    assert!(stdout.contains("paid by Aliyun account \"1000000000000003\""), "{stdout}");
}
