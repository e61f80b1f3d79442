//! The mount: a lazy, verified, read-only view of one bundle.
//!
//! [`CacheFs::new`] is the one factory: it takes a resolved [`Bundle`] and
//! an `Arc<dyn ChunkSource>` and never learns where bytes come from. It
//! builds the inode table from the lockfile alone and fetches nothing.
//! The layers, bottom up:
//! - [`tree`]: names, directories and stable inode numbers;
//! - [`content`]: a file's bytes and size, through the memory cache;
//! - [`synth`]: the synthesized `mache.db`;
//! - [`status`]: counters and `.cachefs/status`;
//! - this module: attributes, directory listings, reads and xattrs as plain
//!   `Result`s, with no FUSE types, so they can be tested without mounting;
//! - [`fuse`]: the thin `fuser::Filesystem` adapter;
//! - [`mount`]: mounting, serving, signals, unmounting, prefetch.

pub mod content;
pub mod fuse;
pub mod mount;
pub mod status;
pub mod synth;
pub mod tree;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{Bytes, View, ViewCache};
use crate::error::{Error, Refusal, Result};
use crate::lockfile::Lockfile;
use crate::store::{Bundle, ChunkSource};

use content::{Content, Metered};
use status::{PrefetchStatus, Stats, Status, TreeStatus};
use synth::Synth;
use tree::{AstFiles, Node, Tree};

pub use fuse::IO_THREADS;
pub use mount::{ServeOptions, serve, unmount};

/// Default size of the memory cache of decoded chunks.
pub const DEFAULT_MEMORY_CACHE: u64 = 256 << 20;

/// Everything a mount needs besides the bundle and its chunk source.
#[derive(Debug, Clone)]
pub struct FsSettings {
    /// The ref the bundle was resolved from (shown in status and xattrs).
    pub reference: String,
    /// Where synthesized dbs are kept.
    pub cache_dir: PathBuf,
    /// Bytes of decoded chunks kept in memory.
    pub memory_cache: u64,
    /// Uid and gid that own every file (the mounting user).
    pub owner: (u32, u32),
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// The attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub nlink: u32,
    /// `0o444` or `0o555`.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// Changes while mounted (the status file): never cache its attributes.
    pub volatile: bool,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
    /// The offset that resumes the listing after this entry.
    pub next: u64,
}

/// Bytes answering a read.
#[derive(Debug)]
pub enum Data {
    Shared(Bytes, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Data {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Data::Shared(bytes, range) => &bytes[range.clone()],
            Data::Owned(bytes) => bytes,
        }
    }
}

/// Progress of `--prefetch`.
#[derive(Debug, Default)]
pub struct Prefetch {
    pub enabled: AtomicBool,
    pub warmed: AtomicU64,
    pub total: AtomicU64,
    pub finished: AtomicBool,
}

/// One mounted bundle.
pub struct CacheFs {
    lockfile: Arc<Lockfile>,
    lockfile_hash: crate::hash::Hash,
    settings: FsSettings,
    store: String,
    tree: Tree,
    content: Content,
    synth: Synth,
    metered: Arc<Metered>,
    stats: Arc<Stats>,
    /// Rendered on first use (it is not needed to mount).
    lock_toml: OnceLock<Vec<u8>>,
    /// Counted once, for the status document (rendered at every stat of it).
    distinct_chunks: usize,
    has_index: bool,
    /// Without a sizes index: whether the bundle's chunks are AST-shaped
    /// (so `ast/` exists), learned from one chunk on first need.
    ast_dir: OnceLock<bool>,
    mtime: SystemTime,
    /// The status document as last reported by `attr`.
    status_doc: Mutex<Option<Bytes>>,
    pub(crate) prefetch: Prefetch,
}

/// Extended attributes of source files.
const XATTR_CHUNK: &str = "user.mache.chunk_hash";
const XATTR_INPUT: &str = "user.mache.input_hash";
const XATTR_KIND: &str = "user.mache.kind";
/// Extended attributes of the root.
const XATTR_ROOT: &str = "user.mache.root";
const XATTR_REF: &str = "user.mache.ref";
const XATTR_LOCKFILE: &str = "user.mache.lockfile";

fn refused(r: Refusal) -> Error {
    Error::Refused(r)
}

