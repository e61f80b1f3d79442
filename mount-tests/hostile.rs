//! Hostile bundles mounted: lockfile paths that would escape the mount or
//! cannot be names (`..`, absolute, NUL, a component over 255 bytes),
//! duplicates and file-versus-directory clashes, a million one-byte paths,
//! and AST chunks whose rows disagree with the lockfile. The mount shows
//! only what is safe, counts the rest in its status file, and serves the
//! chunks' bytes as they are, read through `find`, `cat` and Python.

use std::process::Command;

use crate::common::hostile::{CONTENT, Entry, ast_chunk, node_json, one_source_store, store};
use crate::harness::{TestMount, stdout};

fn entry<'a>(path: &'a str, chunk: &'a [u8]) -> Entry<'a> {
    Entry {
        path,
        chunk,
        content: chunk,
        kind: "go-source",
    }
}

fn find_files(m: &TestMount) -> Vec<String> {
    let listing = stdout(
        Command::new("find")
            .arg(".")
            .arg("-type")
            .arg("f")
            .current_dir(m.path("sources")),
    );
    let mut files: Vec<String> = listing.lines().map(str::to_string).collect();
    files.sort();
    files
}

#[test]
fn unsafe_duplicate_and_clashing_paths_never_reach_the_tree() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let long = "x".repeat(256);
    let long_path = format!("d/{long}");
    let paths = [
        "../escape.go",
        "/etc/passwd",
        "a/../../up.go",
        "nul\0name.go",
        long_path.as_str(),
        "ok/one.go",
        "ok/one.go",
        "clash",
        "clash/inside.go",
        "two.go",
    ];
    let chunks: Vec<Vec<u8>> = (0..paths.len())
        .map(|i| format!("package p{i}\n").into_bytes())
        .collect();
    let entries: Vec<Entry> = paths
        .iter()
        .zip(&chunks)
        .map(|(path, chunk)| entry(path, chunk))
        .collect();
    let store = store(dir.path(), &entries);
    let m = TestMount::daemon(&store, &[]);
    assert_eq!(
        find_files(&m),
        ["./clash/inside.go", "./ok/one.go", "./two.go"]
    );
    // The first of two sources at one path wins; a directory beats a file.
    assert_eq!(
        std::fs::read(m.path("sources/ok/one.go")).unwrap(),
        chunks[5]
    );
    assert_eq!(std::fs::read(m.path("sources/two.go")).unwrap(), chunks[9]);
    let tree = &m.status()["tree"];
    assert_eq!(tree["unsafe_paths"], 5, "{tree}");
    // In sources/ the duplicate and the clash; in ast/ the duplicate again
    // (`clash.json` and the directory `clash/` do not clash).
    assert_eq!(tree["conflicts"], 3, "{tree}");
    assert_eq!(tree["source_files"], 3, "{tree}");
    assert!(!dir.path().join("escape.go").exists());
}

#[test]
fn a_million_one_byte_paths_mount_as_their_first_sources() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let names: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let entries: Vec<Entry> = (0..1_000_000)
        .map(|i| entry(&names[i % names.len()], CONTENT))
        .collect();
    let store = store(dir.path(), &entries);
    let m = TestMount::daemon(&store, &[]);
    let expected: Vec<String> = names.iter().map(|n| format!("./{n}")).collect();
    assert_eq!(find_files(&m), expected);
    assert_eq!(std::fs::read(m.path("sources/q")).unwrap(), CONTENT);
    let tree = &m.status()["tree"];
    // Every later source at a name, once in sources/ and once in ast/.
    assert_eq!(tree["conflicts"], 2 * (1_000_000 - 26), "{tree}");
    assert_eq!(tree["source_files"], 26, "{tree}");
}

#[test]
fn an_ast_chunk_disagreeing_with_its_lockfile_entry_is_served_as_it_is() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let b64 = "cGFja2FnZSBhCg=="; // "package a\n"
    let chunk = ast_chunk(&node_json(-5, i64::MAX), b64, "elsewhere/b.go", "other-id");
    let store = one_source_store(dir.path(), &chunk);
    let m = TestMount::daemon(&store, &[]);
    assert_eq!(std::fs::read(m.path("sources/a.go")).unwrap(), CONTENT);
    let view = stdout(Command::new("python3").arg("-c").arg(format!(
        "import json; v = json.load(open({:?})); \
         print(v['source_id'], v['path'], v['ast_nodes'][0]['start_byte'], v['ast_nodes'][0]['end_byte'])",
        m.path("ast/a.go.json")
    )));
    assert_eq!(
        view.trim(),
        "other-id elsewhere/b.go -5 9223372036854775807"
    );
    let rows = stdout(
        Command::new("sqlite3")
            .arg(m.path("mache.db"))
            .arg("select id, path from _source"),
    );
    assert_eq!(rows.trim(), "other-id|elsewhere/b.go");
}
