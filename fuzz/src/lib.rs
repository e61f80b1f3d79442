//! What the fuzz targets share: the invariants a decoded value must keep,
//! and the fixed lockfile the pack index and mount targets check against.
//!
//! Each target in `fuzz_targets/` feeds its input to one parser of the
//! library. A parser may refuse the input (an `Err` is fine); it must not
//! panic, overflow or allocate without bound, and whatever it accepts must
//! survive the checks here.

use std::sync::Arc;

use mache_cachefs::Hash;
use mache_cachefs::lockfile::{self, Lockfile, Meta, SourceEntry};
use mache_cachefs::registry::packed::{PackIndex, Packed};

/// Checks that a decoded lockfile comes back unchanged from both of its
/// encodings, and that the TOML written a source at a time from the binary
/// form is the TOML written from the whole lockfile.
pub fn assert_lockfile_round_trips(decoded: &Lockfile) {
    let binary = lockfile::binary::encode(decoded);
    let again = lockfile::binary::decode(&binary).expect("an encoded lockfile decodes");
    assert_eq!(&again, decoded, "binary encode→decode changed the lockfile");

    let toml = lockfile::text::to_toml(decoded);
    let from_text = lockfile::text::from_toml(&toml).expect("written TOML parses");
    assert_eq!(&from_text, decoded, "TOML write→parse changed the lockfile");

    let mut streamed = Vec::new();
    lockfile::text::write_toml_of_binary(&binary, &mut streamed)
        .expect("an encoded lockfile streams to TOML");
    assert_eq!(
        streamed,
        toml.as_bytes(),
        "streamed TOML differs from the whole lockfile's"
    );
}

/// A lockfile whose sources have `paths`, each with its own chunk.
pub fn lockfile_of(paths: impl IntoIterator<Item = String>) -> Arc<Lockfile> {
    let sources: Vec<SourceEntry> = paths
        .into_iter()
        .map(|path| SourceEntry {
            input_hash: Hash::of(path.as_bytes()),
            chunk_hash: Hash::of(path.as_bytes()),
            path,
            kind: "go-source".into(),
        })
        .collect();
    Arc::new(Lockfile {
        meta: Meta {
            producer: lockfile::PRODUCER.into(),
            producer_version: "fuzz".into(),
            schema_version: lockfile::SCHEMA_VERSION.into(),
            input_processors: Vec::new(),
            generated_at_ms: 0,
        },
        root: Lockfile::compute_root(&sources),
        sources,
        topology: Vec::new(),
    })
}

/// The packs of the manifest [`pack_lockfile`]'s index is checked against:
/// (digest, size).
pub const PACKS: [(&str, u64); 2] = [
    (
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        4096,
    ),
    (
        "sha256:2222222222222222222222222222222222222222222222222222222222222222",
        64,
    ),
];

/// The lockfile the pack index target checks against (three sources, two
/// of them sharing a chunk), and the BLAKE3 of its binary form.
pub fn pack_lockfile() -> (Arc<Lockfile>, Hash) {
    let mut lockfile = lockfile_of(["a.go", "b/c.go", "d.go"].map(String::from));
    let shared = lockfile.sources[0].chunk_hash;
    let edited = Arc::make_mut(&mut lockfile);
    edited.sources[2].chunk_hash = shared;
    edited.root = Lockfile::compute_root(&edited.sources);
    let hash = Hash::of(&lockfile::binary::encode(&lockfile));
    (lockfile, hash)
}

/// [`PackIndex::check`] of a pack index target's input against
/// [`pack_lockfile`] and [`PACKS`]: the first byte says whether the rest is
/// the index as stored (odd) or JSON to zstd-compress first (even), so
/// mutated JSON reaches the packed/2 reader too. `None` for no input.
pub fn check_pack_index(data: &[u8]) -> Option<mache_cachefs::Result<Packed>> {
    let (&mode, rest) = data.split_first()?;
    let compressed;
    let bytes = if mode & 1 == 1 {
        rest
    } else {
        compressed = zstd::bulk::compress(rest, 1).expect("zstd compresses in memory");
        &compressed
    };
    let (lockfile, lockfile_hash) = pack_lockfile();
    Some(PackIndex::check(bytes, &packs(), &lockfile, &lockfile_hash))
}

/// [`PACKS`] as the manifest gives them.
pub fn packs() -> Vec<(String, u64)> {
    PACKS.iter().map(|(d, s)| (d.to_string(), *s)).collect()
}
