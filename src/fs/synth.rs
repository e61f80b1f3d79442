//! The synthesized `mache.db`: built on first need, kept on disk, served
//! read-only.
//!
//! The db is exactly what `pull` restores (it *is* a pull: every chunk
//! fetched in parallel, verified, decoded and written by the same code), into
//! `<cache_dir>/dbs/`, through a temporary file renamed into place, so a
//! crash or a second mount building the same db never exposes a partial
//! file. Rollback-journal mode, so readers open it read-only and leave no
//! `-wal`/`-shm` behind.
//!
//! The file is keyed by the lockfile root and a digest of the sources'
//! paths and kinds: the root covers every chunk, but a raw chunk's row also
//! takes its id, path and language from the lockfile entry, so two lockfiles
//! with the same chunks and other paths must not share a db. A later mount of
//! the same bundle finds the file and reuses it after checking it holds one
//! `_source` row per lockfile source.
//!
//! A bundle whose push recorded the db ([`DbRecord`], trusted only when
//! this build's synthesizer made it) has its size known from the start, so
//! the mount shows it without building anything; the build then checks its
//! result against the record's size and BLAKE3, and a db that differs is
//! removed and refused ([`Error::DbMismatch`]) rather than served at a size
//! the kernel was not told. A db reused from an earlier mount must have the
//! recorded size.
//!
//! A failed build is remembered for a while ([`Backoff`]: 5 s, doubling up
//! to 60 s while builds keep failing): opens in that time fail at once with
//! its error instead of rerunning a build that cannot succeed (a registry
//! that is down), and the first open after it builds again, so the mount
//! recovers by itself. Concurrent opens share one build and its result.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::bundle;
use crate::error::{Error, Result};
use crate::fs::content::Metered;
use crate::fs::status::{DbStatus, Stats};
use crate::hash::Hash;
use crate::lockfile::Lockfile;
use crate::machedb;
use crate::store::sizes::DbRecord;

/// A built db, open for reading.
#[derive(Debug)]
pub struct BuiltDb {
    pub file: File,
    pub size: u64,
    pub reused: bool,
    pub build_seconds: f64,
}

/// How long a failed build is remembered: `first` after one failure,
/// doubled after each further one, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

/// The backoff of a mount's db build.
pub const BUILD_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(5),
    cap: Duration::from_secs(60),
};

/// The last build's failure, answered to opens until `retry_at`.
#[derive(Debug)]
struct Failure {
    error: Error,
    /// How long this failure is remembered (the next one's doubles it).
    wait: Duration,
    retry_at: Instant,
}

/// The db of one mounted bundle.
pub struct Synth {
    path: PathBuf,
    /// What the bundle's push found the db to be, if it recorded it with
    /// this build's synthesizer.
    record: Option<DbRecord>,
    built: OnceLock<BuiltDb>,
    /// Held while building: one build at a time, later callers wait for it.
    building: Mutex<()>,
    failed: Mutex<Option<Failure>>,
    backoff: Backoff,
    attempts: AtomicU64,
}

/// The cache file name for `lockfile`: `<root hex>-<16 hex of the rows digest>.db`.
pub fn db_file_name(lockfile: &Lockfile) -> String {
    let mut hasher = blake3::Hasher::new();
    for source in &lockfile.sources {
        for field in [source.path.as_bytes(), source.kind.as_bytes()] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
    }
    let rows = Hash(*hasher.finalize().as_bytes()).to_hex();
    format!("{}-{}.db", lockfile.root.to_hex(), &rows[..16])
}

impl Synth {
    /// The db for `lockfile`, kept under `cache_dir/dbs/`, a failed build
    /// remembered for `backoff`; `record` is the bundle's, if any (used
    /// only if this build's synthesizer made it). Nothing is read or built
    /// until [`Synth::get`].
    pub fn new(
        cache_dir: &Path,
        lockfile: &Lockfile,
        record: Option<DbRecord>,
        backoff: Backoff,
    ) -> Synth {
        let ours = machedb::synthesizer();
        let record = record.filter(|record| {
            let usable = record.synthesizer == ours;
            if !usable {
                tracing::info!(
                    "mache.db was recorded by {:?}, this build synthesizes {ours:?}: \
                     its size is known once it is built",
                    record.synthesizer
                );
            }
            usable
        });
        Synth {
            path: cache_dir.join("dbs").join(db_file_name(lockfile)),
            record,
            built: OnceLock::new(),
            building: Mutex::new(()),
            failed: Mutex::new(None),
            backoff,
            attempts: AtomicU64::new(0),
        }
    }

    /// Builds started so far (a reused db counts as one).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Where the db lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The db if it is ready now.
    pub fn ready(&self) -> Option<&BuiltDb> {
        self.built.get()
    }

    /// The db's size if known without building it: recorded, or built.
    pub fn known_size(&self) -> Option<u64> {
        match self.built.get() {
            Some(db) => Some(db.size),
            None => self.record.as_ref().map(|record| record.size),
        }
    }

    /// The db, reusing the cached file or building it. Concurrent callers
    /// wait for one build and all get its result. A failed build is
    /// remembered for the backoff: callers until then get its reason at
    /// once, the first one after it builds again.
    pub fn get(&self, source: &Metered, lockfile: &Lockfile, stats: &Stats) -> Result<&BuiltDb> {
        if let Some(db) = self.built.get() {
            return Ok(db);
        }
        self.check_remembered()?;
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = self.built.get() {
            return Ok(db);
        }
        // The build this caller waited for may just have failed.
        self.check_remembered()?;
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match self.reuse_or_build(source, lockfile) {
            Ok(db) => {
                *self.failure() = None;
                Ok(self.built.get_or_init(|| db))
            }
            Err(e) => {
                stats.failed("mache.db", &e);
                self.remember(&e);
                Err(e)
            }
        }
    }

