//! The web pages in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by scripts/test;
//! fantoccini as the client), against `spawn_app` on SQLite. Codes come from
//! oathtool at the app's (manual) clock. Every page visited is saved as a
//! screenshot at 1280 and at 390 px wide under `target/browser-screenshots/`.

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp, ADMIN};

/// One browser at a time: Chromium is heavy on a 2-core machine, and the
/// other end-to-end tests run beside these.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);

/// The window sizes every page is checked and photographed at.
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

/// A chromedriver on a free port, ended with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test installs chromium-driver)");
        let driver = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        let started = Instant::now();
        loop {
            if let Ok(answer) = reqwest::get(&status).await {
                if answer.status().is_success() {
                    return driver;
                }
            }
            assert!(started.elapsed() < WAIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

fn chromedriver() -> PathBuf {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-screenshots")
}

/// A headless Chromium with a fresh profile, pointed at one app.
struct Browser {
    client: Client,
    base: String,
    scenario: &'static str,
    shots: usize,
    _profile: tempfile::TempDir,
    _driver: Driver,
}

impl Browser {
    async fn open(app: &TestApp, scenario: &'static str) -> Browser {
        let driver = Driver::start().await;
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a Chromium session");
        std::fs::create_dir_all(screenshot_dir()).unwrap();
        Browser {
            client,
            base: app.base.clone(),
            scenario,
            shots: 0,
            _profile: profile,
            _driver: driver,
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(error) => panic!("no {css} on {}: {error}", self.path_now().await),
        }
    }

    async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks a button or link and waits for the next page to replace this
    /// one (a form may come back to the same address).
    async fn click(&self, css: &str) {
        let page = self.client.find(Locator::Css("html")).await.unwrap();
        self.find(css).await.click().await.unwrap();
        let started = Instant::now();
        while page.tag_name().await.is_ok() {
            assert!(started.elapsed() < WAIT, "{css} did not lead to a page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ticks a radio button or checkbox (no page load).
    async fn choose(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn path_now(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|url| url.path().to_string())
            .unwrap_or_default()
    }

    /// Waits until the browser shows `path` (after a form's redirect).
    async fn expect_path(&self, path: &str) {
        let started = Instant::now();
        loop {
            let now = self.path_now().await;
            if now == path {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "expected {path}, the browser is on {now}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types into whatever has the focus: the keyboard-only flow.
    async fn type_keys(&self, keys: &str) {
        self.client
            .active_element()
            .await
            .unwrap()
            .send_keys(keys)
            .await
            .unwrap();
    }

    async fn focused_id(&self) -> String {
        self.client
            .active_element()
            .await
            .unwrap()
            .attr("id")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Saves screenshots at desktop and at phone width, and checks that
    /// every visible field has a label and that at 390 px the page does not
    /// scroll sideways (wide tables scroll in their own box) and the manual
    /// TOTP key wraps only between its groups of four.
    async fn shot(&mut self, name: &str) {
        self.shots += 1;
        let file = |width: u32| {
            screenshot_dir().join(format!(
                "{}-{:02}-{name}-{width}.png",
                self.scenario, self.shots
            ))
        };
        std::fs::write(file(DESKTOP.0), self.client.screenshot().await.unwrap()).unwrap();
        let unlabelled = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll('input, select, textarea'))
                    .filter(f => f.type !== 'hidden')
                    .filter(f => !(f.id && document.querySelector('label[for=\"' + f.id + '\"]'))
                                 && !f.getAttribute('aria-label'))
                    .map(f => f.name || f.outerHTML);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(unlabelled, json!([]), "fields without a label on {name}");

        self.client.set_window_size(PHONE.0, PHONE.1).await.unwrap();
        let layout = self
            .client
            .execute(
                "const page = document.documentElement;
                 const wide = Array.from(document.body.querySelectorAll('*'))
                    .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > page.clientWidth + 1)
                    .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : ''));
                 const brokenGroups = Array.from(document.querySelectorAll('.secret .group'))
                    .filter(g => g.getClientRects().length > 1).map(g => g.textContent);
                 return {viewport: page.clientWidth, page: page.scrollWidth, wide: wide.slice(0, 5),
                         brokenGroups: brokenGroups};",
                vec![],
            )
            .await
            .unwrap();
        std::fs::write(file(PHONE.0), self.client.screenshot().await.unwrap()).unwrap();
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .unwrap();
        let viewport = layout["viewport"].as_u64().unwrap();
        assert!(
            viewport <= u64::from(PHONE.0),
            "the window did not narrow: {layout}"
        );
        assert!(
            layout["page"].as_u64().unwrap() <= viewport,
            "{name} scrolls sideways at {} px: {layout}",
            PHONE.0
        );
        assert_eq!(
            layout["brokenGroups"],
            json!([]),
            "the manual key breaks inside a group on {name}"
        );
    }

    async fn sign_in(&self, username: &str, password: &str) {
        self.goto("/").await;
        self.fill("#username", username).await;
        self.fill("#password", password).await;
        self.click("#sign-in").await;
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.expect_path("/").await;
    }

    async fn cookie(&self, name: &str) -> Option<fantoccini::cookies::Cookie<'static>> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .find(|cookie| cookie.name() == name)
    }
}

/// Runs a scenario in a fresh browser, closing it whatever happens.
async fn in_browser(app: &TestApp, scenario: &'static str, body: impl AsyncFnOnce(&mut Browser)) {
    let _one = ONE_BROWSER.lock().await;
    let mut browser = Browser::open(app, scenario).await;
    let outcome = AssertUnwindSafe(body(&mut browser)).catch_unwind().await;
    let Browser { client, .. } = browser;
    drop(client.close().await);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The newest sign-in code the app emailed.
fn last_email_code(app: &TestApp) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(app.dir.path().join("mail"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    files.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).unwrap());
    let message = std::fs::read_to_string(files.last().expect("an email")).unwrap();
    let at = message.find("sign-in code is ").expect("a code") + "sign-in code is ".len();
    message[at..at + 6].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_enrolls_signs_in_with_a_code_and_is_remembered() {
    let app = spawn_app(Backend::Sqlite).await;
    app.create_user("alice", "alice-password", Some("alice@example.com"), "user")
        .await;
    in_browser(&app, "enroll-and-sign-in", async |browser: &mut Browser| {
        browser.goto("/").await;
        browser.shot("sign-in").await;
        browser.sign_in("alice", "alice-password").await;
        browser.expect_path("/home").await;
        assert!(
            browser.exists("#my-settings .alert-icon").await,
            "the yellow alert"
        );
        browser.shot("home-without-2fa").await;

        // My Settings → Enable → read the key off the page.
        browser.click("#my-settings").await;
        browser.expect_path("/settings").await;
        browser.shot("settings").await;
        browser.click("#enable-two-factor").await;
        let secret: String = browser
            .text("#totp-secret")
            .await
            .split_whitespace()
            .collect();
        assert_eq!(secret.len(), 32, "a 160-bit base32 key");
        assert!(browser
            .find("#qr-code")
            .await
            .attr("src")
            .await
            .unwrap()
            .unwrap()
            .starts_with("data:image/svg+xml;base64,"));
        let code_field = browser.find("#code").await;
        assert_eq!(
            code_field.attr("autocomplete").await.unwrap().as_deref(),
            Some("one-time-code")
        );
        assert_eq!(
            code_field.attr("inputmode").await.unwrap().as_deref(),
            Some("numeric")
        );
        browser.shot("enable-two-factor").await;

        // A wrong code: the API's error, and the same key to try again.
        let wrong = if app.code(&secret) == "123456" {
            "654321"
        } else {
            "123456"
        };
        browser.fill("#code", wrong).await;
        browser.click("#confirm-two-factor").await;
        assert!(browser.text("#error").await.contains("not valid"));
        let again: String = browser
            .text("#totp-secret")
            .await
            .split_whitespace()
            .collect();
        assert_eq!(again, secret);
        browser.shot("enable-two-factor-wrong-code").await;

        browser.fill("#code", &app.code(&secret)).await;
        browser.click("#confirm-two-factor").await;
        let codes = browser
            .client
            .find_all(Locator::Css("#recovery-codes li"))
            .await
            .unwrap();
        assert_eq!(codes.len(), 10, "recovery codes shown once");
        browser.shot("recovery-codes").await;
        browser.click("#continue").await;
        browser.expect_path("/home").await;
        assert!(browser
            .text("#two-factor-status")
            .await
            .starts_with("On since"));
        browser.sign_out().await;

        // Keyboard only: the username has the focus; Tab, Enter, then
        // the code, Tab to the ticked box, Space unticks it, Tab to Verify.
        browser.goto("/").await;
        assert_eq!(browser.focused_id().await, "username");
        browser
            .type_keys(&format!("alice{}alice-password{}", Key::Tab, Key::Enter))
            .await;
        browser.expect_path("/login/code").await;
        assert!(browser.find("#remember").await.is_selected().await.unwrap());
        assert!(browser
            .find("#method-totp")
            .await
            .is_selected()
            .await
            .unwrap());
        assert!(
            browser.exists("#method-email").await,
            "alice's address is hers alone"
        );
        assert!(!browser.exists("#email-unavailable").await);
        assert!(browser
            .text("label[for=remember]")
            .await
            .contains("Remember this device for 23h"));
        browser.shot("code-step").await;
        app.next_step();
        assert_eq!(browser.focused_id().await, "code");
        browser
            .type_keys(&format!("{}{}", app.code(&secret), Key::Tab))
            .await;
        assert_eq!(browser.focused_id().await, "remember");
        browser.type_keys(" ").await;
        browser.type_keys(&Key::Tab.to_string()).await;
        assert_eq!(browser.focused_id().await, "verify");
        browser.type_keys(&Key::Enter.to_string()).await;
        browser.expect_path("/home").await;
        assert!(
            browser.cookie("twofold_device").await.is_none(),
            "box unticked"
        );
        browser.sign_out().await;

        // Asked again; this time by email, remembering the device.
        browser.sign_in("alice", "alice-password").await;
        browser.expect_path("/login/code").await;
        browser.click("#send-email").await;
        let notice = browser.text(".notice").await;
        assert!(notice.contains("a***@example.com"), "{notice}");
        assert!(browser
            .find("#method-email")
            .await
            .is_selected()
            .await
            .unwrap());
        browser.shot("code-step-email-sent").await;
        browser.fill("#code", &last_email_code(&app)).await;
        browser.click("#verify").await;
        browser.expect_path("/home").await;
        let device = browser
            .cookie("twofold_device")
            .await
            .expect("a device cookie");
        assert_eq!(device.http_only(), Some(true));
        assert_eq!(
            device.same_site().map(|same_site| same_site.to_string()),
            Some("Lax".to_string())
        );
        assert_eq!(browser.text("#device-count").await, "1");
        browser.sign_out().await;

        // Not asked again on this device.
        browser.sign_in("alice", "alice-password").await;
        browser.expect_path("/home").await;
        browser.shot("home-remembered").await;

        // Forgetting the devices asks for a code again.
        browser.click("#my-settings").await;
        assert!(browser.exists("#devices").await);
        browser.shot("settings-with-2fa").await;
        browser.click("#forget-devices").await;
        browser.expect_path("/settings").await;
        assert!(browser.exists("#no-devices").await);
        browser.sign_out().await;
        browser.sign_in("alice", "alice-password").await;
        browser.expect_path("/login/code").await;
        app.next_step();
        browser.fill("#code", &app.code(&secret)).await;
        browser.click("#verify").await;
        browser.expect_path("/home").await;

        // Turning it off asks for the password and a fresh code.
        browser.click("#my-settings").await;
        browser
            .fill("#disable-password", "not-alice-password")
            .await;
        app.next_step();
        browser.fill("#disable-code", &app.code(&secret)).await;
        browser.click("#disable-two-factor").await;
        assert!(browser.text("#error").await.contains("password"));
        browser.shot("disable-two-factor-wrong-password").await;
        browser.fill("#disable-password", "alice-password").await;
        browser.fill("#disable-code", &app.code(&secret)).await;
        browser.click("#disable-two-factor").await;
        browser.expect_path("/settings").await;
        assert!(browser.text("#two-factor-status").await.contains("Off"));
        browser.shot("two-factor-disabled-by-the-user").await;
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforced_user_is_held_on_the_enrollment_page_until_2fa_is_active() {
    let app = spawn_app(Backend::Sqlite).await;
    let carol = app
        .create_user("carol", "carol-password", None, "user")
        .await;
    let admin = app.admin_token().await;
    let enforced = app
        .patch(
            &format!("/api/v1/users/{carol}"),
            &admin,
            json!({ "enforce_two_factor": true }),
        )
        .await;
    assert_eq!(enforced.status, StatusCode::OK, "{enforced:?}");
    in_browser(&app, "held-on-enrollment", async |browser: &mut Browser| {
        browser.sign_in("carol", "carol-password").await;
        browser.expect_path("/enroll").await;
        assert!(
            !browser.exists("#my-settings").await,
            "no way out but sign-out"
        );
        browser.shot("enrollment-required").await;
        for elsewhere in ["/home", "/settings", "/admin/users", "/admin/audit"] {
            browser.goto(elsewhere).await;
            browser.expect_path("/enroll").await;
        }

        browser.click("#enable-two-factor").await;
        let secret: String = browser
            .text("#totp-secret")
            .await
            .split_whitespace()
            .collect();
        assert!(!browser.exists("#my-settings").await);
        browser.shot("enrollment-qr-code").await;
        browser.fill("#code", &app.code(&secret)).await;
        browser.click("#confirm-two-factor").await;
        browser.find("#recovery-codes").await;
        browser.click("#continue").await;
        browser.expect_path("/home").await;
        browser.goto("/settings").await;
        browser.expect_path("/settings").await;
        assert!(browser.exists("#disable-two-factor").await);
        browser.shot("settings-after-enrollment").await;
        browser.sign_out().await;

        // No address: only the app is offered, and the page says why.
        browser.sign_in("carol", "carol-password").await;
        browser.expect_path("/login/code").await;
        assert!(!browser.exists("#method-email").await);
        assert!(!browser.exists("#send-email").await);
        assert!(browser
            .text("#email-unavailable")
            .await
            .contains("no email address"));
        browser.shot("code-step-without-email").await;
        app.next_step();
        browser.fill("#code", &app.code(&secret)).await;
        browser.click("#verify").await;
        browser.expect_path("/home").await;
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_finds_enforces_logs_in_as_and_turns_off_a_users_2fa() {
    let app = spawn_app(Backend::Sqlite).await;
    let dave = app
        .create_user("dave", "dave-password", Some("dave@example.com"), "user")
        .await;
    app.create_user("erin", "erin-password", None, "user").await;
    let token = app.token("dave", "dave-password").await;
    app.enroll_totp(&token).await;
    in_browser(&app, "admin-rescue", async |browser: &mut Browser| {
        browser.sign_in(ADMIN.0, ADMIN.1).await;
        browser.expect_path("/home").await;
        browser.click("a[href='/admin/users']").await;
        browser.expect_path("/admin/users").await;
        assert!(browser.exists("tr[data-username=erin]").await);
        browser.shot("users").await;

        // Filter by 2FA status; the 2FA column shows it.
        browser
            .find("#two_factor")
            .await
            .select_by_value("enabled")
            .await
            .unwrap();
        browser.click("#search").await;
        browser.find("tr[data-username=dave]").await;
        assert!(!browser.exists("tr[data-username=erin]").await);
        // Roles and statuses in words (the JSON API says `super_admin`,
        // `enabled`).
        assert_eq!(
            browser.text("tr[data-username=dave] .badge").await,
            "Enabled"
        );
        assert_eq!(browser.text("li.who .role").await, "Super admin");
        browser.shot("users-with-2fa-enabled").await;

        // Enforce 2FA: Yes.
        browser.click("tr[data-username=dave] a").await;
        browser.expect_path(&format!("/admin/users/{dave}")).await;
        browser.choose("#enforce-yes").await;
        browser.click("#save-enforcement").await;
        browser.find(".notice").await;
        assert_eq!(browser.text("#user-enforced").await, "Yes");
        browser.shot("user-enforced").await;

        // Login as: the banner shows; disabling is refused while enforced.
        browser
            .fill("#login-as-reason", "ticket 42: lost phone")
            .await;
        browser.click("#login-as").await;
        browser.expect_path("/home").await;
        let banner = browser.text("#impersonation-banner").await;
        assert!(
            banner.contains("dave") && banner.contains("root"),
            "{banner}"
        );
        browser.shot("login-as-banner").await;
        browser.click("#my-settings").await;
        browser.click("#disable-two-factor").await;
        let refused = browser.text("#error").await;
        assert!(
            refused.contains("enforced by an administrator"),
            "{refused}"
        );
        assert!(browser.exists("#impersonation-banner").await);
        browser.shot("disable-refused-while-enforced").await;
        browser.click("#end-impersonation").await;
        browser.expect_path(&format!("/admin/users/{dave}")).await;
        assert!(!browser.exists("#impersonation-banner").await);

        // The help article's rescue: Enforce 2FA No, Login as, Disable.
        browser.choose("#enforce-no").await;
        browser.click("#save-enforcement").await;
        browser.find(".notice").await;
        assert_eq!(browser.text("#user-enforced").await, "No");
        browser
            .fill("#login-as-reason", "ticket 42: lost phone")
            .await;
        browser.click("#login-as").await;
        browser.expect_path("/home").await;
        browser.click("#my-settings").await;
        browser.click("#disable-two-factor").await;
        browser.expect_path("/settings").await;
        assert!(browser.text("#two-factor-status").await.contains("Off"));
        browser.shot("two-factor-disabled-as-user").await;
        browser.click("#end-impersonation").await;
        browser.expect_path(&format!("/admin/users/{dave}")).await;
        assert_eq!(browser.text("#user-two-factor").await, "Disabled");
        browser.shot("user-after-rescue").await;

        browser.click("a[href='/admin/reports']").await;
        browser.expect_path("/admin/reports").await;
        assert_eq!(browser.text("#report-total").await, "3");
        assert_eq!(browser.text("#report-enabled").await, "0");
        assert!(browser.exists("#report-csv").await);
        // The mandatory-date forecast: nobody has 2FA any more.
        assert_eq!(browser.text("#forecast-without").await, "3");
        assert_eq!(
            browser.text("#mandatory-from").await,
            "No platform-wide date is set."
        );
        assert!(browser.exists("#without-csv").await);
        browser.shot("reports").await;

        browser.click("a[href='/admin/audit']").await;
        browser.expect_path("/admin/audit").await;
        // For an auditor: names and sentences, filters by username and by
        // what happened, the raw fields on demand.
        browser.fill("#username", "Dave").await;
        browser
            .find("#type")
            .await
            .select_by_value("TwoFactorDisabled")
            .await
            .unwrap();
        browser.click("#filter").await;
        let rows = browser
            .client
            .find_all(Locator::Css("#audit tbody tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "one TwoFactorDisabled event");
        assert_eq!(
            browser.text("#audit tbody td.summary").await,
            "Super admin root, logged in as dave, turned off dave's 2FA."
        );
        assert_eq!(browser.text("#audit tbody a.user").await, "dave");
        assert_eq!(browser.text("#audit tbody a.actor").await, "root");
        assert!(browser.text("#audit tbody").await.contains("Login as"));
        let raw = browser.find("#audit details.raw").await;
        assert_eq!(raw.attr("open").await.unwrap(), None, "raw fields folded");
        browser.choose("#audit details.raw summary").await;
        assert!(
            raw.attr("open").await.unwrap().is_some(),
            "raw fields shown"
        );
        browser.shot("audit-filtered").await;

        // Everything root did to dave while logged in as dave, by name.
        browser
            .goto("/admin/audit?actor_username=root&username=dave")
            .await;
        let summaries = browser.text("#audit tbody").await;
        assert!(
            summaries
                .contains("Super admin root logged in as dave (reason: ticket 42: lost phone).")
                && summaries.contains("Super admin root enforced 2FA for dave."),
            "{summaries}"
        );
        assert!(
            !summaries.contains("-4000-"),
            "no ids where names are known: {summaries}"
        );
        browser.shot("audit-by-actor").await;

        // dave's timeline: each Login as and enforcement change folded.
        browser.click("#timeline-link").await;
        browser
            .expect_path(&format!("/admin/users/{dave}/timeline"))
            .await;
        let cases = browser
            .client
            .find_all(Locator::Css("#timeline li.case"))
            .await
            .unwrap();
        assert_eq!(cases.len(), 4, "two Login as, two enforcement changes");
        let folded = browser.text("#timeline").await;
        assert!(
            folded.contains("Super admin root logged in as dave (reason: ticket 42: lost phone)."),
            "{folded}"
        );
        assert!(
            !folded.contains("turned off dave's 2FA"),
            "events under a case stay folded: {folded}"
        );
        // The second Login as: the rescue.
        cases[3]
            .find(Locator::Css("summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(browser
            .text("#timeline")
            .await
            .contains("Super admin root, logged in as dave, turned off dave's 2FA."));
        browser.shot("timeline").await;
    })
    .await;

    // The events are the API's: TwoFactorDisabled, acted by root as dave.
    let history = app.history(&dave).await;
    let (_, metadata) = history
        .iter()
        .find(|(kind, _)| kind == "TwoFactorDisabled")
        .expect("TwoFactorDisabled stored");
    assert!(metadata["impersonator_id"].is_string(), "{metadata}");
    assert!(
        metadata["user_agent"]
            .as_str()
            .is_some_and(|agent| agent.contains("Chrome")),
        "the browser's user agent reaches the event: {metadata}"
    );
    app.stop().await;
}

/// Forms without the page's CSRF token are refused with a 403 page and
/// change nothing; pages carry the strict headers; the API does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_refuse_forged_forms_and_send_a_strict_content_security_policy() {
    let app = spawn_app(Backend::Sqlite).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("img-src 'self' data:"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.headers()["cache-control"], "no-store");
    let anchor = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .find(|value| value.starts_with("twofold_csrf="))
        .expect("an anchor cookie");
    assert!(anchor.contains("HttpOnly") && anchor.contains("SameSite=Lax"));
    assert!(!anchor.contains("Secure"), "plain HTTP here");
    let cookie = anchor.split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    // Only our own script file (passkeys), never an inline one.
    for script in html.split("<script").skip(1) {
        let tag = script.split("</script>").next().unwrap();
        assert!(
            tag.trim_start().starts_with("src=\"/static/") && tag.ends_with('>'),
            "an inline or foreign script: <script{tag}"
        );
    }

    let events = app.event_count().await;
    let sign_in = |cookie: Option<String>, token: &str| {
        let mut request = client.post(format!("{}/login", app.base)).form(&[
            ("csrf", token),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ]);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    for (cookie, token) in [
        (None, token.as_str()),
        (Some(cookie.clone()), "forged"),
        (Some(cookie.clone()), ""),
        (Some("twofold_csrf=another-value".into()), token.as_str()),
    ] {
        let refused = sign_in(cookie, token).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = refused.text().await.unwrap();
        assert!(body.contains("This form has expired"), "{body}");
    }
    assert_eq!(app.event_count().await, events, "nothing stored");

    // Cross-site, even with the right token.
    let cross = client
        .post(format!("{}/login", app.base))
        .header("cookie", cookie.clone())
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("csrf", token.as_str()),
            ("username", "x"),
            ("password", "y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);

    // The real form signs in.
    let signed_in = client
        .post(format!("{}/login", app.base))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()["location"], "/home");
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .find(|value| value.starts_with("twofold_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && !session.contains("Secure"),
        "{session}"
    );

    // Behind a TLS proxy the cookies are Secure and `__Host-` prefixed
    // (hardening.rs checks that only such names are read there).
    let page = client
        .get(format!("{}/", app.base))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let anchor = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(anchor.starts_with("__Host-twofold_csrf="), "{anchor}");
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let signed_in = client
        .post(format!("{}/login", app.base))
        .header("cookie", anchor.split(';').next().unwrap())
        .header("x-forwarded-proto", "https")
        .form(&[
            ("csrf", token),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .find(|value| value.starts_with("__Host-twofold_session="))
        .expect("a prefixed session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("Secure") && session.contains("Path=/"),
        "{session}"
    );

    // A wrong password shows the API's message, not a trace.
    let page = client.get(format!("{}/", app.base)).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let wrong = client
        .post(format!("{}/login", app.base))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token),
            ("username", ADMIN.0),
            ("password", "wrong-password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("Wrong username or password."));

    // The JSON API keeps its own answers.
    let api: reqwest::Response = client
        .get(format!("{}/api/v1/me", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    assert!(api.headers().get("content-security-policy").is_none());
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");

    // A page that does not exist is a page for a browser, JSON otherwise.
    let missing = client
        .get(format!("{}/no-such-page", app.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("There is no such page."));
    let missing: Value = client
        .get(format!("{}/no-such-page", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing["error"], "not_found");
    let health = client
        .get(format!("{}/healthz", app.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the API's own paths stay");

    // Signed-in pages without a session go to sign-in.
    let home = client
        .get(format!("{}/home", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER);
    assert_eq!(home.headers()["location"], "/?notice=signed-out");
    app.stop().await;
}

/// Adds Chromium's WebDriver virtual authenticator (CTAP2, resident keys,
/// user verification, always consenting) to the browser's session; gives
/// its id.
async fn virtual_authenticator(browser: &Browser) -> String {
    let session = browser.client.session_id().await.unwrap().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/session/{session}/webauthn/authenticator",
        browser._driver.port
    );
    let answer: Value = reqwest::Client::new()
        .post(&url)
        .json(&json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no virtual authenticator: {answer}"))
        .to_string()
}

/// The credentials the virtual authenticator holds.
async fn authenticator_credentials(browser: &Browser, authenticator: &str) -> Vec<Value> {
    let session = browser.client.session_id().await.unwrap().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/session/{session}/webauthn/authenticator/{authenticator}/credentials",
        browser._driver.port
    );
    let answer: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    answer["value"].as_array().cloned().unwrap_or_default()
}

/// My Settings with a passkey: added through our script and Chromium's
/// virtual authenticator, listed and renamed; then a sign-in with the
/// password and "Use a passkey", one with "Sign in with a passkey" alone,
/// and the passkey removed. WebAuthn wants a
/// host name (not an IP address) as the RP ID, so this app answers on
/// `localhost` and its `--public-url` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_a_passkey_signs_in_with_it_and_removes_it() {
    let port = crate::processes::free_port();
    let mut settings = crate::helpers::default_settings();
    settings.relying_party.public_url = format!("http://localhost:{port}").parse().unwrap();
    let app = crate::helpers::spawn_app_configured(Backend::Sqlite, settings, |config| {
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    app.create_user("pat", "pat-password", None, "user").await;
    let _one = ONE_BROWSER.lock().await;
    let mut browser = Browser::open(&app, "passkeys").await;
    browser.base = format!("http://localhost:{port}");
    let outcome = AssertUnwindSafe(async {
        let authenticator = virtual_authenticator(&browser).await;
        browser.sign_in("pat", "pat-password").await;
        browser.expect_path("/home").await;
        browser.goto("/settings").await;
        assert!(browser.exists("#no-passkeys").await);
        browser.shot("settings-without-passkeys").await;

        browser.fill("#passkey-name", "This laptop").await;
        browser.click("#add-passkey").await;
        let started = Instant::now();
        while !browser.exists("#passkeys").await {
            if browser.exists("#passkey-error:not([hidden])").await {
                panic!("adding failed: {}", browser.text("#passkey-error").await);
            }
            assert!(started.elapsed() < WAIT, "the passkey never showed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(browser.text(".passkey-name").await, "This laptop");
        let held = authenticator_credentials(&browser, &authenticator).await;
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0]["isResidentCredential"], true);
        assert!(browser
            .text("#two-factor-status")
            .await
            .contains("On since"));
        browser.shot("settings-with-a-passkey").await;

        browser.fill("input[id^='rename-']", "Work laptop").await;
        browser.click(".rename-passkey").await;
        browser.expect_path("/settings").await;
        assert_eq!(browser.text(".passkey-name").await, "Work laptop");

        // The password, then "Use a passkey" on the code step.
        browser.sign_out().await;
        browser.sign_in("pat", "pat-password").await;
        browser.expect_path("/login/code").await;
        browser.shot("code-step-with-a-passkey").await;
        browser.click("#use-passkey").await;
        browser.expect_path("/home").await;

        // No password at all: "Sign in with a passkey".
        browser.sign_out().await;
        browser.shot("sign-in-with-a-passkey").await;
        browser.click("#sign-in-with-passkey").await;
        browser.expect_path("/home").await;

        browser.goto("/settings").await;
        assert_ne!(
            browser.text("#passkeys td:nth-child(3)").await,
            "-",
            "last used"
        );
        browser.click(".remove-passkey").await;
        browser.expect_path("/settings").await;
        assert!(browser.exists("#no-passkeys").await);
        browser.shot("settings-passkey-removed").await;
    })
    .catch_unwind()
    .await;
    let Browser { client, .. } = browser;
    drop(client.close().await);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
