//! The sizes index: what our push knows about each source that the lockfile
//! does not say, kept beside the lockfile so that a mount can answer `stat`
//! without fetching a single chunk.
//!
//! It never changes the lockfile or chunk formats; a bundle without it (one
//! written by the Go mache) is still complete, just slower to `stat`.
//! Stored as compact JSON: `{"format":…,"lockfile":"blake3:…","entries":[[chunk_len,
//! content_len, ast_json_len or -1], …]}` in lockfile order, and, from a
//! push that built it, `"db":{"size":…,"blake3":"blake3:…","synthesizer":…}`:
//! the [`DbRecord`] of the `mache.db` the bundle synthesizes, so a mount can
//! show that file's size before building it. Readers of an index without
//! `db` (or that do not know the field) lose nothing but that.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::oci::{DB_BLAKE3_KEY, DB_SIZE_KEY, DB_SYNTHESIZER_KEY, Manifest};

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

/// The `mache.db` a bundle synthesizes, as the push that built it found
/// it. Only as good as the synthesizer is deterministic: a reader trusts it
/// only when its own [`synthesizer`](crate::machedb::synthesizer) has the
/// same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRecord {
    /// The file's length in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file.
    pub hash: Hash,
    /// What built it: the db layout's version and the SQLite library's.
    pub synthesizer: String,
}

impl DbRecord {
    /// Adds the record to a registry manifest as annotations, for tools
    /// that read manifests (the mount reads it from the sizes index).
    pub fn annotate(&self, manifest: &mut Manifest) {
        let annotations = &mut manifest.annotations;
        annotations.insert(DB_SIZE_KEY.to_string(), self.size.to_string());
        annotations.insert(DB_BLAKE3_KEY.to_string(), self.hash.to_prefixed());
        annotations.insert(DB_SYNTHESIZER_KEY.to_string(), self.synthesizer.clone());
    }
}

/// Per-source sizes for one lockfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeIndex {
    /// BLAKE3 of the binary lockfile these sizes describe.
    pub lockfile_hash: Hash,
    /// One entry per lockfile source, in order.
    pub entries: Vec<SourceSizes>,
    /// The synthesized db, when the push built it.
    pub db: Option<DbRecord>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: String,
    lockfile: String,
    entries: Vec<(u64, u64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    db: Option<WireDb>,
}

#[derive(Serialize, Deserialize)]
struct WireDb {
    size: u64,
    blake3: String,
    synthesizer: String,
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
            db: self.db.as_ref().map(|db| WireDb {
                size: db.size,
                blake3: db.hash.to_prefixed(),
                synthesizer: db.synthesizer.clone(),
            }),
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
        let db = match wire.db {
            Some(db) => Some(DbRecord {
                size: db.size,
                hash: Hash::from_prefixed(&db.blake3).map_err(|e| bad(format!("db: {e}")))?,
                synthesizer: db.synthesizer,
            }),
            None => None,
        };
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
            db,
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
            db: None,
        };
        let json = index.to_json();
        assert_eq!(SizeIndex::from_json(&json, &hash, 2).unwrap(), index);
        assert!(!String::from_utf8_lossy(&json).contains("\"db\""));
        let with_db = SizeIndex {
            db: Some(DbRecord {
                size: 8192,
                hash: Hash::of(b"db"),
                synthesizer: "mache-cachefs.db/1 sqlite 3.0.0".to_string(),
            }),
            ..index.clone()
        };
        let json = with_db.to_json();
        assert_eq!(SizeIndex::from_json(&json, &hash, 2).unwrap(), with_db);
        assert!(SizeIndex::from_json(&json, &Hash::of(b"other"), 2).is_err());
        assert!(SizeIndex::from_json(&json, &hash, 3).is_err());
        assert!(SizeIndex::from_json(b"{", &hash, 2).is_err());
    }
}
