//! JSON bodies of the API. Field names are the public contract (snake_case);
//! conversions from store rows live here so handlers stay short.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::store::{
    AuditEntry, ContactEntry, ContactStatus, ConversationSummary, MemberEntry, Message,
    ReactionCount, User,
};

/// Another user, as anyone may see them (never their e-mail).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: Uuid,
    /// Unique handle.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Free text.
    pub status_text: String,
    /// Avatar: `/v1/users/{id}/avatar?v=...` for an uploaded one (fetch
    /// it with the bearer token), else the http(s) URL they gave.
    pub avatar_url: Option<String>,
    /// The account was erased: show "Deleted user".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        let avatar_url = match user.avatar_id {
            Some(avatar) => Some(format!(
                "/v1/users/{}/avatar?v={}",
                user.id,
                avatar.simple()
            )),
            None => user.avatar_url.clone(),
        };
        UserView {
            id: user.id,
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            status_text: user.status_text.clone(),
            avatar_url,
            deleted: user.deleted_at.is_some(),
        }
    }
}

/// The caller's own account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    /// Public fields.
    #[serde(flatten)]
    pub user: UserView,
    /// E-mail (only ever shown to its owner).
    pub email: String,
    /// Site administrator.
    pub is_admin: bool,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The uploaded avatar's attachment id.
    pub avatar_id: Option<Uuid>,
    /// The terms version accepted at sign-up (None: before consent was
    /// recorded).
    pub terms_version: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339::option")]
    pub terms_accepted_at: Option<OffsetDateTime>,
}

impl From<&User> for MeView {
    fn from(user: &User) -> Self {
        MeView {
            user: user.into(),
            email: user.email.clone(),
            is_admin: user.is_admin,
            created_at: user.created_at,
            avatar_id: user.avatar_id,
            terms_version: user.terms_version.clone(),
            terms_accepted_at: user.terms_accepted_at,
        }
    }
}

/// `POST /v1/auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–32 of `[a-z0-9_.]` (upper case is folded to lower).
    pub username: String,
    /// A valid address; unique.
    pub email: String,
    /// At least 10 characters and hard to guess.
    pub password: String,
    /// Defaults to the username.
    pub display_name: Option<String>,
    /// The terms version the person accepted (`GET /v1/terms`); sign-up
    /// is refused without the current one.
    pub accepted_terms: Option<String>,
}

/// `GET /v1/terms`: what a sign-up accepts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TermsView {
    /// The current version: send it as `accepted_terms`.
    pub version: String,
    /// Where to read them.
    pub url: Option<String>,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or e-mail.
    pub login: String,
    /// Password.
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh. It is single-use.
    pub refresh_token: String,
}

/// `POST /v1/auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password now.
    pub current_password: String,
    /// The new password (same policy as registration).
    pub new_password: String,
}

/// A token pair.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Tokens {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Single-use token for `POST /v1/auth/refresh`.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
}

/// Registration or login result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The account.
    pub user: MeView,
    /// Its tokens.
    pub tokens: Tokens,
}

/// `?all=true` logs out every session.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutQuery {
    /// Revoke every session of the account, not only this one.
    pub all: Option<bool>,
}

/// `PATCH /v1/me`: absent fields stay; `avatar_id` (an image uploaded with
/// `POST /v1/attachments`, not sent) or `avatar_url` sets the avatar, and
/// `null` in either clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// New display name.
    pub display_name: Option<String>,
    /// New status text (empty clears).
    pub status_text: Option<String>,
    /// New avatar URL (`null` clears).
    #[serde(default, deserialize_with = "crate::api::double_option")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
    /// An uploaded image of the caller's as the avatar (`null` clears).
    #[serde(default, deserialize_with = "crate::api::double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub avatar_id: Option<Option<Uuid>>,
}

/// `GET /v1/users?q=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Prefix of a username or display name (at least 2 characters).
    pub q: String,
}

/// A list of users.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// At most 20.
    pub users: Vec<UserView>,
}

