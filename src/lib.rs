//! mache-cachefs: a portable, lazily mounted code-intelligence cache.
//!
//! The layers, bottom up:
//! - [`hash`], [`rows`], [`units`]: the values everything else speaks in;
//!   `progress`, the one progress bar.
//! - [`lockfile`], [`chunk`]: the wire formats shared with the Go `mache`.
//! - [`oci`]: manifests, media types, annotations, digests and names of
//!   OCI, as the registry client, `serve` and the store all read them.
//! - [`machedb`]: reading a `mache.db` and writing a restored one.
//! - [`store`]: where bundles and chunk bytes come from, behind small traits;
//!   [`registry`] is the second kind of store, over HTTP.
//! - [`bundle`]: push, pull and inspect, built from the pieces above.
//! - [`cache`], [`fs`]: the lazy, verified, read-only FUSE mount of a bundle.
//! - [`serve`]: a build-cache/v1 registry (OCI Distribution) over a store.
//! - [`config`]: default locations and the config file.

pub mod bundle;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod compression;
pub mod config;
pub mod error;
pub mod fs;
pub mod hash;
pub mod lockfile;
pub mod machedb;
pub mod oci;
mod progress;
pub mod registry;
pub mod rows;
pub mod serve;
pub mod store;
pub mod units;

pub use error::{Error, Result};
pub use hash::Hash;
