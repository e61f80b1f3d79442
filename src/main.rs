//! The `mache-cachefs` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    mache_cachefs::cli::run()
}