/// A relationship, from the caller's side.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactView {
    /// The other person.
    pub user: UserView,
    /// `outgoing`, `incoming`, `accepted` or `blocked`.
    pub status: String,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&ContactEntry> for ContactView {
    fn from(entry: &ContactEntry) -> Self {
        ContactView {
            user: (&entry.user).into(),
            status: entry.status.to_string(),
            updated_at: entry.updated_at,
        }
    }
}

/// `GET /v1/contacts?status=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactsQuery {
    /// Only this status: `outgoing`, `incoming`, `accepted` or `blocked`.
    pub status: Option<String>,
}

/// The caller's relationships.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactList {
    /// Sorted by username.
    pub contacts: Vec<ContactView>,
}

/// `PATCH /v1/contacts/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactAction {
    /// `accept`, `decline`, `block`, `unblock` or `remove`.
    pub action: String,
}

/// The relationship after a change (`status: null`: none).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactState {
    /// The other user's id.
    pub user_id: Uuid,
    /// The caller's view now.
    pub status: Option<String>,
}

impl ContactState {
    /// From the caller's view.
    pub fn new(user_id: Uuid, status: Option<ContactStatus>) -> Self {
        ContactState {
            user_id,
            status: status.map(|s| s.to_string()),
        }
    }
}

/// `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreateConversation {
    /// With one other person; returns the existing one if there is one.
    Direct {
        /// The other person.
        user_id: Uuid,
    },
    /// A named group; the caller is its owner.
    Group {
        /// Name.
        name: String,
        /// Other members to add.
        #[serde(default)]
        member_ids: Vec<Uuid>,
    },
}

/// `PATCH /v1/conversations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameConversation {
    /// New name.
    pub name: String,
}

/// A conversation as the caller sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    /// Id.
    pub id: Uuid,
    /// `direct` or `group`.
    pub kind: String,
    /// Group name.
    pub name: Option<String>,
    /// The caller's role.
    pub role: String,
    /// Messages by others the caller has not read.
    pub unread_count: i64,
    /// The caller's read pointer (a message `seq`).
    pub last_read_seq: i64,
    /// `seq` of the newest message.
    pub last_seq: i64,
    /// The newest message.
    pub last_message: Option<MessageView>,
    /// Newest activity.
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity_at: OffsetDateTime,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Members (on `GET /v1/conversations/{id}` and creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberView>>,
}

impl ConversationView {
    /// From a summary, optionally with members.
    pub fn new(summary: &ConversationSummary, members: Option<&[MemberEntry]>) -> Self {
        let c = &summary.conversation;
        ConversationView {
            id: c.id,
            kind: c.kind.to_string(),
            name: c.name.clone(),
            role: summary.member.role.to_string(),
            unread_count: summary.unread_count,
            last_read_seq: summary.member.last_read_seq,
            last_seq: c.last_seq,
            last_message: summary
                .last_message
                .as_ref()
                .map(|m| MessageView::new(m, Vec::new())),
            last_activity_at: c.last_activity_at(),
            created_at: c.created_at,
            members: members.map(|ms| ms.iter().map(MemberView::from).collect()),
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// The person.
    pub user: UserView,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// Their read pointer.
    pub last_read_seq: i64,
    /// When they joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

impl From<&MemberEntry> for MemberView {
    fn from(entry: &MemberEntry) -> Self {
        MemberView {
            user: (&entry.user).into(),
            role: entry.member.role.to_string(),
            last_read_seq: entry.member.last_read_seq,
            joined_at: entry.member.joined_at,
        }
    }
}

/// `GET /v1/conversations?limit=&before=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationsQuery {
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub before: Option<String>,
}

/// A page of conversations, most recently active first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationList {
    /// This page.
    pub conversations: Vec<ConversationView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/conversations/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Users to add.
    pub user_ids: Vec<Uuid>,
}

/// Ids added.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddedMembers {
    /// Who was added (already-members are skipped).
    pub added: Vec<Uuid>,
}

/// `PATCH /v1/conversations/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// `admin` or `member`.
    pub role: String,
}

