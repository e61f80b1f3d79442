//! Mounting and unmounting: checks before mounting, the FUSE session,
//! SIGINT/SIGTERM, background prefetch, and `unmount` (including mounts
//! whose daemon died). Also what FUSE needs from the system, as probes
//! `doctor` reports on: the device, the kernel's filesystem, the mount
//! helper, `/etc/fuse.conf`, and the mount table with the state of each
//! mount.
//!
//! Users other than root: the device must open for them (mode 0666, or a
//! group of theirs); the kernel then refuses their `mount(2)` and fuser
//! mounts through the setuid `fusermount3`, which opens the device as the
//! calling user too, so no helper gets around a device they cannot open.
//! Their `unmount` goes through `fusermount3 -u`.
//!
//! Signals: [`serve`] installs handlers for SIGINT, SIGTERM and SIGHUP
//! (`signal-hook`: the handler only wakes a dedicated thread, whichever
//! thread it interrupted). The first signal unmounts (lazily if the mount is
//! busy, so the mountpoint is empty again at once) and the session ends; a
//! second one exits immediately.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{Config, MountOption, Session, SessionACL};
use nix::mount::{MntFlags, umount2};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::CacheFs;
use super::fuse::{FuseFs, IoPools};
use crate::error::{Error, Result};

/// How to serve a mount.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub mountpoint: PathBuf,
    /// FUSE request threads.
    pub threads: usize,
    /// Threads of each I/O pool (reads, metadata), and so the reads the
    /// kernel keeps in flight (`max_background`).
    pub io_threads: usize,
    /// Warm every chunk and build `mache.db` in the background.
    pub prefetch: bool,
    /// Chunks fetched at once by prefetch.
    pub prefetch_parallelism: usize,
    /// Draw the prefetch's progress on stderr (a foreground mount on a terminal).
    pub progress: bool,
    /// Let every user read the mount (`allow_other`), not only its owner.
    pub allow_other: bool,
}

/// The filesystem type `statfs` reports for FUSE mounts.
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn mount_error(message: String) -> Error {
    Error::Mount(message)
}

/// Where the FUSE device is.
pub const DEV_FUSE: &str = "/dev/fuse";

/// What keeps this process from using the FUSE device.
#[derive(Debug)]
pub enum FuseDeviceProblem {
    /// There is no such file.
    Missing,
    /// Something other than a character device is there (its `st_mode`).
    NotADevice { mode: u32 },
    /// The device (its `st_mode`, if it could be read) does not open
    /// read-write for this process.
    CannotOpen {
        mode: Option<u32>,
        error: std::io::Error,
    },
}

impl FuseDeviceProblem {
    /// What is wrong, in a few words.
    pub fn reason(&self) -> String {
        match self {
            FuseDeviceProblem::Missing => "no /dev/fuse".to_string(),
            FuseDeviceProblem::NotADevice { mode } => format!(
                "/dev/fuse is not a character device (mode {})",
                file_mode(*mode)
            ),
            FuseDeviceProblem::CannotOpen { mode, error } => match mode {
                Some(mode) => format!("cannot open /dev/fuse (mode {}): {error}", file_mode(*mode)),
                None => format!("cannot open /dev/fuse: {error}"),
            },
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        let device = "give the container the device (--device /dev/fuse)";
        match self {
            FuseDeviceProblem::Missing => {
                format!("load the fuse kernel module (modprobe fuse), or {device}")
            }
            FuseDeviceProblem::NotADevice { .. } => {
                format!("recreate it as root (mknod -m 0666 /dev/fuse c 10 229), or {device}")
            }
            FuseDeviceProblem::CannotOpen { error, .. } => match error.raw_os_error() {
                Some(libc::EACCES) => "this user may not use FUSE (fusermount3 opens the device \
                                      as this user too): run as root, or have root make it \
                                      read-write for all (chmod 0666 /dev/fuse, as most systems \
                                      set it) or for a group of this user's (chgrp GROUP \
                                      /dev/fuse && chmod 0660 /dev/fuse)"
                    .to_string(),
                Some(libc::EPERM) => {
                    format!("the container's device rules forbid it: {device}")
                }
                _ => "check the device: ls -l /dev/fuse".to_string(),
            },
        }
    }
}

impl std::fmt::Display for FuseDeviceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.hint())
    }
}

