//! The packed layout, for standard registries: true SHA-256 digests on the
//! wire, and chunks in **packs** instead of one layer per source.
//!
//! Registries that check digests as SHA-256 (the CNCF distribution registry,
//! GHCR, ECR) refuse build-cache/v1's BLAKE3-behind-`sha256:` digests, and
//! cap manifests at about 4 MiB, which one layer per source passes at about
//! 13,000 sources. So a packed bundle is:
//!
//! - **packs**: blobs of concatenated chunks (each distinct chunk once, in
//!   lockfile order of first use), up to [`PACK_TARGET`] bytes each (a chunk
//!   larger than that gets a pack of its own). 32 MiB keeps a manifest of
//!   100,000 sources at a few dozen layers, and bounds what a registry that
//!   ignores `Range` makes a cold read download (the whole pack, once);
//! - a **pack index** blob (JSON, [`INDEX_FORMAT`]): the packs in order, and
//!   for each distinct chunk its BLAKE3, pack, offset and length; and the
//!   sizes index, so a mount can `stat` every file without a chunk;
//! - the binary lockfile as the **config** blob.
//!
//! The manifest lists the packs, then the index, as layers. A lazy read is
//! an HTTP `Range` GET of a chunk's bytes from its pack, BLAKE3-checked
//! against the lockfile before anything is cached or served. A re-push
//! reuses the packs of the bundle the tag named (and of each `--base`)
//! that still hold needed chunks, and packs only the new chunks: an
//! unchanged re-push uploads nothing, a small change uploads a small pack.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use rayon::prelude::*;

use super::frames::{self, Codec, Frame};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::Lockfile;
use crate::store::ChunkSource;
use crate::store::sizes::SizeIndex;

/// Packs are cut at this many bytes before compression.
pub const PACK_TARGET: u64 = 32 << 20;
/// The pack index's format tag, version 1 (chunks stored as they are).
pub const INDEX_FORMAT_V1: &str = "mache-cachefs.packindex/1";
/// The pack index's format tag, version 2 (frames).
pub const INDEX_FORMAT: &str = "mache-cachefs.packindex/2";
/// A frame decoding to more than this is refused, whatever the index says.
const MAX_FRAME: u64 = super::MAX_BLOB;

/// Where a chunk is: the frame holding it (in which pack, of what size)
/// and its place in the frame's decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: String,
    pub pack_size: u64,
    pub frame: Frame,
    /// Its first byte in the frame, decoded.
    pub offset: u64,
    pub len: u64,
}

/// The pack index as stored (version 2), as zstd-compressed JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackIndex {
    pub format: String,
    /// `blake3:<lockfile hash>`.
    pub lockfile: String,
    /// Pack digests (`sha256:…`), in the manifest's layer order.
    pub packs: Vec<String>,
    /// `[pack number, offset, stored length, decoded length, codec]` per
    /// frame (codec 0: stored as is, 1: zstd).
    pub frames: Vec<(usize, u64, u64, u64, Codec)>,
    /// `[frame number, offset in the decoded frame, length]` per distinct
    /// chunk, in [`chunk_order`] (the lockfile names the hashes).
    pub chunks: Vec<(usize, u64, u64)>,
    /// The sizes index (`lockfiles/<hash>.sizes.json`), if the push had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<serde_json::Value>,
}

/// The pack index of packed/1, as plain JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackIndexV1 {
    pub format: String,
    pub lockfile: String,
    pub packs: Vec<String>,
    /// `[blake3 hex, pack number, offset, length]` per distinct chunk.
    pub chunks: Vec<(String, usize, u64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<serde_json::Value>,
}

/// What both versions of the index share, read before the rest.
#[derive(Deserialize)]
struct Header {
    format: String,
    lockfile: String,
    packs: Vec<String>,
    #[serde(default)]
    sizes: Option<serde_json::Value>,
}

/// The largest pack index read, decompressed.
const MAX_INDEX: u64 = super::MAX_METADATA;

