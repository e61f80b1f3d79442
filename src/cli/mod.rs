//! The command line: flags → settings → library calls → output and exit code.
//!
//! Nothing here does work a library user would need; it parses, dispatches,
//! prints, and maps errors to exit codes in one place ([`exit_code_for`]).

mod args;
mod commands;
mod doctor;
mod mount;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub use args::Cli;

use crate::error::{Error, exit};

/// Runs the CLI with the process's arguments; returns the exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let tag = match &cli.command {
        args::Command::Mount(args) => Some(format!(
            "[mount {} pid {}]",
            crate::fs::mount::absolute(args.mountpoint()).display(),
            std::process::id()
        )),
        _ => None,
    };
    // A one-shot command's warnings are messages to its user, like its
    // errors; the long-running ones (mount, serve) keep a timestamped log.
    let messages = cli.command.prints_to_stdout();
    init_tracing(cli.verbose, cli.quiet, tag, messages);
    if cli.command.prints_to_stdout() {
        // Like other Unix filters: a closed stdout (`| head`) ends the
        // process quietly instead of panicking in println!. Not for the
        // mount daemon, which must outlive whoever started it.
        // SAFETY: restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let done = commands::dispatch(cli)
        .and_then(|()| output::finish().map_err(|e| Error::io("writing the output", e).into()));
    match done {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            output::to_stderr(format_args!("mache-cachefs: error: {}", one_line(&err)));
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// The one place a failure becomes an exit code: library errors carry
/// their class; anything else is a generic failure.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Error>())
        .map_or(exit::FAILURE, Error::exit_code)
}

/// The error and its causes on one line, without repeating a cause the
/// message already includes.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// Logs go to stderr, coloured only on a terminal (a log file gets plain
/// text). A mount's lines start with `tag` (its mountpoint and pid), since
/// several mounts may share one log file. With `messages`, warnings and
/// errors are lines like the CLI's own (`mache-cachefs: warning: …`).
fn init_tracing(verbose: u8, quiet: bool, tag: Option<String>, messages: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MACHE_CACHEFS_LOG").unwrap_or_else(|_| {
            // fuser warns about routine events (an unmount done by someone
            // else); keep those out of the default output.
            let quiet_fuser = if verbose == 0 { ",fuser=error" } else { "" };
            tracing_subscriber::EnvFilter::new(format!("{default}{quiet_fuser}"))
        });
    let format = Tagged {
        tag,
        messages,
        inner: tracing_subscriber::fmt::format().with_target(false),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (a mount daemon's log on a full
        // disk) is dropped: reporting that on stderr too would panic.
        .log_internal_errors(false)
        .event_format(format)
        .init();
}

/// An event format that starts every line with a fixed tag, and (with
/// `messages`) writes warnings and errors as the CLI's own lines.
struct Tagged<F> {
    tag: Option<String>,
    messages: bool,
    inner: F,
}

/// The word the CLI's own lines use for a level, if it is one the user
/// must see as a message (`mache-cachefs: warning: …`).
fn message_word(level: &tracing::Level) -> Option<&'static str> {
    match *level {
        tracing::Level::ERROR => Some("error"),
        tracing::Level::WARN => Some("warning"),
        _ => None,
    }
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if let Some(tag) = &self.tag {
            write!(writer, "{tag} ")?;
        }
        match message_word(event.metadata().level()).filter(|_| self.messages) {
            Some(word) => {
                write!(writer, "mache-cachefs: {word}: ")?;
                ctx.field_format().format_fields(writer.by_ref(), event)?;
                writeln!(writer)
            }
            None => self.inner.format_event(ctx, writer, event),
        }
    }
}
