//! Direct and group conversations, membership and roles.

use serde_json::json;
use testkit::app::{Backend, TestApp};
use testkit::both_backends;

both_backends!(direct_conversations_are_one_per_pair, direct_scenario);
async fn direct_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = app
        .post(
            "/v1/conversations",
            &alice,
            json!({ "kind": "direct", "user_id": bob.id }),
        )
        .await
        .expect(201);
    let again = app
        .post(
            "/v1/conversations",
            &bob,
            json!({ "kind": "direct", "user_id": alice.id }),
        )
        .await
        .expect(200);
    assert_eq!(
        first.body["id"], again.body["id"],
        "the same conversation from either side"
    );
    assert_eq!(first.body["kind"], "direct");
    assert_eq!(first.body["members"].as_array().unwrap().len(), 2);
    app.post(
        "/v1/conversations",
        &alice,
        json!({ "kind": "direct", "user_id": alice.id }),
    )
    .await
    .expect(422);
    app.post(
        "/v1/conversations",
        &alice,
        json!({ "kind": "direct", "user_id": "00000000-0000-0000-0000-000000000000" }),
    )
    .await
    .expect(404);
    let id = first.body["id"].as_str().unwrap();
    let rename = app
        .patch(
            &format!("/v1/conversations/{id}"),
            &alice,
            json!({ "name": "x" }),
        )
        .await
        .expect(422);
    assert_eq!(rename.code(), "not_a_group");
}

both_backends!(non_members_cannot_see_anything, privacy_scenario);
async fn privacy_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let group = app.group(&alice, "secret plans", &[&bob]).await;
    let message = app.send(&group, &alice, "the plan").await;
    let message_id = message["id"].as_str().unwrap();
    let missing = "01900000-0000-7000-8000-000000000000";

    // Every route answers mallory exactly as it answers for an id that
    // does not exist at all.
    for conversation in [group.as_str(), missing] {
        let base = format!("/v1/conversations/{conversation}");
        let replies = [
            app.get(&base, &mallory).await,
            app.get(&format!("{base}/messages"), &mallory).await,
            app.post(
                &format!("{base}/messages"),
                &mallory,
                json!({ "body": "let me in" }),
            )
            .await,
            app.patch(&base, &mallory, json!({ "name": "pwned" })).await,
            app.delete(&base, &mallory).await,
            app.post(
                &format!("{base}/members"),
                &mallory,
                json!({ "user_ids": [mallory.id] }),
            )
            .await,
            app.delete(&format!("{base}/members/{}", bob.id), &mallory)
                .await,
            app.post(
                &format!("{base}/read"),
                &mallory,
                json!({ "message_id": message_id }),
            )
            .await,
            app.patch(
                &format!("{base}/messages/{message_id}"),
                &mallory,
                json!({ "body": "x" }),
            )
            .await,
            app.delete(&format!("{base}/messages/{message_id}"), &mallory)
                .await,
            app.call(
                reqwest::Method::PUT,
                &format!("{base}/messages/{message_id}/reactions/👍"),
                Some(&mallory.access),
                None,
            )
            .await,
        ];
        for reply in replies {
            assert_eq!(reply.status, 404, "{conversation}: {}", reply.body);
            assert_eq!(reply.code(), "not_found");
            assert!(!reply.body.to_string().contains("secret"), "{}", reply.body);
        }
    }
    let list = app.get("/v1/conversations", &mallory).await.expect(200);
    assert_eq!(list.body["conversations"].as_array().unwrap().len(), 0);
    // Nothing mallory tried changed anything.
    let seen = app
        .get(&format!("/v1/conversations/{group}/messages"), &bob)
        .await
        .expect(200);
    assert_eq!(seen.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(seen.body["messages"][0]["body"], "the plan");
    let info = app
        .get(&format!("/v1/conversations/{group}"), &bob)
        .await
        .expect(200);
    assert_eq!(info.body["name"], "secret plans");
}

