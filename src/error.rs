//! The library's one error type, and the one place errors become exit codes
//! (for the CLI) and errno values (for FUSE).
//!
//! Every message is one line that names what was wrong and where, so the CLI
//! can print it as is.

use std::path::PathBuf;

use crate::hash::Hash;

/// Shorthand used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong below the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hash must be exactly 32 bytes, got {0}")]
    BadHashLength(usize),
    #[error("not a BLAKE3 hash: {0:?} (expected 64 hex digits, as blake3:<hex> in text forms)")]
    BadHashText(String),

    #[error("invalid lockfile: {0}")]
    BadLockfile(String),
    #[error("unsupported lockfile: schemaVersion is {found:?}, this build supports {supported:?}")]
    UnsupportedSchema { found: String, supported: String },
    #[error("unsupported lockfile: producer is {found:?}, expected {expected:?}")]
    ForeignProducer { found: String, expected: String },
    #[error("lockfile root mismatch: lockfile says {expected}, sources give {actual}")]
    RootMismatch { expected: Hash, actual: Hash },

    #[error("invalid chunk {hash}: {reason}")]
    BadChunk { hash: Hash, reason: String },
    /// A chunk, intact by its own hash, whose restored bytes do not hash to
    /// its source's `input_hash`: it does not hold the source it claims.
    #[error(
        "corrupt chunk {}: source {:?} restores to bytes with blake3 {}, lockfile input_hash is {}",
        .0.chunk, .0.path, .0.actual, .0.expected
    )]
    InputMismatch(Box<InputMismatch>),

    #[error("invalid mache db {path}: {reason}")]
    BadDb { path: PathBuf, reason: String },
    #[error(
        "mache.db built at {path} does not match its bundle's record: {reason} \
         (a mache-cachefs bug, or a damaged sizes index)"
    )]
    DbMismatch { path: PathBuf, reason: String },
    #[error("--out-db {path} {reason}")]
    OutDb { path: PathBuf, reason: String },
    #[error("sqlite error on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("chunk {hash} is missing from {store} (source {path:?})")]
    ChunkMissing {
        hash: Hash,
        path: String,
        store: String,
    },
    #[error("object {hash} is not in {store}")]
    ObjectMissing { hash: Hash, store: String },
    /// A blob a registry manifest names (a pack, a chunk, the config) that
    /// the registry does not have: the bundle is incomplete.
    #[error("{what} {digest} is missing from {store}")]
    BlobMissing {
        what: &'static str,
        digest: String,
        store: String,
    },
    /// A blob a registry manifest names that the registry has with another size.
    #[error("{what} {digest} in {store} is {actual} bytes, its manifest says {expected}")]
    BlobSize {
        what: &'static str,
        digest: String,
        store: String,
        expected: u64,
        actual: u64,
    },
    /// A blob named by its SHA-256 whose bytes have another one.
    #[error("{what} {digest} in {store} has the SHA-256 {actual}: corrupt")]
    BlobDigest {
        what: &'static str,
        digest: String,
        store: String,
        actual: String,
    },
    #[error("corrupt object {path}: expected blake3 {expected}, found {actual}")]
    Corrupt {
        path: PathBuf,
        expected: Hash,
        actual: Hash,
    },
    /// No such ref; `known` lists the refs the store has, where it can
    /// tell cheaply (a local store), for the message.
    #[error("no ref {name:?} in {store}{}", listed_refs(.known))]
    RefMissing {
        name: String,
        store: String,
        known: Option<Vec<String>>,
    },
    /// `push --base` names no bundle of the repository.
    #[error("--base {name}: no such bundle in {store}")]
    BaseMissing { name: String, store: String },
    #[error(
        "invalid ref name {0:?} (letters, digits, '.', '_', '-'; at most 128; not starting with '.' or '-')"
    )]
    BadRefName(String),
    /// A file the store keeps beside its objects (an index, a tag) that
    /// does not hold what it should.
    /// A `<repository>:<tag>` ref whose repository or tag is not a valid name.
    #[error(
        "invalid ref {0:?}: <repository>:<tag> takes a repository of /-separated lowercase \
         components (e.g. mache/team) and a tag of letters, digits, '.', '_', '-'"
    )]
    BadServedRef(String),
    #[error("malformed {path} in the store: {reason}")]
    MalformedStoreFile { path: PathBuf, reason: String },
    #[error("not a store: {0} (no objects/ directory and no mache.lock.bin)")]
    NotAStore(PathBuf),
    /// The store directory does not exist yet: nothing was ever pushed there.
    #[error("nothing pushed to {0} yet: push a bundle first (mache-cachefs push --db mache.db)")]
    NothingPushed(PathBuf),

    #[error("invalid config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// An environment variable or other setting outside the config file.
    #[error("{0}")]
    BadSetting(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid registry manifest: {0}")]
    BadManifest(String),
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    BadDigest(String),
    #[error("corrupt frame at {offset} of pack {pack}: {reason}")]
    BadFrame {
        pack: String,
        offset: u64,
        reason: String,
    },
    #[error(
        "the bundle uses {found}, which this mache-cachefs does not read: upgrade mache-cachefs"
    )]
    NewerLayout { found: String },
    /// A registry answered something this transport cannot use.
    #[error("{0}")]
    Remote(String),
    #[error("cannot reach {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("authentication failed for {registry}: {reason}")]
    AuthFailed { registry: String, reason: String },
    #[error("{registry}: {request} answered {status}{}: {message}", if code.is_empty() { String::new() } else { format!(" {code}") })]
    RegistryError {
        registry: String,
        request: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A registry refused an uploaded blob because its bytes do not hash
    /// to the digest they were announced under.
    #[error(
        "{registry} refused blob {digest}: the bytes sent do not hash to it \
         (did the local store change during the push?)"
    )]
    DigestRefused { registry: String, digest: String },

    #[error("{0}")]
    Usage(String),
    /// A push stopped by a signal, its temporary files removed.
    #[error("push interrupted: removed {removed} temporary files; nothing was tagged")]
    Interrupted { signal: i32, removed: usize },
    #[error("{0}")]
    Mount(String),
    /// A failure another process of ours reported (the mount daemon to the
    /// command that started it), with the exit code it chose.
    #[error("{message}")]
    Reported { code: u8, message: String },
    /// Checks of `doctor` failed (named in `names`): their class when they
    /// share one, `None` when they differ (the exit code is then 1).
    #[error("{} failed: {names}", if *count == 1 { "1 check".to_string() } else { format!("{count} checks") })]
    ChecksFailed {
        count: usize,
        names: String,
        class: Option<Class>,
    },
    /// A filesystem request the mount refuses; see [`Refusal`].
    #[error("{0}")]
    Refused(Refusal),
}

