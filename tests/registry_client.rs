//! The registry client through the real binary, against a registry in the
//! test process that can misbehave on demand (`fake_registry`): pulls and
//! verifies equal the local store's, every fault gives the user a clear
//! line and a documented exit code, nothing unverified is cached, and
//! retries, `Retry-After`, timeouts and expiring tokens behave.

mod common;
mod fake_registry;
mod http_wire;

use std::time::{Duration, Instant};

use common::*;
use fake_registry::{Fault, SCOPE, assert_ok, setup, stderr};
use mache_cachefs::hash::Hash;
use mache_cachefs::oci::v1_digest;

#[test]
fn pull_and_verify_over_a_registry_equal_the_local_bundle_and_a_second_pull_is_cached() {
    let t = setup(false);
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    assert_eq!(dump_ast(&restored), dump_ast(&t.db));
    assert_ok(&t.run(&["verify", "--json"], &[]));
    let blob_gets = t.registry.count("GET /v2/mache/team/repo/blobs/");
    let (again, restored2) = t.pull("again.db", &[]);
    assert_ok(&again);
    assert_eq!(dump_sources(&restored2), dump_sources(&t.db));
    assert_eq!(
        t.registry.count("GET /v2/mache/team/repo/blobs/"),
        blob_gets,
        "every blob came from the disk cache"
    );
}

#[test]
fn a_bundle_pushed_as_the_go_mache_does_without_sizes_pulls_whole() {
    let t = setup(true);
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
}

#[test]
fn wrong_bytes_for_a_chunk_fail_with_exit_4_and_are_never_cached() {
    let t = setup(false);
    let victim = t.chunk(0);
    t.registry.fault(&victim.to_hex(), &[Fault::WrongBytes]);
    let (out, restored) = t.pull("restored.db", &[]);
    let text = assert_fails(&out, 4, &victim.to_hex());
    assert!(text.contains("corrupt"), "{text}");
    assert!(!restored.exists());
    assert!(!t.cached(&victim), "no corrupt byte cached");
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
}

#[test]
fn a_truncated_body_and_server_errors_are_retried_until_the_bytes_are_whole() {
    let t = setup(false);
    let victim = t.chunk(1);
    t.registry.fault(
        &victim.to_hex(),
        &[Fault::Truncate, Fault::Status(500), Fault::Status(503)],
    );
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    assert_eq!(
        t.registry.count(&format!(
            "GET /v2/mache/team/repo/blobs/sha256:{}",
            victim.to_hex()
        )),
        4
    );
}

#[test]
fn too_many_requests_waits_the_retry_after_it_is_told() {
    let t = setup(false);
    t.registry.fault("/manifests/latest", &[Fault::TooMany(1)]);
    let started = Instant::now();
    let (out, _) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        t.registry.count("GET /v2/mache/team/repo/manifests/latest"),
        2
    );
}

