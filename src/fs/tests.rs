//! Tests of the mount's logic without FUSE, over a fake chunk source.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Barrier, Condvar, Mutex};
use std::time::Instant;

use super::*;
use crate::chunk;
use crate::hash::Hash;
use crate::lockfile::{Meta, ProcessorVersion, SourceEntry};
use crate::rows::{AstRow, SourceRow, kind_for_language};
use crate::store::SizeIndex;
use crate::store::sizes::{DbRecord, SourceSizes};

/// How long a test waits for something that should happen at once
/// before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// A chunk source in memory that counts fetches and can lie, be slow, hang
/// or be down.
#[derive(Default)]
struct FakeSource {
    objects: Mutex<HashMap<Hash, Vec<u8>>>,
    fetches: AtomicUsize,
    delay: Option<Duration>,
    /// Every fetch fails, like a registry that cannot be reached.
    down: AtomicBool,
    gate: Mutex<Gate>,
    /// Signalled when the gate opens or a fetch starts waiting at it.
    gate_moved: Condvar,
}

/// Fetches held until [`FakeSource::release`].
#[derive(Default)]
struct Gate {
    all: bool,
    chunks: HashSet<Hash>,
    waiting: usize,
}

impl ChunkSource for FakeSource {
    fn get_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        self.pass_gate(hash);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unreachable {
                registry: "fake".into(),
                reason: "it is down".into(),
            });
        }
        let bytes = self.objects.lock().unwrap().get(hash).cloned();
        let bytes = bytes.ok_or_else(|| Error::ObjectMissing {
            hash: *hash,
            store: "fake".into(),
        })?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(Error::Corrupt {
                path: format!("fake/{hash}").into(),
                expected: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

impl FakeSource {
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn corrupt(&self, hash: &Hash) {
        self.objects.lock().unwrap().get_mut(hash).unwrap()[0] ^= 0xff;
    }

    /// Holds fetches of `hash` (of every chunk if `None`) until `release`.
    fn hold(&self, hash: Option<Hash>) {
        let mut gate = self.gate.lock().unwrap();
        match hash {
            Some(hash) => gate.chunks.insert(hash),
            None => std::mem::replace(&mut gate.all, true),
        };
    }

    fn release(&self) {
        let mut gate = self.gate.lock().unwrap();
        gate.all = false;
        gate.chunks.clear();
        self.gate_moved.notify_all();
    }

    fn pass_gate(&self, hash: &Hash) {
        let mut gate = self.gate.lock().unwrap();
        if !(gate.all || gate.chunks.contains(hash)) {
            return;
        }
        gate.waiting += 1;
        self.gate_moved.notify_all();
        let mut gate = self
            .gate_moved
            .wait_while(gate, |g| g.all || g.chunks.contains(hash))
            .unwrap();
        gate.waiting -= 1;
    }

    /// Waits until `n` fetches wait at the gate.
    fn wait_for_held(&self, n: usize) {
        let gate = self.gate.lock().unwrap();
        let (gate, timeout) = self
            .gate_moved
            .wait_timeout_while(gate, PATIENCE, |g| g.waiting < n)
            .unwrap();
        assert!(!timeout.timed_out(), "{} of {n} fetches held", gate.waiting);
    }
}

/// Runs `f` on another thread and fails the test if it does not return
/// within [`PATIENCE`] (instead of hanging with it).
fn answers_promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{what} did not answer within {PATIENCE:?}"))
}

fn node(source: &str, id: &str, kind: &str, start: i64) -> AstRow {
    AstRow {
        node_id: format!("{source}/{id}"),
        source_id: source.into(),
        node_kind: kind.into(),
        start_byte: start,
        end_byte: start + 3,
        start_row: 0,
        start_col: start,
        end_row: 0,
        end_col: start + 3,
    }
}

/// Sources as push would make them: AST chunks (with `ast`) or raw ones.
fn bundle_of(files: &[(&str, &[u8])], ast: bool, index: bool, source: &FakeSource) -> Bundle {
    let mut entries = Vec::new();
    let mut sizes = Vec::new();
    for (path, content) in files {
        let row = SourceRow {
            id: path.to_string(),
            path: Some(path.to_string()),
            language: Some("go".into()),
            content: content.to_vec(),
        };
        let nodes = vec![
            node(path, "File", "source_file", 0),
            node(path, "File/Decl", "decl", 1),
        ];
        let (bytes, ast_len) = if ast {
            (
                chunk::encode_ast(&row, &nodes),
                Some(chunk::ast_view_len(&row, &nodes)),
            )
        } else {
            (content.to_vec(), None)
        };
        let hash = Hash::of(&bytes);
        sizes.push(SourceSizes {
            chunk_len: bytes.len() as u64,
            content_len: content.len() as u64,
            ast_json_len: ast_len,
        });
        entries.push(SourceEntry {
            path: path.to_string(),
            input_hash: Hash::of(content),
            chunk_hash: hash,
            kind: kind_for_language(Some("go")),
        });
        source.objects.lock().unwrap().insert(hash, bytes);
    }
    let lockfile = Lockfile {
        meta: Meta {
            producer: "mache".into(),
            producer_version: "test".into(),
            schema_version: "0.1.0".into(),
            input_processors: vec![ProcessorVersion {
                kind: "blake3".into(),
                version: "1.5.0".into(),
            }],
            generated_at_ms: 1_748_345_600_000,
        },
        root: Lockfile::compute_root(&entries),
        sources: entries,
        topology: Vec::new(),
    };
    let lockfile_bytes = crate::lockfile::binary::encode(&lockfile);
    let lockfile_hash = Hash::of(&lockfile_bytes);
    let sizes = index.then_some(SizeIndex {
        lockfile_hash,
        entries: sizes,
        db: None,
    });
    Bundle::new(lockfile_hash, lockfile_bytes, lockfile, sizes)
}

const FILES: &[(&str, &[u8])] = &[
    ("src/main.go", b"package main\n\nfunc main() {}\n"),
    ("src/auth.go", b"package main // <auth> & \"more\"\n"),
    ("README.md", b"# readme\n"),
    ("empty.txt", b""),
];

fn mount(source: Arc<FakeSource>, bundle: Bundle, cache_dir: &std::path::Path) -> CacheFs {
    CacheFs::new(
        bundle,
        source,
        FsSettings {
            reference: "latest".into(),
            cache_dir: cache_dir.to_path_buf(),
            memory_cache: 1 << 20,
            owner: (1000, 1000),
        },
    )
}

fn read_all(fs: &CacheFs, path: &str) -> Result<Vec<u8>> {
    let ino = fs
        .tree()
        .resolve(path)
        .ok_or(Error::Refused(Refusal::NoEntry))?;
    fs.open(ino, false)?;
    let size = fs.attr(ino)?.size;
    Ok(fs.read(ino, 0, size as u32 + 10)?.as_slice().to_vec())
}

fn names(fs: &CacheFs, ino: u64) -> Vec<String> {
    let mut out = Vec::new();
    fs.readdir(ino, 0, |e| {
        out.push(e.name);
        false
    })
    .unwrap();
    out
}

#[test]
fn listing_and_stat_read_no_chunk_with_a_sizes_index() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    assert_eq!(
        names(&fs, tree::ROOT),
        [
            ".",
            "..",
            ".cachefs",
            "ast",
            "mache.db",
            "mache.lock.toml",
            "sources"
        ]
    );
    assert_eq!(
        names(&fs, tree::SOURCES),
        [".", "..", "README.md", "empty.txt", "src"]
    );
    for (path, content) in FILES {
        let attr = fs
            .lookup(
                fs.tree()
                    .resolve(&format!(
                        "sources/{}",
                        path.rsplit_once('/').map_or("", |p| p.0)
                    ))
                    .unwrap(),
                path.rsplit('/').next().unwrap().as_bytes(),
            )
            .unwrap();
        assert_eq!(attr.size, content.len() as u64, "{path}");
        assert_eq!((attr.perm, attr.uid, attr.kind), (0o444, 1000, Kind::File));
        let ast = fs
            .attr(fs.tree().resolve(&format!("ast/{path}.json")).unwrap())
            .unwrap();
        assert!(ast.size > 0);
    }
    let src = fs.attr(fs.tree().resolve("sources/src").unwrap()).unwrap();
    assert_eq!((src.perm, src.kind, src.nlink), (0o555, Kind::Dir, 2));
    assert!(!fs.attr_may_block(tree::FIRST_FILE));
    assert!(!fs.attr_may_block(tree::MACHE_DB));
    assert!(fs.attr_may_block(tree::LOCK_TOML), "rendered on first need");
    assert!(fs.read_now(tree::LOCK_TOML, 0, 10).is_none());
    assert!(fs.attr(tree::LOCK_TOML).unwrap().size > 0);
    assert!(!fs.attr_may_block(tree::LOCK_TOML));
    assert!(fs.read_now(tree::LOCK_TOML, 0, 10).unwrap().is_ok());
    let db = fs.attr(tree::MACHE_DB).unwrap();
    assert_eq!((db.size, db.volatile), (0, true), "a stat builds nothing");
    assert_eq!(fs.status().mache_db.state, "absent");
    assert_eq!(source.fetches(), 0);
}

