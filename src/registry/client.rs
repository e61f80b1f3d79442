//! The HTTP side of the registry transport: one `reqwest` client (rustls
//! with the `ring` provider, which builds with a C compiler alone; pooled
//! connections) for one repository, with what every request needs:
//!
//! - **auth** ([`super::auth`]): a static bearer token, or the standard
//!   challenge flow (a `401` with `WWW-Authenticate: Bearer realm=…` fetches
//!   a token, cached until it expires and fetched again on the next `401`;
//!   `Basic` where the registry asks for it);
//! - **deadlines**: every call (connect, TLS, first byte, each retry, the
//!   body, a token fetch on the way) ends by one deadline, the call's
//!   budget from its start ([`Timeouts`]); a body arriving slower than
//!   [`Timeouts::min_rate`] is cut off;
//! - **retries** with exponential backoff and full jitter on connection
//!   errors, `5xx`, `408` and `429` (honouring `Retry-After`), never on
//!   other `4xx` or a TLS mismatch, inside that deadline;
//! - **health** ([`super::health`]): failures of the registry itself are
//!   shared by every call of the client; once they last
//!   [`Timeouts::offline_after`] the registry is down, calls fail at once,
//!   and a background probe brings it back up;
//! - **errors**: the OCI error envelope becomes one line with the code and
//!   message; a transport failure says why (refused, DNS, TLS, timed out);
//!   bodies are read with the expected length as a bound and never
//!   preallocated from what the server claims.
//!
//! Callers are synchronous (FUSE threads, rayon workers): [`Client::run`]
//! runs a future on the client's own runtime and waits for it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use url::Url;

use super::auth::Auth;
use super::health::{FailureKind, Health, HealthReport, Verdict, probe_interval};
use crate::error::{Error, Result};

/// How long requests may take; every one has a flag and a config key
/// (README, "Registries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, TLS included (`--connect-timeout`).
    pub connect: Duration,
    /// The longest a response may stay silent: before its first byte, and
    /// between two reads of its body (`--read-timeout`).
    pub read: Duration,
    /// Bytes per second a body must keep up, averaged from its start, once
    /// it has had `read` to get going (`--min-rate`).
    pub min_rate: u64,
    /// How long one call may take, retries included: past it the call
    /// fails (EIO in a mount) instead of hanging (`--retry-budget`).
    pub budget: Duration,
    /// How long the registry may keep failing before it is marked down
    /// and calls fail at once (`--offline-after`).
    pub offline_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(10),
            min_rate: 1024,
            budget: Duration::from_secs(30),
            offline_after: Duration::from_secs(5),
        }
    }
}

/// The longest wait between two attempts, `Retry-After` included.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Never reserve more than this for a body before its bytes arrive,
/// whatever its `Content-Length` claims.
const MAX_PREALLOCATION: u64 = 1 << 20;
/// How long an error answer's body (the OCI envelope) may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A repository on a registry.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host[:port]`.
    base: Url,
    /// The repository name, `<producer>/<scope>`.
    repo: String,
    auth: Arc<Auth>,
    runtime: tokio::runtime::Handle,
    timeouts: Timeouts,
    /// Whether a failed attempt is tried again (else the first failure ends
    /// the call).
    retries: bool,
    /// How long an attempt may wait for the response's headers, when that
    /// is shorter than the call's deadline (a lookup with an offline answer
    /// at hand does not wait out the read timeout).
    answer_within: Option<Duration>,
    health: Arc<Health>,
    counters: Arc<Counters>,
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

