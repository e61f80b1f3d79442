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
    // Copy into 8-byte aligned storage: the reader needs aligned segments.
    let mut words = Word::allocate_zeroed_vec(input_words);
    Word::words_to_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
    let aligned = &Word::words_to_bytes(&words)[..bytes.len()];

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
    read_lockfile(root, input_words)
}

/// [`decode`], then refuses a foreign producer or an unsupported schema
/// version ([`Lockfile::check_supported`]).
pub fn decode_supported(bytes: &[u8]) -> Result<Lockfile> {
    let lockfile = decode(bytes)?;
    lockfile.check_supported()?;
    Ok(lockfile)
}

/// Encodes a lockfile in canonical form: one segment, standard framing.
///
/// Panics only if a list holds more than 2^29 entries or a string is larger
/// than 512 MiB, limits of the Cap'n Proto encoding itself.
pub fn encode(lockfile: &Lockfile) -> Vec<u8> {
    let mut builder = message::Builder::new(
        message::HeapAllocator::new().first_segment_words(estimate_words(lockfile)),
    );
    write_lockfile(builder.init_root(), lockfile);
    // Canonicalizing from a reader pre-sizes the output segment, so it works
    // however large the message is (a bare `set_root_canonical` on a default
    // builder panics once the message outgrows its first segment).
    let canonical = builder
        .into_reader()
        .canonicalize()
        .expect("a message this module just built canonicalizes");
    let segment = Word::words_to_bytes(&canonical);
    let segment_words = u32::try_from(canonical.len()).expect("a lockfile message is under 32 GiB");
    let mut out = Vec::with_capacity(8 + segment.len());
    out.extend_from_slice(&0u32.to_le_bytes()); // segment count - 1
    out.extend_from_slice(&segment_words.to_le_bytes());
    out.extend_from_slice(segment);
    out
}

fn bad(message: String) -> Error {
    Error::BadLockfile(message)
}

fn capnp_err(what: &str, error: capnp::Error) -> Error {
    bad(format!("{what}: {error}"))
}

/// Reads the root struct. `max_items` bounds up-front allocations: no list
/// of a real message has more elements than its input has words.
fn read_lockfile(root: cache_lockfile::Reader<'_>, max_items: usize) -> Result<Lockfile> {
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
    let mut sources = Vec::with_capacity(capacity(sources_list.len()));
    for (i, entry) in sources_list.iter().enumerate() {
        let field = |name: &str| format!("sources[{i}].{name}");
        sources.push(SourceEntry {
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
        });
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
        sources,
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

/// Sets a text field unless it is empty: an empty string stays a null
/// pointer, as go-capnp writes it.
macro_rules! set_text {
    ($builder:expr, $setter:ident, $value:expr) => {
        if !$value.is_empty() {
            $builder.$setter($value.as_str());
        }
    };
}

fn write_lockfile(mut root: cache_lockfile::Builder<'_>, lockfile: &Lockfile) {
    {
        let meta_value = &lockfile.meta;
        let mut meta = root.reborrow().init_meta();
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
    {
        let sources = &lockfile.sources;
        let mut list = root
            .reborrow()
            .init_sources(list_len(sources.len(), "sources"));
        for (i, s) in sources.iter().enumerate() {
            let mut out = list.reborrow().get(i as u32);
            set_text!(out, set_path, s.path);
            out.reborrow().init_input_hash().set_bytes(&s.input_hash.0);
            out.reborrow().init_chunk_hash().set_bytes(&s.chunk_hash.0);
            set_text!(out, set_kind, s.kind);
        }
    }
    {
        let edges = &lockfile.topology;
        let mut list = root
            .reborrow()
            .init_topology(list_len(edges.len(), "topology"));
        for (i, e) in edges.iter().enumerate() {
            let mut out = list.reborrow().get(i as u32);
            set_text!(out, set_from, e.from);
            set_text!(out, set_to_source, e.to_source);
        }
    }
    root.init_root().set_bytes(&lockfile.root.0);
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
