//! `doctor`: what a user runs when something does not work. Each check
//! looks at one thing the tool needs (FUSE, the config, the store, the
//! cache dir, a registry, the mounts) and says ok, warn or fail, what it
//! found and what to do about it. The probes belong to the modules that
//! own those things (`fs::mount`, `store`, `registry`); this module turns
//! what they find into checks, [`super::output::doctor`] prints them, and a
//! failed check becomes [`Error::ChecksFailed`] for the exit code. Nothing
//! is changed: no directory is created, no cache trimmed.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::args::{DoctorArgs, RemoteArgs};
use super::commands::{cache_cap, remote_settings};
use super::output::{self, count, size};
use crate::config::{self, Env, ProcessEnv, Settings};
use crate::error::{Class, Error};
use crate::fs::mount::{self as fuse, MountState};
use crate::registry::auth::{CredentialSource, Credentials};
use crate::registry::client::{Timeouts, host_port};
use crate::registry::{self, PRODUCER};
use crate::store::{LocalStore, disk_cache};

/// Below this much free space, a store or cache directory gets a warning.
const LOW_SPACE: u64 = 1 << 30;

/// How long a mount may take to answer a `stat` before it counts as hung.
const MOUNT_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but may bite (or could not be checked).
    Warn,
    /// Something the tool needs does not work.
    Fail,
}

impl Status {
    /// The word the report shows.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `fuse-device`, `store`, `registry`.
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it, for a problem.
    pub hint: Option<String>,
    /// What kind of failure a failed check is, for the exit code.
    #[serde(skip)]
    class: Option<Class>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
            class: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            status: Status::Warn,
            hint: Some(hint.into()),
            ..Check::ok(name, detail)
        }
    }

    fn fail(
        name: &'static str,
        class: Class,
        detail: impl Into<String>,
        hint: Option<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            hint,
            class: Some(class),
            ..Check::ok(name, detail)
        }
    }

    /// A check that `error` failed, of the error's class.
    fn failed(name: &'static str, error: &Error, hint: Option<String>) -> Check {
        Check::fail(name, error.class(), error.to_string(), hint)
    }
}

/// Whether no check failed.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.status != Status::Fail)
}

/// `mache-cachefs doctor`: runs every check with the settings `loaded`
/// (a config that does not load is a failed check), prints the report, and
/// fails with [`Error::ChecksFailed`] if any check did.
pub fn doctor(loaded: crate::Result<Settings>, args: &DoctorArgs) -> Result<()> {
    let mut checks = fuse_checks();
    match loaded {
        Ok(settings) => {
            checks.push(config_check(&settings));
            let remote = settings.remote.is_some() || args.remote.remote.is_some();
            checks.push(store_check(&settings.store, remote));
            let cap = cache_cap(&settings, args.remote.cache_size);
            checks.push(cache_check(&settings.cache_dir, cap));
            checks.extend(registry_checks(&settings, &args.remote));
        }
        Err(e) => checks.push(Check::failed(
            "config",
            &e,
            Some(
                "fix it, or name another file with --config (or MACHE_CACHEFS_CONFIG); \
                 the store, cache and registry checks need it"
                    .into(),
            ),
        )),
    }
    checks.extend(mount_checks());
    output::doctor(&checks, args.json);
    verdict(&checks)
}

/// `Err` naming the failed checks, with the class they share (if they do).
fn verdict(checks: &[Check]) -> Result<()> {
    let failed: Vec<&Check> = checks
        .iter()
        .filter(|check| check.status == Status::Fail)
        .collect();
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let class = first
        .class
        .filter(|class| failed.iter().all(|check| check.class == Some(*class)));
    let mut names: Vec<&str> = failed.iter().map(|check| check.name).collect();
    names.dedup();
    Err(Error::ChecksFailed {
        count: failed.len(),
        names: names.join(", "),
        class,
    }
    .into())
}