both_backends!(group_roles_and_membership, group_scenario);
async fn group_scenario(app: TestApp) {
    let owner = app.register("owner").await;
    let admin = app.register("admin").await;
    let member = app.register("member").await;
    let newbie = app.register("newbie").await;
    let group = app.group(&owner, "team", &[&admin, &member]).await;
    let base = format!("/v1/conversations/{group}");

    // Only the owner changes roles.
    app.patch(
        &format!("{base}/members/{}", admin.id),
        &member,
        json!({ "role": "admin" }),
    )
    .await
    .expect(403);
    app.patch(
        &format!("{base}/members/{}", admin.id),
        &owner,
        json!({ "role": "admin" }),
    )
    .await
    .expect(204);
    app.patch(
        &format!("{base}/members/{}", admin.id),
        &owner,
        json!({ "role": "owner" }),
    )
    .await
    .expect(422);

    // Members cannot rename or add; admins can.
    let forbidden = app
        .patch(&base, &member, json!({ "name": "mine now" }))
        .await
        .expect(403);
    assert_eq!(forbidden.code(), "forbidden");
    let renamed = app
        .patch(&base, &admin, json!({ "name": "  the team " }))
        .await
        .expect(200);
    assert_eq!(renamed.body["name"], "the team");
    app.patch(&base, &admin, json!({ "name": "" }))
        .await
        .expect(422);
    app.post(
        &format!("{base}/members"),
        &member,
        json!({ "user_ids": [newbie.id] }),
    )
    .await
    .expect(403);
    let added = app
        .post(
            &format!("{base}/members"),
            &admin,
            json!({ "user_ids": [newbie.id, member.id] }),
        )
        .await
        .expect(200);
    assert_eq!(
        added.body["added"],
        json!([newbie.id]),
        "existing members are skipped"
    );
    app.post(
        &format!("{base}/members"),
        &admin,
        json!({ "user_ids": ["00000000-0000-0000-0000-000000000000"] }),
    )
    .await
    .expect(422);

    // Admins remove members but not the owner; members remove nobody.
    app.delete(&format!("{base}/members/{}", owner.id), &admin)
        .await
        .expect(403);
    app.delete(&format!("{base}/members/{}", newbie.id), &member)
        .await
        .expect(403);
    app.delete(&format!("{base}/members/{}", newbie.id), &admin)
        .await
        .expect(204);
    app.get(&base, &newbie).await.expect(404);

    // Leaving; then the owner leaves and the admin inherits the group.
    app.delete(&format!("{base}/members/{}", member.id), &member)
        .await
        .expect(204);
    app.delete(&format!("{base}/members/{}", owner.id), &owner)
        .await
        .expect(204);
    let after = app.get(&base, &admin).await.expect(200);
    assert_eq!(after.body["role"], "owner");
    assert_eq!(after.body["members"].as_array().unwrap().len(), 1);

    // Only the owner deletes; then it is gone for everyone.
    app.delete(&base, &admin).await.expect(204);
    app.get(&base, &admin).await.expect(404);
}

/// The member limit from configuration is enforced at creation and on add.
#[tokio::test]
async fn group_member_limit_is_enforced() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.limits.max_group_members = 3)
        .await
        .unwrap();
    let users = [
        app.register("user1").await,
        app.register("user2").await,
        app.register("user3").await,
        app.register("user4").await,
    ];
    let too_many = app
        .post("/v1/conversations", &users[0], json!({
            "kind": "group", "name": "big", "member_ids": [users[1].id, users[2].id, users[3].id]
        }))
        .await
        .expect(409);
    assert_eq!(too_many.code(), "member_limit");
    let group = app.group(&users[0], "small", &[&users[1], &users[2]]).await;
    let full = app
        .post(
            &format!("/v1/conversations/{group}/members"),
            &users[0],
            json!({ "user_ids": [users[3].id] }),
        )
        .await
        .expect(409);
    assert_eq!(full.code(), "member_limit");
}

both_backends!(
    list_is_ordered_by_activity_with_unread_counts,
    list_scenario
);
async fn list_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.group(&alice, &format!("g{i}"), &[&bob]).await);
    }
    // Activity in g2 moves it to the top; bob has 2 unread there.
    app.send(&ids[2], &alice, "one").await;
    let last = app.send(&ids[2], &alice, "two").await;
    let page = app.get("/v1/conversations?limit=2", &bob).await.expect(200);
    let convs = page.body["conversations"].as_array().unwrap();
    assert_eq!(convs[0]["name"], "g2");
    assert_eq!(convs[0]["unread_count"], 2);
    assert_eq!(convs[0]["last_message"]["body"], "two");
    assert_eq!(convs[1]["name"], "g4");
    // The sender has nothing unread.
    let alices = app
        .get("/v1/conversations?limit=1", &alice)
        .await
        .expect(200);
    assert_eq!(alices.body["conversations"][0]["unread_count"], 0);

    // Cursor pagination visits every conversation exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=2&before={c}"),
            None => "/v1/conversations?limit=2".to_owned(),
        };
        let page = app.get(&path, &bob).await.expect(200);
        for c in page.body["conversations"].as_array().unwrap() {
            seen.push(c["name"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["g2", "g4", "g3", "g1", "g0"]);

    // Reading clears the unread count.
    app.post(
        &format!("/v1/conversations/{}/read", ids[2]),
        &bob,
        json!({ "message_id": last["id"] }),
    )
    .await
    .expect(200);
    let after = app.get("/v1/conversations?limit=1", &bob).await.expect(200);
    assert_eq!(after.body["conversations"][0]["unread_count"], 0);
    app.get("/v1/conversations?limit=101", &bob)
        .await
        .expect(400);
    app.get("/v1/conversations?before=garbage", &bob)
        .await
        .expect(400);
}
