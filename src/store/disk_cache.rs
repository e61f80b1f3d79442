//! The persistent disk cache in front of remote stores: every chunk fetched
//! from a registry (by mounts, pulls and verify alike) is kept under
//! `<cache dir>/chunks/<hex[0..2]>/<hex[2..]>`, shared by all bundles, so a
//! chunk several bundles share is fetched once.
//!
//! - **Verified on every read**: a copy that no longer hashes to its name is
//!   deleted and counted, and the caller fetches it again.
//! - **Bounded**: a byte cap with least-recently-used eviction (the `lru`
//!   crate keeps the order; files are stamped on use so a later process
//!   starts from the same order). A chunk being read is never lost to
//!   eviction: readers take a whole chunk into memory from an open file,
//!   and an unlinked file stays readable through it.
//! - **Shared safely** by several mounts and pulls at once: a chunk is
//!   written to `tmp/` and renamed into place, so no reader sees a partial
//!   file; another process's eviction is just a miss here.
//! - **Named blobs**: a registry blob named by its SHA-256 (a packed
//!   bundle's lockfile and pack index) is kept as a chunk plus a small
//!   `names/<digest>` file naming its BLAKE3; trimming drops names whose
//!   chunk is gone.
//! - **Never in the way**: a full or read-only cache directory only costs
//!   the caching (one warning); reads are still served from the network.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use lru::LruCache;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;

/// The default cap of the disk cache.
pub const DEFAULT_CAPACITY: u64 = 10 << 30;

/// Counters of the disk cache, for the status file and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Cached copies found corrupt (deleted and fetched again).
    pub corrupt: u64,
    pub bytes: u64,
    pub capacity: u64,
}

/// The chunk cache directory.
pub struct DiskCache {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    warned: AtomicBool,
}

/// What this process knows is on disk, least recently used first.
struct Index {
    entries: LruCache<Hash, u64>,
    bytes: u64,
}

