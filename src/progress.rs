//! The one progress bar style, shared by every long operation that shows
//! one (push, pull, upload, verify, prefetch), so that the layers drawing
//! it need not depend on each other.

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