#[test]
fn reads_serve_exact_bytes_and_the_ast_view() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    for (path, content) in FILES {
        assert_eq!(
            read_all(&fs, &format!("sources/{path}")).unwrap(),
            *content,
            "{path}"
        );
    }
    let ino = fs.tree().resolve("sources/src/main.go").unwrap();
    assert_eq!(fs.read(ino, 8, 4).unwrap().as_slice(), b"main");
    assert_eq!(fs.read(ino, 1000, 4).unwrap().as_slice(), b"");
    let json = read_all(&fs, "ast/src/main.go.json").unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value["path"], "src/main.go");
    assert_eq!(value["ast_nodes"][1]["node_kind"], "decl");
    assert_eq!(
        json.len() as u64,
        fs.attr(fs.tree().resolve("ast/src/main.go.json").unwrap())
            .unwrap()
            .size
    );
    let fetched = source.fetches();
    read_all(&fs, "sources/src/main.go").unwrap();
    assert_eq!(
        source.fetches(),
        fetched,
        "the second read is served from memory"
    );
    assert_eq!(
        read_all(&fs, "mache.lock.toml").unwrap(),
        crate::lockfile::text::to_toml(fs.lockfile()).into_bytes()
    );
    assert!(matches!(
        fs.open(ino, true),
        Err(Error::Refused(Refusal::ReadOnly))
    ));
}

