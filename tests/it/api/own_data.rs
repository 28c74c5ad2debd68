//! Issue 18 items 6, 7 and 9 on both backends: consent at sign-up, an
//! uploaded avatar, the export of one's own data, erasure, and the audit
//! entries they leave.

use std::io::{Cursor, Read};

use super::png;
use std::time::Duration;

use control_plane::attachments::Blobs;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::app::TestApp;
use testkit::client::{TestUser, terms_version};
use testkit::{both_backends, both_backends_with};

/// SQLite in a file rather than in memory, so the test can open the same
/// database beside the server (to make someone an administrator, as
/// `cascade admin grant` does).
fn on_disk(config: &mut control_plane::ControlPlaneConfig) {
    if config.database.url.as_deref() == Some("sqlite::memory:") {
        let path =
            std::env::temp_dir().join(format!("cascade-own-data-{}.db", uuid::Uuid::new_v4()));
        config.database.url = Some(format!("sqlite://{}?mode=rwc", path.display()));
    }
}

async fn upload_image(app: &TestApp, user: &TestUser, bytes: &[u8]) -> String {
    app.upload(user, "image", "picture.png", Some("image/png"), bytes)
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// POST or DELETE with a password body: status and raw bytes.
async fn with_password(
    app: &TestApp,
    method: Method,
    path: &str,
    user: &TestUser,
    password: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let response = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&user.access)
        .json(&json!({ "password": password }))
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn messages(app: &TestApp, conversation: &str, user: &TestUser) -> Vec<Value> {
    app.get(&format!("/v1/conversations/{conversation}/messages"), user)
        .await
        .expect(200)
        .body["messages"]
        .as_array()
        .unwrap()
        .clone()
}

both_backends!(
    sign_up_records_consent_to_the_current_terms,
    consent_scenario
);
async fn consent_scenario(app: TestApp) {
    let terms = app
        .call(Method::GET, "/v1/terms", None, None)
        .await
        .expect(200);
    assert_eq!(terms.body["version"], terms_version());
    for accepted in [None, Some("1999-01-01")] {
        let mut body = json!({"username": "dora", "email": "dora@example.com", "password": "plum-ferry-quartz-91"});
        if let Some(version) = accepted {
            body["accepted_terms"] = json!(version);
        }
        let refused = app
            .call(Method::POST, "/v1/auth/register", None, Some(body))
            .await
            .expect(422);
        assert_eq!(refused.code(), "terms_not_accepted");
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&terms_version())
        );
    }
    // Nothing was created by the refusals.
    app.login("dora", "plum-ferry-quartz-91").await.expect(401);
    let dora = app.register("dora").await;
    let me = app.get("/v1/me", &dora).await.expect(200).body;
    assert_eq!(me["terms_version"], terms_version());
    assert!(me["terms_accepted_at"].is_string(), "{me}");
}

