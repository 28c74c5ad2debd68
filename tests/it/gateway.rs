//! The WebSocket gateway over real sockets: live events, resume, bad
//! frames, typing and presence; two replicas on Postgres and Redis, and a
//! Redis restart in the middle.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use testkit::app::{Backend, TestApp};
use testkit::both_backends;
use testkit::client::{ApiClient, TestUser};
use testkit::control_plane::TestControlPlane;
use testkit::ws::WsClient;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(400);

fn addr(app: &TestApp) -> std::net::SocketAddr {
    app.server.as_ref().expect("running").http_addr()
}

async fn ws(
    addr: std::net::SocketAddr,
    user: &TestUser,
    cursor: Option<&str>,
) -> (WsClient, String) {
    let mut client = WsClient::connect(addr, Some(&user.access), cursor)
        .await
        .expect("upgrade");
    let ready = client.expect("ready", WAIT).await;
    assert_eq!(ready["user_id"], user.id.as_str());
    (client, ready["cursor"].as_str().unwrap().to_owned())
}

both_backends!(
    events_reach_every_device_of_members_and_nobody_else,
    live_scenario
);
async fn live_scenario(app: TestApp) {
    let (alice, bob, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    let (mut phone, _) = ws(addr(&app), &alice, None).await;
    let (mut laptop, _) = ws(addr(&app), &alice, None).await;
    let (mut bobs, _) = ws(addr(&app), &bob, None).await;
    let (mut outsider, _) = ws(addr(&app), &mallory, None).await;

    let sent = app.send(&chat, &bob, "hello alice").await;
    for client in [&mut phone, &mut laptop, &mut bobs] {
        let event = client.expect("message.created", WAIT).await;
        assert_eq!(event["data"]["body"], "hello alice");
        assert_eq!(event["data"]["id"], sent["id"]);
        assert!(event["cursor"].is_string());
    }
    // Edits, deletions and read pointers follow on the same stream.
    let id = sent["id"].as_str().unwrap();
    app.patch(
        &format!("/v1/conversations/{chat}/messages/{id}"),
        &bob,
        json!({ "body": "hello!" }),
    )
    .await
    .expect(200);
    assert_eq!(
        phone.expect("message.updated", WAIT).await["data"]["body"],
        "hello!"
    );
    app.post(
        &format!("/v1/conversations/{chat}/read"),
        &alice,
        json!({ "message_id": id }),
    )
    .await
    .expect(200);
    let read = bobs.expect("read.updated", WAIT).await;
    assert_eq!(read["data"]["user_id"], alice.id.as_str());

    // A group: the added member hears of it and of what follows; the
    // outsider hears nothing at all.
    let group = app.group(&alice, "team", &[]).await;
    app.post(
        &format!("/v1/conversations/{group}/members"),
        &alice,
        json!({ "user_ids": [bob.id] }),
    )
    .await
    .expect(200);
    assert_eq!(
        bobs.expect("member.added", WAIT).await["data"]["conversation_id"],
        group.as_str()
    );
    app.send(&group, &alice, "welcome").await;
    assert_eq!(
        bobs.expect("message.created", WAIT).await["data"]["body"],
        "welcome"
    );
    app.delete(
        &format!("/v1/conversations/{group}/members/{}", bob.id),
        &alice,
    )
    .await
    .expect(204);
    bobs.expect("member.removed", WAIT).await;
    app.send(&group, &alice, "after bob left").await;
    assert!(
        bobs.collect("message.created", QUIET).await.is_empty(),
        "removed members hear nothing more"
    );
    assert!(outsider.collect("message.created", QUIET).await.is_empty());

    // A conversation created while its members are connected is live at
    // once for all of them (the creator included).
    let fresh = app.group(&bob, "fresh", &[&alice]).await;
    loop {
        let joined = phone.expect("member.added", WAIT).await;
        if joined["data"]["conversation_id"] == fresh.as_str() {
            break;
        }
    }
    loop {
        let created = phone.expect("conversation.updated", WAIT).await;
        if created["data"]["conversation_id"] == fresh.as_str() {
            break;
        }
    }
    app.send(&fresh, &bob, "in the new group").await;
    assert_eq!(
        phone.expect("message.created", WAIT).await["data"]["body"],
        "in the new group"
    );
    assert_eq!(
        bobs.expect("message.created", WAIT).await["data"]["body"],
        "in the new group"
    );
}

both_backends!(resume_replays_exactly_what_was_missed, resume_scenario);
async fn resume_scenario(app: TestApp) {
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    app.send(&chat, &bob, "seen before").await;
    let (mut client, _) = ws(addr(&app), &alice, None).await;
    app.send(&chat, &bob, "last seen").await;
    // "seen before" may arrive too: it committed before the connection, but
    // the hub may not have read it yet (an event is only read once final).
    let cursor = loop {
        let event = client.expect("message.created", WAIT).await;
        if event["data"]["body"] == "last seen" {
            break event["cursor"].as_str().unwrap().to_owned();
        }
    };
    client.close().await;

    for i in 0..50 {
        app.send(&chat, &bob, &format!("missed {i}")).await;
    }
    let expected: Vec<String> = (0..50).map(|i| format!("missed {i}")).collect();

    // With ?cursor= on the upgrade.
    let (mut resumed, _) = ws(addr(&app), &alice, Some(&cursor)).await;
    let replayed = resumed.collect("message.created", QUIET).await;
    let bodies: Vec<&str> = replayed
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, expected, "exactly the missed messages, in order");

    // As a browser does it: `?cursor=` on the URL, the token in an `auth`
    // frame (a WebSocket from a page cannot carry an Authorization header).
    let mut browser = WsClient::connect(addr(&app), None, Some(&cursor))
        .await
        .unwrap();
    browser
        .send(&json!({ "type": "auth", "token": alice.access }))
        .await;
    browser.expect("ready", WAIT).await;
    let replayed = browser.collect("message.created", QUIET).await;
    assert_eq!(
        replayed.len(),
        50,
        "the URL cursor is honoured after an auth frame"
    );
    // The cursor inside the auth frame works as well.
    let mut framed = WsClient::connect(addr(&app), None, None).await.unwrap();
    framed
        .send(&json!({ "type": "auth", "token": alice.access, "cursor": cursor }))
        .await;
    framed.expect("ready", WAIT).await;
    let replayed = framed.collect("message.created", QUIET).await;
    assert_eq!(replayed.len(), 50, "the auth frame's cursor is honoured");

    // With a resume frame as the first frame.
    let (mut again, _) = ws(addr(&app), &alice, None).await;
    again
        .send(&json!({ "type": "resume", "cursor": cursor }))
        .await;
    let replayed = again.collect("message.created", QUIET).await;
    assert_eq!(replayed.len(), 50);
    // A resume after events were delivered would break their order.
    app.send(&chat, &bob, "live").await;
    again.expect("message.created", WAIT).await;
    again
        .send(&json!({ "type": "resume", "cursor": cursor }))
        .await;
    assert_eq!(again.expect("error", WAIT).await["code"], "resume_refused");

    // Removed while away: what was said before the removal is replayed,
    // the removal itself too, and nothing after it.
    let group = app.group(&bob, "g", &[&alice]).await;
    let (mut client, _) = ws(addr(&app), &alice, None).await;
    app.send(&group, &bob, "hello").await;
    let cursor = client.expect("message.created", WAIT).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    client.close().await;
    app.send(&group, &bob, "before removal").await;
    app.delete(
        &format!("/v1/conversations/{group}/members/{}", alice.id),
        &bob,
    )
    .await
    .expect(204);
    app.send(&group, &bob, "after removal").await;
    let (mut back, _) = ws(addr(&app), &alice, Some(&cursor)).await;
    let mut kinds = Vec::new();
    while let Ok(Some(frame)) = back.next(QUIET).await {
        let kind = frame["type"].as_str().unwrap().to_owned();
        if kind == "message.created" {
            kinds.push(format!(
                "message: {}",
                frame["data"]["body"].as_str().unwrap()
            ));
        } else if kind == "member.removed" {
            kinds.push(kind);
        }
    }
    assert_eq!(kinds, ["message: before removal", "member.removed"]);
}

