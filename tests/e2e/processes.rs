//! Several writers on one store: real `twofold serve` processes sharing a
//! PostgreSQL database, two in-process servers on one database, and raw
//! writers whose commits are delayed while the read models catch up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use futures::future::join_all;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use twofold_domain::{policy, AuthenticatedBy, TokenHash, UserEvent};
use twofold_projections::{Db, Projector};
use uuid::Uuid;

use crate::helpers::{
    binary, default_settings, fresh_postgres_database, oathtool_code, spawn_app, Answer, Backend,
    ADMIN,
};
use crate::on_both_backends;

on_both_backends!(
    read_models_see_every_event_even_when_commits_are_delayed,
    two_servers_on_one_database_retry_conflicting_commands,
);

/// The multi-process tests each run two or three servers with their own
/// PostgreSQL pools; one at a time keeps the server's 100 connections and
/// the two cores from being the thing under test.
pub(crate) static MULTI_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Real processes
// ---------------------------------------------------------------------------

/// `twofold serve` processes on one fresh PostgreSQL database, sharing one
/// master key. Killed on drop; their logs are printed when the test failed.
pub struct Processes {
    pub database_url: String,
    pub client: reqwest::Client,
    pub bases: Vec<String>,
    pub(crate) children: Vec<tokio::process::Child>,
    pub(crate) logs: Vec<PathBuf>,
    pub(crate) dir: tempfile::TempDir,
}

