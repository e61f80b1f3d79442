//! The `fuser::Filesystem` adapter: thin handlers that call [`CacheFs`] and
//! turn its answers into replies.
//!
//! Every handler runs its operation and ends in one place: `Ok` becomes the
//! reply, `Err` becomes `reply.error(errno)` with the errno from
//! [`Error::errno`]. Each operation runs in one of three places
//! ([`Lane`]), so that nothing waits behind a slow chunk but what needs it:
//! - on the FUSE thread, if it needs no fetch and no db build: every
//!   metadata request whose answer is known (from the lockfile, the sizes
//!   index or sizes already learned), `statfs`, xattrs, the status file,
//!   and reads of what is in memory. The FUSE threads never wait on the
//!   store, so they are never all taken by blocking work;
//! - on the metadata pool ([`IoPools`], bounded), if it may take long: the
//!   lookup, `getattr` or root listing of a bundle without a sizes index,
//!   whose answer needs a size or shape not learned yet (it waits, or
//!   fails, for that file only), and the first rendering of
//!   `mache.lock.toml`;
//! - on the read pool (bounded, separate), a read that may fetch a chunk
//!   or render the lockfile, and the `mache.db` build of its first open or
//!   read.
//!
//! So metadata never queues behind reads, however many readers wait on a
//! hung registry; and the kernel may keep as many reads in flight as the
//! read pool has threads (`max_background`).
//!
//! Reads are stateless (they name the inode), so where the kernel supports
//! it the mount asks for no OPEN/OPENDIR requests at all
//! (`FUSE_NO_OPEN_SUPPORT`, `FUSE_NO_OPENDIR_SUPPORT`): the kernel then keeps
//! file pages and directory listings cached across opens by itself, and a
//! warm `tar` of the tree costs no round trip per file. FLUSH is answered
//! ENOSYS once, so close(2) stops sending it.
//!
//! Every write-like operation is refused with EROFS (the mount is also
//! read-only at the VFS level, so most never reach us).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::status::Op;
use super::{Attr, CacheFs, Kind};
use crate::error::{Error, Refusal, Result};

/// Attribute and entry TTL: the content is immutable for the mount's life.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// TTL of attributes that change (the status file): none, or the kernel
/// would keep serving the size of an old snapshot.
const NO_TTL: Duration = Duration::ZERO;

/// Threads of each I/O pool by default: at most this many operations of one
/// kind wait on the store at once; more queue behind them.
pub const IO_THREADS: usize = 64;

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// On the calling (FUSE) thread: it needs no fetch and no build.
    Now,
    /// On the metadata pool: an attribute, lookup or listing that may fetch.
    Metadata,
    /// On the read pool: a read that may fetch, or the db build.
    Read,
}

impl Lane {
    /// [`Lane::Metadata`] for metadata that may block, else [`Lane::Now`].
    fn metadata(may_block: bool) -> Lane {
        if may_block { Lane::Metadata } else { Lane::Now }
    }
}

/// The I/O threads: one bounded pool for reads and one for metadata, so
/// that neither kind waits for threads the other holds.
pub struct IoPools {
    reads: tokio::runtime::Runtime,
    metadata: tokio::runtime::Runtime,
    threads: usize,
}

impl IoPools {
    /// Two pools of up to `threads` threads each, started on demand.
    pub fn start(threads: usize) -> Result<IoPools> {
        Ok(IoPools {
            reads: pool("cachefs-read", threads)?,
            metadata: pool("cachefs-meta", threads)?,
            threads: threads.max(1),
        })
    }

    /// Threads of each pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on `lane`: now, or queued on its pool.
    pub fn run(&self, lane: Lane, job: impl FnOnce() + Send + 'static) {
        let pool = match lane {
            Lane::Now => return job(),
            Lane::Metadata => &self.metadata,
            Lane::Read => &self.reads,
        };
        pool.spawn_blocking(job);
    }

    /// Stops the pools without waiting for jobs still blocked.
    pub fn shutdown(self) {
        self.reads.shutdown_background();
        self.metadata.shutdown_background();
    }
}

/// A pool of blocking threads (tokio's; idle ones exit after a while).
fn pool(name: &str, threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(threads.max(1))
        .thread_name(name)
        .build()
        .map_err(|e| Error::io(format!("starting the {name} threads"), e))
}

