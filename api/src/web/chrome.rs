//! The frame around every page: the signed-in user as `GET /me` gives
//! them, navigation, the "Login as" banner, messages, and the CSRF token
//! the page's forms carry.

use axum::http::HeaderValue;
use serde::Deserialize;

use super::cookies;
use super::csrf;
use super::visitor::Visitor;

/// `GET /api/v1/me`.
#[derive(Clone, Debug, Deserialize)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub two_factor: TwoFactor,
    pub impersonator: Option<Person>,
}

impl Me {
    pub fn offers_email(&self) -> bool {
        self.two_factor
            .methods
            .iter()
            .any(|method| method == "email")
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct TwoFactor {
    pub status: String,
    pub methods: Vec<String>,
    pub enforced: bool,
    pub required: bool,
    pub enabled_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Person {
    pub username: String,
}

/// The frame around a page: navigation, the "Login as" banner, messages,
/// and the CSRF token its forms carry.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub csrf: String,
    pub user: Option<Me>,
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

    fn role(&self) -> &str {
        self.user.as_ref().map_or("", |user| user.role.as_str())
    }

    /// Shows the administration links (the API still decides).
    pub fn is_admin(&self) -> bool {
        matches!(self.role(), "admin" | "super_admin")
    }

    pub fn is_super_admin(&self) -> bool {
        self.role() == "super_admin"
    }

    /// Shows the Users, Reports and Audit links.
    pub fn reads_reports(&self) -> bool {
        matches!(self.role(), "auditor" | "admin" | "super_admin")
    }

    /// The yellow alert next to "My Settings".
    pub fn two_factor_off(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|user| user.two_factor.status != "enabled")
    }

    pub fn impersonator(&self) -> Option<&Person> {
        self.user
            .as_ref()
            .and_then(|user| user.impersonator.as_ref())
    }
}
