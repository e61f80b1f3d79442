//! What `serve` parses from a request before a handler runs: a `Range`
//! header against a blob, a `PATCH`'s `Content-Range` against the upload
//! so far, the token file and an `Authorization` header. None panics; a
//! range served lies inside the blob; a `Content-Range` continues an upload
//! only from its own offset; a read-only token never writes.
#![no_main]

use mache_cachefs::serve::fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(8));
    let mut word = [0u8; 8];
    word[..head.len()].copy_from_slice(head);
    let number = u64::from_le_bytes(word);
    if let Ok(text) = std::str::from_utf8(rest) {
        let len = number % (1 << 40);
        if let Some((first, last)) = fuzzing::range(text, len) {
            assert!(
                first <= last && last < len,
                "{text:?} gave {first}-{last} of {len}"
            );
        }
        let _ = fuzzing::token_file(text);
    }
    if fuzzing::continues_upload(rest, number) == Some(true) {
        let other = number.wrapping_add(1);
        assert_ne!(
            fuzzing::continues_upload(rest, other),
            Some(true),
            "{rest:?}"
        );
    }
    // With only read-only tokens, nothing writes, whatever the header.
    let both = "read-only ro-token\nread-write rw-token\n";
    let read_only = "read-only ro-token\nread-only rw-token\n";
    let _ = fuzzing::authorizes(both, rest, true);
    assert_ne!(
        fuzzing::authorizes(read_only, rest, true),
        Some(true),
        "{rest:?} wrote"
    );
    if fuzzing::authorizes(both, rest, false) == Some(false) {
        assert_ne!(
            fuzzing::authorizes(both, rest, true),
            Some(true),
            "{rest:?}"
        );
    }
});
