-- SQLite twin of migrations/postgres/0012_profiles_and_own_data.sql.
ALTER TABLE users ADD COLUMN avatar_id BLOB REFERENCES attachments (id) ON DELETE SET NULL;
ALTER TABLE users ADD COLUMN terms_version TEXT;
ALTER TABLE users ADD COLUMN terms_accepted_at TEXT;
ALTER TABLE users ADD COLUMN deleted_at TEXT;
