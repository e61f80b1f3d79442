//! Where chunk bytes come from.
//!
//! Everything above this module (pull, the filesystem) asks a
//! [`ChunkSource`] for verified bytes by hash and never learns whether they
//! came from a local directory or a registry. The local directory store
//! ([`local::LocalStore`]) is the first implementation; the sizes index a
//! push leaves beside each lockfile lives in [`sizes`].

pub mod local;
pub mod sizes;

use crate::error::Result;
use crate::hash::Hash;
use crate::lockfile::Lockfile;

pub use local::LocalStore;
pub use sizes::SizeIndex;

/// A content-addressed source of chunk bytes.
pub trait ChunkSource: Send + Sync {
    /// Returns the bytes of object `hash`, checked to hash to it.
    ///
    /// `Err(Error::ObjectMissing)` when the object is absent,
    /// `Err(Error::Corrupt)` when it is present but its bytes hash to
    /// something else. Unverified bytes are never returned.
    fn get_verified(&self, hash: &Hash) -> Result<Vec<u8>>;

    /// Whether the object is present, without reading or verifying it.
    fn contains(&self, hash: &Hash) -> Result<bool>;

    /// A short name for messages (the store's path, a registry URL).
    fn describe(&self) -> String;
}

/// A bundle resolved from a ref: its lockfile and what the store knows beside it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// BLAKE3 of the binary lockfile.
    pub lockfile_hash: Hash,
    /// The binary lockfile exactly as stored.
    pub lockfile_bytes: Vec<u8>,
    /// The decoded, supported lockfile.
    pub lockfile: Lockfile,
    /// Sizes recorded by our push; `None` for bundles written by the Go mache.
    pub sizes: Option<SizeIndex>,
}