both_backends_with!(
    an_uploaded_avatar_is_seen_by_others_and_replaced_cleanly,
    avatar_scenario,
    super::on_disk
);
async fn avatar_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let blobs = Blobs::open(&app.config.attachments, &app.config.data_dir).unwrap();

    // Someone else's upload, a sent one, or a file is not an avatar.
    let bobs = upload_image(&app, &bob, &png(40, 40, 9)).await;
    let refused = app
        .patch("/v1/me", &alice, json!({ "avatar_id": bobs }))
        .await
        .expect(422);
    assert_eq!(refused.code(), "invalid_avatar");
    let conversation = app.direct(&alice, &bob).await;
    let sent = upload_image(&app, &alice, &png(30, 30, 1)).await;
    app.post(
        &format!("/v1/conversations/{conversation}/messages"),
        &alice,
        json!({"kind": "image", "attachment_id": sent}),
    )
    .await
    .expect(201);
    app.patch("/v1/me", &alice, json!({ "avatar_id": sent }))
        .await
        .expect(422);

    let first = upload_image(&app, &alice, &png(600, 400, 50)).await;
    let me = app
        .patch(
            "/v1/me",
            &alice,
            json!({ "avatar_id": first, "status_text": "on holiday", "display_name": "Alice A." }),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(me["avatar_id"], first.as_str());
    let url = me["avatar_url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("/v1/users/{}/avatar", alice.id)),
        "{url}"
    );
    // Bob sees the profile and fetches the picture (a thumbnail: the
    // longest side 320 px).
    let seen = app
        .get(&format!("/v1/users/{}", alice.id), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(seen["avatar_url"], url.as_str());
    assert_eq!(seen["status_text"], "on holiday");
    assert_eq!(seen["display_name"], "Alice A.");
    let (status, headers, bytes) = app.get_bytes(&url, &bob).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let picture = image::load_from_memory(&bytes).unwrap();
    assert_eq!((picture.width(), picture.height()), (320, 213));
    // An avatar is never sent as a message.
    let reuse = app
        .post(
            &format!("/v1/conversations/{conversation}/messages"),
            &alice,
            json!({"kind": "image", "attachment_id": first}),
        )
        .await;
    assert_ne!(reuse.status, 201, "{:?}", reuse.body);

    // Past the orphan age, the sweep keeps an avatar.
    let app_sweeps = control_plane::attachments::sweep_once(
        &*control_plane::store::open(&app.config.database, &app.config.data_dir)
            .await
            .unwrap(),
        &blobs,
        &control_plane::attachments::AttachmentsConfig {
            orphan_after_secs: 0,
            ..app.config.attachments.clone()
        },
    )
    .await;
    let first_id: uuid::Uuid = first.parse().unwrap();
    assert!(
        blobs.exists(first_id).await.unwrap(),
        "swept {app_sweeps}, avatar kept"
    );

    // A new avatar replaces it: the old blob leaves the store.
    let second = upload_image(&app, &alice, &png(64, 64, 200)).await;
    let me = app
        .patch("/v1/me", &alice, json!({ "avatar_id": second }))
        .await
        .expect(200)
        .body;
    assert_ne!(me["avatar_url"], url.as_str(), "a new avatar is a new URL");
    assert!(
        !blobs.exists(first_id).await.unwrap(),
        "the old avatar's blob is gone"
    );
    // Clearing it.
    let me = app
        .patch("/v1/me", &alice, json!({ "avatar_id": null }))
        .await
        .expect(200)
        .body;
    assert!(
        me["avatar_url"].is_null() && me["avatar_id"].is_null(),
        "{me}"
    );
    let (status, _, _) = app
        .get_bytes(&format!("/v1/users/{}/avatar", alice.id), &bob)
        .await;
    assert_eq!(status, 404);
    assert!(!blobs.exists(second.parse().unwrap()).await.unwrap());
}

both_backends_with!(
    own_data_is_exported_then_erased,
    own_data_scenario,
    super::on_disk
);
async fn own_data_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let blobs = Blobs::open(&app.config.attachments, &app.config.data_dir).unwrap();
    app.make_contacts(&alice, &bob).await;
    let direct = app.direct(&alice, &bob).await;
    let secret = app.send(&direct, &alice, "alice's secret plan").await;
    let reply = app.send(&direct, &bob, "bob's reply only").await;
    let group = app.group(&carol, "Trip", &[&alice, &bob]).await;
    app.send(&group, &alice, "alice in the group").await;
    let private = app.direct(&bob, &carol).await;
    app.send(&private, &carol, "carol and bob alone").await;
    let react = |conversation: &str, message: &Value, emoji: &str| {
        format!(
            "/v1/conversations/{conversation}/messages/{}/reactions/{emoji}",
            message["id"].as_str().unwrap()
        )
    };
    app.put(&react(&direct, &secret, "👍"), &bob)
        .await
        .expect(200);
    app.put(&react(&direct, &reply, "🎉"), &alice)
        .await
        .expect(200);
    let picture = png(50, 40, 77);
    let image = upload_image(&app, &alice, &picture).await;
    app.post(
        &format!("/v1/conversations/{direct}/messages"),
        &alice,
        json!({"kind": "image", "attachment_id": image, "body": "look"}),
    )
    .await
    .expect(201);
    let face = png(90, 90, 3);
    let avatar = upload_image(&app, &alice, &face).await;
    app.patch("/v1/me", &alice, json!({ "avatar_id": avatar }))
        .await
        .expect(200);

    // --- the export -------------------------------------------------------
    let (status, _, body) = with_password(
        &app,
        Method::POST,
        "/v1/me/export",
        &alice,
        "not-her-password",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&body), "invalid_credentials");
    let (status, headers, zipped) =
        with_password(&app, Method::POST, "/v1/me/export", &alice, &alice.password).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/zip");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"cascade-export-alice-")
    );
    let mut archive = zip::ZipArchive::new(Cursor::new(zipped)).unwrap();
    let mut text = String::new();
    archive
        .by_name("export.json")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let export: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(export["format"], "cascade-export/1");
    assert_eq!(export["account"]["username"], "alice");
    assert_eq!(export["account"]["email"], "alice@example.com");
    let bodies: Vec<&str> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        ["alice's secret plan", "alice in the group", "look"]
    );
    for others in ["bob's reply only", "carol and bob alone", "bob@example.com"] {
        assert!(!text.contains(others), "the export holds {others:?}");
    }
    assert_eq!(export["contacts"][0]["user"]["username"], "bob");
    assert_eq!(export["contacts"][0]["status"], "accepted");
    assert_eq!(export["conversations"].as_array().unwrap().len(), 2);
    assert_eq!(export["reactions"][0]["emoji"], "🎉");
    assert!(!export["logins"].as_array().unwrap().is_empty());
    assert!(
        export["security_log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.registered")
    );
    let files = export["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    for (id, bytes) in [(&image, &picture), (&avatar, &face)] {
        let entry = files.iter().find(|a| a["id"] == id.as_str()).unwrap();
        let mut stored = Vec::new();
        archive
            .by_name(entry["path"].as_str().unwrap())
            .unwrap()
            .read_to_end(&mut stored)
            .unwrap();
        assert_eq!(&stored, bytes, "the archive holds the uploaded bytes");
    }

    // --- erasure ------------------------------------------------------------
    let addr = app
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut socket = testkit::ws::WsClient::connect(&addr, Some(&alice.access), None)
        .await
        .unwrap();
    socket.expect("ready", Duration::from_secs(5)).await;
    let (status, _, _) =
        with_password(&app, Method::DELETE, "/v1/me", &alice, "not-her-password").await;
    assert_eq!(status, 403);
    app.get("/v1/me", &alice).await.expect(200);
    let (status, _, _) =
        with_password(&app, Method::DELETE, "/v1/me", &alice, &alice.password).await;
    assert_eq!(status, 204);

    // Every login ended at once: her socket closes, her access token is
    // refused, her refresh token and password no longer work.
    assert!(
        socket.closed(Duration::from_secs(5)).await.is_some(),
        "her WebSocket was closed"
    );
    app.get("/v1/me", &alice).await.expect(401);
    app.get("/v1/conversations", &alice).await.expect(401);
    app.call(
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": alice.refresh })),
    )
    .await
    .expect(401);
    app.login("alice", &alice.password).await.expect(401);
    app.login("alice@example.com", &alice.password)
        .await
        .expect(401);

    // Her messages are tombstones; Bob's history is otherwise intact, minus
    // her reaction; his reaction on her message went with its text.
    let history = messages(&app, &direct, &bob).await;
    let hers: Vec<&Value> = history
        .iter()
        .filter(|m| m["author_id"] == alice.id.as_str())
        .collect();
    assert_eq!(hers.len(), 2);
    for message in &hers {
        assert!(
            message["deleted_at"].is_string() && message["body"].is_null(),
            "{message}"
        );
        assert!(message["attachment"].is_null());
        assert_eq!(message["reactions"], json!([]));
    }
    let his = history.iter().find(|m| m["id"] == reply["id"]).unwrap();
    assert_eq!(his["body"], "bob's reply only");
    assert_eq!(his["reactions"], json!([]));
    let in_group = messages(&app, &group, &carol).await;
    assert!(in_group.iter().all(|m| m["body"] != "alice in the group"));
    assert_eq!(
        messages(&app, &private, &bob).await[0]["body"],
        "carol and bob alone"
    );

    // Who she was is gone: the profile reads "Deleted user", search and
    // contacts do not find her, the group goes on without her.
    let profile = app
        .get(&format!("/v1/users/{}", alice.id), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(profile["deleted"], true);
    assert_eq!(profile["display_name"], "Deleted user");
    assert!(profile["avatar_url"].is_null());
    assert!(!profile.to_string().contains("alice"), "{profile}");
    let found = app.get("/v1/users?q=alic", &bob).await.expect(200).body;
    assert_eq!(found["users"], json!([]));
    let contacts = app.get("/v1/contacts", &bob).await.expect(200).body;
    assert_eq!(contacts["contacts"], json!([]));
    let members = app
        .get(&format!("/v1/conversations/{group}"), &carol)
        .await
        .expect(200)
        .body;
    let ids: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{members}");
    assert!(!ids.contains(&alice.id.as_str()));
    // Her uploads left the store.
    for id in [&image, &avatar] {
        let (status, _, _) = app.get_bytes(&format!("/v1/attachments/{id}"), &bob).await;
        assert_eq!(status, 404);
        assert!(
            !blobs.exists(id.parse().unwrap()).await.unwrap(),
            "blob {id} removed"
        );
    }
    // Nobody can start anything new with the erased account.
    app.post(&format!("/v1/contacts/{}", alice.id), &bob, json!({}))
        .await
        .expect(404);
    app.post(
        "/v1/conversations",
        &bob,
        json!({"kind": "direct", "user_id": alice.id}),
    )
    .await
    .expect(404);
    // The name is free again, for someone else.
    let new_alice = app.register("alice").await;
    assert_ne!(new_alice.id, alice.id);

    // The audit log kept the deletion under an id, with no personal data.
    let store = control_plane::store::open(&app.config.database, &app.config.data_dir)
        .await
        .unwrap();
    assert!(store.set_admin("carol", true).await.unwrap());
    let log = app
        .get("/v1/admin/audit?limit=100", &carol)
        .await
        .expect(200)
        .body;
    let entries = log["entries"].as_array().unwrap();
    let deleted = entries
        .iter()
        .find(|e| e["action"] == "user.deleted")
        .expect("a user.deleted entry");
    assert_eq!(deleted["target_id"], alice.id.as_str());
    assert!(deleted["ip"].is_null());
    for entry in entries
        .iter()
        .filter(|e| e["actor_id"] == alice.id.as_str())
    {
        assert!(entry["ip"].is_null(), "her addresses are gone: {entry}");
    }
    assert!(!log.to_string().contains("alice@example.com"));
    for action in [
        "contact.requested",
        "contact.accepted",
        "attachment.deleted",
        "user.exported",
    ] {
        assert!(
            entries.iter().any(|e| e["action"] == action),
            "no {action} entry"
        );
    }
}

