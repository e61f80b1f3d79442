//! One function per subcommand: build what it needs from the settings, call
//! the library, hand the report to [`super::output`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;

use super::args::{
    Cli, Command, GcArgs, InspectArgs, PullArgs, PushArgs, RefsArgs, RemoteArgs, ServeArgs,
    TagArgs, UntagArgs, VerifyArgs,
};
use super::output;
use crate::bundle::{self, Coverage, Existing, Interrupt, PushOptions};
use crate::config::{self, ProcessEnv, Settings, positive_seconds};
use crate::error::Error;
use crate::registry::auth::{CredentialSources, Secret};
use crate::registry::client::Timeouts;
use crate::registry::{RegistryStore, RemoteSettings, UploadOptions};
use crate::store::disk_cache::DEFAULT_CAPACITY;
use crate::store::local::LATEST;
use crate::store::{BundleStore, LocalStore};

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> Result<()> {
    let loaded = config::load(&ProcessEnv, cli.config.as_deref());
    if let Command::Doctor(args) = &cli.command {
        // A config that does not load is one of the things it reports.
        return super::doctor::doctor(loaded, args);
    }
    let settings = loaded?;
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    match cli.command {
        Command::Push(args) => push(&settings, args, progress),
        Command::Pull(args) => pull(&settings, args, progress),
        Command::Verify(args) => verify(&settings, args, progress),
        Command::Inspect(args) => inspect(&settings, args),
        Command::Mount(args) => super::mount::mount(&settings, args, cli.quiet),
        Command::Unmount(args) => super::mount::unmount(args, cli.quiet),
        Command::Refs(args) => refs(&settings, args),
        Command::Tag(args) => tag(&settings, args),
        Command::Untag(args) => untag(&settings, args),
        Command::Gc(args) => gc(&settings, args),
        Command::Serve(args) => serve(&settings, args),
        Command::Doctor(_) => unreachable!("doctor is dispatched above"),
    }
}

fn store_dir(settings: &Settings, explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| settings.store.clone())
}

/// The registry a command uses, if any: `--remote`, else the config's
/// `remote` unless a store directory was given. `None`: the local store.
pub fn remote_settings(
    settings: &Settings,
    args: &RemoteArgs,
    explicit_store: bool,
) -> Result<Option<RemoteSettings>> {
    let url = match (&args.remote, &settings.remote) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) if !explicit_store => url.clone(),
        _ => return Ok(None),
    };
    let scope = args
        .scope
        .clone()
        .or_else(|| settings.scope.clone())
        .ok_or_else(|| {
            Error::Usage(format!(
                "a registry needs a scope: --scope (or `scope` in the config) with {url}"
            ))
        })?;
    Ok(Some(RemoteSettings {
        url,
        scope,
        credentials: CredentialSources {
            token_file: args.token_file.clone(),
            token: args.token.clone().map(Secret::new),
            env_token: std::env::var("MACHE_CACHE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            config_token_file: settings.token_file.clone(),
        },
        insecure: args.insecure,
        jobs: args.jobs,
        cache_dir: settings.cache_dir.clone(),
        timeouts: timeouts(args, settings)?,
        cache_size: cache_cap(settings, args.cache_size),
    }))
}

/// The cap of the disk cache: the flag, else the config's `cache_size`,
/// else the default.
pub fn cache_cap(settings: &Settings, flag: Option<u64>) -> u64 {
    flag.or(settings.cache_size).unwrap_or(DEFAULT_CAPACITY)
}

/// The registry timeouts: each flag, else the config's key, else the default.
fn timeouts(args: &RemoteArgs, settings: &Settings) -> Result<Timeouts> {
    let defaults = Timeouts::default();
    let configured = settings.timeouts;
    let pick =
        |flag: Option<f64>, name: &str, config: Option<Duration>, default: Duration| match flag {
            Some(value) => positive_seconds(value).ok_or_else(|| {
                Error::Usage(format!("{name} must be a positive number of seconds"))
            }),
            None => Ok(config.unwrap_or(default)),
        };
    Ok(Timeouts {
        connect: pick(
            args.connect_timeout,
            "--connect-timeout",
            configured.connect,
            defaults.connect,
        )?,
        read: pick(
            args.read_timeout,
            "--read-timeout",
            configured.read,
            defaults.read,
        )?,
        budget: pick(
            args.retry_budget,
            "--retry-budget",
            configured.budget,
            defaults.budget,
        )?,
        offline_after: pick(
            args.offline_after,
            "--offline-after",
            configured.offline_after,
            defaults.offline_after,
        )?,
        min_rate: args
            .min_rate
            .or(configured.min_rate)
            .unwrap_or(defaults.min_rate),
    })
}

