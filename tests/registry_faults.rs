//! When the registry fails: `pull`, `refs` and `verify` through the real
//! binary against every way a registry can fail, each held to the bound
//! the user is promised (README, "Registries"; these times are the
//! contract, with slack for a loaded machine, not benchmarks).
//!
//! - **refused** and **a name that does not resolve**, with a cold cache:
//!   exit 8 within `--offline-after` + 1 s, one line naming the reason;
//! - **TLS spoken to a plain-http port**: exit 8 within 1 s after exactly
//!   one attempt, the line saying "use http://";
//! - **a blackhole** (connections accepted, never answered) and **a body
//!   trickling at one byte a second**: exit 8 within `--retry-budget` + 1 s
//!   ("no answer within the retry budget"); a trickle is also cut off by
//!   `--min-rate`;
//! - **a reset mid-body**: retried, so once costs nothing; every time, exit
//!   8 within `--offline-after` + 1 s;
//! - **a tag resolved before**, the registry refusing: `pull` comes up from
//!   the disk cache within 1 s with a warning naming the bundle and its age;
//! - **hostile huge claims** (a manifest or pack index claiming terabytes, a
//!   `Content-Length` of terabytes, an endless body): a clear error (exit 3
//!   or 8), never a signal, in modest memory;
//! - **empty chunks** in a packed bundle (first, middle, last of a pack, or
//!   every file) need no request and pull whole, on a real distribution
//!   registry; and in the build-cache/v1 layout over `serve`.
//!
//! Every failed `pull` leaves nothing at `--out-db`. The faults no real
//! server makes come from `fake_registry`.

mod common;
mod distribution_support;
mod fake_registry;
mod http_wire;
mod serve_support;

use std::io::Read as _;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use distribution_support::{Distribution, OCI_MANIFEST};
use fake_registry::{
    Fault, HUGE, Refused, SCOPE, Setup, UNRESOLVABLE, assert_ok, remote_command, setup, stderr,
};
use mache_cachefs::oci::v1_digest;
use mache_cachefs::oci::{INDEX_TYPE, PACK_TYPE};
use serve_support::Server;

/// The slack on every promised bound, for a loaded machine.
const SLACK: Duration = Duration::from_secs(1);
/// Most memory a command may take whatever a registry claims.
const MAX_RSS: u64 = 500 << 20;

/// The commands every fault is met with.
const COMMANDS: [&str; 3] = ["pull", "refs", "verify"];

/// Seconds as a flag value and as a bound.
fn secs(text: &str) -> Duration {
    Duration::from_secs_f64(text.parse().unwrap())
}

/// A command of [`COMMANDS`] run against `url`: its output, how long it
/// took, and the db a pull would have written.
struct Run {
    command: &'static str,
    out: Output,
    took: Duration,
}

impl Run {
    /// Asserts the user-visible outcome of a failure: exit `code`, one
    /// error line holding every one of `needles`, within `bound`, and
    /// nothing left at `--out-db`. Returns the error line.
    fn fails_within(&self, bound: Duration, code: i32, needles: &[&str]) -> String {
        let text = stderr(&self.out);
        assert_eq!(
            self.out.status.code(),
            Some(code),
            "{}: {text}",
            self.command
        );
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mache-cachefs: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}: one error line: {text}", self.command);
        let line = errors[0].to_string();
        for needle in needles {
            assert!(
                line.contains(needle),
                "{}: {needle:?} not in {line}",
                self.command
            );
        }
        assert!(
            self.took <= bound,
            "{} took {:?}, over its bound of {bound:?}: {line}",
            self.command,
            self.took
        );
        println!(
            "{}: {:?} (bound {bound:?}): {line}",
            self.command, self.took
        );
        line
    }
}

/// Runs each of [`COMMANDS`] against `url` with `extra` flags; checks that
/// a pull left nothing behind.
fn each_command(t: &Setup, url: &str, extra: &[&str]) -> Vec<Run> {
    COMMANDS
        .iter()
        .map(|&command| {
            let out_db = t.dir.path().join(format!("{command}.db"));
            let args: Vec<&str> = match command {
                "pull" => vec!["pull", "--out-db", s(&out_db)],
                other => vec![other],
            };
            let started = Instant::now();
            let out = t.run_at(url, &args, extra);
            let took = started.elapsed();
            assert!(!out_db.exists(), "{command} left {out_db:?} behind");
            Run { command, out, took }
        })
        .collect()
}

