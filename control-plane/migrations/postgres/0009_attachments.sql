-- Messages get a kind (text, image, file, voice) and, for the others, a
-- snapshot of their attachment's metadata (JSON, what clients show; cleared
-- with the body when the message is deleted).
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN attachment TEXT;

-- Uploaded blobs: pending (message_id NULL) until a message of their
-- uploader references them. The object store holds the bytes under
-- attachments/<id> (and attachments/<id>.thumb); a row whose blob must go
-- (message deleted, upload never sent, conversation gone) is swept.
CREATE TABLE attachments (
    id              UUID PRIMARY KEY,
    owner_id        UUID REFERENCES users (id) ON DELETE SET NULL,
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    width           INTEGER,
    height          INTEGER,
    duration_ms     BIGINT,
    thumbnail       BOOLEAN NOT NULL DEFAULT FALSE,
    message_id      UUID REFERENCES messages (id) ON DELETE SET NULL,
    conversation_id UUID REFERENCES conversations (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- Set when its message is deleted: the sweep removes the blob.
    deleted_at      TIMESTAMPTZ
);
CREATE INDEX attachments_message ON attachments (message_id);
CREATE INDEX attachments_sweep ON attachments (created_at) WHERE message_id IS NULL OR deleted_at IS NOT NULL;
