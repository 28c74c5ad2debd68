//! Messages: idempotent sends, pagination, edits, deletes, reactions,
//! replies and read pointers.

use std::collections::HashSet;

use serde_json::{Value, json};
use testkit::app::TestApp;
use testkit::both_backends;

both_backends!(retried_sends_store_one_message, idempotency_scenario);
async fn idempotency_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.direct(&alice, &bob).await;
    let path = format!("/v1/conversations/{chat}/messages");
    let body = json!({ "body": "exactly once", "client_message_id": "c-1" });

    let first = app.post(&path, &alice, body.clone()).await.expect(201);
    let retry = app.post(&path, &alice, body.clone()).await.expect(200);
    assert_eq!(first.body["id"], retry.body["id"]);
    assert_eq!(first.body["seq"], 1);

    // Eight concurrent retries of a new send: one message, one 201.
    let racing = json!({ "body": "raced", "client_message_id": "c-2" });
    let replies =
        futures_util::future::join_all((0..8).map(|_| app.post(&path, &alice, racing.clone())))
            .await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let ids: HashSet<String> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        created,
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ids.len(), 1);

    // The same client id from another author is another message.
    let bobs = app.post(&path, &bob, body).await.expect(201);
    assert_ne!(bobs.body["id"], first.body["id"]);
    let all = app.get(&path, &alice).await.expect(200);
    let seqs: Vec<i64> = all.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

both_backends!(
    pagination_is_exactly_once_while_messages_arrive,
    pagination_scenario
);
async fn pagination_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.group(&alice, "busy", &[&bob]).await;
    let path = format!("/v1/conversations/{chat}/messages");
    for i in 0..25 {
        app.send(&chat, &alice, &format!("m{i}")).await;
    }

    // Walk backwards from the newest while bob keeps posting.
    let newest = app
        .get(&format!("{path}?limit=7"), &alice)
        .await
        .expect(200);
    let mut seen: Vec<String> = bodies(&newest.body);
    let mut oldest = newest.body["messages"][0]["seq"].as_i64().unwrap();
    let mut more = newest.body["has_more"].as_bool().unwrap();
    let mut posted = 0;
    while more {
        app.send(&chat, &bob, &format!("late{posted}")).await;
        posted += 1;
        let page = app
            .get(&format!("{path}?limit=7&before={oldest}"), &alice)
            .await
            .expect(200);
        let mut older = bodies(&page.body);
        older.extend(seen);
        seen = older;
        oldest = page.body["messages"][0]["seq"].as_i64().unwrap();
        more = page.body["has_more"].as_bool().unwrap();
    }
    let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected, "every older message exactly once, in order");

    // Walking forwards from the start sees everything, late ones included.
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(&format!("{path}?limit=10&after={after}"), &alice)
            .await
            .expect(200);
        let messages = page.body["messages"].as_array().unwrap();
        if messages.is_empty() {
            break;
        }
        after = messages.last().unwrap()["seq"].as_i64().unwrap();
        forward.extend(bodies(&page.body));
        if !page.body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(forward.len(), 25 + posted);
    let unique: HashSet<&String> = forward.iter().collect();
    assert_eq!(unique.len(), forward.len(), "no duplicates");
    app.get(&format!("{path}?before=3&after=1"), &alice)
        .await
        .expect(400);
    app.get(&format!("{path}?limit=0"), &alice)
        .await
        .expect(400);
}

