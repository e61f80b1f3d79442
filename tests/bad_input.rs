//! Bad input through the real binary: each case gives one error line, a
//! meaningful non-zero exit code, and leaves nothing half-written.

mod common;

use std::path::Path;

use common::*;

fn one_file_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("mache.db");
    let sources = [
        Src::at("a.go", Some("go"), b"package a\n"),
        Src::at("b.go", Some("go"), b"package b\n"),
    ];
    make_db(&db, &sources, None);
    db
}

fn pushed_store(dir: &Path) -> std::path::PathBuf {
    let db = one_file_db(dir);
    let store = dir.join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    store
}

fn object_of(store: &Path, hash_hex: &str) -> std::path::PathBuf {
    store
        .join("objects")
        .join(&hash_hex[..2])
        .join(&hash_hex[2..])
}

fn chunk_hex(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

#[test]
fn empty_db_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    make_db(&db, &[], None);
    let store = dir.path().join("store");
    run_fails(
        &["push", "--db", s(&db), s(&store)],
        3,
        "_source has no rows",
    );
    assert!(list_files(&store.join("objects")).is_empty());
    assert!(!store.join("mache.lock.bin").exists());
}

#[test]
fn db_without_source_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("other.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x);")
        .unwrap();
    run_fails(
        &["push", "--db", s(&db), s(&dir.path().join("store"))],
        3,
        "no _source table",
    );
    let not_a_db = dir.path().join("text.db");
    std::fs::write(&not_a_db, "hello, I am not SQLite").unwrap();
    run_fails(
        &["push", "--db", s(&not_a_db), s(&dir.path().join("store"))],
        3,
        "text.db",
    );
    run_fails(
        &[
            "push",
            "--db",
            s(&dir.path().join("missing.db")),
            s(&dir.path().join("store")),
        ],
        3,
        "no such file",
    );
}

#[test]
fn ast_rows_without_a_source_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [Src::at("a.py", Some("python"), b"x")];
    let nodes: [Node; 2] = [
        ("a.py/Module", "a.py", "Module", [0; 6]),
        ("ghost.py/Module", "ghost.py", "Module", [0; 6]),
    ];
    make_db(&db, &sources, Some(&nodes));
    run_fails(
        &["push", "--db", s(&db), s(&dir.path().join("store"))],
        3,
        "_ast rows name the source_id \"ghost.py\", which has no _source row",
    );
}

#[test]
fn null_content_path_outside_the_source_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mache.db");
    let sources = [Src {
        id: "x",
        path: Some("../../etc/passwd"),
        language: None,
        content: None,
    }];
    make_db(&db, &sources, None);
    run_fails(
        &["push", "--db", s(&db), s(&dir.path().join("store"))],
        3,
        "leaves the source root",
    );
}

#[test]
fn truncated_lockfile_is_a_clear_error_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let bytes = std::fs::read(store.join("mache.lock.bin")).unwrap();
    let cut = dir.path().join("cut.bin");
    for len in 0..bytes.len() {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        run_fails(&["inspect", s(&cut)], 3, "invalid lockfile");
    }
}

fn edited_toml(store: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(store.join("mache.lock.toml")).unwrap();
    assert!(text.contains(from), "{from} not in the TOML");
    text.replacen(from, to, 1)
}

#[test]
fn wrong_schema_version_and_foreign_producer_name_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let toml = dir.path().join("lock.toml");
    std::fs::write(
        &toml,
        edited_toml(
            &store,
            "schema_version = \"0.1.0\"",
            "schema_version = \"9.9.9\"",
        ),
    )
    .unwrap();
    let err = run_fails(&["inspect", s(&toml)], 3, "\"9.9.9\"");
    assert!(err.contains("\"0.1.0\""), "{err}");
    std::fs::write(
        &toml,
        edited_toml(&store, "producer = \"mache\"", "producer = \"evil\""),
    )
    .unwrap();
    let err = run_fails(&["inspect", s(&toml)], 3, "\"evil\"");
    assert!(err.contains("\"mache\""), "{err}");
}

#[test]
fn a_31_byte_hash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let text = std::fs::read_to_string(store.join("mache.lock.toml")).unwrap();
    let root_line = text.lines().find(|l| l.starts_with("root = ")).unwrap();
    let short = format!("root = \"blake3:{}\"", "ab".repeat(31));
    let toml = dir.path().join("lock.toml");
    std::fs::write(&toml, text.replacen(root_line, &short, 1)).unwrap();
    run_fails(&["inspect", s(&toml)], 3, "blake3");
}

#[test]
fn missing_chunk_names_the_source_and_hash_and_leaves_no_db() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let hex = chunk_hex(b"package b\n");
    std::fs::remove_file(object_of(&store, &hex)).unwrap();
    let out = dir.path().join("restored.db");
    let err = run_fails(&["pull", "--out-db", s(&out), s(&store)], 9, &hex);
    assert!(err.contains("b.go"), "{err}");
    assert!(!out.exists());
    assert_eq!(
        list_files(dir.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .count(),
        1
    );
    run_fails(&["verify", s(&store)], 9, &hex);
    let inspect = run_ok(&["inspect", s(&store)]);
    assert!(inspect.contains("1 present, 1 missing"), "{inspect}");
}

