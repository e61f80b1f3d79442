//! Where bundles and their chunk bytes come from.
//!
//! Three layers, as Nydus shapes its storage:
//! - a [`Backend`] only fetches bytes by hash (a local directory, a
//!   registry); it verifies nothing;
//! - [`Verified`] wraps a backend (and, for remote backends, the disk cache
//!   in front of it): every chunk is BLAKE3-checked before anyone sees it,
//!   and concurrent requests for one chunk make one fetch. It is the one
//!   [`ChunkSource`] that reads, prefetch and the `mache.db` build all use;
//! - a [`BundleStore`] resolves refs to bundles (lockfile + sizes index),
//!   lists refs, and hands out its chunk source. The CLI's `open_store` is the one factory
//!   that builds it from the settings: the local store ([`local`]) or a
//!   registry ([`crate::registry`]).
//!
//! Everything above (pull, verify, inspect, the filesystem) sees only these
//! traits and never learns which store it reads.

pub mod disk_cache;
pub mod gc;
pub mod local;
pub mod room;
pub mod served;
pub mod sizes;
pub mod tmp;
pub mod unnamed;
mod verified;

use std::sync::Arc;

use crate::error::Result;
use crate::hash::Hash;
use crate::lockfile::Lockfile;

pub use disk_cache::DiskCache;
pub use local::LocalStore;
pub use room::Room;
pub use sizes::SizeIndex;
pub use verified::Verified;

/// Fetches bytes by hash, unverified: the raw access to one kind of store.
pub trait Backend: Send + Sync {
    /// The bytes stored under `hash`, or `Err(Error::ObjectMissing)`. Not
    /// checked: [`Verified`] does that. A backend that knows the object's
    /// length refuses to read more than that.
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>>;

    /// Fetches `hash` and, where one request can bring them cheaply, the
    /// objects stored next to it (read-ahead): `(hash, bytes)` pairs, the
    /// one asked for among them. Unverified, like [`fetch`](Self::fetch).
    fn fetch_around(&self, hash: &Hash) -> Result<Vec<(Hash, Vec<u8>)>> {
        Ok(vec![(*hash, self.fetch(hash)?)])
    }

    /// Fetches many objects, telling `sink` which ones a request is about
    /// to fetch and handing it every one as it arrives (in any order). The
    /// default fetches them one by one; a remote backend overlaps the
    /// requests, in the order of `hashes` as far as it can, each taking
    /// the sink's [`room`](BatchSink::room) first. Stops at the first
    /// failure, or when the sink says it [`stopped`](BatchSink::stopped).
    fn fetch_many(&self, hashes: &[Hash], sink: &dyn BatchSink) -> Result<()> {
        for hash in hashes {
            if sink.stopped() {
                break;
            }
            sink.starting(std::slice::from_ref(hash));
            sink.landed(*hash, self.fetch(hash)?);
        }
        Ok(())
    }

    /// How long one fetch may take at most, for a remote backend (its
    /// retry budget); `None` where fetches are local and quick.
    fn budget(&self) -> Option<std::time::Duration> {
        None
    }

    /// A short name for messages (a path, a registry repository).
    fn describe(&self) -> String;

    /// Where object `hash` lives, for messages (a file, a blob URL).
    fn locate(&self, hash: &Hash) -> String {
        format!("{}/{hash}", self.describe())
    }

    /// Request counters of a remote backend; `None` for a local one.
    fn counters(&self) -> Option<RemoteCounters> {
        None
    }
}

/// Where [`ChunkSource::stream`] hands verified chunks, or `None` for one
/// that another fetch already under way brings (the consumer gets it
/// itself, joining that fetch): `false` stops the stream.
pub type StreamSink<'a> = dyn Fn(Hash, Option<Vec<u8>>) -> bool + Sync + 'a;