/// A source whose restored bytes are not what its lockfile entry says
/// ([`Error::InputMismatch`]; boxed, to keep [`Error`] small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputMismatch {
    /// The chunk the source was restored from.
    pub chunk: Hash,
    /// The source's path.
    pub path: String,
    /// The lockfile's `input_hash`.
    pub expected: Hash,
    /// The BLAKE3 of the restored bytes.
    pub actual: Hash,
}

/// Why the mounted filesystem refuses a request that is not a failure of
/// the bundle or the store (each maps to its own errno in [`Error::errno`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such file or directory")]
    NoEntry,
    #[error("read-only file system")]
    ReadOnly,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("no such extended attribute")]
    NoAttribute,
    #[error("extended attributes of this namespace are not supported")]
    UnsupportedAttribute,
    #[error("buffer too small for the extended attribute")]
    BufferTooSmall,
    #[error("no such open file handle")]
    BadHandle,
}

/// What kind of failure an error is, for exit codes and errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The user's input (db, lockfile, flags, config) is invalid.
    Input,
    /// Bytes failed verification: corruption.
    Integrity,
    /// The bundle named does not exist (a ref, a manifest, nothing pushed).
    NotFound,
    /// The bundle exists but lacks some of its bytes (a chunk, an object,
    /// a blob).
    Incomplete,
    /// The environment refused: permissions, disk, missing device.
    Environment,
    /// The registry refused our credentials.
    Auth,
    /// The registry failed, or could not be reached, even after retries.
    Remote,
}

impl Class {
    /// The process exit code of failures of this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Input => exit::INPUT,
            Class::Integrity => exit::INTEGRITY,
            Class::NotFound => exit::NOT_FOUND,
            Class::Incomplete => exit::INCOMPLETE,
            Class::Environment => exit::ENVIRONMENT,
            Class::Auth => exit::AUTH,
            Class::Remote => exit::REMOTE,
        }
    }
}

