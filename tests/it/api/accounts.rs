//! Registration, login, tokens, rate limits, profile, search, contacts,
//! audit.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::json;
use testkit::app::{Backend, TestApp};
use testkit::both_backends;
use testkit::client::terms_version as terms;

both_backends!(
    register_login_and_profile,
    register_login_and_profile_scenario
);
async fn register_login_and_profile_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let me = app.get("/v1/me", &alice).await.expect(200);
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["email"], "alice@example.com");
    assert_eq!(me.body["display_name"], "alice");

    // Login by username (any case) and by e-mail.
    app.login("ALICE", &alice.password).await.expect(200);
    let by_email = app
        .login("Alice@Example.com", &alice.password)
        .await
        .expect(200);
    assert_eq!(by_email.body["user"]["id"], alice.id.as_str());
    // Token answers are never cached (RFC 6749 5.1); other answers may be.
    assert_eq!(by_email.headers["cache-control"], "no-store");
    assert_eq!(by_email.headers["pragma"], "no-cache");
    assert!(
        !me.headers.contains_key("cache-control"),
        "{:?}",
        me.headers
    );
    let wrong = app.login("alice", "not-the-password").await.expect(401);
    assert_eq!(wrong.code(), "invalid_credentials");
    let unknown = app.login("nobody", "whatever-password").await.expect(401);
    app.login("ali\u{0}ce", &alice.password).await.expect(401);
    assert_eq!(
        unknown.code(),
        "invalid_credentials",
        "unknown accounts look the same"
    );

    // Unique case-insensitively; e-mail unique too.
    let taken = app
        .call(Method::POST, "/v1/auth/register", None, Some(json!({
            "username": "Alice", "email": "other@example.com", "password": "plum-ferry-quartz-91", "accepted_terms": terms()
        })))
        .await
        .expect(409);
    assert_eq!(taken.code(), "username_taken");
    let email_taken = app
        .call(Method::POST, "/v1/auth/register", None, Some(json!({
            "username": "alice2", "email": "ALICE@example.com", "password": "plum-ferry-quartz-91", "accepted_terms": terms()
        })))
        .await
        .expect(409);
    assert_eq!(email_taken.code(), "email_taken");

    // Weak and malformed input.
    for (body, code) in [
        (
            json!({"username": "bob", "email": "bob@example.com", "password": "password123", "accepted_terms": terms()}),
            "weak_password",
        ),
        (
            json!({"username": "bob", "email": "bob@example.com", "password": "short", "accepted_terms": terms()}),
            "weak_password",
        ),
        (
            json!({"username": "bob", "email": "bob@example.com", "password": "bob@example.com!", "accepted_terms": terms()}),
            "weak_password",
        ),
        (
            json!({"username": "b!", "email": "bob@example.com", "password": "plum-ferry-quartz-91", "accepted_terms": terms()}),
            "invalid_username",
        ),
        (
            json!({"username": "bob", "email": "bob@", "password": "plum-ferry-quartz-91", "accepted_terms": terms()}),
            "invalid_email",
        ),
    ] {
        let reply = app
            .call(Method::POST, "/v1/auth/register", None, Some(body))
            .await
            .expect(422);
        assert_eq!(reply.code(), code);
    }

    // Profile edits; avatar null clears it.
    let updated = app
        .patch(
            "/v1/me",
            &alice,
            json!({
                "display_name": "Alice Liddell", "status_text": "down the rabbit hole",
                "avatar_url": "https://cdn.example.com/alice.png"
            }),
        )
        .await
        .expect(200);
    assert_eq!(updated.body["display_name"], "Alice Liddell");
    assert_eq!(
        updated.body["avatar_url"],
        "https://cdn.example.com/alice.png"
    );
    let cleared = app
        .patch("/v1/me", &alice, json!({ "avatar_url": null }))
        .await
        .expect(200);
    assert_eq!(cleared.body["avatar_url"], serde_json::Value::Null);
    assert_eq!(
        cleared.body["display_name"], "Alice Liddell",
        "absent fields stay"
    );
    app.patch(
        "/v1/me",
        &alice,
        json!({ "avatar_url": "javascript:alert(1)" }),
    )
    .await
    .expect(422);

    // No token, bad token.
    app.call(Method::GET, "/v1/me", None, None)
        .await
        .expect(401);
    app.call(Method::GET, "/v1/me", Some("garbage"), None)
        .await
        .expect(401);
}

