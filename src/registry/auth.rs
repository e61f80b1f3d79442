//! Credentials and the registry auth handshake, as every OCI client does it.
//!
//! Where credentials come from, first found wins: `--token-file` (first line,
//! trimmed; a warning when group or others may read it), `--token`,
//! `MACHE_CACHE_TOKEN` (mache's precedence), the config file's `token_file`;
//! with none of them, the user's docker `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker/config.json`: `auths`, `credsStore`, `credHelpers`, through the
//! `docker_credential` crate).
//!
//! A static token is sent as `Authorization: Bearer` on every request (what
//! mache's client and build-cache/v1 providers expect). Otherwise requests
//! go out anonymous until a `401` says how to authenticate: `Bearer realm=…,
//! service=…,scope=…` fetches a token from the realm (with the basic
//! credentials, if any), cached until shortly before it expires and fetched
//! again on the next `401` (a long-lived mount outlives its tokens); `Basic`
//! sends the user and password.
//!
//! Where credentials go, as docker's client does it: only to the registry's
//! own origin (scheme, host and port), never to an upload `Location` or a
//! redirect elsewhere (reqwest drops `Authorization` on a redirect that
//! changes the scheme, host or port); a user and password only over https
//! or to a loopback host. A client without credentials that meets a
//! registry wanting some is told how to give them. Secrets never reach
//! logs, errors or `Debug`.

use std::time::{Duration, Instant};

use reqwest::RequestBuilder;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use tokio::sync::Mutex;
use url::Url;

use super::client::host_port;
use crate::error::{Error, Result};

/// What a client without credentials is told when the registry wants some.
pub const CREDENTIALS_NEEDED: &str = "the registry asks for credentials: give --token-file, \
     set MACHE_CACHE_TOKEN, or log in with docker";

/// A secret string: shown as `<redacted>` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the user gave us to authenticate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    /// A static bearer token, sent on every request.
    Token(Secret),
    /// A user and password (from docker's config), for basic auth and the
    /// token exchange.
    Basic {
        user: String,
        password: Secret,
    },
}

/// A token from a challenge's realm, and when to stop using it.
struct Cached {
    token: Secret,
    expires: Instant,
}

/// The auth state of one client.
pub struct Auth {
    credentials: Credentials,
    bearer: Mutex<Option<Cached>>,
    basic: std::sync::atomic::AtomicBool,
}

/// Tokens are renewed this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// What a token endpoint's answer without `expires_in` is good for (the
/// distribution spec's default).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);

/// Whether `url` is the registry's own origin: the same scheme, host and
/// port (a default port counts as given). Credentials go nowhere else.
fn same_origin(registry: &Url, url: &Url) -> bool {
    registry.origin() == url.origin()
}

/// Whether `url`'s host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a user and password may travel to `url`: over https, or over
/// plain http to a loopback host only.
fn may_send_password(url: &Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url))
}

