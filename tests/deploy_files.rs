//! The monitoring that ships in `deploy/`: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, Debian's `prometheus` package, installed by `scripts/test-deps.sh`), every series they and
//! the Grafana dashboard read is one `/metrics` serves, and every alert's runbook link leads to a section of
//! `docs/runbook.md`.

use crate::world;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use world::*;

/// The `marketflow_*` series an expression reads (histograms by their family name).
fn series(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("marketflow_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(name.to_string());
        rest = &tail[end..];
    }
    out
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian's `prometheus` package) is needed: run scripts/test-deps.sh ({e})")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[actix_rt::test]
async fn alerts_pass_promtool_read_served_series_and_link_their_runbook() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 13 rules found"));
    assert!(promtool(&["test", "rules", "alerts.test.yml"]).contains("SUCCESS"));

    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/marketflow.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");

    // Every series read is served (a renamed metric would leave an alert silent forever).
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let metrics = w.http.get(format!("{}/metrics", w.service)).send().await.unwrap().text().await.unwrap();
    let served = series(&metrics);
    let mut read = series(&alerts);
    for e in &exprs {
        read.extend(series(e));
    }
    let missing: Vec<_> = read.difference(&served).collect();
    assert!(missing.is_empty(), "read by deploy/ but not served by /metrics: {missing:?}");

    // Every alert links a section of the runbook that exists (GitHub's anchors: the heading in lower case).
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_lowercase()).collect();
    let mut alert_names = 0;
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert_names += 1;
            let link = format!("docs/runbook.md#{}", name.to_lowercase());
            assert!(alerts.contains(&link), "{name} links no runbook section");
            assert!(anchors.contains(&name.to_lowercase()), "docs/runbook.md has no section {name}");
        }
    }
    assert_eq!(alert_names, 13);
    w.shutdown().await;
}
