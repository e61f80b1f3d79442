//! Mounts of a bundle on a registry (the test suite's own registry, which
//! can go down on demand): lazy, verified, cached on disk, and resilient.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fake_registry::FakeRegistry;
use crate::harness::{TestMount, run, sample, stdout};

pub(crate) const SCOPE: &str = "team/sample";

/// The shared sample served by a fresh fake registry.
pub(crate) fn served() -> FakeRegistry {
    let sample = sample();
    let store = mache_cachefs::store::LocalStore::open(&sample.store).unwrap();
    let registry = FakeRegistry::start();
    registry.serve_bundle(&store, &sample.bundle(), SCOPE, "latest", false);
    registry
}

/// Mounts the bundle of the registry at `url` at `m` with `--daemon`;
/// returns what the command printed on stderr.
pub(crate) fn mount_url(m: &mut TestMount, url: &str, extra: &[&str]) -> String {
    m.mount_daemon_from(&["--remote", url, "--scope", SCOPE], extra)
}

/// Mounts the fake registry's bundle at `m`.
fn mount_remote(m: &mut TestMount, registry: &FakeRegistry, extra: &[&str]) {
    mount_url(m, &registry.url(), extra);
}

fn blob_gets(registry: &FakeRegistry) -> usize {
    registry.count(&format!("GET /v2/mache/{SCOPE}/blobs/"))
}

#[test]
fn a_registry_bundle_mounts_without_fetching_reads_whole_and_a_second_mount_is_cached() {
    let sample = sample();
    let registry = served();
    let mut first = TestMount::dirs();
    mount_remote(&mut first, &registry, &[]);
    // Mounting reads the manifest and two blobs: the lockfile and the sizes index.
    let at_mount = blob_gets(&registry);
    assert_eq!(at_mount, 2, "config and sizes index only");
    run(Command::new("find").arg(first.path("sources")));
    run(Command::new("ls").arg("-lR").arg(first.path("sources")));
    assert_eq!(blob_gets(&registry), at_mount, "listing fetches no chunk");
    let diff = crate::harness::diff_against_tree(sample, &first.path("sources"));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let status = first.status();
    assert_eq!(status["remote"]["layout"], "build-cache/v1");
    assert!(
        status["remote"]["requests"].as_u64().unwrap() > 100,
        "{status:#}"
    );
    assert_eq!(status["remote"]["failures"], 0);
    first.unmount();

    // A second mount with the same cache reads every file from disk.
    let fetched = blob_gets(&registry);
    let mut second = TestMount::dirs();
    second.cache_home = first.cache_home.clone();
    mount_remote(&mut second, &registry, &[]);
    let tar = stdout(Command::new("sh").arg("-c").arg(format!(
        "tar -cf - -C {} . | wc -c",
        second.path("sources").display()
    )));
    assert!(tar.trim().parse::<u64>().unwrap() > 1_000_000, "{tar}");
    assert_eq!(
        blob_gets(&registry),
        fetched,
        "zero blob requests the second time"
    );
    let hits = second.status()["remote"]["disk_cache"]["hits"]
        .as_u64()
        .unwrap();
    assert!(hits > 1000, "{hits}");
}