impl Error {
    /// Wraps an I/O error with what was being done, e.g. `"writing /a/b"`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a SQLite error with the db it came from.
    pub fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: path.into(),
            source,
        }
    }

    /// A copy of this error for every reader that waited on the fetch that
    /// failed with it: the same variant, so the same exit code and errno
    /// (the OS error and SQLite error inside keep their kind and message).
    pub fn share(&self) -> Error {
        use Error::*;
        match self {
            BadHashLength(n) => BadHashLength(*n),
            BadHashText(t) => BadHashText(t.clone()),
            BadLockfile(t) => BadLockfile(t.clone()),
            UnsupportedSchema { found, supported } => UnsupportedSchema {
                found: found.clone(),
                supported: supported.clone(),
            },
            ForeignProducer { found, expected } => ForeignProducer {
                found: found.clone(),
                expected: expected.clone(),
            },
            RootMismatch { expected, actual } => RootMismatch {
                expected: *expected,
                actual: *actual,
            },
            BadChunk { hash, reason } => BadChunk {
                hash: *hash,
                reason: reason.clone(),
            },
            InputMismatch(mismatch) => InputMismatch(mismatch.clone()),
            ChunkMissing { hash, path, store } => ChunkMissing {
                hash: *hash,
                path: path.clone(),
                store: store.clone(),
            },
            ObjectMissing { hash, store } => ObjectMissing {
                hash: *hash,
                store: store.clone(),
            },
            BlobMissing {
                what,
                digest,
                store,
            } => BlobMissing {
                what,
                digest: digest.clone(),
                store: store.clone(),
            },
            Corrupt {
                path,
                expected,
                actual,
            } => Corrupt {
                path: path.clone(),
                expected: *expected,
                actual: *actual,
            },
            Io { context, source } => Error::io(
                context.clone(),
                std::io::Error::new(source.kind(), source.to_string()),
            ),
            BadManifest(t) => BadManifest(t.clone()),
            Remote(t) => Remote(t.clone()),
            Unreachable { registry, reason } => Unreachable {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            AuthFailed { registry, reason } => AuthFailed {
                registry: registry.clone(),
                reason: reason.clone(),
            },
            RegistryError {
                registry,
                request,
                status,
                code,
                message,
            } => RegistryError {
                registry: registry.clone(),
                request: request.clone(),
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            Refused(r) => Refused(*r),
            other => Reported {
                code: other.exit_code(),
                message: other.to_string(),
            },
        }
    }

    /// The class of this error.
    pub fn class(&self) -> Class {
        use Error::*;
        match self {
            BadHashLength(_)
            | BadHashText(_)
            | BadLockfile(_)
            | UnsupportedSchema { .. }
            | ForeignProducer { .. }
            | BadChunk { .. }
            | BadDb { .. }
            | OutDb { .. }
            | BadRefName(_)
            | BadServedRef(_)
            | NotAStore(_)
            | BadConfig { .. }
            | BadSetting(_)
            | BadManifest(_)
            | BadDigest(_)
            | NewerLayout { .. }
            | Usage(_) => Class::Input,
            Remote(_) | Unreachable { .. } | RegistryError { .. } => Class::Remote,
            AuthFailed { .. } => Class::Auth,
            Sqlite { source, .. } => sqlite_class(source),
            RootMismatch { .. }
            | InputMismatch(_)
            | Corrupt { .. }
            | BadFrame { .. }
            | DbMismatch { .. }
            | BlobSize { .. }
            | BlobDigest { .. }
            | DigestRefused { .. }
            | MalformedStoreFile { .. } => Class::Integrity,
            RefMissing { .. } | NothingPushed(_) | BaseMissing { .. } => Class::NotFound,
            ChunkMissing { .. } | ObjectMissing { .. } | BlobMissing { .. } => Class::Incomplete,
            Io { .. } | Mount(_) | Reported { .. } | Interrupted { .. } => Class::Environment,
            // Only its exit code matters, which `exit_code` picks.
            ChecksFailed { class, .. } => class.unwrap_or(Class::Environment),
            Refused(Refusal::NoEntry | Refusal::NoAttribute) => Class::NotFound,
            Refused(_) => Class::Environment,
        }
    }

    /// The process exit code for this error (documented in README.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Reported { code, .. } => return *code,
            Error::Usage(_) => return exit::USAGE,
            // As a shell reports a process a signal ended: 128 + its number.
            Error::Interrupted { signal, .. } => return 128u8.saturating_add(*signal as u8),
            Error::ChecksFailed { class: None, .. } => return exit::FAILURE,
            _ => {}
        }
        self.class().exit_code()
    }

    /// The errno a FUSE reply carries for this error: the refusals their
    /// own; every failure to produce a file's bytes (a missing or corrupt
    /// chunk, and any I/O error behind the mount, whatever its OS errno) is
    /// `EIO`, so a reader never mistakes a store problem for its own (an
    /// `EACCES` or `ENOSPC` would).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Refused(refusal) => match refusal {
                Refusal::NoEntry => libc::ENOENT,
                Refusal::ReadOnly => libc::EROFS,
                Refusal::NotADirectory => libc::ENOTDIR,
                Refusal::IsADirectory => libc::EISDIR,
                Refusal::NoAttribute => libc::ENODATA,
                Refusal::UnsupportedAttribute => libc::EOPNOTSUPP,
                Refusal::BufferTooSmall => libc::ERANGE,
                Refusal::BadHandle => libc::EBADF,
            },
            _ => libc::EIO,
        }
    }
}

