//! A person's own data: the export (GDPR articles 15 and 20) and erasure
//! (article 17). Both ask for the password again, are rate-limited, and
//! leave an audit entry that names an id, never a person.
//!
//! Both are `POST`/`DELETE` with a JSON body rather than `GET`, because a
//! password belongs in neither a URL nor a `GET` body.

use std::io::Write;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::calls::HistoryItem;
use super::wire::{AttachmentView, AuditView, ContactView, MeView, MessageView};
use super::{ApiJson, AppState, Caller, ClientAddr, now};
use crate::calls::view::CallView;
use crate::error::{ApiError, ErrorBody};
use crate::store::{ActivityCursor, AuditEntry, CallOutcome, ErasureEvents, Notification, Role};

/// Rows read per query while gathering an export.
const PAGE: i64 = 500;
/// The export's format name and version (bumped when fields change
/// meaning; new fields do not bump it).
const FORMAT: &str = "cascade-export/1";

/// `POST /v1/me/export` and `DELETE /v1/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordCheck {
    /// The account's password, again.
    pub password: String,
}

/// A conversation the person is in, without anyone else's messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedConversation {
    /// Id.
    pub id: Uuid,
    /// `direct` or `group`.
    pub kind: String,
    /// A group's name.
    pub name: Option<String>,
    /// Their role.
    pub role: String,
    /// When they joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

/// A reaction they gave.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedReaction {
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The emoji.
    pub emoji: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An upload of theirs, with where its bytes are in the archive.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedAttachment {
    /// What messages show.
    #[serde(flatten)]
    pub attachment: AttachmentView,
    /// `avatar` for their avatar.
    pub kind_stored: String,
    /// The message that holds it (None: not sent, or their avatar).
    pub message_id: Option<Uuid>,
    /// When uploaded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The file in this archive (None: the bytes could not be read).
    pub path: Option<String>,
}

/// One login.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedLogin {
    /// The login (all its refresh tokens share it).
    pub family_id: Uuid,
    /// When this token was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The browser or app that logged in.
    pub user_agent: Option<String>,
    /// From where.
    pub ip: Option<String>,
}

/// `export.json`, the archive's index: everything the service keeps about
/// the person, and nothing of anyone else's beyond ids and the names of
/// their contacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct Export {
    /// [`FORMAT`].
    pub format: &'static str,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub exported_at: OffsetDateTime,
    /// The account.
    pub account: MeView,
    /// Contacts, requests and blocks.
    pub contacts: Vec<ContactView>,
    /// Conversations they are in.
    pub conversations: Vec<ExportedConversation>,
    /// Every message they wrote (deleted ones as tombstones), oldest first.
    pub messages: Vec<MessageView>,
    /// Reactions they gave.
    pub reactions: Vec<ExportedReaction>,
    /// Their call history.
    pub calls: Vec<HistoryItem>,
    /// Their uploads.
    pub attachments: Vec<ExportedAttachment>,
    /// Their notification feed.
    pub notifications: Vec<Notification>,
    /// Their logins.
    pub logins: Vec<ExportedLogin>,
    /// What they did that the audit log recorded (logins, changes).
    pub security_log: Vec<AuditView>,
}

