//! The mount's inode tree built from hostile lockfile paths (`..`,
//! absolute, NUL, long components, duplicates, file/directory conflicts):
//! every directory lists valid, distinct names in byte order, each inode
//! is reached once, the counts are what is reachable, and every safe path
//! resolves to its own source, to an earlier source of the same path, or
//! to a directory that won the file/directory rule.
#![no_main]

use std::collections::HashSet;

use mache_cachefs::fs::tree::{self, AstFiles, Node, Tree};

/// Paths per input, so one input cannot make a run slow.
const MAX_PATHS: usize = 256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let paths: Vec<String> = rest
        .split(|&b| b == b'\n')
        .take(MAX_PATHS)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let flags: Vec<bool> = (0..paths.len())
        .map(|i| (mode >> (i % 7)) & 1 == 1)
        .collect();
    let ast = if mode & 0x80 == 0 {
        AstFiles::Candidates
    } else {
        AstFiles::Known(&flags)
    };
    let lockfile = mache_cachefs_fuzz::lockfile_of(paths);
    let tree = Tree::build(lockfile.clone(), ast);
    let reached = walk(&tree);
    let counts = tree.counts();
    assert_eq!(
        reached.sources, counts.source_files,
        "sources/ files reached"
    );
    assert_eq!(reached.asts, counts.ast_files, "ast/ files reached");
    assert_eq!(reached.dirs, counts.directories, "directories reached");

    for (i, source) in lockfile.sources.iter().enumerate() {
        let own = tree::FIRST_FILE + 2 * i as u64;
        if tree::check_path(&source.path).is_err() {
            assert_eq!(tree.node(own), None, "unsafe path {:?} placed", source.path);
            continue;
        }
        let found = tree
            .resolve(&format!("sources/{}", source.path))
            .unwrap_or_else(|| panic!("safe path {:?} does not resolve", source.path));
        match tree.node(found) {
            Some(Node::Source(j)) => {
                let j = j as usize;
                assert!(j <= i, "{:?}: a later source won", source.path);
                assert_eq!(lockfile.sources[j].path, source.path);
            }
            Some(Node::Dir(_)) => {}
            other => panic!("{:?} resolves to {other:?}", source.path),
        }
    }
});

/// What a walk from the root reaches.
#[derive(Default)]
struct Reached {
    sources: usize,
    asts: usize,
    /// Directories below `sources/` and `ast/`.
    dirs: usize,
}

/// Walks the whole tree, checking each directory's entries on the way.
fn walk(tree: &Tree) -> Reached {
    let mut reached = Reached::default();
    let mut seen = HashSet::from([tree::ROOT]);
    let mut pending = vec![tree::ROOT];
    while let Some(ino) = pending.pop() {
        let dir = tree.dir(ino).expect("a pending inode is a directory");
        let children = tree.children(dir);
        let names: Vec<_> = children.iter().map(|c| tree.name(c)).collect();
        for name in &names {
            assert!(
                !name.is_empty()
                    && name.len() <= 255
                    && !name.contains(['/', '\0'])
                    && name != "."
                    && name != "..",
                "bad name {name:?}"
            );
        }
        assert!(
            names.is_sorted_by(|a, b| a.as_bytes() < b.as_bytes()),
            "entries not distinct and in order: {names:?}"
        );
        for (child, name) in children.iter().zip(&names) {
            assert!(seen.insert(child.ino), "inode {} reached twice", child.ino);
            assert_eq!(tree.lookup(ino, name.as_bytes()), Some(child.ino));
            match tree.node(child.ino) {
                Some(Node::Dir(_)) => {
                    let sub = tree.dir(child.ino).expect("a directory");
                    assert_eq!(sub.parent, ino, "{name:?} has another parent");
                    if child.ino >= tree::FIRST_FILE {
                        reached.dirs += 1;
                    }
                    pending.push(child.ino);
                }
                Some(Node::Source(_)) => reached.sources += 1,
                Some(Node::Ast(_)) => reached.asts += 1,
                Some(_) => {}
                None => panic!("{name:?} names inode {}, which is absent", child.ino),
            }
        }
    }
    reached
}