/// The refs a [`Error::RefMissing`] names: ` (refs: a, b, …)`, the first
/// few of them; nothing when the store cannot tell.
fn listed_refs(known: &Option<Vec<String>>) -> String {
    const SHOWN: usize = 12;
    let Some(names) = known else {
        return String::new();
    };
    if names.is_empty() {
        return " (it has no refs)".to_string();
    }
    let mut text = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    format!(" (refs: {text})")
}

/// SQLite failures of the environment (a full disk, an I/O error, no
/// permission, a file that cannot be opened) versus those of the db itself.
fn sqlite_class(source: &rusqlite::Error) -> Class {
    use rusqlite::ErrorCode::*;
    match source.sqlite_error_code() {
        Some(
            DiskFull | SystemIoFailure | CannotOpen | PermissionDenied | ReadOnly | DatabaseBusy
            | DatabaseLocked | OutOfMemory,
        ) => Class::Environment,
        _ => Class::Input,
    }
}

/// Exit codes of the `mache-cachefs` binary.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any failure not classified below.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Invalid input: db, lockfile, config, ref name.
    pub const INPUT: u8 = 3;
    /// Verification failed: a corrupt object or blob, a root mismatch.
    pub const INTEGRITY: u8 = 4;
    /// The bundle named does not exist: no such ref (tag, manifest,
    /// lockfile), or nothing pushed yet.
    pub const NOT_FOUND: u8 = 5;
    /// The environment refused: permissions, full disk, no /dev/fuse.
    pub const ENVIRONMENT: u8 = 6;
    /// The registry refused the credentials (or there were none).
    pub const AUTH: u8 = 7;
    /// The registry failed or could not be reached, after retries.
    pub const REMOTE: u8 = 8;
    /// The bundle is incomplete: a chunk, object or blob it names is missing.
    pub const INCOMPLETE: u8 = 9;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: i32) -> Error {
        let source = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        Error::sqlite("/x.db", source)
    }

    #[test]
    fn read_path_io_errors_reach_readers_as_eio_whatever_the_os_said() {
        for os in [libc::EACCES, libc::EMFILE, libc::ENOSPC, libc::EISDIR] {
            let err = Error::io("reading x", std::io::Error::from_raw_os_error(os));
            assert_eq!(err.errno(), libc::EIO, "os errno {os}");
        }
        assert_eq!(Error::Refused(Refusal::ReadOnly).errno(), libc::EROFS);
        assert_eq!(Error::Refused(Refusal::NoEntry).errno(), libc::ENOENT);
    }

    #[test]
    fn a_full_disk_under_sqlite_is_the_environment_and_a_bad_db_is_input() {
        assert_eq!(
            sqlite_error(rusqlite::ffi::SQLITE_FULL).exit_code(),
            exit::ENVIRONMENT
        );
        assert_eq!(
            sqlite_error(rusqlite::ffi::SQLITE_IOERR).exit_code(),
            exit::ENVIRONMENT
        );
        assert_eq!(
            sqlite_error(rusqlite::ffi::SQLITE_NOTADB).exit_code(),
            exit::INPUT
        );
        assert_eq!(
            sqlite_error(rusqlite::ffi::SQLITE_CORRUPT).exit_code(),
            exit::INPUT
        );
    }

    #[test]
    fn a_missing_ref_is_not_found_and_a_missing_chunk_or_blob_is_incomplete() {
        let hash = Hash::of(b"x");
        let store = || "s".to_string();
        assert_eq!(
            Error::RefMissing {
                name: "v1".into(),
                store: store(),
                known: None,
            }
            .exit_code(),
            exit::NOT_FOUND
        );
        for missing in [
            Error::ObjectMissing {
                hash,
                store: store(),
            },
            Error::ChunkMissing {
                hash,
                path: "a.go".into(),
                store: store(),
            },
            Error::BlobMissing {
                what: "pack",
                digest: "sha256:00".into(),
                store: store(),
            },
        ] {
            assert_eq!(missing.exit_code(), exit::INCOMPLETE, "{missing}");
        }
        let resized = Error::BlobSize {
            what: "pack",
            digest: "sha256:00".into(),
            store: store(),
            expected: 2,
            actual: 1,
        };
        assert_eq!(resized.exit_code(), exit::INTEGRITY);
    }

    #[test]
    fn failed_checks_exit_with_their_shared_class_or_1() {
        let failed = |class| Error::ChecksFailed {
            count: 2,
            names: "registry, credentials".into(),
            class,
        };
        assert_eq!(failed(Some(Class::Remote)).exit_code(), exit::REMOTE);
        assert_eq!(failed(None).exit_code(), exit::FAILURE);
        assert_eq!(
            failed(None).to_string(),
            "2 checks failed: registry, credentials"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_nothing_pushed_is_not_found() {
        assert_eq!(Error::Usage("x".into()).exit_code(), exit::USAGE);
        assert_eq!(
            Error::NothingPushed("/s".into()).exit_code(),
            exit::NOT_FOUND
        );
    }
}
