-- Full-text search over message text: a generated tsvector ('simple': no
-- language's stemming is imposed on a multilingual chat) with a GIN index.
-- Deleted messages have no body, hence no terms.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', coalesce(body, ''))) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
