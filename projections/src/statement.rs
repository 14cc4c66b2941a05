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
