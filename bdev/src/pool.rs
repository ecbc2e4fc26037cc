//! A pool: one backend plus where it keeps its volumes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::FsType;
use crate::spec::BackendKind;

/// How a pool is configured (`berth pool add NAME --backend … --path …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: String,
    pub backend: BackendKind,
    /// Directory holding the volumes (dir, btrfs, loop, aufs, overlay, qcow2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Parent dataset (zfs), e.g. `tank/berth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Volume group (lvm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vg: Option<String>,
    /// Thin pool inside the volume group (lvm), for thin snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinpool: Option<String>,
    /// Default size of new volumes in bytes (block-backed backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Default filesystem of new volumes (loop, qcow2, lvm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<FsType>,
}

impl PoolConfig {
    pub fn new(name: &str, backend: BackendKind) -> Self {
        PoolConfig {
            name: name.to_owned(),
            backend,
            path: None,
            dataset: None,
            vg: None,
            thinpool: None,
            size: None,
            fstype: None,
        }
    }

    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn with_dataset(mut self, dataset: &str) -> Self {
        self.dataset = Some(dataset.to_owned());
        self
    }
}
