-- Changes to stored rows that need the service's own code (its canonical
-- JSON writer), not SQL: each runs once, right after these migrations
-- (`twofold migrate`, and at start), and is recorded here in the same
-- transaction (projections/src/data_migrations.rs).
CREATE TABLE data_migrations (
    name         TEXT    PRIMARY KEY,
    rows_changed INTEGER NOT NULL,
    applied_at   TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
