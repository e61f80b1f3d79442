//! OCI as this crate speaks it, modelled once: the media types and
//! annotations of both bundle layouts ([`manifest`]), digests in both
//! readings ([`digest`]) and the repository-name and tag grammar
//! ([`name`]). The registry client, `serve` and the store's reading of
//! `serve`'s tags all use this one model, so a manifest, a digest or a name
//! means the same thing wherever it is read or written.
//!
//! Why not the `oci-spec` crate: its `Digest` checks only the form, which
//! would take BLAKE3-in-`sha256:` (SPEC §6) well enough, but its
//! descriptors and manifests keep annotations in a `HashMap`, so they
//! serialize in no fixed order, and the build-cache/v1 manifest must come
//! out byte for byte as the conformance vector (annotations sorted, as Go
//! writes maps); they also reject a malformed digest while parsing the
//! JSON, where `serve` must answer `MANIFEST_INVALID` naming the
//! descriptor. A small serde model keeps the bytes ours.

pub mod digest;
pub mod manifest;
pub mod name;

pub use digest::{Computed, Digest, DualHasher, hash_of_digest, sha256_digest, v1_digest};
pub use manifest::{Descriptor, Manifest};
pub use name::{MAX_REPOSITORY_NAME, check_tag, is_name_component, is_repository_name};

/// The OCI image manifest media type: the only manifest type used.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI empty descriptor's media type (`{}`).
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The config (binary lockfile) media type of build-cache/v1.
pub const CONFIG_TYPE: &str = "application/vnd.cloister.build-cache.v1.config+json";
/// The chunk layer media type of build-cache/v1.
pub const CHUNK_TYPE: &str = "application/vnd.cloister.build-cache.v1.chunk";

/// The config (binary lockfile) media type of the packed layout.
pub const PACKED_CONFIG_TYPE: &str = "application/vnd.mache-cachefs.lockfile.v1";
/// The media type of a pack of frames (packed/2; a packed/1 pack is one
/// whose frames are all stored as they are).
pub const PACK_TYPE: &str = "application/vnd.mache-cachefs.pack.v2";
/// The media type of a pack of chunks stored as they are (packed/1).
pub const PACK_TYPE_V1: &str = "application/vnd.mache-cachefs.pack.v1";
/// The pack index layer media type: zstd-compressed JSON (packed/2).
pub const INDEX_TYPE: &str = "application/vnd.mache-cachefs.packindex.v2+json+zstd";
/// The pack index layer media type of packed/1: plain JSON.
pub const INDEX_TYPE_V1: &str = "application/vnd.mache-cachefs.packindex.v1+json";
/// The version of the packed layout a push writes.
pub const PACKED_VERSION: u32 = 2;
/// The artifact type of `untag`'s placeholder manifests.
pub const PLACEHOLDER_TYPE: &str = "application/vnd.mache-cachefs.untagged.v1";

/// A chunk layer's source path (build-cache/v1, reserved namespace).
pub const PATH_KEY: &str = "org.cloister.build-cache.path";
/// A chunk layer's source kind (build-cache/v1, reserved namespace).
pub const KIND_KEY: &str = "org.cloister.build-cache.kind";
/// The lockfile's producer (build-cache/v1, reserved namespace).
pub const PRODUCER_KEY: &str = "org.cloister.build-cache.producer";
/// The lockfile's producer version (build-cache/v1, reserved namespace).
pub const PRODUCER_VERSION_KEY: &str = "org.cloister.build-cache.producer_version";
/// The lockfile's schema version (build-cache/v1, reserved namespace).
pub const SCHEMA_VERSION_KEY: &str = "org.cloister.build-cache.schema_version";
/// Our annotation naming the sizes-index blob.
pub const SIZES_KEY: &str = "dev.mache-cachefs.sizes";
/// Our annotation giving the byte size of the `mache.db` the bundle synthesizes.
pub const DB_SIZE_KEY: &str = "dev.mache-cachefs.db.size";
/// Our annotation giving that db's BLAKE3 (`blake3:<hex>`).
pub const DB_BLAKE3_KEY: &str = "dev.mache-cachefs.db.blake3";
/// Our annotation naming what synthesized that db (layout and SQLite versions).
pub const DB_SYNTHESIZER_KEY: &str = "dev.mache-cachefs.db.synthesizer";
/// Our annotation naming a packed bundle's layout ([`LAYOUT_PACKED`]).
pub const LAYOUT_KEY: &str = "dev.mache-cachefs.layout";
/// Our annotation making a placeholder manifest (of `untag`) unique.
pub const UNTAGGED_KEY: &str = "dev.mache-cachefs.untagged";

/// The name of the build-cache/v1 layout.
pub const LAYOUT_V1: &str = "build-cache/v1";
/// The name of the packed layout, as [`LAYOUT_KEY`] carries it.
pub const LAYOUT_PACKED: &str = "packed/2";
/// The name of the packed layout's first version, still read.
pub const LAYOUT_PACKED_V1: &str = "packed/1";

/// The packed layout version a pack index media type names: `Ok(Some(1))`
/// or `Ok(Some(2))`; a later version is [`NewerLayout`](crate::error::Error::NewerLayout) (this build
/// cannot read it: "upgrade mache-cachefs"); anything else `Ok(None)`.
pub fn index_version(media_type: &str) -> crate::error::Result<Option<u32>> {
    let version = media_type
        .strip_prefix("application/vnd.mache-cachefs.packindex.v")
        .and_then(|rest| rest.split_once("+json"))
        .and_then(|(n, _)| n.parse::<u32>().ok());
    match version {
        Some(v @ 1..=PACKED_VERSION) => Ok(Some(v)),
        Some(v) => Err(crate::error::Error::NewerLayout {
            found: format!("packed/{v}"),
        }),
        None => Ok(None),
    }
}
