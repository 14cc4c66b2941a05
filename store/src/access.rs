//! Statements on either backend with one type each: `Row` for what a query
//! gives, `WriteTx` for a write transaction, and `Db`'s own statements. Each
//! matches on the backend once, here; callers write their SQL once, with
//! `$n` parameters and every value bound (`Arg`).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::JsonRawValue;
use sqlx::{Postgres, QueryBuilder, Row as _, Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;

use crate::db::read_models_writer;
use crate::feed::{EventPosition, POSTGRES_FEED, SQLITE_FEED};
use crate::sql::{copy_row, Arg};
use crate::{bind_all, push_bind, Db};

/// A row a query gave, on either backend.
pub enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

/// A value both backends decode.
pub trait Column:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

impl Row {
    pub fn get<T: Column>(&self, column: &str) -> Result<T, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get(column),
            Row::Postgres(row) => row.try_get(column),
        }
    }

    /// A text column without a copy.
    pub fn text(&self, column: &str) -> Result<&str, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get(column),
            Row::Postgres(row) => row.try_get(column),
        }
    }

    /// A JSON column as its text (jsonb's text form on PostgreSQL).
    pub fn json_text(&self, column: &str) -> Result<&str, sqlx::Error> {
        let raw: &JsonRawValue = match self {
            Row::Sqlite(row) => row.try_get(column)?,
            Row::Postgres(row) => row.try_get(column)?,
        };
        Ok(raw.get())
    }

    /// The stored bytes of the column at `index`, whatever its declared
    /// type (a text column holds UTF-8): for comparing as stored.
    pub fn stored_bytes(&self, index: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get_unchecked(index),
            Row::Postgres(row) => row.try_get_unchecked(index),
        }
    }

    pub fn get_at<T: Column>(&self, index: usize) -> Result<T, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get(index),
            Row::Postgres(row) => row.try_get(index),
        }
    }

    /// A text column, by index, without a copy.
    pub fn text_at(&self, index: usize) -> Result<&str, sqlx::Error> {
        match self {
            Row::Sqlite(row) => row.try_get(index),
            Row::Postgres(row) => row.try_get(index),
        }
    }

    /// How many columns the row has.
    pub fn column_count(&self) -> usize {
        match self {
            Row::Sqlite(row) => row.len(),
            Row::Postgres(row) => row.len(),
        }
    }

    /// A stored name (a role, a status, a method) as its enum; a name this
    /// build does not know is a decode error of its column.
    pub fn parsed<T: std::str::FromStr>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.text(column)?
            .parse()
            .map_err(|error: T::Err| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: Box::new(error),
            })
    }

    /// A stored id.
    pub fn uuid(&self, column: &str) -> Result<uuid::Uuid, sqlx::Error> {
        self.text(column)?
            .parse()
            .map_err(|error: uuid::Error| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: Box::new(error),
            })
    }

    pub fn optional_uuid(&self, column: &str) -> Result<Option<uuid::Uuid>, sqlx::Error> {
        match self.get::<Option<String>>(column)? {
            Some(_) => self.uuid(column).map(Some),
            None => Ok(None),
        }
    }
}

/// Serialises the read models' writers across processes sharing one
/// PostgreSQL (SQLite: its write lock does).
const POSTGRES_LOCK_KEY: i64 = 0x0074_776f_666f_6c64;

/// Rows per COPY message.
const POSTGRES_ROWS_PER_SEND: usize = 10_000;
/// Enough for a message of audit rows (about 450 bytes each), so that the
/// buffer is allocated once.
const COPY_BUFFER: usize = POSTGRES_ROWS_PER_SEND * 512;

/// Rows per statement of `WriteTx::insert`: 13 columns stay far below
/// SQLite's 32,766 parameters and PostgreSQL's 65,535.
pub const ROWS_PER_STATEMENT: usize = 500;

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// A write transaction, with this process's write turn (`Db::write_turn`)
/// held until it ends.
pub struct WriteTx {
    tx: Tx,
    _turn: Option<OwnedMutexGuard<()>>,
}

macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match &mut $tx.tx {
            Tx::Sqlite($conn) => $body,
            Tx::Postgres($conn) => $body,
        }
    };
}

