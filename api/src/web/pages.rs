//! What every page shares: the signed-in user's frame, and how times and
//! notices read.

use chrono::{DateTime, Utc};

use super::chrome::Chrome;
use super::csrf;
use super::reply::PageError;
use super::visitor::Visitor;
use super::Web;

/// The frame for a signed-in visitor, from `GET /me` (401: sign in again).
pub async fn signed_in(web: &Web, visitor: &Visitor) -> Result<Chrome, PageError> {
    let me = web.api.get(visitor, "/me").await?.into_result()?;
    Ok(Chrome {
        csrf: visitor.session().map(csrf::token).unwrap_or_default(),
        user: Some(me),
        ..Chrome::default()
    })
}

/// A time as people read it; `-` when missing.
pub fn when(time: Option<DateTime<Utc>>) -> String {
    match time {
        Some(at) => at.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "-".to_string(),
    }
}

/// Fixed messages a redirect may ask a page to show (`?notice=...`), so no
/// text of ours or anyone's travels in a URL.
pub fn notice_text(code: Option<&str>) -> Option<String> {
    let text = match code? {
        "signed-out" => "You are signed out. Sign in to continue.",
        "two-factor-disabled" => "Two-factor authentication is now off.",
        "devices-forgotten" => "Every remembered device will be asked for a code again.",
        "enforcement-saved" => "Saved.",
        "two-factor-reset" => "The user's two-factor authentication was reset.",
        "impersonation-ended" => "You are back in your own account.",
        "passkey-added" => "The passkey was added.",
        "passkey-renamed" => "The passkey was renamed.",
        "passkey-removed" => "The passkey was removed.",
        _ => return None,
    };
    Some(text.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::reply::capitalized;
    use super::*;

    #[test]
    fn messages_and_times_read_well() {
        assert_eq!(
            capitalized("the code is not valid"),
            "The code is not valid."
        );
        assert_eq!(capitalized(""), "");
        let at = DateTime::parse_from_rfc3339("2025-04-10T10:30:00.123+02:00").unwrap();
        assert_eq!(when(Some(at.to_utc())), "2025-04-10 08:30 UTC");
        assert_eq!(when(None), "-");
        assert_eq!(notice_text(Some("nonsense")), None);
    }
}
