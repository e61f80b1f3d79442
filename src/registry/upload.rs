//! Pushing a bundle of the local store to a registry, in either layout:
//! HEAD before each upload, blobs before the manifest, the manifest last.
//!
//! A pack is never held whole in memory: a first pass over its objects
//! computes its SHA-256 and size (the digest its upload is announced
//! under), then its body streams the objects from the local store, each
//! verified as it is read, the stream rebuilt for each attempt.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::client::{self, Client, header};
use super::frames::Frame;
use super::{RegistryStore, check_reference, packed};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::oci::{
    LAYOUT_PACKED, LAYOUT_V1, MANIFEST_TYPE, Manifest, check_tag, sha256_digest, v1_digest,
};
use crate::store::sizes::SizeIndex;
use crate::store::{Bundle, BundleStore, ChunkSource, LocalStore};

/// How to upload a bundle.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions<'a> {
    /// The tag to set, besides `latest`.
    pub tag: &'a str,
    pub layout: Layout,
    /// Other bundles of the repository (tags or `sha256:` manifest digests)
    /// whose packs the packed layout may reuse, besides those of the bundle
    /// the tag names. Each must exist.
    pub bases: &'a [String],
    /// Show a progress bar.
    pub progress: bool,
    /// The zstd level of the packed layout's frames.
    pub compression_level: i32,
}

/// What an upload did.
#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    /// The layout pushed.
    pub layout: &'static str,
    /// Blobs sent, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs not sent: the registry had them, or (packs) an earlier bundle
    /// lists them.
    pub present: usize,
    /// Of those, packs of earlier bundles the manifest lists again (the
    /// packed layout), and their bytes.
    pub reused_packs: usize,
    pub reused_bytes: u64,
    /// The manifest's digest, and whether the tag already named it.
    pub manifest_digest: String,
    pub manifest_unchanged: bool,
}

impl RegistryStore {
    /// Uploads a bundle of the local store and tags it `options.tag` and
    /// `latest` (as a local push does), in `options.layout`: every blob the
    /// registry lacks (HEAD first), the config and index blobs, then the
    /// manifest, by each tag that does not already name it. `Layout::Auto`
    /// keeps the layout of the bundle the tag (else the first base) names,
    /// else picks build-cache/v1 when the registry takes its digests, else
    /// the packed layout. A base that names nothing is an error
    /// ([`Error::BaseMissing`]) before anything is sent.
    pub fn upload(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        options: &UploadOptions,
    ) -> Result<UploadReport> {
        check_tag(options.tag)?;
        let bases = options
            .bases
            .iter()
            .map(|reference| self.base_manifest(reference))
            .collect::<Result<Vec<_>>>()?;
        // The bundle being replaced is only a hint: if it cannot be read,
        // nothing of it is reused.
        let replaced = self
            .get_manifest(options.tag)
            .and_then(|bytes| Manifest::parse(&bytes))
            .inspect_err(|e| tracing::debug!("nothing to reuse from {}: {e}", options.tag))
            .ok();
        let chunk_lens = chunk_lens(local, bundle)?;
        let (packed, probe) = match options.layout {
            Layout::V1 => (false, Probe::Present),
            Layout::Packed => (true, Probe::Present),
            Layout::Auto => match replaced.iter().chain(&bases).next() {
                Some(manifest) => (manifest.is_packed(), Probe::Present),
                None => match self.probe_v1_digests(&bundle.lockfile_bytes)? {
                    Probe::Refused => (true, Probe::Refused),
                    probe => (false, probe),
                },
            },
        };
        let mut report = if packed {
            let mut previous = replaced
                .map(|manifest| {
                    self.pack_locations(&manifest).unwrap_or_else(|e| {
                        tracing::debug!("no packs to reuse from {}: {e}", options.tag);
                        HashMap::new()
                    })
                })
                .unwrap_or_default();
            for base in &bases {
                for (hash, location) in self.pack_locations(base)? {
                    previous.entry(hash).or_insert(location);
                }
            }
            self.upload_packed(local, bundle, &chunk_lens, &previous, options)?
        } else {
            self.upload_v1(local, bundle, &chunk_lens, options)?
        };
        if let Probe::Sent(bytes) = probe {
            // The probe uploaded the lockfile; the push then found it there.
            report.uploaded += 1;
            report.uploaded_bytes += bytes;
            report.present = report.present.saturating_sub(1);
        }
        report.layout = if packed { LAYOUT_PACKED } else { LAYOUT_V1 };
        Ok(report)
    }

