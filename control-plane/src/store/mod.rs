//! The system of record behind one trait, [`Store`], with two
//! implementations sharing their SQL: Postgres (production, several
//! replicas) and SQLite (the embedded default: one process, no servers).
//!
//! Rules every implementation keeps:
//! - Times are passed in (`now`), never read from the database clock, so
//!   both backends agree and tests control time.
//! - Every write transaction starts with a write, so SQLite takes its write
//!   lock up front (a read that later upgrades can fail with "database is
//!   locked") and Postgres row locks serialise conflicting writers.
//! - Every change a client must hear about appends its event to the log in
//!   the same transaction (see [`Store::events_after`]), so an acknowledged
//!   change is never missing from the WebSocket stream or a resume.
//! - A missing row is `Ok(None)` or [`StoreError::NotFound`]; a broken
//!   uniqueness rule is [`StoreError::Conflict`]; everything else is
//!   [`StoreError::Backend`] and is never shown to clients.

// `sql` first: its macros (`append_events!`) are used by the others.
#[macro_use]
mod sql;
#[macro_use]
mod model;
// Before `calls`: its `insert_notifications!` records missed calls.
#[macro_use]
mod notifications;
mod calls;
mod open;
mod own_data;

pub use calls::CallStore;
pub use notifications::{
    Notification, NotificationKind, NotificationStore, PushOutcome, PushSubscription,
};
pub use own_data::{DELETED_USER_NAME, Erasure, ErasureEvents, OwnDataStore, OwnReaction};

pub use model::*;
pub use open::{OpenError, open};
pub use sql::{PgStore, SqliteStore, unix_micros};