impl DiskCache {
    /// Opens (creating) the cache at `root` with a cap of `capacity` bytes,
    /// learning what earlier processes left there, oldest use first.
    pub fn open(root: &Path, capacity: u64) -> Result<DiskCache> {
        for dir in [root.join("chunks"), root.join("tmp")] {
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let mut found = scan(&root.join("chunks"));
        found.sort_by_key(|(_, _, used)| *used);
        let mut index = Index {
            entries: LruCache::unbounded(),
            bytes: 0,
        };
        for (hash, len, _) in found {
            index.entries.put(hash, len);
            index.bytes = index.bytes.saturating_add(len);
        }
        let cache = DiskCache {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(index),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        };
        cache.evict_to(capacity);
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
        let Ok(bytes) = fs::read(&path) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.forget(hash);
            return None;
        };
        if Hash::of(&bytes) != *hash {
            tracing::warn!(
                "disk cache: {} is corrupt; fetching it again",
                path.display()
            );
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.misses.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&path);
            self.forget(hash);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.lock().entries.promote(hash);
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Keeps verified bytes of `hash`. Failures (a full disk) cost only the
    /// caching: one warning, nothing partial left.
    pub fn put(&self, hash: &Hash, bytes: &[u8]) {
        if self.contains(hash) {
            return;
        }
        if let Err(e) = self.write(hash, bytes) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "disk cache {}: {e}; serving without caching",
                    self.root.display()
                );
            }
            return;
        }
        let len = bytes.len() as u64;
        {
            let mut index = self.lock();
            if index.entries.put(*hash, len).is_none() {
                index.bytes = index.bytes.saturating_add(len);
            }
        }
        self.evict_to(self.capacity);
    }

    /// Keeps verified bytes under their BLAKE3 and also findable by another
    /// content name (a registry's `sha256:` digest), for [`get_named`](Self::get_named).
    pub fn put_named(&self, name: &str, bytes: &[u8]) {
        let hash = Hash::of(bytes);
        self.put(&hash, bytes);
        let path = self.root.join("names").join(name_file(name));
        let written = fs::create_dir_all(self.root.join("names"))
            .and_then(|()| tempfile::NamedTempFile::new_in(self.root.join("tmp")))
            .and_then(|mut temp| {
                temp.write_all(hash.to_hex().as_bytes())?;
                temp.persist(&path).map_err(|e| e.error)?;
                Ok(())
            });
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

    fn write(&self, hash: &Hash, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path_of(hash);
        let mut temp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        temp.write_all(bytes)?;
        fs::create_dir_all(path.parent().expect("a chunk path has a parent"))?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Deletes least recently used chunks until at most `cap` bytes remain.
    fn evict_to(&self, cap: u64) {
        loop {
            let victim = {
                let mut index = self.lock();
                if index.bytes <= cap {
                    return;
                }
                let Some((hash, len)) = index.entries.pop_lru() else {
                    index.bytes = 0;
                    return;
                };
                index.bytes = index.bytes.saturating_sub(len);
                hash
            };
            let _ = fs::remove_file(self.path_of(&victim));
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forget(&self, hash: &Hash) {
        let mut index = self.lock();
        if let Some(len) = index.entries.pop(hash) {
            index.bytes = index.bytes.saturating_sub(len);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters now.
    pub fn stats(&self) -> DiskStats {
        DiskStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            bytes: self.lock().bytes,
            capacity: self.capacity,
        }
    }
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
/// (without removing anything when `dry_run`). For `gc --cache`, with no
/// cache open in this process.
pub fn trim(root: &Path, cap: u64, dry_run: bool) -> Trimmed {
    let mut found = scan(&root.join("chunks"));
    found.sort_by_key(|(_, _, used)| *used);
    let mut left: u64 = found.iter().map(|(_, len, _)| *len).sum();
    let mut trimmed = Trimmed::default();
    for (hash, len, _) in found {
        if left <= cap {
            break;
        }
        if dry_run || fs::remove_file(chunk_path(root, &hash)).is_ok() {
            trimmed.removed += 1;
            trimmed.bytes_freed += len;
            left -= len;
        }
    }
    trimmed.bytes_left = left;
    if !dry_run {
        forget_dangling_names(root);
    }
    trimmed
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

    #[test]
    fn evicts_least_recently_used_first_down_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100]).collect();
        let hashes: Vec<Hash> = chunks.iter().map(|c| Hash::of(c)).collect();
        cache.put(&hashes[0], &chunks[0]);
        cache.put(&hashes[1], &chunks[1]);
        assert!(cache.get(&hashes[0]).is_some()); // 0 is now the most recent
        cache.put(&hashes[2], &chunks[2]);
        assert!(cache.contains(&hashes[0]));
        assert!(!cache.contains(&hashes[1]), "the least recently used went");
        assert!(cache.contains(&hashes[2]));
        let stats = cache.stats();
        assert_eq!((stats.bytes, stats.evictions), (200, 1));
        // A new process sees what is there, and the same cap.
        let again = DiskCache::open(dir.path(), 100).unwrap();
        assert_eq!(again.stats().bytes, 100);
    }

    #[test]
    fn named_bytes_are_found_by_name_until_trimmed_away() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put_named("sha256:ab12", b"a pack index");
        assert_eq!(cache.get_named("sha256:ab12").unwrap(), b"a pack index");
        assert!(cache.get_named("sha256:cd34").is_none());
        drop(cache);
        trim(dir.path(), 0, false);
        assert!(!dir.path().join("names/sha256_ab12").exists());
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.get_named("sha256:ab12").is_none());
    }

    #[test]
    fn a_full_cache_directory_costs_only_the_caching() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        std::fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let hash = Hash::of(b"x");
        cache.put(&hash, b"x");
        assert!(!cache.contains(&hash));
        assert_eq!(cache.get(&hash), None);
    }
}
