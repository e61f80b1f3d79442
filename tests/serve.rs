//! `mache-cachefs serve` through the real binary on a free port: the
//! build-cache/v1 conformance vectors pushed by Python's `http.client` and
//! read back byte for byte, then used by `inspect`/`pull`/`verify` on the
//! store; bundles pushed locally served as synthesized manifests; chunked
//! and true-SHA-256 uploads; the error codes; the token; 32 concurrent
//! clients; and SIGTERM in the middle of an upload.

mod common;
mod http_wire;
mod serve_support;

use std::path::{Path, PathBuf};

use common::*;
use mache_cachefs::store::LocalStore;
use serve_support::*;

const NAME: &str = "mache/team/repo";
const LOCKFILE_HEX: &str = "1a8f93c163c836aecae2fd3e33b03644399c0888474e9d7b2c1f61877e8f8c49";
const MANIFEST_B3: &str = "sha256:8c93ee7314cecf98a6dd04cbf7c38de1094720e36f1efd1316ec750b07e4b0d0";
const MANIFEST_SHA: &str =
    "sha256:81ddf65f085e739f84ba7e401983387dd31fbd9262641d009c8f741c125fcd47";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The vector blobs: (file, bytes, wire digest).
fn vector_blobs() -> Vec<(&'static str, Vec<u8>, String)> {
    ["chunk-001.bin", "chunk-002.bin", "lockfile-config.bin"]
        .into_iter()
        .map(|file| {
            let bytes = vector(file);
            let digest = b3_digest(&bytes);
            (file, bytes, digest)
        })
        .collect()
}

/// Pushes the vectors as a plain client would (POST, then PUT to the
/// Location with ?digest=, then the manifest by tag `v1`), printing each
/// answer's status and Docker-Content-Digest as JSON.
const PYTHON_PUSH: &str = r#"
import http.client, json, os, sys
port, fixtures, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
digests = json.load(open(os.path.join(fixtures, "digests.json")))
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None, headers={}):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}
blobs = [(c["file"], c["chunk_blake3_hex"]) for c in digests["chunks"]]
blobs.append(("lockfile-config.bin", digests["lockfile_config"]["blake3_hex"]))
out = {}
for file, hexdigest in blobs:
    status, headers = call("POST", "/v2/%s/blobs/uploads/" % name)
    assert status == 202, (file, status)
    location = headers["location"]
    sep = "&" if "?" in location else "?"
    body = open(os.path.join(fixtures, file), "rb").read()
    status, headers = call("PUT", location + sep + "digest=sha256:" + hexdigest, body,
                           {"Content-Type": "application/octet-stream"})
    out[file] = [status, headers.get("docker-content-digest")]
manifest = open(os.path.join(fixtures, "manifest.json"), "rb").read()
status, headers = call("PUT", "/v2/%s/manifests/v1" % name, manifest,
                       {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
out["manifest"] = [status, headers.get("docker-content-digest")]
print(json.dumps(out))
"#;

fn python_push(server: &Server) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON_PUSH, &server.port().to_string()])
        .arg(vectors_dir())
        .arg(NAME)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn started(dir: &Path, extra: &[&str]) -> Server {
    Server::start(dir, &dir.join("store"), extra)
}

#[test]
fn conformance_vectors_pushed_by_a_plain_client_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let base = server.get("/v2/");
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );

    let pushed = python_push(&server);
    for (file, _, digest) in vector_blobs() {
        assert_eq!(pushed[file], serde_json::json!([201, digest]), "{file}");
    }
    assert_eq!(pushed["manifest"], serde_json::json!([201, MANIFEST_B3]));

    for (file, bytes, digest) in vector_blobs() {
        let path = format!("/v2/{NAME}/blobs/{digest}");
        let got = server.get(&path);
        assert_eq!(got.status, 200, "{file}");
        assert_eq!(got.body, bytes, "{file}");
        assert_eq!(got.header("Docker-Content-Digest"), Some(digest.as_str()));
        let head = server.request("HEAD", &path, &[], b"");
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("Content-Length"),
            Some(bytes.len().to_string().as_str())
        );
        assert!(head.body.is_empty());
    }

    let manifest = vector("manifest.json");
    for reference in ["v1", MANIFEST_B3, MANIFEST_SHA] {
        let got = server.get(&format!("/v2/{NAME}/manifests/{reference}"));
        assert_eq!(got.status, 200, "{reference}");
        assert_eq!(got.body, manifest, "{reference}");
        assert_eq!(got.header("Docker-Content-Digest"), Some(MANIFEST_B3));
        assert_eq!(got.header("Content-Type"), Some(OCI_MANIFEST));
    }
    let head = server.request("HEAD", &format!("/v2/{NAME}/manifests/v1"), &[], b"");
    assert_eq!(head.header("Content-Length"), Some("1149"));

    let tags = server.get(&format!("/v2/{NAME}/tags/list")).json();
    assert_eq!(tags, serde_json::json!({"name": NAME, "tags": ["v1"]}));
    // Another repository holds none of it.
    let elsewhere = server.get(&format!("/v2/mache/other/manifests/{MANIFEST_B3}"));
    assert_eq!(elsewhere.status, 404);
    assert_eq!(elsewhere.error().0, "MANIFEST_UNKNOWN");
}

#[test]
fn a_range_get_answers_206_with_exactly_those_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let (_, bytes, digest) = vector_blobs().remove(0);
    assert_eq!(push_blob(&server.addr, NAME, &digest, &bytes).status, 201);
    let path = format!("/v2/{NAME}/blobs/{digest}");
    let got = server.request("GET", &path, &[("Range", "bytes=100-199")], b"");
    assert_eq!(got.status, 206);
    assert_eq!(got.body, &bytes[100..200]);
    assert_eq!(got.header("Content-Range"), Some("bytes 100-199/269"));
    assert_eq!(got.header("Content-Length"), Some("100"));
    assert_eq!(got.header("Docker-Content-Digest"), Some(digest.as_str()));
    let tail = server.request("GET", &path, &[("Range", "bytes=-9")], b"");
    assert_eq!(tail.body, &bytes[260..]);
    let past = server.request("GET", &path, &[("Range", "bytes=269-")], b"");
    assert_eq!(past.status, 416);
    assert_eq!(past.header("Content-Range"), Some("bytes */269"));
    assert_eq!(past.error().0, "RANGE_INVALID");
}

