//! The chunk decode and the AST JSON view: any bytes decode (as a raw
//! chunk at worst) or are refused as a bad AST chunk; a decoded AST chunk
//! re-encodes to a chunk that decodes to the same rows; the view is valid
//! JSON of exactly the length `ast_view_len` promises.
#![no_main]

use mache_cachefs::Hash;
use mache_cachefs::chunk::{self, Shape};
use mache_cachefs::lockfile::SourceEntry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let entry = SourceEntry {
        path: "pkg/main.go".into(),
        input_hash: Hash::of(b"input"),
        chunk_hash: Hash::of(data),
        kind: "go-source".into(),
    };
    let shape = chunk::detect(data);
    let decoded = match chunk::decode(data, &entry) {
        Ok(decoded) => decoded,
        Err(_) => {
            assert_eq!(shape, Shape::Ast, "a chunk detected raw was refused");
            return;
        }
    };
    assert_eq!(
        decoded.ast.is_some(),
        shape == Shape::Ast,
        "detect and decode disagree on the shape"
    );
    let view = chunk::ast_view_json(&decoded);
    let nodes = decoded.ast.as_deref().unwrap_or(&[]);
    assert_eq!(
        view.len() as u64,
        chunk::ast_view_len(&decoded.source, nodes),
        "ast_view_len is not the view's length"
    );
    serde_json::from_slice::<serde_json::Value>(&view).expect("the AST view is JSON");
    if let Some(nodes) = &decoded.ast {
        let encoded = chunk::encode_ast(&decoded.source, nodes);
        assert_eq!(chunk::detect(&encoded), Shape::Ast);
        let again = chunk::decode(&encoded, &entry).expect("an encoded chunk decodes");
        let mut expected = decoded.clone();
        let mut got = again.clone();
        for rows in [&mut expected, &mut got] {
            if let Some(ast) = &mut rows.ast {
                ast.sort_by(|a, b| a.node_id.as_bytes().cmp(b.node_id.as_bytes()));
            }
        }
        assert_eq!(
            got, expected,
            "AST chunk decode→encode→decode changed the rows"
        );
    }
});
