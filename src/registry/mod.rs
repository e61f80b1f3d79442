//! Bundles on a registry: the build-cache/v1 transport of SPEC §6 over the
//! OCI Distribution API, as a [`BundleStore`] beside the local store.
//!
//! - [`manifest`]: the manifest format, built for push and checked on pull;
//! - [`client`]: HTTP with auth, timeouts, retries and bounded bodies;
//! - [`auth`]: where credentials come from and the challenge handshake;
//! - this module: resolving refs (manifest → lockfile → sizes index, each
//!   verified), fetching chunks (a [`Backend`], verified and cached on disk
//!   by [`Verified`] in front of it), and uploading a bundle from the local
//!   store.
//!
//! The repository is `mache/<scope>`. A tag resolves to the manifest
//! actually received (its digest is checked against what the registry
//! says); the lockfile is the config blob, verified with BLAKE3; its
//! sources must be the layers, in order. The last manifest each tag
//! resolved to is remembered in the disk cache, so a mount can come up
//! from the cache when the registry is unreachable.

pub mod auth;
pub mod client;
pub mod manifest;
pub mod packed;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use url::Url;

use self::auth::{Auth, CredentialSources};
use self::client::{Client, Timeouts, header, read_limited};
use self::manifest::{MANIFEST_TYPE, Manifest, hash_of_digest, v1_digest};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::binary;
use crate::store::local::check_ref_name;
use crate::store::sizes::SizeIndex;
use crate::store::{
    Backend, Bundle, BundleStore, ChunkSource, DiskCache, LocalStore, RemoteCounters, Verified,
};

/// The producer part of every repository name.
pub const PRODUCER: &str = "mache";
/// The name of the one-layer-per-source layout of SPEC §6.
pub const LAYOUT_V1: &str = "build-cache/v1";
/// The name of the packed layout, for registries that check SHA-256.
pub const LAYOUT_PACKED: &str = "packed/1";
/// Largest manifest we read (providers accept at least 16 MiB).
const MAX_MANIFEST: u64 = 128 << 20;
/// Largest lockfile or sizes index we read.
const MAX_METADATA: u64 = 1 << 30;

/// How to reach a registry repository.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `https://host[:port]` (or `http://` for loopback or with `insecure`).
    pub url: String,
    /// The repository is `mache/<scope>`.
    pub scope: String,
    pub credentials: CredentialSources,
    /// Allow `http://` to a host that is not loopback.
    pub insecure: bool,
    /// Transfers at once.
    pub jobs: usize,
    /// The disk cache directory (`chunks/`, `refs/` below it) and its cap.
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub timeouts: Timeouts,
}

/// Checks a registry URL: a scheme, a host, no path; `http://` only for
/// loopback hosts unless `insecure`.
pub fn parse_remote(text: &str, insecure: bool) -> Result<Url> {
    let bad = |reason: &str| Error::BadSetting(format!("invalid registry URL {text:?}: {reason}"));
    if !text.contains("://") {
        return Err(bad("give its scheme, e.g. https://registry.example.com"));
    }
    let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be https or http"));
    }
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(bad(
            "give only scheme://host[:port]; the repository comes from --scope",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in the URL (use --token-file or docker login)",
        ));
    }
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback && !insecure {
        return Err(bad(
            "plain http is allowed only to a loopback host, or with --insecure",
        ));
    }
    Ok(url)
}

/// Checks a scope: one or more OCI path components (`team`, `team/repo`).
pub fn check_scope(scope: &str) -> Result<()> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        !c.is_empty()
            && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
            && bytes[bytes.len() - 1].is_ascii_lowercase() | bytes[bytes.len() - 1].is_ascii_digit()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            })
            && !c.contains("..")
            && !c.contains("___")
    };
    if scope.len() <= 200 && scope.split('/').all(component_ok) {
        return Ok(());
    }
    Err(Error::BadSetting(format!(
        "invalid scope {scope:?}: lowercase letters, digits and . _ - in /-separated parts, \
         each starting and ending with a letter or digit"
    )))
}

/// The process's one runtime for registry I/O.
fn runtime() -> tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("registry-io")
                .enable_all()
                .build()
                .expect("starting the registry I/O threads")
        })
        .handle()
        .clone()
}

/// A registry repository holding bundles.
pub struct RegistryStore {
    client: Client,
    backend: Arc<RegistryBackend>,
    chunks: Arc<Verified>,
    refs_dir: PathBuf,
    jobs: usize,
}