#[test]
fn a_corrupt_chunk_fails_its_file_only_and_is_never_cached() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let bad = bundle.lockfile.sources[0].chunk_hash;
    source.corrupt(&bad);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    let err = read_all(&fs, "sources/src/main.go").unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(read_all(&fs, "sources/src/main.go").is_err());
    assert_eq!(source.fetches(), 2, "failures are not cached");
    assert_eq!(read_all(&fs, "sources/src/auth.go").unwrap(), FILES[1].1);
    let status = fs.status();
    assert_eq!(status.counters.verification_failures, 2);
    let last = status.counters.last_error.unwrap();
    assert!(
        last.contains("sources/src/main.go") && last.contains(&bad.to_hex()),
        "{last}"
    );
}

#[test]
fn concurrent_cold_readers_cause_one_fetch() {
    let source = Arc::new(FakeSource {
        delay: Some(Duration::from_millis(100)),
        ..FakeSource::default()
    });
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    let barrier = Barrier::new(16);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                barrier.wait();
                assert_eq!(read_all(&fs, "sources/src/auth.go").unwrap(), FILES[1].1);
            });
        }
    });
    assert_eq!(source.fetches(), 1);
    assert_eq!(fs.status().counters.chunks_fetched, 1);
}

#[test]
fn without_a_sizes_index_sizes_are_learned_from_chunks() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, false, false, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    let ino = fs.tree().resolve("sources/README.md").unwrap();
    assert!(fs.attr_may_block(ino));
    assert_eq!(fs.attr(ino).unwrap().size, 9);
    assert!(!fs.attr_may_block(ino));
    assert_eq!(source.fetches(), 1);
    assert!(fs.dir_may_block(tree::ROOT));
    assert_eq!(
        names(&fs, tree::ROOT),
        [
            ".",
            "..",
            ".cachefs",
            "mache.db",
            "mache.lock.toml",
            "sources"
        ]
    );
    assert!(matches!(
        fs.lookup(tree::ROOT, b"ast"),
        Err(Error::Refused(Refusal::NoEntry))
    ));
}

