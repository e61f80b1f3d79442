//! zstd with one context per thread. Making a context costs more than
//! compressing a small chunk (it allocates the level's tables), and chunks
//! are compressed and decompressed one at a time by the thousand: the
//! packed layout's frames ([`registry::frames`](crate::registry::frames))
//! and the disk cache's copies at rest
//! ([`store::disk_cache`](crate::store::disk_cache)). Every frame declares
//! its content size (zstd's default), which readers check.

use std::cell::RefCell;
use std::io;

use zstd::bulk::{Compressor, Decompressor};

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `bytes` as one zstd frame at `level`, declaring its content size.
pub fn compress(bytes: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.as_mut() {
            Some(compressor) => compressor,
            None => slot.insert(Compressor::new(level)?),
        };
        compressor.set_compression_level(level)?;
        compressor.compress(bytes)
    })
}

/// Decompresses `frame` into at most `capacity` bytes (an error past it).
pub fn decompress(frame: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(decompressor) => decompressor,
            None => slot.insert(Decompressor::new()?),
        };
        decompressor.decompress(frame, capacity)
    })
}