/// A port nobody listens on right now (the process may lose it to another
/// test before it binds; `launch` then tries another).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("({error})"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Processes {
    /// Starts `count` processes: the first alone, with the bootstrap admin
    /// (it also runs the migrations and writes the master key), then the
    /// others together; returns once every one answers `/readyz`.
    pub async fn start(count: usize) -> Processes {
        assert!(count >= 1);
        let mut processes = Processes {
            database_url: fresh_postgres_database().await,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            bases: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let first = processes.launch(0, true).await;
        processes.adopt(first);
        let others = join_all((1..count).map(|index| processes.launch(index, false))).await;
        for other in others {
            processes.adopt(other);
        }
        processes
    }

    pub(crate) fn adopt(&mut self, (child, base, log): (tokio::process::Child, String, PathBuf)) {
        self.children.push(child);
        self.bases.push(base);
        self.logs.push(log);
    }

    pub(crate) async fn launch(
        &self,
        index: usize,
        bootstrap: bool,
    ) -> (tokio::process::Child, String, PathBuf) {
        let mut failures = Vec::new();
        for attempt in 0..5 {
            let port = free_port();
            let log = self
                .dir
                .path()
                .join(format!("twofold-{index}-{attempt}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let mut command = tokio::process::Command::new(binary());
            command
                .arg("serve")
                .arg("--database-url")
                .arg(&self.database_url)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--master-key-file")
                .arg(self.dir.path().join("master.key"))
                .arg("--login-rate-per-ip")
                .arg("1000000")
                .arg("--database-max-connections")
                .arg("8")
                // These tests send bursts of sign-ins to check correctness,
                // not to be shed: give them a line long enough to wait in.
                .arg("--password-hash-queue")
                .arg("512")
                .arg("--mail-dir")
                .arg(self.dir.path().join(format!("mail-{index}")))
                // One service to its users: passkeys are bound to one origin.
                .arg("--public-url")
                .arg(crate::helpers::PUBLIC_URL);
            // Only what this test says: nothing inherited from the caller.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("TWOFOLD_") {
                    command.env_remove(name);
                }
            }
            if bootstrap {
                command.env(
                    "TWOFOLD_BOOTSTRAP_ADMIN",
                    format!("{}:{}", ADMIN.0, ADMIN.1),
                );
            }
            command
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .kill_on_drop(true);
            let mut child = command.spawn().expect("the twofold binary starts");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let text = read_log(&log);
                    if text.contains("cannot listen") {
                        failures.push(format!("port {port} taken: {status}"));
                        break;
                    }
                    panic!("twofold process {index} exited ({status}):\n{text}");
                }
                let ready = self
                    .client
                    .get(format!("{base}/readyz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return (child, base, log);
                }
                if Instant::now() > deadline {
                    drop(child.start_kill());
                    panic!(
                        "twofold process {index} not ready within 60 s:\n{}",
                        read_log(&log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("twofold process {index} found no free port: {failures:?}");
    }

    pub async fn call(
        &self,
        process: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        call(
            &self.client,
            &self.bases[process],
            method,
            path,
            token,
            body,
        )
        .await
    }

    pub async fn login(&self, process: usize, username: &str, password: &str) -> Answer {
        self.call(
            process,
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({ "username": username, "password": password })),
        )
        .await
    }

    /// A sign-in of a test's setup, sent again after `Retry-After` while the
    /// process sheds load (503: its password workers are at capacity, as
    /// they may be when these tests share two cores with others), as a real
    /// client does. What a test checks goes through `login`.
    pub async fn setup_login(&self, process: usize, username: &str, password: &str) -> Answer {
        let mut tries = 0;
        loop {
            let answer = self
                .call(
                    process,
                    Method::POST,
                    "/api/v1/login",
                    None,
                    Some(json!({ "username": username, "password": password })),
                )
                .await;
            tries += 1;
            if answer.status != StatusCode::SERVICE_UNAVAILABLE || tries == 10 {
                return answer;
            }
            let wait = answer
                .headers
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    /// A session of the bootstrap super admin (started on process 0; every
    /// process finds it).
    pub async fn admin_token(&self) -> String {
        let answer = self.setup_login(0, ADMIN.0, ADMIN.1).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body["session_token"].as_str().unwrap().to_string()
    }

    pub async fn db(&self) -> Db {
        open_db(&self.database_url).await
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (index, log) in self.logs.iter().enumerate() {
                eprintln!(
                    "----- twofold process {index} ({}), last lines of its log -----\n{}",
                    log.display(),
                    tail(&read_log(log), 200)
                );
            }
        }
        for child in &mut self.children {
            drop(child.start_kill());
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// One HTTP request to any server; the answer as `helpers::Answer`.
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    }
}

/// Our own pools on the test's database (generous timeouts: the tests make
/// the store busy on purpose).
pub(crate) async fn open_db(url: &str) -> Db {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .busy_timeout(Duration::from_secs(30));
        Db::Sqlite(
            SqlitePoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .unwrap(),
        )
    } else {
        Db::Postgres(
            PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await
                .unwrap(),
        )
    }
}

#[derive(Clone, Debug)]
pub(crate) struct StoredRow {
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: Value,
}

/// Every stored event, per aggregate in sequence order.
pub(crate) async fn stored_events(db: &Db) -> Vec<StoredRow> {
    let rows = db
        .fetch(
            "SELECT aggregate_id, sequence, event_type, CAST(payload AS TEXT) AS payload
               FROM events ORDER BY aggregate_id, sequence",
            vec![],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| StoredRow {
            aggregate_id: row.get("aggregate_id").unwrap(),
            sequence: row.get("sequence").unwrap(),
            event_type: row.get("event_type").unwrap(),
            payload: serde_json::from_str(row.text("payload").unwrap()).unwrap(),
        })
        .collect()
}

/// Each aggregate's sequences are exactly 1, 2, 3 ... (no gap, no repeat).
pub(crate) fn assert_sequences_contiguous(rows: &[StoredRow]) {
    let mut per_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in rows {
        per_aggregate
            .entry(row.aggregate_id.as_str())
            .or_default()
            .push(row.sequence);
    }
    for (aggregate, mut sequences) in per_aggregate {
        sequences.sort_unstable();
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, expected, "sequences of aggregate {aggregate}");
    }
}

fn registered_username(row: &StoredRow) -> Option<&str> {
    (row.event_type == "UserRegistered")
        .then(|| row.payload["UserRegistered"]["username"].as_str())
        .flatten()
}

/// The usernames a listing shows, page by page.
async fn listed_usernames(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<BTreeSet<String>, Answer> {
    let mut names = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/users?limit=500&cursor={cursor}"),
            None => "/api/v1/users?limit=500".to_string(),
        };
        let page = call(client, base, Method::GET, &path, Some(token), None).await;
        if page.status != StatusCode::OK {
            return Err(page);
        }
        for user in page.body["users"].as_array().unwrap() {
            names.insert(user["username"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(names),
        }
    }
}

fn totp_step(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(30)
}

/// oathtool is a blocking child process; keep it off the runtime's workers.
pub(crate) async fn oathtool_at(secret: &str, at: DateTime<Utc>) -> String {
    let secret = secret.to_string();
    tokio::task::spawn_blocking(move || oathtool_code(&secret, at))
        .await
        .unwrap()
}

/// A random number of milliseconds in 0..=max (no `rand` among the test's
/// dependencies; v4 UUIDs are random enough for jitter).
fn random_millis(max: u64) -> u64 {
    (Uuid::new_v4().as_u128() % u128::from(max + 1)) as u64
}

// ---------------------------------------------------------------------------
// 1. Three processes register users at once
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_register_users_concurrently_without_duplicates_or_lost_events() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let started = Instant::now();
    let cluster = Processes::start(3).await;
    let admin = cluster.admin_token().await;
    let ready = started.elapsed();

    // 90 distinct names round-robin, and 10 names each sent to all three
    // processes at the same moment.
    let mut requests: Vec<(usize, String)> =
        (0..90).map(|n| (n % 3, format!("solo-{n:02}"))).collect();
    for n in 0..10 {
        for process in 0..3 {
            requests.push((process, format!("twin-{n:02}")));
        }
    }
    let answers = join_all(requests.iter().map(|(process, name)| {
        cluster.call(
            *process,
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({ "username": name, "password": format!("{name}-password") })),
        )
    }))
    .await;
    let written = Instant::now();

    let server_errors: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status.is_server_error())
        .collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    let mut outcomes: BTreeMap<&str, Vec<&Answer>> = BTreeMap::new();
    for ((_, name), answer) in requests.iter().zip(&answers) {
        outcomes.entry(name.as_str()).or_default().push(answer);
    }
    assert_eq!(outcomes.len(), 100);
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    for (name, answers) in &outcomes {
        let created: Vec<&&Answer> = answers
            .iter()
            .filter(|a| a.status == StatusCode::CREATED)
            .collect();
        assert_eq!(created.len(), 1, "{name}: exactly one 201 in {answers:?}");
        for answer in answers.iter().filter(|a| a.status != StatusCode::CREATED) {
            assert_eq!(answer.status, StatusCode::CONFLICT, "{name}: {answer:?}");
            assert_eq!(answer.error(), "conflict", "{name}: {answer:?}");
        }
        assert_eq!(created[0].body["username"], *name);
        acknowledged.insert(
            name.to_string(),
            created[0].body["id"].as_str().unwrap().to_string(),
        );
    }

    // The store: one registration per name, every acknowledged one in it.
    let rows = stored_events(&cluster.db().await).await;
    let mut registrations: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in &rows {
        if let Some(name) = registered_username(row) {
            registrations
                .entry(name)
                .or_default()
                .push(&row.aggregate_id);
        }
    }
    assert_eq!(
        registrations.len(),
        101,
        "100 users and the bootstrap admin"
    );
    for (name, ids) in &registrations {
        assert_eq!(ids.len(), 1, "{name} registered {} times", ids.len());
    }
    for (name, id) in &acknowledged {
        assert_eq!(
            registrations.get(name.as_str()),
            Some(&vec![id.as_str()]),
            "the acknowledged {name} ({id}) is stored"
        );
    }
    assert_sequences_contiguous(&rows);

    // Every process's read model shows them all, soon.
    let expected: BTreeSet<String> = registrations.keys().map(|n| n.to_string()).collect();
    for (process, base) in cluster.bases.iter().enumerate() {
        loop {
            let listed = listed_usernames(&cluster.client, base, &admin).await;
            if listed.as_ref().is_ok_and(|names| *names == expected) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(2),
                "process {process} still lists {listed:?} {:?} after the writes",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "three processes: ready in {ready:?}, 120 registrations in {:?}, all listed {:?} later",
        written - started - ready,
        written.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. One TOTP code, sixty times at once
// ---------------------------------------------------------------------------

const ROUNDS: usize = 20;
const CHALLENGES_PER_ROUND: usize = 6;
const SENDS_PER_ROUND: usize = 60;
/// Rounds in flight together (300 requests): all 1,200 sends in one code's
/// window, without queueing hundreds of requests per process on its few
/// database connections (3 s acquire time-out, then 503).
const ROUNDS_AT_ONCE: usize = 5;

struct Enrolled {
    id: String,
    username: String,
    password: String,
    secret: String,
    /// The step of the code that confirmed the enrollment (accepted once).
    confirmed_step: i64,
    recovery_codes: Vec<String>,
}

async fn enroll(cluster: &Processes, admin: &str, round: usize) -> Enrolled {
    let username = format!("totp-{round:02}");
    let password = format!("{username}-password");
    let created = cluster
        .call(
            0,
            Method::POST,
            "/api/v1/users",
            Some(admin),
            Some(json!({ "username": username, "password": password })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let login = cluster.setup_login(0, &username, &password).await;
    assert_eq!(login.body["status"], "authenticated", "{login:?}");
    let token = login.body["session_token"].as_str().unwrap();
    let started = cluster
        .call(
            0,
            Method::POST,
            "/api/v1/me/two-factor/totp",
            Some(token),
            Some(json!({})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let secret = started.body["secret"].as_str().unwrap().to_string();
    // The processes use the real clock.
    let now = Utc::now();
    let code = oathtool_at(&secret, now).await;
    let confirmed = cluster
        .call(
            0,
            Method::POST,
            "/api/v1/me/two-factor/totp/confirm",
            Some(token),
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{confirmed:?}");
    Enrolled {
        id: created.body["id"].as_str().unwrap().to_string(),
        username,
        password,
        secret,
        confirmed_step: totp_step(now),
        recovery_codes: confirmed.body["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|code| code.as_str().unwrap().to_string())
            .collect(),
    }
}

/// `sends` copies of `code`, all at once: send i goes to challenge
/// i % challenges, and each challenge's sends go to the three processes in
/// turn. Answers come back as (challenge, process, answer).
async fn send_at_once(
    cluster: &Processes,
    challenges: &[String],
    code: &str,
    sends: usize,
) -> Vec<(usize, usize, Answer)> {
    join_all((0..sends).map(|i| async move {
        let challenge = i % challenges.len();
        let process = (i / challenges.len()) % 3;
        let answer = cluster
            .call(
                process,
                Method::POST,
                &format!("/api/v1/login/challenges/{}/verify", challenges[challenge]),
                None,
                Some(json!({ "method": "totp", "code": code, "remember_device": false })),
            )
            .await;
        (challenge, process, answer)
    }))
    .await
}

/// Signs the enrolled user in with the password on `process`: the
/// challenge it opens.
async fn open_challenge(cluster: &Processes, process: usize, user: &Enrolled) -> String {
    let login = cluster.login(process, &user.username, &user.password).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    assert!(login.body["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("totp")));
    login.body["challenge_id"].as_str().unwrap().to_string()
}

/// Design: a code can be accepted once per user and step, and steps last
/// 30 s, so 20 rounds one after another on one user would take 10 minutes.
/// Instead each round has a user of its own (enrolled first, through
/// process 0): the 20 rounds are independent (own secret, own challenges,
/// own replay state) and all use the code of the same fresh step. A round
/// opens 6 challenges on the three processes, then — once a step begins
/// that no code of that user was accepted in — sends the step's code 60
/// times at once, spread over its challenges and over the processes. The
/// rounds overlap, five at a time, and all end within that code's validity
/// window (its step and the next, skew 1; checked). The whole test waits for
/// at most one step boundary: well under 90 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_totp_code_sent_sixty_times_at_once_is_accepted_once() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let started = Instant::now();
    let cluster = Processes::start(3).await;
    let admin = cluster.admin_token().await;
    let users = join_all((0..ROUNDS).map(|round| enroll(&cluster, &admin, round))).await;
    let enrolled = started.elapsed();

    // Each round's challenges, opened on process c % 3. Setup, not the
    // property under test: a dozen sign-ins (argon2 each) at a time.
    let opened: Vec<String> = futures::stream::iter(
        users
            .iter()
            .flat_map(|user| (0..CHALLENGES_PER_ROUND).map(move |c| (user, c))),
    )
    .map(|(user, c)| open_challenge(&cluster, c % 3, user))
    .buffered(12)
    .collect()
    .await;
    let challenges: Vec<Vec<String>> = opened
        .chunks(CHALLENGES_PER_ROUND)
        .map(<[String]>::to_vec)
        .collect();

    let opened = started.elapsed() - enrolled;

    // The code of a step that begins after every challenge was opened and
    // after every confirmation: never accepted for anyone.
    let step = users
        .iter()
        .map(|u| u.confirmed_step)
        .chain([totp_step(Utc::now())])
        .max()
        .unwrap()
        + 1;
    let step_starts = Utc.timestamp_opt(step * 30, 0).unwrap();
    let codes = join_all(users.iter().map(|u| oathtool_at(&u.secret, step_starts))).await;
    let wait = (step_starts - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20);
    tokio::time::sleep(wait).await;
    assert_eq!(totp_step(Utc::now()), step);

    let blast = Instant::now();
    let results: Vec<Vec<(usize, usize, Answer)>> =
        futures::stream::iter(challenges.iter().zip(&codes))
            .map(|(challenges, code)| send_at_once(&cluster, challenges, code, SENDS_PER_ROUND))
            .buffered(ROUNDS_AT_ONCE)
            .collect()
            .await;
    let blast_took = blast.elapsed();
    assert!(
        totp_step(Utc::now()) <= step + 1,
        "the sends outlasted the code's window ({blast_took:?}); the test can't judge replays"
    );

    let rows = stored_events(&cluster.db().await).await;
    for (round, ((user, results), challenges)) in
        users.iter().zip(&results).zip(&challenges).enumerate()
    {
        let server_errors: Vec<_> = results
            .iter()
            .filter(|(_, _, a)| a.status.is_server_error())
            .collect();
        assert!(
            server_errors.is_empty(),
            "round {round}: 5xx answers {server_errors:?}"
        );
        let accepted: Vec<_> = results
            .iter()
            .filter(|(_, _, a)| a.status == StatusCode::OK)
            .collect();
        assert_eq!(
            accepted.len(),
            1,
            "round {round}: exactly one 200 in {results:?}"
        );
        let (winner, winner_process, session) = accepted[0];
        assert_eq!(session.body["status"], "authenticated");
        let mut invalid_code = 0;
        for (challenge, process, answer) in results {
            match (answer.status, answer.error()) {
                (StatusCode::OK, _) => {}
                (StatusCode::UNAUTHORIZED, "invalid_code") => invalid_code += 1,
                // 5 wrong codes lock a challenge; 10 in a row lock the factor
                // for a minute (docs/security.md).
                (StatusCode::LOCKED, "challenge_locked" | "account_locked") => {}
                // The accepted challenge is spent.
                (StatusCode::NOT_FOUND, "not_found") if challenge == winner => {}
                _ => panic!(
                    "round {round}: challenge {challenge} ({}) on process {process}: {answer:?}",
                    challenges[*challenge]
                ),
            }
        }
        // The session works on every process.
        let token = session.body["session_token"].as_str().unwrap();
        for process in 0..3 {
            let me = cluster
                .call(process, Method::GET, "/api/v1/me", Some(token), None)
                .await;
            assert_eq!(
                me.status,
                StatusCode::OK,
                "round {round}, process {process}: {me:?}"
            );
            assert_eq!(me.body["id"], user.id.as_str());
        }
        // The store agrees: one acceptance, of this step, on the winning
        // challenge; each 401 a recorded rejection of a replayed code.
        let events: Vec<&StoredRow> = rows.iter().filter(|r| r.aggregate_id == user.id).collect();
        let of_type = |kind: &str| {
            events
                .iter()
                .filter(|r| r.event_type == kind)
                .copied()
                .collect::<Vec<_>>()
        };
        let acceptances = of_type("SecondFactorAccepted");
        assert_eq!(acceptances.len(), 1, "round {round}");
        let acceptance = &acceptances[0].payload["SecondFactorAccepted"];
        assert_eq!(acceptance["totp_step"], json!(step), "round {round}");
        assert_eq!(acceptance["challenge_id"], challenges[*winner].as_str());
        let rejections = of_type("SecondFactorRejected");
        let replays = of_type("TotpCodeReplayed");
        assert_eq!(
            rejections.len(),
            invalid_code,
            "round {round}: a rejection per 401"
        );
        assert_eq!(
            replays.len(),
            invalid_code,
            "round {round}: each rejection was a replay"
        );
        for replay in replays {
            assert_eq!(replay.payload["TotpCodeReplayed"]["step"], json!(step));
        }
        eprintln!(
            "round {round}: accepted on process {winner_process}, {invalid_code} replays refused"
        );
    }
    assert_sequences_contiguous(&rows);
    eprintln!(
        "totp: {ROUNDS} users enrolled in {enrolled:?}; {} challenges opened in {opened:?}; \
         {} sends in {blast_took:?}; test {:?}",
        ROUNDS * CHALLENGES_PER_ROUND,
        ROUNDS * SENDS_PER_ROUND,
        started.elapsed()
    );
}

/// A load balancer may send the second step of a sign-in to another process
/// than the first: the challenge is found there at once (the read models
/// live in the shared database and a write is settled before its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_opened_on_one_process_is_answered_at_once_on_another() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let cluster = Processes::start(2).await;
    let admin = cluster.admin_token().await;
    let user = enroll(&cluster, &admin, 99).await;
    for (round, code) in user.recovery_codes.iter().take(6).enumerate() {
        let (opened_on, answered_on) = (round % 2, (round + 1) % 2);
        let login = cluster
            .login(opened_on, &user.username, &user.password)
            .await;
        assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
        let challenge = login.body["challenge_id"].as_str().unwrap();
        let verified = cluster
            .call(
                answered_on,
                Method::POST,
                &format!("/api/v1/login/challenges/{challenge}/verify"),
                None,
                Some(json!({ "method": "recovery_code", "code": code, "remember_device": false })),
            )
            .await;
        assert_eq!(
            verified.status,
            StatusCode::OK,
            "round {round}: opened on {opened_on}, answered on {answered_on}: {verified:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2b. Wrong codes, many at once
// ---------------------------------------------------------------------------

/// One stored event of a user, with its place in the user's history and in
/// the global order.
struct Recorded {
    sequence: i64,
    position: i64,
    event: UserEvent,
}

/// A user's stored events in sequence order, read back as the domain's
/// events; the sequences must run 1, 2, 3 ... without a gap.
async fn user_history(db: &Db, user_id: &str) -> Vec<Recorded> {
    let rows = db
        .fetch(
            "SELECT sequence, position, CAST(payload AS TEXT) AS payload FROM events
              WHERE aggregate_id = $1 ORDER BY sequence",
            vec![user_id.into()],
        )
        .await
        .unwrap();
    let history: Vec<Recorded> = rows
        .iter()
        .map(|row| Recorded {
            sequence: row.get("sequence").unwrap(),
            position: row.get("position").unwrap(),
            event: serde_json::from_str(row.text("payload").unwrap()).unwrap(),
        })
        .collect();
    let sequences: Vec<i64> = history.iter().map(|r| r.sequence).collect();
    let expected: Vec<i64> = (1..=history.len() as i64).collect();
    assert_eq!(sequences, expected, "the history of {user_id} has gaps");
    history
}

/// Challenges opened in each round of the wrong-code test, a fresh user a
/// round: one challenge meets its own limit; two or more meet the factor's
/// back-off too.
const WRONG_CODE_CHALLENGES: [usize; 8] = [1, 2, 3, 4, 1, 2, 3, 4];
const WRONG_CODE_SENDS: usize = 60;

/// What the locks let through for `challenges` fresh challenges of a user
/// with no failures on record: five wrong codes a challenge, and none after
/// the failure that starts the factor's back-off.
fn wrong_codes_the_locks_allow(challenges: usize) -> usize {
    (challenges * policy::CHALLENGE_ATTEMPTS as usize)
        .min(policy::SECOND_FACTOR_FAILURES_BEFORE_BACKOFF as usize)
}

/// A well-formed code that none of the steps around now (±2) gives, so it
/// is wrong whenever during the round it arrives.
async fn wrong_code(secret: &str) -> String {
    let now = Utc::now();
    let around: BTreeSet<String> =
        join_all((-2..=2).map(|k| oathtool_at(secret, now + chrono::Duration::seconds(30 * k))))
            .await
            .into_iter()
            .collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|code| !around.contains(code))
        .unwrap()
}

/// Design: each round has a user of its own (a fresh factor budget),
/// enrolled through process 0, with 1 to 4 challenges opened on the three
/// processes; 60 copies of one wrong code then go out at once, spread over
/// the challenges and the processes, four rounds at a time. The store must
/// hold exactly the rejections the locks allow (5 a challenge, and none
/// after the 10th that starts the back-off), each answered 401 once with the
/// attempts left on its challenge; every other send is answered 423; then
/// the right code is refused on every challenge too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_sent_in_parallel_to_three_servers_never_exceed_the_lock() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let started = Instant::now();
    let cluster = Processes::start(3).await;
    let admin = cluster.admin_token().await;
    // Setup, two at a time: a server answers 503 to password checks beyond
    // what its hashing threads and their short queue take.
    let users: Vec<Enrolled> = futures::stream::iter(0..WRONG_CODE_CHALLENGES.len())
        .map(|round| enroll(&cluster, &admin, 100 + round))
        .buffered(2)
        .collect()
        .await;
    let challenges: Vec<Vec<String>> =
        futures::stream::iter(users.iter().zip(WRONG_CODE_CHALLENGES))
            .then(|(user, count)| {
                let cluster = &cluster;
                async move {
                    futures::stream::iter(0..count)
                        .then(|c| open_challenge(cluster, c % 3, user))
                        .collect::<Vec<_>>()
                        .await
                }
            })
            .collect()
            .await;
    let codes = join_all(users.iter().map(|user| wrong_code(&user.secret))).await;

    let blast = Instant::now();
    let results: Vec<Vec<(usize, usize, Answer)>> =
        futures::stream::iter(challenges.iter().zip(&codes))
            .map(|(challenges, code)| send_at_once(&cluster, challenges, code, WRONG_CODE_SENDS))
            .buffered(4)
            .collect()
            .await;
    let blast_took = blast.elapsed();

    let db = cluster.db().await;
    for (round, ((user, results), challenges)) in
        users.iter().zip(&results).zip(&challenges).enumerate()
    {
        let server_errors: Vec<_> = results
            .iter()
            .filter(|(_, _, a)| a.status.is_server_error())
            .collect();
        assert!(
            server_errors.is_empty(),
            "round {round}: 5xx answers {server_errors:?}"
        );

        let history = user_history(&db, &user.id).await;
        // Rejections per challenge, in the order they were stored.
        let mut stored: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        let mut failures_in_a_row = Vec::new();
        for recorded in &history {
            match &recorded.event {
                UserEvent::SecondFactorRejected {
                    challenge_id,
                    attempts_remaining,
                    consecutive_failures,
                    locked_until,
                    ..
                } => {
                    let challenge = challenges
                        .iter()
                        .position(|c| *c == challenge_id.to_string())
                        .unwrap();
                    stored
                        .entry(challenge)
                        .or_default()
                        .push(*attempts_remaining);
                    failures_in_a_row.push(*consecutive_failures);
                    assert_eq!(
                        locked_until.is_some(),
                        *consecutive_failures >= policy::SECOND_FACTOR_FAILURES_BEFORE_BACKOFF,
                        "round {round}: back-off at failure {consecutive_failures}"
                    );
                }
                UserEvent::SecondFactorAccepted { .. } => {
                    panic!("round {round}: a wrong code was accepted")
                }
                _ => {}
            }
        }
        let allowed = wrong_codes_the_locks_allow(challenges.len());
        assert_eq!(
            failures_in_a_row,
            (1..=allowed as u32).collect::<Vec<_>>(),
            "round {round}: exactly the evaluations the locks allow, counted one by one"
        );
        for (challenge, attempts) in &stored {
            let countdown: Vec<u32> = (0..policy::CHALLENGE_ATTEMPTS)
                .rev()
                .take(attempts.len())
                .collect();
            assert_eq!(attempts, &countdown, "round {round}, challenge {challenge}");
        }

        // Each 401 is one stored rejection, and tells the attempts it left.
        let mut answered: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (challenge, process, answer) in results {
            match (answer.status, answer.error()) {
                (StatusCode::UNAUTHORIZED, "invalid_code") => answered
                    .entry(*challenge)
                    .or_default()
                    .push(answer.body["attempts_remaining"].as_u64().unwrap() as u32),
                (StatusCode::LOCKED, "challenge_locked") => {}
                (StatusCode::LOCKED, "account_locked") => assert!(
                    answer.headers.contains_key("retry-after"),
                    "round {round}: {answer:?}"
                ),
                _ => {
                    panic!("round {round}: challenge {challenge} on process {process}: {answer:?}")
                }
            }
        }
        for attempts in answered.values_mut() {
            attempts.sort_unstable_by(|a, b| b.cmp(a));
        }
        assert_eq!(
            answered, stored,
            "round {round}: the 401s and the stored rejections"
        );

        // The right code now: refused on every challenge, and not recorded.
        let code = oathtool_at(&user.secret, Utc::now()).await;
        for (c, challenge) in challenges.iter().enumerate() {
            let answer = cluster
                .call(
                    c % 3,
                    Method::POST,
                    &format!("/api/v1/login/challenges/{challenge}/verify"),
                    None,
                    Some(json!({ "method": "totp", "code": code, "remember_device": false })),
                )
                .await;
            let spent = stored.get(&c).map_or(0, Vec::len) == policy::CHALLENGE_ATTEMPTS as usize;
            let expected = if spent {
                "challenge_locked"
            } else {
                "account_locked"
            };
            assert_eq!(
                (answer.status, answer.error()),
                (StatusCode::LOCKED, expected),
                "round {round}: the right code on challenge {c}: {answer:?}"
            );
        }
        assert_eq!(
            user_history(&db, &user.id).await.len(),
            history.len(),
            "round {round}: a refused right code records nothing"
        );

        // A new sign-in offers TOTP again only if the factor is not backing off.
        let login = cluster
            .login(round % 3, &user.username, &user.password)
            .await;
        assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
        let backing_off = allowed as u32 >= policy::SECOND_FACTOR_FAILURES_BEFORE_BACKOFF;
        let expected_methods = if backing_off {
            json!(["recovery_code"])
        } else {
            json!(["totp", "recovery_code"])
        };
        assert_eq!(
            login.body["methods"], expected_methods,
            "round {round}: {login:?}"
        );
        eprintln!(
            "round {round}: {} challenges, {WRONG_CODE_SENDS} wrong codes: {allowed} evaluated, {} answered 423",
            challenges.len(),
            WRONG_CODE_SENDS - allowed
        );
    }
    eprintln!(
        "wrong codes: {} sends in {blast_took:?}; test {:?}",
        WRONG_CODE_CHALLENGES.len() * WRONG_CODE_SENDS,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2c. Administrators at once: enforce, lift, "Login as"
// ---------------------------------------------------------------------------

/// One request of the administrators' round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Enforce,
    Lift,
    /// "Login as" by administrator 0 (the super admin) or 1 (an admin).
    LoginAs(usize),
    /// Ends the n-th "Login as" opened before the round; each is sent twice,
    /// to two processes.
    EndLoginAs(usize),
    /// The user signs in with the password.
    SignIn,
}

const ADMIN_ROUNDS: usize = 3;
const ENFORCEMENTS_PER_ROUND: usize = 16;
const LOGINS_AS_PER_ROUND: usize = 8;
const ENDS_PER_ROUND: usize = 8;
const SIGN_INS_PER_ROUND: usize = 6;

/// A round's requests, each with the process it goes to: kinds
/// interleaved, the n-th request of each kind on process n % 3 (the twin
/// of an end on the next one), so every process sees every kind.
fn administrators_round() -> Vec<(Act, usize)> {
    let mut acts = Vec::new();
    for n in 0..ENFORCEMENTS_PER_ROUND {
        acts.push((Act::Enforce, n % 3));
        acts.push((Act::Lift, (n + 1) % 3));
        if n < LOGINS_AS_PER_ROUND {
            acts.push((Act::LoginAs(n % 2), (n + 2) % 3));
        }
        if n < ENDS_PER_ROUND {
            acts.push((Act::EndLoginAs(n), n % 3));
            acts.push((Act::EndLoginAs(n), (n + 1) % 3));
        }
        if n < SIGN_INS_PER_ROUND {
            acts.push((Act::SignIn, n % 3));
        }
    }
    acts
}

const HELPED: (&str, &str) = ("helped", "helped-password");

/// "Login as" the user: the session token.
async fn login_as(cluster: &Processes, process: usize, admin: &str, user_id: &str) -> Answer {
    cluster
        .call(
            process,
            Method::POST,
            &format!("/api/v1/users/{user_id}/impersonation"),
            Some(admin),
            Some(json!({ "reason": "the user asked for help", "ticket": "HELP-1" })),
        )
        .await
}

async fn perform(
    cluster: &Processes,
    process: usize,
    act: Act,
    admins: &[String; 2],
    user_id: &str,
    to_end: &[String],
) -> Answer {
    let user_path = format!("/api/v1/users/{user_id}");
    let enforce = |enforce: bool| {
        cluster.call(
            process,
            Method::PATCH,
            &user_path,
            Some(&admins[0]),
            Some(json!({ "enforce_two_factor": enforce, "reason": "policy review" })),
        )
    };
    match act {
        Act::Enforce => enforce(true).await,
        Act::Lift => enforce(false).await,
        Act::LoginAs(admin) => login_as(cluster, process, &admins[admin], user_id).await,
        Act::EndLoginAs(n) => {
            cluster
                .call(
                    process,
                    Method::DELETE,
                    "/api/v1/impersonation",
                    Some(&to_end[n]),
                    None,
                )
                .await
        }
        Act::SignIn => cluster.login(process, HELPED.0, HELPED.1).await,
    }
}

/// The user as the fold of its stored events says it ends.
#[derive(Debug, Default)]
struct Folded {
    enforced: bool,
    /// Whether 2FA was enforced after each sequence number (0: before the
    /// first event).
    enforced_after: Vec<bool>,
    /// Open "Login as" sessions: session id -> administrator.
    logins_as: BTreeMap<Uuid, Uuid>,
}

/// Folds the history in sequence order, checking on the way that each
/// event was decided on the state before it: an enforcement only when not
/// enforced, a lift only when enforced, an end only of an open "Login as",
/// each "Login as" with its session, each sign-in held on enrollment exactly
/// when 2FA was enforced.
fn fold_administration(history: &[Recorded]) -> Folded {
    let mut folded = Folded {
        enforced_after: vec![false],
        ..Folded::default()
    };
    for (index, recorded) in history.iter().enumerate() {
        let at = recorded.sequence;
        match &recorded.event {
            UserEvent::TwoFactorEnforced { .. } => {
                assert!(!folded.enforced, "sequence {at}: enforced twice in a row");
                folded.enforced = true;
            }
            UserEvent::TwoFactorEnforcementLifted { .. } => {
                assert!(folded.enforced, "sequence {at}: lifted while not enforced");
                folded.enforced = false;
            }
            UserEvent::ImpersonationStarted {
                impersonator_id,
                session_id,
                ..
            } => {
                let session = history.get(index + 1).map(|next| &next.event);
                assert!(
                    matches!(session, Some(UserEvent::SessionStarted {
                        session_id: started,
                        authenticated_by: AuthenticatedBy::Impersonation,
                        impersonator_id: Some(by),
                        ..
                    }) if started == session_id && by == impersonator_id),
                    "sequence {at}: \"Login as\" without its session: {session:?}"
                );
                folded.logins_as.insert(*session_id, *impersonator_id);
            }
            UserEvent::ImpersonationEnded { session_id, .. } => {
                assert!(
                    folded.logins_as.remove(session_id).is_some(),
                    "sequence {at}: ended a \"Login as\" that was not open"
                );
            }
            UserEvent::SessionStarted {
                authenticated_by: AuthenticatedBy::Password,
                enrollment_required,
                ..
            } => assert_eq!(
                *enrollment_required, folded.enforced,
                "sequence {at}: a sign-in held on enrollment iff enforced"
            ),
            _ => {}
        }
        folded.enforced_after.push(folded.enforced);
    }
    folded
}

/// The user's last sequence number now.
async fn last_sequence(db: &Db, user_id: &str) -> i64 {
    db.fetch_optional(
        "SELECT coalesce(max(sequence), 0) AS last FROM events WHERE aggregate_id = $1",
        vec![user_id.into()],
    )
    .await
    .unwrap()
    .unwrap()
    .get("last")
    .unwrap()
}

fn token_hash(token: &str) -> String {
    TokenHash::of(token).as_str().to_string()
}

/// Design: one plain user, the super admin and an admin on three
/// processes. Each round first opens eight "Login as" sessions, then sends
/// at once 16 enforcements, 16 lifts (super admin), 8 new "Login as" (both
/// administrators), 8 ends of the earlier ones each sent twice to two
/// processes, and 6 sign-ins of the user, spread over the processes. Then:
/// the user's history has no gap and folds without contradiction (every
/// event decided on the state before it); every 2xx answer names, by its
/// `Twofold-Position`, exactly the stored event(s) it caused (the token's
/// hash, the administrator, the enforcement asked for) and every stored
/// event has its answer; and every process shows the folded state: the
/// user row, the search, the report's counters, which "Login as" sessions
/// still work and whether the user's sessions are held on enrollment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enforce_lift_and_impersonate_end_in_the_state_the_event_order_gives() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let started = Instant::now();
    let cluster = Processes::start(3).await;
    let super_admin = cluster.admin_token().await;
    let create = |username: &str, password: &str, role: &str| {
        cluster.call(
            0,
            Method::POST,
            "/api/v1/users",
            Some(&super_admin),
            Some(json!({ "username": username, "password": password, "role": role })),
        )
    };
    let created = create("helper", "helper-password", "admin").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let created = create(HELPED.0, HELPED.1, "user").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let user_id = created.body["id"].as_str().unwrap().to_string();
    let helper = cluster.login(1, "helper", "helper-password").await;
    let admins = [
        super_admin.clone(),
        helper.body["session_token"].as_str().unwrap().to_string(),
    ];
    let mut admin_ids = Vec::new();
    for token in &admins {
        let me = cluster
            .call(2, Method::GET, "/api/v1/me", Some(token), None)
            .await;
        admin_ids.push(Uuid::parse_str(me.body["id"].as_str().unwrap()).unwrap());
    }
    let db = cluster.db().await;
    // Every "Login as" token so far, with its administrator.
    let mut logins_as: Vec<(String, usize)> = Vec::new();

    for round in 0..ADMIN_ROUNDS {
        let to_end: Vec<String> = join_all((0..ENDS_PER_ROUND).map(|n| {
            let (cluster, admins, user_id) = (&cluster, &admins, &user_id);
            async move {
                let answer = login_as(cluster, n % 3, &admins[n % 2], user_id).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
                answer.body["session_token"].as_str().unwrap().to_string()
            }
        }))
        .await;
        logins_as.extend(
            to_end
                .iter()
                .cloned()
                .zip((0..ENDS_PER_ROUND).map(|n| n % 2)),
        );
        let before = user_history(&db, &user_id).await;
        let since = before.last().unwrap().sequence;

        let (acts, processes): (Vec<Act>, Vec<usize>) = administrators_round().into_iter().unzip();
        let blast = Instant::now();
        // All at once, each after a random pause of up to two seconds, so
        // that enforcements and lifts arrive in a different order each round.
        // Each answer with the user's last sequence before it was sent and
        // after it came back: what it did must have happened in between.
        let (answers, windows): (Vec<Answer>, Vec<(i64, i64)>) =
            join_all(acts.iter().zip(&processes).map(|(act, process)| {
                let (cluster, admins, user_id, to_end, db) =
                    (&cluster, &admins, &user_id, &to_end, &db);
                async move {
                    tokio::time::sleep(Duration::from_millis(random_millis(2000))).await;
                    let sent = last_sequence(db, user_id).await;
                    let answer = perform(cluster, *process, *act, admins, user_id, to_end).await;
                    (answer, (sent, last_sequence(db, user_id).await))
                }
            }))
            .await
            .into_iter()
            .unzip();
        let blast_took = blast.elapsed();

        let server_errors: Vec<_> = answers
            .iter()
            .filter(|a| a.status.is_server_error())
            .collect();
        assert!(
            server_errors.is_empty(),
            "round {round}: 5xx answers {server_errors:?}"
        );
        let history = user_history(&db, &user_id).await;
        let folded = fold_administration(&history);
        let by_position: BTreeMap<i64, &Recorded> = history
            .iter()
            .map(|recorded| (recorded.position, recorded))
            .collect();
        let session_of = |token: &str| {
            let hash = token_hash(token);
            history
                .iter()
                .find_map(|recorded| match &recorded.event {
                    UserEvent::SessionStarted {
                        session_id,
                        token_hash,
                        ..
                    } if token_hash.as_str() == hash => Some(*session_id),
                    _ => None,
                })
                .expect("the token's session is stored")
        };

        // Every answer against the event at its position; each stored event
        // of the round claimed by exactly one answer.
        let mut claimed: BTreeMap<i64, usize> = BTreeMap::new();
        let mut claim = |position: i64, request: usize| {
            let earlier = claimed.insert(position, request);
            assert!(
                earlier.is_none(),
                "position {position} claimed by requests {earlier:?} and {request}"
            );
        };
        let mut ended: BTreeMap<usize, usize> = BTreeMap::new();
        let mut unchanged = 0;
        for (request, ((act, answer), (sent, answered))) in
            acts.iter().zip(&answers).zip(&windows).enumerate()
        {
            let context = format!(
                "round {round}, request {request} ({act:?}, between sequences {sent} and {answered}): {answer:?}"
            );
            let stored = answer.position().map(|p| {
                let recorded = by_position
                    .get(&p)
                    .unwrap_or_else(|| panic!("nothing of the user at {p}: {context}"));
                assert!(
                    (sent + 1..=*answered).contains(&recorded.sequence),
                    "{context}: stored at sequence {}, outside the request's lifetime",
                    recorded.sequence
                );
                recorded
            });
            match act {
                Act::Enforce | Act::Lift => {
                    assert_eq!(answer.status, StatusCode::OK, "{context}");
                    assert_eq!(answer.body["id"], user_id.as_str(), "{context}");
                    match stored {
                        // Nothing to store: the user was already so at some
                        // moment while the request ran.
                        None => {
                            let asked = *act == Act::Enforce;
                            let states =
                                &folded.enforced_after[*sent as usize..=*answered as usize];
                            assert!(
                                states.contains(&asked),
                                "{context}: changed nothing, yet enforced went {states:?} meanwhile"
                            );
                            unchanged += 1;
                        }
                        Some(recorded) => {
                            let matches = match act {
                                Act::Enforce => {
                                    matches!(recorded.event, UserEvent::TwoFactorEnforced { .. })
                                }
                                _ => matches!(
                                    recorded.event,
                                    UserEvent::TwoFactorEnforcementLifted { .. }
                                ),
                            };
                            assert!(matches, "{context}: stored {:?}", recorded.event);
                            claim(recorded.position, request);
                        }
                    }
                }
                Act::LoginAs(admin) => {
                    assert_eq!(answer.status, StatusCode::CREATED, "{context}");
                    let token = answer.body["session_token"].as_str().unwrap();
                    let recorded = stored.expect("a \"Login as\" answer carries its position");
                    let UserEvent::SessionStarted {
                        session_id,
                        token_hash: stored_hash,
                        impersonator_id,
                        ..
                    } = &recorded.event
                    else {
                        panic!("{context}: stored {:?}", recorded.event);
                    };
                    assert_eq!(stored_hash.as_str(), token_hash(token), "{context}");
                    assert_eq!(*impersonator_id, Some(admin_ids[*admin]), "{context}");
                    let opening = &history[(recorded.sequence - 2) as usize];
                    assert!(
                        matches!(&opening.event, UserEvent::ImpersonationStarted { session_id: opened, .. } if opened == session_id),
                        "{context}: opened by {:?}",
                        opening.event
                    );
                    claim(opening.position, request);
                    claim(recorded.position, request);
                    logins_as.push((token.to_string(), *admin));
                }
                Act::EndLoginAs(n) => match (answer.status, answer.error()) {
                    (StatusCode::NO_CONTENT, _) => {
                        let recorded = stored.expect("an end answer carries its position");
                        let expected = session_of(&to_end[*n]);
                        assert!(
                            matches!(&recorded.event, UserEvent::ImpersonationEnded { session_id, .. } if *session_id == expected),
                            "{context}: stored {:?}",
                            recorded.event
                        );
                        claim(recorded.position, request);
                        *ended.entry(*n).or_default() += 1;
                    }
                    // The twin got there first: the token is gone, or its
                    // "Login as" already ended when this one was decided.
                    (StatusCode::UNAUTHORIZED, "unauthenticated")
                    | (StatusCode::NOT_FOUND, "not_found") => {
                        assert!(stored.is_none(), "{context}");
                    }
                    _ => panic!("{context}"),
                },
                Act::SignIn => {
                    assert_eq!(answer.status, StatusCode::OK, "{context}");
                    let token = answer.body["session_token"].as_str().unwrap();
                    let recorded = stored.expect("a sign-in answer carries its position");
                    let UserEvent::SessionStarted {
                        token_hash: stored_hash,
                        authenticated_by,
                        enrollment_required,
                        ..
                    } = &recorded.event
                    else {
                        panic!("{context}: stored {:?}", recorded.event);
                    };
                    assert_eq!(stored_hash.as_str(), token_hash(token), "{context}");
                    assert_eq!(*authenticated_by, AuthenticatedBy::Password, "{context}");
                    let held = answer.body["status"] == "enrollment_required";
                    assert_eq!(*enrollment_required, held, "{context}");
                    claim(recorded.position, request);
                }
            }
        }
        assert_eq!(
            ended,
            (0..ENDS_PER_ROUND)
                .map(|n| (n, 1))
                .collect::<BTreeMap<_, _>>(),
            "round {round}: each \"Login as\" ended exactly once"
        );
        let round_positions: Vec<i64> = history
            .iter()
            .filter(|recorded| recorded.sequence > since)
            .map(|recorded| recorded.position)
            .collect();
        assert_eq!(
            claimed.keys().copied().collect::<Vec<_>>(),
            round_positions,
            "round {round}: every stored event has exactly one answer"
        );

        // Every process shows the folded state.
        let last = history.last().unwrap().position;
        let enforced_count = i64::from(folded.enforced);
        for process in 0..3 {
            let context = format!("round {round}, process {process}, folded {folded:?}");
            let get = |path: String, token: &str| {
                let token = token.to_string();
                let cluster = &cluster;
                async move {
                    cluster
                        .call(process, Method::GET, &path, Some(&token), None)
                        .await
                }
            };
            let search = get(
                format!("/api/v1/users?q={}&min_position={last}", HELPED.0),
                &super_admin,
            )
            .await;
            assert_eq!(search.status, StatusCode::OK, "{context}: {search:?}");
            let row = &search.body["users"][0];
            assert_eq!(row["id"], user_id.as_str(), "{context}: {search:?}");
            assert_eq!(row["enforced"], folded.enforced, "{context}: {search:?}");
            assert_eq!(
                row["two_factor_status"], "disabled",
                "{context}: {search:?}"
            );
            let enforced_only = get(
                format!("/api/v1/users?enforced=true&min_position={last}"),
                &super_admin,
            )
            .await;
            assert_eq!(
                enforced_only.body["users"].as_array().unwrap().len() as i64,
                enforced_count,
                "{context}: {enforced_only:?}"
            );
            let shown = get(format!("/api/v1/users/{user_id}"), &super_admin).await;
            assert_eq!(
                shown.body["enforced"], folded.enforced,
                "{context}: {shown:?}"
            );
            let report = get(
                format!("/api/v1/reports/two-factor?min_position={last}"),
                &super_admin,
            )
            .await;
            assert_eq!(
                report.body["enforced"], enforced_count,
                "{context}: {report:?}"
            );
            assert_eq!(
                report.body["enforced_not_enabled"], enforced_count,
                "{context}: {report:?}"
            );
            assert_eq!(report.body["total"], 3, "{context}: {report:?}");

            for (token, admin) in &logins_as {
                let me = get("/api/v1/me".to_string(), token).await;
                if folded.logins_as.get(&session_of(token)) == Some(&admin_ids[*admin]) {
                    assert_eq!(me.status, StatusCode::OK, "{context}: {me:?}");
                    assert_eq!(
                        me.body["impersonator"]["id"],
                        admin_ids[*admin].to_string(),
                        "{context}"
                    );
                } else {
                    assert_eq!(
                        me.status,
                        StatusCode::UNAUTHORIZED,
                        "{context}: an ended \"Login as\": {me:?}"
                    );
                }
            }
            // Whether a session is held on enrollment follows the state now,
            // whatever it was when the session started.
            for (act, answer) in acts.iter().zip(&answers) {
                if *act != Act::SignIn {
                    continue;
                }
                let token = answer.body["session_token"].as_str().unwrap();
                let devices = get("/api/v1/me/remembered-devices".to_string(), token).await;
                if folded.enforced {
                    assert_eq!(
                        (devices.status, devices.error()),
                        (StatusCode::FORBIDDEN, "two_factor_enrollment_required"),
                        "{context}: {devices:?}"
                    );
                } else {
                    assert_eq!(devices.status, StatusCode::OK, "{context}: {devices:?}");
                }
            }
        }
        let stored = |kind: fn(&UserEvent) -> bool| {
            history
                .iter()
                .filter(|r| r.sequence > since && kind(&r.event))
                .count()
        };
        eprintln!(
            "administrators, round {round}: {} requests in {blast_took:?}; stored {} enforcements, {} lifts, \
             {} \"Login as\", {} ends, {} sign-ins; {unchanged} enforcement requests changed nothing; the user ends enforced: {}",
            acts.len(),
            stored(|e| matches!(e, UserEvent::TwoFactorEnforced { .. })),
            stored(|e| matches!(e, UserEvent::TwoFactorEnforcementLifted { .. })),
            stored(|e| matches!(e, UserEvent::ImpersonationStarted { .. })),
            stored(|e| matches!(e, UserEvent::ImpersonationEnded { .. })),
            stored(|e| matches!(e, UserEvent::SessionStarted { authenticated_by: AuthenticatedBy::Password, .. })),
            folded.enforced,
        );
    }
    eprintln!("administrators: test {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 3. Read models and delayed commits
// ---------------------------------------------------------------------------

/// The user directory, every column as text, in user id order.
async fn directory_rows(db: &Db) -> Vec<Vec<Option<String>>> {
    let rows = db
        .fetch(
            "SELECT user_id, username, email, email_key, role, two_factor_status,
                    CAST(enforced AS TEXT), CAST(enabled_at AS TEXT),
                    CAST(last_login_at AS TEXT), CAST(registered_at AS TEXT)
               FROM user_directory ORDER BY user_id",
            vec![],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| (0..10).map(|i| row.get_at(i).unwrap()).collect())
        .collect()
}

async fn checkpoint(db: &Db) -> Option<(i64, i64)> {
    db.fetch_optional(
        "SELECT transaction_id, position FROM projection_checkpoints WHERE name = 'read_models'",
        vec![],
    )
    .await
    .unwrap()
    .map(|row| {
        (
            row.get("transaction_id").unwrap(),
            row.get("position").unwrap(),
        )
    })
}

/// Inserts one `UserRegistered` the way the app stores it, in a transaction
/// that waits `delay` before it commits.
async fn insert_registration(
    db: &Db,
    template: &(Value, Value),
    user_id: Uuid,
    username: &str,
    delay: Duration,
) {
    let (mut payload, metadata) = template.clone();
    let registered = &mut payload["UserRegistered"];
    registered["user_id"] = json!(user_id);
    registered["username"] = json!(username);
    registered["email"] = Value::Null;
    registered["role"] = json!("user");
    registered["registered_at"] = json!(Utc::now());
    // COPY on PostgreSQL reads the JSON texts into `jsonb`.
    let mut tx = db.begin_write().await.unwrap();
    tx.load(
        "events",
        &twofold_store::EVENT_COLUMNS,
        vec![twofold_store::event_row(
            &user_id.to_string(),
            1,
            "UserRegistered",
            payload.to_string(),
            metadata.to_string(),
        )],
        false,
    )
    .await
    .unwrap();
    tokio::time::sleep(delay).await;
    tx.commit().await.unwrap();
}

async fn read_models_see_every_event_even_when_commits_are_delayed(backend: Backend) {
    // The app creates the schema and writes a registration to copy.
    let app = spawn_app(backend).await;
    let db = open_db(&app.database_url).await;
    let template = db
        .fetch_optional(
            "SELECT CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata
               FROM events WHERE event_type = 'UserRegistered' ORDER BY sequence LIMIT 1",
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    let template: (Value, Value) = (
        serde_json::from_str(template.text("payload").unwrap()).unwrap(),
        serde_json::from_str(template.text("metadata").unwrap()).unwrap(),
    );
    let existing: BTreeSet<String> = directory_rows(&db)
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    assert!(!existing.is_empty());

    // SQLite serialises writers, so each delay holds everyone up: fewer there.
    let (writers, per_writer) = match backend {
        Backend::Postgres => (8, 30),
        Backend::Sqlite => (8, 5),
    };
    let projector = Projector::new(db.clone()).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    // The app's own poller catches up meanwhile too: two projectors share
    // the checkpoint.
    let reader = {
        let projector = Arc::clone(&projector);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut rounds = 0u64;
            let mut last = projector.applied();
            while !done.load(Ordering::SeqCst) {
                projector.catch_up().await.unwrap();
                let applied = projector.applied();
                assert!(
                    applied >= last,
                    "the checkpoint went back: {last:?} -> {applied:?}"
                );
                last = applied;
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(random_millis(10))).await;
            }
            rounds
        })
    };
    let started = Instant::now();
    let inserted: Vec<Vec<Uuid>> = join_all((0..writers).map(|writer| {
        let db = db.clone();
        let template = template.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..per_writer {
                let id = Uuid::new_v4();
                let delay = Duration::from_millis(random_millis(200));
                insert_registration(&db, &template, id, &format!("delayed-{writer}-{n}"), delay)
                    .await;
                ids.push(id);
            }
            ids
        })
    }))
    .await
    .into_iter()
    .map(|ids| ids.unwrap())
    .collect();
    done.store(true, Ordering::SeqCst);
    let rounds = reader.await.unwrap();
    let writing = started.elapsed();
    projector.catch_up().await.unwrap();

    let inserted: BTreeSet<String> = inserted
        .into_iter()
        .flatten()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(inserted.len(), writers * per_writer);
    let after: BTreeSet<String> = directory_rows(&db)
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    let missing: Vec<&String> = inserted
        .union(&existing)
        .filter(|id| !after.contains(*id))
        .collect();
    assert!(missing.is_empty(), "never applied: {missing:?}");
    assert_eq!(after.len(), inserted.len() + existing.len());

    // Stop the app's poller, then: a projector restarted from the checkpoint
    // has nothing to do, and a rebuild comes to the same rows. The app's
    // directory (the SQLite file) stays until the test ends: a new
    // connection must still find the file.
    let _files = app.stop_keeping_files().await;
    projector.catch_up().await.unwrap();
    let before = directory_rows(&db).await;
    let position = checkpoint(&db).await;
    let restarted = Projector::new(db.clone()).await.unwrap();
    assert_eq!(
        checkpoint(&db).await,
        position,
        "the restart applied something"
    );
    assert_eq!(restarted.catch_up().await.unwrap(), 0);
    assert_eq!(restarted.applied(), projector.applied());
    assert_eq!(directory_rows(&db).await, before);
    let events: i64 = db
        .fetch_optional(
            "SELECT count(*) AS events FROM events WHERE aggregate_type = 'user'",
            vec![],
        )
        .await
        .unwrap()
        .unwrap()
        .get("events")
        .unwrap();
    let rebuilt = restarted.rebuild(|_| {}).await.unwrap();
    assert_eq!(rebuilt, u64::try_from(events).unwrap());
    assert_eq!(
        directory_rows(&db).await,
        before,
        "a rebuild gives the same rows"
    );
    assert_eq!(checkpoint(&db).await, position);
    eprintln!(
        "{backend:?}: {} delayed inserts by {writers} writers in {writing:?}, {rounds} catch-up rounds meanwhile",
        inserted.len()
    );
}

// ---------------------------------------------------------------------------
// 4. Two servers, one database
// ---------------------------------------------------------------------------

async fn two_servers_on_one_database_retry_conflicting_commands(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = twofold_api::start(twofold_api::ServeConfig {
        database_url: first.database_url.clone(),
        database_max_connections: 4,
        mail: twofold_api::MailConfig {
            smtp_url: None,
            directory: first.dir.path().join("mail-of-the-second-server"),
            from: "twofold <no-reply@localhost>".into(),
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        master_key_file: first.dir.path().join("master.key"),
        settings: default_settings(),
        bootstrap_admin: None,
        clock: first.clock.clone(),
        connections: twofold_api::ConnectionLimits::default(),
        trusted_proxies: twofold_api::TrustedProxies::default(),
        metrics_listen: None,
        audit_signing_key_file: None,
        audit_checkpoint_every: None,
    })
    .await
    .expect("a second server on the same database starts");
    let bases = [first.base.clone(), format!("http://{}", second.addr)];
    let id = first.create_user("gus", "gus-password", None, "user").await;
    let admin = first.admin_token().await;

    let answers = join_all((0..20).map(|n| {
        let base = &bases[n % 2];
        let path = format!("/api/v1/users/{id}");
        let admin = admin.as_str();
        let client = &first.client;
        async move {
            call(
                client,
                base,
                Method::PATCH,
                &path,
                Some(admin),
                Some(json!({ "email": format!("gus{n}@example.com") })),
            )
            .await
        }
    }))
    .await;
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "change {n} on server {}: {answer:?}",
            n % 2
        );
        // Its own change, or one stored after it.
        let shown = answer.body["email"].as_str().unwrap();
        assert!(shown.starts_with("gus"), "{answer:?}");
    }

    let db = open_db(&first.database_url).await;
    let rows = stored_events(&db).await;
    assert_sequences_contiguous(&rows);
    let history: Vec<&StoredRow> = rows.iter().filter(|r| r.aggregate_id == id).collect();
    let changes: Vec<&str> = history
        .iter()
        .filter(|r| r.event_type == "EmailChanged")
        .map(|r| r.payload["EmailChanged"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(changes.len(), 20, "every change stored exactly once");
    let distinct: BTreeSet<&str> = changes.iter().copied().collect();
    assert_eq!(distinct.len(), 20);
    assert_eq!(history.len(), 21);
    assert_eq!(history.last().unwrap().sequence, 21);

    // Both servers come to show the last change stored.
    let last = *changes.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    for base in &bases {
        loop {
            let shown = call(
                &first.client,
                base,
                Method::GET,
                &format!("/api/v1/users/{id}"),
                Some(&admin),
                None,
            )
            .await;
            if shown.body["email"] == last {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base} shows {shown:?}, not {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    second.stop().await.unwrap();
    first.stop().await;
}

/// The value of one series (`name{labels}` as the exposition writes it) in
/// a Prometheus text exposition; 0 when absent.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

async fn scrape(cluster: &Processes) -> String {
    let answer = cluster
        .client
        .get(format!("{}/metrics", cluster.bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer.text().await.unwrap()
}

/// Design: one process of its own (the counters are per process), a
/// scripted mix of sign-ins, and the exposition parsed before and after:
/// every family declared, each outcome there from the start at 0, and
/// each counter moved by exactly what the mix did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sign_ins_second_factors_and_lockouts_by_outcome() {
    let _one_at_a_time = MULTI_PROCESS.lock().await;
    let cluster = Processes::start(1).await;
    let before = scrape(&cluster).await;
    for (family, kind) in [
        ("twofold_sign_ins_total", "counter"),
        ("twofold_second_factor_checks_total", "counter"),
        ("twofold_lockouts_total", "counter"),
        ("twofold_emails_total", "counter"),
        ("twofold_projection_lag_events", "gauge"),
        ("twofold_build_info", "gauge"),
        ("twofold_http_requests_total", "counter"),
        ("twofold_http_request_seconds", "histogram"),
        ("twofold_db_connections", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(
            before.contains(&format!("# HELP {family} ")),
            "{family}:\n{before}"
        );
        assert!(
            before.contains(&format!("# TYPE {family} {kind}\n")),
            "{family}:\n{before}"
        );
    }
    assert!(
        before.contains("twofold_http_request_seconds_bucket{"),
        "{before}"
    );
    let invalid = r#"twofold_sign_ins_total{outcome="invalid_credentials"}"#;
    assert!(before.contains(&format!("{invalid} 0\n")), "{before}");
    let version = format!(
        r#"twofold_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&before, &version), 1.0);

    let admin = cluster.admin_token().await;
    let user = enroll(&cluster, &admin, 0).await;
    assert_eq!(
        cluster
            .login(0, &user.username, "wrong password")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        cluster
            .login(0, "nobody-by-that-name", "a password")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // One wrong code, then a recovery code (the enrollment's TOTP step is
    // spent: its code would be a replay).
    let verify = |challenge: String, method: &'static str, code: String| {
        let cluster = &cluster;
        async move {
            cluster
                .call(
                    0,
                    Method::POST,
                    &format!("/api/v1/login/challenges/{challenge}/verify"),
                    None,
                    Some(json!({ "method": method, "code": code, "remember_device": false })),
                )
                .await
                .status
        }
    };
    let wrong = wrong_code(&user.secret).await;
    let challenge = open_challenge(&cluster, 0, &user).await;
    assert_eq!(
        verify(challenge.clone(), "totp", wrong.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let recovery = user.recovery_codes[0].clone();
    assert_eq!(
        verify(challenge, "recovery_code", recovery).await,
        StatusCode::OK
    );
    // A challenge locked by its wrong codes.
    let challenge = open_challenge(&cluster, 0, &user).await;
    for _ in 0..policy::CHALLENGE_ATTEMPTS {
        assert_eq!(
            verify(challenge.clone(), "totp", wrong.clone()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // An account locked by wrong passwords.
    let created = cluster
        .call(
            0,
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({ "username": "locked-out", "password": "locked-out-password" })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    for _ in 0..policy::PASSWORD_FAILURES_BEFORE_LOCK {
        assert_eq!(
            cluster
                .login(0, "locked-out", "wrong password")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        cluster
            .login(0, "locked-out", "locked-out-password")
            .await
            .status,
        StatusCode::LOCKED
    );

    let after = scrape(&cluster).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    let sign_ins =
        |outcome: &str| moved(&format!(r#"twofold_sign_ins_total{{outcome="{outcome}"}}"#));
    assert_eq!(
        sign_ins("authenticated"),
        2.0,
        "the admin and the user before enrolling"
    );
    assert_eq!(sign_ins("second_factor_required"), 2.0);
    let wrong_passwords = 2.0 + f64::from(policy::PASSWORD_FAILURES_BEFORE_LOCK);
    assert_eq!(sign_ins("invalid_credentials"), wrong_passwords);
    assert_eq!(sign_ins("locked"), 1.0);
    let checks = |method: &str, outcome: &str| {
        moved(&format!(
            r#"twofold_second_factor_checks_total{{method="{method}",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(
        checks("totp", "rejected"),
        1.0 + f64::from(policy::CHALLENGE_ATTEMPTS)
    );
    assert_eq!(checks("recovery_code", "accepted"), 1.0);
    assert_eq!(checks("totp", "accepted"), 0.0);
    let lockouts = |kind: &str| moved(&format!(r#"twofold_lockouts_total{{kind="{kind}"}}"#));
    assert_eq!(lockouts("challenge"), 1.0);
    assert_eq!(lockouts("password"), 1.0);
    assert_eq!(lockouts("second_factor"), 0.0);
    assert_eq!(sample(&after, "twofold_projection_lag_events"), 0.0);
    assert!(
        sample(&after, "process_resident_memory_bytes") > 0.0,
        "{after}"
    );
    let connections = sample(&after, r#"twofold_db_connections{state="in_use"}"#)
        + sample(&after, r#"twofold_db_connections{state="idle"}"#);
    assert!(connections >= 1.0, "{after}");
    let answered = r#"twofold_http_request_seconds_count{route="/api/v1/login"}"#;
    assert!(moved(answered) >= wrong_passwords + 5.0, "{after}");
}
