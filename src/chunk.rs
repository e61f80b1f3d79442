//! The chunk codec: the bytes a `chunk_hash` addresses (SPEC §3).
//!
//! This module owns the two chunk shapes and everything that turns rows into
//! chunk bytes and back:
//! - [`detect`] tells a raw chunk (the source's bytes) from an AST chunk (a
//!   JSON object carrying the source and its `_ast` rows);
//! - [`encode_ast`] writes an AST chunk byte for byte as the Go `mache`
//!   does (`encoding/json` with HTML escaping off, struct field order, one
//!   trailing newline), so both producers give the same `chunk_hash`;
//! - [`decode`] turns either shape back into rows;
//! - [`InputCheck`] says whether the bytes a chunk restores can be checked
//!   against its source's `input_hash`, or the chunk is *opaque*;
//! - [`render_ast_view`] (or [`ast_view_json`] on a [`Decoded`]) renders the
//!   JSON the mount serves at `ast/<path>.json`, and [`ast_view_len`] gives
//!   its length without rendering it.
//!
//! The JSON string escaper ([`write_json_string`]) is hand-written:
//! serde_json's differs from Go's (it leaves U+2028 and U+2029 literal), and
//! the escaper runs over every node of every source, so it writes straight
//! into one pre-sized buffer.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{Error, Result};
use crate::lockfile::{BLAKE3_PROCESSOR, ProcessorVersion, SourceEntry};
use crate::rows::{AstRow, SourceRow, language_for_kind};

/// The two shapes a chunk can have (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The chunk is the source's raw bytes.
    Raw,
    /// The chunk is a JSON object holding the source and its AST rows.
    Ast,
}

/// Whether the bytes a chunk restores can be checked against its source's
/// `input_hash` (the BLAKE3 of the source's raw bytes, SPEC §1).
///
/// An AST chunk carries the raw bytes (`content_b64`), so it always can. A
/// raw chunk is the source itself only when every input processor the
/// lockfile declares is `blake3`, which hashes a source without changing
/// it: that is all mache declares. A bundle that declares any other
/// processor (the conformance vectors list `tree-sitter-go` before
/// `blake3`) may store that processor's output as its raw-shaped chunks,
/// and nothing in the bundle recomputes the source from them. Such a chunk
/// is *opaque*: not corrupt, just not checkable against `input_hash`. Its
/// bytes are still protected by its `chunk_hash` and the lockfile root,
/// which are always checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputCheck {
    /// The restored bytes are the source's: they must hash to `input_hash`.
    Checkable,
    /// The chunk is a processor's output: its `input_hash` cannot be checked.
    Opaque,
}

impl InputCheck {
    /// The check a chunk of `shape` allows in a bundle whose lockfile
    /// declares `processors`.
    pub fn of(shape: Shape, processors: &[ProcessorVersion]) -> InputCheck {
        let raw_is_source = processors.iter().all(|p| p.kind == BLAKE3_PROCESSOR);
        match shape {
            Shape::Raw if !raw_is_source => InputCheck::Opaque,
            _ => InputCheck::Checkable,
        }
    }
}

/// A chunk turned back into rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The `_source` row.
    pub source: SourceRow,
    /// The source's `_ast` rows: `Some` (possibly empty) for an AST chunk,
    /// `None` for a raw one.
    pub ast: Option<Vec<AstRow>>,
}

impl Decoded {
    /// The shape of the chunk this came from.
    pub fn shape(&self) -> Shape {
        match self.ast {
            Some(_) => Shape::Ast,
            None => Shape::Raw,
        }
    }
}

/// Tells the shape of a chunk: AST iff the first byte is `{` and the whole
/// chunk parses as a JSON object whose `source_id` is a non-empty string.
///
/// A chunk that does not start with `{` is classified without being read
/// further, so this is cheap on large raw chunks. Like Go's `encoding/json`,
/// a repeated key counts by its last non-null value, and invalid UTF-8 or a
/// lone surrogate escape in a string does not fail the parse. Unlike Go's
/// struct decoding, the key must be exactly `source_id` (after unescaping):
/// Go also accepts `SOURCE_ID` and other case variants; SPEC §3 names
/// `source_id`.
pub fn detect(bytes: &[u8]) -> Shape {
    if !could_be_json_object(bytes) {
        return Shape::Raw;
    }
    // The probe reads keys and `source_id` in serde_json's raw-bytes mode,
    // which does not reject control characters inside those strings, so an
    // AST verdict is confirmed by a strict syntax-only pass.
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { source_id: true }) if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() => {
            Shape::Ast
        }
        _ => Shape::Raw,
    }
}

