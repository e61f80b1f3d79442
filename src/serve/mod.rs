//! `mache-cachefs serve`: a build-cache/v1 provider (SPEC §6), an
//! OCI-Distribution-style HTTP registry over a local store.
//!
//! This module owns the server around the routes: the runtime, the
//! options and limits, the request log and graceful shutdown.
//! The parts:
//! - `connections`: the accept loop and connections, with the connection
//!   cap and the header and idle timeouts;
//! - `auth`: the tokens, read-only or read-write;
//! - `budget`, `body`: limits on work in progress, and reading bodies
//!   within the idle timeout;
//! - `routes`: what a `/v2/…` path names and who answers it;
//! - `blobs`, `uploads`, `manifests`: the handlers;
//! - `registry`: the store seen as a registry (digests, repositories, tags);
//! - `digest`: refusing a digest that does not parse, or bytes that match
//!   neither reading of theirs (the model is [`crate::oci`]);
//! - `errors`: the OCI error envelope;
//! - `fuzzing`: the request parsing above, for the fuzz targets.
//!
//! File work runs on blocking threads (`blocking`); bodies are streamed,
//! never buffered whole (manifests excepted, up to their limit).

mod auth;
mod blobs;
mod body;
mod budget;
mod connections;
mod digest;
mod errors;
#[doc(hidden)]
pub mod fuzzing;
mod manifests;
mod registry;
mod routes;
mod uploads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::sync::watch;

pub use auth::{Access, Tokens};
pub use connections::{
    ConnectionLimits, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
pub use uploads::{
    DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOADS, DEFAULT_UPLOAD_EXPIRY, UploadLimits,
};

use crate::error::{Error, Result};
use crate::store::LocalStore;
use auth::Verdict;
use budget::Budget;
use errors::{Code, RegistryError, RegistryResult};
use registry::Registry;
use uploads::Uploads;

/// Default `--max-blob-size`: 4 GiB.
pub const DEFAULT_MAX_BLOB: &str = "4GiB";
/// Default `--max-manifest-size`: 128 MiB (providers must take at least 16;
/// one layer per source for 100,000 sources is about 35 MB).
pub const DEFAULT_MAX_MANIFEST: &str = "128MiB";
/// Default `--manifest-memory`: two manifests of the largest size, or seven
/// of a 100,000-source bundle's, being pushed at once.
pub const DEFAULT_MANIFEST_MEMORY: &str = "256MiB";
/// How long in-flight requests may take to finish once a shutdown signal
/// arrives.
const GRACE: Duration = Duration::from_secs(10);
/// The auth challenge answered with every 401.
const CHALLENGE: &str = r#"Bearer realm="mache-cachefs",service="mache-cachefs""#;

/// Everything `serve` needs, validated.
#[derive(Debug)]
pub struct ServeOptions {
    /// The store directory (created if missing).
    pub store: PathBuf,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The tokens requests must carry, if any.
    pub tokens: Option<Tokens>,
    /// Body size limits.
    pub limits: Limits,
    /// Limits on uploads in progress.
    pub uploads: UploadLimits,
    /// Limits on connections.
    pub connections: ConnectionLimits,
}

/// Limits on request bodies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest blob accepted, in bytes.
    pub max_blob: u64,
    /// Largest manifest accepted, in bytes.
    pub max_manifest: u64,
    /// Bytes all manifests being pushed may hold in memory together (at
    /// least `max_manifest`).
    pub manifest_memory: u64,
    /// Longest a request body may go without a byte.
    pub idle_timeout: Duration,
}

/// What every handler shares.
#[derive(Debug)]
struct App {
    registry: Registry,
    uploads: Uploads,
    limits: Limits,
    manifest_memory: Arc<Budget>,
    tokens: Option<Tokens>,
}

/// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully:
/// no new connections, in-flight requests get 10 s to finish, and
/// every unfinished upload's file is removed. `on_listening` is called once
/// the socket listens, with its real address.
pub fn run(options: ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    if options.limits.manifest_memory < options.limits.max_manifest {
        return Err(Error::BadSetting(format!(
            "--manifest-memory ({} bytes) must be at least --max-manifest-size ({} bytes)",
            options.limits.manifest_memory, options.limits.max_manifest
        )));
    }
    let store = LocalStore::create(&options.store)?;
    connections::raise_open_files_limit(options.connections.max_connections);
    let app = Arc::new(App {
        registry: Registry::new(store),
        uploads: Uploads::new(options.uploads),
        limits: options.limits,
        manifest_memory: Budget::new(options.limits.manifest_memory),
        tokens: options.tokens,
    });
    let connections = options.connections;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the server's runtime", e))?;
    let result = runtime.block_on(serve(
        app.clone(),
        options.listen,
        connections,
        on_listening,
    ));
    // Requests cut off by the grace period may have left blocking writes
    // behind; they do not hold the exit up for long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    app.uploads.shut_down(&app.registry);
    result
}

async fn serve(
    app: Arc<App>,
    listen: SocketAddr,
    limits: ConnectionLimits,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    // Signals are caught before anyone can learn the address, so a
    // SIGTERM right after the "listening" line still shuts down cleanly.
    let stop = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
    if !addr.ip().is_loopback() && app.tokens.is_none() {
        tracing::warn!(
            "serving {addr} beyond this machine without --token-file: anyone who can reach it may read and write the store"
        );
    }
    on_listening(addr);
    tokio::spawn(expire_uploads(app.clone()));
    let server = connections::serve(listener, router(app), limits, stop.clone());
    let grace = async {
        stopped(stop).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        () = server => {}
        () = grace => tracing::warn!(
            "in-flight requests did not finish within {} s of the shutdown signal; cutting them off",
            GRACE.as_secs()
        ),
    }
    Ok(())
}

/// Drops stale upload sessions, every [`Uploads::expiry_tick`].
async fn expire_uploads(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.uploads.expiry_tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let app = app.clone();
        let _ = blocking(move || {
            app.uploads.expire();
            Ok(())
        })
        .await;
    }
}

/// A flag set by the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).map_err(|e| Error::io("installing signal handlers", e));
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// The routes, behind auth, behind the request log.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v2/", get(routes::base))
        .route("/v2", get(routes::base))
        .route("/v2/{*rest}", any(routes::dispatch))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

/// Refuses a request without a known token (401, with the challenge),
/// or a write with a read-only one (403).
async fn authorize(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    let verdict = match &app.tokens {
        Some(tokens) => tokens.check(request.headers(), request.method()),
        None => Verdict::Admitted,
    };
    match verdict {
        Verdict::Admitted => next.run(request).await,
        Verdict::Unauthorized => {
            RegistryError::new(Code::Unauthorized, "a valid bearer token is required")
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                )
                .into_response()
        }
        Verdict::Denied => RegistryError::new(
            Code::Denied,
            format!(
                "this token is read-only: {} needs a read-write one",
                request.method()
            ),
        )
        .into_response(),
    }
}

/// One info line per request: method, path, status, bytes in (as
/// announced; `-` when not) and out, milliseconds. Never a header's value.
async fn log_request(request: HttpRequest, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let bytes_in = content_length(request.headers());
    let response = next.run(request).await;
    tracing::info!(
        "{method} {path} {} in={bytes_in} out={} {:.1}ms",
        response.status().as_u16(),
        response_length(&response),
        start.elapsed().as_secs_f64() * 1000.0
    );
    response
}

/// The `Content-Length` answered, or the body's exact length when axum
/// has yet to add that header.
fn response_length(response: &Response) -> String {
    use axum::body::HttpBody;
    match response.body().size_hint().exact() {
        Some(len) if !response.headers().contains_key(header::CONTENT_LENGTH) => len.to_string(),
        _ => content_length(response.headers()),
    }
}

fn content_length(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Runs store work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> RegistryResult<T> + Send + 'static,
) -> RegistryResult<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(RegistryError::new(
            Code::Unknown,
            format!("a store task failed: {e}"),
        ))
    })
}