impl Db {
    /// Takes this process's write turn, then opens a write transaction
    /// (SQLite: `BEGIN IMMEDIATE`, so a read-then-write upgrade cannot fail
    /// with SQLITE_BUSY despite the busy timeout).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let turn = self.write_turn().await;
        let tx = match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// A write of the read models: rows derived from the events, which the
    /// next start applies again when a crash loses them, so their commit
    /// need not wait for the disk (PostgreSQL: `WriteTx::lock_read_models`
    /// turns synchronous_commit off; SQLite: the file's read-model writer).
    pub async fn begin_read_models_write(&self) -> Result<WriteTx, sqlx::Error> {
        let turn = self.write_turn().await;
        let tx = match self {
            Db::Sqlite(pool) => Tx::Sqlite(
                read_models_writer(pool)
                    .begin_with("BEGIN IMMEDIATE")
                    .await?,
            ),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    pub async fn fetch(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => bind_all!(sqlx::query(sql), args)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Db::Postgres(pool) => bind_all!(sqlx::query(sql), args)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    pub async fn fetch_optional(
        &self,
        sql: &str,
        args: Vec<Arg>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(pool)
                .await?
                .map(Row::Sqlite),
            Db::Postgres(pool) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(pool)
                .await?
                .map(Row::Postgres),
        })
    }

    /// One statement outside any transaction of ours; gives the rows it
    /// changed. A writer: it takes this process's write turn.
    pub async fn execute(&self, sql: &str, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        let _turn = self.write_turn().await;
        Ok(match self {
            Db::Sqlite(pool) => bind_all!(sqlx::query(sql), args)
                .execute(pool)
                .await?
                .rows_affected(),
            Db::Postgres(pool) => bind_all!(sqlx::query(sql), args)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    /// How this backend compares and picks indexes, for queries built at
    /// run time.
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The names of `table`'s columns, in the order the table declares them.
    pub async fn columns(&self, table: &str) -> Result<Vec<String>, sqlx::Error> {
        let sql = match self.dialect() {
            Dialect::Sqlite => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
            Dialect::Postgres => {
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                  WHERE table_schema = current_schema() AND table_name = $1
                  ORDER BY ordinal_position"
            }
        };
        self.fetch(sql, vec![table.into()])
            .await?
            .iter()
            .map(|row| row.get_at(0))
            .collect()
    }

    /// After a bulk load, PostgreSQL's `VACUUM ANALYZE` of each of `tables`
    /// (outside any transaction): fresh planner statistics, and a
    /// visibility map with which index-only scans skip the table. Nothing
    /// on SQLite (see `WriteTx::analyze`).
    pub async fn vacuum_analyze(&self, tables: &[&str]) -> Result<(), sqlx::Error> {
        if let Db::Postgres(pool) = self {
            for table in tables {
                sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// How many connections the pool holds open, and how many of those
    /// are idle.
    pub fn connections(&self) -> (u32, usize) {
        match self {
            Db::Sqlite(pool) => (pool.size(), pool.num_idle()),
            Db::Postgres(pool) => (pool.size(), pool.num_idle()),
        }
    }

    /// Closes every connection, waiting for those in use to come back;
    /// later uses fail with `PoolClosed`.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => {
                let writer = read_models_writer(pool);
                pool.close().await;
                writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// The few fragments of SQL that differ between the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The backend's name, as its URLs begin: `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// The column of `events` that holds an event's transaction
    /// (`EventPosition::transaction_id`): on SQLite, whose writers take
    /// turns, each event's position stands for it.
    pub fn transaction_id(self) -> &'static str {
        match self {
            Dialect::Sqlite => "position",
            Dialect::Postgres => "transaction_id",
        }
    }

    /// The value at `path` (object keys, outermost first) inside the JSON
    /// `column`, for comparing and grouping: text on PostgreSQL (`->>`),
    /// the JSON value's own SQL type on SQLite (`json_extract`). Keys are
    /// pasted into the SQL: only constants of ours, never input.
    pub fn json_field(self, column: &str, path: &[&str]) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({column}, '$.{}')", path.join(".")),
            Dialect::Postgres => {
                let mut field = column.to_string();
                for (index, key) in path.iter().enumerate() {
                    let arrow = if index + 1 == path.len() { "->>" } else { "->" };
                    field = format!("{field} {arrow} '{key}'");
                }
                field
            }
        }
    }

    /// Makes text compare by code point, the order in which the values that
    /// start with a prefix form one range: SQLite's default, and `C` on
    /// PostgreSQL whatever collation the database was created with.
    pub fn code_point_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }

    /// A time column's NULL, typed as the stores type times.
    pub fn null_time(self) -> &'static str {
        match self {
            Dialect::Sqlite => "NULL",
            Dialect::Postgres => "CAST(NULL AS timestamptz)",
        }
    }

    /// Keeps a term out of index selection. SQLite plans without statistics
    /// and may prefer a poor index; PostgreSQL weighs terms by its statistics.
    pub fn unindexed(self) -> &'static str {
        match self {
            Dialect::Sqlite => "+",
            Dialect::Postgres => "",
        }
    }

    /// A subquery of one column, `item`, listing the texts of the JSON array
    /// bound at `$n`.
    pub fn listed(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value AS item FROM json_each(${n})"),
            // Through an array: PostgreSQL's plan for a prepared statement
            // counts on 100 rows from a set-returning function but on 10 from
            // unnesting an array, and with 100 lookups a sequential scan of a
            // table of 20,000 users looked cheaper than its index (seen: a
            // projector round's directory read went through every row).
            Dialect::Postgres => format!(
                "SELECT unnest(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb))) AS item"
            ),
        }
    }
}

