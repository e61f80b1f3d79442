//! The harness for a real CNCF distribution registry (Debian's
//! `docker-registry` 2.8.2), checked against it: it starts, answers, counts
//! requests from its log exactly once each, and behaves as the client
//! expects of it (true SHA-256 only, 4 MiB manifests, htpasswd basic auth). These tests need `docker-registry` and `htpasswd`
//! installed (`scripts/setup.sh`); without them they fail, never skip.

mod distribution_support;
mod http_wire;

use distribution_support::*;

const REPO: &str = "mache/harness";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const FOUR_MIB: usize = 4 << 20;

#[test]
fn the_registry_starts_answers_v2_and_counts_requests() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    assert_eq!(registry.url(), format!("http://{}", registry.name()));
    assert_eq!(registry.name(), format!("127.0.0.1:{}", registry.port()));

    let v2 = registry.get("/v2/");
    assert_eq!(v2.status, 200, "{}", v2.text());

    let bytes = b"hello, registry";
    let digest = sha256_digest(bytes);
    let post = registry.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b"");
    assert_eq!(post.status, 202, "{}", post.text());
    let location = post.header("location").expect("a Location").to_string();
    assert!(
        location.starts_with(&format!("{}/v2/{REPO}/blobs/uploads/", registry.url())),
        "the Location is absolute: {location}"
    );
    assert!(
        location.contains("?_state="),
        "the Location carries its state: {location}"
    );
    let put = registry.request("PUT", &format!("{location}&digest={digest}"), &[], bytes);
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(put.header("docker-content-digest"), Some(digest.as_str()));

    let blob = format!("/v2/{REPO}/blobs/{digest}");
    let whole = registry.get(&blob);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.body, bytes);
    let part = registry.request("GET", &blob, &[("Range", "bytes=1-3")], b"");
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1-3/{}", bytes.len()).as_str())
    );
    assert_eq!(part.body, &bytes[1..=3]);

    registry.settle();
    assert_eq!(registry.uploads(), 1, "{:?}", registry.requests());
    assert!(registry.blob_gets() >= 1, "{:?}", registry.requests());
    assert_eq!(registry.blob_gets(), 2, "{:?}", registry.requests());
    assert_eq!(registry.count("PUT", "/blobs/uploads/"), 1);
    assert_eq!(registry.count("HEAD", "/blobs/"), 0);
    // Each request once, in order, and none of the harness's own.
    let seen: Vec<(String, String)> = registry.requests();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["GET", "POST", "PUT", "GET", "GET"], "{seen:?}");
    assert_eq!(seen[0].1, "/v2/");
    assert_eq!(seen[1].1, format!("/v2/{REPO}/blobs/uploads/"));
    assert!(
        seen[2].1.ends_with(&format!("&digest={digest}")),
        "{seen:?}"
    );
    assert_eq!(seen[3].1, blob);
    let statuses: Vec<u16> = registry
        .requests_with_status()
        .iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(statuses, [200, 202, 201, 200, 206]);

    // Settling again sees later requests, and the sentinels stay out.
    registry.get(&blob);
    registry.settle();
    assert_eq!(registry.blob_gets(), 3);
    assert_eq!(registry.requests().len(), 6);
    // The bytes are in the storage the harness configured.
    assert!(
        registry
            .data_dir()
            .join("docker/registry/v2/blobs")
            .is_dir()
    );
}

#[test]
fn a_blake3_digest_behind_sha256_is_refused_with_digest_invalid() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    let bytes = b"content addressed by BLAKE3";
    let wrong = blake3_as_sha256_digest(bytes);
    assert_ne!(wrong, sha256_digest(bytes));
    let put = registry.upload(REPO, &wrong, bytes);
    assert_eq!(put.status, 400, "{}", put.text());
    assert!(
        put.text().contains("DIGEST_INVALID"),
        "the refusal names DIGEST_INVALID: {}",
        put.text()
    );
    assert_eq!(put.error_codes(), ["DIGEST_INVALID"], "{}", put.text());
    let head = registry.request("HEAD", &format!("/v2/{REPO}/blobs/{wrong}"), &[], b"");
    assert_eq!(
        head.status, 404,
        "nothing was stored under the wrong digest"
    );
    // The same bytes under their true SHA-256 are taken.
    registry.push_blob(REPO, bytes);
    registry.settle();
    assert_eq!(registry.uploads(), 2);
}

