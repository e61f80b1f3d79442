//! The binary lockfile (`mache.lock.bin`, the OCI config blob): Cap'n Proto
//! with the standard stream framing (SPEC §2).
//!
//! [`encode`] writes canonical form (one segment), so the bytes are a pure
//! function of the values. [`decode`] accepts any valid encoding (the Go
//! mache writes its non-canonical, possibly multi-segment `Marshal` form) and
//! is safe on untrusted bytes: the input size, the traversal budget and the
//! nesting depth are all bounded, every hash must be exactly 32 bytes, and it
//! never panics.
//!
//! Empty strings are written as null pointers, as go-capnp does, and a null
//! text reads back as `""`. Lists (`sources`, `topology`,
//! `inputProcessors`) are always written, empty or not.

use std::ptr::NonNull;

use capnp::message::{self, ReaderOptions};
use capnp::{Word, serialize};

use super::{Lockfile, Meta, ProcessorVersion, SourceEntry, TopologyEdge};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// The generated schema modules, for callers that need to build or inspect
/// raw messages (tests, tools).
pub use super::generated::{cache_capnp, common_capnp};

use cache_capnp::cache_lockfile;
use common_capnp::hash;

/// Largest binary lockfile [`decode`] accepts (256 MiB, about 1.5 million
/// sources).
pub const MAX_LOCKFILE_BYTES: usize = 256 << 20;

/// Traversal budget per input word. A well-formed lockfile is read about
/// once; the slack absorbs fixed overheads and refuses amplification (many
/// pointers to one large object, huge lists of empty structs).
const TRAVERSAL_WORDS_PER_INPUT_WORD: usize = 4;
/// Extra traversal budget so tiny messages are not refused.
const TRAVERSAL_SLACK_WORDS: usize = 4096;
/// Absolute traversal cap, in 8-byte words.
const TRAVERSAL_CAP_WORDS: usize = TRAVERSAL_WORDS_PER_INPUT_WORD * (MAX_LOCKFILE_BYTES / 8);
/// Pointer nesting limit. The schema is at most five levels deep
/// (root → sources → entry → hash → bytes); anything deeper is hostile.
const NESTING_LIMIT: i32 = 16;

/// Decodes a binary lockfile from any valid Cap'n Proto encoding.
///
/// Structural checks only: it does not check the producer or schema
/// version (see [`decode_supported`]) nor the root (see
/// [`Lockfile::check_root`]).
pub fn decode(bytes: &[u8]) -> Result<Lockfile> {
    read_message(bytes, |root, max_items| {
        let mut sources = Vec::new();
        let kept = &mut sources;
        let mut lockfile = read_lockfile(root, max_items, move |len| {
            kept.reserve(len);
            move |source| {
                kept.push(source);
                Ok(())
            }
        })?;
        lockfile.sources = sources;
        Ok(lockfile)
    })
}

/// [`decode`] that hands each source to `each`, in order, instead of
/// keeping them: the lockfile returned has no sources. Reads a lockfile
/// of a million sources without holding a million entries.
pub fn decode_each_source(
    bytes: &[u8],
    each: impl FnMut(SourceEntry) -> Result<()>,
) -> Result<Lockfile> {
    read_message(bytes, |root, max_items| {
        read_lockfile(root, max_items, |_| each)
    })
}