/// A pack index checked against its manifest and lockfile.
#[derive(Debug, Clone)]
pub struct Packed {
    pub locations: HashMap<Hash, Location>,
    pub sizes: Option<SizeIndex>,
    /// The layout the index is of (`packed/1` or `packed/2`).
    pub layout: &'static str,
}

impl PackIndex {
    /// The stored form: the JSON, zstd-compressed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a pack index serializes");
        zstd::bulk::compress(&json, frames::DEFAULT_LEVEL).expect("zstd compresses in memory")
    }

    /// Checks an index (either version, as stored) against the manifest's
    /// packs (`digest`, size) and the lockfile: every frame lies inside its
    /// pack, every chunk inside its frame, and every chunk of the lockfile
    /// is located once. A lying index is an error, never a wrong read.
    pub fn check(
        bytes: &[u8],
        packs: &[(String, u64)],
        lockfile: &Lockfile,
        lockfile_hash: &Hash,
    ) -> Result<Packed> {
        let json = decompressed(bytes)?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("not JSON of {INDEX_FORMAT}: {e}")))?;
        let parse_error = |e: serde_json::Error| bad(format!("not JSON of {}: {e}", header.format));
        let (locations, layout) = match header.format.as_str() {
            INDEX_FORMAT_V1 => {
                let index: PackIndexV1 = serde_json::from_slice(&json).map_err(parse_error)?;
                (index.locate(packs)?, crate::oci::LAYOUT_PACKED_V1)
            }
            INDEX_FORMAT => {
                let index: PackIndex = serde_json::from_slice(&json).map_err(parse_error)?;
                (index.locate(packs, lockfile)?, crate::oci::LAYOUT_PACKED)
            }
            other => return Err(bad(format!("unknown format {other:?}"))),
        };
        if header.lockfile != lockfile_hash.to_prefixed() {
            return Err(bad(format!(
                "describes lockfile {}, not {}",
                header.lockfile,
                lockfile_hash.to_prefixed()
            )));
        }
        let listed: Vec<&String> = packs.iter().map(|(d, _)| d).collect();
        if header.packs.iter().collect::<Vec<_>>() != listed {
            return Err(bad("its packs are not the manifest's pack layers".into()));
        }
        if let Some(source) = lockfile
            .sources
            .iter()
            .find(|s| !locations.contains_key(&s.chunk_hash))
        {
            return Err(bad(format!(
                "does not locate the chunk of {:?} ({})",
                source.path, source.chunk_hash
            )));
        }
        let sizes = header.sizes.and_then(|value| {
            let json = serde_json::to_vec(&value).ok()?;
            SizeIndex::from_json(&json, lockfile_hash, lockfile.sources.len())
                .inspect_err(|e| tracing::warn!("ignoring the pack index's sizes: {e}"))
                .ok()
        });
        // The index says each chunk's length twice: they must agree.
        for (source, entry) in lockfile
            .sources
            .iter()
            .zip(sizes.iter().flat_map(|s| &s.entries))
        {
            let located = locations[&source.chunk_hash].len;
            if located != entry.chunk_len {
                return Err(bad(format!(
                    "chunk {} of {:?} is {located} bytes in its pack but {} in the sizes",
                    source.chunk_hash, source.path, entry.chunk_len
                )));
            }
        }
        Ok(Packed {
            locations,
            sizes,
            layout,
        })
    }

    /// Where each chunk is: the lockfile's distinct chunks in
    /// [`chunk_order`], one entry each.
    fn locate(
        &self,
        packs: &[(String, u64)],
        lockfile: &Lockfile,
    ) -> Result<HashMap<Hash, Location>> {
        let frames = self.check_frames(packs)?;
        let order = chunk_order(lockfile);
        if order.len() != self.chunks.len() {
            return Err(bad(format!(
                "locates {} chunks; the lockfile has {} distinct ones",
                self.chunks.len(),
                order.len()
            )));
        }
        order
            .into_iter()
            .zip(&self.chunks)
            .map(|(hash, &(frame, offset, len))| {
                locate_in_frame(&hash.to_hex(), &frames, frame, offset, len).map(|l| (hash, l))
            })
            .collect()
    }

    /// The frames, each checked to lie inside its pack and to decode to at
    /// most [`MAX_FRAME`] bytes.
    fn check_frames(&self, packs: &[(String, u64)]) -> Result<Vec<(String, u64, Frame)>> {
        self.frames
            .iter()
            .enumerate()
            .map(|(i, &(pack, offset, stored_len, raw_len, codec))| {
                let (digest, pack_size) = packs.get(pack).ok_or_else(|| {
                    bad(format!("frame {i} is in pack {pack}, of {} packs", packs.len()))
                })?;
                if offset.checked_add(stored_len).is_none_or(|end| end > *pack_size) {
                    return Err(bad(format!(
                        "frame {i} at {offset}+{stored_len} lies past the end of its pack ({pack_size} bytes)"
                    )));
                }
                if raw_len > MAX_FRAME || (codec == Codec::Stored && raw_len != stored_len) {
                    return Err(bad(format!(
                        "frame {i} claims {raw_len} bytes decoded from {stored_len}"
                    )));
                }
                let frame = Frame {
                    offset,
                    stored_len,
                    raw_len,
                    codec,
                };
                Ok((digest.clone(), *pack_size, frame))
            })
            .collect()
    }
}

