//! The property behind push and pull: for generated dbs (random ids, paths,
//! languages and contents, some of them JSON that reads as an AST chunk,
//! paths shared by several rows, with and without `_ast`), push then pull
//! gives back rows equal under the mapping `docs/FORMATS.md` documents, or
//! push refuses with a clear error. Through the library, so that hundreds of
//! cases run in seconds.

use std::collections::BTreeSet;
use std::path::Path;

use mache_cachefs::bundle::{self, Existing, PushOptions};
use mache_cachefs::store::{BundleStore, LocalStore};
use proptest::prelude::*;

/// One `_source` row of a generated db.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    path: Option<String>,
    language: Option<String>,
    content: Vec<u8>,
}

/// A restored `_source` row: (id, path, language, content).
type Restored = (String, Option<String>, Option<String>, Vec<u8>);

mod common;

use common::{Node, Src, dump_ast, dump_sources, make_db};

/// Short names from a small alphabet, so ids and paths often coincide.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ab/]{0,3}",
        1 => "[a-z\u{e9}\u{2028} ]{1,6}",
    ]
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        name().prop_map(|id| format!("{{\"source_id\":{id:?}}}").into_bytes()),
        Just(b"{\"source_id\":\"\"}".to_vec()),
        Just(Vec::new()),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (
        name(),
        proptest::option::of(name()),
        proptest::option::of(prop_oneof![
            Just(""),
            Just("go"),
            Just("x-source"),
            Just("unknown")
        ]),
        content(),
    )
        .prop_map(|(id, path, language, content)| Row {
            id,
            path,
            language: language.map(str::to_string),
            content,
        })
}

/// Rows with unique ids (as `_source.id` is a primary key).
fn rows() -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::vec(row(), 1..10).prop_map(|rows| {
        let mut seen = BTreeSet::new();
        rows.into_iter()
            .filter(|r| seen.insert(r.id.clone()))
            .collect()
    })
}

fn write_db(path: &Path, rows: &[Row], with_ast: bool) {
    let sources: Vec<Src> = rows
        .iter()
        .map(|r| Src {
            id: &r.id,
            path: r.path.as_deref(),
            language: r.language.as_deref(),
            content: Some(&r.content),
        })
        .collect();
    // Source i gets i % 3 nodes.
    let node_ids: Vec<(String, usize, i64)> = (0..rows.len())
        .flat_map(|i| (0..(i % 3) as i64).map(move |n| (format!("{i}/{n}"), i, n)))
        .collect();
    let nodes: Vec<Node> = node_ids
        .iter()
        .map(|(node_id, i, n)| {
            (
                node_id.as_str(),
                rows[*i].id.as_str(),
                "node",
                [*n, *n, 0, *n, 0, *n],
            )
        })
        .collect();
    make_db(path, &sources, with_ast.then_some(&nodes[..]));
}

/// The documented mapping: NULL path and NULL language restore as `""`; a
/// source stored raw (only in a db without `_ast`) restores with
/// `id = path`. So each original row restores either as itself or, in a
/// raw db, with its path as its id.
fn check_restored(original: &[Row], restored: &[Restored], with_ast: bool) {
    assert_eq!(
        restored.len(),
        original.len(),
        "one restored row per source"
    );
    let mut left: BTreeSet<Restored> = restored.iter().cloned().collect();
    assert_eq!(left.len(), restored.len(), "restored rows are distinct");
    for r in original {
        let path = r.path.clone().unwrap_or_default();
        let language = Some(r.language.clone().unwrap_or_default());
        let whole = (
            r.id.clone(),
            Some(path.clone()),
            language.clone(),
            r.content.clone(),
        );
        let raw = (path.clone(), Some(path), language, r.content.clone());
        let matched = left.remove(&whole) || (!with_ast && left.remove(&raw));
        assert!(matched, "{r:?} is not among the restored rows {restored:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn push_then_pull_restores_rows_under_the_documented_mapping_or_push_refuses(
        original in rows(),
        with_ast in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gen.db");
        write_db(&db, &original, with_ast);
        let store = LocalStore::create(dir.path().join("store")).unwrap();
        let opts = PushOptions {
            db: db.clone(),
            source_root: None,
            tag: "latest".into(),
            progress: false,
            force: false,
            record_db: true,
            interrupt: Default::default(),
        };
        if let Err(err) = bundle::push(&store, &opts) {
            // Refused only for what no chunk can carry: a row with an empty
            // id that must keep it (AST chunks need one), named in the error.
            let message = err.to_string();
            prop_assert!(original.iter().any(|r| r.id.is_empty()), "{message}");
            prop_assert!(message.contains("empty id"), "{message}");
            prop_assert!(!store.root().join("mache.lock.bin").exists());
            return Ok(());
        }
        let bundle = store.resolve("latest").unwrap();
        let out = dir.path().join("restored.db");
        bundle::pull(store.chunks().as_ref(), &bundle.lockfile, &out, Existing::ReplaceMacheDb, true, false)
            .expect("what push wrote, pull reads");
        check_restored(&original, &dump_sources(&out), with_ast);
        // The db push recorded is the one pull made, byte for byte.
        let record = bundle.db_record().expect("push records the db");
        prop_assert_eq!(record.size, std::fs::metadata(&out).unwrap().len());
        prop_assert_eq!(record.hash, mache_cachefs::hash::Hash::of_file(&out).unwrap());
        if with_ast {
            prop_assert_eq!(dump_ast(&out), dump_ast(&db));
        } else {
            prop_assert!(dump_ast(&out).unwrap_or_default().is_empty(), "a raw db restores no AST rows");
        }
    }
}