#[test]
fn the_pushed_vectors_are_a_bundle_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    python_push(&server);
    drop(server);
    let store = dir.path().join("store");
    let reference = format!("blake3:{LOCKFILE_HEX}");

    let inspected = run_ok(&["inspect", s(&store), "--ref", &reference, "--json"]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["chunks_present"], 2, "{inspected}");
    assert_eq!(inspected["chunks_corrupt"], 0);
    assert_eq!(inspected["root_ok"], true);

    let out_db = dir.path().join("vector.db");
    let pulled = run_ok(&[
        "pull",
        s(&store),
        "--ref",
        &reference,
        "--out-db",
        s(&out_db),
    ]);
    assert!(pulled.contains("restored 2 sources"), "{pulled}");
    let rows = dump_sources(&out_db);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, "src/auth.go");
    assert_eq!(rows[0].3, vector("chunk-002.bin"));
    assert_eq!(rows[1].3, vector("chunk-001.bin"));

    // The vector's chunks are processor output (opaque): every chunk and
    // the root verify; the input hashes are not checkable.
    let verified = run_ok(&["verify", s(&store), "--ref", &reference, "--json"]);
    let verified: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["chunks_verified"], 2, "{verified}");
    assert_eq!(verified["opaque_chunks"], 2, "{verified}");
}

#[test]
fn a_lying_digest_is_refused_naming_both_hashes_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let bytes = b"these bytes are not what the digest says";
    let claimed = format!("sha256:{}", "0".repeat(64));
    let before = files_in(&server.store, "objects");
    let lying = push_blob(&server.addr, NAME, &claimed, bytes);
    assert_eq!(lying.status, 400);
    let (code, message) = lying.error();
    assert_eq!(code, "BLOB_DIGEST_MISMATCH");
    assert!(message.contains(&claimed), "{message}");
    let blake3 = format!("blake3:{}", blake3::hash(bytes).to_hex());
    let sha256 = sha_digest(bytes);
    assert!(message.contains(&blake3), "{message}");
    assert!(message.contains(&sha256), "{message}");
    // The same refusal through a session.
    let start = server.request("POST", &format!("/v2/{NAME}/blobs/uploads/"), &[], b"");
    let location = start.header("Location").unwrap().to_string();
    let put = server.request("PUT", &format!("{location}?digest={claimed}"), &[], bytes);
    assert_eq!(put.error().0, "BLOB_DIGEST_MISMATCH");
    assert_eq!(files_in(&server.store, "objects"), before);
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
    assert!(!server.store.join("sha256").join(&sha256[7..]).exists());
}

#[test]
fn manifests_naming_missing_blobs_or_of_other_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let config = b"{}";
    let config_digest = b3_digest(config);
    assert_eq!(
        push_blob(&server.addr, NAME, &config_digest, config).status,
        201
    );
    let absent = b3_digest(b"never pushed");
    let put = |body: &[u8]| server.request("PUT", &format!("/v2/{NAME}/manifests/t"), &[], body);

    let missing_layer = put(&manifest_of(
        (&config_digest, 2),
        &[(&config_digest, 2), (&absent, 12)],
    ));
    assert_eq!(missing_layer.status, 400);
    let (code, message) = missing_layer.error();
    assert_eq!(code, "MANIFEST_LAYER_MISSING");
    assert!(message.contains(&absent), "{message}");

    let missing_config = put(&manifest_of((&absent, 12), &[]));
    assert_eq!(missing_config.status, 400);
    let (code, message) = missing_config.error();
    assert_eq!(code, "MANIFEST_CONFIG_MISSING");
    assert!(message.contains(&absent), "{message}");

    let mut index: serde_json::Value =
        serde_json::from_slice(&manifest_of((&config_digest, 2), &[])).unwrap();
    index["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    let refused = put(&serde_json::to_vec(&index).unwrap());
    assert_eq!(refused.status, 415);
    assert_eq!(refused.error().0, "MANIFEST_MEDIATYPE_REFUSED");

    assert_eq!(put(b"not json").error().0, "MANIFEST_INVALID");
    assert_eq!(server.get(&format!("/v2/{NAME}/manifests/t")).status, 404);

    // Without a mediaType in the body, the Content-Type may carry it.
    let mut bare = index;
    bare.as_object_mut().unwrap().remove("mediaType");
    let bare = serde_json::to_vec(&bare).unwrap();
    let path = format!("/v2/{NAME}/manifests/bare");
    let typed = server.request("PUT", &path, &[("Content-Type", OCI_MANIFEST)], &bare);
    assert_eq!(typed.status, 201, "{}", typed.text());
    assert_eq!(server.request("PUT", &path, &[], &bare).status, 415);

    // By digest, the body must match it.
    let by_wrong_digest = format!("/v2/{NAME}/manifests/{absent}");
    let wrong = server.request(
        "PUT",
        &by_wrong_digest,
        &[("Content-Type", OCI_MANIFEST)],
        &bare,
    );
    assert_eq!(wrong.error().0, "DIGEST_INVALID");
    let by_sha = format!("/v2/{NAME}/manifests/{}", sha_digest(&bare));
    let right = server.request("PUT", &by_sha, &[("Content-Type", OCI_MANIFEST)], &bare);
    assert_eq!(right.status, 201);
    let b3 = b3_digest(&bare);
    assert_eq!(right.header("Docker-Content-Digest"), Some(b3.as_str()));
}

