//! Writing a tree, or the changes between two trees, as a layer tar that
//! [`super::apply_layer`] applies back bit for bit: owners, modes, times to
//! the nanosecond (PAX `mtime`), xattrs (PAX `SCHILY.xattr.*`: file
//! capabilities, ACLs), device nodes, FIFOs, sockets (a FIFO entry marked
//! PAX `BERTH.type=socket`, tar having no socket type), hardlinks (the first
//! name carries the data, later ones link to it) and sparse files (GNU
//! sparse entries: holes take no room in the archive). Deletions are OCI
//! whiteouts, `DIR/.wh.NAME`.
//!
//! A file that changes while it is written fails the layer (its entry would
//! not match its header); the caller stops the export.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};
use tar::{EntryType, Header};

use super::digest::read_xattrs;
use super::tree::{parent, Changes, Item, Tree};
use super::{ImageError, Result};

/// Writes every entry of `tree` as one layer into `out`.
pub(crate) fn pack_tree<W: Write>(tree: &Tree, out: W) -> Result<W> {
    let mut p = Packer::new(out);
    for it in &tree.items {
        p.item(tree, it, None)?;
    }
    p.finish()
}

/// Writes the changes `ch` (from [`super::tree::changes`]) that turn a base
/// tree into `new` as one layer into `out`.
pub(crate) fn pack_changes<W: Write>(new: &Tree, ch: &Changes, out: W) -> Result<W> {
    let mut p = Packer::new(out);
    // Whiteouts go with their directory's entries: sorted in by their path.
    let mut whiteouts: Vec<Vec<u8>> = ch.remove.iter().map(|r| whiteout_path(r)).collect();
    whiteouts.sort();
    let mut wo = whiteouts.iter().peekable();
    for &k in &ch.write {
        let it = &new.items[k];
        while let Some(w) = wo.next_if(|w| w.as_slice() < it.rel.as_slice()) {
            p.whiteout(w)?;
        }
        p.item(new, it, ch.link_to.get(&k).map(Vec::as_slice))?;
    }
    for w in wo {
        p.whiteout(w)?;
    }
    p.finish()
}

/// `DIR/.wh.NAME` for `DIR/NAME`.
fn whiteout_path(rel: &[u8]) -> Vec<u8> {
    let dir = parent(rel);
    let name = if dir.is_empty() {
        rel
    } else {
        &rel[dir.len() + 1..]
    };
    super::tree::join(dir, &[b".wh.", name].concat())
}

struct Packer<W: Write> {
    b: tar::Builder<W>,
    /// Inodes written in this layer with several names: the name that
    /// carries the data.
    first_name: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Packer<W> {
    fn new(out: W) -> Self {
        let mut b = tar::Builder::new(out);
        // Sparse files as GNU sparse entries: holes take no room.
        b.sparse(true);
        Packer {
            b,
            first_name: HashMap::new(),
        }
    }

    fn finish(self) -> Result<W> {
        self.b.into_inner().map_err(write_error)
    }

    fn whiteout(&mut self, rel: &[u8]) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.b
            .append_data(&mut h, OsStr::from_bytes(rel), io::empty())
            .map_err(entry_error(rel))
    }