#[test]
fn with_the_registry_down_uncached_files_fail_fast_cached_ones_work_and_recovery_needs_no_remount()
{
    let sample = sample();
    let registry = served();
    let mut m = TestMount::dirs();
    mount_remote(
        &mut m,
        &registry,
        &["--retry-budget", "8", "--offline-after", "1"],
    );
    let files = sample.files();
    let (cached, first_cold) = (&files[0].0, &files[files.len() - 1].0);
    let original = |rel: &str| std::fs::read(sample.tree.join(rel)).unwrap();
    let read = |rel: &str| std::fs::read(m.path("sources").join(rel));
    assert_eq!(read(cached).unwrap(), original(cached));
    assert_eq!(m.status()["remote"]["health"]["state"], "up");

    // The first cold read retries for --offline-after, then fails: EIO.
    registry.set_down(true);
    let started = Instant::now();
    let err = read(first_cold).unwrap_err();
    let first = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(first >= Duration::from_secs(1), "retried first: {first:?}");
    assert!(
        first < Duration::from_secs(8),
        "within the budget: {first:?}"
    );
    let health = &m.status()["remote"]["health"];
    assert_eq!(health["state"], "down", "{health:#}");
    assert!(
        health["since"].as_str().unwrap().ends_with('Z'),
        "{health:#}"
    );
    assert!(health["last_error"].as_str().is_some(), "{health:#}");

    // Down: every other cold read fails at once, 4 at a time too; cached
    // files read as before.
    let others: Vec<&String> = files[1..9].iter().map(|(rel, _)| rel).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for rel in &others {
            let read = &read;
            s.spawn(move || {
                let err = read(rel).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EIO), "{rel}: {err}");
            });
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "8 cold reads while down took {:?}",
        started.elapsed()
    );
    assert_eq!(
        read(cached).unwrap(),
        original(cached),
        "cached files still read"
    );

    // Back: the probe notices and cold reads succeed, with no remount.
    registry.set_down(false);
    let back = Instant::now();
    let recovered = loop {
        match read(first_cold) {
            Ok(bytes) => break bytes,
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "not back after the probe's longest interval"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(recovered, original(first_cold), "back without a remount");
    for rel in others {
        assert_eq!(read(rel).unwrap(), original(rel));
    }
    let health = &m.status()["remote"]["health"];
    assert_eq!(health["state"], "up", "{health:#}");
    assert_eq!(health["outages"], 1, "{health:#}");
}

#[test]
fn a_registry_that_hangs_mid_read_and_then_dies_gives_eio_within_the_budget_and_nothing_partial() {
    let sample = sample();
    let registry = served();
    let mut m = TestMount::dirs();
    mount_remote(
        &mut m,
        &registry,
        &[
            "--retry-budget",
            "6",
            "--read-timeout",
            "1",
            "--offline-after",
            "1",
        ],
    );
    let (rel, _) = sample
        .files()
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .unwrap();
    let index = sample
        .bundle()
        .lockfile
        .sources
        .iter()
        .position(|s| s.path == rel)
        .unwrap();
    let chunk = sample.bundle().lockfile.sources[index].chunk_hash;
    // Headers, then silence: the reader hangs mid-body...
    registry.fault(&chunk.to_hex(), &[crate::fake_registry::Fault::Stall]);
    let path = m.path("sources").join(&rel);
    let started = Instant::now();
    let reader = std::thread::spawn(move || std::fs::read(path));
    let wanted = format!("blobs/sha256:{}", chunk.to_hex());
    while registry.count(&wanted) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no request");
        std::thread::yield_now();
    }
    // ...and the registry dies under it.
    registry.set_down(true);
    let err = reader.join().unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?} is past the budget",
        started.elapsed()
    );
    let cache = m.cache_home.join("mache-cachefs/cache");
    let cached = cache
        .join("chunks")
        .join(&chunk.to_hex()[..2])
        .join(&chunk.to_hex()[2..]);
    assert!(!cached.exists(), "nothing partial is cached");
    let debris = std::fs::read_dir(cache.join("tmp")).unwrap().count();
    assert_eq!(debris, 0, "no temporary file is left");
}

/// Pushes `db` to `server` (through a local store in `dir`) as `mache/<SCOPE>:latest`.
fn push_to(server: &crate::serve_support::Server, db: &Path, dir: &Path) {
    push_layout(server, db, dir, "auto");
}

fn push_layout(server: &crate::serve_support::Server, db: &Path, dir: &Path, layout: &str) {
    run(Command::new(crate::harness::BIN)
        .args(["-q", "push", "--layout", layout, "--db"])
        .arg(db)
        .arg(dir.join("local"))
        .args([
            "--remote",
            &format!("http://{}", server.addr),
            "--scope",
            SCOPE,
        ])
        .env("XDG_CACHE_HOME", dir.join("push-cache")));
}

#[test]
fn a_bundle_pushed_to_serve_mounts_and_reads_whole_and_so_does_a_go_store_it_serves() {
    let sample = sample();
    for go_layout in [false, true] {
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let server = if go_layout {
            // A store as the Go mache writes it (objects and mache.lock.bin),
            // served as it is: no sizes index.
            let store = sample.copy_store(scratch.path());
            for extra in ["refs", "lockfiles", "pushed"] {
                let _ = std::fs::remove_dir_all(store.join(extra));
            }
            crate::serve_support::Server::start(scratch.path(), &store, &[])
        } else {
            let server = crate::serve_support::Server::start(
                scratch.path(),
                &scratch.path().join("served"),
                &[],
            );
            push_to(&server, &sample.db, scratch.path());
            server
        };
        let mut m = TestMount::dirs();
        mount_url(&mut m, &format!("http://{}", server.addr), &[]);
        let diff = crate::harness::diff_against_tree(sample, &m.path("sources"));
        assert!(
            diff.status.success(),
            "go layout {go_layout}: {}",
            String::from_utf8_lossy(&diff.stdout)
        );
        let status = m.status();
        assert_eq!(status["sizes_index"], !go_layout, "{status:#}");
        assert_eq!(status["remote"]["failures"], 0, "{status:#}");
    }
}

