//! `mount` and `unmount`: flags → a [`CacheFs`] over the local store →
//! [`fs::serve`], in the foreground or as a daemon.
//!
//! `--daemon` re-executes this binary in the foreground mode, detached (new
//! session, stdin/stdout on /dev/null, stderr appended to
//! `<cache_dir>/mount.log`), with the write end of a pipe whose number is in
//! `MACHE_CACHEFS_READY_FD`. The child writes `ready` once the kernel has
//! accepted the mount, or `error <message>` if it failed; the parent waits
//! for that line (or for the pipe to close, if the child died), then checks
//! that the mountpoint answers as a FUSE filesystem before it returns.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::commands::open_store;
use super::output;
use crate::config::Settings;
use crate::error::Error;
use crate::fs::mount::{FUSE_SUPER_MAGIC, Unmounted, check_can_mount, check_mountpoint};
use crate::fs::{self, CacheFs, FsSettings, ServeOptions};
use crate::store::{BundleStore, ChunkSource};
use crate::units::parse_size;

/// Environment variable naming the readiness pipe of a daemon child.
const READY_FD_ENV: &str = "MACHE_CACHEFS_READY_FD";

#[derive(Debug, Args)]
pub struct MountArgs {
    /// [STORE] MOUNTPOINT: the store directory (default: the configured
    /// store, or the configured remote), then where to mount, an existing
    /// empty directory.
    #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
    paths: Vec<PathBuf>,
    /// The store directory, as the first PATH (the older spelling).
    #[arg(long = "store", value_name = "DIR", hide = true)]
    store_flag: Option<PathBuf>,
    /// Which bundle: a ref name, blake3:<lockfile hash>, or in a store
    /// <repository>:<tag> (a tag serve keeps there, as `refs` lists them).
    #[arg(long = "ref", default_value = "latest", value_name = "REF")]
    pub reference: String,
    /// Memory for decoded chunks, e.g. 256MiB, 1G, 64M, or bytes.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub memory_cache: u64,
    /// Warm every chunk and build mache.db in the background right after mounting.
    #[arg(long)]
    pub prefetch: bool,
    /// Detach and run in the background; return once the mount answers.
    #[arg(long)]
    pub daemon: bool,
    /// Let every user read the mount, not only the user who mounted it
    /// (FUSE's allow_other). A user other than root needs user_allow_other
    /// in /etc/fuse.conf for it.
    #[arg(long)]
    pub allow_other: bool,
    /// Threads answering FUSE requests.
    #[arg(long, default_value_t = 4, value_name = "N", hide = true)]
    pub threads: usize,
    /// Threads of each I/O pool (reads that fetch, metadata that fetches),
    /// and so the reads the kernel keeps in flight (max_background).
    #[arg(long, default_value_t = crate::fs::IO_THREADS, value_name = "N", hide = true)]
    pub io_threads: usize,
    #[command(flatten)]
    pub remote: super::args::RemoteArgs,
}

impl MountArgs {
    /// Where to mount: the last PATH.
    pub fn mountpoint(&self) -> &Path {
        self.paths.last().expect("clap requires a MOUNTPOINT")
    }

