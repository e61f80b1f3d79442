//! The packed layout's version 2 (zstd frames) against a real CNCF
//! distribution registry: a push compresses, a bundle of version 1 (chunks
//! stored as they are, pushed by earlier releases) still pulls, a later
//! version is refused with "upgrade", and a frame corrupted in the
//! registry's storage is caught (exit 4), never served.

mod common;
mod distribution_support;
mod http_wire;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use distribution_support::Distribution;
use mache_cachefs::lockfile::binary;
use mache_cachefs::oci::{INDEX_TYPE_V1, PACK_TYPE_V1, PACKED_CONFIG_TYPE};

const SCOPE: &str = "team/v2";
const REPO: &str = "mache/team/v2";

fn remote(registry: &Distribution, dir: &Path, args: &[&str]) -> Output {
    run_remote(dir, &registry.url(), SCOPE, args)
}

/// A synthetic db of `n` sources in a directory of its own.
fn db(dir: &Path, n: usize, seed: u32) -> PathBuf {
    let at = dir.join(format!("db-{seed}"));
    std::fs::create_dir_all(&at).unwrap();
    synthetic_db(&at, n, seed)
}

/// The manifest the registry holds as `latest`.
fn latest_manifest(registry: &Distribution) -> serde_json::Value {
    registry
        .request(
            "GET",
            &format!("/v2/{REPO}/manifests/latest"),
            &[("Accept", distribution_support::OCI_MANIFEST)],
            b"",
        )
        .json()
}

/// The chunk bytes of every object of a local store, concatenated.
fn raw_chunk_bytes(store: &Path) -> u64 {
    list_files(&store.join("objects"))
        .iter()
        .map(|f| {
            std::fs::metadata(store.join("objects").join(f))
                .unwrap()
                .len()
        })
        .sum()
}

#[test]
fn a_push_sends_compressed_frames_and_the_bundle_pulls_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = db(dir.path(), 500, 7);
    let local = dir.path().join("local");
    let pushed = json_of(remote(
        &registry,
        dir.path(),
        &["push", "--db", s(&db), s(&local), "--json"],
    ));
    assert_eq!(pushed["remote"]["layout"], "packed/2", "{pushed:#}");
    let sent = pushed["remote"]["uploaded_bytes"].as_u64().unwrap();
    let raw = raw_chunk_bytes(&local);
    assert!(
        sent * 3 < raw,
        "sent {sent} bytes for {raw} bytes of chunks"
    );
    let out = dir.path().join("pulled.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_eq!(dump_sources(&out).len(), 500);
    assert!(dump_sources(&out) == dump_sources_normalized(&db));

    // The record of the db a pull makes travels with the bundle: in the
    // pack index's sizes (what `inspect` reads) and as manifest annotations.
    let record = json_of(remote(&registry, dir.path(), &["inspect", "--json"]))["mache_db"].clone();
    assert_eq!(record["size"], std::fs::metadata(&out).unwrap().len());
    let hash = mache_cachefs::hash::Hash::of_file(&out).unwrap();
    assert_eq!(record["blake3"], hash.to_prefixed());
    let manifest = latest_manifest(&registry);
    let annotations = &manifest["annotations"];
    assert_eq!(
        annotations["dev.mache-cachefs.db.size"],
        record["size"].to_string()
    );
    assert_eq!(annotations["dev.mache-cachefs.db.blake3"], record["blake3"]);
    assert_eq!(
        annotations["dev.mache-cachefs.db.synthesizer"],
        record["synthesizer"]
    );
}

/// The original's rows as a pull restores them (a NULL language as '').
fn dump_sources_normalized(db: &Path) -> SourceDump {
    dump_sources(db)
        .into_iter()
        .map(|(id, path, language, content)| {
            (id, path, Some(language.unwrap_or_default()), content)
        })
        .collect()
}

