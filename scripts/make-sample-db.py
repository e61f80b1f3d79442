#!/usr/bin/env python3
"""Build a realistic mache.db (SPEC §4) from a source tree, or a synthetic one.

From a directory:

    make-sample-db.py SRC_DIR OUT_DB [--max-files N] [--inline | --by-path] [--no-ast]

  Every regular file under SRC_DIR (symlinks and .git/.hg/.svn skipped)
  becomes one `_source` row: id = path = the file's path relative to
  SRC_DIR ('/'-separated), language from the extension (NULL if unknown),
  content = the file's bytes (--inline, the default) or NULL (--by-path).
  With --by-path the bytes stay on disk and the path is relative to SRC_DIR,
  so pushing needs `--source-root SRC_DIR`.

  Python files are parsed with the `ast` module into `_ast` rows with
  ley-line style node ids: `<source_id>/Module/FunctionDef`, a `_<i>` suffix
  for the i-th repeat of a kind among siblings (`.../FunctionDef_1`), and
  children below their parent (`.../FunctionDef_1/arguments`). node_kind is
  the class name; byte offsets are into the file's bytes; rows and columns
  are 0-based, columns in bytes (tree-sitter's convention). Spans are the
  ast module's own (a decorated def starts at `def`, its decorators before
  it); nodes without a position (arguments, comprehension, ...) span their
  children; Module spans the whole file. Token-like singleton nodes
  (Load/Store/Del, operators) are left out. Files that do not parse, or are
  not UTF-8, get no rows. --no-ast omits the `_ast` table altogether (so a
  push makes raw chunks).

Synthetic:

    make-sample-db.py --synthetic N OUT_DB [--seed S] [--write-tree DIR] [--by-path]

  N deterministic sources (same N and seed, same db) in a directory tree
  about five levels deep, 200 B to 20 KB each (log-uniform): about a fifth
  Python with `_ast` rows, the rest Go, Rust, C, JavaScript, Markdown and
  more. --write-tree also writes the files under DIR, for comparing a mount
  with a native tree; --by-path (which needs --write-tree) leaves content
  NULL so the db points at that tree.

OUT_DB must not exist unless --force is given; it is written to a temporary
file and renamed into place. A summary goes to stderr.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import random
import re
import sqlite3
import stat
import sys
import time
import tokenize
from typing import Iterable, Iterator

SOURCE_DDL = "CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB)"
AST_DDL = (
    "CREATE TABLE _ast(node_id TEXT PRIMARY KEY, source_id TEXT NOT NULL, "
    "node_kind TEXT NOT NULL, start_byte INTEGER, end_byte INTEGER, start_row INTEGER, "
    "start_col INTEGER, end_row INTEGER, end_col INTEGER)"
)

SKIP_DIRS = {".git", ".hg", ".svn"}

LANGUAGES = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".go": "go",
    ".rs": "rust",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hh": "cpp", ".hpp": "cpp", ".hxx": "cpp",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".java": "java",
    ".kt": "kotlin", ".kts": "kotlin",
    ".scala": "scala",
    ".swift": "swift",
    ".cs": "c_sharp",
    ".rb": "ruby",
    ".php": "php",
    ".lua": "lua",
    ".pl": "perl", ".pm": "perl",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".md": "markdown", ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html", ".htm": "html",
    ".css": "css", ".scss": "scss",
    ".json": "json",
    ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml",
    ".xml": "xml",
    ".sql": "sql",
    ".proto": "proto",
    ".capnp": "capnp",
    ".zig": "zig",
    ".hs": "haskell",
    ".ml": "ocaml", ".mli": "ocaml",
    ".ex": "elixir", ".exs": "elixir",
    ".erl": "erlang",
    ".dart": "dart",
    ".r": "r",
    ".tf": "hcl",
}

# Nodes that are singletons without a source span of their own.
SKIPPED_NODES = (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)

NEWLINE = re.compile(rb"\r\n|\r|\n")

AstRow = tuple  # (node_id, source_id, kind, sb, eb, sr, sc, er, ec)


def language_for(path: str) -> str | None:
    return LANGUAGES.get(os.path.splitext(path)[1].lower())


# ---- Python files to _ast rows -------------------------------------------------


def module_end(content: bytes) -> tuple[int, int]:
    """The (row, col) just past the last byte, tree-sitter style."""
    last = None
    rows = 0
    for match in NEWLINE.finditer(content):
        rows += 1
        last = match.end()
    return rows, len(content) - (last or 0)


def python_ast_rows(source_id: str, content: bytes) -> list[AstRow]:
    """The `_ast` rows of one Python file, or [] if it does not parse.

    ast's col_offset/end_col_offset are UTF-8 byte offsets within a line,
    so a node's byte offset is its line's start plus that. Files whose bytes
    are not the UTF-8 the parser saw (another coding cookie, invalid UTF-8)
    get no rows rather than wrong offsets.
    """
    try:
        content.decode("utf-8")
        encoding, _ = tokenize.detect_encoding(io.BytesIO(content).readline)
        if encoding not in ("utf-8", "utf-8-sig") and not content.isascii():
            return []
        tree = ast.parse(content)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError, LookupError):
        return []

    bom = 3 if content.startswith(b"\xef\xbb\xbf") else 0
    line_starts = [bom]
    line_starts.extend(m.end() for m in NEWLINE.finditer(content))
    end_row, end_col = module_end(content)

    # Pre-order walk: [node_id, kind, parent_index, span or None].
    entries: list[list] = []
    stack: list[tuple[ast.AST, str, int]] = [(tree, f"{source_id}/Module", -1)]
    while stack:
        node, node_id, parent = stack.pop()
        index = len(entries)
        if parent < 0:
            span = [0, len(content), 0, 0, end_row, end_col]
        elif getattr(node, "end_lineno", None) is not None:
            sr, er = node.lineno - 1, node.end_lineno - 1
            sc, ec = node.col_offset, node.end_col_offset
            span = [line_starts[sr] + sc, line_starts[er] + ec, sr, sc, er, ec]
        else:
            span = None
        entries.append([node_id, type(node).__name__, parent, span])

        children = []
        seen: dict[str, int] = {}
        for child in ast.iter_child_nodes(node):
            if isinstance(child, SKIPPED_NODES):
                continue
            kind = type(child).__name__
            count = seen.get(kind, 0)
            seen[kind] = count + 1
            children.append((child, f"{node_id}/{kind}" if count == 0 else f"{node_id}/{kind}_{count}", index))
        stack.extend(reversed(children))

    # Nodes without a position (arguments, comprehension, withitem, ...) span
    # their positioned descendants; children come after parents in pre-order.
    cover: dict[int, list] = {}
    for i in range(len(entries) - 1, 0, -1):
        entry = entries[i]
        if entry[3] is None:
            entry[3] = cover.get(i)
        span = entry[3]
        parent = entry[2]
        if span is not None and entries[parent][3] is None:
            acc = cover.get(parent)
            if acc is None:
                cover[parent] = list(span)
            else:
                if span[0] < acc[0]:
                    acc[0], acc[2], acc[3] = span[0], span[2], span[3]
                if span[1] > acc[1]:
                    acc[1], acc[4], acc[5] = span[1], span[4], span[5]
    rows = []
    for entry in entries:
        span = entry[3]
        if span is None:
            # Nothing inside has a position (e.g. `def f():`'s arguments):
            # an empty span at the parent's start.
            p = entries[entry[2]][3]
            span = entry[3] = [p[0], p[0], p[2], p[3], p[2], p[3]]
        rows.append((entry[0], source_id, entry[1], *span))
    return rows


# ---- from a directory ----------------------------------------------------------


def walk_files(root: str) -> Iterator[str]:
    """Regular files under root, relative, '/'-separated, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield os.path.relpath(full, root).replace(os.sep, "/")