/// The one place a command's store is chosen: a store directory given on
/// the command line, else a registry (flags or config), else the configured
/// local store. Giving both a directory and `--remote` is a usage error.
pub fn open_store(
    settings: &Settings,
    explicit_store: Option<PathBuf>,
    remote: &RemoteArgs,
) -> Result<Box<dyn BundleStore>> {
    if explicit_store.is_some() && remote.remote.is_some() {
        return Err(Error::Usage("give a store directory or --remote, not both".into()).into());
    }
    match remote_settings(settings, remote, explicit_store.is_some())? {
        Some(remote) => Ok(Box::new(RegistryStore::open(&remote)?)),
        None => Ok(Box::new(LocalStore::open(store_dir(
            settings,
            explicit_store,
        ))?)),
    }
}

fn push(settings: &Settings, args: PushArgs, progress: bool) -> Result<()> {
    // A db that is not there makes no store either.
    crate::machedb::check_is_file(&args.db)?;
    let dir = store_dir(settings, args.store);
    let store = LocalStore::create(&dir)?;
    let opts = PushOptions {
        db: args.db,
        source_root: args.source_root,
        tag: args.tag,
        progress,
        force: args.force,
        record_db: !args.no_db_record,
        interrupt: Interrupt::default(),
    };
    let registry = remote_settings(settings, &args.remote, false)?
        .map(|remote| RegistryStore::open(&remote))
        .transpose()?;
    if registry.is_none() && !args.bases.is_empty() {
        return Err(Error::Usage(
            "--base names a bundle of a registry: give --remote (or `remote` in the config)".into(),
        )
        .into());
    }
    let second_signal = stop_push_on_signals(&opts.interrupt)?;
    let report = bundle::push(&store, &opts);
    // From here on (the upload), a signal ends the process at once.
    second_signal.store(true, Ordering::Relaxed);
    let report = report?;
    let uploaded = match &registry {
        Some(registry) => {
            let bundle = store.resolve(&report.lockfile_hash.to_prefixed())?;
            let options = UploadOptions {
                tag: &opts.tag,
                layout: args.layout,
                bases: &args.bases,
                progress: opts.progress,
                compression_level: args
                    .compression_level
                    .or(settings.compression_level)
                    .unwrap_or(crate::registry::frames::DEFAULT_LEVEL),
            };
            Some((
                registry.describe(),
                registry.upload(&store, &bundle, &options)?,
            ))
        }
        None => None,
    };
    output::push(&store.describe(), &report, uploaded.as_ref(), args.json);
    Ok(())
}

fn pull(settings: &Settings, args: PullArgs, progress: bool) -> Result<()> {
    let store = open_store(settings, args.store, &args.remote)?;
    let bundle = store.resolve(&args.reference)?;
    let existing = match args.force {
        true => Existing::Replace,
        false => Existing::ReplaceMacheDb,
    };
    let report = bundle::pull(
        store.chunks().as_ref(),
        &bundle.lockfile,
        &args.out_db,
        existing,
        args.verify,
        progress,
    )?;
    output::pull(&args.out_db, &report, args.json);
    Ok(())
}

fn verify(settings: &Settings, args: VerifyArgs, progress: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let store = open_store(settings, args.store, &args.remote)?;
    let bundle = store.resolve(&args.reference)?;
    let blobs = store.check_blobs(&bundle, progress)?;
    // Without blobs to check, reading every chunk is the only check.
    let coverage = match (&blobs, args.full) {
        (Some(_), false) => Coverage::Sample(bundle::QUICK_SAMPLE),
        _ => Coverage::Full,
    };
    let chunks = store.chunks();
    let report = bundle::verify(chunks.as_ref(), &bundle.lockfile, coverage, progress)?;
    let verified = output::Verified {
        store: store.describe(),
        reference: &args.reference,
        report: &report,
        blobs: blobs.as_ref(),
        remote: chunks.remote_status().map(|s| s.counters),
        elapsed: started.elapsed(),
    };
    output::verify(&verified, args.json);
    Ok(())
}

