//! Blob uploads: monolithic (`POST …/blobs/uploads/?digest=`), in one or
//! more chunks (`POST`, `PATCH`…, `PUT ?digest=`), and cross-repository
//! mounts (`POST ?mount=`).
//!
//! Bytes are streamed into a file in the store's `tmp/`, hashed with BLAKE3
//! and SHA-256 as they arrive (both on blocking threads, a batch of frames at
//! a time), and become an object only once the whole blob matches its
//! digest. Until then nothing is visible. An upload session lives in memory:
//! a failed `PATCH` ends it, a session unused for `--upload-expiry` is
//! dropped (with its file) by a timer task, and the server removes every
//! upload file of its own when it shuts down.
//!
//! Every upload in progress, a session or a monolithic `POST`, holds one
//! of `--max-uploads` slots and its bytes count against
//! `--max-upload-bytes` (taken as announced by `Content-Length`, else as
//! they arrive): past either, the upload is refused with 429
//! `TOOMANYREQUESTS` and `Retry-After`, and a refused `PATCH` whose body
//! was not read keeps its session, so the client can retry it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use tempfile::TempPath;

use super::body::next_frame;
use super::budget::{Budget, Share};
use super::digest::{check_digest, parse_digest};
use super::errors::{Code, RegistryError, RegistryResult};
use super::registry::Registry;
use super::routes::Request;
use super::{App, blocking};
use crate::error::Error;
use crate::oci::{Digest, DualHasher};

/// Body bytes gathered before one blocking write-and-hash.
const FLUSH_BYTES: usize = 1 << 20;
/// Default `--max-uploads`.
pub const DEFAULT_MAX_UPLOADS: &str = "256";
/// Default `--max-upload-bytes`.
pub const DEFAULT_MAX_UPLOAD_BYTES: &str = "32GiB";
/// Default `--upload-expiry` (the store's own sweep treats temporary files
/// of this age as debris too).
pub const DEFAULT_UPLOAD_EXPIRY: &str = "1h";

/// The limits on uploads in progress.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Uploads (sessions and monolithic `POST`s) in progress at once.
    pub max_uploads: u64,
    /// Bytes all uploads in progress may hold in `tmp/` together.
    pub max_bytes: u64,
    /// A session unused this long is dropped, its file removed.
    pub expiry: Duration,
}

/// The upload sessions of one server.
#[derive(Debug)]
pub struct Uploads {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Names this process's upload files in `tmp/`.
    prefix: String,
    /// One unit per upload in progress.
    slots: Arc<Budget>,
    /// The bytes of every upload in progress.
    bytes: Arc<Budget>,
    expiry: Duration,
}

#[derive(Debug)]
struct Session {
    name: String,
    last_used: Mutex<Instant>,
    /// `None` once a failed `PATCH` has dropped the bytes.
    staging: tokio::sync::Mutex<Option<Staging>>,
}

/// An upload being written in `tmp/`; dropping it deletes the file.
#[derive(Debug)]
struct Staging {
    file: File,
    temp: TempPath,
    hasher: DualHasher,
    _slot: Share,
    /// The upload's bytes, as counted against `--max-upload-bytes`.
    bytes: Share,
}

impl Uploads {
    /// No upload yet, within `limits`.
    pub fn new(limits: UploadLimits) -> Uploads {
        Uploads {
            sessions: Mutex::default(),
            prefix: format!(".upload-{}-", std::process::id()),
            slots: Budget::new(limits.max_uploads),
            bytes: Budget::new(limits.max_bytes),
            expiry: limits.expiry,
        }
    }

