//! The TOML lockfile (`mache.lock.toml`): the same values as the binary
//! form, for humans and diffs (SPEC §2). The `.bin` is authoritative.
//!
//! Layout: top-level `root`, then `[meta]` (`producer`, `producer_version`,
//! `schema_version`, `generated_at_ms`, `[[meta.input_processors]]` with
//! `kind`, `version`), then `[[sources]]` (`path`, `input_hash`,
//! `chunk_hash`, `kind`) and `[[topology]]` (`from`, `to_source`). Hashes are
//! `blake3:<hex>`. Unknown keys are refused; absent lists read as empty.
//!
//! `generated_at_ms` is a `u64` but TOML integers are `i64`: a value above
//! `i64::MAX` (some 292 million years after 1970) is written as a string of
//! decimal digits instead, and [`from_toml`] reads either form, so every
//! `u64` round-trips.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::{Lockfile, Meta, ProcessorVersion, SourceEntry, TopologyEdge};
use crate::error::{Error, Result};
use crate::hash::Hash;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlLockfile {
    root: String,
    meta: TomlMeta,
    #[serde(default)]
    sources: Vec<TomlSource>,
    #[serde(default)]
    topology: Vec<TomlEdge>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlMeta {
    producer: String,
    producer_version: String,
    schema_version: String,
    generated_at_ms: Millis,
    #[serde(default)]
    input_processors: Vec<TomlProcessor>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlProcessor {
    kind: String,
    version: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlSource {
    path: String,
    input_hash: String,
    chunk_hash: String,
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlEdge {
    from: String,
    to_source: String,
}

/// `generated_at_ms`: a TOML integer, or a digit string above `i64::MAX`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Millis {
    Int(i64),
    Text(String),
}

impl Millis {
    fn from_u64(value: u64) -> Millis {
        match i64::try_from(value) {
            Ok(v) => Millis::Int(v),
            Err(_) => Millis::Text(value.to_string()),
        }
    }

    fn to_u64(&self) -> Result<u64> {
        let parsed = match self {
            Millis::Int(v) => u64::try_from(*v).ok(),
            Millis::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().ok()
            }
            Millis::Text(_) => None,
        };
        parsed.ok_or_else(|| {
            let shown = match self {
                Millis::Int(v) => v.to_string(),
                Millis::Text(s) => format!("{s:?}"),
            };
            Error::BadLockfile(format!(
                "meta.generated_at_ms: {shown} is not a millisecond count from 0 to {}",
                u64::MAX
            ))
        })
    }
}

/// Renders a lockfile as TOML. Every string (any Unicode, control
/// characters included) is escaped so [`from_toml`] gives it back exactly.
pub fn to_toml(lockfile: &Lockfile) -> String {
    let mut text = Vec::new();
    write_toml(lockfile, &mut text).expect("writing to memory does not fail");
    String::from_utf8(text).expect("TOML values are encoded as UTF-8")
}

/// Writes [`to_toml`]'s text to `out`, a source at a time, so the TOML of
/// a lockfile of a million sources is never one string in memory. Each
/// value is encoded by the `toml` crate's own value serializer; the layout
/// around the values is the one `toml` gives the whole document (the
/// tests hold it to that).
pub fn write_toml(lockfile: &Lockfile, out: &mut impl Write) -> io::Result<()> {
    let mut line = TomlLine::default();
    line.head(lockfile, !lockfile.sources.is_empty(), out)?;
    for source in &lockfile.sources {
        line.source(source, out)?;
    }
    line.topology(&lockfile.topology, out)
}

/// [`write_toml`] of the lockfile the binary form `bytes` decodes to,
/// read a source at a time (two passes: the text says whether there are
/// sources before it lists them), so neither form is ever held whole.
pub fn write_toml_of_binary(bytes: &[u8], out: &mut impl Write) -> Result<()> {
    let writing = |e| Error::io("writing the TOML lockfile", e);
    let mut has_sources = false;
    let head = super::binary::decode_each_source(bytes, |_| {
        has_sources = true;
        Ok(())
    })?;
    let mut line = TomlLine::default();
    line.head(&head, has_sources, out).map_err(writing)?;
    super::binary::decode_each_source(bytes, |source| line.source(&source, out).map_err(writing))?;
    line.topology(&head.topology, out).map_err(writing)
}

/// Writes `key = value` lines, each value encoded in a reused buffer.
#[derive(Default)]
struct TomlLine {
    value: String,
}

impl TomlLine {
    /// `root`, the empty lists, and `[meta]` with its input processors.
    fn head(
        &mut self,
        lockfile: &Lockfile,
        has_sources: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        self.write(out, "root", lockfile.root.to_prefixed())?;
        if !has_sources {
            out.write_all(b"sources = []\n")?;
        }
        if lockfile.topology.is_empty() {
            out.write_all(b"topology = []\n")?;
        }
        let meta = &lockfile.meta;
        out.write_all(b"\n[meta]\n")?;
        self.write(out, "producer", &meta.producer)?;
        self.write(out, "producer_version", &meta.producer_version)?;
        self.write(out, "schema_version", &meta.schema_version)?;
        self.write(
            out,
            "generated_at_ms",
            Millis::from_u64(meta.generated_at_ms),
        )?;
        if meta.input_processors.is_empty() {
            out.write_all(b"input_processors = []\n")?;
        }
        for processor in &meta.input_processors {
            out.write_all(b"\n[[meta.input_processors]]\n")?;
            self.write(out, "kind", &processor.kind)?;
            self.write(out, "version", &processor.version)?;
        }
        Ok(())
    }

    fn source(&mut self, source: &SourceEntry, out: &mut impl Write) -> io::Result<()> {
        out.write_all(b"\n[[sources]]\n")?;
        self.write(out, "path", &source.path)?;
        self.write(out, "input_hash", source.input_hash.to_prefixed())?;
        self.write(out, "chunk_hash", source.chunk_hash.to_prefixed())?;
        self.write(out, "kind", &source.kind)
    }

    fn topology(&mut self, edges: &[TopologyEdge], out: &mut impl Write) -> io::Result<()> {
        for edge in edges {
            out.write_all(b"\n[[topology]]\n")?;
            self.write(out, "from", &edge.from)?;
            self.write(out, "to_source", &edge.to_source)?;
        }
        Ok(())
    }

    fn write(&mut self, out: &mut impl Write, key: &str, value: impl Serialize) -> io::Result<()> {
        self.value.clear();
        value
            .serialize(toml::ser::ValueSerializer::new(&mut self.value))
            .expect("strings and integers always serialize to TOML");
        out.write_all(key.as_bytes())?;
        out.write_all(b" = ")?;
        out.write_all(self.value.as_bytes())?;
        out.write_all(b"\n")
    }
}

/// Parses the TOML form. Structural checks only, like
/// [`binary::decode`](super::binary::decode): the producer, schema version
/// and root are checked by the caller.
pub fn from_toml(text: &str) -> Result<Lockfile> {
    let doc: TomlLockfile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let hash = |value: &str, field: &dyn Fn() -> String| {
        Hash::from_prefixed(value).map_err(|e| Error::BadLockfile(format!("{}: {e}", field())))
    };
    let mut input_processors = Vec::with_capacity(doc.meta.input_processors.len());
    for p in doc.meta.input_processors {
        input_processors.push(ProcessorVersion {
            kind: p.kind,
            version: p.version,
        });
    }
    let meta = Meta {
        producer: doc.meta.producer,
        producer_version: doc.meta.producer_version,
        schema_version: doc.meta.schema_version,
        input_processors,
        generated_at_ms: doc.meta.generated_at_ms.to_u64()?,
    };
    let mut sources = Vec::with_capacity(doc.sources.len());
    for (i, s) in doc.sources.into_iter().enumerate() {
        sources.push(SourceEntry {
            input_hash: hash(&s.input_hash, &|| format!("sources[{i}].input_hash"))?,
            chunk_hash: hash(&s.chunk_hash, &|| format!("sources[{i}].chunk_hash"))?,
            path: s.path,
            kind: s.kind,
        });
    }
    let topology = doc
        .topology
        .into_iter()
        .map(|e| TopologyEdge {
            from: e.from,
            to_source: e.to_source,
        })
        .collect();
    Ok(Lockfile {
        meta,
        sources,
        topology,
        root: hash(&doc.root, &|| "root".to_string())?,
    })
}

/// One line: where in the text, and what was wrong.
fn toml_error(text: &str, error: &toml::de::Error) -> Error {
    let message = error.message().trim().replace('\n', "; ");
    let at = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML line {line}, column {column}")
        }
        None => "TOML".to_string(),
    };
    Error::BadLockfile(format!("{at}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `toml` crate's rendering of the whole document: what the
    /// streamed writer must match.
    fn serde_rendered(lockfile: &Lockfile) -> String {
        let doc = TomlLockfile {
            root: lockfile.root.to_prefixed(),
            meta: TomlMeta {
                producer: lockfile.meta.producer.clone(),
                producer_version: lockfile.meta.producer_version.clone(),
                schema_version: lockfile.meta.schema_version.clone(),
                generated_at_ms: Millis::from_u64(lockfile.meta.generated_at_ms),
                input_processors: lockfile
                    .meta
                    .input_processors
                    .iter()
                    .map(|p| TomlProcessor {
                        kind: p.kind.clone(),
                        version: p.version.clone(),
                    })
                    .collect(),
            },
            sources: lockfile
                .sources
                .iter()
                .map(|s| TomlSource {
                    path: s.path.clone(),
                    input_hash: s.input_hash.to_prefixed(),
                    chunk_hash: s.chunk_hash.to_prefixed(),
                    kind: s.kind.clone(),
                })
                .collect(),
            topology: lockfile
                .topology
                .iter()
                .map(|e| TomlEdge {
                    from: e.from.clone(),
                    to_source: e.to_source.clone(),
                })
                .collect(),
        };
        toml::to_string(&doc).expect("strings, integers and arrays always serialize to TOML")
    }

    fn sample() -> Lockfile {
        let sources = vec![SourceEntry {
            path: "dir/ünï\u{0}\u{1}\t\r\n\"'\\\u{7f}\u{2028}''' \"\"\"end".into(),
            input_hash: Hash::of(b"a"),
            chunk_hash: Hash::of(b"b"),
            kind: "go-source".into(),
        }];
        Lockfile {
            meta: Meta {
                producer: "mache".into(),
                producer_version: "0.7.1".into(),
                schema_version: "0.1.0".into(),
                input_processors: vec![ProcessorVersion {
                    kind: "blake3".into(),
                    version: "1.5.0".into(),
                }],
                generated_at_ms: 1_748_345_600_000,
            },
            root: Lockfile::compute_root(&sources),
            sources,
            topology: vec![TopologyEdge {
                from: "a\r\nb".into(),
                to_source: "c\rd\n".into(),
            }],
        }
    }

    #[test]
    fn streamed_text_is_the_toml_crates_with_and_without_each_list() {
        let awkward = [
            "",
            "plain/path.go",
            "'single' and \"double\"",
            "'''",
            "\"\"\"",
            "line\nbreak",
            "crlf\r\n",
            "tab\tand\u{7f}",
            "\u{0}\u{1}\u{1b}",
            "ünïcödé/日本/\u{2028}\u{feff}",
            "trailing\\",
            "ends with quote\"",
            "ends with apostrophe'",
        ];
        for with_sources in [false, true] {
            for with_topology in [false, true] {
                for with_processors in [false, true] {
                    for ms in [0, 1_748_345_600_000, u64::MAX] {
                        let mut lockfile = sample();
                        lockfile.meta.generated_at_ms = ms;
                        if !with_sources {
                            lockfile.sources.clear();
                        } else {
                            let template = lockfile.sources[0].clone();
                            lockfile.sources = awkward
                                .iter()
                                .map(|path| SourceEntry {
                                    path: path.to_string(),
                                    kind: path.to_string(),
                                    ..template.clone()
                                })
                                .collect();
                        }
                        if !with_topology {
                            lockfile.topology.clear();
                        } else {
                            lockfile
                                .topology
                                .extend(awkward.iter().map(|from| TopologyEdge {
                                    from: from.to_string(),
                                    to_source: format!("{from}{from}"),
                                }));
                        }
                        if !with_processors {
                            lockfile.meta.input_processors.clear();
                        }
                        assert_eq!(to_toml(&lockfile), serde_rendered(&lockfile));
                        let mut of_binary = Vec::new();
                        write_toml_of_binary(
                            &super::super::binary::encode(&lockfile),
                            &mut of_binary,
                        )
                        .unwrap();
                        assert_eq!(
                            String::from_utf8(of_binary).unwrap(),
                            serde_rendered(&lockfile)
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn streamed_text_is_the_toml_crates_for_any_strings(
            paths in proptest::collection::vec(".*", 0..4),
            producer in ".*",
        ) {
            let mut lockfile = sample();
            lockfile.meta.producer = producer;
            let template = lockfile.sources[0].clone();
            lockfile.sources = paths
                .iter()
                .map(|path| SourceEntry { path: path.clone(), ..template.clone() })
                .collect();
            proptest::prop_assert_eq!(to_toml(&lockfile), serde_rendered(&lockfile));
        }
    }

    #[test]
    fn round_trips_tricky_strings() {
        let lockfile = sample();
        let text = to_toml(&lockfile);
        assert_eq!(from_toml(&text).unwrap(), lockfile, "{text}");
        assert!(text.starts_with("root = "), "{text}");
    }

    #[test]
    fn huge_timestamps_round_trip() {
        for ms in [0, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let mut lockfile = sample();
            lockfile.meta.generated_at_ms = ms;
            assert_eq!(from_toml(&to_toml(&lockfile)).unwrap(), lockfile);
        }
    }

    #[test]
    fn empty_lists_round_trip() {
        let mut lockfile = sample();
        lockfile.sources.clear();
        lockfile.topology.clear();
        lockfile.meta.input_processors.clear();
        let text = to_toml(&lockfile);
        assert_eq!(from_toml(&text).unwrap(), lockfile, "{text}");
    }

    #[test]
    fn refuses_bad_values_with_one_line_messages() {
        let text = to_toml(&sample());
        let cases = [
            (
                text.replace("generated_at_ms = 1748345600000", "generated_at_ms = -1"),
                "generated_at_ms",
            ),
            (
                text.replacen("input_hash = \"blake3:", "input_hash = \"sha256:", 1),
                "sources[0].input_hash",
            ),
            (text.replace("producer = ", "producr = "), "producr"),
            (format!("{text}\nextra = 1\n"), "TOML line"),
        ];
        for (input, expected) in cases {
            let err = from_toml(&input).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
