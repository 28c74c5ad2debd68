//! What operators deploy, checked against the running services:
//! `deploy/prometheus/rules.yml` passes `promtool check rules`, its unit
//! tests (`rules.test.yml`, which make every alert fire) pass, every
//! PromQL expression of the Grafana dashboards (`deploy/grafana/*.json`)
//! parses (promtool, as recording rules), and every metric the rules and
//! dashboards name is one the services really export (scraped from a
//! control plane, and an edge linked to a relay).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::app::{Backend, TestApp};
use testkit::cluster::{CertDir, RunningEdge, RunningRelay, edge_config, relay_config};

const SECRET: &str = control_plane::config::TEST_CLUSTER_SECRET;

fn rules_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// Every `expr` of every panel target of the dashboards.
fn dashboard_exprs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let dashboard: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for panel in dashboard["panels"].as_array().expect("panels") {
                for target in panel["targets"].as_array().expect("targets") {
                    exprs.push(target["expr"].as_str().expect("expr").to_owned());
                }
            }
        }
    }
    exprs
}

#[test]
fn dashboard_queries_parse() {
    let Some(promtool) = testkit::promtool() else {
        return;
    };
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 10,
        "the dashboards have queries: {}",
        exprs.len()
    );
    // promtool parses PromQL in rule files: one recording rule per query.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file =
        std::env::temp_dir().join(format!("cascade-dashboards-{}.yml", uuid::Uuid::new_v4()));
    std::fs::write(&file, rules).unwrap();
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "a dashboard query does not parse: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alerting_rules_pass_promtool_and_every_alert_fires_in_its_unit_test() {
    let Some(promtool) = testkit::promtool() else {
        return;
    };
    for args in [
        &["check", "rules", "rules.yml"][..],
        &["test", "rules", "rules.test.yml"][..],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(rules_dir())
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Every alert has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(rules_dir().join("rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("rules.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "no unit test makes {alert} fire"
        );
    }
}

/// The `cascade_…` metric names an expression file mentions (recording
/// rules' own `cascade:` names excluded), histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cascade_") {
        let start = i + at;
        let before_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

/// Metric families in a scrape (`# TYPE name kind` lines).
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn alerting_rules_name_only_metrics_the_services_export() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let certs = CertDir::new(&["local-relay"], &["edge-m"]);
    let relay = RunningRelay::start(relay_config(&certs, "local-relay", "local", 0, &[])).await;
    let edge = RunningEdge::start(edge_config(
        "edge-m",
        "local",
        &app.url(""),
        SECRET,
        Some((&certs, relay.addrs.quic)),
    ))
    .await;
    // A request of each kind, so labelled families have a child.
    let _ = app.http.get(app.url("/healthz")).send().await;
    let mut scrapes = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let edge_text = edge.metrics().await;
        if edge_text.contains("cascade_edge_relay_links{") || Instant::now() > deadline {
            scrapes.push_str(&edge_text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A call started and cancelled: the call counters get their labels.
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.direct(&alice, &bob).await;
    let call = app
        .post(
            "/v1/calls",
            &alice,
            serde_json::json!({"conversation_id": chat, "kind": "audio"}),
        )
        .await
        .expect(201)
        .body;
    app.post(
        &format!("/v1/calls/{}/cancel", call["id"].as_str().unwrap()),
        &alice,
        serde_json::json!({}),
    )
    .await;
    // The node gauge is set by the sweep once a node TTL has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let control_plane = loop {
        let text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let complete = ["cascade_registered_nodes{", "cascade_calls_ended_total{"]
            .iter()
            .all(|series| text.contains(series));
        if complete || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    scrapes.push_str(&control_plane);
    // The relay sets per-link RTT once a second after a link is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let relay_text = loop {
        let text = relay.metrics().await;
        if text.contains("cascade_relay_link_rtt_seconds{") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    scrapes.push_str(&relay_text);
    let have = exported(&scrapes);
    let rules = std::fs::read_to_string(rules_dir().join("rules.yml")).unwrap();
    let mut wanted = metric_names(&rules);
    assert!(wanted.len() >= 8, "the rules name metrics: {wanted:?}");
    for expr in dashboard_exprs() {
        wanted.extend(metric_names(&expr));
    }
    let missing: Vec<&String> = wanted.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the rules or dashboards name metrics nobody exports: {missing:?}"
    );
    edge.stop().await;
    relay.stop().await;
}
