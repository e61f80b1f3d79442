//! Metadata stays prompt while every reader waits on a hung registry: 32
//! `cat`s of cold files hang on blobs the registry never finishes sending,
//! and meanwhile `stat`, `ls`, `find`, the status file and `statfs` each
//! answer within [`BOUND`]. Then the registry is released and every reader
//! gets its file's bytes.
//!
//! The registry is reached through a [`Relay`] that can cut every
//! connection it carries: cutting the stalled ones is what releases the
//! readers (their client retries a body cut short, and the retry gets the
//! blob, since the registry stalls only the first 32 blob requests).

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::fake_registry::{FakeRegistry, Fault};
use crate::harness::{READY_DEADLINE, Sample, TestMount, sample};

const SCOPE: &str = "team/starvation";
/// Readers hung at once.
const READERS: usize = 32;
/// How long each metadata request may take with every reader hung, which
/// would be for as long as the registry stalls (until the test cuts it) if
/// metadata waited behind the readers. The target, 10 ms, is the
/// benchmark's to measure (`scripts/bench-resilience.sh`); the test only
/// tells answered from starved, with room for a 2-core machine loaded by
/// builds (100 ms was exceeded there by starting `ls` alone).
const BOUND: Duration = Duration::from_secs(1);

#[test]
fn metadata_answers_promptly_while_32_readers_hang_on_the_registry_without_a_sizes_index() {
    hung_readers_leave_metadata_prompt(true);
}

#[test]
fn metadata_answers_promptly_while_32_readers_hang_on_the_registry_with_a_sizes_index() {
    hung_readers_leave_metadata_prompt(false);
}

fn hung_readers_leave_metadata_prompt(without_sizes: bool) {
    let sample = sample();
    let bundle = sample.bundle();
    let store = mache_cachefs::store::LocalStore::open(&sample.store).unwrap();
    let registry = FakeRegistry::start();
    registry.serve_bundle(&store, &bundle, SCOPE, "latest", without_sizes);
    let relay = Relay::start(registry.addr);
    let mut m = TestMount::dirs();
    // Budgets far beyond the test: the readers must still be waiting
    // whenever the metadata is timed.
    m.mount_daemon_from(
        &["--remote", &relay.url(), "--scope", SCOPE],
        &[
            "--retry-budget",
            "600",
            "--read-timeout",
            "600",
            "--offline-after",
            "600",
        ],
    );
    // Without a sizes index, whether `ast/` exists is learned from the
    // first source's chunk: learn it while the registry still answers.
    timed("ls", Command::new("ls").arg(&m.mnt));
    let cold = cold_files(sample, READERS + 1);
    let (readers, others) = cold.split_at(READERS);

    let blob_gets = || registry.count(&format!("GET /v2/mache/{SCOPE}/blobs/"));
    let before = blob_gets();
    registry.fault("/blobs/", &[Fault::Stall; READERS]);
    let cats = start_readers(&m, readers);
    wait_until("every reader's blob request", || {
        blob_gets() >= before + READERS
    });
    assert_eq!(blob_gets(), before + READERS, "one request per reader");

    let times = time_metadata(&m, sample, &others[0]);
    assert!(
        cats.iter().all(|cat| cat.still_running()),
        "the readers were all still waiting while the metadata was timed"
    );
    for (what, took) in &times {
        eprintln!("without_sizes {without_sizes}: {what}: {took:?}");
        assert!(
            *took < BOUND,
            "{what} took {took:?} with {READERS} readers hung"
        );
    }

    relay.cut();
    for (rel, output) in collect(cats) {
        assert!(output.status.success(), "cat {rel}: {output:?}");
        let original = std::fs::read(sample.tree.join(&rel)).unwrap();
        assert!(output.stdout == original, "cat {rel} read other bytes");
    }
    let status = m.status();
    assert_eq!(status["errors"], 0, "{status:#}");
    assert_eq!(
        status["sizes_index"], !without_sizes,
        "the bundle mounted is the one meant: {status:#}"
    );
}

