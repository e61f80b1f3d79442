//! `verify` as a CI probe of a registry, through the real binary: quick by
//! default (a HEAD of every blob, an even sample of chunks read as `Range`
//! GETs), `--full` reading every chunk, both from the registry itself and
//! never the disk cache; and each failure with its own exit code: 5 a
//! missing ref, 9 a missing blob, 4 wrong bytes or size, 7 credentials.
//!
//! Against a real CNCF distribution registry (`distribution_support`, the
//! packed layout) and, for what a real one will not do on demand (serve
//! wrong bytes), the registry in the test process (`fake_registry`, the
//! build-cache/v1 layout). A local store is always read whole.

mod common;
mod distribution_support;
mod fake_registry;
mod http_wire;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use common::*;
use distribution_support::{Distribution, OCI_MANIFEST};
use fake_registry::{FakeRegistry, Fault};
use mache_cachefs::oci::v1_digest;
use mache_cachefs::oci::{INDEX_TYPE, PACK_TYPE};
use mache_cachefs::store::LocalStore;

const SCOPE: &str = "team/repo";
const REPO: &str = "mache/team/repo";

/// The binary with `args` against the registry at `url`, with this test's
/// own disk cache and docker config.
fn remote(dir: &Path, url: &str, args: &[&str]) -> Output {
    run_remote(dir, url, SCOPE, args)
}

/// Pushes a synthetic db of `n` sources to a distribution registry (it
/// takes the packed layout); returns the packs, `(digest, size)`.
fn push_packed(registry: &Distribution, dir: &Path, n: usize) -> Vec<(String, u64)> {
    let db = synthetic_db(dir, n, 7);
    let local = dir.join("local");
    let pushed = json_of(remote(
        dir,
        &registry.url(),
        &["push", "--db", s(&db), s(&local), "--json"],
    ));
    assert_eq!(pushed["remote"]["layout"], "packed/2", "{pushed:#}");
    let reply = registry.request(
        "GET",
        &format!("/v2/{REPO}/manifests/latest"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == PACK_TYPE)
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().to_string();
            (digest, l["size"].as_u64().unwrap())
        })
        .collect()
}

/// The requests for pack `digest` logged after the first `since` ones:
/// `(method, status)`.
fn pack_requests(registry: &Distribution, since: usize, digest: &str) -> Vec<(String, u16)> {
    registry.settle();
    registry.requests_with_status()[since..]
        .iter()
        .filter(|(_, uri, _)| uri.ends_with(&format!("/blobs/{digest}")))
        .map(|(method, _, status)| (method.clone(), *status))
        .collect()
}

/// How many requests the registry has logged so far.
fn logged(registry: &Distribution) -> usize {
    registry.settle();
    registry.requests_with_status().len()
}

#[test]
fn quick_verify_heads_every_pack_and_reads_a_sample_by_range_and_full_reads_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let packs = push_packed(&registry, dir.path(), 3000);
    let pack_bytes: u64 = packs.iter().map(|(_, size)| size).sum();

    for run in ["first", "second, with the sample in the disk cache"] {
        let since = logged(&registry);
        let quick = json_of(remote(dir.path(), &registry.url(), &["verify", "--json"]));
        assert_eq!(quick["mode"], "quick", "{run}: {quick:#}");
        assert_eq!(quick["sources"], 3000);
        assert_eq!(quick["blobs_checked"], packs.len());
        assert_eq!(quick["chunks_verified"], 64, "{quick:#}");
        assert!(quick["chunks"].as_u64().unwrap() > 64, "{quick:#}");
        let mut ranges = 0;
        for (digest, _) in &packs {
            let requests = pack_requests(&registry, since, digest);
            let heads = requests.iter().filter(|(m, _)| m == "HEAD").count();
            assert_eq!(heads, 1, "{run}: one HEAD of {digest}: {requests:?}");
            let gets: Vec<u16> = requests
                .iter()
                .filter(|(m, _)| m == "GET")
                .map(|(_, status)| *status)
                .collect();
            assert!(
                gets.iter().all(|&status| status == 206),
                "{run}: only Range reads of {digest}, never the whole pack: {gets:?}"
            );
            ranges += gets.len();
        }
        // Read from the registry on every run, the cache notwithstanding.
        assert!((1..=64).contains(&ranges), "{run}: {ranges} range reads");
        // Each sampled chunk brings its frame (up to 256 KiB before zstd):
        // 64 of this small bundle's ~200 frames, well short of all of it.
        let fetched = quick["remote"]["bytes_fetched"].as_u64().unwrap();
        assert!(
            fetched * 2 < pack_bytes,
            "{run}: {fetched} bytes fetched of {pack_bytes} in packs"
        );
    }

    let full = json_of(remote(
        dir.path(),
        &registry.url(),
        &["verify", "--full", "--json"],
    ));
    assert_eq!(full["mode"], "full", "{full:#}");
    assert_eq!(full["chunks_verified"], full["chunks"]);
    assert_eq!(full["sources_checked"], 3000);
    let fetched = full["remote"]["bytes_fetched"].as_u64().unwrap();
    assert!(
        fetched >= pack_bytes,
        "every chunk comes from the registry, not the cache: {fetched} of {pack_bytes}"
    );

    let human = remote(dir.path(), &registry.url(), &["verify"]);
    let line = String::from_utf8(human.stdout).unwrap();
    let wanted = format!(
        "verified latest of {}/{REPO}: {} packs present, 64 of {} chunks sampled and verified \
         (quick; --full reads every chunk)",
        registry.name(),
        packs.len(),
        full["chunks"]
    );
    assert!(line.starts_with(&wanted), "{line}");
}

