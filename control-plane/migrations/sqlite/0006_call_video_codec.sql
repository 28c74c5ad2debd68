-- SQLite twin of migrations/postgres/0006_call_video_codec.sql.
ALTER TABLE calls ADD COLUMN video_codec TEXT NOT NULL DEFAULT 'vp8'
    CHECK (video_codec IN ('vp8', 'h264'));
