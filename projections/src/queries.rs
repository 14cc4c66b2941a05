//! Reads of the read models: the only SQL the API runs against them.

use chrono::{DateTime, Utc};
use twofold_domain::{AuthenticatedBy, Role, SecondFactorMethod, TwoFactorStatus};
use twofold_store::sql::Arg;
use twofold_store::{Dialect, Row};
use uuid::Uuid;

use crate::db::{ProjectionError, ReadModels};
use crate::report::TwoFactorCount;

/// A live session with what authorisation needs about its user.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub authenticated_by: AuthenticatedBy,
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
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// The factors the user has enabled: `totp`, `passkey`.
    pub two_factor_methods: Vec<SecondFactorMethod>,
}

#[derive(Clone, Debug, Default)]
pub struct DirectoryFilter {
    /// Prefix of the username or the email address, any case.
    pub query: Option<String>,
    pub two_factor_status: Option<TwoFactorStatus>,
    /// Only users whose 2FA is not enabled (pending or disabled).
    pub without_two_factor: bool,
    pub enforced: Option<bool>,
    pub role: Option<Role>,
    /// Keyset cursor: the last username of the previous page.
    pub after_username: Option<String>,
    pub limit: u32,
    /// The directory as it stood at this instant (`user_versions`), with
    /// `last_login_at` unknown; `None`: as it is.
    pub as_of: Option<DateTime<Utc>>,
}

/// Each user's row as it stood at the instant bound at `$n`: their last
/// version from before it (a user created later has none). The last
/// sign-in is not versioned: NULL.
pub(crate) fn directory_as_of(dialect: Dialect, n: usize) -> String {
    format!(
        "SELECT user_id, username, email, email_key, role, two_factor_status, enforced,
                enabled_at, {} AS last_login_at, registered_at, totp_status, passkeys
           FROM user_versions AS version
          WHERE valid_from <= ${n}
            AND NOT EXISTS (SELECT 1 FROM user_versions AS later
                             WHERE later.user_id = version.user_id
                               AND later.valid_from <= ${n}
                               AND later.position > version.position)",
        dialect.null_time()
    )
}

const DIRECTORY_COLUMNS: &str = "user_id, username, email, role, two_factor_status, enforced, \
     enabled_at, last_login_at, totp_status, passkeys";

/// The factors a directory row says are enabled.
fn enabled_methods(row: &Row) -> Result<Vec<SecondFactorMethod>, sqlx::Error> {
    let mut methods = Vec::new();
    if row.parsed::<TwoFactorStatus>("totp_status")? == TwoFactorStatus::Enabled {
        methods.push(SecondFactorMethod::Totp);
    }
    if row.get::<i64>("passkeys")? > 0 {
        methods.push(SecondFactorMethod::Passkey);
    }
    Ok(methods)
}

fn directory_entry(row: &Row) -> Result<DirectoryEntry, sqlx::Error> {
    Ok(DirectoryEntry {
        user_id: row.uuid("user_id")?,
        username: row.get("username")?,
        email: row.get("email")?,
        role: row.parsed("role")?,
        two_factor_status: row.parsed("two_factor_status")?,
        enforced: row.get("enforced")?,
        enabled_at: row.get("enabled_at")?,
        last_login_at: row.get("last_login_at")?,
        two_factor_methods: enabled_methods(row)?,
    })
}