/// Encodes one source and its `_ast` rows as an AST chunk, exactly as Go's
/// `mache` writes it: compact JSON with keys `ast_nodes` (ordered by
/// `node_id`; `null` when there are none), `content_b64`, `language`,
/// `path`, `source_id`, and one trailing newline. A NULL path or language is
/// written as `""`.
///
/// The nodes' own `source_id` is not written (the chunk's is). Nodes need
/// not be sorted; they are written in byte-wise `node_id` order, which is
/// SQLite's `ORDER BY node_id`.
pub fn encode_ast(source: &SourceRow, nodes: &[AstRow]) -> Vec<u8> {
    let path = source.path.as_deref().unwrap_or("");
    let language = source.language.as_deref().unwrap_or("");
    let b64_len = base64::encoded_len(source.content.len(), true).expect("content too large");
    let estimate = 96
        + b64_len
        + path.len()
        + language.len()
        + source.id.len()
        + nodes
            .iter()
            .map(|n| NODE_FIXED_LEN + 48 + n.node_id.len() + n.node_kind.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(estimate);

    out.extend_from_slice(b"{\"ast_nodes\":");
    if nodes.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_nodes(&mut out, &sorted_by_node_id(nodes));
    }
    out.extend_from_slice(b",\"content_b64\":\"");
    let start = out.len();
    out.resize(start + b64_len, 0);
    let written = STANDARD
        .encode_slice(&source.content, &mut out[start..])
        .expect("buffer sized by encoded_len");
    debug_assert_eq!(written, b64_len);
    out.extend_from_slice(b"\",\"language\":");
    write_json_string(&mut out, language);
    out.extend_from_slice(b",\"path\":");
    write_json_string(&mut out, path);
    out.extend_from_slice(b",\"source_id\":");
    write_json_string(&mut out, &source.id);
    out.extend_from_slice(b"}\n");
    out
}

/// Turns a chunk back into rows.
///
/// A raw chunk gives `_source(id = path = entry.path, language = kind minus
/// its "-source" suffix ("" for "unknown"), content = the bytes)` and no AST.
/// An AST chunk gives the row it carries (path and language exactly as
/// written, so `""` stays `Some("")`) and its nodes (`null` and `[]` both
/// give an empty list), each node's `source_id` being the chunk's.
///
/// An AST-shaped chunk with a missing or ill-typed field, or with
/// `content_b64` that is not base64, is [`Error::BadChunk`] naming
/// `entry.chunk_hash`. Unknown keys are ignored.
pub fn decode(bytes: &[u8], entry: &SourceEntry) -> Result<Decoded> {
    if could_be_json_object(bytes) {
        match serde_json::from_slice::<WireChunk>(bytes) {
            Ok(wire) if !wire.source_id.is_empty() => return from_wire(wire, entry),
            Ok(_) => {}
            Err(err) => {
                if detect(bytes) == Shape::Ast {
                    let reason = diagnose(bytes)
                        .unwrap_or_else(|| format!("AST chunk does not decode: {err}"));
                    return Err(bad_chunk(entry, reason));
                }
            }
        }
    }
    Ok(Decoded {
        source: SourceRow {
            id: entry.path.clone(),
            path: Some(entry.path.clone()),
            language: Some(language_for_kind(&entry.kind)),
            content: bytes.to_vec(),
        },
        ast: None,
    })
}

/// The bytes the mount serves at `ast/<path>.json` for a decoded chunk; see
/// [`render_ast_view`]. A raw chunk (no AST) renders with an empty
/// `ast_nodes` array.
pub fn ast_view_json(decoded: &Decoded) -> Vec<u8> {
    render_ast_view(&decoded.source, decoded.ast.as_deref().unwrap_or(&[]))
}

/// Renders the AST view of a source: the compact JSON object
/// `{"source_id":…,"path":…,"language":…,"ast_nodes":[…]}` and a trailing
/// newline. `ast_nodes` is always an array, ordered by `node_id`, each node
/// with `node_id`, `node_kind`, `start_byte`, `end_byte`, `start_row`,
/// `start_col`, `end_row`, `end_col` in that order. NULL path or language
/// render as `""`. Strings are escaped as in chunks.
pub fn render_ast_view(source: &SourceRow, nodes: &[AstRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ast_view_len(source, nodes) as usize);
    out.extend_from_slice(b"{\"source_id\":");
    write_json_string(&mut out, &source.id);
    out.extend_from_slice(b",\"path\":");
    write_json_string(&mut out, source.path.as_deref().unwrap_or(""));
    out.extend_from_slice(b",\"language\":");
    write_json_string(&mut out, source.language.as_deref().unwrap_or(""));
    out.extend_from_slice(b",\"ast_nodes\":");
    if nodes.is_empty() {
        out.extend_from_slice(b"[]");
    } else {
        write_nodes(&mut out, &sorted_by_node_id(nodes));
    }
    out.extend_from_slice(b"}\n");
    out
}