/// The adapter; cheap to share between the FUSE threads.
pub struct FuseFs {
    fs: Arc<CacheFs>,
    io: Option<IoPools>,
    /// The kernel agreed to skip OPEN (and OPENDIR) for good once one
    /// is answered ENOSYS.
    no_open: bool,
    no_opendir: bool,
}

impl FuseFs {
    /// Wraps `fs`, deferring operations that may block to `io`.
    pub fn new(fs: Arc<CacheFs>, io: IoPools) -> FuseFs {
        FuseFs {
            fs,
            io: Some(io),
            no_open: false,
            no_opendir: false,
        }
    }

    /// Runs `op` on `lane` and replies.
    fn answer<R: Replier, T: 'static>(
        &self,
        lane: Lane,
        reply: R,
        op: impl FnOnce(&CacheFs) -> Result<T> + Send + 'static,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) {
        let fs = self.fs.clone();
        let job = move || finish(reply, op(&fs), ok);
        match &self.io {
            Some(io) => io.run(lane, job),
            None => job(),
        }
    }
}

/// Replies `ok` with the value, or the error's errno.
fn finish<R: Replier, T>(reply: R, result: Result<T>, ok: impl FnOnce(R, T)) {
    match result {
        Ok(value) => ok(reply, value),
        Err(err) => reply.fail(errno(&err)),
    }
}

fn errno(err: &Error) -> Errno {
    Errno::from_i32(err.errno())
}

fn read_only() -> Error {
    Error::Refused(Refusal::ReadOnly)
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

fn ttl(attr: &Attr) -> Duration {
    if attr.volatile { NO_TTL } else { TTL }
}

/// The reply types handlers answer with: all can carry an errno.
trait Replier: Send + 'static {
    fn fail(self, errno: Errno);
}

macro_rules! replier {
    ($($t:ty),*) => {$(
        impl Replier for $t {
            fn fail(self, errno: Errno) {
                self.error(errno);
            }
        }
    )*};
}

replier!(
    ReplyAttr,
    ReplyEntry,
    ReplyData,
    ReplyOpen,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyXattr,
    ReplyEmpty,
    ReplyWrite,
    ReplyCreate
);