    /// The manifest of `--base reference` (a tag or a `sha256:` manifest
    /// digest); [`Error::BaseMissing`] if the repository has none.
    fn base_manifest(&self, reference: &str) -> Result<Manifest> {
        check_reference(reference).map_err(|e| Error::BadSetting(format!("--base: {e}")))?;
        let bytes = self.get_manifest(reference).map_err(|e| match e {
            Error::RefMissing { name, store, .. } => Error::BaseMissing { name, store },
            e => e,
        })?;
        Manifest::parse(&bytes)
    }

    /// Whether the registry takes build-cache/v1 digests (BLAKE3 behind
    /// `sha256:`): tried with the lockfile, which a v1 push uploads anyway.
    /// A registry that checks SHA-256 answers `400 DIGEST_INVALID`.
    fn probe_v1_digests(&self, lockfile_bytes: &[u8]) -> Result<Probe> {
        let client = self.client.clone();
        let bytes = Bytes::copy_from_slice(lockfile_bytes);
        let digest = v1_digest(&Hash::of(&bytes));
        let probe = self.client.run(async move {
            if has_blob(&client, &digest).await? {
                return Ok(Probe::Present);
            }
            let len = bytes.len() as u64;
            match put_blob(&client, &digest, &Payload(bytes)).await {
                Ok(()) => Ok(Probe::Sent(len)),
                Err(Error::RegistryError {
                    status: 400, code, ..
                }) if code == "DIGEST_INVALID" => Ok(Probe::Refused),
                Err(e) => Err(e),
            }
        })?;
        if probe == Probe::Refused {
            tracing::info!(
                "{} checks digests as SHA-256: pushing in the packed layout",
                self.client.registry()
            );
        }
        Ok(probe)
    }

    /// The packed layout: the packs of earlier bundles (`previous`: where
    /// each of their chunks is) that hold needed chunks are listed again;
    /// only the other chunks are packed and sent.
    fn upload_packed(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        chunk_lens: &[u64],
        previous: &HashMap<Hash, packed::Location>,
        options: &UploadOptions,
    ) -> Result<UploadReport> {
        let chunks = packed::distinct_chunks(&bundle.lockfile, chunk_lens);
        // Old packs still used, in their old order, then the new ones.
        let mut kept: Vec<(String, u64)> = Vec::new();
        let mut fresh: Vec<(Hash, u64)> = Vec::new();
        for (hash, len) in &chunks {
            match previous.get(hash) {
                Some(location) => {
                    if !kept.iter().any(|(d, _)| *d == location.pack) {
                        kept.push((location.pack.clone(), location.pack_size));
                    }
                }
                None => fresh.push((*hash, *len)),
            }
        }
        let plans: Vec<Arc<PackPlan>> = packed::plan(&fresh)
            .into_iter()
            .map(|objects| {
                Arc::new(PackPlan {
                    objects,
                    level: options.compression_level,
                    layout: OnceLock::new(),
                })
            })
            .collect();
        let blobs = plans.iter().cloned().map(Blob::Pack).collect();
        // A pack in flight is held compressed, one per transfer at once.
        let (mut report, new_packs) =
            self.upload_blobs(local, blobs, self.jobs, options.progress)?;
        let mut packs = kept.clone();
        packs.extend(new_packs.iter().cloned());
        let index = PackIndexBuilder::new(&packs)
            .reuse(previous)
            .add_new(&new_packs, &plans)
            .finish(bundle, &chunks);
        let index_bytes = index.to_bytes();
        let index_descriptor = (sha256_digest(&index_bytes), index_bytes.len() as u64);
        let metadata = vec![
            Blob::Sha256(bundle.lockfile_bytes.clone()),
            Blob::Sha256(index_bytes),
        ];
        let (more, _) = self.upload_blobs(local, metadata, 2, false)?;
        report.uploaded += more.uploaded;
        report.uploaded_bytes += more.uploaded_bytes;
        report.present += more.present + kept.len();
        report.reused_packs = kept.len();
        report.reused_bytes = kept.iter().map(|(_, size)| size).sum();
        let mut manifest = Manifest::for_packed(
            &bundle.lockfile,
            &bundle.lockfile_bytes,
            &packs,
            index_descriptor,
        );
        bundle.annotate(&mut manifest);
        let bytes = manifest.to_bytes();
        let digest = sha256_digest(&bytes);
        self.tag_manifest(report, options.tag, bytes, &digest)
    }

    /// Where the packed bundle of `manifest` keeps each chunk (empty for a
    /// build-cache/v1 bundle), its lockfile and pack index checked.
    fn pack_locations(&self, manifest: &Manifest) -> Result<HashMap<Hash, packed::Location>> {
        if !manifest.is_packed() {
            return Ok(HashMap::new());
        }
        self.read_packed(manifest)
            .map(|(_, locations, _)| locations)
    }