fn inspect(settings: &Settings, args: InspectArgs) -> Result<()> {
    let inspection = match remote_settings(settings, &args.remote, args.target.is_some())? {
        Some(remote) if args.target.is_none() => {
            let store = RegistryStore::open(&remote)?;
            let reference = args.reference.as_deref().unwrap_or(LATEST);
            bundle::inspect_remote(&store, reference)?
        }
        Some(_) => {
            return Err(Error::Usage("give a TARGET or --remote, not both".into()).into());
        }
        None => {
            let target = args.target.unwrap_or_else(|| settings.store.clone());
            bundle::inspect_target(&target, args.reference.as_deref())?
        }
    };
    output::inspect(&inspection, args.json);
    Ok(())
}

fn refs(settings: &Settings, args: RefsArgs) -> Result<()> {
    let store = open_store(settings, args.store, &args.remote)?;
    let mut listed = Vec::new();
    for (name, bundle) in store.bundles()? {
        listed.push(output::RefLine {
            name,
            lockfile: bundle.lockfile_hash.to_prefixed(),
            sources: bundle.lockfile.sources.len(),
            generated_at_ms: bundle.lockfile.meta.generated_at_ms,
        });
    }
    output::refs(&store.describe(), &listed, args.json);
    Ok(())
}

fn tag(settings: &Settings, args: TagArgs) -> Result<()> {
    let store = open_store(settings, args.store, &args.remote)?;
    let hash = store.tag(&args.source, &args.name)?;
    output::tagged(&args.name, &hash, false, args.json);
    Ok(())
}

fn untag(settings: &Settings, args: UntagArgs) -> Result<()> {
    let store = open_store(settings, args.store, &args.remote)?;
    let hash = store.untag(&args.name)?;
    output::tagged(&args.name, &hash, true, args.json);
    Ok(())
}

/// Makes SIGINT and SIGTERM set `interrupt` (the push then cleans up and
/// fails with exit 128 + the signal). Returns the flag that, set, lets a
/// signal end the process at once instead: a second signal sets it.
fn stop_push_on_signals(interrupt: &Interrupt) -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let second = Arc::new(AtomicBool::new(false));
    let installing = |e| Error::io("installing signal handlers", e);
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees `second` as it was before this signal.
        flag::register_conditional_default(signal, Arc::clone(&second)).map_err(installing)?;
        flag::register(signal, Arc::clone(&second)).map_err(installing)?;
        flag::register_usize(signal, interrupt.flag(), signal as usize).map_err(installing)?;
    }
    Ok(second)
}

fn gc(settings: &Settings, args: GcArgs) -> Result<()> {
    if args.cache {
        let cap = cache_cap(settings, args.max_size);
        let unused = std::time::Duration::from_secs(args.older_than.saturating_mul(86_400));
        let report =
            crate::store::gc::collect_cache(&settings.cache_dir, cap, unused, args.dry_run)?;
        output::gc_cache(&settings.cache_dir, &report, args.json);
        return Ok(());
    }
    let store = LocalStore::open(store_dir(settings, args.store))?;
    let grace = std::time::Duration::from_secs(args.grace);
    let report = crate::store::gc::collect(&store, grace, args.dry_run)?;
    output::gc(&store.describe(), &report, args.json);
    Ok(())
}

fn serve(settings: &Settings, args: ServeArgs) -> Result<()> {
    let tokens = args
        .token_file
        .as_deref()
        .map(crate::serve::Tokens::read)
        .transpose()?;
    let options = crate::serve::ServeOptions {
        store: store_dir(settings, args.store),
        listen: args.listen,
        tokens,
        limits: crate::serve::Limits {
            max_blob: args.max_blob_size,
            max_manifest: args.max_manifest_size,
            manifest_memory: args.manifest_memory,
            idle_timeout: args.idle_timeout,
        },
        uploads: crate::serve::UploadLimits {
            max_uploads: args.max_uploads,
            max_bytes: args.max_upload_bytes,
            expiry: args.upload_expiry,
        },
        connections: crate::serve::ConnectionLimits {
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections as usize,
        },
    };
    crate::serve::run(options, |addr| {
        // The one line on stdout; tests and scripts read the port from it.
        output::write_line(format_args!("listening on http://{addr}"));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })?;
    Ok(())
}
