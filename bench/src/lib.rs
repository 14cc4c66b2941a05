//! Load driver and benchmarks for twofold: a seeder that bulk-loads users
//! and their histories, HTTP load scenarios, the machine's own baselines,
//! and the results table. The binary is `twofold-load`; see
//! docs/benchmarks.md.

pub mod baseline;
pub mod http;
pub mod model;
pub mod report;
pub mod scenarios;
pub mod seed;
pub mod stats;
