-- Changes to stored rows that need the service's own code (its canonical
-- JSON writer), not SQL: each runs once, right after these migrations
-- (`twofold migrate`, and at start), and is recorded here in the same
-- transaction (projections/src/data_migrations.rs).
CREATE TABLE data_migrations (
    name         text        PRIMARY KEY,
    rows_changed bigint      NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
