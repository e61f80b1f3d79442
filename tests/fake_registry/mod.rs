//! A registry in the test process, for what a real one will not do on
//! demand: wrong bytes, a truncated body, a stall, a body trickling at one
//! byte a second, a connection reset mid-body, a `Content-Length` of
//! terabytes or an endless body, 5xx and 429 answers, a bearer challenge
//! whose tokens expire; and, registry-wide, down (connections closed
//! unanswered) or a blackhole (connections accepted, never answered). A
//! TLS hello is answered as a plain-http server would (`400`), so a client
//! given `https://` of it meets a TLS handshake failure. It speaks just
//! enough of the OCI Distribution API (GET/HEAD of manifests and blobs,
//! `tags/list`, a token endpoint) over plain HTTP/1.1, one request per
//! connection, and logs every request (a TLS hello as `TLS hello`).
//!
//! Beside it, for the faults no server makes: [`Refused`], a loopback port
//! with nothing listening, and [`UNRESOLVABLE`], a registry whose name
//! does not resolve. [`Served`] is a pushed bundle served by a fake,
//! with the binary run against it (or any URL) with a cache of its own.
//!
//! It uses `crate::common`, so the test crate must declare `mod common;`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mache_cachefs::hash::Hash;

use crate::http_wire::{ServerRequest as Request, read_request};
use mache_cachefs::oci::{MANIFEST_TYPE, Manifest, v1_digest};
use mache_cachefs::store::{Bundle, LocalStore};

use crate::common::{Node, Src, bin, make_db, run_ok, s};

/// The scope [`setup`] serves its bundle under.
pub const SCOPE: &str = "team/repo";

/// A pushed local bundle of a few sources with `_ast` (one of them empty),
/// served by a fake as `mache/<SCOPE>:latest`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// The db that was pushed, to compare a pull with.
    pub db: PathBuf,
    pub bundle: Bundle,
    pub registry: FakeRegistry,
}

/// Pushes the sample db to a store and serves it (without the sizes index,
/// as the Go mache pushes, if `without_sizes`).
pub fn setup(without_sizes: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at(
            "src/main.go",
            Some("go"),
            b"package main\n\nfunc main() {}\n",
        ),
        Src::at("src/auth.go", Some("go"), b"package main // auth\n"),
        Src::at("README.md", Some("markdown"), b"# readme\n"),
        Src::at("empty.txt", Some("text"), b""),
    ];
    let nodes: [Node; 2] = [
        (
            "src/main.go/File",
            "src/main.go",
            "source_file",
            [0, 30, 0, 0, 3, 0],
        ),
        (
            "src/auth.go/File",
            "src/auth.go",
            "source_file",
            [0, 21, 0, 0, 1, 0],
        ),
    ];
    make_db(&db, &sources, Some(&nodes));
    let store_dir = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store_dir)]);
    let store = LocalStore::open(&store_dir).unwrap();
    let bundle = store.resolve("latest").unwrap();
    let registry = FakeRegistry::start();
    registry.serve_bundle(&store, &bundle, SCOPE, "latest", without_sizes);
    Setup {
        dir,
        db,
        bundle,
        registry,
    }
}

impl Setup {
    /// `--remote <the fake> --scope SCOPE`.
    pub fn remote_args(&self) -> Vec<String> {
        vec![
            "--remote".into(),
            self.registry.url(),
            "--scope".into(),
            SCOPE.into(),
        ]
    }

    /// The binary with this test's own disk cache, `args`, the registry at
    /// `url` and `extra`.
    pub fn command_at(&self, url: &str, args: &[&str], extra: &[&str]) -> Command {
        let mut command = remote_command(self.dir.path(), url, args);
        command.args(extra);
        command
    }

    /// Runs the binary against the registry at `url`.
    pub fn run_at(&self, url: &str, args: &[&str], extra: &[&str]) -> Output {
        self.command_at(url, args, extra).output().unwrap()
    }

    /// Runs the binary against the fake.
    pub fn run(&self, args: &[&str], extra: &[&str]) -> Output {
        self.run_at(&self.registry.url(), args, extra)
    }

    /// Pulls from the fake into `<dir>/<name>`: the output and that path.
    pub fn pull(&self, name: &str, extra: &[&str]) -> (Output, PathBuf) {
        let out = self.dir.path().join(name);
        (self.run(&["pull", "--out-db", s(&out)], extra), out)
    }

    /// Whether the disk cache holds `hash`.
    pub fn cached(&self, hash: &Hash) -> bool {
        let hex = hash.to_hex();
        self.dir
            .path()
            .join("cache/mache-cachefs/cache/chunks")
            .join(&hex[..2])
            .join(&hex[2..])
            .is_file()
    }