/// One failed attempt: what it means for the registry's health (`None`: an
/// answer about this request only), how long the registry asked us to
/// wait, and the error the call ends with if it is not tried again.
struct Failure {
    kind: Option<FailureKind>,
    after: Option<Duration>,
    error: Error,
}

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
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .pool_max_idle_per_host(32)
            .user_agent(concat!("mache-cachefs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Remote(format!("setting up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            repo,
            auth: Arc::new(auth),
            runtime,
            timeouts,
            retries: true,
            answer_within: None,
            health: Arc::new(Health::new(timeouts.offline_after)),
            counters: Arc::default(),
        })
    }

    /// This client making one attempt per call, whose answer must begin
    /// within the connect timeout, sharing its health and counters: for a
    /// lookup that has an offline answer ready.
    pub fn single_attempt(&self) -> Client {
        Client {
            retries: false,
            answer_within: Some(self.timeouts.connect),
            ..self.clone()
        }
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

    /// The registry's health now.
    pub fn health(&self) -> HealthReport {
        self.health.report()
    }

    /// The time one call may take.
    pub fn budget(&self) -> Duration {
        self.timeouts.budget
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

    /// Marks the registry down because a command chose to go on without
    /// it (from the disk cache), so later calls fail at once until the
    /// background probe sees it answer again.
    pub fn go_offline(&self, error: &Error) {
        if self.health.mark_down(&reason(error)) {
            self.spawn_probe();
        }
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
            .send_with(&mut self.retry(self.timeouts.budget), method, url, &build)
            .await;
        self.count_failure(&result);
        result
    }

    /// [`send`](Self::send) for an upload of `len` bytes: its deadline also
    /// allows the body to go out at [`Timeouts::min_rate`].
    pub async fn send_upload(
        &self,
        method: Method,
        url: Url,
        len: u64,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer> {
        let transfer = Duration::from_secs(len / self.timeouts.min_rate.max(1));
        let mut retry = self.retry(self.timeouts.budget + transfer);
        let result = self.send_with(&mut retry, method, url, &build).await;
        self.count_failure(&result);
        result
    }

    /// Asks the API root, `GET /v2/`, once, as `docker login` checks a
    /// registry: one attempt, whose answer must begin within the connect
    /// timeout, with the auth handshake if the registry asks for it. The
    /// status of an answer (below 400, or `404`); the error otherwise
    /// (unreachable, TLS, credentials refused).
    pub async fn ping(&self) -> Result<StatusCode> {
        let once = self.single_attempt();
        let answer = once.send(Method::GET, self.api_root(), |r| r).await?;
        Ok(answer.status())
    }

    /// The API root, `/v2/`, which probes ask.
    fn api_root(&self) -> Url {
        self.base.join("/v2/").expect("/v2/ is a valid path")
    }

    /// HEADs blob `digest`: its headers if the registry has it, else `None`.
    pub async fn head_blob(&self, digest: &str) -> Result<Option<HeaderMap>> {
        let head = self
            .send(Method::HEAD, self.url(&format!("blobs/{digest}")), |r| r)
            .await?;
        Ok(head.status().is_success().then(|| head.headers().clone()))
    }

    /// Reads the body of an answer of [`send`](Self::send) (at most `limit`
    /// bytes), within the client's timeouts.
    pub async fn read_body(&self, response: Response, limit: u64) -> Result<Vec<u8>> {
        let retry = self.retry(self.timeouts.budget);
        retry
            .bounded(read_paced(response, limit, self.pace()))
            .await
            .map_err(|f| f.error)
    }

    fn count_failure<T>(&self, result: &Result<T>) {
        if result.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn retry(&self, budget: Duration) -> Retry {
        Retry::new(budget, self.retries, &self.registry())
    }

    fn pace(&self) -> Pace {
        Pace {
            min_rate: self.timeouts.min_rate,
            grace: self.timeouts.read,
        }
    }

    /// GETs a whole body of at most `limit` bytes (exactly `exact` when
    /// given): `None` for a `404`. A body cut short (a dropped connection,
    /// fewer bytes than promised, too slow) is retried like a failed
    /// request, within the same deadline.
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
        let mut retry = self.retry(self.timeouts.budget);
        loop {
            let started = Instant::now();
            let response = self
                .send_attempts(&mut retry, Method::GET, url.clone(), &build, true)
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let headers = response.headers().clone();
            let body = retry
                .bounded(read_paced(response, limit, self.pace()))
                .await;
            if let Ok(body) = &body {
                self.counters
                    .bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            let failure = match body {
                Ok(body) if exact.is_none_or(|n| body.len() as u64 == n) => {
                    self.health.answered();
                    return Ok(Some((headers, body)));
                }
                // A body whose end the framing marked (a length or chunks)
                // is the whole blob: the registry has it at another size,
                // and asking again changes nothing.
                Ok(body) if framed(&headers) => {
                    return Err(Error::BlobSize {
                        what: "blob",
                        digest: url
                            .path()
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        store: self.describe(),
                        expected: exact.unwrap_or_default(),
                        actual: body.len() as u64,
                    });
                }
                Ok(body) => Failure::network(
                    FailureKind::Reset,
                    self.registry(),
                    format!(
                        "{} sent {} bytes of {}",
                        url.path(),
                        body.len(),
                        exact.unwrap_or_default()
                    ),
                ),
                Err(failure) if failure.kind.is_some() => failure,
                Err(failure) => return Err(failure.error),
            };
            self.settle(&mut retry, started, failure).await?;
        }
    }

    async fn send_with(
        &self,
        retry: &mut Retry,
        method: Method,
        url: Url,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer> {
        self.send_attempts(retry, method, url, build, false).await
    }

    /// [`send_with`](Self::send_with); `body_follows`: the caller reads the
    /// body and reports the registry's health once it has it.
    async fn send_attempts(
        &self,
        retry: &mut Retry,
        method: Method,
        url: Url,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
        body_follows: bool,
    ) -> Result<Answer> {
        let mut reauthenticated = false;
        loop {
            self.check_health()?;
            let started = Instant::now();
            let request = build(self.http.request(method.clone(), url.clone()));
            let request = self.auth.apply(request, &self.base, &url).await;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let failure = match retry.bounded(self.attempt(request, body_follows)).await {
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if reauthenticated {
                        return Err(failure(&self.registry(), &method, &url, response).await);
                    }
                    reauthenticated = true;
                    let challenge = self.auth.challenged(
                        &self.http,
                        &self.base,
                        response.url(),
                        response.headers(),
                    );
                    match retry
                        .bounded(async { challenge.await.map_err(Failure::local) })
                        .await
                    {
                        Ok(()) => continue,
                        Err(failure) if failure.kind.is_some() => failure,
                        Err(failure) => return Err(failure.error),
                    }
                }
                Ok(response) if retryable(response.status()) => {
                    let after = retry_after(response.headers());
                    let kind = response
                        .status()
                        .is_server_error()
                        .then_some(FailureKind::Server);
                    Failure {
                        kind,
                        after,
                        error: failure(&self.registry(), &method, &url, response).await,
                    }
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
                Err(failure) if failure.kind.is_some() => failure,
                Err(failure) => return Err(failure.error),
            };
            self.settle(retry, started, failure).await?;
        }
    }

    /// Sends one attempt: the response, or why there is none. An answer
    /// counts as the registry being up, except for a body about to be read
    /// (`body_follows`), which counts once it has arrived whole.
    async fn attempt(
        &self,
        request: RequestBuilder,
        body_follows: bool,
    ) -> Result<Response, Failure> {
        let sent = match self.answer_within {
            Some(limit) => match tokio::time::timeout(limit, request.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(Failure::network(
                        FailureKind::Timeout,
                        self.registry(),
                        format!("no answer within {}", seconds(limit)),
                    ));
                }
            },
            None => request.send().await,
        };
        match sent {
            Ok(response) => {
                let status = response.status();
                let body_to_come = body_follows && status.is_success();
                if !status.is_server_error() && !body_to_come {
                    self.health.answered();
                }
                Ok(response)
            }
            Err(e) => {
                if let Some(local) = BodyError::find(&e) {
                    return Err(Failure::local(local));
                }
                let (kind, reason) = classify(&e);
                Err(Failure::network(kind, self.registry(), reason))
            }
        }
    }

    /// Fails at once while the registry is down.
    fn check_health(&self) -> Result<()> {
        match self.health.down_reason() {
            Some(reason) => Err(Error::Unreachable {
                registry: self.registry(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// After a failed attempt that started at `started`: records it in the
    /// registry's health, then waits for the next attempt, or gives the
    /// error back (the registry is down, the failure cannot heal, or the
    /// deadline would pass).
    async fn settle(&self, retry: &mut Retry, started: Instant, failure: Failure) -> Result<()> {
        tracing::debug!("{}", failure.error);
        let mut until_down = None;
        if let Some(kind) = failure.kind {
            match self.health.failed(started, &reason(&failure.error)) {
                Verdict::StillUp if kind.retryable() => until_down = self.health.until_down(),
                Verdict::StillUp => return Err(failure.error),
                Verdict::WentDown => {
                    self.spawn_probe();
                    return Err(failure.error);
                }
                Verdict::AlreadyDown => return Err(failure.error),
            }
        }
        retry
            .pause(failure.after, until_down, failure.error, &self.counters)
            .await
    }

    /// Probes the registry in the background until it answers (one probe
    /// per client at a time; see [`super::health`]).
    fn spawn_probe(&self) {
        if !self.health.start_probing() {
            return;
        }
        let client = self.clone();
        self.runtime.spawn(async move {
            let url = client.api_root();
            let limit = client.timeouts.connect + client.timeouts.read;
            for n in 0.. {
                tokio::time::sleep(probe_interval(n)).await;
                if !client.health.probing() {
                    break;
                }
                let probe = client.http.get(url.clone()).send();
                if let Ok(Ok(response)) = tokio::time::timeout(limit, probe).await {
                    tracing::debug!("probe of {}: {}", client.registry(), response.status());
                    if !response.status().is_server_error() {
                        client.health.answered();
                    }
                }
            }
        });
    }
}

impl Failure {
    /// A failure of the network or the registry (`kind`), as the error
    /// `cannot reach <registry>: <reason>`.
    fn network(kind: FailureKind, registry: String, reason: String) -> Failure {
        Failure {
            kind: Some(kind),
            after: None,
            error: Error::Unreachable { registry, reason },
        }
    }

    /// A failure that is not the registry's (a local body, an over-long
    /// answer): never retried, never counted against its health.
    fn local(error: Error) -> Failure {
        Failure {
            kind: None,
            after: None,
            error,
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
/// registry's `Retry-After`, all before the call's deadline.
struct Retry {
    deadline: Instant,
    budget: Duration,
    retries: bool,
    registry: String,
    /// Why the last attempt failed, for the message when the deadline hits.
    last_failure: Option<String>,
    backoff: backon::ExponentialBackoff,
}

impl Retry {
    fn new(budget: Duration, retries: bool, registry: &str) -> Retry {
        Retry {
            deadline: Instant::now() + budget,
            budget,
            retries,
            registry: registry.to_string(),
            last_failure: None,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(MAX_DELAY)
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// Runs `step` (an attempt, a body, a token fetch) until the deadline:
    /// past it, a timeout failure.
    async fn bounded<T>(
        &self,
        step: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout_at(self.deadline.into(), step).await {
            Ok(result) => result,
            Err(_) => Err(Failure::network(
                FailureKind::Timeout,
                self.registry.clone(),
                format!(
                    "no answer within the retry budget of {}{}",
                    seconds(self.budget),
                    self.last_failure
                        .as_ref()
                        .map_or(String::new(), |last| format!(" (before: {last})"))
                ),
            )),
        }
    }

    /// Waits before the next attempt (no longer than `cap`: then the
    /// registry's health is decided), or gives `error` back if waiting
    /// would pass the deadline (or this call makes one attempt only).
    async fn pause(
        &mut self,
        after: Option<Duration>,
        cap: Option<Duration>,
        error: Error,
        counters: &Counters,
    ) -> Result<()> {
        self.last_failure = Some(reason(&error));
        let delay = after
            .unwrap_or_else(|| self.backoff.next().unwrap_or(MAX_DELAY))
            .min(MAX_DELAY)
            .min(cap.unwrap_or(MAX_DELAY));
        if !self.retries {
            return Err(error);
        }
        if Instant::now() + delay > self.deadline {
            return Err(match error {
                Error::Unreachable { registry, reason } => Error::Unreachable {
                    registry,
                    reason: format!(
                        "{reason} (tried until the retry budget of {} ran out)",
                        seconds(self.budget)
                    ),
                },
                other => other,
            });
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// What an error says about the registry, without naming it again (its
/// health and messages that wrap it add the name).
fn reason(error: &Error) -> String {
    match error {
        Error::Unreachable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A duration for messages: `30 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
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

/// Why a request got no answer, in a few words a user can act on (no URL
/// with credentials in it), and what that says about the registry.
fn classify(e: &reqwest::Error) -> (FailureKind, String) {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut text = e.to_string();
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<std::io::Error>().and_then(classify_io) {
            return found;
        }
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
        let message = error.to_string();
        if message.contains("dns error") || message.contains("failed to lookup address") {
            return (
                FailureKind::Dns,
                format!("the host name does not resolve ({message})"),
            );
        }
        if error.source().is_some() {
            text = format!("{text}: {}", error.source().expect("checked"));
        }
        cause = error.source();
    }
    if e.is_timeout() {
        (FailureKind::Timeout, "timed out".to_string())
    } else {
        (FailureKind::Reset, format!("connection failed: {text}"))
    }
}

/// An I/O error under a request: refused, reset, timed out, or TLS
/// (rustls reports through `std::io::Error`, its own error inside).
fn classify_io(io: &std::io::Error) -> Option<(FailureKind, String)> {
    use std::io::ErrorKind::*;
    if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return Some(classify_tls(tls));
    }
    // hyper-rustls wraps the handshake's error in another (`io::Error::other`),
    // whose `source` skips it: look inside.
    if let Some(found) = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .and_then(classify_io)
    {
        return Some(found);
    }
    let kind = match io.kind() {
        ConnectionRefused => FailureKind::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => FailureKind::Reset,
        TimedOut => FailureKind::Timeout,
        _ => return None,
    };
    Some((kind, kind.describe().to_string()))
}

/// A TLS failure; the usual one (a plain-http server answering a TLS
/// hello) gets its remedy.
fn classify_tls(tls: &rustls::Error) -> (FailureKind, String) {
    let hint = match tls {
        rustls::Error::InvalidMessage(_) => ": is it plain http? use http://",
        _ => "",
    };
    (
        FailureKind::Tls,
        format!("TLS handshake failed ({tls}){hint}"),
    )
}

/// The error a failed response stands for: auth, not found, or a registry
/// error with the envelope's code and message.
pub async fn failure(registry: &str, method: &Method, url: &Url, response: Response) -> Error {
    let status = response.status();
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_limited(response, 64 << 10))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
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

/// The least pace a body must keep: `min_rate` bytes per second on
/// average, once it has had `grace` to get going.
#[derive(Debug, Clone, Copy)]
struct Pace {
    min_rate: u64,
    grace: Duration,
}

/// Reads a whole body, refusing more than `limit` bytes. Callers bound the
/// time it takes.
pub async fn read_limited(response: Response, limit: u64) -> Result<Vec<u8>> {
    let unpaced = Pace {
        min_rate: 0,
        grace: Duration::ZERO,
    };
    read_paced(response, limit, unpaced)
        .await
        .map_err(|f| f.error)
}

/// Reads a whole body of at most `limit` bytes, cut off when it falls
/// below `pace`. Memory grows with the bytes that arrive, never with what
/// `Content-Length` claims.
async fn read_paced(mut response: Response, limit: u64, pace: Pace) -> Result<Vec<u8>, Failure> {
    let declared = response.content_length();
    let path = response.url().path().to_string();
    let registry = host_port(response.url());
    if declared.is_some_and(|len| len > limit) {
        return Err(Failure::local(Error::Remote(format!(
            "{path} announced {} bytes where at most {limit} were expected",
            declared.unwrap_or_default()
        ))));
    }
    let started = Instant::now();
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(MAX_PREALLOCATION) as usize);
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            let (kind, reason) = classify(&e);
            Failure::network(
                kind,
                registry.clone(),
                format!("reading a response: {reason}"),
            )
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(Failure::local(Error::Remote(format!(
                "{path} sent more than the {limit} bytes expected"
            ))));
        }
        body.extend_from_slice(&chunk);
        let elapsed = started.elapsed();
        if elapsed > pace.grace
            && (body.len() as f64) < pace.min_rate as f64 * elapsed.as_secs_f64()
        {
            return Err(Failure::network(
                FailureKind::Timeout,
                registry,
                format!(
                    "{path} came at {:.0} bytes/s, below the minimum of {} (--min-rate)",
                    body.len() as f64 / elapsed.as_secs_f64(),
                    pace.min_rate
                ),
            ));
        }
    }
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

/// Whether a response's body ends where its framing says (a
/// `Content-Length`, or chunks), rather than where the connection closed.
fn framed(headers: &HeaderMap) -> bool {
    headers.contains_key(reqwest::header::CONTENT_LENGTH)
        || headers.contains_key(reqwest::header::TRANSFER_ENCODING)
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
