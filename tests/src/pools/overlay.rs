use std::path::Path;

use berth_bdev::PoolConfig;

use crate::harness::{ScratchFs, Setup};

/// An overlay pool on a loop-mounted scratch ext4, so that the upper directories
/// never sit on whatever filesystem holds /var/tmp (overlayfs in a container,
/// where they would not work).
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    if !berth_bdev::fsutil::kernel_has_fs("overlay") {
        return Err("the kernel has no overlay filesystem (modprobe overlay)".to_owned());
    }
    let fs = ScratchFs::new(tmp, "ext4", 2 << 30)?;
    Ok(Setup {
        pool: PoolConfig::new("test", "overlay").with_path(fs.mnt.join("pool")),
        keep: vec![Box::new(fs)],
    })
}