/// A file's permission bits in octal, e.g. `0666`.
pub fn file_mode(st_mode: u32) -> String {
    format!("{:04o}", st_mode & 0o7777)
}

/// Probes the FUSE device at `path` (normally [`DEV_FUSE`]): a character
/// device that opens read-write. Returns its `st_mode`.
pub fn probe_fuse_device(path: &Path) -> std::result::Result<u32, FuseDeviceProblem> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(FuseDeviceProblem::Missing),
        Err(error) => return Err(FuseDeviceProblem::CannotOpen { mode: None, error }),
    };
    let mode = meta.mode();
    if !meta.file_type().is_char_device() {
        return Err(FuseDeviceProblem::NotADevice { mode });
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Ok(mode),
        Err(error) => Err(FuseDeviceProblem::CannotOpen {
            mode: Some(mode),
            error,
        }),
    }
}

/// Checks that `/dev/fuse` can be opened.
fn check_dev_fuse() -> Result<()> {
    probe_fuse_device(Path::new(DEV_FUSE))
        .map(drop)
        .map_err(|problem| mount_error(problem.to_string()))
}

/// Whether the kernel has the `fuse` filesystem, per `/proc/filesystems`.
pub fn kernel_has_fuse() -> std::io::Result<bool> {
    std::fs::read_to_string("/proc/filesystems").map(|text| lists_fuse(&text))
}

/// Whether a `/proc/filesystems` text lists `fuse` (lines like `nodev\tfuse`).
fn lists_fuse(text: &str) -> bool {
    text.lines()
        .any(|line| line.split_whitespace().last() == Some("fuse"))
}

/// The helpers through which a user other than root mounts and unmounts,
/// in the order fuser looks for them on `PATH`.
pub const FUSERMOUNT: [&str; 2] = ["fusermount3", "fusermount"];

/// The mount helper fuser would use for a user other than root:
/// `$FUSERMOUNT_PATH` if set, else the first of [`FUSERMOUNT`] on `PATH`.
pub fn find_fusermount() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    FUSERMOUNT.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// What keeps a user other than root from mounting through the helper.
#[derive(Debug)]
pub enum FusermountProblem {
    /// Neither `fusermount3` nor `fusermount` is on `PATH`.
    Missing,
    /// The helper at `path` is not setuid root (its owner and `st_mode`).
    NotSetuidRoot { path: PathBuf, uid: u32, mode: u32 },
    /// The helper at `path` cannot be looked at.
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl FusermountProblem {
    /// What is wrong, in a few words.
    pub fn reason(&self) -> String {
        match self {
            FusermountProblem::Missing => {
                "neither fusermount3 nor fusermount is on PATH: only root can mount".to_string()
            }
            FusermountProblem::NotSetuidRoot { path, uid, mode } => format!(
                "{} is not setuid root (owner uid {uid}, mode {}): this user cannot mount",
                path.display(),
                file_mode(*mode)
            ),
            FusermountProblem::Unreadable { path, error } => {
                format!("{}: {error}", path.display())
            }
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            FusermountProblem::Missing => {
                "install fuse3 (apt install fuse3, or dnf install fuse3)".to_string()
            }
            FusermountProblem::NotSetuidRoot { path, .. } => {
                let shown = path.display();
                format!("reinstall fuse3, or as root: chown root {shown} && chmod u+s {shown}")
            }
            FusermountProblem::Unreadable { .. } => {
                "check $FUSERMOUNT_PATH, or reinstall fuse3".to_string()
            }
        }
    }
}

impl std::fmt::Display for FusermountProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.hint())
    }
}

/// The mount helper fuser would use ([`find_fusermount`]), if it is setuid
/// root, as a user other than root needs it.
pub fn probe_fusermount() -> std::result::Result<PathBuf, FusermountProblem> {
    let path = find_fusermount().ok_or(FusermountProblem::Missing)?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.uid() == 0 && meta.mode() & libc::S_ISUID != 0 => Ok(path),
        Ok(meta) => Err(FusermountProblem::NotSetuidRoot {
            path,
            uid: meta.uid(),
            mode: meta.mode(),
        }),
        Err(error) => Err(FusermountProblem::Unreadable { path, error }),
    }
}