def sources_from_dir(root: str, max_files: int | None, stats: dict):
    """Yields (id, path, language, content, None) for the files under root."""
    paths = sorted(walk_files(root))
    for rel in paths:
        if max_files is not None and stats["sources"] >= max_files:
            break
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            stats["skipped_names"] += 1
            continue
        try:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
        except OSError as err:
            print(f"skipping {rel}: {err}", file=sys.stderr)
            continue
        stats["sources"] += 1
        stats["bytes"] += len(data)
        yield rel, rel, language_for(rel), data, None


# ---- synthetic -----------------------------------------------------------------

# Python blocks: each is parsed once; instances differ only in fixed-width
# names and numbers, so one parse gives every instance's rows by shifting.
NAME = "n000000000"  # placeholder: always replaced by 'n' + 9 digits
NUM = "1000000"  # placeholder: always replaced by 7 digits

PY_BLOCKS = [
    '''def n000000000(items, limit=1000000):
    """Return the first items whose weight is below the limit.

    The result keeps the input order; weights are compared as integers, so
    callers holding floats should round them first. An empty input gives an
    empty list, never None.

    Args:
        items: the candidates, each with a ``weight`` attribute.
        limit: the exclusive upper bound.
    """
    out = []
    for item in items:
        if item.weight < limit:
            out.append(item)
    return out

''',
    '''class n000000000:
    """A small record with a name, a size and a list of children.

    Instances form a tree; ``total`` walks it recursively, which is fine for
    the shallow trees this module builds (a few levels at most).
    """

    def __init__(self, name, size=1000000):
        self.name = name
        self.size = size
        self.children = []

    def total(self):
        # Sum of this node and every descendant.
        return self.size + sum(c.total() for c in self.children)

''',
    '''n000000000 = {
    "name": "sample",
    "retries": 1000000,
    "paths": ["/var/lib/cache", "/tmp/cache"],
    "enabled": True,
}

''',
    '''async def n000000000(session, url, attempts=1000000):
    """Fetch url, retrying on failure; raise the last error.

    Only OSError is retried: anything else is a bug in the caller or the
    server and surfaces at once. There is no backoff between attempts.
    """
    last = None
    for attempt in range(attempts):
        try:
            async with session.get(url) as response:
                return await response.read()
        except OSError as err:
            last = err
    raise last

''',
    '''# Word frequencies are used by the report generator and by the search
# index; both want the most frequent words first, ties broken by the word.
def n000000000(text):
    # Count words, ignoring case and punctuation.
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:1000000]

''',
    '''# ------------------------------------------------------------------------
# Configuration constants. These are read once at import time and are not
# meant to be changed at run time; tests patch them through the fixtures.
# ------------------------------------------------------------------------
n000000000 = 1000000

''',
]