/// The length in bytes of [`render_ast_view`]`(source, nodes)`, computed
/// without rendering it (for file sizes in directory listings).
pub fn ast_view_len(source: &SourceRow, nodes: &[AstRow]) -> u64 {
    const FIXED: usize = r#"{"source_id":,"path":,"language":,"ast_nodes":[]}"#.len() + 1;
    let strings = json_string_len(&source.id)
        + json_string_len(source.path.as_deref().unwrap_or(""))
        + json_string_len(source.language.as_deref().unwrap_or(""));
    let commas = nodes.len().saturating_sub(1);
    let node_bytes: usize = nodes.iter().map(node_json_len).sum();
    (FIXED + strings + commas + node_bytes) as u64
}

/// Appends `s` to `out` as a JSON string (with its quotes), escaped exactly
/// as Go's `encoding/json` does with HTML escaping off: `"` and `\` are
/// backslash-escaped; `\n`, `\r`, `\t`, `\b`, `\f` take their short forms;
/// other bytes below 0x20 become `\u00xx` (lowercase hex); U+2028 and U+2029
/// become `\u2028` and `\u2029`; everything else (`<`, `>`, `&`, DEL,
/// non-ASCII) is written as is.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match ESCAPE[b as usize] {
            PASS => {
                i += 1;
                continue;
            }
            LINE_SEP => {
                // U+2028 / U+2029 are E2 80 A8 / E2 80 A9 in UTF-8.
                if bytes[i + 1] == 0x80 && (bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9) {
                    out.extend_from_slice(&bytes[start..i]);
                    out.extend_from_slice(if bytes[i + 2] == 0xA8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    });
                    i += 3;
                    start = i;
                } else {
                    i += 1;
                }
                continue;
            }
            HEX => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX_DIGITS[(b >> 4) as usize],
                    HEX_DIGITS[(b & 0xF) as usize],
                ]);
            }
            short => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(&[b'\\', short]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The length of [`write_json_string`]`(s)`'s output, quotes included.
pub fn json_string_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut len = bytes.len() + 2;
    let mut i = 0;
    while i < bytes.len() {
        match ESCAPE[bytes[i] as usize] {
            PASS => {}
            LINE_SEP => {
                if bytes[i + 1] == 0x80 && (bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9) {
                    len += 3; // 3 UTF-8 bytes become 6 escape bytes
                    i += 2;
                }
            }
            HEX => len += 5,
            _ => len += 1,
        }
        i += 1;
    }
    len
}

// ---- writing -------------------------------------------------------------

/// Escape table entries: a byte that passes through, one that starts a
/// possible U+2028/U+2029, one written `\u00xx`; any other value is the
/// letter of a two-byte short escape.
const PASS: u8 = 0;
const LINE_SEP: u8 = 1;
const HEX: u8 = 2;

const ESCAPE: [u8; 256] = {
    let mut table = [PASS; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = HEX;
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0C] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0xE2] = LINE_SEP;
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The bytes of one node object that do not depend on its values.
const NODE_FIXED_LEN: usize = concat!(
    r#"{"node_id":,"node_kind":,"start_byte":,"end_byte":,"#,
    r#""start_row":,"start_col":,"end_row":,"end_col":}"#
)
.len();

/// `nodes` in byte-wise `node_id` order, borrowed as is when already sorted.
fn sorted_by_node_id(nodes: &[AstRow]) -> Vec<&AstRow> {
    let mut refs: Vec<&AstRow> = nodes.iter().collect();
    if !nodes.is_sorted_by(|a, b| a.node_id <= b.node_id) {
        refs.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    }
    refs
}

