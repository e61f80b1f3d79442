//! Frames: how version 2 of the packed layout stores chunks in a pack.
//!
//! A pack is a run of frames. A frame holds one chunk, or several
//! neighbouring small chunks (in pack order, which is path order) up to
//! [`FRAME_TARGET`] bytes before compression, as one independent zstd frame,
//! or, when zstd does not make them smaller, stored as they are. Grouping
//! small chunks matters: on real source trees one zstd frame per 12 KiB file
//! is about 1.35× the bytes of the tree compressed as one stream, while
//! frames of up to 128 KiB come within 1.15× of it, and 256 KiB within
//! 1.09× (measured on 11,240 crate sources, 136 MB; `docs/FORMATS.md`). A cold read fetches its whole frame,
//! which also brings the files next to it in its directory.
//!
//! The pack index gives each frame's offset and stored length in its pack,
//! its length decoded and its codec, and each chunk's offset and length in
//! its frame. Decoding is bounded by the index: a frame that declares or
//! decodes to any other length is refused, so no frame can make the reader
//! allocate more than the index said (no decompression bombs). Chunk hashes
//! stay BLAKE3 of the uncompressed bytes and are checked after decoding, by
//! [`Verified`](crate::store::Verified), like any other chunk.

use std::borrow::Cow;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;

/// Neighbouring chunks share a frame up to this many uncompressed bytes; a
/// larger chunk gets a frame of its own.
pub const FRAME_TARGET: u64 = 256 << 10;
/// The zstd level a push uses unless told otherwise: measured on this
/// project's benchmark trees, level 9 comes within 1.15× of `zstd -3` over
/// the whole tree as one stream at about 45 MB/s a core, where level 3 is
/// 1.3× (and 190 MB/s). Decoding speed hardly depends on it.
pub const DEFAULT_LEVEL: i32 = 9;
/// The levels a push accepts.
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// Checks a zstd level a user gave: one of [`LEVELS`].
pub fn check_level(level: i32) -> std::result::Result<i32, String> {
    match LEVELS.contains(&level) {
        true => Ok(level),
        false => Err(format!(
            "{level} is not a zstd level from {} to {}",
            LEVELS.start(),
            LEVELS.end()
        )),
    }
}

/// How a frame's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Codec {
    /// As they are (zstd did not make them smaller, or a packed/1 pack).
    Stored,
    /// One zstd frame, declaring its content size.
    Zstd,
}

impl From<Codec> for u8 {
    fn from(codec: Codec) -> u8 {
        match codec {
            Codec::Stored => 0,
            Codec::Zstd => 1,
        }
    }
}

impl TryFrom<u8> for Codec {
    type Error = String;

    fn try_from(value: u8) -> std::result::Result<Codec, String> {
        match value {
            0 => Ok(Codec::Stored),
            1 => Ok(Codec::Zstd),
            other => Err(format!("unknown codec {other}")),
        }
    }
}

/// Where a frame is in its pack, and what it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Its first byte in the pack.
    pub offset: u64,
    /// Its bytes in the pack.
    pub stored_len: u64,
    /// Its bytes decoded: the sum of its chunks' lengths.
    pub raw_len: u64,
    pub codec: Codec,
}

impl Frame {
    /// A chunk stored as it is (every chunk of a packed/1 pack).
    pub fn stored(offset: u64, len: u64) -> Frame {
        Frame {
            offset,
            stored_len: len,
            raw_len: len,
            codec: Codec::Stored,
        }
    }

    /// The byte after its last one in the pack.
    pub fn end(&self) -> u64 {
        self.offset + self.stored_len
    }
}

