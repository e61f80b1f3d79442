//! `mache-cachefs serve`: a build-cache/v1 provider (SPEC §6), an
//! OCI-Distribution-style HTTP registry over a local store.
//!
//! This module owns the server around the routes: the runtime, the
//! listener, bearer-token auth, the request log and graceful shutdown.
//! The parts:
//! - `routes`: what a `/v2/…` path names and who answers it;
//! - `blobs`, `uploads`, `manifests`: the handlers;
//! - `registry`: the store seen as a registry (digests, repositories, tags);
//! - `digest`: refusing a digest that does not parse, or bytes that match
//!   neither reading of theirs (the model is [`crate::oci`]);
//! - `errors`: the OCI error envelope.
//!
//! File work runs on blocking threads (`blocking`); bodies are streamed,
//! never buffered whole (manifests excepted, up to their limit).

mod blobs;
mod digest;
mod errors;
mod manifests;
mod registry;
mod routes;
mod uploads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::LocalStore;
use errors::{Code, RegistryError, RegistryResult};
use registry::Registry;
use uploads::Uploads;

/// Default `--max-blob-size`: 4 GiB.
pub const DEFAULT_MAX_BLOB: &str = "4GiB";
/// Default `--max-manifest-size`: 128 MiB (providers must take at least 16;
/// one layer per source for 100,000 sources is about 35 MB).
pub const DEFAULT_MAX_MANIFEST: &str = "128MiB";
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
    /// The bearer token every request must carry, if any.
    pub token: Option<Token>,
    /// Body size limits.
    pub limits: Limits,
}

/// Body size limits, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest blob accepted.
    pub max_blob: u64,
    /// Largest manifest accepted.
    pub max_manifest: u64,
}

/// A bearer token, held only as its BLAKE3: it can be neither printed nor
/// logged, and comparing two hashes (blake3's `==`) takes constant time.
pub struct Token(blake3::Hash);

impl Token {
    /// A token from its text.
    pub fn new(text: &str) -> Token {
        Token(blake3::hash(text.as_bytes()))
    }

    /// The first line of `path`, trimmed; an empty one is refused.
    pub fn read(path: &Path) -> Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading token file {}", path.display()), e))?;
        let line = text.lines().next().unwrap_or_default().trim();
        if line.is_empty() {
            return Err(Error::BadSetting(format!(
                "token file {} has an empty first line",
                path.display()
            )));
        }
        Ok(Token::new(line))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        presented.is_some_and(|token| blake3::hash(token.as_bytes()) == self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What every handler shares.
#[derive(Debug)]
struct App {
    registry: Registry,
    uploads: Uploads,
    limits: Limits,
    token: Option<Token>,
}

/// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully:
/// no new connections, in-flight requests get 10 s to finish, and
/// every unfinished upload's file is removed. `on_listening` is called once
/// the socket listens, with its real address.
pub fn run(options: ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let store = LocalStore::create(&options.store)?;
    let app = Arc::new(App {
        registry: Registry::new(store),
        uploads: Uploads::default(),
        limits: options.limits,
        token: options.token,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the server's runtime", e))?;
    let result = runtime.block_on(serve(app.clone(), options.listen, on_listening));
    // Requests cut off by the grace period may have left blocking writes
    // behind; they do not hold the exit up for long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    app.uploads.shut_down(&app.registry);
    result
}

async fn serve(
    app: Arc<App>,
    listen: SocketAddr,
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
    if !addr.ip().is_loopback() && app.token.is_none() {
        tracing::warn!(
            "serving {addr} beyond this machine without --token-file: anyone who can reach it may read and write the store"
        );
    }
    on_listening(addr);
    // Small answers (HEAD, manifests, small chunks) go out at once: with
    // Nagle's algorithm each would wait for the client's delayed ACK (40 ms).
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(stopped(stop.clone()));
    let grace = async {
        stopped(stop).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| Error::io("serving", e))?,
        () = grace => tracing::warn!(
            "in-flight requests did not finish within {} s of the shutdown signal; cutting them off",
            GRACE.as_secs()
        ),
    }
    Ok(())
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

/// Refuses a request without the right bearer token, with the challenge.
async fn authorize(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    match &app.token {
        Some(token) if !token.admits(request.headers()) => {
            RegistryError::new(Code::Unauthorized, "a valid bearer token is required")
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                )
                .into_response()
        }
        _ => next.run(request).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_right_bearer_token_is_admitted_and_it_never_prints() {
        let token = Token::new("s3cret");
        assert!(token.admits(&bearer("Bearer s3cret")));
        assert!(token.admits(&bearer("bearer s3cret")));
        assert!(!token.admits(&bearer("Bearer s3cre")));
        assert!(!token.admits(&bearer("Basic s3cret")));
        assert!(!token.admits(&HeaderMap::new()));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn a_token_file_gives_its_first_line_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc \nsecond\n").unwrap();
        assert!(Token::read(&path).unwrap().admits(&bearer("Bearer abc")));
        std::fs::write(&path, "\n").unwrap();
        assert!(Token::read(&path).is_err());
    }
}