#[test]
fn a_stalled_registry_fails_within_the_retry_budget_with_exit_8() {
    let t = setup(false);
    let victim = t.chunk(0);
    t.registry.fault(&victim.to_hex(), &[Fault::Stall; 20]);
    let started = Instant::now();
    let (out, restored) = t.pull(
        "restored.db",
        &["--read-timeout", "0.3", "--retry-budget", "2"],
    );
    let text = assert_fails(&out, 8, &format!("cannot reach {}", t.registry.name()));
    // The deadline cut the last attempt, or the last attempt timed out
    // with no time left for another: either way it says so.
    assert!(text.contains("timed out"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!restored.exists());
}

#[test]
fn a_persistent_server_error_names_the_code_and_message_and_exits_8() {
    let t = setup(false);
    t.registry
        .fault("/manifests/latest", &[Fault::Status(502); 50]);
    let (out, _) = t.pull("restored.db", &["--retry-budget", "1"]);
    assert_fails(&out, 8, "502 UNAVAILABLE: injected failure");
}

#[test]
fn expiring_bearer_tokens_are_fetched_again_and_the_work_completes() {
    let t = setup(false);
    t.registry.require_tokens(3);
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    assert!(
        t.registry.tokens_issued() >= 2,
        "issued {}",
        t.registry.tokens_issued()
    );
}

#[test]
fn a_wrong_static_token_is_authentication_failed_exit_7_and_never_shown() {
    let t = setup(false);
    t.registry.require_static_token("right-token");
    let token_file = t.dir.path().join("token");
    std::fs::write(&token_file, "wrong-token\n").unwrap();
    let (out, _) = t.pull("restored.db", &["--token-file", s(&token_file), "-vv"]);
    let text = assert_fails(
        &out,
        7,
        &format!("authentication failed for {}", t.registry.name()),
    );
    assert!(
        !text.contains("wrong-token"),
        "the token never shows: {text}"
    );
    std::fs::write(&token_file, "right-token\n").unwrap();
    let (out, _) = t.pull("restored.db", &["--token-file", s(&token_file)]);
    assert_ok(&out);
}

#[test]
fn a_missing_ref_names_it_and_the_repository_with_exit_5() {
    let t = setup(false);
    let (out, _) = t.pull("restored.db", &["--ref", "v9"]);
    assert_fails(
        &out,
        5,
        &format!("no ref \"v9\" in {}/mache/{SCOPE}", t.registry.name()),
    );
}

#[test]
fn manifests_that_are_not_our_bundles_or_lie_about_it_are_invalid_input() {
    let t = setup(false);
    let good = String::from_utf8(t.registry.manifest(SCOPE, "latest")).unwrap();
    let cases = [
        (
            good.replace(
                "application/vnd.cloister.build-cache.v1.config+json",
                "application/vnd.oci.image.config.v1+json",
            ),
            "not a mache bundle",
        ),
        (
            good.replace(&v1_digest(&t.chunk(0)), &v1_digest(&t.chunk(1))),
            "layer 0",
        ),
        (
            "{\"not\": \"a manifest\"}".to_string(),
            "not an OCI manifest",
        ),
    ];
    for (i, (bytes, needle)) in cases.into_iter().enumerate() {
        let tag = format!("bad{i}");
        t.registry.set_manifest(SCOPE, &tag, bytes.into_bytes());
        let (out, _) = t.pull("restored.db", &["--ref", &tag]);
        assert_fails(&out, 3, needle);
    }
    // A config blob that is not a lockfile.
    let junk = b"not a lockfile".to_vec();
    let junk_digest = v1_digest(&Hash::of(&junk));
    t.registry.set_blob(&junk_digest, junk);
    let size = format!("\"size\": {}", t.bundle.lockfile_bytes.len());
    let lying = good
        .replace(&v1_digest(&t.bundle.lockfile_hash), &junk_digest)
        .replacen(&size, "\"size\": 14", 1);
    t.registry.set_manifest(SCOPE, "junk", lying.into_bytes());
    let (out, _) = t.pull("restored.db", &["--ref", "junk"]);
    assert_fails(&out, 3, "config blob is not a mache lockfile");
}

/// The manifest's layers edited one way each: a layer added, one dropped,
/// two swapped, one whose size lies. Each is refused, with exit 3 (invalid
/// input; a size the registry's blob does not have is exit 4, integrity, at
/// once and not retried) and no db left behind.
#[test]
fn manifests_with_extra_missing_reordered_or_resized_layers_are_invalid_input() {
    let t = setup(false);
    let good: serde_json::Value =
        serde_json::from_slice(&t.registry.manifest(SCOPE, "latest")).unwrap();
    let layers = good["layers"].as_array().unwrap().clone();
    assert!(layers.len() >= 3, "{good}");
    let with_layers = |edit: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut manifest = good.clone();
        let mut edited = layers.clone();
        edit(&mut edited);
        manifest["layers"] = serde_json::Value::Array(edited);
        serde_json::to_vec(&manifest).unwrap()
    };
    let cases: [(&str, Vec<u8>, i32, &str); 4] = [
        ("extra", with_layers(&|l| l.push(l[0].clone())), 3, "layer"),
        ("missing", with_layers(&|l| drop(l.pop())), 3, "layer"),
        ("reordered", with_layers(&|l| l.swap(0, 1)), 3, "layer"),
        (
            "resized",
            with_layers(&|l| {
                let size = l[0]["size"].as_u64().unwrap();
                l[0]["size"] = (size + 1).into();
            }),
            4,
            "its manifest says",
        ),
    ];
    for (tag, bytes, code, needle) in cases {
        t.registry.set_manifest(SCOPE, tag, bytes);
        let (out, restored) = t.pull(&format!("{tag}.db"), &["--ref", tag]);
        assert_fails(&out, code, needle);
        assert!(!restored.exists(), "{tag}: a db was left behind");
    }
}

