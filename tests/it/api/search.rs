//! Full-text search over messages: only what the caller may read, deleted
//! messages never, edits at once; on SQLite (FTS5) and Postgres (tsvector).

use serde_json::Value;
use testkit::app::TestApp;
use testkit::both_backends;

fn bodies(results: &Value) -> Vec<String> {
    results["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message"]["body"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(search_finds_only_what_the_caller_may_read, search_scenario);
async fn search_scenario(app: TestApp) {
    let (alice, bob, carol, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    let group = app.group(&alice, "trip", &[&carol]).await;
    let secret = app.direct(&mallory, &bob).await;
    let lunch = app
        .send(&chat, &alice, "Lunch at the Harbour tomorrow?")
        .await;
    app.send(&chat, &bob, "the harbour café is closed on Mondays")
        .await;
    let notes = app.send(&chat, &bob, "meeting notes").await;
    app.send(&group, &carol, "harbour trip photos").await;
    app.send(&secret, &mallory, "secret harbour plan").await;
    let search = |user, query: &str| {
        let path = format!("/v1/messages/search?{query}");
        let app = &app;
        async move { app.get(&path, user).await.expect(200).body }
    };

    // Alice finds hers, newest first, never Bob's talk with Mallory.
    let found = search(&alice, "q=harbour").await;
    assert_eq!(
        bodies(&found),
        [
            "harbour trip photos",
            "the harbour café is closed on Mondays",
            "Lunch at the Harbour tomorrow?"
        ]
    );
    // The passage marks the match (case folded), as plain text parts.
    let parts = found["hits"][2]["snippet"].as_array().unwrap();
    assert!(
        parts.iter().any(
            |p| p["hit"] == true && p["text"].as_str().unwrap().eq_ignore_ascii_case("harbour")
        ),
        "{parts:?}"
    );
    let whole: String = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert!(whole.contains("Lunch at the"), "{whole}");
    assert_eq!(bodies(&search(&bob, "q=harbour").await).len(), 3);
    assert_eq!(
        bodies(&search(&mallory, "q=harbour").await),
        ["secret harbour plan"]
    );
    // Every word is required.
    assert_eq!(
        bodies(&search(&alice, "q=harbour%20closed").await),
        ["the harbour café is closed on Mondays"]
    );
    // One conversation; a stranger's filter on it is 404.
    assert_eq!(
        bodies(&search(&alice, &format!("q=harbour&conversation_id={chat}")).await).len(),
        2
    );
    let peek = app
        .get(
            &format!("/v1/messages/search?q=harbour&conversation_id={chat}"),
            &mallory,
        )
        .await;
    assert_eq!(peek.status, 404);

    // Pages of one.
    let first = search(&alice, "q=harbour&limit=1").await;
    assert_eq!(bodies(&first), ["harbour trip photos"]);
    let next = first["next_before"].as_str().unwrap();
    let second = search(&alice, &format!("q=harbour&limit=1&before={next}")).await;
    assert_eq!(bodies(&second), ["the harbour café is closed on Mondays"]);

    // Deleted messages stop matching; edits match at once.
    let id = lunch["id"].as_str().unwrap();
    app.delete(&format!("/v1/conversations/{chat}/messages/{id}"), &alice)
        .await
        .expect(200);
    let id = notes["id"].as_str().unwrap();
    app.patch(
        &format!("/v1/conversations/{chat}/messages/{id}"),
        &bob,
        serde_json::json!({"body": "meeting notes: harbour budget"}),
    )
    .await
    .expect(200);
    assert_eq!(
        bodies(&search(&alice, "q=harbour").await),
        [
            "harbour trip photos",
            "meeting notes: harbour budget",
            "the harbour café is closed on Mondays"
        ]
    );
    assert!(bodies(&search(&alice, "q=Lunch").await).is_empty());

    // Query syntax of either engine is just text; no input is a 5xx.
    for q in [
        "%22harbour",
        "harbour%20AND%20OR%20NEAR(",
        "*",
        "-",
        "a%22b%22c",
        "%C3%A9t%C3%A9",
        "NOT",
    ] {
        let reply = app.get(&format!("/v1/messages/search?q={q}"), &alice).await;
        assert_eq!(reply.status, 200, "{q}: {:?}", reply.body);
    }
    for bad in [
        "q=",
        "q=%20%20",
        &format!("q={}", "x".repeat(201)),
        "limit=5",
    ] {
        let reply = app.get(&format!("/v1/messages/search?{bad}"), &alice).await;
        assert_eq!(reply.status, 400, "{bad}");
    }
    // The page of a conversation does not pretend to filter.
    let reply = app
        .get(
            &format!("/v1/conversations/{chat}/messages?q=harbour"),
            &alice,
        )
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (400, "use_search"));
}