#[test]
fn without_a_sizes_index_an_ast_bundle_shows_ast() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, false, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    assert!(names(&fs, tree::ROOT).contains(&"ast".to_string()));
    let json = read_all(&fs, "ast/README.md.json").unwrap();
    assert!(json.starts_with(b"{\"source_id\":\"README.md\""));
}

#[test]
fn a_sizes_index_that_lies_fails_the_file() {
    let source = Arc::new(FakeSource::default());
    let mut bundle = bundle_of(FILES, false, true, &source);
    bundle.sizes.as_mut().unwrap().entries[2].content_len = 3;
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    assert_eq!(
        read_all(&fs, "sources/README.md").unwrap_err().errno(),
        libc::EIO
    );
}

#[test]
fn huge_sizes_in_a_hostile_index_saturate_the_totals_instead_of_overflowing() {
    let source = Arc::new(FakeSource::default());
    let mut bundle = bundle_of(FILES, true, true, &source);
    for entry in &mut bundle.sizes.as_mut().unwrap().entries {
        entry.content_len = u64::MAX;
        entry.ast_json_len = Some(u64::MAX - 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    assert_eq!(fs.totals().0, u64::MAX);
}

#[test]
fn xattrs_name_the_hashes_kind_root_and_ref() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let entry = bundle.lockfile.sources[1].clone();
    let root = bundle.lockfile.root;
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source, bundle, dir.path());
    let ino = fs.tree().resolve("sources/src/auth.go").unwrap();
    assert_eq!(
        fs.xattr_names(ino).unwrap(),
        b"user.mache.chunk_hash\0user.mache.input_hash\0user.mache.kind\0"
    );
    assert_eq!(
        fs.xattr(ino, b"user.mache.chunk_hash").unwrap(),
        entry.chunk_hash.to_hex().into_bytes()
    );
    assert_eq!(
        fs.xattr(ino, b"user.mache.input_hash").unwrap(),
        entry.input_hash.to_hex().into_bytes()
    );
    assert_eq!(fs.xattr(ino, b"user.mache.kind").unwrap(), b"go-source");
    assert_eq!(
        fs.xattr(tree::ROOT, b"user.mache.root").unwrap(),
        root.to_hex().into_bytes()
    );
    assert_eq!(fs.xattr(tree::ROOT, b"user.mache.ref").unwrap(), b"latest");
    let missing = fs.xattr(ino, b"user.other").unwrap_err();
    assert_eq!(missing.errno(), libc::ENODATA);
    for other in [
        &b"security.selinux"[..],
        b"system.posix_acl_access",
        b"trusted.x",
    ] {
        assert_eq!(fs.xattr(ino, other).unwrap_err().errno(), libc::EOPNOTSUPP);
    }
    assert!(fs.xattr_names(tree::SOURCES).unwrap().is_empty());
}

