//! The OCI image manifest of a bundle, in either layout: built for a push
//! (and for `serve`'s synthesized manifests), parsed and checked on a pull,
//! read back by the store for what a served tag reaches.
//!
//! - build-cache/v1 (SPEC §6): the binary lockfile as config, one chunk
//!   layer per lockfile source in lockfile order, digests by BLAKE3;
//! - packed: the lockfile as config, the packs, then the pack index, all by
//!   true SHA-256 (`crate::registry::packed` owns what a pack index says).
//!
//! Keys are written in the order of the conformance vector (annotations
//! sorted, as Go writes maps), pretty-printed with two-space indentation
//! and one trailing newline ([`Manifest::to_bytes`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::{hash_of_digest, sha256_digest, v1_digest};
use super::{
    CHUNK_TYPE, CONFIG_TYPE, INDEX_TYPE, KIND_KEY, LAYOUT_KEY, LAYOUT_PACKED, MANIFEST_TYPE,
    PACK_TYPE, PACK_TYPE_V1, PACKED_CONFIG_TYPE, PATH_KEY, PRODUCER_KEY, PRODUCER_VERSION_KEY,
    SCHEMA_VERSION_KEY, SIZES_KEY,
};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::Lockfile;

/// An OCI content descriptor: a reference to a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor without annotations.
    pub fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest. Field order is the serialized key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    /// Optional on input (a `Content-Type` may carry it instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The build-cache/v1 manifest of a bundle: `chunk_lens[i]` is the
    /// length of source `i`'s chunk; `sizes` the sizes-index blob, if
    /// stored beside it, which our annotation then names.
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
                annotations: BTreeMap::from([
                    (KIND_KEY.to_string(), source.kind.clone()),
                    (PATH_KEY.to_string(), source.path.clone()),
                ]),
                ..Descriptor::new(CHUNK_TYPE, v1_digest(&source.chunk_hash), size)
            })
            .collect();
        let meta = &lockfile.meta;
        let mut annotations = BTreeMap::from([
            (PRODUCER_KEY.to_string(), meta.producer.clone()),
            (
                PRODUCER_VERSION_KEY.to_string(),
                meta.producer_version.clone(),
            ),
            (SCHEMA_VERSION_KEY.to_string(), meta.schema_version.clone()),
        ]);
        if let Some((hash, _)) = sizes {
            annotations.insert(SIZES_KEY.to_string(), v1_digest(hash));
        }
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_TYPE.to_string()),
            config: Descriptor::new(
                CONFIG_TYPE,
                v1_digest(&Hash::of(lockfile_bytes)),
                lockfile_bytes.len() as u64,
            ),
            layers,
            annotations,
        }
    }

    /// The manifest of a packed bundle: the lockfile as config, the packs
    /// (`digest`, size), then the pack index, all by true SHA-256.
    pub fn for_packed(
        lockfile: &Lockfile,
        lockfile_bytes: &[u8],
        packs: &[(String, u64)],
        index: (String, u64),
    ) -> Manifest {
        let mut layers: Vec<Descriptor> = packs
            .iter()
            .map(|(digest, size)| Descriptor::new(PACK_TYPE, digest.clone(), *size))
            .collect();
        layers.push(Descriptor::new(INDEX_TYPE, index.0, index.1));
        let mut manifest = Manifest::for_bundle(lockfile, lockfile_bytes, &[], None);
        manifest.config = Descriptor::new(
            PACKED_CONFIG_TYPE,
            sha256_digest(lockfile_bytes),
            lockfile_bytes.len() as u64,
        );
        manifest.layers = layers;
        manifest
            .annotations
            .insert(LAYOUT_KEY.to_string(), LAYOUT_PACKED.to_string());
        manifest
    }

    /// The bytes pushed and served: pretty JSON and a newline, as the vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a manifest and checks that it is a bundle of ours, in either
    /// layout: its config type, and its layers' types (a packed bundle's
    /// last layer is its pack index).
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::BadManifest(format!("not an OCI manifest: {e}")))?;
        let media_type = manifest.media_type.as_deref().unwrap_or_default();
        if manifest.schema_version != 2 || !(media_type.is_empty() || media_type == MANIFEST_TYPE) {
            return Err(Error::BadManifest(format!(
                "not an OCI image manifest (schemaVersion {}, mediaType {media_type:?})",
                manifest.schema_version
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
            PACKED_CONFIG_TYPE => manifest.check_packed_layers()?,
            other => {
                return Err(Error::BadManifest(format!(
                    "not a mache bundle: its config is {other:?}, not {CONFIG_TYPE} or \
                     {PACKED_CONFIG_TYPE}"
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
        if super::index_version(&index.media_type)?.is_none() {
            return Err(Error::BadManifest(format!(
                "the last layer is {:?}, not the pack index ({INDEX_TYPE})",
                index.media_type
            )));
        }
        let pack_types = [PACK_TYPE, PACK_TYPE_V1];
        match packs
            .iter()
            .find(|l| !pack_types.contains(&l.media_type.as_str()))
        {
            Some(layer) => Err(Error::BadManifest(format!(
                "layer {} has media type {:?}, not {PACK_TYPE}",
                layer.digest, layer.media_type
            ))),
            None => Ok(()),
        }
    }

    /// Whether this is a packed bundle (else build-cache/v1).
    pub fn is_packed(&self) -> bool {
        self.config.media_type == PACKED_CONFIG_TYPE
    }

    /// Whether the config is a lockfile: build-cache/v1's, or the packed
    /// layout's (the same bytes, named by SHA-256).
    pub fn config_is_lockfile(&self) -> bool {
        [CONFIG_TYPE, PACKED_CONFIG_TYPE].contains(&self.config.media_type.as_str())
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

    /// The sizes-index blob our annotation names, if any.
    pub fn sizes_blob(&self) -> Option<Result<Hash>> {
        self.annotations.get(SIZES_KEY).map(|d| hash_of_digest(d))
    }

    /// Every digest named: config, layers, our sizes annotation.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .map(|d| d.digest.as_str())
            .chain(self.annotations.get(SIZES_KEY).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/build-cache-v1/"
    );

    fn vector(name: &str) -> Vec<u8> {
        std::fs::read(format!("{VECTOR}{name}")).unwrap()
    }

    fn vector_lockfile() -> (Vec<u8>, Lockfile) {
        let bytes = vector("lockfile-config.bin");
        let lockfile = crate::lockfile::binary::decode(&bytes).unwrap();
        (bytes, lockfile)
    }

    #[test]
    fn the_vector_manifest_is_rebuilt_byte_for_byte_from_its_lockfile() {
        let manifest_bytes = vector("manifest.json");
        let (lockfile_bytes, lockfile) = vector_lockfile();
        let parsed = Manifest::parse(&manifest_bytes).unwrap();
        parsed.check_layers(&lockfile).unwrap();
        let lens: Vec<u64> = parsed.layers.iter().map(|l| l.size).collect();
        let built = Manifest::for_bundle(&lockfile, &lockfile_bytes, &lens, None);
        assert_eq!(built.to_bytes(), manifest_bytes);
    }

    #[test]
    fn other_artifacts_and_mismatched_layers_are_refused() {
        let text = String::from_utf8(vector("manifest.json")).unwrap();
        let image = text.replace(CONFIG_TYPE, "application/vnd.oci.image.config.v1+json");
        let err = Manifest::parse(image.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("not a mache bundle"), "{err}");
        let mut swapped = Manifest::parse(text.as_bytes()).unwrap();
        swapped.layers.swap(0, 1);
        let (_, lockfile) = vector_lockfile();
        let err = swapped.check_layers(&lockfile).unwrap_err().to_string();
        assert!(err.contains("layer 0"), "{err}");
    }

    #[test]
    fn the_sizes_annotation_is_added_only_when_known() {
        let (lockfile_bytes, lockfile) = vector_lockfile();
        let sizes = Hash::of(b"sizes");
        let with = Manifest::for_bundle(&lockfile, &lockfile_bytes, &[1, 2], Some((&sizes, 5)));
        let parsed: Manifest = serde_json::from_slice(&with.to_bytes()).unwrap();
        assert_eq!(parsed.annotations[SIZES_KEY], v1_digest(&sizes));
        assert_eq!(parsed.sizes_blob().unwrap().unwrap(), sizes);
        let vector = Manifest::parse(&vector("manifest.json")).unwrap();
        assert!(vector.sizes_blob().is_none());
        assert_eq!(vector.layers.len(), 2);
        assert!(vector.config_is_lockfile() && !vector.is_packed());
    }

    #[test]
    fn a_manifest_names_its_config_layers_and_sizes_index() {
        let named: Manifest = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": CONFIG_TYPE, "digest": "sha256:c", "size": 1},
            "layers": [{"mediaType": "x", "digest": "sha256:l", "size": 1}],
            "annotations": {SIZES_KEY: "sha256:s", "other": "sha256:o"},
        }))
        .unwrap();
        assert!(named.config_is_lockfile());
        assert_eq!(
            named.digests().collect::<Vec<_>>(),
            ["sha256:c", "sha256:l", "sha256:s"]
        );
        let empty: Manifest = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": super::super::EMPTY_TYPE, "digest": "sha256:e", "size": 2},
        }))
        .unwrap();
        assert!(!empty.config_is_lockfile());
    }
}
