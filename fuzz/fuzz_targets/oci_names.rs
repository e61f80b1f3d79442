//! The small wire strings a registry answer or request carries: digests
//! (what `serve` parses from a request path or `?digest=`), repository
//! names, tags and pack-index media types. Each is accepted or refused
//! without panicking; an accepted digest is canonical (it prints back as
//! the text it came from) and names the same bytes as the lenient reader.
#![no_main]

use mache_cachefs::oci::{self, Digest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(digest.to_string(), text, "a parsed digest is not canonical");
        let hash = oci::hash_of_digest(text).expect("a canonical digest reads leniently");
        assert_eq!(hash, digest.as_blake3());
    }
    if oci::is_repository_name(text) {
        assert!(text.len() <= oci::MAX_REPOSITORY_NAME);
        assert!(text.split('/').all(oci::is_name_component));
    }
    let _ = oci::check_tag(text);
    let _ = oci::index_version(text);
    let _ = mache_cachefs::Hash::from_prefixed(text);
});
