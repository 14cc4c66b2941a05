pub mod audit;
pub mod login;
pub mod me;
pub mod ops;
pub mod passkeys;
pub mod reports;
pub mod users;
