//! Rows and values the store reads and writes. These are internal types:
//! the HTTP API has its own wire types, so the schema can change without
//! changing the contract.

use std::fmt;

use time::OffsetDateTime;
use uuid::Uuid;

/// A registered person.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Unique, lower-case `[a-z0-9_.]{3,32}`.
    pub username: String,
    /// Unique, lower-cased.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Shown to others; defaults to the username.
    pub display_name: String,
    /// Free text ("in a meeting").
    pub status_text: String,
    /// An http(s) URL, if set (an uploaded avatar, `avatar_id`, wins).
    pub avatar_url: Option<String>,
    /// Site administrator (may read the audit log).
    pub is_admin: bool,
    /// When the account was created.
    pub created_at: OffsetDateTime,
    /// Last profile or password change.
    pub updated_at: OffsetDateTime,
    /// The uploaded image shown as their avatar (an attachment of kind
    /// `avatar`).
    pub avatar_id: Option<Uuid>,
    /// The terms version accepted at sign-up (None: from before consent
    /// was recorded).
    pub terms_version: Option<String>,
    /// When they accepted it.
    pub terms_accepted_at: Option<OffsetDateTime>,
    /// When the account was erased (`DELETE /v1/me`): every personal field
    /// above is then a placeholder.
    pub deleted_at: Option<OffsetDateTime>,
}

/// The fields a user may edit about themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// See [`User::display_name`].
    pub display_name: String,
    /// See [`User::status_text`].
    pub status_text: String,
    /// See [`User::avatar_url`].
    pub avatar_url: Option<String>,
}

/// One refresh token of one login ("family").
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    /// Row id.
    pub id: Uuid,
    /// Whose session.
    pub user_id: Uuid,
    /// Every rotation of one login shares this id; access tokens carry it.
    pub family_id: Uuid,
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: Vec<u8>,
    /// When issued.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// Set when exchanged for a newer token; presenting it again is reuse.
    pub rotated_at: Option<OffsetDateTime>,
    /// Set on logout, password change, or detected reuse.
    pub revoked_at: Option<OffsetDateTime>,
    /// Client description at login, for the user's session list.
    pub user_agent: Option<String>,
    /// Client address at login.
    pub ip: Option<String>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live; the new one is stored.
    Rotated {
        /// Whose token it was.
        user_id: Uuid,
        /// The login it belongs to.
        family_id: Uuid,
    },
    /// The token had already been rotated: someone replayed it. The caller
    /// must revoke the family.
    Reused {
        /// Whose token it was.
        user_id: Uuid,
        /// The family to revoke.
        family_id: Uuid,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// A token signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SigningKeyRecord {
    /// Key id, published in JWKS and token headers.
    pub kid: String,
    /// Ed25519 private key, PKCS#8 DER.
    pub private_pkcs8: Vec<u8>,
    /// Ed25519 public key, 32 raw bytes.
    pub public_key: Vec<u8>,
    /// When generated.
    pub created_at: OffsetDateTime,
}

/// A stored enum value that no variant matches (a newer schema, or damage).
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?} in the database")]
pub struct UnknownValue {
    pub(super) kind: &'static str,
    pub(super) value: String,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The stored (and wire) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the stored (and wire) spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;

