//! The mount's in-memory cache of decoded chunk views, bounded in bytes,
//! with single flight.
//!
//! A *view* is what a file in the mount shows of a chunk: the source's
//! restored bytes (`sources/<path>`) or its rendered AST JSON
//! (`ast/<path>.json`). Both are pure functions of the chunk bytes, so a view
//! is keyed by `(chunk_hash, which view)` and two sources with the same chunk
//! share one entry.
//!
//! Built on `quick_cache`: its byte weigher bounds memory (however much is
//! read, the cache never holds more than its capacity), its shards let many
//! FUSE threads hit it at once, and its placeholder guard gives single
//! flight: the first reader of a cold key loads it while later readers of
//! the same key wait for that load instead of starting their own. A load that
//! fails inserts nothing (a verification failure is never cached); one waiter
//! then takes over the guard and tries again.
//!
//! A value too large for a shard (more than about a quarter of the
//! capacity) is not admitted by `quick_cache`; the most recent such value is
//! kept in a single side slot instead, so reading a huge file page by page
//! does not decode it again for every page. Memory is thus bounded by the
//! capacity plus that one value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::{Cache, GuardResult};
use quick_cache::{OptionsBuilder, Weighter};

use crate::error::Result;
use crate::hash::Hash;

/// Immutable bytes shared between the cache, open file handles and readers.
pub type Bytes = Arc<Vec<u8>>;

/// Bookkeeping bytes charged per entry on top of its length, so that a
/// cache full of empty files is bounded too.
const ENTRY_OVERHEAD: u64 = 96;

/// Shards of the cache. Each shard holds 1/SHARDS of the capacity and a
/// value larger than a shard is never admitted, so few shards keep large
/// files cacheable; a handful is plenty for a few FUSE threads.
const SHARDS: usize = 4;

/// Which view of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// The source's restored bytes.
    Source,
    /// The AST JSON rendering (`ast/<path>.json`).
    AstJson,
}

/// A cache key: one view of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub chunk: Hash,
    pub view: View,
}

#[derive(Clone)]
struct ByteWeigher;

