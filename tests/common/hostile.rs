//! Hostile bundles built by hand: a store in the Go mache's layout (only
//! `objects/` and the top-level `mache.lock.bin`), holding whatever chunks
//! and lockfile entries a test gives, however much they disagree.

use std::path::{Path, PathBuf};

use mache_cachefs::Hash;
use mache_cachefs::lockfile::{Lockfile, Meta, ProcessorVersion, SourceEntry, binary};

/// The content of the sources [`one_source_store`] makes.
pub const CONTENT: &[u8] = b"package a\n";

/// One AST node, `n1`, spanning `start..end` bytes, as chunk JSON.
pub fn node_json(start: i64, end: i64) -> String {
    format!(
        r#"[{{"node_id":"n1","node_kind":"File","start_byte":{start},"end_byte":{end},"start_row":0,"start_col":0,"end_row":1,"end_col":0}}]"#
    )
}

/// A store of one source at `a.go` whose content is [`CONTENT`], stored
/// as `chunk`.
pub fn one_source_store(dir: &Path, chunk: &[u8]) -> PathBuf {
    store(
        dir,
        &[Entry {
            path: "a.go",
            chunk,
            content: CONTENT,
            kind: "go-source",
        }],
    )
}

/// One lockfile entry: where the mount shows it, and the chunk it names.
pub struct Entry<'a> {
    pub path: &'a str,
    pub chunk: &'a [u8],
    /// What the entry's `input_hash` is the BLAKE3 of (the source's bytes).
    pub content: &'a [u8],
    pub kind: &'a str,
}

/// An AST chunk as the spec writes it, fields given as raw JSON text.
pub fn ast_chunk(nodes: &str, content_b64: &str, path: &str, source_id: &str) -> Vec<u8> {
    format!(
        "{{\"ast_nodes\":{nodes},\"content_b64\":\"{content_b64}\",\"language\":\"go\",\
         \"path\":{path:?},\"source_id\":{source_id:?}}}\n"
    )
    .into_bytes()
}

/// Writes the store at `dir/store`: each chunk under its BLAKE3, and a
/// lockfile of `entries` in the given order.
pub fn store(dir: &Path, entries: &[Entry]) -> PathBuf {
    let root = dir.join("store");
    let mut written = std::collections::HashSet::new();
    for entry in entries.iter().filter(|e| written.insert(e.chunk)) {
        let hex = Hash::of(entry.chunk).to_hex();
        let object = root.join("objects").join(&hex[..2]).join(&hex[2..]);
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::write(object, entry.chunk).unwrap();
    }
    let sources: Vec<SourceEntry> = entries
        .iter()
        .map(|e| SourceEntry {
            path: e.path.to_string(),
            input_hash: Hash::of(e.content),
            chunk_hash: Hash::of(e.chunk),
            kind: e.kind.to_string(),
        })
        .collect();
    std::fs::write(
        root.join("mache.lock.bin"),
        binary::encode(&lockfile(sources)),
    )
    .unwrap();
    root
}

/// A lockfile of `sources` as the Go mache writes one.
pub fn lockfile(sources: Vec<SourceEntry>) -> Lockfile {
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
