//! The persistent disk cache in front of remote stores: every chunk fetched
//! from a registry (by mounts, pulls and verify alike) is kept under
//! `<cache dir>/chunks/<hex[0..2]>/<hex[2..]>`, shared by all bundles, so a
//! chunk several bundles share is fetched once.
//!
//! - **Verified on every read**: a copy that no longer hashes to its name is
//!   deleted and counted, and the caller fetches it again.
//! - **One cap for every process**: all the mounts, pulls and verifies
//!   using a cache directory share its byte cap. `<cache dir>/ledger` holds
//!   the bytes in `chunks/` and when they were last counted; it is changed
//!   only under an exclusive `flock` of it, in an order that a kill can
//!   make over-count but never under-count: a put adds its bytes before it
//!   links its chunk in, an eviction subtracts after it unlinks. A put the
//!   ledger says fits costs a read and a write of it. One that does not fit
//!   counts `chunks/` afresh (the truth, healing any drift) and, if the cap
//!   is truly reached, evicts the least recently used chunks by
//!   modification time across the whole directory (files are stamped on
//!   every put and hit, whichever process wrote them) down to 90% of the
//!   cap, so the next count is a tenth of the cap of puts away. A count an
//!   hour old is redone at the next put or open. Room is made before a
//!   chunk is linked in, so `chunks/` never holds more than the cap (of the
//!   process with the smallest cap, when they differ).
//! - **Never breaks a reader**: readers take a whole chunk into memory from
//!   an open file, and an unlinked file stays readable through it; another
//!   process's eviction is just a miss here.
//! - **No partial files, no debris**: a chunk is written as an unnamed
//!   file in its own directory and linked into place whole
//!   ([`super::unnamed`]); a killed writer leaves nothing, and writers do
//!   not queue on one shared directory. Where the file system cannot do
//!   that, a chunk is written to `tmp/` and renamed into place instead: a
//!   writer holds a `flock` on its temporary file until then, and
//!   temporary files older than an hour that no writer holds are what
//!   killed processes left, removed at open and by `gc --cache`.
//! - **Named blobs**: a registry blob named by its SHA-256 (a packed
//!   bundle's lockfile and pack index) is kept as a chunk plus a small
//!   `names/<digest>` file naming its BLAKE3; trimming drops names whose
//!   chunk is gone.
//! - **Never in the way**: a full or read-only cache directory only costs
//!   the caching (one warning); reads are still served from the network.
//! - **Compressed at rest**: a chunk is kept as one zstd frame (level
//!   [`AT_REST_LEVEL`], about 440 MB/s a core; source code shrinks about
//!   6×, AST chunks more) when that is smaller, else as it is, so the cap
//!   holds that many times more. A read tries a file that starts as a zstd
//!   frame decompressed (at most the frame's declared size, itself at most
//!   256 MiB) and then as it is: only bytes that hash to the chunk's
//!   name are served, and copies written before compression still read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tempfile::NamedTempFile;

use super::unnamed::{self, UnnamedFile};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// The default cap of the disk cache.
pub const DEFAULT_CAPACITY: u64 = 10 << 30;

/// How old a temporary file no writer holds must be to count as debris.
pub const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// How old the ledger's count may get before `chunks/` is counted again.
const RECOUNT_AFTER: Duration = Duration::from_secs(3600);

/// The ledger's file name in the cache directory.
const LEDGER: &str = "ledger";

/// The zstd level chunks are kept at.
pub const AT_REST_LEVEL: i32 = 3;

/// A cached frame declaring more than this is not decompressed.
const MAX_CHUNK: u64 = 256 << 20;

/// Counters of the disk cache, for the status file and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    pub hits: u64,
    pub misses: u64,
    /// Chunks this process evicted.
    pub evictions: u64,
    /// Cached copies found corrupt (deleted and fetched again).
    pub corrupt: u64,
    /// Bytes in the cache, all processes' chunks together.
    pub bytes: u64,
    pub capacity: u64,
}