/// The FUSE device, the kernel's filesystem, the mount helper, fuse.conf.
fn fuse_checks() -> Vec<Check> {
    let device = match fuse::probe_fuse_device(Path::new(fuse::DEV_FUSE)) {
        Ok(mode) => Check::ok(
            "fuse-device",
            format!(
                "/dev/fuse is a character device (mode {}) that opens read-write",
                fuse::file_mode(mode)
            ),
        ),
        Err(problem) => Check::fail(
            "fuse-device",
            Class::Environment,
            problem.reason(),
            Some(problem.hint()),
        ),
    };
    // After the device: opening it loads the module where it can be loaded.
    let filesystem = match fuse::kernel_has_fuse() {
        Ok(true) => Check::ok(
            "fuse-filesystem",
            "the kernel has the fuse filesystem (/proc/filesystems)",
        ),
        Ok(false) => Check::fail(
            "fuse-filesystem",
            Class::Environment,
            "/proc/filesystems lists no fuse: the kernel cannot mount FUSE",
            Some(
                "load the module as root: modprobe fuse (a container shares its host's kernel)"
                    .into(),
            ),
        ),
        Err(e) => Check::warn(
            "fuse-filesystem",
            format!("cannot read /proc/filesystems: {e}"),
            "is /proc mounted?",
        ),
    };
    vec![device, filesystem, fusermount_check(), fuse_conf_check()]
}

/// The setuid helper through which a user other than root mounts.
fn fusermount_check() -> Check {
    const NAME: &str = "fusermount";
    if nix::unistd::geteuid().is_root() {
        let found = fuse::find_fusermount().map_or_else(
            || "neither fusermount3 nor fusermount is on PATH".to_string(),
            |path| path.display().to_string(),
        );
        return Check::ok(
            NAME,
            format!("{found} (not needed as root, who mounts directly)"),
        );
    }
    match fuse::probe_fusermount() {
        Ok(path) => Check::ok(
            NAME,
            format!(
                "{} is setuid root: this user mounts and unmounts through it",
                path.display()
            ),
        ),
        Err(problem) => Check::fail(
            NAME,
            Class::Environment,
            problem.reason(),
            Some(problem.hint()),
        ),
    }
}

/// `user_allow_other` in /etc/fuse.conf, which `mount --allow-other` needs
/// for a user other than root: information only.
fn fuse_conf_check() -> Check {
    let conf = fuse::FUSE_CONF;
    let users = "mount --allow-other";
    let detail = match fuse::user_allow_other() {
        Ok(true) => format!("user_allow_other is set in {conf}: every user may {users}"),
        Ok(false) => format!(
            "user_allow_other is not set in {conf}: only root may {users} \
             (other mounts do not need it)"
        ),
        Err(e) => format!("cannot read {conf}: {e} (only root may {users})"),
    };
    Check::ok("fuse-conf", detail)
}

/// Which config file was read, and what the environment overrides.
fn config_check(settings: &Settings) -> Check {
    let mut detail = match &settings.config_path {
        Some(path) => format!("read {}", path.display()),
        None => format!(
            "no config file at {}: defaults in effect",
            config::config_path(&ProcessEnv).display()
        ),
    };
    if ProcessEnv.var("MACHE_CACHEFS_STORE").is_some() {
        detail.push_str("; MACHE_CACHEFS_STORE sets the store");
    }
    Check::ok("config", detail)
}

/// Bytes this user may still write on the filesystem holding `path` (or
/// its nearest existing parent).
fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|dir| dir.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Whether this user may create files in the directory `dir`.
fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// A check of a directory that exists: ok, or a warning with every hint.
fn directory_check(name: &'static str, detail: String, hints: &[&str]) -> Check {
    match hints {
        [] => Check::ok(name, detail),
        _ => Check::warn(name, detail, hints.join("; ")),
    }
}

