//! Mounts and stores among several users, and `unmount`'s refusals: what a
//! team sharing one machine or one store relies on. A second user is
//! created for these tests.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{BIN, TestMount, is_mounted, run, sample};

/// The second user's name.
pub const OTHER_USER: &str = "mache-cachefs-test";

/// The uid and gid of the second user, created if missing.
pub fn other_user() -> (u32, u32) {
    let id = |flag: &str| {
        Command::new("id")
            .arg(flag)
            .arg(OTHER_USER)
            .output()
            .unwrap()
    };
    if !id("-u").status.success() {
        let created = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(OTHER_USER)
            .output()
            .expect("useradd (package passwd) is installed");
        // Another test may have created it meanwhile.
        assert!(id("-u").status.success(), "useradd failed: {created:?}");
    }
    let number = |flag: &str| {
        String::from_utf8(id(flag).stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (number("-u"), number("-g"))
}

/// `mache-cachefs` as the second user, with its own cache and config under
/// `home` (which it owns) and umask 022.
fn as_other(home: &Path) -> Command {
    let (uid, gid) = other_user();
    std::fs::create_dir_all(home).unwrap();
    std::os::unix::fs::chown(home, Some(uid), Some(gid)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .current_dir(home)
        .uid(uid)
        .gid(gid);
    with_umask(&mut cmd, 0o022);
    cmd
}

fn with_umask(cmd: &mut Command, mask: libc::mode_t) {
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// A test directory every user can traverse (tempdirs are 0700).
fn open_dir(m: &TestMount) -> PathBuf {
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    m.dir.path().to_path_buf()
}

fn failure(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file and directory below `root` with its mode bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let out = String::from_utf8(
        run(Command::new("find")
            .arg(root)
            .args(["-printf", "%P\\t%m\\n"]))
        .stdout,
    )
    .unwrap();
    out.lines()
        .filter(|l| !l.starts_with('\t'))
        .map(|l| {
            let (path, mode) = l.split_once('\t').unwrap();
            (PathBuf::from(path), u32::from_str_radix(mode, 8).unwrap())
        })
        .collect()
}

#[test]
fn a_store_pushed_by_one_user_is_verified_and_pulled_by_another() {
    let sample = sample();
    let m = TestMount::dirs();
    let dir = open_dir(&m);
    let store = dir.join("store");
    let mut push = Command::new(BIN);
    push.args(["--quiet", "push", "--db"])
        .arg(&sample.db)
        .arg(&store)
        .env("XDG_CONFIG_HOME", &dir);
    with_umask(&mut push, 0o022);
    run(&mut push);
    for (path, mode) in modes(&store) {
        let wanted = if store.join(&path).is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(mode, wanted, "{} has mode {mode:o}", path.display());
    }

    let home = dir.join("other-home");
    run(as_other(&home).arg("verify").arg(&store));
    run(as_other(&home).arg("inspect").arg(&store));
    let restored = home.join("restored.db");
    run(as_other(&home)
        .args(["pull", "--out-db"])
        .arg(&restored)
        .arg(&store));
    let meta = std::fs::metadata(&restored).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_eq!(meta.uid(), other_user().0);
}

#[test]
fn unmount_of_another_users_mount_says_not_yours() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &[]);
    open_dir(&m);
    let home = m.dir.path().join("other-home");
    let out = as_other(&home).arg("unmount").arg(&m.mnt).output().unwrap();
    let (code, stderr) = failure(&out);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("is not yours") && stderr.contains("uid 0"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(is_mounted(&m.mnt), "root's mount is still there");
}

/// A mount of something else at `dir`, unmounted on drop.
struct Foreign(PathBuf);

impl Foreign {
    fn mount(args: &[&str], dir: &Path) -> Foreign {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount").args(args).arg(dir));
        Foreign(dir.to_path_buf())
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn unmount_refuses_a_tmpfs_and_a_bind_mount_even_busy_ones() {
    let m = TestMount::dirs();
    let tmp = m.dir.path().join("tmpfs");
    let tmpfs = Foreign::mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &tmp);
    std::fs::write(tmp.join("precious.txt"), b"keep me").unwrap();
    let busy = std::fs::File::open(tmp.join("precious.txt")).unwrap();
    let target = m.dir.path().join("bound");
    let source = m.dir.path().join("bind-source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("file"), b"x").unwrap();
    let bind = Foreign::mount(&["--bind", source.to_str().unwrap()], &target);
    for (dir, kind) in [(&tmpfs.0, "tmpfs"), (&bind.0, "mount")] {
        let out = m.command().arg("unmount").arg(dir).output().unwrap();
        let (code, stderr) = failure(&out);
        assert_eq!(code, Some(6), "{stderr}");
        assert!(
            stderr.contains("not a mache-cachefs mount") && stderr.contains(kind),
            "{stderr}"
        );
        assert!(is_mounted(dir), "{} is still mounted", dir.display());
    }
    assert_eq!(std::fs::read(tmp.join("precious.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(target.join("file")).unwrap(), b"x");
    drop(busy);
    let out = m.command().arg("unmount").arg(&m.mnt).output().unwrap();
    let (code, stderr) = failure(&out);
    assert_eq!(code, Some(6));
    assert!(stderr.contains("is not mounted"), "{stderr}");
}

#[test]
fn the_mount_log_has_plain_lines_that_name_the_mount() {
    let sample = sample();
    let m = TestMount::daemon(&sample.store, &["-v"]);
    let pid = m.daemon.unwrap();
    let log = m.cache_home.join("mache-cachefs/cache/mount.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let tag = format!(
        "[mount {} pid {pid}]",
        m.mnt.canonicalize().unwrap().display()
    );
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
    assert!(!ours.is_empty(), "no line of this mount in {text:?}");
    assert!(ours.iter().all(|l| l.starts_with(&tag)), "{ours:?}");
    assert!(
        !text.contains('\x1b'),
        "no colour codes in the log: {text:?}"
    );
}
