//! Wiring: the router, its middleware, start-up and graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use twofold_app::mail::Mailer;
use twofold_app::{passwords, App, AppError, Clock, RelyingParty, Settings};
use twofold_domain::checkpoint::AuditSigningKey;
use twofold_domain::totp::{TotpAlgorithm, TotpParameters};
use twofold_domain::TwoFactorPolicy;
use twofold_projections::{Db, Projector, ReadModels};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_docs;
use crate::client_address::TrustedProxies;
use crate::config::{CheckpointInterval, ServeArgs, TotpHash};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::new_files::NewFiles;
use crate::openapi as doc;
use crate::routes::{audit, checkpoints, history, login, me, ops, passkeys, reports, users};
use crate::serve::{self, ConnectionLimits};
use crate::state::AppState;
use twofold_app::clock::SystemClock;
use twofold_store::{EventStore, SecretVault};

const BODY_LIMIT: usize = 64 * 1024;
/// Where the JSON API lives.
const API_PREFIX: &str = "/api/v1";
/// How often a process picks up what other processes wrote.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Every API route, each registered through `routes!` from its handler's
/// `#[utoipa::path]` (which names the path and method), so the router and
/// the OpenAPI document are one list. Add API routes here only this way:
/// `tests/e2e/openapi.rs` fails on a plain axum route call in this file.
fn documented() -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(login::login))
        .routes(routes!(login::verify))
        .routes(routes!(login::send_email_code))
        .routes(routes!(login::logout))
        .routes(routes!(passkeys::challenge_options))
        .routes(routes!(passkeys::start_sign_in))
        .routes(routes!(passkeys::finish_sign_in))
        .routes(routes!(passkeys::start_registration, passkeys::list))
        .routes(routes!(
            passkeys::finish_registration,
            passkeys::rename,
            passkeys::remove
        ))
        .routes(routes!(me::me))
        .routes(routes!(me::change_password))
        .routes(routes!(me::disable_two_factor))
        .routes(routes!(me::start_totp_enrollment))
        .routes(routes!(me::confirm_totp_enrollment))
        .routes(routes!(
            me::remembered_devices,
            me::revoke_remembered_devices
        ))
        .routes(routes!(users::create_user, users::list_users))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::start_impersonation))
        .routes(routes!(users::reset_two_factor))
        .routes(routes!(
            users::user_remembered_devices,
            users::revoke_user_remembered_devices
        ))
        .routes(routes!(users::end_impersonation))
        .routes(routes!(reports::two_factor_report))
        .routes(routes!(history::forecast))
        .routes(routes!(history::timeline))
        .routes(routes!(audit::audit_trail))
        .routes(routes!(audit::verify))
        .routes(routes!(checkpoints::checkpoints))
        .routes(routes!(checkpoints::public_key))
        .routes(routes!(doc::openapi_json));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .nest(API_PREFIX, api)
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(api_docs::api_docs))
}

/// `/metrics`: on the main listener, or alone on `--metrics-listen`.
fn metrics_route() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ops::metrics))
}

/// The OpenAPI 3.1 document of every route `router` serves (`/metrics`
/// included, wherever it is served).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = documented().merge(metrics_route()).into_openapi();
    doc::declare_headers(&mut openapi);
    openapi
}

/// Where `/metrics` is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsPlace {
    /// On the main listener, beside the API (the default).
    MainListener,
    /// Only on its own listener (`--metrics-listen`): the main one answers 404.
    OwnListener,
}

pub fn router(state: AppState, metrics: MetricsPlace) -> Router {
    let routes = match metrics {
        MetricsPlace::MainListener => documented().merge(metrics_route()),
        MetricsPlace::OwnListener => documented(),
    };
    let (api, _) = routes.split_for_parts();
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    // The path only: query strings may hold search terms.
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// `/metrics` alone, for `--metrics-listen`.
fn metrics_router(state: AppState) -> Router {
    let (metrics, _) = metrics_route().split_for_parts();
    metrics.fallback(not_found).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::App(AppError::NotFound("no such endpoint"))
}

/// The JSON API's answers hold tokens, codes and personal data: no cache
/// (browser, proxy) may keep any of them, errors and unknown paths included.
async fn no_store_on_api(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_api = path
        .strip_prefix(API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    let mut response = next.run(request).await;
    if is_api {
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    response
}

async fn method_not_allowed() -> Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "this method is not allowed here",
        )),
    )
        .into_response()
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("twofold_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("twofold_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Seconds: from a cached read to a sign-in queued behind argon2.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One Prometheus recorder per process, shared by every app it starts.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets rather than summaries: buckets add up
            // across the nodes of a cluster, quantiles do not.
            // (Refused only for an empty list.)
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                twofold_app::metrics::describe();
            }
            handle
        })
        .clone()
}

