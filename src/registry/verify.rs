//! `verify` over a registry, besides reading chunks: every blob the
//! manifest names is there with the size the manifest gives (one `HEAD`
//! each, `--jobs` at once, nothing downloaded), and the lockfile (and a
//! packed bundle's pack index) is read from the registry itself, never
//! from the disk cache.
//!
//! Resolving the bundle has already checked the manifest against its
//! digest, the lockfile (the config blob) against its BLAKE3 or SHA-256,
//! and the pack index or the layers against the lockfile;
//! [`crate::bundle::verify`] then GET-verifies a sample of the chunks, or
//! every one (`--full`). A missing blob is [`Error::BlobMissing`] (the
//! bundle is incomplete), one of another size [`Error::BlobSize`].

use std::collections::HashSet;

use futures_util::StreamExt;
use reqwest::header::CONTENT_LENGTH;

use super::RegistryStore;
use super::client::Client;
use crate::error::{Error, Result};
use crate::oci::Manifest;
use crate::store::{BlobCheck, Bundle};

impl RegistryStore {
    /// [`BundleStore::check_blobs`](crate::store::BundleStore::check_blobs)
    /// of a registry: the config and pack index (GET, verified, past the
    /// disk cache) and the packs of a packed bundle, or the config and the
    /// distinct chunk layers of a build-cache/v1 one.
    pub(super) fn check_manifest_blobs(
        &self,
        bundle: &Bundle,
        progress: bool,
    ) -> Result<Option<BlobCheck>> {
        let Some(bytes) = &bundle.manifest else {
            return Ok(None);
        };
        let manifest = Manifest::parse(bytes)?;
        let (what, one, blobs) = if manifest.is_packed() {
            // The lockfile and the index, from the registry itself.
            let (packs, index) = manifest.packs();
            let index = index.expect("a parsed packed manifest has its index");
            self.fetch_sha256_blob("lockfile", &manifest.config.digest, manifest.config.size)?;
            self.fetch_sha256_blob("pack index", &index.digest, index.size)?;
            ("packs", "pack", packs)
        } else {
            self.fetch_metadata_blob(&bundle.lockfile_hash, Some(manifest.config.size))?;
            let mut seen = HashSet::new();
            let layers = manifest
                .layers
                .iter()
                .filter(|layer| seen.insert(&layer.digest))
                .map(|layer| (layer.digest.clone(), layer.size))
                .collect();
            ("chunk blobs", "chunk blob", layers)
        };
        let count = blobs.len();
        self.head_all(blobs, one, progress)?;
        Ok(Some(BlobCheck { blobs: count, what }))
    }

    /// HEADs every `(digest, size)` blob, `--jobs` at once; the first
    /// failure in their order.
    fn head_all(
        &self,
        blobs: Vec<(String, u64)>,
        what: &'static str,
        progress: bool,
    ) -> Result<()> {
        let client = self.client.clone();
        let jobs = self.jobs;
        let bar = progress.then(|| crate::progress::progress(blobs.len(), "checking"));
        self.client.run(async move {
            let mut checked = futures_util::stream::iter(blobs)
                .map(|(digest, size)| {
                    let client = client.clone();
                    async move { check_blob(&client, what, digest, size).await }
                })
                .buffered(jobs);
            while let Some(result) = checked.next().await {
                result?;
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            Ok(())
        })
    }
}

/// HEADs one blob: present, and (when the registry says) of `size` bytes.
async fn check_blob(client: &Client, what: &'static str, digest: String, size: u64) -> Result<()> {
    let Some(headers) = client.head_blob(&digest).await? else {
        return Err(Error::BlobMissing {
            what,
            digest,
            store: client.describe(),
        });
    };
    let len = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(actual) if actual != size => Err(Error::BlobSize {
            what,
            digest,
            store: client.describe(),
            expected: size,
            actual,
        }),
        Some(_) => Ok(()),
        None => {
            tracing::debug!("{what} {digest}: no Content-Length, its size is not checked");
            Ok(())
        }
    }
}