impl Auth {
    pub fn new(credentials: Credentials) -> Auth {
        Auth {
            credentials,
            bearer: Mutex::new(None),
            basic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds what a request to `url` needs to authenticate, if `url` is on
    /// `registry` itself; a request anywhere else goes out without.
    pub async fn apply(
        &self,
        request: RequestBuilder,
        registry: &Url,
        url: &Url,
    ) -> RequestBuilder {
        if !same_origin(registry, url) {
            return request;
        }
        if let Credentials::Token(token) = &self.credentials {
            return request.bearer_auth(token.expose());
        }
        if let Some(cached) = &*self.bearer.lock().await
            && cached.expires > Instant::now()
        {
            return request.bearer_auth(cached.token.expose());
        }
        match &self.credentials {
            Credentials::Basic { user, password }
                if self.basic.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                request.basic_auth(user, Some(password.expose()))
            }
            _ => request,
        }
    }

    /// Handles a `401` from `from` (with `headers`) to a request for
    /// `registry`: learns how to authenticate from its challenge, so the
    /// request can be sent once more. An error when there is no way, or
    /// when the challenge does not come from the registry itself.
    pub async fn challenged(
        &self,
        http: &reqwest::Client,
        registry: &Url,
        from: &Url,
        headers: &HeaderMap,
    ) -> Result<()> {
        let failure = Failure {
            registry: host_port(registry),
            anonymous: self.credentials == Credentials::Anonymous,
        };
        if !same_origin(registry, from) {
            return Err(failure.plain(format!(
                "{} asked for credentials, which go only to the registry",
                host_port(from)
            )));
        }
        if let Credentials::Token(_) = self.credentials {
            return Err(failure.plain("the registry refused the token"));
        }
        let header = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| failure.needs("401 without a WWW-Authenticate challenge"))?;
        let challenge = Challenge::parse(header)
            .ok_or_else(|| failure.needs(format!("unsupported challenge {header:?}")))?;
        match challenge {
            Challenge::Basic => match self.credentials {
                Credentials::Basic { .. } if !may_send_password(registry) => {
                    Err(failure.plain(format!(
                        "refusing to send the user and password over plain http to {} \
                         (only over https, or to a loopback host)",
                        failure.registry
                    )))
                }
                Credentials::Basic { .. }
                    if !self.basic.swap(true, std::sync::atomic::Ordering::Relaxed) =>
                {
                    Ok(())
                }
                Credentials::Basic { .. } => {
                    Err(failure.plain("the user and password were refused"))
                }
                _ => Err(failure.needs("it asks for a user and password")),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self
                    .fetch_token(http, &realm, service.as_deref(), scope.as_deref(), &failure)
                    .await?;
                *self.bearer.lock().await = Some(token);
                Ok(())
            }
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        failure: &Failure,
    ) -> Result<Cached> {
        // A realm that is no URL names no token service: the registry (as
        // `serve --token-file` does) takes a token given to us, nothing else.
        let mut url = Url::parse(realm)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| failure.needs("it takes a bearer token"))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            if let Some(scope) = scope {
                query.append_pair("scope", scope);
            }
        }
        let mut request = http.get(url.clone());
        if let Credentials::Basic { user, password } = &self.credentials {
            if !may_send_password(&url) {
                return Err(failure.plain(format!(
                    "refusing to send the user and password over plain http to the token \
                     realm {} (only over https, or to a loopback host)",
                    host_port(&url)
                )));
            }
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = request.send().await.map_err(|e| {
            failure.plain(format!("token endpoint unreachable: {}", e.without_url()))
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(failure.needs(format!("the token endpoint answered {status}")));
        }
        if !status.is_success() {
            return Err(failure.plain(format!("the token endpoint answered {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = super::client::read_limited(response, 1 << 20).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| failure.plain("the token endpoint's answer is not JSON"))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| failure.plain("the token endpoint gave no token"))?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_EXPIRY, Duration::from_secs);
        Ok(Cached {
            token: Secret::new(token),
            expires: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        })
    }
}

/// The failures of one handshake with a registry.
struct Failure {
    /// The registry, for messages: `host[:port]`.
    registry: String,
    /// Whether the client has no credentials at all.
    anonymous: bool,
}

impl Failure {
    /// A failure as it is.
    fn plain(&self, reason: impl Into<String>) -> Error {
        Error::AuthFailed {
            registry: self.registry.clone(),
            reason: reason.into(),
        }
    }

    /// A failure that means the registry wants credentials: a client
    /// without any is told how to give them.
    fn needs(&self, reason: impl Into<String>) -> Error {
        let reason = reason.into();
        if self.anonymous {
            self.plain(format!("{CREDENTIALS_NEEDED} ({reason})"))
        } else {
            self.plain(reason)
        }
    }
}

/// A parsed `WWW-Authenticate` challenge we can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of a `WWW-Authenticate` value we can answer:
    /// Bearer with a realm, or Basic; `None` if there is none.
    pub fn parse(header: &str) -> Option<Challenge> {
        let challenges = http_auth::parse_challenges(header).ok()?;
        let param = |c: &http_auth::ChallengeRef, name: &str| {
            c.params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.to_unescaped())
        };
        challenges.iter().find_map(|c| {
            if c.scheme.eq_ignore_ascii_case("bearer") {
                Some(Challenge::Bearer {
                    realm: param(c, "realm")?,
                    service: param(c, "service"),
                    scope: param(c, "scope"),
                })
            } else if c.scheme.eq_ignore_ascii_case("basic") {
                Some(Challenge::Basic)
            } else {
                None
            }
        })
    }
}

/// Where credentials may come from, highest precedence first.
#[derive(Debug, Default, Clone)]
pub struct CredentialSources {
    pub token_file: Option<std::path::PathBuf>,
    pub token: Option<Secret>,
    pub env_token: Option<Secret>,
    pub config_token_file: Option<std::path::PathBuf>,
}

/// Which of the [`CredentialSources`] the credentials came from, for
/// `doctor`: a name and a path at most, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--token-file`.
    TokenFile(std::path::PathBuf),
    /// `--token`.
    TokenFlag,
    /// `$MACHE_CACHE_TOKEN`.
    Environment,
    /// The config file's `token_file`.
    ConfigTokenFile(std::path::PathBuf),
    /// The user's docker login.
    Docker,
    /// None of them: requests go out anonymous.
    Anonymous,
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::TokenFile(path) => {
                write!(f, "a token from --token-file {}", path.display())
            }
            CredentialSource::TokenFlag => f.write_str("a token from --token"),
            CredentialSource::Environment => f.write_str("a token from $MACHE_CACHE_TOKEN"),
            CredentialSource::ConfigTokenFile(path) => {
                write!(f, "a token from the config's token_file {}", path.display())
            }
            CredentialSource::Docker => f.write_str("the docker login"),
            CredentialSource::Anonymous => f.write_str("no credentials (anonymous)"),
        }
    }
}