#[test]
fn a_bundle_pushed_locally_is_served_as_a_build_cache_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    make_db(
        &db,
        &[
            Src::at("src/a.go", Some("go"), b"package a\n"),
            Src::at("src/b.py", Some("python"), b"print('b')\n"),
            Src::at("README", None, b"read me\n"),
        ],
        None,
    );
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store), "--tag", "v2"]);
    let bundle = LocalStore::open(&store).unwrap().resolve("latest").unwrap();
    let server = Server::start(dir.path(), &store, &[]);

    let got = server.get(&format!("/v2/{NAME}/manifests/latest"));
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("Content-Type"), Some(OCI_MANIFEST));
    let manifest = got.json();
    let lockfile_digest = format!("sha256:{}", bundle.lockfile_hash);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], lockfile_digest.as_str());
    assert_eq!(manifest["config"]["size"], bundle.lockfile_bytes.len());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), bundle.lockfile.sources.len());
    for (layer, source) in layers.iter().zip(&bundle.lockfile.sources) {
        let chunk = std::fs::read(
            LocalStore::open(&store)
                .unwrap()
                .object_path(&source.chunk_hash),
        )
        .unwrap();
        assert_eq!(
            layer["digest"],
            format!("sha256:{}", source.chunk_hash).as_str()
        );
        assert_eq!(layer["size"], chunk.len());
        assert_eq!(
            layer["annotations"]["org.cloister.build-cache.path"],
            source.path.as_str()
        );
        assert_eq!(
            layer["annotations"]["org.cloister.build-cache.kind"],
            source.kind.as_str()
        );
    }
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.cloister.build-cache.producer"], "mache");
    assert_eq!(
        annotations["org.cloister.build-cache.schema_version"],
        "0.1.0"
    );

    // What it names is fetchable: the sizes index, the config, itself.
    let sizes_digest = annotations["dev.mache-cachefs.sizes"].as_str().unwrap();
    let sizes = server.get(&format!("/v2/{NAME}/blobs/{sizes_digest}"));
    let sizes_file = store.join(format!("lockfiles/{}.sizes.json", bundle.lockfile_hash));
    assert_eq!(sizes.status, 200);
    assert_eq!(sizes.body, std::fs::read(sizes_file).unwrap());
    let config = server.get(&format!("/v2/{NAME}/blobs/{lockfile_digest}"));
    assert_eq!(config.body, bundle.lockfile_bytes);
    let digest = got.header("Docker-Content-Digest").unwrap();
    assert_eq!(digest, b3_digest(&got.body));
    let by_digest = server.get(&format!("/v2/{NAME}/manifests/{digest}"));
    assert_eq!(by_digest.body, got.body);
    assert_eq!(
        server.get(&format!("/v2/{NAME}/manifests/v2")).body,
        got.body
    );

    let tags = server.get(&format!("/v2/{NAME}/tags/list")).json();
    assert_eq!(tags["tags"], serde_json::json!(["latest", "v2"]));
}

#[test]
fn a_go_written_store_serves_exactly_the_vector_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let blobs: Vec<Vec<u8>> = vector_blobs().into_iter().map(|(_, b, _)| b).collect();
    go_store(&store, &vector("lockfile-config.bin"), &blobs);
    let server = Server::start(dir.path(), &store, &[]);
    let got = server.get(&format!("/v2/{NAME}/manifests/latest"));
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.text(),
        String::from_utf8(vector("manifest.json")).unwrap()
    );
    assert_eq!(got.header("Docker-Content-Digest"), Some(MANIFEST_B3));
    let tags = server.get(&format!("/v2/{NAME}/tags/list")).json();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
}