            fn try_from(value: String) -> Result<Self, UnknownValue> {
                $name::parse(&value).ok_or(UnknownValue { kind: $kind, value })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// One side's view of a relationship.
    ContactStatus, "contact status" {
        /// I asked them; they have not answered.
        Outgoing = "outgoing",
        /// They asked me; I have not answered.
        Incoming = "incoming",
        /// We are contacts.
        Accepted = "accepted",
        /// I blocked them.
        Blocked = "blocked",
    }
);

text_enum!(
    /// Direct (two people, fixed) or group (named, managed).
    ConversationKind, "conversation kind" {
        /// Exactly two people; one per pair.
        Direct = "direct",
        /// Named, with roles.
        Group = "group",
    }
);

text_enum!(
    /// A member's powers in a conversation.
    Role, "role" {
        /// Created it (or inherited it); may delete it and manage admins.
        Owner = "owner",
        /// May rename, add and remove members.
        Admin = "admin",
        /// May read and post.
        Member = "member",
    }
);

impl Role {
    /// Admins and the owner manage a group.
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A relationship as listed for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEntry {
    /// The other person.
    pub user: User,
    /// The owner's view.
    pub status: ContactStatus,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Conversation {
    /// Stable id.
    pub id: Uuid,
    /// Direct or group.
    #[sqlx(try_from = "String")]
    pub kind: ConversationKind,
    /// Group name (direct conversations have none).
    pub name: Option<String>,
    /// Who created it.
    pub created_by: Option<Uuid>,
    /// When created.
    pub created_at: OffsetDateTime,
    /// Sequence number of the newest message (0: none yet).
    pub last_seq: i64,
    /// Newest message or change, Unix microseconds: the list order.
    pub last_activity_us: i64,
}

impl Conversation {
    /// [`Conversation::last_activity_us`] as a time.
    pub fn last_activity_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.last_activity_us) * 1000)
            .unwrap_or(self.created_at)
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    /// Which conversation.
    pub conversation_id: Uuid,
    /// Who.
    pub user_id: Uuid,
    /// Their powers.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// When they joined.
    pub joined_at: OffsetDateTime,
    /// Newest sequence number they have read.
    pub last_read_seq: i64,
}

/// A member with their user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// The membership.
    pub member: Member,
    /// The person.
    pub user: User,
}

/// A conversation as its member sees it in their list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: Conversation,
    /// The viewer's membership.
    pub member: Member,
    /// Messages by others after the viewer's read pointer.
    pub unread_count: i64,
    /// The newest message, if any.
    pub last_message: Option<Message>,
}

/// Position in the activity-ordered conversation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityCursor {
    /// `last_activity_us` of the last conversation seen.
    pub activity_us: i64,
    /// Its id (tie-breaker).
    pub id: Uuid,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Id for the new row (UUIDv7).
    pub id: Uuid,
    /// Target conversation.
    pub conversation_id: Uuid,
    /// Sender.
    pub author_id: Uuid,
    /// The sender's idempotency key.
    pub client_message_id: Option<String>,
    /// Text.
    pub body: String,
    /// Message replied to (same conversation, checked by the caller).
    pub reply_to: Option<Uuid>,
    /// `text`, `image`, `file` or `voice`.
    pub kind: String,
    /// The sender's pending upload this message takes, with the metadata
    /// snapshot (JSON) the message shows.
    pub attachment: Option<(Uuid, String)>,
    /// When sent.
    pub now: OffsetDateTime,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Message {
    /// Stable id (UUIDv7).
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Gapless position in the conversation, from 1.
    pub seq: i64,
    /// Sender (None if their account is gone).
    pub author_id: Option<Uuid>,
    /// The sender's idempotency key.
    pub client_message_id: Option<String>,
    /// Text; None once deleted.
    pub body: Option<String>,
    /// Message replied to.
    pub reply_to: Option<Uuid>,
    /// When sent.
    pub created_at: OffsetDateTime,
    /// Last edit.
    pub edited_at: Option<OffsetDateTime>,
    /// When deleted (tombstone).
    pub deleted_at: Option<OffsetDateTime>,
    /// `text`, `image`, `file` or `voice`.
    pub kind: String,
    /// The attachment's metadata (JSON, as the API shows it); None for
    /// text and once deleted.
    pub attachment: Option<String>,
}

/// A message found by search, with the matching passage: the hits are
/// between `\x02` and `\x03`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SearchHit {
    /// The message.
    #[sqlx(flatten)]
    pub message: Message,
    /// The passage around the hits.
    pub snippet: Option<String>,
}

