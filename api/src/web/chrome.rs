//! The frame around every page: the signed-in user as `GET /me` gives
//! them, navigation, the "Login as" banner, messages, and the CSRF token
//! the page's forms carry.

use axum::http::HeaderValue;
use twofold_domain::{Role, SecondFactorMethod, TwoFactorStatus};

use super::cookies;
use super::csrf;
use super::visitor::Visitor;
use crate::routes::me::{Impersonator, MeView};

impl MeView {
    /// An authenticator app is one of the user's methods.
    pub fn has_totp(&self) -> bool {
        self.two_factor.methods.contains(&SecondFactorMethod::Totp)
    }

    /// A passkey is one of the user's methods.
    pub fn has_passkey(&self) -> bool {
        self.two_factor
            .methods
            .contains(&SecondFactorMethod::Passkey)
    }

    /// Codes may also come by email.
    pub fn offers_email(&self) -> bool {
        self.two_factor.methods.contains(&SecondFactorMethod::Email)
    }

    pub fn two_factor_enabled(&self) -> bool {
        self.two_factor.status == TwoFactorStatus::Enabled
    }

    /// Enrollment was started and not confirmed.
    pub fn two_factor_pending(&self) -> bool {
        self.two_factor.status == TwoFactorStatus::Pending
    }
}

/// The frame around a page: navigation, the "Login as" banner, messages,
/// and the CSRF token its forms carry.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub csrf: String,
    pub user: Option<MeView>,
    /// Held on the enrollment step: no navigation but "Sign out".
    pub held: bool,
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Chrome {
    /// For a visitor who is not signed in; sets the anchor cookie that
    /// the forms' CSRF token derives from when there is none yet.
    pub fn anonymous(visitor: &Visitor) -> (Chrome, Option<HeaderValue>) {
        let (anchor, set) = match visitor.cookies.get(cookies::ANCHOR) {
            Some(anchor) => (anchor.to_string(), None),
            None => {
                let anchor = csrf::new_anchor();
                let set = cookies::set(cookies::ANCHOR, &anchor, None, visitor.secure);
                (anchor, Some(set))
            }
        };
        let chrome = Chrome {
            csrf: csrf::token(&anchor),
            ..Chrome::default()
        };
        (chrome, set)
    }

    pub fn notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    pub fn error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }

    /// Whether the signed-in user's role passes `rule`: what the page
    /// offers (the API still decides).
    fn role_may(&self, rule: fn(Role) -> bool) -> bool {
        self.user.as_ref().is_some_and(|user| rule(user.role))
    }

    /// Shows the administration links.
    pub fn is_admin(&self) -> bool {
        self.role_may(Role::is_administrator)
    }

    /// Shows Enforce 2FA and Reset 2FA.
    pub fn is_super_admin(&self) -> bool {
        self.role_may(Role::may_change_policy)
    }

    /// Shows the Users, Reports and Audit links.
    pub fn reads_reports(&self) -> bool {
        self.role_may(Role::can_read_reports)
    }

    /// The yellow alert next to "My Settings".
    pub fn two_factor_off(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|user| !user.two_factor_enabled())
    }

    pub fn impersonator(&self) -> Option<&Impersonator> {
        self.user
            .as_ref()
            .and_then(|user| user.impersonator.as_ref())
    }
}
