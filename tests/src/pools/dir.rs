use std::path::Path;

use berth_bdev::PoolConfig;

use crate::harness::Setup;

/// A dir pool in the test's temp dir.
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    Ok(Setup {
        pool: PoolConfig::new("test", "dir").with_path(tmp.join("pool")),
        keep: Vec::new(),
    })
}
