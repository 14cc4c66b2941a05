//! Small value types shared by commands, events and read models.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

use crate::error::UserError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Auditor,
    Admin,
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::User, Role::Auditor, Role::Admin, Role::SuperAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::SuperAdmin => "super_admin",
        }
    }

    /// The role in words, as pages show it.
    pub fn label(self) -> &'static str {
        match self {
            Role::User => "User",
            Role::Auditor => "Auditor",
            Role::Admin => "Admin",
            Role::SuperAdmin => "Super admin",
        }
    }

    /// Admins and super admins run the back office.
    pub fn is_administrator(self) -> bool {
        matches!(self, Role::Admin | Role::SuperAdmin)
    }

    /// Auditors read reports and the audit trail, as administrators do.
    pub fn can_read_reports(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin | Role::SuperAdmin)
    }

    /// Who may create a user of `role`, or edit a user who has it: an
    /// administrator creates and edits plain users; only a super admin gives
    /// or edits another role.
    pub fn may_manage(self, role: Role) -> bool {
        match self {
            Role::SuperAdmin => true,
            Role::Admin => role == Role::User,
            Role::User | Role::Auditor => false,
        }
    }

    /// Who may change a user's role or 2FA enforcement, or reset their 2FA.
    pub fn may_change_policy(self) -> bool {
        self == Role::SuperAdmin
    }

    /// "Login as": an admin may act as plain users, a super admin also as admins
    /// and auditors; nobody may act as a super admin.
    pub fn may_impersonate(self, target: Role) -> bool {
        match (self, target) {
            (_, Role::SuperAdmin) => false,
            (Role::SuperAdmin, _) => true,
            (Role::Admin, Role::User) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UserError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or(UserError::InvalidRole)
    }
}

/// A username as stored: trimmed and lower-cased, so that "Alice" and "alice"
/// are one account (as Keycloak does).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const MAX_LEN: usize = 64;

    pub fn parse(input: &str) -> Result<Self, UserError> {
        let name = input.trim().to_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
        if name.is_empty() || name.len() > Self::MAX_LEN || !name.chars().all(allowed) {
            return Err(UserError::InvalidUsername);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address in its one canonical form: a bare `local@domain`, the
/// domain lower-cased, no display name, comment or trailing dot. Whether two
/// users share it is decided on `key()`, which ignores case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;
    const MAX_LOCAL_LEN: usize = 64;
    const MAX_LABEL_LEN: usize = 63;

    /// Strict: surrounding spaces are trimmed, anything but an RFC 5321
    /// dot-atom `local@domain` of ASCII letters, digits and the atext marks
    /// is refused (display names, quoted locals, IP literals, comments, a
    /// trailing dot, control characters), so one mailbox has one spelling.
    pub fn parse(input: &str) -> Result<Self, UserError> {
        let email = input.trim();
        let (local, domain) = email.split_once('@').ok_or(UserError::InvalidEmail)?;
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        let dot_atom = |part: &str, allowed: &dyn Fn(char) -> bool, max: usize| {
            !part.is_empty()
                && part.split('.').all(|piece| {
                    !piece.is_empty() && piece.len() <= max && piece.chars().all(allowed)
                })
        };
        let label = |c: char| c.is_ascii_alphanumeric() || c == '-';
        let valid = email.len() <= Self::MAX_LEN
            && local.len() <= Self::MAX_LOCAL_LEN
            && dot_atom(local, &atext, Self::MAX_LOCAL_LEN)
            && dot_atom(domain, &label, Self::MAX_LABEL_LEN)
            && domain
                .split('.')
                .all(|piece| !piece.starts_with('-') && !piece.ends_with('-'));
        if !valid {
            return Err(UserError::InvalidEmail);
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The comparison key for "shared with another user": the canonical
    /// form, lower-cased. Addresses stored before the canonical form was
    /// enforced (`Name <a@b>`, `a@b.`) are read the same way.
    pub fn key(&self) -> String {
        let address = match (self.0.rfind('<'), self.0.rfind('>')) {
            (Some(open), Some(close)) if open < close => &self.0[open + 1..close],
            _ => self.0.as_str(),
        };
        address.trim().trim_end_matches('.').to_lowercase()
    }

    /// `j***@example.com`: enough for the user to recognise the address.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_string(),
        }
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PHC-format password hash (argon2id). Never shown in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// SHA-256 of a high-entropy token or code, hex encoded. Tokens are random
/// (>= 128 bits) so a fast hash is enough; what is stored can't be replayed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(hex::encode(Sha256::digest(token.as_bytes())))
    }

    pub fn from_hex(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorMethod {
    Totp,
    Email,
    RecoveryCode,
    /// A WebAuthn credential's signature (docs/security.md).
    Passkey,
}

impl SecondFactorMethod {
    pub const ALL: [SecondFactorMethod; 4] = [
        SecondFactorMethod::Totp,
        SecondFactorMethod::Email,
        SecondFactorMethod::RecoveryCode,
        SecondFactorMethod::Passkey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecondFactorMethod::Totp => "totp",
            SecondFactorMethod::Email => "email",
            SecondFactorMethod::RecoveryCode => "recovery_code",
            SecondFactorMethod::Passkey => "passkey",
        }
    }
}

impl FromStr for SecondFactorMethod {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownName::find("second factor method", s, Self::ALL, Self::as_str)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwoFactorStatus {
    Disabled,
    Pending,
    Enabled,
}

impl TwoFactorStatus {
    pub const ALL: [TwoFactorStatus; 3] = [
        TwoFactorStatus::Enabled,
        TwoFactorStatus::Pending,
        TwoFactorStatus::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TwoFactorStatus::Disabled => "disabled",
            TwoFactorStatus::Pending => "pending",
            TwoFactorStatus::Enabled => "enabled",
        }
    }

    /// The status in words, as pages show it.
    pub fn label(self) -> &'static str {
        match self {
            TwoFactorStatus::Disabled => "Disabled",
            TwoFactorStatus::Pending => "Pending",
            TwoFactorStatus::Enabled => "Enabled",
        }
    }
}

impl fmt::Display for TwoFactorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TwoFactorStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownName::find("2FA status", s, Self::ALL, Self::as_str)
    }
}

