//! Reading a `mache.db` and writing a restored one (SPEC §4).
//!
//! The reader ([`DbReader`]) turns `_source` (ordered by id) and `_ast`
//! into windows of [`SourceRow`]s and their [`AstRow`]s, resolving NULL
//! content from disk, in memory bounded by a window. The writer creates the
//! restore schema and fills it in one transaction, in rollback-journal mode,
//! so the result opens read-only anywhere with no `-wal`/`-shm` files.

use std::path::{Component, Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::rows::{AstRow, SourceRow};

/// The first 16 bytes of every SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

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
    let hash = Hash::of_file(db_path)
        .map_err(|e| Error::io(format!("reading {}", db_path.display()), e))?;
    Ok(Some(hash))
}

/// A mache db to push, read a window of sources at a time: memory grows
/// with a window, not with the db. Sources come in id order (the primary
/// key's, byte-wise), each with its `_ast` rows in node_id order, merged
/// from a second connection reading `_ast` sorted by source and node (an
/// external sort SQLite bounds). NULL `content` means "read the file at
/// `path`", relative to `source_root`; an empty BLOB is an empty file.
pub struct DbReader {
    path: PathBuf,
    source_root: PathBuf,
    conn: Connection,
    has_ast: bool,
}

/// Consecutive sources of a db and their AST rows.
#[derive(Debug, Default)]
pub struct DbWindow {
    /// `_source` rows in id order, content resolved.
    pub sources: Vec<SourceRow>,
    /// Each source's `_ast` rows, in node_id order; `None` when the db has
    /// no `_ast` table (raw chunks are pushed then).
    pub ast: Option<Vec<Vec<AstRow>>>,
}

/// What [`DbReader::for_each_head`] sees of a source without its content.
#[derive(Debug)]
pub struct SourceHead {
    pub id: String,
    pub path: Option<String>,
    /// Its content is NULL (a file on disk) or starts with `{`: it may read
    /// as an AST chunk ([`DbReader::content_of`] gets it to tell).
    pub may_be_json: bool,
}

/// `_ast` rows sent from their reader at a time.
const AST_BATCH: usize = 4096;

impl DbReader {
    /// Opens the db read-only and checks it has a `_source` table.
    pub fn open(db_path: &Path, source_root: &Path) -> Result<DbReader> {
        check_is_file(db_path)?;
        let conn = open_read_only(db_path)?;
        if !has_table(&conn, "_source").map_err(|e| sql(db_path, e))? {
            return Err(bad_db(db_path, "no _source table (is this a mache db?)"));
        }
        let has_ast = has_table(&conn, "_ast").map_err(|e| sql(db_path, e))?;
        // One read transaction: every pass sees the same rows.
        conn.execute_batch("BEGIN").map_err(|e| sql(db_path, e))?;
        Ok(DbReader {
            path: db_path.to_path_buf(),
            source_root: source_root.to_path_buf(),
            conn,
            has_ast,
        })
    }

    /// Whether the db has an `_ast` table.
    pub fn has_ast(&self) -> bool {
        self.has_ast
    }

    /// The number of `_source` rows; none is an error (an empty bundle).
    pub fn count_sources(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM _source", [], |row| row.get(0))
            .map_err(|e| sql(&self.path, e))?;
        match n {
            0 => Err(bad_db(
                &self.path,
                "_source has no rows; refusing to make an empty bundle",
            )),
            n => Ok(n as usize),
        }
    }

