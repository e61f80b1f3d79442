//! The mount tests' harness: checks for what they need, the shared sample
//! bundle, per-test mounts that always unmount, and small helpers.
//!
//! The sample is a copy of the Python standard library of the `python3` on
//! PATH (every machine that runs these tests has one): its small `.py` files
//! (which `make-sample-db.py` parses into `_ast` rows) and its other files
//! (data, text, binaries), about two thousand real files. It is built and
//! pushed once per test run; tests that damage a store work on a copy.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mache_cachefs::store::{Bundle, LocalStore};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mache-cachefs");
/// How long a mount may take to answer.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// `.py` files above this size are left out of the sample (their `_ast`
/// rows would dominate the run time); other files up to `MAX_FILE` are kept.
const MAX_PY: u64 = 16 * 1024;
const MAX_FILE: u64 = 512 * 1024;

/// Fails loudly unless the machine can run mount tests.
pub fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mount tests must run as root (they really mount)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module or run with --device /dev/fuse"
    );
    require_tools(&[
        "sqlite3", "getfattr", "python3", "diff", "tar", "find", "ls",
    ]);
}

/// Fails loudly unless every one of `tools` is on PATH.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "the mount tests need `{tool}` on PATH (scripts/setup.sh installs it)"
        );
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

/// The shared sample: its original tree, its db and a store holding it.
pub struct Sample {
    pub dir: PathBuf,
    pub tree: PathBuf,
    pub db: PathBuf,
    pub store: PathBuf,
}

impl Sample {
    /// The pushed bundle, as the mount will see it.
    pub fn bundle(&self) -> Bundle {
        LocalStore::open(&self.store)
            .unwrap()
            .resolve("latest")
            .unwrap()
    }

    /// A copy of the store that a test may damage.
    pub fn copy_store(&self, to: &Path) -> PathBuf {
        let dest = to.join("store");
        run(Command::new("cp").arg("-a").arg(&self.store).arg(&dest));
        dest
    }

    /// A small top-level `.py` file of the sample (relative path).
    pub fn small_py(&self) -> String {
        self.files()
            .into_iter()
            .find(|(path, size)| path.ends_with(".py") && !path.contains('/') && *size > 1000)
            .expect("a top-level .py file in the sample")
            .0
    }

    /// Relative paths and sizes of every file of the original tree, sorted.
    pub fn files(&self) -> Vec<(String, u64)> {
        list_files(&self.tree)
    }
}

/// `find` arguments that list the regular files below its root as
/// [`parse_listing`] reads them.
pub const FIND_FILES: [&str; 4] = ["-type", "f", "-printf", "%P\\t%s\\n"];

/// Relative paths and sizes of every regular file below `root`, sorted.
pub fn list_files(root: &Path) -> Vec<(String, u64)> {
    parse_listing(&stdout(Command::new("find").arg(root).args(FIND_FILES)))
}

/// The relative paths and sizes a `find` with [`FIND_FILES`] printed, sorted.
pub fn parse_listing(out: &str) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = out
        .lines()
        .map(|line| {
            let (path, size) = line.rsplit_once('\t').expect("find output");
            (path.to_string(), size.parse().expect("size"))
        })
        .collect();
    files.sort();
    files
}

/// The sample, built on first use.
pub fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        require_environment();
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        sweep_old_fixtures(base);
        let dir = base.join(format!("mount-fixture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tree = dir.join("tree");
        let stdlib = stdout(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ]));
        let copied = copy_sample_tree(Path::new(stdlib.trim()), &tree);
        assert!(copied >= 1000, "only {copied} files found under {stdlib}");
        let db = dir.join("sample.db");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-sample-db.py");
        run(Command::new("python3").arg(&script).arg(&tree).arg(&db));
        let store = dir.join("store");
        run(Command::new(BIN)
            .args(["--quiet", "push", "--db"])
            .arg(&db)
            .arg(&store)
            .env("XDG_CONFIG_HOME", &dir));
        Sample {
            dir,
            tree,
            db,
            store,
        }
    })
}

