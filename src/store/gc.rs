//! Garbage collection of a local store: what no tag reaches goes.
//!
//! Roots: every `refs/<tag>` and the top-level `mache.lock.bin` (a store
//! the Go mache writes has only that), and every tag `serve` keeps for a
//! repository (`repositories/<name>/_tags/<tag>`: a manifest, whose config,
//! layers and sizes blob it reaches, read by [`super::served`]; a config
//! that is a lockfile is a root lockfile too). From each root lockfile, its
//! chunks and its sizes index are live. Everything else is garbage: objects,
//! lockfiles and sizes files, `pushed/` records of gone lockfiles, `sha256/`
//! aliases of gone objects, and untagged manifest markers.
//!
//! Safe beside writers: gc holds the store's lock exclusively, which push
//! holds shared for its whole run, so no push can find an object present
//! and then lose it before its lockfile lands. Writers that do not take the
//! lock (uploads to `serve` before their manifest, the Go mache) are
//! covered by the grace period: nothing modified more recently than that
//! is removed (default one hour, longer than any push or upload session
//! takes; a bundle's objects are written before the tag that makes them
//! reachable). In `tmp/`, a killed push's files go at once (no push holds
//! their session's lock: `store::tmp`), any others after an hour. A root lockfile that cannot be read stops gc before anything
//! is removed: an unreadable root would make everything look like garbage.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::LocalStore;
use super::local::LOCK_BIN;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::binary;

/// The default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub roots: usize,
    pub live_objects: usize,
    pub objects_removed: usize,
    pub lockfiles_removed: usize,
    pub other_files_removed: usize,
    pub bytes_freed: u64,
    /// Garbage younger than the grace period, left for a later run.
    pub kept_young: usize,
    /// Temporary files dead writers left in `tmp/`: all of a killed push's
    /// (whatever the grace period), others once older than an hour.
    pub temp_files_removed: usize,
}

/// Collects `store`: removes what no tag reaches and is older than `grace`.
pub fn collect(store: &LocalStore, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let _exclusive = store.lock_exclusive()?;
    let root = store.root();
    let mut report = GcReport {
        dry_run,
        temp_files_removed: store.sweep_tmp(dry_run),
        ..GcReport::default()
    };
    let (lockfiles, mut objects) = live_set(store)?;
    report.roots = lockfiles.len();
    for hash in &lockfiles {
        let lockfile = binary::decode(&read_lockfile(store, hash)?).map_err(|e| {
            Error::BadLockfile(format!(
                "lockfile {hash} that a tag names does not decode ({e}); refusing to collect"
            ))
        })?;
        objects.extend(lockfile.sources.iter().map(|s| s.chunk_hash));
        objects.insert(*hash);
    }
    report.live_objects = objects.len();
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut sweep = Sweep {
        cutoff,
        dry_run,
        report: &mut report,
    };
    for (hash, file) in super::local::fanout_files(&root.join("objects")) {
        if !objects.contains(&hash) {
            sweep.remove(&file.path(), Kind::Object);
        }
    }
    for (path, name) in files_below(&root.join("lockfiles"), 1) {
        let stem = name.split('.').next().unwrap_or_default();
        if Hash::from_hex(stem).is_ok_and(|h| !lockfiles.contains(&h)) {
            sweep.remove(&path, Kind::Lockfile);
        }
    }
    // Records that name a hash: `pushed/` a lockfile, `sha256/` an object.
    sweep.pointers(&root.join("pushed"), &lockfiles);
    sweep.pointers(&root.join("sha256"), &objects);
    for (path, name) in files_below(&root.join("repositories"), usize::MAX) {
        let marker = path.parent().is_some_and(|p| p.ends_with("_manifests"));
        if marker && Hash::from_hex(&name).is_ok_and(|h| !objects.contains(&h)) {
            sweep.remove(&path, Kind::Other);
        }
    }
    Ok(report)
}

/// The root lockfiles, and the objects serve's tags reach directly
/// (manifests, their configs, layers and sizes blobs).
fn live_set(store: &LocalStore) -> Result<(HashSet<Hash>, HashSet<Hash>)> {
    let mut lockfiles: HashSet<Hash> = store.own_refs()?.into_iter().map(|(_, h)| h).collect();
    if let Ok(bytes) = fs::read(store.root().join(LOCK_BIN)) {
        lockfiles.insert(Hash::of(&bytes));
    }
    let mut objects = HashSet::new();
    for tag in store.served_tags()? {
        let Some(reach) = store.served_reach(&tag)? else {
            continue;
        };
        objects.insert(reach.manifest);
        objects.extend(reach.blobs);
        lockfiles.extend(reach.lockfile);
    }
    Ok((lockfiles, objects))
}