/// A message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    /// Id.
    pub id: Uuid,
    /// Conversation.
    pub conversation_id: Uuid,
    /// Position in the conversation, from 1, gapless: the pagination cursor.
    pub seq: i64,
    /// Sender.
    pub author_id: Option<Uuid>,
    /// The sender's idempotency key.
    pub client_message_id: Option<String>,
    /// Text; `null` once deleted.
    pub body: Option<String>,
    /// The message replied to.
    pub reply_to: Option<Uuid>,
    /// When sent.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last edit.
    #[serde(with = "time::serde::rfc3339::option")]
    pub edited_at: Option<OffsetDateTime>,
    /// Deletion (the message is a tombstone).
    #[serde(with = "time::serde::rfc3339::option")]
    pub deleted_at: Option<OffsetDateTime>,
    /// Reactions by emoji.
    pub reactions: Vec<ReactionView>,
    /// `text`, `image`, `file` or `voice`.
    pub kind: MessageKind,
    /// The attached image, file or voice message (`null` for text and
    /// once deleted). Download it from `GET /v1/attachments/{id}`.
    pub attachment: Option<AttachmentView>,
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Text only.
    #[default]
    Text,
    /// A picture (with an optional caption in `body`).
    Image,
    /// A file.
    File,
    /// A voice message.
    Voice,
}

impl MessageKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::Voice => "voice",
        }
    }

    /// From the stored spelling (unknown ones read as text).
    pub fn parse(text: &str) -> Self {
        match text {
            "image" => MessageKind::Image,
            "file" => MessageKind::File,
            "voice" => MessageKind::Voice,
            _ => MessageKind::Text,
        }
    }

    /// The attachment kind this message kind needs.
    pub fn attachment_kind(self) -> Option<crate::attachments::AttachmentKind> {
        use crate::attachments::AttachmentKind;
        match self {
            MessageKind::Text => None,
            MessageKind::Image => Some(AttachmentKind::Image),
            MessageKind::File => Some(AttachmentKind::File),
            MessageKind::Voice => Some(AttachmentKind::Voice),
        }
    }
}

/// An uploaded image, file or voice message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttachmentView {
    /// Id: `GET /v1/attachments/{id}` downloads it.
    pub id: Uuid,
    /// `image`, `file` or `voice`.
    pub kind: crate::attachments::AttachmentKind,
    /// The file name.
    pub name: String,
    /// The content type found in its bytes (not the client's claim).
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// Image width in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i32>,
    /// Image height in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<i32>,
    /// Voice message length in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Whether `GET /v1/attachments/{id}/thumbnail` has a small preview
    /// (images).
    pub has_thumbnail: bool,
}

impl AttachmentView {
    /// From a stored row.
    pub fn new(row: &crate::store::Attachment) -> Self {
        AttachmentView {
            id: row.id,
            kind: crate::attachments::AttachmentKind::parse(&row.kind)
                .unwrap_or(crate::attachments::AttachmentKind::File),
            name: row.name.clone(),
            content_type: row.content_type.clone(),
            size_bytes: row.size_bytes,
            width: row.width,
            height: row.height,
            duration_ms: row.duration_ms,
            has_thumbnail: row.thumbnail,
        }
    }
}

impl MessageView {
    /// From a stored message and its reactions.
    pub fn new(message: &Message, reactions: Vec<ReactionView>) -> Self {
        MessageView {
            id: message.id,
            conversation_id: message.conversation_id,
            seq: message.seq,
            author_id: message.author_id,
            client_message_id: message.client_message_id.clone(),
            body: message.body.clone(),
            reply_to: message.reply_to,
            created_at: message.created_at,
            edited_at: message.edited_at,
            deleted_at: message.deleted_at,
            reactions,
            kind: MessageKind::parse(&message.kind),
            // Written by us from an AttachmentView: it parses.
            attachment: message
                .attachment
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok()),
        }
    }
}

/// People who reacted with one emoji.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReactionView {
    /// The emoji.
    pub emoji: String,
    /// How many people.
    pub count: i64,
    /// Whether the caller is one of them.
    pub reacted: bool,
}

