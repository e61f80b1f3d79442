//! Crash safety of `push` and `pull` through the real binary: each is
//! killed with SIGKILL at points a seeded RNG picks, measured in progress
//! the test observes on disk (never in time), and what is left must be only
//! whole, verified files that the next run completes and cleans up after.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a killed run may take to reach its kill point.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(120);

/// Starts `args` with the binary, its stderr kept for a failure message.
fn spawn(args: &[&str]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Polls `progress` until it reaches `target`, then kills `child` with
/// SIGKILL and reaps it; returns the progress seen at the kill. Panics if
/// the child ends by itself first (the kill point was never reached).
fn kill_at(child: &mut Child, target: u64, progress: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    let seen = loop {
        let seen = progress();
        if seen >= target {
            break seen;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("it ended ({status}) at progress {seen}, before the kill point {target}");
        }
        assert!(
            Instant::now() < deadline,
            "progress stuck at {seen} of {target}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "it completed before the kill at progress {seen}"
    );
    seen
}

/// How many files a directory tree holds (missing: 0).
fn file_count(dir: &Path) -> u64 {
    list_files(dir).len() as u64
}

/// The files in a store's `tmp/` besides a push's lock file.
fn temp_files(store: &Path) -> u64 {
    list_files(&store.join("tmp"))
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .count() as u64
}

/// Asserts that every file of a store's `objects/` hashes to its name.
fn assert_objects_whole(store: &Path, what: &str) -> usize {
    let objects = list_files(&store.join("objects"));
    for rel in &objects {
        let bytes = std::fs::read(store.join("objects").join(rel)).unwrap();
        let name = rel.to_string_lossy().replace('/', "");
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            name,
            "{what}: objects/{} is not whole",
            rel.display()
        );
    }
    objects.len()
}

#[test]
fn push_killed_at_20_seeded_points_leaves_only_whole_objects_and_the_next_push_completes() {
    const SOURCES: usize = 2_000;
    const SEED: u64 = 0x5eed_0016;
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), SOURCES, 16);
    let mut rng = SplitMix(SEED);
    // Progress is what the push has on disk: each chunk, written to tmp/
    // and renamed into objects/, counts once; the mache.db it records (built
    // in tmp/ beside the chunks, with its journal) counts two more. The last
    // point, every object and both, is the record's build.
    let last_point = SOURCES as u64 + 2;
    for round in 0..20 {
        let store = dir.path().join(format!("store-{round}"));
        let target = rng.between(1, last_point);
        let progress = || temp_files(&store) + file_count(&store.join("objects"));
        let mut push = spawn(&["push", "--db", s(&db), s(&store)]);
        let seen = kill_at(&mut push, target, progress);
        let what = format!("seed {SEED:#x} round {round}: killed at {seen} (point {target})");
        assert_objects_whole(&store, &what);

        let out = run_ok(&["push", "--db", s(&db), s(&store), "--json"]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["sources"], SOURCES, "{what}: {report:#}");
        assert_eq!(
            list_files(&store.join("tmp")),
            Vec::<PathBuf>::new(),
            "{what}: the dead push's temporary files outlived the next push"
        );
        assert_eq!(assert_objects_whole(&store, &what), SOURCES, "{what}");
        run_ok(&["verify", s(&store)]);
        std::fs::remove_dir_all(&store).unwrap();
    }
}

/// The files beside a pull's target: the target and anything else.
fn beside(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The bytes of the pull's temporary db beside the target, if any.
fn temp_db_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".mache-cachefs-pull-")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn pull_killed_midway_leaves_no_target_and_the_next_pull_leaves_no_temporary_db() {
    const SEED: u64 = 0x0b11_0016;
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 5_000, 3);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store), "--no-db-record"]);
    // What an uninterrupted pull restores (a pull gives back the pushed
    // rows up to the documented exceptions).
    let reference = dir.path().join("reference.db");
    run_ok(&["pull", "--out-db", s(&reference), s(&store)]);
    let expected = dump_sources(&reference);
    let db_bytes = std::fs::metadata(&db).unwrap().len();
    let mut rng = SplitMix(SEED);
    for round in 0..5 {
        let out_dir = dir.path().join(format!("out-{round}"));
        std::fs::create_dir(&out_dir).unwrap();
        let target_db = out_dir.join("restored.db");
        // Kill once the temporary db holds a random part of the final size.
        let point = rng.between(1, db_bytes * 9 / 10);
        let mut pull = spawn(&["pull", "--out-db", s(&target_db), s(&store)]);
        let seen = kill_at(&mut pull, point, || temp_db_bytes(&out_dir));
        let what = format!("seed {SEED:#x} round {round}: killed at {seen} bytes");
        assert!(
            !target_db.exists(),
            "{what}: a killed pull left a target db"
        );

        run_ok(&["pull", "--out-db", s(&target_db), s(&store)]);
        assert_eq!(
            beside(&out_dir),
            ["restored.db"],
            "{what}: a temporary db outlived the next pull"
        );
        assert!(dump_sources(&target_db) == expected, "{what}: rows differ");
    }
}