#[test]
fn a_single_post_with_digest_only_opens_a_session() {
    // 2.8.2 has no one-request monolithic upload: `POST …/uploads/?digest=`
    // with the bytes answers 202 with a session and stores nothing, so a
    // client must be ready to PUT the bytes to the Location.
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    let bytes = b"monolithic";
    let digest = sha256_digest(bytes);
    let post = registry.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(post.status, 202, "{}", post.text());
    let location = post.header("location").expect("a Location").to_string();
    let blob = format!("/v2/{REPO}/blobs/{digest}");
    assert_eq!(registry.request("HEAD", &blob, &[], b"").status, 404);
    let put = registry.request("PUT", &format!("{location}&digest={digest}"), &[], bytes);
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(registry.get(&blob).body, bytes);
}

#[test]
fn a_blob_put_labelled_as_a_form_loses_its_body() {
    // The registry reads `digest` with Go's FormValue, which parses a
    // `application/x-www-form-urlencoded` body as the form: the bytes are
    // gone and the digest no longer matches (curl --data-binary does this).
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    let bytes = b"not a form";
    let digest = sha256_digest(bytes);
    let post = registry.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b"");
    let location = post.header("location").expect("a Location").to_string();
    let put = registry.request(
        "PUT",
        &format!("{location}&digest={digest}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        bytes,
    );
    assert_eq!(put.status, 400, "{}", put.text());
    assert_eq!(put.error_codes(), ["DIGEST_INVALID"], "{}", put.text());
    // As application/octet-stream (or with no Content-Type) it is taken.
    assert_eq!(registry.upload(REPO, &digest, bytes).status, 201);
}

/// An OCI manifest of exactly `size` bytes: `config`, `layer` repeated as
/// often as fits, and a padding annotation to make up the rest.
fn manifest_of_size(size: usize, config: &str, layer: &str) -> Vec<u8> {
    let build = |layers: usize, pad: usize| {
        let layers = vec![(LAYER, layer, 5); layers];
        let pad = "x".repeat(pad);
        oci_manifest((EMPTY_CONFIG, config, 2), &layers, &[("pad", &pad)])
    };
    let bare = build(0, 0).len();
    let per_layer = build(2, 0).len() - build(1, 0).len();
    let layers = (size - bare - 1024) / per_layer;
    let unpadded = build(layers, 0).len();
    let manifest = build(layers, size - unpadded);
    assert_eq!(manifest.len(), size);
    manifest
}

