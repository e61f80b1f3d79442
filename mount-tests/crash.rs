//! Crash safety and concurrency of mounts: the daemon killed with SIGKILL
//! in the middle of cold fetches from a real registry, a full disk under
//! the disk cache, 64 threads of random range reads on a cold mount, and
//! `sqlite3` processes racing for `mache.db`'s first build. Every byte a
//! reader gets must be the original's; what is cached must verify; the
//! next mount must work.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mache_cachefs::hash::Hash;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{SplitMix, Tmpfs};
use crate::harness::{
    TestMount, assert_db_answers_equal, diff_against_tree, is_mounted, list_files, run, sample,
    stdout, wait_for_exit, wait_until,
};
use crate::registry::{SCOPE, mount_url, sample_on_distribution, served};

/// The disk cache directory of a mount's cache home.
fn cache_dir(m: &TestMount) -> PathBuf {
    m.cache_home.join("mache-cachefs/cache")
}

/// Asserts that every chunk file of the disk cache at `cache` holds its
/// chunk whole (as it is, or as one zstd frame of it); returns how many.
fn assert_cached_chunks_whole(cache: &Path) -> usize {
    let chunks = list_files(&cache.join("chunks"));
    for (rel, _) in &chunks {
        let name = rel.replace('/', "");
        let bytes = std::fs::read(cache.join("chunks").join(rel)).unwrap();
        let whole = Hash::of(&bytes).to_hex() == name
            || zstd::decode_all(bytes.as_slice()).is_ok_and(|d| Hash::of(&d).to_hex() == name);
        assert!(whole, "chunks/{rel} is not a whole chunk");
    }
    chunks.len()
}

/// Starts `sh -c script` in `dir`, output discarded.
fn spawn_sh(dir: &Path, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Asserts `diff -r` of the sample against a mount's `sources/` is clean.
fn assert_sources_equal(m: &TestMount) {
    let diff = diff_against_tree(sample(), &m.path("sources"));
    assert!(
        diff.status.success(),
        "{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

#[test]
fn a_daemon_killed_during_cold_fetches_leaves_only_whole_chunks_and_the_next_mount_reads_right() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let registry = sample_on_distribution(scratch.path());
    let url = registry.url();
    let mut m = TestMount::dirs();
    mount_url(&mut m, &url, &[]);
    let cache = cache_dir(&m);
    let distinct = sample.bundle().lockfile.distinct_chunks();
    // Four readers of every file; the daemon dies once a quarter of the
    // chunks are in the disk cache (progress seen there, not time).
    let readers = spawn_sh(
        &m.path("sources"),
        "find . -type f -print0 | xargs -0 -n 20 -P 4 cat > /dev/null",
    );
    wait_until("a quarter of the chunks cached", || {
        list_files(&cache.join("chunks")).len() >= distinct / 4
    });
    let pid = m.daemon.take().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_for_exit(pid);
    let read_all = readers.wait_with_output().unwrap();
    assert!(
        !read_all.status.success(),
        "the readers finished before the kill: the kill point came too late"
    );
    let cached = assert_cached_chunks_whole(&cache);
    assert!(cached < distinct, "{cached} of {distinct}: not midway");

    run(m.command().arg("unmount").arg(&m.mnt));
    assert!(!is_mounted(&m.mnt), "still mounted after unmount");
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 0);

    mount_url(&mut m, &url, &[]);
    assert_sources_equal(&m);
    let status = m.status();
    assert_eq!(status["errors"], 0, "{status:#}");
    assert_eq!(status["remote"]["disk_cache"]["corrupt"], 0, "{status:#}");
    assert!(
        status["remote"]["disk_cache"]["hits"].as_u64().unwrap() > 0,
        "the chunks cached before the kill were not used: {status:#}"
    );
    assert_cached_chunks_whole(&cache);
}

/// Fills the filesystem of `dir` to its last byte with `dir/filler`.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &page).is_ok() {}
    filler
}

/// A foreground mount whose stderr is a full disk (/dev/full) used to
/// panic on its "mounted" line; it must serve and, once unmounted, exit 0.
#[test]
fn a_foreground_mount_whose_stderr_is_a_full_disk_serves_and_exits_cleanly() {
    let sample = sample();
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut m = TestMount::foreground_with_stderr(&sample.store, Stdio::from(full));
    assert_sources_equal(&m);
    let out = run(m.command().arg("unmount").arg(&m.mnt));
    assert!(out.status.success(), "{out:?}");
    let child = m.foreground.as_mut().unwrap();
    let mut exited = None;
    wait_until("the foreground mount exits", || {
        exited = child.try_wait().unwrap();
        exited.is_some()
    });
    assert_eq!(
        exited.unwrap().code(),
        Some(0),
        "the foreground mount's exit"
    );
    m.foreground = None;
}