PY_HEADER = '"""Synthetic module {path}.\n\nGenerated by make-sample-db.py for benchmarks.\n"""\n\nimport os\nimport sys\n\n'

# Per language: (head, repeated body[, tail]); {path}, {pkg}, {name}, {num}.
TEXT_TEMPLATES = {
    "go": (
        "package {pkg}\n\nimport \"fmt\"\n\n",
        "// {name} returns the sum of the first n values.\nfunc {name}(values []int, n int) int {{\n"
        "\ttotal := 0\n\tfor i := 0; i < n && i < len(values); i++ {{\n\t\ttotal += values[i]\n\t}}\n"
        "\tfmt.Println(\"{name}\", total, {num})\n\treturn total\n}}\n\n",
    ),
    "rust": (
        "//! Synthetic module {path}.\n\nuse std::collections::HashMap;\n\n",
        "/// Counts occurrences of each key in `items`.\npub fn {name}(items: &[&str]) -> HashMap<String, usize> {{\n"
        "    let mut counts = HashMap::with_capacity({num});\n    for item in items {{\n"
        "        *counts.entry(item.to_string()).or_insert(0) += 1;\n    }}\n    counts\n}}\n\n",
    ),
    "c": (
        "/* Synthetic file {path}. */\n#include <stdio.h>\n#include <string.h>\n\n",
        "static int {name}(const char *s, size_t n) {{\n    int h = {num};\n    for (size_t i = 0; i < n; i++) {{\n"
        "        h = h * 31 + (unsigned char)s[i];\n    }}\n    return h;\n}}\n\n",
    ),
    "javascript": (
        "// Synthetic module {path}.\n'use strict';\n\n",
        "export function {name}(list, limit = {num}) {{\n  return list\n    .filter((x) => x.score < limit)\n"
        "    .map((x) => ({{ id: x.id, label: `${{x.name}} <${{x.score}}>` }}));\n}}\n\n",
    ),
    "typescript": (
        "// Synthetic module {path}.\n\n",
        "export interface Item{name} {{\n  id: number;\n  name: string;\n}}\n\n"
        "export function {name}(items: Item{name}[]): Map<number, string> {{\n"
        "  const out = new Map<number, string>();\n  for (const it of items) out.set(it.id + {num}, it.name);\n"
        "  return out;\n}}\n\n",
    ),
    "markdown": (
        "# {path}\n\nSynthetic documentation for benchmarks.\n\n",
        "## Section {name}\n\nThis section describes the behaviour of `{name}` with a limit of {num}.\n"
        "It is generated text, shaped like real project documentation:\n\n- a list item\n"
        "- another item with `code`\n\n```sh\nmache-cachefs push --db mache.db\n```\n\n",
    ),
    "json": (
        '{{\n  "source": "{path}",\n  "entries": [\n',
        '    {{"name": "{name}", "value": {num}, "tags": ["synthetic", "bench"]}},\n',
        "    null\n  ]\n}}\n",
    ),
    "yaml": (
        "# {path}\n",
        "{name}: {num}  # synthetic setting, one of many\n",
    ),
    None: (
        "{path}\n",
        "{name} = {num}: a line of a plain text file, repeated with other names\n",
    ),
}

