//! The inputs kept in `fuzz/regressions/<target>/`, fed to the library
//! function their fuzz target calls, as ordinary tests: each is refused
//! with a clean error (or answered) and never panics. `scripts/fuzz.sh`
//! replays the same files under the fuzzer; docs/FUZZING.md says what the
//! fuzz targets check and what they found.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mache_cachefs::Error;
use mache_cachefs::fs::tree::{AstFiles, Node, Tree};
use mache_cachefs::hash::Hash;
use mache_cachefs::lockfile::{self, Lockfile, SourceEntry};
use mache_cachefs::registry::auth::Challenge;
use mache_cachefs::registry::client::envelope;
use mache_cachefs::registry::frames::{self, Codec, Frame};
use mache_cachefs::registry::packed::PackIndex;

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

fn input(target: &str, name: &str) -> Vec<u8> {
    let path = regressions().join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An empty lockfile, for checks that must fail before its sources matter.
fn empty_lockfile() -> Lockfile {
    lockfile_of(Vec::new())
}

/// A lockfile of `paths`, each its own chunk.
fn lockfile_of(paths: Vec<String>) -> Lockfile {
    let sources: Vec<SourceEntry> = paths
        .into_iter()
        .map(|path| SourceEntry {
            input_hash: Hash::of(path.as_bytes()),
            chunk_hash: Hash::of(path.as_bytes()),
            path,
            kind: "go-source".into(),
        })
        .collect();
    common::hostile::lockfile(sources)
}

#[test]
fn a_lockfile_claiming_four_billion_segments_is_refused() {
    let err = lockfile::binary::decode(&input("lockfile_binary", "segment-count")).unwrap_err();
    assert!(matches!(err, Error::BadLockfile(_)), "{err}");
}

#[test]
fn a_truncated_lockfile_is_refused() {
    let bytes = input("lockfile_binary", "truncated");
    let err = lockfile::binary::decode(&bytes).unwrap_err();
    assert!(matches!(err, Error::BadLockfile(_)), "{err}");
    let err = lockfile::text::write_toml_of_binary(&bytes, &mut std::io::sink()).unwrap_err();
    assert!(matches!(err, Error::BadLockfile(_)), "{err}");
}

/// 8 KB of zstd that decompresses to 270 MB: refused once past the
/// 256 MiB an index may have, not read whole.
#[test]
fn a_zstd_bomb_pack_index_is_refused_at_its_limit() {
    let data = input("pack_index", "zstd-bomb");
    let (_mode, bomb) = data.split_first().unwrap();
    let err = PackIndex::check(bomb, &[], &empty_lockfile(), &Hash::of(b"")).unwrap_err();
    assert!(err.to_string().contains("decompresses past"), "{err}");
}

/// A zstd frame of 30 bytes whose index claims it decodes to 16 MiB.
#[test]
fn a_frame_lying_about_its_decoded_length_is_refused() {
    let data = input("pack_frame", "lying-length");
    let [_codec, a, b, c, stored @ ..] = data.as_slice() else {
        panic!("a frame input has a 4-byte header");
    };
    let frame = Frame {
        offset: 0,
        stored_len: stored.len() as u64,
        raw_len: u64::from(u32::from_le_bytes([*a, *b, *c, 0])),
        codec: Codec::Zstd,
    };
    let err = frames::decode(stored, &frame, "sha256:test").unwrap_err();
    assert!(matches!(err, Error::BadFrame { .. }), "{err}");
}

#[test]
fn an_unterminated_challenge_is_not_answered() {
    let header = String::from_utf8(input("www_authenticate", "unterminated")).unwrap();
    assert_eq!(Challenge::parse(&header), None);
}

/// A long non-JSON body with invalid UTF-8 is quoted by its first 200 bytes.
#[test]
fn an_error_body_that_is_no_envelope_is_quoted_short() {
    let body = input("registry_envelope", "long-html");
    let (code, message) = envelope(&body);
    assert_eq!(code, None);
    assert!(message.starts_with("<html>é"), "{message}");
    assert!(message.len() <= 200, "{} bytes", message.len());
}

/// `..`, absolute, empty and `.` components, NUL and a 256-byte name are
/// left out; duplicates and file/directory conflicts resolve by the rules
/// (the first source wins; the directory wins), in `ast/` too, where the
/// file `a` shows as `a.json`, the name of the directory of `a.json/x`.
#[test]
fn hostile_mount_paths_are_left_out_or_resolved_by_the_rules() {
    let data = input("mount_tree", "hostile-paths");
    let paths: Vec<String> = data[1..]
        .split(|&b| b == b'\n')
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    let tree = Tree::build(Arc::new(lockfile_of(paths)), AstFiles::Candidates);
    let counts = tree.counts();
    // Six unsafe paths, and ast/ of the 251-byte name (256 with `.json`).
    assert_eq!(counts.unsafe_paths, 7, "{counts:?}");
    assert_eq!(tree.resolve("sources/../etc/passwd"), None);
    let is_dir = |path| {
        matches!(
            tree.resolve(path).and_then(|i| tree.node(i)),
            Some(Node::Dir(_))
        )
    };
    assert!(is_dir("sources/a"));
    assert!(is_dir("sources/a/b"));
    assert!(is_dir("sources/a.json"));
    assert!(is_dir("ast/a.json"));
    let source = |path| tree.resolve(path).and_then(|i| tree.node(i));
    assert_eq!(source("sources/a/b/c.go"), Some(Node::Source(4)));
    assert_eq!(source("sources/a.txt"), Some(Node::Source(3)));
    assert_eq!(source("ast/a.json.json"), Some(Node::Ast(13)));
    // sources/: the duplicate a/b, and the files a, a/b and a.json under
    // directories of their names; ast/: the duplicate a/b.json, a.json.
    assert_eq!(counts.conflicts, 6, "{counts:?}");
}

#[test]
fn hostile_ranges_content_ranges_and_tokens_are_refused_or_kept_inside_the_blob() {
    use mache_cachefs::serve::fuzzing;
    for refused in [
        "bytes=-0",
        "bytes=5-3",
        "bytes=1000-",
        "bytes=18446744073709551615-",
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=-",
    ] {
        assert_eq!(fuzzing::range(refused, 1000), None, "{refused:?}");
    }
    assert_eq!(fuzzing::range("bytes=-5000", 1000), Some((0, 999)));
    assert_eq!(
        fuzzing::range("bytes=990-18446744073709551615", 1000),
        Some((990, 999))
    );
    assert_eq!(fuzzing::range("bytes=0-0", 0), None);
    assert_eq!(fuzzing::continues_upload(b"4096-8191", 4096), Some(true));
    assert_eq!(fuzzing::continues_upload(b"4096-8191", 0), Some(false));
    assert_eq!(fuzzing::continues_upload(b"-1-2", 0), Some(false));
    assert_eq!(fuzzing::continues_upload(b"\n", 0), None);
    let read_only = "read-only ro-token\n";
    for header in ["Bearer ro-token", "Basic dXNlcjpyby10b2tlbg=="] {
        assert_eq!(
            fuzzing::authorizes(read_only, header.as_bytes(), false),
            Some(true)
        );
        assert_eq!(
            fuzzing::authorizes(read_only, header.as_bytes(), true),
            Some(false)
        );
    }
    assert!(fuzzing::token_file("write-only x\n").is_err());
}