impl CredentialSources {
    /// The credentials for `registry` (`host[:port]`).
    pub fn resolve(&self, registry: &str) -> Result<Credentials> {
        self.resolve_with_source(registry)
            .map(|(credentials, _)| credentials)
    }

    /// The credentials for `registry` (`host[:port]`), and where they came from.
    pub fn resolve_with_source(&self, registry: &str) -> Result<(Credentials, CredentialSource)> {
        if let Some(path) = &self.token_file {
            return Ok((
                read_token_file(path)?,
                CredentialSource::TokenFile(path.clone()),
            ));
        }
        if let Some(token) = &self.token {
            return Ok((
                Credentials::Token(token.clone()),
                CredentialSource::TokenFlag,
            ));
        }
        if let Some(token) = &self.env_token {
            return Ok((
                Credentials::Token(token.clone()),
                CredentialSource::Environment,
            ));
        }
        if let Some(path) = &self.config_token_file {
            let source = CredentialSource::ConfigTokenFile(path.clone());
            return Ok((read_token_file(path)?, source));
        }
        let credentials = docker_credentials(registry);
        let source = match credentials {
            Credentials::Anonymous => CredentialSource::Anonymous,
            _ => CredentialSource::Docker,
        };
        Ok((credentials, source))
    }
}

fn read_token_file(path: &std::path::Path) -> Result<Credentials> {
    let reading = |e| Error::io(format!("reading the token file {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(reading)?;
    warn_if_open(path, &file.metadata().map_err(reading)?);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(reading)?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(Error::BadSetting(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(Credentials::Token(Secret::new(token)))
}

/// Warns, as ssh does for keys, when group or others may use a token file.
fn warn_if_open(path: &std::path::Path, metadata: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if metadata.is_file() && mode & 0o077 != 0 {
        tracing::warn!(
            "the token file {} is open to group or others (mode {mode:04o}): chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

/// The user's docker login for `registry`, if any (anonymous otherwise).
fn docker_credentials(registry: &str) -> Credentials {
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            Credentials::Basic {
                user,
                password: Secret::new(password),
            }
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            Credentials::Token(Secret::new(token))
        }
        // A helper's failure carries what it printed: not logged.
        Err(docker_credential::CredentialRetrievalError::HelperFailure { helper, .. }) => {
            tracing::debug!("no docker credentials for {registry}: helper {helper} failed");
            Credentials::Anonymous
        }
        Err(e) => {
            tracing::debug!("no docker credentials for {registry}: {e}");
            Credentials::Anonymous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn http() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn basic() -> Credentials {
        Credentials::Basic {
            user: "ci".into(),
            password: Secret::new("hunter2"),
        }
    }

    fn challenge(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, value.parse().unwrap());
        headers
    }

    /// The handshake's outcome for a `401` with `challenge` from `registry`
    /// itself: the `Authorization` the retried request then carries, or
    /// the error.
    fn answer(credentials: Credentials, registry: &str, challenge_value: &str) -> Result<String> {
        let auth = Auth::new(credentials);
        let registry = url(registry);
        block_on(async {
            auth.challenged(&http(), &registry, &registry, &challenge(challenge_value))
                .await?;
            let request = auth
                .apply(http().get(registry.clone()), &registry, &registry)
                .await
                .build()
                .unwrap();
            Ok(request
                .headers()
                .get(reqwest::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default())
        })
    }

    #[test]
    fn a_password_goes_over_https_or_to_a_loopback_host_only() {
        for allowed in [
            "https://registry.example.com",
            "http://127.0.0.1:5000",
            "http://127.0.0.2:5000",
            "http://localhost:5000",
            "http://[::1]:5000",
        ] {
            let sent = answer(basic(), allowed, r#"Basic realm="r""#).unwrap();
            assert!(sent.starts_with("Basic "), "{allowed}: {sent:?}");
        }
        for refused in ["http://registry.example.com", "http://10.0.0.7:5000"] {
            let err = answer(basic(), refused, r#"Basic realm="r""#).unwrap_err();
            assert!(matches!(err, Error::AuthFailed { .. }), "{refused}: {err}");
            assert!(err.to_string().contains("over plain http"), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_token_realm_over_plain_http_elsewhere_gets_no_password() {
        // Refused before any connection: nothing listens at the realm.
        let err = answer(
            basic(),
            "https://registry.example.com",
            r#"Bearer realm="http://auth.example.com/token",service="r""#,
        )
        .unwrap_err();
        assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("plain http to the token realm auth.example.com"),
            "{err}"
        );
    }

    #[test]
    fn credentials_go_to_the_registry_origin_only() {
        let auth = Auth::new(Credentials::Token(Secret::new("tok-123")));
        let registry = url("https://registry.example.com");
        let sent = |to: &str| {
            let to = url(to);
            let request = block_on(auth.apply(http().get(to.clone()), &registry, &to));
            request
                .build()
                .unwrap()
                .headers()
                .contains_key(reqwest::header::AUTHORIZATION)
        };
        assert!(sent(
            "https://registry.example.com/v2/mache/x/blobs/uploads/1"
        ));
        assert!(sent("https://registry.example.com:443/v2/"));
        assert!(!sent("https://storage.example.com/upload/1"));
        assert!(!sent("https://registry.example.com:8443/v2/"));
        assert!(!sent("http://registry.example.com/v2/"));
    }

    #[test]
    fn a_challenge_from_another_host_is_not_answered() {
        let auth = Auth::new(basic());
        let err = block_on(auth.challenged(
            &http(),
            &url("https://registry.example.com"),
            &url("https://storage.example.com/blob"),
            &challenge(r#"Basic realm="r""#),
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("storage.example.com asked for credentials"),
            "{err}"
        );
    }

    #[test]
    fn a_client_without_credentials_is_told_how_to_give_them() {
        for challenge_value in [
            r#"Basic realm="Registry Realm""#,
            r#"Bearer realm="mache-cachefs",service="mache-cachefs""#,
            "Negotiate",
        ] {
            let err =
                answer(Credentials::Anonymous, "https://r.example", challenge_value).unwrap_err();
            assert!(matches!(err, Error::AuthFailed { .. }), "{err}");
            assert!(err.to_string().contains(CREDENTIALS_NEEDED), "{err}");
        }
        let err = answer(
            basic(),
            "https://r.example",
            r#"Bearer realm="mache-cachefs""#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains(CREDENTIALS_NEEDED), "{err}");
    }

    #[test]
    fn challenges_parse_with_commas_inside_quotes() {
        let header = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:mache/team:pull,push""#;
        assert_eq!(
            Challenge::parse(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:mache/team:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let credentials = Credentials::Basic {
            user: "ci".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Token(Secret::new("tok-123"))).contains("tok-123"));
    }

    #[test]
    fn token_precedence_is_file_then_flag_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let mut sources = CredentialSources {
            token_file: Some(file),
            token: Some(Secret::new("from-flag")),
            env_token: Some(Secret::new("from-env")),
            config_token_file: None,
        };
        let token = |s: &CredentialSources| match s.resolve("r.example").unwrap() {
            Credentials::Token(t) => t.expose().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(token(&sources), "from-file");
        sources.token_file = None;
        assert_eq!(token(&sources), "from-flag");
        sources.token = None;
        assert_eq!(token(&sources), "from-env");
    }

    #[test]
    fn the_source_is_named_without_the_secret() {
        let sources = CredentialSources {
            env_token: Some(Secret::new("from-env")),
            ..CredentialSources::default()
        };
        let (_, source) = sources.resolve_with_source("r.example").unwrap();
        assert_eq!(source, CredentialSource::Environment);
        assert_eq!(source.to_string(), "a token from $MACHE_CACHE_TOKEN");
        let file = CredentialSources {
            config_token_file: Some("/nonexistent/token".into()),
            ..CredentialSources::default()
        };
        let err = file.resolve_with_source("r.example").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }
}