/// The chunk cache directory.
pub struct DiskCache {
    root: PathBuf,
    capacity: u64,
    /// `None` when the directory takes no writes: nothing is cached then.
    ledger: Option<Ledger>,
    /// Whether chunks are written unnamed and linked in (else via `tmp/`).
    unnamed: bool,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    warned: AtomicBool,
}

impl DiskCache {
    /// Opens (creating) the cache at `root` with a cap of `capacity` bytes:
    /// sweeps debris from `tmp/` and trims what is there to the cap.
    pub fn open(root: &Path, capacity: u64) -> Result<DiskCache> {
        for dir in [root.join("chunks"), root.join("tmp")] {
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let swept = sweep_temp(root, false);
        if swept > 0 {
            tracing::debug!("disk cache: removed {swept} temporary files killed writers left");
        }
        let mut cache = DiskCache {
            root: root.to_path_buf(),
            capacity,
            ledger: None,
            unnamed: unnamed::supported_in(&root.join("tmp")),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        };
        match Ledger::open(root, true) {
            Ok(ledger) => cache.ledger = Some(ledger),
            Err(e) => cache.warn(&e),
        }
        if let Some(ledger) = &cache.ledger
            && let Err(e) = ledger.lock().and_then(|held| cache.make_room(&held, 0))
        {
            cache.warn(&e);
        }
        Ok(cache)
    }

    /// Where chunk `hash` is kept.
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        chunk_path(&self.root, hash)
    }

