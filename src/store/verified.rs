//! The one verifying [`ChunkSource`]: a [`Backend`] (and, for remote
//! backends, a [`DiskCache`] in front of it) behind BLAKE3 checks and single
//! flight.
//!
//! Nothing reaches a caller unless it hashes to the name it was asked by:
//! bytes from the disk cache are checked on every read (a bad copy is
//! dropped and fetched again), bytes from the backend before they are
//! cached or returned.
//!
//! - **Single flight, shared outcome.** Concurrent requests for one chunk
//!   wait for the first one's fetch instead of starting their own, whoever
//!   asks (a file, its AST view, prefetch, the `mache.db` build), and all
//!   get its outcome: the bytes, or its error, together. Only a fetch its
//!   leader abandoned (a batch that stopped early) is tried again by each.
//! - **Bounded waits.** Over a remote backend a waiter waits at most the
//!   backend's budget from the moment it asked.
//! - **User reads first.** A batch [`warm`](ChunkSource::warm) leads a
//!   flight for every chunk it will fetch, so a read of one of them that
//!   its request already went out for waits for it rather than asking
//!   again; a read of one still queued behind the batch's other requests
//!   takes the chunk over and fetches it at once.
//! - **Failures remembered.** A chunk that failed verification or is
//!   missing is remembered with a backoff ([`FIRST_BACKOFF`], doubling up
//!   to [`MAX_BACKOFF`]): until it expires every request for it fails at
//!   once with the same error, so a bad chunk costs one fetch, not one per
//!   reader or per `stat`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, BatchSink, ChunkSource, DiskCache, RemoteStatus, Room, StreamSink};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// How long a chunk that failed for good is refused before it is tried again…
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// …doubling with each new failure up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a flight ended.
#[derive(Clone)]
enum Landed {
    Bytes(Arc<Vec<u8>>),
    /// The fetch failed: every waiter fails with this error.
    Failed(Arc<Error>),
    /// The leader gave up without fetching (a batch stopped early): each
    /// waiter fetches for itself.
    Abandoned,
}

impl Landed {
    /// The outcome of a fetch that ended in `result`, `failed` being its
    /// shared error (`None` for a failure its waiters retry themselves).
    fn of(result: &Result<Vec<u8>>, failed: Option<Arc<Error>>) -> Landed {
        match (result, failed) {
            (Ok(bytes), _) => Landed::Bytes(Arc::new(bytes.clone())),
            (Err(_), Some(error)) => Landed::Failed(error),
            (Err(_), None) => Landed::Abandoned,
        }
    }
}

/// One fetch in progress, which others wait for.
#[derive(Default)]
struct Flight {
    /// `None` while in flight.
    landed: Mutex<Option<Landed>>,
    wake: Condvar,
    /// A batch's flight whose request has not gone out yet.
    queued: AtomicBool,
}

impl Flight {
    fn land(&self, landed: Landed) {
        *self.landed.lock().unwrap_or_else(|e| e.into_inner()) = Some(landed);
        self.wake.notify_all();
    }

    /// Blocks until the flight lands, or `deadline` passes (`None`).
    fn wait(&self, deadline: Option<Instant>) -> Option<Landed> {
        let mut landed = self.landed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = landed.as_ref() {
                return Some(outcome.clone());
            }
            landed = match deadline {
                None => self.wake.wait(landed).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.wake
                        .wait_timeout(landed, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// The fetch a caller leads: lands (as abandoned unless an outcome was
/// set) and leaves the table when dropped, whatever happens in between.
struct Lead<'a> {
    flights: &'a Mutex<HashMap<Hash, Arc<Flight>>>,
    hash: Hash,
    flight: Arc<Flight>,
    outcome: Option<Landed>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // A read may have taken a queued chunk over: leave its flight be.
        if flights
            .get(&self.hash)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.hash);
        }
        drop(flights);
        self.flight
            .land(self.outcome.take().unwrap_or(Landed::Abandoned));
    }
}

/// A chunk that failed for good, refused until `until`.
struct Remembered {
    error: Arc<Error>,
    until: Instant,
    backoff: Duration,
}

/// A backend whose bytes are verified, cached on disk if there is a cache,
/// and fetched once however many ask at the same time.
pub struct Verified {
    backend: Arc<dyn Backend>,
    disk: Option<DiskCache>,
    flights: Mutex<HashMap<Hash, Arc<Flight>>>,
    failures: Mutex<HashMap<Hash, Remembered>>,
}