    /// How often [`expire`](Self::expire) should run: often enough that a
    /// session outlives its expiry by a quarter of it at most.
    pub fn expiry_tick(&self) -> Duration {
        (self.expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Drops every session unused for `--upload-expiry` and not in use
    /// now, removing its file. Blocks (file removal).
    pub fn expire(&self) {
        let expired: Vec<Arc<Session>> = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let stale: Vec<String> = sessions
                .iter()
                .filter(|(_, session)| session.is_stale(self.expiry))
                .map(|(id, _)| id.clone())
                .collect();
            stale.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        if !expired.is_empty() {
            tracing::info!(
                "dropped {} upload sessions unused for {} (--upload-expiry)",
                expired.len(),
                humantime::format_duration(self.expiry)
            );
        }
    }

    /// Ends every session and removes every upload file this process left
    /// in `tmp/` (including those of requests cut off mid-write).
    pub fn shut_down(&self, registry: &Registry) {
        self.sessions.lock().expect("sessions lock").clear();
        registry.store().remove_temp_files(&self.prefix);
    }

    fn insert(&self, name: String, staging: Staging) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Arc::new(Session {
            name,
            last_used: Mutex::new(Instant::now()),
            staging: tokio::sync::Mutex::new(Some(staging)),
        });
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.insert(id.clone(), session);
        id
    }

    fn get(&self, name: &str, id: &str) -> RegistryResult<Arc<Session>> {
        let sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(id) {
            Some(session) if session.name == name => {
                *session.last_used.lock().expect("session lock") = Instant::now();
                Ok(session.clone())
            }
            _ => Err(unknown_upload(id)),
        }
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }
}

impl Session {
    /// Unused for `expiry`, and no request holds it now.
    fn is_stale(&self, expiry: Duration) -> bool {
        let unused = self.last_used.lock().expect("session lock").elapsed() >= expiry;
        unused && self.staging.try_lock().is_ok()
    }
}

fn unknown_upload(id: &str) -> RegistryError {
    RegistryError::new(
        Code::BlobUploadUnknown,
        format!("no upload {id:?} (never started, finished, cancelled or interrupted)"),
    )
}

impl Staging {
    fn create(
        registry: &Registry,
        prefix: &str,
        slot: Share,
        bytes: Share,
    ) -> crate::Result<Staging> {
        let (file, temp) = registry.store().temp_file(prefix)?.into_parts();
        Ok(Staging {
            file,
            temp,
            hasher: DualHasher::default(),
            _slot: slot,
            bytes,
        })
    }

    fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Counts `len` bytes for this upload against `--max-upload-bytes`.
    fn reserve(&mut self, len: u64) -> RegistryResult<()> {
        if self.bytes.grow_to(len) {
            return Ok(());
        }
        let budget = self.bytes.budget();
        Err(RegistryError::busy(format!(
            "uploads in progress hold {} of the {} bytes this server allows them              (--max-upload-bytes); retry later",
            budget.used(),
            budget.total()
        )))
    }

    fn write(&mut self, frames: &[Bytes]) -> crate::Result<()> {
        for frame in frames {
            self.file
                .write_all(frame)
                .map_err(|e| Error::io(format!("writing upload {}", self.temp.display()), e))?;
            self.hasher.update(frame);
        }
        Ok(())
    }

