//! Our client against our own build-cache/v1 provider: push to `serve`,
//! then pull, verify and refs through it, re-push unchanged with nothing
//! uploaded, and the conformance vectors' bundle pulled, verified, as a
//! registry bundle.

mod common;
mod http_wire;
mod serve_support;

use std::path::Path;

use common::*;
use serve_support::Server;

const SCOPE: &str = "team/repo";

fn remote(server: &Server) -> Vec<String> {
    vec![
        "--remote".into(),
        format!("http://{}", server.addr),
        "--scope".into(),
        SCOPE.into(),
    ]
}

/// Runs the binary with this test's cache and the server as remote.
fn run_remote(dir: &Path, server: &Server, args: &[&str]) -> std::process::Output {
    bin()
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .args(args)
        .args(remote(server))
        .output()
        .unwrap()
}

fn sample_db(dir: &Path, extra: &str) -> std::path::PathBuf {
    let db = dir.join(format!("mache{extra}.db"));
    let b = format!("package b // {extra}\n");
    let sources = [
        Src::at("src/a.go", Some("go"), b"package a\n"),
        Src::at("src/b.go", Some("go"), b.as_bytes()),
        Src::at("docs/readme.md", Some("markdown"), b"# hello\n"),
        Src::at("empty", Some("text"), b""),
    ];
    let nodes: [Node; 1] = [(
        "src/a.go/File",
        "src/a.go",
        "source_file",
        [0, 10, 0, 0, 1, 0],
    )];
    make_db(&db, &sources, Some(&nodes));
    db
}

#[test]
fn push_to_serve_then_pull_verify_and_refs_through_it_and_an_unchanged_repush_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &dir.path().join("served"), &[]);
    let db = sample_db(dir.path(), "");
    let local = dir.path().join("local");
    let first = json_of(run_remote(
        dir.path(),
        &server,
        &["push", "--db", s(&db), s(&local), "--tag", "v1", "--json"],
    ));
    assert_eq!(
        first["remote"]["uploaded"], 6,
        "4 chunks, the lockfile, the sizes index: {first:#}"
    );
    assert_eq!(first["remote"]["present"], 0);

    let again = json_of(run_remote(
        dir.path(),
        &server,
        &["push", "--db", s(&db), s(&local), "--tag", "v1", "--json"],
    ));
    assert_eq!(again["remote"]["uploaded"], 0, "{again:#}");
    assert_eq!(again["remote"]["manifest_unchanged"], true);
    assert_eq!(again["remote"]["manifest"], first["remote"]["manifest"]);

    let out = dir.path().join("pulled.db");
    json_of(run_remote(
        dir.path(),
        &server,
        &["pull", "--out-db", s(&out), "--ref", "v1", "--json"],
    ));
    assert_eq!(dump_sources(&out), dump_sources(&db));
    assert_eq!(dump_ast(&out), dump_ast(&db));
    let verified = json_of(run_remote(
        dir.path(),
        &server,
        &["verify", "--ref", "v1", "--json"],
    ));
    assert_eq!(verified["sources"], 4);

    let refs = json_of(run_remote(dir.path(), &server, &["refs", "--json"]));
    let names = ref_names(&refs);
    assert!(
        names.iter().any(|n| n == "v1") && names.iter().any(|n| n == "latest"),
        "{refs:#}"
    );
    assert!(
        refs["refs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lockfile"] == first["lockfile"])
    );

    // A changed file uploads its chunk, the lockfile and the sizes index only.
    let changed = sample_db(dir.path(), "changed");
    let second = json_of(run_remote(
        dir.path(),
        &server,
        &[
            "push",
            "--db",
            s(&changed),
            s(&local),
            "--tag",
            "v2",
            "--json",
        ],
    ));
    assert_eq!(second["remote"]["uploaded"], 3, "{second:#}");
    assert_eq!(second["remote"]["present"], 3);
    // What serve stored is a bundle of its store too.
    run_ok(&[
        "verify",
        s(&dir.path().join("served")),
        "--ref",
        second["lockfile"].as_str().unwrap(),
    ]);
}

