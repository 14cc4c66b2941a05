//! The read models' tables as the projector and the rebuild write them.

use crate::audit::AUDIT_COLUMNS;

/// The checkpoint's name in `projection_checkpoints`.
pub(crate) const CHECKPOINT: &str = "read_models";

/// Every table the projector owns; emptied by a rebuild.
pub(crate) const TABLES: [&str; 5] = [
    "sessions",
    "user_directory",
    "challenges",
    "two_factor_counts",
    "audit_log",
];

/// A table the projector writes and the columns it fills, in row order.
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static [&'static str],
}

pub(crate) const AUDIT_LOG: Table = Table {
    name: "audit_log",
    columns: AUDIT_COLUMNS,
};

pub(crate) const USER_DIRECTORY: Table = Table {
    name: "user_directory",
    columns: &[
        "user_id",
        "username",
        "email",
        "email_key",
        "role",
        "two_factor_status",
        "enforced",
        "enabled_at",
        "last_login_at",
        "registered_at",
    ],
};

pub(crate) const SESSIONS: Table = Table {
    name: "sessions",
    columns: &[
        "session_id",
        "token_hash",
        "user_id",
        "authenticated_by",
        "impersonator_id",
        "started_at",
        "expires_at",
        "last_seen_at",
    ],
};

pub(crate) const CHALLENGES: Table = Table {
    name: "challenges",
    columns: &["challenge_id", "user_id", "expires_at"],
};

pub(crate) const TWO_FACTOR_COUNTS: Table = Table {
    name: "two_factor_counts",
    columns: &["role", "two_factor_status", "enforced", "users"],
};

pub(crate) const CHECKPOINTS: Table = Table {
    name: "projection_checkpoints",
    columns: &["name", "transaction_id", "position"],
};
