//! What the CLI prints on stdout: a few human lines, or one JSON object
//! with `--json`. Logs and errors go to stderr elsewhere.
//!
//! Nothing here panics on a stdout that takes no writes (a full disk):
//! the first failure is kept, and [`finish`] turns it into the command's
//! error, so a report that was not written whole is a failed command.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use serde_json::json;

use super::doctor::{Check, Status, passed};
use crate::bundle::{Coverage, Inspection, PullReport, PushReport, VerifyReport};
use crate::registry::UploadReport;
use crate::store::{BlobCheck, RemoteCounters};

/// The first write to stdout that failed, for [`finish`].
static WRITE_FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// `println!` that keeps a failure for [`finish`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout; a failure is kept for [`finish`].
pub(super) fn write_line(line: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written {
        WRITE_FAILURE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }
}

/// Flushes stdout: `Err` with the first write that failed, if one did.
pub(super) fn finish() -> io::Result<()> {
    let flushed = io::stdout().flush();
    let failure = WRITE_FAILURE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match failure {
        Some(e) => Err(e),
        None => flushed,
    }
}

/// Writes one line to stderr, where a failure has nowhere to be told.
pub(super) fn to_stderr(line: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_fmt(line)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// A size in IEC units, as `--max-size` and the other size flags take
/// them: "512 B", "50.0 MiB", "10.0 GiB".
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A count and its noun: "1 tagged bundle", "2 tagged bundles".
pub(super) fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A time in RFC 3339 (UTC, whole seconds), from milliseconds since the
/// epoch.
fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What follows a report that met opaque chunks ("" when there were
/// none): they were restored as stored, their input hashes unchecked.
fn opaque_note(n: usize, one: &str, many: &str) -> String {
    match n {
        0 => String::new(),
        n => format!("; {} (input hash not checkable)", count(n, one, many)),
    }
}

fn print_json(value: &serde_json::Value) {
    out!("{value}");
}

/// How a push stored its sources, and how many had AST rows: "as raw
/// chunks"; "(4 with AST rows, 11222 without) as AST chunks" (a db with an
/// `_ast` table stores every source as an AST chunk, rows or not); "(0 with
/// AST rows, 3 without) as 2 AST and 1 raw chunks".
fn stored_as(r: &PushReport) -> String {
    let one = r.sources == 1;
    if r.ast_chunk_sources == 0 {
        let raw = if one {
            "as a raw chunk"
        } else {
            "as raw chunks"
        };
        return raw.to_string();
    }
    let shapes = match r.sources - r.ast_chunk_sources {
        0 if one => "as an AST chunk".to_string(),
        0 => "as AST chunks".to_string(),
        raw => format!("as {} AST and {raw} raw chunks", r.ast_chunk_sources),
    };
    format!(
        "({} with AST rows, {} without) {shapes}",
        r.ast_sources,
        r.sources - r.ast_sources
    )
}

/// The report of `push`.
pub fn push(store: &str, r: &PushReport, uploaded: Option<&(String, UploadReport)>, as_json: bool) {
    if as_json {
        let remote = uploaded.map(|(repo, u)| {
            json!({
                "repository": repo,
                "layout": u.layout,
                "uploaded": u.uploaded,
                "uploaded_bytes": u.uploaded_bytes,
                "present": u.present,
                "reused_packs": u.reused_packs,
                "reused_bytes": u.reused_bytes,
                "manifest": u.manifest_digest,
                "manifest_unchanged": u.manifest_unchanged,
            })
        });
        return print_json(&json!({
            "store": store,
            "tag": r.tag,
            "lockfile": r.lockfile_hash.to_prefixed(),
            "root": r.root.to_prefixed(),
            "sources": r.sources,
            "ast_sources": r.ast_sources,
            "ast_chunk_sources": r.ast_chunk_sources,
            "distinct_chunks": r.distinct_chunks,
            "new_chunks": r.new_chunks,
            "present_chunks": r.present_chunks,
            "chunk_bytes": r.chunk_bytes,
            "new_bytes": r.new_bytes,
            "kept": r.kept,
            "seconds": r.elapsed.as_secs_f64(),
            "remote": remote,
        }));
    }
    let tags = if r.tag == "latest" {
        "latest".to_string()
    } else {
        format!("latest, {}", r.tag)
    };
    if r.kept {
        out!(
            "unchanged: these {} are a bundle {} already holds; kept it as {tags} \
             (--force writes a new lockfile)",
            count(r.sources, "source", "sources"),
            store
        );
    } else {
        out!(
            "pushed {} {} to {} as {tags} in {:.2}s",
            count(r.sources, "source", "sources"),
            stored_as(r),
            store,
            r.elapsed.as_secs_f64()
        );
    }
    out!(
        "chunks: {} new, {} already present ({} total, {} new)",
        r.new_chunks,
        r.present_chunks,
        size(r.chunk_bytes),
        size(r.new_bytes)
    );
    out!("lockfile {}", r.lockfile_hash.to_prefixed());
    out!("root     {}", r.root.to_prefixed());
    if let Some((repo, u)) = uploaded {
        let manifest = if u.manifest_unchanged {
            "already tagged"
        } else {
            "tagged"
        };
        let reused = match u.reused_packs {
            0 => String::new(),
            n => format!(
                " ({} reused, {})",
                count(n, "pack", "packs"),
                size(u.reused_bytes)
            ),
        };
        out!(
            "registry {repo} ({}): {} uploaded ({}), {} already present{reused}; manifest {} {manifest} {}",
            u.layout,
            u.uploaded,
            size(u.uploaded_bytes),
            u.present,
            u.manifest_digest,
            r.tag
        );
    }
}

fn pull_json(r: &PullReport) -> serde_json::Value {
    json!({
        "sources": r.sources,
        "ast_sources": r.ast_sources,
        "opaque_sources": r.opaque_sources,
        "chunk_bytes": r.chunk_bytes,
        "root": r.root.to_prefixed(),
        "verified": r.verified,
        "seconds": r.elapsed.as_secs_f64(),
    })
}

/// The report of `pull`.
pub fn pull(out_db: &Path, r: &PullReport, as_json: bool) {
    if as_json {
        let mut value = pull_json(r);
        value["out_db"] = json!(out_db.display().to_string());
        return print_json(&value);
    }
    let verified = if r.verified {
        "verified"
    } else {
        "chunk hashes verified; root not checked"
    };
    out!(
        "restored {} ({} with AST, {}) into {} in {:.2}s ({verified}){}",
        count(r.sources, "source", "sources"),
        r.ast_sources,
        size(r.chunk_bytes),
        out_db.display(),
        r.elapsed.as_secs_f64(),
        opaque_note(r.opaque_sources, "opaque source", "opaque sources")
    );
}

/// What `verify` found, for [`verify`].
pub struct Verified<'a> {
    pub store: String,
    pub reference: &'a str,
    pub report: &'a VerifyReport,
    /// The blobs a registry was asked for; `None` for a local store.
    pub blobs: Option<&'a BlobCheck>,
    /// A registry's request counters.
    pub remote: Option<RemoteCounters>,
    /// The whole command's time, resolving and blob checks included.
    pub elapsed: std::time::Duration,
}

/// The report of `verify`.
pub fn verify(v: &Verified, as_json: bool) {
    let r = v.report;
    let mode = match r.coverage {
        Coverage::Full => "full",
        Coverage::Sample(_) => "quick",
    };
    if as_json {
        let mut value = pull_json(&r.checked);
        value["store"] = json!(v.store);
        value["ref"] = json!(v.reference);
        value["mode"] = json!(mode);
        value["sources"] = json!(r.sources);
        value["sources_checked"] = json!(r.checked.sources);
        value["chunks"] = json!(r.chunks);
        value["chunks_verified"] = json!(r.chunks_verified);
        value["opaque_chunks"] = json!(r.opaque_chunks);
        value["blobs_checked"] = json!(v.blobs.map_or(0, |b| b.blobs));
        value["remote"] = json!(v.remote);
        value["seconds"] = json!(v.elapsed.as_secs_f64());
        return print_json(&value);
    }
    let blobs = v.blobs.map_or(String::new(), |b| {
        let one = b.what.strip_suffix('s').unwrap_or(b.what);
        format!("{} present, ", count(b.blobs, one, b.what))
    });
    let chunks = match r.coverage {
        Coverage::Full => format!("all {} chunks verified (full)", r.chunks),
        Coverage::Sample(_) => format!(
            "{} of {} chunks sampled and verified (quick; --full reads every chunk)",
            r.chunks_verified, r.chunks
        ),
    };
    out!(
        "verified {} of {}: {blobs}{chunks}; root {} of {} in {:.2}s{}",
        v.reference,
        v.store,
        r.checked.root.to_prefixed(),
        count(r.sources, "source", "sources"),
        v.elapsed.as_secs_f64(),
        opaque_note(r.opaque_chunks, "opaque chunk", "opaque chunks")
    );
}

/// The report of `inspect`.
pub fn inspect(i: &Inspection, as_json: bool) {
    if as_json {
        let mut value = serde_json::to_value(i).expect("inspection serializes");
        value["generated_at"] = json!(rfc3339(i.generated_at_ms));
        return print_json(&value);
    }
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |n| n.to_string());
    out!("producer          {} {}", i.producer, i.producer_version);
    out!("schema version    {}", i.schema_version);
    out!("generated at      {}", rfc3339(i.generated_at_ms));
    out!("processors        {}", i.processors.join(", "));
    out!("sources           {}", i.sources);
    out!("topology edges    {}", i.topology_edges);
    let root_state = if i.root_ok { "ok" } else { "MISMATCH" };
    out!("root              {} ({root_state})", i.root);
    if let Some(lockfile) = &i.lockfile {
        out!("lockfile          {lockfile}");
    }
    if let Some(manifest) = &i.manifest {
        out!("manifest          {manifest}");
    }
    if !i.refs.is_empty() {
        out!("refs              {}", i.refs.join(", "));
    }
    if let Some(db) = &i.mache_db {
        out!(
            "mache.db          {} ({} bytes), {}, by {}",
            size(db.size),
            db.size,
            db.blake3,
            db.synthesizer
        );
    }
    out!("distinct chunks   {}", i.distinct_chunks);
    match (i.chunks_present, i.chunks_hashed) {
        (None, _) if i.manifest.is_some() => {
            out!("chunks            on the registry, not read here (`verify` reads them)")
        }
        (None, _) => out!("chunks            no store holds them"),
        (Some(_), hashed) => {
            let how = match hashed {
                true => "every chunk hashed",
                false => "presence and length checked; `verify` hashes every chunk",
            };
            out!(
                "on disk           {} present, {} missing, {} corrupt ({how})",
                opt(i.chunks_present),
                opt(i.chunks_missing),
                opt(i.chunks_corrupt)
            );
        }
    }
    let opaque = match i.opaque_chunks {
        Some(n) if n > 0 => format!(" ({n} opaque: input hash not checkable)"),
        _ => String::new(),
    };
    out!(
        "shapes            {} raw{opaque}, {} AST",
        opt(i.raw_chunks),
        opt(i.ast_chunks)
    );
}