impl AppState {
    /// Checks the caller's password again before an irreversible or
    /// revealing action; wrong guesses count as failed logins.
    pub(crate) async fn reauthenticate(
        &self,
        caller: Caller,
        ip: Option<std::net::IpAddr>,
        password: &str,
    ) -> Result<crate::store::User, ApiError> {
        let user = self.caller_user(caller).await?;
        let keys = super::accounts::LoginKeys::new(Some(&user), &user.username, ip);
        self.count_attempt(&keys).await?;
        if !self
            .passwords
            .verify(password, Some(&user.password_hash))
            .await
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_credentials",
                "the password is wrong",
            ));
        }
        self.attempt_succeeded(&keys).await;
        Ok(user)
    }

    /// The prologue of an action on one's own data: counted against the
    /// action's per-user `quota`, then the password checked again.
    async fn recheck(
        &self,
        action: &'static str,
        quota: crate::config::Quota,
        caller: Caller,
        ip: Option<std::net::IpAddr>,
        password: &str,
    ) -> Result<crate::store::User, ApiError> {
        self.throttle(action, caller.user_id, quota).await?;
        self.reauthenticate(caller, ip, password).await
    }

    /// Gathers `user`'s export and its attachments' bytes.
    async fn gather_export(
        &self,
        user: &crate::store::User,
    ) -> Result<(Export, Vec<(String, bytes::Bytes)>), ApiError> {
        let store = &self.store;
        let contacts = store.contacts(user.id, None).await?;
        let conversations = every_page(
            |cursor| store.conversations(user.id, cursor, PAGE),
            |s| ActivityCursor {
                activity_us: s.conversation.last_activity_us,
                id: s.conversation.id,
            },
        )
        .await?
        .into_iter()
        .map(|s| ExportedConversation {
            id: s.conversation.id,
            kind: s.conversation.kind.as_str().to_owned(),
            name: s.conversation.name.clone(),
            role: match s.member.role {
                Role::Owner => "owner",
                Role::Admin => "admin",
                Role::Member => "member",
            }
            .to_owned(),
            joined_at: s.member.joined_at,
        })
        .collect();
        let messages = every_page(
            |after| store.authored_messages(user.id, after, PAGE),
            |m| m.id,
        )
        .await?
        .iter()
        .map(|m| MessageView::new(m, Vec::new()))
        .collect();
        let calls = every_page(
            |before| store.call_history(user.id, before, PAGE),
            |e| e.call.id,
        )
        .await?
        .iter()
        .map(|e| HistoryItem {
            call: CallView::new(&e.call),
            outcome: e.outcome.map(CallOutcome::as_str),
        })
        .collect();
        let notifications = every_page(
            |before| store.notifications(user.id, false, before, PAGE),
            |n| n.id,
        )
        .await?;
        let mut files = Vec::new();
        let mut attachments = Vec::new();
        for row in store.own_attachments(user.id).await? {
            let path = match self.blobs.get(row.id, false).await {
                Ok(bytes) => {
                    let path = format!("attachments/{}-{}", row.id, row.name);
                    files.push((path.clone(), bytes));
                    Some(path)
                }
                Err(error) => {
                    tracing::warn!(attachment = %row.id, %error, "attachment left out of an export");
                    None
                }
            };
            attachments.push(ExportedAttachment {
                attachment: AttachmentView::new(&row),
                kind_stored: row.kind.clone(),
                message_id: row.message_id,
                created_at: row.created_at,
                path,
            });
        }
        let reactions = store
            .own_reactions(user.id)
            .await?
            .into_iter()
            .map(|r| ExportedReaction {
                message_id: r.message_id,
                conversation_id: r.conversation_id,
                emoji: r.emoji,
                created_at: r.created_at,
            })
            .collect();
        let logins = store
            .own_sessions(user.id)
            .await?
            .into_iter()
            .map(|s| ExportedLogin {
                family_id: s.family_id,
                created_at: s.created_at,
                expires_at: s.expires_at,
                revoked_at: s.revoked_at,
                user_agent: s.user_agent,
                ip: s.ip,
            })
            .collect();
        let security_log = store
            .own_audit(user.id)
            .await?
            .iter()
            .map(AuditView::from)
            .collect();
        let export = Export {
            format: FORMAT,
            exported_at: now(),
            account: user.into(),
            contacts: contacts.iter().map(ContactView::from).collect(),
            conversations,
            messages,
            reactions,
            calls,
            attachments,
            notifications,
            logins,
            security_log,
        };
        Ok((export, files))
    }
}

/// Every row of a paged store query: `page(cursor)` returns up to [`PAGE`]
/// rows after `cursor`; `cursor_of` names the cursor after a row.
async fn every_page<T, C, Fut>(
    mut page: impl FnMut(Option<C>) -> Fut,
    cursor_of: impl Fn(&T) -> C,
) -> Result<Vec<T>, ApiError>
where
    Fut: std::future::Future<Output = crate::store::StoreResult<Vec<T>>>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let rows = page(cursor.take()).await?;
        let full = rows.len() as i64 == PAGE;
        cursor = rows.last().map(&cursor_of);
        all.extend(rows);
        if !full {
            return Ok(all);
        }
    }
}

/// The archive: `export.json` (deflated), `README.txt`, and each upload's
/// bytes under `attachments/` (stored: media is compressed already).
fn zip_archive(
    export: &Export,
    files: &[(String, bytes::Bytes)],
) -> Result<Vec<u8>, zip::result::ZipError> {
    use zip::write::SimpleFileOptions;
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    archive.start_file("README.txt", deflated)?;
    archive.write_all(
        b"Your Cascade data.\n\nexport.json lists your account, contacts, conversations, the \
          messages you wrote, your reactions, calls, uploads, notifications, logins and \
          security log. attachments/ holds the bytes of your uploads; each entry of \
          export.json's \"attachments\" names its file under \"path\".\n",
    )?;
    archive.start_file("export.json", deflated)?;
    serde_json::to_writer_pretty(&mut archive, export).map_err(std::io::Error::other)?;
    for (path, bytes) in files {
        archive.start_file(path.as_str(), stored)?;
        archive.write_all(bytes)?;
    }
    Ok(archive.finish()?.into_inner())
}