/// Writes a non-empty JSON array of node objects.
fn write_nodes(out: &mut Vec<u8>, nodes: &[&AstRow]) {
    out.push(b'[');
    for (i, node) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"node_id\":");
        write_json_string(out, &node.node_id);
        out.extend_from_slice(b",\"node_kind\":");
        write_json_string(out, &node.node_kind);
        out.extend_from_slice(b",\"start_byte\":");
        write_i64(out, node.start_byte);
        out.extend_from_slice(b",\"end_byte\":");
        write_i64(out, node.end_byte);
        out.extend_from_slice(b",\"start_row\":");
        write_i64(out, node.start_row);
        out.extend_from_slice(b",\"start_col\":");
        write_i64(out, node.start_col);
        out.extend_from_slice(b",\"end_row\":");
        write_i64(out, node.end_row);
        out.extend_from_slice(b",\"end_col\":");
        write_i64(out, node.end_col);
        out.push(b'}');
    }
    out.push(b']');
}

/// The length of one node object as [`write_nodes`] writes it.
fn node_json_len(node: &AstRow) -> usize {
    NODE_FIXED_LEN
        + json_string_len(&node.node_id)
        + json_string_len(&node.node_kind)
        + [
            node.start_byte,
            node.end_byte,
            node.start_row,
            node.start_col,
            node.end_row,
            node.end_col,
        ]
        .into_iter()
        .map(i64_len)
        .sum::<usize>()
}

/// Appends `v` in decimal, as Go's `strconv.AppendInt` does.
fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[pos..]);
}

/// The number of bytes [`write_i64`] writes for `v`.
fn i64_len(v: i64) -> usize {
    let digits = v.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1;
    digits + usize::from(v < 0)
}

// ---- reading -------------------------------------------------------------

/// The cheap pre-check for a JSON object: `{` first and, ignoring JSON
/// whitespace, `}` last. Everything else cannot parse as an object.
fn could_be_json_object(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&b'{') {
        return false;
    }
    let last = bytes
        .iter()
        .rev()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    last == Some(&b'}')
}

/// What detection needs from a JSON object: whether its `source_id` is a
/// non-empty string. Other keys are skipped without being stored.
///
/// Keys and the `source_id` value are read as bytes, so a lone surrogate
/// escape or invalid UTF-8 does not fail detection (Go's decoder replaces
/// them with U+FFFD rather than failing).
struct Probe {
    source_id: bool,
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProbeVisitor;

        impl<'de> Visitor<'de> for ProbeVisitor {
            type Value = Probe;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
                let mut source_id = false;
                while let Some(StringBytes(key)) = map.next_key()? {
                    if *key == *b"source_id" {
                        // Go leaves a string field untouched on `null`; a
                        // non-string value fails the whole parse.
                        if let Some(StringBytes(id)) = map.next_value()? {
                            source_id = !id.is_empty();
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Probe { source_id })
            }
        }

        deserializer.deserialize_map(ProbeVisitor)
    }
}

/// A JSON string's unescaped bytes, borrowed when it has no escapes. Any
/// other JSON value is a type error.
struct StringBytes<'de>(Cow<'de, [u8]>);

impl<'de> Deserialize<'de> for StringBytes<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = StringBytes<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(StringBytes(Cow::Borrowed(v)))
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(StringBytes(Cow::Owned(v.to_vec())))
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StringBytes(Cow::Borrowed(v.as_bytes())))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringBytes(Cow::Owned(v.as_bytes().to_vec())))
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// An AST chunk as it is on the wire. Field order does not matter when
/// reading; unknown keys are ignored.
#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(deserialize_with = "nullable_nodes")]
    ast_nodes: Option<Vec<WireNode>>,
    #[serde(borrow)]
    content_b64: Cow<'a, str>,
    language: String,
    path: String,
    source_id: String,
}

/// One node of `ast_nodes`.
#[derive(Deserialize)]
struct WireNode {
    node_id: String,
    node_kind: String,
    start_byte: i64,
    end_byte: i64,
    start_row: i64,
    start_col: i64,
    end_row: i64,
    end_col: i64,
}

/// `ast_nodes` must be present, but may be `null`.
fn nullable_nodes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<WireNode>>, D::Error> {
    Option::<Vec<WireNode>>::deserialize(d)
}

/// Go's `base64.StdEncoding` when decoding: padding required, non-zero
/// trailing bits tolerated.
const GO_STD_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

