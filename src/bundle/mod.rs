//! Push, pull, inspect and verify: whole-bundle operations built from the
//! db reader/writer, the chunk codec, the lockfile codecs and a store.
//!
//! Each operation takes its inputs as values and returns a report; printing,
//! flags and exit codes belong to the CLI.

mod inspect;
mod pull;
mod push;
mod record;

pub use inspect::{Inspection, inspect_bundle, inspect_remote, inspect_target};
pub use pull::{
    Coverage, Existing, PullReport, QUICK_SAMPLE, Restored, VerifyReport, pull, restore_source,
    verify,
};
pub use push::{Interrupt, PushOptions, PushReport, push};