/// FUSE's system-wide settings, read by `fusermount3`.
pub const FUSE_CONF: &str = "/etc/fuse.conf";

/// Whether [`FUSE_CONF`] lets users other than root mount with
/// `allow_other` (`user_allow_other`); a missing file does not.
pub fn user_allow_other() -> std::io::Result<bool> {
    match std::fs::read_to_string(FUSE_CONF) {
        Ok(text) => Ok(allows_other(&text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a fuse.conf text sets `user_allow_other` (not commented out).
fn allows_other(text: &str) -> bool {
    text.lines()
        .any(|line| line.split('#').next().unwrap_or("").trim() == "user_allow_other")
}

/// Checks that this process can mount: the device opens and, for a user
/// other than root, a setuid `fusermount3` is there to mount through and,
/// with `allow_other`, [`FUSE_CONF`] sets `user_allow_other`.
pub fn check_can_mount(allow_other: bool) -> Result<()> {
    check_dev_fuse()?;
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    probe_fusermount().map_err(|problem| mount_error(problem.to_string()))?;
    if !allow_other {
        return Ok(());
    }
    let unset = match user_allow_other() {
        Ok(true) => return Ok(()),
        Ok(false) => "it is not set there".to_string(),
        Err(e) => format!("cannot read it: {e}"),
    };
    Err(mount_error(format!(
        "--allow-other needs user_allow_other in {FUSE_CONF} for a user other than root \
         ({unset}): have root add that line, or mount without --allow-other"
    )))
}

/// The name our mounts carry in the mount table: their source, and their
/// subtype (a mount made through `fusermount3` has type `fuse.<subtype>`;
/// one made directly by root, type `fuse` with this source).
pub const FS_NAME: &str = "mache-cachefs";

/// One line of `/proc/self/mountinfo`: what is mounted where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    /// E.g. `fuse.mache-cachefs`, `tmpfs`, `ext4`.
    pub fs_type: String,
    /// The mount source, e.g. `mache-cachefs`, `/dev/sda1`.
    pub source: String,
    /// The superblock options, e.g. `ro,user_id=0,group_id=0`.
    pub options: String,
}

impl MountEntry {
    /// Parses a mountinfo line: `id parent dev root MOUNTPOINT opts
    /// [optional fields] - TYPE SOURCE SUPEROPTS`.
    fn parse(line: &str) -> Option<MountEntry> {
        let (before, after) = line.split_once(" - ")?;
        let mountpoint = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        Some(MountEntry {
            mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
            fs_type: after.next()?.to_string(),
            source: unescape_mountinfo(after.next()?),
            options: after.next().unwrap_or("").to_string(),
        })
    }

    /// Whether this is a mache-cachefs mount.
    pub fn is_ours(&self) -> bool {
        match self.fs_type.strip_prefix("fuse") {
            Some("") => self.source == FS_NAME,
            Some(subtype) => subtype.strip_prefix('.') == Some(FS_NAME),
            None => false,
        }
    }

    /// The uid a FUSE mount belongs to (its `user_id=` option).
    pub fn fuse_owner(&self) -> Option<u32> {
        self.options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|uid| uid.parse().ok())
    }
}

/// Every mount in `/proc/self/mountinfo`, in its order (a later mount at
/// the same place is on top of an earlier one). Empty if it cannot be read.
pub fn mount_table() -> Vec<MountEntry> {
    let Ok(file) = File::open("/proc/self/mountinfo") else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|line| MountEntry::parse(&line))
        .collect()
}

/// What is mounted at `path` now (the topmost mount), per `/proc/self/mountinfo`.
pub fn mount_entry(path: &Path) -> Option<MountEntry> {
    mount_table()
        .into_iter()
        .rfind(|entry| entry.mountpoint == path)
}

/// How a mount answers a `stat` of its root.
#[derive(Debug)]
pub enum MountState {
    /// It answers.
    Answers,
    /// Its server is gone: `ENOTCONN` (`ECONNABORTED` for a request caught
    /// in the abort). `unmount` clears it.
    Dead,
    /// No answer within the time given: its server hangs.
    Silent,
    /// Another error, e.g. `EACCES` for another user's FUSE mount, which
    /// the kernel does not let this user look into.
    Failed(std::io::Error),
}

/// Whether an error from a path says it is a FUSE mount whose server is gone.
fn is_dead_mount_error(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// `stat`s the root of the mount at `path`, waiting at most `within` (a
/// hung server would block the `stat` for good; the thread doing it is
/// then left behind).
pub fn mount_state(path: &Path, within: std::time::Duration) -> MountState {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("cachefs-stat".to_string())
        .spawn(move || {
            let _ = tx.send(std::fs::metadata(&owned).map(drop));
        });
    if let Err(e) = spawned {
        return MountState::Failed(e);
    }
    match rx.recv_timeout(within) {
        Ok(Ok(())) => MountState::Answers,
        Ok(Err(e)) if is_dead_mount_error(&e) => MountState::Dead,
        Ok(Err(e)) => MountState::Failed(e),
        Err(_) => MountState::Silent,
    }
}

/// Whether `path` is a mount point, per `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `path` absolute without touching it (a dead FUSE mount cannot be
/// stat'ed): its parent is resolved (symlinks too, as the mount table
/// shows it) and its last component kept.
pub fn absolute(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| path.clone(), |parent| parent.join(name)),
        _ => path,
    }
}

