//! End-to-end tests: real HTTP against `spawn_app`, each store-touching test
//! on SQLite and on PostgreSQL. One test binary keeps link time low.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod administration;
mod audit_integrity;
mod authorization;
mod browser;
mod checkpoints;
mod credentials;
mod email;
mod faults;
mod foundation;
mod hardening;
mod history;
mod hygiene;
mod lifecycle;
mod malformed;
mod openapi;
mod passkeys;
mod processes;
mod read_models;
mod two_factor;
