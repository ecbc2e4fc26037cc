//! File operations relative to directory descriptors that never follow a
//! symlink at the name they act on: what `layer` builds on.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, flistxattr, flistxattr_query, fremovexattr, fsetxattr,
    lsetxattr, openat, statat, unlinkat, utimensat, AtFlags, Dir, FileType, Mode, OFlags,
    XattrFlags,
};
use rustix::io::Errno;

use super::layer::Meta;
use super::{ImageError, Result};

/// An entry error carrying the system's reason.
pub(super) fn fail(raw: &[u8], what: &str, e: Errno) -> ImageError {
    ImageError::entry(raw, format!("{what}: {}", io::Error::from(e)))
}

/// One name in a resolved parent directory; never followed.
pub(super) struct Node<'a> {
    pub(super) parent: BorrowedFd<'a>,
    pub(super) name: &'a [u8],
    pub(super) raw: &'a [u8],
}

impl Node<'_> {
    /// Removes whatever is at the name, except a directory when `keep_dir`.
    /// True when a directory was kept.
    pub(super) fn clear(&self, keep_dir: bool) -> Result<bool> {
        match statat(self.parent, self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(fail(self.raw, "cannot look at what is there", e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                remove_tree(self.parent, self.name)
                    .map_err(|e| fail(self.raw, "cannot remove the directory there", e))?;
                Ok(false)
            }
            Ok(_) => {
                unlinkat(self.parent, self.name, AtFlags::empty())
                    .map_err(|e| fail(self.raw, "cannot remove what is there", e))?;
                Ok(false)
            }
        }
    }

    /// Owner, mode, xattrs and mtime of a node that cannot be opened for
    /// them (a symlink, a device, a FIFO). `chmod` when `mode` (a symlink
    /// has none of its own).
    pub(super) fn set_meta(&self, meta: &Meta, mode: bool) -> Result<()> {
        let raw = self.raw;
        chownat(
            self.parent,
            self.name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(raw, "cannot set its owner", e))?;
        if mode {
            // The node was created just now by name, so following is safe.
            chmodat(
                self.parent,
                self.name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| fail(raw, "cannot set its mode", e))?;
        }
        if !meta.xattrs.is_empty() {
            // No `lsetxattr` takes a directory fd; the parent's magic link in
            // /proc names exactly the directory already resolved.
            let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.parent.as_raw_fd()));
            path.push(OsStr::from_bytes(self.name));
            for (name, value) in &meta.xattrs {
                lsetxattr(&path, name.as_slice(), value, XattrFlags::empty())
                    .map_err(|e| xattr_error(raw, name, e))?;
            }
        }
        utimensat(
            self.parent,
            self.name,
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(raw, "cannot set its mtime", e))
    }
}

fn xattr_error(raw: &[u8], name: &[u8], e: Errno) -> ImageError {
    fail(
        raw,
        &format!("cannot set its xattr {:?}", String::from_utf8_lossy(name)),
        e,
    )
}

/// Owner, then mode (a chown clears setuid bits), then exactly the entry's
/// xattrs (a directory kept from a lower layer loses the ones it no longer
/// has) on an open file or directory.
pub(super) fn set_fd_meta(fd: impl AsFd, meta: &Meta, raw: &[u8]) -> Result<()> {
    let fd = fd.as_fd();
    fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(|e| fail(raw, "cannot set its owner", e))?;
    fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| fail(raw, "cannot set its mode", e))?;
    for old in list_xattrs(fd).map_err(|e| fail(raw, "cannot list its xattrs", e))? {
        if !meta.xattrs.iter().any(|(name, _)| *name == old) {
            fremovexattr(fd, old.as_slice()).map_err(|e| xattr_error(raw, &old, e))?;
        }
    }
    for (name, value) in &meta.xattrs {
        fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
            .map_err(|e| xattr_error(raw, name, e))?;
    }
    Ok(())
}

fn list_xattrs(fd: BorrowedFd<'_>) -> std::result::Result<Vec<Vec<u8>>, Errno> {
    loop {
        let size = match flistxattr_query(fd) {
            Ok(0) | Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        let mut names = Vec::with_capacity(size);
        match flistxattr(fd, rustix::buffer::spare_capacity(&mut names)) {
            Ok(_) => {
                return Ok(names
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect())
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn list_dir(fd: &OwnedFd) -> std::result::Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for item in Dir::read_from(fd)? {
        let name = item?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes the directory `name` in `parent` and everything in it, by file
/// descriptors, never following a symlink.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<(), Errno> {
    let dir = openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in list_dir(&dir)? {
        match unlinkat(&dir, child.as_slice(), AtFlags::empty()) {
            Err(Errno::ISDIR) => remove_tree(dir.as_fd(), &child)?,
            other => other?,
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)
}
