-- SQLite twin of migrations/postgres/0005_call_indexes.sql.
-- The sweeper looks for answered calls with nobody in them.
CREATE INDEX calls_active ON calls (id) WHERE state = 'active';