/// Pushes the bundle of local store `local` by hand in the packed layout's
/// version 1, as earlier releases did: one pack of the distinct chunks in
/// lockfile order, a plain JSON index; tagged `tag`.
fn push_packed_v1(registry: &Distribution, local: &Path, tag: &str) {
    let lockfile_bytes = std::fs::read(local.join("mache.lock.bin")).unwrap();
    let lockfile = binary::decode(&lockfile_bytes).unwrap();
    let mut pack = Vec::new();
    let mut chunks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for source in &lockfile.sources {
        if !seen.insert(source.chunk_hash) {
            continue;
        }
        let hex = source.chunk_hash.to_hex();
        let bytes = std::fs::read(local.join("objects").join(&hex[..2]).join(&hex[2..])).unwrap();
        chunks.push(serde_json::json!([hex, 0, pack.len(), bytes.len()]));
        pack.extend_from_slice(&bytes);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "format": "mache-cachefs.packindex/1",
        "lockfile": format!("blake3:{}", blake3::hash(&lockfile_bytes).to_hex()),
        "packs": [distribution_support::sha256_digest(&pack)],
        "chunks": chunks,
    }))
    .unwrap();
    let config = registry.push_blob(REPO, &lockfile_bytes);
    let pack_digest = registry.push_blob(REPO, &pack);
    let index_digest = registry.push_blob(REPO, &index);
    let manifest = distribution_support::oci_manifest(
        (PACKED_CONFIG_TYPE, &config, lockfile_bytes.len()),
        &[
            (PACK_TYPE_V1, &pack_digest, pack.len()),
            (INDEX_TYPE_V1, &index_digest, index.len()),
        ],
        &[("dev.mache-cachefs.layout", "packed/1")],
    );
    let reply = registry.put_manifest(REPO, tag, &manifest);
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[test]
fn a_bundle_of_the_packed_layout_version_1_still_pulls_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = db(dir.path(), 300, 8);
    let local = dir.path().join("local");
    run_ok(&["push", "--db", s(&db), s(&local)]);
    push_packed_v1(&registry, &local, "old");
    let out = dir.path().join("old.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--ref", "old", "--out-db", s(&out), "--json"],
    ));
    assert!(dump_sources(&out) == dump_sources_normalized(&db));
    let verified = json_of(remote(
        &registry,
        dir.path(),
        &["verify", "--ref", "old", "--full", "--json"],
    ));
    assert_eq!(verified["chunks_verified"], 300, "{verified:#}");
}

#[test]
fn a_later_packed_layout_asks_for_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let config = registry.push_blob(REPO, b"lockfile");
    let pack = registry.push_blob(REPO, b"pack");
    let index = registry.push_blob(REPO, b"index");
    let manifest = distribution_support::oci_manifest(
        (PACKED_CONFIG_TYPE, &config, 8),
        &[
            ("application/vnd.mache-cachefs.pack.v3", &pack, 4),
            (
                "application/vnd.mache-cachefs.packindex.v3+json+zstd",
                &index,
                5,
            ),
        ],
        &[],
    );
    assert_eq!(registry.put_manifest(REPO, "future", &manifest).status, 201);
    let out = remote(
        &registry,
        dir.path(),
        &[
            "pull",
            "--ref",
            "future",
            "--out-db",
            s(&dir.path().join("f.db")),
        ],
    );
    assert_fails(&out, 3, "uses packed/3");
    assert_fails(&out, 3, "upgrade mache-cachefs");
}

#[test]
fn a_frame_corrupted_in_the_registry_is_caught_and_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = db(dir.path(), 200, 9);
    let local = dir.path().join("local");
    json_of(remote(
        &registry,
        dir.path(),
        &["push", "--db", s(&db), s(&local), "--json"],
    ));
    let manifest = latest_manifest(&registry);
    let pack = manifest["layers"][0]["digest"].as_str().unwrap();
    let data = registry.blob_data(pack);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let out = remote(&registry, dir.path(), &["verify", "--full"]);
    let stderr = assert_fails(&out, 4, "");
    assert!(
        stderr.contains("corrupt frame") || stderr.contains("corrupt"),
        "{stderr}"
    );
    let pulled = dir.path().join("never.db");
    let out = remote(&registry, dir.path(), &["pull", "--out-db", s(&pulled)]);
    assert_fails(&out, 4, "");
    assert!(!pulled.exists(), "a failed pull leaves no db");
}
