//! Safe recursive delete: the fix for lxc-destroy once following a symlink inside
//! a rootfs and deleting the user's home.
//!
//! The walk is fd-based: every directory is opened relative to its parent with
//! O_NOFOLLOW|O_DIRECTORY and entries are removed with unlinkat, which never
//! follows a symlink, so a symlink swapped in mid-walk is unlinked, not entered.
//! Only one directory fd is open at a time: climbing back up opens ".." and checks
//! it is the directory we came from, so depth is not limited by the fd limit.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    fstat, fstatfs, openat, openat2, statat, statx, unlinkat, AtFlags, Dir, FileType, Mode, OFlags,
    ResolveFlags, StatxAttributes, StatxFlags, CWD,
};
use rustix::io::Errno;
use tracing::debug;

use crate::error::{BdevError, Result};

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// Removes `path` and everything below it, staying inside `root`.
///
/// Refuses `/`, anything not strictly below `root` (compared after resolving
/// `root` and the parent of `path`; a final symlink is not followed, it is just
/// unlinked), and a tree with a mount point at or below it (before deleting
/// anything). btrfs subvolumes inside the tree are removed like directories.
/// A missing `path` is not an error.
pub fn remove_tree(path: &Path, root: &Path) -> Result<()> {
    let Some((parent, name)) = resolve(path, root)? else {
        return Ok(());
    };
    let target = parent.join(&name);
    let parent_fd = open_parent(&parent)?;
    let st = match statat(&parent_fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(errno("stat", &target)(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        debug!(path = %target.display(), "remove non-directory");
        return unlink(parent_fd.as_fd(), &name, &target, AtFlags::empty());
    }
    // `target` is a real directory under a resolved parent, hence canonical, so a
    // prefix test against mountinfo is exact.
    if let Some(m) = crate::mount::mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .find(|m| m.starts_with(&target))
    {
        let reason = if m == target {
            "a filesystem is mounted on it; unmount it first".to_owned()
        } else {
            format!("{m:?} is mounted inside it; unmount it first")
        };
        return Err(BdevError::DeleteRefused {
            path: target,
            reason,
        });
    }
    debug!(path = %target.display(), "remove tree");
    Walk::new(parent_fd, name, target)?.run()
}

/// Checks the request and returns the resolved parent and the final name, or
/// `None` when the parent does not exist (then neither does `path`).
fn resolve(path: &Path, root: &Path) -> Result<Option<(PathBuf, OsString)>> {
    let refuse = |reason: String| BdevError::DeleteRefused {
        path: path.to_path_buf(),
        reason,
    };
    let Some(name) = path.file_name() else {
        return Err(refuse(if path.parent().is_none() {
            "it is the filesystem root".into()
        } else {
            "it does not end in a file name".into()
        }));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let root_c = fs::canonicalize(root).map_err(BdevError::io("resolve deletion root", root))?;
    let parent_c = match fs::canonicalize(parent) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BdevError::io("resolve", parent)(e)),
    };
    let target = parent_c.join(name);
    if !target.starts_with(&root_c) || target == root_c {
        return Err(refuse(format!(
            "it resolves to {target:?}, which is not strictly below {root_c:?}"
        )));
    }
    Ok(Some((parent_c, name.to_owned())))
}

/// Opens the resolved parent refusing any symlink on the way, so a component
/// swapped for a symlink since `canonicalize` cannot redirect us.
fn open_parent(parent: &Path) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match openat2(CWD, parent, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS) {
        Ok(fd) => Ok(fd),
        // openat2 is Linux 5.6+; the final component is still not followed.
        Err(Errno::NOSYS) => openat(CWD, parent, flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(errno("open", parent)),
        Err(Errno::LOOP) => Err(BdevError::DeleteRefused {
            path: parent.to_path_buf(),
            reason: "a symlink appeared in its path during the delete".into(),
        }),
        Err(e) => Err(errno("open", parent)(e)),
    }
}

/// One directory being emptied.
struct Frame {
    /// Its name in its parent.
    name: OsString,
    dev: u64,
    ino: u64,
    /// Subdirectories still to empty and remove.
    pending: Vec<OsString>,
}

struct Walk {
    /// The parent of the top directory, for the final rmdir.
    top_parent: OwnedFd,
    /// Identity of the top directory's filesystem and mount.
    top_dev: u64,
    top_mnt: Option<u64>,
    top_btrfs: bool,
    /// Path of the directory `cur` refers to, for messages.
    path: PathBuf,
    cur: OwnedFd,
    stack: Vec<Frame>,
}

impl Walk {
    fn new(top_parent: OwnedFd, name: OsString, path: PathBuf) -> Result<Walk> {
        let cur = match open_dir(top_parent.as_fd(), &name) {
            Ok(fd) => fd,
            Err(e) => return Err(errno("open", &path)(e)),
        };
        let st = fstat(&cur).map_err(errno("stat", &path))?;
        let top_btrfs = fstatfs(&cur).map_err(errno("statfs", &path))?.f_type == BTRFS_SUPER_MAGIC;
        let top_mnt = mount_id(cur.as_fd());
        let pending = empty_files(cur.as_fd(), &path)?;
        Ok(Walk {
            top_parent,
            top_dev: st.st_dev,
            top_mnt,
            top_btrfs,
            path,
            cur,
            stack: vec![Frame {
                name,
                dev: st.st_dev,
                ino: st.st_ino,
                pending,
            }],
        })
    }

    fn run(mut self) -> Result<()> {
        while let Some(frame) = self.stack.last_mut() {
            if let Some(sub) = frame.pending.pop() {
                self.descend(sub)?;
                continue;
            }
            // `cur` is empty now: climb to its parent and remove it.
            let done = self.stack.pop().map(|f| f.name).unwrap_or_default();
            let Some(parent) = self.stack.last() else {
                return unlink(
                    self.top_parent.as_fd(),
                    &done,
                    &self.path,
                    AtFlags::REMOVEDIR,
                );
            };
            let up = openat(
                &self.cur,
                "..",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno("open parent of", &self.path))?;
            let st = fstat(&up).map_err(errno("stat parent of", &self.path))?;
            if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
                return Err(BdevError::DeleteRefused {
                    path: self.path.clone(),
                    reason: "it was moved while being deleted".into(),
                });
            }
            unlink(up.as_fd(), &done, &self.path, AtFlags::REMOVEDIR)?;
            self.path.pop();
            self.cur = up;
        }
        Ok(())
    }

    /// Enters subdirectory `sub` of `cur` and removes its non-directories.
    fn descend(&mut self, sub: OsString) -> Result<()> {
        let path = self.path.join(&sub);
        let fd = match open_dir(self.cur.as_fd(), &sub) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a symlink or file since the listing: unlink that instead.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return unlink(self.cur.as_fd(), &sub, &path, AtFlags::empty())
            }
            Err(e) => return Err(errno("open", &path)(e)),
        };
        let st = fstat(&fd).map_err(errno("stat", &path))?;
        if st.st_dev != self.top_dev {
            self.check_subvolume(fd.as_fd(), &path)?;
        }
        let pending = empty_files(fd.as_fd(), &path)?;
        self.stack.push(Frame {
            name: sub,
            dev: st.st_dev,
            ino: st.st_ino,
            pending,
        });
        self.cur = fd;
        self.path = path;
        Ok(())
    }

    /// A directory on another st_dev is only entered when it is a btrfs
    /// subvolume on the same mount as the top (so the same filesystem). Mount ids
    /// are compared rather than statfs f_fsid because btrfs mixes the subvolume id
    /// into f_fsid.
    fn check_subvolume(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
        let refuse = |reason: String| BdevError::DeleteRefused {
            path: path.to_path_buf(),
            reason,
        };
        let sx = statx(
            fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
        )
        .map_err(errno("stat", path))?;
        if sx.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && sx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        {
            return Err(refuse(
                "a filesystem is mounted on it; unmount it first".into(),
            ));
        }
        let btrfs = fstatfs(fd).map_err(errno("statfs", path))?.f_type == BTRFS_SUPER_MAGIC;
        let same_mount = self.top_mnt.is_some() && mount_id(fd) == self.top_mnt;
        if btrfs && self.top_btrfs && same_mount {
            return Ok(());
        }
        Err(refuse(
            "it is on another filesystem and not a btrfs subvolume of this one".into(),
        ))
    }
}

