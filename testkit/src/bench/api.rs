//! `cascade bench api`: sustained message sends and page reads through the
//! control plane's HTTP API against Postgres, with two baselines measured in
//! the same run on the same machine:
//!
//! - the store alone (the same send transaction, no HTTP, JSON or JWT), which
//!   bounds what the API could reach on this database;
//! - `GET /healthz`, the HTTP stack's ceiling on this machine.
//!
//! Client and server share the machine (and its cores), as they do in the
//! tests; the ratios between rows are what carry over to other machines.

use std::sync::Arc;
use std::time::Duration;

use control_plane::store::{MessagePage, NewMessage, Store};
use serde_json::json;
use uuid::Uuid;

use super::{Measurement, closed_loop};

/// Whether the response has `status`, reading the whole body as a real
/// client would (an unread body also keeps the connection from being
/// reused, which would measure connection set-up instead).
async fn answered(response: reqwest::Result<reqwest::Response>, status: u16) -> bool {
    match response {
        Ok(response) => {
            let ok = response.status().as_u16() == status;
            response.bytes().await.is_ok() && ok
        }
        Err(_) => false,
    }
}
use crate::app::{TestApp, TestUser};

/// What to run.
#[derive(Debug, Clone)]
pub struct ApiBenchOptions {
    /// Postgres server where a scratch database is created (and dropped).
    pub admin_database_url: String,
    /// How long each workload runs.
    pub duration: Duration,
    /// Concurrent clients (each with its own account and connection).
    pub clients: usize,
    /// Group conversations the traffic is spread over.
    pub conversations: usize,
    /// Messages per conversation before the read workloads.
    pub history: usize,
}