impl CacheFs {
    /// Builds the filesystem for `bundle`, reading chunks from `source`.
    /// Reads no chunk: only the lockfile and the sizes index are used.
    pub fn new(bundle: Bundle, source: Arc<dyn ChunkSource>, settings: FsSettings) -> CacheFs {
        let Bundle {
            lockfile_hash,
            lockfile,
            sizes,
            ..
        } = bundle;
        let stats = Arc::new(Stats::default());
        let store = source.describe();
        let metered = Arc::new(Metered::new(source, stats.clone()));
        let ast_flags: Option<Vec<bool>> = sizes.as_ref().map(|index| {
            index
                .entries
                .iter()
                .map(|e| e.ast_json_len.is_some())
                .collect()
        });
        let lockfile = Arc::new(lockfile);
        let tree = Tree::build(
            lockfile.clone(),
            match &ast_flags {
                Some(flags) => AstFiles::Known(flags),
                None => AstFiles::Candidates,
            },
        );
        let has_index = sizes.is_some();
        let db_record = sizes.as_ref().and_then(|sizes| sizes.db.clone());
        let content = Content::new(
            lockfile.clone(),
            sizes,
            metered.clone(),
            ViewCache::new(settings.memory_cache),
            stats.clone(),
        );
        let synth = Synth::new(
            &settings.cache_dir,
            &lockfile,
            db_record,
            synth::BUILD_BACKOFF,
        );
        let mtime = UNIX_EPOCH + Duration::from_millis(lockfile.meta.generated_at_ms);
        let distinct_chunks = lockfile.distinct_chunks();
        CacheFs {
            lockfile,
            lockfile_hash,
            settings,
            store,
            tree,
            content,
            synth,
            metered,
            stats,
            lock_toml: OnceLock::new(),
            distinct_chunks,
            has_index,
            ast_dir: OnceLock::new(),
            mtime,
            status_doc: Mutex::new(None),
            prefetch: Prefetch::default(),
        }
    }

    /// The inode table.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The file contents layer.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The lockfile being served.
    pub fn lockfile(&self) -> &Lockfile {
        &self.lockfile
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether a sizes index was found (so listings read no chunk).
    pub fn has_index(&self) -> bool {
        self.has_index
    }

    fn node(&self, ino: u64) -> Result<Node> {
        self.tree.node(ino).ok_or(refused(Refusal::NoEntry))
    }

    /// Whether `ast/` is shown. With a sizes index it always is; without one
    /// it is once a chunk turns out AST-shaped (mache writes all chunks of a
    /// bundle in one shape). May fetch one chunk.
    pub fn ast_dir_visible(&self) -> Result<bool> {
        if self.has_index {
            return Ok(true);
        }
        if let Some(&visible) = self.ast_dir.get() {
            return Ok(visible);
        }
        let Some(probe) = self.first_placed_source() else {
            return Ok(*self.ast_dir.get_or_init(|| false));
        };
        let visible = self.content.is_ast(probe)?;
        Ok(*self.ast_dir.get_or_init(|| visible))
    }

    fn first_placed_source(&self) -> Option<usize> {
        (0..self.lockfile.sources.len()).find(|&i| {
            matches!(
                self.tree.node(tree::FIRST_FILE + 2 * i as u64),
                Some(Node::Source(_))
            )
        })
    }

    /// Whether answering for `ino` (its attributes, or a lookup or listing
    /// that returns it) might fetch a chunk, or render the lockfile's TOML
    /// (once; long for a large lockfile). Never builds the db.
    pub fn attr_may_block(&self, ino: u64) -> bool {
        match self.tree.node(ino) {
            Some(Node::Source(i)) => self.content.known_size(i as usize, View::Source).is_none(),
            Some(Node::Ast(i)) => self.content.known_size(i as usize, View::AstJson).is_none(),
            Some(Node::LockToml) => self.lock_toml.get().is_none(),
            _ => false,
        }
    }

    /// Whether every file's size is known without an open, so opens need
    /// not reach us: true once `mache.db` is built, or from the start when
    /// its push recorded its size.
    pub fn opens_stateless(&self) -> bool {
        self.synth.known_size().is_some()
    }

    /// Whether listing or looking up in directory `ino` might fetch a chunk.
    pub fn dir_may_block(&self, ino: u64) -> bool {
        ino == tree::ROOT && !self.has_index && self.ast_dir.get().is_none()
    }

    /// The attributes of `ino`. May fetch a chunk (a size not in the
    /// index); never builds the db.
    pub fn attr(&self, ino: u64) -> Result<Attr> {
        let (kind, size, nlink, volatile) = match self.node(ino)? {
            Node::Dir(_) => {
                let subdirs = self.tree.dir(ino).map_or(0, |d| d.subdirs);
                (Kind::Dir, 4096, 2 + subdirs, false)
            }
            Node::Source(i) => (
                Kind::File,
                self.content.size(i as usize, View::Source)?,
                1,
                false,
            ),
            Node::Ast(i) => (
                Kind::File,
                self.content.size(i as usize, View::AstJson)?,
                1,
                false,
            ),
            // Its size is recorded by the push, or known once it is built
            // (by the first open or read), never by a `stat`: until then 0,
            // and not to be cached, so the `stat` after an open sees the
            // real size.
            Node::MacheDb => match self.synth.known_size() {
                Some(size) => (Kind::File, size, 1, false),
                None => (Kind::File, 0, 1, true),
            },
            Node::LockToml => (Kind::File, self.lock_toml().len() as u64, 1, false),
            Node::Status => (Kind::File, self.status_snapshot(true).len() as u64, 1, true),
            Node::Absent => return Err(refused(Refusal::NoEntry)),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            nlink,
            perm: if kind == Kind::Dir { 0o555 } else { 0o444 },
            uid: self.settings.owner.0,
            gid: self.settings.owner.1,
            // A volatile file's mtime moves at every stat, so the kernel
            // (with FUSE_AUTO_INVAL_DATA) drops pages of an older snapshot.
            mtime: if volatile {
                SystemTime::now()
            } else {
                self.mtime
            },
            volatile,
        })
    }

