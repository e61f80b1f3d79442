//! The chunk format as a byte-exact contract (SPEC §3): AST chunks written
//! as Go's `mache` writes them, both spellings of "no nodes" read back, and
//! the conformance vectors' chunks classified as raw.

use mache_cachefs::Hash;
use mache_cachefs::chunk::{self, Shape};
use mache_cachefs::lockfile::SourceEntry;
use mache_cachefs::rows::{AstRow, SourceRow};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/build-cache-v1/"
);

fn entry(path: &str, kind: &str, chunk: &[u8]) -> SourceEntry {
    SourceEntry {
        path: path.to_string(),
        input_hash: Hash::of(b"not checked here"),
        chunk_hash: Hash::of(chunk),
        kind: kind.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn node(id: &str, kind: &str, sb: i64, eb: i64, sr: i64, sc: i64, er: i64, ec: i64) -> AstRow {
    AstRow {
        node_id: id.to_string(),
        source_id: "src/ünï/<a>&b.go".to_string(),
        node_kind: kind.to_string(),
        start_byte: sb,
        end_byte: eb,
        start_row: sr,
        start_col: sc,
        end_row: er,
        end_col: ec,
    }
}

fn unicode_source() -> SourceRow {
    SourceRow {
        id: "src/ünï/<a>&b.go".to_string(),
        path: Some("src/ünï/<a>&b.go".to_string()),
        language: Some("go\u{2028}x".to_string()),
        content: b"package main\n".to_vec(),
    }
}

/// Three nodes, deliberately out of `node_id` order. Sorted byte-wise, the
/// one with `\u{1}` after `File` comes first (0x01 < '/'), and
/// `package_clause` precedes its own extension `package_clause/…`.
fn unicode_nodes() -> Vec<AstRow> {
    vec![
        node(
            "src/ünï/<a>&b.go/File/package_clause/package_identifier",
            "package_identifier",
            8,
            12,
            0,
            8,
            0,
            12,
        ),
        node(
            "src/ünï/<a>&b.go/File\u{1}\tx",
            "source_file",
            0,
            13,
            0,
            0,
            1,
            0,
        ),
        node(
            "src/ünï/<a>&b.go/File/package_clause",
            "package_clause",
            0,
            12,
            0,
            0,
            0,
            12,
        ),
    ]
}

/// Worked out by hand from Go's `encoding/json` rules (Encoder with
/// SetEscapeHTML(false)): `<`, `>`, `&` and non-ASCII stay literal, U+0001
/// becomes `\u0001`, tab `\t`, U+2028 `\u2028`; base64 of "package main\n"
/// is `cGFja2FnZSBtYWluCg==`.
const EXPECTED_UNICODE_CHUNK: &str = concat!(
    r#"{"ast_nodes":["#,
    r#"{"node_id":"src/ünï/<a>&b.go/File\u0001\tx","node_kind":"source_file","#,
    r#""start_byte":0,"end_byte":13,"start_row":0,"start_col":0,"end_row":1,"end_col":0},"#,
    r#"{"node_id":"src/ünï/<a>&b.go/File/package_clause","node_kind":"package_clause","#,
    r#""start_byte":0,"end_byte":12,"start_row":0,"start_col":0,"end_row":0,"end_col":12},"#,
    r#"{"node_id":"src/ünï/<a>&b.go/File/package_clause/package_identifier","#,
    r#""node_kind":"package_identifier","#,
    r#""start_byte":8,"end_byte":12,"start_row":0,"start_col":8,"end_row":0,"end_col":12}],"#,
    r#""content_b64":"cGFja2FnZSBtYWluCg==","#,
    r#""language":"go\u2028x","#,
    r#""path":"src/ünï/<a>&b.go","#,
    r#""source_id":"src/ünï/<a>&b.go"}"#,
    "\n"
);

#[test]
fn ast_chunk_bytes_match_the_hand_checked_reference() {
    let bytes = chunk::encode_ast(&unicode_source(), &unicode_nodes());
    assert_eq!(String::from_utf8(bytes).unwrap(), EXPECTED_UNICODE_CHUNK);
}

#[test]
fn ast_chunk_reference_decodes_to_the_rows() {
    let bytes = EXPECTED_UNICODE_CHUNK.as_bytes();
    assert_eq!(chunk::detect(bytes), Shape::Ast);
    let decoded = chunk::decode(bytes, &entry("src/ünï/<a>&b.go", "go-source", bytes)).unwrap();
    assert_eq!(decoded.source, unicode_source());
    let mut nodes = unicode_nodes();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    assert_eq!(decoded.ast, Some(nodes));
}

#[test]
fn ast_view_of_the_reference_chunk() {
    let bytes = EXPECTED_UNICODE_CHUNK.as_bytes();
    let decoded = chunk::decode(bytes, &entry("src/ünï/<a>&b.go", "go-source", bytes)).unwrap();
    let view = chunk::ast_view_json(&decoded);
    let expected = concat!(
        r#"{"source_id":"src/ünï/<a>&b.go","path":"src/ünï/<a>&b.go","language":"go\u2028x","#,
        r#""ast_nodes":["#,
        r#"{"node_id":"src/ünï/<a>&b.go/File\u0001\tx","node_kind":"source_file","#,
        r#""start_byte":0,"end_byte":13,"start_row":0,"start_col":0,"end_row":1,"end_col":0},"#,
        r#"{"node_id":"src/ünï/<a>&b.go/File/package_clause","node_kind":"package_clause","#,
        r#""start_byte":0,"end_byte":12,"start_row":0,"start_col":0,"end_row":0,"end_col":12},"#,
        r#"{"node_id":"src/ünï/<a>&b.go/File/package_clause/package_identifier","#,
        r#""node_kind":"package_identifier","#,
        r#""start_byte":8,"end_byte":12,"start_row":0,"start_col":8,"end_row":0,"end_col":12}]}"#,
        "\n"
    );
    assert_eq!(String::from_utf8(view.clone()).unwrap(), expected);
    assert_eq!(
        chunk::ast_view_len(&unicode_source(), &unicode_nodes()),
        view.len() as u64
    );
    assert_eq!(
        chunk::render_ast_view(&unicode_source(), &unicode_nodes()),
        view
    );
}

#[test]
fn no_nodes_is_written_null() {
    let source = SourceRow {
        id: "README".to_string(),
        path: None,
        language: None,
        content: b"hi\n".to_vec(),
    };
    let bytes = chunk::encode_ast(&source, &[]);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        concat!(
            r#"{"ast_nodes":null,"content_b64":"aGkK","language":"","path":"","source_id":"README"}"#,
            "\n"
        )
    );
}

#[test]
fn empty_array_and_null_both_decode_to_no_nodes() {
    for nodes in ["[]", "null"] {
        let text = format!(
            r#"{{"ast_nodes":{nodes},"content_b64":"aGkK","language":"","path":"","source_id":"README"}}"#
        );
        let bytes = text.as_bytes();
        assert_eq!(chunk::detect(bytes), Shape::Ast, "{text}");
        let decoded = chunk::decode(bytes, &entry("README", "unknown", bytes)).unwrap();
        assert_eq!(decoded.ast, Some(vec![]), "{text}");
        assert_eq!(decoded.source.id, "README");
        assert_eq!(decoded.source.path.as_deref(), Some(""));
        assert_eq!(decoded.source.language.as_deref(), Some(""));
        assert_eq!(decoded.source.content, b"hi\n");
    }
}

#[test]
fn vector_chunks_are_raw() {
    for (file, path) in [
        ("chunk-001.bin", "src/main.go"),
        ("chunk-002.bin", "src/auth.go"),
    ] {
        let location = format!("{FIXTURES}{file}");
        let bytes = std::fs::read(&location).unwrap_or_else(|e| panic!("reading {location}: {e}"));
        assert_eq!(chunk::detect(&bytes), Shape::Raw, "{file}");
        let decoded = chunk::decode(&bytes, &entry(path, "go-source", &bytes)).unwrap();
        assert_eq!(decoded.ast, None);
        assert_eq!(
            decoded.source,
            SourceRow {
                id: path.to_string(),
                path: Some(path.to_string()),
                language: Some("go".to_string()),
                content: bytes,
            }
        );
    }
}
