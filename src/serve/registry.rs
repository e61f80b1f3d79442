//! The registry's view of a store: blobs by either digest, repositories,
//! tags and the manifests each repository holds. Everything is kept in the
//! store's own layout, beside what SPEC §5 defines, so a bundle pushed
//! through `serve` mounts straight from the store:
//!
//! ```text
//! objects/<b3[0..2]>/<b3[2..]>              every blob (chunks, configs, manifests), by BLAKE3
//! sha256/<sha256 hex>                       "blake3:<hex>\n": a blob by its true SHA-256
//! lockfiles/<b3>.bin                        a build-cache/v1 config pushed in a manifest
//! repositories/<name>/_tags/<tag>           "sha256:<manifest blake3 hex>\n"
//! repositories/<name>/_manifests/<b3 hex>   empty: the repository holds that manifest
//! ```
//!
//! The `_` keeps a repository's own entries apart from longer repository
//! names below it (`mache/team` and `mache/team/tags` are both valid names;
//! a name component never starts with `_`). The paths, and reading them,
//! belong to [`crate::store::served`], which the store's own commands use
//! too (`<repository>:<tag>` refs, `gc`). Every method blocks: call them
//! from `spawn_blocking`.

use tempfile::TempPath;

use crate::error::{Class, Result};
use crate::hash::Hash;
use crate::oci::{Computed, Digest};
use crate::store::local::{LATEST, Object};
use crate::store::served::{marker_path, sha256_path, tag_path};
use crate::store::{BundleStore, LocalStore};

/// A store seen as a registry.
#[derive(Debug, Clone)]
pub struct Registry {
    store: LocalStore,
}

impl Registry {
    /// Wraps an opened (created) store.
    pub fn new(store: LocalStore) -> Registry {
        Registry { store }
    }

    /// The store underneath.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The object a digest names, if present: its BLAKE3 reading first,
    /// then the `sha256/` index.
    pub fn resolve_blob(&self, digest: &Digest) -> Result<Option<Hash>> {
        self.store.object_of_digest(&digest.0)
    }

    /// Makes an upload, complete in `tmp/` and checked against its digest,
    /// an object, and indexes its SHA-256. Returns whether it was new.
    pub fn publish_upload(&self, temp: TempPath, computed: &Computed) -> Result<bool> {
        let new = self
            .store
            .publish_file(&computed.blake3, temp, computed.len)?;
        self.index_sha256(computed)?;
        Ok(new)
    }

    /// Stores small blobs held in memory (manifests, a synthesized config)
    /// and indexes their SHA-256s.
    pub fn put_blobs(&self, blobs: &[&[u8]]) -> Result<()> {
        let objects: Vec<Object> = blobs.iter().map(|b| Object::new(b.to_vec())).collect();
        self.store.put_all(&objects.iter().collect::<Vec<_>>())?;
        for blob in blobs {
            self.index_sha256(&Computed::of(blob))?;
        }
        Ok(())
    }

    /// Writes `sha256/<sha256 hex>` → the blob's BLAKE3.
    fn index_sha256(&self, computed: &Computed) -> Result<()> {
        let text = format!("{}\n", computed.blake3.to_prefixed());
        self.store
            .write_file(&sha256_path(&computed.sha256), text.as_bytes())
    }

    /// Reads a blob, verified against its BLAKE3.
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.store.chunks().get_verified(hash)
    }

    /// Copies a build-cache/v1 config into `lockfiles/<hash>.bin`, where
    /// `--ref blake3:<hash>` finds it; `sizes`, when known, beside it.
    pub fn record_lockfile(&self, hash: &Hash, bytes: &[u8], sizes: Option<&[u8]>) -> Result<()> {
        let hex = hash.to_hex();
        self.store
            .write_file(&format!("lockfiles/{hex}.bin"), bytes)?;
        if let Some(sizes) = sizes {
            self.store
                .write_file(&format!("lockfiles/{hex}.sizes.json"), sizes)?;
        }
        Ok(())
    }

    /// Records that repository `name` holds manifest `hash`.
    pub fn add_manifest(&self, name: &str, hash: &Hash) -> Result<()> {
        self.store.write_file(&marker_path(name, hash), b"")
    }

    /// Whether repository `name` holds manifest `hash` (and it is stored).
    pub fn has_manifest(&self, name: &str, hash: &Hash) -> bool {
        let marker = self.store.root().join(marker_path(name, hash));
        marker.is_file() && self.store.object_len(hash).is_some()
    }

    /// Takes manifest `hash` out of repository `name`: every tag of the
    /// repository naming it, then its marker. The objects stay (for `gc`).
    pub fn remove_manifest(&self, name: &str, hash: &Hash) -> Result<()> {
        for tag in self.tags(name)? {
            if self.tag(name, &tag)? == Some(*hash) {
                self.remove_tag(name, &tag)?;
            }
        }
        self.store.remove_file(&marker_path(name, hash))?;
        Ok(())
    }

    /// Holds the store's lock shared while a manifest is checked and
    /// tagged, so `gc` cannot take a blob the check just found.
    pub fn lock_shared(&self) -> Result<crate::store::local::StoreLock> {
        self.store.lock_shared()
    }

    /// Points `tag` of repository `name` at manifest `hash`.
    pub fn set_tag(&self, name: &str, tag: &str, hash: &Hash) -> Result<()> {
        let text = format!("{}\n", Digest::of_hash(hash));
        self.store.write_file(&tag_path(name, tag), text.as_bytes())
    }

    /// Removes `tag` of repository `name`; returns whether it was there.
    pub fn remove_tag(&self, name: &str, tag: &str) -> Result<bool> {
        self.store.remove_file(&tag_path(name, tag))
    }

    /// The manifest `tag` of repository `name` points at, if any.
    pub fn tag(&self, name: &str, tag: &str) -> Result<Option<Hash>> {
        self.store.served_manifest(name, tag)
    }

    /// The tags of repository `name`, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        self.store.repository_tags(name)
    }

    /// Moves the store's own `latest` to the bundle of lockfile `lockfile`
    /// (recorded by [`record_lockfile`](Self::record_lockfile)), as a
    /// local push does (`refs/latest` and the top-level
    /// `mache.lock.bin`/`.toml`), when every chunk it names is an object of
    /// the store; otherwise logs why not and leaves it. Returns whether it
    /// moved.
    pub fn follow_latest(&self, lockfile: &Hash) -> Result<bool> {
        let bundle = match self.store.resolve(&lockfile.to_prefixed()) {
            Ok(bundle) => bundle,
            Err(e) if e.class() == Class::Input => {
                tracing::info!("the store's latest stays: lockfile {lockfile}: {e}");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let sources = &bundle.lockfile.sources;
        let absent = sources
            .iter()
            .find(|s| self.store.object_len(&s.chunk_hash).is_none());
        if let Some(source) = absent {
            tracing::info!(
                "the store's latest stays: chunk {} of {:?} (lockfile {lockfile}) is not an object of it",
                source.chunk_hash,
                source.path
            );
            return Ok(false);
        }
        self.store.point_ref(LATEST, &bundle)?;
        Ok(true)
    }
}