    /// The attributes to hand out with a directory listing (READDIRPLUS):
    /// [`CacheFs::attr`], except that an entry whose size would need a fetch
    /// or the db build gets a placeholder marked volatile (size 0, not to be
    /// cached), so listing a directory never fetches; `stat` then asks again.
    pub fn listing_attr(&self, ino: u64) -> Result<Attr> {
        if !self.attr_may_block(ino) {
            return self.attr(ino);
        }
        Ok(Attr {
            ino,
            kind: Kind::File,
            size: 0,
            nlink: 1,
            perm: 0o444,
            uid: self.settings.owner.0,
            gid: self.settings.owner.1,
            mtime: self.mtime,
            volatile: true,
        })
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if !matches!(self.node(parent)?, Node::Dir(_)) {
            return Err(refused(Refusal::NotADirectory));
        }
        let ino = self
            .tree
            .lookup(parent, name)
            .ok_or(refused(Refusal::NoEntry))?;
        if ino == tree::AST && !self.ast_dir_visible()? {
            return Err(refused(Refusal::NoEntry));
        }
        self.attr(ino)
    }

    /// The entries of directory `ino` after `offset` (`.` and `..` first),
    /// until `add` returns `true` (its buffer is full).
    pub fn readdir(&self, ino: u64, offset: u64, mut add: impl FnMut(Entry) -> bool) -> Result<()> {
        self.node(ino)?;
        let dir = self.tree.dir(ino).ok_or(refused(Refusal::NotADirectory))?;
        let children = self.tree.children(dir);
        let hide_ast = ino == tree::ROOT && !self.ast_dir_visible().unwrap_or(false);
        let dots = [(ino, "."), (dir.parent, "..")];
        let total = 2 + children.len() as u64;
        for position in offset..total {
            let (child, name) = match position {
                0 | 1 => {
                    let (ino, name) = dots[position as usize];
                    (ino, std::borrow::Cow::Borrowed(name))
                }
                _ => {
                    let child = &children[(position - 2) as usize];
                    (child.ino, self.tree.name(child))
                }
            };
            if hide_ast && child == tree::AST {
                continue;
            }
            let kind = match self.tree.node(child) {
                Some(Node::Dir(_)) => Kind::Dir,
                _ => Kind::File,
            };
            let entry = Entry {
                ino: child,
                kind,
                name: name.into_owned(),
                next: position + 1,
            };
            if add(entry) {
                break;
            }
        }
        Ok(())
    }