/// An uploaded attachment.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Attachment {
    /// Its id (UUIDv7); the blob's key.
    pub id: Uuid,
    /// Who uploaded it (None once their account is gone).
    pub owner_id: Option<Uuid>,
    /// `image`, `file` or `voice`.
    pub kind: String,
    /// The file name as uploaded (sanitised).
    pub name: String,
    /// The sniffed content type.
    pub content_type: String,
    /// Size of the bytes.
    pub size_bytes: i64,
    /// Image width, pixels.
    pub width: Option<i32>,
    /// Image height, pixels.
    pub height: Option<i32>,
    /// Voice duration.
    pub duration_ms: Option<i64>,
    /// Whether a thumbnail was stored.
    pub thumbnail: bool,
    /// The message that holds it (None while pending).
    pub message_id: Option<Uuid>,
    /// That message's conversation.
    pub conversation_id: Option<Uuid>,
    /// When uploaded.
    pub created_at: OffsetDateTime,
    /// When its message was deleted (blob due for removal).
    pub deleted_at: Option<OffsetDateTime>,
}

/// Which messages to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePage {
    /// The newest `limit`.
    Latest {
        /// How many.
        limit: i64,
    },
    /// Up to `limit` immediately before `seq` (older).
    Before {
        /// Exclusive bound.
        seq: i64,
        /// How many.
        limit: i64,
    },
    /// Up to `limit` immediately after `seq` (newer).
    After {
        /// Exclusive bound.
        seq: i64,
        /// How many.
        limit: i64,
    },
}

/// How many people reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReactionCount {
    /// The message.
    pub message_id: Uuid,
    /// The emoji.
    pub emoji: String,
    /// How many people.
    pub count: i64,
    /// Whether the viewer is one of them.
    pub reacted: bool,
}

/// A security-relevant event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    /// UUIDv7: ordered by time.
    pub id: Uuid,
    /// When.
    pub at: OffsetDateTime,
    /// Who did it, if known.
    pub actor_id: Option<Uuid>,
    /// What (`login.succeeded`, `member.removed`, ...).
    pub action: String,
    /// Kind of thing acted on (`user`, `conversation`, `session`).
    pub target_type: Option<String>,
    /// Its id.
    pub target_id: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// JSON object with details.
    pub details: String,
}

impl AuditEntry {
    /// A new entry at the current time.
    pub fn new(
        actor: Option<Uuid>,
        action: &str,
        target: Option<(&str, String)>,
        ip: Option<String>,
        details: &serde_json::Value,
    ) -> Self {
        let (target_type, target_id) = match target {
            Some((kind, id)) => (Some(kind.to_owned()), Some(id)),
            None => (None, None),
        };
        AuditEntry {
            id: Uuid::now_v7(),
            at: OffsetDateTime::now_utc(),
            actor_id: actor,
            action: action.to_owned(),
            target_type,
            target_id,
            ip,
            details: details.to_string(),
        }
    }
}

/// A position in the event log: events are ordered by the writing
/// transaction, then by id (see `migrations/*/0002_events.sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventCursor {
    /// The writing transaction (always 0 on SQLite).
    pub txid: i64,
    /// The event's id.
    pub id: i64,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.txid, self.id)
    }
}

impl std::str::FromStr for EventCursor {
    type Err = ();

    /// Parses `"<txid>.<id>"`, the form clients echo back.
    fn from_str(text: &str) -> Result<Self, ()> {
        let (txid, id) = text.split_once('.').ok_or(())?;
        let cursor = EventCursor {
            txid: txid.parse().map_err(drop)?,
            id: id.parse().map_err(drop)?,
        };
        if cursor.txid < 0 || cursor.id < 0 {
            return Err(());
        }
        Ok(cursor)
    }
}

