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
//! a name component never starts with `_`). Every method blocks: call them
//! from `spawn_blocking`.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use tempfile::TempPath;

use super::digest::{Computed, Digest};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::LocalStore;
use crate::store::local::Object;

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
        let direct = digest.as_blake3();
        if self.store.object_len(&direct).is_some() {
            return Ok(Some(direct));
        }
        let indexed = self.read_hash_file(&format!("sha256/{}", digest.hex()))?;
        Ok(indexed.filter(|hash| self.store.object_len(hash).is_some()))
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
        let relative = format!("sha256/{}", hex::encode(computed.sha256));
        self.store.write_file(&relative, text.as_bytes())
    }

    /// Reads a blob, verified against its BLAKE3.
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>> {
        use crate::store::BundleStore;
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
        self.store.write_file(
            &format!("repositories/{name}/_manifests/{}", hash.to_hex()),
            b"",
        )
    }

    /// Whether repository `name` holds manifest `hash` (and it is stored).
    pub fn has_manifest(&self, name: &str, hash: &Hash) -> bool {
        let marker = self.repository(name).join("_manifests").join(hash.to_hex());
        marker.is_file() && self.store.object_len(hash).is_some()
    }

    /// Holds the store's lock shared while a manifest is checked and
    /// tagged, so `gc` cannot take a blob the check just found.
    pub fn lock_shared(&self) -> Result<crate::store::local::StoreLock> {
        self.store.lock_shared()
    }

    /// Points `tag` of repository `name` at manifest `hash`.
    pub fn set_tag(&self, name: &str, tag: &str, hash: &Hash) -> Result<()> {
        let text = format!("{}\n", Digest::of_hash(hash));
        self.store
            .write_file(&format!("repositories/{name}/_tags/{tag}"), text.as_bytes())
    }

    /// The manifest `tag` of repository `name` points at, if any.
    pub fn tag(&self, name: &str, tag: &str) -> Result<Option<Hash>> {
        let relative = format!("repositories/{name}/_tags/{tag}");
        let Some(text) = self.read_text(&relative)? else {
            return Ok(None);
        };
        let digest = Digest::parse(text.trim()).map_err(|_| Error::MalformedStoreFile {
            path: relative.into(),
            reason: "a tag holds sha256:<64 hex digits>".to_string(),
        })?;
        Ok(Some(digest.as_blake3()))
    }

    /// The tags of repository `name` (unsorted).
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        let dir = self.repository(name).join("_tags");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut tags = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            tags.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(tags)
    }

    fn repository(&self, name: &str) -> PathBuf {
        self.store.root().join("repositories").join(name)
    }

    /// A `blake3:<hex>` file, if present.
    fn read_hash_file(&self, relative: &str) -> Result<Option<Hash>> {
        let Some(text) = self.read_text(relative)? else {
            return Ok(None);
        };
        Hash::from_prefixed(text.trim())
            .map(Some)
            .map_err(|_| Error::MalformedStoreFile {
                path: relative.into(),
                reason: "an index entry holds blake3:<64 hex digits>".to_string(),
            })
    }

    fn read_text(&self, relative: &str) -> Result<Option<String>> {
        let path = self.store.root().join(relative);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}
