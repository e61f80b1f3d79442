//! `doctor` through the real binary, with its own HOME, XDG dirs and config
//! file: a healthy local setup passes; a store that is a file, a config that
//! does not load, a registry on a closed port and a refused token each fail
//! their check with the exit code of their kind; a token is named by where
//! it comes from and never shown.
//!
//! FUSE and the mount table are the machine's, not the setup's (and other
//! processes may leave a dead mount at any time): the checks of those are
//! set aside when comparing what failed, and an exact exit code is asserted
//! only when they passed.

mod common;
mod http_wire;
mod serve_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use serve_support::Server;

/// A temporary HOME with XDG dirs, and a config file to write.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_file(&self) -> PathBuf {
        self.path().join("config/mache-cachefs/config.toml")
    }

    /// Writes the config file: `store` and `cache_dir` in the temporary
    /// dir, then `extra` lines.
    fn config(&self, extra: &str) {
        let path = self.config_file();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = format!(
            "store = \"{}\"\ncache_dir = \"{}\"\n{extra}",
            self.path().join("store").display(),
            self.path().join("cache").display()
        );
        std::fs::write(path, text).unwrap();
    }

    /// Runs `doctor` with `args` and `env`, in this HOME.
    fn doctor(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = bin();
        cmd.arg("doctor")
            .args(args)
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_CACHE_HOME", self.path().join("cache-home"))
            .env_remove("MACHE_CACHE_TOKEN")
            .env_remove("DOCKER_CONFIG");
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output().expect("the binary runs")
    }
}

/// The `--json` report, and its checks by name (the last of each name).
fn report_of(out: &Output) -> (Value, BTreeMap<String, Value>) {
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report["checks"]
        .as_array()
        .expect("a checks array")
        .iter()
        .map(|check| (check["name"].as_str().unwrap().to_string(), check.clone()))
        .collect();
    (report, checks)
}

/// Whether a check's outcome belongs to the machine rather than the setup.
fn machine_check(name: &str) -> bool {
    name.starts_with("fuse") || name == "fusermount" || name == "mount"
}

/// Asserts that the checks of the setup that failed are `names`, that
/// `ok` says whether any failed, and that the exit code is `code` when no
/// check of the machine failed.
fn assert_failed(out: &Output, report: &Value, names: &[&str], code: i32) {
    let checks = report["checks"].as_array().unwrap();
    let failed = |machine: bool| -> Vec<&str> {
        checks
            .iter()
            .filter(|c| c["status"] == "fail")
            .map(|c| c["name"].as_str().unwrap())
            .filter(|name| machine_check(name) == machine)
            .collect()
    };
    assert_eq!(failed(false), names, "{report:#}");
    let any_failed = !names.is_empty() || !failed(true).is_empty();
    assert_eq!(report["ok"], !any_failed, "{report:#}");
    assert_eq!(out.status.success(), !any_failed, "{report:#}");
    if failed(true).is_empty() {
        assert_eq!(out.status.code(), Some(code), "{report:#}");
    }
}

fn status(checks: &BTreeMap<String, Value>, name: &str) -> String {
    checks[name]["status"].as_str().unwrap().to_string()
}

fn detail(checks: &BTreeMap<String, Value>, name: &str) -> String {
    checks[name]["detail"].as_str().unwrap().to_string()
}

/// Everything the command printed, stdout and stderr.
fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_healthy_local_setup_passes_with_one_line_per_check() {
    let setup = Setup::new();
    setup.config("");
    push_one_source(setup.path(), "main.go", b"package main\n");
    let out = setup.doctor(&["--json"], &[]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &[], 0);
    for name in ["config", "store", "cache", "registry", "mounts"] {
        assert_eq!(status(&checks, name), "ok", "{name}: {report:#}");
    }
    let config = setup.config_file();
    assert_eq!(
        detail(&checks, "config"),
        format!("read {}", config.display())
    );
    let store = detail(&checks, "store");
    assert!(
        store.contains(&format!("{}: 1 tag", setup.path().join("store").display())),
        "{store}"
    );
    assert!(store.contains(" free"), "{store}");
    assert!(
        detail(&checks, "cache").contains("does not exist yet"),
        "{report:#}"
    );
    assert!(
        detail(&checks, "registry").starts_with("none configured"),
        "{report:#}"
    );
    for name in ["fuse-device", "fuse-filesystem", "fusermount", "fuse-conf"] {
        assert!(checks.contains_key(name), "{name}: {report:#}");
    }

    // Without --json: a line per check, its status first, then the tally.
    let out = setup.doctor(&[], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), checks.len() + 1, "{text}");
    for (line, check) in lines.iter().zip(report["checks"].as_array().unwrap()) {
        let status = check["status"].as_str().unwrap();
        let name = check["name"].as_str().unwrap();
        assert!(line.starts_with(status), "{line}");
        assert!(
            line.contains(name) && line.contains(check["detail"].as_str().unwrap()),
            "{line}"
        );
    }
    assert!(lines.last().unwrap().ends_with("failed"), "{text}");
}