    /// One entry. `link_to` names an entry the target already holds with the
    /// same inode's content (an incremental layer's unchanged hardlink).
    fn item(&mut self, tree: &Tree, it: &Item, link_to: Option<&[u8]>) -> Result<()> {
        let md = &it.md;
        let path = tree.path(&it.rel);
        let name: PathBuf = if it.rel.is_empty() {
            PathBuf::from("./")
        } else {
            PathBuf::from(OsStr::from_bytes(&it.rel))
        };
        let t = md.file_type();
        if t.is_file() && !tree.names_of(it).is_empty() {
            let key = (md.dev(), md.ino());
            let target = self
                .first_name
                .get(&key)
                .map(Vec::as_slice)
                .or(link_to)
                .map(<[u8]>::to_vec);
            if let Some(target) = target {
                let mut h = header(md, EntryType::Link);
                return self
                    .b
                    .append_link(&mut h, &name, OsStr::from_bytes(&target))
                    .map_err(entry_error(&it.rel));
            }
            self.first_name.insert(key, it.rel.clone());
        }
        self.b
            .append_pax_extensions(
                pax_records(&path, md, t.is_socket())?
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
            )
            .map_err(entry_error(&it.rel))?;
        if t.is_file() {
            return self.file(&path, &name, it);
        }
        let mut h = if t.is_dir() {
            header(md, EntryType::Directory)
        } else if t.is_symlink() {
            let target = std::fs::read_link(&path).map_err(ImageError::io("readlink", &path))?;
            let mut h = header(md, EntryType::Symlink);
            return self
                .b
                .append_link(&mut h, &name, target)
                .map_err(entry_error(&it.rel));
        } else if t.is_char_device() || t.is_block_device() {
            let kind = if t.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut h = header(md, kind);
            let rdev = md.rdev();
            h.set_device_major(rustix::fs::major(rdev))
                .and_then(|()| h.set_device_minor(rustix::fs::minor(rdev)))
                .map_err(entry_error(&it.rel))?;
            h
        } else {
            // FIFOs, and sockets marked as such by their PAX record.
            header(md, EntryType::Fifo)
        };
        self.b
            .append_data(&mut h, &name, io::empty())
            .map_err(entry_error(&it.rel))
    }

    /// A regular file's entry with its data, sparse where the file is. The
    /// file is opened without following a link and must be the one walked,
    /// unchanged after it is written.
    fn file(&mut self, path: &std::path::Path, name: &std::path::Path, it: &Item) -> Result<()> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ImageError::io("open", path)(e.into()))?;
        let mut file = File::from(fd);
        let changed = |what| ImageError::Changed {
            path: path.to_path_buf(),
            what,
        };
        let before = file.metadata().map_err(ImageError::io("stat", path))?;
        if (before.dev(), before.ino()) != (it.md.dev(), it.md.ino()) {
            return Err(changed("a file was replaced"));
        }
        self.b
            .append_file(name, &mut file)
            .map_err(entry_error(&it.rel))?;
        let after = file.metadata().map_err(ImageError::io("stat", path))?;
        if after.len() != before.len()
            || (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec())
        {
            return Err(changed("a file changed while it was exported"));
        }
        Ok(())
    }
}

/// A header with the entry's owner, mode and (whole-second) mtime; the
/// nanoseconds travel in the PAX record.
fn header(md: &std::fs::Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

/// The PAX records of an entry: its mtime to the nanosecond, its xattrs,
/// and the socket mark.
fn pax_records(
    path: &std::path::Path,
    md: &std::fs::Metadata,
    socket: bool,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![(
        "mtime".to_owned(),
        format!("{}.{:09}", md.mtime(), md.mtime_nsec()).into_bytes(),
    )];
    let mut xattrs = read_xattrs(path)?;
    xattrs.sort();
    for (name, value) in xattrs {
        let name = String::from_utf8(name).map_err(|e| {
            ImageError::entry(
                path.as_os_str().as_bytes(),
                format!(
                    "has the xattr {:?}, whose name is not UTF-8 and cannot be a PAX key",
                    String::from_utf8_lossy(e.as_bytes())
                ),
            )
        })?;
        out.push((format!("SCHILY.xattr.{name}"), value));
    }
    if socket {
        out.push(("BERTH.type".to_owned(), b"socket".to_vec()));
    }
    Ok(out)
}

fn entry_error(rel: &[u8]) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |e| ImageError::entry(rel, format!("cannot write it to the archive: {e}"))
}

fn write_error(e: io::Error) -> ImageError {
    ImageError::Archive {
        reason: format!("cannot finish writing it: {e}"),
    }
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