    /// Calls `each` with every source's id, path and whether it may be
    /// JSON, in id order, reading no content.
    pub fn for_each_head(&self, mut each: impl FnMut(SourceHead)) -> Result<()> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, path, content IS NULL OR CAST(substr(content, 1, 1) AS BLOB) = X'7B' \
                 FROM _source ORDER BY id",
            )
            .map_err(|e| sql(path, e))?;
        let mut rows = stmt.query([]).map_err(|e| sql(path, e))?;
        let mut ids = IdOrder::default();
        while let Some(row) = rows.next().map_err(|e| sql(path, e))? {
            let get = |i| row.get_ref(i).map_err(|e| sql(path, e));
            let id = ids.next(path, text_of(get(0)?))?;
            each(SourceHead {
                id,
                path: text_of(get(1)?),
                may_be_json: int_of(get(2)?) != 0,
            });
        }
        Ok(())
    }

    /// The content of the source `id` (of `path`), read from its file if
    /// NULL.
    pub fn content_of(&self, id: &str, path: Option<&str>) -> Result<Vec<u8>> {
        let content = self
            .conn
            .query_row("SELECT content FROM _source WHERE id = ?1", [id], |row| {
                Ok(content_bytes(row.get_ref(0)?))
            })
            .map_err(|e| sql(&self.path, e))?;
        match content {
            Some(bytes) => Ok(bytes),
            None => read_by_path(&self.path, &self.source_root, id, path),
        }
    }

    /// Calls `each` with consecutive windows of at most `size` sources, in
    /// id order, and their AST rows; `_ast` is read on a second thread.
    /// Returns whether some content was read from a file (then the db's
    /// bytes alone do not determine the bundle).
    pub fn for_each_window(
        &self,
        size: usize,
        mut each: impl FnMut(DbWindow) -> Result<()>,
    ) -> Result<bool> {
        std::thread::scope(|scope| {
            let (to_merge, batches) = std::sync::mpsc::sync_channel(4);
            let ast_reader = self.has_ast.then(|| {
                let path = &self.path;
                scope.spawn(move || read_ast_sorted(path, &to_merge))
            });
            let mut ast = self.has_ast.then(|| AstGroups::new(batches));
            let merged = self.merge_windows(size, ast.as_mut(), &mut each);
            // The reader stops at its next send once the merge is gone.
            drop(ast);
            let read = ast_reader.map_or(Ok(()), |reader| {
                reader.join().expect("the _ast reader does not panic")
            });
            let reads_files = merged?;
            read?;
            Ok(reads_files)
        })
    }

    fn merge_windows(
        &self,
        size: usize,
        mut ast: Option<&mut AstGroups>,
        each: &mut impl FnMut(DbWindow) -> Result<()>,
    ) -> Result<bool> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare("SELECT id, path, language, content FROM _source ORDER BY id")
            .map_err(|e| sql(path, e))?;
        let mut rows = stmt.query([]).map_err(|e| sql(path, e))?;
        let mut ids = IdOrder::default();
        let mut reads_files = false;
        let mut window = DbWindow::default();
        while let Some(row) = rows.next().map_err(|e| sql(path, e))? {
            let get = |i| row.get_ref(i).map_err(|e| sql(path, e));
            let id = ids.next(path, text_of(get(0)?))?;
            let source_path = text_of(get(1)?);
            let content = match content_bytes(get(3)?) {
                Some(bytes) => bytes,
                None => {
                    reads_files = true;
                    read_by_path(path, &self.source_root, &id, source_path.as_deref())?
                }
            };
            if let Some(ast) = ast.as_deref_mut() {
                let nodes = ast.take_for(path, &id)?;
                window.ast.get_or_insert_with(Vec::new).push(nodes);
            }
            window.sources.push(SourceRow {
                id,
                path: source_path,
                language: text_of(get(2)?),
                content,
            });
            if window.sources.len() == size {
                each(std::mem::take(&mut window))?;
            }
        }
        if let Some(ast) = ast {
            ast.finish(path)?;
        }
        if !window.sources.is_empty() {
            each(window)?;
        }
        Ok(reads_files)
    }
}