/// The mount id of `fd` (statx, Linux 5.8+).
fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let sx = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    (sx.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(sx.stx_mnt_id)
}

/// Opens directory `name` in `dir`, never through a symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Unlinks every non-directory in `dir`; returns the subdirectories' names.
fn empty_files(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<OsString>> {
    let mut subdirs = Vec::new();
    let mut entries = Dir::read_from(dir).map_err(errno("read directory", path))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(errno("read directory", path))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(errno("stat", &path.join(name))(e)),
            },
            _ => false,
        };
        if is_dir {
            subdirs.push(name.to_owned());
            continue;
        }
        match unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            // Became a directory since the listing.
            Err(Errno::ISDIR) => subdirs.push(name.to_owned()),
            Err(e) => return Err(unlink_error(dir, name, &path.join(name), e)),
        }
    }
    Ok(subdirs)
}

/// unlinkat that treats a missing entry as done and explains EPERM.
fn unlink(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, flags: AtFlags) -> Result<()> {
    match unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(unlink_error(dir, name, path, e)),
    }
}

/// Names the immutable or append-only file (or directory) behind an EPERM.
fn unlink_error(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, e: Errno) -> BdevError {
    if e == Errno::PERM {
        let attrs = |fd: BorrowedFd<'_>, name: &OsStr, flags: AtFlags| {
            statx(
                fd,
                name,
                flags | AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::empty(),
            )
            .map(|s| s.stx_attributes & s.stx_attributes_mask)
            .unwrap_or(StatxAttributes::empty())
        };
        let locked = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
        let file = attrs(dir, name, AtFlags::empty());
        let (who, a) = if file.intersects(locked) {
            (path.to_path_buf(), file)
        } else {
            let parent = path.parent().unwrap_or(path).to_path_buf();
            (parent, attrs(dir, OsStr::new(""), AtFlags::EMPTY_PATH))
        };
        if a.intersects(locked) {
            let what = if a.contains(StatxAttributes::IMMUTABLE) {
                "immutable (chattr +i)"
            } else {
                "append-only (chattr +a)"
            };
            return BdevError::DeleteRefused {
                path: who,
                reason: format!("it is {what}; clear the attribute with chattr first"),
            };
        }
    }
    errno("remove", path)(e)
}

