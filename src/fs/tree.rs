//! The mount's inode table, built once from the lockfile (and the sizes
//! index) and never changed: names, directories and inode numbers.
//!
//! ```text
//! /                       ino 1
//! ├── sources/            ino 2   each lockfile source at its path
//! ├── ast/                ino 3   <path>.json for each AST-shaped source
//! ├── mache.db            ino 4
//! ├── mache.lock.toml     ino 5
//! └── .cachefs/           ino 6
//!     └── status          ino 7
//! ```
//!
//! Inode numbers are a pure function of the lockfile: source `i` is
//! `FIRST_FILE + 2i` under `sources/` and `FIRST_FILE + 2i + 1` under
//! `ast/`; directories follow, numbered in path order (all of `sources/`
//! first, then `ast/`). The same bundle gets the same inode numbers on every
//! mount.
//!
//! Paths are placed only if they are safe ([`check_path`]): never empty or
//! absolute, no empty, `.` or `..` components, no NUL, no component longer
//! than 255 bytes. Conflicts are resolved by two deterministic rules, each
//! logged as a warning:
//! - *Duplicate paths*: the first source in lockfile order gets the path.
//! - *File vs directory* (`a` is a source and so is `a/b`): the directory
//!   wins, so no source below it is hidden; the file `a` is left out.
//!
//! Sources left out of the tree are still rows of `mache.db`.
//!
//! The build sorts paths component by component, so every directory's
//! entries arrive together and already in name order: one pass with a stack
//! of open directories builds the tree, with no hashing. Names are not
//! copied; a [`Child`] points into the lockfile's path strings. The two
//! subtrees are built in parallel.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use rayon::prelude::*;

use crate::lockfile::Lockfile;

/// The root directory.
pub const ROOT: u64 = 1;
/// `sources/`.
pub const SOURCES: u64 = 2;
/// `ast/`.
pub const AST: u64 = 3;
/// `mache.db`.
pub const MACHE_DB: u64 = 4;
/// `mache.lock.toml`.
pub const LOCK_TOML: u64 = 5;
/// `.cachefs/`.
pub const CACHEFS: u64 = 6;
/// `.cachefs/status`.
pub const STATUS: u64 = 7;
/// The inode of source 0's file under `sources/`.
pub const FIRST_FILE: u64 = 16;

/// Longest file name Linux accepts.
const NAME_MAX: usize = 255;
/// Warnings logged one by one before the rest are only counted.
const WARN_LIMIT: usize = 20;
/// The suffix of AST view names.
const JSON: &str = ".json";
/// Names of the fixed entries, by [`NameRef::start`] when `src` is [`FIXED`].
const FIXED_NAMES: [&str; 6] = [
    ".cachefs",
    "ast",
    "mache.db",
    "mache.lock.toml",
    "sources",
    "status",
];
const FIXED: u32 = u32::MAX;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A directory: an index into the directory table.
    Dir(u32),
    /// `sources/<path>` of lockfile source `i`.
    Source(u32),
    /// `ast/<path>.json` of lockfile source `i`.
    Ast(u32),
    MacheDb,
    LockToml,
    Status,
    /// A number with no file (e.g. a source left out of the tree).
    Absent,
}

/// A directory: its parent and where its entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dir {
    pub parent: u64,
    /// Directories among its entries (for `st_nlink`).
    pub subdirs: u32,
    start: u32,
    len: u32,
}

/// Where a name's bytes are: a component of a lockfile path (plus `.json`
/// for AST views), or a fixed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameRef {
    src: u32,
    start: u32,
    len: u16,
    json: bool,
}

/// One directory entry. Entries of a directory are in byte order of name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub ino: u64,
    name: NameRef,
}