fn bad_db(path: &Path, reason: &str) -> Error {
    Error::BadDb {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A content column's bytes; `None` for NULL (the file at the row's path).
fn content_bytes(value: ValueRef<'_>) -> Option<Vec<u8>> {
    match value {
        ValueRef::Null => None,
        ValueRef::Blob(b) => Some(b.to_vec()),
        ValueRef::Text(t) => Some(t.to_vec()),
        ValueRef::Integer(i) => Some(i.to_string().into_bytes()),
        ValueRef::Real(r) => Some(r.to_string().into_bytes()),
    }
}

/// Checks that ids come strictly ascending, byte-wise: unique, and in the
/// order the two tables are merged in.
#[derive(Default)]
struct IdOrder {
    last: Option<String>,
}

impl IdOrder {
    fn next(&mut self, db: &Path, id: Option<String>) -> Result<String> {
        let Some(id) = id else {
            return Err(bad_db(db, "a _source row has a NULL id"));
        };
        match &self.last {
            Some(last) if *last == id => {
                return Err(bad_db(
                    db,
                    &format!("two _source rows have the id {id:?}; ids must be unique"),
                ));
            }
            Some(last) if *last > id => {
                return Err(bad_db(
                    db,
                    &format!("_source id {id:?} sorts before {last:?}: ids must be text"),
                ));
            }
            _ => {}
        }
        self.last = Some(id.clone());
        Ok(id)
    }
}

/// Streams `_ast` to `to_merge` sorted by source_id then node_id, in
/// batches of [`AST_BATCH`] `(source_id, row)` pairs; stops when the
/// receiver is gone.
fn read_ast_sorted(
    db_path: &Path,
    to_merge: &std::sync::mpsc::SyncSender<Result<Vec<AstRow>>>,
) -> Result<()> {
    let conn = open_read_only(db_path)?;
    let mut stmt = conn
        .prepare(
            "SELECT node_id, source_id, node_kind, start_byte, end_byte, start_row, start_col, \
             end_row, end_col FROM _ast ORDER BY source_id, node_id",
        )
        .map_err(|e| sql(db_path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sql(db_path, e))?;
    let mut batch = Vec::with_capacity(AST_BATCH);
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                let _ = to_merge.send(Err(sql(db_path, e)));
                return Ok(());
            }
        };
        let get = |i| row.get_ref(i).map_err(|e| sql(db_path, e));
        batch.push(AstRow {
            node_id: text_of(get(0)?).unwrap_or_default(),
            source_id: text_of(get(1)?).unwrap_or_default(),
            node_kind: text_of(get(2)?).unwrap_or_default(),
            start_byte: int_of(get(3)?),
            end_byte: int_of(get(4)?),
            start_row: int_of(get(5)?),
            start_col: int_of(get(6)?),
            end_row: int_of(get(7)?),
            end_col: int_of(get(8)?),
        });
        if batch.len() == AST_BATCH
            && to_merge
                .send(Ok(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(AST_BATCH),
                )))
                .is_err()
        {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = to_merge.send(Ok(batch));
    }
    Ok(())
}

/// The `_ast` rows in source_id order, handed out source by source.
struct AstGroups {
    batches: std::sync::mpsc::Receiver<Result<Vec<AstRow>>>,
    pending: std::collections::VecDeque<AstRow>,
    done: bool,
}

impl AstGroups {
    fn new(batches: std::sync::mpsc::Receiver<Result<Vec<AstRow>>>) -> AstGroups {
        AstGroups {
            batches,
            pending: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// The next row's source_id, reading a batch if needed.
    fn peek(&mut self) -> Result<Option<&str>> {
        while self.pending.is_empty() && !self.done {
            match self.batches.recv() {
                Ok(batch) => self.pending.extend(batch?),
                Err(_) => self.done = true,
            }
        }
        Ok(self.pending.front().map(|row| row.source_id.as_str()))
    }

    /// The rows of source `id` (sources are asked for in id order); rows
    /// of a source_id before it have no source.
    fn take_for(&mut self, db: &Path, id: &str) -> Result<Vec<AstRow>> {
        let mut nodes = Vec::new();
        while let Some(source_id) = self.peek()? {
            match source_id.cmp(id) {
                std::cmp::Ordering::Less => return Err(orphan(db, source_id)),
                std::cmp::Ordering::Equal => {
                    nodes.push(self.pending.pop_front().expect("peeked"));
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(nodes)
    }

    /// Fails if rows are left: they name no source.
    fn finish(&mut self, db: &Path) -> Result<()> {
        match self.peek()? {
            Some(source_id) => Err(orphan(db, source_id)),
            None => Ok(()),
        }
    }
}

fn orphan(db: &Path, source_id: &str) -> Error {
    bad_db(
        db,
        &format!("_ast rows name the source_id {source_id:?}, which has no _source row"),
    )
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

/// The version of the restored db's layout: its schema, pragmas and the
/// order rows go in. Bump it with any change to what [`DbWriter`] writes.
const DB_LAYOUT: &str = "mache-cachefs.db/1";

/// What writes restored dbs: the layout version and the SQLite library (bundled,
/// so pinned by this build). The same rows through the same synthesizer
/// make the same bytes, which is what a [`DbRecord`](crate::store::sizes::DbRecord)
/// of this name promises.
pub fn synthesizer() -> String {
    format!("{DB_LAYOUT} sqlite {}", rusqlite::version())
}

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
            "PRAGMA page_size = 4096; PRAGMA encoding = 'UTF-8';
             PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; BEGIN;
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
        let (file, path) = (self.file.clone(), self.path.clone());
        self.commit()?;
        let file = std::fs::File::open(&file)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))
    }

    /// Commits and closes the db, leaving it to the page cache: for a db
    /// that is only read back (and hashed), never kept.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        self.conn
            .execute_batch("COMMIT;")
            .map_err(|e| sql(&path, e))?;
        self.conn.close().map_err(|(_, e)| sql(&path, e))
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
