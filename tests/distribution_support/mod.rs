//! A real CNCF distribution registry (Debian's `docker-registry` 2.8.2) for
//! the integration tests: started on a free port with its own config and
//! storage in a test directory, stopped with SIGTERM (by PID) when dropped,
//! and its access log parsed so tests can count what a client asked for.
//!
//! It stands alone (no `crate::common`), so it can be used as
//! `mod distribution_support;` from `tests/` and through
//! `#[path = "../tests/distribution_support/mod.rs"]` from `mount-tests/`.
//!
//! What the registry writes, in `<dir>`:
//! - `access.log` (its stdout): one combined-log-format line per request,
//!   whatever the status, even for paths no route matches:
//!   `127.0.0.1 - - [25/Nov/2026:15:17:16 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`.
//!   The request counts come from here.
//! - `registry.log` (its stderr): logrus text lines. Requests show up as
//!   `msg="response completed"` (2xx/3xx) or `msg="response completed with
//!   error"` with `http.request.method=…` and `http.request.uri=…` fields,
//!   but not every request has one (an unrouted path has none), so they are
//!   for reading, not counting.
//!
//! If `docker-registry` (or, for auth, `htpasswd`) is missing the harness
//! panics: the tests fail loudly rather than skip.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[allow(unused_imports)] // each test crate uses a part of it
pub use crate::http_wire::*;

/// How long the registry gets to answer `GET /v2/` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `settle` waits for its sentinel to be logged.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the registry gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two polls (of `/v2/`, the log, or the exit).
const POLL: Duration = Duration::from_millis(10);
/// Fresh ports tried when the one picked was taken before the registry bound it.
const PORT_ATTEMPTS: usize = 5;
/// A read or write on a test connection that takes longer than this fails.
/// The query marking the harness's own requests, left out of the counts.
const MARK: &str = "harness=";

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A running `docker-registry serve`.
pub struct Distribution {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// `(user, password)` when htpasswd auth is on.
    credentials: Option<(String, String)>,
    sentinels: AtomicUsize,
}

impl Distribution {
    /// Starts a registry without auth, its config, storage and logs in `dir`,
    /// and returns once `GET /v2/` answers 200.
    pub fn start(dir: &Path) -> Distribution {
        Distribution::launch(dir, None, true)
    }

    /// Starts a registry without auth whose deletes are disabled (the
    /// CNCF registry's default), as [`start`](Self::start) does.
    pub fn start_without_deletes(dir: &Path) -> Distribution {
        Distribution::launch(dir, None, false)
    }

    /// Starts a registry with htpasswd auth for `user`/`password` (a bcrypt
    /// entry made by `htpasswd -Bbn`), and returns once `GET /v2/` answers
    /// 401.
    pub fn start_with_htpasswd(dir: &Path, user: &str, password: &str) -> Distribution {
        Distribution::launch(dir, Some((user.to_string(), password.to_string())), true)
    }

