//! Attachments end to end, on SQLite and Postgres with the filesystem
//! store, and on an S3-protocol server (the one scripts/test starts): the
//! same scenario each time.

use std::time::Duration;

use control_plane::ControlPlaneConfig;
use control_plane::attachments::{AttachmentsConfig, Blobs, StoreKind};
use serde_json::{Value, json};
use testkit::app::{Backend, TestApp};

fn small_limits(config: &mut ControlPlaneConfig) {
    config.attachments.max_file_bytes = 64 << 10;
    // The sweep runs every second and takes uploads unsent for 2 s.
    config.attachments.orphan_after_secs = 2;
    config.attachments.sweep_interval_secs = 1;
}

mod on_the_filesystem {
    #[tokio::test]
    async fn sqlite() {
        let app = super::TestApp::spawn_with(super::Backend::Sqlite, super::small_limits)
            .await
            .expect("sqlite is always available");
        super::scenario(app).await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(app) =
            super::TestApp::spawn_with(super::Backend::Postgres, super::small_limits).await
        {
            super::scenario(app).await;
        }
    }
}

#[tokio::test]
async fn on_s3() {
    let Some(url) = testkit::servers::s3_url() else {
        return;
    };
    let url = url.trim_end_matches('/').to_owned();
    // A bucket of this test's own (the server accepts any credentials).
    let bucket = format!("cascade-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{url}/{bucket}"))
        .send()
        .await
        .expect("the S3 server answers");
    assert!(
        created.status().is_success(),
        "bucket: {}",
        created.status()
    );
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        small_limits(config);
        config.attachments.store = StoreKind::S3;
        config.attachments.s3.bucket = bucket.clone();
        config.attachments.s3.endpoint = url.clone();
        config.attachments.s3.access_key_id = "cascade-test".into();
        config.attachments.s3.secret_access_key = "cascade-test-secret".into();
    })
    .await
    .unwrap();
    scenario(app).await;
}

fn png(width: u32, height: u32) -> Vec<u8> {
    super::png(width, height, 200)
}

/// The store the control plane uses, opened the same way, to see what it
/// holds.
fn store_of(config: &AttachmentsConfig, data_dir: &std::path::Path) -> Blobs {
    Blobs::open(config, data_dir).expect("the attachment store opens")
}