/// Frames `bytes` as one Cap'n Proto message within the limits, and reads
/// its root with `read` (given a bound on list lengths).
fn read_message<T>(
    bytes: &[u8],
    read: impl FnOnce(cache_lockfile::Reader<'_>, usize) -> Result<T>,
) -> Result<T> {
    if bytes.len() > MAX_LOCKFILE_BYTES {
        return Err(bad(format!(
            "{} bytes is larger than the {} bytes a lockfile may be",
            bytes.len(),
            MAX_LOCKFILE_BYTES
        )));
    }
    if bytes.is_empty() {
        return Err(bad("empty input (no Cap'n Proto message)".into()));
    }
    let input_words = bytes.len().div_ceil(8);
    // The reader needs 8-byte aligned segments: unaligned bytes are copied.
    let mut words;
    let aligned = match bytes.as_ptr().align_offset(8) {
        0 => bytes,
        _ => {
            words = Word::allocate_zeroed_vec(input_words);
            Word::words_to_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
            &Word::words_to_bytes(&words)[..bytes.len()]
        }
    };

    let traversal = input_words
        .saturating_mul(TRAVERSAL_WORDS_PER_INPUT_WORD)
        .saturating_add(TRAVERSAL_SLACK_WORDS)
        .min(TRAVERSAL_CAP_WORDS);
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(traversal))
        .nesting_limit(NESTING_LIMIT);

    let mut rest = aligned;
    let message = serialize::read_message_from_flat_slice(&mut rest, options)
        .map_err(|e| capnp_err("message framing", e))?;
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after the Cap'n Proto message",
            rest.len()
        )));
    }
    let root: cache_lockfile::Reader = message
        .get_root()
        .map_err(|e| capnp_err("root struct", e))?;
    read(root, input_words)
}

/// [`decode`], then refuses a foreign producer or an unsupported schema
/// version ([`Lockfile::check_supported`]).
pub fn decode_supported(bytes: &[u8]) -> Result<Lockfile> {
    let lockfile = decode(bytes)?;
    lockfile.check_supported()?;
    Ok(lockfile)
}

/// Sets a text field unless it is empty: an empty string stays a null
/// pointer, as go-capnp writes it.
macro_rules! set_text {
    ($builder:expr, $setter:ident, $value:expr) => {
        if !$value.is_empty() {
            $builder.$setter($value.as_str());
        }
    };
}

/// Encodes a lockfile in canonical form: one segment, standard framing.
///
/// Panics only if a list holds more than 2^29 entries or a string is larger
/// than 512 MiB, limits of the Cap'n Proto encoding itself.
pub fn encode(lockfile: &Lockfile) -> Vec<u8> {
    let mut encoder = LockfileEncoder::with_first_segment_words(
        &lockfile.meta,
        &lockfile.topology,
        lockfile.sources.len(),
        estimate_words(lockfile),
    );
    for source in &lockfile.sources {
        encoder.push(source);
    }
    encoder.finish(&lockfile.root)
}

/// Encodes a lockfile a source at a time, so that its entries need never
/// all be held as [`SourceEntry`] values: the message grows as they come,
/// and [`finish`](Self::finish) gives the same bytes as [`encode`].
///
/// The message is built in a buffer that becomes the encoded bytes: with
/// the lists written in schema order, as here, the built message is
/// already canonical (checked, else canonicalized by copying), so a
/// lockfile of a million sources is held once, not three times.
pub struct LockfileEncoder {
    // Declared before `framed`: dropped first, while the segment it writes
    // into is still allocated.
    message: message::Builder<FramedFirstSegment>,
    framed: FramedBuffer,
    /// Written after the sources, as canonical order has it.
    topology: Vec<TopologyEdge>,
    sources: u32,
    pushed: u32,
}

/// First-segment words a source is guessed to take: pointers, two hashes,
/// a path of up to 80 bytes and a kind. Only the words written are
/// touched, so a generous guess costs address space, not memory.
const GUESSED_WORDS_PER_SOURCE: usize = 4 + 2 * 6 + 10 + 3;

/// Bytes of the stream framing of a one-segment message: the segment count
/// less one, and the segment's length in words (two `u32`s).
const FRAMING_BYTES: usize = 8;

impl LockfileEncoder {
    /// Starts a lockfile of `meta` and `topology` that will have `sources`
    /// entries.
    ///
    /// Panics if `sources` is 2^29 or more (a Cap'n Proto list limit).
    pub fn new(meta: &Meta, topology: &[TopologyEdge], sources: usize) -> Self {
        let words = 64 + sources.saturating_mul(GUESSED_WORDS_PER_SOURCE);
        let words = u32::try_from(words).unwrap_or(u32::MAX / 2);
        Self::with_first_segment_words(meta, topology, sources, words)
    }

