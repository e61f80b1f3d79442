//! Helpers shared by the CLI integration tests: temp dirs, dbs built from
//! rows, running the real binary, and reading rows back for comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::{Connection, params};

pub mod hostile;

/// The binary under test.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mache-cachefs"));
    // Keep tests away from the user's real config and store.
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/config")
        .env("XDG_CACHE_HOME", "/nonexistent/cache")
        .env_remove("MACHE_CACHEFS_CONFIG")
        .env_remove("MACHE_CACHEFS_STORE")
        .env("SOURCE_DATE_EPOCH", "1748345600");
    cmd
}

/// Runs the binary with `args`; returns the output (never panics on failure).
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

/// Runs and asserts success, returning stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs and asserts failure with `code` and a one-line error containing `needle`.
pub fn run_fails(args: &[&str], code: i32, needle: &str) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: expected one error line, got: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in: {stderr}"
    );
    stderr
}

/// Asserts that a finished command failed with `code` and one error line
/// containing `needle`; returns its stderr.
pub fn assert_fails(out: &Output, code: i32, needle: &str) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "{needle:?} not in: {text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("error")).count(),
        1,
        "one error line: {text}"
    );
    text
}

/// Asserts that a finished command succeeded and parses its stdout as JSON.
pub fn json_of(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A source row as the tests write it.
pub struct Src<'a> {
    pub id: &'a str,
    pub path: Option<&'a str>,
    pub language: Option<&'a str>,
    /// `None` writes SQL NULL (read from disk at `path`).
    pub content: Option<&'a [u8]>,
}

impl<'a> Src<'a> {
    /// A source whose path is its id, with inline content.
    pub fn at(id: &'a str, language: Option<&'a str>, content: &'a [u8]) -> Src<'a> {
        Src {
            id,
            path: Some(id),
            language,
            content: Some(content),
        }
    }
}

/// An `_ast` row as the tests write it.
pub type Node<'a> = (&'a str, &'a str, &'a str, [i64; 6]);

/// Creates a mache db at `path` with `sources` and, when `ast` is `Some`,
/// an `_ast` table with those rows.
pub fn make_db(path: &Path, sources: &[Src], ast: Option<&[Node]>) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB);",
    )
    .unwrap();
    for src in sources {
        conn.execute(
            "INSERT INTO _source VALUES (?1, ?2, ?3, ?4)",
            params![src.id, src.path, src.language, src.content],
        )
        .unwrap();
    }
    if let Some(nodes) = ast {
        conn.execute_batch(
            "CREATE TABLE _ast(node_id TEXT PRIMARY KEY, source_id TEXT NOT NULL, \
             node_kind TEXT NOT NULL, start_byte INTEGER, end_byte INTEGER, start_row INTEGER, \
             start_col INTEGER, end_row INTEGER, end_col INTEGER);",
        )
        .unwrap();
        for (node_id, source_id, kind, n) in nodes {
            conn.execute(
                "INSERT INTO _ast VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![node_id, source_id, kind, n[0], n[1], n[2], n[3], n[4], n[5]],
            )
            .unwrap();
        }
    }
}

/// A synthetic db of `n` sources (`scripts/make-sample-db.py --synthetic`)
/// in `dir`.
pub fn synthetic_db(dir: &Path, n: usize, seed: u32) -> PathBuf {
    let db = dir.join(format!("synth-{n}-{seed}.db"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-sample-db.py");
    let made = Command::new("python3")
        .arg(&script)
        .args(["--synthetic", &n.to_string(), "--seed", &seed.to_string()])
        .arg(&db)
        .output()
        .expect("python3 runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    db
}

/// Every `_source` row, ordered by id, with content as bytes.
pub type SourceDump = Vec<(String, Option<String>, Option<String>, Vec<u8>)>;

pub fn dump_sources(db: &Path) -> SourceDump {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, path, language, content FROM _source ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let content: Option<Vec<u8>> = r.get(3)?;
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, content.unwrap_or_default()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every `_ast` row: node_id, source_id, node_kind and the six positions.
pub type AstDump = Vec<(String, String, String, [i64; 6])>;

/// Every `_ast` row, ordered by node_id; `None` if there is no `_ast` table.
pub fn dump_ast(db: &Path) -> Option<AstDump> {
    let conn = Connection::open(db).unwrap();
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = '_ast'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return None;
    }
    let mut stmt = conn
        .prepare(
            "SELECT node_id, source_id, node_kind, start_byte, end_byte, start_row, start_col, \
             end_row, end_col FROM _ast ORDER BY node_id",
        )
        .unwrap();
    Some(
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                [
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ],
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect(),
    )
}

/// Every file under `dir`, relative, sorted (to prove nothing was left behind).
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A db of one source pushed into `dir/store`; returns (db, store).
pub fn push_one_source(dir: &Path, id: &str, content: &[u8]) -> (PathBuf, PathBuf) {
    let db = dir.join("mache.db");
    let source = Src::at(id, Some("go"), content);
    make_db(&db, &[source], None);
    let store = dir.join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    (db, store)
}

/// The build-cache/v1 conformance vectors (SPEC §7).
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-cache-v1")
}

/// One file of the conformance vectors.
pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).unwrap()
}

/// The vectors' two chunks, in the order of their files.
pub fn vector_chunks() -> [Vec<u8>; 2] {
    [vector("chunk-001.bin"), vector("chunk-002.bin")]
}

/// Writes a store as the Go mache leaves one at `store`: `mache.lock.bin`
/// and each blob under `objects/`, named by its BLAKE3 (SPEC §5).
pub fn go_store(store: &Path, lockfile: &[u8], blobs: &[Vec<u8>]) {
    std::fs::create_dir_all(store).unwrap();
    std::fs::write(store.join("mache.lock.bin"), lockfile).unwrap();
    for bytes in blobs {
        let hex = blake3::hash(bytes).to_hex().to_string();
        let path = store.join("objects").join(&hex[..2]).join(&hex[2..]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// The conformance vectors' bundle as a store the Go mache wrote.
pub fn vectors_store(store: &Path) {
    go_store(store, &vector("lockfile-config.bin"), &vector_chunks());
}

/// A tmpfs of `size` mounted (as root) at `dir` with `options`; unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests mount a tmpfs and must run as root"
        );
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", s(dir)])
            .status()
            .expect("mount(8) is installed");
        assert!(status.success(), "mount -t tmpfs -o {options} failed");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The tag names a `refs --json` report lists, in its order.
pub fn ref_names(refs: &serde_json::Value) -> Vec<String> {
    refs["refs"]
        .as_array()
        .expect("a refs report")
        .iter()
        .map(|r| r["name"].as_str().expect("a ref name").to_string())
        .collect()
}

/// The binary with `args` against the registry at `url`, scope `scope`,
/// with `dir`'s own disk cache and docker config.
pub fn run_remote(dir: &Path, url: &str, scope: &str, args: &[&str]) -> Output {
    bin()
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("DOCKER_CONFIG", dir.join("docker"))
        .args(args)
        .args(["--remote", url, "--scope", scope])
        .output()
        .unwrap()
}

/// A small seeded generator (SplitMix64): a test's random choices are the
/// same on every run, and a failure names the seed that made them.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}