/// Everything `serve` needs, resolved from flags.
pub struct ServeConfig {
    pub database_url: String,
    pub database_max_connections: u32,
    pub mail: MailConfig,
    pub listen: SocketAddr,
    pub master_key_file: std::path::PathBuf,
    pub settings: Settings,
    pub bootstrap_admin: Option<String>,
    pub clock: Arc<dyn Clock>,
    /// How long clients may take to send a request, and a stop to finish.
    pub connections: ConnectionLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Serve `/metrics` on this address only (not on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// The key that signs audit checkpoints (created when missing); `None`:
    /// the service signs none.
    pub audit_signing_key_file: Option<std::path::PathBuf>,
    /// How often to sign a checkpoint; `None`: only `twofold audit
    /// checkpoint` signs.
    pub audit_checkpoint_every: Option<Duration>,
}

/// A secret given directly, or else the content of the file named for it
/// (without its final line break).
fn or_from_file(
    given: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    match (given, file) {
        (Some(given), _) => Ok(Some(given)),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the secret file {}", file.display()))?;
            Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
        }
        (None, None) => Ok(None),
    }
}

impl ServeConfig {
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        let url = args.database.database_url;
        let sqlite_dir = twofold_store::sqlite_file(&url)
            .and_then(|file| file.parent().map(std::path::Path::to_path_buf));
        let mail = MailConfig {
            smtp_url: or_from_file(args.smtp_url, args.smtp_url_file.as_deref())?,
            directory: args
                .mail_dir
                .unwrap_or_else(|| sqlite_dir.clone().unwrap_or_default().join("mail")),
            from: args.mail_from,
        };
        let master_key_file = match args.master_key_file {
            Some(path) => path,
            None => beside_sqlite_file(&url, ".master-key")
                .context("--master-key-file is required with PostgreSQL")?,
        };
        // Unlike the master key, optional with PostgreSQL: a deployment
        // that names no key file signs no checkpoints.
        let audit_signing_key_file = args
            .audit_signing_key_file
            .or_else(|| beside_sqlite_file(&url, ".audit-signing-key"));
        let totp = TotpParameters {
            algorithm: match args.totp_algorithm {
                TotpHash::Sha1 => TotpAlgorithm::Sha1,
                TotpHash::Sha256 => TotpAlgorithm::Sha256,
                TotpHash::Sha512 => TotpAlgorithm::Sha512,
            },
            digits: args.totp_digits,
            period: args.totp_period,
            skew: args.totp_skew,
        };
        totp.validate()
            .map_err(|error| anyhow::anyhow!("TOTP settings: {error}"))?;
        let password_hash_workers = args
            .password_hash_workers
            .unwrap_or_else(passwords::default_hashing_workers);
        Ok(ServeConfig {
            database_url: url,
            database_max_connections: args.database.database_max_connections,
            mail,
            listen: args.listen,
            master_key_file,
            settings: Settings {
                policy: TwoFactorPolicy {
                    mandatory_from: args.mandatory_from,
                },
                session_lifetime: chrono::Duration::hours(i64::from(args.session_hours)),
                session_idle: chrono::Duration::minutes(i64::from(args.session_idle_minutes)),
                remember_device: chrono::Duration::hours(i64::from(args.remember_device_hours)),
                totp,
                relying_party: RelyingParty {
                    public_url: crate::config::public_url_or_default(args.public_url, args.listen),
                    name: args.totp_issuer.clone(),
                },
                totp_issuer: args.totp_issuer,
                login_rate_per_ip: args.login_rate_per_ip,
                password_hash_workers,
                password_hash_queue: args
                    .password_hash_queue
                    .unwrap_or_else(|| passwords::default_hashing_queue(password_hash_workers)),
            },
            bootstrap_admin: or_from_file(
                args.bootstrap_admin,
                args.bootstrap_admin_file.as_deref(),
            )?,
            clock: Arc::new(SystemClock),
            connections: ConnectionLimits {
                request_read_timeout: Duration::from_secs(args.request_read_timeout_seconds),
                shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
            },
            trusted_proxies: args.trusted_proxies,
            metrics_listen: args.metrics_listen,
            audit_signing_key_file,
            audit_checkpoint_every: match args.audit_checkpoint_minutes {
                CheckpointInterval::Off => None,
                CheckpointInterval::Every(every) => Some(every),
            },
        })
    }
}

/// A file beside the SQLite store of `url` (its name followed by
/// `suffix`); `None` for PostgreSQL.
fn beside_sqlite_file(url: &str, suffix: &str) -> Option<std::path::PathBuf> {
    let file = twofold_store::sqlite_file(url)?;
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    Some(file.with_file_name(name))
}

/// Where outgoing email goes: SMTP when a URL is given, else a directory.
#[derive(Clone, Debug)]
pub struct MailConfig {
    pub smtp_url: Option<String>,
    pub directory: std::path::PathBuf,
    pub from: String,
}