    fn with_first_segment_words(
        meta: &Meta,
        topology: &[TopologyEdge],
        sources: usize,
        first_segment_words: u32,
    ) -> Self {
        let framed = FramedBuffer::new(first_segment_words);
        let mut message = message::Builder::new(FramedFirstSegment {
            lent: framed.segment(),
            handed_out: false,
            rest: message::HeapAllocator::new(),
        });
        let sources = list_len(sources, "sources");
        {
            let mut root = message.init_root::<cache_lockfile::Builder>();
            write_meta(root.reborrow().init_meta(), meta);
            root.init_sources(sources);
        }
        LockfileEncoder {
            message,
            framed,
            topology: topology.to_vec(),
            sources,
            pushed: 0,
        }
    }

    /// How many sources have been pushed.
    pub fn pushed(&self) -> usize {
        self.pushed as usize
    }

    /// Sets the next source.
    ///
    /// Panics if every source announced to [`new`](Self::new) was already
    /// pushed.
    pub fn push(&mut self, source: &SourceEntry) {
        assert!(
            self.pushed < self.sources,
            "more sources pushed than the {} announced",
            self.sources
        );
        let root = self
            .message
            .get_root::<cache_lockfile::Builder>()
            .expect("the root this encoder built");
        let mut list = root.get_sources().expect("the list this encoder built");
        let mut out = list.reborrow().get(self.pushed);
        set_text!(out, set_path, source.path);
        out.reborrow()
            .init_input_hash()
            .set_bytes(&source.input_hash.0);
        out.reborrow()
            .init_chunk_hash()
            .set_bytes(&source.chunk_hash.0);
        set_text!(out, set_kind, source.kind);
        self.pushed += 1;
    }

    /// The canonical bytes of the lockfile, with `root` as its root.
    ///
    /// Panics unless every source announced to [`new`](Self::new) was
    /// pushed.
    pub fn finish(self, root: &Hash) -> Vec<u8> {
        self.finish_in_place_unless(root, false).0
    }

    /// [`finish`](Self::finish), and whether the bytes are the buffer the
    /// message was built in (`copy`: never, to compare).
    fn finish_in_place_unless(mut self, root: &Hash, copy: bool) -> (Vec<u8>, bool) {
        assert_eq!(
            self.pushed, self.sources,
            "a lockfile finished before all its sources were pushed"
        );
        let mut lockfile = self
            .message
            .get_root::<cache_lockfile::Builder>()
            .expect("the root this encoder built");
        write_topology(lockfile.reborrow(), &self.topology);
        lockfile.init_root().set_bytes(&root.0);
        if self.topology.is_empty() {
            self.framed.make_empty_topology_canonical();
        }
        let built_in_place = {
            let segments = self.message.get_segments_for_output();
            match &segments[..] {
                [only] if !copy && self.framed.holds(only) && is_canonical(only) => {
                    Some(only.len() / 8)
                }
                _ => None,
            }
        };
        match built_in_place {
            Some(words) => {
                drop(self.message);
                (self.framed.into_framed(words), true)
            }
            None => (framed_copy(&canonicalize(self.message)), false),
        }
    }
}

/// Whether one segment is a canonical message.
fn is_canonical(segment: &[u8]) -> bool {
    let segments = [segment];
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(None);
    message::Reader::new(message::SegmentArray::new(&segments), options)
        .is_canonical()
        .unwrap_or(false)
}

/// The canonical form of a built message. Canonicalizing from a reader
/// pre-sizes the output segment, so it works however large the message is
/// (a bare `set_root_canonical` on a default builder panics once the
/// message outgrows its first segment).
fn canonicalize<A: message::Allocator>(message: message::Builder<A>) -> Vec<Word> {
    message
        .into_reader()
        .canonicalize()
        .expect("a message this module just built canonicalizes")
}

/// One segment with the stream framing before it.
fn framed_copy(canonical: &[Word]) -> Vec<u8> {
    let segment = Word::words_to_bytes(canonical);
    let mut out = Vec::with_capacity(FRAMING_BYTES + segment.len());
    out.extend_from_slice(&framing(canonical.len()));
    out.extend_from_slice(segment);
    out
}

