//! `tag`, `untag` and `inspect` on a registry (`--remote`), against a real
//! CNCF distribution registry: a tag is a manifest PUT, an untag removes
//! only that tag even though this registry deletes only by digest, and a
//! registry with deletes disabled refuses with a clear error. Against
//! `serve`, which deletes tags, the tag goes with one DELETE.

mod common;
mod distribution_support;
mod http_wire;
mod serve_support;

use std::path::Path;
use std::process::Output;

use common::*;
use distribution_support::Distribution;

const SCOPE: &str = "team/tags";

fn remote(registry: &Distribution, dir: &Path, args: &[&str]) -> Output {
    run_remote(dir, &registry.url(), SCOPE, args)
}

/// Pushes a small db to the registry as `tag`; returns its lockfile hash.
fn push(registry: &Distribution, dir: &Path, tag: &str, seed: u32) -> String {
    let db_dir = dir.join(format!("db-{seed}"));
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = synthetic_db(&db_dir, 20, seed);
    let local = dir.join("local");
    let out = remote(
        registry,
        dir,
        &["push", "--db", s(&db), s(&local), "--tag", tag, "--json"],
    );
    json_of(out)["lockfile"].as_str().unwrap().to_string()
}

/// The registry's tags, as `refs --remote --json` lists them.
fn tags(registry: &Distribution, dir: &Path) -> serde_json::Value {
    json_of(remote(registry, dir, &["refs", "--json"]))
}

fn lockfile_of(refs: &serde_json::Value, name: &str) -> Option<String> {
    refs["refs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["lockfile"].as_str().unwrap().to_string())
}

#[test]
fn tag_puts_the_manifest_again_and_untag_removes_only_that_tag() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let v1 = push(&registry, dir.path(), "v1", 1);
    let v2 = push(&registry, dir.path(), "v2", 2);
    assert_ne!(v1, v2);

    registry.settle();
    let (uploads, puts) = (registry.uploads(), registry.count("PUT", "/manifests/"));
    let tagged = json_of(remote(
        &registry,
        dir.path(),
        &["tag", "v1", "stable", "--json"],
    ));
    assert_eq!(tagged["lockfile"], v1.as_str(), "{tagged:#}");
    registry.settle();
    assert_eq!(registry.uploads(), uploads, "a tag uploads no blob");
    assert_eq!(registry.count("PUT", "/manifests/stable"), 1);
    assert_eq!(registry.count("PUT", "/manifests/"), puts + 1);
    let refs = tags(&registry, dir.path());
    assert_eq!(lockfile_of(&refs, "stable"), Some(v1.clone()), "{refs:#}");
    assert_eq!(lockfile_of(&refs, "latest"), Some(v2.clone()), "{refs:#}");

    let inspected = json_of(remote(
        &registry,
        dir.path(),
        &["inspect", "--ref", "stable", "--json"],
    ));
    assert_eq!(inspected["lockfile"], v1.as_str(), "{inspected:#}");
    assert_eq!(inspected["sources"], 20);
    assert_eq!(inspected["refs"], serde_json::json!(["stable"]));
    assert!(
        inspected["manifest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{inspected:#}"
    );
    assert!(inspected["chunks_present"].is_null(), "{inspected:#}");

    // stable and v1 name the same manifest: removing stable keeps v1.
    let untagged = json_of(remote(
        &registry,
        dir.path(),
        &["untag", "stable", "--json"],
    ));
    assert_eq!(untagged["untagged"], "stable");
    assert_eq!(untagged["lockfile"], v1.as_str());
    registry.settle();
    assert_eq!(
        registry.count("DELETE", "/manifests/sha256:"),
        1,
        "this registry deletes by digest only: a placeholder's"
    );
    let refs = tags(&registry, dir.path());
    assert_eq!(lockfile_of(&refs, "stable"), None, "{refs:#}");
    assert_eq!(lockfile_of(&refs, "v1"), Some(v1.clone()), "{refs:#}");
    assert_eq!(lockfile_of(&refs, "v2"), Some(v2.clone()), "{refs:#}");
    let pulled = dir.path().join("v1.db");
    json_of(remote(
        &registry,
        dir.path(),
        &["pull", "--ref", "v1", "--out-db", s(&pulled), "--json"],
    ));

    let out = remote(&registry, dir.path(), &["untag", "stable"]);
    assert_fails(&out, 5, "stable");
    let out = remote(&registry, dir.path(), &["untag", "latest"]);
    assert_fails(&out, 2, "latest cannot be removed");
    let out = remote(&registry, dir.path(), &["tag", "nope", "x"]);
    assert_fails(&out, 5, "nope");
}

#[test]
fn untag_on_a_registry_that_does_not_delete_says_so_and_keeps_the_tag() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start_without_deletes(&dir.path().join("registry"));
    let v1 = push(&registry, dir.path(), "v1", 3);
    let out = remote(&registry, dir.path(), &["untag", "v1"]);
    assert_fails(&out, 8, "does not allow deleting");
    assert_eq!(lockfile_of(&tags(&registry, dir.path()), "v1"), Some(v1));
}

#[test]
fn inspect_takes_a_target_or_a_remote_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args([
            "inspect",
            s(dir.path()),
            "--remote",
            "http://127.0.0.1:9",
            "--scope",
            "x",
        ])
        .output()
        .unwrap();
    assert_fails(&out, 2, "not both");
}

#[test]
fn untag_on_serve_deletes_the_tag_and_the_store_no_longer_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("served");
    let server = serve_support::Server::start(dir.path(), &store, &[]);
    let url = format!("http://127.0.0.1:{}", server.port());
    let on_serve = |args: &[&str]| {
        bin()
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(args)
            .args(["--remote", &url, "--scope", "team"])
            .output()
            .unwrap()
    };
    let db_dir = dir.path().join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = synthetic_db(&db_dir, 10, 4);
    let local = dir.path().join("local");
    json_of(on_serve(&[
        "push",
        "--db",
        s(&db),
        s(&local),
        "--tag",
        "v1",
        "--json",
    ]));
    json_of(on_serve(&["tag", "v1", "keep", "--json"]));
    let untagged = json_of(on_serve(&["untag", "v1", "--json"]));
    assert_eq!(untagged["untagged"], "v1");
    let listed = json_of(on_serve(&["refs", "--json"]));
    assert_eq!(lockfile_of(&listed, "v1"), None, "{listed:#}");
    assert!(lockfile_of(&listed, "keep").is_some(), "{listed:#}");
    let local_refs = json_of(bin().args(["refs", s(&store), "--json"]).output().unwrap());
    assert_eq!(
        lockfile_of(&local_refs, "mache/team:v1"),
        None,
        "{local_refs:#}"
    );
    assert!(
        lockfile_of(&local_refs, "mache/team:keep").is_some(),
        "{local_refs:#}"
    );
    assert!(
        server.log().contains("DELETE"),
        "one DELETE by tag: {}",
        server.log()
    );
    // The store's own untag removes a tag serve keeps, too.
    let removed = json_of(
        bin()
            .args(["untag", "mache/team:keep", s(&store), "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(removed["untagged"], "mache/team:keep");
    let local_refs = json_of(bin().args(["refs", s(&store), "--json"]).output().unwrap());
    assert_eq!(
        lockfile_of(&local_refs, "mache/team:keep"),
        None,
        "{local_refs:#}"
    );
}