#[test]
fn refused_with_a_cold_cache_fails_within_the_retry_budget_naming_the_reason() {
    let t = setup(false);
    let refused = Refused::new();
    let reason = format!("cannot reach {}: connection refused", refused.name());
    let extra = ["--offline-after", "2", "--retry-budget", "6"];
    for run in each_command(&t, &refused.url(), &extra) {
        run.fails_within(secs("2") + SLACK, 8, &[&reason]);
    }
}

/// With the defaults, a registry that refuses is given `--offline-after`
/// (5 s) to come back, and then the command fails: the backoff never
/// sleeps past that window.
#[test]
fn refused_with_a_cold_cache_fails_within_offline_after() {
    let t = setup(false);
    let refused = Refused::new();
    for run in each_command(&t, &refused.url(), &[]) {
        run.fails_within(secs("5") + SLACK, 8, &["connection refused"]);
    }
}

#[test]
fn a_name_that_does_not_resolve_fails_within_the_retry_budget_naming_the_reason() {
    let t = setup(false);
    let extra = ["--insecure", "--offline-after", "2", "--retry-budget", "6"];
    for run in each_command(&t, UNRESOLVABLE, &extra) {
        run.fails_within(
            secs("6") + SLACK,
            8,
            &["cannot reach mache-test.invalid:5000", "does not resolve"],
        );
    }
}

#[test]
fn tls_spoken_to_a_plain_http_port_fails_at_once_after_one_attempt() {
    let t = setup(false);
    for run in each_command(&t, &t.registry.https_url(), &[]) {
        run.fails_within(SLACK, 8, &["TLS handshake failed", "use http://"]);
    }
    assert_eq!(
        t.registry.count("TLS hello"),
        COMMANDS.len(),
        "one attempt per command, never retried"
    );
    assert_eq!(t.registry.count("/v2/"), 0);
}

#[test]
fn a_blackhole_fails_within_the_retry_budget() {
    let t = setup(false);
    t.registry.set_blackhole(true);
    for run in each_command(&t, &t.registry.url(), &["--retry-budget", "3"]) {
        run.fails_within(
            secs("3") + SLACK,
            8,
            &[
                &format!("cannot reach {}", t.registry.name()),
                "no answer within the retry budget of 3 s",
            ],
        );
    }
}

#[test]
fn a_body_trickling_at_a_byte_a_second_fails_within_the_retry_budget() {
    let t = setup(false);
    t.registry
        .fault(&format!("/mache/{SCOPE}/"), &[Fault::Trickle; 100]);
    for run in each_command(&t, &t.registry.url(), &["--retry-budget", "3"]) {
        run.fails_within(
            secs("3") + SLACK,
            8,
            &["no answer within the retry budget of 3 s"],
        );
    }
}

#[test]
fn a_body_trickling_below_the_min_rate_is_cut_off_well_within_the_budget() {
    let t = setup(false);
    t.registry
        .fault(&format!("/mache/{SCOPE}/"), &[Fault::Trickle; 100]);
    // The body gets the read timeout (1.5 s) to start, then must keep 1K/s;
    // past --offline-after (2 s) of such failures the call gives up.
    let extra = [
        "--read-timeout",
        "1.5",
        "--min-rate",
        "1K",
        "--offline-after",
        "2",
    ];
    for run in each_command(&t, &t.registry.url(), &extra) {
        run.fails_within(
            secs("2") + secs("1.5") + SLACK,
            8,
            &["below the minimum of 1024 (--min-rate)"],
        );
    }
}

