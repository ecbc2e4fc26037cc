//! The content digest of a directory tree: "sha256:<hex>" over a canonical
//! walk, so two trees with the same digest hold the same files, links,
//! devices, owners, modes and xattrs, whatever filesystem or backend holds
//! them.
//!
//! The walk collects every entry, sorts them by their relative path's bytes,
//! and hashes one record per entry (each field length-prefixed, so no two
//! different trees serialise to the same bytes):
//! path, type, mode (permissions with setuid/setgid/sticky), uid, gid, the
//! xattrs sorted by name (names and values), then the content: a regular
//! file's bytes, a symlink's target, a device's major and minor. A regular
//! file with more than one link that was already hashed under an earlier path
//! is hashed as a link marker naming that path, so the digest captures the
//! link structure (two copies and two hardlinks of a file differ).
//!
//! Left out, on purpose: timestamps (mtime included), because templates and
//! copies don't keep them uniformly (debootstrap, `cp`, send/receive and the
//! backends' copies each set them differently) and the digest should say
//! whether the *contents* are the same; inode numbers, link counts of
//! directories and sizes of directories, which depend on the filesystem.
//!
//! Symlinks are never followed. Directories on another filesystem than the
//! root (a different `st_dev`: a mount point, or a nested btrfs subvolume)
//! are hashed as empty directories with their own metadata: their contents
//! belong to another tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::{ImageError, Result};

/// One entry found by the walk; the rest is read again while hashing, in
/// sorted order.
struct Found {
    rel: Vec<u8>,
    dev: u64,
    ino: u64,
}

/// The digest of the tree at `root`: "sha256:" and 64 lowercase hex digits.
pub fn tree_digest(root: &Path) -> Result<String> {
    digest_skipping(root, &[])
}

/// Entries at the top of a volume that belong to its filesystem, not to the
/// container: ext4 and xfs volumes have them from `mkfs`, tree volumes not.
pub const FILESYSTEM_OWN: &[&[u8]] = &[b"lost+found"];

/// [`tree_digest`] of a container's root filesystem: the top-level
/// [`FILESYSTEM_OWN`] entries left out, so the same rootfs digests the same
/// on every backend.
pub fn rootfs_digest(root: &Path) -> Result<String> {
    digest_skipping(root, FILESYSTEM_OWN)
}

