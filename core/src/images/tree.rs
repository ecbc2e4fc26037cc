//! A root filesystem as the export format sees it: every entry, sorted by
//! its relative path's bytes (a directory before what it holds), and the
//! changes between two such trees (what an incremental export sends).
//!
//! The walk agrees with [`super::digest::rootfs_digest`]: symlinks are never
//! followed, a directory on another filesystem (a mount point, a nested
//! btrfs subvolume) is an empty directory, and the top-level entries the
//! filesystem owns (`lost+found`) are left out.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::digest::{read_xattrs, FILESYSTEM_OWN};
use super::{ImageError, Result};

/// One entry of a tree.
pub(crate) struct Item {
    /// Relative path bytes; empty for the root.
    pub rel: Vec<u8>,
    pub md: Metadata,
}

/// A walked tree: its entries sorted, and the hardlink groups among its
/// regular files.
pub(crate) struct Tree {
    pub root: PathBuf,
    pub items: Vec<Item>,
    /// (dev, ino) of each file with several names here → the indices of
    /// those names in `items`, in sorted order.
    groups: HashMap<(u64, u64), Vec<usize>>,
}

impl Tree {
    /// Walks the tree at `root`. A name starting with `.wh.` is refused:
    /// the export format uses such names for deletions.
    pub(crate) fn walk(root: &Path) -> Result<Tree> {
        let top = fs::symlink_metadata(root).map_err(ImageError::io("stat", root))?;
        if !top.is_dir() {
            return Err(ImageError::io("walk", root)(std::io::Error::from(
                std::io::ErrorKind::NotADirectory,
            )));
        }
        let root_dev = top.dev();
        let mut items = vec![Item {
            rel: Vec::new(),
            md: top,
        }];
        let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = dirs.pop() {
            let dir = full_path(root, &rel);
            let list = fs::read_dir(&dir).map_err(ImageError::io("list", &dir))?;
            for entry in list {
                let entry = entry.map_err(ImageError::io("list", &dir))?;
                let name = entry.file_name();
                let name = name.as_bytes();
                if rel.is_empty() && FILESYSTEM_OWN.contains(&name) {
                    continue;
                }
                let child = join(&rel, name);
                if name.starts_with(b".wh.") {
                    return Err(ImageError::entry(
                        &child,
                        "has a name starting with \".wh.\", which the export format uses \
                         for deletions; rename it, or export with --native",
                    ));
                }
                let md = entry
                    .metadata()
                    .map_err(ImageError::io("stat", entry.path()))?;
                if md.is_dir() && md.dev() == root_dev {
                    dirs.push(child.clone());
                }
                items.push(Item { rel: child, md });
            }
        }
        items.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        let mut groups: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (k, it) in items.iter().enumerate() {
            if it.md.is_file() && it.md.nlink() > 1 {
                groups
                    .entry((it.md.dev(), it.md.ino()))
                    .or_default()
                    .push(k);
            }
        }
        groups.retain(|_, g| g.len() > 1);
        Ok(Tree {
            root: root.to_path_buf(),
            items,
            groups,
        })
    }

    pub(crate) fn path(&self, rel: &[u8]) -> PathBuf {
        full_path(&self.root, rel)
    }

    /// The first name of the hardlink group `it` belongs to, when it has
    /// other names in this tree.
    pub(crate) fn group_of(&self, it: &Item) -> Option<&[u8]> {
        let first = *self.names_of(it).first()?;
        Some(&self.items[first].rel)
    }

    /// The indices of every name of the inode of `it` (itself included)
    /// when it has several here; empty otherwise.
    pub(crate) fn names_of(&self, it: &Item) -> &[usize] {
        if !it.md.is_file() {
            return &[];
        }
        self.groups
            .get(&(it.md.dev(), it.md.ino()))
            .map_or(&[], Vec::as_slice)
    }
}

/// What an incremental layer holds: entries of the new tree to write, by
/// index into its items, and paths of the base to delete (whiteouts).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub write: Vec<usize>,
    pub remove: Vec<Vec<u8>>,
    /// For each written hardlink whose inode also has names the layer does
    /// not write: one of those names, which the target already holds with
    /// the same content, to link to.
    pub link_to: HashMap<usize, Vec<u8>>,
}

