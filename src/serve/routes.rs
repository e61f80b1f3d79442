//! What a `/v2/…` path names, and which handler answers each method on it.
//!
//! Repository names have several segments (`<producer>/<scope>`, the scope
//! itself possibly `team/repo`), so axum routes `/v2/{*rest}` here and
//! [`Route::parse`] reads the rest from its end: `…/blobs/<digest>`,
//! `…/blobs/uploads/`, `…/blobs/uploads/<id>`, `…/manifests/<ref>`,
//! `…/tags/list`; what comes before is the name.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};

use super::errors::{Code, RegistryError, RegistryResult};
use super::{App, blobs, manifests, uploads};
use crate::oci::{MAX_REPOSITORY_NAME, is_repository_name};

/// A parsed `/v2/<rest>` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `<name>/blobs/uploads/<id>`
    Upload { name: String, id: String },
    /// `<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `<name>/tags/list`
    Tags { name: String },
}

impl Route {
    /// Parses the path after `/v2/`; an unknown shape or an invalid name is
    /// `NAME_INVALID`.
    pub fn parse(rest: &str) -> RegistryResult<Route> {
        let segments: Vec<&str> = rest.split('/').collect();
        let (name_len, route): (usize, fn(String, &str) -> Route) = match segments.as_slice() {
            [.., "tags", "list"] => (segments.len() - 2, |name, _| Route::Tags { name }),
            [.., "blobs", "uploads", ""] | [.., "blobs", "uploads"] => {
                let len = segments.len() - 2 - usize::from(rest.ends_with('/'));
                (len, |name, _| Route::UploadStart { name })
            }
            [.., "blobs", "uploads", _] => (segments.len() - 3, |name, id| Route::Upload {
                name,
                id: id.to_string(),
            }),
            [.., "blobs", _] => (segments.len() - 2, |name, digest| Route::Blob {
                name,
                digest: digest.to_string(),
            }),
            [.., "manifests", _] => (segments.len() - 2, |name, reference| Route::Manifest {
                name,
                reference: reference.to_string(),
            }),
            _ => {
                return Err(RegistryError::new(
                    Code::NameInvalid,
                    format!("no such route: /v2/{rest}"),
                ));
            }
        };
        let name = segments[..name_len].join("/");
        check_name(&name)?;
        Ok(route(name, segments.last().copied().unwrap_or_default()))
    }
}

/// A repository name ([`is_repository_name`]), else `NAME_INVALID`.
pub fn check_name(name: &str) -> RegistryResult<()> {
    if is_repository_name(name) {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::NameInvalid,
        format!(
            "invalid repository name {:?}: expected <producer>/<scope>, components of \
             [a-z0-9] separated by '.', '_', '__' or dashes, at most {MAX_REPOSITORY_NAME} characters",
            name.chars().take(300).collect::<String>()
        ),
    ))
}

/// Everything a handler may need from the request.
pub struct Request {
    /// The HTTP method.
    pub method: Method,
    /// The request headers.
    pub headers: HeaderMap,
    /// The decoded query parameters (`digest`, `mount`, …).
    pub query: HashMap<String, String>,
    /// The body, not yet read.
    pub body: Body,
}

/// `GET /v2/`: the API version check.
pub async fn base() -> Response {
    let headers = [
        ("Docker-Distribution-API-Version", "registry/2.0"),
        ("Content-Type", "application/json"),
    ];
    (headers, "{}").into_response()
}

/// `/v2/{*rest}`: parses the path and hands the request to its handler.
pub async fn dispatch(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = Request {
        method,
        headers,
        query,
        body,
    };
    match route(app, &rest, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn route(app: Arc<App>, rest: &str, request: Request) -> RegistryResult<Response> {
    let route = Route::parse(rest)?;
    let method = request.method.clone();
    match (route, &method) {
        (Route::Blob { digest, .. }, &Method::GET | &Method::HEAD) => {
            blobs::get(&app, &digest, &request.headers, &method).await
        }
        (Route::UploadStart { name }, &Method::POST) => uploads::start(&app, name, request).await,
        (Route::Upload { name, id }, &Method::PATCH) => {
            uploads::patch(&app, &name, &id, request).await
        }
        (Route::Upload { name, id }, &Method::PUT) => {
            uploads::finish(&app, &name, &id, request).await
        }
        (Route::Upload { name, id }, &Method::GET) => uploads::status(&app, &name, &id).await,
        (Route::Upload { name, id }, &Method::DELETE) => uploads::cancel(&app, &name, &id),
        (Route::Manifest { name, reference }, &Method::GET | &Method::HEAD) => {
            manifests::get(&app, &name, &reference, &method).await
        }
        (Route::Manifest { name, reference }, &Method::PUT) => {
            manifests::put(&app, &name, &reference, request).await
        }
        (Route::Manifest { name, reference }, &Method::DELETE) => {
            manifests::delete(&app, &name, &reference).await
        }
        (Route::Tags { name }, &Method::GET) => manifests::tags(&app, &name).await,
        (_, method) => Err(RegistryError::new(
            Code::Unsupported,
            format!("{method} is not supported on /v2/{rest}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn multi_segment_names_parse_from_the_end() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            Route::parse(&format!("mache/team/repo/blobs/{digest}")).unwrap(),
            Route::Blob {
                name: name("mache/team/repo"),
                digest: digest.clone()
            }
        );
        assert_eq!(
            Route::parse("mache/team/blobs/uploads/").unwrap(),
            Route::UploadStart {
                name: name("mache/team")
            }
        );
        assert_eq!(
            Route::parse("mache/team/blobs/uploads").unwrap(),
            Route::UploadStart {
                name: name("mache/team")
            }
        );
        assert_eq!(
            Route::parse("mache/team/blobs/uploads/abc").unwrap(),
            Route::Upload {
                name: name("mache/team"),
                id: name("abc")
            }
        );
        assert_eq!(
            Route::parse("mache/blobs/manifests/latest").unwrap(),
            Route::Manifest {
                name: name("mache/blobs"),
                reference: name("latest")
            }
        );
        assert_eq!(
            Route::parse("mache/a/b/tags/list").unwrap(),
            Route::Tags {
                name: name("mache/a/b")
            }
        );
    }

    #[test]
    fn names_follow_the_oci_grammar() {
        for good in ["mache/x", "mache/team/repo", "a.b/c__d/e--f", "m/x-y_z.0"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "mache",
            "Mache/x",
            "mache//x",
            "mache/-x",
            "mache/x-",
            "mache/x___y",
            "mache/x..y",
            "mache/../x",
            "",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(Route::parse("mache/blobs/sha256:x").is_err());
        assert!(Route::parse("mache/team/nothing").is_err());
    }
}
