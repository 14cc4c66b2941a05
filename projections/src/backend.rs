//! What differs between SQLite and PostgreSQL for the projector and the
//! rebuild, on the connection of their transaction: one trait, two
//! implementations. The fold and the order of the work are written once,
//! over this trait.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Sqlite, SqliteConnection};
use twofold_store::sql::{copy_row, Arg};
use twofold_store::{bind_all, push_bind};

use crate::audit::{parse_hash, Link, GENESIS};
use crate::db::ProjectionError;
use crate::feed::{EventPosition, POSTGRES_FEED, SQLITE_FEED};
use crate::fold::{ChallengeRow, DirectoryRow, TrailEnd};
use crate::pages::FeedRow;
use crate::read_models::{Table, CHECKPOINT, TABLES};

/// Serialises catch-up rounds (and a rebuild) across processes sharing one
/// PostgreSQL.
const POSTGRES_LOCK_KEY: i64 = 0x0074_776f_666f_6c64;

/// A row of the read models' columns, on either backend.
pub(crate) trait ModelRow: Row {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn number(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn optional_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;

    /// A stored enum value.
    fn parsed<T: FromStr>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.text(column)?
            .parse()
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))
    }
}

impl<R: Row> ModelRow for R
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }
    fn number(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.try_get(column)
    }
    fn optional_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(column)
    }
}

