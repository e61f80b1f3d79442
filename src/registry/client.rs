//! The HTTP side of the registry transport: one `reqwest` client (rustls
//! with the `ring` provider, which builds with a C compiler alone; pooled
//! connections) for one repository, with what every request needs:
//!
//! - **auth** ([`super::auth`]): a static bearer token, or the standard
//!   challenge flow (a `401` with `WWW-Authenticate: Bearer realm=…` fetches
//!   a token, cached until it expires and fetched again on the next `401`;
//!   `Basic` where the registry asks for it);
//! - **resilience**: connect and read timeouts; retries with exponential
//!   backoff and full jitter on connection errors, `5xx`, `408` and `429`
//!   (honouring `Retry-After`), never on other `4xx`, within a time budget
//!   per call;
//! - **errors**: the OCI error envelope becomes one line with the code and
//!   message; bodies are read with the expected length as a bound, so a
//!   hostile server cannot stream without end.
//!
//! Callers are synchronous (FUSE threads, rayon workers): [`Client::run`]
//! runs a future on the client's own runtime and waits for it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use url::Url;

use super::auth::Auth;
use crate::error::{Error, Result};

/// Connect timeout of every request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The longest a response may stall between two reads.
    pub read: Duration,
    /// How long one call, retries included, may take: past it the call
    /// fails (EIO in a mount) instead of hanging.
    pub budget: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            read: Duration::from_secs(20),
            budget: Duration::from_secs(30),
        }
    }
}
/// The longest wait between two attempts, `Retry-After` included.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// A repository on a registry.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host[:port]`.
    base: Url,
    /// The repository name, `<producer>/<scope>`.
    repo: String,
    auth: std::sync::Arc<Auth>,
    runtime: tokio::runtime::Handle,
    budget: Duration,
    counters: std::sync::Arc<Counters>,
}

/// What a client has done, for the status file.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
}

/// The result of [`Client::send`]: a response whose status was not a failure.
pub type Answer = Response;

