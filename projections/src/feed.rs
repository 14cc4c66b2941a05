//! The global order of the events, as the store keeps it.

pub use twofold_store::feed::*;