#[test]
fn bad_registry_urls_scopes_and_refs_are_refused_before_any_request() {
    let t = setup(false);
    for (url, scope, needle) in [
        ("127.0.0.1:5000", SCOPE, "give its scheme"),
        ("http://127.0.0.1:5000/v2/x", SCOPE, "only scheme://host"),
        ("http://registry.example.com", SCOPE, "loopback"),
        ("http://127.0.0.1:5000", "Team/Repo", "invalid scope"),
    ] {
        let out = bin()
            .args(["verify", "--remote", url, "--scope", scope])
            .output()
            .unwrap();
        assert_fails(&out, 3, needle);
    }
    for (reference, needle) in [
        ("sha256:zz", "64 lowercase hex digits"),
        (
            &format!("sha256:{}", "A".repeat(64)),
            "64 lowercase hex digits",
        ),
        ("../latest", "ref"),
    ] {
        let (out, _) = t.pull("restored.db", &["--ref", reference]);
        assert_fails(&out, 3, needle);
    }
    assert_eq!(t.registry.count("/v2/"), 0);
}

#[test]
fn with_the_registry_gone_a_bundle_resolved_before_comes_from_the_cache() {
    let t = setup(false);
    let (out, _) = t.pull("first.db", &[]);
    assert_ok(&out);
    let (url, name) = (t.registry.url(), t.registry.name());
    drop(t.registry);
    let offline = |command: &[&str]| {
        bin()
            .env("XDG_CACHE_HOME", t.dir.path().join("cache"))
            .args(command)
            .args(["--remote", &url, "--scope", SCOPE, "--retry-budget", "1"])
            .output()
            .unwrap()
    };
    let restored = t.dir.path().join("offline.db");
    let out = offline(&["pull", "--out-db", s(&restored)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from the disk cache"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    // verify asks the registry itself: the cache cannot vouch for it.
    let out = offline(&["verify"]);
    assert_fails(&out, 8, &format!("cannot reach {name}"));
}

#[test]
fn a_full_disk_cache_still_serves_from_the_network_with_a_warning_and_leaves_nothing_partial() {
    let t = setup(false);
    let cache = t.dir.path().join("cache/mache-cachefs/cache");
    let tmpfs = Tmpfs::mount(&cache, "size=64k");
    // Fill it to the last byte.
    let mut filler = std::fs::File::create(tmpfs.0.join("filler")).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &page).is_ok() {}
    drop(filler);

    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    assert!(
        stderr(&out).contains("serving without caching"),
        "{}",
        stderr(&out)
    );
    // Nothing partial: no temporary file, any chunk file and any ref whole.
    for rel in list_files(&cache) {
        let bytes = std::fs::read(cache.join(&rel)).unwrap();
        let name = rel.to_string_lossy().replace('/', "");
        if let Some(hex) = name.strip_prefix("chunks") {
            assert_eq!(Hash::of(&bytes).to_hex(), hex, "{rel:?} is partial");
        } else if name.starts_with("refs") {
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                Hash::from_prefixed(text.trim()).is_ok(),
                "{rel:?}: {text:?}"
            );
        } else {
            assert!(name == "filler" || name == "ledger", "left behind: {rel:?}");
        }
    }

    // With room again, the next pull caches.
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    let (out, _) = t.pull("again.db", &[]);
    assert_ok(&out);
    assert!(t.cached(&t.chunk(0)));
}
