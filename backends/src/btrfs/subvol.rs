//! Subvolume operations through libbtrfsutil, and finding nested subvolumes.
//!
//! The `btrfsutil` crate's subvolume iterator resolves the (relative) paths it gets
//! against the current directory, so it cannot list nested subvolumes reliably; it
//! is only asked whether there are any (an O(#subvolumes) B-tree search), and the
//! rare tree that has some is walked here instead.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_bdev::{BdevError, Result, Revert};
use btrfsutil::error::LibError;
use btrfsutil::subvolume::{DeleteFlags, SnapshotFlags, Subvolume, SubvolumeIterator};
use rustix::io::Errno;
use tracing::{debug, warn};

/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOL_ROOT_INO: u64 = 256;

/// Turns a libbtrfsutil failure into an `Io` error carrying the errno it left.
fn lib_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(LibError) -> BdevError + 'a {
    // Read errno first: nothing has run since the failing call returned.
    move |e| lib_error(op, path, e, io::Error::last_os_error())
}

fn lib_error(op: &'static str, path: &Path, e: LibError, os: io::Error) -> BdevError {
    let source = match e {
        LibError::NotBtrfs | LibError::NotSubvolume => {
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
        }
        _ => io::Error::new(os.kind(), format!("{e}: {os}")),
    };
    BdevError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn get(path: &Path) -> Result<Subvolume> {
    Subvolume::get(path).map_err(lib_err("open btrfs subvolume", path))
}

/// Whether `path` is the root of a subvolume.
pub(super) fn is_subvolume(path: &Path) -> bool {
    Subvolume::is_subvolume(path).is_ok()
}

/// The subvolume's id (its qgroup is `0/ID`).
pub(super) fn id(path: &Path) -> Result<u64> {
    Ok(get(path)?.id())
}

/// Creates the subvolume `path` and registers its deletion in `rv`.
pub(super) fn create(path: &Path, rv: &mut Revert) -> Result<()> {
    exists_check(path)?;
    Subvolume::create(path, None).map_err(lib_err("create btrfs subvolume", path))?;
    register_delete(path, rv);
    Ok(())
}

/// Snapshots the subvolume `src` (and the subvolumes nested in it) as `dst`,
/// read-only if asked, and registers the deletion of `dst` in `rv`.
pub(super) fn snapshot(src: &Path, dst: &Path, read_only: bool, rv: &mut Revert) -> Result<()> {
    exists_check(dst)?;
    let sv = get(src)?;
    let snap_err = |e: LibError| {
        let os = io::Error::last_os_error();
        // The recursive flavour may fail after making the top snapshot.
        if is_subvolume(dst) {
            if let Err(undo) = delete(dst) {
                warn!(path = %dst.display(), error = %undo, "could not remove a partial snapshot");
            }
        }
        if os.raw_os_error() == Some(Errno::XDEV.raw_os_error()) {
            return BdevError::Io {
                op: "btrfs snapshot into",
                path: dst.to_path_buf(),
                source: io::Error::new(
                    os.kind(),
                    format!(
                        "{} is on another btrfs filesystem; btrfs snapshots stay on one filesystem",
                        src.display()
                    ),
                ),
            };
        }
        lib_error("btrfs snapshot into", dst, e, os)
    };
    if !has_nested(src) {
        // The common case: one atomic ioctl, read-only from the start.
        let flags = if read_only {
            SnapshotFlags::READ_ONLY
        } else {
            SnapshotFlags::empty()
        };
        sv.snapshot(dst, flags, None).map_err(snap_err)?;
        register_delete(dst, rv);
        return Ok(());
    }
    // libbtrfsutil fills in nested snapshots after creating the top one, so it
    // cannot make the top read-only first: snapshot writable, then seal it.
    debug!(src = %src.display(), dst = %dst.display(), "recursive snapshot");
    sv.snapshot(dst, SnapshotFlags::RECURSIVE, None)
        .map_err(snap_err)?;
    register_delete(dst, rv);
    if read_only {
        for p in nested(dst)?
            .iter()
            .chain(std::iter::once(&dst.to_path_buf()))
        {
            get(p)?.set_ro(true).map_err(lib_err("make read-only", p))?;
        }
    }
    Ok(())
}

/// Deletes the subvolume `path` with every subvolume nested in it, depth-first
/// (a container may have made its own, e.g. systemd's /var/lib/machines).
pub(super) fn delete(path: &Path) -> Result<()> {
    let sv = get(path)?;
    if !has_nested(path) {
        return sv
            .delete(None)
            .map_err(lib_err("delete btrfs subvolume", path));
    }
    // Removing a child from a read-only subvolume fails with EROFS, so make every
    // level writable first; the whole tree goes away anyway.
    for p in nested(path)?
        .iter()
        .chain(std::iter::once(&path.to_path_buf()))
    {
        let s = get(p)?;
        if s.is_ro()
            .map_err(lib_err("read the read-only flag of", p))?
        {
            s.set_ro(false).map_err(lib_err("make writable", p))?;
        }
    }
    debug!(path = %path.display(), "recursive subvolume delete");
    sv.delete(DeleteFlags::RECURSIVE)
        .map_err(lib_err("delete btrfs subvolume", path))
}

fn register_delete(path: &Path, rv: &mut Revert) {
    let p = path.to_path_buf();
    rv.add(format!("delete subvolume {}", path.display()), move || {
        delete(&p)
    });
}

fn exists_check(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(BdevError::Exists {
            what: "btrfs subvolume",
            name: path.display().to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BdevError::io("stat", path)(e)),
    }
}

/// Whether any subvolume is nested below `path`. An iterator that cannot even
/// start says "maybe", which only costs a walk.
fn has_nested(path: &Path) -> bool {
    match SubvolumeIterator::new(path, None) {
        // Any item, even one the crate failed to resolve, means a nested subvolume.
        Ok(mut it) => it.next().is_some(),
        Err(_) => true,
    }
}

/// Subvolumes nested below `top`, deepest first (the order to delete them in).
/// A subvolume root is a directory with inode 256 on a device of its own.
fn nested(top: &Path) -> Result<Vec<PathBuf>> {
    let top_dev = fs::symlink_metadata(top)
        .map_err(BdevError::io("stat", top))?
        .dev();
    let mut found = Vec::new();
    let mut stack = vec![(top.to_path_buf(), top_dev)];
    while let Some((dir, dev)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(BdevError::io("read directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(BdevError::io("read directory", &dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let md = fs::symlink_metadata(&path).map_err(BdevError::io("stat", &path))?;
            if md.ino() == SUBVOL_ROOT_INO && md.dev() != dev {
                found.push(path.clone());
            }
            stack.push((path, md.dev()));
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}