/// The least string above every string that starts with `prefix` (in code
/// point order), if there is one.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl DirectoryFilter {
    /// Only the filters given become conditions, so that a planner can match
    /// each search to an index (`$n IS NULL OR ...` matches none). A prefix is
    /// two ranges, of usernames and of addresses, compared by code point: the
    /// characters typed are never patterns, so `%` and `_` mean themselves.
    ///
    /// With a prefix, the page's usernames come first, from the indexes
    /// alone (PostgreSQL's cover the filtered columns): one page of the
    /// username range in order, merged with the users whose address alone is
    /// in its range; only then are the page's rows read. Read as one `OR`,
    /// every match would cost a table page, and PostgreSQL would walk the
    /// whole username index in order whenever a prefix matches many users
    /// (half the table for `m`). Without a prefix, a 2FA status, role or
    /// `enforced` index (each ordered by username) or the username index
    /// itself is read from the cursor, one page long.
    ///
    /// Text compares by code point (`Dialect::code_point_order`), the order
    /// in which the values that start with a prefix form one range; pages
    /// are in that order too, the same on both backends. SQLite plans
    /// without statistics and would rather walk every user of a 2FA status
    /// than the few that match a prefix: with a prefix, the other terms are
    /// kept out of its index selection (`Dialect::unindexed`).
    fn sql(&self, dialect: Dialect) -> (String, Vec<Arg>) {
        let code_point_order = dialect.code_point_order();
        let unindexed = dialect.unindexed();
        let mut args: Vec<Arg> = Vec::new();
        let mut param = |arg: Arg| {
            args.push(arg);
            format!("${}", args.len())
        };
        let source = match self.as_of {
            Some(at) => {
                param(at.into());
                format!("({}) AS user_directory", directory_as_of(dialect, 1))
            }
            None => "user_directory".to_string(),
        };
        let prefix_range = self.query.as_ref().map(|query| {
            let prefix = query.to_lowercase();
            let upper = prefix_successor(&prefix);
            let from = param(prefix.into());
            let below = upper.map(|upper| param(upper.into()));
            move |column: &str| {
                let column = format!("{column}{code_point_order}");
                match &below {
                    Some(below) => format!("{column} >= {from} AND {column} < {below}"),
                    None => format!("{column} >= {from}"),
                }
            }
        });
        // With a prefix, the prefix's ranges lead.
        let filter_only = if prefix_range.is_some() {
            unindexed
        } else {
            ""
        };
        let mut conditions = Vec::new();
        let equal_to: [(&str, Option<Arg>); 3] = [
            (
                "two_factor_status",
                self.two_factor_status.map(|status| status.as_str().into()),
            ),
            ("enforced", self.enforced.map(Arg::from)),
            ("role", self.role.map(|role| role.as_str().into())),
        ];
        for (column, value) in equal_to {
            if let Some(value) = value {
                conditions.push(format!("{filter_only}{column} = {}", param(value)));
            }
        }
        if self.without_two_factor {
            conditions.push(format!(
                "{filter_only}two_factor_status <> {}",
                param(TwoFactorStatus::Enabled.as_str().into())
            ));
        }
        if let Some(after) = &self.after_username {
            conditions.push(format!(
                "{filter_only}username{code_point_order} > {}",
                param(after.as_str().into())
            ));
        }
        let limit = param((i64::from(self.limit) + 1).into());
        let order = format!("ORDER BY username{code_point_order}");
        let select = |columns: &str, range: Option<String>| {
            let terms: Vec<String> = range.into_iter().chain(conditions.clone()).collect();
            let filter = if terms.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", terms.join(" AND "))
            };
            format!("SELECT {columns} FROM {source}{filter}")
        };
        let sql = match prefix_range {
            None => format!("{} {order} LIMIT {limit}", select(DIRECTORY_COLUMNS, None)),
            Some(starts_with) => {
                let by_username = select("username", Some(starts_with("username")));
                // Users whose username is in the range are on the first
                // branch's page or sort after it: the branches never overlap.
                let by_address_only = select(
                    "username",
                    Some(format!(
                        "{} AND NOT ({})",
                        starts_with("email_key"),
                        starts_with("username")
                    )),
                );
                format!(
                    "SELECT {DIRECTORY_COLUMNS} FROM {source}
                      WHERE username IN (
                          SELECT username FROM (
                              SELECT username FROM ({by_username} {order} LIMIT {limit}) AS page
                              UNION ALL
                              {by_address_only}
                          ) AS matches
                          {order} LIMIT {limit})
                      {order}"
                )
            }
        };
        (sql, args)
    }
}