/// A durable event to append in the same transaction as its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its members receive it.
    pub conversation_id: Option<Uuid>,
    /// This user receives it (as well).
    pub user_id: Option<Uuid>,
    /// The event name (`message.created`, ...).
    pub kind: &'static str,
    /// The JSON body clients receive as `data`.
    pub payload: String,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEvent {
    /// Writing transaction (0 on SQLite).
    pub txid: i64,
    /// Id.
    pub id: i64,
    /// Audience: members of this conversation.
    pub conversation_id: Option<Uuid>,
    /// Audience: this user.
    pub user_id: Option<Uuid>,
    /// Event name.
    pub kind: String,
    /// JSON body.
    pub payload: String,
}

impl StoredEvent {
    /// Its position in the log.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            txid: self.txid,
            id: self.id,
        }
    }
}

/// Renders the event for a message after its transaction assigned what
/// only the transaction knows (its `seq`). A plain function, so it crosses
/// the `Store` trait object without boxing.
pub type RenderMessageEvent = fn(&Message) -> NewEvent;

/// Renders a reaction's event from the emoji's count on the message after
/// the change, which only the transaction knows.
pub type RenderReactionEvent = dyn Fn(i64) -> NewEvent + Send + Sync;

/// Renders the event for a member added inside a transaction.
pub type RenderMemberEvent = fn(conversation: Uuid, user: Uuid) -> NewEvent;

text_enum!(
    /// What a call carries.
    CallKind, "call kind" {
        /// Voice only.
        Audio = "audio",
        /// Voice and camera.
        Video = "video",
    }
);

text_enum!(
    /// The one video codec of a call (an SFU does not transcode).
    CallVideoCodec, "video codec" {
        /// VP8.
        Vp8 = "vp8",
        /// H.264 (constrained baseline, packetization mode 1).
        H264 = "h264",
    }
);

text_enum!(
    /// Where a call is in its life.
    CallState, "call state" {
        /// Started, waiting for someone to answer.
        Ringing = "ringing",
        /// Answered (direct) or joined by someone besides the caller (group).
        Active = "active",
        /// Over; `outcome` says how.
        Ended = "ended",
    }
);

text_enum!(
    /// How a call ended (for its initiator; see `CallHistoryEntry::outcome`
    /// for the other people's view).
    CallOutcome, "call outcome" {
        /// It was answered and then hung up.
        Completed = "completed",
        /// Nobody answered within the ring timeout.
        Missed = "missed",
        /// The callee declined.
        Declined = "declined",
        /// The caller hung up while it rang.
        Cancelled = "cancelled",
        /// The callee was in another call.
        Busy = "busy",
    }
);

/// A call's durable record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Call {
    /// Id (v7: history is paged by it).
    pub id: Uuid,
    /// The conversation it rings in.
    pub conversation_id: Uuid,
    /// Whether it is a direct (1:1) call.
    pub direct: bool,
    /// Audio or video.
    #[sqlx(try_from = "String")]
    pub kind: CallKind,
    /// Its video codec.
    #[sqlx(try_from = "String")]
    pub video_codec: CallVideoCodec,
    /// Who started it.
    pub initiator_id: Uuid,
    /// The other party of a direct call.
    pub callee_id: Option<Uuid>,
    /// Ringing, active or ended.
    #[sqlx(try_from = "String")]
    pub state: CallState,
    /// How it ended (set with `Ended`).
    #[sqlx(try_from = "Option<String>")]
    pub outcome: OptionalOutcome,
    /// When started.
    pub created_at: OffsetDateTime,
    /// While ringing: when it becomes missed (Unix microseconds).
    pub ring_deadline_us: Option<i64>,
    /// When answered (direct) or first joined by a non-initiator (group).
    pub answered_at: Option<OffsetDateTime>,
    /// When it ended.
    pub ended_at: Option<OffsetDateTime>,
    /// Who ended it, when a person did.
    pub ended_by: Option<Uuid>,
    /// From answer to end, milliseconds (0 if never answered).
    pub duration_ms: i64,
}

/// A nullable [`CallOutcome`] column (sqlx's `try_from` needs one type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalOutcome(pub Option<CallOutcome>);

impl TryFrom<Option<String>> for OptionalOutcome {
    type Error = UnknownValue;

