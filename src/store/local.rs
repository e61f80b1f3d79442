//! The local directory store (SPEC §5), plus the refs and indexes we keep
//! beside it.
//!
//! ```text
//! <store>/objects/<hex[0..2]>/<hex[2..]>   chunks, content-addressed, never overwritten
//! <store>/mache.lock.bin, mache.lock.toml  the latest bundle (what the Go mache reads)
//! <store>/lockfiles/<hex>.bin              every pushed lockfile, by its BLAKE3
//! <store>/lockfiles/<hex>.sizes.json       the sizes index of that lockfile
//! <store>/refs/<name>                      "blake3:<lockfile hex>\n"
//! <store>/pushed/<db blake3>                "blake3:<lockfile hex>\nast_sources <n>\n": what an unchanged db was pushed as
//! <store>/tmp/                             in-flight writes; nothing here is ever read
//! ```
//!
//! Beside these, the tags `serve` keeps (`repositories/`, `sha256/`; see
//! [`super::served`]) are refs of the store too, named
//! `<repository>:<tag>`.
//!
//! Writes go to `tmp/` first and are moved into place only once complete and
//! synced, so a crash or a full disk never leaves a partial object where a
//! reader would see it. Objects are linked into place with no-clobber
//! semantics; an object already present is verified, and a mismatch is a hard
//! error. A store written by the Go mache (only `mache.lock.bin`, no refs) is
//! read as having one ref, `latest`.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use tempfile::{NamedTempFile, TempPath};

use std::sync::Arc;

use super::served::ServedTag;
use super::tmp::TmpSession;
use super::{Backend, Bundle, BundleStore, ChunkSource, SizeIndex, Verified};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::binary;
use crate::oci::check_tag;

/// The top-level binary lockfile name (shared with mache).
pub const LOCK_BIN: &str = "mache.lock.bin";
/// The top-level TOML lockfile name (shared with mache).
pub const LOCK_TOML: &str = "mache.lock.toml";
/// The ref every push moves.
pub const LATEST: &str = "latest";

/// Temporary files older than this are debris of a dead writer.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Objects written per sync batch (bounds open temp paths and memory).
const WRITE_BATCH: usize = 512;

/// A store directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// The writer's claim on its files in `tmp/` ([`with_tmp_session`](Self::with_tmp_session)).
    session: Option<Arc<TmpSession>>,
}

/// A held lock on a store; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

/// Bytes to store, with their BLAKE3 computed on construction: an object
/// can never be stored under the wrong name, and nobody hashes it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    hash: Hash,
    bytes: Vec<u8>,
}

impl Object {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Object {
        Object {
            hash: Hash::of(&bytes),
            bytes,
        }
    }

    /// The object's name.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, the object consumed.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// An object written to `tmp/` and not yet visible in `objects/`; dropping
/// it deletes the temporary file.
#[derive(Debug)]
pub struct Staged {
    hash: Hash,
    temp: TempPath,
    len: u64,
}

/// What a push of a db was, remembered by the db's fingerprint for its
/// next push (`pushed/<fingerprint hex>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushRecord {
    /// The lockfile it was pushed as.
    pub lockfile_hash: Hash,
    /// Its sources with at least one `_ast` row, which the bundle alone
    /// does not tell.
    pub ast_sources: usize,
}

/// The key of a push record's second line.
const AST_SOURCES: &str = "ast_sources ";

/// What a batch write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutReport {
    /// Objects written by this call.
    pub new: usize,
    /// Objects already present (and verified).
    pub present: usize,
    /// Bytes written by this call.
    pub new_bytes: u64,
}

impl PutReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, other: PutReport) {
        self.new += other.new;
        self.present += other.present;
        self.new_bytes += other.new_bytes;
    }
}