/// Why a lockfile path is not placed in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    Absolute,
    EmptyComponent,
    Dot,
    DotDot,
    Nul,
    NameTooLong,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "the path is empty",
            PathProblem::Absolute => "the path is absolute",
            PathProblem::EmptyComponent => "the path has an empty component",
            PathProblem::Dot => "the path has a '.' component",
            PathProblem::DotDot => "the path has a '..' component",
            PathProblem::Nul => "the path contains NUL",
            PathProblem::NameTooLong => "a component is longer than 255 bytes",
        })
    }
}

/// Checks that `path` can be placed in the tree as is.
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.contains('\0') {
        return Err(PathProblem::Nul);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathProblem::EmptyComponent),
            "." => return Err(PathProblem::Dot),
            ".." => return Err(PathProblem::DotDot),
            c if c.len() > NAME_MAX => return Err(PathProblem::NameTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// Which sources have an `ast/` file.
#[derive(Debug, Clone, Copy)]
pub enum AstFiles<'a> {
    /// Known per source (from the sizes index): `true` = AST-shaped.
    Known(&'a [bool]),
    /// Not known without fetching (no sizes index): every source gets a
    /// candidate entry, and the mount decides whether `ast/` exists at all.
    Candidates,
}

/// Counts of what the tree holds, for the status file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCounts {
    pub source_files: usize,
    pub ast_files: usize,
    pub directories: usize,
    /// Sources whose path is unsafe (not placed at all).
    pub unsafe_paths: usize,
    /// Files left out by the duplicate or file-vs-directory rule.
    pub conflicts: usize,
}

/// The inode table.
#[derive(Debug)]
pub struct Tree {
    lockfile: Arc<Lockfile>,
    /// Indexed by `ino - 1`.
    nodes: Vec<Node>,
    dirs: Vec<Dir>,
    children: Vec<Child>,
    counts: TreeCounts,
}

/// Logs the first few warnings, then only counts.
#[derive(Default)]
struct Warnings {
    logged: usize,
}

impl Warnings {
    fn warn(&mut self, message: impl FnOnce() -> String) {
        self.logged += 1;
        if self.logged <= WARN_LIMIT {
            tracing::warn!("{}", message());
        } else if self.logged == WARN_LIMIT + 1 {
            tracing::warn!("more paths are left out of the mount; .cachefs/status counts them");
        }
    }
}

/// Orders paths as shown (`path` + `suffix`) component by component: `/`
/// sorts before every other byte (paths hold no NUL), so `a`, `a/b`, `a/c`,
/// `a.txt` come in that order and everything below a directory is
/// contiguous, right after a file of the directory's name.
fn component_order(a: &[u8], b: &[u8], suffix: &[u8]) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if same < a.len() && same < b.len() {
        return key(&a[same]).cmp(&key(&b[same]));
    }
    let rest_a = a[same..].iter().chain(suffix).map(key);
    let rest_b = b[same..].iter().chain(suffix).map(key);
    rest_a.cmp(rest_b)
}

/// One subtree (`sources/` or `ast/`) as built on its own.
struct Subtree {
    /// Directories, numbered `base + index`; `dirs[0]` is the top itself.
    dirs: Vec<Dir>,
    children: Vec<Child>,
    /// Placed files: (inode, node).
    files: Vec<(u64, Node)>,
    conflicts: usize,
    warnings: Warnings,
}

/// An entry to place: its file inode, source index and full path.
struct Item<'a> {
    ino: u64,
    src: u32,
    path: &'a str,
}

/// A directory being filled while the build walks below it.
struct Open<'a> {
    /// Its path below the top (empty for the top).
    path: &'a str,
    /// Index in `Subtree::dirs`.
    index: usize,
    children: Vec<Child>,
    /// The file added last, by full path, if it is still the last entry.
    last_file: Option<&'a str>,
}

