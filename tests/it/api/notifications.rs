//! Notifications: the feed (missed call, contact request, added to a
//! group, mention, reply) reaches exactly the people concerned, live and
//! stored, with read state; Web Push reaches an offline browser through a
//! push service on loopback that checks the VAPID signature and decrypts
//! the message the way a browser does. Both backends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use control_plane::notifications::webpush;
use serde_json::{Value, json};
use testkit::app::TestApp;
use testkit::both_backends;
use testkit::client::TestUser;
use testkit::ws::WsClient;

const WAIT: Duration = Duration::from_secs(10);

async fn ws(app: &TestApp, user: &TestUser) -> WsClient {
    let addr = app.server.as_ref().expect("running").http_addr();
    let mut client = WsClient::connect(addr, Some(&user.access), None)
        .await
        .expect("upgrade");
    client.expect("ready", WAIT).await;
    client
}

fn kinds(feed: &Value) -> Vec<String> {
    feed["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(
    notifications_reach_the_people_concerned_once_with_read_state,
    feed_scenario
);
async fn feed_scenario(app: TestApp) {
    let (alice, bob, carol, dave) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("dave").await,
    );
    let mut bobs = ws(&app, &bob).await;

    // A contact request, live and with who asked.
    app.post(&format!("/v1/contacts/{}", bob.id), &dave, json!({}))
        .await
        .expect(200);
    let live = bobs.expect("notification.created", WAIT).await;
    assert_eq!(live["data"]["kind"], "contact_request");
    assert_eq!(live["data"]["actor_id"], dave.id.as_str());
    assert_eq!(live["data"]["actor_name"], "dave");
    assert!(live["data"]["read_at"].is_null());
    // Asking again while pending is no new request.
    app.post(&format!("/v1/contacts/{}", bob.id), &dave, json!({}))
        .await
        .expect(200);

    // Added to a group: Bob and Carol, not the one who added them.
    let group = app.group(&alice, "Ski trip", &[&bob, &carol]).await;
    let live = bobs.expect("notification.created", WAIT).await;
    assert_eq!(live["data"]["kind"], "added_to_group");
    assert_eq!(live["data"]["conversation_id"], group.as_str());
    assert_eq!(live["data"]["excerpt"], "Ski trip");

    // A mention names members only: Dave is not in the group.
    app.send(&group, &carol, "@Bob and @dave, the lift opens at 9")
        .await;
    let live = bobs.expect("notification.created", WAIT).await;
    assert_eq!(live["data"]["kind"], "mention");
    assert_eq!(
        live["data"]["excerpt"],
        "@Bob and @dave, the lift opens at 9"
    );

    // A reply to Bob's message, sent twice with one client id: one
    // notification.
    let asked = app.send(&group, &bob, "who drives?").await;
    let mut reply_ids = Vec::new();
    for _ in 0..2 {
        let reply = app
            .post(
                &format!("/v1/conversations/{group}/messages"),
                &alice,
                json!({"body": "I do", "reply_to": asked["id"], "client_message_id": "r-1"}),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
        reply_ids.push(reply.body["id"].clone());
    }
    assert_eq!(reply_ids[0], reply_ids[1], "the same message");
    let live = bobs.expect("notification.created", WAIT).await;
    assert_eq!(live["data"]["kind"], "reply");
    assert_eq!(live["data"]["message_id"], reply_ids[0]);

    // A call Bob never answered (Alice gave up): a missed call, for him only.
    let chat = app.direct(&alice, &bob).await;
    let call = app
        .post(
            "/v1/calls",
            &alice,
            json!({"conversation_id": chat, "kind": "audio"}),
        )
        .await
        .expect(201)
        .body;
    let call_id = call["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/calls/{call_id}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    let live = bobs.expect("notification.created", WAIT).await;
    assert_eq!(live["data"]["kind"], "missed_call");
    assert_eq!(live["data"]["call_id"], call_id.as_str());
    assert_eq!(live["data"]["actor_name"], "alice");

    // The stored feed, newest first: nothing twice, nothing for others.
    let feed = app.get("/v1/notifications", &bob).await.expect(200).body;
    assert_eq!(
        kinds(&feed),
        [
            "missed_call",
            "reply",
            "mention",
            "added_to_group",
            "contact_request"
        ]
    );
    assert_eq!(feed["unread_count"], 5);
    let carols = app.get("/v1/notifications", &carol).await.expect(200).body;
    assert_eq!(kinds(&carols), ["added_to_group"]);
    for nobody in [&alice, &dave] {
        let feed = app.get("/v1/notifications", nobody).await.expect(200).body;
        assert_eq!(kinds(&feed), Vec::<String>::new(), "{}", nobody.username);
    }

    // Pages.
    let first = app
        .get("/v1/notifications?limit=2", &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(kinds(&first), ["missed_call", "reply"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/notifications?limit=10&before={cursor}"), &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(
        kinds(&rest),
        ["mention", "added_to_group", "contact_request"]
    );
    assert!(rest.get("next_cursor").is_none());
    assert_eq!(app.get("/v1/notifications?limit=0", &bob).await.status, 400);

    // Marking read: someone else's id changes nothing of Bob's.
    let missed_id = feed["notifications"][0]["id"].clone();
    let theirs = app
        .post("/v1/notifications/read", &dave, json!({"ids": [missed_id]}))
        .await
        .expect(200)
        .body;
    assert_eq!(theirs["unread_count"], 0);
    let after = app
        .post("/v1/notifications/read", &bob, json!({"ids": [missed_id]}))
        .await
        .expect(200)
        .body;
    assert_eq!(after["unread_count"], 4);
    let read = bobs.expect("notification.read", WAIT).await;
    assert_eq!(read["data"]["unread_count"], 4);
    let unread = app
        .get("/v1/notifications?unread=true", &bob)
        .await
        .expect(200)
        .body;
    assert_eq!(
        kinds(&unread),
        ["reply", "mention", "added_to_group", "contact_request"]
    );
    app.post("/v1/notifications/read", &bob, json!({}))
        .await
        .expect(200);
    assert_eq!(
        bobs.expect("notification.read", WAIT).await["data"]["unread_count"],
        0
    );
    let feed = app.get("/v1/notifications", &bob).await.expect(200).body;
    assert_eq!(feed["unread_count"], 0);
    assert!(feed["notifications"][0]["read_at"].is_string());
    assert_eq!(
        app.post("/v1/notifications/read", &bob, json!({"ids": "all"}))
            .await
            .status,
        422
    );

    // A device that was away replays them from its cursor.
    let addr = app.server.as_ref().unwrap().http_addr();
    let mut replay = WsClient::connect(addr, Some(&carol.access), Some("0.0"))
        .await
        .expect("upgrade");
    let replayed = replay.expect("notification.created", WAIT).await;
    assert_eq!(replayed["data"]["kind"], "added_to_group");
}

/// What the loopback push service received.
#[derive(Debug, Clone)]
struct Pushed {
    path: String,
    authorization: String,
    encoding: String,
    ttl: String,
    body: Vec<u8>,
}

/// A push service on loopback: records each POST; `/gone/...` answers 410
/// (an unsubscribed browser), everything else 201.
async fn push_service() -> (String, Arc<Mutex<Vec<Pushed>>>) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    let received: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    let router = axum::Router::new()
        .route(
            "/{kind}/{name}",
            axum::routing::post(
                |State(received): State<Arc<Mutex<Vec<Pushed>>>>,
                 Path((kind, name)): Path<(String, String)>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    received.lock().unwrap().push(Pushed {
                        path: format!("/{kind}/{name}"),
                        authorization: header("authorization"),
                        encoding: header("content-encoding"),
                        ttl: header("ttl"),
                        body: body.to_vec(),
                    });
                    if kind == "gone" {
                        StatusCode::GONE
                    } else {
                        StatusCode::CREATED
                    }
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (origin, received)
}

/// A browser's push keys: its ECDH key pair and auth secret.
struct BrowserKeys {
    private: PrivateKey,
    auth: [u8; 16],
}

impl BrowserKeys {
    fn new(seed: u8) -> Self {
        BrowserKeys {
            private: PrivateKey::generate(&ECDH_P256).unwrap(),
            auth: [seed; 16],
        }
    }

    fn subscription(&self, endpoint: &str) -> Value {
        let public = self.private.compute_public_key().unwrap();
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(public.as_ref()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }
}

async fn wait_for_pushes(received: &Mutex<Vec<Pushed>>, count: usize) -> Vec<Pushed> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = received.lock().unwrap().clone();
        if now.len() >= count {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} pushes of {count} within {WAIT:?}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    an_offline_browser_gets_an_encrypted_signed_push_and_an_online_user_none,
    push_scenario
);
async fn push_scenario(app: TestApp) {
    let (origin, received) = push_service().await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let key = app.get("/v1/push/key", &bob).await.expect(200).body["public_key"]
        .as_str()
        .unwrap()
        .to_owned();

    // Endpoints must be on a push service (here: the loopback one), keys
    // must be real P-256 keys.
    let browser = BrowserKeys::new(7);
    for (endpoint, code) in [
        ("https://evil.example/collect", "invalid_endpoint"),
        ("ftp://127.0.0.1/x", "invalid_endpoint"),
        ("not a url", "invalid_endpoint"),
    ] {
        let reply = app
            .post(
                "/v1/push/subscriptions",
                &bob,
                browser.subscription(endpoint),
            )
            .await;
        assert_eq!(reply.status, 400, "{endpoint}");
        assert_eq!(reply.code(), code);
    }
    let mut bad = browser.subscription(&format!("{origin}/ok/bob"));
    bad["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]));
    let reply = app.post("/v1/push/subscriptions", &bob, bad).await;
    assert_eq!((reply.status.as_u16(), reply.code()), (400, "invalid_keys"));

    app.post(
        "/v1/push/subscriptions",
        &bob,
        browser.subscription(&format!("{origin}/ok/bob")),
    )
    .await
    .expect(201);
    // A second browser that has since unsubscribed at its push service.
    let stale = BrowserKeys::new(9);
    app.post(
        "/v1/push/subscriptions",
        &bob,
        stale.subscription(&format!("{origin}/gone/bob")),
    )
    .await
    .expect(201);

    // Bob is offline: a mention is pushed to both browsers.
    app.send(&chat, &alice, "@bob the keys are under the mat")
        .await;
    let pushes = wait_for_pushes(&received, 2).await;
    let ok = pushes.iter().find(|p| p.path == "/ok/bob").expect("pushed");
    assert_eq!(ok.encoding, "aes128gcm");
    assert_eq!(ok.ttl, "86400");
    let claims = webpush::verify_authorization(&ok.authorization, &key)
        .expect("a VAPID signature by the server's key");
    assert_eq!(claims["aud"], origin.as_str());
    assert!(claims["sub"].as_str().unwrap().starts_with("mailto:"));
    let plain = webpush::decrypt(&browser.private, &browser.auth, &ok.body)
        .expect("the browser can decrypt it");
    let message: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(message["type"], "notification");
    assert_eq!(message["notification"]["kind"], "mention");
    assert_eq!(
        message["notification"]["excerpt"],
        "@bob the keys are under the mat"
    );
    // Nobody but that browser can read it.
    assert!(webpush::decrypt(&stale.private, &stale.auth, &ok.body).is_err());

    // Bob comes online: the next one reaches his socket and is not pushed;
    // the gone browser was dropped after its 410.
    let mut bobs = ws(&app, &bob).await;
    app.send(&chat, &alice, "@bob found them?").await;
    bobs.expect("notification.created", WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.lock().unwrap().len(), 2, "no push while online");

    // Offline again: one push, to the browser still subscribed.
    drop(bobs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pushed = Vec::new();
    // Presence may take a moment to see the socket gone; each mention is
    // pushed or not, so send until one is.
    for attempt in 0..20 {
        app.send(&chat, &alice, &format!("@bob still there? {attempt}"))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        pushed = received.lock().unwrap()[2..].to_vec();
        if !pushed.is_empty() {
            break;
        }
    }
    assert!(
        !pushed.is_empty(),
        "a push once Bob's socket closed: {:?}",
        pushed.len()
    );
    assert!(
        pushed.iter().all(|p| p.path == "/ok/bob"),
        "the gone subscription was dropped: {:?}",
        pushed.iter().map(|p| &p.path).collect::<Vec<_>>()
    );

    // Unsubscribing: another user's id is 404; one's own, 204.
    let mine = app
        .post(
            "/v1/push/subscriptions",
            &bob,
            browser.subscription(&format!("{origin}/ok/bob")),
        )
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.delete(&format!("/v1/push/subscriptions/{mine}"), &alice)
            .await
            .status,
        404
    );
    assert_eq!(
        app.delete(&format!("/v1/push/subscriptions/{mine}"), &bob)
            .await
            .status,
        204
    );
}
