use std::path::Path;

use berth_bdev::PoolConfig;

use crate::harness::{ScratchFs, Setup};

/// Sparse size of the scratch filesystem holding the pool's images.
const SCRATCH_SIZE: u64 = 4 << 30;

fn on_scratch(tmp: &Path, fstype: &str) -> Result<Setup, String> {
    let fs = ScratchFs::new(tmp, fstype, SCRATCH_SIZE)?;
    let pool = PoolConfig::new("test", "loop").with_path(fs.mnt.join("pool"));
    Ok(Setup {
        pool,
        keep: vec![Box::new(fs)],
    })
}

/// A loop pool on a scratch xfs with reflink=1, so snapshot clones are reflinked
/// images and the suite exercises copy-on-write.
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    on_scratch(tmp, "xfs")
}

/// A loop pool on a scratch ext4, which cannot reflink: snapshot clones must be
/// refused as unsupported and copies are sparse.
pub fn setup_ext4(tmp: &Path) -> Result<Setup, String> {
    on_scratch(tmp, "ext4")
}
