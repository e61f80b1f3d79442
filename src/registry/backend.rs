//! Fetching chunks from a registry: whole blobs (build-cache/v1) or
//! `Range` reads of packs, with read-ahead for sequential reads and
//! batched ranges for prefetch. Bytes only: [`Verified`](crate::store::Verified)
//! checks them.
//!
//! Sizes come from the manifest and the pack index, which the registry
//! sent: each request is bounded by [`MAX_BLOB`] or [`MAX_PACK`] whatever
//! they claim. Batches run as tasks on the client's runtime and hand their
//! results to the calling thread through an async channel, so no task ever
//! blocks a runtime thread that user reads need.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};

use futures_util::StreamExt;

use super::client::{Client, header};
use super::frames::{self, Frame};
use super::packed;
use super::{MAX_BLOB, MAX_PACK};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::oci::{LAYOUT_V1, v1_digest};
use crate::store::{Backend, BatchSink, RemoteCounters};

/// The blobs of a repository, fetched by digest, each bounded by the size
/// its manifest gives.
pub(super) struct RegistryBackend {
    client: Client,
    sizes: RwLock<HashMap<Hash, u64>>,
    /// For packed bundles: where each chunk is, and each pack's chunks by offset.
    packed: RwLock<PackedChunks>,
    /// Per pack, the span `(start, end)` a next read continuing the last
    /// one starts in: such reads read ahead.
    recent: Mutex<HashMap<String, (u64, u64)>>,
    jobs: usize,
}

impl RegistryBackend {
    pub(super) fn new(client: Client, jobs: usize) -> RegistryBackend {
        RegistryBackend {
            client,
            sizes: RwLock::new(HashMap::new()),
            packed: RwLock::new(PackedChunks::default()),
            recent: Mutex::new(HashMap::new()),
            jobs,
        }
    }

    /// Records the sizes a build-cache/v1 manifest gives its layers.
    pub(super) fn learn_sizes(&self, sizes: Vec<(Hash, u64)>) {
        self.sizes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(sizes);
    }

    /// Records where a packed bundle of `layout` (`packed/1`, `packed/2`)
    /// keeps its chunks.
    pub(super) fn learn_packs(
        &self,
        locations: HashMap<Hash, packed::Location>,
        layout: &'static str,
    ) {
        let mut packed = self.packed.write().unwrap_or_else(|e| e.into_inner());
        packed.add(locations);
        packed.layout = Some(layout);
    }
}

/// The chunks of the packed bundles resolved so far, by frame.
#[derive(Default)]
struct PackedChunks {
    /// The layout of the last one (what the status file shows).
    layout: Option<&'static str>,
    locations: HashMap<Hash, packed::Location>,
    /// Per pack digest: its frames, sorted by offset, each once.
    frames: HashMap<String, Vec<Member>>,
}

/// Where a frame is in its pack: what orders and finds a pack's frames.
fn frame_key(frame: &Frame) -> (u64, u64) {
    (frame.offset, frame.stored_len)
}

/// A frame of a pack and the chunks in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    frame: Frame,
    /// `(hash, offset, len)` in the frame's decoded bytes.
    chunks: Vec<(Hash, u64, u64)>,
}

impl PackedChunks {
    fn add(&mut self, locations: HashMap<Hash, packed::Location>) {
        let mut by_pack: HashMap<String, Vec<(Hash, packed::Location)>> = HashMap::new();
        for (hash, location) in locations {
            by_pack
                .entry(location.pack.clone())
                .or_default()
                .push((hash, location));
        }
        for (pack, located) in by_pack {
            let frames = self.frames.entry(pack).or_default();
            let mut at: HashMap<(u64, u64), usize> = frames
                .iter()
                .enumerate()
                .map(|(i, m)| (frame_key(&m.frame), i))
                .collect();
            for (hash, location) in located {
                let chunk = (hash, location.offset, location.len);
                match at.get(&frame_key(&location.frame)) {
                    Some(&i) if !frames[i].chunks.contains(&chunk) => frames[i].chunks.push(chunk),
                    Some(_) => {}
                    None => {
                        at.insert(frame_key(&location.frame), frames.len());
                        frames.push(Member {
                            frame: location.frame,
                            chunks: vec![chunk],
                        });
                    }
                }
                self.locations.insert(hash, location);
            }
            frames.sort_unstable_by_key(|m| frame_key(&m.frame));
        }
    }

