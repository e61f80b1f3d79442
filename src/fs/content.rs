//! What a file's bytes are, and how big it is.
//!
//! A source's file shows its chunk decoded: the restored source bytes under
//! `sources/`, the AST view under `ast/`. Bytes come from the chunk source
//! (whatever store is behind it) through [`Metered`], which counts fetches,
//! and are kept in the [`ViewCache`]. Every chunk is verified by the store
//! against its `chunk_hash`, and every restored source against the
//! lockfile's `input_hash` unless its chunk is opaque (processor output,
//! served as stored: see [`chunk::InputCheck`]); a failure is an error for
//! that file only, is logged and counted, and is never cached.
//!
//! Sizes come from the sizes index our push writes, so listing a bundle
//! reads no chunk. A bundle without one (written by the Go mache) learns a
//! file's size from its chunk the first time it is needed. The index is an
//! accelerator, not part of the verified bundle: if a decoded view's length
//! disagrees with it, the file fails rather than serve bytes that do not
//! match the size the kernel was told.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bundle::restore_source;
use crate::cache::{Bytes, Key, Origin, View, ViewCache};
use crate::chunk;
use crate::error::{Error, Result};
use crate::fs::status::Stats;
use crate::hash::Hash;
use crate::lockfile::{Lockfile, SourceEntry};
use crate::store::{ChunkSource, Room, SizeIndex, StreamSink};

/// Marks a size not learned yet.
const UNKNOWN: u64 = u64::MAX;
/// Marks "this source has no AST view" in the learned AST sizes.
const NO_AST: u64 = u64::MAX - 1;

/// A chunk source that counts what is fetched from the one it wraps.
pub struct Metered {
    inner: Arc<dyn ChunkSource>,
    stats: Arc<Stats>,
}

impl Metered {
    pub fn new(inner: Arc<dyn ChunkSource>, stats: Arc<Stats>) -> Metered {
        Metered { inner, stats }
    }
}

