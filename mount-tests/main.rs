//! Mount tests: a real bundle, really mounted with FUSE (as root), checked
//! with the tools people point at it: diff, find, ls, sqlite3, python3,
//! getfattr. Each test has its own mountpoint and cache, and unmounts when
//! it ends, pass or fail.

#[path = "../tests/common/mod.rs"]
mod common;
mod crash;
#[path = "../tests/distribution_support/mod.rs"]
mod distribution_support;
#[path = "../tests/fake_registry/mod.rs"]
mod fake_registry;
mod harness;
mod hostile;
#[path = "../tests/http_wire/mod.rs"]
mod http_wire;
mod registry;
#[path = "../tests/serve_support/mod.rs"]
mod serve_support;
mod shared_cache;
mod sharing;
mod starvation;
mod users;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use harness::{
    READY_DEADLINE, TestMount, empty_objects, is_mounted, list_files, object_of, run, sample,
    stdout,
};
use mache_cachefs::hash::Hash;

#[test]
fn diff_of_sources_against_the_original_tree_is_clean() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    run(Command::new("diff")
        .arg("-r")
        .arg(&sample.tree)
        .arg(m.path("sources")));
    let status = m.status();
    assert_eq!(status["verification_failures"], 0, "{status:#}");
    assert_eq!(status["errors"], 0, "{status:#}");
}

#[test]
fn find_and_ls_show_exact_sizes_with_the_objects_gone() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    empty_objects(&store);
    let m = TestMount::daemon(&store, &[]);

    assert_eq!(
        list_files(&m.path("sources")),
        sample.files(),
        "find -printf '%P %s' differs"
    );
    let found = stdout(Command::new("find").arg(&m.mnt).args(["-type", "f"]));
    // Every source, its AST view, mache.db, mache.lock.toml, .cachefs/status.
    assert_eq!(
        found.lines().count(),
        2 * sample.files().len() + 3,
        "find -type f"
    );

    let listing = stdout(Command::new("ls").arg("-lR").arg(m.path("sources")));
    let mut sizes = BTreeMap::new();
    let mut dir = String::new();
    for line in listing.lines() {
        if let Some(header) = line.strip_suffix(':') {
            dir = header
                .strip_prefix(m.path("sources").to_str().unwrap())
                .unwrap()
                .trim_start_matches('/')
                .to_string();
        } else if line.starts_with('-') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[0], "-r--r--r--", "{line}");
            let name = fields[8..].join(" ");
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            sizes.insert(path, fields[4].parse::<u64>().unwrap());
        } else if line.starts_with('d') {
            assert!(line.starts_with("dr-xr-xr-x"), "{line}");
        }
    }
    let expected: BTreeMap<String, u64> = sample.files().into_iter().collect();
    assert_eq!(
        sizes, expected,
        "ls -lR sizes differ from the original tree"
    );
    // (Not the root: mache.db cannot be built without the objects.)
    run(Command::new("du")
        .arg("-s")
        .arg(m.path("sources"))
        .arg(m.path("ast")));
    run(Command::new("stat").arg(m.path("sources").join(sample.small_py())));

    let status = m.status();
    assert_eq!(
        status["chunks_fetched"], 0,
        "listing fetched chunks: {status:#}"
    );
    assert_eq!(status["errors"], 0, "{status:#}");
}

#[test]
fn sqlite3_queries_on_mache_db_equal_the_original() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    let db = m.path("mache.db");
    crate::harness::assert_db_answers_equal(sample, &db);
    let python = stdout(Command::new("python3").args([
        "-c",
        "import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); \
         print(c.execute('PRAGMA journal_mode').fetchone()[0], c.execute('SELECT count(*) FROM _source').fetchone()[0])",
    ]).arg(&db));
    assert_eq!(python.trim(), format!("delete {}", sample.files().len()));
    let names: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("-wal") || n.contains("-shm") || n.contains("-journal")),
        "{names:?}"
    );
}

#[test]
fn every_ast_json_parses_and_matches_the_db_rows() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    let script = r#"
import json, os, sqlite3, sys
ast_root, db = sys.argv[1], sys.argv[2]
c = sqlite3.connect('file:' + db + '?mode=ro', uri=True)
sources = {r[0]: r for r in c.execute('SELECT id, path, ifnull(language, "") FROM _source')}
nodes = {}
for r in c.execute('SELECT source_id, node_id, node_kind, start_byte, end_byte, start_row, start_col, end_row, end_col FROM _ast ORDER BY node_id'):
    nodes.setdefault(r[0], []).append(dict(zip(['node_id', 'node_kind', 'start_byte', 'end_byte', 'start_row', 'start_col', 'end_row', 'end_col'], r[1:])))
