-- SQLite twin of migrations/postgres/0002_events.sql. SQLite serialises
-- writers, so commit order is id order: txid stays 0 and (txid, id) order
-- is id order.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    txid            INTEGER NOT NULL DEFAULT 0,
    conversation_id BLOB,
    user_id         BLOB,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX events_order ON events (txid, id);
CREATE INDEX events_conversation ON events (conversation_id, txid, id);
CREATE INDEX events_user ON events (user_id, txid, id);
