//! Inspect: what a bundle is and how much of it a store holds.

use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::chunk::{self, InputCheck, Shape};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::{self, Lockfile};
use crate::store::local::{LATEST, LOCK_BIN, read_file};
use crate::store::sizes::SourceSizes;
use crate::store::{Bundle, BundleStore, ChunkSource, LocalStore, SizeIndex};

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
    /// Raw chunks that are opaque (counted in `raw_chunks` too): another
    /// input processor's output, whose input hashes cannot be checked
    /// ([`InputCheck::Opaque`]).
    pub opaque_chunks: Option<usize>,
    /// Whether chunks were read and hashed (`false`: checked by presence
    /// and length against the sizes index).
    pub chunks_hashed: bool,
    /// The registry manifest's digest, for a bundle of a registry (whose
    /// chunks `inspect` does not read).
    pub manifest: Option<String>,
    /// The record of the `mache.db` the bundle synthesizes, if its push
    /// made one.
    pub mache_db: Option<DbRecordReport>,
}

/// A [`DbRecord`](crate::store::sizes::DbRecord) as `inspect` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DbRecordReport {
    pub size: u64,
    pub blake3: String,
    pub synthesizer: String,
}

impl DbRecordReport {
    fn of(bundle: &Bundle) -> Option<DbRecordReport> {
        bundle.db_record().map(|db| DbRecordReport {
            size: db.size,
            blake3: db.hash.to_prefixed(),
            synthesizer: db.synthesizer.clone(),
        })
    }
}

/// Inspects a store directory (at `reference`, default `latest`), a `.bin`
/// or a `.toml` lockfile. For a lockfile file inside a store, chunk counts
/// come from that store. A reference with a lockfile file is a usage error.
pub fn inspect_target(target: &Path, reference: Option<&str>) -> Result<Inspection> {
    let is_toml = target.extension().is_some_and(|e| e == "toml");
    let is_bin = target.extension().is_some_and(|e| e == "bin");
    if target.is_dir() || (!target.exists() && !is_toml && !is_bin) {
        let store = LocalStore::open(target)?;
        return inspect_bundle(&store, &store.resolve(reference.unwrap_or(LATEST))?);
    }
    if let Some(reference) = reference {
        return Err(Error::Usage(format!(
            "--ref {reference} does not apply: {} is a lockfile file, not a store (--ref picks \
             a bundle of a store directory)",
            target.display()
        )));
    }
    let bytes = read_file(target)?;
    let not_a_lockfile = |e: Error| not_a_lockfile(target, &bytes, e);
    let (lockfile, lockfile_hash) = if is_toml {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::BadLockfile(format!("{} is not UTF-8", target.display())))?;
        let lockfile = lockfile::text::from_toml(text).map_err(not_a_lockfile)?;
        lockfile.check_supported()?;
        (lockfile, None)
    } else {
        let lockfile = lockfile::binary::decode(&bytes).map_err(not_a_lockfile)?;
        lockfile.check_supported()?;
        (lockfile, Some(Hash::of(&bytes)))
    };
    let store = target
        .parent()
        .filter(|dir| dir.join("objects").is_dir() || dir.join(LOCK_BIN).is_file())
        .and_then(|dir| LocalStore::open(dir).ok());
    let mut inspection = describe(&lockfile, lockfile_hash);
    if let Some(store) = store {
        // A lockfile of this store may have a sizes index beside it.
        let sizes = lockfile_hash
            .and_then(|hash| store.read_sizes(&hash, lockfile.sources.len()).ok())
            .flatten();
        count_chunks(&store, &lockfile, sizes.as_ref(), &mut inspection);
    }
    Ok(inspection)
}

/// The error for a file that does not decode as a lockfile: it names the
/// file and says what it looks like when it is a SQLite db (a common slip:
/// `inspect mache.db`).
fn not_a_lockfile(target: &Path, bytes: &[u8], err: Error) -> Error {
    let shown = target.display();
    if bytes.starts_with(crate::machedb::SQLITE_HEADER) {
        return Error::BadLockfile(format!(
            "{shown} is a SQLite database, not a lockfile (to publish it: \
             mache-cachefs push --db {shown})"
        ));
    }
    let reason = match err {
        Error::BadLockfile(reason) => reason,
        other => other.to_string(),
    };
    Error::BadLockfile(format!("{shown} is not a mache lockfile ({reason})"))
}

/// Inspects a resolved bundle against the store holding its chunks.
pub fn inspect_bundle(store: &LocalStore, bundle: &Bundle) -> Result<Inspection> {
    let mut inspection = describe(&bundle.lockfile, Some(bundle.lockfile_hash));
    inspection.mache_db = DbRecordReport::of(bundle);
    inspection.refs = store
        .refs()?
        .into_iter()
        .filter(|(_, hash)| *hash == bundle.lockfile_hash)
        .map(|(name, _)| name)
        .collect();
    count_chunks(
        store,
        &bundle.lockfile,
        bundle.sizes.as_ref(),
        &mut inspection,
    );
    Ok(inspection)
}