/// The backend-specific part of the read models' writers.
pub(crate) trait Backend: Send + 'static {
    type Row: FeedRow + ModelRow;

    /// A subquery of one column, `user_id`, listing the texts of the JSON
    /// array bound as `$1`.
    const LISTED: &'static str;

    /// Takes what keeps other writers of the read models out until the
    /// transaction ends (SQLite: the write lock, already held by `BEGIN
    /// IMMEDIATE`; PostgreSQL: the projection's advisory lock). On
    /// PostgreSQL the commit then returns before the disk has it: the read
    /// models are derived, and a commit lost in a crash loses its
    /// checkpoint with it, so the events are applied again.
    async fn lock_read_models(&mut self) -> Result<(), sqlx::Error>;
    /// Up to `limit` events of the feed after `after`.
    async fn feed(
        &mut self,
        after: EventPosition,
        limit: i64,
    ) -> Result<Vec<Self::Row>, sqlx::Error>;
    async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Self::Row>, sqlx::Error>;
    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<(), sqlx::Error>;
    /// `head`, then `VALUES` of `rows` (at most `ROWS_PER_STATEMENT`),
    /// every value bound, then `tail`.
    async fn with_values(
        &mut self,
        head: &str,
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error>;
    /// The rebuild's load of rows into a table emptied in this transaction.
    async fn load(&mut self, table: &Table, rows: Vec<Vec<Arg>>) -> Result<(), sqlx::Error>;
    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error>;
    /// Empties the read models and readies the connection for a rebuild.
    async fn prepare_rebuild(&mut self) -> Result<(), sqlx::Error>;
    /// The statements that drop and that create again each index of
    /// `table` this backend can take off for a rebuild.
    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error>;
    /// Fresh planner statistics, so that the first queries on the rebuilt
    /// tables seek rather than scan.
    async fn analyze(&mut self) -> Result<(), sqlx::Error>;

    /// Multi-row `INSERT`s of `rows` followed by `tail` (an `ON CONFLICT`
    /// clause), every value bound.
    async fn insert(
        &mut self,
        table: &Table,
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        let head = format!("INSERT INTO {} ({}) ", table.name, table.columns.join(", "));
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            self.with_values(&head, chunk, tail).await?;
        }
    }

    /// The checkpoint: the last event the read models hold.
    async fn checkpoint(&mut self) -> Result<EventPosition, sqlx::Error> {
        let rows = self
            .fetch(
                "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1",
                vec![CHECKPOINT.into()],
            )
            .await?;
        rows.first()
            .map(|row| {
                Ok::<_, sqlx::Error>(EventPosition {
                    transaction_id: row.number("transaction_id")?,
                    position: row.number("position")?,
                })
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn save_checkpoint(&mut self, applied: EventPosition) -> Result<(), sqlx::Error> {
        self.execute(
            "INSERT INTO projection_checkpoints (name, transaction_id, position)
             VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
                SET transaction_id = excluded.transaction_id, position = excluded.position",
            vec![
                CHECKPOINT.into(),
                applied.transaction_id.into(),
                applied.position.into(),
            ],
        )
        .await
    }

    /// Where the trail ends, and the last link of each of `users`.
    async fn trail_end(&mut self, users: &[&str]) -> Result<TrailEnd, sqlx::Error> {
        let sql = format!(
            "SELECT NULL AS user_id, id, 0 AS sequence, head_hash AS hash
               FROM (SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1) AS last
             UNION ALL
             SELECT a.user_id, a.id, a.sequence, a.chain_hash AS hash
               FROM ({}) AS u
               JOIN audit_log a ON a.id = (SELECT max(b.id) FROM audit_log b WHERE b.user_id = u.user_id)",
            Self::LISTED
        );
        let mut end = TrailEnd {
            last_id: 0,
            head: GENESIS,
            links: Vec::with_capacity(users.len()),
        };
        for row in self.fetch(&sql, vec![listed(users)]).await? {
            let hash = parse_hash(row.optional_text("hash")?.as_deref());
            match row.optional_text("user_id")? {
                Some(user_id) => end.links.push((
                    user_id,
                    Link {
                        sequence: row.number("sequence")?,
                        hash,
                    },
                )),
                None => {
                    end.last_id = row.number("id")?;
                    end.head = hash;
                }
            }
        }
        Ok(end)
    }

    async fn directory_rows(
        &mut self,
        users: &[&str],
    ) -> Result<Vec<(String, DirectoryRow)>, ProjectionError> {
        let sql = format!(
            "SELECT user_id, username, email, email_key, role, two_factor_status, enforced,
                    enabled_at, last_login_at, registered_at
               FROM user_directory WHERE user_id IN ({})",
            Self::LISTED
        );
        let rows = self.fetch(&sql, vec![listed(users)]).await?;
        let row = |row: &Self::Row| -> Result<_, sqlx::Error> {
            Ok((
                row.text("user_id")?,
                DirectoryRow {
                    username: row.text("username")?,
                    email: row.optional_text("email")?,
                    email_key: row.optional_text("email_key")?,
                    role: row.parsed("role")?,
                    two_factor_status: row.parsed("two_factor_status")?,
                    enforced: row.flag("enforced")?,
                    enabled_at: row.optional_time("enabled_at")?,
                    last_login_at: row.optional_time("last_login_at")?,
                    registered_at: row.time("registered_at")?,
                },
            ))
        };
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    async fn challenge_rows(
        &mut self,
        users: &[&str],
    ) -> Result<Vec<(String, ChallengeRow)>, sqlx::Error> {
        let sql = format!(
            "SELECT challenge_id, user_id, expires_at FROM challenges WHERE user_id IN ({})",
            Self::LISTED
        );
        let rows = self.fetch(&sql, vec![listed(users)]).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.text("challenge_id")?,
                    ChallengeRow {
                        user_id: row.text("user_id")?,
                        expires_at: row.time("expires_at")?,
                    },
                ))
            })
            .collect()
    }

    /// Deletes the rows of `table` whose `key` is one of `keys`.
    async fn delete(&mut self, table: &str, key: &str, keys: &[String]) -> Result<(), sqlx::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN (SELECT user_id FROM ({}) AS listed)",
            Self::LISTED
        );
        self.execute(&sql, vec![listed(keys)]).await
    }
}

/// `items` as the JSON array `LISTED` reads.
fn listed(items: &[impl AsRef<str>]) -> Arg {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    Arg::Text(Some(serde_json::Value::from(items).to_string()))
}

/// Rows per statement: 13 columns stay far below SQLite's 32,766
/// parameters and PostgreSQL's 65,535.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

impl Backend for SqliteConnection {
    type Row = sqlx::sqlite::SqliteRow;

    const LISTED: &'static str = "SELECT value AS user_id FROM json_each($1)";