impl Client {
    /// A client for `repo` at `base`, running on `runtime`.
    pub fn new(
        base: Url,
        repo: String,
        auth: Auth,
        timeouts: Timeouts,
        runtime: tokio::runtime::Handle,
    ) -> Result<Client> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(timeouts.read)
            .pool_max_idle_per_host(32)
            .user_agent(concat!("mache-cachefs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Remote(format!("setting up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            repo,
            auth: std::sync::Arc::new(auth),
            runtime,
            budget: timeouts.budget,
            counters: std::sync::Arc::default(),
        })
    }

    /// The registry, for messages: `host[:port]`.
    pub fn registry(&self) -> String {
        host_port(&self.base)
    }

    /// The repository, for messages: `host/repo`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.registry(), self.repo)
    }

    /// The URL of `path` below this repository (`blobs/…`, `manifests/…`).
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(&format!("/v2/{}/{path}", self.repo))
            .expect("repository paths are valid URLs")
    }

    /// Resolves an upload `Location` (relative or absolute, possibly with a
    /// query already) against the registry.
    pub fn location(&self, location: &str) -> Result<Url> {
        self.base.join(location).map_err(|e| {
            Error::Remote(format!(
                "{}: bad upload location {location:?}: {e}",
                self.registry()
            ))
        })
    }

    /// What this client (and its clones) did so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Runs `future` on the client's runtime and waits for it. For
    /// synchronous callers only (never from inside the runtime).
    pub fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().expect("the registry runtime is alive")
    }

    /// Starts `future` on the client's runtime without waiting for it.
    pub fn runtime_spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(future);
    }

    /// Sends a request built by `build` (called again for each attempt),
    /// with auth and retries. `Ok` for any status below 400 and for `404`
    /// (callers tell "absent" from a failure); every other status is an
    /// error naming the registry, with the OCI error code and message.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer> {
        let result = self
            .send_with(&mut Retry::new(self.budget), method, url, &build)
            .await;
        self.count_failure(&result);
        result
    }

    /// HEADs blob `digest`: its headers if the registry has it, else `None`.
    pub async fn head_blob(&self, digest: &str) -> Result<Option<HeaderMap>> {
        let head = self
            .send(Method::HEAD, self.url(&format!("blobs/{digest}")), |r| r)
            .await?;
        Ok(head.status().is_success().then(|| head.headers().clone()))
    }

    fn count_failure<T>(&self, result: &Result<T>) {
        if result.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// GETs a whole body of at most `limit` bytes (exactly `exact` when
    /// given): `None` for a `404`. A body cut short (a dropped connection,
    /// fewer bytes than promised) is retried like a failed request.
    pub async fn get_body(
        &self,
        url: Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        limit: u64,
        exact: Option<u64>,
    ) -> Result<Option<(HeaderMap, Vec<u8>)>> {
        let result = self.get_body_once(url, build, limit, exact).await;
        self.count_failure(&result);
        result
    }

    async fn get_body_once(
        &self,
        url: Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        limit: u64,
        exact: Option<u64>,
    ) -> Result<Option<(HeaderMap, Vec<u8>)>> {
        let mut retry = Retry::new(self.budget);
        loop {
            let response = self
                .send_with(&mut retry, Method::GET, url.clone(), &build)
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let headers = response.headers().clone();
            let body = read_limited(response, limit).await;
            if let Ok(body) = &body {
                self.counters
                    .bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            let error = match body {
                Ok(body) if exact.is_none_or(|n| body.len() as u64 == n) => {
                    return Ok(Some((headers, body)));
                }
                Ok(body) => Error::Unreachable {
                    registry: self.registry(),
                    reason: format!(
                        "{} sent {} bytes of {}",
                        url.path(),
                        body.len(),
                        exact.unwrap_or_default()
                    ),
                },
                Err(e @ Error::Unreachable { .. }) => e,
                Err(e) => return Err(e),
            };
            tracing::debug!("{error}; retrying");
            retry.pause(None, error, &self.counters).await?;
        }
    }

    async fn send_with(
        &self,
        retry: &mut Retry,
        method: Method,
        url: Url,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer> {
        let mut reauthenticated = false;
        loop {
            let request = build(self.http.request(method.clone(), url.clone()));
            let request = self.auth.apply(request, &self.base, &url).await;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let (after, error) = match request.send().await {
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED && !reauthenticated =>
                {
                    reauthenticated = true;
                    self.auth
                        .challenged(&self.http, &self.base, response.url(), response.headers())
                        .await?;
                    continue;
                }
                Ok(response) if retryable(response.status()) => {
                    let after = retry_after(response.headers());
                    (
                        after,
                        failure(&self.registry(), &method, &url, response).await,
                    )
                }
                Ok(response)
                    if response.status().is_success()
                        || response.status().is_redirection()
                        || response.status() == StatusCode::NOT_FOUND =>
                {
                    return Ok(response);
                }
                Ok(response) => {
                    return Err(failure(&self.registry(), &method, &url, response).await);
                }
                Err(e) => {
                    if let Some(local) = BodyError::find(&e) {
                        return Err(local);
                    }
                    (
                        None,
                        Error::Unreachable {
                            registry: self.registry(),
                            reason: describe_transport_error(&e),
                        },
                    )
                }
            };
            tracing::debug!("{error}; retrying");
            retry.pause(after, error, &self.counters).await?;
        }
    }
}

/// The failure of a request body streamed from local data (an object that
/// is missing or fails its check as it is read), as the body stream's
/// error. [`Client::send`] gives the error inside back at once: it is not
/// the network's, so another attempt would not help.
#[derive(Debug)]
pub struct BodyError(std::sync::Mutex<Option<Error>>);

impl BodyError {
    /// Wraps the error that stopped the body.
    pub fn new(error: Error) -> BodyError {
        BodyError(std::sync::Mutex::new(Some(error)))
    }

    /// The error a body stream stopped with, if `e` stands for one.
    fn find(e: &reqwest::Error) -> Option<Error> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(error) = cause {
            if let Some(body) = error.downcast_ref::<BodyError>() {
                let taken = body.0.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Some(taken.unwrap_or_else(|| Error::Remote(body.to_string())));
            }
            cause = error.source();
        }
        None
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(error) => write!(f, "{error}"),
            None => write!(f, "a request body failed"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The attempts of one call: exponential backoff with full jitter, or the
/// registry's `Retry-After`, until the call's time budget is spent.
struct Retry {
    deadline: Instant,
    backoff: backon::ExponentialBackoff,
}

impl Retry {
    fn new(budget: Duration) -> Retry {
        Retry {
            deadline: Instant::now() + budget,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(MAX_DELAY)
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// Waits before the next attempt, or gives `error` back if waiting
    /// would pass the deadline.
    async fn pause(
        &mut self,
        after: Option<Duration>,
        error: Error,
        counters: &Counters,
    ) -> Result<()> {
        let delay = after
            .unwrap_or_else(|| self.backoff.next().unwrap_or(MAX_DELAY))
            .min(MAX_DELAY);
        if Instant::now() + delay > self.deadline {
            return Err(error);
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Statuses worth another attempt.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A transport error in a few words (no URL with credentials in it).
fn describe_transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }
}

/// The error a failed response stands for: auth, not found, or a registry
/// error with the envelope's code and message.
pub async fn failure(registry: &str, method: &Method, url: &Url, response: Response) -> Error {
    let status = response.status();
    let body = read_limited(response, 64 << 10).await.unwrap_or_default();
    let (code, message) = envelope(&body);
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Error::AuthFailed {
            registry: registry.to_string(),
            reason: format!(
                "{status}{}",
                code.map_or(String::new(), |c| format!(" {c}: {message}"))
            ),
        };
    }
    Error::RegistryError {
        registry: registry.to_string(),
        request: format!("{method} {}", url.path()),
        status: status.as_u16(),
        code: code.unwrap_or_default(),
        message,
    }
}

/// The first error of an OCI error envelope: `(code, message)`.
pub fn envelope(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: serde_json::Value,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { errors }) if !errors.is_empty() => {
            let first = &errors[0];
            let detail = match &first.detail {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => format!(" ({s})"),
                other => format!(" ({other})"),
            };
            (
                Some(first.code.clone()),
                format!("{}{detail}", first.message),
            )
        }
        _ => (
            None,
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string(),
        ),
    }
}

/// `host[:port]` of a URL, as messages name a registry.
pub fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(mut response: Response, limit: u64) -> Result<Vec<u8>> {
    let declared = response.content_length();
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::Remote(format!(
            "{} announced {} bytes where at most {limit} were expected",
            response.url().path(),
            declared.unwrap_or_default()
        )));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::Unreachable {
        registry: host_port(response.url()),
        reason: format!("reading a response: {}", describe_transport_error(&e)),
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::Remote(format!(
                "{} sent more than the {limit} bytes expected",
                response.url().path()
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Header values we send.
pub fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("header values we build are ASCII")
}

/// rustls needs one process-wide crypto provider; ours is `ring`.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn the_oci_error_envelope_gives_code_and_message() {
        let body = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"http: request body too large"}]}"#;
        let (code, message) = envelope(body);
        assert_eq!(code.as_deref(), Some("MANIFEST_INVALID"));
        assert_eq!(message, "manifest invalid (http: request body too large)");
        assert_eq!(envelope(b"").0, None);
        assert_eq!(envelope(b"<html>oops</html>").1, "<html>oops</html>");
    }

    #[test]
    fn a_body_stream_that_fails_locally_fails_the_call_at_once() {
        // A server that takes whatever is sent and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
            }
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let auth = Auth::new(super::super::auth::Credentials::Anonymous);
        let client = Client::new(
            base,
            "mache/test".into(),
            auth,
            Timeouts::default(),
            runtime.handle().clone(),
        )
        .unwrap();
        let missing = Hash::of(b"gone");
        let sender = client.clone();
        let result = client.run(async move {
            let url = sender.url("blobs/uploads/x");
            let body = || {
                let pieces: [std::result::Result<Vec<u8>, BodyError>; 2] = [
                    Ok(vec![0; 1000]),
                    Err(BodyError::new(Error::ObjectMissing {
                        hash: missing,
                        store: "the store".into(),
                    })),
                ];
                reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
            };
            sender.send(Method::PUT, url, |r| r.body(body())).await
        });
        let err = result.map(|_| ()).unwrap_err();
        assert!(
            matches!(&err, Error::ObjectMissing { hash, .. } if *hash == missing),
            "{err}"
        );
        assert_eq!(client.counters().retries.load(Ordering::Relaxed), 0);
        assert_eq!(client.counters().requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, header("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(60);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            header(&httpdate::fmt_http_date(soon)),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS) && retryable(StatusCode::BAD_GATEWAY));
        assert!(!retryable(StatusCode::NOT_FOUND) && !retryable(StatusCode::BAD_REQUEST));
    }
}