/// The local store: a directory that is a store (or empty), writable,
/// its tags, the free space.
fn store_check(dir: &Path, remote: bool) -> Check {
    const NAME: &str = "store";
    let shown = dir.display();
    let elsewhere = "point `store` in the config (or MACHE_CACHEFS_STORE) at a store directory";
    // Nothing pushed yet: a problem only without a registry to read from.
    let unpushed = |detail: String| match remote {
        true => Check::ok(NAME, format!("{detail} (bundles come from the registry)")),
        false => Check::warn(
            NAME,
            detail,
            "mache-cachefs push --db mache.db publishes one there",
        ),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return unpushed(format!("{shown} does not exist yet: nothing pushed"));
        }
        Err(e) => {
            let error = Error::io(shown.to_string(), e);
            return Check::failed(NAME, &error, Some("check its permissions".into()));
        }
    };
    if !meta.is_dir() {
        // What every command that reads the store says of it (exit 3),
        // in plainer words.
        let class = Error::NotAStore(dir.to_path_buf()).class();
        return Check::fail(
            NAME,
            class,
            format!("{shown} is not a directory"),
            Some(elsewhere.into()),
        );
    }
    let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty {
        return unpushed(format!("{shown} is empty: nothing pushed"));
    }
    let tags = match LocalStore::open(dir).and_then(|store| store.refs()) {
        Ok(refs) => refs.len(),
        Err(e) => return Check::failed(NAME, &e, Some(elsewhere.into())),
    };
    let mut detail = format!("{shown}: {}", count(tags, "tag", "tags"));
    let mut hints = Vec::new();
    if !writable(dir) {
        detail.push_str(", not writable by this user");
        hints.push("push, tag, untag and gc write there (mount, pull and verify only read)");
    }
    if let Some(free) = free_space(dir) {
        detail.push_str(&format!(", {} free", size(free)));
        if free < LOW_SPACE {
            hints.push("little free space for pushes: gc removes what no tag reaches");
        }
    }
    directory_check(NAME, detail, &hints)
}

/// The cache dir: its chunks' size against the cap, writable, free space.
fn cache_check(dir: &Path, cap: u64) -> Check {
    const NAME: &str = "cache";
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Check::ok(
                NAME,
                format!(
                    "{shown} does not exist yet (the first mount or registry read creates it); \
                     cap {}",
                    size(cap)
                ),
            );
        }
        Err(e) => {
            let error = Error::io(shown.to_string(), e);
            return Check::failed(NAME, &error, Some("check its permissions".into()));
        }
    };
    if !meta.is_dir() {
        return Check::fail(
            NAME,
            Class::Environment,
            format!("{shown} is not a directory"),
            Some("point `cache_dir` in the config at a directory".into()),
        );
    }
    let usage = disk_cache::usage(dir);
    let mut detail = format!(
        "{shown}: {} of registry chunks ({}), cap {}",
        size(usage.bytes),
        count(usage.chunks, "chunk", "chunks"),
        size(cap)
    );
    let mut hints = Vec::new();
    if usage.bytes > cap {
        hints.push(
            "over its cap: mache-cachefs gc --cache trims it (so does the next registry read)",
        );
    }
    if !writable(dir) {
        detail.push_str(", not writable by this user");
        hints.push(
            "nothing gets cached: every read goes to the registry, and mount cannot build mache.db",
        );
    }
    if let Some(free) = free_space(dir) {
        detail.push_str(&format!(", {} free", size(free)));
        if free < LOW_SPACE {
            hints.push("little free space: mache-cachefs gc --cache, or a smaller cache_size");
        }
    }
    directory_check(NAME, detail, &hints)
}

