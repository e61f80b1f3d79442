//! `WWW-Authenticate` challenges of a registry's `401`: any header value
//! gives a challenge we can answer, or none, without panicking.
#![no_main]

use mache_cachefs::registry::auth::Challenge;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        let _ = Challenge::parse(header);
    }
});
