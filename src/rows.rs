//! The rows of a mache db: what a bundle carries and what a restore gives back.
//!
//! These are plain values shared by the db reader/writer ([`crate::machedb`]),
//! the chunk codec ([`crate::chunk`]) and the filesystem; none of them knows
//! SQLite or JSON.

/// One `_source` row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRow {
    /// `_source.id`.
    pub id: String,
    /// `_source.path`; `None` for SQL NULL.
    pub path: Option<String>,
    /// `_source.language`; `None` for SQL NULL.
    pub language: Option<String>,
    /// The source's bytes.
    pub content: Vec<u8>,
}

/// One `_ast` row (a syntax node of one source).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AstRow {
    pub node_id: String,
    pub source_id: String,
    pub node_kind: String,
    pub start_byte: i64,
    pub end_byte: i64,
    pub start_row: i64,
    pub start_col: i64,
    pub end_row: i64,
    pub end_col: i64,
}

/// The lockfile `kind` mache writes for a language: `<language>-source`,
/// or `unknown` when the language is NULL or empty.
pub fn kind_for_language(language: Option<&str>) -> String {
    match language {
        Some(lang) if !lang.is_empty() => format!("{lang}-source"),
        _ => "unknown".to_string(),
    }
}

/// The exact inverse of [`kind_for_language`]: `unknown` gives an empty
/// language; a kind without the `-source` suffix is kept whole.
pub fn language_for_kind(kind: &str) -> String {
    if kind == "unknown" {
        return String::new();
    }
    kind.strip_suffix("-source").unwrap_or(kind).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_language_are_inverse() {
        for lang in ["go", "python", "c-sharp", ""] {
            let kind = kind_for_language(Some(lang));
            assert_eq!(language_for_kind(&kind), lang);
        }
        assert_eq!(kind_for_language(None), "unknown");
        assert_eq!(kind_for_language(Some("go")), "go-source");
    }
}
