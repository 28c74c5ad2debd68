-- SQLite twin of migrations/postgres/0003_calls.sql.
-- Calls: the durable record (history, missed count, stats), the busy lock,
-- and the participants with the edge each one was placed on. Live
-- decisions (which call may ring, who is busy) are compare-and-set updates
-- on these rows, so they hold with any number of replicas and restarts.

CREATE TABLE calls (
    id               BLOB PRIMARY KEY,           -- v7: history pages by id
    conversation_id  BLOB NOT NULL,              -- no FK: history outlives the conversation
    direct           INTEGER NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('audio', 'video')),
    initiator_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The other party of a direct call.
    callee_id        BLOB REFERENCES users (id) ON DELETE CASCADE,
    state            TEXT NOT NULL CHECK (state IN ('ringing', 'active', 'ended')),
    outcome          TEXT CHECK (outcome IN ('completed', 'missed', 'declined', 'cancelled', 'busy')),
    created_at       TEXT NOT NULL,
    -- Unix microseconds (integers compare the same on both backends).
    ring_deadline_us INTEGER,
    answered_at      TEXT,
    ended_at         TEXT,
    ended_by         BLOB,
    duration_ms      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX calls_ringing ON calls (ring_deadline_us) WHERE state = 'ringing';
-- At most one live call per conversation (a second start is refused).
CREATE UNIQUE INDEX calls_one_live ON calls (conversation_id) WHERE state <> 'ended';

-- Who a call was for (members when it started, and anyone who joined).
CREATE TABLE call_users (
    call_id  BLOB NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    user_id  BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined   INTEGER NOT NULL DEFAULT 0,
    declined INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (call_id, user_id)
);
CREATE INDEX call_users_history ON call_users (user_id, call_id);

-- The busy lock: a user is in at most one call (ringing as caller, or
-- accepted/joined). Released in the same transaction that ends their part.
CREATE TABLE call_locks (
    user_id BLOB PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    call_id BLOB NOT NULL REFERENCES calls (id) ON DELETE CASCADE
);
CREATE INDEX call_locks_call ON call_locks (call_id);

-- One row per device session in a call.
CREATE TABLE call_participants (
    id        BLOB PRIMARY KEY,
    call_id   BLOB NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    node_id   TEXT NOT NULL,
    region    TEXT NOT NULL,
    audio     INTEGER NOT NULL,
    video     INTEGER NOT NULL,
    screen    INTEGER NOT NULL,
    joined_at TEXT NOT NULL,
    left_at   TEXT
);
CREATE UNIQUE INDEX call_participants_live ON call_participants (call_id, user_id, device_id)
    WHERE left_at IS NULL;
CREATE INDEX call_participants_node ON call_participants (node_id) WHERE left_at IS NULL;
