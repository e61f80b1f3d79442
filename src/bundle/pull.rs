//! Pull: a bundle in a store becomes a restored `mache.db`; verify: the
//! chunks of a bundle (every one, or an even sample) are read from the
//! store itself and checked without writing anything.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunk::{self, Decoded, InputCheck};
use crate::error::{Error, InputMismatch, Result};
use crate::hash::Hash;
use crate::lockfile::{Lockfile, ProcessorVersion, SourceEntry};
use crate::machedb::DbWriter;
use crate::store::local::shareable_temp_file;
use crate::store::tmp;
use crate::store::{ChunkSource, Room};

/// Sources decoded in parallel before being written in order.
const WINDOW: usize = 256;
/// Decoded windows that may wait for the writer.
const WINDOWS_AHEAD: usize = 2;
/// Chunk bytes a stream from a remote store may bring ahead of the decoder
/// ([`Room`]): what bounds a pull's memory when the link outruns the db.
const STREAM_ROOM: u64 = 64 << 20;

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
/// declares `processors` (see `restore_chunk`).
pub fn restore_source(
    source: &dyn ChunkSource,
    entry: &SourceEntry,
    processors: &[ProcessorVersion],
    verify: bool,
) -> Result<Restored> {
    restore_chunk(&get_chunk(source, entry)?, entry, processors, verify)
}

/// The verified bytes of the entry's chunk; a missing one is named by the
/// entry's path.
fn get_chunk(source: &dyn ChunkSource, entry: &SourceEntry) -> Result<Vec<u8>> {
    source.get_verified(&entry.chunk_hash).map_err(|e| match e {
        Error::ObjectMissing { hash, store } => Error::ChunkMissing {
            hash,
            path: entry.path.clone(),
            store,
        },
        other => other,
    })
}

/// Decodes one source's verified chunk `bytes`. With `verify`, restored
/// bytes that are the source's must also hash to the lockfile's
/// `input_hash`; an opaque chunk's cannot be checked ([`InputCheck`]).
pub(super) fn restore_chunk(
    bytes: &[u8],
    entry: &SourceEntry,
    processors: &[ProcessorVersion],
    verify: bool,
) -> Result<Restored> {
    let decoded = chunk::decode(bytes, entry)?;
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
    /// The store itself, past any cache ([`ChunkSource::streamed`]).
    Fresh,
}