    /// build-cache/v1: one layer per source.
    fn upload_v1(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        chunk_lens: &[u64],
        options: &UploadOptions,
    ) -> Result<UploadReport> {
        let sizes_json = bundle.sizes.as_ref().map(SizeIndex::to_json);
        let sizes_blob = sizes_json
            .as_ref()
            .map(|json| (Hash::of(json), json.len() as u64));
        let mut manifest = Manifest::for_bundle(
            &bundle.lockfile,
            &bundle.lockfile_bytes,
            chunk_lens,
            sizes_blob.as_ref().map(|(h, len)| (h, *len)),
        );
        bundle.annotate(&mut manifest);
        let manifest_bytes = manifest.to_bytes();
        let digest = v1_digest(&Hash::of(&manifest_bytes));

        // Every distinct blob: chunks, then the config and the sizes index.
        let mut blobs: Vec<Blob> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for source in &bundle.lockfile.sources {
            if seen.insert(source.chunk_hash) {
                blobs.push(Blob::Object(source.chunk_hash));
            }
        }
        blobs.push(Blob::Bytes(bundle.lockfile_bytes.clone()));
        if let Some(json) = sizes_json {
            blobs.push(Blob::Bytes(json));
        }
        let (report, _) = self.upload_blobs(local, blobs, self.jobs, options.progress)?;
        self.tag_manifest(report, options.tag, manifest_bytes, &digest)
    }

    /// PUTs the manifest by `tag` and `latest` (as a local push moves both),
    /// each unless it already names it.
    fn tag_manifest(
        &self,
        mut report: UploadReport,
        tag: &str,
        manifest_bytes: Vec<u8>,
        digest: &str,
    ) -> Result<UploadReport> {
        report.manifest_digest = digest.to_string();
        report.manifest_unchanged = true;
        for name in [tag, crate::store::local::LATEST] {
            let unchanged = self.put_manifest(name, manifest_bytes.clone(), digest)?;
            report.manifest_unchanged &= unchanged;
        }
        Ok(report)
    }

    /// Uploads `blobs` (`--jobs` at once) and returns, in their order, each
    /// one's digest and size, with the counts.
    fn upload_blobs(
        &self,
        local: &LocalStore,
        blobs: Vec<Blob>,
        jobs: usize,
        progress: bool,
    ) -> Result<(UploadReport, Vec<(String, u64)>)> {
        let client = self.client.clone();
        let local = local.clone();
        let bar = progress.then(|| crate::progress::progress(blobs.len(), "uploading"));
        self.client.run(async move {
            let mut results = futures_util::stream::iter(blobs)
                .map(|blob| upload_blob(&client, &local, blob))
                .buffered(jobs);
            let mut report = UploadReport::default();
            let mut digests = Vec::new();
            while let Some(result) = results.next().await {
                let (digest, size, sent) = result?;
                if sent {
                    report.uploaded += 1;
                    report.uploaded_bytes += size;
                } else {
                    report.present += 1;
                }
                digests.push((digest, size));
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            Ok((report, digests))
        })
    }

    /// PUTs the manifest by tag unless the tag already names these bytes;
    /// returns whether it did.
    pub(super) fn put_manifest(&self, tag: &str, bytes: Vec<u8>, digest: &str) -> Result<bool> {
        let client = self.client.clone();
        let tag = tag.to_string();
        let digest = digest.to_string();
        // A registry may name a manifest by either form (serve by BLAKE3).
        let sha256 = sha256_digest(&bytes);
        let blake3 = v1_digest(&Hash::of(&bytes));
        self.client.run(async move {
            let url = client.url(&format!("manifests/{tag}"));
            let current = client
                .send(Method::HEAD, url.clone(), |r| {
                    r.header(ACCEPT, header(MANIFEST_TYPE))
                })
                .await?;
            let named = current
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if current.status().is_success()
                && named.is_some_and(|d| d == digest || d == sha256 || d == blake3)
            {
                return Ok(true);
            }
            let response = client
                .send(Method::PUT, url, |r| {
                    r.header(CONTENT_TYPE, header(MANIFEST_TYPE))
                        .body(bytes.clone())
                })
                .await?;
            expect_created(&client, response).await?;
            Ok(false)
        })
    }
}

/// The length of every source's chunk: from the sizes index, else a stat.
fn chunk_lens(local: &LocalStore, bundle: &Bundle) -> Result<Vec<u64>> {
    match &bundle.sizes {
        Some(index) => Ok(index.entries.iter().map(|e| e.chunk_len).collect()),
        None => bundle
            .lockfile
            .sources
            .iter()
            .map(|s| {
                local
                    .object_len(&s.chunk_hash)
                    .ok_or_else(|| Error::ChunkMissing {
                        hash: s.chunk_hash,
                        path: s.path.clone(),
                        store: local.describe(),
                    })
            })
            .collect(),
    }
}

/// What trying a build-cache/v1 digest on a registry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The blob was there already (so the registry takes such digests).
    Present,
    /// It was uploaded (this many bytes).
    Sent(u64),
    /// Refused: the registry checks SHA-256.
    Refused,
}

