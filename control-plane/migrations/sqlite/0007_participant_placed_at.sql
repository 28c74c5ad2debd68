-- SQLite twin of migrations/postgres/0007_participant_placed_at.sql
-- (SQLite cannot add a NOT NULL column without a default: the default is
-- never used, every insert names the column).
ALTER TABLE call_participants ADD COLUMN placed_at TEXT NOT NULL DEFAULT '';
UPDATE call_participants SET placed_at = joined_at;