impl Subtree {
    /// Builds the subtree below `top` from `items` (any order). Directory
    /// `k` (in path order) gets inode `base + k - 1`; the top keeps `top`.
    fn build(top: u64, top_name: &str, mut items: Vec<Item<'_>>, json: bool, base: u64) -> Subtree {
        let suffix = if json { JSON } else { "" };
        // Sort by path as shown (with the suffix), then by lockfile order.
        items.par_sort_unstable_by(|a, b| {
            component_order(a.path.as_bytes(), b.path.as_bytes(), suffix.as_bytes())
                .then(a.ino.cmp(&b.ino))
        });
        let mut tree = Subtree {
            dirs: vec![Dir {
                parent: ROOT,
                ..Dir::default()
            }],
            children: Vec::with_capacity(items.len() * 2),
            files: Vec::with_capacity(items.len()),
            conflicts: 0,
            warnings: Warnings::default(),
        };
        let mut stack: Vec<Open<'_>> = vec![Open {
            path: "",
            index: 0,
            children: Vec::new(),
            last_file: None,
        }];
        let mut spare: Vec<Vec<Child>> = Vec::new();
        let ino_of = |index: usize| {
            if index == 0 {
                top
            } else {
                base + index as u64 - 1
            }
        };
        let mut previous: Option<&str> = None;
        for item in &items {
            let path = item.path;
            if previous == Some(path) {
                tree.conflicts += 1;
                let first = tree.files.last().map_or(0, |f| (f.0 - FIRST_FILE) / 2);
                tree.warnings.warn(|| {
                    format!(
                        "{top_name}/{path}{suffix} is named by sources {first} and {}; the first one is placed",
                        item.src
                    )
                });
                continue;
            }
            // Close the directories this path is not below.
            while stack.len() > 1 {
                let open = stack.last().expect("stack is not empty");
                let below = path.len() > open.path.len()
                    && path.as_bytes()[open.path.len()] == b'/'
                    && path.starts_with(open.path);
                if below {
                    break;
                }
                let open = stack.pop().expect("stack is not empty");
                spare.push(tree.close(open, &ino_of));
            }
            // Open the directories below the deepest open one.
            let mut start = if stack.len() == 1 {
                0
            } else {
                stack.last().unwrap().path.len() + 1
            };
            while let Some(slash) = path[start..].find('/') {
                let end = start + slash;
                let name = NameRef {
                    src: item.src,
                    start: start as u32,
                    len: (end - start) as u16,
                    json: false,
                };
                tree.drop_file_named(stack.last_mut().unwrap(), &path[..end], suffix, top_name);
                let index = tree.dirs.len();
                let parent = ino_of(stack.last().unwrap().index);
                tree.dirs.push(Dir {
                    parent,
                    ..Dir::default()
                });
                let open = stack.last_mut().unwrap();
                open.children.push(Child {
                    ino: ino_of(index),
                    name,
                });
                open.last_file = None;
                let mut children = spare.pop().unwrap_or_default();
                children.clear();
                stack.push(Open {
                    path: &path[..end],
                    index,
                    children,
                    last_file: None,
                });
                start = end + 1;
            }
            let name = NameRef {
                src: item.src,
                start: start as u32,
                len: (path.len() - start) as u16,
                json,
            };
            let open = stack.last_mut().unwrap();
            open.children.push(Child {
                ino: item.ino,
                name,
            });
            open.last_file = Some(path);
            let node = if json {
                Node::Ast(item.src)
            } else {
                Node::Source(item.src)
            };
            tree.files.push((item.ino, node));
            previous = Some(path);
        }
        while let Some(open) = stack.pop() {
            tree.close(open, &ino_of);
        }
        tree
    }

    /// The file-vs-directory rule: the directory `dir_path` (as shown) is
    /// about to be opened in `open`; a file shown at that same path, which
    /// sorts just before it, loses.
    fn drop_file_named(
        &mut self,
        open: &mut Open<'_>,
        dir_path: &str,
        suffix: &str,
        top_name: &str,
    ) {
        let Some(file) = open.last_file else {
            return;
        };
        let same = file.len() + suffix.len() == dir_path.len()
            && dir_path.starts_with(file)
            && dir_path.ends_with(suffix);
        if !same {
            return;
        }
        open.children.pop();
        open.last_file = None;
        self.files.pop();
        self.conflicts += 1;
        self.warnings.warn(|| {
            format!(
                "{top_name}/{dir_path} is not placed in the mount: the path is also a directory"
            )
        });
    }

    /// Records a finished directory's entries; returns its buffer for reuse.
    fn close(&mut self, mut open: Open<'_>, ino_of: &impl Fn(usize) -> u64) -> Vec<Child> {
        let first_dir = ino_of(1);
        let subdirs = open
            .children
            .iter()
            .filter(|c| c.ino >= first_dir || c.ino == AST || c.ino == SOURCES)
            .count() as u32;
        let dir = &mut self.dirs[open.index];
        dir.start = self.children.len() as u32;
        dir.len = open.children.len() as u32;
        dir.subdirs = subdirs;
        self.children.append(&mut open.children);
        open.children
    }
}