/// Checks that `mountpoint` can take a mount: an existing, empty directory
/// that is not already a mount point. Returns its canonical path.
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf> {
    let shown = mountpoint.display();
    let meta = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta,
        Err(e) if is_dead_mount_error(&e) => {
            return Err(mount_error(format!(
                "{shown} is a dead FUSE mount (transport endpoint is not connected); \
                 clear it with `mache-cachefs unmount {shown}`"
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(mount_error(format!("mountpoint {shown} does not exist")));
        }
        Err(e) => return Err(mount_error(format!("mountpoint {shown}: {e}"))),
    };
    if !meta.is_dir() {
        return Err(mount_error(format!(
            "mountpoint {shown} is not a directory"
        )));
    }
    let canonical = mountpoint
        .canonicalize()
        .map_err(|e| mount_error(format!("mountpoint {shown}: {e}")))?;
    let parent_dev = canonical
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    if is_mount_point(&canonical) || parent_dev.is_some_and(|dev| dev != meta.dev()) {
        return Err(mount_error(format!(
            "mountpoint {shown} is busy: something is already mounted there \
             (unmount it first: mache-cachefs unmount {shown})"
        )));
    }
    let mut entries = std::fs::read_dir(&canonical)
        .map_err(|e| mount_error(format!("mountpoint {shown}: {e}")))?;
    if entries.next().is_some() {
        return Err(mount_error(format!(
            "mountpoint {shown} is not empty; mount onto an empty directory"
        )));
    }
    Ok(canonical)
}

/// Mounts `fs` at `options.mountpoint` and serves it until it is unmounted
/// or the process gets SIGINT/SIGTERM/SIGHUP. `ready` is called once the
/// kernel has accepted the mount (requests are answered from then on).
pub fn serve(fs: CacheFs, options: &ServeOptions, ready: impl FnOnce()) -> Result<()> {
    check_can_mount(options.allow_other)?;
    let mountpoint = check_mountpoint(&options.mountpoint)?;

    let io = IoPools::start(options.io_threads)?;
    let fs = Arc::new(fs);
    let adapter = FuseFs::new(fs.clone(), io);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::FSName(FS_NAME.to_string()),
        MountOption::Subtype(FS_NAME.to_string()),
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    // Before mounting, so that no signal can leave a mount without a server.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    let session = Session::new(adapter, &mountpoint, &config)
        .map_err(|e| mount_error(format!("mounting at {}: {e}", mountpoint.display())))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let mountpoint = mountpoint.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("cachefs-signals".to_string())
            .spawn(move || watch_signals(signals, &mountpoint, &stop))
            .map_err(|e| Error::io("starting the signal thread", e))?;
    }
    let prefetcher = options.prefetch.then(|| {
        start_prefetch(
            fs.clone(),
            options.prefetch_parallelism.max(1),
            options.progress,
            stop.clone(),
        )
    });
    tracing::info!(
        "mounted {} sources at {}",
        fs.lockfile().sources.len(),
        mountpoint.display()
    );
    ready();
    let served = session.run();
    stop.store(true, Ordering::Relaxed);
    if let Some(handle) = prefetcher {
        let _ = handle.join();
    }
    served.map_err(|e| mount_error(format!("serving {}: {e}", mountpoint.display())))
}

/// Waits for termination signals: the first unmounts, a second exits.
fn watch_signals(mut signals: Signals, mountpoint: &Path, stop: &AtomicBool) {
    let mut received = 0;
    for signal in signals.forever() {
        received += 1;
        stop.store(true, Ordering::Relaxed);
        let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
        if received > 1 {
            tracing::warn!("{name} again: exiting without waiting for open files");
            std::process::exit(128 + signal);
        }
        tracing::info!("{name}: unmounting {}", mountpoint.display());
        match unmount(mountpoint) {
            Ok(Unmounted::Lazily) => tracing::warn!(
                "{} was busy: detached it; serving open files until they are closed",
                mountpoint.display()
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// Prefetches a bundle in the background. From a remote store: every
/// distinct chunk into the disk cache (whole packs, many requests at once)
/// while `mache.db` is built beside it (its reads join those fetches, so
/// nothing comes over the network twice), then chunks into memory while
/// the memory cache has room. From a local store: chunks into memory, then
/// `mache.db`. User reads never queue behind this: they are served by their
/// own threads and join a prefetch fetch of the same chunk if one is in
/// flight.
fn start_prefetch(
    fs: Arc<CacheFs>,
    parallelism: usize,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("cachefs-prefetch".to_string())
        .spawn(move || {
            // Background work: yield the CPU to readers (threads this one
            // starts inherit it).
            // SAFETY: setpriority with PRIO_PROCESS and 0 changes only the
            // calling thread's nice value on Linux.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<usize> = (0..fs.lockfile().sources.len())
                .filter(|&i| seen.insert(fs.lockfile().sources[i].chunk_hash))
                .collect();
            fs.prefetch.enabled.store(true, Ordering::Relaxed);
            fs.prefetch
                .total
                .store(firsts.len() as u64, Ordering::Relaxed);
            let warmed = Warmed {
                fs: &fs,
                bar: progress.then(|| crate::progress::progress(firsts.len(), "prefetch")),
            };
            let build_db = || {
                if !stop.load(Ordering::Relaxed) {
                    let _ = fs.build_db();
                }
            };
            if fs.content().is_remote() {
                std::thread::scope(|scope| {
                    scope.spawn(|| warm_disk_cache(&fs, &firsts, &warmed, &stop));
                    build_db();
                });
                warm_memory(&fs, &firsts, parallelism, None, &stop);
            } else {
                warm_memory(&fs, &firsts, parallelism, Some(&warmed), &stop);
                build_db();
            }
            if let Some(bar) = warmed.bar {
                bar.finish_and_clear();
            }
            fs.prefetch.finished.store(true, Ordering::Relaxed);
        })
        .expect("spawning the prefetch thread")
}

/// Counts warmed chunks: in the status file, and on the progress bar if any.
struct Warmed<'a> {
    fs: &'a CacheFs,
    bar: Option<indicatif::ProgressBar>,
}

impl Warmed<'_> {
    fn add(&self, chunks: usize) {
        self.fs
            .prefetch
            .warmed
            .fetch_add(chunks as u64, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(chunks as u64);
        }
    }
}

/// Bytes of chunks a prefetch asks a remote store for in one go: enough
/// for every transfer at once to move a large range.
const PREFETCH_BATCH: u64 = 64 << 20;
/// What a chunk of unknown length counts as when cutting batches.
const UNKNOWN_CHUNK_LEN: u64 = 64 << 10;

/// Fetches the chunks of sources `firsts` into the disk cache, in batches so
/// that progress shows and an unmount stops it between batches.
fn warm_disk_cache(fs: &CacheFs, firsts: &[usize], warmed: &Warmed, stop: &AtomicBool) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (n, &i) in firsts.iter().enumerate() {
        batch.push(i);
        bytes += fs.content().chunk_len(i).unwrap_or(UNKNOWN_CHUNK_LEN);
        if bytes < PREFETCH_BATCH && n + 1 < firsts.len() {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match fs.content().warm_store(&batch) {
            Ok(()) => warmed.add(batch.len()),
            Err(e) => tracing::warn!("prefetch: {e}"),
        }
        batch.clear();
        bytes = 0;
    }
}

/// Loads the chunks of sources `firsts` into the memory cache with
/// `parallelism` threads. Stops early once the memory cache is nearly full,
/// since warming more would only evict what was warmed. Counts progress
/// in `warmed` if given (where no disk-cache phase did).
fn warm_memory(
    fs: &CacheFs,
    firsts: &[usize],
    parallelism: usize,
    warmed: Option<&Warmed>,
    stop: &AtomicBool,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let capacity = fs.content().cache().stats().capacity;
    std::thread::scope(|scope| {
        for _ in 0..parallelism {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = firsts.get(n) else { break };
                    if fs.content().cache().stats().bytes >= capacity / 10 * 9 {
                        tracing::info!("prefetch: memory cache full; warmed {n} chunks");
                        next.store(firsts.len(), Ordering::Relaxed);
                        break;
                    }
                    if fs.content().warm(i).is_ok()
                        && let Some(warmed) = warmed
                    {
                        warmed.add(1);
                    }
                }
            });
        }
    });
}

