//! Uploading and downloading attachments. An upload is the uploader's
//! alone until a message of theirs takes it; then the conversation's
//! members may download it (everyone else: 404, like the message).

use axum::body::Body;
use axum::extract::Multipart;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::wire::AttachmentView;
use super::{ApiPath, AppState, Caller, now};
use crate::attachments::AttachmentKind;
use crate::attachments::inspect::{self, Refusal};
use crate::error::{ApiError, ErrorBody};
use crate::store::Attachment;

/// Longest file name kept (characters).
const MAX_NAME_CHARS: usize = 200;

/// The form of `POST /v1/attachments` (multipart/form-data): `kind` first,
/// then `file`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code, reason = "documents the multipart form for OpenAPI")]
pub struct UploadForm {
    /// `image`, `file` or `voice`.
    pub kind: AttachmentKind,
    /// The bytes, with a file name and (ignored except to check it) a
    /// content type.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// A file name that is safe to store and to put in a header: no path, no
/// control characters, bounded.
fn clean_name(name: Option<&str>) -> String {
    let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(MAX_NAME_CHARS)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

fn refused(refusal: &Refusal) -> ApiError {
    ApiError::invalid(refusal.code(), refusal.to_string())
}

fn bad_form(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_upload", message)
}

/// Upload an image, a file or a voice message; send it with a message of
/// its kind (`attachment_id`). The content type is read from the bytes; a
/// name or declared type that says otherwise is refused. Unsent uploads
/// are deleted after `orphan_after_secs`.
#[utoipa::path(post, path = "/v1/attachments", tag = "messages",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = AttachmentView),
        (status = 400, body = ErrorBody, description = "`invalid_upload`: not the form described"),
        (status = 413, body = ErrorBody, description = "`too_large`: over the kind's limit"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: not multipart/form-data"),
        (status = 422, body = ErrorBody, description = "`content_mismatch`, `not_an_image`, `not_audio`, `empty_file`"),
        (status = 429, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn upload(
    state: AppState,
    caller: Caller,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    // Our error body, not the extractor's plain text.
    let mut form = form.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a boundary",
        )
    })?;
    state
        .throttle(
            "messages",
            caller.user_id,
            state.config.rate_limits.messages_per_user,
        )
        .await?;
    let limits = &state.config.attachments;
    let mut kind: Option<AttachmentKind> = None;
    let mut file: Option<(String, Option<String>, Bytes)> = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| bad_form(format!("not a multipart form: {}", e.body_text())))?
    {
        match field.name() {
            Some("kind") => {
                let text = field.text().await.map_err(|e| bad_form(e.body_text()))?;
                kind = Some(
                    AttachmentKind::parse(text.trim())
                        .ok_or_else(|| bad_form("kind must be image, file or voice"))?,
                );
            }
            Some("file") => {
                let Some(kind) = kind else {
                    return Err(bad_form("send the kind field before the file"));
                };
                let name = clean_name(field.file_name());
                let declared = field.content_type().map(str::to_owned);
                // Read in chunks so an oversized upload stops at the limit.
                let max = limits.max_bytes(kind);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| bad_form(e.body_text()))? {
                    if (bytes.len() + chunk.len()) as u64 > max {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("a {} may be at most {max} bytes", kind.as_str()),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((name, declared, Bytes::from(bytes)));
            }
            _ => return Err(bad_form("the form has the fields kind and file only")),
        }
    }
    let (Some(kind), Some((name, declared, bytes))) = (kind, file) else {
        return Err(bad_form("the form needs kind and file"));
    };
    // Decoding an image is CPU work: off the async threads.
    let inspected = {
        let (name, declared, bytes) = (name.clone(), declared.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || {
            inspect::inspect(kind, &name, declared.as_deref(), &bytes)
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|r| refused(&r))?
    };
    let id = Uuid::now_v7();
    let thumbnail = inspected.thumbnail.as_ref().map(|(t, _)| t.clone());
    let row = Attachment {
        id,
        owner_id: Some(caller.user_id),
        kind: kind.as_str().to_owned(),
        name,
        content_type: inspected.content_type.to_owned(),
        size_bytes: bytes.len() as i64,
        width: inspected.width.map(|w| w as i32),
        height: inspected.height.map(|h| h as i32),
        duration_ms: inspected.duration_ms.map(|d| d as i64),
        thumbnail: thumbnail.is_some(),
        message_id: None,
        conversation_id: None,
        created_at: now(),
        deleted_at: None,
    };
    // Row first: a blob without a row could never be swept.
    state.store.create_attachment(&row).await?;
    if let Err(error) = state.blobs.put(id, bytes, thumbnail).await {
        tracing::error!(attachment = %id, %error, "attachment not stored");
        let _ = state.store.forget_attachment(id).await;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the attachment store is unavailable; try again",
        ));
    }
    Ok((StatusCode::CREATED, axum::Json(AttachmentView::new(&row))).into_response())
}