impl LocalStore {
    /// Opens an existing store: a directory with `objects/` or a
    /// `mache.lock.bin`. A directory that does not exist is
    /// [`Error::NothingPushed`]; one that is not a store, [`Error::NotAStore`].
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        if !root.exists() {
            return Err(Error::NothingPushed(root));
        }
        if !root.join("objects").is_dir() && !root.join(LOCK_BIN).is_file() {
            return Err(Error::NotAStore(root));
        }
        Ok(LocalStore {
            root,
            session: None,
        })
    }

    /// Opens a store for writing, creating its directories if needed, and
    /// clears temporary files left by writers that died.
    pub fn create(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        for dir in ["objects", "lockfiles", "refs", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        let store = LocalStore {
            root,
            session: None,
        };
        store.sweep_tmp(false);
        Ok(store)
    }

    /// The same store, its temporary files claimed by a new session
    /// ([`TmpSession`]) held while the returned store lives: no sweep takes
    /// them, and a killed writer's are swept at once by the next one.
    pub fn with_tmp_session(&self) -> Result<LocalStore> {
        let tmp_dir = self.root.join("tmp");
        let session = TmpSession::open(&tmp_dir)
            .map_err(|e| Error::io(format!("creating a lock file in {}", tmp_dir.display()), e))?;
        Ok(LocalStore {
            root: self.root.clone(),
            session: Some(Arc::new(session)),
        })
    }

    /// The session of [`with_tmp_session`](Self::with_tmp_session), if any.
    pub fn tmp_session(&self) -> Option<&TmpSession> {
        self.session.as_deref()
    }

    /// Removes (or, when `dry_run`, counts) the temporary files dead writers
    /// left in `tmp/`: those of a session no writer holds, and any other
    /// older than an hour. Returns how many.
    pub fn sweep_tmp(&self, dry_run: bool) -> usize {
        let cutoff = SystemTime::now()
            .checked_sub(STALE_TMP)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        super::tmp::sweep(&self.root.join("tmp"), cutoff, dry_run)
    }

    /// Counts one of this writer's temporary files moved into place.
    fn published_temp(&self) {
        if let Some(session) = &self.session {
            session.published();
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store for messages: its path.
    pub fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// Takes the store's lock shared, for as long as the returned guard
    /// lives: writers (push) hold it while they write, so `gc`, which takes
    /// it exclusively, never runs between a writer's check that an object
    /// is present and the lockfile that makes it reachable.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(false)
    }

    /// Takes the store's lock exclusively (gc), waiting for writers.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock(true)
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let locked = if exclusive {
            match file.try_lock() {
                Ok(()) => Ok(()),
                Err(fs::TryLockError::WouldBlock) => {
                    tracing::warn!(
                        "{}: waiting for pushes in progress to finish",
                        self.describe()
                    );
                    file.lock()
                }
                Err(fs::TryLockError::Error(e)) => Err(e),
            }
        } else {
            file.lock_shared()
        };
        locked.map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(StoreLock { _file: file })
    }

    /// Where object `hash` lives.
    pub fn object_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// Writes every object not yet present; verifies those that are.
    pub fn put_all(&self, objects: &[&Object]) -> Result<PutReport> {
        let mut report = PutReport::default();
        for batch in objects.chunks(WRITE_BATCH) {
            let staged: Vec<Option<Staged>> = batch
                .par_iter()
                .map(|object| self.stage(object))
                .collect::<Result<_>>()?;
            report.add(self.publish(staged.into_iter().flatten().collect())?);
        }
        report.present = objects.len() - report.new;
        Ok(report)
    }

    /// Writes an object to `tmp/`, not yet visible, unless it is already
    /// present (then verifies it and returns `None`). Safe to call from many
    /// threads; [`publish`](Self::publish) makes the result visible.
    pub fn stage(&self, object: &Object) -> Result<Option<Staged>> {
        if self.verify_existing(&object.hash)? {
            return Ok(None);
        }
        let temp = self.write_temp(object.bytes(), false)?;
        Ok(Some(Staged {
            hash: object.hash,
            temp,
            len: object.bytes().len() as u64,
        }))
    }

    /// Makes staged objects durable (one `syncfs` for all of them) and then
    /// links each into place. An object another writer published meanwhile
    /// is verified and counted as present.
    pub fn publish(&self, staged: Vec<Staged>) -> Result<PutReport> {
        let mut report = PutReport::default();
        if staged.is_empty() {
            return Ok(report);
        }
        self.sync()?;
        for Staged { hash, temp, len } in staged {
            if self.publish_object(&hash, temp)? {
                report.new += 1;
                report.new_bytes += len;
            } else {
                report.present += 1;
            }
        }
        self.sync()?;
        Ok(report)
    }

    /// Links a staged object into place without clobbering. Returns whether
    /// it was new; if another writer got there first, verifies theirs.
    fn publish_object(&self, hash: &Hash, temp: TempPath) -> Result<bool> {
        let path = self.object_path(hash);
        let parent = path.parent().expect("object path has a parent");
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        match temp.persist_noclobber(&path) {
            Ok(()) => {
                self.published_temp();
                Ok(true)
            }
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => {
                self.verify_existing(hash)?;
                Ok(false)
            }
            Err(e) => Err(Error::io(format!("writing {}", path.display()), e.error)),
        }
    }

    /// `Ok(true)` if the object is present and sound, `Ok(false)` if absent,
    /// `Err(Corrupt)` if present with the wrong bytes.
    fn verify_existing(&self, hash: &Hash) -> Result<bool> {
        match self.read_verified(hash) {
            Ok(_) => Ok(true),
            Err(Error::ObjectMissing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Object `hash`, checked against it.
    pub(super) fn read_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        read_content_addressed(&self.object_path(hash), hash, || Error::ObjectMissing {
            hash: *hash,
            store: self.describe(),
        })
    }

    /// Writes `bytes` to a new file under `tmp/`, optionally fsynced.
    fn write_temp(&self, bytes: &[u8], fsync: bool) -> Result<TempPath> {
        let tmp_dir = self.root.join("tmp");
        let context = || format!("writing a temporary file in {}", tmp_dir.display());
        let mut file = shareable_temp_file(&tmp_dir, self.temp_prefix(), "")
            .map_err(|e| Error::io(context(), e))?;
        if let Some(session) = &self.session {
            session.created();
        }
        file.write_all(bytes).map_err(|e| Error::io(context(), e))?;
        if fsync {
            file.as_file()
                .sync_all()
                .map_err(|e| Error::io(context(), e))?;
        }
        Ok(file.into_temp_path())
    }

    /// Atomically replaces the file at `relative` with `bytes`.
    fn replace_file(&self, relative: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(relative);
        let temp = self.write_temp(bytes, true)?;
        temp.persist(&path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e.error))?;
        self.published_temp();
        Ok(())
    }

    /// Flushes everything written so far to disk (one `syncfs` for a whole
    /// batch instead of one `fsync` per object).
    fn sync(&self) -> Result<()> {
        let dir = fs::File::open(&self.root)
            .map_err(|e| Error::io(format!("opening {}", self.root.display()), e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes any open descriptor on the filesystem to flush.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::io(format!("syncing {}", self.root.display()), e));
        }
        Ok(())
    }

    /// Records a pushed bundle: its lockfile (by hash) and sizes index,
    /// then points `latest` and `tag` at it ([`point_refs`](Self::point_refs)).
    /// Returns the lockfile's hash.
    pub fn record_bundle(
        &self,
        lockfile_bytes: &[u8],
        sizes: &SizeIndex,
        tag: &str,
    ) -> Result<Hash> {
        check_tag(tag)?;
        let hash = Hash::of(lockfile_bytes);
        let hex = hash.to_hex();
        self.replace_file(&format!("lockfiles/{hex}.bin"), lockfile_bytes)?;
        self.record_sizes(sizes)?;
        self.point_refs(lockfile_bytes, tag)?;
        Ok(hash)
    }

    /// Writes (or replaces) the sizes index of the lockfile it describes.
    pub fn record_sizes(&self, sizes: &SizeIndex) -> Result<()> {
        let hex = sizes.lockfile_hash.to_hex();
        self.replace_file(&format!("lockfiles/{hex}.sizes.json"), &sizes.to_json())
    }

    /// Makes a recorded bundle the latest: the refs `latest` and `tag`,
    /// and with `latest` the top-level `mache.lock.bin`/`.toml` (what the
    /// Go mache reads; written by one private `write_ref`). A file that
    /// already says so is left untouched, so pointing at the bundle already
    /// there changes nothing.
    pub fn point_refs(&self, lockfile_bytes: &[u8], tag: &str) -> Result<()> {
        check_tag(tag)?;
        let mut changed = self.write_ref(LATEST, lockfile_bytes)?;
        changed |= self.write_ref(tag, lockfile_bytes)?;
        if changed {
            self.sync()?;
        }
        Ok(())
    }

    /// Points ref `name` at the bundle whose binary lockfile is
    /// `lockfile_bytes`, each file replaced atomically. The one place a ref
    /// is written: writing `latest` also rewrites the top-level
    /// `mache.lock.bin` and `mache.lock.toml` (rendered from those bytes, a
    /// source at a time), so they always name `latest` whatever
    /// moved it, and `gc` keeps nothing only they reached. Files that
    /// already hold these bytes are left untouched. Returns whether anything
    /// was written; the caller syncs.
    fn write_ref(&self, name: &str, lockfile_bytes: &[u8]) -> Result<bool> {
        let ref_text = format!("{}\n", Hash::of(lockfile_bytes).to_prefixed());
        let refs_dir = self.root.join("refs");
        fs::create_dir_all(&refs_dir)
            .map_err(|e| Error::io(format!("creating {}", refs_dir.display()), e))?;
        let mut changed = false;
        if name == LATEST {
            // The lockfile files before the ref: the ref names a bundle only
            // once what the Go mache reads agrees with it.
            if !self.file_holds(LOCK_BIN, lockfile_bytes) {
                self.replace_file(LOCK_BIN, lockfile_bytes)?;
                changed = true;
            }
            changed |= self.replace_file_unless_same(LOCK_TOML, |out| {
                crate::lockfile::text::write_toml_of_binary(lockfile_bytes, out)
            })?;
        }
        let relative = format!("refs/{name}");
        if !self.file_holds(&relative, ref_text.as_bytes()) {
            self.replace_file(&relative, ref_text.as_bytes())?;
            changed = true;
        }
        Ok(changed)
    }

    /// Writes what `render` writes to a temporary file and, unless the file
    /// at `relative` already holds exactly those bytes, atomically replaces
    /// it with that one. Returns whether it was replaced. Large files (the
    /// TOML lockfile of a million sources) so never sit whole in memory.
    fn replace_file_unless_same(
        &self,
        relative: &str,
        render: impl FnOnce(&mut std::io::BufWriter<&fs::File>) -> Result<()>,
    ) -> Result<bool> {
        let path = self.root.join(relative);
        let tmp_dir = self.root.join("tmp");
        let context = || format!("writing a temporary file in {}", tmp_dir.display());
        let file = shareable_temp_file(&tmp_dir, self.temp_prefix(), "")
            .map_err(|e| Error::io(context(), e))?;
        if let Some(session) = &self.session {
            session.created();
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file.as_file());
        render(&mut out)?;
        out.flush().map_err(|e| Error::io(context(), e))?;
        drop(out);
        if files_hold_the_same(file.path(), &path) {
            drop(file);
            self.published_temp();
            return Ok(false);
        }
        file.as_file()
            .sync_all()
            .map_err(|e| Error::io(context(), e))?;
        file.persist(&path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e.error))?;
        self.published_temp();
        Ok(true)
    }

    /// Whether the file at `relative` exists with exactly `bytes`, compared
    /// a block at a time (a lockfile of a million sources is hundreds of
    /// megabytes: not read whole beside the one in memory).
    fn file_holds(&self, relative: &str, bytes: &[u8]) -> bool {
        const BLOCK: usize = 1 << 20;
        let path = self.root.join(relative);
        let Ok(mut file) = fs::File::open(&path) else {
            return false;
        };
        if !file.metadata().is_ok_and(|m| m.len() == bytes.len() as u64) {
            return false;
        }
        let mut block = vec![0u8; BLOCK];
        bytes.chunks(BLOCK).all(|expected| {
            let held = &mut block[..expected.len()];
            file.read_exact(held).is_ok() && held == expected
        })
    }

    /// Remembers what a db whose file hashes to `fingerprint` was pushed
    /// as, so an unchanged db can be re-pushed without re-encoding
    /// (`pushed/<fingerprint hex>`).
    pub fn remember_push(&self, fingerprint: &Hash, record: &PushRecord) -> Result<()> {
        let dir = self.root.join("pushed");
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let text = format!(
            "{}\n{AST_SOURCES}{}\n",
            record.lockfile_hash.to_prefixed(),
            record.ast_sources
        );
        self.replace_file(&format!("pushed/{}", fingerprint.to_hex()), text.as_bytes())
    }

    /// What a db with this fingerprint was last pushed as, if anything (a
    /// record in an older form is nothing: the db is pushed again).
    pub fn recall_push(&self, fingerprint: &Hash) -> Option<PushRecord> {
        let path = self.root.join("pushed").join(fingerprint.to_hex());
        let text = fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let lockfile_hash = Hash::from_prefixed(lines.next()?).ok()?;
        let ast_sources = lines.next()?.strip_prefix(AST_SOURCES)?.parse().ok()?;
        Some(PushRecord {
            lockfile_hash,
            ast_sources,
        })
    }

    /// The length of object `hash` if it is present: a `stat`, trusting its
    /// bytes (reads verify them).
    pub fn object_len(&self, hash: &Hash) -> Option<u64> {
        fs::metadata(self.object_path(hash))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Resolves `reference` to a bundle: a ref name (`latest`, `v1`),
    /// `blake3:<hex>` naming a lockfile directly, or `<repository>:<tag>`
    /// naming a tag `serve` keeps (the lockfile its manifest's config is).
    /// In a store written by the Go mache, `latest` is its top-level
    /// `mache.lock.bin`.
    pub fn resolve(&self, reference: &str) -> Result<Bundle> {
        let lockfile_bytes = self.read_lockfile_for(reference)?;
        let lockfile_hash = Hash::of(&lockfile_bytes);
        let lockfile = binary::decode_supported(&lockfile_bytes)?;
        let sizes = self.read_sizes(&lockfile_hash, lockfile.sources.len())?;
        Ok(Bundle::new(lockfile_hash, lockfile_bytes, lockfile, sizes))
    }

    fn read_lockfile_for(&self, reference: &str) -> Result<Vec<u8>> {
        if reference.starts_with(crate::hash::TEXT_PREFIX) {
            return self.read_lockfile_by_hash(&Hash::from_prefixed(reference)?);
        }
        if reference.contains(':') {
            let tag = ServedTag::parse(reference)?;
            return self.read_verified(&self.served_lockfile(&tag)?);
        }
        check_tag(reference)?;
        let ref_path = self.root.join("refs").join(reference);
        match fs::read_to_string(&ref_path) {
            Ok(text) => {
                let hash = Hash::from_prefixed(text.trim()).map_err(|_| {
                    Error::BadLockfile(format!("ref file {} is malformed", ref_path.display()))
                })?;
                self.read_lockfile_by_hash(&hash)
            }
            Err(e) if e.kind() == ErrorKind::NotFound && reference == LATEST => {
                read_file(&self.root.join(LOCK_BIN)).map_err(|e| match e {
                    Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                        Error::NothingPushed(self.root.clone())
                    }
                    other => other,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.ref_missing(reference)),
            Err(e) => Err(Error::io(format!("reading {}", ref_path.display()), e)),
        }
    }

    /// No ref `name`, naming the refs there are (only their names are
    /// read: a served tag is listed whatever its manifest).
    pub(super) fn ref_missing(&self, name: &str) -> Error {
        let own = self
            .own_refs()
            .map(|refs| refs.into_iter().map(|(name, _)| name));
        let served = self
            .served_tags()
            .map(|tags| tags.into_iter().map(|tag| tag.to_string()));
        let known = match (own, served) {
            (Ok(own), Ok(served)) => Some(own.chain(served).collect()),
            _ => None,
        };
        Error::RefMissing {
            name: name.to_string(),
            store: self.describe(),
            known,
        }
    }

    fn read_lockfile_by_hash(&self, hash: &Hash) -> Result<Vec<u8>> {
        let path = self
            .root
            .join("lockfiles")
            .join(format!("{}.bin", hash.to_hex()));
        read_content_addressed(&path, hash, || self.ref_missing(&hash.to_prefixed()))
    }

    /// The sizes index for a lockfile, if our push left one. A damaged index
    /// is ignored with a warning: it is an accelerator, not part of the bundle.
    pub fn read_sizes(&self, lockfile_hash: &Hash, sources: usize) -> Result<Option<SizeIndex>> {
        let path = self
            .root
            .join("lockfiles")
            .join(format!("{}.sizes.json", lockfile_hash.to_hex()));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        match SizeIndex::from_json(&bytes, lockfile_hash, sources) {
            Ok(index) => Ok(Some(index)),
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", path.display());
                Ok(None)
            }
        }
    }

    /// Points tag `name` at the bundle `reference` names (atomically; an
    /// existing tag moves). Returns the lockfile hash.
    pub fn tag(&self, reference: &str, name: &str) -> Result<Hash> {
        check_tag(name)?;
        let bundle = self.resolve(reference)?;
        self.point_ref(name, &bundle)?;
        Ok(bundle.lockfile_hash)
    }

    /// Points ref `name` at a resolved bundle (`latest` moves the top-level
    /// lockfiles with it), synced.
    pub fn point_ref(&self, name: &str, bundle: &Bundle) -> Result<()> {
        check_tag(name)?;
        if self.write_ref(name, &bundle.lockfile_bytes)? {
            self.sync()?;
        }
        Ok(())
    }

    /// Removes tag `name` (the bundle stays until `gc`). `latest` is not
    /// removed: every push moves it, and a mount without `--ref` reads it.
    pub fn untag(&self, name: &str) -> Result<Hash> {
        if name.contains(':') {
            return self.untag_served(&super::served::ServedTag::parse(name)?);
        }
        check_tag(name)?;
        if name == LATEST {
            return Err(Error::Usage(
                "latest cannot be removed: every push moves it (tag another bundle as latest instead)"
                    .into(),
            ));
        }
        let relative = format!("refs/{name}");
        let path = self.root.join(&relative);
        let hash = match fs::read_to_string(&path) {
            Ok(text) => Hash::from_prefixed(text.trim())?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.ref_missing(name)),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        self.remove_file(&relative)?;
        Ok(hash)
    }

    /// Removes a tag `serve` keeps (what `DELETE …/manifests/<tag>` does).
    fn untag_served(&self, tag: &super::served::ServedTag) -> Result<Hash> {
        let lockfile = self.served_lockfile(tag)?;
        self.remove_file(&super::served::tag_path(&tag.repository, &tag.tag))?;
        Ok(lockfile)
    }

    /// Every ref and the lockfile it names: the store's own
    /// ([`own_refs`](Self::own_refs)), then each tag `serve` keeps whose
    /// manifest is a bundle's, as `<repository>:<tag>`. A served tag that
    /// cannot be read is left out with a warning.
    pub fn refs(&self) -> Result<Vec<(String, Hash)>> {
        let mut refs = self.own_refs()?;
        for tag in self.served_tags()? {
            match self.served_lockfile(&tag) {
                Ok(hash) => refs.push((tag.to_string(), hash)),
                Err(Error::BadManifest(why)) => tracing::debug!("{why}: not listed"),
                Err(e) => tracing::warn!("leaving {tag} out of the refs: {e}"),
            }
        }
        Ok(refs)
    }

    /// The store's own refs (`refs/`, and a Go mache store's top-level
    /// lockfile as `latest`) and the lockfile each names, sorted by name.
    pub fn own_refs(&self) -> Result<Vec<(String, Hash)>> {
        let dir = self.root.join("refs");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut refs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(text) = fs::read_to_string(entry.path())
                && let Ok(hash) = Hash::from_prefixed(text.trim())
            {
                refs.push((name, hash));
            }
        }
        if !refs.iter().any(|(name, _)| name == LATEST)
            && let Ok(bytes) = fs::read(self.root.join(LOCK_BIN))
        {
            // A store written by the Go mache: its lockfile is `latest`.
            refs.push((LATEST.to_string(), Hash::of(&bytes)));
        }
        refs.sort();
        Ok(refs)
    }

    /// A new, empty file in `tmp/` named `<prefix><random>`, for a writer
    /// that fills it bit by bit (an upload) and then hands it to
    /// [`publish_file`](Self::publish_file). Dropping it deletes it.
    pub fn temp_file(&self, prefix: &str) -> Result<NamedTempFile> {
        let tmp_dir = self.root.join("tmp");
        shareable_temp_file(&tmp_dir, prefix, "").map_err(|e| {
            Error::io(
                format!("creating a temporary file in {}", tmp_dir.display()),
                e,
            )
        })
    }

    /// A new, empty scratch file in `tmp/` named after this store's
    /// temporary-file session, if it has one ([`with_tmp_session`](Self::with_tmp_session)),
    /// so that the next writer sweeps it (and any file named after it) if
    /// this one is killed. Dropping it deletes it; say so with
    /// [`scratch_removed`](Self::scratch_removed), or the session counts it
    /// among the files an interrupted writer left.
    pub fn scratch_file(&self) -> Result<NamedTempFile> {
        let file = self.temp_file(self.temp_prefix())?;
        if let Some(session) = &self.session {
            session.created();
        }
        Ok(file)
    }

    /// Counts a [`scratch_file`](Self::scratch_file) as removed.
    pub fn scratch_removed(&self) {
        self.published_temp();
    }

    fn temp_prefix(&self) -> &str {
        self.session.as_ref().map_or(".tmp", |s| s.prefix())
    }

    /// Makes a complete file written in `tmp/` visible as object `hash`
    /// (`len` bytes), as [`publish`](Self::publish) does for staged objects.
    /// The caller has checked that its bytes hash to `hash`. Returns whether
    /// the object is new; one already present is verified (without reading
    /// it into memory) and the file is dropped.
    pub fn publish_file(&self, hash: &Hash, temp: TempPath, len: u64) -> Result<bool> {
        if self.check_object(hash)? {
            return Ok(false);
        }
        let report = self.publish(vec![Staged {
            hash: *hash,
            temp,
            len,
        }])?;
        Ok(report.new == 1)
    }

    /// Whether object `hash` is present and sound, hashing the file where it
    /// lies (memory-mapped) rather than reading it into memory: `Ok(false)`
    /// if absent, `Err(Corrupt)` if present with other bytes.
    pub fn check_object(&self, hash: &Hash) -> Result<bool> {
        let path = self.object_path(hash);
        if !path.is_file() {
            return Ok(false);
        }
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_mmap(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let actual = Hash(*hasher.finalize().as_bytes());
        if actual != *hash {
            return Err(Error::Corrupt {
                path,
                expected: *hash,
                actual,
            });
        }
        Ok(true)
    }

    /// Removes every file in `tmp/` whose name starts with `prefix`: what
    /// one writer (named by the prefix it gave [`temp_file`](Self::temp_file))
    /// left unfinished.
    pub fn remove_temp_files(&self, prefix: &str) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the file at `relative` (a tag or an index kept beside the
    /// objects), synced; returns whether it was there.
    pub fn remove_file(&self, relative: &str) -> Result<bool> {
        let path = self.root.join(relative);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync()?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Atomically writes `bytes` at `relative` (a path inside the store,
    /// its directories created as needed), unless the file already holds
    /// exactly them: for the indexes and tags kept beside the objects.
    pub fn write_file(&self, relative: &str, bytes: &[u8]) -> Result<()> {
        if self.file_holds(relative, bytes) {
            return Ok(());
        }
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        self.replace_file(relative, bytes)
    }
}

impl Backend for LocalStore {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>> {
        let path = self.object_path(hash);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::ObjectMissing {
                hash: *hash,
                store: self.describe(),
            },
            _ => Error::io(format!("reading {}", path.display()), e),
        })
    }

    fn describe(&self) -> String {
        self.describe()
    }

    fn locate(&self, hash: &Hash) -> String {
        self.object_path(hash).display().to_string()
    }
}

impl BundleStore for LocalStore {
    fn resolve(&self, reference: &str) -> Result<Bundle> {
        LocalStore::resolve(self, reference)
    }

    fn refs(&self) -> Result<Vec<(String, Hash)>> {
        LocalStore::refs(self)
    }

    fn tag(&self, reference: &str, name: &str) -> Result<Hash> {
        LocalStore::tag(self, reference, name)
    }

    fn untag(&self, name: &str) -> Result<Hash> {
        LocalStore::untag(self, name)
    }

    /// The store's objects, verified on every read; no disk cache in front
    /// (the store is already on disk).
    fn chunks(&self) -> Arc<dyn ChunkSource> {
        Arc::new(Verified::new(Arc::new(self.clone()), None))
    }

    fn describe(&self) -> String {
        self.describe()
    }
}

/// Reads a file named by the BLAKE3 of its contents and checks it: `missing()`
/// when absent, `Error::Corrupt` (path and both hashes) when the bytes differ.
fn read_content_addressed(
    path: &Path,
    hash: &Hash,
    missing: impl FnOnce() -> Error,
) -> Result<Vec<u8>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let actual = Hash::of(&bytes);
    if actual != *hash {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            expected: *hash,
            actual,
        });
    }
    Ok(bytes)
}

