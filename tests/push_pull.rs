//! push → pull round trips through the real binary: restored rows equal
//! the original's, with and without `_ast`, for awkward paths and ids, empty
//! files and NULL-content rows; idempotent re-push; refs and Go-written stores.

mod common;

use common::*;

const WEIRD_PATH: &str = "src/ünïcödé/<a>&b\u{2028}\t\u{1}.go";

fn ast_sources<'a>() -> Vec<Src<'a>> {
    vec![
        Src {
            id: WEIRD_PATH,
            path: Some(WEIRD_PATH),
            language: Some("go"),
            content: Some(b"package main\n"),
        },
        Src::at("empty.py", Some("python"), b""),
        Src {
            id: "disk.txt",
            path: Some("disk.txt"),
            language: Some(""),
            content: None,
        },
        Src {
            id: "bin",
            path: Some("bin.dat"),
            language: Some("data"),
            content: Some(&[0, 159, 146, 150, 255]),
        },
    ]
}

fn nodes<'a>() -> Vec<Node<'a>> {
    vec![
        (
            "src/ünïcödé/<a>&b\u{2028}\t\u{1}.go/File",
            WEIRD_PATH,
            "source_file",
            [0, 13, 0, 0, 1, 0],
        ),
        (
            "src/ünïcödé/<a>&b\u{2028}\t\u{1}.go/File/package_clause",
            WEIRD_PATH,
            "package_clause",
            [0, 12, 0, 0, 0, 12],
        ),
        ("empty.py/Module", "empty.py", "Module", [0, 0, 0, 0, 0, 0]),
    ]
}

#[test]
fn ast_db_round_trips_with_equal_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    std::fs::write(dir.path().join("disk.txt"), b"read from disk\n").unwrap();
    make_db(&db, &ast_sources(), Some(&nodes()));
    let store = dir.path().join("store");
    let out = run_ok(&["push", "--db", s(&db), s(&store), "--tag", "v1"]);
    assert!(out.contains("4 new, 0 already present"), "{out}");

    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store), "--ref", "v1"]);
    let mut expected = dump_sources(&db);
    // The NULL-content row restores with the bytes read from disk.
    for row in &mut expected {
        if row.0 == "disk.txt" {
            row.3 = b"read from disk\n".to_vec();
        }
    }
    assert_eq!(dump_sources(&restored), expected);
    assert_eq!(dump_ast(&restored), dump_ast(&db));
}

#[test]
fn raw_db_round_trips_without_ast_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("a/b.go", Some("go"), b"x"),
        Src::at("none", Some(""), b""),
        Src {
            id: WEIRD_PATH,
            path: Some(WEIRD_PATH),
            language: Some("c"),
            content: Some(b"{\"k\":1}"),
        },
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
    assert_eq!(
        dump_ast(&restored),
        None,
        "raw bundles restore without _ast"
    );
    let inspect = run_ok(&["inspect", s(&store), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["raw_chunks"], 3);
    assert_eq!(v["ast_chunks"], 0);
}

#[test]
fn repush_writes_no_new_objects_and_dedups_identical_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("a", Some("go"), b"same"),
        Src::at("b", Some("go"), b"same"),
        Src::at("c", Some("go"), b"other"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    let first: serde_json::Value =
        serde_json::from_str(&run_ok(&["push", "--db", s(&db), s(&store), "--json"])).unwrap();
    assert_eq!(first["distinct_chunks"], 2);
    assert_eq!(first["new_chunks"], 2);
    let objects = list_files(&store.join("objects"));
    assert_eq!(objects.len(), 2);
    let second = run_ok(&["push", "--db", s(&db), s(&store)]);
    assert!(second.contains("0 new, 2 already present"), "{second}");
    assert_eq!(list_files(&store.join("objects")), objects);
    assert!(
        list_files(&store.join("tmp")).is_empty(),
        "no temporary files remain"
    );
}

