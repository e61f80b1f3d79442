//! The sizes index: what our push knows about each source that the lockfile
//! does not say, kept beside the lockfile so that a mount can answer `stat`
//! without fetching a single chunk.
//!
//! It never changes the lockfile or chunk formats; a bundle without it (one
//! written by the Go mache) is still complete, just slower to `stat`.
//! Stored as compact JSON: `{"format":…,"lockfile":"blake3:…","entries":[[chunk_len,
//! content_len, ast_json_len or -1], …]}` in lockfile order.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;

/// Format tag written into every index.
pub const FORMAT: &str = "mache-cachefs.sizes/1";

/// Sizes of one source, in lockfile order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSizes {
    /// Length of the stored chunk.
    pub chunk_len: u64,
    /// Length of the source's restored bytes (`sources/<path>`).
    pub content_len: u64,
    /// Length of `ast/<path>.json`, present iff the chunk is AST-shaped.
    pub ast_json_len: Option<u64>,
}

/// Per-source sizes for one lockfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeIndex {
    /// BLAKE3 of the binary lockfile these sizes describe.
    pub lockfile_hash: Hash,
    /// One entry per lockfile source, in order.
    pub entries: Vec<SourceSizes>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: String,
    lockfile: String,
    entries: Vec<(u64, u64, i64)>,
}

impl SizeIndex {
    /// Serializes to the on-disk JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            format: FORMAT.to_string(),
            lockfile: self.lockfile_hash.to_prefixed(),
            entries: self
                .entries
                .iter()
                .map(|e| {
                    let ast = e.ast_json_len.map_or(-1, |n| n as i64);
                    (e.chunk_len, e.content_len, ast)
                })
                .collect(),
        };
        serde_json::to_vec(&wire).expect("sizes index serializes")
    }

    /// Parses the on-disk form and checks it describes `lockfile_hash` with
    /// `source_count` entries.
    pub fn from_json(bytes: &[u8], lockfile_hash: &Hash, source_count: usize) -> Result<SizeIndex> {
        let bad = |reason: String| Error::BadLockfile(format!("sizes index: {reason}"));
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if wire.format != FORMAT {
            return Err(bad(format!("unknown format {:?}", wire.format)));
        }
        if Hash::from_prefixed(&wire.lockfile)? != *lockfile_hash {
            return Err(bad("describes another lockfile".to_string()));
        }
        if wire.entries.len() != source_count {
            return Err(bad(format!(
                "{} entries for {source_count} sources",
                wire.entries.len()
            )));
        }
        let entries = wire
            .entries
            .into_iter()
            .map(|(chunk_len, content_len, ast)| SourceSizes {
                chunk_len,
                content_len,
                ast_json_len: u64::try_from(ast).ok(),
            })
            .collect();
        Ok(SizeIndex {
            lockfile_hash: *lockfile_hash,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_what_it_describes() {
        let hash = Hash::of(b"lock");
        let index = SizeIndex {
            lockfile_hash: hash,
            entries: vec![
                SourceSizes {
                    chunk_len: 10,
                    content_len: 10,
                    ast_json_len: None,
                },
                SourceSizes {
                    chunk_len: 90,
                    content_len: 4,
                    ast_json_len: Some(70),
                },
            ],
        };
        let json = index.to_json();
        assert_eq!(SizeIndex::from_json(&json, &hash, 2).unwrap(), index);
        assert!(SizeIndex::from_json(&json, &Hash::of(b"other"), 2).is_err());
        assert!(SizeIndex::from_json(&json, &hash, 3).is_err());
        assert!(SizeIndex::from_json(b"{", &hash, 2).is_err());
    }
}