#[test]
fn a_chunked_upload_and_a_true_sha256_upload_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let start = server.request("POST", &format!("/v2/{NAME}/blobs/uploads/"), &[], b"");
    assert_eq!(start.status, 202);
    assert!(start.header("Docker-Upload-UUID").is_some());
    let location = start.header("Location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("/v2/{NAME}/blobs/uploads/")),
        "{location}"
    );

    let first = server.request(
        "PATCH",
        &location,
        &[("Content-Range", "0-99999")],
        &bytes[..100_000],
    );
    assert_eq!(first.status, 202);
    assert_eq!(first.header("Range"), Some("0-99999"));
    let out_of_order = server.request("PATCH", &location, &[("Content-Range", "5-9")], b"12345");
    assert_eq!(out_of_order.status, 416);
    let second = server.request("PATCH", &location, &[], &bytes[100_000..250_000]);
    assert_eq!(second.header("Range"), Some("0-249999"));
    assert_eq!(server.get(&location).header("Range"), Some("0-249999"));
    let digest = b3_digest(&bytes);
    let done = server.request(
        "PUT",
        &format!("{location}?digest={digest}"),
        &[],
        &bytes[250_000..],
    );
    assert_eq!(done.status, 201, "{}", done.text());
    assert_eq!(
        done.header("Location"),
        Some(format!("/v2/{NAME}/blobs/{digest}").as_str())
    );
    assert_eq!(
        server.get(&format!("/v2/{NAME}/blobs/{digest}")).body,
        bytes
    );
    assert_eq!(server.get(&location).error().0, "BLOB_UPLOAD_UNKNOWN");

    // A plain OCI client's digest: the true SHA-256.
    let plain = b"pushed by a standard client".to_vec();
    let sha = sha_digest(&plain);
    let pushed = push_blob(&server.addr, NAME, &sha, &plain);
    assert_eq!(pushed.status, 201);
    assert_eq!(pushed.header("Docker-Content-Digest"), Some(sha.as_str()));
    for digest in [sha.clone(), b3_digest(&plain)] {
        let got = server.get(&format!("/v2/{NAME}/blobs/{digest}"));
        assert_eq!(got.body, plain, "{digest}");
        assert_eq!(got.header("Docker-Content-Digest"), Some(digest.as_str()));
    }
    let index = std::fs::read_to_string(server.store.join("sha256").join(&sha[7..])).unwrap();
    assert_eq!(index, format!("blake3:{}\n", blake3::hash(&plain).to_hex()));

    // Pushing the same blob again is fine; so is a mount of a blob we have.
    assert_eq!(push_blob(&server.addr, NAME, &sha, &plain).status, 201);
    let mount = format!("/v2/mache/other/blobs/uploads/?mount={sha}&from={NAME}");
    assert_eq!(server.request("POST", &mount, &[], b"").status, 201);
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn size_limits_refuse_large_blobs_and_manifests_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(
        dir.path(),
        &["--max-blob-size", "1K", "--max-manifest-size", "1K"],
    );
    let big = vec![7u8; 1025];
    let refused = push_blob(&server.addr, NAME, &b3_digest(&big), &big);
    assert_eq!(refused.status, 413);
    let (code, message) = refused.error();
    assert_eq!(code, "BLOB_TOO_LARGE");
    assert!(message.contains("1024"), "{message}");
    let fits = vec![7u8; 1024];
    assert_eq!(
        push_blob(&server.addr, NAME, &b3_digest(&fits), &fits).status,
        201
    );

    let digest = b3_digest(&fits);
    let layers: Vec<(&str, usize)> = vec![(&digest, 1024); 20];
    let manifest = manifest_of((&digest, 1024), &layers);
    assert!(manifest.len() > 1024);
    let too_big = server.request("PUT", &format!("/v2/{NAME}/manifests/big"), &[], &manifest);
    assert_eq!(too_big.status, 413);
    assert!(too_big.error().1.contains("--max-manifest-size"));
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn unknown_things_and_bad_names_get_their_oci_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let absent = b3_digest(b"absent");
    let cases = [
        (
            "GET",
            format!("/v2/{NAME}/blobs/{absent}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/{NAME}/blobs/sha256:abc"),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("/v2/{NAME}/manifests/latest"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/{NAME}/manifests/{absent}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            "/v2/Mache/x/tags/list".to_string(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/mache/tags/list".to_string(),
            400,
            "NAME_INVALID",
        ),
        (
            "PATCH",
            format!("/v2/{NAME}/blobs/uploads/nope"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            "DELETE",
            format!("/v2/{NAME}/blobs/{absent}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "PUT",
            format!("/v2/{NAME}/manifests/.bad"),
            400,
            "MANIFEST_INVALID",
        ),
    ];
    for (method, path, status, code) in cases {
        let reply = server.request(method, &path, &[], b"");
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert_eq!(reply.error().0, code, "{method} {path}");
    }
}

#[test]
fn with_a_token_file_only_the_right_bearer_token_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "tok-3f9a1c";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("  {secret}  \nignored\n")).unwrap();
    let server = started(dir.path(), &["--token-file", s(&token_file)]);
    let challenge = r#"Bearer realm="mache-cachefs",service="mache-cachefs""#;
    let right = format!("Bearer {secret}");
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", secret)],
    ] {
        let reply = server.request("GET", "/v2/", &headers, b"");
        assert_eq!(reply.status, 401, "{headers:?}");
        assert_eq!(reply.header("WWW-Authenticate"), Some(challenge));
        assert_eq!(reply.error().0, "UNAUTHORIZED");
    }
    let auth = [("Authorization", right.as_str())];
    assert_eq!(server.request("GET", "/v2/", &auth, b"").status, 200);
    let bytes = b"with a token";
    let path = format!("/v2/{NAME}/blobs/uploads/?digest={}", b3_digest(bytes));
    assert_eq!(server.request("POST", &path, &[], bytes).status, 401);
    assert_eq!(server.request("POST", &path, &auth, bytes).status, 201);
    let tag = format!("/v2/{NAME}/manifests/t");
    assert_eq!(server.request("DELETE", &tag, &[], b"").status, 401);
    let deleted = server.request("DELETE", &tag, &auth, b"");
    assert_eq!(deleted.error().0, "MANIFEST_UNKNOWN", "past the token");

    let log = server.log();
    assert!(log.contains("GET /v2/ 401"), "{log}");
    assert!(log.contains("GET /v2/ 200"), "{log}");
    assert!(!log.contains(secret), "the token was logged: {log}");
}

#[test]
fn thirty_two_concurrent_clients_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let blob = format!("blob of client {i}\n")
                    .repeat(1000 + i)
                    .into_bytes();
                let digest = b3_digest(&blob);
                assert_eq!(push_blob(&addr, NAME, &digest, &blob).status, 201);
                let manifest = manifest_of((&digest, blob.len()), &[(&digest, blob.len())]);
                let path = format!("/v2/{NAME}/manifests/client-{i}");
                let put = request(&addr, "PUT", &path, &[], &manifest);
                assert_eq!(put.status, 201, "{}", put.text());
                assert_eq!(request(&addr, "GET", &path, &[], b"").body, manifest);
                let got = request(
                    &addr,
                    "GET",
                    &format!("/v2/{NAME}/blobs/{digest}"),
                    &[],
                    b"",
                );
                assert_eq!(got.body, blob);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client failed");
    }
    let tags = server.get(&format!("/v2/{NAME}/tags/list")).json();
    let mut expected: Vec<String> = (0..32).map(|i| format!("client-{i}")).collect();
    expected.sort();
    assert_eq!(tags["tags"], serde_json::json!(expected));
    // 32 blobs and 32 manifests.
    assert_eq!(files_in(&server.store, "objects").len(), 64);
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn sigterm_during_an_upload_exits_0_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let start = server.request("POST", &format!("/v2/{NAME}/blobs/uploads/"), &[], b"");
    let location = start.header("Location").unwrap().to_string();
    let part = vec![1u8; 64 << 10];
    assert_eq!(server.request("PATCH", &location, &[], &part).status, 202);
    assert_eq!(
        files_in(&server.store, "tmp").len(),
        1,
        "the upload is staged"
    );
    let store = server.store.clone();
    let log_before = server.log();
    let status = server.stop();
    assert!(
        status.success(),
        "exit status {status:?}; log: {log_before}"
    );
    assert_eq!(files_in(&store, "objects"), Vec::<PathBuf>::new());
    assert_eq!(files_in(&store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn listening_beyond_loopback_without_a_token_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &["--listen", "0.0.0.0:0"]);
    assert!(server.addr.starts_with("0.0.0.0:"), "{}", server.addr);
    let local = format!("127.0.0.1:{}", server.port());
    assert_eq!(request(&local, "GET", "/v2/", &[], b"").status, 200);
    let log = server.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("--token-file"), "{log}");
}