both_backends!(refresh_rotation_and_reuse_detection, refresh_scenario);
async fn refresh_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": token })),
            )
            .await
        }
    };
    // Rotation: each refresh gives a new pair; the new access token works.
    let first = refresh(alice.refresh.clone()).await.expect(200);
    let second_refresh = first.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, alice.refresh);
    let access = first.body["access_token"].as_str().unwrap();
    app.call(Method::GET, "/v1/me", Some(access), None)
        .await
        .expect(200);

    // A second login is its own family and must survive what follows.
    let other_login = app.login("alice", &alice.password).await.expect(200);
    let other_refresh = other_login.body["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Replaying the rotated token: reuse detected, the whole family revoked.
    let reused = refresh(alice.refresh.clone()).await.expect(401);
    assert_eq!(reused.code(), "refresh_token_reused");
    let revoked = refresh(second_refresh).await.expect(401);
    assert_eq!(
        revoked.code(),
        "invalid_refresh_token",
        "the thief's newer token died with the family"
    );
    refresh(other_refresh).await.expect(200);

    refresh("not-a-token".into()).await.expect(401);
    app.call(Method::POST, "/v1/auth/refresh", None, Some(json!({})))
        .await
        .expect(422);
}

both_backends!(logout_and_password_change_revoke_sessions, logout_scenario);
async fn logout_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let second = app.login("alice", &alice.password).await.expect(200);
    let second_access = second.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let second_refresh = second.body["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let third = app.login("alice", &alice.password).await.expect(200);
    let third_refresh = third.body["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Logout revokes this session's refresh token only.
    app.call(Method::POST, "/v1/auth/logout", Some(&second_access), None)
        .await
        .expect(204);
    let refresh = |token: &str| {
        app.call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": token })),
        )
    };
    refresh(&second_refresh).await.expect(401);

    // Changing the password revokes the other sessions but not this one.
    let wrong = app
        .post(
            "/v1/auth/password",
            &alice,
            json!({
                "current_password": "wrong-password-here", "new_password": "lantern-orbit-meadow-42"
            }),
        )
        .await
        .expect(403);
    assert_eq!(wrong.code(), "invalid_credentials");
    app.post(
        "/v1/auth/password",
        &alice,
        json!({
            "current_password": alice.password, "new_password": "lantern-orbit-meadow-42"
        }),
    )
    .await
    .expect(204);
    refresh(&third_refresh).await.expect(401);
    refresh(&alice.refresh).await.expect(200);
    app.login("alice", &alice.password).await.expect(401);
    app.login("alice", "lantern-orbit-meadow-42")
        .await
        .expect(200);

    // A logged-out login's access token is refused at once, not at its
    // expiry.
    app.call(Method::GET, "/v1/me", Some(&second_access), None)
        .await
        .expect(401);

    // Logout everywhere: this login's and the others' access tokens stop
    // working now.
    let fresh = app
        .login("alice", "lantern-orbit-meadow-42")
        .await
        .expect(200);
    let fresh_access = fresh.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(Method::GET, "/v1/me", Some(&alice.access), None)
        .await
        .expect(200);
    app.call(
        Method::POST,
        "/v1/auth/logout?all=true",
        Some(&fresh_access),
        None,
    )
    .await
    .expect(204);
    for token in [&fresh_access, &alice.access] {
        app.call(Method::GET, "/v1/me", Some(token), None)
            .await
            .expect(401);
    }
    let fourth = app
        .login("alice", "lantern-orbit-meadow-42")
        .await
        .expect(200);
    assert!(fourth.body["tokens"]["refresh_token"].is_string());
}