/// A gap larger than a connection's queue can take ends with
/// `resync_required` after the budget, never with a disconnect.
#[tokio::test]
async fn a_gap_too_large_to_replay_asks_for_a_resync() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.gateway.outbound_queue = 32;
        c.gateway.max_replay = 10;
    })
    .await
    .unwrap();
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let (mut client, _) = ws(addr(&app), &alice, None).await;
    app.send(&chat, &bob, "seen").await;
    let cursor = client.expect("message.created", WAIT).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    client.close().await;
    for i in 0..20 {
        app.send(&chat, &bob, &format!("missed {i}")).await;
    }
    let (mut back, _) = ws(addr(&app), &alice, Some(&cursor)).await;
    let mut replayed = 0;
    let resync = loop {
        let frame = back.next(WAIT).await.expect("open").expect("a frame");
        match frame["type"].as_str() {
            Some("message.created") => replayed += 1,
            Some("resync_required") => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(replayed, 10);
    assert!(resync["cursor"].is_string());
    // Still connected: live events keep coming.
    app.send(&chat, &bob, "live").await;
    assert_eq!(
        back.expect("message.created", WAIT).await["data"]["body"],
        "live"
    );
}

/// A socket lives no longer than its login: logout closes it (on every
/// replica, through the bus), a password change closes the other logins'
/// sockets, and an expired access token closes it too.
#[tokio::test]
async fn sockets_close_on_logout_password_change_and_token_expiry() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let alice = app.register("alice").await;
    let second = app.login("alice", &alice.password).await.expect(200);
    let second_token = second.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut first_socket, _) = ws(addr(&app), &alice, None).await;
    let mut second_socket = WsClient::connect(addr(&app), Some(&second_token), None)
        .await
        .unwrap();
    second_socket.expect("ready", WAIT).await;

    // Logging out the second login closes only its socket.
    app.call(
        reqwest::Method::POST,
        "/v1/auth/logout",
        Some(&second_token),
        None,
    )
    .await
    .expect(204);
    let closed = second_socket.closed(WAIT).await.expect("closed");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4401, "session revoked")
    );
    // Its access token is still signed and unexpired, but a new socket
    // with it opens nothing: by header it is refused before the upgrade
    // (the replica refuses a revoked login's tokens), by auth frame the
    // socket closes without `ready`.
    let again = WsClient::connect(addr(&app), Some(&second_token), None).await;
    assert!(
        again.as_ref().is_err_and(|e| e.contains("401")),
        "refused before the upgrade: {:?}",
        again.as_ref().err()
    );
    let mut by_frame = WsClient::connect(addr(&app), None, None).await.unwrap();
    by_frame
        .send(&json!({ "type": "auth", "token": second_token }))
        .await;
    assert_eq!(by_frame.closed(WAIT).await.expect("closed").code, 4401);
    first_socket.send(&json!({ "type": "ping" })).await;
    first_socket.expect("pong", WAIT).await;

    // A password change closes the other logins' sockets, not this one's.
    let third = app.login("alice", &alice.password).await.expect(200);
    let third_token = third.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut third_socket = WsClient::connect(addr(&app), Some(&third_token), None)
        .await
        .unwrap();
    third_socket.expect("ready", WAIT).await;
    app.post(
        "/v1/auth/password",
        &alice,
        json!({
            "current_password": alice.password, "new_password": "lantern-orbit-meadow-42"
        }),
    )
    .await
    .expect(204);
    assert_eq!(third_socket.closed(WAIT).await.expect("closed").code, 4401);
    first_socket.send(&json!({ "type": "ping" })).await;
    first_socket.expect("pong", WAIT).await;

    // Tokens that expire close their socket.
    let short = TestApp::spawn_with(Backend::Sqlite, |c| c.auth.access_token_ttl_secs = 2)
        .await
        .unwrap();
    let bob = short.register("bob").await;
    let (mut expiring, _) = ws(addr(&short), &bob, None).await;
    let closed = expiring
        .closed(Duration::from_secs(6))
        .await
        .expect("closed at expiry");
    assert_eq!(closed.code, 4401);
    assert!(closed.reason.contains("expired"), "{closed:?}");
}

