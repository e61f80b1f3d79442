//! The binary (Cap'n Proto) lockfile decode: any bytes decode or are
//! refused; what decodes round-trips through both encodings, and the
//! streaming reader agrees with the whole-message one.
#![no_main]

use mache_cachefs::lockfile::{binary, text};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let whole = binary::decode(data);
    let mut streamed = Vec::new();
    let each = binary::decode_each_source(data, |source| {
        streamed.push(source);
        Ok(())
    });
    assert_eq!(
        whole.is_ok(),
        each.is_ok(),
        "decode and decode_each_source disagree"
    );
    let _ = binary::decode_supported(data);
    let _ = text::write_toml_of_binary(data, &mut std::io::sink());
    if let Ok(lockfile) = whole {
        assert_eq!(lockfile.sources, streamed, "streamed sources differ");
        mache_cachefs_fuzz::assert_lockfile_round_trips(&lockfile);
    }
});
