-- The event store. Columns up to `metadata` are the ones sqlite-es reads and
-- writes; the rest are ours and filled in by SQLite.
CREATE TABLE events (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 1),
    event_type     TEXT NOT NULL,
    event_version  TEXT NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    -- Global position in commit order (writers are serialised by SQLite).
    -- Frozen in a column of its own because VACUUM may renumber rowids.
    position       INTEGER,
    recorded_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Composite key: a concurrent append fails with SQLITE_CONSTRAINT_PRIMARYKEY
    -- (1555), which sqlite-es maps to an optimistic-lock conflict.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_position ON events (position);

CREATE TRIGGER events_assign_position AFTER INSERT ON events
BEGIN
    UPDATE events
       SET position = (SELECT coalesce(max(position), 0) + 1 FROM events)
     WHERE rowid = NEW.rowid;
END;

-- One account per username, enforced by the database across processes.
CREATE UNIQUE INDEX events_username
    ON events (json_extract(payload, '$.UserRegistered.username'))
    WHERE event_type = 'UserRegistered';

-- Our own snapshots (cqrs-es 0.5's snapshot store applies events twice).
CREATE TABLE aggregate_snapshots (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- TOTP secrets, sealed with AES-256-GCM; events only name the enrollment, so
-- a secret can be erased while the history stays.
CREATE TABLE totp_secrets (
    enrollment_id TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL
);
