-- Profiles, consent and erasure (issue 18 items 6 and 7).

-- An avatar is one of its user's own image uploads (kind 'avatar' once
-- chosen, so the orphan sweep leaves it alone); the row it replaces is
-- marked deleted and swept.
ALTER TABLE users ADD COLUMN avatar_id UUID REFERENCES attachments (id) ON DELETE SET NULL;
-- The terms the user accepted at sign-up, and when (NULL: an account from
-- before consent was recorded).
ALTER TABLE users ADD COLUMN terms_version TEXT;
ALTER TABLE users ADD COLUMN terms_accepted_at TIMESTAMPTZ;
-- An erased account keeps its row (so others' history, calls and audit
-- entries still point at something) with every personal field replaced:
-- username 'deleted-<id>', e-mail '<id>@deleted.invalid', no password, no
-- profile. Login and search skip it.
ALTER TABLE users ADD COLUMN deleted_at TIMESTAMPTZ;