impl PackIndexV1 {
    /// Where each chunk is: stored as it is in its pack.
    fn locate(&self, packs: &[(String, u64)]) -> Result<HashMap<Hash, Location>> {
        let mut locations = HashMap::with_capacity(self.chunks.len());
        for (hex, pack, offset, len) in &self.chunks {
            let hash = Hash::from_hex(hex).map_err(|_| bad(format!("bad chunk hash {hex:?}")))?;
            let location = locate_in_pack(hex, packs, *pack, *offset, *len)?;
            if locations.insert(hash, location).is_some() {
                return Err(bad(format!("chunk {hex} is listed twice")));
            }
        }
        Ok(locations)
    }
}

/// An index as stored: zstd-compressed JSON (version 2) decompressed, at
/// most [`MAX_INDEX`] bytes of it; plain JSON (version 1) as it is.
fn decompressed(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    use std::io::Read as _;
    if bytes.first() == Some(&b'{') {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .and_then(|decoder| decoder.take(MAX_INDEX + 1).read_to_end(&mut json))
        .map_err(|e| bad(format!("neither JSON nor zstd-compressed JSON ({e})")))?;
    if json.len() as u64 > MAX_INDEX {
        return Err(bad(format!("decompresses past {MAX_INDEX} bytes")));
    }
    Ok(std::borrow::Cow::Owned(json))
}

fn bad(reason: String) -> Error {
    Error::BadManifest(format!("pack index: {reason}"))
}

/// A version 1 chunk: stored as is at `offset` of pack `pack`.
fn locate_in_pack(
    hex: &str,
    packs: &[(String, u64)],
    pack: usize,
    offset: u64,
    len: u64,
) -> Result<Location> {
    let (digest, pack_size) = packs.get(pack).ok_or_else(|| {
        bad(format!(
            "chunk {hex} is in pack {pack}, of {} packs",
            packs.len()
        ))
    })?;
    if offset.checked_add(len).is_none_or(|end| end > *pack_size) {
        return Err(bad(format!(
            "chunk {hex} at {offset}+{len} lies past the end of its pack ({pack_size} bytes)"
        )));
    }
    Ok(Location {
        pack: digest.clone(),
        pack_size: *pack_size,
        frame: Frame::stored(offset, len),
        offset: 0,
        len,
    })
}

/// A version 2 chunk: at `offset` of frame `frame`, decoded.
fn locate_in_frame(
    hex: &str,
    frames: &[(String, u64, Frame)],
    frame: usize,
    offset: u64,
    len: u64,
) -> Result<Location> {
    let (pack, pack_size, found) = frames.get(frame).ok_or_else(|| {
        bad(format!(
            "chunk {hex} is in frame {frame}, of {} frames",
            frames.len()
        ))
    })?;
    if offset
        .checked_add(len)
        .is_none_or(|end| end > found.raw_len)
    {
        return Err(bad(format!(
            "chunk {hex} at {offset}+{len} lies past the end of its frame ({} bytes)",
            found.raw_len
        )));
    }
    Ok(Location {
        pack: pack.clone(),
        pack_size: *pack_size,
        frame: *found,
        offset,
        len,
    })
}

/// A bundle's distinct chunks in the order of the path of their first
/// source: one directory's chunks lie together, so a cold directory reads
/// as a few ranges. A version 2 index lists its chunks in this order.
pub fn chunk_order(lockfile: &Lockfile) -> Vec<Hash> {
    let mut seen = HashSet::new();
    let mut chunks: Vec<(&str, Hash)> = lockfile
        .sources
        .iter()
        .filter(|s| seen.insert(s.chunk_hash))
        .map(|s| (s.path.as_str(), s.chunk_hash))
        .collect();
    chunks.sort_by(|a, b| a.0.cmp(b.0));
    chunks.into_iter().map(|(_, hash)| hash).collect()
}

/// [`chunk_order`], with each chunk's length (`lens`: per source).
pub fn distinct_chunks(lockfile: &Lockfile, lens: &[u64]) -> Vec<(Hash, u64)> {
    let len_of: HashMap<Hash, u64> = lockfile
        .sources
        .iter()
        .zip(lens)
        .map(|(s, len)| (s.chunk_hash, *len))
        .collect();
    chunk_order(lockfile)
        .into_iter()
        .map(|hash| (hash, len_of[&hash]))
        .collect()
}

/// A pack built from local objects: its bytes, its frames and where each
/// chunk is in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPack {
    pub bytes: Vec<u8>,
    pub layout: PackLayout,
}

