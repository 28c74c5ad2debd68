//! `cascade dev` as a new user runs it: one process, no servers, two
//! regions; a cross-region call through its relays; Ctrl-C; a second run
//! with the same data directory keeps the accounts and messages.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::bench::ChildService;
use testkit::bot::Bot;
use testkit::client::ApiClient;

/// Starts `cascade dev` on `port` with `data_dir`, once it is ready.
pub fn start(data_dir: &std::path::Path, port: u16) -> ChildService {
    ChildService::spawn_exe(
        std::path::Path::new(env!("CARGO_BIN_EXE_cascade")),
        &[
            "dev",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ],
        "info",
        &[],
        "cascade dev ready",
        "url",
    )
}

/// Sends SIGINT (Ctrl-C) and waits for a clean exit.
pub fn interrupt(child: ChildService) {
    let pid = child.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let exited = child.wait_exit(Duration::from_secs(15));
    assert_eq!(exited, Some(0), "cascade dev exits 0 after Ctrl-C");
}

#[tokio::test]
async fn cascade_dev_runs_a_two_region_call_and_keeps_its_data() {
    let data_dir = std::env::temp_dir().join(format!("cascade-dev-it-{}", uuid::Uuid::new_v4()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || start(&data_dir, port)
    })
    .await
    .unwrap();
    let api = ApiClient::new(format!("127.0.0.1:{port}"));
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let direct = api.direct(&alice, &bob).await;
    api.send(&direct, &alice, "hello from eu").await;

    // Both edges registered: wait until a join in `us` lands on a `us` edge.
    let call = api
        .post(
            "/v1/calls",
            &alice,
            json!({"conversation_id": direct, "kind": "video"}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let join = async |user, region: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let joined = api
                .post(
                    &format!("/v1/calls/{call}/join"),
                    user,
                    json!({"device_id": "bot", "region": region}),
                )
                .await
                .expect(200)
                .body;
            if joined["edge"]["region"] == region {
                return joined;
            }
            assert!(Instant::now() < deadline, "no edge in {region}: {joined}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let in_eu = join(&alice, "eu").await;
    let in_us = join(&bob, "us").await;
    assert_eq!(in_eu["edge"]["id"], "edge-eu-1");
    assert_eq!(in_us["edge"]["id"], "edge-us-1");
    let publisher = Bot::join(&in_eu, true).await.expect("alice connects in eu");
    let subscriber = Bot::join(&in_us, false).await.expect("bob connects in us");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = subscriber.report();
    assert_eq!(report.corrupt, 0);
    assert!(
        report.video_frames() > 30,
        "bob in us sees alice's video through the relays: {} frames",
        report.video_frames()
    );
    assert!(report.audio_packets > 30, "and hears her");
    drop(publisher);
    drop(subscriber);

    interrupt(child);

    // Same data directory: the accounts and the message are still there.
    let child = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || start(&data_dir, port)
    })
    .await
    .unwrap();
    let reply = api.login("alice", &alice.password).await.expect(200);
    let token = reply.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = testkit::client::TestUser {
        access: token,
        ..alice.clone()
    };
    let page = api
        .get(&format!("/v1/conversations/{direct}/messages"), &again)
        .await
        .expect(200)
        .body;
    assert!(page.to_string().contains("hello from eu"), "{page}");
    interrupt(child);
    std::fs::remove_dir_all(&data_dir).unwrap();
}