/// Removes fixtures left by earlier runs whose process is gone.
fn sweep_old_fixtures(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("mount-fixture-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the sample's files from `src` into `dest`; returns how many.
fn copy_sample_tree(src: &Path, dest: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                let skip = ["site-packages", "__pycache__", "dist-packages"]
                    .iter()
                    .any(|s| name == OsStr::new(s))
                    || name.to_string_lossy().starts_with("config-");
                if !skip {
                    stack.push(path);
                }
                continue;
            }
            let is_py = path.extension() == Some(OsStr::new("py"));
            let limit = if is_py { MAX_PY } else { MAX_FILE };
            if !meta.is_file() || meta.size() > limit || name.to_str().is_none() {
                continue;
            }
            let target = dest.join(path.strip_prefix(src).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&path, &target).unwrap();
            count += 1;
        }
    }
    count
}

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    mache_cachefs::fs::mount::is_mount_point(path)
}

/// A mount made for one test, in its own directories; always unmounted
/// (and its daemon gone) when dropped.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub cache_home: PathBuf,
    pub daemon: Option<u32>,
    pub foreground: Option<Child>,
}

impl TestMount {
    /// Fresh directories (mountpoint and cache) without mounting yet.
    pub fn dirs() -> TestMount {
        TestMount::dirs_in(Path::new(env!("CARGO_TARGET_TMPDIR")))
    }

    /// Fresh directories below `base` without mounting yet.
    pub fn dirs_in(base: &Path) -> TestMount {
        let dir = tempfile::Builder::new()
            .prefix("mount-test-")
            .tempdir_in(base)
            .unwrap();
        let mnt = dir.path().join("mnt");
        let cache_home = dir.path().join("cache");
        std::fs::create_dir(&mnt).unwrap();
        TestMount {
            dir,
            mnt,
            cache_home,
            daemon: None,
            foreground: None,
        }
    }