/// `items` as the JSON array that `Dialect::listed` reads.
pub fn listed(items: &[impl AsRef<str>]) -> Arg {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    Arg::Text(Some(serde_json::Value::from(items).to_string()))
}

impl WriteTx {
    pub fn dialect(&self) -> Dialect {
        match self.tx {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.tx {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    /// Keeps other writers of the read models out until the transaction
    /// ends (SQLite: its write lock, held since `BEGIN IMMEDIATE`;
    /// PostgreSQL: an advisory lock). On PostgreSQL the commit then returns
    /// before the disk has it: the read models are derived, and a commit
    /// lost in a crash loses its checkpoint with it, so the events are
    /// applied again.
    pub async fn lock_read_models(&mut self) -> Result<(), sqlx::Error> {
        if let Tx::Postgres(tx) = &mut self.tx {
            sqlx::query(
                "SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)",
            )
            .bind(POSTGRES_LOCK_KEY)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Up to `limit` events of the feed after `after`, in feed order.
    pub async fn feed(
        &mut self,
        after: EventPosition,
        limit: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let sql = match self.dialect() {
            Dialect::Sqlite => SQLITE_FEED,
            Dialect::Postgres => POSTGRES_FEED,
        };
        self.fetch(
            sql,
            vec![
                after.transaction_id.into(),
                after.position.into(),
                limit.into(),
            ],
        )
        .await
    }

    pub async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match &mut self.tx {
            Tx::Sqlite(tx) => bind_all!(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Tx::Postgres(tx) => bind_all!(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    pub async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        on_tx!(self, tx => Ok(bind_all!(sqlx::query(sql), args)
            .execute(&mut **tx)
            .await?
            .rows_affected()))
    }

    /// Statements without parameters, several in one text.
    pub async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        on_tx!(self, tx => {
            sqlx::raw_sql(sql).execute(&mut **tx).await?;
        });
        Ok(())
    }

    /// `head`, then `VALUES` of `rows` (at most `ROWS_PER_STATEMENT`),
    /// every value bound, then `tail`.
    pub async fn with_values(
        &mut self,
        head: &str,
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        macro_rules! values {
            ($db:ty, $tx:expr) => {{
                let mut statement = QueryBuilder::<$db>::new(head);
                statement.push_values(rows, |mut values, row| {
                    for cell in row {
                        push_bind!(values, cell);
                    }
                });
                statement.push(tail);
                statement.build().execute(&mut **$tx).await?;
            }};
        }
        match &mut self.tx {
            Tx::Sqlite(tx) => values!(Sqlite, tx),
            Tx::Postgres(tx) => values!(Postgres, tx),
        }
        Ok(())
    }

    /// Every write of `writes`, in order. On PostgreSQL they travel as one
    /// statement (each a data-modifying `WITH` part, every value bound in
    /// arrays), one round trip whatever they hold: they all see the
    /// database as it was before the statement, so they must not depend on
    /// each other (the projector's touch disjoint rows). An empty write is
    /// left out, so a round's statement text is one of a few, each prepared
    /// once per connection.
    pub async fn write_all(&mut self, writes: Vec<Write>) -> Result<(), sqlx::Error> {
        let writes: Vec<Write> = writes.into_iter().filter(|w| !w.is_empty()).collect();
        let Tx::Postgres(tx) = &mut self.tx else {
            for write in writes {
                match write {
                    Write::Insert {
                        table,
                        columns,
                        rows,
                        tail,
                    } => self.insert(table, columns, rows, tail).await?,
                    Write::Delete { table, key, keys } => {
                        let sql = format!(
                            "DELETE FROM {table} WHERE {key} IN (SELECT item FROM ({}) AS listed)",
                            Dialect::Sqlite.listed(1)
                        );
                        self.execute(&sql, vec![listed(&keys)]).await?;
                    }
                    Write::Upsert {
                        table,
                        key,
                        columns,
                        rows,
                    } => self.update_changed(table, key, columns, rows).await?,
                }
            }
            return Ok(());
        };
        if writes.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(writes.len());
        let mut arrays: Vec<ArgColumn> = Vec::new();
        for write in writes {
            let part = match write {
                Write::Insert {
                    table,
                    columns,
                    rows,
                    tail,
                } => unnested_insert(table, columns, rows, tail, &mut arrays)?,
                Write::Delete { table, key, keys } => {
                    arrays.push(ArgColumn::Text(keys.into_iter().map(Some).collect()));
                    format!(
                        "DELETE FROM {table} WHERE {key} = ANY(${}::text[])",
                        arrays.len()
                    )
                }
                Write::Upsert {
                    table,
                    key,
                    columns,
                    rows,
                } => {
                    let rows = rows.into_iter().map(|row| row.values).collect();
                    unnested_insert(table, columns, rows, &overwrite(key, columns), &mut arrays)?
                }
            };
            parts.push(part);
        }
        let sql = if parts.len() == 1 {
            parts.remove(0)
        } else {
            let with: Vec<String> = parts
                .iter()
                .enumerate()
                .map(|(index, part)| format!("w{index} AS ({part})"))
                .collect();
            format!("WITH {} SELECT 1", with.join(", "))
        };
        with_arrays(&sql, arrays).execute(&mut **tx).await?;
        Ok(())
    }

    /// SQLite's `Write::Upsert`: new rows inserted, each stored row updated
    /// in the columns that changed (none: not written).
    async fn update_changed(
        &mut self,
        table: &str,
        key: &str,
        columns: &[&str],
        rows: Vec<UpsertRow>,
    ) -> Result<(), sqlx::Error> {
        let key_index = columns
            .iter()
            .position(|column| *column == key)
            .ok_or_else(|| {
                sqlx::Error::Encode(format!("{key} is not a column of {table}").into())
            })?;
        let mut new_rows = Vec::new();
        for row in rows {
            let Some(changed) = row.changed else {
                new_rows.push(row.values);
                continue;
            };
            let mut set = Vec::new();
            let mut args = vec![row.values[key_index].clone()];
            for ((column, value), changed) in columns.iter().zip(row.values).zip(changed) {
                if changed && *column != key {
                    args.push(value);
                    set.push(format!("{column} = ${}", args.len()));
                }
            }
            if set.is_empty() {
                continue;
            }
            let sql = format!("UPDATE {table} SET {} WHERE {key} = $1", set.join(", "));
            self.execute(&sql, args).await?;
        }
        self.insert(table, columns, new_rows, &overwrite(key, columns))
            .await
    }

    /// `INSERT`s of `rows` into `table`'s `columns`, followed by `tail` (an
    /// `ON CONFLICT` clause or nothing), every value bound. On PostgreSQL one
    /// statement whose text does not depend on the number of rows (each
    /// column bound as an array and unnested), so that it is prepared once
    /// per connection: a `VALUES` list of N rows is a new statement for each
    /// N, and batches of every size evicted each other from the prepared
    /// statement cache, re-planned at every round. SQLite prepares in-process.
    pub async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: Vec<Vec<Arg>>,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Tx::Postgres(tx) = &mut self.tx {
            let mut arrays = Vec::with_capacity(columns.len());
            let sql = unnested_insert(table, columns, rows, tail, &mut arrays)?;
            with_arrays(&sql, arrays).execute(&mut **tx).await?;
            return Ok(());
        }
        let head = format!("INSERT INTO {table} ({}) ", columns.join(", "));
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            self.with_values(&head, chunk, tail).await?;
        }
    }

    /// Loads `rows` into `table`: COPY on PostgreSQL, which reads each
    /// value in its text form as the column's type (a JSON text into
    /// `jsonb`), with `freeze` its rows written frozen (no later vacuum
    /// rewrites every page; the table must have been emptied in this
    /// transaction); multi-row INSERTs on SQLite, which runs in-process.
    pub async fn load(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: Vec<Vec<Arg>>,
        freeze: bool,
    ) -> Result<(), sqlx::Error> {
        let tx = match &mut self.tx {
            Tx::Postgres(tx) => tx,
            Tx::Sqlite(_) => return self.insert(table, columns, rows, "").await,
        };
        if rows.is_empty() {
            return Ok(());
        }
        let freeze = if freeze { " WITH (FREEZE)" } else { "" };
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {table} ({}) FROM STDIN{freeze}",
                columns.join(", ")
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

    /// Empties `tables` (PostgreSQL: one `TRUNCATE`, with more memory for
    /// the index builds that follow a load, and fresh statistics of
    /// `events`, without which each page of the feed was a scan and a sort
    /// of the whole table: 208 s instead of 36 s for a million events).
    pub async fn empty(&mut self, tables: &[&str]) -> Result<(), sqlx::Error> {
        match self.dialect() {
            Dialect::Sqlite => {
                for table in tables {
                    self.run_sql(&format!("DELETE FROM {table}")).await?;
                }
                Ok(())
            }
            Dialect::Postgres => {
                self.run_sql(&format!(
                    "TRUNCATE {}; SET LOCAL maintenance_work_mem = '256MB'; ANALYZE events",
                    tables.join(", ")
                ))
                .await
            }
        }
    }

    /// The statements that drop and that create again each index of
    /// `table` that can be taken off for a load (PostgreSQL: primary keys
    /// and unique constraints first, since other indexes may be built on
    /// them; SQLite: constraints' own indexes have no SQL and stay).
    pub async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        match &mut self.tx {
            Tx::Sqlite(tx) => {
                sqlx::query_as(
                    "SELECT 'DROP INDEX \"' || name || '\"', sql FROM sqlite_master
                      WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
                )
                .bind(table)
                .fetch_all(&mut **tx)
                .await
            }
            Tx::Postgres(tx) => {
                sqlx::query_as(
                    "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', $1, conname),
                            format('ALTER TABLE %s ADD CONSTRAINT %I %s', $1, conname,
                                   pg_get_constraintdef(oid))
                       FROM pg_constraint
                      WHERE conrelid = $1::regclass AND contype IN ('p', 'u')
                     UNION ALL
                     SELECT format('DROP INDEX %s', i.indexrelid::regclass),
                            pg_get_indexdef(i.indexrelid)
                       FROM pg_index i
                      WHERE i.indrelid = $1::regclass
                        AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
                )
                .bind(table)
                .fetch_all(&mut **tx)
                .await
            }
        }
    }

    /// PostgreSQL: `megabytes` for each index build for the rest of this
    /// transaction (`maintenance_work_mem`). Nothing on SQLite, which has
    /// no such limit.
    pub async fn index_build_memory(&mut self, megabytes: u32) -> Result<(), sqlx::Error> {
        match self.dialect() {
            Dialect::Sqlite => Ok(()),
            Dialect::Postgres => {
                self.run_sql(&format!("SET LOCAL maintenance_work_mem = '{megabytes}MB'"))
                    .await
            }
        }
    }

    /// The position the next event appended gets unless another writer's
    /// comes first: on SQLite one past the last event's (its trigger
    /// numbers them so), on PostgreSQL the identity sequence's next value,
    /// beyond the last event's when an append rolled back.
    pub async fn next_event_position(&mut self) -> Result<i64, sqlx::Error> {
        match self.dialect() {
            Dialect::Sqlite => {
                let rows = self
                    .fetch("SELECT max(position) AS last FROM events", vec![])
                    .await?;
                let last: Option<i64> = first(&rows)?.get("last")?;
                Ok(last.unwrap_or(0) + 1)
            }
            Dialect::Postgres => {
                let rows = self
                    .fetch(
                        "SELECT pg_get_serial_sequence('events', 'position') AS sequence",
                        vec![],
                    )
                    .await?;
                let sequence: String = first(&rows)?.get("sequence")?;
                let rows = self
                    .fetch(
                        &format!("SELECT last_value, is_called FROM {sequence}"),
                        vec![],
                    )
                    .await?;
                let row = first(&rows)?;
                let last_value: i64 = row.get("last_value")?;
                Ok(if row.get("is_called")? {
                    last_value + 1
                } else {
                    last_value
                })
            }
        }
    }

    /// Fresh planner statistics of `tables` after a load, so that the first
    /// queries seek rather than scan. Nothing on SQLite: it plans without
    /// statistics unless `ANALYZE` was ever run, and the service's queries
    /// are written for those plans.
    pub async fn analyze(&mut self, tables: &[&str]) -> Result<(), sqlx::Error> {
        match self.dialect() {
            Dialect::Sqlite => Ok(()),
            Dialect::Postgres => {
                self.run_sql(&format!("ANALYZE {}", tables.join(", ")))
                    .await
            }
        }
    }
}

/// The one row a statement gives.
fn first(rows: &[Row]) -> Result<&Row, sqlx::Error> {
    rows.first().ok_or(sqlx::Error::RowNotFound)
}

/// One write of `WriteTx::write_all`.
pub enum Write {
    /// `INSERT INTO table (columns)` the rows, then `tail` (an `ON
    /// CONFLICT` clause or nothing).
    Insert {
        table: &'static str,
        columns: &'static [&'static str],
        rows: Vec<Vec<Arg>>,
        tail: &'static str,
    },
    /// `DELETE FROM table` the rows whose `key` is one of `keys`.
    Delete {
        table: &'static str,
        key: &'static str,
        keys: Vec<String>,
    },
    /// Whole rows of `table` in `columns`, inserted or, where a row with
    /// the same `key` is stored, written over it. PostgreSQL writes every
    /// column (an update that leaves the indexed columns' values as they
    /// were is a heap-only tuple update: no index is touched); SQLite
    /// updates only the columns `changed` names, since it rewrites the
    /// entries of every index on a column an UPDATE sets, changed or not.
    Upsert {
        table: &'static str,
        key: &'static str,
        columns: &'static [&'static str],
        rows: Vec<UpsertRow>,
    },
}

/// A row of `Write::Upsert`.
pub struct UpsertRow {
    /// In the upsert's columns.
    pub values: Vec<Arg>,
    /// Per column, whether it differs from the stored row; `None` for a row
    /// not stored yet.
    pub changed: Option<Vec<bool>>,
}

impl Write {
    fn is_empty(&self) -> bool {
        match self {
            Write::Insert { rows, .. } => rows.is_empty(),
            Write::Delete { keys, .. } => keys.is_empty(),
            Write::Upsert { rows, .. } => rows.is_empty(),
        }
    }
}

/// ` ON CONFLICT (key) DO UPDATE SET` every other column to the new row's.
fn overwrite(key: &str, columns: &[&str]) -> String {
    let set: Vec<String> = columns
        .iter()
        .filter(|column| **column != key)
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    format!(" ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", "))
}

/// The values of one column of many rows, as PostgreSQL binds an array.
enum ArgColumn {
    Text(Vec<Option<String>>),
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl ArgColumn {
    fn sql_type(&self) -> &'static str {
        match self {
            ArgColumn::Text(_) => "text[]",
            ArgColumn::Bool(_) => "boolean[]",
            ArgColumn::Int(_) => "bigint[]",
            ArgColumn::Time(_) => "timestamptz[]",
        }
    }
}

/// `INSERT INTO table (columns) SELECT * FROM UNNEST(...)` and `tail`, each
/// column of `rows` an array parameter numbered on from those in `arrays`,
/// onto which they are pushed (PostgreSQL).
fn unnested_insert(
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Arg>>,
    tail: &str,
    arrays: &mut Vec<ArgColumn>,
) -> Result<String, sqlx::Error> {
    let values = by_column(rows, columns.len())?;
    let unnested: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(index, column)| format!("${}::{}", arrays.len() + index + 1, column.sql_type()))
        .collect();
    arrays.extend(values);
    Ok(format!(
        "INSERT INTO {table} ({}) SELECT * FROM UNNEST({}){tail}",
        columns.join(", "),
        unnested.join(", ")
    ))
}

/// `sql` with `arrays` bound in order (PostgreSQL).
fn with_arrays(
    sql: &str,
    arrays: Vec<ArgColumn>,
) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(sql);
    for column in arrays {
        query = match column {
            ArgColumn::Text(values) => query.bind(values),
            ArgColumn::Bool(values) => query.bind(values),
            ArgColumn::Int(values) => query.bind(values),
            ArgColumn::Time(values) => query.bind(values),
        };
    }
    query
}

/// `rows` turned into their columns, each of the type of its first row's
/// value; a row of another length or type is refused, never written as
/// something else.
fn by_column(rows: Vec<Vec<Arg>>, width: usize) -> Result<Vec<ArgColumn>, sqlx::Error> {
    let count = rows.len();
    let mut columns: Vec<ArgColumn> = rows
        .first()
        .map(|first| {
            first
                .iter()
                .map(|value| match value {
                    Arg::Text(_) => ArgColumn::Text(Vec::with_capacity(count)),
                    Arg::Bool(_) => ArgColumn::Bool(Vec::with_capacity(count)),
                    Arg::Int(_) => ArgColumn::Int(Vec::with_capacity(count)),
                    Arg::Time(_) => ArgColumn::Time(Vec::with_capacity(count)),
                })
                .collect()
        })
        .unwrap_or_default();
    let misshapen = || sqlx::Error::Encode("rows of different shapes in one insert".into());
    for row in rows {
        if row.len() != width || columns.len() != width {
            return Err(misshapen());
        }
        for (column, value) in columns.iter_mut().zip(row) {
            match (column, value) {
                (ArgColumn::Text(values), Arg::Text(value)) => values.push(value),
                (ArgColumn::Bool(values), Arg::Bool(value)) => values.push(value),
                (ArgColumn::Int(values), Arg::Int(value)) => values.push(value),
                (ArgColumn::Time(values), Arg::Time(value)) => values.push(value),
                _ => return Err(misshapen()),
            }
        }
    }
    Ok(columns)
}

/// A feed row's columns, read without copies.
pub struct FeedColumns<'r> {
    pub at: EventPosition,
    pub aggregate_id: &'r str,
    pub sequence: i64,
    pub event_type: &'r str,
    pub event_version: &'r str,
    pub payload: &'r str,
    pub metadata: &'r str,
    pub recorded_at: DateTime<Utc>,
}

