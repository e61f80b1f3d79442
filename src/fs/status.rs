//! The mount's counters and `.cachefs/status`, the JSON document that
//! reports them.
//!
//! Counters are atomics bumped by the content and synthesis layers; the
//! status file is rendered from a snapshot each time it is opened, so every
//! reader sees one consistent document.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::cache::CacheStats;
use crate::error::Error;

/// Counters shared by everything that fetches or serves bytes.
#[derive(Debug, Default)]
pub struct Stats {
    chunks_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    verification_failures: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    requests: [AtomicU64; Op::ALL.len()],
}

/// Kinds of FUSE request, counted for the status file (so a benchmark can
/// tell what a tool made the kernel ask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Readdir,
    Open,
    Read,
    Getxattr,
    Listxattr,
    Other,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readdir,
        Op::Open,
        Op::Read,
        Op::Getxattr,
        Op::Listxattr,
        Op::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readdir => "readdir",
            Op::Open => "open",
            Op::Read => "read",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Other => "other",
        }
    }
}

impl Stats {
    /// Counts one FUSE request.
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one chunk read from the store (successful or not) and its bytes.
    pub fn fetched(&self, bytes: u64) {
        self.chunks_fetched.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records a failure that a reader saw: logs it with `what` (the file),
    /// counts it, and keeps it as the last error. Verification failures
    /// (bytes that did not hash to what the lockfile says) are counted apart.
    pub fn failed(&self, what: &str, err: &Error) {
        let verification = is_verification_failure(err);
        if verification {
            self.verification_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("verification failed for {what}: {err}");
        } else {
            tracing::warn!("{what}: {err}");
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut message = format!("{what}: {err}");
        if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> Counters {
        Counters {
            chunks_fetched: self.chunks_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            verification_failures: self.verification_failures.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            requests: Op::ALL
                .iter()
                .map(|op| {
                    (
                        op.name(),
                        self.requests[*op as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// Whether `err` means bytes failed a BLAKE3 check (as opposed to being
/// missing or unreadable).
pub fn is_verification_failure(err: &Error) -> bool {
    matches!(
        err,
        Error::Corrupt { .. }
            | Error::BadChunk { .. }
            | Error::InputMismatch(_)
            | Error::RootMismatch { .. }
    )
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub verification_failures: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// FUSE requests served, by kind.
    pub requests: std::collections::BTreeMap<&'static str, u64>,
}

/// The document served at `.cachefs/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(rename = "ref")]
    pub reference: String,
    pub store: String,
    pub root: String,
    pub lockfile: String,
    pub sources: usize,
    pub distinct_chunks: usize,
    pub sizes_index: bool,
    pub tree: TreeStatus,
    #[serde(flatten)]
    pub counters: Counters,
    pub cache: CacheStatus,
    pub mache_db: DbStatus,
    pub prefetch: PrefetchStatus,
    /// The registry behind the mount (`null` for a local store): requests,
    /// bytes, retries, failures, and the disk cache's hits, misses and
    /// evictions.
    pub remote: Option<crate::store::RemoteStatus>,
}

/// What the tree holds.
#[derive(Debug, Clone, Serialize)]
pub struct TreeStatus {
    pub source_files: usize,
    pub ast_files: usize,
    pub directories: usize,
    pub unsafe_paths: usize,
    pub conflicts: usize,
}

/// The memory cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: u64,
    pub capacity: u64,
}

impl From<CacheStats> for CacheStatus {
    fn from(s: CacheStats) -> Self {
        CacheStatus {
            hits: s.hits,
            misses: s.misses,
            entries: s.entries,
            bytes: s.bytes,
            capacity: s.capacity,
        }
    }
}

/// The synthesized `mache.db`.
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// `absent`, `building`, `ready` or `failed`.
    pub state: &'static str,
    pub path: String,
    /// Whether a db built by an earlier mount was reused.
    pub reused: bool,
    pub size: Option<u64>,
    pub build_seconds: Option<f64>,
}

/// Background prefetch.
#[derive(Debug, Clone, Serialize)]
pub struct PrefetchStatus {
    pub enabled: bool,
    pub chunks_warmed: u64,
    pub chunks_total: u64,
    pub finished: bool,
}

/// The size of the status file. Every snapshot is padded with spaces to it,
/// so whatever snapshot a read returns matches the size the kernel was told
/// earlier (counters change between a `stat` and a read; a length that
/// changed with them would show readers a cut or NUL-padded document).
pub const STATUS_FILE_SIZE: usize = 16 * 1024;

/// `last_error` is kept to this many characters, so the status document
/// always fits [`STATUS_FILE_SIZE`].
const MAX_ERROR_CHARS: usize = 2048;

impl Status {
    /// The file's bytes: pretty JSON, padded with spaces to
    /// [`STATUS_FILE_SIZE`] and ending in a newline (still valid JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("status serializes");
        if out.len() < STATUS_FILE_SIZE {
            out.resize(STATUS_FILE_SIZE - 1, b' ');
        }
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn failures_are_counted_and_kept() {
        let stats = Stats::default();
        stats.fetched(10);
        let corrupt = Error::Corrupt {
            path: "objects/ab/cd".into(),
            expected: Hash::of(b"a"),
            actual: Hash::of(b"b"),
        };
        stats.failed("sources/x.py", &corrupt);
        stats.failed("sources/y.py", &Error::Usage("other".into()));
        let c = stats.snapshot();
        assert_eq!((c.chunks_fetched, c.bytes_fetched), (1, 10));
        assert_eq!((c.verification_failures, c.errors), (1, 2));
        assert_eq!(c.last_error.as_deref(), Some("sources/y.py: other"));
    }
}