#[test]
fn a_bundle_copied_from_one_server_to_another_pulls_verified_from_the_second_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    make_db(
        &db,
        &[
            Src::at("src/a.go", Some("go"), b"package a\n"),
            Src::at("src/b.go", Some("go"), b"package b\n"),
        ],
        None,
    );
    let store_a = dir.path().join("a");
    run_ok(&["push", "--db", s(&db), s(&store_a)]);
    let from_dir = dir.path().join("from");
    let to_dir = dir.path().join("to");
    std::fs::create_dir_all(&from_dir).unwrap();
    std::fs::create_dir_all(&to_dir).unwrap();
    let from = Server::start(&from_dir, &store_a, &[]);
    let to = Server::start(&to_dir, &dir.path().join("b"), &[]);

    let manifest = from.get(&format!("/v2/{NAME}/manifests/latest"));
    let parsed = manifest.json();
    let mut digests = vec![parsed["config"]["digest"].as_str().unwrap().to_string()];
    for layer in parsed["layers"].as_array().unwrap() {
        digests.push(layer["digest"].as_str().unwrap().to_string());
    }
    digests.push(
        parsed["annotations"]["dev.mache-cachefs.sizes"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    for digest in &digests {
        let blob = from.get(&format!("/v2/{NAME}/blobs/{digest}"));
        assert_eq!(blob.status, 200, "{digest}");
        assert_eq!(
            push_blob(&to.addr, NAME, digest, &blob.body).status,
            201,
            "{digest}"
        );
    }
    let path = format!("/v2/{NAME}/manifests/latest");
    let put = to.request("PUT", &path, &[], &manifest.body);
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(
        put.header("Docker-Content-Digest"),
        manifest.header("Docker-Content-Digest")
    );
    assert_eq!(to.get(&path).body, manifest.body);

    let store_b = dir.path().join("b");
    let lockfile = &digests[0]["sha256:".len()..];
    let sizes = format!("lockfiles/{lockfile}.sizes.json");
    assert_eq!(
        std::fs::read(store_b.join(&sizes)).unwrap(),
        std::fs::read(store_a.join(&sizes)).unwrap()
    );
    let restored = dir.path().join("restored.db");
    let reference = format!("blake3:{lockfile}");
    run_ok(&[
        "pull",
        s(&store_b),
        "--ref",
        &reference,
        "--out-db",
        s(&restored),
    ]);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
    run_ok(&["verify", s(&store_b), "--ref", &reference]);
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_before_exiting_0() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let start = server.request("POST", &format!("/v2/{NAME}/blobs/uploads/"), &[], b"");
    let location = start.header("Location").unwrap().to_string();
    let body = vec![2u8; 10_000];
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // "100 Continue" comes once the handler reads the body: it is running.
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    server.signal();
    server.wait_for_log("shutting down");
    stream.write_all(&body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let reply = parse_reply(&raw, false);
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.header("Range"), Some("0-9999"));
    let store = server.store.clone();
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    assert_eq!(files_in(&store, "tmp"), Vec::<PathBuf>::new());
    assert_eq!(files_in(&store, "objects"), Vec::<PathBuf>::new());
}

/// The repository `push --remote … --scope team` pushes to.
const TEAM: &str = "mache/team";

/// Pushes a db of `files` (path, content) to the server's `mache/team`
/// with `push --remote`, tagged `tag` (and `latest`); its JSON report.
fn push_remote(
    dir: &Path,
    server: &Server,
    files: &[(&str, &[u8])],
    tag: &str,
) -> serde_json::Value {
    let db = dir.join(format!("{tag}.db"));
    let sources: Vec<Src> = files
        .iter()
        .map(|(path, content)| Src::at(path, Some("go"), content))
        .collect();
    make_db(&db, &sources, None);
    let remote = format!("http://{}", server.addr);
    let out = bin()
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .args(["push", "--db", s(&db), s(&dir.join("local")), "--tag", tag])
        .args(["--remote", &remote, "--scope", "team", "--json"])
        .output()
        .unwrap();
    json_of(out)
}

/// `refs STORE --json`: each ref's name and lockfile, in its order.
fn refs_of(store: &Path) -> Vec<(String, String)> {
    let refs: serde_json::Value =
        serde_json::from_str(&run_ok(&["refs", s(store), "--json"])).unwrap();
    let lockfiles = refs["refs"].as_array().unwrap().iter();
    ref_names(&refs)
        .into_iter()
        .zip(lockfiles.map(|r| r["lockfile"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_push_to_serve_is_a_ref_of_the_store_and_its_latest() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let files: &[(&str, &[u8])] = &[("a.go", b"package a\n"), ("b.go", b"package b\n")];
    let pushed = push_remote(dir.path(), &server, files, "v1");
    let lockfile = pushed["lockfile"].as_str().unwrap().to_string();
    let store = server.store.clone();

    let names = |refs: &[(String, String)]| refs.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    let refs = refs_of(&store);
    assert_eq!(
        names(&refs),
        ["latest", "mache/team:latest", "mache/team:v1"],
        "the store's own refs, then serve's tags"
    );
    assert!(refs.iter().all(|(_, l)| *l == lockfile), "{refs:?}");
    let listed = run_ok(&["refs", s(&store)]);
    assert!(listed.contains("mache/team:v1"), "{listed}");

    let inspected: serde_json::Value = serde_json::from_str(&run_ok(&[
        "inspect",
        s(&store),
        "--ref",
        "mache/team:v1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(inspected["lockfile"], lockfile.as_str());
    assert_eq!(inspected["chunks_present"], 2, "{inspected:#}");
    assert_eq!(inspected["refs"], serde_json::json!(names(&refs)));
    // Its latest moved with the push: what the Go mache and `mount` read.
    let latest: serde_json::Value =
        serde_json::from_str(&run_ok(&["inspect", s(&store), "--json"])).unwrap();
    assert_eq!(latest["lockfile"], lockfile.as_str());
    run_ok(&["verify", s(&store), "--ref", "mache/team:latest"]);
    let local = dir.path().join("local");
    for file in ["mache.lock.bin", "mache.lock.toml"] {
        assert_eq!(
            std::fs::read(store.join(file)).unwrap(),
            std::fs::read(local.join(file)).unwrap(),
            "{file}"
        );
    }

    let missing = run_fails(
        &["inspect", s(&store), "--ref", "mache/none:x"],
        5,
        "no ref \"mache/none:x\"",
    );
    assert!(
        missing.contains("mache/team:v1"),
        "names what exists: {missing}"
    );
    run_fails(
        &["verify", s(&store), "--ref", "mache/team:v9"],
        5,
        "mache/team:latest",
    );
    run_fails(
        &["inspect", s(&store), "--ref", "Mache/team:v1"],
        3,
        "<repository>:<tag>",
    );
}

#[test]
fn a_manifest_not_a_bundle_is_no_ref_and_latest_moves_only_to_a_whole_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let store = server.store.clone();
    let config = b"{}";
    let config_digest = b3_digest(config);
    assert_eq!(
        push_blob(&server.addr, TEAM, &config_digest, config).status,
        201
    );
    let put = |tag: &str, body: &[u8]| {
        let path = format!("/v2/{TEAM}/manifests/{tag}");
        let reply = server.request("PUT", &path, &[("Content-Type", OCI_MANIFEST)], body);
        assert_eq!(reply.status, 201, "{}", reply.text());
    };
    put("latest", &manifest_of((&config_digest, 2), &[]));
    assert!(refs_of(&store).is_empty(), "an image is not a bundle");
    run_fails(
        &["inspect", s(&store), "--ref", "mache/team:latest"],
        3,
        "not a mache lockfile",
    );

    // The vector bundle by `latest` with one of its two chunks: not whole.
    let [one, two, lockfile] = vector_blobs().try_into().unwrap();
    for (_, bytes, digest) in [&one, &lockfile] {
        assert_eq!(push_blob(&server.addr, TEAM, digest, bytes).status, 201);
    }
    let mut partial: serde_json::Value = serde_json::from_slice(&vector("manifest.json")).unwrap();
    let layers = partial["layers"].as_array_mut().unwrap();
    layers.retain(|l| l["digest"] == one.2.as_str());
    assert_eq!(layers.len(), 1);
    put("latest", &serde_json::to_vec(&partial).unwrap());
    assert!(!store.join("mache.lock.bin").exists());
    assert!(!store.join("refs/latest").exists());
    let reference = format!("blake3:{LOCKFILE_HEX}");
    assert_eq!(
        refs_of(&store),
        [("mache/team:latest".to_string(), reference.clone())]
    );

    let (_, bytes, digest) = &two;
    assert_eq!(push_blob(&server.addr, TEAM, digest, bytes).status, 201);
    put("latest", &vector("manifest.json"));
    assert_eq!(
        std::fs::read(store.join("mache.lock.bin")).unwrap(),
        lockfile.1
    );
    assert_eq!(
        refs_of(&store),
        [
            ("latest".to_string(), reference.clone()),
            ("mache/team:latest".to_string(), reference)
        ]
    );
}

#[test]
fn deleting_a_tag_or_a_manifest_over_http_unlists_it_and_gc_then_frees_what_only_it_reached() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let store = server.store.clone();
    let shared: &[u8] = b"package shared\n";
    let one = push_remote(
        dir.path(),
        &server,
        &[("s.go", shared), ("a.go", b"package a\n")],
        "v1",
    );
    let two = push_remote(
        dir.path(),
        &server,
        &[("s.go", shared), ("b.go", b"package b\n")],
        "v2",
    );
    let chunk = |content: &[u8]| {
        LocalStore::open(&store)
            .unwrap()
            .object_path(&mache_cachefs::hash::Hash::of(content))
    };
    let (a_chunk, b_chunk) = (chunk(b"package a\n"), chunk(b"package b\n"));
    assert!(a_chunk.is_file() && b_chunk.is_file());

    let v1 = format!("/v2/{TEAM}/manifests/v1");
    let deleted = server.request("DELETE", &v1, &[], b"");
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    let gone = server.get(&v1);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error().0, "MANIFEST_UNKNOWN");
    assert_eq!(
        server.request("DELETE", &v1, &[], b"").error().0,
        "MANIFEST_UNKNOWN"
    );
    let names: Vec<String> = refs_of(&store).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["latest", "mache/team:latest", "mache/team:v2"]);
    assert!(a_chunk.is_file(), "objects stay until gc");

    let report: serde_json::Value =
        serde_json::from_str(&run_ok(&["gc", s(&store), "--grace", "0", "--json"])).unwrap();
    assert!(!a_chunk.is_file(), "v1's own chunk goes: {report:#}");
    assert!(b_chunk.is_file() && chunk(shared).is_file());
    assert_eq!(
        report["objects_removed"], 4,
        "v1's chunk, lockfile, sizes index and manifest: {report:#}"
    );
    let v1_lockfile = &one["lockfile"].as_str().unwrap()["blake3:".len()..];
    assert!(!store.join(format!("lockfiles/{v1_lockfile}.bin")).exists());
    run_ok(&["verify", s(&store), "--ref", "mache/team:v2"]);

    // By digest: the manifest leaves the repository with both its tags.
    let digest = two["remote"]["manifest"].as_str().unwrap();
    let by_digest = format!("/v2/{TEAM}/manifests/{digest}");
    assert_eq!(server.request("DELETE", &by_digest, &[], b"").status, 202);
    assert_eq!(server.get(&by_digest).status, 404);
    let names: Vec<String> = refs_of(&store).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["latest"], "the store's own latest stays");
    assert_eq!(server.request("DELETE", &by_digest, &[], b"").status, 404);
}

// ---- limits: connections, timeouts, uploads, manifest memory ----

/// The head of a request, cut before its end: what slowloris sends.
const HALF_HEAD: &[u8] = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow";

fn seconds(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

#[test]
fn a_thousand_half_open_connections_neither_stop_a_pull_nor_outlive_the_header_timeout() {
    raise_open_files(8192);
    let dir = tempfile::tempdir().unwrap();
    // Long enough for 1000 connections to be made and a pull to run on a
    // loaded machine while all of them are held.
    let server = started(dir.path(), &["--header-timeout", "15s"]);
    let baseline = server.open_fds();
    let files: &[(&str, &[u8])] = &[("a.go", b"package a\n"), ("b.go", b"package b\n")];
    let pushed = push_remote(dir.path(), &server, files, "v1");

    let slow: Vec<_> = (0..1000)
        .map(|_| connect_and_send(&server.addr, HALF_HEAD))
        .collect();
    let what = format!("accepting 1000 connections (baseline {baseline})");
    server.wait_for_fds(seconds(20), &what, |open| open >= baseline + 1000);

    // A pull through the real client, within its own deadline.
    let out_db = dir.path().join("pulled.db");
    let remote = format!("http://{}", server.addr);
    let mut pull = bin()
        .env("XDG_CACHE_HOME", dir.path().join("pull-cache"))
        .args(["pull", "--out-db", s(&out_db), "--ref", "v1"])
        .args(["--remote", &remote, "--scope", "team"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + seconds(30);
    let status = loop {
        if let Some(status) = pull.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            pull.kill().unwrap();
            panic!("the pull did not finish within 30 s beside 1000 half-open connections");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(dump_sources(&out_db).len(), 2, "{pushed}");
    assert!(
        server.open_fds() >= baseline + 1000,
        "the half-open connections were held throughout the pull"
    );

    // The header timeout closes every one of them.
    server.wait_for_fds(seconds(30), "closing the half-open connections", |open| {
        open <= baseline + 5
    });
    let mut one = slow.into_iter().next().unwrap();
    let answer = read_until_closed(&mut one, seconds(5));
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
}

#[test]
fn idle_connections_unread_answers_and_stalled_bodies_are_cut_after_the_idle_timeout() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = started(
        dir.path(),
        &["--idle-timeout", "2s", "--header-timeout", "60s"],
    );
    let baseline = server.open_fds();
    let big = serve_support::load::blob_bytes("big", 32 << 20);
    let digest = b3_digest(&big);
    assert_eq!(push_blob(&server.addr, NAME, &digest, &big).status, 201);

    // A kept-alive connection, answered once, then silent.
    let mut kept = connect_and_send(&server.addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_until_closed(&mut kept, seconds(30));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    // An answer of 32 MiB the client never reads: the server's writes block.
    let head = format!("GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    let unread = connect_and_send(&server.addr, head.as_bytes());
    let sending = "sending the answer (its socket and the blob's file open)";
    server.wait_for_fds(seconds(30), sending, |open| open >= baseline + 2);
    server.wait_for_fds(
        seconds(30),
        "closing the unread answer's connection",
        |open| open <= baseline,
    );
    drop(unread);

    // An upload whose body stops after 10 of its 1000 bytes.
    let start = server.request("POST", &format!("/v2/{NAME}/blobs/uploads/"), &[], b"");
    let location = start.header("Location").unwrap().to_string();
    let head =
        format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789");
    let mut stalled = connect_and_send(&server.addr, head.as_bytes());
    let mut raw = Vec::new();
    stalled.set_read_timeout(Some(seconds(30))).unwrap();
    let _ = stalled.read_to_end(&mut raw);
    let reply = parse_reply(&raw, false);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.error().0, "BLOB_UPLOAD_INVALID");
    assert!(
        reply.error().1.contains("--idle-timeout"),
        "{}",
        reply.text()
    );
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn connections_past_the_cap_wait_in_the_accept_queue_until_one_closes() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = started(
        dir.path(),
        &["--max-connections", "4", "--header-timeout", "60s"],
    );
    let baseline = server.open_fds();
    let mut held: Vec<_> = (0..4)
        .map(|_| connect_and_send(&server.addr, HALF_HEAD))
        .collect();
    server.wait_for_fds(seconds(20), "accepting 4 connections", |open| {
        open == baseline + 4
    });
    let mut fifth = connect_and_send(
        &server.addr,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    fifth
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = fifth.read(&mut byte).unwrap_err();
    assert!(
        matches!(
            waited.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{waited}"
    );
    assert_eq!(server.open_fds(), baseline + 4, "the fifth is not accepted");

    drop(held.pop());
    let answer = read_until_closed(&mut fifth, seconds(30));
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn upload_slots_and_bytes_are_limited_with_429_and_stale_sessions_expire_on_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(
        dir.path(),
        &[
            "--max-uploads",
            "2",
            "--max-upload-bytes",
            "1K",
            "--upload-expiry",
            "4s",
        ],
    );
    let uploads = format!("/v2/{NAME}/blobs/uploads/");
    let start = || server.request("POST", &uploads, &[], b"");
    let (a, b) = (start(), start());
    assert_eq!((a.status, b.status), (202, 202));
    let third = start();
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.error().0, "TOOMANYREQUESTS");
    assert!(
        third.error().1.contains("--max-uploads"),
        "{}",
        third.text()
    );
    assert_eq!(third.header("Retry-After"), Some("2"));
    let small = b"tiny";
    let monolithic = push_blob(&server.addr, NAME, &b3_digest(small), small);
    assert_eq!(
        monolithic.status, 429,
        "a monolithic upload takes a slot too"
    );

    let (a, b) = (a.header("Location").unwrap(), b.header("Location").unwrap());
    assert_eq!(server.request("PATCH", a, &[], &[1; 600]).status, 202);
    let over = server.request("PATCH", b, &[], &[2; 600]);
    assert_eq!(over.status, 429, "{}", over.text());
    assert!(
        over.error().1.contains("--max-upload-bytes"),
        "{}",
        over.text()
    );
    let within = server.request("PATCH", b, &[], &[2; 400]);
    assert_eq!(within.status, 202, "the refused PATCH kept its session");
    assert_eq!(within.header("Range"), Some("0-399"));
    assert_eq!(files_in(&server.store, "tmp").len(), 2);

    // No upload starts, yet both sessions expire and their files go.
    let deadline = std::time::Instant::now() + seconds(30);
    while !files_in(&server.store, "tmp").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "stale sessions stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(server.get(a).error().0, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(start().status, 202, "the slots are free again");
}

/// A valid manifest naming `config` (pushed), padded to about `len` bytes
/// with an annotation.
fn padded_manifest(config: &str, len: usize) -> Vec<u8> {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&manifest_of((config, 2), &[])).unwrap();
    manifest["annotations"] = serde_json::json!({"padding": "p".repeat(len)});
    serde_json::to_vec(&manifest).unwrap()
}

#[test]
fn concurrent_manifest_pushes_share_the_manifest_memory_budget() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = started(
        dir.path(),
        &["--max-manifest-size", "1M", "--manifest-memory", "1M"],
    );
    let config = b"{}";
    let config_digest = b3_digest(config);
    assert_eq!(
        push_blob(&server.addr, NAME, &config_digest, config).status,
        201
    );
    let first = padded_manifest(&config_digest, 700_000);
    let second = padded_manifest(&config_digest, 700_001);
    let headers = [("Content-Type", OCI_MANIFEST)];

    // The first is being read (the server asked for its body).
    let head = format!(
        "PUT /v2/{NAME}/manifests/first HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Content-Type: {OCI_MANIFEST}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        first.len()
    );
    let mut reading = connect_and_send(&server.addr, head.as_bytes());
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        reading.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    let refused = server.request(
        "PUT",
        &format!("/v2/{NAME}/manifests/second"),
        &headers,
        &second,
    );
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error().0, "TOOMANYREQUESTS");
    assert!(
        refused.error().1.contains("--manifest-memory"),
        "{}",
        refused.text()
    );

    reading.write_all(&first).unwrap();
    let mut raw = Vec::new();
    reading.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_reply(&raw, false).status, 201);
    let retried = server.request(
        "PUT",
        &format!("/v2/{NAME}/manifests/second"),
        &headers,
        &second,
    );
    assert_eq!(retried.status, 201, "{}", retried.text());
    assert_eq!(
        server.get(&format!("/v2/{NAME}/manifests/second")).body,
        second
    );
}

#[test]
fn a_manifest_of_36_mb_is_accepted_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let config = b"{}";
    let config_digest = b3_digest(config);
    assert_eq!(
        push_blob(&server.addr, NAME, &config_digest, config).status,
        201
    );
    // A 100,000-source bundle's manifest, one layer per source, is ~35 MB.
    let manifest = padded_manifest(&config_digest, 36_000_000);
    let headers = [("Content-Type", OCI_MANIFEST)];
    let put = server.request(
        "PUT",
        &format!("/v2/{NAME}/manifests/big"),
        &headers,
        &manifest,
    );
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(
        server.get(&format!("/v2/{NAME}/manifests/big")).body.len(),
        manifest.len()
    );
}

/// `MACHE_LOAD_<KEY>` as a number, else `default` (the bench script
/// raises them; the test runs with the defaults).
fn load_setting(key: &str, default: u64) -> u64 {
    std::env::var(format!("MACHE_LOAD_{key}"))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("MACHE_LOAD_{key}={v:?}"))
        })
        .unwrap_or(default)
}

