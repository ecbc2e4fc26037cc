//! Faithful tree and file copies: owners, modes, times (ns), xattrs, hardlinks,
//! device nodes, fifos, sockets, symlinks and sparse files, reflinked when the
//! filesystem can. Directories are created first, in order; file contents are
//! copied by a small worker pool; directory metadata is applied last, deepest
//! first, so copying their contents does not disturb their times.
//!
//! Nothing is lost silently: an xattr that cannot be listed, read or written
//! fails the copy unless [`CopyOpts`] allows dropping it, and what was dropped,
//! or a sparse file whose holes the target filled, is reported as a warning.

mod data;
mod losses;
mod meta;

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::fs::{linkat, mknodat, open, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use tracing::debug;

use crate::error::{BdevError, Result};
use losses::Losses;
use meta::{errno, Obj};

pub use meta::first_xattr;

/// Worker threads a copy uses. The work is mostly I/O and syscalls, so more
/// threads than cores keep both cores and the disk queue busy.
const WORKERS: usize = 8;

/// Counters for a finished copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    /// Bytes shared with the source through reflink instead of copied.
    pub reflinked_bytes: u64,
    /// Xattrs left out because the target cannot store them (`CopyOpts::drop_xattrs`).
    pub dropped_xattrs: u64,
    /// Sparse files whose holes the target filled.
    pub filled_files: u64,
}

/// What a copy may lose, as its caller decided. The default loses nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyOpts {
    /// Leave out (and report) the xattrs the target refuses as unsupported. Set
    /// only when the target backend `lacks_xattrs` and the user agreed to lose
    /// them (`--drop-xattrs`).
    pub drop_xattrs: bool,
    /// Take a source that cannot list xattrs at all (EOPNOTSUPP) as having none.
    /// Set only when the source backend `lacks_xattrs` and the trees under its
    /// mount were checked to hold none (`generic::copy_opts`).
    pub source_lacks_xattrs: bool,
}

/// Something a copy could not keep, reported as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyWarning<'a> {
    /// The target refused this xattr and the caller allowed dropping it. `path`
    /// is relative to the copied tree (empty for its root).
    XattrDropped { path: &'a Path, name: &'a OsStr },
    /// The target allocated the holes of this sparse file (`allocated` bytes for
    /// a source that takes `source_allocated`).
    HolesFilled {
        path: &'a Path,
        allocated: u64,
        source_allocated: u64,
    },
}

