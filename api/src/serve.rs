//! The accept loop and its limits on slow clients.
//!
//! `axum::serve` bounds neither how long a client may take to send its
//! headers nor how long a stop waits for open connections, so one client
//! sending half a request (slowloris) kept the process alive long after
//! SIGTERM. Here hyper's HTTP/1 server reads each request's headers under a
//! deadline (an idle keep-alive connection waits under the same one),
//! `body_deadline` gives the body one too, and a stop lets requests in
//! progress finish for at most the grace period, then closes what is left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::client_address::{self, ClientAddress, TrustedProxies};
use crate::error::ApiError;

/// How long a client has for a request's headers, and then for its body.
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for requests in progress.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// After a failed accept that is not the client's doing (out of file
/// descriptors, say), a pause before the next, as `axum::serve` makes.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What a connection may cost the server in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// For the headers of each request (and an idle keep-alive connection),
    /// and again for its body once the headers are in.
    pub request_read_timeout: Duration,
    /// From the stop signal until open connections are closed regardless.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            request_read_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true, then waits for
/// requests in progress at most `limits.shutdown_grace`. Handlers see
/// `ConnectInfo<SocketAddr>` (the TCP peer) and `ClientAddress` (the client
/// behind trusted proxies).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    trusted: Arc<TrustedProxies>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let stopped = async move {
        drop(stop.wait_for(|stopped| *stopped).await);
    };
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next() => continue,
            () = &mut stopped => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if !is_the_clients_doing(&error) {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        let app = app.clone();
        let trusted = Arc::clone(&trusted);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let client = client_address::resolve(peer.ip(), request.headers(), &trusted);
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(ClientAddress(client));
            app.clone().oneshot(request.map(Body::new))
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_read_timeout);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            grace_seconds = limits.shutdown_grace.as_secs(),
            "connections still open at the end of the shutdown grace period are closed"
        );
    }
    connections.shutdown().await;
}

/// A connection the client gave up on before it was accepted.
fn is_the_clients_doing(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Gives each request body `read_timeout` to arrive in full, counted from
/// when its headers did; a body still arriving then ends the request with
/// 408 and the connection is closed. (hyper's own limit covers the headers
/// only, and a per-chunk limit would let a client trickle a byte at a time.)
pub async fn body_deadline(
    State(read_timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let deadline = tokio::time::Instant::now() + read_timeout;
    let timed_out = Arc::new(AtomicBool::new(false));
    let noticed = Arc::clone(&timed_out);
    let request = request.map(|body| {
        let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |chunks| {
            let noticed = Arc::clone(&noticed);
            async move {
                let mut chunks = chunks?;
                match tokio::time::timeout_at(deadline, chunks.next()).await {
                    Ok(Some(chunk)) => Some((chunk, Some(chunks))),
                    Ok(None) => None,
                    Err(_) => {
                        noticed.store(true, Ordering::Relaxed);
                        Some((Err(axum::Error::new(ApiError::RequestTimeout)), None))
                    }
                }
            }
        });
        Body::from_stream(chunks)
    });
    let response = next.run(request).await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    let mut late = ApiError::RequestTimeout.into_response();
    late.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    late
}