/// How a mount went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted at once.
    Cleanly,
    /// It was busy: detached from the tree now, torn down when the last
    /// open file closes.
    Lazily,
    /// Via `fusermount3 -u` (not root); a busy one is detached with `-z`
    /// and counts as [`Unmounted::Lazily`].
    WithFusermount,
}

/// Unmounts `mountpoint` if it is a mache-cachefs mount: a plain unmount,
/// a lazy one if it is busy, and `fusermount3 -u` for unprivileged users.
/// Works on a mount whose daemon died ("Transport endpoint is not
/// connected"). Anything else mounted there (a tmpfs, a bind mount, another
/// FUSE filesystem) is refused, and so is another user's mount.
pub fn unmount(mountpoint: &Path) -> Result<Unmounted> {
    let path = absolute(mountpoint);
    let shown = path.display();
    let Some(entry) = mount_entry(&path) else {
        return Err(mount_error(format!("{shown} is not mounted")));
    };
    if !entry.is_ours() {
        return Err(mount_error(format!(
            "{shown} is a {} mount of {:?}, not a mache-cachefs mount: refusing to unmount it",
            entry.fs_type, entry.source
        )));
    }
    let uid = nix::unistd::getuid().as_raw();
    if let Some(owner) = entry.fuse_owner().filter(|&owner| uid != 0 && owner != uid) {
        return Err(mount_error(format!(
            "{shown} is not yours: uid {owner} mounted it, and only that user or root can \
             unmount it"
        )));
    }
    match umount2(&path, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Cleanly),
        Err(nix::errno::Errno::EBUSY) => umount2(&path, MntFlags::MNT_DETACH)
            .map(|()| Unmounted::Lazily)
            .map_err(|e| mount_error(format!("unmounting {shown}: {e}"))),
        Err(nix::errno::Errno::EINVAL) => Err(mount_error(format!("{shown} is not mounted"))),
        Err(nix::errno::Errno::ENOENT) => Err(mount_error(format!("{shown} does not exist"))),
        Err(nix::errno::Errno::EPERM) => fusermount_unmount(&path),
        Err(e) => Err(mount_error(format!("unmounting {shown}: {e}"))),
    }
}