impl Tree {
    /// Builds the tree for `lockfile`'s sources.
    pub fn build(lockfile: Arc<Lockfile>, ast: AstFiles<'_>) -> Tree {
        let sources = &lockfile.sources;
        let n = sources.len();
        let first_dir = FIRST_FILE + 2 * n as u64;

        let mut warnings = Warnings::default();
        let mut counts = TreeCounts::default();
        let mut source_items = Vec::with_capacity(n);
        let mut ast_items = Vec::new();
        for (i, entry) in sources.iter().enumerate() {
            if let Err(problem) = check_path(&entry.path) {
                counts.unsafe_paths += 1;
                warnings.warn(|| {
                    format!(
                        "source {i} {:?} is not placed in the mount: {problem} (it is still a row of mache.db)",
                        entry.path
                    )
                });
                continue;
            }
            let item = |ino| Item {
                ino,
                src: i as u32,
                path: &entry.path,
            };
            source_items.push(item(FIRST_FILE + 2 * i as u64));
            let has_ast = match ast {
                AstFiles::Known(flags) => flags.get(i).copied().unwrap_or(false),
                AstFiles::Candidates => true,
            };
            if !has_ast {
                continue;
            }
            let last = entry.path.rsplit('/').next().unwrap_or("");
            if last.len() + JSON.len() > NAME_MAX {
                counts.unsafe_paths += 1;
                warnings.warn(|| {
                    format!(
                        "ast/{}.json is not placed in the mount: its name is longer than 255 bytes",
                        entry.path
                    )
                });
                continue;
            }
            ast_items.push(item(FIRST_FILE + 2 * i as u64 + 1));
        }

        let (src_tree, mut ast_tree) = rayon::join(
            || Subtree::build(SOURCES, "sources", source_items, false, first_dir),
            || Subtree::build(AST, "ast", ast_items, true, first_dir),
        );
        // The ast directories come after the sources ones.
        let shift = src_tree.dirs.len() as u64 - 1;
        for child in &mut ast_tree.children {
            if child.ino >= first_dir {
                child.ino += shift;
            }
        }
        for dir in &mut ast_tree.dirs[1..] {
            if dir.parent >= first_dir {
                dir.parent += shift;
            }
        }

        let total_dirs = src_tree.dirs.len() + ast_tree.dirs.len() - 2;
        let mut nodes = vec![Node::Absent; first_dir as usize - 1 + total_dirs];
        let mut dirs: Vec<Dir> = Vec::with_capacity(total_dirs + 4);
        let mut children =
            Vec::with_capacity(src_tree.children.len() + ast_tree.children.len() + 6);

        let fixed = |i: usize, ino: u64| Child {
            ino,
            name: NameRef {
                src: FIXED,
                start: i as u32,
                len: FIXED_NAMES[i].len() as u16,
                json: false,
            },
        };
        // The root: entries in byte order, as lookups expect.
        let root_children = [
            (0, CACHEFS),
            (1, AST),
            (2, MACHE_DB),
            (3, LOCK_TOML),
            (4, SOURCES),
        ];
        dirs.push(Dir {
            parent: ROOT,
            subdirs: 3,
            start: 0,
            len: root_children.len() as u32,
        });
        children.extend(root_children.iter().map(|&(i, ino)| fixed(i, ino)));
        dirs.push(Dir {
            parent: ROOT,
            subdirs: 0,
            start: children.len() as u32,
            len: 1,
        });
        children.push(fixed(5, STATUS));
        nodes[ROOT as usize - 1] = Node::Dir(0);
        nodes[CACHEFS as usize - 1] = Node::Dir(1);
        nodes[MACHE_DB as usize - 1] = Node::MacheDb;
        nodes[LOCK_TOML as usize - 1] = Node::LockToml;
        nodes[STATUS as usize - 1] = Node::Status;

        let mut conflicts = 0;
        let mut next_dir = first_dir;
        for (top, sub) in [(SOURCES, src_tree), (AST, ast_tree)] {
            let offset = children.len() as u32;
            conflicts += sub.conflicts;
            for (k, mut dir) in sub.dirs.into_iter().enumerate() {
                dir.start += offset;
                let ino = if k == 0 {
                    top
                } else {
                    next_dir += 1;
                    next_dir - 1
                };
                nodes[ino as usize - 1] = Node::Dir(dirs.len() as u32);
                dirs.push(dir);
            }
            children.extend(sub.children);
            for (ino, node) in &sub.files {
                nodes[*ino as usize - 1] = *node;
            }
            match top {
                SOURCES => counts.source_files = sub.files.len(),
                _ => counts.ast_files = sub.files.len(),
            }
        }
        counts.conflicts = conflicts;
        counts.directories = total_dirs;
        Tree {
            lockfile,
            nodes,
            dirs,
            children,
            counts,
        }
    }

