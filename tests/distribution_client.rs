//! Our client against a real CNCF distribution registry (Debian's
//! `docker-registry`), started per test on 127.0.0.1: it refuses
//! build-cache/v1 digests, so push picks the packed layout by itself; pull,
//! verify, re-push (unchanged: no upload; 1% changed: a small one), a
//! bundle past the 4 MiB manifest limit, and basic auth with credentials
//! from a docker `config.json`.

mod common;
mod distribution_support;
mod http_wire;

use std::path::Path;
use std::process::Output;

use common::*;
use distribution_support::Distribution;

const SCOPE: &str = "team/repo";

/// Asserts the restored rows equal the original's under the documented
/// mapping (a NULL language restores as ''), without printing megabytes.
fn assert_restored(restored: &Path, original: &Path) {
    let normal = |db: &Path| {
        dump_sources(db)
            .into_iter()
            .map(|(id, path, language, content)| {
                (id, path, Some(language.unwrap_or_default()), content)
            })
            .collect::<Vec<_>>()
    };
    let (got, want) = (normal(restored), normal(original));
    assert_eq!(got.len(), want.len(), "row counts");
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} rows differ");
    assert!(dump_ast(restored) == dump_ast(original), "_ast rows differ");
}

fn remote(registry: &Distribution, dir: &Path, args: &[&str]) -> Output {
    run_remote(dir, &registry.url(), SCOPE, args)
}

fn push(registry: &Distribution, dir: &Path, db: &Path) -> serde_json::Value {
    json_of(push_with(registry, dir, db, &[]))
}

/// `push --json` of `db` to the registry with `extra` arguments.
fn push_with(registry: &Distribution, dir: &Path, db: &Path, extra: &[&str]) -> Output {
    let local = dir.join("local");
    let mut args = vec!["push", "--db", s(db), s(&local), "--json"];
    args.extend_from_slice(extra);
    remote(registry, dir, &args)
}

/// The bytes of a push besides its lockfile (the config blob, 167 bytes a
/// source here, mostly hashes that do not compress): a fixed cost of every
/// new bundle, next to which compressed packs are small.
fn beyond_lockfile(dir: &Path, bytes: u64) -> u64 {
    let lockfile = std::fs::metadata(dir.join("local/mache.lock.bin"))
        .unwrap()
        .len();
    bytes - lockfile
}

/// Changes 1% of the files of `db` (every 100th row gets a newline more).
fn change_one_percent(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "UPDATE _source SET content = CAST(content || x'0a' AS BLOB) WHERE rowid % 100 = 0",
    )
    .unwrap();
}

#[test]
fn push_picks_the_packed_layout_pull_restores_and_re_pushes_upload_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 3000, 1);
    let first = push(&registry, dir.path(), &db);
    assert_eq!(first["remote"]["layout"], "packed/2", "{first:#}");
    let first_bytes = first["remote"]["uploaded_bytes"].as_u64().unwrap();

    let out = dir.path().join("pulled.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_restored(&out, &db);
    json_of(remote(&registry, dir.path(), &["verify", "--json"]));

    // Unchanged: not one blob upload reaches the registry.
    registry.settle();
    let uploads = registry.uploads();
    let again = push(&registry, dir.path(), &db);
    registry.settle();
    assert_eq!(again["remote"]["uploaded"], 0, "{again:#}");
    assert_eq!(again["remote"]["manifest_unchanged"], true);
    assert_eq!(
        registry.uploads(),
        uploads,
        "zero uploads in the registry's log"
    );

    // 1% of the files changed: a new pack of those, the lockfile, the index.
    let first_data = beyond_lockfile(dir.path(), first_bytes);
    change_one_percent(&db);
    let changed = push(&registry, dir.path(), &db);
    let changed_bytes = changed["remote"]["uploaded_bytes"].as_u64().unwrap();
    let changed_data = beyond_lockfile(dir.path(), changed_bytes);
    assert!(
        changed_data * 20 <= first_data,
        "1% changed uploaded {changed_data} bytes besides the lockfile, of the first push's {first_data}"
    );
    let out = dir.path().join("pulled-changed.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_restored(&out, &db);
}

#[test]
fn a_bundle_of_20000_sources_fits_the_registrys_manifest_limit_in_the_packed_layout() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 20_000, 2);
    let pushed = push(&registry, dir.path(), &db);
    assert_eq!(pushed["sources"], 20_000);
    let out = dir.path().join("pulled.db");
    let pulled = json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_eq!(pulled["sources"], 20_000);
}

#[test]
fn basic_auth_with_credentials_from_a_docker_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start_with_htpasswd(&dir.path().join("registry"), "ci", "s3cret");
    let db = synthetic_db(dir.path(), 200, 3);
    let write_config = |password: &str| {
        let auth = base64_of(&format!("ci:{password}"));
        let config = format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.name()
        );
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::write(dir.path().join("docker/config.json"), config).unwrap();
    };
    write_config("wrong");
    let local = dir.path().join("local");
    let out = remote(&registry, dir.path(), &["push", "--db", s(&db), s(&local)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!("authentication failed for {}", registry.name())),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong"), "no secret shown: {stderr}");
    write_config("s3cret");
    push(&registry, dir.path(), &db);
    let pulled = dir.path().join("pulled.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--out-db", s(&pulled), "--json"],
    ));
    assert_restored(&pulled, &db);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The manifest `reference` names, as the registry serves it.