    /// Whether a copy of `hash` is on disk (not verified).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.path_of(hash).is_file()
    }

    /// The verified bytes of `hash`, if cached. A corrupt copy is deleted.
    pub fn get(&self, hash: &Hash) -> Option<Vec<u8>> {
        let path = self.path_of(hash);
        let Some((file, stored)) = read_whole(&path) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let bytes = match decompressed(&stored).filter(|raw| Hash::of(raw) == *hash) {
            Some(raw) => raw,
            None if Hash::of(&stored) == *hash => stored,
            None => {
                tracing::warn!(
                    "disk cache: {} is corrupt; fetching it again",
                    path.display()
                );
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.remove(&path);
                return None;
            }
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        let _ = file.set_modified(SystemTime::now());
        Some(bytes)
    }

    /// Keeps verified bytes of `hash`, making room for them first. Failures
    /// (a full disk) cost only the caching: one warning, nothing partial
    /// left. Bytes larger than the cap are not kept.
    pub fn put(&self, hash: &Hash, bytes: &[u8]) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        if bytes.len() as u64 > self.capacity || self.contains(hash) {
            return;
        }
        if let Err(e) = self.insert(ledger, hash, bytes) {
            self.warn(&e);
        }
    }

    /// Keeps verified bytes under their BLAKE3 and also findable by another
    /// content name (a registry's `sha256:` digest), for [`get_named`](Self::get_named).
    pub fn put_named(&self, name: &str, bytes: &[u8]) {
        let hash = Hash::of(bytes);
        self.put(&hash, bytes);
        let path = self.root.join("names").join(name_file(name));
        let hex = hash.to_hex();
        if fs::read(&path).is_ok_and(|said| said == hex.as_bytes()) {
            return;
        }
        // A name that says anything else (garbled) is replaced.
        let _ = fs::remove_file(&path);
        let written = self
            .write_pending(&path, hex.as_bytes())
            .and_then(|pending| pending.link_noclobber(&path));
        if let Err(e) = written {
            tracing::debug!("disk cache: not naming {name}: {e}");
        }
    }

    /// The verified bytes [`put_named`](Self::put_named) kept as `name`, if
    /// still cached. The caller checks them against the name too.
    pub fn get_named(&self, name: &str) -> Option<Vec<u8>> {
        let text = fs::read_to_string(self.root.join("names").join(name_file(name))).ok()?;
        self.get(&Hash::from_hex(text.trim()).ok()?)
    }

    /// The counters now.
    pub fn stats(&self) -> DiskStats {
        let tally = self
            .ledger
            .as_ref()
            .and_then(|ledger| ledger.lock().ok()?.read());
        DiskStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            bytes: tally.map_or(0, |t| t.bytes),
            capacity: self.capacity,
        }
    }

    /// Writes `bytes` (compressed, when that is smaller) as a file with no
    /// name yet, then under the ledger's lock makes room, counts them and
    /// links them in as chunk `hash`.
    fn insert(&self, ledger: &Ledger, hash: &Hash, bytes: &[u8]) -> io::Result<()> {
        let path = self.path_of(hash);
        let compressed = crate::compression::compress(bytes, AT_REST_LEVEL)?;
        let bytes = match compressed.len() < bytes.len() {
            true => &compressed[..],
            false => bytes,
        };
        let pending = self.write_pending(&path, bytes)?;
        let len = bytes.len() as u64;
        let held = ledger.lock()?;
        let before = self.make_room(&held, len)?;
        // Counted before it is linked in: a kill in between over-counts.
        held.write(Tally {
            bytes: before.bytes.saturating_add(len),
            ..before
        })?;
        match pending.link_noclobber(&path) {
            Ok(true) => Ok(()),
            Ok(false) => held.write(before),
            Err(e) => {
                held.write(before)?;
                Err(e)
            }
        }
    }

    /// `bytes` in a file that [`Pending::link_noclobber`] names `path`:
    /// unnamed in `path`'s directory (created if need be), or in `tmp/`
    /// where that cannot be.
    fn write_pending(&self, path: &Path, bytes: &[u8]) -> io::Result<Pending> {
        let dir = path.parent().expect("a chunk path has a parent");
        let mut pending = match self.unnamed {
            true => match UnnamedFile::create_in(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(dir)?;
                    Pending::Unnamed(UnnamedFile::create_in(dir)?)
                }
                created => Pending::Unnamed(created?),
            },
            false => {
                fs::create_dir_all(dir)?;
                Pending::Named(self.temp_file()?)
            }
        };
        pending.write_all(bytes)?;
        Ok(pending)
    }

    /// Under the ledger's lock: makes room for `need` more bytes. The
    /// ledger is trusted while its count is recent and says they fit;
    /// otherwise `chunks/` is counted and, if they truly do not fit, the
    /// least recently used chunks go, down to 90% of the cap. Returns the
    /// ledger as it now stands.
    fn make_room(&self, held: &Locked<'_>, need: u64) -> io::Result<Tally> {
        if let Some(tally) = held.read()
            && tally.is_recent()
            && tally.bytes.saturating_add(need) <= self.capacity
        {
            return Ok(tally);
        }
        let low_water = self.capacity - self.capacity / 10;
        let trimmed = shrink(
            &self.root,
            self.capacity.saturating_sub(need),
            low_water.saturating_sub(need),
            false,
        );
        self.evictions
            .fetch_add(trimmed.removed as u64, Ordering::Relaxed);
        let tally = Tally::counted_now(trimmed.bytes_left);
        held.write(tally)?;
        Ok(tally)
    }

    /// Removes a chunk file (a corrupt copy), subtracting it from the ledger.
    fn remove(&self, path: &Path) {
        let Some(held) = self.ledger.as_ref().and_then(|l| l.lock().ok()) else {
            return;
        };
        let Ok(meta) = fs::metadata(path) else {
            return;
        };
        if fs::remove_file(path).is_ok()
            && let Some(tally) = held.read()
        {
            let _ = held.write(Tally {
                bytes: tally.bytes.saturating_sub(meta.len()),
                ..tally
            });
        }
    }

    /// A new temporary file in `tmp/`, locked so no sweep takes it while
    /// this process writes it.
    fn temp_file(&self) -> io::Result<NamedTempFile> {
        let temp = NamedTempFile::new_in(self.root.join("tmp"))?;
        temp.as_file().lock()?;
        Ok(temp)
    }

    /// Warns once that the cache is not caching.
    fn warn(&self, e: &io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "disk cache {}: {e}; serving without caching",
                self.root.display()
            );
        }
    }
}

