//! A control plane started in-process through the production start-up path.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_plane::ControlPlaneConfig;
use testkit::app::{Backend, TestApp};
use testkit::control_plane::TestControlPlane;

const STOP_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn health_metrics_and_graceful_shutdown_on_port_0() {
    let cp = TestControlPlane::start(ControlPlaneConfig::for_tests())
        .await
        .unwrap();
    assert_ne!(cp.http_addr().port(), 0);

    let health = reqwest::get(cp.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(cp.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "no dependencies configured: ready");

    let missing = reqwest::get(cp.url("/v1/does-not-exist")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let metrics = reqwest::get(cp.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = metrics.text().await.unwrap();
    // The requests above were counted by route template and status.
    assert!(
        text.contains(
            r#"cascade_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"cascade_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    let addr = cp.http_addr();
    cp.stop(STOP_WITHIN).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let Some(promtool) = testkit::promtool() else {
        return;
    };
    let cp = TestControlPlane::start(ControlPlaneConfig::for_tests())
        .await
        .unwrap();
    // Exercise a few routes so histograms and counters have samples.
    for path in ["/healthz", "/readyz", "/nope"] {
        reqwest::get(cp.url(path)).await.unwrap();
    }
    let text = reqwest::get(cp.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool: {complaints}\n---\n{text}"
    );
    assert!(complaints.trim().is_empty(), "promtool lint: {complaints}");
    cp.stop(STOP_WITHIN).await.unwrap();
}

/// Polls `/readyz` until it answers `want` or `within` passes; returns the
/// last status and body.
async fn readyz_until(cp: &TestControlPlane, want: u16, within: Duration) -> (u16, String) {
    let started = Instant::now();
    loop {
        let response = reqwest::get(cp.url("/readyz")).await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        if status == want || started.elapsed() > within {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_with_real_postgres_and_redis() {
    let Some(redis) = testkit::servers::redis_url() else {
        return;
    };
    let Some(app) = TestApp::spawn_with(Backend::Postgres, |c| c.redis.url = Some(redis)).await
    else {
        return;
    };
    let cp = app.server.as_ref().expect("running");
    let (status, body) = readyz_until(cp, 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["database", "redis", "redis_subscription"]);
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
}

#[tokio::test]
async fn unreachable_database_fails_start_up_clearly_without_leaking_the_password() {
    // Bind and release a port so nothing is listening on it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut config = ControlPlaneConfig::for_tests();
    config.database.url = Some(format!(
        "postgres://cascade:sekrit-password@127.0.0.1:{dead_port}/cascade"
    ));
    config.database.connect_timeout_secs = 1;
    let started = Instant::now();
    let error = TestControlPlane::start(config)
        .await
        .err()
        .expect("start-up fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after the deadline"
    );
    let text = format!("{error}: {:?}", error);
    assert!(
        text.contains("cannot connect to the postgres database"),
        "{text}"
    );
    assert!(!text.contains("sekrit-password"), "{text}");
}

/// Replicas starting together on one new database: migrations run once
/// (under Postgres' advisory lock) and all replicas sign with the same key,
/// so a token from one is accepted by the others.
#[tokio::test]
async fn replicas_starting_together_migrate_once_and_share_the_signing_key() {
    let Some(admin_url) = testkit::servers::postgres_url() else {
        return;
    };
    let db = testkit::app::PgTestDatabase::create(&admin_url).await;
    let mut config = ControlPlaneConfig::for_tests();
    config.database.url = Some(db.url().to_owned());
    let replicas =
        futures_util::future::join_all((0..3).map(|_| TestControlPlane::start(config.clone())))
            .await;
    let replicas: Vec<TestControlPlane> = replicas
        .into_iter()
        .map(|r| r.expect("every replica starts"))
        .collect();
    let alice = testkit::client::ApiClient::new(replicas[0].http_addr())
        .register("alice")
        .await;
    let mut kids = Vec::new();
    for replica in &replicas {
        let api = testkit::client::ApiClient::new(replica.http_addr());
        // A token from replica 0 works on every replica.
        api.get("/v1/me", &alice).await.expect(200);
        let jwks = api
            .call(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
            .await;
        kids.push(jwks.body["keys"][0]["kid"].as_str().unwrap().to_owned());
    }
    assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    for replica in replicas {
        replica.stop(STOP_WITHIN).await.unwrap();
    }
}