/// Times each metadata request, as the tools people use make them: the
/// attributes of a directory, a file, and (for a bundle without a sizes
/// index, a fetch that is not stalled) a cold file; listings; a walk of a
/// directory; the status file; `statfs`.
fn time_metadata(m: &TestMount, sample: &Sample, cold: &str) -> Vec<(String, Duration)> {
    let dir = sample
        .files()
        .iter()
        .find_map(|(path, _)| path.split_once('/').map(|(dir, _)| dir.to_string()))
        .expect("a directory in the sample");
    let sources = m.path("sources");
    let mut times = vec![
        timed(
            "stat of a directory",
            Command::new("stat").arg(sources.join(&dir)),
        ),
        timed(
            "stat of mache.lock.toml",
            Command::new("stat").arg(m.path("mache.lock.toml")),
        ),
        timed(
            "stat of a cold file",
            Command::new("stat").arg(sources.join(cold)),
        ),
        timed(
            "ls -la of the root",
            Command::new("ls").arg("-la").arg(&m.mnt),
        ),
        timed("ls of sources/", Command::new("ls").arg(&sources)),
        timed(
            "find of a directory",
            Command::new("find").arg(sources.join(&dir)),
        ),
        timed("stat -f", Command::new("stat").arg("-f").arg(&m.mnt)),
    ];
    let started = Instant::now();
    let status = std::fs::read(m.path(".cachefs/status")).expect("reading .cachefs/status");
    times.push(("reading .cachefs/status".to_string(), started.elapsed()));
    let status: serde_json::Value = serde_json::from_slice(&status).expect("status is JSON");
    assert!(
        status["remote"]["requests"].as_u64().unwrap() >= READERS as u64,
        "{status:#}"
    );
    times
}

/// Runs `cmd`, which must succeed; returns how long it took.
fn timed(what: &str, cmd: &mut Command) -> (String, Duration) {
    let started = Instant::now();
    let output = cmd.stdout(Stdio::null()).output().unwrap();
    let took = started.elapsed();
    assert!(output.status.success(), "{what}: {cmd:?}: {output:?}");
    (what.to_string(), took)
}

/// `n` small files of the sample whose chunks no other source shares (so
/// each is a blob request of its own), leaving out the first source (whose
/// chunk tells, without a sizes index, whether `ast/` exists).
fn cold_files(sample: &Sample, n: usize) -> Vec<String> {
    let bundle = sample.bundle();
    let sources = &bundle.lockfile.sources;
    let mut uses = std::collections::HashMap::new();
    for source in sources {
        *uses.entry(source.chunk_hash).or_insert(0) += 1;
    }
    let small: std::collections::HashSet<String> = sample
        .files()
        .into_iter()
        .filter(|(_, size)| (1..=16 << 10).contains(size))
        .map(|(path, _)| path)
        .collect();
    let picked: Vec<String> = sources[1..]
        .iter()
        .filter(|s| uses[&s.chunk_hash] == 1 && small.contains(&s.path))
        .map(|s| s.path.clone())
        .take(n)
        .collect();
    assert_eq!(
        picked.len(),
        n,
        "the sample has {n} small files of their own"
    );
    picked
}

/// A `cat` of a mounted file.
struct Cat {
    rel: String,
    child: std::process::Child,
}

impl Cat {
    fn still_running(&self) -> bool {
        // `try_wait` needs `&mut`; the pid's /proc entry tells the same.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        stat.is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }
}

fn start_readers(m: &TestMount, files: &[String]) -> Vec<Cat> {
    files
        .iter()
        .map(|rel| Cat {
            rel: rel.clone(),
            child: Command::new("cat")
                .arg(m.path("sources").join(rel))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        })
        .collect()
}

/// Waits for every reader (each on a thread of its own, draining its
/// pipes) and returns what each printed, by file.
fn collect(cats: Vec<Cat>) -> Vec<(String, Output)> {
    let (tx, rx) = mpsc::channel();
    let count = cats.len();
    for Cat { rel, child } in cats {
        let tx = tx.clone();
        std::thread::spawn(move || tx.send((rel, child.wait_with_output().unwrap())));
    }
    let deadline = Instant::now() + READY_DEADLINE;
    (0..count)
        .map(|_| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("every reader finishes once the registry is released")
        })
        .collect()
}

/// Polls `done` until it holds; fails after [`READY_DEADLINE`].
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TCP relay in front of the registry that can cut every connection it
/// carries at once; later connections pass through as before.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (carried, stopped) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                pipe(&client, &server);
                pipe(&server, &client);
                carried.lock().unwrap().extend([client, server]);
            }
        });
        Relay { addr, open, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection open now, both ways.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            match stream.shutdown(Shutdown::Both) {
                Err(e) if e.kind() != ErrorKind::NotConnected => panic!("cutting: {e}"),
                _ => {}
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread until `from` ends, then ends `to`.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