#[test]
fn the_conformance_vectors_bundle_pulls_through_our_client() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    vectors_store(&served);
    let server = Server::start(dir.path(), &served, &[]);
    let served_manifest = server.get(&format!("/v2/mache/{SCOPE}/manifests/latest"));
    assert_eq!(
        served_manifest.body,
        vector("manifest.json"),
        "the vector manifest, byte for byte"
    );
    // Verified: chunk hashes and root; the opaque chunks restore as stored.
    let out = dir.path().join("vectors.db");
    let pulled = json_of(run_remote(
        dir.path(),
        &server,
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_eq!(pulled["verified"], true, "{pulled:#}");
    assert_eq!(pulled["opaque_sources"], 2, "{pulled:#}");
    let rows = dump_sources(&out);
    let paths: Vec<&str> = rows.iter().map(|r| r.1.as_deref().unwrap()).collect();
    assert_eq!(paths, ["src/auth.go", "src/main.go"]);
    let [main, auth] = vector_chunks();
    assert_eq!((&rows[0].3, &rows[1].3), (&auth, &main));
}

#[test]
fn a_bundle_of_20000_sources_in_one_layer_per_source_pushes_and_pulls_through_serve() {
    // 20,000 layers make a manifest of about 6 MB: past the 4 MiB that the
    // distribution registry accepts, within what providers must (16 MiB).
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 20_000, 1);
    let server = Server::start(dir.path(), &dir.path().join("served"), &[]);
    let pushed = json_of(run_remote(
        dir.path(),
        &server,
        &[
            "push",
            "--db",
            s(&db),
            s(&dir.path().join("local")),
            "--json",
        ],
    ));
    assert_eq!(pushed["sources"], 20000);
    let manifest = server.get(&format!("/v2/mache/{SCOPE}/manifests/latest"));
    assert!(
        manifest.body.len() > 4 << 20,
        "{} bytes",
        manifest.body.len()
    );
    let out = dir.path().join("pulled.db");
    let pulled = json_of(run_remote(
        dir.path(),
        &server,
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_eq!(pulled["sources"], 20000);
    assert_eq!(dump_sources(&out).len(), 20000);
}

#[test]
fn the_packed_layout_round_trips_reuses_its_packs_and_an_unchanged_repush_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &dir.path().join("served"), &[]);
    let db = sample_db(dir.path(), "");
    let local = dir.path().join("local");
    let push = |db: &Path| {
        json_of(run_remote(
            dir.path(),
            &server,
            &[
                "push",
                "--db",
                s(db),
                s(&local),
                "--layout",
                "packed",
                "--json",
            ],
        ))
    };
    let first = push(&db);
    assert_eq!(first["remote"]["layout"], "packed/2");
    assert_eq!(
        first["remote"]["uploaded"], 3,
        "one pack, the lockfile, the index: {first:#}"
    );
    let manifest = server
        .get(&format!("/v2/mache/{SCOPE}/manifests/latest"))
        .json();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "{manifest:#}"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.mache-cachefs.lockfile.v1"
    );

    let again = push(&db);
    assert_eq!(again["remote"]["uploaded"], 0, "{again:#}");
    assert_eq!(again["remote"]["manifest_unchanged"], true);

    let changed = sample_db(dir.path(), "changed");
    let second = push(&changed);
    assert_eq!(
        second["remote"]["uploaded"], 3,
        "a pack of the one new chunk, lockfile, index: {second:#}"
    );
    let manifest = server
        .get(&format!("/v2/mache/{SCOPE}/manifests/latest"))
        .json();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        3,
        "the old pack is kept: {manifest:#}"
    );

    let out = dir.path().join("pulled.db");
    json_of(run_remote(
        dir.path(),
        &server,
        &["pull", "--out-db", s(&out), "--json"],
    ));
    assert_eq!(dump_sources(&out), dump_sources(&changed));
    assert_eq!(dump_ast(&out), dump_ast(&changed));
    json_of(run_remote(dir.path(), &server, &["verify", "--json"]));
}

