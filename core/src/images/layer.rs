//! Applying one image layer (a tar stream, plain, gzip or zstd, told apart by
//! its magic bytes) onto a directory, with OCI's semantics: `.wh.NAME` deletes
//! NAME as the lower layers left it, `.wh..wh..opq` empties a directory of its
//! lower content (what the same layer adds stays), everything else is created
//! with its owner, mode, mtime and xattrs (PAX `SCHILY.xattr.*`). A file's
//! blocks of zeros become holes, so sparse files stay sparse; a FIFO entry
//! marked PAX `BERTH.type=socket` (berth's export format) is a socket.
//!
//! Safety: no path of the archive is ever resolved outside the target. The
//! target is opened once, and every parent directory is resolved from it with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: an absolute symlink is
//! read relative to the target and `..` stops at its top, as inside the
//! container. The last component is never followed (created with `O_EXCL`,
//! `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`; whatever was there is removed first).
//! An absolute entry path is re-rooted (`/etc/x` is `etc/x`); an entry path
//! with a `..` component is refused outright, as GNU tar does. A hardlink's
//! target is resolved the same way. Symlinks inside the image are followed for
//! parents (`lib -> usr/lib`), so a layer writing `link/file` through a
//! planted `link -> /tmp/outside` writes into the target's own `tmp/outside`
//! if that exists and fails otherwise.
//!
//! Data is streamed: an entry's declared size allocates nothing; a file gets
//! the bytes the archive really holds, and fewer than declared fail the layer.
//! A file declared larger than the target's free space fails before
//! anything of it is written (a 1 TiB GNU sparse entry with a short body
//! would otherwise be read out as 1 TiB of zeros).
//!
//! Contract on failure: [`apply_layer`] stops at the first bad entry and
//! returns an error naming it, leaving the target half-applied. Callers apply
//! layers into a fresh directory of their own and remove it on any error
//! (`oci::import_layout`'s caller does); nothing outside the target is ever
//! touched, so removing it is the whole clean-up.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    chmodat, fstatvfs, futimens, linkat, makedev, mkdirat, mknodat, openat, openat2, statat,
    symlinkat, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid,
};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::at::{fail, list_dir, set_fd_meta, Node};
use super::digest::hex;
use super::{ImageError, Result};
use crate::templates::archive::{detect, Compression, HEADER_LEN};

/// How a layer is applied.
#[derive(Debug, Clone, Default)]
pub struct ApplyOpts {
    /// Create character and block device nodes. False for an unprivileged
    /// import: such an entry then fails the layer with
    /// [`ImageError::DeviceRefused`]. FIFOs are always created.
    pub allow_devices: bool,
}

/// Applies the layer read from `layer` onto the directory `target` and
/// returns the sha256 of its uncompressed tar stream ("sha256:…", what an
/// OCI config's `rootfs.diff_ids` lists). See the module documentation for
/// the semantics and for the caller's duty to discard `target` when this
/// fails.
pub fn apply_layer<R: Read>(layer: R, target: &Path, opts: &ApplyOpts) -> Result<String> {
    let root = rustix::fs::open(
        target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("open", target)(e.into()))?;
    let mut archive = tar::Archive::new(Hashed {
        inner: decompress(layer)?,
        hasher: Sha256::new(),
    });
    let mut state = Applier {
        root,
        opts,
        added: HashSet::new(),
        dir_times: Vec::new(),
    };
    let entries = archive
        .entries()
        .map_err(archive_error("start reading it"))?;
    let mut last: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::Archive {
            reason: match &last {
                None => format!("cannot read its first entry: {e}"),
                Some(l) => format!(
                    "cannot read the entry after {:?}: {e}",
                    String::from_utf8_lossy(l)
                ),
            },
        })?;
        let raw = entry.path_bytes().into_owned();
        state.apply(&mut entry, &raw)?;
        last = Some(raw);
    }
    state.set_dir_times()?;
    // The diff_id covers the whole stream, the end-of-archive blocks (and
    // whatever follows them) included.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(archive_error("read it to its end"))?;
    Ok(format!("sha256:{}", hex(&rest.hasher.finalize())))
}

