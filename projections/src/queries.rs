//! Reads of the read models: the only SQL the API runs against them.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::db::{Db, ProjectionError};
use crate::on_pool;

/// A live session with what authorisation needs about its user.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub two_factor_status: String,
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub authenticated_by: String,
    pub impersonator_id: Option<Uuid>,
    pub impersonator_username: Option<String>,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// One row of the user directory: the user search and its 2FA column.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectoryEntry {
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub two_factor_status: String,
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default)]
pub struct DirectoryFilter {
    /// Prefix of the username or the email address, any case.
    pub query: Option<String>,
    pub two_factor_status: Option<String>,
    pub enforced: Option<bool>,
    pub role: Option<String>,
    /// Keyset cursor: the last username of the previous page.
    pub after_username: Option<String>,
    pub limit: u32,
}

fn parse_uuid(text: &str) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(text)
        .map_err(|error| ProjectionError::Database(sqlx::Error::Decode(Box::new(error))))
}

const DIRECTORY_COLUMNS: &str =
    "user_id, username, email, role, two_factor_status, enforced, enabled_at, last_login_at";

macro_rules! directory_entry {
    ($row:expr) => {{
        let row = $row;
        DirectoryEntry {
            user_id: parse_uuid(&row.try_get::<String, _>("user_id")?)?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            role: row.try_get("role")?,
            two_factor_status: row.try_get("two_factor_status")?,
            enforced: row.try_get("enforced")?,
            enabled_at: row.try_get("enabled_at")?,
            last_login_at: row.try_get("last_login_at")?,
        }
    }};
}

/// `%` and `_` typed by a user are literal characters, not wildcards.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Db {
    pub async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<SessionRecord>, ProjectionError> {
        const SQL: &str = "
SELECT s.session_id, s.user_id, u.username, u.email, u.role, u.two_factor_status, u.enforced,
       u.enabled_at, s.authenticated_by, s.impersonator_id, i.username AS impersonator_username,
       s.started_at, s.expires_at, s.last_seen_at
  FROM sessions s
  JOIN user_directory u ON u.user_id = s.user_id
  LEFT JOIN user_directory i ON i.user_id = s.impersonator_id
 WHERE s.token_hash = $1";
        on_pool!(self, pool => {
            let Some(row) = sqlx::query(SQL).bind(token_hash).fetch_optional(pool).await? else {
                return Ok(None);
            };
            let impersonator_id: Option<String> = row.try_get("impersonator_id")?;
            Ok(Some(SessionRecord {
                session_id: parse_uuid(&row.try_get::<String, _>("session_id")?)?,
                user_id: parse_uuid(&row.try_get::<String, _>("user_id")?)?,
                username: row.try_get("username")?,
                email: row.try_get("email")?,
                role: row.try_get("role")?,
                two_factor_status: row.try_get("two_factor_status")?,
                enforced: row.try_get("enforced")?,
                enabled_at: row.try_get("enabled_at")?,
                authenticated_by: row.try_get("authenticated_by")?,
                impersonator_id: impersonator_id.as_deref().map(parse_uuid).transpose()?,
                impersonator_username: row.try_get("impersonator_username")?,
                started_at: row.try_get("started_at")?,
                expires_at: row.try_get("expires_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
            }))
        })
    }

    /// Idle-timeout bookkeeping; the caller throttles how often it runs.
    pub async fn touch_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE session_id = $1")
                .bind(session_id.to_string())
                .bind(at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn directory_entry(
        &self,
        user_id: Uuid,
    ) -> Result<Option<DirectoryEntry>, ProjectionError> {
        let sql = format!("SELECT {DIRECTORY_COLUMNS} FROM user_directory WHERE user_id = $1");
        on_pool!(self, pool => {
            match sqlx::query(&sql).bind(user_id.to_string()).fetch_optional(pool).await? {
                Some(row) => Ok(Some(directory_entry!(row))),
                None => Ok(None),
            }
        })
    }

    /// One page of the user search, ordered by username; returns the page and
    /// whether more rows follow.
    pub async fn search_directory(
        &self,
        filter: &DirectoryFilter,
    ) -> Result<(Vec<DirectoryEntry>, bool), ProjectionError> {
        let sql = format!(
            "SELECT {DIRECTORY_COLUMNS} FROM user_directory
              WHERE ($1 IS NULL OR username LIKE $1 ESCAPE '\\' OR email_key LIKE $1 ESCAPE '\\')
                AND ($2 IS NULL OR two_factor_status = $2)
                AND ($3 IS NULL OR enforced = $3)
                AND ($4 IS NULL OR role = $4)
                AND ($5 IS NULL OR username > $5)
              ORDER BY username
              LIMIT $6"
        );
        let limit = i64::from(filter.limit);
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(filter.query.as_deref().map(like_prefix))
                .bind(filter.two_factor_status.as_deref())
                .bind(filter.enforced)
                .bind(filter.role.as_deref())
                .bind(filter.after_username.as_deref())
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
            let more = rows.len() as i64 > limit;
            let mut entries = Vec::with_capacity(rows.len());
            for row in rows.into_iter().take(filter.limit as usize) {
                entries.push(directory_entry!(row));
            }
            Ok((entries, more))
        })
    }

    pub async fn challenge_owner(
        &self,
        challenge_id: Uuid,
    ) -> Result<Option<Uuid>, ProjectionError> {
        on_pool!(self, pool => {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT user_id FROM challenges WHERE challenge_id = $1")
                    .bind(challenge_id.to_string())
                    .fetch_optional(pool)
                    .await?;
            owner.as_deref().map(parse_uuid).transpose()
        })
    }

    pub async fn users_with_role(&self, role: &str) -> Result<i64, ProjectionError> {
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT count(*) FROM user_directory WHERE role = $1")
                .bind(role)
                .fetch_one(pool)
                .await?)
        })
    }

    /// How many users hold this address (compared without case).
    pub async fn users_with_email(&self, email_key: &str) -> Result<i64, ProjectionError> {
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT count(*) FROM user_directory WHERE email_key = $1")
                .bind(email_key)
                .fetch_one(pool)
                .await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn typed_wildcards_are_literal() {
        assert_eq!(like_prefix("A_b%"), "a\\_b\\%%");
    }
}