#[test]
fn mache_db_rows_equal_pull_and_a_second_mount_reuses_it() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let lockfile = bundle.lockfile.clone();
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle.clone(), dir.path());
    let served = read_all(&fs, "mache.db").unwrap();
    assert_eq!(fs.status().mache_db.state, "ready");
    assert!(!fs.status().mache_db.reused);

    let pulled = dir.path().join("pulled.db");
    crate::bundle::pull(
        source.as_ref(),
        &lockfile,
        &pulled,
        crate::bundle::Existing::ReplaceMacheDb,
        true,
        false,
    )
    .unwrap();
    let mounted = dir.path().join("served.db");
    std::fs::write(&mounted, &served).unwrap();
    let rows = |path: &std::path::Path| {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut out: Vec<String> = Vec::new();
        for sql in [
            "SELECT id, path, language, hex(content) FROM _source ORDER BY id",
            "SELECT node_id, source_id, node_kind, start_byte, end_byte FROM _ast ORDER BY node_id",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            let mut q = stmt.query([]).unwrap();
            while let Some(row) = q.next().unwrap() {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                out.push(cols.join("|"));
            }
        }
        out
    };
    assert_eq!(rows(&mounted), rows(&pulled));

    let fetched = source.fetches();
    let again = mount(source.clone(), bundle, dir.path());
    assert_eq!(read_all(&again, "mache.db").unwrap(), served);
    assert!(again.status().mache_db.reused);
    assert_eq!(
        source.fetches(),
        fetched,
        "the cached db is reused, not rebuilt"
    );
}

/// `bundle` with the record of the db a pull of it makes: what push
/// records, here made by a pull into `dir`.
fn with_db_record(source: &FakeSource, mut bundle: Bundle, dir: &std::path::Path) -> Bundle {
    let pulled = dir.join("recorded.db");
    crate::bundle::pull(
        source,
        &bundle.lockfile,
        &pulled,
        crate::bundle::Existing::Replace,
        true,
        false,
    )
    .unwrap();
    let record = DbRecord {
        size: std::fs::metadata(&pulled).unwrap().len(),
        hash: Hash::of_file(&pulled).unwrap(),
        synthesizer: crate::machedb::synthesizer(),
    };
    bundle.sizes.as_mut().unwrap().db = Some(record);
    bundle
}

#[test]
fn a_recorded_db_shows_its_size_before_a_build_and_its_first_read_builds_it_to_match() {
    let source = Arc::new(FakeSource::default());
    let records = tempfile::tempdir().unwrap();
    let bundle = with_db_record(
        &source,
        bundle_of(FILES, true, true, &source),
        records.path(),
    );
    let record = bundle.db_record().unwrap().clone();
    let fetched = source.fetches();
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());

    let attr = fs.attr(tree::MACHE_DB).unwrap();
    assert_eq!(attr.size, record.size);
    assert!(
        !attr.volatile,
        "a recorded size may be cached by the kernel"
    );
    assert!(fs.opens_stateless(), "no open needs to reach the mount");
    assert!(!fs.open_may_block(tree::MACHE_DB));
    fs.open(tree::MACHE_DB, false).unwrap();
    assert_eq!(
        fs.status().mache_db.state,
        "absent",
        "an open builds nothing"
    );
    assert_eq!(fs.status().mache_db.size, Some(record.size));
    assert_eq!(source.fetches(), fetched, "stat and open fetch nothing");

    let served = read_all(&fs, "mache.db").unwrap();
    assert_eq!(fs.status().mache_db.state, "ready");
    assert_eq!(served.len() as u64, record.size);
    assert_eq!(Hash::of(&served), record.hash);
}

/// A mount in `dir` of the test bundle with its db record, edited by `edit`.
fn mount_with_edited_record(dir: &std::path::Path, edit: impl FnOnce(&mut DbRecord)) -> CacheFs {
    let source = Arc::new(FakeSource::default());
    let records = tempfile::tempdir().unwrap();
    let mut bundle = with_db_record(
        &source,
        bundle_of(FILES, true, true, &source),
        records.path(),
    );
    edit(bundle.sizes.as_mut().unwrap().db.as_mut().unwrap());
    mount(source, bundle, dir)
}

