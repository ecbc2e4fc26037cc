//! lvm backend (stub).

use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::{Backend, BackendKind, PoolConfig, Result};

pub fn open(_pool: &PoolConfig, _runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    crate::not_yet(BackendKind::Lvm)
}
