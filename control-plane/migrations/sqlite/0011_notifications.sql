-- SQLite twin of migrations/postgres/0011_notifications.sql.
CREATE TABLE notifications (
    id              BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    actor_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    -- The actor's name when it happened (what the feed shows).
    actor_name      TEXT,
    conversation_id BLOB,
    message_id      BLOB,
    call_id         BLOB,
    -- A short plain-text preview (message start, group name).
    excerpt         TEXT,
    dedupe_key      TEXT,
    created_at      TEXT NOT NULL,
    read_at         TEXT,
    -- Web Push outbox: 'pending' until a push worker has dealt with it
    -- ('sent', 'online': the user had a live connection, 'none': no
    -- subscription, 'failed'); claimed_at marks a worker's claim.
    push_state      TEXT NOT NULL DEFAULT 'pending',
    push_claimed_at TEXT,
    push_attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX notifications_dedupe ON notifications (user_id, dedupe_key);
CREATE INDEX notifications_feed ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;
CREATE INDEX notifications_push ON notifications (created_at) WHERE push_state = 'pending';

-- Browsers' Web Push subscriptions (RFC 8030): where to POST, and the keys
-- that encrypt for that browser (RFC 8291). An endpoint belongs to one user:
-- subscribing it again moves it.
CREATE TABLE push_subscriptions (
    id         BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint   TEXT NOT NULL UNIQUE,
    p256dh     BLOB NOT NULL,
    auth       BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id);