both_backends_with!(
    deleting_a_message_and_contact_changes_are_audited,
    audit_scenario,
    super::on_disk
);
async fn audit_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation = app.direct(&alice, &bob).await;
    let id = upload_image(&app, &alice, &png(20, 20, 5)).await;
    let message = app
        .post(
            &format!("/v1/conversations/{conversation}/messages"),
            &alice,
            json!({"kind": "image", "attachment_id": id}),
        )
        .await
        .expect(201)
        .body;
    app.delete(
        &format!(
            "/v1/conversations/{conversation}/messages/{}",
            message["id"].as_str().unwrap()
        ),
        &alice,
    )
    .await
    .expect(200);
    app.post(&format!("/v1/contacts/{}", alice.id), &bob, json!({}))
        .await
        .expect(200);
    app.patch(
        &format!("/v1/contacts/{}", alice.id),
        &bob,
        json!({"action": "block"}),
    )
    .await
    .expect(200);
    let store = control_plane::store::open(&app.config.database, &app.config.data_dir)
        .await
        .unwrap();
    store.set_admin("bob", true).await.unwrap();
    let log = app
        .get("/v1/admin/audit?limit=100", &bob)
        .await
        .expect(200)
        .body;
    let entries = log["entries"].as_array().unwrap();
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {log}"))
            .clone()
    };
    let deleted = find("message.deleted");
    assert_eq!(deleted["actor_id"], alice.id.as_str());
    assert_eq!(deleted["target_id"], message["id"]);
    assert_eq!(deleted["details"]["attachments"], 1);
    let blob = find("attachment.deleted");
    assert_eq!(blob["target_id"], id.as_str());
    assert_eq!(blob["details"]["reason"], "message_deleted");
    assert_eq!(find("contact.requested")["target_id"], alice.id.as_str());
    assert_eq!(find("contact.blocked")["actor_id"], bob.id.as_str());
}
