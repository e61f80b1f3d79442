//! Entry points for the fuzz targets (`fuzz/`): the request parsing `serve`
//! does before any handler runs, reachable without a server. Not an API.

use axum::http::{HeaderMap, HeaderValue, Method, header};

/// A `Range` header against a blob of `len` bytes: the inclusive
/// `(first, last)` served, or `None` for `RANGE_INVALID`.
pub fn range(text: &str, len: u64) -> Option<(u64, u64)> {
    super::blobs::parse_range(text, len).ok()
}

/// Whether a `PATCH`'s `Content-Range` continues an upload that holds
/// `offset` bytes (`None`: the text is no header value at all).
pub fn continues_upload(content_range: &[u8], offset: u64) -> Option<bool> {
    let value = HeaderValue::from_bytes(content_range).ok()?;
    let headers = HeaderMap::from_iter([(header::CONTENT_RANGE, value)]);
    Some(super::uploads::check_content_range(&headers, offset).is_ok())
}

/// A token file's text: `(read-only, read-write)` token counts, or the
/// reason it is refused.
pub fn token_file(text: &str) -> Result<(usize, usize), String> {
    super::auth::Tokens::parse(text).map(|tokens| tokens.counts())
}

/// Whether a request carrying `authorization` (any bytes) is let through
/// by the tokens of `token_file` (which must parse), to write (a `PUT`) or
/// to read (a `GET`).
pub fn authorizes(token_file: &str, authorization: &[u8], write: bool) -> Option<bool> {
    let method = if write { Method::PUT } else { Method::GET };
    let tokens = super::auth::Tokens::parse(token_file).ok()?;
    let value = HeaderValue::from_bytes(authorization).ok()?;
    let headers = HeaderMap::from_iter([(header::AUTHORIZATION, value)]);
    Some(matches!(
        tokens.check(&headers, &method),
        super::auth::Verdict::Admitted
    ))
}