/// With a registry: that it answers (TLS included), that it takes the
/// credentials and where they come from, and the timeouts in effect.
fn registry_checks(settings: &Settings, args: &RemoteArgs) -> Vec<Check> {
    const NAME: &str = "registry";
    let remote = match remote_settings(settings, args, false) {
        Ok(Some(remote)) => remote,
        Ok(None) => {
            return vec![Check::ok(
                NAME,
                "none configured: bundles come from the local store \
                 (--remote, or `remote` in the config, names one)",
            )];
        }
        Err(e) => {
            let class = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<Error>())
                .map_or(Class::Input, Error::class);
            return vec![Check::fail(NAME, class, super::one_line(&e), None)];
        }
    };
    let url = match registry::parse_remote(&remote.url, remote.insecure)
        .and_then(|url| registry::check_scope(&remote.scope).map(|()| url))
    {
        Ok(url) => url,
        Err(e) => return vec![Check::failed(NAME, &e, None)],
    };
    let target = format!("{} (repository {PRODUCER}/{})", remote.url, remote.scope);
    let (credentials, source) = match remote.credentials.resolve_with_source(&host_port(&url)) {
        Ok((credentials, source)) => (credentials, Ok(source)),
        // Still worth asking whether the registry answers at all.
        Err(e) => (Credentials::Anonymous, Err(e)),
    };
    let answer = registry::ping(&remote, credentials);
    let tls = match url.scheme() {
        "https" => "; TLS ok",
        _ => "; plain http",
    };
    let reach = match &answer {
        Ok(pong) if pong.status == 404 => Check::fail(
            NAME,
            Class::Remote,
            format!("{target} answered 404 to GET /v2/: not a registry's API"),
            Some(
                "give the registry's root, scheme://host[:port], with --remote or `remote`".into(),
            ),
        ),
        Ok(pong) => Check::ok(
            NAME,
            format!(
                "{target} answered GET /v2/ ({}) in {} ms{tls}",
                pong.status,
                pong.elapsed.as_millis()
            ),
        ),
        Err(Error::AuthFailed { .. }) => Check::ok(
            NAME,
            format!("{target} answered, asking for credentials{tls}"),
        ),
        Err(e) => Check::failed(
            NAME,
            e,
            Some(format!(
                "is a registry running at {}? check --remote (or `remote` in the config); \
                 --connect-timeout bounds the wait",
                remote.url
            )),
        ),
    };
    let credentials = match (source, &answer) {
        (Err(e), _) => Check::failed(
            "credentials",
            &e,
            Some("fix it, or give others: --token-file, MACHE_CACHE_TOKEN or docker login".into()),
        ),
        (Ok(CredentialSource::Anonymous), Ok(_)) => Check::ok(
            "credentials",
            "none given: the registry lets anonymous clients in",
        ),
        (Ok(source), Ok(_)) => Check::ok("credentials", format!("{source}, accepted")),
        (Ok(source), Err(e @ Error::AuthFailed { .. })) => {
            // Without credentials, the error already says how to give them.
            let hint = (source != CredentialSource::Anonymous).then(|| {
                "check these credentials, or give others: --token-file, MACHE_CACHE_TOKEN \
                 or docker login"
                    .to_string()
            });
            Check::fail("credentials", e.class(), format!("{source}: {e}"), hint)
        }
        (Ok(source), Err(_)) => Check::warn(
            "credentials",
            format!("{source}; not checked: the registry did not answer"),
            "see the registry check",
        ),
    };
    let timeouts = Check::ok("timeouts", describe_timeouts(&remote.timeouts));
    vec![reach, credentials, timeouts]
}

/// The registry timeouts in effect, as their flags name them.
fn describe_timeouts(t: &Timeouts) -> String {
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    format!(
        "connect {}, read {}, min rate {}/s, retry budget {}, offline after {}",
        secs(t.connect),
        secs(t.read),
        size(t.min_rate),
        secs(t.budget),
        secs(t.offline_after)
    )
}

