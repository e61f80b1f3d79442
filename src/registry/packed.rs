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

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::Lockfile;
use crate::store::sizes::SizeIndex;

/// Packs are cut at this many bytes.
pub const PACK_TARGET: u64 = 32 << 20;
/// The pack index's format tag.
pub const INDEX_FORMAT: &str = "mache-cachefs.packindex/1";

/// Where a chunk is: which pack (its digest and size), offset and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: String,
    pub pack_size: u64,
    pub offset: u64,
    pub len: u64,
}

/// The pack index as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackIndex {
    pub format: String,
    /// `blake3:<lockfile hash>`.
    pub lockfile: String,
    /// Pack digests (`sha256:…`), in the manifest's layer order.
    pub packs: Vec<String>,
    /// `[blake3 hex, pack number, offset, length]` per distinct chunk.
    pub chunks: Vec<(String, usize, u64, u64)>,
    /// The sizes index (`lockfiles/<hash>.sizes.json`), if the push had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<serde_json::Value>,
}

/// A pack index checked against its manifest and lockfile.
#[derive(Debug, Clone)]
pub struct Packed {
    pub locations: HashMap<Hash, Location>,
    pub sizes: Option<SizeIndex>,
}

impl PackIndex {
    /// Checks an index against the manifest's packs (`digest`, size) and
    /// the lockfile: every chunk of the lockfile is located once, inside
    /// its pack. A lying index is an error, never a wrong read.
    pub fn check(
        bytes: &[u8],
        packs: &[(String, u64)],
        lockfile: &Lockfile,
        lockfile_hash: &Hash,
    ) -> Result<Packed> {
        let bad = |reason: String| Error::BadManifest(format!("pack index: {reason}"));
        let index: PackIndex = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not JSON of {INDEX_FORMAT}: {e}")))?;
        if index.format != INDEX_FORMAT {
            return Err(bad(format!("unknown format {:?}", index.format)));
        }
        if index.lockfile != lockfile_hash.to_prefixed() {
            return Err(bad(format!(
                "describes lockfile {}, not {}",
                index.lockfile,
                lockfile_hash.to_prefixed()
            )));
        }
        let listed: Vec<&String> = packs.iter().map(|(d, _)| d).collect();
        if index.packs.iter().collect::<Vec<_>>() != listed {
            return Err(bad("its packs are not the manifest's pack layers".into()));
        }
        let mut locations = HashMap::with_capacity(index.chunks.len());
        for (hex, pack, offset, len) in &index.chunks {
            let hash = Hash::from_hex(hex).map_err(|_| bad(format!("bad chunk hash {hex:?}")))?;
            let (digest, pack_size) = packs.get(*pack).ok_or_else(|| {
                bad(format!(
                    "chunk {hex} is in pack {pack}, of {} packs",
                    packs.len()
                ))
            })?;
            if offset.checked_add(*len).is_none_or(|end| end > *pack_size) {
                return Err(bad(format!(
                    "chunk {hex} at {offset}+{len} lies past the end of its pack ({pack_size} bytes)"
                )));
            }
            let location = Location {
                pack: digest.clone(),
                pack_size: *pack_size,
                offset: *offset,
                len: *len,
            };
            if locations.insert(hash, location).is_some() {
                return Err(bad(format!("chunk {hex} is listed twice")));
            }
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
        let sizes = index.sizes.and_then(|value| {
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
        Ok(Packed { locations, sizes })
    }
}

/// The chunks of a bundle, distinct, in lockfile order, with their lengths.
pub fn distinct_chunks(lockfile: &Lockfile, lens: &[u64]) -> Vec<(Hash, u64)> {
    let mut seen = HashSet::new();
    lockfile
        .sources
        .iter()
        .zip(lens)
        .filter(|(s, _)| seen.insert(s.chunk_hash))
        .map(|(s, len)| (s.chunk_hash, *len))
        .collect()
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
    fn honest(n: u8) -> (Lockfile, Hash, Vec<(String, u64)>, PackIndex) {
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
        };
        let index = PackIndex {
            format: INDEX_FORMAT.into(),
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
        let check = |index: &PackIndex| {
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
        let lie = |change: &dyn Fn(&mut PackIndex), needle: &str| {
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
