//! Bundles on a registry: the build-cache/v1 transport of SPEC §6 over the
//! OCI Distribution API, as a [`BundleStore`] beside the local store.
//!
//! - [`client`]: HTTP with auth, timeouts, retries and bounded bodies;
//! - [`auth`]: where credentials come from and the challenge handshake;
//! - [`packed`]: the packed layout's plan and pack index;
//! - `backend`: fetching chunks (a [`Backend`](crate::store::Backend),
//!   verified and cached on disk by [`Verified`] in front of it);
//! - `upload`: pushing a bundle of the local store;
//! - [`frames`]: packed/2's frames: zstd, bounded decoding;
//! - `tags`: `tag` and `untag` on a registry (manifest PUT and DELETE);
//! - `verify`: what `verify` checks besides the chunks (every blob there,
//!   with its manifest's size);
//! - this module: the settings, and resolving refs (manifest → lockfile →
//!   sizes index or pack index, each verified).
//!
//! The repository is `mache/<scope>`. A tag resolves to the manifest
//! actually received (its digest is checked against what the registry
//! says); the lockfile is the config blob, verified with BLAKE3; its
//! sources must be the layers, in order. The last manifest each tag
//! resolved to is remembered in the disk cache, so a mount can come up
//! from the cache when the registry is unreachable.

pub mod auth;
mod backend;
pub mod client;
pub mod frames;
pub mod health;
pub mod packed;
mod tags;
mod upload;
mod verify;

pub use self::upload::{Layout, UploadOptions, UploadReport};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use url::Url;

use self::auth::{Auth, CredentialSources};
use self::backend::RegistryBackend;
use self::client::{Client, Timeouts, header};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::binary;
use crate::oci::{
    self, Digest, MANIFEST_TYPE, Manifest, check_tag, hash_of_digest, is_name_component,
    sha256_digest, v1_digest,
};
use crate::store::sizes::SizeIndex;
use crate::store::{BlobCheck, Bundle, BundleStore, ChunkSource, DiskCache, Verified};

/// The producer part of every repository name.
pub const PRODUCER: &str = "mache";
/// Largest manifest (and tag list) we read (providers accept at least 16 MiB).
pub const MAX_MANIFEST: u64 = 128 << 20;
/// Largest lockfile, sizes index or pack index we read.
pub const MAX_METADATA: u64 = 256 << 20;
/// Largest chunk blob, and largest single read of a pack, we accept.
pub const MAX_BLOB: u64 = 256 << 20;
/// Largest pack we accept (a registry that ignores `Range` sends it whole):
/// room for one chunk of [`MAX_BLOB`] and a pack's worth of others.
pub const MAX_PACK: u64 = MAX_BLOB + packed::PACK_TARGET;

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
    url.host_str().ok_or_else(|| bad("no host"))?;
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
    if url.scheme() == "http" && !auth::is_loopback(&url) && !insecure {
        return Err(bad(
            "plain http is allowed only to a loopback host, or with --insecure",
        ));
    }
    Ok(url)
}

/// Checks a scope: one or more OCI name components (`team`, `team/repo`).
pub fn check_scope(scope: &str) -> Result<()> {
    if scope.len() <= 200 && scope.split('/').all(is_name_component) {
        return Ok(());
    }
    Err(Error::BadSetting(format!(
        "invalid scope {scope:?}: lowercase letters, digits and . _ - in /-separated parts, \
         each starting and ending with a letter or digit"
    )))
}

/// The registry URL and the repository name of `settings`, both checked.
fn repository(settings: &RemoteSettings) -> Result<(Url, String)> {
    let base = parse_remote(&settings.url, settings.insecure)?;
    check_scope(&settings.scope)?;
    Ok((base, format!("{PRODUCER}/{}", settings.scope)))
}

/// What a registry answered to [`ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The HTTP status of `GET /v2/`: below 400, or 404.
    pub status: u16,
    /// How long the answer took, the auth handshake included.
    pub elapsed: std::time::Duration,
}

