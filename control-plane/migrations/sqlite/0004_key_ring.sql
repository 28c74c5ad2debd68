-- SQLite twin of migrations/postgres/0004_key_ring.sql.
-- The token signing keys in rotation (control-plane/src/auth/keyring.rs).
-- The first one is the key of `signing_keys`, copied in at start-up.
CREATE TABLE key_ring (
    kid           TEXT PRIMARY KEY,
    private_pkcs8 BLOB NOT NULL,
    public_key    BLOB NOT NULL,
    -- Unix microseconds (integers compare the same on both backends).
    created_us    INTEGER NOT NULL
);