/// A name that none of an enum's values goes by, such as a stored
/// `two_factor_status` this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

impl UnknownName {
    /// The value of `all` whose `name_of` is `name`.
    fn find<T: Copy, const N: usize>(
        kind: &'static str,
        name: &str,
        all: [T; N],
        name_of: fn(T) -> &'static str,
    ) -> Result<T, UnknownName> {
        all.into_iter()
            .find(|value| name_of(*value) == name)
            .ok_or_else(|| UnknownName {
                kind,
                name: name.to_string(),
            })
    }
}

/// Why an email code could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailRefusal {
    /// The user has no email address.
    Missing,
    /// Another user has the same address.
    Shared,
}

/// How a session was authenticated, as recorded in `SessionStarted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticatedBy {
    Password,
    Totp,
    Email,
    RecoveryCode,
    RememberedDevice,
    Impersonation,
    /// A passkey: as the second step, or alone (with user verification).
    Passkey,
}

impl AuthenticatedBy {
    pub const ALL: [AuthenticatedBy; 7] = [
        AuthenticatedBy::Password,
        AuthenticatedBy::Totp,
        AuthenticatedBy::Email,
        AuthenticatedBy::RecoveryCode,
        AuthenticatedBy::RememberedDevice,
        AuthenticatedBy::Impersonation,
        AuthenticatedBy::Passkey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthenticatedBy::Password => "password",
            AuthenticatedBy::Totp => "totp",
            AuthenticatedBy::Email => "email",
            AuthenticatedBy::RecoveryCode => "recovery_code",
            AuthenticatedBy::RememberedDevice => "remembered_device",
            AuthenticatedBy::Impersonation => "impersonation",
            AuthenticatedBy::Passkey => "passkey",
        }
    }
}

impl FromStr for AuthenticatedBy {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownName::find("sign-in method", s, Self::ALL, Self::as_str)
    }
}