seen = 0
for dirpath, _, files in os.walk(ast_root):
    for name in files:
        full = os.path.join(dirpath, name)
        with open(full, 'rb') as f:
            raw = f.read()
        doc = json.loads(raw)
        assert list(doc) == ['source_id', 'path', 'language', 'ast_nodes'], (full, list(doc))
        sid = doc['source_id']
        rel = os.path.relpath(full, ast_root)
        assert rel == sources[sid][1] + '.json', (rel, sid)
        assert (doc['path'], doc['language']) == sources[sid][1:], (full, doc['path'], doc['language'])
        assert doc['ast_nodes'] == nodes.get(sid, []), full
        assert raw.endswith(b'}\n')
        seen += 1
assert seen == len(sources), (seen, len(sources))
print(seen)
"#;
    let out = stdout(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(m.path("ast"))
            .arg(&sample.db),
    );
    assert_eq!(out.trim(), sample.files().len().to_string());
}

#[test]
fn getfattr_shows_hashes_kind_root_and_ref() {
    let sample = sample();
    let bundle = sample.bundle();
    let m = TestMount::daemon(&sample.store, &["--ref", "latest"]);
    let get = |path: &Path, name: &str| {
        stdout(
            Command::new("getfattr")
                .args(["--only-values", "-n", name])
                .arg(path),
        )
    };
    for entry in bundle.lockfile.sources.iter().take(50) {
        let file = m.path("sources").join(&entry.path);
        assert_eq!(
            get(&file, "user.mache.chunk_hash"),
            entry.chunk_hash.to_hex(),
            "{}",
            entry.path
        );
        assert_eq!(
            get(&file, "user.mache.input_hash"),
            entry.input_hash.to_hex()
        );
        let original = std::fs::read(sample.tree.join(&entry.path)).unwrap();
        assert_eq!(entry.input_hash, Hash::of(&original));
        assert_eq!(get(&file, "user.mache.kind"), entry.kind);
    }
    assert_eq!(
        get(&m.mnt, "user.mache.root"),
        bundle.lockfile.root.to_hex()
    );
    assert_eq!(get(&m.mnt, "user.mache.ref"), "latest");
    let small = m.path("sources").join(sample.small_py());
    let dump = stdout(Command::new("getfattr").arg("-d").arg(&small));
    for name in [
        "user.mache.chunk_hash=",
        "user.mache.input_hash=",
        "user.mache.kind=",
    ] {
        assert!(dump.contains(name), "{dump}");
    }

    // The size probe (size 0) and a too-small buffer (ERANGE), by hand.
    let path = std::ffi::CString::new(small.as_os_str().as_bytes()).unwrap();
    let name = c"user.mache.chunk_hash";
    // SAFETY: valid C strings; a null buffer with size 0 asks for the size.
    let size = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(size, 64);
    let mut tiny = [0u8; 10];
    // SAFETY: the buffer is valid for its length.
    let r = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            tiny.as_mut_ptr().cast(),
            tiny.len(),
        )
    };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ERANGE))
    );
    let missing = Command::new("getfattr")
        .args(["-n", "user.nope"])
        .arg(&small)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such attribute"));
}

#[test]
fn thirty_two_concurrent_cold_readers_get_identical_bytes_and_one_fetch() {
    let sample = sample();
    let (path, _) = sample
        .files()
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let expected = std::fs::read(sample.tree.join(&path)).unwrap();
    let m = TestMount::daemon(&sample.store, &[]);
    let file = m.path("sources").join(&path);
    let barrier = Arc::new(Barrier::new(32));
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (file, barrier) = (file.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut bytes = Vec::new();
                std::fs::File::open(&file)
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
                bytes
            })
        })
        .collect();
    for reader in readers {
        assert!(
            reader.join().unwrap() == expected,
            "a reader got different bytes for {path}"
        );
    }
    let status = m.status();
    assert_eq!(status["chunks_fetched"], 1, "{status:#}");
    assert_eq!(status["cache"]["misses"], 1, "{status:#}");
}