/// The uncompressed stream, hashed as the tar reader consumes it.
struct Hashed<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn archive_error(what: &'static str) -> impl FnOnce(io::Error) -> ImageError {
    move |e| ImageError::Archive {
        reason: format!("cannot {what}: {e}"),
    }
}

/// The tar stream inside `layer`, decompressed as its first bytes say.
pub(crate) fn decompress<'a, R: Read + 'a>(mut layer: R) -> Result<Box<dyn Read + 'a>> {
    let mut head = Vec::with_capacity(HEADER_LEN);
    layer
        .by_ref()
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(archive_error("read its first bytes"))?;
    let kind = detect(&head);
    let stream = io::Cursor::new(head).chain(layer);
    Ok(match kind {
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Some(Compression::Zstd) => Box::new(
            zstd::stream::read::Decoder::new(stream)
                .map_err(archive_error("start decompressing it"))?,
        ),
        Some(other @ (Compression::Xz | Compression::Bzip2)) => {
            return Err(ImageError::Archive {
                reason: format!(
                    "it is {other:?}-compressed, which OCI layers never are; \
                     recompress it with gzip or zstd"
                ),
            })
        }
        // A plain tar; an empty layer (only the end-of-archive zeros) has no
        // magic at all, and anything else fails as a bad header.
        Some(Compression::None) | None => Box::new(stream),
    })
}

/// An entry's path as components inside the target: empty and `.`
/// components dropped (so `/etc/x` is `etc/x`), `..` refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(ImageError::entry(
                    raw,
                    "has a `..` component; a layer's paths must stay inside the image",
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Refuses a file declared larger than the free space of the filesystem it
/// goes to: it could only fill it, or, all hole, keep berth reading zeros for
/// as long. A filesystem that reports no size (some FUSE ones) is not judged.
fn check_room(dir: BorrowedFd<'_>, declared: u64, raw: &[u8]) -> Result<()> {
    let fs = fstatvfs(dir).map_err(|e| fail(raw, "cannot read its filesystem's free space", e))?;
    let free = fs.f_bfree.saturating_mul(fs.f_frsize);
    if fs.f_blocks > 0 && declared > free {
        return Err(ImageError::entry(
            raw,
            format!("declares {declared} bytes, more than the {free} bytes free where it goes"),
        ));
    }
    Ok(())
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// What an entry says about the file besides its content.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mtime: Timespec,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A FIFO entry that stands for a socket (PAX `BERTH.type=socket`,
    /// berth's export format; tar has no socket type).
    pub(super) socket: bool,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<R>, raw: &[u8]) -> Result<Meta> {
        let bad = |what: &str, e: io::Error| ImageError::entry(raw, format!("bad {what}: {e}"));
        let h = entry.header();
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        // The tar crate already applied PAX `uid`/`gid` to the header.
        let id = |v: io::Result<u64>, what: &str| -> Result<u32> {
            let v = v.map_err(|e| bad(what, e))?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| ImageError::entry(raw, format!("{what} {v} is not a valid id")))
        };
        let uid = Uid::from_raw(id(h.uid(), "uid")?);
        let gid = Gid::from_raw(id(h.gid(), "gid")?);
        let secs = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        let mut socket = false;
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX record", e))?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    mtime = pax_time(ext.value_bytes()).unwrap_or(mtime);
                } else if key == b"BERTH.type" {
                    socket = ext.value_bytes() == b"socket";
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
            socket,
        })
    }

    pub(super) fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// A PAX time, "SECONDS[.FRACTION]", seconds possibly negative.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut tv_nsec: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        tv_nsec *= 10;
    }
    Some(Timespec { tv_sec, tv_nsec })
}

struct Applier<'o> {
    /// The target, `O_PATH`: every resolution starts here.
    root: OwnedFd,
    opts: &'o ApplyOpts,
    /// Paths this layer created: whiteouts spare them.
    added: HashSet<Vec<u8>>,
    /// Directories' mtimes, set once the layer is done (each entry written
    /// into a directory changes its mtime).
    dir_times: Vec<(Vec<u8>, Timespec)>,
}