/// The blobs of a repository, fetched by digest, each bounded by the size
/// its manifest gives.
struct RegistryBackend {
    client: Client,
    sizes: RwLock<HashMap<Hash, u64>>,
    /// For packed bundles: where each chunk is, and each pack's chunks by offset.
    packed: RwLock<PackedChunks>,
    /// Per pack, the span `(start, end)` a next read continuing the last
    /// one starts in: such reads read ahead.
    recent: Mutex<HashMap<String, (u64, u64)>>,
    jobs: usize,
}

/// The chunks of the packed bundles resolved so far.
#[derive(Default)]
struct PackedChunks {
    locations: HashMap<Hash, packed::Location>,
    /// Per pack digest: `(offset, len, hash)`, sorted by offset.
    members: HashMap<String, Vec<(u64, u64, Hash)>>,
}

impl PackedChunks {
    fn add(&mut self, locations: HashMap<Hash, packed::Location>) {
        for (hash, location) in locations {
            let members = self.members.entry(location.pack.clone()).or_default();
            members.push((location.offset, location.len, hash));
            self.locations.insert(hash, location);
        }
        for members in self.members.values_mut() {
            members.sort_unstable();
            members.dedup();
        }
    }

    /// A window of consecutive `members` of one pack (`all` its chunks).
    fn window_of(&self, members: Vec<(u64, u64, Hash)>, all: &[(u64, u64, Hash)]) -> Window {
        let location = self.locations[&members[0].2].clone();
        Window {
            location,
            members,
            pack: all.to_vec(),
        }
    }

    /// The chunks one read of `hash` brings: it and the ones right after it
    /// in its pack, up to [`READ_AHEAD`] bytes (Nydus's `amplify_io`).
    /// Only when `sequential` (the read continues the previous one in this
    /// pack): a random read takes its own chunk alone.
    fn window(
        &self,
        hash: &Hash,
        sequential: impl Fn(&packed::Location) -> bool,
    ) -> Option<Window> {
        let location = self.locations.get(hash)?.clone();
        let members = self.members.get(&location.pack)?;
        let start = members.partition_point(|m| m.0 < location.offset);
        let ahead = if sequential(&location) { READ_AHEAD } else { 0 };
        let mut window = Vec::new();
        let mut end = location.offset;
        for &(offset, len, member) in &members[start..] {
            if offset < end || (!window.is_empty() && offset + len - location.offset > ahead) {
                break;
            }
            window.push((offset, len, member));
            end = offset + len;
        }
        Some(Window {
            location,
            members: window,
            pack: members.clone(),
        })
    }
}

/// One request of a batch fetch: a blob (build-cache/v1), or a range of
/// consecutive chunks of a pack.
enum Request {
    Blob(Hash, Option<u64>),
    Range(Window),
}

/// A batch's ranges are cut at this size.
const MAX_RANGE: u64 = 8 << 20;

impl RegistryBackend {
    /// Groups `hashes` into requests: packed chunks of one pack that lie
    /// next to each other share a `Range` request (up to [`MAX_RANGE`]).
    fn plan_requests(&self, hashes: &[Hash]) -> Vec<Request> {
        let packed = self.packed.read().unwrap_or_else(|e| e.into_inner());
        let mut by_pack: HashMap<&str, Vec<(u64, u64, Hash)>> = HashMap::new();
        let mut requests = Vec::new();
        for hash in hashes {
            match packed.locations.get(hash) {
                Some(l) => by_pack
                    .entry(&l.pack)
                    .or_default()
                    .push((l.offset, l.len, *hash)),
                None => requests.push(Request::Blob(*hash, self.size_of(hash))),
            }
        }
        for (pack, mut wanted) in by_pack {
            wanted.sort_unstable();
            wanted.dedup();
            let all = packed.members.get(pack).cloned().unwrap_or_default();
            let mut run: Vec<(u64, u64, Hash)> = Vec::new();
            for member in wanted {
                let joins = run.last().is_some_and(|last| {
                    last.0 + last.1 == member.0 && member.0 + member.1 - run[0].0 <= MAX_RANGE
                });
                if !joins && !run.is_empty() {
                    requests.push(Request::Range(
                        packed.window_of(std::mem::take(&mut run), &all),
                    ));
                }
                run.push(member);
            }
            if !run.is_empty() {
                requests.push(Request::Range(packed.window_of(run, &all)));
            }
        }
        requests
    }
}

/// One read of a packed chunk: where it is, the chunks the read brings, and
/// all chunks of its pack (what a registry that ignores `Range` sends).
struct Window {
    location: packed::Location,
    members: Vec<(u64, u64, Hash)>,
    pack: Vec<(u64, u64, Hash)>,
}