#[test]
fn a_corrupt_object_is_eio_for_its_file_only() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    let bundle = sample.bundle();
    let victim = bundle
        .lockfile
        .sources
        .iter()
        .find(|e| e.path.ends_with(".py") && !e.path.contains('/'))
        .unwrap();
    let hex = victim.chunk_hash.to_hex();
    let object = object_of(&store, &victim.chunk_hash);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&object, &bytes).unwrap();

    let m = TestMount::daemon(&store, &[]);
    let err = std::fs::read(m.path("sources").join(&victim.path)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    let diff = crate::harness::diff_against_tree(sample, &m.path("sources"));
    let out = String::from_utf8_lossy(&diff.stdout);
    let errs = String::from_utf8_lossy(&diff.stderr);
    assert!(
        out.trim().is_empty(),
        "diff found differences besides the corrupt file:\n{out}"
    );
    let lines: Vec<&str> = errs.lines().collect();
    assert_eq!(lines.len(), 1, "{errs}");
    assert!(
        lines[0].contains(&victim.path) && lines[0].contains("Input/output error"),
        "{errs}"
    );

    let status = m.status();
    assert!(
        status["verification_failures"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    let last = status["last_error"].as_str().unwrap();
    assert!(last.contains(&victim.path) && last.contains(&hex), "{last}");
}

#[test]
fn an_io_error_behind_the_mount_reaches_the_reader_as_eio() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    let small = sample.small_py();
    let victim = sample
        .bundle()
        .lockfile
        .sources
        .into_iter()
        .find(|e| e.path == small)
        .unwrap();
    // Reading this object now fails with EISDIR, an OS error no reader of a
    // regular file expects: the mount must say EIO, as for any store failure.
    let object = object_of(&store, &victim.chunk_hash);
    std::fs::remove_file(&object).unwrap();
    std::fs::create_dir(&object).unwrap();
    let m = TestMount::daemon(&store, &[]);
    let err = std::fs::read(m.path("sources").join(&small)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let last = m.status()["last_error"].as_str().unwrap().to_string();
    assert!(last.contains(&small), "{last}");
}

#[test]
fn ls_and_stat_of_the_root_build_nothing_and_cp_and_sqlite3_read_mache_db_whole() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    run(Command::new("ls").arg("-la").arg(&m.mnt));
    run(Command::new("stat").arg(m.path("mache.db")));
    run(Command::new("find")
        .arg(&m.mnt)
        .args(["-maxdepth", "1", "-size", "+0"]));
    let status = m.status();
    assert_eq!(status["chunks_fetched"], 0, "{status:#}");
    assert_eq!(status["mache_db"]["state"], "absent", "{status:#}");
    // The push recorded the db's size: shown before anything is built.
    let shown = std::fs::metadata(m.path("mache.db")).unwrap().len();

    let copy = m.dir.path().join("copy.db");
    run(Command::new("cp").arg(m.path("mache.db")).arg(&copy));
    let count = |db: &Path| {
        stdout(
            Command::new("sqlite3")
                .arg(db)
                .arg("SELECT count(*) FROM _source"),
        )
        .trim()
        .to_string()
    };
    let expected = sample.files().len().to_string();
    assert_eq!(count(&copy), expected);
    assert_eq!(count(&m.path("mache.db")), expected);
    let size = std::fs::metadata(m.path("mache.db")).unwrap().len();
    assert_eq!(size, std::fs::metadata(&copy).unwrap().len());
    assert!(size > 0);
    assert_eq!(shown, size, "the size shown before the build is the db's");
}

/// The FUSE OPEN requests a mount has served.
fn opens(m: &TestMount) -> u64 {
    m.status()["requests"]["open"]
        .as_u64()
        .expect("an open count")
}

/// Reads `files` of the mount's `sources/` twice with `cat`.
fn cat_twice(m: &TestMount, files: &[(String, u64)]) {
    for _ in 0..2 {
        let mut cat = Command::new("cat");
        cat.args(files.iter().map(|(path, _)| m.path("sources").join(path)));
        let out = run(&mut cat);
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        assert_eq!(out.stdout.len() as u64, total);
    }
}

#[test]
fn opens_are_stateless_from_the_first_one_when_the_push_recorded_mache_db() {
    let sample = sample();
    let files: Vec<_> = sample.files().into_iter().take(50).collect();
    let m = TestMount::daemon(&sample.store, &[]);
    cat_twice(&m, &files);
    assert!(
        opens(&m) <= 1,
        "the kernel asks once, then opens without us: {:#}",
        m.status()
    );
    assert_eq!(m.status()["mache_db"]["state"], "absent");
    let count = stdout(
        Command::new("sqlite3")
            .arg(m.path("mache.db"))
            .arg("SELECT count(*) FROM _source"),
    );
    assert_eq!(count.trim(), sample.files().len().to_string());
    assert_eq!(m.status()["mache_db"]["state"], "ready");
}

#[test]
fn without_a_record_opens_are_stateful_until_mache_db_is_built() {
    let sample = sample();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(dir.path());
    // As pushed by an older version: a sizes index without the db record.
    for entry in std::fs::read_dir(store.join("lockfiles")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".sizes.json") {
            let mut index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert!(index.as_object_mut().unwrap().remove("db").is_some());
            std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
        }
    }
    let files: Vec<_> = sample.files().into_iter().take(50).collect();
    let m = TestMount::daemon(&store, &[]);
    assert_eq!(std::fs::metadata(m.path("mache.db")).unwrap().len(), 0);
    cat_twice(&m, &files);
    assert!(
        opens(&m) >= 100,
        "one open per cat of a file: {:#}",
        m.status()
    );
    let size = std::fs::metadata(m.path("mache.db")).unwrap().len();
    assert_eq!(size, 0, "a stat builds nothing");
    run(Command::new("sqlite3")
        .arg(m.path("mache.db"))
        .arg("SELECT count(*) FROM _source"));
    assert!(std::fs::metadata(m.path("mache.db")).unwrap().len() > 0);
    let before = opens(&m);
    cat_twice(&m, &files);
    assert!(
        opens(&m) <= before + 1,
        "stateless once built: {:#}",
        m.status()
    );
}

