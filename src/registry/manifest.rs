//! The build-cache/v1 manifest (SPEC §6): an OCI image manifest whose config
//! is the binary lockfile and whose layers are the chunks, one per lockfile
//! source in lockfile order. Built for push, parsed and checked on pull.
//!
//! Keys are written in the order of the conformance vector (annotations
//! sorted, as Go writes maps), pretty-printed with a trailing newline.
//! Our own additions live under the `dev.mache-cachefs.` annotation prefix:
//! `dev.mache-cachefs.sizes` names the sizes-index blob, so a mount can
//! `stat` every file without fetching a chunk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::packed;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::Lockfile;

/// The OCI image manifest media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config (binary lockfile) media type of build-cache/v1.
pub const CONFIG_TYPE: &str = "application/vnd.cloister.build-cache.v1.config+json";
/// The chunk layer media type of build-cache/v1.
pub const CHUNK_TYPE: &str = "application/vnd.cloister.build-cache.v1.chunk";
/// Layer annotations.
pub const PATH_KEY: &str = "org.cloister.build-cache.path";
pub const KIND_KEY: &str = "org.cloister.build-cache.kind";
/// Our annotation naming the sizes-index blob.
pub const SIZES_KEY: &str = "dev.mache-cachefs.sizes";
/// Our annotation naming a packed bundle's layout.
pub const LAYOUT_KEY: &str = "dev.mache-cachefs.layout";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest, as this transport uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A build-cache/v1 digest: BLAKE3 hex behind `sha256:` (SPEC §6).
pub fn v1_digest(hash: &Hash) -> String {
    format!("sha256:{}", hash.to_hex())
}

/// The BLAKE3 hash a build-cache/v1 digest carries.
pub fn hash_of_digest(digest: &str) -> Result<Hash> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::BadManifest(format!("digest {digest:?} is not sha256:<hex>")))?;
    Hash::from_hex(hex)
        .map_err(|_| Error::BadManifest(format!("digest {digest:?} is not sha256:<64 hex>")))
}

impl Manifest {
    /// The manifest of a bundle: `chunk_lens[i]` is the length of source
    /// `i`'s chunk; `sizes` the sizes-index blob, if uploaded beside it.
    pub fn for_bundle(
        lockfile: &Lockfile,
        lockfile_bytes: &[u8],
        chunk_lens: &[u64],
        sizes: Option<(&Hash, u64)>,
    ) -> Manifest {
        let layers = lockfile
            .sources
            .iter()
            .zip(chunk_lens)
            .map(|(source, &size)| Descriptor {
                media_type: CHUNK_TYPE.to_string(),
                digest: v1_digest(&source.chunk_hash),
                size,
                annotations: BTreeMap::from([
                    (KIND_KEY.to_string(), source.kind.clone()),
                    (PATH_KEY.to_string(), source.path.clone()),
                ]),
            })
            .collect();
        let meta = &lockfile.meta;
        let mut annotations = BTreeMap::from([
            (
                "org.cloister.build-cache.producer".to_string(),
                meta.producer.clone(),
            ),
            (
                "org.cloister.build-cache.producer_version".to_string(),
                meta.producer_version.clone(),
            ),
            (
                "org.cloister.build-cache.schema_version".to_string(),
                meta.schema_version.clone(),
            ),
        ]);
        if let Some((hash, _)) = sizes {
            annotations.insert(SIZES_KEY.to_string(), v1_digest(hash));
        }
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_TYPE.to_string(),
            config: Descriptor {
                media_type: CONFIG_TYPE.to_string(),
                digest: v1_digest(&Hash::of(lockfile_bytes)),
                size: lockfile_bytes.len() as u64,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations,
        }
    }