/// Whether the files at `a` and `b` both exist with the same bytes,
/// compared a block at a time.
fn files_hold_the_same(a: &Path, b: &Path) -> bool {
    const BLOCK: usize = 1 << 20;
    let open = |path: &Path| {
        let file = fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        Some((file, len))
    };
    let (Some((mut a, a_len)), Some((mut b, b_len))) = (open(a), open(b)) else {
        return false;
    };
    if a_len != b_len {
        return false;
    }
    let (mut a_block, mut b_block) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut left = a_len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        let (a_held, b_held) = (&mut a_block[..n], &mut b_block[..n]);
        if a.read_exact(a_held).is_err() || b.read_exact(b_held).is_err() || a_held != b_held {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// A new temporary file in `dir` (named `<prefix><random><suffix>`) created with mode
/// 0666 less the umask, as any other file the user creates: unlike
/// `tempfile`'s private default (0600), what is published from it (objects,
/// lockfiles, refs, restored dbs) is readable by the users a store is shared
/// with.
pub fn shareable_temp_file(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// Every file of a `<hex[0..2]>/<hex[2..]>` fan-out directory (a store's
/// `objects/`, the disk cache's `chunks/`) whose name is a hash, with its
/// hash; other files are left out.
pub fn fanout_files(dir: &Path) -> Vec<(Hash, fs::DirEntry)> {
    let mut found = Vec::new();
    let Ok(fanout) = fs::read_dir(dir) else {
        return found;
    };
    for sub in fanout.flatten() {
        let prefix = sub.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = format!("{prefix}{}", file.file_name().to_string_lossy());
            if let Ok(hash) = Hash::from_hex(&name) {
                found.push((hash, file));
            }
        }
    }
    found
}

/// Reads a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}
