//! The record of the `mache.db` a bundle synthesizes ([`DbRecord`]): its
//! size and BLAKE3, made by push so that a mount can show the db's true size
//! before building it, and check its own build against the hash.
//!
//! The recorder builds the db while the chunks are stored, exactly as a
//! pull of the stored bundle would: each source restored from the bytes
//! stored as its chunk (handed over by the push, not read back) by the same
//! restore, written by the same [`DbWriter`] in
//! lockfile order, in one transaction. The synthesizer is deterministic
//! (see [`machedb::synthesizer`]), so the mount's build of the same bundle
//! makes the same bytes. Only the record is kept: the db is a temporary
//! file of the push, never synced, removed when the record is taken (or the
//! push fails).

use rayon::prelude::*;
use tempfile::TempPath;

use super::pull::{Restored, restore_chunk};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::lockfile::{ProcessorVersion, SourceEntry};
use crate::machedb::{self, DbWriter};
use crate::store::LocalStore;
use crate::store::sizes::DbRecord;

/// A source's entry and its chunk's bytes.
pub type EntryChunk = (SourceEntry, Vec<u8>);

/// Builds the db of a bundle being pushed, a window of sources at a time.
pub struct DbRecorder<'s> {
    store: &'s LocalStore,
    writer: DbWriter,
    temp: TempPath,
    processors: Vec<ProcessorVersion>,
}

impl<'s> DbRecorder<'s> {
    /// Starts an empty db in `store`'s temporary files, for a lockfile that
    /// declares `processors`.
    pub fn create(store: &'s LocalStore, processors: &[ProcessorVersion]) -> Result<Self> {
        let temp = store.scratch_file()?.into_temp_path();
        let writer = DbWriter::create(&temp, &temp)?;
        Ok(DbRecorder {
            store,
            writer,
            temp,
            processors: processors.to_vec(),
        })
    }

    /// Restores the next sources (in lockfile order) from their chunks,
    /// decoded in parallel and written in order. The chunks are the bytes
    /// stored under the entries' hashes.
    pub fn add(&mut self, window: &[EntryChunk]) -> Result<()> {
        let restored: Vec<Restored> = window
            .par_iter()
            .map(|(entry, chunk)| restore_chunk(chunk, entry, &self.processors, false))
            .collect::<Result<_>>()?;
        for restored in &restored {
            let decoded = &restored.decoded;
            self.writer
                .insert(&decoded.source, decoded.ast.as_deref())?;
        }
        Ok(())
    }

    /// Commits the db and returns its record; the file is removed.
    pub fn finish(self) -> Result<DbRecord> {
        self.writer.commit()?;
        let reading = |e| Error::io(format!("reading {}", self.temp.display()), e);
        let size = std::fs::metadata(&self.temp).map_err(reading)?.len();
        let hash = Hash::of_file(&self.temp).map_err(reading)?;
        drop(self.temp);
        self.store.scratch_removed();
        Ok(DbRecord {
            size,
            hash,
            synthesizer: machedb::synthesizer(),
        })
    }
}