#[tokio::test]
async fn authentication_by_header_or_first_frame() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.gateway.auth_timeout_secs = 1)
        .await
        .unwrap();
    let alice = app.register("alice").await;
    assert!(
        WsClient::connect(addr(&app), Some("not-a-token"), None)
            .await
            .is_err(),
        "401 before upgrade"
    );

    let mut by_frame = WsClient::connect(addr(&app), None, None).await.unwrap();
    by_frame
        .send(&json!({ "type": "auth", "token": alice.access }))
        .await;
    by_frame.expect("ready", WAIT).await;

    let mut silent = WsClient::connect(addr(&app), None, None).await.unwrap();
    let closed = silent.closed(WAIT).await.expect("closed");
    assert_eq!(closed.code, 4401);

    let mut wrong = WsClient::connect(addr(&app), None, None).await.unwrap();
    wrong
        .send(&json!({ "type": "auth", "token": "forged" }))
        .await;
    assert_eq!(wrong.closed(WAIT).await.expect("closed").code, 4401);
}

#[tokio::test]
async fn bad_frames_get_errors_or_a_close_and_never_hurt_others() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.gateway.max_frame_bytes = 2048;
        c.gateway.inbound_per_sec = 10;
        c.gateway.inbound_burst = 20;
    })
    .await
    .unwrap();
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let (mut bystander, _) = ws(addr(&app), &bob, None).await;

    let (mut client, _) = ws(addr(&app), &alice, None).await;
    for (text, code) in [
        ("not json".to_owned(), "invalid_frame"),
        (r#"{"type":"teleport"}"#.to_owned(), "invalid_frame"),
        (
            r#"{"type":"typing","conversation_id":"nope"}"#.to_owned(),
            "invalid_frame",
        ),
        (
            r#"{"type":"resume","cursor":"garbage"}"#.to_owned(),
            "invalid_cursor",
        ),
        (
            r#"{"type":"auth","token":"again"}"#.to_owned(),
            "already_authenticated",
        ),
    ] {
        client.send_text(text).await;
        assert_eq!(client.expect("error", WAIT).await["code"], code);
    }
    client.send(&json!({ "type": "ping" })).await;
    client.expect("pong", WAIT).await;

    // Oversized: the connection is closed, the server lives on.
    let (mut big, _) = ws(addr(&app), &alice, None).await;
    big.send_text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096)))
        .await;
    let closed = big.closed(WAIT).await.expect("closed");
    assert!([1008, 1009, 1006].contains(&closed.code), "{closed:?}");

    // A flood: cut off at the rate limit.
    let (mut flood, _) = ws(addr(&app), &alice, None).await;
    for _ in 0..200 {
        flood.send(&json!({ "type": "ping" })).await;
    }
    let closed = flood.closed(WAIT).await.expect("closed");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "rate limit exceeded")
    );

    // Everyone else is unaffected.
    app.send(&chat, &alice, "still here").await;
    assert_eq!(
        bystander.expect("message.created", WAIT).await["data"]["body"],
        "still here"
    );
    client.send(&json!({ "type": "ping" })).await;
    client.expect("pong", WAIT).await;
}