#[test]
fn a_built_db_that_differs_from_its_record_is_refused_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let fs = mount_with_edited_record(dir.path(), |record| record.hash = Hash::of(b"another db"));

    let err = fs.read(tree::MACHE_DB, 0, 4096).unwrap_err();
    assert!(matches!(err, Error::DbMismatch { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("BLAKE3"), "{err}");
    assert_eq!(fs.status().mache_db.state, "failed");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("dbs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the mismatching db is removed: {left:?}");
}

#[test]
fn a_record_of_another_synthesizer_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let fs = mount_with_edited_record(dir.path(), |record| {
        record.synthesizer = "mache-cachefs.db/0 sqlite 3.0.0".to_string();
    });

    let attr = fs.attr(tree::MACHE_DB).unwrap();
    assert_eq!((attr.size, attr.volatile), (0, true), "as without a record");
    assert!(!fs.opens_stateless());
    let served = read_all(&fs, "mache.db").unwrap();
    assert!(served.starts_with(b"SQLite format 3\0"));
}

/// The conformance vectors' bundle (SPEC §7), its lockfile edited by
/// `edit`: raw-shaped chunks of a bundle whose processors include
/// `tree-sitter-go`, so opaque.
fn vectors_bundle(source: &FakeSource, edit: impl FnOnce(&mut Lockfile)) -> Bundle {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-cache-v1");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    for chunk in ["chunk-001.bin", "chunk-002.bin"] {
        let bytes = read(chunk);
        source
            .objects
            .lock()
            .unwrap()
            .insert(Hash::of(&bytes), bytes);
    }
    let mut lockfile = crate::lockfile::binary::decode(&read("lockfile-config.bin")).unwrap();
    edit(&mut lockfile);
    let lockfile_bytes = crate::lockfile::binary::encode(&lockfile);
    Bundle::new(Hash::of(&lockfile_bytes), lockfile_bytes, lockfile, None)
}

#[test]
fn the_vectors_opaque_chunks_are_served_as_stored_and_in_mache_db() {
    let source = Arc::new(FakeSource::default());
    let bundle = vectors_bundle(&source, |_| {});
    let chunks = bundle.lockfile.sources.clone();
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    for entry in &chunks {
        let bytes = read_all(&fs, &format!("sources/{}", entry.path)).unwrap();
        assert_eq!(Hash::of(&bytes), entry.chunk_hash, "{}", entry.path);
    }
    let served = dir.path().join("served.db");
    std::fs::write(&served, read_all(&fs, "mache.db").unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&served).unwrap();
    let main: Vec<u8> = conn
        .query_row(
            "SELECT content FROM _source WHERE id = 'src/main.go'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let main_entry = chunks.iter().find(|e| e.path == "src/main.go").unwrap();
    assert_eq!(Hash::of(&main), main_entry.chunk_hash);
    assert_eq!(fs.status().counters.verification_failures, 0);
}

#[test]
fn the_vectors_chunks_in_a_bundle_of_blake3_alone_fail_their_input_hash() {
    let source = Arc::new(FakeSource::default());
    let bundle = vectors_bundle(&source, |lockfile| {
        lockfile
            .meta
            .input_processors
            .retain(|p| p.kind == crate::lockfile::BLAKE3_PROCESSOR);
    });
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    let err = read_all(&fs, "sources/src/main.go").unwrap_err();
    assert!(matches!(err, Error::InputMismatch(_)), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(fs.status().counters.verification_failures, 1);
}

#[test]
fn status_is_json_with_the_counters() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source, bundle, dir.path());
    read_all(&fs, "sources/README.md").unwrap();
    read_all(&fs, "sources/README.md").unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&read_all(&fs, ".cachefs/status").unwrap()).unwrap();
    assert_eq!(doc["ref"], "latest");
    assert_eq!(doc["sources"], 4);
    assert_eq!(doc["chunks_fetched"], 1);
    assert_eq!(doc["cache"]["misses"], 1);
    assert_eq!(doc["cache"]["hits"], 1);
    assert_eq!(doc["mache_db"]["state"], "absent");
    assert_eq!(doc["tree"]["source_files"], 4);
}

#[test]
fn reads_answered_at_once_from_memory_count_as_cache_hits() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source, bundle, dir.path());
    let ino = fs.tree().resolve("sources/README.md").unwrap();
    assert!(fs.read_now(ino, 0, 4).is_none(), "nothing is in memory yet");
    read_all(&fs, "sources/README.md").unwrap();
    for _ in 0..3 {
        assert!(fs.read_now(ino, 0, 4).unwrap().is_ok());
    }
    let stats = fs.content().cache().stats();
    assert_eq!((stats.misses, stats.hits), (1, 3));
}