fn bodies(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

both_backends!(edit_delete_react_reply_and_read, lifecycle_scenario);
async fn lifecycle_scenario(app: TestApp) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let group = app.group(&alice, "g", &[&bob]).await;
    let base = format!("/v1/conversations/{group}/messages");
    let bobs = app.send(&group, &bob, "hello").await;
    let id = bobs["id"].as_str().unwrap();

    // Edits: author only.
    app.patch(&format!("{base}/{id}"), &alice, json!({ "body": "hacked" }))
        .await
        .expect(403);
    let edited = app
        .patch(
            &format!("{base}/{id}"),
            &bob,
            json!({ "body": "hello, world" }),
        )
        .await
        .expect(200);
    assert_eq!(edited.body["body"], "hello, world");
    assert!(edited.body["edited_at"].is_string());

    // Replies must point into the same conversation.
    let reply = app
        .post(&base, &alice, json!({ "body": "hi bob", "reply_to": id }))
        .await
        .expect(201);
    assert_eq!(reply.body["reply_to"], id);
    let other = app.group(&alice, "elsewhere", &[]).await;
    let foreign = app.send(&other, &alice, "elsewhere").await;
    let bad = app
        .post(
            &base,
            &alice,
            json!({ "body": "x", "reply_to": foreign["id"] }),
        )
        .await
        .expect(422);
    assert_eq!(bad.code(), "invalid_reply_to");

    // Reactions: counts per emoji, idempotent, with "reacted" per viewer.
    let react = |user: &str, emoji: &str| {
        let path = format!("{base}/{id}/reactions/{emoji}");
        let user = user.to_owned();
        let app = &app;
        async move {
            app.call(reqwest::Method::PUT, &path, Some(&user), None)
                .await
        }
    };
    react(&alice.access, "👍").await.expect(200);
    react(&alice.access, "👍").await.expect(200);
    let both = react(&bob.access, "👍").await.expect(200);
    assert_eq!(
        both.body["reactions"],
        json!([{ "emoji": "👍", "count": 2, "reacted": true }])
    );
    react(&bob.access, "🎉").await.expect(200);
    react(&bob.access, "nope").await.expect(422);
    // One emoji per reaction (a sequence like 👩🏽‍💻 is one), not a string of
    // them; and at most 20 different ones per person on a message.
    react(&bob.access, "👍👍").await.expect(422);
    react(&bob.access, "👍x").await.expect(422);
    react(&bob.access, "👩🏽‍💻").await.expect(200);
    for i in 0..17 {
        let emoji = char::from_u32(0x1F600 + i).unwrap().to_string();
        react(&bob.access, &emoji).await.expect(200);
    }
    let capped = react(&bob.access, "🚀").await.expect(409);
    assert_eq!(capped.code(), "too_many_reactions");
    react(&bob.access, "🎉").await.expect(200); // already there: fine
    for i in 0..17 {
        let emoji = char::from_u32(0x1F600 + i).unwrap().to_string();
        app.delete(&format!("{base}/{id}/reactions/{emoji}"), &bob)
            .await
            .expect(200);
    }
    app.delete(&format!("{base}/{id}/reactions/👩🏽‍💻"), &bob)
        .await
        .expect(200);
    let unreacted = app
        .delete(&format!("{base}/{id}/reactions/👍"), &alice)
        .await
        .expect(200);
    let counts: Vec<(String, i64, bool)> = unreacted.body["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["emoji"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
                r["reacted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts.len(), 2);
    assert!(counts.contains(&("👍".to_owned(), 1, false)), "{counts:?}");
    let page = app.get(&base, &bob).await.expect(200);
    assert_eq!(
        page.body["messages"][0]["reactions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Read pointer: marks read, never moves back, unread count follows.
    // Sending moves the sender's own pointer: alice replied after bob's
    // message, so she has read it; bob has not read her reply.
    let alices = app
        .get(&format!("/v1/conversations/{group}"), &alice)
        .await
        .expect(200);
    assert_eq!(alices.body["unread_count"], 0);
    let bobs_view = app
        .get(&format!("/v1/conversations/{group}"), &bob)
        .await
        .expect(200);
    assert_eq!(bobs_view.body["unread_count"], 1);
    let read = app
        .post(
            &format!("/v1/conversations/{group}/read"),
            &bob,
            json!({ "message_id": reply.body["id"] }),
        )
        .await
        .expect(200);
    assert_eq!(read.body["last_read_seq"], 2);
    let bobs_view = app
        .get(&format!("/v1/conversations/{group}"), &bob)
        .await
        .expect(200);
    assert_eq!(bobs_view.body["unread_count"], 0);
    let back = app
        .post(
            &format!("/v1/conversations/{group}/read"),
            &bob,
            json!({ "message_id": id }),
        )
        .await
        .expect(200);
    assert_eq!(back.body["last_read_seq"], 2, "never backwards");

    // Deletion: the author or a group admin; a tombstone keeps its place.
    let mine = app.send(&group, &alice, "to be deleted").await;
    let mine_id = mine["id"].as_str().unwrap();
    app.delete(&format!("{base}/{mine_id}"), &bob)
        .await
        .expect(403);
    let by_admin = app
        .delete(&format!("{base}/{id}"), &alice)
        .await
        .expect(200);
    assert_eq!(by_admin.body["body"], Value::Null);
    assert!(by_admin.body["deleted_at"].is_string());
    app.delete(&format!("{base}/{mine_id}"), &alice)
        .await
        .expect(200);
    let after = app.get(&base, &bob).await.expect(200);
    let messages = after.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "tombstones stay in the history");
    assert_eq!(messages[0]["body"], Value::Null);
    assert_eq!(messages[0]["reactions"], json!([]));
    app.patch(&format!("{base}/{id}"), &bob, json!({ "body": "revive" }))
        .await
        .expect(409);
    react(&alice.access, "👍").await.expect(409);

    // Validation.
    app.post(&base, &alice, json!({ "body": "nul\u{0}byte" }))
        .await
        .expect(422);
    app.post(
        &base,
        &alice,
        json!({ "body": "tabs\tand\nnewlines are text" }),
    )
    .await
    .expect(201);
    app.post(&base, &alice, json!({ "body": "   " }))
        .await
        .expect(422);
    app.post(&base, &alice, json!({ "body": "x".repeat(4001) }))
        .await
        .expect(422);
    app.post(
        &base,
        &alice,
        json!({ "body": "x", "client_message_id": "" }),
    )
    .await
    .expect(422);
}