both_backends!(typing_and_presence_reach_members_only, ephemeral_scenario);
async fn ephemeral_scenario(app: TestApp) {
    let (alice, bob, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    // Presence needs consent: an accepted contact (or a shared group).
    app.make_contacts(&alice, &bob).await;
    // Mallory opens a direct conversation with alice on her own (anyone
    // may): that is not consent, she sees nothing of alice's presence.
    app.direct(&mallory, &alice).await;
    let (mut bobs, _) = ws(addr(&app), &bob, None).await;
    let (mut outsider, _) = ws(addr(&app), &mallory, None).await;

    let (mut alices, _) = ws(addr(&app), &alice, None).await;
    let online = bobs.expect("presence", WAIT).await;
    assert_eq!(
        (online["user_id"].as_str(), online["status"].as_str()),
        (Some(alice.id.as_str()), Some("online"))
    );

    // What a client asks for when it connects: its people's presence now.
    let seen = app.get("/v1/presence", &bob).await.expect(200);
    let entry = &seen.body["presence"][0];
    assert_eq!(
        (entry["user_id"].as_str(), entry["status"].as_str()),
        (Some(alice.id.as_str()), Some("online"))
    );
    assert!(entry["last_seen_at"].is_string());
    let stranger = app.get("/v1/presence", &mallory).await.expect(200);
    assert_eq!(
        stranger.body["presence"],
        json!([]),
        "strangers, even with a direct conversation, see nobody's presence"
    );

    alices
        .send(&json!({ "type": "typing", "conversation_id": chat }))
        .await;
    let typing = bobs.expect("typing", WAIT).await;
    assert_eq!(typing["user_id"], alice.id.as_str());
    outsider
        .send(&json!({ "type": "typing", "conversation_id": chat }))
        .await;
    assert_eq!(outsider.expect("error", WAIT).await["code"], "not_found");

    alices
        .send(&json!({ "type": "presence", "status": "offline" }))
        .await;
    assert_eq!(alices.expect("error", WAIT).await["code"], "invalid_status");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alices
        .send(&json!({ "type": "presence", "status": "away" }))
        .await;
    assert_eq!(bobs.expect("presence", WAIT).await["status"], "away");
    alices.close().await;
    assert_eq!(bobs.expect("presence", WAIT).await["status"], "offline");
    let after = app.get("/v1/presence", &bob).await.expect(200);
    assert_eq!(after.body["presence"][0]["status"], "offline");
    assert!(
        after.body["presence"][0]["last_seen_at"].is_string(),
        "last seen is kept"
    );
    assert!(
        outsider.collect("presence", QUIET).await.is_empty(),
        "strangers see no presence"
    );
    assert!(outsider.collect("typing", QUIET).await.is_empty());
}

/// Two replicas behind one "load balancer": a message sent over REST to A
/// arrives on a WebSocket connected to B, and a client that misses 50
/// messages while away resumes on the other replica with exactly those 50.
#[tokio::test]
async fn two_replicas_behave_as_one() {
    let (Some(pg), Some(redis)) = (
        testkit::servers::postgres_url(),
        testkit::servers::redis_url(),
    ) else {
        return;
    };
    let db = testkit::app::PgTestDatabase::create(&pg).await;
    let mut config = control_plane::ControlPlaneConfig::for_tests();
    config.database.url = Some(db.url().to_owned());
    config.redis.url = Some(redis);
    let a = TestControlPlane::start(config.clone()).await.unwrap();
    let b = TestControlPlane::start(config).await.unwrap();
    let (api_a, api_b) = (ApiClient::new(a.http_addr()), ApiClient::new(b.http_addr()));
    let alice = api_a.register("alice").await;
    let bob = api_b.register("bob").await;
    let chat = api_a.direct(&alice, &bob).await;

    let (mut on_b, _) = ws(b.http_addr(), &alice, None).await;
    api_a.send(&chat, &bob, "from A").await;
    assert_eq!(
        on_b.expect("message.created", WAIT).await["data"]["body"],
        "from A"
    );
    let cursor = {
        api_b.send(&chat, &bob, "last seen").await;
        on_b.expect("message.created", WAIT).await["cursor"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    on_b.close().await;

    for i in 0..50 {
        api_a.send(&chat, &bob, &format!("missed {i}")).await;
    }
    let (mut on_a, _) = ws(a.http_addr(), &alice, Some(&cursor)).await;
    let replayed = on_a.collect("message.created", QUIET).await;
    let bodies: Vec<&str> = replayed
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("missed {i}")).collect();
    assert_eq!(bodies, expected);
    a.stop(WAIT * 2).await.unwrap();
    b.stop(WAIT * 2).await.unwrap();
}

/// Waits (up to 10 s) until a replica reports ready.
async fn wait_ready(api: &ApiClient) {
    let mut last = None;
    for _ in 0..100 {
        let reply = api.call(reqwest::Method::GET, "/readyz", None, None).await;
        if reply.status == 200 {
            return;
        }
        last = Some((reply.status, reply.body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica not ready within 10 s: {last:?}");
}

/// A dedicated Redis on a free port, so the test may restart it.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// One on a free port, if there is a `redis-server` binary (under CI
    /// there must be).
    fn on_a_free_port() -> Option<Self> {
        let has_redis_server = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        testkit::servers::required_or_skip(
            has_redis_server.then_some(()),
            "the redis-server binary",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Self::start(port))
    }

    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis restarts mid-test: fan-out through it recovers without restarting
/// any replica, and a client that was away during the outage resumes
/// without losing anything. Polling is set to a minute here, so only
/// Redis wake-ups can deliver within the test's deadlines.
#[tokio::test]
async fn fan_out_recovers_after_redis_restarts() {
    let Some(pg) = testkit::servers::postgres_url() else {
        return;
    };
    let Some(mut redis) = OwnRedis::on_a_free_port() else {
        return;
    };
    let port = redis.port;
    let db = testkit::app::PgTestDatabase::create(&pg).await;
    let mut config = control_plane::ControlPlaneConfig::for_tests();
    config.database.url = Some(db.url().to_owned());
    config.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
    config.gateway.poll_interval_ms = 60_000;
    let a = TestControlPlane::start(config.clone()).await.unwrap();
    let b = TestControlPlane::start(config).await.unwrap();
    let (api_a, api_b) = (ApiClient::new(a.http_addr()), ApiClient::new(b.http_addr()));
    let alice = api_a.register("alice").await;
    let bob = api_a.register("bob").await;
    let chat = api_a.direct(&alice, &bob).await;
    // Ready includes the bus subscription, so wake-ups are heard.
    for api in [&api_a, &api_b] {
        wait_ready(api).await;
    }
    let (mut live, _) = ws(b.http_addr(), &alice, None).await;
    api_a.send(&chat, &bob, "before").await;
    let cursor = live.expect("message.created", WAIT).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let (away, _) = ws(b.http_addr(), &bob, Some(&cursor)).await;
    away.close().await;

    redis.stop();
    api_a.send(&chat, &bob, "during the outage").await; // stored; no wake-up
    // A real outage: long enough for several failed reconnection attempts
    // (a restart within milliseconds hid a subscriber that stayed deaf).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis = OwnRedis::start(port);
    // Both replicas see Redis again, and are subscribed again.
    for api in [&api_a, &api_b] {
        wait_ready(api).await;
    }
    // Fan-out through Redis is back without any restart. Probes are sent
    // until one arrives (a wake-up can still race the re-subscription by a
    // hair), then everything sent must have arrived exactly once and in
    // order, starting with the message sent during the outage.
    let mut sent = vec!["during the outage".to_owned()];
    let mut got: Vec<String> = Vec::new();
    for attempt in 0..15 {
        let body = format!("after {attempt}");
        api_a.send(&chat, &bob, &body).await;
        sent.push(body);
        while got.len() < sent.len() {
            match live.next(Duration::from_secs(2)).await {
                Ok(Some(frame)) if frame["type"] == "message.created" => {
                    got.push(frame["data"]["body"].as_str().unwrap().to_owned());
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(closed) => panic!("closed: {closed:?}"),
            }
        }
        if got.len() == sent.len() {
            break;
        }
    }
    assert_eq!(
        got, sent,
        "recovered without a restart; nothing lost, nothing twice"
    );
    // The client that was away loses nothing.
    let (mut back, _) = ws(b.http_addr(), &bob, Some(&cursor)).await;
    let bodies: Vec<String> = back
        .collect("message.created", QUIET)
        .await
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, sent);
    drop(redis);
    a.stop(WAIT * 2).await.unwrap();
    b.stop(WAIT * 2).await.unwrap();
}

/// Redis is replaced by an empty one: a user connected all along shows as
/// online again as soon as the replica's client reconnects (it writes its
/// devices again), not after the next gateway heartbeat (15 s here).
#[tokio::test]
async fn presence_is_back_right_after_redis_comes_back_empty() {
    let Some(pg) = testkit::servers::postgres_url() else {
        return;
    };
    let Some(mut redis) = OwnRedis::on_a_free_port() else {
        return;
    };
    let port = redis.port;
    let db = testkit::app::PgTestDatabase::create(&pg).await;
    let mut config = control_plane::ControlPlaneConfig::for_tests();
    config.database.url = Some(db.url().to_owned());
    config.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
    config.gateway.heartbeat_interval_secs = 15;
    let a = TestControlPlane::start(config).await.unwrap();
    let api = ApiClient::new(a.http_addr());
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    // Presence is for accepted contacts.
    api.make_contacts(&alice, &bob).await;
    wait_ready(&api).await;
    let (_alice_online, _) = ws(a.http_addr(), &alice, None).await;
    let status = || async {
        let list = api.get("/v1/presence", &bob).await.expect(200).body;
        list["presence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user_id"] == alice.id.as_str())
            .map(|p| p["status"].as_str().unwrap().to_owned())
    };
    let deadline = std::time::Instant::now() + WAIT;
    while status().await.as_deref() != Some("online") {
        assert!(std::time::Instant::now() < deadline, "alice never online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new, empty Redis where the old one was.
    redis.stop();
    redis = OwnRedis::start(port);
    let back = std::time::Instant::now();
    wait_ready(&api).await;
    let deadline = back + Duration::from_secs(5);
    loop {
        if status().await.as_deref() == Some("online") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice still not online {:?} after Redis came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "presence restored {:?} after Redis came back empty",
        back.elapsed()
    );
    drop(redis);
    a.stop(WAIT * 2).await.unwrap();
}

/// One user cannot hold the gateway open at will: a few sockets at once
/// per replica, a few openings per window; beyond either, 4429 and the
/// reason. Before, 400 sockets of one user were all accepted.
#[tokio::test]
async fn sockets_per_user_are_capped() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits.max_open_websockets_per_user = 2;
        c.rate_limits.websockets_per_user = control_plane::config::Quota {
            limit: 4,
            window_secs: 60,
        };
    })
    .await
    .unwrap();
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let (first, _) = ws(addr(&app), &alice, None).await;
    let (_second, _) = ws(addr(&app), &alice, None).await;
    let mut third = WsClient::connect(addr(&app), Some(&alice.access), None)
        .await
        .unwrap();
    let closed = third.closed(WAIT).await.expect("closed");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4429, "too many open connections for this user")
    );
    // Someone else is not affected.
    let (_bobs, _) = ws(addr(&app), &bob, None).await;
    // A closed socket frees its place...
    first.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_fourth, _) = ws(addr(&app), &alice, None).await;
    // ... but openings are counted too: this is alice's fifth.
    let mut fifth = WsClient::connect(addr(&app), Some(&alice.access), None)
        .await
        .unwrap();
    let closed = fifth.closed(WAIT).await.expect("closed");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4429, "too many connections opened; try again later")
    );
}