    /// The chunk of source `i` (in lockfile order).
    pub fn chunk(&self, i: usize) -> Hash {
        self.bundle.lockfile.sources[i].chunk_hash
    }
}

/// The binary with `args` against the registry at `url` (scope [`SCOPE`]),
/// with the disk cache `<dir>/cache` and docker config `<dir>/docker`.
pub fn remote_command(dir: &std::path::Path, url: &str, args: &[&str]) -> Command {
    let mut command = bin();
    command
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("DOCKER_CONFIG", dir.join("docker"))
        .args(args)
        .args(["--remote", url, "--scope", SCOPE]);
    command
}

/// A finished command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a finished command succeeded.
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// Something the registry does instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an OCI error envelope.
    Status(u16),
    /// Answer 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// Serve the body with one byte flipped.
    WrongBytes,
    /// Promise the whole body, send half, close.
    Truncate,
    /// Send the headers, then nothing until the test ends.
    Stall,
    /// Send the headers, then the body at one byte a second.
    Trickle,
    /// Send the headers and half the body, then reset the connection
    /// (`SO_LINGER` 0: an RST, not a FIN).
    ResetMidBody,
    /// Claim a `Content-Length` of [`HUGE`] bytes, then send zeros until
    /// the client hangs up.
    HugeLength,
    /// Send no `Content-Length` (the body ends when the connection does),
    /// then zeros until the client hangs up.
    Endless,
}

/// What a hostile registry claims: 2 TiB.
pub const HUGE: u64 = 2 << 40;

/// A registry whose host name does not resolve (`.invalid` never does,
/// RFC 6761); no server needed. Not loopback: give `--insecure`.
pub const UNRESOLVABLE: &str = "http://mache-test.invalid:5000";

/// Bearer auth: tokens from `/token`, each good for `uses` requests.
struct TokenAuth {
    uses: usize,
    issued: usize,
    left: HashMap<String, usize>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
    faults: Vec<(String, VecDeque<Fault>)>,
    log: Vec<String>,
    auth: Option<TokenAuth>,
    static_token: Option<String>,
    /// Down: every connection is closed at once, unanswered.
    down: bool,
    /// A blackhole: every connection is accepted and never answered.
    blackhole: bool,
}

/// A running fake registry; stops when dropped, and its port then refuses
/// connections.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || handle(stream, addr, &state, &stop));
                }
            })
        };
        FakeRegistry {
            addr,
            state,
            stop,
            listener: Some(listener),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as messages name the registry.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Serves `bundle` of `store` under `mache/<scope>:<tag>` as our push
    /// lays it out (with the sizes index unless `without_sizes`, which is
    /// how the Go mache pushes).
    pub fn serve_bundle(
        &self,
        store: &LocalStore,
        bundle: &Bundle,
        scope: &str,
        tag: &str,
        without_sizes: bool,
    ) {
        let mut lens = Vec::new();
        let mut state = self.state();
        for source in &bundle.lockfile.sources {
            let bytes = std::fs::read(store.object_path(&source.chunk_hash)).unwrap();
            lens.push(bytes.len() as u64);
            state.blobs.insert(v1_digest(&source.chunk_hash), bytes);
        }
        state.blobs.insert(
            v1_digest(&bundle.lockfile_hash),
            bundle.lockfile_bytes.clone(),
        );
        let sizes = (!without_sizes)
            .then_some(bundle.sizes.as_ref())
            .flatten()
            .map(|s| s.to_json());
        if let Some(json) = &sizes {
            state.blobs.insert(v1_digest(&Hash::of(json)), json.clone());
        }
        let sizes_ref = sizes
            .as_ref()
            .map(|json| (Hash::of(json), json.len() as u64));
        let manifest = Manifest::for_bundle(
            &bundle.lockfile,
            &bundle.lockfile_bytes,
            &lens,
            sizes_ref.as_ref().map(|(h, n)| (h, *n)),
        );
        state
            .manifests
            .insert(format!("mache/{scope}:{tag}"), manifest.to_bytes());
    }

    /// Replaces the manifest bytes of `mache/<scope>:<tag>`.
    pub fn set_manifest(&self, scope: &str, tag: &str, bytes: Vec<u8>) {
        self.state()
            .manifests
            .insert(format!("mache/{scope}:{tag}"), bytes);
    }

    /// Replaces a blob's bytes (served under the same digest).
    pub fn set_blob(&self, digest: &str, bytes: Vec<u8>) {
        self.state().blobs.insert(digest.to_string(), bytes);
    }

    pub fn manifest(&self, scope: &str, tag: &str) -> Vec<u8> {
        self.state().manifests[&format!("mache/{scope}:{tag}")].clone()
    }

    /// The next requests whose path contains `pattern` get `faults`, in order.
    pub fn fault(&self, pattern: &str, faults: &[Fault]) {
        self.state()
            .faults
            .push((pattern.to_string(), faults.iter().cloned().collect()));
    }

    /// Drops every fault still queued.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Requires bearer tokens from `/token`, each good for `uses` requests.
    pub fn require_tokens(&self, uses: usize) {
        self.state().auth = Some(TokenAuth {
            uses,
            issued: 0,
            left: HashMap::new(),
        });
    }

    /// Requires this static bearer token.
    pub fn require_static_token(&self, token: &str) {
        self.state().static_token = Some(token.to_string());
    }

    /// Takes the registry down (connections closed unanswered) or back up.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Turns the blackhole on (connections accepted, never read from or
    /// answered, until the registry is dropped) or off.
    pub fn set_blackhole(&self, blackhole: bool) {
        self.state().blackhole = blackhole;
    }

    /// `https://127.0.0.1:PORT`: TLS spoken to this plain-http registry.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.state().auth.as_ref().map_or(0, |a| a.issued)
    }

    /// Requests so far whose line (`METHOD path`) contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the listener and wait until it has closed its socket.
        if TcpStream::connect(self.addr).is_ok()
            && let Some(listener) = self.listener.take()
        {
            let _ = listener.join();
        }
    }
}