    /// A window of consecutive `members` of one pack.
    fn window_of(&self, pack: &str, members: Vec<Member>) -> Window {
        let first = members[0].chunks[0].0;
        Window {
            location: self.locations[&first].clone(),
            members,
            pack: self.frames.get(pack).cloned().unwrap_or_default(),
        }
    }

    /// The frames one read of `hash` brings: its own and the ones right
    /// after it in its pack, up to [`READ_AHEAD`] bytes (Nydus's
    /// `amplify_io`). Only when `sequential` (the read continues the
    /// previous one in this pack): a random read takes its own frame alone.
    fn window(
        &self,
        hash: &Hash,
        sequential: impl Fn(&packed::Location) -> bool,
    ) -> Option<Window> {
        let location = self.locations.get(hash)?.clone();
        let frames = self.frames.get(&location.pack)?;
        let start = frames.partition_point(|m| m.frame.offset < location.frame.offset);
        let ahead = if sequential(&location) { READ_AHEAD } else { 0 };
        let mut window: Vec<Member> = Vec::new();
        let mut end = location.frame.offset;
        for member in &frames[start..] {
            let frame = member.frame;
            if frame.offset < end
                || (!window.is_empty() && frame.end() - location.frame.offset > ahead)
            {
                break;
            }
            end = frame.end();
            window.push(member.clone());
        }
        Some(Window {
            location,
            members: window,
            pack: frames.clone(),
        })
    }
}

/// One request of a batch fetch: a blob (build-cache/v1), or a range of
/// consecutive chunks of a pack.
enum Request {
    Blob(Hash, Option<u64>),
    Range(Window),
}

/// What a batch's task tells the thread that waits for it.
enum Batch {
    /// A request for these chunks is going out.
    Starting(Vec<Hash>),
    /// A request's chunks, or its failure.
    Landed(Result<Vec<(Hash, Vec<u8>)>>),
}

impl Request {
    /// The decoded bytes this request brings (as far as known).
    fn raw_len(&self) -> u64 {
        match self {
            Request::Blob(_, size) => size.unwrap_or(0),
            Request::Range(window) => window.chunks().map(|(_, _, len)| len).sum(),
        }
    }

    /// The chunks this request brings.
    fn hashes(&self) -> Vec<Hash> {
        match self {
            Request::Blob(hash, _) => vec![*hash],
            Request::Range(window) => window.chunks().map(|(hash, _, _)| hash).collect(),
        }
    }
}

/// A batch's ranges are cut at a 64th of the bytes it asks for (so the
/// first chunks arrive early, and the last ones late by little), within
/// these bounds.
const MIN_RANGE: u64 = 256 << 10;
const MAX_RANGE: u64 = 8 << 20;
const RANGES_PER_BATCH: u64 = 64;

impl RegistryBackend {
    /// Groups `hashes` into requests, in their order as far as packs allow
    /// (packs in the order `hashes` first names them, each one's frames by
    /// offset): the frames of one pack that hold them and lie next to each
    /// other share a `Range` request (cut as [`RANGES_PER_BATCH`] says).
    fn plan_requests(&self, hashes: &[Hash]) -> Vec<Request> {
        let packed = self.packed.read().unwrap_or_else(|e| e.into_inner());
        let mut packs: Vec<(&str, Vec<Frame>)> = Vec::new();
        let mut pack_at: HashMap<&str, usize> = HashMap::new();
        let mut requests = Vec::new();
        for hash in hashes {
            match packed.locations.get(hash) {
                Some(l) => {
                    let i = *pack_at.entry(&l.pack).or_insert_with(|| {
                        packs.push((&l.pack, Vec::new()));
                        packs.len() - 1
                    });
                    packs[i].1.push(l.frame);
                }
                None => requests.push(Request::Blob(*hash, self.size_of(hash))),
            }
        }
        for (_, wanted) in &mut packs {
            wanted.sort_unstable_by_key(frame_key);
            wanted.dedup();
        }
        let asked: u64 = packs
            .iter()
            .flat_map(|(_, frames)| frames.iter().map(|f| f.stored_len))
            .sum();
        let max_range = (asked / RANGES_PER_BATCH).clamp(MIN_RANGE, MAX_RANGE);
        for (pack, wanted) in packs {
            let all = &packed.frames[pack];
            let member = |frame: &Frame| {
                let i = all
                    .binary_search_by_key(&frame_key(frame), |m| frame_key(&m.frame))
                    .expect("a located frame is a member");
                all[i].clone()
            };
            let mut run: Vec<Member> = Vec::new();
            for frame in wanted {
                let joins = run.last().is_some_and(|last| {
                    last.frame.end() == frame.offset
                        && frame.end() - run[0].frame.offset <= max_range
                });
                if !joins && !run.is_empty() {
                    requests.push(Request::Range(
                        packed.window_of(pack, std::mem::take(&mut run)),
                    ));
                }
                run.push(member(&frame));
            }
            if !run.is_empty() {
                requests.push(Request::Range(packed.window_of(pack, run)));
            }
        }
        requests
    }
}