/// A resume cursor beyond the log's head (never handed out) gets
/// `resync_required` with the real head, and live events still arrive;
/// before, the socket silently received nothing from then on.
#[tokio::test]
async fn a_cursor_beyond_the_log_gets_resync_required() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let chat = app.direct(&alice, &bob).await;
    let (_, head) = ws(addr(&app), &bob, None).await;
    let (mut resumed, _) = ws(addr(&app), &bob, Some("999999999.999999999")).await;
    let resync = resumed.expect("resync_required", WAIT).await;
    assert_eq!(resync["cursor"], head.as_str(), "{resync}");
    app.send(&chat, &alice, "still live").await;
    assert_eq!(
        resumed.expect("message.created", WAIT).await["data"]["body"],
        "still live"
    );
}

both_backends!(reactions_arrive_live_and_on_resume, reactions_scenario);
async fn reactions_scenario(app: TestApp) {
    let (alice, bob, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    let sent = app.send(&chat, &alice, "lunch?").await;
    let id = sent["id"].as_str().unwrap();
    let (mut alices, _) = ws(addr(&app), &alice, None).await;
    let (mut outsider, _) = ws(addr(&app), &mallory, None).await;
    let path = |emoji: &str| format!("/v1/conversations/{chat}/messages/{id}/reactions/{emoji}");

    // Bob reacts: alice's device sees who, what and the new count.
    app.put(&path("👍"), &bob).await.expect(200);
    let added = alices.expect("reaction.added", WAIT).await;
    assert_eq!(added["data"]["message_id"], id);
    assert_eq!(added["data"]["conversation_id"], chat.as_str());
    assert_eq!(added["data"]["user_id"], bob.id.as_str());
    assert_eq!(added["data"]["emoji"], "👍");
    assert_eq!(added["data"]["count"], 1);
    // A repeated PUT changes nothing and sends nothing.
    app.put(&path("👍"), &bob).await.expect(200);
    assert!(
        alices.collect("reaction.added", QUIET).await.is_empty(),
        "an idempotent repeat is not an event"
    );
    let cursor = added["cursor"].as_str().unwrap().to_owned();
    alices.close().await;

    // While alice is away: she reacts from another device, bob withdraws.
    app.put(&path("👍"), &alice).await.expect(200);
    app.delete(&path("👍"), &bob).await.expect(200);
    app.delete(&path("👍"), &bob).await.expect(200);
    let (mut resumed, _) = ws(addr(&app), &alice, Some(&cursor)).await;
    let mut replayed = Vec::new();
    while let Ok(Some(frame)) = resumed.next(QUIET).await {
        if frame["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("reaction."))
        {
            replayed.push((
                frame["type"].as_str().unwrap().to_owned(),
                frame["data"]["user_id"].as_str().unwrap().to_owned(),
                frame["data"]["count"].as_i64().unwrap(),
            ));
        }
    }
    assert_eq!(
        replayed,
        vec![
            ("reaction.added".to_owned(), alice.id.clone(), 2),
            ("reaction.removed".to_owned(), bob.id.clone(), 1),
        ],
        "the missed changes, in order, once each"
    );
    // A non-member heard none of it.
    let mut leaked = Vec::new();
    while let Ok(Some(frame)) = outsider.next(QUIET).await {
        leaked.push(frame);
    }
    assert!(
        leaked
            .iter()
            .all(|f| !f["type"].as_str().unwrap_or("").starts_with("reaction.")),
        "{leaked:?}"
    );
}
