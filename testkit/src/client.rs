//! `ApiClient`: a typed HTTP client for the control-plane API, usable
//! against any address (an in-process `TestApp`, or a `cascade` binary a
//! test started).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A registered user and their current tokens.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// User id.
    pub id: String,
    /// Username.
    pub username: String,
    /// Password (as registered).
    pub password: String,
    /// Current access token.
    pub access: String,
    /// Current refresh token.
    pub refresh: String,
}

/// A response: status, headers and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Parsed JSON body.
    pub body: Value,
}

impl Reply {
    /// Asserts the status (printing the body if it differs) and returns self.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Speaks the control-plane API at one base URL.
#[derive(Clone)]
pub struct ApiClient {
    /// Plain HTTP client (no cookies, no redirects followed).
    pub http: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
}

impl ApiClient {
    /// A client for the control plane at `addr` (`host:port`).
    pub fn new(addr: impl std::fmt::Display) -> Self {
        ApiClient {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
            base: format!("http://{addr}"),
        }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        Self::reply(response).await
    }

    /// Reads a response into a [`Reply`].
    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET as `user`.
    pub async fn get(&self, path: &str, user: &TestUser) -> Reply {
        self.call(Method::GET, path, Some(&user.access), None).await
    }

    /// POST JSON as `user`.
    pub async fn post(&self, path: &str, user: &TestUser, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&user.access), Some(body))
            .await
    }

    /// PATCH JSON as `user`.
    pub async fn patch(&self, path: &str, user: &TestUser, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(&user.access), Some(body))
            .await
    }

    /// `POST /v1/attachments` as `user`: a multipart form with `kind` and a
    /// `file` part named `name` with `content_type` (when given).
    pub async fn upload(
        &self,
        user: &TestUser,
        kind: &str,
        name: &str,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Reply {
        let boundary = format!("cascade-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\n{kind}\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            )
            .as_bytes(),
        );
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = self
            .http
            .post(self.url("/v1/attachments"))
            .bearer_auth(&user.access)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("request sent");
        Self::reply(response).await
    }

    /// GET raw bytes as `user`: status, headers, body.
    pub async fn get_bytes(
        &self,
        path: &str,
        user: &TestUser,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&user.access)
            .send()
            .await
            .expect("request sent");
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.bytes().await.expect("response body").to_vec();
        (status, headers, bytes)
    }

    /// PUT (no body) as `user`.
    pub async fn put(&self, path: &str, user: &TestUser) -> Reply {
        self.call(Method::PUT, path, Some(&user.access), None).await
    }

    /// DELETE as `user`.
    pub async fn delete(&self, path: &str, user: &TestUser) -> Reply {
        self.call(Method::DELETE, path, Some(&user.access), None)
            .await
    }

    /// Registers `username` with a strong password, accepting the terms.
    pub async fn register(&self, username: &str) -> TestUser {
        let password = format!("{username}-Plum-Ferry-Quartz-91");
        let reply = self
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": password,
                    "accepted_terms": terms_version(),
                })),
            )
            .await
            .expect(201);
        TestUser {
            id: reply.body["user"]["id"]
                .as_str()
                .expect("user id")
                .to_owned(),
            username: username.to_owned(),
            password,
            access: reply.body["tokens"]["access_token"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: reply.body["tokens"]["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// Logs in as `user` again (a new session); returns the raw reply.
    pub async fn login(&self, login: &str, password: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "login": login, "password": password })),
        )
        .await
    }

    /// Makes `a` and `b` contacts: `a` asks, `b` accepts.
    pub async fn make_contacts(&self, a: &TestUser, b: &TestUser) {
        self.post(&format!("/v1/contacts/{}", b.id), a, json!({}))
            .await
            .expect(200);
        self.patch(
            &format!("/v1/contacts/{}", a.id),
            b,
            json!({"action": "accept"}),
        )
        .await
        .expect(200);
    }

    /// A direct conversation between `a` and `b`; returns its id.
    pub async fn direct(&self, a: &TestUser, b: &TestUser) -> String {
        let reply = self
            .post(
                "/v1/conversations",
                a,
                json!({ "kind": "direct", "user_id": b.id }),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
        reply.body["id"]
            .as_str()
            .expect("conversation id")
            .to_owned()
    }

    /// A group owned by `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let reply = self
            .post(
                "/v1/conversations",
                owner,
                json!({ "kind": "group", "name": name, "member_ids": ids }),
            )
            .await
            .expect(201);
        reply.body["id"]
            .as_str()
            .expect("conversation id")
            .to_owned()
    }

    /// Sends `text` to `conversation` as `user`; returns the message JSON.
    pub async fn send(&self, conversation: &str, user: &TestUser, text: &str) -> Value {
        self.post(
            &format!("/v1/conversations/{conversation}/messages"),
            user,
            json!({ "body": text }),
        )
        .await
        .expect(201)
        .body
    }
}

/// The terms version a sign-up must accept (the default configuration's).
pub fn terms_version() -> String {
    control_plane::config::TermsConfig::default().version
}