#[test]
fn writes_fail_with_erofs() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    let name = sample.small_py();
    let file = m.path("sources").join(&name);
    let erofs = |result: std::io::Result<()>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    erofs(std::fs::write(m.path("new.txt"), b"x"), "create");
    erofs(std::fs::write(&file, b"x"), "overwrite");
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .map(drop),
        "append",
    );
    erofs(std::fs::create_dir(m.path("sources/dir")), "mkdir");
    erofs(std::fs::remove_file(&file), "unlink");
    erofs(std::fs::remove_dir(m.path("ast")), "rmdir");
    erofs(
        std::fs::rename(&file, m.path("sources/renamed.py")),
        "rename",
    );
    erofs(
        std::os::unix::fs::symlink(&name, m.path("sources/link")),
        "symlink",
    );
    erofs(std::fs::hard_link(&file, m.path("sources/hard")), "link");
    use std::os::unix::fs::PermissionsExt;
    erofs(
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)),
        "chmod",
    );
    let path = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.x".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EROFS))
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(sample.tree.join(&name)).unwrap()
    );
}

#[test]
fn dot_dot_paths_in_a_crafted_bundle_never_leave_sources() {
    harness::require_environment();
    let mut m = TestMount::dirs();
    let work = m.dir.path().to_path_buf();
    let db = work.join("crafted.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB);",
    )
    .unwrap();
    let rows = [
        "../escape.txt",
        "../../etc/cachefs-escape",
        "a/../../up.txt",
        "/abs.txt",
        "./dot.txt",
        "a//b.txt",
        "ok/fine.txt",
    ];
    for path in rows {
        conn.execute(
            "INSERT INTO _source(id, path, language, content) VALUES (?1, ?1, 'text', ?2)",
            rusqlite::params![path, format!("content of {path}\n").into_bytes()],
        )
        .unwrap();
    }
    drop(conn);
    let store = work.join("store");
    run(m
        .command()
        .args(["--quiet", "push", "--db"])
        .arg(&db)
        .arg(&store));
    m.mount_daemon(&store, &[]);

    let everything =
        stdout(
            Command::new("find")
                .arg(&m.mnt)
                .args(["-mindepth", "1", "-printf", "%P\\n"]),
        );
    let mut listed: Vec<&str> = everything
        .lines()
        .filter(|l| l.starts_with("sources"))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["sources", "sources/ok", "sources/ok/fine.txt"],
        "{everything}"
    );
    assert!(
        !everything
            .lines()
            .any(|l| l.contains("escape") || l.contains("up.txt") || l.contains("abs")),
        "{everything}"
    );
    for outside in [
        work.join("escape.txt"),
        work.join("up.txt"),
        m.mnt.join("escape.txt"),
        m.cache_home.join("escape.txt"),
    ] {
        assert!(!outside.exists(), "{} exists", outside.display());
    }
    assert!(!Path::new("/etc/cachefs-escape").exists());
    assert_eq!(
        std::fs::read(m.path("sources/ok/fine.txt")).unwrap(),
        b"content of ok/fine.txt\n"
    );
    for name in ["..", "../escape.txt"] {
        let err = std::fs::metadata(m.path("sources").join("a").join(name));
        assert!(err.is_err());
    }
    let count = stdout(
        Command::new("sqlite3")
            .arg(m.path("mache.db"))
            .arg("SELECT count(*) FROM _source"),
    );
    assert_eq!(
        count.trim(),
        rows.len().to_string(),
        "every row is still in mache.db"
    );
    let status = m.status();
    assert_eq!(status["tree"]["unsafe_paths"], 6, "{status:#}");
}