    fn launch(dir: &Path, credentials: Option<(String, String)>, deletes: bool) -> Distribution {
        let binary = binary();
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let htpasswd = credentials
            .as_ref()
            .map(|(user, password)| write_htpasswd(&dir, user, password));
        let config = dir.join("config.yml");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let yml = config_yml(&dir, port, htpasswd.as_deref(), deletes);
            std::fs::write(&config, yml).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
                .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
            let mut registry = Distribution {
                child: Some(child),
                port,
                dir: dir.clone(),
                credentials: credentials.clone(),
                sentinels: AtomicUsize::new(0),
            };
            match registry.wait_until_ready() {
                Ok(()) => return registry,
                Err(status) => {
                    let log = registry.log();
                    registry.child = None;
                    if log.contains("address already in use") && attempt < PORT_ATTEMPTS {
                        continue;
                    }
                    panic!("docker-registry exited ({status}) before it answered; its log:\n{log}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until this registry has bound its port (it logs `listening on
    /// ADDR` after the bind, so a reply cannot come from another test's
    /// registry that took the port first), then polls `GET /v2/` until it
    /// answers as expected. `Err` with the exit status if the process exited
    /// first; panics after [`READY_TIMEOUT`].
    fn wait_until_ready(&mut self) -> Result<(), ExitStatus> {
        let want = match self.credentials {
            Some(_) => 401,
            None => 200,
        };
        let target = format!("/v2/?{MARK}ready");
        let listening = format!("msg=\"listening on {}\"", self.name());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(status);
            }
            if !self.log().contains(&listening) {
                if Instant::now() > deadline {
                    panic!(
                        "docker-registry did not bind {} within {READY_TIMEOUT:?}; log:\n{}",
                        self.name(),
                        self.log()
                    );
                }
                std::thread::sleep(POLL);
                continue;
            }
            if let Ok(reply) = try_http(&self.name(), "GET", &target, &[], b"") {
                assert_eq!(
                    reply.status,
                    want,
                    "GET /v2/ answered {} ({}); log:\n{}",
                    reply.status,
                    reply.text(),
                    self.log()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer GET /v2/ within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.name())
    }

    /// `127.0.0.1:PORT`: the registry's name in a reference.
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding `config.yml`, the logs, `htpasswd` and `data/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The file the registry keeps blob `digest` (`sha256:…`) in.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the registry is running").id()
    }

    /// `(user, password)` when htpasswd auth is on.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The `Authorization` header value for the configured user, if any.
    pub fn authorization(&self) -> Option<String> {
        self.credentials().map(|(u, p)| basic_auth(u, p))
    }

    /// Everything the registry wrote to stderr (logrus lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Everything the registry wrote to stdout (one access line per request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Every request logged so far, in log order, as `(method, uri)` — the
    /// URI as sent (path and query; an absolute-form target as sent, too).
    /// The harness's own requests (readiness polls, `settle` sentinels) are
    /// left out. A request may be logged a moment after its response
    /// reached the client: call [`settle`](Self::settle) first.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests_with_status()
            .into_iter()
            .map(|(method, uri, _)| (method, uri))
            .collect()
    }

    /// Like [`requests`](Self::requests), with the status answered.
    pub fn requests_with_status(&self) -> Vec<(String, String, u16)> {
        parse_access_log(&self.access_log())
            .into_iter()
            .filter(|(_, uri, _)| !uri.contains(MARK))
            .collect()
    }

    /// Requests with this method (exactly) whose URI contains `uri_contains`.
    pub fn count(&self, method: &str, uri_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(m, uri)| m == method && uri.contains(uri_contains))
            .count()
    }

    /// Blob upload sessions opened: `POST …/blobs/uploads/` (monolithic,
    /// chunked, or a cross-repository mount attempt alike).
    pub fn uploads(&self) -> usize {
        self.count("POST", "/blobs/uploads/")
    }

    /// Blob GETs: `GET …/blobs/sha256:…` (HEADs not counted).
    pub fn blob_gets(&self) -> usize {
        self.count("GET", "/blobs/sha256:")
    }

    /// Sends a sentinel request and waits until the access log shows it:
    /// afterwards the counts include every request answered before the
    /// call.
    pub fn settle(&self) {
        let n = self.sentinels.fetch_add(1, Ordering::SeqCst);
        let target = format!("/v2/?{MARK}settle-{n}");
        http(&self.name(), "GET", &target, &[], b"");
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !parse_access_log(&self.access_log())
            .iter()
            .any(|(_, uri, _)| *uri == target)
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel {target} was never logged; access log:\n{}",
                self.access_log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// One request on its own connection, with the configured credentials
    /// unless `headers` carry an `Authorization` of their own. `target` is a
    /// path (`/v2/…`) or an absolute URL on this registry (a `Location`).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpReply {
        self.try_request(method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}; log:\n{}", self.log()))
    }

    /// [`request`](Self::request), returning the I/O error (a reset) instead
    /// of panicking.
    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpReply> {
        let path = target.strip_prefix(&self.url()).unwrap_or(target);
        let auth = self.authorization();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            all.push(("Authorization", auth));
        }
        try_http(&self.name(), method, path, &all, body)
    }

    /// `GET target` (with the credentials, if any).
    pub fn get(&self, target: &str) -> HttpReply {
        self.request("GET", target, &[], b"")
    }

    /// Uploads `bytes` to `repo` as the blob `digest` (POST, then PUT with
    /// the bytes to the `Location` plus `&digest=`), returning the PUT's
    /// reply (201 when the registry took it). Panics if the POST is not 202.
    pub fn upload(&self, repo: &str, digest: &str, bytes: &[u8]) -> HttpReply {
        let post = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
        assert_eq!(post.status, 202, "POST uploads/: {}", post.text());
        let location = post.header("location").expect("a Location");
        let separator = if location.contains('?') { '&' } else { '?' };
        self.request(
            "PUT",
            &format!("{location}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )
    }

    /// Uploads `bytes` under their true SHA-256, asserting 201; returns the digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let reply = self.upload(repo, &digest, bytes);
        assert_eq!(reply.status, 201, "blob PUT: {}", reply.text());
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with an OCI manifest body.
    pub fn put_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> HttpReply {
        self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", OCI_MANIFEST)],
            body,
        )
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after a bounded wait).
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("the registry was running")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        Some(child.wait().unwrap())
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The `docker-registry` binary: on `PATH`, else where Debian puts it.
fn binary() -> PathBuf {
    find_on_path("docker-registry")
        .or_else(|| Some(PathBuf::from("/usr/bin/docker-registry")).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("docker-registry is not installed: run scripts/setup.sh"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Writes `<dir>/htpasswd` with a bcrypt entry for `user`; returns its path.
fn write_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let tool = find_on_path("htpasswd").unwrap_or_else(|| {
        panic!("htpasswd is not installed (Debian apache2-utils): run scripts/setup.sh")
    });
    let out = Command::new(tool)
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd runs");
    assert!(
        out.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// A port nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The registry's `config.yml`. Strings are written as JSON strings, which
/// YAML reads as double-quoted scalars.
fn config_yml(dir: &Path, port: u16, htpasswd: Option<&Path>, deletes: bool) -> String {
    let quote = |p: &Path| serde_json::to_string(p.to_str().expect("a UTF-8 path")).unwrap();
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {deletes}\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: mache-cachefs-tests\n",
        quote(&dir.join("data"))
    );
    if let Some(path) = htpasswd {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: mache-cachefs-tests\n    path: {}\n",
            quote(path)
        ));
    }
    config
}

/// `(method, uri, status)` of each complete combined-log-format line:
/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`. Other lines,
/// and a last line still being written, are skipped.
pub fn parse_access_log(log: &str) -> Vec<(String, String, u16)> {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    complete.lines().filter_map(parse_access_line).collect()
}

fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    let (_, rest) = line.split_once("] \"")?;
    // The request line is quoted with `"` and `\` escaped; a URI on the
    // wire has no spaces, so its three parts split on them.
    let mut parts = rest.splitn(3, ' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    let tail = parts.next()?;
    let (_proto, after) = tail.split_once("\" ")?;
    let status = after.split(' ').next()?.parse().ok()?;
    let uri = uri.replace("\\\"", "\"").replace("\\\\", "\\");
    Some((method.to_string(), uri, status))
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// An OCI image manifest naming `config` and `layers` (`(media type,
/// digest, size)` each), with `annotations` when not empty.
pub fn oci_manifest(
    config: (&str, &str, usize),
    layers: &[(&str, &str, usize)],
    annotations: &[(&str, &str)],
) -> Vec<u8> {
    let descriptor = |(media, digest, size): (&str, &str, usize)| serde_json::json!({"mediaType": media, "digest": digest, "size": size});
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config),
        "layers": layers.iter().map(|l| descriptor(*l)).collect::<Vec<_>>(),
    });
    if !annotations.is_empty() {
        manifest["annotations"] = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    serde_json::to_vec(&manifest).unwrap()
}
