-- The sweeper looks for answered calls with nobody in them.
CREATE INDEX calls_active ON calls (id) WHERE state = 'active';