both_backends!(search_finds_by_prefix_without_emails, search_scenario);
async fn search_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    for name in ["bob", "bobby", "bobcat", "carol"] {
        app.register(name).await;
    }
    let found = app.get("/v1/users?q=BOB", &alice).await.expect(200);
    let names: Vec<&str> = found.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "bobby", "bobcat"]);
    assert!(
        !found.body.to_string().contains("@example.com"),
        "no e-mails: {}",
        found.body
    );
    app.get("/v1/users?q=b", &alice).await.expect(422);
    app.get("/v1/users?q=b%00", &alice).await.expect(422);
    // Unicode case folding is the same on both backends.
    let elodie = app.register("elodie").await;
    app.patch(
        "/v1/me",
        &elodie,
        json!({ "display_name": "Élodie Durand" }),
    )
    .await
    .expect(200);
    let accented = app.get("/v1/users?q=%C3%A9lo", &alice).await.expect(200);
    assert_eq!(
        accented.body["users"][0]["username"], "elodie",
        "{}",
        accented.body
    );
    // Wildcards are literal.
    let none = app.get("/v1/users?q=%25%25", &alice).await.expect(200);
    assert_eq!(none.body["users"].as_array().unwrap().len(), 0);
    // At most 20 results.
    for i in 0..22 {
        app.register(&format!("zed{i:02}")).await;
    }
    let many = app.get("/v1/users?q=zed", &alice).await.expect(200);
    assert_eq!(many.body["users"].as_array().unwrap().len(), 20);
}

both_backends!(contacts_requests_and_blocks, contacts_scenario);
async fn contacts_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let to = |u: &testkit::app::TestUser| format!("/v1/contacts/{}", u.id);

    let asked = app.post(&to(&bob), &alice, json!({})).await.expect(200);
    assert_eq!(asked.body["status"], "outgoing");
    let incoming = app
        .get("/v1/contacts?status=incoming", &bob)
        .await
        .expect(200);
    assert_eq!(incoming.body["contacts"][0]["user"]["username"], "alice");
    let accepted = app
        .patch(&to(&alice), &bob, json!({ "action": "accept" }))
        .await
        .expect(200);
    assert_eq!(accepted.body["status"], "accepted");
    let list = app.get("/v1/contacts", &alice).await.expect(200);
    assert_eq!(list.body["contacts"][0]["status"], "accepted");

    // Decline.
    app.post(&to(&bob), &carol, json!({})).await.expect(200);
    app.patch(&to(&carol), &bob, json!({ "action": "decline" }))
        .await
        .expect(200);
    let none = app.get("/v1/contacts", &carol).await.expect(200);
    assert_eq!(none.body["contacts"].as_array().unwrap().len(), 0);
    app.patch(&to(&carol), &bob, json!({ "action": "accept" }))
        .await
        .expect(404);

    // Block: bob blocks alice. Alice's side disappears; she cannot start a
    // direct conversation with him, nor post in the existing one.
    let existing = app.direct(&alice, &bob).await;
    let earlier = app.send(&existing, &alice, "before the block").await;
    app.patch(&to(&alice), &bob, json!({ "action": "block" }))
        .await
        .expect(200);
    let alice_view = app.get("/v1/contacts", &alice).await.expect(200);
    assert_eq!(alice_view.body["contacts"].as_array().unwrap().len(), 0);
    let refused = app
        .post(
            "/v1/conversations",
            &alice,
            json!({ "kind": "direct", "user_id": bob.id }),
        )
        .await
        .expect(403);
    assert_eq!(refused.code(), "blocked");
    app.post(
        &format!("/v1/conversations/{existing}/messages"),
        &alice,
        json!({ "body": "hi" }),
    )
    .await
    .expect(403);
    // Her request is swallowed: it looks pending to her, bob never sees it.
    let pending = app.post(&to(&bob), &alice, json!({})).await.expect(200);
    assert_eq!(pending.body["status"], "outgoing");
    let bob_incoming = app
        .get("/v1/contacts?status=incoming", &bob)
        .await
        .expect(200);
    assert_eq!(bob_incoming.body["contacts"].as_array().unwrap().len(), 0);
    // Nor can she get around it through a group, or keep editing and
    // reacting in the old conversation.
    let around = app
        .post(
            "/v1/conversations",
            &alice,
            json!({ "kind": "group", "name": "sneaky", "member_ids": [bob.id] }),
        )
        .await
        .expect(403);
    assert_eq!(around.code(), "blocked");
    let own_group = app.group(&alice, "mine", &[]).await;
    app.post(
        &format!("/v1/conversations/{own_group}/members"),
        &alice,
        json!({ "user_ids": [bob.id] }),
    )
    .await
    .expect(403);
    let old_message = earlier["id"].as_str().unwrap();
    app.patch(
        &format!("/v1/conversations/{existing}/messages/{old_message}"),
        &alice,
        json!({ "body": "edited" }),
    )
    .await
    .expect(403);
    app.call(
        reqwest::Method::PUT,
        &format!("/v1/conversations/{existing}/messages/{old_message}/reactions/👍"),
        Some(&alice.access),
        None,
    )
    .await
    .expect(403);
    // Unblock restores messaging.
    app.patch(&to(&alice), &bob, json!({ "action": "unblock" }))
        .await
        .expect(200);
    app.send(&existing, &alice, "hello again").await;

    app.post(&format!("/v1/contacts/{}", alice.id), &alice, json!({}))
        .await
        .expect(422);
    app.post(
        "/v1/contacts/00000000-0000-0000-0000-000000000000",
        &alice,
        json!({}),
    )
    .await
    .expect(404);
    app.patch(&to(&bob), &alice, json!({ "action": "hug" }))
        .await
        .expect(422);
}

