-- When a session was last placed on its node (its join, or its latest
-- migration). Reconciliation with an edge's heartbeat waits a join token's
-- life from this, not from `joined_at`: a migrated session needs that long
-- to reconnect to its new edge, whatever its age in the call.
ALTER TABLE call_participants ADD COLUMN placed_at TIMESTAMPTZ;
UPDATE call_participants SET placed_at = joined_at;
ALTER TABLE call_participants ALTER COLUMN placed_at SET NOT NULL;
