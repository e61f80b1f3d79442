//! One function per subcommand: build what it needs from the settings, call
//! the library, hand the report to [`super::output`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;

use super::args::{Cli, Command, InspectArgs, PullArgs, PushArgs, ServeArgs, VerifyArgs};
use super::output;
use crate::bundle::{self, Existing, PushOptions};
use crate::config::{self, ProcessEnv, Settings};
use crate::store::LocalStore;

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> Result<()> {
    let settings = config::load(&ProcessEnv, cli.config.as_deref())?;
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    match cli.command {
        Command::Push(args) => push(&settings, args, progress),
        Command::Pull(args) => pull(&settings, args, progress),
        Command::Verify(args) => verify(&settings, args, progress),
        Command::Inspect(args) => inspect(&settings, args),
        Command::Mount(args) => super::mount::mount(&settings, args, cli.quiet),
        Command::Unmount(args) => super::mount::unmount(args, cli.quiet),
        Command::Serve(args) => serve(&settings, args),
    }
}

fn store_dir(settings: &Settings, explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| settings.store.clone())
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
    };
    let report = bundle::push(&store, &opts)?;
    output::push(&store, &report, args.json);
    Ok(())
}

fn pull(settings: &Settings, args: PullArgs, progress: bool) -> Result<()> {
    let store = LocalStore::open(store_dir(settings, args.store))?;
    let bundle = store.resolve(&args.reference)?;
    let existing = match args.force {
        true => Existing::Replace,
        false => Existing::ReplaceDb,
    };
    let report = bundle::pull(
        &store,
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
    let store = LocalStore::open(store_dir(settings, args.store))?;
    let bundle = store.resolve(&args.reference)?;
    let report = bundle::verify(&store, &bundle.lockfile, progress)?;
    output::verify(&store, &args.reference, &report, args.json);
    Ok(())
}

fn inspect(settings: &Settings, args: InspectArgs) -> Result<()> {
    let target = args.target.unwrap_or_else(|| settings.store.clone());
    let inspection = bundle::inspect_target(&target, args.reference.as_deref())?;
    output::inspect(&inspection, args.json);
    Ok(())
}

fn serve(settings: &Settings, args: ServeArgs) -> Result<()> {
    let token = args
        .token_file
        .as_deref()
        .map(crate::serve::Token::read)
        .transpose()?;
    let options = crate::serve::ServeOptions {
        store: store_dir(settings, args.store),
        listen: args.listen,
        token,
        limits: crate::serve::Limits {
            max_blob: args.max_blob_size,
            max_manifest: args.max_manifest_size,
        },
    };
    crate::serve::run(options, |addr| {
        // The one line on stdout; tests and scripts read the port from it.
        println!("listening on http://{addr}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })?;
    Ok(())
}