    /// Checks that `ino` may be opened for reading. Opening `mache.db`
    /// builds it if needed. Reads need no open state: they name the inode.
    pub fn open(&self, ino: u64, write: bool) -> Result<()> {
        let node = self.node(ino)?;
        if write {
            return Err(refused(Refusal::ReadOnly));
        }
        match node {
            Node::Dir(_) => Err(refused(Refusal::IsADirectory)),
            // Opened to learn its size: built now. With the size known,
            // its first read builds it.
            Node::MacheDb if self.synth.known_size().is_none() => self.db().map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Whether opening `ino` might build the db.
    pub fn open_may_block(&self, ino: u64) -> bool {
        ino == tree::MACHE_DB && self.synth.known_size().is_none()
    }

    /// Up to `size` bytes of file `ino` from `offset`. The first read of a
    /// source or AST view fetches, verifies and decodes its chunk, unless it
    /// is in memory. The status file is rendered anew for a read from
    /// offset 0 and padded to a fixed size, so the bytes always match the
    /// size the kernel was told.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Data> {
        self.read_or_wait(ino, offset, size, true)
            .expect("a read that may wait always answers")
    }

    /// [`CacheFs::read`] if it needs no fetch, no db build and no rendering
    /// of the lockfile (a view in memory, the status file, the lockfile
    /// rendered before, a built db); `None` when it would have to wait.
    pub fn read_now(&self, ino: u64, offset: u64, size: u32) -> Option<Result<Data>> {
        self.read_or_wait(ino, offset, size, false)
    }

    fn read_or_wait(&self, ino: u64, offset: u64, size: u32, wait: bool) -> Option<Result<Data>> {
        let window = |len: usize| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
            start..start.saturating_add(size as usize).min(len)
        };
        let shared = |bytes: Bytes| {
            let range = window(bytes.len());
            Data::Shared(bytes, range)
        };
        let view = |i: u32, view: View| match wait {
            true => Some(self.content.bytes(i as usize, view).map(shared)),
            false => self.content.cached(i as usize, view).map(|b| Ok(shared(b))),
        };
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(e) => return Some(Err(e)),
        };
        match node {
            Node::Source(i) => view(i, View::Source),
            Node::Ast(i) => view(i, View::AstJson),
            Node::LockToml if !wait && self.lock_toml.get().is_none() => None,
            Node::LockToml => {
                let toml = self.lock_toml();
                Some(Ok(Data::Owned(toml[window(toml.len())].to_vec())))
            }
            // A read from the start gets a new snapshot; later offsets
            // continue the one it got. Snapshots all have one size.
            Node::Status => Some(Ok(shared(self.status_snapshot(offset == 0)))),
            Node::MacheDb if !wait && self.synth.ready().is_none() => None,
            Node::MacheDb => Some(
                self.db()
                    .and_then(|db| self.read_db(db, window(db.size as usize))),
            ),
            Node::Dir(_) => Some(Err(refused(Refusal::IsADirectory))),
            Node::Absent => Some(Err(refused(Refusal::NoEntry))),
        }
    }

    fn read_db(&self, db: &synth::BuiltDb, range: std::ops::Range<usize>) -> Result<Data> {
        let mut buf = vec![0; range.len()];
        let mut done = 0;
        while done < buf.len() {
            let n = db
                .file
                .read_at(&mut buf[done..], (range.start + done) as u64)
                .map_err(|e| Error::io(format!("reading {}", self.synth.path().display()), e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Data::Owned(buf))
    }

    /// The status document: rendered now when `fresh` (or never rendered),
    /// else the one last rendered.
    fn status_snapshot(&self, fresh: bool) -> Bytes {
        let mut snapshot = self.status_doc.lock().unwrap_or_else(|e| e.into_inner());
        match &*snapshot {
            Some(doc) if !fresh => doc.clone(),
            _ => {
                let doc = Arc::new(self.status().to_bytes());
                *snapshot = Some(doc.clone());
                doc
            }
        }
    }

    fn lock_toml(&self) -> &[u8] {
        self.lock_toml
            .get_or_init(|| crate::lockfile::text::to_toml(&self.lockfile).into_bytes())
    }

    /// The built db (building it now if needed).
    fn db(&self) -> Result<&synth::BuiltDb> {
        self.synth.get(&self.metered, &self.lockfile, &self.stats)
    }

    /// Builds (or finds) `mache.db` now; used by prefetch.
    pub fn build_db(&self) -> Result<()> {
        self.db().map(|_| ())
    }

    /// The names of `ino`'s extended attributes, NUL-terminated and concatenated.
    pub fn xattr_names(&self, ino: u64) -> Result<Vec<u8>> {
        let names: &[&str] = match self.node(ino)? {
            Node::Source(_) => &[XATTR_CHUNK, XATTR_INPUT, XATTR_KIND],
            _ if ino == tree::ROOT => &[XATTR_ROOT, XATTR_REF, XATTR_LOCKFILE],
            _ => &[],
        };
        let mut out = Vec::new();
        for name in names {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// The value of extended attribute `name` of `ino`.
    ///
    /// Names outside the `user.` namespace (`security.selinux`,
    /// `system.posix_acl_access`, ...) are EOPNOTSUPP rather than ENODATA:
    /// `ls -l` asks for those on every file, and "not supported" lets it
    /// remember that for the whole filesystem instead of asking the kernel,
    /// and so this process, once per file.
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.node(ino)?;
        if !name.starts_with(b"user.") {
            return Err(refused(Refusal::UnsupportedAttribute));
        }
        let name = std::str::from_utf8(name).map_err(|_| refused(Refusal::NoAttribute))?;
        let value = match (self.node(ino)?, name) {
            (Node::Source(i), XATTR_CHUNK) => self.lockfile.sources[i as usize].chunk_hash.to_hex(),
            (Node::Source(i), XATTR_INPUT) => self.lockfile.sources[i as usize].input_hash.to_hex(),
            (Node::Source(i), XATTR_KIND) => self.lockfile.sources[i as usize].kind.clone(),
            (_, XATTR_ROOT) if ino == tree::ROOT => self.lockfile.root.to_hex(),
            (_, XATTR_REF) if ino == tree::ROOT => self.settings.reference.clone(),
            (_, XATTR_LOCKFILE) if ino == tree::ROOT => self.lockfile_hash.to_hex(),
            _ => return Err(refused(Refusal::NoAttribute)),
        };
        Ok(value.into_bytes())
    }

    /// The status document now.
    pub fn status(&self) -> Status {
        let counts = self.tree.counts();
        Status {
            reference: self.settings.reference.clone(),
            store: self.store.clone(),
            root: self.lockfile.root.to_prefixed(),
            lockfile: self.lockfile_hash.to_prefixed(),
            sources: self.lockfile.sources.len(),
            distinct_chunks: self.distinct_chunks,
            sizes_index: self.has_index,
            tree: TreeStatus {
                source_files: counts.source_files,
                ast_files: if self.ast_dir.get() == Some(&false) {
                    0
                } else {
                    counts.ast_files
                },
                directories: counts.directories,
                unsafe_paths: counts.unsafe_paths,
                conflicts: counts.conflicts,
            },
            counters: self.stats.snapshot(),
            cache: self.content.cache().stats().into(),
            mache_db: self.synth.status(),
            prefetch: PrefetchStatus {
                enabled: self.prefetch.enabled.load(Ordering::Relaxed),
                chunks_warmed: self.prefetch.warmed.load(Ordering::Relaxed),
                chunks_total: self.prefetch.total.load(Ordering::Relaxed),
                finished: self.prefetch.finished.load(Ordering::Relaxed),
            },
            remote: self.metered.remote_status(),
        }
    }

    /// Totals for `statfs`: bytes of files whose size is known, and inodes.
    pub fn totals(&self) -> (u64, u64) {
        let n = self.lockfile.sources.len();
        // Sizes come from the sizes index, which no hash covers: saturate
        // rather than overflow on a hostile one.
        let bytes = (0..n)
            .flat_map(|i| [View::Source, View::AstJson].map(|v| self.content.known_size(i, v)))
            .fold(0u64, |total, size| total.saturating_add(size.unwrap_or(0)));
        (bytes, self.tree.max_ino())
    }
}

#[cfg(test)]
mod tests;