    /// Checks the bytes against `claimed` and publishes them as an object.
    /// On a mismatch the file is deleted and nothing is published.
    fn publish(self, registry: &Registry, claimed: &Digest) -> RegistryResult<()> {
        let computed = self.hasher.finish();
        check_digest(&computed, claimed, Code::BlobDigestMismatch)?;
        drop(self.file);
        registry.publish_upload(self.temp, &computed)?;
        Ok(())
    }
}

/// Streams `body` onto `staging`, refusing to pass `limit` bytes in all,
/// or the upload bytes budget. Errors drop the staging (and so its file).
async fn receive(
    mut staging: Staging,
    body: Body,
    limit: u64,
    idle: Duration,
) -> RegistryResult<Staging> {
    let mut stream = body.into_data_stream();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0;
    while let Some(frame) = next_frame(&mut stream, idle, Code::BlobUploadInvalid, "upload").await?
    {
        pending_len += frame.len();
        let total = staging.len() + pending_len as u64;
        if total > limit {
            return Err(too_large(limit));
        }
        staging.reserve(total)?;
        pending.push(frame);
        if pending_len >= FLUSH_BYTES {
            staging = flush(staging, std::mem::take(&mut pending)).await?;
            pending_len = 0;
        }
    }
    flush(staging, pending).await
}

async fn flush(mut staging: Staging, frames: Vec<Bytes>) -> RegistryResult<Staging> {
    if frames.is_empty() {
        return Ok(staging);
    }
    blocking(move || {
        staging.write(&frames)?;
        Ok(staging)
    })
    .await
}

fn too_large(limit: u64) -> RegistryError {
    RegistryError::new(
        Code::BlobTooLarge,
        format!("blob is larger than the {limit} bytes this server accepts (--max-blob-size)"),
    )
}

/// The length `headers` announce (`Content-Length`), 0 when none.
pub fn announced_len(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Refuses at once a body whose announced length is past the limit or the
/// upload bytes budget, before a byte of it is read.
fn check_announced(headers: &HeaderMap, staging: &mut Staging, limit: u64) -> RegistryResult<()> {
    let total = staging.len().saturating_add(announced_len(headers));
    if total > limit {
        return Err(too_large(limit));
    }
    staging.reserve(total)
}

/// `POST <name>/blobs/uploads/`: a monolithic upload with `?digest=`, a
/// mount of a blob already here with `?mount=`, else a new session.
pub async fn start(app: &App, name: String, request: Request) -> RegistryResult<Response> {
    if let Some(digest) = request.query.get("digest") {
        let digest = parse_digest(digest)?;
        if announced_len(&request.headers) > app.limits.max_blob {
            return Err(too_large(app.limits.max_blob));
        }
        let mut staging = new_staging(app).await?;
        check_announced(&request.headers, &mut staging, app.limits.max_blob)?;
        let staging = receive_within(app, staging, request.body).await?;
        return publish(app, &name, staging, digest).await;
    }
    if let Some(mounted) = mounted_blob(app, &request.query).await? {
        return Ok(created(&name, &mounted));
    }
    let staging = new_staging(app).await?;
    let id = app.uploads.insert(name.clone(), staging);
    Ok(accepted(&name, &id, 0, StatusCode::ACCEPTED))
}

/// `?mount=<digest>`: the digest, if that blob is already here.
async fn mounted_blob(
    app: &App,
    query: &HashMap<String, String>,
) -> RegistryResult<Option<Digest>> {
    let Some(mount) = query.get("mount") else {
        return Ok(None);
    };
    let digest = parse_digest(mount)?;
    let registry = app.registry.clone();
    blocking(move || Ok(registry.resolve_blob(&digest)?.map(|_| digest))).await
}

/// A new upload file, if an upload slot is free.
async fn new_staging(app: &App) -> RegistryResult<Staging> {
    let slots = &app.uploads.slots;
    let slot = slots.take(1).ok_or_else(|| {
        RegistryError::busy(format!(
            "{} uploads are in progress, as many as this server allows (--max-uploads); retry later",
            slots.total()
        ))
    })?;
    let bytes = app
        .uploads
        .bytes
        .take(0)
        .expect("an empty share always fits");
    let registry = app.registry.clone();
    let prefix = app.uploads.prefix.clone();
    blocking(move || Ok(Staging::create(&registry, &prefix, slot, bytes)?)).await
}

/// [`receive`] within the server's limits.
async fn receive_within(app: &App, staging: Staging, body: Body) -> RegistryResult<Staging> {
    receive(staging, body, app.limits.max_blob, app.limits.idle_timeout).await
}

/// `PATCH <name>/blobs/uploads/<id>`: appends the body.
pub async fn patch(app: &App, name: &str, id: &str, request: Request) -> RegistryResult<Response> {
    let session = app.uploads.get(name, id)?;
    let mut slot = session.staging.lock().await;
    let mut staging = slot.take().ok_or_else(|| unknown_upload(id))?;
    let offset = staging.len();
    let checked = check_content_range(&request.headers, offset)
        .and_then(|()| check_announced(&request.headers, &mut staging, app.limits.max_blob));
    let received = match checked {
        Ok(()) => receive_within(app, staging, request.body).await,
        Err(err) => {
            *slot = Some(staging);
            return Err(err);
        }
    };
    match received {
        Ok(staging) => {
            let len = staging.len();
            *slot = Some(staging);
            Ok(accepted(name, id, len, StatusCode::ACCEPTED))
        }
        Err(err) => {
            app.uploads.remove(id);
            Err(err)
        }
    }
}

/// A `Content-Range: <first>-<last>` on a `PATCH` must continue where the
/// upload stands.
pub(super) fn check_content_range(headers: &HeaderMap, offset: u64) -> RegistryResult<()> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let first = text
        .trim()
        .trim_start_matches("bytes ")
        .split_once('-')
        .and_then(|(first, _)| first.trim().parse::<u64>().ok());
    if first == Some(offset) {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::RangeInvalid,
        format!("Content-Range {text:?} does not continue the upload, which has {offset} bytes"),
    )
    .with_header(
        header::RANGE,
        range_value(offset).parse().expect("ascii header"),
    ))
}