#[test]
fn a_missing_tag_is_5_and_a_pack_deleted_from_the_registry_is_9_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let packs = push_packed(&registry, dir.path(), 300);
    let url = registry.url();
    assert_fails(
        &remote(dir.path(), &url, &["verify", "--ref", "v9"]),
        5,
        &format!("no ref \"v9\" in {}/{REPO}", registry.name()),
    );

    let (digest, _) = &packs[0];
    let data = registry.blob_data(digest);
    std::fs::remove_file(&data).unwrap();
    let head = registry.request("HEAD", &format!("/v2/{REPO}/blobs/{digest}"), &[], b"");
    assert_eq!(head.status, 404, "the registry no longer has the pack");
    let missing = format!("pack {digest} is missing from {}/{REPO}", registry.name());
    assert_fails(&remote(dir.path(), &url, &["verify"]), 9, &missing);
    assert_fails(
        &remote(dir.path(), &url, &["verify", "--full"]),
        9,
        &missing,
    );
    let out = dir.path().join("pulled.db");
    let pull = remote(dir.path(), &url, &["pull", "--out-db", s(&out)]);
    assert_fails(&pull, 9, digest);
}

#[test]
fn wrong_credentials_are_7_and_right_ones_reach_a_missing_ref_5() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start_with_htpasswd(&dir.path().join("registry"), "ci", "s3cret");
    let login = |password: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
        let config = format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.name()
        );
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::write(dir.path().join("docker/config.json"), config).unwrap();
    };
    login("wrong");
    let out = remote(dir.path(), &registry.url(), &["verify"]);
    let text = assert_fails(
        &out,
        7,
        &format!("authentication failed for {}", registry.name()),
    );
    assert!(!text.contains("wrong"), "no secret shown: {text}");
    login("s3cret");
    let out = remote(dir.path(), &registry.url(), &["verify", "--json"]);
    assert_fails(&out, 5, "no ref \"latest\"");
    assert!(out.stdout.is_empty(), "failures print no report");
}

/// A bundle of 100 distinct sources pushed locally and served as
/// build-cache/v1 by a fake registry.
struct Fake {
    dir: tempfile::TempDir,
    registry: FakeRegistry,
    /// The chunk blobs' digests, in lockfile order.
    chunks: Vec<String>,
    config: String,
    /// Every blob's bytes, by digest.
    blobs: HashMap<String, Vec<u8>>,
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let contents: Vec<(String, String)> = (0..100)
        .map(|i| (format!("src/f{i:03}.txt"), format!("file {i}\n")))
        .collect();
    let sources: Vec<Src> = contents
        .iter()
        .map(|(path, content)| Src::at(path, Some("text"), content.as_bytes()))
        .collect();
    make_db(&db, &sources, None);
    let store_dir = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store_dir)]);
    let store = LocalStore::open(&store_dir).unwrap();
    let bundle = store.resolve("latest").unwrap();
    let registry = FakeRegistry::start();
    registry.serve_bundle(&store, &bundle, SCOPE, "latest", false);
    let mut blobs = HashMap::new();
    let mut chunks = Vec::new();
    for source in &bundle.lockfile.sources {
        let digest = v1_digest(&source.chunk_hash);
        let bytes = std::fs::read(store.object_path(&source.chunk_hash)).unwrap();
        blobs.insert(digest.clone(), bytes);
        chunks.push(digest);
    }
    let config = v1_digest(&bundle.lockfile_hash);
    blobs.insert(config.clone(), bundle.lockfile_bytes.clone());
    Fake {
        dir,
        registry,
        chunks,
        config,
        blobs,
    }
}

