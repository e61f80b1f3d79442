//! Files written without a name and linked into place whole.
//!
//! `open(dir, O_TMPFILE)` makes a file with no name in `dir`; once written,
//! `linkat` gives it its name, failing if the name is taken. A reader never
//! sees it partial, and a writer killed before the link leaves nothing:
//! the kernel frees a file nobody names, so there is no debris to sweep.
//! It also keeps writers apart: each file is made and linked in its own
//! directory, where a temporary name in one shared `tmp/` would take that
//! directory's lock for every create and every rename out of it (and the
//! file system's rename lock for each rename across directories), which
//! serialises every writer of the cache when inode allocation is slow.
//!
//! Not every file system has `O_TMPFILE`, and the link goes through
//! `/proc/self/fd`: [`supported_in`] probes both once, and callers keep a
//! named temporary file as their fallback.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A written file with no name yet.
#[derive(Debug)]
pub struct UnnamedFile {
    file: File,
}

impl UnnamedFile {
    /// A new unnamed file in `dir` (which must exist), mode 0644 before the umask.
    pub fn create_in(dir: &Path) -> io::Result<UnnamedFile> {
        let file = OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)?;
        Ok(UnnamedFile { file })
    }

    /// Names the file `path`, in the directory it was made in, unless that
    /// name is taken: `Ok(false)` then, and the file is dropped.
    pub fn link_noclobber(self, path: &Path) -> io::Result<bool> {
        let from = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .expect("no NUL in a /proc path");
        let to = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
        // SAFETY: both are NUL-terminated strings that outlive the call.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        match linked {
            0 => Ok(true),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                e => Err(e),
            },
        }
    }
}

impl Write for UnnamedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Whether unnamed files can be made in `dir` and linked there: writes and
/// links one probe file, then removes it.
pub fn supported_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".unnamed-probe-{}", std::process::id()));
    let linked = UnnamedFile::create_in(dir).and_then(|file| file.link_noclobber(&probe));
    let _ = fs::remove_file(&probe);
    matches!(linked, Ok(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_appears_only_when_linked_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert!(supported_in(dir.path()), "this test needs O_TMPFILE");
        assert!(names(dir.path()).is_empty(), "the probe left nothing");
        let mut file = UnnamedFile::create_in(dir.path()).unwrap();
        file.write_all(b"whole").unwrap();
        assert!(names(dir.path()).is_empty(), "unnamed until linked");
        assert!(file.link_noclobber(&dir.path().join("a")).unwrap());
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"whole");
    }

    #[test]
    fn a_taken_name_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"first").unwrap();
        let mut file = UnnamedFile::create_in(dir.path()).unwrap();
        file.write_all(b"second").unwrap();
        assert!(!file.link_noclobber(&dir.path().join("a")).unwrap());
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["a"]);
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = UnnamedFile::create_in(dir.path()).unwrap();
        file.write_all(b"never named").unwrap();
        drop(file);
        assert!(names(dir.path()).is_empty());
    }
}