/// Failed logins are limited per account: the limit answers 429 with
/// Retry-After (even for the right password), and lifts when the window ends.
#[tokio::test]
async fn failed_logins_are_rate_limited_and_released_embedded() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.auth.max_failed_logins_per_account = 3;
        c.auth.login_window_secs = 2;
    })
    .await
    .unwrap();
    rate_limit_scenario(&app).await;
}

/// The same through Redis, so the limit holds across replicas.
#[tokio::test]
async fn failed_logins_are_rate_limited_through_redis() {
    let Some(redis) = testkit::servers::redis_url() else {
        return;
    };
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.auth.max_failed_logins_per_account = 3;
        c.auth.login_window_secs = 2;
        c.redis.url = Some(redis);
    })
    .await
    .unwrap();
    rate_limit_scenario(&app).await;
}

async fn rate_limit_scenario(app: &TestApp) {
    // A unique name: the Redis keys outlive the test's database.
    let name = format!("rl{}", &uuid_suffix());
    let user = app.register(&name).await;
    // Twenty guesses at once: the attempt is counted before the (slow)
    // password check, so no more than the limit get an answer.
    let guesses =
        futures_util::future::join_all((0..20).map(|_| app.login(&name, "wrong-password-x"))).await;
    let answered = guesses.iter().filter(|r| r.status == 401).count();
    let limited = guesses.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        (answered, limited),
        (3, 17),
        "only the limit's worth of guesses were checked"
    );
    let limited = app.login(&name, &user.password).await.expect(429);
    assert_eq!(limited.code(), "too_many_requests");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(300)).await;
    app.login(&name, &user.password).await.expect(200);
}

fn uuid_suffix() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .to_string()
}

both_backends!(audit_log_is_for_admins, audit_scenario);
async fn audit_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    app.login("alice", "wrong-password-x").await.expect(401);
    app.get("/v1/admin/audit", &alice).await.expect(404);
}

/// JWKS publishes the key that verifies access tokens.
#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let alice = app.register("alice").await;
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .expect(200);
    let key = &jwks.body["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    let header = alice.access.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], key["kid"]);
}

