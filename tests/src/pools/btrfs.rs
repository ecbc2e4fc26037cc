use std::path::Path;

use berth_bdev::PoolConfig;

use crate::harness::{ScratchFs, Setup};

/// A btrfs pool in a directory on a loop-mounted scratch btrfs (4 GiB sparse;
/// smaller ones run out of metadata chunks).
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    if !berth_bdev::fsutil::kernel_has_fs("btrfs") {
        return Err("the kernel has no btrfs filesystem".to_owned());
    }
    if !berth_bdev::cmd::have_program("mkfs.btrfs") {
        return Err("mkfs.btrfs is not installed (apt-get install btrfs-progs)".to_owned());
    }
    let fs = ScratchFs::new(tmp, "btrfs", 4 << 30)?;
    Ok(Setup {
        pool: PoolConfig::new("test", "btrfs").with_path(fs.mnt.join("pool")),
        keep: vec![Box::new(fs)],
    })
}
