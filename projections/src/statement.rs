use chrono::{DateTime, Utc};

/// A read-model write as plain data, so that one projection serves both
/// backends and can be tested without a database.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Statement {
    pub sql: &'static str,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    Text(Option<String>),
    Bool(bool),
    Int(i64),
    Time(Option<DateTime<Utc>>),
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(Some(value))
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        Arg::Text(value)
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(Some(value.to_string()))
    }
}

impl From<bool> for Arg {
    fn from(value: bool) -> Self {
        Arg::Bool(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

impl From<DateTime<Utc>> for Arg {
    fn from(value: DateTime<Utc>) -> Self {
        Arg::Time(Some(value))
    }
}

impl From<Option<DateTime<Utc>>> for Arg {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        Arg::Time(value)
    }
}

/// Binds arguments in order to a query of either backend.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                $crate::statement::Arg::Text(value) => query.bind(value),
                $crate::statement::Arg::Bool(value) => query.bind(value),
                $crate::statement::Arg::Int(value) => query.bind(value),
                $crate::statement::Arg::Time(value) => query.bind(value),
            };
        }
        query
    }};
}
pub(crate) use bind_all;

/// Executes statements on a transaction of either backend.
macro_rules! execute_all {
    ($tx:expr, $statements:expr) => {{
        for statement in $statements {
            $crate::statement::bind_all!(sqlx::query(statement.sql), statement.args)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(crate) use execute_all;

/// A multi-row `INSERT` of `rows` (each a `Vec<Arg>` in the order of
/// `columns`) into `table`, followed by `tail` (an `ON CONFLICT` clause or
/// nothing), for either backend: one round trip for the lot.
macro_rules! insert_rows {
    ($db:ty, $table:expr, $columns:expr, $rows:expr, $tail:expr) => {{
        let mut insert = sqlx::QueryBuilder::<$db>::new(format!(
            "INSERT INTO {} ({}) ",
            $table,
            $columns.join(", ")
        ));
        insert.push_values($rows, |mut values, row| {
            for cell in row {
                match cell {
                    $crate::statement::Arg::Text(value) => values.push_bind(value),
                    $crate::statement::Arg::Bool(value) => values.push_bind(value),
                    $crate::statement::Arg::Int(value) => values.push_bind(value),
                    $crate::statement::Arg::Time(value) => values.push_bind(value),
                };
            }
        });
        insert.push($tail);
        insert
    }};
}
pub(crate) use insert_rows;

/// `statements` as one text of PostgreSQL statements with their arguments
/// written in as literals, so that a round's writes travel in one
/// simple-query message instead of one round trip each (sqlx does not
/// pipeline). Text is single-quoted with its quotes doubled, which is the
/// whole escape once `standard_conforming_strings` is on: the text starts by
/// setting it for the transaction, so a server configured otherwise cannot
/// make a backslash an escape character. Times are cut to microseconds as
/// sqlx cuts a bound timestamp, so both paths store the same value.
pub(crate) fn postgres_script(statements: &[Statement]) -> String {
    let mut script = String::from("SET LOCAL standard_conforming_strings = on;\n");
    for statement in statements {
        write_with_literals(statement, &mut script);
        script.push_str(";\n");
    }
    script
}

fn write_with_literals(statement: &Statement, out: &mut String) {
    let sql = statement.sql;
    let mut rest = sql;
    while let Some(at) = rest.find(['$', '\'']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(quoted) = tail.strip_prefix('\'') {
            // A literal of the statement itself: copied as it is, `$` and all.
            let end = quoted.find('\'').map_or(tail.len(), |end| end + 2);
            out.push_str(&tail[..end]);
            rest = &tail[end..];
            continue;
        }
        let after = &tail[1..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        match after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
        {
            Some(index) => {
                debug_assert!(index < statement.args.len(), "{sql} lacks ${}", index + 1);
                write_literal(statement.args.get(index), out);
                rest = &after[digits..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn write_literal(arg: Option<&Arg>, out: &mut String) {
    use std::fmt::Write as _;
    match arg {
        None | Some(Arg::Text(None) | Arg::Time(None)) => out.push_str("NULL"),
        Some(Arg::Text(Some(text))) => {
            out.push('\'');
            out.push_str(&text.replace('\'', "''"));
            out.push('\'');
        }
        Some(Arg::Bool(value)) => out.push_str(if *value { "true" } else { "false" }),
        Some(Arg::Int(value)) => {
            let _ = write!(out, "{value}");
        }
        Some(Arg::Time(Some(at))) => {
            let _ = write!(
                out,
                "'{}'::timestamptz",
                at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn arguments_become_literals_with_quotes_doubled_and_times_cut_to_microseconds() {
        let at = Utc
            .timestamp_opt(1_700_000_000, 123_456_789)
            .single()
            .unwrap_or_default();
        let statement = Statement {
            sql: "UPDATE t SET a = $1, b = $2, c = $10, d = 'x$1', e = $3, f = $4 WHERE g = $11",
            args: vec![
                "o'brien\\'; DROP TABLE t; --$2".into(),
                Arg::Time(Some(at)),
                true.into(),
                Arg::Text(None),
                7.into(),
                7.into(),
                7.into(),
                7.into(),
                7.into(),
                (-42_i64).into(),
                "€".into(),
            ],
        };
        assert_eq!(
            postgres_script(&[statement]),
            "SET LOCAL standard_conforming_strings = on;\n\
             UPDATE t SET a = 'o''brien\\''; DROP TABLE t; --$2', \
             b = '2023-11-14T22:13:20.123456Z'::timestamptz, c = -42, d = 'x$1', e = true, \
             f = NULL WHERE g = '€';\n"
        );
    }
}
