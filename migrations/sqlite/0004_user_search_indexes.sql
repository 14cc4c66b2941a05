-- The user search (projections/src/queries.rs) as index range scans. A
-- prefix is a range in SQLite's default (code point) order, which the
-- username and email_key indexes already serve; a filter without a prefix
-- walks its own index in username order from the cursor, instead of every
-- user until a page of matches is found.
CREATE INDEX user_directory_two_factor_status ON user_directory (two_factor_status, username);
CREATE INDEX user_directory_role ON user_directory (role, username);
CREATE INDEX user_directory_enforced ON user_directory (enforced, username);