/// Progress reports from a copy (the CLI draws a bar from them).
pub trait Progress: Sync {
    /// Called once, after the source has been scanned.
    fn total(&self, _files: u64, _bytes: u64) {}
    /// Called as files complete, from any worker thread.
    fn advance(&self, _files: u64, _bytes: u64) {}
    /// Called, from any worker thread, for what the copy could not keep. The copy
    /// also logs a summary at warn level.
    fn warn(&self, _w: &CopyWarning<'_>) {}
    /// Whether the user asked to stop (Ctrl-C); the copy then fails with
    /// `BdevError::Interrupted` after the files in flight.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// One object of the source tree, relative to its root.
struct Node {
    rel: PathBuf,
    md: Metadata,
}

/// What a scan of the source found.
#[derive(Default)]
struct Plan {
    /// Directories, each after its parent; the root itself is not included.
    dirs: Vec<Node>,
    /// Non-directories; for a hardlinked inode only its first name.
    leaves: Vec<Node>,
    /// (other name, first name) of hardlinked inodes, linked after the leaves exist.
    links: Vec<(PathBuf, PathBuf)>,
    /// Logical size of the regular files in `leaves`.
    bytes: u64,
}

/// Copies the tree at `src` into the existing directory `dst`, losing nothing
/// (`copy_tree_with` with the default options).
pub fn copy_tree(src: &Path, dst: &Path, progress: &dyn Progress) -> Result<CopyStats> {
    copy_tree_with(src, dst, &CopyOpts::default(), progress)
}

/// Copies the tree at `src` into the existing directory `dst`; `opts` says what
/// may be lost.
///
/// `dst` should be empty (a fresh mount root holding only lost+found is fine: an
/// existing directory is reused). Mount points inside `src` are created but not
/// descended into; btrfs subvolumes, which are not mount points, are copied as
/// plain directories.
pub fn copy_tree_with(
    src: &Path,
    dst: &Path,
    opts: &CopyOpts,
    progress: &dyn Progress,
) -> Result<CopyStats> {
    let root_md = fs::symlink_metadata(src).map_err(BdevError::io("stat copy source", src))?;
    if !root_md.is_dir() {
        return Err(invalid("copy tree from", src, "not a directory"));
    }
    let dst_md = fs::symlink_metadata(dst).map_err(BdevError::io("stat copy target", dst))?;
    if !dst_md.is_dir() {
        return Err(invalid("copy tree to", dst, "not a directory"));
    }
    let src_canon = fs::canonicalize(src).map_err(BdevError::io("resolve", src))?;
    let dst_canon = fs::canonicalize(dst).map_err(BdevError::io("resolve", dst))?;
    if dst_canon.starts_with(&src_canon) {
        return Err(invalid(
            "copy tree to",
            dst,
            "the target is inside the source",
        ));
    }
    // Read mountinfo once; everything mounted strictly below the source is skipped.
    let skip: HashSet<PathBuf> = crate::mount::mounts_under(&src_canon)
        .into_iter()
        .filter(|m| *m != src_canon)
        .collect();

    let plan = scan(src, &src_canon, &skip)?;
    let nfiles = (plan.leaves.len() + plan.links.len()) as u64;
    progress.total(nfiles, plan.bytes);
    debug!(src = %src.display(), dst = %dst.display(), dirs = plan.dirs.len(),
        files = nfiles, bytes = plan.bytes, skipped_mounts = skip.len(), "copy tree");

    let losses = Losses::new(progress);
    // A full target fails with the numbers: what the source holds, what room
    // there was before the copy began.
    let available = crate::space::free_bytes(dst).unwrap_or(0);
    let full = |e| crate::space::full_at(e, dst, plan.bytes, available);
    meta::clear_root_acls(dst)?;
    for d in &plan.dirs {
        make_dir(&dst.join(&d.rel)).map_err(full)?;
    }
    let reflinked = copy_leaves(src, dst, &plan.leaves, opts, &losses).map_err(full)?;
    for (name, first) in &plan.links {
        let (from, to) = (dst.join(first), dst.join(name));
        linkat(CWD, &from, CWD, &to, AtFlags::empty()).map_err(errno("hardlink", &to))?;
        progress.advance(1, 0);
    }
    // Children before parents, the root last: setting a directory's metadata does
    // not change its parent's times, but creating entries in it does.
    for d in plan.dirs.iter().rev() {
        let (from, to) = (src.join(&d.rel), dst.join(&d.rel));
        let dropped = meta::apply(Obj::Path(&from), Obj::Path(&to), &d.md, &from, &to, opts)?;
        losses.xattrs(&d.rel, &dropped);
    }
    let dropped = meta::apply(Obj::Path(src), Obj::Path(dst), &root_md, src, dst, opts)?;
    losses.xattrs(Path::new(""), &dropped);
    let (dropped_xattrs, filled_files) = losses.summary();
    Ok(CopyStats {
        files: nfiles,
        bytes: plan.bytes,
        reflinked_bytes: reflinked,
        dropped_xattrs,
        filled_files,
    })
}

/// Gives `dst` the owner, mode, xattrs and times of `src` (neither followed if a
/// symlink), dropping nothing: the root of a layer stacked on `src` shows its
/// own directory, which must look like the origin's root.
pub fn copy_meta(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(BdevError::io("stat", src))?;
    let strict = CopyOpts::default();
    meta::apply(Obj::Path(src), Obj::Path(dst), &md, src, dst, &strict).map(drop)
}

/// Copies one regular file (an image), reflinked when possible, else sparsely, and
/// flushes it to disk; the mode is preserved. A partly written `dst` is removed on
/// failure; a full target fails with `BdevError::NoSpace`.
pub fn copy_file(src: &Path, dst: &Path) -> Result<CopyStats> {
    let from = open_source(src)?;
    let md = from.metadata().map_err(BdevError::io("stat", src))?;
    if !md.is_file() {
        return Err(invalid("copy file", src, "not a regular file"));
    }
    let available = crate::space::free_bytes(dst.parent().unwrap_or(Path::new("."))).unwrap_or(0);
    let to = open(
        dst,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_bits_retain(0o600),
    )
    .map(File::from)
    .map_err(errno("create", dst))?;
    let size = md.len();
    let result = (|| {
        let copied = data::copy_data(&from, &to, &md, &AtomicBool::new(true), src, dst)?;
        rustix::fs::fchmod(&to, Mode::from_bits_retain(md.mode() & 0o7777))
            .map_err(errno("set mode of", dst))?;
        // An image copy is a volume: a write the disk lost must fail it here.
        to.sync_all().map_err(BdevError::io("flush", dst))?;
        Ok(copied)
    })();
    match result {
        Ok(copied) => {
            let losses = Losses::new(&NoProgress);
            let reflinked_bytes = losses.data(src, copied, size);
            let (_, filled_files) = losses.summary();
            Ok(CopyStats {
                files: 1,
                bytes: size,
                reflinked_bytes,
                dropped_xattrs: 0,
                filled_files,
            })
        }
        Err(e) => {
            let _ = fs::remove_file(dst);
            Err(crate::space::full_at(e, dst, md.blocks() * 512, available))
        }
    }
}

fn invalid(op: &'static str, path: &Path, why: &'static str) -> BdevError {
    BdevError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why),
    }
}