/// Checks that the registry of `settings` answers `GET /v2/` and accepts
/// `credentials` (see [`Client::ping`]: one attempt within the connect
/// timeout). Opens no disk cache: nothing changes on disk.
pub fn ping(settings: &RemoteSettings, credentials: auth::Credentials) -> Result<Pong> {
    let (base, repo) = repository(settings)?;
    let client = Client::new(
        base,
        repo,
        Auth::new(credentials),
        settings.timeouts,
        runtime(),
    )?;
    let started = std::time::Instant::now();
    let asking = client.clone();
    let status = client.run(async move { asking.ping().await })?;
    Ok(Pong {
        status: status.as_u16(),
        elapsed: started.elapsed(),
    })
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

impl RegistryStore {
    /// Connects nothing yet: checks the settings and sets up the client and
    /// the disk cache.
    pub fn open(settings: &RemoteSettings) -> Result<RegistryStore> {
        let (base, repo) = repository(settings)?;
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
        let backend = Arc::new(RegistryBackend::new(client.clone(), jobs));
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

    /// Fetches the manifest `reference` names (see [`get_manifest_with`](Self::get_manifest_with)).
    fn get_manifest(&self, reference: &str) -> Result<Vec<u8>> {
        self.get_manifest_with(&self.client, reference)
    }

    /// Fetches the manifest `reference` names with `client` (ours, or a
    /// one-attempt copy of it), its bytes checked against the digest asked
    /// for or the registry's `Docker-Content-Digest`.
    fn get_manifest_with(&self, client: &Client, reference: &str) -> Result<Vec<u8>> {
        let client = client.clone();
        let url = client.url(&format!("manifests/{reference}"));
        let name = reference.to_string();
        self.client.run(async move {
            let accept = |r: reqwest::RequestBuilder| r.header(ACCEPT, header(MANIFEST_TYPE));
            let Some((headers, bytes)) = client.get_body(url, accept, MAX_MANIFEST, None).await?
            else {
                return Err(Error::RefMissing {
                    name,
                    store: client.describe(),
                    known: None,
                });
            };
            let claimed = headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let digest = v1_digest(&Hash::of(&bytes));
            let sha256 = sha256_digest(&bytes);
            let pinned = if name.starts_with(oci::digest::PREFIX) {
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

    /// The manifest `reference` names now, or — when the registry cannot
    /// answer and the tag was resolved before — the one it named then, with
    /// why (for a warning) and when. A tag resolved before is asked for
    /// once, without retries: the answer is at hand, so a registry that is
    /// down costs one refused connection (or the connect timeout), and it
    /// is marked down for the rest of the process.
    fn manifest_or_recalled(&self, reference: &str) -> Result<(Vec<u8>, Option<Outage>)> {
        let recalled = self.recall(reference);
        let client = match recalled {
            Some(_) => self.client.single_attempt(),
            None => self.client.clone(),
        };
        match (self.get_manifest_with(&client, reference), recalled) {
            (Ok(bytes), _) => Ok((bytes, None)),
            (Err(e), Some((bytes, resolved))) if is_outage(&e) => {
                self.client.go_offline(&e);
                Ok((bytes, Some((e, resolved))))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// A small blob (config, sizes index), verified: from the disk cache,
    /// else from the registry.
    fn get_metadata_blob(&self, hash: &Hash, size: Option<u64>) -> Result<Vec<u8>> {
        if let Some(bytes) = self.chunks.disk().and_then(|d| d.get(hash)) {
            return Ok(bytes);
        }
        self.fetch_metadata_blob(hash, size)
    }

    /// GETs a small blob from the registry, verifies it and caches it.
    fn fetch_metadata_blob(&self, hash: &Hash, size: Option<u64>) -> Result<Vec<u8>> {
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
        let layer_sizes = manifest
            .layers
            .iter()
            .map(|layer| Ok((hash_of_digest(&layer.digest)?, layer.size)))
            .collect::<Result<Vec<_>>>()?;
        self.backend.learn_sizes(layer_sizes);
        let sizes = match manifest.sizes_blob() {
            Some(hash) => self.read_sizes(&hash?, &lockfile_hash, lockfile.sources.len()),
            None => None,
        };
        Ok(Bundle::new(lockfile_hash, lockfile_bytes, lockfile, sizes))
    }

    /// A packed bundle; the chunks' locations go to the backend.
    fn packed_bundle_of(&self, manifest: &Manifest) -> Result<Bundle> {
        let (bundle, locations, layout) = self.read_packed(manifest)?;
        self.backend.learn_packs(locations, layout);
        Ok(bundle)
    }

    /// A packed bundle and where it keeps each chunk: the lockfile and the
    /// pack index, each checked with SHA-256 (their digests), and the index
    /// against the manifest and the lockfile.
    fn read_packed(
        &self,
        manifest: &Manifest,
    ) -> Result<(Bundle, HashMap<Hash, packed::Location>, &'static str)> {
        let (packs, index) = manifest.packs();
        let index = index.expect("a parsed packed manifest has its index");
        // The manifest names both: fetched at once, one round trip, not two.
        let (lockfile_bytes, index_bytes) = std::thread::scope(|scope| {
            let index =
                scope.spawn(|| self.get_sha256_blob("pack index", &index.digest, index.size));
            let config = &manifest.config;
            let lockfile = self.get_sha256_blob("lockfile", &config.digest, config.size);
            (
                lockfile,
                index
                    .join()
                    .expect("fetching the pack index does not panic"),
            )
        });
        let (lockfile_bytes, index_bytes) = (lockfile_bytes?, index_bytes?);
        let lockfile_hash = Hash::of(&lockfile_bytes);
        let lockfile = binary::decode_supported(&lockfile_bytes).map_err(|e| {
            Error::BadManifest(format!("its config blob is not a mache lockfile: {e}"))
        })?;
        let located = packed::PackIndex::check(&index_bytes, &packs, &lockfile, &lockfile_hash)?;
        let bundle = Bundle::new(lockfile_hash, lockfile_bytes, lockfile, located.sizes);
        Ok((bundle, located.locations, located.layout))
    }

    /// A blob named by its true SHA-256 (a packed bundle's lockfile or pack
    /// index, `what`): from the disk cache if it holds it, else fetched
    /// (checked and kept there, so a bundle resolved before resolves offline).
    fn get_sha256_blob(&self, what: &'static str, digest: &str, size: u64) -> Result<Vec<u8>> {
        if let Some(bytes) = self
            .chunks
            .disk()
            .and_then(|d| d.get_named(digest))
            .filter(|bytes| sha256_digest(bytes) == digest)
        {
            return Ok(bytes);
        }
        self.fetch_sha256_blob(what, digest, size)
    }

    /// GETs a blob named by its true SHA-256 from the registry, checks it
    /// and keeps it in the disk cache.
    fn fetch_sha256_blob(&self, what: &'static str, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_METADATA {
            return Err(Error::BadManifest(format!(
                "its {what} {digest} claims {size} bytes; at most {MAX_METADATA} are accepted"
            )));
        }
        let client = self.client.clone();
        let url = client.url(&format!("blobs/{digest}"));
        let found = self
            .client
            .run(async move { client.get_body(url, |r| r, size, Some(size)).await })?;
        let Some((_, bytes)) = found else {
            return Err(Error::BlobMissing {
                what,
                digest: digest.to_string(),
                store: self.client.describe(),
            });
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::BlobDigest {
                what,
                digest: digest.to_string(),
                store: self.client.describe(),
                actual,
            });
        }
        if let Some(disk) = self.chunks.disk() {
            disk.put_named(digest, &bytes);
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

    /// The repository's tags (`tags/list`; none if it does not exist yet).
    fn tags(&self) -> Result<Vec<String>> {
        let client = self.client.clone();
        self.client.run(async move {
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
            let body = client.read_body(response, MAX_MANIFEST).await?;
            let tags: Tags = serde_json::from_slice(&body).map_err(|e| {
                Error::Remote(format!("{}: tags/list is not JSON: {e}", client.describe()))
            })?;
            Ok(tags.tags.unwrap_or_default())
        })
    }

    /// Remembers which manifest a tag resolved to (its bytes are in the
    /// disk cache), for coming up offline.
    fn remember(&self, tag: &str, manifest_bytes: &[u8]) {
        let hash = Hash::of(manifest_bytes);
        if let Some(disk) = self.chunks.disk() {
            disk.put(&hash, manifest_bytes);
        }
        // Written aside and renamed into place: never a partial ref.
        let written = std::fs::create_dir_all(&self.refs_dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(&self.refs_dir))
            .and_then(|mut temp| {
                use std::io::Write as _;
                writeln!(temp, "{}", hash.to_prefixed())?;
                temp.persist(self.refs_dir.join(tag)).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::debug!("not remembering {tag}: {e}");
        }
    }

    /// The manifest a tag last resolved to, from the disk cache, and when
    /// it was resolved. Never for a digest (nothing to remember).
    fn recall(&self, tag: &str) -> Option<(Vec<u8>, std::time::SystemTime)> {
        if tag.starts_with(oci::digest::PREFIX) {
            return None;
        }
        let path = self.refs_dir.join(tag);
        let resolved = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let hash = Hash::from_prefixed(text.trim()).ok()?;
        Some((self.chunks.disk()?.get(&hash)?, resolved))
    }
}

/// Why a ref came from the disk cache, and when it was resolved.
type Outage = (Error, std::time::SystemTime);

/// Whether `error` says the registry cannot serve at all now (unreachable,
/// or failing with 5xx), as opposed to an answer about the ref.
fn is_outage(error: &Error) -> bool {
    match error {
        Error::Unreachable { .. } => true,
        Error::RegistryError { status, .. } => *status >= 500,
        _ => false,
    }
}

/// The warning of a bundle that came up from the disk cache: which bundle,
/// resolved how long ago, and why.
fn offline_warning(
    reference: &str,
    bundle: &Bundle,
    why: &Error,
    resolved: std::time::SystemTime,
) -> String {
    let age = resolved.elapsed().unwrap_or_default();
    let age = humantime::format_duration(std::time::Duration::from_secs(age.as_secs()));
    format!(
        "{why}; using {reference} as resolved {age} ago (lockfile {}, {} sources) from the disk cache",
        bundle.lockfile_hash.to_prefixed(),
        bundle.lockfile.sources.len()
    )
}

impl BundleStore for RegistryStore {
    fn resolve(&self, reference: &str) -> Result<Bundle> {
        if reference.starts_with(crate::hash::TEXT_PREFIX) {
            return Err(Error::BadSetting(format!(
                "{reference}: a registry bundle is named by a tag or a manifest digest (sha256:…)"
            )));
        }
        check_reference(reference)?;
        let (bytes, outage) = self.manifest_or_recalled(reference)?;
        let manifest = Manifest::parse(&bytes)?;
        let mut bundle = self.bundle_of(&manifest)?;
        match outage {
            Some((why, resolved)) => {
                let warning = offline_warning(reference, &bundle, &why, resolved);
                tracing::warn!("{warning}");
                bundle.offline = Some(warning);
            }
            None if !reference.starts_with(oci::digest::PREFIX) => self.remember(reference, &bytes),
            None => {}
        }
        bundle.manifest = Some(bytes);
        Ok(bundle)
    }

    fn refs(&self) -> Result<Vec<(String, Hash)>> {
        Ok(self
            .bundles()?
            .into_iter()
            .map(|(tag, bundle)| (tag, bundle.lockfile_hash))
            .collect())
    }

    /// Each tag's bundle, one manifest GET each (its lockfile and index come
    /// from the disk cache when it has them). A tag of something other than
    /// a bundle of ours is left out.
    fn bundles(&self) -> Result<Vec<(String, Bundle)>> {
        let mut bundles = Vec::new();
        for tag in self.tags()? {
            match self.resolve(&tag) {
                Ok(bundle) => bundles.push((tag, bundle)),
                Err(Error::BadManifest(why)) => tracing::debug!("skipping tag {tag}: {why}"),
                Err(e) => return Err(e),
            }
        }
        bundles.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(bundles)
    }

    fn chunks(&self) -> Arc<dyn ChunkSource> {
        self.chunks.clone()
    }

    fn check_blobs(&self, bundle: &Bundle, progress: bool) -> Result<Option<BlobCheck>> {
        self.check_manifest_blobs(bundle, progress)
    }

    fn tag(&self, reference: &str, name: &str) -> Result<Hash> {
        self.tag_manifest_copy(reference, name)
    }

    fn untag(&self, name: &str) -> Result<Hash> {
        self.remove_tag(name)
    }

    fn describe(&self) -> String {
        self.client.describe()
    }
}

/// Checks a registry reference before it goes into a URL: a tag (a valid
/// ref name) or a manifest digest, `sha256:` and 64 lowercase hex digits.
fn check_reference(reference: &str) -> Result<()> {
    if !reference.starts_with(oci::digest::PREFIX) {
        return check_tag(reference);
    }
    Digest::parse(reference).map(drop).map_err(|_| {
        Error::BadSetting(format!(
            "{reference}: a manifest digest is sha256: and 64 lowercase hex digits"
        ))
    })
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