/// `fusermount3 -u`, then `-u -z` (lazily) if the mount is busy.
fn fusermount_unmount(path: &Path) -> Result<Unmounted> {
    let helper = probe_fusermount()
        .map_err(|problem| mount_error(format!("unmounting {}: {problem}", path.display())))?;
    let mut last = String::new();
    for (args, how) in [
        (&["-u"][..], Unmounted::WithFusermount),
        (&["-u", "-z"][..], Unmounted::Lazily),
    ] {
        let output = std::process::Command::new(&helper)
            .args(args)
            .arg("--")
            .arg(path)
            .output()
            .map_err(|e| mount_error(format!("running {}: {e}", helper.display())))?;
        if output.status.success() {
            return Ok(how);
        }
        last = String::from_utf8_lossy(&output.stderr).trim().to_string();
    }
    Err(mount_error(format!(
        "unmounting {}: {last}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/t\134x"), r"/t\x");
    }

    #[test]
    fn mountinfo_lines_give_type_source_and_owner() {
        let line = "1234 29 0:77 / /mnt/a\\040b ro,nosuid,nodev,noatime shared:600 - \
                    fuse.mache-cachefs mache-cachefs ro,user_id=1000,group_id=1000";
        let entry = MountEntry::parse(line).unwrap();
        assert_eq!(entry.mountpoint, PathBuf::from("/mnt/a b"));
        assert!(entry.is_ours());
        assert_eq!(entry.source, "mache-cachefs");
        assert_eq!(entry.fuse_owner(), Some(1000));
        let by_root = "5 1 0:9 / /m ro - fuse mache-cachefs ro,user_id=0,group_id=0";
        assert!(MountEntry::parse(by_root).unwrap().is_ours());
        let other_fuse = "5 1 0:9 / /m ro - fuse.sshfs host:/ ro,user_id=0,group_id=0";
        assert!(!MountEntry::parse(other_fuse).unwrap().is_ours());
        let tmpfs = "99 1 0:5 / /tmp rw - tmpfs tmpfs rw,size=100k";
        assert!(!MountEntry::parse(tmpfs).unwrap().is_ours());
        assert_eq!(MountEntry::parse(tmpfs).unwrap().fuse_owner(), None);
    }

    #[test]
    fn the_fuse_device_must_be_a_character_device_that_opens() {
        let dir = tempfile::tempdir().unwrap();
        let missing = probe_fuse_device(&dir.path().join("fuse")).unwrap_err();
        assert!(matches!(missing, FuseDeviceProblem::Missing), "{missing}");
        assert!(
            missing
                .to_string()
                .starts_with("no /dev/fuse: load the fuse kernel module")
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let problem = probe_fuse_device(&file).unwrap_err();
        assert!(
            matches!(problem, FuseDeviceProblem::NotADevice { .. }),
            "{problem}"
        );
        assert!(
            problem.reason().contains("not a character device"),
            "{problem}"
        );
        // /dev/null: a character device everyone may open read-write.
        let mode = probe_fuse_device(Path::new("/dev/null")).unwrap();
        assert_eq!(file_mode(mode), "0666");
    }

    #[test]
    fn user_allow_other_counts_only_when_not_commented_out() {
        assert!(allows_other("# comment\nuser_allow_other\n"));
        assert!(allows_other("  user_allow_other  # yes\n"));
        assert!(!allows_other("#user_allow_other\nmount_max = 1000\n"));
        assert!(!allows_other(""));
    }

    #[test]
    fn proc_filesystems_lists_fuse_by_its_own_name() {
        let text = "nodev\tsysfs\nnodev\tfuseblk\n\text4\nnodev\tfuse\n";
        assert!(lists_fuse(text));
        assert!(!lists_fuse("nodev\tsysfs\n\text4\nnodev\tfusectl\n"));
    }

    #[test]
    fn a_directory_answers_and_a_missing_path_fails_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let within = std::time::Duration::from_secs(5);
        assert!(matches!(
            mount_state(dir.path(), within),
            MountState::Answers
        ));
        match mount_state(&dir.path().join("gone"), within) {
            MountState::Failed(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert!(
            mount_table()
                .iter()
                .any(|entry| entry.mountpoint == Path::new("/"))
        );
    }

    #[test]
    fn unmount_refuses_what_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let err = unmount(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not mounted"), "{err}");
        let err = unmount(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("not a mache-cachefs mount"), "{err}");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
    }

    #[test]
    fn mountpoints_must_be_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = check_mountpoint(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let err = check_mountpoint(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let err = check_mountpoint(&dir.path().join("file"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_mountpoint(&empty).is_ok());
    }
}