impl Fake {
    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec!["verify"];
        args.extend(extra);
        remote(self.dir.path(), &self.registry.url(), &args)
    }

    /// Makes the fake serve `digest` with one byte changed.
    fn flip(&self, digest: &str) {
        let mut bytes = self.blobs[digest].clone();
        bytes[0] ^= 1;
        self.registry.set_blob(digest, bytes);
    }
}

#[test]
fn quick_verify_reads_the_same_even_sample_and_full_finds_wrong_bytes_it_skipped() {
    let f = fake();
    let quick = json_of(f.verify(&["--json"]));
    assert_eq!(quick["mode"], "quick");
    assert_eq!(quick["blobs_checked"], 100);
    assert_eq!(quick["chunks_verified"], 64);
    let gets = |digest: &str| f.registry.count(&format!("GET /v2/{REPO}/blobs/{digest}"));
    let heads = |digest: &str| f.registry.count(&format!("HEAD /v2/{REPO}/blobs/{digest}"));
    assert!(
        f.chunks.iter().all(|c| heads(c) == 1),
        "a HEAD of every chunk"
    );
    let read: Vec<&String> = f.chunks.iter().filter(|c| gets(c) == 1).collect();
    assert_eq!(read.len(), 64, "64 chunks read once each");
    assert_eq!(
        read[0], &f.chunks[0],
        "the sample starts at the first chunk"
    );
    let skipped = f.chunks.iter().find(|c| gets(c) == 0).unwrap();

    f.flip(skipped);
    json_of(f.verify(&["--json"]));
    let again: Vec<&String> = f.chunks.iter().filter(|c| gets(c) == 2).collect();
    assert_eq!(again, read, "the same sample, read from the registry again");
    let hex = skipped.strip_prefix("sha256:").unwrap();
    let text = assert_fails(&f.verify(&["--full"]), 4, hex);
    assert!(text.contains("corrupt"), "{text}");
}

#[test]
fn a_config_of_wrong_bytes_is_4_in_quick_mode_even_with_a_good_copy_cached() {
    let f = fake();
    json_of(f.verify(&["--json"]));
    f.flip(&f.config);
    let hex = f.config.strip_prefix("sha256:").unwrap();
    let text = assert_fails(&f.verify(&[]), 4, hex);
    assert!(text.contains("corrupt"), "{text}");
}

#[test]
fn a_chunk_blob_of_another_size_is_4_and_a_missing_one_is_9() {
    let f = fake();
    let victim = &f.chunks[1];
    f.registry.fault(victim, &[Fault::Status(404)]);
    assert_fails(
        &f.verify(&[]),
        9,
        &format!(
            "chunk blob {victim} is missing from {}/{REPO}",
            f.registry.name()
        ),
    );
    f.registry
        .set_blob(victim, b"longer than the manifest says".to_vec());
    let text = assert_fails(&f.verify(&[]), 4, victim);
    assert!(text.contains("29 bytes, its manifest says 7"), "{text}");
}

#[test]
fn a_local_store_is_always_read_whole_and_full_changes_nothing_there() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = push_one_source(dir.path(), "a.go", b"package a\n");
    for extra in [&[][..], &["--full"]] {
        let mut args = vec!["verify", s(&store), "--json"];
        args.extend(extra);
        let report: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        assert_eq!(report["mode"], "full", "{report:#}");
        assert_eq!(report["blobs_checked"], 0);
        assert_eq!(report["chunks_verified"], 1);
        assert_eq!(report["remote"], serde_json::Value::Null);
    }
}

#[test]
fn a_pack_index_corrupted_on_the_registry_is_4_even_with_a_good_copy_cached() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    push_packed(&registry, dir.path(), 200);
    let url = registry.url();
    // The first verify keeps the good index in the disk cache.
    let first = remote(dir.path(), &url, &["verify"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let manifest = registry.request(
        "GET",
        &format!("/v2/{REPO}/manifests/latest"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    let index = manifest.json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == INDEX_TYPE)
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .expect("a pack index layer");
    let data = registry.blob_data(&index);
    // Same length, one byte changed: distribution serves it as it is.
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&data, bytes).unwrap();
    assert_fails(
        &remote(dir.path(), &url, &["verify"]),
        4,
        &format!("pack index {index} in {}/{REPO}", registry.name()),
    );
}