fn respond(
    mut stream: &TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    if !head_only {
        let _ = stream.write_all(body);
    }
}

fn error(stream: &TcpStream, status: u16, code: &str, message: &str, extra: &[(&str, String)]) {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    headers.extend(extra.iter().cloned());
    respond(stream, status, &headers, body.as_bytes(), false);
}

/// Checks auth; answers 401 and returns false when the request may not pass.
fn authorized(
    stream: &TcpStream,
    addr: SocketAddr,
    state: &Mutex<State>,
    request: &Request,
) -> bool {
    let presented = request
        .headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let mut state = state.lock().unwrap();
    if let Some(expected) = &state.static_token {
        if presented.as_deref() == Some(expected) {
            return true;
        }
        drop(state);
        error(stream, 401, "UNAUTHORIZED", "authentication required", &[]);
        return false;
    }
    let Some(auth) = state.auth.as_mut() else {
        return true;
    };
    if let Some(left) = presented.as_ref().and_then(|t| auth.left.get_mut(t))
        && *left > 0
    {
        *left -= 1;
        return true;
    }
    drop(state);
    let challenge = format!(
        r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:mache/t:pull""#
    );
    error(
        stream,
        401,
        "UNAUTHORIZED",
        "authentication required",
        &[("WWW-Authenticate", challenge)],
    );
    false
}

/// The first byte of a TLS record carrying a handshake (a client hello).
const TLS_HANDSHAKE: u8 = 0x16;