/// The changes that turn `base` into `new`. A path is written when it is
/// new, or differs in type, owner, mode, mtime, xattrs, content, link target,
/// device number or hardlink group; a directory also when an entry directly
/// in it is written or removed (applying those changes its mtime). A removed
/// directory is one whiteout, whatever it held.
pub(crate) fn changes(base: &Tree, new: &Tree) -> Result<Changes> {
    let mut out = Changes::default();
    let mut written = vec![false; new.items.len()];
    // Base directories gone or replaced: what they held goes with them.
    let mut gone_dirs: Vec<&[u8]> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < base.items.len() || j < new.items.len() {
        let ord = match (base.items.get(i), new.items.get(j)) {
            (Some(b), Some(n)) => b.rel.cmp(&n.rel),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let b = &base.items[i];
                if !under_any(&b.rel, &gone_dirs) {
                    out.remove.push(b.rel.clone());
                    if b.md.is_dir() {
                        gone_dirs.push(&b.rel);
                    }
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                written[j] = true;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (b, n) = (&base.items[i], &new.items[j]);
                if !same(base, b, new, n)? {
                    written[j] = true;
                    if b.md.is_dir() && !n.md.is_dir() {
                        gone_dirs.push(&b.rel);
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    // A directory whose entries change is written too, for its mtime.
    let mut touched: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    for (k, w) in written.iter().enumerate() {
        if *w && k > 0 {
            touched.insert(parent(&new.items[k].rel).to_vec());
        }
    }
    for r in &out.remove {
        touched.insert(parent(r).to_vec());
    }
    for (k, it) in new.items.iter().enumerate() {
        if it.md.is_dir() && touched.contains(&it.rel) {
            written[k] = true;
        }
    }
    out.write = (0..new.items.len()).filter(|k| written[*k]).collect();
    for &k in &out.write {
        let kept = new.names_of(&new.items[k]).iter().find(|o| !written[**o]);
        if let Some(&o) = kept {
            out.link_to.insert(k, new.items[o].rel.clone());
        }
    }
    Ok(out)
}

/// Whether `a` in `ta` and `b` in `tb` are the same entry.
fn same(ta: &Tree, a: &Item, tb: &Tree, b: &Item) -> Result<bool> {
    let (x, y) = (&a.md, &b.md);
    if x.file_type() != y.file_type()
        || x.mode() & 0o7777 != y.mode() & 0o7777
        || x.uid() != y.uid()
        || x.gid() != y.gid()
        || x.mtime() != y.mtime()
        || x.mtime_nsec() != y.mtime_nsec()
    {
        return Ok(false);
    }
    let t = x.file_type();
    if (t.is_char_device() || t.is_block_device()) && x.rdev() != y.rdev() {
        return Ok(false);
    }
    if t.is_file() && (x.len() != y.len() || ta.group_of(a) != tb.group_of(b)) {
        return Ok(false);
    }
    let (pa, pb) = (ta.path(&a.rel), tb.path(&b.rel));
    if t.is_symlink() {
        let la = fs::read_link(&pa).map_err(ImageError::io("readlink", &pa))?;
        let lb = fs::read_link(&pb).map_err(ImageError::io("readlink", &pb))?;
        if la != lb {
            return Ok(false);
        }
    }
    let (mut xa, mut xb) = (read_xattrs(&pa)?, read_xattrs(&pb)?);
    xa.sort();
    xb.sort();
    if xa != xb {
        return Ok(false);
    }
    if t.is_file() {
        return same_content(&pa, &pb);
    }
    Ok(true)
}

/// Byte for byte: an mtime can be kept over a change (`touch -r`, a copy
/// that keeps times), so metadata alone would miss one.
fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = fs::File::open(a).map_err(ImageError::io("open", a))?;
    let mut fb = fs::File::open(b).map_err(ImageError::io("open", b))?;
    let (mut ba, mut bb) = (vec![0u8; 256 << 10], vec![0u8; 256 << 10]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(ImageError::io("read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(ImageError::io("read", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn under_any(rel: &[u8], dirs: &[&[u8]]) -> bool {
    dirs.iter()
        .any(|d| rel.len() > d.len() && rel.starts_with(d) && rel[d.len()] == b'/')
}

/// The directory an entry is in (empty for the top level).
pub(crate) fn parent(rel: &[u8]) -> &[u8] {
    rel.iter()
        .rposition(|b| *b == b'/')
        .map_or(&rel[..0], |i| &rel[..i])
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}