/// Which layout a push uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// build-cache/v1 if the registry takes its digests, else packed.
    Auto,
    /// build-cache/v1: one layer per source, BLAKE3 digests (what build-cache/v1
    /// providers, `serve` and the Go mache read).
    V1,
    /// Packs of chunks and a pack index, true SHA-256 digests.
    Packed,
}

/// A blob to upload.
enum Blob {
    /// An object of the local store, under its build-cache/v1 digest.
    Object(Hash),
    /// Bytes under their build-cache/v1 digest.
    Bytes(Vec<u8>),
    /// Bytes under their true SHA-256.
    Sha256(Vec<u8>),
    /// Objects of the local store built into a pack of frames, under the
    /// pack's SHA-256; the plan keeps the pack's layout once built.
    Pack(Arc<PackPlan>),
}

/// A pack to build: its objects (hash, length) in order, the zstd level,
/// and, once built, where its frames and chunks are.
struct PackPlan {
    objects: Vec<(Hash, u64)>,
    level: i32,
    layout: OnceLock<packed::PackLayout>,
}

/// The pack index of an upload: the frames and chunks of the packs kept
/// from earlier bundles and of the new ones.
struct PackIndexBuilder<'a> {
    packs: &'a [(String, u64)],
    frames: Vec<(usize, Frame)>,
    /// Per chunk: `(frame number, offset, len)`.
    located: HashMap<Hash, (usize, u64, u64)>,
}

impl<'a> PackIndexBuilder<'a> {
    fn new(packs: &'a [(String, u64)]) -> PackIndexBuilder<'a> {
        PackIndexBuilder {
            packs,
            frames: Vec::new(),
            located: HashMap::new(),
        }
    }

    fn number(&self, digest: &str) -> Option<usize> {
        self.packs.iter().position(|(d, _)| d == digest)
    }

    /// The chunks of earlier bundles whose packs are listed again.
    fn reuse(mut self, previous: &HashMap<Hash, packed::Location>) -> Self {
        let mut frames: HashMap<(usize, u64, u64), usize> = HashMap::new();
        let mut sorted: Vec<_> = previous.iter().collect();
        sorted.sort_by_key(|(_, l)| (l.pack.clone(), l.frame.offset));
        for (hash, location) in sorted {
            let Some(pack) = self.number(&location.pack) else {
                continue;
            };
            let key = (pack, location.frame.offset, location.frame.stored_len);
            let frame = *frames.entry(key).or_insert_with(|| {
                self.frames.push((pack, location.frame));
                self.frames.len() - 1
            });
            self.located
                .insert(*hash, (frame, location.offset, location.len));
        }
        self
    }

    /// The chunks of the packs just built (`digests` in `plans`' order).
    fn add_new(mut self, digests: &[(String, u64)], plans: &[Arc<PackPlan>]) -> Self {
        for ((digest, _), plan) in digests.iter().zip(plans) {
            let pack = self.number(digest).expect("a new pack is listed");
            let layout = plan.layout.get().expect("an uploaded pack was built");
            let first = self.frames.len();
            self.frames
                .extend(layout.frames.iter().map(|frame| (pack, *frame)));
            for &(hash, frame, offset, len) in &layout.chunks {
                self.located.insert(hash, (first + frame, offset, len));
            }
        }
        self
    }

    /// The index of `bundle`, whose distinct chunks are `chunks`: frames
    /// in pack and offset order, so the same bundle gets the same index
    /// whichever packs were new.
    fn finish(self, bundle: &Bundle, chunks: &[(Hash, u64)]) -> packed::PackIndex {
        let mut order: Vec<usize> = (0..self.frames.len()).collect();
        order.sort_by_key(|&i| (self.frames[i].0, self.frames[i].1.offset));
        let mut renumbered = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            renumbered[old] = new;
        }
        packed::PackIndex {
            format: packed::INDEX_FORMAT.to_string(),
            lockfile: bundle.lockfile_hash.to_prefixed(),
            packs: self.packs.iter().map(|(d, _)| d.clone()).collect(),
            frames: order
                .iter()
                .map(|&i| {
                    let (pack, f) = &self.frames[i];
                    (*pack, f.offset, f.stored_len, f.raw_len, f.codec)
                })
                .collect(),
            chunks: chunks
                .iter()
                .map(|(hash, _)| {
                    let (frame, offset, len) = self.located[hash];
                    (renumbered[frame], offset, len)
                })
                .collect(),
            sizes: bundle
                .sizes
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.to_json()).ok()),
        }
    }
}