/// Where [`Backend::fetch_many`] reports to.
pub trait BatchSink: Sync {
    /// A request for `hashes` is about to go out (they are no longer just
    /// queued).
    fn starting(&self, hashes: &[Hash]);
    /// Object `hash` arrived (unverified).
    fn landed(&self, hash: Hash, bytes: Vec<u8>);
    /// Whether the batch should stop: nobody wants the rest.
    fn stopped(&self) -> bool {
        false
    }
    /// The room a request must take for its bytes before it goes out;
    /// `None`: no limit.
    fn room(&self) -> Option<Arc<Room>> {
        None
    }
}

/// The health of a remote store, for the status file: `up` or `down`
/// (calls fail at once while a background probe waits for it to answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HealthReport {
    /// `up` or `down`.
    pub state: &'static str,
    /// When it entered that state (RFC 3339, UTC); `null` if it never
    /// changed since the start.
    pub since: Option<String>,
    /// The last failure seen, up or down.
    pub last_error: Option<String>,
    /// Times it went down.
    pub outages: u64,
    /// Probes sent while down.
    pub probes: u64,
}

/// What a remote backend has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteCounters {
    /// The repository, e.g. `registry.example.com/mache/team`.
    pub remote: String,
    /// The transport layout, e.g. `build-cache/v1`.
    pub layout: String,
    /// HTTP requests sent (each attempt counts).
    pub requests: u64,
    /// Body bytes received.
    pub bytes_fetched: u64,
    /// Attempts made again after a failure.
    pub retries: u64,
    /// Calls that failed for good.
    pub failures: u64,
    /// Whether it answers now.
    pub health: HealthReport,
}

/// A remote source's counters and its disk cache's, for the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteStatus {
    #[serde(flatten)]
    pub counters: RemoteCounters,
    pub disk_cache: Option<disk_cache::DiskStats>,
}

/// A content-addressed source of verified chunk bytes.
pub trait ChunkSource: Send + Sync {
    /// Returns the bytes of object `hash`, checked to hash to it.
    ///
    /// `Err(Error::ObjectMissing)` when the object is absent,
    /// `Err(Error::Corrupt)` when it is present but its bytes hash to
    /// something else. Unverified bytes are never returned.
    fn get_verified(&self, hash: &Hash) -> Result<Vec<u8>>;

    /// Makes the given chunks quick to get (a remote source fetches them
    /// in parallel into its disk cache); a no-op where every get is quick.
    fn warm(&self, _hashes: &[Hash]) -> Result<()> {
        Ok(())
    }

    /// Of `hashes`, the ones [`stream`](Self::stream) fetches: those a
    /// cache in front of the store does not hold, or with `fresh` all of
    /// them (to check what the store itself holds: what `verify` reads).
    /// None where there is no cache in front of the store (it is read in
    /// place, as quickly as a cache would be).
    fn streamed(&self, _hashes: &[Hash], _fresh: bool) -> Vec<Hash> {
        Vec::new()
    }

    /// Fetches `hashes` (as [`streamed`](Self::streamed) chose them) from
    /// the store itself, a request going out only when `room` has room for
    /// its bytes, and hands each chunk to `sink` verified as it arrives, in
    /// any order (or at once as `None`, one another fetch is bringing);
    /// each is also kept in the disk cache. Stops when `sink` returns
    /// `false`. The first failure.
    fn stream(&self, _hashes: &[Hash], _room: &Arc<Room>, _sink: &StreamSink<'_>) -> Result<()> {
        Ok(())
    }

    /// A short name for messages (the store's path, a registry URL).
    fn describe(&self) -> String;

    /// For a remote source: its requests and its disk cache.
    fn remote_status(&self) -> Option<RemoteStatus> {
        None
    }
}

/// A place bundles live: resolves refs, lists them, gives the chunk source.
pub trait BundleStore: Send + Sync {
    /// The bundle `reference` names: a tag (`latest`, `v1`),
    /// `blake3:<lockfile hash>`, or in a local store `<repository>:<tag>`
    /// (a tag `serve` keeps).
    fn resolve(&self, reference: &str) -> Result<Bundle>;

