//! Bad input gets a 4xx with the JSON error body, never a 500; the OpenAPI
//! document and Swagger UI are served.

use reqwest::Method;
use testkit::app::{Backend, TestApp};

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.max_body_bytes = 4096)
        .await
        .unwrap();
    let alice = app.register("alice").await;
    let raw = |method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = app
            .http
            .request(method, app.url(path))
            .bearer_auth(&alice.access)
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        async move { testkit::client::ApiClient::reply(request.send().await.unwrap()).await }
    };
    let cases = [
        (
            raw(
                Method::POST,
                "/v1/conversations",
                Some("application/json"),
                b"{not json".to_vec(),
            )
            .await,
            400,
            "malformed_json",
        ),
        (
            raw(
                Method::POST,
                "/v1/conversations",
                Some("text/plain"),
                b"{}".to_vec(),
            )
            .await,
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                Method::POST,
                "/v1/conversations",
                Some("application/json"),
                br#"{"kind":"group","name":5}"#.to_vec(),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            raw(
                Method::POST,
                "/v1/conversations",
                Some("application/json"),
                br#"{"kind":"triad"}"#.to_vec(),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            raw(
                Method::PATCH,
                "/v1/me",
                Some("application/json"),
                br#"{"unknown_field":1}"#.to_vec(),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            raw(
                Method::POST,
                "/v1/conversations",
                Some("application/json"),
                vec![b' '; 10_000],
            )
            .await,
            413,
            "payload_too_large",
        ),
        (
            raw(Method::GET, "/v1/conversations/not-a-uuid", None, vec![]).await,
            404,
            "not_found",
        ),
        (
            raw(Method::GET, "/v1/conversations?limit=lots", None, vec![]).await,
            400,
            "invalid_query",
        ),
        (
            raw(Method::GET, "/v1/nothing-here", None, vec![]).await,
            404,
            "not_found",
        ),
    ];
    for (reply, status, code) in cases {
        assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
        assert_eq!(reply.code(), code, "{}", reply.body);
        assert!(reply.body["error"]["message"].is_string());
    }
    // The account is still fine.
    app.get("/v1/me", &alice).await.expect(200);
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let doc = app
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .expect(200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    for path in [
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/me",
        "/v1/me/export",
        "/v1/terms",
        "/v1/users/{user_id}/avatar",
        "/v1/users",
        "/v1/contacts/{user_id}",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}/messages",
        "/v1/conversations/{conversation_id}/read",
        "/.well-known/jwks.json",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    // Every operation declares its whole surface, so generated clients and
    // fuzzers can call it: each `{name}` of its path as a path parameter,
    // no path parameter that is not in the path (query ones are `query`),
    // 401 where a token is needed, and the JSON body answers where a body
    // is required.
    let mut operations = 0;
    for (path, item) in paths {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            let mut declared = in_path.clone();
            declared.sort();
            assert_eq!(declared, sorted, "{method} {path}: path parameters");
            for p in params.iter().filter(|p| p["in"] == "path") {
                assert_eq!(p["required"], true, "{method} {path}: {p}");
            }
            let answers = op["responses"].as_object().unwrap();
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(answers.contains_key("401"), "{method} {path}: 401");
            }
            if op["requestBody"]["required"] == true {
                for status in ["400", "413", "415", "422"] {
                    assert!(answers.contains_key(status), "{method} {path}: {status}");
                }
            }
        }
    }
    assert!(operations >= 40, "{operations} operations");
    // `…/leave` needs no body (the default device leaves).
    let leave = &paths["/v1/calls/{id}/leave"]["post"];
    assert_ne!(leave["requestBody"]["required"], true, "{leave}");
    let ui = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(
        ui.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
}