/// One read of packed chunks: the pack (as the first chunk's location
/// names it), the frames the read brings, and all frames of the pack (what
/// a registry that ignores `Range` sends).
struct Window {
    location: packed::Location,
    members: Vec<Member>,
    pack: Vec<Member>,
}

impl Window {
    /// The chunks the read brings, `(hash, offset, len)` in their frames.
    fn chunks(&self) -> impl Iterator<Item = (Hash, u64, u64)> + '_ {
        self.members.iter().flat_map(|m| m.chunks.iter().copied())
    }
}

/// How far a cold read of a packed chunk reads ahead in its pack.
pub const READ_AHEAD: u64 = 1 << 20;

impl RegistryBackend {
    /// GETs blob `hash`: exactly `size` bytes if known, else at most `limit`.
    pub(super) fn fetch_sized(
        &self,
        hash: &Hash,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let hash = *hash;
        self.client
            .run(async move { get_blob(&client, hash, size, limit).await })
    }

    /// The size the manifest gave blob `hash`, if it named it.
    fn size_of(&self, hash: &Hash) -> Option<u64> {
        self.sizes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .copied()
    }
}

/// GETs the frames of `window` (consecutive in one pack) with one `Range`
/// request and decodes them into their chunks. A registry that ignores
/// `Range` answers the whole pack: then every chunk of it is returned, to
/// be verified and cached at once.
async fn get_pack_range(client: &Client, window: Window) -> Result<Vec<(Hash, Vec<u8>)>> {
    let Window {
        location,
        members,
        pack,
    } = window;
    let start = members
        .first()
        .map_or(location.frame.offset, |m| m.frame.offset);
    let end = members
        .last()
        .map_or(location.frame.end(), |m| m.frame.end());
    if end == start {
        // Only empty frames: there is nothing to ask for (a `Range` cannot
        // name zero bytes, and one past the end of a pack is a 416).
        return decode_members(&members, &[], 0, &location.pack);
    }
    if location.pack_size > MAX_PACK || end - start > MAX_BLOB {
        return Err(Error::BadManifest(format!(
            "pack {} claims {} bytes (a read of {}); at most {MAX_PACK} per pack and {MAX_BLOB} per read are accepted",
            location.pack,
            location.pack_size,
            end - start
        )));
    }
    let url = client.url(&format!("blobs/{}", location.pack));
    let range = format!("bytes={start}-{}", end - 1);
    let found = client
        .get_body(
            url,
            |r| r.header(reqwest::header::RANGE, header(&range)),
            location.pack_size,
            None,
        )
        .await?;
    let Some((headers, body)) = found else {
        return Err(Error::BlobMissing {
            what: "pack",
            digest: location.pack,
            store: client.describe(),
        });
    };
    let whole = !headers.contains_key(reqwest::header::CONTENT_RANGE);
    let expected = if whole {
        location.pack_size
    } else {
        end - start
    };
    if body.len() as u64 != expected {
        return Err(Error::Unreachable {
            registry: client.registry(),
            reason: format!(
                "a read of {expected} bytes of pack {} came with {}",
                location.pack,
                body.len()
            ),
        });
    }
    let (base, members) = if whole { (0, pack) } else { (start, members) };
    let pack = location.pack;
    tokio::task::spawn_blocking(move || decode_members(&members, &body, base, &pack))
        .await
        .expect("decoding frames does not panic")
}

/// The chunks of `members`, whose frames are in `body` (which starts at
/// byte `base` of `pack`), each frame decoded.
fn decode_members(
    members: &[Member],
    body: &[u8],
    base: u64,
    pack: &str,
) -> Result<Vec<(Hash, Vec<u8>)>> {
    let mut chunks = Vec::new();
    for member in members {
        let frame = &member.frame;
        let from = (frame.offset - base) as usize;
        let stored = &body[from..from + frame.stored_len as usize];
        let raw = frames::decode(stored, frame, pack)?;
        for &(hash, offset, len) in &member.chunks {
            chunks.push((hash, raw[offset as usize..(offset + len) as usize].to_vec()));
        }
    }
    Ok(chunks)
}