impl ChunkSource for Metered {
    fn get_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        let result = self.inner.get_verified(hash);
        self.stats
            .fetched(result.as_ref().map_or(0, |b| b.len() as u64));
        result
    }

    fn warm(&self, hashes: &[Hash]) -> Result<()> {
        self.inner.warm(hashes)
    }

    fn streamed(&self, hashes: &[Hash], fresh: bool) -> Vec<Hash> {
        self.inner.streamed(hashes, fresh)
    }

    fn stream(&self, hashes: &[Hash], room: &Arc<Room>, sink: &StreamSink<'_>) -> Result<()> {
        self.inner.stream(hashes, room, &|hash, bytes| {
            if let Some(bytes) = &bytes {
                self.stats.fetched(bytes.len() as u64);
            }
            sink(hash, bytes)
        })
    }

    fn remote_status(&self) -> Option<crate::store::RemoteStatus> {
        self.inner.remote_status()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The bytes and sizes of every source's files.
pub struct Content {
    lockfile: Arc<Lockfile>,
    index: Option<SizeIndex>,
    /// Per source, sizes learned from decoded chunks (no index only).
    learned_source: Box<[AtomicU64]>,
    learned_ast: Box<[AtomicU64]>,
    source: Arc<Metered>,
    cache: ViewCache,
    stats: Arc<Stats>,
}

impl Content {
    pub fn new(
        lockfile: Arc<Lockfile>,
        index: Option<SizeIndex>,
        source: Arc<Metered>,
        cache: ViewCache,
        stats: Arc<Stats>,
    ) -> Content {
        let unknown = |n: usize| (0..n).map(|_| AtomicU64::new(UNKNOWN)).collect();
        let learned = if index.is_some() {
            0
        } else {
            lockfile.sources.len()
        };
        Content {
            learned_source: unknown(learned),
            learned_ast: unknown(learned),
            lockfile,
            index,
            source,
            cache,
            stats,
        }
    }

    /// The lockfile's sources.
    pub fn sources(&self) -> &[SourceEntry] {
        &self.lockfile.sources
    }

    /// The view cache.
    pub fn cache(&self) -> &ViewCache {
        &self.cache
    }

    /// The size of source `i`'s `view`, if known without fetching.
    pub fn known_size(&self, i: usize, view: View) -> Option<u64> {
        if let Some(index) = &self.index {
            let sizes = index.entries[i];
            return match view {
                View::Source => Some(sizes.content_len),
                View::AstJson => sizes.ast_json_len,
            };
        }
        let learned = match view {
            View::Source => self.learned_source[i].load(Ordering::Relaxed),
            View::AstJson => self.learned_ast[i].load(Ordering::Relaxed),
        };
        (learned < NO_AST).then_some(learned)
    }

    /// The stored length of source `i`'s chunk, if the sizes index gives it.
    pub fn chunk_len(&self, i: usize) -> Option<u64> {
        self.index.as_ref().map(|index| index.entries[i].chunk_len)
    }

    /// Whether chunks come from a remote store, through its disk cache.
    pub fn is_remote(&self) -> bool {
        self.source.remote_status().is_some()
    }

    /// Fetches the chunks of sources `indices` into the store's disk cache,
    /// many requests at once (a no-op for a local store).
    pub fn warm_store(&self, indices: &[usize]) -> Result<()> {
        let hashes: Vec<Hash> = indices
            .iter()
            .map(|&i| self.lockfile.sources[i].chunk_hash)
            .collect();
        self.source.warm(&hashes)
    }

    /// The size of source `i`'s `view`, fetching its chunk if it is not known.
    pub fn size(&self, i: usize, view: View) -> Result<u64> {
        if let Some(size) = self.known_size(i, view) {
            return Ok(size);
        }
        Ok(self.bytes(i, view)?.len() as u64)
    }

    /// Whether source `i`'s chunk is AST-shaped, fetching it if no index says.
    pub fn is_ast(&self, i: usize) -> Result<bool> {
        if let Some(index) = &self.index {
            return Ok(index.entries[i].ast_json_len.is_some());
        }
        match self.learned_ast[i].load(Ordering::Relaxed) {
            NO_AST => return Ok(false),
            UNKNOWN => {}
            _ => return Ok(true),
        }
        self.bytes(i, View::Source)?;
        Ok(self.learned_ast[i].load(Ordering::Relaxed) != NO_AST)
    }

    /// Source `i`'s `view` if it is in memory now (no fetch, no waiting),
    /// counted as a cache hit.
    pub fn cached(&self, i: usize, view: View) -> Option<Bytes> {
        self.cache.lookup(&self.key(i, view))
    }

    /// Source `i`'s `view`: from the cache, or fetched, verified and decoded
    /// (once, however many readers ask at the same time).
    pub fn bytes(&self, i: usize, view: View) -> Result<Bytes> {
        let (bytes, _) = self
            .cache
            .get_or_load(self.key(i, view), || self.load(i, view))
            .inspect_err(|e| self.stats.failed(&self.describe(i, view), e))?;
        Ok(bytes)
    }

    /// Makes sure source `i`'s source view is in memory; returns whether
    /// this call fetched it.
    pub fn warm(&self, i: usize) -> Result<bool> {
        let key = self.key(i, View::Source);
        let (_, origin) = self
            .cache
            .get_or_load(key, || self.load(i, View::Source))
            .inspect_err(|e| self.stats.failed(&self.describe(i, View::Source), e))?;
        Ok(origin == Origin::Loaded)
    }

    /// The file a view is shown as, for messages.
    pub fn describe(&self, i: usize, view: View) -> String {
        let path = &self.lockfile.sources[i].path;
        match view {
            View::Source => format!("sources/{path}"),
            View::AstJson => format!("ast/{path}.json"),
        }
    }

    fn key(&self, i: usize, view: View) -> Key {
        Key {
            chunk: self.lockfile.sources[i].chunk_hash,
            view,
        }
    }

    /// Fetches, verifies and decodes source `i`'s chunk into `view`.
    fn load(&self, i: usize, view: View) -> Result<Bytes> {
        let entry = &self.lockfile.sources[i];
        let processors = &self.lockfile.meta.input_processors;
        let decoded = restore_source(self.source.as_ref(), entry, processors, true)?.decoded;
        let content_len = decoded.source.content.len() as u64;
        self.check_size(i, View::Source, content_len)?;
        let ast_len = decoded
            .ast
            .as_ref()
            .map(|nodes| chunk::ast_view_len(&decoded.source, nodes));
        if self.index.is_none() {
            self.learned_source[i].store(content_len, Ordering::Relaxed);
            self.learned_ast[i].store(ast_len.unwrap_or(NO_AST), Ordering::Relaxed);
        }
        match view {
            View::Source => Ok(Arc::new(decoded.source.content)),
            View::AstJson => {
                let Some(nodes) = decoded.ast.as_deref() else {
                    return Err(Error::BadChunk {
                        hash: entry.chunk_hash,
                        reason: format!(
                            "source {:?} has a raw chunk, so it has no AST view",
                            entry.path
                        ),
                    });
                };
                let json = chunk::render_ast_view(&decoded.source, nodes);
                self.check_size(i, View::AstJson, json.len() as u64)?;
                self.cache
                    .offer(self.key(i, View::Source), Arc::new(decoded.source.content));
                Ok(Arc::new(json))
            }
        }
    }

    /// Fails if the sizes index promised a different length.
    fn check_size(&self, i: usize, view: View, actual: u64) -> Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        let promised = match view {
            View::Source => Some(index.entries[i].content_len),
            View::AstJson => index.entries[i].ast_json_len,
        };
        match promised {
            Some(promised) if promised != actual => Err(Error::BadLockfile(format!(
                "sizes index says {} is {promised} bytes, its verified bytes are {actual}",
                self.describe(i, view)
            ))),
            _ => Ok(()),
        }
    }
}
