//! Changes to stored rows that SQL alone cannot make, because they need the
//! service's own derivations (the canonical JSON writer and its secret
//! rule). Each runs once, after the SQL migrations (at start and by
//! `twofold migrate`), in one transaction with its record in
//! `data_migrations`.

use sqlx::Row;

use crate::audit::stored_data_without_secrets;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::on_pool;
use crate::runner::lock_projection;

/// Audit rows written before challenge ids were left out of `data` hold
/// them; verify compares `data` with what the event gives today, so each
/// would read as edited. Their `data` is written again under today's rule.
const AUDIT_DATA_WITHOUT_CHALLENGE_IDS: &str = "audit_data_without_challenge_ids";

/// Rows read and rewritten per statement.
const PAGE: i64 = 1_000;

/// Rows that may hold a challenge id (the rule ignores case; `_` matches any
/// character, so this finds a few more, which the writer leaves as they are).
const SELECT_CANDIDATES: &str = "
SELECT id, data FROM audit_log
 WHERE id > $1 AND lower(data) LIKE '%challenge_id%'
 ORDER BY id
 LIMIT $2";

const UPDATE_PREFIX: &str = "WITH changed (id, data) AS (";
const UPDATE_SUFFIX: &str = ")
UPDATE audit_log SET data = (SELECT changed.data FROM changed WHERE changed.id = audit_log.id)
 WHERE id IN (SELECT id FROM changed)";

impl ReadModels {
    /// Runs every data migration not yet recorded as done; returns the rows
    /// each one that ran changed.
    pub async fn run_data_migrations(&self) -> Result<Vec<(&'static str, u64)>, ProjectionError> {
        if self
            .data_migration_done(AUDIT_DATA_WITHOUT_CHALLENGE_IDS)
            .await?
        {
            return Ok(Vec::new());
        }
        let changed = self.strip_challenge_ids_from_audit_data().await?;
        Ok(changed
            .map(|rows| vec![(AUDIT_DATA_WITHOUT_CHALLENGE_IDS, rows)])
            .unwrap_or_default())
    }

    /// A SELECT, so that a start with nothing to do writes nothing.
    async fn data_migration_done(&self, name: &str) -> Result<bool, ProjectionError> {
        const SQL: &str = "SELECT count(*) FROM data_migrations WHERE name = $1";
        Ok(on_pool!(&self.0, pool => {
            sqlx::query_scalar::<_, i64>(SQL).bind(name).fetch_one(pool).await?
        }) > 0)
    }

    /// Streams the trail's rows that may hold a challenge id in pages and
    /// writes their `data` again, in one transaction with the record; the
    /// projection's lock (PostgreSQL) or write turn (SQLite) keeps other
    /// processes' batches out meanwhile. `None` when another process had
    /// already done it.
    async fn strip_challenge_ids_from_audit_data(&self) -> Result<Option<u64>, ProjectionError> {
        macro_rules! migrate {
            ($tx:ident, $db:ty) => {{
                let done: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM data_migrations WHERE name = $1")
                        .bind(AUDIT_DATA_WITHOUT_CHALLENGE_IDS)
                        .fetch_one(&mut *$tx)
                        .await?;
                if done > 0 {
                    return Ok(None);
                }
                let mut after_id = 0_i64;
                let mut changed_rows = 0_u64;
                loop {
                    let rows = sqlx::query(SELECT_CANDIDATES)
                        .bind(after_id)
                        .bind(PAGE)
                        .fetch_all(&mut *$tx)
                        .await?;
                    let mut changed = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let id: i64 = row.try_get("id")?;
                        let data: String = row.try_get("data")?;
                        after_id = id;
                        match stored_data_without_secrets(&data) {
                            Ok(rewritten) if rewritten != data => changed.push((id, rewritten)),
                            Ok(_) => {}
                            // Not JSON: not what any version wrote. Left for
                            // verify to report.
                            Err(error) => {
                                tracing::warn!(id, %error, "an audit row's data is not JSON: left as it is")
                            }
                        }
                    }
                    changed_rows += changed.len() as u64;
                    if !changed.is_empty() {
                        let mut update = sqlx::QueryBuilder::<$db>::new(UPDATE_PREFIX);
                        update.push_values(changed, |mut values, (id, data)| {
                            values.push_bind(id).push_bind(data);
                        });
                        update.push(UPDATE_SUFFIX);
                        update.build().execute(&mut *$tx).await?;
                    }
                    if (rows.len() as i64) < PAGE {
                        break;
                    }
                }
                sqlx::query("INSERT INTO data_migrations (name, rows_changed) VALUES ($1, $2)")
                    .bind(AUDIT_DATA_WITHOUT_CHALLENGE_IDS)
                    .bind(changed_rows as i64)
                    .execute(&mut *$tx)
                    .await?;
                $tx.commit().await?;
                Ok(Some(changed_rows))
            }};
        }
        let _turn = self.0.write_turn().await;
        match &self.0 {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                migrate!(tx, sqlx::Sqlite)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                lock_projection(&mut tx).await?;
                migrate!(tx, sqlx::Postgres)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn data(pool: &sqlx::SqlitePool) -> Vec<String> {
        sqlx::query_scalar("SELECT data FROM audit_log ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    /// Rows as an earlier version wrote them: challenge ids in `data`, more
    /// than a page of them, among rows without any.
    #[tokio::test]
    async fn challenge_ids_are_taken_out_of_stored_audit_data_once() {
        let pool = crate::memory_store().await;
        for id in 1..=2_500_i64 {
            let data = if id % 2 == 0 {
                format!(r#"{{"challenge_id":"c-{id}","methods":["totp"]}}"#)
            } else {
                format!(r#"{{"email":"u{id}@example.com"}}"#)
            };
            sqlx::query(
                "INSERT INTO audit_log (id, position, user_id, sequence, type, occurred_at, data,
                                        chain_hash, head_hash)
                 VALUES ($1, $1, 'u', $1, 'T', '2024-01-01T00:00:00+00:00', $2, '', '')",
            )
            .bind(id)
            .bind(data)
            .execute(&pool)
            .await
            .unwrap();
        }
        let db = Db::Sqlite(pool.clone());
        assert_eq!(
            ReadModels::new(db.clone())
                .run_data_migrations()
                .await
                .unwrap(),
            [(AUDIT_DATA_WITHOUT_CHALLENGE_IDS, 1_250)]
        );
        let after = data(&pool).await;
        assert!(after.iter().all(|data| !data.contains("challenge")));
        assert_eq!(after[1], r#"{"methods":["totp"]}"#);
        assert_eq!(after[2], r#"{"email":"u3@example.com"}"#);

        // Recorded: a row written the old way afterwards stays (the next
        // start does not scan the trail again).
        sqlx::query(r#"UPDATE audit_log SET data = '{"challenge_id":"x"}' WHERE id = 1"#)
            .execute(&pool)
            .await
            .unwrap();
        assert!(ReadModels::new(db.clone())
            .run_data_migrations()
            .await
            .unwrap()
            .is_empty());
        assert_eq!(data(&pool).await[0], r#"{"challenge_id":"x"}"#);
    }
}
