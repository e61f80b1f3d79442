//! The lockfile: the bundle's table of contents.
//!
//! [`Lockfile`] is the plain-Rust model; [`binary`] encodes and decodes the
//! authoritative Cap'n Proto form (`mache.lock.bin`), [`text`] the TOML form
//! (`mache.lock.toml`). Validation that applies to both (producer, schema
//! version, root) lives here.

pub mod binary;
mod generated;
pub mod text;

use crate::error::{Error, Result};
use crate::hash::Hash;

/// The only producer this build accepts.
pub const PRODUCER: &str = "mache";
/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: &str = "0.1.0";
/// The input processor mache declares: it hashes each source and leaves
/// its bytes as they are (see [`crate::chunk::InputCheck`]).
pub const BLAKE3_PROCESSOR: &str = "blake3";

/// A decoded lockfile (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockfile {
    pub meta: Meta,
    pub sources: Vec<SourceEntry>,
    /// mache always writes an empty (non-null) list; we do the same.
    pub topology: Vec<TopologyEdge>,
    pub root: Hash,
}

/// Who produced the bundle, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub producer: String,
    pub producer_version: String,
    pub schema_version: String,
    pub input_processors: Vec<ProcessorVersion>,
    pub generated_at_ms: u64,
}

/// A tool that processed the inputs, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorVersion {
    pub kind: String,
    pub version: String,
}

/// One source: where it lives, what its bytes hash to, and its chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub path: String,
    pub input_hash: Hash,
    pub chunk_hash: Hash,
    pub kind: String,
}

/// A dependency edge between two sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyEdge {
    pub from: String,
    pub to_source: String,
}

impl Lockfile {
    /// mache's root rule: BLAKE3 over every source's 32-byte chunk hash, in order.
    pub fn compute_root(sources: &[SourceEntry]) -> Hash {
        let mut hasher = blake3::Hasher::new();
        for source in sources {
            hasher.update(&source.chunk_hash.0);
        }
        Hash(*hasher.finalize().as_bytes())
    }

    /// Refuses a lockfile this build cannot interpret: a foreign producer or
    /// an unsupported schema version.
    pub fn check_supported(&self) -> Result<()> {
        if self.meta.producer != PRODUCER {
            return Err(Error::ForeignProducer {
                found: self.meta.producer.clone(),
                expected: PRODUCER.to_string(),
            });
        }
        if self.meta.schema_version != SCHEMA_VERSION {
            return Err(Error::UnsupportedSchema {
                found: self.meta.schema_version.clone(),
                supported: SCHEMA_VERSION.to_string(),
            });
        }
        Ok(())
    }

    /// Checks that `root` is what the sources give.
    pub fn check_root(&self) -> Result<()> {
        let actual = Lockfile::compute_root(&self.sources);
        if actual != self.root {
            return Err(Error::RootMismatch {
                expected: self.root,
                actual,
            });
        }
        Ok(())
    }

    /// Number of sources whose chunks are distinct.
    pub fn distinct_chunks(&self) -> usize {
        let set: std::collections::HashSet<_> = self.sources.iter().map(|s| s.chunk_hash).collect();
        set.len()
    }
}
