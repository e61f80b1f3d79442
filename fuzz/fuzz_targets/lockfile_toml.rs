//! The TOML lockfile parse: any text parses or is refused; what parses
//! round-trips through both encodings.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(lockfile) = mache_cachefs::lockfile::text::from_toml(text) {
        mache_cachefs_fuzz::assert_lockfile_round_trips(&lockfile);
    }
});