impl From<SecondFactorMethod> for AuthenticatedBy {
    fn from(method: SecondFactorMethod) -> Self {
        match method {
            SecondFactorMethod::Totp => AuthenticatedBy::Totp,
            SecondFactorMethod::Email => AuthenticatedBy::Email,
            SecondFactorMethod::RecoveryCode => AuthenticatedBy::RecoveryCode,
            SecondFactorMethod::Passkey => AuthenticatedBy::Passkey,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn usernames_are_case_insensitive_and_restricted() {
        assert_eq!(Username::parse("  Alice ").unwrap().as_str(), "alice");
        assert!(Username::parse("").is_err());
        assert!(Username::parse("a b").is_err());
        assert!(Username::parse("x'; drop table").is_err());
        assert!(Username::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn emails_are_masked_and_compared_without_case() {
        let email = Email::parse(" Jane@Example.com ").unwrap();
        assert_eq!(email.as_str(), "Jane@example.com");
        assert_eq!(email.masked(), "J***@example.com");
        assert_eq!(email.key(), "jane@example.com");
        assert!(Email::parse("no-at-sign").is_err());
        assert!(Email::parse("a@b@c").is_err());
        assert!(Email::parse("a @b").is_err());
    }

    #[test]
    fn an_address_has_one_spelling_and_every_other_is_refused() {
        assert_eq!(
            Email::parse("dave.o'neil+tag@Mail.Example.COM")
                .unwrap()
                .as_str(),
            "dave.o'neil+tag@mail.example.com"
        );
        for refused in [
            "Frank <dave@example.com>",
            "<dave@example.com>",
            "dave@example.com.",
            "dave.@example.com",
            ".dave@example.com",
            "da..ve@example.com",
            "\"dave\"@example.com",
            "dave@[127.0.0.1]",
            "dave@example..com",
            "dave@-example.com",
            "dave@example.com (Dave)",
            "dave@exa_mple.com",
            "dav\u{0}e@example.com",
            "dav\u{7}e@example.com",
            "dåve@example.com",
            "@example.com",
            "dave@",
        ] {
            assert!(Email::parse(refused).is_err(), "{refused:?} was accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn addresses_stored_before_the_canonical_form_compare_by_their_address() {
        let legacy =
            |text: &str| -> Email { serde_json::from_value(serde_json::json!(text)).unwrap() };
        assert_eq!(legacy("Frank <Dave@Example.com>").key(), "dave@example.com");
        assert_eq!(legacy("dave@example.com.").key(), "dave@example.com");
        assert_eq!(
            Email::parse("DAVE@example.com").unwrap().key(),
            "dave@example.com"
        );
    }

    #[test]
    fn administrators_manage_plain_users_and_super_admins_everyone() {
        assert!(Role::Admin.may_manage(Role::User));
        assert!(!Role::Admin.may_manage(Role::Auditor));
        assert!(!Role::Admin.may_manage(Role::Admin));
        assert!(Role::SuperAdmin.may_manage(Role::SuperAdmin));
        assert!(!Role::Auditor.may_manage(Role::User));
        assert!(!Role::User.may_manage(Role::User));
        assert!(Role::SuperAdmin.may_change_policy());
        assert!(!Role::Admin.may_change_policy());
    }

    #[test]
    fn who_may_log_in_as_whom() {
        assert!(Role::Admin.may_impersonate(Role::User));
        assert!(!Role::Admin.may_impersonate(Role::Admin));
        assert!(!Role::Admin.may_impersonate(Role::Auditor));
        assert!(Role::SuperAdmin.may_impersonate(Role::Admin));
        assert!(Role::SuperAdmin.may_impersonate(Role::Auditor));
        assert!(!Role::SuperAdmin.may_impersonate(Role::SuperAdmin));
        assert!(!Role::User.may_impersonate(Role::User));
    }

    /// The names the read models store and the API shows are serde's
    /// names, and each parses back to its value and nothing else does.
    #[test]
    fn every_name_is_its_serde_name_and_parses_back() {
        fn check<T>(all: &[T], as_str: fn(T) -> &'static str)
        where
            T: Copy + fmt::Debug + PartialEq + Serialize + FromStr,
        {
            for &value in all {
                let name = as_str(value);
                assert_eq!(
                    serde_json::to_value(value).unwrap(),
                    serde_json::json!(name)
                );
                assert!(name.parse::<T>().ok() == Some(value), "{name}");
                assert!(name.to_uppercase().parse::<T>().is_err(), "{name}");
            }
            assert!("".parse::<T>().is_err());
        }
        check(&Role::ALL, Role::as_str);
        check(&TwoFactorStatus::ALL, TwoFactorStatus::as_str);
        check(&SecondFactorMethod::ALL, SecondFactorMethod::as_str);
        check(&AuthenticatedBy::ALL, AuthenticatedBy::as_str);
    }

    #[test]
    fn an_unknown_stored_name_says_what_it_is() {
        let error = "superuser".parse::<TwoFactorStatus>().unwrap_err();
        assert_eq!(error.to_string(), "unknown 2FA status \"superuser\"");
    }

    #[test]
    fn pages_show_roles_and_statuses_in_words() {
        let roles: Vec<&str> = Role::ALL.into_iter().map(Role::label).collect();
        assert_eq!(roles, ["User", "Auditor", "Admin", "Super admin"]);
        let statuses: Vec<&str> = TwoFactorStatus::ALL
            .into_iter()
            .map(TwoFactorStatus::label)
            .collect();
        assert_eq!(statuses, ["Enabled", "Pending", "Disabled"]);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let hash = TokenHash::of("token");
        assert_eq!(format!("{hash:?}"), "TokenHash(<redacted>)");
        let password = PasswordHash::new("$argon2id$v=19$...".into());
        assert!(!format!("{password:?}").contains("argon2"));
    }
}