/// The framing of a one-segment message of `words` words.
fn framing(words: usize) -> [u8; FRAMING_BYTES] {
    let words = u32::try_from(words).expect("a lockfile message is under 32 GiB");
    let mut framing = [0u8; FRAMING_BYTES]; // segment count - 1 = 0
    framing[4..].copy_from_slice(&words.to_le_bytes());
    framing
}

/// A zeroed byte buffer whose bytes after the first [`FRAMING_BYTES`] are a
/// message's first segment, so that once built the message and its framing
/// are one `Vec<u8>`. Only the pages written are ever resident.
struct FramedBuffer {
    bytes: Vec<u8>,
    /// The segment: 8-byte aligned, `words` words; `None` if the buffer's
    /// start was not aligned (then every segment comes from the heap).
    segment: Option<(NonNull<u8>, u32)>,
}

impl FramedBuffer {
    fn new(words: u32) -> Self {
        let mut bytes = vec![0u8; FRAMING_BYTES + words as usize * 8];
        // Not taken as a reference: the builder writes through it.
        let start = bytes.as_mut_ptr();
        let segment = (start.align_offset(8) == 0).then(|| {
            // SAFETY: the buffer is FRAMING_BYTES + 8 * words long, so the
            // segment lies within it; its start is 8-aligned like `start`.
            let first = unsafe { start.add(FRAMING_BYTES) };
            (
                NonNull::new(first).expect("a Vec's pointer is not null"),
                words,
            )
        });
        FramedBuffer { bytes, segment }
    }

    fn segment(&self) -> Option<(NonNull<u8>, u32)> {
        self.segment
    }

    /// Rewrites the tag of the empty `topology` list as canonical form has
    /// it: no element size (a builder writes the schema's). A message not
    /// laid out as expected is left as it is (and then copied canonical).
    fn make_empty_topology_canonical(&mut self) {
        let Some((first, words)) = self.segment else {
            return;
        };
        // SAFETY: the lent segment, `words` words of the buffer; taken
        // through the pointer the builder writes through, and the builder
        // is not used while this slice lives.
        let segment = unsafe { std::slice::from_raw_parts_mut(first.as_ptr(), words as usize * 8) };
        let word = |segment: &[u8], at: usize| {
            segment
                .get(at * 8..at * 8 + 8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        };
        // word 0: the root struct pointer; the struct follows its offset.
        let Some(root) = word(segment, 0).filter(|p| p & 3 == 0) else {
            return;
        };
        let root_struct = 1 + ((root as u32 as i32) >> 2) as isize;
        let data_words = ((root >> 32) & 0xffff) as isize;
        let topology_at = root_struct + data_words + 2; // topology is pointer @2
        let Some(topology) = usize::try_from(topology_at)
            .ok()
            .and_then(|at| word(segment, at))
        else {
            return;
        };
        // An empty list of structs: list pointer, composite, no words.
        if topology & 3 != 1 || (topology >> 32) & 7 != 7 || topology >> 35 != 0 {
            return;
        }
        let tag_at = topology_at + 1 + ((topology as u32 as i32) >> 2) as isize;
        if let Some(tag) = usize::try_from(tag_at)
            .ok()
            .and_then(|at| segment.get_mut(at * 8..at * 8 + 8))
            .filter(|tag| u32::from_le_bytes(tag[..4].try_into().expect("4 bytes")) == 0)
        {
            tag.fill(0);
        }
    }

    /// Whether `segment` is the one this buffer lent.
    fn holds(&self, segment: &[u8]) -> bool {
        self.segment
            .is_some_and(|(first, _)| std::ptr::eq(first.as_ptr().cast_const(), segment.as_ptr()))
    }

    /// The framing and the first `words` words of the segment, the rest
    /// of the buffer given back.
    fn into_framed(mut self, words: usize) -> Vec<u8> {
        self.bytes[..FRAMING_BYTES].copy_from_slice(&framing(words));
        self.bytes.truncate(FRAMING_BYTES + words * 8);
        self.bytes.shrink_to_fit();
        self.bytes
    }
}

/// A Cap'n Proto allocator whose first segment (when big enough) is a
/// [`FramedBuffer`]'s, lent for the builder's life; the others come from
/// the heap.
struct FramedFirstSegment {
    lent: Option<(NonNull<u8>, u32)>,
    handed_out: bool,
    rest: message::HeapAllocator,
}

// SAFETY: the lent segment is zeroed, 8-aligned, `words` words long, handed
// out once, and outlives the builder (`LockfileEncoder` drops the builder
// first); every other segment is the heap allocator's, given back to it.
unsafe impl message::Allocator for FramedFirstSegment {
    fn allocate_segment(&mut self, minimum_size: u32) -> (NonNull<u8>, u32) {
        match self.lent {
            Some((first, words)) if !self.handed_out && words >= minimum_size => {
                self.handed_out = true;
                (first, words)
            }
            _ => self.rest.allocate_segment(minimum_size),
        }
    }