#[test]
fn refs_resolve_by_name_and_latest_moves() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let one = dir.path().join("one.db");
    let two = dir.path().join("two.db");
    make_db(&one, &[Src::at("f", None, b"1")], None);
    make_db(&two, &[Src::at("f", None, b"2")], None);
    run_ok(&["push", "--db", s(&one), s(&store), "--tag", "v1"]);
    run_ok(&["push", "--db", s(&two), s(&store), "--tag", "v2"]);
    for (reference, content) in [("v1", b"1"), ("v2", b"2"), ("latest", b"2")] {
        let out = dir.path().join(format!("{reference}.db"));
        run_ok(&["pull", "--out-db", s(&out), s(&store), "--ref", reference]);
        assert_eq!(dump_sources(&out)[0].3, content.to_vec(), "ref {reference}");
    }
    run_fails(
        &[
            "pull",
            "--out-db",
            s(&dir.path().join("x.db")),
            s(&store),
            "--ref",
            "v3",
        ],
        5,
        "no ref \"v3\"",
    );
    run_fails(
        &[
            "pull",
            "--out-db",
            s(&dir.path().join("x.db")),
            s(&store),
            "--ref",
            "../v1",
        ],
        3,
        "invalid ref name",
    );
}

#[test]
fn a_store_written_by_go_mache_is_read_as_latest() {
    // mache writes only objects/ and mache.lock.bin: no refs, no sizes index.
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = push_one_source(dir.path(), "f.go", b"x");
    for extra in ["refs", "lockfiles", "pushed", "tmp"] {
        std::fs::remove_dir_all(store.join(extra)).unwrap();
    }
    std::fs::remove_file(store.join("mache.lock.toml")).unwrap();
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
    run_ok(&["verify", s(&store)]);
}

#[test]
fn inspect_reads_store_bin_and_toml_alike() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    std::fs::write(dir.path().join("disk.txt"), b"d").unwrap();
    make_db(&db, &ast_sources(), Some(&nodes()));
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    let parse = |target: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&run_ok(&["inspect", s(target), "--json"])).unwrap()
    };
    let from_store = parse(&store);
    let from_bin = parse(&store.join("mache.lock.bin"));
    let from_toml = parse(&store.join("mache.lock.toml"));
    for v in [&from_store, &from_bin, &from_toml] {
        assert_eq!(v["producer"], "mache");
        assert_eq!(v["schema_version"], "0.1.0");
        assert_eq!(v["sources"], 4);
        assert_eq!(v["topology_edges"], 0);
        assert_eq!(v["root_ok"], true);
        assert_eq!(v["chunks_present"], 4);
        assert_eq!(v["chunks_missing"], 0);
        assert_eq!(v["ast_chunks"], 4);
        assert_eq!(v["root"], from_store["root"]);
    }
    assert_eq!(from_store["refs"], serde_json::json!(["latest"]));
    let human = run_ok(&["inspect", s(&store)]);
    assert!(human.contains("4 present, 0 missing"), "{human}");
}

#[test]
fn pull_without_verify_skips_root_and_input_checks_but_not_chunk_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = push_one_source(dir.path(), "f", b"x");
    let restored = dir.path().join("restored.db");
    let out = run_ok(&[
        "pull",
        "--out-db",
        s(&restored),
        s(&store),
        "--verify=false",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verified"], false);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
    // Chunk hashes are still checked: a corrupt object fails even so.
    let hex = blake3::hash(b"x").to_hex().to_string();
    std::fs::write(store.join("objects").join(&hex[..2]).join(&hex[2..]), b"y").unwrap();
    let again = dir.path().join("again.db");
    let fail = run(&["pull", "--out-db", s(&again), s(&store), "--verify=false"]);
    assert_eq!(fail.status.code(), Some(4));
    assert!(!again.exists());
}

#[test]
fn repush_of_an_unchanged_db_still_restores_missing_objects() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("a", Some("go"), b"alpha"),
        Src::at("b", Some("go"), b"beta"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    let hex = blake3::hash(b"beta").to_hex().to_string();
    std::fs::remove_file(store.join("objects").join(&hex[..2]).join(&hex[2..])).unwrap();
    let again = run_ok(&["push", "--db", s(&db), s(&store)]);
    assert!(again.contains("1 new, 1 already present"), "{again}");
    run_ok(&["verify", s(&store)]);
}

#[test]
fn repush_rereads_files_behind_null_content_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    std::fs::write(dir.path().join("f.txt"), b"first").unwrap();
    make_db(
        &db,
        &[Src {
            id: "f",
            path: Some("f.txt"),
            language: None,
            content: None,
        }],
        None,
    );
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    // The db's bytes are unchanged, but the file it points at is not.
    std::fs::write(dir.path().join("f.txt"), b"second").unwrap();
    let again = run_ok(&["push", "--db", s(&db), s(&store)]);
    assert!(again.contains("1 new, 0 already present"), "{again}");
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored)[0].3, b"second".to_vec());
}

