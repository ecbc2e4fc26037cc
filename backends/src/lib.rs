//! berth-backends: one module per storage backend, and the registry that opens a
//! pool's backend.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::{Backend, BackendKind, BdevError, PoolConfig, Result};

pub mod aufs;
mod blockfs;
pub mod btrfs;
pub mod dir;
mod lookup;
pub mod r#loop;
pub mod lvm;
pub mod overlay;
pub mod qcow2;
pub mod zfs;

/// Opens the backend of `pool`. Nothing on the host is touched; call `probe` next.
pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(match pool.backend {
        BackendKind::Dir => Box::new(dir::Dir::open(pool)?),
        BackendKind::Btrfs => btrfs::open(pool, runner)?,
        BackendKind::Zfs => zfs::open(pool, runner)?,
        BackendKind::Lvm => lvm::open(pool, runner)?,
        BackendKind::Loop => r#loop::open(pool, runner)?,
        BackendKind::Aufs => aufs::open(pool, runner)?,
        BackendKind::Overlay => overlay::open(pool, runner)?,
        BackendKind::Qcow2 => qcow2::open(pool, runner)?,
    })
}

/// The pool directory of a path-based pool, which must be absolute.
pub(crate) fn pool_path(pool: &PoolConfig) -> Result<&Path> {
    match &pool.path {
        Some(p) if p.is_absolute() => Ok(p),
        Some(p) => Err(BdevError::InvalidSpec {
            spec: p.display().to_string(),
            reason: format!("pool {:?} needs an absolute --path", pool.name),
        }),
        None => Err(BdevError::InvalidSpec {
            spec: pool.name.clone(),
            reason: format!("a {} pool needs --path DIR", pool.backend),
        }),
    }
}

/// Placeholder for backends not written yet.
#[allow(dead_code)]
pub(crate) fn not_yet(kind: BackendKind) -> Result<Box<dyn Backend>> {
    Err(BdevError::Unavailable {
        backend: kind.as_str(),
        missing: "this backend is not implemented yet".to_owned(),
        hint: "use the dir backend".to_owned(),
    })
}