#[test]
fn a_full_disk_under_the_disk_cache_gives_right_bytes_or_eio_and_the_next_mount_caches() {
    let sample = sample();
    let registry = served();
    let url = registry.url();
    // The tmpfs is declared before the mount so that it is unmounted after
    // it, pass or fail (a live daemon keeps the cache busy).
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tmpfs = Tmpfs::mount(&scratch.path().join("cache"), "size=1m");
    let mut m = TestMount::dirs();
    m.cache_home = tmpfs.0.clone();
    std::fs::create_dir_all(cache_dir(&m)).unwrap();
    let filler = fill(&tmpfs.0);
    mount_url(&mut m, &url, &[]);
    let mut read = 0;
    for (rel, _) in sample.files() {
        match std::fs::read(m.path("sources").join(&rel)) {
            Ok(bytes) => {
                let original = std::fs::read(sample.tree.join(&rel)).unwrap();
                assert!(bytes == original, "{rel}: wrong bytes on a full disk");
                read += 1;
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{rel}: {e}"),
        }
    }
    assert!(read > 0, "nothing read on a full disk");
    match std::fs::read(m.path("mache.db")) {
        Ok(bytes) => assert!(bytes.starts_with(b"SQLite format 3\0")),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "mache.db: {e}"),
    }
    let status = m.status();
    assert_eq!(status["verification_failures"], 0, "{status:#}");
    assert_cached_chunks_whole(&cache_dir(&m));
    m.unmount();

    // Room again: the filler goes, and the tmpfs grows to hold mache.db.
    std::fs::remove_file(filler).unwrap();
    run(Command::new("mount")
        .args(["-o", "remount,size=512m"])
        .arg(&tmpfs.0));
    mount_url(&mut m, &url, &[]);
    assert_sources_equal(&m);
    assert_db_answers_equal(sample, &m.path("mache.db"));
    assert!(
        assert_cached_chunks_whole(&cache_dir(&m)) > 0,
        "with room again, nothing was cached"
    );
    assert_eq!(m.status()["errors"], 0);
}

#[test]
fn sixty_four_threads_of_random_range_reads_on_a_cold_mount_get_the_original_bytes_and_fetch_each_chunk_once()
 {
    const SEED: u64 = 0x64_0016;
    const READS_PER_THREAD: usize = 40;
    let sample = sample();
    let registry = served();
    let mut m = TestMount::dirs();
    mount_url(&mut m, &registry.url(), &[]);
    let files: Vec<(String, Vec<u8>)> = sample
        .files()
        .into_iter()
        .filter(|(_, size)| *size > 0)
        .map(|(rel, _)| {
            let bytes = std::fs::read(sample.tree.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect();
    let sources = m.path("sources");
    let touched: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..64u64)
            .map(|t| {
                let (files, sources) = (&files, &sources);
                scope.spawn(move || {
                    let mut rng = SplitMix(SEED ^ t);
                    let mut touched = Vec::new();
                    for _ in 0..READS_PER_THREAD {
                        let (rel, original) = &files[rng.below(files.len() as u64) as usize];
                        let len = original.len() as u64;
                        let offset = rng.below(len);
                        let want = 1 + rng.below((len - offset).min(256 << 10));
                        let mut got = vec![0u8; want as usize];
                        let file = std::fs::File::open(sources.join(rel)).unwrap();
                        file.read_exact_at(&mut got, offset).unwrap_or_else(|e| {
                            panic!("seed {SEED:#x} thread {t}: {rel} at {offset}+{want}: {e}")
                        });
                        let range = offset as usize..(offset + want) as usize;
                        assert!(
                            got == original[range],
                            "seed {SEED:#x} thread {t}: {rel} at {offset}+{want}: wrong bytes"
                        );
                        touched.push(rel.clone());
                    }
                    touched
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let touched: HashSet<String> = touched.into_iter().collect();
    let bundle = sample.bundle();
    let mut chunks_read = HashSet::new();
    for entry in &bundle.lockfile.sources {
        let digest = mache_cachefs::oci::v1_digest(&entry.chunk_hash);
        let gets = registry.count(&format!("GET /v2/mache/{SCOPE}/blobs/{digest}"));
        assert!(
            gets <= 1,
            "{}: its chunk was fetched {gets} times",
            entry.path
        );
        if touched.contains(&entry.path) {
            assert_eq!(gets, 1, "{}: read but never fetched", entry.path);
            chunks_read.insert(entry.chunk_hash);
        }
    }
    let status = m.status();
    assert_eq!(status["errors"], 0, "{status:#}");
    assert_eq!(
        status["chunks_fetched"],
        chunks_read.len(),
        "each chunk read was fetched once: {status:#}"
    );
}

#[test]
fn sqlite3_processes_racing_for_mache_db_during_its_first_build_all_get_the_right_answer() {
    const READERS: usize = 6;
    let sample = sample();
    let sql = "SELECT count(*), sum(length(content)), hex(sha3_query('SELECT id, content FROM _source ORDER BY id')) FROM _source";
    let expected = stdout(
        Command::new("sqlite3")
            .arg("-readonly")
            .arg(&sample.db)
            .arg(sql),
    );
    let m = TestMount::daemon(&sample.store, &[]);
    assert_eq!(m.status()["mache_db"]["state"], "absent");
    let queries: Vec<Child> = (0..READERS)
        .map(|_| {
            Command::new("sqlite3")
                .arg(m.path("mache.db"))
                .arg(sql)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for query in queries {
        let out = query.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    let status = m.status();
    assert_eq!(status["mache_db"]["state"], "ready", "{status:#}");
    assert_eq!(status["errors"], 0, "{status:#}");
}

#[test]
fn soak_sh_makes_20000_random_reads_of_a_10000_source_mount_with_no_error_and_bounded_rss_and_fds()
{
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak.sh");
    let out = Command::new(script)
        .arg("20000")
        .env("MACHE_CACHEFS_BIN", crate::harness::BIN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "soak: 20000 of 20000 reads",
        "errors 0, mismatches 0\n",
        "soak: PASS",
    ] {
        assert!(said.contains(needle), "{needle:?} in {said}");
    }
}
