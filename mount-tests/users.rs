//! Mounts made by a user other than root (the one `sharing` creates), run
//! with `runuser` and read with that user's tools: such a user mounts and
//! unmounts through the setuid `fusermount3`. With `/dev/fuse` open to all
//! (mode 0666) or to a group of the user's (0660) it works; with the device
//! closed to the user (0600) it cannot (`fusermount3` opens the device as
//! the calling user too) and the user gets one line saying so;
//! `--allow-other` needs `user_allow_other` in `/etc/fuse.conf`.
//!
//! The device's mode and `/etc/fuse.conf` are the whole machine's: these
//! tests take turns ([`serial`]) and put both back when they end, pass or
//! fail. Nothing else in the suite depends on them (root mounts whatever
//! the mode).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use mache_cachefs::fs::mount::{MountEntry, mount_entry};

use crate::harness::{
    BIN, FIND_FILES, Sample, TestMount, daemon_pid, is_alive, is_mounted, parse_listing,
    require_tools, run, sample, stdout, wait_for_exit, wait_until,
};
use crate::sharing::{OTHER_USER, other_user};

const DEV_FUSE: &str = "/dev/fuse";
const FUSE_CONF: &str = "/etc/fuse.conf";

/// Held by each test here for its whole run: one at a time changes the
/// device and fuse.conf.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A test's turn: the device has the mode it asked for until the turn
/// ends, and no other test here runs meanwhile.
struct Turn {
    _device: DeviceMode,
    _serial: MutexGuard<'static, ()>,
}

/// Waits for this test's turn, then gives `/dev/fuse` `mode` (and group
/// `gid`, if given) for it.
fn turn(mode: u32, gid: Option<u32>) -> Turn {
    let serial = serial();
    Turn {
        _device: DeviceMode::set(mode, gid),
        _serial: serial,
    }
}

/// The device's group and mode as they were, put back on drop.
struct DeviceMode {
    gid: u32,
    mode: u32,
}

impl DeviceMode {
    /// Gives `/dev/fuse` `mode` (and group `gid`, if given) until dropped.
    fn set(mode: u32, gid: Option<u32>) -> DeviceMode {
        let meta = std::fs::metadata(DEV_FUSE).expect("/dev/fuse");
        let saved = DeviceMode {
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        };
        std::os::unix::fs::chown(DEV_FUSE, None, Some(gid.unwrap_or(saved.gid))).unwrap();
        std::fs::set_permissions(DEV_FUSE, std::fs::Permissions::from_mode(mode)).unwrap();
        saved
    }
}

impl Drop for DeviceMode {
    fn drop(&mut self) {
        let _ = std::os::unix::fs::chown(DEV_FUSE, None, Some(self.gid));
        let _ = std::fs::set_permissions(DEV_FUSE, std::fs::Permissions::from_mode(self.mode));
    }
}

/// `/etc/fuse.conf` as it was (or its absence), put back on drop.
struct FuseConf(Option<Vec<u8>>);

impl FuseConf {
    /// Writes `text` to `/etc/fuse.conf` until dropped.
    fn set(text: &str) -> FuseConf {
        let saved = match std::fs::read(FUSE_CONF) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("reading {FUSE_CONF}: {e}"),
        };
        std::fs::write(FUSE_CONF, text).unwrap();
        FuseConf(saved)
    }
}

impl Drop for FuseConf {
    fn drop(&mut self) {
        let _ = match &self.0 {
            Some(bytes) => std::fs::write(FUSE_CONF, bytes),
            None => std::fs::remove_file(FUSE_CONF),
        };
    }
}

/// The test user, with a directory of its own under the system's temp dir
/// (which every user can reach, wherever the build is): its home, a copy of
/// the binary and of the sample's store, and a mountpoint it owns. Its
/// mount is cleared on drop, as root, if the test did not.
struct User {
    uid: u32,
    gid: u32,
    mount: TestMount,
    home: PathBuf,
    bin: PathBuf,
    store: PathBuf,
}

