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

/// Pushes v1, v2 and v3 (v3 last, so `latest`), each one file of its own
/// beside one they all share; their lockfile hashes.
fn push_three_versions(dir: &Path, store: &Path) -> [String; 3] {
    let shared: &[u8] = b"package shared\n";
    let versions: [(&str, &str, &[u8], &str); 3] = [
        ("one", "a.go", b"package one\n", "v1"),
        ("two", "b.go", b"package two\n", "v2"),
        ("three", "c.go", b"package three\n", "v3"),
    ];
    versions.map(|(name, file, bytes, tag)| {
        push(dir, store, name, &[("s.go", shared), (file, bytes)], tag)
    })
}

#[test]
fn gc_frees_what_untagged_versions_alone_used_and_keeps_every_object_of_the_tagged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let [_, _, three] = push_three_versions(dir.path(), &store);
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
fn tagging_an_older_bundle_latest_moves_the_root_lockfile_so_gc_frees_the_untagged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let [one, _, three] = push_three_versions(dir.path(), &store);
    let lockfile = |hash: &str| {
        let hex = hash.strip_prefix("blake3:").unwrap();
        std::fs::read(store.join("lockfiles").join(format!("{hex}.bin"))).unwrap()
    };
    let root_lock = || std::fs::read(store.join("mache.lock.bin")).unwrap();
    let root_toml = || std::fs::read_to_string(store.join("mache.lock.toml")).unwrap();
    assert_eq!(
        root_lock(),
        lockfile(&three),
        "a push makes its bundle the root"
    );
    let toml_of_three = root_toml();
    assert_eq!(objects(&store).len(), 4);

    run_ok(&["tag", "v1", "latest", s(&store)]);
    assert!(
        root_lock() == lockfile(&one),
        "tagging v1 latest makes it the root lockfile"
    );
    assert_ne!(root_toml(), toml_of_three, "and the root TOML with it");
    run_ok(&["untag", "v2", s(&store)]);
    run_ok(&["untag", "v3", s(&store)]);

    let report = gc(&store, &[]);
    assert_eq!(
        report["objects_removed"], 2,
        "v2's and v3's own chunks go: {report:#}"
    );
    assert_eq!(objects(&store).len(), 2, "v1's two chunks stay");
    assert!(
        !store
            .join("lockfiles")
            .join(format!("{}.bin", &three[7..]))
            .exists()
    );
    run_ok(&["verify", s(&store)]);
    run_ok(&["verify", s(&store), "--ref", "v1"]);
    let out = dir.path().join("pulled.db");
    run_ok(&["pull", "--out-db", s(&out), s(&store)]);
    assert_eq!(dump_sources(&out), dump_sources(&dir.path().join("one.db")));
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

/// Starts `push --db db store`, and returns it once it has written a
/// temporary file (polled, with a deadline), ready to be signalled.
fn push_under_way(db: &Path, store: &Path) -> std::process::Child {
    let mut child = bin()
        .args(["push", "--db", s(db), s(store)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while temp_files(store).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the push ended first");
        assert!(std::time::Instant::now() < deadline, "no temporary file");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child
}

/// The temporary files in `store/tmp` (not the lock files of pushes).
fn temp_files(store: &Path) -> Vec<PathBuf> {
    all_tmp(store)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect()
}

fn all_tmp(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("tmp"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

#[test]
fn a_push_interrupted_by_sigint_or_sigterm_removes_its_temporary_files_and_says_so() {
    use nix::sys::signal::Signal::{SIGINT, SIGTERM};
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 30_000, 1);
    for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        let store = dir.path().join(format!("store-{code}"));
        let child = push_under_way(&db, &store);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let removed: usize = stderr
            .split("push interrupted: removed ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(" temporary files; nothing was tagged\n"))
            .unwrap_or_else(|| panic!("{stderr}"))
            .parse()
            .unwrap();
        assert!(removed > 0, "{stderr}");
        assert_eq!(all_tmp(&store), Vec::<PathBuf>::new());
        assert_eq!(list_files(&store.join("refs")), Vec::<PathBuf>::new());
    }
}

#[test]
fn what_a_killed_push_left_in_tmp_goes_at_the_next_push_and_at_gc() {
    use nix::sys::signal::Signal::SIGKILL;
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 30_000, 2);
    let killed = |store: &Path| {
        let mut child = push_under_way(&db, store);
        signal(&child, SIGKILL);
        child.wait().unwrap();
        let debris = temp_files(store);
        assert!(!debris.is_empty());
        debris.len()
    };
    let store = dir.path().join("store");
    killed(&store);
    // The next push (into the same `dir/store`) succeeds and sweeps it.
    push_one_source(dir.path(), "a.go", b"package a\n");
    assert_eq!(all_tmp(&store), Vec::<PathBuf>::new());

    let store = dir.path().join("store-gc");
    let debris = killed(&store);
    let report = gc(&store, &[]);
    assert_eq!(report["temp_files_removed"], debris, "{report}");
    assert_eq!(all_tmp(&store), Vec::<PathBuf>::new());
}