#[test]
fn a_failed_db_build_is_remembered_for_a_doubling_backoff_then_tried_again() {
    let source = Arc::new(FakeSource::default());
    let bundle = bundle_of(FILES, true, true, &source);
    let dir = tempfile::tempdir().unwrap();
    let fs = mount(source.clone(), bundle, dir.path());
    source.down.store(true, Ordering::SeqCst);

    let first = fs.open(tree::MACHE_DB, false).unwrap_err();
    assert_eq!(first.errno(), libc::EIO, "{first}");
    assert!(first.to_string().contains("it is down"), "{first}");
    assert_eq!(fs.synth.attempts(), 1);
    assert_eq!(fs.synth.remembered_wait(), Some(Duration::from_secs(5)));
    let fetched = source.fetches();
    assert!(fetched > 0);
    for _ in 0..20 {
        let again = fs.open(tree::MACHE_DB, false).unwrap_err();
        assert_eq!(again.errno(), libc::EIO, "{again}");
        assert!(again.to_string().contains("it is down"), "{again}");
        assert_eq!(again.to_string(), first.to_string(), "the same error");
    }
    let read = fs.read(tree::MACHE_DB, 0, 4096).unwrap_err();
    assert!(read.to_string().contains("it is down"), "{read}");
    assert_eq!(fs.synth.attempts(), 1, "no build within the backoff");
    assert_eq!(
        source.fetches(),
        fetched,
        "nothing fetched within the backoff"
    );
    assert_eq!(fs.status().mache_db.state, "failed");
    assert_eq!(fs.status().counters.errors, 1, "one failure, counted once");

    for (attempts, wait) in [(2, 10), (3, 20), (4, 40), (5, 60), (6, 60)] {
        fs.synth.expire_backoff();
        assert!(fs.open(tree::MACHE_DB, false).is_err());
        assert_eq!(fs.synth.attempts(), attempts);
        assert_eq!(fs.synth.remembered_wait(), Some(Duration::from_secs(wait)));
    }
    assert!(
        source.fetches() > fetched,
        "each expired backoff builds again"
    );

    source.down.store(false, Ordering::SeqCst);
    assert!(
        fs.open(tree::MACHE_DB, false).is_err(),
        "still in the backoff"
    );
    fs.synth.expire_backoff();
    fs.open(tree::MACHE_DB, false).unwrap();
    assert_eq!(fs.synth.attempts(), 7);
    assert_eq!(fs.status().mache_db.state, "ready");
    assert_eq!(
        fs.synth.remembered_wait(),
        None,
        "success forgets the failure"
    );
    let size = fs.attr(tree::MACHE_DB).unwrap().size;
    assert!(size > 0);
    let db = fs.read(tree::MACHE_DB, 0, size as u32).unwrap();
    assert!(db.as_slice().starts_with(b"SQLite format 3\0"));
}

#[test]
fn concurrent_opens_of_mache_db_share_one_build_and_its_result() {
    for down in [true, false] {
        let source = Arc::new(FakeSource::default());
        let bundle = bundle_of(FILES, true, true, &source);
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(mount(source.clone(), bundle, dir.path()));
        source.down.store(down, Ordering::SeqCst);
        source.hold(None);
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let fs = fs.clone();
                std::thread::spawn(move || fs.open(tree::MACHE_DB, false))
            })
            .collect();
        source.wait_for_held(1);
        assert_eq!(fs.status().mache_db.state, "building");
        source.release();
        for open in opens {
            match (open.join().unwrap(), down) {
                (Err(e), true) => assert!(e.to_string().contains("it is down"), "{e}"),
                (Ok(()), false) => {}
                (other, _) => panic!("down {down}: {other:?}"),
            }
        }
        assert_eq!(fs.synth.attempts(), 1, "down {down}: one build for 8 opens");
    }
}

