//! dir: each volume is a plain directory under the pool; the reference backend.
//!
//! Layout: `POOL/NAME` is the root filesystem, `POOL/.snapshots/NAME/SNAP` a
//! snapshot (a full copy; reflinked where the filesystem can).

use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};

#[derive(Debug, Clone)]
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    pub fn open(pool: &PoolConfig) -> Result<Self> {
        Ok(Dir {
            root: crate::pool_path(pool)?.to_path_buf(),
        })
    }

    fn path_of<'a>(&self, v: &'a VolumeSpec) -> Result<&'a Path> {
        match v {
            VolumeSpec::Dir { path } if path.starts_with(&self.root) => Ok(path),
            other => Err(BdevError::InvalidSpec {
                spec: other.to_string(),
                reason: format!("not a dir volume of the pool at {:?}", self.root),
            }),
        }
    }
}

impl Backend for Dir {
    fn kind(&self) -> BackendKind {
        BackendKind::Dir
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        create_dir_all(&self.root)
    }

    fn create(&self, name: &str, _opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        let path = self.root.join(name);
        claim_dir(&path, &self.root, rv)?;
        Ok(VolumeSpec::Dir { path })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        mount::bind(self.path_of(v)?, at, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        remove_tree(self.path_of(v)?, &self.root)
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        Ok(Usage {
            used_bytes: allocated_bytes(self.path_of(v)?)?,
            kind: UsageKind::Allocated,
            limit_bytes: None,
            note: None,
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let src = self.path_of(v)?;
        let path = self.root.join(".snapshots").join(name).join(snap);
        claim_dir(&path, &self.root, rv)?;
        copy_tree(src, &path, &NoProgress)?;
        Ok(VolumeSpec::Dir { path })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let path = self.path_of(snap)?;
        remove_tree(path, &self.root)?;
        // Drop the per-volume snapshot directory once it is empty.
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}
