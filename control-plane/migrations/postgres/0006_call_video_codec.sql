-- The one video codec of a call: an SFU does not transcode, so every
-- participant sends and receives it (VP8 unless the call was started with
-- another).
ALTER TABLE calls ADD COLUMN video_codec TEXT NOT NULL DEFAULT 'vp8'
    CHECK (video_codec IN ('vp8', 'h264'));