SYNTH_EXTENSIONS = [
    (".py", 20), (".go", 14), (".rs", 12), (".c", 6), (".h", 4), (".js", 10), (".ts", 10),
    (".md", 10), (".json", 4), (".txt", 5), (".yaml", 5),
]

DIR_WORDS = ["core", "util", "api", "net", "db", "io", "auth", "cli", "web", "test",
             "internal", "pkg", "lib", "svc", "proto", "model", "cache", "sync"]


def parse_block(block: str) -> tuple[str, list[tuple], int, int]:
    """Parses a block once: (top-level kind, relative rows, line count, byte length).

    Relative rows are (id suffix below the top node, kind, sb, eb, sr, sc, er, ec)
    with the top node itself as suffix "".
    """
    data = block.encode()
    rows = python_ast_rows("X", data)
    # rows[0] is the module; the block's first statement is rows[1].
    top_id = rows[1][0]
    kind = rows[1][2]
    rel = []
    for node_id, _, k, *span in rows[1:]:
        if node_id != top_id and not node_id.startswith(top_id + "/"):
            raise ValueError("synthetic Python block must be one top-level statement")
        rel.append((node_id[len(top_id):], k, *span))
    return kind, rel, block.count("\n"), len(data)


def synthetic_path(rng: random.Random, index: int, ext: str) -> str:
    depth = rng.choice((2, 3, 4, 4, 5, 5, 5, 6))
    parts = [f"{rng.choice(DIR_WORDS)}{rng.randrange(8)}" for _ in range(depth - 1)]
    return "/".join(parts + [f"file_{index:06d}{ext}"])