#[test]
fn a_manifest_over_4_mib_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    let config = registry.push_blob(REPO, b"{}");
    let layer = registry.push_blob(REPO, b"layer");

    // Exactly 4 MiB is the most it takes, and it serves it back.
    let at_limit = manifest_of_size(FOUR_MIB, &config, &layer);
    let put = registry.put_manifest(REPO, "at-limit", &at_limit);
    assert_eq!(
        put.status,
        201,
        "a manifest of exactly 4 MiB: {}",
        put.text()
    );
    assert_eq!(
        put.header("docker-content-digest"),
        Some(sha256_digest(&at_limit).as_str())
    );
    let path = format!("/v2/{REPO}/manifests/at-limit");
    let got = registry.request("GET", &path, &[("Accept", OCI_MANIFEST)], b"");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
    assert!(got.body == at_limit, "the manifest comes back byte-exact");
    let bare = registry.get(&path);
    assert_eq!(
        bare.status,
        404,
        "an OCI manifest GET without an OCI Accept: {}",
        bare.text()
    );

    // One byte more is refused before it is stored.
    let over = manifest_of_size(FOUR_MIB + 1, &config, &layer);
    let put = registry.put_manifest(REPO, "over", &over);
    assert_eq!(put.status, 400, "4 MiB + 1 byte: {}", put.text());
    assert_eq!(put.error_codes(), ["MANIFEST_INVALID"], "{}", put.text());
    assert!(
        put.text().contains("request body too large"),
        "{}",
        put.text()
    );
    let missing = registry.request(
        "GET",
        &format!("/v2/{REPO}/manifests/over"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(missing.status, 404, "{}", missing.text());

    // Far over (8 MiB): refused, with a 400 or by resetting the connection.
    let far = manifest_of_size(2 * FOUR_MIB, &config, &layer);
    let outcome = match registry.try_request(
        "PUT",
        &format!("/v2/{REPO}/manifests/far"),
        &[("Content-Type", OCI_MANIFEST)],
        &far,
    ) {
        Ok(reply) => {
            assert_eq!(reply.status, 400, "8 MiB: {}", reply.text());
            assert_eq!(
                reply.error_codes(),
                ["MANIFEST_INVALID"],
                "{}",
                reply.text()
            );
            format!("400 {}", reply.text().trim())
        }
        Err(e) => format!("connection error: {e}"),
    };
    eprintln!("an 8 MiB manifest PUT: {outcome}");
    let missing = registry.request(
        "GET",
        &format!("/v2/{REPO}/manifests/far"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(missing.status, 404, "8 MiB ({outcome}): {}", missing.text());
    registry.settle();
    assert_eq!(
        registry.count("PUT", "/manifests/"),
        3,
        "8 MiB ({outcome}): {:?}",
        registry.requests_with_status()
    );
}

#[test]
fn htpasswd_auth_answers_401_basic_and_accepts_the_user() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start_with_htpasswd(scratch.path(), "alice", "s3cret pass");
    assert_eq!(registry.credentials(), Some(("alice", "s3cret pass")));

    let anonymous = http(&registry.name(), "GET", "/v2/", &[], b"");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"mache-cachefs-tests\"")
    );
    assert_eq!(anonymous.error_codes(), ["UNAUTHORIZED"]);

    let wrong = basic_auth("alice", "wrong");
    let refused = http(
        &registry.name(),
        "GET",
        "/v2/",
        &[("Authorization", &wrong)],
        b"",
    );
    assert_eq!(refused.status, 401, "a wrong password: {}", refused.text());

    let right = basic_auth("alice", "s3cret pass");
    let accepted = http(
        &registry.name(),
        "GET",
        "/v2/",
        &[("Authorization", &right)],
        b"",
    );
    assert_eq!(accepted.status, 200, "{}", accepted.text());

    // The harness's own helpers carry the credentials.
    let digest = registry.push_blob(REPO, b"behind a password");
    assert_eq!(
        registry.get(&format!("/v2/{REPO}/blobs/{digest}")).body,
        b"behind a password"
    );
    registry.settle();
    let statuses: Vec<u16> = registry
        .requests_with_status()
        .iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(statuses, [401, 401, 200, 202, 201, 200]);
    assert_eq!(registry.uploads(), 1);
    assert_eq!(registry.blob_gets(), 1);
}

#[test]
fn dropping_the_harness_stops_the_registry() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Distribution::start(scratch.path());
    let name = registry.name();
    let pid = registry.pid();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(&name).is_err(),
        "nothing listens on {name} any more"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is gone"
    );
    let stopped = Distribution::start(scratch.path());
    let status = stopped.stop();
    // 2.8.2 does not catch SIGTERM: it dies of it.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
}

#[test]
fn the_access_log_parser_reads_this_versions_lines() {
    let log = concat!(
        "127.0.0.1 - - [25/Nov/2026:15:17:16 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n",
        "127.0.0.1 - - [25/Nov/2026:15:17:16 +0000] \"POST /v2/a/b/blobs/uploads/ HTTP/1.1\" 202 0 \"\" \"curl/7.88.1\"\n",
        "time=\"2026-11-25T15:17:16Z\" level=info msg=\"response completed\" http.request.method=GET http.request.uri=/v2/\n",
        "127.0.0.1 - - [25/Nov/2026:15:17:16 +0000] \"GET /v2/?q=\\\"x\\\" HTTP/1.1\" 404 19 \"\" \"\"\n",
        "127.0.0.1 - - [25/Nov/2026:15:17:16 +0000] \"GET /v2/half",
    );
    let parsed = parse_access_log(log);
    assert_eq!(
        parsed,
        [
            ("GET".to_string(), "/v2/".to_string(), 200),
            (
                "POST".to_string(),
                "/v2/a/b/blobs/uploads/".to_string(),
                202
            ),
            ("GET".to_string(), "/v2/?q=\"x\"".to_string(), 404),
        ]
    );
}