    /// The bytes pushed: pretty JSON and a newline, as the vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a manifest and checks that it is a build-cache/v1 bundle.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::BadManifest(format!("not an OCI manifest: {e}")))?;
        if manifest.schema_version != 2
            || !(manifest.media_type.is_empty() || manifest.media_type == MANIFEST_TYPE)
        {
            return Err(Error::BadManifest(format!(
                "not an OCI image manifest (schemaVersion {}, mediaType {:?})",
                manifest.schema_version, manifest.media_type
            )));
        }
        match manifest.config.media_type.as_str() {
            CONFIG_TYPE => {
                if let Some(layer) = manifest.layers.iter().find(|l| l.media_type != CHUNK_TYPE) {
                    return Err(Error::BadManifest(format!(
                        "layer {} has media type {:?}, not {CHUNK_TYPE}",
                        layer.digest, layer.media_type
                    )));
                }
            }
            packed::CONFIG_TYPE => manifest.check_packed_layers()?,
            other => {
                return Err(Error::BadManifest(format!(
                    "not a mache bundle: its config is {other:?}, not {CONFIG_TYPE} or {}",
                    packed::CONFIG_TYPE
                )));
            }
        }
        Ok(manifest)
    }

    /// A packed bundle's layers: packs (of either version), then the pack
    /// index, whose media type gives the layout's version (a later one
    /// than this build reads is [`Error::NewerLayout`]).
    fn check_packed_layers(&self) -> Result<()> {
        let (index, packs) = self
            .layers
            .split_last()
            .ok_or_else(|| Error::BadManifest("a packed bundle without its pack index".into()))?;
        if packed::index_version(&index.media_type)?.is_none() {
            return Err(Error::BadManifest(format!(
                "the last layer is {:?}, not the pack index ({})",
                index.media_type,
                packed::INDEX_TYPE
            )));
        }
        let pack_types = [packed::PACK_TYPE, packed::PACK_TYPE_V1];
        match packs
            .iter()
            .find(|l| !pack_types.contains(&l.media_type.as_str()))
        {
            Some(layer) => Err(Error::BadManifest(format!(
                "layer {} has media type {:?}, not {}",
                layer.digest,
                layer.media_type,
                packed::PACK_TYPE
            ))),
            None => Ok(()),
        }
    }

    /// Whether this is a packed bundle (else build-cache/v1).
    pub fn is_packed(&self) -> bool {
        self.config.media_type == packed::CONFIG_TYPE
    }

    /// A packed bundle's packs (`digest`, size) and its index layer.
    pub fn packs(&self) -> (Vec<(String, u64)>, Option<&Descriptor>) {
        match self.layers.split_last() {
            Some((index, packs)) if self.is_packed() => (
                packs.iter().map(|l| (l.digest.clone(), l.size)).collect(),
                Some(index),
            ),
            _ => (Vec::new(), None),
        }
    }

    /// The manifest of a packed bundle: the lockfile as config, the packs,
    /// then the pack index, all by true SHA-256.
    pub fn for_packed(
        lockfile: &Lockfile,
        lockfile_bytes: &[u8],
        packs: &[(String, u64)],
        index: (String, u64),
    ) -> Manifest {
        let layer = |media_type: &str, (digest, size): (String, u64)| Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        };
        let mut layers: Vec<Descriptor> = packs
            .iter()
            .map(|(digest, size)| layer(packed::PACK_TYPE, (digest.clone(), *size)))
            .collect();
        layers.push(layer(packed::INDEX_TYPE, index));
        let mut manifest = Manifest::for_bundle(lockfile, lockfile_bytes, &[], None);
        manifest.config = layer(
            packed::CONFIG_TYPE,
            (
                super::sha256_digest(lockfile_bytes),
                lockfile_bytes.len() as u64,
            ),
        );
        manifest.layers = layers;
        manifest
            .annotations
            .insert(LAYOUT_KEY.to_string(), super::LAYOUT_PACKED.to_string());
        manifest
    }

    /// Checks that the layers are the lockfile's chunks, in order.
    pub fn check_layers(&self, lockfile: &Lockfile) -> Result<()> {
        if self.layers.len() != lockfile.sources.len() {
            return Err(Error::BadManifest(format!(
                "{} layers for {} lockfile sources",
                self.layers.len(),
                lockfile.sources.len()
            )));
        }
        for (i, (layer, source)) in self.layers.iter().zip(&lockfile.sources).enumerate() {
            if hash_of_digest(&layer.digest)? != source.chunk_hash {
                return Err(Error::BadManifest(format!(
                    "layer {i} is {}, the lockfile's source {:?} has chunk {}",
                    layer.digest, source.path, source.chunk_hash
                )));
            }
        }
        Ok(())
    }

    /// The sizes-index blob our push names, if any.
    pub fn sizes_blob(&self) -> Option<Result<Hash>> {
        self.annotations.get(SIZES_KEY).map(|d| hash_of_digest(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/build-cache-v1/"
    );

    #[test]
    fn the_vector_manifest_is_rebuilt_byte_for_byte_from_its_lockfile() {
        let manifest_bytes = std::fs::read(format!("{VECTOR}manifest.json")).unwrap();
        let lockfile_bytes = std::fs::read(format!("{VECTOR}lockfile-config.bin")).unwrap();
        let lockfile = crate::lockfile::binary::decode(&lockfile_bytes).unwrap();
        let parsed = Manifest::parse(&manifest_bytes).unwrap();
        parsed.check_layers(&lockfile).unwrap();
        let lens: Vec<u64> = parsed.layers.iter().map(|l| l.size).collect();
        let built = Manifest::for_bundle(&lockfile, &lockfile_bytes, &lens, None);
        assert_eq!(built.to_bytes(), manifest_bytes);
    }

    #[test]
    fn other_artifacts_and_mismatched_layers_are_refused() {
        let manifest_bytes = std::fs::read(format!("{VECTOR}manifest.json")).unwrap();
        let text = String::from_utf8(manifest_bytes).unwrap();
        let image = text.replace(CONFIG_TYPE, "application/vnd.oci.image.config.v1+json");
        let err = Manifest::parse(image.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("not a mache bundle"), "{err}");
        let mut swapped = Manifest::parse(text.as_bytes()).unwrap();
        swapped.layers.swap(0, 1);
        let lockfile_bytes = std::fs::read(format!("{VECTOR}lockfile-config.bin")).unwrap();
        let lockfile = crate::lockfile::binary::decode(&lockfile_bytes).unwrap();
        let err = swapped.check_layers(&lockfile).unwrap_err().to_string();
        assert!(err.contains("layer 0"), "{err}");
    }
}