/// The mache-cachefs mounts: those answering in one line, each dead or
/// hung one in its own, with the command that clears it.
fn mount_checks() -> Vec<Check> {
    let mut answering = Vec::new();
    let mut problems = Vec::new();
    for entry in fuse::mount_table().iter().filter(|entry| entry.is_ours()) {
        let path = entry.mountpoint.display().to_string();
        let clear = format!("mache-cachefs unmount {path}");
        match fuse::mount_state(&entry.mountpoint, MOUNT_ANSWER_WITHIN) {
            MountState::Answers => answering.push(path),
            // Another user's mount, which the kernel keeps us out of.
            MountState::Failed(e) if e.raw_os_error() == Some(libc::EACCES) => {
                let owner = entry
                    .fuse_owner()
                    .map_or("another user".into(), |uid| format!("uid {uid}"));
                answering.push(format!("{path} ({owner}'s, not looked into)"));
            }
            MountState::Dead => problems.push(Check::fail(
                "mount",
                Class::Environment,
                format!("{path} is dead: its daemon is gone (transport endpoint is not connected)"),
                Some(clear),
            )),
            MountState::Silent => problems.push(Check::warn(
                "mount",
                format!(
                    "{path} does not answer within {} s: its daemon hangs",
                    MOUNT_ANSWER_WITHIN.as_secs()
                ),
                clear,
            )),
            MountState::Failed(e) => {
                problems.push(Check::warn("mount", format!("{path}: {e}"), clear))
            }
        }
    }
    let summary = match answering.len() {
        0 if problems.is_empty() => "no mache-cachefs mounts".to_string(),
        0 => "none answering".to_string(),
        n => format!(
            "{} answering: {}",
            count(n, "mount", "mounts"),
            answering.join(", ")
        ),
    };
    let mut checks = vec![Check::ok("mounts", summary)];
    checks.extend(problems);
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_must_be_a_store_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = store_check(&dir.path().join("missing"), false);
        assert_eq!(missing.status, Status::Warn, "{missing:?}");
        let with_registry = store_check(&dir.path().join("missing"), true);
        assert_eq!(with_registry.status, Status::Ok, "{with_registry:?}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let check = store_check(&file, false);
        assert_eq!(
            (check.status, check.class),
            (Status::Fail, Some(Class::Input))
        );
        assert!(check.detail.contains("is not a directory"), "{check:?}");
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"x").unwrap();
        let check = store_check(&other, false);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.detail.contains("not a store"), "{check:?}");
    }

    #[test]
    fn a_cache_over_its_cap_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let cache = crate::store::DiskCache::open(dir.path(), 1 << 20).unwrap();
        // Bytes that do not compress: kept as they are, 1000 on disk.
        let mut bytes = vec![0u8; 1000];
        blake3::Hasher::new().finalize_xof().fill(&mut bytes);
        cache.put(&crate::Hash::of(&bytes), &bytes);
        let within = cache_check(dir.path(), 1 << 20);
        assert_eq!(within.status, Status::Ok, "{within:?}");
        assert!(
            within
                .detail
                .contains("1000 B of registry chunks (1 chunk)"),
            "{within:?}"
        );
        let over = cache_check(dir.path(), 100);
        assert_eq!(over.status, Status::Warn, "{over:?}");
        assert!(over.hint.unwrap().contains("gc --cache"));
    }

    #[test]
    fn failures_of_one_kind_keep_their_class_and_mixed_ones_do_not() {
        let fail = |name, class| Check::fail(name, class, "x", None);
        let class_of = |checks: &[Check]| {
            let err = verdict(checks).unwrap_err();
            super::super::exit_code_for(&err)
        };
        assert!(verdict(&[Check::ok("a", "x"), Check::warn("b", "x", "y")]).is_ok());
        let remote = [fail("registry", Class::Remote), Check::ok("store", "x")];
        assert_eq!(class_of(&remote), crate::error::exit::REMOTE);
        let mixed = [
            fail("registry", Class::Remote),
            fail("fuse-device", Class::Environment),
        ];
        assert_eq!(class_of(&mixed), crate::error::exit::FAILURE);
    }
}
