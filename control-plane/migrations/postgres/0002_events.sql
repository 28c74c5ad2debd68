-- The durable event log behind the WebSocket gateway: every change a client
-- must learn about (messages, edits, deletions, membership, contacts, read
-- pointers) is appended here in the same transaction as the change.
--
-- Order: events are read in (txid, id) order, and only below the oldest
-- transaction still running (pg_snapshot_xmin). An event id is taken when
-- the row is inserted, not when its transaction commits, so plain id order
-- could let a reader pass an event that commits later; below the xmin
-- watermark nothing can appear any more, so a cursor never skips anything.
CREATE TABLE events (
    id              BIGSERIAL PRIMARY KEY,
    txid            BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    -- Audience: the conversation's members ...
    conversation_id UUID,
    -- ... and/or one user (contacts, a removed member, a deleted group).
    user_id         UUID,
    kind            TEXT NOT NULL,
    -- The event's JSON body as clients receive it.
    payload         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_order ON events (txid, id);
CREATE INDEX events_conversation ON events (conversation_id, txid, id);
CREATE INDEX events_user ON events (user_id, txid, id);