impl User {
    fn new(sample: &Sample) -> User {
        require_tools(&[
            "useradd",
            "runuser",
            "fusermount3",
            "env",
            "cat",
            "find",
            "grep",
            "stat",
            "sqlite3",
        ]);
        let (uid, gid) = other_user();
        let mount = TestMount::dirs_in(&std::env::temp_dir());
        let dir = mount.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The build's directory may be closed to other users.
        let bin = dir.join("mache-cachefs");
        std::fs::copy(BIN, &bin).unwrap();
        let store = sample.copy_store(dir);
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&store));
        let home = dir.join("home");
        std::fs::create_dir(&home).unwrap();
        for path in [&home, &mount.mnt] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
        User {
            uid,
            gid,
            mount,
            home,
            bin,
            store,
        }
    }

    /// `program` run as the user (`runuser`), with only its own home and
    /// XDG dirs in its environment.
    fn run_as(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", OTHER_USER, "--", "env", "-i"])
            .arg(format!("PATH={}", std::env::var("PATH").unwrap()))
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!(
                "XDG_CACHE_HOME={}",
                self.home.join("cache").display()
            ))
            .arg(format!(
                "XDG_CONFIG_HOME={}",
                self.home.join("config").display()
            ))
            .arg(program)
            .current_dir(&self.home);
        cmd
    }

    /// `mache-cachefs` as the user.
    fn cachefs(&self) -> Command {
        self.run_as(&self.bin)
    }

    fn mnt(&self) -> &Path {
        &self.mount.mnt
    }

    /// `<mnt>/sources/<rel>`.
    fn source(&self, rel: &str) -> PathBuf {
        self.mnt().join("sources").join(rel)
    }

    /// `mount --daemon` of the user's store copy, with `extra` flags.
    fn mount_command(&self, extra: &[&str]) -> Output {
        self.cachefs()
            .arg("mount")
            .arg("--daemon")
            .args(extra)
            .arg(&self.store)
            .arg(self.mnt())
            .output()
            .unwrap()
    }

    /// Mounts (see [`User::mount_command`]); returns the mount's entry in
    /// the mount table.
    fn mount(&mut self, extra: &[&str]) -> MountEntry {
        let out = self.mount_command(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "the user's mount failed: {stderr}");
        self.mount.daemon = daemon_pid(&stderr);
        assert!(self.mount.daemon.is_some(), "no daemon pid in {stderr:?}");
        let entry = mount_entry(self.mnt()).expect("mounted after mount --daemon");
        assert_eq!(
            entry.fs_type, "fuse.mache-cachefs",
            "mounted through fusermount3 (a direct mount has type fuse): {entry:?}"
        );
        assert_eq!(entry.fuse_owner(), Some(self.uid), "{entry:?}");
        entry
    }

    /// A new user (see [`User::new`]) whose mount is up.
    fn mounted(sample: &Sample) -> User {
        let mut user = User::new(sample);
        user.mount(&[]);
        user
    }

    /// The user's `unmount`: it succeeds, the mountpoint is an empty
    /// directory again and the daemon exits.
    fn unmount(&mut self) {
        self.unmount_saying(format!("unmounted {}", self.mnt().display()));
        self.daemon_exits();
    }

    /// The user's `unmount`: it succeeds printing `line`, and the
    /// mountpoint is an empty directory again.
    fn unmount_saying(&self, line: String) {
        let out = self
            .cachefs()
            .arg("unmount")
            .arg(self.mnt())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the user's unmount failed: {stderr}");
        assert_eq!(stderr.trim(), line);
        assert!(!is_mounted(self.mnt()), "still mounted after unmount");
        let left = std::fs::read_dir(self.mnt()).unwrap().count();
        assert_eq!(left, 0, "the mountpoint is empty again");
    }

    /// The daemon goes away by itself.
    fn daemon_exits(&mut self) {
        let pid = self.mount.daemon.take().expect("a daemon");
        assert!(wait_for_exit(pid), "the daemon is gone after unmount");
    }

    /// `cat`, `find`, `grep -r` and `sqlite3`, run as the user, read what
    /// the sample holds.
    fn reads_the_sample(&self, sample: &Sample) {
        let rel = sample.small_py();
        let cat = run(self.run_as("cat").arg(self.source(&rel)));
        assert_eq!(cat.stdout, std::fs::read(sample.tree.join(&rel)).unwrap());

        let found = stdout(
            self.run_as("find")
                .arg(self.mnt().join("sources"))
                .args(FIND_FILES),
        );
        assert_eq!(parse_listing(&found), sample.files(), "find as the user");

        let matching = |root: &Path, cmd: &mut Command| {
            let mut paths: Vec<String> = stdout(cmd.args(["-rlF", "def "]).arg(root))
                .lines()
                .map(|line| {
                    line.strip_prefix(root.to_str().unwrap())
                        .unwrap()
                        .to_string()
                })
                .collect();
            paths.sort();
            paths
        };
        let mounted = matching(&self.mnt().join("sources"), &mut self.run_as("grep"));
        assert!(mounted.len() > 100, "grep -r found {} files", mounted.len());
        assert_eq!(mounted, matching(&sample.tree, &mut Command::new("grep")));

        for table in ["_source", "_ast"] {
            let sql = format!("SELECT count(*) FROM {table}");
            let original = stdout(Command::new("sqlite3").arg(&sample.db).arg(&sql));
            let db = self.mnt().join("mache.db");
            let served = stdout(self.run_as("sqlite3").arg(db).arg(&sql));
            assert_eq!(served, original, "{sql} on the user's mache.db");
        }
    }
}

