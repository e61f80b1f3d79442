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
/// failed, 5 no such ref, 6 environment (permissions, disk, /dev/fuse),
/// 7 registry authentication, 8 registry failure, 9 incomplete bundle (a
/// chunk or blob missing).
/// The help heading of the flags every command takes.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(name = "mache-cachefs", version, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Config file to read instead of the default location.
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
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
    ///
    /// Interrupted (Ctrl-C or SIGTERM), it removes its temporary files, tags
    /// nothing and exits 130 or 143; what a killed push left behind goes at
    /// the next push or `gc`.
    Push(PushArgs),
    /// Restore a bundle into a new mache.db.
    ///
    /// Every chunk is verified against its BLAKE3 hash, every restored source
    /// against its input hash (except opaque chunks: another processor's
    /// output, restored as stored and counted), and the lockfile root is
    /// recomputed. The db is written to a temporary file and renamed, so a
    /// failed pull leaves nothing.
    Pull(PullArgs),
    /// Check a bundle in a store or on a registry without restoring it.
    ///
    /// On a registry, by default (quick): the manifest, the lockfile and the
    /// pack index or sizes index (fetched and verified), a HEAD of every
    /// pack or chunk blob (there, with the manifest's size), and 64 chunks
    /// spread evenly over the bundle, always the same ones; --full reads
    /// every chunk. In a local store every chunk is read. Each chunk read
    /// comes from the store itself (never the disk cache) and is
    /// BLAKE3-checked with its source's input hash (an opaque chunk, another
    /// processor's output, has none to check and is counted); the lockfile
    /// root is recomputed. The exit code says it all: 0 intact,
    /// 4 corrupt, 5 missing ref, 7 authentication, 8 registry failure, 9 a
    /// missing chunk or blob.
    Verify(VerifyArgs),
    /// Show what a bundle is and how much of it a store holds.
    ///
    /// TARGET is a store directory, a mache.lock.bin or a mache.lock.toml;
    /// with --remote, a bundle of a registry (its lockfile and indexes are
    /// read, its chunks are not: `verify` reads them).
    Inspect(InspectArgs),
    /// Mount a bundle as a lazy, verified, read-only directory.
    ///
    /// `mount MOUNTPOINT` mounts from the configured store (or the
    /// configured remote), `mount STORE MOUNTPOINT` from a store directory,
    /// `mount --remote URL --scope S MOUNTPOINT` from a registry.
    ///
    /// The mount shows sources/<path> (each source's bytes), ast/<path>.json
    /// (each AST-shaped source's syntax tree), mache.db (built on first open,
    /// cached under the cache dir), mache.lock.toml and .cachefs/status.
    /// Nothing is fetched until something reads; every chunk is verified.
    /// Runs in the foreground until Ctrl-C/SIGTERM, or with --daemon in the
    /// background (stop it with `mache-cachefs unmount`).
    ///
    /// Any user whom /dev/fuse lets in can mount (through the setuid
    /// fusermount3); only that user reads the mount unless --allow-other.
    #[command(override_usage = "mache-cachefs mount [OPTIONS] [STORE] <MOUNTPOINT>")]
    Mount(super::mount::MountArgs),
    /// List the tags of a store or a registry repository, and the bundle each
    /// names (lockfile hash, sources, time). A store lists the tags serve
    /// keeps there after its own, as <repository>:<tag>.
    Refs(RefsArgs),
    /// Point tag NEW at the bundle SRC names (a tag, <repository>:<tag> or
    /// blake3:<lockfile hash>).
    ///
    /// An existing NEW moves. The store's files are not touched otherwise.
    /// On a registry (--remote), SRC is a tag or a sha256: manifest digest,
    /// and the manifest is PUT again under NEW: no blob is copied.
    Tag(TagArgs),
    /// Remove a tag from a store or a registry. The bundle's objects stay
    /// until `gc` (on a registry, until its own garbage collection).
    ///
    /// A registry that deletes only by digest (the CNCF registry before 3.0)
    /// has the tag pointed at a placeholder manifest first, which is then
    /// deleted, so other tags of the bundle stay. A registry with deletes
    /// disabled refuses (exit 8).
    Untag(UntagArgs),
    /// Remove what no tag reaches from a store, or trim the disk cache.
    ///
    /// A store: objects, lockfiles and sizes files no tag reaches (nor the
    /// top-level mache.lock.bin, nor a tag `serve` keeps), older than the
    /// grace period. Safe beside pushes (it waits for them) and serve.
    /// With --cache: the disk cache of registry chunks down to its cap, least
    /// recently used first, and built mache.db files and logs no mount used
    /// for --older-than (never one a mount has open).
    Gc(GcArgs),
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
    /// Check what this tool needs and say what is wrong, and how to fix it.
    ///
    /// One line per check: ok, warn or fail, what was found and, for a
    /// problem, what to do. It checks FUSE (/dev/fuse: a character device
    /// this user can open read-write; the kernel's fuse filesystem in
    /// /proc/filesystems; fusermount3 or fusermount on PATH and setuid root,
    /// unless run as root; user_allow_other in /etc/fuse.conf, which mount
    /// --allow-other needs for a user other than root), the config file read (or where none was found), the
    /// store (a store directory, writable, its tags, free space), the cache
    /// dir (its chunks against the cap, writable, free space), a registry
    /// when one is configured or given with --remote (GET /v2/ answered
    /// within the connect timeout, TLS included; the credentials accepted,
    /// and where they come from, never the secret itself; the timeouts in
    /// effect), and the mache-cachefs mounts (a dead one, its daemon gone,
    /// fails with the command that clears it). It changes nothing.
    ///
    /// Exit code: 0 when no check failed (warnings allowed); otherwise the
    /// code of what failed, as the other commands would exit: 3 the config,
    /// the registry settings or a store path that is no store, 6 the
    /// environment (FUSE unusable, a store or cache directory this user
    /// cannot use, a dead mount), 7 credentials refused, 8 the registry
    /// unreachable; 1 when checks of several of these kinds failed.
    Doctor(DoctorArgs),
}

