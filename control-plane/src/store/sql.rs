//! The SQL behind [`Store`], written once and compiled for both backends.
//!
//! sqlx's `Any` driver has no UUID or time types, and code generic over
//! `sqlx::Database` drowns in trait bounds, so [`sql_store!`] expands the
//! same method bodies for [`PgStore`] and [`SqliteStore`]. The SQL itself
//! sticks to what both dialects share: `$n` placeholders, `RETURNING`,
//! `ON CONFLICT`, row values, and no database clock.

use async_trait::async_trait;
use sqlx::{PgPool, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

/// The store on Postgres.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

/// The store on SQLite (embedded mode).
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

/// Whether `error` is a broken UNIQUE constraint.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// The text that names the broken constraint, on either backend (Postgres
/// names the constraint, SQLite the columns).
fn violated(error: &sqlx::Error) -> String {
    error
        .as_database_error()
        .map(|e| format!("{} {}", e.constraint().unwrap_or_default(), e.message()))
        .unwrap_or_default()
}

/// Columns of `users`, bare or qualified with `u.`.
macro_rules! user_cols {
    () => {
        "id, username, email, password_hash, display_name, status_text, avatar_url, is_admin, created_at, updated_at, \
         avatar_id, terms_version, terms_accepted_at, deleted_at"
    };
    (u) => {
        "u.id, u.username, u.email, u.password_hash, u.display_name, u.status_text, u.avatar_url, u.is_admin, u.created_at, u.updated_at, \
         u.avatar_id, u.terms_version, u.terms_accepted_at, u.deleted_at"
    };
}

macro_rules! session_cols {
    () => {
        "id, user_id, family_id, token_hash, created_at, expires_at, rotated_at, revoked_at, user_agent, ip"
    };
}

macro_rules! message_cols {
    () => {
        "id, conversation_id, seq, author_id, client_message_id, body, reply_to, created_at, edited_at, deleted_at, kind, attachment"
    };
}

macro_rules! conversation_cols {
    () => {
        "id, kind, name, created_by, created_at, last_seq, last_activity_us"
    };
}

/// The conversation-list row: conversation, the viewer's membership, unread
/// count and the newest message (aliased `lm_*`).
macro_rules! summary_select {
    () => {
        "SELECT c.id, c.kind, c.name, c.created_by, c.created_at, c.last_seq, c.last_activity_us, \
                m.conversation_id, m.user_id, m.role, m.joined_at, m.last_read_seq, \
                (SELECT COUNT(*) FROM messages x \
                  WHERE x.conversation_id = c.id AND x.seq > m.last_read_seq \
                    AND x.deleted_at IS NULL \
                    AND (x.author_id IS NULL OR x.author_id <> m.user_id)) AS unread_count, \
                lm.id AS lm_id, lm.seq AS lm_seq, lm.author_id AS lm_author_id, \
                lm.client_message_id AS lm_client_message_id, lm.body AS lm_body, \
                lm.reply_to AS lm_reply_to, lm.created_at AS lm_created_at, \
                lm.edited_at AS lm_edited_at, lm.deleted_at AS lm_deleted_at, \
                lm.kind AS lm_kind, lm.attachment AS lm_attachment \
         FROM members m \
         JOIN conversations c ON c.id = m.conversation_id \
         LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq "
    };
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    #[sqlx(flatten)]
    conversation: Conversation,
    #[sqlx(flatten)]
    member: Member,
    unread_count: i64,
    lm_id: Option<Uuid>,
    lm_seq: Option<i64>,
    lm_author_id: Option<Uuid>,
    lm_client_message_id: Option<String>,
    lm_body: Option<String>,
    lm_reply_to: Option<Uuid>,
    lm_created_at: Option<OffsetDateTime>,
    lm_edited_at: Option<OffsetDateTime>,
    lm_deleted_at: Option<OffsetDateTime>,
    lm_kind: Option<String>,
    lm_attachment: Option<String>,
}

impl From<SummaryRow> for ConversationSummary {
    fn from(row: SummaryRow) -> Self {
        let last_message = match (row.lm_id, row.lm_seq, row.lm_created_at) {
            (Some(id), Some(seq), Some(created_at)) => Some(Message {
                id,
                conversation_id: row.conversation.id,
                seq,
                author_id: row.lm_author_id,
                client_message_id: row.lm_client_message_id,
                body: row.lm_body,
                reply_to: row.lm_reply_to,
                created_at,
                edited_at: row.lm_edited_at,
                deleted_at: row.lm_deleted_at,
                kind: row.lm_kind.unwrap_or_else(|| "text".to_owned()),
                attachment: row.lm_attachment,
            }),
            _ => None,
        };
        ConversationSummary {
            conversation: row.conversation,
            member: row.member,
            unread_count: row.unread_count,
            last_message,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    #[sqlx(flatten)]
    conversation: Conversation,
    #[sqlx(flatten)]
    member: Member,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    #[sqlx(try_from = "String")]
    status: ContactStatus,
    contact_updated_at: OffsetDateTime,
    #[sqlx(flatten)]
    user: User,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    #[sqlx(flatten)]
    member: Member,
    #[sqlx(flatten)]
    user: User,
}

/// The form of a display name that search matches: lower-cased with
/// Unicode rules in Rust, so both backends agree (SQLite's `lower()` only
/// folds ASCII).
fn search_name(display_name: &str) -> String {
    display_name.to_lowercase()
}

/// Microseconds since the Unix epoch: the integer form of activity times.
pub fn unix_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// `"<smaller>:<larger>"`: the one key of a pair's direct conversation.
fn direct_key(a: Uuid, b: Uuid) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// Inserts a refresh-token row through `$executor` (the pool, or a
/// transaction).
macro_rules! insert_session {
    ($executor:expr, $session:expr) => {{
        let session: &Session = $session;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, family_id, token_hash, created_at, \
             expires_at, rotated_at, revoked_at, user_agent, ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(session.family_id)
        .bind(&session.token_hash)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(session.rotated_at)
        .bind(session.revoked_at)
        .bind(&session.user_agent)
        .bind(&session.ip)
        .execute($executor)
        .await?;
    }};
}

/// Appends `events` inside the transaction `tx`.
macro_rules! append_events {
    ($tx:ident, $events:expr, $now:expr) => {
        for event in $events {
            sqlx::query(
                "INSERT INTO events (conversation_id, user_id, kind, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.conversation_id)
            .bind(event.user_id)
            .bind(event.kind)
            .bind(&event.payload)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    };
}

/// Removes `$user` from `$conversation` inside the transaction `$tx`: an
/// owner who leaves hands the group to an admin (else the longest member),
/// and the last one out deletes it. `false`: not a member. A concurrent
/// change of the heir's membership is `Conflict("owner")` (roll back).
macro_rules! leave_conversation {
    ($tx:ident, $conversation:expr, $user:expr) => {{
        let conversation: Uuid = $conversation;
        let user: Uuid = $user;
        // Lock the conversation so two departures cannot both pick
        // the other as heir and leave the group without an owner.
        sqlx::query("UPDATE conversations SET last_seq = last_seq WHERE id = $1")
            .bind(conversation)
            .execute(&mut *$tx)
            .await?;
        let role: Option<String> = sqlx::query_scalar(
            "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2 RETURNING role",
        )
        .bind(conversation)
        .bind(user)
        .fetch_optional(&mut *$tx)
        .await?;
        match role {
            None => false,
            Some(role) => {
                if Role::parse(&role) == Some(Role::Owner) {
                    let heir: Option<Uuid> = sqlx::query_scalar(
                        "SELECT user_id FROM members WHERE conversation_id = $1 \
                         ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at LIMIT 1",
                    )
                    .bind(conversation)
                    .fetch_optional(&mut *$tx)
                    .await?;
                    match heir {
                        Some(heir) => {
                            let promoted = sqlx::query(
                                "UPDATE members SET role = 'owner' \
                                 WHERE conversation_id = $1 AND user_id = $2",
                            )
                            .bind(conversation)
                            .bind(heir)
                            .execute(&mut *$tx)
                            .await?;
                            if promoted.rows_affected() != 1 {
                                return Err(StoreError::Conflict("owner"));
                            }
                        }
                        None => {
                            sqlx::query("DELETE FROM conversations WHERE id = $1")
                                .bind(conversation)
                                .execute(&mut *$tx)
                                .await?;
                        }
                    }
                }
                true
            }
        }
    }};
}

/// Appends one audit entry through `$executor`.
macro_rules! insert_audit {
    ($executor:expr, $entry:expr) => {{
        let entry: &AuditEntry = $entry;
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor_id, action, target_type, target_id, ip, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.id)
        .bind(entry.at)
        .bind(entry.actor_id)
        .bind(&entry.action)
        .bind(&entry.target_type)
        .bind(&entry.target_id)
        .bind(&entry.ip)
        .bind(&entry.details)
        .execute($executor)
        .await?;
    }};
}

/// The stored key of `$purpose` in `signing_keys`, inserting `$candidate`
/// if there is none: one row per purpose, whichever replica inserts first
/// wins, and every replica then reads that same row.
macro_rules! first_key {
    ($pool:expr, $purpose:literal, $candidate:expr) => {{
        let candidate: &SigningKeyRecord = $candidate;
        sqlx::query(
            "INSERT INTO signing_keys (purpose, kid, private_pkcs8, public_key, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (purpose) DO NOTHING",
        )
        .bind($purpose)
        .bind(&candidate.kid)
        .bind(&candidate.private_pkcs8)
        .bind(&candidate.public_key)
        .bind(candidate.created_at)
        .execute(&$pool)
        .await?;
        sqlx::query_as::<_, SigningKeyRecord>(
            "SELECT kid, private_pkcs8, public_key, created_at \
             FROM signing_keys WHERE purpose = $1",
        )
        .bind($purpose)
        .fetch_optional(&$pool)
        .await?
        .ok_or(StoreError::NotFound)
    }};
}

/// Implements [`Store`] for `$store`. `$watermark` is SQL for the oldest
/// transaction id that may still commit: events at or above it are not
/// final yet (see `migrations/postgres/0002_events.sql`).
macro_rules! sql_store {
    ($store:ident, $watermark:literal, $search:expr, $search_terms:expr) => {
        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_user(&self, user: &User) -> StoreResult<()> {
                let result = sqlx::query(
                    "INSERT INTO users (id, username, email, password_hash, display_name, \
                     status_text, avatar_url, is_admin, created_at, updated_at, search_name, \
                     terms_version, terms_accepted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(user.id)
                .bind(&user.username)
                .bind(&user.email)
                .bind(&user.password_hash)
                .bind(&user.display_name)
                .bind(&user.status_text)
                .bind(&user.avatar_url)
                .bind(user.is_admin)
                .bind(user.created_at)
                .bind(user.updated_at)
                .bind(search_name(&user.display_name))
                .bind(&user.terms_version)
                .bind(user.terms_accepted_at)
                .execute(&self.pool)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => {
                        if violated(&e).contains("email") {
                            Err(StoreError::Conflict("email"))
                        } else {
                            Err(StoreError::Conflict("username"))
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
                Ok(sqlx::query_as::<_, User>(concat!(
                    "SELECT ",
                    user_cols!(),
                    " FROM users WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn user_by_login(&self, login: &str) -> StoreResult<Option<User>> {
                Ok(sqlx::query_as::<_, User>(concat!(
                    "SELECT ",
                    user_cols!(),
                    " FROM users WHERE (username = $1 OR email = $1) AND deleted_at IS NULL"
                ))
                .bind(login)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn search_users(&self, prefix: &str, limit: i64) -> StoreResult<Vec<User>> {
                let pattern = format!("{prefix}%");
                Ok(sqlx::query_as::<_, User>(concat!(
                    "SELECT ",
                    user_cols!(),
                    " FROM users WHERE (username LIKE $1 ESCAPE '\\' \
                       OR search_name LIKE $1 ESCAPE '\\') AND deleted_at IS NULL \
                     ORDER BY username LIMIT $2"
                ))
                .bind(pattern)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn update_profile(
                &self,
                id: Uuid,
                profile: &Profile,
                now: OffsetDateTime,
            ) -> StoreResult<User> {
                sqlx::query_as::<_, User>(concat!(
                    "UPDATE users SET display_name = $2, status_text = $3, avatar_url = $4, \
                     updated_at = $5, search_name = $6 WHERE id = $1 RETURNING ",
                    user_cols!()
                ))
                .bind(id)
                .bind(&profile.display_name)
                .bind(&profile.status_text)
                .bind(&profile.avatar_url)
                .bind(now)
                .bind(search_name(&profile.display_name))
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)
            }

            async fn set_avatar(
                &self,
                user: Uuid,
                avatar: Option<Uuid>,
                now: OffsetDateTime,
            ) -> StoreResult<(User, Option<Uuid>)> {
                let mut tx = self.pool.begin().await?;
                let current: Option<Uuid> =
                    sqlx::query_scalar("SELECT avatar_id FROM users WHERE id = $1 AND deleted_at IS NULL")
                        .bind(user)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or(StoreError::NotFound)?;
                if let Some(id) = avatar
                    && current != Some(id)
                {
                    // Kind 'avatar' from now on: no message can take it and
                    // the orphan sweep passes it by. The row lock orders this
                    // against a concurrent send or sweep of the same upload.
                    let taken = sqlx::query(
                        "UPDATE attachments SET kind = 'avatar' \
                         WHERE id = $1 AND owner_id = $2 AND kind = 'image' \
                           AND message_id IS NULL AND deleted_at IS NULL",
                    )
                    .bind(id)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                    if taken.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Err(StoreError::NotFound);
                    }
                }
                let replaced = current.filter(|old| Some(*old) != avatar);
                if let Some(old) = replaced {
                    sqlx::query("UPDATE attachments SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                        .bind(old)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                let updated = sqlx::query_as::<_, User>(concat!(
                    "UPDATE users SET avatar_id = $2, \
                     avatar_url = CASE WHEN $2 IS NULL THEN avatar_url ELSE NULL END, \
                     updated_at = $3 WHERE id = $1 RETURNING ",
                    user_cols!()
                ))
                .bind(user)
                .bind(avatar)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((updated, replaced))
            }

            async fn set_password_hash(
                &self,
                id: Uuid,
                hash: &str,
                now: OffsetDateTime,
            ) -> StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(hash)
                .bind(now)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn set_admin(&self, username: &str, is_admin: bool) -> StoreResult<bool> {
                let done = sqlx::query("UPDATE users SET is_admin = $2 WHERE username = $1")
                    .bind(username)
                    .bind(is_admin)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_session(&self, session: &Session) -> StoreResult<()> {
                insert_session!(&self.pool, session);
                Ok(())
            }

            async fn rotate_session(
                &self,
                presented: &[u8],
                next: &Session,
                now: OffsetDateTime,
            ) -> StoreResult<Rotation> {
                let mut tx = self.pool.begin().await?;
                // Claim the presented token first (a write, so concurrent
                // refreshes of one token serialise and only one wins).
                let claimed = sqlx::query_as::<_, Session>(concat!(
                    "UPDATE sessions SET rotated_at = $2 \
                     WHERE token_hash = $1 AND rotated_at IS NULL AND revoked_at IS NULL \
                     RETURNING ",
                    session_cols!()
                ))
                .bind(presented)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                match claimed {
                    Some(old) if old.expires_at > now => {
                        let next = Session {
                            user_id: old.user_id,
                            family_id: old.family_id,
                            ..next.clone()
                        };
                        insert_session!(&mut *tx, &next);
                        tx.commit().await?;
                        Ok(Rotation::Rotated {
                            user_id: old.user_id,
                            family_id: old.family_id,
                        })
                    }
                    Some(_expired) => {
                        tx.rollback().await?;
                        Ok(Rotation::Invalid)
                    }
                    None => {
                        tx.rollback().await?;
                        let known = sqlx::query_as::<_, Session>(concat!(
                            "SELECT ",
                            session_cols!(),
                            " FROM sessions WHERE token_hash = $1"
                        ))
                        .bind(presented)
                        .fetch_optional(&self.pool)
                        .await?;
                        Ok(match known {
                            Some(s) if s.revoked_at.is_none() && s.rotated_at.is_some() => {
                                Rotation::Reused {
                                    user_id: s.user_id,
                                    family_id: s.family_id,
                                }
                            }
                            _ => Rotation::Invalid,
                        })
                    }
                }
            }

            async fn login_active(&self, family_id: Uuid) -> StoreResult<bool> {
                let live: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM sessions WHERE family_id = $1 AND revoked_at IS NULL LIMIT 1",
                )
                .bind(family_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(live.is_some())
            }

            async fn revoke_family(&self, family_id: Uuid, now: OffsetDateTime) -> StoreResult<u64> {
                // A rotation racing with this revocation may commit a new
                // token that the first UPDATE's snapshot cannot see; repeat
                // until a pass finds nothing (rotations only claim tokens that
                // are not revoked, so this converges in a pass or two).
                let mut revoked = 0;
                for _ in 0..8 {
                    let done = sqlx::query(
                        "UPDATE sessions SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                    )
                    .bind(family_id)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    if done.rows_affected() == 0 {
                        break;
                    }
                    revoked += done.rows_affected();
                }
                Ok(revoked)
            }

            async fn revoke_user_sessions(
                &self,
                user_id: Uuid,
                except_family: Option<Uuid>,
                now: OffsetDateTime,
            ) -> StoreResult<Vec<Uuid>> {
                let mut families: Vec<Uuid> = sqlx::query_scalar(
                    "UPDATE sessions SET revoked_at = $2 \
                     WHERE user_id = $1 AND revoked_at IS NULL \
                       AND ($3 IS NULL OR family_id <> $3) RETURNING family_id",
                )
                .bind(user_id)
                .bind(now)
                .bind(except_family)
                .fetch_all(&self.pool)
                .await?;
                families.sort_unstable();
                families.dedup();
                Ok(families)
            }

            async fn signing_key(&self, candidate: &SigningKeyRecord) -> StoreResult<SigningKeyRecord> {
                first_key!(self.pool, "access", candidate)
            }

            async fn ring_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
                let rows: Vec<(String, Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
                    "SELECT kid, private_pkcs8, public_key, created_us FROM key_ring \
                     ORDER BY created_us, kid",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(kid, private_pkcs8, public_key, created_us)| SigningKeyRecord {
                        kid,
                        private_pkcs8,
                        public_key,
                        created_at: OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(created_us) * 1000,
                        )
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    })
                    .collect())
            }

            async fn add_ring_key(
                &self,
                key: &SigningKeyRecord,
                newest_seen: Option<OffsetDateTime>,
            ) -> StoreResult<bool> {
                let added = sqlx::query(
                    "INSERT INTO key_ring (kid, private_pkcs8, public_key, created_us) \
                     SELECT $1, $2, $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM key_ring WHERE created_us > $5) \
                     ON CONFLICT (kid) DO NOTHING",
                )
                .bind(&key.kid)
                .bind(&key.private_pkcs8)
                .bind(&key.public_key)
                .bind(unix_micros(key.created_at))
                .bind(newest_seen.map_or(i64::MIN, unix_micros))
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(added == 1)
            }

            async fn remove_ring_key(&self, kid: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM key_ring WHERE kid = $1")
                    .bind(kid)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn contact(&self, owner: Uuid, other: Uuid) -> StoreResult<Option<ContactStatus>> {
                let status: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM contacts WHERE owner_id = $1 AND other_id = $2",
                )
                .bind(owner)
                .bind(other)
                .fetch_optional(&self.pool)
                .await?;
                Ok(status.as_deref().and_then(ContactStatus::parse))
            }

            async fn set_contact_pair(
                &self,
                a: Uuid,
                b: Uuid,
                expected: (Option<ContactStatus>, Option<ContactStatus>),
                views: (Option<ContactStatus>, Option<ContactStatus>),
                events: &[NewEvent],
                now: OffsetDateTime,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                // Lock the pair (through the smaller user's row) before
                // reading, so two changes to one relationship serialise and
                // a block can never be overwritten by a request in flight.
                sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
                    .bind(a.min(b))
                    .execute(&mut *tx)
                    .await?;
                let mut current = Vec::with_capacity(2);
                for (owner, other) in [(a, b), (b, a)] {
                    let status: Option<String> = sqlx::query_scalar(
                        "SELECT status FROM contacts WHERE owner_id = $1 AND other_id = $2",
                    )
                    .bind(owner)
                    .bind(other)
                    .fetch_optional(&mut *tx)
                    .await?;
                    current.push(status.as_deref().and_then(ContactStatus::parse));
                }
                if (current[0], current[1]) != expected {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for (owner, other, view) in [(a, b, views.0), (b, a, views.1)] {
                    match view {
                        Some(status) => {
                            sqlx::query(
                                "INSERT INTO contacts (owner_id, other_id, status, created_at, updated_at) \
                                 VALUES ($1, $2, $3, $4, $4) \
                                 ON CONFLICT (owner_id, other_id) \
                                 DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
                            )
                            .bind(owner)
                            .bind(other)
                            .bind(status.as_str())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM contacts WHERE owner_id = $1 AND other_id = $2")
                                .bind(owner)
                                .bind(other)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                append_events!(tx, events, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn contacts(
                &self,
                owner: Uuid,
                status: Option<ContactStatus>,
            ) -> StoreResult<Vec<ContactEntry>> {
                let rows = sqlx::query_as::<_, ContactRow>(concat!(
                    "SELECT c.status, c.updated_at AS contact_updated_at, ",
                    user_cols!(u),
                    " FROM contacts c JOIN users u ON u.id = c.other_id \
                     WHERE c.owner_id = $1 AND ($2 IS NULL OR c.status = $2) \
                     ORDER BY u.username"
                ))
                .bind(owner)
                .bind(status.map(ContactStatus::as_str))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| ContactEntry {
                        user: row.user,
                        status: row.status,
                        updated_at: row.contact_updated_at,
                    })
                    .collect())
            }

            async fn direct_conversation(
                &self,
                id: Uuid,
                a: Uuid,
                b: Uuid,
                events: &[NewEvent],
                now: OffsetDateTime,
            ) -> StoreResult<(Conversation, bool)> {
                let key = direct_key(a, b);
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO conversations (id, kind, name, direct_key, created_by, created_at, \
                     last_seq, last_activity_us) VALUES ($1, 'direct', NULL, $2, $3, $4, 0, $5) \
                     ON CONFLICT (direct_key) DO NOTHING",
                )
                .bind(id)
                .bind(&key)
                .bind(a)
                .bind(now)
                .bind(unix_micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if inserted {
                    for user in [a, b] {
                        sqlx::query(
                            "INSERT INTO members (conversation_id, user_id, role, joined_at, last_read_seq) \
                             VALUES ($1, $2, 'member', $3, 0)",
                        )
                        .bind(id)
                        .bind(user)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    append_events!(tx, events, now);
                }
                tx.commit().await?;
                let conversation = sqlx::query_as::<_, Conversation>(concat!(
                    "SELECT ",
                    conversation_cols!(),
                    " FROM conversations WHERE direct_key = $1"
                ))
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
                Ok((conversation, inserted))
            }

            async fn create_group(
                &self,
                conversation: &Conversation,
                owner: Uuid,
                members: &[Uuid],
                events: &[NewEvent],
            ) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO conversations (id, kind, name, direct_key, created_by, created_at, \
                     last_seq, last_activity_us) VALUES ($1, 'group', $2, NULL, $3, $4, 0, $5)",
                )
                .bind(conversation.id)
                .bind(&conversation.name)
                .bind(owner)
                .bind(conversation.created_at)
                .bind(unix_micros(conversation.created_at))
                .execute(&mut *tx)
                .await?;
                let others = members.iter().copied().filter(|m| *m != owner);
                for (user, role) in std::iter::once((owner, Role::Owner))
                    .chain(others.map(|m| (m, Role::Member)))
                {
                    sqlx::query(
                        "INSERT INTO members (conversation_id, user_id, role, joined_at, last_read_seq) \
                         VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
                    )
                    .bind(conversation.id)
                    .bind(user)
                    .bind(role.as_str())
                    .bind(conversation.created_at)
                    .execute(&mut *tx)
                    .await?;
                }
                append_events!(tx, events, conversation.created_at);
                tx.commit().await?;
                Ok(())
            }

            async fn membership(
                &self,
                conversation: Uuid,
                user: Uuid,
            ) -> StoreResult<Option<(Conversation, Member)>> {
                let row = sqlx::query_as::<_, MembershipRow>(
                    "SELECT c.id, c.kind, c.name, c.created_by, c.created_at, c.last_seq, \
                            c.last_activity_us, m.conversation_id, m.user_id, m.role, m.joined_at, \
                            m.last_read_seq \
                     FROM members m JOIN conversations c ON c.id = m.conversation_id \
                     WHERE m.conversation_id = $1 AND m.user_id = $2",
                )
                .bind(conversation)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| (r.conversation, r.member)))
            }

            async fn conversations(
                &self,
                user: Uuid,
                cursor: Option<ActivityCursor>,
                limit: i64,
            ) -> StoreResult<Vec<ConversationSummary>> {
                let rows = sqlx::query_as::<_, SummaryRow>(concat!(
                    summary_select!(),
                    "WHERE m.user_id = $1 AND ($2 IS NULL OR c.last_activity_us < $2 \
                        OR (c.last_activity_us = $2 AND c.id < $3)) \
                     ORDER BY c.last_activity_us DESC, c.id DESC LIMIT $4"
                ))
                .bind(user)
                .bind(cursor.map(|c| c.activity_us))
                .bind(cursor.map(|c| c.id))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn conversation_summary(
                &self,
                conversation: Uuid,
                user: Uuid,
            ) -> StoreResult<Option<ConversationSummary>> {
                let row = sqlx::query_as::<_, SummaryRow>(concat!(
                    summary_select!(),
                    "WHERE m.user_id = $1 AND c.id = $2"
                ))
                .bind(user)
                .bind(conversation)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn rename_conversation(
                &self,
                conversation: Uuid,
                name: &str,
                events: &[NewEvent],
                now: OffsetDateTime,
            ) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(
                    "UPDATE conversations SET name = $2, last_activity_us = $3 WHERE id = $1",
                )
                .bind(conversation)
                .bind(name)
                .bind(unix_micros(now))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                }
                append_events!(tx, events, now);
                tx.commit().await?;
                Ok(())
            }

            async fn delete_conversation(
                &self,
                conversation: Uuid,
                render: RenderMemberEvent,
                now: OffsetDateTime,
            ) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                // Lock first, so nobody joins between listing and deleting.
                sqlx::query("UPDATE conversations SET last_seq = last_seq WHERE id = $1")
                    .bind(conversation)
                    .execute(&mut *tx)
                    .await?;
                let members: Vec<Uuid> =
                    sqlx::query_scalar("SELECT user_id FROM members WHERE conversation_id = $1")
                        .bind(conversation)
                        .fetch_all(&mut *tx)
                        .await?;
                let events: Vec<NewEvent> = members.iter().map(|m| render(conversation, *m)).collect();
                append_events!(tx, &events, now);
                sqlx::query("DELETE FROM conversations WHERE id = $1")
                    .bind(conversation)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn members(&self, conversation: Uuid) -> StoreResult<Vec<MemberEntry>> {
                let rows = sqlx::query_as::<_, MemberRow>(concat!(
                    "SELECT m.conversation_id, m.user_id, m.role, m.joined_at, m.last_read_seq, ",
                    user_cols!(u),
                    " FROM members m JOIN users u ON u.id = m.user_id \
                     WHERE m.conversation_id = $1 ORDER BY m.joined_at, u.username"
                ))
                .bind(conversation)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| MemberEntry {
                        member: r.member,
                        user: r.user,
                    })
                    .collect())
            }

            async fn add_members(
                &self,
                conversation: Uuid,
                users: &[Uuid],
                max_members: i64,
                render: RenderMemberEvent,
                now: OffsetDateTime,
            ) -> StoreResult<Vec<Uuid>> {
                let mut tx = self.pool.begin().await?;
                // Lock the conversation first so concurrent additions cannot
                // both pass the member limit.
                let touched = sqlx::query(
                    "UPDATE conversations SET last_activity_us = $2 WHERE id = $1",
                )
                .bind(conversation)
                .bind(unix_micros(now))
                .execute(&mut *tx)
                .await?;
                if touched.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                let mut added = Vec::new();
                for &user in users {
                    if added.contains(&user) {
                        continue;
                    }
                    let done = sqlx::query(
                        "INSERT INTO members (conversation_id, user_id, role, joined_at, last_read_seq) \
                         VALUES ($1, $2, 'member', $3, 0) ON CONFLICT DO NOTHING",
                    )
                    .bind(conversation)
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        added.push(user);
                    }
                }
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE conversation_id = $1")
                        .bind(conversation)
                        .fetch_one(&mut *tx)
                        .await?;
                if count > max_members {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict("member_limit"));
                }
                let events: Vec<NewEvent> = added.iter().map(|u| render(conversation, *u)).collect();
                append_events!(tx, &events, now);
                tx.commit().await?;
                Ok(added)
            }

            async fn remove_member(
                &self,
                conversation: Uuid,
                user: Uuid,
                events: &[NewEvent],
                now: OffsetDateTime,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                if !leave_conversation!(tx, conversation, user) {
                    tx.rollback().await?;
                    return Ok(false);
                }
                append_events!(tx, events, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn set_role(&self, conversation: Uuid, user: Uuid, role: Role) -> StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(conversation)
                .bind(user)
                .bind(role.as_str())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn send_message(
                &self,
                message: &NewMessage,
                render: RenderMessageEvent,
            ) -> StoreResult<(Message, bool)> {
                let mut tx = self.pool.begin().await?;
                // Taking the next sequence number locks the conversation, so
                // sends in one conversation are serialised: sequence numbers
                // are gapless and a retried send sees the first one.
                let seq: Option<i64> = sqlx::query_scalar(
                    "UPDATE conversations SET last_seq = last_seq + 1, last_activity_us = $2 \
                     WHERE id = $1 RETURNING last_seq",
                )
                .bind(message.conversation_id)
                .bind(unix_micros(message.now))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(seq) = seq else {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                };
                if let Some(client_id) = &message.client_message_id {
                    let earlier = sqlx::query_as::<_, Message>(concat!(
                        "SELECT ",
                        message_cols!(),
                        " FROM messages WHERE conversation_id = $1 AND author_id = $2 \
                         AND client_message_id = $3"
                    ))
                    .bind(message.conversation_id)
                    .bind(message.author_id)
                    .bind(client_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(earlier) = earlier {
                        tx.rollback().await?;
                        return Ok((earlier, false));
                    }
                }
                let stored = sqlx::query_as::<_, Message>(concat!(
                    "INSERT INTO messages (id, conversation_id, seq, author_id, client_message_id, \
                     body, reply_to, created_at, edited_at, deleted_at, kind, attachment) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9, $10) RETURNING ",
                    message_cols!()
                ))
                .bind(message.id)
                .bind(message.conversation_id)
                .bind(seq)
                .bind(message.author_id)
                .bind(&message.client_message_id)
                .bind(&message.body)
                .bind(message.reply_to)
                .bind(message.now)
                .bind(&message.kind)
                .bind(message.attachment.as_ref().map(|a| &a.1))
                .fetch_one(&mut *tx)
                .await?;
                // The attachment becomes this message's, if it is still
                // the sender's own pending upload (not sent, not swept).
                if let Some((attachment, _)) = &message.attachment {
                    let claimed = sqlx::query(
                        "UPDATE attachments SET message_id = $1, conversation_id = $2 \
                         WHERE id = $3 AND owner_id = $4 AND message_id IS NULL AND deleted_at IS NULL \
                           AND kind <> 'avatar'",
                    )
                    .bind(message.id)
                    .bind(message.conversation_id)
                    .bind(attachment)
                    .bind(message.author_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if claimed == 0 {
                        tx.rollback().await?;
                        return Err(StoreError::Conflict("attachment"));
                    }
                }
                // The sender has read everything up to their own message.
                sqlx::query(
                    "UPDATE members SET last_read_seq = $3 \
                     WHERE conversation_id = $1 AND user_id = $2 AND last_read_seq < $3",
                )
                .bind(message.conversation_id)
                .bind(message.author_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                append_events!(tx, &[render(&stored)], message.now);
                tx.commit().await?;
                Ok((stored, true))
            }

            async fn message(&self, conversation: Uuid, id: Uuid) -> StoreResult<Option<Message>> {
                Ok(sqlx::query_as::<_, Message>(concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE conversation_id = $1 AND id = $2"
                ))
                .bind(conversation)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn messages(&self, conversation: Uuid, page: MessagePage) -> StoreResult<Vec<Message>> {
                let mut rows = match page {
                    MessagePage::Latest { limit } => {
                        sqlx::query_as::<_, Message>(concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2"
                        ))
                        .bind(conversation)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    MessagePage::Before { seq, limit } => {
                        sqlx::query_as::<_, Message>(concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE conversation_id = $1 AND seq < $2 \
                             ORDER BY seq DESC LIMIT $3"
                        ))
                        .bind(conversation)
                        .bind(seq)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    MessagePage::After { seq, limit } => {
                        sqlx::query_as::<_, Message>(concat!(
                            "SELECT ",
                            message_cols!(),
                            " FROM messages WHERE conversation_id = $1 AND seq > $2 \
                             ORDER BY seq ASC LIMIT $3"
                        ))
                        .bind(conversation)
                        .bind(seq)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                };
                rows.sort_by_key(|m| m.seq);
                Ok(rows)
            }

            async fn edit_message(
                &self,
                id: Uuid,
                body: &str,
                render: RenderMessageEvent,
                now: OffsetDateTime,
            ) -> StoreResult<Message> {
                let mut tx = self.pool.begin().await?;
                let message = sqlx::query_as::<_, Message>(concat!(
                    "UPDATE messages SET body = $2, edited_at = $3 \
                     WHERE id = $1 AND deleted_at IS NULL RETURNING ",
                    message_cols!()
                ))
                .bind(id)
                .bind(body)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
                append_events!(tx, &[render(&message)], now);
                tx.commit().await?;
                Ok(message)
            }

            async fn delete_message(
                &self,
                id: Uuid,
                render: RenderMessageEvent,
                now: OffsetDateTime,
            ) -> StoreResult<(Message, Vec<Uuid>)> {
                let mut tx = self.pool.begin().await?;
                let message = sqlx::query_as::<_, Message>(concat!(
                    "UPDATE messages SET body = NULL, attachment = NULL, \
                     deleted_at = COALESCE(deleted_at, $2) \
                     WHERE id = $1 RETURNING ",
                    message_cols!()
                ))
                .bind(id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
                sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                // Its attachments are due for removal (the caller removes
                // the blobs at once; the sweep retries what fails).
                let attachments: Vec<Uuid> = sqlx::query_scalar(
                    "UPDATE attachments SET deleted_at = $2 \
                     WHERE message_id = $1 AND deleted_at IS NULL RETURNING id",
                )
                .bind(id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                append_events!(tx, &[render(&message)], now);
                tx.commit().await?;
                Ok((message, attachments))
            }

            async fn search_messages(
                &self,
                user: Uuid,
                text: &str,
                conversation: Option<Uuid>,
                before: Option<Uuid>,
                limit: i64,
            ) -> StoreResult<Vec<SearchHit>> {
                let Some(terms) = $search_terms(text) else {
                    return Ok(Vec::new());
                };
                Ok(sqlx::query_as::<_, SearchHit>($search)
                    .bind(user)
                    .bind(terms)
                    .bind(conversation)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn create_attachment(&self, attachment: &Attachment) -> StoreResult<()> {
                sqlx::query(concat!(
                    "INSERT INTO attachments (",
                    attachment_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, $11, NULL)"
                ))
                .bind(attachment.id)
                .bind(attachment.owner_id)
                .bind(&attachment.kind)
                .bind(&attachment.name)
                .bind(&attachment.content_type)
                .bind(attachment.size_bytes)
                .bind(attachment.width)
                .bind(attachment.height)
                .bind(attachment.duration_ms)
                .bind(attachment.thumbnail)
                .bind(attachment.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn attachment(&self, id: Uuid) -> StoreResult<Option<Attachment>> {
                Ok(sqlx::query_as::<_, Attachment>(concat!(
                    "SELECT ",
                    attachment_cols!(),
                    " FROM attachments WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn claim_attachments_to_sweep(
                &self,
                pending_before: OffsetDateTime,
                now: OffsetDateTime,
                limit: i64,
            ) -> StoreResult<Vec<Uuid>> {
                // Marked deleted in the same statement that picks them, with
                // the condition checked again on each row: a send that
                // claimed an upload meanwhile wins, and a claimed upload is
                // never swept (a send needs deleted_at IS NULL).
                Ok(sqlx::query_scalar(
                    "UPDATE attachments SET deleted_at = COALESCE(deleted_at, $2) \
                     WHERE id IN (SELECT id FROM attachments \
                                  WHERE deleted_at IS NOT NULL \
                                     OR (message_id IS NULL AND kind <> 'avatar' AND created_at < $1) \
                                  ORDER BY created_at LIMIT $3) \
                       AND (deleted_at IS NOT NULL \
                            OR (message_id IS NULL AND kind <> 'avatar' AND created_at < $1)) \
                     RETURNING id",
                )
                .bind(pending_before)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn forget_attachment(&self, id: Uuid) -> StoreResult<()> {
                sqlx::query("DELETE FROM attachments WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_reaction(
                &self,
                message: Uuid,
                user: Uuid,
                emoji: &str,
                max_per_user: i64,
                event: &RenderReactionEvent,
                now: OffsetDateTime,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                // The cap is checked in the same statement (two racing
                // requests may pass it together: a soft cap by one).
                let added = sqlx::query(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
                     SELECT $1, $2, $3, $4 \
                     WHERE (SELECT COUNT(*) FROM reactions WHERE message_id = $1 AND user_id = $2) < $5 \
                     ON CONFLICT DO NOTHING",
                )
                .bind(message)
                .bind(user)
                .bind(emoji)
                .bind(now)
                .bind(max_per_user)
                .execute(&mut *tx)
                .await?;
                if added.rows_affected() > 0 {
                    // Others see it live and on resume, with the count.
                    let count: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM reactions WHERE message_id = $1 AND emoji = $2",
                    )
                    .bind(message)
                    .bind(emoji)
                    .fetch_one(&mut *tx)
                    .await?;
                    append_events!(tx, &[event(count)], now);
                    tx.commit().await?;
                    return Ok(true);
                }
                let there: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
                )
                .bind(message)
                .bind(user)
                .bind(emoji)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(there.is_some())
            }

            async fn remove_reaction(
                &self,
                message: Uuid,
                user: Uuid,
                emoji: &str,
                event: &RenderReactionEvent,
                now: OffsetDateTime,
            ) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                let removed = sqlx::query(
                    "DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
                )
                .bind(message)
                .bind(user)
                .bind(emoji)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if removed > 0 {
                    let count: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM reactions WHERE message_id = $1 AND emoji = $2",
                    )
                    .bind(message)
                    .bind(emoji)
                    .fetch_one(&mut *tx)
                    .await?;
                    append_events!(tx, &[event(count)], now);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn reactions(
                &self,
                conversation: Uuid,
                seqs: (i64, i64),
                viewer: Uuid,
            ) -> StoreResult<Vec<ReactionCount>> {
                Ok(sqlx::query_as::<_, ReactionCount>(
                    "SELECT r.message_id, r.emoji, COUNT(*) AS count, \
                            (COUNT(CASE WHEN r.user_id = $4 THEN 1 END) > 0) AS reacted \
                     FROM reactions r JOIN messages m ON m.id = r.message_id \
                     WHERE m.conversation_id = $1 AND m.seq >= $2 AND m.seq <= $3 \
                     GROUP BY r.message_id, r.emoji ORDER BY r.message_id, r.emoji",
                )
                .bind(conversation)
                .bind(seqs.0)
                .bind(seqs.1)
                .bind(viewer)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn mark_read(
                &self,
                conversation: Uuid,
                user: Uuid,
                seq: i64,
                event: &NewEvent,
                now: OffsetDateTime,
            ) -> StoreResult<i64> {
                let mut tx = self.pool.begin().await?;
                let moved = sqlx::query(
                    "UPDATE members SET last_read_seq = $3 \
                     WHERE conversation_id = $1 AND user_id = $2 AND last_read_seq < $3",
                )
                .bind(conversation)
                .bind(user)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if moved {
                    append_events!(tx, std::slice::from_ref(event), now);
                }
                let pointer: Option<i64> = sqlx::query_scalar(
                    "SELECT last_read_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(conversation)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                pointer.ok_or(StoreError::NotFound)
            }

            async fn events_after(&self, after: EventCursor, limit: i64) -> StoreResult<Vec<StoredEvent>> {
                Ok(sqlx::query_as::<_, StoredEvent>(concat!(
                    "SELECT txid, id, conversation_id, user_id, kind, payload FROM events \
                     WHERE (txid, id) > ($1, $2) AND txid < ",
                    $watermark,
                    " ORDER BY txid, id LIMIT $3"
                ))
                .bind(after.txid)
                .bind(after.id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn user_events_after(
                &self,
                user: Uuid,
                after: EventCursor,
                limit: i64,
            ) -> StoreResult<Vec<StoredEvent>> {
                Ok(sqlx::query_as::<_, StoredEvent>(concat!(
                    "SELECT txid, id, conversation_id, user_id, kind, payload FROM events e \
                     WHERE (txid, id) > ($1, $2) AND txid < ",
                    $watermark,
                    " AND (e.user_id = $3 OR e.conversation_id IN \
                       (SELECT conversation_id FROM members WHERE user_id = $3) \
                       OR e.conversation_id IN (SELECT x.conversation_id FROM events x \
                         WHERE x.user_id = $3 AND x.conversation_id IS NOT NULL \
                           AND (x.txid, x.id) > ($1, $2))) \
                     ORDER BY txid, id LIMIT $4"
                ))
                .bind(after.txid)
                .bind(after.id)
                .bind(user)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn membership_events_after(
                &self,
                user: Uuid,
                after: EventCursor,
            ) -> StoreResult<Vec<StoredEvent>> {
                Ok(sqlx::query_as::<_, StoredEvent>(
                    "SELECT txid, id, conversation_id, user_id, kind, payload FROM events \
                     WHERE user_id = $3 AND conversation_id IS NOT NULL AND (txid, id) > ($1, $2) \
                       AND kind IN ('member.added', 'member.removed', 'conversation.updated') \
                     ORDER BY txid, id",
                )
                .bind(after.txid)
                .bind(after.id)
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn events_pending_after(&self, after: EventCursor) -> StoreResult<bool> {
                let pending: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE (txid, id) > ($1, $2) LIMIT 1) t",
                )
                .bind(after.txid)
                .bind(after.id)
                .fetch_one(&self.pool)
                .await?;
                Ok(pending > 0)
            }

                        async fn event_head(&self) -> StoreResult<EventCursor> {
                let head: Option<(i64, i64)> = sqlx::query_as(concat!(
                    "SELECT txid, id FROM events WHERE txid < ",
                    $watermark,
                    " ORDER BY txid DESC, id DESC LIMIT 1"
                ))
                .fetch_optional(&self.pool)
                .await?;
                Ok(head.map_or(EventCursor::default(), |(txid, id)| EventCursor { txid, id }))
            }

            async fn presence_audience(&self, user: Uuid) -> StoreResult<Vec<Uuid>> {
                // Fellow members of a group, and accepted contacts; never
                // someone who merely opened a direct conversation (anyone
                // may), and never across a block.
                Ok(sqlx::query_scalar(
                    "SELECT a.user_id FROM ( \
                       SELECT m2.user_id AS user_id FROM members m1 \
                       JOIN conversations c ON c.id = m1.conversation_id AND c.kind = 'group' \
                       JOIN members m2 ON m2.conversation_id = m1.conversation_id \
                       WHERE m1.user_id = $1 AND m2.user_id <> $1 \
                       UNION \
                       SELECT other_id AS user_id FROM contacts WHERE owner_id = $1 AND status = 'accepted' \
                     ) a \
                     WHERE NOT EXISTS (SELECT 1 FROM contacts b WHERE b.status = 'blocked' AND \
                       ((b.owner_id = $1 AND b.other_id = a.user_id) OR (b.owner_id = a.user_id AND b.other_id = $1)))",
                )
                .bind(user)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn conversation_ids(&self, user: Uuid) -> StoreResult<Vec<Uuid>> {
                Ok(sqlx::query_scalar("SELECT conversation_id FROM members WHERE user_id = $1")
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn audit(&self, entry: &AuditEntry) -> StoreResult<()> {
                insert_audit!(&self.pool, entry);
                Ok(())
            }

            async fn audit_log(&self, before: Option<Uuid>, limit: i64) -> StoreResult<Vec<AuditEntry>> {
                Ok(sqlx::query_as::<_, AuditEntry>(
                    "SELECT id, at, actor_id, action, target_type, target_id, ip, details \
                     FROM audit_log WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

/// The columns of an attachment row, in [`Attachment`]'s order.
macro_rules! attachment_cols {
    () => {
        "id, owner_id, kind, name, content_type, size_bytes, width, height, \
         duration_ms, thumbnail, message_id, conversation_id, created_at, deleted_at"
    };
}

/// The columns of a message joined as `m`.
macro_rules! message_cols_m {
    () => {
        "m.id, m.conversation_id, m.seq, m.author_id, m.client_message_id, m.body, m.reply_to, \
         m.created_at, m.edited_at, m.deleted_at, m.kind, m.attachment"
    };
}

/// Postgres search: the caller's text as a web-search query (quotes,
/// `or`, `-word`), headlines with \x02/\x03 around the hits.
const PG_SEARCH: &str = concat!(
    "SELECT ",
    message_cols_m!(),
    ", ts_headline('simple', m.body, q, 'StartSel=' || chr(2) || ', StopSel=' || chr(3) || \
       ', MaxFragments=2, MaxWords=18, MinWords=6, FragmentDelimiter=\" … \"') AS snippet \
     FROM messages m \
     JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $1, \
     websearch_to_tsquery('simple', $2) q \
     WHERE m.search @@ q AND m.deleted_at IS NULL \
       AND ($3 IS NULL OR m.conversation_id = $3) AND ($4 IS NULL OR m.id < $4) \
     ORDER BY m.id DESC LIMIT $5"
);

/// SQLite search: FTS5 over the same rows, snippets with \x02/\x03.
const SQLITE_SEARCH: &str = concat!(
    "SELECT ",
    message_cols_m!(),
    ", snippet(messages_fts, 0, char(2), char(3), ' … ', 16) AS snippet \
     FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid \
     JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $1 \
     WHERE messages_fts MATCH $2 AND m.deleted_at IS NULL \
       AND ($3 IS NULL OR m.conversation_id = $3) AND ($4 IS NULL OR m.id < $4) \
     ORDER BY m.id DESC LIMIT $5"
);

/// Postgres parses the caller's text itself (websearch_to_tsquery never
/// fails on input).
fn pg_search_terms(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// FTS5 has a query language of its own: each word becomes a quoted
/// string (quotes doubled), all of them required, so no input is a syntax
/// error or an operator.
fn sqlite_search_terms(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split_whitespace()
        // A word of punctuation alone has no token to find (and would be
        // an empty phrase).
        .filter(|word| word.chars().any(char::is_alphanumeric))
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

sql_store!(
    PgStore,
    "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint)",
    PG_SEARCH,
    pg_search_terms
);
// SQLite serialises writers: every committed event is final.
sql_store!(
    SqliteStore,
    "9223372036854775807",
    SQLITE_SEARCH,
    sqlite_search_terms
);
