//! Tags of a registry repository: `tag` copies a manifest to another tag
//! (one manifest PUT, no blob moves), `untag` removes one.
//!
//! Removing a tag is `DELETE …/manifests/<tag>` (OCI Distribution 1.1).
//! Registries that delete only by digest (distribution before 3.0 answers
//! `400 DIGEST_INVALID`) would drop every tag of the manifest that way, so
//! instead the tag is first pointed at a placeholder manifest of its own,
//! which is then deleted by digest: only that tag goes, as `regctl tag rm`
//! does. A registry with deletes disabled (`405 UNSUPPORTED`) gets a clear
//! error and keeps the tag.

use reqwest::Method;
use serde_json::json;

use super::RegistryStore;
use super::upload::upload_sha256_blob;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::oci::{
    EMPTY_TYPE, MANIFEST_TYPE, PLACEHOLDER_TYPE, UNTAGGED_KEY, check_tag, sha256_digest, v1_digest,
};
use crate::store::BundleStore;
use crate::store::local::LATEST;

impl RegistryStore {
    /// Points tag `name` at the manifest `reference` names: the same
    /// bytes PUT by the new tag. Returns the bundle's lockfile hash.
    pub(super) fn tag_manifest_copy(&self, reference: &str, name: &str) -> Result<Hash> {
        check_tag(name)?;
        let bundle = self.resolve(reference)?;
        let bytes = bundle
            .manifest
            .clone()
            .expect("a bundle of a registry keeps its manifest");
        self.put_manifest(name, bytes.clone(), &v1_digest(&Hash::of(&bytes)))?;
        self.remember(name, &bytes);
        Ok(bundle.lockfile_hash)
    }

    /// Removes tag `name` (never `latest`). Returns the lockfile hash it named.
    pub(super) fn remove_tag(&self, name: &str) -> Result<Hash> {
        check_tag(name)?;
        if name == LATEST {
            return Err(Error::Usage(
                "latest cannot be removed: every push moves it (tag another bundle as latest instead)"
                    .into(),
            ));
        }
        let bundle = self.resolve(name)?;
        match self.delete_manifest(name) {
            Err(Error::RegistryError {
                status: 400, code, ..
            }) if code == "DIGEST_INVALID" => self.untag_through_placeholder(name)?,
            Err(Error::RegistryError {
                status: 405, code, ..
            }) => {
                return Err(Error::Remote(format!(
                    "{} does not allow deleting ({code}): tag {name} stays (for the CNCF \
                     registry, set storage.delete.enabled)",
                    self.client.registry()
                )));
            }
            other => other?,
        }
        self.forget(name);
        Ok(bundle.lockfile_hash)
    }

    /// `DELETE …/manifests/<reference>`; a 404 means the ref is gone already.
    fn delete_manifest(&self, reference: &str) -> Result<()> {
        let client = self.client.clone();
        let url = client.url(&format!("manifests/{reference}"));
        let name = reference.to_string();
        self.client.run(async move {
            let answer = client.send(Method::DELETE, url, |r| r).await?;
            match answer.status().as_u16() {
                404 => Err(Error::RefMissing {
                    name,
                    store: client.describe(),
                    known: None,
                }),
                _ => Ok(()),
            }
        })
    }

    /// Points `name` at a placeholder manifest no other tag can name, then
    /// deletes that manifest by digest.
    fn untag_through_placeholder(&self, name: &str) -> Result<()> {
        let client = self.client.clone();
        let empty = self
            .client
            .run(async move { upload_sha256_blob(&client, b"{}".to_vec()).await })?;
        let unique = format!(
            "{name} {} {}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let placeholder = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": PLACEHOLDER_TYPE,
            "config": { "mediaType": EMPTY_TYPE, "digest": empty, "size": 2 },
            "layers": [],
            "annotations": { UNTAGGED_KEY: unique },
        })
        .to_string()
        .into_bytes();
        let digest = sha256_digest(&placeholder);
        self.put_manifest(name, placeholder, &digest)?;
        self.delete_manifest(&digest)
    }

    /// Drops what this machine remembers of tag `name`.
    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.refs_dir.join(name));
    }
}
