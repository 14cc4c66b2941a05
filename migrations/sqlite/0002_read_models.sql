CREATE TABLE projection_checkpoints (
    name           TEXT PRIMARY KEY,
    transaction_id INTEGER NOT NULL,
    position       INTEGER NOT NULL
);

CREATE TABLE sessions (
    session_id          TEXT PRIMARY KEY,
    token_hash          TEXT NOT NULL UNIQUE,
    user_id             TEXT NOT NULL,
    authenticated_by    TEXT NOT NULL,
    impersonator_id     TEXT,
    started_at          TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    last_seen_at        TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE user_directory (
    user_id           TEXT PRIMARY KEY,
    username          TEXT NOT NULL UNIQUE,
    email             TEXT,
    email_key         TEXT,
    role              TEXT NOT NULL,
    two_factor_status TEXT NOT NULL,
    enforced          BOOLEAN NOT NULL,
    enabled_at        TEXT,
    last_login_at     TEXT,
    registered_at     TEXT NOT NULL
);
CREATE INDEX user_directory_email_key ON user_directory (email_key);

-- Which user a sign-in challenge belongs to.
CREATE TABLE challenges (
    challenge_id TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX challenges_user ON challenges (user_id);