/// The user mounts, reads with its tools, is alone in its mount (root is
/// kept out without `--allow-other`), and unmounts.
fn mounts_reads_and_unmounts(sample: &Sample) {
    let mut user = User::new(sample);
    let entry = user.mount(&[]);
    assert!(!entry.options.contains("allow_other"), "{entry:?}");
    let kept_out = std::fs::metadata(user.source(&sample.small_py())).unwrap_err();
    assert_eq!(kept_out.raw_os_error(), Some(libc::EACCES), "{kept_out}");
    user.reads_the_sample(sample);
    user.unmount();
}

#[test]
fn a_user_mounts_reads_and_unmounts_with_dev_fuse_open_to_all() {
    let _turn = turn(0o666, None);
    let sample = sample();
    mounts_reads_and_unmounts(sample);
}

#[test]
fn a_user_mounts_reads_and_unmounts_with_dev_fuse_open_to_its_group() {
    let (_, gid) = other_user();
    let _turn = turn(0o660, Some(gid));
    let sample = sample();
    mounts_reads_and_unmounts(sample);
}

#[test]
fn a_user_the_device_is_closed_to_gets_one_line_saying_why() {
    let _turn = turn(0o600, None);
    let sample = sample();
    let user = User::new(sample);
    for daemon in [false, true] {
        let mut mount = user.cachefs();
        mount.arg("mount").arg(&user.store).arg(user.mnt());
        if daemon {
            mount.arg("--daemon");
        }
        let out = mount.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("cannot open /dev/fuse (mode 0600)")
                && stderr.contains("fusermount3 opens the device as this user too")
                && stderr.contains("chmod 0666 /dev/fuse"),
            "{stderr}"
        );
        assert!(!is_mounted(user.mnt()));
    }
    let out = user.cachefs().args(["doctor", "--json"]).output().unwrap();
    assert!(!out.status.success(), "doctor fails as this user");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A check's status, detail and hint.
    let check = |name: &str| {
        let found = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report:#}"));
        ["status", "detail", "hint"].map(|key| found[key].as_str().unwrap_or("").to_string())
    };
    let [status, _, hint] = check("fuse-device");
    assert_eq!(status, "fail", "{hint}");
    assert!(hint.contains("chgrp GROUP /dev/fuse"), "{hint}");
    let [status, detail, _] = check("fusermount");
    assert_eq!(status, "ok", "{detail}");
    assert!(
        detail.ends_with("is setuid root: this user mounts and unmounts through it"),
        "{detail}"
    );
}

#[test]
fn a_user_clears_its_own_dead_mount() {
    let _turn = turn(0o666, None);
    let sample = sample();
    let mut user = User::mounted(sample);
    let pid = user.mount.daemon.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_for_exit(pid));
    let dead = || {
        let out = user.run_as("stat").arg(user.mnt()).output().unwrap();
        String::from_utf8_lossy(&out.stderr).contains("Transport endpoint is not connected")
    };
    wait_until("the killed daemon's mount reads as dead", dead);
    user.unmount();
    run(user.run_as("stat").arg(user.mnt()));
}

#[test]
fn a_user_unmounting_a_busy_mount_detaches_it_and_the_daemon_ends_at_the_close() {
    let _turn = turn(0o666, None);
    let sample = sample();
    let mut user = User::mounted(sample);
    // A shell of the user's holds a file open until its stdin closes.
    let mut holder = user
        .run_as("sh")
        .args(["-c", "exec 3<\"$1\" && echo open && read -r _", "sh"])
        .arg(user.source(&sample.small_py()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "open\n", "the holder opened the file");
    user.unmount_saying(format!(
        "{} was busy: detached; it goes away when its open files are closed",
        user.mnt().display()
    ));
    let pid = user.mount.daemon.unwrap();
    assert!(is_alive(pid), "the daemon serves the open file");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    user.daemon_exits();
}

#[test]
fn allow_other_needs_user_allow_other_and_then_lets_other_users_read() {
    let _turn = turn(0o666, None);
    let sample = sample();
    let _conf = FuseConf::set("# mache-cachefs test: no user_allow_other\n");
    let mut user = User::new(sample);
    let out = user.mount_command(&["--allow-other"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--allow-other needs user_allow_other in /etc/fuse.conf"),
        "{stderr}"
    );
    assert!(!is_mounted(user.mnt()));

    std::fs::write(FUSE_CONF, "user_allow_other\n").unwrap();
    let entry = user.mount(&["--allow-other"]);
    assert!(entry.options.contains("allow_other"), "{entry:?}");
    // Root is another user here, let in by allow_other.
    let rel = sample.small_py();
    assert_eq!(
        std::fs::read(user.source(&rel)).unwrap(),
        std::fs::read(sample.tree.join(&rel)).unwrap()
    );
    assert_eq!(std::fs::metadata(user.mnt()).unwrap().uid(), user.uid);
    assert_eq!(std::fs::metadata(user.mnt()).unwrap().gid(), user.gid);
    user.unmount();
}
