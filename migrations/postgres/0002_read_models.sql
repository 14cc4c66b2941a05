CREATE TABLE projection_checkpoints (
    name           text PRIMARY KEY,
    transaction_id bigint NOT NULL,
    position       bigint NOT NULL
);

CREATE TABLE sessions (
    session_id          text PRIMARY KEY,
    token_hash          text NOT NULL UNIQUE,
    user_id             text NOT NULL,
    authenticated_by    text NOT NULL,
    impersonator_id     text,
    started_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE user_directory (
    user_id           text PRIMARY KEY,
    username          text NOT NULL UNIQUE,
    email             text,
    email_key         text,
    role              text NOT NULL,
    two_factor_status text NOT NULL,
    enforced          boolean NOT NULL,
    enabled_at        timestamptz,
    last_login_at     timestamptz,
    registered_at     timestamptz NOT NULL
);
CREATE INDEX user_directory_email_key ON user_directory (email_key);

-- Which user a sign-in challenge belongs to.
CREATE TABLE challenges (
    challenge_id TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX challenges_user ON challenges (user_id);
