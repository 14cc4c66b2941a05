//! Changes to stored rows that SQL alone cannot make, because they need the
//! service's own derivations (the canonical JSON writer and its secret
//! rule). Each runs once, after the SQL migrations (at start and by
//! `twofold migrate`), in one transaction with its record in
//! `data_migrations`.

use crate::audit::stored_data_without_secrets;
use twofold_store::{WriteTx, ROWS_PER_STATEMENT};

use crate::db::{ProjectionError, ReadModels};

/// Audit rows written before challenge ids were left out of `data` hold
/// them; verify compares `data` with what the event gives today, so each
/// would read as edited. Their `data` is written again under today's rule.
const AUDIT_DATA_WITHOUT_CHALLENGE_IDS: &str = "audit_data_without_challenge_ids";

/// `user_versions` arrived after events were stored: every user's versions
/// are written once from the whole history (the trail is left as it is).
const USER_VERSIONS_FROM_HISTORY: &str = "user_versions_from_history";

/// Rows read and rewritten per statement (the most `with_values` takes).
const PAGE: i64 = ROWS_PER_STATEMENT as i64;

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
        let mut ran = Vec::new();
        if !self
            .data_migration_done(AUDIT_DATA_WITHOUT_CHALLENGE_IDS)
            .await?
        {
            if let Some(rows) = self.strip_challenge_ids_from_audit_data().await? {
                ran.push((AUDIT_DATA_WITHOUT_CHALLENGE_IDS, rows));
            }
        }
        if !self.data_migration_done(USER_VERSIONS_FROM_HISTORY).await? {
            if let Some(events) = self.versions_from_history().await? {
                ran.push((USER_VERSIONS_FROM_HISTORY, events));
            }
        }
        Ok(ran)
    }

    /// Writes `user_versions` from the whole history in one transaction
    /// with the record; `None` when another process had already done it.
    /// Returns the events folded.
    async fn versions_from_history(&self) -> Result<Option<u64>, ProjectionError> {
        let mut tx = self.0.begin_write().await?;
        tx.lock_read_models().await?;
        let done = tx
            .fetch(
                "SELECT count(*) AS done FROM data_migrations WHERE name = $1",
                vec![USER_VERSIONS_FROM_HISTORY.into()],
            )
            .await?;
        if done.first().map(|row| row.get::<i64>("done")).transpose()? != Some(0) {
            return Ok(None);
        }
        let events = crate::bulk::versions_from_history(&mut tx).await?;
        tx.execute(
            "INSERT INTO data_migrations (name, rows_changed) VALUES ($1, $2)",
            vec![USER_VERSIONS_FROM_HISTORY.into(), (events as i64).into()],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(events))
    }

    /// A SELECT, so that a start with nothing to do writes nothing.
    async fn data_migration_done(&self, name: &str) -> Result<bool, ProjectionError> {
        const SQL: &str = "SELECT count(*) AS done FROM data_migrations WHERE name = $1";
        let rows = self.0.fetch(SQL, vec![name.into()]).await?;
        Ok(rows.first().map(|row| row.get::<i64>("done")).transpose()? > Some(0))
    }

    /// Streams the trail's rows that may hold a challenge id in pages and
    /// writes their `data` again, in one transaction with the record; the
    /// projection's lock (PostgreSQL) or write turn (SQLite) keeps other
    /// processes' batches out meanwhile. `None` when another process had
    /// already done it.
    async fn strip_challenge_ids_from_audit_data(&self) -> Result<Option<u64>, ProjectionError> {
        let mut tx = self.0.begin_write().await?;
        let changed = strip_challenge_ids(&mut tx).await?;
        tx.commit().await?;
        Ok(changed)
    }
}

async fn strip_challenge_ids(tx: &mut WriteTx) -> Result<Option<u64>, ProjectionError> {
    tx.lock_read_models().await?;
    let done = tx
        .fetch(
            "SELECT count(*) AS done FROM data_migrations WHERE name = $1",
            vec![AUDIT_DATA_WITHOUT_CHALLENGE_IDS.into()],
        )
        .await?;
    if done.first().map(|row| row.get::<i64>("done")).transpose()? != Some(0) {
        return Ok(None);
    }
    let mut after_id = 0_i64;
    let mut changed_rows = 0_u64;
    loop {
        let rows = tx
            .fetch(SELECT_CANDIDATES, vec![after_id.into(), PAGE.into()])
            .await?;
        let mut changed = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get("id")?;
            let data = row.text("data")?;
            after_id = id;
            match stored_data_without_secrets(data) {
                Ok(rewritten) if rewritten != data => {
                    changed.push(vec![id.into(), rewritten.into()])
                }
                Ok(_) => {}
                // Not JSON: not what any version wrote. Left for verify to
                // report.
                Err(error) => {
                    tracing::warn!(id, %error, "an audit row's data is not JSON: left as it is")
                }
            }
        }
        changed_rows += changed.len() as u64;
        if !changed.is_empty() {
            tx.with_values(UPDATE_PREFIX, changed, UPDATE_SUFFIX)
                .await?;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    tx.execute(
        "INSERT INTO data_migrations (name, rows_changed) VALUES ($1, $2)",
        vec![
            AUDIT_DATA_WITHOUT_CHALLENGE_IDS.into(),
            (changed_rows as i64).into(),
        ],
    )
    .await?;
    Ok(Some(changed_rows))
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
        let db = crate::db::Db::Sqlite(pool.clone());
        assert_eq!(
            ReadModels::new(db.clone())
                .run_data_migrations()
                .await
                .unwrap(),
            [
                (AUDIT_DATA_WITHOUT_CHALLENGE_IDS, 1_250),
                (USER_VERSIONS_FROM_HISTORY, 0)
            ]
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
