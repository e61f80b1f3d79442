//! The OCI image manifest as build-cache/v1 uses it (SPEC §6): the model
//! read from a pushed manifest, and the manifest synthesized for a bundle
//! pushed locally, serialized exactly as the conformance vector
//! `manifest.json` is (key order, two-space indentation, one trailing
//! newline).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use crate::hash::Hash;
use crate::store::Bundle;

/// The only manifest media type accepted and served.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of a build-cache/v1 bundle: the binary lockfile.
pub const CONFIG_TYPE: &str = "application/vnd.cloister.build-cache.v1.config+json";
/// The media type of each chunk layer.
pub const CHUNK_TYPE: &str = "application/vnd.cloister.build-cache.v1.chunk";
/// Our top-level annotation naming the sizes index blob (our namespace;
/// `org.cloister.build-cache.*` is reserved).
pub const SIZES_ANNOTATION: &str = "dev.mache-cachefs.sizes";

const PATH_ANNOTATION: &str = "org.cloister.build-cache.path";
const KIND_ANNOTATION: &str = "org.cloister.build-cache.kind";
const PRODUCER_ANNOTATION: &str = "org.cloister.build-cache.producer";
const PRODUCER_VERSION_ANNOTATION: &str = "org.cloister.build-cache.producer_version";
const SCHEMA_VERSION_ANNOTATION: &str = "org.cloister.build-cache.schema_version";

/// An image manifest. Field order is the serialized key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    /// Optional on input (the `Content-Type` may carry it instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to a blob.
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
    fn new(media_type: &str, hash: &Hash, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of_hash(hash).to_string(),
            size,
            annotations: BTreeMap::new(),
        }
    }
}

/// The build-cache/v1 manifest of a bundle: the lockfile as config, one
/// layer per source in lockfile order (`chunk_lens[i]` is source `i`'s
/// chunk length) and, when `sizes` names the stored sizes index, our
/// annotation pointing at it.
pub fn synthesize(bundle: &Bundle, chunk_lens: &[u64], sizes: Option<&Hash>) -> Vec<u8> {
    let meta = &bundle.lockfile.meta;
    let layers = bundle
        .lockfile
        .sources
        .iter()
        .zip(chunk_lens)
        .map(|(source, len)| {
            let mut layer = Descriptor::new(CHUNK_TYPE, &source.chunk_hash, *len);
            layer.annotations = BTreeMap::from([
                (PATH_ANNOTATION.to_string(), source.path.clone()),
                (KIND_ANNOTATION.to_string(), source.kind.clone()),
            ]);
            layer
        })
        .collect();
    let mut annotations = BTreeMap::from([
        (PRODUCER_ANNOTATION.to_string(), meta.producer.clone()),
        (
            PRODUCER_VERSION_ANNOTATION.to_string(),
            meta.producer_version.clone(),
        ),
        (
            SCHEMA_VERSION_ANNOTATION.to_string(),
            meta.schema_version.clone(),
        ),
    ]);
    if let Some(sizes) = sizes {
        annotations.insert(
            SIZES_ANNOTATION.to_string(),
            Digest::of_hash(sizes).to_string(),
        );
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_TYPE.to_string()),
        config: Descriptor::new(
            CONFIG_TYPE,
            &bundle.lockfile_hash,
            bundle.lockfile_bytes.len() as u64,
        ),
        layers,
        annotations,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::lockfile::binary;

    fn vector(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-cache-v1");
        std::fs::read(dir.join(name)).unwrap()
    }

    fn vector_bundle() -> Bundle {
        let lockfile_bytes = vector("lockfile-config.bin");
        let lockfile = binary::decode_supported(&lockfile_bytes).unwrap();
        Bundle::new(Hash::of(&lockfile_bytes), lockfile_bytes, lockfile, None)
    }

    #[test]
    fn the_vector_lockfile_synthesizes_the_vector_manifest_byte_for_byte() {
        let bundle = vector_bundle();
        let lens = [
            vector("chunk-001.bin").len() as u64,
            vector("chunk-002.bin").len() as u64,
        ];
        let synthesized = synthesize(&bundle, &lens, None);
        assert_eq!(
            String::from_utf8(synthesized).unwrap(),
            String::from_utf8(vector("manifest.json")).unwrap()
        );
    }

    #[test]
    fn the_sizes_annotation_is_added_only_when_known_and_the_vector_parses_back() {
        let bundle = vector_bundle();
        let sizes = Hash::of(b"sizes");
        let with = synthesize(&bundle, &[1, 2], Some(&sizes));
        let parsed: Manifest = serde_json::from_slice(&with).unwrap();
        assert_eq!(
            parsed.annotations[SIZES_ANNOTATION],
            Digest::of_hash(&sizes).to_string()
        );
        let vector: Manifest = serde_json::from_slice(&vector("manifest.json")).unwrap();
        assert!(!vector.annotations.contains_key(SIZES_ANNOTATION));
        assert_eq!(vector.layers.len(), 2);
        assert_eq!(vector.config.media_type, CONFIG_TYPE);
    }
}
