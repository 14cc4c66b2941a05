-- The 2FA-status report as counters: one row per bucket of user_directory,
-- kept by the projection (decrement the old bucket, change, increment the
-- new one), so the report reads at most 24 rows whatever the user count.
CREATE TABLE two_factor_counts (
    role              text    NOT NULL,
    two_factor_status text    NOT NULL,
    enforced          boolean NOT NULL,
    users             bigint  NOT NULL,
    PRIMARY KEY (role, two_factor_status, enforced)
);

-- The audit trail: one row per event, in the projection's apply order (`id`,
-- assigned as max(id) + 1 so that a rebuild numbers rows the same way).
-- `data` is the payload without secrets or hashes. `chain_hash` chains the
-- user's stream, `head_hash` every event in feed order (tamper evidence).
-- No uniqueness on (user_id, sequence): a tampered store that repeats one
-- must not stall every read model; `twofold audit verify` reports it.
CREATE TABLE audit_log (
    id              bigint PRIMARY KEY,
    position        bigint  NOT NULL UNIQUE,
    user_id         text    NOT NULL,
    sequence        bigint  NOT NULL,
    type            text    NOT NULL,
    occurred_at     timestamptz NOT NULL,
    actor_id        text,
    impersonator_id text,
    ip              text,
    user_agent      text,
    data            text    NOT NULL,
    chain_hash      text    NOT NULL,
    head_hash       text    NOT NULL
);
-- One user's (or one actor's, or one type's) page is a range scan in id order.
CREATE INDEX audit_log_user ON audit_log (user_id, id);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
CREATE INDEX audit_log_type ON audit_log (type, id);