/// How far a cold read of a packed chunk reads ahead in its pack.
pub const READ_AHEAD: u64 = 1 << 20;

/// What an upload did.
#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    /// The layout pushed.
    pub layout: &'static str,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub present: usize,
    /// The manifest's digest, and whether the tag already named it.
    pub manifest_digest: String,
    pub manifest_unchanged: bool,
}

impl RegistryStore {
    /// Connects nothing yet: checks the settings and sets up the client and
    /// the disk cache.
    pub fn open(settings: &RemoteSettings) -> Result<RegistryStore> {
        let base = parse_remote(&settings.url, settings.insecure)?;
        check_scope(&settings.scope)?;
        let repo = format!("{PRODUCER}/{}", settings.scope);
        let registry = client::host_port(&base);
        let credentials = settings.credentials.resolve(&registry)?;
        let client = Client::new(
            base,
            repo.clone(),
            Auth::new(credentials),
            settings.timeouts,
            runtime(),
        )?;
        let disk = DiskCache::open(&settings.cache_dir, settings.cache_size)?;
        let jobs = settings.jobs.max(1);
        let backend = Arc::new(RegistryBackend {
            client: client.clone(),
            sizes: RwLock::new(HashMap::new()),
            packed: RwLock::new(PackedChunks::default()),
            recent: Mutex::new(HashMap::new()),
            jobs,
        });
        let chunks = Arc::new(Verified::new(backend.clone(), Some(disk)));
        Ok(RegistryStore {
            refs_dir: settings
                .cache_dir
                .join("refs")
                .join(sanitize(&registry))
                .join(&repo),
            client,
            backend,
            chunks,
            jobs,
        })
    }

    /// The disk cache's counters.
    pub fn disk_cache(&self) -> Option<&DiskCache> {
        self.chunks.disk()
    }

