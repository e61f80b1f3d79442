//! Push: a `mache.db` becomes chunks, a lockfile and a sizes index in a store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::chunk;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::binary::LockfileEncoder;
use crate::lockfile::{
    self, BLAKE3_PROCESSOR, Lockfile, Meta, PRODUCER, ProcessorVersion, SCHEMA_VERSION, SourceEntry,
};
use crate::machedb;
use crate::rows::{AstRow, SourceRow, kind_for_language};
use crate::store::local::{Object, PushRecord, PutReport, Staged};
use crate::store::sizes::SourceSizes;
use crate::store::{Bundle, LocalStore, SizeIndex};

use super::record::{DbRecorder, EntryChunk};

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
    /// Write a new lockfile even when the tag already names a bundle of
    /// exactly these sources.
    pub force: bool,
    /// Build the db a pull makes, to record its size and BLAKE3 in the
    /// sizes index (so a mount shows `mache.db`'s size at once).
    pub record_db: bool,
    /// Stops the push when set (by a signal handler).
    pub interrupt: Interrupt,
}

/// Set to a signal's number (by a handler: see [`Interrupt::flag`]) to stop
/// a push: it then removes its temporary files, tags nothing, and fails
/// with [`Error::Interrupted`].
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicUsize>);

impl Interrupt {
    /// The flag a handler sets to the signal's number.
    pub fn flag(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.0)
    }

    /// `Err(Interrupted)` once the flag is set.
    fn check(&self) -> Result<()> {
        match self.0.load(Ordering::Relaxed) {
            0 => Ok(()),
            signal => Err(Error::Interrupted {
                signal: i32::try_from(signal).unwrap_or(i32::MAX),
                removed: 0,
            }),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub lockfile_hash: Hash,
    pub root: Hash,
    pub sources: usize,
    /// Sources with at least one `_ast` row (as a pull counts them).
    pub ast_sources: usize,
    /// Sources stored as AST-shaped chunks: every one of a db with an
    /// `_ast` table, rows or not, and the few of a db without one that
    /// must keep their id.
    pub ast_chunk_sources: usize,
    pub distinct_chunks: usize,
    pub new_chunks: usize,
    pub present_chunks: usize,
    pub chunk_bytes: u64,
    pub new_bytes: u64,
    pub tag: String,
    /// The tag already named a bundle of exactly these sources, and that
    /// bundle was kept (same lockfile, nothing new written).
    pub kept: bool,
    pub elapsed: Duration,
}

/// One encoded source.
struct Encoded {
    entry: SourceEntry,
    sizes: SourceSizes,
    chunk: Object,
}

/// One encoded source of a window, its chunk staged unless the store has it.
struct EncodedSource {
    entry: SourceEntry,
    sizes: SourceSizes,
    staged: Option<Staged>,
    /// The chunk's bytes, for the db recorder.
    chunk: Vec<u8>,
}

/// Sources encoded and stored per step: chunks are dropped once stored, so
/// memory stays bounded by the window, not the db.
const WINDOW: usize = 512;

/// Pushes a db into `store`, tagging the bundle `latest` and `opts.tag`.
/// Interrupted (see [`PushOptions::interrupt`]), it removes every
/// temporary file it wrote; the objects it had published stay, untagged,
/// until `gc`.
pub fn push(store: &LocalStore, opts: &PushOptions) -> Result<PushReport> {
    let started = Instant::now();
    crate::oci::check_tag(&opts.tag)?;
    let _writing = store.lock_shared()?;
    let store = store.with_tmp_session()?;
    match push_locked(&store, opts, started) {
        Err(Error::Interrupted { signal, .. }) => Err(Error::Interrupted {
            signal,
            removed: store.tmp_session().map_or(0, |s| s.clean_up()),
        }),
        done => done,
    }
}

/// [`push`] with the store locked and its temporary files claimed.
fn push_locked(store: &LocalStore, opts: &PushOptions, started: Instant) -> Result<PushReport> {
    let generated_at_ms = generated_at_ms()?;
    let source_root = match &opts.source_root {
        Some(root) => root.clone(),
        None => opts.db.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let fingerprint = machedb::fingerprint(&opts.db)?;
    let unchanged = fingerprint.filter(|_| !opts.force);
    if let Some(report) = unchanged.and_then(|fp| repush_unchanged(store, opts, &fp)) {
        let mut report = report?;
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let db = machedb::DbReader::open(&opts.db, &source_root)?;
    let sources = db.count_sources()?;
    let whole = match db.has_ast() {
        true => vec![false; sources],
        false => raw_sources_needing_ast_shape(&db, &opts.db)?,
    };
    tracing::info!(sources, elapsed = ?started.elapsed(), "read the db's ids");
    opts.interrupt.check()?;

    let mut report = PushReport {
        lockfile_hash: Hash::default(),
        root: Hash::default(),
        sources,
        ast_sources: 0,
        ast_chunk_sources: 0,
        distinct_chunks: 0,
        new_chunks: 0,
        present_chunks: 0,
        chunk_bytes: 0,
        new_bytes: 0,
        tag: opts.tag.clone(),
        kept: false,
        elapsed: Duration::ZERO,
    };
    // The lockfile is encoded as the sources come: no list of entries.
    let meta = new_meta(generated_at_ms);
    let mut encoder = LockfileEncoder::new(&meta, &[], whole.len());
    let mut root = blake3::Hasher::new();
    let mut sizes = Vec::with_capacity(sources);
    let mut seen = HashSet::new();
    let bar = opts
        .progress
        .then(|| crate::progress::progress(sources, "pushing"));
    // Windows are read, encoded and staged here while a second thread makes
    // the previous window durable and visible, so syncs and renames overlap
    // with encoding, and a third builds the db a pull of what is stored
    // makes, for its record.
    let (reads_files, published, db_record) = std::thread::scope(|scope| {
        let (to_publisher, batches) =
            std::sync::mpsc::sync_channel::<(Vec<Staged>, Vec<EntryChunk>)>(1);
        let (to_recorder, recorder) = match opts.record_db {
            true => {
                let (to_recorder, stored) = std::sync::mpsc::sync_channel(1);
                let recorder = scope.spawn(move || record_db(store, stored));
                (Some(to_recorder), Some(recorder))
            }
            false => (None, None),
        };
        let publisher = scope.spawn(move || {
            let mut total = PutReport::default();
            for (batch, chunks) in batches {
                opts.interrupt.check()?;
                total.add(store.publish(batch)?);
                if let Some(to_recorder) = &to_recorder {
                    to_recorder
                        .send(chunks)
                        .map_err(|_| Error::Remote("the db recorder stopped".into()))?;
                }
            }
            Ok::<_, Error>(total)
        });
        let mut at = 0;
        let produced = db.for_each_window(WINDOW, |window| {
            opts.interrupt.check()?;
            let n = window.sources.len();
            let whole = whole.get(at..at + n).ok_or_else(|| Error::BadDb {
                path: opts.db.clone(),
                reason: "_source changed while it was read".to_string(),
            })?;
            at += n;
            report.ast_sources += window.ast.as_ref().map_or(0, |ast| {
                ast.iter().filter(|nodes| !nodes.is_empty()).count()
            });
            let staged = encode_and_stage(
                store,
                &opts.db,
                &window.sources,
                window.ast.as_deref(),
                whole,
                &seen,
            )?;
            let mut to_publish = Vec::new();
            let mut window_chunks = Vec::with_capacity(n);
            for encoded in staged {
                let EncodedSource {
                    entry,
                    sizes: source_sizes,
                    staged,
                    chunk,
                } = encoded;
                if seen.insert(entry.chunk_hash) {
                    report.distinct_chunks += 1;
                    report.chunk_bytes += source_sizes.chunk_len;
                    match staged {
                        Some(staged) => to_publish.push(staged),
                        None => report.present_chunks += 1,
                    }
                }
                report.ast_chunk_sources += usize::from(source_sizes.ast_json_len.is_some());
                encoder.push(&entry);
                root.update(&entry.chunk_hash.0);
                if opts.record_db {
                    window_chunks.push((entry, chunk));
                }
                sizes.push(source_sizes);
            }
            // A closed channel: the publisher failed. Stop reading; its
            // error is the one reported below.
            to_publisher
                .send((to_publish, window_chunks))
                .map_err(|_| Error::Remote("the publisher stopped".into()))?;
            if let Some(bar) = &bar {
                bar.inc(n as u64);
            }
            Ok(())
        });
        drop(to_publisher);
        let published = publisher
            .join()
            .expect("the publisher thread does not panic");
        let recorded = recorder.map(|recorder| {
            recorder
                .join()
                .expect("the db recorder thread does not panic")
        });
        // A recorder that failed stopped the publisher, and a publisher that
        // failed stopped the reading: the first to fail names the cause.
        let recorder = recorded.transpose()?;
        let published = published?;
        let produced = produced?;
        let record = recorder.map(DbRecorder::finish).transpose()?;
        Ok::<_, Error>((produced, published, record))
    })?;
    drop(seen);
    report.new_chunks += published.new;
    report.present_chunks += published.present;
    report.new_bytes += published.new_bytes;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tracing::info!(elapsed = ?started.elapsed(), "stored chunks");
    opts.interrupt.check()?;
    if encoder.pushed() != whole.len() {
        return Err(Error::BadDb {
            path: opts.db.clone(),
            reason: "_source changed while it was read".to_string(),
        });
    }
    drop(whole);

    report.root = Hash(*root.finalize().as_bytes());
    let lockfile_bytes = encoder.finish(&report.root);
    let tagged = match (!opts.force).then(|| store.resolve(&opts.tag).ok()) {
        Some(Some(current))
            if current.sizes.is_some()
                && current.lockfile.root == report.root
                && same_sources(&lockfile_bytes, &current.lockfile)? =>
        {
            Some(current)
        }
        _ => None,
    };
    report.lockfile_hash = match tagged {
        Some(current) => {
            tracing::info!("{} already names these sources: keeping it", opts.tag);
            let sizes = current
                .sizes
                .as_ref()
                .expect("kept only with a sizes index");
            if db_record.is_some() && sizes.db != db_record {
                // Recorded by an older push, or by another synthesizer.
                store.record_sizes(&SizeIndex {
                    db: db_record,
                    ..sizes.clone()
                })?;
            }
            keep(store, &current, &opts.tag)?;
            report.kept = true;
            current.lockfile_hash
        }
        None => {
            let sizes = SizeIndex {
                lockfile_hash: Hash::of(&lockfile_bytes),
                entries: sizes,
                db: db_record,
            };
            store.record_bundle(&lockfile_bytes, &sizes, &opts.tag)?
        }
    };
    if let Some(fp) = fingerprint.filter(|_| !reads_files) {
        let record = PushRecord {
            lockfile_hash: report.lockfile_hash,
            ast_sources: report.ast_sources,
        };
        store.remember_push(&fp, &record)?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Builds the db of the windows of sources `stored` sends once their
/// chunks are stored ([`DbRecorder`]), to be finished once the whole push
/// is known to have succeeded (dropped, it leaves nothing).
fn record_db(store: &LocalStore, stored: Receiver<Vec<EntryChunk>>) -> Result<DbRecorder<'_>> {
    let mut recorder = DbRecorder::create(store, &input_processors())?;
    for window in stored {
        recorder.add(&window)?;
    }
    Ok(recorder)
}

/// Points `latest` and `tag` at an existing bundle.
fn keep(store: &LocalStore, bundle: &Bundle, tag: &str) -> Result<()> {
    store.point_refs(&bundle.lockfile_bytes, tag)
}

/// In a db without `_ast`, which sources must be stored in the AST shape
/// (which carries the row's id, path and language) to restore as they are.
/// A raw chunk restores as `id = path`, and SPEC §3 reads any chunk that is
/// a JSON object with a string `source_id` as an AST chunk, so a source goes
/// whole when its bytes look like an AST chunk, or when its restored id
/// would equal another source's. Repeated until no two restored ids clash
/// (ids are unique, so it ends). A source that must go whole but has an
/// empty id cannot (an AST chunk needs one) and is refused.
///
/// Only ids and paths are kept (as 64-bit hashes: a collision can only make
/// a source go whole, which restores it as well), and only the content of
/// sources that may be JSON is read.
fn raw_sources_needing_ast_shape(db: &machedb::DbReader, db_path: &Path) -> Result<Vec<bool>> {
    let mut restored = Vec::new();
    let mut whole = Vec::new();
    let mut may_be_json = Vec::new();
    let mut empty_ids = HashMap::new();
    db.for_each_head(|head| {
        let i = whole.len();
        restored.push((
            short_hash(&head.id),
            short_hash(head.path.as_deref().unwrap_or("")),
        ));
        whole.push(false);
        if head.id.is_empty() {
            empty_ids.insert(i, head.path.clone());
        }
        if head.may_be_json {
            may_be_json.push((i, head.id, head.path));
        }
    })?;
    for (i, id, path) in may_be_json {
        whole[i] = chunk::detect(&db.content_of(&id, path.as_deref())?) == chunk::Shape::Ast;
    }
    loop {
        let mut by_restored_id: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, &(id, path)) in restored.iter().enumerate() {
            let key = if whole[i] { id } else { path };
            by_restored_id.entry(key).or_default().push(i);
        }
        let mut changed = false;
        for clash in by_restored_id.values().filter(|group| group.len() > 1) {
            for &i in clash {
                changed |= !std::mem::replace(&mut whole[i], true);
            }
        }
        if !changed {
            break;
        }
    }
    if let Some(path) = empty_ids
        .iter()
        .find(|(i, _)| whole[**i])
        .map(|(_, path)| path)
    {
        return Err(Error::BadDb {
            path: db_path.to_path_buf(),
            reason: format!(
                "the _source row with path {:?} has an empty id, and its path is shared or its \
                 content reads as an AST chunk, so no chunk would restore it (give it an id)",
                path.as_deref().unwrap_or("")
            ),
        });
    }
    Ok(whole)
}

/// A 64-bit hash of `text`, the same for the same text within a run.
fn short_hash(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The fast path for a db whose file is byte-identical to one pushed
/// before (and that read no files from disk): keep that bundle as it is
/// (same lockfile, so the same hash), pointing `latest` and the tag at it,
/// provided every chunk is still present with its recorded length; the
/// sources with AST rows are those the push record counted. `None` means
/// "do a full push".
fn repush_unchanged(
    store: &LocalStore,
    opts: &PushOptions,
    fingerprint: &Hash,
) -> Option<Result<PushReport>> {
    let previous = store.recall_push(fingerprint)?;
    let bundle = store.resolve(&previous.lockfile_hash.to_prefixed()).ok()?;
    let sizes = bundle.sizes.as_ref()?;
    let mut distinct = HashSet::new();
    let mut chunk_bytes: u64 = 0;
    for (source, size) in bundle.lockfile.sources.iter().zip(&sizes.entries) {
        if distinct.insert(source.chunk_hash) {
            if store.object_len(&source.chunk_hash) != Some(size.chunk_len) {
                return None;
            }
            chunk_bytes = chunk_bytes.saturating_add(size.chunk_len);
        }
    }
    tracing::info!(
        "db unchanged since bundle {}: keeping it",
        previous.lockfile_hash
    );
    let ast_chunk_sources = sizes
        .entries
        .iter()
        .filter(|e| e.ast_json_len.is_some())
        .count();
    Some(keep(store, &bundle, &opts.tag).map(|()| PushReport {
        lockfile_hash: bundle.lockfile_hash,
        root: bundle.lockfile.root,
        sources: bundle.lockfile.sources.len(),
        ast_sources: previous.ast_sources,
        ast_chunk_sources,
        distinct_chunks: distinct.len(),
        new_chunks: 0,
        present_chunks: distinct.len(),
        chunk_bytes,
        new_bytes: 0,
        tag: opts.tag.clone(),
        kept: true,
        elapsed: Duration::ZERO,
    }))
}

/// The lockfile meta mache writes.
fn new_meta(generated_at_ms: u64) -> Meta {
    Meta {
        producer: PRODUCER.to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version: SCHEMA_VERSION.to_string(),
        input_processors: input_processors(),
        generated_at_ms,
    }
}

/// Whether the binary lockfile `lockfile_bytes` lists exactly the sources
/// of `current` (compared a source at a time, the new ones never decoded
/// whole).
fn same_sources(lockfile_bytes: &[u8], current: &Lockfile) -> Result<bool> {
    let mut theirs = current.sources.iter();
    let mut same = true;
    lockfile::binary::decode_each_source(lockfile_bytes, |source| {
        same &= theirs.next() == Some(&source);
        Ok(())
    })?;
    Ok(same && theirs.next().is_none())
}

/// The input processors a pushed lockfile declares.
fn input_processors() -> Vec<ProcessorVersion> {
    vec![ProcessorVersion {
        kind: BLAKE3_PROCESSOR.to_string(),
        version: "1.5.0".to_string(),
    }]
}

/// `SOURCE_DATE_EPOCH` (whole seconds since the epoch) when set, for
/// reproducible lockfiles; otherwise now. A value that is not a number of
/// seconds is an error rather than silently ignored.
fn generated_at_ms() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if !text.is_empty() => text
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000))
            .ok_or_else(|| {
                Error::BadSetting(format!(
                    "SOURCE_DATE_EPOCH must be whole seconds since 1970 (e.g. 1748345600), \
                     got {text:?}"
                ))
            }),
        _ => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)),
    }
}

