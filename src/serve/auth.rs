//! Who may do what: the tokens of `--token-file`, each read-only or
//! read-write, and the check every request passes.
//!
//! A token file has one token a line: `read-only <token>`, `read-write
//! <token>`, or a bare `<token>`, which may read and write (so a file of
//! one token, as before scopes existed, keeps its meaning). Blank lines and
//! lines starting with `#` are skipped. Tokens are held only as their
//! BLAKE3: they can be neither printed nor logged, and every comparison
//! takes the same time (blake3's `==`, against every token).
//!
//! A request presents a token as `Authorization: Bearer <token>` (what
//! build-cache/v1 clients send) or `Basic` with the token as the password
//! (what `docker login` stores). No token, or an unknown one, is 401
//! `UNAUTHORIZED`; a read-only token on a method that writes (`POST`,
//! `PUT`, `PATCH`, `DELETE`) is 403 `DENIED`.

use std::path::Path;

use axum::http::{HeaderMap, Method, header};
use base64::Engine;

use crate::error::{Error, Result};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `GET` and `HEAD` only.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

/// The tokens the server admits, each with its access.
pub struct Tokens(Vec<(blake3::Hash, Access)>);

/// What a request may do, by the token it presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token allows the method.
    Admitted,
    /// No token, or one the server does not know.
    Unauthorized,
    /// A known token that does not allow the method.
    Denied,
}

impl Tokens {
    /// One read-write token (tests, and callers with the token in hand).
    pub fn single(token: &str) -> Tokens {
        Tokens(vec![(blake3::hash(token.as_bytes()), Access::ReadWrite)])
    }

    /// Reads a token file; one without any token is refused.
    pub fn read(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading token file {}", path.display()), e))?;
        Tokens::parse(&text)
            .map_err(|why| Error::BadSetting(format!("token file {}: {why}", path.display())))
    }

    /// Parses a token file's text.
    pub fn parse(text: &str) -> std::result::Result<Tokens, String> {
        let tokens: Vec<(blake3::Hash, Access)> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(parse_line)
            .collect::<std::result::Result<_, _>>()?;
        if tokens.is_empty() {
            return Err("no token in it".to_string());
        }
        Ok(Tokens(tokens))
    }

    /// How many tokens of each access: (read-only, read-write).
    pub fn counts(&self) -> (usize, usize) {
        let read_only = self
            .0
            .iter()
            .filter(|(_, a)| *a == Access::ReadOnly)
            .count();
        (read_only, self.0.len() - read_only)
    }

    /// Whether the token `headers` carry allows `method`.
    pub fn check(&self, headers: &HeaderMap, method: &Method) -> Verdict {
        let Some(access) = presented(headers).and_then(|token| self.access(&token)) else {
            return Verdict::Unauthorized;
        };
        if access == Access::ReadWrite || !writes(method) {
            return Verdict::Admitted;
        }
        Verdict::Denied
    }

    /// The access of `token`, comparing it with every token known.
    fn access(&self, token: &str) -> Option<Access> {
        let hash = blake3::hash(token.as_bytes());
        self.0
            .iter()
            .fold(None, |found, (known, access)| match hash == *known {
                true => Some(*access),
                false => found,
            })
    }
}

/// A token file line: `read-only <token>`, `read-write <token>` or `<token>`.
fn parse_line(line: &str) -> std::result::Result<(blake3::Hash, Access), String> {
    let (first, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let (access, token) = match first {
        "read-only" => (Access::ReadOnly, rest.trim()),
        "read-write" => (Access::ReadWrite, rest.trim()),
        _ if rest.trim().is_empty() => (Access::ReadWrite, line),
        // A mistyped scope would otherwise make a token of the whole line.
        _ => {
            return Err(format!(
                "{first:?} is neither read-only nor read-write (a line is `read-only TOKEN`, \
                 `read-write TOKEN` or `TOKEN`)"
            ));
        }
    };
    if token.is_empty() {
        return Err(format!("a {first:?} line without a token"));
    }
    Ok((blake3::hash(token.as_bytes()), access))
}

/// Whether `method` changes the store.
fn writes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The token in `Authorization`: a `Bearer` token, or a `Basic` password.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let user_password = String::from_utf8(decoded).ok()?;
    let (_, password) = user_password.split_once(':')?;
    Some(password.to_string())
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (read_only, read_write) = self.counts();
        write!(
            f,
            "Tokens(<{read_only} read-only, {read_write} read-write, redacted>)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn basic(user_password: &str) -> HeaderMap {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        auth(&format!("Basic {encoded}"))
    }

    #[test]
    fn only_a_known_bearer_token_is_admitted_and_none_prints() {
        let tokens = Tokens::single("s3cret");
        let get = &Method::GET;
        assert_eq!(tokens.check(&auth("Bearer s3cret"), get), Verdict::Admitted);
        assert_eq!(tokens.check(&auth("bearer s3cret"), get), Verdict::Admitted);
        assert_eq!(tokens.check(&basic("ci:s3cret"), get), Verdict::Admitted);
        for wrong in ["Bearer s3cre", "Basic s3cret", "Token s3cret"] {
            assert_eq!(
                tokens.check(&auth(wrong), get),
                Verdict::Unauthorized,
                "{wrong}"
            );
        }
        assert_eq!(tokens.check(&basic("s3cret:x"), get), Verdict::Unauthorized);
        assert_eq!(tokens.check(&HeaderMap::new(), get), Verdict::Unauthorized);
        assert!(!format!("{tokens:?}").contains("s3cret"));
    }

    #[test]
    fn a_read_only_token_reads_and_is_denied_every_write() {
        let tokens = Tokens::parse("# team\nread-only dev\n\nread-write ci\nlegacy\n").unwrap();
        assert_eq!(tokens.counts(), (1, 2));
        let dev = auth("Bearer dev");
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(tokens.check(&dev, &method), Verdict::Admitted);
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(tokens.check(&dev, &method), Verdict::Denied, "{method}");
            for writer in ["Bearer ci", "Bearer legacy"] {
                assert_eq!(tokens.check(&auth(writer), &method), Verdict::Admitted);
            }
        }
    }

    #[test]
    fn a_file_of_one_bare_token_is_read_write_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc \n").unwrap();
        let tokens = Tokens::read(&path).unwrap();
        assert_eq!(
            tokens.check(&auth("Bearer abc"), &Method::PUT),
            Verdict::Admitted
        );
        for empty in ["\n", "# only a comment\n", "read-only \n"] {
            std::fs::write(&path, empty).unwrap();
            assert!(Tokens::read(&path).is_err(), "{empty:?}");
        }
    }
}
