//! Writes each fuzz target's seed corpus into `<out>/<target>/`: the
//! build-cache/v1 conformance vectors (tests/fixtures/build-cache-v1), and
//! values the library encodes itself, so the seeds follow the formats as
//! they change.
//!
//! Usage: `seeds <out>`.
//!
//! It is built with the targets' coverage flags, so it links libFuzzer's
//! runtime like them, but runs as a plain program: its own `main` is the
//! entry point, and the function libFuzzer would call is a stand-in.

use std::path::{Path, PathBuf};

use mache_cachefs::chunk;
use mache_cachefs::lockfile::{self, Lockfile, ProcessorVersion, TopologyEdge};
use mache_cachefs::oci::{self, Descriptor, Manifest};
use mache_cachefs::registry::frames::{self, Codec};
use mache_cachefs::registry::packed::{self, PackIndex, PackIndexV1};
use mache_cachefs::rows::{AstRow, SourceRow};
use mache_cachefs::store::sizes::{SizeIndex, SourceSizes};
use mache_cachefs_fuzz::{PACKS, check_pack_index, lockfile_of, pack_lockfile};

use libfuzzer_sys as _;

/// The fuzz target libFuzzer's runtime refers to; never called here.
#[unsafe(no_mangle)]
#[allow(improper_ctypes_definitions)]
pub extern "C" fn rust_fuzzer_test_input(_: &[u8]) -> i32 {
    0
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seeds <out>"));
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/build-cache-v1");
    let vector = |name: &str| std::fs::read(vectors.join(name)).expect("a conformance vector");
    let lockfiles = lockfiles(&vector("lockfile-config.bin"));

    let mut binary: Vec<Vec<u8>> = vec![vector("lockfile-config.bin")];
    binary.extend(lockfiles.iter().map(lockfile::binary::encode));
    write(&out, "lockfile_binary", &binary);
    let toml = lockfiles
        .iter()
        .map(|l| lockfile::text::to_toml(l).into_bytes());
    write(&out, "lockfile_toml", &toml.collect::<Vec<_>>());
    write(
        &out,
        "chunk",
        &chunks(&vector("chunk-001.bin"), &vector("chunk-002.bin")),
    );
    write(&out, "pack_index", &pack_indexes());
    write(&out, "pack_frame", &frames());
    write(&out, "oci_manifest", &manifests(&vector("manifest.json")));
    write(&out, "oci_names", &names());
    write(&out, "registry_envelope", &envelopes());
    write(&out, "www_authenticate", &challenges());
    write(&out, "mount_tree", &tree_paths());
    write(&out, "serve_requests", &requests());
}

fn write(out: &Path, target: &str, seeds: &[Vec<u8>]) {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).expect("creating a seed directory");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("writing a seed");
    }
}

/// The vector's lockfile, and ours with topology, processors and a
/// `generated_at_ms` past `i64::MAX`.
fn lockfiles(vector: &[u8]) -> Vec<Lockfile> {
    let mut ours = (*lockfile_of(["src/main.go", "src/a b/\u{2028}.go"].map(String::from))).clone();
    ours.meta.input_processors.push(ProcessorVersion {
        kind: "blake3".into(),
        version: "1".into(),
    });
    ours.topology.push(TopologyEdge {
        from: "src/main.go".into(),
        to_source: "\"quoted\"\n".into(),
    });
    ours.meta.generated_at_ms = u64::MAX;
    let decoded = lockfile::binary::decode(vector).expect("the vector lockfile decodes");
    vec![decoded, ours, (*pack_lockfile().0).clone()]
}

fn chunks(first: &[u8], second: &[u8]) -> Vec<Vec<u8>> {
    let source = SourceRow {
        id: "src/x.go".into(),
        path: Some("src/x.go".into()),
        language: Some("go".into()),
        content: b"package x\n".to_vec(),
    };
    let node = |id: &str| AstRow {
        node_id: id.into(),
        source_id: source.id.clone(),
        node_kind: "identifier\u{2029}<&>".into(),
        start_byte: 0,
        end_byte: 7,
        start_row: 0,
        start_col: 0,
        end_row: 0,
        end_col: 7,
    };
    vec![
        first.to_vec(),
        second.to_vec(),
        chunk::encode_ast(&source, &[node("n2"), node("n1")]),
        chunk::encode_ast(&source, &[]),
        b"package main\n".to_vec(),
    ]
}

