//! The conformance vectors' bundle (SPEC §7) in a store the Go mache wrote,
//! through the real binary with verification on: its chunks are another
//! processor's output (the lockfile declares `tree-sitter-go` before
//! `blake3`), so they are opaque: `pull`, `verify` and `inspect` accept them,
//! checked by chunk hash and root, and count them. The same chunks in a
//! bundle of `blake3` alone must be the sources, and fail their input
//! hashes; a chunk that is not its hash fails in either.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mache_cachefs::lockfile::{BLAKE3_PROCESSOR, binary};

/// The vectors as a store in `dir`.
fn store_of_vectors(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    vectors_store(&store);
    store
}

/// The vectors' chunks in a store whose lockfile declares `blake3` alone,
/// as mache does: then a raw chunk is its source.
fn store_declaring_blake3_alone(dir: &Path) -> PathBuf {
    let mut lockfile = binary::decode(&vector("lockfile-config.bin")).unwrap();
    lockfile
        .meta
        .input_processors
        .retain(|p| p.kind == BLAKE3_PROCESSOR);
    assert_eq!(lockfile.meta.input_processors.len(), 1);
    let store = dir.join("blake3-only");
    go_store(&store, &binary::encode(&lockfile), &vector_chunks());
    store
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).expect("stdout is JSON")
}

/// The content of each restored `_source` row, by path.
fn contents(db: &Path) -> Vec<(String, Vec<u8>)> {
    dump_sources(db)
        .into_iter()
        .map(|(_, path, _, content)| (path.unwrap(), content))
        .collect()
}

#[test]
fn a_verified_pull_restores_the_opaque_chunks_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_vectors(dir.path());
    let out = dir.path().join("vectors.db");
    let report = json(&run_ok(&["pull", "--out-db", s(&out), s(&store), "--json"]));
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["sources"], 2);
    assert_eq!(report["opaque_sources"], 2);
    assert_eq!(report["ast_sources"], 0);
    let [main, auth] = vector_chunks();
    assert_eq!(
        contents(&out),
        [
            ("src/auth.go".to_string(), auth),
            ("src/main.go".to_string(), main)
        ]
    );

    let again = dir.path().join("again.db");
    let human = run_ok(&["pull", "--out-db", s(&again), s(&store)]);
    assert!(
        human.contains("(verified); 2 opaque sources (input hash not checkable)"),
        "{human}"
    );
}

#[test]
fn verify_passes_and_counts_the_opaque_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_vectors(dir.path());
    let report = json(&run_ok(&["verify", s(&store), "--json"]));
    assert_eq!(report["chunks_verified"], 2, "{report}");
    assert_eq!(report["opaque_chunks"], 2);
    let human = run_ok(&["verify", s(&store)]);
    assert!(
        human.contains("; 2 opaque chunks (input hash not checkable)"),
        "{human}"
    );
}

#[test]
fn inspect_counts_the_opaque_chunks_among_the_raw_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_vectors(dir.path());
    let report = json(&run_ok(&["inspect", s(&store), "--json"]));
    assert_eq!(report["raw_chunks"], 2, "{report}");
    assert_eq!(report["ast_chunks"], 0);
    assert_eq!(report["opaque_chunks"], 2);
    assert_eq!(report["chunks_corrupt"], 0);
    let human = run_ok(&["inspect", s(&store)]);
    assert!(
        human.contains("2 raw (2 opaque: input hash not checkable), 0 AST"),
        "{human}"
    );

    let plain = store_declaring_blake3_alone(dir.path());
    let report = json(&run_ok(&["inspect", s(&plain), "--json"]));
    assert_eq!(report["raw_chunks"], 2, "{report}");
    assert_eq!(report["opaque_chunks"], 0);
}

#[test]
fn the_same_chunks_in_a_bundle_of_blake3_alone_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_declaring_blake3_alone(dir.path());
    let digests: serde_json::Value = serde_json::from_slice(&vector("digests.json")).unwrap();
    let input_hashes: Vec<&str> = digests["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["input_blake3_hex"].as_str().unwrap())
        .collect();
    // Sources are checked in parallel: either may be the one named.
    let names_one = |stderr: &str| {
        input_hashes
            .iter()
            .any(|hex| stderr.contains(&format!("input_hash is {hex}")))
    };

    let stderr = run_fails(&["verify", s(&store)], 4, "corrupt chunk");
    assert!(names_one(&stderr), "{stderr}");
    let out = dir.path().join("never.db");
    let stderr = run_fails(
        &["pull", "--out-db", s(&out), s(&store)],
        4,
        "corrupt chunk",
    );
    assert!(names_one(&stderr), "{stderr}");
    assert!(!out.exists(), "a failed pull leaves nothing");
}

#[test]
fn an_opaque_chunk_that_is_not_its_hash_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of_vectors(dir.path());
    let [main, _] = vector_chunks();
    let hex = blake3::hash(&main).to_hex().to_string();
    let object = store.join("objects").join(&hex[..2]).join(&hex[2..]);
    let mut tampered = main.clone();
    tampered[0] ^= 0xff;
    std::fs::write(&object, tampered).unwrap();

    run_fails(&["verify", s(&store)], 4, &hex);
    let out = dir.path().join("never.db");
    run_fails(&["pull", "--out-db", s(&out), s(&store)], 4, &hex);
    let report = json(&run_ok(&["inspect", s(&store), "--json"]));
    assert_eq!(report["chunks_corrupt"], 1, "{report}");
    assert_eq!(report["opaque_chunks"], 1);
}
