//! Inspect: what a bundle is and how much of it a store holds.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::chunk::{self, Shape};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::{self, Lockfile};
use crate::store::local::{LOCK_BIN, read_file};
use crate::store::{Bundle, ChunkSource, LocalStore};

/// Everything `inspect` reports, as printed by `--json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Inspection {
    pub producer: String,
    pub producer_version: String,
    pub schema_version: String,
    pub generated_at_ms: u64,
    pub processors: Vec<String>,
    pub sources: usize,
    pub topology_edges: usize,
    pub root: String,
    /// Whether `root` is what the sources give.
    pub root_ok: bool,
    /// BLAKE3 of the binary lockfile; `None` when inspecting TOML.
    pub lockfile: Option<String>,
    /// Refs naming this lockfile (store targets only).
    pub refs: Vec<String>,
    pub distinct_chunks: usize,
    /// The following are `None` when no store holds the chunks.
    pub chunks_present: Option<usize>,
    pub chunks_missing: Option<usize>,
    pub chunks_corrupt: Option<usize>,
    pub raw_chunks: Option<usize>,
    pub ast_chunks: Option<usize>,
}

/// Inspects a store directory (at `reference`), a `.bin` or a `.toml` lockfile.
/// For a lockfile file inside a store, chunk counts come from that store.
pub fn inspect_file(target: &Path, reference: &str) -> Result<Inspection> {
    if target.is_dir() {
        let store = LocalStore::open(target)?;
        return inspect_bundle(&store, &store.resolve(reference)?);
    }
    let bytes = read_file(target)?;
    let is_toml = target.extension().is_some_and(|e| e == "toml");
    let (lockfile, lockfile_hash) = if is_toml {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::BadLockfile(format!("{} is not UTF-8", target.display())))?;
        let lockfile = lockfile::text::from_toml(text)?;
        lockfile.check_supported()?;
        (lockfile, None)
    } else {
        (
            lockfile::binary::decode_supported(&bytes)?,
            Some(Hash::of(&bytes)),
        )
    };
    let store = target
        .parent()
        .filter(|dir| dir.join("objects").is_dir() || dir.join(LOCK_BIN).is_file())
        .and_then(|dir| LocalStore::open(dir).ok());
    let mut inspection = describe(&lockfile, lockfile_hash);
    if let Some(store) = store {
        count_chunks(&store, &lockfile, &mut inspection);
    }
    Ok(inspection)
}

/// Inspects a resolved bundle against the store holding its chunks.
pub fn inspect_bundle(store: &LocalStore, bundle: &Bundle) -> Result<Inspection> {
    let mut inspection = describe(&bundle.lockfile, Some(bundle.lockfile_hash));
    inspection.refs = store
        .refs()?
        .into_iter()
        .filter(|(_, hash)| *hash == bundle.lockfile_hash)
        .map(|(name, _)| name)
        .collect();
    count_chunks(store, &bundle.lockfile, &mut inspection);
    Ok(inspection)
}

fn describe(lockfile: &Lockfile, lockfile_hash: Option<Hash>) -> Inspection {
    let meta = &lockfile.meta;
    Inspection {
        producer: meta.producer.clone(),
        producer_version: meta.producer_version.clone(),
        schema_version: meta.schema_version.clone(),
        generated_at_ms: meta.generated_at_ms,
        processors: meta
            .input_processors
            .iter()
            .map(|p| format!("{} {}", p.kind, p.version))
            .collect(),
        sources: lockfile.sources.len(),
        topology_edges: lockfile.topology.len(),
        root: lockfile.root.to_prefixed(),
        root_ok: lockfile.check_root().is_ok(),
        lockfile: lockfile_hash.map(|h| h.to_prefixed()),
        refs: Vec::new(),
        distinct_chunks: lockfile.distinct_chunks(),
        chunks_present: None,
        chunks_missing: None,
        chunks_corrupt: None,
        raw_chunks: None,
        ast_chunks: None,
    }
}

/// Counts present, missing and corrupt chunks, and the shapes of the sound
/// ones (each distinct chunk once).
fn count_chunks(store: &LocalStore, lockfile: &Lockfile, out: &mut Inspection) {
    let (mut present, mut missing, mut corrupt, mut raw, mut ast) = (0, 0, 0, 0, 0);
    let mut seen = HashSet::new();
    for source in &lockfile.sources {
        if !seen.insert(source.chunk_hash) {
            continue;
        }
        match store.get_verified(&source.chunk_hash) {
            Ok(bytes) => {
                present += 1;
                match chunk::detect(&bytes) {
                    Shape::Raw => raw += 1,
                    Shape::Ast => ast += 1,
                }
            }
            Err(Error::ObjectMissing { .. }) => missing += 1,
            Err(_) => {
                present += 1;
                corrupt += 1;
            }
        }
    }
    out.chunks_present = Some(present);
    out.chunks_missing = Some(missing);
    out.chunks_corrupt = Some(corrupt);
    out.raw_chunks = Some(raw);
    out.ast_chunks = Some(ast);
}
