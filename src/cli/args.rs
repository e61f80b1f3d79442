//! Command-line flags, as clap sees them.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Ship a mache code-intelligence cache as a bundle and mount it anywhere.
///
/// A bundle is a Cap'n Proto lockfile plus content-addressed, BLAKE3-verified
/// chunks, kept in a local store (default: $XDG_CACHE_HOME/mache-cachefs/store).
/// Settings may come from $XDG_CONFIG_HOME/mache-cachefs/config.toml
/// (keys: store, cache_dir, remote, scope, token_file).
///
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 invalid input, 4 verification
/// failed, 5 not found, 6 environment (permissions, disk, /dev/fuse).
#[derive(Debug, Parser)]
#[command(name = "mache-cachefs", version, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Config file to read instead of the default location.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a mache.db as a bundle: chunks, lockfile and ref in a store.
    ///
    /// Every _source row becomes a chunk (an AST chunk with its _ast rows when
    /// the db has an _ast table, its raw bytes otherwise). Identical chunks are
    /// stored once; chunks already in the store are not written again.
    /// The bundle is tagged `latest` and, with --tag, that name too. If the tag
    /// already names a bundle of exactly these sources, that bundle is kept
    /// (same lockfile hash) unless --force.
    Push(PushArgs),
    /// Restore a bundle into a new mache.db.
    ///
    /// Every chunk is verified against its BLAKE3 hash, every restored source
    /// against its input hash, and the lockfile root is recomputed. The db is
    /// written to a temporary file and renamed, so a failed pull leaves nothing.
    Pull(PullArgs),
    /// Check a whole bundle in a store without restoring it.
    Verify(VerifyArgs),
    /// Show what a bundle is and how much of it a store holds.
    ///
    /// TARGET is a store directory, a mache.lock.bin or a mache.lock.toml.
    Inspect(InspectArgs),
    /// Mount a bundle as a lazy, verified, read-only directory.
    ///
    /// The mount shows sources/<path> (each source's bytes), ast/<path>.json
    /// (each AST-shaped source's syntax tree), mache.db (built on first open,
    /// cached under the cache dir), mache.lock.toml and .cachefs/status.
    /// Nothing is fetched until something reads; every chunk is verified.
    /// Runs in the foreground until Ctrl-C/SIGTERM, or with --daemon in the
    /// background (stop it with `mache-cachefs unmount`).
    Mount(super::mount::MountArgs),
    /// Unmount a mount (also one whose daemon died).
    Unmount(super::mount::UnmountArgs),
    /// Serve a store as a build-cache/v1 registry (OCI Distribution over HTTP).
    ///
    /// Blobs and manifests pushed to it land in the store's own layout, so a
    /// bundle pushed over HTTP mounts from the store; bundles pushed locally
    /// are served at once under any repository name (GET
    /// /v2/<producer>/<scope>/manifests/latest). Prints `listening on
    /// http://IP:PORT` once ready; runs until SIGTERM or Ctrl-C. See
    /// docs/SERVE.md.
    Serve(ServeArgs),
}

impl Command {
    /// Whether the command's output goes to stdout (and a closed stdout
    /// should simply end it).
    pub fn prints_to_stdout(&self) -> bool {
        matches!(
            self,
            Command::Push(_) | Command::Pull(_) | Command::Verify(_) | Command::Inspect(_)
        )
    }
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The mache db to publish.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Store directory (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// A name for this bundle besides `latest` (letters, digits, . _ -).
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Directory that _source paths with NULL content are read from
    /// (default: the db's directory).
    #[arg(long, value_name = "DIR")]
    pub source_root: Option<PathBuf>,
    /// Write a new lockfile even if the tag already names a bundle of
    /// exactly these sources (by default that bundle is kept as it is).
    #[arg(long)]
    pub force: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store directory, created if missing (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Require `Authorization: Bearer <token>` on every request, the token
    /// being the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest blob accepted, e.g. 4GiB, 512M, or bytes.
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MAX_BLOB,
          value_parser = super::mount::parse_size)]
    pub max_blob_size: u64,
    /// Largest manifest accepted (at least 16MiB to be a conformant provider).
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MAX_MANIFEST,
          value_parser = super::mount::parse_size)]
    pub max_manifest_size: u64,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Where to write the restored db. An existing SQLite db there is
    /// replaced atomically; any other existing file is refused unless --force.
    #[arg(long, value_name = "PATH")]
    pub out_db: PathBuf,
    /// Replace --out-db even if it is not a SQLite db.
    #[arg(long)]
    pub force: bool,
    /// Store directory (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Which bundle: a ref name or blake3:<lockfile hash>.
    #[arg(long = "ref", default_value = "latest", value_name = "REF")]
    pub reference: String,
    /// Check the root and each source's input hash (chunk hashes are always checked).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub verify: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Store directory (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Which bundle: a ref name or blake3:<lockfile hash>.
    #[arg(long = "ref", default_value = "latest", value_name = "REF")]
    pub reference: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A store directory, a .bin or a .toml lockfile (default: the configured store).
    #[arg(value_name = "TARGET")]
    pub target: Option<PathBuf>,
    /// Which bundle of a store directory (default: latest); not for a lockfile file.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}