/// A chunk written and not yet linked in.
enum Pending {
    Unnamed(UnnamedFile),
    /// In `tmp/`, locked against sweeps.
    Named(NamedTempFile),
}

impl Pending {
    /// Names it `path` unless that is taken (`Ok(false)`, and it is dropped).
    fn link_noclobber(self, path: &Path) -> io::Result<bool> {
        match self {
            Pending::Unnamed(file) => file.link_noclobber(path),
            Pending::Named(temp) => match temp.persist_noclobber(path) {
                Ok(_) => Ok(true),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e.error),
            },
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Pending::Unnamed(file) => file.write_all(bytes),
            Pending::Named(temp) => temp.write_all(bytes),
        }
    }
}

/// A cached copy that is one zstd frame, decompressed; `None` for one
/// that is not (kept as it is), or declares no size or more than
/// [`MAX_CHUNK`].
fn decompressed(stored: &[u8]) -> Option<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if !stored.starts_with(&MAGIC) {
        return None;
    }
    let declared = zstd::zstd_safe::get_frame_content_size(stored).ok()??;
    if declared > MAX_CHUNK {
        return None;
    }
    crate::compression::decompress(stored, declared as usize)
        .ok()
        .filter(|raw| raw.len() as u64 == declared)
}

/// The open file and the whole contents of `path`.
fn read_whole(path: &Path) -> Option<(File, Vec<u8>)> {
    let mut file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some((file, bytes))
}

/// `<cache dir>/ledger`: the shared count of the bytes in `chunks/`.
struct Ledger {
    file: Mutex<File>,
}

impl Ledger {
    /// Opens the ledger at `root` for reading and writing (creating it if
    /// `create`).
    fn open(root: &Path, create: bool) -> io::Result<Ledger> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(root.join(LEDGER))?;
        Ok(Ledger {
            file: Mutex::new(file),
        })
    }

    /// Excludes the other threads (the mutex) and the other processes (an
    /// exclusive `flock`) until the guard is dropped.
    fn lock(&self) -> io::Result<Locked<'_>> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.lock()?;
        Ok(Locked { file })
    }
}

/// The ledger, held.
struct Locked<'a> {
    file: MutexGuard<'a, File>,
}

impl Locked<'_> {
    /// What the ledger says; `None` if it is new or garbled.
    fn read(&self) -> Option<Tally> {
        let mut buf = [0u8; 64];
        let len = self.file.read_at(&mut buf, 0).ok()?;
        Tally::parse(&buf[..len])
    }

    fn write(&self, tally: Tally) -> io::Result<()> {
        self.file.write_all_at(tally.to_text().as_bytes(), 0)
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The ledger's contents: the bytes in `chunks/`, and when (Unix seconds)
/// they were last counted rather than added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    counted: u64,
}

impl Tally {
    fn counted_now(bytes: u64) -> Tally {
        Tally {
            bytes,
            counted: unix_now(),
        }
    }

    /// Whether the last count is recent (a clock set back counts as old).
    fn is_recent(&self) -> bool {
        unix_now().abs_diff(self.counted) < RECOUNT_AFTER.as_secs()
    }

    /// Fixed width, so a rewrite in place leaves no tail of an older one.
    fn to_text(self) -> String {
        format!("{:020} {:020}\n", self.bytes, self.counted)
    }

