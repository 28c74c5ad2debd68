-- Accounts, sessions, contacts, conversations, messages and the audit log.
-- Times are UTC; ids are UUIDs (v7 where order matters: messages, audit).

CREATE TABLE users (
    id            UUID PRIMARY KEY,
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
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
-- Prefix search on username and display name.
CREATE INDEX users_username_prefix ON users (username text_pattern_ops);
CREATE INDEX users_search_name_prefix ON users (search_name text_pattern_ops);

-- One row per refresh token. A family is one login; every refresh rotates
-- the token within the family. Presenting a rotated token again revokes the
-- whole family (token theft detection).
CREATE TABLE sessions (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   UUID NOT NULL,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    rotated_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
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
    private_pkcs8 BYTEA NOT NULL,
    public_key    BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

-- Each relationship is two rows, one per side, each in that side's terms.
CREATE TABLE contacts (
    owner_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    other_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     TEXT NOT NULL CHECK (status IN ('outgoing', 'incoming', 'accepted', 'blocked')),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner_id, other_id)
);
CREATE INDEX contacts_other ON contacts (other_id);

CREATE TABLE conversations (
    id               UUID PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name             TEXT,
    -- "<smaller uuid>:<larger uuid>" for direct conversations: one per pair.
    direct_key       TEXT UNIQUE,
    created_by       UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    -- Sequence of the newest message; messages take last_seq + 1.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    -- Newest message or change, in Unix microseconds: the list order. An
    -- integer, because SQLite keeps times as text whose order is unreliable.
    last_activity_us BIGINT NOT NULL
);
CREATE INDEX conversations_activity ON conversations (last_activity_us, id);

CREATE TABLE members (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       TIMESTAMPTZ NOT NULL,
    last_read_seq   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE messages (
    id                UUID PRIMARY KEY,
    conversation_id   UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Gapless per conversation: the pagination cursor.
    seq               BIGINT NOT NULL,
    author_id         UUID REFERENCES users (id) ON DELETE SET NULL,
    client_message_id TEXT,
    -- NULL once deleted (the tombstone keeps the row and its place).
    body              TEXT,
    reply_to          UUID REFERENCES messages (id) ON DELETE SET NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    edited_at         TIMESTAMPTZ,
    deleted_at        TIMESTAMPTZ,
    UNIQUE (conversation_id, seq)
);
-- A retried send with the same client id finds the first one.
CREATE UNIQUE INDEX messages_idempotency
    ON messages (conversation_id, author_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE TABLE reactions (
    message_id UUID NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE audit_log (
    id          UUID PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    actor_id    UUID,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    ip          TEXT,
    -- A JSON object with action-specific details.
    details     TEXT NOT NULL DEFAULT '{}'
);