impl From<&ReactionCount> for ReactionView {
    fn from(count: &ReactionCount) -> Self {
        ReactionView {
            emoji: count.emoji.clone(),
            count: count.count,
            reacted: count.reacted,
        }
    }
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Text (a caption, possibly empty, for image, file and voice).
    #[serde(default)]
    pub body: String,
    /// `text` (the default), `image`, `file` or `voice`; the latter need
    /// `attachment_id`.
    #[serde(default)]
    pub kind: MessageKind,
    /// An upload of yours (`POST /v1/attachments`) not yet sent, of the
    /// message's kind.
    pub attachment_id: Option<Uuid>,
    /// Idempotency key: a retry with the same key returns the first message.
    pub client_message_id: Option<String>,
    /// Id of a message in this conversation being replied to.
    pub reply_to: Option<Uuid>,
}

/// `PATCH /v1/conversations/{id}/messages/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// New text.
    pub body: String,
}

/// `GET /v1/conversations/{id}/messages?limit=&before=&after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// Older than this `seq`.
    pub before: Option<i64>,
    /// Newer than this `seq`.
    pub after: Option<i64>,
    /// Not a filter here: text search is `GET /v1/messages/search` (given,
    /// this answers 400 `use_search` rather than ignoring it).
    pub q: Option<String>,
}

/// `GET /v1/messages/search?q=&conversation_id=&limit=&before=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageSearchQuery {
    /// The words to find (all of them; Postgres also takes "quoted
    /// phrases", `or` and `-word`). 1–200 characters.
    pub q: String,
    /// Only this conversation (yours).
    pub conversation_id: Option<Uuid>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// Older than this message id (the previous page's `next_before`).
    pub before: Option<Uuid>,
}

/// A part of a search passage; `hit` parts matched the query.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnippetPart {
    /// The text.
    pub text: String,
    /// Whether it matched.
    pub hit: bool,
}

/// A message found by search.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchHitView {
    /// The message (as in its conversation).
    pub message: MessageView,
    /// The passage around the matches, in parts (render `hit` parts
    /// highlighted; the text is plain, never markup).
    pub snippet: Vec<SnippetPart>,
}

/// A page of search results, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    /// The hits.
    pub hits: Vec<SearchHitView>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_before: Option<Uuid>,
}

/// Splits a stored snippet (hits between \x02 and \x03) into parts.
pub fn snippet_parts(snippet: &str) -> Vec<SnippetPart> {
    let mut parts = Vec::new();
    let mut hit = false;
    let mut text = String::new();
    for c in snippet.chars() {
        let marker = match c {
            '\u{2}' => Some(true),
            '\u{3}' => Some(false),
            _ => None,
        };
        match marker {
            Some(starts) => {
                if !text.is_empty() {
                    parts.push(SnippetPart {
                        text: std::mem::take(&mut text),
                        hit,
                    });
                }
                hit = starts;
            }
            None => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(SnippetPart { text, hit });
    }
    parts
}

/// A page of messages in ascending `seq`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageList {
    /// This page, oldest first.
    pub messages: Vec<MessageView>,
    /// Whether more exist beyond this page in the direction asked.
    pub has_more: bool,
}

/// `POST /v1/conversations/{id}/read`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Everything up to and including this message is read.
    pub message_id: Uuid,
}

/// The read pointer after marking.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadState {
    /// The caller's read pointer (never moves backwards).
    pub last_read_seq: i64,
}

/// `GET /v1/admin/audit?before=&limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// Entries older than this entry id.
    pub before: Option<Uuid>,
}

/// One audit entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Id (time-ordered).
    pub id: Uuid,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    /// What happened.
    pub action: String,
    /// Kind of target.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// Details object.
    pub details: serde_json::Value,
}

impl From<&AuditEntry> for AuditView {
    fn from(entry: &AuditEntry) -> Self {
        AuditView {
            id: entry.id,
            at: entry.at,
            actor_id: entry.actor_id,
            action: entry.action.clone(),
            target_type: entry.target_type.clone(),
            target_id: entry.target_id.clone(),
            ip: entry.ip.clone(),
            details: serde_json::from_str(&entry.details).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// This page.
    pub entries: Vec<AuditView>,
}

/// One user's presence.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceView {
    /// Whose.
    pub user_id: Uuid,
    /// `online`, `away` or `offline` (best over their devices).
    pub status: String,
    /// When last seen connected, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
}

/// Presence of the people the caller may see.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceList {
    /// Accepted contacts and fellow conversation members.
    pub presence: Vec<PresenceView>,
}
