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
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};

use crate::lookup::{self, Entry};

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

    fn snapshots_of(&self, name: &str) -> PathBuf {
        self.root.join(".snapshots").join(name)
    }

    /// Removes the tree of `v`, or warns that it is gone.
    fn remove(&self, v: &VolumeSpec) -> Result<()> {
        let path = self.path_of(v)?;
        if !lookup::exists(path)? {
            lookup::already_gone(v);
            return Ok(());
        }
        remove_tree(path, &self.root)
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
        self.remove(v)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        lookup::names_in(&self.root, Entry::Dir, "")
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        let path = self.root.join(name);
        Ok(lookup::is_entry(&path, Entry::Dir)?.then_some(VolumeSpec::Dir { path }))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        lookup::names_in(&self.snapshots_of(name), Entry::Dir, "")
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        let path = self.snapshots_of(name).join(snap);
        Ok(lookup::is_entry(&path, Entry::Dir)?.then_some(VolumeSpec::Dir { path }))
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
        let path = self.snapshots_of(name).join(snap);
        claim_dir(&path, &self.root, rv)?;
        copy_tree(src, &path, &NoProgress)?;
        Ok(VolumeSpec::Dir { path })
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let path = self.path_of(snap)?;
        self.remove(snap)?;
        // Drop the per-volume snapshot directory once it is empty.
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}
