//! Helpers for the `serve` tests: the real server on a free port (stopped
//! with SIGTERM when dropped) and a minimal HTTP/1.1 client over a plain
//! `TcpStream`, so the tests exercise the wire and nothing of ours sits
//! between them and the server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{bin, s};

pub mod load;

/// A running `mache-cachefs -v serve`, its log in a file.
pub struct Server {
    child: Option<Child>,
    /// `IP:PORT`, read from the server's "listening on" line.
    pub addr: String,
    /// The store it serves.
    pub store: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts the server on `store` with `extra` flags (and `--listen
    /// 127.0.0.1:0` unless they say otherwise), its log at
    /// `<dir>/serve.log`, and waits for its "listening on" line.
    pub fn start(dir: &Path, store: &Path, extra: &[&str]) -> Server {
        let log = dir.join("serve.log");
        let listen: &[&str] = match extra.contains(&"--listen") {
            true => &[],
            false => &["--listen", "127.0.0.1:0"],
        };
        let mut child = bin()
            .args(["-v", "serve", s(store)])
            .args(listen)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no listening line (got {line:?}); log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Server {
            child: Some(child),
            addr,
            store: store.to_path_buf(),
            log,
        }
    }

    /// The port, for clients that want it alone.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Sends one request to the server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        request(&self.addr, method, path, headers, body)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// How many files the server has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the server's /proc entry")
            .count()
    }

    /// Polls until the server's open files satisfy `ok`, or panics after
    /// `within`, naming `what` was awaited.
    pub fn wait_for_fds(
        &self,
        within: std::time::Duration,
        what: &str,
        ok: impl Fn(usize) -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let open = self.open_fds();
            if ok(open) {
                return;
            }
            if std::time::Instant::now() > deadline {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "{what}: still {open} open files after {within:?}; log, last lines first: {tail:#?}"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("the server was running")
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal(&self) {
        let child = self.child.as_ref().expect("the server is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    }

    /// Waits for the exit (after [`signal`](Self::signal)).
    pub fn wait(mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// Waits for the exit (after [`signal`](Self::signal)); the status and
    /// everything logged.
    pub fn wait_for_exit(mut self) -> (ExitStatus, String) {
        let status = self.child.take().unwrap().wait().unwrap();
        (status, self.log())
    }

    /// Waits until the log has a line containing `needle` (or panics
    /// after 10 s): the server's own word that it got somewhere.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} never logged: {}",
                self.log()
            );
            std::thread::yield_now();
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        Some(child.wait().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A response as the wire carried it.
pub use crate::http_wire::HttpReply as Reply;
/// `sha256:<BLAKE3 hex>` (a build-cache/v1 digest) and `sha256:<SHA-256 hex>`.
#[allow(unused_imports)] // each test crate uses a part of it
pub use crate::http_wire::{blake3_as_sha256_digest as b3_digest, sha256_digest as sha_digest};

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    crate::http_wire::http(addr, method, path, headers, body)
}

/// Parses a whole response as read from the socket.
pub fn parse_reply(raw: &[u8], head_only: bool) -> Reply {
    crate::http_wire::parse_reply(raw, head_only)
        .unwrap_or_else(|| panic!("no whole answer in {:?}", String::from_utf8_lossy(raw)))
}

/// Pushes `bytes` in one `POST …/blobs/uploads/?digest=`.
pub fn push_blob(addr: &str, name: &str, digest: &str, bytes: &[u8]) -> Reply {
    let path = format!("/v2/{name}/blobs/uploads/?digest={digest}");
    request(addr, "POST", &path, &[], bytes)
}

/// A manifest naming `config` and `layers` (digest, size) of generic types.
pub fn manifest_of(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let descriptor = |media: &str, (digest, size): (&str, usize)| serde_json::json!({"mediaType": media, "digest": digest, "size": size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", config),
        "layers": layers
            .iter()
            .map(|l| descriptor("application/octet-stream", *l))
            .collect::<Vec<_>>(),
    });
    serde_json::to_vec(&manifest).unwrap()
}

/// Files under `dir/sub`, relative to it, sorted.
pub fn files_in(dir: &Path, sub: &str) -> Vec<PathBuf> {
    crate::common::list_files(&dir.join(sub))
}

/// Raises this process's soft limit on open files to at least `files`
/// (the tests run as root, so the hard limit can rise too); the server,
/// started after, inherits it.
pub fn raise_open_files(files: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < files {
        setrlimit(Resource::RLIMIT_NOFILE, files.max(soft), files.max(hard)).unwrap();
    }
}

/// A connection that sent `head` (part of a request, or all of one) and
/// nothing more.
pub fn connect_and_send(addr: &str, head: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(head).unwrap();
    stream
}

/// Reads from `stream` until the server closes it (or `within` passes,
/// which fails); returns what came.
pub fn read_until_closed(stream: &mut std::net::TcpStream, within: std::time::Duration) -> Vec<u8> {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!(
            "the server did not close the connection within {within:?} ({e}); got {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}
