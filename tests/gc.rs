//! Store upkeep through the real binary: gc removes exactly what no tag
//! reaches, never breaks a bundle pushed at the same time, and `gc --cache`
//! trims the disk cache and old built dbs.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Pushes a db of `files` (name, content) with `tag`; returns its lockfile.
fn push(dir: &Path, store: &Path, name: &str, files: &[(&str, &[u8])], tag: &str) -> String {
    let db = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&db);
    let sources: Vec<Src> = files
        .iter()
        .map(|(p, c)| Src::at(p, Some("go"), c))
        .collect();
    make_db(&db, &sources, None);
    let out = run_ok(&["push", "--db", s(&db), s(store), "--tag", tag, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    report["lockfile"].as_str().unwrap().to_string()
}

fn objects(store: &Path) -> Vec<PathBuf> {
    list_files(&store.join("objects"))
}

fn gc(store: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(&[&["gc", s(store), "--json", "--grace", "0"], extra].concat());
    serde_json::from_str(&out).unwrap()
}

#[test]
fn gc_frees_what_untagged_versions_alone_used_and_keeps_every_object_of_the_tagged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let shared: &[u8] = b"package shared\n";
    push(
        dir.path(),
        &store,
        "one",
        &[("s.go", shared), ("a.go", b"package one\n")],
        "v1",
    );
    push(
        dir.path(),
        &store,
        "two",
        &[("s.go", shared), ("b.go", b"package two\n")],
        "v2",
    );
    let three = push(
        dir.path(),
        &store,
        "three",
        &[("s.go", shared), ("c.go", b"package three\n")],
        "v3",
    );
    assert_eq!(objects(&store).len(), 4);
    run_ok(&["untag", "v1", s(&store)]);
    run_ok(&["untag", "v2", s(&store)]);

    let dry = gc(&store, &["--dry-run"]);
    assert_eq!(dry["objects_removed"], 2, "{dry:#}");
    assert_eq!(objects(&store).len(), 4, "a dry run removes nothing");
    // Young garbage is kept within the default grace period.
    let young: serde_json::Value =
        serde_json::from_str(&run_ok(&["gc", s(&store), "--json"])).unwrap();
    assert_eq!(young["objects_removed"], 0);
    assert!(young["kept_young"].as_u64().unwrap() >= 2, "{young:#}");

    let report = gc(&store, &[]);
    assert_eq!(report["objects_removed"], 2, "{report:#}");
    assert_eq!(
        report["lockfiles_removed"], 4,
        "two lockfiles and their sizes files"
    );
    assert!(report["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(objects(&store).len(), 2);
    run_ok(&["verify", s(&store), "--ref", "v3"]);
    run_ok(&["verify", s(&store)]);
    run_fails(&["verify", s(&store), "--ref", "v1"], 5, "no ref \"v1\"");
    let again = gc(&store, &[]);
    assert_eq!(again["objects_removed"], 0, "nothing left to collect");
    let refs = run_ok(&["refs", s(&store)]);
    assert!(refs.contains(&three), "{refs}");
}

#[test]
fn gc_keeps_the_lockfile_of_a_store_the_go_mache_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    push(dir.path(), &store, "one", &[("a.go", b"package a\n")], "v1");
    // The Go mache's layout: objects and the top-level lockfile only.
    for extra in ["refs", "lockfiles", "pushed", "tmp"] {
        std::fs::remove_dir_all(store.join(extra)).unwrap();
    }
    let report = gc(&store, &[]);
    assert_eq!(report["objects_removed"], 0, "{report:#}");
    run_ok(&["verify", s(&store)]);
}

#[test]
fn a_gc_running_beside_pushes_in_a_loop_never_breaks_a_pushed_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    push(
        dir.path(),
        &store,
        "seed",
        &[("seed.go", b"package seed\n")],
        "seed",
    );
    /// Stops the gc loop when the pushes end, also by a failed assertion.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                gc(&store, &[]);
            }
        });
        let _stop = Stop(&stop);
        for round in 0..12 {
            // Alternate two versions so each push reuses objects the other
            // left unreachable: exactly what a gc would take.
            let content = format!("package v{}\n", round % 2);
            let tag = format!("r{round}");
            push(
                dir.path(),
                &store,
                &tag,
                &[("x.go", content.as_bytes()), ("y.go", b"package y\n")],
                "latest",
            );
            run_ok(&["verify", s(&store)]);
        }
    });
    run_ok(&["verify", s(&store)]);
    run_ok(&["verify", s(&store), "--ref", "seed"]);
}

#[test]
fn gc_cache_trims_the_chunk_cache_to_its_cap_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache/mache-cachefs/cache");
    let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let hex = blake3::hash(chunk).to_hex().to_string();
        let path = cache.join("chunks").join(&hex[..2]).join(&hex[2..]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, chunk).unwrap();
        let when = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_000_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let old_db = cache.join("dbs/old.db");
    std::fs::create_dir_all(old_db.parent().unwrap()).unwrap();
    std::fs::write(&old_db, b"SQLite format 3\0").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old_db)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let run_gc = |extra: &[&str]| -> serde_json::Value {
        let out = bin()
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(["gc", "--cache", "--max-size", "2500", "--json"])
            .args(extra)
            .output()
            .unwrap();
        json_of(out)
    };
    let dry = run_gc(&["--dry-run"]);
    assert_eq!(
        (
            dry["chunks_removed"].as_u64(),
            dry["files_removed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(list_files(&cache.join("chunks")).len(), 4);
    let report = run_gc(&[]);
    assert_eq!(report["chunks_removed"], 2, "{report:#}");
    assert_eq!(report["chunk_bytes"], 2000);
    let left: Vec<String> = list_files(&cache.join("chunks"))
        .iter()
        .map(|p| p.to_string_lossy().replace('/', ""))
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let hex = blake3::hash(chunk).to_hex().to_string();
        assert_eq!(
            left.contains(&hex),
            i >= 2,
            "chunk {i}: the two oldest went"
        );
    }
    assert!(!old_db.exists());
}
