//! A person's own data (GDPR articles 15, 17 and 20) behind
//! [`OwnDataStore`], for both backends (like `sql.rs`): the rows an export
//! needs that no other query reads, and erasure in one transaction.
//!
//! Erasure keeps the `users` row with every personal field replaced (see
//! `migrations/postgres/0012_profiles_and_own_data.sql`): others' history,
//! calls and audit entries keep pointing at an id, which no longer names
//! anyone. Their messages stay as tombstones (`message.deleted` to the
//! members, like a delete), their reactions, contacts, memberships,
//! sessions, notifications and push subscriptions go, and their uploads
//! are marked for removal (the caller removes the blobs; the sweep retries).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::{PgStore, SqliteStore};
use super::*;

/// What others see in place of an erased person's name.
pub const DELETED_USER_NAME: &str = "Deleted user";

/// A reaction of the user's (for the export).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OwnReaction {
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The emoji.
    pub emoji: String,
    /// When.
    pub created_at: OffsetDateTime,
}

/// The events an erasure appends, rendered by the API layer.
pub struct ErasureEvents {
    /// `message.deleted` for each of their messages.
    pub message_deleted: RenderMessageEvent,
    /// `reaction.removed` (conversation, message, user, emoji, count after).
    pub reaction_removed: fn(Uuid, Uuid, Uuid, &str, i64) -> NewEvent,
    /// `member.removed` for each conversation they were in.
    pub member_removed: RenderMemberEvent,
    /// `contact.updated` (to, about) with no relationship left.
    pub contact_removed: fn(Uuid, Uuid) -> NewEvent,
}

/// What an erasure did, for the caller to finish (blobs, sockets, calls)
/// and to count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Their logins: refuse their access tokens now.
    pub families: Vec<Uuid>,
    /// Their uploads, marked for removal.
    pub attachments: Vec<Uuid>,
    /// The conversations they left.
    pub conversations: Vec<Uuid>,
    /// Messages that became tombstones now.
    pub messages: u64,
}