/// Walks the source without following symlinks, recording directories in parent
/// order and grouping hardlinks by (dev, ino); (dev, ino) because btrfs
/// subvolumes reuse inode numbers under different st_dev.
fn scan(src: &Path, src_canon: &Path, skip: &HashSet<PathBuf>) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut first_name: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let abs = src.join(&dir);
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            // Removed while we scanned (a live source): nothing to copy.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BdevError::io("read directory", &abs)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(BdevError::io("read directory", &abs))?;
            let rel = dir.join(entry.file_name());
            // DirEntry::metadata is an lstat: symlinks are not followed.
            let md = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BdevError::io("stat", src.join(&rel))(e)),
            };
            if md.is_dir() {
                if !skip.contains(&src_canon.join(&rel)) {
                    stack.push(rel.clone());
                }
                plan.dirs.push(Node { rel, md });
                continue;
            }
            if md.nlink() > 1 {
                match first_name.entry((md.dev(), md.ino())) {
                    MapEntry::Occupied(o) => {
                        plan.links.push((rel, o.get().clone()));
                        continue;
                    }
                    MapEntry::Vacant(v) => {
                        v.insert(rel.clone());
                    }
                }
            }
            if md.is_file() {
                plan.bytes += md.len();
            }
            plan.leaves.push(Node { rel, md });
        }
    }
    Ok(plan)
}

/// Creates a directory owner-only for now (its real mode comes last); an
/// existing directory, such as lost+found in a fresh mount, is reused.
fn make_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(BdevError::io("create directory", path)(e)),
        },
        Err(e) => Err(BdevError::io("create directory", path)(e)),
    }
}

