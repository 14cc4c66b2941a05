-- The 2FA-status report as counters: one row per bucket of user_directory,
-- kept by the projection (decrement the old bucket, change, increment the
-- new one), so the report reads at most 24 rows whatever the user count.
CREATE TABLE two_factor_counts (
    role              TEXT    NOT NULL,
    two_factor_status TEXT    NOT NULL,
    enforced          BOOLEAN NOT NULL,
    users             INTEGER NOT NULL,
    PRIMARY KEY (role, two_factor_status, enforced)
);

-- The audit trail: one row per event, in the projection's apply order (`id`,
-- assigned as max(id) + 1 so that a rebuild numbers rows the same way).
-- `data` is the payload without secrets or hashes. `chain_hash` chains the
-- user's stream, `head_hash` every event in feed order (tamper evidence).
-- No uniqueness on (user_id, sequence): a tampered store that repeats one
-- must not stall every read model; `twofold audit verify` reports it.
CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    position        INTEGER NOT NULL UNIQUE,
    user_id         TEXT    NOT NULL,
    sequence        INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    occurred_at     TEXT    NOT NULL,
    actor_id        TEXT,
    impersonator_id TEXT,
    ip              TEXT,
    user_agent      TEXT,
    data            TEXT    NOT NULL,
    chain_hash      TEXT    NOT NULL,
    head_hash       TEXT    NOT NULL
);
-- One user's (or one actor's, or one type's) page is a range scan in id order.
CREATE INDEX audit_log_user ON audit_log (user_id, id);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
CREATE INDEX audit_log_type ON audit_log (type, id);