/// One parallel pass over a window: each source is encoded and its chunk
/// written to `tmp/` while the bytes are hot (unless an earlier window had
/// it), then dropped.
fn encode_and_stage(
    store: &LocalStore,
    db: &Path,
    window: &[SourceRow],
    ast: Option<&[Vec<AstRow>]>,
    whole: &[bool],
    seen_before: &HashSet<Hash>,
) -> Result<Vec<EncodedSource>> {
    window_sources(window, ast)
        .zip(whole)
        .map(|((source, nodes), &whole)| {
            let nodes = nodes.or(whole.then_some(&[][..]));
            let Encoded {
                entry,
                sizes,
                chunk,
            } = encode_source(db, source, nodes)?;
            let staged = if seen_before.contains(&entry.chunk_hash) {
                None
            } else {
                store.stage(&chunk)?
            };
            Ok(EncodedSource {
                entry,
                sizes,
                staged,
                chunk: chunk.into_bytes(),
            })
        })
        .collect()
}

/// The window's sources, each with its AST rows (`None` for a db without
/// `_ast`), as a parallel iterator.
fn window_sources<'a>(
    sources: &'a [SourceRow],
    ast: Option<&'a [Vec<AstRow>]>,
) -> impl IndexedParallelIterator<Item = (&'a SourceRow, Option<&'a [AstRow]>)> {
    sources
        .par_iter()
        .enumerate()
        .map(move |(i, source)| (source, ast.map(|ast| ast[i].as_slice())))
}