/// Calls `each` with every entry and its restored source, in order (see
/// [`restore_chunk`] for `processors` and `verify`), on the calling thread
/// while the next windows are decoded. Chunks a cache does not hold (or,
/// [`Fetch::Fresh`], every chunk of a store with a cache in front) are
/// streamed from the store by a fetch thread as they arrive, overlapping
/// the requests with the decoding and the writing ([`Arrivals`]); the rest
/// are read where they are.
fn for_each_restored(
    source: &dyn ChunkSource,
    entries: &[SourceEntry],
    processors: &[ProcessorVersion],
    fetch: Fetch,
    verify: bool,
    progress: bool,
    each: impl FnMut(&SourceEntry, &Restored) -> Result<()>,
) -> Result<()> {
    let bar = progress.then(|| crate::progress::progress(entries.len(), "restoring"));
    let mut uses: HashMap<Hash, usize> = HashMap::new();
    let mut distinct = Vec::new();
    for entry in entries {
        *uses.entry(entry.chunk_hash).or_insert_with(|| {
            distinct.push(entry.chunk_hash);
            0
        }) += 1;
    }
    let streamed = source.streamed(&distinct, fetch == Fetch::Fresh);
    let arrivals = Arrivals::expecting(&streamed, &uses);
    let result = std::thread::scope(|scope| {
        if !streamed.is_empty() {
            scope.spawn(|| {
                let result = source.stream(&streamed, &arrivals.room, &|hash, bytes| {
                    arrivals.put(hash, bytes)
                });
                arrivals.end(result);
            });
        }
        let (decoded, windows) = sync_channel::<Result<Vec<Restored>>>(WINDOWS_AHEAD);
        let arrivals = &arrivals;
        scope.spawn(move || {
            let mut at = 0;
            while at < entries.len() {
                let restored = arrivals.next_window(&entries[at..]).and_then(|window| {
                    restore_window(source, &entries[at..], window, processors, verify)
                });
                at += restored.as_ref().map_or(0, Vec::len);
                let failed = restored.is_err();
                // A closed channel: the writer stopped; so do we.
                if decoded.send(restored).is_err() || failed {
                    break;
                }
            }
        });
        let result = write_in_order(entries, windows, bar.as_ref(), each);
        arrivals.close();
        result
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Decodes the first `window.len()` of `entries` in parallel, each from
/// its streamed bytes in `window` or, where `None`, from the source.
fn restore_window(
    source: &dyn ChunkSource,
    entries: &[SourceEntry],
    window: Vec<Option<Arc<Vec<u8>>>>,
    processors: &[ProcessorVersion],
    verify: bool,
) -> Result<Vec<Restored>> {
    entries[..window.len()]
        .par_iter()
        .zip(window)
        .map(|(entry, bytes)| {
            let bytes = match bytes {
                Some(bytes) => bytes,
                None => Arc::new(get_chunk(source, entry)?),
            };
            restore_chunk(&bytes, entry, processors, verify)
        })
        .collect()
}

/// Hands each decoded window from `windows` to `each`, entry by entry.
/// Dropping `windows` on return stops the decoder.
fn write_in_order(
    entries: &[SourceEntry],
    windows: Receiver<Result<Vec<Restored>>>,
    bar: Option<&indicatif::ProgressBar>,
    mut each: impl FnMut(&SourceEntry, &Restored) -> Result<()>,
) -> Result<()> {
    let mut at = 0;
    while at < entries.len() {
        let restored = windows
            .recv()
            .unwrap_or_else(|_| Err(Error::Remote("the decoding thread stopped".into())))?;
        for (entry, restored) in entries[at..].iter().zip(&restored) {
            each(entry, restored)?;
        }
        at += restored.len();
        if let Some(bar) = bar {
            bar.inc(restored.len() as u64);
        }
    }
    Ok(())
}

/// The chunks a stream brought that the decoder has not used up yet, each
/// held until its last use, then its room given back.
struct Arrivals {
    state: Mutex<Arrived>,
    changed: Condvar,
    room: Arc<Room>,
}

struct Arrived {
    /// Every streamed chunk not used up: its uses left, its bytes once here.
    chunks: HashMap<Hash, Expected>,
    /// How the stream ended; `None` while it runs.
    ended: Option<std::result::Result<(), Arc<Error>>>,
    /// The consumer stopped.
    closed: bool,
}

struct Expected {
    uses: usize,
    bytes: Option<Arc<Vec<u8>>>,
}

impl Arrivals {
    /// Expects `streamed`, each used as often as `uses` says.
    fn expecting(streamed: &[Hash], uses: &HashMap<Hash, usize>) -> Arrivals {
        let chunks = streamed
            .iter()
            .map(|hash| {
                let uses = uses.get(hash).copied().unwrap_or(1);
                (*hash, Expected { uses, bytes: None })
            })
            .collect();
        Arrivals {
            state: Mutex::new(Arrived {
                chunks,
                ended: None,
                closed: false,
            }),
            changed: Condvar::new(),
            room: Arc::new(Room::new(STREAM_ROOM)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Arrived> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chunk arrived; one nobody expects (a neighbour of the ones asked
    /// for) gives its room back at once. `None`: it will not come this way
    /// (another fetch is bringing it: the decoder gets it itself). `false`
    /// once the consumer stopped.
    fn put(&self, hash: Hash, bytes: Option<Vec<u8>>) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        let Some(bytes) = bytes else {
            state.chunks.remove(&hash);
            self.changed.notify_all();
            return true;
        };
        match state.chunks.get_mut(&hash) {
            Some(expected) if expected.bytes.is_none() => {
                expected.bytes = Some(Arc::new(bytes));
                self.changed.notify_all();
            }
            _ => self.room.give(bytes.len() as u64),
        }
        true
    }

    /// The stream ended.
    fn end(&self, result: Result<()>) {
        self.state().ended = Some(result.map_err(Arc::new));
        self.changed.notify_all();
    }

    /// The consumer stopped: the stream stops too.
    fn close(&self) {
        self.state().closed = true;
        self.room.close();
        self.changed.notify_all();
    }

    /// The next window of `entries` to decode: at most [`WINDOW`], as far
    /// as their chunks are here (waiting for the first one only), so the
    /// decoder keeps up with a stream that trickles in and takes big
    /// windows from one that is ahead. Each is its streamed bytes, or
    /// `None` where the chunk is not streamed (the caller reads it).
    fn next_window(&self, entries: &[SourceEntry]) -> Result<Vec<Option<Arc<Vec<u8>>>>> {
        let mut window = Vec::new();
        for entry in entries.iter().take(WINDOW) {
            match self.take(&entry.chunk_hash, window.is_empty())? {
                Take::Bytes(bytes) => window.push(Some(bytes)),
                Take::Elsewhere => window.push(None),
                Take::NotYet => break,
            }
        }
        Ok(window)
    }

    /// The bytes of `hash` if they are here, waiting for them if still to
    /// come and `wait`. Elsewhere if it is not streamed (or the stream
    /// ended without it: the caller gets it itself).
    fn take(&self, hash: &Hash, wait: bool) -> Result<Take> {
        let mut state = self.state();
        loop {
            let Some(expected) = state.chunks.get_mut(hash) else {
                return Ok(Take::Elsewhere);
            };
            if let Some(bytes) = expected.bytes.clone() {
                expected.uses -= 1;
                if expected.uses == 0 {
                    state.chunks.remove(hash);
                    self.room.give(bytes.len() as u64);
                }
                return Ok(Take::Bytes(bytes));
            }
            if state.closed {
                return Err(Error::Remote("the pull stopped".into()));
            }
            match &state.ended {
                Some(Err(error)) => return Err(error.share()),
                Some(Ok(())) => return Ok(Take::Elsewhere),
                None if !wait => return Ok(Take::NotYet),
                None => {}
            }
            self.room.waiting(true);
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            self.room.waiting(false);
        }
    }
}

/// What [`Arrivals::take`] found.
#[derive(Debug)]
enum Take {
    Bytes(Arc<Vec<u8>>),
    /// Not streamed: read it from the source.
    Elsewhere,
    /// Streamed, not here yet.
    NotYet,
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
    sweep_dead_pulls(&dir);
    let (_held, temp) = held_temp_db(&dir)
        .map_err(|e| Error::io(format!("writing --out-db {}", out_db.display()), e))?;
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

/// How a pull's temporary db beside its target is named: `<prefix><random><suffix>`.
const TEMP_DB_PREFIX: &str = ".mache-cachefs-pull-";
const TEMP_DB_SUFFIX: &str = ".db";

/// A new temporary db in `dir`, held under an exclusive `flock` for as long
/// as the returned file is open: that lock is how a later pull tells a live
/// pull's temporary db from one a killed pull left.
fn held_temp_db(dir: &Path) -> std::io::Result<(std::fs::File, tempfile::TempPath)> {
    tmp::create_held(|| Ok(shareable_temp_file(dir, TEMP_DB_PREFIX, TEMP_DB_SUFFIX)?.into_parts()))
}

/// Removes the temporary dbs (and their SQLite journals) that killed pulls
/// left in `dir`: those no live pull holds. Without this, a SIGKILL'd pull
/// left a db of up to the bundle's size beside the target for good.
fn sweep_dead_pulls(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(TEMP_DB_PREFIX) && name.ends_with(TEMP_DB_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        if tmp::is_unheld(&path) {
            let _ = std::fs::remove_file(dir.join(format!("{name}-journal")));
            let _ = std::fs::remove_file(&path);
        }
    }
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

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let bytes = vec![i; 1000];
        (Hash::of(&bytes), bytes)
    }

    #[test]
    fn arrivals_hand_out_each_chunk_as_often_as_it_is_used_then_give_its_room_back() {
        let (a, a_bytes) = chunk(1);
        let (b, b_bytes) = chunk(2);
        let (other, _) = chunk(3);
        let uses = HashMap::from([(a, 2), (b, 1)]);
        let arrivals = Arrivals::expecting(&[a, b], &uses);
        let bytes = |take: Result<Take>| match take.unwrap() {
            Take::Bytes(bytes) => bytes.to_vec(),
            other => panic!("{other:?}"),
        };
        assert!(
            matches!(arrivals.take(&other, true), Ok(Take::Elsewhere)),
            "not streamed: the caller gets it"
        );
        assert!(matches!(arrivals.take(&a, false), Ok(Take::NotYet)));
        // Out of order, and a neighbour nobody asked for.
        assert!(arrivals.put(b, Some(b_bytes.clone())));
        assert!(arrivals.put(other, Some(vec![0; 10])));
        assert!(arrivals.put(a, Some(a_bytes.clone())));
        assert_eq!(bytes(arrivals.take(&a, false)), a_bytes);
        assert_eq!(bytes(arrivals.take(&b, true)), b_bytes);
        assert_eq!(bytes(arrivals.take(&a, true)), a_bytes);
        assert!(arrivals.state().chunks.is_empty(), "all used up");
        arrivals.close();
        assert!(
            !arrivals.put(a, Some(a_bytes)),
            "a closed consumer stops the stream"
        );
    }

    #[test]
    fn a_waiting_decoder_gets_the_streams_failure_or_fetches_itself_after_a_clean_end() {
        let (a, _) = chunk(1);
        let (b, _) = chunk(2);
        let uses = HashMap::from([(a, 1), (b, 1)]);
        let arrivals = Arrivals::expecting(&[a, b], &uses);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| arrivals.take(&a, true).unwrap_err());
            arrivals.end(Err(Error::Remote("link down".into())));
            let err = waiter.join().unwrap();
            assert!(err.to_string().contains("link down"), "{err}");
        });
        let arrivals = Arrivals::expecting(&[a, b], &uses);
        assert!(arrivals.put(a, None));
        assert!(
            matches!(arrivals.take(&a, true), Ok(Take::Elsewhere)),
            "another fetch brings it: fetched by the caller, joining it"
        );
        arrivals.end(Ok(()));
        assert!(
            matches!(arrivals.take(&b, true), Ok(Take::Elsewhere)),
            "ended without it: fetched by the caller"
        );
    }

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
