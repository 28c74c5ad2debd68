//! A message acknowledged with 2xx is still there after the control plane
//! is killed with SIGKILL (no chance to flush or shut down) and restarted.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::app::{Backend, TestApp};

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
    let http = reqwest::Client::new();
    let (mut child, addr) = start_control_plane(env);
    let url = |path: &str| format!("http://{addr}{path}");

    let register = |name: &'static str| {
        let http = http.clone();
        let url = url("/v1/auth/register");
        async move {
            let reply: Value = http
                .post(url)
                .json(&json!({ "username": name, "email": format!("{name}@example.com"), "password": "plum-ferry-quartz-91" }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                reply["user"]["id"].as_str().unwrap().to_owned(),
                reply["tokens"]["access_token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (_, alice) = register("alice").await;
    let (bob_id, _) = register("bob").await;
    let chat: Value = http
        .post(url("/v1/conversations"))
        .bearer_auth(&alice)
        .json(&json!({ "kind": "direct", "user_id": bob_id }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat = chat["id"].as_str().unwrap().to_owned();
    for i in 0..MESSAGES {
        let sent = http
            .post(url(&format!("/v1/conversations/{chat}/messages")))
            .bearer_auth(&alice)
            .json(&json!({ "body": format!("durable {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201, "acknowledged");
    }

    // No shutdown, no flush: the process simply stops existing.
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    let (mut child, addr) = start_control_plane(env);
    let login: Value = http
        .post(format!("http://{addr}/v1/auth/login"))
        .json(&json!({ "login": "alice", "password": "plum-ferry-quartz-91" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["tokens"]["access_token"]
        .as_str()
        .expect("alice can log in after the restart");
    let page: Value = http
        .get(format!(
            "http://{addr}/v1/conversations/{chat}/messages?limit=100"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies: Vec<&str> = page["messages"]
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
