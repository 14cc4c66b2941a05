//! twofold's store: connections and migrations, the event store (append,
//! load, snapshots, the users kept in memory, the command executor), the
//! global order of the events, and the sealed secrets. The one place where
//! SQLite and PostgreSQL differ.

mod access;
mod connect;
mod db;
mod events;
pub mod feed;
mod passkeys;
pub mod sql;
mod vault;

pub use access::{
    listed, Column, Dialect, FeedColumns, Row, UpsertRow, Write, WriteTx, ROWS_PER_STATEMENT,
};
pub use connect::{
    backup_sqlite, connect, connect_existing, last_position, migrate, ping, sqlite_file,
};
pub(crate) use db::on_pool;
pub use db::Db;
pub use events::{
    event_row, is_unavailable, Committed, EventMetadata, EventStore, Loaded, StoreError,
    EVENT_COLUMNS,
};
pub use feed::EventPosition;
pub use passkeys::{PasskeyIndex, PasskeySignIn};
pub use vault::SecretVault;
