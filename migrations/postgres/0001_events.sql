-- The event store. Columns up to `metadata` are the ones postgres-es reads and
-- writes; the rest are ours and filled in by PostgreSQL.
CREATE TABLE events (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 1),
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        jsonb  NOT NULL,
    metadata       jsonb  NOT NULL,
    -- Identity values are handed out before commit, so they do not follow
    -- commit order. Readers order by (transaction_id, position) and read only
    -- transactions older than the oldest still running (see ARCHITECTURE.md).
    position       bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Composite key: a concurrent append fails with 23505, which postgres-es
    -- maps to an optimistic-lock conflict.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_position ON events (position);
CREATE INDEX events_feed ON events (transaction_id, position);

-- One account per username, enforced by the database across processes.
CREATE UNIQUE INDEX events_username
    ON events ((payload -> 'UserRegistered' ->> 'username'))
    WHERE event_type = 'UserRegistered';

-- Our own snapshots (cqrs-es 0.5's snapshot store applies events twice).
CREATE TABLE aggregate_snapshots (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    schema_version bigint NOT NULL,
    payload        jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- TOTP secrets, sealed with AES-256-GCM; events only name the enrollment, so
-- a secret can be erased while the history stays.
CREATE TABLE totp_secrets (
    enrollment_id text PRIMARY KEY,
    user_id       text  NOT NULL,
    nonce         bytea NOT NULL,
    ciphertext    bytea NOT NULL
);
