-- Accounts, sessions, contacts, conversations, messages and the audit log.
-- Times are UTC; ids are BLOBs (v7 where order matters: messages, audit).

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    -- Lower-case by construction ([a-z0-9_.]), so UNIQUE is case-insensitive.
    username      TEXT NOT NULL UNIQUE,
    -- Lower-cased on input.
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    -- display_name lower-cased in Rust (full Unicode, same on both
    -- backends), for prefix search.
    search_name   TEXT NOT NULL,
    status_text   TEXT NOT NULL DEFAULT '',
    avatar_url    TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
-- Prefix search on username and display name.
CREATE INDEX users_username_prefix ON users (username);
CREATE INDEX users_search_name_prefix ON users (search_name);

-- One row per refresh token. A family is one login; every refresh rotates
-- the token within the family. Presenting a rotated token again revokes the
-- whole family (token theft detection).
CREATE TABLE sessions (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   BLOB NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    rotated_at  TEXT,
    revoked_at  TEXT,
    user_agent  TEXT,
    ip          TEXT
);
CREATE INDEX sessions_family ON sessions (family_id);
CREATE INDEX sessions_user ON sessions (user_id);

-- Token signing keys, shared by every replica through the database unless
-- the operator configures a key file. One row per purpose: the first
-- replica to insert wins and every replica reads the same row.
CREATE TABLE signing_keys (
    purpose       TEXT PRIMARY KEY,
    kid           TEXT NOT NULL,
    private_pkcs8 BLOB NOT NULL,
    public_key    BLOB NOT NULL,
    created_at    TEXT NOT NULL
);

-- Each relationship is two rows, one per side, each in that side's terms.
CREATE TABLE contacts (
    owner_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    other_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     TEXT NOT NULL CHECK (status IN ('outgoing', 'incoming', 'accepted', 'blocked')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (owner_id, other_id)
);
CREATE INDEX contacts_other ON contacts (other_id);

CREATE TABLE conversations (
    id               BLOB PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name             TEXT,
    -- "<smaller uuid>:<larger uuid>" for direct conversations: one per pair.
    direct_key       TEXT UNIQUE,
    created_by       BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at       TEXT NOT NULL,
    -- Sequence of the newest message; messages take last_seq + 1.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    -- Newest message or change, in Unix microseconds: the list order. An
    -- integer, because SQLite keeps times as text whose order is unreliable.
    last_activity_us INTEGER NOT NULL
);
CREATE INDEX conversations_activity ON conversations (last_activity_us, id);

CREATE TABLE members (
    conversation_id BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       TEXT NOT NULL,
    last_read_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE messages (
    id                BLOB PRIMARY KEY,
    conversation_id   BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Gapless per conversation: the pagination cursor.
    seq               INTEGER NOT NULL,
    author_id         BLOB REFERENCES users (id) ON DELETE SET NULL,
    client_message_id TEXT,
    -- NULL once deleted (the tombstone keeps the row and its place).
    body              TEXT,
    reply_to          BLOB REFERENCES messages (id) ON DELETE SET NULL,
    created_at        TEXT NOT NULL,
    edited_at         TEXT,
    deleted_at        TEXT,
    UNIQUE (conversation_id, seq)
);
-- A retried send with the same client id finds the first one.
CREATE UNIQUE INDEX messages_idempotency
    ON messages (conversation_id, author_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE TABLE reactions (
    message_id BLOB NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE audit_log (
    id          BLOB PRIMARY KEY,
    at          TEXT NOT NULL,
    actor_id    BLOB,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    ip          TEXT,
    -- A JSON object with action-specific details.
    details     TEXT NOT NULL DEFAULT '{}'
);