#[test]
fn a_raw_source_that_reads_as_an_ast_chunk_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("config.json", Some("json"), br#"{"source_id":"x"}"#),
        Src::at("plain.go", Some("go"), b"package plain\n"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    let out = run(&["push", "--db", s(&db), s(&store)]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "nothing to warn about: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(&["verify", s(&store)]);
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
}

#[test]
fn raw_sources_sharing_a_path_restore_with_their_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src {
            id: "1",
            path: Some("dup.go"),
            language: Some("go"),
            content: Some(b"package one\n"),
        },
        Src {
            id: "2",
            path: Some("dup.go"),
            language: Some("go"),
            content: Some(b"package two\n"),
        },
        Src::at("solo.go", Some("go"), b"package solo\n"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    run_ok(&["verify", s(&store)]);
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored), dump_sources(&db));
}

#[test]
fn a_raw_source_that_cannot_restore_whole_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src {
            id: "",
            path: Some("dup.go"),
            language: None,
            content: Some(b"a"),
        },
        Src::at("dup.go", None, b"b"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    run_fails(
        &["push", "--db", s(&db), s(&store)],
        3,
        "\"dup.go\" has an empty id",
    );
    assert!(!store.join("mache.lock.bin").exists());
}

/// The lockfiles a store holds, by name.
fn lockfiles(store: &std::path::Path) -> Vec<std::path::PathBuf> {
    list_files(&store.join("lockfiles"))
}

#[test]
fn a_repush_of_unchanged_sources_keeps_the_bundle_and_force_writes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    make_db(&db, &[Src::at("a.go", Some("go"), b"package a\n")], None);
    let store = dir.path().join("store");
    // Each push at another time: each new lockfile would differ.
    let push = |epoch: &str, extra: &[&str]| -> serde_json::Value {
        let out = bin()
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["push", "--db", s(&db), s(&store), "--json"])
            .args(extra)
            .output()
            .unwrap();
        json_of(out)
    };
    let first = push("1000", &[]);
    assert_eq!(first["kept"], false);
    let held = lockfiles(&store);
    let top = std::fs::read(store.join("mache.lock.bin")).unwrap();
    let again = push("2000", &[]);
    assert_eq!(again["kept"], true);
    assert_eq!(again["lockfile"], first["lockfile"]);
    assert_eq!(lockfiles(&store), held, "no new lockfile or sizes file");
    assert_eq!(std::fs::read(store.join("mache.lock.bin")).unwrap(), top);
    // The same rows in a db file that differs (so no fingerprint shortcut):
    // the tag's bundle is still kept.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE notes(x); INSERT INTO notes VALUES (1);")
        .unwrap();
    let slow = push("3000", &[]);
    assert_eq!(slow["kept"], true);
    assert_eq!(slow["lockfile"], first["lockfile"]);
    assert_eq!(lockfiles(&store), held);
    let forced = push("4000", &["--force"]);
    assert_eq!(forced["kept"], false);
    assert_ne!(forced["lockfile"], first["lockfile"]);
}

#[test]
fn refs_lists_tags_and_tag_and_untag_move_them_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    make_db(&db, &[Src::at("a.go", Some("go"), b"package a\n")], None);
    let store = dir.path().join("store");
    let first: serde_json::Value = serde_json::from_str(&run_ok(&[
        "push",
        "--db",
        s(&db),
        s(&store),
        "--json",
        "--tag",
        "v1",
    ]))
    .unwrap();
    let lockfile = first["lockfile"].as_str().unwrap().to_string();
    run_ok(&["tag", "v1", "stable", s(&store)]);
    run_ok(&["tag", &lockfile, "pinned", s(&store)]);
    let refs: serde_json::Value =
        serde_json::from_str(&run_ok(&["refs", s(&store), "--json"])).unwrap();
    let names = ref_names(&refs);
    assert_eq!(names, ["latest", "pinned", "stable", "v1"]);
    assert!(
        refs["refs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lockfile"] == lockfile && r["sources"] == 1)
    );
    run_ok(&["untag", "stable", s(&store)]);
    run_fails(&["untag", "stable", s(&store)], 5, "no ref \"stable\"");
    run_fails(
        &["untag", "latest", s(&store)],
        2,
        "latest cannot be removed",
    );
    run_fails(&["tag", "nope", "x", s(&store)], 5, "no ref \"nope\"");
    run_fails(&["tag", "v1", "bad/name", s(&store)], 3, "invalid ref name");
    let out = dir.path().join("r.db");
    run_ok(&["pull", "--out-db", s(&out), s(&store), "--ref", "pinned"]);
    assert!(
        list_files(&store.join("refs"))
            .iter()
            .all(|p| !p.to_string_lossy().contains("tmp"))
    );
}

