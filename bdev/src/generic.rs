//! Operations built only from the `Backend` trait, shared by every backend.

use std::path::Path;

use rustix::fs::{open, syncfs, Mode, OFlags};
use tracing::warn;

use crate::backend::Backend;
use crate::copy::{copy_tree_with, first_xattr, CopyOpts, CopyStats, Progress};
use crate::error::{BdevError, Result};
use crate::spec::VolumeSpec;

/// Runs `f` on the mounted root of `v`, then always unmounts; `f`'s error wins over
/// an unmount error. Plain-tree volumes (`tree_path`) are used in place when
/// writable; read-only, they get a read-only bind mount of the tree, so that the
/// promise holds for every backend.
pub fn with_mounted<T>(
    b: &dyn Backend,
    v: &VolumeSpec,
    scratch: &Path,
    read_only: bool,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let tree = b.tree_path(v);
    if let (Some(tree), false) = (&tree, read_only) {
        return f(tree);
    }
    crate::fsutil::create_dir_all(scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("mnt-")
        .tempdir_in(scratch)
        .map_err(BdevError::io("create mount point in", scratch))?;
    let guard = match tree {
        Some(tree) => {
            crate::mount::bind(&tree, dir.path(), true)?;
            crate::mount::MountGuard::mounted(dir.path())
        }
        None => b.mount(v, dir.path(), read_only)?,
    };
    let out = f(dir.path());
    let released = guard.release();
    let out = out?;
    released?;
    Ok(out)
}

/// Copies the contents of `src` (any backend) into the empty volume `dst` (any
/// backend) through mounts: the fallback for every cross-backend copy. `opts`
/// comes from [`copy_opts`].
pub fn copy_volume(
    src_b: &dyn Backend,
    src: &VolumeSpec,
    dst_b: &dyn Backend,
    dst: &VolumeSpec,
    scratch: &Path,
    opts: &CopyOpts,
    progress: &dyn Progress,
) -> Result<CopyStats> {
    with_mounted(src_b, src, scratch, true, |from| {
        copy_tree_into(from, dst_b, dst, scratch, opts, progress)
    })
}

/// Fills the empty volume `dst` (of `dst_b`) with the tree at `from`, then makes
/// sure every write landed. A block-backed volume's writes reach its image or
/// device only at writeback, where a full pool loses them: `syncfs` on its mount
/// reports that, and after the unmount the backend's `sync_volume` flushes the
/// image or device. When anything failed, the volume's filesystem is checked
/// read-only (the verdict is logged) and the copy fails.
pub fn copy_tree_into(
    from: &Path,
    dst_b: &dyn Backend,
    dst: &VolumeSpec,
    scratch: &Path,
    opts: &CopyOpts,
    progress: &dyn Progress,
) -> Result<CopyStats> {
    let block = dst_b.caps().block_backed;
    let lost = |source: std::io::Error| BdevError::WriteLost {
        volume: dst.to_string(),
        source,
    };
    let copied = with_mounted(dst_b, dst, scratch, false, |to| {
        // Opened before the copy: syncfs reports the write errors since the open.
        let root = if block {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            Some(open(to, flags, Mode::empty()).map_err(|e| BdevError::io("open", to)(e.into()))?)
        } else {
            None
        };
        let stats = copy_tree_with(from, to, opts, progress)?;
        if let Some(fd) = root {
            syncfs(&fd).map_err(|e| lost(e.into()))?;
        }
        Ok(stats)
    })
    .and_then(|stats| {
        if block {
            dst_b.sync_volume(dst)?;
        }
        Ok(stats)
    });
    match &copied {
        // A check after Ctrl-C would only keep the user waiting.
        Ok(_) | Err(BdevError::Interrupted) => {}
        Err(e) if block => match dst_b.check_fs(dst) {
            Ok(()) => warn!(volume = %dst, error = %e, "copy failed; its filesystem checks clean"),
            Err(check) => warn!(volume = %dst, error = %e, check = %check,
                "copy failed; its filesystem check found damage"),
        },
        Err(_) => {}
    }
    copied
}

/// Refuses to put the trees `trees` into a volume of `dst_b` when that backend
/// `lacks_xattrs` and the trees carry an xattr, which it would lose: the error
/// names the first file and attribute found, and the `alternatives`. Called
/// before anything is written (create from a directory, snapshot clones).
pub fn refuse_xattrs(dst_b: &dyn Backend, trees: &[&Path], alternatives: &[&str]) -> Result<()> {
    if !dst_b.caps().lacks_xattrs {
        return Ok(());
    }
    for tree in trees {
        if let Some((path, name)) = first_xattr(tree)? {
            return Err(BdevError::XattrsRefused {
                path,
                name: name.to_string_lossy().into_owned(),
                why: format!("{} volumes here cannot store", dst_b.name()),
                alternatives: alternatives.iter().map(|a| (*a).to_owned()).collect(),
            });
        }
    }
    Ok(())
}

/// What a copy of `src` (held by `src_b`) into a volume of `dst_b` may lose;
/// mounts `src` under `scratch` when it has to look inside. Called before anything
/// is written, so a copy that would lose xattrs is refused up front.
///
/// Into a backend that `lacks_xattrs`, a source carrying xattrs is refused unless
/// the user said `drop_xattrs`; then the copy drops what the target refuses. A
/// source whose backend `lacks_xattrs` cannot list xattrs through its mount, which
/// alone proves nothing (a union's branches may hold some): it counts as having
/// none only when its branches were checked. An xattr found there refuses the
/// copy too, unless the user said `drop_xattrs`, and is then lost with a warning.
pub fn copy_opts(
    src_b: &dyn Backend,
    src: &VolumeSpec,
    dst_b: &dyn Backend,
    scratch: &Path,
    drop_xattrs: bool,
) -> Result<CopyOpts> {
    let dst_lacks = dst_b.caps().lacks_xattrs;
    let mut opts = CopyOpts {
        drop_xattrs: drop_xattrs && dst_lacks,
        source_lacks_xattrs: false,
    };
    if !src_b.caps().lacks_xattrs {
        if dst_lacks && !drop_xattrs {
            let alternatives = [
                "copy without them (--drop-xattrs)",
                "copy into a pool whose backend keeps xattrs",
            ];
            with_mounted(src_b, src, scratch, true, |root| {
                refuse_xattrs(dst_b, &[root], &alternatives)
            })?;
        }
        return Ok(opts);
    }
    let branches = src_b.branch_dirs(src);
    if branches.is_empty() {
        // Nothing to check: a listing that fails fails the copy.
        return Ok(opts);
    }
    for tree in &branches {
        let Some((path, name)) = first_xattr(tree)? else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        if !drop_xattrs {
            return Err(BdevError::XattrsRefused {
                path,
                name,
                why: format!(
                    "the {} mount of the source cannot show, so a copy would lose it",
                    src_b.name()
                ),
                alternatives: vec![
                    "copy the container whose files these are (the source's origin)".to_owned(),
                    "accept the loss (--drop-xattrs)".to_owned(),
                ],
            });
        }
        warn!(
            "{} in the source's branches carries the xattr {name}, which its {} mount \
             cannot show: the copy leaves out all such xattrs (--drop-xattrs)",
            path.display(),
            src_b.name()
        );
        break;
    }
    opts.source_lacks_xattrs = true;
    Ok(opts)
}