#[test]
fn a_store_that_is_a_file_fails_the_store_check() {
    let setup = Setup::new();
    setup.config("");
    std::fs::write(setup.path().join("store"), b"not a store").unwrap();
    let out = setup.doctor(&["--json"], &[]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &["store"], 3);
    assert!(
        detail(&checks, "store").ends_with("store is not a directory"),
        "{report:#}"
    );
    assert!(
        checks["store"]["hint"]
            .as_str()
            .unwrap()
            .contains("`store`"),
        "{report:#}"
    );
    assert_eq!(status(&checks, "config"), "ok");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed: store"), "{stderr}");
}

#[test]
fn a_config_that_does_not_load_is_a_failed_check_and_the_rest_still_runs() {
    let setup = Setup::new();
    setup.config("stroe = \"typo\"\n");
    let out = setup.doctor(&["--json"], &[]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &["config"], 3);
    assert!(detail(&checks, "config").contains("stroe"), "{report:#}");
    assert!(checks.contains_key("fuse-device") && checks.contains_key("mounts"));
    assert!(
        !checks.contains_key("store"),
        "no settings to check: {report:#}"
    );
}

#[test]
fn a_registry_on_a_closed_port_fails_fast_with_connection_refused() {
    let setup = Setup::new();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    setup.config(&format!(
        "remote = \"http://127.0.0.1:{port}\"\nscope = \"team\"\n"
    ));
    let started = Instant::now();
    let out = setup.doctor(&["--json", "--connect-timeout", "2"], &[]);
    let took = started.elapsed();
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &["registry"], 8);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let registry = detail(&checks, "registry");
    assert!(registry.contains("connection refused"), "{registry}");
    assert_eq!(status(&checks, "credentials"), "warn", "{report:#}");
    assert!(
        detail(&checks, "credentials").contains("not checked"),
        "{report:#}"
    );
    assert!(
        detail(&checks, "timeouts").starts_with("connect 2 s,"),
        "{report:#}"
    );
    // With a registry to read from, a store not pushed to yet is fine.
    assert_eq!(status(&checks, "store"), "ok", "{report:#}");
}

#[test]
fn a_token_from_the_environment_is_named_by_its_source_and_never_shown() {
    const TOKEN: &str = "s3cret-doctor-token";
    const WRONG: &str = "wr0ng-doctor-token";
    let setup = Setup::new();
    let (_, store) = push_one_source(setup.path(), "main.go", b"package main\n");
    let token_file = setup.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let serve_dir = setup.path().join("serve");
    std::fs::create_dir(&serve_dir).unwrap();
    let server = Server::start(&serve_dir, &store, &["--token-file", s(&token_file)]);
    setup.config(&format!(
        "remote = \"http://{}\"\nscope = \"team\"\n",
        server.addr
    ));

    let out = setup.doctor(&["--json"], &[("MACHE_CACHE_TOKEN", TOKEN)]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &[], 0);
    assert_eq!(
        detail(&checks, "credentials"),
        "a token from $MACHE_CACHE_TOKEN, accepted"
    );
    assert!(
        detail(&checks, "registry").contains("answered GET /v2/ (200)"),
        "{report:#}"
    );
    assert!(!all_output(&out).contains(TOKEN), "{}", all_output(&out));

    let out = setup.doctor(&[], &[("MACHE_CACHE_TOKEN", WRONG)]);
    assert!(!out.status.success());
    let text = all_output(&out);
    assert!(!text.contains(WRONG) && !text.contains(TOKEN), "{text}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("credentials"))
        .unwrap();
    assert!(line.starts_with("fail"), "{text}");
    assert!(
        line.contains("a token from $MACHE_CACHE_TOKEN: authentication failed"),
        "{text}"
    );
    let out = setup.doctor(&["--json"], &[("MACHE_CACHE_TOKEN", WRONG)]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &["credentials"], 7);
    assert_eq!(status(&checks, "registry"), "ok", "it answered: {report:#}");

    // Without a token, the check says how to give one, as every command does.
    let out = setup.doctor(&["--json"], &[]);
    let (report, checks) = report_of(&out);
    assert_failed(&out, &report, &["credentials"], 7);
    let credentials = detail(&checks, "credentials");
    assert!(
        credentials.starts_with("no credentials (anonymous): "),
        "{credentials}"
    );
    assert!(
        credentials.contains("give --token-file, set MACHE_CACHE_TOKEN"),
        "{credentials}"
    );
}
