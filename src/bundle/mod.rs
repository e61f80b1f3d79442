//! Push, pull, inspect and verify: whole-bundle operations built from the
//! db reader/writer, the chunk codec, the lockfile codecs and a store.
//!
//! Each operation takes its inputs as values and returns a report; printing,
//! flags and exit codes belong to the CLI.

mod inspect;
mod pull;
mod push;

pub use inspect::{Inspection, inspect_bundle, inspect_remote, inspect_target};
pub use pull::{
    Coverage, Existing, PullReport, QUICK_SAMPLE, Restored, VerifyReport, pull, restore_source,
    verify,
};
pub use push::{Interrupt, PushOptions, PushReport, push};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub(crate) fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})")
        .expect("progress template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
