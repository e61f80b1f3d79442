//! Pull: a bundle in a store becomes a restored `mache.db`; verify: the
//! chunks of a bundle (every one, or an even sample) are read from the
//! store itself and checked without writing anything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunk::{self, Decoded, InputCheck};
use crate::error::{Error, InputMismatch, Result};
use crate::hash::Hash;
use crate::lockfile::{Lockfile, ProcessorVersion, SourceEntry};
use crate::machedb::DbWriter;
use crate::store::ChunkSource;
use crate::store::local::shareable_temp_file;

/// Sources decoded in parallel before being written in order.
const WINDOW: usize = 256;
/// Windows whose chunks are asked of the store in one go (a remote store
/// overlaps the requests), while the windows before them are decoded.
const WINDOWS_PER_FETCH: usize = 8;

/// What a pull (or verify) did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub sources: usize,
    /// Sources restored with at least one `_ast` row.
    pub ast_sources: usize,
    /// Sources whose chunks are opaque ([`InputCheck::Opaque`]): restored
    /// as stored, their input hashes not checkable.
    pub opaque_sources: usize,
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
            opaque_sources: 0,
            chunk_bytes: 0,
            root: lockfile.root,
            verified,
            elapsed: Duration::ZERO,
        }
    }

    fn count(&mut self, restored: &Restored) {
        self.sources += 1;
        self.chunk_bytes += restored.chunk_len;
        // A source with AST rows: an AST chunk with no nodes has none.
        let ast = restored.decoded.ast.as_ref();
        self.ast_sources += usize::from(ast.is_some_and(|n| !n.is_empty()));
        self.opaque_sources += usize::from(restored.input == InputCheck::Opaque);
    }
}

/// One source restored from its chunk.
#[derive(Debug, Clone)]
pub struct Restored {
    pub decoded: Decoded,
    /// The length of the chunk it came from.
    pub chunk_len: u64,
    /// Whether its bytes can be checked against its `input_hash`.
    pub input: InputCheck,
}

/// Fetches and decodes one source's chunk, of a bundle whose lockfile
/// declares `processors`. Chunk hashes are always checked (the store never
/// returns unverified bytes). With `verify`, restored bytes that are the
/// source's must also hash to the lockfile's `input_hash`; an opaque
/// chunk's cannot be checked ([`InputCheck`]).
pub fn restore_source(
    source: &dyn ChunkSource,
    entry: &SourceEntry,
    processors: &[ProcessorVersion],
    verify: bool,
) -> Result<Restored> {
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
    let input = InputCheck::of(decoded.shape(), processors);
    if verify && input == InputCheck::Checkable {
        check_input_hash(entry, &decoded.source.content)?;
    }
    Ok(Restored {
        decoded,
        chunk_len: bytes.len() as u64,
        input,
    })
}

/// Fails unless `content` hashes to the entry's `input_hash`.
fn check_input_hash(entry: &SourceEntry, content: &[u8]) -> Result<()> {
    let actual = Hash::of(content);
    if actual == entry.input_hash {
        return Ok(());
    }
    Err(Error::InputMismatch(Box::new(InputMismatch {
        chunk: entry.chunk_hash,
        path: entry.path.clone(),
        expected: entry.input_hash,
        actual,
    })))
}

/// Where [`for_each_restored`] takes chunks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Wherever is quickest: a cache in front of the store first.
    Cached,
    /// The store itself, past any cache ([`ChunkSource::refetch`]).
    Fresh,
}

/// Calls `each` with every entry and its restored source, in order (see
/// [`restore_source`] for `processors` and `verify`). A fetch thread asks
/// the store for the chunks of [`WINDOWS_PER_FETCH`] windows at a time
/// (into its disk cache, for a remote store), one batch ahead of the
/// windows being decoded in parallel and written.
fn for_each_restored(
    source: &dyn ChunkSource,
    entries: &[SourceEntry],
    processors: &[ProcessorVersion],
    fetch: Fetch,
    verify: bool,
    progress: bool,
    mut each: impl FnMut(&SourceEntry, &Restored) -> Result<()>,
) -> Result<()> {
    let bar = progress.then(|| crate::progress::progress(entries.len(), "restoring"));
    let batches: Vec<&[SourceEntry]> = entries.chunks(WINDOW * WINDOWS_PER_FETCH).collect();
    let result = std::thread::scope(|scope| {
        let (fetched, ready) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let batches = &batches;
        scope.spawn(move || {
            for batch in batches {
                let mut seen = HashSet::new();
                let hashes: Vec<Hash> = batch
                    .iter()
                    .map(|e| e.chunk_hash)
                    .filter(|h| seen.insert(*h))
                    .collect();
                let result = match fetch {
                    Fetch::Cached => source.warm(&hashes),
                    Fetch::Fresh => source.refetch(&hashes),
                };
                let failed = result.is_err();
                // A closed channel: the reader stopped; so do we.
                if fetched.send(result).is_err() || failed {
                    break;
                }
            }
        });
        let mut restore = || -> Result<()> {
            for batch in batches {
                ready
                    .recv()
                    .unwrap_or_else(|_| Err(Error::Remote("the fetch thread stopped".into())))?;
                for window in batch.chunks(WINDOW) {
                    let restored: Vec<Restored> = window
                        .par_iter()
                        .map(|entry| restore_source(source, entry, processors, verify))
                        .collect::<Result<_>>()?;
                    for (entry, restored) in window.iter().zip(&restored) {
                        each(entry, restored)?;
                    }
                    if let Some(bar) = &bar {
                        bar.inc(window.len() as u64);
                    }
                }
            }
            Ok(())
        };
        let result = restore();
        drop(ready);
        result
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// What `pull` may do to a file already at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace an existing mache db (a SQLite db with a `_source` table)
    /// or an empty file; refuse anything else.
    ReplaceMacheDb,
    /// Replace whatever is there (a file, not a directory).
    Replace,
}

/// Restores `lockfile` from `source` into a new db at `out_db`. The db is
/// written to a temporary file beside the target and renamed into place
/// only when complete, so a failed pull leaves nothing at `out_db`, and an
/// existing db there is replaced atomically. A file there that is not a
/// mache db is refused unless `existing` is [`Existing::Replace`].
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
    for_each_restored(
        source,
        &lockfile.sources,
        &lockfile.meta.input_processors,
        Fetch::Cached,
        verify,
        progress,
        |_, restored| {
            report.count(restored);
            let decoded = &restored.decoded;
            writer.insert(&decoded.source, decoded.ast.as_deref())
        },
    )?;
    writer.finish()?;
    temp.persist(out_db)
        .map_err(|e| Error::io(format!("writing --out-db {}", out_db.display()), e.error))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Refuses a target that cannot or should not be replaced: a missing
/// directory, a directory, or (unless told to replace it) a file that is
/// not a mache db: a user's own SQLite db is data we did not write.
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
    if existing == Existing::Replace || meta.len() == 0 || crate::machedb::is_mache_db(out_db) {
        return Ok(());
    }
    Err(refuse(
        "exists and is not a mache db (no _source table); refusing to replace it (--force replaces it)",
    ))
}

/// How much of a bundle [`verify`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every chunk.
    Full,
    /// At most this many distinct chunks, spread evenly over the bundle in
    /// lockfile order: the same ones on every run.
    Sample(usize),
}

