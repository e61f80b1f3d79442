//! Who owns the files in a store's `tmp/`, and sweeping what dead writers left.
//!
//! A push opens a [`TmpSession`]: a lock file `tmp/.push<random>.lock` it
//! holds under an exclusive `flock` for its whole run, and every temporary
//! file it writes is named `.push<random>-<random>`. A session whose lock
//! file nobody holds belongs to a writer that died (a SIGKILL, a crash):
//! its files are debris at once, whatever their age, while a live writer's
//! files are never touched. Files of no session (other writers, older
//! versions) are debris only once older than a cutoff.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

const LOCK_SUFFIX: &str = ".lock";
const SESSION_PREFIX: &str = ".push";

/// A writer's claim on its temporary files; dropping it removes the lock
/// file (the writer's temporary files are its own to remove first).
#[derive(Debug)]
pub struct TmpSession {
    lock_path: PathBuf,
    /// What every temporary file of this session is named after.
    prefix: String,
    _lock: File,
    /// Temporary files created and not yet moved out of `tmp/`.
    pending: AtomicUsize,
}

impl TmpSession {
    /// Opens a new session in `tmp_dir`, its lock file created and held.
    pub fn open(tmp_dir: &Path) -> std::io::Result<TmpSession> {
        let (file, path) = create_held(|| {
            tempfile::Builder::new()
                .prefix(SESSION_PREFIX)
                .suffix(LOCK_SUFFIX)
                .tempfile_in(tmp_dir)?
                .keep()
                .map_err(|e| e.error)
        })?;
        let prefix = session_prefix(&path);
        Ok(TmpSession {
            lock_path: path,
            prefix,
            _lock: file,
            pending: AtomicUsize::new(0),
        })
    }

    /// The prefix of this session's temporary file names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Counts a temporary file created.
    pub fn created(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a temporary file moved into place.
    pub fn published(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes whatever of this session is still in `tmp/`, once its
    /// writers are done. Returns how many temporary files it created and
    /// never published: all of them are gone now.
    pub fn clean_up(&self) -> usize {
        if let Some(dir) = self.lock_path.parent() {
            remove_prefixed(dir, &self.prefix, false);
        }
        self.pending.load(Ordering::Relaxed)
    }
}

impl Drop for TmpSession {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// A new file from `create`, held under an exclusive `flock` for as long as
/// it stays open: the lock tells a live writer's file from one a killed
/// writer left ([`is_unheld`]).
pub(crate) fn create_held<P: AsRef<Path>>(
    mut create: impl FnMut() -> std::io::Result<(File, P)>,
) -> std::io::Result<(File, P)> {
    loop {
        let (file, path) = create()?;
        file.lock()?;
        // A sweeper may have taken the file between its creation and our
        // lock, and removed it: then the lock guards nothing; try again.
        if still_linked(path.as_ref(), &file) {
            return Ok((file, path));
        }
    }
}

/// Whether no live writer holds the file at `path` (see [`create_held`]).
pub(crate) fn is_unheld(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| file.try_lock().is_ok())
}

/// Whether `path` still names the file `file` has open.
fn still_linked(path: &Path, file: &File) -> bool {
    match (fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.ino() == open.ino() && named.dev() == open.dev(),
        _ => false,
    }
}

/// Removes (or, when `dry_run`, counts) the debris in `tmp_dir`: every file
/// of a session no live writer holds, and files of no session last written
/// before `orphan_cutoff`. Returns how many temporary files (lock files not
/// counted).
pub fn sweep(tmp_dir: &Path, orphan_cutoff: SystemTime, dry_run: bool) -> usize {
    let mut live = Vec::new();
    let mut removed = 0;
    for lock_path in lock_files(tmp_dir) {
        let prefix = session_prefix(&lock_path);
        if is_unheld(&lock_path) {
            removed += remove_prefixed(tmp_dir, &prefix, dry_run);
            if !dry_run {
                let _ = fs::remove_file(&lock_path);
            }
        } else {
            live.push(prefix);
        }
    }
    removed + remove_orphans(tmp_dir, &live, orphan_cutoff, dry_run)
}

/// The session lock files in `tmp_dir`.
fn lock_files(tmp_dir: &Path) -> Vec<PathBuf> {
    entries(tmp_dir)
        .into_iter()
        .filter(|(_, name)| is_lock_name(name))
        .map(|(path, _)| path)
        .collect()
}

fn is_lock_name(name: &str) -> bool {
    name.starts_with(SESSION_PREFIX) && name.ends_with(LOCK_SUFFIX)
}

fn session_prefix(lock_path: &Path) -> String {
    let name = lock_path.file_name().unwrap_or_default().to_string_lossy();
    format!("{}-", name.trim_end_matches(LOCK_SUFFIX))
}

/// Removes (or counts) the files of `dir` named `prefix…`.
fn remove_prefixed(dir: &Path, prefix: &str, dry_run: bool) -> usize {
    entries(dir)
        .into_iter()
        .filter(|(_, name)| name.starts_with(prefix))
        .filter(|(path, _)| dry_run || fs::remove_file(path).is_ok())
        .count()
}

/// Removes (or counts) the files of no live session and no lock older than `cutoff`.
fn remove_orphans(dir: &Path, live: &[String], cutoff: SystemTime, dry_run: bool) -> usize {
    let old = |path: &Path| {
        fs::symlink_metadata(path).is_ok_and(|m| m.modified().is_ok_and(|t| t < cutoff))
    };
    entries(dir)
        .into_iter()
        .filter(|(_, name)| !is_lock_name(name) && !live.iter().any(|p| name.starts_with(p)))
        .filter(|(path, _)| old(path))
        .filter(|(path, _)| dry_run || fs::remove_file(path).is_ok())
        .count()
}

/// The files of `dir` with their names.
fn entries(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn touch(dir: &Path, name: &str) {
        fs::write(dir.join(name), b"x").unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = entries(dir).into_iter().map(|(_, n)| n).collect();
        names.sort();
        names
    }

    #[test]
    fn a_live_sessions_files_stay_and_a_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let live = TmpSession::open(dir.path()).unwrap();
        touch(dir.path(), &format!("{}a", live.prefix()));
        // A dead session: its lock file held by nobody.
        touch(dir.path(), ".pushdead.lock");
        touch(dir.path(), ".pushdead-1");
        touch(dir.path(), ".pushdead-2");
        let far_past = SystemTime::UNIX_EPOCH;
        assert_eq!(sweep(dir.path(), far_past, true), 2);
        assert_eq!(sweep(dir.path(), far_past, false), 2);
        let left = names(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter()
                .all(|n| n.starts_with(live.prefix().trim_end_matches('-')))
        );
    }

    #[test]
    fn orphans_go_only_past_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), ".tmpold");
        assert_eq!(sweep(dir.path(), SystemTime::UNIX_EPOCH, false), 0);
        let future = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(sweep(dir.path(), future, false), 1);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn clean_up_removes_the_sessions_files_and_counts_the_unpublished() {
        let dir = tempfile::tempdir().unwrap();
        let session = TmpSession::open(dir.path()).unwrap();
        for n in 0..3 {
            touch(dir.path(), &format!("{}{n}", session.prefix()));
            session.created();
        }
        session.published();
        assert_eq!(session.clean_up(), 2);
        drop(session);
        assert!(names(dir.path()).is_empty());
    }
}