/// The current time, truncated to microseconds: what Postgres keeps, so
/// both backends return exactly the times they were given.
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the operation needs does not exist (any more).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the string names which (`username`,
    /// `email`, ...).
    #[error("conflict on {0}")]
    Conflict(&'static str),
    /// The database failed or returned something unexpected.
    #[error("database error")]
    Backend(#[from] sqlx::Error),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the control plane keeps durably.
#[async_trait]
pub trait Store: CallStore + NotificationStore + OwnDataStore + Send + Sync + 'static {
    /// Answers when the database can run a trivial query (readiness).
    async fn ping(&self) -> StoreResult<()>;

    // --- accounts -----------------------------------------------------------

    /// Inserts a user. `Conflict("username")` / `Conflict("email")` when taken.
    async fn create_user(&self, user: &User) -> StoreResult<()>;
    /// A user by id.
    async fn user(&self, id: Uuid) -> StoreResult<Option<User>>;
    /// A user by username or e-mail (both already lower-cased).
    async fn user_by_login(&self, login: &str) -> StoreResult<Option<User>>;
    /// Users whose username or display name starts with `prefix`
    /// (lower-cased, wildcards already escaped), by username.
    async fn search_users(&self, prefix: &str, limit: i64) -> StoreResult<Vec<User>>;
    /// Replaces the editable profile fields.
    async fn update_profile(
        &self,
        id: Uuid,
        profile: &Profile,
        now: OffsetDateTime,
    ) -> StoreResult<User>;
    /// Replaces the password hash.
    /// Makes `avatar` (one of `user`'s own unsent image uploads) their
    /// avatar, or clears it with `None`; the uploaded avatar it replaces is
    /// marked for removal and its id returned. `NotFound`: not such an
    /// upload of theirs.
    async fn set_avatar(
        &self,
        user: Uuid,
        avatar: Option<Uuid>,
        now: OffsetDateTime,
    ) -> StoreResult<(User, Option<Uuid>)>;
    async fn set_password_hash(&self, id: Uuid, hash: &str, now: OffsetDateTime)
    -> StoreResult<()>;
    /// Grants or withdraws site administration.
    async fn set_admin(&self, username: &str, is_admin: bool) -> StoreResult<bool>;

    // --- sessions (refresh tokens) -----------------------------------------

    /// Stores a new refresh token.
    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    /// Rotates the refresh token whose hash is `presented`: marks it used and
    /// stores `next` in the same family, atomically. See [`Rotation`].
    async fn rotate_session(
        &self,
        presented: &[u8],
        next: &Session,
        now: OffsetDateTime,
    ) -> StoreResult<Rotation>;
    /// Whether login `family_id` still stands: some token of the family is
    /// not revoked (logout, password change elsewhere and refresh-token
    /// reuse revoke all of them).
    async fn login_active(&self, family_id: Uuid) -> StoreResult<bool>;
    /// Revokes every token of a family (one login). Returns how many were live.
    async fn revoke_family(&self, family_id: Uuid, now: OffsetDateTime) -> StoreResult<u64>;
    /// Revokes every session of a user except (optionally) one family.
    /// Returns the families (logins) that had live tokens.
    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        except_family: Option<Uuid>,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Uuid>>;

    /// The token signing key shared by all replicas: inserts `candidate` if
    /// there is none yet, and returns whichever key is stored.
    async fn signing_key(&self, candidate: &SigningKeyRecord) -> StoreResult<SigningKeyRecord>;
    /// The keys in rotation, oldest first.
    async fn ring_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Adds a key to the rotation unless a key newer than `newest_seen`
    /// exists already (another replica rotated first). Whether it was added.
    async fn add_ring_key(
        &self,
        key: &SigningKeyRecord,
        newest_seen: Option<OffsetDateTime>,
    ) -> StoreResult<bool>;
    /// Removes a retired key.
    async fn remove_ring_key(&self, kid: &str) -> StoreResult<()>;

    // --- contacts -----------------------------------------------------------

    /// `owner`'s view of their relationship with `other`.
    async fn contact(&self, owner: Uuid, other: Uuid) -> StoreResult<Option<ContactStatus>>;
    /// Sets both sides of a relationship (`None` deletes that side's row)
    /// and appends `events`, provided both sides still are `expected`: a
    /// compare-and-set, so a decision made on a stale read is refused
    /// (`Ok(false)`) rather than undoing a concurrent change such as a block.
    async fn set_contact_pair(
        &self,
        a: Uuid,
        b: Uuid,
        expected: (Option<ContactStatus>, Option<ContactStatus>),
        views: (Option<ContactStatus>, Option<ContactStatus>),
        events: &[NewEvent],
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// `owner`'s relationships, optionally of one status, with the other user.
    async fn contacts(
        &self,
        owner: Uuid,
        status: Option<ContactStatus>,
    ) -> StoreResult<Vec<ContactEntry>>;

    // --- conversations ------------------------------------------------------

    /// The direct conversation of a pair, creating it (with id `id`, and
    /// appending `events`) if needed. The bool says whether it was created.
    async fn direct_conversation(
        &self,
        id: Uuid,
        a: Uuid,
        b: Uuid,
        events: &[NewEvent],
        now: OffsetDateTime,
    ) -> StoreResult<(Conversation, bool)>;
    /// Creates a group owned by `owner` with `members` as members.
    async fn create_group(
        &self,
        conversation: &Conversation,
        owner: Uuid,
        members: &[Uuid],
        events: &[NewEvent],
    ) -> StoreResult<()>;
    /// The conversation and `user`'s membership, if `user` is a member.
    async fn membership(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> StoreResult<Option<(Conversation, Member)>>;
    /// `user`'s conversations, most recently active first, after `cursor`.
    async fn conversations(
        &self,
        user: Uuid,
        cursor: Option<ActivityCursor>,
        limit: i64,
    ) -> StoreResult<Vec<ConversationSummary>>;
    /// One conversation summary for `user` (who must be a member).
    async fn conversation_summary(
        &self,
        conversation: Uuid,
        user: Uuid,
    ) -> StoreResult<Option<ConversationSummary>>;
    /// Renames a group.
    async fn rename_conversation(
        &self,
        conversation: Uuid,
        name: &str,
        events: &[NewEvent],
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Deletes a conversation with its members and messages, first
    /// appending `render(conversation, member)` for each member.
    async fn delete_conversation(
        &self,
        conversation: Uuid,
        render: RenderMemberEvent,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Members with their user records, by join time.
    async fn members(&self, conversation: Uuid) -> StoreResult<Vec<MemberEntry>>;
    /// Adds members (ignoring ones already in), appending `render` for each
    /// one added; returns the ids added. `Conflict("member_limit")` when the
    /// group would exceed `max_members`.
    async fn add_members(
        &self,
        conversation: Uuid,
        users: &[Uuid],
        max_members: i64,
        render: RenderMemberEvent,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Uuid>>;
    /// Removes a member (appending `events` if they were one). If the owner
    /// leaves, the longest-standing admin (or member) becomes owner; an
    /// empty group is deleted. Returns whether the user was a member.
    async fn remove_member(
        &self,
        conversation: Uuid,
        user: Uuid,
        events: &[NewEvent],
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Changes a member's role.
    async fn set_role(&self, conversation: Uuid, user: Uuid, role: Role) -> StoreResult<()>;

    // --- messages -----------------------------------------------------------

    /// Appends a message (taking the next sequence number) with the event
    /// `render` makes of it, or returns the earlier one with the same client
    /// id. The bool says whether it is new.
    async fn send_message(
        &self,
        message: &NewMessage,
        render: RenderMessageEvent,
    ) -> StoreResult<(Message, bool)>;
    /// A message of a conversation.
    async fn message(&self, conversation: Uuid, id: Uuid) -> StoreResult<Option<Message>>;
    /// A page of messages in ascending sequence order.
    async fn messages(&self, conversation: Uuid, page: MessagePage) -> StoreResult<Vec<Message>>;
    /// Replaces a message's text and sets `edited_at`.
    async fn edit_message(
        &self,
        id: Uuid,
        body: &str,
        render: RenderMessageEvent,
        now: OffsetDateTime,
    ) -> StoreResult<Message>;
    /// Soft-deletes: clears the text and attachment, keeps the tombstone,
    /// drops reactions, marks its attachments for removal. Returns the
    /// tombstone and those attachments' ids.
    async fn delete_message(
        &self,
        id: Uuid,
        render: RenderMessageEvent,
        now: OffsetDateTime,
    ) -> StoreResult<(Message, Vec<Uuid>)>;
    /// Messages of `user`'s conversations (or of one) whose text matches
    /// `text`, newest first, older than the message `before`; deleted
    /// messages never match.
    async fn search_messages(
        &self,
        user: Uuid,
        text: &str,
        conversation: Option<Uuid>,
        before: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<SearchHit>>;
    /// Records an upload (pending until a message claims it).
    async fn create_attachment(&self, attachment: &Attachment) -> StoreResult<()>;
    /// An attachment row.
    async fn attachment(&self, id: Uuid) -> StoreResult<Option<Attachment>>;
    /// Attachments whose blobs must go (their message was deleted, or no
    /// message took them and they were uploaded before `pending_before`),
    /// marked deleted at `now` so no message can take them any more.
    async fn claim_attachments_to_sweep(
        &self,
        pending_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: i64,
    ) -> StoreResult<Vec<Uuid>>;
    /// Drops an attachment row (after its blob is gone).
    async fn forget_attachment(&self, id: Uuid) -> StoreResult<()>;
    /// Adds `user`'s reaction `emoji` to `message` (idempotent) unless they
    /// already have `max_per_user` other reactions on it, appending
    /// `event(count)` (the emoji's count after the change) in the same
    /// transaction when it was added now. Whether the reaction is there
    /// now.
    async fn add_reaction(
        &self,
        message: Uuid,
        user: Uuid,
        emoji: &str,
        max_per_user: i64,
        event: &RenderReactionEvent,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Removes a reaction (idempotent), appending `event(count)` when there
    /// was one to remove.
    async fn remove_reaction(
        &self,
        message: Uuid,
        user: Uuid,
        emoji: &str,
        event: &RenderReactionEvent,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Reaction counts of the messages whose sequence numbers lie in
    /// `seqs` (inclusive), and whether `viewer` reacted.
    async fn reactions(
        &self,
        conversation: Uuid,
        seqs: (i64, i64),
        viewer: Uuid,
    ) -> StoreResult<Vec<ReactionCount>>;
    /// Moves `user`'s read pointer forward to `seq` (never backwards),
    /// appending `event` only if it moved. Returns the pointer.
    async fn mark_read(
        &self,
        conversation: Uuid,
        user: Uuid,
        seq: i64,
        event: &NewEvent,
        now: OffsetDateTime,
    ) -> StoreResult<i64>;

    // --- event log ----------------------------------------------------------

    /// Final events after `after`, in log order, at most `limit`. "Final":
    /// no event can ever appear before the last one returned.
    async fn events_after(&self, after: EventCursor, limit: i64) -> StoreResult<Vec<StoredEvent>>;
    /// Like [`Store::events_after`], narrowed to what `user` may receive:
    /// addressed to them, or in a conversation they are a member of now or
    /// whose membership changed for them after `after`. A superset: the
    /// caller decides per event, walking memberships in order.
    async fn user_events_after(
        &self,
        user: Uuid,
        after: EventCursor,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Whether events after `after` have committed that are not final yet
    /// (so [`Store::events_after`] will return them once older
    /// transactions end).
    async fn events_pending_after(&self, after: EventCursor) -> StoreResult<bool>;
    /// The newest final event's position (where a new reader starts).
    async fn event_head(&self) -> StoreResult<EventCursor>;
    /// The conversations `user` is a member of.
    async fn conversation_ids(&self, user: Uuid) -> StoreResult<Vec<Uuid>>;
    /// The events about `user`'s own memberships after `after` (joined,
    /// left, conversation deleted), committed or not yet final, in log
    /// order: with [`Store::conversation_ids`] they give the memberships as
    /// of `after`.
    async fn membership_events_after(
        &self,
        user: Uuid,
        after: EventCursor,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Who may see `user`'s presence: accepted contacts and fellow members
    /// of a group (not the other side of a direct conversation alone, and
    /// nobody across a block either way).
    async fn presence_audience(&self, user: Uuid) -> StoreResult<Vec<Uuid>>;

    // --- audit --------------------------------------------------------------

    /// Appends an audit entry.
    async fn audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    /// Audit entries, newest first, older than `before` (an entry id).
    async fn audit_log(&self, before: Option<Uuid>, limit: i64) -> StoreResult<Vec<AuditEntry>>;
}