    /// Every tag and the lockfile it names, sorted by name (a local store
    /// lists the tags `serve` keeps after its own).
    fn refs(&self) -> Result<Vec<(String, Hash)>>;

    /// Every tag and the bundle it names, in the order of
    /// [`refs`](Self::refs). The default
    /// resolves each of [`refs`](Self::refs); a remote store lists its tags
    /// and resolves each once.
    fn bundles(&self) -> Result<Vec<(String, Bundle)>> {
        self.refs()?
            .into_iter()
            .map(|(name, _)| Ok((name.clone(), self.resolve(&name)?)))
            .collect()
    }

    /// The verified chunk source for this store's bundles.
    fn chunks(&self) -> Arc<dyn ChunkSource>;

    /// Checks, without reading them, that every blob `bundle` (as this
    /// store resolved it) is made of is present with the size its manifest
    /// gives, and re-reads its metadata from the store itself: a registry
    /// HEADs each layer. `None` where a bundle has no such blobs (a local
    /// store): there only reading every chunk checks it.
    fn check_blobs(&self, _bundle: &Bundle, _progress: bool) -> Result<Option<BlobCheck>> {
        Ok(None)
    }

    /// Points tag `name` at the bundle `reference` names (an existing tag
    /// moves). Returns the lockfile hash.
    fn tag(&self, reference: &str, name: &str) -> Result<Hash>;

    /// Removes tag `name` (never `latest`); what it named stays until a
    /// garbage collection. Returns the lockfile hash it named.
    fn untag(&self, name: &str) -> Result<Hash>;

    /// A short name for messages.
    fn describe(&self) -> String;
}

/// A bundle resolved from a ref: its lockfile and what the store knows beside it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// BLAKE3 of the binary lockfile.
    pub lockfile_hash: Hash,
    /// The binary lockfile exactly as stored.
    pub lockfile_bytes: Vec<u8>,
    /// The decoded, supported lockfile.
    pub lockfile: Lockfile,
    /// Sizes recorded by our push; `None` for bundles written by the Go mache.
    pub sizes: Option<SizeIndex>,
    /// Set when the store could not be reached and the bundle is the one
    /// the ref last resolved to, from the disk cache: why, for a warning.
    pub offline: Option<String>,
    /// The registry manifest the bundle was resolved from, as received
    /// (checked against its digest); `None` for a bundle of a local store.
    pub manifest: Option<Vec<u8>>,
}

impl Bundle {
    /// The record of the `mache.db` this bundle synthesizes, if its push
    /// made one.
    pub fn db_record(&self) -> Option<&sizes::DbRecord> {
        self.sizes.as_ref().and_then(|sizes| sizes.db.as_ref())
    }

    /// Adds what a registry manifest of this bundle says beyond the
    /// layout: the [`db_record`](Self::db_record), if any.
    pub fn annotate(&self, manifest: &mut crate::oci::Manifest) {
        if let Some(db) = self.db_record() {
            db.annotate(manifest);
        }
    }

    /// A bundle as a store resolved it: not offline, no manifest (a
    /// registry sets those after).
    pub fn new(
        lockfile_hash: Hash,
        lockfile_bytes: Vec<u8>,
        lockfile: Lockfile,
        sizes: Option<SizeIndex>,
    ) -> Bundle {
        Bundle {
            lockfile_hash,
            lockfile_bytes,
            lockfile,
            sizes,
            offline: None,
            manifest: None,
        }
    }
}

/// What [`BundleStore::check_blobs`] found: every blob present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCheck {
    /// Blobs found present with their manifest's size (one HEAD each).
    pub blobs: usize,
    /// What those blobs are, for messages: `packs` or `chunk blobs`.
    pub what: &'static str,
}
