//! One disk cache shared by two mounts and a `pull` at once, with a cap far
//! below the bundle's size: every byte read through real tools is right
//! while the three evict each other's chunks, the cache ends within its cap
//! with its ledger telling the truth, and killed writers' debris is swept.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::fake_registry::FakeRegistry;
use crate::harness::{Sample, TestMount, assert_db_answers_equal, list_files, sample, stdout};

const SCOPE: &str = "team/shared";
/// The cap every process is given: a small part of the sample's chunks.
const CAP: u64 = 4 << 20;

/// A file in `tmp/` last written `age` ago, as a killed writer leaves one.
fn temp_file(cache_dir: &Path, name: &str, age: Duration) -> PathBuf {
    let path = cache_dir.join("tmp").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"half a chunk").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
    path
}

/// Starts `sh -c script`, its output captured.
fn spawn_sh(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child`, asserting it succeeded; its stdout.
fn finish(child: Child, what: &str) -> String {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `sha256sum` of every file below `dir`, in reverse path order (the
/// other way round from `diff -r`, so two readers meet in the middle).
fn checksums_backwards(dir: &Path) -> String {
    format!(
        "cd '{}' && find . -type f -print0 | sort -rz | xargs -0 sha256sum",
        dir.display()
    )
}

/// The bytes the sample's chunks take.
fn bundle_bytes(sample: &Sample) -> u64 {
    let bundle = sample.bundle();
    let sizes = bundle.sizes.expect("our push writes a sizes index");
    sizes.entries.iter().map(|e| e.chunk_len).sum()
}

/// What the cache's ledger says is in `chunks/`.
fn ledger_bytes(cache_dir: &Path) -> u64 {
    let text = std::fs::read_to_string(cache_dir.join("ledger")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn two_mounts_and_a_pull_share_one_capped_cache_and_every_read_is_whole() {
    let sample = sample();
    assert!(
        bundle_bytes(sample) > 4 * CAP,
        "the cap must force evictions"
    );
    let registry = FakeRegistry::start();
    let store = mache_cachefs::store::LocalStore::open(&sample.store).unwrap();
    registry.serve_bundle(&store, &sample.bundle(), SCOPE, "latest", false);
    let url = registry.url();
    let cap = CAP.to_string();
    let source = ["--remote", url.as_str(), "--scope", SCOPE];
    let capped = ["--cache-size", cap.as_str()];

    let mut first = TestMount::dirs();
    let cache_dir = first.cache_home.join("mache-cachefs/cache");
    let debris = temp_file(&cache_dir, ".tmpkilled", Duration::from_secs(2 * 3600));
    let fresh = temp_file(&cache_dir, ".tmpwriting", Duration::ZERO);
    first.mount_daemon_from(&source, &capped);
    assert!(!debris.exists(), "debris over an hour old is swept at open");
    assert!(fresh.exists(), "a fresh temporary file is left alone");
    let mut second = TestMount::dirs();
    second.cache_home = first.cache_home.clone();
    second.mount_daemon_from(&source, &capped);

    // All three at once, reading the bundle in different orders.
    let pulled = first.dir.path().join("pulled.db");
    let pull = first
        .command()
        .args(["-q", "pull", "--out-db"])
        .arg(&pulled)
        .args(source)
        .args(capped)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let diff = spawn_sh(&format!(
        "diff -r '{}' '{}'",
        sample.tree.display(),
        first.path("sources").display()
    ));
    let sums = spawn_sh(&checksums_backwards(&second.path("sources")));
    finish(diff, "diff -r of the first mount");
    let mounted_sums = finish(sums, "sha256sum of the second mount");
    finish(pull, "pull");
    let original_sums = stdout(
        Command::new("sh")
            .arg("-c")
            .arg(checksums_backwards(&sample.tree)),
    );
    assert_eq!(mounted_sums, original_sums, "the second mount's bytes");
    assert_db_answers_equal(sample, &pulled);

    let mut evictions = 0;
    for m in [&first, &second] {
        let status = m.status();
        assert_eq!(status["errors"], 0, "{status:#}");
        assert_eq!(status["verification_failures"], 0, "{status:#}");
        let disk = &status["remote"]["disk_cache"];
        assert_eq!(disk["corrupt"], 0, "{status:#}");
        evictions += disk["evictions"].as_u64().unwrap();
    }
    assert!(evictions > 0, "the mounts evicted nothing");
    let on_disk: u64 = list_files(&cache_dir.join("chunks"))
        .iter()
        .map(|(_, len)| len)
        .sum();
    assert!(on_disk <= CAP, "{on_disk} bytes cached, cap {CAP}");
    assert_eq!(ledger_bytes(&cache_dir), on_disk, "the ledger is the truth");
    let left: Vec<String> = list_files(&cache_dir.join("tmp"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(left, [".tmpwriting"], "no temporary file left behind");

    // `gc --cache` sweeps debris too, and says so.
    let debris = temp_file(&cache_dir, ".tmpkilled", Duration::from_secs(2 * 3600));
    let report = stdout(
        first
            .command()
            .args(["gc", "--cache", "--json", "--max-size", &cap]),
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["temp_files_removed"], 1, "{report:#}");
    assert!(report["chunk_bytes"].as_u64().unwrap() <= CAP, "{report:#}");
    assert!(!debris.exists() && fresh.exists());
}