async fn scenario(app: TestApp) {
    let (alice, bob, mallory) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("mallory").await,
    );
    let chat = app.direct(&alice, &bob).await;
    let messages = format!("/v1/conversations/{chat}/messages");
    let blobs = store_of(&app.config.attachments, &app.config.data_dir);

    // Malformed uploads get a clear error, never a 5xx.
    let raw = |content_type: &'static str, body: &'static str| {
        app.http
            .post(app.url("/v1/attachments"))
            .bearer_auth(&alice.access)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (content_type, body, status, code) in [
        ("application/json", "{}", 415, "unsupported_media_type"),
        (
            "multipart/form-data; boundary=X",
            "--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc\r\n--X--\r\n",
            400,
            "invalid_upload",
        ),
        (
            "multipart/form-data; boundary=X",
            "--X\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nvideo\r\n--X--\r\n",
            400,
            "invalid_upload",
        ),
        (
            "multipart/form-data; boundary=X",
            "--X\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nfile\r\n--X--\r\n",
            400,
            "invalid_upload",
        ),
        (
            "multipart/form-data; boundary=X",
            "garbage without parts",
            400,
            "invalid_upload",
        ),
    ] {
        let reply = testkit::client::ApiClient::reply(raw(content_type, body).await.unwrap()).await;
        assert_eq!(
            (reply.status.as_u16(), reply.code()),
            (status, code),
            "{body:?}"
        );
    }

    // Alice uploads a picture: its facts are read from the bytes.
    let picture = png(640, 480);
    let uploaded = app
        .upload(&alice, "image", "holiday.png", Some("image/png"), &picture)
        .await
        .expect(201)
        .body;
    let id = uploaded["id"].as_str().unwrap().to_owned();
    assert_eq!(uploaded["kind"], "image");
    assert_eq!(uploaded["content_type"], "image/png");
    assert_eq!(
        (uploaded["width"].as_i64(), uploaded["height"].as_i64()),
        (Some(640), Some(480))
    );
    assert_eq!(uploaded["size_bytes"], picture.len());
    assert_eq!(uploaded["has_thumbnail"], true);
    let attachment_id: uuid::Uuid = id.parse().unwrap();
    assert!(
        blobs.exists(attachment_id).await.unwrap(),
        "the bytes are in the store"
    );

    // Pending: Alice's alone.
    let (status, _, bytes) = app
        .get_bytes(&format!("/v1/attachments/{id}"), &alice)
        .await;
    assert_eq!((status.as_u16(), bytes == picture), (200, true));
    let (status, _, _) = app.get_bytes(&format!("/v1/attachments/{id}"), &bob).await;
    assert_eq!(status, 404, "not Bob's before it is sent to him");

    // Sent as an image message with a caption.
    let sent = app
        .post(
            &messages,
            &alice,
            json!({"kind": "image", "attachment_id": id, "body": "look"}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(sent["kind"], "image");
    assert_eq!(sent["attachment"]["id"], id.as_str());
    assert_eq!(sent["attachment"]["width"], 640);
    // Bob sees it in the conversation and downloads the same bytes.
    let page = app.get(&messages, &bob).await.expect(200).body;
    let shown = &page["messages"][0];
    assert_eq!(
        (shown["kind"].as_str(), shown["body"].as_str()),
        (Some("image"), Some("look"))
    );
    assert_eq!(shown["attachment"]["name"], "holiday.png");
    let (status, headers, bytes) = app.get_bytes(&format!("/v1/attachments/{id}"), &bob).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, picture, "the other member gets the same bytes");
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline;")
    );
    let (status, headers, thumb) = app
        .get_bytes(&format!("/v1/attachments/{id}/thumbnail"), &bob)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let small = image::load_from_memory(&thumb).unwrap();
    assert_eq!((small.width(), small.height()), (320, 240));

    // A non-member sees neither the message nor the blob.
    assert_eq!(app.get(&messages, &mallory).await.status, 404);
    for path in [
        format!("/v1/attachments/{id}"),
        format!("/v1/attachments/{id}/thumbnail"),
    ] {
        let (status, _, _) = app.get_bytes(&path, &mallory).await;
        assert_eq!(status, 404, "{path}");
    }
    // An upload is sent once, by its owner, as its kind.
    let again = app
        .post(
            &messages,
            &alice,
            json!({"kind": "image", "attachment_id": id}),
        )
        .await;
    assert_eq!(
        (again.status.as_u16(), again.code()),
        (422, "invalid_attachment")
    );
    let bobs_try = app
        .upload(&bob, "file", "b.txt", None, b"bob's notes")
        .await
        .expect(201)
        .body;
    let stolen = app
        .post(
            &messages,
            &alice,
            json!({"kind": "file", "attachment_id": bobs_try["id"]}),
        )
        .await;
    assert_eq!(
        (stolen.status.as_u16(), stolen.code()),
        (422, "invalid_attachment")
    );
    let wrong_kind = app
        .post(
            &messages,
            &bob,
            json!({"kind": "voice", "attachment_id": bobs_try["id"]}),
        )
        .await;
    assert_eq!(wrong_kind.status, 422);
    let text_with_file = app
        .post(
            &messages,
            &bob,
            json!({"body": "hi", "attachment_id": bobs_try["id"]}),
        )
        .await;
    assert_eq!(text_with_file.status, 422);

    // Oversized and disguised uploads are refused, saying why.
    let big = vec![b'x'; 100 << 10];
    let refused = app.upload(&alice, "file", "big.txt", None, &big).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (413, "too_large")
    );
    let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0 not a picture".to_vec();
    for kind in ["image", "file"] {
        let refused = app
            .upload(&alice, kind, "cat.png", Some("image/png"), &elf)
            .await;
        assert_eq!(
            (refused.status.as_u16(), refused.code()),
            (422, "content_mismatch"),
            "{kind}: {:?}",
            refused.body
        );
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/x-executable")
        );
    }

    // A file: downloaded as a file, named as uploaded.
    let notes = "Meeting notes: ünïcode, \"quotes\" and all.\n".as_bytes();
    let file = app
        .upload(
            &bob,
            "file",
            "meeting notes ü.txt",
            Some("text/plain"),
            notes,
        )
        .await
        .expect(201)
        .body;
    app.post(
        &messages,
        &bob,
        json!({"kind": "file", "attachment_id": file["id"]}),
    )
    .await
    .expect(201);
    let (status, headers, bytes) = app
        .get_bytes(
            &format!("/v1/attachments/{}", file["id"].as_str().unwrap()),
            &alice,
        )
        .await;
    assert_eq!((status.as_u16(), bytes.as_slice()), (200, notes));
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains(
            "filename=\"meeting notes _.txt\"; filename*=UTF-8''meeting%20notes%20%C3%BC.txt"
        ),
        "{disposition}"
    );

    // A voice message gets its duration.
    let voice = control_plane::attachments::inspect::fixtures::ogg_opus(3);
    let recorded = app
        .upload(
            &bob,
            "voice",
            "voice.ogg",
            Some("audio/ogg; codecs=opus"),
            &voice,
        )
        .await
        .expect(201)
        .body;
    assert_eq!(
        (
            recorded["content_type"].as_str(),
            recorded["duration_ms"].as_i64()
        ),
        (Some("audio/ogg"), Some(3000))
    );
    let sent_voice = app
        .post(
            &messages,
            &bob,
            json!({"kind": "voice", "attachment_id": recorded["id"]}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(sent_voice["attachment"]["duration_ms"], 3000);

    // Deleting the message makes the blob unreachable and removes it.
    let message_id = sent["id"].as_str().unwrap();
    let tombstone = app
        .delete(&format!("{messages}/{message_id}"), &alice)
        .await
        .expect(200)
        .body;
    assert_eq!(tombstone["attachment"], Value::Null);
    for user in [&alice, &bob] {
        let (status, _, _) = app.get_bytes(&format!("/v1/attachments/{id}"), user).await;
        assert_eq!(status, 404);
    }
    assert!(
        !blobs.exists(attachment_id).await.unwrap(),
        "the blob left the store"
    );

    // An upload never sent is swept.
    let orphan = app
        .upload(&alice, "file", "draft.txt", None, b"never sent")
        .await
        .expect(201)
        .body;
    let orphan_id: uuid::Uuid = orphan["id"].as_str().unwrap().parse().unwrap();
    assert!(blobs.exists(orphan_id).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while blobs.exists(orphan_id).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was never swept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, _) = app
        .get_bytes(&format!("/v1/attachments/{orphan_id}"), &alice)
        .await;
    assert_eq!(status, 404);
    // Sent ones stay.
    let kept: uuid::Uuid = recorded["id"].as_str().unwrap().parse().unwrap();
    assert!(
        blobs.exists(kept).await.unwrap(),
        "a sent voice message is kept"
    );
}
