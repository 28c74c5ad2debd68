-- SQLite twin of migrations/postgres/0008_call_users_hidden.sql.
ALTER TABLE call_users ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