/// Encodes one source: an AST chunk when it has AST rows (`Some`, possibly
/// empty), raw otherwise.
fn encode_source(db: &Path, source: &SourceRow, nodes: Option<&[AstRow]>) -> Result<Encoded> {
    match nodes {
        Some(nodes) => encode_ast_source(db, source, nodes),
        None => Ok(encode_raw_source(source)),
    }
}

fn entry_for(source: &SourceRow, chunk: &Object) -> SourceEntry {
    SourceEntry {
        path: source.path.clone().unwrap_or_default(),
        input_hash: Hash::of(&source.content),
        chunk_hash: chunk.hash(),
        kind: kind_for_language(source.language.as_deref()),
    }
}

fn encode_raw_source(source: &SourceRow) -> Encoded {
    let chunk = Object::new(source.content.clone());
    Encoded {
        entry: entry_for(source, &chunk),
        sizes: SourceSizes {
            chunk_len: chunk.bytes().len() as u64,
            content_len: chunk.bytes().len() as u64,
            ast_json_len: None,
        },
        chunk,
    }
}

fn encode_ast_source(db: &Path, source: &SourceRow, nodes: &[AstRow]) -> Result<Encoded> {
    if source.id.is_empty() {
        return Err(Error::BadDb {
            path: db.to_path_buf(),
            reason: "a _source row has an empty id; AST chunks need one to be recognised"
                .to_string(),
        });
    }
    let chunk = Object::new(chunk::encode_ast(source, nodes));
    let ast_json_len = chunk::ast_view_len(source, nodes);
    Ok(Encoded {
        entry: entry_for(source, &chunk),
        sizes: SourceSizes {
            chunk_len: chunk.bytes().len() as u64,
            content_len: source.content.len() as u64,
            ast_json_len: Some(ast_json_len),
        },
        chunk,
    })
}