fn digest_skipping(root: &Path, top_skip: &[&[u8]]) -> Result<String> {
    let top = std::fs::symlink_metadata(root).map_err(ImageError::io("stat", root))?;
    if !top.is_dir() {
        return Err(ImageError::io("walk", root)(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    let mut found = walk(root, top.dev(), top_skip)?;
    found.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));

    let mut hasher = Sha256::new();
    let mut first_path: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in &found {
        let path = full_path(root, &entry.rel);
        let meta = std::fs::symlink_metadata(&path).map_err(ImageError::io("stat", &path))?;
        if (meta.dev(), meta.ino()) != (entry.dev, entry.ino) {
            return Err(ImageError::Changed {
                path,
                what: "an entry was replaced",
            });
        }
        field(&mut hasher, &entry.rel);
        let kind = meta.file_type();
        let tag: u8 = if kind.is_dir() {
            b'd'
        } else if kind.is_file() {
            b'f'
        } else if kind.is_symlink() {
            b'l'
        } else if kind.is_char_device() {
            b'c'
        } else if kind.is_block_device() {
            b'b'
        } else if kind.is_fifo() {
            b'p'
        } else {
            b's'
        };
        hasher.update([tag]);
        hasher.update((meta.mode() & 0o7777).to_le_bytes());
        hasher.update(meta.uid().to_le_bytes());
        hasher.update(meta.gid().to_le_bytes());
        hash_xattrs(&mut hasher, &path)?;
        match tag {
            // Every file is looked up by inode, whatever its link count says:
            // a FUSE filesystem (unionfs-fuse) can report a stale count of 1
            // right after the link was made.
            b'f' => {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = first_path.get(&key) {
                    hasher.update(b"h");
                    field(&mut hasher, first);
                } else {
                    first_path.insert(key, entry.rel.clone());
                    hash_file(&mut hasher, &path, &meta)?;
                }
            }
            b'l' => {
                let target =
                    std::fs::read_link(&path).map_err(ImageError::io("readlink", &path))?;
                field(&mut hasher, target.as_os_str().as_bytes());
            }
            b'c' | b'b' => {
                let rdev = meta.rdev();
                hasher.update(rustix::fs::major(rdev).to_le_bytes());
                hasher.update(rustix::fs::minor(rdev).to_le_bytes());
            }
            _ => {}
        }
    }
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// Every entry under `root` (the root itself as the empty path), without
/// following symlinks or entering directories of another filesystem.
fn walk(root: &Path, root_dev: u64, top_skip: &[&[u8]]) -> Result<Vec<Found>> {
    let meta = std::fs::symlink_metadata(root).map_err(ImageError::io("stat", root))?;
    let mut found = vec![Found {
        rel: Vec::new(),
        dev: meta.dev(),
        ino: meta.ino(),
    }];
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = dirs.pop() {
        let dir = full_path(root, &rel);
        let list = std::fs::read_dir(&dir).map_err(ImageError::io("list", &dir))?;
        for item in list {
            let item = item.map_err(ImageError::io("list", &dir))?;
            if rel.is_empty() && top_skip.contains(&item.file_name().as_bytes()) {
                continue;
            }
            let meta = item
                .metadata()
                .map_err(ImageError::io("stat", item.path()))?;
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(item.file_name().as_bytes());
            if meta.is_dir() && meta.dev() == root_dev {
                dirs.push(child.clone());
            }
            found.push(Found {
                rel: child,
                dev: meta.dev(),
                ino: meta.ino(),
            });
        }
    }
    Ok(found)
}

fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Length-prefixed bytes: no field can run into the next.
fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn hash_file(hasher: &mut Sha256, path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("open", path)(e.into()))?;
    let mut file = std::fs::File::from(fd);
    let opened = file.metadata().map_err(ImageError::io("stat", path))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(ImageError::Changed {
            path: path.to_path_buf(),
            what: "a file was replaced",
        });
    }
    hasher.update(meta.len().to_le_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(ImageError::io("read", path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total != meta.len() {
        return Err(ImageError::Changed {
            path: path.to_path_buf(),
            what: "a file changed size",
        });
    }
    Ok(())
}

/// The entry's xattrs, sorted by name: a count, then each name and value.
fn hash_xattrs(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut xattrs = read_xattrs(path)?;
    xattrs.sort();
    hasher.update((xattrs.len() as u64).to_le_bytes());
    for (name, value) in &xattrs {
        field(hasher, name);
        field(hasher, value);
    }
    Ok(())
}

/// Names and values of the xattrs of `path` itself (a symlink's own).
pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            // Filesystems without xattrs have none to hash.
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("list xattrs of", path)(e.into())),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut names = Vec::with_capacity(size);
        match rustix::fs::llistxattr(path, rustix::buffer::spare_capacity(&mut names)) {
            Ok(_) => break names,
            // The list grew between the two calls; ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(ImageError::io("list xattrs of", path)(e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, name) {
                Ok(n) => n,
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(ImageError::io("read xattr of", path)(e.into())),
            };
            if size == 0 {
                break Some(Vec::new());
            }
            let mut value = Vec::with_capacity(size);
            match rustix::fs::lgetxattr(path, name, rustix::buffer::spare_capacity(&mut value)) {
                Ok(_) => break Some(value),
                Err(rustix::io::Errno::RANGE) => continue,
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(ImageError::io("read xattr of", path)(e.into())),
            }
        };
        if let Some(value) = value {
            out.push((name.to_vec(), value));
        }
    }
    Ok(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;
    use crate::images::testutil::{is_root_or_skip, scratch};

    /// A small tree with one of everything the digest looks at.
    fn build(root: &Path) {
        fs::create_dir_all(root.join("etc/conf.d")).expect("mkdir");
        fs::write(root.join("etc/hostname"), b"box\n").expect("write");
        fs::write(root.join("etc/conf.d/a"), b"a=1\n").expect("write");
        fs::write(root.join("bin"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::hard_link(root.join("bin"), root.join("bin2")).expect("link");
        symlink("etc/hostname", root.join("name")).expect("symlink");
        rustix::fs::setxattr(
            root.join("etc/hostname"),
            "user.note",
            b"x",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("xattr");
    }

    type Change = Box<dyn FnOnce(&Path)>;

    fn digest_after(change: impl FnOnce(&Path)) -> String {
        let dir = scratch("digest");
        build(dir.path());
        change(dir.path());
        tree_digest(dir.path()).expect("digest")
    }

    #[test]
    fn equal_trees_have_equal_digests_and_any_change_shows() {
        if !is_root_or_skip("the digest tests chown files") {
            return;
        }
        let base = digest_after(|_| {});
        assert!(base.starts_with("sha256:") && base.len() == 71, "{base}");
        assert_eq!(base, digest_after(|_| {}), "same tree, same digest");
        // mtimes are left out on purpose.
        assert_eq!(
            base,
            digest_after(|r| {
                let f = fs::File::options()
                    .write(true)
                    .open(r.join("etc/hostname"))
                    .expect("open");
                f.set_modified(std::time::UNIX_EPOCH).expect("mtime");
            })
        );
        let changes: Vec<(&str, Change)> = vec![
            (
                "mode",
                Box::new(|r: &Path| {
                    fs::set_permissions(r.join("etc/hostname"), fs::Permissions::from_mode(0o600))
                        .expect("chmod")
                }),
            ),
            (
                "setuid bit",
                Box::new(|r: &Path| {
                    fs::set_permissions(r.join("bin"), fs::Permissions::from_mode(0o4755))
                        .expect("chmod")
                }),
            ),
            (
                "owner",
                Box::new(|r: &Path| {
                    std::os::unix::fs::lchown(r.join("etc/conf.d/a"), Some(1000), None)
                        .expect("chown")
                }),
            ),
            (
                "group",
                Box::new(|r: &Path| {
                    std::os::unix::fs::lchown(r.join("etc"), None, Some(4)).expect("chgrp")
                }),
            ),
            (
                "xattr value",
                Box::new(|r: &Path| {
                    rustix::fs::setxattr(
                        r.join("etc/hostname"),
                        "user.note",
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .expect("xattr")
                }),
            ),
            (
                "xattr on a directory",
                Box::new(|r: &Path| {
                    rustix::fs::setxattr(
                        r.join("etc"),
                        "user.other",
                        b"",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .expect("xattr")
                }),
            ),
            (
                "content",
                Box::new(|r: &Path| fs::write(r.join("etc/conf.d/a"), b"a=2\n").expect("write")),
            ),
            (
                "name",
                Box::new(|r: &Path| {
                    fs::rename(r.join("etc/conf.d/a"), r.join("etc/conf.d/b")).expect("rename")
                }),
            ),
            (
                "symlink target",
                Box::new(|r: &Path| {
                    fs::remove_file(r.join("name")).expect("rm");
                    symlink("etc/conf.d/a", r.join("name")).expect("symlink");
                }),
            ),
            (
                "hardlink made a copy",
                Box::new(|r: &Path| {
                    fs::remove_file(r.join("bin2")).expect("rm");
                    fs::copy(r.join("bin"), r.join("bin2")).expect("copy");
                }),
            ),
            (
                "root directory mode",
                Box::new(|r: &Path| {
                    fs::set_permissions(r, fs::Permissions::from_mode(0o700)).expect("chmod")
                }),
            ),
            (
                "empty file added",
                Box::new(|r: &Path| fs::write(r.join("etc/empty"), b"").expect("write")),
            ),
        ];
        for (what, change) in changes {
            assert_ne!(base, digest_after(change), "a change of {what} must show");
        }
    }

    #[test]
    fn devices_and_fifos_are_hashed_by_number_and_type() {
        if !is_root_or_skip("mknod needs root") {
            return;
        }
        let node = |kind: rustix::fs::FileType, dev: u64| {
            move |r: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    r.join("node"),
                    kind,
                    Mode::from_raw_mode(0o644),
                    dev,
                )
                .expect("mknod")
            }
        };
        let null = digest_after(node(
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 3),
        ));
        let zero = digest_after(node(
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 5),
        ));
        let block = digest_after(node(
            rustix::fs::FileType::BlockDevice,
            rustix::fs::makedev(1, 3),
        ));
        let fifo = digest_after(node(rustix::fs::FileType::Fifo, 0));
        assert_ne!(null, zero);
        assert_ne!(null, block);
        assert_ne!(null, fifo);
    }

    #[test]
    fn a_symlink_to_a_directory_is_not_followed() {
        let dir = scratch("digest-symlink");
        let outside = scratch("digest-outside");
        fs::write(outside.path().join("secret"), b"1").expect("write");
        symlink(outside.path(), dir.path().join("out")).expect("symlink");
        let before = tree_digest(dir.path()).expect("digest");
        fs::write(outside.path().join("secret"), b"2").expect("write");
        assert_eq!(before, tree_digest(dir.path()).expect("digest"));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