    unsafe fn deallocate_segment(&mut self, ptr: NonNull<u8>, word_size: u32, words_used: u32) {
        if self.lent.is_some_and(|(first, _)| first == ptr) {
            // The buffer's: freed with it.
            return;
        }
        // SAFETY: a segment the heap allocator gave, as the caller promises.
        unsafe { self.rest.deallocate_segment(ptr, word_size, words_used) }
    }
}

fn bad(message: String) -> Error {
    Error::BadLockfile(message)
}

fn capnp_err(what: &str, error: capnp::Error) -> Error {
    bad(format!("{what}: {error}"))
}

/// Reads the root struct, each source handed to the sink `sources` makes
/// (given how many to expect, at most `max_items`); the lockfile returned
/// has no sources. `max_items` bounds up-front allocations: no list of a
/// real message has more elements than its input has words.
fn read_lockfile<Each: FnMut(SourceEntry) -> Result<()>>(
    root: cache_lockfile::Reader<'_>,
    max_items: usize,
    sources: impl FnOnce(usize) -> Each,
) -> Result<Lockfile> {
    let capacity = |len: u32| (len as usize).min(max_items);
    if !root.has_meta() {
        return Err(bad("meta is missing".into()));
    }
    let meta = read_meta(
        root.get_meta().map_err(|e| capnp_err("meta", e))?,
        max_items,
    )?;

    if !root.has_sources() {
        return Err(bad("sources is missing".into()));
    }
    let sources_list = root.get_sources().map_err(|e| capnp_err("sources", e))?;
    let mut each = sources(capacity(sources_list.len()));
    for (i, entry) in sources_list.iter().enumerate() {
        let field = |name: &str| format!("sources[{i}].{name}");
        each(SourceEntry {
            path: read_text(entry.get_path(), &field("path"))?,
            input_hash: read_hash(
                entry.has_input_hash(),
                entry.get_input_hash(),
                &field("inputHash"),
            )?,
            chunk_hash: read_hash(
                entry.has_chunk_hash(),
                entry.get_chunk_hash(),
                &field("chunkHash"),
            )?,
            kind: read_text(entry.get_kind(), &field("kind"))?,
        })?;
    }

    // mache always writes topology; an absent list reads as empty.
    let mut topology = Vec::new();
    if root.has_topology() {
        let edges = root.get_topology().map_err(|e| capnp_err("topology", e))?;
        topology.reserve(capacity(edges.len()));
        for (i, edge) in edges.iter().enumerate() {
            topology.push(TopologyEdge {
                from: read_text(edge.get_from(), &format!("topology[{i}].from"))?,
                to_source: read_text(edge.get_to_source(), &format!("topology[{i}].toSource"))?,
            });
        }
    }

    let root_hash = read_hash(root.has_root(), root.get_root(), "root")?;
    Ok(Lockfile {
        meta,
        sources: Vec::new(),
        topology,
        root: root_hash,
    })
}

fn read_meta(meta: cache_capnp::meta::Reader<'_>, max_items: usize) -> Result<Meta> {
    let mut input_processors = Vec::new();
    if meta.has_input_processors() {
        let list = meta
            .get_input_processors()
            .map_err(|e| capnp_err("meta.inputProcessors", e))?;
        input_processors.reserve((list.len() as usize).min(max_items));
        for (i, p) in list.iter().enumerate() {
            input_processors.push(ProcessorVersion {
                kind: read_text(p.get_kind(), &format!("meta.inputProcessors[{i}].kind"))?,
                version: read_text(
                    p.get_version(),
                    &format!("meta.inputProcessors[{i}].version"),
                )?,
            });
        }
    }
    Ok(Meta {
        producer: read_text(meta.get_producer(), "meta.producer")?,
        producer_version: read_text(meta.get_producer_version(), "meta.producerVersion")?,
        schema_version: read_text(meta.get_schema_version(), "meta.schemaVersion")?,
        input_processors,
        generated_at_ms: meta.get_generated_at_ms(),
    })
}

/// A text field; a null pointer is the empty string.
fn read_text(text: capnp::Result<capnp::text::Reader<'_>>, field: &str) -> Result<String> {
    let text = text.map_err(|e| capnp_err(field, e))?;
    match text.to_str() {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(bad(format!("{field}: text is not valid UTF-8 ({e})"))),
    }
}

/// A required `Hash` struct whose `bytes` must be exactly 32 bytes.
fn read_hash(present: bool, value: capnp::Result<hash::Reader<'_>>, field: &str) -> Result<Hash> {
    if !present {
        return Err(bad(format!("{field} is missing")));
    }
    let value = value.map_err(|e| capnp_err(field, e))?;
    if !value.has_bytes() {
        return Err(bad(format!("{field}.bytes is missing")));
    }
    let bytes = value
        .get_bytes()
        .map_err(|e| capnp_err(&format!("{field}.bytes"), e))?;
    Hash::from_slice(bytes).map_err(|_| {
        bad(format!(
            "{field}: hash must be exactly 32 bytes, got {}",
            bytes.len()
        ))
    })
}

/// A rough upper bound of the message size in words, so building usually
/// fits the first segment.
fn estimate_words(lockfile: &Lockfile) -> u32 {
    let text = |s: &str| s.len() / 8 + 2;
    let meta = 8
        + text(&lockfile.meta.producer)
        + text(&lockfile.meta.producer_version)
        + text(&lockfile.meta.schema_version)
        + lockfile
            .meta
            .input_processors
            .iter()
            .map(|p| 3 + text(&p.kind) + text(&p.version))
            .sum::<usize>();
    let sources: usize = lockfile
        .sources
        .iter()
        .map(|s| 4 + 2 * 6 + text(&s.path) + text(&s.kind))
        .sum();
    let topology: usize = lockfile
        .topology
        .iter()
        .map(|e| 2 + text(&e.from) + text(&e.to_source))
        .sum();
    let total = 16 + meta + sources + topology;
    u32::try_from(total).unwrap_or(u32::MAX / 2)
}

fn list_len(len: usize, what: &str) -> u32 {
    u32::try_from(len)
        .ok()
        .filter(|&n| n < 1 << 29)
        .unwrap_or_else(|| {
            panic!("{what} has {len} entries; Cap'n Proto lists hold fewer than 2^29")
        })
}

fn write_meta(mut meta: cache_capnp::meta::Builder<'_>, meta_value: &Meta) {
    set_text!(meta, set_producer, meta_value.producer);
    set_text!(meta, set_producer_version, meta_value.producer_version);
    set_text!(meta, set_schema_version, meta_value.schema_version);
    let processors = &meta_value.input_processors;
    let mut list = meta
        .reborrow()
        .init_input_processors(list_len(processors.len(), "meta.inputProcessors"));
    for (i, p) in processors.iter().enumerate() {
        let mut out = list.reborrow().get(i as u32);
        set_text!(out, set_kind, p.kind);
        set_text!(out, set_version, p.version);
    }
    meta.set_generated_at_ms(meta_value.generated_at_ms);
}

fn write_topology(root: cache_lockfile::Builder<'_>, edges: &[TopologyEdge]) {
    let mut list = root.init_topology(list_len(edges.len(), "topology"));
    for (i, e) in edges.iter().enumerate() {
        let mut out = list.reborrow().get(i as u32);
        set_text!(out, set_from, e.from);
        set_text!(out, set_to_source, e.to_source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Lockfile {
        let sources: Vec<SourceEntry> = (0..n)
            .map(|i| SourceEntry {
                path: format!("src/file-{i}.go"),
                input_hash: Hash::of(format!("in{i}").as_bytes()),
                chunk_hash: Hash::of(format!("chunk{i}").as_bytes()),
                kind: "go-source".into(),
            })
            .collect();
        Lockfile {
            meta: Meta {
                producer: "mache".into(),
                producer_version: "0.7.1".into(),
                schema_version: "0.1.0".into(),
                input_processors: vec![ProcessorVersion {
                    kind: "blake3".into(),
                    version: "1.5.0".into(),
                }],
                generated_at_ms: 1_748_345_600_000,
            },
            root: Lockfile::compute_root(&sources),
            sources,
            topology: Vec::new(),
        }
    }

    #[test]
    fn round_trips_and_is_canonical() {
        let lockfile = sample(3);
        let bytes = encode(&lockfile);
        assert_eq!(decode(&bytes).unwrap(), lockfile);
        assert_eq!(&bytes[0..4], &[0, 0, 0, 0], "one segment");
        let words = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + words * 8);
        let mut slice = &bytes[..];
        let reader =
            serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new()).unwrap();
        assert!(reader.is_canonical().unwrap());
    }

    fn encoded_by_encoder(lockfile: &Lockfile, copy: bool) -> (Vec<u8>, bool) {
        let mut encoder =
            LockfileEncoder::new(&lockfile.meta, &lockfile.topology, lockfile.sources.len());
        for source in &lockfile.sources {
            encoder.push(source);
        }
        encoder.finish_in_place_unless(&lockfile.root, copy)
    }

    #[test]
    fn a_pushed_lockfile_is_built_canonical_in_place_with_the_bytes_of_a_copy() {
        let lockfile = sample(1000);
        let (in_place, was_in_place) = encoded_by_encoder(&lockfile, false);
        assert!(was_in_place, "built canonical, so not copied");
        let (copied, was_copied_in_place) = encoded_by_encoder(&lockfile, true);
        assert!(!was_copied_in_place);
        assert_eq!(in_place, copied);
        assert_eq!(decode(&in_place).unwrap(), lockfile);
    }

    #[test]
    fn a_message_past_its_first_segment_or_not_canonical_is_copied_canonical() {
        let mut lockfile = sample(50);
        lockfile.sources[3].path = "p".repeat(5000);
        lockfile.sources[7].kind.clear();
        lockfile.topology.push(TopologyEdge {
            from: "a".into(),
            to_source: String::new(),
        });
        let (bytes, in_place) = encoded_by_encoder(&lockfile, false);
        assert!(!in_place, "outgrew its first segment");
        let mut slice = &bytes[..];
        let reader =
            serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new()).unwrap();
        assert!(reader.is_canonical().unwrap());
        assert_eq!(decode(&bytes).unwrap(), lockfile);
        assert_eq!(bytes, encode(&lockfile));
    }

    #[test]
    fn empty_strings_are_null_and_read_back_empty() {
        let mut lockfile = sample(1);
        lockfile.meta.producer_version.clear();
        lockfile.sources[0].kind.clear();
        lockfile.topology.push(TopologyEdge {
            from: String::new(),
            to_source: "x".into(),
        });
        let bytes = encode(&lockfile);
        assert_eq!(decode(&bytes).unwrap(), lockfile);
    }

    #[test]
    fn refuses_empty_and_trailing_input() {
        assert!(matches!(decode(&[]), Err(Error::BadLockfile(_))));
        let mut bytes = encode(&sample(1));
        bytes.extend_from_slice(&[0; 8]);
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn refuses_missing_required_pointers() {
        let mut builder = message::Builder::new_default();
        builder.init_root::<cache_lockfile::Builder>();
        let bytes = serialize::write_message_to_words(&builder);
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("meta is missing"), "{err}");
    }
}
