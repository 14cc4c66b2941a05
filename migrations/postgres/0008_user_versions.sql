-- The user directory through time: a row per event that changed a user's
-- username, email, role, 2FA status (and factors) or enforcement, valid from that event
-- until the user's next row. `as_of` reads the row each user had at an
-- instant. Filled from the whole history once by a data migration
-- (projections/src/data_migrations.rs), then by the projector.
CREATE TABLE user_versions (
    user_id           text        NOT NULL,
    position          bigint      NOT NULL,
    valid_from        timestamptz NOT NULL,
    username          text        NOT NULL,
    email             text,
    email_key         text,
    role              text        NOT NULL,
    two_factor_status text        NOT NULL,
    enforced          boolean     NOT NULL,
    enabled_at        timestamptz,
    registered_at     timestamptz NOT NULL,
    totp_status       text        NOT NULL,
    passkeys          bigint      NOT NULL,
    PRIMARY KEY (user_id, position)
);
CREATE INDEX user_versions_valid_from ON user_versions (valid_from);
