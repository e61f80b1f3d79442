//! A registry in the test process, for what a real one will not do on
//! demand: wrong bytes, a truncated body, a stall, 5xx and 429 answers, a
//! bearer challenge whose tokens expire. It speaks just enough of the OCI
//! Distribution API (GET/HEAD of manifests and blobs, a token endpoint)
//! over plain HTTP/1.1, one request per connection, and logs every request.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mache_cachefs::hash::Hash;
use mache_cachefs::registry::manifest::{MANIFEST_TYPE, Manifest, v1_digest};
use mache_cachefs::store::{Bundle, LocalStore};

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
}

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
}

/// A running fake registry; stops when dropped.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
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
            });
        }
        FakeRegistry { addr, state, stop }
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
        let _ = TcpStream::connect(self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
    })
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

fn handle(stream: TcpStream, addr: SocketAddr, state: &Mutex<State>, stop: &AtomicBool) {
    if state.lock().unwrap().down {
        return;
    }
    let Some(request) = read_request(&stream) else {
        return;
    };
    state
        .lock()
        .unwrap()
        .log
        .push(format!("{} {}", request.method, request.path));
    let head = request.method == "HEAD";
    if request.path.starts_with("/token") {
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
            .find(|(pattern, queue)| request.path.contains(pattern.as_str()) && !queue.is_empty())
            .and_then(|(_, queue)| queue.pop_front())
    };
    let body = lookup(state, &request.path);
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
            let mut out = &stream;
            let header = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            );
            let _ = out.write_all(header.as_bytes());
            let _ = out.write_all(&bytes[..bytes.len() / 2]);
        }
        (Some(Fault::Stall), Some((bytes, _))) => {
            let mut out = &stream;
            let header = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            );
            let _ = out.write_all(header.as_bytes());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (None, Some((bytes, headers))) => respond(&stream, 200, &headers, &bytes, head),
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
    let (_, digest) = rest.split_once("/blobs/")?;
    let bytes = state.blobs.get(digest)?.clone();
    Some((bytes, vec![("Docker-Content-Digest", digest.to_string())]))
}