    fn failure(&self) -> MutexGuard<'_, Option<Failure>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails with the last build's error while its backoff lasts.
    fn check_remembered(&self) -> Result<()> {
        let failure = self.failure();
        let Some(failure) = failure.as_ref() else {
            return Ok(());
        };
        match failure.retry_at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => {
                tracing::debug!(
                    "mache.db: the last build failed, tried again in {:.1}s: {}",
                    left.as_secs_f64(),
                    failure.error
                );
                Err(failure.error.share())
            }
            _ => Ok(()),
        }
    }

    /// Remembers a failed build: for the first backoff, or twice the
    /// previous one if the build before failed too.
    fn remember(&self, error: &Error) {
        let mut failure = self.failure();
        let wait = match failure.as_ref() {
            Some(previous) => (previous.wait * 2).min(self.backoff.cap),
            None => self.backoff.first,
        };
        tracing::info!(
            "mache.db: opens fail at once for {:.0}s, then the build is tried again",
            wait.as_secs_f64()
        );
        *failure = Some(Failure {
            error: error.share(),
            wait,
            retry_at: Instant::now() + wait,
        });
    }

    /// Ends the current backoff now, as if its time had passed.
    #[cfg(test)]
    pub(crate) fn expire_backoff(&self) {
        if let Some(failure) = self.failure().as_mut() {
            failure.retry_at = Instant::now();
        }
    }

    /// How long the remembered failure lasts (its whole backoff), if any.
    #[cfg(test)]
    pub(crate) fn remembered_wait(&self) -> Option<Duration> {
        self.failure().as_ref().map(|f| f.wait)
    }

    fn reuse_or_build(&self, source: &Metered, lockfile: &Lockfile) -> Result<BuiltDb> {
        let started = Instant::now();
        if self.path.is_file() {
            match check_cached(&self.path, lockfile.sources.len(), self.record.as_ref()) {
                Ok(()) => return open_built(&self.path, true, 0.0),
                Err(e) => tracing::warn!("rebuilding {}: {e}", self.path.display()),
            }
        }
        let dir = self.path.parent().expect("db path has a parent");
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let report = bundle::pull(
            source,
            lockfile,
            &self.path,
            bundle::Existing::Replace,
            true,
            false,
        )?;
        if let Some(Err(e)) = self.record.as_ref().map(|r| check_record(&self.path, r)) {
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "built {} ({} sources) in {seconds:.2}s",
            self.path.display(),
            report.sources
        );
        open_built(&self.path, false, seconds)
    }

    /// For the status file.
    pub fn status(&self) -> DbStatus {
        let path = self.path.display().to_string();
        if let Some(db) = self.built.get() {
            return DbStatus {
                state: "ready",
                path,
                reused: db.reused,
                size: Some(db.size),
                build_seconds: (!db.reused).then_some(db.build_seconds),
            };
        }
        let state = if self.building.try_lock().is_err() {
            "building"
        } else if self.failure().is_some() {
            "failed"
        } else {
            "absent"
        };
        DbStatus {
            state,
            path,
            reused: false,
            size: self.record.as_ref().map(|record| record.size),
            build_seconds: None,
        }
    }
}

fn open_built(path: &Path, reused: bool, build_seconds: f64) -> Result<BuiltDb> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // Held while mounted: `gc --cache` leaves a locked db alone, and one
    // used recently (its mtime, refreshed here) too.
    if let Err(e) = file.lock_shared() {
        tracing::warn!("locking {}: {e}", path.display());
    }
    if let Ok(writable) = File::options().write(true).open(path) {
        let _ = writable.set_modified(std::time::SystemTime::now());
    }
    let size = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    Ok(BuiltDb {
        file,
        size,
        reused,
        build_seconds,
    })
}

/// Checks a freshly built db against the bundle's record: its size, then
/// its BLAKE3.
fn check_record(path: &Path, record: &DbRecord) -> Result<()> {
    let reading = |e| Error::io(format!("reading {}", path.display()), e);
    let mismatch = |reason: String| Error::DbMismatch {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(reason) = size_mismatch(path, record)? {
        return Err(mismatch(reason));
    }
    let hash = Hash::of_file(path).map_err(reading)?;
    if hash != record.hash {
        return Err(mismatch(format!(
            "its BLAKE3 is {}, the record says {}",
            hash.to_prefixed(),
            record.hash.to_prefixed()
        )));
    }
    Ok(())
}

/// How the db at `path` differs in size from `record`, if it does.
fn size_mismatch(path: &Path, record: &DbRecord) -> Result<Option<String>> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    Ok((size != record.size)
        .then(|| format!("it is {size} bytes, the record says {}", record.size)))
}

/// Checks a db left by an earlier mount: it opens, has one `_source` row
/// per lockfile source, and the recorded size if there is a record.
fn check_cached(path: &Path, sources: usize, record: Option<&DbRecord>) -> Result<()> {
    if let Some(reason) = record
        .map(|r| size_mismatch(path, r))
        .transpose()?
        .flatten()
    {
        return Err(Error::BadDb {
            path: path.to_path_buf(),
            reason,
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(path, e))?;
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM _source", [], |row| row.get(0))
        .map_err(|e| Error::sqlite(path, e))?;
    if rows as usize != sources {
        return Err(Error::BadDb {
            path: path.to_path_buf(),
            reason: format!("{rows} _source rows, the lockfile has {sources} sources"),
        });
    }
    Ok(())
}