#[test]
fn sigterm_unmounts_and_the_mountpoint_is_empty_again() {
    let sample = sample();
    let mut m = TestMount::foreground(&sample.store);
    assert!(is_mounted(&m.mnt));
    let child = m.foreground.as_mut().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + READY_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the mount did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status} after SIGTERM: {stderr}");
    assert!(!is_mounted(&m.mnt), "still mounted after SIGTERM");
    assert_eq!(
        std::fs::read_dir(&m.mnt).unwrap().count(),
        0,
        "the mountpoint is not empty"
    );
    m.foreground = None;
}

#[test]
fn sigterm_with_a_file_open_detaches_at_once() {
    let sample = sample();
    let mut m = TestMount::foreground(&sample.store);
    let open = std::fs::File::open(m.path("sources").join(sample.small_py())).unwrap();
    let child = m.foreground.as_mut().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + READY_DEADLINE;
    while is_mounted(&m.mnt) {
        assert!(Instant::now() < deadline, "still mounted after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 0);
    drop(open);
    let child = m.foreground.as_mut().unwrap();
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the mount did not exit once its last file was closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_second_mount_reuses_the_cached_mache_db() {
    let sample = sample();
    let mut m = TestMount::daemon(&sample.store, &[]);
    let first = std::fs::read(m.path("mache.db")).unwrap();
    assert_eq!(m.status()["mache_db"]["reused"], false);
    m.unmount();
    let built: Vec<_> = std::fs::read_dir(m.db_cache_dir())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(built.len(), 1, "one db in the cache: {built:?}");

    // Without any object, the db can only come from the cache.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    empty_objects(&store);
    m.mount_daemon(&store, &[]);
    let second = std::fs::read(m.path("mache.db")).unwrap();
    assert!(second == first, "the reused db differs");
    let status = m.status();
    assert_eq!(status["mache_db"]["reused"], true, "{status:#}");
    assert_eq!(status["chunks_fetched"], 0, "{status:#}");
}

#[test]
fn unmount_clears_a_mount_whose_daemon_died() {
    let sample = sample();
    let mut m = TestMount::daemon(&sample.store, &[]);
    let pid = m.daemon.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    harness::wait_for_exit(pid);
    let err = std::fs::metadata(m.path("sources")).unwrap_err();
    // ENOTCONN, or ECONNABORTED when a request was caught in the abort.
    let dead = [Some(libc::ENOTCONN), Some(libc::ECONNABORTED)];
    assert!(dead.contains(&err.raw_os_error()), "{err}");
    let again = m
        .command()
        .arg("mount")
        .arg("--store")
        .arg(&sample.store)
        .arg(&m.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && text.contains("not connected"),
        "{text}"
    );
    run(m.command().arg("unmount").arg(&m.mnt));
    assert!(!is_mounted(&m.mnt));
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 0);
}

#[test]
fn mounting_fails_clearly_on_a_busy_or_non_empty_mountpoint_or_a_missing_ref() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    let try_mount = |mnt: &Path, extra: &[&str]| {
        let out = m
            .command()
            .arg("mount")
            .arg("--store")
            .arg(&sample.store)
            .args(extra)
            .arg(mnt)
            .output()
            .unwrap();
        assert!(!out.status.success());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, busy) = try_mount(&m.mnt, &[]);
    assert!(busy.contains("busy"), "{busy}");
    let full = m.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let (_, nonempty) = try_mount(&full, &["--daemon"]);
    assert!(nonempty.contains("not empty"), "{nonempty}");
    let empty = m.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, missing) = try_mount(&empty, &["--ref", "nope", "--daemon"]);
    assert!(missing.contains("no ref \"nope\""), "{missing}");
    assert_eq!(code, Some(5));
    assert!(!is_mounted(&empty));
    let err = std::fs::metadata(m.path("sources/missing.py")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn a_store_written_by_go_mache_mounts_and_reads_whole() {
    // mache writes objects/ and mache.lock.bin only: no refs, no sizes index,
    // so sizes are learned from the chunks on first stat.
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    for ours in ["refs", "lockfiles", "pushed", "tmp"] {
        let _ = std::fs::remove_dir_all(store.join(ours));
    }
    std::fs::remove_file(store.join("mache.lock.toml")).unwrap();
    let m = TestMount::daemon(&store, &[]);
    let before = m.status();
    assert_eq!(
        before["chunks_fetched"], 0,
        "mounting fetched chunks: {before:#}"
    );
    assert_eq!(
        list_files(&m.path("sources")),
        sample.files(),
        "sizes learned from the chunks differ from the original tree"
    );
    run(Command::new("diff")
        .arg("-r")
        .arg(&sample.tree)
        .arg(m.path("sources")));
    let after = m.status();
    assert!(
        after["chunks_fetched"].as_u64().unwrap() > 0,
        "stat without a sizes index must fetch: {after:#}"
    );
    assert_eq!(after["verification_failures"], 0, "{after:#}");
    assert_eq!(after["errors"], 0, "{after:#}");
}

#[test]
fn prefetch_warms_every_chunk_and_builds_mache_db() {
    let sample = sample();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = sample.copy_store(scratch.path());
    let m = TestMount::daemon(&store, &["--prefetch"]);
    let status = m.wait_for_prefetch();
    let distinct = sample.bundle().lockfile.distinct_chunks() as u64;
    assert_eq!(status["prefetch"]["chunks_total"], distinct, "{status:#}");
    assert_eq!(status["prefetch"]["chunks_warmed"], distinct, "{status:#}");
    assert_eq!(status["errors"], 0, "{status:#}");
    // Everything is warm: with the store's objects gone, every file and the
    // db still read whole.
    empty_objects(&store);
    run(Command::new("diff")
        .arg("-r")
        .arg(&sample.tree)
        .arg(m.path("sources")));
    let count = stdout(
        Command::new("sqlite3")
            .arg(m.path("mache.db"))
            .arg("select count(*) from _source"),
    );
    assert_eq!(count.trim(), sample.files().len().to_string());
    let after = m.status();
    assert_eq!(after["errors"], 0, "reads after prefetch failed: {after:#}");
}

#[test]
fn mounting_without_dev_fuse_fails_clearly() {
    // A private mount namespace whose /dev is an empty tmpfs: no /dev/fuse.
    let sample = sample();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = "mount -t tmpfs tmpfs /dev && exec \"$0\" mount --store \"$1\" \"$2\"";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(harness::BIN)
        .arg(&sample.store)
        .arg(&mnt)
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("unshare(1) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("no /dev/fuse"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn status_always_reads_as_whole_json_while_counters_change() {
    // Regression: counters changing between a stat and a read once made
    // readers see a cut or NUL-padded document.
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    let files = sample.files();
    let status_path = m.path(".cachefs/status");
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let files = &files;
            let sources = m.path("sources");
            scope.spawn(move || {
                for (path, _) in files.iter().skip(worker).step_by(2) {
                    std::fs::read(sources.join(path)).unwrap();
                }
            });
        }
        for _ in 0..4 {
            let status_path = &status_path;
            scope.spawn(move || {
                for _ in 0..300 {
                    let bytes = std::fs::read(status_path).unwrap();
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        panic!(
                            "status is not JSON ({e}): {:?}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                }
            });
        }
    });
}
