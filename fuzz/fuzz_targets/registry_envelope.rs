//! The OCI error envelope of a registry's error answer: any body gives a
//! code and a message without panicking; a body that is not an envelope
//! is quoted by at most its first 200 bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (code, message) = mache_cachefs::registry::client::envelope(data);
    if code.is_none() {
        // Each byte shows as at most one U+FFFD (3 bytes).
        assert!(message.len() <= 3 * 200, "{} bytes quoted", message.len());
    }
});
