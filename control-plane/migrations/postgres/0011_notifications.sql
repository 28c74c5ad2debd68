-- The per-user notification feed (control-plane/src/notifications): missed
-- calls, contact requests, being added to a group, mentions and replies.
-- Each row is written with its `notification.created` event in one
-- transaction; `dedupe_key` makes a retried trigger (the same message sent
-- again by client id, two replicas ending one call) notify once.
CREATE TABLE notifications (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    actor_id        UUID REFERENCES users (id) ON DELETE SET NULL,
    -- The actor's name when it happened (what the feed shows).
    actor_name      TEXT,
    conversation_id UUID,
    message_id      UUID,
    call_id         UUID,
    -- A short plain-text preview (message start, group name).
    excerpt         TEXT,
    dedupe_key      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    read_at         TIMESTAMPTZ,
    -- Web Push outbox: 'pending' until a push worker has dealt with it
    -- ('sent', 'online': the user had a live connection, 'none': no
    -- subscription, 'failed'); claimed_at marks a worker's claim.
    push_state      TEXT NOT NULL DEFAULT 'pending',
    push_claimed_at TIMESTAMPTZ,
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
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint   TEXT NOT NULL UNIQUE,
    p256dh     BYTEA NOT NULL,
    auth       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id);
