pub mod audit;
pub mod checkpoints;
pub mod history;
pub mod login;
pub mod me;
pub mod ops;
pub mod reports;
pub mod users;