/// The frames of a built pack, and each chunk's `(hash, frame number in
/// the pack, offset in the frame, length)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackLayout {
    pub frames: Vec<Frame>,
    pub chunks: Vec<(Hash, usize, u64, u64)>,
}

/// Builds a pack of `objects` (hash, length), in order: grouped into
/// frames ([`frames::group`]) that are read, checked and compressed at
/// `level` in parallel. An object whose length is not the one planned is
/// an error (the index is built from the plan).
pub fn build(chunks: &dyn ChunkSource, objects: &[(Hash, u64)], level: i32) -> Result<BuiltPack> {
    let groups = frames::group(objects);
    let encoded = groups
        .par_iter()
        .map(|group| {
            let mut raw = Vec::new();
            for (hash, len) in &objects[group.clone()] {
                let bytes = chunks.get_verified(hash)?;
                if bytes.len() as u64 != *len {
                    return Err(Error::BadChunk {
                        hash: *hash,
                        reason: format!(
                            "it is {} bytes, the bundle's sizes index says {len}",
                            bytes.len()
                        ),
                    });
                }
                raw.extend_from_slice(&bytes);
            }
            let raw_len = raw.len() as u64;
            frames::encode(&raw, level).map(|(codec, stored)| (codec, stored, raw_len))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut pack = BuiltPack {
        bytes: Vec::with_capacity(encoded.iter().map(|(_, s, _)| s.len()).sum()),
        layout: PackLayout::default(),
    };
    for (number, (group, (codec, stored, raw_len))) in groups.iter().zip(encoded).enumerate() {
        pack.layout.frames.push(Frame {
            offset: pack.bytes.len() as u64,
            stored_len: stored.len() as u64,
            raw_len,
            codec,
        });
        pack.bytes.extend_from_slice(&stored);
        let mut offset = 0;
        for (hash, len) in &objects[group.clone()] {
            pack.layout.chunks.push((*hash, number, offset, *len));
            offset += len;
        }
    }
    Ok(pack)
}

/// Cuts `chunks` into packs of about [`PACK_TARGET`] bytes, in order.
pub fn plan(chunks: &[(Hash, u64)]) -> Vec<Vec<(Hash, u64)>> {
    let mut packs: Vec<Vec<(Hash, u64)>> = Vec::new();
    let mut size = 0;
    for &(hash, len) in chunks {
        if packs.is_empty() || (size > 0 && size + len > PACK_TARGET) {
            packs.push(Vec::new());
            size = 0;
        }
        packs
            .last_mut()
            .expect("a pack was opened")
            .push((hash, len));
        size += len;
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_cut_at_the_target_and_a_big_chunk_gets_its_own() {
        let h = |i: u8| Hash::of(&[i]);
        let chunks = [
            (h(1), PACK_TARGET / 2),
            (h(2), PACK_TARGET / 2),
            (h(3), 1),
            (h(4), PACK_TARGET * 2),
            (h(5), 1),
        ];
        let packs = plan(&chunks);
        let shape: Vec<usize> = packs.iter().map(Vec::len).collect();
        assert_eq!(shape, [2, 1, 1, 1]);
    }

    /// A lockfile of `n` sources with distinct one-byte chunks, and an
    /// honest index of them in one pack (with sizes): chunk `i` at offset `i`.
    fn honest(n: u8) -> (Lockfile, Hash, Vec<(String, u64)>, PackIndexV1) {
        use crate::lockfile::{Meta, SourceEntry};
        use crate::store::sizes::SourceSizes;
        let lockfile = Lockfile {
            meta: Meta {
                producer: "mache".into(),
                producer_version: "test".into(),
                schema_version: "1".into(),
                input_processors: Vec::new(),
                generated_at_ms: 0,
            },
            sources: (0..n)
                .map(|i| SourceEntry {
                    path: format!("f{i}"),
                    input_hash: Hash::of(&[i]),
                    chunk_hash: Hash::of(&[i]),
                    kind: "raw".into(),
                })
                .collect(),
            topology: Vec::new(),
            root: Hash::of(b"root"),
        };
        let lockfile_hash = Hash::of(b"lockfile");
        let packs = vec![("sha256:aa".to_string(), u64::from(n))];
        let sizes = SizeIndex {
            lockfile_hash,
            entries: (0..n)
                .map(|_| SourceSizes {
                    chunk_len: 1,
                    content_len: 1,
                    ast_json_len: None,
                })
                .collect(),
            db: None,
        };
        let index = PackIndexV1 {
            format: INDEX_FORMAT_V1.into(),
            lockfile: lockfile_hash.to_prefixed(),
            packs: vec!["sha256:aa".into()],
            chunks: (0..n)
                .map(|i| (Hash::of(&[i]).to_hex(), 0, u64::from(i), 1))
                .collect(),
            sizes: serde_json::from_slice(&sizes.to_json()).ok(),
        };
        (lockfile, lockfile_hash, packs, index)
    }

    #[test]
    fn an_honest_index_locates_every_chunk_and_a_lying_one_is_refused() {
        let (lockfile, hash, packs, index) = honest(4);
        let check = |index: &PackIndexV1| {
            PackIndex::check(
                &serde_json::to_vec(index).unwrap(),
                &packs,
                &lockfile,
                &hash,
            )
        };
        let packed = check(&index).unwrap();
        assert_eq!(packed.locations.len(), 4);
        assert!(packed.sizes.is_some());
        let lie = |change: &dyn Fn(&mut PackIndexV1), needle: &str| {
            let mut lying = index.clone();
            change(&mut lying);
            let err = check(&lying).unwrap_err();
            assert!(matches!(err, Error::BadManifest(_)), "{err}");
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        };
        lie(&|i| i.chunks[3].2 = 4, "lies past the end of its pack");
        lie(
            &|i| i.chunks[0].3 = u64::MAX,
            "lies past the end of its pack",
        );
        lie(&|i| i.chunks[2].1 = 1, "is in pack 1, of 1 packs");
        lie(&|i| i.chunks[1] = i.chunks[0].clone(), "is listed twice");
        lie(
            &|i| drop(i.chunks.pop()),
            "does not locate the chunk of \"f3\"",
        );
        lie(
            &|i| i.chunks[1].3 = 2,
            "is 2 bytes in its pack but 1 in the sizes",
        );
        lie(
            &|i| i.packs[0] = "sha256:bb".into(),
            "not the manifest's pack layers",
        );
        lie(
            &|i| i.lockfile = Hash::of(b"other").to_prefixed(),
            "describes lockfile",
        );
        lie(&|i| i.format = "packindex/9".into(), "unknown format");
    }
}