fn handle(stream: TcpStream, addr: SocketAddr, state: &Mutex<State>, stop: &AtomicBool) {
    let (down, blackhole) = {
        let state = state.lock().unwrap();
        (state.down, state.blackhole)
    };
    if down {
        return;
    }
    if blackhole {
        return hold(stop);
    }
    let mut first = [0u8; 1];
    if stream.peek(&mut first).is_ok_and(|n| n == 1) && first[0] == TLS_HANDSHAKE {
        // What a plain-http server says to bytes that are no request.
        state.lock().unwrap().log.push("TLS hello".to_string());
        let mut out = &stream;
        let _ = out.write_all(
            b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let Some(request) = read_request(&stream) else {
        return;
    };
    state
        .lock()
        .unwrap()
        .log
        .push(format!("{} {}", request.method, request.target));
    let head = request.method == "HEAD";
    if request.target.starts_with("/token") {
        let mut guard = state.lock().unwrap();
        let auth = guard.auth.as_mut().expect("tokens are required");
        auth.issued += 1;
        let token = format!("tok-{}", auth.issued);
        auth.left.insert(token.clone(), auth.uses);
        drop(guard);
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
        return respond(&stream, 200, &[], body.as_bytes(), false);
    }
    if !authorized(&stream, addr, state, &request) {
        return;
    }
    let fault = {
        let mut guard = state.lock().unwrap();
        guard
            .faults
            .iter_mut()
            .find(|(pattern, queue)| request.target.contains(pattern.as_str()) && !queue.is_empty())
            .and_then(|(_, queue)| queue.pop_front())
    };
    let body = lookup(state, &request.target);
    match (fault, body) {
        (Some(Fault::Status(status)), _) => {
            error(&stream, status, "UNAVAILABLE", "injected failure", &[])
        }
        (Some(Fault::TooMany(seconds)), _) => error(
            &stream,
            429,
            "TOOMANYREQUESTS",
            "slow down",
            &[("Retry-After", seconds.to_string())],
        ),
        (_, None) => error(&stream, 404, "NOT_FOUND", "unknown", &[]),
        (Some(Fault::WrongBytes), Some((mut bytes, headers))) => {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            respond(&stream, 200, &headers, &bytes, head);
        }
        (Some(Fault::Truncate), Some((bytes, _))) => {
            send_head(&stream, Some(bytes.len() as u64));
            let _ = (&stream).write_all(&bytes[..bytes.len() / 2]);
        }
        (Some(Fault::Stall), Some((bytes, _))) => {
            send_head(&stream, Some(bytes.len() as u64));
            hold(stop);
        }
        (Some(Fault::Trickle), Some((bytes, _))) => {
            send_head(&stream, Some(bytes.len() as u64));
            for byte in bytes {
                if (&stream).write_all(&[byte]).is_err() || !pause(stop, Duration::from_secs(1)) {
                    break;
                }
            }
        }
        (Some(Fault::ResetMidBody), Some((bytes, _))) => {
            send_head(&stream, Some(bytes.len() as u64));
            let _ = (&stream).write_all(&bytes[..bytes.len() / 2]);
            reset(stream);
        }
        (Some(Fault::HugeLength), Some(_)) => {
            send_head(&stream, Some(HUGE));
            if !head {
                flood(&stream, stop);
            }
        }
        (Some(Fault::Endless), Some(_)) => {
            send_head(&stream, None);
            if !head {
                flood(&stream, stop);
            }
        }
        (None, Some((bytes, headers))) => respond(&stream, 200, &headers, &bytes, head),
    }
}

/// Sends a `200` status line and headers, with `Content-Length: len` if
/// given (else the body ends when the connection closes).
fn send_head(mut stream: &TcpStream, len: Option<u64>) {
    let length = len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    let head = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{length}\r\n");
    let _ = stream.write_all(head.as_bytes());
}

/// Sends zeros until the client hangs up or the registry stops.
fn flood(mut stream: &TcpStream, stop: &AtomicBool) {
    let zeros = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) && stream.write_all(&zeros).is_ok() {}
}

/// Holds a connection (by holding its thread) until the registry stops.
fn hold(stop: &AtomicBool) {
    pause(stop, Duration::from_secs(120));
}

/// Waits `duration`, or less if the registry stops: false if it stopped.
fn pause(stop: &AtomicBool, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Closes `stream` with an RST: `SO_LINGER` on with a zero timeout.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// A loopback port with nothing listening: a socket bound to it (so no one
/// else takes it) that never listens, so connections are refused. Free
/// again when dropped.
pub struct Refused {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

impl Refused {
    pub fn new() -> Refused {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a socket we own; the addresses are
        // `sockaddr_in` of the sizes passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let named = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            Refused {
                _socket: socket,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as messages name the registry.
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for Refused {
    fn default() -> Refused {
        Refused::new()
    }
}

/// The bytes and headers at `path`: a manifest or a blob.
/// A body and the headers to send with it.
type Found = (Vec<u8>, Vec<(&'static str, String)>);

fn lookup(state: &Mutex<State>, path: &str) -> Option<Found> {
    let state = state.lock().unwrap();
    if path == "/v2/" {
        return Some((b"{}".to_vec(), vec![]));
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some((name, reference)) = rest.split_once("/manifests/") {
        let bytes = state.manifests.get(&format!("{name}:{reference}"))?.clone();
        let digest = v1_digest(&Hash::of(&bytes));
        let headers = vec![
            ("Content-Type", MANIFEST_TYPE.to_string()),
            ("Docker-Content-Digest", digest),
        ];
        return Some((bytes, headers));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let prefix = format!("{name}:");
        let mut tags: Vec<&str> = state
            .manifests
            .keys()
            .filter_map(|key| key.strip_prefix(&prefix))
            .filter(|tag| !tag.starts_with("sha256:"))
            .collect();
        tags.sort_unstable();
        let body = serde_json::json!({ "name": name, "tags": tags });
        return Some((body.to_string().into_bytes(), vec![]));
    }
    let (_, digest) = rest.split_once("/blobs/")?;
    let bytes = state.blobs.get(digest)?.clone();
    Some((bytes, vec![("Docker-Content-Digest", digest.to_string())]))
}
