//! Pull: a bundle in a store becomes a restored `mache.db`; verify: every
//! chunk of a bundle is checked without writing anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunk::{self, Decoded};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::{Lockfile, SourceEntry};
use crate::machedb::DbWriter;
use crate::store::ChunkSource;
use crate::store::local::shareable_temp_file;

/// Sources fetched and decoded in parallel before being written in order.
const WINDOW: usize = 256;

/// What a pull (or verify) did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub sources: usize,
    pub ast_sources: usize,
    pub chunk_bytes: u64,
    pub root: Hash,
    pub verified: bool,
    pub elapsed: Duration,
}

impl PullReport {
    fn start(lockfile: &Lockfile, verified: bool) -> PullReport {
        PullReport {
            sources: 0,
            ast_sources: 0,
            chunk_bytes: 0,
            root: lockfile.root,
            verified,
            elapsed: Duration::ZERO,
        }
    }

    fn count(&mut self, decoded: &Decoded, chunk_len: u64) {
        self.sources += 1;
        self.chunk_bytes += chunk_len;
        self.ast_sources += usize::from(decoded.ast.is_some());
    }
}

/// Fetches and decodes one source's chunk. With `verify`, the restored
/// bytes must also hash to the lockfile's `input_hash`. Chunk hashes are
/// always checked (the store never returns unverified bytes).
pub fn restore_source(
    source: &dyn ChunkSource,
    entry: &SourceEntry,
    verify: bool,
) -> Result<(Decoded, u64)> {
    let bytes = source
        .get_verified(&entry.chunk_hash)
        .map_err(|e| match e {
            Error::ObjectMissing { hash, store } => Error::ChunkMissing {
                hash,
                path: entry.path.clone(),
                store,
            },
            other => other,
        })?;
    let decoded = chunk::decode(&bytes, entry)?;
    if verify {
        let actual = Hash::of(&decoded.source.content);
        if actual != entry.input_hash {
            return Err(Error::BadChunk {
                hash: entry.chunk_hash,
                reason: format!(
                    "source {:?} restores to bytes with blake3 {actual}, lockfile input_hash is {}",
                    entry.path, entry.input_hash
                ),
            });
        }
    }
    Ok((decoded, bytes.len() as u64))
}

/// Calls `each` with every source's decoded chunk, in lockfile order,
/// fetching a window at a time in parallel.
fn for_each_restored(
    source: &dyn ChunkSource,
    lockfile: &Lockfile,
    verify: bool,
    progress: bool,
    mut each: impl FnMut(&Decoded, u64) -> Result<()>,
) -> Result<()> {
    let bar = progress.then(|| super::progress(lockfile.sources.len(), "restoring"));
    for window in lockfile.sources.chunks(WINDOW) {
        let hashes: Vec<Hash> = window.iter().map(|e| e.chunk_hash).collect();
        source.warm(&hashes)?;
        let decoded: Vec<(Decoded, u64)> = window
            .par_iter()
            .map(|entry| restore_source(source, entry, verify))
            .collect::<Result<_>>()?;
        for (d, len) in &decoded {
            each(d, *len)?;
        }
        if let Some(bar) = &bar {
            bar.inc(window.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

/// What `pull` may do to a file already at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace an existing SQLite db (or an empty file); refuse anything else.
    ReplaceDb,
    /// Replace whatever is there (a file, not a directory).
    Replace,
}

/// Restores `lockfile` from `source` into a new db at `out_db`. The db is
/// written to a temporary file beside the target and renamed into place
/// only when complete, so a failed pull leaves nothing at `out_db`, and an
/// existing db there is replaced atomically. A file there that is not a
/// SQLite db is refused unless `existing` is [`Existing::Replace`].
pub fn pull(
    source: &dyn ChunkSource,
    lockfile: &Lockfile,
    out_db: &Path,
    existing: Existing,
    verify: bool,
    progress: bool,
) -> Result<PullReport> {
    let started = Instant::now();
    check_target(out_db, existing)?;
    if verify {
        lockfile.check_root()?;
    }
    let dir = match out_db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = shareable_temp_file(&dir, ".mache-cachefs-pull-", ".db")
        .map_err(|e| Error::io(format!("writing --out-db {}", out_db.display()), e))?
        .into_temp_path();
    let mut writer = DbWriter::create(&temp, out_db)?;
    let mut report = PullReport::start(lockfile, verify);
    for_each_restored(source, lockfile, verify, progress, |decoded, len| {
        report.count(decoded, len);
        writer.insert(&decoded.source, decoded.ast.as_deref())
    })?;
    writer.finish()?;
    temp.persist(out_db)
        .map_err(|e| Error::io(format!("writing --out-db {}", out_db.display()), e.error))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Refuses a target that cannot or should not be replaced: a missing
/// directory, a directory, or (unless told to replace it) a file that is
/// not a SQLite db.
fn check_target(out_db: &Path, existing: Existing) -> Result<()> {
    let refuse = |reason: &str| Error::OutDb {
        path: out_db.to_path_buf(),
        reason: reason.to_string(),
    };
    let dir = out_db.parent().filter(|p| !p.as_os_str().is_empty());
    if dir.is_some_and(|dir| !dir.is_dir()) {
        return Err(Error::io(
            format!("--out-db {}", out_db.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist"),
        ));
    }
    let meta = match std::fs::metadata(out_db) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("--out-db {}", out_db.display()), e)),
    };
    if meta.is_dir() {
        return Err(refuse("is a directory"));
    }
    if existing == Existing::Replace || meta.len() == 0 || is_sqlite_db(out_db) {
        return Ok(());
    }
    Err(refuse(
        "exists and is not a SQLite database; refusing to replace it (--force replaces it)",
    ))
}

/// Whether the file starts with SQLite's header.
fn is_sqlite_db(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == crate::machedb::SQLITE_HEADER)
}

/// Checks a whole bundle: the root, every chunk's hash, every source's
/// input hash and chunk shape. Writes nothing.
pub fn verify(source: &dyn ChunkSource, lockfile: &Lockfile, progress: bool) -> Result<PullReport> {
    let started = Instant::now();
    lockfile.check_root()?;
    let mut report = PullReport::start(lockfile, true);
    for_each_restored(source, lockfile, true, progress, |decoded, len| {
        report.count(decoded, len);
        Ok(())
    })?;
    report.elapsed = started.elapsed();
    Ok(report)
}
