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
use twofold_domain::totp::{TotpAlgorithm, TotpParameters};
use twofold_domain::{Email, Role, TwoFactorPolicy, Username};
use twofold_projections::{Db, Projector};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::{Clock, SystemClock};
use crate::config::{ServeArgs, TotpHash};
use crate::database;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::mail::Mailer;
use crate::openapi as doc;
use crate::routes::{audit, login, me, ops, reports, users};
use crate::security::{self, SecretVault};
use crate::state::{AppState, Settings};
use crate::store::{EventMetadata, EventStore};

const BODY_LIMIT: usize = 64 * 1024;
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
        .routes(routes!(audit::audit_trail))
        .routes(routes!(audit::verify))
        .routes(routes!(doc::openapi_json));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .nest("/api/v1", api)
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The OpenAPI 3.1 document of every route `router` serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

pub fn router(state: AppState) -> Router {
    let (api, _) = documented().split_for_parts();
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

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint")
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

/// One Prometheus recorder per process, shared by every app it starts.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            drop(metrics::set_global_recorder(recorder));
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
}

impl ServeConfig {
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        let url = args.database.database_url;
        let sqlite_dir = database::sqlite_file(&url)
            .filter(|_| url.starts_with("sqlite:"))
            .and_then(|file| file.parent().map(std::path::Path::to_path_buf));
        let mail = MailConfig {
            smtp_url: args.smtp_url,
            directory: args
                .mail_dir
                .unwrap_or_else(|| sqlite_dir.clone().unwrap_or_default().join("mail")),
            from: args.mail_from,
        };
        let master_key_file = match args.master_key_file {
            Some(path) => path,
            None => {
                let file = database::sqlite_file(&url)
                    .filter(|_| url.starts_with("sqlite:"))
                    .context("--master-key-file is required with PostgreSQL")?;
                let mut name = file.file_name().unwrap_or_default().to_os_string();
                name.push(".master-key");
                file.with_file_name(name)
            }
        };
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
            .unwrap_or_else(security::default_hashing_workers);
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
                totp_issuer: args.totp_issuer,
                login_rate_per_ip: args.login_rate_per_ip,
                password_hash_workers,
                password_hash_queue: args
                    .password_hash_queue
                    .unwrap_or_else(|| security::default_hashing_queue(password_hash_workers)),
            },
            bootstrap_admin: args.bootstrap_admin,
            clock: Arc::new(SystemClock),
        })
    }
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
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, then returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        self.server.await??;
        Ok(())
    }

    pub async fn wait(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        stop.await;
        self.stop().await
    }
}

pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let db = database::connect(&config.database_url, config.database_max_connections).await?;
    database::migrate(&db).await.context("migrations failed")?;
    let key = security::load_or_create_master_key(&config.master_key_file)?;
    let mailer = config.mail.mailer()?;
    let projector = Projector::new(db.clone()).await?;
    let state = AppState::new(
        EventStore::new(db.clone()),
        Arc::clone(&projector),
        SecretVault::new(key, db.clone()),
        config.clock,
        config.settings,
        metrics_handle(),
        mailer,
    )
    .context("cannot start the password hashing threads")?;
    if let Some(spec) = &config.bootstrap_admin {
        bootstrap_admin(&state, &db, spec).await?;
    }
    let (shutdown, stopped) = watch::channel(false);
    projector.spawn_poller(POLL_EVERY, stopped.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // The web pages sit in front of the API and call it in-process.
    let app = crate::web::with_pages(router(state.clone()), &state)
        .into_make_service_with_connect_info::<SocketAddr>();
    let mut stop = stopped;
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                drop(stop.wait_for(|stopped| *stopped).await);
            })
            .await
    });
    Ok(Running {
        addr,
        shutdown,
        server,
    })
}

/// `TWOFOLD_BOOTSTRAP_ADMIN=username:password`: the first super admin.
async fn bootstrap_admin(state: &AppState, db: &Db, spec: &str) -> anyhow::Result<()> {
    if db.users_with_role(Role::SuperAdmin.as_str()).await? > 0 {
        return Ok(());
    }
    let (username, password) = spec
        .split_once(':')
        .context("TWOFOLD_BOOTSTRAP_ADMIN must be username:password")?;
    let username = Username::parse(username).context("bootstrap admin: bad username")?;
    let metadata = EventMetadata {
        occurred_at: Some(state.now()),
        ..EventMetadata::default()
    };
    let registered = crate::routes::users::register(
        state,
        &metadata,
        username.clone(),
        password.to_string(),
        None::<Email>,
        Role::SuperAdmin,
    )
    .await;
    match registered {
        Ok(_) => {
            tracing::info!(%username, "created the bootstrap super admin");
            Ok(())
        }
        Err(ApiError::Conflict(_)) => Ok(()),
        Err(error) => Err(anyhow::anyhow!("bootstrap admin: {error}")),
    }
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