/// Copies the non-directories with a few threads; returns the reflinked bytes.
/// The first error stops the workers (each finishes its current file).
fn copy_leaves(
    src: &Path,
    dst: &Path,
    leaves: &[Node],
    opts: &CopyOpts,
    losses: &Losses<'_>,
) -> Result<u64> {
    let progress = losses.progress;
    let workers = WORKERS.min(leaves.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let reflinked = AtomicU64::new(0);
    let try_reflink = AtomicBool::new(true);
    let failed: Mutex<Option<BdevError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(node) = leaves.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if progress.cancelled() {
                        stop.store(true, Ordering::Relaxed);
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(BdevError::Interrupted);
                        break;
                    }
                    match copy_leaf(src, dst, node, opts, &try_reflink, losses) {
                        Ok(r) => {
                            reflinked.fetch_add(r, Ordering::Relaxed);
                            let bytes = if node.md.is_file() { node.md.len() } else { 0 };
                            progress.advance(1, bytes);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            failed
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(e) => Err(e),
        None => Ok(reflinked.into_inner()),
    }
}

/// Copies one non-directory with its metadata; returns the bytes reflinked.
fn copy_leaf(
    src: &Path,
    dst: &Path,
    node: &Node,
    opts: &CopyOpts,
    try_reflink: &AtomicBool,
    losses: &Losses<'_>,
) -> Result<u64> {
    let (from, to) = (src.join(&node.rel), dst.join(&node.rel));
    let md = &node.md;
    let ft = md.file_type();
    if ft.is_file() {
        let s = open_source(&from)?;
        let d = open(
            &to,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_retain(0o600),
        )
        .map(File::from)
        .map_err(errno("create", &to))?;
        let copied = data::copy_data(&s, &d, md, try_reflink, &from, &to)?;
        let dropped = meta::apply(Obj::Fd(s.as_fd()), Obj::Fd(d.as_fd()), md, &from, &to, opts)?;
        losses.xattrs(&node.rel, &dropped);
        return Ok(losses.data(&node.rel, copied, md.len()));
    }
    if ft.is_symlink() {
        let target = fs::read_link(&from).map_err(BdevError::io("read symlink", &from))?;
        std::os::unix::fs::symlink(&target, &to).map_err(BdevError::io("create symlink", &to))?;
    } else {
        // Character and block devices, fifos and sockets are all mknod.
        let kind = FileType::from_raw_mode(md.mode());
        let perm = Mode::from_bits_retain(md.mode() & 0o7777);
        mknodat(CWD, &to, kind, perm, md.rdev()).map_err(errno("create node", &to))?;
    }
    let dropped = meta::apply(Obj::Path(&from), Obj::Path(&to), md, &from, &to, opts)?;
    losses.xattrs(&node.rel, &dropped);
    Ok(0)
}

/// Opens a source file for reading without following a symlink swapped in since
/// the scan, and without updating its atime where we are allowed to.
fn open_source(path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        // O_NOATIME needs ownership or CAP_FOWNER.
        Err(Errno::PERM) => open(path, flags, Mode::empty())
            .map(File::from)
            .map_err(errno("open", path)),
        Err(e) => Err(errno("open", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Count {
        total: AtomicU64,
        done: AtomicU64,
    }
    impl Progress for Count {
        fn total(&self, files: u64, _bytes: u64) {
            self.total.store(files, Ordering::Relaxed);
        }
        fn advance(&self, files: u64, _bytes: u64) {
            self.done.fetch_add(files, Ordering::Relaxed);
        }
    }

    #[test]
    fn copies_files_links_and_times_with_progress() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("s"), d.path().join("d"));
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("a/b/f"), b"data").unwrap();
        fs::hard_link(src.join("a/b/f"), src.join("a/g")).unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/l")).unwrap();
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o750)).unwrap();
        let p = Count::default();
        let st = copy_tree(&src, &dst, &p).unwrap();
        assert_eq!(st.files, 3);
        assert_eq!(st.bytes, 4);
        assert_eq!(p.total.load(Ordering::Relaxed), 3);
        assert_eq!(p.done.load(Ordering::Relaxed), 3);
        assert_eq!(fs::read(dst.join("a/g")).unwrap(), b"data");
        let (f, g) = (
            fs::metadata(dst.join("a/b/f")).unwrap(),
            fs::metadata(dst.join("a/g")).unwrap(),
        );
        assert_eq!(f.ino(), g.ino());
        assert_eq!(fs::read_link(dst.join("a/l")).unwrap(), Path::new("b/f"));
        let (sa, da) = (
            fs::metadata(src.join("a")).unwrap(),
            fs::metadata(dst.join("a")).unwrap(),
        );
        assert_eq!(da.mode(), sa.mode());
        assert_eq!((da.mtime(), da.mtime_nsec()), (sa.mtime(), sa.mtime_nsec()));
    }

    #[test]
    fn target_default_acl_is_not_inherited() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("s"), d.path().join("d"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"x").unwrap();
        fs::create_dir(&dst).unwrap();
        // version 2; user_obj rwx, user 1000 r-x, group_obj r-x, mask r-x, other ---
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 5, 1000),
            (4, 5, u32::MAX),
            (16, 5, u32::MAX),
            (32, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let name = "system.posix_acl_default";
        if rustix::fs::lsetxattr(&dst, name, &acl, rustix::fs::XattrFlags::empty()).is_err() {
            return; // no ACL support here
        }
        copy_tree(&src, &dst, &NoProgress).unwrap();
        for p in [dst.clone(), dst.join("sub"), dst.join("sub/f")] {
            for n in [name, "system.posix_acl_access"] {
                assert!(rustix::fs::lgetxattr_query(&p, n).is_err(), "{p:?} has {n}");
            }
        }
    }

    #[test]
    fn refuses_a_target_inside_the_source() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("in");
        fs::create_dir(&inner).unwrap();
        let e = copy_tree(d.path(), &inner, &NoProgress).unwrap_err();
        assert!(matches!(e, BdevError::Io { .. }), "{e}");
    }

    #[test]
    fn copy_file_keeps_mode_and_content() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
        fs::write(&a, b"image").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
        let st = copy_file(&a, &b).unwrap();
        assert_eq!((st.files, st.bytes), (1, 5));
        assert_eq!(fs::read(&b).unwrap(), b"image");
        assert_eq!(fs::metadata(&b).unwrap().mode() & 0o7777, 0o640);
    }
}