/// Reads for the export; erasure.
#[async_trait]
pub trait OwnDataStore: Send + Sync {
    /// Messages `user` wrote (tombstones included), oldest first, after
    /// `after`.
    async fn authored_messages(
        &self,
        user: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<Message>>;
    /// Every reaction `user` gave.
    async fn own_reactions(&self, user: Uuid) -> StoreResult<Vec<OwnReaction>>;
    /// `user`'s uploads that are not deleted (sent, pending, avatar).
    async fn own_attachments(&self, user: Uuid) -> StoreResult<Vec<Attachment>>;
    /// `user`'s refresh-token rows (their logins: when, from where).
    async fn own_sessions(&self, user: Uuid) -> StoreResult<Vec<Session>>;
    /// Audit entries `user` caused, oldest first.
    async fn own_audit(&self, user: Uuid) -> StoreResult<Vec<AuditEntry>>;
    /// Erases `user` (see the module notes) and writes `audit` in the same
    /// transaction. `NotFound`: no such live account.
    async fn erase_user(
        &self,
        user: Uuid,
        events: &ErasureEvents,
        audit: &AuditEntry,
        now: OffsetDateTime,
    ) -> StoreResult<Erasure>;
}

macro_rules! own_data_store {
    ($store:ident) => {
        #[async_trait]
        impl OwnDataStore for $store {
            async fn authored_messages(
                &self,
                user: Uuid,
                after: Option<Uuid>,
                limit: i64,
            ) -> StoreResult<Vec<Message>> {
                Ok(sqlx::query_as::<_, Message>(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE author_id = $1 AND ($2 IS NULL OR id > $2) \
                      ORDER BY id LIMIT $3"
                ))
                .bind(user)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn own_reactions(&self, user: Uuid) -> StoreResult<Vec<OwnReaction>> {
                Ok(sqlx::query_as::<_, OwnReaction>(
                    "SELECT r.message_id, m.conversation_id, r.emoji, r.created_at \
                     FROM reactions r JOIN messages m ON m.id = r.message_id \
                     WHERE r.user_id = $1 ORDER BY r.created_at",
                )
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn own_attachments(&self, user: Uuid) -> StoreResult<Vec<Attachment>> {
                Ok(sqlx::query_as::<_, Attachment>(concat!(
                    "SELECT ",
                    attachment_cols!(),
                    " FROM attachments WHERE owner_id = $1 AND deleted_at IS NULL ORDER BY id"
                ))
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn own_sessions(&self, user: Uuid) -> StoreResult<Vec<Session>> {
                Ok(sqlx::query_as::<_, Session>(concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM sessions WHERE user_id = $1 ORDER BY created_at"
                ))
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn own_audit(&self, user: Uuid) -> StoreResult<Vec<AuditEntry>> {
                Ok(sqlx::query_as::<_, AuditEntry>(
                    "SELECT id, at, actor_id, action, target_type, target_id, ip, details \
                     FROM audit_log WHERE actor_id = $1 ORDER BY id",
                )
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn erase_user(
                &self,
                user: Uuid,
                events: &ErasureEvents,
                audit: &AuditEntry,
                now: OffsetDateTime,
            ) -> StoreResult<Erasure> {
                let mut tx = self.pool.begin().await?;
                // First, so two erasures of one account cannot interleave.
                let live = sqlx::query(
                    "UPDATE users SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(user)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if live.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                }
                let mut erasure = Erasure::default();
                let mut appended: Vec<NewEvent> = Vec::new();

                // Their messages become tombstones; others' reactions on
                // them go with the text, as on a delete.
                sqlx::query(
                    "DELETE FROM reactions WHERE message_id IN \
                     (SELECT id FROM messages WHERE author_id = $1)",
                )
                .bind(user)
                .execute(&mut *tx)
                .await?;
                let tombstones = sqlx::query_as::<_, Message>(concat!(
                    "UPDATE messages SET body = NULL, attachment = NULL, deleted_at = $2 \
                     WHERE author_id = $1 AND deleted_at IS NULL RETURNING ",
                    message_cols!()
                ))
                .bind(user)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                erasure.messages = tombstones.len() as u64;
                appended.extend(tombstones.iter().map(events.message_deleted));

                // Their reactions on others' messages, with the counts after.
                let reactions: Vec<(Uuid, String)> = sqlx::query_as(
                    "DELETE FROM reactions WHERE user_id = $1 RETURNING message_id, emoji",
                )
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                for (message, emoji) in reactions {
                    let row: Option<(Uuid, i64)> = sqlx::query_as(
                        "SELECT m.conversation_id, \
                                (SELECT COUNT(*) FROM reactions r WHERE r.message_id = m.id AND r.emoji = $2) \
                         FROM messages m WHERE m.id = $1",
                    )
                    .bind(message)
                    .bind(&emoji)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((conversation, count)) = row {
                        appended.push((events.reaction_removed)(
                            conversation,
                            message,
                            user,
                            &emoji,
                            count,
                        ));
                    }
                }

                // Their uploads, avatar included.
                sqlx::query("UPDATE users SET avatar_id = NULL WHERE id = $1")
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                erasure.attachments = sqlx::query_scalar(
                    "UPDATE attachments SET deleted_at = $2 \
                     WHERE owner_id = $1 AND deleted_at IS NULL RETURNING id",
                )
                .bind(user)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;

                // Out of every conversation (an owner's group passes on).
                let conversations: Vec<Uuid> =
                    sqlx::query_scalar("SELECT conversation_id FROM members WHERE user_id = $1")
                        .bind(user)
                        .fetch_all(&mut *tx)
                        .await?;
                for conversation in conversations {
                    if leave_conversation!(tx, conversation, user) {
                        appended.push((events.member_removed)(conversation, user));
                        erasure.conversations.push(conversation);
                    }
                }

                // Contacts both ways; the others learn it is gone.
                let others: Vec<Uuid> = sqlx::query_scalar(
                    "DELETE FROM contacts WHERE other_id = $1 RETURNING owner_id",
                )
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                appended.extend(others.iter().map(|other| (events.contact_removed)(*other, user)));
                sqlx::query("DELETE FROM contacts WHERE owner_id = $1")
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;

                // Every login (with its addresses and user agents).
                let mut families: Vec<Uuid> = sqlx::query_scalar(
                    "DELETE FROM sessions WHERE user_id = $1 RETURNING family_id",
                )
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                families.sort_unstable();
                families.dedup();
                erasure.families = families;

                // Their own call history and live call rows; calls others
                // see in their history stay (they point at this row).
                for statement in [
                    "DELETE FROM call_users WHERE user_id = $1",
                    "DELETE FROM call_participants WHERE user_id = $1",
                    "DELETE FROM call_locks WHERE user_id = $1",
                    "DELETE FROM notifications WHERE user_id = $1",
                    "DELETE FROM push_subscriptions WHERE user_id = $1",
                ] {
                    sqlx::query(statement).bind(user).execute(&mut *tx).await?;
                }
                // Others' notifications about them lose the name and the
                // text they quoted.
                sqlx::query(
                    "UPDATE notifications SET actor_name = $2, excerpt = NULL WHERE actor_id = $1",
                )
                .bind(user)
                .bind(DELETED_USER_NAME)
                .execute(&mut *tx)
                .await?;
                // Audit entries keep what happened, not where from.
                sqlx::query("UPDATE audit_log SET ip = NULL WHERE actor_id = $1 OR target_id = $2")
                    .bind(user)
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await?;

                // The row stays as a placeholder; nothing in it names them.
                sqlx::query(
                    "UPDATE users SET username = $2, email = $3, password_hash = '', \
                     display_name = $4, search_name = '', status_text = '', avatar_url = NULL, \
                     is_admin = $5, terms_version = NULL, terms_accepted_at = NULL, updated_at = $6 \
                     WHERE id = $1",
                )
                .bind(user)
                .bind(format!("deleted-{}", user.simple()))
                .bind(format!("{}@deleted.invalid", user.simple()))
                .bind(DELETED_USER_NAME)
                .bind(false)
                .bind(now)
                .execute(&mut *tx)
                .await?;

                append_events!(tx, &appended, now);
                insert_audit!(&mut *tx, audit);
                tx.commit().await?;
                Ok(erasure)
            }
        }
    };
}

own_data_store!(PgStore);
own_data_store!(SqliteStore);
