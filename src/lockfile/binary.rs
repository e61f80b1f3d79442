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
pub struct LockfileEncoder {
    message: message::Builder<message::HeapAllocator>,
    sources: u32,
    pushed: u32,
}

/// First-segment words a source is guessed to take: pointers, two hashes,
/// a path of up to 64 bytes and a kind. Only the words written are
/// touched, so a generous guess costs address space, not memory.
const GUESSED_WORDS_PER_SOURCE: usize = 4 + 2 * 6 + 10 + 3;

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
        let mut message = message::Builder::new(
            message::HeapAllocator::new().first_segment_words(first_segment_words),
        );
        let sources = list_len(sources, "sources");
        {
            let mut root = message.init_root::<cache_lockfile::Builder>();
            write_meta(root.reborrow().init_meta(), meta);
            root.reborrow().init_sources(sources);
            write_topology(root, topology);
        }
        LockfileEncoder {
            message,
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
    pub fn finish(mut self, root: &Hash) -> Vec<u8> {
        assert_eq!(
            self.pushed, self.sources,
            "a lockfile finished before all its sources were pushed"
        );
        self.message
            .get_root::<cache_lockfile::Builder>()
            .expect("the root this encoder built")
            .init_root()
            .set_bytes(&root.0);
        // Canonicalizing from a reader pre-sizes the output segment, so it
        // works however large the message is (a bare `set_root_canonical`
        // on a default builder panics once the message outgrows its first
        // segment).
        let canonical = self
            .message
            .into_reader()
            .canonicalize()
            .expect("a message this module just built canonicalizes");
        let segment = Word::words_to_bytes(&canonical);
        let segment_words =
            u32::try_from(canonical.len()).expect("a lockfile message is under 32 GiB");
        let mut out = Vec::with_capacity(8 + segment.len());
        out.extend_from_slice(&0u32.to_le_bytes()); // segment count - 1
        out.extend_from_slice(&segment_words.to_le_bytes());
        out.extend_from_slice(segment);
        out
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
