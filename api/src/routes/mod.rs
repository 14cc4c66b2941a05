pub mod login;
pub mod me;
pub mod ops;
pub mod users;