impl Row {
    /// The columns of a row of the feed queries.
    pub fn feed_columns(&self) -> Result<FeedColumns<'_>, sqlx::Error> {
        Ok(FeedColumns {
            at: EventPosition {
                transaction_id: self.get("transaction_id")?,
                position: self.get("position")?,
            },
            aggregate_id: self.text("aggregate_id")?,
            sequence: self.get("sequence")?,
            event_type: self.text("event_type")?,
            event_version: self.text("event_version")?,
            payload: self.json_text("payload")?,
            metadata: self.json_text("metadata")?,
            recorded_at: self.get("recorded_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_fields_name_nested_keys_on_both_backends() {
        let path = ["SessionStarted", "session_id"];
        assert_eq!(
            Dialect::Sqlite.json_field("payload", &path),
            "json_extract(payload, '$.SessionStarted.session_id')"
        );
        assert_eq!(
            Dialect::Postgres.json_field("payload", &path),
            "payload -> 'SessionStarted' ->> 'session_id'"
        );
    }

    #[tokio::test]
    async fn loaded_events_take_the_next_positions_and_columns_come_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let db = crate::connect(&url, 2).await.unwrap();
        crate::migrate(&db).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        assert_eq!(tx.next_event_position().await.unwrap(), 1);
        let columns = crate::EVENT_COLUMNS;
        let rows = (1..=3_i64)
            .map(|sequence| {
                crate::event_row("someone", sequence, "Happened", "{}".into(), "{}".into())
            })
            .collect();
        tx.load("events", &columns, rows, false).await.unwrap();
        assert_eq!(tx.next_event_position().await.unwrap(), 4);
        tx.commit().await.unwrap();
        let listed = db.columns("events").await.unwrap();
        assert_eq!(listed[..columns.len()], columns);
        assert_eq!(listed[columns.len()..], ["position", "recorded_at"]);
        db.close().await;
    }
}