impl MailConfig {
    fn mailer(&self) -> anyhow::Result<Mailer> {
        match &self.smtp_url {
            Some(url) => Mailer::smtp(url, &self.from).context("bad --smtp-url"),
            None => Mailer::directory(self.directory.clone(), &self.from)
                .with_context(|| format!("cannot use mail directory {}", self.directory.display())),
        }
    }
}

/// A started server: where it listens and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// Whether the store had a super admin once started.
    pub has_super_admin: bool,
    /// Where `/metrics` is served when it has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the shutdown
    /// grace period, then returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        for server in self.servers {
            server.await?;
        }
        Ok(())
    }

    pub async fn wait(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        stop.await;
        self.stop().await
    }
}

/// Starts the service. A start that fails removes the files it created
/// (the SQLite database, the master key, the mail directory), so that
/// trying again, or with other settings, begins from the same state.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let mut created = NewFiles::default();
    if let Some(file) = twofold_store::sqlite_file(&config.database_url) {
        created.watch_sqlite(&file);
    }
    if config.mail.smtp_url.is_none() {
        created.watch_directory(&config.mail.directory);
    }
    let started = start_with_files(config, &mut created).await;
    if started.is_err() {
        created.remove();
    }
    started
}

/// The start, noting in `created` what it creates.
async fn start_with_files(config: ServeConfig, created: &mut NewFiles) -> anyhow::Result<Running> {
    // Before the store is touched: a key file that holds no key stops the
    // start before a database is created.
    let signing_key = match &config.audit_signing_key_file {
        Some(path) => {
            let (key, key_created) = twofold_app::checkpoints::signing_key_file(path)?;
            if key_created {
                created.add(path.clone());
            }
            Some(key)
        }
        None => None,
    };
    let db = twofold_store::connect(&config.database_url, config.database_max_connections).await?;
    let started = start_on(&db, config, signing_key, created).await;
    if started.is_err() {
        db.close().await;
    }
    started
}

/// The schema's migrations, then the read models' data migrations (rows
/// rewritten by the service's own code, once each; later starts only read).
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    twofold_store::migrate(db).await?;
    for (name, rows) in ReadModels::new(db.clone())
        .run_data_migrations()
        .await
        .context("data migrations failed")?
    {
        tracing::info!(name, rows, "data migration applied");
    }
    Ok(())
}

async fn start_on(
    db: &Db,
    config: ServeConfig,
    signing_key: Option<AuditSigningKey>,
    created: &mut NewFiles,
) -> anyhow::Result<Running> {
    migrate(db).await.context("migrations failed")?;
    let (key, key_created) =
        twofold_app::master_key::master_key_for_store(&config.master_key_file, db).await?;
    if key_created {
        created.add(config.master_key_file.clone());
    }
    let mailer = config.mail.mailer()?;
    let projector = Projector::new(db.clone()).await?;
    let app = App::new(
        EventStore::new(db.clone()),
        Arc::clone(&projector),
        SecretVault::new(key, db.clone()),
        config.clock,
        config.settings,
        mailer,
    )
    .context("cannot start the password hashing threads")?;
    let signs_checkpoints = signing_key.is_some();
    let app = match signing_key {
        Some(key) => app.with_audit_signing_key(key),
        None => app,
    };
    if let Some(spec) = &config.bootstrap_admin {
        if app.bootstrap_admin(spec).await? {
            tracing::info!("created the bootstrap super admin");
        }
    }
    let has_super_admin = app.has_super_admin().await?;
    let state = AppState::new(app, metrics_handle(), openapi());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(metrics_listen) => Some(
            TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("cannot listen on {metrics_listen} for metrics"))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let (shutdown, stopped) = watch::channel(false);
    projector.spawn_poller(POLL_EVERY, stopped.clone());
    if let Some(every) = config.audit_checkpoint_every.filter(|_| signs_checkpoints) {
        let signer = state.clone();
        let stop = stopped.clone();
        tokio::spawn(async move { signer.app.sign_checkpoints_every(every, stop).await });
    }
    let metrics_place = match metrics_listener {
        Some(_) => MetricsPlace::OwnListener,
        None => MetricsPlace::MainListener,
    };
    // The web pages sit in front of the API and call it in-process.
    let app = crate::web::with_pages(router(state.clone(), metrics_place), &state)
        .layer(middleware::from_fn_with_state(
            config.connections.request_read_timeout,
            serve::body_deadline,
        ))
        .layer(middleware::from_fn(no_store_on_api));
    let trusted = Arc::new(config.trusted_proxies);
    let mut servers = vec![tokio::spawn(serve::serve(
        listener,
        app,
        config.connections,
        Arc::clone(&trusted),
        stopped.clone(),
    ))];
    if let Some(metrics_listener) = metrics_listener {
        servers.push(tokio::spawn(serve::serve(
            metrics_listener,
            metrics_router(state),
            config.connections,
            trusted,
            stopped,
        )));
    }
    Ok(Running {
        addr,
        has_super_admin,
        metrics_addr,
        shutdown,
        servers,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        drop(tokio::signal::ctrl_c().await);
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