    /// The store directory given, as `mount STORE MOUNTPOINT` or `--store`.
    pub fn store(&self) -> Result<Option<PathBuf>> {
        match (&self.paths[..], &self.store_flag) {
            ([store, _], Some(_)) => Err(Error::Usage(format!(
                "the store is given twice: {} and --store (give one)",
                store.display()
            ))
            .into()),
            ([store, _], None) => Ok(Some(store.clone())),
            (_, flag) => Ok(flag.clone()),
        }
    }
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mountpoint to unmount (also clears a mount whose daemon died).
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// `mache-cachefs mount`.
pub fn mount(settings: &Settings, args: MountArgs, quiet: bool) -> Result<()> {
    let ready_fd = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if args.daemon && ready_fd.is_none() {
        return daemonize(settings, &args, quiet);
    }
    // SAFETY: the fd was created for us by the parent and is used only here.
    let mut notify = ready_fd.map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    let result = mount_foreground(settings, &args, quiet, &mut notify);
    if let (Err(e), Some(pipe)) = (&result, notify.as_mut()) {
        let code = crate::cli::exit_code_for(e);
        let line = crate::cli::one_line(e);
        let _ = writeln!(pipe, "error {code} {line}");
    }
    result
}

/// Opens the store (a directory or a registry) and resolves the ref.
fn open_bundle(
    settings: &Settings,
    args: &MountArgs,
) -> Result<(Box<dyn BundleStore>, crate::store::Bundle)> {
    let store = open_store(settings, args.store()?, &args.remote)?;
    let bundle = store.resolve(&args.reference)?;
    Ok((store, bundle))
}

fn mount_foreground(
    settings: &Settings,
    args: &MountArgs,
    quiet: bool,
    notify: &mut Option<std::fs::File>,
) -> Result<()> {
    let (store, bundle) = open_bundle(settings, args)?;
    if let (Some(why), Some(pipe)) = (&bundle.offline, notify.as_mut()) {
        let _ = writeln!(pipe, "warning {why}");
    }
    let source: Arc<dyn ChunkSource> = store.chunks();
    let fs_settings = FsSettings {
        reference: args.reference.clone(),
        cache_dir: settings.cache_dir.clone(),
        memory_cache: args.memory_cache,
        owner: (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    };
    let cachefs = CacheFs::new(bundle, source, fs_settings);
    let options = ServeOptions {
        mountpoint: args.mountpoint().to_path_buf(),
        threads: args.threads,
        io_threads: args.io_threads,
        prefetch: args.prefetch,
        prefetch_parallelism: 4,
        progress: !quiet && notify.is_none() && std::io::stderr().is_terminal(),
        allow_other: args.allow_other,
    };
    let shown = args.mountpoint().display().to_string();
    fs::serve(cachefs, &options, || {
        if let Some(mut pipe) = notify.take() {
            let _ = pipe.write_all(b"ready\n");
        } else if !quiet {
            output::to_stderr(format_args!(
                "mache-cachefs: mounted {} at {shown}; Ctrl-C to unmount",
                args.reference
            ));
        }
    })?;
    Ok(())
}

/// Starts a detached copy of this command in the foreground mode and waits
/// until its mount answers or it fails.
fn daemonize(settings: &Settings, args: &MountArgs, quiet: bool) -> Result<()> {
    // Fail fast on what can be checked cheaply here; the daemon resolves the
    // ref and reports any failure, with its exit code, through the pipe.
    open_store(settings, args.store()?, &args.remote)?;
    check_can_mount(args.allow_other)?;
    let mountpoint = check_mountpoint(args.mountpoint())?;

    std::fs::create_dir_all(&settings.cache_dir)
        .with_context(|| format!("creating {}", settings.cache_dir.display()))?;
    let log_path = settings.cache_dir.join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let (read_end, write_end) = nix::unistd::pipe().context("creating a pipe")?;
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("configuring a pipe")?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut command = Command::new(exe);
    command.args(daemon_args(std::env::args_os().skip(1)));
    if let Some(token) = &args.remote.token {
        // Where `ps` cannot show it for as long as the daemon lives; it
        // ranks below --token-file either way, as --token does.
        command.env("MACHE_CACHE_TOKEN", token);
    }
    command
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // terminal and process group so it outlives this process.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the mount daemon")?;
    drop(write_end);

    let mut answer = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut answer)
        .context("waiting for the mount daemon")?;
    let mut lines = answer.lines().collect::<Vec<_>>();
    for warning in lines.iter().filter_map(|l| l.strip_prefix("warning ")) {
        output::to_stderr(format_args!("mache-cachefs: warning: {warning}"));
    }
    lines.retain(|l| !l.starts_with("warning "));
    let answer = lines.join("\n");
    let answer = answer.trim();
    if answer != "ready" {
        let _ = child.wait();
        let (code, message) = match answer
            .strip_prefix("error ")
            .and_then(|r| r.split_once(' '))
        {
            Some((code, message)) => (code.parse().unwrap_or(crate::error::exit::FAILURE), message),
            None => (
                crate::error::exit::ENVIRONMENT,
                "the mount daemon exited before the mount was ready",
            ),
        };
        let message = format!("{message} (log: {})", log_path.display());
        return Err(Error::Reported { code, message }.into());
    }
    check_answers(&mountpoint)?;
    if !quiet {
        output::to_stderr(format_args!(
            "mache-cachefs: mounted {} at {} (daemon pid {}, log {})",
            args.reference,
            mountpoint.display(),
            child.id(),
            log_path.display()
        ));
    }
    Ok(())
}

/// The daemon's arguments: this command's, without `--daemon`, and without
/// `--token` (the daemon gets it in its environment instead).
fn daemon_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--token" {
            skip_value = true;
        } else if arg != "--daemon" && !arg.as_encoded_bytes().starts_with(b"--token=") {
            kept.push(arg);
        }
    }
    kept
}

/// Checks that `mountpoint` is a FUSE filesystem answering requests.
fn check_answers(mountpoint: &Path) -> Result<()> {
    let stat = nix::sys::statfs::statfs(mountpoint)
        .with_context(|| format!("the mount at {} does not answer", mountpoint.display()))?;
    if stat.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return Err(Error::Mount(format!(
            "the daemon reported ready but {} is not a FUSE mount",
            mountpoint.display()
        ))
        .into());
    }
    Ok(())
}

/// `mache-cachefs unmount`.
pub fn unmount(args: UnmountArgs, quiet: bool) -> Result<()> {
    let how = fs::unmount(&args.mountpoint)?;
    if !quiet {
        let shown = args.mountpoint.display();
        match how {
            Unmounted::Cleanly | Unmounted::WithFusermount => {
                output::to_stderr(format_args!("unmounted {shown}"))
            }
            Unmounted::Lazily => output::to_stderr(format_args!(
                "{shown} was busy: detached; it goes away when its open files are closed"
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::DEFAULT_MEMORY_CACHE;

    #[test]
    fn the_daemon_is_not_given_the_token_on_its_command_line() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let given = args(&[
            "mount",
            "--daemon",
            "--token",
            "s3cret",
            "--remote",
            "http://r",
            "--token=s3cret2",
            "--scope",
            "t",
            "/mnt",
        ]);
        assert_eq!(
            daemon_args(given.into_iter()),
            args(&["mount", "--remote", "http://r", "--scope", "t", "/mnt"])
        );
    }

    #[test]
    fn the_default_matches_the_library() {
        assert_eq!(parse_size("256MiB"), Ok(DEFAULT_MEMORY_CACHE));
    }
}
