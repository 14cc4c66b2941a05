-- The user directory through time: a row per event that changed a user's
-- username, email, role, 2FA status (and factors) or enforcement, valid from that event
-- until the user's next row. `as_of` reads the row each user had at an
-- instant. Filled from the whole history once by a data migration
-- (projections/src/data_migrations.rs), then by the projector.
CREATE TABLE user_versions (
    user_id           TEXT    NOT NULL,
    position          INTEGER NOT NULL,
    valid_from        TEXT    NOT NULL,
    username          TEXT    NOT NULL,
    email             TEXT,
    email_key         TEXT,
    role              TEXT    NOT NULL,
    two_factor_status TEXT    NOT NULL,
    enforced          BOOLEAN NOT NULL,
    enabled_at        TEXT,
    registered_at     TEXT    NOT NULL,
    totp_status       TEXT    NOT NULL,
    passkeys          INTEGER NOT NULL,
    PRIMARY KEY (user_id, position)
);
CREATE INDEX user_versions_valid_from ON user_versions (valid_from);
