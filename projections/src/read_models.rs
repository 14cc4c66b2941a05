//! The read models' tables as the projector and the rebuild write them,
//! and what a batch of the projector reads of them.

use twofold_store::sql::Arg;
use twofold_store::{listed, WriteTx};

use crate::audit::{parse_hash, Link, AUDIT_COLUMNS, GENESIS};
use crate::db::ProjectionError;
use crate::feed::EventPosition;
use crate::fold::{ChallengeRow, DirectoryRow, TrailEnd};

/// The checkpoint's name in `projection_checkpoints`.
pub(crate) const CHECKPOINT: &str = "read_models";

/// Every table the projector owns; emptied by a rebuild. Not
/// `audit_checkpoints`: no event gives them, and the rebuild recomputes the
/// heads they signed.
pub(crate) const TABLES: [&str; 6] = [
    "sessions",
    "user_directory",
    "user_versions",
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
        "totp_status",
        "passkeys",
    ],
};

pub(crate) const USER_VERSIONS: Table = Table {
    name: "user_versions",
    columns: &[
        "user_id",
        "position",
        "valid_from",
        "username",
        "email",
        "email_key",
        "role",
        "two_factor_status",
        "enforced",
        "enabled_at",
        "registered_at",
        "totp_status",
        "passkeys",
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

/// The checkpoint: the last event the read models hold.
pub(crate) async fn checkpoint(tx: &mut WriteTx) -> Result<EventPosition, sqlx::Error> {
    let rows = tx
        .fetch(
            "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1",
            vec![CHECKPOINT.into()],
        )
        .await?;
    match rows.first() {
        Some(row) => Ok(EventPosition {
            transaction_id: row.get("transaction_id")?,
            position: row.get("position")?,
        }),
        None => Ok(EventPosition::default()),
    }
}

/// The checkpoint's row in the columns of `CHECKPOINTS`.
pub(crate) fn checkpoint_row(applied: EventPosition) -> Vec<Arg> {
    vec![
        CHECKPOINT.into(),
        applied.transaction_id.into(),
        applied.position.into(),
    ]
}

/// Where the trail ends, and the last link of each of `users`.
pub(crate) async fn trail_end(tx: &mut WriteTx, users: &[&str]) -> Result<TrailEnd, sqlx::Error> {
    let sql = format!(
        "SELECT NULL AS user_id, id, 0 AS sequence, head_hash AS hash
           FROM (SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1) AS last
         UNION ALL
         SELECT a.user_id, a.id, a.sequence, a.chain_hash AS hash
           FROM ({}) AS u
           JOIN audit_log a ON a.id = (SELECT max(b.id) FROM audit_log b WHERE b.user_id = u.item)",
        tx.dialect().listed(1)
    );
    let mut end = TrailEnd {
        last_id: 0,
        head: GENESIS,
        links: Vec::with_capacity(users.len()),
    };
    for row in tx.fetch(&sql, vec![listed(users)]).await? {
        let hash = parse_hash(row.get::<Option<String>>("hash")?.as_deref());
        match row.get::<Option<String>>("user_id")? {
            Some(user_id) => end.links.push((
                user_id,
                Link {
                    sequence: row.get("sequence")?,
                    hash,
                },
            )),
            None => {
                end.last_id = row.get("id")?;
                end.head = hash;
            }
        }
    }
    Ok(end)
}

/// The directory rows of `users`.
pub(crate) async fn directory_rows(
    tx: &mut WriteTx,
    users: &[&str],
) -> Result<Vec<(String, DirectoryRow)>, ProjectionError> {
    let sql = format!(
        "SELECT user_id, username, email, email_key, role, two_factor_status, enforced,
                enabled_at, last_login_at, registered_at, totp_status, passkeys
           FROM user_directory WHERE user_id IN ({})",
        tx.dialect().listed(1)
    );
    let rows = tx.fetch(&sql, vec![listed(users)]).await?;
    let mut directory = Vec::with_capacity(rows.len());
    for row in rows {
        directory.push((
            row.get("user_id")?,
            DirectoryRow {
                username: row.get("username")?,
                email: row.get("email")?,
                email_key: row.get("email_key")?,
                role: row.parsed("role")?,
                two_factor_status: row.parsed("two_factor_status")?,
                enforced: row.get("enforced")?,
                enabled_at: row.get("enabled_at")?,
                last_login_at: row.get("last_login_at")?,
                registered_at: row.get("registered_at")?,
                totp_status: row.parsed("totp_status")?,
                passkeys: row.get("passkeys")?,
            },
        ));
    }
    Ok(directory)
}

/// The challenges `users` hold.
pub(crate) async fn challenge_rows(
    tx: &mut WriteTx,
    users: &[&str],
) -> Result<Vec<(String, ChallengeRow)>, sqlx::Error> {
    let sql = format!(
        "SELECT challenge_id, user_id, expires_at FROM challenges WHERE user_id IN ({})",
        tx.dialect().listed(1)
    );
    let rows = tx.fetch(&sql, vec![listed(users)]).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.get("challenge_id")?,
                ChallengeRow {
                    user_id: row.get("user_id")?,
                    expires_at: row.get("expires_at")?,
                },
            ))
        })
        .collect()
}
