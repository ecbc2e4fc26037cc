use std::path::Path;

use berth_bdev::PoolConfig;

use crate::harness::{ScratchFs, Setup};

/// An aufs pool on a scratch ext4 (unionfs-fuse where the kernel has no aufs).
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    let fs = ScratchFs::new(tmp, "ext4", 1 << 30)?;
    let pool = PoolConfig::new("test", "aufs").with_path(fs.mnt.join("pool"));
    Ok(Setup {
        pool,
        keep: vec![Box::new(fs)],
    })
}