/// Indexes for [`pack_lockfile`] and [`PACKS`], each after its mode byte:
/// packed/1 as is, packed/2 as JSON for the target to compress.
fn pack_indexes() -> Vec<Vec<u8>> {
    let (lockfile, hash) = pack_lockfile();
    let order = packed::chunk_order(&lockfile);
    let packs: Vec<String> = PACKS.iter().map(|(d, _)| d.to_string()).collect();
    let v1 = PackIndexV1 {
        format: packed::INDEX_FORMAT_V1.into(),
        lockfile: hash.to_prefixed(),
        packs: packs.clone(),
        chunks: vec![
            (order[0].to_hex(), 0, 0, 100),
            (order[1].to_hex(), 1, 10, 54),
        ],
        sizes: None,
    };
    let v2 = PackIndex {
        format: packed::INDEX_FORMAT.into(),
        lockfile: hash.to_prefixed(),
        packs,
        frames: vec![
            (0, 0, 100, 100, Codec::Stored),
            (1, 0, 40, 600, Codec::Zstd),
        ],
        chunks: vec![(0, 0, 100), (1, 10, 500)],
        sizes: None,
    };
    let sizes = |chunk_len: u64, ast_json_len| SourceSizes {
        chunk_len,
        content_len: 7,
        ast_json_len,
    };
    let with_sizes = PackIndex {
        sizes: Some(
            serde_json::from_slice(
                &SizeIndex {
                    lockfile_hash: hash,
                    entries: vec![sizes(100, None), sizes(500, Some(90)), sizes(100, None)],
                    db: None,
                }
                .to_json(),
            )
            .expect("a sizes index is JSON"),
        ),
        ..v2.clone()
    };
    let tagged = |mode: u8, json: Vec<u8>| [vec![mode], json].concat();
    let seeds = vec![
        tagged(1, serde_json::to_vec(&v1).expect("serializes")),
        tagged(0, serde_json::to_vec(&v2).expect("serializes")),
        tagged(1, v2.to_bytes()),
        tagged(0, serde_json::to_vec(&with_sizes).expect("serializes")),
    ];
    for seed in &seeds {
        match check_pack_index(seed) {
            Some(Ok(packed)) => assert_eq!(packed.sizes.is_some(), seed == seeds.last().unwrap()),
            other => panic!("a pack index seed is refused: {other:?}"),
        }
    }
    seeds
}

/// Frames after their codec byte and claimed length.
fn frames() -> Vec<Vec<u8>> {
    let raw = b"package main\n".repeat(40);
    let (codec, stored) = frames::encode(&raw, frames::DEFAULT_LEVEL).expect("encodes");
    let len = (raw.len() as u32).to_le_bytes();
    let header = |codec: Codec| vec![u8::from(codec), len[0], len[1], len[2]];
    vec![
        [header(codec), stored].concat(),
        [header(Codec::Stored), raw].concat(),
    ]
}

/// The vector's build-cache/v1 manifest and a packed one.
fn manifests(vector: &[u8]) -> Vec<Vec<u8>> {
    let (lockfile, _) = pack_lockfile();
    let bytes = lockfile::binary::encode(&lockfile);
    let packs = mache_cachefs_fuzz::packs();
    let index = (oci::sha256_digest(b"index"), 5);
    let packed = Manifest::for_packed(&lockfile, &bytes, &packs, index);
    Manifest::parse(vector).expect("the vector manifest parses");
    Manifest::parse(&packed.to_bytes()).expect("a packed manifest parses");
    let descriptor = Descriptor::new(oci::INDEX_TYPE_V1, oci::sha256_digest(b""), 0);
    vec![
        vector.to_vec(),
        packed.to_bytes(),
        serde_json::to_vec(&descriptor).expect("serializes"),
    ]
}

fn names() -> Vec<Vec<u8>> {
    [
        oci::sha256_digest(b"x").as_str(),
        "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "library/ubuntu",
        "a.b-c__d/e",
        "v1.0_rc-2",
        oci::INDEX_TYPE,
        "application/vnd.mache-cachefs.packindex.v9+json",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn envelopes() -> Vec<Vec<u8>> {
    [
        r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"too large"}]}"#,
        r#"{"errors":[{"code":"DENIED","message":"no","detail":{"k":[1,2]}}]}"#,
        r#"{"errors":[]}"#,
        "<html>502 Bad Gateway</html>",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn challenges() -> Vec<Vec<u8>> {
    [
        r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        r#"Basic realm="registry""#,
        r#"Negotiate, Bearer realm="r\"q", error="insufficient_scope""#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Eight bytes of a number (a blob's length, an upload's offset), then a
/// header value: ranges, content ranges, token lines, authorizations.
fn requests() -> Vec<Vec<u8>> {
    let with = |n: u64, text: &str| [&n.to_le_bytes()[..], text.as_bytes()].concat();
    vec![
        with(1000, "bytes=0-499"),
        with(1000, "bytes=-200"),
        with(1000, "bytes=900-"),
        with(1000, "bytes=0-1,5-6"),
        with(4096, "bytes 4096-8191/*"),
        with(0, "read-only abc\nread-write def\n# comment\n"),
        with(0, "Bearer rw-token"),
        with(0, "Basic dXNlcjpydy10b2tlbg=="),
    ]
}

/// Mode byte, then one path a line: safe, unsafe and conflicting ones.
fn tree_paths() -> Vec<Vec<u8>> {
    let long = "n".repeat(256);
    let paths = [
        "a",
        "a/b",
        "a/b",
        "a.txt",
        "a/b/c.go",
        "../etc/passwd",
        "/abs",
        "d//e",
        "./f",
        "x\0y",
        &long,
        &long[..251],
    ];
    let text = paths.join("\n").into_bytes();
    vec![
        [vec![0], text.clone()].concat(),
        [vec![0xd5], text].concat(),
    ]
}
