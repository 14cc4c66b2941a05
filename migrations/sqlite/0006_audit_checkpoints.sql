-- Signed audit checkpoints (domain/src/checkpoint.rs): where the trail
-- stood and when, signed with the service's Ed25519 key. Not derived from
-- the events, so `projections rebuild` leaves this table alone (and
-- recomputes the same heads, so the checkpoints stay valid). Each field is
-- kept as the text that was signed. One checkpoint per position: nodes
-- signing the same head at once leave one row.
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    position  INTEGER NOT NULL UNIQUE,
    head      TEXT    NOT NULL,
    signed_at TEXT    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL
);