    fn parse(text: &[u8]) -> Option<Tally> {
        let mut fields = std::str::from_utf8(text).ok()?.split_whitespace();
        let mut next = || fields.next()?.parse().ok();
        Some(Tally {
            bytes: next()?,
            counted: next()?,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file a content name is kept in: `sha256:ab…` as `sha256_ab…`
/// (anything but lowercase letters and digits becomes `_`).
fn name_file(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            _ => '_',
        })
        .collect()
}

/// What [`trim`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub removed: usize,
    pub bytes_freed: u64,
    pub bytes_left: u64,
}

/// Trims the cache at `root` to `cap` bytes, least recently used first
/// (without removing anything when `dry_run`), under the ledger's lock,
/// leaving the ledger with the count. For `gc --cache`.
pub fn trim(root: &Path, cap: u64, dry_run: bool) -> Trimmed {
    // Without a ledger (a read-only directory, or a dry run before any
    // cache was opened there) nobody else is writing: trim unlocked.
    let ledger = Ledger::open(root, !dry_run).ok();
    let held = ledger.as_ref().and_then(|l| l.lock().ok());
    let trimmed = shrink(root, cap, cap, dry_run);
    if let Some(held) = &held
        && !dry_run
    {
        let _ = held.write(Tally::counted_now(trimmed.bytes_left));
    }
    drop(held);
    if !dry_run {
        forget_dangling_names(root);
    }
    trimmed
}

/// Counts the chunks at `root` and, if they hold more than `limit` bytes,
/// removes the least recently used until at most `target` remain (without
/// removing anything when `dry_run`). The caller holds the ledger.
fn shrink(root: &Path, limit: u64, target: u64, dry_run: bool) -> Trimmed {
    let mut found = scan(&root.join("chunks"));
    let mut trimmed = Trimmed {
        bytes_left: found.iter().map(|(_, len, _)| *len).sum(),
        ..Trimmed::default()
    };
    if trimmed.bytes_left <= limit {
        return trimmed;
    }
    found.sort_by_key(|(_, _, used)| *used);
    for (hash, len, _) in found {
        if trimmed.bytes_left <= target {
            break;
        }
        if dry_run || fs::remove_file(chunk_path(root, &hash)).is_ok() {
            trimmed.removed += 1;
            trimmed.bytes_freed += len;
            trimmed.bytes_left -= len;
        }
    }
    trimmed
}

/// What a cache directory holds: its chunks and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub chunks: usize,
    pub bytes: u64,
}

/// Counts the chunks of the cache at `root` on disk (the truth, not the
/// ledger's figure, which may over-count), changing nothing. For `doctor`.
pub fn usage(root: &Path) -> Usage {
    let found = scan(&root.join("chunks"));
    Usage {
        chunks: found.len(),
        bytes: found.iter().map(|(_, len, _)| len).sum(),
    }
}

/// Removes (or, when `dry_run`, counts) the temporary files in
/// `<root>/tmp` that killed writers left: older than [`TEMP_GRACE`] and
/// locked by no writer (a live one holds its file locked until it is
/// renamed into place). Returns how many.
pub fn sweep_temp(root: &Path, dry_run: bool) -> usize {
    let Ok(entries) = fs::read_dir(root.join("tmp")) else {
        return 0;
    };
    let cutoff = SystemTime::now()
        .checked_sub(TEMP_GRACE)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| is_debris(path, cutoff))
        .filter(|path| dry_run || fs::remove_file(path).is_ok())
        .count()
}

/// Whether the temporary file at `path` was last written before `cutoff`
/// and no writer holds it.
fn is_debris(path: &Path, cutoff: SystemTime) -> bool {
    let old = fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.modified().is_ok_and(|t| t < cutoff));
    old && super::tmp::is_unheld(path)
}

/// Removes the names (see [`DiskCache::put_named`]) whose chunk is gone.
fn forget_dangling_names(root: &Path) {
    let Ok(names) = fs::read_dir(root.join("names")) else {
        return;
    };
    for name in names.flatten() {
        let target = fs::read_to_string(name.path())
            .ok()
            .and_then(|text| Hash::from_hex(text.trim()).ok());
        let present = target.is_some_and(|hash| chunk_path(root, &hash).is_file());
        if !present {
            let _ = fs::remove_file(name.path());
        }
    }
}

/// Where the cache at `root` keeps chunk `hash`.
fn chunk_path(root: &Path, hash: &Hash) -> PathBuf {
    let hex = hash.to_hex();
    root.join("chunks").join(&hex[..2]).join(&hex[2..])
}