impl Verified {
    /// Wraps `backend`, with `disk` as the tier in front of it (for remote
    /// backends; a local store is its own disk).
    pub fn new(backend: Arc<dyn Backend>, disk: Option<DiskCache>) -> Verified {
        Verified {
            backend,
            disk,
            flights: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The disk cache tier, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// Joins the flight for `hash`, or starts one and leads it (`queued`:
    /// for a batch, whose request goes out later). A read finding a queued
    /// flight takes the chunk over: it leads a flight of its own.
    fn join_or_lead(&self, hash: &Hash, queued: bool) -> Result<Arc<Flight>, Lead<'_>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(hash)
            && (queued || !flight.queued.load(Ordering::Acquire))
        {
            return Ok(flight.clone());
        }
        let flight = Arc::new(Flight {
            queued: AtomicBool::new(queued),
            ..Flight::default()
        });
        flights.insert(*hash, flight.clone());
        Err(Lead {
            flights: &self.flights,
            hash: *hash,
            flight,
            outcome: None,
        })
    }

    /// The error `hash` failed with, while it is remembered.
    fn remembered(&self, hash: &Hash) -> Option<Error> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(hash)
            .filter(|r| r.until > Instant::now())
            .map(|r| r.error.share())
    }

    /// Records how a fetch of `hash` ended: a failure of the chunk itself
    /// (corrupt, missing) is remembered with a growing backoff; a success
    /// forgets it. Failures of the registry as a whole are its health's
    /// business, not a chunk's.
    fn record(&self, hash: &Hash, result: &Result<Vec<u8>>) -> Option<Arc<Error>> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let error = match result {
            Ok(_) => {
                failures.remove(hash);
                return None;
            }
            Err(e) => Arc::new(e.share()),
        };
        if is_chunk_failure(&error) {
            let backoff = failures
                .get(hash)
                .map_or(FIRST_BACKOFF, |r| (r.backoff * 2).min(MAX_BACKOFF));
            failures.insert(
                *hash,
                Remembered {
                    error: error.clone(),
                    until: Instant::now() + backoff,
                    backoff,
                },
            );
        }
        Some(error)
    }

    /// Checks bytes fetched from the backend, keeps them on disk, returns them.
    fn admit(&self, hash: &Hash, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let bytes = self.check(hash, bytes)?;
        self.keep(hash, &bytes);
        Ok(bytes)
    }

    /// Returns bytes fetched from the backend if they hash to `hash`.
    fn check(&self, hash: &Hash, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(Error::Corrupt {
                path: self.backend.locate(hash).into(),
                expected: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Keeps verified bytes in the disk cache, if there is one.
    fn keep(&self, hash: &Hash, bytes: &[u8]) {
        if let Some(disk) = &self.disk {
            disk.put(hash, bytes);
        }
    }

    /// Fetches `hashes` from the backend in one batch (it overlaps the
    /// requests) into the disk cache, each verified, and hands them to
    /// `forward`'s sink if there is one; the first failure. Leads a flight
    /// for each, so reads of them wait for this fetch; one another caller
    /// is already fetching is left to it (and named to the sink as `None`).
    fn fetch_batch(&self, hashes: &[Hash], forward: Option<Forward<'_>>) -> Result<()> {
        let mut leads = HashMap::new();
        let mut wanted = Vec::new();
        for hash in hashes {
            match self.join_or_lead(hash, true) {
                Err(lead) => {
                    leads.insert(*hash, lead);
                    wanted.push(*hash);
                }
                Ok(_) => {
                    if let Some(forward) = &forward {
                        (forward.sink)(*hash, None);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let (keep, kept) = sync_channel(KEEP_QUEUE);
        let kept = Mutex::new(kept);
        std::thread::scope(|scope| {
            let keeper = self.disk.as_ref().map(|disk| {
                for _ in 0..KEEPERS {
                    scope.spawn(|| keep_all(disk, &kept));
                }
                keep
            });
            let batch = BatchLeads {
                verified: self,
                leads: Mutex::new(leads),
                failure: Mutex::new(None),
                forward,
                stopped: AtomicBool::new(false),
                keeper,
            };
            self.backend.fetch_many(&wanted, &batch)?;
            match batch
                .failure
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
            {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    fn fetch_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        if let Some(bytes) = self.disk.as_ref().and_then(|disk| disk.get(hash)) {
            return Ok(bytes);
        }
        let mut wanted = None;
        for (neighbour, bytes) in self.backend.fetch_around(hash)? {
            if neighbour == *hash {
                wanted = Some(self.admit(hash, bytes));
            } else if self.disk.is_some() && self.admit(&neighbour, bytes).is_err() {
                // A bad neighbour is never cached; its own read will fail.
                tracing::warn!("read-ahead: {neighbour} did not verify");
            }
        }
        wanted.unwrap_or_else(|| {
            Err(Error::ObjectMissing {
                hash: *hash,
                store: self.backend.describe(),
            })
        })
    }

    /// Waits for another caller's fetch of `hash`, at most until `deadline`.
    fn wait_for(&self, hash: &Hash, flight: &Flight, deadline: Option<Instant>) -> Result<Vec<u8>> {
        match flight.wait(deadline) {
            Some(Landed::Bytes(bytes)) => Ok(bytes.as_ref().clone()),
            Some(Landed::Failed(error)) => Err(error.share()),
            Some(Landed::Abandoned) => self.fetch_verified(hash),
            None => Err(Error::Unreachable {
                registry: self.backend.describe(),
                reason: format!("chunk {hash} did not arrive within the retry budget"),
            }),
        }
    }
}

/// Failures of one chunk (as opposed to the store being unreachable).
fn is_chunk_failure(error: &Error) -> bool {
    matches!(
        error,
        Error::Corrupt { .. }
            | Error::ObjectMissing { .. }
            | Error::BlobMissing { .. }
            | Error::BadManifest(_)
    )
}

/// The flights a batch leads, landed as its requests start and arrive.
struct BatchLeads<'a> {
    verified: &'a Verified,
    leads: Mutex<HashMap<Hash, Lead<'a>>>,
    failure: Mutex<Option<Error>>,
    /// A streaming batch: where its chunks go, and its room.
    forward: Option<Forward<'a>>,
    /// The sink wants no more.
    stopped: AtomicBool,
    /// Where verified chunks go to be kept in the disk cache (off the
    /// thread that receives them); `None` without a disk cache.
    keeper: Option<SyncSender<Keep<'a>>>,
}

/// A verified chunk to keep in the disk cache, and the flight that lands
/// once it is there.
type Keep<'a> = (Hash, Vec<u8>, Option<Lead<'a>>);

/// Chunks a batch may have waiting to be written into the disk cache.
const KEEP_QUEUE: usize = 256;
/// Threads of a batch writing into the disk cache. Their own threads, not
/// the rayon pool's: a decoder on the pool may be waiting for a flight
/// that only lands once its chunk is on disk.
const KEEPERS: usize = 2;

/// Writes what arrives on `kept` into `disk` until the batch ends, landing
/// each chunk's flight once it is there.
fn keep_all(disk: &DiskCache, kept: &Mutex<Receiver<Keep<'_>>>) {
    loop {
        let next = kept.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((hash, bytes, lead)) = next else {
            return;
        };
        disk.put(&hash, &bytes);
        drop(lead);
    }
}

/// Where a streaming batch hands its verified chunks.
struct Forward<'a> {
    sink: &'a StreamSink<'a>,
    room: Arc<Room>,
}

impl BatchSink for BatchLeads<'_> {
    fn starting(&self, hashes: &[Hash]) {
        let leads = self.leads.lock().unwrap_or_else(|e| e.into_inner());
        for hash in hashes {
            if let Some(lead) = leads.get(hash) {
                lead.flight.queued.store(false, Ordering::Release);
            }
        }
    }

    fn landed(&self, hash: Hash, bytes: Vec<u8>) {
        let checked = self.verified.check(&hash, bytes);
        let failed = self.verified.record(&hash, &checked);
        let lead = self
            .leads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash);
        let lead = lead.map(|mut lead| {
            lead.outcome = Some(Landed::of(&checked, failed));
            lead
        });
        match checked {
            Ok(bytes) => {
                // The consumer first; the disk cache after.
                if let Some(forward) = &self.forward
                    && !(forward.sink)(hash, Some(bytes.clone()))
                {
                    self.stopped.store(true, Ordering::Release);
                }
                // Its flight stays until it is on disk: a read that comes
                // meanwhile waits for it rather than fetching it again.
                if let Some(keeper) = &self.keeper {
                    let _ = keeper.send((hash, bytes, lead));
                }
            }
            Err(e) => {
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn room(&self) -> Option<Arc<Room>> {
        self.forward.as_ref().map(|f| f.room.clone())
    }
}

impl ChunkSource for Verified {
    fn get_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        if let Some(error) = self.remembered(hash) {
            return Err(error);
        }
        let deadline = self.backend.budget().map(|b| Instant::now() + b);
        let mut lead = match self.join_or_lead(hash, false) {
            Ok(flight) => return self.wait_for(hash, &flight, deadline),
            Err(lead) => lead,
        };
        let result = self.fetch_verified(hash);
        let failed = self.record(hash, &result);
        // Others hold the flight beside the table and this lead: share the
        // outcome with them. (One joining after this check finds the chunk
        // in the disk cache, or fetches it itself.)
        if Arc::strong_count(&lead.flight) > 2 {
            lead.outcome = Some(Landed::of(&result, failed));
        } else if let Some(error) = failed {
            lead.outcome = Some(Landed::Failed(error));
        }
        result
    }

    fn warm(&self, hashes: &[Hash]) -> Result<()> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let missing: Vec<Hash> = hashes
            .iter()
            .filter(|h| !disk.contains(h))
            .copied()
            .collect();
        self.fetch_batch(&missing, None)
    }

    fn streamed(&self, hashes: &[Hash], fresh: bool) -> Vec<Hash> {
        let Some(disk) = &self.disk else {
            return Vec::new();
        };
        hashes
            .iter()
            .filter(|h| fresh || !disk.contains(h))
            .copied()
            .collect()
    }

    fn stream(&self, hashes: &[Hash], room: &Arc<Room>, sink: &StreamSink<'_>) -> Result<()> {
        let forward = Forward {
            sink,
            room: room.clone(),
        };
        self.fetch_batch(hashes, Some(forward))
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn remote_status(&self) -> Option<RemoteStatus> {
        Some(RemoteStatus {
            counters: self.backend.counters()?,
            disk_cache: self.disk.as_ref().map(DiskCache::stats),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A backend over a map that counts fetches, each held until the gate opens.
    struct Counting {
        objects: HashMap<Hash, Vec<u8>>,
        fetches: AtomicUsize,
        gate: AtomicBool,
        /// What `budget` reports (a remote backend's retry budget).
        budget: Option<std::time::Duration>,
        /// Batches wait for this gate before their first request starts.
        batch_gate: AtomicBool,
    }

    impl Backend for Counting {
        fn fetch(&self, hash: &Hash) -> Result<Vec<u8>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.wait_for_gate();
            self.objects.get(hash).cloned().ok_or(Error::ObjectMissing {
                hash: *hash,
                store: "counting".into(),
            })
        }

        fn fetch_many(&self, hashes: &[Hash], sink: &dyn BatchSink) -> Result<()> {
            while !self.batch_gate.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            for hash in hashes {
                if sink.stopped() {
                    break;
                }
                sink.starting(std::slice::from_ref(hash));
                sink.landed(*hash, self.fetch(hash)?);
            }
            Ok(())
        }

        fn budget(&self) -> Option<std::time::Duration> {
            self.budget
        }

        fn describe(&self) -> String {
            "counting".into()
        }
    }

    impl Counting {
        fn wait_for_gate(&self) {
            while !self.gate.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
    }

    /// Spins until `ready`, failing the test after ten seconds.
    fn wait_until(what: &str, ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::yield_now();
        }
    }

    fn counting(objects: &[(&Hash, &[u8])]) -> Arc<Counting> {
        Arc::new(Counting {
            objects: objects.iter().map(|(h, b)| (**h, b.to_vec())).collect(),
            fetches: AtomicUsize::new(0),
            gate: AtomicBool::new(true),
            budget: None,
            batch_gate: AtomicBool::new(true),
        })
    }

    /// How many hold the flight of `hash`: the table, the leader, the waiters.
    fn sharing(source: &Verified, hash: &Hash) -> usize {
        let flights = source.flights.lock().unwrap();
        flights.get(hash).map_or(0, Arc::strong_count)
    }

    #[test]
    fn readers_of_a_failing_chunk_share_one_fetch_and_its_failure_is_remembered() {
        let hash = Hash::of(b"good");
        let mut backend = counting(&[(&hash, b"evil")]);
        Arc::get_mut(&mut backend).unwrap().gate = AtomicBool::new(false);
        let source = Verified::new(backend.clone(), None);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| source.get_verified(&hash).unwrap_err()))
                .collect();
            wait_until("8 readers share one flight", || {
                sharing(&source, &hash) >= 9
            });
            backend.gate.store(true, Ordering::SeqCst);
            for reader in readers {
                let err = reader.join().unwrap();
                assert!(matches!(err, Error::Corrupt { expected, .. } if expected == hash));
            }
        });
        assert_eq!(
            backend.fetches.load(Ordering::SeqCst),
            1,
            "one fetch for all"
        );
        // Remembered: refused at once, no fetch, until the backoff expires.
        let err = source.get_verified(&hash).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
        source
            .failures
            .lock()
            .unwrap()
            .get_mut(&hash)
            .unwrap()
            .until = Instant::now();
        assert!(source.get_verified(&hash).is_err());
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 2, "tried again");
        let backoff = source.failures.lock().unwrap()[&hash].backoff;
        assert_eq!(backoff, FIRST_BACKOFF * 2, "and backs off longer");
    }

    #[test]
    fn a_wait_on_another_readers_fetch_ends_at_the_budget() {
        let hash = Hash::of(b"slow");
        let mut backend = counting(&[(&hash, b"slow")]);
        let counting = Arc::get_mut(&mut backend).unwrap();
        counting.gate = AtomicBool::new(false);
        counting.budget = Some(Duration::from_millis(200));
        let source = Verified::new(backend.clone(), None);
        std::thread::scope(|s| {
            let leader = s.spawn(|| source.get_verified(&hash));
            wait_until("the leader fetches", || {
                backend.fetches.load(Ordering::SeqCst) == 1
            });
            let started = Instant::now();
            let err = source.get_verified(&hash).unwrap_err();
            assert!(err.to_string().contains("within the retry budget"), "{err}");
            assert!(started.elapsed() >= Duration::from_millis(200));
            backend.gate.store(true, Ordering::SeqCst);
            assert_eq!(leader.join().unwrap().unwrap(), b"slow");
        });
    }

    #[test]
    fn a_read_of_a_chunk_still_queued_in_a_batch_fetches_it_at_once() {
        let hash = Hash::of(b"queued");
        let mut backend = counting(&[(&hash, b"queued")]);
        Arc::get_mut(&mut backend).unwrap().batch_gate = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let source = Verified::new(
            backend.clone(),
            Some(DiskCache::open(dir.path(), 1 << 20).unwrap()),
        );
        std::thread::scope(|s| {
            let batch = s.spawn(|| source.warm(&[hash]));
            wait_until("the batch leads a flight", || sharing(&source, &hash) >= 2);
            // The batch's request has not gone out: the read goes first.
            assert_eq!(source.get_verified(&hash).unwrap(), b"queued");
            assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
            backend.batch_gate.store(true, Ordering::SeqCst);
            batch.join().unwrap().unwrap();
        });
        assert!(source.flights.lock().unwrap().is_empty());
    }

    #[test]
    fn wrong_bytes_from_a_backend_never_reach_the_caller_or_the_disk_cache() {
        let good = Hash::of(b"good");
        let backend = counting(&[(&good, b"evil")]);
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let source = Verified::new(backend, Some(disk));
        let err = source.get_verified(&good).unwrap_err();
        assert!(matches!(err, Error::Corrupt { expected, .. } if expected == good));
        assert!(!source.disk().unwrap().contains(&good));
    }

    #[test]
    fn a_disk_cache_hit_makes_no_fetch_and_a_corrupt_copy_is_fetched_again() {
        let hash = Hash::of(b"chunk");
        let backend = counting(&[(&hash, b"chunk")]);
        let dir = tempfile::tempdir().unwrap();
        let source = Verified::new(
            backend.clone(),
            Some(DiskCache::open(dir.path(), 1 << 20).unwrap()),
        );
        assert_eq!(source.get_verified(&hash).unwrap(), b"chunk");
        assert_eq!(source.get_verified(&hash).unwrap(), b"chunk");
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
        std::fs::write(source.disk().unwrap().path_of(&hash), b"chunK").unwrap();
        assert_eq!(source.get_verified(&hash).unwrap(), b"chunk");
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(source.disk().unwrap().stats().corrupt, 1);
    }

    /// Streams `hashes` from `source` (what `streamed` picks): the chunks
    /// handed over, in order of arrival.
    fn streamed(source: &Verified, hashes: &[Hash], fresh: bool) -> Result<Vec<(Hash, Vec<u8>)>> {
        let got = Mutex::new(Vec::new());
        let picked = source.streamed(hashes, fresh);
        let room = Arc::new(Room::new(1 << 20));
        source.stream(&picked, &room, &|hash, bytes| {
            got.lock()
                .unwrap()
                .push((hash, bytes.expect("nothing else in flight")));
            true
        })?;
        Ok(got.into_inner().unwrap())
    }

    #[test]
    fn a_fresh_stream_reads_the_backend_past_the_cache_and_finds_its_wrong_bytes() {
        let hash = Hash::of(b"chunk");
        let dir = tempfile::tempdir().unwrap();
        let disk = || Some(DiskCache::open(dir.path(), 1 << 20).unwrap());
        let backend = counting(&[(&hash, b"chunk")]);
        let source = Verified::new(backend.clone(), disk());
        assert_eq!(
            streamed(&source, &[hash], false).unwrap(),
            [(hash, b"chunk".to_vec())]
        );
        assert!(source.disk().unwrap().contains(&hash), "kept on disk");
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
        source.warm(&[hash]).unwrap();
        assert!(
            streamed(&source, &[hash], false).unwrap().is_empty(),
            "a cached chunk is read from the cache, not streamed"
        );
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(streamed(&source, &[hash], true).unwrap().len(), 1);
        assert_eq!(
            backend.fetches.load(Ordering::SeqCst),
            2,
            "a fresh stream reads the store"
        );
        // The store's copy went bad: the good cached copy does not hide it.
        let rotten = Verified::new(counting(&[(&hash, b"chunK")]), disk());
        let err = streamed(&rotten, &[hash], true).unwrap_err();
        assert!(matches!(err, Error::Corrupt { expected, .. } if expected == hash));
    }

    #[test]
    fn a_stream_stops_when_its_sink_wants_no_more() {
        let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10]).collect();
        let hashes: Vec<Hash> = chunks.iter().map(|c| Hash::of(c)).collect();
        let objects: Vec<(&Hash, &[u8])> = hashes
            .iter()
            .zip(&chunks)
            .map(|(h, c)| (h, &c[..]))
            .collect();
        let backend = counting(&objects);
        let source = Verified::new(backend.clone(), None);
        let room = Arc::new(Room::new(1 << 20));
        let handed = AtomicUsize::new(0);
        source
            .stream(&hashes, &room, &|_, _| {
                handed.fetch_add(1, Ordering::SeqCst) < 2
            })
            .unwrap();
        assert_eq!(
            handed.load(Ordering::SeqCst),
            3,
            "stopped after the sink said so"
        );
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn concurrent_requests_for_one_chunk_make_one_fetch() {
        let hash = Hash::of(b"shared");
        let backend = counting(&[(&hash, b"shared")]);
        backend.gate.store(false, Ordering::SeqCst);
        let source = Verified::new(backend.clone(), None);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| assert_eq!(source.get_verified(&hash).unwrap(), b"shared"));
            }
            // Hold the one fetch until all 16 requests share its flight
            // (the map's reference plus one per request).
            let sharing = || {
                let flights = source.flights.lock().unwrap();
                flights.get(&hash).map_or(0, Arc::strong_count)
            };
            wait_until("16 requests share one flight", || sharing() >= 17);
            backend.gate.store(true, Ordering::SeqCst);
        });
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_read_of_a_chunk_being_warmed_waits_for_that_fetch() {
        let hash = Hash::of(b"prefetched");
        let backend = counting(&[(&hash, b"prefetched")]);
        backend.gate.store(false, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let source = Verified::new(
            backend.clone(),
            Some(DiskCache::open(dir.path(), 1 << 20).unwrap()),
        );
        let sharing = || {
            let flights = source.flights.lock().unwrap();
            flights.get(&hash).map_or(0, Arc::strong_count)
        };
        std::thread::scope(|s| {
            s.spawn(|| source.warm(&[hash]).unwrap());
            wait_until("the warm leads a flight", || sharing() >= 2);
            s.spawn(|| assert_eq!(source.get_verified(&hash).unwrap(), b"prefetched"));
            // The table, the warm's lead and the waiting read.
            wait_until("the read joins it", || sharing() >= 3);
            backend.gate.store(true, Ordering::SeqCst);
        });
        assert_eq!(backend.fetches.load(Ordering::SeqCst), 1);
        assert!(source.flights.lock().unwrap().is_empty());
    }
}