/// GETs blob `hash`: exactly `size` bytes when known, else at most `limit`
/// (itself at most [`MAX_BLOB`]).
async fn get_blob(client: &Client, hash: Hash, size: Option<u64>, limit: u64) -> Result<Vec<u8>> {
    let limit = limit.min(MAX_BLOB);
    if let Some(size) = size.filter(|size| *size > limit) {
        return Err(Error::BadManifest(format!(
            "blob {} claims {size} bytes; at most {limit} are accepted",
            v1_digest(&hash)
        )));
    }
    let url = client.url(&format!("blobs/{}", v1_digest(&hash)));
    match client
        .get_body(url, |r| r, size.unwrap_or(limit), size)
        .await?
    {
        Some((_, bytes)) => Ok(bytes),
        None => Err(Error::ObjectMissing {
            hash,
            store: client.describe(),
        }),
    }
}

impl Backend for RegistryBackend {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>> {
        let found = self.fetch_around(hash)?;
        found
            .into_iter()
            .find(|(h, _)| h == hash)
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| Error::ObjectMissing {
                hash: *hash,
                store: self.client.describe(),
            })
    }

    fn fetch_around(&self, hash: &Hash) -> Result<Vec<(Hash, Vec<u8>)>> {
        let window = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let sequential = |l: &packed::Location| {
                recent
                    .get(&l.pack)
                    .is_some_and(|&(start, end)| (start..=end).contains(&l.frame.offset))
            };
            self.packed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .window(hash, sequential)
        };
        match window {
            Some(window) => {
                if let (Some(first), Some(last)) = (window.members.first(), window.members.last()) {
                    self.recent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            window.location.pack.clone(),
                            (first.frame.end(), last.frame.end()),
                        );
                }
                let client = self.client.clone();
                self.client
                    .run(async move { get_pack_range(&client, window).await })
            }
            None => Ok(vec![(
                *hash,
                self.fetch_sized(hash, self.size_of(hash), MAX_BLOB)?,
            )]),
        }
    }

    fn fetch_many(&self, hashes: &[Hash], sink: &dyn BatchSink) -> Result<()> {
        let requests = self.plan_requests(hashes);
        let client = self.client.clone();
        let jobs = self.jobs;
        let room = sink.room();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(jobs * 2);
        self.client.runtime_spawn(async move {
            let fetched = futures_util::stream::iter(requests)
                .then(|request| {
                    let room = room.clone();
                    async move {
                        if let Some(room) = room {
                            room.take(request.raw_len()).await;
                        }
                        request
                    }
                })
                .map(|request| {
                    let client = client.clone();
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(Batch::Starting(request.hashes())).await;
                        match request {
                            Request::Blob(hash, size) => get_blob(&client, hash, size, MAX_BLOB)
                                .await
                                .map(|bytes| vec![(hash, bytes)]),
                            Request::Range(window) => get_pack_range(&client, window).await,
                        }
                    }
                })
                .buffer_unordered(jobs);
            let mut fetched = std::pin::pin!(fetched);
            while let Some(result) = fetched.next().await {
                let failed = result.is_err();
                if tx.send(Batch::Landed(result)).await.is_err() || failed {
                    break;
                }
            }
        });
        while let Some(event) = rx.blocking_recv() {
            match event {
                Batch::Starting(hashes) => sink.starting(&hashes),
                Batch::Landed(result) => {
                    for (hash, bytes) in result? {
                        sink.landed(hash, bytes);
                    }
                }
            }
            if sink.stopped() {
                break;
            }
        }
        Ok(())
    }

    fn budget(&self) -> Option<std::time::Duration> {
        Some(self.client.budget())
    }

    fn describe(&self) -> String {
        self.client.describe()
    }

    fn locate(&self, hash: &Hash) -> String {
        format!("{}/blobs/{}", self.client.describe(), v1_digest(hash))
    }

    fn counters(&self) -> Option<RemoteCounters> {
        let c = self.client.counters();
        Some(RemoteCounters {
            remote: self.client.describe(),
            layout: self
                .packed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .layout
                .unwrap_or(LAYOUT_V1)
                .to_string(),
            requests: c.requests.load(Ordering::Relaxed),
            bytes_fetched: c.bytes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            health: self.client.health(),
        })
    }
}