#[test]
fn a_reset_mid_body_once_is_retried_and_the_pull_is_whole() {
    let t = setup(false);
    let victim = t.chunk(0).to_hex();
    t.registry.fault(&victim, &[Fault::ResetMidBody]);
    let (out, restored) = t.pull("restored.db", &[]);
    assert_ok(&out);
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    assert_eq!(
        t.registry
            .count(&format!("GET /v2/mache/{SCOPE}/blobs/sha256:{victim}")),
        2
    );
}

#[test]
fn a_reset_mid_body_every_time_fails_within_the_retry_budget() {
    let t = setup(false);
    // The lockfile: every command needs it.
    let lockfile = v1_digest(&t.bundle.lockfile_hash);
    t.registry.fault(&lockfile, &[Fault::ResetMidBody; 1000]);
    let extra = ["--retry-budget", "3", "--offline-after", "2"];
    for run in each_command(&t, &t.registry.url(), &extra) {
        run.fails_within(
            secs("3") + SLACK,
            8,
            &[
                &format!("cannot reach {}", t.registry.name()),
                "connection reset",
            ],
        );
    }
    assert!(t.registry.count(&lockfile) >= 6, "retried, each command");
}

#[test]
fn a_tag_resolved_before_comes_up_from_the_disk_cache_within_a_second_when_refused() {
    let t = setup(false);
    let (out, _) = t.pull("first.db", &[]);
    assert_ok(&out);
    let (url, name) = (t.registry.url(), t.registry.name());
    drop(t.registry);

    let restored = t.dir.path().join("offline.db");
    let started = Instant::now();
    let offline = |args: &[&str]| remote_command(t.dir.path(), &url, args).output().unwrap();
    let out = offline(&["pull", "--out-db", s(&restored)]);
    let took = started.elapsed();
    assert_ok(&out);
    assert!(took <= SLACK, "from the cache in {took:?}");
    assert_eq!(dump_sources(&restored), dump_sources(&t.db));
    let text = stderr(&out);
    let warning = text
        .lines()
        .find(|l| l.contains("from the disk cache"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    let bundle = format!(
        "using latest as resolved 0s ago (lockfile {}, 4 sources) from the disk cache",
        t.bundle.lockfile_hash.to_prefixed()
    );
    for needle in [&format!("cannot reach {name}: connection refused"), &bundle] {
        assert!(
            warning.contains(needle.as_str()),
            "{needle:?} not in {warning}"
        );
    }
    println!("pull from the cache: {took:?}: {warning}");

    // verify asks the registry itself: the cache cannot vouch for it. The
    // one attempt marks the registry down, so the chunks fail at once.
    let started = Instant::now();
    let out = offline(&["verify"]);
    let run = Run {
        command: "verify",
        out,
        took: started.elapsed(),
    };
    run.fails_within(SLACK, 8, &[&format!("cannot reach {name}")]);
}

/// Runs `command` to its end, measuring its peak memory: its output, how
/// long it took, and its max RSS in bytes (`wait4`, this child alone).
#[allow(clippy::zombie_processes)] // reaped by `wait4`, which std cannot do
fn run_measured(mut command: Command) -> (Output, Duration, u64) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.unwrap().read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unreaped child; the pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(
        pid,
        child.id() as i32,
        "{}",
        std::io::Error::last_os_error()
    );
    let took = started.elapsed();
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (out, took, usage.ru_maxrss as u64 * 1024)
}

/// Asserts a command met a hostile claim well: no signal, exit 3 or 8 with
/// one line holding `needle`, within `bound`, in at most [`MAX_RSS`].
fn assert_refused_claim(what: &str, command: Command, bound: Duration, needle: &str) {
    let (out, took, rss) = run_measured(command);
    assert_eq!(
        out.status.signal(),
        None,
        "{what}: killed by a signal: {}",
        stderr(&out)
    );
    let code = out.status.code().unwrap();
    assert!(
        matches!(code, 3 | 8),
        "{what}: exit {code}: {}",
        stderr(&out)
    );
    let text = assert_fails(&out, code, needle);
    assert!(rss < MAX_RSS, "{what}: max RSS {} MiB", rss >> 20);
    assert!(took <= bound, "{what}: {took:?} over {bound:?}");
    println!(
        "{what}: exit {code} in {took:?}, max RSS {} MiB: {}",
        rss >> 20,
        text.trim()
    );
}

#[test]
fn a_content_length_of_terabytes_or_an_endless_body_is_refused_in_modest_memory() {
    let t = setup(false);
    let chunk = t.chunk(0).to_hex();
    let cases = [
        (
            "manifest claiming 2 TiB",
            "/manifests/latest",
            Fault::HugeLength,
            "announced",
        ),
        (
            "endless manifest",
            "/manifests/latest",
            Fault::Endless,
            "sent more than",
        ),
        (
            "chunk claiming 2 TiB",
            chunk.as_str(),
            Fault::HugeLength,
            "announced",
        ),
        (
            "endless chunk",
            chunk.as_str(),
            Fault::Endless,
            "sent more than",
        ),
    ];
    for (what, pattern, fault, needle) in cases {
        t.registry.fault(pattern, &[fault; 50]);
        let out_db = t.dir.path().join("restored.db");
        let command = t.command_at(&t.registry.url(), &["pull", "--out-db", s(&out_db)], &[]);
        assert_refused_claim(what, command, secs("30"), needle);
        assert!(!out_db.exists(), "{what}: left {out_db:?}");
        t.registry.clear_faults();
    }
}

#[test]
fn a_build_cache_manifest_claiming_terabytes_is_invalid_input_at_once() {
    let t = setup(false);
    let good = String::from_utf8(t.registry.manifest(SCOPE, "latest")).unwrap();
    let config = format!("\"size\": {}", t.bundle.lockfile_bytes.len());
    assert!(good.contains(&config), "{good}");
    t.registry.set_manifest(
        SCOPE,
        "huge-config",
        good.replacen(&config, &format!("\"size\": {HUGE}"), 1)
            .into_bytes(),
    );
    let command = t.command_at(
        &t.registry.url(),
        &["pull", "--out-db", s(&t.dir.path().join("a.db"))],
        &["--ref", "huge-config"],
    );
    assert_refused_claim("config claiming 2 TiB", command, SLACK, &HUGE.to_string());

    // Every layer claims 2 TiB: the first chunk read refuses it.
    let layer = serde_json::from_str::<serde_json::Value>(&good).unwrap()["layers"][0]["size"]
        .as_u64()
        .unwrap();
    let huge_layers = good.replace(&format!("\"size\": {layer}"), &format!("\"size\": {HUGE}"));
    t.registry
        .set_manifest(SCOPE, "huge-layer", huge_layers.into_bytes());
    let command = t.command_at(
        &t.registry.url(),
        &["pull", "--out-db", s(&t.dir.path().join("b.db"))],
        &["--ref", "huge-layer"],
    );
    assert_refused_claim("layer claiming 2 TiB", command, SLACK, &HUGE.to_string());
}

/// A real distribution registry in `<dir>/registry`, with `db` pushed to
/// it in the packed layout as `tag`.
fn push_packed(registry: &Distribution, dir: &Path, db: &Path, tag: &str) {
    let local = dir.join("local");
    let args = ["push", "--db", s(db), s(&local), "--tag", tag];
    let out = remote_command(dir, &registry.url(), &args)
        .args(["--layout", "packed"])
        .output()
        .unwrap();
    assert_ok(&out);
}

/// The OCI manifest `tag` names on `registry`.
fn manifest_of(registry: &Distribution, tag: &str) -> serde_json::Value {
    let reply = registry.request(
        "GET",
        &format!("/v2/mache/{SCOPE}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// Sets the size of every layer of `media_type` to [`HUGE`] and tags the
/// result `tag`.
fn put_claiming_huge(
    registry: &Distribution,
    mut manifest: serde_json::Value,
    media_type: &str,
    tag: &str,
) {
    for layer in manifest["layers"].as_array_mut().unwrap() {
        if layer["mediaType"] == media_type {
            layer["size"] = HUGE.into();
        }
    }
    let body = serde_json::to_vec(&manifest).unwrap();
    let reply = registry.put_manifest(&format!("mache/{SCOPE}"), tag, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[test]
fn a_packed_manifest_claiming_a_pack_index_or_packs_of_terabytes_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let db = synthetic_db(dir.path(), 20, 3);
    push_packed(&registry, dir.path(), &db, "latest");
    let manifest = manifest_of(&registry, "latest");
    put_claiming_huge(&registry, manifest.clone(), INDEX_TYPE, "huge-index");
    put_claiming_huge(&registry, manifest, PACK_TYPE, "huge-packs");
    for tag in ["huge-index", "huge-packs"] {
        // A cache of its own: nothing of `latest` helps.
        let cache = dir.path().join(tag);
        let out_db = cache.join("restored.db");
        let mut command =
            remote_command(&cache, &registry.url(), &["pull", "--out-db", s(&out_db)]);
        command.args(["--ref", tag]);
        assert_refused_claim(tag, command, secs("5"), &HUGE.to_string());
        assert!(!out_db.exists());
    }
}

/// A db of raw sources (no `_ast`, so an empty file is an empty chunk)
/// named `a`, `b`, … with these contents.
fn db_of(dir: &Path, name: &str, contents: &[&[u8]]) -> std::path::PathBuf {
    let ids: Vec<String> = (0..contents.len())
        .map(|i| format!("{}.txt", (b'a' + i as u8) as char))
        .collect();
    let sources: Vec<Src> = ids
        .iter()
        .zip(contents)
        .map(|(id, content)| Src::at(id, Some("text"), content))
        .collect();
    let db = dir.join(name);
    make_db(&db, &sources, None);
    db
}

/// Bundles with empty files first, in the middle, last, and only.
fn bundles_with_empty_files(dir: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let cases: [(&str, &[&[u8]]); 4] = [
        ("first", &[b"", b"one\n", b"two\n"]),
        ("middle", &[b"one\n", b"", b"two\n", b"three\n"]),
        ("last", &[b"one\n", b"two\n", b""]),
        ("only", &[b"", b"", b""]),
    ];
    cases
        .into_iter()
        .map(|(tag, contents)| (tag, db_of(dir, &format!("{tag}.db"), contents)))
        .collect()
}

/// Pulls each tag from the registry at `url` (a cache of its own each) and
/// compares it with the db pushed.
fn assert_pulls_equal(dir: &Path, url: &str, bundles: &[(&str, std::path::PathBuf)]) {
    for (tag, db) in bundles {
        let cache = dir.join(format!("pull-{tag}"));
        let restored = cache.join("restored.db");
        let out = remote_command(
            &cache,
            url,
            &["pull", "--out-db", s(&restored), "--ref", tag],
        )
        .output()
        .unwrap();
        assert_ok(&out);
        assert_eq!(dump_sources(&restored), dump_sources(db), "{tag}");
    }
}

#[test]
fn empty_files_first_in_the_middle_last_or_only_of_a_pack_pull_whole() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&dir.path().join("registry"));
    let bundles = bundles_with_empty_files(dir.path());
    for (tag, db) in &bundles {
        push_packed(&registry, dir.path(), db, tag);
    }
    let packs_of_only: Vec<String> = manifest_of(&registry, "only")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == PACK_TYPE)
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_pulls_equal(dir.path(), &registry.url(), &bundles);
    // A bundle of empty files alone needs no chunk request.
    for pack in packs_of_only {
        assert_eq!(registry.count("GET", &pack), 0, "{pack}");
    }
}

#[test]
fn empty_files_pull_whole_over_serve_in_the_build_cache_layout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &dir.path().join("served"), &[]);
    let url = format!("http://{}", server.addr);
    let bundles = bundles_with_empty_files(dir.path());
    for (tag, db) in &bundles {
        let local = dir.path().join("local");
        let args = ["push", "--db", s(db), s(&local), "--tag", tag];
        let out = remote_command(dir.path(), &url, &args)
            .args(["--layout", "v1", "--json"])
            .output()
            .unwrap();
        let pushed = json_of(out);
        assert_eq!(pushed["remote"]["layout"], "build-cache/v1", "{pushed:#}");
    }
    assert_pulls_equal(dir.path(), &url, &bundles);
}