fn read_lockfile(store: &LocalStore, hash: &Hash) -> Result<Vec<u8>> {
    let by_hash = store
        .root()
        .join("lockfiles")
        .join(format!("{}.bin", hash.to_hex()));
    for path in [
        by_hash,
        store.root().join(LOCK_BIN),
        store.object_path(hash),
    ] {
        if let Ok(bytes) = fs::read(&path)
            && Hash::of(&bytes) == *hash
        {
            return Ok(bytes);
        }
    }
    Err(Error::BadLockfile(format!(
        "lockfile {hash} that a tag names is missing; refusing to collect"
    )))
}

#[derive(Clone, Copy)]
enum Kind {
    Object,
    Lockfile,
    Other,
}

/// Removes garbage older than the cutoff, counting what it does.
struct Sweep<'a> {
    cutoff: SystemTime,
    dry_run: bool,
    report: &'a mut GcReport,
}

impl Sweep<'_> {
    /// Removes the files of `dir` whose first line names (as `blake3:<hex>`)
    /// no hash of `live` (a push record has more lines).
    fn pointers(&mut self, dir: &Path, live: &HashSet<Hash>) {
        for (path, _) in files_below(dir, 1) {
            let names = fs::read_to_string(&path).ok().and_then(|text| {
                let first = text.lines().next().unwrap_or_default();
                Hash::from_prefixed(first.trim()).ok()
            });
            if names.is_none_or(|h| !live.contains(&h)) {
                self.remove(&path, Kind::Other);
            }
        }
    }

    fn remove(&mut self, path: &Path, kind: Kind) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.modified().is_ok_and(|t| t > self.cutoff) {
            self.report.kept_young += 1;
            return;
        }
        if !self.dry_run
            && let Err(e) = fs::remove_file(path)
        {
            tracing::warn!("gc: removing {}: {e}", path.display());
            return;
        }
        self.report.bytes_freed += meta.len();
        match kind {
            Kind::Object => self.report.objects_removed += 1,
            Kind::Lockfile => self.report.lockfiles_removed += 1,
            Kind::Other => self.report.other_files_removed += 1,
        }
    }
}

/// Regular files below `dir`, at most `depth` levels down, with their names.
fn files_below(dir: &Path, depth: usize) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((dir, level)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && level + 1 < depth {
                stack.push((entry.path(), level + 1));
            } else if kind.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                out.push((entry.path(), name));
            }
        }
    }
    out
}

/// What `gc --cache` removed (or, dry, would remove).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CacheGcReport {
    pub dry_run: bool,
    pub chunks_removed: usize,
    /// Built dbs and logs.
    pub files_removed: usize,
    pub bytes_freed: u64,
    /// Bytes left in the chunk cache, and its cap.
    pub chunk_bytes: u64,
    pub capacity: u64,
    /// Built dbs kept because a mount has them open.
    pub in_use: usize,
    /// Temporary files killed writers left in `tmp/` (older than an hour,
    /// held by no writer).
    pub temp_files_removed: usize,
}

/// Trims the cache directory: the chunk cache to `cap` (least recently used
/// first), the debris of killed writers in `tmp/`, and built dbs and logs
/// not used for `unused`, except dbs a mount has open (mounts hold a shared
/// lock on theirs).
pub fn collect_cache(
    cache_dir: &Path,
    cap: u64,
    unused: Duration,
    dry_run: bool,
) -> Result<CacheGcReport> {
    let trimmed = super::disk_cache::trim(cache_dir, cap, dry_run);
    let mut report = CacheGcReport {
        dry_run,
        chunks_removed: trimmed.removed,
        bytes_freed: trimmed.bytes_freed,
        chunk_bytes: trimmed.bytes_left,
        capacity: cap,
        temp_files_removed: super::disk_cache::sweep_temp(cache_dir, dry_run),
        ..CacheGcReport::default()
    };
    let cutoff = SystemTime::now()
        .checked_sub(unused)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let old = |meta: &fs::Metadata| meta.modified().is_ok_and(|t| t < cutoff);
    let mut candidates = files_below(&cache_dir.join("dbs"), 1);
    candidates.push((cache_dir.join("mount.log"), String::new()));
    for (path, _) in candidates {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !old(&meta) {
            continue;
        }
        if path.extension().is_some_and(|e| e == "db") && in_use(&path) {
            report.in_use += 1;
            continue;
        }
        if dry_run || fs::remove_file(&path).is_ok() {
            report.files_removed += 1;
            report.bytes_freed += meta.len();
        }
    }
    Ok(report)
}

/// Whether a mount holds `db` open (its shared lock blocks ours).
fn in_use(db: &Path) -> bool {
    match fs::File::open(db) {
        Ok(file) => matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}
