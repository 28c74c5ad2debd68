-- A person may remove a call from their own history (others keep theirs):
-- the row stays (outcomes, busy rules and stats of others depend on it),
-- flagged hidden for that person.
ALTER TABLE call_users ADD COLUMN hidden BOOLEAN NOT NULL DEFAULT FALSE;