impl AppState {
    /// The attachment if `user` may download it: its uploader while it is
    /// pending, the members of its conversation once sent; else 404.
    async fn readable_attachment(&self, id: Uuid, user: Uuid) -> Result<Attachment, ApiError> {
        let missing = || ApiError::not_found("no such attachment");
        let row = self.store.attachment(id).await?.ok_or_else(missing)?;
        if row.deleted_at.is_some() {
            return Err(missing());
        }
        let allowed = match (row.message_id, row.conversation_id) {
            (Some(_), Some(conversation)) => {
                self.store.membership(conversation, user).await?.is_some()
            }
            (None, _) => row.owner_id == Some(user),
            // Its conversation is gone.
            (Some(_), None) => false,
        };
        if allowed { Ok(row) } else { Err(missing()) }
    }
}

/// How an attachment is served: images and audio inline (a thumbnail and
/// a player need it), everything else as a download; never sniffed, never
/// run as a page.
fn serve(row: &Attachment, bytes: Bytes, content_type: &str, inline: bool) -> Response {
    let disposition = if inline { "inline" } else { "attachment" };
    // RFC 6266/5987: an ASCII fallback and the UTF-8 name.
    let ascii: String = row
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| !matches!(c, '"' | '\\' | ';'))
        .collect();
    let encoded: String = row
        .name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(headers, header::CONTENT_TYPE, content_type.to_owned());
    set(
        headers,
        header::CONTENT_DISPOSITION,
        format!("{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Opened directly, it is a document with no powers.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    response
}

/// Download an attachment: members of its message's conversation (and its
/// uploader before it is sent); everyone else gets 404.
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "messages",
    responses(
        (status = 200, description = "The bytes, with their sniffed content type, `Content-Disposition` and `nosniff`"),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn download(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let row = state.readable_attachment(id, caller.user_id).await?;
    let bytes = state.blobs.get(id, false).await.map_err(|error| {
        tracing::warn!(attachment = %id, %error, "attachment bytes unreadable");
        ApiError::not_found("no such attachment")
    })?;
    let inline = row.kind != AttachmentKind::File.as_str()
        && (row.content_type.starts_with("image/") || row.content_type.starts_with("audio/"));
    let content_type = if inline || row.content_type.starts_with("text/plain") {
        row.content_type.clone()
    } else {
        // Downloads are opaque bytes to the browser.
        "application/octet-stream".to_owned()
    };
    Ok(serve(&row, bytes, &content_type, inline))
}

/// An image's thumbnail (longest side 320 px, JPEG or PNG).
#[utoipa::path(get, path = "/v1/attachments/{id}/thumbnail", tag = "messages",
    responses((status = 200, description = "The thumbnail"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn thumbnail(
    state: AppState,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let row = state.readable_attachment(id, caller.user_id).await?;
    if !row.thumbnail {
        return Err(ApiError::not_found("this attachment has no thumbnail"));
    }
    let bytes = state
        .blobs
        .get(id, true)
        .await
        .map_err(|_| ApiError::not_found("this attachment has no thumbnail"))?;
    let content_type = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok(serve(&row, bytes, content_type, true))
}

/// A user's uploaded avatar (its thumbnail when it has one): any signed-in
/// user may see it, like the rest of a profile. The URL in `avatar_url`
/// names the upload (`?v=`), so a new avatar is a new URL and this one may
/// be cached.
#[utoipa::path(get, path = "/v1/users/{user_id}/avatar", tag = "users",
    responses((status = 200, description = "The image"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn avatar(
    state: AppState,
    _caller: Caller,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("no avatar");
    let user = state.store.user(user_id).await?.ok_or_else(missing)?;
    let id = user
        .avatar_id
        .filter(|_| user.deleted_at.is_none())
        .ok_or_else(missing)?;
    let row = state.store.attachment(id).await?.ok_or_else(missing)?;
    if row.deleted_at.is_some() {
        return Err(missing());
    }
    let bytes = state
        .blobs
        .get(id, row.thumbnail)
        .await
        .map_err(|_| missing())?;
    let content_type = if !row.thumbnail {
        row.content_type.clone()
    } else if bytes.starts_with(b"\x89PNG") {
        "image/png".to_owned()
    } else {
        "image/jpeg".to_owned()
    };
    let mut response = serve(&row, bytes, &content_type, true);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok(response)
}
