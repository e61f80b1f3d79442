//! Reading a `mache.db` and writing a restored one (SPEC §4).
//!
//! The reader turns `_source` (ordered by id) and `_ast` into [`SourceRow`]s
//! and [`AstRow`]s, resolving NULL content from disk. The writer creates the
//! restore schema and fills it in one transaction, in rollback-journal mode,
//! so the result opens read-only anywhere with no `-wal`/`-shm` files.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::rows::{AstRow, SourceRow};

/// The first 16 bytes of every SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Everything a push needs from a db.
#[derive(Debug, Default)]
pub struct DbContents {
    /// `_source` rows ordered by id, content resolved.
    pub sources: Vec<SourceRow>,
    /// `_ast` rows of each source (same order as `sources`), each list
    /// ordered by node_id; `None` when the db has no `_ast` table (raw
    /// chunks are pushed then).
    pub ast: Option<Vec<Vec<AstRow>>>,
    /// Whether some row's content was read from a file (NULL content): then
    /// the db's bytes alone do not determine the bundle.
    pub reads_files: bool,
}

/// BLAKE3 of the db file, when that alone determines what the db reads
/// as: `None` while a non-empty `-wal` file holds changes the main file
/// does not show yet.
pub fn fingerprint(db_path: &Path) -> Result<Option<Hash>> {
    check_is_file(db_path)?;
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(db_path)
        .map_err(|e| Error::io(format!("reading {}", db_path.display()), e))?;
    Ok(Some(Hash(*hasher.finalize().as_bytes())))
}

/// Reads a mache db. NULL `content` means "read the file at `path`",
/// relative to `source_root`; an empty BLOB is an empty file.
pub fn read_db(db_path: &Path, source_root: &Path) -> Result<DbContents> {
    let bad = |reason: String| Error::BadDb {
        path: db_path.to_path_buf(),
        reason,
    };
    check_is_file(db_path)?;
    let conn = open_read_only(db_path)?;
    if !has_table(&conn, "_source").map_err(|e| sql(db_path, e))? {
        return Err(bad("no _source table (is this a mache db?)".to_string()));
    }
    let with_ast = has_table(&conn, "_ast").map_err(|e| sql(db_path, e))?;
    // The two tables are read at once, on two connections.
    let (sources, ast) = std::thread::scope(|scope| {
        let ast = with_ast.then(|| scope.spawn(|| read_ast(&open_read_only(db_path)?, db_path)));
        let sources = read_sources(&conn, db_path, source_root);
        let ast = ast.map(|handle| handle.join().expect("the _ast reader does not panic"));
        (sources, ast.transpose())
    });
    let (sources, reads_files) = sources?;
    if sources.is_empty() {
        return Err(bad(
            "_source has no rows; refusing to make an empty bundle".to_string()
        ));
    }
    let ast = ast?
        .map(|by_id| align_ast(db_path, &sources, by_id))
        .transpose()?;
    Ok(DbContents {
        sources,
        ast,
        reads_files,
    })
}

/// Whether the file is a mache db: a SQLite db with a `_source` table.
/// Opened read-only, so the file is never changed; anything that cannot be
/// read as one (another format, a locked or damaged db) is not.
pub fn is_mache_db(path: &Path) -> bool {
    has_sqlite_header(path)
        && open_read_only(path)
            .ok()
            .and_then(|conn| has_table(&conn, "_source").ok())
            .unwrap_or(false)
}

/// Whether the file starts with SQLite's header (checked before SQLite
/// opens it, which would take any file for an empty db).
fn has_sqlite_header(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == SQLITE_HEADER)
}

/// Checks that a db to push exists and is a file, before anything is written.
pub fn check_is_file(db_path: &Path) -> Result<()> {
    let reason = match std::fs::metadata(db_path) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) if meta.is_dir() => "is a directory, not a db file".to_string(),
        Ok(_) => "is not a regular file".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such file".to_string(),
        Err(e) => e.to_string(),
    };
    Err(Error::BadDb {
        path: db_path.to_path_buf(),
        reason,
    })
}