#[test]
fn corrupt_chunk_is_a_hard_error_naming_path_and_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let hex = chunk_hex(b"package b\n");
    let object = object_of(&store, &hex);
    std::fs::write(&object, b"package evil\n").unwrap();
    let actual = chunk_hex(b"package evil\n");
    let inspect = run_ok(&["inspect", s(&store)]);
    assert!(
        inspect.contains("2 present, 0 missing, 1 corrupt"),
        "{inspect}"
    );
    let out = dir.path().join("restored.db");
    let err = run_fails(&["pull", "--out-db", s(&out), s(&store)], 4, &hex);
    assert!(err.contains(&actual) && err.contains(s(&object)), "{err}");
    assert!(!out.exists());
    // A push never overwrites it, and says why.
    let db = dir.path().join("mache.db");
    let err = run_fails(&["push", "--db", s(&db), s(&store)], 4, &actual);
    assert!(err.contains("corrupt object"), "{err}");
    assert_eq!(std::fs::read(&object).unwrap(), b"package evil\n");
    // Once the bad object is removed, the next push repairs the store.
    std::fs::remove_file(&object).unwrap();
    run_ok(&["push", "--db", s(&db), s(&store)]);
    run_ok(&["verify", s(&store)]);
}

#[test]
fn target_db_in_a_missing_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let out = dir.path().join("no/such/dir/restored.db");
    run_fails(
        &["pull", "--out-db", s(&out), s(&store)],
        6,
        "directory does not exist",
    );
    assert!(!dir.path().join("no").exists());
}

#[test]
fn a_store_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run_fails(
        &[
            "pull",
            "--out-db",
            s(&dir.path().join("r.db")),
            s(dir.path()),
        ],
        3,
        "not a store",
    );
}

#[test]
fn store_on_a_read_only_filesystem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = one_file_db(dir.path());
    let ro = Tmpfs::mount(&dir.path().join("ro"), "ro,size=1m");
    let err = run_fails(
        &["push", "--db", s(&db), s(&ro.0.join("store"))],
        6,
        "creating",
    );
    assert!(err.contains("Read-only file system"), "{err}");
}

#[test]
fn full_disk_fails_cleanly_and_the_next_push_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let blobs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 200_000]).collect();
    let ids: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let sources: Vec<Src> = ids
        .iter()
        .zip(&blobs)
        .map(|(id, blob)| Src {
            id,
            path: Some(id),
            language: None,
            content: Some(blob),
        })
        .collect();
    make_db(&db, &sources, None);
    let small = Tmpfs::mount(&dir.path().join("small"), "size=512k");
    let store = small.0.join("store");
    run_fails(
        &["push", "--db", s(&db), s(&store)],
        6,
        "No space left on device",
    );
    assert!(
        list_files(&store.join("tmp")).is_empty(),
        "no temporary files remain"
    );
    for object in list_files(&store.join("objects")) {
        let bytes = std::fs::read(store.join("objects").join(&object)).unwrap();
        let name = object.to_string_lossy().replace('/', "");
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            name,
            "only whole objects are in place"
        );
    }
    assert!(
        !store.join("mache.lock.bin").exists(),
        "no lockfile names missing chunks"
    );
    // With room again, the same push completes.
    drop(small);
    let _big = Tmpfs::mount(&dir.path().join("small"), "size=16m");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    run_ok(&["verify", s(&store)]);
}

#[test]
fn pull_onto_a_full_disk_exits_6_naming_out_db_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let blob = vec![7u8; 2_000_000];
    make_db(&db, &[Src::at("big.bin", None, &blob)], None);
    let store = dir.path().join("store");
    run_ok(&["push", "--db", s(&db), s(&store)]);
    let small = Tmpfs::mount(&dir.path().join("small"), "size=256k");
    let out = small.0.join("restored.db");
    let err = run_fails(&["pull", "--out-db", s(&out), s(&store)], 6, s(&out));
    assert!(err.contains("full"), "says why: {err}");
    assert!(
        !err.contains(".mache-cachefs-pull"),
        "names no temporary file: {err}"
    );
    assert!(list_files(&small.0).is_empty(), "nothing is left behind");
}

#[test]
fn pull_refuses_to_replace_a_file_that_is_not_a_db_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    let err = refuses_out_db(&notes, &store);
    assert!(err.contains("not a mache db"), "{err}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    assert_eq!(
        list_files(dir.path())
            .iter()
            .filter(|p| p.starts_with("."))
            .count(),
        0
    );
    run_ok(&["pull", "--out-db", s(&notes), s(&store), "--force"]);
    assert_eq!(dump_sources(&notes).len(), 2);
    // A directory is never replaced.
    run_fails(
        &["pull", "--out-db", s(dir.path()), s(&store)],
        3,
        "is a directory",
    );
}