/// One tag, as `refs` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefLine {
    pub name: String,
    pub lockfile: String,
    pub sources: usize,
    pub generated_at_ms: u64,
}

/// The report of `refs`.
pub fn refs(store: &str, refs: &[RefLine], as_json: bool) {
    if as_json {
        return print_json(&json!({ "store": store, "refs": refs }));
    }
    if refs.is_empty() {
        out!("no tags in {store}");
    }
    for r in refs {
        out!(
            "{:<24} {}  {:>15}  {}",
            r.name,
            r.lockfile,
            count(r.sources, "source", "sources"),
            rfc3339(r.generated_at_ms)
        );
    }
}

/// The report of `tag` (`removed` false) and `untag` (true).
pub fn tagged(name: &str, lockfile: &crate::hash::Hash, removed: bool, as_json: bool) {
    let lockfile = lockfile.to_prefixed();
    match (removed, as_json) {
        (false, true) => print_json(&json!({ "tag": name, "lockfile": lockfile })),
        (true, true) => print_json(&json!({ "untagged": name, "lockfile": lockfile })),
        (false, false) => out!("{name} -> {lockfile}"),
        (true, false) => out!("removed tag {name} (it named {lockfile})"),
    }
}

/// The report of `gc`.
pub fn gc(store: &str, r: &crate::store::gc::GcReport, as_json: bool) {
    if as_json {
        let mut value = serde_json::to_value(r).expect("a gc report serializes");
        value["store"] = json!(store);
        return print_json(&value);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    out!(
        "{store}: {verb} {}, {}, {}: {} freed",
        count(r.objects_removed, "object", "objects"),
        count(
            r.lockfiles_removed,
            "lockfile or sizes file",
            "lockfiles and sizes files"
        ),
        count(r.other_files_removed, "other file", "other files"),
        size(r.bytes_freed)
    );
    out!(
        "kept {} of {}; {} younger than the grace period",
        count(r.live_objects, "live object", "live objects"),
        count(r.roots, "tagged bundle", "tagged bundles"),
        count(r.kept_young, "unreachable file is", "unreachable files are")
    );
    out!(
        "{verb} {} that interrupted or killed pushes left in tmp/",
        count(r.temp_files_removed, "temporary file", "temporary files")
    );
}

/// The report of `gc --cache`.
pub fn gc_cache(dir: &Path, r: &crate::store::gc::CacheGcReport, as_json: bool) {
    if as_json {
        let mut value = serde_json::to_value(r).expect("a gc report serializes");
        value["cache_dir"] = json!(dir.display().to_string());
        return print_json(&value);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    out!(
        "{}: {verb} {}, {} and {}: {} freed; {} in the chunk cache (cap {})",
        dir.display(),
        count(r.chunks_removed, "cached chunk", "cached chunks"),
        count(
            r.temp_files_removed,
            "stale temporary file",
            "stale temporary files"
        ),
        count(r.files_removed, "built db or log", "built dbs and logs"),
        size(r.bytes_freed),
        size(r.chunk_bytes),
        size(r.capacity)
    );
    if r.in_use > 0 {
        out!(
            "kept {} that a mount has open",
            count(r.in_use, "db", "dbs")
        );
    }
}

/// The report of `doctor`: one line per check (its status, its name, what
/// was found and, for a problem, a hint), then the tally.
pub fn doctor(checks: &[Check], as_json: bool) {
    if as_json {
        return print_json(&json!({ "checks": checks, "ok": passed(checks) }));
    }
    for check in checks {
        let hint = check
            .hint
            .as_ref()
            .map_or(String::new(), |hint| format!("; hint: {hint}"));
        out!(
            "{:<5} {:<16} {}{hint}",
            check.status.word(),
            check.name,
            check.detail
        );
    }
    let with = |status| checks.iter().filter(|c| c.status == status).count();
    out!(
        "{} ok, {}, {} failed",
        count(with(Status::Ok), "check", "checks"),
        count(with(Status::Warn), "warning", "warnings"),
        with(Status::Fail)
    );
}