    /// A `mache-cachefs` command with this test's config and cache dirs.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("XDG_CACHE_HOME", &self.cache_home)
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env_remove("MACHE_CACHEFS_CONFIG")
            .env_remove("MACHE_CACHEFS_STORE");
        cmd
    }

    /// Mounts `store` with `--daemon` (plus `extra` flags).
    pub fn daemon(store: &Path, extra: &[&str]) -> TestMount {
        let mut m = TestMount::dirs();
        m.mount_daemon(store, extra);
        m
    }

    /// Mounts `store` at this mountpoint with `--daemon`; returns once it
    /// answers (the daemon mode guarantees it).
    pub fn mount_daemon(&mut self, store: &Path, extra: &[&str]) {
        let store = store.to_str().expect("a UTF-8 store path");
        // `mount STORE … MOUNTPOINT`: the shape the README shows.
        self.mount_daemon_from(&[store], extra);
    }

    /// Mounts the bundle `source` names (`STORE`, `--store DIR` or
    /// `--remote URL --scope S`) with `--daemon`; returns once it answers, with what the
    /// command printed on stderr.
    pub fn mount_daemon_from(&mut self, source: &[&str], extra: &[&str]) -> String {
        let output = self
            .command()
            .arg("mount")
            .args(source)
            .arg("--daemon")
            .args(extra)
            .arg(&self.mnt)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "mount --daemon failed: {stderr}");
        self.daemon = daemon_pid(&stderr);
        assert!(self.daemon.is_some(), "no daemon pid in {stderr:?}");
        assert!(
            is_mounted(&self.mnt),
            "{} is not mounted after mount --daemon",
            self.mnt.display()
        );
        stderr
    }

    /// Mounts `store` in the foreground as a child process and polls until
    /// the mount answers.
    pub fn foreground(store: &Path) -> TestMount {
        TestMount::foreground_with_stderr(store, Stdio::piped())
    }

    /// [`foreground`](Self::foreground), its stderr going to `stderr`.
    pub fn foreground_with_stderr(store: &Path, stderr: Stdio) -> TestMount {
        let mut m = TestMount::dirs();
        let child = m
            .command()
            .arg("mount")
            .arg("--store")
            .arg(store)
            .arg(&m.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        m.foreground = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        while !m.mnt.join("sources").is_dir() {
            if let Some(status) = m.foreground.as_mut().unwrap().try_wait().unwrap() {
                panic!("the foreground mount exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the mount did not answer within {READY_DEADLINE:?}"
            );
            std::thread::yield_now();
        }
        m
    }

    /// `<mnt>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The parsed `.cachefs/status`.
    pub fn status(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.path(".cachefs/status")).expect("reading .cachefs/status");
        serde_json::from_slice(&bytes).expect("status is JSON")
    }

    /// Polls the status until `--prefetch` has finished and `mache.db` is
    /// built; returns that status.
    pub fn wait_for_prefetch(&self) -> serde_json::Value {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let status = self.status();
            if status["prefetch"]["finished"] == true && status["mache_db"]["state"] == "ready" {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "prefetch did not finish: {status:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Where this test's mount keeps synthesized dbs.
    pub fn db_cache_dir(&self) -> PathBuf {
        self.cache_home.join("mache-cachefs/cache/dbs")
    }

    /// Unmounts (with the CLI) and waits for the daemon to exit.
    pub fn unmount(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = self.command().arg("unmount").arg(&self.mnt).output();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(pid) = self.daemon.take() {
            wait_for_exit(pid);
        }
        if let Some(mut child) = self.foreground.take() {
            let deadline = Instant::now() + READY_DEADLINE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The daemon's pid in what `mount --daemon` printed ("daemon pid N").
pub fn daemon_pid(stderr: &str) -> Option<u32> {
    stderr
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
}

/// Waits (bounded) for process `pid` to go away; kills it if it lingers.
/// Returns whether it went away by itself.
pub fn wait_for_exit(pid: u32) -> bool {
    let deadline = Instant::now() + READY_DEADLINE;
    while is_alive(pid) {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Polls `done` until it holds; panics naming `what` after [`READY_DEADLINE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {READY_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` runs; one that exited but was not reaped yet (a
/// zombie) counts as gone.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

/// `diff -r` of the sample's tree against `mounted` (a `sources/` directory).
pub fn diff_against_tree(sample: &Sample, mounted: &Path) -> Output {
    Command::new("diff")
        .arg("-r")
        .arg(&sample.tree)
        .arg(mounted)
        .output()
        .unwrap()
}

/// Where a store keeps object `hash`.
pub fn object_of(store: &Path, hash: &mache_cachefs::Hash) -> PathBuf {
    let hex = hash.to_hex();
    store.join("objects").join(&hex[..2]).join(&hex[2..])
}

/// Removes every object of a store (its lockfiles and sizes stay).
pub fn empty_objects(store: &Path) {
    let objects = store.join("objects");
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::create_dir(&objects).unwrap();
}

/// Asserts that `sqlite3` gives the same answers on `db` (a mount's
/// `mache.db`) as on the sample's original db: counts, every row's hash,
/// per-language sums.
pub fn assert_db_answers_equal(sample: &Sample, db: &Path) {
    // The AST chunk format writes a NULL language as "" (SPEC §3), so the
    // comparison reads NULL and "" alike.
    let queries = [
        "SELECT count(*) FROM _source",
        "SELECT count(*) FROM _ast",
        "SELECT hex(sha3_query('SELECT id, path, ifnull(language, ''''), content FROM _source ORDER BY id'))",
        "SELECT hex(sha3_query('SELECT node_id, source_id, node_kind, start_byte, end_byte, start_row, start_col, end_row, end_col FROM _ast ORDER BY node_id'))",
        "SELECT language, count(*), sum(length(content)) FROM _source GROUP BY ifnull(language, '') ORDER BY 1",
    ];
    for sql in queries {
        let sql = sql.replace(
            "SELECT language, count",
            "SELECT ifnull(language, ''), count",
        );
        let original = stdout(
            Command::new("sqlite3")
                .arg("-readonly")
                .arg(&sample.db)
                .arg(&sql),
        );
        let mounted = stdout(Command::new("sqlite3").arg(db).arg(&sql));
        assert_eq!(mounted, original, "{sql}");
    }
}
