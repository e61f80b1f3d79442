//! Push: a `mache.db` becomes chunks, a lockfile and a sizes index in a store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::chunk;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::{
    self, Lockfile, Meta, PRODUCER, ProcessorVersion, SCHEMA_VERSION, SourceEntry,
};
use crate::machedb::{self, DbContents};
use crate::rows::{AstRow, SourceRow, kind_for_language};
use crate::store::sizes::SourceSizes;
use crate::store::{LocalStore, SizeIndex};

/// What to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub db: PathBuf,
    /// Where NULL-content rows' paths are resolved; default: the db's directory.
    pub source_root: Option<PathBuf>,
    /// The ref to set besides `latest`.
    pub tag: String,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub lockfile_hash: Hash,
    pub root: Hash,
    pub sources: usize,
    pub ast_sources: usize,
    pub distinct_chunks: usize,
    pub new_chunks: usize,
    pub present_chunks: usize,
    pub chunk_bytes: u64,
    pub new_bytes: u64,
    pub tag: String,
    pub elapsed: Duration,
}

/// One encoded source.
struct Encoded {
    entry: SourceEntry,
    sizes: SourceSizes,
    chunk: Vec<u8>,
}

/// Pushes a db into `store`, tagging the bundle `latest` and `opts.tag`.
pub fn push(store: &LocalStore, opts: &PushOptions) -> Result<PushReport> {
    let started = Instant::now();
    crate::store::local::check_ref_name(&opts.tag)?;
    let source_root = match &opts.source_root {
        Some(root) => root.clone(),
        None => opts.db.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let contents = machedb::read_db(&opts.db, &source_root)?;
    let encoded = encode_all(&opts.db, &contents)?;
    let sources: Vec<SourceEntry> = encoded.iter().map(|e| e.entry.clone()).collect();
    let lockfile = Lockfile {
        meta: Meta {
            producer: PRODUCER.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            schema_version: SCHEMA_VERSION.to_string(),
            input_processors: vec![ProcessorVersion {
                kind: "blake3".to_string(),
                version: "1.5.0".to_string(),
            }],
            generated_at_ms: generated_at_ms(),
        },
        root: Lockfile::compute_root(&sources),
        sources,
        topology: Vec::new(),
    };
    let lockfile_bytes = lockfile::binary::encode(&lockfile);
    let toml = lockfile::text::to_toml(&lockfile);

    let mut unique: HashMap<Hash, &[u8]> = HashMap::new();
    for e in &encoded {
        unique.entry(e.entry.chunk_hash).or_insert(&e.chunk);
    }
    let objects: Vec<(Hash, &[u8])> = unique.into_iter().collect();
    let chunk_bytes = objects.iter().map(|(_, b)| b.len() as u64).sum();
    let bar = opts
        .progress
        .then(|| super::progress(objects.len(), "storing"));
    let mut written = crate::store::local::PutReport::default();
    for batch in objects.chunks(4096) {
        let report = store.put_all(batch)?;
        written.new += report.new;
        written.present += report.present;
        written.new_bytes += report.new_bytes;
        if let Some(bar) = &bar {
            bar.inc(batch.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let sizes = SizeIndex {
        lockfile_hash: Hash::of(&lockfile_bytes),
        entries: encoded.iter().map(|e| e.sizes).collect(),
    };
    let lockfile_hash = store.record_bundle(&lockfile_bytes, &toml, &sizes, &opts.tag)?;
    Ok(PushReport {
        lockfile_hash,
        root: lockfile.root,
        sources: encoded.len(),
        ast_sources: encoded
            .iter()
            .filter(|e| e.sizes.ast_json_len.is_some())
            .count(),
        distinct_chunks: objects.len(),
        new_chunks: written.new,
        present_chunks: written.present,
        chunk_bytes,
        new_bytes: written.new_bytes,
        tag: opts.tag.clone(),
        elapsed: started.elapsed(),
    })
}

/// `SOURCE_DATE_EPOCH` (seconds) when set, for reproducible lockfiles;
/// otherwise now.
fn generated_at_ms() -> u64 {
    if let Some(secs) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return secs.saturating_mul(1000);
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes every source in parallel: AST chunks when the db has `_ast`,
/// raw chunks otherwise.
fn encode_all(db: &std::path::Path, contents: &DbContents) -> Result<Vec<Encoded>> {
    let no_nodes: Vec<AstRow> = Vec::new();
    contents
        .sources
        .par_iter()
        .map(|source| match &contents.ast {
            Some(ast) => {
                let nodes = ast.get(&source.id).unwrap_or(&no_nodes);
                encode_ast_source(db, source, nodes)
            }
            None => Ok(encode_raw_source(source)),
        })
        .collect()
}

fn entry_for(source: &SourceRow, chunk: &[u8]) -> SourceEntry {
    SourceEntry {
        path: source.path.clone().unwrap_or_default(),
        input_hash: Hash::of(&source.content),
        chunk_hash: Hash::of(chunk),
        kind: kind_for_language(source.language.as_deref()),
    }
}

fn encode_raw_source(source: &SourceRow) -> Encoded {
    if chunk::detect(&source.content) == chunk::Shape::Ast {
        tracing::warn!(
            "source {:?} is a JSON object with a source_id: readers will take it for an AST chunk",
            source.id
        );
    }
    let chunk = source.content.clone();
    Encoded {
        entry: entry_for(source, &chunk),
        sizes: SourceSizes {
            chunk_len: chunk.len() as u64,
            content_len: chunk.len() as u64,
            ast_json_len: None,
        },
        chunk,
    }
}

fn encode_ast_source(
    db: &std::path::Path,
    source: &SourceRow,
    nodes: &[AstRow],
) -> Result<Encoded> {
    if source.id.is_empty() {
        return Err(Error::BadDb {
            path: db.to_path_buf(),
            reason: "a _source row has an empty id; AST chunks need one to be recognised"
                .to_string(),
        });
    }
    let chunk = chunk::encode_ast(source, nodes);
    let ast_json_len = chunk::ast_view_len(source, nodes);
    Ok(Encoded {
        entry: entry_for(source, &chunk),
        sizes: SourceSizes {
            chunk_len: chunk.len() as u64,
            content_len: source.content.len() as u64,
            ast_json_len: Some(ast_json_len),
        },
        chunk,
    })
}
