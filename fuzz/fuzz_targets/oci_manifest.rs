//! OCI manifests and descriptors: any bytes parse or are refused; an
//! accepted manifest writes back to bytes that parse to the same manifest
//! (and write the same bytes again), and every accessor a pull uses on it
//! answers without panicking.
#![no_main]

use mache_cachefs::oci::{self, Descriptor, Digest, Manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(descriptor) = serde_json::from_slice::<Descriptor>(data) {
        let _ = oci::index_version(&descriptor.media_type);
        let _ = Digest::parse(&descriptor.digest);
    }
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let bytes = manifest.to_bytes();
    let again = Manifest::parse(&bytes).expect("a written manifest parses");
    assert_eq!(again, manifest, "manifest write→parse changed it");
    assert_eq!(again.to_bytes(), bytes, "manifest bytes are not canonical");

    let (packs, index) = manifest.packs();
    assert_eq!(index.is_some(), manifest.is_packed());
    assert!(packs.len() < manifest.layers.len().max(1));
    for digest in manifest.digests() {
        if let Ok(parsed) = Digest::parse(digest) {
            assert_eq!(oci::hash_of_digest(digest).ok(), Some(parsed.as_blake3()));
        }
    }
    let _ = manifest.sizes_blob();
    let _ = manifest.config_is_lockfile();
    let (lockfile, _) = mache_cachefs_fuzz::pack_lockfile();
    let _ = manifest.check_layers(&lockfile);
});