#[test]
fn a_100000_source_bundle_pushes_to_serve_and_mounts_with_find_fetching_no_chunk() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db = scratch.path().join("synthetic.db");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-sample-db.py");
    run(Command::new("python3")
        .arg(&script)
        .args(["--synthetic", "100000"])
        .arg(&db));
    let server =
        crate::serve_support::Server::start(scratch.path(), &scratch.path().join("served"), &[]);
    push_to(&server, &db, scratch.path());
    let mut m = TestMount::dirs();
    mount_url(&mut m, &format!("http://{}", server.addr), &[]);
    let files = stdout(
        Command::new("find")
            .arg(m.path("sources"))
            .args(["-type", "f"]),
    );
    assert_eq!(files.lines().count(), 100_000);
    let status = m.status();
    assert_eq!(status["chunks_fetched"], 0, "{status:#}");
    let first = files.lines().next().unwrap();
    assert!(std::fs::read(first).is_ok(), "{first} reads");
}

#[test]
fn a_packed_bundle_mounts_reads_whole_with_range_reads_and_read_ahead() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let server =
        crate::serve_support::Server::start(scratch.path(), &scratch.path().join("served"), &[]);
    push_layout(&server, &sample.db, scratch.path(), "packed");
    let mut m = TestMount::dirs();
    mount_url(&mut m, &format!("http://{}", server.addr), &[]);
    run(Command::new("find").arg(m.path("sources")));
    assert_eq!(m.status()["chunks_fetched"], 0, "listing fetches nothing");
    let diff = crate::harness::diff_against_tree(sample, &m.path("sources"));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let status = m.status();
    assert_eq!(status["remote"]["layout"], "packed/2", "{status:#}");
    let requests = status["remote"]["requests"].as_u64().unwrap();
    let files = sample.files().len() as u64;
    assert!(
        requests < files / 2,
        "read-ahead: {requests} requests for {files} files"
    );
}

/// A distribution registry in `dir` holding the sample, pushed as `latest`.
pub(crate) fn sample_on_distribution(dir: &Path) -> crate::distribution_support::Distribution {
    let registry = crate::distribution_support::Distribution::start(&dir.join("registry"));
    run(Command::new(crate::harness::BIN)
        .args(["-q", "push", "--db"])
        .arg(&sample().db)
        .arg(dir.join("local"))
        .args(["--remote", &registry.url(), "--scope", SCOPE])
        .env("XDG_CACHE_HOME", dir.join("push-cache")));
    registry
}

