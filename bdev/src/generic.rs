//! Operations built only from the `Backend` trait, shared by every backend.

use std::path::Path;

use crate::backend::Backend;
use crate::copy::{copy_tree, CopyStats, Progress};
use crate::error::{BdevError, Result};
use crate::spec::VolumeSpec;

/// Runs `f` on the mounted root of `v`, then always unmounts; `f`'s error wins over
/// an unmount error. Plain-tree volumes (dir, btrfs) are used in place.
pub fn with_mounted<T>(
    b: &dyn Backend,
    v: &VolumeSpec,
    scratch: &Path,
    read_only: bool,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    if let Some(tree) = v.tree_path() {
        return f(tree);
    }
    crate::fsutil::create_dir_all(scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("mnt-")
        .tempdir_in(scratch)
        .map_err(BdevError::io("create mount point in", scratch))?;
    let guard = b.mount(v, dir.path(), read_only)?;
    let out = f(dir.path());
    let released = guard.release();
    let out = out?;
    released?;
    Ok(out)
}

/// Copies the contents of `src` (any backend) into the empty volume `dst` (any
/// backend) through mounts: the fallback for every cross-backend copy.
pub fn copy_volume(
    src_b: &dyn Backend,
    src: &VolumeSpec,
    dst_b: &dyn Backend,
    dst: &VolumeSpec,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<CopyStats> {
    with_mounted(src_b, src, scratch, true, |from| {
        with_mounted(dst_b, dst, scratch, false, |to| {
            copy_tree(from, to, progress)
        })
    })
}