fn manifest(registry: &Distribution, reference: &str) -> serde_json::Value {
    let reply = registry.request(
        "GET",
        &format!("/v2/mache/{SCOPE}/manifests/{reference}"),
        &[("Accept", distribution_support::OCI_MANIFEST)],
        b"",
    );
    assert_eq!(reply.status, 200, "{reference}: {}", reply.text());
    reply.json()
}

/// The pack layers of a packed manifest (every layer but the index).
fn packs(manifest: &serde_json::Value) -> Vec<String> {
    let layers = manifest["layers"].as_array().unwrap();
    layers[..layers.len() - 1]
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The bytes of every blob the registry stores (manifests included).
fn stored_blob_bytes(registry: &Distribution) -> u64 {
    let blobs = registry.data_dir().join("docker/registry/v2/blobs");
    list_files(&blobs)
        .iter()
        .map(|f| std::fs::metadata(blobs.join(f)).unwrap().len())
        .sum()
}

#[test]
fn a_new_tag_pushed_with_base_uploads_only_packs_the_base_lacks_and_lists_the_base_packs() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 3000, 4);
    let first = json_of(push_with(&registry, dir.path(), &db, &["--tag", "v1"]));
    let first_bytes = beyond_lockfile(
        dir.path(),
        first["remote"]["uploaded_bytes"].as_u64().unwrap(),
    );
    registry.settle();
    let (uploads, stored) = (registry.uploads(), stored_blob_bytes(&registry));

    change_one_percent(&db);
    let second = json_of(push_with(
        &registry,
        dir.path(),
        &db,
        &["--tag", "v2", "--base", "v1"],
    ));
    registry.settle();
    let uploaded = &second["remote"];
    let sent = uploaded["uploaded_bytes"].as_u64().unwrap();
    let sent_data = beyond_lockfile(dir.path(), sent);
    assert!(
        sent_data * 20 <= first_bytes,
        "v2 uploaded {sent_data} bytes besides the lockfile, of v1's {first_bytes}: {second:#}"
    );
    // The registry saw as many uploads as reported, and grew by about as
    // many bytes (plus the manifest).
    assert_eq!(
        registry.uploads() - uploads,
        uploaded["uploaded"].as_u64().unwrap() as usize
    );
    let grown = stored_blob_bytes(&registry) - stored;
    assert!(
        grown >= sent && beyond_lockfile(dir.path(), grown) * 20 <= stored,
        "the registry's blobs grew by {grown} bytes (of {stored}); the push reported {sent}"
    );

    // v2 lists the v1 packs it reuses (first, in v1's order), then its own.
    let (v1, v2) = (
        packs(&manifest(&registry, "v1")),
        packs(&manifest(&registry, "v2")),
    );
    let reused = uploaded["reused_packs"].as_u64().unwrap() as usize;
    assert!(reused >= 1, "{second:#}");
    assert!(v2[..reused].iter().all(|p| v1.contains(p)), "{v1:?} {v2:?}");
    assert!(
        v2[reused..].iter().all(|p| !v1.contains(p)),
        "{v1:?} {v2:?}"
    );
    let reused_bytes: u64 = manifest(&registry, "v2")["layers"].as_array().unwrap()[..reused]
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(uploaded["reused_bytes"].as_u64(), Some(reused_bytes));

    let out = dir.path().join("pulled-v2.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--ref", "v2", "--out-db", s(&out), "--json"],
    ));
    assert_restored(&out, &db);
}

#[test]
fn a_base_that_names_nothing_fails_before_any_upload_and_needs_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 100, 5);
    let out = push_with(
        &registry,
        dir.path(),
        &db,
        &["--tag", "v2", "--base", "nosuch"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let repository = format!("{}/mache/{SCOPE}", registry.name());
    assert!(
        stderr.contains("nosuch") && stderr.contains(&repository),
        "{stderr}"
    );
    registry.settle();
    assert_eq!(registry.uploads(), 0, "no silent full upload");
    assert_eq!(registry.count("PUT", "/manifests/"), 0);

    // A local push has no bundle to reuse packs of.
    let local = dir.path().join("local");
    let out = bin()
        .args(["push", "--db", s(&db), s(&local), "--base", "v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--remote"));
}

#[test]
fn refs_lists_every_tag_with_one_manifest_request_each() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 50, 3);
    push_with(&registry, dir.path(), &db, &["--tag", "v1"]);
    registry.settle();
    let before = registry.count("GET", "/manifests/");
    let refs = json_of(remote(&registry, dir.path(), &["refs", "--json"]));
    let names = ref_names(&refs);
    assert_eq!(names, ["latest", "v1"], "{refs:#}");
    assert_eq!(refs["refs"][0]["sources"], 50, "{refs:#}");
    registry.settle();
    assert_eq!(registry.count("GET", "/manifests/") - before, 2);
}