/// A pull onto `out_db` without --force: exit 3, one line naming the file
/// and --force, and the file byte-identical afterwards.
fn refuses_out_db(out_db: &Path, store: &Path) -> String {
    let before = std::fs::read(out_db).unwrap();
    let err = run_fails(&["pull", "--out-db", s(out_db), s(store)], 3, s(out_db));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert_eq!(std::fs::read(out_db).unwrap(), before, "left untouched");
    err
}

#[test]
fn pull_replaces_a_mache_db_but_not_a_users_own_sqlite_db_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let own = dir.path().join("own.db");
    rusqlite::Connection::open(&own)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let err = refuses_out_db(&own, &store);
    assert!(err.contains("no _source table"), "{err}");
    run_ok(&["pull", "--out-db", s(&own), s(&store), "--force"]);
    assert_eq!(dump_sources(&own).len(), 2, "replaced with --force");
    // A mache db (the one just pulled, or one built by mache) is replaced
    // without --force.
    let built = dir.path().join("built.db");
    make_db(
        &built,
        &[Src::at("old.go", Some("go"), b"package old\n")],
        None,
    );
    run_ok(&["pull", "--out-db", s(&built), s(&store)]);
    assert_eq!(dump_sources(&built).len(), 2, "a mache db is replaced");
}

#[test]
fn nothing_pushed_yet_is_one_message_and_exit_5_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("never-pushed");
    let out = dir.path().join("r.db");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for args in [
        vec!["pull", "--out-db", s(&out), s(&store)],
        vec!["verify", s(&store)],
        vec!["inspect", s(&store)],
        vec!["mount", "--store", s(&store), s(&mnt)],
    ] {
        run_fails(&args, 5, "nothing pushed to");
    }
    // An empty store directory left by a failed first push reads the same.
    std::fs::create_dir_all(store.join("objects")).unwrap();
    run_fails(&["verify", s(&store)], 5, "nothing pushed to");
    run_fails(&["inspect", s(&store)], 5, "nothing pushed to");
}

#[test]
fn push_of_a_missing_db_or_a_directory_says_so_and_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let missing = dir.path().join("missing.db");
    run_fails(&["push", "--db", s(&missing), s(&store)], 3, "no such file");
    run_fails(
        &["push", "--db", s(dir.path()), s(&store)],
        3,
        "is a directory",
    );
    assert!(!store.exists(), "no empty store is left behind");
}

#[test]
fn inspect_of_a_sqlite_db_names_it_and_says_it_is_not_a_lockfile() {
    let dir = tempfile::tempdir().unwrap();
    let db = one_file_db(dir.path());
    let err = run_fails(
        &["inspect", s(&db)],
        3,
        "is a SQLite database, not a lockfile",
    );
    assert!(err.contains(s(&db)), "{err}");
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a lockfile at all").unwrap();
    let err = run_fails(&["inspect", s(&junk)], 3, "is not a mache lockfile");
    assert!(err.contains(s(&junk)), "{err}");
}

#[test]
fn inspect_of_a_lockfile_file_with_ref_says_ref_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    for file in ["mache.lock.toml", "mache.lock.bin"] {
        let path = store.join(file);
        run_fails(
            &["inspect", s(&path), "--ref", "v1"],
            2,
            "--ref v1 does not apply",
        );
        run_ok(&["inspect", s(&path)]);
    }
}

#[test]
fn an_invalid_source_date_epoch_is_an_error_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = one_file_db(dir.path());
    let out = bin()
        .args(["push", "--db", s(&db), s(&dir.path().join("store"))])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("SOURCE_DATE_EPOCH") && stderr.contains("yesterday"),
        "{stderr}"
    );
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_ansi_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = one_file_db(dir.path());
    let out = bin()
        .args(["-vv", "push", "--db", s(&db), s(&dir.path().join("store"))])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "-vv logs: {stderr}");
    assert!(!stderr.contains('\x1b'), "no escape codes: {stderr:?}");
}

#[test]
fn mount_takes_the_store_once_positionally_or_with_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    run_fails(
        &["mount", s(&store), "--store", s(&store), s(&mnt)],
        2,
        "the store is given twice",
    );
    // STORE then MOUNTPOINT: the store is the one read (nothing pushed).
    run_fails(&["mount", s(&store), s(&mnt)], 5, "nothing pushed");
    run_fails(&["mount", "a", "b", "c"], 2, "unexpected");
}

/// A report that cannot be written (stdout on a full disk, /dev/full) is a
/// failed command with one error line, not a panic; the store is unharmed.
#[test]
fn a_report_on_a_full_disk_is_one_error_line_and_exit_6() {
    let dir = tempfile::tempdir().unwrap();
    let store = pushed_store(dir.path());
    let db = dir.path().join("mache.db");
    let out_db = dir.path().join("out.db");
    let commands: [&[&str]; 4] = [
        &["inspect", s(&store)],
        &["verify", "--json", s(&store)],
        &["refs", s(&store)],
        &["pull", "--out-db", s(&out_db), s(&store)],
    ];
    let full = || {
        std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in commands {
        let out = bin().args(args).stdout(full()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("writing the output: No space left on device"),
            "{stderr}"
        );
    }
    run_ok(&["push", "--db", s(&db), s(&store)]);
    run_ok(&["verify", s(&store)]);
}