/// Everything a user can repeat that costs the service is limited: sign-ups
/// per address (each costs an Argon2id hash), messages, reactions, calls
/// and call joins per user, answered 429 `rate_limited` with Retry-After;
/// other users and addresses are not affected. Through Redis too, so the
/// limits hold across replicas.
async fn quotas_scenario(app: &TestApp) {
    // A fresh address per run: the test Redis is shared by every test.
    let me = format!("2001:db8:{:x}:{:x}::1", rand_u16(), rand_u16());
    let other = format!("2001:db8:{:x}:{:x}::2", rand_u16(), rand_u16());
    let register = |name: String, address: String| {
        let http = app.http.clone();
        let url = app.url("/v1/auth/register");
        async move {
            http.post(url)
                .header("x-forwarded-for", address)
                .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "plum-ferry-quartz-91", "accepted_terms": terms()}))
                .send()
                .await
                .unwrap()
        }
    };
    let tag = rand_u16();
    for i in 0..3 {
        let r = register(format!("quota{tag}a{i}"), me.clone()).await;
        assert_eq!(r.status(), 201);
    }
    let refused = register(format!("quota{tag}a3"), me.clone()).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        register(format!("quota{tag}b0"), other.clone())
            .await
            .status(),
        201,
        "another address is not affected"
    );
}

/// Messages (sending and editing), reactions and calls: per user.
async fn user_quotas_scenario(app: &TestApp) {
    let tag = rand_u16();
    let alice = app.register(&format!("qa{tag}")).await;
    let bob = app.register(&format!("qb{tag}")).await;
    let chat = app.direct(&alice, &bob).await;
    let path = format!("/v1/conversations/{chat}/messages");
    let mut last = String::new();
    for i in 0..4 {
        last = app
            .post(&path, &alice, json!({"body": format!("m{i}")}))
            .await
            .expect(201)
            .body["id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let limited = app
        .patch(&format!("{path}/{last}"), &alice, json!({"body": "edited"}))
        .await
        .expect(429);
    assert_eq!(limited.code(), "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    app.post(&path, &bob, json!({"body": "bob is fine"}))
        .await
        .expect(201);
    for emoji in ["👍", "🎉", "❤️"] {
        app.call(
            Method::PUT,
            &format!("{path}/{last}/reactions/{emoji}"),
            Some(&bob.access),
            None,
        )
        .await
        .expect(200);
    }
    let reaction = app
        .call(
            Method::PUT,
            &format!("{path}/{last}/reactions/😀"),
            Some(&bob.access),
            None,
        )
        .await
        .expect(429);
    assert_eq!(reaction.code(), "rate_limited");
    let start = async |who: &testkit::client::TestUser| {
        app.post(
            "/v1/calls",
            who,
            json!({"conversation_id": chat, "kind": "audio"}),
        )
        .await
    };
    let first = start(&alice).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/v1/calls/{first}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    let second = start(&alice).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/v1/calls/{second}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    assert_eq!(start(&alice).await.expect(429).code(), "rate_limited");
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

fn quota(limit: u32) -> control_plane::config::Quota {
    control_plane::config::Quota {
        limit,
        window_secs: 60,
    }
}

/// Sign-ups limited per (forwarded) address; nothing else limited, since
/// the shared test Redis counts 127.0.0.1's sign-ups for every test.
fn signup_config(c: &mut control_plane::ControlPlaneConfig) {
    c.auth.client_address_header = Some("x-forwarded-for".into());
    c.rate_limits.signups_per_address = quota(3);
}

fn user_quota_config(c: &mut control_plane::ControlPlaneConfig) {
    c.rate_limits.messages_per_user = quota(4);
    c.rate_limits.reactions_per_user = quota(3);
    c.rate_limits.calls_per_user = quota(2);
}

#[tokio::test]
async fn repeated_actions_are_rate_limited_embedded() {
    let app = TestApp::spawn_with(Backend::Sqlite, signup_config)
        .await
        .unwrap();
    quotas_scenario(&app).await;
    let app = TestApp::spawn_with(Backend::Sqlite, user_quota_config)
        .await
        .unwrap();
    user_quotas_scenario(&app).await;
}

#[tokio::test]
async fn repeated_actions_are_rate_limited_through_redis() {
    let redis = testkit::servers::redis_url().expect("TEST_REDIS_URL (scripts/test sets it)");
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        signup_config(c);
        c.redis.url = Some(redis.clone());
    })
    .await
    .unwrap();
    quotas_scenario(&app).await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        user_quota_config(c);
        c.redis.url = Some(redis);
    })
    .await
    .unwrap();
    user_quotas_scenario(&app).await;
}