impl Command {
    /// Whether the command's output goes to stdout (and a closed stdout
    /// should simply end it).
    pub fn prints_to_stdout(&self) -> bool {
        matches!(
            self,
            Command::Push(_)
                | Command::Pull(_)
                | Command::Verify(_)
                | Command::Inspect(_)
                | Command::Refs(_)
                | Command::Tag(_)
                | Command::Untag(_)
                | Command::Gc(_)
                | Command::Doctor(_)
        )
    }
}

/// Where a registry is, for commands that can use one instead of (or, for
/// push, besides) a local store.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Registry options")]
pub struct RemoteArgs {
    /// A registry: https://host[:port] (default: `remote` in the config
    /// file). An explicit store directory wins over a configured remote.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// The registry scope: the repository is mache/<SCOPE> (default: `scope`
    /// in the config file).
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// A file whose first line is the registry token (precedence: this,
    /// --token, $MACHE_CACHE_TOKEN, the config's token_file, docker login).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The registry token itself (other users can see it in `ps`: prefer
    /// --token-file or $MACHE_CACHE_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Allow plain http to a registry that is not on this machine.
    #[arg(long)]
    pub insecure: bool,
    /// Registry transfers at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub jobs: usize,
    /// Cap of the disk cache of registry chunks, e.g. 10G (default: the
    /// config's cache_size, else 10 GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub cache_size: Option<u64>,
    /// Seconds to connect to the registry, TLS included (default 5; config
    /// connect_timeout).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<f64>,
    /// Seconds a registry response may stay silent, before its first byte
    /// or between reads, before the attempt fails (default 10; config
    /// read_timeout).
    #[arg(long, value_name = "SECS")]
    pub read_timeout: Option<f64>,
    /// Bytes per second a registry body must average once it has had the
    /// read timeout to start, e.g. 1K; slower is cut off (default 1K;
    /// config min_rate).
    #[arg(long, value_name = "RATE", value_parser = crate::units::parse_size)]
    pub min_rate: Option<u64>,
    /// Seconds one registry call may take, retries and waits included; past
    /// it the command fails (a mounted file read, EIO) instead of hanging
    /// (default 30; config retry_budget).
    #[arg(long, value_name = "SECS")]
    pub retry_budget: Option<f64>,
    /// Seconds the registry may keep failing (refused, DNS, TLS, timeouts,
    /// 5xx) before it is marked down: then reads of uncached files fail at
    /// once until a background probe sees it answer (default 5; config
    /// offline_after).
    #[arg(long, value_name = "SECS")]
    pub offline_after: Option<f64>,
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
    /// Do not build the bundle's mache.db to record its size and BLAKE3
    /// (saves the time of one pull; mounts then learn mache.db's size only
    /// when it is first opened, and answer opens statefully until then).
    #[arg(long)]
    pub no_db_record: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also upload the bundle to a registry (it is always written to STORE).
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The registry layout: build-cache/v1 (one layer per source, BLAKE3
    /// digests), packed (packs and an index, SHA-256 digests, for standard
    /// registries), or auto: v1 where the registry takes its digests.
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: crate::registry::Layout,
    /// An earlier bundle of the registry repository (a tag or a sha256:
    /// manifest digest) whose packs this push may reuse, besides those of
    /// the bundle the tag names: pushing a new tag uploads only packs of
    /// chunks the base lacks. Repeatable; each must exist (exit 5). It
    /// matters for the packed layout (build-cache/v1 skips every chunk the
    /// registry has anyway). Needs a registry.
    #[arg(long = "base", value_name = "REF")]
    pub bases: Vec<String>,
    /// The zstd level of the packed layout's frames, 1 to 19 (default: the
    /// config's compression_level, else 9: within 1.15x of the smallest
    /// at about 45 MB/s a core; 3 is 4x faster and 15% larger).
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub compression_level: Option<i32>,
}

fn parse_level(text: &str) -> Result<i32, String> {
    let level = text
        .parse::<i32>()
        .map_err(|_| format!("{text:?} is not a number"))?;
    crate::registry::frames::check_level(level)
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store directory, created if missing (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Require a token on every request (`Authorization: Bearer <token>`).
    /// One token a line: `read-only TOKEN`, `read-write TOKEN`, or a bare
    /// TOKEN (read-write); `#` starts a comment line.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest blob accepted, e.g. 4GiB, 512M, or bytes.
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MAX_BLOB,
          value_parser = crate::units::parse_size)]
    pub max_blob_size: u64,
    /// Largest manifest accepted (at least 16MiB to be a conformant provider).
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MAX_MANIFEST,
          value_parser = crate::units::parse_size)]
    pub max_manifest_size: u64,
    /// Bytes all manifests being pushed may hold in memory together; a push
    /// past it is answered 429 (at least --max-manifest-size).
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MANIFEST_MEMORY,
          value_parser = crate::units::parse_size)]
    pub manifest_memory: u64,
    /// Uploads in progress at once (sessions and monolithic POSTs); more are
    /// answered 429.
    #[arg(long, value_name = "N", default_value = crate::serve::DEFAULT_MAX_UPLOADS)]
    pub max_uploads: u64,
    /// Bytes all uploads in progress may hold in the store's tmp/ together;
    /// past it, 429.
    #[arg(long, value_name = "SIZE", default_value = crate::serve::DEFAULT_MAX_UPLOAD_BYTES,
          value_parser = crate::units::parse_size)]
    pub max_upload_bytes: u64,
    /// An upload session unused this long is dropped and its file removed.
    #[arg(long, value_name = "DURATION", default_value = crate::serve::DEFAULT_UPLOAD_EXPIRY,
          value_parser = parse_duration)]
    pub upload_expiry: std::time::Duration,
    /// Time for a request's head to arrive whole (from the accept, or from
    /// its first byte on a kept-alive connection), e.g. 20s.
    #[arg(long, value_name = "DURATION", default_value = crate::serve::DEFAULT_HEADER_TIMEOUT,
          value_parser = parse_duration)]
    pub header_timeout: std::time::Duration,
    /// A connection without a request, an answer the client does not read,
    /// or a request body without a byte, for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = crate::serve::DEFAULT_IDLE_TIMEOUT,
          value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Connections open at once; more wait in the kernel's accept queue.
    #[arg(long, value_name = "N", default_value = crate::serve::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// A duration such as `30s`, `5m` or `1h`; zero is refused.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero".to_string());
    }
    Ok(duration)
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Where to write the restored db. An existing mache db there (a SQLite
    /// db with a _source table) is replaced atomically; any other existing
    /// file, a SQLite db of your own included, is refused unless --force.
    #[arg(long, value_name = "PATH")]
    pub out_db: PathBuf,
    /// Replace --out-db even if it is not a mache db.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Store directory (default: the configured store).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Which bundle: a ref name, blake3:<lockfile hash>, or in a store
    /// <repository>:<tag> (a tag serve keeps there, as `refs` lists them).
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
    /// Which bundle: a ref name, blake3:<lockfile hash>, or in a store
    /// <repository>:<tag> (a tag serve keeps there, as `refs` lists them).
    #[arg(long = "ref", default_value = "latest", value_name = "REF")]
    pub reference: String,
    /// Over a registry, read and check every chunk, not a sample. A local
    /// store is always read whole: there this changes nothing.
    #[arg(long)]
    pub full: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A store directory, a .bin or a .toml lockfile (default: the configured store).
    #[arg(value_name = "TARGET")]
    pub target: Option<PathBuf>,
    /// Which bundle (default: latest): a ref name, or in a store
    /// <repository>:<tag> or blake3:<lockfile hash>, on a registry a
    /// sha256: manifest digest; not for a lockfile file.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Store directory (default: the configured store or remote).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The bundle: a tag, <repository>:<tag> (a tag serve keeps) or
    /// blake3:<lockfile hash>.
    #[arg(value_name = "SRC")]
    pub source: String,
    /// The tag to set (letters, digits, . _ -).
    #[arg(value_name = "NEW")]
    pub name: String,
    /// Store directory (default: the configured store or remote).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct UntagArgs {
    /// The tag to remove (not `latest`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Store directory (default: the configured store or remote).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Store directory (default: the configured store).
    #[arg(value_name = "STORE", conflicts_with = "cache")]
    pub store: Option<PathBuf>,
    /// Say what would go, and how many bytes, without removing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep anything modified less than this many seconds ago (uploads
    /// and pushes in flight write objects before the tag that reaches them).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub grace: u64,
    /// Trim the disk cache and built dbs instead of a store.
    #[arg(long)]
    pub cache: bool,
    /// With --cache: the cap to trim to (default: the configured cache_size, else 10 GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size, requires = "cache")]
    pub max_size: Option<u64>,
    /// With --cache: remove built dbs and logs unused for this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 7, requires = "cache")]
    pub older_than: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object: {"checks": [{name, status, detail, hint}], "ok": bool}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}
