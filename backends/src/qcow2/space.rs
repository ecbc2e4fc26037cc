//! Room and durability for qcow2 images: whether the pool's filesystem can hold
//! a new image before anything is written (`qemu-img measure` for a native
//! copy, an estimate for a volume a copy will fill), and, after a copy, the
//! image flushed to disk and its filesystem checked.

use std::path::Path;

use berth_bdev::space::{check_room, fill_estimate, free_bytes};
use berth_bdev::{CreateOpts, Result, VolumeSpec};

use super::{parse, Qcow2};
use crate::blockfs;

/// qcow2's own metadata for `size` bytes of virtual disk: with 64 KiB clusters an
/// 8-byte L2 entry and a 2-byte refcount per cluster, plus the header and tables.
fn qcow2_metadata(size: u64) -> u64 {
    size / 4096 + (1 << 20)
}

impl Qcow2 {
    /// Refuses a `qemu-img convert` of `origin` (and its backing chain) that the
    /// pool's filesystem cannot hold.
    pub(super) fn check_convert_room(&self, origin: &Path) -> Result<()> {
        let out = self.qemu_img(&[
            "measure".as_ref(),
            "--output=json".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            origin.as_os_str(),
        ])?;
        let needed = parse::measure_required(&out.stdout)?;
        check_room(&self.pool, needed, free_bytes(self.root())?)
    }

    pub(super) fn room_for(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        let size = opts.size.unwrap_or(self.size);
        let fs = opts.fstype.unwrap_or(self.fstype);
        let needed = fill_estimate(fs, size, data) + qcow2_metadata(size);
        check_room(&self.pool, needed, free_bytes(self.root())?)
    }

    /// Flushes the (unmounted) image file: the daemon that wrote it is gone, so
    /// what it wrote is in the page cache at most, and a late error shows here.
    pub(super) fn sync_image(&self, v: &VolumeSpec) -> Result<()> {
        let loc = self.locate(v)?;
        blockfs::sync_path(&loc.at, || v.to_string())
    }

    /// Checks the image's filesystem read-only through a read-only export.
    pub(super) fn check_image(&self, v: &VolumeSpec) -> Result<()> {
        let loc = self.locate(v)?;
        self.refuse_if_mounted(v, &loc, "unmount it before checking it", false)?;
        self.with_export(&loc.key(), &loc.at, |export| {
            let fs = blockfs::detect_path(export, || v.to_string())?;
            blockfs::fsck(&*self.runner, fs, export)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_grows_with_the_virtual_size() {
        assert_eq!(qcow2_metadata(0), 1 << 20);
        assert_eq!(qcow2_metadata(1 << 30), (256 << 10) + (1 << 20));
    }
}