/// Inspects the bundle `reference` names in a store whose chunks are not
/// at hand (a registry): what its lockfile says, and the shapes its sizes
/// index records. Chunks are not fetched; `verify` reads them.
pub fn inspect_remote(store: &dyn BundleStore, reference: &str) -> Result<Inspection> {
    let bundle = store.resolve(reference)?;
    let mut inspection = describe(&bundle.lockfile, Some(bundle.lockfile_hash));
    if !reference.contains(':') {
        inspection.refs = vec![reference.to_string()];
    }
    inspection.manifest = bundle.manifest.as_deref().map(crate::oci::sha256_digest);
    inspection.mache_db = DbRecordReport::of(&bundle);
    if let Some(sizes) = &bundle.sizes {
        let mut seen = HashSet::new();
        let shapes: Vec<Shape> = (0..bundle.lockfile.sources.len())
            .filter(|&i| seen.insert(bundle.lockfile.sources[i].chunk_hash))
            .map(|i| match sizes.entries[i].ast_json_len {
                Some(_) => Shape::Ast,
                None => Shape::Raw,
            })
            .collect();
        let processors = &bundle.lockfile.meta.input_processors;
        let count =
            |wanted: &dyn Fn(Shape) -> bool| Some(shapes.iter().filter(|&&s| wanted(s)).count());
        inspection.ast_chunks = count(&|s| s == Shape::Ast);
        inspection.raw_chunks = count(&|s| s == Shape::Raw);
        inspection.opaque_chunks = count(&|s| InputCheck::of(s, processors) == InputCheck::Opaque);
    }
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
        opaque_chunks: None,
        chunks_hashed: false,
        manifest: None,
        mache_db: None,
    }
}

/// What one distinct chunk turned out to be.
enum ChunkState {
    Present(Shape),
    Missing,
    Corrupt,
}

/// Counts present, missing and corrupt chunks and their shapes (each
/// distinct chunk once, in parallel). With the sizes index our push left,
/// this is a `stat` per chunk: presence and length are checked, the shape
/// comes from the index, and a wrong length counts as corrupt (`verify`
/// hashes every byte). Without one, every chunk is read and verified.
fn count_chunks(
    store: &LocalStore,
    lockfile: &Lockfile,
    sizes: Option<&SizeIndex>,
    out: &mut Inspection,
) {
    let chunks = store.chunks();
    let mut seen = HashSet::new();
    let distinct: Vec<usize> = (0..lockfile.sources.len())
        .filter(|&i| seen.insert(lockfile.sources[i].chunk_hash))
        .collect();
    let states: Vec<ChunkState> = distinct
        .par_iter()
        .map(|&i| {
            let hash = &lockfile.sources[i].chunk_hash;
            match sizes.map(|sizes| sizes.entries[i]) {
                Some(size) => stat_chunk(store, hash, size),
                None => read_chunk(chunks.as_ref(), hash),
            }
        })
        .collect();
    let count =
        |wanted: &dyn Fn(&ChunkState) -> bool| Some(states.iter().filter(|s| wanted(s)).count());
    let processors = &lockfile.meta.input_processors;
    out.chunks_present = count(&|s| !matches!(s, ChunkState::Missing));
    out.chunks_missing = count(&|s| matches!(s, ChunkState::Missing));
    out.chunks_corrupt = count(&|s| matches!(s, ChunkState::Corrupt));
    out.raw_chunks = count(&|s| matches!(s, ChunkState::Present(Shape::Raw)));
    out.ast_chunks = count(&|s| matches!(s, ChunkState::Present(Shape::Ast)));
    out.opaque_chunks = count(&|s| {
        matches!(s, ChunkState::Present(shape)
            if InputCheck::of(*shape, processors) == InputCheck::Opaque)
    });
    out.chunks_hashed = sizes.is_none();
}

fn stat_chunk(store: &LocalStore, hash: &Hash, size: SourceSizes) -> ChunkState {
    match store.object_len(hash) {
        Some(len) if len == size.chunk_len => match size.ast_json_len {
            Some(_) => ChunkState::Present(Shape::Ast),
            None => ChunkState::Present(Shape::Raw),
        },
        Some(_) => ChunkState::Corrupt,
        None => ChunkState::Missing,
    }
}

fn read_chunk(chunks: &dyn ChunkSource, hash: &Hash) -> ChunkState {
    match chunks.get_verified(hash) {
        Ok(bytes) => ChunkState::Present(chunk::detect(&bytes)),
        Err(Error::ObjectMissing { .. }) => ChunkState::Missing,
        Err(_) => ChunkState::Corrupt,
    }
}
