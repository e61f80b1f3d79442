//! Hostile bundles: chunks that hash right but say what the lockfile does
//! not (another `source_id` or path, two sources with one id, `content_b64`
//! that is not base64, node byte ranges past the content), and a lockfile of
//! a million sources with one-byte paths. Each ends in a clear error that
//! leaves no db, or in the documented safe outcome: an AST chunk is the
//! row it carries, and the lockfile says only where the mount shows it.

mod common;

use base64::Engine as _;
use common::hostile::{CONTENT, Entry, ast_chunk, node_json, one_source_store, store};
use common::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Pulls `store` into `dir/out.db`, returning the db's path.
fn pull_args(dir: &std::path::Path, store: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let out = dir.join("out.db");
    let args = vec![
        "pull".to_string(),
        "--out-db".to_string(),
        s(&out).to_string(),
        s(store).to_string(),
    ];
    (out, args)
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn an_ast_chunk_naming_another_id_and_path_restores_as_the_row_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = ast_chunk(
        &node_json(0, 10),
        &b64(CONTENT),
        "elsewhere/b.go",
        "other-id",
    );
    let store = one_source_store(dir.path(), &chunk);
    let (out, args) = pull_args(dir.path(), &store);
    run_ok(&as_strs(&args));
    assert_eq!(
        dump_sources(&out),
        [(
            "other-id".to_string(),
            Some("elsewhere/b.go".to_string()),
            Some("go".to_string()),
            CONTENT.to_vec()
        )]
    );
    let ast = dump_ast(&out).expect("an _ast table");
    assert_eq!(ast.len(), 1);
    assert_eq!(ast[0].1, "other-id");
    run_ok(&["verify", s(&store)]);
}

#[test]
fn two_chunks_restoring_to_one_id_are_refused_and_leave_no_db() {
    let dir = tempfile::tempdir().unwrap();
    let first = ast_chunk("null", &b64(CONTENT), "a.go", "same-id");
    let second = ast_chunk("null", &b64(CONTENT), "b.go", "same-id");
    let store = store(
        dir.path(),
        &[
            Entry {
                path: "a.go",
                chunk: &first,
                content: CONTENT,
                kind: "go-source",
            },
            Entry {
                path: "b.go",
                chunk: &second,
                content: CONTENT,
                kind: "go-source",
            },
        ],
    );
    let (out, args) = pull_args(dir.path(), &store);
    run_fails(&as_strs(&args), 3, "\"same-id\"");
    assert!(!out.exists());
    assert_no_temp_db(dir.path());
}

#[test]
fn content_b64_that_is_not_base64_is_refused_naming_the_chunk_and_leaves_no_db() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bad) in ["@@@@", "cGFja2FnZQ", "cGFja2FnZQ=\u{e9}"]
        .iter()
        .enumerate()
    {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir(&sub).unwrap();
        let chunk = ast_chunk("null", bad, "a.go", "a.go");
        let store = one_source_store(&sub, &chunk);
        let (out, args) = pull_args(&sub, &store);
        let err = run_fails(&as_strs(&args), 3, "content_b64 is not base64");
        assert!(
            err.contains(&blake3::hash(&chunk).to_hex().to_string()),
            "{err}"
        );
        assert!(!out.exists());
        assert_no_temp_db(&sub);
    }
}

#[test]
fn node_byte_ranges_past_the_content_restore_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let huge = i64::MAX;
    let nodes = format!(
        r#"[{{"node_id":"n1","node_kind":"File","start_byte":-5,"end_byte":{huge},"start_row":-1,"start_col":0,"end_row":{huge},"end_col":0}}]"#
    );
    let chunk = ast_chunk(&nodes, &b64(CONTENT), "a.go", "a.go");
    let store = one_source_store(dir.path(), &chunk);
    let (out, args) = pull_args(dir.path(), &store);
    run_ok(&as_strs(&args));
    let ast = dump_ast(&out).expect("an _ast table");
    assert_eq!(ast[0].3, [-5, huge, -1, 0, huge, 0]);
    assert_eq!(dump_sources(&out)[0].3, CONTENT);
}

#[test]
fn a_million_one_byte_paths_inspect_and_refuse_to_restore_their_shared_ids() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let entries: Vec<Entry> = (0..1_000_000)
        .map(|i| Entry {
            path: &names[i % names.len()],
            chunk: CONTENT,
            content: CONTENT,
            kind: "go-source",
        })
        .collect();
    let store = store(dir.path(), &entries);
    let inspect = run_ok(&["inspect", "--json", s(&store)]);
    let report: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(report["sources"], 1_000_000, "{report}");
    run_ok(&["verify", s(&store)]);
    let (out, args) = pull_args(dir.path(), &store);
    run_fails(
        &as_strs(&args),
        3,
        "two sources restore to the same id \"a\"",
    );
    assert!(!out.exists());
    assert_no_temp_db(dir.path());
}

/// No db and no temporary db file anywhere under `dir` but the store's.
fn assert_no_temp_db(dir: &std::path::Path) {
    let left: Vec<_> = list_files(dir)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "store"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