fn open_read_only(db_path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(db_path, flags).map_err(|e| sql(db_path, e))
}

fn sql(path: &Path, e: rusqlite::Error) -> Error {
    Error::sqlite(path, e)
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The `_source` rows, and whether any content was read from a file.
fn read_sources(
    conn: &Connection,
    db_path: &Path,
    source_root: &Path,
) -> Result<(Vec<SourceRow>, bool)> {
    let mut stmt = conn
        .prepare("SELECT id, path, language, content FROM _source")
        .map_err(|e| sql(db_path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sql(db_path, e))?;
    let mut sources = Vec::new();
    let mut reads_files = false;
    while let Some(row) = rows.next().map_err(|e| sql(db_path, e))? {
        let id =
            text_of(row.get_ref(0).map_err(|e| sql(db_path, e))?).ok_or_else(|| Error::BadDb {
                path: db_path.to_path_buf(),
                reason: format!("_source row {} has a NULL id", sources.len() + 1),
            })?;
        let path = text_of(row.get_ref(1).map_err(|e| sql(db_path, e))?);
        let language = text_of(row.get_ref(2).map_err(|e| sql(db_path, e))?);
        let content = match row.get_ref(3).map_err(|e| sql(db_path, e))? {
            ValueRef::Null => {
                reads_files = true;
                read_by_path(db_path, source_root, &id, path.as_deref())?
            }
            ValueRef::Blob(b) => b.to_vec(),
            ValueRef::Text(t) => t.to_vec(),
            ValueRef::Integer(i) => i.to_string().into_bytes(),
            ValueRef::Real(r) => r.to_string().into_bytes(),
        };
        sources.push(SourceRow {
            id,
            path,
            language,
            content,
        });
    }
    // Sorting here rather than with ORDER BY spares SQLite a walk of the
    // primary-key index with one table lookup per row; byte-wise order is
    // SQLite's BINARY collation.
    sources.par_sort_unstable_by(|a, b| a.id.cmp(&b.id));
    if let Some(pair) = sources.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(Error::BadDb {
            path: db_path.to_path_buf(),
            reason: format!(
                "two _source rows have the id {:?}; ids must be unique",
                pair[0].id
            ),
        });
    }
    Ok((sources, reads_files))
}

/// A column as text, the way SQLite would cast it; `None` for NULL.
fn text_of(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn int_of(value: ValueRef<'_>) -> i64 {
    match value {
        ValueRef::Integer(i) => i,
        ValueRef::Real(r) => r as i64,
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        ValueRef::Null | ValueRef::Blob(_) => 0,
    }
}

/// Reads the file a NULL-content row refers to. The path must stay inside
/// `source_root`: a db is input, and input does not get to read `/etc`.
fn read_by_path(db_path: &Path, root: &Path, id: &str, path: Option<&str>) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::BadDb {
        path: db_path.to_path_buf(),
        reason,
    };
    let Some(rel) = path.filter(|p| !p.is_empty()) else {
        return Err(bad(format!(
            "_source {id:?} has neither content nor a path"
        )));
    };
    let full = safe_join(root, rel).ok_or_else(|| {
        bad(format!(
            "_source {id:?} path {rel:?} leaves the source root"
        ))
    })?;
    std::fs::read(&full).map_err(|e| {
        bad(format!(
            "_source {id:?} has NULL content and its file {} cannot be read: {e}",
            full.display()
        ))
    })
}

/// Joins a relative path under `root`, refusing absolute paths and `..`.
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let normal = rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    normal.then(|| root.join(rel))
}