/// The `pushed/` record of the store's one pushed db.
fn push_record(store: &std::path::Path) -> std::path::PathBuf {
    let records = list_files(&store.join("pushed"));
    assert_eq!(records.len(), 1, "{records:?}");
    store.join("pushed").join(&records[0])
}

#[test]
fn push_counts_sources_with_ast_rows_apart_from_those_stored_as_ast_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("a.go", Some("go"), b"package a\n"),
        Src::at("b.go", Some("go"), b"package b\n"),
        Src::at("c.md", Some("markdown"), b"# c\n"),
        Src::at("d.txt", Some("text"), b"d\n"),
    ];
    let nodes: [Node; 2] = [
        ("a.go/File", "a.go", "source_file", [0, 10, 0, 0, 1, 0]),
        (
            "a.go/File/package",
            "a.go",
            "package_clause",
            [0, 9, 0, 0, 0, 9],
        ),
    ];
    make_db(&db, &sources, Some(&nodes));
    let store = dir.path().join("store");
    let pushed = run_ok(&["push", "--db", s(&db), s(&store)]);
    assert!(
        pushed.starts_with("pushed 4 sources (1 with AST rows, 3 without) as AST chunks to "),
        "{pushed}"
    );

    // The unchanged re-push takes its count from the push record.
    let again = json_of(run(&["push", "--db", s(&db), s(&store), "--json"]));
    assert_eq!(again["kept"], true, "{again:#}");
    assert_eq!(again["ast_sources"], 1);
    assert_eq!(again["ast_chunk_sources"], 4);
    // A record of the older form (the lockfile alone) means a full push.
    let record = push_record(&store);
    let text = std::fs::read_to_string(&record).unwrap();
    let lockfile_line = text.lines().next().unwrap().to_string();
    std::fs::write(&record, format!("{lockfile_line}\n")).unwrap();
    let full = json_of(run(&["push", "--db", s(&db), s(&store), "--json"]));
    assert_eq!(full["ast_sources"], 1, "{full:#}");
    assert_eq!(full["ast_chunk_sources"], 4);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), text, "rewritten");

    // gc keeps the record of a live bundle; a pull counts as the push did.
    let gc = json_of(run(&["gc", s(&store), "--grace", "0", "--json"]));
    assert_eq!(gc["other_files_removed"], 0, "{gc:#}");
    assert!(record.is_file());
    let out = dir.path().join("pulled.db");
    let pulled = json_of(run(&["pull", "--out-db", s(&out), s(&store), "--json"]));
    assert_eq!(pulled["ast_sources"], 1);
}

#[test]
fn push_says_which_sources_of_a_raw_db_went_in_the_ast_shape() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [
        Src::at("a.go", Some("go"), b"package a\n"),
        Src::at("x.json", Some("json"), br#"{"source_id":"x"}"#),
        Src::at("y.go", Some("go"), b"package y\n"),
    ];
    make_db(&db, &sources, None);
    let store = dir.path().join("store");
    let pushed = run_ok(&["push", "--db", s(&db), s(&store)]);
    assert!(
        pushed.starts_with(
            "pushed 3 sources (0 with AST rows, 3 without) as 1 AST and 2 raw chunks to "
        ),
        "{pushed}"
    );
}