    async fn lock_read_models(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn feed(
        &mut self,
        after: EventPosition,
        limit: i64,
    ) -> Result<Vec<Self::Row>, sqlx::Error> {
        sqlx::query(SQLITE_FEED)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(limit)
            .fetch_all(&mut *self)
            .await
    }

    async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Self::Row>, sqlx::Error> {
        bind_all!(sqlx::query(sql), args)
            .fetch_all(&mut *self)
            .await
    }

    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<(), sqlx::Error> {
        bind_all!(sqlx::query(sql), args)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn with_values(
        &mut self,
        head: &str,
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        let mut statement = QueryBuilder::<Sqlite>::new(head);
        statement.push_values(rows, |mut values, row| {
            for cell in row {
                push_bind!(values, cell);
            }
        });
        statement.push(tail);
        statement.build().execute(&mut *self).await?;
        Ok(())
    }

    async fn load(&mut self, table: &Table, rows: Vec<Vec<Arg>>) -> Result<(), sqlx::Error> {
        self.insert(table, rows, "").await
    }

    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    async fn prepare_rebuild(&mut self) -> Result<(), sqlx::Error> {
        for table in TABLES {
            self.run_sql(&format!("DELETE FROM {table}")).await?;
        }
        Ok(())
    }

    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        // Constraints' own indexes have no SQL and cannot be dropped.
        sqlx::query_as(
            "SELECT 'DROP INDEX \"' || name || '\"', sql FROM sqlite_master
              WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
        )
        .bind(table)
        .fetch_all(&mut *self)
        .await
    }

    /// Nothing: SQLite plans without statistics unless `ANALYZE` was ever
    /// run, and the service's queries are written for those plans.
    async fn analyze(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// Rows per COPY message.
const POSTGRES_ROWS_PER_SEND: usize = 10_000;
/// Enough for a message of audit rows (about 450 bytes each), so that the
/// buffer is allocated once.
const COPY_BUFFER: usize = POSTGRES_ROWS_PER_SEND * 512;

impl Backend for PgConnection {
    type Row = sqlx::postgres::PgRow;

    const LISTED: &'static str = "SELECT jsonb_array_elements_text($1::jsonb) AS user_id";

    async fn lock_read_models(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)",
        )
        .bind(POSTGRES_LOCK_KEY)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn feed(
        &mut self,
        after: EventPosition,
        limit: i64,
    ) -> Result<Vec<Self::Row>, sqlx::Error> {
        sqlx::query(POSTGRES_FEED)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(limit)
            .fetch_all(&mut *self)
            .await
    }

    async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Self::Row>, sqlx::Error> {
        bind_all!(sqlx::query(sql), args)
            .fetch_all(&mut *self)
            .await
    }

    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<(), sqlx::Error> {
        bind_all!(sqlx::query(sql), args)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn with_values(
        &mut self,
        head: &str,
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        let mut statement = QueryBuilder::<Postgres>::new(head);
        statement.push_values(rows, |mut values, row| {
            for cell in row {
                push_bind!(values, cell);
            }
        });
        statement.push(tail);
        statement.build().execute(&mut *self).await?;
        Ok(())
    }

    /// COPY, `FREEZE` into the tables emptied in this transaction: their
    /// rows are written frozen, so no later vacuum rewrites every page.
    async fn load(&mut self, table: &Table, rows: Vec<Vec<Arg>>) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let freeze = if TABLES.contains(&table.name) {
            " WITH (FREEZE)"
        } else {
            ""
        };
        let mut copy = self
            .copy_in_raw(&format!(
                "COPY {} ({}) FROM STDIN{freeze}",
                table.name,
                table.columns.join(", ")
            ))
            .await?;
        let mut data = Vec::with_capacity(COPY_BUFFER);
        for chunk in rows.chunks(POSTGRES_ROWS_PER_SEND) {
            data.clear();
            for row in chunk {
                copy_row(&mut data, row);
            }
            copy.send(data.as_slice()).await?;
        }
        copy.finish().await?;
        Ok(())
    }

    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    /// Also analyses `events`: planned without statistics (a store whose
    /// events were imported), each page of the feed became a scan and a
    /// sort of the whole table, 208 s instead of 36 s for a million events.
    async fn prepare_rebuild(&mut self) -> Result<(), sqlx::Error> {
        self.run_sql(&format!(
            "TRUNCATE {}; SET LOCAL maintenance_work_mem = '256MB'; ANALYZE events",
            TABLES.join(", ")
        ))
        .await
    }

    /// Primary keys and unique constraints first (the other indexes may
    /// be built on them), then the other indexes.
    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', $1, conname),
                    format('ALTER TABLE %s ADD CONSTRAINT %I %s', $1, conname,
                           pg_get_constraintdef(oid))
               FROM pg_constraint
              WHERE conrelid = $1::regclass AND contype IN ('p', 'u')
             UNION ALL
             SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid = $1::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(table)
        .fetch_all(&mut *self)
        .await
    }

    async fn analyze(&mut self) -> Result<(), sqlx::Error> {
        self.run_sql(&format!("ANALYZE {}", TABLES.join(", ")))
            .await
    }
}
