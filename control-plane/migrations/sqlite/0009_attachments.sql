-- SQLite twin of migrations/postgres/0009_attachments.sql.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN attachment TEXT;

CREATE TABLE attachments (
    id              BLOB PRIMARY KEY,
    owner_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    width           INTEGER,
    height          INTEGER,
    duration_ms     INTEGER,
    thumbnail       INTEGER NOT NULL DEFAULT 0,
    message_id      BLOB REFERENCES messages (id) ON DELETE SET NULL,
    conversation_id BLOB REFERENCES conversations (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    deleted_at      TEXT
);
CREATE INDEX attachments_message ON attachments (message_id);
CREATE INDEX attachments_sweep ON attachments (created_at) WHERE message_id IS NULL OR deleted_at IS NOT NULL;
