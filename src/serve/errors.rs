//! The OCI error envelope: every refusal `serve` answers is a
//! [`RegistryError`], rendered as `{"errors":[{"code","message","detail"}]}`
//! with the status its [`Code`] carries (OCI Distribution's codes plus the
//! ones SPEC §6 adds for build-cache/v1).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An error code of the envelope, each with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 404: no blob with that digest.
    BlobUnknown,
    /// 404: no upload with that id (never started, finished, or cancelled).
    BlobUploadUnknown,
    /// 400: an upload body that could not be read to its end.
    BlobUploadInvalid,
    /// 400: a digest that is not `sha256:` + 64 lowercase hex.
    DigestInvalid,
    /// 404: no manifest with that tag or digest in the repository.
    ManifestUnknown,
    /// 400: a manifest that is not valid JSON of the expected shape.
    ManifestInvalid,
    /// 400: a repository name outside the OCI grammar.
    NameInvalid,
    /// 401: a missing or wrong bearer token.
    Unauthorized,
    /// 403: a token that may read, on a request that writes.
    Denied,
    /// 429: a limit on work in progress (uploads, manifest memory) is
    /// reached; the client may retry after `Retry-After` seconds.
    TooManyRequests,
    /// 416: a `Range` or `Content-Range` that cannot be satisfied.
    RangeInvalid,
    /// 405: a method this route does not support.
    Unsupported,
    /// 400 (SPEC §6): uploaded bytes hash to neither reading of the digest.
    BlobDigestMismatch,
    /// 415 (SPEC §6): a manifest of another media type.
    ManifestMediatypeRefused,
    /// 400 (SPEC §6): the manifest's config blob is not here.
    ManifestConfigMissing,
    /// 400 (SPEC §6): one of the manifest's layer blobs is not here.
    ManifestLayerMissing,
    /// 413 (SPEC §6): a body past the configured size limit.
    BlobTooLarge,
    /// 500: the store failed (I/O, corruption); the message says how.
    Unknown,
}

impl Code {
    /// The code's text in the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::NameInvalid => "NAME_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::BlobDigestMismatch => "BLOB_DIGEST_MISMATCH",
            Code::ManifestMediatypeRefused => "MANIFEST_MEDIATYPE_REFUSED",
            Code::ManifestConfigMissing => "MANIFEST_CONFIG_MISSING",
            Code::ManifestLayerMissing => "MANIFEST_LAYER_MISSING",
            Code::BlobTooLarge => "BLOB_TOO_LARGE",
            Code::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status answered with this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown | Code::BlobUploadUnknown | Code::ManifestUnknown => {
                StatusCode::NOT_FOUND
            }
            Code::DigestInvalid
            | Code::BlobUploadInvalid
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::BlobDigestMismatch
            | Code::ManifestConfigMissing
            | Code::ManifestLayerMissing => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::ManifestMediatypeRefused => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::BlobTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One refusal: a code, a one-line message for people and an optional
/// machine-readable detail.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct RegistryError {
    /// What kind of refusal, and so the status.
    pub code: Code,
    /// What was wrong, naming the digest, name or limit involved.
    pub message: String,
    /// Structured detail (`null` when there is none).
    pub detail: serde_json::Value,
    /// Extra headers for this answer (a challenge, a `Content-Range`).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The `Retry-After` of a 429: work in progress ends within seconds.
const RETRY_AFTER_SECS: &str = "2";

/// What every handler returns.
pub type RegistryResult<T> = std::result::Result<T, RegistryError>;

impl RegistryError {
    /// A refusal with `code` and `message`, no detail.
    pub fn new(code: Code, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    /// Adds structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> RegistryError {
        self.detail = detail;
        self
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> RegistryError {
        self.headers.push((name, value));
        self
    }

    /// A `TOOMANYREQUESTS` refusal (429) asking the client to retry after
    /// two seconds.
    pub fn busy(message: impl Into<String>) -> RegistryError {
        RegistryError::new(Code::TooManyRequests, message).with_header(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        )
    }

    /// A failure of the store under the server (500). Logged here, since
    /// it is ours, not the client's.
    pub fn internal(err: Error) -> RegistryError {
        tracing::error!("store failure: {err}");
        RegistryError::new(Code::Unknown, err.to_string())
    }
}

impl From<Error> for RegistryError {
    fn from(err: Error) -> RegistryError {
        RegistryError::internal(err)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{
            "code": self.code.as_str(),
            "message": self.message,
            "detail": self.detail,
        }]});
        let mut response = (
            self.code.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_carry_their_statuses() {
        let cases = [
            (Code::BlobDigestMismatch, 400),
            (Code::ManifestMediatypeRefused, 415),
            (Code::ManifestConfigMissing, 400),
            (Code::ManifestLayerMissing, 400),
            (Code::BlobTooLarge, 413),
            (Code::RangeInvalid, 416),
            (Code::Unauthorized, 401),
            (Code::Denied, 403),
            (Code::TooManyRequests, 429),
            (Code::Unsupported, 405),
        ];
        for (code, status) in cases {
            assert_eq!(code.status().as_u16(), status, "{}", code.as_str());
        }
    }
}