/// Download everything the service keeps about you: a ZIP with
/// `export.json` (account, contacts, conversations, your messages,
/// reactions, calls, uploads, notifications, logins, security log) and
/// your uploads' bytes. Needs the password again; a few per hour.
#[utoipa::path(post, path = "/v1/me/export", tag = "users",
    request_body = PasswordCheck,
    responses(
        (status = 200, description = "`application/zip`: `export.json` (schema `Export`), `README.txt`, `attachments/<id>-<name>`", content_type = "application/zip"),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 403, body = ErrorBody, description = "`invalid_credentials`"),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_body`"),
        (status = 429, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn export(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiJson(body): ApiJson<PasswordCheck>,
) -> Result<Response, ApiError> {
    let quota = state.config.rate_limits.exports_per_user;
    let user = state
        .recheck("exports", quota, caller, ip, &body.password)
        .await?;
    let (export, files) = state.gather_export(&user).await?;
    let zipped = tokio::task::spawn_blocking(move || zip_archive(&export, &files))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    state
        .audit(
            Some(user.id),
            "user.exported",
            Some(("user", user.id.to_string())),
            ip,
            serde_json::json!({ "bytes": zipped.len() }),
        )
        .await;
    let date = now().date();
    let mut response = (StatusCode::OK, Body::from(zipped)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"cascade-export-{}-{date}.zip\"",
        user.username
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

fn reaction_removed(
    conversation: Uuid,
    message: Uuid,
    user: Uuid,
    emoji: &str,
    count: i64,
) -> crate::store::NewEvent {
    super::events::reaction_changed(conversation, message, user, emoji, false)(count)
}

fn contact_removed(to: Uuid, about: Uuid) -> crate::store::NewEvent {
    super::events::contact(to, about, None)
}

/// Erase your account: every login ends at once, your messages become
/// tombstones shown as "Deleted user", your uploads, reactions, contacts,
/// memberships, call history and notifications are removed; others keep
/// their own messages and calls. Needs the password again. Irreversible.
#[utoipa::path(delete, path = "/v1/me", tag = "users",
    request_body = PasswordCheck,
    responses(
        (status = 204, description = "Erased"),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 403, body = ErrorBody, description = "`invalid_credentials`"),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_body`"),
        (status = 429, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn erase(
    state: AppState,
    caller: Caller,
    ClientAddr(ip): ClientAddr,
    ApiJson(body): ApiJson<PasswordCheck>,
) -> Result<StatusCode, ApiError> {
    let quota = state.config.rate_limits.erasures_per_user;
    let user = state
        .recheck("erasures", quota, caller, ip, &body.password)
        .await?;
    // Out of any group call first (its devices are told to leave), while
    // the membership that finds the call still exists.
    for conversation in state.store.conversation_ids(user.id).await? {
        if let Err(error) = state.leave_group_call(conversation, user.id).await {
            tracing::warn!(%conversation, ?error, "could not take an erased user out of a call");
        }
    }
    let now = now();
    let events = ErasureEvents {
        message_deleted: super::events::message_deleted,
        reaction_removed,
        member_removed: super::events::member_removed,
        contact_removed,
    };
    // An id and counts only: no name, address or e-mail.
    let audit = AuditEntry {
        id: Uuid::now_v7(),
        at: now,
        actor_id: Some(user.id),
        action: "user.deleted".to_owned(),
        target_type: Some("user".to_owned()),
        target_id: Some(user.id.to_string()),
        ip: None,
        details: "{}".to_owned(),
    };
    let erased = state
        .store
        .erase_user(user.id, &events, &audit, now)
        .await?;
    state.end_logins(user.id, None, None, erased.families.clone());
    for id in &erased.attachments {
        crate::attachments::remove(
            &*state.store,
            &state.blobs,
            *id,
            Some(user.id),
            "account_deleted",
        )
        .await;
    }
    tracing::info!(
        user_id = %user.id,
        messages = erased.messages,
        attachments = erased.attachments.len(),
        conversations = erased.conversations.len(),
        "account erased"
    );
    Ok(StatusCode::NO_CONTENT)
}