def synthetic_sources(n: int, seed: int, stats: dict):
    """Yields (id, path, language, content, ast rows) for N synthetic sources.

    Paths and sizes are drawn first and the sources generated in path order,
    so rows reach SQLite in (nearly) key order, which keeps inserts fast.
    """
    rng = random.Random(seed)
    blocks = [(b, *parse_block(b)) for b in PY_BLOCKS]
    exts = [e for e, _ in SYNTH_EXTENSIONS]
    weights = [w for _, w in SYNTH_EXTENSIONS]
    plan = []
    for index, ext in enumerate(rng.choices(exts, weights, k=n)):
        # The index in the file name keeps paths unique.
        target = int(200 * (100 ** rng.random()))  # log-uniform 200 B .. 20 KB
        plan.append((synthetic_path(rng, index, ext), target))
    plan.sort()

    counter = 0
    for path, target in plan:
        language = language_for(path)
        rows: list[AstRow] = []
        if language == "python":
            header = PY_HEADER.format(path=path)
            parts = [header]
            size = len(header.encode())
            line = header.count("\n")
            module_id = f"{path}/Module"
            rows.extend(r for r in python_ast_rows(path, header.encode()) if r[0] != module_id)
            # Module children so far: the docstring's Expr and two Imports.
            seen = {"Expr": 1, "Import": 2}
            while size < target:
                text, kind, rel, lines, length = rng.choice(blocks)
                counter += 1
                num = str(1_000_000 + int(rng.random() * 9_000_000))
                parts.append(text.replace(NAME, f"n{counter:09d}").replace(NUM, num))
                count = seen.get(kind, 0)
                seen[kind] = count + 1
                top = f"{module_id}/{kind}" if count == 0 else f"{module_id}/{kind}_{count}"
                rows.extend([
                    (top + suffix, path, k, sb + size, eb + size, sr + line, sc, er + line, ec)
                    for suffix, k, sb, eb, sr, sc, er, ec in rel
                ])
                size += length
                line += lines
            content = "".join(parts).encode()
            end_row, end_col = module_end(content)
            rows.append((module_id, path, "Module", 0, len(content), 0, 0, end_row, end_col))
            rows.sort()
        else:
            key = language if language in TEXT_TEMPLATES else None
            head, body, *tail = TEXT_TEMPLATES[key]
            pkg = path.rsplit("/", 2)[-2] if "/" in path else "main"
            parts = [head.format(path=path, pkg=re.sub(r"\W", "_", pkg))]
            size = len(parts[0])
            while size < target:
                counter += 1
                num = 1_000_000 + int(rng.random() * 9_000_000)
                chunk = body.format(name=f"n{counter:09d}", num=num)
                parts.append(chunk)
                size += len(chunk)
            parts.extend(t.format(path=path) for t in tail)
            content = "".join(parts).encode()
        stats["sources"] += 1
        stats["bytes"] += len(content)
        yield path, path, language, content, rows


# ---- writing the db ------------------------------------------------------------


