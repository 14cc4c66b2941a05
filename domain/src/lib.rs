//! twofold's domain: the user aggregate, its commands, events and policies.
//! Pure: no I/O; time, randomness and decrypted secrets come in with commands.

pub mod checkpoint;
pub mod command;
pub mod error;
pub mod event;
pub mod passkey;
pub mod policy;
pub mod sealed;
pub mod totp;
pub mod user;
pub mod values;

pub use command::{NewDevice, NewSession, PasswordCheck, TwoFactorOffProof, UserCommand};
pub use error::UserError;
pub use event::{ImpersonationRevocation, UserEvent, EVENT_VERSION};
pub use policy::TwoFactorPolicy;
pub use user::User;
pub use values::{
    AuthenticatedBy, Email, PasswordHash, Role, SecondFactorMethod, TokenHash, TwoFactorStatus,
    UnknownName, Username,
};