impl ReadModels {
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
        let Some(row) = self.0.fetch_optional(SQL, vec![token_hash.into()]).await? else {
            return Ok(None);
        };
        Ok(Some(SessionRecord {
            session_id: row.uuid("session_id")?,
            user_id: row.uuid("user_id")?,
            username: row.get("username")?,
            email: row.get("email")?,
            role: row.parsed("role")?,
            two_factor_status: row.parsed("two_factor_status")?,
            enforced: row.get("enforced")?,
            enabled_at: row.get("enabled_at")?,
            authenticated_by: row.parsed("authenticated_by")?,
            impersonator_id: row.optional_uuid("impersonator_id")?,
            impersonator_username: row.get("impersonator_username")?,
            started_at: row.get("started_at")?,
            expires_at: row.get("expires_at")?,
            last_seen_at: row.get("last_seen_at")?,
        }))
    }

    /// Idle-timeout bookkeeping; the caller throttles how often it runs.
    pub async fn touch_session(
        &self,
        session_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        self.0
            .execute(
                "UPDATE sessions SET last_seen_at = $2 WHERE session_id = $1",
                vec![session_id.to_string().into(), at.into()],
            )
            .await?;
        Ok(())
    }

    pub async fn directory_entry(
        &self,
        user_id: Uuid,
    ) -> Result<Option<DirectoryEntry>, ProjectionError> {
        let sql = format!("SELECT {DIRECTORY_COLUMNS} FROM user_directory WHERE user_id = $1");
        match self
            .0
            .fetch_optional(&sql, vec![user_id.to_string().into()])
            .await?
        {
            Some(row) => Ok(Some(directory_entry(&row)?)),
            None => Ok(None),
        }
    }

    /// One user as they stood at `at`; `None` when they did not exist yet.
    pub async fn directory_entry_as_of(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<DirectoryEntry>, ProjectionError> {
        let sql = format!(
            "SELECT user_id, username, email, role, two_factor_status, enforced, enabled_at,
                    {} AS last_login_at, totp_status, passkeys
               FROM user_versions WHERE user_id = $1 AND valid_from <= $2
              ORDER BY position DESC LIMIT 1",
            self.0.dialect().null_time()
        );
        match self
            .0
            .fetch_optional(&sql, vec![user_id.to_string().into(), at.into()])
            .await?
        {
            Some(row) => Ok(Some(directory_entry(&row)?)),
            None => Ok(None),
        }
    }

    /// The report's counters as they stood at `at`, counted from each
    /// user's version then (a pass over the versions, not O(1)).
    pub async fn two_factor_counts_as_of(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Vec<TwoFactorCount>, ProjectionError> {
        let sql = format!(
            "SELECT role, two_factor_status, enforced, count(*) AS users
               FROM ({}) AS user_directory
              GROUP BY role, two_factor_status, enforced
              ORDER BY role, two_factor_status, enforced",
            directory_as_of(self.0.dialect(), 1)
        );
        let rows = self.0.fetch(&sql, vec![at.into()]).await?;
        rows.iter().map(TwoFactorCount::from_row).collect()
    }

    /// One page of the user search, ordered by username; returns the page and
    /// whether more rows follow.
    pub async fn search_directory(
        &self,
        filter: &DirectoryFilter,
    ) -> Result<(Vec<DirectoryEntry>, bool), ProjectionError> {
        let (sql, args) = filter.sql(self.0.dialect());
        let rows = self.0.fetch(&sql, args).await?;
        let more = rows.len() > filter.limit as usize;
        let entries = rows
            .iter()
            .take(filter.limit as usize)
            .map(directory_entry)
            .collect::<Result<_, _>>()?;
        Ok((entries, more))
    }

    pub async fn challenge_owner(
        &self,
        challenge_id: Uuid,
    ) -> Result<Option<Uuid>, ProjectionError> {
        let row = self
            .0
            .fetch_optional(
                "SELECT user_id FROM challenges WHERE challenge_id = $1",
                vec![challenge_id.to_string().into()],
            )
            .await?;
        Ok(row.map(|row| row.uuid("user_id")).transpose()?)
    }

    pub async fn users_with_role(&self, role: Role) -> Result<i64, ProjectionError> {
        self.count(
            "SELECT count(*) AS users FROM user_directory WHERE role = $1",
            role.as_str(),
        )
        .await
    }

    /// How many users hold this address (compared without case).
    pub async fn users_with_email(&self, email_key: &str) -> Result<i64, ProjectionError> {
        self.count(
            "SELECT count(*) AS users FROM user_directory WHERE email_key = $1",
            email_key,
        )
        .await
    }

    async fn count(&self, sql: &str, value: &str) -> Result<i64, ProjectionError> {
        let rows = self.0.fetch(sql, vec![value.into()]).await?;
        Ok(rows
            .first()
            .map(|row| row.get("users"))
            .transpose()?
            .unwrap_or(0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::db::Db;
    use proptest::prelude::*;

    proptest! {
        /// Rust compares strings by code point, as the search's ranges do.
        #[test]
        fn a_prefix_range_holds_exactly_the_strings_that_start_with_it(
            prefix in "[a\\x{7f}\\x{d7ff}\\x{e000}\\x{10ffff}%_]{0,3}",
            rest in "[a\\x{7f}\\x{d7ff}\\x{e000}\\x{10ffff}%_]{0,3}",
            other in "[a\\x{7f}\\x{d7ff}\\x{e000}\\x{10ffff}%_]{0,6}",
        ) {
            let upper = prefix_successor(&prefix);
            let in_range = |text: &str| {
                text >= prefix.as_str() && upper.as_deref().is_none_or(|upper| text < upper)
            };
            let extended = format!("{prefix}{rest}");
            prop_assert!(in_range(&extended));
            prop_assert_eq!(in_range(&other), other.starts_with(&prefix));
        }
    }

    #[test]
    fn the_successor_skips_surrogates_and_carries_past_the_last_code_point() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_successor("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10ffff}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    async fn sqlite_directory() -> Db {
        Db::Sqlite(crate::memory_store().await)
    }

    /// Every combination of the filters, on the first page.
    fn every_filter() -> Vec<DirectoryFilter> {
        let mut filters = Vec::new();
        for query in [
            None,
            Some("a"),
            Some("A_"),
            Some("a_"),
            Some("%"),
            Some("b."),
            Some("é"),
        ] {
            for (two_factor_status, without_two_factor) in [
                (None, false),
                (None, true),
                (Some(TwoFactorStatus::Enabled), false),
                (Some(TwoFactorStatus::Pending), false),
                (Some(TwoFactorStatus::Disabled), false),
            ] {
                for enforced in [None, Some(true), Some(false)] {
                    for role in [None, Some(Role::User), Some(Role::Admin)] {
                        filters.push(DirectoryFilter {
                            query: query.map(str::to_string),
                            two_factor_status,
                            without_two_factor,
                            enforced,
                            role,
                            after_username: None,
                            limit: 2,
                            as_of: None,
                        });
                    }
                }
            }
        }
        filters
    }

    /// SQLite has no statistics to weigh the terms with, so the plan must not
    /// need them: a prefix reads the username and address ranges of their
    /// indexes, then the page's rows by username; anything else reads one
    /// index in username order from the cursor, and stops after a page.
    #[tokio::test]
    async fn every_sqlite_search_reads_index_ranges() {
        let db = sqlite_directory().await;
        for mut filter in every_filter() {
            for after in [None, Some("m")] {
                filter.after_username = after.map(str::to_string);
                let (sql, args) = filter.sql(db.dialect());
                let explain = format!("EXPLAIN QUERY PLAN {sql}");
                let plan: Vec<String> = db
                    .fetch(&explain, args)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get::<String>("detail").unwrap())
                    .collect();
                let reads: Vec<&String> = plan
                    .iter()
                    .filter(|step| step.contains("user_directory"))
                    .collect();
                let range_reads = reads
                    .iter()
                    .filter(|step| step.starts_with("SEARCH user_directory USING"))
                    .count();
                let sorted = plan.iter().any(|step| step.contains("TEMP B-TREE"));
                let filtered = filter.two_factor_status.is_some()
                    || filter.enforced.is_some()
                    || filter.role.is_some()
                    || filter.after_username.is_some();
                if filter.query.is_some() {
                    // The two ranges, then the page's rows by username.
                    assert_eq!((reads.len(), range_reads), (3, 3), "{filter:?}: {plan:?}");
                    for range in [
                        "(username>? AND username<?)",
                        "(email_key>? AND email_key<?)",
                    ] {
                        assert!(
                            reads.iter().any(|step| step.ends_with(range)),
                            "{range} in {filter:?}: {plan:?}"
                        );
                    }
                } else if filtered {
                    assert_eq!((reads.len(), range_reads), (1, 1), "{filter:?}: {plan:?}");
                    assert!(!sorted, "{filter:?}: {plan:?}");
                } else {
                    assert_eq!(
                        plan,
                        ["SCAN user_directory USING INDEX sqlite_autoindex_user_directory_2"],
                        "the username index, in order"
                    );
                }
            }
        }
    }

    struct User {
        username: String,
        email: Option<String>,
        role: Role,
        two_factor_status: TwoFactorStatus,
        enforced: bool,
    }

    impl User {
        fn matches(&self, filter: &DirectoryFilter) -> bool {
            let starts_with = |prefix: &str| {
                let prefix = prefix.to_lowercase();
                self.username.starts_with(&prefix)
                    || self
                        .email
                        .as_ref()
                        .is_some_and(|email| email.to_lowercase().starts_with(&prefix))
            };
            filter.query.as_deref().is_none_or(starts_with)
                && filter
                    .two_factor_status
                    .is_none_or(|status| status == self.two_factor_status)
                && !(filter.without_two_factor
                    && self.two_factor_status == TwoFactorStatus::Enabled)
                && filter
                    .enforced
                    .is_none_or(|enforced| enforced == self.enforced)
                && filter.role.is_none_or(|role| role == self.role)
        }
    }

    /// Short names over a few characters, so that prefixes share rows, with
    /// addresses that start elsewhere and hold `%`, backslashes and capitals.
    fn directory() -> Vec<User> {
        let alphabet = ["a", "b", "_", "."];
        let mut names: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        for first in alphabet {
            for second in alphabet {
                names.push(format!("{first}{second}"));
                names.push(format!("{first}{second}a"));
            }
        }
        names
            .into_iter()
            .enumerate()
            .map(|(index, username)| User {
                email: match index % 4 {
                    0 => None,
                    1 => Some(format!("{username}@example.com")),
                    2 => Some(format!("É{}\\%@Example.COM", username.to_uppercase())),
                    _ => Some(format!("%{index}@example.com")),
                },
                username,
                role: [Role::User, Role::Admin, Role::Auditor][index % 3],
                two_factor_status: [
                    TwoFactorStatus::Disabled,
                    TwoFactorStatus::Enabled,
                    TwoFactorStatus::Pending,
                ][index / 2 % 3],
                enforced: index % 5 == 0,
            })
            .collect()
    }

    /// A new, empty PostgreSQL database on the server the end-to-end tests
    /// use (`scripts/test` starts it and drops these databases).
    async fn postgres_directory() -> Db {
        let server = std::env::var("TWOFOLD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .expect("PostgreSQL must listen on 127.0.0.1:5432 (scripts/test starts it)");
        let name = format!("twofold_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let pool = sqlx::PgPool::connect(&format!("{server}/{name}"))
            .await
            .unwrap();
        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .unwrap();
        Db::Postgres(pool)
    }

    /// A role, status or sign-in method this build does not know (written
    /// by a newer one, or by hand) fails the read of its row with the
    /// column's name; it never panics and is never read as another value.
    #[tokio::test]
    async fn an_unknown_stored_name_is_a_decode_error_of_its_column() {
        let db = sqlite_directory().await;
        let Db::Sqlite(pool) = &db else {
            unreachable!()
        };
        let user_id = Uuid::new_v4();
        let other_id = Uuid::new_v4();
        for (id, username, role, status) in [
            (user_id, "mallory", "superuser", "enabled"),
            (other_id, "trent", "user", "half_enabled"),
        ] {
            sqlx::query(
                "INSERT INTO user_directory (user_id, username, role, two_factor_status,
                     enforced, registered_at)
                 VALUES ($1, $2, $3, $4, false, '2024-05-01T09:00:00Z')",
            )
            .bind(id.to_string())
            .bind(username)
            .bind(role)
            .bind(status)
            .execute(pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO sessions (session_id, token_hash, user_id, authenticated_by,
                 started_at, expires_at, last_seen_at)
             VALUES ($1, 'hash', $2, 'carrier_pigeon', '2024-05-01T09:00:00Z',
                     '2024-05-01T10:00:00Z', '2024-05-01T09:00:00Z')",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(other_id.to_string())
        .execute(pool)
        .await
        .unwrap();
        let models = ReadModels::new(db.clone());
        let column = |error: ProjectionError| match error {
            ProjectionError::Database(sqlx::Error::ColumnDecode { index, .. }) => index,
            other => format!("not a decode error: {other:?}"),
        };
        let unknown_role = models.directory_entry(user_id).await.unwrap_err();
        assert_eq!(column(unknown_role), "role");
        let unknown_status = models.directory_entry(other_id).await.unwrap_err();
        assert_eq!(column(unknown_status), "two_factor_status");
        let filter = DirectoryFilter {
            limit: 10,
            ..DirectoryFilter::default()
        };
        let search = models.search_directory(&filter).await.unwrap_err();
        assert_eq!(column(search), "role");
        sqlx::query("UPDATE user_directory SET two_factor_status = 'enabled'")
            .execute(pool)
            .await
            .unwrap();
        let session = models.session_by_token_hash("hash").await.unwrap_err();
        assert_eq!(column(session), "authenticated_by");
    }

    #[tokio::test]
    async fn every_combination_of_filters_pages_through_exactly_its_users_in_order_on_sqlite() {
        pages_through_exactly_the_matching_users_in_order(sqlite_directory().await).await;
    }

    #[tokio::test]
    async fn every_combination_of_filters_pages_through_exactly_its_users_in_order_on_postgres() {
        pages_through_exactly_the_matching_users_in_order(postgres_directory().await).await;
    }

    /// `%` and `_` typed match themselves, capitals match either case, and
    /// every filter combines with the others and with the cursor.
    async fn pages_through_exactly_the_matching_users_in_order(db: Db) {
        let users = directory();
        for user in &users {
            db.execute(
                "INSERT INTO user_directory (user_id, username, email, email_key, role,
                     two_factor_status, enforced, registered_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, '2024-05-01T09:00:00Z')",
                vec![
                    Uuid::new_v4().to_string().into(),
                    user.username.as_str().into(),
                    user.email.clone().into(),
                    user.email.as_ref().map(|email| email.to_lowercase()).into(),
                    user.role.as_str().into(),
                    user.two_factor_status.as_str().into(),
                    user.enforced.into(),
                ],
            )
            .await
            .unwrap();
        }
        for limit in [1, 3, 500] {
            for mut filter in every_filter() {
                filter.limit = limit;
                let mut expected: Vec<&str> = users
                    .iter()
                    .filter(|user| user.matches(&filter))
                    .map(|user| user.username.as_str())
                    .collect();
                expected.sort_unstable();
                let mut seen = Vec::new();
                // Each page holds a user or ends the search: a repeated page
                // shows up in `seen` instead of looping for ever.
                for _ in 0..=users.len() {
                    let (page, more) = ReadModels::new(db.clone())
                        .search_directory(&filter)
                        .await
                        .unwrap();
                    assert!(page.len() <= limit as usize);
                    seen.extend(page.iter().map(|entry| entry.username.clone()));
                    if !more {
                        break;
                    }
                    filter.after_username = page.last().map(|entry| entry.username.clone());
                    assert!(filter.after_username.is_some(), "{filter:?}");
                }
                assert_eq!(seen, expected, "{filter:?}");
            }
        }
    }
}
