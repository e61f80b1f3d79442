//! A pack frame's decode: stored bytes either decode to exactly the length
//! the index claims or are refused, without allocating more than that.
//!
//! Input: a codec byte, the claimed decoded length (3 bytes, little
//! endian), then the stored bytes.
#![no_main]

use std::borrow::Cow;

use mache_cachefs::registry::frames::{self, Codec, Frame};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [codec, a, b, c, stored @ ..] = data else {
        return;
    };
    let codec = if codec & 1 == 0 {
        Codec::Stored
    } else {
        Codec::Zstd
    };
    let frame = Frame {
        offset: 0,
        stored_len: stored.len() as u64,
        raw_len: u64::from(u32::from_le_bytes([*a, *b, *c, 0])),
        codec,
    };
    if let Ok(raw) = frames::decode(stored, &frame, "sha256:fuzz") {
        assert_eq!(raw.len() as u64, frame.raw_len, "decoded to another length");
        if codec == Codec::Stored {
            assert!(matches!(raw, Cow::Borrowed(_)) && *raw == *stored);
        }
    }
});