    /// The node with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<Node> {
        match self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?) {
            Some(Node::Absent) | None => None,
            Some(node) => Some(*node),
        }
    }

    /// The directory with inode number `ino`.
    pub fn dir(&self, ino: u64) -> Option<&Dir> {
        match self.node(ino) {
            Some(Node::Dir(i)) => self.dirs.get(i as usize),
            _ => None,
        }
    }

    /// The entries of `dir`, in byte order of name.
    pub fn children(&self, dir: &Dir) -> &[Child] {
        &self.children[dir.start as usize..(dir.start + dir.len) as usize]
    }

    /// The name of an entry.
    pub fn name(&self, child: &Child) -> Cow<'_, str> {
        let (base, suffix) = self.name_parts(&child.name);
        if suffix.is_empty() {
            Cow::Borrowed(base)
        } else {
            Cow::Owned(format!("{base}{suffix}"))
        }
    }

    fn name_parts(&self, name: &NameRef) -> (&str, &'static str) {
        if name.src == FIXED {
            return (FIXED_NAMES[name.start as usize], "");
        }
        let path = &self.lockfile.sources[name.src as usize].path;
        let start = name.start as usize;
        let base = &path[start..start + name.len as usize];
        (base, if name.json { JSON } else { "" })
    }

    /// Compares an entry's name with `wanted`, byte-wise.
    fn compare_name(&self, child: &Child, wanted: &[u8]) -> Ordering {
        let (base, suffix) = self.name_parts(&child.name);
        base.as_bytes()
            .iter()
            .chain(suffix.as_bytes())
            .cmp(wanted.iter())
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let children = self.children(self.dir(parent)?);
        children
            .binary_search_by(|c| self.compare_name(c, name))
            .ok()
            .map(|i| children[i].ino)
    }

    /// The inode of a `/`-separated path below the root (for tests and tools).
    pub fn resolve(&self, path: &str) -> Option<u64> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(ROOT, |ino, name| self.lookup(ino, name.as_bytes()))
    }

    /// What the tree holds.
    pub fn counts(&self) -> TreeCounts {
        self.counts
    }

    /// The highest inode number in use.
    pub fn max_ino(&self) -> u64 {
        self.nodes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::lockfile::{Meta, SourceEntry};

    fn lockfile(paths: &[&str]) -> Arc<Lockfile> {
        let sources: Vec<SourceEntry> = paths
            .iter()
            .map(|p| SourceEntry {
                path: p.to_string(),
                input_hash: Hash::of(p.as_bytes()),
                chunk_hash: Hash::of(p.as_bytes()),
                kind: "go-source".into(),
            })
            .collect();
        Arc::new(Lockfile {
            meta: Meta {
                producer: "mache".into(),
                producer_version: "t".into(),
                schema_version: "0.1.0".into(),
                input_processors: Vec::new(),
                generated_at_ms: 0,
            },
            root: Lockfile::compute_root(&sources),
            sources,
            topology: Vec::new(),
        })
    }

    fn build(paths: &[&str], ast: AstFiles<'_>) -> Tree {
        let tree = Tree::build(lockfile(paths), ast);
        for ino in 1..=tree.max_ino() {
            if let Some(dir) = tree.dir(ino) {
                let names: Vec<_> = tree.children(dir).iter().map(|c| tree.name(c)).collect();
                assert!(
                    names.is_sorted_by(|a, b| a.as_bytes() < b.as_bytes()),
                    "{names:?}"
                );
                for child in tree.children(dir) {
                    if let Some(sub) = tree.dir(child.ino) {
                        assert_eq!(sub.parent, ino);
                    }
                }
            }
        }
        tree
    }

    fn names(tree: &Tree, ino: u64) -> Vec<String> {
        let dir = tree.dir(ino).unwrap();
        tree.children(dir)
            .iter()
            .map(|c| tree.name(c).into_owned())
            .collect()
    }

    #[test]
    fn places_sources_and_ast_files_with_stable_inodes() {
        let paths = ["src/main.go", "src/auth.go", "README.md"];
        let tree = build(&paths, AstFiles::Known(&[true, false, true]));
        assert_eq!(tree.resolve("sources/src/main.go"), Some(FIRST_FILE));
        assert_eq!(tree.resolve("sources/src/auth.go"), Some(FIRST_FILE + 2));
        assert_eq!(tree.resolve("sources/README.md"), Some(FIRST_FILE + 4));
        assert_eq!(tree.resolve("ast/src/main.go.json"), Some(FIRST_FILE + 1));
        assert_eq!(tree.resolve("ast/src/auth.go.json"), None);
        assert_eq!(tree.resolve("ast/README.md.json"), Some(FIRST_FILE + 5));
        assert_eq!(
            names(&tree, tree.resolve("sources/src").unwrap()),
            ["auth.go", "main.go"]
        );
        assert_eq!(tree.resolve("sources/src"), Some(FIRST_FILE + 6));
        assert_eq!(tree.resolve("ast/src"), Some(FIRST_FILE + 7));
        assert_eq!(
            names(&tree, ROOT),
            [".cachefs", "ast", "mache.db", "mache.lock.toml", "sources"]
        );
        assert_eq!(
            tree.node(tree.resolve(".cachefs/status").unwrap()),
            Some(Node::Status)
        );
        let again = build(&paths, AstFiles::Known(&[true, false, true]));
        assert_eq!(
            (again.nodes, again.dirs, again.children),
            (tree.nodes.clone(), tree.dirs.clone(), tree.children.clone())
        );
        let counts = tree.counts();
        assert_eq!(
            (counts.source_files, counts.ast_files, counts.directories),
            (3, 2, 2)
        );
        assert_eq!(tree.dir(SOURCES).unwrap().subdirs, 1);
        assert_eq!(tree.dir(ROOT).unwrap().subdirs, 3);
    }

    #[test]
    fn deep_and_interleaved_paths_nest_correctly() {
        let paths = [
            "a/b/c/d.txt",
            "a/b.txt",
            "a/b/c.txt",
            "a-b/x",
            "a/b/c/e/f",
            "z",
            "a.txt",
            "a/b/c/d2",
        ];
        let tree = build(&paths, AstFiles::Candidates);
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(
                tree.resolve(&format!("sources/{p}")),
                Some(FIRST_FILE + 2 * i as u64),
                "{p}"
            );
            assert_eq!(
                tree.resolve(&format!("ast/{p}.json")),
                Some(FIRST_FILE + 2 * i as u64 + 1),
                "{p}"
            );
        }
        assert_eq!(names(&tree, SOURCES), ["a", "a-b", "a.txt", "z"]);
        assert_eq!(
            names(&tree, tree.resolve("sources/a/b/c").unwrap()),
            ["d.txt", "d2", "e"]
        );
        assert_eq!(tree.counts().directories, 2 * 5);
        let c = tree.resolve("sources/a/b/c").unwrap();
        assert_eq!(
            tree.dir(c).unwrap().parent,
            tree.resolve("sources/a/b").unwrap()
        );
    }

    #[test]
    fn unsafe_paths_never_reach_the_tree() {
        let bad = [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
            "a/",
        ];
        let mut paths: Vec<&str> = bad.to_vec();
        paths.push("ok.txt");
        let tree = build(&paths, AstFiles::Candidates);
        for p in bad {
            assert!(check_path(p).is_err(), "{p:?}");
        }
        assert_eq!(names(&tree, SOURCES), ["ok.txt"]);
        assert_eq!(names(&tree, AST), ["ok.txt.json"]);
        assert_eq!(tree.counts().unsafe_paths, bad.len());
        assert_eq!(names(&tree, ROOT).len(), 5);
        assert_eq!(check_path(&"x".repeat(256)), Err(PathProblem::NameTooLong));
    }

    #[test]
    fn duplicates_keep_the_first_and_directories_beat_files() {
        let paths = ["a", "a/b", "dup", "dup", "c/d", "c"];
        let tree = build(&paths, AstFiles::Known(&[false; 6]));
        assert_eq!(names(&tree, SOURCES), ["a", "c", "dup"]);
        assert!(matches!(
            tree.node(tree.resolve("sources/a").unwrap()),
            Some(Node::Dir(_))
        ));
        assert!(matches!(
            tree.node(tree.resolve("sources/c").unwrap()),
            Some(Node::Dir(_))
        ));
        assert_eq!(tree.resolve("sources/dup"), Some(FIRST_FILE + 4));
        assert_eq!(tree.node(FIRST_FILE + 6), None);
        assert_eq!(tree.node(FIRST_FILE), None);
        assert_eq!(tree.counts().conflicts, 3);
        assert_eq!(tree.counts().source_files, 3);
        assert_eq!(names(&tree, AST), Vec::<String>::new());
    }

    #[test]
    fn ast_names_that_clash_with_ast_directories_follow_the_same_rule() {
        let tree = build(&["x", "x.json/y"], AstFiles::Known(&[true, true]));
        assert_eq!(names(&tree, SOURCES), ["x", "x.json"]);
        assert_eq!(names(&tree, AST), ["x.json"]);
        assert!(matches!(
            tree.node(tree.resolve("ast/x.json").unwrap()),
            Some(Node::Dir(_))
        ));
        assert!(tree.resolve("ast/x.json/y.json").is_some());
        assert_eq!(tree.node(FIRST_FILE + 1), None);
    }

    #[test]
    fn component_order_puts_a_directory_right_after_its_name() {
        let mut paths = vec!["a.txt", "a/b", "a", "a-b", "a/b/c", "ab"];
        paths.sort_by(|a, b| component_order(a.as_bytes(), b.as_bytes(), b""));
        assert_eq!(paths, ["a", "a/b", "a/b/c", "a-b", "a.txt", "ab"]);
        let mut shown = vec!["x.json/y", "x", "x.a"];
        shown.sort_by(|a, b| component_order(a.as_bytes(), b.as_bytes(), b".json"));
        assert_eq!(shown, ["x.a", "x", "x.json/y"]);
    }
}