/// The body of a blob upload: bytes in memory, shared (not copied) by the
/// attempts.
struct Payload(Bytes);

impl Payload {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn body(&self) -> reqwest::Body {
        reqwest::Body::from(self.0.clone())
    }
}

/// Runs a blocking read of the local store off the async threads.
async fn off_thread<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(read)
        .await
        .expect("reading local objects does not panic")
}

/// The verified objects `objects` concatenated.
fn read_objects(chunks: &dyn ChunkSource, objects: &[(Hash, u64)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(objects.iter().map(|(_, len)| *len as usize).sum());
    for (hash, _) in objects {
        bytes.extend_from_slice(&chunks.get_verified(hash)?);
    }
    Ok(bytes)
}

/// Whether the registry has blob `digest`.
async fn has_blob(client: &Client, digest: &str) -> Result<bool> {
    Ok(client.head_blob(digest).await?.is_some())
}

/// Uploads one blob unless the registry has it: its digest and size, and
/// whether it was sent.
async fn upload_blob(
    client: &Client,
    local: &LocalStore,
    blob: Blob,
) -> Result<(String, u64, bool)> {
    let (digest, payload) = match blob {
        Blob::Object(hash) => {
            let digest = v1_digest(&hash);
            let len = local.object_len(&hash).unwrap_or_default();
            if has_blob(client, &digest).await? {
                return Ok((digest, len, false));
            }
            let local = local.clone();
            let bytes =
                off_thread(move || read_objects(local.chunks().as_ref(), &[(hash, len)])).await?;
            (digest, Payload(bytes.into()))
        }
        Blob::Bytes(bytes) => (v1_digest(&Hash::of(&bytes)), Payload(bytes.into())),
        Blob::Sha256(bytes) => (sha256_digest(&bytes), Payload(bytes.into())),
        Blob::Pack(plan) => {
            let source = local.clone();
            let objects = plan.objects.clone();
            let level = plan.level;
            let built =
                off_thread(move || packed::build(source.chunks().as_ref(), &objects, level))
                    .await?;
            let _ = plan.layout.set(built.layout);
            (sha256_digest(&built.bytes), Payload(built.bytes.into()))
        }
    };
    let size = payload.len();
    if has_blob(client, &digest).await? {
        return Ok((digest, size, false));
    }
    put_blob(client, &digest, &payload).await?;
    Ok((digest, size, true))
}

/// Uploads small `bytes` under their SHA-256 unless the registry has
/// them; returns the digest.
pub(super) async fn upload_sha256_blob(client: &Client, bytes: Vec<u8>) -> Result<String> {
    let digest = sha256_digest(&bytes);
    if !has_blob(client, &digest).await? {
        put_blob(client, &digest, &Payload(bytes.into())).await?;
    }
    Ok(digest)
}

/// Uploads `payload` as blob `digest`: POST, then PUT to the `Location`.
async fn put_blob(client: &Client, digest: &str, payload: &Payload) -> Result<()> {
    let start = client
        .send(Method::POST, client.url("blobs/uploads/"), |r| {
            r.header(CONTENT_TYPE, header("application/octet-stream"))
        })
        .await?;
    if start.status() != StatusCode::ACCEPTED {
        return Err(client::failure(
            &client.registry(),
            &Method::POST,
            &client.url("blobs/uploads/"),
            start,
        )
        .await);
    }
    let location = start
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::Remote(format!(
                "{}: an upload answer without a Location",
                client.registry()
            ))
        })?;
    let mut url = client.location(location)?;
    url.query_pairs_mut().append_pair("digest", digest);
    let response = client
        .send_upload(Method::PUT, url, payload.len(), |r| {
            r.header(CONTENT_TYPE, header("application/octet-stream"))
                .header(CONTENT_LENGTH, payload.len())
                .body(payload.body())
        })
        .await?;
    expect_created(client, response).await
}

/// Fails unless the response is a success.
async fn expect_created(client: &Client, response: reqwest::Response) -> Result<()> {
    if response.status().is_success() {
        return Ok(());
    }
    let url = response.url().clone();
    Err(client::failure(&client.registry(), &Method::PUT, &url, response).await)
}