/// Every `_ast` row, grouped by source id.
fn read_ast(conn: &Connection, db_path: &Path) -> Result<HashMap<String, Vec<AstRow>>> {
    let mut stmt = conn
        .prepare(
            "SELECT node_id, source_id, node_kind, start_byte, end_byte, start_row, start_col, \
             end_row, end_col FROM _ast",
        )
        .map_err(|e| sql(db_path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sql(db_path, e))?;
    let mut by_id: HashMap<String, Vec<AstRow>> = HashMap::new();
    while let Some(row) = rows.next().map_err(|e| sql(db_path, e))? {
        let get = |i| row.get_ref(i).map_err(|e| sql(db_path, e));
        let source_id = text_of(get(1)?).unwrap_or_default();
        let node = AstRow {
            node_id: text_of(get(0)?).unwrap_or_default(),
            source_id: String::new(),
            node_kind: text_of(get(2)?).unwrap_or_default(),
            start_byte: int_of(get(3)?),
            end_byte: int_of(get(4)?),
            start_row: int_of(get(5)?),
            start_col: int_of(get(6)?),
            end_row: int_of(get(7)?),
            end_col: int_of(get(8)?),
        };
        match by_id.get_mut(&source_id) {
            Some(nodes) => nodes.push(node),
            None => {
                by_id.insert(source_id, vec![node]);
            }
        }
    }
    Ok(by_id)
}

/// Lines the AST rows up with the sources (each list in node_id order:
/// byte-wise, as SQLite's BINARY collation, sorted in parallel rather than by
/// one large SQL sort). Rows whose source does not exist are an error.
fn align_ast(
    db_path: &Path,
    sources: &[SourceRow],
    mut by_id: HashMap<String, Vec<AstRow>>,
) -> Result<Vec<Vec<AstRow>>> {
    let mut aligned: Vec<Vec<AstRow>> = sources
        .iter()
        .map(|source| by_id.remove(&source.id).unwrap_or_default())
        .collect();
    let orphans: usize = by_id.values().map(Vec::len).sum();
    if orphans > 0 {
        return Err(Error::BadDb {
            path: db_path.to_path_buf(),
            reason: format!("{orphans} _ast rows name a source_id that has no _source row"),
        });
    }
    aligned
        .par_iter_mut()
        .zip(sources)
        .for_each(|(nodes, source)| {
            nodes.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
            for node in nodes.iter_mut() {
                node.source_id.clone_from(&source.id);
            }
        });
    Ok(aligned)
}

/// `_ast` rows one INSERT statement writes: a statement of many rows
/// costs SQLite's machinery once for all of them (about a fifth less time
/// restoring ASTs than a statement a row).
const AST_ROWS_PER_INSERT: usize = 64;

/// An INSERT of `rows` `_ast` rows.
fn insert_ast_sql(rows: usize) -> String {
    format!(
        "INSERT INTO _ast(node_id, source_id, node_kind, start_byte, end_byte, \
         start_row, start_col, end_row, end_col) VALUES {}",
        vec!["(?,?,?,?,?,?,?,?,?)"; rows].join(",")
    )
}

/// Binds `nodes` to an [`insert_ast_sql`] statement of as many rows.
fn bind_ast(stmt: &mut rusqlite::CachedStatement<'_>, nodes: &[AstRow]) -> rusqlite::Result<()> {
    for (row, n) in nodes.iter().enumerate() {
        let at = row * 9;
        stmt.raw_bind_parameter(at + 1, &n.node_id)?;
        stmt.raw_bind_parameter(at + 2, &n.source_id)?;
        stmt.raw_bind_parameter(at + 3, &n.node_kind)?;
        stmt.raw_bind_parameter(at + 4, n.start_byte)?;
        stmt.raw_bind_parameter(at + 5, n.end_byte)?;
        stmt.raw_bind_parameter(at + 6, n.start_row)?;
        stmt.raw_bind_parameter(at + 7, n.start_col)?;
        stmt.raw_bind_parameter(at + 8, n.end_row)?;
        stmt.raw_bind_parameter(at + 9, n.end_col)?;
    }
    Ok(())
}

/// SQL that creates the restore schema's `_ast` table.
const CREATE_AST: &str = "CREATE TABLE _ast(node_id TEXT PRIMARY KEY, source_id TEXT NOT NULL, \
     node_kind TEXT NOT NULL, start_byte INTEGER, end_byte INTEGER, start_row INTEGER, \
     start_col INTEGER, end_row INTEGER, end_col INTEGER)";

/// Writes a restored db: `_source` always, `_ast` from the first source
/// that comes with an AST (so a bundle of raw chunks restores without it).
/// All rows go in one transaction; nothing is visible until [`finish`](Self::finish).
pub struct DbWriter {
    conn: Connection,
    file: PathBuf,
    /// The db as messages name it: where it will end up, not the temporary
    /// file it is written to.
    path: PathBuf,
    has_ast: bool,
}

impl DbWriter {
    /// Creates the schema in a new (or empty) db file `file`; errors name
    /// the db `shown_as` (the file it becomes once complete).
    pub fn create(file: &Path, shown_as: &Path) -> Result<DbWriter> {
        let path = shown_as;
        let conn = Connection::open(file).map_err(|e| sql(path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; BEGIN;
             CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB);",
        )
        .map_err(|e| sql(path, e))?;
        Ok(DbWriter {
            conn,
            file: file.to_path_buf(),
            path: path.to_path_buf(),
            has_ast: false,
        })
    }

    /// Inserts one source and, for an AST-shaped chunk, its nodes (`Some`,
    /// possibly empty).
    pub fn insert(&mut self, source: &SourceRow, nodes: Option<&[AstRow]>) -> Result<()> {
        let path = &self.path;
        let duplicate = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => Error::BadDb {
                path: path.clone(),
                reason: format!("two sources restore to the same id {:?}", source.id),
            },
            _ => sql(path, e),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO _source(id, path, language, content) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    source.id,
                    source.path,
                    source.language,
                    source.content
                ])
            })
            .map_err(duplicate)?;
        let Some(nodes) = nodes else {
            return Ok(());
        };
        if !self.has_ast {
            self.conn
                .execute_batch(CREATE_AST)
                .map_err(|e| sql(path, e))?;
            self.has_ast = true;
        }
        let mut batches = nodes.chunks_exact(AST_ROWS_PER_INSERT);
        for batch in &mut batches {
            // A batch that fails (a duplicate node_id) is written row by
            // row, to name the row.
            if self.insert_ast(batch).is_err() {
                for node in batch {
                    self.insert_ast(std::slice::from_ref(node))?;
                }
            }
        }
        for node in batches.remainder() {
            self.insert_ast(std::slice::from_ref(node))?;
        }
        Ok(())
    }

    /// Inserts `nodes` with one statement; a duplicate `node_id` names the
    /// first node.
    fn insert_ast(&self, nodes: &[AstRow]) -> Result<()> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare_cached(&insert_ast_sql(nodes.len()))
            .map_err(|e| sql(path, e))?;
        bind_ast(&mut stmt, nodes).map_err(|e| sql(path, e))?;
        stmt.raw_execute()
            .map(drop)
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => Error::BadDb {
                    path: path.clone(),
                    reason: format!("two AST nodes share the node_id {:?}", nodes[0].node_id),
                },
                _ => sql(path, e),
            })
    }

    /// Commits, closes and fsyncs the db.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        self.conn
            .execute_batch("COMMIT;")
            .map_err(|e| sql(&path, e))?;
        self.conn.close().map_err(|(_, e)| sql(&path, e))?;
        let file = std::fs::File::open(&self.file)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let root = Path::new("/r");
        assert_eq!(safe_join(root, "a/b.go"), Some(PathBuf::from("/r/a/b.go")));
        assert_eq!(safe_join(root, "../etc/passwd"), None);
        assert_eq!(safe_join(root, "/etc/passwd"), None);
        assert_eq!(safe_join(root, "a/../../b"), None);
    }
}