/// Cuts chunks `(hash, length)`, in pack order, into frames: runs of
/// neighbours up to [`FRAME_TARGET`] bytes; a larger chunk alone.
pub fn group(chunks: &[(Hash, u64)]) -> Vec<Range<usize>> {
    let mut frames = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, (_, len)) in chunks.iter().enumerate() {
        if i > start && size + len > FRAME_TARGET {
            frames.push(start..i);
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < chunks.len() {
        frames.push(start..chunks.len());
    }
    frames
}

/// Encodes a frame's bytes: one zstd frame at `level` (declaring its
/// content size), or the bytes as they are when that is not smaller.
pub fn encode(raw: &[u8], level: i32) -> Result<(Codec, Vec<u8>)> {
    if raw.is_empty() {
        return Ok((Codec::Stored, Vec::new()));
    }
    let compressed = crate::compression::compress(raw, level)
        .map_err(|e| Error::io("compressing a frame", e))?;
    Ok(match compressed.len() < raw.len() {
        true => (Codec::Zstd, compressed),
        false => (Codec::Stored, raw.to_vec()),
    })
}

/// Decodes a frame's stored bytes (exactly `frame.stored_len` of them) to
/// exactly `frame.raw_len` bytes. A zstd frame that is not exactly one
/// frame, declares another content size or decodes to another length is
/// [`Error::BadFrame`], before more than `raw_len` bytes are allocated. A
/// stored frame is its bytes, borrowed.
pub fn decode<'a>(stored: &'a [u8], frame: &Frame, pack: &str) -> Result<Cow<'a, [u8]>> {
    let bad = |reason: String| Error::BadFrame {
        pack: pack.to_string(),
        offset: frame.offset,
        reason,
    };
    if stored.len() as u64 != frame.stored_len {
        return Err(bad(format!(
            "{} bytes where the index says {}",
            stored.len(),
            frame.stored_len
        )));
    }
    match frame.codec {
        Codec::Stored if frame.raw_len == frame.stored_len => Ok(Cow::Borrowed(stored)),
        Codec::Stored => Err(bad(format!(
            "stored as is, yet the index says {} bytes decoded",
            frame.raw_len
        ))),
        Codec::Zstd => {
            let whole = zstd::zstd_safe::find_frame_compressed_size(stored)
                .map_err(|code| bad(format!("not a zstd frame ({})", error_name(code))))?;
            if whole != stored.len() {
                return Err(bad(format!(
                    "a zstd frame of {whole} bytes where the index says {}",
                    stored.len()
                )));
            }
            match zstd::zstd_safe::get_frame_content_size(stored) {
                Ok(Some(declared)) if declared == frame.raw_len => {}
                Ok(Some(declared)) => {
                    return Err(bad(format!(
                        "declares {declared} bytes decoded, the index {}",
                        frame.raw_len
                    )));
                }
                _ => return Err(bad("declares no content size".into())),
            }
            let capacity = usize::try_from(frame.raw_len)
                .map_err(|_| bad(format!("{} bytes decoded is too large", frame.raw_len)))?;
            let raw = crate::compression::decompress(stored, capacity)
                .map_err(|e| bad(format!("does not decode: {e}")))?;
            if raw.len() != capacity {
                return Err(bad(format!(
                    "decodes to {} bytes, the index says {capacity}",
                    raw.len()
                )));
            }
            Ok(Cow::Owned(raw))
        }
    }
}

fn error_name(code: usize) -> &'static str {
    zstd::zstd_safe::get_error_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(stored: &[u8], raw_len: u64, codec: Codec) -> Frame {
        Frame {
            offset: 0,
            stored_len: stored.len() as u64,
            raw_len,
            codec,
        }
    }

    #[test]
    fn small_neighbours_share_a_frame_and_a_big_chunk_has_its_own() {
        let h = |i: u8| Hash::of(&[i]);
        let chunks = [
            (h(1), 200 << 10),
            (h(2), 40 << 10),
            (h(3), 40 << 10),
            (h(4), 1000 << 10),
            (h(5), 0),
            (h(6), 1),
        ];
        assert_eq!(group(&chunks), [0..2, 2..3, 3..4, 4..6]);
        assert!(group(&[]).is_empty());
    }

    #[test]
    fn text_compresses_and_round_trips_and_noise_is_stored() {
        let text = "fn main() { println!(\"hello\"); }\n"
            .repeat(200)
            .into_bytes();
        let (codec, stored) = encode(&text, DEFAULT_LEVEL).unwrap();
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() * 10 < text.len());
        let frame = frame_of(&stored, text.len() as u64, codec);
        assert_eq!(decode(&stored, &frame, "p").unwrap(), text);

        let mut noise = vec![0; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (codec, stored) = encode(&noise, DEFAULT_LEVEL).unwrap();
        assert_eq!((codec, &stored), (Codec::Stored, &noise));
        assert_eq!(encode(b"", 3).unwrap(), (Codec::Stored, Vec::new()));
    }

    #[test]
    fn a_frame_that_lies_about_its_size_is_refused_before_it_is_decoded() {
        let text = "abc".repeat(10_000).into_bytes();
        let (_, stored) = encode(&text, 3).unwrap();
        let refused = |stored: &[u8], frame: Frame, needle: &str| {
            let err = decode(stored, &frame, "sha256:p").unwrap_err();
            assert!(matches!(err, Error::BadFrame { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        };
        let len = text.len() as u64;
        // A bomb: the index promises little, the frame declares much.
        refused(
            &stored,
            frame_of(&stored, 10, Codec::Zstd),
            "declares 30000",
        );
        refused(&stored, frame_of(&stored, len + 1, Codec::Zstd), "declares");
        refused(
            &stored[..stored.len() - 1],
            frame_of(&stored, len, Codec::Zstd),
            "bytes where",
        );
        let mut twice = stored.clone();
        twice.extend_from_slice(&stored);
        refused(
            &twice,
            frame_of(&twice, len, Codec::Zstd),
            "a zstd frame of",
        );
        refused(
            b"not zstd",
            frame_of(b"not zstd", 8, Codec::Zstd),
            "not a zstd frame",
        );
        refused(
            &text,
            frame_of(&text, len + 1, Codec::Stored),
            "stored as is",
        );
        // No content size declared: refused, whatever it would decode to.
        let mut bare = zstd::bulk::Compressor::new(3).unwrap();
        bare.include_contentsize(false).unwrap();
        let bare = bare.compress(&text).unwrap();
        refused(&bare, frame_of(&bare, len, Codec::Zstd), "no content size");
    }
}