    fn try_from(value: Option<String>) -> Result<Self, UnknownValue> {
        value
            .map(CallOutcome::try_from)
            .transpose()
            .map(OptionalOutcome)
    }
}

/// One device's session in a call.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Participant {
    /// Session id.
    pub id: Uuid,
    /// The call.
    pub call_id: Uuid,
    /// Who.
    pub user_id: Uuid,
    /// Which of their devices.
    pub device_id: String,
    /// The edge node it was placed on.
    pub node_id: String,
    /// That node's region.
    pub region: String,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing a screen.
    pub screen: bool,
    /// When it joined.
    pub joined_at: OffsetDateTime,
    /// When it was last placed on `node_id` (its join or latest migration):
    /// until a join token's life after this, the edge not listing it only
    /// means the client is still connecting.
    pub placed_at: OffsetDateTime,
    /// When it left (`None`: still in).
    pub left_at: Option<OffsetDateTime>,
}

/// A call from one user's point of view (history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHistoryEntry {
    /// The call.
    pub call: Call,
    /// How it went *for this user*: the initiator sees the call's outcome;
    /// others see `completed` if they joined, `declined` if they declined,
    /// `missed` otherwise (`None` while it is not over).
    pub outcome: Option<CallOutcome>,
}

/// One row of a user's call statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStatsRow {
    /// Audio or video.
    pub kind: CallKind,
    /// The outcome for the user.
    pub outcome: CallOutcome,
    /// Calls.
    pub calls: i64,
    /// Sum of their durations, milliseconds.
    pub total_duration_ms: i64,
}

/// What a call transaction knows before it decides (read under the call
/// row's lock, so no other change to the call interleaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFacts {
    /// The call as it is now.
    pub call: Call,
    /// Its live participants (every device still in).
    pub participants: Vec<Participant>,
    /// The call the acting user's busy lock is held for, if any.
    pub actor_lock: Option<Uuid>,
}

/// What a call transaction writes: the rules in `calls::lifecycle` decide
/// it from [`CallFacts`]; the store applies it atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallChange {
    /// The call row afterwards (`None`: unchanged).
    pub call: Option<Call>,
    /// Take this user's busy lock for the call (refused if another call
    /// holds it: the store re-checks, so a race cannot double-book).
    pub lock: Option<Uuid>,
    /// Release these users' locks on this call.
    pub unlock: Vec<Uuid>,
    /// Release every lock on this call (it ended).
    pub unlock_all: bool,
    /// Mark that this user joined (history).
    pub joined: Option<Uuid>,
    /// Mark that this user declined (history).
    pub declined: Option<Uuid>,
    /// Close these participant sessions (`left_at = now`).
    pub close: Vec<Uuid>,
    /// Insert this participant session.
    pub insert: Option<Participant>,
    /// Replace this live session's node and media state (matched by id).
    pub update: Option<Participant>,
    /// Missed-call notifications the store wrote when the call ended
    /// (filled in by the store; for the push worker and tests).
    pub notified: Vec<super::Notification>,
    /// Events to append.
    pub events: Vec<NewEvent>,
}

/// Why the call rules refused an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRefusal {
    /// The call is not in a state that allows it (409), with the reason.
    State(&'static str),
    /// The acting user is in another call (409 `busy`).
    Busy,
    /// The user has no such session in the call (404).
    NotInCall,
    /// The user may see the call but not do this (403), with the reason.
    Forbidden(&'static str),
}

/// How starting a call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// It rings.
    Ringing(Call),
    /// The caller already is in a call; nothing was stored.
    CallerBusy,
    /// The callee is in another call: the call was recorded as ended with
    /// outcome `busy` (and its events appended).
    CalleeBusy(Call),
    /// The conversation already has a live call (its id).
    InProgress(Uuid),
}

/// Renders the events of a start once the store knows how it went.
pub type RenderStartEvents = fn(&StartOutcome) -> Vec<NewEvent>;
