//! A message acknowledged with 2xx is still there after the control plane
//! is killed with SIGKILL (no chance to flush or shut down) and restarted.

use std::process::Command;
use std::time::Duration;

use testkit::app::{Backend, TestApp};
use testkit::client::{ApiClient, TestUser};

use crate::cli::start_control_plane;

const MESSAGES: usize = 20;

#[tokio::test]
async fn acknowledged_messages_survive_sigkill_on_postgres() {
    let Some(mut app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    // The in-process server only created and migrated the fresh database.
    app.stop().await;
    let url = app.config.database.url.clone().expect("postgres URL");
    survives_sigkill(&[("CASCADE_CONTROL_PLANE__DATABASE__URL", url.as_str())]).await;
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill_on_embedded_sqlite() {
    let dir = std::env::temp_dir().join(format!("cascade-sigkill-{}", std::process::id()));
    let data_dir = dir.to_str().unwrap().to_owned();
    survives_sigkill(&[("CASCADE_CONTROL_PLANE__DATA_DIR", data_dir.as_str())]).await;
    std::fs::remove_dir_all(&dir).ok();
}

async fn survives_sigkill(env: &[(&str, &str)]) {
    let (mut child, addr) = start_control_plane(env);
    let api = ApiClient::new(&addr);
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let chat = api.direct(&alice, &bob).await;
    for i in 0..MESSAGES {
        // `send` asserts the 201: each message was acknowledged.
        api.send(&chat, &alice, &format!("durable {i}")).await;
    }

    // No shutdown, no flush: the process simply stops existing.
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    let (mut child, addr) = start_control_plane(env);
    let api = ApiClient::new(&addr);
    let login = api.login("alice", &alice.password).await.expect(200);
    let alice = TestUser {
        access: login.body["tokens"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        ..alice
    };
    let page = api
        .get(
            &format!("/v1/conversations/{chat}/messages?limit=100"),
            &alice,
        )
        .await
        .expect(200);
    let bodies: Vec<&str> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("durable {i}")).collect();
    assert_eq!(bodies, expected);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async { child.wait() }).await;
}