impl Applier<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<R>, raw: &[u8]) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Archive-wide PAX defaults (`pax_global_header`), no file.
            return Ok(());
        }
        let comps = components(raw)?;
        let Some((&name, parents)) = comps.split_last() else {
            if !kind.is_dir() {
                return Err(ImageError::entry(
                    raw,
                    "names the image's root but is not a directory",
                ));
            }
            let meta = Meta::of(entry, raw)?;
            let root = self.open_in(b"", OFlags::RDONLY | OFlags::DIRECTORY, raw)?;
            set_fd_meta(&root, &meta, raw)?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(raw, &join(parents), hidden);
        }
        let path = join(&comps);
        let parent = self.ensure_dir(parents, raw)?;
        let at = Node {
            parent: parent.as_fd(),
            name,
            raw,
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = Meta::of(entry, raw)?;
                let declared = entry.size();
                check_room(at.parent, declared, raw)?;
                at.clear(false)?;
                let fd = openat(
                    at.parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| fail(raw, "cannot create it", e))?;
                let mut file = std::fs::File::from(fd);
                // Zero blocks stay holes: a sparse file stays sparse.
                let written = super::sparse::copy_sparse(entry, &mut file)
                    .map_err(|e| ImageError::entry(raw, format!("cannot copy its data: {e}")))?;
                if written != declared {
                    return Err(ImageError::entry(
                        raw,
                        format!("declares {declared} bytes but the archive holds {written}"),
                    ));
                }
                set_fd_meta(&file, &meta, raw)?;
                futimens(&file, &meta.times()).map_err(|e| fail(raw, "cannot set its mtime", e))?;
            }
            EntryType::Directory => {
                let meta = Meta::of(entry, raw)?;
                if !at.clear(true)? {
                    mkdirat(at.parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| fail(raw, "cannot create it", e))?;
                }
                let fd = openat(
                    at.parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(raw, "cannot open it", e))?;
                set_fd_meta(&fd, &meta, raw)?;
                self.dir_times.push((path.clone(), meta.mtime));
            }
            EntryType::Symlink => {
                let meta = Meta::of(entry, raw)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::entry(raw, "is a symlink without a target"))?
                    .into_owned();
                at.clear(false)?;
                symlinkat(target.as_slice(), at.parent, name)
                    .map_err(|e| fail(raw, "cannot create it", e))?;
                at.set_meta(&meta, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::entry(raw, "is a hardlink without a target"))?
                    .into_owned();
                self.hardlink(&at, &comps, &target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let meta = Meta::of(entry, raw)?;
                let (file_type, dev) = match kind {
                    EntryType::Fifo if meta.socket => (FileType::Socket, 0),
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ if !self.opts.allow_devices => {
                        return Err(ImageError::DeviceRefused {
                            entry: String::from_utf8_lossy(raw).into_owned(),
                        })
                    }
                    _ => {
                        let number = |v: io::Result<Option<u32>>| {
                            v.ok().flatten().ok_or_else(|| {
                                ImageError::entry(raw, "is a device without a valid number")
                            })
                        };
                        let major = number(entry.header().device_major())?;
                        let minor = number(entry.header().device_minor())?;
                        let t = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (t, makedev(major, minor))
                    }
                };
                at.clear(false)?;
                mknodat(at.parent, name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| fail(raw, "cannot create it", e))?;
                at.set_meta(&meta, true)?;
            }
            other => {
                return Err(ImageError::entry(
                    raw,
                    format!("has tar entry type {other:?}, which an image layer cannot hold"),
                ))
            }
        }
        self.added.insert(path);
        Ok(())
    }

    /// `O_PATH` of the directory at `rel` (components joined), resolved
    /// inside the target.
    fn open_in(&self, rel: &[u8], flags: OFlags, raw: &[u8]) -> Result<OwnedFd> {
        self.resolve(rel, flags)
            .map_err(|e| fail(raw, "cannot open its directory", e))
    }

    fn resolve(&self, rel: &[u8], flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `parents` (resolved inside the target), created with
    /// mode 0755 where missing, as tar does for members without their
    /// directories.
    fn ensure_dir(&mut self, parents: &[&[u8]], raw: &[u8]) -> Result<OwnedFd> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
        match self.resolve(&join(parents), dir_flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(fail(raw, "cannot open its parent directory", e)),
        }
        let mut fd = self.open_in(b"", dir_flags, raw)?;
        for (i, part) in parents.iter().enumerate() {
            let prefix = join(&parents[..=i]);
            fd = match self.resolve(&prefix, dir_flags) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    mkdirat(&fd, *part, Mode::from_raw_mode(0o755)).map_err(|e| {
                        let what = if e == Errno::EXIST {
                            "a parent is a symlink to nothing inside the image"
                        } else {
                            "cannot create a parent directory"
                        };
                        fail(raw, what, e)
                    })?;
                    chmodat(&fd, *part, Mode::from_raw_mode(0o755), AtFlags::empty())
                        .map_err(|e| fail(raw, "cannot set a parent's mode", e))?;
                    self.added.insert(prefix.clone());
                    self.resolve(&prefix, dir_flags)
                        .map_err(|e| fail(raw, "cannot open a parent it created", e))?
                }
                Err(e) => return Err(fail(raw, "cannot open a parent directory", e)),
            };
        }
        Ok(fd)
    }

    fn hardlink(&self, at: &Node<'_>, comps: &[&[u8]], target: &[u8]) -> Result<()> {
        let raw = at.raw;
        let src = components(target)
            .map_err(|_| ImageError::entry(raw, "links to a path with a `..` component"))?;
        let Some((&src_name, src_parents)) = src.split_last() else {
            return Err(ImageError::entry(raw, "links to the image's root"));
        };
        if src == comps {
            return Err(ImageError::entry(raw, "links to itself"));
        }
        let shown = String::from_utf8_lossy(target);
        let missing = |e: Errno| {
            fail(
                raw,
                &format!("its link target {shown:?} is in neither this layer nor a lower one"),
                e,
            )
        };
        let src_dir = self
            .resolve(&join(src_parents), OFlags::PATH | OFlags::DIRECTORY)
            .map_err(missing)?;
        let st = statat(&src_dir, src_name, AtFlags::SYMLINK_NOFOLLOW).map_err(missing)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(ImageError::entry(
                raw,
                format!("links to the directory {shown:?}"),
            ));
        }
        at.clear(false)?;
        linkat(&src_dir, src_name, at.parent, at.name, AtFlags::empty())
            .map_err(|e| fail(raw, &format!("cannot link it to {shown:?}"), e))
    }

    /// A whiteout in directory `dir` for `hidden` (the name after `.wh.`).
    fn whiteout(&mut self, raw: &[u8], dir: &[u8], hidden: &[u8]) -> Result<()> {
        match hidden {
            // `.wh..wh..opq`: the directory hides all its lower content.
            b".wh..opq" => self.remove_lower_children(dir, raw),
            // Other `.wh..wh.*` names are aufs bookkeeping, not content.
            h if h.starts_with(b".wh.") => Ok(()),
            b"" | b"." | b".." => Err(ImageError::entry(raw, "is a whiteout of no name")),
            h => self.remove_lower(&child(dir, h), raw),
        }
    }

    /// Removes `path` unless this layer created it; of a directory this
    /// layer (re)created, removes the lower children.
    fn remove_lower(&mut self, path: &[u8], raw: &[u8]) -> Result<()> {
        if self.added.contains(path) {
            return self.remove_lower_children(path, raw);
        }
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let parent = match self.resolve(dir, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            // Nothing below to hide.
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(fail(raw, "cannot open the whiteout's directory", e)),
        };
        Node {
            parent: parent.as_fd(),
            name,
            raw,
        }
        .clear(false)
        .map(|_| ())
    }

    fn remove_lower_children(&mut self, dir: &[u8], raw: &[u8]) -> Result<()> {
        let fd = match self.resolve(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(fail(raw, "cannot open the opaque directory", e)),
        };
        for name in list_dir(&fd).map_err(|e| fail(raw, "cannot list a directory", e))? {
            self.remove_lower(&child(dir, &name), raw)?;
        }
        Ok(())
    }

    fn set_dir_times(&self) -> Result<()> {
        for (path, mtime) in self.dir_times.iter().rev() {
            let fd = match self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
            {
                Ok(fd) => fd,
                // Removed or replaced later in the same layer.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(fail(path, "cannot open it to set its mtime", e)),
            };
            let times = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            futimens(&fd, &times).map_err(|e| fail(path, "cannot set its mtime", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