#[test]
fn a_bundle_on_the_distribution_registry_mounts_a_second_mount_makes_no_blob_request_and_a_third_comes_up_offline()
 {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let registry = sample_on_distribution(scratch.path());
    let url = registry.url();
    let mut first = TestMount::dirs();
    mount_url(&mut first, &url, &[]);
    let diff = crate::harness::diff_against_tree(sample, &first.path("sources"));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(first.status()["remote"]["layout"], "packed/2");
    crate::harness::assert_db_answers_equal(sample, &first.path("mache.db"));
    first.unmount();

    registry.settle();
    let gets = registry.blob_gets();
    let mut second = TestMount::dirs();
    second.cache_home = first.cache_home.clone();
    mount_url(&mut second, &registry.url(), &[]);
    let diff = crate::harness::diff_against_tree(sample, &second.path("sources"));
    assert!(diff.status.success());
    registry.settle();
    // The lockfile, the pack index and every chunk come from the disk
    // cache: only the manifest is asked for, since the tag may have moved.
    assert_eq!(registry.blob_gets() - gets, 0, "no blob the second time");
    second.unmount();

    // The registry gone: the bundle last resolved comes up from the cache.
    drop(registry);
    let mut third = TestMount::dirs();
    third.cache_home = first.cache_home.clone();
    // One refused connection, no retries: it comes up at once (the bound
    // leaves room for the daemon's start on a loaded machine).
    let started = Instant::now();
    let said = mount_url(&mut third, &url, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "offline start took {:?}",
        started.elapsed()
    );
    let diff = crate::harness::diff_against_tree(sample, &third.path("sources"));
    assert!(
        diff.status.success(),
        "offline: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let sources = format!("{} sources", sample.bundle().lockfile.sources.len());
    for needle in [
        "connection refused; using latest as resolved",
        "(lockfile blake3:",
        sources.as_str(),
        "from the disk cache",
    ] {
        assert!(said.contains(needle), "{needle:?} in {said}");
    }
    assert_eq!(third.status()["remote"]["health"]["state"], "down");
}

#[test]
fn prefetch_from_the_distribution_registry_fetches_whole_packs_and_then_needs_no_registry() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let registry = sample_on_distribution(scratch.path());
    registry.settle();
    let before = registry.blob_gets();
    let mut m = TestMount::dirs();
    mount_url(&mut m, &registry.url(), &["--prefetch"]);
    let status = m.wait_for_prefetch();
    let distinct = sample.bundle().lockfile.distinct_chunks() as u64;
    assert_eq!(status["prefetch"]["chunks_warmed"], distinct, "{status:#}");
    registry.settle();
    let gets = registry.blob_gets() - before;
    let files = sample.files().len();
    // The lockfile, the index, and the packs in ranges: each prefetch batch
    // (64 MiB of chunks) is cut into at most 64 ranges, and a range ends
    // at the end of its pack (32 MiB of chunks). Whole frames, many chunks
    // a request, never one request a chunk.
    let bundle = sample.bundle();
    let sizes = bundle
        .sizes
        .as_ref()
        .expect("our push writes a sizes index");
    let bundle_bytes: u64 = sizes.entries.iter().map(|e| e.chunk_len).sum();
    let batches = bundle_bytes.div_ceil(64 << 20) as usize;
    let packs = bundle_bytes.div_ceil(32 << 20) as usize;
    let most = 2 + 64 * batches + packs;
    assert!(
        gets <= most && gets * 10 <= distinct as usize,
        "{gets} blob requests for {distinct} chunks, {files} files ({bundle_bytes} bytes)"
    );

    // Everything is on this machine now: the registry can go.
    drop(registry);
    let diff = crate::harness::diff_against_tree(sample, &m.path("sources"));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let count = stdout(
        Command::new("sqlite3")
            .arg(m.path("mache.db"))
            .arg("select count(*) from _source"),
    );
    assert_eq!(count.trim(), files.to_string());
    let after = m.status();
    assert_eq!(after["errors"], 0, "{after:#}");
    assert_eq!(after["remote"]["failures"], 0, "{after:#}");
}

#[test]
fn a_token_given_on_the_command_line_never_reaches_the_daemons_command_line() {
    let sample = sample();
    let registry = served();
    registry.require_static_token("cmdline-s3cret");
    let mut m = TestMount::dirs();
    mount_remote(&mut m, &registry, &["--token", "cmdline-s3cret"]);
    let daemon = m.daemon.expect("a daemon pid");
    let cmdline = std::fs::read(format!("/proc/{daemon}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("mount"), "{cmdline}");
    assert!(!cmdline.contains("s3cret"), "{cmdline}");
    // The daemon still has the token: reads work.
    let rel = &sample.files()[0].0;
    assert_eq!(
        std::fs::read(m.path("sources").join(rel)).unwrap(),
        std::fs::read(sample.tree.join(rel)).unwrap()
    );
}

#[test]
fn a_bearer_token_that_expires_mid_mount_is_fetched_again_and_every_read_succeeds() {
    let sample = sample();
    let registry = served();
    // Each token is good for 50 requests: a mount reading the whole tree
    // outlives many of them.
    registry.require_tokens(50);
    let mut m = TestMount::dirs();
    mount_remote(&mut m, &registry, &[]);
    let at_mount = registry.tokens_issued();
    let diff = crate::harness::diff_against_tree(sample, &m.path("sources"));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert!(
        registry.tokens_issued() > at_mount,
        "tokens issued: {} at mount, {} after reading",
        at_mount,
        registry.tokens_issued()
    );
    assert_eq!(m.status()["errors"], 0);
}