/// Every cached chunk below `chunks`: its hash, length and last use.
fn scan(chunks: &Path) -> Vec<(Hash, u64, SystemTime)> {
    super::local::fanout_files(chunks)
        .into_iter()
        .filter_map(|(hash, file)| {
            let meta = file.metadata().ok()?;
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            Some((hash, meta.len(), used))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct chunks of `len` bytes each that do not compress (so
    /// they are kept as they are), with their hashes.
    fn chunks(n: u8, len: usize) -> Vec<(Hash, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut bytes = vec![0; len];
                blake3::Hasher::new()
                    .update(&[i])
                    .finalize_xof()
                    .fill(&mut bytes);
                (Hash::of(&bytes), bytes)
            })
            .collect()
    }

    #[test]
    fn chunks_are_kept_compressed_when_that_is_smaller_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let text = "fn main() { println!(\"hi\"); }\n".repeat(300).into_bytes();
        let text_hash = Hash::of(&text);
        cache.put(&text_hash, &text);
        let stored = fs::metadata(cache.path_of(&text_hash)).unwrap().len();
        assert!(stored * 20 < text.len() as u64, "{stored} bytes on disk");
        assert_eq!(cache.get(&text_hash).unwrap(), text);
        assert_eq!(
            cache.stats().bytes,
            stored,
            "the ledger counts what is on disk"
        );

        let (noise_hash, noise) = chunks(1, 4096).remove(0);
        cache.put(&noise_hash, &noise);
        assert_eq!(fs::read(cache.path_of(&noise_hash)).unwrap(), noise);
        assert_eq!(cache.get(&noise_hash).unwrap(), noise);

        // A chunk that is itself a zstd frame, kept as it is (as a cache
        // written before compression keeps every chunk), still reads.
        let frame = zstd::bulk::compress(b"inner bytes", 3).unwrap();
        let frame_hash = Hash::of(&frame);
        let path = cache.path_of(&frame_hash);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &frame).unwrap();
        assert_eq!(cache.get(&frame_hash).unwrap(), frame);

        // A compressed copy that no longer decompresses to its name is
        // corrupt: dropped, never served.
        fs::write(
            cache.path_of(&text_hash),
            zstd::bulk::compress(b"other", 3).unwrap(),
        )
        .unwrap();
        assert!(cache.get(&text_hash).is_none());
        assert_eq!(cache.stats().corrupt, 1);
    }

    /// The bytes really in `chunks/`.
    #[test]
    fn both_ways_of_writing_link_whole_chunks_leave_no_temporary_file_and_keep_the_first_copy() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
            assert!(cache.unnamed, "this machine's file system has O_TMPFILE");
            cache.unnamed = unnamed;
            let written = chunks(3, 4096);
            for (hash, bytes) in &written {
                cache.put(hash, bytes);
            }
            // A chunk already there is kept as it is, and counted once.
            let (hash, bytes) = &written[0];
            cache
                .insert(cache.ledger.as_ref().unwrap(), hash, bytes)
                .unwrap();
            for (hash, bytes) in &written {
                assert_eq!(cache.get(hash).as_ref(), Some(bytes), "unnamed: {unnamed}");
            }
            assert_eq!(
                cache.stats().bytes,
                on_disk(dir.path()),
                "unnamed: {unnamed}"
            );
            assert_eq!(on_disk(dir.path()), 3 * 4096);
            let left = fs::read_dir(dir.path().join("tmp")).unwrap().count();
            assert_eq!(left, 0, "unnamed: {unnamed}: tmp/ is empty");
        }
    }

    fn on_disk(root: &Path) -> u64 {
        scan(&root.join("chunks"))
            .iter()
            .map(|(_, len, _)| len)
            .sum()
    }

    fn set_ledger(root: &Path, tally: Tally) {
        fs::write(root.join(LEDGER), tally.to_text()).unwrap();
    }

    fn age(path: &Path, by: Duration) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    #[test]
    fn evicts_least_recently_used_first_down_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        let c = chunks(3, 100);
        cache.put(&c[0].0, &c[0].1);
        cache.put(&c[1].0, &c[1].1);
        assert!(cache.get(&c[0].0).is_some()); // 0 is now the most recent
        cache.put(&c[2].0, &c[2].1);
        assert!(cache.contains(&c[0].0));
        assert!(!cache.contains(&c[1].0), "the least recently used went");
        assert!(cache.contains(&c[2].0));
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.evictions), (200, 1));
        // A new process with a smaller cap trims to 90% of it at open.
        let again = DiskCache::open(dir.path(), 150).unwrap();
        assert_eq!(again.stats().bytes, 100);
        assert!(again.contains(&c[2].0), "the most recently used stays");
    }

    #[test]
    fn the_cap_holds_across_two_caches_and_each_evicts_what_the_other_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiskCache::open(dir.path(), 1000).unwrap();
        let b = DiskCache::open(dir.path(), 1000).unwrap();
        let c = chunks(30, 100);
        for (i, (hash, bytes)) in c.iter().enumerate() {
            let (writer, other) = if i % 3 == 0 { (&b, &a) } else { (&a, &b) };
            writer.put(hash, bytes);
            assert!(on_disk(dir.path()) <= 1000, "after put {i}");
            assert_eq!(other.stats().bytes, on_disk(dir.path()), "after put {i}");
            // The first chunk, A's, stays in use from B.
            assert!(b.get(&c[0].0).is_some(), "after put {i}");
        }
        assert!(a.stats().evictions > 0 && b.stats().evictions > 0);
        // Least recently used first, whoever wrote them: B's 3, A's 4.
        assert!(!a.contains(&c[3].0) && !b.contains(&c[4].0));
        assert_eq!(a.get(&c[0].0), Some(c[0].1.clone()), "used by B, kept");
    }

    #[test]
    fn usage_counts_the_chunks_on_disk_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(usage(dir.path()), Usage::default(), "no cache yet");
        assert!(!dir.path().join(LEDGER).exists());
        let cache = DiskCache::open(dir.path(), 1000).unwrap();
        for (hash, bytes) in chunks(3, 100) {
            cache.put(&hash, &bytes);
        }
        set_ledger(dir.path(), Tally::counted_now(5000));
        let counted = usage(dir.path());
        assert_eq!((counted.chunks, counted.bytes), (3, 300));
        assert_eq!(cache.stats().bytes, 5000, "the ledger is left as it was");
    }

    #[test]
    fn a_ledger_that_drifted_is_counted_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1000).unwrap();
        let c = chunks(9, 100);
        for (hash, bytes) in &c[..4] {
            cache.put(hash, bytes);
        }
        // A process killed between counting and linking: an over-count
        // that would mean evicting for nothing.
        set_ledger(dir.path(), Tally::counted_now(5000));
        cache.put(&c[4].0, &c[4].1);
        assert_eq!(cache.stats().bytes, 500);
        assert_eq!(cache.stats().evictions, 0, "counted, nothing evicted");
        // Chunks the ledger never heard of: the hourly count finds them.
        for (hash, bytes) in &c[5..] {
            fs::create_dir_all(cache.path_of(hash).parent().unwrap()).unwrap();
            fs::write(cache.path_of(hash), bytes).unwrap();
        }
        let stale = Tally {
            bytes: 0,
            counted: unix_now() - RECOUNT_AFTER.as_secs(),
        };
        set_ledger(dir.path(), stale);
        let again = DiskCache::open(dir.path(), 800).unwrap();
        assert_eq!(on_disk(dir.path()), 700);
        assert_eq!(again.stats().bytes, 700);
    }

    #[test]
    fn readers_on_one_cache_get_whole_chunks_while_another_evicts_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiskCache::open(dir.path(), 2000).unwrap();
        let b = DiskCache::open(dir.path(), 2000).unwrap();
        let c = chunks(40, 500);
        let stop = AtomicBool::new(false);
        let read = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut read = 0;
                while !stop.load(Ordering::Relaxed) {
                    for (hash, bytes) in &c {
                        if let Some(got) = a.get(hash) {
                            assert_eq!(&got, bytes);
                            read += 1;
                        }
                    }
                }
                read
            });
            for _ in 0..5 {
                for (hash, bytes) in &c {
                    b.put(hash, bytes);
                }
            }
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap()
        });
        assert!(b.stats().evictions >= 40, "{:?}", b.stats());
        assert_eq!(a.stats().corrupt, 0, "no torn read in {read} reads");
        assert!(on_disk(dir.path()) <= 2000);
        // And the plain case: a chunk unlinked under an open file.
        let (hash, bytes) = &c[39];
        let mut open = File::open(b.path_of(hash)).unwrap();
        fs::remove_file(b.path_of(hash)).unwrap();
        let mut got = Vec::new();
        open.read_to_end(&mut got).unwrap();
        assert_eq!(&got, bytes);
    }

    #[test]
    fn a_chunk_larger_than_the_cap_is_not_kept_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 150).unwrap();
        let c = chunks(2, 100);
        cache.put(&c[0].0, &c[0].1);
        let big = vec![7u8; 151];
        cache.put(&Hash::of(&big), &big);
        assert!(!cache.contains(&Hash::of(&big)));
        assert!(cache.contains(&c[0].0));
    }

    #[test]
    fn the_sweep_removes_old_debris_but_not_fresh_files_or_one_a_writer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let tmp = dir.path().join("tmp");
        let debris = tmp.join(".tmpdebris");
        let fresh = tmp.join(".tmpfresh");
        fs::write(&debris, b"left by a killed pull").unwrap();
        fs::write(&fresh, b"being written").unwrap();
        age(&debris, TEMP_GRACE + Duration::from_secs(60));
        let held = cache.temp_file().unwrap();
        age(held.path(), 2 * TEMP_GRACE);
        assert_eq!(sweep_temp(dir.path(), true), 1, "dry run");
        assert!(debris.exists());
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!debris.exists(), "swept at open");
        assert!(fresh.exists());
        assert!(held.path().exists(), "a live writer's file stays");
        assert_eq!(sweep_temp(dir.path(), false), 0);
        drop(held);
        let hash = Hash::of(b"x");
        cache.put(&hash, b"x");
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            1,
            "only the fresh file"
        );
    }

    #[test]
    fn named_bytes_are_found_by_name_until_trimmed_away() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put_named("sha256:ab12", b"a pack index");
        assert_eq!(cache.get_named("sha256:ab12").unwrap(), b"a pack index");
        assert!(cache.get_named("sha256:cd34").is_none());
        assert_eq!(trim(dir.path(), 0, true).removed, 1, "dry run");
        assert_eq!(cache.stats().bytes, 12, "a dry run changes nothing");
        trim(dir.path(), 0, false);
        assert_eq!(cache.stats().bytes, 0, "trim keeps the ledger");
        assert!(!dir.path().join("names/sha256_ab12").exists());
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.get_named("sha256:ab12").is_none());

        // A garbled name file is replaced by the next put, not kept.
        fs::write(dir.path().join("names/sha256_ab12"), b"garbled").unwrap();
        assert!(cache.get_named("sha256:ab12").is_none());
        cache.put_named("sha256:ab12", b"a pack index");
        assert_eq!(cache.get_named("sha256:ab12").unwrap(), b"a pack index");
    }

    #[test]
    fn a_full_cache_directory_costs_only_the_caching() {
        let dir = tempfile::tempdir().unwrap();
        for unnamed in [true, false] {
            let mut cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
            cache.unnamed = unnamed;
            // Nothing can be written: neither `tmp/` nor a chunk directory.
            fs::remove_dir_all(dir.path().join("tmp")).unwrap();
            fs::remove_dir_all(dir.path().join("chunks")).unwrap();
            fs::write(dir.path().join("chunks"), b"not a directory").unwrap();
            let hash = Hash::of(b"x");
            cache.put(&hash, b"x");
            assert!(!cache.contains(&hash));
            assert_eq!(cache.get(&hash), None);
            assert_eq!(cache.stats().bytes, 0, "unnamed: {unnamed}");
            assert!(cache.warned.load(Ordering::Relaxed), "unnamed: {unnamed}");
            fs::remove_file(dir.path().join("chunks")).unwrap();
        }
    }
}
