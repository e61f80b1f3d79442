//! Credentials and the registry auth handshake, as every OCI client does it.
//!
//! Where credentials come from, first found wins: `--token-file` (first line,
//! trimmed), `--token`, `MACHE_CACHE_TOKEN` (mache's precedence), the config
//! file's `token_file`; with none of them, the user's docker `config.json`
//! (`$DOCKER_CONFIG` or `~/.docker/config.json`: `auths`, `credsStore`,
//! `credHelpers`, through the `docker_credential` crate).
//!
//! A static token is sent as `Authorization: Bearer` on every request (what
//! mache's client and build-cache/v1 providers expect). Otherwise requests
//! go out anonymous until a `401` says how to authenticate: `Bearer realm=…,
//! service=…,scope=…` fetches a token from the realm (with the basic
//! credentials, if any), cached until shortly before it expires and fetched
//! again on the next `401` (a long-lived mount outlives its tokens); `Basic`
//! sends the user and password. Secrets never reach logs, errors or `Debug`.

use std::time::{Duration, Instant};

use reqwest::RequestBuilder;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

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

impl Auth {
    pub fn new(credentials: Credentials) -> Auth {
        Auth {
            credentials,
            bearer: Mutex::new(None),
            basic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds what this request needs to authenticate.
    pub async fn apply(&self, request: RequestBuilder) -> RequestBuilder {
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

    /// Handles a `401`: learns how to authenticate from its challenge, so
    /// the request can be sent once more. An error when there is no way.
    pub async fn challenged(
        &self,
        http: &reqwest::Client,
        headers: &HeaderMap,
        registry: &str,
    ) -> Result<()> {
        let failed = |reason: &str| Error::AuthFailed {
            registry: registry.to_string(),
            reason: reason.to_string(),
        };
        if let Credentials::Token(_) = self.credentials {
            return Err(failed("the registry refused the token"));
        }
        let header = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| failed("401 without a WWW-Authenticate challenge"))?;
        let challenge = Challenge::parse(header)
            .ok_or_else(|| failed(&format!("unsupported challenge {header:?}")))?;
        match challenge {
            Challenge::Basic => match self.credentials {
                Credentials::Basic { .. }
                    if !self.basic.swap(true, std::sync::atomic::Ordering::Relaxed) =>
                {
                    Ok(())
                }
                Credentials::Basic { .. } => Err(failed("the user and password were refused")),
                _ => Err(failed(
                    "it asks for a user and password (docker login, or a token file)",
                )),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self
                    .fetch_token(http, &realm, service.as_deref(), scope.as_deref(), registry)
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
        registry: &str,
    ) -> Result<Cached> {
        let failed = |reason: String| Error::AuthFailed {
            registry: registry.to_string(),
            reason,
        };
        let mut url =
            url::Url::parse(realm).map_err(|_| failed(format!("bad token realm {realm:?}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            if let Some(scope) = scope {
                query.append_pair("scope", scope);
            }
        }
        let mut request = http.get(url);
        if let Credentials::Basic { user, password } = &self.credentials {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("token endpoint unreachable: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "the token endpoint answered {}",
                response.status()
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = super::client::read_limited(response, 1 << 20).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| failed("the token endpoint's answer is not JSON".into()))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| failed("the token endpoint gave no token".into()))?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_EXPIRY, Duration::from_secs);
        Ok(Cached {
            token: Secret::new(token),
            expires: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        })
    }
}

/// A parsed `WWW-Authenticate` challenge we can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
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

impl CredentialSources {
    /// The credentials for `registry` (`host[:port]`).
    pub fn resolve(&self, registry: &str) -> Result<Credentials> {
        if let Some(path) = &self.token_file {
            return read_token_file(path);
        }
        if let Some(token) = self.token.clone().or_else(|| self.env_token.clone()) {
            return Ok(Credentials::Token(token));
        }
        if let Some(path) = &self.config_token_file {
            return read_token_file(path);
        }
        Ok(docker_credentials(registry))
    }
}

fn read_token_file(path: &std::path::Path) -> Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(Error::BadSetting(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(Credentials::Token(Secret::new(token)))
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
        Err(e) => {
            tracing::debug!("no docker credentials for {registry}: {e}");
            Credentials::Anonymous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
