//! Blob `HEAD` and `GET`, with single byte ranges.
//!
//! Bodies are streamed from the object file, read on blocking threads. A
//! whole-blob `GET` is hashed as it goes out: if the object turns out not
//! to hash to its name (corruption on disk), the body is cut short, so the
//! client sees a failed transfer, never a complete wrong blob. A range
//! cannot be checked that way; clients verify what they assemble.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::digest::parse_digest;
use super::errors::{Code, RegistryError, RegistryResult};
use super::{App, blocking};
use crate::hash::Hash;

/// Bytes read from disk per body frame.
const READ_CHUNK: usize = 256 << 10;

/// `HEAD`/`GET <name>/blobs/<digest>`.
pub async fn get(
    app: &App,
    digest: &str,
    headers: &HeaderMap,
    method: &Method,
) -> RegistryResult<Response> {
    let digest = parse_digest(digest)?;
    let registry = app.registry.clone();
    let (hash, path, len) = blocking(move || {
        let store = registry.store();
        let found = registry.resolve_blob(&digest)?;
        let (hash, len) = found
            .and_then(|hash| Some((hash, store.object_len(&hash)?)))
            .ok_or_else(|| RegistryError::new(Code::BlobUnknown, format!("no blob {digest}")))?;
        Ok((hash, store.object_path(&hash), len))
    })
    .await?;
    let range = match headers.get(header::RANGE) {
        Some(value) => Some(parse_range(value.to_str().unwrap_or_default(), len)?),
        None => None,
    };
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.to_string());
    let (start, count, verify) = match range {
        Some((first, last)) => {
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
            (first, last - first + 1, None)
        }
        None => (0, len, Some(hash)),
    };
    response = response.header(header::CONTENT_LENGTH, count);
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        let chunks = blocking(move || Ok(FileChunks::open(path, start, count, verify)?)).await?;
        Body::from_stream(futures_util::stream::try_unfold(chunks, FileChunks::next))
    };
    Ok(response.body(body).expect("valid response headers"))
}

/// Parses `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` against a blob of
/// `len` bytes into an inclusive `(first, last)`, clamped to the blob.
/// Anything else (other units, several ranges, a start past the end) is
/// `RANGE_INVALID` with `Content-Range: bytes */len`.
pub fn parse_range(text: &str, len: u64) -> RegistryResult<(u64, u64)> {
    let invalid = || {
        RegistryError::new(
            Code::RangeInvalid,
            format!("range {text:?} cannot be satisfied by a blob of {len} bytes"),
        )
        .with_header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii header"),
        )
    };
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    // Digits only (RFC 9110's 1*DIGIT): Rust's parser would take a sign.
    let number = |s: &str| match s.trim() {
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<u64>().map_err(|_| invalid())
        }
        _ => Err(invalid()),
    };
    let (first, last) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (false, false) => (number(first)?, number(last)?),
        (false, true) => (number(first)?, u64::MAX),
        (true, false) => {
            let suffix = number(last)?;
            if suffix == 0 {
                return Err(invalid());
            }
            (len.saturating_sub(suffix), u64::MAX)
        }
        (true, true) => return Err(invalid()),
    };
    if first > last || first >= len {
        return Err(invalid());
    }
    Ok((first, last.min(len - 1)))
}

/// A stretch of an object file being sent, and (for a whole blob) its hash
/// so far.
struct FileChunks {
    file: File,
    path: PathBuf,
    remaining: u64,
    verify: Option<(blake3::Hasher, Hash)>,
}

impl FileChunks {
    fn open(path: PathBuf, start: u64, count: u64, verify: Option<Hash>) -> crate::Result<Self> {
        let io_err = |e| crate::Error::io(format!("reading {}", path.display()), e);
        let mut file = File::open(&path).map_err(io_err)?;
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        Ok(FileChunks {
            file,
            path,
            remaining: count,
            verify: verify.map(|hash| (blake3::Hasher::new(), hash)),
        })
    }

    /// The next frame, read on a blocking thread; at the end, an error if
    /// the whole blob did not hash to its name.
    async fn next(mut self) -> std::io::Result<Option<(Bytes, FileChunks)>> {
        if self.remaining == 0 {
            self.check()?;
            return Ok(None);
        }
        tokio::task::spawn_blocking(move || {
            let bytes = self.read()?;
            Ok(Some((bytes, self)))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn read(&mut self) -> std::io::Result<Bytes> {
        let n = self.remaining.min(READ_CHUNK as u64) as usize;
        let mut buffer = vec![0; n];
        self.file.read_exact(&mut buffer)?;
        self.remaining -= n as u64;
        if let Some((hasher, _)) = &mut self.verify {
            hasher.update(&buffer);
        }
        Ok(Bytes::from(buffer))
    }

    fn check(&self) -> std::io::Result<()> {
        let Some((hasher, expected)) = &self.verify else {
            return Ok(());
        };
        let actual = Hash(*hasher.finalize().as_bytes());
        if actual == *expected {
            return Ok(());
        }
        let err = crate::Error::Corrupt {
            path: self.path.clone(),
            expected: *expected,
            actual,
        };
        tracing::error!("{err}; the transfer was cut short");
        Err(std::io::Error::other(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_clamp() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-200", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=10-", 100).unwrap(), (10, 99));
        assert_eq!(parse_range("bytes=-5", 100).unwrap(), (95, 99));
        assert_eq!(parse_range("bytes=-500", 100).unwrap(), (0, 99));
    }

    #[test]
    fn unsatisfiable_ranges_are_416_with_the_length() {
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=-0",
            "bytes=-",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-+5",
        ] {
            let err = parse_range(bad, 100).unwrap_err();
            assert_eq!(err.code, Code::RangeInvalid, "{bad}");
        }
        assert!(parse_range("bytes=0-0", 0).is_err());
    }
}
