//! The pack index of both packed layouts (packed/1: plain JSON; packed/2:
//! zstd-compressed JSON), checked against a fixed manifest and lockfile:
//! a lying index is an error, never a panic, and an accepted one locates
//! every chunk inside its frame and every frame inside its pack.
//!
//! Input: see [`mache_cachefs_fuzz::check_pack_index`].
#![no_main]

use mache_cachefs::registry::frames::Codec;
use mache_cachefs_fuzz::{check_pack_index, pack_lockfile, packs};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(Ok(packed)) = check_pack_index(data) else {
        return;
    };
    let (lockfile, _) = pack_lockfile();
    let packs = packs();
    for source in &lockfile.sources {
        let at = &packed.locations[&source.chunk_hash];
        assert!(packs.contains(&(at.pack.clone(), at.pack_size)), "{at:?}");
        let frame = at.frame;
        assert!(
            frame
                .offset
                .checked_add(frame.stored_len)
                .is_some_and(|e| e <= at.pack_size)
        );
        assert!(
            at.offset
                .checked_add(at.len)
                .is_some_and(|e| e <= frame.raw_len)
        );
        assert!(frame.codec == Codec::Zstd || frame.raw_len == frame.stored_len);
    }
});
