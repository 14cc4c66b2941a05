-- The user search (projections/src/queries.rs) as index range scans. It
-- compares usernames and addresses by code point ("C"), whatever collation
-- the database was created with: a prefix is then one range of each index
-- (a LIKE prefix can use an index only under C, and not at all once a
-- prepared statement's plan is generic), and pages come in the same order
-- as on SQLite. The filtered columns ride along, so that the usernames of a
-- page come from these indexes alone and only the page's rows are read.
CREATE INDEX user_directory_username_code_points ON user_directory (username COLLATE "C")
    INCLUDE (two_factor_status, role, enforced);
CREATE INDEX user_directory_email_key_code_points ON user_directory (email_key COLLATE "C")
    INCLUDE (username, two_factor_status, role, enforced);

-- A filter without a prefix walks its own index in username order from the
-- cursor, instead of every user until a page of matches is found.
CREATE INDEX user_directory_two_factor_status ON user_directory (two_factor_status, username COLLATE "C");
CREATE INDEX user_directory_role ON user_directory (role, username COLLATE "C");
CREATE INDEX user_directory_enforced ON user_directory (enforced, username COLLATE "C");