/// Writes `text` to `dir/name`, readable by its owner only (as the client
/// wants token files), and returns the path.
fn secret_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn a_read_only_token_pulls_and_is_denied_pushes_and_a_read_write_token_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = secret_file(
        dir.path(),
        "tokens",
        "# developers pull, CI pushes\nread-only dev-7f3a\nread-write ci-91bc\n",
    );
    let server = Server::start(
        dir.path(),
        &dir.path().join("served"),
        &["--token-file", s(&tokens)],
    );
    let ci = secret_file(dir.path(), "ci-token", "ci-91bc\n");
    // The developer's token comes from the config file, as on a laptop.
    let config_home = dir.path().join("config");
    let dev = secret_file(dir.path(), "dev-token", "dev-7f3a\n");
    std::fs::create_dir_all(config_home.join("mache-cachefs")).unwrap();
    std::fs::write(
        config_home.join("mache-cachefs/config.toml"),
        format!("token_file = {:?}\n", s(&dev)),
    )
    .unwrap();
    let as_dev = |args: &[&str]| {
        bin()
            .env("XDG_CACHE_HOME", dir.path().join("dev-cache"))
            .env("XDG_CONFIG_HOME", &config_home)
            .args(args)
            .args(remote(&server))
            .output()
            .unwrap()
    };

    let db = sample_db(dir.path(), "");
    let local = dir.path().join("local");
    let denied = as_dev(&["push", "--db", s(&db), s(&local), "--tag", "v1"]);
    assert_fails(&denied, 7, "403");
    for stored in ["objects", "tmp", "repositories"] {
        let files = list_files(&dir.path().join("served").join(stored));
        assert!(
            files.is_empty(),
            "nothing was stored: {stored} has {files:?}"
        );
    }

    let pushed = json_of(run_remote(
        dir.path(),
        &server,
        &[
            "push",
            "--db",
            s(&db),
            s(&local),
            "--tag",
            "v1",
            "--token-file",
            s(&ci),
            "--json",
        ],
    ));
    assert_eq!(pushed["remote"]["uploaded"], 6, "{pushed:#}");

    let out = dir.path().join("pulled.db");
    json_of(as_dev(&[
        "pull",
        "--out-db",
        s(&out),
        "--ref",
        "v1",
        "--json",
    ]));
    assert_eq!(dump_sources(&out), dump_sources(&db));

    // Over the wire: every write with the read-only token is 403 DENIED,
    // an unknown token 401 with the challenge.
    let name = format!("/v2/mache/{SCOPE}");
    let bearer = |token: &str| format!("Bearer {token}");
    let dev_auth = bearer("dev-7f3a");
    for (method, path) in [
        ("POST", format!("{name}/blobs/uploads/")),
        ("PUT", format!("{name}/manifests/v2")),
        ("PATCH", format!("{name}/blobs/uploads/x")),
        ("DELETE", format!("{name}/manifests/v1")),
    ] {
        let reply = server.request(method, &path, &[("Authorization", &dev_auth)], b"");
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text());
        assert_eq!(reply.error().0, "DENIED");
    }
    let read = server.request(
        "GET",
        &format!("{name}/manifests/v1"),
        &[("Authorization", &dev_auth)],
        b"",
    );
    assert_eq!(read.status, 200);
    let unknown = server.request("GET", "/v2/", &[("Authorization", &bearer("guess"))], b"");
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.error().0, "UNAUTHORIZED");
    assert!(unknown.header("WWW-Authenticate").is_some());
    assert!(!server.log().contains("dev-7f3a") && !server.log().contains("ci-91bc"));
}
