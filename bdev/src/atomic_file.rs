//! A file written aside and put in place whole.
//!
//! Where the filesystem supports `O_TMPFILE` the file has no name until it
//! is complete: a writer killed half-way (SIGKILL, a crash) leaves nothing
//! behind, which a named temp file (`.NAME.tmpPID`) would. On commit it is
//! linked in under a temp name and renamed over the destination, so readers
//! see the old content or the new, never a torn file. Elsewhere (FUSE,
//! filesystems without `O_TMPFILE`) the named temp file is used and removed
//! on any failure short of a kill.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{BdevError, Result};

/// A file being written that becomes `dest` on [`AtomicFile::commit`], and
/// nothing if dropped uncommitted.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    dest: PathBuf,
    dir: PathBuf,
    /// The temp name beside `dest`: linked on commit, or (without
    /// `O_TMPFILE`) the file's name all along.
    tmp: PathBuf,
    /// The file has a name (the named fallback): remove it on drop.
    named: bool,
}

impl AtomicFile {
    /// Starts a file that will replace `dest` (made if missing).
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        AtomicFile::create_with(dest, true)
    }

    fn create_with(dest: &Path, try_unnamed: bool) -> Result<AtomicFile> {
        let name = dest.file_name().ok_or_else(|| BdevError::Io {
            op: "create",
            path: dest.to_path_buf(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "the path names no file"),
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Per process and per file, so threads writing one file at once
        // each have their own.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.tmp{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let unnamed = if try_unnamed {
            rustix::fs::open(
                &dir,
                OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            )
        } else {
            Err(Errno::OPNOTSUPP)
        };
        let (file, named) = match unnamed {
            Ok(fd) => (File::from(fd), false),
            // No O_TMPFILE on this filesystem (EISDIR: a kernel without it).
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(BdevError::io("create", &tmp))?;
                (f, true)
            }
            Err(e) => return Err(BdevError::io("create a file in", &dir)(e.into())),
        };
        Ok(AtomicFile {
            file,
            dest: dest.to_path_buf(),
            dir,
            tmp,
            named,
        })
    }

    /// Puts the file in place of `dest`. With `durable`, the data and the
    /// directory entry are synced first and after, so it survives a crash.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        if durable {
            self.file
                .sync_all()
                .map_err(BdevError::io("sync", &self.dest))?;
        }
        if !self.named {
            let linked = match link_unnamed(&self.file, &self.tmp) {
                // A leftover of an earlier process with this pid (nobody else's).
                Err(Errno::EXIST) => fs::remove_file(&self.tmp)
                    .map_err(BdevError::io("remove", &self.tmp))
                    .and_then(|()| {
                        link_unnamed(&self.file, &self.tmp)
                            .map_err(|e| BdevError::io("link", &self.tmp)(e.into()))
                    }),
                other => other.map_err(|e| BdevError::io("link", &self.tmp)(e.into())),
            };
            linked?;
            self.named = true;
        }
        fs::rename(&self.tmp, &self.dest).map_err(BdevError::io("rename to", &self.dest))?;
        self.named = false;
        if durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(BdevError::io("sync", &self.dir))?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.named {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Gives the `O_TMPFILE` file `file` the name `at`: by its descriptor
/// (needs CAP_DAC_READ_SEARCH), else through its /proc/self/fd link.
fn link_unnamed(file: &File, at: &Path) -> std::result::Result<(), Errno> {
    match rustix::fs::linkat(file.as_fd(), "", CWD, at, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT | Errno::PERM) => {
            let by_proc = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(CWD, by_proc.as_str(), CWD, at, AtFlags::SYMLINK_FOLLOW)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_committed_file_replaces_the_old_whole_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.tar");
        fs::write(&p, b"old").unwrap();
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"new contents").unwrap();
        // Before the commit only the old file has a name.
        assert_eq!(names(d.path()), ["out.tar"]);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        f.commit(true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new contents");
        assert_eq!(names(d.path()), ["out.tar"]);
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.toml");
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn a_stale_temp_name_of_this_pid_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.toml");
        let mut f = AtomicFile::create(&p).unwrap();
        fs::write(&f.tmp, b"stale").unwrap();
        f.write_all(b"fresh").unwrap();
        f.commit(false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"fresh");
        assert_eq!(names(d.path()), ["state.toml"]);
    }

    #[test]
    fn without_o_tmpfile_a_named_temp_is_used_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.toml");
        let mut f = AtomicFile::create_with(&p, false).unwrap();
        f.write_all(b"half").unwrap();
        assert_eq!(names(d.path()).len(), 1, "the named temp file");
        drop(f);
        assert!(names(d.path()).is_empty());
        let mut f = AtomicFile::create_with(&p, false).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit(true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert_eq!(names(d.path()), ["state.toml"]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = AtomicFile::create(Path::new("/")).unwrap_err();
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("the path names no file"), "{e}");
    }
}