#[test]
fn metadata_of_other_files_answers_while_a_read_of_a_hung_chunk_waits() {
    for index in [true, false] {
        let source = Arc::new(FakeSource::default());
        let bundle = bundle_of(FILES, true, index, &source);
        let hung = bundle.lockfile.sources[1].chunk_hash;
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(mount(source.clone(), bundle, dir.path()));
        let hung_ino = fs.tree().resolve("sources/src/auth.go").unwrap();
        source.hold(Some(hung));
        assert!(
            fs.read_now(hung_ino, 0, 4096).is_none(),
            "a cold read waits"
        );
        let reader = {
            let fs = fs.clone();
            std::thread::spawn(move || fs.read(hung_ino, 0, 4096).map(|d| d.as_slice().to_vec()))
        };
        source.wait_for_held(1);

        let started = Instant::now();
        let fs2 = fs.clone();
        let sizes = answers_promptly("metadata of other files", move || {
            let fs = fs2;
            let root = names(&fs, tree::ROOT);
            assert!(root.contains(&"ast".to_string()), "{root:?}");
            let src = fs.tree().resolve("sources/src").unwrap();
            let main = fs.lookup(src, b"main.go").unwrap();
            let readme = fs.attr(fs.tree().resolve("sources/README.md").unwrap());
            assert_eq!(names(&fs, src), [".", "..", "auth.go", "main.go"]);
            let status = fs.read_now(tree::STATUS, 0, 1 << 20).unwrap().unwrap();
            let doc: serde_json::Value = serde_json::from_slice(status.as_slice()).unwrap();
            assert_eq!(doc["mache_db"]["state"], "absent");
            fs.xattr(tree::ROOT, b"user.mache.ref").unwrap();
            fs.totals();
            fs.attr(src).unwrap();
            (main.size, readme.unwrap().size)
        });
        assert_eq!(sizes, (FILES[0].1.len() as u64, FILES[2].1.len() as u64));
        assert!(
            !reader.is_finished(),
            "index {index}: the hung read still waits ({:?})",
            started.elapsed()
        );
        assert_eq!(
            fs.attr_may_block(hung_ino),
            !index,
            "without an index the hung file's own size waits for its chunk"
        );
        source.release();
        assert_eq!(reader.join().unwrap().unwrap(), FILES[1].1);
        assert!(!fs.attr_may_block(hung_ino));
    }
}

#[test]
fn metadata_runs_while_the_read_pool_is_full() {
    let pools = fuse::IoPools::start(2).unwrap();
    let (started_tx, started) = mpsc::channel();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (done_tx, done) = mpsc::channel();
    for n in 0..3 {
        let (started_tx, done_tx, gate) = (started_tx.clone(), done_tx.clone(), gate.clone());
        pools.run(fuse::Lane::Read, move || {
            started_tx.send(n).unwrap();
            let (open, cond) = &*gate;
            drop(
                cond.wait_while(open.lock().unwrap(), |open| !*open)
                    .unwrap(),
            );
            done_tx.send(n).unwrap();
        });
    }
    for _ in 0..2 {
        started.recv_timeout(PATIENCE).expect("two reads start");
    }
    let (meta_tx, meta) = mpsc::channel();
    pools.run(fuse::Lane::Metadata, move || meta_tx.send(()).unwrap());
    meta.recv_timeout(PATIENCE)
        .expect("metadata runs while every read thread is taken");
    assert!(
        started.try_recv().is_err(),
        "the read pool is bounded: the third read waits for a thread"
    );
    let caller = std::thread::current().id();
    let (now_tx, now) = mpsc::channel();
    pools.run(fuse::Lane::Now, move || {
        now_tx.send(std::thread::current().id()).unwrap()
    });
    assert_eq!(now.try_recv().unwrap(), caller, "Lane::Now runs in place");

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let mut finished: Vec<i32> = (0..3)
        .map(|_| done.recv_timeout(PATIENCE).unwrap())
        .collect();
    finished.sort();
    assert_eq!(finished, [0, 1, 2]);
    pools.shutdown();
}
