//! The load test's clients: pullers that fetch the manifest and a blob
//! over and over, and pushers that upload fresh blobs in sessions, push a
//! manifest naming each and read it back, all over kept-alive connections
//! (reqwest, one pool), every blob re-hashed against its digest. Only
//! whole-blob `GET` latencies are recorded, for the percentiles.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard and how long to load the server.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub pullers: usize,
    pub pushers: usize,
    pub duration: Duration,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Blobs fetched whole and re-hashed.
    pub pulls: u64,
    /// Blobs pushed (and their manifests), then read back.
    pub pushes: u64,
    /// Requests that failed or were answered with an unexpected status.
    pub errors: u64,
    /// The first few failures, for the assertion message.
    pub first_errors: Vec<String>,
    /// Blobs whose bytes did not hash to their digest.
    pub corrupt: u64,
    /// Every whole-blob `GET`'s latency.
    pub latencies: Vec<Duration>,
}

/// `len` bytes no other `seed` gives.
pub fn blob_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// `sha256:<BLAKE3 hex>`: the build-cache/v1 digest.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", blake3::hash(bytes).to_hex())
}

/// The `p`th percentile (0–100) of `latencies`, sorted in place.
pub fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    assert!(!latencies.is_empty(), "no latencies recorded");
    latencies.sort_unstable();
    let rank = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
    latencies[rank]
}

struct Shared {
    base: String,
    name: String,
    client: reqwest::Client,
    /// Every blob there is to pull: the seeded ones, then each pushed.
    digests: Mutex<Vec<String>>,
    deadline: Instant,
    pulls: AtomicU64,
    pushes: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }

    /// Fetches one blob whole, re-hashes it and records the latency.
    async fn pull_blob(&self, digest: &str) {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.name);
        let start = Instant::now();
        let fetched = async {
            let response = self.client.get(&url).send().await?.error_for_status()?;
            response.bytes().await
        };
        match fetched.await {
            Ok(bytes) => {
                self.latencies.lock().unwrap().push(start.elapsed());
                self.pulls.fetch_add(1, Ordering::Relaxed);
                if digest_of(&bytes) != digest {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.fail(format!("GET {digest}: {e}")),
        }
    }
}

/// Runs `load` against the server at `addr` (`IP:PORT`), whose repository
/// `name` has the blobs `seeded` and a manifest tagged `latest`.
pub fn run(addr: &str, name: &str, seeded: &[String], load: Load) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_async(addr, name, seeded, load))
}

/// One client fetching `requests` blobs in turn, alone: the unloaded
/// latencies.
pub fn baseline(addr: &str, name: &str, seeded: &[String], requests: usize) -> Vec<Duration> {
    let load = Load {
        pullers: 0,
        pushers: 0,
        duration: Duration::ZERO,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let shared = shared(addr, name, seeded, load);
        for i in 0..requests {
            shared.pull_blob(&seeded[i % seeded.len()]).await;
        }
        assert_eq!(shared.errors.load(Ordering::Relaxed), 0);
        assert_eq!(shared.corrupt.load(Ordering::Relaxed), 0);
        std::mem::take(&mut *shared.latencies.lock().unwrap())
    })
}

fn shared(addr: &str, name: &str, seeded: &[String], load: Load) -> Arc<Shared> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(Shared {
        base: format!("http://{addr}"),
        name: name.to_string(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        digests: Mutex::new(seeded.to_vec()),
        deadline: Instant::now() + load.duration,
        pulls: AtomicU64::default(),
        pushes: AtomicU64::default(),
        corrupt: AtomicU64::default(),
        errors: AtomicU64::default(),
        first_errors: Mutex::default(),
        latencies: Mutex::default(),
    })
}

async fn run_async(addr: &str, name: &str, seeded: &[String], load: Load) -> Report {
    let shared = shared(addr, name, seeded, load);
    let mut tasks = Vec::new();
    for puller in 0..load.pullers {
        tasks.push(tokio::spawn(pull(shared.clone(), puller)));
    }
    for pusher in 0..load.pushers {
        tasks.push(tokio::spawn(push(shared.clone(), pusher)));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let shared = Arc::into_inner(shared).expect("every task is done");
    Report {
        pulls: shared.pulls.into_inner(),
        pushes: shared.pushes.into_inner(),
        errors: shared.errors.into_inner(),
        first_errors: shared.first_errors.into_inner().unwrap(),
        corrupt: shared.corrupt.into_inner(),
        latencies: shared.latencies.into_inner().unwrap(),
    }
}

/// A puller: the manifest, then one blob, until the deadline.
async fn pull(shared: Arc<Shared>, puller: usize) {
    let manifest = format!("{}/v2/{}/manifests/latest", shared.base, shared.name);
    let mut turn = puller;
    while Instant::now() < shared.deadline {
        let fetched = async {
            let response = shared.client.get(&manifest).send().await?;
            response.error_for_status()?.bytes().await
        };
        if let Err(e) = fetched.await {
            shared.fail(format!("GET manifest: {e}"));
        }
        let digest = {
            let digests = shared.digests.lock().unwrap();
            digests[turn % digests.len()].clone()
        };
        shared.pull_blob(&digest).await;
        turn += 7;
    }
}

/// A pusher: a fresh blob in a session of two `PATCH`es, a manifest
/// naming it under its own tag, both read back, until the deadline.
async fn push(shared: Arc<Shared>, pusher: usize) {
    let mut round = 0;
    while Instant::now() < shared.deadline {
        let len = 64 * 1024 + (round * 97 + pusher * 31) % 8 * 128 * 1024;
        let bytes = blob_bytes(&format!("pusher {pusher} round {round}"), len);
        let digest = digest_of(&bytes);
        match push_one(&shared, pusher, &bytes, &digest).await {
            Ok(()) => {
                shared.pushes.fetch_add(1, Ordering::Relaxed);
                shared.pull_blob(&digest).await;
                shared.digests.lock().unwrap().push(digest);
            }
            Err(e) => shared.fail(format!("push {digest}: {e}")),
        }
        round += 1;
    }
}

async fn push_one(
    shared: &Shared,
    pusher: usize,
    bytes: &[u8],
    digest: &str,
) -> Result<(), String> {
    let client = &shared.client;
    let base = &shared.base;
    let name = &shared.name;
    let expect = |response: reqwest::Response, status: u16| {
        let got = response.status().as_u16();
        match got == status {
            true => Ok(response),
            false => Err(format!("{} answered {got}", response.url().path())),
        }
    };
    let started = client
        .post(format!("{base}/v2/{name}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let started = expect(started, 202)?;
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let half = bytes.len() / 2;
    for (first, part) in [(0, &bytes[..half]), (half, &bytes[half..])] {
        let range = format!("{first}-{}", first + part.len() - 1);
        let patched = client
            .patch(format!("{base}{location}"))
            .header("Content-Range", range)
            .body(part.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        expect(patched, 202)?;
    }
    let finished = client
        .put(format!("{base}{location}?digest={digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    expect(finished, 201)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/octet-stream", "digest": digest, "size": bytes.len()},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": bytes.len()}],
    })
    .to_string();
    let tag = format!("{base}/v2/{name}/manifests/pusher-{pusher}");
    let put = client
        .put(&tag)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    expect(put, 201)?;
    let got = client.get(&tag).send().await.map_err(|e| e.to_string())?;
    let got = expect(got, 200)?.bytes().await.map_err(|e| e.to_string())?;
    if got != manifest.as_bytes() {
        return Err(format!("manifest pusher-{pusher} read back differs"));
    }
    Ok(())
}
