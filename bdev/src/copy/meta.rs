//! Ownership, mode, xattrs and times of one copied object.

use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fgetxattr, fgetxattr_query, flistxattr, flistxattr_query,
    fsetxattr, futimens, lgetxattr, lgetxattr_query, llistxattr, llistxattr_query, lremovexattr,
    lsetxattr, utimensat, AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags, CWD,
};
use rustix::io::Errno;

use super::CopyOpts;
use crate::error::{BdevError, Result};

/// How many times to retry an xattr read whose size changed under us.
const XATTR_RETRIES: usize = 8;

/// Where metadata is read or written: an open fd (regular files) or a path that is
/// never followed (directories, symlinks, nodes; opening a fifo or device would
/// block or talk to a driver).
#[derive(Clone, Copy)]
pub(super) enum Obj<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

/// Applies `md` (from the source `from`) to the new object `to`: owner, then mode
/// (chown clears setuid/setgid), then xattrs (chown and writes drop
/// security.capability), then times last because the other steps touch them.
/// Returns the xattrs dropped as `opts` allowed.
pub(super) fn apply(
    from: Obj<'_>,
    to: Obj<'_>,
    md: &Metadata,
    src: &Path,
    dst: &Path,
    opts: &CopyOpts,
) -> Result<Vec<OsString>> {
    let uid = Some(Uid::from_raw(md.uid()));
    let gid = Some(Gid::from_raw(md.gid()));
    match to {
        Obj::Fd(fd) => fchown(fd, uid, gid),
        Obj::Path(p) => chownat(CWD, p, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
    }
    .map_err(errno("set owner of", dst))?;
    // Symlinks have no mode of their own on Linux.
    if !md.file_type().is_symlink() {
        let mode = Mode::from_bits_retain(md.mode() & 0o7777);
        match to {
            Obj::Fd(fd) => fchmod(fd, mode),
            Obj::Path(p) => chmodat(CWD, p, mode, AtFlags::empty()),
        }
        .map_err(errno("set mode of", dst))?;
    }
    let dropped = copy_xattrs(from, to, src, dst, opts)?;
    set_times(to, md, dst)?;
    Ok(dropped)
}

/// Drops the ACLs the target root carries (perhaps inherited from its parent),
/// so entries created inside it do not inherit a default ACL the source lacks;
/// the source root's own ACLs are copied with its other xattrs at the end.
pub(super) fn clear_root_acls(dst: &Path) -> Result<()> {
    for name in ["system.posix_acl_default", "system.posix_acl_access"] {
        match lremovexattr(dst, name) {
            Ok(()) | Err(Errno::NODATA | Errno::NOTSUP) => {}
            Err(e) => return Err(errno("remove the ACL of", dst)(e)),
        }
    }
    Ok(())
}

fn set_times(to: Obj<'_>, md: &Metadata, dst: &Path) -> Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    };
    match to {
        Obj::Fd(fd) => futimens(fd, &times),
        Obj::Path(p) => utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW),
    }
    .map_err(errno("set times of", dst))
}

/// Copies every xattr (all namespaces; ACLs are xattrs too) from `from` to `to`.
/// Nothing is dropped unless `opts` says so: a source that cannot list xattrs,
/// an xattr that cannot be read, or one the target refuses fails the copy.
/// Returns the names dropped.
fn copy_xattrs(
    from: Obj<'_>,
    to: Obj<'_>,
    src: &Path,
    dst: &Path,
    opts: &CopyOpts,
) -> Result<Vec<OsString>> {
    let names = match list(from) {
        Ok(n) => n,
        Err(Errno::NOTSUP) if opts.source_lacks_xattrs => return Ok(Vec::new()),
        Err(e) => return Err(errno("list xattrs of", src)(e)),
    };
    let mut dropped = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let value = match get(from, name) {
            Ok(v) => v,
            // Removed since the listing: nothing to copy.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(named("read xattr of", src, name, e)),
        };
        let set = match to {
            Obj::Fd(fd) => fsetxattr(fd, name, &value, XattrFlags::empty()),
            Obj::Path(p) => lsetxattr(p, name, &value, XattrFlags::empty()),
        };
        match set {
            Ok(()) => {}
            Err(Errno::NOTSUP) if opts.drop_xattrs => dropped.push(name.to_os_string()),
            Err(e) => return Err(named("set xattr on", dst, name, e)),
        }
    }
    Ok(dropped)
}

/// The first xattr found on anything in the tree at `root` (root included,
/// symlinks not followed): the path and the attribute's name. A file whose
/// xattrs cannot be listed is an error, not "none".
pub fn first_xattr(root: &Path) -> Result<Option<(PathBuf, OsString)>> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let names = list(Obj::Path(&p)).map_err(errno("list xattrs of", &p))?;
        if let Some(name) = names.split(|b| *b == 0).find(|n| !n.is_empty()) {
            return Ok(Some((p, OsStr::from_bytes(name).to_os_string())));
        }
        let md = fs::symlink_metadata(&p).map_err(BdevError::io("stat", &p))?;
        if md.is_dir() {
            for e in fs::read_dir(&p).map_err(BdevError::io("read directory", &p))? {
                stack.push(e.map_err(BdevError::io("read directory", &p))?.path());
            }
        }
    }
    Ok(None)
}

/// The NUL-separated xattr names of `obj`. EOPNOTSUPP (a filesystem that cannot
/// list them) is the caller's to judge: it does not prove there are none.
fn list(obj: Obj<'_>) -> rustix::io::Result<Vec<u8>> {
    for _ in 0..XATTR_RETRIES {
        let size = match obj {
            Obj::Fd(fd) => flistxattr_query(fd),
            Obj::Path(p) => llistxattr_query(p),
        }?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let got = match obj {
            Obj::Fd(fd) => flistxattr(fd, &mut buf[..]),
            Obj::Path(p) => llistxattr(p, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Grew between the two calls: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

fn get(obj: Obj<'_>, name: &OsStr) -> rustix::io::Result<Vec<u8>> {
    for _ in 0..XATTR_RETRIES {
        let size = match obj {
            Obj::Fd(fd) => fgetxattr_query(fd, name)?,
            Obj::Path(p) => lgetxattr_query(p, name)?,
        };
        let mut buf = vec![0u8; size];
        if size == 0 {
            return Ok(buf);
        }
        let got = match obj {
            Obj::Fd(fd) => fgetxattr(fd, name, &mut buf[..]),
            Obj::Path(p) => lgetxattr(p, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Maps an `Errno` to `BdevError::Io` for step `op` on `path`.
pub(super) fn errno<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> BdevError + 'a {
    move |e| BdevError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Like [`errno`], naming the xattr in the source error.
fn named(op: &'static str, path: &Path, name: &OsStr, e: Errno) -> BdevError {
    let source = io::Error::new(
        io::Error::from(e).kind(),
        format!("xattr {}: {e}", name.to_string_lossy()),
    );
    BdevError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_xattr_finds_one_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"x").unwrap();
        assert_eq!(first_xattr(d.path()).unwrap(), None);
        let f = d.path().join("a/b/f");
        if lsetxattr(&f, "user.t", b"1", XattrFlags::empty()).is_err() {
            return; // no user xattrs on this filesystem
        }
        assert_eq!(
            first_xattr(d.path()).unwrap(),
            Some((f, OsString::from("user.t")))
        );
    }
}