#[test]
fn reports_use_rfc3339_times_iec_sizes_and_singular_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = push_one_source(dir.path(), "one.go", b"package one\n");
    let pushed = run_ok(&["push", "--db", s(&db), s(&store), "--force"]);
    assert!(
        pushed.starts_with("pushed 1 source as a raw chunk to "),
        "{pushed}"
    );
    assert!(
        pushed.contains(" B total") && !pushed.contains(" MB"),
        "{pushed}"
    );
    let inspect = run_ok(&["inspect", s(&store)]);
    assert!(
        inspect.contains("generated at      2025-05-27T11:33:20Z\n"),
        "{inspect}"
    );
    let json = json_of(run(&["inspect", s(&store), "--json"]));
    assert_eq!(json["generated_at"], "2025-05-27T11:33:20Z");
    assert_eq!(json["generated_at_ms"], 1_748_345_600_000u64);
    let refs = run_ok(&["refs", s(&store)]);
    assert!(refs.contains("1 source  2025-05-27T11:33:20Z"), "{refs}");
    let gc = run_ok(&["gc", s(&store), "--dry-run"]);
    assert!(gc.contains(" of 1 tagged bundle;"), "{gc}");
    let cache = dir.path().join("cache");
    let out = bin()
        .env("XDG_CACHE_HOME", &cache)
        .args(["gc", "--cache", "--max-size", "50M"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(cap 50.0 MiB)"), "{text}");
}

#[test]
fn a_warning_is_one_line_in_the_cli_format() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = push_one_source(dir.path(), "one.go", b"package one\n");
    for entry in std::fs::read_dir(store.join("lockfiles")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".sizes.json") {
            std::fs::write(&path, "not json").unwrap();
        }
    }
    let out = run(&["inspect", s(&store)]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("mache-cachefs: warning: ignoring ") && !stderr.contains("WARN"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_cites_no_spec_section() {
    for command in ["push", "pull", "mount", "serve", "verify"] {
        let help = run_ok(&[command, "--help"]);
        assert!(!help.contains("SPEC") && !help.contains('§'), "{help}");
    }
}

/// What `inspect --json` says of the `mache.db` a store's bundle makes.
fn recorded_db(store: &std::path::Path) -> serde_json::Value {
    let inspection = json_of(run(&["inspect", "--json", s(store)]));
    inspection["mache_db"].clone()
}

#[test]
fn push_records_the_size_and_blake3_of_the_db_a_pull_makes_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.txt"), b"read from disk\n").unwrap();
    let ast_db = dir.path().join("ast.db");
    make_db(&ast_db, &ast_sources(), Some(&nodes()));
    let raw_db = synthetic_db(dir.path(), 2_000, 3);
    for (name, db) in [("ast", &ast_db), ("raw", &raw_db)] {
        let store = dir.path().join(format!("store-{name}"));
        run_ok(&["push", "--db", s(db), s(&store)]);
        let record = recorded_db(&store);
        assert!(
            record["synthesizer"]
                .as_str()
                .is_some_and(|s| s.starts_with("mache-cachefs.db/1 sqlite ")),
            "{record}"
        );
        for attempt in 0..2 {
            let restored = dir.path().join(format!("{name}-{attempt}.db"));
            run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
            let size = std::fs::metadata(&restored).unwrap().len();
            let hash = mache_cachefs::hash::Hash::of_file(&restored).unwrap();
            assert_eq!(record["size"], size, "{name}: {record}");
            assert_eq!(record["blake3"], hash.to_prefixed(), "{name}: {record}");
        }
    }
}

#[test]
fn no_db_record_pushes_without_building_the_db_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 50, 5);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store), "--no-db-record"]);
    assert_eq!(recorded_db(&store), serde_json::Value::Null);
    assert_eq!(list_files(&store.join("tmp")).len(), 0, "no db left behind");
    let restored = dir.path().join("restored.db");
    run_ok(&["pull", "--out-db", s(&restored), s(&store)]);
    assert_eq!(dump_sources(&restored).len(), 50);
}

#[test]
fn a_kept_bundle_without_a_db_record_gets_one_at_its_next_push() {
    let dir = tempfile::tempdir().unwrap();
    let db = synthetic_db(dir.path(), 50, 4);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    let record = recorded_db(&store);
    // As an older push left it: the sizes index without the record.
    let sizes: Vec<_> = list_files(&store.join("lockfiles"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".sizes.json"))
        .map(|p| store.join("lockfiles").join(p))
        .collect();
    assert_eq!(sizes.len(), 1);
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sizes[0]).unwrap()).unwrap();
    index.as_object_mut().unwrap().remove("db");
    std::fs::write(&sizes[0], serde_json::to_vec(&index).unwrap()).unwrap();
    assert_eq!(recorded_db(&store), serde_json::Value::Null);

    // The db file changes (so the push reads it) but its sources do not.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE notes(x); INSERT INTO notes VALUES (1);")
        .unwrap();
    let held = lockfiles(&store);
    let again = json_of(run(&["push", "--db", s(&db), s(&store), "--json"]));
    assert_eq!(again["kept"], true, "{again}");
    assert_eq!(lockfiles(&store), held, "no new lockfile");
    assert_eq!(recorded_db(&store), record);
}