/// Runs every workload and returns the measurements in order.
pub async fn run(options: &ApiBenchOptions) -> Vec<Measurement> {
    let app = Arc::new(
        TestApp::spawn_on_postgres(&options.admin_database_url, |c| {
            c.database.max_connections = 16;
        })
        .await,
    );
    let mut users = Vec::new();
    for i in 0..options.clients {
        users.push(app.register(&format!("bench{i:04}")).await);
    }
    let users = Arc::new(users);
    let everyone: Vec<&TestUser> = users.iter().collect();
    let mut conversations = Vec::new();
    for c in 0..options.conversations {
        let id = app
            .group(&users[0], &format!("bench {c}"), &everyone[1..])
            .await;
        conversations.push(id);
    }
    let conversations = Arc::new(conversations);
    let mut results = Vec::new();

    // HTTP ceiling.
    let a = app.clone();
    results.push(
        closed_loop(
            "GET /healthz (HTTP ceiling)",
            options.clients,
            options.duration,
            move |_, _| {
                let a = a.clone();
                async move { answered(a.http.get(a.url("/healthz")).send().await, 200).await }
            },
        )
        .await,
    );

    // Sends through the API.
    let (a, u, c) = (app.clone(), users.clone(), conversations.clone());
    results.push(
        closed_loop("POST message (API)", options.clients, options.duration, move |worker, i| {
            let (a, u, c) = (a.clone(), u.clone(), c.clone());
            async move {
                let conversation = &c[(worker + i as usize) % c.len()];
                answered(a.http
                    .post(a.url(&format!("/v1/conversations/{conversation}/messages")))
                    .bearer_auth(&u[worker].access)
                    .json(&json!({ "body": format!("message {i} from {worker}"), "client_message_id": format!("{worker}-{i}") }))
                    .send().await, 201).await
            }
        })
        .await,
    );

    // The same transaction through the store alone.
    let store: Arc<dyn Store> =
        control_plane::store::open(&app.config.database, std::path::Path::new("unused"))
            .await
            .expect("open the bench database");
    let author_ids: Arc<Vec<Uuid>> =
        Arc::new(users.iter().map(|u| u.id.parse().expect("uuid")).collect());
    let conversation_ids: Arc<Vec<Uuid>> = Arc::new(
        conversations
            .iter()
            .map(|c| c.parse().expect("uuid"))
            .collect(),
    );
    let (s, authors, convs) = (store.clone(), author_ids.clone(), conversation_ids.clone());
    results.push(
        closed_loop(
            "send transaction (store only)",
            options.clients,
            options.duration,
            move |worker, i| {
                let (s, authors, convs) = (s.clone(), authors.clone(), convs.clone());
                async move {
                    let message = NewMessage {
                        id: Uuid::now_v7(),
                        conversation_id: convs[(worker + i as usize) % convs.len()],
                        author_id: authors[worker],
                        client_message_id: Some(format!("store-{worker}-{i}")),
                        body: format!("message {i} from {worker}"),
                        reply_to: None,
                        kind: "text".into(),
                        attachment: None,
                        now: control_plane::store::now_utc(),
                    };
                    s.send_message(&message, control_plane::api::events::message_created)
                        .await
                        .is_ok()
                }
            },
        )
        .await,
    );

    // Make sure every conversation has enough history for the reads.
    for conversation in conversation_ids.iter() {
        let have = store
            .messages(
                *conversation,
                MessagePage::Latest {
                    limit: options.history as i64,
                },
            )
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        for i in have..options.history {
            let _ = store
                .send_message(
                    &NewMessage {
                        id: Uuid::now_v7(),
                        conversation_id: *conversation,
                        author_id: author_ids[i % author_ids.len()],
                        client_message_id: None,
                        body: format!("history {i}"),
                        reply_to: None,
                        kind: "text".into(),
                        attachment: None,
                        now: control_plane::store::now_utc(),
                    },
                    control_plane::api::events::message_created,
                )
                .await;
        }
    }

    // Newest page of 50.
    let c = conversations.clone();
    let newest = move |worker: usize, i: u64| {
        let conversation = &c[(worker + i as usize) % c.len()];
        format!("/v1/conversations/{conversation}/messages?limit=50")
    };
    results.push(
        authed_get(
            &app,
            &users,
            options,
            "GET newest 50 messages (API)",
            newest,
        )
        .await,
    );

    // Older pages at varying depths.
    let c = conversations.clone();
    let depth = options.history as u64;
    let older = move |worker: usize, i: u64| {
        let conversation = &c[(worker + i as usize) % c.len()];
        let before = 51 + (i * 7919 + worker as u64) % depth.max(52);
        format!("/v1/conversations/{conversation}/messages?limit=50&before={before}")
    };
    results.push(
        authed_get(
            &app,
            &users,
            options,
            "GET 50 messages before a cursor (API)",
            older,
        )
        .await,
    );

    // Conversation list with unread counts.
    let list = |_: usize, _: u64| "/v1/conversations?limit=20".to_owned();
    results.push(authed_get(&app, &users, options, "GET conversation list (API)", list).await);

    // Attachments: a 10 MiB file up and down (the filesystem store, in
    // the test's own directory). Fewer workers: each request moves 10 MiB.
    let file: Arc<Vec<u8>> = Arc::new((0..ATTACHMENT_BYTES).map(|i| (i % 251) as u8).collect());
    let movers = options.clients.clamp(1, 4);
    let (a, u, f) = (app.clone(), users.clone(), file.clone());
    results.push(
        closed_loop(
            "POST 10 MiB attachment (API)",
            movers,
            options.duration.min(Duration::from_secs(5)),
            move |worker, _| {
                let (a, u, f) = (a.clone(), u.clone(), f.clone());
                async move {
                    a.upload(&u[worker], "file", "data.bin", None, &f)
                        .await
                        .status
                        == 201
                }
            },
        )
        .await,
    );
    let uploaded = app
        .upload(&users[0], "file", "data.bin", None, &file)
        .await
        .expect(201);
    let sent = app
        .post(
            &format!("/v1/conversations/{}/messages", conversations[0]),
            &users[0],
            json!({"kind": "file", "attachment_id": uploaded.body["id"]}),
        )
        .await
        .expect(201);
    let download = format!(
        "/v1/attachments/{}",
        sent.body["attachment"]["id"]
            .as_str()
            .expect("attachment id")
    );
    let (a, u) = (app.clone(), users.clone());
    results.push(
        closed_loop(
            "GET 10 MiB attachment (API)",
            movers,
            options.duration,
            move |worker, _| {
                let (a, u, path) = (a.clone(), u.clone(), download.clone());
                async move {
                    let request = a.http.get(a.url(&path)).bearer_auth(&u[worker].access);
                    match request.send().await {
                        Ok(r) if r.status() == 200 => {
                            r.bytes().await.is_ok_and(|b| b.len() == ATTACHMENT_BYTES)
                        }
                        _ => false,
                    }
                }
            },
        )
        .await,
    );
    if let Some(dir) = &app.config.attachments.dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    results
}

/// The attachment the upload and download workloads move.
const ATTACHMENT_BYTES: usize = 10 << 20;

/// A closed-loop workload of authenticated GETs: worker `w`'s `i`th request
/// goes to `path(w, i)` with user `w`'s token and must answer 200.
async fn authed_get(
    app: &Arc<TestApp>,
    users: &Arc<Vec<TestUser>>,
    options: &ApiBenchOptions,
    name: &str,
    path: impl Fn(usize, u64) -> String + Send + Sync + Clone + 'static,
) -> Measurement {
    let (a, u) = (app.clone(), users.clone());
    closed_loop(name, options.clients, options.duration, move |worker, i| {
        let (a, u, path) = (a.clone(), u.clone(), path.clone());
        async move {
            let request = a
                .http
                .get(a.url(&path(worker, i)))
                .bearer_auth(&u[worker].access);
            answered(request.send().await, 200).await
        }
    })
    .await
}