fn from_wire(wire: WireChunk<'_>, entry: &SourceEntry) -> Result<Decoded> {
    let b64 = wire.content_b64.as_bytes();
    // Go's decoder skips CR and LF anywhere in the input.
    let decoded = if b64.iter().any(|&b| b == b'\r' || b == b'\n') {
        let stripped: Vec<u8> = b64
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        GO_STD_DECODE.decode(stripped)
    } else {
        GO_STD_DECODE.decode(b64)
    };
    let content =
        decoded.map_err(|err| bad_chunk(entry, format!("content_b64 is not base64: {err}")))?;
    let source_id = wire.source_id;
    let nodes = wire
        .ast_nodes
        .unwrap_or_default()
        .into_iter()
        .map(|n| AstRow {
            node_id: n.node_id,
            source_id: source_id.clone(),
            node_kind: n.node_kind,
            start_byte: n.start_byte,
            end_byte: n.end_byte,
            start_row: n.start_row,
            start_col: n.start_col,
            end_row: n.end_row,
            end_col: n.end_col,
        })
        .collect();
    Ok(Decoded {
        source: SourceRow {
            id: source_id,
            path: Some(wire.path),
            language: Some(wire.language),
            content,
        },
        ast: Some(nodes),
    })
}

/// Names the first missing or ill-typed field of an AST chunk that failed to
/// decode, for a clearer message than the parser's. Only taken on error.
fn diagnose(bytes: &[u8]) -> Option<String> {
    use serde_json::{Map, Value};

    fn describe(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    fn check(obj: &Map<String, Value>, at: &str, key: &str, integer: bool) -> Option<String> {
        let expected = if integer { "an integer" } else { "a string" };
        match obj.get(key) {
            None => Some(format!("`{at}{key}` is missing")),
            Some(Value::String(_)) if !integer => None,
            Some(Value::Number(n)) if integer && n.as_i64().is_some() => None,
            Some(Value::Number(n)) if integer => {
                Some(format!("`{at}{key}` is {n}, expected {expected}"))
            }
            Some(v) => Some(format!(
                "`{at}{key}` is {}, expected {expected}",
                describe(v)
            )),
        }
    }

    let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    for key in ["source_id", "path", "language", "content_b64"] {
        if let Some(problem) = check(&chunk, "", key, false) {
            return Some(problem);
        }
    }
    let nodes = match chunk.get("ast_nodes") {
        None => return Some("`ast_nodes` is missing".to_string()),
        Some(Value::Null) => return None,
        Some(Value::Array(nodes)) => nodes,
        Some(v) => {
            return Some(format!(
                "`ast_nodes` is {}, expected an array or null",
                describe(v)
            ));
        }
    };
    for (i, node) in nodes.iter().enumerate() {
        let at = format!("ast_nodes[{i}].");
        let Value::Object(node) = node else {
            return Some(format!(
                "`ast_nodes[{i}]` is {}, expected an object",
                describe(node)
            ));
        };
        let strings = ["node_id", "node_kind"].map(|k| (k, false));
        let integers = [
            "start_byte",
            "end_byte",
            "start_row",
            "start_col",
            "end_row",
            "end_col",
        ]
        .map(|k| (k, true));
        for (key, integer) in strings.into_iter().chain(integers) {
            if let Some(problem) = check(node, &at, key, integer) {
                return Some(problem);
            }
        }
    }
    None
}

fn bad_chunk(entry: &SourceEntry, reason: String) -> Error {
    Error::BadChunk {
        hash: entry.chunk_hash,
        reason: format!("{reason} (source {:?})", entry.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    fn esc(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        assert_eq!(out.len(), json_string_len(s), "length of {s:?}");
        String::from_utf8(out).unwrap()
    }

    fn entry(path: &str, kind: &str) -> SourceEntry {
        SourceEntry {
            path: path.to_string(),
            input_hash: Hash::of(b"input"),
            chunk_hash: Hash::of(b"chunk"),
            kind: kind.to_string(),
        }
    }

    fn node(id: &str, kind: &str, n: i64) -> AstRow {
        AstRow {
            node_id: id.to_string(),
            source_id: "s".to_string(),
            node_kind: kind.to_string(),
            start_byte: n,
            end_byte: n + 10,
            start_row: n / 3,
            start_col: n % 7,
            end_row: n / 2,
            end_col: n % 5,
        }
    }

    fn source(id: &str) -> SourceRow {
        SourceRow {
            id: id.to_string(),
            path: Some(id.to_string()),
            language: Some("python".to_string()),
            content: b"print('hi')\n".to_vec(),
        }
    }

    fn processors(kinds: &[&str]) -> Vec<ProcessorVersion> {
        kinds
            .iter()
            .map(|kind| ProcessorVersion {
                kind: kind.to_string(),
                version: "1.0".to_string(),
            })
            .collect()
    }

    #[test]
    fn raw_chunks_are_opaque_only_beside_a_processor_other_than_blake3() {
        let mache = processors(&["blake3"]);
        let vectors = processors(&["tree-sitter-go", "blake3"]);
        assert_eq!(InputCheck::of(Shape::Raw, &mache), InputCheck::Checkable);
        assert_eq!(InputCheck::of(Shape::Raw, &[]), InputCheck::Checkable);
        assert_eq!(InputCheck::of(Shape::Raw, &vectors), InputCheck::Opaque);
        assert_eq!(
            InputCheck::of(Shape::Raw, &processors(&["BLAKE3"])),
            InputCheck::Opaque
        );
        // An AST chunk carries the source's bytes whatever made it.
        assert_eq!(InputCheck::of(Shape::Ast, &vectors), InputCheck::Checkable);
    }

    #[test]
    fn a_decoded_chunk_knows_its_shape() {
        let e = entry("a.py", "python-source");
        assert_eq!(decode(b"print()\n", &e).unwrap().shape(), Shape::Raw);
        let ast = encode_ast(&source("a.py"), &[]);
        assert_eq!(decode(&ast, &e).unwrap().shape(), Shape::Ast);
    }

    #[test]
    fn escapes_quote_and_backslash() {
        assert_eq!(esc(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn escapes_short_forms() {
        assert_eq!(esc("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
    }

    #[test]
    fn escapes_other_controls_as_lowercase_hex() {
        assert_eq!(esc("\u{0}"), r#""\u0000""#);
        assert_eq!(esc("\u{1}x\u{1f}"), r#""\u0001x\u001f""#);
        assert_eq!(esc("\u{b}\u{e}\u{1b}"), r#""\u000b\u000e\u001b""#);
    }

    #[test]
    fn every_control_byte_is_escaped() {
        for b in 0u8..0x20 {
            let s = String::from(b as char);
            let out = esc(&s);
            assert!(out.starts_with("\"\\"), "{b:#x} gave {out}");
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn leaves_html_del_and_unicode_literal() {
        assert_eq!(esc("<a>&b\u{7f}"), "\"<a>&b\u{7f}\"");
        assert_eq!(esc("ünï €𝄞"), "\"ünï €𝄞\"");
        // Other characters encoded with a leading E2 byte stay literal.
        assert_eq!(
            esc("\u{2027}\u{202a}\u{2013}→"),
            "\"\u{2027}\u{202a}\u{2013}→\""
        );
    }

    #[test]
    fn escapes_line_and_paragraph_separators() {
        assert_eq!(esc("a\u{2028}b\u{2029}c"), r#""a\u2028b\u2029c""#);
        assert_eq!(esc("\u{2028}"), r#""\u2028""#);
    }

    #[test]
    fn writes_integers_like_go() {
        for v in [0, 1, -1, 9, 10, 99, 100, -100, 12345, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), v.to_string());
            assert_eq!(out.len(), i64_len(v));
        }
    }

    #[test]
    fn detect_raw_without_brace() {
        assert_eq!(detect(b""), Shape::Raw);
        assert_eq!(detect(b"package main\n"), Shape::Raw);
        assert_eq!(detect(br#"[{"source_id":"a"}]"#), Shape::Raw);
        assert_eq!(detect(br#" {"source_id":"a"}"#), Shape::Raw);
    }

    #[test]
    fn detect_raw_on_invalid_json() {
        assert_eq!(detect(b"{"), Shape::Raw);
        assert_eq!(detect(b"{ int x; }"), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":"a""#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":"a"} trailing"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":"a"}{}"#), Shape::Raw);
    }

    #[test]
    fn detect_raw_without_usable_source_id() {
        assert_eq!(detect(b"{}"), Shape::Raw);
        assert_eq!(detect(br#"{"name":"pkg","version":"1.0"}"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":""}"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":null}"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":7}"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":["a"]}"#), Shape::Raw);
        assert_eq!(detect(br#"{"source_id":{"a":1}}"#), Shape::Raw);
        assert_eq!(detect(br#"{"nested":{"source_id":"a"}}"#), Shape::Raw);
    }

    #[test]
    fn detect_ast() {
        assert_eq!(detect(br#"{"source_id":"a"}"#), Shape::Ast);
        assert_eq!(detect(b"{\"source_id\":\"a\"}\n"), Shape::Ast);
        assert_eq!(
            detect(br#"{"x":[1,{"y":null}],"source_id":"\u0061"}"#),
            Shape::Ast
        );
        assert_eq!(detect(br#"{"source\u005fid":"a"}"#), Shape::Ast);
        // A repeated key counts by its last non-null value, as in Go.
        assert_eq!(detect(br#"{"source_id":"a","source_id":null}"#), Shape::Ast);
        assert_eq!(detect(br#"{"source_id":"a","source_id":""}"#), Shape::Raw);
        assert_eq!(detect(&encode_ast(&source("a.py"), &[])), Shape::Ast);
        // Matches Go's decoder on what it tolerates.
        assert_eq!(detect(br#"{"x":1.5e400,"source_id":"a"}"#), Shape::Ast);
        assert_eq!(detect(br#"{"source_id":"\ud800"}"#), Shape::Ast);
        assert_eq!(
            detect(b"{\"source_id\":\"\xff\",\"\xfe\":\"\xfd\"}"),
            Shape::Ast
        );
        assert_eq!(detect(br#"{"source_id":7,"source_id":"a"}"#), Shape::Raw);
        assert_eq!(detect(b"{\"source_id\":\"a\n\"}"), Shape::Raw);
        assert_eq!(detect(b"{\"source_id\":\"\\n\n\"}"), Shape::Raw);
        assert_eq!(detect(b"{\"a\x01\":0,\"source_id\":\"a\"}"), Shape::Raw);
    }

    #[test]
    fn encode_orders_nodes_and_nulls_empty() {
        let src = source("a.py");
        let chunk = encode_ast(&src, &[]);
        assert!(chunk.starts_with(b"{\"ast_nodes\":null,\"content_b64\":\"cHJpbnQoJ2hpJykK\","));
        assert!(chunk.ends_with(b",\"source_id\":\"a.py\"}\n"));

        let nodes = [node("b", "K", 1), node("a", "K", 2), node("B", "K", 3)];
        let text = String::from_utf8(encode_ast(&src, &nodes)).unwrap();
        let (a, b, upper) = (
            text.find("\"node_id\":\"a\"").unwrap(),
            text.find("\"node_id\":\"b\"").unwrap(),
            text.find("\"node_id\":\"B\"").unwrap(),
        );
        assert!(upper < a && a < b, "{text}");
    }

    #[test]
    fn encode_writes_null_path_and_language_as_empty() {
        let src = SourceRow {
            id: "x".into(),
            path: None,
            language: None,
            content: vec![],
        };
        assert_eq!(
            encode_ast(&src, &[]),
            b"{\"ast_nodes\":null,\"content_b64\":\"\",\"language\":\"\",\"path\":\"\",\"source_id\":\"x\"}\n"
        );
    }

    #[test]
    fn round_trip_encode_decode() {
        let mut src = source("dir/a\u{2028}.py");
        src.content = (0..=255u8).collect();
        src.language = Some("py\"th\\on\u{1}".into());
        let mut nodes = vec![
            node("dir/a.py/Module", "Module", 0),
            node("dir/a.py/Module/Expr", "Expr\t", 5),
            node("dir/a.py/Module/Expr/Call", "Call", -3),
        ];
        for n in &mut nodes {
            n.source_id = src.id.clone();
        }
        let chunk = encode_ast(&src, &nodes);
        let decoded = decode(&chunk, &entry("dir/a.py", "python-source")).unwrap();
        assert_eq!(decoded.source, src);
        assert_eq!(decoded.ast.as_deref(), Some(&nodes[..]));
    }

    #[test]
    fn decode_raw() {
        let decoded = decode(b"package main\n", &entry("src/main.go", "go-source")).unwrap();
        assert_eq!(decoded.source.id, "src/main.go");
        assert_eq!(decoded.source.path.as_deref(), Some("src/main.go"));
        assert_eq!(decoded.source.language.as_deref(), Some("go"));
        assert_eq!(decoded.source.content, b"package main\n");
        assert_eq!(decoded.ast, None);

        let json = br#"{"name":"pkg"}"#;
        let decoded = decode(json, &entry("package.json", "unknown")).unwrap();
        assert_eq!(decoded.source.language.as_deref(), Some(""));
        assert_eq!(decoded.source.content, json);
        assert_eq!(decoded.ast, None);
    }

    #[test]
    fn decode_tolerates_unknown_keys_and_go_base64() {
        let chunk = br#"{"extra":{"k":[1]},"ast_nodes":[{"node_id":"n","node_kind":"K","start_byte":1,"end_byte":2,"start_row":3,"start_col":4,"end_row":5,"end_col":6,"source_id":"ignored"}],"content_b64":"aG\nk=","language":"","path":"p","source_id":"s"}"#;
        let decoded = decode(chunk, &entry("p", "unknown")).unwrap();
        assert_eq!(decoded.source.content, b"hi");
        let chunk = br#"{"ast_nodes":null,"content_b64":"aGk\r\n=","language":"","path":"p","source_id":"s"}"#;
        assert_eq!(
            decode(chunk, &entry("p", "unknown"))
                .unwrap()
                .source
                .content,
            b"hi"
        );
        // Non-zero trailing bits, which Go's StdEncoding accepts.
        let chunk =
            br#"{"ast_nodes":null,"content_b64":"aGl=","language":"","path":"p","source_id":"s"}"#;
        assert_eq!(
            decode(chunk, &entry("p", "unknown"))
                .unwrap()
                .source
                .content,
            b"hi"
        );
        let decoded = decode(chunk, &entry("p", "unknown")).unwrap();
        assert_eq!(decoded.source.path.as_deref(), Some("p"));
        assert_eq!(decoded.source.language.as_deref(), Some(""));
    }

    #[test]
    fn decode_refuses_broken_ast_chunks() {
        let cases: [(&[u8], &str); 9] = [
            (
                br#"{"ast_nodes":null,"content_b64":"!!","language":"","path":"p","source_id":"s"}"#,
                "content_b64 is not base64",
            ),
            (
                br#"{"ast_nodes":null,"language":"","path":"p","source_id":"s"}"#,
                "`content_b64` is missing",
            ),
            (
                br#"{"content_b64":"","language":"","path":"p","source_id":"s"}"#,
                "`ast_nodes` is missing",
            ),
            (
                br#"{"ast_nodes":{},"content_b64":"","language":"","path":"p","source_id":"s"}"#,
                "`ast_nodes` is an object, expected an array or null",
            ),
            (
                br#"{"ast_nodes":null,"content_b64":"","language":1,"path":"p","source_id":"s"}"#,
                "`language` is a number, expected a string",
            ),
            (
                br#"{"ast_nodes":null,"content_b64":"","language":"","path":null,"source_id":"s"}"#,
                "`path` is null, expected a string",
            ),
            (
                br#"{"ast_nodes":[{"node_id":"n"}],"content_b64":"","language":"","path":"p","source_id":"s"}"#,
                "`ast_nodes[0].node_kind` is missing",
            ),
            (
                br#"{"ast_nodes":[{"node_id":"n","node_kind":"K","start_byte":1.5,"end_byte":2,"start_row":3,"start_col":4,"end_row":5,"end_col":6}],"content_b64":"","language":"","path":"p","source_id":"s"}"#,
                "`ast_nodes[0].start_byte` is 1.5, expected an integer",
            ),
            (
                br#"{"ast_nodes":null,"content_b64":"","language":"","path":"p","path":"q","source_id":"s"}"#,
                "duplicate field `path`",
            ),
        ];
        let e = entry("p", "unknown");
        for (chunk, needle) in cases {
            assert_eq!(detect(chunk), Shape::Ast);
            match decode(chunk, &e) {
                Err(err @ Error::BadChunk { hash, .. }) => {
                    assert_eq!(hash, e.chunk_hash);
                    let msg = err.to_string();
                    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
                    assert!(msg.contains(&e.chunk_hash.to_hex()), "{msg}");
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(chunk)),
            }
        }
    }

    #[test]
    fn ast_view_is_deterministic_and_len_matches() {
        let mut src = source("a/<b>.py");
        src.language = Some("py\u{2029}".into());
        let nodes = [
            node("z", "K\"", 123456),
            node("a\u{1}", "K", -7),
            node("m", "\u{2028}", 0),
        ];
        let view = render_ast_view(&src, &nodes);
        assert_eq!(view.len() as u64, ast_view_len(&src, &nodes));
        let text = String::from_utf8(view.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"source_id":"a/<b>.py","path":"a/<b>.py","language":"py\u2029","ast_nodes":[{"node_id":"a\u0001","node_kind":"K","start_byte":-7,"#
        ));
        assert!(text.ends_with("}]}\n"));
        assert!(!text.contains("source_id\":\"s\""));

        let empty = render_ast_view(&src, &[]);
        assert!(empty.ends_with(b"\"ast_nodes\":[]}\n"));
        assert_eq!(empty.len() as u64, ast_view_len(&src, &[]));

        let decoded = decode(&encode_ast(&src, &nodes), &entry("x", "unknown")).unwrap();
        assert_eq!(ast_view_json(&decoded), view);
    }
}