/// `PUT <name>/blobs/uploads/<id>?digest=`: appends any body, checks the
/// whole blob against the digest and publishes it. The session ends either
/// way, unless the body's announced length was refused before it was read
/// (past a limit): then the client may retry.
pub async fn finish(app: &App, name: &str, id: &str, request: Request) -> RegistryResult<Response> {
    let digest = request.query.get("digest").ok_or_else(|| {
        RegistryError::new(
            Code::DigestInvalid,
            "completing an upload needs ?digest=sha256:<hex>",
        )
    })?;
    let digest = parse_digest(digest)?;
    let session = app.uploads.get(name, id)?;
    let mut slot = session.staging.lock().await;
    let mut staging = slot.take().ok_or_else(|| unknown_upload(id))?;
    if let Err(err) = check_announced(&request.headers, &mut staging, app.limits.max_blob) {
        *slot = Some(staging);
        return Err(err);
    }
    app.uploads.remove(id);
    drop(slot);
    let staging = receive_within(app, staging, request.body).await?;
    publish(app, name, staging, digest).await
}

async fn publish(
    app: &App,
    name: &str,
    staging: Staging,
    digest: Digest,
) -> RegistryResult<Response> {
    let registry = app.registry.clone();
    blocking(move || staging.publish(&registry, &digest)).await?;
    Ok(created(name, &digest))
}

/// `GET <name>/blobs/uploads/<id>`: how far the upload is.
pub async fn status(app: &App, name: &str, id: &str) -> RegistryResult<Response> {
    let session = app.uploads.get(name, id)?;
    let len = match session.staging.lock().await.as_ref() {
        Some(staging) => staging.len(),
        None => return Err(unknown_upload(id)),
    };
    Ok(accepted(name, id, len, StatusCode::NO_CONTENT))
}

/// `DELETE <name>/blobs/uploads/<id>`: abandons the upload.
pub fn cancel(app: &App, name: &str, id: &str) -> RegistryResult<Response> {
    app.uploads.get(name, id)?;
    app.uploads.remove(id);
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("valid response"))
}

/// The `Range` of an upload holding `len` bytes: `0-<last byte>` (`0-0`
/// when empty, as the distribution registry answers).
fn range_value(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

/// 202/204 for a session: where to send the rest, and how much is here.
fn accepted(name: &str, id: &str, len: u64, status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header("Docker-Upload-UUID", id)
        .header(header::RANGE, range_value(len))
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

/// 201 for a blob now here.
fn created(name: &str, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}