    /// Fetches the manifest `reference` names, its bytes checked against
    /// the digest asked for or the registry's `Docker-Content-Digest`.
    fn get_manifest(&self, reference: &str) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let url = client.url(&format!("manifests/{reference}"));
        let name = reference.to_string();
        self.client.run(async move {
            let accept = |r: reqwest::RequestBuilder| r.header(ACCEPT, header(MANIFEST_TYPE));
            let Some((headers, bytes)) = client.get_body(url, accept, MAX_MANIFEST, None).await?
            else {
                return Err(Error::RefMissing {
                    name,
                    store: client.describe(),
                });
            };
            let claimed = headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let digest = v1_digest(&Hash::of(&bytes));
            let sha256 = sha256_digest(&bytes);
            let pinned = if name.starts_with("sha256:") {
                Some(name.clone())
            } else {
                claimed
            };
            if let Some(pinned) = pinned
                && pinned != digest
                && pinned != sha256
            {
                return Err(Error::BadManifest(format!(
                    "{} sent manifest bytes of digest {digest} (sha256 {sha256}) for {pinned}",
                    client.describe()
                )));
            }
            Ok(bytes)
        })
    }

    /// Fetches a small blob (config, sizes index) and verifies it.
    fn get_metadata_blob(&self, hash: &Hash, size: Option<u64>) -> Result<Vec<u8>> {
        if let Some(bytes) = self.chunks.disk().and_then(|d| d.get(hash)) {
            return Ok(bytes);
        }
        let bytes = self.backend.fetch_sized(hash, size, MAX_METADATA)?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(Error::Corrupt {
                path: format!("{}/blobs/{}", self.client.describe(), v1_digest(hash)).into(),
                expected: *hash,
                actual,
            });
        }
        if let Some(disk) = self.chunks.disk() {
            disk.put(hash, &bytes);
        }
        Ok(bytes)
    }

    /// A bundle from its manifest: the lockfile (the config), its layers
    /// checked against it, and our sizes index if the manifest names one.
    fn bundle_of(&self, manifest: &Manifest) -> Result<Bundle> {
        if manifest.is_packed() {
            return self.packed_bundle_of(manifest);
        }
        let lockfile_hash = hash_of_digest(&manifest.config.digest)?;
        let lockfile_bytes = self.get_metadata_blob(&lockfile_hash, Some(manifest.config.size))?;
        let lockfile = binary::decode_supported(&lockfile_bytes).map_err(|e| {
            Error::BadManifest(format!("its config blob is not a mache lockfile: {e}"))
        })?;
        manifest.check_layers(&lockfile)?;
        {
            let mut sizes = self
                .backend
                .sizes
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for layer in &manifest.layers {
                sizes.insert(hash_of_digest(&layer.digest)?, layer.size);
            }
        }
        let sizes = match manifest.sizes_blob() {
            Some(hash) => self.read_sizes(&hash?, &lockfile_hash, lockfile.sources.len()),
            None => None,
        };
        Ok(Bundle {
            lockfile_hash,
            lockfile_bytes,
            lockfile,
            sizes,
        })
    }

    /// A packed bundle: the lockfile and the pack index, each checked with
    /// SHA-256 (their digests) and the index against the manifest and the
    /// lockfile; the chunks' locations go to the backend.
    fn packed_bundle_of(&self, manifest: &Manifest) -> Result<Bundle> {
        let lockfile_bytes = self.get_sha256_blob(&manifest.config.digest, manifest.config.size)?;
        let lockfile_hash = Hash::of(&lockfile_bytes);
        let lockfile = binary::decode_supported(&lockfile_bytes).map_err(|e| {
            Error::BadManifest(format!("its config blob is not a mache lockfile: {e}"))
        })?;
        let (packs, index) = manifest.packs();
        let index = index.expect("a parsed packed manifest has its index");
        let index_bytes = self.get_sha256_blob(&index.digest, index.size)?;
        let located = packed::PackIndex::check(&index_bytes, &packs, &lockfile, &lockfile_hash)?;
        self.backend
            .packed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(located.locations);
        Ok(Bundle {
            lockfile_hash,
            lockfile_bytes,
            lockfile,
            sizes: located.sizes,
        })
    }

    /// GETs a blob named by its true SHA-256 and checks it.
    fn get_sha256_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let url = client.url(&format!("blobs/{digest}"));
        let found = self
            .client
            .run(async move { client.get_body(url, |r| r, size, Some(size)).await })?;
        let Some((_, bytes)) = found else {
            return Err(Error::Remote(format!(
                "{}: blob {digest} is missing",
                self.client.describe()
            )));
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::BadManifest(format!(
                "blob {digest} of {} has the SHA-256 {actual}",
                self.client.describe()
            )));
        }
        Ok(bytes)
    }

    /// The sizes index blob, or `None` (with a warning) if it cannot be used:
    /// it is an accelerator, not part of the bundle.
    fn read_sizes(&self, hash: &Hash, lockfile_hash: &Hash, sources: usize) -> Option<SizeIndex> {
        let parsed = self
            .get_metadata_blob(hash, None)
            .and_then(|bytes| SizeIndex::from_json(&bytes, lockfile_hash, sources));
        match parsed {
            Ok(index) => Some(index),
            Err(e) => {
                tracing::warn!(
                    "ignoring the sizes index of {}: {e}",
                    self.client.describe()
                );
                None
            }
        }
    }

    /// Remembers which manifest a tag resolved to (its bytes are in the
    /// disk cache), for coming up offline.
    fn remember(&self, tag: &str, manifest_bytes: &[u8]) {
        let hash = Hash::of(manifest_bytes);
        if let Some(disk) = self.chunks.disk() {
            disk.put(&hash, manifest_bytes);
        }
        let path = self.refs_dir.join(tag);
        let written = std::fs::create_dir_all(&self.refs_dir)
            .and_then(|()| std::fs::write(&path, format!("{}\n", hash.to_prefixed())));
        if let Err(e) = written {
            tracing::debug!("not remembering {tag}: {e}");
        }
    }

    /// The manifest a tag last resolved to, from the disk cache.
    fn recall(&self, tag: &str) -> Option<Vec<u8>> {
        let text = std::fs::read_to_string(self.refs_dir.join(tag)).ok()?;
        let hash = Hash::from_prefixed(text.trim()).ok()?;
        self.chunks.disk()?.get(&hash)
    }

    /// Uploads a bundle of the local store and tags it `tag` and `latest`
    /// (as a local push does), in `layout`: every blob the registry lacks
    /// (HEAD first), the config and index blobs, then the manifest, by each
    /// tag that does not already name it. `Layout::Auto` picks build-cache/v1
    /// when the registry takes its digests, else the packed layout.
    pub fn upload(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        tag: &str,
        layout: Layout,
        progress: bool,
    ) -> Result<UploadReport> {
        check_ref_name(tag)?;
        let chunk_lens = chunk_lens(local, bundle)?;
        let (packed, probe) = match layout {
            Layout::V1 => (false, Probe::Present),
            Layout::Packed => (true, Probe::Present),
            // The layout of the bundle the tag names, else a probe.
            Layout::Auto => match self.layout_of(tag) {
                Some(packed) => (packed, Probe::Present),
                None => match self.probe_v1_digests(&bundle.lockfile_bytes)? {
                    Probe::Refused => (true, Probe::Refused),
                    probe => (false, probe),
                },
            },
        };
        let mut report = if packed {
            self.upload_packed(local, bundle, &chunk_lens, tag, progress)?
        } else {
            self.upload_v1(local, bundle, &chunk_lens, tag, progress)?
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

    /// Whether the bundle `tag` names is packed; `None` if there is none.
    fn layout_of(&self, tag: &str) -> Option<bool> {
        let bytes = self.get_manifest(tag).ok()?;
        Manifest::parse(&bytes).ok().map(|m| m.is_packed())
    }

    /// Whether the registry takes build-cache/v1 digests (BLAKE3 behind
    /// `sha256:`): tried with the lockfile, which a v1 push uploads anyway.
    /// A registry that checks SHA-256 answers `400 DIGEST_INVALID`.
    fn probe_v1_digests(&self, lockfile_bytes: &[u8]) -> Result<Probe> {
        let client = self.client.clone();
        let bytes = lockfile_bytes.to_vec();
        let digest = v1_digest(&Hash::of(&bytes));
        let probe = self.client.run(async move {
            if has_blob(&client, &digest).await? {
                return Ok(Probe::Present);
            }
            let len = bytes.len() as u64;
            match put_blob(&client, &digest, bytes).await {
                Ok(()) => Ok(Probe::Sent(len)),
                Err(Error::RegistryError {
                    status: 400, code, ..
                }) if code == "DIGEST_INVALID" => Ok(Probe::Refused),
                Err(e) => Err(e),
            }
        })?;
        if probe == Probe::Refused {
            tracing::warn!(
                "{} checks digests as SHA-256: pushing in the packed layout",
                self.client.registry()
            );
        }
        Ok(probe)
    }

    /// The packed layout: the packs of the bundle the tag named that hold
    /// needed chunks are kept; only the other chunks are packed and sent.
    fn upload_packed(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        chunk_lens: &[u64],
        tag: &str,
        progress: bool,
    ) -> Result<UploadReport> {
        let chunks = packed::distinct_chunks(&bundle.lockfile, chunk_lens);
        let previous = self.previous_packs(tag);
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
        let plan = packed::plan(&fresh);
        let blobs = plan
            .iter()
            .map(|pack| Blob::Pack(pack.iter().map(|(h, _)| *h).collect()))
            .collect();
        // Packs are up to 32 MiB in memory each: fewer at once.
        let (mut report, new_packs) =
            self.upload_blobs(local, blobs, self.jobs.min(4), progress)?;
        let mut packs = kept.clone();
        packs.extend(new_packs.iter().cloned());
        let number = |digest: &str| {
            packs
                .iter()
                .position(|(d, _)| d == digest)
                .expect("a listed pack")
        };
        let mut located: HashMap<Hash, (usize, u64, u64)> = HashMap::new();
        for (hash, location) in &previous {
            if let Some(i) = packs.iter().position(|(d, _)| *d == location.pack) {
                located.insert(*hash, (i, location.offset, location.len));
            }
        }
        for (pack, (digest, _)) in plan.iter().zip(&new_packs) {
            let mut offset = 0;
            for (hash, len) in pack {
                located.insert(*hash, (number(digest), offset, *len));
                offset += len;
            }
        }
        let index = packed::PackIndex {
            format: packed::INDEX_FORMAT.to_string(),
            lockfile: bundle.lockfile_hash.to_prefixed(),
            packs: packs.iter().map(|(d, _)| d.clone()).collect(),
            chunks: chunks
                .iter()
                .map(|(hash, _)| {
                    let (pack, offset, len) = located[hash];
                    (hash.to_hex(), pack, offset, len)
                })
                .collect(),
            sizes: bundle
                .sizes
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.to_json()).ok()),
        };
        let index_bytes = serde_json::to_vec(&index).expect("a pack index serializes");
        let metadata = vec![
            Blob::Sha256(bundle.lockfile_bytes.clone()),
            Blob::Sha256(index_bytes.clone()),
        ];
        let (more, _) = self.upload_blobs(local, metadata, 2, false)?;
        report.uploaded += more.uploaded;
        report.uploaded_bytes += more.uploaded_bytes;
        report.present += more.present + kept.len();
        let manifest = Manifest::for_packed(
            &bundle.lockfile,
            &bundle.lockfile_bytes,
            &packs,
            (sha256_digest(&index_bytes), index_bytes.len() as u64),
        );
        let bytes = manifest.to_bytes();
        let digest = sha256_digest(&bytes);
        self.tag_manifest(report, tag, bytes, &digest)
    }

    /// Where the packed bundle `tag` names keeps each chunk; empty when
    /// there is no such bundle (or it is not packed, or cannot be read).
    fn previous_packs(&self, tag: &str) -> HashMap<Hash, packed::Location> {
        let found = self.get_manifest(tag).and_then(|bytes| {
            let manifest = Manifest::parse(&bytes)?;
            if !manifest.is_packed() {
                return Ok(HashMap::new());
            }
            let bundle = self.packed_bundle_of(&manifest)?;
            let (packs, index) = manifest.packs();
            let index = index.expect("a parsed packed manifest has its index");
            let index_bytes = self.get_sha256_blob(&index.digest, index.size)?;
            packed::PackIndex::check(
                &index_bytes,
                &packs,
                &bundle.lockfile,
                &bundle.lockfile_hash,
            )
            .map(|p| p.locations)
        });
        found.unwrap_or_else(|e| {
            tracing::debug!("no packs to reuse from {tag}: {e}");
            HashMap::new()
        })
    }

    /// build-cache/v1: one layer per source.
    fn upload_v1(
        &self,
        local: &LocalStore,
        bundle: &Bundle,
        chunk_lens: &[u64],
        tag: &str,
        progress: bool,
    ) -> Result<UploadReport> {
        let sizes_json = bundle.sizes.as_ref().map(SizeIndex::to_json);
        let sizes_blob = sizes_json
            .as_ref()
            .map(|json| (Hash::of(json), json.len() as u64));
        let manifest = Manifest::for_bundle(
            &bundle.lockfile,
            &bundle.lockfile_bytes,
            chunk_lens,
            sizes_blob.as_ref().map(|(h, len)| (h, *len)),
        );
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
        let (report, _) = self.upload_blobs(local, blobs, self.jobs, progress)?;
        self.tag_manifest(report, tag, manifest_bytes, &digest)
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
        let bar = progress.then(|| crate::bundle::progress(blobs.len(), "uploading"));
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
    fn put_manifest(&self, tag: &str, bytes: Vec<u8>, digest: &str) -> Result<bool> {
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
    /// build-cache/v1: one layer per source, BLAKE3 digests (SPEC §6).
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
    /// Objects of the local store concatenated, under the pack's SHA-256.
    Pack(Vec<Hash>),
}

/// Reads verified objects of the local store off the async threads.
async fn read_objects(local: &LocalStore, hashes: Vec<Hash>) -> Result<Vec<u8>> {
    let local = local.clone();
    tokio::task::spawn_blocking(move || {
        let chunks = local.chunks();
        let mut bytes = Vec::new();
        for hash in &hashes {
            bytes.extend_from_slice(&chunks.get_verified(hash)?);
        }
        Ok(bytes)
    })
    .await
    .expect("reading local objects does not panic")
}

/// Whether the registry has blob `digest`.
async fn has_blob(client: &Client, digest: &str) -> Result<bool> {
    let head = client
        .send(Method::HEAD, client.url(&format!("blobs/{digest}")), |r| r)
        .await?;
    Ok(head.status().is_success())
}

/// Uploads one blob unless the registry has it: its digest and size, and
/// whether it was sent.
async fn upload_blob(
    client: &Client,
    local: &LocalStore,
    blob: Blob,
) -> Result<(String, u64, bool)> {
    let (digest, bytes) = match blob {
        Blob::Object(hash) => {
            let digest = v1_digest(&hash);
            if has_blob(client, &digest).await? {
                let size = local.object_len(&hash).unwrap_or_default();
                return Ok((digest, size, false));
            }
            (digest, read_objects(local, vec![hash]).await?)
        }
        Blob::Bytes(bytes) => (v1_digest(&Hash::of(&bytes)), bytes),
        Blob::Sha256(bytes) => (sha256_digest(&bytes), bytes),
        Blob::Pack(hashes) => {
            let bytes = read_objects(local, hashes).await?;
            (sha256_digest(&bytes), bytes)
        }
    };
    let size = bytes.len() as u64;
    if has_blob(client, &digest).await? {
        return Ok((digest, size, false));
    }
    put_blob(client, &digest, bytes).await?;
    Ok((digest, size, true))
}

/// Uploads `bytes` as blob `digest`: POST, then PUT to the `Location`.
async fn put_blob(client: &Client, digest: &str, bytes: Vec<u8>) -> Result<()> {
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
        .send(Method::PUT, url, |r| {
            r.header(CONTENT_TYPE, header("application/octet-stream"))
                .body(bytes.clone())
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

impl RegistryBackend {
    /// GETs blob `hash`: exactly `size` bytes if known, else at most `limit`.
    fn fetch_sized(&self, hash: &Hash, size: Option<u64>, limit: u64) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let hash = *hash;
        self.client
            .run(async move { get_blob(&client, hash, size, limit).await })
    }

    /// The size the manifest gave blob `hash`, if it named it.
    fn size_of(&self, hash: &Hash) -> Option<u64> {
        self.sizes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .copied()
    }
}

/// GETs the bytes of `members` (consecutive chunks of one pack) with one
/// `Range` request. A registry that ignores `Range` answers the whole pack:
/// then every chunk of it is returned, to be verified and cached at once.
async fn get_pack_range(client: &Client, window: Window) -> Result<Vec<(Hash, Vec<u8>)>> {
    let Window {
        location,
        members,
        pack,
    } = window;
    let start = members.first().map_or(location.offset, |m| m.0);
    let end = members
        .last()
        .map_or(location.offset + location.len, |m| m.0 + m.1);
    let url = client.url(&format!("blobs/{}", location.pack));
    let range = format!("bytes={start}-{}", end.max(start + 1) - 1);
    let found = client
        .get_body(
            url,
            |r| r.header(reqwest::header::RANGE, header(&range)),
            location.pack_size,
            None,
        )
        .await?;
    let Some((headers, body)) = found else {
        return Err(Error::Remote(format!(
            "{}: pack {} is missing",
            client.describe(),
            location.pack
        )));
    };
    let whole = !headers.contains_key(reqwest::header::CONTENT_RANGE);
    let (base, members) = if whole {
        if body.len() as u64 != location.pack_size {
            return Err(Error::Unreachable {
                registry: client.registry(),
                reason: format!(
                    "pack {} came with {} of {} bytes",
                    location.pack,
                    body.len(),
                    location.pack_size
                ),
            });
        }
        (0, pack)
    } else {
        if body.len() as u64 != end - start {
            return Err(Error::Unreachable {
                registry: client.registry(),
                reason: format!("a range of {} bytes came with {}", end - start, body.len()),
            });
        }
        (start, members)
    };
    Ok(members
        .into_iter()
        .map(|(offset, len, hash)| {
            let from = (offset - base) as usize;
            (hash, body[from..from + len as usize].to_vec())
        })
        .collect())
}

/// GETs blob `hash`: exactly `size` bytes when known, else at most `limit`.
async fn get_blob(client: &Client, hash: Hash, size: Option<u64>, limit: u64) -> Result<Vec<u8>> {
    let url = client.url(&format!("blobs/{}", v1_digest(&hash)));
    match client
        .get_body(url, |r| r, size.unwrap_or(limit), size)
        .await?
    {
        Some((_, bytes)) => Ok(bytes),
        None => Err(Error::ObjectMissing {
            hash,
            store: client.describe(),
        }),
    }
}

impl Backend for RegistryBackend {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>> {
        let found = self.fetch_around(hash)?;
        found
            .into_iter()
            .find(|(h, _)| h == hash)
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| Error::ObjectMissing {
                hash: *hash,
                store: self.client.describe(),
            })
    }

    fn fetch_around(&self, hash: &Hash) -> Result<Vec<(Hash, Vec<u8>)>> {
        let window = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let sequential = |l: &packed::Location| {
                recent
                    .get(&l.pack)
                    .is_some_and(|&(start, end)| (start..=end).contains(&l.offset))
            };
            self.packed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .window(hash, sequential)
        };
        match window {
            Some(window) => {
                if let (Some(first), Some(last)) = (window.members.first(), window.members.last()) {
                    self.recent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            window.location.pack.clone(),
                            (first.0 + first.1, last.0 + last.1),
                        );
                }
                let client = self.client.clone();
                self.client
                    .run(async move { get_pack_range(&client, window).await })
            }
            None => Ok(vec![(
                *hash,
                self.fetch_sized(hash, self.size_of(hash), MAX_METADATA)?,
            )]),
        }
    }

    fn fetch_many(&self, hashes: &[Hash], each: &(dyn Fn(Hash, Vec<u8>) + Sync)) -> Result<()> {
        let requests = self.plan_requests(hashes);
        let client = self.client.clone();
        let jobs = self.jobs;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(Hash, Vec<u8>)>>>(jobs);
        self.client.runtime_spawn(async move {
            let mut fetched = futures_util::stream::iter(requests)
                .map(|request| {
                    let client = client.clone();
                    async move {
                        match request {
                            Request::Blob(hash, size) => {
                                get_blob(&client, hash, size, MAX_METADATA)
                                    .await
                                    .map(|bytes| vec![(hash, bytes)])
                            }
                            Request::Range(window) => get_pack_range(&client, window).await,
                        }
                    }
                })
                .buffer_unordered(jobs);
            while let Some(result) = fetched.next().await {
                let failed = result.is_err();
                if tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        for result in rx {
            for (hash, bytes) in result? {
                each(hash, bytes);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.client.describe()
    }

    fn locate(&self, hash: &Hash) -> String {
        format!("{}/blobs/{}", self.client.describe(), v1_digest(hash))
    }

    fn counters(&self) -> Option<RemoteCounters> {
        let c = self.client.counters();
        Some(RemoteCounters {
            remote: self.client.describe(),
            layout: match self
                .packed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .locations
                .is_empty()
            {
                true => LAYOUT_V1.to_string(),
                false => LAYOUT_PACKED.to_string(),
            },
            requests: c.requests.load(Ordering::Relaxed),
            bytes_fetched: c.bytes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        })
    }
}

impl BundleStore for RegistryStore {
    fn resolve(&self, reference: &str) -> Result<Bundle> {
        if reference.starts_with(crate::hash::TEXT_PREFIX) {
            return Err(Error::BadSetting(format!(
                "{reference}: a registry bundle is named by a tag or a manifest digest (sha256:…)"
            )));
        }
        if !reference.starts_with("sha256:") {
            check_ref_name(reference)?;
        }
        let bytes = match self.get_manifest(reference) {
            Ok(bytes) => bytes,
            Err(e @ Error::Unreachable { .. }) => match self.recall(reference) {
                Some(bytes) => {
                    tracing::warn!("{e}; using {reference} as last resolved, from the disk cache");
                    bytes
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let manifest = Manifest::parse(&bytes)?;
        let bundle = self.bundle_of(&manifest)?;
        if !reference.starts_with("sha256:") {
            self.remember(reference, &bytes);
        }
        Ok(bundle)
    }

    fn refs(&self) -> Result<Vec<(String, Hash)>> {
        let client = self.client.clone();
        let tags: Vec<String> = self.client.run(async move {
            let response = client
                .send(Method::GET, client.url("tags/list"), |r| r)
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(Vec::new());
            }
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let body = read_limited(response, MAX_MANIFEST).await?;
            let tags: Tags = serde_json::from_slice(&body).map_err(|e| {
                Error::Remote(format!("{}: tags/list is not JSON: {e}", client.describe()))
            })?;
            Ok::<_, Error>(tags.tags.unwrap_or_default())
        })?;
        let mut refs = Vec::new();
        for tag in tags {
            let bytes = self.get_manifest(&tag)?;
            if let Ok(manifest) = Manifest::parse(&bytes) {
                let lockfile = match manifest.is_packed() {
                    true => self.packed_bundle_of(&manifest)?.lockfile_hash,
                    false => hash_of_digest(&manifest.config.digest)?,
                };
                refs.push((tag, lockfile));
            }
        }
        refs.sort();
        Ok(refs)
    }

    fn chunks(&self) -> Arc<dyn ChunkSource> {
        self.chunks.clone()
    }

    fn describe(&self) -> String {
        self.client.describe()
    }
}

/// A true SHA-256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A registry name as a directory name.
fn sanitize(registry: &str) -> String {
    registry.replace([':', '/'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_need_a_scheme_and_no_path_and_tls_beyond_loopback() {
        assert!(parse_remote("https://registry.example.com", false).is_ok());
        assert!(parse_remote("http://127.0.0.1:5000", false).is_ok());
        assert!(parse_remote("http://localhost:5000/", false).is_ok());
        for (url, needle) in [
            ("registry.example.com", "scheme"),
            ("https://registry.example.com/v2/team", "only scheme://host"),
            ("http://registry.example.com", "loopback"),
            ("ftp://registry.example.com", "https or http"),
            ("https://user:pw@registry.example.com", "credentials"),
        ] {
            let err = parse_remote(url, false).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
        assert!(parse_remote("http://registry.example.com", true).is_ok());
    }

    #[test]
    fn scopes_are_oci_path_components() {
        for good in ["team", "team/repo", "a.b/c-d/e_f", "x1"] {
            assert!(check_scope(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Team",
            "team/",
            "/team",
            "te am",
            "-team",
            "team/../x",
            "a//b",
        ] {
            assert!(check_scope(bad).is_err(), "{bad}");
        }
    }
}