def write_db(out_db: str, sources: Iterable, with_ast: bool, by_path: bool,
             ast_of, tree_dir: str | None, stats: dict) -> None:
    """Writes sources (id, path, language, content, extra) into a new db.

    ast_of(id, content, extra) gives a Python source's _ast rows; content is
    stored NULL when by_path; files are also written under tree_dir if set.
    """
    tmp = out_db + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        conn.execute("BEGIN")
        conn.execute(SOURCE_DDL)
        if with_ast:
            conn.execute(AST_DDL)
        source_batch: list[tuple] = []
        ast_batch: list[tuple] = []

        def flush() -> None:
            conn.executemany("INSERT INTO _source VALUES (?,?,?,?)", source_batch)
            if ast_batch:
                conn.executemany("INSERT INTO _ast VALUES (?,?,?,?,?,?,?,?,?)", ast_batch)
            stats["ast_rows"] += len(ast_batch)
            source_batch.clear()
            ast_batch.clear()

        made_dirs: set[str] = set()
        for sid, path, language, content, extra in sources:
            if tree_dir is not None:
                full = os.path.join(tree_dir, path)
                parent = os.path.dirname(full)
                if parent not in made_dirs:
                    os.makedirs(parent, exist_ok=True)
                    made_dirs.add(parent)
                with open(full, "wb") as f:
                    f.write(content)
            if with_ast and language == "python":
                rows = ast_of(sid, content, extra)
                if rows:
                    stats["parsed"] += 1
                    ast_batch.extend(rows)
                else:
                    stats["unparsed"] += 1
            source_batch.append((sid, path, language, None if by_path else content))
            if len(source_batch) >= 2000 or len(ast_batch) >= 200_000:
                flush()
        flush()
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.replace(tmp, out_db)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make-sample-db.py",
        description=__doc__.split("\n\n")[0],
        usage=(
            "%(prog)s SRC_DIR OUT_DB [--max-files N] [--inline | --by-path] [--no-ast] [--force]\n"
            "       %(prog)s --synthetic N OUT_DB [--seed S] [--write-tree DIR] [--by-path] [--force]"
        ),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="[SRC_DIR] OUT_DB",
                        help="source directory (not with --synthetic) and the db to create")
    parser.add_argument("--max-files", type=int, metavar="N", help="take only the first N files (sorted by path)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--inline", dest="by_path", action="store_false", help="store content as BLOB (default)")
    mode.add_argument("--by-path", dest="by_path", action="store_true",
                      help="store NULL content; the path (relative to SRC_DIR, or to --write-tree DIR) "
                           "is read at push time, which needs --source-root")
    parser.set_defaults(by_path=False)
    parser.add_argument("--no-ast", action="store_true", help="do not create the _ast table")
    parser.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic sources instead of reading SRC_DIR")
    parser.add_argument("--seed", type=int, default=1, help="seed for --synthetic (default 1)")
    parser.add_argument("--write-tree", metavar="DIR", help="with --synthetic: also write the files under DIR")
    parser.add_argument("--force", action="store_true", help="overwrite OUT_DB if it exists")
    args = parser.parse_args(argv)

    if args.synthetic is not None:
        if len(args.paths) != 1:
            parser.error("--synthetic takes only OUT_DB")
        if args.synthetic < 1:
            parser.error("--synthetic N needs N >= 1")
        if args.max_files is not None:
            parser.error("--max-files does not apply to --synthetic")
        if args.by_path and not args.write_tree:
            parser.error("--by-path with --synthetic needs --write-tree DIR (the files the db points at)")
        out_db = args.paths[0]
    else:
        if len(args.paths) != 2:
            parser.error("expected SRC_DIR OUT_DB (or --synthetic N OUT_DB)")
        if args.write_tree:
            parser.error("--write-tree only applies to --synthetic")
        src_dir, out_db = args.paths
        if not os.path.isdir(src_dir):
            parser.error(f"not a directory: {src_dir}")
    if os.path.exists(out_db) and not args.force:
        parser.error(f"{out_db} exists (use --force to overwrite)")

    stats = dict(sources=0, bytes=0, ast_rows=0, parsed=0, unparsed=0, skipped_names=0)
    started = time.monotonic()
    if args.synthetic is not None:
        sources = synthetic_sources(args.synthetic, args.seed, stats)
        write_db(out_db, sources, not args.no_ast, args.by_path,
                 lambda sid, content, rows: rows, args.write_tree, stats)
    else:
        sources = sources_from_dir(src_dir, args.max_files, stats)
        write_db(out_db, sources, not args.no_ast, args.by_path,
                 lambda sid, content, _: python_ast_rows(sid, content), None, stats)
    elapsed = time.monotonic() - started

    summary = (
        f"{out_db}: {stats['sources']} sources ({stats['bytes'] / 1e6:.1f} MB), "
        f"{stats['ast_rows']} _ast rows from {stats['parsed']} Python files"
    )
    if stats["unparsed"]:
        summary += f", {stats['unparsed']} Python files without rows (syntax errors, non-UTF-8)"
    if stats["skipped_names"]:
        summary += f", {stats['skipped_names']} non-UTF-8 file names skipped"
    print(f"{summary}, in {elapsed:.1f}s", file=sys.stderr)
    if stats["sources"] == 0:
        print("warning: no sources (an empty db is refused by push)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