impl Weighter<Key, Bytes> for ByteWeigher {
    fn weight(&self, _key: &Key, value: &Bytes) -> u64 {
        value.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Where a value handed out by [`ViewCache::get_or_load`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Already cached, or loaded by a concurrent caller this one waited for.
    Hit,
    /// Loaded by this call.
    Loaded,
}

/// The bytes-bounded, single-flight view cache.
pub struct ViewCache {
    inner: Cache<Key, Bytes, ByteWeigher>,
    capacity: u64,
    /// Largest weight a shard admits.
    admit_limit: u64,
    /// The last value too large for the cache.
    oversize: Mutex<Option<(Key, Bytes)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters of a [`ViewCache`], for the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: u64,
    pub capacity: u64,
}

impl ViewCache {
    /// A cache holding at most `capacity` bytes (views plus a small per-entry
    /// overhead).
    pub fn new(capacity: u64) -> ViewCache {
        let capacity = capacity.max(1);
        let options = OptionsBuilder::new()
            .shards(SHARDS)
            .estimated_items_capacity((capacity / 8192).clamp(64, 1 << 20) as usize)
            .weight_capacity(capacity)
            .build()
            .expect("cache options are valid");
        let inner =
            Cache::with_options(options, ByteWeigher, Default::default(), Default::default());
        // quick_cache admits an entry only within a shard's hot budget (97%).
        let admit_limit = inner.shard_capacity() / 100 * 97;
        ViewCache {
            inner,
            capacity,
            admit_limit,
            oversize: Mutex::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached value, if present, without waiting for a load in flight
    /// and without counting a hit or a miss.
    pub fn peek(&self, key: &Key) -> Option<Bytes> {
        self.inner.get(key).or_else(|| self.oversized(key))
    }

    /// [`peek`](Self::peek), counting a hit when the value is there. An
    /// absence is not counted: the caller then loads through
    /// [`get_or_load`](Self::get_or_load), which counts the miss (or the
    /// hit, if another load finished meanwhile).
    pub fn lookup(&self, key: &Key) -> Option<Bytes> {
        let found = self.peek(key);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn oversized(&self, key: &Key) -> Option<Bytes> {
        let slot = self.oversize.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The cached value, or the one `load` produces. Concurrent callers for
    /// the same key run `load` once between them; an `Err` from `load` is
    /// returned to its caller and nothing is cached.
    pub fn get_or_load(
        &self,
        key: Key,
        load: impl FnOnce() -> Result<Bytes>,
    ) -> Result<(Bytes, Origin)> {
        match self.inner.get_value_or_guard(&key, None) {
            GuardResult::Value(value) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok((value, Origin::Hit))
            }
            GuardResult::Guard(guard) => {
                if let Some(value) = self.oversized(&key) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((value, Origin::Hit));
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                let value = load()?;
                if ByteWeigher.weight(&key, &value) > self.admit_limit {
                    *self.oversize.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((key, value.clone()));
                }
                // Waiters get the value even when the cache does not admit it.
                let _ = guard.insert(value.clone());
                Ok((value, Origin::Loaded))
            }
            GuardResult::Timeout => unreachable!("no timeout was given"),
        }
    }

    /// Inserts `value` unless the key is already cached (used to keep a view
    /// that was produced as a by-product of loading another one).
    pub fn offer(&self, key: Key, value: Bytes) {
        if let GuardResult::Guard(guard) = self
            .inner
            .get_value_or_guard(&key, Some(Default::default()))
        {
            let _ = guard.insert(value);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.inner.len(),
            bytes: self.inner.weight(),
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::error::Error;

    fn key(n: u8) -> Key {
        Key {
            chunk: Hash([n; 32]),
            view: View::Source,
        }
    }

    #[test]
    fn concurrent_cold_readers_load_once() {
        let cache = ViewCache::new(1 << 20);
        let loads = AtomicUsize::new(0);
        let barrier = Barrier::new(16);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    barrier.wait();
                    let (value, _) = cache
                        .get_or_load(key(1), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Arc::new(b"bytes".to_vec()))
                        })
                        .unwrap();
                    assert_eq!(value.as_slice(), b"bytes");
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits), (1, 15));
    }

    #[test]
    fn failed_loads_are_not_cached() {
        let cache = ViewCache::new(1 << 20);
        let err = cache.get_or_load(key(2), || Err(Error::Usage("corrupt".into())));
        assert!(err.is_err());
        assert!(cache.peek(&key(2)).is_none());
        let (value, origin) = cache.get_or_load(key(2), || Ok(Arc::new(vec![7]))).unwrap();
        assert_eq!((value.as_slice(), origin), (&[7u8][..], Origin::Loaded));
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let cache = ViewCache::new(64 * 1024);
        for n in 0..=255u8 {
            cache
                .get_or_load(key(n), || Ok(Arc::new(vec![n; 4096])))
                .unwrap();
        }
        assert!(cache.stats().bytes <= 64 * 1024, "{:?}", cache.stats());
        assert!(cache.stats().entries > 0);
    }

    #[test]
    fn a_value_too_large_for_the_cache_is_kept_aside_once() {
        let cache = ViewCache::new(64 * 1024);
        let loads = AtomicUsize::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(vec![0u8; 100 * 1024]))
        };
        for _ in 0..3 {
            assert_eq!(cache.get_or_load(key(9), load).unwrap().0.len(), 100 * 1024);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(cache.stats().bytes <= 64 * 1024);
        assert!(cache.peek(&key(9)).is_some());
    }

    #[test]
    fn offer_keeps_an_existing_value() {
        let cache = ViewCache::new(1 << 20);
        cache.offer(key(3), Arc::new(vec![1]));
        cache.offer(key(3), Arc::new(vec![2]));
        assert_eq!(cache.peek(&key(3)).unwrap().as_slice(), &[1]);
    }
}