/// The chunks a quick verify reads.
pub const QUICK_SAMPLE: usize = 64;

/// What a verify checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The sources checked (every one with [`Coverage::Full`]), counted as
    /// a pull counts them.
    pub checked: PullReport,
    pub coverage: Coverage,
    /// Sources in the bundle.
    pub sources: usize,
    /// Distinct chunks in the bundle.
    pub chunks: usize,
    /// Distinct chunks read from the store and verified.
    pub chunks_verified: usize,
    /// Of those, the opaque ones: intact, their input hashes not checkable
    /// ([`InputCheck::Opaque`]).
    pub opaque_chunks: usize,
}

/// Checks a bundle without writing anything: the lockfile root, and for
/// the chunks `coverage` picks, each one's hash (read from the store
/// itself, past any cache), shape and source input hash (unless the chunk
/// is opaque: then it is counted). A sample takes each chunk's first
/// source.
pub fn verify(
    source: &dyn ChunkSource,
    lockfile: &Lockfile,
    coverage: Coverage,
    progress: bool,
) -> Result<VerifyReport> {
    let started = Instant::now();
    lockfile.check_root()?;
    let mut seen = HashSet::new();
    let first_uses: Vec<&SourceEntry> = lockfile
        .sources
        .iter()
        .filter(|s| seen.insert(s.chunk_hash))
        .collect();
    let sampled: Vec<SourceEntry>;
    let (entries, chunks_verified) = match coverage {
        Coverage::Full => (&lockfile.sources[..], first_uses.len()),
        Coverage::Sample(n) => {
            sampled = spread(&first_uses, n)
                .into_iter()
                .map(|s| (*s).clone())
                .collect();
            (&sampled[..], sampled.len())
        }
    };
    let mut checked = PullReport::start(lockfile, true);
    let mut opaque = HashSet::new();
    for_each_restored(
        source,
        entries,
        &lockfile.meta.input_processors,
        Fetch::Fresh,
        true,
        progress,
        |entry, restored| {
            checked.count(restored);
            if restored.input == InputCheck::Opaque {
                opaque.insert(entry.chunk_hash);
            }
            Ok(())
        },
    )?;
    checked.elapsed = started.elapsed();
    Ok(VerifyReport {
        checked,
        coverage,
        sources: lockfile.sources.len(),
        chunks: first_uses.len(),
        chunks_verified,
        opaque_chunks: opaque.len(),
    })
}

/// `n` of `items` spread evenly (item `i * len / n` for `i` below `n`), or
/// all of them when there are no more than `n`.
fn spread<T>(items: &[T], n: usize) -> Vec<&T> {
    if items.len() <= n {
        return items.iter().collect();
    }
    (0..n).map(|i| &items[i * items.len() / n]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_spread_evenly_from_the_first_item_and_is_all_of_a_few() {
        let items: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&items, 4), [&0, &2, &5, &7]);
        assert_eq!(spread(&items, 10).len(), 10);
        assert_eq!(spread(&items[..3], 64), [&0, &1, &2]);
        let many: Vec<usize> = (0..100_000).collect();
        let sample = spread(&many, QUICK_SAMPLE);
        assert_eq!(sample.len(), QUICK_SAMPLE);
        assert!(
            sample.windows(2).all(|w| w[1] - w[0] >= 1562),
            "evenly apart"
        );
        assert!(
            *sample[QUICK_SAMPLE - 1] >= 100_000 - 1563,
            "reaches the end"
        );
    }
}