/// Replies to a getxattr/listxattr: the size on a probe (`size == 0`),
/// ERANGE if the caller's buffer is too small, else the value.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(errno(&Error::Refused(Refusal::BufferTooSmall)));
    } else {
        reply.data(value);
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_NO_OPEN_SUPPORT
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            // Pages of a file whose mtime or size changed (the status file)
            // are dropped when the kernel sees the new attributes.
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        // As many reads in flight (readahead is sent in the background) as
        // the read pool has threads; metadata requests are not counted.
        let threads = self.io.as_ref().map_or(IO_THREADS, IoPools::threads);
        let background = u16::try_from(threads).unwrap_or(u16::MAX);
        let _ = config.set_max_background(background);
        let _ = config.set_congestion_threshold((background / 4 * 3).max(1));
        if self.fs.has_index() {
            // READDIRPLUS hands the kernel every entry's attributes with the
            // listing, saving a lookup per file in `ls -l` and `find`; only
            // worth it when sizes are known without fetching.
            wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        let granted = wanted & config.capabilities();
        let _ = config.add_capabilities(granted);
        self.no_open = granted.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = granted.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(io) = self.io.take() {
            io.shutdown();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.fs.stats().request(Op::Lookup);
        let name = name.as_bytes().to_vec();
        let may_block = self.fs.dir_may_block(parent.0)
            || self
                .fs
                .tree()
                .lookup(parent.0, &name)
                .is_some_and(|ino| self.fs.attr_may_block(ino));
        self.answer(
            Lane::metadata(may_block),
            reply,
            move |fs| fs.lookup(parent.0, &name),
            |reply, attr| reply.entry(&ttl(&attr), &file_attr(&attr), Generation(0)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.fs.stats().request(Op::Getattr);
        self.answer(
            Lane::metadata(self.fs.attr_may_block(ino.0)),
            reply,
            move |fs| fs.attr(ino.0),
            |reply, attr| reply.attr(&ttl(&attr), &file_attr(&attr)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.fs.stats().request(Op::Open);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let no_open = self.no_open;
        let lane = match self.fs.open_may_block(ino.0) {
            true => Lane::Read,
            false => Lane::Now,
        };
        self.answer(
            lane,
            reply,
            move |fs| {
                fs.open(ino.0, write)
                    .map(|()| (ino.0, fs.opens_stateless()))
            },
            move |reply, (ino, stateless)| {
                if no_open && stateless {
                    // Stateless from now on: no more OPEN/RELEASE requests,
                    // and the kernel keeps page caches across opens. Not
                    // while `mache.db`'s size is unknown (no record, not
                    // built): its open builds it, to learn that size.
                    reply.error(Errno::ENOSYS);
                } else if ino == super::tree::STATUS {
                    // A new snapshot at each open; bypass the page cache.
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
                } else {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                }
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.stats().request(Op::Read);
        let send = |reply: ReplyData, data: super::Data| reply.data(data.as_slice());
        match self.fs.read_now(ino.0, offset, size) {
            Some(result) => finish(reply, result, send),
            None => self.answer(
                Lane::Read,
                reply,
                move |fs| fs.read(ino.0, offset, size),
                send,
            ),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.fs.stats().request(Op::Other);
        let no_opendir = self.no_opendir;
        self.answer(
            Lane::Now,
            reply,
            move |fs| match fs.tree().dir(ino.0) {
                Some(_) => Ok(()),
                None => Err(Error::Refused(Refusal::NotADirectory)),
            },
            move |reply, ()| {
                if no_opendir {
                    // No more OPENDIR/RELEASEDIR; the kernel then caches
                    // listings (FOPEN_CACHE_DIR) by default.
                    reply.error(Errno::ENOSYS);
                } else {
                    // The tree never changes: let the kernel cache listings.
                    let flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                    reply.opened(FileHandle(0), flags);
                }
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.fs.stats().request(Op::Readdir);
        self.answer(
            Lane::metadata(self.fs.dir_may_block(ino.0)),
            reply,
            move |fs| {
                let mut entries = Vec::new();
                let mut bytes = 0usize;
                fs.readdir(ino.0, offset, |entry| {
                    // Bounded by the kernel's buffer (a page or more); stop early.
                    bytes += 32 + entry.name.len();
                    entries.push(entry);
                    bytes > 64 * 1024
                })?;
                Ok(entries)
            },
            |mut reply, entries| {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.fs.stats().request(Op::Readdir);
        self.answer(
            Lane::metadata(self.fs.dir_may_block(ino.0)),
            reply,
            move |fs| {
                let mut entries = Vec::new();
                let mut bytes = 0usize;
                let mut failure = None;
                fs.readdir(ino.0, offset, |entry| match fs.listing_attr(entry.ino) {
                    Ok(attr) => {
                        bytes += 152 + entry.name.len();
                        entries.push((entry, attr));
                        bytes > 64 * 1024
                    }
                    Err(e) => {
                        failure = Some(e);
                        true
                    }
                })?;
                match failure {
                    Some(e) if entries.is_empty() => Err(e),
                    _ => Ok(entries),
                }
            },
            |mut reply, entries| {
                for (e, attr) in entries {
                    if reply.add(
                        INodeNo(e.ino),
                        e.next,
                        &e.name,
                        &ttl(&attr),
                        &file_attr(&attr),
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // There are no symlinks.
        reply.error(Errno::EINVAL);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // ENOSYS makes the kernel handle every whence itself from now on.
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel treats files as always ready.
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.fs.stats().request(Op::Other);
        let (bytes, inodes) = self.fs.totals();
        reply.statfs(bytes.div_ceil(4096), 0, 0, inodes, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.fs.stats().request(Op::Getxattr);
        let name = name.as_bytes().to_vec();
        self.answer(
            Lane::Now,
            reply,
            move |fs| fs.xattr(ino.0, &name),
            move |reply, value| reply_xattr(reply, size, &value),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.fs.stats().request(Op::Listxattr);
        self.answer(
            Lane::Now,
            reply,
            move |fs| fs.xattr_names(ino.0),
            move |reply, names| reply_xattr(reply, size, &names),
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.fs.stats().request(Op::Other);
        self.answer(
            Lane::Now,
            reply,
            move |fs| {
                fs.tree()
                    .node(ino.0)
                    .ok_or(Error::Refused(Refusal::NoEntry))?;
                if mask.contains(AccessFlags::W_OK) {
                    return Err(read_only());
                }
                Ok(())
            },
            |reply, ()| reply.ok(),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.fail(errno(&read_only()));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.fail(errno(&read_only()));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush; ENOSYS stops the kernel sending FLUSH at close.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.fail(errno(&read_only()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.fail(errno(&read_only()));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.fail(errno(&read_only()));
    }
}