fn errno<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> BdevError + 'a {
    move |e| BdevError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_root_and_dot_dot() {
        for p in ["/", "/tmp/.."] {
            let e = remove_tree(Path::new(p), Path::new("/")).unwrap_err();
            assert!(matches!(e, BdevError::DeleteRefused { .. }), "{p}: {e}");
        }
    }

    #[test]
    fn refuses_outside_and_the_root_itself() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir(d.path().join("victim")).unwrap();
        for p in [
            root.clone(),
            root.join("sub/../../victim"),
            d.path().join("victim"),
        ] {
            let e = remove_tree(&p, &root).unwrap_err();
            assert!(matches!(e, BdevError::DeleteRefused { .. }), "{p:?}: {e}");
        }
        assert!(d.path().join("victim").is_dir());
    }

    #[test]
    fn missing_path_is_ok_and_symlink_is_only_unlinked() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("t/a/b")).unwrap();
        fs::create_dir(d.path().join("victim")).unwrap();
        fs::write(d.path().join("victim/keep"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("victim"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(d.path().join("victim"), root.join("t/a/b/in")).unwrap();
        fs::write(root.join("t/a/f"), b"x").unwrap();
        remove_tree(&root.join("nope/deeper"), &root).unwrap();
        remove_tree(&root.join("link"), &root).unwrap();
        remove_tree(&root.join("t"), &root).unwrap();
        assert!(!root.join("link").exists() && !root.join("t").exists());
        assert!(d.path().join("victim/keep").is_file());
    }
}