#[test]
fn two_hundred_pullers_and_four_pushers_get_no_error_and_no_corrupt_blob() {
    use serve_support::load;
    raise_open_files(8192);
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    // 64 blobs of 1 KiB to about 1 MiB, and a manifest naming them.
    let seeded: Vec<(String, usize)> = (0..64)
        .map(|i| {
            let bytes = load::blob_bytes(&format!("seed {i}"), 1024 + i * i * 256);
            let digest = load::digest_of(&bytes);
            assert_eq!(push_blob(&server.addr, NAME, &digest, &bytes).status, 201);
            (digest, bytes.len())
        })
        .collect();
    let layers: Vec<(&str, usize)> = seeded.iter().map(|(d, l)| (d.as_str(), *l)).collect();
    let manifest = manifest_of(layers[0], &layers);
    let headers = [("Content-Type", OCI_MANIFEST)];
    let put = server.request(
        "PUT",
        &format!("/v2/{NAME}/manifests/latest"),
        &headers,
        &manifest,
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let digests: Vec<String> = seeded.into_iter().map(|(d, _)| d).collect();

    let mut baseline = load::baseline(&server.addr, NAME, &digests, 320);
    let settings = load::Load {
        pullers: load_setting("PULLERS", 200) as usize,
        pushers: load_setting("PUSHERS", 4) as usize,
        duration: seconds(load_setting("SECS", 8)),
    };
    let mut report = load::run(&server.addr, NAME, &digests, settings);
    assert_eq!(report.errors, 0, "{:#?}", report.first_errors);
    assert_eq!(report.corrupt, 0);
    assert!(
        report.pulls > settings.pullers as u64,
        "{} pulls",
        report.pulls
    );
    assert!(
        report.pushes >= settings.pushers as u64,
        "{} pushes",
        report.pushes
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let (base50, base99) = (
        ms(load::percentile(&mut baseline, 50.0)),
        ms(load::percentile(&mut baseline, 99.0)),
    );
    let (load50, load99) = (
        ms(load::percentile(&mut report.latencies, 50.0)),
        ms(load::percentile(&mut report.latencies, 99.0)),
    );
    // Figures for scripts/bench-serve-load.sh; nothing is asserted of them.
    println!(
        "serve-load: pullers={} pushers={} secs={} pulls={} pushes={} errors={} corrupt={} \
         baseline_p50_ms={base50:.2} baseline_p99_ms={base99:.2} loaded_p50_ms={load50:.2} \
         loaded_p99_ms={load99:.2} ratio_p50={:.1} ratio_p99={:.1}",
        settings.pullers,
        settings.pushers,
        settings.duration.as_secs(),
        report.pulls,
        report.pushes,
        report.errors,
        report.corrupt,
        load50 / base50,
        load99 / base99,
    );
    assert_eq!(files_in(&server.store, "tmp"), Vec::<PathBuf>::new());
}

#[test]
fn sigterm_closes_connections_without_a_request_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = started(dir.path(), &[]);
    let mut held: Vec<_> = (0..20)
        .map(|_| connect_and_send(&server.addr, HALF_HEAD))
        .collect();
    held.push(connect_and_send(&server.addr, b""));
    let mut kept = connect_and_send(&server.addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = [0u8; 12];
    std::io::Read::read_exact(&mut kept, &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let open = server.open_fds();
    assert!(open >= 22, "all 22 connections accepted: {open} open files");
    server.signal();
    let (status, log) = server.wait_for_exit();
    assert!(status.success(), "{status:?}");
    assert!(
        !log.contains("cutting them off"),
        "connections without a request held the shutdown up: {log}"
    );
    for mut stream in held.into_iter().chain([kept]) {
        read_until_closed(&mut stream, seconds(5));
    }
}
